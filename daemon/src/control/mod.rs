//! The control service: gRPC (`blobsync.v1.Control`) on the daemon's Unix socket, plus the
//! standard health and reflection services, for `blobctl` and apps.
//!
//! It owns the socket file (0600 in a 0700 dir, stale files replaced only when nobody
//! answers), the peer check (same uid or root), and the translation between proto messages
//! and the engine's types (`convert`). It is the only module that knows prost types, and it
//! holds no sync logic: every RPC is a call on the engine handle.

mod convert;
mod service;

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use blobsync_proto::control_server::ControlServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::UdsConnectInfo;

pub use convert::engine_status;
pub use service::Service;

/// What the daemon tells `GetVersion` about where it keeps its key, so `blobctl key export
/// --socket S` exports the key of the daemon at S (empty in tests that do not care).
#[derive(Debug, Clone, Default)]
pub struct DaemonInfo {
    /// `key_store`: "file", "keyring" or "credential".
    pub key_store: String,
    /// The key file (the keyring entry is named after it).
    pub key_file: PathBuf,
    /// The user name on the server.
    pub user: String,
    /// The config file read (or looked for: it may not exist).
    pub config_file: PathBuf,
}

use crate::handle::EngineHandle;

/// Largest gRPC message the daemon accepts (Put chunks are documented as at most 4 MiB;
/// this leaves room for framing). A bound, so a client bug cannot make the daemon allocate
/// without limit.
const MAX_MESSAGE_BYTES: usize = 5 << 20;

/// Why the control socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Creating the socket's directory failed.
    #[error("cannot create the control socket's directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The socket's directory exists but others may enter it.
    #[error(
        "the control socket's directory {} has mode {mode:04o}: anybody could replace the \
         socket there; run `chmod 700 {}` or choose another `socket` path",
        path.display(),
        path.display()
    )]
    DirPermissions {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The socket's directory belongs to another user, who could replace the socket.
    #[error(
        "the control socket's directory {} belongs to {owner}: that user could replace the \
         socket, and clients refuse it. Choose a `socket` path in a directory of your own",
        path.display()
    )]
    DirOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner, e.g. `uid 1001 (bob)`.
        owner: String,
    },
    /// A daemon already answers on the socket.
    #[error(
        "another blobsyncd is running: it answers on {}. Stop it first (`blobctl status` shows \
         it), or give this one another `socket` path",
        path.display()
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The path exists and is not a socket: refuse to delete someone's file.
    #[error(
        "{} exists and is not a socket; refusing to replace it. Remove it or choose another \
         `socket` path",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Binding (or removing the stale socket, or setting its mode) failed.
    #[error("cannot listen on the control socket {}: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The reflection service could not load the descriptor set (a build problem).
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("the control server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds the control socket at `path`.
///
/// Creates the parent directory with mode 0700 when missing (and refuses one that group or
/// others can enter), replaces a stale socket file only after checking that no daemon
/// answers on it, and leaves the socket with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                // The rule clients apply (`blobsync_proto::peer`): a dir that another user
                // owns, or that group or others may write without the sticky bit, lets
                // someone swap the socket for their own: refuse. A merely readable one is
                // only a warning: the socket's own mode and the peer check keep others out.
                use std::os::unix::fs::MetadataExt;
                if meta.uid() != own_uid() && meta.uid() != 0 {
                    return Err(ControlError::DirOwner {
                        path: dir.to_path_buf(),
                        owner: blobsync_proto::peer::describe_uid(meta.uid()),
                    });
                }
                if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                    return Err(ControlError::DirPermissions {
                        path: dir.to_path_buf(),
                        mode,
                    });
                }
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        mode = format!("{mode:04o}"),
                        "the control socket's directory is open to other users; 0700 is safer"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| ControlError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?,
            Err(source) => {
                return Err(ControlError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            // A blocking connect on a local socket answers at once: accepted (a live
            // daemon) or ECONNREFUSED (a stale file left by a crash).
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ControlError::AlreadyRunning {
                        path: path.to_path_buf(),
                    });
                }
                Err(_) => {
                    tracing::info!(socket = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves the control API, health and reflection on `listener` until `cancel` fires, then
/// stops accepting, ends open streams (watches, waits) and returns once calls in flight are
/// done. The socket file is removed on the way out.
pub async fn serve(
    listener: UnixListener,
    handle: EngineHandle,
    cancel: CancellationToken,
    info: DaemonInfo,
) -> Result<(), ControlError> {
    let socket_path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(
            blobsync_proto::SERVICE_NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(blobsync_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(blobsync_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let control = ControlServer::new(Service::new(handle, cancel.clone(), info))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    tracing::info!(
        socket = %socket_path.as_deref().map_or("(no path)".into(), |p| p.display().to_string()),
        "control socket ready"
    );
    let result = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(control, check_peer))
        .add_service(InterceptedService::new(health, check_peer))
        .add_service(InterceptedService::new(reflection_v1, check_peer))
        .add_service(InterceptedService::new(reflection_v1alpha, check_peer))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), cancel.cancelled())
        .await;
    health_reporter
        .set_service_status(
            blobsync_proto::SERVICE_NAME,
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    if let Some(p) = socket_path {
        // Best effort: a leftover file is handled as stale by the next start anyway.
        let _ = std::fs::remove_file(p);
    }
    result.map_err(ControlError::from)
}

/// The uid this daemon runs as.
fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Admits only callers running as the daemon's own user, or root. The socket's mode already
/// keeps others out; this also covers a socket path in a shared directory or a changed mode.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
fn check_peer(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let uid = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    match uid {
        Some(uid) if peer_allowed(uid, own_uid()) => Ok(req),
        Some(uid) => Err(tonic::Status::permission_denied(format!(
            "blobsyncd runs as uid {} and only that user (or root) may control it; you are uid \
             {uid}. Run blobctl as the daemon's user, or start your own daemon \
             (`systemctl --user start blobsyncd`)",
            own_uid()
        ))),
        None => Err(tonic::Status::permission_denied(
            "blobsyncd could not read the caller's credentials from the socket, so it refuses \
             the call",
        )),
    }
}

/// The peer rule: same uid, or root.
fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_rule_is_same_uid_or_root() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
    }

    #[tokio::test]
    async fn bind_creates_a_private_dir_and_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run/blobsync/blobsyncd.sock");
        let _l = bind(&sock).unwrap();
        let dir_mode = std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let sock_mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(sock_mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s.sock");
        // A socket file nobody listens on: what a crashed daemon leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let live = bind(&sock).expect("a stale socket is replaced");
        let err = bind(&sock).unwrap_err();
        assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
        assert!(
            err.to_string().contains("another blobsyncd is running"),
            "{err}"
        );
        drop(live);
    }

    #[test]
    fn other_files_and_open_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-socket");
        std::fs::write(&file, "precious").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        assert!(matches!(bind(&file), Err(ControlError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&open.join("s.sock")).unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");
    }
}
