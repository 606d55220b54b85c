//! The PostgreSQL index, for many stateless nodes on one database: the connection pool
//! (`deadpool-postgres` over `tokio-postgres`, no C code), the versioned migrations, the
//! shared instance id, users, tokens and apps. Blob reads and writes are in `blobs.rs`.
//!
//! Why the per-user sequence number and the quota stay right with N nodes writing at once:
//! every transaction that changes a user's blobs (put, delete, replace, purge) first takes
//! that user's row lock (`SELECT … FROM users WHERE name = $1 FOR UPDATE`, or the `UPDATE` of
//! the purge), and only then reads the blob rows it decides on (live? tombstone after
//! `if_absent_since`? room under the quota?), assigns `seq + 1, seq + 2, …`, writes the rows
//! and the new `seq`/`used_bytes`, and commits. So writers of one user run one after the
//! other, whichever node they are on; each sees the committed result of the one before (READ
//! COMMITTED takes a fresh snapshot per statement, and the lock is taken before the reads);
//! numbers are handed out in commit order with no gap and no repeat; and a transaction's rows
//! and its new `users.seq` become visible together. A `since` reader that reads
//! `users.seq = N` ([`PgIndex`]'s `changes_head`) therefore finds every change up to N in
//! the pages it reads afterwards, as with SQLite's single writer. Writers of different users
//! never wait for each other.
//!
//! Text columns that are ordered or paged over (`namespace`, `id`) use the `"C"` collation:
//! byte order, as SQLite's, whatever the database's locale.

use std::str::FromStr;

use blobsync_shared::Namespace;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{
    BackupCondition, BackupOutcome, IndexError, Principal, UserInfo, backup_etag, check_name,
    now_secs, parse_namespaces,
};

mod blobs;

/// Numbered migrations, applied in order at open under an advisory lock (so nodes starting
/// together apply each once); never edit a released one.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    quota_bytes BIGINT,
    seq BIGINT NOT NULL DEFAULT 0,
    used_bytes BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    purged_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE apps (
    name TEXT PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    namespaces TEXT NOT NULL DEFAULT 'MX'
);
CREATE TABLE blobs (
    user_name TEXT NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL,
    created BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    flags BIGINT NOT NULL DEFAULT 0,
    external BOOLEAN NOT NULL DEFAULT FALSE,
    proof TEXT,
    age_sha256 TEXT,
    object_key TEXT,
    PRIMARY KEY (user_name, namespace, id)
);
CREATE INDEX blobs_by_seq ON blobs (user_name, namespace, seq);
CREATE INDEX blobs_by_date ON blobs (user_name, namespace, deleted, created, seq);
CREATE TABLE incoming_keys (
    user_name TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE key_backups (
    user_name TEXT PRIMARY KEY,
    data BYTEA NOT NULL,
    etag TEXT NOT NULL,
    updated BIGINT NOT NULL
);
"#];

/// The advisory lock key of migrations ("blobsync" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x626c_6f62_7379_6e63;

/// Default pool size per node.
pub const DEFAULT_POOL: usize = 16;

/// A PostgreSQL error as an [`IndexError`], with the server's message when it sent one.
pub(crate) fn pg(e: impl Into<PgError>) -> IndexError {
    let e = e.into();
    IndexError::Postgres(e.0)
}

/// The text of a pool or database error.
pub(crate) struct PgError(String);

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => PgError(format!("{}: {}", db.code().code(), db.message())),
            None => PgError(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => PgError(format!("connection pool: {e}")),
        }
    }
}

/// The index in PostgreSQL.
pub struct PgIndex {
    pool: Pool,
    instance: String,
}

impl std::fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PgIndex")
            .field("instance", &self.instance)
            .finish()
    }
}

/// The database URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparseable database URL)".to_string(),
    }
}

impl PgIndex {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), applies migrations, and reads
    /// or creates the instance id. With `instance`, a new database takes that id (what
    /// `migrate` does to keep a one-node server's id); an existing one must already have it.
    pub async fn open(
        url: &str,
        pool_size: usize,
        instance: Option<&str>,
    ) -> Result<Self, IndexError> {
        let cfg = tokio_postgres::Config::from_str(url).map_err(|e| {
            IndexError::Postgres(format!(
                "database URL {} is not valid: {e}; use postgres://USER:PASSWORD@HOST:PORT/DB",
                redact_url(url)
            ))
        })?;
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| IndexError::Postgres(format!("connection pool: {e}")))?;
        let mut c = pool.get().await.map_err(|e| {
            IndexError::Postgres(format!("cannot connect to {}: {}", redact_url(url), pg(e)))
        })?;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, \
             applied BIGINT NOT NULL)",
        )
        .await
        .map_err(pg)?;
        let version: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let latest = MIGRATIONS.len() as i32;
        if version > latest {
            return Err(IndexError::SchemaTooNew(version as i64, latest as i64));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(m).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
                &[&(i as i32 + 1), &now_secs()],
            )
            .await
            .map_err(pg)?;
        }
        let fresh = new_instance_id()?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('instance', $1) ON CONFLICT DO NOTHING",
            &[&instance.unwrap_or(&fresh)],
        )
        .await
        .map_err(pg)?;
        let id: String = tx
            .query_one("SELECT value FROM meta WHERE key = 'instance'", &[])
            .await
            .map_err(pg)?
            .get(0);
        if let Some(want) = instance.filter(|w| *w != id) {
            return Err(IndexError::Unsupported(format!(
                "the database already has instance id {id}, not {want}: it holds another \
                 deployment; use an empty database"
            )));
        }
        tx.commit().await.map_err(pg)?;
        drop(c);
        Ok(Self { pool, instance: id })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, IndexError> {
        self.pool.get().await.map_err(pg)
    }

    /// The instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) async fn principal_of(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<Principal>, IndexError> {
        let c = self.client().await?;
        let s = c
            .prepare_cached("SELECT name FROM users WHERE token_hash = $1")
            .await
            .map_err(pg)?;
        if let Some(r) = c.query_opt(&s, &[&token_hash]).await.map_err(pg)? {
            return Ok(Some(Principal::User(r.get(0))));
        }
        let s = c
            .prepare_cached("SELECT name, namespaces FROM apps WHERE token_hash = $1")
            .await
            .map_err(pg)?;
        Ok(c.query_opt(&s, &[&token_hash])
            .await
            .map_err(pg)?
            .map(|r| Principal::App(r.get(0), parse_namespaces(r.get(1)))))
    }

    pub(crate) async fn add_user_row(
        &self,
        name: &str,
        token_hash: &[u8],
        quota: Option<u64>,
    ) -> Result<(), IndexError> {
        check_name(name)?;
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO users (name, token_hash, quota_bytes, created) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&name, &token_hash, &quota.map(|q| q as i64), &now_secs()],
            )
            .await
            .map_err(pg)?;
        if n == 0 {
            return Err(IndexError::NameTaken(name.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn add_app_row(
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
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO apps (name, token_hash, created, namespaces) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&name, &token_hash, &now_secs(), &ns.join(" ")],
            )
            .await
            .map_err(pg)?;
        if n == 0 {
            return Err(IndexError::NameTaken(name.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn remove_app_row(&self, name: &str) -> Result<bool, IndexError> {
        check_name(name)?;
        let c = self.client().await?;
        Ok(c.execute("DELETE FROM apps WHERE name = $1", &[&name])
            .await
            .map_err(pg)?
            > 0)
    }

    pub(crate) async fn apps(&self) -> Result<Vec<(String, Vec<Namespace>)>, IndexError> {
        let c = self.client().await?;
        Ok(
            c.query("SELECT name, namespaces FROM apps ORDER BY name", &[])
                .await
                .map_err(pg)?
                .into_iter()
                .map(|r| (r.get(0), parse_namespaces(r.get(1))))
                .collect(),
        )
    }

    pub(crate) async fn remove_user_rows(&self, name: &str) -> Result<bool, IndexError> {
        check_name(name)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let n = tx
            .execute("DELETE FROM users WHERE name = $1", &[&name])
            .await
            .map_err(pg)?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM blobs WHERE user_name = $1", &[&name])
            .await
            .map_err(pg)?;
        tx.execute("DELETE FROM incoming_keys WHERE user_name = $1", &[&name])
            .await
            .map_err(pg)?;
        tx.execute("DELETE FROM key_backups WHERE user_name = $1", &[&name])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    pub(crate) async fn users(&self) -> Result<Vec<UserInfo>, IndexError> {
        let c = self.client().await?;
        Ok(c.query(
            "SELECT u.name, u.quota_bytes, u.used_bytes, u.seq, \
             (SELECT count(*) FROM blobs b WHERE b.user_name = u.name AND NOT b.deleted) \
             FROM users u ORDER BY u.name",
            &[],
        )
        .await
        .map_err(pg)?
        .into_iter()
        .map(|r| UserInfo {
            name: r.get(0),
            quota_bytes: r.get::<_, Option<i64>>(1).map(|q| q as u64),
            used_bytes: r.get::<_, i64>(2) as u64,
            seq: r.get::<_, i64>(3) as u64,
            blobs: r.get::<_, i64>(4) as u64,
        })
        .collect())
    }

    pub(crate) async fn usage_of(
        &self,
        name: &str,
    ) -> Result<Option<(u64, Option<u64>)>, IndexError> {
        let c = self.client().await?;
        let s = c
            .prepare_cached("SELECT used_bytes, quota_bytes FROM users WHERE name = $1")
            .await
            .map_err(pg)?;
        Ok(c.query_opt(&s, &[&name]).await.map_err(pg)?.map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                r.get::<_, Option<i64>>(1).map(|q| q as u64),
            )
        }))
    }

    pub(crate) async fn totals_of(&self) -> Result<(u64, u64), IndexError> {
        let c = self.client().await?;
        let used: i64 = c
            .query_one(
                "SELECT coalesce(sum(used_bytes), 0)::BIGINT FROM users",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let blobs: i64 = c
            .query_one("SELECT count(*) FROM blobs WHERE NOT deleted", &[])
            .await
            .map_err(pg)?
            .get(0);
        Ok((blobs as u64, used as u64))
    }

    pub(crate) async fn recipient(&self, user: &str) -> Result<Option<String>, IndexError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT recipient FROM incoming_keys WHERE user_name = $1",
            &[&user],
        )
        .await
        .map_err(pg)?
        .map(|r| r.get(0)))
    }

    pub(crate) async fn set_recipient(&self, user: &str, r: &str) -> Result<(), IndexError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO incoming_keys (user_name, recipient, updated) VALUES ($1, $2, $3) \
             ON CONFLICT (user_name) DO UPDATE SET recipient = excluded.recipient, \
             updated = excluded.updated",
            &[&user, &r, &now_secs()],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }
}

impl PgIndex {
    pub(crate) async fn backup_of(
        &self,
        user: &str,
    ) -> Result<Option<(Vec<u8>, String)>, IndexError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT data, etag FROM key_backups WHERE user_name = $1",
            &[&user],
        )
        .await
        .map_err(pg)?
        .map(|r| (r.get(0), r.get(1))))
    }

    /// The conditional write in one transaction: the row (or its absence) is locked by the
    /// `FOR UPDATE` read, or, for a first backup, by the primary key of the insert, so two
    /// nodes racing with the same condition cannot both win.
    pub(crate) async fn put_backup(
        &self,
        user: &str,
        data: &[u8],
        cond: &BackupCondition,
    ) -> Result<BackupOutcome, IndexError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let current: Option<String> = tx
            .query_opt(
                "SELECT etag FROM key_backups WHERE user_name = $1 FOR UPDATE",
                &[&user],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get(0));
        let etag = backup_etag(data);
        match (cond, &current) {
            (BackupCondition::Absent, None) => {
                let n = tx
                    .execute(
                        "INSERT INTO key_backups (user_name, data, etag, updated) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&user, &data, &etag, &now_secs()],
                    )
                    .await
                    .map_err(pg)?;
                if n == 0 {
                    // Another node stored the first backup meanwhile.
                    drop(tx);
                    return Ok(BackupOutcome::Conflict(
                        self.backup_of(user).await?.map(|b| b.1),
                    ));
                }
            }
            (BackupCondition::Matches(want), Some(have)) if want == have => {
                tx.execute(
                    "UPDATE key_backups SET data = $2, etag = $3, updated = $4 \
                     WHERE user_name = $1",
                    &[&user, &data, &etag, &now_secs()],
                )
                .await
                .map_err(pg)?;
            }
            _ => return Ok(BackupOutcome::Conflict(current)),
        }
        tx.commit().await.map_err(pg)?;
        Ok(BackupOutcome::Stored(etag))
    }
}

/// A fresh instance id: a random UUIDv4 as 32 lowercase hex (as the SQLite index makes).
pub fn new_instance_id() -> Result<String, IndexError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| IndexError::Batch("the OS random source failed".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(hex::encode(b))
}
