//! End to end over the real control socket: a real `blobsyncd` (on a temp dir, with a
//! `file://` remote unless a test needs the HTTP server) driven by the real `blobctl`, by the
//! generated Rust gRPC client for what blobctl cannot send, and by a Python client that only
//! knows the socket (reflection).
//!
//! Build the binaries first: `cargo build --workspace --bins` (the harness says so if they
//! are missing).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobsync_proto as pb;
use blobsync_tests::daemon::write_key_file;
use blobsync_tests::{DaemonOpts, DaemonProc, RemoteSpec, TestEnv, bins};
use serde_json::Value;

/// A daemon syncing to a `file://` remote in the env, fast clock.
fn start_daemon(env: &TestEnv, name: &str) -> DaemonProc {
    let key = env.root().join(format!("{name}.key"));
    write_key_file(&key).unwrap();
    let remote = env.subdir(&format!("{name}-remote")).unwrap();
    let mut opts = DaemonOpts::new(RemoteSpec::Dir(remote), &key);
    opts.time_scale = Some(0.01);
    DaemonProc::start(env, name, opts).unwrap()
}

fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_blobctl"))
}

/// Runs blobctl against `socket` and returns (exit code, stdout, stderr).
fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs blobctl with `--json`, asserts exit 0 and returns the parsed document.
fn ctl_json(socket: &Path, args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (code, out, err) = ctl(socket, &full);
    assert_eq!(code, 0, "blobctl {args:?} failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("blobctl {args:?}: not JSON ({e}): {out}"))
}

/// The error document blobctl prints on stderr with `--json`.
fn ctl_json_err(socket: &Path, args: &[&str]) -> (i32, Value) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (code, out, err) = ctl(socket, &full);
    assert_ne!(code, 0, "blobctl {args:?} should fail: {out}");
    let doc = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("blobctl {args:?}: stderr not JSON ({e}): {err}"));
    (code, doc)
}

fn write_file(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

/// Waits until `blobctl ls` shows `id` with `status`.
fn wait_status(socket: &Path, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = ctl_json(socket, &["ls"]);
        if let Some(b) = ls["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id && b["status"] == status)
        {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {ls}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the daemon whose command line names `config`.
fn daemon_pid(d: &DaemonProc) -> u32 {
    let needle = d.config_path().display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with(&bins::bin_path(bins::DAEMON).unwrap().display().to_string())
            && cmd.contains(&needle)
        {
            return pid;
        }
    }
    panic!("no blobsyncd process with {needle}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn no_daemon_exits_3_naming_the_socket_and_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-here.sock");
    for args in [&["status"][..], &["ls"], &["put", "-"], &["version"]] {
        let (code, _out, err) = ctl(&sock, args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(&sock.display().to_string()), "{err}");
        assert!(err.contains("blobsyncd --foreground"), "{err}");
    }
    let (code, doc) = ctl_json_err(&sock, &["status"]);
    assert_eq!(code, 3);
    assert_eq!(doc["error"]["code"], "UNREACHABLE");
}

#[test]
fn usage_errors_exit_2_without_a_daemon() {
    let sock = Path::new("/nonexistent/blobsyncd.sock");
    for args in [
        &["priority", "x", "asap"][..],
        &["get", "x", "--range", "5-2"],
        &["retry"],
        &["limits", "--up", "fast"],
        &["frobnicate"],
    ] {
        let (code, _, err) = ctl(sock, args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, out, _) = ctl(sock, &["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("blobctl"), "{out}");
}

#[test]
fn put_get_ls_rm_with_json_and_tables() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "basic");
    let sock = d.socket();
    let file = env.root().join("in.bin");
    let data = write_file(&file, 300_000, 7);

    let put = ctl_json(
        sock,
        &[
            "put",
            file.to_str().unwrap(),
            "--id",
            "doc-1",
            "-n",
            "docs",
            "--priority",
            "high",
        ],
    );
    assert_eq!(put["namespace"], "docs");
    assert_eq!(put["id"], "doc-1");
    assert_eq!(put["size"], 300_000);
    assert!(
        put["status"] == "PENDING_UPLOAD" || put["status"] == "SYNCED",
        "{put}"
    );
    assert_eq!(put["priority"], "HIGH");

    // A random id when none is given.
    let anon = ctl_json(sock, &["put", file.to_str().unwrap()]);
    assert_eq!(anon["id"].as_str().unwrap().len(), 32, "{anon}");
    assert_eq!(anon["namespace"], "default");

    let ls = ctl_json(sock, &["ls", "-n", "docs"]);
    let blobs = ls["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 1, "{ls}");
    for k in [
        "namespace",
        "id",
        "size",
        "status",
        "priority",
        "attempts",
        "next_attempt",
        "last_error",
    ] {
        assert!(blobs[0].get(k).is_some(), "ls row lacks {k}: {ls}");
    }

    let out = env.root().join("out.bin");
    ctl_json(
        sock,
        &["get", "doc-1", "-n", "docs", "-o", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // A range, inclusive on the command line, to a file and to stdout.
    let part = env.root().join("part.bin");
    let g = ctl_json(
        sock,
        &[
            "get",
            "doc-1",
            "-n",
            "docs",
            "--range",
            "1000-70999",
            "-o",
            part.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (g["start"].as_u64(), g["length"].as_u64()),
        (Some(1000), Some(70_000))
    );
    assert_eq!(std::fs::read(&part).unwrap(), &data[1000..71_000]);
    let raw = Command::new(ctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "get",
            "doc-1",
            "-n",
            "docs",
            "--range",
            "299990-",
        ])
        .output()
        .unwrap();
    assert!(raw.status.success());
    assert_eq!(raw.stdout, &data[299_990..]);

    // Human output: an aligned table with binary sizes.
    let (code, table, _) = ctl(sock, &["ls", "-n", "docs"]);
    assert_eq!(code, 0);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAMESPACE") && header.contains("STATUS"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.contains("doc-1") && row.contains("293.0 KiB"),
        "{table}"
    );
    assert_eq!(
        header.find("SIZE").map(|i| i + 4),
        row.find("KiB").map(|i| i + 3),
        "sizes right-aligned under SIZE:\n{table}"
    );

    let rm = ctl_json(sock, &["rm", "doc-1", "-n", "docs"]);
    assert_eq!(rm["id"], "doc-1");
    let (code, doc) = ctl_json_err(sock, &["get", "nope", "-o", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "NOT_FOUND");
    // A failed get leaves no file behind and does not touch an existing one.
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(!env.root().join("out.bin.blobctl-part").exists());
}

#[test]
fn putting_an_existing_id_is_already_exists() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "dup");
    let file = env.root().join("f");
    write_file(&file, 10, 1);
    ctl_json(d.socket(), &["put", file.to_str().unwrap(), "--id", "same"]);
    let (code, doc) = ctl_json_err(d.socket(), &["put", file.to_str().unwrap(), "--id", "same"]);
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "ALREADY_EXISTS");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("same"),
        "{doc}"
    );
}

#[test]
fn put_of_several_files_stores_each_and_reports_each() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "many");
    let sock = d.socket();
    let files: Vec<PathBuf> = (0..3u8)
        .map(|i| {
            let f = env.root().join(format!("f{i}"));
            write_file(&f, 100 + i as usize, i);
            f
        })
        .collect();
    let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();

    // --by-path: one PutPaths call.
    let mut args = vec!["put", "--by-path", "-n", "docs"];
    args.extend(&names);
    let doc = ctl_json(sock, &args);
    let blobs = doc["blobs"].as_array().expect("a blobs array");
    assert_eq!(blobs.len(), 3, "{doc}");
    for (b, (f, i)) in blobs.iter().zip(names.iter().zip(0u64..)) {
        assert_eq!(b["file"], *f, "{doc}");
        assert_eq!(b["size"], 100 + i, "{doc}");
        assert_eq!(b["namespace"], "docs", "{doc}");
    }
    let ls = ctl_json(sock, &["ls", "-n", "docs"]);
    assert_eq!(ls["blobs"].as_array().unwrap().len(), 3, "{ls}");

    // Streamed, with one file missing: the others are stored, the run fails with exit 1 and
    // says which file was refused.
    let missing = env.root().join("missing");
    let (code, out, err) = ctl(
        sock,
        &[
            "--json",
            "put",
            names[0],
            missing.to_str().unwrap(),
            names[2],
        ],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let blobs = doc["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 3, "{doc}");
    assert!(
        blobs[0]["id"].is_string() && blobs[2]["id"].is_string(),
        "{doc}"
    );
    assert_eq!(blobs[1]["file"], missing.to_str().unwrap(), "{doc}");
    assert!(
        blobs[1]["error"].as_str().unwrap().contains("missing"),
        "{doc}"
    );
    let ls = ctl_json(sock, &["ls", "-n", "default"]);
    assert_eq!(ls["blobs"].as_array().unwrap().len(), 2, "{ls}");

    // Regular files without --by-path: the daemon reads them too (the fast path), and the
    // report is the same.
    let mut args = vec!["put", "-n", "auto"];
    args.extend(&names);
    let doc = ctl_json(sock, &args);
    let blobs = doc["blobs"].as_array().expect("a blobs array");
    assert_eq!(blobs.len(), 3, "{doc}");
    assert!(blobs.iter().all(|b| b["namespace"] == "auto"), "{doc}");

    // --id names one blob: a usage error with several files.
    let (code, _, err) = ctl(sock, &["put", names[0], names[1], "--id", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--id"), "{err}");
}

#[test]
fn every_command_answers_with_its_json_fields() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "cmds");
    let sock = d.socket();
    let file = env.root().join("f");
    write_file(&file, 5000, 3);
    ctl_json(
        sock,
        &["put", file.to_str().unwrap(), "--id", "a1", "--wait"],
    );

    let st = ctl_json(sock, &["status"]);
    assert_eq!(st["counts"]["SYNCED"], 1, "{st}");
    assert_eq!(st["bytes"]["SYNCED"], 5000, "{st}");
    assert_eq!(st["namespaces"]["default"]["policy"], "EAGER", "{st}");
    // Per namespace too (issue 21: it said 0 bytes).
    assert_eq!(st["namespaces"]["default"]["bytes"]["SYNCED"], 5000, "{st}");
    assert_eq!(st["counts"].as_object().unwrap().len(), 8);
    for k in [
        "namespaces",
        "transfers",
        "remote",
        "paused",
        "limits",
        "daemon_version",
        "api_version",
    ] {
        assert!(st.get(k).is_some(), "status lacks {k}: {st}");
    }
    assert!(st["namespaces"]["default"].is_object(), "{st}");
    let (code, text, _) = ctl(sock, &["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("SYNCED") && text.contains("remote:"),
        "{text}"
    );

    let sync = ctl_json(sock, &["sync", "--wait"]);
    assert!(sync["summary"]["cycle"].as_u64().unwrap() >= 1, "{sync}");
    let sync = ctl_json(sock, &["sync"]);
    assert!(sync["cycle"].as_u64().is_some(), "{sync}");

    let p = ctl_json(sock, &["pause", "-n", "default"]);
    assert_eq!(
        p,
        serde_json::json!({"all": false, "namespaces": ["default"]})
    );
    let (code, _, err) = ctl(sock, &["pause", "-n", "MX"]);
    assert_eq!(code, 2, "MX is neither configured nor holds blobs: {err}");
    assert!(err.contains("nothing to pause"), "{err}");
    let p = ctl_json(sock, &["pause"]);
    assert_eq!(p["all"], true);
    assert_eq!(ctl_json(sock, &["status"])["paused"], true);
    let p = ctl_json(sock, &["resume"]);
    assert_eq!(p, serde_json::json!({"all": false, "namespaces": []}));

    let l = ctl_json(sock, &["limits", "--up", "1M", "--transfers", "5"]);
    assert_eq!(
        l,
        serde_json::json!({"bwlimit_up": 1 << 20, "bwlimit_down": 0, "transfers": 5})
    );
    assert_eq!(
        ctl_json(sock, &["limits"])["transfers"],
        5,
        "limits without flags shows them"
    );

    let pr = ctl_json(sock, &["priority", "a1", "urgent"]);
    assert_eq!(pr["priority"], "URGENT");

    let r = ctl_json(sock, &["retry", "--all-failed"]);
    assert_eq!(r["requeued"], 0);

    let f = ctl_json(sock, &["flags", "a1", "--set", "processing"]);
    assert_eq!(f["flags"], serde_json::json!(["PROCESSING"]));
    assert_eq!(
        ctl_json(sock, &["flags", "a1"])["flags"],
        serde_json::json!(["PROCESSING"])
    );
    assert_eq!(
        ctl_json(sock, &["flags", "a1", "--clear"])["flags"],
        serde_json::json!([])
    );

    let remote = ctl_json(sock, &["ls", "--remote"]);
    let ids: Vec<&str> = remote["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1"], "{remote}");

    let one = ctl_json(sock, &["verify", "--id", "a1"]);
    assert_eq!(one["checked"], 1, "{one}");
    let none = ctl_json(sock, &["verify", "-n", "elsewhere"]);
    assert_eq!(none["checked"], 0, "{none}");
    let v = ctl_json(sock, &["verify", "--remote"]);
    assert_eq!(
        (v["checked"].as_u64(), v["ok"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["problems"], serde_json::json!([]));

    let ver = ctl_json(sock, &["version"]);
    assert_eq!(ver["api_version"], pb::API_VERSION);
    assert_eq!(ver["blobctl_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn watch_sees_a_put_go_from_pending_upload_to_synced() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "watch");
    let sock = d.socket();
    // Subscribing from the last id before the put means the watcher cannot miss the
    // put's first event however late its process starts.
    let before = ctl_json(sock, &["status"])["last_event_id"]
        .as_u64()
        .unwrap();
    let mut watch = Command::new(ctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "watch",
            "--no-progress",
        ])
        .args(["--since", &before.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let file = env.root().join("f");
    write_file(&file, 70_000, 9);
    ctl_json(sock, &["put", file.to_str().unwrap(), "--id", "w1"]);
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut last_id = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains(&"SYNCED".to_string()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("saw only {seen:?}"));
        let ev: Value = serde_json::from_str(&line).unwrap();
        let id = ev["id"].as_u64().unwrap();
        assert!(id > last_id, "event ids must grow: {last_id} then {id}");
        last_id = id;
        if ev["status_changed"]["id"] == "w1" {
            seen.push(
                ev["status_changed"]["new_status"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("PENDING_UPLOAD"),
        "{seen:?}"
    );
    let row = wait_status(sock, "w1", "SYNCED");
    assert_eq!(row["attempts"], 0, "{row}");
    watch.kill().unwrap();
    watch.wait().unwrap();

    // Resuming with --since replays what was missed, from the buffer.
    let mut replay = Command::new(ctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "watch",
            "--since",
            &before.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first: Value = {
        let mut l = String::new();
        BufReader::new(replay.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        serde_json::from_str(&l).unwrap()
    };
    assert_eq!(first["id"], before + 1, "{first}");
    replay.kill().unwrap();
    replay.wait().unwrap();
}

#[test]
fn put_of_100_mb_from_stdin_keeps_daemon_memory_flat() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "big");
    let pid = daemon_pid(&d);
    const SIZE: usize = 100 << 20;
    let mut child = Command::new(ctl_bin())
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "--json",
            "put",
            "-",
            "--id",
            "big",
            "--local-only",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i * 7 + i / 4099) as u8)
            .collect();
        for _ in 0..SIZE / block.len() {
            stdin.write_all(&block).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let put: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(put["size"], SIZE as u64);
    assert_eq!(put["status"], "LOCAL_ONLY");
    let hwm = vm_hwm_kib(pid);
    eprintln!(
        "daemon peak RSS (VmHWM) after a 100 MiB put from stdin: {} MiB",
        hwm / 1024
    );
    // Measured with this build: about 20 MiB peak (runtime, SQLite, segment buffers). 48 MiB
    // leaves room for allocator noise yet sits far below the blob: a daemon that held even half
    // of the 100 MiB in memory fails here.
    assert!(
        hwm < 48 * 1024,
        "daemon peak RSS {hwm} KiB for a 100 MiB put: not streamed"
    );
    // The bytes arrived whole: read back the last MiB.
    let (code, tail, _) = {
        let o = Command::new(ctl_bin())
            .args([
                "--socket",
                d.socket().to_str().unwrap(),
                "get",
                "big",
                "--range",
                &format!("{}-", SIZE - 16),
            ])
            .output()
            .unwrap();
        (o.status.code(), o.stdout, ())
    };
    assert_eq!(code, Some(0));
    assert_eq!(tail.len(), 16);
}

#[test]
fn a_stale_socket_is_replaced_and_a_running_daemon_is_not() {
    let env = TestEnv::new().unwrap();
    let mut d = start_daemon(&env, "stale");
    let file = env.root().join("f");
    write_file(&file, 10, 1);
    ctl_json(
        d.socket(),
        &[
            "put",
            file.to_str().unwrap(),
            "--id",
            "keep",
            "--local-only",
        ],
    );
    d.kill9();
    assert!(d.socket().exists(), "kill -9 leaves the socket file behind");
    d.restart(&env).unwrap();
    assert_eq!(ctl_json(d.socket(), &["ls"])["blobs"][0]["id"], "keep");

    // A second daemon on the same socket refuses to start and says why.
    let out = Command::new(bins::bin_path(bins::DAEMON).unwrap())
        .args(["--foreground", "--config"])
        .arg(d.config_path())
        .arg("--socket")
        .arg(d.socket())
        .env("HOME", d.dir().join("home"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another blobsyncd is running"), "{err}");
    // And the first one still answers.
    ctl_json(d.socket(), &["status"]);
}

#[test]
fn another_users_process_is_refused() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run blobctl as another user");
        return;
    }
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "peer");
    // Open the door on purpose: the peer check must hold even when the file modes do not.
    use std::os::unix::fs::PermissionsExt;
    let mut p = d.socket().to_path_buf();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    while let Some(parent) = p.parent() {
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o055)).unwrap();
        if parent == env.root() || parent == Path::new("/") {
            break;
        }
        p = parent.to_path_buf();
    }
    use std::os::unix::process::CommandExt;
    let out = Command::new(ctl_bin())
        .args(["--socket", d.socket().to_str().unwrap(), "--json", "status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // The modes above open the env's own dirs; if an ancestor of the temp dir still shuts out
    // uid 65534, the peer check was never reached: that is a failure, not a pass.
    assert!(
        !err.contains("Permission denied (os error 13)"),
        "uid 65534 cannot reach the socket, so the peer check went untested; put the temp dir \
         where any user can traverse (TMPDIR=/tmp): {err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    let doc: Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(doc["error"]["code"], "PERMISSION_DENIED", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_are_invalid_argument_with_a_message() {
    let env = TestEnv::new().unwrap();
    let d = tokio::task::block_in_place(|| start_daemon(&env, "inval"));
    let sock = d.socket().to_path_buf();
    let file = env.root().join("f");
    write_file(&file, 100, 1);
    let sockp = sock.clone();
    let filep = file.clone();
    let outp = env.root().join("out");
    tokio::task::block_in_place(|| {
        ctl_json(&sockp, &["put", filep.to_str().unwrap(), "--id", "ok"]);
        // Through blobctl: exit 2 and INVALID_ARGUMENT.
        for args in [
            &["put", filep.to_str().unwrap(), "--id", "bad id"][..],
            &["put", filep.to_str().unwrap(), "-n", "a/b"],
            &["put", filep.to_str().unwrap(), "--id", &"x".repeat(129)],
            &["get", "ok", "--range", "500-", "-o", outp.to_str().unwrap()],
            &["get", "../etc/passwd", "-o", outp.to_str().unwrap()],
            &["rm", "bad.id"],
            &["ls", "-n", "sp ace"],
            &["priority", "é", "low"],
            &["flags", "ok", "-n", "bad/ns"],
            &["retry", "a b"],
            &["pause", "-n", "../x"],
        ] {
            let (code, doc) = ctl_json_err(&sockp, args);
            assert_eq!(code, 2, "{args:?}: {doc}");
            assert_eq!(doc["error"]["code"], "INVALID_ARGUMENT", "{args:?}: {doc}");
            assert!(!doc["error"]["message"].as_str().unwrap().is_empty());
        }
    });

    // Through the gRPC client: what blobctl's parser would not let through.
    // The harness's control client (shared with the benchmark): one UDS connector, not a copy per file.
    let mut c = blobsync_tests::bench::client::connect(&sock).await.unwrap();
    // The code of a call's outcome; every refusal must carry a message.
    macro_rules! code {
        ($call:expr) => {
            match $call {
                Ok(_) => tonic::Code::Ok,
                Err(s) => {
                    assert!(!s.message().is_empty(), "{s:?}");
                    s.code()
                }
            }
        };
    }
    let inv = tonic::Code::InvalidArgument;
    assert_eq!(
        code!(
            c.set_priority(pb::SetPriorityRequest {
                namespace: String::new(),
                id: "ok".into(),
                priority: 0
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(
            c.set_priority(pb::SetPriorityRequest {
                namespace: String::new(),
                id: "ok".into(),
                priority: 77
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(
            c.set_flags(pb::SetFlagsRequest {
                namespace: String::new(),
                id: "ok".into(),
                flags: vec![0]
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(
            c.set_flags(pb::SetFlagsRequest {
                namespace: String::new(),
                id: "ok".into(),
                flags: vec![99]
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(
            c.list(pb::ListRequest {
                statuses: vec![42],
                ..Default::default()
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(
            c.list(pb::ListRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(
            c.set_limits(pb::SetLimitsRequest {
                transfers: Some(0),
                ..Default::default()
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code!(c.retry(pb::RetryRequest::default()).await),
        inv,
        "neither id nor all_failed"
    );
    assert_eq!(
        code!(
            c.retry(pb::RetryRequest {
                id: "ok".into(),
                all_failed: true,
                ..Default::default()
            })
            .await
        ),
        inv,
        "both id and all_failed"
    );
    let get = |range: Option<pb::ByteRange>| pb::GetRequest {
        namespace: String::new(),
        id: "ok".into(),
        range,
        wait: false,
    };
    assert_eq!(
        code!(
            c.get(get(Some(pb::ByteRange {
                start: 10,
                end: Some(10)
            })))
            .await
        ),
        inv,
        "empty range"
    );
    assert_eq!(
        code!(
            c.get(get(Some(pb::ByteRange {
                start: 10,
                end: Some(5)
            })))
            .await
        ),
        inv,
        "reversed range"
    );
    assert_eq!(
        code!(
            c.get(get(Some(pb::ByteRange {
                start: 101,
                end: None
            })))
            .await
        ),
        inv,
        "start past the end"
    );

    // Put: header problems.
    use pb::put_request::Msg;
    let put = |msgs: Vec<pb::PutRequest>| tokio_stream::iter(msgs);
    let hdr = |id: &str, size_hint: Option<u64>| pb::PutRequest {
        msg: Some(Msg::Header(pb::PutHeader {
            id: id.into(),
            size_hint,
            ..Default::default()
        })),
    };
    let chunk = |n: usize| pb::PutRequest {
        msg: Some(Msg::Chunk(vec![1; n])),
    };
    assert_eq!(
        code!(c.put(put(vec![chunk(3)])).await),
        inv,
        "chunk before header"
    );
    assert_eq!(
        code!(c.put(put(vec![hdr("h1", None), hdr("h1", None)])).await),
        inv,
        "two headers"
    );
    assert_eq!(
        code!(c.put(put(vec![hdr("h2", Some(5)), chunk(3)])).await),
        inv,
        "short of the size hint"
    );
    assert_eq!(
        code!(c.put(put(vec![hdr("h3", Some(2)), chunk(3)])).await),
        inv,
        "over the size hint"
    );
    assert_eq!(code!(c.put(put(vec![])).await), inv, "empty stream");
    // None of the refused puts left a blob behind.
    let ls = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = ls.blobs.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
}

#[test]
fn a_python_client_lists_services_by_reflection_and_calls_status() {
    let script = bins::workspace_root().join("tests/python/control_client.py");
    let has_grpc = |py: &str| {
        Command::new(py)
            .args(["-c", "import grpc, grpc_reflection"])
            .status()
            .is_ok_and(|s| s.success())
    };
    // .ci/run sets BLOBSYNC_PYTHON to its venv's python, which must have the libraries;
    // without it, python3 from PATH, installing them if it can.
    let from_env = std::env::var("BLOBSYNC_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(py) = &from_env {
        assert!(
            has_grpc(py),
            "BLOBSYNC_PYTHON={py} cannot import grpc and grpc_reflection"
        );
    }
    let python = from_env.as_deref().unwrap_or("python3");
    if !has_grpc(python) {
        // Test setup: install the client libraries (CI's .ci/run does this up front).
        let pip = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "grpcio",
                "grpcio-reflection",
            ])
            .status();
        match pip {
            Ok(s) if s.success() && has_grpc(python) => {}
            Ok(s) => panic!("pip install grpcio grpcio-reflection failed ({s}); run it by hand"),
            Err(e) => {
                eprintln!("skipped: no python3 with pip to install grpcio ({e})");
                return;
            }
        }
    }
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "py");
    let out = Command::new(python)
        .arg(&script)
        .arg(d.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in ["blobsync.v1.Control", "grpc.health.v1.Health"] {
        assert!(services.contains(&s), "{services:?}");
    }
    assert_eq!(doc["health"], "SERVING");
    assert_eq!(doc["version"]["api_version"], pb::API_VERSION);
    assert!(
        doc["status"]["daemon_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{doc}"
    );
}

#[test]
fn with_a_real_server_flags_remote_listing_and_get_fetches_a_lazy_blob_on_demand() {
    use blobsync_tests::{ServerOpts, ServerProc};
    let env = TestEnv::new().unwrap();
    let server = ServerProc::start(&env, ServerOpts::default()).unwrap();
    let token = server.add_user("alice").unwrap();
    let key = env.root().join("alice.key");
    write_key_file(&key).unwrap();
    let remote = RemoteSpec::Http {
        url: server.url(),
        user: "alice".into(),
        token,
    };
    let mut opts = DaemonOpts::new(remote.clone(), &key);
    opts.time_scale = Some(0.01);
    let a = DaemonProc::start(&env, "laptop", opts.clone()).unwrap();
    opts.extra_toml = "[namespaces.MX]\npolicy = \"lazy\"\n".into();
    let b = DaemonProc::start(&env, "phone", opts).unwrap();

    let file = env.root().join("mail.eml");
    let data = write_file(&file, 200_000, 11);
    let put = ctl_json(
        a.socket(),
        &[
            "put",
            file.to_str().unwrap(),
            "--id",
            "m1",
            "-n",
            "MX",
            "--wait",
        ],
    );
    assert_eq!(put["status"], "SYNCED", "{put}");

    // Remote flags and listing go through the daemon to the server.
    let f = ctl_json(
        a.socket(),
        &["flags", "m1", "-n", "MX", "--set", "processed"],
    );
    assert_eq!(f["flags"], serde_json::json!(["PROCESSED"]));
    let listed = ctl_json(
        b.socket(),
        &["ls", "--remote", "-n", "MX", "--flag", "processed"],
    );
    assert_eq!(listed["blobs"][0]["id"], "m1", "{listed}");
    assert_eq!(
        listed["blobs"][0]["flags"],
        serde_json::json!(["PROCESSED"])
    );

    // The phone keeps MX lazy: after a sync it knows m1 but has not downloaded it.
    ctl_json(b.socket(), &["sync", "--wait"]);
    wait_status(b.socket(), "m1", "REMOTE_ONLY");
    let out = env.root().join("fetched.eml");
    let (code, doc) = ctl_json_err(
        b.socket(),
        &[
            "get",
            "m1",
            "-n",
            "MX",
            "--no-fetch",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "FAILED_PRECONDITION", "{doc}");
    assert!(!out.exists());
    // A ranged get fetches it on demand and cuts a range reaching past the end at the end
    // (the size is only known once it is here); later gets read the local copy.
    let tail = env.root().join("tail.eml");
    let g = ctl_json(
        b.socket(),
        &[
            "get",
            "m1",
            "-n",
            "MX",
            "--range",
            "199990-999999",
            "-o",
            tail.to_str().unwrap(),
        ],
    );
    assert_eq!(g["length"], 10, "{g}");
    assert_eq!(std::fs::read(&tail).unwrap(), &data[199_990..]);
    ctl_json(
        b.socket(),
        &["get", "m1", "-n", "MX", "-o", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let part = env.root().join("part.eml");
    ctl_json(
        b.socket(),
        &[
            "get",
            "m1",
            "-n",
            "MX",
            "--range",
            "100-199",
            "-o",
            part.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&part).unwrap(), &data[100..200]);
    let row = wait_status(b.socket(), "m1", "SYNCED");
    assert_eq!(row["size"], 200_000);
}

#[test]
fn put_by_path_lets_the_daemon_read_the_file() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "bypath");
    let file = env.root().join("shared.bin");
    let data = write_file(&file, 1_000_000, 2);
    let put = ctl_json(
        d.socket(),
        &["put", file.to_str().unwrap(), "--by-path", "--id", "bp"],
    );
    assert_eq!(put["size"], 1_000_000);
    let out = env.root().join("back.bin");
    ctl_json(d.socket(), &["get", "bp", "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let (code, doc) = ctl_json_err(d.socket(), &["put", "/nonexistent/file", "--by-path"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["error"]["code"], "NOT_FOUND", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/file"),
        "{doc}"
    );
}

#[test]
fn sigterm_ends_open_watches_and_the_daemon_exits_0() {
    let env = TestEnv::new().unwrap();
    let mut d = start_daemon(&env, "term");
    let mut watch = Command::new(ctl_bin())
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "watch",
            "--since",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line proves the watch is connected.
    let mut first = String::new();
    BufReader::new(watch.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains('#'), "{first}");
    let code = d.terminate(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "SIGTERM with a watcher connected must still exit 0 promptly"
    );
    let out = watch.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutting down"));
    assert!(
        !d.socket().exists(),
        "the daemon removes its socket on the way out"
    );
}

#[test]
fn key_export_and_import_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write_key_file(&key).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    let wrapped = dir.path().join("export.txt");
    let sock = dir.path().join("unused.sock");
    let k = key.to_str().unwrap();
    let p = pass.to_str().unwrap();
    let w = wrapped.to_str().unwrap();
    let doc = ctl_json(
        &sock,
        &[
            "key",
            "export",
            "--key-file",
            k,
            "--passphrase-file",
            p,
            "-o",
            w,
        ],
    );
    assert_eq!(doc["output"], w);
    let other = dir.path().join("device2/key");
    let o = other.to_str().unwrap();
    let doc = ctl_json(
        &sock,
        &["key", "import", w, "--key-file", o, "--passphrase-file", p],
    );
    assert_eq!(doc["unchanged"], false);
    assert_eq!(std::fs::read(&other).unwrap(), std::fs::read(&key).unwrap());
    // No terminal and no --passphrase-file: a usage error, not a hang. setsid detaches the
    // child from any controlling terminal the test runner has.
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(ctl_bin());
    cmd.args(["--json", "key", "export", "--key-file", k, "-o"])
        .arg(dir.path().join("x"))
        .stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--passphrase-file"));
}

#[test]
fn an_unreachable_remote_is_reported_not_hidden() {
    let env = TestEnv::new().unwrap();
    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = env.root().join("k");
    write_key_file(&key).unwrap();
    let mut opts = DaemonOpts::new(
        RemoteSpec::Http {
            url: format!("http://127.0.0.1:{port}"),
            user: "alice".into(),
            token: "t".into(),
        },
        &key,
    );
    opts.time_scale = Some(0.01);
    let d = DaemonProc::start(&env, "offline", opts).unwrap();
    let sock = d.socket();
    // Local work goes on without the remote.
    let file = env.root().join("f");
    write_file(&file, 1000, 1);
    let put = ctl_json(sock, &["put", file.to_str().unwrap(), "--id", "queued"]);
    assert_eq!(put["status"], "PENDING_UPLOAD");
    // A waited sync exits 1 and says why, with the summary on stdout.
    let (code, out, err) = ctl(sock, &["--json", "sync", "--wait"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert!(doc["summary"]["error"].is_string(), "{doc}");
    let st = ctl_json(sock, &["status"]);
    assert_eq!(st["remote"]["reachable"], false, "{st}");
    assert!(st["remote"]["last_error"].is_string(), "{st}");
    let (code, doc) = ctl_json_err(sock, &["ls", "--remote"]);
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "UNAVAILABLE", "{doc}");
}
