//! The cycle loop and one cycle's frame: when cycles run, the remote's identity check, which
//! namespaces to list, the salt backfill and the deletions held by the mass-deletion guard.
//! Listing and applying a namespace is in [`super::listing`]; transfers in [`super::transfer`].

use std::sync::Arc;
use std::time::Duration;

use blobsync_shared::Namespace;
use blobsync_shared::config::NamespacePolicy;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Engine, SyncError, mass_delete_limit};
use crate::clock::Clock;
use crate::events::{AlarmKind, CycleSummary, EventKind};
use crate::remote::{Remote, RemoteError};

impl<R: Remote, C: Clock> Engine<R, C> {
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

    pub(super) async fn transfers_only(self: &Arc<Self>, cancel: &CancellationToken) {
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
            if let Err(e) = self.sync_listing(false, false, &mut summary).await {
                warn!(error = %e, "listing before an upload retry failed");
            }
        }
        let stats = self.run_transfers(cancel).await;
        self.shared.state().between_cycles.add(stats);
    }

    /// Whether a due `PENDING_UPLOAD` row has had an upload attempt (salt recorded).
    pub(super) async fn attempted_upload_due(&self) -> bool {
        let now = self.clock.now();
        self.shared
            .store
            .attempted_upload_due(now)
            .await
            .unwrap_or(false)
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

    pub(super) async fn run_cycle_inner(
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
                Ok(()) => {}
                Err(SyncError::Remote(e)) => {
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
    pub(super) async fn namespaces(&self, ask_remote: bool) -> Result<Vec<Namespace>, SyncError> {
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
    pub(super) async fn check_remote_identity(&self) -> Result<bool, SyncError> {
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
    pub(super) async fn backfill_salts(&self) {
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

    /// How many blobs (rows, any status) a namespace has.
    pub(super) async fn namespace_total(&self, ns: &Namespace) -> Result<u64, SyncError> {
        Ok(self
            .shared
            .store
            .counts()
            .await?
            .by_namespace
            .get(ns)
            .map_or(0, |m| m.values().sum()))
    }

    /// The mass-deletion guard, after a namespace's listing: proven remote deletions are
    /// applied unless they would remove more than max(100, 25 %) of the namespace's blobs in
    /// one go; then they stay held (nothing is deleted) and an alarm asks the user to allow
    /// them (`blobctl sync --allow-mass-delete`) or to look into it.
    ///
    /// `total` is the namespace's size before this listing: the rows the same listing adds
    /// (new blobs from elsewhere, not held here yet) must not widen the 25 %, or 101 deletions
    /// of 332 blobs would pass with 101 new ones listed beside them (found by
    /// `planner_model`).
    pub(super) async fn apply_held_deletions(
        &self,
        ns: &Namespace,
        allow: bool,
        total: u64,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        let store = &self.shared.store;
        let held = store.held_count(ns).await?;
        if held == 0 {
            return Ok(());
        }
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
}
