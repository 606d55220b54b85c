//! The benchmark harness behind `blobsync-bench`: Soledad's workloads through a real server
//! and two real daemons over loopback, with the figures issue 8 asks for.
//!
//! Each workload runs on a fresh [`TestEnv`] (one server, daemon A and daemon B of one user),
//! so peak RSS and CPU are that workload's alone. Blobs are staged as files before the clock
//! starts (random, incompressible, from a fixed seed) and put on A with `PutPath`, many calls
//! in flight, so the client is never the bottleneck. Upload = first put until A reports every
//! blob `SYNCED` (watched through `Watch`); download = a forced `Sync` on B (checked to hold
//! nothing of the workload first) until B reports every blob `SYNCED` (B verified each segment's tag while downloading); afterwards, out of the
//! clock, every blob is read back from B and its SHA-256 compared with the staged file's.
//! This module measures; it never asserts a target (it is a benchmark, not a test).

pub mod client;
pub mod measure;
pub mod report;

mod incoming;
pub mod server_load;
pub use incoming::{IncomingResult, run_incoming};

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobsync_proto::event::Kind;
use blobsync_proto::{
    BlobStatus, GetRequest, PutHeader, PutPathRequest, PutPathsRequest, StatusRequest, SyncRequest,
    WatchRequest, get_response,
};
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use tonic::Streaming;

use crate::daemon::write_key_file;
use crate::{DaemonOpts, DaemonProc, HarnessError, RemoteSpec, ServerOpts, ServerProc, TestEnv};
use client::Client;
use measure::{ProcUsage, Snapshot};

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Starting or driving the processes failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A control call failed.
    #[error("control call failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// Connecting to a control socket failed.
    #[error("cannot connect to the control socket: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// Local file I/O (staging, disk test).
    #[error("{context}: {source}")]
    Io {
        /// What the benchmark was doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The system did not reach the state the benchmark waits for, or read back wrong data.
    #[error("{0}")]
    Check(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

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

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

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
            phase_timeout: Duration::from_secs(1800),
            scaleout_nodes: 0,
            server_devices: 1000,
            server_rate: 10_000.0,
            server_put_clients: 64,
            server_secs: Duration::from_secs(10),
        }
    }
}

/// How blobs are put, for the report.
pub const PUT_METHOD: &str = "gRPC PutPath (daemon copies a staged file), N calls in flight";

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
    /// `uname -r`, CPU count: where it ran.
    pub machine: String,
}

/// A staged blob: id, file, expected digest.
struct Staged {
    id: String,
    path: PathBuf,
    sha256: [u8; 32],
}

fn new_env(_opts: &BenchOpts) -> Result<RowEnv, BenchError> {
    // TestEnv lives under the system temp dir; set TMPDIR to bench another disk.
    Ok(RowEnv(Some(TestEnv::new()?)))
}

/// A row's [`TestEnv`] whose files outlive the row: see [`remove_row_dirs`].
struct RowEnv(Option<TestEnv>);

static ROW_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl std::ops::Deref for RowEnv {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        self.0.as_ref().expect("set until drop")
    }
}

impl std::ops::DerefMut for RowEnv {
    fn deref_mut(&mut self) -> &mut TestEnv {
        self.0.as_mut().expect("set until drop")
    }
}

impl Drop for RowEnv {
    fn drop(&mut self) {
        // Dropping the env stops its processes; its files stay for `remove_row_dirs`.
        if let Some(mut env) = self.0.take()
            && !crate::env_flag("BLOBSYNC_TEST_KEEP")
        {
            let root = env.keep();
            ROW_DIRS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(root);
        }
    }
}

/// Where finished rows' small files wait before they are deleted.
fn trash_dir() -> PathBuf {
    std::env::temp_dir().join("blobsync-bench-trash")
}

/// How long the trash keeps files: longer than ext4's inode "recentcy" (60 s, 360 s while
/// the inode table block is dirty).
const TRASH_AGE: Duration = Duration::from_secs(420);

/// Cleans up after the rows run so far, without slowing the next run. Deleting tens of
/// thousands of files would be measured in every run of the next few minutes: on ext4
/// without a journal (this build box), creating a file skips every inode of its group freed
/// in the last 60-360 s (`recently_deleted` in the inode allocator, a block lookup each), and
/// that dominated W5. So big files (few inodes) are deleted now, the rest is moved to a trash
/// dir and deleted by a run at least 7 minutes later.
pub fn remove_row_dirs() {
    let dirs = std::mem::take(&mut *ROW_DIRS.lock().unwrap_or_else(|p| p.into_inner()));
    let trash = trash_dir();
    let _ = std::fs::create_dir_all(&trash);
    for d in dirs {
        remove_big_files(&d);
        let name = d.file_name().map(|n| n.to_owned()).unwrap_or_default();
        if std::fs::rename(&d, trash.join(name)).is_err() {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

/// Deletes what earlier runs put in the trash more than 7 minutes ago (`TRASH_AGE`).
pub fn empty_old_trash() {
    let Ok(entries) = std::fs::read_dir(trash_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TRASH_AGE);
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn remove_big_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_big_files(&e.path()),
            Ok(t) if t.is_file() && e.metadata().is_ok_and(|m| m.len() >= 1 << 20) => {
                let _ = std::fs::remove_file(e.path());
            }
            _ => {}
        }
    }
}

/// Writes `count` files of `size` random bytes (stream from `seed`, per workload) into `dir`.
fn stage(
    dir: &Path,
    name: &str,
    count: usize,
    size: u64,
    seed: u64,
) -> Result<Vec<Staged>, BenchError> {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_be_bytes());
    for (i, b) in name.bytes().enumerate().take(24) {
        seed_bytes[8 + i] = b;
    }
    let mut rng = rand::rngs::StdRng::from_seed(seed_bytes);
    let mut buf = vec![0u8; size.min(MIB) as usize];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("b{i:06}");
        let path = dir.join(&id);
        let f =
            std::fs::File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        let mut w = std::io::BufWriter::with_capacity(MIB as usize, f);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            ctx.update(&buf[..n]);
            w.write_all(&buf[..n])
                .map_err(io_err(format!("write {}", path.display())))?;
            left -= n as u64;
        }
        w.flush()
            .map_err(io_err(format!("write {}", path.display())))?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(ctx.finish().as_ref());
        out.push(Staged { id, path, sha256 });
    }
    Ok(out)
}

/// Measures the durable write rate of the disk under `dir`: `bytes` written in 1 MiB
/// writes, then one fsync (what `dd bs=1M conv=fsync` does).
pub fn disk_rate(dir: &Path, bytes: u64) -> Result<DiskResult, BenchError> {
    /// Runs taken; the median is the figure.
    const RUNS: usize = 3;
    let mut buf = vec![0u8; MIB as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let path = dir.join(format!("disk-rate-{run}.bin"));
        let start = Instant::now();
        let mut f = std::fs::File::create(&path).map_err(io_err("create disk test file"))?;
        let mut left = bytes;
        while left > 0 {
            rng.fill_bytes(&mut buf);
            let n = left.min(MIB) as usize;
            f.write_all(&buf[..n])
                .map_err(io_err("write disk test file"))?;
            left -= n as u64;
        }
        f.sync_all().map_err(io_err("fsync disk test file"))?;
        times.push(start.elapsed().as_secs_f64());
        drop(f);
        let _ = std::fs::remove_file(&path);
    }
    let runs_mb_s = times.iter().map(|t| bytes as f64 / 1e6 / t).collect();
    times.sort_by(f64::total_cmp);
    let seconds = times[RUNS / 2];
    Ok(DiskResult {
        bytes,
        seconds,
        mb_s: bytes as f64 / 1e6 / seconds,
        runs_mb_s,
    })
}

/// One server with one user, and its devices.
struct Rig {
    server: ServerProc,
    a: DaemonProc,
    b: Option<DaemonProc>,
    /// s3+postgres: the other nodes, then the engines (dropped after the nodes).
    _more_nodes: Vec<ServerProc>,
    _engines: Option<crate::engines::Engines>,
}

const USER: &str = "bench";

/// Starts the server, its user and device A (and B when `two`), both configured with
/// namespace `ns` (a daemon lists only `default`, configured namespaces and ones it holds).
fn start_rig(
    env: &TestEnv,
    two: bool,
    sync_interval: Option<u64>,
    ns: &str,
    nodes: usize,
) -> Result<Rig, BenchError> {
    // Quiet by default: per-request debug logging would be part of what is measured.
    // `BLOBSYNC_BENCH_LOG` sets another filter (e.g. `debug`) to see where time goes.
    let filter = std::env::var("BLOBSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let quiet = vec![("RUST_LOG".to_string(), filter)];
    let (engines, mut server_env) = if nodes > 0 {
        let e = crate::engines::Engines::start(&env.subdir("engines")?).map_err(|e| {
            BenchError::Harness(HarnessError::protocol("start PostgreSQL and Garage", e))
        })?;
        let v = e.server_env();
        (Some(e), v)
    } else {
        (None, Vec::new())
    };
    server_env.extend(quiet.clone());
    // Several nodes cannot share the default metrics port.
    let extra_args: Vec<String> = if nodes > 0 {
        vec!["--metrics-listen".into(), "none".into()]
    } else {
        Vec::new()
    };
    let node_opts = || ServerOpts {
        extra_args: extra_args.clone(),
        env: server_env.clone(),
    };
    let server = ServerProc::start(env, node_opts())?;
    let mut more_nodes = Vec::new();
    for _ in 1..nodes {
        more_nodes.push(ServerProc::start(env, node_opts())?);
    }
    let token = server.add_user(USER)?;
    let key_file = env.subdir("keys")?.join("bench.key");
    write_key_file(&key_file)?;
    let mut opts = DaemonOpts::new(
        RemoteSpec::Http {
            url: server.url(),
            user: USER.into(),
            token,
        },
        &key_file,
    );
    opts.sync_interval = sync_interval;
    opts.env = quiet;
    opts.extra_toml = format!("\n[namespaces.{ns}]\npolicy = \"eager\"\n");
    let a = DaemonProc::start(env, "daemon-a", opts.clone())?;
    if let (Some(last), RemoteSpec::Http { url, .. }) = (more_nodes.last(), &mut opts.remote) {
        *url = last.url();
    }
    let b = if two {
        Some(DaemonProc::start(env, "daemon-b", opts)?)
    } else {
        None
    };
    Ok(Rig {
        server,
        a,
        b,
        _more_nodes: more_nodes,
        _engines: engines,
    })
}

fn pid_of(d: &DaemonProc) -> Result<u32, BenchError> {
    d.pid()
        .ok_or_else(|| BenchError::Check(format!("{} is not running", d.name())))
}

fn server_pid(s: &ServerProc) -> Result<u32, BenchError> {
    let dir = s.data_dir().display().to_string();
    measure::pid_with_arg(&dir)
        .ok_or_else(|| BenchError::Check(format!("no single server process with {dir} found")))
}

/// SYNCED count of namespace `ns` in a Status answer.
async fn synced_in(client: &mut Client, ns: &str) -> Result<(u64, u64), BenchError> {
    let st = client.status(StatusRequest::default()).await?.into_inner();
    let mut synced = 0;
    let mut failed = 0;
    for n in st.namespaces.iter().filter(|n| n.namespace == ns) {
        for c in &n.counts {
            if c.status == BlobStatus::Synced as i32 {
                synced += c.count;
            } else if c.status == BlobStatus::FailedUpload as i32
                || c.status == BlobStatus::FailedDownload as i32
            {
                failed += c.count;
            }
        }
    }
    Ok((synced, failed))
}

/// Rows of namespace `ns` in a Status answer, whatever their status.
async fn rows_in(client: &mut Client, ns: &str) -> Result<u64, BenchError> {
    let st = client.status(StatusRequest::default()).await?.into_inner();
    Ok(st
        .namespaces
        .iter()
        .filter(|n| n.namespace == ns)
        .flat_map(|n| n.counts.iter())
        .map(|c| c.count)
        .sum())
}

/// Opens a Watch on `ns` that misses nothing from now on.
async fn watch(
    client: &mut Client,
    ns: &str,
) -> Result<Streaming<blobsync_proto::Event>, BenchError> {
    let st = client.status(StatusRequest::default()).await?.into_inner();
    let req = WatchRequest {
        since: Some(st.last_event_id),
        namespace: ns.into(),
        no_progress: true,
    };
    Ok(client.watch(req).await?.into_inner())
}

/// Waits until `n` blobs of `ns` are SYNCED, following `events`; falls back to polling
/// `Status` if the watcher missed events. Fails on a permanent failure or after `timeout`.
async fn wait_synced(
    client: &mut Client,
    events: &mut Streaming<blobsync_proto::Event>,
    ns: &str,
    n: usize,
    timeout: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen: HashSet<String> = HashSet::with_capacity(n);
    let mut polling = false;
    loop {
        if polling {
            let (synced, failed) = synced_in(client, ns).await?;
            if failed > 0 {
                return Err(BenchError::Check(format!(
                    "{what}: {failed} blobs failed permanently"
                )));
            }
            if synced as usize >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BenchError::Check(format!(
                    "{what}: {synced}/{n} SYNCED after {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let ev = match tokio::time::timeout_at(deadline, events.message()).await {
            Err(_) => {
                return Err(BenchError::Check(format!(
                    "{what}: {}/{n} SYNCED after {timeout:?}",
                    seen.len()
                )));
            }
            Ok(r) => r?,
        };
        let Some(ev) = ev else {
            polling = true;
            continue;
        };
        match ev.kind {
            Some(Kind::StatusChanged(sc)) if sc.namespace == ns => {
                if sc.new_status == BlobStatus::Synced as i32 {
                    seen.insert(sc.id);
                    if seen.len() >= n {
                        return Ok(());
                    }
                } else if sc.new_status == BlobStatus::FailedUpload as i32
                    || sc.new_status == BlobStatus::FailedDownload as i32
                {
                    return Err(BenchError::Check(format!(
                        "{what}: {} became {:?}: {}",
                        sc.id,
                        BlobStatus::try_from(sc.new_status),
                        sc.reason
                    )));
                }
            }
            Some(Kind::EventsMissed(_)) => polling = true,
            _ => {}
        }
    }
}

/// Puts every staged blob on `client` with `PutPath`, `concurrency` calls in flight.
async fn put_all(
    client: &Client,
    ns: &str,
    blobs: &[Staged],
    opts: &BenchOpts,
) -> Result<(), BenchError> {
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.put_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let item = |b: &Staged| PutPathRequest {
        header: Some(PutHeader {
            namespace: ns.into(),
            id: b.id.clone(),
            ..Default::default()
        }),
        path: b.path.display().to_string(),
    };
    for chunk in blobs.chunks(opts.put_batch.max(1)) {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut c = client.clone();
        let items: Vec<PutPathRequest> = chunk.iter().map(item).collect();
        let batch = opts.put_batch > 0;
        tasks.spawn(async move {
            let r = if batch {
                check_batch(c.put_paths(PutPathsRequest { items }).await?.into_inner())
            } else {
                let req = items.into_iter().next().expect("chunks are not empty");
                c.put_path(req).await.map(|_| ()).map_err(BenchError::from)
            };
            drop(permit);
            r
        });
        // Reap finished calls as we go so errors surface early and the set stays small.
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| BenchError::Check(format!("put task: {e}")))??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Check(format!("put task: {e}")))??;
    }
    Ok(())
}

/// Every item of a `PutPaths` answer was stored.
fn check_batch(r: blobsync_proto::PutPathsResponse) -> Result<(), BenchError> {
    for res in r.results {
        if let Some(blobsync_proto::put_path_result::Result::Error(e)) = res.result {
            return Err(BenchError::Check(format!(
                "PutPaths refused an item: {} ({})",
                e.message, e.code
            )));
        }
    }
    Ok(())
}

/// Reads every blob back from `client` and compares SHA-256; returns how many matched.
async fn verify_all(client: &mut Client, ns: &str, blobs: &[Staged]) -> Result<usize, BenchError> {
    for b in blobs {
        let mut s = client
            .get(GetRequest {
                namespace: ns.into(),
                id: b.id.clone(),
                range: None,
                wait: false,
            })
            .await?
            .into_inner();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(m) = s.message().await? {
            if let Some(get_response::Msg::Chunk(c)) = m.msg {
                ctx.update(&c);
            }
        }
        if ctx.finish().as_ref() != b.sha256 {
            return Err(BenchError::Check(format!(
                "{ns}/{}: content read back from B differs",
                b.id
            )));
        }
    }
    Ok(blobs.len())
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    // One thread: the client must take as little of the 2 cores as it can.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("start the tokio runtime"))
}

/// Runs one workload on a fresh server and two fresh daemons.
pub fn run_workload(opts: &BenchOpts, wl: &Workload) -> Result<WorkloadResult, BenchError> {
    let env = new_env(opts)?;
    let stage_dir = env.subdir("stage")?;
    eprintln!("[{}] staging {} x {} bytes", wl.name, wl.count, wl.size);
    let blobs = stage(&stage_dir, wl.name, wl.count, wl.size, opts.seed)?;
    let ns = wl.name.to_ascii_lowercase();
    let rig = start_rig(&env, true, Some(86_400), &ns, opts.scaleout_nodes)?;
    let b = rig.b.as_ref().expect("two devices were started");
    let pids = [pid_of(&rig.a)?, pid_of(b)?, server_pid(&rig.server)?];
    let rt = runtime()?;
    let (put_s, upload_s, download_s, verified, before, after) = rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        let mut cb = client::connect(b.socket()).await?;
        let mut ev_a = watch(&mut ca, &ns).await?;
        let before = Snapshot::take(&pids);
        eprintln!("[{}] upload", wl.name);
        let t0 = Instant::now();
        put_all(&ca, &ns, &blobs, opts).await?;
        let put_s = t0.elapsed().as_secs_f64();
        wait_synced(
            &mut ca,
            &mut ev_a,
            &ns,
            wl.count,
            opts.phase_timeout,
            "upload on A",
        )
        .await?;
        let upload_s = t0.elapsed().as_secs_f64();
        eprintln!("[{}] download", wl.name);
        // B must start from nothing (its interval is a day, but a stray cycle would have it
        // list or fetch during the upload and flatter the download figure).
        let held = rows_in(&mut cb, &ns).await?;
        if held != 0 {
            return Err(BenchError::Check(format!(
                "device B already holds {held} blob(s) of {ns} before the download clock starts"
            )));
        }
        let mut ev_b = watch(&mut cb, &ns).await?;
        let t1 = Instant::now();
        cb.sync(SyncRequest {
            wait: false,
            ..Default::default()
        })
        .await?;
        wait_synced(
            &mut cb,
            &mut ev_b,
            &ns,
            wl.count,
            opts.phase_timeout,
            "download on B",
        )
        .await?;
        let download_s = t1.elapsed().as_secs_f64();
        let after = Snapshot::take(&pids);
        let verified = if opts.verify {
            eprintln!("[{}] verifying (not timed)", wl.name);
            verify_all(&mut cb, &ns, &blobs).await?
        } else {
            0
        };
        Ok::<_, BenchError>((put_s, upload_s, download_s, verified, before, after))
    })?;
    let usage = measure::usage(&before, &after);
    let steal_pct = measure::steal_pct(&before, &after);
    let bytes = wl.count as f64 * wl.size as f64;
    Ok(WorkloadResult {
        name: wl.name.into(),
        count: wl.count,
        size: wl.size,
        put_s,
        upload_s,
        download_s,
        wall_s: upload_s + download_s,
        upload_mb_s: bytes / 1e6 / upload_s,
        download_mb_s: bytes / 1e6 / download_s,
        upload_blobs_s: wl.count as f64 / upload_s,
        download_blobs_s: wl.count as f64 / download_s,
        daemon_a: usage[0].clone(),
        daemon_b: usage[1].clone(),
        server: usage[2].clone(),
        verified,
        steal_pct,
        put_concurrency: opts.put_concurrency,
    })
}

/// Runs the IDLE row: fills daemon A with `idle_blobs` synced blobs, times no-change
/// cycles, measures CPU over the idle interval, then restarts A and times startup.
pub fn run_idle(opts: &BenchOpts) -> Result<IdleResult, BenchError> {
    let mut env = new_env(opts)?;
    let stage_dir = env.subdir("stage")?;
    let n = opts.idle_blobs;
    eprintln!("[IDLE] staging {n} x {} bytes", opts.idle_blob_size);
    let blobs = stage(&stage_dir, "IDLE", n, opts.idle_blob_size, opts.seed)?;
    // The daemon's default sync interval: the idle minute includes its periodic cycles.
    let ns = "idle";
    let mut rig = start_rig(&env, false, None, ns, opts.scaleout_nodes)?;
    let server_pid = server_pid(&rig.server)?;
    let rt = runtime()?;
    let first = Snapshot::take(&[pid_of(&rig.a)?, server_pid]);
    let r = rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        let mut ev = watch(&mut ca, ns).await?;
        eprintln!("[IDLE] populating");
        let t0 = Instant::now();
        put_all(&ca, ns, &blobs, opts).await?;
        wait_synced(
            &mut ca,
            &mut ev,
            ns,
            n,
            opts.phase_timeout,
            "IDLE populate on A",
        )
        .await?;
        let populate_s = t0.elapsed().as_secs_f64();
        drop(ev);
        // Let the upload's tail settle (a cycle may still be committing).
        ca.sync(SyncRequest {
            wait: true,
            ..Default::default()
        })
        .await?;
        eprintln!("[IDLE] {} no-change cycles", opts.idle_cycles);
        let pids = [pid_of(&rig.a)?, server_pid];
        let s0 = Snapshot::take(&pids);
        let mut ms = Vec::new();
        let mut full = Vec::new();
        for _ in 0..opts.idle_cycles {
            let t = Instant::now();
            let resp = ca
                .sync(SyncRequest {
                    wait: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            let s = resp.summary.unwrap_or_default();
            if s.uploaded + s.downloaded + s.deleted_local > 0 {
                return Err(BenchError::Check(format!(
                    "IDLE: a no-change cycle moved blobs: {s:?}"
                )));
            }
            full.push(s.full_list);
        }
        let s1 = Snapshot::take(&pids);
        let per_cycle = measure::usage(&s0, &s1);
        eprintln!("[IDLE] idle for {:?}", opts.idle);
        let i0 = Snapshot::take(&pids);
        tokio::time::sleep(opts.idle).await;
        let i1 = Snapshot::take(&pids);
        let idle = measure::usage(&i0, &i1);
        Ok::<_, BenchError>((populate_s, ms, full, per_cycle, idle))
    })?;
    let (populate_s, ms, full, per_cycle, idle) = r;
    let last = Snapshot::take(&[pid_of(&rig.a)?, server_pid]);
    let whole = measure::usage(&first, &last);
    let cycles = opts.idle_cycles.max(1) as f64;
    let idle_s = opts.idle.as_secs_f64();

    eprintln!("[IDLE] restart timing");
    rig.a.terminate(Duration::from_secs(30));
    let (startup_ms, startup_status_ms) = time_startup(&env, &mut rig.a)?;
    let (synced, _) = rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        synced_in(&mut ca, ns).await
    })?;
    if synced as usize != n {
        return Err(BenchError::Check(format!(
            "IDLE: after restart {synced}/{n} SYNCED"
        )));
    }
    let _ = &mut env;
    Ok(IdleResult {
        blobs: n,
        blob_size: opts.idle_blob_size,
        populate_s,
        nochange_cycle_median_ms: measure::median(&ms),
        nochange_cycle_ms: ms,
        nochange_full_list: full,
        server_cpu_ms_per_cycle: per_cycle[1].cpu_s * 1e3 / cycles,
        daemon_cpu_ms_per_cycle: per_cycle[0].cpu_s * 1e3 / cycles,
        idle_s,
        idle_daemon_cpu_s: idle[0].cpu_s,
        idle_daemon_cpu_pct: idle[0].cpu_s / idle_s * 100.0,
        idle_server_cpu_pct: idle[1].cpu_s / idle_s * 100.0,
        startup_ms,
        startup_status_ms,
        daemon: whole[0].clone(),
        server: whole[1].clone(),
    })
}

/// Restarts `d` and returns milliseconds until its socket accepts a connection, and until
/// a `Status` call answers. A thread polls every 0.5 ms while the harness restarts it.
fn time_startup(env: &TestEnv, d: &mut DaemonProc) -> Result<(f64, f64), BenchError> {
    let socket = d.socket().to_path_buf();
    let t0 = Instant::now();
    let poller = std::thread::spawn(move || -> Option<(f64, f64)> {
        let limit = Duration::from_secs(60);
        let accepted = loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break t0.elapsed().as_secs_f64() * 1e3;
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let rt = runtime().ok()?;
        let answered = rt.block_on(async {
            loop {
                if let Ok(mut c) = client::connect(&socket).await
                    && c.status(StatusRequest::default()).await.is_ok()
                {
                    return Some(t0.elapsed().as_secs_f64() * 1e3);
                }
                if t0.elapsed() > limit {
                    return None;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })?;
        Some((accepted, answered))
    });
    d.restart(env)?;
    poller
        .join()
        .map_err(|_| BenchError::Check("startup poller panicked".into()))?
        .ok_or_else(|| BenchError::Check("daemon did not answer within 60 s of a restart".into()))
}

/// `uname -r` and the CPU count.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("linux {} / {cpus} cpus", kernel.trim())
}

/// The disk test in a fresh temp env (same file system as the workloads).
pub fn run_disk(opts: &BenchOpts) -> Result<DiskResult, BenchError> {
    let env = new_env(opts)?;
    disk_rate(env.root(), opts.disk_bytes)
}
