//! The sync engine: the cycle loop (list, diff, apply, transfer), the transfers themselves
//! (streamed encrypt/upload and download/verify/decrypt with resume), retries on the seed's
//! schedule, and the state `status` reports.
//!
//! `Engine<R: Remote, C: Clock>` receives its remote and clock at construction; the pure
//! decisions live in [`plan`]. The engine never opens a socket itself (the remote does) and
//! never touches SQLite directly (the store does).
//!
//! Here: the [`Engine`] itself and step 4, running due transfers under the limits. The cycle
//! loop and a cycle's frame are in `cycle`, listing and applying in `listing`, the state
//! `status` reports and what handles share in `state`; uploads and downloads in `transfer`.

mod atrest;
mod cycle;
pub mod error;
pub(crate) mod health;
mod incoming;
pub(crate) mod keycheck;
mod listing;
pub mod plan;
pub mod put;
pub mod ratelimit;
mod state;
pub(crate) mod transfer;
pub mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use blobsync_shared::StorageKey;
use blobsync_shared::tombstone::DeleteKey;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::events::EventBus;
use crate::handle::EngineHandle;
use crate::remote::{Remote, RemoteError};
use crate::status::Status;
use crate::store::payload::{self, DataDir};
use crate::store::{Store, StoreError};
use plan::Action;

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

pub use state::{EngineSettings, RemoteState, TransferInfo};
pub(crate) use state::{RuntimeState, Shared, SyncRequest, TransferStats};

/// The sync engine.
pub struct Engine<R: Remote, C: Clock> {
    pub(crate) shared: Arc<Shared>,
    /// The remote, recording its health on every call ([`health::Observed`]).
    pub(crate) remote: health::Observed<R>,
    pub(crate) clock: C,
    pub(super) sync_rx: tokio::sync::Mutex<mpsc::Receiver<SyncRequest>>,
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
        let shared = Arc::new(Shared {
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
            early: Default::default(),
            waves: Default::default(),
        });
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            shared: shared.clone(),
            remote: health::Observed::new(remote, shared),
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
        &self.remote.inner
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

    /// Step 4: runs due transfers under the `transfers` limit, highest priority first, until
    /// nothing is due; picks up new work (puts, retries) as slots free.
    pub(crate) async fn run_transfers(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> TransferStats {
        let mut stats = TransferStats::default();
        let mut tasks: JoinSet<TransferStats> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, Running> = HashMap::new();
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
            let busy: HashSet<(String, String)> = in_flight
                .values()
                .flat_map(|r| r.keys.iter())
                .cloned()
                .collect();
            let small_uploads = waves(&in_flight);
            // Before the pick: a put that skipped its kick (`Shared::kick_for_put`) saw its
            // namespace here, so its row committed before this pick reads the queue.
            self.shared.set_waves(small_uploads.clone());
            let slots = settings.transfers.saturating_sub(tasks.len());
            let mut started = 0;
            if slots > 0 {
                let mut due = self
                    .shared
                    .store
                    .due(crate::store::DueFilter {
                        now: self.clock.now(),
                        limit: due_limit(busy.len(), slots, settings.batch.max_count),
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
                for action in
                    plan::next_transfers(&due, &busy, &small_uploads, slots, settings.batch)
                {
                    let running = Running {
                        keys: action_keys(&action),
                        small_upload: plan::small_upload_ns(&action, settings.batch),
                        since: tokio::time::Instant::now(),
                    };
                    let me = self.clone();
                    let token = child.clone();
                    let h = tasks.spawn(async move { me.execute(action, token).await });
                    in_flight.insert(h.id(), running);
                    started += 1;
                }
            }
            if started > 0 {
                self.shared.set_waves(waves(&in_flight));
            }
            if tasks.is_empty() && started == 0 {
                break;
            }
            // A wave that holds others back for WAVE_HOLD stops holding them: wake then.
            let hold_ends = in_flight
                .values()
                .filter(|r| r.small_upload.is_some())
                .map(|r| r.since + WAVE_HOLD)
                .filter(|t| *t > tokio::time::Instant::now())
                .min();
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    match done {
                        Ok((id, s)) => { in_flight.remove(&id); stats.add(s); }
                        Err(e) => { in_flight.remove(&e.id()); warn!(error = %e, "transfer task failed"); }
                    }
                }
                _ = self.shared.kick.notified() => {}
                _ = tokio::time::sleep_until(hold_ends.unwrap_or_else(tokio::time::Instant::now)),
                    if hold_ends.is_some() => {}
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
        self.shared.set_waves(HashSet::new());
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
            Action::IncomingBatch(bs) => self.incoming_batch(bs, &cancel, &mut s).await,
            Action::AdoptBatch(bs) => self.adopt_batch(bs, &cancel, &mut s).await,
        }
        s
    }
}

/// A transfer task of [`Engine::run_transfers`].
struct Running {
    /// The (namespace, id) of every blob it moves.
    keys: Vec<(String, String)>,
    /// Its namespace when it is a small upload: `plan::next_transfers` holds that namespace's
    /// next wave of small uploads until it ends, or for [`WAVE_HOLD`] at most.
    small_upload: Option<String>,
    /// When it started.
    since: tokio::time::Instant,
}

/// The longest a wave of small uploads holds the next one back. A wave normally ends in
/// milliseconds; one stuck on a stalled connection (given up only after a minute without
/// progress) must not keep every later small put of its namespace waiting with it.
const WAVE_HOLD: Duration = Duration::from_secs(5);

/// The namespaces whose small uploads wait for a wave in flight (one younger than
/// [`WAVE_HOLD`]).
fn waves(in_flight: &HashMap<tokio::task::Id, Running>) -> HashSet<String> {
    let now = tokio::time::Instant::now();
    in_flight
        .values()
        .filter(|r| now.duration_since(r.since) < WAVE_HOLD)
        .filter_map(|r| r.small_upload.clone())
        .collect()
}

/// How many queued rows a pick reads: enough to skip every row already in flight and fill
/// each free slot with a full batch. (It was `(busy + slots) * max_count`: with two batches of
/// 200 in flight that read 80,200 rows per pick, so a new device's million downloads went at
/// ~200 blobs/s, the store thread busy reading the queue.)
pub(crate) fn due_limit(busy: usize, slots: usize, max_count: usize) -> usize {
    busy + slots * max_count.max(1)
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
        Action::UploadBatch(bs)
        | Action::DownloadBatch(bs)
        | Action::IncomingBatch(bs)
        | Action::AdoptBatch(bs) => bs.iter().map(key).collect(),
    }
}
