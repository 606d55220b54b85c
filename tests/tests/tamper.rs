//! Scenario 5: a blob tampered with on the server.
//!
//! One byte of a stored blob is flipped on the server's disk before device B downloads it.
//! B must try exactly `max_invalid_retries` (3) times, then mark it `FAILED_DOWNLOAD` with the
//! reason in `blobctl ls` and a count in `status`, and stop trying; other blobs keep syncing.
//! After the byte is restored, `blobctl retry` recovers it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged, has, wait_for_rows};
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::{Cluster, DaemonProc, ServerOpts, TestEnv};

fn put(dev: &DaemonProc, id: &str, size: u64, model: &mut Model) -> TestResult {
    let file = dev.dir().join("put.src");
    let sha = write_random_file(&file, size, id.len() as u64 * 7919 + size)?;
    dev.ctl().put(&file, id, &[])?;
    model.insert(("default".into(), id.into()), sha);
    Ok(())
}

fn flip_byte(path: &std::path::Path, offset: u64) -> u8 {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open stored blob");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    f.sync_all().unwrap();
    b[0]
}

#[test]
fn tampered_blob_fails_after_three_attempts_and_recovers_on_retry() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let mut model: Model = BTreeMap::new();
    put(&a, "victim", 300_000, &mut model)?;
    put(&a, "good1", 50_000, &mut model)?;
    put(&a, "good2", 1_000, &mut model)?;
    assert_converged(
        &[&a],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;

    // Flip a byte in the middle of the stored body (inside a sealed segment).
    let path = cluster.server.blob_path("alice", "default", "victim");
    let len = std::fs::metadata(&path).expect("stored blob").len();
    let offset = len / 2;
    let original = flip_byte(&path, offset);

    let b = cluster.start_device(&env, "device-b", 0)?;
    let rows = wait_for_rows(
        &b,
        "device-b to mark victim FAILED_DOWNLOAD and sync the others",
        Duration::from_secs(60),
        |rows| {
            has(rows, "victim", "FAILED_DOWNLOAD")
                && has(rows, "good1", "SYNCED")
                && has(rows, "good2", "SYNCED")
        },
    )?;
    let victim = rows.iter().find(|r| r.id == "victim").expect("victim row");
    assert_eq!(
        victim.attempts, 3,
        "want exactly 3 attempts: {:?}",
        victim.raw
    );
    assert!(
        !victim.last_error.is_empty(),
        "the reason must be visible in ls: {:?}",
        victim.raw
    );
    let status = b.ctl().status()?;
    assert_eq!(
        status["counts"]["FAILED_DOWNLOAD"].as_u64(),
        Some(1),
        "status must count the failure: {status}"
    );

    // It stays failed: more cycles do not try again. The first `sync --wait` may still report
    // the failure (exit 1) if no periodic cycle has since the last attempt; the next is clean.
    let first = b.ctl().run(&["sync", "--wait"])?.code;
    assert!(first == 0 || first == 1, "sync --wait exited {first}");
    b.ctl().sync_wait()?;
    let again = b.ctl().ls()?;
    let v = again.iter().find(|r| r.id == "victim").expect("victim row");
    assert_eq!(
        (v.status.as_str(), v.attempts),
        ("FAILED_DOWNLOAD", 3),
        "{:?}",
        v.raw
    );

    // Other blobs keep syncing meanwhile.
    put(&a, "after", 20_000, &mut model)?;
    wait_for_rows(
        &b,
        "device-b to get a blob put after the failure",
        Duration::from_secs(60),
        |rows| has(rows, "after", "SYNCED"),
    )?;

    // Restore the byte; retry recovers.
    let now = flip_byte(&path, offset);
    assert_eq!(now, original ^ 0x01);
    b.ctl().retry("victim", "default")?.ok()?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;
    Ok(())
}

/// A byte flipped in transit (by the proxy, once) fails verification of that segment only:
/// the download is retried, resumes, and ends SYNCED with the right bytes.
#[test]
fn a_byte_flipped_in_transit_is_caught_and_the_retry_succeeds() -> TestResult {
    use blobsync_tests::proxy::Proxy;
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let mut model: Model = BTreeMap::new();
    put(&a, "fragile", 2_000_000, &mut model)?;
    assert_converged(
        &[&a],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;

    let proxy = Proxy::start(cluster.server.addr()).expect("start proxy");
    // Listings are far shorter than 1 MB: only the blob's download reaches this offset.
    proxy.flip_byte_at(1_000_000, Some(1));
    let b = DaemonProc::start(&env, "device-b", cluster.daemon_opts_via(0, &proxy.url()))?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;
    assert_eq!(proxy.flips(), 1, "the flip must have happened");
    Ok(())
}
