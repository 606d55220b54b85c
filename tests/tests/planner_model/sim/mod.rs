//! The simulation: two devices and a server, the kinds of history a property explores
//! ([`Mode`]), applying one step of a history, a sync cycle (list, diff, apply, plan, execute
//! shuffled) and the fault-free rounds that must converge both devices to the server. The
//! transfers themselves are in [`transfers`].

mod transfers;

use super::*;

pub(crate) struct Sim {
    pub(crate) server: Server,
    pub(crate) devices: [Device; 2],
    pub(crate) now: SystemTime,
    pub(crate) ns: Namespace,
    pub(crate) next_id: u32,
    pub(crate) next_salt: u32,
    pub(crate) mode: Mode,
    /// The user allowed held mass deletions (`blobctl sync --allow-mass-delete`): converge().
    pub(crate) allow_mass_delete: bool,
}

/// Which histories a property explores.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mode {
    /// Uploads may be stored with the response lost (crash between PUT and commit).
    pub(crate) lost_responses: bool,
    /// Local and remote deletes happen.
    pub(crate) deletes: bool,
    /// Due transfers also run between cycles with no listing first (`Op::Retry`).
    pub(crate) between_cycles: bool,
    /// The server loses blobs, forges tombstones and is replaced by an empty one.
    pub(crate) server_faults: bool,
    /// Bulk puts and mass deletions (over the mass-deletion guard's floor of 100). Costly:
    /// one property with fewer cases explores them.
    pub(crate) bulk: bool,
}

impl Sim {
    pub(crate) fn new(mode: Mode) -> Sim {
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

    pub(crate) fn fresh_salt(&mut self) -> Salt {
        self.next_salt += 1;
        let mut s = [0u8; 32];
        s[..4].copy_from_slice(&self.next_salt.to_be_bytes());
        s
    }

    pub(crate) fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("id{}", self.next_id)
    }

    /// Rows holding a local copy, per device: (id, salt of the held version).
    pub(crate) fn held(&self) -> [BTreeMap<String, Option<Salt>>; 2] {
        std::array::from_fn(|d| {
            self.devices[d]
                .rows(&self.ns)
                .into_iter()
                .filter(|r| r.status.has_payload())
                .map(|r| (r.id.to_string(), r.upload_salt))
                .collect()
        })
    }

    /// Ids whose deletion a device holds under the mass-deletion guard, per device: each was
    /// a tombstone proving the deletion of the version held, checked when it was listed.
    pub(crate) fn held_deletions(&self) -> [BTreeSet<String>; 2] {
        std::array::from_fn(|d| {
            let conn = &self.devices[d].conn;
            let mut st = conn
                .prepare("SELECT id FROM held_deletions WHERE ns = ?1")
                .expect("held_deletions");
            st.query_map([self.ns.as_str()], |r| r.get::<_, String>(0))
                .expect("held_deletions")
                .collect::<Result<_, _>>()
                .expect("held_deletions")
        })
    }

    pub(crate) fn apply(&mut self, op: &Op) -> Result<(), String> {
        let before = self.held();
        let proven_before = self.held_deletions();
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
                // A held deletion was proven when it was listed; applied later (the user
                // allowed it, or what was held shrank under the guard's limit), it stays
                // proven even if the server has since lost that tombstone: the device cannot
                // know, and the deletion is the user's own, made on another device.
                let proven = proven_before[dev].contains(id)
                    || match (salt, self.server.dead.get(id)) {
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

    pub(crate) fn apply_op(&mut self, op: &Op) -> Result<(), String> {
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
                let attempted_upload_due =
                    ops::attempted_upload_due(&self.devices[*dev].conn, self.now)
                        .map_err(|e| e.to_string())?;
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

    pub(crate) fn outcomes(&self, codes: &[u8]) -> Vec<Outcome> {
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
    pub(crate) fn cycle(
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
        // `Engine::apply_held_deletions` weighs them against the namespace before the listing.
        let total = d.rows(&ns).len() as u64;
        let facts = plan::diff(&d.rows(&ns), &changes, kind, NamespacePolicy::Eager, proven);
        ops::apply_remote(&mut d.conn, &ns, &facts, Some(self.server.seq), now)
            .map_err(|e| format!("apply_remote {facts:?}: {e}"))?;
        // `Engine::apply_held_deletions`: proven deletions go through the mass-deletion guard.
        let held = ops::held_count(&mut d.conn, &ns).map_err(|e| e.to_string())?;
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

    /// Fault-free cycles until both devices match the server; then one more plans nothing.
    pub(crate) fn converge(&mut self) -> Result<(), String> {
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

    pub(crate) fn converged(&self) -> Result<(), String> {
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
