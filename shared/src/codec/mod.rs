//! Blob format v1 (docs/blob-format.md): a header, then the plaintext cut into
//! `2^k`-byte segments, each sealed with AES-256-GCM under a per-upload key derived with
//! HKDF-SHA256 from the storage key and the header's salt.
//!
//! The core is sans-IO: [`Encoder`] seals one segment at a time and [`Decoder`] takes stored
//! bytes in any chunking and hands on only verified plaintext, so async and sync callers share
//! one implementation with memory bounded by one segment. [`EncryptReader`], [`DecryptWriter`]
//! and [`decrypt_range`] are thin `std::io` adapters on top. This module never opens files or
//! sockets and never logs key material or plaintext.

mod header;
mod io;
mod stream;

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::SecureRandom;

use crate::id::{BlobId, Namespace};

pub use header::{FIXED_HEADER_LEN, Header, MAX_HEADER_LEN, stored_size};
pub use io::{DecryptWriter, EncryptReader, decrypt_range, decrypt_to, encrypt_to, invalid_blob};
pub use stream::{DecodeError, Decoder, Encoder};

/// First two bytes of every blob (Soledad's magic).
pub const MAGIC: [u8; 2] = [0x13, 0x37];
/// Format version this module writes and reads.
pub const VERSION: u8 = 1;
/// Scheme byte: symmetric storage key (the only scheme v1 writes or reads).
pub const SCHEME_SYMKEY: u8 = 1;
/// Method byte: AES-256-GCM, segmented (Soledad used 1 ctr, 2 gcm, 3 pgp).
pub const METHOD_AES256GCM_SEGMENTED: u8 = 4;
/// Default segment exponent: 64 KiB segments.
pub const DEFAULT_SEGMENT_EXP: u8 = 16;
/// Smallest segment exponent accepted (4 KiB).
pub const MIN_SEGMENT_EXP: u8 = 12;
/// Largest segment exponent accepted (16 MiB): bounds a decoder's buffer.
pub const MAX_SEGMENT_EXP: u8 = 24;
/// AES-GCM tag length appended to every segment.
pub const TAG_LEN: usize = 16;
/// Length of the per-upload HKDF salt in the header.
pub const SALT_LEN: usize = 32;
/// Length of a storage key.
pub const KEY_LEN: usize = 32;
/// HKDF info string binding derived keys to this format.
pub const HKDF_INFO: &[u8] = b"blobsync v1 blob";

/// The user's 32-byte storage key. Its `Debug` never prints the bytes, and it is zeroed when
/// dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageKey([u8; KEY_LEN]);

impl StorageKey {
    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random key from the OS.
    pub fn generate() -> Self {
        let mut b = [0u8; KEY_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .expect("the OS random source failed"); // unrecoverable: no key can be made
        Self(b)
    }

    /// The raw key bytes (for writing the key file; never log them).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

impl Drop for StorageKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the compiler cannot drop the zeroing of memory about to be freed.
            // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Why stored bytes are not a valid blob for the key, namespace and id asked for: the one
/// unrecoverable transfer error. Each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBlob {
    /// The first two bytes are not `13 37`: not a blobsync blob.
    #[error("invalid blob: bad magic (not a blobsync v1 blob)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("invalid blob: unsupported format version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// A scheme other than symmetric key.
    #[error("invalid blob: unsupported scheme {0} (v1 reads only 1, symmetric key)")]
    UnsupportedScheme(u8),
    /// A method other than segmented AES-256-GCM.
    #[error("invalid blob: unsupported method {0} (v1 reads only 4, segmented AES-256-GCM)")]
    UnsupportedMethod(u8),
    /// Segment exponent outside 12..=24.
    #[error("invalid blob: segment exponent {0} is outside 12..=24")]
    BadSegmentExponent(u8),
    /// Another header field is malformed (names, sizes).
    #[error("invalid blob: bad header: {0}")]
    BadHeader(String),
    /// The header names another namespace than the one asked for (a swapped blob).
    #[error("invalid blob: header says namespace {found:?}, expected {expected:?}")]
    NamespaceMismatch {
        /// The namespace asked for.
        expected: Namespace,
        /// The namespace in the header.
        found: Namespace,
    },
    /// The header names another blob id than the one asked for (a swapped blob).
    #[error("invalid blob: header says id {found:?}, expected {expected:?}")]
    IdMismatch {
        /// The id asked for.
        expected: BlobId,
        /// The id in the header.
        found: BlobId,
    },
    /// Segment `segment` failed authentication: modified, reordered, from another blob, or
    /// the storage key is not the one it was written with.
    #[error(
        "invalid blob: segment {segment} failed authentication (the blob was modified, or it was written with another storage key)"
    )]
    BadTag {
        /// Index of the first segment that failed.
        segment: u64,
    },
    /// The stored bytes end early.
    #[error("invalid blob: truncated: got {received} stored bytes, expected {expected}")]
    Truncated {
        /// Stored bytes seen.
        received: u64,
        /// Stored bytes the header calls for (or, when the header itself is cut short, the
        /// least a header can need).
        expected: u64,
    },
    /// More bytes follow the final segment.
    #[error(
        "invalid blob: trailing bytes: got at least {received} stored bytes, expected {expected}"
    )]
    TrailingBytes {
        /// Stored bytes the header calls for.
        expected: u64,
        /// Stored bytes seen when the excess was found.
        received: u64,
    },
    /// An incoming delivery (an age file) that does not decrypt under the user's incoming
    /// identity: not age, encrypted to someone else, or a chunk failed (`incoming`).
    #[error("invalid incoming delivery: {0}")]
    Age(String),
}

impl InvalidBlob {
    /// A short name of the failed check (`"magic"`, `"version"`, `"scheme"`, `"method"`,
    /// `"exponent"`, `"header"`, `"namespace"`, `"id"`, `"tag"`, `"truncated"`, `"trailing"`),
    /// for logs, metrics and the reference vectors.
    pub fn check(&self) -> &'static str {
        match self {
            InvalidBlob::BadMagic => "magic",
            InvalidBlob::UnsupportedVersion(_) => "version",
            InvalidBlob::UnsupportedScheme(_) => "scheme",
            InvalidBlob::UnsupportedMethod(_) => "method",
            InvalidBlob::BadSegmentExponent(_) => "exponent",
            InvalidBlob::BadHeader(_) => "header",
            InvalidBlob::NamespaceMismatch { .. } => "namespace",
            InvalidBlob::IdMismatch { .. } => "id",
            InvalidBlob::BadTag { .. } => "tag",
            InvalidBlob::Truncated { .. } => "truncated",
            InvalidBlob::Age(_) => "age",
            InvalidBlob::TrailingBytes { .. } => "trailing",
        }
    }
}

/// Errors of the codec layer: invalid stored bytes, I/O, or caller mistakes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The stored bytes are not a valid blob (unrecoverable for this copy).
    #[error(transparent)]
    Invalid(#[from] InvalidBlob),
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The plaintext source gave another number of bytes than the header's size.
    #[error("plaintext size changed while encrypting: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The header's plaintext size.
        expected: u64,
        /// Bytes the source gave (at least, when it gave too many).
        actual: u64,
    },
    /// A segment exponent outside 12..=24 was asked for.
    #[error("segment exponent {0} is outside 12..=24")]
    BadSegmentExponent(u8),
    /// The plaintext size cannot be stored (the stored size would overflow u64).
    #[error("plaintext size {plain_size} is too large")]
    TooLarge {
        /// The size asked for.
        plain_size: u64,
    },
    /// [`Encoder::seal_next`] got a segment of the wrong length.
    #[error("segment {segment} must hold {expected} plaintext bytes, got {got}")]
    WrongSegmentLength {
        /// The segment index.
        segment: u64,
        /// Bytes it must hold.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// [`Encoder::seal_next`] called after the final segment.
    #[error("all segments are already sealed")]
    AlreadyDone,
    /// A plaintext range that starts past the end of the blob.
    #[error("range starts at {start}, past the end of the {plain_size}-byte blob")]
    RangeNotSatisfiable {
        /// Start of the range asked for.
        start: u64,
        /// The blob's plaintext size.
        plain_size: u64,
    },
}

/// The per-blob AEAD: derived key plus the header bytes used as associated data.
pub(crate) struct SegmentCipher {
    key: LessSafeKey,
    aad: Vec<u8>,
}

impl SegmentCipher {
    pub(crate) fn new(key: &StorageKey, header: &Header, header_bytes: Vec<u8>) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.salt).extract(key.as_bytes());
        let okm = prk
            .expand(&[HKDF_INFO], &aead::AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let key = LessSafeKey::new(UnboundKey::from(okm));
        Self {
            key,
            aad: header_bytes,
        }
    }

    pub(crate) fn header_bytes(&self) -> &[u8] {
        &self.aad
    }

    fn nonce(index: u64, last: bool) -> Nonce {
        // 11-byte big-endian index (the top 3 bytes are always zero for a u64) || last flag.
        let mut n = [0u8; aead::NONCE_LEN];
        n[3..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal(&self, index: u64, last: bool, buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(Self::nonce(index, last), Aad::from(&self.aad[..]), buf)
            // ring fails only for inputs beyond GCM's ~64 GiB limit; segments are <= 16 MiB.
            .expect("segment within AES-GCM's size limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Verifies and decrypts `sealed` (ciphertext || tag) in place; returns the plaintext.
    pub(crate) fn open<'a>(
        &self,
        index: u64,
        last: bool,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], InvalidBlob> {
        self.key
            .open_in_place(Self::nonce(index, last), Aad::from(&self.aad[..]), sealed)
            .map_err(|_| InvalidBlob::BadTag { segment: index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_key_debug_is_redacted() {
        let k = StorageKey::from_bytes([0xab; 32]);
        let s = format!("{k:?}");
        assert_eq!(s, "StorageKey(<redacted>)");
        assert!(!s.contains("ab"));
        assert_ne!(StorageKey::generate(), StorageKey::generate());
    }
}
