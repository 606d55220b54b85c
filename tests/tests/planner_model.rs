//! Model-based tests of the sync planner, in the style of Dropbox's CanopyCheck.
//!
//! Two simulated devices run the daemon's real pure planning functions
//! (`engine::plan::diff`, `engine::plan::next_transfers`), its real status machine and its
//! real store operations (`store::ops` on an in-memory SQLite with the real migrations)
//! against a simulated server (ids, sequence numbers, tombstones). Random correlated
//! histories are generated: local puts and deletes on either device, puts and deletes by a
//! third party on the server, sync cycles whose planned actions run in shuffled order and
//! each succeed, fail in transport, fail verification, or succeed with the response lost,
//! retries of due transfers between cycles (no listing first, as the real engine does), and
//! clock jumps. The simulated server's tombstones keep the deleted blob's size, as the real
//! server's (and the `file://` remote's) do: `plan::diff` matches that size against our
//! recorded upload attempt. Only the transfer I/O is simulated, mirroring `engine::transfer`.
//!
//! Invariants checked at every step: nothing panics and no illegal transition is attempted;
//! only `PENDING_UPLOAD` blobs are uploaded and a blob is never uploaded again after it was
//! synced or after the server deleted our stored copy; a transport fault never yields
//! `FAILED_DOWNLOAD`; verification failures yield `FAILED_DOWNLOAD` at exactly
//! `max_invalid_retries`; attempts count up by one per failure. At the end, fault-free cycles
//! (plus `retry --all-failed`) converge both devices to the server in a bounded number of
//! rounds, after which a cycle plans nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::wire::{Change, ChangeOp};
use blobsync_shared::{BlobId, Namespace};
use blobsyncd::engine::plan::{self, Action, BatchPolicy, ListingKind};
use blobsyncd::retry::retry_delay;
use blobsyncd::status::{Priority, Status, Transition};
use blobsyncd::store::ops::{self, RowUpdate};
use blobsyncd::store::{BlobInfo, DueFilter, NewLocalBlob, RetryPlan, schema};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use rusqlite::Connection;

const MAX_INVALID: u32 = 3;
const THIRD_PARTY: usize = 99;

#[test]
fn retry_delay_follows_the_seed_schedule() {
    let got: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(got, [10, 20, 30, 40, 50, 60, 60, 60, 60]);
    assert_eq!(
        retry_delay(0).as_secs(),
        10,
        "0 is treated as the first failure"
    );
    assert_eq!(retry_delay(u32::MAX).as_secs(), 60);
}

/// The simulated server: live blobs and tombstones with sequence numbers.
#[derive(Default, Debug)]
struct Server {
    seq: u64,
    /// id -> (seq, size, uploader, header salt of the stored version)
    live: BTreeMap<String, (u64, u64, usize, Salt)>,
    /// id -> (seq of the delete, size of the deleted copy, uploader of the deleted copy, its
    /// salt, the delete proof sent with it). The real server's tombstone keeps the size and
    /// the proof; the proof names the deleted version's salt.
    dead: BTreeMap<String, (u64, u64, usize, Salt, Option<String>)>,
    /// Bumped when the server is replaced by an empty one (a new instance id).
    instance: u32,
}

type Salt = [u8; 32];

/// The model's delete proof: the real one is an HMAC under the storage key over the version's
/// salt (unit-tested in `shared::tombstone`); here it is the salt itself, which a forging
/// server in this model never sends.
fn proof_of(salt: &Salt) -> String {
    hex::encode(salt)
}

fn proven(l: &BlobInfo, c: &Change) -> bool {
    l.upload_salt
        .is_some_and(|s| c.proof.as_deref() == Some(proof_of(&s).as_str()))
}

impl Server {
    fn put(&mut self, id: &str, size: u64, who: usize, salt: Salt) -> Result<(), Salt> {
        if let Some((_, _, _, theirs)) = self.live.get(id) {
            return Err(*theirs);
        }
        self.seq += 1;
        self.dead.remove(id);
        self.live
            .insert(id.to_string(), (self.seq, size, who, salt));
        Ok(())
    }

    /// A delete as a device (or a forging server, with `proof` None) makes it.
    fn delete(&mut self, id: &str, proof: Option<String>) -> bool {
        match self.live.remove(id) {
            Some((_, size, who, salt)) => {
                self.seq += 1;
                self.dead
                    .insert(id.to_string(), (self.seq, size, who, salt, proof));
                true
            }
            None => false,
        }
    }

    /// The server loses a blob: no tombstone at all (a restore from an old backup).
    fn lose(&mut self, id: &str) {
        self.live.remove(id);
    }

    /// The latest state of each id changed after `since`, ascending seq (the `since` listing).
    fn changes_since(&self, since: u64) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .live
            .iter()
            .filter(|(_, (s, _, _, _))| *s > since)
            .map(|(id, (s, size, _, _))| change(id, ChangeOp::Put, *size, *s))
            .chain(
                self.dead
                    .iter()
                    .filter(|(_, (s, _, _, _, _))| *s > since)
                    .map(|(id, (s, size, _, _, proof))| Change {
                        proof: proof.clone(),
                        ..change(id, ChangeOp::Delete, *size, *s)
                    }),
            )
            .collect();
        out.sort_by_key(|c| c.seq);
        out
    }
}

fn change(id: &str, op: ChangeOp, size: u64, seq: u64) -> Change {
    Change {
        id: BlobId::new(id).expect("generated ids are valid"),
        op,
        size,
        created: 1_700_000_000,
        seq,
        external: false,
        proof: None,
    }
}

struct Device {
    conn: Connection,
    cursor: Option<u64>,
    /// The server instance this device synced with (a change resets its cursor).
    instance: u32,
    /// Ids this device ever had SYNCED (they must never be uploaded again).
    ever_synced: HashSet<String>,
}

impl Device {
    fn new() -> Device {
        let mut conn = Connection::open_in_memory().expect("in-memory SQLite");
        schema::migrate(&mut conn).expect("migrations apply to an empty database");
        Device {
            conn,
            cursor: None,
            instance: 0,
            ever_synced: HashSet::new(),
        }
    }

    fn rows(&self, ns: &Namespace) -> Vec<BlobInfo> {
        ops::namespace_rows(&self.conn, ns).expect("read rows")
    }

    fn row(&self, ns: &Namespace, id: &BlobId) -> Option<BlobInfo> {
        ops::get(&self.conn, ns, id).expect("read row")
    }

    fn note_synced(&mut self, ns: &Namespace) {
        for r in self.rows(ns) {
            if r.status == Status::Synced {
                self.ever_synced.insert(r.id.to_string());
            }
        }
    }
}

/// What happens to one planned transfer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Ok,
    Transport,
    /// Downloads: the blob fails verification. Uploads: transport.
    Invalid,
    /// Uploads: the server stored it but the response was lost. Others: transport.
    Lost,
}

fn outcome(code: u8) -> Outcome {
    match code % 10 {
        0..=5 => Outcome::Ok,
        6 | 7 => Outcome::Transport,
        8 => Outcome::Invalid,
        _ => Outcome::Lost,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        dev: usize,
        size: u64,
    },
    LocalDelete {
        dev: usize,
        pick: usize,
    },
    RemotePut {
        size: u64,
    },
    RemoteDelete {
        pick: usize,
    },
    /// The server loses a live blob without a tombstone.
    ServerLoses {
        pick: usize,
    },
    /// The server invents a tombstone (no delete proof).
    ServerForgesDelete {
        pick: usize,
    },
    /// The server is replaced by an empty one (new instance id, everything gone).
    ServerReset,
    /// Many puts on one device at once (enough to reach the mass-deletion guard's floor).
    BulkPut {
        dev: usize,
        n: usize,
    },
    /// Another device of the user deletes every live blob, each with its proof.
    MassRemoteDelete,
    Cycle {
        dev: usize,
        full: bool,
        outcomes: Vec<u8>,
        shuffle: u64,
    },
    Advance {
        secs: u64,
    },
    /// Due transfers between cycles: `Engine::run` wakes at the next due retry (10 s after a
    /// failure, while a cycle comes every 30 s). The engine lists first when an attempted
    /// upload (salt recorded) is due (`Engine::transfers_only`); if that listing fails the
    /// server is unreachable (`reachable == false`) and so is every transfer. A model that
    /// only ever transfers right after a listing would miss a re-upload decided on a stale
    /// view of the server.
    Retry {
        dev: usize,
        reachable: bool,
        outcomes: Vec<u8>,
        shuffle: u64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..200_000u64).prop_map(|(dev, size)| Op::Put { dev, size }),
        1 => (0..2usize, any::<usize>()).prop_map(|(dev, pick)| Op::LocalDelete { dev, pick }),
        1 => (0..200_000u64).prop_map(|size| Op::RemotePut { size }),
        1 => any::<usize>().prop_map(|pick| Op::RemoteDelete { pick }),
        4 => (0..2usize, any::<bool>(), prop::collection::vec(any::<u8>(), 1..8), any::<u64>())
            .prop_map(|(dev, full, outcomes, shuffle)| Op::Cycle { dev, full, outcomes, shuffle }),
        2 => (1..90u64).prop_map(|secs| Op::Advance { secs }),
        2 => (0..2usize, any::<bool>(), prop::collection::vec(any::<u8>(), 1..8), any::<u64>())
            .prop_map(|(dev, reachable, outcomes, shuffle)| Op::Retry { dev, reachable, outcomes, shuffle }),
        1 => any::<usize>().prop_map(|pick| Op::ServerLoses { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ServerForgesDelete { pick }),
        1 => Just(Op::ServerReset),
        1 => (0..2usize, 101..140usize).prop_map(|(dev, n)| Op::BulkPut { dev, n }),
        1 => Just(Op::MassRemoteDelete),
    ]
}

struct Sim {
    server: Server,
    devices: [Device; 2],
    now: SystemTime,
    ns: Namespace,
    next_id: u32,
    next_salt: u32,
    mode: Mode,
    /// The user allowed held mass deletions (`blobctl sync --allow-mass-delete`): converge().
    allow_mass_delete: bool,
}

/// Which histories a property explores.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// Uploads may be stored with the response lost (crash between PUT and commit).
    lost_responses: bool,
    /// Local and remote deletes happen.
    deletes: bool,
    /// Due transfers also run between cycles with no listing first (`Op::Retry`).
    between_cycles: bool,
    /// The server loses blobs, forges tombstones and is replaced by an empty one.
    server_faults: bool,
    /// Bulk puts and mass deletions (over the mass-deletion guard's floor of 100). Costly:
    /// one property with fewer cases explores them.
    bulk: bool,
}

impl Sim {
    fn new(mode: Mode) -> Sim {
        Sim {
            mode,
            server: Server::default(),
            devices: [Device::new(), Device::new()],
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ns: Namespace::new("default").expect("valid namespace"),
            next_id: 0,
            next_salt: 0,
            allow_mass_delete: false,
        }
    }

    fn fresh_salt(&mut self) -> Salt {
        self.next_salt += 1;
        let mut s = [0u8; 32];
        s[..4].copy_from_slice(&self.next_salt.to_be_bytes());
        s
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("id{}", self.next_id)
    }

    /// Rows holding a local copy, per device: (id, salt of the held version).
    fn held(&self) -> [BTreeMap<String, Option<Salt>>; 2] {
        std::array::from_fn(|d| {
            self.devices[d]
                .rows(&self.ns)
                .into_iter()
                .filter(|r| r.status.has_payload())
                .map(|r| (r.id.to_string(), r.upload_salt))
                .collect()
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let before = self.held();
        let totals: [u64; 2] = std::array::from_fn(|d| self.devices[d].rows(&self.ns).len() as u64);
        self.apply_op(op)?;
        // Nothing is lost: a copy a device held disappears only by the user's own delete on
        // that device, or on a tombstone proving the deletion of exactly that version.
        for (dev, held) in before.iter().enumerate() {
            // The mass-deletion guard: one step (at most one cycle) never removes more of the
            // device's copies on remote deletions than max(100, 25 %) of its rows, unless the
            // user allowed it.
            let local_deletes = matches!(op, Op::LocalDelete { dev: d, .. } if *d == dev);
            let lost = held
                .keys()
                .filter(|id| {
                    self.devices[dev]
                        .row(&self.ns, &BlobId::new(id.as_str()).expect("valid"))
                        .is_none()
                })
                .count() as u64;
            let limit = blobsyncd::engine::mass_delete_limit(totals[dev]);
            if !local_deletes && !self.allow_mass_delete && lost > limit {
                return Err(format!(
                    "device {dev} lost {lost} copies in one step, over the guard's {limit} ({op:?})"
                ));
            }
            for (id, salt) in held {
                let row = self.devices[dev].row(&self.ns, &BlobId::new(id).expect("valid"));
                if row.is_some() {
                    continue;
                }
                let deleted_here = matches!(op, Op::LocalDelete { dev: d, .. } if *d == dev);
                let proven = match (salt, self.server.dead.get(id)) {
                    (Some(s), Some((_, _, _, _, Some(p)))) => *p == proof_of(s),
                    _ => false,
                };
                if !deleted_here && !proven {
                    return Err(format!(
                        "device {dev} lost its copy of {id} without a proven tombstone ({op:?})"
                    ));
                }
            }
        }
        Ok(())
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Put { dev, size } => {
                let id = self.fresh_id();
                let b = NewLocalBlob {
                    ns: self.ns.clone(),
                    id: BlobId::new(&id).expect("valid id"),
                    size: *size,
                    sha256: [7; 32],
                    priority: Priority::default(),
                    local_only: false,
                    created: self.now,
                };
                ops::insert_local(&mut self.devices[*dev].conn, &b).map_err(|e| e.to_string())?;
            }
            Op::LocalDelete { .. } if !self.mode.deletes => {}
            Op::LocalDelete { dev, pick } => {
                let rows = self.devices[*dev].rows(&self.ns);
                if !rows.is_empty() {
                    let b = &rows[pick % rows.len()];
                    let t = Transition::DeletedLocally {
                        maybe_uploaded: b.upload_salt.is_some(),
                    };
                    // A user may delete in any status; illegal moves are refused, not applied.
                    if b.status.apply(t).is_ok() {
                        let u = RowUpdate {
                            now: Some(self.now),
                            ..Default::default()
                        };
                        ops::transition(&self.devices[*dev].conn, &self.ns, &b.id, t, &u)
                            .map_err(|e| format!("local delete of {} ({}): {e}", b.id, b.status))?;
                    }
                }
            }
            Op::RemotePut { size } => {
                let id = self.fresh_id();
                let salt = self.fresh_salt();
                self.server
                    .put(&id, *size, THIRD_PARTY, salt)
                    .expect("fresh id");
            }
            Op::RemoteDelete { pick } => {
                if !self.mode.deletes {
                    return Ok(());
                }
                // Another device of the user: it holds the live version, and proves it.
                let ids: Vec<String> = self.server.live.keys().cloned().collect();
                if !ids.is_empty() {
                    let id = &ids[pick % ids.len()];
                    let salt = self.server.live[id].3;
                    self.server.delete(id, Some(proof_of(&salt)));
                }
            }
            Op::ServerLoses { .. } | Op::ServerForgesDelete { .. } | Op::ServerReset
                if !self.mode.server_faults => {}
            Op::ServerLoses { pick } => {
                let ids: Vec<String> = self.server.live.keys().cloned().collect();
                if !ids.is_empty() {
                    self.server.lose(&ids[pick % ids.len()]);
                }
            }
            Op::ServerForgesDelete { pick } => {
                let ids: Vec<String> = self.server.live.keys().cloned().collect();
                if !ids.is_empty() {
                    self.server.delete(&ids[pick % ids.len()], None);
                }
            }
            Op::BulkPut { .. } | Op::MassRemoteDelete if !self.mode.bulk => {}
            Op::BulkPut { dev, n } => {
                for _ in 0..*n {
                    self.apply_op(&Op::Put {
                        dev: *dev,
                        size: 10,
                    })?;
                }
            }
            Op::MassRemoteDelete => {
                if !self.mode.deletes {
                    return Ok(());
                }
                let live: Vec<(String, Salt)> = self
                    .server
                    .live
                    .iter()
                    .map(|(id, l)| (id.clone(), l.3))
                    .collect();
                for (id, salt) in live {
                    self.server.delete(&id, Some(proof_of(&salt)));
                }
            }
            Op::ServerReset => {
                let instance = self.server.instance + 1;
                self.server = Server {
                    instance,
                    ..Server::default()
                };
            }
            Op::Cycle {
                dev,
                full,
                outcomes,
                shuffle,
            } => {
                let outs = self.outcomes(outcomes);
                self.cycle(*dev, *full, &outs, *shuffle)?;
            }
            Op::Retry { .. } if !self.mode.between_cycles => {}
            Op::Retry {
                dev,
                reachable,
                outcomes,
                shuffle,
            } => {
                let attempted_upload_due = ops::due(
                    &self.devices[*dev].conn,
                    &DueFilter {
                        now: self.now,
                        limit: 1000,
                        statuses: vec![Status::PendingUpload],
                    },
                )
                .map_err(|e| e.to_string())?
                .iter()
                .any(|b| b.upload_salt.is_some());
                if !*reachable {
                    self.transfers(*dev, &[Outcome::Transport], *shuffle)?;
                } else if attempted_upload_due {
                    let outs = self.outcomes(outcomes);
                    self.cycle(*dev, false, &outs, *shuffle)?;
                } else {
                    let outs = self.outcomes(outcomes);
                    self.transfers(*dev, &outs, *shuffle)?;
                }
            }
            Op::Advance { secs } => self.now += Duration::from_secs(*secs),
        }
        for d in &mut self.devices {
            d.note_synced(&self.ns);
        }
        Ok(())
    }

    fn outcomes(&self, codes: &[u8]) -> Vec<Outcome> {
        codes
            .iter()
            .map(|c| match outcome(*c) {
                Outcome::Lost if !self.mode.lost_responses => Outcome::Transport,
                o => o,
            })
            .collect()
    }

    /// One sync cycle of device `dev`: list, diff, apply, plan, execute (shuffled).
    /// Returns how many actions it planned.
    fn cycle(
        &mut self,
        dev: usize,
        full: bool,
        outs: &[Outcome],
        shuffle: u64,
    ) -> Result<usize, String> {
        let ns = self.ns.clone();
        let now = self.now;
        let d = &mut self.devices[dev];
        // `Engine::check_remote_identity`: another server instance resets what we learnt.
        if d.instance != self.server.instance {
            ops::reset_remote(&mut d.conn, &format!("instance {}", self.server.instance))
                .map_err(|e| e.to_string())?;
            d.instance = self.server.instance;
            d.cursor = None;
        }
        // A cursor beyond the server's sequence is refused (410/400): list in full.
        if d.cursor.is_some_and(|c| c > self.server.seq) {
            d.cursor = None;
        }
        let since = if full { 0 } else { d.cursor.unwrap_or(0) };
        let kind = if since == 0 {
            ListingKind::Full
        } else {
            ListingKind::Incremental
        };
        let changes = self.server.changes_since(since);
        let facts = plan::diff(&d.rows(&ns), &changes, kind, NamespacePolicy::Eager, proven);
        ops::apply_remote(&mut d.conn, &ns, &facts, Some(self.server.seq), now)
            .map_err(|e| format!("apply_remote {facts:?}: {e}"))?;
        // `Engine::apply_held_deletions`: proven deletions go through the mass-deletion guard.
        let held = ops::held_count(&mut d.conn, &ns).map_err(|e| e.to_string())?;
        let total = d.rows(&ns).len() as u64;
        if held > 0
            && (self.allow_mass_delete || held <= blobsyncd::engine::mass_delete_limit(total))
        {
            ops::apply_held(&mut d.conn, &ns, now).map_err(|e| e.to_string())?;
        }
        d.cursor = Some(self.server.seq);
        // `Engine::backfill_salts`: after a good listing, a synced copy whose salt is not known
        // (a remote change forgot it) takes the server copy's salt from its header.
        let unknown = ops::synced_without_salt(&mut d.conn, 10_000).map_err(|e| e.to_string())?;
        for b in unknown {
            if let Some(&(_, _, _, salt)) = self.server.live.get(b.id.as_str()) {
                ops::set_upload_salt(&mut d.conn, &b.ns, &b.id, &salt)
                    .map_err(|e| e.to_string())?;
            }
        }
        self.transfers(dev, outs, shuffle)
    }

    /// Plans the due transfers of device `dev` and executes them (shuffled), with no listing
    /// first. Returns how many actions it planned.
    fn transfers(&mut self, dev: usize, outs: &[Outcome], shuffle: u64) -> Result<usize, String> {
        let now = self.now;
        let d = &mut self.devices[dev];
        let due = ops::due(
            &d.conn,
            &DueFilter {
                now,
                limit: 10_000,
                statuses: Vec::new(),
            },
        )
        .map_err(|e| e.to_string())?;
        let mut actions =
            plan::next_transfers(&due, &HashSet::new(), 1_000, BatchPolicy::default());
        let planned = actions.len();
        let mut seen = HashSet::new();
        for a in &actions {
            let ids: Vec<&BlobInfo> = match a {
                Action::Upload(b) | Action::Download(b) | Action::DeleteRemote(b) => vec![b],
                Action::UploadBatch(v) | Action::DownloadBatch(v) => v.iter().collect(),
            };
            for b in ids {
                if !seen.insert(b.id.clone()) {
                    return Err(format!(
                        "blob {} planned twice in one cycle: {actions:?}",
                        b.id
                    ));
                }
            }
        }
        actions.shuffle(&mut StdRng::seed_from_u64(shuffle));
        let mut k = 0usize;
        for a in actions {
            let members: Vec<(BlobInfo, bool)> = match a {
                Action::Upload(b) => vec![(b, true)],
                Action::UploadBatch(v) => v.into_iter().map(|b| (b, true)).collect(),
                Action::Download(b) => vec![(b, false)],
                Action::DownloadBatch(v) => v.into_iter().map(|b| (b, false)).collect(),
                Action::DeleteRemote(b) => {
                    let o = outs[k % outs.len()];
                    k += 1;
                    self.delete_remote(dev, b, o)?;
                    continue;
                }
            };
            for (b, up) in members {
                let o = if outs.is_empty() {
                    Outcome::Ok
                } else {
                    outs[k % outs.len()]
                };
                k += 1;
                if up {
                    self.upload(dev, b, o)?;
                } else {
                    self.download(dev, b, o)?;
                }
            }
        }
        Ok(planned)
    }

    fn fail(&mut self, dev: usize, b: &BlobInfo, invalid: bool) -> Result<(), String> {
        let now = self.now;
        let d = &mut self.devices[dev];
        let before = d.row(&b.ns, &b.id).ok_or("failed row vanished")?;
        let plan = RetryPlan {
            error: if invalid {
                "tag mismatch".into()
            } else {
                "connection refused".into()
            },
            next_attempt: now + retry_delay(b.attempts + 1),
            invalid,
            max_invalid: MAX_INVALID,
            now,
        };
        ops::record_failure(&mut d.conn, &b.ns, &b.id, &plan).map_err(|e| e.to_string())?;
        let after = d.row(&b.ns, &b.id).ok_or("row vanished on failure")?;
        if after.attempts != before.attempts + 1 {
            return Err(format!(
                "attempts {} -> {} on a failure",
                before.attempts, after.attempts
            ));
        }
        // Still queued: due again exactly one schedule step later (FAILED_DOWNLOAD is not due).
        if after.status.is_queued() && after.next_attempt != Some(plan.next_attempt) {
            return Err(format!(
                "{}: next attempt {:?}, want {:?}",
                b.id, after.next_attempt, plan.next_attempt
            ));
        }
        if !invalid
            && after.status == Status::FailedDownload
            && before.status != Status::FailedDownload
        {
            return Err(format!(
                "{}: a transport fault made it FAILED_DOWNLOAD",
                b.id
            ));
        }
        if invalid {
            let want = if after.invalid_attempts >= MAX_INVALID {
                Status::FailedDownload
            } else {
                Status::PendingDownload
            };
            if after.status != want {
                return Err(format!(
                    "{}: after {} verification failures status is {}, want {want}",
                    b.id, after.invalid_attempts, after.status
                ));
            }
        }
        Ok(())
    }

    fn upload(&mut self, dev: usize, b: BlobInfo, o: Outcome) -> Result<(), String> {
        let id = b.id.to_string();
        if b.status != Status::PendingUpload {
            return Err(format!("planned an upload of {id} in status {}", b.status));
        }
        // A blob it had synced goes up again only as a re-upload of what the server lost.
        if self.devices[dev].ever_synced.contains(&id) && !b.reupload {
            return Err(format!(
                "device {dev} uploads {id} again after it was synced"
            ));
        }
        // The harm is a PUT that reaches the server (stored, answered or not) on a proven
        // tombstone of the very version we uploaded; an attempt that cannot reach it
        // (transport) changes nothing, and an unproven tombstone is a lost blob.
        let resurrects = matches!(o, Outcome::Ok | Outcome::Lost)
            && matches!(
                (b.upload_salt, self.server.dead.get(&id)),
                (Some(ours), Some((_, _, _, _, Some(p)))) if *p == proof_of(&ours)
            );
        if resurrects {
            return Err(format!(
                "device {dev} uploads {id} again after its copy was deleted with a proof"
            ));
        }
        // As the engine does: the recorded salt of an earlier attempt, else a fresh one,
        // recorded before the PUT.
        let salt = match b.upload_salt {
            Some(s) => s,
            None => self.fresh_salt(),
        };
        ops::record_upload_attempt(
            &mut self.devices[dev].conn,
            &b.ns,
            &b.id,
            &salt,
            b.size.unwrap_or(0),
        )
        .map_err(|e| e.to_string())?;
        match o {
            Outcome::Transport | Outcome::Invalid => self.fail(dev, &b, false),
            Outcome::Lost => {
                let _ = self.server.put(&id, b.size.unwrap_or(0), dev, salt);
                self.fail(dev, &b, false)
            }
            Outcome::Ok => {
                let t = match self.server.put(&id, b.size.unwrap_or(0), dev, salt) {
                    Ok(()) => Transition::UploadSucceeded,
                    // 409: our own earlier upload (same salt), another device's re-upload of
                    // a lost blob we were re-uploading too, or a conflict.
                    Err(theirs) if theirs == salt => Transition::UploadSucceeded,
                    Err(_) => Transition::Contested,
                };
                let u = RowUpdate {
                    now: Some(self.now),
                    ..Default::default()
                };
                ops::transition(&self.devices[dev].conn, &b.ns, &b.id, t, &u)
                    .map(|_| ())
                    .map_err(|e| format!("{t:?} on {id}: {e}"))
            }
        }
    }

    fn download(&mut self, dev: usize, b: BlobInfo, o: Outcome) -> Result<(), String> {
        let id = b.id.to_string();
        if b.status != Status::PendingDownload {
            return Err(format!("planned a download of {id} in status {}", b.status));
        }
        match (o, self.server.live.get(&id).copied()) {
            (Outcome::Invalid, Some(_)) => self.fail(dev, &b, true),
            (Outcome::Ok, Some((_, size, _, salt))) => {
                let u = RowUpdate {
                    size: Some(size),
                    sha256: Some([7; 32]),
                    remote_size: Some(size),
                    salt: Some(salt),
                    now: Some(self.now),
                    ..Default::default()
                };
                ops::transition(
                    &self.devices[dev].conn,
                    &b.ns,
                    &b.id,
                    Transition::DownloadSucceeded,
                    &u,
                )
                .map(|_| ())
                .map_err(|e| format!("DownloadSucceeded on {id}: {e}"))
            }
            // Transport faults, and a 404 for a blob deleted since the listing (the next
            // listing removes it).
            _ => self.fail(dev, &b, false),
        }
    }

    fn delete_remote(&mut self, dev: usize, b: BlobInfo, o: Outcome) -> Result<(), String> {
        if b.status != Status::PendingDelete {
            return Err(format!(
                "planned a remote delete of {} in status {}",
                b.id, b.status
            ));
        }
        if o != Outcome::Ok {
            return self.fail(dev, &b, false);
        }
        // 200 or 404: either way the server no longer has it. The proof names the version we
        // held, or (a row with no salt) the server's copy, as `delete_proof` does.
        let salt = b
            .upload_salt
            .or_else(|| self.server.live.get(b.id.as_str()).map(|l| l.3));
        self.server
            .delete(b.id.as_str(), salt.as_ref().map(proof_of));
        let u = RowUpdate {
            now: Some(self.now),
            ..Default::default()
        };
        ops::transition(
            &self.devices[dev].conn,
            &b.ns,
            &b.id,
            Transition::DeleteConfirmed,
            &u,
        )
        .map(|_| ())
        .map_err(|e| format!("DeleteConfirmed on {}: {e}", b.id))
    }

    /// Fault-free cycles until both devices match the server; then one more plans nothing.
    fn converge(&mut self) -> Result<(), String> {
        // The user looks at the alarm and allows what the guard held.
        self.allow_mass_delete = true;
        for round in 0..12 {
            for dev in 0..2 {
                self.now += Duration::from_secs(61);
                let failed = ops::retry_all_failed(&mut self.devices[dev].conn)
                    .map_err(|e| e.to_string())?;
                let _ = failed;
                self.cycle(dev, round % 3 == 2, &[Outcome::Ok], 0)?;
                self.devices[dev].note_synced(&self.ns);
            }
            if self.converged().is_ok() {
                // Settled: one more cycle on each device plans nothing. A device may still
                // fetch the other's re-upload of a blob the server lost (same content, new
                // seq) once; a planner that never goes quiet fails after the last round.
                let mut busy = None;
                for dev in 0..2 {
                    self.now += Duration::from_secs(61);
                    let n = self.cycle(dev, false, &[Outcome::Ok], 0)?;
                    if n != 0 {
                        busy = Some(format!(
                            "device {dev} still plans {n} actions after converging"
                        ));
                    }
                }
                match busy {
                    None => return self.converged(),
                    Some(e) if round == 11 => return Err(e),
                    Some(_) => {}
                }
            }
        }
        self.converged()
    }

    fn converged(&self) -> Result<(), String> {
        let want: Vec<&String> = self.server.live.keys().collect();
        for (i, d) in self.devices.iter().enumerate() {
            let rows = d.rows(&self.ns);
            let mut got: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
            got.sort();
            let got_refs: Vec<&String> = got.iter().collect();
            if got_refs != want {
                return Err(format!("device {i} has {got:?}, server {want:?}"));
            }
            if let Some(r) = rows.iter().find(|r| r.status != Status::Synced) {
                return Err(format!("device {i}: {} is {}", r.id, r.status));
            }
        }
        Ok(())
    }
}

fn run(ops_list: &[Op], mode: Mode) -> Result<(), String> {
    let mut sim = Sim::new(mode);
    for (i, op) in ops_list.iter().enumerate() {
        sim.apply(op).map_err(|e| format!("step {i} {op:?}: {e}"))?;
    }
    sim.converge()
        .map_err(|e| format!("after {} steps, no convergence: {e}", ops_list.len()))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: blobsync_tests::env_number("BLOBSYNC_PLANNER_CASES", 200u32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn planner_keeps_its_invariants_and_converges(ops in prop::collection::vec(op_strategy(), 1..60)) {
        if let Err(e) = run(&ops, Mode { lost_responses: false, deletes: true, between_cycles: true, server_faults: false, bulk: false }) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Lost upload responses (the server stored it, the device does not know): the retry's
    /// 409 with our own salt counts as success, nothing is uploaded twice.
    #[test]
    fn lost_upload_responses_are_recognised_as_our_own_uploads(ops in prop::collection::vec(op_strategy(), 1..60)) {
        if let Err(e) = run(&ops, Mode { lost_responses: true, deletes: false, between_cycles: true, server_faults: false, bulk: false }) {
            prop_assert!(false, "{}", e);
        }
    }

    /// A device whose upload was stored but whose response was lost (crash between PUT and
    /// commit) keeps the blob PENDING_UPLOAD; if another device deletes it on the server
    /// before the retry, the tombstone (whose delete proof names our recorded salt) must turn
    /// the row into a deletion; a retried PUT would bring the deleted blob back everywhere.
    /// In a cycle the listing comes first, so the tombstone reaches `plan::diff` before any
    /// retry.
    #[test]
    fn a_blob_deleted_on_the_server_is_never_uploaded_again(ops in prop::collection::vec(op_strategy(), 1..60)) {
        if let Err(e) = run(&ops, Mode { lost_responses: true, deletes: true, between_cycles: false, server_faults: false, bulk: false }) {
            prop_assert!(false, "{}", e);
        }
    }

    /// The same, with the engine's retries between cycles (`Engine::run` wakes for the next
    /// due retry, 10 s after a failure). Before `Engine::transfers_only` listed first, this
    /// failed on: dev 0 puts X, its PUT is stored but the answer is lost; X is deleted on the
    /// server; 10 s later dev 0 retried without a listing and the server accepted the PUT on
    /// the tombstoned id.
    /// A server that loses blobs (no tombstone), invents tombstones (no delete proof) or is
    /// replaced by an empty one never costs a device a blob: each is uploaded again, and the
    /// devices converge with the server. Only proven tombstones delete (`Sim::apply` checks
    /// that after every step).
    #[test]
    fn a_server_that_loses_forges_or_resets_never_costs_a_device_a_blob(ops in prop::collection::vec(op_strategy(), 1..60)) {
        if let Err(e) = run(&ops, Mode { lost_responses: true, deletes: true, between_cycles: true, server_faults: true, bulk: false }) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn a_blob_deleted_on_the_server_is_never_uploaded_again_by_a_retry_between_cycles(ops in prop::collection::vec(op_strategy(), 1..60)) {
        if let Err(e) = run(&ops, Mode { lost_responses: true, deletes: true, between_cycles: true, server_faults: false, bulk: false }) {
            prop_assert!(false, "{}", e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: blobsync_tests::env_number("BLOBSYNC_PLANNER_BULK_CASES", 24u32),
        ..ProptestConfig::default()
    })]

    /// With over a hundred blobs a device holds: a real mass deletion from another device
    /// (every blob, each with its proof) is held by the guard — no step removes more than
    /// max(100, 25 %) of a device's copies, and nothing held is uploaded meanwhile — until
    /// the user allows it (`converge` does), alongside every server fault.
    #[test]
    fn mass_deletions_are_held_by_the_guard_and_never_undone(ops in prop::collection::vec(op_strategy(), 1..40)) {
        if let Err(e) = run(&ops, Mode { lost_responses: true, deletes: true, between_cycles: true, server_faults: true, bulk: true }) {
            prop_assert!(false, "{}", e);
        }
    }
}
