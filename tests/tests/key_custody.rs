//! Key custody (`key_store`, issue 16; docs/keys.md) with the real binaries:
//!
//! - `keyring`: against a real Secret Service, GNOME Keyring in a private D-Bus session
//!   (Debian's `gnome-keyring` and `dbus`, installed by `.ci/run`), unlocked with a known
//!   password on standard input: `blobctl key migrate --to keyring` moves the key there (and
//!   back), the daemon reads it from there; with no Secret Service the daemon says why and
//!   how to fix it, and exits 1. Without the packages the test is skipped, except under `CI`,
//!   where it fails.
//! - `credential`: the daemon reads `$CREDENTIALS_DIRECTORY/blobsync-key` (as the system
//!   unit's `LoadCredentialEncrypted=` provides it); without the variable, or without the
//!   file, it says so and exits 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, wait_until};
use blobsync_tests::{DaemonOpts, DaemonProc, RemoteSpec, TestEnv, bins, env_flag};

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A private session bus with GNOME Keyring's Secret Service on it, unlocked. Its processes
/// are the test env's: killed and reaped when it drops.
struct SecretService {
    address: String,
    home: PathBuf,
}

impl SecretService {
    /// Starts one, or `None` (the test skips) when the packages are missing outside CI.
    fn start(env: &TestEnv) -> TestResult<Option<Self>> {
        let missing: Vec<&str> = ["dbus-daemon", "dbus-send", "gnome-keyring-daemon"]
            .into_iter()
            .filter(|c| !have(c))
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "no Secret Service to test against: {} not installed (Debian: apt-get install \
                 dbus gnome-keyring; .ci/run does)",
                missing.join(", ")
            );
            if env_flag("CI") {
                panic!("{why}; under CI this test must run");
            }
            eprintln!("SKIP: {why}");
            return Ok(None);
        }
        let dir = env.subdir("secret-service")?;
        let home = dir.join("home");
        let runtime = dir.join("runtime");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&runtime).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.join("bus");
        let address = format!("unix:path={}", socket.display());
        let mut bus = Command::new("dbus-daemon");
        bus.args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"));
        env.spawn("dbus-daemon", bus)?;
        wait_until("the session bus", Duration::from_secs(10), || {
            Ok(if socket.exists() {
                Poll::Ready(())
            } else {
                Poll::Pending("no socket yet".into())
            })
        })?;
        // The known password on standard input unlocks (creates) the login keyring.
        let password = dir.join("password");
        std::fs::write(&password, "blobsync-test-keyring").unwrap();
        let mut keyring = Command::new("sh");
        keyring
            .arg("-c")
            .arg("exec gnome-keyring-daemon --foreground --unlock --components=secrets < \"$1\"")
            .arg("sh")
            .arg(&password);
        Self::session_env(&mut keyring, &address, &home, &runtime);
        env.spawn("gnome-keyring", keyring)?;
        wait_until(
            "org.freedesktop.secrets on the bus",
            Duration::from_secs(20),
            || {
                let out = Command::new("dbus-send")
                    .args([
                        &format!("--bus={address}"),
                        "--print-reply",
                        "--dest=org.freedesktop.DBus",
                        "/org/freedesktop/DBus",
                        "org.freedesktop.DBus.NameHasOwner",
                        "string:org.freedesktop.secrets",
                    ])
                    .output()
                    .expect("run dbus-send");
                Ok(
                    if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(text(&out))
                    },
                )
            },
        )?;
        Ok(Some(Self { address, home }))
    }

    fn session_env(cmd: &mut Command, address: &str, home: &Path, runtime: &Path) {
        cmd.env("DBUS_SESSION_BUS_ADDRESS", address)
            .env("HOME", home)
            .env("XDG_RUNTIME_DIR", runtime)
            .env("XDG_DATA_HOME", home.join(".local/share"));
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("DBUS_SESSION_BUS_ADDRESS".to_owned(), self.address.clone())]
    }
}

fn blobctl(args: &[&str], env: &[(String, String)]) -> Output {
    let mut c = Command::new(bins::bin_path(bins::CTL).expect("blobctl built"));
    c.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run blobctl")
}

/// Runs blobsyncd on `config` until it exits (it must, within 30 s): a start that fails.
fn failed_start(dev: &DaemonProc, env: &[(&str, Option<&str>)]) -> Output {
    let mut c = Command::new(bins::bin_path(bins::DAEMON).expect("blobsyncd built"));
    c.arg("--config")
        .arg(dev.config_path())
        .arg("--foreground")
        .env("HOME", dev.dir().join("home"))
        .env("XDG_RUNTIME_DIR", dev.dir().join("runtime"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let mut child = c.spawn().expect("spawn blobsyncd");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!("blobsyncd did not stop: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("reap")
}

fn put_and_read(dev: &DaemonProc, id: &str, bytes: &[u8]) -> TestResult {
    let src = dev.dir().join(format!("src-{id}"));
    std::fs::write(&src, bytes).unwrap();
    dev.ctl().put(&src, id, &[])?;
    let got = dev.dir().join(format!("got-{id}"));
    dev.ctl().get_to(id, "default", &got)?;
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    std::fs::remove_file(&got).unwrap();
    Ok(())
}

#[test]
fn the_keyring_store_holds_the_key_in_a_real_secret_service() -> TestResult {
    let env = TestEnv::new()?;
    let Some(ss) = SecretService::start(&env)? else {
        return Ok(());
    };
    let remote = env.subdir("remote")?;
    let key = env.root().join("device.key");
    blobsync_tests::daemon::write_key_file(&key)?;
    let original = std::fs::read_to_string(&key).unwrap();
    let mut opts = DaemonOpts::new(RemoteSpec::Dir(remote), &key);
    opts.env = ss.env();
    // The keyring entry is the config's user's.
    opts.extra_toml = "user = \"kr-user\"\n".into();
    let mut dev = DaemonProc::start(&env, "device", opts)?;
    put_and_read(&dev, "before", b"put with the key in a file")?;
    dev.terminate(Duration::from_secs(15));

    let cfg = dev.config_path().display().to_string();
    let out = blobctl(
        &["key", "migrate", "--to", "keyring", "--config", &cfg],
        &ss.env(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !key.exists(),
        "the key file is gone once the keyring holds the key"
    );
    let config = std::fs::read_to_string(dev.config_path()).unwrap();
    assert!(config.contains("key_store = \"keyring\""), "{config}");
    // The secret is in GNOME Keyring, as the key file's text.
    if have("secret-tool") {
        let mut c = Command::new("secret-tool");
        c.args(["lookup", "service", "blobsync", "username", "kr-user"])
            .env("DBUS_SESSION_BUS_ADDRESS", &ss.address)
            .env("HOME", &ss.home);
        let out = c.output().expect("run secret-tool");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            original.trim(),
            "{}",
            text(&out)
        );
    }
    // The daemon takes the key from the keyring and reads what it put before.
    dev.restart(&env)?;
    let got = dev.dir().join("got");
    dev.ctl().get_to("before", "default", &got)?;
    assert_eq!(std::fs::read(&got).unwrap(), b"put with the key in a file");
    put_and_read(&dev, "after", b"put with the key in the keyring")?;
    dev.terminate(Duration::from_secs(15));

    // Without a Secret Service: a clear error, exit 1.
    let nowhere = format!("unix:path={}", env.root().join("no-bus").display());
    let out = failed_start(&dev, &[("DBUS_SESSION_BUS_ADDRESS", Some(&nowhere))]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("OS keyring") && t.contains("Secret Service") && t.contains("key_store"),
        "says why and how to fix it: {t}"
    );

    // And back to the file.
    let out = blobctl(
        &["key", "migrate", "--to", "file", "--config", &cfg],
        &ss.env(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), original);
    let out = blobctl(
        &["key", "migrate", "--to", "file", "--config", &cfg],
        &ss.env(),
    );
    assert_eq!(out.status.code(), Some(2), "already there: {}", text(&out));
    dev.restart(&env)?;
    put_and_read(&dev, "file-again", b"and back")?;
    Ok(())
}

#[test]
fn the_credential_store_reads_the_credentials_directory() -> TestResult {
    let env = TestEnv::new()?;
    let remote = env.subdir("remote")?;
    let key = env.root().join("device.key");
    blobsync_tests::daemon::write_key_file(&key)?;
    let creds = env.subdir("credentials")?;
    std::fs::copy(&key, creds.join("blobsync-key")).unwrap();
    std::fs::remove_file(&key).unwrap();
    let mut opts = DaemonOpts::new(RemoteSpec::Dir(remote), &key);
    opts.extra_toml = "key_store = \"credential\"\n".into();
    opts.env = vec![(
        "CREDENTIALS_DIRECTORY".to_owned(),
        creds.display().to_string(),
    )];
    let mut dev = DaemonProc::start(&env, "device", opts)?;
    put_and_read(&dev, "c", b"sealed under the credential's key")?;
    assert!(!key.exists(), "no key file is made for a credential");
    dev.terminate(Duration::from_secs(15));

    let out = failed_start(&dev, &[("CREDENTIALS_DIRECTORY", None)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("CREDENTIALS_DIRECTORY") && t.contains("LoadCredentialEncrypted"),
        "{t}"
    );
    let empty = env.subdir("no-credentials")?;
    let out = failed_start(
        &dev,
        &[("CREDENTIALS_DIRECTORY", Some(&empty.display().to_string()))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("has no file"), "{}", text(&out));
    Ok(())
}

/// `key export --socket S` exports the key of the daemon at S (it says where its key is over
/// the socket), not the caller's default key; a named socket with no daemon is exit 3 with
/// what to do.
#[test]
fn key_export_exports_the_key_of_the_daemon_at_the_socket() -> TestResult {
    let env = TestEnv::new()?;
    let remote = env.subdir("remote")?;
    let (key_a, key_b) = (env.root().join("a.key"), env.root().join("b.key"));
    blobsync_tests::daemon::write_key_file(&key_a)?;
    blobsync_tests::daemon::write_key_file(&key_b)?;
    let a = DaemonProc::start(
        &env,
        "a",
        DaemonOpts::new(RemoteSpec::Dir(remote.clone()), &key_a),
    )?;
    let b = DaemonProc::start(&env, "b", DaemonOpts::new(RemoteSpec::Dir(remote), &key_b))?;
    // The caller's own default key (in its HOME) is a third one: never the one exported.
    let home = env.subdir("caller-home")?;
    blobsync_tests::daemon::write_key_file(&home.join(".config/blobsync/key"))?;
    let pass = env.root().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let caller = vec![
        ("HOME".to_owned(), home.display().to_string()),
        (
            "XDG_CONFIG_HOME".to_owned(),
            home.join(".config").display().to_string(),
        ),
        (
            "XDG_RUNTIME_DIR".to_owned(),
            home.join("run").display().to_string(),
        ),
    ];
    let s = |p: &Path| p.display().to_string();
    for (dev, key) in [(&a, &key_a), (&b, &key_b)] {
        let wrapped = env.root().join(format!("{}.export", dev.name()));
        let out = blobctl(
            &[
                "--socket",
                &s(dev.socket()),
                "key",
                "export",
                "--passphrase-file",
                &s(&pass),
                "-o",
                &s(&wrapped),
            ],
            &caller,
        );
        assert!(out.status.success(), "{}", text(&out));
        let imported = env.root().join(format!("{}.imported", dev.name()));
        let out = blobctl(
            &[
                "key",
                "import",
                &s(&wrapped),
                "--passphrase-file",
                &s(&pass),
                "--key-file",
                &s(&imported),
            ],
            &caller,
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            std::fs::read(&imported).unwrap(),
            std::fs::read(key).unwrap(),
            "key export --socket {} exported another key",
            dev.name()
        );
    }
    let out = blobctl(
        &[
            "--socket",
            &s(&env.root().join("nobody.sock")),
            "key",
            "export",
            "--passphrase-file",
            &s(&pass),
            "-o",
            &s(&env.root().join("none.export")),
        ],
        &caller,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("--key-file"), "{}", text(&out));
    assert!(!env.root().join("none.export").exists());
    Ok(())
}
