//! Generated code for `proto/blobsync.proto` (package `blobsync.v1`): the control API that
//! `blobctl` and apps use to drive `blobsyncd`. The `.proto` file is the API reference.
//!
//! No hand-written logic lives here beyond [`connect_unix`], the one way a Rust client
//! reaches the daemon's socket, and its trust check [`peer`]: generated types never reach the
//! daemon's engine, only its `control` module converts them.

/// Messages, enums, the `control_client` and the `control_server` of package `blobsync.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("blobsync.v1");
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of `blobsync.proto` and its imports, for
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blobsync_descriptor.bin"));

/// The control API version this crate speaks (`GetVersionResponse.api_version`).
pub const API_VERSION: u32 = 1;

/// The fully qualified gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "blobsync.v1.Control";

/// A channel to the control service listening on the Unix socket `socket` (gRPC over HTTP/2,
/// `:authority` `localhost` as the service expects). Wrap it in
/// [`control_client::ControlClient`]; connecting fails when nothing listens there.
///
/// Before a byte is sent, every connection is checked (see [`peer`]): the socket's directory
/// must be one only trusted users can change, and the process answering must run as the
/// caller's own user or root (or, on the system socket, the system service's user). Otherwise
/// the connect fails with a `PermissionDenied` I/O error carrying a [`peer::Untrusted`].
pub async fn connect_unix(
    socket: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.as_ref().to_path_buf();
    // The URI is a placeholder: the connector ignores it and dials the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                peer::check_dir(&path)?;
                let stream = tokio::net::UnixStream::connect(&path).await?;
                peer::check_peer(&path, stream.peer_cred()?.uid())?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Who may answer on a control socket: the client half of the trust model's promise 7 (the
/// daemon checks its callers; this checks the daemon).
///
/// The rule, kept simple:
/// - the socket's directory must be owned by the caller or root, and must not be writable by
///   group or others unless it has the sticky bit (there only a file's owner can replace it);
/// - the process answering (`SO_PEERCRED`) must run as the caller's uid or root;
/// - on the system socket ([`peer::SYSTEM_SOCKET`], `/run/blobsync/blobsyncd.sock`) the system
///   service's user `blobsync` is also trusted, as the directory's owner and as the peer (only
///   root can make a directory in `/run`, and systemd gives that one to the service).
///
/// So root cannot drive another user's daemon directly: `runuser -u USER blobctl ...`.
pub mod peer {
    use std::ffi::{CStr, CString};
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    /// The system service's socket (as `blobsync_shared::paths::SYSTEM_SOCKET`).
    pub const SYSTEM_SOCKET: &str = "/run/blobsync/blobsyncd.sock";
    /// The system service's user (`User=` in `blobsyncd.service`, `sysusers.d`).
    pub const SYSTEM_USER: &str = "blobsync";

    /// Why a socket was not trusted; the message names the socket, the owner and what to do.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Untrusted {
        /// What is wrong.
        pub message: String,
    }

    impl std::fmt::Display for Untrusted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl std::error::Error for Untrusted {}

    fn refuse(message: String) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, Untrusted { message })
    }

    /// The caller's effective uid.
    pub fn own_uid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    /// The uids trusted for `socket` besides the caller's own: root, plus the system
    /// service's user on the system socket.
    fn trusted(socket: &Path, uid: u32) -> bool {
        uid == own_uid()
            || uid == 0
            || (socket == Path::new(SYSTEM_SOCKET) && uid_of(SYSTEM_USER) == Some(uid))
    }

    /// Checks the directory `socket` is in (symlinks followed: the real directory counts).
    pub fn check_dir(socket: &Path) -> io::Result<()> {
        let dir = match socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let meta = match std::fs::metadata(dir) {
            Ok(m) => m,
            // Nothing to trust or distrust: the connect reports the missing socket.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if !trusted(socket, meta.uid()) {
            return Err(refuse(format!(
                "refusing {}: its directory {} belongs to {}, who could put any program behind \
                 that socket. Use a socket in a directory of your own (or root's)",
                socket.display(),
                dir.display(),
                describe_uid(meta.uid())
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(refuse(format!(
                "refusing {}: its directory {} has mode {mode:04o}, so other users could \
                 replace the socket. Run `chmod go-w {}` or use another socket path",
                socket.display(),
                dir.display(),
                dir.display()
            )));
        }
        Ok(())
    }

    /// Checks the uid of the process that accepted the connection on `socket`.
    pub fn check_peer(socket: &Path, peer_uid: u32) -> io::Result<()> {
        if trusted(socket, peer_uid) {
            return Ok(());
        }
        Err(refuse(format!(
            "refusing {}: the process answering there runs as {}, not as you (uid {}) or root; \
             nothing was sent. If that is your daemon, run blobctl as its user (e.g. `runuser -u \
             USER -- blobctl ...`); otherwise someone else's program holds this socket path",
            socket.display(),
            describe_uid(peer_uid),
            own_uid()
        )))
    }

    /// `uid 65534 (nobody)`, or `uid 1234` when the name cannot be resolved.
    pub fn describe_uid(uid: u32) -> String {
        match user_name(uid) {
            Some(name) => format!("uid {uid} ({name})"),
            None => format!("uid {uid}"),
        }
    }

    /// The login name of `uid`, from the password database.
    pub fn user_name(uid: u32) -> Option<String> {
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid out-parameter; getpwuid_r writes only into
        // it and `buf` (whose length it is told), and `pw_name` points into `buf`.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result = std::ptr::null_mut();
            let r = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
            if r != 0 || result.is_null() || pwd.pw_name.is_null() {
                return None;
            }
            Some(CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned())
        }
    }

    /// The uid of the user `name`, from the password database.
    pub fn uid_of(name: &str) -> Option<u32> {
        let cname = CString::new(name).ok()?;
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: as in `user_name`; `cname` outlives the call.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result = std::ptr::null_mut();
            let r = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            if r != 0 || result.is_null() {
                return None;
            }
            Some(pwd.pw_uid)
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_the_service_and_its_imports() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = set.file.iter().map(|f| f.name()).collect();
        assert!(names.contains(&"blobsync.proto"), "{names:?}");
        // Reflection clients resolve imports by file name, so the set must carry them too.
        assert!(
            names.contains(&"google/protobuf/timestamp.proto"),
            "{names:?}"
        );
        let ours = set
            .file
            .iter()
            .find(|f| f.name() == "blobsync.proto")
            .unwrap();
        assert_eq!(ours.package(), "blobsync.v1");
        let svc = &ours.service[0];
        assert_eq!(
            format!("{}.{}", ours.package(), svc.name()),
            super::SERVICE_NAME
        );
        let rpcs: Vec<_> = svc.method.iter().map(|m| m.name()).collect();
        for rpc in [
            "Put",
            "PutPath",
            "Get",
            "Delete",
            "List",
            "Status",
            "Sync",
            "Watch",
            "Retry",
            "SetPriority",
            "Pause",
            "Resume",
            "SetLimits",
            "Verify",
            "GetFlags",
            "SetFlags",
            "ListRemote",
            "GetVersion",
        ] {
            assert!(rpcs.contains(&rpc), "missing rpc {rpc}");
        }
    }

    #[test]
    fn socket_dirs_others_may_write_are_refused_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("blobsync-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        for (mode, ok) in [
            (0o700, true),
            (0o755, true),
            (0o1777, true),
            (0o777, false),
            (0o770, false),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = super::peer::check_dir(&sock);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
                assert!(e.to_string().contains("chmod go-w"), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // Our own uid and root are trusted peers; the caller is one of them.
        let me = super::peer::own_uid();
        assert!(super::peer::check_peer(&sock, me).is_ok());
        assert!(super::peer::check_peer(&sock, 0).is_ok());
    }

    #[test]
    fn enums_print_with_their_proto_names() {
        assert_eq!(
            super::BlobStatus::Synced.as_str_name(),
            "BLOB_STATUS_SYNCED"
        );
        assert_eq!(
            super::Priority::from_str_name("PRIORITY_URGENT"),
            Some(super::Priority::Urgent)
        );
    }
}
