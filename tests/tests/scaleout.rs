//! Scale-out: three `blobsync-server` processes on one Garage bucket and one PostgreSQL
//! database (the `s3+postgres` backend), with real daemons.
//!
//! - Two daemons on different nodes and a third through a round-robin proxy whose
//!   connections are cut after every put and every convergence poll (so its requests hop
//!   between nodes) converge, byte for byte.
//! - A node killed with SIGKILL in the middle of an upload (a PUT, a `/stream` batch) or of a
//!   `/stream` download loses nothing and publishes nothing half-written: the daemon's retry
//!   lands on another node, and a fresh device reads the blobs back intact; fsck then finds
//!   nothing missing or wrong.
//! - Ten writers spread over the three nodes on one user get unique sequence numbers
//!   (exactly 1..=N), and a reader following the `since` feed, hopping between nodes, sees
//!   every change with cursors that only grow.
//!
//! The engines come from `blobsync_tests::engines` (`.ci/run` installs them; without them the
//! tests skip loudly, and fail under `CI`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blobsync_tests::converge::wait_all_synced;
use blobsync_tests::daemon::{DaemonOpts, RemoteSpec, write_key_file};
use blobsync_tests::digest::{sha256_file, write_random_file};
use blobsync_tests::engines::{self, Engines};
use blobsync_tests::env::TestResult;
use blobsync_tests::proxy::{Direction, Proxy};
use blobsync_tests::{DaemonProc, ServerOpts, ServerProc, TestEnv, rawhttp};

/// Three nodes on one set of engines, and user alice.
struct Deployment {
    nodes: Vec<ServerProc>,
    metrics: Vec<SocketAddr>,
    token: String,
    key_file: std::path::PathBuf,
    // Dropped last: the nodes stop before their database and bucket.
    _engines: Engines,
}

fn deploy(env: &TestEnv) -> blobsync_tests::Result<Deployment> {
    let dir = env.subdir("engines")?;
    let engines = Engines::start(&dir)
        .map_err(|e| blobsync_tests::HarnessError::protocol("start PostgreSQL and Garage", e))?;
    let mut nodes = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..3 {
        let m: SocketAddr = format!("127.0.0.1:{}", engines::free_port())
            .parse()
            .expect("an address");
        let opts = ServerOpts {
            extra_args: vec!["--metrics-listen".into(), m.to_string()],
            env: engines.server_env(),
        };
        nodes.push(ServerProc::start(env, opts)?);
        metrics.push(m);
    }
    let token = nodes[0].add_user("alice")?;
    let key_file = env.subdir("keys")?.join("alice.key");
    write_key_file(&key_file)?;
    Ok(Deployment {
        nodes,
        metrics,
        token,
        key_file,
        _engines: engines,
    })
}

impl Deployment {
    fn device(&self, env: &TestEnv, name: &str, url: &str) -> blobsync_tests::Result<DaemonProc> {
        let mut o = DaemonOpts::new(
            RemoteSpec::Http {
                url: url.to_string(),
                user: "alice".into(),
                token: self.token.clone(),
            },
            &self.key_file,
        );
        o.time_scale = Some(blobsync_tests::cluster::time_scale());
        DaemonProc::start(env, name, o)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// A node's `blobsync_bytes_received_total`.
    fn bytes_in(&self, node: usize) -> u64 {
        self.counter(node, "blobsync_bytes_received_total")
    }

    /// A node's `blobsync_bytes_sent_total`.
    fn bytes_out(&self, node: usize) -> u64 {
        self.counter(node, "blobsync_bytes_sent_total")
    }

    /// A counter from a node's `/metrics`; 0 when the node is gone.
    fn counter(&self, node: usize, name: &str) -> u64 {
        let r = rawhttp::request(self.metrics[node], "GET", "/metrics", &[], b"");
        r.ok()
            .and_then(|r| {
                r.text()
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().last()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits until one of `nodes` has moved more than `bytes` (by `f`) and returns it.
    fn busy_node(&self, nodes: &[usize], bytes: u64, f: impl Fn(&Self, usize) -> u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(&n) = nodes.iter().find(|&&n| f(self, n) > bytes) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no node moved {bytes} bytes in 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn skip(name: &str) -> bool {
    !engines::available(name)
}

/// Puts a random file of `size` bytes as `id` on `dev`; returns its SHA-256.
fn put(dev: &DaemonProc, id: &str, size: u64, seed: u64) -> blobsync_tests::Result<String> {
    let file = dev.dir().join(format!("src-{id}"));
    let sha = write_random_file(&file, size, seed)?;
    dev.ctl().put(&file, id, &[])?;
    Ok(sha)
}

/// Reads `id` back through `dev` and returns its SHA-256.
fn read_back(dev: &DaemonProc, id: &str) -> blobsync_tests::Result<String> {
    let out = dev.dir().join(format!("got-{id}"));
    dev.ctl().get_to(id, "default", &out)?;
    sha256_file(&out)
}

#[test]
fn daemons_on_different_nodes_and_through_a_round_robin_proxy_converge() -> TestResult {
    if skip("scaleout::converge") {
        return Ok(());
    }
    let env = TestEnv::new()?;
    let d = deploy(&env)?;
    let proxy = Proxy::start_many(d.addrs()).expect("start the proxy");
    let a = d.device(&env, "device-a", &d.nodes[0].url())?;
    let b = d.device(&env, "device-b", &d.nodes[1].url())?;
    let c = d.device(&env, "device-c", &proxy.url())?;
    // The proxy's connections are cut after every put and every convergence poll: each new
    // one goes to the next node.
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    for (k, dev) in [&a, &b, &c].into_iter().enumerate() {
        for i in 0..4u64 {
            let id = format!("d{k}-{i}");
            let size = if i == 3 { 3 << 20 } else { 1000 * (i + 1) };
            model.insert(id.clone(), put(dev, &id, size, 100 * k as u64 + i)?);
            proxy.kill_connections();
        }
    }
    let want: BTreeSet<(String, String)> = model
        .keys()
        .map(|id| ("default".to_string(), id.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut synced = None;
    while Instant::now() < deadline {
        proxy.kill_connections();
        match wait_all_synced(&[&a, &b, &c], Some(&want), Duration::from_secs(3)) {
            Ok(rows) => {
                synced = Some(rows);
                break;
            }
            Err(_) => continue,
        }
    }
    if synced.is_none() {
        wait_all_synced(&[&a, &b, &c], Some(&want), Duration::from_secs(10))?;
    }
    assert!(
        proxy.connections() >= 3,
        "the proxy made {} connections; requests did not hop between nodes",
        proxy.connections()
    );
    for (id, sha) in &model {
        for dev in [&a, &b, &c] {
            assert_eq!(&read_back(dev, id)?, sha, "{id} on {}", dev.name());
        }
    }
    Ok(())
}

#[test]
fn kill_9_of_a_node_mid_upload_loses_nothing_and_the_retry_lands_elsewhere() -> TestResult {
    if skip("scaleout::kill_9") {
        return Ok(());
    }
    let env = TestEnv::new()?;
    let mut d = deploy(&env)?;
    let proxy = Proxy::start_many(d.addrs()).expect("start the proxy");
    let dev = d.device(&env, "device-a", &proxy.url())?;
    // Slow uploads down so one is surely in flight when a node dies.
    proxy.throttle(Direction::Up, Some(2 << 20));
    let size = 8u64 << 20;
    let sha = put(&dev, "big", size, 7)?;
    // Find the node receiving it and kill it once a good part has arrived.
    let victim = d.busy_node(&[0, 1, 2], 2 << 20, Deployment::bytes_in);
    d.nodes[victim].kill9();
    proxy.throttle(Direction::Up, None);
    // The retry goes to a live node; the blob ends up SYNCED.
    let want: BTreeSet<(String, String)> = [("default".to_string(), "big".to_string())].into();
    wait_all_synced(&[&dev], Some(&want), Duration::from_secs(90))?;
    let other = (0..3).find(|&n| n != victim).expect("two nodes live");
    let received: u64 = (0..3).filter(|&n| n != victim).map(|n| d.bytes_in(n)).sum();
    assert!(
        received >= size,
        "the live nodes received {received} bytes; the retry did not land on them"
    );
    // A fresh device on a surviving node reads it back intact.
    let fresh = d.device(&env, "device-b", &d.nodes[other].url())?;
    wait_all_synced(&[&fresh], Some(&want), Duration::from_secs(60))?;
    assert_eq!(read_back(&fresh, "big")?, sha);
    // Nothing half-published: exactly one live row, its object complete; fsck (orphans of
    // the cut-off upload removed) is clean.
    let out = d.nodes[other].admin(&["fsck", "--repair", "--min-age-secs", "0"])?;
    assert!(out.contains("clean"), "fsck: {out}");
    assert!(
        !out.contains("MISSING") && !out.contains("WRONG SIZE"),
        "{out}"
    );
    Ok(())
}

#[test]
fn ten_writers_across_three_nodes_get_unique_sequence_numbers_and_complete_feeds() -> TestResult {
    if skip("scaleout::ten_writers") {
        return Ok(());
    }
    let env = TestEnv::new()?;
    let d = deploy(&env)?;
    let addrs = d.addrs();
    let auth = format!("Bearer {}", d.token);
    const WRITERS: usize = 10;
    const EACH: usize = 30;
    let done = Arc::new(AtomicBool::new(false));
    // The reader follows `since` from a different node each time; cursors must only grow
    // and every change must show up.
    let reader = {
        let (addrs, auth, done) = (addrs.clone(), auth.clone(), done.clone());
        std::thread::spawn(move || -> Result<BTreeMap<String, u64>, String> {
            let mut cursor = 0u64;
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut k = 0usize;
            loop {
                let last = done.load(Ordering::SeqCst);
                let r = rawhttp::request(
                    addrs[k % addrs.len()],
                    "GET",
                    &format!("/blobs/alice?since={cursor}&detail=1"),
                    &[("Authorization", auth.as_str())],
                    b"",
                )
                .map_err(|e| e.to_string())?;
                k += 1;
                let v = r.json().ok_or_else(|| format!("not JSON: {}", r.text()))?;
                let seq = v["seq"].as_u64().ok_or("no seq")?;
                if seq < cursor {
                    return Err(format!("cursor went back from {cursor} to {seq}"));
                }
                let mut prev = cursor;
                for c in v["changes"].as_array().ok_or("no changes")? {
                    let s = c["seq"].as_u64().ok_or("no change seq")?;
                    if s <= prev || s > seq {
                        return Err(format!(
                            "change seq {s} out of order (after {prev}, upto {seq})"
                        ));
                    }
                    prev = s;
                    seen.insert(c["id"].as_str().unwrap_or("").to_owned(), s);
                }
                cursor = seq;
                if last {
                    return Ok(seen);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (addr, auth) = (addrs[w % addrs.len()], auth.clone());
            std::thread::spawn(move || -> Result<Vec<(String, u64)>, String> {
                let mut out = Vec::new();
                for i in 0..EACH {
                    let id = format!("w{w}-{i}");
                    let r = rawhttp::request(
                        addr,
                        "PUT",
                        &format!("/blobs/alice/{id}"),
                        &[("Authorization", auth.as_str())],
                        format!("payload of {id}").as_bytes(),
                    )
                    .map_err(|e| e.to_string())?;
                    if r.status != 201 {
                        return Err(format!("PUT {id}: {} {}", r.status, r.text()));
                    }
                    let seq = r
                        .header("x-blobsync-seq")
                        .and_then(|s| s.parse().ok())
                        .ok_or("no x-blobsync-seq")?;
                    out.push((id, seq));
                }
                Ok(out)
            })
        })
        .collect();
    let mut all: Vec<(String, u64)> = Vec::new();
    for w in writers {
        let mut got = w
            .join()
            .expect("writer thread")
            .unwrap_or_else(|e| panic!("writer: {e}"));
        // Each writer's own puts are sequential: its numbers grow.
        assert!(got.windows(2).all(|p| p[0].1 < p[1].1), "{got:?}");
        all.append(&mut got);
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader
        .join()
        .expect("reader thread")
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let n = (WRITERS * EACH) as u64;
    let seqs: BTreeSet<u64> = all.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len() as u64, n, "sequence numbers repeat");
    assert_eq!(seqs, (1..=n).collect(), "sequence numbers have gaps");
    let ids: BTreeMap<String, u64> = all.into_iter().collect();
    assert_eq!(seen, ids, "the since feed missed or misnumbered changes");
    // Every node lists the same.
    for addr in &addrs {
        let r = rawhttp::request(
            *addr,
            "GET",
            "/blobs/alice?only_count=1",
            &[("Authorization", auth.as_str())],
            b"",
        )?;
        assert_eq!(r.json().and_then(|v| v["count"].as_u64()), Some(n));
    }
    Ok(())
}

#[test]
fn kill_9_of_nodes_mid_stream_up_and_down_loses_nothing() -> TestResult {
    if skip("scaleout::kill_9_stream") {
        return Ok(());
    }
    let env = TestEnv::new()?;
    let mut d = deploy(&env)?;
    let proxy = Proxy::start_many(d.addrs()).expect("start the proxy");
    // Many small blobs: the daemons move them in /stream batches.
    let a = d.device(&env, "device-a", &proxy.url())?;
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    proxy.throttle(Direction::Up, Some(512 << 10));
    for i in 0..60u64 {
        let id = format!("s{i}");
        model.insert(id.clone(), put(&a, &id, 40_000 + i, 1000 + i)?);
    }
    let up_victim = d.busy_node(&[0, 1, 2], 600 << 10, Deployment::bytes_in);
    d.nodes[up_victim].kill9();
    proxy.throttle(Direction::Up, None);
    let want: BTreeSet<(String, String)> = model
        .keys()
        .map(|id| ("default".to_string(), id.clone()))
        .collect();
    wait_all_synced(&[&a], Some(&want), Duration::from_secs(90))?;
    // Downloads through the proxy too, slowed, and the sending node killed mid-stream.
    let live: Vec<usize> = (0..3).filter(|&n| n != up_victim).collect();
    let before: Vec<u64> = (0..3).map(|n| d.bytes_out(n)).collect();
    proxy.throttle(Direction::Down, Some(512 << 10));
    let b = d.device(&env, "device-b", &proxy.url())?;
    let down_victim = d.busy_node(&live, 600 << 10, |d, n| {
        d.bytes_out(n).saturating_sub(before[n])
    });
    d.nodes[down_victim].kill9();
    proxy.throttle(Direction::Down, None);
    wait_all_synced(&[&a, &b], Some(&want), Duration::from_secs(90))?;
    for (id, sha) in &model {
        assert_eq!(&read_back(&b, id)?, sha, "{id} on device-b");
    }
    let last = (0..3)
        .find(|&n| n != up_victim && n != down_victim)
        .expect("one node left");
    assert!(
        d.counter(
            last,
            "blobsync_requests_total{route=\"stream\",code=\"200\"}"
        ) > 0,
        "the daemons did not use /stream (the scenario needs batches)"
    );
    let out = d.nodes[last].admin(&["fsck", "--repair", "--min-age-secs", "0"])?;
    assert!(
        !out.contains("MISSING") && !out.contains("WRONG SIZE"),
        "fsck: {out}"
    );
    Ok(())
}
