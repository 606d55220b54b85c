//! The local store: blob metadata, the persistent retry queue, listing cursors and pause
//! state in SQLite (WAL, numbered migrations), plus the payload file layout ([`payload`]).
//!
//! One dedicated thread owns the `rusqlite::Connection`; [`Store`] is a cloneable async handle
//! that sends closures over a bounded channel and awaits a `oneshot` reply, so no SQLite call
//! ever runs on an async worker. A semaphore of `db_ops` permits caps store operations in
//! flight. Every status change goes through [`crate::status::Status::apply`] and is published
//! on the event bus after its transaction commits.
//!
//! A store that fails to open or fails `PRAGMA integrity_check` is moved aside and rebuilt
//! (see [`OpenOutcome::Rebuilt`]); the daemon never refuses to start over it.
//!
//! This module never touches the network.

mod incoming;
pub mod ops;
pub mod payload;
pub mod plain;
pub mod schema;
pub mod sealed;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};
use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::events::{EventBus, EventKind};
use crate::status::{IllegalTransition, Priority, Status};

pub use ops::{
    BlobInfo, Counts, DueFilter, ListFilter, NewLocalBlob, RemoteFact, RetryPlan, StatusChange,
};

/// Jobs queued for the store thread. Small: callers beyond it wait (that is the back
/// pressure), and `db_ops` already bounds how many are in flight.
const STORE_QUEUE: usize = 64;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A file operation on the data dir failed.
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    /// Schema migration failed.
    #[error("store: {0}")]
    Migrate(#[from] schema::MigrateError),
    /// No such blob.
    #[error("no blob {id} in namespace {ns}")]
    NotFound {
        /// Namespace.
        ns: Namespace,
        /// Id.
        id: BlobId,
    },
    /// The blob already exists.
    #[error(
        "blob {id} already exists in namespace {ns} (status {status}); blobs are immutable: delete it first"
    )]
    AlreadyExists {
        /// Namespace.
        ns: Namespace,
        /// Id.
        id: BlobId,
        /// Its current status.
        status: Status,
    },
    /// The blob is in a status that does not allow the operation.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// A row holds a value this build does not know (a newer or damaged store).
    #[error("store: corrupt row: {0}")]
    Corrupt(String),
    /// The store thread is gone (shutting down).
    #[error("store: closed")]
    Closed,
}

/// How the store came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// Opened (and migrated) as it was.
    Opened,
    /// A new, empty store.
    Created,
    /// The old store could not be used and was moved to `moved_to`; this one is new and must
    /// be rebuilt from the payload files and a full listing.
    Rebuilt {
        /// Where the broken file went.
        moved_to: PathBuf,
        /// Why it was unusable.
        reason: String,
    },
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The reply a put waits for from a group commit.
type InsertReply = oneshot::Sender<Result<(BlobInfo, StatusChange), StoreError>>;

/// Puts waiting for the next group commit (see [`Store::insert_local`]).
#[derive(Default)]
struct InsertQueue {
    waiting: Vec<(NewLocalBlob, InsertReply)>,
    /// A flush task is running; it takes whatever is waiting when its commit returns.
    flushing: bool,
}

/// Cloneable async handle to the store thread.
#[derive(Clone)]
pub struct Store {
    /// Turns true when the store thread has closed the connection.
    exited: tokio::sync::watch::Receiver<bool>,
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    events: EventBus,
    inserts: Arc<std::sync::Mutex<InsertQueue>>,
}

impl Store {
    /// Opens (creating, migrating or rebuilding) the store at `path` and starts its thread.
    pub async fn open(
        path: &Path,
        db_ops: usize,
        events: EventBus,
    ) -> Result<(Store, OpenOutcome), StoreError> {
        let (jobs, mut rx) = mpsc::channel::<Job>(STORE_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exit_tx, exited) = tokio::sync::watch::channel(false);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("blobsyncd-store".into())
            .spawn(move || {
                let mut conn = match open_or_rebuild(&path) {
                    Ok((conn, outcome)) => {
                        let _ = ready_tx.send(Ok(outcome));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
                // Every handle is gone: mark the close clean (the next start skips the full
                // integrity check) and checkpoint the WAL so the file is self-contained.
                let _ = set_clean_shutdown(&conn, true);
                let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
                drop(conn);
                let _ = exit_tx.send(true);
            })?;
        let outcome = ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok((
            Store {
                exited,
                jobs,
                permits: Arc::new(Semaphore::new(db_ops.max(1))),
                events,
                inserts: Arc::default(),
            },
            outcome,
        ))
    }

    /// Resolves once the store thread has closed the database (after every handle is
    /// dropped): what a test waits for before touching the file.
    pub fn on_exit(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.exited.clone();
        async move {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Runs `f` on the store thread.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Publishes committed status changes.
    fn publish(&self, changes: &[StatusChange]) {
        for c in changes {
            self.events.publish(EventKind::StatusChanged {
                ns: c.ns.clone(),
                id: c.id.clone(),
                from: c.from,
                to: c.to,
            });
        }
    }

    /// Runs `f`, then publishes the status changes it reports.
    async fn call_changes<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static + AsChanges,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let out = self.call(f).await?;
        self.publish(out.changes());
        Ok(out)
    }

    /// Inserts a blob put locally (its payload file already in place).
    ///
    /// Group commit: puts that arrive while a commit is running wait for the next one and
    /// share it (one transaction, one WAL fsync), so many concurrent puts are not serialized
    /// behind one fsync each. A put alone is committed at once. Returns after its commit.
    pub async fn insert_local(&self, blob: NewLocalBlob) -> Result<BlobInfo, StoreError> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = self.inserts.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((blob, tx));
            !std::mem::replace(&mut q.flushing, true)
        };
        if lead {
            // Its own task: a caller that goes away (cancelled RPC) must not strand the others.
            let store = self.clone();
            tokio::spawn(async move { store.flush_inserts().await });
        }
        let (info, _) = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(info)
    }

    /// Commits waiting puts, group by group, until none is left.
    async fn flush_inserts(&self) {
        loop {
            let group = {
                let mut q = self.inserts.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.flushing = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let (blobs, replies): (Vec<NewLocalBlob>, Vec<InsertReply>) = group.into_iter().unzip();
            match self.call(move |c| ops::insert_local_many(c, &blobs)).await {
                Ok(results) => {
                    for (r, reply) in results.into_iter().zip(replies) {
                        if let Ok((_, change)) = &r {
                            self.publish(std::slice::from_ref(change));
                        }
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    // StoreError is not Clone: each put gets the same message.
                    let msg = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Io(std::io::Error::other(msg.clone()))));
                    }
                }
            }
        }
    }

    /// One blob.
    pub async fn get(&self, ns: &Namespace, id: &BlobId) -> Result<Option<BlobInfo>, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| ops::get(c, &ns, &id)).await
    }

    /// A page of blobs ordered by (namespace, id).
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<BlobInfo>, StoreError> {
        self.call(move |c| ops::list(c, &filter)).await
    }

    /// Rows of the given namespace whose status the listing diff cares about, keyed by id.
    pub async fn namespace_rows(&self, ns: &Namespace) -> Result<Vec<BlobInfo>, StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::namespace_rows(c, &ns)).await
    }

    /// The rows of `ns` for these ids (see [`ops::rows_for`]).
    pub async fn rows_for(
        &self,
        ns: &Namespace,
        ids: Vec<BlobId>,
    ) -> Result<Vec<BlobInfo>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ns = ns.clone();
        self.call(move |c| ops::rows_for(c, &ns, &ids)).await
    }

    /// A page of (id, status, salt recorded) of `ns` in id order after `after` (see [`ops::id_status_page`]).
    pub async fn id_status_page(
        &self,
        ns: &Namespace,
        after: Option<BlobId>,
        limit: usize,
    ) -> Result<Vec<(BlobId, Status, bool)>, StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::id_status_page(c, &ns, after.as_ref(), limit))
            .await
    }

    /// The rows of `ns` in `status`.
    pub async fn rows_with_status(
        &self,
        ns: &Namespace,
        status: Status,
    ) -> Result<Vec<BlobInfo>, StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::rows_with_status(c, &ns, status))
            .await
    }

    /// Blobs due for work, highest priority first.
    pub async fn due(&self, filter: DueFilter) -> Result<Vec<BlobInfo>, StoreError> {
        self.call(move |c| ops::due(c, &filter)).await
    }

    /// Whether a due `PENDING_UPLOAD` row has had an upload attempt (see
    /// [`ops::attempted_upload_due`]).
    pub async fn attempted_upload_due(&self, now: SystemTime) -> Result<bool, StoreError> {
        self.call(move |c| ops::attempted_upload_due(c, now)).await
    }

    /// The earliest next-attempt time of any queued blob in an unpaused namespace.
    pub async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        self.call(ops::next_due).await
    }

    /// Counts per status and per namespace.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        self.call(ops::counts).await
    }

    /// Namespaces that have at least one row.
    pub async fn namespaces(&self) -> Result<Vec<Namespace>, StoreError> {
        self.call(ops::namespaces).await
    }

    /// Applies a status transition with its row updates (see [`ops::transition`]).
    pub async fn transition(
        &self,
        ns: &Namespace,
        id: &BlobId,
        t: crate::status::Transition,
        update: ops::RowUpdate,
    ) -> Result<StatusChange, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        let change = self
            .call(move |c| {
                let tx = c.transaction()?;
                let ch = ops::transition(&tx, &ns, &id, t, &update)?;
                tx.commit()?;
                Ok(ch)
            })
            .await?;
        self.publish(std::slice::from_ref(&change));
        Ok(change)
    }

    /// Applies many transitions in ONE transaction (stream batches, verify); a transition
    /// that is no longer legal (the row moved on meanwhile) is skipped, not an error.
    pub async fn transition_many(
        &self,
        ns: &Namespace,
        items: Vec<(BlobId, crate::status::Transition, ops::RowUpdate)>,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let ns = ns.clone();
        self.call_changes(move |c| ops::transition_many(c, &ns, &items))
            .await
    }

    /// Records a failed attempt without a status change (see [`RetryPlan`]).
    pub async fn record_failure(
        &self,
        ns: &Namespace,
        id: &BlobId,
        plan: RetryPlan,
    ) -> Result<Option<StatusChange>, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        let ch = self
            .call(move |c| ops::record_failure(c, &ns, &id, &plan))
            .await?;
        if let Some(ch) = &ch {
            self.publish(std::slice::from_ref(ch));
        }
        Ok(ch)
    }

    /// Whether the payload of `ns/id` still holds plaintext of an earlier release.
    pub async fn is_plain(&self, ns: &Namespace, id: &BlobId) -> Result<bool, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| plain::is_plain(c, &ns, &id)).await
    }

    /// Records that the payload of `ns/id` is sealed (converted by the at-rest migration).
    pub async fn unmark_plain(&self, ns: &Namespace, id: &BlobId) -> Result<(), StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| plain::unmark_plain(c, &ns, &id)).await
    }

    /// Records that the payload of `ns/id` holds plaintext (a rebuilt store's adoption).
    pub async fn mark_plain(&self, ns: &Namespace, id: &BlobId) -> Result<(), StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| plain::mark_plain(c, &ns, &id)).await
    }

    /// A page of the rows whose payload still holds plaintext (see [`plain::plain_page`]).
    pub async fn plain_page(
        &self,
        after: Option<(Namespace, BlobId)>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, StoreError> {
        self.call(move |c| plain::plain_page(c, after.as_ref(), limit))
            .await
    }

    /// How many payloads still hold plaintext.
    pub async fn plain_count(&self) -> Result<u64, StoreError> {
        self.call(plain::plain_count).await
    }

    /// Records the header salt and stored size of an upload before its PUT (kept across
    /// attempts).
    pub async fn set_upload_salt(
        &self,
        ns: &Namespace,
        id: &BlobId,
        salt: [u8; 32],
        stored_size: u64,
    ) -> Result<(), StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| ops::record_upload_attempt(c, &ns, &id, &salt, stored_size))
            .await
    }

    /// Records the salts and stored sizes of a batch's first upload attempts, in ONE
    /// transaction (see [`ops::record_upload_attempts`]).
    pub async fn set_upload_salts(
        &self,
        ns: &Namespace,
        items: Vec<(BlobId, [u8; 32], u64)>,
    ) -> Result<(), StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::record_upload_attempts(c, &ns, &items))
            .await
    }

    /// Applies a listing diff and moves the namespace's cursor, in ONE transaction.
    pub async fn apply_remote(
        &self,
        ns: &Namespace,
        facts: Vec<RemoteFact>,
        cursor: Option<u64>,
        now: SystemTime,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let ns = ns.clone();
        self.call_changes(move |c| ops::apply_remote(c, &ns, &facts, cursor, now))
            .await
    }

    /// How many proven remote deletions are held for `ns` (the mass-deletion guard).
    pub async fn held_count(&self, ns: &Namespace) -> Result<u64, StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::held_count(c, &ns)).await
    }

    /// Applies the held deletions of `ns` in one transaction.
    pub async fn apply_held(
        &self,
        ns: &Namespace,
        now: SystemTime,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let ns = ns.clone();
        self.call_changes(move |c| ops::apply_held(c, &ns, now))
            .await
    }

    /// Every header salt this device has held for `ns/id`.
    pub async fn seen_salts(
        &self,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| ops::seen_salts(c, &ns, &id)).await
    }

    /// [`Store::seen_salts`] of many ids of one namespace, in one store call.
    pub async fn seen_salts_many(
        &self,
        ns: &Namespace,
        ids: Vec<BlobId>,
    ) -> Result<std::collections::HashMap<BlobId, Vec<[u8; 32]>>, StoreError> {
        let ns = ns.clone();
        self.call(move |c| {
            let mut out = std::collections::HashMap::new();
            for id in ids {
                let salts = ops::seen_salts(c, &ns, &id)?;
                if !salts.is_empty() {
                    out.insert(id, salts);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Up to `limit` `SYNCED` rows without a recorded salt (see [`ops::synced_without_salt`]).
    pub async fn synced_without_salt(&self, limit: usize) -> Result<Vec<BlobInfo>, StoreError> {
        self.call(move |c| ops::synced_without_salt(c, limit)).await
    }

    /// Records the header salt of the version a row holds, when none is recorded.
    pub async fn backfill_salt(
        &self,
        ns: &Namespace,
        id: &BlobId,
        salt: [u8; 32],
    ) -> Result<(), StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| ops::set_upload_salt(c, &ns, &id, &salt))
            .await
    }

    /// The remote this store last synced with (`None` before the first contact).
    pub async fn remote_identity(&self) -> Result<Option<String>, StoreError> {
        self.call(|c| ops::meta(c, ops::REMOTE_IDENTITY)).await
    }

    /// Forgets what the old remote said and records the new one (see [`ops::reset_remote`]).
    pub async fn reset_remote(&self, identity: String) -> Result<(), StoreError> {
        self.call(move |c| ops::reset_remote(c, &identity)).await
    }

    /// Re-queues a failed blob now (or makes a queued one due now).
    pub async fn retry(&self, ns: &Namespace, id: &BlobId) -> Result<StatusChange, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        let ch = self.call(move |c| ops::retry(c, &ns, &id)).await?;
        self.publish(std::slice::from_ref(&ch));
        Ok(ch)
    }

    /// Re-queues every failed blob; returns how many.
    pub async fn retry_failed(
        &self,
        ns: Option<Namespace>,
    ) -> Result<Vec<StatusChange>, StoreError> {
        self.call_changes(move |c| ops::retry_failed(c, ns.as_ref()))
            .await
    }

    /// Changes a blob's priority.
    pub async fn set_priority(
        &self,
        ns: &Namespace,
        id: &BlobId,
        p: Priority,
    ) -> Result<BlobInfo, StoreError> {
        let (ns, id) = (ns.clone(), id.clone());
        self.call(move |c| ops::set_priority(c, &ns, &id, p)).await
    }

    /// The listing cursor of a namespace.
    pub async fn cursor(&self, ns: &Namespace) -> Result<Option<u64>, StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::cursor(c, &ns)).await
    }

    /// Forgets a namespace's cursor (the next cycle does a full listing).
    pub async fn clear_cursor(&self, ns: &Namespace) -> Result<(), StoreError> {
        let ns = ns.clone();
        self.call(move |c| ops::clear_cursor(c, &ns)).await
    }

    /// Paused namespaces; `None` in the list means "everything".
    pub async fn paused(&self) -> Result<Vec<Option<Namespace>>, StoreError> {
        self.call(ops::paused).await
    }

    /// Pauses or resumes one namespace (`None`: all).
    pub async fn set_paused(&self, ns: Option<Namespace>, paused: bool) -> Result<(), StoreError> {
        self.call(move |c| ops::set_paused(c, ns.as_ref(), paused))
            .await
    }

    /// Increments and returns the cycle counter.
    pub async fn next_cycle(&self) -> Result<u64, StoreError> {
        self.call(ops::next_cycle).await
    }

    /// A meta value.
    pub async fn meta(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.call(move |c| ops::meta(c, key)).await
    }

    /// Sets (or with `None`, removes) a meta value.
    pub async fn set_meta(
        &self,
        key: &'static str,
        value: Option<String>,
    ) -> Result<(), StoreError> {
        self.call(move |c| ops::set_meta(c, key, value.as_deref()))
            .await
    }
}

/// Results that carry status changes to publish.
trait AsChanges {
    fn changes(&self) -> &[StatusChange];
}

impl AsChanges for Vec<StatusChange> {
    fn changes(&self) -> &[StatusChange] {
        self
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // rusqlite keeps 16 prepared statements by default; the store uses more than that, and a
    // re-prepare (parsing, trigger code generation) cost more than the statement itself.
    conn.set_prepared_statement_cache_capacity(128);
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "journal_mode is {mode}, WAL could not be enabled"
        )));
    }
    // FULL: a put reported as committed survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The full check reads the whole file (about 0.1 s per 100k blobs): run it only when the
    // last run did not close the store cleanly (crash, kill -9, power cut), as fsck does after
    // an unclean unmount. A file that is not a database at all fails right here anyway.
    let clean: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [CLEAN_SHUTDOWN_KEY],
            |r| r.get(0),
        )
        .ok();
    if clean.as_deref() != Some("1") {
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Corrupt(format!("integrity_check: {check}")));
        }
    }
    schema::migrate(&mut conn)?;
    // Until the store thread closes it cleanly, this run counts as unclean.
    set_clean_shutdown(&conn, false)?;
    Ok(conn)
}

/// `meta` key recording that the last run closed the store cleanly (`"1"`).
const CLEAN_SHUTDOWN_KEY: &str = "clean_shutdown";

fn set_clean_shutdown(conn: &Connection, clean: bool) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [CLEAN_SHUTDOWN_KEY, if clean { "1" } else { "0" }],
    )?;
    Ok(())
}

fn open_or_rebuild(path: &Path) -> Result<(Connection, OpenOutcome), StoreError> {
    let existed = path.exists();
    match open_conn(path) {
        Ok(conn) => Ok((
            conn,
            if existed {
                OpenOutcome::Opened
            } else {
                OpenOutcome::Created
            },
        )),
        // A newer schema is not damage: moving it aside would lose a newer daemon's state.
        Err(e @ StoreError::Migrate(schema::MigrateError::TooNew { .. })) => Err(e),
        Err(e) => {
            let reason = e.to_string();
            let stamp = crate::clock::to_millis(SystemTime::now());
            let moved_to = path.with_extension(format!("sqlite.broken-{stamp}"));
            std::fs::rename(path, &moved_to)?;
            for suffix in ["-wal", "-shm"] {
                let mut side = path.as_os_str().to_owned();
                side.push(suffix);
                let mut side_to = moved_to.as_os_str().to_owned();
                side_to.push(suffix);
                let _ = std::fs::rename(&side, &side_to);
            }
            tracing::error!(
                store = %path.display(),
                moved_to = %moved_to.display(),
                %reason,
                "STORE UNUSABLE: moved it aside and rebuilding from the payload files and a full server listing"
            );
            let conn = open_conn(path)?;
            Ok((conn, OpenOutcome::Rebuilt { moved_to, reason }))
        }
    }
}
