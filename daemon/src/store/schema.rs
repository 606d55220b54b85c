//! Numbered migrations of the store's SQLite schema. A released migration is never edited:
//! add a new one at the end. `PRAGMA user_version` holds how many have been applied.

use rusqlite::Connection;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: blobs, cursors, pause state, key/value meta.
    r#"
    CREATE TABLE blobs (
        ns               TEXT    NOT NULL,
        id               TEXT    NOT NULL,
        size             INTEGER,            -- plaintext bytes, once known
        remote_size      INTEGER,            -- stored bytes on the server, once known
        sha256           BLOB,               -- of the plaintext, once local
        status           INTEGER NOT NULL,   -- status::Status::code
        priority         INTEGER NOT NULL,   -- status::Priority::code
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        invalid_attempts INTEGER NOT NULL DEFAULT 0,
        upload_salt      BLOB,               -- header salt of our upload, set before the PUT
        external         INTEGER NOT NULL DEFAULT 0,
        created_ms       INTEGER NOT NULL,
        updated_ms       INTEGER NOT NULL,
        remote_seq       INTEGER,            -- server sequence number of the copy we know
        PRIMARY KEY (ns, id)
    ) WITHOUT ROWID;
    CREATE INDEX blobs_by_status ON blobs (status, ns, id);
    CREATE INDEX blobs_queue ON blobs (status, priority DESC, next_attempt_ms);
    CREATE TABLE cursors (ns TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE paused (ns TEXT PRIMARY KEY) WITHOUT ROWID;  -- '*' pauses everything
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    "#,
    // 2: the due queue in pick order, so `due` walks an index and stops at its LIMIT instead
    // of sorting every queued row (100k pending: 150 ms -> under 1 ms per pick).
    r#"
    CREATE INDEX blobs_due ON blobs (priority DESC, next_attempt_ms, created_ms, ns, id)
        WHERE status IN (2, 3, 6);
    "#,
    // 3: blob counts and bytes per (namespace, status), kept by triggers, so `status` reads a
    // handful of rows instead of grouping every blob (100k blobs: ~90 ms -> well under 1 ms).
    // A (namespace, status) whose count drops to 0 is deleted. Bytes are the plaintext size
    // when known, else the stored size, as `ops::counts` always reported. The UPDATE trigger
    // fires only when one of those values really changes (a transition rewrites `size` and
    // `remote_size` with COALESCE, usually to what they were).
    r#"
    CREATE TABLE counts (
        ns     TEXT    NOT NULL,
        status INTEGER NOT NULL,
        n      INTEGER NOT NULL,
        bytes  INTEGER NOT NULL,
        PRIMARY KEY (ns, status)
    ) WITHOUT ROWID;
    INSERT INTO counts (ns, status, n, bytes)
        SELECT ns, status, COUNT(*), SUM(COALESCE(size, remote_size, 0)) FROM blobs
        GROUP BY ns, status;
    CREATE TRIGGER counts_after_insert AFTER INSERT ON blobs BEGIN
        INSERT INTO counts (ns, status, n, bytes)
            VALUES (NEW.ns, NEW.status, 1, COALESCE(NEW.size, NEW.remote_size, 0))
            ON CONFLICT (ns, status) DO UPDATE SET n = n + 1, bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER counts_after_delete AFTER DELETE ON blobs BEGIN
        UPDATE counts SET n = n - 1, bytes = bytes - COALESCE(OLD.size, OLD.remote_size, 0)
            WHERE ns = OLD.ns AND status = OLD.status;
        DELETE FROM counts WHERE ns = OLD.ns AND status = OLD.status AND n <= 0;
    END;
    CREATE TRIGGER counts_after_update AFTER UPDATE OF ns, status, size, remote_size ON blobs
    WHEN OLD.ns IS NOT NEW.ns OR OLD.status IS NOT NEW.status
        OR COALESCE(OLD.size, OLD.remote_size, 0) IS NOT COALESCE(NEW.size, NEW.remote_size, 0)
    BEGIN
        UPDATE counts SET n = n - 1, bytes = bytes - COALESCE(OLD.size, OLD.remote_size, 0)
            WHERE ns = OLD.ns AND status = OLD.status;
        DELETE FROM counts WHERE ns = OLD.ns AND status = OLD.status AND n <= 0;
        INSERT INTO counts (ns, status, n, bytes)
            VALUES (NEW.ns, NEW.status, 1, COALESCE(NEW.size, NEW.remote_size, 0))
            ON CONFLICT (ns, status) DO UPDATE SET n = n + 1, bytes = bytes + excluded.bytes;
    END;
    "#,
    // 4: what the no-data-loss rules need. `upload_salt` now holds the header salt of the
    // version this device holds (uploaded or downloaded), so a delete proof can be checked
    // against it. `seen_salts` remembers every salt ever held per id, kept by triggers so no
    // code path can forget one: a remote version with a salt seen before is a rollback.
    // `held_deletions` are proven remote deletions not applied yet: the mass-deletion guard
    // holds them until the user allows them. `reupload` marks a blob this device is uploading
    // again because the server lost it: a 409 then means another device of the user got
    // there first, and its copy is taken instead of failing the upload as a conflict.
    r#"
    CREATE TABLE seen_salts (
        ns   TEXT NOT NULL,
        id   TEXT NOT NULL,
        salt BLOB NOT NULL,
        PRIMARY KEY (ns, id, salt)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO seen_salts (ns, id, salt)
        SELECT ns, id, upload_salt FROM blobs WHERE upload_salt IS NOT NULL;
    CREATE TRIGGER seen_salts_after_insert AFTER INSERT ON blobs
    WHEN NEW.upload_salt IS NOT NULL BEGIN
        INSERT OR IGNORE INTO seen_salts (ns, id, salt) VALUES (NEW.ns, NEW.id, NEW.upload_salt);
    END;
    CREATE TRIGGER seen_salts_after_update AFTER UPDATE OF upload_salt ON blobs
    WHEN NEW.upload_salt IS NOT NULL BEGIN
        INSERT OR IGNORE INTO seen_salts (ns, id, salt) VALUES (NEW.ns, NEW.id, NEW.upload_salt);
    END;
    ALTER TABLE blobs ADD COLUMN reupload INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE held_deletions (
        ns  TEXT    NOT NULL,
        id  TEXT    NOT NULL,
        seq INTEGER NOT NULL,       -- the tombstone's sequence number
        PRIMARY KEY (ns, id)
    ) WITHOUT ROWID;
    "#,
    // Incoming box: a decrypted delivery waiting to be adopted on the server (the SHA-256
    // of the age file it replaces there); the row goes with its blob. External copies kept
    // raw by older builds are fetched again, to be decrypted and adopted.
    r#"
    CREATE TABLE incoming_adoptions (
        ns         TEXT NOT NULL,
        id         TEXT NOT NULL,
        age_sha256 BLOB NOT NULL,
        PRIMARY KEY (ns, id)
    ) WITHOUT ROWID;
    CREATE TRIGGER incoming_adoptions_gone AFTER DELETE ON blobs BEGIN
        DELETE FROM incoming_adoptions WHERE ns = OLD.ns AND id = OLD.id;
    END;
    UPDATE blobs SET status = 3, size = NULL, sha256 = NULL, attempts = 0,
        next_attempt_ms = 0
        WHERE external = 1 AND status = 1;
    "#,
    // 6: payloads are stored in blob format v1 (docs/local-store.md). Those written by
    // earlier releases hold plaintext; they are listed here until the at-rest migration
    // (`engine::atrest`) has sealed each one, and read as plaintext meanwhile. Statuses with a
    // payload: SYNCED 1, PENDING_UPLOAD 2, FAILED_UPLOAD 5, LOCAL_ONLY 7; a contested or
    // lost blob may keep one through PENDING_DOWNLOAD 3, so those are listed too (a row
    // without a file is simply skipped).
    r#"
    CREATE TABLE plain_payloads (
        ns TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (ns, id)
    ) WITHOUT ROWID;
    INSERT INTO plain_payloads (ns, id)
        SELECT ns, id FROM blobs WHERE status IN (1, 2, 3, 5, 7);
    CREATE TRIGGER plain_payloads_gone AFTER DELETE ON blobs BEGIN
        DELETE FROM plain_payloads WHERE ns = OLD.ns AND id = OLD.id;
    END;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Errors from [`migrate`].
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The file was written by a newer blobsyncd.
    #[error(
        "store schema version {found} is newer than this blobsyncd ({SCHEMA_VERSION}); upgrade blobsyncd"
    )]
    TooNew {
        /// The file's version.
        found: u32,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Applies every migration the file lacks, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<u32, MigrateError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Applies the migrations the file lacks up to version `target` (at most
/// [`SCHEMA_VERSION`]), each in its own transaction; returns the version reached. Tests use
/// it to build a store file as an older blobsyncd left it.
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<u32, MigrateError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(MigrateError::TooNew { found });
    }
    let target = target.min(SCHEMA_VERSION);
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target as usize)
        .skip(found as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(found.max(target))
}
