//! Helpers shared by the codec test files: deterministic plaintext, one-shot encode/decode.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;

use blobsync_shared::codec::{
    DecodeError, Decoder, EncryptReader, Header, InvalidBlob, StorageKey,
};
use blobsync_shared::{BlobId, Namespace};

/// The reference vectors' plaintext: bytes `(i*7+3) % 251`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

pub fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

pub fn id(s: &str) -> BlobId {
    BlobId::new(s).unwrap()
}

pub fn key() -> StorageKey {
    StorageKey::from_bytes([7u8; 32])
}

/// Encrypts `plain` with a fresh header through `EncryptReader`.
pub fn encrypt(key: &StorageKey, ns_: &Namespace, id_: &BlobId, plain: &[u8], k: u8) -> Vec<u8> {
    let header = Header::new(ns_.clone(), id_.clone(), plain.len() as u64, k).unwrap();
    encrypt_with(key, header, plain)
}

/// Encrypts `plain` under a given header (for fixed salts).
pub fn encrypt_with(key: &StorageKey, header: Header, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    EncryptReader::new(key, header, plain)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Decodes `stored` fed in chunks of `chunk` bytes; the plaintext only if `finish` succeeds.
pub fn decrypt_chunked(
    key: &StorageKey,
    ns_: &Namespace,
    id_: &BlobId,
    stored: &[u8],
    chunk: usize,
) -> Result<Vec<u8>, InvalidBlob> {
    let mut d = Decoder::new(key, ns_, id_);
    let mut plain = Vec::new();
    for c in stored.chunks(chunk.max(1)) {
        d.feed(c, |p| {
            plain.extend_from_slice(p);
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| match e {
            DecodeError::Invalid(e) => e,
            DecodeError::Sink(never) => match never {},
        })?;
    }
    d.finish()?;
    Ok(plain)
}

pub fn decrypt(
    key: &StorageKey,
    ns_: &Namespace,
    id_: &BlobId,
    stored: &[u8],
) -> Result<Vec<u8>, InvalidBlob> {
    decrypt_chunked(key, ns_, id_, stored, stored.len())
}
