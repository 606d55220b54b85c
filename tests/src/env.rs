//! [`TestEnv`]: one temp dir and every child process a test starts.
//!
//! Children write stdout and stderr to log files under `<temp>/logs/`, one pair per start
//! (a restart gets a new pair), so nothing blocks on a full pipe and the logs outlive a kill -9.
//! Dropping the env kills *and* waits every child; if the test is failing (panicking, or
//! returning a [`TestFailure`] through `?`) it prints the tail of every log and keeps the
//! temp dir for inspection. This module never interprets a child's
//! output; [`crate::server`] and [`crate::daemon`] do.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::IoContext;
use crate::{HarnessError, Result};

/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 150;

/// A child process slot: the current child (if running) and every log it has written.
pub struct ProcSlot {
    /// Short name used in log file names (`server`, `daemon-a`...).
    pub name: String,
    /// The running child, `None` after a kill.
    pub child: Option<Child>,
    /// `(stdout, stderr)` log paths, one pair per start, oldest first.
    pub logs: Vec<(PathBuf, PathBuf)>,
}

/// Shared handle on a [`ProcSlot`]; the env and the process wrapper both hold one.
pub type SlotHandle = Arc<Mutex<ProcSlot>>;

/// Locks a slot, ignoring poisoning: a panicking test must still be able to kill its children.
pub fn lock(slot: &SlotHandle) -> MutexGuard<'_, ProcSlot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcSlot {
    /// The current start's `(stdout, stderr)` log paths.
    pub fn current_logs(&self) -> Option<&(PathBuf, PathBuf)> {
        self.logs.last()
    }

    /// Whether the child is running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit code if the child has exited (`Some(None)` when killed by a signal).
    pub fn exit_status(&mut self) -> Option<Option<i32>> {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(Some(st)) => Some(st.code()),
                _ => None,
            },
            None => Some(None),
        }
    }

    /// Sends SIGKILL and waits for the child; a no-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit, then SIGKILL.
    /// Returns the exit code (None if it had to be killed or died by signal).
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on a pid we own and have not reaped yet; no memory is touched.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = std::time::Instant::now();
        loop {
            match c.try_wait() {
                Ok(Some(st)) => return st.code(),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return None;
                }
            }
        }
    }

    /// The tail of the current stderr and stdout logs, for error messages.
    pub fn log_tails(&self, lines: usize) -> (String, String) {
        match self.current_logs() {
            Some((out, err)) => (tail(out, lines), tail(err, lines)),
            None => (String::new(), String::new()),
        }
    }
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

thread_local! {
    /// Set when a test turns a harness error into a [`TestFailure`] (the `?` in a test fn):
    /// that happens before the test's locals drop, so [`TestEnv`]'s `Drop` still sees it.
    static FAILING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A failed scenario: the harness error that ended it. Test fns return [`TestResult`] so
/// that `?` marks the test as failing *before* its [`TestEnv`] drops, which then prints the
/// children's logs and keeps the temp dir, as it does for a panic.
pub struct TestFailure(pub HarnessError);

impl From<HarnessError> for TestFailure {
    fn from(e: HarnessError) -> Self {
        FAILING.with(|f| f.set(true));
        TestFailure(e)
    }
}

impl std::fmt::Debug for TestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for TestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// What a scenario test fn returns (see [`TestFailure`]).
pub type TestResult<T = ()> = std::result::Result<T, TestFailure>;

/// Owns a temp dir and every child process started in it.
pub struct TestEnv {
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    slots: Mutex<Vec<SlotHandle>>,
}

impl TestEnv {
    /// Creates a fresh env under the system temp dir.
    pub fn new() -> Result<Self> {
        FAILING.with(|f| f.set(false));
        let tmp = tempfile::Builder::new()
            .prefix("blobsync-e2e-")
            .tempdir()
            .ctx(|| "create temp dir".into())?;
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("logs")).ctx(|| "create logs dir".into())?;
        Ok(TestEnv {
            tmp: Some(tmp),
            root,
            slots: Mutex::new(Vec::new()),
        })
    }

    /// The env's root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh sub-directory of the root (created).
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).ctx(|| format!("create {}", p.display()))?;
        Ok(p)
    }

    /// A name not used yet by any slot, from `base` (`daemon`, `daemon-2`...).
    pub fn unique_name(&self, base: &str) -> String {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let taken = |n: &str| slots.iter().any(|s| lock(s).name == n);
        if !taken(base) {
            return base.to_string();
        }
        (2..)
            .map(|i| format!("{base}-{i}"))
            .find(|n| !taken(n))
            .expect("an unbounded range always yields a free name")
    }

    /// Spawns `cmd` in a new slot named `name`, output to log files.
    pub fn spawn(&self, name: &str, cmd: Command) -> Result<SlotHandle> {
        let slot = Arc::new(Mutex::new(ProcSlot {
            name: name.to_string(),
            child: None,
            logs: Vec::new(),
        }));
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        self.respawn(&slot, cmd)?;
        Ok(slot)
    }

    /// Starts `cmd` again in an existing slot (after a kill), with a new pair of logs.
    pub fn respawn(&self, slot: &SlotHandle, mut cmd: Command) -> Result<()> {
        let mut s = lock(slot);
        s.kill9();
        let generation = s.logs.len() + 1;
        let out_path = self
            .root
            .join("logs")
            .join(format!("{}.{generation}.stdout.log", s.name));
        let err_path = self
            .root
            .join("logs")
            .join(format!("{}.{generation}.stderr.log", s.name));
        let out = File::create(&out_path).ctx(|| format!("create {}", out_path.display()))?;
        let err = File::create(&err_path).ctx(|| format!("create {}", err_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .ctx(|| format!("spawn {} ({:?})", s.name, cmd.get_program()))?;
        s.child = Some(child);
        s.logs.push((out_path, err_path));
        Ok(())
    }

    /// Keeps the temp dir after the test (for debugging) and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        self.root.clone()
    }

    /// Prints the tail of every log to stderr (what a failed test shows).
    pub fn dump_logs(&self) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter() {
            let s = lock(slot);
            for (out, err) in &s.logs {
                for p in [out, err] {
                    let t = tail(p, LOG_TAIL_LINES);
                    if !t.trim().is_empty() {
                        eprintln!("===== {} (last {LOG_TAIL_LINES} lines) =====", p.display());
                        eprintln!("{t}");
                    }
                }
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        for slot in &slots {
            lock(slot).kill9();
        }
        // Put the slots back so dump_logs sees them.
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) = slots;
        let failing = std::thread::panicking() || FAILING.with(|f| f.get());
        if failing || crate::env_flag("BLOBSYNC_TEST_KEEP") {
            if failing {
                self.dump_logs();
            }
            let root = self.keep();
            eprintln!("test env kept at {}", root.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_and_reaps_children() {
        let env = TestEnv::new().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let slot = env.spawn("sleeper", cmd).unwrap();
        let pid = lock(&slot).child.as_ref().unwrap().id();
        let root = env.root().to_path_buf();
        drop(env);
        assert!(lock(&slot).child.is_none());
        // The pid is reaped: signal 0 finds no process (or a reused pid, which is not ours).
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.contains("1000"))
            .unwrap_or(false);
        assert!(!(alive && ours), "child {pid} still running");
        assert!(!root.exists(), "temp dir not removed");
    }

    #[test]
    fn a_failure_through_question_mark_keeps_the_env() {
        fn scenario(root: &mut Option<PathBuf>) -> TestResult {
            let env = TestEnv::new()?;
            *root = Some(env.root().to_path_buf());
            Err(HarnessError::protocol("test", "deliberate failure"))?;
            Ok(())
        }
        let mut root = None;
        assert!(scenario(&mut root).is_err());
        let root = root.unwrap();
        assert!(root.exists(), "a failing scenario's temp dir must be kept");
        std::fs::remove_dir_all(&root).unwrap();
        // The next env starts clean: dropping it removes its dir.
        let env = TestEnv::new().unwrap();
        let p = env.root().to_path_buf();
        drop(env);
        assert!(!p.exists());
    }

    #[test]
    fn logs_capture_output_per_start() {
        let env = TestEnv::new().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out1; echo err1 >&2"]);
        let slot = env.spawn("echoer", cmd).unwrap();
        lock(&slot).child.as_mut().unwrap().wait().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out2"]);
        env.respawn(&slot, cmd).unwrap();
        lock(&slot).child.as_mut().unwrap().wait().unwrap();
        let s = lock(&slot);
        assert_eq!(s.logs.len(), 2);
        assert_eq!(tail(&s.logs[0].0, 10), "out1");
        assert_eq!(tail(&s.logs[0].1, 10), "err1");
        assert_eq!(tail(&s.logs[1].0, 10), "out2");
    }
}
