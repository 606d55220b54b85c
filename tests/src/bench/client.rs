//! A gRPC client on a daemon's control socket, for the benchmark.
//!
//! The benchmark drives the daemons through the public control API (`blobsync.v1.Control`),
//! not through `blobctl`: one process per put would make the client the bottleneck. This
//! module only connects and calls; it never interprets timings.

use std::path::Path;

use blobsync_proto::control_client::ControlClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::BenchError;

/// A connected control client.
pub type Client = ControlClient<Channel>;

/// Connects to the daemon listening on `socket`.
pub async fn connect(socket: &Path) -> Result<Client, BenchError> {
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector dials the Unix socket.
    let channel = Endpoint::from_static("http://blobsyncd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(ControlClient::new(channel).max_decoding_message_size(16 << 20))
}
