//! The incoming box on the device (docs/incoming.md): publishing the recipient,
//! fetching an `external` blob (the delivered age file, decrypted with the incoming identity
//! into a normal payload; or, once some device adopted it, its format-v1 copy), and the
//! adoption itself: our format-v1 copy replaces the age file on the server
//! (`replace_external`), and a lost race takes the winner's copy like any remote blob.
//!
//! Crash safety comes from the store: the decrypted payload is installed before the row
//! moves to `PENDING_UPLOAD` with its adoption recorded (one transaction), and the adoption
//! ends in one transaction too. A restart between the two re-runs the adoption with the
//! salt recorded before the PUT, and a 412 whose server copy carries that salt is ours.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use blobsync_shared::codec::{Header, MAX_HEADER_LEN};
use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::incoming::{AGE_MAGIC, IncomingError, IncomingIdentity, looks_like_age};
use blobsync_shared::{BlobId, InvalidBlob};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::transfer::{
    DownloadError, MAX_CUTS_WITHOUT_PROGRESS, NotReady, Progress, file_stream, open_small,
};
use super::{Engine, TransferStats};
use crate::clock::Clock;
use crate::events::Direction;
use crate::remote::{BatchItem, ByteStream, Remote, RemoteError};
use crate::status::{Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, payload};

/// A finished download: (plaintext size, sha256, stored size, header salt), as in transfer.
type Fetched = (u64, [u8; 32], u64, Option<[u8; 32]>);

/// How often the published recipient is checked again (the server may lose it).
const RECIPIENT_RECHECK: Duration = Duration::from_secs(600);

impl<R: Remote, C: Clock> Engine<R, C> {
    /// The user's incoming identity (derived from the storage key; cheap).
    pub(crate) fn incoming_identity(&self) -> IncomingIdentity {
        IncomingIdentity::derive(&self.shared.key)
    }

    /// Publishes the recipient when the remote lacks it: on the first cycle of a run, after
    /// the remote changed (`force`), and every [`RECIPIENT_RECHECK`]. Failures are logged and
    /// tried again next cycle; they never hold the sync up.
    pub(super) async fn publish_recipient(&self, force: bool) {
        let now = SystemTime::now();
        let due = force
            || self
                .shared
                .state()
                .recipient_checked
                .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= RECIPIENT_RECHECK);
        if !due {
            return;
        }
        let ours = self.incoming_identity().recipient();
        let res = match self.remote.incoming_recipient().await {
            Ok(Some(r)) if r == ours => Ok(()),
            // Another device's, with another key: ours would send their mail to a key they
            // don't have. Not replaced, and the wrong-key alarm stops downloads.
            Ok(Some(other))
                if !self.key_proven_ever().await
                    && !self.shared.foreign_recipient(&other, &ours) =>
            {
                tracing::error!(
                    published = %other,
                    ours = %ours,
                    "the server's incoming recipient is not derived from this device's key: \
                     this device has another key than the user's other devices"
                );
                return;
            }
            Ok(other) => {
                if let Some(other) = other {
                    warn!(published = %other, "the server's incoming recipient is not ours, though downloads have proven this device's key: the server's copy is stale or was replaced; publishing ours");
                }
                self.remote.publish_incoming_recipient(&ours).await
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                debug!(recipient = %ours, "incoming recipient published");
                self.shared.state().recipient_checked = Some(now);
            }
            Err(e) => warn!(error = %e, "cannot publish the incoming recipient; will retry"),
        }
    }

    /// Whether a download ever authenticated with this device's key (this run, or recorded
    /// by an earlier one).
    async fn key_proven_ever(&self) -> bool {
        self.shared.key_is_proven()
            || matches!(
                self.shared.store.meta(super::keycheck::KEY_PROVEN).await,
                Ok(Some(_))
            )
    }

    /// A download: an `external` row goes through the incoming box (`Some(age sha256)` when
    /// the server still held the delivery and it was decrypted), every other row through
    /// the usual verified download.
    pub(super) async fn fetch_download(
        &self,
        b: &BlobInfo,
        forbidden: &[[u8; 32]],
    ) -> Result<(Fetched, Option<[u8; 32]>), DownloadError> {
        if !b.external {
            return Ok((self.fetch_to_payload(b, forbidden).await?, None));
        }
        let resp = self.remote.get(&b.ns, &b.id, None).await?;
        let total = resp.total;
        let mut body = resp.body;
        let mut head: Vec<u8> = Vec::new();
        while head.len() <= AGE_MAGIC.len() {
            match body.next().await {
                Some(Ok(c)) => head.extend_from_slice(&c),
                Some(Err(e)) => {
                    return Err(RemoteError::Transport(format!("download cut short: {e}")).into());
                }
                None => break,
            }
        }
        if !looks_like_age(&head) {
            // Adopted already (by some device): a format-v1 blob, fetched and verified as
            // any other. Nothing unauthenticated gets through: the decoder checks the key.
            drop(body);
            let mut v1 = b.clone();
            v1.external = false;
            return Ok((self.fetch_to_payload(&v1, forbidden).await?, None));
        }
        if b.reupload {
            // Our adoption was refused as "not that file", yet the server still serves an
            // age file: it contradicts itself. Keep our copy (FAILED_UPLOAD, with the reason)
            // rather than adopt and be refused again every cycle.
            return Err(DownloadError::Conflict(format!(
                "conflict: the server refused our adoption of {}/{} but still serves a                  delivery under that id; this device's copy is kept",
                b.ns, b.id
            )));
        }
        let res = self.fetch_age(b, total, head, body, forbidden).await;
        if res.is_err() {
            self.remove_partial(b).await;
        }
        res.map(|(f, h)| (f, Some(h)))
    }

    /// Receives the age file into the partial file (hashing it), then decrypts it into the
    /// payload. A delivery offered for an id this device held another version of is refused
    /// (a server cannot swap adopted content for an age file), unless it is the same content.
    async fn fetch_age(
        &self,
        b: &BlobInfo,
        total: u64,
        head: Vec<u8>,
        mut body: crate::remote::ByteStream,
        forbidden: &[[u8; 32]],
    ) -> Result<(Fetched, [u8; 32]), DownloadError> {
        let partial = self.shared.data.partial(&b.ns, &b.id);
        let mut file = tokio::fs::File::create(partial.path()).await?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut progress = Progress::start(&self.shared, b, Direction::Download, total, 1);
        let mut got = 0u64;
        let mut chunk = Some(bytes::Bytes::from(head));
        loop {
            let c = match chunk.take() {
                Some(c) => c,
                None => match body.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        return Err(
                            RemoteError::Transport(format!("download cut short: {e}")).into()
                        );
                    }
                    None => break,
                },
            };
            self.shared.down.acquire(c.len()).await;
            hasher.update(&c);
            tokio::io::AsyncWriteExt::write_all(&mut file, &c).await?;
            got += c.len() as u64;
            progress.set(got);
        }
        if got != total {
            return Err(RemoteError::Transport(format!(
                "download cut short: body ended at byte {got} of {total}"
            ))
            .into());
        }
        // tokio's File writes in the background: the decryption below must see every byte.
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        drop(file);
        let mut age_sha = [0u8; 32];
        age_sha.copy_from_slice(hasher.finish().as_ref());
        // On the blocking pool: decrypt once to authenticate the whole delivery and learn its
        // size (the header of the sealed payload names it), then again, sealing the plaintext
        // into an unnamed payload file under a fresh salt. Plaintext never reaches the disk.
        let identity = self.incoming_identity();
        let data = self.shared.data.clone();
        let key = self.shared.key.clone();
        let seg = self.shared.settings().segment_exp;
        let dest = self.shared.data.payload_path(&b.ns, &b.id);
        let src = partial.path().to_path_buf();
        let (ns, id) = (b.ns.clone(), b.id.clone());
        let (ns2, id2) = (ns.clone(), id.clone());
        let decrypted = tokio::task::spawn_blocking(move || {
            let mut count = HashingWriter {
                inner: std::io::sink(),
                ctx: ring::digest::Context::new(&ring::digest::SHA256),
            };
            let size = identity.decrypt(std::fs::File::open(&src)?, &mut count)?;
            let mut sha = [0u8; 32];
            sha.copy_from_slice(count.ctx.finish().as_ref());
            let header = blobsync_shared::codec::Header::new(ns2, id2, size, seg)
                .map_err(|e| IncomingError::Io(std::io::Error::other(e)))?;
            let mut out = payload::NewPayload::create(&data, &dest)?;
            let mut sealer = crate::store::sealed::Sealer::new(&key, header);
            let mut w = SealInto {
                sealer: &mut sealer,
                out: out.file(),
                buf: Vec::new(),
            };
            identity.decrypt(std::fs::File::open(&src)?, &mut w)?;
            let mut tail = Vec::new();
            let again = sealer.finish(&mut tail)?;
            std::io::Write::write_all(out.file(), &tail)?;
            if again != sha {
                return Err(IncomingError::Io(std::io::Error::other(
                    "the delivery decrypted differently the second time (changed on disk)",
                )));
            }
            out.file().sync_all()?;
            Ok::<_, IncomingError>((out, size, sha))
        })
        .await
        .map_err(std::io::Error::other)?;
        let (mut out, size, sha) = match decrypted {
            Ok(v) => v,
            Err(IncomingError::Invalid(why)) => {
                return Err(DownloadError::Invalid(InvalidBlob::Age(format!(
                    "{ns}/{id}: {why}"
                ))));
            }
            Err(IncomingError::Io(e)) => return Err(e.into()),
        };
        let held_other = (b.sha256.is_some() || !forbidden.is_empty()) && b.sha256 != Some(sha);
        if held_other {
            let why = format!(
                "refused: the server offered a delivery (age file) for {}/{}, which this \
                 device already held with other content; the blob stays as it was",
                b.ns, b.id
            );
            return Err(self.refuse(crate::events::AlarmKind::Rollback, b, why));
        }
        let dest = self.shared.data.payload_path(&b.ns, &b.id);
        tokio::task::spawn_blocking(move || {
            payload::remove(&dest)?;
            out.link(&dest)?;
            payload::sync_dir(dest.parent().expect("payload paths have a parent"))?;
            partial.remove()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(((size, sha, total, None), age_sha))
    }

    /// Records a decrypted delivery (payload installed): `PENDING_UPLOAD` with its adoption,
    /// and the upload starts at once.
    pub(super) async fn record_decrypted(
        &self,
        b: &BlobInfo,
        fetched: Fetched,
        age_sha: [u8; 32],
        stats: &mut TransferStats,
    ) -> Result<(), DownloadError> {
        let (size, sha, stored, _) = fetched;
        let u = RowUpdate {
            size: Some(size),
            sha256: Some(sha),
            remote_size: Some(stored),
            now: Some(self.clock.now()),
            ..Default::default()
        };
        self.shared
            .store
            .incoming_decrypted(&b.ns, &b.id, u, age_sha)
            .await?;
        info!(ns = %b.ns, id = %b.id, size, "incoming delivery decrypted; adopting it on the server");
        stats.downloaded += 1;
        stats.bytes_down += stored;
        self.finished(b, Direction::Download, stored);
        self.shared.kick.notify_one();
        Ok(())
    }

    /// The adoption of `b` if it waits for one: the age file's SHA-256.
    pub(super) async fn pending_adoption(&self, b: &BlobInfo) -> Option<[u8; 32]> {
        if !b.external {
            return None;
        }
        match self.shared.store.adoption(&b.ns, &b.id).await {
            Ok(h) => h,
            Err(e) => {
                warn!(ns = %b.ns, id = %b.id, error = %e, "cannot read the adoption state");
                None
            }
        }
    }

    /// Uploads our format-v1 copy of a decrypted delivery in place of the age file.
    /// Called with the blob's transfer lock held and `b` in `PENDING_UPLOAD`.
    pub(super) async fn adopt_one(
        &self,
        b: BlobInfo,
        age_sha: [u8; 32],
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        if self.shared.crash_here("incoming.before_adopt") {
            return;
        }
        let header = match self.upload_header(&b).await {
            Ok(h) => h,
            Err(NotReady::Retry(e)) => {
                return self
                    .record_failure(&b, Direction::Upload, e, None, false, stats)
                    .await;
            }
            Err(NotReady::Reject(e)) => return self.reject_upload(&b, e, stats).await,
        };
        let salt = header.salt;
        let stored = header.stored_size();
        let path = self.shared.data.payload_path(&b.ns, &b.id);
        let progress = Progress::start(&self.shared, &b, Direction::Upload, stored, 1);
        let body = file_stream(self.shared.clone(), path, stored, Some(progress));
        let res = tokio::select! {
            r = self.remote.replace_external(&b.ns, &b.id, stored, body, &age_sha) => r,
            _ = cancel.cancelled() => return,
        };
        if self.shared.crash_here("incoming.after_adopt") {
            return;
        }
        let ours = self.adoption_is_ours(&b, &salt, &res).await;
        if let Some(t) = self.judge_adoption(&b, res, ours, stats).await {
            self.adoption_done(&b, t, stored, stats).await
        }
    }

    /// Whether an adoption PUT refused as "not that file", or left without an answer, got
    /// through all the same: our salt in the server's copy (a restart after the PUT, a lost
    /// answer).
    async fn adoption_is_ours(
        &self,
        b: &BlobInfo,
        salt: &[u8; 32],
        res: &Result<Option<u64>, RemoteError>,
    ) -> bool {
        matches!(
            res,
            Err(RemoteError::NotTheDelivery(_) | RemoteError::Transport(_))
        ) && matches!(self.is_our_copy(b, salt).await, Ok(true))
    }

    /// Judges an adoption PUT's answer (`ours`: [`Engine::adoption_is_ours`]): the transition
    /// that ends the adoption, or `None` when it did not end (the failure is recorded here).
    async fn judge_adoption(
        &self,
        b: &BlobInfo,
        res: Result<Option<u64>, RemoteError>,
        ours: bool,
        stats: &mut TransferStats,
    ) -> Option<Transition> {
        match res {
            Ok(_) => Some(Transition::UploadSucceeded),
            Err(e @ (RemoteError::NotTheDelivery(_) | RemoteError::Transport(_))) if ours => {
                debug!(ns = %b.ns, id = %b.id, error = %e, "the server holds our adoption already");
                Some(Transition::UploadSucceeded)
            }
            Err(RemoteError::NotTheDelivery(why)) => {
                info!(ns = %b.ns, id = %b.id, %why, "another device adopted this delivery first; taking its copy");
                Some(Transition::Contested)
            }
            Err(RemoteError::NotFound) => {
                // The delivery is gone from the server (deleted, or lost): keep ours and put
                // it up as a normal blob; a proven tombstone in the listing decides otherwise.
                warn!(ns = %b.ns, id = %b.id, "the delivery is no longer on the server; uploading our copy as a normal blob");
                if let Err(e) = self.shared.store.drop_adoption(&b.ns, &b.id).await {
                    warn!(error = %e, "cannot forget the adoption");
                }
                self.record_failure(
                    b,
                    Direction::Upload,
                    "adoption: the delivery is gone from the server".into(),
                    None,
                    false,
                    stats,
                )
                .await;
                None
            }
            Err(e @ (RemoteError::TooLarge | RemoteError::QuotaExceeded)) => {
                self.reject_upload(b, format!("adoption: {e}"), stats).await;
                None
            }
            Err(e) => {
                let ra = e.retry_after();
                self.record_failure(
                    b,
                    Direction::Upload,
                    format!("adoption: {e}"),
                    ra,
                    false,
                    stats,
                )
                .await;
                None
            }
        }
    }

    async fn adoption_done(
        &self,
        b: &BlobInfo,
        t: Transition,
        stored: u64,
        stats: &mut TransferStats,
    ) {
        let remote_size = (t == Transition::UploadSucceeded).then_some(stored);
        match self
            .shared
            .store
            .incoming_adoption_done(&b.ns, &b.id, t, remote_size, self.clock.now())
            .await
        {
            Ok(_) if t == Transition::UploadSucceeded => {
                info!(ns = %b.ns, id = %b.id, "incoming delivery adopted: the server holds our format-v1 copy");
                stats.uploaded += 1;
                stats.bytes_up += stored;
                self.finished(b, Direction::Upload, stored);
            }
            Ok(_) => self.shared.kick.notify_one(),
            Err(e) => warn!(ns = %b.ns, id = %b.id, error = %e, "adopted, but the row moved on"),
        }
    }
}

/// Adoption PUTs in flight at most, over every [`Engine::adopt_batch`] of the process: each
/// waits on the server's fsync and commit, so they overlap (the row is latency-bound, not
/// CPU-bound), but each holds a connection, and a server limits those per address (64 by
/// default, shared with the user's other devices on one NAT): too many draw 429s.
const ADOPT_IN_FLIGHT: usize = 12;

static ADOPT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ADOPT_IN_FLIGHT);

/// A delivery of a batch, decrypted and sealed in memory: (the sealed payload, plaintext
/// size, plaintext SHA-256, the age file's SHA-256), or why not.
type Opened = Result<(Vec<u8>, u64, [u8; 32], [u8; 32]), IncomingError>;

/// An adopted (format-v1) copy of a batch, verified: (its row, stored bytes, plaintext size,
/// plaintext SHA-256, header salt).
type VerifiedCopy<'a> = (&'a BlobInfo, Vec<u8>, u64, [u8; 32], [u8; 32]);

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Many small external blobs of an incoming namespace in one `/stream` request (each
    /// held in memory, as [`Engine::download_batch`] does): a delivery (an age file) is
    /// decrypted with the incoming identity and sealed in memory, exactly as the one-blob
    /// path checks it; a format-v1 copy (adopted by some device) is verified like any blob.
    /// Every good one is installed through the sync group, then all are recorded in one
    /// transaction per kind: a decrypted delivery moves to `PENDING_UPLOAD` with its
    /// adoption recorded (docs/incoming.md), a verified copy to `SYNCED`. What does not
    /// decrypt or verify is handled per blob as the one-blob path does; the rest go on.
    pub(in crate::engine) async fn incoming_batch(
        self: &Arc<Self>,
        blobs: Vec<BlobInfo>,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let ns = blobs[0].ns.clone();
        if self.shared.settings().policy(&ns) != NamespacePolicy::Incoming {
            // Refused one by one, with the alarm (`may_download`).
            for b in blobs {
                let _ = self.download_one(b, false, cancel, stats).await;
            }
            return;
        }
        let ids: Vec<BlobId> = blobs.iter().map(|b| b.id.clone()).collect();
        let total: u64 = blobs.iter().filter_map(|b| b.remote_size).sum();
        let mut progress = Progress::start(
            &self.shared,
            &blobs[0],
            Direction::Download,
            total,
            ids.len(),
        );
        let max_blob = self.shared.settings().batch.max_blob * 2 + MAX_HEADER_LEN as u64;
        let mut complete: Vec<(BlobId, Vec<u8>)> = Vec::new();
        let mut missing: Vec<BlobId> = Vec::new();
        let mut broken: Option<String>;
        // A cut answer is a transport fault (a blob replaced while it was being sent: another
        // device's adoption): the blobs not received yet are asked for again at once while
        // each answer makes progress, instead of all waiting out a retry.
        let mut want = ids.clone();
        let mut cuts = 0u32;
        loop {
            let res = tokio::select! {
                r = self.remote.get_batch(&ns, &want, max_blob) => r,
                _ = cancel.cancelled() => return,
            };
            let mut items = match res {
                Ok(b) => b,
                Err(e) if complete.is_empty() && missing.is_empty() => {
                    let ra = e.retry_after();
                    for b in &blobs {
                        let msg = format!("batch download: {e}");
                        self.record_failure(b, Direction::Download, msg, ra, false, stats)
                            .await;
                    }
                    return;
                }
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            let before = complete.len() + missing.len();
            let mut hostile = false;
            broken = None;
            while let Some(item) = items.next().await {
                let item = match item {
                    Ok(i) => i,
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                };
                let (BatchItem::Blob { id, .. } | BatchItem::Missing { id }) = &item;
                // A hostile server must not make us hold more than we asked for.
                if !want.contains(id)
                    || complete.iter().any(|(x, _)| x == id)
                    || missing.contains(id)
                {
                    broken = Some("the batch answer holds a blob that was not asked for".into());
                    hostile = true;
                    break;
                }
                match item {
                    BatchItem::Blob { id, stored } => {
                        self.shared.down.acquire(stored.len()).await;
                        progress.add(stored.len() as u64);
                        complete.push((id, stored));
                    }
                    BatchItem::Missing { id } => missing.push(id),
                }
            }
            drop(items);
            let Some(why) = &broken else { break };
            if hostile {
                break;
            }
            if complete.len() + missing.len() > before {
                cuts = 0;
            } else {
                cuts += 1;
            }
            want.retain(|id| !complete.iter().any(|(x, _)| x == id) && !missing.contains(id));
            if want.is_empty() {
                broken = None;
                break;
            }
            if cuts >= MAX_CUTS_WITHOUT_PROGRESS {
                break;
            }
            debug!(%ns, %why, left = want.len(), "incoming batch cut short; asking for the rest");
        }
        drop(progress);
        let seen = match self.shared.store.seen_salts_many(&ns, ids.clone()).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot read the salts seen before; batch left queued");
                return;
            }
        };
        let forbidden_of = |b: &BlobInfo| -> Vec<[u8; 32]> {
            seen.get(&b.id)
                .into_iter()
                .flatten()
                .filter(|s| Some(**s) != b.upload_salt)
                .copied()
                .collect()
        };
        // Sort the answers: deliveries to decrypt, and adopted copies verified here.
        let mut ages: Vec<(&BlobInfo, Vec<u8>)> = Vec::new();
        let mut copies: Vec<VerifiedCopy<'_>> = Vec::new();
        for (id, stored) in complete {
            let Some(b) = blobs.iter().find(|b| b.id == id) else {
                continue;
            };
            if ages.iter().any(|(x, _)| x.id == id) || copies.iter().any(|(x, ..)| x.id == id) {
                continue;
            }
            if looks_like_age(&stored) {
                if b.reupload {
                    // Our adoption was refused as "not that file", yet the server still
                    // serves an age file: as `fetch_download`, our copy is kept.
                    let why = format!(
                        "conflict: the server refused our adoption of {}/{} but still serves \
                         a delivery under that id; this device's copy is kept",
                        b.ns, b.id
                    );
                    self.lost_contest(b, why, stats).await;
                } else {
                    ages.push((b, stored));
                }
                continue;
            }
            // Adopted already: a format-v1 blob, verified as any other (the decoder checks
            // the key; nothing unauthenticated gets through).
            let mut v1 = b.clone();
            v1.external = false;
            match open_small(&self.shared.key, &v1, &stored) {
                Ok((size, sha, salt)) => {
                    self.shared.key_proven();
                    if let Err(e) = self.check_rollback(b, Some(salt), &sha, &forbidden_of(b)) {
                        let _ = self
                            .settle(b, Transition::DownloadInvalid, &e.to_string())
                            .await;
                        stats.failed += 1;
                    } else if b.reupload && b.sha256.is_some_and(|ours| ours != sha) {
                        let why = format!(
                            "conflict: the server already has a different blob {}/{} (put by \
                             another device); this device's copy is kept. Delete one of them, \
                             or put yours under another id",
                            b.ns, b.id
                        );
                        self.lost_contest(b, why, stats).await;
                    } else {
                        copies.push((b, stored, size, sha, salt));
                    }
                }
                Err(e) if self.shared.download_invalid(&b.ns, &b.id, &e) => {}
                Err(InvalidBlob::BadMagic) => self.foreign_format(b).await,
                Err(e) => {
                    warn!(ns = %b.ns, id = %b.id, check = e.check(), "downloaded blob failed verification");
                    self.record_failure(b, Direction::Download, e.to_string(), None, true, stats)
                        .await
                }
            }
        }
        // Decrypt and seal every delivery in one trip to the blocking pool; the plaintext
        // stays in memory (small blobs) and never reaches the disk.
        let identity = self.incoming_identity();
        let key = self.shared.key.clone();
        let seg = self.shared.settings().segment_exp;
        let jobs: Vec<(BlobId, Vec<u8>)> = ages
            .iter()
            .map(|(b, s)| (b.id.clone(), s.clone()))
            .collect();
        let ns2 = ns.clone();
        let opened: Vec<Opened> = match tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(id, age)| open_delivery(&identity, &key, &ns2, id, &age, seg))
                .collect()
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "decrypting a batch of deliveries failed; left queued");
                return;
            }
        };
        // (blob, sealed payload, plaintext size, sha256, age file's size, age sha256)
        let mut decrypted = Vec::new();
        for ((b, age), res) in ages.into_iter().zip(opened) {
            match res {
                Ok((sealed, size, sha, age_sha)) => {
                    let forbidden = forbidden_of(b);
                    let held_other =
                        (b.sha256.is_some() || !forbidden.is_empty()) && b.sha256 != Some(sha);
                    if held_other {
                        let why = format!(
                            "refused: the server offered a delivery (age file) for {}/{}, \
                             which this device already held with other content; the blob \
                             stays as it was",
                            b.ns, b.id
                        );
                        let e = self.refuse(crate::events::AlarmKind::Rollback, b, why);
                        let _ = self
                            .settle(b, Transition::DownloadInvalid, &e.to_string())
                            .await;
                        stats.failed += 1;
                        continue;
                    }
                    decrypted.push((b, sealed, size, sha, age.len() as u64, age_sha));
                }
                Err(IncomingError::Invalid(why)) => {
                    // Damaged, cut short, or encrypted to someone else: never handed out,
                    // retried like any bad download (docs/incoming.md, step 3).
                    let inv = InvalidBlob::Age(format!("{}/{}: {why}", b.ns, b.id));
                    warn!(ns = %b.ns, id = %b.id, check = inv.check(), "delivery failed to decrypt");
                    if !self.shared.download_invalid(&b.ns, &b.id, &inv) {
                        let msg = DownloadError::Invalid(inv).to_string();
                        self.record_failure(b, Direction::Download, msg, None, true, stats)
                            .await;
                    }
                }
                Err(IncomingError::Io(e)) => {
                    let msg = format!("local i/o: {e}");
                    self.record_failure(b, Direction::Download, msg, None, false, stats)
                        .await;
                }
            }
        }
        // The per-blob locks keep an on-demand fetch of the same blob out; taken in id order.
        let mut locked: Vec<&BlobInfo> = decrypted
            .iter()
            .map(|d| d.0)
            .chain(copies.iter().map(|c| c.0))
            .collect();
        locked.sort_by(|x, y| x.id.cmp(&y.id));
        let mut guards = Vec::with_capacity(locked.len());
        let mut moved: std::collections::HashSet<BlobId> = std::collections::HashSet::new();
        for b in locked {
            guards.push(self.shared.blob_lock(&b.ns, &b.id).lock_owned().await);
            // Under the lock: a row another path took meanwhile (an on-demand get) keeps the
            // payload that path installed (ours would carry another salt).
            match self.shared.store.get(&b.ns, &b.id).await {
                Ok(Some(cur)) if cur.status == Status::PendingDownload => {}
                _ => {
                    moved.insert(b.id.clone());
                }
            }
        }
        decrypted.retain(|d| !moved.contains(&d.0.id));
        copies.retain(|c| !moved.contains(&c.0.id));
        // Installed together: one write pass, the data and the links made durable as a group
        // (the sync group), before any row moves.
        let mut files = Vec::with_capacity(decrypted.len() + copies.len());
        for (b, sealed, ..) in &mut decrypted {
            files.push((
                self.shared.data.payload_path(&b.ns, &b.id),
                std::mem::take(sealed),
            ));
        }
        for (b, stored, ..) in &mut copies {
            files.push((
                self.shared.data.payload_path(&b.ns, &b.id),
                std::mem::take(stored),
            ));
        }
        let mut installed = self.install_many(files).await.into_iter();
        let now = self.clock.now();
        let mut adopt = Vec::new();
        let mut sizes: Vec<(&BlobInfo, u64)> = Vec::new();
        for (b, _, size, sha, age_len, age_sha) in decrypted {
            match installed.next() {
                Some(Ok(())) => {
                    let u = RowUpdate {
                        size: Some(size),
                        sha256: Some(sha),
                        remote_size: Some(age_len),
                        now: Some(now),
                        ..Default::default()
                    };
                    adopt.push((b.id.clone(), u, age_sha));
                    sizes.push((b, age_len));
                }
                Some(Err(e)) => {
                    let msg = format!("local i/o: {e}");
                    self.record_failure(b, Direction::Download, msg, None, false, stats)
                        .await
                }
                None => {}
            }
        }
        let mut ok = Vec::new();
        for (b, _, size, sha, salt) in copies {
            match installed.next() {
                Some(Ok(())) => {
                    let stored = b.remote_size.unwrap_or(0);
                    ok.push((
                        b.id.clone(),
                        Transition::DownloadSucceeded,
                        RowUpdate {
                            size: Some(size),
                            sha256: Some(sha),
                            salt: Some(salt),
                            now: Some(now),
                            ..Default::default()
                        },
                    ));
                    sizes.push((b, stored));
                }
                Some(Err(e)) => {
                    let msg = format!("local i/o: {e}");
                    self.record_failure(b, Direction::Download, msg, None, false, stats)
                        .await
                }
                None => {}
            }
        }
        if self.shared.crash_here("download.after_install") {
            return;
        }
        let adopted = !adopt.is_empty();
        let mut changes = Vec::new();
        if adopted {
            match self.shared.store.incoming_decrypted_many(&ns, adopt).await {
                Ok(ch) => {
                    for c in &ch {
                        info!(ns = %c.ns, id = %c.id, "incoming delivery decrypted; adopting it on the server");
                    }
                    changes.extend(ch);
                }
                Err(e) => error!(error = %e, "cannot record a batch of decrypted deliveries"),
            }
        }
        if !ok.is_empty() {
            match self.shared.store.transition_many(&ns, ok).await {
                Ok(ch) => changes.extend(ch),
                Err(e) => error!(error = %e, "cannot record a batch download"),
            }
        }
        drop(guards);
        for ch in changes {
            if let Some((b, stored)) = sizes.iter().find(|(b, _)| b.id == ch.id) {
                stats.downloaded += 1;
                stats.bytes_down += stored;
                self.finished(b, Direction::Download, *stored);
            }
        }
        if adopted {
            self.shared.kick.notify_one();
        }
        let done: std::collections::HashSet<&BlobId> = sizes.iter().map(|(b, _)| &b.id).collect();
        if let Some(why) = &broken {
            for b in &blobs {
                if !done.contains(&b.id) && !missing.contains(&b.id) {
                    let msg = format!("batch download cut short: {why}");
                    self.record_failure(b, Direction::Download, msg, None, false, stats)
                        .await;
                }
            }
        }
    }

    /// A lost race whose winner's copy we do not take: ours is kept (`FAILED_UPLOAD` with
    /// the reason), as the one-blob path does.
    async fn lost_contest(&self, b: &BlobInfo, why: String, stats: &mut TransferStats) {
        warn!(ns = %b.ns, id = %b.id, %why, "kept this device's copy");
        if let Err(e) = self.settle(b, Transition::ContestLost, &why).await {
            warn!(ns = %b.ns, id = %b.id, error = %e, "cannot record a lost contest");
        }
        stats.failed += 1;
    }

    /// Adopts many decrypted deliveries of one namespace: their salts recorded in one
    /// transaction before any PUT (a restart re-runs an adoption with them), up to
    /// [`ADOPT_IN_FLIGHT`] `replace_external` PUTs in flight, each answer judged as
    /// [`Engine::adopt_one`] judges it, and the adoptions that ended recorded in one
    /// transaction. A member that is not a plain case (no adoption waiting, a payload that
    /// needs sealing or a fresh salt, damage) takes the one-blob path.
    pub(in crate::engine) async fn adopt_batch(
        self: &Arc<Self>,
        blobs: Vec<BlobInfo>,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let ns = blobs[0].ns.clone();
        let ids: Vec<BlobId> = blobs.iter().map(|b| b.id.clone()).collect();
        let waiting = match self.shared.store.adoptions(&ns, ids.clone()).await {
            Ok(w) => w,
            Err(e) => {
                error!(error = %e, "cannot read the adoption state; batch left queued");
                return;
            }
        };
        // No adoption waiting (an external blob put up again after the server lost it):
        // the one-blob path, which takes its own lock.
        let (mut members, plain): (Vec<BlobInfo>, Vec<BlobInfo>) =
            blobs.into_iter().partition(|b| waiting.contains_key(&b.id));
        for b in plain {
            self.upload_one(b, cancel, stats).await;
        }
        members.sort_by(|x, y| x.id.cmp(&y.id));
        let mut guards = Vec::with_capacity(members.len());
        for b in &members {
            guards.push(self.shared.blob_lock(&b.ns, &b.id).lock_owned().await);
        }
        // Under the locks: the rows as they are now (one store trip).
        let ids: Vec<BlobId> = members.iter().map(|b| b.id.clone()).collect();
        let current: Vec<BlobInfo> = match self.shared.store.rows_for(&ns, ids).await {
            Ok(rows) => rows
                .into_iter()
                .filter(|cur| cur.status == Status::PendingUpload)
                .collect(),
            Err(e) => {
                error!(error = %e, "cannot read a batch's rows; left queued");
                return;
            }
        };
        let Some((read, seen)) = self.read_batch_payloads(&ns, &current).await else {
            return;
        };
        // (blob, header, stored bytes, age sha256)
        let mut ready: Vec<(BlobInfo, Header, Bytes, [u8; 32])> = Vec::new();
        let mut fresh = Vec::new();
        let mut slow = Vec::new();
        for (b, r) in current.into_iter().zip(read) {
            let age_sha = waiting[&b.id];
            let size = b.size.unwrap_or(0);
            let parsed = match &r {
                Ok(bytes) => match Header::parse(bytes) {
                    Ok(Some((h, _)))
                        if !crate::store::sealed::is_plain_len(bytes.len() as u64, size) =>
                    {
                        Some(h)
                    }
                    _ => None,
                },
                Err(_) => None,
            };
            let fits = |h: &Header, len: usize| {
                h.namespace == b.ns
                    && h.id == b.id
                    && h.plain_size == size
                    && h.stored_size() == len as u64
                    && b.upload_salt.is_none_or(|s| s == h.salt)
                    && (b.upload_salt.is_some()
                        || !seen.get(&b.id).is_some_and(|s| s.contains(&h.salt)))
            };
            match (parsed, r) {
                (Some(h), Ok(bytes)) if fits(&h, bytes.len()) => {
                    if b.upload_salt.is_none() {
                        fresh.push((b.id.clone(), h.salt, h.stored_size()));
                    }
                    ready.push((b, h, Bytes::from(bytes), age_sha));
                }
                // Missing, damaged, plaintext of an earlier release, a salt held before:
                // the one-blob path says what to do (it checks and reports each case).
                _ => slow.push((b, age_sha)),
            }
        }
        for (b, age_sha) in slow {
            self.adopt_one(b, age_sha, cancel, stats).await;
        }
        if !fresh.is_empty()
            && let Err(e) = self.shared.store.set_upload_salts(&ns, fresh).await
        {
            for (b, ..) in &ready {
                self.record_failure(b, Direction::Upload, e.to_string(), None, false, stats)
                    .await;
            }
            return;
        }
        if ready.is_empty() || self.shared.crash_here("incoming.before_adopt") {
            return;
        }
        let total: u64 = ready.iter().map(|(_, h, ..)| h.stored_size()).sum();
        let progress = Progress::start(
            &self.shared,
            &ready[0].0,
            Direction::Upload,
            total,
            ready.len(),
        );
        let progress = Arc::new(std::sync::Mutex::new(progress));
        let puts = futures_util::stream::iter(ready.into_iter().map(|(b, h, bytes, age_sha)| {
            let progress = progress.clone();
            async move {
                // Never closed: `acquire` cannot fail.
                let _slot = ADOPT_SLOTS.acquire().await.ok();
                let len = bytes.len() as u64;
                let shared = self.shared.clone();
                let body: ByteStream = Box::pin(futures_util::stream::once(async move {
                    shared.up.acquire(bytes.len()).await;
                    progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(bytes.len() as u64);
                    Ok(bytes)
                }));
                let res = self
                    .remote
                    .replace_external(&b.ns, &b.id, len, body, &age_sha)
                    .await;
                let ours = self.adoption_is_ours(&b, &h.salt, &res).await;
                (b, h, res, ours)
            }
        }))
        .buffer_unordered(ADOPT_IN_FLIGHT)
        .collect::<Vec<_>>();
        let answers = tokio::select! {
            r = puts => r,
            _ = cancel.cancelled() => return,
        };
        if self.shared.crash_here("incoming.after_adopt") {
            return;
        }
        let mut ended = Vec::new();
        let mut sizes = Vec::new();
        for (b, h, res, ours) in answers {
            let stored = h.stored_size();
            if let Some(t) = self.judge_adoption(&b, res, ours, stats).await {
                let remote_size = (t == Transition::UploadSucceeded).then_some(stored);
                ended.push((b.id.clone(), t, remote_size));
                sizes.push((b, stored));
            }
        }
        if ended.is_empty() {
            return;
        }
        let changes = match self
            .shared
            .store
            .incoming_adoption_done_many(&ns, ended, self.clock.now())
            .await
        {
            Ok(ch) => ch,
            Err(e) => {
                error!(error = %e, "cannot record a batch of adoptions; they are re-run");
                return;
            }
        };
        drop(guards);
        let mut contested = 0;
        for ch in &changes {
            let Some((b, stored)) = sizes.iter().find(|(b, _)| b.id == ch.id) else {
                continue;
            };
            if ch.to == Some(Status::Synced) {
                info!(ns = %b.ns, id = %b.id, "incoming delivery adopted: the server holds our format-v1 copy");
                stats.uploaded += 1;
                stats.bytes_up += stored;
                self.finished(b, Direction::Upload, *stored);
            } else {
                contested += 1;
            }
        }
        debug!(%ns, adopted = changes.len() - contested, contested, "incoming deliveries adopted");
        if contested > 0 {
            self.shared.kick.notify_one();
        }
    }
}

/// Blocking: decrypts an age file held in memory with the incoming identity (the whole file
/// authenticated: every chunk and the end) and seals the plaintext into a format-v1 payload
/// under a fresh salt, in memory. The caller discards everything on an error.
fn open_delivery(
    identity: &IncomingIdentity,
    key: &blobsync_shared::StorageKey,
    ns: &blobsync_shared::Namespace,
    id: BlobId,
    age: &[u8],
    seg: u8,
) -> Opened {
    let mut age_sha = [0u8; 32];
    age_sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, age).as_ref());
    let mut plain = Vec::with_capacity(age.len());
    let size = identity.decrypt(age, &mut plain)?;
    if size != plain.len() as u64 {
        return Err(IncomingError::Io(std::io::Error::other(
            "the delivery's size does not match its plaintext",
        )));
    }
    let header = blobsync_shared::codec::Header::new(ns.clone(), id, size, seg)
        .map_err(|e| IncomingError::Io(std::io::Error::other(e)))?;
    let mut sealer = crate::store::sealed::Sealer::new(key, header);
    let mut sealed = Vec::with_capacity(plain.len() + MAX_HEADER_LEN + 64);
    sealer.push(&plain, &mut sealed)?;
    let sha = sealer.finish(&mut sealed)?;
    Ok((sealed, size, sha, age_sha))
}

/// Hashes what passes through to the payload file.
/// Hashes what passes through to `inner`.
struct HashingWriter<W: Write> {
    inner: W,
    ctx: ring::digest::Context,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Seals what is written into a payload file.
struct SealInto<'a> {
    sealer: &'a mut crate::store::sealed::Sealer,
    out: &'a mut std::fs::File,
    buf: Vec<u8>,
}

impl Write for SealInto<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.sealer.push(b, &mut self.buf)?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
