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
use std::time::{Duration, SystemTime};

use blobsync_shared::InvalidBlob;
use blobsync_shared::incoming::{AGE_MAGIC, IncomingError, IncomingIdentity, looks_like_age};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::transfer::{DownloadError, NotReady, Progress, file_stream};
use super::{Engine, TransferStats};
use crate::clock::Clock;
use crate::events::Direction;
use crate::remote::{Remote, RemoteError};
use crate::status::Transition;
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
        match res {
            Ok(_) => {
                self.adoption_done(&b, Transition::UploadSucceeded, stored, stats)
                    .await
            }
            // Not that file any more, or no answer: our salt in the server's copy means our
            // adoption got through (a restart after the PUT, a lost answer).
            Err(e @ (RemoteError::NotTheDelivery(_) | RemoteError::Transport(_)))
                if matches!(self.is_our_copy(&b, &salt).await, Ok(true)) =>
            {
                debug!(error = %e, "the server holds our adoption already");
                self.adoption_done(&b, Transition::UploadSucceeded, stored, stats)
                    .await
            }
            Err(RemoteError::NotTheDelivery(why)) => {
                info!(ns = %b.ns, id = %b.id, %why, "another device adopted this delivery first; taking its copy");
                self.adoption_done(&b, Transition::Contested, stored, stats)
                    .await
            }
            Err(RemoteError::NotFound) => {
                // The delivery is gone from the server (deleted, or lost): keep ours and put
                // it up as a normal blob; a proven tombstone in the listing decides otherwise.
                warn!(ns = %b.ns, id = %b.id, "the delivery is no longer on the server; uploading our copy as a normal blob");
                if let Err(e) = self.shared.store.drop_adoption(&b.ns, &b.id).await {
                    warn!(error = %e, "cannot forget the adoption");
                }
                self.record_failure(
                    &b,
                    Direction::Upload,
                    "adoption: the delivery is gone from the server".into(),
                    None,
                    false,
                    stats,
                )
                .await
            }
            Err(e @ (RemoteError::TooLarge | RemoteError::QuotaExceeded)) => {
                self.reject_upload(&b, format!("adoption: {e}"), stats)
                    .await
            }
            Err(e) => {
                let ra = e.retry_after();
                self.record_failure(
                    &b,
                    Direction::Upload,
                    format!("adoption: {e}"),
                    ra,
                    false,
                    stats,
                )
                .await
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
