//! The harness's one error type.
//!
//! Every variant carries what a reader of a failed test needs (the command, the child's
//! stderr, the condition that timed out). `Debug` prints the same text as `Display`, so a test
//! returning `Result<(), HarnessError>` fails with a readable message.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while driving the real binaries.
#[derive(thiserror::Error)]
pub enum HarnessError {
    /// A binary is not in the target dir.
    #[error(
        "binary `{name}` not found (looked in: {}); run `cargo build --workspace --bins` first",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingBinary {
        /// The binary's name.
        name: String,
        /// The directories searched.
        searched: Vec<PathBuf>,
    },
    /// An I/O error, with what the harness was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A child process exited before it was ready, or a command failed.
    #[error("{what} failed (exit {code:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")]
    ProcessFailed {
        /// The process or command.
        what: String,
        /// Its exit code, if it exited normally.
        code: Option<i32>,
        /// Captured stdout (possibly the tail).
        stdout: String,
        /// Captured stderr (possibly the tail).
        stderr: String,
    },
    /// A condition was not met before its deadline.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// The last observation, to tell why.
        last: String,
    },
    /// Output from a binary was not what the harness expects (format drift between parts).
    #[error("unexpected output from {what}: {detail}")]
    Protocol {
        /// The binary or request.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }

    /// A format problem in a binary's output.
    pub fn protocol(what: impl Into<String>, detail: impl Into<String>) -> Self {
        HarnessError::Protocol {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Adds context to `std::io::Result`s.
pub trait IoContext<T> {
    /// Turns an I/O error into [`HarnessError::Io`] with `context`.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, HarnessError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, HarnessError> {
        self.map_err(|e| HarnessError::io(context(), e))
    }
}
