//! Generated code for `proto/blobsync.proto` (package `blobsync.v1`): the control API that
//! `blobctl` and apps use to drive `blobsyncd`. The `.proto` file is the API reference.
//!
//! No hand-written logic lives here beyond [`connect_unix`], the one way a Rust client
//! reaches the daemon's socket: generated types never reach the daemon's engine, only its
//! `control` module converts them.

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
pub async fn connect_unix(
    socket: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.as_ref().to_path_buf();
    // The URI is a placeholder: the connector ignores it and dials the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
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
