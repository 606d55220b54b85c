//! The pure half of a sync cycle: given the local rows of a namespace and what the server
//! listed, decide what each id becomes ([`diff`], and its two halves [`diff_changes`] for the
//! ids a listing names and [`absent`] for the local rows a full listing does not name); given
//! the queue, decide what to transfer next ([`next_transfers`]). Deterministic order, no I/O,
//! no clock: most engine tests target these functions.
//!
//! The engine diffs a listing page by page (so its memory is one page, whatever the number of
//! blobs): [`diff_changes`] decides each id from its own change and its own row only, so
//! diffing and applying the pages one after the other ends where diffing the whole listing at
//! once would. Only a full listing's [`absent`] needs every id the listing named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use blobsync_shared::BlobId;
use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::wire::{Change, ChangeOp};

use crate::status::Status;
use crate::store::{BlobInfo, RemoteFact};

/// What the listing was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingKind {
    /// Changes since the cursor: ids not mentioned did not change.
    Incremental,
    /// Everything (`since = 0`): an id with no live `put` is not on the server.
    Full,
}

/// Decides the listing facts for one namespace.
///
/// Rules (the "Deletions" section of DESIGN.md): a remote blob we do not know is queued
/// (eager) or kept `REMOTE_ONLY` (lazy); a blob gone from the server is removed locally unless
/// it is local work (`PENDING_UPLOAD`, `LOCAL_ONLY`, `FAILED_UPLOAD`): only `PENDING_UPLOAD`
/// blobs are ever uploaded, so a deletion is never mistaken for a new blob. A `SYNCED` blob
/// whose server copy has a newer sequence number was deleted and put again elsewhere.
pub fn diff(
    local: &[BlobInfo],
    changes: &[Change],
    kind: ListingKind,
    policy: NamespacePolicy,
) -> Vec<RemoteFact> {
    let mut facts = diff_changes(local, changes, policy);
    if kind == ListingKind::Full {
        let listed: HashSet<&BlobId> = changes.iter().map(|c| &c.id).collect();
        facts.extend(absent(
            local.iter().map(|l| (&l.id, l.status)),
            |id: &BlobId| listed.contains(id),
        ));
    }
    facts
}

/// The facts about the ids `changes` names (all of [`diff`] but the absent rows of a full
/// listing): `local` needs to hold only the rows of those ids. Applied page by page to an
/// incremental listing, or to a full one followed by [`absent`].
pub fn diff_changes(
    local: &[BlobInfo],
    changes: &[Change],
    policy: NamespacePolicy,
) -> Vec<RemoteFact> {
    let local: HashMap<&BlobId, &BlobInfo> = local.iter().map(|b| (&b.id, b)).collect();
    // The latest change per id (the server sends each id once, but pages may overlap).
    let mut latest: BTreeMap<&BlobId, &Change> = BTreeMap::new();
    for c in changes {
        match latest.get(&c.id) {
            Some(prev) if prev.seq > c.seq => {}
            _ => {
                latest.insert(&c.id, c);
            }
        }
    }
    let mut facts = Vec::new();
    for (id, c) in &latest {
        let l = local.get(id);
        match (c.op, l) {
            (ChangeOp::Put, None) => {
                facts.push(RemoteFact::New {
                    id: (*id).clone(),
                    remote_size: c.size,
                    created: UNIX_EPOCH + Duration::from_secs(c.created.max(0) as u64),
                    external: c.external,
                    seq: c.seq,
                    status: match policy {
                        NamespacePolicy::Eager => Status::PendingDownload,
                        NamespacePolicy::Lazy => Status::RemoteOnly,
                    },
                });
            }
            (ChangeOp::Put, Some(l)) => {
                let replaced =
                    l.status == Status::Synced && l.remote_seq.is_some_and(|known| known != c.seq);
                if replaced {
                    facts.push(RemoteFact::Replaced {
                        id: (*id).clone(),
                        seq: c.seq,
                        remote_size: c.size,
                    });
                } else if l.remote_seq != Some(c.seq) || l.remote_size != Some(c.size) {
                    facts.push(RemoteFact::Seen {
                        id: (*id).clone(),
                        seq: c.seq,
                        remote_size: c.size,
                    });
                }
            }
            (ChangeOp::Delete, Some(l)) if removable(l.status) => {
                facts.push(RemoteFact::Gone { id: (*id).clone() });
            }
            // Our upload got through but its answer was lost, and another device deleted it
            // since: the tombstone is of a blob of exactly the size we sent (recorded with the
            // salt before the first PUT). Re-uploading would resurrect a deleted blob.
            (ChangeOp::Delete, Some(l))
                if l.status == Status::PendingUpload
                    && l.upload_salt.is_some()
                    && l.remote_size == Some(c.size) =>
            {
                facts.push(RemoteFact::Gone { id: (*id).clone() });
            }
            (ChangeOp::Delete, _) => {}
        }
    }
    facts
}

/// After a full listing: the local rows (id, status) that the listing did not name at all
/// (neither a live `put` nor a tombstone: the server lost them, or purged their tombstones)
/// and that a remote deletion removes become `Gone`, in id order. Local work
/// (`PENDING_UPLOAD`, `LOCAL_ONLY`, `FAILED_UPLOAD`) is never absent. `local` may be one page
/// of the namespace's rows; `listed` must know every id of the whole listing.
pub fn absent<'a>(
    local: impl IntoIterator<Item = (&'a BlobId, Status)>,
    listed: impl Fn(&BlobId) -> bool,
) -> Vec<RemoteFact> {
    let mut gone: Vec<&BlobId> = local
        .into_iter()
        .filter(|(id, status)| removable(*status) && !listed(id))
        .map(|(id, _)| id)
        .collect();
    gone.sort();
    gone.into_iter()
        .map(|id| RemoteFact::Gone { id: id.clone() })
        .collect()
}

/// Statuses a remote deletion removes (see the state machine in `status`).
fn removable(s: Status) -> bool {
    matches!(
        s,
        Status::Synced
            | Status::PendingDownload
            | Status::FailedDownload
            | Status::RemoteOnly
            | Status::PendingDelete
    )
}

/// One unit of transfer work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Upload one blob.
    Upload(BlobInfo),
    /// Download one blob.
    Download(BlobInfo),
    /// Tell the server about a local deletion.
    DeleteRemote(BlobInfo),
    /// Upload many small blobs in one `/stream` request.
    UploadBatch(Vec<BlobInfo>),
    /// Download many small blobs in one `/stream` request.
    DownloadBatch(Vec<BlobInfo>),
}

/// When to batch small blobs.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Blobs at most this big (plaintext for uploads, stored for downloads) may be batched.
    pub max_blob: u64,
    /// Batch only when at least this many small blobs are due.
    pub min_count: usize,
    /// At most this many blobs per batch.
    pub max_count: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_blob: 64 * 1024,
            min_count: 8,
            max_count: 200,
        }
    }
}

/// Turns due rows (already in priority order) into at most `slots` actions, skipping ids in
/// flight. Small blobs of one namespace and direction are grouped into batches when at least
/// `batch.min_count` of them are due; the batch takes the place of its first member.
pub fn next_transfers(
    due: &[BlobInfo],
    in_flight: &HashSet<(String, String)>,
    slots: usize,
    batch: BatchPolicy,
) -> Vec<Action> {
    let free: Vec<&BlobInfo> = due
        .iter()
        .filter(|b| !in_flight.contains(&(b.ns.to_string(), b.id.to_string())))
        .collect();
    let small = |b: &BlobInfo| match b.status {
        Status::PendingUpload => b.size.is_some_and(|s| s <= batch.max_blob),
        Status::PendingDownload => {
            !b.external && b.remote_size.is_some_and(|s| s <= batch.max_blob)
        }
        _ => false,
    };
    // Group small blobs per (namespace, direction), in priority order.
    let mut groups: BTreeMap<(String, bool), Vec<&BlobInfo>> = BTreeMap::new();
    for b in free.iter().filter(|b| small(b)) {
        groups
            .entry((b.ns.to_string(), b.status == Status::PendingUpload))
            .or_default()
            .push(b);
    }
    let mut batched: HashSet<(String, String)> = HashSet::new();
    let mut actions = Vec::new();
    for b in &free {
        if actions.len() >= slots {
            break;
        }
        let key = (b.ns.to_string(), b.id.to_string());
        if batched.contains(&key) {
            continue;
        }
        if small(b) {
            let g = &groups[&(b.ns.to_string(), b.status == Status::PendingUpload)];
            if g.len() >= batch.min_count {
                let members: Vec<BlobInfo> = g
                    .iter()
                    .filter(|m| !batched.contains(&(m.ns.to_string(), m.id.to_string())))
                    .take(batch.max_count)
                    .map(|m| (*m).clone())
                    .collect();
                if members.len() >= batch.min_count {
                    for m in &members {
                        batched.insert((m.ns.to_string(), m.id.to_string()));
                    }
                    actions.push(if b.status == Status::PendingUpload {
                        Action::UploadBatch(members)
                    } else {
                        Action::DownloadBatch(members)
                    });
                    continue;
                }
            }
        }
        actions.push(match b.status {
            Status::PendingUpload => Action::Upload((*b).clone()),
            Status::PendingDownload => Action::Download((*b).clone()),
            _ => Action::DeleteRemote((*b).clone()),
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Priority;
    use blobsync_shared::Namespace;
    use std::time::SystemTime;

    fn id(s: &str) -> BlobId {
        BlobId::new(s).unwrap()
    }

    fn row(i: &str, status: Status, seq: Option<u64>) -> BlobInfo {
        BlobInfo {
            ns: Namespace::default(),
            id: id(i),
            size: Some(10),
            remote_size: seq.map(|_| 100),
            sha256: None,
            status,
            priority: Priority::Medium,
            attempts: 0,
            next_attempt: None,
            last_error: None,
            invalid_attempts: 0,
            upload_salt: None,
            external: false,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            remote_seq: seq,
        }
    }

    fn change(i: &str, op: ChangeOp, seq: u64) -> Change {
        Change {
            id: id(i),
            op,
            size: 100,
            created: 5,
            seq,
            external: false,
            proof: None,
        }
    }

    #[test]
    fn new_remote_blobs_are_queued_or_kept_remote_by_policy() {
        let ch = [change("a", ChangeOp::Put, 1)];
        let eager = diff(&[], &ch, ListingKind::Incremental, NamespacePolicy::Eager);
        assert!(matches!(
            &eager[..],
            [RemoteFact::New {
                status: Status::PendingDownload,
                seq: 1,
                ..
            }]
        ));
        let lazy = diff(&[], &ch, ListingKind::Incremental, NamespacePolicy::Lazy);
        assert!(matches!(
            &lazy[..],
            [RemoteFact::New {
                status: Status::RemoteOnly,
                ..
            }]
        ));
    }

    #[test]
    fn a_tombstone_deletes_synced_but_never_local_work() {
        let local = [
            row("s", Status::Synced, Some(1)),
            row("u", Status::PendingUpload, None),
            row("l", Status::LocalOnly, None),
            row("d", Status::PendingDelete, Some(2)),
        ];
        let ch: Vec<Change> = ["s", "u", "l", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| change(n, ChangeOp::Delete, 10 + i as u64))
            .collect();
        let facts = diff(
            &local,
            &ch,
            ListingKind::Incremental,
            NamespacePolicy::Eager,
        );
        assert_eq!(
            facts,
            vec![
                RemoteFact::Gone { id: id("d") },
                RemoteFact::Gone { id: id("s") }
            ]
        );
    }

    #[test]
    fn full_listing_removes_what_is_absent_and_keeps_pending_uploads() {
        let local = [
            row("gone", Status::Synced, Some(1)),
            row("kept", Status::Synced, Some(2)),
            row("new-local", Status::PendingUpload, None),
            row("lazy", Status::RemoteOnly, Some(3)),
        ];
        let ch = [change("kept", ChangeOp::Put, 2)];
        let facts = diff(&local, &ch, ListingKind::Full, NamespacePolicy::Eager);
        assert_eq!(
            facts,
            vec![
                RemoteFact::Gone { id: id("gone") },
                RemoteFact::Gone { id: id("lazy") }
            ]
        );
        // The same listing read incrementally says nothing about absent ids.
        assert!(
            diff(
                &local,
                &ch,
                ListingKind::Incremental,
                NamespacePolicy::Eager
            )
            .is_empty()
        );
    }

    #[test]
    fn our_own_upload_is_seen_not_downloaded_and_a_reput_is_replaced() {
        let mine = row("m", Status::Synced, None);
        let facts = diff(
            &[mine],
            &[change("m", ChangeOp::Put, 7)],
            ListingKind::Incremental,
            NamespacePolicy::Eager,
        );
        assert_eq!(
            facts,
            vec![RemoteFact::Seen {
                id: id("m"),
                seq: 7,
                remote_size: 100
            }]
        );
        let old = row("m", Status::Synced, Some(7));
        let facts = diff(
            &[old],
            &[change("m", ChangeOp::Put, 9)],
            ListingKind::Incremental,
            NamespacePolicy::Eager,
        );
        assert_eq!(
            facts,
            vec![RemoteFact::Replaced {
                id: id("m"),
                seq: 9,
                remote_size: 100
            }]
        );
    }

    #[test]
    fn a_tombstone_of_our_own_lost_answer_upload_is_never_uploaded_again() {
        let mut tried = row("x", Status::PendingUpload, None);
        tried.upload_salt = Some([1; 32]);
        tried.remote_size = Some(100);
        let del = [change("x", ChangeOp::Delete, 5)];
        let facts = diff(
            &[tried.clone()],
            &del,
            ListingKind::Incremental,
            NamespacePolicy::Eager,
        );
        assert_eq!(facts, vec![RemoteFact::Gone { id: id("x") }]);
        // Another size: someone else's blob with this id was deleted; ours is still new.
        tried.remote_size = Some(99);
        assert!(
            diff(
                &[tried.clone()],
                &del,
                ListingKind::Incremental,
                NamespacePolicy::Eager
            )
            .is_empty()
        );
        // Never tried: certainly not ours.
        let fresh = row("x", Status::PendingUpload, None);
        assert!(
            diff(
                &[fresh],
                &del,
                ListingKind::Incremental,
                NamespacePolicy::Eager
            )
            .is_empty()
        );
    }

    #[test]
    fn transfers_skip_in_flight_and_respect_slots_and_order() {
        let due: Vec<BlobInfo> = ["a", "b", "c"]
            .iter()
            .map(|n| BlobInfo {
                size: Some(1 << 20),
                ..row(n, Status::PendingUpload, None)
            })
            .collect();
        let busy: HashSet<_> = [("default".to_string(), "a".to_string())].into();
        let acts = next_transfers(&due, &busy, 1, BatchPolicy::default());
        assert_eq!(acts, vec![Action::Upload(due[1].clone())]);
    }

    #[test]
    fn many_small_blobs_go_in_one_batch() {
        let mut due: Vec<BlobInfo> = (0..10)
            .map(|i| row(&format!("s{i}"), Status::PendingUpload, None))
            .collect();
        due.push(BlobInfo {
            size: Some(1 << 30),
            ..row("big", Status::PendingUpload, None)
        });
        let acts = next_transfers(&due, &HashSet::new(), 3, BatchPolicy::default());
        assert_eq!(acts.len(), 2);
        assert!(matches!(&acts[0], Action::UploadBatch(m) if m.len() == 10));
        assert!(matches!(&acts[1], Action::Upload(b) if b.id.as_str() == "big"));
        // Below the threshold, one by one.
        let acts = next_transfers(&due[..3], &HashSet::new(), 3, BatchPolicy::default());
        assert!(acts.iter().all(|a| matches!(a, Action::Upload(_))));
    }
}
