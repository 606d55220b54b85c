//! Scenario 4: connection cuts and delays through the proxy during a large transfer.
//!
//! Device A uploads one large blob through a proxy that cuts the upload twice; device B
//! downloads it through a proxy that cuts the download three times and adds latency. Both
//! must complete; B must resume each cut download from its last verified segment, so the
//! bytes B pulls through its proxy exceed the stored size by less than two segments per cut
//! (plus listing and header overhead); and B's memory must stay flat (peak RSS grows by far
//! less than the blob). Size: 32 MB by default, 200 MB with `BLOBSYNC_TEST_FULL=1`.
//! Slow: skipped with `BLOBSYNC_SKIP_SLOW=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged};
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::proxy::{Direction, Proxy};
use blobsync_tests::{Cluster, DaemonProc, ServerOpts, TestEnv, full_size, skip_slow_test};

/// Plaintext segment of the default blob format (2^16) and its sealed size (+16-byte tag).
const SEGMENT: u64 = 64 * 1024;
const SEALED_SEGMENT: u64 = SEGMENT + 16;
/// Room for listings, HTTP headers and the header reads of the resumes.
const OVERHEAD: u64 = 256 * 1024;

#[test]
fn large_transfer_survives_cuts_and_resumes_from_the_last_verified_segment() -> TestResult {
    if skip_slow_test("large_transfer_survives_cuts_and_resumes_from_the_last_verified_segment") {
        return Ok(());
    }
    let size: u64 = if full_size() { 200 << 20 } else { 32 << 20 };
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let proxy_a = Proxy::start(cluster.server.addr()).expect("start proxy");
    let proxy_b = Proxy::start(cluster.server.addr()).expect("start proxy");
    let a = DaemonProc::start(&env, "device-a", cluster.daemon_opts_via(0, &proxy_a.url()))?;

    // Upload: cut twice, at a third of the blob each time.
    proxy_a.cut_after(Direction::Up, size / 3, Some(2));
    let file = a.dir().join("big.src");
    let sha = write_random_file(&file, size, 42)?;
    a.ctl().put(&file, "big", &[])?;
    std::fs::remove_file(&file).ok();
    let mut model: Model = BTreeMap::new();
    model.insert(("default".into(), "big".into()), sha);
    assert_converged(
        &[&a],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(300),
    )?;
    assert_eq!(proxy_a.cuts(), 2, "the upload should have been cut twice");

    // Download: B starts with cuts armed, so its first attempts are cut.
    let cuts = 3u64;
    proxy_b.cut_after(Direction::Down, size / 4, Some(cuts as u32));
    proxy_b.set_delay(Duration::from_millis(2));
    let b = DaemonProc::start(&env, "device-b", cluster.daemon_opts_via(0, &proxy_b.url()))?;
    let (_, rss_before) = b.memory().expect("daemon memory from /proc");
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(300),
    )?;
    let (peak, _) = b.memory().expect("daemon memory from /proc");
    assert_eq!(
        proxy_b.cuts(),
        cuts,
        "the download should have been cut {cuts} times"
    );

    let stored = std::fs::metadata(cluster.server.blob_path("alice", "default", "big"))
        .expect("stored blob")
        .len();
    let pulled = proxy_b.bytes(Direction::Down);
    // `get` in the convergence check reads the local copy; everything B pulled is sync.
    let refetched = pulled.saturating_sub(stored);
    eprintln!(
        "stored {stored} B, B pulled {pulled} B through {cuts} cuts: re-fetched {refetched} B; \
         B rss before {rss_before} B, peak {peak} B"
    );
    assert!(
        refetched < cuts * 2 * SEALED_SEGMENT + OVERHEAD,
        "re-fetched {refetched} bytes over {cuts} cuts: downloads did not resume from the last \
         verified segment (limit {})",
        cuts * 2 * SEALED_SEGMENT + OVERHEAD
    );
    let growth = peak.saturating_sub(rss_before);
    assert!(
        growth < size / 2,
        "daemon peak RSS grew by {growth} bytes for a {size}-byte blob: not streaming"
    );
    Ok(())
}
