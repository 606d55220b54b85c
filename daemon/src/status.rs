//! Local sync statuses, priorities and the one state machine that moves a blob between them.
//!
//! ```text
//!  put ──────────────► PENDING_UPLOAD ──upload ok / 409 same salt──► SYNCED
//!  put --local-only ─► LOCAL_ONLY           │ 409 other salt, 413, 507       │ ▲
//!                                           ▼                                │ │ download ok
//!                                     FAILED_UPLOAD ──retry──► PENDING_UPLOAD│ │
//!  listed, eager ────► PENDING_DOWNLOAD ◄──damage found / replaced remotely──┘ │
//!  listed, lazy ─────► REMOTE_ONLY ──wanted──► PENDING_DOWNLOAD ──────────────┘
//!                      (REMOTE_ONLY ──fetched on demand──► SYNCED)
//!                      PENDING_DOWNLOAD ──invalid max_invalid_retries times──► FAILED_DOWNLOAD
//!                      PENDING_DOWNLOAD ──not blobsync's format──► REMOTE_ONLY (kept so)
//!                      FAILED_DOWNLOAD ──retry──► PENDING_DOWNLOAD
//!  deleted locally: SYNCED, PENDING_DOWNLOAD, FAILED_DOWNLOAD, REMOTE_ONLY and a
//!                   PENDING_UPLOAD that may have reached the server ──► PENDING_DELETE
//!                   LOCAL_ONLY, FAILED_UPLOAD, a never-tried PENDING_UPLOAD ──► (gone)
//!  PENDING_DELETE ──server confirms (or 404)──► (gone)
//!  PENDING_UPLOAD ──proven tombstone of our own lost-answer upload──► (gone)
//!  deleted remotely: SYNCED, PENDING_DOWNLOAD, FAILED_DOWNLOAD, REMOTE_ONLY,
//!                    PENDING_DELETE ──► (gone)     (PENDING_UPLOAD, LOCAL_ONLY and
//!                    FAILED_UPLOAD are never touched by a remote deletion; a SYNCED copy
//!                    only by a tombstone whose delete proof verifies)
//!  lost remotely (absent, or an unproven tombstone): SYNCED ──► PENDING_UPLOAD
//!  PENDING_UPLOAD ──409, another copy──► PENDING_DOWNLOAD (fetched and compared: the same
//!                   content is SYNCED; other content ──► FAILED_UPLOAD, ours kept)
//! ```
//!
//! The store writes a status only through [`Status::apply`], so an illegal move (say,
//! uploading a blob that is `SYNCED`) is an error, not a silent corruption. This module is
//! pure: no I/O.

use std::fmt;
use std::str::FromStr;

/// A blob's local sync status (docs/sync.md; the state machine is drawn above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Here and on the server.
    Synced,
    /// Put locally, not uploaded yet.
    PendingUpload,
    /// On the server, not downloaded yet.
    PendingDownload,
    /// Download failed verification `max_invalid_retries` times; waits for `retry`.
    FailedDownload,
    /// Upload refused for good (id conflict, too large, over quota); waits for `retry`.
    FailedUpload,
    /// Deleted locally; the server has not confirmed yet.
    PendingDelete,
    /// Put with `local_only`: never uploaded.
    LocalOnly,
    /// On the server, not wanted locally (lazy namespace) until a get asks.
    RemoteOnly,
}

impl Status {
    /// Every status, in the order status tables show them.
    pub const ALL: [Status; 8] = [
        Status::Synced,
        Status::PendingUpload,
        Status::PendingDownload,
        Status::FailedDownload,
        Status::FailedUpload,
        Status::PendingDelete,
        Status::LocalOnly,
        Status::RemoteOnly,
    ];

    /// The name used in the API and the CLI (`"SYNCED"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Synced => "SYNCED",
            Status::PendingUpload => "PENDING_UPLOAD",
            Status::PendingDownload => "PENDING_DOWNLOAD",
            Status::FailedDownload => "FAILED_DOWNLOAD",
            Status::FailedUpload => "FAILED_UPLOAD",
            Status::PendingDelete => "PENDING_DELETE",
            Status::LocalOnly => "LOCAL_ONLY",
            Status::RemoteOnly => "REMOTE_ONLY",
        }
    }

    /// The SQL column value (stable: stored on disk).
    pub fn code(self) -> i64 {
        match self {
            Status::Synced => 1,
            Status::PendingUpload => 2,
            Status::PendingDownload => 3,
            Status::FailedDownload => 4,
            Status::FailedUpload => 5,
            Status::PendingDelete => 6,
            Status::LocalOnly => 7,
            Status::RemoteOnly => 8,
        }
    }

    /// The inverse of [`Status::code`].
    pub fn from_code(code: i64) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Whether a local payload file exists in this status.
    pub fn has_payload(self) -> bool {
        matches!(
            self,
            Status::Synced | Status::PendingUpload | Status::FailedUpload | Status::LocalOnly
        )
    }

    /// Whether the engine works on the blob on its own (a transfer or a remote delete).
    pub fn is_queued(self) -> bool {
        matches!(
            self,
            Status::PendingUpload | Status::PendingDownload | Status::PendingDelete
        )
    }

    /// The status after `t`, or an error naming the illegal move.
    pub fn apply(self, t: Transition) -> Result<Next, IllegalTransition> {
        use Status::*;
        use Transition as T;
        let next = match (self, t) {
            (PendingUpload, T::UploadSucceeded) => Next::Is(Synced),
            (PendingUpload, T::UploadRejected) => Next::Is(FailedUpload),
            (PendingDownload | RemoteOnly, T::DownloadSucceeded) => Next::Is(Synced),
            (PendingDownload, T::DownloadInvalid) => Next::Is(FailedDownload),
            (FailedDownload, T::Requeue) => Next::Is(PendingDownload),
            (FailedUpload, T::Requeue) => Next::Is(PendingUpload),
            (Synced | PendingDownload | FailedDownload | RemoteOnly, T::DeletedLocally { .. }) => {
                Next::Is(PendingDelete)
            }
            (
                PendingUpload,
                T::DeletedLocally {
                    maybe_uploaded: true,
                },
            ) => Next::Is(PendingDelete),
            (
                PendingUpload,
                T::DeletedLocally {
                    maybe_uploaded: false,
                },
            )
            | (LocalOnly | FailedUpload, T::DeletedLocally { .. }) => Next::Gone,
            (PendingDelete, T::DeleteConfirmed) => Next::Gone,
            (PendingUpload, T::UploadDeletedRemotely) => Next::Gone,
            (
                Synced | PendingDownload | FailedDownload | RemoteOnly | PendingDelete,
                T::DeletedRemotely,
            ) => Next::Gone,
            (Synced, T::DamageFound | T::ReplacedRemotely) => Next::Is(PendingDownload),
            (Synced | PendingUpload, T::LostRemotely) => Next::Is(PendingUpload),
            (PendingUpload, T::Contested) => Next::Is(PendingDownload),
            (PendingDownload, T::ContestLost) => Next::Is(FailedUpload),
            (PendingDownload, T::ForeignFormat) => Next::Is(RemoteOnly),
            (RemoteOnly, T::Wanted) => Next::Is(PendingDownload),
            (PendingDownload | RemoteOnly, T::Decrypted) => Next::Is(PendingUpload),
            (from, transition) => return Err(IllegalTransition { from, transition }),
        };
        Ok(next)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    /// Accepts the API names, case-insensitively, with `-` or `_`.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_uppercase().replace('-', "_");
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}; use one of {}",
                    Status::ALL.map(Status::as_str).join(", ")
                )
            })
    }
}

/// What happened to a blob; [`Status::apply`] says where that leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The server stored our upload (or already had it with our salt).
    UploadSucceeded,
    /// The server refused the upload for good (409 with another salt, 413, 507).
    UploadRejected,
    /// The blob was downloaded and verified.
    DownloadSucceeded,
    /// Verification failed for the last allowed time.
    DownloadInvalid,
    /// `retry` on a failed blob.
    Requeue,
    /// The user deleted the blob; `maybe_uploaded` when an upload was ever attempted.
    DeletedLocally {
        /// An upload was attempted, so the server may hold the blob.
        maybe_uploaded: bool,
    },
    /// The server deleted it (or 404 on our delete).
    DeleteConfirmed,
    /// A listing says the server no longer has it.
    DeletedRemotely,
    /// A tombstone of exactly our upload (same stored size, after an attempt whose answer
    /// was lost): it reached the server and was deleted elsewhere. Never upload it again.
    UploadDeletedRemotely,
    /// Verify found the local copy damaged.
    DamageFound,
    /// The server has a newer blob under the same id (deleted and put again elsewhere).
    ReplacedRemotely,
    /// A lazy blob is wanted locally.
    Wanted,
    /// The server lost a blob we hold (absent from a full listing with no tombstone, or a
    /// tombstone without a valid delete proof): upload it again. Absence is never deletion.
    LostRemotely,
    /// The upload met a 409 with another copy under the id (another device put the same
    /// blob first, e.g. both re-uploading what the server lost): fetch that copy and compare.
    /// Our payload stays until theirs is verified to hold the same content.
    Contested,
    /// The copy on the server holds other content than ours: keep ours, as a conflict.
    ContestLost,
    /// The server's copy is not in blobsync's format (e.g. a Soledad client's): it stays
    /// `REMOTE_ONLY`, never retried.
    ForeignFormat,
    /// An incoming delivery (an age file) was decrypted into a local payload: it goes up
    /// again as format v1, adopting the delivery (`engine::incoming`).
    Decrypted,
}

/// Where a transition leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A new status.
    Is(Status),
    /// The row is removed.
    Gone,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal status transition: {transition:?} from {from}")]
pub struct IllegalTransition {
    /// The status the blob was in.
    pub from: Status,
    /// What was attempted.
    pub transition: Transition,
}

/// Queue priority; higher goes first in every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Background.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Ahead of the default.
    High,
    /// First.
    Urgent,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Medium,
        Priority::High,
        Priority::Urgent,
    ];

    /// The API name (`"low"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The SQL value (ordered: bigger goes first).
    pub fn code(self) -> i64 {
        match self {
            Priority::Low => 0,
            Priority::Medium => 1,
            Priority::High => 2,
            Priority::Urgent => 3,
        }
    }

    /// The inverse of [`Priority::code`].
    pub fn from_code(code: i64) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.code() == code)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == norm)
            .ok_or_else(|| format!("unknown priority {s:?}; use low, medium, high or urgent"))
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;
    use super::*;

    #[test]
    fn the_happy_paths_of_the_diagram() {
        assert_eq!(
            PendingUpload.apply(Transition::UploadSucceeded),
            Ok(Next::Is(Synced))
        );
        assert_eq!(
            PendingDownload.apply(Transition::DownloadSucceeded),
            Ok(Next::Is(Synced))
        );
        assert_eq!(
            RemoteOnly.apply(Transition::Wanted),
            Ok(Next::Is(PendingDownload))
        );
        assert_eq!(
            PendingDownload.apply(Transition::DownloadInvalid),
            Ok(Next::Is(FailedDownload))
        );
        assert_eq!(
            FailedDownload.apply(Transition::Requeue),
            Ok(Next::Is(PendingDownload))
        );
        assert_eq!(
            Synced.apply(Transition::DeletedLocally {
                maybe_uploaded: true
            }),
            Ok(Next::Is(PendingDelete))
        );
        assert_eq!(
            PendingDelete.apply(Transition::DeleteConfirmed),
            Ok(Next::Gone)
        );
    }

    #[test]
    fn remote_deletions_never_touch_local_work() {
        for s in [PendingUpload, LocalOnly, FailedUpload] {
            assert!(s.apply(Transition::DeletedRemotely).is_err(), "{s}");
        }
        for s in [
            Synced,
            PendingDownload,
            FailedDownload,
            RemoteOnly,
            PendingDelete,
        ] {
            assert_eq!(s.apply(Transition::DeletedRemotely), Ok(Next::Gone), "{s}");
        }
    }

    #[test]
    fn only_pending_upload_can_be_uploaded() {
        for s in Status::ALL {
            let ok = s.apply(Transition::UploadSucceeded).is_ok();
            assert_eq!(ok, s == PendingUpload, "{s}");
        }
    }

    #[test]
    fn local_delete_of_a_never_tried_upload_needs_no_server_call() {
        let t = |m| Transition::DeletedLocally { maybe_uploaded: m };
        assert_eq!(PendingUpload.apply(t(false)), Ok(Next::Gone));
        assert_eq!(PendingUpload.apply(t(true)), Ok(Next::Is(PendingDelete)));
        assert_eq!(LocalOnly.apply(t(false)), Ok(Next::Gone));
        assert!(PendingDelete.apply(t(true)).is_err());
    }

    #[test]
    fn names_and_codes_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert_eq!("pending-upload".parse::<Status>(), Ok(PendingUpload));
        for p in Priority::ALL {
            assert_eq!(Priority::from_code(p.code()), Some(p));
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
        }
        assert!(Priority::Urgent > Priority::Low);
    }
}
