//! The local store encrypted at rest ([docs/local-store.md](../../docs/local-store.md)): the
//! migration that seals, in place, the plaintext payloads a release before at-rest
//! encryption left (crash-safe, resumable, with progress in the log; an unconverted payload
//! stays readable meanwhile: a listed payload as long as its plaintext is plaintext,
//! `store::sealed::is_plain_len`), and the
//! re-seal of a payload under a fresh salt for a re-upload after the server lost a blob (a
//! salt is never used for two encodings).

use std::sync::Arc;
use std::time::Duration;

use blobsync_shared::codec::Header;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Engine;
use crate::clock::Clock;
use crate::remote::Remote;
use crate::status::{Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, payload, sealed};

/// Rows read per page by the migration.
const PAGE: usize = 100;
/// The migration logs its progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What sealing a plaintext payload did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sealed {
    /// Sealed in place now.
    Now,
    /// Nothing to do: sealed already (a crash came after the rename), or no file.
    Already,
    /// Its plaintext no longer matches the recorded SHA-256: left as it was.
    Damaged,
}

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Seals `b`'s payload in place if it still holds plaintext. The caller holds the blob's
    /// lock. The salt: the one recorded for an upload attempt of a blob not yet `SYNCED` (an
    /// earlier PUT may have reached the server, whose copy is then these very bytes), else a
    /// fresh one.
    pub(super) async fn seal_plain(&self, b: &BlobInfo) -> std::io::Result<Sealed> {
        let Some(size) = b.size else {
            return Ok(Sealed::Already);
        };
        let data = self.shared.data.clone();
        let key = self.shared.key.clone();
        let seg = self.shared.settings().segment_exp;
        let (ns, id, sha) = (b.ns.clone(), b.id.clone(), b.sha256);
        let salt = match b.status {
            Status::PendingUpload | Status::FailedUpload => b.upload_salt,
            _ => None,
        };
        tokio::task::spawn_blocking(move || {
            let dest = data.payload_path(&ns, &id);
            let len = match std::fs::metadata(&dest) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sealed::Already),
                Err(e) => return Err(e),
            };
            if !sealed::is_plain_len(len, size) {
                return Ok(Sealed::Already);
            }
            let mut header = Header::new(ns, id, size, seg).map_err(std::io::Error::other)?;
            if let Some(s) = salt {
                header.salt = s;
            }
            let r = payload::replace_atomically(&data, &dest, |f| {
                sealed::seal_legacy(&key, &dest, header, sha, f).map(|_| ())
            });
            match r {
                Ok(()) => Ok(Sealed::Now),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Sealed::Damaged),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Seals `b`'s payload again under a fresh salt (same plaintext, authenticated on the
    /// way) and returns the new header. The caller holds the blob's lock.
    pub(super) async fn reseal_fresh(&self, b: &BlobInfo) -> Result<Header, String> {
        let size = b.size.ok_or("no local size recorded")?;
        let seg = self.shared.settings().segment_exp;
        let header =
            Header::new(b.ns.clone(), b.id.clone(), size, seg).map_err(|e| e.to_string())?;
        let data = self.shared.data.clone();
        let key = self.shared.key.clone();
        let dest = data.payload_path(&b.ns, &b.id);
        let h = header.clone();
        tokio::task::spawn_blocking(move || {
            payload::replace_atomically(&data, &dest, |f| {
                sealed::reseal(&key, &dest, h, f)
                    .map(|_| ())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("re-sealing the local payload under a fresh salt: {e}"))?;
        Ok(header)
    }

    /// The migration: seals every payload still listed as plaintext, one at a time under its
    /// blob's lock, and records each in the store after its rename. Stopped by `cancel`, it
    /// resumes at the next start where it was.
    pub async fn migrate_at_rest(self: Arc<Self>, cancel: CancellationToken) {
        let total = match self.shared.store.plain_count().await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "at-rest migration: cannot read the store; retried at the next start");
                return;
            }
        };
        info!(
            total,
            "at-rest migration: sealing the plaintext payloads an earlier release left (blob format v1); they stay readable meanwhile"
        );
        let (mut done, mut damaged) = (0u64, 0u64);
        let mut after = None;
        let mut last_log = tokio::time::Instant::now();
        loop {
            let page = match self.shared.store.plain_page(after.clone(), PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "at-rest migration stopped: cannot read the store; it resumes at the next start");
                    return;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some((last.ns.clone(), last.id.clone()));
            for b in page {
                if cancel.is_cancelled() {
                    info!(
                        done,
                        total, "at-rest migration paused by shutdown; it resumes at the next start"
                    );
                    return;
                }
                let lock = self.shared.blob_lock(&b.ns, &b.id);
                let _g = lock.lock().await;
                let Ok(Some(cur)) = self.shared.store.get(&b.ns, &b.id).await else {
                    continue;
                };
                match self.seal_plain(&cur).await {
                    Ok(Sealed::Damaged) => {
                        damaged += 1;
                        self.plain_damaged(&cur).await;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(ns = %cur.ns, id = %cur.id, error = %e, "at-rest migration: cannot seal this payload now; retried at the next start");
                        continue;
                    }
                }
                if let Err(e) = self.shared.store.unmark_plain(&cur.ns, &cur.id).await {
                    warn!(error = %e, "at-rest migration: cannot record a sealed payload; checked again at the next start");
                }
                done += 1;
                if last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = tokio::time::Instant::now();
                    info!(done, total, "at-rest migration progress");
                }
            }
        }
        info!(done, damaged, total, "at-rest migration finished");
    }

    /// A plaintext payload whose bytes no longer match their recorded SHA-256 is never sealed
    /// as if it were the blob: a `SYNCED` one is fetched again from the server (as `verify`
    /// does); any other is left as it is, for `blobctl verify` to report.
    async fn plain_damaged(&self, b: &BlobInfo) {
        error!(ns = %b.ns, id = %b.id, status = %b.status, "at-rest migration: the plaintext payload does not match its recorded SHA-256 (damaged on disk); not sealed");
        if b.status != Status::Synced {
            return;
        }
        let u = RowUpdate {
            last_error: Some("local copy damaged (found by the at-rest migration)".into()),
            now: Some(self.clock.now()),
            ..Default::default()
        };
        if self
            .shared
            .store
            .transition(&b.ns, &b.id, Transition::DamageFound, u)
            .await
            .is_ok()
        {
            self.shared.remove_payload(&b.ns, &b.id).await;
            let _ = self.shared.store.unmark_plain(&b.ns, &b.id).await;
            self.shared.kick.notify_one();
        }
    }
}
