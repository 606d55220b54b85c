//! The HTTP API (server/README.md), driven over loopback with a real hyper client against the
//! in-process server. Tests in `both_backends!` run twice: on `fs+sqlite` (real SQLite index,
//! real payload files in a temp dir) and on `s3+postgres` (a real Garage and PostgreSQL,
//! started for the test); the rest are about one node's files or limits. This file holds
//! what the modules share; refusals of bad input (auth, ids, query parameters, malformed
//! streams, oversized headers) are the boundary's one table, `tests/tests/http_bad_input.rs`.

#[path = "../common/mod.rs"]
mod common;

mod blobs;
mod listing;
mod node;
mod quota;
mod stream;

use std::collections::BTreeMap;
use std::time::Duration;

use blobsync_shared::BlobId;
use blobsync_shared::wire::{
    BlobDetail, ChangeOp, ChangesResponse, CountResponse, Flag, NamespacesResponse,
    encode_upload_header,
};
use bytes::Bytes;
use common::{TestServer, body, decode_frames};

fn id(s: &str) -> BlobId {
    BlobId::new(s).unwrap()
}

fn stream_body(blobs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<(BlobId, u64)> = blobs.iter().map(|(i, b)| (id(i), b.len() as u64)).collect();
    let mut out = encode_upload_header(&entries);
    for (_, b) in blobs {
        out.extend_from_slice(b);
    }
    out
}
