//! The index: users and app tokens (hashed), apps, and per blob its size, creation time,
//! flags, `external` mark, tombstone, payload location and per-user sequence number; each
//! user's incoming recipient; the instance id.
//!
//! This module owns the types every index speaks ([`BlobRow`], [`ListQuery`], [`PendingPut`],
//! [`PutOutcome`], [`IndexError`]) and the [`IndexStore`] trait the HTTP layer and the admin
//! commands use. Two implementations: [`sqlite`] ([`Index`], one node, the default; blocking,
//! wrapped for async callers by [`SqliteStore`]) and [`postgres`] ([`postgres::PgIndex`], many
//! nodes on one database). This module never touches the network or the payloads.

use std::path::PathBuf;

pub use crate::payload::Staged;
use blobsync_shared::wire::Flag;
use blobsync_shared::{BlobId, Namespace};

pub mod postgres;
pub mod sqlite;
mod store;

pub use sqlite::{INDEX_FILE, Index, fsync_dir};
pub use store::{IndexStore, SqliteStore};

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite failed.
    #[error("index database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A payload file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No such user.
    #[error("no user named {0:?}")]
    UnknownUser(String),
    /// The user or app name is taken.
    #[error("{0:?} already exists")]
    NameTaken(String),
    /// A user or app name that is not a valid name (it could name a path outside the user's
    /// directory).
    #[error("name {0:?} is invalid: use 1 to 128 characters of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// The `after` cursor names no blob of this listing.
    #[error("after={0:?} names no blob in this listing; pass the last id of the previous page")]
    UnknownAfter(String),
    /// The `since` cursor is ahead of the user's sequence number.
    #[error(
        "since={since} is ahead of this server's sequence number {current} for the user: \
         the cursor comes from another server or data dir; do a full listing"
    )]
    SinceAhead {
        /// Requested.
        since: u64,
        /// Current.
        current: u64,
    },
    /// Tombstones after the cursor were purged: the client must do a full listing.
    #[error(
        "since={since} is older than this server keeps deletions for (tombstones up to seq \
         {purged} were purged): do a full listing, then continue from its seq"
    )]
    Gone {
        /// Requested.
        since: u64,
        /// Highest purged tombstone seq.
        purged: u64,
    },
    /// PostgreSQL failed.
    #[error("index database (PostgreSQL) error: {0}")]
    Postgres(String),
    /// The payload store failed (object store or files).
    #[error("payload store: {0}")]
    Payload(String),
    /// The pairing of index and payload store cannot work (e.g. file payloads on PostgreSQL).
    #[error("{0}")]
    Unsupported(String),
    /// The batch this write was committed with failed for another reason (logged).
    #[error("index commit failed: {0}")]
    Batch(String),
    /// The schema on disk is newer than this binary.
    #[error("index schema version {0} is newer than this server understands ({1}); upgrade it")]
    SchemaTooNew(i64, i64),
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Flags as the bitmask stored in the index.
pub fn flags_to_bits(flags: &[Flag]) -> i64 {
    flags.iter().fold(0, |acc, f| acc | flag_bit(*f))
}

/// The bit of one flag.
pub fn flag_bit(f: Flag) -> i64 {
    1 << Flag::ALL.iter().position(|x| *x == f).unwrap_or(0)
}

/// The flags of a bitmask, in canonical order.
pub fn bits_to_flags(bits: i64) -> Vec<Flag> {
    Flag::ALL
        .into_iter()
        .filter(|f| bits & flag_bit(*f) != 0)
        .collect()
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user: may use `/blobs/{name}` and `/stream/{name}`.
    User(String),
    /// A trusted app (name, namespaces it may deliver into): may only PUT to
    /// `/incoming/{any user}/{id}`, and only into those namespaces.
    App(String, Vec<Namespace>),
}

/// One blob's index row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// The id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix seconds.
    pub created: i64,
    /// Flags bitmask.
    pub flags: i64,
    /// Sequence number of its last change.
    pub seq: u64,
    /// Tombstone.
    pub deleted: bool,
    /// From `/incoming`.
    pub external: bool,
    /// On a tombstone: the deleting device's proof, as sent (64 lowercase hex).
    pub proof: Option<String>,
    /// Where the payload is when it is not at its file-layout path: the object key of an
    /// object store (unique per upload). None for `fs` payloads.
    pub object_key: Option<String>,
}

/// Listing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By id (the default; what `after` pages over).
    Id,
    /// Oldest first (`date`, `+date`).
    DateAsc,
    /// Newest first (`-date`).
    DateDesc,
}

/// A listing request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Whose blobs.
    pub user: String,
    /// Which namespace.
    pub namespace: Namespace,
    /// Tombstones instead of live blobs.
    pub deleted: bool,
    /// Only blobs with this flag.
    pub filter_flag: Option<Flag>,
    /// Order.
    pub order: Order,
    /// Continue after this id (in `order`).
    pub after: Option<String>,
    /// For date orders: continue after this `(created, seq)` instead of looking `after` up
    /// (the server's own paging uses it, so a blob deleted meanwhile cannot break a page).
    pub after_date: Option<(i64, u64)>,
    /// Page size.
    pub limit: u64,
}

/// A blob whose payload is written and durable, waiting to be published by the index commit.
#[derive(Debug)]
pub struct PendingPut {
    /// Its id.
    pub id: BlobId,
    /// Its size.
    pub size: u64,
    /// The written payload: a temp file the commit renames into place and syncs, or an object
    /// under its unique key that the commit records.
    pub staged: Staged,
    /// `/incoming` delivery.
    pub external: bool,
    /// `/incoming` delivery: the SHA-256 (64 hex) of the age file, for `replace_external`.
    pub age_sha256: Option<String>,
    /// Initial flags bitmask.
    pub flags: i64,
    /// `if_absent_since`: refuse ([`PutOutcome::DeletedAfter`]) when the id holds a tombstone
    /// whose delete has a sequence number above this one. Checked under the writer lock, in
    /// the commit, so a delete that lands while the body is uploading is caught too.
    pub if_absent_since: Option<u64>,
}

/// What became of one [`PendingPut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored at this sequence number.
    Created(u64),
    /// A live blob with this id exists.
    Exists,
    /// Storing it would exceed the user's quota.
    OverQuota,
    /// The id was deleted at this sequence number, after the put's `if_absent_since`: the
    /// client's retry must not recreate it.
    DeletedAfter(u64),
}

/// The seq of `row`'s delete when it is a tombstone newer than `since` (the
/// `if_absent_since` rule; a live row or an older tombstone is not this refusal's business).
pub fn deleted_after(row: Option<&BlobRow>, since: Option<u64>) -> Option<u64> {
    match (row, since) {
        (Some(r), Some(since)) if r.deleted && r.seq > since => Some(r.seq),
        _ => None,
    }
}

/// Per-user figures for `user list` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Name.
    pub name: String,
    /// Own quota (None: the server default).
    pub quota_bytes: Option<u64>,
    /// Bytes of live blobs.
    pub used_bytes: u64,
    /// Live blobs.
    pub blobs: u64,
    /// Current sequence number.
    pub seq: u64,
}

/// Refuses names that are not `[A-Za-z0-9_-]{1,128}` (the rule of ids and namespaces): a user
/// name becomes a directory under the data dir, so `""`, `..` or `/x` must never get that far.
pub fn check_name(name: &str) -> Result<(), IndexError> {
    Namespace::new(name)
        .map(|_| ())
        .map_err(|_| IndexError::InvalidName(name.chars().take(200).collect()))
}

/// The namespaces column of `apps` (space-separated); invalid entries cannot be there (they
/// were validated on the way in) and are skipped.
fn parse_namespaces(s: &str) -> Vec<Namespace> {
    s.split_whitespace()
        .filter_map(|n| Namespace::new(n).ok())
        .collect()
}

/// What became of a `replace_external`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceOutcome {
    /// Swapped in at this sequence number; the replaced copy's object key, if it was an
    /// object (the caller removes it after the commit).
    Replaced {
        /// The new sequence number.
        seq: u64,
        /// The old payload's object key.
        old_object: Option<String>,
    },
    /// No live blob under the id.
    Missing,
    /// The stored copy is not the age file with that hash (adopted already, by this or
    /// another device, or never external).
    NotThatFile,
    /// The new copy would put the user over quota.
    OverQuota,
}

/// A live row as fsck sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRow {
    /// Owner.
    pub user: String,
    /// Namespace.
    pub namespace: String,
    /// Id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Object key (None: a file at its layout path, or inline).
    pub object_key: Option<String>,
    /// Kept inside the index (`Staged::Inline`): its length in bytes.
    pub inline: Option<u64>,
}

/// The precondition a key-backup write must meet (`PUT /keys/{user}/storage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCondition {
    /// `If-None-Match: *`: only when the user has no backup yet.
    Absent,
    /// `If-Match: "<etag>"`: only when the stored backup has this ETag.
    Matches(String),
}

/// What became of a key-backup write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutcome {
    /// Stored; the new ETag (unquoted).
    Stored(String),
    /// The condition failed: the current ETag, or `None` when there is no backup.
    Conflict(Option<String>),
}

/// The ETag of a backup: the first 32 hex digits of its SHA-256. Equal bytes have equal tags,
/// which is harmless: rewriting the same backup changes nothing another device could lose.
pub fn backup_etag(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    hex::encode(&d.as_ref()[..16])
}

/// The `since` cursor rule, the same on every index: `current` (the user's sequence number)
/// when `since` can be answered completely, else why not.
pub fn check_since(since: u64, current: u64, purged: u64) -> Result<u64, IndexError> {
    if since > current {
        return Err(IndexError::SinceAhead { since, current });
    }
    // since=0 means "everything": a client with no cursor has nothing to delete, so the
    // purged tombstones are not missed.
    if since > 0 && since < purged {
        return Err(IndexError::Gone { since, purged });
    }
    Ok(current)
}

/// A row as a change of a `since` listing (its latest state; a tombstone with its proof).
/// `None` for an id that is not valid, which cannot be in an index (validated on the way in).
pub fn change_of(r: BlobRow) -> Option<blobsync_shared::wire::Change> {
    use blobsync_shared::wire::{Change, ChangeOp};
    Some(Change {
        id: BlobId::new(r.id).ok()?,
        op: if r.deleted {
            ChangeOp::Delete
        } else {
            ChangeOp::Put
        },
        size: r.size,
        created: r.created,
        seq: r.seq,
        external: r.external,
        proof: r.proof.filter(|_| r.deleted),
    })
}
