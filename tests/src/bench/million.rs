//! The million rows (issue 20): one user holding `million_blobs` blobs (default 1,000,000, a
//! mailbox of a few years) on a real `blobsync-server`.
//!
//! - Populate: the bench seals the blobs itself (blob format v1, with the user's key, so a
//!   daemon accepts them) and uploads them over `/stream` in batches, as a device with a
//!   backlog would. Timed, for the record; it is not a target.
//! - `SRV-FULL`: one client asks for the full listing (ids, then `detail=1`, what a daemon's
//!   full listing asks for) and reads it to the last byte. The server's peak RSS is reset just
//!   before each listing (`/proc/PID/clear_refs`), so the figure is the listing's alone.
//! - `IDLE-1M`: a fresh daemon joins the user and downloads all of them (the device
//!   populate, timed), then: no-change cycles, a restart (spawn -> socket, first `Status`),
//!   `Status` on a warm connection, and the restarted daemon's RSS.

use std::net::{IpAddr, Ipv4Addr};

use blobsync_shared::codec::{DEFAULT_SEGMENT_EXP, Header, StorageKey, encrypt_to};
use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;

use super::idle::time_startup;
use super::server_load::{call_full, connect};
use super::*;

/// Blobs per `/stream` upload while populating (the server takes up to 100,000).
const POPULATE_BATCH: usize = 10_000;
/// The namespace the blobs live in.
const NS: &str = "m";

/// Figures of the million rows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MillionResult {
    /// Blobs the user holds.
    pub blobs: usize,
    /// Plaintext bytes per blob.
    pub blob_size: u64,
    /// Seconds to seal and upload them all over `/stream` (bench process + server).
    pub server_populate_s: f64,
    /// `SRV-FULL`, ids only: seconds to the last byte.
    pub full_list_ids_s: f64,
    /// Body bytes of that listing.
    pub full_list_ids_bytes: u64,
    /// The server's peak RSS during it, bytes.
    pub full_list_ids_server_rss_bytes: u64,
    /// `SRV-FULL`, `detail=1`: seconds to the last byte.
    pub full_list_detail_s: f64,
    /// Body bytes of that listing.
    pub full_list_detail_bytes: u64,
    /// The server's peak RSS during it, bytes.
    pub full_list_detail_server_rss_bytes: u64,
    /// `IDLE-1M` (None when only SRV-FULL ran).
    pub device: Option<MillionDevice>,
}

/// The `IDLE-1M` figures of the daemon holding every blob.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MillionDevice {
    /// Seconds from the daemon's start until every blob is SYNCED on it (downloaded,
    /// verified, stored).
    pub populate_s: f64,
    /// Forced no-change cycles, each until its answer, ms.
    pub nochange_cycle_ms: Vec<f64>,
    /// Their median, ms.
    pub nochange_cycle_median_ms: f64,
    /// Restart: spawn -> the socket accepts, ms.
    pub startup_ms: f64,
    /// Restart: spawn -> the first `Status` answered, ms.
    pub startup_status_ms: f64,
    /// The first `Status` alone (answered minus accepted), ms.
    pub first_status_ms: f64,
    /// `Status` on a warm connection, median of 20, ms.
    pub status_median_ms: f64,
    /// The restarted daemon's peak RSS (startup, `Status`, the cycles), bytes.
    pub daemon_peak_rss_bytes: u64,
    /// Its RSS at the end, bytes.
    pub daemon_rss_bytes: u64,
    /// Size of its data dir (store, payloads), bytes as `du` counts them.
    pub data_dir_bytes: u64,
}

/// Blob `i`'s id: [`super::staging::spread_id`].
fn blob_id(i: usize) -> BlobId {
    BlobId::new(super::staging::spread_id(i)).expect("hex digits are a valid id")
}

/// Seals blobs `range` of the populate: plaintext is the index and a fixed pattern (the
/// content does not matter to a listing or an idle daemon, only that it authenticates).
fn seal_batch(
    key: &StorageKey,
    ns: &Namespace,
    range: std::ops::Range<usize>,
    size: u64,
) -> Result<Bytes, BenchError> {
    let mut entries = Vec::with_capacity(range.len());
    let mut body = Vec::new();
    let mut plain = vec![0x5au8; size as usize];
    for i in range {
        let id = blob_id(i);
        let n = plain.len().min(8);
        plain[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
        let header = Header::new(ns.clone(), id.clone(), size, DEFAULT_SEGMENT_EXP)
            .map_err(|e| BenchError::Check(format!("blob header: {e}")))?;
        let before = body.len();
        encrypt_to(key, header, &plain[..], &mut body)
            .map_err(|e| BenchError::Check(format!("seal: {e}")))?;
        entries.push((id, (body.len() - before) as u64));
    }
    let mut out = blobsync_shared::wire::encode_upload_header(&entries);
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS.
fn reset_peak_rss(pid: u32) -> Result<(), BenchError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").map_err(io_err(format!(
        "reset the peak RSS of {pid} (needs to own it)"
    )))
}

fn rss_of(pid: u32) -> Result<(u64, u64), BenchError> {
    crate::proc_memory(pid).ok_or_else(|| BenchError::Check(format!("no /proc/{pid}/status")))
}

/// Bytes under `dir` as `du` counts them (allocated blocks).
fn du_bytes(dir: &Path) -> u64 {
    std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Runs the populate and `SRV-FULL`, and with `device` also `IDLE-1M`.
pub fn run_million(opts: &BenchOpts, device: bool) -> Result<MillionResult, BenchError> {
    let env = new_env(opts)?;
    let quiet = vec![(
        "RUST_LOG".to_string(),
        std::env::var("BLOBSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    )];
    let server = ServerProc::start(
        &env,
        ServerOpts {
            env: quiet.clone(),
            ..Default::default()
        },
    )?;
    let spid = server_pid(&server)?;
    let token = server.add_user(USER)?;
    let key_file = env.subdir("keys")?.join("bench.key");
    let key = blobsync_shared::keyfile::generate_key_file(&key_file)
        .map_err(|e| BenchError::Check(format!("key file: {e}")))?;
    let n = opts.million_blobs;
    let size = opts.idle_blob_size;
    let ns = Namespace::new(NS).expect("a valid namespace");
    let rt = runtime()?;
    let mut r = MillionResult {
        blobs: n,
        blob_size: size,
        ..Default::default()
    };
    rt.block_on(async {
        let mut send = connect(server.addr(), IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
        eprintln!("[SRV-FULL] populating {n} x {size} bytes over /stream");
        let t0 = Instant::now();
        let uri = format!("/stream/{USER}?namespace={NS}&direction=upload");
        let mut next = 0;
        while next < n {
            let end = (next + POPULATE_BATCH).min(n);
            let body = seal_batch(&key, &ns, next..end, size)?;
            let (status, answer) = call_full(&mut send, "POST", &uri, &token, body).await?;
            let codes: std::collections::BTreeMap<String, u16> = serde_json::from_slice(&answer)
                .map_err(|e| BenchError::Check(format!("populate: answer {status}: {e}")))?;
            if status != 200 || codes.len() != end - next || codes.values().any(|c| *c != 201) {
                return Err(BenchError::Check(format!(
                    "populate: /stream answered {status} with {} codes, not all 201 (created)",
                    codes.len()
                )));
            }
            next = end;
            if next % 100_000 == 0 {
                eprintln!(
                    "[SRV-FULL] {next} stored, {:.0} s",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        r.server_populate_s = t0.elapsed().as_secs_f64();
        for detail in [false, true] {
            let uri = format!(
                "/blobs/{USER}?namespace={NS}{}",
                if detail { "&detail=1" } else { "" }
            );
            reset_peak_rss(spid)?;
            let t = Instant::now();
            let (status, body) = call_full(&mut send, "GET", &uri, &token, Bytes::new()).await?;
            let secs = t.elapsed().as_secs_f64();
            let rss = rss_of(spid)?.0;
            // Out of the clock: the listing holds every blob, once.
            let entries: Vec<serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|e| BenchError::Check(format!("full listing: {e}")))?;
            if status != 200 || entries.len() != n {
                return Err(BenchError::Check(format!(
                    "full listing: {status} with {} entries, expected {n}",
                    entries.len()
                )));
            }
            eprintln!(
                "[SRV-FULL] detail={detail}: {secs:.3} s to the last byte, {} MiB, server peak RSS {} MiB",
                body.len() >> 20,
                rss >> 20
            );
            if detail {
                r.full_list_detail_s = secs;
                r.full_list_detail_bytes = body.len() as u64;
                r.full_list_detail_server_rss_bytes = rss;
            } else {
                r.full_list_ids_s = secs;
                r.full_list_ids_bytes = body.len() as u64;
                r.full_list_ids_server_rss_bytes = rss;
            }
        }
        Ok::<_, BenchError>(())
    })?;
    if device {
        r.device = Some(run_device(&env, &server, token, &key_file, opts, &rt)?);
    }
    Ok(r)
}

/// `IDLE-1M`: a daemon joins, downloads everything, then idles.
fn run_device(
    env: &TestEnv,
    server: &ServerProc,
    token: String,
    key_file: &Path,
    opts: &BenchOpts,
    rt: &tokio::runtime::Runtime,
) -> Result<MillionDevice, BenchError> {
    let n = opts.million_blobs as u64;
    let mut dopts = DaemonOpts::new(
        RemoteSpec::Http {
            url: server.url(),
            user: USER.into(),
            token,
        },
        key_file,
    );
    dopts.env = vec![(
        "RUST_LOG".to_string(),
        std::env::var("BLOBSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    )];
    dopts.extra_toml = format!("\n[namespaces.{NS}]\npolicy = \"eager\"\n");
    eprintln!("[IDLE-1M] a new device downloads {n} blobs");
    let t0 = Instant::now();
    let mut d = DaemonProc::start(env, "daemon-1m", dopts)?;
    let mut m = MillionDevice::default();
    rt.block_on(async {
        let mut c = client::connect(d.socket()).await?;
        let mut last_report = Instant::now();
        loop {
            let (synced, failed) = synced_in(&mut c, NS).await?;
            if synced == n {
                break;
            }
            if failed > 0 {
                return Err(BenchError::Check(format!(
                    "IDLE-1M: {failed} blobs failed to download"
                )));
            }
            if t0.elapsed() > opts.phase_timeout {
                return Err(BenchError::Check(format!(
                    "IDLE-1M: {synced}/{n} SYNCED after {:?}",
                    opts.phase_timeout
                )));
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "[IDLE-1M] {synced} synced, {:.0} s",
                    t0.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        m.populate_s = t0.elapsed().as_secs_f64();
        Ok::<_, BenchError>(())
    })?;
    eprintln!("[IDLE-1M] populated in {:.1} s; restart", m.populate_s);
    d.terminate(Duration::from_secs(60));
    let (accepted, answered) = time_startup(env, &mut d)?;
    m.startup_ms = accepted;
    m.startup_status_ms = answered;
    m.first_status_ms = answered - accepted;
    let pid = pid_of(&d)?;
    rt.block_on(async {
        let mut c = client::connect(d.socket()).await?;
        let mut st = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            c.status(StatusRequest::default()).await?;
            st.push(t.elapsed().as_secs_f64() * 1e3);
        }
        m.status_median_ms = measure::median(&st);
        (m.nochange_cycle_ms, _) =
            super::idle::time_nochange_cycles(&mut c, opts.idle_cycles, "IDLE-1M").await?;
        m.nochange_cycle_median_ms = measure::median(&m.nochange_cycle_ms);
        let (synced, _) = synced_in(&mut c, NS).await?;
        if synced != n {
            return Err(BenchError::Check(format!(
                "IDLE-1M: after restart {synced}/{n} SYNCED"
            )));
        }
        Ok::<_, BenchError>(())
    })?;
    (m.daemon_peak_rss_bytes, m.daemon_rss_bytes) = rss_of(pid)?;
    m.data_dir_bytes = du_bytes(d.data_dir());
    eprintln!(
        "[IDLE-1M] cycle median {:.1} ms, spawn->socket {:.1} ms, first Status {:.1} ms, warm Status {:.2} ms, RSS peak {} MiB",
        m.nochange_cycle_median_ms,
        m.startup_ms,
        m.first_status_ms,
        m.status_median_ms,
        m.daemon_peak_rss_bytes >> 20
    );
    Ok(m)
}
