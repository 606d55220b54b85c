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

    // Watch x1's attempt count and note when each new failure shows up.
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    wait_until("5 failed attempts of x1", Duration::from_secs(30), || {
        let rows = a.ctl().ls()?;
        let Some(r) = rows.iter().find(|r| r.id == "x1") else {
            return Ok(Poll::Pending("x1 not listed".into()));
        };
        if seen.last().map(|s| s.0) != Some(r.attempts) {
            seen.push((r.attempts, Instant::now()));
        }
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
    // Gaps between failures n and n+1 (n >= 1) should be 10 * n daemon seconds.
    let firsts: Vec<(u64, Instant)> = seen.iter().copied().filter(|(n, _)| *n >= 1).collect();
    let mut report = Vec::new();
    for w in firsts.windows(2) {
        let ((n, t0), (m, t1)) = (w[0], w[1]);
        if m != n + 1 {
            continue; // two failures between polls; no gap to measure
        }
        let want = Duration::from_secs_f64(10.0 * n.min(6) as f64 * SCALE);
        let got = t1 - t0;
        report.push(format!("{n}->{m}: {got:?} (want {want:?})"));
        let slack = Duration::from_millis(150) + want.mul_f64(0.25);
        assert!(
            got + slack >= want && got <= want + slack,
            "attempt {n}->{m} came after {got:?}, want {want:?} (+-{slack:?}); all gaps: {report:?}"
        );
    }
    eprintln!("retry gaps: {report:?}");
    assert!(report.len() >= 2, "too few gaps measured: {seen:?}");

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
