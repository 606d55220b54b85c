//! The first hour of a real user (issue 21): ordinary mistakes get caught, and the CLI says
//! what is happening. Real server, daemons and `blobctl`.

use std::time::Duration;

use blobsync_tests::converge::describe_rows;
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, scaled, wait_until};
use blobsync_tests::{Cluster, DaemonProc, HarnessError, ServerOpts, TestEnv};
use serde_json::Value;

/// The alarms in a `status --json`.
fn alarms(status: &Value) -> Vec<Value> {
    status
        .get("alarms")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Item 1: a device started before `key import`. With no key file and a remote that holds
/// the user's blobs, the daemon refuses to start; started anyway with `--new-key` (here its
/// environment form), its first downloads fail authentication, and it stops downloading
/// with one `wrong_key` alarm that `status`, `verify --remote` and `get` all report.
#[test]
fn a_device_with_the_wrong_key_is_refused_then_stops_downloading() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    const BLOBS: usize = 12;
    // Above the batch limit (64 KiB): each is its own download.
    for i in 0..BLOBS {
        let f = a.dir().join("src");
        write_random_file(&f, 200 * 1024, i as u64)?;
        a.ctl().put(&f, &format!("b{i}"), &[])?;
    }
    wait_until(
        "device-a to upload",
        scaled(Duration::from_secs(60)),
        || {
            let rows = a.ctl().ls()?;
            Ok(if rows.iter().all(|r| r.status == "SYNCED") {
                Poll::Ready(())
            } else {
                let _ = a.ctl().run(&["sync"]);
                Poll::Pending(describe_rows(&rows))
            })
        },
    )?;

    // No key file yet: refused, and no key created behind the user's back.
    let keys = env.subdir("wrong-keys")?;
    let mut opts = cluster.daemon_opts(0);
    opts.key_file = keys.join("absent.key");
    let err = match DaemonProc::start(&env, "device-c", opts.clone()) {
        Ok(_) => panic!("a daemon with no key must not start against a remote holding blobs"),
        Err(HarnessError::ProcessFailed { code, stderr, .. }) => {
            assert_eq!(code, Some(1), "refused with exit 1: {stderr}");
            stderr
        }
        Err(e) => panic!("expected the daemon to exit: {e}"),
    };
    assert!(
        err.contains("already holds this user's blobs")
            && err.contains("blobctl key import")
            && err.contains("--new-key"),
        "the refusal must say why and what to do: {err}"
    );
    assert!(
        !opts.key_file.exists(),
        "a refused start must not create a key"
    );

    // A device on a key of its own (as `--new-key` would create).
    let mut opts = cluster.daemon_opts(0);
    opts.key_file = keys.join("other.key");
    opts.env.push(("BLOBSYNCD_NEW_KEY".into(), "1".into()));
    let b = DaemonProc::start(&env, "device-b", opts.clone())?;
    assert!(opts.key_file.exists(), "--new-key creates the key");
    let status = wait_until(
        "device-b to raise the wrong_key alarm",
        scaled(Duration::from_secs(60)),
        || {
            let s = b.ctl().status()?;
            Ok(if alarms(&s).iter().any(|a| a["kind"] == "wrong_key") {
                Poll::Ready(s)
            } else {
                let _ = b.ctl().run(&["sync"]);
                Poll::Pending(s.to_string())
            })
        },
    )?;
    let all = alarms(&status);
    assert_eq!(all.len(), 1, "one alarm, not one per blob: {all:?}");
    let msg = all[0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("key is not the one your other devices use") && msg.contains("key import"),
        "the alarm says what is wrong and what to do: {msg}"
    );
    // More cycles download nothing more: most blobs were never tried.
    b.ctl().sync_wait()?;
    b.ctl().sync_wait()?;
    let rows = b.ctl().ls()?;
    let untouched = rows
        .iter()
        .filter(|r| r.status == "PENDING_DOWNLOAD" && r.attempts == 0)
        .count();
    assert!(
        untouched >= BLOBS / 2,
        "downloads must stop at the first failures, not fail every blob: {}",
        describe_rows(&rows)
    );
    assert_eq!(
        alarms(&b.ctl().status()?).len(),
        1,
        "still one alarm after more cycles"
    );
    let human = b.ctl().run_opts(&["status"], false)?;
    assert!(
        human.stdout.contains("wrong_key") && human.stdout.contains("key import"),
        "status shows the alarm: {}",
        human.stdout
    );

    // `verify --remote` must not say "checked 0 blobs" and succeed.
    let v = b.ctl().run(&["verify", "--remote"])?;
    assert_ne!(v.code, 0, "verify --remote with the wrong key must fail");
    assert!(
        v.stderr.contains("key is not the one"),
        "verify says why: {}",
        v.stderr
    );
    // Nor does a `get` fetch what it cannot decrypt.
    let out = b.dir().join("b0.out");
    let g = b
        .ctl()
        .run(&["get", "b0", "-o", &out.display().to_string()])?;
    assert_ne!(g.code, 0, "get with the wrong key must fail");
    assert!(
        g.stderr.contains("key is not the one"),
        "get says why: {}",
        g.stderr
    );
    Ok(())
}
