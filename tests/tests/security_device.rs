//! The device-side findings of the security review (issue 13), one regression test each,
//! through the real `blobsyncd` and `blobctl`:
//!
//! - 3: plain `http://` to a host that is not loopback is refused unless `allow_insecure_http`;
//! - 8: `PutPath(s)` takes regular files only, and a cancelled call stops its copy;
//! - 9: `SetLimits` keeps the config's bounds;
//! - 10: `blobctl` (and `connect_unix`) refuse a socket served by another user;
//! - 11: an open data dir is tightened at start (or refused when not ours); downloads are 0600;
//! - 14: `blobctl get -o` writes through devices, FIFOs and symlinks, replaces only regular
//!   files, creates `0600` files, understands a directory, and never leaves a temp behind.
//!
//! Several need root (a process as another uid, `chown`, `mknod`); CI runs them as root, and
//! they fail (never skip) when they cannot set up what they check.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use blobsync_tests::daemon::write_key_file;
use blobsync_tests::digest::{sha256_bytes, sha256_file, write_random_file};
use blobsync_tests::env::TestResult;
use blobsync_tests::wait::{Poll, scaled, wait_until};
use blobsync_tests::{CtlOutput, DaemonOpts, DaemonProc, RemoteSpec, TestEnv, bins, cluster};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {uid} {}: {e}", p.display()));
}

/// These tests set up what only root can; without it they must fail, not pass vacuously.
fn require_root(test: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} must run as root (CI does): it needs another uid, chown or mknod"
    );
}

const NOBODY: u32 = 65534;

/// A device on its own `file://` remote, fast clock.
fn device(env: &TestEnv, name: &str, remote: &Path, key: &Path, extra: &str) -> DaemonProc {
    let mut o = DaemonOpts::new(RemoteSpec::Dir(remote.to_path_buf()), key);
    o.time_scale = Some(cluster::time_scale());
    o.extra_toml = extra.to_owned();
    DaemonProc::start(env, name, o).expect("start the daemon")
}

/// The `{"error": {code, message}}` that `blobctl --json` prints on stderr.
fn error_of(out: &CtlOutput) -> (String, String) {
    let doc: serde_json::Value = serde_json::from_str(out.stderr.trim())
        .unwrap_or_else(|_| panic!("no JSON error: {out:?}"));
    let e = doc
        .get("error")
        .unwrap_or_else(|| panic!("no JSON error: {out:?}"));
    (
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Every stderr log of the process slot `name` so far, concatenated.
fn logs_of(env: &TestEnv, name: &str) -> String {
    let mut all = String::new();
    for generation in 1.. {
        let p = env
            .root()
            .join("logs")
            .join(format!("{name}.{generation}.stderr.log"));
        match std::fs::read_to_string(&p) {
            Ok(s) => all.push_str(&s),
            Err(_) => break,
        }
    }
    all
}

/// Runs `cmd` to its end, killing it (and failing) if it takes longer than `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let done = wait_until("the command to finish", scaled(limit), || {
        Ok(match child.try_wait().expect("try_wait") {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending("still running".into()),
        })
    });
    if done.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {limit:?}: it hangs");
    }
    child.wait_with_output().expect("collect output")
}

// Finding 3 ----------------------------------------------------------------------------------

#[test]
fn plain_http_to_a_remote_host_needs_allow_insecure_http_and_warns_at_every_start() -> TestResult {
    let env = TestEnv::new()?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    // 0.0.0.0 is not loopback by name, yet a connect to it never leaves this machine.
    let url = "http://0.0.0.0:9";
    let dir = env.subdir("refused")?;
    let config = dir.join("config.toml");
    let base = format!(
        "remote = \"{url}\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\nsocket = \"{}\"\n",
        key.display(),
        dir.join("data").display(),
        dir.join("run/s.sock").display()
    );
    std::fs::write(&config, &base).unwrap();
    let daemon = bins::bin_path(bins::DAEMON)?;
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&daemon);
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .env("HOME", &dir)
            .env_remove("RUST_LOG");
        run_bounded(cmd, Duration::from_secs(20))
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with {url}: {err}");
    assert!(
        err.contains("`remote`") && err.contains("cleartext"),
        "the refusal names the key and the risk: {err}"
    );
    assert!(
        err.contains("https://") && err.contains("allow_insecure_http = true"),
        "the refusal says what to do: {err}"
    );
    assert!(
        !dir.join("data").exists(),
        "a refused config creates nothing"
    );
    // The command-line override is held to the same rule.
    std::fs::write(&config, base.replace(url, "http://127.0.0.1:9")).unwrap();
    let out = run(&["--remote", "http://10.1.2.3:7070"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("allow_insecure_http"),
        "{err}"
    );

    // With the opt-in it starts, and says so at every start.
    let mut o = DaemonOpts::new(
        RemoteSpec::Http {
            url: url.into(),
            user: "alice".into(),
            token: "t0ken".into(),
        },
        &key,
    );
    o.extra_toml = "allow_insecure_http = true".into();
    let mut d = DaemonProc::start(&env, "insecure", o)?;
    d.restart(&env)?;
    let name = d.name().to_owned();
    let warned = |log: &str| log.matches("allow_insecure_http = true").count();
    wait_until(
        "the warning in both starts' logs",
        scaled(Duration::from_secs(10)),
        || {
            let log = logs_of(&env, &name);
            Ok(if warned(&log) >= 2 && log.contains("WARN") {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} warnings", warned(&log)))
            })
        },
    )?;
    Ok(())
}

// Finding 9 ----------------------------------------------------------------------------------

#[test]
fn set_limits_keeps_the_config_bounds() -> TestResult {
    let env = TestEnv::new()?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let d = device(
        &env,
        "limits",
        &env.subdir("remote")?,
        &key,
        "transfers = 5",
    );
    for bad in ["1000000000", "65"] {
        let out = d.ctl().run(&["limits", "--transfers", bad])?;
        assert_eq!(out.code, 2, "{out:?}");
        let (code, msg) = error_of(&out);
        assert_eq!(code, "INVALID_ARGUMENT", "{msg}");
        assert!(msg.contains(bad) && msg.contains("1..=64"), "{msg}");
    }
    let limits = d.ctl().run(&["limits"])?.ok_json()?;
    assert_eq!(
        limits["transfers"].as_u64(),
        Some(5),
        "a refused limit changes nothing: {limits}"
    );
    let ok = d.ctl().run(&["limits", "--transfers", "64"])?.ok_json()?;
    assert_eq!(ok["transfers"].as_u64(), Some(64), "{ok}");
    Ok(())
}

// Finding 8 ----------------------------------------------------------------------------------

#[test]
fn put_path_takes_regular_files_only_and_a_cancelled_put_stops_copying() -> TestResult {
    let env = TestEnv::new()?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let d = device(&env, "putpath", &env.subdir("remote")?, &key, "");
    let fifo = d.dir().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let good = d.dir().join("good");
    write_random_file(&good, 10_000, 8)?;
    let ctl = bins::bin_path(bins::CTL)?;
    let blobctl = |args: &[&str]| {
        let mut cmd = Command::new(&ctl);
        cmd.arg("--socket").arg(d.socket()).arg("--json").args(args);
        cmd
    };
    // One file (PutPath): a FIFO with no writer used to block a daemon thread forever,
    // /dev/zero to fill the disk.
    for (src, kind) in [(fifo.to_str().unwrap(), "FIFO"), ("/dev/zero", "device")] {
        let out = run_bounded(
            blobctl(&["put", "--by-path", src, "--id", "nope"]),
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{src}: {stderr}");
        assert!(
            stderr.contains("INVALID_ARGUMENT")
                && stderr.contains("must be a regular file")
                && stderr.contains(kind),
            "{src}: {stderr}"
        );
    }
    // Several (PutPaths): each refused alone, the regular file stored.
    let out = run_bounded(
        blobctl(&[
            "put",
            "--by-path",
            fifo.to_str().unwrap(),
            "/dev/zero",
            good.to_str().unwrap(),
        ]),
        Duration::from_secs(20),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v["blobs"].as_array().expect("blobs");
    assert_eq!(rows.len(), 3, "{v}");
    for row in &rows[..2] {
        assert_eq!(row["code"], "INVALID_ARGUMENT", "{v}");
        assert!(
            row["error"]
                .as_str()
                .unwrap()
                .contains("must be a regular file"),
            "{v}"
        );
    }
    assert!(rows[2].get("error").is_none(), "{v}");
    let stored: Vec<String> = d.ctl().ls()?.into_iter().map(|r| r.id).collect();
    assert_eq!(
        stored.len(),
        1,
        "only the regular file is stored: {stored:?}"
    );

    // Cancel: a big (sparse) file is being copied; the client dies; the copy must stop and
    // store nothing. Observed through the daemon's open payload file under its data dir.
    let huge = d.dir().join("huge");
    let size = 2u64 << 30;
    std::fs::File::create(&huge).unwrap().set_len(size).unwrap();
    let pid = d.pid().expect("daemon pid");
    let data = d.data_dir().to_path_buf();
    let open_payloads = || -> Vec<u64> {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        fds.flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| {
                    t.starts_with(data.join("blobs")) || t.starts_with(data.join("tmp"))
                })
            })
            .filter_map(|fd| std::fs::metadata(fd.path()).ok().map(|m| m.len()))
            .collect()
    };
    let mut client = blobctl(&["put", "--by-path", huge.to_str().unwrap(), "--id", "huge"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let under_way = wait_until(
        "the copy to be under way",
        scaled(Duration::from_secs(30)),
        || {
            let sizes = open_payloads();
            Ok(if sizes.iter().any(|&s| s >= 16 << 20) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("open payload sizes {sizes:?}"))
            })
        },
    );
    // Gone either way, so no child outlives the test.
    let _ = client.kill();
    client.wait().unwrap();
    under_way?;
    let mut largest = 0;
    wait_until(
        "the cancelled copy to stop",
        scaled(Duration::from_secs(10)),
        || {
            let sizes = open_payloads();
            largest = largest.max(sizes.iter().copied().max().unwrap_or(0));
            Ok(if sizes.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("still open, sizes {sizes:?}"))
            })
        },
    )?;
    assert!(largest < size, "the copy ran to the end ({largest} bytes)");
    let ids: Vec<String> = d.ctl().ls()?.into_iter().map(|r| r.id).collect();
    assert!(
        !ids.contains(&"huge".to_owned()),
        "a cancelled put stored {ids:?}"
    );
    Ok(())
}

// Finding 11 ---------------------------------------------------------------------------------

#[test]
fn an_open_data_dir_is_tightened_at_start_and_a_foreign_one_refused() -> TestResult {
    require_root("an_open_data_dir_is_tightened_at_start_and_a_foreign_one_refused");
    let env = TestEnv::new()?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let remote = env.subdir("remote")?;
    let mut a = device(&env, "tight-a", &remote, &key, "");
    let b = device(&env, "tight-b", &remote, &key, "");
    let src = a.dir().join("src");
    let sha = write_random_file(&src, 70_000, 11)?;
    a.ctl().put(&src, "doc1", &[])?;
    let payload = |d: &DaemonProc| d.data_dir().join("blobs/default/do/doc1");
    // A download (B) is created 0600, like a put (A).
    wait_until(
        "B to download doc1",
        scaled(Duration::from_secs(60)),
        || {
            // The payload is the stored blob (docs/local-store.md): B's copy is A's, byte for
            // byte, and it reads back as what was put.
            Ok(match std::fs::read(payload(&b)) {
                Ok(bytes) if bytes == std::fs::read(payload(&a)).unwrap_or_default() => {
                    let got = b.dir().join("got");
                    b.ctl().get_to("doc1", "default", &got)?;
                    if sha256_file(&got)? == sha {
                        Poll::Ready(())
                    } else {
                        Poll::Pending("read back other bytes".into())
                    }
                }
                _ => Poll::Pending("not yet".into()),
            })
        },
    )?;
    assert_eq!(mode_of(&payload(&b)), 0o600, "a downloaded payload");
    assert_eq!(mode_of(&payload(&a)), 0o600, "a put payload");
    assert_eq!(mode_of(b.data_dir()), 0o700);

    // What an older version (or a user's chmod) leaves: all of it open.
    a.terminate(Duration::from_secs(20));
    let store = a.data_dir().join("store.sqlite");
    for (p, m) in [
        (a.data_dir().to_path_buf(), 0o755),
        (payload(&a).parent().unwrap().to_path_buf(), 0o755),
        (payload(&a), 0o644),
        (store.clone(), 0o644),
    ] {
        chmod(&p, m);
    }
    a.restart(&env)?;
    for (p, m) in [
        (a.data_dir().to_path_buf(), 0o700),
        (payload(&a).parent().unwrap().to_path_buf(), 0o700),
        (payload(&a), 0o600),
        (store.clone(), 0o600),
    ] {
        assert_eq!(mode_of(&p), m, "{} after a restart", p.display());
    }
    let log = logs_of(&env, a.name());
    assert!(
        log.contains("WARN") && log.contains("tightened=4"),
        "each change is logged at warn: {log}"
    );

    // Something of another user's inside: chmod cannot make it private; refuse to start.
    // Only an open data dir lets another user put something there, and an open root is what
    // makes the daemon walk the whole tree (under a private root it checks the root's own
    // entries only: nothing beneath is within another user's reach).
    a.terminate(Duration::from_secs(20));
    chown(&payload(&a), NOBODY);
    chmod(a.data_dir(), 0o755);
    let err = a
        .restart(&env)
        .expect_err("started with a file of nobody's in its data dir");
    let msg = err.to_string();
    assert!(
        msg.contains(&payload(&a).display().to_string()) && msg.contains("uid 65534"),
        "the refusal names the file and its owner: {msg}"
    );
    Ok(())
}

// Finding 14 ---------------------------------------------------------------------------------

#[test]
fn get_output_writes_through_special_files_and_replaces_only_regular_ones() -> TestResult {
    require_root("get_output_writes_through_special_files_and_replaces_only_regular_ones");
    let env = TestEnv::new()?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let d = device(&env, "get-o", &env.subdir("remote")?, &key, "");
    let src = d.dir().join("src");
    let sha = write_random_file(&src, 300_000, 14)?;
    d.ctl().put(&src, "blob1", &[])?;
    let out = env.subdir("out")?;
    let get = |target: &Path| {
        d.ctl()
            .run(&["get", "blob1", "-o", target.to_str().unwrap()])
    };
    let no_part_left = |why: &str| {
        let parts = blobsync_tests::find_temp_files(&out);
        assert!(parts.is_empty(), "{why}: left {parts:?}");
    };

    // A character device (a private /dev/null: the real one must not be risked) stays one.
    let null = out.join("null");
    let c = std::ffi::CString::new(null.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; makedev(1, 3) is the null device.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
    get(&null)?.ok()?;
    assert!(
        std::fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_char_device(),
        "the device was replaced by a file"
    );

    // A FIFO: the reader at the other end gets the bytes; it stays a FIFO.
    let fifo = out.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::open(&fifo)
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        })
    };
    get(&fifo)?.ok()?;
    assert_eq!(
        sha256_bytes(&reader.join().unwrap()),
        sha,
        "through the FIFO"
    );
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // A symlink: its target gets the bytes (and keeps its mode); the link stays.
    let target = out.join("target");
    std::fs::write(&target, b"old").unwrap();
    chmod(&target, 0o640);
    let link = out.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    get(&link)?.ok()?;
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(sha256_file(&target)?, sha);
    assert_eq!(mode_of(&target), 0o640);

    // A new file is 0600; an existing regular file is replaced atomically (a new inode).
    let new = out.join("new");
    get(&new)?.ok()?;
    assert_eq!((sha256_file(&new)?, mode_of(&new)), (sha.clone(), 0o600));
    let old = out.join("old");
    std::fs::write(&old, b"old").unwrap();
    chmod(&old, 0o644);
    let ino = std::fs::metadata(&old).unwrap().ino();
    get(&old)?.ok()?;
    assert_eq!((sha256_file(&old)?, mode_of(&old)), (sha.clone(), 0o600));
    assert_ne!(
        std::fs::metadata(&old).unwrap().ino(),
        ino,
        "replaced, not rewritten"
    );

    // A directory means DIR/ID.
    let dir = out.join("dir");
    std::fs::create_dir(&dir).unwrap();
    get(&dir)?.ok()?;
    assert_eq!(sha256_file(&dir.join("blob1"))?, sha);
    no_part_left("after the successes");

    // Failures leave nothing: unknown blob, a bad range, DIR/ID a directory, no such dir.
    let missing = d
        .ctl()
        .run(&["get", "nope", "-o", out.join("x").to_str().unwrap()])?;
    assert_eq!(error_of(&missing).0, "NOT_FOUND", "{missing:?}");
    let bad_range = d.ctl().run(&[
        "get",
        "blob1",
        "--range",
        "999999999-",
        "-o",
        out.join("y").to_str().unwrap(),
    ])?;
    assert_ne!(bad_range.code, 0, "{bad_range:?}");
    std::fs::remove_file(dir.join("blob1")).unwrap();
    std::fs::create_dir(dir.join("blob1")).unwrap();
    let taken = get(&dir)?;
    assert_eq!(taken.code, 2, "{taken:?}");
    assert!(error_of(&taken).1.contains("is a directory"), "{taken:?}");
    let nodir = get(&out.join("no-such-dir/z"))?;
    assert_ne!(nodir.code, 0, "{nodir:?}");
    assert!(!out.join("x").exists() && !out.join("y").exists());
    no_part_left("after the failures");
    Ok(())
}

// Finding 10 ---------------------------------------------------------------------------------

/// Starts a real `blobsyncd` as uid 65534 whose socket is `socket`, everything else private
/// to that user.
fn start_daemon_as_nobody(env: &TestEnv, socket: &Path) -> PathBuf {
    let home = env.subdir("nobody").unwrap();
    let key = home.join("key");
    write_key_file(&key).unwrap();
    let config = home.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = \"{}\"\ndata_dir = \"{}\"\nsocket = \"{}\"\n",
            key.display(),
            home.join("data").display(),
            socket.display()
        ),
    )
    .unwrap();
    for p in [&home, &key, &config] {
        chown(p, NOBODY);
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("setpriv (util-linux) is needed to run a daemon as another uid");
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bins::bin_path(bins::DAEMON).unwrap())
        .arg("--config")
        .arg(&config)
        .env("HOME", &home)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NOTIFY_SOCKET");
    let slot = env.spawn("nobody-daemon", cmd).unwrap();
    wait_until(
        "nobody's daemon to listen",
        scaled(Duration::from_secs(20)),
        || {
            if blobsync_tests::env::lock(&slot).exit_status().is_some() {
                panic!(
                    "the daemon as uid 65534 exited: {}",
                    logs_of(env, "nobody-daemon")
                );
            }
            Ok(match std::os::unix::net::UnixStream::connect(socket) {
                Ok(_) => Poll::Ready(()),
                Err(e) => Poll::Pending(e.to_string()),
            })
        },
    )
    .unwrap();
    let owner = std::fs::metadata(socket).unwrap().uid();
    assert_eq!(owner, NOBODY, "the socket must be served by uid 65534");
    home
}

#[test]
fn blobctl_refuses_a_socket_served_by_another_user() -> TestResult {
    require_root("blobctl_refuses_a_socket_served_by_another_user");
    let env = TestEnv::new()?;
    // Others must reach their files under the env dir.
    chmod(env.root(), 0o755);
    // The finding: a shared sticky directory (like /tmp) where another user got there first.
    let shared = env.subdir("shared")?;
    chmod(&shared, 0o1777);
    let socket = shared.join("blobsyncd.sock");
    start_daemon_as_nobody(&env, &socket);

    // blobctl as root: the daemon would admit root, so only blobctl's own check stops this.
    let ctl = blobsync_tests::Blobctl::new(&socket)?;
    let out = ctl.run(&["status"])?;
    let (code, msg) = error_of(&out);
    assert_eq!((out.code, code.as_str()), (1, "UNTRUSTED"), "{out:?}");
    assert!(
        msg.contains("uid 65534 (nobody)") && msg.contains(socket.to_str().unwrap()),
        "the refusal names the socket and its owner: {msg}"
    );
    // A put sends nothing either: no blob reaches nobody's daemon.
    let src = env.root().join("secret");
    std::fs::write(&src, b"root's data").unwrap();
    let out = ctl.run(&["put", src.to_str().unwrap(), "--id", "secret"])?;
    assert_eq!(error_of(&out).0, "UNTRUSTED", "{out:?}");

    // A directory owned by another user is refused before connecting.
    let theirs = env.subdir("theirs")?;
    chown(&theirs, NOBODY);
    let via = theirs.join("s.sock");
    std::os::unix::fs::symlink(&socket, &via).unwrap();
    let out = blobsync_tests::Blobctl::new(&via)?.run(&["status"])?;
    let (code, msg) = error_of(&out);
    assert_eq!(code, "UNTRUSTED", "{out:?}");
    assert!(
        msg.contains("directory") && msg.contains("uid 65534"),
        "{msg}"
    );

    // Apps get the same check from the library.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(blobsync_proto::connect_unix(&socket))
        .expect_err("connect_unix accepted another user's daemon");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut found = false;
    while let Some(s) = source {
        found |= s.to_string().contains("uid 65534");
        source = s.source();
    }
    assert!(found, "{err:?}");
    Ok(())
}
