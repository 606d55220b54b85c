//! The engine's state: its settings, what `status` reports (transfers in flight, the remote,
//! alarms), and [`Shared`], the part every handle holds (store, key, limits, locks, events).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use blobsync_shared::config::{Config, NamespacePolicy};
use blobsync_shared::tombstone::DeleteKey;
use blobsync_shared::{BlobId, Namespace, StorageKey};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::plan::BatchPolicy;
use super::{keycheck, ratelimit};
use crate::events::{Alarm, AlarmKind, CycleSummary, Direction, EventBus, EventKind};
use crate::remote::RemoteError;
use crate::retry::TimeScale;
use crate::store::Store;
use crate::store::payload::{self, DataDir};

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
    /// Big puts uploaded while they are written: their slots, and the lock listings take.
    pub early: super::transfer::early::Gate,
    /// Namespaces with a wave of small uploads in flight (kept by the transfer loop, see
    /// `plan::next_transfers`): a small put there needs no kick, the wave's end picks it up.
    pub waves: Mutex<HashSet<String>>,
}

impl Shared {
    /// Replaces the namespaces with a wave of small uploads in flight.
    pub fn set_waves(&self, waves: HashSet<String>) {
        *self.waves.lock().unwrap_or_else(|p| p.into_inner()) = waves;
    }

    /// Wakes the transfer loop for a blob just put, unless it is a small upload that would
    /// only wait for its namespace's wave in flight (W5 of issue 20: one put in a wave of
    /// dozens woke a pick of the queue each, to start nothing). Called after the row commits:
    /// the loop clears a wave before its next pick, so a row this skips is in that pick.
    pub fn kick_for_put(&self, ns: &Namespace, size: u64, local_only: bool) {
        if local_only {
            return;
        }
        let small = size <= self.settings().batch.max_blob;
        let waiting = small
            && self
                .waves
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(ns.as_str());
        if !waiting {
            self.kick.notify_one();
        }
    }

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
    pub(crate) fn add(&mut self, o: TransferStats) {
        self.uploaded += o.uploaded;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
        self.downloaded += o.downloaded;
        self.deleted_remote += o.deleted_remote;
        self.retried += o.retried;
        self.failed += o.failed;
    }
}
