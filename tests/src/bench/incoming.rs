//! The INCOMING row: the Soledad pipeline's own workload. An app (the MX) delivers 1,000
//! messages of 10 KiB, each age-encrypted to the user's incoming recipient, to `/incoming`
//! (16 requests in flight); both devices decrypt and adopt them (one device's adoption wins,
//! the other takes its copy). Timed from the first delivery until both devices hold every
//! message SYNCED. Encryption happens before the clock starts (an MX encrypts as mail
//! arrives); the server's copies are checked afterwards: format v1, no age file left.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use blobsync_proto::{GetIncomingRecipientRequest, SyncRequest};
use serde::Serialize;

use super::measure::{self, Snapshot};
use super::{
    BenchError, BenchOpts, ProcUsage, client, new_env, pid_of, runtime, server_pid, start_rig,
    wait_synced, watch,
};

const NS: &str = "MX";
/// Messages delivered.
pub const MESSAGES: usize = 1000;
/// Plaintext bytes per message.
pub const MESSAGE_SIZE: usize = 10 * 1024;
const IN_FLIGHT: usize = 16;

/// Figures of the INCOMING row.
#[derive(Clone, Debug, Serialize)]
pub struct IncomingResult {
    /// Messages.
    pub count: usize,
    /// Plaintext bytes per message.
    pub size: usize,
    /// Seconds to deliver every message (all 201).
    pub deliver_s: f64,
    /// Seconds from the first delivery until both devices hold every message SYNCED.
    pub wall_s: f64,
    /// Messages per second over `wall_s`.
    pub messages_s: f64,
    /// Daemon A.
    pub daemon_a: ProcUsage,
    /// Daemon B.
    pub daemon_b: ProcUsage,
    /// The server.
    pub server: ProcUsage,
}

fn encrypt(recipient: &str, plain: &[u8]) -> Result<Vec<u8>, BenchError> {
    let bad = |e: String| BenchError::Check(format!("age encryption: {e}"));
    let r = age::x25519::Recipient::from_str(recipient).map_err(|e| bad(e.to_string()))?;
    let e = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = e.wrap_output(&mut out).map_err(|e| bad(e.to_string()))?;
    w.write_all(plain).map_err(|e| bad(e.to_string()))?;
    w.finish().map_err(|e| bad(e.to_string()))?;
    Ok(out)
}

/// Runs the INCOMING row on a fresh server and two fresh daemons.
pub fn run_incoming(opts: &BenchOpts) -> Result<IncomingResult, BenchError> {
    let env = new_env(opts)?;
    // `MX` is an incoming namespace by default, and always listed.
    let rig = start_rig(&env, true, Some(86_400), "default", opts.scaleout_nodes)?;
    let app = rig.server.add_app("mx")?;
    let b = rig.b.as_ref().expect("two devices were started");
    let pids = [pid_of(&rig.a)?, pid_of(b)?, server_pid(&rig.server)?];
    let rt = runtime()?;
    rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        let mut cb = client::connect(b.socket()).await?;
        let recipient = ca
            .get_incoming_recipient(GetIncomingRecipientRequest {})
            .await?
            .into_inner()
            .recipient;
        eprintln!("[INCOMING] encrypting {MESSAGES} x {MESSAGE_SIZE} bytes (not timed)");
        let mut files = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            let mut plain = format!("Subject: message {i}\r\n\r\n").into_bytes();
            plain.resize(MESSAGE_SIZE, b'a' + (i % 26) as u8);
            files.push(encrypt(&recipient, &plain)?);
        }
        // The recipient must be published before the app can read it; the devices' first
        // cycle did that (it is fetched here as an app would, and must match).
        let r = rig
            .server
            .request(&app, "GET", "/keys/bench/incoming", b"")?;
        if r.text().trim() != recipient {
            return Err(BenchError::Check(format!(
                "published recipient {:?} is not the daemon's {recipient:?}",
                r.text()
            )));
        }
        let mut ev_a = watch(&mut ca, NS).await?;
        let mut ev_b = watch(&mut cb, NS).await?;
        let before = Snapshot::take(&pids);
        eprintln!("[INCOMING] delivering and adopting");
        let t0 = Instant::now();
        let next = AtomicUsize::new(0);
        let failures: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..IN_FLIGHT)
                .map(|_| {
                    s.spawn(|| {
                        let mut errs = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let Some(f) = files.get(i) else { break };
                            let path = format!("/incoming/bench/m{i:05}?namespace={NS}");
                            match rig.server.request(&app, "PUT", &path, f) {
                                Ok(r) if r.status == 201 => {}
                                Ok(r) => errs.push(format!("m{i}: {} {}", r.status, r.text())),
                                Err(e) => errs.push(format!("m{i}: {e}")),
                            }
                        }
                        errs
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|_| vec!["worker panicked".into()]))
                .collect()
        });
        if let Some(f) = failures.first() {
            return Err(BenchError::Check(format!(
                "{} deliveries failed, first: {f}",
                failures.len()
            )));
        }
        let deliver_s = t0.elapsed().as_secs_f64();
        for c in [&mut ca, &mut cb] {
            c.sync(SyncRequest {
                wait: false,
                ..Default::default()
            })
            .await?;
        }
        let timeout = opts.phase_timeout;
        let (ra, rb) = tokio::join!(
            wait_synced(&mut ca, &mut ev_a, NS, MESSAGES, timeout, "adoption on A"),
            wait_synced(&mut cb, &mut ev_b, NS, MESSAGES, timeout, "adoption on B"),
        );
        ra?;
        rb?;
        let wall_s = t0.elapsed().as_secs_f64();
        let after = Snapshot::take(&pids);
        // Not timed: the server must hold no age file any more.
        for i in 0..MESSAGES {
            let p = rig.server.blob_path("bench", NS, &format!("m{i:05}"));
            let head = std::fs::read(&p)
                .map_err(|e| BenchError::Check(format!("{}: {e}", p.display())))?;
            if head.starts_with(b"age-encryption.org/v1") {
                return Err(BenchError::Check(format!("m{i:05} was not adopted")));
            }
        }
        let usage = measure::usage(&before, &after);
        Ok(IncomingResult {
            count: MESSAGES,
            size: MESSAGE_SIZE,
            deliver_s,
            wall_s,
            messages_s: MESSAGES as f64 / wall_s,
            daemon_a: usage[0].clone(),
            daemon_b: usage[1].clone(),
            server: usage[2].clone(),
        })
    })
}
