//! blobsyncd against Soledad's own server (`server_kind = "soledad"`).
//!
//! `tests/python/soledad_server.py` runs the genuine Soledad 0.10.7 server code under Twisted:
//! `SoledadRealm` (its `BlobsResource` and `StreamingResource` on the filesystem backend)
//! behind its `SoledadSession` auth wrapper, with only the CouchDB token lookup swapped for an
//! in-memory one. Two blobsyncd devices of one user sync through it: every blob one uploads
//! comes down to the other and decrypts, deletions propagate both ways (Soledad's `deleted`
//! listing, no delete proofs), and `blobctl status` names the server kind. Then
//! `blobsync-server import-soledad` takes Soledad's directory over, and a third device syncs
//! the same blobs from blobsync-server.

mod soledad_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;

use blobsync_tests::daemon::write_key_file;
use blobsync_tests::env::{TestResult, lock};
use blobsync_tests::server::find_listen_addr;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{
    DaemonOpts, DaemonProc, HarnessError, RemoteSpec, ServerOpts, ServerProc, TestEnv,
};

const UUID: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "a-soledad-session-token";
const WAIT: Duration = Duration::from_secs(60);

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i * 131 + j * 7) % 251) as u8).collect()
}

/// Syncs `dev` until its rows satisfy `done` (a Soledad listing is full every cycle).
fn sync_until(
    dev: &DaemonProc,
    what: &str,
    done: impl Fn(&[blobsync_tests::ctl::BlobRow]) -> bool,
) -> TestResult {
    wait_until(what, WAIT, || {
        dev.ctl().sync_wait()?;
        let rows = dev.ctl().ls()?;
        Ok(if done(&rows) {
            Poll::Ready(())
        } else {
            Poll::Pending(blobsync_tests::converge::describe_rows(&rows))
        })
    })?;
    Ok(())
}

fn has(rows: &[blobsync_tests::ctl::BlobRow], ns: &str, id: &str) -> bool {
    rows.iter()
        .any(|r| r.namespace == ns && r.id == id && r.status == "SYNCED")
}

fn knows(rows: &[blobsync_tests::ctl::BlobRow], ns: &str, id: &str) -> bool {
    rows.iter().any(|r| r.namespace == ns && r.id == id)
}

/// Starts `soledad_server.py` with one user; returns its blobs dir and address.
fn start_soledad(env: &TestEnv, python: &Path) -> Result<(PathBuf, SocketAddr), HarnessError> {
    let blobs = env.subdir("soledad-blobs")?;
    let mut cmd = Command::new(python);
    cmd.arg("-W")
        .arg("ignore")
        .arg(soledad_common::python_dir().join("soledad_server.py"))
        .arg(&blobs)
        .arg(format!("{UUID}:{TOKEN}"));
    let slot = env.spawn("soledad-server", cmd)?;
    let addr = wait_until("the Soledad server to listen", WAIT, || {
        let (out, err) = lock(&slot).log_tails(50);
        if !lock(&slot).is_running() {
            return Err(HarnessError::protocol(
                "soledad_server.py",
                format!("exited\n{out}\n{err}"),
            ));
        }
        Ok(match find_listen_addr(&out) {
            Some(a) => Poll::Ready(a),
            None => Poll::Pending(format!("{out}{err}")),
        })
    })?;
    Ok((blobs, addr))
}

/// A device of the user on the Soledad server at `addr`.
fn soledad_device(
    env: &TestEnv,
    name: &str,
    addr: SocketAddr,
    key: &Path,
) -> Result<DaemonProc, HarnessError> {
    let mut o = DaemonOpts::new(
        RemoteSpec::Http {
            url: format!("http://{addr}"),
            user: UUID.into(),
            token: TOKEN.into(),
        },
        key,
    );
    o.extra_toml = "server_kind = \"soledad\"\n[namespaces.photos]\npolicy = \"eager\"\n".into();
    DaemonProc::start(env, name, o)
}

#[test]
fn two_devices_sync_through_a_genuine_soledad_server() -> TestResult {
    let Some(python) =
        soledad_common::venv_python().map_err(|e| HarnessError::protocol("venv", e))?
    else {
        return Ok(());
    };
    let env = TestEnv::new()?;
    let (blobs, addr) = start_soledad(&env, &python)?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let a = soledad_device(&env, "device-a", addr, &key)?;
    let b = soledad_device(&env, "device-b", addr, &key)?;

    // The status names the server kind and the weaker deletion guarantee.
    let st = a.ctl().status()?;
    let url = st["remote"]["url"].as_str().unwrap_or_default().to_owned();
    assert!(
        url.contains("soledad server") && url.contains("deletions"),
        "status remote: {st}"
    );

    // Small blobs (batched by the engine) and big ones, in two namespaces, from A.
    let blobs_a = [
        ("default", "small-1", 100),
        ("default", "small-2", 2_000),
        ("default", "small-3", 30_000),
        ("default", "big-1", 700_000),
        ("photos", "photo-1", 5_000),
        ("photos", "photo-2", 300_000),
    ];
    for (i, (ns, id, len)) in blobs_a.iter().enumerate() {
        let f = env.root().join(format!("in-{id}"));
        std::fs::write(&f, payload(i, *len)).map_err(|e| HarnessError::io("write input", e))?;
        a.ctl().put(&f, id, &["-n", ns])?;
    }
    sync_until(&a, "A to upload everything", |rows| {
        blobs_a.iter().all(|(ns, id, _)| has(rows, ns, id))
    })?;
    // Stored in Soledad's own layout, by Soledad's own code.
    let stored = blobs.join(UUID).join("default/b/big/big-1/big-1");
    assert!(stored.is_file(), "{} missing", stored.display());

    sync_until(&b, "B to download everything", |rows| {
        blobs_a.iter().all(|(ns, id, _)| has(rows, ns, id))
    })?;
    for (i, (ns, id, len)) in blobs_a.iter().enumerate() {
        let out = env.root().join(format!("out-{id}"));
        b.ctl().get_to(id, ns, &out)?;
        let got = std::fs::read(&out).map_err(|e| HarnessError::io("read output", e))?;
        assert!(got == payload(i, *len), "{ns}/{id} differs on B");
    }

    // Deletions both ways: Soledad's deleted listing removes the other device's copy.
    a.ctl().rm("small-1", "default")?.ok()?;
    b.ctl().rm("photo-2", "photos")?.ok()?;
    sync_until(&a, "A to apply B's deletion", |rows| {
        !knows(rows, "photos", "photo-2") && !knows(rows, "default", "small-1")
    })?;
    sync_until(&b, "B to apply A's deletion", |rows| {
        !knows(rows, "default", "small-1") && !knows(rows, "photos", "photo-2")
    })?;
    assert!(
        blobs
            .join(UUID)
            .join("default/s/sma/small-/small-1.deleted")
            .is_file()
    );
    // What is left is the same on both, and SYNCED.
    for dev in [&a, &b] {
        let rows = dev.ctl().ls()?;
        let mut ids: Vec<String> = rows
            .iter()
            .filter(|r| r.status == "SYNCED")
            .map(|r| format!("{}/{}", r.namespace, r.id))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                "default/big-1",
                "default/small-2",
                "default/small-3",
                "photos/photo-1"
            ]
        );
    }

    // Moving to blobsync-server: import Soledad's directory, and a third device (a plain
    // blobsync remote now) gets every blob, bytes and all.
    let mut server = ServerProc::start(&env, ServerOpts::default())?;
    let token = server.add_user(UUID)?;
    server.terminate(Duration::from_secs(10));
    let out = server.admin(&["import-soledad", &blobs.display().to_string()])?;
    assert!(
        out.contains("imported 4 blobs") && out.contains("2 Soledad tombstones not imported"),
        "{out}"
    );
    let again = server.admin(&["import-soledad", &blobs.display().to_string()])?;
    assert!(
        again.contains("imported 0 blobs; 4 already here"),
        "{again}"
    );
    server.restart(&env)?;
    let c = DaemonProc::start(
        &env,
        "device-c",
        DaemonOpts::new(
            RemoteSpec::Http {
                url: server.url(),
                user: UUID.into(),
                token,
            },
            &key,
        ),
    )?;
    sync_until(&c, "C to download the imported blobs", |rows| {
        ["big-1", "small-2", "small-3"]
            .iter()
            .all(|id| has(rows, "default", id))
    })?;
    for (i, (ns, id, len)) in blobs_a.iter().enumerate().filter(|(_, b)| b.2 > 2_000) {
        if *ns != "default" {
            continue;
        }
        let out = env.root().join(format!("out-c-{id}"));
        c.ctl().get_to(id, ns, &out)?;
        let got = std::fs::read(&out).map_err(|e| HarnessError::io("read output", e))?;
        assert!(got == payload(i, *len), "{ns}/{id} differs on C");
    }
    Ok(())
}

/// Soledad keeps no delete proofs, so its `deleted` listing deletes; the mass-deletion guard
/// still holds such a wave back until the user allows it.
#[test]
fn mass_deletion_on_a_soledad_server_is_held() -> TestResult {
    let Some(python) =
        soledad_common::venv_python().map_err(|e| HarnessError::protocol("venv", e))?
    else {
        return Ok(());
    };
    let env = TestEnv::new()?;
    let (_blobs, addr) = start_soledad(&env, &python)?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let a = soledad_device(&env, "device-a", addr, &key)?;
    const N: usize = 110;
    for i in 0..N {
        let f = env.root().join(format!("m{i}"));
        std::fs::write(&f, payload(i, 50)).map_err(|e| HarnessError::io("write input", e))?;
        a.ctl().put(&f, &format!("m{i}"), &[])?;
    }
    sync_until(&a, "A to upload everything", |rows| {
        rows.iter().filter(|r| r.status == "SYNCED").count() == N
    })?;
    // Someone with the token deletes 101 blobs on the server, Soledad's way.
    let auth = format!(
        "Token {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{UUID}:{TOKEN}"))
    );
    for i in 0..101 {
        let r = blobsync_tests::rawhttp::request(
            addr,
            "DELETE",
            &format!("/blobs/{UUID}/m{i}?namespace=default"),
            &[("Authorization", &auth)],
            b"",
        )?;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    a.ctl().sync_wait()?;
    let st = a.ctl().status()?;
    assert_eq!(
        st["last_cycle"]["deletions_held"].as_u64(),
        Some(101),
        "101 deletions held: {st}"
    );
    let synced = a
        .ctl()
        .ls()?
        .iter()
        .filter(|r| r.status == "SYNCED")
        .count();
    assert_eq!(synced, N, "nothing deleted while held");
    a.ctl()
        .run(&["sync", "--wait", "--allow-mass-delete"])?
        .ok()?;
    sync_until(&a, "A to apply the allowed deletions", |rows| {
        rows.len() == N - 101
    })?;
    Ok(())
}
