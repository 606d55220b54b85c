//! Downloads: each segment verified as it arrives and kept as it came, into the partial
//! file; resumed by Range after a cut or a restart; installed once complete and past the
//! rollback check.

use std::convert::Infallible;
use std::sync::Arc;

use blobsync_shared::codec::{DecodeError, Decoder, Header, MAX_HEADER_LEN};
use blobsync_shared::{BlobId, InvalidBlob, Namespace};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::hashpipe::PlainHash;
use super::{DownloadError, Fetched, MAX_CUTS_WITHOUT_PROGRESS, Progress};
use crate::clock::Clock;
use crate::engine::{Engine, TransferStats};
use crate::events::Direction;
use crate::remote::{Remote, RemoteError};
use crate::spool::Spool;
use crate::status::{Status, Transition};
use crate::store::BlobInfo;
use crate::store::ops::RowUpdate;

impl<R: Remote, C: Clock> Engine<R, C> {
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
                    self.record_decrypted(&b, fetched, age_sha, stats).await
                }
                Ok(((size, sha, stored, salt), None)) => {
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

    /// Downloads into the partial file, verifying as it goes, resuming after cuts; then
    /// fsyncs and links it into place. Returns (plaintext size, sha256, stored size, header
    /// salt — none for an external blob).
    pub(in crate::engine) async fn fetch_to_payload(
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
    pub(in crate::engine) async fn open_partial(
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

    pub(in crate::engine) async fn fetch_inner(
        &self,
        b: &BlobInfo,
        allow_resume: bool,
        forbidden: &[[u8; 32]],
    ) -> Result<Fetched, DownloadError> {
        let partial = self.shared.data.partial(&b.ns, &b.id);
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let (file, mut decoder, _) = self.open_partial(b, allow_resume, &mut hasher).await?;
        let mut hash = PlainHash::new(hasher, b.remote_size.unwrap_or(0));
        // Written in big pieces, one in flight while the next is verified (not a pool hop per
        // HTTP chunk: 1 GB = ~65k chunks). What a crash loses from the buffer is only fetched
        // again: a restart resumes from the partial file's whole segments. Received bytes wait
        // in the spool until verified (the header as soon as it parsed: segment 0
        // authenticates it, and a resume checks it again), so the partial is always a prefix
        // of the blob.
        let mut file = Spool::new(file);
        let mut written = decoder.verified_stored_bytes();
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
                file.hold(&chunk);
                decoder
                    .feed_segments(&chunk, |seg| {
                        hash.take(seg);
                        Ok::<(), Infallible>(())
                    })
                    .map_err(|e| match e {
                        DecodeError::Invalid(i) => i,
                        DecodeError::Sink(never) => match never {},
                    })?;
                hash.pass_on().await?;
                let verified = decoder.verified_stored_bytes();
                if verified > written {
                    file.release((verified - written) as usize).await?;
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
                    file.discard_held();
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
        let sha = hash.finish().await?;
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
