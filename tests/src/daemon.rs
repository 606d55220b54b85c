//! [`DaemonProc`]: a real `blobsyncd` with its own config, data dir, key and socket.
//!
//! Each daemon is a "device": a directory under the [`TestEnv`] with `config.toml`, `data/`,
//! the socket and a private `HOME`/XDG dirs so nothing leaks into the real user's dirs.
//! Readiness is connecting to the control socket before a deadline; a daemon that dies first
//! fails the wait with its stderr. This module never reads the daemon's SQLite store: tests
//! observe the daemon through `blobctl` like a user would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ctl::Blobctl;
use crate::env::{SlotHandle, TestEnv, lock};
use crate::error::IoContext;
use crate::server::check_alive;
use crate::wait::{Poll, scaled, wait_until};
use crate::{Result, bins};

/// How long a daemon gets to open its control socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment variable through which tests speed up the daemon's clock: the daemon
/// multiplies every wait (retry delays, sync interval) by this factor, so `0.01` turns the
/// 10, 20, 30 s retry schedule into 0.1, 0.2, 0.3 s (`blobsyncd::retry::TIME_SCALE_ENV`).
pub const TIME_SCALE_ENV: &str = "BLOBSYNCD_TIME_SCALE";

/// Where a daemon syncs to.
#[derive(Clone, Debug)]
pub enum RemoteSpec {
    /// An HTTP server (or a proxy in front of one).
    Http {
        /// `http://127.0.0.1:PORT`.
        url: String,
        /// The user name.
        user: String,
        /// The bearer token.
        token: String,
    },
    /// A `file://` remote in a local directory.
    Dir(PathBuf),
    /// No `remote` in the config: the daemon's embedded default, `file://<data_dir>/remote`
    /// (what the README's first command runs).
    Default,
}

/// Options for one daemon.
#[derive(Clone, Debug)]
pub struct DaemonOpts {
    /// The remote.
    pub remote: RemoteSpec,
    /// The storage key file (devices of one user share it; see [`write_key_file`]).
    pub key_file: PathBuf,
    /// `sync_interval` in seconds (daemon time, before scaling); `None` = daemon default.
    pub sync_interval: Option<u64>,
    /// Test-only factor on every daemon wait (see [`TIME_SCALE_ENV`]; `0.01` = 100x faster);
    /// `None` = real time.
    pub time_scale: Option<f64>,
    /// Extra TOML appended to the config (e.g. `transfers = 1`).
    pub extra_toml: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl DaemonOpts {
    /// Options for `remote` with `key_file` and defaults elsewhere.
    pub fn new(remote: RemoteSpec, key_file: &Path) -> Self {
        DaemonOpts {
            remote,
            key_file: key_file.to_path_buf(),
            sync_interval: None,
            time_scale: None,
            extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running (or killed) `blobsyncd`.
pub struct DaemonProc {
    name: String,
    slot: SlotHandle,
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    data_dir: PathBuf,
    opts: DaemonOpts,
    ctl: Blobctl,
}

/// Writes a fresh random storage key file (64 hex chars + newline, mode 0600) with the
/// shared crate's key-file code, so the format is the one the daemon reads.
pub fn write_key_file(path: &Path) -> Result<()> {
    blobsync_shared::keyfile::generate_key_file(path)
        .map(|_| ())
        .map_err(|e| crate::HarnessError::protocol("write key file", e.to_string()))
}

fn toml_str(s: &str) -> String {
    // TOML basic strings share JSON's escapes for what paths and URLs can contain.
    serde_json::to_string(s).expect("a string always serializes")
}

/// Writes a device's `config.toml` for `opts`.
fn write_config(
    dir: &Path,
    config: &Path,
    data_dir: &Path,
    socket: &Path,
    opts: &DaemonOpts,
) -> Result<()> {
    let mut toml = String::new();
    match &opts.remote {
        RemoteSpec::Http { url, user, token } => {
            let token_file = dir.join("token");
            std::fs::write(&token_file, format!("{token}\n")).ctx(|| "write token file".into())?;
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
                .ctx(|| "chmod token file".into())?;
            toml.push_str(&format!(
                "remote = {}\nuser = {}\ntoken_file = {}\n",
                toml_str(url),
                toml_str(user),
                toml_str(&token_file.display().to_string())
            ));
        }
        RemoteSpec::Dir(path) => {
            toml.push_str(&format!(
                "remote = {}\n",
                toml_str(&format!("file://{}", path.display()))
            ));
        }
        RemoteSpec::Default => {}
    }
    toml.push_str(&format!(
        "key_file = {}\ndata_dir = {}\nsocket = {}\nlog = \"debug\"\n",
        toml_str(&opts.key_file.display().to_string()),
        toml_str(&data_dir.display().to_string()),
        toml_str(&socket.display().to_string()),
    ));
    if let Some(s) = opts.sync_interval {
        toml.push_str(&format!("sync_interval = {s}\n"));
    }
    toml.push_str(&opts.extra_toml);
    toml.push('\n');
    std::fs::write(config, toml).ctx(|| "write daemon config".into())
}

impl DaemonProc {
    /// Creates the device dir and config, starts the daemon and waits for its socket.
    pub fn start(env: &TestEnv, name: &str, opts: DaemonOpts) -> Result<Self> {
        let bin = bins::bin_path(bins::DAEMON)?;
        let name = env.unique_name(name);
        let dir = env.subdir(&name)?;
        for sub in ["home", "config", "state", "runtime", "data"] {
            std::fs::create_dir_all(dir.join(sub)).ctx(|| format!("mkdir {sub}"))?;
        }
        std::fs::set_permissions(dir.join("runtime"), std::fs::Permissions::from_mode(0o700))
            .ctx(|| "chmod runtime".into())?;
        let socket = dir.join("runtime").join("blobsyncd.sock");
        let data_dir = dir.join("data");
        let config = dir.join("config.toml");
        write_config(&dir, &config, &data_dir, &socket, &opts)?;
        let cmd = Self::command(&bin, &dir, &config, &socket, &opts);
        let slot = env.spawn(&name, cmd)?;
        let ctl = Blobctl::new(&socket)?;
        let d = DaemonProc {
            name,
            slot,
            bin,
            dir,
            config,
            socket,
            data_dir,
            opts,
            ctl,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn command(bin: &Path, dir: &Path, config: &Path, socket: &Path, opts: &DaemonOpts) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .env("HOME", dir.join("home"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data-home"))
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("XDG_RUNTIME_DIR", dir.join("runtime"))
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .env_remove("NOTIFY_SOCKET");
        if let Some(scale) = opts.time_scale {
            cmd.env(TIME_SCALE_ENV, scale.to_string());
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The device name (`daemon-a`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The control socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The device dir (config, token, scratch files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file path.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The options it was started with.
    pub fn opts(&self) -> &DaemonOpts {
        &self.opts
    }

    /// A `blobctl` runner for this daemon.
    pub fn ctl(&self) -> &Blobctl {
        &self.ctl
    }

    /// Waits until the control socket accepts a connection.
    pub fn wait_ready(&self) -> Result<()> {
        let what = format!("{} to open {}", self.name, self.socket.display());
        wait_until(&what, scaled(START_TIMEOUT), || {
            check_alive(&self.slot, &self.name)?;
            match std::os::unix::net::UnixStream::connect(&self.socket) {
                Ok(_) => Ok(Poll::Ready(())),
                Err(e) => Ok(Poll::Pending(e.to_string())),
            }
        })
    }

    /// kill -9 and reap. Data dir and config stay.
    pub fn kill9(&mut self) {
        lock(&self.slot).kill9();
    }

    /// SIGTERM and wait up to `timeout` (then SIGKILL); returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        lock(&self.slot).terminate(timeout)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        lock(&self.slot).is_running()
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.slot).child.as_ref().map(|c| c.id())
    }

    /// Peak and current resident memory in bytes (`VmHWM`, `VmRSS` from `/proc`).
    pub fn memory(&self) -> Option<(u64, u64)> {
        crate::proc_memory(self.pid()?)
    }

    /// Points the daemon at another remote, as a user editing `config.toml` does: stops it
    /// (SIGTERM, as `systemctl stop` would), rewrites the config, starts it again.
    pub fn switch_remote(&mut self, env: &TestEnv, remote: RemoteSpec) -> Result<()> {
        self.terminate(Duration::from_secs(15));
        self.opts.remote = remote;
        write_config(
            &self.dir,
            &self.config,
            &self.data_dir,
            &self.socket,
            &self.opts,
        )?;
        let cmd = Self::command(&self.bin, &self.dir, &self.config, &self.socket, &self.opts);
        env.respawn(&self.slot, cmd)?;
        self.wait_ready()
    }

    /// Starts the daemon again with the same config and data (kills it first if running).
    pub fn restart(&mut self, env: &TestEnv) -> Result<()> {
        self.kill9();
        let cmd = Self::command(&self.bin, &self.dir, &self.config, &self.socket, &self.opts);
        env.respawn(&self.slot, cmd)?;
        self.wait_ready()
    }

    /// The tail of the current logs `(stdout, stderr)`.
    pub fn log_tails(&self, lines: usize) -> (String, String) {
        lock(&self.slot).log_tails(lines)
    }
}
