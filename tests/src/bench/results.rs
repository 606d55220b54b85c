//! What a run measured: the figures of one workload, of the IDLE row and of the disk test,
//! and the whole report (the JSON document `blobsync-bench` writes).

use super::*;

/// Figures of one workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    /// `W1`..
    pub name: String,
    /// Blobs.
    pub count: usize,
    /// Bytes per blob.
    pub size: u64,
    /// Seconds until every `PutPath` call returned (blobs stored on A).
    pub put_s: f64,
    /// Seconds from the first put until A reports every blob SYNCED.
    pub upload_s: f64,
    /// Seconds from the forced sync on B until B reports every blob SYNCED.
    pub download_s: f64,
    /// upload + download.
    pub wall_s: f64,
    /// Plaintext MB/s (10^6) of the upload.
    pub upload_mb_s: f64,
    /// Plaintext MB/s (10^6) of the download.
    pub download_mb_s: f64,
    /// Blobs per second of the upload.
    pub upload_blobs_s: f64,
    /// Blobs per second of the download.
    pub download_blobs_s: f64,
    /// Daemon A (uploader).
    pub daemon_a: ProcUsage,
    /// Daemon B (downloader).
    pub daemon_b: ProcUsage,
    /// The server.
    pub server: ProcUsage,
    /// Blobs read back from B with the right SHA-256 (0 when verification is off).
    pub verified: usize,
    /// `PutPath` calls in flight.
    /// Percent of the machine's CPU time stolen by the hypervisor during the row (a noisy
    /// neighbour makes every figure of the row worse).
    pub steal_pct: f64,
    pub put_concurrency: usize,
}

/// Figures of the IDLE row.
#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    /// Synced blobs in the store.
    pub blobs: usize,
    /// Bytes per blob.
    pub blob_size: u64,
    /// Seconds to put them all on A until SYNCED (how the store was filled).
    pub populate_s: f64,
    /// End-to-end milliseconds of each forced no-change cycle (`Sync{wait}` round trip).
    pub nochange_cycle_ms: Vec<f64>,
    /// Whether each of those cycles did a full listing.
    pub nochange_full_list: Vec<bool>,
    /// Median of `nochange_cycle_ms`.
    pub nochange_cycle_median_ms: f64,
    /// Server CPU milliseconds per no-change cycle (mean).
    pub server_cpu_ms_per_cycle: f64,
    /// Daemon CPU milliseconds per no-change cycle (mean).
    pub daemon_cpu_ms_per_cycle: f64,
    /// Length of the idle interval in seconds.
    pub idle_s: f64,
    /// Daemon CPU seconds over the idle interval.
    pub idle_daemon_cpu_s: f64,
    /// Daemon CPU over the idle interval, percent of one core.
    pub idle_daemon_cpu_pct: f64,
    /// Server CPU over the idle interval, percent of one core.
    pub idle_server_cpu_pct: f64,
    /// Milliseconds from spawning the daemon (100k blobs in its store) until its control
    /// socket accepts a connection.
    pub startup_ms: f64,
    /// Milliseconds from spawning until a `Status` call answers.
    pub startup_status_ms: f64,
    /// Daemon usage over the whole row.
    pub daemon: ProcUsage,
    /// Server usage over the whole row.
    pub server: ProcUsage,
}

/// The disk's durable write rate.
#[derive(Clone, Debug, Serialize)]
pub struct DiskResult {
    /// Bytes written.
    pub bytes: u64,
    /// Seconds for write + fsync: the median of the runs.
    pub seconds: f64,
    /// MB/s (10^6), from the median.
    pub mb_s: f64,
    /// MB/s of every run, in order (this VM's disk varies a lot from one second to the next).
    pub runs_mb_s: Vec<f64>,
}

/// Everything one run measured (the JSON document).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    /// How blobs were put.
    pub put_method: String,
    /// The seed of the contents.
    pub seed: u64,
    /// The disk test, if run.
    pub disk: Option<DiskResult>,
    /// The workloads run.
    pub workloads: Vec<WorkloadResult>,
    /// The IDLE row, if run.
    pub idle: Option<IdleResult>,
    /// The INCOMING row, if run.
    pub incoming: Option<IncomingResult>,
    /// The server rows (SRV-LIST, SRV-PUT) that ran.
    pub server: Vec<server_load::ServerLoadResult>,
    /// The SYNC row's strategies, if run.
    pub sync: Vec<super::contention::SyncResult>,
    /// Bytes of disk the neighbour used during the workload rows (0: none).
    pub neighbour_bytes: u64,
    /// SRV-FULL (and IDLE-1M), if run.
    pub million: Option<super::MillionResult>,
    /// `uname -r`, CPU count: where it ran.
    pub machine: String,
    /// Median microseconds to create one file in the temp dir before the rows
    /// ([`super::staging::create_probe`]); `None` where not measured.
    pub create_us: Option<f64>,
}
