//! The files of a run: blobs staged before the clock starts (random, incompressible, from a
//! fixed seed), a row's [`TestEnv`] whose files outlive the row, the trash that keeps them
//! until deleting them no longer slows the next run, and the disk's durable write rate.

use super::*;

/// A staged blob: id, file, expected digest.
pub(super) struct Staged {
    pub(super) id: String,
    pub(super) path: PathBuf,
    pub(super) sha256: [u8; 32],
}

pub(super) fn new_env(_opts: &BenchOpts) -> Result<RowEnv, BenchError> {
    // TestEnv lives under the system temp dir; set TMPDIR to bench another disk.
    Ok(RowEnv(Some(TestEnv::new()?)))
}

/// A row's [`TestEnv`] whose files outlive the row: see [`remove_row_dirs`].
pub(super) struct RowEnv(Option<TestEnv>);

pub(super) static ROW_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl std::ops::Deref for RowEnv {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        self.0.as_ref().expect("set until drop")
    }
}

impl std::ops::DerefMut for RowEnv {
    fn deref_mut(&mut self) -> &mut TestEnv {
        self.0.as_mut().expect("set until drop")
    }
}

impl Drop for RowEnv {
    fn drop(&mut self) {
        // Dropping the env stops its processes; its files stay for `remove_row_dirs`.
        if let Some(mut env) = self.0.take()
            && !crate::env_flag("BLOBSYNC_TEST_KEEP")
        {
            let root = env.keep();
            ROW_DIRS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(root);
        }
    }
}

/// Where finished rows' small files wait before they are deleted.
pub(super) fn trash_dir() -> PathBuf {
    std::env::temp_dir().join("blobsync-bench-trash")
}

/// How long the trash keeps files: longer than ext4's inode "recentcy" (60 s, 360 s while
/// the inode table block is dirty).
pub const TRASH_AGE: Duration = Duration::from_secs(420);

/// Cleans up after the rows run so far, without slowing the next run. Deleting tens of
/// thousands of files would be measured in every run of the next few minutes: on ext4
/// without a journal (this build box), creating a file skips every inode of its group freed
/// in the last 60-360 s (`recently_deleted` in the inode allocator, a block lookup each), and
/// that dominated W5. So big files (few inodes) are deleted now, the rest is moved to a trash
/// dir and deleted by a run at least 7 minutes later.
pub fn remove_row_dirs() {
    let dirs = std::mem::take(&mut *ROW_DIRS.lock().unwrap_or_else(|p| p.into_inner()));
    let trash = trash_dir();
    let _ = std::fs::create_dir_all(&trash);
    for d in dirs {
        remove_big_files(&d);
        let name = d.file_name().map(|n| n.to_owned()).unwrap_or_default();
        if std::fs::rename(&d, trash.join(name)).is_err() {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

/// Median time to create (and write, and drop) one unnamed file in a new directory under
/// `dir`, over `CREATE_PROBES` files: a check that the file system is in its usual state before
/// rows that create thousands of files. On ext4 without a journal it is about 20 us, and 10-30
/// times that in the minutes after a mass delete anywhere on the file system (not only the
/// bench's own, which [`trash_emptied_ago`] knows about). A new directory, because that is
/// where the rows create their files, and ext4 places a new directory in a block group with
/// many free inodes, often the group a mass delete just emptied. Often, not always: the probe
/// can miss what a row's directory meets, and the other way round; it is a warning, not a
/// gate. `None` where there is no `O_TMPFILE`.
#[cfg(target_os = "linux")]
pub fn create_probe(dir: &Path) -> Option<Duration> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fresh = tempfile::Builder::new()
        .prefix("create-probe")
        .tempdir_in(dir)
        .ok()?;
    let mut times = Vec::with_capacity(CREATE_PROBES);
    for _ in 0..CREATE_PROBES {
        let t = std::time::Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(fresh.path())
            .ok()?;
        f.write_all(&[0u8; 1024]).ok()?;
        drop(f);
        times.push(t.elapsed());
    }
    times.sort_unstable();
    Some(times[times.len() / 2])
}

/// [`create_probe`] off Linux: not measured.
#[cfg(not(target_os = "linux"))]
pub fn create_probe(_: &Path) -> Option<Duration> {
    None
}

/// Files [`create_probe`] creates: few enough that the inodes it frees cost the next row
/// nothing measurable, enough for a stable median.
const CREATE_PROBES: usize = 200;

/// A median [`create_probe`] above this is reported as a file system not in its usual state.
pub const SLOW_CREATE: Duration = Duration::from_micros(150);

/// Marks when [`empty_old_trash`] last deleted something (its mtime).
const EMPTIED_STAMP: &str = ".emptied";

/// How long ago a run last deleted old trash, if it did.
pub fn trash_emptied_ago() -> Option<Duration> {
    let stamp = trash_dir().join(EMPTIED_STAMP);
    std::fs::metadata(stamp)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()
}

/// Deletes what earlier runs put in the trash more than 7 minutes ago (`TRASH_AGE`). Called
/// at the end of a run, after its rows; the next run warns while the deletes are recent.
pub fn empty_old_trash() {
    let Ok(entries) = std::fs::read_dir(trash_dir()) else {
        return;
    };
    let mut deleted = false;
    for e in entries.flatten() {
        if e.file_name() == EMPTIED_STAMP {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TRASH_AGE);
        if old {
            let _ = std::fs::remove_dir_all(e.path());
            deleted = true;
        }
    }
    if deleted {
        let _ = std::fs::write(trash_dir().join(EMPTIED_STAMP), b"");
    }
}

pub(super) fn remove_big_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_big_files(&e.path()),
            Ok(t) if t.is_file() && e.metadata().is_ok_and(|m| m.len() >= 1 << 20) => {
                let _ = std::fs::remove_file(e.path());
            }
            _ => {}
        }
    }
}

/// Blob `i`'s id spread over the id space, as random or hashed ids are (so over the daemon's
/// and the server's fan directories): 16 hex digits. Multiplying by an odd constant is a
/// bijection: ids never repeat.
pub fn spread_id(i: usize) -> String {
    format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Writes `count` files of `size` random bytes (stream from `seed`, per workload) into `dir`,
/// each named by its blob id ([`spread_id`] when `spread_ids`, else `b000000`..).
pub(super) fn stage(
    dir: &Path,
    name: &str,
    count: usize,
    size: u64,
    seed: u64,
    spread_ids: bool,
) -> Result<Vec<Staged>, BenchError> {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_be_bytes());
    for (i, b) in name.bytes().enumerate().take(24) {
        seed_bytes[8 + i] = b;
    }
    let mut rng = rand::rngs::StdRng::from_seed(seed_bytes);
    let mut buf = vec![0u8; size.min(MIB) as usize];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let id = if spread_ids {
            spread_id(i)
        } else {
            format!("b{i:06}")
        };
        let path = dir.join(&id);
        let f =
            std::fs::File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        let mut w = std::io::BufWriter::with_capacity(MIB as usize, f);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            ctx.update(&buf[..n]);
            w.write_all(&buf[..n])
                .map_err(io_err(format!("write {}", path.display())))?;
            left -= n as u64;
        }
        w.flush()
            .map_err(io_err(format!("write {}", path.display())))?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(ctx.finish().as_ref());
        out.push(Staged { id, path, sha256 });
    }
    Ok(out)
}

/// Measures the durable write rate of the disk under `dir`: `bytes` written in 1 MiB
/// writes, then one fsync (what `dd bs=1M conv=fsync` does).
pub fn disk_rate(dir: &Path, bytes: u64) -> Result<DiskResult, BenchError> {
    /// Runs taken; the median is the figure.
    const RUNS: usize = 3;
    let mut buf = vec![0u8; MIB as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let path = dir.join(format!("disk-rate-{run}.bin"));
        let start = Instant::now();
        let mut f = std::fs::File::create(&path).map_err(io_err("create disk test file"))?;
        let mut left = bytes;
        while left > 0 {
            rng.fill_bytes(&mut buf);
            let n = left.min(MIB) as usize;
            f.write_all(&buf[..n])
                .map_err(io_err("write disk test file"))?;
            left -= n as u64;
        }
        f.sync_all().map_err(io_err("fsync disk test file"))?;
        times.push(start.elapsed().as_secs_f64());
        drop(f);
        let _ = std::fs::remove_file(&path);
    }
    let runs_mb_s = times.iter().map(|t| bytes as f64 / 1e6 / t).collect();
    times.sort_by(f64::total_cmp);
    let seconds = times[RUNS / 2];
    Ok(DiskResult {
        bytes,
        seconds,
        mb_s: bytes as f64 / 1e6 / seconds,
        runs_mb_s,
    })
}

/// The disk test in a fresh temp env (same file system as the workloads).
pub fn run_disk(opts: &BenchOpts) -> Result<DiskResult, BenchError> {
    let env = new_env(opts)?;
    disk_rate(env.root(), opts.disk_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--spread-ids` must name every blob differently, with an id the daemon and the server
    /// accept, and land them in many fan directories (the point of the option): the daemon
    /// fans out by the first two characters, the server by the first three.
    #[test]
    fn spread_ids_are_unique_valid_and_fill_the_fan_directories() {
        let ids: Vec<String> = (0..10_000).map(spread_id).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            blobsync_shared::BlobId::new(id.clone()).expect("a valid blob id");
        }
        let fans = |n: usize| {
            ids.iter()
                .map(|i| &i[..n])
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert_eq!(fans(2), 256, "every fan directory of the daemon");
        assert!(fans(3) > 2_000, "most of the server's: {}", fans(3));
    }
}
