//! The SQLite index (WAL): users and app tokens (hashed), and per blob its size, creation time,
//! flags, `external` mark, tombstone and per-user sequence number.
//!
//! Every method here is blocking: callers on async threads go through `spawn_blocking`. One
//! writer connection behind a mutex serializes writes (SQLite does anyway) and is also the lock
//! under which payload files are renamed into place or unlinked, so a put, a delete and another
//! put of one id can never interleave their file and index steps. Reads use a small pool of
//! read-only connections and never wait for the writer (WAL).
//! This module never touches the network.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blobsync_shared::wire::{Change, ChangeOp, ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use rusqlite::{Connection, OptionalExtension, params};

use crate::layout::Layout;

/// The index file name inside the data dir (user names cannot contain a dot, so no user
/// directory can collide with it).
pub const INDEX_FILE: &str = "index.sqlite3";

/// How many idle read connections to keep.
const READ_POOL: usize = 8;

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
    /// The batch this write was committed with failed for another reason (logged).
    #[error("index commit failed: {0}")]
    Batch(String),
    /// The schema on disk is newer than this binary.
    #[error("index schema version {0} is newer than this server understands ({1}); upgrade it")]
    SchemaTooNew(i64, i64),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

mod incoming;
mod keys;
pub use incoming::ReplaceOutcome;
pub use keys::{BackupCondition, BackupOutcome, backup_etag};

/// Numbered migrations, applied in order at open; never edit a released one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    quota_bytes INTEGER,            -- NULL: the server's --default-quota
    seq INTEGER NOT NULL DEFAULT 0, -- last sequence number handed out
    used_bytes INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE TABLE apps (
    name TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    created INTEGER NOT NULL
);
CREATE TABLE blobs (
    user TEXT NOT NULL,
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    size INTEGER NOT NULL,
    created INTEGER NOT NULL,       -- unix seconds of the put, or of the delete for tombstones
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    flags INTEGER NOT NULL DEFAULT 0, -- bit i = Flag::ALL[i]
    external INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, namespace, id)
) WITHOUT ROWID;
CREATE INDEX blobs_by_seq ON blobs (user, namespace, seq);
CREATE INDEX blobs_by_date ON blobs (user, namespace, deleted, created, seq);
"#,
    r#"
-- Highest seq of a tombstone purged by `purge-tombstones`: a `since` cursor in (0, purged_seq)
-- can no longer be answered completely (410 Gone).
ALTER TABLE users ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- One-row facts about this index; `instance` is the server's instance id (see `Index::open`).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- The deleting device's proof (64 hex), kept with the tombstone; NULL on live rows.
ALTER TABLE blobs ADD COLUMN proof TEXT;
-- Namespaces an app may deliver into, space-separated.
ALTER TABLE apps ADD COLUMN namespaces TEXT NOT NULL DEFAULT 'MX';
"#,
    r#"
-- Incoming box: the SHA-256 (64 hex) of a stored age file delivered to /incoming, kept from
-- its delivery until a device adopts it (replace_external); NULL on every other row.
ALTER TABLE blobs ADD COLUMN age_sha256 TEXT;
-- Each user's incoming recipient (age1...), published by their devices.
CREATE TABLE incoming_keys (
    user TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    updated INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- Each user's passphrase-wrapped storage key (opaque bytes, at most 4 KiB), and its ETag.
CREATE TABLE key_backups (
    user TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    etag TEXT NOT NULL,
    updated INTEGER NOT NULL
) WITHOUT ROWID;
"#,
];

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

/// A blob written to a temp file and fsynced, waiting to be renamed into place and indexed.
#[derive(Debug)]
pub struct PendingPut {
    /// Its id.
    pub id: BlobId,
    /// Its size.
    pub size: u64,
    /// The fsynced temp file (in the final directory).
    pub temp: PathBuf,
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

/// The index handle; cheap to share behind an `Arc`.
pub struct Index {
    path: PathBuf,
    /// The instance id (32 lowercase hex), read or created at open.
    instance: String,
    writer: Mutex<Connection>,
    /// Put batches waiting for the writer (group commit; see [`Index::commit_puts`]).
    queue: Mutex<Vec<CommitJob>>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

fn open_conn(path: &Path) -> Result<Connection, IndexError> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    // FULL: a 201 must survive power loss, and WAL + FULL costs one WAL fsync per commit,
    // which batching (one transaction per /stream request) amortizes.
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(c)
}

impl Index {
    /// Opens (creating and migrating) the index in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, IndexError> {
        let path = data_dir.join(INDEX_FILE);
        let mut c = open_conn(&path)?;
        let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let latest = MIGRATIONS.len() as i64;
        if version > latest {
            return Err(IndexError::SchemaTooNew(version, latest));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = c.transaction()?;
            tx.execute_batch(m)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            tx.commit()?;
        }
        let instance = instance_id(&c)?;
        Ok(Self {
            path,
            instance,
            writer: Mutex::new(c),
            queue: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The server's instance id: 32 lowercase hex characters (a random UUIDv4, simple form)
    /// created once with the index and kept in it, so every node serving one index reports
    /// the same id and a new data dir reports a new one.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-transaction; SQLite rolled it back, so the
        // connection is still usable.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut c = match pooled {
            Some(c) => c,
            None => {
                let c = open_conn(&self.path)?;
                // 1 MiB of page cache per reader instead of 2: listings scan, the OS caches
                // the file anyway, and many concurrent readers must not add up.
                c.execute_batch("PRAGMA cache_size = -1024;")?;
                c
            }
        };
        let out = f(&mut c);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READ_POOL {
            pool.push(c);
        }
        out
    }

    // ---- tokens -------------------------------------------------------------------------

    /// Who owns the token with this SHA-256 hash.
    pub fn principal(&self, token_hash: &[u8]) -> Result<Option<Principal>, IndexError> {
        self.read(|c| {
            let user: Option<String> = c
                .prepare_cached("SELECT name FROM users WHERE token_hash = ?1")?
                .query_row([token_hash], |r| r.get(0))
                .optional()?;
            if let Some(u) = user {
                return Ok(Some(Principal::User(u)));
            }
            let app: Option<(String, String)> = c
                .prepare_cached("SELECT name, namespaces FROM apps WHERE token_hash = ?1")?
                .query_row([token_hash], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(app.map(|(name, ns)| Principal::App(name, parse_namespaces(&ns))))
        })
    }

    /// Adds a user.
    pub fn add_user(
        &self,
        name: &str,
        token_hash: &[u8],
        quota: Option<u64>,
    ) -> Result<(), IndexError> {
        check_name(name)?;
        let c = self.writer();
        let n = c.execute(
            "INSERT OR IGNORE INTO users (name, token_hash, quota_bytes, created) \
             VALUES (?1, ?2, ?3, ?4)",
            params![name, token_hash, quota.map(|q| q as i64), now_secs()],
        )?;
        if n == 0 {
            return Err(IndexError::NameTaken(name.to_owned()));
        }
        Ok(())
    }

    /// Adds a trusted app that may deliver into `MX` only.
    pub fn add_app(&self, name: &str, token_hash: &[u8]) -> Result<(), IndexError> {
        let mx = Namespace::new("MX").map_err(|_| IndexError::InvalidName("MX".into()))?;
        self.add_app_with_namespaces(name, token_hash, &[mx])
    }

    /// Adds a trusted app that may deliver into `namespaces` (at least one).
    pub fn add_app_with_namespaces(
        &self,
        name: &str,
        token_hash: &[u8],
        namespaces: &[Namespace],
    ) -> Result<(), IndexError> {
        check_name(name)?;
        if namespaces.is_empty() {
            return Err(IndexError::InvalidName(String::new()));
        }
        let ns: Vec<&str> = namespaces.iter().map(|n| n.as_str()).collect();
        let c = self.writer();
        let n = c.execute(
            "INSERT OR IGNORE INTO apps (name, token_hash, created, namespaces) \
             VALUES (?1, ?2, ?3, ?4)",
            params![name, token_hash, now_secs(), ns.join(" ")],
        )?;
        if n == 0 {
            return Err(IndexError::NameTaken(name.to_owned()));
        }
        Ok(())
    }

    /// Removes an app; false if there was none.
    pub fn remove_app(&self, name: &str) -> Result<bool, IndexError> {
        check_name(name)?;
        Ok(self
            .writer()
            .execute("DELETE FROM apps WHERE name = ?1", [name])?
            > 0)
    }

    /// Apps with the namespaces they may deliver into.
    pub fn list_apps(&self) -> Result<Vec<(String, Vec<Namespace>)>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare("SELECT name, namespaces FROM apps ORDER BY name")?;
            let v = s
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<(String, String)>, _>>()?;
            Ok(v.into_iter()
                .map(|(n, ns)| (n, parse_namespaces(&ns)))
                .collect())
        })
    }

    /// Removes a user, their index rows and their payload directory `{data}/{name}`; false
    /// (and nothing touched) if there is no such user. The name is validated first, so it can
    /// only ever name a directory directly under the data dir.
    pub fn remove_user(&self, name: &str, layout: &Layout) -> Result<bool, IndexError> {
        check_name(name)?;
        let mut c = self.writer();
        let tx = c.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM blobs WHERE user = ?1", [name])?;
        tx.execute("DELETE FROM incoming_keys WHERE user = ?1", [name])?;
        tx.execute("DELETE FROM key_backups WHERE user = ?1", [name])?;
        tx.commit()?;
        let dir = layout.user_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &dir)(e)),
        }
        Ok(n > 0)
    }

    /// All users with their figures.
    pub fn list_users(&self) -> Result<Vec<UserInfo>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare(
                "SELECT u.name, u.quota_bytes, u.used_bytes, u.seq, \
                 (SELECT count(*) FROM blobs b WHERE b.user = u.name AND b.deleted = 0) \
                 FROM users u ORDER BY u.name",
            )?;
            let v = s
                .query_map([], |r| {
                    Ok(UserInfo {
                        name: r.get(0)?,
                        quota_bytes: r.get::<_, Option<i64>>(1)?.map(|q| q as u64),
                        used_bytes: r.get::<_, i64>(2)? as u64,
                        seq: r.get::<_, i64>(3)? as u64,
                        blobs: r.get::<_, i64>(4)? as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
    }

    /// A user's (used bytes, own quota), or None if there is no such user.
    pub fn usage(&self, name: &str) -> Result<Option<(u64, Option<u64>)>, IndexError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT used_bytes, quota_bytes FROM users WHERE name = ?1")?
                    .query_row([name], |r| {
                        Ok((
                            r.get::<_, i64>(0)? as u64,
                            r.get::<_, Option<i64>>(1)?.map(|q| q as u64),
                        ))
                    })
                    .optional()?,
            )
        })
    }

    /// Whether a user exists.
    pub fn user_exists(&self, name: &str) -> Result<bool, IndexError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
                .exists([name])?)
        })
    }

    /// Live blob count and bytes over all users (for `/metrics`).
    pub fn totals(&self) -> Result<(u64, u64), IndexError> {
        self.read(|c| {
            let used: i64 =
                c.query_row("SELECT coalesce(sum(used_bytes), 0) FROM users", [], |r| {
                    r.get(0)
                })?;
            let blobs: i64 =
                c.query_row("SELECT count(*) FROM blobs WHERE deleted = 0", [], |r| {
                    r.get(0)
                })?;
            Ok((blobs as u64, used as u64))
        })
    }

    // ---- blobs: reads ----------------------------------------------------------------

    /// The row of one id (live or tombstone).
    pub fn lookup(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<BlobRow>, IndexError> {
        self.read(|c| lookup_in(c, user, ns.as_str(), id.as_str()))
    }

    /// Rows of many ids (for `/stream` downloads), in the given order; None where missing or
    /// deleted.
    pub fn lookup_many(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError> {
        let rows = self.lookup_many_any(user, ns, ids)?;
        Ok(rows.into_iter().map(|r| r.filter(|r| !r.deleted)).collect())
    }

    /// One page of a listing.
    pub fn list(&self, q: &ListQuery) -> Result<Vec<BlobRow>, IndexError> {
        self.read(|c| {
            let mut sql = String::from(
                "SELECT id, size, created, flags, seq, deleted, external, proof FROM blobs \
                 WHERE user = ?1 AND namespace = ?2 AND deleted = ?3 AND (?4 = 0 OR flags & ?4 != 0)",
            );
            let after_key = match (&q.after, q.order) {
                (None, _) => None,
                (Some(_), Order::Id) => {
                    sql.push_str(" AND id > ?5");
                    None
                }
                (Some(a), _) => {
                    let (created, seq) = match q.after_date {
                        Some(k) => k,
                        None => lookup_in(c, &q.user, q.namespace.as_str(), a)?
                            .filter(|r| r.deleted == q.deleted)
                            .map(|r| (r.created, r.seq))
                            .ok_or_else(|| IndexError::UnknownAfter(a.clone()))?,
                    };
                    sql.push_str(if q.order == Order::DateAsc {
                        " AND (created, seq) > (?6, ?7)"
                    } else {
                        " AND (created, seq) < (?6, ?7)"
                    });
                    Some((created, seq as i64))
                }
            };
            sql.push_str(match q.order {
                Order::Id => " ORDER BY id",
                Order::DateAsc => " ORDER BY created, seq",
                Order::DateDesc => " ORDER BY created DESC, seq DESC",
            });
            sql.push_str(" LIMIT ?8");
            let mut s = c.prepare_cached(&sql)?;
            let flag = q.filter_flag.map(flag_bit).unwrap_or(0);
            let after = q.after.clone().unwrap_or_default();
            let (ac, aseq) = after_key.unwrap_or((0, 0));
            let ns = q.namespace.as_str();
            let mut p: Vec<(&str, &dyn rusqlite::ToSql)> = vec![
                ("?1", &q.user),
                ("?2", &ns),
                ("?3", &q.deleted),
                ("?4", &flag),
            ];
            if q.after.is_some() && q.order == Order::Id {
                p.push(("?5", &after));
            }
            if after_key.is_some() {
                p.push(("?6", &ac));
                p.push(("?7", &aseq));
            }
            let limit = q.limit.min(i64::MAX as u64) as i64;
            p.push(("?8", &limit));
            let rows = s
                .query_map(p.as_slice(), row_of)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// How many blobs a listing would return without a limit.
    pub fn count(&self, q: &ListQuery) -> Result<u64, IndexError> {
        self.read(|c| {
            let flag = q.filter_flag.map(flag_bit).unwrap_or(0);
            let n: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM blobs WHERE user = ?1 AND namespace = ?2 \
                     AND deleted = ?3 AND (?4 = 0 OR flags & ?4 != 0)",
                )?
                .query_row(
                    params![q.user, q.namespace.as_str(), q.deleted, flag],
                    |r| r.get(0),
                )?;
            Ok(n as u64)
        })
    }

    /// The user's namespaces holding any live blob or tombstone, sorted. `DISTINCT` over the
    /// primary key's `(user, namespace)` prefix: an index-only scan, no table sort.
    pub fn namespaces(&self, user: &str) -> Result<Vec<Namespace>, IndexError> {
        self.read(|c| {
            let names = c
                // A skip scan over the primary key (user, namespace, id): one seek per
                // namespace, not a walk over every row of the user (devices ask after every
                // listing that shows a change).
                .prepare_cached(
                    "WITH RECURSIVE ns(n) AS ( \
                       SELECT MIN(namespace) FROM blobs WHERE user = ?1 \
                       UNION ALL \
                       SELECT (SELECT MIN(namespace) FROM blobs WHERE user = ?1 AND namespace > n) \
                       FROM ns WHERE n IS NOT NULL) \
                     SELECT n FROM ns WHERE n IS NOT NULL",
                )?
                .query_map([user], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            names
                .into_iter()
                .map(|n| {
                    // Namespaces in the index were validated on the way in.
                    Namespace::new(n)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)).into())
                })
                .collect()
        })
    }

    /// Changes after `since` (one per id, its latest state), at most `limit`, in memory: for
    /// tools and tests. The HTTP listing streams the same thing page by page with
    /// [`Index::changes_head`] and [`Index::changes_page`].
    pub fn changes(
        &self,
        user: &str,
        ns: &Namespace,
        since: u64,
        limit: u64,
    ) -> Result<ChangesResponse, IndexError> {
        let current = self.changes_head(user, since)?;
        let mut changes = self.changes_page(user, ns, since, current, limit.saturating_add(1))?;
        let more = changes.len() as u64 > limit;
        changes.truncate(limit as usize);
        let seq = if more {
            changes.last().map(|c| c.seq).unwrap_or(since)
        } else {
            current
        };
        Ok(ChangesResponse { seq, changes, more })
    }

    /// Checks a `since` cursor against the user and returns their current sequence number,
    /// the upper end of the listing: pages read later with `upto` = this number form one
    /// consistent answer even while changes land (those come in the next listing).
    pub fn changes_head(&self, user: &str, since: u64) -> Result<u64, IndexError> {
        self.read(|c| {
            let (current, purged): (i64, i64) = c
                .prepare_cached("SELECT seq, purged_seq FROM users WHERE name = ?1")?
                .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| IndexError::UnknownUser(user.to_owned()))?;
            let (current, purged) = (current as u64, purged as u64);
            if since > current {
                return Err(IndexError::SinceAhead { since, current });
            }
            // since=0 means "everything": a client with no cursor has nothing to delete, so the
            // purged tombstones are not missed.
            if since > 0 && since < purged {
                return Err(IndexError::Gone { since, purged });
            }
            Ok(current)
        })
    }

    /// Up to `limit` changes with `after < seq <= upto`, ascending by seq (one per id: a row
    /// holds its latest state).
    pub fn changes_page(
        &self,
        user: &str,
        ns: &Namespace,
        after: u64,
        upto: u64,
        limit: u64,
    ) -> Result<Vec<Change>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT id, size, created, flags, seq, deleted, external, proof FROM blobs \
                 WHERE user = ?1 AND namespace = ?2 AND seq > ?3 AND seq <= ?4 \
                 ORDER BY seq LIMIT ?5",
            )?;
            let limit = limit.min(i64::MAX as u64) as i64;
            let rows = s.query_map(
                params![user, ns.as_str(), after as i64, upto as i64, limit],
                row_of,
            )?;
            let mut out = Vec::new();
            for r in rows {
                let r = r?;
                out.push(Change {
                    // Ids in the index were validated on the way in.
                    id: BlobId::new(r.id)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
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
                });
            }
            Ok(out)
        })
    }

    // ---- blobs: writes ---------------------------------------------------------------

    /// Like [`Index::lookup_many`] but tombstones are returned too (`deleted` set): what the
    /// early `if_absent_since` check of a `/stream` upload needs.
    pub fn lookup_many_any(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError> {
        self.read(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(lookup_in(&tx, user, ns.as_str(), id.as_str())?);
            }
            Ok(out)
        })
    }

    /// Renames fsynced temp files into place and indexes them in ONE transaction; per item
    /// the outcome. `default_quota` applies to users without their own.
    ///
    /// Order (what makes a crash safe): temp files were fsynced by the caller; here each is
    /// renamed to its final name, the directories are fsynced, then the transaction commits.
    /// A crash before the commit leaves payload files with no index row, which no request can
    /// see and `fsck` removes; it never leaves an index row without its payload.
    ///
    /// Group commit: callers queue their job, then take the writer lock; whoever holds it
    /// drains every queued job into one transaction (one set of directory fsyncs, one WAL
    /// fsync). Concurrent PUTs thus share their durability cost instead of queueing for it.
    pub fn commit_puts(
        &self,
        user: &str,
        ns: &Namespace,
        items: Vec<PendingPut>,
        default_quota: Option<u64>,
        layout: &Layout,
    ) -> Result<Vec<PutOutcome>, IndexError> {
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CommitJob {
                user: user.to_owned(),
                ns: ns.clone(),
                items,
                default_quota,
                reply,
            });
        {
            let mut c = self.writer();
            let jobs = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
            if !jobs.is_empty() {
                commit_jobs(&mut c, jobs, layout);
            }
        }
        // Our job was drained by us or by an earlier lock holder, who replied before
        // releasing the lock; so the reply is already there.
        result
            .recv()
            .unwrap_or_else(|_| Err(IndexError::Batch("commit worker vanished".into())))
    }

    /// Deletes a live blob: tombstone with a new seq (and the deleting device's `proof`, kept
    /// as given: the server cannot check it), then unlink the payload. False if there was no
    /// live blob.
    pub fn delete(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<&str>,
        layout: &Layout,
    ) -> Result<bool, IndexError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let Some(row) = lookup_in(&tx, user, ns.as_str(), id.as_str())?.filter(|r| !r.deleted)
        else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE users SET seq = seq + 1, used_bytes = used_bytes - ?2 WHERE name = ?1",
            params![user, row.size as i64],
        )?;
        tx.execute(
            "UPDATE blobs SET deleted = 1, created = ?4, proof = ?5, \
             seq = (SELECT seq FROM users WHERE name = ?1) \
             WHERE user = ?1 AND namespace = ?2 AND id = ?3",
            params![user, ns.as_str(), id.as_str(), now_secs(), proof],
        )?;
        tx.commit()?;
        // Unlink after the commit and still under the writer lock: a crash in between leaves
        // an orphan payload (invisible, removed by fsck), and no put of the same id can have
        // renamed a new file into place yet.
        let path = layout.blob_path(user, ns, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
        Ok(true)
    }

    /// Deletes tombstones older than `before` (unix seconds) and raises each affected user's
    /// `purged_seq`, so cursors from before then get 410 Gone instead of a listing that
    /// silently misses deletions. Returns how many tombstones were removed.
    pub fn purge_tombstones(&self, before: i64) -> Result<u64, IndexError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE users SET purged_seq = max(purged_seq, \
             (SELECT coalesce(max(seq), 0) FROM blobs b \
              WHERE b.user = users.name AND b.deleted = 1 AND b.created < ?1))",
            [before],
        )?;
        let n = tx.execute(
            "DELETE FROM blobs WHERE deleted = 1 AND created < ?1",
            [before],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Sets a live blob's flags; false if there is none.
    pub fn set_flags(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        flags: i64,
    ) -> Result<bool, IndexError> {
        let c = self.writer();
        let n = c.execute(
            "UPDATE blobs SET flags = ?4 WHERE user = ?1 AND namespace = ?2 AND id = ?3 \
             AND deleted = 0",
            params![user, ns.as_str(), id.as_str(), flags],
        )?;
        Ok(n > 0)
    }

    /// Every live row of every user (for fsck): (user, namespace, id, size).
    pub fn all_live(&self) -> Result<Vec<(String, String, String, u64)>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare(
                "SELECT user, namespace, id, size FROM blobs WHERE deleted = 0 \
                 ORDER BY user, namespace, id",
            )?;
            let v = s
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
    }

    /// Compares every user's recorded `used_bytes` with the sum of their live rows; returns
    /// (user, recorded, actual) for those that differ, and with `repair` fixes them.
    pub fn fix_usage(&self, repair: bool) -> Result<Vec<(String, u64, u64)>, IndexError> {
        let c = self.writer();
        let mut s = c.prepare(
            "SELECT u.name, u.used_bytes, \
             (SELECT coalesce(sum(size), 0) FROM blobs b WHERE b.user = u.name AND b.deleted = 0) \
             FROM users u",
        )?;
        let off = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .collect::<Vec<_>>();
        drop(s);
        if repair {
            for (u, _, real) in &off {
                c.execute(
                    "UPDATE users SET used_bytes = ?2 WHERE name = ?1",
                    params![u, *real as i64],
                )?;
            }
        }
        Ok(off)
    }

    /// Runs SQLite's own integrity check; the problems it reports (empty when fine).
    pub fn integrity_check(&self) -> Result<Vec<String>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare("PRAGMA integrity_check")?;
            let v = s
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v.into_iter().filter(|l| l != "ok").collect())
        })
    }
}

/// One caller's share of a group commit.
struct CommitJob {
    user: String,
    ns: Namespace,
    items: Vec<PendingPut>,
    default_quota: Option<u64>,
    reply: std::sync::mpsc::SyncSender<Result<Vec<PutOutcome>, IndexError>>,
}

/// Applies one job inside the batch transaction: renames and rows. A missing user fails only
/// this job (Ok(Err)); any other error fails the batch.
fn apply_job(
    tx: &rusqlite::Transaction<'_>,
    job: &CommitJob,
    now: i64,
    layout: &Layout,
    placed: &mut Vec<PathBuf>,
    dirs: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<Result<Vec<PutOutcome>, IndexError>, IndexError> {
    let (user, ns) = (job.user.as_str(), &job.ns);
    let row: Option<(i64, Option<i64>, i64)> = tx
        .prepare_cached("SELECT seq, quota_bytes, used_bytes FROM users WHERE name = ?1")?
        .query_row([user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((mut seq, quota, mut used)) = row else {
        return Ok(Err(IndexError::UnknownUser(user.to_owned())));
    };
    let quota = quota.map(|q| q as u64).or(job.default_quota);
    let mut outcomes = Vec::with_capacity(job.items.len());
    for it in &job.items {
        let live: bool = tx
            .prepare_cached(
                "SELECT 1 FROM blobs WHERE user = ?1 AND namespace = ?2 AND id = ?3 \
                 AND deleted = 0",
            )?
            .exists(params![user, ns.as_str(), it.id.as_str()])?;
        if live {
            outcomes.push(PutOutcome::Exists);
            continue;
        }
        if it.if_absent_since.is_some() {
            let row = lookup_in(tx, user, ns.as_str(), it.id.as_str())?;
            if let Some(seq) = deleted_after(row.as_ref(), it.if_absent_since) {
                outcomes.push(PutOutcome::DeletedAfter(seq));
                continue;
            }
        }
        if quota.is_some_and(|q| used as u64 + it.size > q) {
            outcomes.push(PutOutcome::OverQuota);
            continue;
        }
        let dest = layout.blob_path(user, ns, &it.id);
        std::fs::rename(&it.temp, &dest).map_err(io("rename into place", &dest))?;
        placed.push(dest.clone());
        if let Some(d) = dest.parent() {
            dirs.insert(d.to_path_buf());
        }
        seq += 1;
        used += it.size as i64;
        tx.prepare_cached(
            "INSERT INTO blobs (user, namespace, id, size, created, seq, deleted, flags, external, \
             age_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9) \
             ON CONFLICT (user, namespace, id) DO UPDATE SET size = excluded.size, \
             created = excluded.created, seq = excluded.seq, deleted = 0, \
             flags = excluded.flags, external = excluded.external, proof = NULL, \
             age_sha256 = excluded.age_sha256",
        )?
        .execute(params![
            user,
            ns.as_str(),
            it.id.as_str(),
            it.size as i64,
            now,
            seq,
            it.flags,
            it.external,
            it.age_sha256
        ])?;
        outcomes.push(PutOutcome::Created(seq as u64));
    }
    tx.prepare_cached("UPDATE users SET seq = ?2, used_bytes = ?3 WHERE name = ?1")?
        .execute(params![user, seq, used])?;
    Ok(Ok(outcomes))
}

/// Commits queued jobs in one transaction and replies to each. Runs under the writer lock.
fn commit_jobs(c: &mut Connection, jobs: Vec<CommitJob>, layout: &Layout) {
    let mut placed: Vec<PathBuf> = Vec::new();
    let mut dirs: std::collections::BTreeSet<PathBuf> = Default::default();
    let mut results: Vec<Result<Vec<PutOutcome>, IndexError>> = Vec::with_capacity(jobs.len());
    let batch = (|| -> Result<(), IndexError> {
        let tx = c.transaction()?;
        let now = now_secs();
        for job in &jobs {
            results.push(apply_job(&tx, job, now, layout, &mut placed, &mut dirs)?);
        }
        if dirs.len() >= crate::layout::SYNCFS_MIN {
            crate::layout::sync_files(layout.root(), &placed)
                .map_err(io("sync renamed files", layout.root()))?;
        } else {
            for d in &dirs {
                fsync_dir(d)?;
            }
        }
        tx.commit()?;
        Ok(())
    })();
    if let Err(e) = batch {
        // Nothing was committed: payloads placed under no index row are removed (no request
        // could see them anyway: the index decides what exists).
        for p in &placed {
            let _ = std::fs::remove_file(p);
        }
        tracing::error!(error = %e, jobs = jobs.len(), "index commit failed");
        let msg = e.to_string();
        let mut first = Some(e);
        results = jobs
            .iter()
            .map(|_| {
                Err(first
                    .take()
                    .unwrap_or_else(|| IndexError::Batch(msg.clone())))
            })
            .collect();
    }
    for (job, result) in jobs.into_iter().zip(results) {
        // Temp files that were not placed (conflict, quota, failure) are removed here.
        let created: Vec<bool> = match &result {
            Ok(outs) => outs
                .iter()
                .map(|o| matches!(o, PutOutcome::Created(_)))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (i, it) in job.items.iter().enumerate() {
            if !created.get(i).copied().unwrap_or(false) {
                let _ = std::fs::remove_file(&it.temp);
            }
        }
        // The caller waits on this channel; it has room for the one reply.
        let _ = job.reply.send(result);
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobRow> {
    Ok(BlobRow {
        id: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        created: r.get(2)?,
        flags: r.get(3)?,
        seq: r.get::<_, i64>(4)? as u64,
        deleted: r.get(5)?,
        external: r.get(6)?,
        proof: r.get(7)?,
    })
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

/// Reads the instance id from `meta`, creating it on first open (also of an index made by an
/// older version, at its migration).
fn instance_id(c: &Connection) -> Result<String, IndexError> {
    let existing: Option<String> = c
        .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| IndexError::Batch("the OS random source failed".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40; // UUID version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let id = hex::encode(b);
    // OR IGNORE + read back: two processes opening a fresh index at once agree on one id.
    c.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
        [&id],
    )?;
    Ok(
        c.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get(0)
        })?,
    )
}

fn lookup_in(
    c: &Connection,
    user: &str,
    ns: &str,
    id: &str,
) -> Result<Option<BlobRow>, IndexError> {
    Ok(c.prepare_cached(
        "SELECT id, size, created, flags, seq, deleted, external, proof FROM blobs \
         WHERE user = ?1 AND namespace = ?2 AND id = ?3",
    )?
    .query_row(params![user, ns, id], row_of)
    .optional()?)
}

/// fsyncs a directory so a rename in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), IndexError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync directory", dir))
}
