//! [`ServerProc`]: a real `blobsync-server` on `127.0.0.1`, its data dir and its tokens.
//!
//! Started with port 0; the bound address is parsed from what the server prints at startup,
//! and a restart reuses the same data dir and port so a daemon pointed at it reconnects.
//! Readiness is `GET /healthz` answering 200 before a deadline. This module never reaches
//! into the server's SQLite index; payload paths are computed from the server's layout only
//! for fault injection (tampering, checking for half-written files).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::env::{SlotHandle, TestEnv, lock};
use crate::error::IoContext;
use crate::wait::{Poll, scaled, wait_until};
use crate::{HarnessError, Result, bins, rawhttp};

/// How long a server gets to print its address and answer `/healthz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for starting a server.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    /// Extra `serve` arguments after the standard ones (`--max-blob-size N`,
    /// `--default-quota N`...).
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A running (or killed) `blobsync-server`.
pub struct ServerProc {
    slot: SlotHandle,
    bin: PathBuf,
    data_dir: PathBuf,
    addr: SocketAddr,
    opts: ServerOpts,
}

impl ServerProc {
    /// Starts a server with a fresh data dir under `env` and waits until it is ready.
    pub fn start(env: &TestEnv, opts: ServerOpts) -> Result<Self> {
        let bin = bins::bin_path(bins::SERVER)?;
        let name = env.unique_name("server");
        let data_dir = env.subdir(&format!("{name}-data"))?;
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("a literal socket address");
        let cmd = Self::command(&bin, &data_dir, listen, &opts);
        let slot = env.spawn(&name, cmd)?;
        let addr = wait_for_address(&slot, START_TIMEOUT)?;
        let server = ServerProc {
            slot,
            bin,
            data_dir,
            addr,
            opts,
        };
        server.wait_healthy()?;
        Ok(server)
    }

    fn command(bin: &Path, data_dir: &Path, listen: SocketAddr, opts: &ServerOpts) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--data")
            .arg(data_dir)
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .args(&opts.extra_args)
            .env("RUST_LOG", "debug,hyper=info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The payload path of a blob per the server's layout (server/README.md)
    /// (`{user}/{namespace}/{id[0..1]}/{id[0..3]}/{id}` under the data dir; a `data/`
    /// component is tried first in case the server moves payloads there).
    pub fn blob_path(&self, user: &str, namespace: &str, id: &str) -> PathBuf {
        let rel = Path::new(user)
            .join(namespace)
            .join(&id[..1.min(id.len())])
            .join(&id[..3.min(id.len())])
            .join(id);
        let with_data = self.data_dir.join("data").join(&rel);
        if with_data.exists() {
            with_data
        } else {
            let bare = self.data_dir.join(&rel);
            if bare.exists() { bare } else { with_data }
        }
    }

    /// The bytes a small blob keeps inside the server's index (`--inline-max`) instead of a
    /// file at [`ServerProc::blob_path`], if it has them. Read-only, while the server runs.
    pub fn inline_payload(&self, user: &str, namespace: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let Some(index) = [self.data_dir.join("data"), self.data_dir.clone()]
            .into_iter()
            .map(|d| d.join("index.sqlite3"))
            .find(|p| p.exists())
        else {
            return Ok(None);
        };
        let read = || -> rusqlite::Result<Option<Vec<u8>>> {
            let c = rusqlite::Connection::open_with_flags(
                &index,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT data FROM inline_payloads WHERE user = ?1 AND namespace = ?2 AND id = ?3",
                [user, namespace, id],
                |r| r.get(0),
            ))
        };
        read().map_err(|e| HarnessError::Protocol {
            what: format!("the server's index {}", index.display()),
            detail: e.to_string(),
        })
    }

    /// The stored bytes of a blob wherever the server keeps them: its file at
    /// [`ServerProc::blob_path`], else its row in the index ([`ServerProc::inline_payload`]).
    /// `NotFound` when it has neither.
    pub fn stored_payload(&self, user: &str, namespace: &str, id: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(user, namespace, id);
        match std::fs::read(&path) {
            Ok(b) => return Ok(b),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(HarnessError::Protocol {
                    what: format!("the server's payload {}", path.display()),
                    detail: e.to_string(),
                });
            }
            Err(_) => {}
        }
        self.inline_payload(user, namespace, id)?
            .ok_or_else(|| HarnessError::Protocol {
                what: format!("the server's copy of {user}/{namespace}/{id}"),
                detail: format!(
                    "no file at {} and no row in the index's inline_payloads",
                    path.display()
                ),
            })
    }

    /// Runs `blobsync-server --data D <args>` to completion and returns its stdout.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("--data")
            .arg(&self.data_dir)
            .args(args)
            // The server's own environment: an s3+postgres node's admin commands must reach
            // the same database.
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .output()
            .ctx(|| format!("run {} {args:?}", self.bin.display()))?;
        if !out.status.success() {
            return Err(HarnessError::ProcessFailed {
                what: format!("blobsync-server {}", args.join(" ")),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `user add NAME`: creates a user and returns its bearer token (the last stdout line).
    pub fn add_user(&self, name: &str) -> Result<String> {
        last_line(
            &self.admin(&["user", "add", name])?,
            "blobsync-server user add",
        )
    }

    /// `user add NAME --quota BYTES`: a user with their own quota; returns the token.
    pub fn add_user_with_quota(&self, name: &str, quota: u64) -> Result<String> {
        let q = quota.to_string();
        last_line(
            &self.admin(&["user", "add", name, "--quota", &q])?,
            "blobsync-server user add",
        )
    }

    /// `app add NAME`: creates a trusted-app token for `/incoming`.
    pub fn add_app(&self, name: &str) -> Result<String> {
        last_line(
            &self.admin(&["app", "add", name])?,
            "blobsync-server app add",
        )
    }

    /// kill -9 and reap. The data dir stays.
    pub fn kill9(&mut self) {
        lock(&self.slot).kill9();
    }

    /// SIGTERM, wait for a clean exit (or SIGKILL after `timeout`); returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        lock(&self.slot).terminate(timeout)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        lock(&self.slot).is_running()
    }

    /// The running process's pid (for `/proc` measurements).
    pub fn pid(&self) -> Option<u32> {
        lock(&self.slot).child.as_ref().map(|c| c.id())
    }

    /// Starts the server again on the same data dir and port (kills it first if running).
    ///
    /// The port can linger briefly after a kill, so a failed bind is retried until the
    /// start deadline.
    pub fn restart(&mut self, env: &TestEnv) -> Result<()> {
        self.kill9();
        let deadline = std::time::Instant::now() + scaled(START_TIMEOUT);
        loop {
            let cmd = Self::command(&self.bin, &self.data_dir, self.addr, &self.opts);
            env.respawn(&self.slot, cmd)?;
            match wait_for_address(&self.slot, START_TIMEOUT) {
                Ok(addr) if addr == self.addr => break,
                Ok(addr) => {
                    return Err(HarnessError::protocol(
                        "blobsync-server restart",
                        format!("asked for {} but it bound {addr}", self.addr),
                    ));
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    let (_, err) = lock(&self.slot).log_tails(20);
                    if !err.contains("in use") {
                        return Err(e);
                    }
                    // The old process's port is not free yet: back off, then respawn (the
                    // loop is bounded by `deadline`).
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_healthy()
    }

    /// Waits until `GET /healthz` answers 200.
    pub fn wait_healthy(&self) -> Result<()> {
        let addr = self.addr;
        let slot = self.slot.clone();
        wait_until(
            &format!("blobsync-server at {addr} to answer /healthz"),
            scaled(START_TIMEOUT),
            || {
                check_alive(&slot, "blobsync-server")?;
                match rawhttp::request(addr, "GET", "/healthz", &[], b"") {
                    Ok(r) if r.status == 200 => Ok(Poll::Ready(())),
                    Ok(r) => Ok(Poll::Pending(format!("status {}", r.status))),
                    Err(e) => Ok(Poll::Pending(e.to_string())),
                }
            },
        )
    }

    /// The tail of the current logs `(stdout, stderr)`.
    pub fn log_tails(&self, lines: usize) -> (String, String) {
        lock(&self.slot).log_tails(lines)
    }

    /// An authenticated request to this server.
    pub fn request(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<rawhttp::Response> {
        let auth = format!("Bearer {token}");
        rawhttp::request(self.addr, method, path, &[("Authorization", &auth)], body)
    }

    /// The ids the server lists for `user` in `namespace` (a full listing).
    pub fn list_ids(&self, token: &str, user: &str, namespace: &str) -> Result<Vec<String>> {
        let r = self.request(
            token,
            "GET",
            &format!("/blobs/{user}?namespace={namespace}"),
            b"",
        )?;
        if r.status != 200 {
            return Err(HarnessError::protocol(
                "GET /blobs",
                format!("status {}: {}", r.status, r.text()),
            ));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| HarnessError::protocol("GET /blobs", format!("{e}: {}", r.text())))
    }
}

/// Fails at once with the child's logs if it is no longer running.
pub(crate) fn check_alive(slot: &SlotHandle, what: &str) -> Result<()> {
    let mut s = lock(slot);
    if let Some(code) = s.exit_status() {
        let (stdout, stderr) = s.log_tails(60);
        return Err(HarnessError::ProcessFailed {
            what: format!("{what} (exited before it was ready)"),
            code,
            stdout,
            stderr,
        });
    }
    Ok(())
}

/// Waits for the server to print its bound address on stdout or stderr.
fn wait_for_address(slot: &SlotHandle, timeout: Duration) -> Result<SocketAddr> {
    wait_until(
        "blobsync-server to print its listening address",
        scaled(timeout),
        || {
            check_alive(slot, "blobsync-server")?;
            let (out, err) = lock(slot).log_tails(200);
            for text in [&out, &err] {
                if let Some(addr) = find_listen_addr(text) {
                    return Ok(Poll::Ready(addr));
                }
            }
            Ok(Poll::Pending(format!("stdout: {out:?}; stderr: {err:?}")))
        },
    )
}

/// Finds the first `127.0.0.1:PORT` (port not 0) in a line mentioning "listen".
///
/// Accepts `listening on 127.0.0.1:4567`, `listening on http://127.0.0.1:4567`, JSON log
/// lines and the like, so the server's exact wording can change without breaking us.
pub fn find_listen_addr(text: &str) -> Option<SocketAddr> {
    for line in text.lines() {
        if !line.to_ascii_lowercase().contains("listen") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("127.0.0.1:") {
            let cand = &rest[i..];
            let end = cand
                .char_indices()
                .skip("127.0.0.1:".len())
                .find(|(_, c)| !c.is_ascii_digit())
                .map(|(j, _)| j)
                .unwrap_or(cand.len());
            if let Ok(addr) = cand[..end].parse::<SocketAddr>()
                && addr.port() != 0
            {
                return Some(addr);
            }
            rest = &rest[i + 1..];
        }
    }
    None
}

fn last_line(stdout: &str, what: &str) -> Result<String> {
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| HarnessError::protocol(what, "printed nothing on stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listen_address_in_various_wordings() {
        let want: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        for line in [
            "listening on 127.0.0.1:4567",
            "INFO blobsync_server: listening on http://127.0.0.1:4567/",
            r#"{"msg":"listening","addr":"127.0.0.1:4567"}"#,
            "asked 127.0.0.1:0, listening on 127.0.0.1:4567",
        ] {
            assert_eq!(find_listen_addr(line), Some(want), "{line}");
        }
        assert_eq!(find_listen_addr("listening on 127.0.0.1:0"), None);
        assert_eq!(find_listen_addr("connected to 127.0.0.1:4567"), None);
    }
}
