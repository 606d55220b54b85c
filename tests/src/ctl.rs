//! [`Blobctl`]: runs the real `blobctl` against one daemon's socket, with `--json`.
//!
//! Every call returns the exit code and the parsed JSON, so tests can assert both the
//! success path and the error codes of blobctl (0 ok, 1 error, 2 usage, 3 unreachable).
//! This module only parses `blobctl`'s documented JSON; it never talks gRPC itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::error::IoContext;
use crate::{HarnessError, Result, bins};

/// The result of one `blobctl` run.
#[derive(Clone, Debug)]
pub struct CtlOutput {
    /// The arguments (after `--socket S --json`).
    pub args: Vec<String>,
    /// Exit code (`-1` if killed by a signal).
    pub code: i32,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
    /// stdout parsed as one JSON document, if it is one.
    pub json: Option<Value>,
}

impl CtlOutput {
    /// Returns `self` if the exit code is 0, else an error with the output.
    pub fn ok(self) -> Result<Self> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// The parsed JSON of a successful run (error if it failed or printed no JSON).
    pub fn ok_json(self) -> Result<Value> {
        let this = self.ok()?;
        match this.json {
            Some(v) => Ok(v),
            None => Err(HarnessError::protocol(
                format!("blobctl {}", this.args.join(" ")),
                format!("stdout is not JSON: {:?}", this.stdout),
            )),
        }
    }

    /// This output as a [`HarnessError::ProcessFailed`].
    pub fn into_error(self) -> HarnessError {
        HarnessError::ProcessFailed {
            what: format!("blobctl {}", self.args.join(" ")),
            code: Some(self.code),
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// One row of `blobctl ls --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlobRow {
    /// Namespace.
    pub namespace: String,
    /// Blob id.
    pub id: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Status name (`"SYNCED"`...).
    pub status: String,
    /// Transfer attempts so far.
    pub attempts: u64,
    /// Last error, empty if none.
    pub last_error: String,
    /// The whole JSON object, for fields this struct does not name.
    pub raw: Value,
}

impl BlobRow {
    /// Parses one object of the `blobs` array.
    pub fn from_json(v: &Value) -> Result<Self> {
        let s = |k: &str| match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let n = |k: &str| match v.get(k) {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let id = s("id");
        if id.is_empty() {
            return Err(HarnessError::protocol(
                "blobctl ls --json",
                format!("row without id: {v}"),
            ));
        }
        Ok(BlobRow {
            namespace: s("namespace"),
            id,
            size: n("size"),
            status: s("status"),
            attempts: n("attempts"),
            last_error: s("last_error"),
            raw: v.clone(),
        })
    }
}

/// Runs `blobctl --socket S --json ...` for one daemon.
#[derive(Clone, Debug)]
pub struct Blobctl {
    bin: PathBuf,
    socket: PathBuf,
}

impl Blobctl {
    /// A runner for the daemon listening on `socket`.
    pub fn new(socket: &Path) -> Result<Self> {
        Ok(Blobctl {
            bin: bins::bin_path(bins::CTL)?,
            socket: socket.to_path_buf(),
        })
    }

    /// The socket this runner talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `blobctl --socket S --json <args>`; never fails on a non-zero exit (see
    /// [`CtlOutput::ok`]).
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<CtlOutput> {
        self.run_opts(args, true)
    }

    /// Like [`Blobctl::run`], with or without `--json`.
    pub fn run_opts<S: AsRef<str>>(&self, args: &[S], json: bool) -> Result<CtlOutput> {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket").arg(&self.socket);
        if json {
            cmd.arg("--json");
        }
        cmd.args(&args).env("NO_COLOR", "1");
        let out = cmd
            .output()
            .ctx(|| format!("run blobctl {}", args.join(" ")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(stdout.trim()).ok();
        Ok(CtlOutput {
            args,
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        })
    }

    /// `put FILE --id ID [extra...]`; returns the JSON (`namespace`, `id`, `size`, `status`).
    pub fn put(&self, file: &Path, id: &str, extra: &[&str]) -> Result<Value> {
        let mut args = vec!["put".to_string(), file.display().to_string()];
        args.extend(["--id".to_string(), id.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.run(&args)?.ok_json()
    }

    /// `get ID -n NS -o FILE`.
    pub fn get_to(&self, id: &str, namespace: &str, out: &Path) -> Result<()> {
        self.run(&["get", id, "-n", namespace, "-o", &out.display().to_string()])?
            .ok()
            .map(|_| ())
    }

    /// `rm ID -n NS`.
    pub fn rm(&self, id: &str, namespace: &str) -> Result<CtlOutput> {
        self.run(&["rm", id, "-n", namespace])
    }

    /// `ls`: every blob the daemon knows, with its status.
    pub fn ls(&self) -> Result<Vec<BlobRow>> {
        let v = self.run(&["ls"])?.ok_json()?;
        let rows = v.get("blobs").and_then(Value::as_array).ok_or_else(|| {
            HarnessError::protocol("blobctl ls --json", format!("no blobs array: {v}"))
        })?;
        rows.iter().map(BlobRow::from_json).collect()
    }

    /// `status` as JSON.
    pub fn status(&self) -> Result<Value> {
        self.run(&["status"])?.ok_json()
    }

    /// `sync --wait`: forces a cycle and waits for it.
    pub fn sync_wait(&self) -> Result<Value> {
        self.run(&["sync", "--wait"])?.ok_json()
    }

    /// `retry ID -n NS`.
    pub fn retry(&self, id: &str, namespace: &str) -> Result<CtlOutput> {
        self.run(&["retry", id, "-n", namespace])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_row_accepts_numbers_as_strings_and_missing_fields() {
        let v: Value = serde_json::json!({"namespace": "default", "id": "a", "size": "12",
            "status": "SYNCED"});
        let row = BlobRow::from_json(&v).unwrap();
        assert_eq!(
            (row.size, row.attempts, row.last_error.as_str()),
            (12, 0, "")
        );
        assert!(BlobRow::from_json(&serde_json::json!({"size": 1})).is_err());
    }
}
