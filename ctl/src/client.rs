//! Finding the daemon's socket, connecting to it, and blobctl's error type with its exit codes.
//!
//! This module never interprets what the daemon says beyond the version check; rendering
//! is `render`'s job.

use std::path::{Path, PathBuf};

use blobsync_proto::control_client::ControlClient;
use blobsync_proto::{API_VERSION, GetVersionRequest};
use blobsync_shared::config::Config;
use blobsync_shared::paths::{self, DefaultPaths};
use tonic::transport::Channel;

/// A connected client.
pub type Client = ControlClient<Channel>;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the call failed (or verify found problems).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad usage (clap's own errors, and the daemon's INVALID_ARGUMENT).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Everything that can make blobctl fail.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach blobsyncd at {}: {reason}\n\
         Start the daemon with `blobsyncd --foreground` (or `systemctl --user start blobsyncd`), \
         or point blobctl at its socket with --socket PATH.",
        socket.display()
    )]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// Why the connection failed.
        reason: String,
    },
    /// The socket is not one to trust (its directory, or the process answering on it); nothing
    /// was sent.
    #[error("{0}")]
    Untrusted(String),
    /// The daemon answered with an error.
    #[error("{}", rpc_message(.0))]
    Rpc(#[from] tonic::Status),
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What blobctl was doing, naming the file.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A combination of arguments that clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// The command ran but found problems (verify); already reported.
    #[error("{0}")]
    Problems(String),
    /// A key file operation failed.
    #[error("{0}")]
    Key(String),
    /// Ctrl-C; the message says what was left behind.
    #[error("{0}")]
    Interrupted(String),
}

fn rpc_message(s: &tonic::Status) -> String {
    let msg = s.message();
    if msg.is_empty() {
        format!("the daemon answered {:?} with no message", s.code())
    } else {
        msg.to_owned()
    }
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Unreachable { .. } => EXIT_UNREACHABLE,
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Interrupted(_) => EXIT_INTERRUPTED,
            CtlError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
            _ => EXIT_ERROR,
        }
    }

    /// A stable short code for `--json` error output (gRPC code names, or a local kind).
    pub fn code_name(&self) -> String {
        match self {
            CtlError::Unreachable { .. } => "UNREACHABLE".into(),
            CtlError::Untrusted(_) => "UNTRUSTED".into(),
            CtlError::Rpc(s) => grpc_code_name(s.code()).into(),
            CtlError::Io { .. } => "IO".into(),
            CtlError::Usage(_) => "USAGE".into(),
            CtlError::Problems(_) => "PROBLEMS".into(),
            CtlError::Key(_) => "KEY".into(),
            CtlError::Interrupted(_) => "INTERRUPTED".into(),
        }
    }

    /// An I/O error with what blobctl was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CtlError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The canonical upper-case name of a gRPC code, as grpcurl prints it.
pub fn grpc_code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The config file named by `--config` (`$BLOBSYNC_CONFIG`), loaded once at start.
static EXPLICIT_CONFIG: std::sync::OnceLock<(PathBuf, Config)> = std::sync::OnceLock::new();

/// `--config FILE`: this device's config, for its socket and key file. Unlike the default
/// file, a named one must exist and parse: the user asked for it.
pub fn use_config(path: &Path) -> Result<(), CtlError> {
    let defaults = DefaultPaths::discover().map_err(|e| CtlError::Usage(e.to_string()))?;
    let cfg = Config::load(path, &defaults)
        .map_err(|e| CtlError::Usage(format!("--config {}: {e}", path.display())))?;
    let _ = EXPLICIT_CONFIG.set((path.to_path_buf(), cfg));
    Ok(())
}

/// The config file blobctl reads (named by `--config`, else the default), and whether it
/// was named.
pub fn config_path() -> Option<(PathBuf, bool)> {
    if let Some((p, _)) = EXPLICIT_CONFIG.get() {
        return Some((p.clone(), true));
    }
    DefaultPaths::discover()
        .ok()
        .map(|d| (d.config_file(), false))
}

/// The config file blobctl reads for `socket` and `key_file`, if the user has one.
pub fn user_config() -> Option<Config> {
    if let Some((_, cfg)) = EXPLICIT_CONFIG.get() {
        return Some(cfg.clone());
    }
    let defaults = DefaultPaths::discover().ok()?;
    let path = defaults.config_file();
    if !path.exists() {
        return None;
    }
    // A broken config is the daemon's problem to report; blobctl falls back to defaults.
    Config::load(&path, &defaults).ok()
}

/// The socket to use: `--socket`/`$BLOBSYNC_SOCKET`, else the config file's `socket`, else
/// the daemon's default (`$XDG_RUNTIME_DIR/blobsync/blobsyncd.sock`, then the system
/// service's `/run/blobsync/blobsyncd.sock`).
pub fn discover_socket(flag: Option<&Path>) -> Result<PathBuf, CtlError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(cfg) = user_config() {
        let defaults = DefaultPaths::discover().ok();
        // Only an explicit config value overrides discovery (which also knows the system socket).
        if EXPLICIT_CONFIG.get().is_some() || defaults.is_none_or(|d| cfg.socket != d.socket()) {
            return Ok(cfg.socket);
        }
    }
    paths::discover_socket().map_err(|e| CtlError::Usage(e.to_string()))
}

/// The key file to use for `key export|import`: the flag, else the config's, else the default.
pub fn discover_key_file(flag: Option<&Path>) -> Result<PathBuf, CtlError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(cfg) = user_config() {
        return Ok(cfg.key_file);
    }
    Ok(DefaultPaths::discover()
        .map_err(|e| CtlError::Usage(e.to_string()))?
        .key_file())
}

/// Connects to the daemon at `socket` and checks the API version once (one warning line on a
/// mismatch; the call goes on, since the API only grows within v1).
pub async fn connect(socket: &Path) -> Result<Client, CtlError> {
    let unreachable = |reason: String| CtlError::Unreachable {
        socket: socket.to_path_buf(),
        reason,
    };
    // Connecting to a file that is not a socket says "connection refused": say what it is.
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::metadata(socket)
        && !m.file_type().is_socket()
    {
        let what = if m.is_dir() {
            "a directory"
        } else if m.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(unreachable(format!(
            "it is {what}, not a socket (blobsyncd's control socket is the `socket` of its config)"
        )));
    }
    let channel = blobsync_proto::connect_unix(socket)
        .await
        .map_err(|e| match untrusted(&e) {
            Some(u) => CtlError::Untrusted(u.message.clone()),
            None => unreachable(describe_connect_error(&e)),
        })?;
    let mut client = ControlClient::new(channel)
        // Blobs stream in chunks well below this; the bound only protects against a bug.
        .max_decoding_message_size(16 << 20);
    match client.get_version(GetVersionRequest {}).await {
        Ok(v) => {
            let v = v.into_inner();
            if v.api_version != API_VERSION {
                eprintln!(
                    "blobctl: warning: blobsyncd {} speaks control API v1.{} and this blobctl {} \
                     speaks v1.{API_VERSION}; some fields may be missing. Install matching versions.",
                    v.daemon_version,
                    v.api_version,
                    env!("CARGO_PKG_VERSION"),
                );
            }
        }
        // Something answered but is not a blobsyncd control socket.
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            return Err(unreachable(
                "something answers there, but it is not blobsyncd's control API".into(),
            ));
        }
        Err(s) if s.code() == tonic::Code::Unavailable => return Err(unreachable(rpc_message(&s))),
        Err(s) => return Err(s.into()),
    }
    Ok(client)
}

/// The trust check's refusal, if that is why the connect failed.
fn untrusted(e: &tonic::transport::Error) -> Option<&blobsync_proto::peer::Untrusted> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(u) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<blobsync_proto::peer::Untrusted>())
        {
            return Some(u);
        }
        if let Some(u) = s.downcast_ref::<blobsync_proto::peer::Untrusted>() {
            return Some(u);
        }
        source = s.source();
    }
    None
}

/// The innermost cause of a connect failure (tonic's outer message is just "transport error").
fn describe_connect_error(e: &tonic::transport::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        let unreachable = CtlError::Unreachable {
            socket: "/x.sock".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(unreachable.exit_code(), 3);
        let msg = unreachable.to_string();
        assert!(
            msg.contains("/x.sock") && msg.contains("blobsyncd --foreground"),
            "{msg}"
        );
        assert!(msg.contains("systemctl --user start blobsyncd"), "{msg}");
        assert_eq!(
            CtlError::Rpc(tonic::Status::invalid_argument("bad id")).exit_code(),
            2
        );
        assert_eq!(
            CtlError::Rpc(tonic::Status::not_found("no blob")).exit_code(),
            1
        );
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            CtlError::Rpc(tonic::Status::already_exists("x")).code_name(),
            "ALREADY_EXISTS"
        );
    }

    #[test]
    fn the_socket_flag_wins() {
        assert_eq!(
            discover_socket(Some(Path::new("/tmp/s.sock"))).unwrap(),
            PathBuf::from("/tmp/s.sock")
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = connect(&sock).await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNREACHABLE);
        assert!(
            err.to_string().contains(&sock.display().to_string()),
            "{err}"
        );
    }
}
