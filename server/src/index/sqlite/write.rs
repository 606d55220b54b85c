//! Blob writes of the SQLite index: the group commit of puts (with the renames into place),
//! deletes, tombstone purges, flags, and what fsck needs.

use std::path::PathBuf;

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Index, io, lookup_in};
use crate::index::{
    BlobRow, IndexError, LiveRow, PendingPut, PutOutcome, Staged, deleted_after, now_secs,
};
use crate::layout::Layout;

impl Index {
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

    /// Renames written temp files into place and indexes them in ONE transaction; per item
    /// the outcome. `default_quota` applies to users without their own.
    ///
    /// Order (what makes a crash safe): each temp file is renamed to its final name, then the
    /// files' data and their directories are made durable together, then the transaction
    /// commits. A crash before the commit leaves payload files (maybe incomplete) with no
    /// index row, which no request can see and `fsck` removes; it never leaves an index row
    /// without its whole payload. The callers do not sync the temp files themselves: one
    /// `syncfs` per round replaces a flush per PUT (issue 20, `SRV-PUT`).
    ///
    /// Group commit: a caller queues its job; if no commit is leading, it leads: it drains
    /// every queued job into one transaction (one set of directory fsyncs, one WAL fsync)
    /// under the writer lock, answers each job, and hands the lead to the first job queued
    /// meanwhile, if any. The others sleep on their own reply and wake once, with the answer
    /// or the lead. (Before, every caller queued for the writer lock itself: a group of N
    /// jobs woke N-1 threads one after another, each to find its job done; issue 20,
    /// `SRV-PUT`.) Each leader commits one round, so no caller waits on others' rounds.
    pub fn commit_puts(
        &self,
        user: &str,
        ns: &Namespace,
        items: Vec<PendingPut>,
        default_quota: Option<u64>,
        layout: &Layout,
    ) -> Result<Vec<PutOutcome>, IndexError> {
        let (reply, turn) = std::sync::mpsc::sync_channel(1);
        let job = CommitJob {
            user: user.to_owned(),
            ns: ns.clone(),
            items,
            default_quota,
            reply,
        };
        let lead = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.jobs.push(job);
            !std::mem::replace(&mut q.leading, true)
        };
        let vanished = || Err(IndexError::Batch("commit worker vanished".into()));
        if !lead {
            match turn.recv() {
                Ok(Turn::Done(r)) => return r,
                Ok(Turn::Lead) => {}
                Err(_) => return vanished(),
            }
        }
        {
            // Hands the lead on (or drops it) when this round ends, also if it panics.
            let _handoff = HandOff(&self.queue);
            let jobs =
                std::mem::take(&mut self.queue.lock().unwrap_or_else(|e| e.into_inner()).jobs);
            let mut c = self.writer();
            commit_jobs(&mut c, &self.cache, jobs, layout);
        }
        // Our job was in the round we led (it was queued before we took the lead).
        match turn.recv() {
            Ok(Turn::Done(r)) => r,
            _ => vanished(),
        }
    }

    /// Deletes a live blob: tombstone with a new seq (and the deleting device's `proof`, kept
    /// as given: the server cannot check it), then unlink the payload file. Returns the row as
    /// it was (None if there was no live blob); when it names an object, the caller removes it.
    pub fn delete(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<&str>,
        layout: &Layout,
    ) -> Result<Option<BlobRow>, IndexError> {
        let mut c = self.writer_for(user);
        let tx = c.transaction()?;
        let Some(row) = lookup_in(&tx, user, ns.as_str(), id.as_str())?.filter(|r| !r.deleted)
        else {
            return Ok(None);
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
        tx.execute(
            "DELETE FROM inline_payloads WHERE user = ?1 AND namespace = ?2 AND id = ?3",
            params![user, ns.as_str(), id.as_str()],
        )?;
        tx.commit()?;
        if row.object_key.is_some() {
            // An object: the caller removes it (an orphan if we crash first; fsck removes it).
            return Ok(Some(row));
        }
        // Unlink after the commit and still under the writer lock: a crash in between leaves
        // an orphan payload (invisible, removed by fsck), and no put of the same id can have
        // renamed a new file into place yet.
        let path = layout.blob_path(user, ns, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
        Ok(Some(row))
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
        );
        let n = n.and_then(|n| tx.commit().map(|()| n));
        // Purge marks moved (an old cursor must now get 410).
        self.cache.forget_all();
        Ok(n? as u64)
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

    /// Every live row of every user (for fsck).
    pub fn all_live(&self) -> Result<Vec<LiveRow>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare(
                "SELECT b.user, b.namespace, b.id, b.size, b.object_key, length(i.data) \
                 FROM blobs b LEFT JOIN inline_payloads i \
                 ON i.user = b.user AND i.namespace = b.namespace AND i.id = b.id \
                 WHERE b.deleted = 0 ORDER BY b.user, b.namespace, b.id",
            )?;
            let v = s
                .query_map([], |r| {
                    Ok(LiveRow {
                        user: r.get(0)?,
                        namespace: r.get(1)?,
                        id: r.get(2)?,
                        size: r.get::<_, i64>(3)? as u64,
                        object_key: r.get(4)?,
                        inline: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
                    })
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

    /// Inline payloads no live row owns, as `user/namespace/id` (none should exist: a delete
    /// removes the bytes in the tombstone's transaction); with `repair`, removed.
    pub fn fix_orphan_inline(&self, repair: bool) -> Result<Vec<String>, IndexError> {
        let c = self.writer();
        const ORPHANS: &str = "FROM inline_payloads AS i WHERE NOT EXISTS (SELECT 1 FROM blobs b \
             WHERE b.user = i.user AND b.namespace = i.namespace AND b.id = i.id \
             AND b.deleted = 0)";
        let found = c
            .prepare(&format!(
                "SELECT i.user, i.namespace, i.id {ORPHANS} ORDER BY i.user, i.namespace, i.id"
            ))?
            .query_map([], |r| {
                Ok(format!(
                    "{}/{}/{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if repair && !found.is_empty() {
            c.execute(&format!("DELETE {ORPHANS}"), [])?;
        }
        Ok(found)
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

/// Put jobs waiting for a group commit, and whether a caller is leading one.
#[derive(Default)]
pub(super) struct CommitQueue {
    jobs: Vec<CommitJob>,
    leading: bool,
}

/// One caller's share of a group commit.
struct CommitJob {
    user: String,
    ns: Namespace,
    items: Vec<PendingPut>,
    default_quota: Option<u64>,
    /// Room for one message: the lead, or the answer (never both: a job handed the lead is
    /// answered by the round it then leads, after it has read the lead).
    reply: std::sync::mpsc::SyncSender<Turn>,
}

/// What a queued caller is woken with.
enum Turn {
    /// Its job's outcome.
    Done(Result<Vec<PutOutcome>, IndexError>),
    /// Lead the next round.
    Lead,
}

/// Ends a leader's round: the lead goes to the first job queued meanwhile, or lapses when
/// none is. Runs on unwind too, so a panicking round cannot leave queued callers asleep.
struct HandOff<'a>(&'a std::sync::Mutex<CommitQueue>);

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(first) = q.jobs.first() {
            if first.reply.try_send(Turn::Lead).is_ok() {
                return;
            }
            // Its caller is gone (it cannot be, while it waits; but never hang on it).
            q.jobs.remove(0);
        }
        q.leading = false;
    }
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
        let object_key = match &it.staged {
            Staged::File(temp) => {
                let dest = layout.blob_path(user, ns, &it.id);
                std::fs::rename(temp, &dest).map_err(io("rename into place", &dest))?;
                placed.push(dest.clone());
                if let Some(d) = dest.parent() {
                    dirs.insert(d.to_path_buf());
                }
                None
            }
            Staged::Object(key) => Some(key.as_str()),
            Staged::Inline(data) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO inline_payloads (user, namespace, id, data) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![user, ns.as_str(), it.id.as_str(), &data[..]])?;
                None
            }
        };
        seq += 1;
        used += it.size as i64;
        tx.prepare_cached(
            "INSERT INTO blobs (user, namespace, id, size, created, seq, deleted, flags, external, \
             age_sha256, object_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10) \
             ON CONFLICT (user, namespace, id) DO UPDATE SET size = excluded.size, \
             created = excluded.created, seq = excluded.seq, deleted = 0, \
             flags = excluded.flags, external = excluded.external, proof = NULL, \
             age_sha256 = excluded.age_sha256, object_key = excluded.object_key",
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
            it.age_sha256,
            object_key
        ])?;
        outcomes.push(PutOutcome::Created(seq as u64));
    }
    tx.prepare_cached("UPDATE users SET seq = ?2, used_bytes = ?3 WHERE name = ?1")?
        .execute(params![user, seq, used])?;
    Ok(Ok(outcomes))
}

/// Commits queued jobs in one transaction and replies to each. Runs under the writer lock.
fn commit_jobs(
    c: &mut Connection,
    cache: &super::cache::Cache,
    jobs: Vec<CommitJob>,
    layout: &Layout,
) {
    let mut placed: Vec<PathBuf> = Vec::new();
    let mut dirs: std::collections::BTreeSet<PathBuf> = Default::default();
    let mut results: Vec<Result<Vec<PutOutcome>, IndexError>> = Vec::with_capacity(jobs.len());
    let batch = (|| -> Result<(), IndexError> {
        let tx = c.transaction()?;
        let now = now_secs();
        for job in &jobs {
            results.push(apply_job(&tx, job, now, layout, &mut placed, &mut dirs)?);
        }
        // The placed files' data and names, together (one `syncfs` for the whole round, or
        // per-file syncs when the machine has much dirty data), before the rows commit.
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        crate::layout::sync_placed(layout.root(), &placed, &dirs).map_err(io(
            "sync the renamed files and their directories",
            layout.root(),
        ))?;
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
    // Before any reply: a listing after a 201 must not be answered from a stale head.
    for job in &jobs {
        cache.forget_user(&job.user);
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
            if !created.get(i).copied().unwrap_or(false)
                && let Staged::File(temp) = &it.staged
            {
                let _ = std::fs::remove_file(temp);
            }
        }
        // The caller waits on this channel; it has room for the one reply.
        let _ = job.reply.send(Turn::Done(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain put of a file, as a PUT without flags or conditions queues it.
    fn file_put(id: BlobId, size: u64, temp: std::path::PathBuf) -> PendingPut {
        PendingPut {
            id,
            size,
            staged: Staged::File(temp),
            external: false,
            age_sha256: None,
            flags: 0,
            if_absent_since: None,
        }
    }

    /// Many callers at once, as PUTs from many devices: every job is answered exactly once,
    /// with its own outcome, whoever leads; the numbers are unique and every row is there.
    /// A lost hand-off would leave callers asleep and the test would hang.
    #[test]
    fn concurrent_callers_each_get_their_own_outcome() {
        const CALLERS: usize = 32;
        const PUTS: usize = 25;
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let layout = Layout::new(dir.path());
        index.add_user("alice", b"token-hash", None).unwrap();
        let ns = Namespace::default();
        let seqs = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..CALLERS {
                let (index, layout, ns, seqs) = (&index, &layout, &ns, &seqs);
                s.spawn(move || {
                    for i in 0..PUTS {
                        let id = BlobId::new(format!("c{t:02}-{i:03}")).unwrap();
                        let temp = layout.temp_path("alice", ns, &id);
                        std::fs::create_dir_all(temp.parent().unwrap()).unwrap();
                        std::fs::write(&temp, id.as_str()).unwrap();
                        let item = file_put(id.clone(), id.as_str().len() as u64, temp);
                        let out = index
                            .commit_puts("alice", ns, vec![item], None, layout)
                            .unwrap();
                        let [PutOutcome::Created(seq)] = out[..] else {
                            panic!("{id}: {out:?}");
                        };
                        seqs.lock().unwrap().push(seq);
                        let row = index.lookup("alice", ns, &id).unwrap().unwrap();
                        assert_eq!((row.id.as_str(), row.seq), (id.as_str(), seq));
                    }
                });
            }
        });
        let mut seqs = seqs.into_inner().unwrap();
        seqs.sort_unstable();
        let want: Vec<u64> = (1..=(CALLERS * PUTS) as u64).collect();
        assert_eq!(seqs, want);
        // A repeat of a taken id is refused, and the lead is free again afterwards.
        let id = BlobId::new("c00-000").unwrap();
        let temp = layout.temp_path("alice", &ns, &id);
        std::fs::write(&temp, "again").unwrap();
        let item = file_put(id, 5, temp.clone());
        let out = index
            .commit_puts("alice", &ns, vec![item], None, &layout)
            .unwrap();
        assert_eq!(out, [PutOutcome::Exists]);
        assert!(!temp.exists(), "the refused temp file is removed");
    }
}
