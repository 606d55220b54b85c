//! Key backup on the server (issue 16; docs/keys.md), end to end through a real
//! `blobsync-server`: `blobctl key backup` on a device, `blobctl key restore` on a new device
//! that then reads the first device's blobs; and each failure a clear error that writes
//! nothing: a wrong passphrase, no backup, a conflicting backup (HTTP 412), a corrupted one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{Cluster, DaemonProc, ServerOpts, TestEnv, bins, rawhttp};

fn blobctl(args: &[&str]) -> Output {
    Command::new(bins::bin_path(bins::CTL).expect("blobctl built"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run blobctl")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A device's config before its daemon runs: the server, the user's token, a key file that
/// does not exist yet.
fn new_device_config(dir: &Path, server: &str, user: &str, token: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let key = dir.join("key");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "remote = \"{server}\"\nuser = \"{user}\"\ntoken_file = \"{}\"\nkey_file = \"{}\"\n\
             data_dir = \"{}\"\n",
            token_file.display(),
            key.display(),
            dir.join("data").display()
        ),
    )
    .unwrap();
    (cfg, key)
}

fn pass_file(dir: &Path, name: &str, pass: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{pass}\n")).unwrap();
    p.display().to_string()
}

#[test]
fn a_new_device_restores_the_key_from_the_server_and_reads_the_blobs() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let src = env.subdir("src")?;
    std::fs::write(src.join("f"), b"what the second device must read").unwrap();
    a.ctl().put(&src.join("f"), "f", &[])?;
    a.ctl().sync_wait()?;
    let pass = pass_file(&src, "pass", "correct horse battery staple");

    let started = Instant::now();
    let out = blobctl(&[
        "key",
        "backup",
        "--config",
        &a.config_path().display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("key backup (Argon2id m=256 MiB, t=3, debug build) took {took:?}");
    // Again: the same key and passphrase are recognised, nothing changes.
    let again = blobctl(&[
        "key",
        "backup",
        "--config",
        &a.config_path().display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already backed up"));

    // A new device: the server, the token and the passphrase; no key file.
    let user = &cluster.users[0];
    let b_dir = env.subdir("device-b-setup")?;
    let (b_cfg, b_key) = new_device_config(&b_dir, &cluster.server.url(), &user.name, &user.token);
    // A wrong passphrase first: a clear error, nothing written.
    let wrong = pass_file(&src, "wrong", "not the passphrase at all");
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &b_cfg.display().to_string(),
        "--passphrase-file",
        &wrong,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    assert!(!b_key.exists(), "nothing written on a wrong passphrase");
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &b_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&b_key).unwrap(),
        std::fs::read(&user.key_file).unwrap(),
        "the restored key is the first device's"
    );
    // The new device starts with it and reads what the first one put.
    let mut opts = cluster.daemon_opts(0);
    opts.key_file = b_key.clone();
    let b = DaemonProc::start(&env, "device-b", opts)?;
    wait_until("b to download f", Duration::from_secs(60), || {
        b.ctl().sync_wait()?;
        let rows = b.ctl().ls()?;
        Ok(
            if rows.iter().any(|r| r.id == "f" && r.status == "SYNCED") {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{rows:?}"))
            },
        )
    })?;
    let got = b.dir().join("got");
    b.ctl().get_to("f", "default", &got)?;
    assert_eq!(
        std::fs::read(&got).unwrap(),
        b"what the second device must read"
    );
    Ok(())
}

#[test]
fn no_backup_a_conflicting_backup_and_a_corrupted_one_are_clear_errors() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["bob"], ServerOpts::default())?;
    let user = &cluster.users[0];
    let dir = env.subdir("setup")?;
    let pass = pass_file(&dir, "pass", "a long enough passphrase");

    // No backup yet.
    let (fresh_cfg, fresh_key) = new_device_config(
        &dir.join("fresh"),
        &cluster.server.url(),
        &user.name,
        &user.token,
    );
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &fresh_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no key backup"), "{}", text(&out));
    assert!(!fresh_key.exists());

    // Device 1 backs its key up.
    let (one_cfg, one_key) = new_device_config(
        &dir.join("one"),
        &cluster.server.url(),
        &user.name,
        &user.token,
    );
    std::fs::copy(&user.key_file, &one_key).unwrap();
    let out = blobctl(&[
        "key",
        "backup",
        "--config",
        &one_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Device 2 has another key: its backup meets the first one (412) and is refused.
    let (two_cfg, two_key) = new_device_config(
        &dir.join("two"),
        &cluster.server.url(),
        &user.name,
        &user.token,
    );
    blobsync_tests::daemon::write_key_file(&two_key)?;
    let out = blobctl(&[
        "key",
        "backup",
        "--config",
        &two_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("412") && t.contains("already holds a key backup"),
        "{t}"
    );
    assert!(
        t.contains("key restore") && t.contains("--replace"),
        "says what to do: {t}"
    );
    // The server still holds device 1's key.
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &fresh_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&fresh_key).unwrap(),
        std::fs::read(&one_key).unwrap()
    );
    // A restore onto a device holding another key writes nothing.
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &two_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("different storage key"),
        "{}",
        text(&out)
    );

    // The server's copy gets corrupted (a byte of its ciphertext flipped, through the API).
    let addr = cluster.server.addr();
    let path = format!("/keys/{}/storage", user.name);
    let auth = format!("Bearer {}", user.token);
    let got = rawhttp::request(addr, "GET", &path, &[("Authorization", &auth)], b"")?;
    assert_eq!(got.status, 200);
    let etag = got.header("etag").expect("an ETag").to_owned();
    let mut body = got.body.clone();
    let at = body.len() - 10;
    body[at] = if body[at] == b'0' { b'1' } else { b'0' };
    let put = rawhttp::request(
        addr,
        "PUT",
        &path,
        &[("Authorization", &auth), ("If-Match", &etag)],
        &body,
    )?;
    assert!(put.status / 100 == 2, "{} {}", put.status, put.text());
    let (cfg3, key3) = new_device_config(
        &dir.join("three"),
        &cluster.server.url(),
        &user.name,
        &user.token,
    );
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &cfg3.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // A flipped ciphertext byte fails the tag: indistinguishable from a wrong passphrase,
    // and said so.
    assert!(text(&out).contains("altered"), "{}", text(&out));
    assert!(!key3.exists());
    // Garbage that is no backup at all.
    let got = rawhttp::request(addr, "GET", &path, &[("Authorization", &auth)], b"")?;
    let etag = got.header("etag").expect("an ETag").to_owned();
    let put = rawhttp::request(
        addr,
        "PUT",
        &path,
        &[("Authorization", &auth), ("If-Match", &etag)],
        b"\x00\x01 not a key backup",
    )?;
    assert!(put.status / 100 == 2, "{} {}", put.status, put.text());
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &cfg3.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("corrupted"), "{}", text(&out));
    assert!(!key3.exists());
    // `--replace` puts device 2's key there, and it restores.
    let out = blobctl(&[
        "key",
        "backup",
        "--replace",
        "--config",
        &two_cfg.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = blobctl(&[
        "key",
        "restore",
        "--config",
        &cfg3.display().to_string(),
        "--passphrase-file",
        &pass,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&key3).unwrap(),
        std::fs::read(&two_key).unwrap()
    );
    Ok(())
}
