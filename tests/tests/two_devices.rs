//! Scenario 1: two devices of one user, random operations from both sides, then convergence.
//!
//! A seeded RNG drives puts (random sizes up to 2 MB, two namespaces), deletes, gets and
//! forced syncs on either device while both daemons sync through one server. A simple model
//! (address -> SHA-256, plus the device that put it) tracks what must exist. During the run,
//! a device must always be able to read back what it put itself, byte for byte. At the end
//! both devices and the server must hold exactly the model.
//!
//! Replay a failure with the printed `BLOBSYNC_TEST_SEED=...`; `BLOBSYNC_TEST_OPS` sets the
//! number of operations (default 120; 500 with `BLOBSYNC_TEST_FULL=1`).

use std::collections::BTreeMap;
use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged};
use blobsync_tests::digest::{sha256_file, write_random_file};
use blobsync_tests::env::TestResult;
use blobsync_tests::{Cluster, DaemonProc, ServerOpts, TestEnv, env_number, full_size, test_seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMESPACES: [&str; 2] = ["default", "docs"];

fn random_size(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..100) {
        0..5 => 0,
        5..45 => rng.gen_range(1..4096),
        45..75 => rng.gen_range(4096..128 * 1024),
        75..92 => rng.gen_range(128 * 1024..1024 * 1024),
        _ => rng.gen_range(1024 * 1024..=2 * 1024 * 1024),
    }
}

fn run(seed: u64) -> TestResult {
    let ops = env_number("BLOBSYNC_TEST_OPS", if full_size() { 500 } else { 120 });
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let devices = [
        cluster.start_device(&env, "device-a", 0)?,
        cluster.start_device(&env, "device-b", 0)?,
    ];
    let mut model: Model = BTreeMap::new();
    // Which device put each live blob (it must always be readable there).
    let mut origin: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for op in 0..ops {
        let d = rng.gen_range(0..devices.len());
        let dev: &DaemonProc = &devices[d];
        let roll = rng.gen_range(0..100);
        if roll < 45 || model.is_empty() {
            let ns = NAMESPACES[rng.gen_range(0..NAMESPACES.len())];
            let id = format!("b{op}-{}", rng.gen_range(0..1_000_000u32));
            let file = dev.dir().join("put.tmp-src");
            let sha = write_random_file(&file, random_size(&mut rng), rng.r#gen())?;
            let v = dev.ctl().put(&file, &id, &["-n", ns])?;
            if v.get("id").and_then(|x| x.as_str()) != Some(id.as_str()) {
                panic!("op {op}: put answered {v}");
            }
            model.insert((ns.to_string(), id.clone()), sha);
            origin.insert((ns.to_string(), id), d);
            *counts.entry("put").or_default() += 1;
        } else if roll < 65 {
            let i = rng.gen_range(0..model.len());
            let key = model.keys().nth(i).cloned().expect("index within len");
            let out = dev.ctl().rm(&key.1, &key.0)?;
            if out.code == 0 {
                model.remove(&key);
                origin.remove(&key);
                *counts.entry("rm").or_default() += 1;
            } else if origin.get(&key) == Some(&d) {
                panic!(
                    "op {op}: {} could not delete its own blob {key:?}: {}",
                    dev.name(),
                    out.stderr
                );
            } else {
                // The other device's blob may not have reached this one yet.
                *counts.entry("rm-unknown").or_default() += 1;
            }
        } else if roll < 85 {
            let i = rng.gen_range(0..model.len());
            let (key, sha) = model
                .iter()
                .nth(i)
                .map(|(k, v)| (k.clone(), v.clone()))
                .expect("index within len");
            let out_file = dev.dir().join("get.out");
            let out = dev.ctl().run(&[
                "get",
                &key.1,
                "-n",
                &key.0,
                "-o",
                &out_file.display().to_string(),
            ])?;
            if out.code == 0 {
                let got = sha256_file(&out_file)?;
                assert_eq!(
                    got,
                    sha,
                    "op {op}: {} read {key:?} with the wrong content",
                    dev.name()
                );
                *counts.entry("get").or_default() += 1;
            } else if origin.get(&key) == Some(&d) {
                panic!(
                    "op {op}: {} could not read its own blob {key:?}: {}",
                    dev.name(),
                    out.stderr
                );
            } else {
                *counts.entry("get-unknown").or_default() += 1;
            }
        } else if roll < 95 {
            dev.ctl().run(&["sync"])?.ok()?;
            *counts.entry("sync").or_default() += 1;
        } else {
            dev.ctl().sync_wait()?;
            *counts.entry("sync-wait").or_default() += 1;
        }
    }
    eprintln!("ops done: {counts:?}; {} blobs live", model.len());
    let refs: Vec<&DaemonProc> = devices.iter().collect();
    assert_converged(
        &refs,
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(120),
    )?;
    Ok(())
}

#[test]
fn two_devices_converge_after_random_operations() {
    let seed = test_seed("two_devices_converge_after_random_operations");
    if let Err(e) = run(seed) {
        panic!("failed with BLOBSYNC_TEST_SEED={seed} (set it to replay): {e}");
    }
}

/// A blob deleted elsewhere while this device holds a partial download of it: device A's
/// download runs through a throttled proxy and A is killed once its partial file (`tmp/part.*`,
/// the verified segments so far) holds data; B then deletes the blob. When A restarts it
/// learns of the delete, and the partial file must go with the row.
#[test]
fn partial_download_of_a_blob_deleted_elsewhere_is_removed() -> TestResult {
    use blobsync_tests::converge::stray_files;
    use blobsync_tests::proxy::{Direction, Proxy};
    use blobsync_tests::wait::{Poll, wait_until};
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let proxy = Proxy::start(cluster.server.addr()).expect("start proxy");
    // 8 MB at 2 MB/s: seconds of download, so the partial is caught growing.
    proxy.throttle(Direction::Down, Some(2 << 20));
    let mut a = DaemonProc::start(&env, "device-a", cluster.daemon_opts_via(0, &proxy.url()))?;
    let b = cluster.start_device(&env, "device-b", 0)?;
    let file = b.dir().join("put.src");
    write_random_file(&file, 8 << 20, 5)?;
    b.ctl().put(&file, "doomed", &["--wait"])?;
    let partial = a.data_dir().join("tmp/part.default.doomed");
    wait_until(
        "device-a's partial download to hold data",
        Duration::from_secs(60),
        || {
            let _ = a.ctl().run(&["sync"]);
            let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            Ok(if len > 0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} is {len} bytes", partial.display()))
            })
        },
    )?;
    // Kill A mid-download: a crash keeps the partial for the restart to resume from (a failed
    // attempt would remove it itself, which is not what this test is about).
    a.kill9();
    let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 0 && len < 8 << 20,
        "no partial download to remove ({len} bytes)"
    );
    b.ctl().rm("doomed", "default")?.ok()?;
    b.ctl().sync_wait()?;
    a.restart(&env)?;
    wait_until("device-a to drop doomed", Duration::from_secs(60), || {
        let _ = a.ctl().run(&["sync"]);
        let rows = a.ctl().ls()?;
        Ok(if rows.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{rows:?}"))
        })
    })?;
    a.ctl().sync_wait()?;
    assert!(!partial.exists(), "the partial download stayed");
    let stray = stray_files(a.data_dir());
    assert!(stray.is_empty(), "left behind: {stray:?}");
    Ok(())
}

/// A blob whose download was cut by a crash and resumed after the restart: deleting it on
/// that device must delete it everywhere. Found by `crashes.rs` (seed 11899554249988459773)
/// before main's fix: the uploader refused the downloader's tombstone as unproven and
/// uploaded the blob again.
#[test]
fn a_blob_downloaded_across_a_crash_can_be_deleted_from_that_device() -> TestResult {
    use blobsync_tests::proxy::{Direction, Proxy};
    use blobsync_tests::wait::{Poll, wait_until};
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let proxy = Proxy::start(cluster.server.addr()).expect("start proxy");
    proxy.throttle(Direction::Down, Some(2 << 20));
    let a = cluster.start_device(&env, "device-a", 0)?;
    let mut b = DaemonProc::start(&env, "device-b", cluster.daemon_opts_via(0, &proxy.url()))?;
    let file = a.dir().join("put.src");
    write_random_file(&file, 4 << 20, 11)?;
    a.ctl().put(&file, "resumed", &["--wait"])?;
    let partial = b.data_dir().join("tmp/part.default.resumed");
    wait_until(
        "device-b's partial download to hold data",
        Duration::from_secs(60),
        || {
            let _ = b.ctl().run(&["sync"]);
            let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            Ok(if len > 0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{len} bytes"))
            })
        },
    )?;
    b.kill9();
    b.restart(&env)?;
    let mut model: Model = BTreeMap::new();
    model.insert(("default".into(), "resumed".into()), sha256_file(&file)?);
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;
    b.ctl().rm("resumed", "default")?.ok()?;
    model.clear();
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;
    Ok(())
}
