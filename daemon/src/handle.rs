//! [`EngineHandle`]: the only API the control service (and tests) use to drive the daemon —
//! put, get, delete, list, status, sync, watch, retry, priority, pause/resume, limits,
//! verify, and remote flags/listing. This module is the thin part: the handle, the reads
//! (`open_for_read` decrypts as it streams) and the small calls; puts are in
//! [`crate::engine::put`], verify in [`crate::engine::verify`], the error type in
//! [`crate::engine::error`] (re-exported here).
//!
//! Errors are [`EngineError`]; [`EngineError::code`] says which gRPC code a caller should
//! map it to. This module never knows about prost types.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use blobsync_shared::codec::Decoder;
use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::wire::{BlobDetail, Flag};
use blobsync_shared::{BlobId, Namespace};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::engine::{Engine, RemoteState, Shared, SyncRequest, TransferInfo};
use crate::events::{CycleSummary, Subscription};
use crate::remote::{Remote, RemoteError, RemoteListFilter};
use crate::status::{Priority, Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, ListFilter, StoreError, sealed};

pub use crate::engine::error::{EngineError, ErrorCode};
pub use crate::engine::put::{PutItem, PutWriter};
pub use crate::engine::verify::{Damage, VerifyProgress, VerifyReport};

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
    /// Runs a big put's early upload to its end (`transfer::early`).
    fn early_upload(&self, e: crate::engine::transfer::early::EarlyUpload) -> BoxFuture<'_, ()>;
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

    fn early_upload(&self, e: crate::engine::transfer::early::EarlyUpload) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.self_arc().early_upload(e).await })
    }
}

/// Cloneable handle to a running engine. Cheap to clone; every method is safe to call
/// concurrently.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ops: Arc<dyn EngineOps>,
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

    pub(crate) fn alive(&self) -> Result<(), EngineError> {
        if self.shared.cancel.is_cancelled() {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
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
        let listed = self.shared.store.is_plain(ns, id).await?;
        let mut src = blocking(move || {
            Ok(sealed::PlainSource::open(
                &key, &path, &ns2, &id2, size, listed,
            )?)
        })
        .await?;
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

    /// Re-queues every failed blob of one namespace, or of all; returns how many.
    pub async fn retry_failed(&self, ns: Option<Namespace>) -> Result<u64, EngineError> {
        let n = self.shared.store.retry_failed(ns).await?.len() as u64;
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

/// Runs blocking file work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|j| EngineError::Io(std::io::Error::other(j)))?
}
