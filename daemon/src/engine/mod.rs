//! The sync engine: the cycle loop (list, diff, apply, transfer), the transfers themselves
//! (streamed encrypt/upload and download/verify/decrypt with resume), retries on the seed's
//! schedule, and the state `status` reports.
//!
//! `Engine<R: Remote, C: Clock>` receives its remote and clock at construction; the pure
//! decisions live in [`plan`]. The engine never opens a socket itself (the remote does) and
//! never touches SQLite directly (the store does).

mod atrest;
pub mod error;
mod incoming;
pub(crate) mod keycheck;
pub mod plan;
pub mod put;
pub mod ratelimit;
pub(crate) mod transfer;
pub mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use blobsync_shared::config::{Config, NamespacePolicy};
use blobsync_shared::tombstone::DeleteKey;
use blobsync_shared::{BlobId, Namespace, StorageKey};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::clock::Clock;
use crate::events::{Alarm, AlarmKind, CycleSummary, Direction, EventBus, EventKind};
use crate::handle::EngineHandle;
use crate::remote::{Remote, RemoteError};
use crate::retry::TimeScale;
use crate::status::Status;
use crate::store::payload::{self, DataDir};
use crate::store::{Store, StoreError};
use plan::{Action, BatchPolicy};

/// Queued sync requests (`blobctl sync`); more than this and callers wait.
const SYNC_QUEUE: usize = 32;

/// Errors of the sync layer.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The remote failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The engine is shutting down.
    #[error("the daemon is shutting down")]
    Cancelled,
}

/// The engine's settings (from [`Config`]; limits and interval change at run time).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Time between cycles (before the time scale).
    pub sync_interval: Duration,
    /// Concurrent transfers.
    pub transfers: usize,
    /// Verification failures before `FAILED_DOWNLOAD`.
    pub max_invalid_retries: u32,
    /// Full listing every N cycles (0: only when needed).
    pub full_list_every: u32,
    /// Upload limit, bytes/s (0: none).
    pub bwlimit_up: u64,
    /// Download limit, bytes/s (0: none).
    pub bwlimit_down: u64,
    /// Per-namespace policies (unlisted: eager).
    pub namespaces: BTreeMap<Namespace, NamespacePolicy>,
    /// Segment exponent of new uploads.
    pub segment_exp: u8,
    /// Test-only factor on every wait.
    pub time_scale: TimeScale,
    /// How long shutdown waits for in-flight transfers.
    pub drain_timeout: Duration,
    /// Small-blob batching through `/stream`.
    pub batch: BatchPolicy,
    /// Hold mass remote deletions until the user allows them.
    pub mass_delete_guard: bool,
}

impl EngineSettings {
    /// The settings of a config.
    pub fn from_config(c: &Config) -> Self {
        Self {
            sync_interval: c.sync_interval,
            transfers: c.transfers,
            max_invalid_retries: c.max_invalid_retries,
            full_list_every: c.full_list_every,
            bwlimit_up: c.bwlimit_up,
            bwlimit_down: c.bwlimit_down,
            namespaces: c.namespaces.clone(),
            segment_exp: blobsync_shared::codec::DEFAULT_SEGMENT_EXP,
            time_scale: TimeScale::from_env(),
            drain_timeout: Duration::from_secs(10),
            batch: BatchPolicy::default(),
            mass_delete_guard: c.mass_delete_guard,
        }
    }

    pub(crate) fn policy(&self, ns: &Namespace) -> NamespacePolicy {
        blobsync_shared::config::policy_of(&self.namespaces, ns)
    }
}

/// A transfer in flight, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferInfo {
    /// Namespace.
    pub ns: Namespace,
    /// Id (the first of a batch).
    pub id: BlobId,
    /// Direction.
    pub dir: Direction,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
    /// Blobs in this transfer (more than 1 for a `/stream` batch).
    pub blobs: usize,
    /// Queue priority (of the first blob of a batch).
    pub priority: crate::status::Priority,
    /// Which attempt this is (1-based).
    pub attempt: u32,
    /// When it started.
    pub started: SystemTime,
}

/// What `status` says about the remote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteState {
    /// The remote's description.
    pub url: String,
    /// Whether the last contact worked (`None`: not tried yet).
    pub reachable: Option<bool>,
    /// Whether it refused our credentials (401/403); transfers stop until it accepts them.
    pub unauthorized: bool,
    /// The last error talking to it.
    pub last_error: Option<String>,
    /// When we last heard from it.
    pub last_contact: Option<SystemTime>,
    /// Its identity (URL, user and server instance) as last checked.
    pub identity: Option<String>,
}

pub(crate) struct RuntimeState {
    pub transfers: HashMap<u64, TransferInfo>,
    pub next_transfer_id: u64,
    pub remote: RemoteState,
    pub last_cycle: Option<CycleSummary>,
    pub next_cycle: Option<SystemTime>,
    pub cycle_running: bool,
    pub rebuild_pending: bool,
    pub started: SystemTime,
    /// The remote's namespaces were listed once in this run (see `Engine::namespaces`).
    pub namespaces_discovered: bool,
    /// The user's sequence number (the highest listing cursor) when the remote's namespaces
    /// were last asked for: once a listing shows it moved, they are asked for again, so a
    /// namespace created on another device shows up in the next cycle (see
    /// `Engine::sync_listing`).
    pub namespaces_head: Option<u64>,
    /// Integrity alarms in force, by kind and namespace (see [`Shared::raise`]).
    pub alarms: BTreeMap<(AlarmKind, Option<Namespace>), Alarm>,
    /// External blobs already refused in this run (logged once each).
    pub refused_external: HashSet<(Namespace, BlobId)>,
    /// Transfers run between cycles (a put's upload): the next cycle's summary counts them.
    pub between_cycles: TransferStats,
    /// When the remote was last seen holding our incoming recipient (`engine::incoming`).
    pub recipient_checked: Option<SystemTime>,
}

pub(crate) struct SyncRequest {
    pub full: bool,
    /// Apply deletions the mass-deletion guard holds (`blobctl sync --allow-mass-delete`).
    pub allow_mass_delete: bool,
    pub reply: Option<oneshot::Sender<CycleSummary>>,
}

/// Per-blob transfer locks.
pub(crate) type BlobLocks = HashMap<(Namespace, BlobId), Arc<tokio::sync::Mutex<()>>>;

/// The part of the engine that does not depend on the remote type: shared with handles.
pub(crate) struct Shared {
    pub store: Store,
    pub events: EventBus,
    pub data: DataDir,
    /// Makes small payloads durable in groups (puts, batch downloads).
    pub syncer: payload::SyncGroup,
    pub key: StorageKey,
    /// Signs our deletions and checks other devices' (derived from `key`).
    pub delete_key: DeleteKey,
    pub settings: RwLock<EngineSettings>,
    pub state: Mutex<RuntimeState>,
    pub sync_tx: mpsc::Sender<SyncRequest>,
    pub kick: Notify,
    pub up: ratelimit::RateLimiter,
    pub down: ratelimit::RateLimiter,
    pub locks: Mutex<BlobLocks>,
    pub now: Box<dyn Fn() -> SystemTime + Send + Sync>,
    pub cancel: CancellationToken,
    /// Armed crash points (tests): see [`Engine::arm_crash_point`].
    pub crash_points: Mutex<HashSet<&'static str>>,
    /// Set when a crash point fired (tests).
    pub crashed: std::sync::atomic::AtomicBool,
    /// Blobs whose current download resumed from a partial left by a restart.
    pub resumed: Mutex<HashSet<(Namespace, BlobId)>>,
    /// Downloads failing authentication: the wrong-key guard (see [`keycheck`]).
    pub key_check: keycheck::KeyCheck,
}

impl Shared {
    /// True (once) when the test armed `point`: the caller stops right there, leaving disk
    /// and store exactly as a process killed at that step would.
    pub fn crash_here(&self, point: &'static str) -> bool {
        let hit = self
            .crash_points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(point);
        if hit {
            // A dead process starts nothing more: the transfer loop checks this.
            self.crashed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        hit
    }

    /// Records that `b`'s download resumed from disk.
    pub fn mark_resumed(&self, b: &crate::store::BlobInfo) {
        self.resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((b.ns.clone(), b.id.clone()));
    }

    /// Whether `b`'s download resumed from disk (and forgets it).
    pub fn crash_points_resumed(&self, b: &crate::store::BlobInfo) -> bool {
        self.resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(b.ns.clone(), b.id.clone()))
    }

    pub fn settings(&self) -> EngineSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, RuntimeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The per-blob lock that keeps the loop and an on-demand fetch from transferring the
    /// same blob twice.
    pub fn blob_lock(&self, ns: &Namespace, id: &BlobId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry((ns.clone(), id.clone())).or_default().clone()
    }

    /// Raises (or refreshes) an alarm: logged at error, kept for `status`, announced on Watch.
    pub fn raise(&self, kind: AlarmKind, ns: Option<&Namespace>, count: u64, message: String) {
        tracing::error!(
            alarm = kind.as_str(),
            ns = ns.map(|n| n.as_str()),
            count,
            "{message}"
        );
        let alarm = Alarm {
            kind,
            ns: ns.cloned(),
            message,
            count,
            at: (self.now)(),
        };
        self.state()
            .alarms
            .insert((kind, ns.cloned()), alarm.clone());
        self.events.publish(EventKind::Alarm(alarm));
    }

    /// Clears an alarm that no longer holds (e.g. the held deletions were applied).
    pub fn clear_alarm(&self, kind: AlarmKind, ns: Option<&Namespace>) {
        self.state().alarms.remove(&(kind, ns.cloned()));
    }

    pub fn note_remote_ok(&self) {
        let now = (self.now)();
        let mut st = self.state();
        st.remote.reachable = Some(true);
        st.remote.unauthorized = false;
        st.remote.last_error = None;
        st.remote.last_contact = Some(now);
    }

    pub fn note_remote_err(&self, e: &RemoteError) {
        let mut st = self.state();
        if e.is_unreachable() {
            st.remote.reachable = Some(false);
        } else {
            st.remote.reachable = Some(true);
            st.remote.last_contact = Some((self.now)());
        }
        if e.is_unauthorized() {
            st.remote.unauthorized = true;
        }
        st.remote.last_error = Some(e.to_string());
    }

    pub fn apply_limits(&self, up: Option<u64>, down: Option<u64>, transfers: Option<usize>) {
        let mut s = self.settings.write().unwrap_or_else(|p| p.into_inner());
        if let Some(up) = up {
            s.bwlimit_up = up;
            self.up.set_rate(up);
        }
        if let Some(down) = down {
            s.bwlimit_down = down;
            self.down.set_rate(down);
        }
        if let Some(t) = transfers {
            s.transfers = t.max(1);
        }
        drop(s);
        // More slots may be free now.
        self.kick.notify_one();
    }

    /// Removes a blob's partial download, if a stopped download left one.
    pub async fn remove_partial(&self, ns: &Namespace, id: &BlobId) {
        let partial = self.data.partial(ns, id);
        let _ = tokio::task::spawn_blocking(move || partial.remove()).await;
    }

    /// Removes a payload file; logged, not fatal (the row is already gone).
    pub async fn remove_payload(&self, ns: &Namespace, id: &BlobId) {
        let path = self.data.payload_path(ns, id);
        if let Err(e) = tokio::task::spawn_blocking(move || payload::remove(&path))
            .await
            .unwrap_or_else(|j| Err(std::io::Error::other(j)))
        {
            warn!(%ns, %id, error = %e, "could not remove a payload file");
        }
    }
}

/// Counters of one transfer phase.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TransferStats {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    pub deleted_remote: u64,
    pub retried: u64,
    pub failed: u64,
}

impl TransferStats {
    fn add(&mut self, o: TransferStats) {
        self.uploaded += o.uploaded;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
        self.downloaded += o.downloaded;
        self.deleted_remote += o.deleted_remote;
        self.retried += o.retried;
        self.failed += o.failed;
    }
}

/// The sync engine.
pub struct Engine<R: Remote, C: Clock> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) remote: R,
    pub(crate) clock: C,
    sync_rx: tokio::sync::Mutex<mpsc::Receiver<SyncRequest>>,
    me: std::sync::Weak<Self>,
}

impl<R: Remote, C: Clock> Engine<R, C> {
    /// An engine over an open store; `run` starts its loop.
    pub fn new(
        store: Store,
        remote: R,
        clock: C,
        key: StorageKey,
        data: DataDir,
        settings: EngineSettings,
        events: EventBus,
    ) -> Arc<Self> {
        let (sync_tx, sync_rx) = mpsc::channel(SYNC_QUEUE);
        let c2 = clock.clone();
        let state = RuntimeState {
            transfers: HashMap::new(),
            next_transfer_id: 0,
            remote: RemoteState {
                url: remote.describe(),
                ..Default::default()
            },
            last_cycle: None,
            next_cycle: None,
            cycle_running: false,
            rebuild_pending: false,
            started: clock.now(),
            namespaces_discovered: false,
            namespaces_head: None,
            alarms: BTreeMap::new(),
            refused_external: HashSet::new(),
            between_cycles: TransferStats::default(),
            recipient_checked: None,
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            shared: Arc::new(Shared {
                store,
                events,
                syncer: payload::SyncGroup::new(&data),
                data,
                delete_key: DeleteKey::derive(&key),
                key,
                up: ratelimit::RateLimiter::new(settings.bwlimit_up),
                down: ratelimit::RateLimiter::new(settings.bwlimit_down),
                settings: RwLock::new(settings),
                state: Mutex::new(state),
                sync_tx,
                kick: Notify::new(),
                locks: Mutex::new(HashMap::new()),
                now: Box::new(move || c2.now()),
                cancel: CancellationToken::new(),
                crash_points: Mutex::new(HashSet::new()),
                crashed: Default::default(),
                resumed: Mutex::new(HashSet::new()),
                key_check: Default::default(),
            }),
            remote,
            clock,
            sync_rx: tokio::sync::Mutex::new(sync_rx),
        })
    }

    /// This engine as an `Arc` (it is only ever built inside one, by [`Engine::new`]).
    pub(crate) fn self_arc(&self) -> Arc<Self> {
        self.me
            .upgrade()
            .expect("an engine method runs, so its Arc is alive")
    }

    /// The handle the control service uses.
    pub fn handle(self: &Arc<Self>) -> EngineHandle {
        EngineHandle::new(self.shared.clone(), self.clone())
    }

    /// The store (tests wait on [`Store::on_exit`] before touching its file).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The remote (tests reach through it to the fault injector).
    pub fn remote(&self) -> &R {
        &self.remote
    }

    /// Test hook: the next time the engine reaches `point` it stops there as if the process
    /// died (no further disk or store writes for that operation). Points:
    /// `put.after_link`, `upload.after_salt`, `upload.after_put`, `download.after_body`,
    /// `download.after_install`, `delete.after_remote`.
    #[doc(hidden)]
    pub fn arm_crash_point(&self, point: &'static str) {
        self.shared
            .crash_points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(point);
    }

    /// Marks the store as freshly rebuilt: the next cycle does a full listing and adopts the
    /// payload files found on disk.
    pub fn set_rebuild_pending(&self) {
        self.shared.state().rebuild_pending = true;
    }

    /// Changes the reloadable settings (SIGHUP): limits, interval, policies.
    pub fn reload(&self, new: &EngineSettings) {
        {
            let mut s = self
                .shared
                .settings
                .write()
                .unwrap_or_else(|p| p.into_inner());
            s.sync_interval = new.sync_interval;
            s.max_invalid_retries = new.max_invalid_retries;
            s.full_list_every = new.full_list_every;
            s.namespaces = new.namespaces.clone();
            s.mass_delete_guard = new.mass_delete_guard;
        }
        self.shared.apply_limits(
            Some(new.bwlimit_up),
            Some(new.bwlimit_down),
            Some(new.transfers),
        );
        // Wake the loop: the interval may be shorter now.
        let _ = self.shared.sync_tx.try_send(SyncRequest {
            full: false,
            allow_mass_delete: false,
            reply: None,
        });
    }

    /// The cycle loop: a cycle every `sync_interval` and on request; transfers as soon as
    /// something is put or a retry is due. Returns once `cancel` fires and in-flight transfers
    /// have drained (bounded by `drain_timeout`).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        // Plaintext payloads of an earlier release are sealed in the background; they stay
        // readable meanwhile, and an upload seals its own payload first.
        tokio::spawn(self.clone().migrate_at_rest(cancel.child_token()));
        let mut rx = self.sync_rx.lock().await;
        let mut next_tick = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_tick {
                let summary = self.run_cycle_inner(false, false, &cancel).await;
                let interval = {
                    let s = self.shared.settings();
                    s.time_scale.apply(s.sync_interval)
                };
                next_tick = tokio::time::Instant::now() + interval;
                self.shared.state().next_cycle = Some((self.shared.now)() + interval);
                drop(summary);
                if cancel.is_cancelled() {
                    break;
                }
                continue;
            }
            // Sleep until the next tick or the next due retry, whichever is first.
            // While the remote refuses our credentials only the periodic cycle retries (it
            // lists first, which tells whether the token works again): no busy wake-ups.
            let refused = self.shared.state().remote.unauthorized;
            let until_due = match self.shared.store.next_due().await {
                _ if refused => Duration::MAX,
                Ok(Some(t)) => t
                    .duration_since(self.clock.now())
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_millis(5)),
                _ => Duration::MAX,
            };
            let wake = next_tick.min(now + until_due.min(Duration::from_secs(86400)));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() < next_tick {
                        self.transfers_only(&cancel).await;
                    }
                }
                Some(first) = rx.recv() => {
                    // Coalesce every request queued meanwhile into this one cycle.
                    let mut reqs = vec![first];
                    while let Ok(r) = rx.try_recv() {
                        reqs.push(r);
                    }
                    let full = reqs.iter().any(|r| r.full);
                    let allow = reqs.iter().any(|r| r.allow_mass_delete);
                    let summary = self.run_cycle_inner(full, allow, &cancel).await;
                    for r in reqs {
                        if let Some(reply) = r.reply {
                            let _ = reply.send(summary.clone());
                        }
                    }
                }
                _ = self.shared.kick.notified() => {
                    self.transfers_only(&cancel).await;
                }
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        self.shared.cancel.cancel();
        info!("engine stopped");
    }

    async fn transfers_only(self: &Arc<Self>, cancel: &CancellationToken) {
        if self.shared.state().remote.unauthorized {
            return;
        }
        // An upload retry whose earlier attempt may have reached the server (its salt is
        // recorded: the PUT got through but the answer was lost, or we died before recording
        // it) goes after a listing: if another device deleted the blob since, only the
        // listing's tombstone tells (`plan::diff` -> Gone), and a PUT decided without it is
        // accepted on the tombstoned id and resurrects the blob on every device.
        // (planner_model: `..._never_uploaded_again_by_a_retry_between_cycles`.)
        if self.attempted_upload_due().await {
            let mut summary = CycleSummary::default();
            match self.sync_listing(false, false, &mut summary).await {
                Ok(()) => self.shared.note_remote_ok(),
                Err(SyncError::Remote(e)) => {
                    self.shared.note_remote_err(&e);
                    warn!(error = %e, "listing before an upload retry failed");
                }
                Err(e) => warn!(error = %e, "listing before an upload retry failed"),
            }
        }
        let stats = self.run_transfers(cancel).await;
        self.shared.state().between_cycles.add(stats);
    }

    /// Whether a due `PENDING_UPLOAD` row has had an upload attempt (salt recorded).
    async fn attempted_upload_due(&self) -> bool {
        let filter = crate::store::DueFilter {
            now: self.clock.now(),
            limit: 1000,
            statuses: vec![Status::PendingUpload],
        };
        match self.shared.store.due(filter).await {
            Ok(rows) => rows.iter().any(|b| b.upload_salt.is_some()),
            Err(_) => false,
        }
    }

    /// One full cycle: list every namespace, apply the diff, run due transfers. For tests and
    /// the loop; never call it concurrently with `run` (the loop is the only caller there).
    pub async fn run_cycle(self: &Arc<Self>) -> CycleSummary {
        self.run_cycle_inner(false, false, &CancellationToken::new())
            .await
    }

    /// Like [`Engine::run_cycle`], applying the deletions the mass-deletion guard holds.
    pub async fn run_cycle_allowing_mass_delete(self: &Arc<Self>) -> CycleSummary {
        self.run_cycle_inner(false, true, &CancellationToken::new())
            .await
    }

    /// Like [`Engine::run_cycle`], forcing a full listing.
    pub async fn run_full_cycle(self: &Arc<Self>) -> CycleSummary {
        self.run_cycle_inner(true, false, &CancellationToken::new())
            .await
    }

    async fn run_cycle_inner(
        self: &Arc<Self>,
        force_full: bool,
        allow_mass_delete: bool,
        cancel: &CancellationToken,
    ) -> CycleSummary {
        let cycle = match self.shared.store.next_cycle().await {
            Ok(n) => n,
            Err(e) => {
                let message = format!("cannot start a cycle: {e}");
                self.shared.events.publish(EventKind::Error {
                    message: message.clone(),
                });
                return CycleSummary {
                    error: Some(message),
                    ..Default::default()
                };
            }
        };
        let span = info_span!("cycle", cycle, full = tracing::field::Empty);
        async move {
            let mut summary = CycleSummary {
                cycle,
                started: Some(self.clock.now()),
                ..Default::default()
            };
            self.shared.state().cycle_running = true;
            let full_every = self.shared.settings().full_list_every;
            let periodic_full = full_every > 0 && cycle % u64::from(full_every) == 0;
            let full_list = force_full || periodic_full || self.shared.state().rebuild_pending;
            self.shared
                .events
                .publish(EventKind::CycleStarted { cycle, full_list });
            match self
                .sync_listing(force_full || periodic_full, allow_mass_delete, &mut summary)
                .await
            {
                Ok(()) => self.shared.note_remote_ok(),
                Err(SyncError::Remote(e)) => {
                    self.shared.note_remote_err(&e);
                    warn!(error = %e, "listing failed");
                    summary.error = Some(e.to_string());
                }
                Err(e) => summary.error = Some(e.to_string()),
            }
            tracing::Span::current().record("full", summary.full_listing);
            if summary.error.is_none() {
                self.backfill_salts().await;
            }
            let mut stats = std::mem::take(&mut self.shared.state().between_cycles);
            if !self.shared.state().remote.unauthorized {
                stats.add(self.run_transfers(cancel).await);
            }
            summary.uploaded = stats.uploaded;
            summary.downloaded = stats.downloaded;
            summary.deleted_remote = stats.deleted_remote;
            summary.retried = stats.retried;
            summary.failed = stats.failed;
            summary.bytes_up = stats.bytes_up;
            summary.bytes_down = stats.bytes_down;
            summary.finished = Some(self.clock.now());
            let busy = summary.uploaded
                + summary.reuploaded_missing
                + summary.deletions_held
                + summary.downloaded
                + summary.deleted_local
                + summary.deleted_remote
                + summary.retried
                + summary.failed
                > 0;
            // Quiet cycles are debug: one info line a minute per idle daemon is noise.
            if busy || summary.error.is_some() || summary.full_listing {
                info!(
                    uploaded = summary.uploaded,
                    downloaded = summary.downloaded,
                    deleted_local = summary.deleted_local,
                    deleted_remote = summary.deleted_remote,
                    retried = summary.retried,
                    failed = summary.failed,
                    reuploaded_missing = summary.reuploaded_missing,
                    deletions_held = summary.deletions_held,
                    changes = summary.listed_changes,
                    // Recorded only when there was one (no `error=""` on every line).
                    error = summary.error.as_deref(),
                    "cycle finished"
                );
            } else {
                tracing::debug!(
                    changes = summary.listed_changes,
                    "cycle finished: nothing to do"
                );
            }
            {
                let mut st = self.shared.state();
                st.cycle_running = false;
                st.last_cycle = Some(summary.clone());
            }
            self.shared.events.publish(EventKind::CycleFinished {
                summary: summary.clone(),
            });
            summary
        }
        .instrument(span)
        .await
    }

    /// The namespaces a cycle lists: `default`, every configured one, every one with rows,
    /// and — when `ask_remote` (full listings) — every one the remote holds blobs or
    /// tombstones in, so a new device learns of namespaces created elsewhere. Those get the
    /// policy of the config, eager when not configured.
    async fn namespaces(&self, ask_remote: bool) -> Result<Vec<Namespace>, SyncError> {
        let mut set: std::collections::BTreeSet<Namespace> =
            self.shared.settings().namespaces.keys().cloned().collect();
        set.insert(Namespace::default());
        // The default incoming box is listed like a configured namespace: deliveries start it.
        if let Ok(mx) = Namespace::new(blobsync_shared::config::DEFAULT_INCOMING_NAMESPACE)
            && self.shared.settings().policy(&mx) == NamespacePolicy::Incoming
        {
            set.insert(mx);
        }
        set.extend(self.shared.store.namespaces().await?);
        if ask_remote {
            match self.remote.namespaces().await {
                Ok(remote) => {
                    set.extend(remote);
                    self.shared.state().namespaces_discovered = true;
                }
                // Unreachable or refused: the listings would fail the same way; say so once.
                Err(e) if e.is_unreachable() || e.is_unauthorized() => return Err(e.into()),
                // E.g. a server older than `?namespaces=1` (400): sync what we know of, and
                // try again at the next periodic full listing rather than every cycle.
                Err(e) => {
                    warn!(
                        error = %e,
                        "cannot list the remote's namespaces; syncing only the known ones"
                    );
                    self.shared.state().namespaces_discovered = true;
                }
            }
        }
        Ok(set.into_iter().collect())
    }

    /// Compares the remote's identity (URL, user, server instance) with the one this store
    /// last synced with. On a change (or the first contact) it forgets the old remote's
    /// cursors and sequence numbers, so the next listing is full and reconciles every local
    /// blob (present there: kept; absent: uploaded again). Returns whether it reset.
    async fn check_remote_identity(&self) -> Result<bool, SyncError> {
        let now = self.remote.identity().await?;
        self.shared.state().remote.identity = Some(now.clone());
        let store = &self.shared.store;
        let known = store.remote_identity().await?;
        if known.as_deref() == Some(now.as_str()) {
            return Ok(false);
        }
        match &known {
            Some(old) => {
                warn!(old = %old, new = %now, "the remote changed: reconciling every local blob against it (nothing is deleted because of the change)");
                self.shared.raise(
                    AlarmKind::RemoteChanged,
                    None,
                    0,
                    format!(
                        "the remote changed from {old} to {now}: cursors were reset and every \
                         local blob is reconciled against it (blobs it lacks are uploaded again)"
                    ),
                );
            }
            None => info!(remote = %now, "first contact with this remote"),
        }
        store.reset_remote(now).await?;
        Ok(true)
    }

    /// Copies downloaded by a daemon older than delete proofs have no salt recorded, so no
    /// proof could ever verify against them and their legitimate deletions would come back as
    /// "lost". A few per cycle, their salt is read from the server copy's header (a ranged
    /// read). Trusting the server for it is safe: a wrong salt only makes a proof fail to
    /// verify, which deletes nothing. Once none is left, a meta flag ends the search.
    async fn backfill_salts(&self) {
        const PER_CYCLE: usize = 64;
        const DONE: &str = crate::store::ops::SALT_BACKFILL_DONE;
        let store = &self.shared.store;
        if matches!(store.meta(DONE).await, Ok(Some(_))) {
            return;
        }
        let rows = match store.synced_without_salt(PER_CYCLE).await {
            Ok(r) => r,
            Err(e) => return warn!(error = %e, "cannot read rows to backfill salts"),
        };
        let mut failed = false;
        for b in &rows {
            match self.salt_on_server(b).await {
                Ok(Some(salt)) => {
                    if let Err(e) = store.backfill_salt(&b.ns, &b.id, salt).await {
                        warn!(error = %e, "cannot record a backfilled salt");
                        failed = true;
                    }
                }
                // Not on the server (the listing will say lost or deleted), or not ours to
                // parse (external): nothing to backfill from.
                Ok(None) | Err(RemoteError::NotFound) => {}
                Err(e) => {
                    debug!(error = %e, "salt backfill stopped for this cycle");
                    failed = true;
                    break;
                }
            }
        }
        if !failed && rows.len() < PER_CYCLE {
            let _ = store.set_meta(DONE, Some("1".into())).await;
        }
    }

    /// The mass-deletion guard, after a namespace's listing: proven remote deletions are
    /// applied unless they would remove more than max(100, 25 %) of the namespace's blobs in
    /// one go; then they stay held (nothing is deleted) and an alarm asks the user to allow
    /// them (`blobctl sync --allow-mass-delete`) or to look into it.
    async fn apply_held_deletions(
        &self,
        ns: &Namespace,
        allow: bool,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        let store = &self.shared.store;
        let held = store.held_count(ns).await?;
        if held == 0 {
            return Ok(());
        }
        let total: u64 = store
            .counts()
            .await?
            .by_namespace
            .get(ns)
            .map_or(0, |m| m.values().sum());
        let limit = mass_delete_limit(total);
        if allow || !self.shared.settings().mass_delete_guard || held <= limit {
            let applied = store.apply_held(ns, self.clock.now()).await?;
            self.after_applied(applied, summary).await;
            self.shared.clear_alarm(AlarmKind::MassDeleteHeld, Some(ns));
            return Ok(());
        }
        summary.deletions_held += held;
        self.shared.raise(
            AlarmKind::MassDeleteHeld,
            Some(ns),
            held,
            format!(
                "{held} remote deletions in namespace {ns} are held: they would remove more than \
                 {limit} of its {total} blobs at once. Nothing was deleted. If you deleted them \
                 on another device, run `blobctl sync --allow-mass-delete`; if not, check the \
                 server"
            ),
        );
        Ok(())
    }

    /// Steps 1-3 of a cycle for every namespace.
    async fn sync_listing(
        &self,
        force_full: bool,
        allow_mass_delete: bool,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        // Never apply what one remote says to cursors and sequence numbers learnt from
        // another: a changed remote is reconciled by a full listing first.
        let changed = self.check_remote_identity().await?;
        self.publish_recipient(changed).await;
        let force_full = changed || force_full;
        let rebuild = self.shared.state().rebuild_pending;
        // The first cycle of this run discovers namespaces too (cycle numbers persist, so the
        // periodic full listing may be far away on a fresh start).
        let discover = force_full || rebuild || !self.shared.state().namespaces_discovered;
        let known = self.namespaces(discover).await?;
        if discover {
            // Before this cycle's listings: any change they show is asked about again below
            // (a first cycle, with no cursor yet, asks again once).
            let before = self.listing_head(&known).await?.unwrap_or(0);
            self.shared.state().namespaces_head = Some(before);
        }
        for ns in &known {
            self.sync_namespace(ns, force_full || rebuild, summary)
                .await?;
            self.apply_held_deletions(ns, allow_mass_delete, summary)
                .await?;
        }
        // Something changed on the server since the namespaces were last asked for (the
        // user's sequence number moved): it may be in a namespace this device has never seen,
        // so ask again now. An idle cycle sends no extra request.
        let head = self.listing_head(&known).await?;
        let asked_at = self.shared.state().namespaces_head;
        if head.is_some() && asked_at.is_some_and(|a| head > Some(a)) {
            for ns in self.namespaces(true).await? {
                if !known.contains(&ns) {
                    info!(%ns, "a namespace created elsewhere: syncing it");
                    self.sync_namespace(&ns, force_full || rebuild, summary)
                        .await?;
                    self.apply_held_deletions(&ns, allow_mass_delete, summary)
                        .await?;
                }
            }
            self.shared.state().namespaces_head = head;
        }
        if rebuild {
            self.adopt_payloads().await?;
            self.shared.state().rebuild_pending = false;
        }
        Ok(())
    }

    /// The highest listing cursor of `namespaces`: the user's sequence number as of the
    /// latest listing (every `since` listing returns it). `None` before any listing, and
    /// against a remote without cursors (a Soledad server lists in full every cycle).
    async fn listing_head(&self, namespaces: &[Namespace]) -> Result<Option<u64>, SyncError> {
        let mut head = None;
        for ns in namespaces {
            head = head.max(self.shared.store.cursor(ns).await?);
        }
        Ok(head)
    }

    /// Steps 1-3 of a cycle for one namespace: list, diff, apply, page by page.
    ///
    /// An incremental listing (changes since the cursor) is diffed and applied one page at a
    /// time, each page's facts and the cursor moved to that page's `seq` in ONE transaction:
    /// memory is one page (up to 5,000 changes and their rows) whatever the backlog, a crash
    /// mid-listing resumes after the last applied page, and every committed page leaves a
    /// consistent store. A page with nothing to apply that leaves the cursor where it was
    /// writes nothing (the no-change cycle costs no transaction).
    ///
    /// A full listing (no cursor, a rejected cursor, a rebuild, every `full_list_every`
    /// cycles) is applied page by page too, but keeps the old cursor until its end: only
    /// once every page is in can it tell which local rows the server no longer names
    /// ([`plan::absent`]), so a crash before then must lead to another full listing (or an
    /// incremental one from the old cursor, which re-reads what the pages already applied).
    /// It holds the ids it saw (not the changes) and walks the local rows as (id, status)
    /// pages.
    async fn sync_namespace(
        &self,
        ns: &Namespace,
        force_full: bool,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        let store = &self.shared.store;
        let cursor = store.cursor(ns).await?;
        let policy = self.shared.settings().policy(ns);
        match cursor {
            Some(c) if !force_full && !self.remote.full_listings_only() => {
                match self.incremental_listing(ns, c, policy, summary).await {
                    Err(SyncError::Remote(RemoteError::CursorInvalid { .. })) => {
                        warn!(%ns, "listing cursor rejected by the server; doing a full listing");
                        store.clear_cursor(ns).await?;
                        self.full_listing(ns, None, policy, summary).await?;
                    }
                    other => other?,
                }
            }
            _ => self.full_listing(ns, cursor, policy, summary).await?,
        }
        // A namespace switched from lazy to eager (config reload): fetch what was left remote.
        // (Read through the status index: an O(1) seek when there is none.)
        if policy != NamespacePolicy::Lazy {
            let wanted: Vec<_> = store
                .rows_with_status(ns, Status::RemoteOnly)
                .await?
                .into_iter()
                // Not lazily left there: not ours to read (see `Engine::foreign_format`).
                .filter(|b| b.last_error.as_deref() != Some(transfer::FOREIGN_FORMAT))
                .map(|b| {
                    let u = crate::store::ops::RowUpdate::default();
                    (b.id, crate::status::Transition::Wanted, u)
                })
                .collect();
            if !wanted.is_empty() {
                store.transition_many(ns, wanted).await?;
            }
        }
        Ok(())
    }

    /// Changes since `cursor`, diffed and applied page by page (see [`Engine::sync_namespace`]).
    async fn incremental_listing(
        &self,
        ns: &Namespace,
        cursor: u64,
        policy: NamespacePolicy,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        let mut since = cursor;
        loop {
            let page = self.remote.changes(ns, since).await?;
            summary.listed_changes += page.changes.len() as u64;
            let facts = self.diff_page(ns, &page.changes, policy).await?;
            drop(page.changes);
            // Nothing changed and the cursor stays: no transaction (no WAL fsync) at all.
            if !facts.is_empty() || page.seq != since {
                self.apply_page(ns, facts, Some(page.seq), summary).await?;
            }
            let progressed = page.seq > since;
            since = page.seq;
            if !page.more || !progressed {
                return Ok(());
            }
        }
    }

    /// The whole listing (`since = 0`), applied page by page; the local rows it does not name
    /// are removed at the end, and only then does the cursor move (see
    /// [`Engine::sync_namespace`]). `cursor` is the stored one (`None` when there is none).
    async fn full_listing(
        &self,
        ns: &Namespace,
        cursor: Option<u64>,
        policy: NamespacePolicy,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        /// Local rows checked against the listing per store call.
        const LOCAL_PAGE: usize = 5000;
        summary.full_listing = true;
        let mut listed: HashSet<BlobId> = HashSet::new();
        let mut since = 0;
        loop {
            let page = self.remote.changes(ns, since).await?;
            summary.listed_changes += page.changes.len() as u64;
            listed.extend(page.changes.iter().map(|c| c.id.clone()));
            let facts = self.diff_page(ns, &page.changes, policy).await?;
            drop(page.changes);
            if !facts.is_empty() {
                self.apply_page(ns, facts, None, summary).await?;
            }
            let progressed = page.seq > since;
            since = page.seq;
            if !page.more || !progressed {
                break;
            }
        }
        let store = &self.shared.store;
        let mut after: Option<BlobId> = None;
        loop {
            let local = store.id_status_page(ns, after.take(), LOCAL_PAGE).await?;
            let gone = plan::absent(
                local.iter().map(|(id, s, a)| (id, *s, *a)),
                |id: &BlobId| listed.contains(id),
            );
            if !gone.is_empty() {
                self.apply_page(ns, gone, None, summary).await?;
            }
            if local.len() < LOCAL_PAGE {
                break;
            }
            after = local.into_iter().next_back().map(|(id, _, _)| id);
        }
        if cursor != Some(since) {
            self.apply_page(ns, Vec::new(), Some(since), summary)
                .await?;
        }
        Ok(())
    }

    /// The facts of one listing page, diffed against the rows of the ids it names only.
    async fn diff_page(
        &self,
        ns: &Namespace,
        changes: &[blobsync_shared::wire::Change],
        policy: NamespacePolicy,
    ) -> Result<Vec<crate::store::RemoteFact>, SyncError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let refused: Vec<&blobsync_shared::wire::Change> = changes
            .iter()
            .filter(|c| !plan::acceptable(c, policy))
            .collect();
        if !refused.is_empty() {
            self.refuse_external(ns, &refused);
        }
        let ids = changes.iter().map(|c| c.id.clone()).collect();
        let local = self.shared.store.rows_for(ns, ids).await?;
        let dk = &self.shared.delete_key;
        // A remote that keeps no proofs (Soledad) deletes on its tombstones alone.
        let unproven_delete = self.remote.tombstones_without_proof_delete();
        Ok(plan::diff_changes(&local, changes, policy, |l, c| {
            match (&l.upload_salt, &c.proof) {
                (Some(salt), Some(proof)) => dk.verify(ns, &l.id, salt, proof),
                (_, None) => unproven_delete,
                _ => false,
            }
        }))
    }

    /// External blobs listed outside an incoming namespace: nothing authenticates them, so
    /// they are never stored or handed out; each is logged once per run, and alarmed.
    fn refuse_external(&self, ns: &Namespace, refused: &[&blobsync_shared::wire::Change]) {
        let new: Vec<&BlobId> = {
            let mut st = self.shared.state();
            refused
                .iter()
                .filter(|c| st.refused_external.insert((ns.clone(), c.id.clone())))
                .map(|c| &c.id)
                .collect()
        };
        if new.is_empty() {
            return;
        }
        for id in &new {
            warn!(%ns, %id, "refused an external blob outside an incoming namespace");
        }
        self.shared.raise(
            AlarmKind::ExternalRefused,
            Some(ns),
            new.len() as u64,
            format!(
                "the server lists {} blob(s) in namespace {ns} as delivered by an app \
                 (external), but {ns} is not an incoming namespace: they were refused, not \
                 stored (first: {}). Only namespaces with policy = \"incoming\" take app \
                 deliveries",
                new.len(),
                new[0]
            ),
        );
    }

    /// Applies listing facts (and moves the cursor when `cursor` is set) in one transaction,
    /// then removes the payloads and partials of the rows it removed.
    async fn apply_page(
        &self,
        ns: &Namespace,
        facts: Vec<crate::store::RemoteFact>,
        cursor: Option<u64>,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        let unproven = facts
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    crate::store::RemoteFact::Lost {
                        unproven_tombstone: true,
                        ..
                    }
                )
            })
            .count() as u64;
        let applied = self
            .shared
            .store
            .apply_remote(ns, facts, cursor, self.clock.now())
            .await?;
        let lost = applied
            .iter()
            .filter(|ch| ch.from == Some(Status::Synced) && ch.to == Some(Status::PendingUpload))
            .count() as u64;
        if lost > 0 {
            summary.reuploaded_missing += lost;
            warn!(%ns, blobs = lost, unproven_tombstones = unproven, "the server lost blobs this device holds: uploading them again");
        }
        if unproven > 0 {
            self.shared.raise(
                AlarmKind::UnprovenTombstone,
                Some(ns),
                unproven,
                format!(
                    "the server sent {unproven} tombstone(s) in namespace {ns} without a valid \
                     delete proof from one of your devices (forged, written by an administrator \
                     or by an older blobsyncd): nothing was deleted, the blobs are uploaded again"
                ),
            );
        }
        self.after_applied(applied, summary).await;
        Ok(())
    }

    /// After listing facts or held deletions were committed: removes the payloads and
    /// partials of the rows they removed, and counts local deletions.
    async fn after_applied(
        &self,
        applied: Vec<crate::store::StatusChange>,
        summary: &mut CycleSummary,
    ) {
        for ch in applied {
            let had_payload = ch.from.is_some_and(Status::has_payload);
            let keeps_payload = ch.to.is_some_and(Status::has_payload);
            if had_payload && !keeps_payload {
                self.shared.remove_payload(&ch.ns, &ch.id).await;
            }
            if ch.to.is_none() && ch.from == Some(Status::PendingDownload) {
                // A download stopped by a restart may have left a partial for it.
                self.shared.remove_partial(&ch.ns, &ch.id).await;
            }
            if ch.to.is_none() && ch.from != Some(Status::PendingDelete) {
                summary.deleted_local += 1;
            }
        }
    }

    /// After a rebuild: every payload file on disk without a row becomes `SYNCED` when the
    /// server has it, else `PENDING_UPLOAD`.
    async fn adopt_payloads(&self) -> Result<(), SyncError> {
        let data = self.shared.data.clone();
        let files = tokio::task::spawn_blocking(move || payload::scan_payloads(&data))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(StoreError::Io)?;
        let mut adopted = 0u64;
        let mut any_plain = false;
        for (ns, id, path) in files {
            let existing = self.shared.store.get(&ns, &id).await?;
            // A sealed payload is authenticated (a damaged one is skipped: never adopted as
            // if it were plaintext); a plaintext one an earlier release left is hashed and
            // listed for the at-rest migration.
            let key = self.shared.key.clone();
            let (ns2, id2) = (ns.clone(), id.clone());
            let read = tokio::task::spawn_blocking(move || {
                let len = std::fs::metadata(&path)?.len();
                // A header naming this very blob is a sealed payload (damaged if its length or
                // a segment is wrong, and then left out); anything else is plaintext of an
                // earlier release.
                match crate::store::sealed::header_of(&path, &ns2, &id2) {
                    Ok(h) if h.stored_size() != len => {
                        warn!(ns = %ns2, id = %id2, "rebuild: a payload file is cut short or too long; not adopted");
                        Ok(None)
                    }
                    Ok(_) => {
                        match crate::store::sealed::authenticate(&key, &path, &ns2, &id2) {
                            Ok(a) => Ok(Some((a.sha256, a.header.plain_size, false))),
                            Err(e) => {
                                warn!(ns = %ns2, id = %id2, error = %e, "rebuild: a payload file failed authentication; not adopted");
                                Ok(None)
                            }
                        }
                    }
                    _ => payload::sha256_file(&path).map(|(sha, n)| Some((sha, n, true))),
                }
            })
            .await;
            let (sha, size, plain) = match read {
                Ok(Ok(Some(v))) => v,
                _ => continue,
            };
            match existing {
                Some(row) if row.status == Status::PendingDownload => {
                    // The server has it and so do we: adopt without a download.
                    let u = crate::store::ops::RowUpdate {
                        size: Some(size),
                        sha256: Some(sha),
                        now: Some(self.clock.now()),
                        ..Default::default()
                    };
                    self.shared
                        .store
                        .transition(&ns, &id, crate::status::Transition::DownloadSucceeded, u)
                        .await?;
                    adopted += 1;
                }
                Some(_) => {}
                None => {
                    let blob = crate::store::NewLocalBlob {
                        ns: ns.clone(),
                        id: id.clone(),
                        size,
                        sha256: sha,
                        priority: Default::default(),
                        local_only: false,
                        created: self.clock.now(),
                    };
                    self.shared.store.insert_local(blob).await?;
                    adopted += 1;
                }
            }
            if plain {
                self.shared.store.mark_plain(&ns, &id).await?;
                any_plain = true;
            }
        }
        if any_plain {
            let me = self.self_arc();
            tokio::spawn(me.migrate_at_rest(self.shared.cancel.child_token()));
        }
        warn!(
            adopted,
            "store rebuilt: adopted payload files found on disk"
        );
        Ok(())
    }

    /// Step 4: runs due transfers under the `transfers` limit, highest priority first, until
    /// nothing is due; picks up new work (puts, retries) as slots free.
    pub(crate) async fn run_transfers(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> TransferStats {
        let mut stats = TransferStats::default();
        let mut tasks: JoinSet<TransferStats> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, Vec<(String, String)>> = HashMap::new();
        let child = cancel.child_token();
        loop {
            if cancel.is_cancelled()
                || self.shared.state().remote.unauthorized
                || self
                    .shared
                    .crashed
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                break;
            }
            let settings = self.shared.settings();
            let busy: HashSet<(String, String)> = in_flight.values().flatten().cloned().collect();
            let slots = settings.transfers.saturating_sub(tasks.len());
            let mut started = 0;
            if slots > 0 {
                let mut due = self
                    .shared
                    .store
                    .due(crate::store::DueFilter {
                        now: self.clock.now(),
                        limit: (busy.len() + slots) * settings.batch.max_count.max(1),
                        statuses: vec![],
                    })
                    .await
                    .unwrap_or_else(|e| {
                        warn!(error = %e, "cannot read the queue");
                        Vec::new()
                    });
                if self.shared.wrong_key() {
                    // Nothing it downloads can be decrypted: leave downloads queued.
                    due.retain(|b| b.status != Status::PendingDownload);
                }
                for action in plan::next_transfers(&due, &busy, slots, settings.batch) {
                    let keys = action_keys(&action);
                    let me = self.clone();
                    let token = child.clone();
                    let h = tasks.spawn(async move { me.execute(action, token).await });
                    in_flight.insert(h.id(), keys);
                    started += 1;
                }
            }
            if tasks.is_empty() && started == 0 {
                break;
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    match done {
                        Ok((id, s)) => { in_flight.remove(&id); stats.add(s); }
                        Err(e) => { in_flight.remove(&e.id()); warn!(error = %e, "transfer task failed"); }
                    }
                }
                _ = self.shared.kick.notified() => {}
                _ = cancel.cancelled() => break,
            }
        }
        if !tasks.is_empty() {
            // Shutdown: let in-flight transfers finish within the bound, then cut them off;
            // their rows stay queued, so the next start resumes them.
            let bound = self.shared.settings().drain_timeout;
            info!(
                in_flight = tasks.len(),
                ?bound,
                "draining in-flight transfers"
            );
            let drained = tokio::time::timeout(bound, async {
                while let Some(done) = tasks.join_next().await {
                    if let Ok(s) = done {
                        stats.add(s);
                    }
                }
            })
            .await;
            if drained.is_err() {
                warn!(
                    left = tasks.len(),
                    "drain timed out; cancelling the rest (they stay queued)"
                );
                child.cancel();
                while tasks.join_next().await.is_some() {}
            }
        }
        stats
    }

    async fn execute(self: Arc<Self>, action: Action, cancel: CancellationToken) -> TransferStats {
        let mut s = TransferStats::default();
        match action {
            Action::Upload(b) => self.upload_one(b, &cancel, &mut s).await,
            Action::Download(b) => {
                let _ = self.download_one(b, false, &cancel, &mut s).await;
            }
            Action::DeleteRemote(b) => self.delete_one(b, &mut s).await,
            Action::UploadBatch(bs) => self.upload_batch(bs, &cancel, &mut s).await,
            Action::DownloadBatch(bs) => self.download_batch(bs, &cancel, &mut s).await,
        }
        s
    }
}

/// The most remote deletions one cycle applies to a namespace of `total` blobs without the
/// user's say: max(100, 25 %).
pub fn mass_delete_limit(total: u64) -> u64 {
    (total / 4).max(100)
}

fn action_keys(a: &Action) -> Vec<(String, String)> {
    let key = |b: &crate::store::BlobInfo| (b.ns.to_string(), b.id.to_string());
    match a {
        Action::Upload(b) | Action::Download(b) | Action::DeleteRemote(b) => vec![key(b)],
        Action::UploadBatch(bs) | Action::DownloadBatch(bs) => bs.iter().map(key).collect(),
    }
}
