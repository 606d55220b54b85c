//! The transfers: upload (payload file -> Encoder -> remote body, never the whole blob in
//! memory), download (remote body -> Decoder -> temp file -> fsync -> link into place, resumed
//! with a Range request from the last verified segment after a cut), remote deletes, and the
//! `/stream` batches for many small blobs. Failures are recorded on the seed's schedule.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use blobsync_shared::codec::{DecodeError, Decoder, Header, MAX_HEADER_LEN};
use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::wire::{FrameDecoder, FrameEvent};
use blobsync_shared::{BlobId, InvalidBlob, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{Engine, Shared, TransferInfo, TransferStats, atrest};
use crate::clock::Clock;
use crate::events::{Direction, EventKind};
use crate::remote::{ByteStream, Remote, RemoteError};
use crate::retry::next_wait;
use crate::spool::Spool;
use crate::status::{Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, RetryPlan, payload};

/// Chunks of a payload file read ahead of the network per upload.
const READ_AHEAD: usize = 4;
/// Bytes per read of a payload file being uploaded.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Cuts without progress before a download attempt counts as failed.
const MAX_CUTS_WITHOUT_PROGRESS: u32 = 3;
/// Progress events per transfer at most every this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The reason kept on a blob that is not in blobsync's format (`Engine::foreign_format`).
pub(crate) const FOREIGN_FORMAT: &str =
    "foreign format: not a blobsync blob (e.g. written by a Soledad client); left on the server";

/// A finished download: (plaintext size, sha256, stored size, header salt).
type Fetched = (u64, [u8; 32], u64, Option<[u8; 32]>);

/// Why an upload cannot start.
pub(super) enum NotReady {
    /// Retried on the schedule (the store or the disk failed for now).
    Retry(String),
    /// Refused for good (`FAILED_UPLOAD`): the local payload is missing or damaged.
    Reject(String),
}

/// Why a download attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
    /// The bytes are not a valid blob (counts toward `max_invalid_retries`).
    #[error(transparent)]
    Invalid(#[from] InvalidBlob),
    /// The remote failed (retried on the schedule).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Not tried: this device's key is the wrong one (the row stays queued).
    #[error("{}", super::keycheck::WRONG_KEY_MESSAGE)]
    WrongKey,
    /// Local disk trouble.
    #[error("local i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The blob is not (or no longer) waiting for a download.
    #[error("blob {0} is {1}, not waiting for a download")]
    NotWanted(BlobId, Status),
    /// Shutdown cut it off; the row stays queued.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Refused for good without trying again: a version of the id this device held before
    /// (rollback), or an external blob outside an incoming namespace.
    #[error("{0}")]
    Refused(String),
    /// A raced re-upload's winner holds other content than ours: ours is kept.
    #[error("{0}")]
    Conflict(String),
}

impl From<DownloadError> for crate::handle::EngineError {
    fn from(e: DownloadError) -> Self {
        use crate::handle::EngineError as E;
        match e {
            DownloadError::Invalid(i) => {
                E::FailedPrecondition(format!("the server's copy failed verification: {i}"))
            }
            DownloadError::Remote(r) => E::Remote(r),
            DownloadError::Io(io) => E::Io(io),
            DownloadError::NotWanted(id, s) => {
                E::FailedPrecondition(format!("blob {id} is {s}, not waiting for a download"))
            }
            DownloadError::Cancelled => E::ShuttingDown,
            DownloadError::WrongKey => E::FailedPrecondition(e.to_string()),
            DownloadError::Store(s) => E::Store(s),
            DownloadError::Refused(why) | DownloadError::Conflict(why) => {
                E::FailedPrecondition(why)
            }
        }
    }
}

/// Tracks one transfer in `status` and publishes throttled progress events.
pub(crate) struct Progress {
    shared: Arc<Shared>,
    tid: u64,
    ns: Namespace,
    id: BlobId,
    dir: Direction,
    done: u64,
    total: u64,
    last: tokio::time::Instant,
}

impl Progress {
    pub fn start(
        shared: &Arc<Shared>,
        b: &BlobInfo,
        dir: Direction,
        total: u64,
        blobs: usize,
    ) -> Self {
        let (ns, id) = (&b.ns, &b.id);
        let tid = {
            let mut st = shared.state();
            st.next_transfer_id += 1;
            let tid = st.next_transfer_id;
            st.transfers.insert(
                tid,
                TransferInfo {
                    ns: ns.clone(),
                    id: id.clone(),
                    dir,
                    done: 0,
                    total,
                    blobs,
                    priority: b.priority,
                    attempt: b.attempts + 1,
                    started: (shared.now)(),
                },
            );
            tid
        };
        Self {
            shared: shared.clone(),
            tid,
            ns: ns.clone(),
            id: id.clone(),
            dir,
            done: 0,
            total,
            last: tokio::time::Instant::now(),
        }
    }

    pub fn set(&mut self, done: u64) {
        self.done = done;
        if let Some(t) = self.shared.state().transfers.get_mut(&self.tid) {
            t.done = done;
        }
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = tokio::time::Instant::now();
            self.shared.events.publish(EventKind::TransferProgress {
                ns: self.ns.clone(),
                id: self.id.clone(),
                dir: self.dir,
                done,
                total: self.total,
            });
        }
    }

    pub fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shared.state().transfers.remove(&self.tid);
    }
}

/// Streams the payload file at `path` as it is (it is the stored blob: header, then sealed
/// segments), `len` bytes, paced by the upload limiter. Errors reading the file end the
/// stream with an `Err` item, as does a file that is not exactly `len` bytes long.
pub(super) fn file_stream(
    shared: Arc<Shared>,
    path: std::path::PathBuf,
    len: u64,
    progress: Option<Progress>,
) -> ByteStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::spawn(async move {
        let mut progress = progress;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; (left as usize).min(UPLOAD_CHUNK)];
            if let Err(e) = file.read_exact(&mut buf).await {
                let _ = tx.send(Err(e)).await;
                return;
            }
            left -= buf.len() as u64;
            shared.up.acquire(buf.len()).await;
            if let Some(p) = progress.as_mut() {
                p.add(buf.len() as u64);
            }
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return;
            }
        }
        // The file must not have grown: immutable payloads are exactly `len` long.
        let mut extra = [0u8; 1];
        if let Ok(1..) = file.read(&mut extra).await {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "payload file is longer than recorded",
                )))
                .await;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Blocking: a small payload file, whole; it must be exactly `len` bytes.
fn read_exactly(path: &std::path::Path, len: u64) -> std::io::Result<Bytes> {
    let bytes = std::fs::read(path)?;
    if bytes.len() as u64 != len {
        return Err(std::io::Error::other(format!(
            "payload file is {} bytes, {len} were recorded",
            bytes.len()
        )));
    }
    Ok(Bytes::from(bytes))
}

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Records a failed attempt on the schedule and publishes it.
    pub(super) async fn record_failure(
        &self,
        b: &BlobInfo,
        dir: Direction,
        error: String,
        retry_after: Option<Duration>,
        invalid: bool,
        stats: &mut TransferStats,
    ) {
        let settings = self.shared.settings();
        let now = self.clock.now();
        let wait = settings
            .time_scale
            .apply(next_wait(b.attempts + 1, retry_after));
        let plan = RetryPlan {
            error: error.clone(),
            next_attempt: now + wait,
            invalid,
            max_invalid: settings.max_invalid_retries,
            now,
        };
        let gave_up = match self.shared.store.record_failure(&b.ns, &b.id, plan).await {
            Ok(change) => change.is_some(),
            Err(e) => {
                error!(ns = %b.ns, id = %b.id, error = %e, "cannot record a failed transfer");
                false
            }
        };
        if gave_up {
            stats.failed += 1;
            error!(ns = %b.ns, id = %b.id, %error, "download failed verification for the last allowed time: FAILED_DOWNLOAD");
        } else {
            stats.retried += 1;
            warn!(ns = %b.ns, id = %b.id, %error, attempt = b.attempts + 1, ?wait, "transfer failed; will retry");
        }
        self.shared.events.publish(EventKind::TransferFailed {
            ns: b.ns.clone(),
            id: b.id.clone(),
            dir,
            error,
            attempt: b.attempts + 1,
            will_retry: !gave_up,
            next_attempt: (!gave_up).then_some(now + wait),
        });
    }

    pub(super) fn finished(&self, b: &BlobInfo, dir: Direction, bytes: u64) {
        self.shared.events.publish(EventKind::TransferFinished {
            ns: b.ns.clone(),
            id: b.id.clone(),
            dir,
            bytes,
        });
    }

    pub(super) async fn reject_upload(
        &self,
        b: &BlobInfo,
        reason: String,
        stats: &mut TransferStats,
    ) {
        error!(ns = %b.ns, id = %b.id, %reason, "upload refused for good: FAILED_UPLOAD");
        let u = RowUpdate {
            last_error: Some(reason.clone()),
            now: Some(self.clock.now()),
            ..Default::default()
        };
        if let Err(e) = self
            .shared
            .store
            .transition(&b.ns, &b.id, Transition::UploadRejected, u)
            .await
        {
            error!(error = %e, "cannot record a refused upload");
        }
        stats.failed += 1;
        self.shared.events.publish(EventKind::TransferFailed {
            ns: b.ns.clone(),
            id: b.id.clone(),
            dir: Direction::Upload,
            error: reason,
            attempt: b.attempts + 1,
            will_retry: false,
            next_attempt: None,
        });
    }

    async fn mark_uploaded(&self, b: &BlobInfo, stored: u64, stats: &mut TransferStats) {
        let u = RowUpdate {
            remote_size: Some(stored),
            now: Some(self.clock.now()),
            ..Default::default()
        };
        match self
            .shared
            .store
            .transition(&b.ns, &b.id, Transition::UploadSucceeded, u)
            .await
        {
            Ok(_) => {
                stats.uploaded += 1;
                stats.bytes_up += stored;
                self.finished(b, Direction::Upload, stored);
            }
            // Deleted locally while uploading: the PENDING_DELETE that follows removes it.
            Err(e) => warn!(ns = %b.ns, id = %b.id, error = %e, "uploaded, but the row moved on"),
        }
    }

    /// A 409 with another copy under the id: another device put a blob there first — often
    /// the same blob (two devices putting back what the server lost, or the same file put on
    /// both). Fetch it and compare: the same content becomes SYNCED with their copy, other
    /// content a conflict (`FAILED_UPLOAD`). Our payload file stays until the download has
    /// authenticated theirs and found it equal, so a server lying about the 409 costs nothing.
    async fn take_their_copy(&self, b: &BlobInfo) {
        info!(ns = %b.ns, id = %b.id, "the server has another copy under this id; fetching it to compare with ours");
        let u = RowUpdate {
            now: Some(self.clock.now()),
            ..Default::default()
        };
        match self
            .shared
            .store
            .transition(&b.ns, &b.id, Transition::Contested, u)
            .await
        {
            Ok(_) => {}
            Err(e) => warn!(ns = %b.ns, id = %b.id, error = %e, "cannot queue the download"),
        }
    }

    /// Readies `b`'s payload for upload and returns its header: the payload file is the
    /// stored blob, sent as it is. A plaintext payload of an earlier release is sealed first
    /// (see `atrest`). The salt goes into the store before the PUT, so a 409 is recognised as
    /// ours; a payload whose salt this device held before for the id (the server lost that
    /// version, or it is a rollback candidate) is sealed again under a fresh one first, as a
    /// salt is never used for two encodings. The caller holds the blob's lock.
    pub(super) async fn upload_header(&self, b: &BlobInfo) -> Result<Header, NotReady> {
        let size = b
            .size
            .ok_or(NotReady::Retry("no local size recorded".into()))?;
        match self.seal_plain(b).await {
            Ok(atrest::Sealed::Damaged) => {
                return Err(NotReady::Reject(
                    "the local plaintext payload does not match its recorded SHA-256: \
                     damaged on disk"
                        .into(),
                ));
            }
            Ok(atrest::Sealed::Now) => {
                let _ = self.shared.store.unmark_plain(&b.ns, &b.id).await;
            }
            Ok(atrest::Sealed::Already) => {}
            Err(e) => return Err(NotReady::Retry(format!("sealing the local payload: {e}"))),
        }
        let path = self.shared.data.payload_path(&b.ns, &b.id);
        let (ns, id) = (b.ns.clone(), b.id.clone());
        let read = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)?.len();
            crate::store::sealed::header_of(&path, &ns, &id).map(|h| (h, len))
        })
        .await
        .map_err(|e| NotReady::Retry(e.to_string()))?;
        let (header, len) = match read {
            Ok(v) => v,
            Err(blobsync_shared::codec::CodecError::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(NotReady::Reject("local payload file is missing".into()));
            }
            Err(blobsync_shared::codec::CodecError::Io(e)) => {
                return Err(NotReady::Retry(format!("reading the local payload: {e}")));
            }
            Err(e) => {
                return Err(NotReady::Reject(format!(
                    "the local payload's header is damaged ({e}): damaged on disk"
                )));
            }
        };
        if header.plain_size != size || len != header.stored_size() {
            return Err(NotReady::Reject(format!(
                "local payload is {len} bytes for {} bytes of plaintext, {} were put: damaged \
                 on disk",
                header.plain_size, size
            )));
        }
        match b.upload_salt {
            Some(s) if s == header.salt => Ok(header),
            Some(_) => Err(NotReady::Reject(
                "the local payload's salt is not the one recorded for its upload; put the \
                 blob again"
                    .into(),
            )),
            None => {
                let seen = self
                    .shared
                    .store
                    .seen_salts(&b.ns, &b.id)
                    .await
                    .map_err(|e| NotReady::Retry(e.to_string()))?;
                let header = if seen.contains(&header.salt) {
                    self.reseal_fresh(b).await.map_err(NotReady::Retry)?
                } else {
                    header
                };
                self.shared
                    .store
                    .set_upload_salt(&b.ns, &b.id, header.salt, header.stored_size())
                    .await
                    .map_err(|e| NotReady::Retry(e.to_string()))?;
                Ok(header)
            }
        }
    }

    /// 409: ours (same salt in the server copy's header) or a conflict.
    pub(super) async fn is_our_copy(
        &self,
        b: &BlobInfo,
        salt: &[u8; 32],
    ) -> Result<bool, RemoteError> {
        Ok(self.salt_on_server(b).await? == Some(*salt))
    }

    /// The header salt of the server's copy of `b` (a ranged read of its header); `None` when
    /// the copy has no blob-format header.
    pub(super) async fn salt_on_server(
        &self,
        b: &BlobInfo,
    ) -> Result<Option<[u8; 32]>, RemoteError> {
        let range = Some(0..MAX_HEADER_LEN as u64);
        let resp = match self.remote.get(&b.ns, &b.id, range.clone()).await {
            // Right after a PUT the server broke off, a pooled connection may be dead: once more.
            Err(RemoteError::Transport(_)) => self.remote.get(&b.ns, &b.id, range).await?,
            other => other?,
        };
        let head = crate::remote::collect_body(resp.body, MAX_HEADER_LEN).await?;
        Ok(match Header::parse(&head) {
            Ok(Some((h, _))) => Some(h.salt),
            _ => None,
        })
    }

    /// The delete proof for `b`: over the salt of the version we hold, or (a row from before
    /// salts of downloads were kept) of the server's copy, the version this delete removes.
    async fn delete_proof(&self, b: &BlobInfo) -> Option<String> {
        let salt = match b.upload_salt {
            Some(s) => Some(s),
            None => self.salt_on_server(b).await.ok().flatten(),
        };
        salt.map(|s| self.shared.delete_key.prove(&b.ns, &b.id, &s))
    }

    /// The `if_absent_since` of an upload: none for a first attempt; for a retry (a salt was
    /// recorded, so an earlier PUT may have reached the server) the namespace's listing cursor,
    /// which everything this plan was made from stands on. Any delete of the id after our
    /// first attempt that the listings have not shown us is above it, so the server refuses
    /// to recreate the blob. Without a cursor (never listed, or the store failed) there is no
    /// condition: 0 would refuse a blob whose id the user reused after deleting it, and losing
    /// a put is worse than the resurrection it would prevent.
    async fn if_absent_since(&self, ns: &Namespace, attempted: bool) -> Option<u64> {
        if !attempted {
            return None;
        }
        match self.shared.store.cursor(ns).await {
            Ok(c) => c,
            Err(e) => {
                warn!(%ns, error = %e, "cannot read the listing cursor; retrying the upload unconditionally");
                None
            }
        }
    }

    /// The server refused to recreate `b` (412): it says the id was deleted after our last
    /// listing. That is the server's word, not a proof, so nothing is deleted here: the attempt
    /// is recorded (so the loop does not spin on it) and a listing is asked for at once. Its
    /// tombstone decides: a delete proof of our version removes the blob (`plan`), anything
    /// else leaves it queued, and the retry (conditional on the newer cursor) goes through.
    async fn upload_deleted_remotely(&self, b: &BlobInfo, why: &str, stats: &mut TransferStats) {
        info!(ns = %b.ns, id = %b.id, reason = %why, "the server says this blob was deleted elsewhere after our upload attempt; the next listing decides");
        self.record_failure(
            b,
            Direction::Upload,
            format!("the server refused to recreate it ({why}); waiting for its tombstone"),
            None,
            false,
            stats,
        )
        .await;
        let _ = self.shared.sync_tx.try_send(super::SyncRequest {
            full: false,
            allow_mass_delete: false,
            reply: None,
        });
    }

    pub(super) async fn upload_one(
        self: &Arc<Self>,
        b: BlobInfo,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let span = info_span!("transfer", ns = %b.ns, blob = %b.id, dir = "up", size = b.size, attempt = b.attempts + 1);
        async {
            let lock = self.shared.blob_lock(&b.ns, &b.id);
            let _g = lock.lock().await;
            let b = match self.shared.store.get(&b.ns, &b.id).await {
                Ok(Some(cur)) if cur.status == Status::PendingUpload => cur,
                _ => return,
            };
            // A decrypted incoming delivery goes up as the adoption of the age file.
            if let Some(age_sha) = self.pending_adoption(&b).await {
                return self.adopt_one(b, age_sha, cancel, stats).await;
            }
            let header = match self.upload_header(&b).await {
                Ok(h) => h,
                Err(NotReady::Retry(e)) => {
                    self.record_failure(&b, Direction::Upload, e, None, false, stats)
                        .await;
                    return;
                }
                Err(NotReady::Reject(e)) => return self.reject_upload(&b, e, stats).await,
            };
            if self.shared.crash_here("upload.after_salt") {
                return;
            }
            let salt = header.salt;
            let stored = header.stored_size();
            let path = self.shared.data.payload_path(&b.ns, &b.id);
            let since = self.if_absent_since(&b.ns, b.upload_salt.is_some()).await;
            let progress = Progress::start(&self.shared, &b, Direction::Upload, stored, 1);
            let body = file_stream(self.shared.clone(), path, stored, Some(progress));
            let res = tokio::select! {
                r = self.remote.put(&b.ns, &b.id, stored, body, since) => r,
                _ = cancel.cancelled() => return,
            };
            if self.shared.crash_here("upload.after_put") {
                return;
            }
            match res {
                Ok(()) => {
                    self.shared.note_remote_ok();
                    self.mark_uploaded(&b, stored, stats).await;
                }
                Err(RemoteError::Conflict) => match self.is_our_copy(&b, &salt).await {
                    Ok(true) => {
                        debug!("409 with our own salt: an earlier upload got through");
                        self.mark_uploaded(&b, stored, stats).await;
                    }
                    Ok(false) => self.take_their_copy(&b).await,
                    Err(e) => {
                        self.shared.note_remote_err(&e);
                        let ra = e.retry_after();
                        self.record_failure(
                            &b,
                            Direction::Upload,
                            format!("checking a 409: {e}"),
                            ra,
                            false,
                            stats,
                        )
                        .await
                    }
                },
                Err(e @ (RemoteError::TooLarge | RemoteError::QuotaExceeded)) => {
                    self.reject_upload(&b, e.to_string(), stats).await
                }
                Err(RemoteError::DeletedAfter(why)) => {
                    self.shared.note_remote_ok();
                    self.upload_deleted_remotely(&b, &why, stats).await
                }
                // The connection broke: the server may have stored it all the same (the answer
                // was lost, or it answered 409 early and closed while we were still sending).
                // Our salt in its copy's header settles it without another attempt.
                Err(e @ (RemoteError::Transport(_) | RemoteError::Io(_)))
                    if matches!(self.is_our_copy(&b, &salt).await, Ok(true)) =>
                {
                    debug!(error = %e, "upload broke off, but the server has our copy");
                    self.mark_uploaded(&b, stored, stats).await;
                }
                Err(e) => {
                    self.shared.note_remote_err(&e);
                    let ra = e.retry_after();
                    self.record_failure(&b, Direction::Upload, e.to_string(), ra, false, stats)
                        .await
                }
            }
        }
        .instrument(span)
        .await
    }

    pub(super) async fn delete_one(self: &Arc<Self>, b: BlobInfo, stats: &mut TransferStats) {
        let lock = self.shared.blob_lock(&b.ns, &b.id);
        let _g = lock.lock().await;
        let proof = self.delete_proof(&b).await;
        match self.remote.delete(&b.ns, &b.id, proof).await {
            Ok(()) | Err(RemoteError::NotFound)
                if self.shared.crash_here("delete.after_remote") => {}
            Ok(()) | Err(RemoteError::NotFound) => {
                self.shared.note_remote_ok();
                let u = RowUpdate {
                    now: Some(self.clock.now()),
                    ..Default::default()
                };
                if self
                    .shared
                    .store
                    .transition(&b.ns, &b.id, Transition::DeleteConfirmed, u)
                    .await
                    .is_ok()
                {
                    stats.deleted_remote += 1;
                }
            }
            Err(e) => {
                self.shared.note_remote_err(&e);
                let ra = e.retry_after();
                self.record_failure(
                    &b,
                    Direction::Upload,
                    format!("delete: {e}"),
                    ra,
                    false,
                    stats,
                )
                .await
            }
        }
    }

    /// Downloads one blob. `on_demand`: a get asked for it (REMOTE_ONLY allowed; failures of
    /// a REMOTE_ONLY blob are not queued).
    pub(crate) async fn download_one(
        self: &Arc<Self>,
        b: BlobInfo,
        on_demand: bool,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) -> Result<(), DownloadError> {
        let span = info_span!("transfer", ns = %b.ns, blob = %b.id, dir = "down", size = b.remote_size, attempt = b.attempts + 1);
        async {
            let lock = self.shared.blob_lock(&b.ns, &b.id);
            let _g = lock.lock().await;
            let b = match self.shared.store.get(&b.ns, &b.id).await? {
                Some(cur) if cur.status == Status::PendingDownload => cur,
                Some(cur) if on_demand && cur.status == Status::RemoteOnly => cur,
                Some(cur) if on_demand && cur.status.has_payload() => return Ok(()),
                Some(cur) => return Err(DownloadError::NotWanted(cur.id, cur.status)),
                None => return Err(DownloadError::NotWanted(b.id, Status::PendingDelete)),
            };
            if self.shared.wrong_key() {
                return Err(DownloadError::WrongKey);
            }
            let res = match self.may_download(&b).await {
                Ok(forbidden) => tokio::select! {
                    r = self.fetch_download(&b, &forbidden) => r,
                    _ = cancel.cancelled() => Err(DownloadError::Cancelled),
                },
                Err(e) => Err(e),
            };
            if res.is_err() && !matches!(res, Err(DownloadError::Cancelled)) {
                // A failed attempt starts over (and the blob may be gone for good: a 404).
                // Only a stop (shutdown, crash) keeps the partial, for the restart to resume.
                self.remove_partial(&b).await;
            }
            if self.shared.crash_here("download.after_install") {
                return Err(DownloadError::Cancelled);
            }
            match res {
                Ok((fetched, Some(age_sha))) => {
                    self.shared.note_remote_ok();
                    self.record_decrypted(&b, fetched, age_sha, stats).await
                }
                Ok(((size, sha, stored, salt), None)) => {
                    self.shared.note_remote_ok();
                    if !b.external {
                        self.shared.key_proven();
                    }
                    let u = RowUpdate {
                        size: Some(size),
                        sha256: Some(sha),
                        remote_size: Some(stored),
                        salt,
                        now: Some(self.clock.now()),
                        ..Default::default()
                    };
                    self.shared
                        .store
                        .transition(&b.ns, &b.id, Transition::DownloadSucceeded, u)
                        .await?;
                    stats.downloaded += 1;
                    stats.bytes_down += stored;
                    self.finished(&b, Direction::Download, stored);
                    Ok(())
                }
                Err(DownloadError::Cancelled) => Err(DownloadError::Cancelled),
                Err(DownloadError::Conflict(why)) => {
                    warn!(%why, "kept this device's copy");
                    self.settle(&b, Transition::ContestLost, &why).await?;
                    stats.failed += 1;
                    Err(DownloadError::Conflict(why))
                }
                Err(DownloadError::Refused(why)) => {
                    if b.status == Status::PendingDownload {
                        self.settle(&b, Transition::DownloadInvalid, &why).await?;
                        stats.failed += 1;
                    }
                    Err(DownloadError::Refused(why))
                }
                Err(e) => {
                    let queued = b.status == Status::PendingDownload;
                    match &e {
                        DownloadError::Invalid(InvalidBlob::BadMagic) if queued => {
                            self.foreign_format(&b).await;
                        }
                        DownloadError::Invalid(inv) => {
                            warn!(check = inv.check(), "downloaded blob failed verification");
                            if self.shared.download_invalid(&b.ns, &b.id, inv) {
                                // Not the blob's fault: it stays queued for the right key.
                                return Err(DownloadError::WrongKey);
                            }
                            if queued {
                                self.record_failure(
                                    &b,
                                    Direction::Download,
                                    e.to_string(),
                                    None,
                                    true,
                                    stats,
                                )
                                .await;
                            }
                        }
                        DownloadError::Remote(re) => {
                            self.shared.note_remote_err(re);
                            if queued {
                                let ra = re.retry_after();
                                self.record_failure(
                                    &b,
                                    Direction::Download,
                                    e.to_string(),
                                    ra,
                                    false,
                                    stats,
                                )
                                .await;
                            }
                        }
                        _ => {
                            if queued {
                                self.record_failure(
                                    &b,
                                    Direction::Download,
                                    e.to_string(),
                                    None,
                                    false,
                                    stats,
                                )
                                .await;
                            }
                        }
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Raises `kind` about `b` and returns the refusal: its bytes are never handed out, and
    /// retrying cannot change that.
    pub(super) fn refuse(
        &self,
        kind: crate::events::AlarmKind,
        b: &BlobInfo,
        why: String,
    ) -> DownloadError {
        self.shared.raise(kind, Some(&b.ns), 1, why.clone());
        DownloadError::Refused(why)
    }

    /// Whether `b` may be downloaded at all, and the header salts its copy must not have:
    /// every version of the id this device held before, but the one it holds now (a
    /// re-download after damage is the same version). An external blob is taken only in an
    /// incoming namespace: nothing else authenticates it.
    async fn may_download(&self, b: &BlobInfo) -> Result<Vec<[u8; 32]>, DownloadError> {
        if b.external && self.shared.settings().policy(&b.ns) != NamespacePolicy::Incoming {
            let why = format!(
                "refused: {}/{} is an external blob (delivered by an app, not encrypted by your \
                 devices) in a namespace that is not an incoming box",
                b.ns, b.id
            );
            return Err(self.refuse(crate::events::AlarmKind::ExternalRefused, b, why));
        }
        let mut seen = self.shared.store.seen_salts(&b.ns, &b.id).await?;
        seen.retain(|s| Some(*s) != b.upload_salt);
        Ok(seen)
    }

    /// A server copy that does not start with our magic is no blobsync blob at all — in a
    /// Soledad deployment, one a Soledad client wrote with its own encryption. It is not
    /// damage and retrying cannot help: it stays `REMOTE_ONLY` with the reason, and is never
    /// downloaded again by the cycle (a `get` still tries, and says why it fails).
    async fn foreign_format(&self, b: &BlobInfo) {
        info!(ns = %b.ns, id = %b.id, "not a blobsync blob (foreign format): left on the server");
        if let Err(e) = self
            .settle(b, Transition::ForeignFormat, FOREIGN_FORMAT)
            .await
        {
            warn!(ns = %b.ns, id = %b.id, error = %e, "cannot record a foreign-format blob");
        }
    }

    /// Moves `b` by `t` for a reason no retry can change, keeping `why` on the row.
    async fn settle(
        &self,
        b: &BlobInfo,
        t: Transition,
        why: &str,
    ) -> Result<(), crate::store::StoreError> {
        let u = RowUpdate {
            last_error: Some(why.to_owned()),
            now: Some(self.clock.now()),
            ..Default::default()
        };
        self.shared.store.transition(&b.ns, &b.id, t, u).await?;
        Ok(())
    }

    /// The rollback check: refuses a copy whose header salt is one of `forbidden` unless its
    /// plaintext is the very content this device holds (`sha`: the same blob put up again,
    /// after the server lost it, is no rollback).
    fn check_rollback(
        &self,
        b: &BlobInfo,
        salt: Option<[u8; 32]>,
        sha: &[u8; 32],
        forbidden: &[[u8; 32]],
    ) -> Result<(), DownloadError> {
        match salt {
            Some(s) if forbidden.contains(&s) && b.sha256.as_ref() != Some(sha) => {
                let why = format!(
                    "refused: the server offered a version of {}/{} that this device held \
                     before (a rollback); the blob stays as it was",
                    b.ns, b.id
                );
                Err(self.refuse(crate::events::AlarmKind::Rollback, b, why))
            }
            _ => Ok(()),
        }
    }

    /// Downloads into the partial file, verifying as it goes, resuming after cuts; then
    /// fsyncs and links it into place. Returns (plaintext size, sha256, stored size, header
    /// salt — none for an external blob).
    pub(super) async fn fetch_to_payload(
        &self,
        b: &BlobInfo,
        forbidden: &[[u8; 32]],
    ) -> Result<Fetched, DownloadError> {
        match self.fetch_inner(b, true, forbidden).await {
            // The partial file a restart resumed from was of another copy (the blob was put
            // again meanwhile): that is not tampering; start over once from scratch.
            Err(DownloadError::Invalid(e)) if self.shared.crash_points_resumed(b) => {
                debug!(error = %e, "resumed partial did not verify; starting over");
                self.remove_partial(b).await;
                self.fetch_inner(b, false, forbidden).await
            }
            other => other,
        }
    }

    /// Removes a blob's partial download.
    pub(crate) async fn remove_partial(&self, b: &BlobInfo) {
        let partial = self.shared.data.partial(&b.ns, &b.id);
        let _ = tokio::task::spawn_blocking(move || partial.remove()).await;
    }

    /// Opens the partial download: resumes one left by a stopped daemon (its whole segments,
    /// re-authenticated here: a file on disk is checked like a server's answer, and hashed for
    /// the plaintext's SHA-256), else starts a new one.
    async fn open_partial(
        &self,
        b: &BlobInfo,
        allow_resume: bool,
        hasher: &mut ring::digest::Context,
    ) -> Result<(std::fs::File, Decoder, bool), DownloadError> {
        let partial = self.shared.data.partial(&b.ns, &b.id);
        let (key, ns, id) = (self.shared.key.clone(), b.ns.clone(), b.id.clone());
        let h0 = hasher.clone();
        let opened = tokio::task::spawn_blocking(move || {
            resume_partial(&key, partial.path(), &ns, &id, allow_resume, h0)
        })
        .await
        .map_err(std::io::Error::other)??;
        match opened {
            (f, Some((d, h))) => {
                debug!(
                    resume_segment = d.verified_segments(),
                    "resuming a download left by a restart"
                );
                *hasher = h;
                self.shared.mark_resumed(b);
                Ok((f, d, true))
            }
            (f, None) => Ok((f, Decoder::new(&self.shared.key, &b.ns, &b.id), false)),
        }
    }

    async fn fetch_inner(
        &self,
        b: &BlobInfo,
        allow_resume: bool,
        forbidden: &[[u8; 32]],
    ) -> Result<Fetched, DownloadError> {
        let partial = self.shared.data.partial(&b.ns, &b.id);
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let (file, mut decoder, _) = self.open_partial(b, allow_resume, &mut hasher).await?;
        // Written in big pieces, one in flight while the next is verified (not a pool hop per
        // HTTP chunk: 1 GB = ~65k chunks). What a crash loses from the buffer is only fetched
        // again: a restart resumes from the partial file's whole segments. Only verified
        // stored bytes are written (the header as soon as it parsed: segment 0 authenticates
        // it, and a resume checks it again), so the partial is always a prefix of the blob.
        let mut file = Spool::new(file);
        let mut written = decoder.verified_stored_bytes();
        let mut unwritten: Vec<u8> = Vec::new();
        let mut total = b.remote_size.unwrap_or(0);
        let mut progress = Progress::start(&self.shared, b, Direction::Download, total, 1);
        let mut cuts = 0u32;
        loop {
            let offset = decoder.verified_stored_bytes();
            let range = (offset > 0).then_some(offset..u64::MAX);
            let resp = self.remote.get(&b.ns, &b.id, range).await?;
            total = resp.total;
            progress.total = total;
            let expected_end = resp.offset + resp.len;
            let mut at = resp.offset;
            let mut body = resp.body;
            let mut cut: Option<String> = None;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        cut = Some(e.to_string());
                        break;
                    }
                };
                self.shared.down.acquire(chunk.len()).await;
                at += chunk.len() as u64;
                unwritten.extend_from_slice(&chunk);
                decoder
                    .feed(&chunk, |p| {
                        hasher.update(p);
                        Ok::<(), Infallible>(())
                    })
                    .map_err(|e| match e {
                        DecodeError::Invalid(i) => i,
                        DecodeError::Sink(never) => match never {},
                    })?;
                let verified = decoder.verified_stored_bytes();
                if verified > written {
                    let n = (verified - written) as usize;
                    file.write_all(&unwritten[..n]).await?;
                    unwritten.drain(..n);
                    written = verified;
                }
                progress.set(at);
            }
            if cut.is_none() && at < expected_end {
                cut = Some(format!("body ended at byte {at} of {expected_end}"));
            }
            match cut {
                None => break,
                Some(why) => {
                    // A cut body is a transport fault, never tampering: resume from the last
                    // verified segment while each attempt makes progress.
                    let now_at = decoder.verified_stored_bytes();
                    if now_at > offset {
                        cuts = 0;
                    } else {
                        cuts += 1;
                    }
                    debug!(%why, resume_at = now_at, "download cut short; resuming");
                    if self.shared.crash_here("download.mid_body") {
                        file.flush().await?;
                        return Err(DownloadError::Cancelled);
                    }
                    // Drop the half-received segment: resume exactly at the boundary.
                    unwritten.clear();
                    if let Some(hb) = decoder.header_bytes() {
                        let hb = hb.to_vec();
                        decoder = Decoder::resume(
                            &self.shared.key,
                            &hb,
                            &b.ns,
                            &b.id,
                            decoder.verified_segments(),
                        )?;
                    } else {
                        decoder = Decoder::new(&self.shared.key, &b.ns, &b.id);
                    }
                    if cuts >= MAX_CUTS_WITHOUT_PROGRESS {
                        return Err(
                            RemoteError::Transport(format!("download cut short: {why}")).into()
                        );
                    }
                }
            }
        }
        let h = decoder.finish()?;
        let (size, salt) = (h.plain_size, Some(h.salt));
        let mut sha = [0u8; 32];
        sha.copy_from_slice(hasher.finish().as_ref());
        self.check_rollback(b, salt, &sha, forbidden)?;
        if b.reupload && b.sha256.is_some_and(|ours| ours != sha) {
            return Err(DownloadError::Conflict(format!(
                "conflict: the server already has a different blob {}/{} (put by another \
                 device); this device's copy is kept. Delete one of them, or put yours under \
                 another id",
                b.ns, b.id
            )));
        }
        if self.shared.crash_here("download.after_body") {
            return Err(DownloadError::Cancelled);
        }
        file.sync_and_close().await?;
        let dest = self.shared.data.payload_path(&b.ns, &b.id);
        tokio::task::spawn_blocking(move || partial.install(&dest))
            .await
            .map_err(std::io::Error::other)??;
        Ok((size, sha, total, salt))
    }

    /// Writes small verified payloads (replacing stale copies) and makes them durable
    /// together through the sync group. One result per item, in order.
    async fn install_many(
        &self,
        files: Vec<(std::path::PathBuf, Vec<u8>)>,
    ) -> Vec<std::io::Result<()>> {
        use std::io::Write;
        let data = self.shared.data.clone();
        let n = files.len();
        let written = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(dest, bytes)| {
                    let p = payload::NewPayload::create(&data, &dest)
                        .and_then(|mut p| p.file().write_all(&bytes).map(|()| p));
                    (dest, p)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let written = match written {
            Ok(w) => w,
            Err(j) => {
                return (0..n)
                    .map(|_| Err(std::io::Error::other(j.to_string())))
                    .collect();
            }
        };
        let mut results: Vec<std::io::Result<()>> = Vec::with_capacity(n);
        let mut items = Vec::new();
        let mut slots = Vec::new();
        for (i, (dest, p)) in written.into_iter().enumerate() {
            match p {
                Ok(payload) => {
                    items.push(payload::Install {
                        payload,
                        dest,
                        replace: true,
                    });
                    slots.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        match self.shared.syncer.install(items).await {
            Ok(done) => {
                for (slot, (_, r)) in slots.into_iter().zip(done) {
                    results[slot] = r;
                }
            }
            Err(e) => {
                for slot in slots {
                    results[slot] = Err(std::io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
        results
    }

    /// Many small uploads in one `/stream` request; results recorded in one transaction.
    pub(super) async fn upload_batch(
        self: &Arc<Self>,
        blobs: Vec<BlobInfo>,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let ns = blobs[0].ns.clone();
        // Every payload file whole, in one trip to the blocking pool (small blobs: at most
        // `BatchPolicy::max_blob` of plaintext each, so a batch is a few MiB): each is the
        // stored blob, sent as it is, and its header is read from memory.
        let paths: Vec<std::path::PathBuf> = blobs
            .iter()
            .map(|b| self.shared.data.payload_path(&b.ns, &b.id))
            .collect();
        let read = match tokio::task::spawn_blocking(move || {
            paths.iter().map(std::fs::read).collect::<Vec<_>>()
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot read a batch's payloads; left queued");
                return;
            }
        };
        let seen = match self
            .shared
            .store
            .seen_salts_many(&ns, blobs.iter().map(|b| b.id.clone()).collect())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot read the salts seen before; batch left queued");
                return;
            }
        };
        let mut entries = Vec::new();
        let mut encoders: Vec<(BlobInfo, Header, Bytes)> = Vec::new();
        let mut fresh = Vec::new();
        let mut slow = Vec::new();
        for (b, r) in blobs.iter().zip(read) {
            let bytes = match r {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.reject_upload(b, "local payload file is missing".into(), stats)
                        .await;
                    continue;
                }
                Err(e) => {
                    let msg = format!("reading the local payload: {e}");
                    self.record_failure(b, Direction::Upload, msg, None, false, stats)
                        .await;
                    continue;
                }
            };
            let size = b.size.unwrap_or(0);
            let parsed = match Header::parse(&bytes) {
                Ok(Some((h, _)))
                    if !crate::store::sealed::is_plain_len(bytes.len() as u64, size) =>
                {
                    Some(h)
                }
                _ => None,
            };
            match parsed {
                // A plaintext payload of an earlier release, or a salt this device held
                // before: the single-blob preparation seals it (rare).
                None => slow.push(b.clone()),
                Some(h)
                    if b.upload_salt.is_none()
                        && seen.get(&b.id).is_some_and(|s| s.contains(&h.salt)) =>
                {
                    slow.push(b.clone())
                }
                Some(h) => {
                    if h.namespace != b.ns
                        || h.id != b.id
                        || h.plain_size != size
                        || h.stored_size() != bytes.len() as u64
                        || b.upload_salt.is_some_and(|s| s != h.salt)
                    {
                        let why = "the local payload does not match its blob (damaged on disk)";
                        self.reject_upload(b, why.into(), stats).await;
                        continue;
                    }
                    if b.upload_salt.is_none() {
                        fresh.push((b.id.clone(), h.salt, h.stored_size()));
                    }
                    entries.push((b.id.clone(), h.stored_size()));
                    encoders.push((b.clone(), h, Bytes::from(bytes)));
                }
            }
        }
        for b in slow {
            let lock = self.shared.blob_lock(&b.ns, &b.id);
            let _g = lock.lock().await;
            let h = match self.upload_header(&b).await {
                Ok(h) => h,
                Err(NotReady::Retry(e)) => {
                    self.record_failure(&b, Direction::Upload, e, None, false, stats)
                        .await;
                    continue;
                }
                Err(NotReady::Reject(e)) => {
                    self.reject_upload(&b, e, stats).await;
                    continue;
                }
            };
            let path = self.shared.data.payload_path(&b.ns, &b.id);
            let n = h.stored_size();
            match tokio::task::spawn_blocking(move || read_exactly(&path, n)).await {
                Ok(Ok(bytes)) => {
                    entries.push((b.id.clone(), n));
                    encoders.push((b, h, bytes));
                }
                other => {
                    let msg = format!("reading the local payload: {other:?}");
                    self.record_failure(&b, Direction::Upload, msg, None, false, stats)
                        .await;
                }
            }
        }
        // The fresh salts are recorded in one transaction (one commit instead of one per
        // blob: W5 of issue 8).
        if !fresh.is_empty()
            && let Err(e) = self.shared.store.set_upload_salts(&ns, fresh).await
        {
            for (b, _, _) in &encoders {
                self.record_failure(b, Direction::Upload, e.to_string(), None, false, stats)
                    .await;
            }
            return;
        }
        if encoders.is_empty() {
            return;
        }
        // One condition for the whole request: the cursor, when any blob of it is a retry.
        let any_retry = encoders.iter().any(|(b, _, _)| b.upload_salt.is_some());
        let since = self.if_absent_since(&ns, any_retry).await;
        let total: u64 = entries.iter().map(|e| e.1).sum();
        let progress = Progress::start(
            &self.shared,
            &encoders[0].0,
            Direction::Upload,
            total,
            encoders.len(),
        );
        let progress = std::sync::Arc::new(std::sync::Mutex::new(progress));
        let parts: Vec<Bytes> = encoders.iter().map(|(_, _, b)| b.clone()).collect();
        let shared = self.shared.clone();
        let body: ByteStream = Box::pin(futures_util::stream::iter(parts).then(move |b| {
            let (shared, progress) = (shared.clone(), progress.clone());
            async move {
                shared.up.acquire(b.len()).await;
                progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(b.len() as u64);
                Ok(b)
            }
        }));
        let encoders: Vec<(BlobInfo, Header)> =
            encoders.into_iter().map(|(b, h, _)| (b, h)).collect();
        let res = tokio::select! {
            r = self.remote.put_batch(&ns, &entries, body, since) => r,
            _ = cancel.cancelled() => return,
        };
        let results = match res {
            Ok(r) => r,
            Err(e) => {
                self.shared.note_remote_err(&e);
                let ra = e.retry_after();
                for (b, _) in &encoders {
                    self.record_failure(
                        b,
                        Direction::Upload,
                        format!("batch upload: {e}"),
                        ra,
                        false,
                        stats,
                    )
                    .await;
                }
                return;
            }
        };
        self.shared.note_remote_ok();
        let now = self.clock.now();
        let mut ok = Vec::new();
        for (b, h) in &encoders {
            let code = results.get(&b.id).copied();
            match code {
                Some(200..=299) => ok.push((
                    b.id.clone(),
                    Transition::UploadSucceeded,
                    RowUpdate {
                        remote_size: Some(h.stored_size()),
                        now: Some(now),
                        ..Default::default()
                    },
                )),
                // The single-blob path handles 409 (salt check), 413, 507 and retries.
                Some(409) => match self.is_our_copy(b, &h.salt).await {
                    Ok(true) => ok.push((
                        b.id.clone(),
                        Transition::UploadSucceeded,
                        RowUpdate {
                            remote_size: Some(h.stored_size()),
                            now: Some(now),
                            ..Default::default()
                        },
                    )),
                    Ok(false) => self.take_their_copy(b).await,
                    Err(e) => {
                        self.record_failure(
                            b,
                            Direction::Upload,
                            format!("checking a 409: {e}"),
                            None,
                            false,
                            stats,
                        )
                        .await
                    }
                },
                Some(413) => {
                    self.reject_upload(b, RemoteError::TooLarge.to_string(), stats)
                        .await
                }
                // A retry deleted elsewhere since our first attempt. A first attempt that
                // shares the request only met a newer tombstone of a reused id: it is retried,
                // and the next listing decides.
                Some(412) if b.upload_salt.is_some() => {
                    let why = format!(
                        "HTTP 412 in a batch: deleted after seq {}",
                        since.unwrap_or(0)
                    );
                    self.upload_deleted_remotely(b, &why, stats).await
                }
                Some(507) => {
                    self.reject_upload(b, RemoteError::QuotaExceeded.to_string(), stats)
                        .await
                }
                other => {
                    let msg = match other {
                        Some(c) => format!("batch upload: HTTP {c} for this blob"),
                        None => "batch upload: no result for this blob".to_owned(),
                    };
                    self.record_failure(b, Direction::Upload, msg, None, false, stats)
                        .await
                }
            }
        }
        match self.shared.store.transition_many(&ns, ok).await {
            Ok(changes) => {
                stats.uploaded += changes.len() as u64;
                stats.bytes_up += total;
                for ch in changes {
                    if let Some((b, h)) = encoders.iter().find(|(b, _)| b.id == ch.id) {
                        self.finished(b, Direction::Upload, h.stored_size());
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot record a batch upload"),
        }
    }

    /// Many small downloads in one `/stream` request (each blob is small: held in memory
    /// for verification); results recorded in one transaction.
    pub(super) async fn download_batch(
        self: &Arc<Self>,
        blobs: Vec<BlobInfo>,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let ns = blobs[0].ns.clone();
        let ids: Vec<BlobId> = blobs.iter().map(|b| b.id.clone()).collect();
        let total: u64 = blobs.iter().filter_map(|b| b.remote_size).sum();
        let mut progress = Progress::start(
            &self.shared,
            &blobs[0],
            Direction::Download,
            total,
            ids.len(),
        );
        let res = tokio::select! {
            r = self.remote.get_batch(&ns, &ids) => r,
            _ = cancel.cancelled() => return,
        };
        let mut body = match res {
            Ok(b) => b,
            Err(e) => {
                self.shared.note_remote_err(&e);
                let ra = e.retry_after();
                for b in &blobs {
                    self.record_failure(
                        b,
                        Direction::Download,
                        format!("batch download: {e}"),
                        ra,
                        false,
                        stats,
                    )
                    .await;
                }
                return;
            }
        };
        let mut dec = FrameDecoder::new();
        let mut current: Option<(BlobId, Vec<u8>)> = None;
        let mut complete: Vec<(BlobId, Vec<u8>)> = Vec::new();
        let mut missing: Vec<BlobId> = Vec::new();
        let mut broken: Option<String> = None;
        let max_blob = self.shared.settings().batch.max_blob * 2 + MAX_HEADER_LEN as u64;
        'read: while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            self.shared.down.acquire(chunk.len()).await;
            progress.add(chunk.len() as u64);
            let mut input = &chunk[..];
            while !input.is_empty() || dec.has_pending_event() {
                let (used, ev) = match dec.decode(input) {
                    Ok(v) => v,
                    Err(e) => {
                        broken = Some(e.to_string());
                        break 'read;
                    }
                };
                input = &input[used..];
                match ev {
                    Some(FrameEvent::Blob { id, size }) => {
                        if size > max_blob {
                            broken = Some(format!(
                                "blob {id} in batch is {size} bytes, more than asked for"
                            ));
                            break 'read;
                        }
                        current = Some((id, Vec::with_capacity(size as usize)));
                    }
                    Some(FrameEvent::Data(d)) => {
                        if let Some((_, buf)) = current.as_mut() {
                            buf.extend_from_slice(d);
                        }
                    }
                    Some(FrameEvent::End { .. }) => complete.extend(current.take()),
                    Some(FrameEvent::Missing { id }) => missing.push(id),
                    None => {}
                }
            }
        }
        if broken.is_none()
            && let Err(e) = dec.finish()
        {
            broken = Some(e.to_string());
        }
        drop(progress);
        self.shared.note_remote_ok();
        let now = self.clock.now();
        // Verify every blob first (in memory), then install the good ones together: one
        // write pass, concurrent fsyncs, one fsync per directory, and the one commit below,
        // instead of two fsyncs per blob in a row (W1/W5 of issue 8).
        let mut ok = Vec::new();
        let mut verified = Vec::new();
        let seen = match self.shared.store.seen_salts_many(&ns, ids.clone()).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot read the salts seen before; batch left queued");
                return;
            }
        };
        for (id, stored) in complete {
            let Some(b) = blobs.iter().find(|b| b.id == id) else {
                continue;
            };
            let forbidden: Vec<[u8; 32]> = seen
                .get(&b.id)
                .into_iter()
                .flatten()
                .filter(|s| Some(**s) != b.upload_salt)
                .copied()
                .collect();
            match open_small(&self.shared.key, b, &stored) {
                Ok((plain_size, sha, salt)) => {
                    self.shared.key_proven();
                    match self.check_rollback(b, Some(salt), &sha, &forbidden) {
                        Ok(()) => verified.push((b, stored, plain_size, sha, salt)),
                        Err(e) => {
                            let _ = self
                                .settle(b, Transition::DownloadInvalid, &e.to_string())
                                .await;
                            stats.failed += 1;
                        }
                    }
                }
                Err(e) if self.shared.download_invalid(&b.ns, &b.id, &e) => {}
                Err(InvalidBlob::BadMagic) => self.foreign_format(b).await,
                Err(e) => {
                    self.record_failure(b, Direction::Download, e.to_string(), None, true, stats)
                        .await
                }
            }
        }
        // The per-blob locks keep an on-demand fetch of the same blob out; taken in id order.
        verified.sort_by(|x, y| x.0.id.cmp(&y.0.id));
        let mut guards = Vec::with_capacity(verified.len());
        for (b, _, _, _, _) in &verified {
            guards.push(self.shared.blob_lock(&b.ns, &b.id).lock_owned().await);
        }
        let mut files = Vec::with_capacity(verified.len());
        let mut facts = Vec::with_capacity(verified.len());
        for (b, stored, size, sha, salt) in verified {
            facts.push((b, stored.len() as u64, size, sha, salt));
            // The verified stored bytes are the payload, as they are.
            files.push((self.shared.data.payload_path(&b.ns, &b.id), stored));
        }
        let installed = self.install_many(files).await;
        for (i, (b, stored_len, size, sha, salt)) in facts.into_iter().enumerate() {
            match installed.get(i).or(installed.first()) {
                Some(Ok(())) => ok.push((
                    b.id.clone(),
                    Transition::DownloadSucceeded,
                    RowUpdate {
                        size: Some(size),
                        sha256: Some(sha),
                        remote_size: Some(stored_len),
                        salt: Some(salt),
                        now: Some(now),
                        ..Default::default()
                    },
                )),
                Some(Err(e)) => {
                    let msg = format!("local i/o: {e}");
                    self.record_failure(b, Direction::Download, msg, None, false, stats)
                        .await
                }
                None => {}
            }
        }
        drop(guards);
        let got: std::collections::HashSet<&BlobId> = ok.iter().map(|(id, _, _)| id).collect();
        for b in &blobs {
            if got.contains(&b.id) {
                continue;
            }
            if missing.contains(&b.id) {
                // Gone meanwhile: the next listing removes the row.
                continue;
            }
            if let Some(why) = &broken {
                self.record_failure(
                    b,
                    Direction::Download,
                    format!("batch download cut short: {why}"),
                    None,
                    false,
                    stats,
                )
                .await;
            }
        }
        let _g = ();
        match self.shared.store.transition_many(&ns, ok).await {
            Ok(changes) => {
                stats.downloaded += changes.len() as u64;
                stats.bytes_down += total;
                for ch in changes {
                    if let Some(b) = blobs.iter().find(|b| b.id == ch.id) {
                        self.finished(b, Direction::Download, b.remote_size.unwrap_or(0));
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot record a batch download"),
        }
    }
}

/// Verifies a small stored blob held in memory: its plaintext size, the plaintext's SHA-256
/// and its header salt. The plaintext goes nowhere but the hash.
fn open_small(
    key: &blobsync_shared::StorageKey,
    b: &BlobInfo,
    stored: &[u8],
) -> Result<(u64, [u8; 32], [u8; 32]), InvalidBlob> {
    if b.external {
        // Never batched (`plan::next_transfers`): an age file goes through `incoming`.
        return Err(InvalidBlob::BadHeader(
            "an external blob cannot come in a batch".into(),
        ));
    }
    let mut d = Decoder::new(key, &b.ns, &b.id);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    d.feed(stored, |p| {
        ctx.update(p);
        Ok::<(), Infallible>(())
    })
    .map_err(|e| match e {
        DecodeError::Invalid(i) => i,
        DecodeError::Sink(never) => match never {},
    })?;
    let h = d.finish()?;
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ctx.finish().as_ref());
    Ok((h.plain_size, sha, h.salt))
}

/// Blocking: the partial download at `path`, opened for writing. With `allow_resume` and a
/// partial that holds a header for `ns/id` and at least one whole segment, its whole
/// segments are authenticated and hashed (into `hasher`), the file is cut after them, and a
/// decoder returned that resumes there; at least the last segment is always fetched again,
/// so the Range is never empty. Anything else starts over with an empty file.
#[allow(clippy::type_complexity)]
fn resume_partial(
    key: &blobsync_shared::StorageKey,
    path: &std::path::Path,
    ns: &Namespace,
    id: &BlobId,
    allow_resume: bool,
    mut hasher: ring::digest::Context,
) -> std::io::Result<(std::fs::File, Option<(Decoder, ring::digest::Context)>)> {
    use std::io::{Read, Seek, Write};
    struct Hash<'a>(&'a mut ring::digest::Context);
    impl Write for Hash<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if allow_resume
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
    {
        let len = f.metadata()?.len();
        let mut hb = vec![0u8; MAX_HEADER_LEN.min(len as usize)];
        f.read_exact(&mut hb)?;
        if let Ok(Some((h, hlen))) = Header::parse(&hb)
            && h.namespace == *ns
            && h.id == *id
        {
            hb.truncate(hlen);
            // Whole segments on disk.
            let mut whole = 0;
            while whole < h.segment_count()
                && h.segment_offset(whole) + h.segment_sealed_len(whole) <= len
            {
                whole += 1;
            }
            let next = whole.min(h.segment_count() - 1);
            let plain_end = (next << h.segment_exp).min(h.plain_size);
            let authentic = next > 0
                && blobsync_shared::codec::decrypt_range(
                    key,
                    &mut f,
                    ns,
                    id,
                    0..plain_end,
                    Hash(&mut hasher),
                )
                .is_ok();
            if authentic && let Ok(d) = Decoder::resume(key, &hb, ns, id, next) {
                f.set_len(h.segment_offset(next))?;
                f.seek(std::io::SeekFrom::End(0))?;
                return Ok((f, Some((d, hasher))));
            }
        }
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    Ok((f, None))
}
