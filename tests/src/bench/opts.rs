//! What a run is asked to do: Soledad's workloads of issue 8 (count and size of blobs, in
//! table order), how blobs are put, and the knobs of a run (all with CLI flags in
//! `blobsync-bench`).

use super::*;

/// One of Soledad's workloads: `count` blobs of `size` bytes (binary units, as peers.sh).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// `W1`..`W6`.
    pub name: &'static str,
    /// Number of blobs.
    pub count: usize,
    /// Bytes per blob.
    pub size: u64,
}

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * 1024;
pub(super) const GIB: u64 = 1024 * MIB;

/// The workloads of issue 8, in table order.
pub const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "W1",
        count: 1000,
        size: 10 * KIB,
    },
    Workload {
        name: "W2",
        count: 100,
        size: 100 * KIB,
    },
    Workload {
        name: "W3",
        count: 10,
        size: MIB,
    },
    Workload {
        name: "W4",
        count: 1,
        size: 10 * MIB,
    },
    Workload {
        name: "W5",
        count: 10_000,
        size: KIB,
    },
    Workload {
        name: "W6",
        count: 1,
        size: 1024 * MIB,
    },
];

/// Knobs of a run (all have CLI flags in `blobsync-bench`).
#[derive(Clone, Debug)]
pub struct BenchOpts {
    /// Seed of the random blob contents.
    pub seed: u64,
    /// `PutPath` calls in flight on daemon A.
    pub put_concurrency: usize,
    /// 0: one `PutPath` per blob; N: `PutPaths` calls of N blobs each (still
    /// `put_concurrency` calls in flight).
    pub put_batch: usize,
    /// Idle interval over which the IDLE row measures daemon CPU.
    pub idle: Duration,
    /// Synced blobs in the IDLE row's store.
    pub idle_blobs: usize,
    /// Size of each IDLE blob.
    pub idle_blob_size: u64,
    /// No-change cycles timed in the IDLE row.
    pub idle_cycles: usize,
    /// Bytes written (then fsynced) by the disk test.
    pub disk_bytes: u64,
    /// Read every blob back from B and compare SHA-256 (not timed).
    pub verify: bool,
    /// Spread the blobs' ids over the id space as random or hashed ids are
    /// (`staging::spread_id`) instead of `b000000`, `b000001`.. (which keep every
    /// blob of a row in one fan directory and append to the store's indexes).
    pub spread_ids: bool,
    /// Flush the staged files to disk (one `syncfs`, not timed) before the clock starts, as
    /// files a user hands over a while after writing them are. Off: they are still dirty, as
    /// files an app saves and puts at once are, and their 4 KiB page each (40 MB for W5) is
    /// dirty data of another program that makes the daemon's groups choose per-file syncs.
    pub staged_at_rest: bool,
    /// Longest wait for one phase (upload or download) before giving up.
    pub phase_timeout: Duration,
    /// Server nodes on `s3+postgres` (a throwaway Garage and PostgreSQL, see
    /// [`crate::engines`]); 0 = one `fs+sqlite` server. Device A talks to the first node and
    /// B to the last, so with several nodes every blob crosses nodes.
    pub scaleout_nodes: usize,
    /// Simulated devices of the SRV-LIST row.
    pub server_devices: usize,
    /// Listings per second the SRV-LIST devices offer together.
    pub server_rate: f64,
    /// Clients of the SRV-PUT row.
    pub server_put_clients: usize,
    /// How long each server row runs.
    pub server_secs: Duration,
    /// Blobs of the SRV-FULL and IDLE-1M user (plaintext size: `idle_blob_size`).
    pub million_blobs: usize,
    /// 0: no neighbour; else the workload rows run with a background writer using at most
    /// this many bytes of disk (the SYNC row's contended half uses at least 1 GiB).
    pub neighbour_bytes: u64,
    /// Batches of 32 files per strategy and condition in the SYNC row.
    pub sync_batches: usize,
    /// Pause before each SYNC batch.
    pub sync_gap: Duration,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            seed: 8,
            put_concurrency: 32,
            put_batch: 0,
            idle: Duration::from_secs(60),
            idle_blobs: 100_000,
            idle_blob_size: KIB,
            idle_cycles: 10,
            disk_bytes: 1024 * MIB,
            verify: true,
            spread_ids: false,
            staged_at_rest: false,
            phase_timeout: Duration::from_secs(1800),
            scaleout_nodes: 0,
            server_devices: 1000,
            server_rate: 10_000.0,
            server_put_clients: 64,
            server_secs: Duration::from_secs(10),
            million_blobs: 1_000_000,
            neighbour_bytes: 0,
            sync_batches: 32,
            sync_gap: Duration::from_millis(200),
        }
    }
}

/// How blobs are put, for the report.
pub const PUT_METHOD: &str = "gRPC PutPath (daemon copies a staged file), N calls in flight";
