//! The store's SQL, as plain synchronous functions on a `Connection` (called only on the
//! store thread, and directly by store tests).
//!
//! Status columns are written only by [`transition`], [`insert_local`] and
//! [`apply_remote`]'s inserts, each of which goes through the state machine. The row types are
//! in `types`, what a listing changes (`apply_remote`, held deletions, a remote's reset) in
//! `remote`, the tests in `tests`.

use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{Connection, OptionalExtension, Row, params};

mod remote;
#[cfg(test)]
mod tests;
mod types;

pub use remote::*;
pub use types::*;

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

pub(crate) const COLS: &str = "ns, id, size, remote_size, sha256, status, priority, attempts, \
    next_attempt_ms, last_error, invalid_attempts, upload_salt, external, created_ms, \
    updated_ms, remote_seq, reupload";

pub(crate) fn corrupt(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
}

pub(crate) fn blob32(v: Option<Vec<u8>>) -> rusqlite::Result<Option<[u8; 32]>> {
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

pub(crate) fn now_ms(t: Option<SystemTime>) -> i64 {
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
    let (sql, args) = list_sql(f);
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The query of [`list`] and its arguments.
pub(super) fn list_sql(f: &ListFilter) -> (String, Vec<rusqlite::types::Value>) {
    // A status filter walks `blobs_by_status` (status, ns, id), in the same (ns, id) order:
    // left to itself the planner takes the primary key's `ns = ?` and reads the whole
    // namespace to find a rare status (see `rows_with_status_sql`).
    let index = if f.status.is_some() {
        "INDEXED BY blobs_by_status"
    } else {
        ""
    };
    let mut sql = format!("SELECT {COLS} FROM blobs {index} WHERE 1=1");
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
    (sql, args)
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
    // One read transaction for the page: outside one, every lookup takes and drops SQLite's
    // shared lock, two `fcntl` calls per row (a third of a full listing's daemon CPU).
    let tx = c.unchecked_transaction()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(get(&tx, ns, id)?);
    }
    tx.finish()?;
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

/// `INDEXED BY`: without statistics (we never run ANALYZE) SQLite's planner prefers the primary
/// key's `ns = ?` over the two-column equality of `blobs_by_status`, because the primary key
/// covers every column; it then reads every row of the namespace to find the few in `status`.
/// Every cycle asks for `REMOTE_ONLY` rows, so that was O(blobs): 90 ms a cycle at a million.
pub(super) fn rows_with_status_sql() -> String {
    format!("SELECT {COLS} FROM blobs INDEXED BY blobs_by_status WHERE status = ?1 AND ns = ?2")
}

/// The rows of `ns` in one status (walks the `blobs_by_status` index).
pub fn rows_with_status(
    c: &Connection,
    ns: &Namespace,
    status: Status,
) -> Result<Vec<BlobInfo>, StoreError> {
    let mut st = c.prepare_cached(&rows_with_status_sql())?;
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
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM blobs INDEXED BY blobs_due WHERE status IN (2, 3, 6) \
         AND next_attempt_ms <= ?1 AND ns NOT IN (SELECT ns FROM paused) {NOT_HELD} \
         ORDER BY priority DESC, next_attempt_ms, created_ms, ns, id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![to_millis(f.now), f.limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a `PENDING_UPLOAD` blob due now (in an unpaused namespace, its deletion not held)
/// has had an upload attempt (its salt is recorded). Seeks `blobs_queue` to the pending
/// uploads and stops at the first: reading it through `due` walked every queued row, a new
/// device's million downloads included, on every wake-up.
pub fn attempted_upload_due(c: &Connection, now: SystemTime) -> Result<bool, StoreError> {
    if is_paused_all(c)? {
        return Ok(false);
    }
    let mut st = c.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM blobs INDEXED BY blobs_queue WHERE status = 2 \
         AND next_attempt_ms <= ?1 AND upload_salt IS NOT NULL \
         AND ns NOT IN (SELECT ns FROM paused) {NOT_HELD})"
    ))?;
    Ok(st.query_row(params![to_millis(now)], |r| r.get(0))?)
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

/// Requeues every failed blob (`FAILED_UPLOAD`, `FAILED_DOWNLOAD`) in one transaction.
pub fn retry_all_failed(c: &mut Connection) -> Result<Vec<StatusChange>, StoreError> {
    retry_failed(c, None)
}

/// Requeues the failed blobs of one namespace, or of all, in one transaction.
pub fn retry_failed(
    c: &mut Connection,
    ns: Option<&Namespace>,
) -> Result<Vec<StatusChange>, StoreError> {
    let tx = c.transaction()?;
    let failed: Vec<(String, String)> = {
        let mut st = tx.prepare(
            "SELECT ns, id FROM blobs WHERE status IN (4, 5) AND (?1 IS NULL OR ns = ?1)",
        )?;
        st.query_map([ns.map(Namespace::as_str)], |r| Ok((r.get(0)?, r.get(1)?)))?
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
