//! The index side of the incoming box: each user's published recipient, and the conditional
//! replace that adopts a delivered age file (`PUT /blobs/...?replace_external=<sha256>`).

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{OptionalExtension, params};

use super::{Index, IndexError, fsync_dir, io, lookup_in, now_secs};
use crate::index::{ReplaceOutcome, Staged};
use crate::layout::Layout;

impl Index {
    /// The user's incoming recipient, if their devices published one.
    pub fn incoming_recipient(&self, user: &str) -> Result<Option<String>, IndexError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT recipient FROM incoming_keys WHERE user = ?1")?
                    .query_row([user], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// Sets the user's incoming recipient (validated by the caller).
    pub fn set_incoming_recipient(&self, user: &str, recipient: &str) -> Result<(), IndexError> {
        let c = self.writer();
        c.execute(
            "INSERT INTO incoming_keys (user, recipient, updated) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user) DO UPDATE SET recipient = excluded.recipient, \
             updated = excluded.updated",
            params![user, recipient, now_secs()],
        )?;
        Ok(())
    }

    /// Adopts a delivered age file: if the live blob `ns/id` is external and still the age
    /// file whose SHA-256 is `age_sha256`, `staged` (`size` bytes: an fsynced temp file in the
    /// blob's directory, a small payload kept inline, or an object under its own key) replaces
    /// it in one index transaction with one new sequence number. Flags,
    /// creation time and `external` stay; the age hash is cleared, so a second replace (the
    /// other device's) gets [`ReplaceOutcome::NotThatFile`].
    ///
    /// Under the writer lock: the rename, the directory fsync, then the commit, as in
    /// `commit_puts`. A crash between rename and commit leaves the new copy under the old
    /// row (same id, age hash still set); the device's retry replaces it again.
    /// A staged file is removed on every outcome but `Replaced`; a staged object is the
    /// caller's to discard, and on `Replaced` the old object (if any) is the caller's to remove.
    #[allow(clippy::too_many_arguments)]
    pub fn replace_external(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        age_sha256: &str,
        staged: &Staged,
        size: u64,
        default_quota: Option<u64>,
        layout: &Layout,
    ) -> Result<ReplaceOutcome, IndexError> {
        let out = self.replace_locked(
            user,
            ns,
            id,
            age_sha256,
            staged,
            size,
            default_quota,
            layout,
        );
        if let (false, Staged::File(temp)) =
            (matches!(out, Ok(ReplaceOutcome::Replaced { .. })), staged)
        {
            let _ = std::fs::remove_file(temp);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn replace_locked(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        age_sha256: &str,
        staged: &Staged,
        size: u64,
        default_quota: Option<u64>,
        layout: &Layout,
    ) -> Result<ReplaceOutcome, IndexError> {
        let mut c = self.writer_for(user);
        let tx = c.transaction()?;
        let Some(row) = lookup_in(&tx, user, ns.as_str(), id.as_str())?.filter(|r| !r.deleted)
        else {
            return Ok(ReplaceOutcome::Missing);
        };
        let stored: Option<String> = tx
            .prepare_cached(
                "SELECT age_sha256 FROM blobs WHERE user = ?1 AND namespace = ?2 AND id = ?3",
            )?
            .query_row(params![user, ns.as_str(), id.as_str()], |r| r.get(0))?;
        if !row.external || stored.as_deref() != Some(age_sha256) {
            return Ok(ReplaceOutcome::NotThatFile);
        }
        let (quota, used): (Option<i64>, i64) = tx
            .prepare_cached("SELECT quota_bytes, used_bytes FROM users WHERE name = ?1")?
            .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let quota = quota.map(|q| q as u64).or(default_quota);
        let used_after = (used as u64).saturating_sub(row.size) + size;
        if size > row.size && quota.is_some_and(|q| used_after > q) {
            return Ok(ReplaceOutcome::OverQuota);
        }
        // The old payload may be a file or inline, whatever the new one is: the one not
        // replaced is removed (the inline row in this transaction, a file after the commit).
        let mut old_file = None;
        let new_key = match staged {
            Staged::File(temp) => {
                let dest = layout.blob_path(user, ns, id);
                std::fs::rename(temp, &dest).map_err(io("rename into place", &dest))?;
                if let Some(d) = dest.parent() {
                    fsync_dir(d)?;
                }
                tx.execute(
                    "DELETE FROM inline_payloads WHERE user = ?1 AND namespace = ?2 AND id = ?3",
                    params![user, ns.as_str(), id.as_str()],
                )?;
                None
            }
            Staged::Object(k) => Some(k.as_str()),
            Staged::Inline(data) => {
                tx.execute(
                    "INSERT OR REPLACE INTO inline_payloads (user, namespace, id, data) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![user, ns.as_str(), id.as_str(), &data[..]],
                )?;
                old_file = Some(layout.blob_path(user, ns, id));
                None
            }
        };
        tx.execute(
            "UPDATE users SET seq = seq + 1, used_bytes = ?2 WHERE name = ?1",
            params![user, used_after as i64],
        )?;
        tx.execute(
            "UPDATE blobs SET size = ?4, age_sha256 = NULL, object_key = ?5, \
             seq = (SELECT seq FROM users WHERE name = ?1) \
             WHERE user = ?1 AND namespace = ?2 AND id = ?3",
            params![user, ns.as_str(), id.as_str(), size as i64, new_key],
        )?;
        let seq: i64 = tx.query_row("SELECT seq FROM users WHERE name = ?1", [user], |r| {
            r.get(0)
        })?;
        tx.commit()?;
        if let Some(old) = old_file {
            // Still under the writer lock, as a delete unlinks; a crash first leaves an orphan
            // that fsck removes (the row now names the inline payload).
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %old.display(), "removing a replaced payload file failed; fsck --repair removes it")
                }
            }
        }
        Ok(ReplaceOutcome::Replaced {
            seq: seq as u64,
            old_object: row.object_key,
        })
    }
}
