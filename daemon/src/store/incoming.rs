//! The store's part of the incoming box: which decrypted deliveries wait to be adopted on
//! the server (`incoming_adoptions`, one row per blob, gone with its blob), changed in the
//! same transaction as the blob's status so a crash never leaves a half-adopted row.

use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};
use rusqlite::{OptionalExtension, params};

use super::ops::{self, RowUpdate};
use super::{StatusChange, Store, StoreError};
use crate::status::Transition;

impl Store {
    /// The SHA-256 of the age file a decrypted delivery adopts, if `ns/id` waits for that.
    pub async fn adoption(
        &self,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| {
            let v: Option<Vec<u8>> = c
                .prepare_cached(
                    "SELECT age_sha256 FROM incoming_adoptions WHERE ns = ?1 AND id = ?2",
                )?
                .query_row(params![ns.as_str(), id.as_str()], |r| r.get(0))
                .optional()?;
            Ok(v.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()))
        })
        .await
    }

    /// A delivery was decrypted into its payload: `PENDING_UPLOAD` with the plaintext's size
    /// and hash, and the adoption of the age file `age_sha256` recorded, in one transaction.
    pub async fn incoming_decrypted(
        &self,
        ns: &Namespace,
        id: &BlobId,
        update: RowUpdate,
        age_sha256: [u8; 32],
    ) -> Result<StatusChange, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        let ch = self
            .call(move |c| {
                let tx = c.transaction()?;
                let ch = ops::transition(&tx, &ns, &id, Transition::Decrypted, &update)?;
                // The decrypted delivery was sealed into its payload.
                super::plain::unmark_plain(&tx, &ns, &id)?;
                tx.execute(
                    "INSERT OR REPLACE INTO incoming_adoptions (ns, id, age_sha256) \
                     VALUES (?1, ?2, ?3)",
                    params![ns.as_str(), id.as_str(), &age_sha256[..]],
                )?;
                tx.commit()?;
                Ok(ch)
            })
            .await?;
        self.publish(std::slice::from_ref(&ch));
        Ok(ch)
    }

    /// The adoptions among `ids` that wait: id -> the age file's SHA-256.
    pub async fn adoptions(
        &self,
        ns: &Namespace,
        ids: Vec<BlobId>,
    ) -> Result<std::collections::HashMap<BlobId, [u8; 32]>, StoreError> {
        let ns = ns.clone();
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT age_sha256 FROM incoming_adoptions WHERE ns = ?1 AND id = ?2",
            )?;
            let mut out = std::collections::HashMap::new();
            for id in ids {
                let v: Option<Vec<u8>> = st
                    .query_row(params![ns.as_str(), id.as_str()], |r| r.get(0))
                    .optional()?;
                if let Some(h) = v.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()) {
                    out.insert(id, h);
                }
            }
            Ok(out)
        })
        .await
    }

    /// [`Store::incoming_decrypted`] for many deliveries of `ns`, in ONE transaction: each
    /// (id, update, age file's SHA-256). A row that moved on meanwhile is left out of the
    /// result (and its adoption is not recorded).
    pub async fn incoming_decrypted_many(
        &self,
        ns: &Namespace,
        items: Vec<(BlobId, RowUpdate, [u8; 32])>,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let ns = ns.clone();
        let changes = self
            .call(move |c| {
                let tx = c.transaction()?;
                let mut out = Vec::with_capacity(items.len());
                for (id, update, age_sha256) in &items {
                    match ops::transition(&tx, &ns, id, Transition::Decrypted, update) {
                        Ok(ch) => out.push(ch),
                        Err(StoreError::Illegal(_) | StoreError::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                    super::plain::unmark_plain(&tx, &ns, id)?;
                    tx.execute(
                        "INSERT OR REPLACE INTO incoming_adoptions (ns, id, age_sha256) \
                         VALUES (?1, ?2, ?3)",
                        params![ns.as_str(), id.as_str(), &age_sha256[..]],
                    )?;
                }
                tx.commit()?;
                Ok(out)
            })
            .await?;
        self.publish(&changes);
        Ok(changes)
    }

    /// [`Store::incoming_adoption_done`] for many adoptions of `ns`, in ONE transaction: each
    /// (id, transition, remote size). A row that moved on meanwhile is left out of the result.
    pub async fn incoming_adoption_done_many(
        &self,
        ns: &Namespace,
        items: Vec<(BlobId, Transition, Option<u64>)>,
        now: SystemTime,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let ns = ns.clone();
        let changes = self
            .call(move |c| {
                let tx = c.transaction()?;
                let mut out = Vec::with_capacity(items.len());
                for (id, t, remote_size) in &items {
                    let update = RowUpdate {
                        remote_size: *remote_size,
                        now: Some(now),
                        ..Default::default()
                    };
                    match ops::transition(&tx, &ns, id, *t, &update) {
                        Ok(ch) => out.push(ch),
                        Err(StoreError::Illegal(_) | StoreError::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                    tx.execute(
                        "DELETE FROM incoming_adoptions WHERE ns = ?1 AND id = ?2",
                        params![ns.as_str(), id.as_str()],
                    )?;
                }
                tx.commit()?;
                Ok(out)
            })
            .await?;
        self.publish(&changes);
        Ok(changes)
    }

    /// Ends an adoption: `t` (`UploadSucceeded`: the server holds our format-v1 copy;
    /// `Contested`: another device's adoption won, fetch it) and the adoption row removed,
    /// in one transaction.
    pub async fn incoming_adoption_done(
        &self,
        ns: &Namespace,
        id: &BlobId,
        t: Transition,
        remote_size: Option<u64>,
        now: SystemTime,
    ) -> Result<StatusChange, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        let update = RowUpdate {
            remote_size,
            now: Some(now),
            ..Default::default()
        };
        let ch = self
            .call(move |c| {
                let tx = c.transaction()?;
                let ch = ops::transition(&tx, &ns, &id, t, &update)?;
                tx.execute(
                    "DELETE FROM incoming_adoptions WHERE ns = ?1 AND id = ?2",
                    params![ns.as_str(), id.as_str()],
                )?;
                tx.commit()?;
                Ok(ch)
            })
            .await?;
        self.publish(std::slice::from_ref(&ch));
        Ok(ch)
    }

    /// Forgets an adoption without a status change (the delivery is gone from the server:
    /// the payload goes up as a normal blob, as any copy the server lost).
    pub async fn drop_adoption(&self, ns: &Namespace, id: &BlobId) -> Result<(), StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| {
            c.execute(
                "DELETE FROM incoming_adoptions WHERE ns = ?1 AND id = ?2",
                params![ns.as_str(), id.as_str()],
            )?;
            Ok(())
        })
        .await
    }
}
