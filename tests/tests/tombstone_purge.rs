//! The server purges old tombstones by itself (`serve --tombstone-days`), and a cursor from
//! before the purge is told to do a full listing instead of silently missing the delete.

use std::time::Duration;

use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{ServerOpts, ServerProc, TestEnv};

#[test]
fn tombstones_older_than_the_retention_are_purged_and_old_cursors_get_410() -> TestResult {
    let env = TestEnv::new()?;
    // 0.00006 days = 5.2 s: the purge runs at start and then every 2.6 s.
    let opts = ServerOpts {
        extra_args: vec!["--tombstone-days".into(), "0.00006".into()],
        ..Default::default()
    };
    let server = ServerProc::start(&env, opts)?;
    let alice = server.add_user("alice")?;
    for id in ["gone", "kept"] {
        let r = server.request(&alice, "PUT", &format!("/blobs/alice/{id}"), id.as_bytes())?;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = server.request(&alice, "GET", "/blobs/alice?since=0", b"")?;
    let cursor = r.json().and_then(|v| v["seq"].as_u64()).expect("a seq");
    let r = server.request(&alice, "DELETE", "/blobs/alice/gone", b"")?;
    assert!(r.status < 300, "{}", r.text());

    // The tombstone is listed at first, then purged.
    let ops = |server: &ServerProc| -> blobsync_tests::Result<Vec<String>> {
        let r = server.request(&alice, "GET", "/blobs/alice?since=0", b"")?;
        Ok(r.json()
            .and_then(|v| v["changes"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|c| format!("{} {}", c["id"], c["op"]).replace('"', ""))
            .collect())
    };
    assert!(ops(&server)?.contains(&"gone delete".to_string()));
    wait_until(
        "the tombstone to be purged",
        Duration::from_secs(30),
        || {
            let now = ops(&server)?;
            Ok(if now == ["kept put"] {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{now:?}"))
            })
        },
    )?;
    // A device that listed before the delete must not just continue: it would never learn
    // of it. 410 tells it to do a full listing.
    let r = server.request(&alice, "GET", &format!("/blobs/alice?since={cursor}"), b"")?;
    assert_eq!(r.status, 410, "{}", r.text());
    // The live blob is untouched.
    let r = server.request(&alice, "GET", "/blobs/alice/kept", b"")?;
    assert_eq!(r.body, b"kept");
    Ok(())
}

#[test]
fn a_bad_retention_is_refused_with_a_clear_error() -> TestResult {
    let env = TestEnv::new()?;
    let opts = ServerOpts {
        extra_args: vec!["--tombstone-days".into(), "1e9".into()],
        ..Default::default()
    };
    let err = match ServerProc::start(&env, opts) {
        Ok(_) => panic!("a retention of a billion days was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not a number of days"), "{err}");
    Ok(())
}
