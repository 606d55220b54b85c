//! The incoming box end to end, with real processes: a mail server's delivery encrypted by
//! Debian's `age` CLI (the Go reference implementation) to the recipient the daemon
//! published, PUT to `/incoming` over raw HTTP; both devices decrypt it, one adopts it as
//! format v1 on the server (the other takes that copy), and the age file is gone. Bad
//! deliveries each get a clear error and store nothing.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use blobsync_tests::converge::describe_rows;
use blobsync_tests::ctl::BlobRow;
use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{Cluster, DaemonProc, ServerOpts, TestEnv};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// `age -r RECIPIENT` over `plain` (Debian's `age` package; `.ci/run` installs it).
fn age_encrypt(recipient: &str, plain: &[u8]) -> Vec<u8> {
    let mut child = Command::new("age")
        .args(["-r", recipient])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the age CLI is needed: apt-get install -y age");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = plain.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("age runs");
    writer.join().expect("writer").expect("age reads its input");
    assert!(out.status.success(), "age -r failed");
    assert!(out.stdout.starts_with(AGE_MAGIC));
    out.stdout
}

/// A fresh age recipient that is not the user's (`age-keygen`).
fn other_recipient() -> String {
    let out = Command::new("age-keygen")
        .output()
        .expect("age-keygen (Debian's age package)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("age-keygen prints the public key")
        .to_owned()
}

fn message(i: u32, len: usize) -> Vec<u8> {
    let mut m = format!("From: sender{i}@example.org\r\nSubject: message {i}\r\n\r\n").into_bytes();
    m.extend((0..len).map(|j| b'a' + ((j as u32 * 7 + i) % 26) as u8));
    m
}

fn recipient_of(d: &DaemonProc) -> String {
    let out = d
        .ctl()
        .run_opts(&["incoming", "recipient"], false)
        .expect("blobctl runs")
        .ok()
        .expect("blobctl incoming recipient");
    out.stdout.trim().to_owned()
}

fn mx_rows(d: &DaemonProc) -> blobsync_tests::Result<Vec<BlobRow>> {
    Ok(d.ctl()
        .ls()?
        .into_iter()
        .filter(|r| r.namespace == "MX")
        .collect())
}

/// Waits until `d` holds every id of `ids` in MX with status `status`.
fn wait_status(d: &DaemonProc, ids: &[String], status: &str, secs: u64) -> TestResult {
    wait_until(
        &format!("{} to hold {} MX blobs {status}", d.name(), ids.len()),
        Duration::from_secs(secs),
        || {
            let _ = d.ctl().run(&["sync"]);
            let rows = mx_rows(d)?;
            let done = ids
                .iter()
                .all(|id| rows.iter().any(|r| &r.id == id && r.status == status));
            Ok(if done {
                Poll::Ready(())
            } else {
                Poll::Pending(describe_rows(&rows))
            })
        },
    )?;
    Ok(())
}

fn get_plain(d: &DaemonProc, id: &str) -> Vec<u8> {
    let out = d.dir().join(format!("{id}.out"));
    d.ctl().get_to(id, "MX", &out).expect("get");
    let b = std::fs::read(&out).expect("get output");
    let _ = std::fs::remove_file(&out);
    b
}

#[test]
fn age_deliveries_are_decrypted_and_adopted_on_both_devices() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let app = cluster.server.add_app("mailer")?;
    let token = cluster.users[0].token.clone();
    let a = cluster.start_device(&env, "device-a", 0)?;
    let b = cluster.start_device(&env, "device-b", 0)?;

    // The daemon published its recipient; the app reads it with its own token.
    let r = recipient_of(&a);
    assert!(r.starts_with("age1"), "{r}");
    assert_eq!(
        recipient_of(&b),
        r,
        "every device of a user has the same identity"
    );
    wait_until(
        "the recipient to be published",
        Duration::from_secs(30),
        || {
            let resp = cluster
                .server
                .request(&app, "GET", "/keys/alice/incoming", b"")?;
            Ok(if resp.status == 200 && resp.text().trim() == r {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} {}", resp.status, resp.text()))
            })
        },
    )?;

    // Three messages, one spanning several 64 KiB age chunks.
    let msgs: Vec<(String, Vec<u8>)> = [(1, 300), (2, 5_000), (3, 300_000)]
        .iter()
        .map(|(i, n)| (format!("mail{i}"), message(*i, *n)))
        .collect();
    for (id, plain) in &msgs {
        let file = age_encrypt(&r, plain);
        let resp = cluster.server.request(
            &app,
            "PUT",
            &format!("/incoming/alice/{id}?namespace=MX"),
            &file,
        )?;
        assert_eq!(resp.status, 201, "{}", resp.text());
        assert!(resp.header("x-blobsync-seq").is_some());
    }
    let ids: Vec<String> = msgs.iter().map(|(id, _)| id.clone()).collect();
    wait_status(&a, &ids, "SYNCED", 60)?;
    wait_status(&b, &ids, "SYNCED", 60)?;

    for (id, plain) in &msgs {
        for d in [&a, &b] {
            assert!(get_plain(d, id) == *plain, "{}: {id} differs", d.name());
            let row = mx_rows(d)?.into_iter().find(|x| &x.id == id).unwrap();
            assert_eq!(row.raw["external"], serde_json::json!(true), "{}", row.raw);
            assert_eq!(row.size, plain.len() as u64);
        }
        // The server holds format v1 now, not the age file, still marked external, PENDING.
        let stored = cluster.server.stored_payload("alice", "MX", id)?;
        assert!(
            !stored.starts_with(AGE_MAGIC),
            "{id}: the age file is still on the server"
        );
        assert!(
            !stored
                .windows(20)
                .any(|w| plain.windows(20).next() == Some(w)),
            "{id}: plaintext on the server"
        );
        let flags = cluster.server.request(
            &token,
            "GET",
            &format!("/blobs/alice/{id}?namespace=MX&only_flags=1"),
            b"",
        )?;
        assert_eq!(
            flags.json(),
            Some(serde_json::json!(["PENDING"])),
            "{}",
            flags.text()
        );
    }
    // Adopted blobs verify like any other: the local copy and the server's format-v1 copy.
    for d in [&a, &b] {
        let v = d
            .ctl()
            .run(&["verify", "--remote", "-n", "MX"])?
            .ok_json()?;
        assert_eq!(v["skipped"], serde_json::json!(0), "{v}");
        assert_eq!(v["problems"], serde_json::json!([]), "{v}");
        assert!(v["checked"].as_u64().unwrap_or(0) >= 3, "{v}");
    }
    let remote = a.ctl().run(&["ls", "--remote", "-n", "MX"])?.ok_json()?;
    let all_external = remote["blobs"]
        .as_array()
        .is_some_and(|v| v.len() == 3 && v.iter().all(|b| b["external"] == true));
    assert!(all_external, "{remote}");
    // The adoption is a replace under the same id: a stale hash is refused with 412.
    let stale = "0".repeat(64);
    let resp = cluster.server.request(
        &token,
        "PUT",
        &format!("/blobs/alice/mail1?namespace=MX&replace_external={stale}"),
        b"whatever",
    )?;
    assert_eq!(resp.status, 412, "{}", resp.text());
    assert!(resp.text().contains("not the age file"), "{}", resp.text());
    assert!(get_plain(&a, "mail1") == msgs[0].1);
    Ok(())
}

#[test]
fn two_devices_racing_to_adopt_end_with_one_copy_and_the_same_plaintext() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let app = cluster.server.add_app("mailer")?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let b = cluster.start_device(&env, "device-b", 0)?;
    let r = recipient_of(&a);
    let n = 30;
    let mut expect = Vec::new();
    for i in 0..n {
        let id = format!("race{i}");
        let plain = message(i, 2_000 + i as usize * 10);
        let file = age_encrypt(&r, &plain);
        let resp = cluster
            .server
            .request(&app, "PUT", &format!("/incoming/alice/{id}"), &file)?;
        assert_eq!(resp.status, 201, "{}", resp.text());
        expect.push((id, plain));
    }
    // Both devices start on the deliveries at once.
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.ctl().run(&["sync"]));
        let tb = s.spawn(|| b.ctl().run(&["sync"]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    ra?.ok()?;
    rb?.ok()?;
    let ids: Vec<String> = expect.iter().map(|(id, _)| id.clone()).collect();
    wait_status(&a, &ids, "SYNCED", 90)?;
    wait_status(&b, &ids, "SYNCED", 90)?;
    for (id, plain) in &expect {
        assert!(get_plain(&a, id) == *plain, "device-a: {id}");
        assert!(get_plain(&b, id) == *plain, "device-b: {id}");
        let stored = cluster.server.stored_payload("alice", "MX", id)?;
        assert!(!stored.starts_with(AGE_MAGIC), "{id} not adopted");
    }
    let listed = cluster
        .server
        .list_ids(&cluster.users[0].token, "alice", "MX")?;
    assert_eq!(
        listed.len(),
        n as usize,
        "one blob per delivery: {listed:?}"
    );
    // Each delivery was adopted by exactly one device; the other took that copy.
    let count = |needle: &str| {
        [&a, &b]
            .iter()
            .map(|d| {
                let (out, err) = d.log_tails(100_000);
                (out + &err).matches(needle).count()
            })
            .sum::<usize>()
    };
    let adopted = count("incoming delivery adopted");
    let lost = count("another device adopted this delivery first");
    eprintln!("adoptions: {adopted}, races lost: {lost}");
    assert_eq!(
        adopted, n as usize,
        "adoptions: {adopted}, races lost: {lost}"
    );
    Ok(())
}

#[test]
fn bad_deliveries_get_clear_errors_and_store_nothing() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let app = cluster.server.add_app("mailer")?;
    let mut opts = cluster.daemon_opts(0);
    opts.extra_toml = "max_invalid_retries = 1\n".into();
    let a = DaemonProc::start(&env, "device-a", opts)?;
    let r = recipient_of(&a);

    // Refused by the server: not age, and another namespace than the app's.
    let resp = cluster.server.request(
        &app,
        "PUT",
        "/incoming/alice/plain",
        b"Subject: hi\r\n\r\nno age",
    )?;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text().contains("must be an age file"),
        "{}",
        resp.text()
    );
    let file = age_encrypt(&r, b"hello");
    let resp = cluster.server.request(
        &app,
        "PUT",
        "/incoming/alice/elsewhere?namespace=default",
        &file,
    )?;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(
        resp.text()
            .contains("may not deliver into namespace default"),
        "{}",
        resp.text()
    );
    for ns in ["MX", "default"] {
        let listed = cluster
            .server
            .list_ids(&cluster.users[0].token, "alice", ns)?;
        assert!(listed.is_empty(), "{ns}: {listed:?}");
    }

    // Accepted by the server (it cannot tell), refused by the device: a truncated file and
    // one encrypted to someone else fail verification and end FAILED_DOWNLOAD.
    let long = age_encrypt(&r, &message(9, 200_000));
    let truncated = &long[..long.len() - 1000];
    let foreign = age_encrypt(&other_recipient(), b"for someone else");
    for (id, body) in [("truncated", truncated), ("foreign", &foreign[..])] {
        let resp = cluster
            .server
            .request(&app, "PUT", &format!("/incoming/alice/{id}"), body)?;
        assert_eq!(resp.status, 201, "{}", resp.text());
    }
    let ids = vec!["truncated".to_string(), "foreign".to_string()];
    wait_status(&a, &ids, "FAILED_DOWNLOAD", 90)?;
    let rows = mx_rows(&a)?;
    for row in &rows {
        assert!(
            row.last_error.contains("invalid incoming delivery"),
            "{}: {}",
            row.id,
            row.last_error
        );
        let out = a.dir().join("bad.out");
        let got = a
            .ctl()
            .run(&["get", &row.id, "-n", "MX", "-o", &out.display().to_string()])?;
        assert_ne!(got.code, 0, "{} must not be handed out", row.id);
        assert!(!out.exists() || std::fs::read(&out).expect("read").is_empty());
    }
    // Nothing was adopted: the server still holds the two age files as delivered.
    for (id, body) in [("truncated", truncated), ("foreign", &foreign[..])] {
        let stored = cluster.server.stored_payload("alice", "MX", id)?;
        assert!(stored == body, "{id} was changed on the server");
    }
    Ok(())
}

/// `server/contrib/blobsync-deliver` (sh, curl and age; what the README gives mail servers):
/// a delivery through it reaches the device; a refused one exits 1 with the server's reason.
#[test]
fn the_delivery_script_delivers_and_reports_refusals() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let app = cluster.server.add_app("mailer")?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let token_file = env.subdir("mta")?.join("app.token");
    std::fs::write(&token_file, format!("{app}\n")).expect("write the token file");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/contrib/blobsync-deliver");
    let run = |extra: &[&str], input: &[u8]| {
        let mut child = Command::new("sh")
            .arg(&script)
            .args([
                "--url",
                &cluster.server.url(),
                "--user",
                "alice",
                "--app-token-file",
            ])
            .arg(&token_file)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        child.wait_with_output().expect("script ends")
    };
    // The recipient is published by the daemon's first cycle.
    wait_until(
        "the recipient to be published",
        Duration::from_secs(30),
        || {
            let r = cluster
                .server
                .request(&app, "GET", "/keys/alice/incoming", b"")?;
            Ok(if r.status == 200 {
                Poll::Ready(())
            } else {
                Poll::Pending(r.text())
            })
        },
    )?;
    let plain = message(42, 20_000);
    let out = run(&["--id", "viascript"], &plain);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "viascript");
    wait_status(&a, &["viascript".to_string()], "SYNCED", 60)?;
    assert!(get_plain(&a, "viascript") == plain);

    let out = run(&["--id", "x", "--namespace", "default"], b"hi");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 403") && err.contains("may not deliver"),
        "{err}"
    );
    let out = run(&["--user"], b"");
    assert_eq!(out.status.code(), Some(2), "usage error");
    Ok(())
}
