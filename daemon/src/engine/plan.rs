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
/// Rules (docs/sync.md, "Deletions come only from tombstones"): a remote blob we do not know
/// is queued (eager, incoming) or kept `REMOTE_ONLY` (lazy). A copy this device holds is
/// deleted only on a tombstone whose delete proof verifies against the version held
/// (`proven`): that is a [`RemoteFact::ProvenDelete`], applied after the listing unless the
/// mass-deletion guard holds it. A held copy that the server simply no longer has, or whose
/// tombstone carries no valid proof, was lost by the server: [`RemoteFact::Lost`], uploaded
/// again. Rows without a local copy just follow the server. A `SYNCED` blob whose server copy
/// has a newer sequence number was deleted and put again elsewhere. An `external` blob outside
/// an incoming namespace is ignored (nothing authenticates it).
pub fn diff(
    local: &[BlobInfo],
    changes: &[Change],
    kind: ListingKind,
    policy: NamespacePolicy,
    proven: impl Fn(&BlobInfo, &Change) -> bool,
) -> Vec<RemoteFact> {
    let mut facts = diff_changes(local, changes, policy, proven);
    if kind == ListingKind::Full {
        let listed: HashSet<&BlobId> = changes.iter().map(|c| &c.id).collect();
        facts.extend(absent(
            local
                .iter()
                .map(|l| (&l.id, l.status, l.upload_salt.is_some())),
            |id: &BlobId| listed.contains(id),
        ));
    }
    facts
}

/// Whether a listed change may be taken at all: an external blob (delivered by an app, not
/// encrypted under the storage key) only in an incoming namespace.
pub fn acceptable(c: &Change, policy: NamespacePolicy) -> bool {
    !(c.op == ChangeOp::Put && c.external && policy != NamespacePolicy::Incoming)
}

/// The facts about the ids `changes` names (all of [`diff`] but the absent rows of a full
/// listing): `local` needs to hold only the rows of those ids. Applied page by page to an
/// incremental listing, or to a full one followed by [`absent`]. `proven(row, tombstone)`
/// says whether the tombstone's delete proof verifies against the version the row holds.
pub fn diff_changes(
    local: &[BlobInfo],
    changes: &[Change],
    policy: NamespacePolicy,
    proven: impl Fn(&BlobInfo, &Change) -> bool,
) -> Vec<RemoteFact> {
    let local: HashMap<&BlobId, &BlobInfo> = local.iter().map(|b| (&b.id, b)).collect();
    // The latest change per id (the server sends each id once, but pages may overlap).
    let mut latest: BTreeMap<&BlobId, &Change> = BTreeMap::new();
    for c in changes.iter().filter(|c| acceptable(c, policy)) {
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
                        NamespacePolicy::Eager | NamespacePolicy::Incoming => {
                            Status::PendingDownload
                        }
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
            // A copy we hold: only a proof from one of our devices deletes it.
            (ChangeOp::Delete, Some(l)) if l.status == Status::Synced => {
                facts.push(if proven(l, c) {
                    RemoteFact::ProvenDelete {
                        id: (*id).clone(),
                        seq: c.seq,
                    }
                } else {
                    RemoteFact::Lost {
                        id: (*id).clone(),
                        unproven_tombstone: true,
                    }
                });
            }
            // Our upload got through but its answer was lost, and another device deleted
            // exactly that version since (its proof names our salt): uploading it again would
            // resurrect a deleted blob. Without a valid proof our copy was lost like any other:
            // it goes up again (with a fresh salt), and another device's re-upload wins a race.
            (ChangeOp::Delete, Some(l))
                if l.status == Status::PendingUpload && l.upload_salt.is_some() =>
            {
                facts.push(if proven(l, c) {
                    RemoteFact::ProvenDelete {
                        id: (*id).clone(),
                        seq: c.seq,
                    }
                } else {
                    RemoteFact::Lost {
                        id: (*id).clone(),
                        unproven_tombstone: true,
                    }
                });
            }
            // No local copy at stake (or our own delete, confirmed): follow the server.
            (ChangeOp::Delete, Some(l)) if removable(l.status) => {
                facts.push(RemoteFact::Gone { id: (*id).clone() });
            }
            (ChangeOp::Delete, _) => {}
        }
    }
    facts
}

/// After a full listing: the local rows (id, status, upload attempted) that the listing did
/// not name at all (neither a live `put` nor a tombstone), in id order. A copy this device
/// holds (`SYNCED`, or an attempted upload whose answer we may have missed) was lost by the
/// server (wiped, restored from an old backup, or another server altogether): it becomes
/// [`RemoteFact::Lost`] and is uploaded again; absence is never deletion. Rows without a local
/// copy follow the server ([`RemoteFact::Gone`]). Other local work (`PENDING_UPLOAD` never
/// tried, `LOCAL_ONLY`, `FAILED_UPLOAD`) is never absent. `local` may be one page of the
/// namespace's rows; `listed` must know every id of the whole listing.
pub fn absent<'a>(
    local: impl IntoIterator<Item = (&'a BlobId, Status, bool)>,
    listed: impl Fn(&BlobId) -> bool,
) -> Vec<RemoteFact> {
    let held = |s: Status, attempted: bool| {
        s == Status::Synced || (s == Status::PendingUpload && attempted)
    };
    let mut out: Vec<(&BlobId, Status, bool)> = local
        .into_iter()
        .filter(|(id, s, a)| (held(*s, *a) || removable(*s)) && !listed(id))
        .collect();
    out.sort_by_key(|(id, _, _)| *id);
    out.into_iter()
        .map(|(id, s, a)| {
            if held(s, a) {
                RemoteFact::Lost {
                    id: id.clone(),
                    unproven_tombstone: false,
                }
            } else {
                RemoteFact::Gone { id: id.clone() }
            }
        })
        .collect()
}

/// Statuses a remote deletion removes without a proof: no local copy is at stake (see the
/// state machine in `status`). `SYNCED` is not among them: see [`diff_changes`].
fn removable(s: Status) -> bool {
    matches!(
        s,
        Status::PendingDownload
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
    /// Fetch many small external blobs of an incoming namespace in one `/stream` request:
    /// deliveries (age files) decrypted and installed together, or copies a device adopted.
    IncomingBatch(Vec<BlobInfo>),
    /// Adopt many decrypted deliveries (external rows waiting for an upload), several
    /// `replace_external` PUTs in flight, the results recorded in one transaction.
    AdoptBatch(Vec<BlobInfo>),
}

/// What kind of batch a small due row may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BatchKind {
    Upload,
    Download,
    Incoming,
    Adopt,
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
/// flight. Small blobs of one namespace and kind (upload, download, external download,
/// adoption) are grouped into batches when at least `batch.min_count` of them are due; the
/// batch takes the place of its first member.
///
/// Small uploads go in waves: while a namespace has a small upload in flight
/// (`small_uploads`, see [`small_upload_ns`]; the engine leaves out a wave older than a few
/// seconds, so a stuck one holds nobody for long), its other small uploads wait for that
/// wave to end, unless a full batch of them is due. Puts arriving one by one (W5 of issue 20: 32 in
/// flight) were otherwise sent as they came, in a single upload or a batch of ten each, and
/// every upload costs two store commits and a request whatever its size; waiting a moment
/// for the wave in flight sends them in batches of dozens instead.
pub fn next_transfers(
    due: &[BlobInfo],
    in_flight: &HashSet<(String, String)>,
    small_uploads: &HashSet<String>,
    slots: usize,
    batch: BatchPolicy,
) -> Vec<Action> {
    let free: Vec<&BlobInfo> = due
        .iter()
        .filter(|b| !in_flight.contains(&(b.ns.to_string(), b.id.to_string())))
        .collect();
    let kind = |b: &BlobInfo| match b.status {
        Status::PendingUpload if b.size.is_some_and(|s| s <= batch.max_blob) => {
            // A decrypted delivery goes up as an adoption (`replace_external`), never in a
            // plain upload batch.
            Some(if b.external {
                BatchKind::Adopt
            } else {
                BatchKind::Upload
            })
        }
        // A raced re-upload is fetched alone: its content is compared with ours first. An
        // external one (a lost adoption race) is compared in the incoming batch.
        Status::PendingDownload if b.remote_size.is_some_and(|s| s <= batch.max_blob) => {
            if b.external {
                Some(BatchKind::Incoming)
            } else if b.reupload {
                None
            } else {
                Some(BatchKind::Download)
            }
        }
        _ => None,
    };
    // Group small blobs per (namespace, kind), in priority order.
    let mut groups: BTreeMap<(String, BatchKind), Vec<&BlobInfo>> = BTreeMap::new();
    for b in &free {
        if let Some(k) = kind(b) {
            groups.entry((b.ns.to_string(), k)).or_default().push(b);
        }
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
        if let Some(k) = kind(b) {
            let g = &groups[&(b.ns.to_string(), k)];
            let waits = k == BatchKind::Upload && small_uploads.contains(&b.ns.to_string());
            if waits && g.len() < batch.max_count {
                continue;
            }
            if g.len() >= batch.min_count {
                let members: Vec<BlobInfo> = g
                    .iter()
                    .filter(|m| !batched.contains(&(m.ns.to_string(), m.id.to_string())))
                    .take(batch.max_count)
                    .map(|m| (*m).clone())
                    .collect();
                if waits && members.len() < batch.max_count {
                    continue;
                }
                if members.len() >= batch.min_count {
                    for m in &members {
                        batched.insert((m.ns.to_string(), m.id.to_string()));
                    }
                    actions.push(match k {
                        BatchKind::Upload => Action::UploadBatch(members),
                        BatchKind::Download => Action::DownloadBatch(members),
                        BatchKind::Incoming => Action::IncomingBatch(members),
                        BatchKind::Adopt => Action::AdoptBatch(members),
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

/// The namespace of a small upload (a batch, or one blob the batch policy could have
/// batched), whose wave holds back that namespace's other small uploads in
/// [`next_transfers`].
pub fn small_upload_ns(action: &Action, batch: BatchPolicy) -> Option<String> {
    match action {
        Action::UploadBatch(bs) => bs.first().map(|b| b.ns.to_string()),
        Action::Upload(b) if !b.external && b.size.is_some_and(|s| s <= batch.max_blob) => {
            Some(b.ns.to_string())
        }
        _ => None,
    }
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
            reupload: false,
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

    /// The test's stand-in for the HMAC check: a proof is valid when it names the row's salt.
    fn proof_of(salt: [u8; 32]) -> Option<String> {
        Some(hex::encode(salt))
    }

    fn proven(l: &BlobInfo, c: &Change) -> bool {
        l.upload_salt.is_some_and(|s| c.proof == proof_of(s))
    }

    fn tombstone(i: &str, seq: u64, proof: Option<String>) -> Change {
        Change {
            proof,
            ..change(i, ChangeOp::Delete, seq)
        }
    }

    fn held(i: &str, salt: u8) -> BlobInfo {
        BlobInfo {
            upload_salt: Some([salt; 32]),
            ..row(i, Status::Synced, Some(1))
        }
    }

    #[test]
    fn new_remote_blobs_are_queued_or_kept_remote_by_policy() {
        let ch = [change("a", ChangeOp::Put, 1)];
        for policy in [NamespacePolicy::Eager, NamespacePolicy::Incoming] {
            let facts = diff(&[], &ch, ListingKind::Incremental, policy, proven);
            assert!(matches!(
                &facts[..],
                [RemoteFact::New {
                    status: Status::PendingDownload,
                    seq: 1,
                    ..
                }]
            ));
        }
        let lazy = diff(
            &[],
            &ch,
            ListingKind::Incremental,
            NamespacePolicy::Lazy,
            proven,
        );
        assert!(matches!(
            &lazy[..],
            [RemoteFact::New {
                status: Status::RemoteOnly,
                ..
            }]
        ));
    }

    #[test]
    fn an_external_blob_is_taken_only_in_an_incoming_namespace() {
        let ext = Change {
            external: true,
            ..change("mail", ChangeOp::Put, 3)
        };
        for policy in [NamespacePolicy::Eager, NamespacePolicy::Lazy] {
            let facts = diff(
                &[],
                std::slice::from_ref(&ext),
                ListingKind::Incremental,
                policy,
                proven,
            );
            assert!(facts.is_empty(), "{policy:?}: {facts:?}");
            // Nor may it replace a blob we hold.
            let facts = diff(
                &[held("mail", 1)],
                std::slice::from_ref(&ext),
                ListingKind::Incremental,
                policy,
                proven,
            );
            assert!(facts.is_empty(), "{policy:?}: {facts:?}");
        }
        let facts = diff(
            &[],
            &[ext],
            ListingKind::Incremental,
            NamespacePolicy::Incoming,
            proven,
        );
        assert!(matches!(
            &facts[..],
            [RemoteFact::New { external: true, .. }]
        ));
    }

    #[test]
    fn only_a_proven_tombstone_deletes_a_copy_we_hold_and_never_local_work() {
        let local = [
            held("proven", 1),
            held("forged", 2),
            held("bare", 3),
            held("replayed", 4),
            row("u", Status::PendingUpload, None),
            row("l", Status::LocalOnly, None),
            row("d", Status::PendingDelete, Some(2)),
            row("r", Status::RemoteOnly, Some(2)),
        ];
        let ch = vec![
            tombstone("proven", 10, proof_of([1; 32])),
            tombstone("forged", 11, Some("00".repeat(32))),
            tombstone("bare", 12, None),
            // A valid proof of another version of the id does not delete this one.
            tombstone("replayed", 13, proof_of([9; 32])),
            tombstone("u", 14, None),
            tombstone("l", 15, None),
            tombstone("d", 16, None),
            tombstone("r", 17, None),
        ];
        let facts = diff(
            &local,
            &ch,
            ListingKind::Incremental,
            NamespacePolicy::Eager,
            proven,
        );
        let lost = |i: &str| RemoteFact::Lost {
            id: id(i),
            unproven_tombstone: true,
        };
        assert_eq!(
            facts,
            vec![
                lost("bare"),
                RemoteFact::Gone { id: id("d") },
                lost("forged"),
                RemoteFact::ProvenDelete {
                    id: id("proven"),
                    seq: 10
                },
                RemoteFact::Gone { id: id("r") },
                lost("replayed"),
            ]
        );
    }

    #[test]
    fn a_full_listing_reuploads_what_the_server_lost_and_keeps_pending_uploads() {
        let local = [
            row("lost", Status::Synced, Some(1)),
            row("kept", Status::Synced, Some(2)),
            row("new-local", Status::PendingUpload, None),
            row("lazy", Status::RemoteOnly, Some(3)),
            row("mine-deleted", Status::PendingDelete, Some(4)),
        ];
        let ch = [change("kept", ChangeOp::Put, 2)];
        let facts = diff(
            &local,
            &ch,
            ListingKind::Full,
            NamespacePolicy::Eager,
            proven,
        );
        assert_eq!(
            facts,
            vec![
                RemoteFact::Gone { id: id("lazy") },
                RemoteFact::Lost {
                    id: id("lost"),
                    unproven_tombstone: false
                },
                RemoteFact::Gone {
                    id: id("mine-deleted")
                },
            ]
        );
        // The same listing read incrementally says nothing about absent ids.
        assert!(
            diff(
                &local,
                &ch,
                ListingKind::Incremental,
                NamespacePolicy::Eager,
                proven
            )
            .is_empty()
        );
        // An empty listing (a wiped or different server) deletes nothing we hold.
        let facts = diff(
            &local,
            &[],
            ListingKind::Full,
            NamespacePolicy::Eager,
            proven,
        );
        assert!(
            !facts
                .iter()
                .any(|f| matches!(f, RemoteFact::Gone { id } if id.as_str() == "kept" || id.as_str() == "lost")),
            "{facts:?}"
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
            proven,
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
            proven,
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
    fn a_proven_tombstone_of_our_own_lost_answer_upload_is_never_uploaded_again() {
        let mut tried = row("x", Status::PendingUpload, None);
        tried.upload_salt = Some([1; 32]);
        let facts = diff(
            &[tried.clone()],
            &[tombstone("x", 5, proof_of([1; 32]))],
            ListingKind::Incremental,
            NamespacePolicy::Eager,
            proven,
        );
        assert_eq!(
            facts,
            vec![RemoteFact::ProvenDelete {
                id: id("x"),
                seq: 5
            }]
        );
        // No proof (the server's own, or another version's): ours was lost like any copy, and
        // goes up again.
        for proof in [None, proof_of([2; 32])] {
            assert_eq!(
                diff(
                    &[tried.clone()],
                    &[tombstone("x", 5, proof)],
                    ListingKind::Incremental,
                    NamespacePolicy::Eager,
                    proven
                ),
                vec![RemoteFact::Lost {
                    id: id("x"),
                    unproven_tombstone: true
                }]
            );
        }
        // Never tried: certainly not ours.
        let fresh = row("x", Status::PendingUpload, None);
        assert!(
            diff(
                &[fresh],
                &[tombstone("x", 5, proof_of([1; 32]))],
                ListingKind::Incremental,
                NamespacePolicy::Eager,
                proven
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
        let acts = next_transfers(&due, &busy, &HashSet::new(), 1, BatchPolicy::default());
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
        let acts = next_transfers(
            &due,
            &HashSet::new(),
            &HashSet::new(),
            3,
            BatchPolicy::default(),
        );
        assert_eq!(acts.len(), 2);
        assert!(matches!(&acts[0], Action::UploadBatch(m) if m.len() == 10));
        assert!(matches!(&acts[1], Action::Upload(b) if b.id.as_str() == "big"));
        // Below the threshold, one by one.
        let acts = next_transfers(
            &due[..3],
            &HashSet::new(),
            &HashSet::new(),
            3,
            BatchPolicy::default(),
        );
        assert!(acts.iter().all(|a| matches!(a, Action::Upload(_))));
    }

    /// While a small upload of a namespace is in flight, its other small uploads wait for the
    /// wave to end (unless a full batch is due); big uploads, downloads and other namespaces
    /// do not wait.
    #[test]
    fn small_uploads_wait_for_the_wave_in_flight() {
        let policy = BatchPolicy::default();
        let mut due: Vec<BlobInfo> = (0..30)
            .map(|i| row(&format!("s{i:02}"), Status::PendingUpload, None))
            .collect();
        due.push(BlobInfo {
            size: Some(1 << 30),
            ..row("big", Status::PendingUpload, None)
        });
        due.push(row("d", Status::PendingDownload, Some(1)));
        due.push(BlobInfo {
            ns: Namespace::new("other").unwrap(),
            ..row("o", Status::PendingUpload, None)
        });
        let waiting: HashSet<String> = ["default".to_string()].into();
        let acts = next_transfers(&due, &HashSet::new(), &waiting, 5, policy);
        assert_eq!(acts.len(), 3, "{acts:?}");
        assert!(matches!(&acts[0], Action::Upload(b) if b.id.as_str() == "big"));
        assert!(matches!(&acts[1], Action::Download(b) if b.id.as_str() == "d"));
        assert!(matches!(&acts[2], Action::Upload(b) if b.ns.as_str() == "other"));
        // Nothing in flight: the same rows go at once, the small ones in one batch.
        let acts = next_transfers(&due, &HashSet::new(), &HashSet::new(), 5, policy);
        assert!(
            matches!(&acts[0], Action::UploadBatch(m) if m.len() == 30),
            "{acts:?}"
        );
        assert_eq!(acts.len(), 4);
        // A full batch does not wait: a backlog keeps every slot busy.
        let backlog: Vec<BlobInfo> = (0..2 * policy.max_count + 5)
            .map(|i| row(&format!("b{i:04}"), Status::PendingUpload, None))
            .collect();
        let acts = next_transfers(&backlog, &HashSet::new(), &waiting, 3, policy);
        assert_eq!(
            acts.len(),
            2,
            "two full batches, the last five wait: {acts:?}"
        );
        assert!(
            acts.iter()
                .all(|a| matches!(a, Action::UploadBatch(m) if m.len() == policy.max_count))
        );
        // What holds a namespace back.
        assert_eq!(
            small_upload_ns(&acts[0], policy).as_deref(),
            Some("default")
        );
        assert_eq!(
            small_upload_ns(&Action::Upload(due[0].clone()), policy).as_deref(),
            Some("default")
        );
        assert_eq!(
            small_upload_ns(&Action::Upload(due[30].clone()), policy),
            None
        );
        assert_eq!(
            small_upload_ns(&Action::Download(due[31].clone()), policy),
            None
        );
    }

    /// A pick reads `due_limit` rows of the queue, not all of it: that many still fill every
    /// free slot with a full batch when the rows in flight come first in pick order.
    #[test]
    fn a_pick_of_due_limit_rows_fills_every_free_slot_with_a_full_batch() {
        let policy = BatchPolicy::default();
        let (busy_n, slots) = (2 * policy.max_count, 1);
        let limit = crate::engine::due_limit(busy_n, slots, policy.max_count);
        assert_eq!(
            limit,
            3 * policy.max_count,
            "bounded by what a pick can start"
        );
        let queue: Vec<BlobInfo> = (0..10 * policy.max_count)
            .map(|i| row(&format!("d{i:05}"), Status::PendingDownload, Some(1)))
            .collect();
        let busy: HashSet<_> = queue[..busy_n]
            .iter()
            .map(|b| (b.ns.to_string(), b.id.to_string()))
            .collect();
        let acts = next_transfers(&queue[..limit], &busy, &HashSet::new(), slots, policy);
        assert_eq!(acts.len(), slots);
        assert!(
            matches!(&acts[0], Action::DownloadBatch(m)
                if m.len() == policy.max_count && m[0].id == queue[busy_n].id),
            "{acts:?}"
        );
    }

    #[test]
    fn external_blobs_go_in_incoming_and_adoption_batches_never_in_plain_ones() {
        let ext = |i: usize, status: Status, reupload: bool| BlobInfo {
            external: true,
            reupload,
            ..row(&format!("e{i:02}"), status, Some(1))
        };
        let mut due: Vec<BlobInfo> = Vec::new();
        for i in 0..10 {
            // A lost adoption race (reupload) is compared in the incoming batch too.
            due.push(ext(i, Status::PendingDownload, i % 3 == 0));
            due.push(ext(10 + i, Status::PendingUpload, false));
            due.push(row(&format!("p{i:02}"), Status::PendingUpload, None));
        }
        let acts = next_transfers(
            &due,
            &HashSet::new(),
            &HashSet::new(),
            5,
            BatchPolicy::default(),
        );
        assert_eq!(acts.len(), 3, "{acts:?}");
        assert!(
            matches!(&acts[0], Action::IncomingBatch(m) if m.len() == 10
                && m.iter().all(|b| b.external && b.status == Status::PendingDownload)),
            "{acts:?}"
        );
        assert!(
            matches!(&acts[1], Action::AdoptBatch(m) if m.len() == 10
                && m.iter().all(|b| b.external && b.status == Status::PendingUpload)),
            "{acts:?}"
        );
        assert!(
            matches!(&acts[2], Action::UploadBatch(m) if m.len() == 10
                && m.iter().all(|b| !b.external)),
            "{acts:?}"
        );
        // A plain raced re-upload is still fetched alone.
        let raced: Vec<BlobInfo> = (0..10)
            .map(|i| BlobInfo {
                reupload: true,
                ..row(&format!("r{i}"), Status::PendingDownload, Some(1))
            })
            .collect();
        let acts = next_transfers(
            &raced,
            &HashSet::new(),
            &HashSet::new(),
            3,
            BatchPolicy::default(),
        );
        assert!(acts.iter().all(|a| matches!(a, Action::Download(_))));
    }
}
