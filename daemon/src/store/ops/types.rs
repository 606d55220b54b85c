//! The rows and requests the store's queries take and give.

use std::collections::BTreeMap;
use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};

use crate::status::{Priority, Status};

/// One blob as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Namespace.
    pub ns: Namespace,
    /// Id.
    pub id: BlobId,
    /// Plaintext size, once known (always for local blobs).
    pub size: Option<u64>,
    /// Stored (encrypted) size on the server, once known.
    pub remote_size: Option<u64>,
    /// SHA-256 of the plaintext, once local.
    pub sha256: Option<[u8; 32]>,
    /// Sync status.
    pub status: Status,
    /// Queue priority.
    pub priority: Priority,
    /// Failed attempts since the last status change.
    pub attempts: u32,
    /// When the next attempt is due (`None`: not scheduled / due now).
    pub next_attempt: Option<SystemTime>,
    /// The last failure, kept for `ls` and `status`.
    pub last_error: Option<String>,
    /// Downloads that failed verification.
    pub invalid_attempts: u32,
    /// Header salt of the version this device holds: of our upload (set before the first
    /// PUT), or of the copy it downloaded. Delete proofs are made and checked against it.
    pub upload_salt: Option<[u8; 32]>,
    /// Delivered by a trusted app through `/incoming`: kept as-is, never decrypted.
    pub external: bool,
    /// When the row was created.
    pub created: SystemTime,
    /// When the row last changed.
    pub updated: SystemTime,
    /// The server's sequence number of the copy we know.
    pub remote_seq: Option<u64>,
    /// Queued for upload again because the server lost it (`Transition::LostRemotely`), or
    /// contested (`Transition::Contested`): a download then must hold the content we have.
    pub reupload: bool,
}

impl BlobInfo {
    /// The size to show: plaintext when known, else the stored size.
    pub fn display_size(&self) -> u64 {
        self.size.or(self.remote_size).unwrap_or(0)
    }
}

/// A blob put locally.
#[derive(Debug, Clone)]
pub struct NewLocalBlob {
    /// Namespace.
    pub ns: Namespace,
    /// Id.
    pub id: BlobId,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext SHA-256.
    pub sha256: [u8; 32],
    /// Priority.
    pub priority: Priority,
    /// `LOCAL_ONLY` instead of `PENDING_UPLOAD`.
    pub local_only: bool,
    /// Now.
    pub created: SystemTime,
}

/// A page request for [`list`](super::list).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this namespace.
    pub ns: Option<Namespace>,
    /// Only this status.
    pub status: Option<Status>,
    /// Start after this key (the last of the previous page).
    pub after: Option<(Namespace, BlobId)>,
    /// Page size (0 means 1000).
    pub limit: usize,
}

/// Which queued blobs [`due`](super::due) returns.
#[derive(Debug, Clone)]
pub struct DueFilter {
    /// Only those due at or before this time.
    pub now: SystemTime,
    /// At most this many.
    pub limit: usize,
}

/// Counts per status, overall and per namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Blobs per status.
    pub by_status: BTreeMap<Status, u64>,
    /// Blobs per namespace and status.
    pub by_namespace: BTreeMap<Namespace, BTreeMap<Status, u64>>,
    /// Bytes per status (plaintext size when known, else stored size).
    pub bytes_by_status: BTreeMap<Status, u64>,
    /// Bytes per namespace and status, measured as `bytes_by_status`.
    pub bytes_by_namespace: BTreeMap<Namespace, BTreeMap<Status, u64>>,
}

/// A committed status change (`from`/`to` `None`: row created/removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Namespace.
    pub ns: Namespace,
    /// Id.
    pub id: BlobId,
    /// Before.
    pub from: Option<Status>,
    /// After.
    pub to: Option<Status>,
}

/// Extra column updates that go with a transition.
#[derive(Debug, Clone, Default)]
pub struct RowUpdate {
    /// Plaintext size (after a download).
    pub size: Option<u64>,
    /// Plaintext hash (after a download).
    pub sha256: Option<[u8; 32]>,
    /// Stored size.
    pub remote_size: Option<u64>,
    /// Error to keep (failed statuses); `None` clears it.
    pub last_error: Option<String>,
    /// Header salt of the version now held (after a download); `None` keeps the recorded one.
    pub salt: Option<[u8; 32]>,
    /// Now.
    pub now: Option<SystemTime>,
}

/// A failed attempt: how to record it.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    /// What went wrong.
    pub error: String,
    /// When to try again.
    pub next_attempt: SystemTime,
    /// The download failed verification (counts toward `max_invalid`).
    pub invalid: bool,
    /// Verification failures allowed before `FAILED_DOWNLOAD`.
    pub max_invalid: u32,
    /// Now.
    pub now: SystemTime,
}

/// What a listing diff decided about one remote id (see `engine::plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteFact {
    /// A blob we did not know: insert it as `status` (PENDING_DOWNLOAD or REMOTE_ONLY).
    New {
        /// Id.
        id: BlobId,
        /// Stored size.
        remote_size: u64,
        /// Server creation time.
        created: SystemTime,
        /// From `/incoming`.
        external: bool,
        /// Server sequence number (0 if unknown).
        seq: u64,
        /// Initial status.
        status: Status,
    },
    /// Gone from the server, and no local copy is at stake (the row holds no payload, or is
    /// our own pending delete): apply `DeletedRemotely` (or `DeleteConfirmed`) at once.
    Gone {
        /// Id.
        id: BlobId,
    },
    /// A tombstone whose proof verifies against the version this device holds: a deletion
    /// made by another device of the user. Held in `held_deletions` and applied after the
    /// listing by [`apply_held`](super::remote::apply_held), unless the mass-deletion guard holds it.
    ProvenDelete {
        /// Id.
        id: BlobId,
        /// The tombstone's sequence number.
        seq: u64,
    },
    /// The server no longer has a blob this device holds, and nobody proved a deletion (no
    /// tombstone, or one without a valid proof): the server lost it. Upload it again.
    Lost {
        /// Id.
        id: BlobId,
        /// A tombstone was there, but its proof was missing or wrong (an integrity alarm,
        /// not just a forgetful server).
        unproven_tombstone: bool,
    },
    /// Put again on the server after we synced the old copy: download the new one.
    Replaced {
        /// Id.
        id: BlobId,
        /// New sequence number.
        seq: u64,
        /// New stored size.
        remote_size: u64,
    },
    /// Known on both sides: remember the server's sequence number and size.
    Seen {
        /// Id.
        id: BlobId,
        /// Sequence number.
        seq: u64,
        /// Stored size.
        remote_size: u64,
    },
}
