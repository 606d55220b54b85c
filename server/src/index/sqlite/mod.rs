//! The SQLite index (WAL), the one-node index and the default: schema and migrations, the
//! connections (one writer behind a mutex, a pool of readers), the instance id, users, tokens
//! and apps. Blob reads are in `read.rs`, blob writes (the group commit) in `write.rs`, the
//! incoming box in `incoming.rs`.
//!
//! Every method here is blocking: async callers go through [`super::SqliteStore`], which runs
//! them on the blocking pool. One writer connection behind a mutex serializes writes (SQLite
//! does anyway) and is also the lock under which payload files are renamed into place or
//! unlinked, so a put, a delete and another put of one id can never interleave their file and
//! index steps. Reads use a small pool of read-only connections and never wait for the writer
//! (WAL). Users' sequence numbers and token owners are also kept in memory for as long as the
//! file is known unchanged (`cache.rs`). This module never touches the network.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use blobsync_shared::Namespace;
use rusqlite::{Connection, OptionalExtension, params};

use super::{BlobRow, IndexError, Principal, UserInfo, check_name, now_secs, parse_namespaces};
use crate::layout::Layout;

mod cache;
pub mod incoming;
mod keys;
mod read;
mod write;
use write::CommitQueue;

/// The index file name inside the data dir (user names cannot contain a dot, so no user
/// directory can collide with it).
pub const INDEX_FILE: &str = "index.sqlite3";

/// How many idle read connections to keep, and how many reads [`super::SqliteStore`] runs at
/// once (so the pool never has to open a connection for one query).
pub(crate) const READ_POOL: usize = 8;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

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
    r#"
-- Scale-out (s3 payloads): the object key of the payload, unique per upload; NULL for files
-- at their layout path.
ALTER TABLE blobs ADD COLUMN object_key TEXT;
"#,
    r#"
-- Small payloads (issue 20): the bytes of a live blob of at most INLINE_MAX bytes, written in
-- the same transaction as its row instead of as a file (no temp file, rename or file sync:
-- the round's one WAL commit makes data, name and row durable together). A rowid table, so
-- rows of a few KiB sit in its leaf pages instead of each taking an overflow page.
CREATE TABLE inline_payloads (
    user TEXT NOT NULL,
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX inline_payloads_by_name ON inline_payloads (user, namespace, id);
"#,
];

/// The index handle; cheap to share behind an `Arc`.
pub struct Index {
    path: PathBuf,
    /// The instance id (32 lowercase hex), read or created at open.
    instance: String,
    writer: Mutex<Connection>,
    /// Put batches waiting for the writer (group commit; see [`Index::commit_puts`]).
    queue: Mutex<CommitQueue>,
    readers: Mutex<Vec<Connection>>,
    /// Heads and token owners in memory (see `cache.rs`).
    cache: cache::Cache,
}

/// The writer connection, locked. Releasing it rechecks the cache (`cache.rs`): every write
/// goes through here, so the cache learns of each.
pub(super) struct Writer<'a> {
    conn: MutexGuard<'a, Connection>,
    cache: &'a cache::Cache,
    /// A user whose sequence number this write may move: forgotten on release, whatever
    /// became of the write (see [`Index::writer_for`]).
    user: Option<&'a str>,
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Still under the lock: no write of this process can come in between.
        if let Some(u) = self.user {
            self.cache.forget_user(u);
        }
        self.cache.revalidate(&self.conn);
    }
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
        // The writer's transactions take the write lock at BEGIN, where SQLite waits for it
        // (busy_timeout). A deferred one reads first and upgrades at its first write, and an
        // upgrade that finds the lock held fails at once ("database is locked") instead of
        // waiting: a reader that checks the WAL header while it is being written holds the
        // lock for a moment, and the cache's watch connection reads it thousands of times a
        // second (an SRV-PUT run lost 3 PUTs to it).
        c.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let cache = cache::Cache::open(&path);
        Ok(Self {
            path,
            instance,
            writer: Mutex::new(c),
            queue: Mutex::new(CommitQueue::default()),
            readers: Mutex::new(Vec::new()),
            cache,
        })
    }

    /// The server's instance id: 32 lowercase hex characters (a random UUIDv4, simple form)
    /// created once with the index and kept in it, so every node serving one index reports
    /// the same id and a new data dir reports a new one.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    fn writer(&self) -> Writer<'_> {
        // A poisoned lock means a panic mid-transaction; SQLite rolled it back, so the
        // connection is still usable.
        Writer {
            conn: self.writer.lock().unwrap_or_else(|e| e.into_inner()),
            cache: &self.cache,
            user: None,
        }
    }

    /// The writer, for a write that may move `user`'s sequence number: their head is
    /// forgotten when it is released, after the commit (or its failure) and before the
    /// lock is, so no listing can be answered from the head before.
    pub(super) fn writer_for<'a>(&'a self, user: &'a str) -> Writer<'a> {
        Writer {
            conn: self.writer.lock().unwrap_or_else(|e| e.into_inner()),
            cache: &self.cache,
            user: Some(user),
        }
    }

    /// Rechecks the cache after a miss, unless a write holds the writer (which rechecks when
    /// it is done): without it, a commit of another process would keep every answer a miss
    /// until this process writes.
    fn recheck_cache(&self) {
        let conn = match self.writer.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        drop(Writer {
            conn,
            cache: &self.cache,
            user: None,
        });
    }

    /// The owner of a token from memory, if it is known there and current (no index read).
    pub fn cached_principal(&self, token_hash: &[u8]) -> Option<Principal> {
        self.cache.principal(token_hash)
    }

    /// A user's `(seq, purged_seq)` from memory, if known there and current (no index read).
    pub fn cached_head(&self, user: &str) -> Option<(u64, u64)> {
        self.cache.head(user)
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
        self.recheck_cache();
        let generation = self.cache.generation();
        let who = self.read(|c| {
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
        })?;
        if let Some(p) = &who {
            self.cache.fill_principal(generation, token_hash, p);
        }
        Ok(who)
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
        let c = self.writer();
        let n = c.execute("DELETE FROM apps WHERE name = ?1", [name]);
        // Its token must stop working at once (success or not: forget what may be stale).
        self.cache.forget_all();
        Ok(n? > 0)
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
        let removed = (|| -> Result<usize, IndexError> {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
            if n == 0 {
                return Ok(0);
            }
            tx.execute("DELETE FROM blobs WHERE user = ?1", [name])?;
            tx.execute("DELETE FROM inline_payloads WHERE user = ?1", [name])?;
            tx.execute("DELETE FROM incoming_keys WHERE user = ?1", [name])?;
            tx.execute("DELETE FROM key_backups WHERE user = ?1", [name])?;
            tx.commit()?;
            Ok(n)
        })();
        // Their token and sequence number are gone (a user added again under the name
        // starts at 0).
        self.cache.forget_all();
        let n = removed?;
        if n == 0 {
            return Ok(false);
        }
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
        object_key: r.get(8)?,
    })
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
        "SELECT id, size, created, flags, seq, deleted, external, proof, object_key FROM blobs \
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
