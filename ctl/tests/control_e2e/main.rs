//! End to end over the real control socket: a real `blobsyncd` (on a temp dir, with a
//! `file://` remote unless a test needs the HTTP server) driven by the real `blobctl`, by the
//! generated Rust gRPC client for what blobctl cannot send, and by a Python client that only
//! knows the socket (reflection). This file holds the harness the modules share (a daemon on
//! a folder remote, blobctl runs and their JSON, waits on `blobctl ls`); bad arguments are
//! not here but in the boundary's table (`tests/tests/control_bad_input.rs` for blobctl,
//! `daemon/tests/control_grpc/invalid.rs` for the gRPC service).
//!
//! Build the binaries first: `cargo build --workspace --bins` (the harness says so if they
//! are missing).

mod commands;
mod remote;
mod socket;
mod watch;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobsync_proto as pb;
use blobsync_tests::daemon::write_key_file;
use blobsync_tests::wait::{Poll, wait_until};
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

/// Waits until `blobctl ls` shows `id` with `status` (30 s deadline).
fn wait_status(socket: &Path, id: &str, status: &str) -> Value {
    wait_until(
        &format!("{id} to become {status}"),
        Duration::from_secs(30),
        || {
            let ls = ctl_json(socket, &["ls"]);
            let row = ls["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["id"] == id && b["status"] == status)
                .cloned();
            Ok(row.map_or_else(|| Poll::Pending(ls.to_string()), Poll::Ready))
        },
    )
    .unwrap()
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
