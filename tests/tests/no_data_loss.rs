//! Nothing is lost when the remote changes or forgets (docs/sync.md, "Deletions come only
//! from tombstones"; the trust model's promise 6), with real servers and daemons:
//!
//! - the README's own path: the embedded default remote, two puts, then a real server;
//! - a server restored from an old backup, and one wiped, while the devices are offline;
//! - a token thief (or the server) deleting everything without a device's delete proof;
//! - a real mass deletion from another device: held until the user allows it.
//!
//! In each, no device loses a blob it holds; what the server lost goes back up.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use blobsync_tests::cluster::time_scale;
use blobsync_tests::daemon::write_key_file;
use blobsync_tests::digest::{sha256_file, write_random_file};
use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, scaled, wait_until};
use blobsync_tests::{
    Cluster, DaemonOpts, DaemonProc, HarnessError, RemoteSpec, ServerOpts, ServerProc, TestEnv,
    env_number, full_size,
};
use serde_json::Value;

/// id -> SHA-256 of the plaintext.
type Blobs = BTreeMap<String, String>;

const WAIT: Duration = Duration::from_secs(60);

/// Puts `n` random small files as `{prefix}{i}` on `dev`; with `wait`, each until SYNCED.
fn put_blobs(dev: &DaemonProc, prefix: &str, n: usize, wait: bool) -> Result<Blobs, HarnessError> {
    let mut out = Blobs::new();
    let file = dev.dir().join("put-src");
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let sha = write_random_file(&file, 100 + (i as u64 * 37) % 3000, i as u64 + 1)?;
        let extra: &[&str] = if wait { &["--wait"] } else { &[] };
        dev.ctl().put(&file, &id, extra)?;
        out.insert(id, sha);
    }
    Ok(out)
}

/// Waits until `dev` holds every blob of `want` SYNCED, then reads each back and compares.
fn wait_holds(dev: &DaemonProc, want: &Blobs) -> TestResult {
    wait_until(
        &format!("{} holds all SYNCED", dev.name()),
        scaled(WAIT),
        || {
            let rows = dev.ctl().ls()?;
            let synced: Vec<&str> = rows
                .iter()
                .filter(|r| r.status == "SYNCED")
                .map(|r| r.id.as_str())
                .collect();
            let missing: Vec<&String> = want
                .keys()
                .filter(|id| !synced.contains(&id.as_str()))
                .collect();
            Ok(if missing.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("not SYNCED yet: {missing:?}"))
            })
        },
    )?;
    let out = dev.dir().join("get-out");
    for (id, sha) in want {
        let _ = std::fs::remove_file(&out);
        dev.ctl().get_to(id, "default", &out)?;
        assert_eq!(&sha256_file(&out)?, sha, "{}: {id} read back", dev.name());
    }
    Ok(())
}

/// Waits until the server lists every id of `want` for `user`.
fn wait_server_lists(server: &ServerProc, token: &str, user: &str, want: &Blobs) -> TestResult {
    wait_until("the server lists every blob", scaled(WAIT), || {
        let ids = server.list_ids(token, user, "default")?;
        let missing: Vec<&String> = want.keys().filter(|id| !ids.contains(id)).collect();
        Ok(if missing.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("missing on the server: {missing:?}"))
        })
    })?;
    Ok(())
}

/// The alarms in `status --json`: (kind, count).
fn alarms(dev: &DaemonProc) -> Result<Vec<(String, u64)>, HarnessError> {
    let s = dev.ctl().status()?;
    Ok(s.get("alarms")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["kind"].as_str().unwrap_or_default().to_owned(),
                        x["count"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn http(server: &ServerProc, user: &str, token: &str) -> RemoteSpec {
    RemoteSpec::Http {
        url: server.url(),
        user: user.to_owned(),
        token: token.to_owned(),
    }
}

fn copy_dir(from: &Path, to: &Path) -> TestResult {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| HarnessError::protocol("cp -a", e.to_string()))?;
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
    Ok(())
}

#[test]
fn the_readmes_path_from_the_embedded_default_to_a_server_loses_nothing() -> TestResult {
    let env = TestEnv::new()?;
    let key = env.subdir("keys")?.join("alice.key");
    write_key_file(&key)?;
    // 1. The README's first command: no config, the embedded file:// remote.
    let mut opts = DaemonOpts::new(RemoteSpec::Default, &key);
    opts.time_scale = Some(time_scale());
    let mut a = DaemonProc::start(&env, "a", opts)?;
    let blobs = put_blobs(&a, "one", 2, true)?;
    assert!(
        a.data_dir().join("remote").exists(),
        "synced to the embedded default"
    );
    // 2. Then "point it at a server": remote, user and token_file in the config.
    let server = ServerProc::start(&env, ServerOpts::default())?;
    let token = server.add_user("alice")?;
    a.switch_remote(&env, http(&server, "alice", &token))?;
    // The new server gets both; the device keeps both.
    wait_server_lists(&server, &token, "alice", &blobs)?;
    wait_holds(&a, &blobs)?;
    let kinds: Vec<String> = alarms(&a)?.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"remote_changed".to_owned()), "{kinds:?}");
    // Several full listings later, still nothing deleted.
    for _ in 0..3 {
        a.ctl().run(&["sync", "--wait"])?.ok()?;
    }
    wait_holds(&a, &blobs)?;
    // A second device of the user gets them from the server.
    let mut o = DaemonOpts::new(http(&server, "alice", &token), &key);
    o.time_scale = Some(time_scale());
    let b = DaemonProc::start(&env, "b", o)?;
    wait_holds(&b, &blobs)?;
    Ok(())
}

#[test]
fn a_server_restored_from_an_old_backup_or_wiped_costs_no_device_a_blob() -> TestResult {
    let env = TestEnv::new()?;
    let mut cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let mut a = cluster.start_device(&env, "a", 0)?;
    let mut b = cluster.start_device(&env, "b", 0)?;
    let n = env_number("BLOBSYNC_TEST_LOSS_N", if full_size() { 200 } else { 6 });
    let mut all = put_blobs(&a, "early", n, true)?;
    wait_holds(&b, &all)?;
    // A backup of the server's data, taken while it was stopped (a consistent copy).
    let data = cluster.server.data_dir().to_path_buf();
    let backup = env.subdir("backup")?.join("data");
    cluster.server.terminate(Duration::from_secs(10));
    copy_dir(&data, &backup)?;
    cluster.server.restart(&env)?;
    let later = put_blobs(&a, "late", n, true)?;
    all.extend(later);
    wait_holds(&b, &all)?;

    // The provider restores the old backup while both devices are offline: the server has
    // lost every "late" blob and knows nothing of them (no tombstones), same instance id.
    a.terminate(Duration::from_secs(10));
    b.terminate(Duration::from_secs(10));
    cluster.server.terminate(Duration::from_secs(10));
    std::fs::remove_dir_all(&data).map_err(|e| HarnessError::protocol("rm", e.to_string()))?;
    copy_dir(&backup, &data)?;
    cluster.server.restart(&env)?;
    a.restart(&env)?;
    b.restart(&env)?;
    let token = cluster.users[0].token.clone();
    wait_server_lists(&cluster.server, &token, "alice", &all)?;
    wait_holds(&a, &all)?;
    wait_holds(&b, &all)?;

    // Then the server is wiped altogether (a new, empty server at the same address).
    a.terminate(Duration::from_secs(10));
    b.terminate(Duration::from_secs(10));
    cluster.server.terminate(Duration::from_secs(10));
    std::fs::remove_dir_all(&data).map_err(|e| HarnessError::protocol("rm", e.to_string()))?;
    std::fs::create_dir_all(&data).map_err(|e| HarnessError::protocol("mkdir", e.to_string()))?;
    let token = cluster.server.add_user("alice")?;
    cluster.server.restart(&env)?;
    a.switch_remote(&env, http(&cluster.server, "alice", &token))?;
    b.switch_remote(&env, http(&cluster.server, "alice", &token))?;
    wait_server_lists(&cluster.server, &token, "alice", &all)?;
    wait_holds(&a, &all)?;
    wait_holds(&b, &all)?;
    for dev in [&a, &b] {
        let kinds: Vec<String> = alarms(dev)?.into_iter().map(|(k, _)| k).collect();
        assert!(
            kinds.contains(&"remote_changed".to_owned()),
            "{}: {kinds:?}",
            dev.name()
        );
    }
    Ok(())
}

#[test]
fn tombstones_without_a_devices_proof_delete_nothing_and_the_blobs_go_back_up() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "a", 0)?;
    let b = cluster.start_device(&env, "b", 0)?;
    let n = env_number("BLOBSYNC_TEST_LOSS_N", if full_size() { 200 } else { 8 });
    let blobs = put_blobs(&a, "x", n, true)?;
    wait_holds(&b, &blobs)?;
    // Someone with the token (or the server itself) deletes everything, without the proof
    // only the user's devices can make.
    let token = &cluster.users[0].token;
    for id in blobs.keys() {
        let r = cluster.server.request(
            token,
            "DELETE",
            &format!("/blobs/alice/{id}?namespace=default"),
            b"",
        )?;
        assert_eq!(r.status, 200, "{id}");
    }
    // Nothing is deleted on the devices; the blobs go back up and stay.
    wait_server_lists(&cluster.server, token, "alice", &blobs)?;
    wait_holds(&a, &blobs)?;
    wait_holds(&b, &blobs)?;
    let raised = alarms(&a)?
        .into_iter()
        .chain(alarms(&b)?)
        .any(|(k, _)| k == "unproven_tombstone");
    assert!(raised, "an unproven_tombstone alarm on a device");
    Ok(())
}

#[test]
fn a_mass_deletion_from_another_device_is_held_until_the_user_allows_it() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "a", 0)?;
    let mut b = cluster.start_device(&env, "b", 0)?;
    let n = env_number("BLOBSYNC_TEST_MASS_N", if full_size() { 1000 } else { 150 });
    // More than max(100, 25 %) of the namespace.
    let del = n * 4 / 5;
    let blobs = put_blobs(&a, "m", n, false)?;
    wait_holds(&a, &blobs)?;
    wait_holds(&b, &blobs)?;
    // B is offline while A deletes (a cycle that lists fewer deletions is below the guard).
    b.terminate(Duration::from_secs(10));
    let gone: Vec<String> = blobs.keys().take(del).cloned().collect();
    for id in &gone {
        a.ctl().rm(id, "default")?.ok()?;
    }
    let token = &cluster.users[0].token;
    wait_until("A's deletions reach the server", scaled(WAIT), || {
        let left = cluster.server.list_ids(token, "alice", "default")?.len();
        Ok(if left == n - del {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{left} listed"))
        })
    })?;
    // B sees them all (proven by A), but holds them: nothing is deleted, an alarm says why.
    b.restart(&env)?;
    let held = wait_until("B holds the deletions", scaled(WAIT), || {
        b.ctl().run(&["sync", "--wait"])?.ok()?;
        let held: Vec<(String, u64)> = alarms(&b)?
            .into_iter()
            .filter(|(k, _)| k == "mass_delete_held")
            .collect();
        Ok(match held.first() {
            Some((_, c)) => Poll::Ready(*c),
            None => Poll::Pending("no mass_delete_held alarm".into()),
        })
    })?;
    assert_eq!(held, del as u64);
    assert_eq!(b.ctl().ls()?.len(), n, "nothing deleted while held");
    let text = b.ctl().run_opts(&["status"], false)?.ok()?;
    assert!(
        text.stdout.contains("--allow-mass-delete"),
        "status says what to do: {}",
        text.stdout
    );
    // The user allows it: applied, alarm gone.
    b.ctl()
        .run(&["sync", "--wait", "--allow-mass-delete"])?
        .ok()?;
    let rows = b.ctl().ls()?;
    assert_eq!(rows.len(), n - del, "{} rows left", rows.len());
    assert!(rows.iter().all(|r| !gone.contains(&r.id)));
    assert!(!alarms(&b)?.iter().any(|(k, _)| k == "mass_delete_held"));
    Ok(())
}
