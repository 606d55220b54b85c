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

mod device;
mod history;
mod server;
mod sim;

use std::collections::{BTreeMap, BTreeSet, HashSet};
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

use device::Device;
use history::{Op, Outcome, op_strategy, outcome};
use server::{Salt, Server, proof_of, proven};
use sim::{Mode, Sim};

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
