//! The store's SQL, as plain synchronous functions on a `Connection` (called only on the
//! store thread, and directly by store tests).
//!
//! Status columns are written only by [`transition`], [`insert_local`] and
//! [`apply_remote`]'s inserts, each of which goes through the state machine.

use std::collections::BTreeMap;
use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::StoreError;
use crate::clock::{from_millis, to_millis};
use crate::status::{IllegalTransition, Next, Priority, Status, Transition};

/// `execute` through the statement cache: rusqlite's `Connection::execute` prepares on every
/// call, and parsing (with trigger code generation) cost more than running the statement.
pub(crate) fn exec(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

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

/// A page request for [`list`].
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

/// Which queued blobs [`due`] returns.
#[derive(Debug, Clone)]
pub struct DueFilter {
    /// Only those due at or before this time.
    pub now: SystemTime,
    /// At most this many.
    pub limit: usize,
    /// Only these statuses (empty: every queued status).
    pub statuses: Vec<Status>,
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
    /// listing by [`apply_held`], unless the mass-deletion guard holds it.
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

pub(crate) const COLS: &str = "ns, id, size, remote_size, sha256, status, priority, attempts, \
    next_attempt_ms, last_error, invalid_attempts, upload_salt, external, created_ms, \
    updated_ms, remote_seq, reupload";

fn corrupt(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
}

fn blob32(v: Option<Vec<u8>>) -> rusqlite::Result<Option<[u8; 32]>> {
    v.map(|b| {
        <[u8; 32]>::try_from(b.as_slice())
            .map_err(|_| corrupt(format!("expected 32 bytes, found {}", b.len())))
    })
    .transpose()
}

pub(crate) fn row(r: &Row<'_>) -> rusqlite::Result<BlobInfo> {
    let ns: String = r.get(0)?;
    let id: String = r.get(1)?;
    let status: i64 = r.get(5)?;
    let priority: i64 = r.get(6)?;
    let next_ms: i64 = r.get(8)?;
    Ok(BlobInfo {
        ns: Namespace::new(ns).map_err(|e| corrupt(e.to_string()))?,
        id: BlobId::new(id).map_err(|e| corrupt(e.to_string()))?,
        size: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        remote_size: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        sha256: blob32(r.get(4)?)?,
        status: Status::from_code(status).ok_or_else(|| corrupt(format!("status {status}")))?,
        priority: Priority::from_code(priority)
            .ok_or_else(|| corrupt(format!("priority {priority}")))?,
        attempts: r.get::<_, i64>(7)? as u32,
        next_attempt: (next_ms > 0).then(|| from_millis(next_ms)),
        last_error: r.get(9)?,
        invalid_attempts: r.get::<_, i64>(10)? as u32,
        upload_salt: blob32(r.get(11)?)?,
        external: r.get(12)?,
        created: from_millis(r.get(13)?),
        updated: from_millis(r.get(14)?),
        remote_seq: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
        reupload: r.get(16)?,
    })
}

fn now_ms(t: Option<SystemTime>) -> i64 {
    to_millis(t.unwrap_or_else(SystemTime::now))
}

/// Inserts a locally put blob; `AlreadyExists` if the key is taken.
pub fn insert_local(
    c: &mut Connection,
    b: &NewLocalBlob,
) -> Result<(BlobInfo, StatusChange), StoreError> {
    let tx = c.transaction()?;
    let out = insert_local_in(&tx, b)?;
    tx.commit()?;
    Ok(out)
}

/// Inserts many local puts in ONE transaction (group commit: one WAL fsync for all of them).
/// Each put gets its own result: an id that exists already is `AlreadyExists` for that put
/// alone; any other error fails the whole group, and nothing is committed.
#[allow(clippy::type_complexity)] // one result per put, inside the group's result
pub fn insert_local_many(
    c: &mut Connection,
    blobs: &[NewLocalBlob],
) -> Result<Vec<Result<(BlobInfo, StatusChange), StoreError>>, StoreError> {
    let tx = c.transaction()?;
    let mut out = Vec::with_capacity(blobs.len());
    for b in blobs {
        match insert_local_in(&tx, b) {
            Err(e @ StoreError::AlreadyExists { .. }) => out.push(Err(e)),
            Err(e) => return Err(e),
            Ok(v) => out.push(Ok(v)),
        }
    }
    tx.commit()?;
    Ok(out)
}

/// The insert of [`insert_local`], inside the caller's transaction.
fn insert_local_in(
    tx: &Connection,
    b: &NewLocalBlob,
) -> Result<(BlobInfo, StatusChange), StoreError> {
    if let Some(old) = get(tx, &b.ns, &b.id)? {
        return Err(StoreError::AlreadyExists {
            ns: b.ns.clone(),
            id: b.id.clone(),
            status: old.status,
        });
    }
    let status = if b.local_only {
        Status::LocalOnly
    } else {
        Status::PendingUpload
    };
    let t = to_millis(b.created);
    exec(
        tx,
        "INSERT INTO blobs (ns, id, size, sha256, status, priority, created_ms, updated_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            b.ns.as_str(),
            b.id.as_str(),
            b.size as i64,
            &b.sha256[..],
            status.code(),
            b.priority.code(),
            t
        ],
    )?;
    let info = get(tx, &b.ns, &b.id)?.expect("inserted just above"); // same transaction
    let change = StatusChange {
        ns: b.ns.clone(),
        id: b.id.clone(),
        from: None,
        to: Some(status),
    };
    Ok((info, change))
}

/// One blob.
pub fn get(c: &Connection, ns: &Namespace, id: &BlobId) -> Result<Option<BlobInfo>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM blobs WHERE ns = ?1 AND id = ?2"
    ))?;
    Ok(st
        .query_row(params![ns.as_str(), id.as_str()], row)
        .optional()?)
}

/// A page in (namespace, id) order.
pub fn list(c: &Connection, f: &ListFilter) -> Result<Vec<BlobInfo>, StoreError> {
    let mut sql = format!("SELECT {COLS} FROM blobs WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(ns) = &f.ns {
        args.push(ns.as_str().to_owned().into());
        sql.push_str(&format!(" AND ns = ?{}", args.len()));
    }
    if let Some(s) = f.status {
        args.push(s.code().into());
        sql.push_str(&format!(" AND status = ?{}", args.len()));
    }
    if let Some((ans, aid)) = &f.after {
        args.push(ans.as_str().to_owned().into());
        args.push(aid.as_str().to_owned().into());
        sql.push_str(&format!(
            " AND (ns, id) > (?{}, ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    let limit = if f.limit == 0 { 1000 } else { f.limit };
    sql.push_str(&format!(" ORDER BY ns, id LIMIT {limit}"));
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every row of a namespace (the listing diff's local side).
pub fn namespace_rows(c: &Connection, ns: &Namespace) -> Result<Vec<BlobInfo>, StoreError> {
    let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM blobs WHERE ns = ?1"))?;
    let rows = st.query_map(params![ns.as_str()], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The rows of `ns` for these ids (those that exist), for an incremental listing's diff:
/// O(changes), where [`namespace_rows`] is O(blobs).
pub fn rows_for(
    c: &Connection,
    ns: &Namespace,
    ids: &[BlobId],
) -> Result<Vec<BlobInfo>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(get(c, ns, id)?);
    }
    Ok(out)
}

/// One page of (id, status) of `ns` in id order, after `after` (exclusive): what a full
/// listing checks for rows the server no longer names, without loading whole rows (a full
/// listing walks every row of the namespace this way, `limit` at a time).
pub fn id_status_page(
    c: &Connection,
    ns: &Namespace,
    after: Option<&BlobId>,
    limit: usize,
) -> Result<Vec<(BlobId, Status, bool)>, StoreError> {
    // "" sorts before every valid id (ids are 1-128 characters).
    let after = after.map_or("", |a| a.as_str());
    let mut st = c.prepare_cached(
        "SELECT id, status, upload_salt IS NOT NULL FROM blobs \
         WHERE ns = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = st.query_map(params![ns.as_str(), after, limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    let mut out = Vec::with_capacity(limit.min(4096));
    for r in rows {
        let (id, code, salted) = r?;
        let id = BlobId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let status =
            Status::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("status {code}")))?;
        out.push((id, status, salted));
    }
    Ok(out)
}

/// The rows of `ns` in one status (walks the `blobs_by_status` index).
pub fn rows_with_status(
    c: &Connection,
    ns: &Namespace,
    status: Status,
) -> Result<Vec<BlobInfo>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM blobs WHERE status = ?1 AND ns = ?2"
    ))?;
    let rows = st.query_map(params![status.code(), ns.as_str()], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const PAUSE_ALL: &str = "*";

/// Queued blobs due now in unpaused namespaces: priority, then due time, then age.
pub fn due(c: &Connection, f: &DueFilter) -> Result<Vec<BlobInfo>, StoreError> {
    if is_paused_all(c)? {
        return Ok(Vec::new());
    }
    // `status IN (2, 3, 6)` literally, so SQLite can walk the partial index `blobs_due` in
    // pick order and stop at the LIMIT. A blob whose proven remote deletion the guard holds is
    // not transferred either: uploading it would undo the deletion the user has yet to judge.
    let extra = if f.statuses.is_empty() {
        String::new()
    } else {
        let codes: Vec<String> = f.statuses.iter().map(|s| s.code().to_string()).collect();
        format!(" AND status IN ({})", codes.join(","))
    };
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM blobs INDEXED BY blobs_due WHERE status IN (2, 3, 6){extra} \
         AND next_attempt_ms <= ?1 AND ns NOT IN (SELECT ns FROM paused) {NOT_HELD} \
         ORDER BY priority DESC, next_attempt_ms, created_ms, ns, id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![to_millis(f.now), f.limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Leaves out the blobs whose remote deletion the mass-deletion guard holds.
const NOT_HELD: &str = "AND NOT EXISTS (SELECT 1 FROM held_deletions h \
    WHERE h.ns = blobs.ns AND h.id = blobs.id)";

/// The earliest next attempt of a queued blob (unpaused namespaces).
pub fn next_due(c: &mut Connection) -> Result<Option<SystemTime>, StoreError> {
    if is_paused_all(c)? {
        return Ok(None);
    }
    let ms: Option<i64> = c.query_row(
        &format!(
            "SELECT MIN(next_attempt_ms) FROM blobs WHERE status IN (2, 3, 6) \
             AND ns NOT IN (SELECT ns FROM paused) {NOT_HELD}"
        ),
        [],
        |r| r.get(0),
    )?;
    Ok(ms.map(from_millis))
}

/// Counts per status and namespace, read from the trigger-kept `counts` table (schema
/// migration 3): O(namespaces x statuses), not O(blobs), since `status` asks for it on every
/// call and systemd's `STATUS=` line every few seconds.
pub fn counts(c: &mut Connection) -> Result<Counts, StoreError> {
    let mut out = Counts::default();
    let mut st = c.prepare_cached("SELECT ns, status, n, bytes FROM counts WHERE n > 0")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let ns: String = r.get(0)?;
        let code: i64 = r.get(1)?;
        let n: i64 = r.get(2)?;
        let bytes: i64 = r.get(3)?;
        let ns = Namespace::new(ns).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let s =
            Status::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("status {code}")))?;
        *out.by_status.entry(s).or_default() += n as u64;
        *out.bytes_by_status.entry(s).or_default() += bytes as u64;
        *out.bytes_by_namespace
            .entry(ns.clone())
            .or_default()
            .entry(s)
            .or_default() += bytes as u64;
        *out.by_namespace
            .entry(ns)
            .or_default()
            .entry(s)
            .or_default() += n as u64;
    }
    Ok(out)
}

/// Namespaces with rows or a cursor.
pub fn namespaces(c: &mut Connection) -> Result<Vec<Namespace>, StoreError> {
    // A skip scan of the primary key (one seek per namespace), not `SELECT DISTINCT ns`,
    // which reads every row: every cycle asks, so this must not grow with the blob count.
    let mut st = c.prepare_cached(
        "WITH RECURSIVE n(ns) AS (SELECT MIN(ns) FROM blobs UNION ALL \
           SELECT (SELECT MIN(b.ns) FROM blobs b WHERE b.ns > n.ns) FROM n WHERE n.ns IS NOT NULL) \
         SELECT ns FROM n WHERE ns IS NOT NULL UNION SELECT ns FROM cursors ORDER BY 1",
    )?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for ns in rows {
        out.push(Namespace::new(ns?).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    Ok(out)
}

/// Applies `t` to the blob and writes the row updates. Counters reset on every status change
/// except into a failed status (which keeps them, to show how many attempts were made).
pub fn transition(
    c: &Connection,
    ns: &Namespace,
    id: &BlobId,
    t: Transition,
    u: &RowUpdate,
) -> Result<StatusChange, StoreError> {
    let cur = get(c, ns, id)?.ok_or_else(|| StoreError::NotFound {
        ns: ns.clone(),
        id: id.clone(),
    })?;
    let next = cur.status.apply(t)?;
    let to = match next {
        Next::Gone => {
            exec(
                c,
                "DELETE FROM blobs WHERE ns = ?1 AND id = ?2",
                params![ns.as_str(), id.as_str()],
            )?;
            None
        }
        Next::Is(s) => {
            let keep = matches!(s, Status::FailedDownload | Status::FailedUpload);
            // A download installs a sealed payload in place of whatever was there.
            if t == Transition::DownloadSucceeded {
                super::plain::unmark_plain(c, ns, id)?;
            }
            // Our own upload: the seq of any earlier copy under this id is not ours, and must
            // not make the next listing think our blob was replaced.
            if t == Transition::UploadSucceeded {
                exec(
                    c,
                    "UPDATE blobs SET remote_seq = NULL WHERE ns = ?1 AND id = ?2",
                    params![ns.as_str(), id.as_str()],
                )?;
            }
            exec(
                c,
                "UPDATE blobs SET status = ?3, \
                   size = COALESCE(?4, size), sha256 = COALESCE(?5, sha256), \
                   remote_size = COALESCE(?6, remote_size), last_error = ?7, \
                   attempts = CASE WHEN ?8 THEN attempts ELSE 0 END, \
                   invalid_attempts = CASE WHEN ?8 THEN invalid_attempts ELSE 0 END, \
                   next_attempt_ms = 0, updated_ms = ?9, \
                   upload_salt = COALESCE(?10, upload_salt), reupload = ?11 \
                 WHERE ns = ?1 AND id = ?2",
                params![
                    ns.as_str(),
                    id.as_str(),
                    s.code(),
                    u.size.map(|v| v as i64),
                    u.sha256.as_ref().map(|h| &h[..]),
                    u.remote_size.map(|v| v as i64),
                    u.last_error,
                    keep,
                    now_ms(u.now),
                    u.salt.as_ref().map(|h| &h[..]),
                    matches!(t, Transition::LostRemotely | Transition::Contested),
                ],
            )?;
            Some(s)
        }
    };
    Ok(StatusChange {
        ns: ns.clone(),
        id: id.clone(),
        from: Some(cur.status),
        to,
    })
}

/// Many transitions in one transaction; illegal or missing ones are skipped.
pub fn transition_many(
    c: &mut Connection,
    ns: &Namespace,
    items: &[(BlobId, Transition, RowUpdate)],
) -> Result<Vec<StatusChange>, StoreError> {
    let tx = c.transaction()?;
    let mut out = Vec::with_capacity(items.len());
    for (id, t, u) in items {
        match transition(&tx, ns, id, *t, u) {
            Ok(ch) => out.push(ch),
            Err(StoreError::Illegal(_) | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Records a failed attempt: attempts + 1, the error and the next attempt time; a download
/// that failed verification for the `max_invalid`-th time moves to `FAILED_DOWNLOAD`.
pub fn record_failure(
    c: &mut Connection,
    ns: &Namespace,
    id: &BlobId,
    p: &RetryPlan,
) -> Result<Option<StatusChange>, StoreError> {
    let tx = c.transaction()?;
    let cur = get(&tx, ns, id)?.ok_or_else(|| StoreError::NotFound {
        ns: ns.clone(),
        id: id.clone(),
    })?;
    if !cur.status.is_queued() {
        // The row moved on (deleted, retried by hand) while the transfer ran.
        return Ok(None);
    }
    let invalid = cur.invalid_attempts + u32::from(p.invalid);
    exec(
        &tx,
        "UPDATE blobs SET attempts = attempts + 1, invalid_attempts = ?3, last_error = ?4, \
           next_attempt_ms = ?5, updated_ms = ?6 WHERE ns = ?1 AND id = ?2",
        params![
            ns.as_str(),
            id.as_str(),
            invalid as i64,
            p.error,
            to_millis(p.next_attempt),
            to_millis(p.now)
        ],
    )?;
    let mut change = None;
    if p.invalid && invalid >= p.max_invalid {
        let u = RowUpdate {
            last_error: Some(format!(
                "{} (failed verification {invalid} times; `blobctl retry` to try again)",
                p.error
            )),
            now: Some(p.now),
            ..Default::default()
        };
        change = Some(transition(&tx, ns, id, Transition::DownloadInvalid, &u)?);
    }
    tx.commit()?;
    Ok(change)
}

/// Records the salt of our upload (first attempt only: later attempts reuse it, so a 409
/// after a lost response is still recognised as ours).
pub fn set_upload_salt(
    c: &mut Connection,
    ns: &Namespace,
    id: &BlobId,
    salt: &[u8; 32],
) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE blobs SET upload_salt = ?3 WHERE ns = ?1 AND id = ?2 AND upload_salt IS NULL",
        params![ns.as_str(), id.as_str(), &salt[..]],
    )?;
    Ok(())
}

/// Up to `limit` `SYNCED` rows with no salt recorded (copies downloaded by a daemon older than
/// delete proofs), for the backfill of `Engine::backfill_salts`.
pub fn synced_without_salt(c: &mut Connection, limit: usize) -> Result<Vec<BlobInfo>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM blobs WHERE status = 1 AND upload_salt IS NULL AND external = 0 LIMIT ?1"
    ))?;
    let rows = st.query_map(params![limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records the salt AND the stored size of our first upload attempt: the size lets a later
/// tombstone be recognised as our own upload deleted elsewhere (see `engine::plan::diff`).
pub fn record_upload_attempt(
    c: &mut Connection,
    ns: &Namespace,
    id: &BlobId,
    salt: &[u8; 32],
    stored_size: u64,
) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE blobs SET upload_salt = ?3, remote_size = ?4 \
         WHERE ns = ?1 AND id = ?2 AND upload_salt IS NULL",
        params![ns.as_str(), id.as_str(), &salt[..], stored_size as i64],
    )?;
    Ok(())
}

/// [`record_upload_attempt`] for many blobs of one namespace in ONE transaction: a `/stream`
/// batch records all its salts with one commit (one WAL fsync) instead of one per blob.
pub fn record_upload_attempts(
    c: &mut Connection,
    ns: &Namespace,
    items: &[(BlobId, [u8; 32], u64)],
) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "UPDATE blobs SET upload_salt = ?3, remote_size = ?4 \
             WHERE ns = ?1 AND id = ?2 AND upload_salt IS NULL",
        )?;
        for (id, salt, stored_size) in items {
            st.execute(params![
                ns.as_str(),
                id.as_str(),
                &salt[..],
                *stored_size as i64
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Applies listing facts and sets the cursor, in one transaction. Facts that no longer fit
/// the row (it changed since the diff) are skipped.
pub fn apply_remote(
    c: &mut Connection,
    ns: &Namespace,
    facts: &[RemoteFact],
    cursor: Option<u64>,
    now: SystemTime,
) -> Result<Vec<StatusChange>, StoreError> {
    let tx = c.transaction()?;
    let mut out = Vec::new();
    let now_ms = to_millis(now);
    for f in facts {
        match f {
            RemoteFact::New {
                id,
                remote_size,
                created,
                external,
                seq,
                status,
            } => {
                debug_assert!(matches!(
                    status,
                    Status::PendingDownload | Status::RemoteOnly
                ));
                let n = exec(
                    &tx,
                    "INSERT OR IGNORE INTO blobs (ns, id, remote_size, status, priority, external, \
                       created_ms, updated_ms, remote_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        ns.as_str(),
                        id.as_str(),
                        *remote_size as i64,
                        status.code(),
                        Priority::default().code(),
                        external,
                        to_millis(*created),
                        now_ms,
                        *seq as i64
                    ],
                )?;
                if n == 1 {
                    out.push(StatusChange {
                        ns: ns.clone(),
                        id: id.clone(),
                        from: None,
                        to: Some(*status),
                    });
                }
                unhold(&tx, ns, id)?;
            }
            RemoteFact::ProvenDelete { id, seq } => {
                exec(
                    &tx,
                    "INSERT INTO held_deletions (ns, id, seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (ns, id) DO UPDATE SET seq = excluded.seq",
                    params![ns.as_str(), id.as_str(), *seq as i64],
                )?;
            }
            RemoteFact::Lost { id, .. } => {
                let u = RowUpdate {
                    now: Some(now),
                    ..Default::default()
                };
                unhold(&tx, ns, id)?;
                match transition(&tx, ns, id, Transition::LostRemotely, &u) {
                    Ok(ch) => {
                        // Whatever seq we knew belongs to the copy the server lost. The upload
                        // takes a fresh salt (a fresh key): its header may differ from the lost
                        // copy's (segment size), and a salt is never used for two encodings.
                        exec(
                            &tx,
                            "UPDATE blobs SET remote_seq = NULL, upload_salt = NULL \
                             WHERE ns = ?1 AND id = ?2",
                            params![ns.as_str(), id.as_str()],
                        )?;
                        out.push(ch);
                    }
                    Err(StoreError::Illegal(_) | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            RemoteFact::Gone { id } => {
                let t = match get(&tx, ns, id)? {
                    Some(b) if b.status == Status::PendingDelete => Transition::DeleteConfirmed,
                    Some(b) if b.status == Status::PendingUpload => {
                        Transition::UploadDeletedRemotely
                    }
                    Some(_) => Transition::DeletedRemotely,
                    None => continue,
                };
                let u = RowUpdate {
                    now: Some(now),
                    ..Default::default()
                };
                match transition(&tx, ns, id, t, &u) {
                    Ok(ch) => out.push(ch),
                    Err(StoreError::Illegal(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            RemoteFact::Replaced {
                id,
                seq,
                remote_size,
            } => {
                let u = RowUpdate {
                    remote_size: Some(*remote_size),
                    now: Some(now),
                    ..Default::default()
                };
                unhold(&tx, ns, id)?;
                match transition(&tx, ns, id, Transition::ReplacedRemotely, &u) {
                    Ok(ch) => {
                        exec(
                            &tx,
                            "UPDATE blobs SET remote_seq = ?3, sha256 = NULL, size = NULL \
                             WHERE ns = ?1 AND id = ?2",
                            params![ns.as_str(), id.as_str(), *seq as i64],
                        )?;
                        out.push(ch);
                    }
                    Err(StoreError::Illegal(_) | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            RemoteFact::Seen {
                id,
                seq,
                remote_size,
            } => {
                unhold(&tx, ns, id)?;
                exec(
                    &tx,
                    "UPDATE blobs SET remote_seq = ?3, remote_size = ?4 WHERE ns = ?1 AND id = ?2",
                    params![ns.as_str(), id.as_str(), *seq as i64, *remote_size as i64],
                )?;
            }
        }
    }
    if let Some(seq) = cursor {
        exec(
            &tx,
            "INSERT INTO cursors (ns, seq) VALUES (?1, ?2) \
             ON CONFLICT (ns) DO UPDATE SET seq = excluded.seq",
            params![ns.as_str(), seq as i64],
        )?;
    }
    tx.commit()?;
    Ok(out)
}

/// A live copy was listed for the id after all: a deletion held for it no longer applies.
fn unhold(c: &Connection, ns: &Namespace, id: &BlobId) -> rusqlite::Result<usize> {
    exec(
        c,
        "DELETE FROM held_deletions WHERE ns = ?1 AND id = ?2",
        params![ns.as_str(), id.as_str()],
    )
}

/// How many proven remote deletions are held for a namespace.
pub fn held_count(c: &mut Connection, ns: &Namespace) -> Result<u64, StoreError> {
    let n: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM held_deletions WHERE ns = ?1")?
        .query_row(params![ns.as_str()], |r| r.get(0))?;
    Ok(n as u64)
}

/// Applies every held deletion of a namespace (one transaction) and forgets them: a row the
/// user changed meanwhile in a way a remote deletion does not touch is left alone.
pub fn apply_held(
    c: &mut Connection,
    ns: &Namespace,
    now: SystemTime,
) -> Result<Vec<StatusChange>, StoreError> {
    let tx = c.transaction()?;
    let ids: Vec<String> = {
        let mut st = tx.prepare_cached("SELECT id FROM held_deletions WHERE ns = ?1")?;
        st.query_map(params![ns.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::with_capacity(ids.len());
    let u = RowUpdate {
        now: Some(now),
        ..Default::default()
    };
    for id in ids {
        let Ok(id) = BlobId::new(id) else { continue };
        let t = match get(&tx, ns, &id)? {
            Some(b) if b.status == Status::PendingDelete => Transition::DeleteConfirmed,
            Some(b) if b.status == Status::PendingUpload => Transition::UploadDeletedRemotely,
            Some(_) => Transition::DeletedRemotely,
            None => continue,
        };
        match transition(&tx, ns, &id, t, &u) {
            Ok(ch) => out.push(ch),
            Err(StoreError::Illegal(_)) => {}
            Err(e) => return Err(e),
        }
    }
    exec(
        &tx,
        "DELETE FROM held_deletions WHERE ns = ?1",
        params![ns.as_str()],
    )?;
    tx.commit()?;
    Ok(out)
}

/// Every header salt this device has held for `ns/id` (rollback protection).
pub fn seen_salts(
    c: &mut Connection,
    ns: &Namespace,
    id: &BlobId,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut st = c.prepare_cached("SELECT salt FROM seen_salts WHERE ns = ?1 AND id = ?2")?;
    let rows = st.query_map(params![ns.as_str(), id.as_str()], |r| {
        blob32(Some(r.get(0)?)).map(|s| s.expect("Some in, Some out"))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The remote changed (another URL, user or server instance): forget everything learnt from
/// the old one — cursors (the next listing is full), the sequence numbers of known copies
/// (they are the old server's) and held deletions — and record the new identity, in one
/// transaction. Local blobs and their statuses stay: the full listing reconciles them.
///
/// The salts of synced copies are forgotten too, and the salt backfill re-armed: a copy the
/// new remote holds may be another device's re-upload (another salt), and a later delete
/// proof names the server's version. The backfill reads each present copy's salt from its
/// header; an absent one is uploaded again under a fresh salt (docs/sync.md, "Remote
/// identity").
pub fn reset_remote(c: &mut Connection, identity: &str) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    exec(&tx, "DELETE FROM cursors", [])?;
    exec(&tx, "DELETE FROM held_deletions", [])?;
    exec(
        &tx,
        "UPDATE blobs SET remote_seq = NULL WHERE remote_seq IS NOT NULL",
        [],
    )?;
    exec(
        &tx,
        "UPDATE blobs SET upload_salt = NULL WHERE status = 1 AND external = 0",
        [],
    )?;
    set_meta(&tx, SALT_BACKFILL_DONE, None)?;
    set_meta(&tx, REMOTE_IDENTITY, Some(identity))?;
    tx.commit()?;
    Ok(())
}

/// Meta key of the remote this store synced with (see [`reset_remote`]).
pub const REMOTE_IDENTITY: &str = "remote_identity";

/// Meta key set once every synced copy's salt is known (`Engine::backfill_salts`).
pub const SALT_BACKFILL_DONE: &str = "salt_backfill_done";

/// `retry` on one blob: a failed blob is re-queued; a queued one becomes due now.
pub fn retry(c: &mut Connection, ns: &Namespace, id: &BlobId) -> Result<StatusChange, StoreError> {
    let tx = c.transaction()?;
    let cur = get(&tx, ns, id)?.ok_or_else(|| StoreError::NotFound {
        ns: ns.clone(),
        id: id.clone(),
    })?;
    let ch = if cur.status.is_queued() {
        exec(
            &tx,
            "UPDATE blobs SET next_attempt_ms = 0, attempts = 0, invalid_attempts = 0 \
             WHERE ns = ?1 AND id = ?2",
            params![ns.as_str(), id.as_str()],
        )?;
        StatusChange {
            ns: ns.clone(),
            id: id.clone(),
            from: Some(cur.status),
            to: Some(cur.status),
        }
    } else {
        transition(&tx, ns, id, Transition::Requeue, &RowUpdate::default())?
    };
    tx.commit()?;
    Ok(ch)
}

/// Re-queues every failed blob.
pub fn retry_all_failed(c: &mut Connection) -> Result<Vec<StatusChange>, StoreError> {
    let tx = c.transaction()?;
    let failed: Vec<(String, String)> = {
        let mut st = tx.prepare("SELECT ns, id FROM blobs WHERE status IN (4, 5)")?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(failed.len());
    for (ns, id) in failed {
        let ns = Namespace::new(ns).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = BlobId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.push(transition(
            &tx,
            &ns,
            &id,
            Transition::Requeue,
            &RowUpdate::default(),
        )?);
    }
    tx.commit()?;
    Ok(out)
}

/// Sets a blob's priority.
pub fn set_priority(
    c: &mut Connection,
    ns: &Namespace,
    id: &BlobId,
    p: Priority,
) -> Result<BlobInfo, StoreError> {
    let n = exec(
        c,
        "UPDATE blobs SET priority = ?3 WHERE ns = ?1 AND id = ?2",
        params![ns.as_str(), id.as_str(), p.code()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound {
            ns: ns.clone(),
            id: id.clone(),
        });
    }
    Ok(get(c, ns, id)?.expect("updated just above")) // single-threaded connection
}

/// A namespace's cursor.
pub fn cursor(c: &mut Connection, ns: &Namespace) -> Result<Option<u64>, StoreError> {
    Ok(c.query_row(
        "SELECT seq FROM cursors WHERE ns = ?1",
        params![ns.as_str()],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .map(|v| v as u64))
}

/// Forgets a cursor.
pub fn clear_cursor(c: &mut Connection, ns: &Namespace) -> Result<(), StoreError> {
    exec(c, "DELETE FROM cursors WHERE ns = ?1", params![ns.as_str()])?;
    Ok(())
}

fn is_paused_all(c: &Connection) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM paused WHERE ns = ?1)",
        params![PAUSE_ALL],
        |r| r.get(0),
    )?)
}

/// Paused namespaces (`None`: all).
pub fn paused(c: &mut Connection) -> Result<Vec<Option<Namespace>>, StoreError> {
    let mut st = c.prepare_cached("SELECT ns FROM paused ORDER BY ns")?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for ns in rows {
        let ns = ns?;
        out.push(if ns == PAUSE_ALL {
            None
        } else {
            Some(Namespace::new(ns).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        });
    }
    Ok(out)
}

/// Pauses or resumes; resuming "all" also clears every per-namespace pause.
pub fn set_paused(
    c: &mut Connection,
    ns: Option<&Namespace>,
    paused: bool,
) -> Result<(), StoreError> {
    let key = ns.map_or(PAUSE_ALL, |n| n.as_str());
    if paused {
        exec(
            c,
            "INSERT OR IGNORE INTO paused (ns) VALUES (?1)",
            params![key],
        )?;
    } else if ns.is_none() {
        exec(c, "DELETE FROM paused", [])?;
    } else {
        exec(c, "DELETE FROM paused WHERE ns = ?1", params![key])?;
    }
    Ok(())
}

/// Increments the persistent cycle counter.
pub fn next_cycle(c: &mut Connection) -> Result<u64, StoreError> {
    let n: i64 = c.query_row(
        "INSERT INTO meta (key, value) VALUES ('cycle', '1') \
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value",
        [],
        |r| r.get::<_, String>(0).map(|s| s.parse().unwrap_or(1)),
    )?;
    Ok(n as u64)
}

/// A meta value.
pub fn meta(c: &mut Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(
        c.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?,
    )
}

/// Sets or removes a meta value.
pub fn set_meta(c: &Connection, key: &str, value: Option<&str>) -> Result<(), StoreError> {
    match value {
        Some(v) => exec(
            c,
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, v],
        )?,
        None => exec(c, "DELETE FROM meta WHERE key = ?1", params![key])?,
    };
    Ok(())
}

impl From<IllegalTransition> for rusqlite::Error {
    fn from(e: IllegalTransition) -> Self {
        corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn open() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("s.sqlite")).unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        (dir, c)
    }

    fn put(c: &mut Connection, ns: &str, id: &str, p: Priority, t: u64) -> BlobInfo {
        let b = NewLocalBlob {
            ns: Namespace::new(ns).unwrap(),
            id: BlobId::new(id).unwrap(),
            size: 3,
            sha256: [0; 32],
            priority: p,
            local_only: false,
            created: UNIX_EPOCH + Duration::from_secs(t),
        };
        insert_local(c, &b).unwrap().0
    }

    #[test]
    fn migrations_run_from_scratch_and_are_idempotent() {
        let (dir, mut c) = open();
        assert_eq!(
            crate::store::schema::migrate(&mut c).unwrap(),
            crate::store::schema::SCHEMA_VERSION
        );
        drop(c);
        let mut c = Connection::open(dir.path().join("s.sqlite")).unwrap();
        assert_eq!(
            crate::store::schema::migrate(&mut c).unwrap(),
            crate::store::schema::SCHEMA_VERSION
        );
        c.pragma_update(None, "user_version", 99).unwrap();
        let e = crate::store::schema::migrate(&mut c).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn a_remote_change_forgets_the_salts_of_synced_copies_and_rearms_the_backfill() {
        let (_d, mut c) = open();
        let ns = Namespace::default();
        let synced = put(&mut c, "default", "s", Priority::Medium, 1);
        let pending = put(&mut c, "default", "p", Priority::Medium, 1);
        for b in [&synced, &pending] {
            record_upload_attempt(&mut c, &ns, &b.id, &[7; 32], 3).unwrap();
        }
        let u = RowUpdate::default();
        transition(&c, &ns, &synced.id, Transition::UploadSucceeded, &u).unwrap();
        set_meta(&c, SALT_BACKFILL_DONE, Some("1")).unwrap();

        reset_remote(&mut c, "instance B").unwrap();
        // The synced copy's salt is the old server's: read again from the new one.
        assert_eq!(get(&c, &ns, &synced.id).unwrap().unwrap().upload_salt, None);
        assert_eq!(synced_without_salt(&mut c, 10).unwrap().len(), 1);
        assert_eq!(meta(&mut c, SALT_BACKFILL_DONE).unwrap(), None);
        // A pending upload keeps the salt it may already have stored under.
        let p = get(&c, &ns, &pending.id).unwrap().unwrap();
        assert_eq!(p.upload_salt, Some([7; 32]));
        assert_eq!(
            meta(&mut c, REMOTE_IDENTITY).unwrap().as_deref(),
            Some("instance B")
        );
    }

    #[test]
    fn insert_twice_is_already_exists() {
        let (_d, mut c) = open();
        put(&mut c, "default", "a", Priority::Medium, 1);
        let b = NewLocalBlob {
            ns: Namespace::default(),
            id: BlobId::new("a").unwrap(),
            size: 1,
            sha256: [1; 32],
            priority: Priority::Low,
            local_only: true,
            created: UNIX_EPOCH,
        };
        assert!(matches!(
            insert_local(&mut c, &b),
            Err(StoreError::AlreadyExists {
                status: Status::PendingUpload,
                ..
            })
        ));
    }

    #[test]
    fn list_pages_in_key_order_with_filters() {
        let (_d, mut c) = open();
        for i in 0..25 {
            put(
                &mut c,
                if i % 2 == 0 { "a" } else { "b" },
                &format!("id{i:02}"),
                Priority::Medium,
                i,
            );
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = list(
                &c,
                &ListFilter {
                    after: after.clone(),
                    limit: 7,
                    ..Default::default()
                },
            )
            .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.ns.clone(), last.id.clone()));
            seen.extend(page.into_iter().map(|b| format!("{}/{}", b.ns, b.id)));
        }
        assert_eq!(seen.len(), 25);
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        let only_b = list(
            &c,
            &ListFilter {
                ns: Some(Namespace::new("b").unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(only_b.len(), 12);
        let none = list(
            &c,
            &ListFilter {
                status: Some(Status::Synced),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn due_orders_by_priority_then_time_and_skips_paused_and_future() {
        let (_d, mut c) = open();
        put(&mut c, "default", "low", Priority::Low, 1);
        put(&mut c, "default", "urgent", Priority::Urgent, 3);
        put(&mut c, "default", "med-old", Priority::Medium, 1);
        put(&mut c, "default", "med-new", Priority::Medium, 2);
        put(&mut c, "other", "paused", Priority::Urgent, 1);
        set_paused(&mut c, Some(&Namespace::new("other").unwrap()), true).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let plan = RetryPlan {
            error: "x".into(),
            next_attempt: now + Duration::from_secs(10),
            invalid: false,
            max_invalid: 3,
            now,
        };
        record_failure(
            &mut c,
            &Namespace::default(),
            &BlobId::new("med-old").unwrap(),
            &plan,
        )
        .unwrap();
        let f = DueFilter {
            now,
            limit: 10,
            statuses: vec![],
        };
        let ids: Vec<String> = due(&c, &f)
            .unwrap()
            .into_iter()
            .map(|b| b.id.to_string())
            .collect();
        assert_eq!(ids, ["urgent", "med-new", "low"]);
        assert_eq!(next_due(&mut c).unwrap(), Some(UNIX_EPOCH));
        set_paused(&mut c, None, true).unwrap();
        assert!(due(&c, &f).unwrap().is_empty());
        set_paused(&mut c, None, false).unwrap();
        assert_eq!(paused(&mut c).unwrap(), Vec::<Option<Namespace>>::new());
    }

    #[test]
    fn illegal_transitions_are_refused_and_change_nothing() {
        let (_d, mut c) = open();
        put(&mut c, "default", "a", Priority::Medium, 1);
        let ns = Namespace::default();
        let id = BlobId::new("a").unwrap();
        let e = transition(
            &c,
            &ns,
            &id,
            Transition::DownloadSucceeded,
            &RowUpdate::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::Illegal(_)), "{e}");
        assert_eq!(
            get(&c, &ns, &id).unwrap().unwrap().status,
            Status::PendingUpload
        );
        let e = retry(&mut c, &ns, &BlobId::new("nope").unwrap()).unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }));
    }

    #[test]
    fn invalid_downloads_fail_at_the_limit_and_keep_the_reason() {
        let (_d, mut c) = open();
        let ns = Namespace::default();
        let id = BlobId::new("r").unwrap();
        let fact = RemoteFact::New {
            id: id.clone(),
            remote_size: 10,
            created: UNIX_EPOCH,
            external: false,
            seq: 1,
            status: Status::PendingDownload,
        };
        apply_remote(&mut c, &ns, &[fact], Some(1), UNIX_EPOCH).unwrap();
        assert_eq!(cursor(&mut c, &ns).unwrap(), Some(1));
        let plan = RetryPlan {
            error: "bad tag".into(),
            next_attempt: UNIX_EPOCH,
            invalid: true,
            max_invalid: 3,
            now: UNIX_EPOCH,
        };
        assert!(record_failure(&mut c, &ns, &id, &plan).unwrap().is_none());
        assert!(record_failure(&mut c, &ns, &id, &plan).unwrap().is_none());
        let ch = record_failure(&mut c, &ns, &id, &plan).unwrap().unwrap();
        assert_eq!(ch.to, Some(Status::FailedDownload));
        let b = get(&c, &ns, &id).unwrap().unwrap();
        assert_eq!((b.attempts, b.invalid_attempts), (3, 3));
        assert!(b.last_error.unwrap().contains("bad tag"));
        assert_eq!(retry_all_failed(&mut c).unwrap().len(), 1);
        let b = get(&c, &ns, &id).unwrap().unwrap();
        assert_eq!((b.status, b.attempts), (Status::PendingDownload, 0));
    }

    #[test]
    fn cycle_counter_and_meta_persist() {
        let (_d, mut c) = open();
        assert_eq!(next_cycle(&mut c).unwrap(), 1);
        assert_eq!(next_cycle(&mut c).unwrap(), 2);
        set_meta(&c, "k", Some("v")).unwrap();
        assert_eq!(meta(&mut c, "k").unwrap().as_deref(), Some("v"));
        set_meta(&c, "k", None).unwrap();
        assert_eq!(meta(&mut c, "k").unwrap(), None);
    }
}
