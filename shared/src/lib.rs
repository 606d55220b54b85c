//! `blobsync-shared`: what every part of blobsync agrees on — the blob format, keys, validated
//! ids, the HTTP wire types and the config. This crate runs no servers and opens no sockets.

pub mod chunks;
pub mod codec;
pub mod config;
pub mod id;
pub mod incoming;
pub mod keyfile;
pub mod keystore;
pub mod paths;
pub mod tombstone;
pub mod units;
pub mod wire;
pub mod writeback;

pub use codec::{CodecError, InvalidBlob, StorageKey};
pub use id::{BlobId, IdError, Namespace};
