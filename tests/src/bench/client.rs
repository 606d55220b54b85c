//! A gRPC client on a daemon's control socket, for the benchmark.
//!
//! The benchmark drives the daemons through the public control API (`blobsync.v1.Control`),
//! not through `blobctl`: one process per put would make the client the bottleneck. This
//! module only connects and calls; it never interprets timings.

use std::path::Path;

use blobsync_proto::control_client::ControlClient;
use tonic::transport::Channel;

use super::BenchError;

/// A connected control client.
pub type Client = ControlClient<Channel>;

/// Connects to the daemon listening on `socket`.
pub async fn connect(socket: &Path) -> Result<Client, BenchError> {
    let channel = blobsync_proto::connect_unix(socket).await?;
    Ok(ControlClient::new(channel).max_decoding_message_size(16 << 20))
}
