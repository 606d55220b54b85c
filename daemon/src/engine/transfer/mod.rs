//! The transfers, one module a direction: `upload` (the payload file, which is the stored blob,
//! sent as it is; remote deletes), `download` (remote body -> Decoder, verified segments kept
//! as they came -> partial file -> fsync -> link into place, resumed with a Range request from
//! the last verified segment after a cut), `batch` (the `/stream` batches for many small
//! blobs), `progress` (what `status` and Watch show), `hashpipe` (a big download's plaintext
//! hash, on a thread of its own), `early` (a big put uploaded while it is written). This module holds what they share: the
//! errors, the failure schedule, and the checks a download must pass (rollback, external
//! blobs, foreign formats).

use std::time::Duration;

use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::{BlobId, InvalidBlob};
use tracing::{error, info, warn};

mod batch;
mod download;
pub(crate) mod early;
mod hashpipe;
mod progress;
mod upload;

pub(super) use batch::open_small;
pub(crate) use progress::Progress;
pub(super) use upload::file_stream;

use super::{Engine, TransferStats};
use crate::clock::Clock;
use crate::events::{Direction, EventKind};
use crate::remote::{Remote, RemoteError};
use crate::retry::next_wait;
use crate::status::{Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, RetryPlan};

/// Chunks of a payload file read ahead of the network per upload.
pub(super) const READ_AHEAD: usize = 4;
/// Bytes per read of a payload file being uploaded.
pub(super) const UPLOAD_CHUNK: usize = 1 << 20;

/// Cuts without progress before a download attempt counts as failed.
pub(super) const MAX_CUTS_WITHOUT_PROGRESS: u32 = 3;
/// Progress events per transfer at most every this often.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Blocking: reads `len` bytes of `file` front to back in [`UPLOAD_CHUNK`]s (buffers recycled
/// once sent), each once `ready(its end)` allows, handing each chunk, or the error that ends
/// the read, to `send` until it returns `false`. `true` when all `len` bytes went.
pub(super) fn read_chunks(
    file: &std::fs::File,
    len: u64,
    mut ready: impl FnMut(u64) -> std::io::Result<()>,
    mut send: impl FnMut(std::io::Result<bytes::Bytes>) -> bool,
) -> bool {
    use std::os::unix::fs::FileExt;
    let pool = blobsync_shared::chunks::ChunkPool::default();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(UPLOAD_CHUNK as u64);
        let mut buf = pool.take(n as usize);
        if let Err(e) = ready(off + n).and_then(|()| file.read_exact_at(&mut buf, off)) {
            send(Err(e));
            return false;
        }
        off += n;
        if !send(Ok(pool.bytes(buf))) {
            return false;
        }
    }
    true
}

/// The reason kept on a blob that is not in blobsync's format (`Engine::foreign_format`).
pub(crate) const FOREIGN_FORMAT: &str =
    "foreign format: not a blobsync blob (e.g. written by a Soledad client); left on the server";

/// A finished download: (plaintext size, sha256, stored size, header salt).
pub(super) type Fetched = (u64, [u8; 32], u64, Option<[u8; 32]>);

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

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Records a failed attempt on the schedule and publishes it.
    pub(in crate::engine) async fn record_failure(
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

    pub(in crate::engine) fn finished(&self, b: &BlobInfo, dir: Direction, bytes: u64) {
        self.shared.events.publish(EventKind::TransferFinished {
            ns: b.ns.clone(),
            id: b.id.clone(),
            dir,
            bytes,
        });
    }

    /// Raises `kind` about `b` and returns the refusal: its bytes are never handed out, and
    /// retrying cannot change that.
    pub(in crate::engine) fn refuse(
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
    pub(in crate::engine) async fn may_download(
        &self,
        b: &BlobInfo,
    ) -> Result<Vec<[u8; 32]>, DownloadError> {
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
    pub(in crate::engine) async fn foreign_format(&self, b: &BlobInfo) {
        info!(ns = %b.ns, id = %b.id, "not a blobsync blob (foreign format): left on the server");
        if let Err(e) = self
            .settle(b, Transition::ForeignFormat, FOREIGN_FORMAT)
            .await
        {
            warn!(ns = %b.ns, id = %b.id, error = %e, "cannot record a foreign-format blob");
        }
    }

    /// Moves `b` by `t` for a reason no retry can change, keeping `why` on the row.
    pub(in crate::engine) async fn settle(
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
    pub(in crate::engine) fn check_rollback(
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
}
