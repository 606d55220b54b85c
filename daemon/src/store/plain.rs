//! The store's list of payloads that still hold plaintext written by a release before at-rest
//! encryption (schema migration 6, `plain_payloads`): the work list of the at-rest migration
//! (`engine::atrest`, docs/local-store.md). A row leaves it when its payload is sealed (the
//! migration, a download that replaces the payload, a decrypted delivery) or deleted.

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{Connection, params};

use super::StoreError;
use super::ops::{BlobInfo, COLS, exec, row};

/// Whether the payload of `ns/id` still holds plaintext written by an earlier release (see
/// migration 6 and `engine::atrest`).
pub fn is_plain(c: &Connection, ns: &Namespace, id: &BlobId) -> Result<bool, StoreError> {
    Ok(
        c.prepare_cached("SELECT 1 FROM plain_payloads WHERE ns = ?1 AND id = ?2")?
            .exists(params![ns.as_str(), id.as_str()])?,
    )
}

/// Records that the payload of `ns/id` is sealed now (converted, or replaced by a download).
pub fn unmark_plain(c: &Connection, ns: &Namespace, id: &BlobId) -> Result<(), StoreError> {
    exec(
        c,
        "DELETE FROM plain_payloads WHERE ns = ?1 AND id = ?2",
        params![ns.as_str(), id.as_str()],
    )?;
    Ok(())
}

/// Records that the payload of `ns/id` holds plaintext (a rebuilt store adopting a file of an
/// earlier release).
pub fn mark_plain(c: &Connection, ns: &Namespace, id: &BlobId) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT OR IGNORE INTO plain_payloads (ns, id) VALUES (?1, ?2)",
        params![ns.as_str(), id.as_str()],
    )?;
    Ok(())
}

/// Up to `limit` rows whose payload still holds plaintext, after `after` in (ns, id) order.
pub fn plain_page(
    c: &Connection,
    after: Option<&(Namespace, BlobId)>,
    limit: usize,
) -> Result<Vec<BlobInfo>, StoreError> {
    let (ans, aid) = after.map_or(("", ""), |(n, i)| (n.as_str(), i.as_str()));
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM blobs WHERE (ns, id) IN (SELECT ns, id FROM plain_payloads \
         WHERE (ns, id) > (?1, ?2) ORDER BY ns, id LIMIT ?3) ORDER BY ns, id"
    ))?;
    let rows = st.query_map(params![ans, aid, limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many payloads still hold plaintext.
pub fn plain_count(c: &mut Connection) -> Result<u64, StoreError> {
    Ok(c.query_row("SELECT COUNT(*) FROM plain_payloads", [], |r| {
        r.get::<_, i64>(0)
    })? as u64)
}
