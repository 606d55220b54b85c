//! Scenarios 2 and 3: kill -9 of a daemon and of the server in the middle of transfers.
//!
//! After each crash the process is restarted on the same data; the devices must converge to
//! the model with no blob lost, none duplicated and no temp file left after the next cycle.
//! The server's own `fsck` must find its index and payloads consistent at the end.
//! Rounds: 4 by default, 10 with `BLOBSYNC_TEST_FULL=1`. Slow: skipped with
//! `BLOBSYNC_SKIP_SLOW=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged};
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::proxy::{Direction, Proxy};
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{
    Cluster, DaemonProc, ServerOpts, TestEnv, full_size, skip_slow_test, test_seed,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn put_random(dev: &DaemonProc, id: &str, size: u64, seed: u64, model: &mut Model) -> TestResult {
    let file = dev.dir().join("put.src");
    let sha = write_random_file(&file, size, seed)?;
    dev.ctl().put(&file, id, &[])?;
    model.insert(("default".into(), id.into()), sha);
    Ok(())
}

/// The transfers `dev` reports in flight, as `id done/total`; with `early`, only those less
/// than half done (so a kill right after still lands inside them).
fn in_flight(dev: &DaemonProc, early: bool) -> blobsync_tests::Result<Vec<String>> {
    let status = dev.ctl().status()?;
    let transfers = status["transfers"].as_array().cloned().unwrap_or_default();
    Ok(transfers
        .iter()
        .filter_map(|t| {
            let done = t["bytes_done"].as_u64().unwrap_or(0);
            let total = t["bytes_total"].as_u64().unwrap_or(0);
            (!early || total == 0 || done < total / 2)
                .then(|| format!("{} {done}/{total}", t["id"].as_str().unwrap_or("?")))
        })
        .collect())
}

fn daemon_kill_rounds(seed: u64) -> TestResult {
    let rounds = if full_size() { 10 } else { 4 };
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    // Throttled proxies stretch each transfer over a second or so, so the random kill
    // points land inside uploads and downloads rather than after them.
    let proxies = [
        Proxy::start(cluster.server.addr()).expect("start proxy"),
        Proxy::start(cluster.server.addr()).expect("start proxy"),
    ];
    for p in &proxies {
        p.throttle(Direction::Up, Some(6 << 20));
        p.throttle(Direction::Down, Some(6 << 20));
    }
    let mut devices = [
        DaemonProc::start(
            &env,
            "device-a",
            cluster.daemon_opts_via(0, &proxies[0].url()),
        )?,
        DaemonProc::start(
            &env,
            "device-b",
            cluster.daemon_opts_via(0, &proxies[1].url()),
        )?,
    ];
    let mut model: Model = BTreeMap::new();
    let mut mid_transfer_kills = 0;
    for round in 0..rounds {
        // New uploads on one device, which the other will be downloading.
        let up = rng.gen_range(0..2);
        for k in 0..3 {
            // One blob a round is big enough (4 MiB and up) for the put's and the download's
            // helper threads, and every other round one (16 MiB and up) goes up while it is
            // put (an early upload), so kills land in those paths too.
            let size = match k {
                0 if round % 2 == 1 => rng.gen_range(16 << 20..18 << 20),
                0 => rng.gen_range(4 << 20..6 << 20),
                _ => rng.gen_range(64 * 1024..3 * 1024 * 1024),
            };
            put_random(
                &devices[up],
                &format!("r{round}-{k}"),
                size,
                rng.r#gen(),
                &mut model,
            )?;
        }
        if round > 0 && rng.gen_bool(0.3) {
            let i = rng.gen_range(0..model.len());
            let key = model.keys().nth(i).cloned().expect("index within len");
            if devices[up].ctl().rm(&key.1, &key.0)?.code == 0 {
                model.remove(&key);
            }
        }
        let victim = rng.gen_range(0..2);
        if round == 0 {
            // Aimed: wait until the victim moves bytes, so at least one kill lands inside a
            // transfer whatever the random timings below do. The downloader: its transfers
            // start after the uploads, so they cannot all be over before the first look.
            let victim = 1 - up;
            wait_until(
                "a transfer in flight on the victim",
                Duration::from_secs(60),
                || {
                    let t = in_flight(&devices[victim], true)?;
                    Ok(if t.is_empty() {
                        Poll::Pending("no transfer less than half done".into())
                    } else {
                        Poll::Ready(())
                    })
                },
            )?;
        } else {
            // A random point in the transfers: this sleep picks *when* to crash, it waits for
            // nothing.
            std::thread::sleep(Duration::from_millis(rng.gen_range(10..600)));
        }
        let victim = if round == 0 { 1 - up } else { victim };
        // What the victim had in flight just before the kill (a status call's distance away).
        let hit = in_flight(&devices[victim], false)?;
        if !hit.is_empty() {
            mid_transfer_kills += 1;
        }
        eprintln!(
            "round {round}: kill -9 {} mid-transfer: {hit:?} (through its proxy so far: {} B up, \
             {} B down)",
            devices[victim].name(),
            proxies[victim].bytes(Direction::Up),
            proxies[victim].bytes(Direction::Down)
        );
        devices[victim].kill9();
        devices[victim].restart(&env)?;
    }
    eprintln!("{mid_transfer_kills} of {rounds} kills landed inside a transfer");
    assert!(
        mid_transfer_kills >= 1,
        "no kill landed inside a transfer: the scenario tested restarts, not crashes"
    );
    let refs: Vec<&DaemonProc> = devices.iter().collect();
    assert_converged(
        &refs,
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(120),
    )?;
    let mut server = cluster.server;
    server.terminate(Duration::from_secs(10));
    let report = server.admin(&["fsck"])?;
    eprintln!("fsck: {report}");
    Ok(())
}

#[test]
fn daemon_killed_mid_transfer_converges_without_loss() {
    if skip_slow_test("daemon_killed_mid_transfer_converges_without_loss") {
        return;
    }
    let seed = test_seed("daemon_killed_mid_transfer_converges_without_loss");
    if let Err(e) = daemon_kill_rounds(seed) {
        panic!("failed with BLOBSYNC_TEST_SEED={seed} (set it to replay): {e}");
    }
}

/// Waits until `proxy` has forwarded `more` bytes in `dir` beyond `from`.
fn wait_bytes(
    proxy: &Proxy,
    dir: Direction,
    from: u64,
    more: u64,
    what: &str,
) -> blobsync_tests::Result<()> {
    wait_until(what, Duration::from_secs(60), || {
        let now = proxy.bytes(dir);
        Ok(if now >= from + more {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{} of {more} bytes", now.saturating_sub(from)))
        })
    })
}

fn server_kill(seed: u64) -> TestResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new()?;
    let mut cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    // Each device reaches the server through a throttled proxy, so transfers last long
    // enough to be caught in the middle; the proxy keeps its port across server restarts.
    let proxy_a = Proxy::start(cluster.server.addr()).expect("start proxy");
    let proxy_b = Proxy::start(cluster.server.addr()).expect("start proxy");
    proxy_a.throttle(Direction::Up, Some(4 << 20));
    proxy_b.throttle(Direction::Down, Some(4 << 20));
    let a = DaemonProc::start(&env, "device-a", cluster.daemon_opts_via(0, &proxy_a.url()))?;
    let b = DaemonProc::start(&env, "device-b", cluster.daemon_opts_via(0, &proxy_b.url()))?;
    let mut model: Model = BTreeMap::new();

    // Mid-upload: A uploads 4 x 2 MB; kill the server once 1 MB went up.
    let before = proxy_a.bytes(Direction::Up);
    for k in 0..4 {
        put_random(&a, &format!("up{k}"), 2 << 20, rng.r#gen(), &mut model)?;
    }
    wait_bytes(
        &proxy_a,
        Direction::Up,
        before,
        1 << 20,
        "1 MB of uploads through the proxy",
    )?;
    eprintln!("kill -9 server mid-upload");
    cluster.server.kill9();
    cluster.server.restart(&env)?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(120),
    )?;

    // Mid-download: A uploads more (fast), B downloads them through its slow proxy.
    let before = proxy_b.bytes(Direction::Down);
    for k in 0..4 {
        // The first is big enough for the download's hash thread, whose hash must go on
        // across the cut and the ranged resume.
        let size = if k == 0 { 5 << 20 } else { 2 << 20 };
        put_random(&a, &format!("down{k}"), size, rng.r#gen(), &mut model)?;
    }
    wait_bytes(
        &proxy_b,
        Direction::Down,
        before,
        1 << 20,
        "1 MB of downloads through the proxy",
    )?;
    eprintln!("kill -9 server mid-download");
    cluster.server.kill9();
    cluster.server.restart(&env)?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(120),
    )?;

    cluster.server.terminate(Duration::from_secs(10));
    let report = cluster.server.admin(&["fsck"])?;
    eprintln!("fsck: {report}");
    Ok(())
}

#[test]
fn server_killed_mid_upload_and_mid_download_converges() {
    if skip_slow_test("server_killed_mid_upload_and_mid_download_converges") {
        return;
    }
    let seed = test_seed("server_killed_mid_upload_and_mid_download_converges");
    if let Err(e) = server_kill(seed) {
        panic!("failed with BLOBSYNC_TEST_SEED={seed} (set it to replay): {e}");
    }
}
