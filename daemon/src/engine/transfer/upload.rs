//! Uploads: the payload file sent as it is (it is the stored blob), the salt recorded before
//! the PUT, a 409 compared by salt, a 412 left to the next listing; remote deletes with their
//! proof.

use std::sync::Arc;

use blobsync_shared::Namespace;
use blobsync_shared::codec::{Header, MAX_HEADER_LEN};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{NotReady, Progress, READ_AHEAD, read_chunks};
use crate::clock::Clock;
use crate::engine::{Engine, Shared, TransferStats, atrest};
use crate::events::{Direction, EventKind};
use crate::remote::{ByteStream, Remote, RemoteError};
use crate::status::{Status, Transition};
use crate::store::BlobInfo;
use crate::store::ops::RowUpdate;

/// Streams the payload file at `path` as it is (it is the stored blob: header, then sealed
/// segments), `len` bytes, paced by the upload limiter. Errors reading the file end the
/// stream with an `Err` item, as does a file that is not exactly `len` bytes long.
pub(in crate::engine) fn file_stream(
    shared: Arc<Shared>,
    path: std::path::PathBuf,
    len: u64,
    progress: Option<Progress>,
) -> ByteStream {
    // One blocking task reads the file front to back (a hop to the blocking pool per chunk
    // cost more than the read), READ_AHEAD chunks ahead of the network; the limiter and the
    // progress are applied as the body takes each chunk.
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if !read_chunks(&file, len, |_| Ok(()), |c| tx.blocking_send(c).is_ok()) {
            return;
        }
        // The file must not have grown: immutable payloads are exactly `len` long.
        let mut extra = [0u8; 1];
        if let Ok(1..) = file.read_at(&mut extra, len) {
            let _ = tx.blocking_send(Err(std::io::Error::other(
                "payload file is longer than recorded",
            )));
        }
    });
    let progress = std::sync::Mutex::new(progress);
    paced_body(shared, rx, move |n| {
        if let Some(p) = progress.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            p.add(n);
        }
    })
}

/// An upload's body: the chunks from `rx`, each paced by the upload limiter and then
/// reported to `sent` as the body takes it.
pub(super) fn paced_body(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    sent: impl Fn(u64) + Send + Sync + 'static,
) -> ByteStream {
    let sent = Arc::new(sent);
    Box::pin(
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .then(move |item| {
            let (shared, sent) = (shared.clone(), sent.clone());
            async move {
                if let Ok(b) = &item {
                    shared.up.acquire(b.len()).await;
                    sent(b.len() as u64);
                }
                item
            }
        }),
    )
}

/// Blocking: a small payload file, whole; it must be exactly `len` bytes.
pub(super) fn read_exactly(path: &std::path::Path, len: u64) -> std::io::Result<Bytes> {
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
    pub(in crate::engine) async fn reject_upload(
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

    pub(in crate::engine) async fn mark_uploaded(
        &self,
        b: &BlobInfo,
        stored: u64,
        stats: &mut TransferStats,
    ) {
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
    pub(in crate::engine) async fn take_their_copy(&self, b: &BlobInfo) {
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
    pub(in crate::engine) async fn upload_header(&self, b: &BlobInfo) -> Result<Header, NotReady> {
        let size = b
            .size
            .ok_or(NotReady::Retry("no local size recorded".into()))?;
        let listed = self
            .shared
            .store
            .is_plain(&b.ns, &b.id)
            .await
            .map_err(|e| NotReady::Retry(e.to_string()))?;
        if listed {
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
    pub(in crate::engine) async fn is_our_copy(
        &self,
        b: &BlobInfo,
        salt: &[u8; 32],
    ) -> Result<bool, RemoteError> {
        Ok(self.salt_on_server(b).await? == Some(*salt))
    }

    /// The header salt of the server's copy of `b` (a ranged read of its header); `None` when
    /// the copy has no blob-format header.
    pub(in crate::engine) async fn salt_on_server(
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
    pub(in crate::engine) async fn delete_proof(&self, b: &BlobInfo) -> Option<String> {
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
    pub(in crate::engine) async fn if_absent_since(
        &self,
        ns: &Namespace,
        attempted: bool,
    ) -> Option<u64> {
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
    pub(in crate::engine) async fn upload_deleted_remotely(
        &self,
        b: &BlobInfo,
        why: &str,
        stats: &mut TransferStats,
    ) {
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
        let _ = self.shared.sync_tx.try_send(crate::engine::SyncRequest {
            full: false,
            allow_mass_delete: false,
            reply: None,
        });
    }

    /// What an upload's answer means for the blob, for a single PUT and for each blob of a
    /// `/stream` batch alike: `true` when the server holds our copy (the caller records it
    /// uploaded: one row, or the batch's rows in one transaction); otherwise this settles the
    /// blob itself (their copy taken, rejected, deleted elsewhere, or a failure retried on
    /// the schedule).
    pub(in crate::engine) async fn settle_upload(
        &self,
        b: &BlobInfo,
        salt: &[u8; 32],
        res: Result<(), RemoteError>,
        stats: &mut TransferStats,
    ) -> bool {
        match res {
            Ok(()) => true,
            Err(RemoteError::Conflict) => match self.is_our_copy(b, salt).await {
                Ok(true) => {
                    debug!("409 with our own salt: an earlier upload got through");
                    true
                }
                Ok(false) => {
                    self.take_their_copy(b).await;
                    false
                }
                Err(e) => {
                    let msg = format!("checking a 409: {e}");
                    self.record_failure(b, Direction::Upload, msg, e.retry_after(), false, stats)
                        .await;
                    false
                }
            },
            Err(e @ (RemoteError::TooLarge | RemoteError::QuotaExceeded)) => {
                self.reject_upload(b, e.to_string(), stats).await;
                false
            }
            // A retry, deleted elsewhere since our first attempt. (A first attempt never sends
            // the condition alone; one that shares a batch with retries only met a newer
            // tombstone of a reused id: it is retried below, and the next listing decides.)
            Err(RemoteError::DeletedAfter(why)) if b.upload_salt.is_some() => {
                self.upload_deleted_remotely(b, &why, stats).await;
                false
            }
            // The connection broke: the server may have stored it all the same (the answer
            // was lost, or it answered 409 early and closed while we were still sending).
            // Our salt in its copy's header settles it without another attempt.
            Err(e @ (RemoteError::Transport(_) | RemoteError::Io(_)))
                if matches!(self.is_our_copy(b, salt).await, Ok(true)) =>
            {
                debug!(error = %e, "upload broke off, but the server has our copy");
                true
            }
            Err(e) => {
                let ra = e.retry_after();
                self.record_failure(b, Direction::Upload, e.to_string(), ra, false, stats)
                    .await;
                false
            }
        }
    }

    pub(in crate::engine) async fn upload_one(
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
            if self.settle_upload(&b, &salt, res, stats).await {
                self.mark_uploaded(&b, stored, stats).await;
            }
        }
        .instrument(span)
        .await
    }

    pub(in crate::engine) async fn delete_one(
        self: &Arc<Self>,
        b: BlobInfo,
        stats: &mut TransferStats,
    ) {
        let lock = self.shared.blob_lock(&b.ns, &b.id);
        let _g = lock.lock().await;
        let proof = self.delete_proof(&b).await;
        match self.remote.delete(&b.ns, &b.id, proof).await {
            Ok(()) | Err(RemoteError::NotFound)
                if self.shared.crash_here("delete.after_remote") => {}
            Ok(()) | Err(RemoteError::NotFound) => {
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
}
