//! Blob rows in PostgreSQL: reads, listings, `since` changes, and the writes (put, delete,
//! replace, purge), each write in one transaction behind the user's row lock (see the
//! module docs of `index/postgres` for why that keeps sequence numbers and quotas right).
//! Also [`PgIndex`]'s [`IndexStore`] implementation.

use blobsync_shared::wire::Change;
use blobsync_shared::{BlobId, Namespace};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PgIndex, pg};
use crate::index::{
    BackupCondition, BackupOutcome, BlobRow, IndexError, IndexStore, ListQuery, LiveRow, Order,
    PendingPut, Principal, PutOutcome, ReplaceOutcome, Staged, UserInfo, change_of, check_since,
    deleted_after, flag_bit, now_secs,
};

const COLS: &str = "id, size, created, flags, seq, deleted, external, proof, object_key";

fn row_of(r: &Row) -> BlobRow {
    BlobRow {
        id: r.get(0),
        size: r.get::<_, i64>(1) as u64,
        created: r.get(2),
        flags: r.get(3),
        seq: r.get::<_, i64>(4) as u64,
        deleted: r.get(5),
        external: r.get(6),
        proof: r.get(7),
        object_key: r.get(8),
    }
}

fn object_of(s: &Staged) -> Result<&str, IndexError> {
    match s {
        Staged::Object(k) => Ok(k),
        Staged::File(p) => Err(IndexError::Unsupported(format!(
            "the postgres index stores object keys, not files ({}): pair it with s3 payloads",
            p.display()
        ))),
        Staged::Inline(_) => Err(IndexError::Unsupported(
            "the postgres index stores object keys, not payloads: pair it with s3 payloads".into(),
        )),
    }
}

/// Locks the user's row for the rest of the transaction: (seq, quota, used), None if no user.
async fn lock_user(
    tx: &deadpool_postgres::Transaction<'_>,
    user: &str,
) -> Result<Option<(i64, Option<i64>, i64)>, IndexError> {
    let s = tx
        .prepare_cached("SELECT seq, quota_bytes, used_bytes FROM users WHERE name = $1 FOR UPDATE")
        .await
        .map_err(pg)?;
    Ok(tx
        .query_opt(&s, &[&user])
        .await
        .map_err(pg)?
        .map(|r| (r.get(0), r.get(1), r.get(2))))
}

async fn lookup_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    user: &str,
    ns: &str,
    id: &str,
) -> Result<Option<(BlobRow, Option<String>)>, IndexError> {
    let s = tx
        .prepare_cached(&format!(
            "SELECT {COLS}, age_sha256 FROM blobs WHERE user_name = $1 AND namespace = $2 \
             AND id = $3"
        ))
        .await
        .map_err(pg)?;
    Ok(tx
        .query_opt(&s, &[&user, &ns, &id])
        .await
        .map_err(pg)?
        .map(|r| (row_of(&r), r.get(9))))
}

impl PgIndex {
    async fn commit(
        &self,
        user: &str,
        ns: &Namespace,
        items: &[PendingPut],
        default_quota: Option<u64>,
    ) -> Result<Vec<PutOutcome>, IndexError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let Some((mut seq, quota, mut used)) = lock_user(&tx, user).await? else {
            return Err(IndexError::UnknownUser(user.to_owned()));
        };
        let quota = quota.map(|q| q as u64).or(default_quota);
        let upsert = tx
            .prepare_cached(
                "INSERT INTO blobs (user_name, namespace, id, size, created, seq, deleted, \
                 flags, external, age_sha256, object_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7, $8, $9, $10) \
                 ON CONFLICT (user_name, namespace, id) DO UPDATE SET size = excluded.size, \
                 created = excluded.created, seq = excluded.seq, deleted = FALSE, \
                 flags = excluded.flags, external = excluded.external, proof = NULL, \
                 age_sha256 = excluded.age_sha256, object_key = excluded.object_key",
            )
            .await
            .map_err(pg)?;
        let now = now_secs();
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            let key = object_of(&it.staged)?;
            let row = lookup_tx(&tx, user, ns.as_str(), it.id.as_str())
                .await?
                .map(|r| r.0);
            if row.as_ref().is_some_and(|r| !r.deleted) {
                out.push(PutOutcome::Exists);
                continue;
            }
            if let Some(s) = deleted_after(row.as_ref(), it.if_absent_since) {
                out.push(PutOutcome::DeletedAfter(s));
                continue;
            }
            if quota.is_some_and(|q| used as u64 + it.size > q) {
                out.push(PutOutcome::OverQuota);
                continue;
            }
            seq += 1;
            used += it.size as i64;
            tx.execute(
                &upsert,
                &[
                    &user,
                    &ns.as_str(),
                    &it.id.as_str(),
                    &(it.size as i64),
                    &now,
                    &seq,
                    &it.flags,
                    &it.external,
                    &it.age_sha256,
                    &key,
                ],
            )
            .await
            .map_err(pg)?;
            out.push(PutOutcome::Created(seq as u64));
        }
        let s = tx
            .prepare_cached("UPDATE users SET seq = $2, used_bytes = $3 WHERE name = $1")
            .await
            .map_err(pg)?;
        tx.execute(&s, &[&user, &seq, &used]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn delete_row(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<&str>,
    ) -> Result<Option<BlobRow>, IndexError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let Some((seq, _, used)) = lock_user(&tx, user).await? else {
            return Ok(None);
        };
        let Some((row, _)) = lookup_tx(&tx, user, ns.as_str(), id.as_str())
            .await?
            .filter(|r| !r.0.deleted)
        else {
            return Ok(None);
        };
        let seq = seq + 1;
        tx.execute(
            "UPDATE users SET seq = $2, used_bytes = $3 WHERE name = $1",
            &[&user, &seq, &(used - row.size as i64)],
        )
        .await
        .map_err(pg)?;
        tx.execute(
            "UPDATE blobs SET deleted = TRUE, created = $4, proof = $5, seq = $6, \
             object_key = NULL, age_sha256 = NULL \
             WHERE user_name = $1 AND namespace = $2 AND id = $3",
            &[&user, &ns.as_str(), &id.as_str(), &now_secs(), &proof, &seq],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Some(row))
    }

    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        age_sha256: &str,
        staged: &Staged,
        size: u64,
        default_quota: Option<u64>,
    ) -> Result<ReplaceOutcome, IndexError> {
        let key = object_of(staged)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let Some((seq, quota, used)) = lock_user(&tx, user).await? else {
            return Ok(ReplaceOutcome::Missing);
        };
        let Some((row, stored)) = lookup_tx(&tx, user, ns.as_str(), id.as_str())
            .await?
            .filter(|r| !r.0.deleted)
        else {
            return Ok(ReplaceOutcome::Missing);
        };
        if !row.external || stored.as_deref() != Some(age_sha256) {
            return Ok(ReplaceOutcome::NotThatFile);
        }
        let quota = quota.map(|q| q as u64).or(default_quota);
        let used_after = (used as u64).saturating_sub(row.size) + size;
        if size > row.size && quota.is_some_and(|q| used_after > q) {
            return Ok(ReplaceOutcome::OverQuota);
        }
        let seq = seq + 1;
        tx.execute(
            "UPDATE users SET seq = $2, used_bytes = $3 WHERE name = $1",
            &[&user, &seq, &(used_after as i64)],
        )
        .await
        .map_err(pg)?;
        tx.execute(
            "UPDATE blobs SET size = $4, age_sha256 = NULL, object_key = $5, seq = $6 \
             WHERE user_name = $1 AND namespace = $2 AND id = $3",
            &[
                &user,
                &ns.as_str(),
                &id.as_str(),
                &(size as i64),
                &key,
                &seq,
            ],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(ReplaceOutcome::Replaced {
            seq: seq as u64,
            old_object: row.object_key,
        })
    }

    async fn list_rows(&self, q: &ListQuery) -> Result<Vec<BlobRow>, IndexError> {
        let c = self.client().await?;
        let flag = q.filter_flag.map(flag_bit).unwrap_or(0);
        let ns = q.namespace.as_str();
        let mut sql = format!(
            "SELECT {COLS} FROM blobs WHERE user_name = $1 AND namespace = $2 AND deleted = $3 \
             AND ($4::BIGINT = 0 OR flags & $4::BIGINT <> 0)"
        );
        let mut p: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(q.user.clone()),
            Box::new(ns.to_owned()),
            Box::new(q.deleted),
            Box::new(flag),
        ];
        match (&q.after, q.order) {
            (None, _) => {}
            (Some(a), Order::Id) => {
                p.push(Box::new(a.clone()));
                sql.push_str(&format!(" AND id > ${}", p.len()));
            }
            (Some(a), _) => {
                let (created, seq) = match q.after_date {
                    Some(k) => k,
                    None => {
                        let s = c
                            .prepare_cached(&format!(
                                "SELECT {COLS} FROM blobs WHERE user_name = $1 \
                                 AND namespace = $2 AND id = $3"
                            ))
                            .await
                            .map_err(pg)?;
                        c.query_opt(&s, &[&q.user, &ns, a])
                            .await
                            .map_err(pg)?
                            .map(|r| row_of(&r))
                            .filter(|r| r.deleted == q.deleted)
                            .map(|r| (r.created, r.seq))
                            .ok_or_else(|| IndexError::UnknownAfter(a.clone()))?
                    }
                };
                p.push(Box::new(created));
                p.push(Box::new(seq as i64));
                let op = if q.order == Order::DateAsc { ">" } else { "<" };
                sql.push_str(&format!(
                    " AND (created, seq) {op} (${}, ${})",
                    p.len() - 1,
                    p.len()
                ));
            }
        }
        sql.push_str(match q.order {
            Order::Id => " ORDER BY id",
            Order::DateAsc => " ORDER BY created, seq",
            Order::DateDesc => " ORDER BY created DESC, seq DESC",
        });
        p.push(Box::new(q.limit.min(i64::MAX as u64) as i64));
        sql.push_str(&format!(" LIMIT ${}", p.len()));
        let s = c.prepare_cached(&sql).await.map_err(pg)?;
        let params: Vec<&(dyn ToSql + Sync)> = p
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        Ok(c.query(&s, &params)
            .await
            .map_err(pg)?
            .iter()
            .map(row_of)
            .collect())
    }
}

#[async_trait::async_trait]
impl IndexStore for PgIndex {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn instance_id(&self) -> &str {
        self.instance()
    }
    async fn principal(&self, token_hash: Vec<u8>) -> Result<Option<Principal>, IndexError> {
        self.principal_of(&token_hash).await
    }
    async fn add_user(
        &self,
        name: &str,
        token_hash: &[u8],
        quota: Option<u64>,
    ) -> Result<(), IndexError> {
        self.add_user_row(name, token_hash, quota).await
    }
    async fn add_app(
        &self,
        name: &str,
        token_hash: &[u8],
        namespaces: &[Namespace],
    ) -> Result<(), IndexError> {
        self.add_app_row(name, token_hash, namespaces).await
    }
    async fn remove_app(&self, name: &str) -> Result<bool, IndexError> {
        self.remove_app_row(name).await
    }
    async fn list_apps(&self) -> Result<Vec<(String, Vec<Namespace>)>, IndexError> {
        self.apps().await
    }
    async fn remove_user(&self, name: &str) -> Result<bool, IndexError> {
        self.remove_user_rows(name).await
    }
    async fn list_users(&self) -> Result<Vec<UserInfo>, IndexError> {
        self.users().await
    }
    async fn usage(&self, name: &str) -> Result<Option<(u64, Option<u64>)>, IndexError> {
        self.usage_of(name).await
    }
    async fn user_exists(&self, name: &str) -> Result<bool, IndexError> {
        Ok(self.usage_of(name).await?.is_some())
    }
    async fn totals(&self) -> Result<(u64, u64), IndexError> {
        self.totals_of().await
    }
    async fn lookup(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<BlobRow>, IndexError> {
        let c = self.client().await?;
        let s = c
            .prepare_cached(&format!(
                "SELECT {COLS} FROM blobs WHERE user_name = $1 AND namespace = $2 AND id = $3"
            ))
            .await
            .map_err(pg)?;
        Ok(c.query_opt(&s, &[&user, &ns.as_str(), &id.as_str()])
            .await
            .map_err(pg)?
            .map(|r| row_of(&r)))
    }
    async fn lookup_many_any(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError> {
        // One round trip for the whole batch; answered in the order asked.
        let c = self.client().await?;
        let want: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let s = c
            .prepare_cached(&format!(
                "SELECT {COLS} FROM blobs WHERE user_name = $1 AND namespace = $2 \
                 AND id = ANY($3)"
            ))
            .await
            .map_err(pg)?;
        let mut by_id: std::collections::HashMap<String, BlobRow> = c
            .query(&s, &[&user, &ns.as_str(), &want])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| {
                let b = row_of(r);
                (b.id.clone(), b)
            })
            .collect();
        Ok(ids.iter().map(|i| by_id.remove(i.as_str())).collect())
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<BlobRow>, IndexError> {
        self.list_rows(q).await
    }
    async fn count(&self, q: &ListQuery) -> Result<u64, IndexError> {
        let c = self.client().await?;
        let flag = q.filter_flag.map(flag_bit).unwrap_or(0);
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM blobs WHERE user_name = $1 AND namespace = $2 \
                 AND deleted = $3 AND ($4::BIGINT = 0 OR flags & $4::BIGINT <> 0)",
                &[&q.user, &q.namespace.as_str(), &q.deleted, &flag],
            )
            .await
            .map_err(pg)?
            .get(0);
        Ok(n as u64)
    }
    async fn namespaces(&self, user: &str) -> Result<Vec<Namespace>, IndexError> {
        let c = self.client().await?;
        c.query(
            // A skip scan over the primary key: one seek per namespace.
            "WITH RECURSIVE ns(n) AS ( \
               SELECT MIN(namespace) FROM blobs WHERE user_name = $1 \
               UNION ALL \
               SELECT (SELECT MIN(namespace) FROM blobs WHERE user_name = $1 AND namespace > n) \
               FROM ns WHERE n IS NOT NULL) \
             SELECT n FROM ns WHERE n IS NOT NULL",
            &[&user],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| {
            Namespace::new(r.get::<_, String>(0))
                .map_err(|e| IndexError::Postgres(format!("bad namespace in the index: {e}")))
        })
        .collect()
    }
    async fn changes_head(&self, user: &str, since: u64) -> Result<u64, IndexError> {
        let c = self.client().await?;
        let s = c
            .prepare_cached("SELECT seq, purged_seq FROM users WHERE name = $1")
            .await
            .map_err(pg)?;
        let r = c
            .query_opt(&s, &[&user])
            .await
            .map_err(pg)?
            .ok_or_else(|| IndexError::UnknownUser(user.to_owned()))?;
        check_since(since, r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)
    }
    async fn changes_page(
        &self,
        user: &str,
        ns: &Namespace,
        after: u64,
        upto: u64,
        limit: u64,
    ) -> Result<Vec<Change>, IndexError> {
        let c = self.client().await?;
        let s = c
            .prepare_cached(&format!(
                "SELECT {COLS} FROM blobs WHERE user_name = $1 AND namespace = $2 \
                 AND seq > $3 AND seq <= $4 ORDER BY seq LIMIT $5"
            ))
            .await
            .map_err(pg)?;
        let limit = limit.min(i64::MAX as u64) as i64;
        c.query(
            &s,
            &[&user, &ns.as_str(), &(after as i64), &(upto as i64), &limit],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| {
            let r = row_of(r);
            let id = r.id.clone();
            change_of(r).ok_or(IndexError::InvalidName(id))
        })
        .collect()
    }
    async fn commit_puts(
        &self,
        user: &str,
        ns: &Namespace,
        items: Vec<PendingPut>,
        default_quota: Option<u64>,
    ) -> Result<Vec<PutOutcome>, IndexError> {
        self.commit(user, ns, &items, default_quota).await
    }
    async fn delete(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<&str>,
    ) -> Result<Option<BlobRow>, IndexError> {
        self.delete_row(user, ns, id, proof).await
    }
    async fn purge_tombstones(&self, before: i64) -> Result<u64, IndexError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // The UPDATE locks every affected user's row, as a writer would.
        tx.execute(
            "UPDATE users SET purged_seq = GREATEST(purged_seq, \
             (SELECT coalesce(max(seq), 0) FROM blobs b \
              WHERE b.user_name = users.name AND b.deleted AND b.created < $1))",
            &[&before],
        )
        .await
        .map_err(pg)?;
        let n = tx
            .execute(
                "DELETE FROM blobs WHERE deleted AND created < $1",
                &[&before],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n)
    }
    async fn set_flags(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        flags: i64,
    ) -> Result<bool, IndexError> {
        let c = self.client().await?;
        Ok(c.execute(
            "UPDATE blobs SET flags = $4 WHERE user_name = $1 AND namespace = $2 AND id = $3 \
             AND NOT deleted",
            &[&user, &ns.as_str(), &id.as_str(), &flags],
        )
        .await
        .map_err(pg)?
            > 0)
    }
    async fn replace_external(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        age_sha256: &str,
        staged: Staged,
        size: u64,
        default_quota: Option<u64>,
    ) -> Result<ReplaceOutcome, IndexError> {
        self.replace(user, ns, id, age_sha256, &staged, size, default_quota)
            .await
    }
    async fn incoming_recipient(&self, user: &str) -> Result<Option<String>, IndexError> {
        self.recipient(user).await
    }
    async fn set_incoming_recipient(&self, user: &str, recipient: &str) -> Result<(), IndexError> {
        self.set_recipient(user, recipient).await
    }
    async fn key_backup(&self, user: &str) -> Result<Option<(Vec<u8>, String)>, IndexError> {
        self.backup_of(user).await
    }
    async fn put_key_backup(
        &self,
        user: &str,
        data: &[u8],
        cond: &BackupCondition,
    ) -> Result<BackupOutcome, IndexError> {
        self.put_backup(user, data, cond).await
    }
    async fn all_live(&self) -> Result<Vec<LiveRow>, IndexError> {
        let c = self.client().await?;
        Ok(c.query(
            "SELECT user_name, namespace, id, size, object_key FROM blobs WHERE NOT deleted \
             ORDER BY user_name, namespace, id",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| LiveRow {
            user: r.get(0),
            namespace: r.get(1),
            id: r.get(2),
            size: r.get::<_, i64>(3) as u64,
            object_key: r.get(4),
            inline: None,
        })
        .collect())
    }
    async fn fix_usage(&self, repair: bool) -> Result<Vec<(String, u64, u64)>, IndexError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Locks every user row while it compares, so no writer moves the figures meanwhile.
        let off: Vec<(String, u64, u64)> = tx
            .query(
                "SELECT u.name, u.used_bytes, \
                 (SELECT coalesce(sum(size), 0)::BIGINT FROM blobs b \
                  WHERE b.user_name = u.name AND NOT b.deleted) \
                 FROM users u ORDER BY u.name FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1) as u64,
                    r.get::<_, i64>(2) as u64,
                )
            })
            .filter(|(_, a, b)| a != b)
            .collect();
        if repair {
            for (u, _, real) in &off {
                tx.execute(
                    "UPDATE users SET used_bytes = $2 WHERE name = $1",
                    &[u, &(*real as i64)],
                )
                .await
                .map_err(pg)?;
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(off)
    }
    async fn integrity_check(&self) -> Result<Vec<String>, IndexError> {
        // PostgreSQL checks its own pages; what can be wrong at this level is a live row
        // without an object key (a file-era row in an object deployment).
        let c = self.client().await?;
        Ok(c.query(
            "SELECT user_name || '/' || namespace || '/' || id FROM blobs \
             WHERE NOT deleted AND object_key IS NULL LIMIT 100",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| format!("live row {} has no object key", r.get::<_, String>(0)))
        .collect())
    }
}
