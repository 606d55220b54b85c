//! Steps 1-3 of a cycle (docs/sync.md): list each namespace (incremental from its cursor, or in
//! full), diff a page against the store with [`super::plan`], apply it, and adopt payload files
//! found on disk after a rebuild.

use std::collections::HashSet;

use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::{BlobId, Namespace};
use tracing::{info, warn};

use super::{Engine, SyncError, plan, transfer};
use crate::clock::Clock;
use crate::events::{AlarmKind, CycleSummary};
use crate::remote::{Remote, RemoteError};
use crate::status::Status;
use crate::store::StoreError;
use crate::store::payload;

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Steps 1-3 of a cycle for every namespace.
    pub(super) async fn sync_listing(
        &self,
        force_full: bool,
        allow_mass_delete: bool,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        // Not while a big put's early upload waits for its answer (`transfer::early`).
        let _quiet = self.shared.early.quiet().await;
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
            self.sync_and_guard(ns, force_full || rebuild, allow_mass_delete, summary)
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
                    self.sync_and_guard(&ns, force_full || rebuild, allow_mass_delete, summary)
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

    /// Lists and applies one namespace, then its held deletions through the mass-deletion
    /// guard, weighed against the namespace as it was before the listing.
    async fn sync_and_guard(
        &self,
        ns: &Namespace,
        full: bool,
        allow_mass_delete: bool,
        summary: &mut CycleSummary,
    ) -> Result<(), SyncError> {
        let total = self.namespace_total(ns).await?;
        self.sync_namespace(ns, full, summary).await?;
        self.apply_held_deletions(ns, allow_mass_delete, total, summary)
            .await
    }

    /// The highest listing cursor of `namespaces`: the user's sequence number as of the
    /// latest listing (every `since` listing returns it). `None` before any listing, and
    /// against a remote without cursors (a Soledad server lists in full every cycle).
    pub(super) async fn listing_head(
        &self,
        namespaces: &[Namespace],
    ) -> Result<Option<u64>, SyncError> {
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
    pub(super) async fn sync_namespace(
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
    pub(super) async fn incremental_listing(
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
    pub(super) async fn full_listing(
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
    pub(super) async fn diff_page(
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
    pub(super) fn refuse_external(
        &self,
        ns: &Namespace,
        refused: &[&blobsync_shared::wire::Change],
    ) {
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
    pub(super) async fn apply_page(
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
    pub(super) async fn after_applied(
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
    pub(super) async fn adopt_payloads(&self) -> Result<(), SyncError> {
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
                if len == 0 {
                    // No payload is empty (a sealed one has a header at least): a put or
                    // download cut off by a crash after its name and before its data
                    // reached the disk (`payload::SyncGroup`).
                    warn!(ns = %ns2, id = %id2, "rebuild: a payload file is empty; not adopted");
                    return Ok(None);
                }
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
}
