//! Where payload files live under the data dir, and how they are written: temp file, fsync,
//! no-clobber link into place, and only then the store commit. A crash leaves either no file,
//! an orphan temp (swept at start), or a complete file.
//!
//! Plain blocking file I/O: callers run it on the store thread or in `spawn_blocking`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use blobsync_shared::{BlobId, Namespace};

/// The layout of a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the dirs (mode 0700: plaintext lives here).
    pub fn create(&self) -> io::Result<()> {
        for d in [self.root.clone(), self.blobs_dir(), self.tmp_dir()] {
            create_private_dir(&d)?;
        }
        Ok(())
    }

    /// The data dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite file.
    pub fn store_file(&self) -> PathBuf {
        self.root.join("store.sqlite")
    }

    /// Root of the payload tree.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Temp files (same filesystem as the payloads, so links are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `blobs/{ns}/{id[0..2]}/{id}`: the fan-out keeps directories small.
    pub fn payload_path(&self, ns: &Namespace, id: &BlobId) -> PathBuf {
        let id_s = id.as_str();
        let fan = &id_s[..id_s.len().min(2)];
        self.blobs_dir().join(ns.as_str()).join(fan).join(id_s)
    }

    /// The partial download of a blob (plaintext of verified segments so far).
    pub fn partial_path(&self, ns: &Namespace, id: &BlobId) -> PathBuf {
        self.tmp_dir()
            .join(format!("dl.{}.{}", ns.as_str(), id.as_str()))
    }

    /// A fresh temp path for a put.
    pub fn new_temp_path(&self) -> PathBuf {
        self.tmp_dir().join(format!("put.{}", BlobId::random()))
    }
}

/// `mkdir -p` with mode 0700 for what it creates.
pub fn create_private_dir(d: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(d)
}

/// Moves a complete, fsynced temp file to `dest` without ever replacing an existing file
/// (hard link, then unlink the temp), and fsyncs the directory. `AlreadyExists` if `dest`
/// exists.
pub fn install(temp: &Path, dest: &Path) -> io::Result<()> {
    let dir = dest.parent().expect("payload paths have a parent"); // by construction
    create_private_dir(dir)?;
    fs::hard_link(temp, dest)?;
    fs::remove_file(temp)?;
    fs::File::open(dir)?.sync_all()
}

/// A payload file being written that no path names yet: an `O_TMPFILE` inode in its final
/// directory where the file system has them (Linux, ext4/XFS/btrfs/tmpfs), else a named temp
/// file under `tmp/`. The unnamed kind is why small puts are cheap: no temp name to create,
/// link and unlink in one shared directory (whose lock every put contended for), and no freed
/// inode for the allocator to skip over. Dropped without [`NewPayload::link`], it vanishes.
#[derive(Debug)]
pub struct NewPayload {
    file: fs::File,
    /// The fallback's temp path; `None` for an unnamed inode.
    temp: Option<PathBuf>,
}

impl NewPayload {
    /// Creates the file for `dest` (its directory is created if needed).
    pub fn create(data: &DataDir, dest: &Path) -> io::Result<Self> {
        Self::create_as(data, dest, true)
    }

    fn create_as(data: &DataDir, dest: &Path, unnamed: bool) -> io::Result<Self> {
        let dir = dest.parent().expect("payload paths have a parent"); // by construction
        create_private_dir(dir)?;
        #[cfg(target_os = "linux")]
        if unnamed && proc_fd_available() {
            use std::os::unix::fs::OpenOptionsExt;
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
            {
                Ok(file) => return Ok(Self { file, temp: None }),
                // No O_TMPFILE on this file system or kernel: use a named temp.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        let temp = data.new_temp_path();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)?;
        Ok(Self {
            file,
            temp: Some(temp),
        })
    }

    /// The open file, to write the payload into.
    pub fn file(&mut self) -> &mut fs::File {
        &mut self.file
    }

    /// Gives `dest` to the file, never replacing an existing one (`AlreadyExists` if `dest`
    /// exists). The caller fsyncs the file before and the directory after (see [`sync_dir`]).
    /// A failed link may be retried (after removing what is in the way).
    pub fn link(&mut self, dest: &Path) -> io::Result<()> {
        match &self.temp {
            None => link_fd(&self.file, dest),
            Some(temp) => {
                fs::hard_link(temp, dest)?;
                let _ = fs::remove_file(temp);
                self.temp = None;
                Ok(())
            }
        }
    }
}

impl Drop for NewPayload {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Whether `/proc/self/fd` is there to link unnamed files through (a sandbox may hide it).
#[cfg(target_os = "linux")]
fn proc_fd_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// `linkat` of an `O_TMPFILE` inode through its `/proc/self/fd` name (the way that needs no
/// capability; `AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`).
#[cfg(target_os = "linux")]
fn link_fd(file: &fs::File, dest: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(dest.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn link_fd(_: &fs::File, _: &Path) -> io::Result<()> {
    unreachable!("unnamed payloads are only made on Linux")
}

/// fsyncs a directory, making the links made in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Installs many small payloads at once: writes every `(dest, bytes)` into a new unnamed
/// file ([`NewPayload`]), fsyncs the files concurrently (the file system folds concurrent
/// fsyncs into few journal commits), links each into place (replacing a stale copy) and
/// fsyncs each destination directory once. Returns one result per item, in order. Same crash
/// order as a single put: a file is durable before its link, and its link before the caller
/// commits.
pub fn install_many(data: &DataDir, items: Vec<(PathBuf, Vec<u8>)>) -> Vec<io::Result<()>> {
    use std::io::Write;
    /// Threads issuing fsyncs: enough to fill the device queue, few enough to be cheap.
    const SYNC_THREADS: usize = 8;
    let mut results: Vec<io::Result<()>> = Vec::with_capacity(items.len());
    let mut files = Vec::with_capacity(items.len());
    for (dest, bytes) in &items {
        let r =
            NewPayload::create(data, dest).and_then(|mut p| p.file().write_all(bytes).map(|()| p));
        match r {
            Ok(p) => {
                files.push(Some(p));
                results.push(Ok(()));
            }
            Err(e) => {
                files.push(None);
                results.push(Err(e));
            }
        }
    }
    let synced: Vec<io::Result<()>> = parallel(&files, SYNC_THREADS, |p| match p {
        Some(p) => p.file.sync_all(),
        None => Ok(()),
    });
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (i, ((dest, _), file)) in items.iter().zip(files.iter_mut()).enumerate() {
        if let (Ok(()), Some(p)) = (&results[i], file.as_mut()) {
            results[i] = clone_err(&synced[i]).and_then(|()| {
                let dir = dest.parent().expect("payload paths have a parent"); // by construction
                remove(dest)?;
                p.link(dest)?;
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                }
                Ok(())
            });
        }
    }
    drop(files);
    let dir_synced = parallel(&dirs, SYNC_THREADS, |d| sync_dir(d));
    for (d, r) in dirs.iter().zip(&dir_synced) {
        if r.is_ok() {
            continue;
        }
        for (i, (dest, _)) in items.iter().enumerate() {
            if results[i].is_ok() && dest.parent() == Some(d.as_path()) {
                results[i] = clone_err(r);
            }
        }
    }
    results
}

fn clone_err(r: &io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// Runs `f` on every item with up to `threads` scoped threads; results in item order.
fn parallel<T: Sync, F>(items: &[T], threads: usize, f: F) -> Vec<io::Result<()>>
where
    F: Fn(&T) -> io::Result<()> + Sync,
{
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| s.spawn(|| chunk.iter().map(&f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .zip(items.chunks(per))
            .flat_map(|(h, chunk)| {
                h.join().unwrap_or_else(|_| {
                    chunk
                        .iter()
                        .map(|_| Err(io::Error::other("fsync thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

/// Removes a payload file; a missing file is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Deletes every temp left by a crash except partial downloads (`dl.*`, which a restarted
/// download resumes; the engine removes those whose blob is gone).
pub fn sweep_temps(data: &DataDir) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(data.tmp_dir())? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("dl.") {
            remove(&entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Every payload file on disk as (namespace, id, path): what a rebuilt store starts from.
pub fn scan_payloads(data: &DataDir) -> io::Result<Vec<(Namespace, BlobId, PathBuf)>> {
    let mut out = Vec::new();
    let root = data.blobs_dir();
    if !root.exists() {
        return Ok(out);
    }
    for ns_entry in fs::read_dir(&root)? {
        let ns_entry = ns_entry?;
        let Ok(ns) = Namespace::new(ns_entry.file_name().to_string_lossy().into_owned()) else {
            continue;
        };
        for fan in fs::read_dir(ns_entry.path())? {
            for f in fs::read_dir(fan?.path())? {
                let f = f?;
                if let Ok(id) = BlobId::new(f.file_name().to_string_lossy().into_owned()) {
                    out.push((ns.clone(), id, f.path()));
                }
            }
        }
    }
    Ok(out)
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        n += r as u64;
        ctx.update(&buf[..r]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((out, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn files_under(d: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn a_new_payload_appears_only_when_linked_and_never_clobbers() {
        for unnamed in [true, false] {
            let root = tempfile::tempdir().unwrap();
            let data = DataDir::new(root.path());
            data.create().unwrap();
            let dest = data.payload_path(&Namespace::default(), &BlobId::random());

            // Dropped before the link: nothing is left anywhere.
            let mut p = NewPayload::create_as(&data, &dest, unnamed).unwrap();
            p.file().write_all(b"abandoned").unwrap();
            drop(p);
            assert_eq!(
                files_under(root.path()),
                Vec::<PathBuf>::new(),
                "unnamed={unnamed}"
            );

            let mut p = NewPayload::create_as(&data, &dest, unnamed).unwrap();
            p.file().write_all(b"first").unwrap();
            p.file().sync_all().unwrap();
            p.link(&dest).unwrap();
            sync_dir(dest.parent().unwrap()).unwrap();
            drop(p);
            assert_eq!(fs::read(&dest).unwrap(), b"first");

            let mut q = NewPayload::create_as(&data, &dest, unnamed).unwrap();
            q.file().write_all(b"second").unwrap();
            let e = q.link(&dest).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(fs::read(&dest).unwrap(), b"first");
            // A failed link may be retried once the way is clear.
            remove(&dest).unwrap();
            q.link(&dest).unwrap();
            drop(q);
            assert_eq!(fs::read(&dest).unwrap(), b"second");
            assert_eq!(
                files_under(root.path()),
                vec![dest.clone()],
                "unnamed={unnamed}"
            );
        }
    }
}
