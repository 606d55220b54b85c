//! The index side of key backup (`/keys/{user}/storage`): each user's passphrase-wrapped
//! storage key, opaque to the server, with an ETag so two devices can't overwrite each other
//! blindly. See docs/http-api.md, "Key backup".

use rusqlite::{OptionalExtension, params};

use super::{Index, IndexError, now_secs};

/// The precondition a key-backup write must meet (`PUT /keys/{user}/storage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCondition {
    /// `If-None-Match: *`: only when the user has no backup yet.
    Absent,
    /// `If-Match: "<etag>"`: only when the stored backup has this ETag.
    Matches(String),
}

/// What became of a key-backup write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutcome {
    /// Stored; the new ETag (unquoted).
    Stored(String),
    /// The condition failed: the current ETag, or `None` when there is no backup.
    Conflict(Option<String>),
}

/// The ETag of a backup: the first 32 hex digits of its SHA-256. Equal bytes have equal tags,
/// which is harmless: rewriting the same backup changes nothing another device could lose.
pub fn backup_etag(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    hex::encode(&d.as_ref()[..16])
}

impl Index {
    /// The user's key backup and its ETag, if one was stored.
    pub fn key_backup(&self, user: &str) -> Result<Option<(Vec<u8>, String)>, IndexError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT data, etag FROM key_backups WHERE user = ?1")?
                    .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?,
            )
        })
    }

    /// Stores `data` as the user's key backup if `cond` holds, in one transaction on the
    /// writer connection, so two devices racing with the same ETag can't both win.
    pub fn put_key_backup(
        &self,
        user: &str,
        data: &[u8],
        cond: &BackupCondition,
    ) -> Result<BackupOutcome, IndexError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT etag FROM key_backups WHERE user = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()?;
        let ok = match (cond, &current) {
            (BackupCondition::Absent, None) => true,
            (BackupCondition::Matches(want), Some(have)) => want == have,
            _ => false,
        };
        if !ok {
            return Ok(BackupOutcome::Conflict(current));
        }
        let etag = backup_etag(data);
        tx.execute(
            "INSERT INTO key_backups (user, data, etag, updated) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (user) DO UPDATE SET data = excluded.data, etag = excluded.etag, \
             updated = excluded.updated",
            params![user, data, etag, now_secs()],
        )?;
        tx.commit()?;
        Ok(BackupOutcome::Stored(etag))
    }
}
