//! Test harness for blobsync's end-to-end suite and benchmarks.
//!
//! This crate starts the real binaries (`blobsync-server`, `blobsyncd`, `blobctl`) on temp
//! dirs and loopback ports ([`TestEnv`], [`ServerProc`], [`DaemonProc`], [`Blobctl`]), puts a
//! fault-injecting TCP proxy between them ([`proxy::Proxy`]) and offers the small tools the
//! scenarios share: deadline waits ([`wait`]), SHA-256 of files ([`digest`]) and a raw HTTP/1.1
//! client that can send malformed requests ([`rawhttp`]).
//! It never links the daemon or server code into a test: every part runs as its own process,
//! as a user would run it.

pub mod bench;
pub mod bins;
pub mod cluster;
pub mod converge;
pub mod ctl;
pub mod daemon;
pub mod digest;
pub mod engines;
pub mod env;
pub mod error;
pub mod fuzz;
pub mod plaintext;
pub mod proxy;
pub mod rawhttp;
pub mod server;
pub mod wait;

pub use cluster::{Cluster, test_seed};
pub use ctl::{Blobctl, CtlOutput};
pub use daemon::{DaemonOpts, DaemonProc, RemoteSpec};
pub use env::TestEnv;
pub use error::HarnessError;
pub use server::{ServerOpts, ServerProc};

/// Result type of every harness function.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// True when the environment asks to skip slow scenarios (`BLOBSYNC_SKIP_SLOW=1`).
///
/// CI leaves it unset so every scenario runs there; developers set it for a quick loop.
pub fn skip_slow() -> bool {
    env_flag("BLOBSYNC_SKIP_SLOW")
}

/// True when the environment asks for the full-size scenarios (`BLOBSYNC_TEST_FULL=1`).
pub fn full_size() -> bool {
    env_flag("BLOBSYNC_TEST_FULL")
}

/// Reads a boolean flag from the environment: set, non-empty and not `0`/`false`.
pub fn env_flag(name: &str) -> bool {
    match std::env::var(name) {
        Ok(v) => !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"),
        Err(_) => false,
    }
}

/// Reads a number from the environment, falling back to `default` when unset or unparsable.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Prints a note and returns true when a slow scenario should be skipped.
///
/// Use as `if skip_slow_test("name") { return; }` at the top of a slow test. A skip reports
/// PASS, so under CI (`CI` set) it panics instead: CI must run every scenario.
pub fn skip_slow_test(name: &str) -> bool {
    if skip_slow() {
        assert!(
            !env_flag("CI"),
            "{name}: BLOBSYNC_SKIP_SLOW is set under CI, which would report a skipped scenario \
             as passed; unset it"
        );
        eprintln!("skipping slow scenario {name}: BLOBSYNC_SKIP_SLOW is set");
        true
    } else {
        false
    }
}

/// Files under `root` that look like half-written temp files: names starting with `.tmp`,
/// or containing `.tmp`, `.part` or `.partial`. A converged system has none.
pub fn find_temp_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(&p, out);
            } else {
                let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                if name.starts_with(".tmp")
                    || name.contains(".tmp")
                    || name.contains(".part")
                    || name.ends_with(".partial")
                {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// Peak and current resident memory of a process in bytes (`VmHWM`, `VmRSS`), Linux only.
pub fn proc_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
