//! Blob reads of the SQLite index: lookups, listings, counts, namespaces and `since` changes.

use blobsync_shared::wire::{Change, ChangesResponse};
use blobsync_shared::{BlobId, Namespace};
use rusqlite::{OptionalExtension, params};

use super::{Index, lookup_in, row_of};
use crate::index::{BlobRow, IndexError, ListQuery, Order, change_of, check_since, flag_bit};

impl Index {
    // ---- blobs: reads ----------------------------------------------------------------

    /// The bytes of a small payload kept in the index (`Staged::Inline`), if `id` has one.
    pub fn inline_payload(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT data FROM inline_payloads WHERE user = ?1 AND namespace = ?2 AND id = ?3",
            )?
            .query_row(params![user, ns.as_str(), id.as_str()], |r| r.get(0))
            .optional()?)
        })
    }

    /// The row of one id (live or tombstone).
    pub fn lookup(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<BlobRow>, IndexError> {
        self.read(|c| lookup_in(c, user, ns.as_str(), id.as_str()))
    }

    /// Rows of many ids (for `/stream` downloads), in the given order; None where missing or
    /// deleted.
    pub fn lookup_many(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError> {
        let rows = self.lookup_many_any(user, ns, ids)?;
        Ok(rows.into_iter().map(|r| r.filter(|r| !r.deleted)).collect())
    }

    /// One page of a listing.
    pub fn list(&self, q: &ListQuery) -> Result<Vec<BlobRow>, IndexError> {
        self.read(|c| {
            let mut sql = String::from(
                "SELECT id, size, created, flags, seq, deleted, external, proof, object_key FROM blobs \
                 WHERE user = ?1 AND namespace = ?2 AND deleted = ?3 AND (?4 = 0 OR flags & ?4 != 0)",
            );
            let after_key = match (&q.after, q.order) {
                (None, _) => None,
                (Some(_), Order::Id) => {
                    sql.push_str(" AND id > ?5");
                    None
                }
                (Some(a), _) => {
                    let (created, seq) = match q.after_date {
                        Some(k) => k,
                        None => lookup_in(c, &q.user, q.namespace.as_str(), a)?
                            .filter(|r| r.deleted == q.deleted)
                            .map(|r| (r.created, r.seq))
                            .ok_or_else(|| IndexError::UnknownAfter(a.clone()))?,
                    };
                    sql.push_str(if q.order == Order::DateAsc {
                        " AND (created, seq) > (?6, ?7)"
                    } else {
                        " AND (created, seq) < (?6, ?7)"
                    });
                    Some((created, seq as i64))
                }
            };
            sql.push_str(match q.order {
                Order::Id => " ORDER BY id",
                Order::DateAsc => " ORDER BY created, seq",
                Order::DateDesc => " ORDER BY created DESC, seq DESC",
            });
            sql.push_str(" LIMIT ?8");
            let mut s = c.prepare_cached(&sql)?;
            let flag = q.filter_flag.map(flag_bit).unwrap_or(0);
            let after = q.after.clone().unwrap_or_default();
            let (ac, aseq) = after_key.unwrap_or((0, 0));
            let ns = q.namespace.as_str();
            let mut p: Vec<(&str, &dyn rusqlite::ToSql)> = vec![
                ("?1", &q.user),
                ("?2", &ns),
                ("?3", &q.deleted),
                ("?4", &flag),
            ];
            if q.after.is_some() && q.order == Order::Id {
                p.push(("?5", &after));
            }
            if after_key.is_some() {
                p.push(("?6", &ac));
                p.push(("?7", &aseq));
            }
            let limit = q.limit.min(i64::MAX as u64) as i64;
            p.push(("?8", &limit));
            let rows = s
                .query_map(p.as_slice(), row_of)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// How many blobs a listing would return without a limit.
    pub fn count(&self, q: &ListQuery) -> Result<u64, IndexError> {
        self.read(|c| {
            let flag = q.filter_flag.map(flag_bit).unwrap_or(0);
            let n: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM blobs WHERE user = ?1 AND namespace = ?2 \
                     AND deleted = ?3 AND (?4 = 0 OR flags & ?4 != 0)",
                )?
                .query_row(
                    params![q.user, q.namespace.as_str(), q.deleted, flag],
                    |r| r.get(0),
                )?;
            Ok(n as u64)
        })
    }

    /// The user's namespaces holding any live blob or tombstone, sorted. `DISTINCT` over the
    /// primary key's `(user, namespace)` prefix: an index-only scan, no table sort.
    pub fn namespaces(&self, user: &str) -> Result<Vec<Namespace>, IndexError> {
        self.read(|c| {
            let names = c
                // A skip scan over the primary key (user, namespace, id): one seek per
                // namespace, not a walk over every row of the user (devices ask after every
                // listing that shows a change).
                .prepare_cached(
                    "WITH RECURSIVE ns(n) AS ( \
                       SELECT MIN(namespace) FROM blobs WHERE user = ?1 \
                       UNION ALL \
                       SELECT (SELECT MIN(namespace) FROM blobs WHERE user = ?1 AND namespace > n) \
                       FROM ns WHERE n IS NOT NULL) \
                     SELECT n FROM ns WHERE n IS NOT NULL",
                )?
                .query_map([user], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            names
                .into_iter()
                .map(|n| {
                    // Namespaces in the index were validated on the way in.
                    Namespace::new(n)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)).into())
                })
                .collect()
        })
    }

    /// Changes after `since` (one per id, its latest state), at most `limit`, in memory: for
    /// tools and tests. The HTTP listing streams the same thing page by page with
    /// [`Index::changes_head`] and [`Index::changes_page`].
    pub fn changes(
        &self,
        user: &str,
        ns: &Namespace,
        since: u64,
        limit: u64,
    ) -> Result<ChangesResponse, IndexError> {
        let current = self.changes_head(user, since)?;
        let mut changes = self.changes_page(user, ns, since, current, limit.saturating_add(1))?;
        let more = changes.len() as u64 > limit;
        changes.truncate(limit as usize);
        let seq = if more {
            changes.last().map(|c| c.seq).unwrap_or(since)
        } else {
            current
        };
        Ok(ChangesResponse { seq, changes, more })
    }

    /// Checks a `since` cursor against the user and returns their current sequence number,
    /// the upper end of the listing: pages read later with `upto` = this number form one
    /// consistent answer even while changes land (those come in the next listing).
    pub fn changes_head(&self, user: &str, since: u64) -> Result<u64, IndexError> {
        self.recheck_cache();
        let generation = self.cache.generation();
        let (current, purged) = self.read(|c| {
            let (current, purged): (i64, i64) = c
                .prepare_cached("SELECT seq, purged_seq FROM users WHERE name = ?1")?
                .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| IndexError::UnknownUser(user.to_owned()))?;
            Ok((current as u64, purged as u64))
        })?;
        self.cache.fill_head(generation, user, (current, purged));
        check_since(since, current, purged)
    }

    /// Up to `limit` changes with `after < seq <= upto`, ascending by seq (one per id: a row
    /// holds its latest state).
    pub fn changes_page(
        &self,
        user: &str,
        ns: &Namespace,
        after: u64,
        upto: u64,
        limit: u64,
    ) -> Result<Vec<Change>, IndexError> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT id, size, created, flags, seq, deleted, external, proof, object_key FROM blobs \
                 WHERE user = ?1 AND namespace = ?2 AND seq > ?3 AND seq <= ?4 \
                 ORDER BY seq LIMIT ?5",
            )?;
            let limit = limit.min(i64::MAX as u64) as i64;
            let rows = s.query_map(
                params![user, ns.as_str(), after as i64, upto as i64, limit],
                row_of,
            )?;
            let mut out = Vec::new();
            for r in rows {
                let r = r?;
                let id = r.id.clone();
                out.push(change_of(r).ok_or(IndexError::InvalidName(id))?);
            }
            Ok(out)
        })
    }
}
