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

/// Installs many small payloads at once: writes every `(partial, dest, bytes)`, fsyncs the
/// files concurrently (the file system folds concurrent fsyncs into few journal commits),
/// links each into place (replacing a stale copy) and fsyncs each destination directory
/// once. Returns one result per item, in order. Same crash order as [`install`]: a file is
/// durable before its link, and its link before the caller commits.
pub fn install_many(items: Vec<(PathBuf, PathBuf, Vec<u8>)>) -> Vec<io::Result<()>> {
    use std::io::Write;
    /// Threads issuing fsyncs: enough to fill the device queue, few enough to be cheap.
    const SYNC_THREADS: usize = 8;
    let mut results: Vec<io::Result<()>> = Vec::with_capacity(items.len());
    let mut files = Vec::with_capacity(items.len());
    for (partial, _, bytes) in &items {
        let r = fs::File::create(partial).and_then(|mut f| f.write_all(bytes).map(|()| f));
        match r {
            Ok(f) => {
                files.push(Some(f));
                results.push(Ok(()));
            }
            Err(e) => {
                files.push(None);
                results.push(Err(e));
            }
        }
    }
    let synced: Vec<io::Result<()>> = parallel(&files, SYNC_THREADS, |f| match f {
        Some(f) => f.sync_all(),
        None => Ok(()),
    });
    drop(files);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (i, (partial, dest, _)) in items.iter().enumerate() {
        if results[i].is_ok() {
            results[i] = clone_err(&synced[i]).and_then(|()| {
                let dir = dest.parent().expect("payload paths have a parent"); // by construction
                create_private_dir(dir)?;
                remove(dest)?;
                fs::hard_link(partial, dest)?;
                fs::remove_file(partial)?;
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                }
                Ok(())
            });
        }
        if results[i].is_err() {
            let _ = fs::remove_file(partial);
        }
    }
    let dir_synced = parallel(&dirs, SYNC_THREADS, |d| fs::File::open(d)?.sync_all());
    for (d, r) in dirs.iter().zip(&dir_synced) {
        if r.is_ok() {
            continue;
        }
        for (i, (_, dest, _)) in items.iter().enumerate() {
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
