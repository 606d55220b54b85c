//! [`IndexStore`], what the HTTP layer, the admin commands and fsck ask of an index, and
//! [`SqliteStore`], the SQLite index behind it (each call on the blocking pool).

use std::sync::Arc;

use blobsync_shared::wire::Change;
use blobsync_shared::{BlobId, Namespace};

use super::{
    BackupCondition, BackupOutcome, BlobRow, Index, IndexError, ListQuery, LiveRow, PendingPut,
    Principal, PutOutcome, ReplaceOutcome, Staged, UserInfo,
};
use crate::layout::Layout;

/// The index as every caller sees it (see the module docs of [`crate::index`]). All methods
/// are async and never block a worker thread.
///
/// Semantics every implementation keeps (the server's API tests run against each):
/// - one per-user sequence number grows by one with every put, delete and replace, and a
///   change's rows commit together with the number, so a reader that sees number N sees every
///   change up to N ([`IndexStore::changes_head`] then [`IndexStore::changes_page`]);
/// - [`IndexStore::commit_puts`] decides 409/412/507 and assigns numbers atomically with the
///   rows, whatever other writers (threads or nodes) do at the same time;
/// - a payload becomes visible only with the row that names it.
#[async_trait::async_trait]
pub trait IndexStore: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`, for logs and metrics.
    fn kind(&self) -> &'static str;
    /// The instance id (32 lowercase hex), the same for every node of a deployment.
    fn instance_id(&self) -> &str;

    /// Who owns the token with this SHA-256 hash.
    async fn principal(&self, token_hash: Vec<u8>) -> Result<Option<Principal>, IndexError>;
    /// Adds a user.
    async fn add_user(
        &self,
        name: &str,
        token_hash: &[u8],
        quota: Option<u64>,
    ) -> Result<(), IndexError>;
    /// Adds a trusted app that may deliver into `namespaces` (at least one).
    async fn add_app(
        &self,
        name: &str,
        token_hash: &[u8],
        namespaces: &[Namespace],
    ) -> Result<(), IndexError>;
    /// Removes an app; false if there was none.
    async fn remove_app(&self, name: &str) -> Result<bool, IndexError>;
    /// Apps with their namespaces.
    async fn list_apps(&self) -> Result<Vec<(String, Vec<Namespace>)>, IndexError>;
    /// Removes a user and their rows; false if none. The caller then removes their payloads
    /// ([`crate::payload::PayloadStore::remove_user`]).
    async fn remove_user(&self, name: &str) -> Result<bool, IndexError>;
    /// All users with their figures.
    async fn list_users(&self) -> Result<Vec<UserInfo>, IndexError>;
    /// A user's (used bytes, own quota), or None if there is no such user.
    async fn usage(&self, name: &str) -> Result<Option<(u64, Option<u64>)>, IndexError>;
    /// Whether a user exists.
    async fn user_exists(&self, name: &str) -> Result<bool, IndexError>;
    /// Live blob count and bytes over all users.
    async fn totals(&self) -> Result<(u64, u64), IndexError>;

    /// The row of one id (live or tombstone).
    async fn lookup(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<BlobRow>, IndexError>;
    /// [`IndexStore::lookup`] and [`IndexStore::usage`] together: what a PUT checks before
    /// it takes the body. One trip where the index can make it one (SQLite: one blocking
    /// task instead of two in a row, one of the four a small PUT made).
    async fn lookup_with_usage(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<(Option<BlobRow>, Option<(u64, Option<u64>)>), IndexError> {
        Ok((self.lookup(user, ns, id).await?, self.usage(user).await?))
    }
    /// Rows of many ids in order, tombstones included.
    async fn lookup_many_any(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError>;
    /// Rows of many ids in order; None where missing or deleted.
    async fn lookup_many(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError> {
        let rows = self.lookup_many_any(user, ns, ids).await?;
        Ok(rows.into_iter().map(|r| r.filter(|r| !r.deleted)).collect())
    }
    /// One page of a listing.
    async fn list(&self, q: &ListQuery) -> Result<Vec<BlobRow>, IndexError>;
    /// How many blobs a listing would return without a limit.
    async fn count(&self, q: &ListQuery) -> Result<u64, IndexError>;
    /// The user's namespaces with any live blob or tombstone, sorted.
    async fn namespaces(&self, user: &str) -> Result<Vec<Namespace>, IndexError>;
    /// Checks a `since` cursor; the user's current sequence number.
    async fn changes_head(&self, user: &str, since: u64) -> Result<u64, IndexError>;
    /// Up to `limit` changes with `after < seq <= upto`, ascending.
    async fn changes_page(
        &self,
        user: &str,
        ns: &Namespace,
        after: u64,
        upto: u64,
        limit: u64,
    ) -> Result<Vec<Change>, IndexError>;

    /// Publishes staged payloads and indexes them in one transaction; per item the outcome.
    /// Payloads of items not `Created` are the caller's to discard; on `Err` the caller must
    /// not discard objects (the commit may have happened; fsck removes true orphans).
    async fn commit_puts(
        &self,
        user: &str,
        ns: &Namespace,
        items: Vec<PendingPut>,
        default_quota: Option<u64>,
    ) -> Result<Vec<PutOutcome>, IndexError>;
    /// Tombstones a live blob; the row as it was (None if none was live). A row with an
    /// object key: the caller removes the object after this returns.
    async fn delete(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<&str>,
    ) -> Result<Option<BlobRow>, IndexError>;
    /// Removes tombstones older than `before` (unix seconds); how many.
    async fn purge_tombstones(&self, before: i64) -> Result<u64, IndexError>;
    /// Sets a live blob's flags; false if there is none.
    async fn set_flags(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        flags: i64,
    ) -> Result<bool, IndexError>;
    /// Adopts a delivered age file (see [`Index::replace_external`]).
    #[allow(clippy::too_many_arguments)]
    async fn replace_external(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        age_sha256: &str,
        staged: Staged,
        size: u64,
        default_quota: Option<u64>,
    ) -> Result<ReplaceOutcome, IndexError>;
    /// The user's incoming recipient.
    async fn incoming_recipient(&self, user: &str) -> Result<Option<String>, IndexError>;
    /// Sets the user's incoming recipient.
    async fn set_incoming_recipient(&self, user: &str, recipient: &str) -> Result<(), IndexError>;
    /// The user's key backup and its ETag, if one was stored.
    async fn key_backup(&self, user: &str) -> Result<Option<(Vec<u8>, String)>, IndexError>;
    /// Stores the user's key backup if `cond` holds (atomically: two racing writers with the
    /// same ETag cannot both win).
    async fn put_key_backup(
        &self,
        user: &str,
        data: &[u8],
        cond: &BackupCondition,
    ) -> Result<BackupOutcome, IndexError>;

    /// Every live row (fsck).
    async fn all_live(&self) -> Result<Vec<LiveRow>, IndexError>;
    /// Users whose recorded usage is off: (user, recorded, actual); fixed with `repair`.
    async fn fix_usage(&self, repair: bool) -> Result<Vec<(String, u64, u64)>, IndexError>;
    /// The database's own consistency complaints (empty when fine).
    async fn integrity_check(&self) -> Result<Vec<String>, IndexError>;
}

/// The SQLite [`Index`] as an [`IndexStore`]: every call runs on the blocking pool, but for a
/// token owner or a user's head that the index keeps in memory (answered in place).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    index: Arc<Index>,
    layout: Layout,
    /// Reads on the blocking pool at once, at most (one pooled read connection each).
    reads: Arc<tokio::sync::Semaphore>,
}

impl SqliteStore {
    /// Wraps an open index whose payload files live in `layout`.
    pub fn new(index: Index, layout: Layout) -> Self {
        Self {
            index: Arc::new(index),
            layout,
            reads: Arc::new(tokio::sync::Semaphore::new(super::sqlite::READ_POOL)),
        }
    }

    /// The blocking index (for tools that run outside a runtime, and tests).
    pub fn blocking(&self) -> &Index {
        &self.index
    }

    /// The bytes of a small payload kept inside the index (`Staged::Inline`), if this blob's
    /// is one. For [`crate::payload::FsPayloads`], which serves them.
    pub async fn inline_payload(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<bytes::Bytes>, IndexError> {
        let (u, n, d) = (user.to_owned(), ns.clone(), id.clone());
        self.read(move |i| i.inline_payload(&u, &n, &d))
            .await
            .map(|d| d.map(bytes::Bytes::from))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index, &Layout) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (i, l) = (Arc::clone(&self.index), self.layout.clone());
        tokio::task::spawn_blocking(move || f(&i, &l))
            .await
            .map_err(|e| IndexError::Batch(format!("index task failed: {e}")))?
    }

    /// [`SqliteStore::run`] for a read: waits (as a future, not a thread) while
    /// [`super::sqlite::READ_POOL`] reads run. Unbounded, an overloaded server had hundreds
    /// of reads on blocking threads, each beyond the pool opening a fresh connection (schema
    /// parse, statements prepared again) and dropping it after one query: most of its CPU
    /// went there, and its memory grew with the queue (issue 20, `SRV-LIST`).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|e| IndexError::Batch(format!("index reads closed: {e}")))?;
        self.run(move |i, _| f(i)).await
    }
}

#[async_trait::async_trait]
impl IndexStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    fn instance_id(&self) -> &str {
        self.index.instance_id()
    }
    async fn principal(&self, token_hash: Vec<u8>) -> Result<Option<Principal>, IndexError> {
        if let Some(p) = self.index.cached_principal(&token_hash) {
            return Ok(Some(p));
        }
        self.read(move |i| i.principal(&token_hash)).await
    }
    async fn add_user(
        &self,
        name: &str,
        token_hash: &[u8],
        quota: Option<u64>,
    ) -> Result<(), IndexError> {
        let (n, h) = (name.to_owned(), token_hash.to_vec());
        self.run(move |i, _| i.add_user(&n, &h, quota)).await
    }
    async fn add_app(
        &self,
        name: &str,
        token_hash: &[u8],
        namespaces: &[Namespace],
    ) -> Result<(), IndexError> {
        let (n, h, ns) = (name.to_owned(), token_hash.to_vec(), namespaces.to_vec());
        self.run(move |i, _| i.add_app_with_namespaces(&n, &h, &ns))
            .await
    }
    async fn remove_app(&self, name: &str) -> Result<bool, IndexError> {
        let n = name.to_owned();
        self.run(move |i, _| i.remove_app(&n)).await
    }
    async fn list_apps(&self) -> Result<Vec<(String, Vec<Namespace>)>, IndexError> {
        self.read(|i| i.list_apps()).await
    }
    async fn remove_user(&self, name: &str) -> Result<bool, IndexError> {
        let n = name.to_owned();
        self.run(move |i, l| i.remove_user(&n, l)).await
    }
    async fn list_users(&self) -> Result<Vec<UserInfo>, IndexError> {
        self.read(|i| i.list_users()).await
    }
    async fn usage(&self, name: &str) -> Result<Option<(u64, Option<u64>)>, IndexError> {
        let n = name.to_owned();
        self.read(move |i| i.usage(&n)).await
    }
    async fn user_exists(&self, name: &str) -> Result<bool, IndexError> {
        let n = name.to_owned();
        self.read(move |i| i.user_exists(&n)).await
    }
    async fn totals(&self) -> Result<(u64, u64), IndexError> {
        self.read(|i| i.totals()).await
    }
    async fn lookup(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Option<BlobRow>, IndexError> {
        let (u, n, d) = (user.to_owned(), ns.clone(), id.clone());
        self.read(move |i| i.lookup(&u, &n, &d)).await
    }
    async fn lookup_with_usage(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<(Option<BlobRow>, Option<(u64, Option<u64>)>), IndexError> {
        let (u, n, d) = (user.to_owned(), ns.clone(), id.clone());
        self.read(move |i| Ok((i.lookup(&u, &n, &d)?, i.usage(&u)?)))
            .await
    }
    async fn lookup_many_any(
        &self,
        user: &str,
        ns: &Namespace,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobRow>>, IndexError> {
        let (u, n, d) = (user.to_owned(), ns.clone(), ids.to_vec());
        self.read(move |i| i.lookup_many_any(&u, &n, &d)).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<BlobRow>, IndexError> {
        let q = q.clone();
        self.read(move |i| i.list(&q)).await
    }
    async fn count(&self, q: &ListQuery) -> Result<u64, IndexError> {
        let q = q.clone();
        self.read(move |i| i.count(&q)).await
    }
    async fn namespaces(&self, user: &str) -> Result<Vec<Namespace>, IndexError> {
        let u = user.to_owned();
        self.read(move |i| i.namespaces(&u)).await
    }
    async fn changes_head(&self, user: &str, since: u64) -> Result<u64, IndexError> {
        if let Some((current, purged)) = self.index.cached_head(user) {
            return super::check_since(since, current, purged);
        }
        let u = user.to_owned();
        self.read(move |i| i.changes_head(&u, since)).await
    }
    async fn changes_page(
        &self,
        user: &str,
        ns: &Namespace,
        after: u64,
        upto: u64,
        limit: u64,
    ) -> Result<Vec<Change>, IndexError> {
        let (u, n) = (user.to_owned(), ns.clone());
        self.read(move |i| i.changes_page(&u, &n, after, upto, limit))
            .await
    }
    async fn commit_puts(
        &self,
        user: &str,
        ns: &Namespace,
        items: Vec<PendingPut>,
        default_quota: Option<u64>,
    ) -> Result<Vec<PutOutcome>, IndexError> {
        let (u, n) = (user.to_owned(), ns.clone());
        self.run(move |i, l| i.commit_puts(&u, &n, items, default_quota, l))
            .await
    }
    async fn delete(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<&str>,
    ) -> Result<Option<BlobRow>, IndexError> {
        let (u, n, d, p) = (
            user.to_owned(),
            ns.clone(),
            id.clone(),
            proof.map(str::to_owned),
        );
        self.run(move |i, l| i.delete(&u, &n, &d, p.as_deref(), l))
            .await
    }
    async fn purge_tombstones(&self, before: i64) -> Result<u64, IndexError> {
        self.run(move |i, _| i.purge_tombstones(before)).await
    }
    async fn set_flags(
        &self,
        user: &str,
        ns: &Namespace,
        id: &BlobId,
        flags: i64,
    ) -> Result<bool, IndexError> {
        let (u, n, d) = (user.to_owned(), ns.clone(), id.clone());
        self.run(move |i, _| i.set_flags(&u, &n, &d, flags)).await
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
        let (u, n, d, h) = (
            user.to_owned(),
            ns.clone(),
            id.clone(),
            age_sha256.to_owned(),
        );
        self.run(move |i, l| i.replace_external(&u, &n, &d, &h, &staged, size, default_quota, l))
            .await
    }
    async fn incoming_recipient(&self, user: &str) -> Result<Option<String>, IndexError> {
        let u = user.to_owned();
        self.read(move |i| i.incoming_recipient(&u)).await
    }
    async fn set_incoming_recipient(&self, user: &str, recipient: &str) -> Result<(), IndexError> {
        let (u, r) = (user.to_owned(), recipient.to_owned());
        self.run(move |i, _| i.set_incoming_recipient(&u, &r)).await
    }
    async fn key_backup(&self, user: &str) -> Result<Option<(Vec<u8>, String)>, IndexError> {
        let u = user.to_owned();
        self.read(move |i| i.key_backup(&u)).await
    }
    async fn put_key_backup(
        &self,
        user: &str,
        data: &[u8],
        cond: &BackupCondition,
    ) -> Result<BackupOutcome, IndexError> {
        let (u, d, c) = (user.to_owned(), data.to_vec(), cond.clone());
        self.run(move |i, _| i.put_key_backup(&u, &d, &c)).await
    }
    async fn all_live(&self) -> Result<Vec<LiveRow>, IndexError> {
        self.read(|i| i.all_live()).await
    }
    async fn fix_usage(&self, repair: bool) -> Result<Vec<(String, u64, u64)>, IndexError> {
        self.run(move |i, _| i.fix_usage(repair)).await
    }
    async fn integrity_check(&self) -> Result<Vec<String>, IndexError> {
        self.read(|i| i.integrity_check()).await
    }
}
