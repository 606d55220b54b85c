//! Trusted-app delivery: a blob PUT to `/incoming` by an app token reaches the user's
//! device kept as-is (never decrypted), and the remote flags round-trip through `blobctl`.

use std::time::Duration;

use blobsync_tests::converge::describe_rows;
use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{Cluster, ServerOpts, TestEnv};

#[test]
fn incoming_delivery_reaches_the_device_as_is_and_flags_round_trip() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let app = cluster.server.add_app("mailer")?;
    // A daemon lists `default`, configured namespaces and those it has rows in; only an
    // incoming namespace takes blobs an app delivered (nothing of ours authenticates them).
    let mut opts = cluster.daemon_opts(0);
    opts.extra_toml = "[namespaces.MX]\npolicy = \"incoming\"\n".into();
    let a = blobsync_tests::DaemonProc::start(&env, "device-a", opts)?;
    // An app's own encryption (e.g. OpenPGP): opaque bytes to blobsync.
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = cluster
        .server
        .request(&app, "PUT", "/incoming/alice/mail1", &payload)?;
    assert_eq!(r.status, 201, "{}", r.text());

    wait_until(
        "device-a to sync the delivered blob",
        Duration::from_secs(60),
        || {
            let _ = a.ctl().run(&["sync"]);
            let rows = a.ctl().ls()?;
            Ok(
                match rows.iter().find(|r| r.id == "mail1" && r.namespace == "MX") {
                    Some(r) if r.status == "SYNCED" || r.status == "REMOTE_ONLY" => Poll::Ready(()),
                    _ => Poll::Pending(describe_rows(&rows)),
                },
            )
        },
    )?;
    let out = a.dir().join("mail1.out");
    a.ctl().get_to("mail1", "MX", &out)?;
    let got = std::fs::read(&out).expect("get output");
    assert!(
        got == payload,
        "the delivered bytes must come back unchanged"
    );

    let flags = a.ctl().run(&["flags", "mail1", "-n", "MX"])?.ok_json()?;
    assert!(
        flags.to_string().contains("PENDING"),
        "new deliveries are PENDING: {flags}"
    );
    a.ctl()
        .run(&["flags", "mail1", "-n", "MX", "--set", "processed"])?
        .ok()?;
    let r = cluster.server.request(
        &cluster.users[0].token,
        "GET",
        "/blobs/alice/mail1?namespace=MX&only_flags=1",
        b"",
    )?;
    assert_eq!(
        r.json(),
        Some(serde_json::json!(["PROCESSED"])),
        "{}",
        r.text()
    );
    // The server's listing says the blob came through /incoming.
    let remote = a.ctl().run(&["ls", "--remote", "-n", "MX"])?.ok_json()?;
    let mail = remote["blobs"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["id"] == "mail1"))
        .cloned();
    assert_eq!(
        mail.as_ref().map(|m| &m["external"]),
        Some(&serde_json::json!(true)),
        "{remote}"
    );
    Ok(())
}

/// A second device set up later must see the user's blobs in every namespace, not only in
/// `default` and the ones it has rows in or has configured.
#[test]
fn a_new_device_sees_blobs_in_every_namespace() -> TestResult {
    use blobsync_tests::converge::{Model, assert_converged};
    use blobsync_tests::digest::write_random_file;
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let file = a.dir().join("put.src");
    let sha = write_random_file(&file, 1000, 1)?;
    a.ctl().put(&file, "photo1", &["-n", "photos", "--wait"])?;
    let mut model = Model::new();
    model.insert(("photos".into(), "photo1".into()), sha);
    let b = cluster.start_device(&env, "device-b", 0)?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(20),
    )?;
    Ok(())
}
