//! [`EngineHandle`]: the only API the control service (and tests) use to drive the daemon —
//! put, get, delete, list, status, sync, watch, retry, priority, pause/resume, limits,
//! verify, and remote flags/listing.
//!
//! Errors are [`EngineError`]; [`EngineError::code`] says which gRPC code a caller should
//! map it to. This module never knows about prost types.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use blobsync_shared::codec::Decoder;
use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::wire::{BlobDetail, Flag};
use blobsync_shared::writeback::WriteBehind;
use blobsync_shared::{BlobId, Namespace};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::engine::{Engine, RemoteState, Shared, SyncRequest, TransferInfo};
use crate::events::{CycleSummary, Subscription};
use crate::remote::{Remote, RemoteError, RemoteListFilter};
use crate::spool::Spool;
use crate::status::{Priority, Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, ListFilter, NewLocalBlob, StoreError, payload, sealed};

/// A blob's plaintext as [`EngineHandle::open_for_read`] gives it: decrypted as it is read.
pub struct PlainReader(std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>);

impl std::fmt::Debug for PlainReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainReader")
    }
}

impl tokio::io::AsyncRead for PlainReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

/// Plaintext chunks decrypted ahead of the reader.
const READ_AHEAD: usize = 4;
/// Plaintext bytes per chunk handed to the reader.
const READ_CHUNK: usize = 256 * 1024;

/// A `Write` on the blocking pool that hands its bytes, in chunks, to an async reader.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// Sends what is buffered; `BrokenPipe` once the reader is gone (the call was dropped).
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(READ_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = (READ_CHUNK - self.buf.len()).min(b.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= READ_CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which gRPC code an [`EngineError`] maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bad input (ids, ranges, flags, paths).
    InvalidArgument,
    /// No such blob.
    NotFound,
    /// The blob already exists.
    AlreadyExists,
    /// The remote is down or refused us; try later.
    Unavailable,
    /// The blob's status does not allow it (e.g. retry on a synced blob).
    FailedPrecondition,
    /// A bug or local disk trouble.
    Internal,
    /// The daemon may not read a file it was asked to.
    PermissionDenied,
}

/// Errors of [`EngineHandle`] calls; messages are for humans.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The blob's status does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The remote is needed and not usable.
    #[error("{0}")]
    Unavailable(String),
    /// A store error (NotFound/AlreadyExists/illegal transition/internal).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A remote error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Local file trouble.
    #[error("local i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file to put cannot be opened or read.
    #[error(
        "the daemon cannot read {}: {error}; the file must exist and be readable by the daemon's user",
        path.display()
    )]
    Source {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// No such blob in the namespace asked for, but the id exists in others.
    #[error(
        "no blob {id} in namespace {ns}, but there is one in {}: ask for {}/{id} (or -n {})",
        found_in.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
        found_in[0], found_in[0]
    )]
    NotFoundElsewhere {
        /// The namespace asked for.
        ns: Namespace,
        /// The id.
        id: BlobId,
        /// Namespaces holding the id (at least one).
        found_in: Vec<Namespace>,
    },
    /// A put of an id whose delete has not reached the server yet.
    #[error(
        "{ns}/{id} was deleted here and the server has not been told yet: put it again once it \
         has (`blobctl sync --wait` tells it now, when the server is reachable), or use another id"
    )]
    DeletePending {
        /// Namespace.
        ns: Namespace,
        /// Id.
        id: BlobId,
    },
}

impl EngineError {
    /// The gRPC code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            EngineError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            EngineError::Unavailable(_) | EngineError::ShuttingDown => ErrorCode::Unavailable,
            EngineError::Store(StoreError::NotFound { .. })
            | EngineError::NotFoundElsewhere { .. } => ErrorCode::NotFound,
            EngineError::Store(StoreError::AlreadyExists { .. })
            | EngineError::DeletePending { .. } => ErrorCode::AlreadyExists,
            EngineError::Store(StoreError::Illegal(_)) => ErrorCode::FailedPrecondition,
            EngineError::Store(StoreError::Closed) => ErrorCode::Unavailable,
            EngineError::Store(_) | EngineError::Io(_) => ErrorCode::Internal,
            EngineError::Source { error, .. } => match error.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::InvalidArgument,
            },
            EngineError::Remote(e) => match e {
                RemoteError::NotFound => ErrorCode::NotFound,
                RemoteError::Conflict => ErrorCode::AlreadyExists,
                RemoteError::BadFlags(_) | RemoteError::RangeNotSatisfiable => {
                    ErrorCode::InvalidArgument
                }
                RemoteError::TooLarge | RemoteError::QuotaExceeded => ErrorCode::FailedPrecondition,
                _ => ErrorCode::Unavailable,
            },
        }
    }
}

/// Bandwidth and concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Upload bytes/s (0: none).
    pub up: u64,
    /// Download bytes/s (0: none).
    pub down: u64,
    /// Concurrent transfers.
    pub transfers: usize,
}

/// A partial change of [`Limits`]; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitsUpdate {
    /// Upload bytes/s (0: none).
    pub up: Option<u64>,
    /// Download bytes/s (0: none).
    pub down: Option<u64>,
    /// Concurrent transfers (at least 1).
    pub transfers: Option<usize>,
}

/// What `status` reports.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    /// Blobs per status (every status present, zeros included).
    pub counts: BTreeMap<Status, u64>,
    /// Bytes per status (plaintext size when known, else stored size), zeros included.
    pub bytes: BTreeMap<Status, u64>,
    /// Blobs per namespace and status.
    pub namespaces: BTreeMap<Namespace, BTreeMap<Status, u64>>,
    /// Bytes per namespace and status (as `bytes`).
    pub namespace_bytes: BTreeMap<Namespace, BTreeMap<Status, u64>>,
    /// Download policy of every namespace in `namespaces` and every configured one.
    pub policies: BTreeMap<Namespace, blobsync_shared::config::NamespacePolicy>,
    /// When the engine was created (daemon start).
    pub started: SystemTime,
    /// Transfers in flight.
    pub transfers: Vec<TransferInfo>,
    /// The last finished cycle.
    pub last_cycle: Option<CycleSummary>,
    /// When the next periodic cycle is due.
    pub next_cycle: Option<SystemTime>,
    /// A cycle is running now.
    pub cycle_running: bool,
    /// The remote's state.
    pub remote: RemoteState,
    /// Everything is paused.
    pub paused: bool,
    /// Paused namespaces.
    pub paused_namespaces: Vec<Namespace>,
    /// Current limits.
    pub limits: Limits,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The next event id (a watcher starting now resumes after `next_event_id - 1`).
    pub next_event_id: u64,
    /// Integrity alarms in force (held mass deletions, unproven tombstones, rollbacks,
    /// refused external blobs, a changed remote), oldest kind first.
    pub alarms: Vec<crate::events::Alarm>,
}

/// Progress of a verify pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Blobs checked so far.
    pub checked: u64,
    /// Blobs to check.
    pub total: u64,
    /// The blob just checked.
    pub ns: Namespace,
    /// The blob just checked.
    pub id: BlobId,
    /// `None`: fine; else what is wrong.
    pub problem: Option<String>,
}

/// One damaged blob found by verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Namespace.
    pub ns: Namespace,
    /// Id.
    pub id: BlobId,
    /// `"local"` or `"remote"`.
    pub copy: &'static str,
    /// What is wrong.
    pub problem: String,
    /// A download was queued to repair the local copy.
    pub requeued: bool,
}

/// What a verify pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Local payloads re-hashed.
    pub checked_local: u64,
    /// Server copies downloaded and authenticated.
    pub checked_remote: u64,
    /// What is damaged.
    pub damaged: Vec<Damage>,
    /// Blobs not checked, and why (external blobs: not encrypted by us, nothing to
    /// authenticate them with).
    pub skipped: Vec<(Namespace, BlobId, String)>,
}

/// The remote-dependent half of the engine, behind a trait object so the handle is not
/// generic.
pub(crate) trait EngineOps: Send + Sync {
    fn fetch(&self, ns: Namespace, id: BlobId) -> BoxFuture<'_, Result<(), EngineError>>;
    fn verify_remote_one(&self, b: BlobInfo) -> BoxFuture<'_, Result<Option<String>, EngineError>>;
    fn get_flags(&self, ns: Namespace, id: BlobId)
    -> BoxFuture<'_, Result<Vec<Flag>, EngineError>>;
    fn set_flags(
        &self,
        ns: Namespace,
        id: BlobId,
        flags: Vec<Flag>,
    ) -> BoxFuture<'_, Result<(), EngineError>>;
    fn list_remote(
        &self,
        ns: Namespace,
        f: RemoteListFilter,
    ) -> BoxFuture<'_, Result<Vec<BlobDetail>, EngineError>>;
}

impl<R: Remote, C: Clock> EngineOps for Engine<R, C> {
    fn fetch(&self, ns: Namespace, id: BlobId) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            let me = self.self_arc();
            let b = me
                .shared
                .store
                .get(&ns, &id)
                .await?
                .ok_or(StoreError::NotFound { ns, id })?;
            let mut stats = Default::default();
            me.download_one(b, true, &me.shared.cancel.child_token(), &mut stats)
                .await
                .map_err(EngineError::from)
        })
    }

    fn verify_remote_one(&self, b: BlobInfo) -> BoxFuture<'_, Result<Option<String>, EngineError>> {
        Box::pin(async move {
            let resp = self.remote.get(&b.ns, &b.id, None).await?;
            let mut body = resp.body;
            let mut d = Decoder::new(&self.shared.key, &b.ns, &b.id);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(RemoteError::from)?;
                self.shared.down.acquire(chunk.len()).await;
                if let Err(e) = d.feed(&chunk, |_| Ok::<(), std::convert::Infallible>(())) {
                    return Ok(Some(e.to_string()));
                }
            }
            Ok(d.finish().err().map(|e| e.to_string()))
        })
    }

    fn get_flags(
        &self,
        ns: Namespace,
        id: BlobId,
    ) -> BoxFuture<'_, Result<Vec<Flag>, EngineError>> {
        Box::pin(async move { Ok(self.remote.get_flags(&ns, &id).await?) })
    }

    fn set_flags(
        &self,
        ns: Namespace,
        id: BlobId,
        flags: Vec<Flag>,
    ) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async move { Ok(self.remote.set_flags(&ns, &id, &flags).await?) })
    }

    fn list_remote(
        &self,
        ns: Namespace,
        f: RemoteListFilter,
    ) -> BoxFuture<'_, Result<Vec<BlobDetail>, EngineError>> {
        Box::pin(async move { Ok(self.remote.list(&ns, &f).await?) })
    }
}

/// Cloneable handle to a running engine. Cheap to clone; every method is safe to call
/// concurrently.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    ops: Arc<dyn EngineOps>,
}

impl EngineHandle {
    /// The user's incoming recipient (`age1...`), derived from the storage key.
    pub fn incoming_recipient(&self) -> String {
        blobsync_shared::incoming::IncomingIdentity::derive(&self.shared.key).recipient()
    }

    pub(crate) fn new<R: Remote, C: Clock>(shared: Arc<Shared>, engine: Arc<Engine<R, C>>) -> Self {
        Self {
            shared,
            ops: engine,
        }
    }

    fn alive(&self) -> Result<(), EngineError> {
        if self.shared.cancel.is_cancelled() {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
        }
    }

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
            guards.push(self.shared.blob_lock(ns, id).lock_owned().await);
        }
        // No look-up of the ids first (a trip to the store thread): a taken id is refused by
        // the no-clobber link or by the store commit, and its copy is discarded. One trip to
        // the blocking pool copies and hashes every file.
        let data = self.shared.data.clone();
        let key = self.shared.key.clone();
        let seg = self.shared.settings().segment_exp;
        let jobs: Vec<(PathBuf, Namespace, BlobId)> = work
            .iter()
            .map(|w| (w.1.clone(), w.2.clone(), w.3.clone()))
            .collect();
        // The copy outlives this future on the blocking pool: if the caller goes away (the
        // RPC is dropped), the flag stops it at the next chunk.
        let cancel = CancelOnDrop::default();
        let flag = cancel.0.clone();
        let copied = blocking(move || {
            Ok(jobs
                .into_iter()
                .map(|(src, ns, id)| copy_in(&data, &key, seg, &src, ns, id, &flag))
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
                    copies.push(Ok((None, None, c.size, c.sha256)));
                }
                Ok(c) => copies.push(Ok((Some(c.payload), c.linked, c.size, c.sha256))),
                Err(e) => copies.push(Err(e)),
            }
        }
        if !group.is_empty() {
            let installed = self.shared.syncer.install(group).await?;
            for (k, (p, linked)) in slots.into_iter().zip(installed) {
                if let Ok((payload, l, _, _)) = &mut copies[k] {
                    *payload = Some(p);
                    *l = Some(linked);
                }
            }
        }
        // Every row commits; concurrent inserts share one store transaction.
        let commits = work.into_iter().zip(copies).map(|(w, c)| {
            let shared = self.shared.clone();
            async move {
                let (i, _, ns, id, priority, local_only) = w;
                let r = match c {
                    Err(e) => Err(e),
                    Ok((payload, linked, size, sha256)) => {
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
                        commit_put(&shared, payload, linked, new).await
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
    async fn refuse_taken(&self, ns: &Namespace, id: &BlobId) -> Result<(), EngineError> {
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

    /// Opens a blob's plaintext for reading: a reader of the plaintext from `range.start` and
    /// the number of bytes it gives. The payload is decrypted as it is read (one segment at a
    /// time, on the blocking pool), ranged reads included; a segment that fails
    /// authentication ends the reader with an `InvalidData` error, before any byte of it. A `REMOTE_ONLY` or `PENDING_DOWNLOAD` blob is fetched first
    /// when `fetch_if_missing` (else `FailedPrecondition`).
    pub async fn open_for_read(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
        fetch_if_missing: bool,
    ) -> Result<(PlainReader, u64), EngineError> {
        self.alive()?;
        let b = self.info(ns, id).await?;
        if b.external && self.shared.settings().policy(ns) != NamespacePolicy::Incoming {
            return Err(EngineError::FailedPrecondition(format!(
                "refused: {ns}/{id} is an external blob (delivered by an app, not encrypted by \
                 your devices) in a namespace that is not an incoming box; nothing \
                 authenticates its bytes"
            )));
        }
        let b = match b.status {
            s if s.has_payload() => b,
            Status::PendingDelete => {
                return Err(StoreError::NotFound {
                    ns: ns.clone(),
                    id: id.clone(),
                }
                .into());
            }
            Status::FailedDownload => {
                return Err(EngineError::FailedPrecondition(format!(
                    "blob {id} failed verification ({}); `blobctl retry {id}` re-queues it",
                    b.last_error.as_deref().unwrap_or("no reason kept")
                )));
            }
            s if !fetch_if_missing => {
                return Err(EngineError::FailedPrecondition(format!(
                    "blob {id} is {s}: not downloaded yet (ask with fetch to download it now)"
                )));
            }
            _ => {
                self.ops.fetch(ns.clone(), id.clone()).await?;
                self.info(ns, id).await?
            }
        };
        let size = b.size.unwrap_or(0);
        let r = range.unwrap_or(0..size);
        if r.start > r.end || r.end > size {
            return Err(EngineError::InvalidArgument(format!(
                "range {}-{} is outside the blob's {size} bytes",
                r.start, r.end
            )));
        }
        let path = self.shared.data.payload_path(ns, id);
        let key = self.shared.key.clone();
        let (ns2, id2) = (ns.clone(), id.clone());
        let mut src =
            blocking(move || Ok(sealed::PlainSource::open(&key, &path, &ns2, &id2, size)?)).await?;
        let (tx, rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(READ_AHEAD);
        let len = r.end - r.start;
        tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter {
                tx,
                buf: Vec::with_capacity(READ_CHUNK),
            };
            let res = src.copy_range(r, &mut w).and_then(|_| w.send());
            if let Err(e) = res {
                let _ = w.tx.blocking_send(Err(e));
            }
        });
        let reader =
            tokio_util::io::StreamReader::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok((PlainReader(Box::pin(reader)), len))
    }

    /// One blob's info.
    /// A miss says which other namespaces hold the id (users paste ids without theirs).
    pub async fn info(&self, ns: &Namespace, id: &BlobId) -> Result<BlobInfo, EngineError> {
        if let Some(b) = self.shared.store.get(ns, id).await? {
            return Ok(b);
        }
        let mut found_in = Vec::new();
        for other in self.shared.store.namespaces().await? {
            if &other != ns && self.shared.store.get(&other, id).await?.is_some() {
                found_in.push(other);
            }
        }
        Err(if found_in.is_empty() {
            StoreError::NotFound {
                ns: ns.clone(),
                id: id.clone(),
            }
            .into()
        } else {
            EngineError::NotFoundElsewhere {
                ns: ns.clone(),
                id: id.clone(),
                found_in,
            }
        })
    }

    /// Deletes a blob locally and (through the queue) on the server. Returns the new status
    /// (`PENDING_DELETE`) or `None` when nothing remains to do.
    pub async fn delete(&self, ns: &Namespace, id: &BlobId) -> Result<Option<Status>, EngineError> {
        self.alive()?;
        let lock = self.shared.blob_lock(ns, id);
        let _g = lock.lock().await;
        let b = self.info(ns, id).await?;
        let u = RowUpdate {
            now: Some((self.shared.now)()),
            ..Default::default()
        };
        let t = Transition::DeletedLocally {
            maybe_uploaded: b.upload_salt.is_some(),
        };
        let ch = self.shared.store.transition(ns, id, t, u).await?;
        if b.status.has_payload() {
            self.shared.remove_payload(ns, id).await;
        }
        if b.status == Status::PendingDownload {
            // A download stopped by a restart may have left a partial.
            self.shared.remove_partial(ns, id).await;
        }
        if ch.to.is_some() {
            self.shared.kick.notify_one();
        }
        Ok(ch.to)
    }

    /// A page of the local view, ordered by (namespace, id); pass the last row's key as
    /// `after` for the next page.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<BlobInfo>, EngineError> {
        Ok(self.shared.store.list(filter).await?)
    }

    /// The daemon's state.
    pub async fn status(&self) -> Result<StatusSnapshot, EngineError> {
        let counts = self.shared.store.counts().await?;
        let paused = self.shared.store.paused().await?;
        let settings = self.shared.settings();
        let mut by_status: BTreeMap<Status, u64> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        by_status.extend(counts.by_status);
        let mut bytes: BTreeMap<Status, u64> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        bytes.extend(counts.bytes_by_status);
        let mut policies: BTreeMap<_, _> = counts
            .by_namespace
            .keys()
            .map(|ns| {
                let p = blobsync_shared::config::policy_of(&settings.namespaces, ns);
                (ns.clone(), p)
            })
            .collect();
        policies.extend(settings.namespaces.iter().map(|(k, v)| (k.clone(), *v)));
        let st = self.shared.state();
        let mut transfers: Vec<TransferInfo> = st.transfers.values().cloned().collect();
        transfers.sort_by(|a, b| (&a.ns, &a.id).cmp(&(&b.ns, &b.id)));
        Ok(StatusSnapshot {
            counts: by_status,
            bytes,
            namespaces: counts.by_namespace,
            namespace_bytes: counts.bytes_by_namespace,
            policies,
            started: st.started,
            transfers,
            last_cycle: st.last_cycle.clone(),
            next_cycle: st.next_cycle,
            cycle_running: st.cycle_running,
            remote: st.remote.clone(),
            paused: paused.iter().any(Option::is_none),
            paused_namespaces: paused.into_iter().flatten().collect(),
            limits: Limits {
                up: settings.bwlimit_up,
                down: settings.bwlimit_down,
                transfers: settings.transfers,
            },
            data_dir: self.shared.data.root().to_path_buf(),
            next_event_id: self.shared.events.next_id(),
            alarms: st.alarms.values().cloned().collect(),
        })
    }

    /// Forces a cycle (coalesced with any already requested). With `wait`, returns its
    /// summary once it finished.
    pub async fn sync(&self, wait: bool) -> Result<Option<CycleSummary>, EngineError> {
        self.sync_allowing(wait, false).await
    }

    /// [`EngineHandle::sync`]; with `allow_mass_delete`, the cycle also applies the remote
    /// deletions the mass-deletion guard holds.
    pub async fn sync_allowing(
        &self,
        wait: bool,
        allow_mass_delete: bool,
    ) -> Result<Option<CycleSummary>, EngineError> {
        self.alive()?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .sync_tx
            .send(SyncRequest {
                full: false,
                allow_mass_delete,
                reply: wait.then_some(tx),
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        if !wait {
            return Ok(None);
        }
        rx.await.map(Some).map_err(|_| EngineError::ShuttingDown)
    }

    /// The remote's last error while it refuses this device's credentials (401/403).
    pub fn refused_credentials(&self) -> Option<String> {
        let st = self.shared.state();
        st.remote
            .unauthorized
            .then(|| st.remote.last_error.clone().unwrap_or_default())
    }

    /// Follows events; with `since`, replays the buffered ones after it first.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        self.shared.events.subscribe(since)
    }

    /// Re-queues a failed blob (or makes a queued one due now).
    pub async fn retry(&self, ns: &Namespace, id: &BlobId) -> Result<BlobInfo, EngineError> {
        self.shared.store.retry(ns, id).await.map_err(|e| match e {
            StoreError::Illegal(i) => EngineError::FailedPrecondition(format!(
                "blob {id} is {}: nothing to retry",
                i.from
            )),
            e => e.into(),
        })?;
        self.shared.kick.notify_one();
        self.info(ns, id).await
    }

    /// Re-queues every failed blob; returns how many.
    pub async fn retry_all_failed(&self) -> Result<u64, EngineError> {
        let n = self.shared.store.retry_all_failed().await?.len() as u64;
        self.shared.kick.notify_one();
        Ok(n)
    }

    /// Changes a blob's priority (takes effect at the next pick from the queue).
    pub async fn set_priority(
        &self,
        ns: &Namespace,
        id: &BlobId,
        p: Priority,
    ) -> Result<BlobInfo, EngineError> {
        Ok(self.shared.store.set_priority(ns, id, p).await?)
    }

    /// Pauses transfers of one namespace or all (persisted). Transfers already running
    /// finish; listing continues.
    pub async fn pause(&self, ns: Option<Namespace>) -> Result<(), EngineError> {
        Ok(self.shared.store.set_paused(ns, true).await?)
    }

    /// Resumes one namespace or all (`None` also clears per-namespace pauses).
    pub async fn resume(&self, ns: Option<Namespace>) -> Result<(), EngineError> {
        self.shared.store.set_paused(ns, false).await?;
        self.shared.kick.notify_one();
        Ok(())
    }

    /// Changes limits at run time; returns the new ones.
    pub fn set_limits(&self, u: LimitsUpdate) -> Result<Limits, EngineError> {
        if u.transfers == Some(0) {
            return Err(EngineError::InvalidArgument(
                "transfers must be at least 1".into(),
            ));
        }
        self.shared.apply_limits(u.up, u.down, u.transfers);
        let s = self.shared.settings();
        Ok(Limits {
            up: s.bwlimit_up,
            down: s.bwlimit_down,
            transfers: s.transfers,
        })
    }

    /// Re-hashes every local payload against its recorded SHA-256 (a damaged `SYNCED` copy
    /// is re-queued for download); with `remote`, also downloads and authenticates every
    /// server copy of a synced blob. Progress goes to `progress` (dropped if it is full).
    pub async fn verify(
        &self,
        remote: bool,
        progress: mpsc::Sender<VerifyProgress>,
    ) -> Result<VerifyReport, EngineError> {
        self.verify_only(None, None, remote, progress).await
    }

    /// [`EngineHandle::verify`] limited to one namespace, or to one blob (`ns` and `id`).
    pub async fn verify_only(
        &self,
        ns: Option<Namespace>,
        id: Option<BlobId>,
        remote: bool,
        progress: mpsc::Sender<VerifyProgress>,
    ) -> Result<VerifyReport, EngineError> {
        let mut single = match (&ns, &id) {
            (Some(n), Some(i)) => Some(self.info(n, i).await?),
            (None, Some(_)) => {
                return Err(EngineError::InvalidArgument(
                    "verify of one blob needs its namespace too".into(),
                ));
            }
            _ => None,
        };
        if remote && self.shared.wrong_key() {
            // Every remote copy would fail: one clear answer instead of "checked 0".
            return Err(EngineError::FailedPrecondition(
                crate::engine::keycheck::WRONG_KEY_MESSAGE.into(),
            ));
        }
        let mut report = VerifyReport::default();
        let counts = self.shared.store.counts().await?;
        let total = match (&ns, &single) {
            (_, Some(_)) => 1,
            (Some(n), None) => counts.by_namespace.get(n).map_or(0, |m| m.values().sum()),
            (None, None) => counts.by_status.values().sum::<u64>(),
        };
        let one_blob = single.is_some();
        let mut checked = 0u64;
        let mut after = None;
        loop {
            let page = if one_blob {
                match single.take() {
                    Some(b) => vec![b],
                    None => break,
                }
            } else {
                self.shared
                    .store
                    .list(ListFilter {
                        ns: ns.clone(),
                        after: after.clone(),
                        limit: 500,
                        ..Default::default()
                    })
                    .await?
            };
            let Some(last) = page.last() else { break };
            after = Some((last.ns.clone(), last.id.clone()));
            for b in page {
                if self.shared.cancel.is_cancelled() {
                    return Err(EngineError::ShuttingDown);
                }
                checked += 1;
                let mut problem = None;
                // An incoming delivery is a normal blob once decrypted (and format v1 on the
                // server once adopted); only an external blob elsewhere has nothing to check.
                let foreign =
                    b.external && self.shared.settings().policy(&b.ns) != NamespacePolicy::Incoming;
                if foreign {
                    report.skipped.push((
                        b.ns.clone(),
                        b.id.clone(),
                        "external outside an incoming namespace: refused, never handed out"
                            .to_owned(),
                    ));
                }
                if b.status.has_payload() && !foreign {
                    report.checked_local += 1;
                    if let Some(p) = self.verify_local(&b).await? {
                        let requeued = b.status == Status::Synced
                            && self
                                .shared
                                .store
                                .transition(
                                    &b.ns,
                                    &b.id,
                                    Transition::DamageFound,
                                    RowUpdate {
                                        last_error: Some(format!("local copy damaged: {p}")),
                                        now: Some((self.shared.now)()),
                                        ..Default::default()
                                    },
                                )
                                .await
                                .is_ok();
                        if requeued {
                            self.shared.remove_payload(&b.ns, &b.id).await;
                        }
                        report.damaged.push(Damage {
                            ns: b.ns.clone(),
                            id: b.id.clone(),
                            copy: "local",
                            problem: p.clone(),
                            requeued,
                        });
                        problem = Some(p);
                    }
                }
                if remote && b.status == Status::Synced && !foreign {
                    report.checked_remote += 1;
                    if let Some(p) = self.ops.verify_remote_one(b.clone()).await? {
                        report.damaged.push(Damage {
                            ns: b.ns.clone(),
                            id: b.id.clone(),
                            copy: "remote",
                            problem: p.clone(),
                            requeued: false,
                        });
                        problem = Some(p);
                    }
                }
                let _ = progress.try_send(VerifyProgress {
                    checked,
                    total,
                    ns: b.ns,
                    id: b.id,
                    problem,
                });
            }
        }
        if report.damaged.iter().any(|d| d.requeued) {
            self.shared.kick.notify_one();
        }
        Ok(report)
    }

    /// Re-authenticates a local payload (every segment, the plaintext hashed and compared
    /// with the recorded SHA-256, and written nowhere); a plaintext payload an earlier release
    /// left, not converted yet, is re-hashed.
    async fn verify_local(&self, b: &BlobInfo) -> Result<Option<String>, EngineError> {
        let path = self.shared.data.payload_path(&b.ns, &b.id);
        let key = self.shared.key.clone();
        let (ns, id, size) = (b.ns.clone(), b.id.clone(), b.size.unwrap_or(0));
        let res = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)?.len();
            if sealed::is_plain_len(len, size) {
                return payload::sha256_file(&path).map(|(sha, n)| Ok((sha, n)));
            }
            Ok(match sealed::authenticate(&key, &path, &ns, &id) {
                Ok(a) => Ok((a.sha256, a.header.plain_size)),
                Err(blobsync_shared::codec::CodecError::Io(e)) => return Err(e),
                Err(e) => Err(e.to_string()),
            })
        })
        .await
        .map_err(std::io::Error::other)?;
        Ok(match res {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("payload file is missing".into())
            }
            Err(e) => Some(format!("cannot read the payload file: {e}")),
            Ok(Err(why)) => Some(format!("payload failed authentication: {why}")),
            Ok(Ok((sha, size))) => {
                if Some(size) != b.size {
                    Some(format!(
                        "payload is {size} bytes, {} were recorded",
                        b.size.unwrap_or(0)
                    ))
                } else if Some(sha) != b.sha256 {
                    Some("payload SHA-256 does not match the recorded one (bit rot?)".into())
                } else {
                    None
                }
            }
        })
    }

    /// The remote flags of a blob.
    pub async fn get_flags(&self, ns: &Namespace, id: &BlobId) -> Result<Vec<Flag>, EngineError> {
        self.ops.get_flags(ns.clone(), id.clone()).await
    }

    /// Replaces the remote flags of a blob.
    pub async fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: Vec<Flag>,
    ) -> Result<(), EngineError> {
        self.ops.set_flags(ns.clone(), id.clone(), flags).await
    }

    /// The server's listing (one page).
    pub async fn list_remote(
        &self,
        ns: &Namespace,
        filter: RemoteListFilter,
    ) -> Result<Vec<BlobDetail>, EngineError> {
        self.ops.list_remote(ns.clone(), filter).await
    }

    /// A token cancelled when the engine stops (for long streams like watch).
    pub fn stopped(&self) -> CancellationToken {
        self.shared.cancel.clone()
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

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|j| EngineError::Io(std::io::Error::other(j)))?
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

/// A file copied into a new payload by [`copy_in`].
struct Copied {
    payload: payload::NewPayload,
    /// `Some` when it was big enough to be installed on its own (fsync, link, dir fsync).
    linked: Option<std::io::Result<()>>,
    size: u64,
    sha256: [u8; 32],
}

/// Blocking: seals `src` into a new payload for `ns/id` while copying it (blob format v1,
/// a fresh salt: the bytes the upload will send as they are), hashing its plaintext. A big
/// file is also fsynced and linked here (write-behind already overlapped most of its
/// writing); a small one is left for the sync group. A file that changes size while it is
/// copied is refused: the header has already promised its size.
fn copy_in(
    data: &payload::DataDir,
    key: &blobsync_shared::StorageKey,
    seg: u8,
    src: &Path,
    ns: Namespace,
    id: BlobId,
    cancelled: &AtomicBool,
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
    let mut behind = WriteBehind::default();
    let sealed = sealed::seal_file(
        key,
        header,
        &mut from,
        payload.file(),
        |f, n| behind.wrote(f, n),
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
    match shared.store.insert_local(blob).await {
        Ok(info) => {
            shared.kick.notify_one();
            Ok(info)
        }
        Err(e) => {
            // The row exists (a lazy blob listed meanwhile): our file must not stay.
            let _ = tokio::fs::remove_file(&dest).await;
            Err(e.into())
        }
    }
}
