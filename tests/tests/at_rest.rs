//! The local store encrypted at rest (issue 16; docs/local-store.md), with the real binaries:
//!
//! - no plaintext byte of a put blob anywhere under either device's data dir after the put,
//!   the download on a second device, a `get` and a `verify --remote`, through a real
//!   `blobsync-server`;
//! - a store as the previous release left it (plaintext payloads) is sealed in place at the
//!   first start, and a `kill -9` in the middle of that migration loses nothing: the next start
//!   resumes where it stopped, and every blob reads back byte for byte.

use std::time::Duration;

use blobsync_tests::env::TestResult;
use blobsync_tests::plaintext::{files_under, files_with_plaintext, marked};
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{Cluster, DaemonOpts, DaemonProc, RemoteSpec, ServerOpts, TestEnv};

fn assert_no_plaintext(dev: &DaemonProc, when: &str) {
    let found = files_with_plaintext(dev.data_dir());
    assert!(
        found.is_empty(),
        "{}: plaintext found {when} in {found:?}",
        dev.name()
    );
}

fn get_back(dev: &DaemonProc, id: &str) -> Vec<u8> {
    let out = dev.dir().join(format!("got-{id}"));
    dev.ctl().get_to(id, "default", &out).expect("get");
    let bytes = std::fs::read(&out).expect("read the got file");
    std::fs::remove_file(&out).expect("remove the got file");
    bytes
}

#[test]
fn no_plaintext_under_either_data_dir_after_put_download_get_and_verify() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let b = cluster.start_device(&env, "device-b", 0)?;
    // One big blob (a transfer of its own) and a dozen small ones (a `/stream` batch).
    let mut blobs: Vec<(String, Vec<u8>)> = vec![("big".into(), marked(3 << 20, 0))];
    for i in 1..=12u32 {
        blobs.push((format!("small{i}"), marked(1000 + i as usize * 37, i)));
    }
    // The source files live outside the data dir (the scan covers only the data dir).
    let src = env.subdir("sources")?;
    for (id, bytes) in &blobs {
        let f = src.join(id);
        std::fs::write(&f, bytes).expect("write a source");
        a.ctl().put(&f, id, &[])?;
    }
    assert_no_plaintext(&a, "after the puts");
    a.ctl().sync_wait()?;
    wait_until("b to hold every blob", Duration::from_secs(60), || {
        b.ctl().sync_wait()?;
        let rows = b.ctl().ls()?;
        let synced = rows.iter().filter(|r| r.status == "SYNCED").count();
        Ok(if synced == blobs.len() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{synced} of {} synced on b", blobs.len()))
        })
    })?;
    assert_no_plaintext(&b, "after the downloads");
    for dev in [&a, &b] {
        for (id, bytes) in &blobs {
            assert!(
                get_back(dev, id) == *bytes,
                "{id} reads back on {}",
                dev.name()
            );
        }
        let v = dev.ctl().run(&["verify", "--remote"])?;
        assert_eq!(
            v.code,
            0,
            "verify on {}: {} {}",
            dev.name(),
            v.stdout,
            v.stderr
        );
        assert_no_plaintext(dev, "after get and verify");
    }
    Ok(())
}

/// Puts back what a release before at-rest encryption left: every payload plaintext (the
/// key file decrypts them, as only a test may), listed in `plain_payloads` (as migration 6
/// lists them when it opens such a store). The daemon is stopped.
fn make_previous_release(dev: &DaemonProc) -> TestResult<usize> {
    let key = blobsync_shared::keyfile::load_key_file(&dev.opts().key_file)
        .map_err(|e| blobsync_tests::HarnessError::protocol("key", e.to_string()))?;
    let blobs = dev.data_dir().join("blobs").join("default");
    let mut n = 0;
    for path in files_under(&blobs) {
        let id = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let stored = std::fs::read(&path).expect("read a payload");
        let mut plain = Vec::new();
        blobsync_shared::codec::decrypt_to(
            &key,
            &stored[..],
            &blobsync_shared::Namespace::default(),
            &blobsync_shared::BlobId::new(id).expect("an id"),
            &mut plain,
        )
        .expect("a sealed payload");
        std::fs::write(&path, plain).expect("write a payload");
        n += 1;
    }
    let c =
        rusqlite::Connection::open(dev.data_dir().join("store.sqlite")).expect("open the store");
    c.execute_batch(
        "INSERT OR IGNORE INTO plain_payloads (ns, id) \
         SELECT ns, id FROM blobs WHERE status IN (1, 2, 3, 5, 7)",
    )
    .expect("list the plaintext payloads");
    Ok(n)
}

/// How many payloads under the data dir are sealed (start with the format's magic).
fn sealed_count(dev: &DaemonProc) -> usize {
    files_under(&dev.data_dir().join("blobs"))
        .iter()
        .filter(|p| {
            let mut head = [0u8; 2];
            std::fs::File::open(p)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok()
                && head == [0x13, 0x37]
        })
        .count()
}

/// The `total=` the last "at-rest migration: sealing" line of the log gives.
fn migration_total(dev: &DaemonProc) -> Option<u64> {
    let (out, err) = dev.log_tails(5000);
    format!("{out}\n{err}")
        .lines()
        .rev()
        .filter(|l| l.contains("at-rest migration: sealing"))
        .filter_map(|l| {
            let at = l.find("total=")? + "total=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .next()
}

#[test]
fn a_previous_release_store_is_sealed_in_place_and_survives_kill_9_midway() -> TestResult {
    const N: usize = 400;
    let env = TestEnv::new()?;
    let remote = env.subdir("remote")?;
    let key = env.root().join("key");
    blobsync_tests::daemon::write_key_file(&key)?;
    let mut opts = DaemonOpts::new(RemoteSpec::Dir(remote), &key);
    opts.extra_toml = "sync_interval = 3600\n".into();
    let mut dev = DaemonProc::start(&env, "device", opts)?;
    let src = env.subdir("sources")?;
    let mut blobs = Vec::new();
    let paths: Vec<String> = (0..N)
        .map(|i| {
            let bytes = marked(20_000 + (i % 7) * 3001, i as u32);
            let f = src.join(format!("m{i}"));
            std::fs::write(&f, &bytes).expect("write a source");
            blobs.push((format!("m{i}"), bytes));
            f.display().to_string()
        })
        .collect();
    // One put per file would take a while: put them in groups.
    for chunk in paths.chunks(100) {
        let mut args = vec!["put".to_string()];
        args.extend(chunk.iter().cloned());
        let out = dev.ctl().run(&args)?;
        assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    }
    dev.ctl().sync_wait()?;
    dev.terminate(Duration::from_secs(15));
    let ids: std::collections::BTreeMap<String, Vec<u8>> = {
        // The ids blobctl chose: read them back from the store.
        let c = rusqlite::Connection::open(dev.data_dir().join("store.sqlite"))
            .expect("open the store");
        let mut st = c.prepare("SELECT id, sha256 FROM blobs").expect("prepare");
        let rows: Vec<(String, Vec<u8>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        rows.into_iter().collect()
    };
    assert_eq!(ids.len(), N);
    assert_eq!(make_previous_release(&dev)?, N);
    assert_eq!(sealed_count(&dev), 0);
    assert!(!files_with_plaintext(dev.data_dir()).is_empty());

    // First start: kill -9 once some payloads are sealed and others not yet.
    dev.restart(&env)?;
    let seen = wait_until(
        "the migration to be midway",
        Duration::from_secs(60),
        || {
            let n = sealed_count(&dev);
            Ok(if n > 0 && n < N {
                Poll::Ready(n)
            } else {
                Poll::Pending(format!("{n} of {N} sealed"))
            })
        },
    )?;
    dev.kill9();
    let sealed_at_kill = sealed_count(&dev);
    assert!(
        sealed_at_kill < N,
        "the kill came after the migration ended ({seen} then {sealed_at_kill} sealed); \
         nothing was tested"
    );
    // Second start: it resumes (fewer left than at first) and finishes.
    dev.restart(&env)?;
    wait_until("the migration to finish", Duration::from_secs(120), || {
        let (out, err) = dev.log_tails(5000);
        Ok(
            if format!("{out}{err}").contains("at-rest migration finished") {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} of {N} sealed", sealed_count(&dev)))
            },
        )
    })?;
    let total = migration_total(&dev).expect("the migration logged its start");
    assert!(
        (total as usize) < N,
        "resumed where it stopped: {total} left of {N}"
    );
    assert_eq!(sealed_count(&dev), N);
    assert_no_plaintext(&dev, "after the migration");
    let tmp_left = files_under(&dev.data_dir().join("tmp"));
    assert!(tmp_left.is_empty(), "temps left: {tmp_left:?}");
    // Every blob reads back, byte for byte, and verify finds nothing wrong.
    let by_sha: std::collections::BTreeMap<Vec<u8>, &Vec<u8>> = blobs
        .iter()
        .map(|(_, b)| {
            (
                ring::digest::digest(&ring::digest::SHA256, b)
                    .as_ref()
                    .to_vec(),
                b,
            )
        })
        .collect();
    for (id, sha) in &ids {
        let got = get_back(&dev, id);
        assert!(
            by_sha.get(sha).is_some_and(|b| **b == got),
            "{id} reads back"
        );
    }
    let v = dev.ctl().run(&["verify", "--remote"])?;
    assert_eq!(v.code, 0, "verify: {} {}", v.stdout, v.stderr);
    assert_no_plaintext(&dev, "after get and verify");
    Ok(())
}
