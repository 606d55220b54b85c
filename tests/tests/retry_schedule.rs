//! Scenario 6: the server is unreachable for a while.
//!
//! Uploads fail while the proxy drops every connection; the gaps between consecutive failed
//! attempts must follow the seed's schedule 10, 20, 30, 40 s, here under a test time scale
//! (`BLOBSYNCD_TIME_SCALE`) so a "second" is 50 ms. Once the server is reachable again, the
//! queue drains and both devices converge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use blobsync_tests::converge::{Model, assert_converged, describe_rows};
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::proxy::Proxy;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{Cluster, DaemonProc, ServerOpts, TestEnv, skip_slow_test};

/// 1 daemon second = 50 ms: the schedule 10, 20, 30, 40 s becomes 0.5, 1, 1.5, 2 s.
const SCALE: f64 = 0.05;

#[test]
fn retries_follow_10_20_30_40_and_the_queue_drains_when_the_server_returns() -> TestResult {
    if skip_slow_test("retries_follow_10_20_30_40_and_the_queue_drains_when_the_server_returns") {
        return Ok(());
    }
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let proxy = Proxy::start(cluster.server.addr()).expect("start proxy");
    let mut opts = cluster.daemon_opts_via(0, &proxy.url());
    opts.time_scale = Some(SCALE);
    let a = DaemonProc::start(&env, "device-a", opts)?;
    proxy.set_reset(true);
    // Pooled keep-alive connections from the first cycle would bypass the reset.
    proxy.kill_connections();

    let mut model: Model = BTreeMap::new();
    let file = a.dir().join("put.src");
    for (i, id) in ["x1", "x2", "x3"].iter().enumerate() {
        let sha = write_random_file(&file, 10_000 + i as u64, i as u64)?;
        a.ctl().put(&file, id, &[])?;
        model.insert(("default".into(), id.to_string()), sha);
    }

    // Watch x1's attempt count. Each poll brackets the moment it saw: the count was observed
    // somewhere between the poll's start and end. An increment therefore happened after the
    // start of the last poll that saw the old count and before the end of the first poll
    // that saw the new one; gaps are checked against those brackets, so a slow or loaded
    // machine widens them instead of failing the test.
    struct Increment {
        attempts: u64,
        after: Instant,
        before: Instant,
    }
    let mut increments: Vec<Increment> = Vec::new();
    let mut last: Option<(u64, Instant)> = None; // (count, start of the poll that saw it)
    wait_until("5 failed attempts of x1", Duration::from_secs(30), || {
        let start = Instant::now();
        let rows = a.ctl().ls()?;
        let end = Instant::now();
        let Some(r) = rows.iter().find(|r| r.id == "x1") else {
            return Ok(Poll::Pending("x1 not listed".into()));
        };
        match last {
            Some((n, prev_start)) if n != r.attempts => increments.push(Increment {
                attempts: r.attempts,
                after: prev_start,
                before: end,
            }),
            _ => {}
        }
        last = Some((r.attempts, start));
        Ok(if r.attempts >= 5 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{:?}", r.raw))
        })
    })?;
    let rows = a.ctl().ls()?;
    for r in &rows {
        assert_eq!(
            r.status, "PENDING_UPLOAD",
            "a transport fault is not a failure: {:?}",
            r.raw
        );
        assert!(
            !r.last_error.is_empty(),
            "the last error must be visible: {:?}",
            r.raw
        );
    }
    // The gap between failures n and n+1 (n >= 1) should be 10 * n daemon seconds.
    let mut report = Vec::new();
    for w in increments.windows(2) {
        let (x, y) = (&w[0], &w[1]);
        let n = x.attempts;
        if n < 1 || y.attempts != n + 1 {
            continue; // the first attempt, or two failures between polls: no gap to bound
        }
        let want = Duration::from_secs_f64(10.0 * n.min(6) as f64 * SCALE);
        let lo = y.after.saturating_duration_since(x.before);
        let hi = y.before.duration_since(x.after);
        report.push(format!("{n}->{}: {lo:?}..{hi:?} (want {want:?})", n + 1));
        // Timer and scheduling slop inside the daemon.
        let slack = Duration::from_millis(60) + want.mul_f64(0.05);
        assert!(
            lo <= want + slack && want <= hi + slack,
            "attempt {n}->{} came {lo:?}..{hi:?} after the previous one, want {want:?}; all: {report:?}",
            n + 1
        );
    }
    eprintln!("retry gaps: {report:?}");
    assert!(report.len() >= 2, "too few gaps measured: {report:?}");

    // The server comes back: the queue drains, and a second device sees everything.
    proxy.set_reset(false);
    let b = cluster.start_device(&env, "device-b", 0)?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )
    .inspect_err(|_| eprintln!("{}", describe_rows(&a.ctl().ls().unwrap_or_default())))?;
    Ok(())
}
