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
