//! Where payload files live: Soledad's layout `{data}/{user}/{namespace}/{id[0..1]}/{id[0..3]}/{id}`,
//! plus temp files (`.tmp-{id}-{random}`) in the same directory as their final name so the
//! rename into place is atomic.
//!
//! Every path is built from validated names (`[A-Za-z0-9_-]`), so no request can name a file
//! outside the data dir; temp names contain a dot, which no valid id does, so they can never
//! be mistaken for a blob. This module never touches the index.

use std::path::{Path, PathBuf};

use blobsync_shared::writeback::GroupSync;
use blobsync_shared::{BlobId, Namespace};

/// Prefix of temp file names.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The payload tree under a data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout rooted at `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.to_path_buf(),
        }
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `{data}/{user}`.
    pub fn user_dir(&self, user: &str) -> PathBuf {
        self.root.join(user)
    }

    /// The directory that holds `id`.
    pub fn blob_dir(&self, user: &str, ns: &Namespace, id: &BlobId) -> PathBuf {
        let id = id.as_str();
        // Ids are ASCII, so byte slicing is on character boundaries.
        self.root
            .join(user)
            .join(ns.as_str())
            .join(&id[..1])
            .join(&id[..id.len().min(3)])
    }

    /// The final path of `id`.
    pub fn blob_path(&self, user: &str, ns: &Namespace, id: &BlobId) -> PathBuf {
        self.blob_dir(user, ns, id).join(id.as_str())
    }

    /// A fresh temp path beside `id`'s final path. No I/O: the writer creates the directory
    /// when it creates the file.
    pub fn temp_path(&self, user: &str, ns: &Namespace, id: &BlobId) -> PathBuf {
        let mut r = [0u8; 8];
        // Uniqueness, not secrecy: fall back to the clock if the OS source fails.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).is_err() {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            r = n.to_be_bytes();
        }
        self.blob_dir(user, ns, id)
            .join(format!("{TEMP_PREFIX}{}-{}", id.as_str(), hex::encode(r)))
    }
}

/// Makes renamed `files` (written, closed, maybe not synced) durable together with their
/// names in `dirs` ([`GroupSync::choose`] picks one `syncfs`, or per-file syncs in parallel).
/// `root` is the data dir.
pub fn sync_placed(root: &Path, files: &[PathBuf], dirs: &[PathBuf]) -> std::io::Result<()> {
    if files.is_empty() && dirs.is_empty() {
        return Ok(()); // a round of inline payloads only
    }
    GroupSync::choose(files.len()).sync_placed(&std::fs::File::open(root)?, files, dirs)
}

/// A file found under the payload tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A leftover temp file (an upload cut off by a crash or a dropped request).
    Temp(PathBuf),
    /// A payload at its proper place: user, namespace, id, size.
    Blob {
        /// Path.
        path: PathBuf,
        /// User.
        user: String,
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
        /// Size on disk.
        size: u64,
    },
    /// Anything else (wrong place, bad name).
    Stray(PathBuf),
}

/// Walks the payload tree (users' directories only; the index files are skipped).
pub fn walk(root: &Path) -> std::io::Result<Vec<Found>> {
    let mut out = Vec::new();
    for user in std::fs::read_dir(root)? {
        let user = user?;
        if !user.file_type()?.is_dir() {
            continue; // index.sqlite3, its -wal/-shm, the lock file
        }
        walk_dir(&user.path(), &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

fn walk_dir(dir: &Path, parts: &mut Vec<String>, out: &mut Vec<Found>) -> std::io::Result<()> {
    let user_part = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parts.push(user_part);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() {
            walk_dir(&path, parts, out)?;
            continue;
        }
        if name.starts_with(TEMP_PREFIX) {
            out.push(Found::Temp(path));
            continue;
        }
        // parts = [user, namespace, a, abc]
        let ok = parts.len() == 4
            && BlobId::new(name.clone()).is_ok()
            && Namespace::new(parts[1].clone()).is_ok()
            && parts[2] == name[..1]
            && parts[3] == name[..name.len().min(3)];
        if ok {
            out.push(Found::Blob {
                size: e.metadata()?.len(),
                path,
                user: parts[0].clone(),
                namespace: parts[1].clone(),
                id: name,
            });
        } else {
            out.push(Found::Stray(path));
        }
    }
    parts.pop();
    Ok(())
}

/// Removes leftover temp files (run at startup, before serving). Returns how many.
pub fn remove_temp_files(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for f in walk(root)? {
        if let Found::Temp(p) = f {
            std::fs::remove_file(&p)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_soledads_layout() {
        let l = Layout::new(Path::new("/d"));
        let ns = Namespace::default();
        assert_eq!(
            l.blob_path("alice", &ns, &BlobId::new("abcdef").unwrap()),
            Path::new("/d/alice/default/a/abc/abcdef")
        );
        assert_eq!(
            l.blob_path("alice", &ns, &BlobId::new("x").unwrap()),
            Path::new("/d/alice/default/x/x/x")
        );
    }

    #[test]
    fn walk_classifies_blobs_temps_and_strays() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path());
        let ns = Namespace::default();
        let id = BlobId::new("abcd").unwrap();
        let t = l.temp_path("u", &ns, &id);
        std::fs::create_dir_all(t.parent().unwrap()).unwrap();
        std::fs::write(&t, b"x").unwrap();
        std::fs::write(l.blob_path("u", &ns, &id), b"xyz").unwrap();
        std::fs::write(t.parent().unwrap().join("zzz"), b"").unwrap();
        std::fs::write(d.path().join("index.sqlite3"), b"").unwrap();
        let mut found = walk(d.path()).unwrap();
        found.sort_by_key(|f| format!("{f:?}"));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found
                .iter()
                .any(|f| matches!(f, Found::Blob { size: 3, id, .. } if id == "abcd"))
        );
        assert!(found.iter().any(|f| matches!(f, Found::Stray(_))));
        assert_eq!(remove_temp_files(d.path()).unwrap(), 1);
        assert!(!t.exists());
    }
}
