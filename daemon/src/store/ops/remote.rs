//! What a listing changes: `apply_remote` (facts from a listing, and the cursor, in one
//! transaction), the mass-deletion guard's held deletions, and the reset when the remote's
//! identity changes.

use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{Connection, params};

use super::*;
use crate::clock::to_millis;
use crate::status::{Priority, Status, Transition};
use crate::store::StoreError;

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
