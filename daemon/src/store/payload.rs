//! Where payload files live under the data dir, and how they are written: temp file, fsync,
//! no-clobber link into place, and only then the store commit. A crash leaves either no file,
//! an orphan temp (swept at start), or a complete file. Every path to a payload or a partial
//! download is built here ([`DataDir::payload_path`], [`DataDir::partial`]); what is inside
//! them (blob format v1, sealed) is [`super::sealed`]'s.
//!
//! Plain blocking file I/O: callers run it on the store thread or in `spawn_blocking`.

use blobsync_shared::writeback::GroupSync;
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

    /// Creates the dirs (mode 0700: the trust model keeps the data dir the user's alone).
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

    /// The partial download of a blob.
    pub fn partial(&self, ns: &Namespace, id: &BlobId) -> Partial {
        Partial {
            path: self
                .tmp_dir()
                .join(format!("{PARTIAL_PREFIX}{}.{}", ns.as_str(), id.as_str())),
        }
    }

    /// A fresh temp path for a put.
    pub fn new_temp_path(&self) -> PathBuf {
        self.tmp_dir().join(format!("put.{}", BlobId::random()))
    }
}

/// Names of partial downloads under `tmp/` start with this. (Releases before at-rest
/// encryption named them `dl.*`, with a `.hdr` sidecar, and kept plaintext in them: the sweep
/// at start removes those.)
const PARTIAL_PREFIX: &str = "part.";

/// A download in progress: the verified prefix of the stored blob (its header, then whole
/// segments, exactly as the server sent them), under `tmp/`. A restarted daemon resumes
/// from it; once complete and fsynced it is installed as the payload.
#[derive(Debug, Clone)]
pub struct Partial {
    path: PathBuf,
}

impl Partial {
    /// Its path (opened by the download that writes it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocking: removes it; a missing one is fine.
    pub fn remove(&self) -> io::Result<()> {
        remove(&self.path)
    }

    /// Blocking: makes the complete, fsynced partial the payload at `dest`, replacing a stale
    /// copy there (a blob replaced remotely, a damaged copy fetched again).
    pub fn install(self, dest: &Path) -> io::Result<()> {
        remove(dest)?;
        install(&self.path, dest)
    }
}

/// At most this many tightened paths are named in [`Secured::examples`].
const SECURED_EXAMPLES: usize = 10;

/// What [`secure`] found too open and tightened.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Secured {
    /// How many dirs and files were tightened.
    pub tightened: u64,
    /// The first few: (path, mode before).
    pub examples: Vec<(PathBuf, u32)>,
}

/// Makes the data dir the user's alone, as the trust model promises: every directory `0700`
/// and every file `0600`, the root, the store files, `tmp/` and the payload tree alike. What
/// is looser is tightened (the caller logs it); what another user owns cannot be made ours by
/// a chmod, so it is refused (`PermissionDenied`, naming the path and its owner). Symlinks
/// inside are neither followed nor changed.
///
/// The whole tree is walked (one `lstat` per entry) only when the root was open. A root that
/// is already ours and `0700` lets no other (non-root) user reach, create or change anything
/// beneath it, so then only its own entries (the store files, `blobs/`, `tmp/`) are checked:
/// a start with a million payloads does not wait seconds for a million `lstat`s. The first
/// start after an older version or a user's `chmod` of the root still walks and tightens
/// everything.
pub fn secure(data: &DataDir) -> io::Result<Secured> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut out = Secured::default();
    let mut check = |path: &Path, meta: &fs::Metadata, want: u32| -> io::Result<()> {
        if meta.uid() != me {
            let owner = blobsync_proto::peer::describe_uid(meta.uid());
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to {owner}, not to the daemon's user (uid {me}): the data dir \
                     must be this user's alone. chown it to the daemon's user, or set another \
                     `data_dir`",
                    path.display()
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 || mode & 0o7000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(want))?;
            out.tightened += 1;
            if out.examples.len() < SECURED_EXAMPLES {
                out.examples.push((path.to_path_buf(), mode));
            }
        }
        Ok(())
    };
    // The root may be a symlink the user made: what counts is where it points.
    let root_meta = fs::metadata(data.root())?;
    let root_was_private = root_meta.uid() == me && root_meta.mode() & 0o7077 == 0;
    check(data.root(), &root_meta, 0o700)?;
    let mut dirs = vec![data.root().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let descend = !root_was_private;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Gone meanwhile (a temp swept by nobody else but us): nothing to secure.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                check(&path, &meta, 0o700)?;
                if descend {
                    dirs.push(path);
                }
            } else {
                check(&path, &meta, 0o600)?;
            }
        }
    }
    Ok(out)
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

/// Blocking: replaces the payload at `dest` with what `write` puts into a new file, crash-safe:
/// a named temp under `tmp/` (swept at start if a crash leaves it), fsync, `rename` over
/// `dest` (atomic: `dest` is the old file or the new one, never neither), fsync of the
/// directory. Used where a payload is rewritten in place: the at-rest migration and a re-seal
/// under a fresh salt. The caller holds the blob's lock.
pub fn replace_atomically<T>(
    data: &DataDir,
    dest: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<T>,
) -> io::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = data.new_temp_path();
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    let out = write(&mut file).and_then(|v| file.sync_all().map(|()| v));
    let out = out.and_then(|v| fs::rename(&temp, dest).map(|()| v));
    if out.is_err() {
        let _ = fs::remove_file(&temp);
    }
    let v = out?;
    sync_dir(dest.parent().expect("payload paths have a parent"))?; // by construction
    Ok(v)
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
        #[cfg(target_os = "linux")]
        if unnamed && proc_fd_available() {
            use std::os::unix::fs::OpenOptionsExt;
            let open = || {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_TMPFILE)
                    .open(dir)
            };
            // The directory is made only when missing: a `mkdir` and a `stat` per put were
            // measurable in W5, and the fan directories exist after the first few puts.
            let opened = match open() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_private_dir(dir)?;
                    open()
                }
                r => r,
            };
            match opened {
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
        create_private_dir(dir)?;
        let temp = data.new_temp_path();
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?
        };
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
    /// exists). The caller makes the file and the directory durable (see [`sync_dir`]) before
    /// it commits the row.
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

/// One new payload for [`SyncGroup::install`]: written (not fsynced), to be linked at `dest`.
#[derive(Debug)]
pub struct Install {
    /// The written file.
    pub payload: NewPayload,
    /// Where it goes.
    pub dest: PathBuf,
    /// Replace a file already at `dest` (a stale download), else `AlreadyExists`.
    pub replace: bool,
}

/// What an install gives back: each payload with its result, in order.
pub type Installed = Vec<(NewPayload, io::Result<()>)>;

type InstallReply = tokio::sync::oneshot::Sender<Installed>;

/// Installs small payloads for everyone at once: a thread that takes every batch waiting,
/// links them all, and makes their data and names durable in one barrier, instead of an
/// fsync of each file and of each fan directory one after another. How (`syncfs`, or
/// per-file syncs in parallel when the machine has much dirty data that a `syncfs` would
/// wait for too) is [`GroupSync::choose`]'s call, per batch. A file and its name are
/// durable before the caller's store commit; unlike a lone big put, the name may reach the
/// disk before the data, so a crash can leave a named file, cut short, without a row: never
/// counted (rows are the truth), replaced by the next put or download of its id, and left
/// out by a rebuild, which authenticates every file.
#[derive(Debug)]
pub struct SyncGroup {
    root: PathBuf,
    /// The thread's queue, started by the first install.
    tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<(Vec<Install>, InstallReply)>>,
}

/// Install batches waiting for the sync thread before callers wait too.
const SYNC_GROUP_QUEUE: usize = 256;

impl SyncGroup {
    /// A group for the file system of `data` (the thread starts with the first install).
    pub fn new(data: &DataDir) -> Self {
        Self {
            root: data.root().to_path_buf(),
            tx: std::sync::OnceLock::new(),
        }
    }

    fn sender(&self) -> io::Result<&tokio::sync::mpsc::Sender<(Vec<Install>, InstallReply)>> {
        if let Some(tx) = self.tx.get() {
            return Ok(tx);
        }
        let root = fs::File::open(&self.root)?;
        // Bounded: callers wait (asynchronously) while the thread is this far behind, instead
        // of queueing without limit.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Vec<Install>, InstallReply)>(SYNC_GROUP_QUEUE);
        std::thread::Builder::new()
            .name("blobsyncd-sync".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batches = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batches.push(more);
                    }
                    install_group(&root, batches);
                }
            })?;
        // Two first installs at once: the loser's thread ends when its sender drops.
        Ok(self.tx.get_or_init(|| tx))
    }

    /// Installs `items`; one result per item, in order, each with its payload back (a caller
    /// may retry a link that found a leftover in the way). `Err` when the thread is gone (it
    /// panicked): nothing was linked then.
    pub async fn install(
        &self,
        items: Vec<Install>,
    ) -> io::Result<Vec<(NewPayload, io::Result<()>)>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let gone = || io::Error::other("the payload sync thread is gone; restart the daemon");
        self.sender()?
            .send((items, reply))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

fn install_group(root: &fs::File, batches: Vec<(Vec<Install>, InstallReply)>) {
    // Named first, then data and names made durable in one barrier: the caller's store
    // commit comes after it, so a crash can leave a named file without a row (which a later
    // put or download of the id replaces, and a rebuild authenticates) but never a row
    // without its complete file.
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Each batch's items, linked or not, with where each went.
    type Linked = Vec<(NewPayload, io::Result<()>, PathBuf)>;
    let mut done: Vec<(Linked, InstallReply)> = Vec::new();
    for (items, reply) in batches {
        let mut out = Vec::with_capacity(items.len());
        for mut i in items {
            let r = link_into_place(&mut i.payload, &i.dest, i.replace);
            if r.is_ok()
                && let Some(d) = i.dest.parent()
                && !dirs.iter().any(|x| x == d)
            {
                dirs.push(d.to_path_buf());
            }
            out.push((i.payload, r, i.dest));
        }
        done.push((out, reply));
    }
    let linked: Vec<&fs::File> = done
        .iter()
        .flat_map(|(out, _)| out)
        .filter(|(_, r, _)| r.is_ok())
        .map(|(p, _, _)| &p.file)
        .collect();
    let how = GroupSync::choose(linked.len());
    let synced = how.sync_linked(root, &linked, &dirs);
    drop(linked);
    for (out, reply) in done {
        let out = out
            .into_iter()
            .map(|(p, r, dest)| match (r, &synced) {
                (Ok(()), Err(_)) => {
                    // Not durable, so not installed: no name stays for a file the caller
                    // will not commit.
                    let _ = remove(&dest);
                    (p, clone_err(&synced))
                }
                (r, _) => (p, r),
            })
            .collect();
        let _ = reply.send(out);
    }
}

/// Links a written payload at `dest`; with `replace`, a file already there (a stale
/// download) is removed first. Only then, so the common case costs one `linkat`.
fn link_into_place(payload: &mut NewPayload, dest: &Path, replace: bool) -> io::Result<()> {
    match payload.link(dest) {
        Err(e) if replace && e.kind() == io::ErrorKind::AlreadyExists => {
            remove(dest)?;
            payload.link(dest)
        }
        r => r,
    }
}

fn clone_err(r: &io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// Removes a payload file; a missing file is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Deletes every temp left by a crash except partial downloads (which a restarted download
/// resumes; the engine removes those whose blob is gone), and the plaintext partials of
/// releases before at-rest encryption (`dl.*` and their `.hdr` sidecars: fetched again).
pub fn sweep_temps(data: &DataDir) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(data.tmp_dir())? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sync_group_installs_concurrent_batches_each_with_its_own_results() {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::new(root.path());
        data.create().unwrap();
        let group = std::sync::Arc::new(SyncGroup::new(&data));
        let ns = Namespace::default();
        let taken = data.payload_path(&ns, &BlobId::random());
        create_private_dir(taken.parent().unwrap()).unwrap();
        fs::write(&taken, b"already here").unwrap();

        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let (group, data, ns, taken) = (group.clone(), data.clone(), ns.clone(), taken.clone());
            tasks.push(tokio::spawn(async move {
                let mut items = Vec::new();
                for k in 0..5u8 {
                    // Task 0's first item would clobber the taken path: refused.
                    let dest = match (t, k) {
                        (0, 0) => taken.clone(),
                        _ => data.payload_path(&ns, &BlobId::random()),
                    };
                    let mut p = NewPayload::create(&data, &dest).unwrap();
                    p.file().write_all(&[t, k]).unwrap();
                    items.push(Install {
                        payload: p,
                        dest,
                        replace: false,
                    });
                }
                let dests: Vec<PathBuf> = items.iter().map(|i| i.dest.clone()).collect();
                let done = group.install(items).await.unwrap();
                assert_eq!(done.len(), 5);
                for (k, ((_, r), dest)) in done.iter().zip(&dests).enumerate() {
                    if (t, k) == (0, 0) {
                        assert_eq!(r.as_ref().unwrap_err().kind(), io::ErrorKind::AlreadyExists);
                        assert_eq!(fs::read(dest).unwrap(), b"already here");
                    } else {
                        r.as_ref().unwrap();
                        assert_eq!(fs::read(dest).unwrap(), [t, k as u8]);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut p = NewPayload::create(&data, &taken).unwrap();
        p.file().write_all(b"fresh copy").unwrap();
        let item = Install {
            payload: p,
            dest: taken.clone(),
            replace: true,
        };
        let done = group.install(vec![item]).await.unwrap();
        done[0].1.as_ref().unwrap();
        assert_eq!(fs::read(&taken).unwrap(), b"fresh copy");
        // 8 x 5 new files, one refused, plus the taken one: nothing else anywhere.
        assert_eq!(files_under(root.path()).len(), 8 * 5 - 1 + 1);
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

    #[test]
    fn secure_tightens_an_open_data_dir_and_leaves_symlinks_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path().join("data"));
        data.create().unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let chmod = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m));
        let payload = data.payload_path(&Namespace::default(), &BlobId::new("abc").unwrap());
        create_private_dir(payload.parent().unwrap()).unwrap();
        fs::write(&payload, b"plaintext").unwrap();
        fs::write(data.store_file(), b"db").unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"not ours to change").unwrap();
        std::os::unix::fs::symlink(&outside, data.root().join("link")).unwrap();
        chmod(&outside, 0o644).unwrap();
        chmod(data.root(), 0o755).unwrap();
        chmod(payload.parent().unwrap(), 0o775).unwrap();
        chmod(&payload, 0o644).unwrap();
        chmod(&data.store_file(), 0o664).unwrap();
        let s = secure(&data).unwrap();
        assert_eq!(s.tightened, 4, "{s:?}");
        assert!(s.examples.contains(&(payload.clone(), 0o644)), "{s:?}");
        assert_eq!(mode(data.root()), 0o700);
        assert_eq!(mode(payload.parent().unwrap()), 0o700);
        assert_eq!(mode(&payload), 0o600);
        assert_eq!(mode(&data.store_file()), 0o600);
        assert_eq!(
            mode(&outside),
            0o644,
            "a symlink's target is not ours to change"
        );
        assert_eq!(secure(&data).unwrap(), Secured::default(), "idempotent");
        // Under a private root nothing is walked below its own entries: a file opened there
        // is out of other users' reach, and is tightened only when the root is open again.
        chmod(&payload, 0o644).unwrap();
        chmod(&data.store_file(), 0o644).unwrap();
        let s = secure(&data).unwrap();
        assert_eq!(s.tightened, 1, "only the store file, a direct entry: {s:?}");
        assert_eq!(mode(&payload), 0o644);
        chmod(data.root(), 0o755).unwrap();
        assert_eq!(
            secure(&data).unwrap().tightened,
            2,
            "the root and the payload"
        );
        assert_eq!(mode(&payload), 0o600);
    }
}
