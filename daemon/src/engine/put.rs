//! Puts: a file by path (`put_paths`, many at once, small ones made durable together) or a
//! stream (`PutWriter`), each sealed into blob format v1 while it is copied into the store
//! (docs/local-store.md), linked into place without clobbering, then committed to the store,
//! which queues the upload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use blobsync_shared::writeback::WriteBehind;
use blobsync_shared::{BlobId, Namespace};
use tokio::sync::oneshot;

use crate::engine::Shared;
use crate::engine::transfer::early::{self, EarlyUpload, Feed, Handoff};
use crate::handle::{EngineError, EngineHandle, EngineOps, blocking};
use crate::spool::Spool;
use crate::status::{Priority, Status};
use crate::store::{BlobInfo, NewLocalBlob, StoreError, payload, sealed};

impl EngineHandle {
    /// Starts a put: write the bytes, then `commit`. Dropping the writer aborts it (the temp
    /// file is removed). `id = None` picks a random UUIDv4 id. Fails with `AlreadyExists`
    /// when the id is taken (checked now and again at commit).
    ///
    /// With `size_hint` (the exact size), the bytes are sealed into the payload as they
    /// arrive; without, they are spooled sealed under a one-time key and sealed into the
    /// payload at commit (`sealed::EphemeralSpool`): plaintext never reaches the disk.
    pub async fn put_writer(
        &self,
        ns: Namespace,
        id: Option<BlobId>,
        priority: Priority,
        local_only: bool,
        size_hint: Option<u64>,
    ) -> Result<PutWriter, EngineError> {
        self.alive()?;
        let id = id.unwrap_or_else(BlobId::random);
        // Refused now, before the client streams the bytes (and again at commit).
        self.refuse_taken(&ns, &id).await?;
        let seal = match size_hint {
            Some(size) => {
                let seg = self.shared.settings().segment_exp;
                let header = blobsync_shared::codec::Header::new(ns.clone(), id.clone(), size, seg)
                    .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
                PutSeal::Direct(Box::new(sealed::Sealer::new(&self.shared.key, header)))
            }
            None => PutSeal::Spooled(Box::default()),
        };
        let data = self.shared.data.clone();
        let dest = data.payload_path(&ns, &id);
        let mut payload = blocking(move || Ok(payload::NewPayload::create(&data, &dest)?)).await?;
        let file = Spool::cached(payload.file().try_clone()?);
        Ok(PutWriter {
            shared: self.shared.clone(),
            ns,
            id,
            priority,
            local_only,
            payload: Some(payload),
            file: Some(file),
            seal: Some(seal),
            out: Vec::new(),
            size: 0,
        })
    }

    /// Puts the file at `path` (read by the daemon, streamed).
    pub async fn put_path(
        &self,
        path: &Path,
        ns: Namespace,
        id: Option<BlobId>,
        priority: Priority,
        local_only: bool,
    ) -> Result<BlobInfo, EngineError> {
        let item = PutItem {
            path: path.to_path_buf(),
            ns,
            id,
            priority,
            local_only,
        };
        let mut done = self.put_paths(vec![item]).await?;
        done.pop().expect("one result per item")
    }

    /// Puts many files at once (`PutPaths`): each is copied and hashed, the small ones are made
    /// durable together through the sync group, and their rows commit in one store
    /// transaction, so a batch of small files costs about as much as one. One result per
    /// item, in order; an item fails alone (bad path, taken id, unreadable file, an id given
    /// twice in the batch).
    pub async fn put_paths(
        &self,
        items: Vec<PutItem>,
    ) -> Result<Vec<Result<BlobInfo, EngineError>>, EngineError> {
        self.alive()?;
        let mut results: Vec<Option<Result<BlobInfo, EngineError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut seen = std::collections::HashSet::new();
        let mut work = Vec::with_capacity(items.len());
        for (i, it) in items.into_iter().enumerate() {
            if !it.path.is_absolute() {
                results[i] = Some(Err(EngineError::InvalidArgument(format!(
                    "{} is not an absolute path; the daemon resolves paths on its own",
                    it.path.display()
                ))));
                continue;
            }
            let id = it.id.unwrap_or_else(BlobId::random);
            if !seen.insert((it.ns.clone(), id.clone())) {
                results[i] = Some(Err(EngineError::InvalidArgument(format!(
                    "blob {id} in namespace {} is given twice in this request",
                    it.ns
                ))));
                continue;
            }
            work.push((i, it.path, it.ns, id, it.priority, it.local_only));
        }
        // The per-blob locks keep a download of the same id out; taken in id order, as
        // batch downloads do, so two batches never wait on each other.
        let mut keys: Vec<(Namespace, BlobId)> =
            work.iter().map(|w| (w.2.clone(), w.3.clone())).collect();
        keys.sort();
        let mut guards = Vec::with_capacity(keys.len());
        for (ns, id) in &keys {
            guards.push(Some(self.shared.blob_lock(ns, id).lock_owned().await));
        }
        // No look-up of the ids first (a trip to the store thread): a taken id is refused by
        // the no-clobber link or by the store commit, and its copy is discarded. One trip to
        // the blocking pool copies and hashes every file.
        let data = self.shared.data.clone();
        let key = self.shared.key.clone();
        let seg = self.shared.settings().segment_exp;
        let jobs: Vec<(PathBuf, Namespace, BlobId, bool)> = work
            .iter()
            .map(|w| (w.1.clone(), w.2.clone(), w.3.clone(), w.5))
            .collect();
        // A big file is uploaded while it is copied in (`transfer::early`).
        let early = EarlyStart {
            rt: tokio::runtime::Handle::current(),
            ops: self.ops.clone(),
            shared: self.shared.clone(),
        };
        // The copy outlives this future on the blocking pool: if the caller goes away (the
        // RPC is dropped), the flag stops it at the next chunk.
        let cancel = CancelOnDrop::default();
        let flag = cancel.0.clone();
        let copied = blocking(move || {
            Ok(jobs
                .into_iter()
                .map(|(src, ns, id, local_only)| {
                    let early = (!local_only).then_some(&early);
                    copy_in(&data, &key, seg, &src, ns, id, &flag, early)
                })
                .collect::<Vec<_>>())
        })
        .await?;
        drop(cancel);
        // The small ones are made durable together.
        let mut group = Vec::new();
        let mut slots = Vec::new();
        let mut copies = Vec::with_capacity(work.len());
        for (k, c) in copied.into_iter().enumerate() {
            match c {
                Ok(c) if c.linked.is_none() => {
                    slots.push(k);
                    group.push(payload::Install {
                        payload: c.payload,
                        dest: self.shared.data.payload_path(&work[k].2, &work[k].3),
                        replace: false,
                    });
                    copies.push(Ok((None, None, c.size, c.sha256, c.handoff)));
                }
                Ok(c) => copies.push(Ok((Some(c.payload), c.linked, c.size, c.sha256, c.handoff))),
                Err(e) => copies.push(Err(e)),
            }
        }
        if !group.is_empty() {
            let installed = self.shared.syncer.install(group).await?;
            for (k, (p, linked)) in slots.into_iter().zip(installed) {
                if let Ok((payload, l, _, _, _)) = &mut copies[k] {
                    *payload = Some(p);
                    *l = Some(linked);
                }
            }
        }
        // Every row commits; concurrent inserts share one store transaction.
        let commits = work.into_iter().zip(copies).map(|(w, mut c)| {
            let shared = self.shared.clone();
            // An early upload takes the row and the blob's lock from the commit.
            let handoff = match &mut c {
                Ok((.., tx @ Some(_))) => {
                    let k = keys
                        .binary_search_by(|(ns, id)| (ns, id).cmp(&(&w.2, &w.3)))
                        .expect("every item's key was locked");
                    tx.take().zip(guards[k].take())
                }
                _ => None,
            };
            async move {
                let (i, _, ns, id, priority, local_only) = w;
                let r = match c {
                    Err(e) => Err(e),
                    Ok((payload, linked, size, sha256, _)) => {
                        let payload = payload.expect("set for every copied item");
                        let linked = linked.expect("set for every copied item");
                        let new = NewLocalBlob {
                            ns,
                            id,
                            size,
                            sha256,
                            priority,
                            local_only,
                            created: (shared.now)(),
                        };
                        let r = commit_put(&shared, payload, linked, new).await;
                        if let (Ok(blob), Some((tx, guard))) = (&r, handoff) {
                            // Nobody takes it when the early upload has ended.
                            let _ = tx.send(Handoff {
                                blob: blob.clone(),
                                guard,
                            });
                        }
                        r
                    }
                };
                (i, r)
            }
        });
        for (i, r) in futures_util::future::join_all(commits).await {
            results[i] = Some(r);
        }
        drop(guards);
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect())
    }

    /// `AlreadyExists` when the id has a row.
    pub(crate) async fn refuse_taken(
        &self,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<(), EngineError> {
        match self.shared.store.get(ns, id).await? {
            Some(b) if b.status == Status::PendingDelete => Err(EngineError::DeletePending {
                ns: ns.clone(),
                id: id.clone(),
            }),
            Some(b) => Err(StoreError::AlreadyExists {
                ns: ns.clone(),
                id: id.clone(),
                status: b.status,
            }
            .into()),
            None => Ok(()),
        }
    }
}

/// A put in progress: `write` chunks, then `commit`. Dropped without commit, it is aborted
/// and its file vanishes (it has no name until commit).
pub struct PutWriter {
    shared: Arc<Shared>,
    ns: Namespace,
    id: BlobId,
    priority: Priority,
    local_only: bool,
    payload: Option<payload::NewPayload>,
    /// The same open file, for async writes.
    file: Option<Spool>,
    seal: Option<PutSeal>,
    /// Sealed bytes on their way to `file`.
    out: Vec<u8>,
    size: u64,
}

/// How a streamed put seals what arrives.
enum PutSeal {
    /// The size is known: straight into the payload.
    Direct(Box<sealed::Sealer>),
    /// It is not: into a spool under a one-time key, sealed into the payload at commit.
    Spooled(Box<sealed::EphemeralSpool>),
}

impl PutWriter {
    /// The id the blob will get.
    pub fn id(&self) -> &BlobId {
        &self.id
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// Appends bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), EngineError> {
        let f = self.file.as_mut().ok_or(EngineError::ShuttingDown)?;
        match self.seal.as_mut().ok_or(EngineError::ShuttingDown)? {
            PutSeal::Direct(s) => s
                .push(data, &mut self.out)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?,
            PutSeal::Spooled(s) => s.push(data, &mut self.out),
        }
        f.write_all(&self.out).await?;
        self.out.clear();
        self.size += data.len() as u64;
        Ok(())
    }

    /// Makes the blob durable (fsync, link into place, store commit) and queues its upload,
    /// which starts at once.
    pub async fn commit(mut self) -> Result<BlobInfo, EngineError> {
        let mut file = self.file.take().ok_or(EngineError::ShuttingDown)?;
        let seal = self.seal.take().ok_or(EngineError::ShuttingDown)?;
        let mut payload = self.payload.take().ok_or(EngineError::ShuttingDown)?;
        let sha = match seal {
            PutSeal::Direct(s) => {
                let sha = s
                    .finish(&mut self.out)
                    .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
                file.write_all(&self.out).await?;
                file.close().await?;
                sha
            }
            PutSeal::Spooled(mut spool) => {
                spool.finish(&mut self.out);
                file.write_all(&self.out).await?;
                file.close().await?;
                // Now the size is known: seal the spooled bytes into the real payload.
                let seg = self.shared.settings().segment_exp;
                let header = blobsync_shared::codec::Header::new(
                    self.ns.clone(),
                    self.id.clone(),
                    spool.len(),
                    seg,
                )
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
                let data = self.shared.data.clone();
                let dest = data.payload_path(&self.ns, &self.id);
                let key = self.shared.key.clone();
                let (p, sha) = blocking(move || {
                    use std::io::Seek;
                    let mut spooled =
                        std::io::BufReader::with_capacity(256 * 1024, payload.file().try_clone()?);
                    spooled.seek(std::io::SeekFrom::Start(0))?;
                    let mut out = payload::NewPayload::create(&data, &dest)?;
                    let sha = spool.unspool(&key, header, &mut spooled, out.file())?;
                    drop(payload); // the spool vanishes
                    Ok((out, sha))
                })
                .await?;
                payload = p;
                sha
            }
        };
        let lock = self.shared.blob_lock(&self.ns, &self.id);
        let _g = lock.lock().await;
        let (payload, linked) = if self.size > GROUP_SYNC_MAX {
            let dest = self.shared.data.payload_path(&self.ns, &self.id);
            blocking(move || {
                let linked = install_payload(&mut payload, &dest);
                Ok((payload, linked))
            })
            .await?
        } else {
            install_in_group(&self.shared, payload, &self.ns, &self.id).await?
        };
        let new = NewLocalBlob {
            ns: self.ns.clone(),
            id: self.id.clone(),
            size: self.size,
            sha256: sha,
            priority: self.priority,
            local_only: self.local_only,
            created: (self.shared.now)(),
        };
        commit_put(&self.shared, payload, linked, new).await
    }
}

/// One file of [`EngineHandle::put_paths`].
#[derive(Debug, Clone)]
pub struct PutItem {
    /// Absolute path of a file the daemon can read.
    pub path: PathBuf,
    /// The namespace.
    pub ns: Namespace,
    /// The id; `None` picks a random one.
    pub id: Option<BlobId>,
    /// Upload priority.
    pub priority: Priority,
    /// Never upload it.
    pub local_only: bool,
}

/// What [`copy_in`] needs to start a big put's early upload (`transfer::early`).
struct EarlyStart {
    rt: tokio::runtime::Handle,
    ops: Arc<dyn EngineOps>,
    shared: Arc<Shared>,
}

impl EarlyStart {
    /// Starts the early upload of the payload being written to `file` under `header`, when
    /// it is big enough and a slot is free; returns the feed the writer advances and the
    /// sender of the hand-off.
    fn begin(
        &self,
        header: &blobsync_shared::codec::Header,
        file: &std::fs::File,
    ) -> Option<(Arc<Feed>, oneshot::Sender<Handoff>)> {
        let stored = header.stored_size();
        let permit = early::slot(&self.shared, stored)?;
        let file = file.try_clone().ok()?;
        let feed = Arc::new(Feed::default());
        let (tx, rx) = oneshot::channel();
        let e = EarlyUpload {
            ns: header.namespace.clone(),
            id: header.id.clone(),
            salt: header.salt,
            stored,
            file,
            feed: feed.clone(),
            handoff: rx,
            permit,
        };
        let ops = self.ops.clone();
        self.rt.spawn(async move { ops.early_upload(e).await });
        Some((feed, tx))
    }
}

/// A file copied into a new payload by [`copy_in`].
struct Copied {
    payload: payload::NewPayload,
    /// `Some` when it was big enough to be installed on its own (fsync, link, dir fsync).
    linked: Option<std::io::Result<()>>,
    size: u64,
    sha256: [u8; 32],
    /// Hands the committed row to the early upload, when one started.
    handoff: Option<oneshot::Sender<Handoff>>,
}

/// Blocking: seals `src` into a new payload for `ns/id` while copying it (blob format v1,
/// a fresh salt: the bytes the upload will send as they are), hashing its plaintext. A big
/// file is also fsynced and linked here (write-behind already overlapped most of its
/// writing); a small one is left for the sync group. A file that changes size while it is
/// copied is refused: the header has already promised its size.
#[allow(clippy::too_many_arguments)]
fn copy_in(
    data: &payload::DataDir,
    key: &blobsync_shared::StorageKey,
    seg: u8,
    src: &Path,
    ns: Namespace,
    id: BlobId,
    cancelled: &AtomicBool,
    early: Option<&EarlyStart>,
) -> Result<Copied, EngineError> {
    let mut from = open_regular(src)?;
    let size = from
        .metadata()
        .map_err(|error| EngineError::Source {
            path: src.to_path_buf(),
            error,
        })?
        .len();
    let dest = data.payload_path(&ns, &id);
    let header = blobsync_shared::codec::Header::new(ns, id, size, seg)
        .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
    let mut payload = payload::NewPayload::create(data, &dest)?;
    let (feed, handoff) = early.and_then(|e| e.begin(&header, payload.file())).unzip();
    let mut behind = WriteBehind::default();
    let sealed = sealed::seal_file(
        key,
        header,
        &mut from,
        payload.file(),
        |f, n| {
            if let Some(feed) = &feed {
                feed.advance(n);
            }
            behind.wrote(f, n)
        },
        || cancelled.load(Ordering::Relaxed),
    );
    let sha256 = match sealed {
        Ok(sha) => sha,
        Err(e) if sealed::is_source_error(&e) => {
            return Err(EngineError::Source {
                path: src.to_path_buf(),
                error: e,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            return Err(EngineError::InvalidArgument(e.to_string()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(EngineError::InvalidArgument(format!(
                "{} changed size while it was being put ({e}); put it again once it is \
                 complete",
                src.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let linked = (size > GROUP_SYNC_MAX).then(|| install_payload(&mut payload, &dest));
    Ok(Copied {
        payload,
        linked,
        size,
        sha256,
        handoff,
    })
}

/// Blocking: opens a file to put, refusing anything but a regular file. `O_NONBLOCK` so a
/// FIFO without a writer cannot hang the open; `fstat` on the open file (not the path), so
/// what is checked is what is read. A device like `/dev/zero` would never end.
fn open_regular(src: &Path) -> Result<std::fs::File, EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(src)
        .map_err(|error| EngineError::Source {
            path: src.to_path_buf(),
            error,
        })?;
    let meta = from.metadata().map_err(|error| EngineError::Source {
        path: src.to_path_buf(),
        error,
    })?;
    if !meta.is_file() {
        return Err(EngineError::InvalidArgument(format!(
            "{} is {}: a file put by path must be a regular file. To store a stream, send its \
             bytes instead (`blobctl put -`, the Put call)",
            src.display(),
            file_kind(&meta.file_type())
        )));
    }
    // Regular files ignore O_NONBLOCK for reads, but clear it anyway: the fd is ours.
    // SAFETY: fcntl on a valid, owned fd.
    unsafe {
        use std::os::unix::io::AsRawFd;
        let fd = from.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(from)
}

/// A file type in words, for error messages.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Sets its flag when dropped: tells blocking work that its caller is gone.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Puts up to this size are made durable with everyone else's (see [`payload::SyncGroup`]).
const GROUP_SYNC_MAX: u64 = 1 << 20;

/// Installs a small new payload through the sync group (no clobber).
async fn install_in_group(
    shared: &Shared,
    payload: payload::NewPayload,
    ns: &Namespace,
    id: &BlobId,
) -> Result<(payload::NewPayload, std::io::Result<()>), EngineError> {
    let item = payload::Install {
        payload,
        dest: shared.data.payload_path(ns, id),
        replace: false,
    };
    let mut done = shared.syncer.install(vec![item]).await?;
    Ok(done.pop().expect("one result per item"))
}

/// Blocking: fsyncs a new payload, links it at `dest` (no clobber) and fsyncs the directory.
fn install_payload(payload: &mut payload::NewPayload, dest: &Path) -> std::io::Result<()> {
    payload.file().sync_all()?;
    payload.link(dest)?;
    payload::sync_dir(dest.parent().expect("payload paths have a parent")) // by construction
}

/// The end of every put, with the blob's lock held: on `AlreadyExists` from the link, a file
/// without a row is a leftover of a crash between link and commit (never committed, so
/// garbage) and is replaced; then the store commit, which queues the upload.
async fn commit_put(
    shared: &Arc<Shared>,
    mut payload: payload::NewPayload,
    mut linked: std::io::Result<()>,
    blob: NewLocalBlob,
) -> Result<BlobInfo, EngineError> {
    let (ns, id) = (blob.ns.clone(), blob.id.clone());
    let dest = shared.data.payload_path(&ns, &id);
    if matches!(&linked, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists)
        && shared.store.get(&ns, &id).await?.is_none()
    {
        tracing::warn!(%ns, %id, "removing an uncommitted payload left by a crash");
        let d2 = dest.clone();
        linked = blocking(move || {
            payload::remove(&d2)?;
            Ok(install_payload(&mut payload, &d2))
        })
        .await?;
    } else {
        drop(payload);
    }
    if let Err(e) = linked {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            let status = shared
                .store
                .get(&ns, &id)
                .await?
                .map_or(Status::PendingUpload, |b| b.status);
            return Err(StoreError::AlreadyExists { ns, id, status }.into());
        }
        return Err(e.into());
    }
    if shared.crash_here("put.after_link") {
        return Err(EngineError::ShuttingDown);
    }
    let (size, local_only) = (blob.size, blob.local_only);
    match shared.store.insert_local(blob).await {
        Ok(info) => {
            shared.kick_for_put(&ns, size, local_only);
            Ok(info)
        }
        Err(e) => {
            // The row exists (a lazy blob listed meanwhile): our file must not stay.
            let _ = tokio::fs::remove_file(&dest).await;
            Err(e.into())
        }
    }
}
