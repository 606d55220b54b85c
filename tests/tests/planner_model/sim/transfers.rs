//! The transfer I/O of the simulation, mirroring `engine::transfer`: the due transfers of a
//! device planned and run between cycles, and one upload, download or remote delete with
//! its outcome (ok, transport fault, verification failure, response lost), each checking the
//! status machine's invariants.

use super::*;

impl Sim {
    /// Plans the due transfers of device `dev` and executes them (shuffled), with no listing
    /// first. Returns how many actions it planned.
    pub(crate) fn transfers(
        &mut self,
        dev: usize,
        outs: &[Outcome],
        shuffle: u64,
    ) -> Result<usize, String> {
        let now = self.now;
        let d = &mut self.devices[dev];
        let due =
            ops::due(&d.conn, &DueFilter { now, limit: 10_000 }).map_err(|e| e.to_string())?;
        let mut actions = plan::next_transfers(
            &due,
            &HashSet::new(),
            &HashSet::new(),
            1_000,
            BatchPolicy::default(),
        );
        let planned = actions.len();
        let mut seen = HashSet::new();
        for a in &actions {
            let ids: Vec<&BlobInfo> = match a {
                Action::Upload(b) | Action::Download(b) | Action::DeleteRemote(b) => vec![b],
                Action::UploadBatch(v)
                | Action::DownloadBatch(v)
                | Action::IncomingBatch(v)
                | Action::AdoptBatch(v) => v.iter().collect(),
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
                Action::UploadBatch(v) | Action::AdoptBatch(v) => {
                    v.into_iter().map(|b| (b, true)).collect()
                }
                Action::Download(b) => vec![(b, false)],
                Action::DownloadBatch(v) | Action::IncomingBatch(v) => {
                    v.into_iter().map(|b| (b, false)).collect()
                }
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

    pub(crate) fn fail(&mut self, dev: usize, b: &BlobInfo, invalid: bool) -> Result<(), String> {
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

    pub(crate) fn upload(&mut self, dev: usize, b: BlobInfo, o: Outcome) -> Result<(), String> {
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

    pub(crate) fn download(&mut self, dev: usize, b: BlobInfo, o: Outcome) -> Result<(), String> {
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

    pub(crate) fn delete_remote(
        &mut self,
        dev: usize,
        b: BlobInfo,
        o: Outcome,
    ) -> Result<(), String> {
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
}
