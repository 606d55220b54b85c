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

/// `blobctl key <op...> --config CFG --passphrase-file PASS`.
fn key_cmd(op: &[&str], cfg: &Path, pass: &str) -> Output {
    let cfg = cfg.display().to_string();
    let mut args = vec!["key"];
    args.extend_from_slice(op);
    args.extend(["--config", cfg.as_str(), "--passphrase-file", pass]);
    blobctl(&args)
}

/// Asserts `out` exited 0 (showing its output otherwise).
fn succeeded(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// A device set up by hand before its daemon ever runs: a config naming the server, the
/// user's token and a key file that does not exist yet.
struct NewDevice {
    cfg: PathBuf,
    key: PathBuf,
}

impl NewDevice {
    fn new(dir: &Path, cluster: &Cluster, u: usize) -> Self {
        let user = &cluster.users[u];
        std::fs::create_dir_all(dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{}\n", user.token)).unwrap();
        let key = dir.join("key");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "remote = \"{}\"\nuser = \"{}\"\ntoken_file = \"{}\"\nkey_file = \"{}\"\n\
                 data_dir = \"{}\"\n",
                cluster.server.url(),
                user.name,
                token_file.display(),
                key.display(),
                dir.join("data").display()
            ),
        )
        .unwrap();
        NewDevice { cfg, key }
    }

    fn backup(&self, pass: &str) -> Output {
        key_cmd(&["backup"], &self.cfg, pass)
    }

    fn restore(&self, pass: &str) -> Output {
        key_cmd(&["restore"], &self.cfg, pass)
    }

    /// `key restore` must be refused: exit 1, an error that says `says`, and the key file
    /// as it was (absent stays absent, another key stays untouched).
    fn restore_refused(&self, pass: &str, says: &str) {
        let before = std::fs::read(&self.key).ok();
        let out = self.restore(pass);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(says), "want {says:?}: {}", text(&out));
        assert_eq!(
            std::fs::read(&self.key).ok(),
            before,
            "a refused restore ({says}) changed {}",
            self.key.display()
        );
    }
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
    succeeded(&key_cmd(&["backup"], a.config_path(), &pass));
    let took = started.elapsed();
    eprintln!("key backup (Argon2id m=256 MiB, t=3, debug build) took {took:?}");
    // Again: the same key and passphrase are recognised, nothing changes.
    let again = key_cmd(&["backup"], a.config_path(), &pass);
    succeeded(&again);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already backed up"));

    // A new device: the server, the token and the passphrase; no key file.
    let b_setup = NewDevice::new(&env.subdir("device-b-setup")?, &cluster, 0);
    let wrong = pass_file(&src, "wrong", "not the passphrase at all");
    b_setup.restore_refused(&wrong, "wrong passphrase");
    succeeded(&b_setup.restore(&pass));
    assert_eq!(
        std::fs::read(&b_setup.key).unwrap(),
        std::fs::read(&cluster.users[0].key_file).unwrap(),
        "the restored key is the first device's"
    );
    // The new device starts with it and reads what the first one put.
    let mut opts = cluster.daemon_opts(0);
    opts.key_file = b_setup.key.clone();
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
    let fresh = NewDevice::new(&dir.join("fresh"), &cluster, 0);
    fresh.restore_refused(&pass, "no key backup");

    // Device 1 backs its key up.
    let one = NewDevice::new(&dir.join("one"), &cluster, 0);
    std::fs::copy(&user.key_file, &one.key).unwrap();
    succeeded(&one.backup(&pass));

    // Device 2 has another key: its backup meets the first one (412) and is refused.
    let two = NewDevice::new(&dir.join("two"), &cluster, 0);
    blobsync_tests::daemon::write_key_file(&two.key)?;
    let out = two.backup(&pass);
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
    succeeded(&fresh.restore(&pass));
    assert_eq!(
        std::fs::read(&fresh.key).unwrap(),
        std::fs::read(&one.key).unwrap()
    );
    // A restore onto a device holding another key leaves that key alone.
    two.restore_refused(&pass, "different storage key");

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
    let three = NewDevice::new(&dir.join("three"), &cluster, 0);
    // A flipped ciphertext byte fails the tag: indistinguishable from a wrong passphrase,
    // and said so.
    three.restore_refused(&pass, "altered");
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
    three.restore_refused(&pass, "corrupted");
    // `--replace` puts device 2's key there, and it restores.
    succeeded(&key_cmd(&["backup", "--replace"], &two.cfg, &pass));
    succeeded(&three.restore(&pass));
    assert_eq!(
        std::fs::read(&three.key).unwrap(),
        std::fs::read(&two.key).unwrap()
    );
    Ok(())
}
