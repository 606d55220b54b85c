//! The incoming identity (docs/incoming.md): an age X25519 identity derived from the
//! storage key, so every device of a user holds it and no new secret exists. Apps encrypt
//! deliveries to its recipient (`age1...`) with any age implementation; the daemon decrypts
//! them with [`IncomingIdentity::decrypt`]. The age format itself is the `age` crate's.
//!
//! Derivation: `HKDF-SHA256(salt = "blobsync v1 incoming", ikm = storage key,
//! info = "age x25519 identity")`, 32 bytes, taken as the X25519 secret (clamped by X25519
//! itself, as age does with the bytes of an `AGE-SECRET-KEY-1...` string). No I/O here but
//! the reader and writer handed to [`IncomingIdentity::decrypt`].

use std::io::{Read, Write};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use bech32::ToBase32;
use ring::hkdf;

use crate::codec::StorageKey;

const HKDF_SALT: &[u8] = b"blobsync v1 incoming";
const HKDF_INFO: &[u8] = b"age x25519 identity";

/// The first line of every age file (the server checks it on delivery).
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// Whether `head` (the first bytes of a body) starts like an age file: its version line.
pub fn looks_like_age(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC) && matches!(head.get(AGE_MAGIC.len()), None | Some(b'\n'))
}

/// Whether `s` is an age X25519 recipient (`age1...`, valid Bech32 of 32 bytes).
pub fn is_recipient(s: &str) -> bool {
    s.starts_with("age1") && age::x25519::Recipient::from_str(s).is_ok()
}

/// Why an incoming age file could not be decrypted. Every case is a bad blob.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// Not an age file, or encrypted to someone else, or damaged (a chunk tag failed).
    #[error("not a valid age file for this user's incoming identity: {0}")]
    Invalid(String),
    /// Reading the age file or writing the plaintext failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The user's incoming age identity.
pub struct IncomingIdentity(age::x25519::Identity);

impl IncomingIdentity {
    /// Derives the identity from the storage key (docs/incoming.md; see the module docs).
    pub fn derive(key: &StorageKey) -> Self {
        let mut secret = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT)
            .extract(key.as_bytes())
            .expand(&[HKDF_INFO], Len32)
            .and_then(|okm| okm.fill(&mut secret))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        // The age crate takes an identity only as its Bech32 string; build that string.
        let s = bech32::encode(
            "age-secret-key-",
            secret.to_base32(),
            bech32::Variant::Bech32,
        )
        .expect("a fixed, valid human-readable part")
        .to_uppercase();
        secret.fill(0);
        let id = age::x25519::Identity::from_str(&s).expect("32 bytes make a valid identity");
        Self(id)
    }

    /// The recipient (`age1...`) apps encrypt to.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// The identity as age's own secret-key string (`AGE-SECRET-KEY-1...`), for tests that
    /// decrypt with another age implementation. Never logged or sent anywhere.
    pub fn secret_string(&self) -> String {
        self.0.to_string().expose_secret().to_string()
    }

    /// Decrypts the age file read from `input` into `output`, streaming (age authenticates
    /// every 64 KiB chunk, so nothing unauthenticated is written past a chunk that fails).
    /// Passphrase (scrypt) files are refused: apps encrypt to the recipient. Returns the
    /// plaintext size. On an error `output` may hold a prefix: the caller discards it.
    pub fn decrypt(&self, input: impl Read, mut output: impl Write) -> Result<u64, IncomingError> {
        let d = age::Decryptor::new(std::io::BufReader::new(input))
            .map_err(|e| IncomingError::Invalid(e.to_string()))?;
        if d.is_scrypt() {
            return Err(IncomingError::Invalid(
                "encrypted with a passphrase; deliveries must be encrypted to the user's \
                 incoming recipient (age -r age1...)"
                    .into(),
            ));
        }
        let mut r = d
            .decrypt(std::iter::once(&self.0 as &dyn age::Identity))
            .map_err(|e| IncomingError::Invalid(e.to_string()))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The stream reader reports a failed chunk tag or truncation as InvalidData
                // (or UnexpectedEof): the file, not our disk.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Err(IncomingError::Invalid(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            output.write_all(&buf[..n])?;
            total += n as u64;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StorageKey {
        StorageKey::from_bytes([b; 32])
    }

    fn encrypt(recipient: &str, plain: &[u8]) -> Vec<u8> {
        let r = age::x25519::Recipient::from_str(recipient).unwrap();
        let e =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn derivation_is_stable_per_key_and_differs_between_keys() {
        let a = IncomingIdentity::derive(&key(1)).recipient();
        assert_eq!(a, IncomingIdentity::derive(&key(1)).recipient());
        assert_ne!(a, IncomingIdentity::derive(&key(2)).recipient());
        assert!(is_recipient(&a), "{a}");
        assert!(!is_recipient("age1nope"));
        assert!(!is_recipient(
            &IncomingIdentity::derive(&key(1)).secret_string()
        ));
    }

    #[test]
    fn derivation_matches_the_hkdf_rule() {
        // HKDF-SHA256(salt, ikm = 32 x 0x01, info) computed independently with ring's HMAC.
        use ring::hmac;
        let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, HKDF_SALT), &[1u8; 32]);
        let mut t = HKDF_INFO.to_vec();
        t.push(1);
        let okm = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()), &t);
        let s = bech32::encode(
            "age-secret-key-",
            okm.as_ref().to_base32(),
            bech32::Variant::Bech32,
        )
        .unwrap()
        .to_uppercase();
        assert_eq!(IncomingIdentity::derive(&key(1)).secret_string(), s);
    }

    #[test]
    fn round_trip_and_every_bad_input_is_invalid() {
        let id = IncomingIdentity::derive(&key(7));
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = encrypt(&id.recipient(), &plain);
        assert!(looks_like_age(&file));
        let mut out = Vec::new();
        assert_eq!(id.decrypt(&file[..], &mut out).unwrap(), plain.len() as u64);
        assert_eq!(out, plain);

        let truncated = &file[..file.len() - 100];
        assert!(matches!(
            id.decrypt(truncated, Vec::new()),
            Err(IncomingError::Invalid(_))
        ));
        let mut flipped = file.clone();
        let n = flipped.len();
        flipped[n - 10] ^= 1;
        assert!(matches!(
            id.decrypt(&flipped[..], Vec::new()),
            Err(IncomingError::Invalid(_))
        ));
        let other = encrypt(&IncomingIdentity::derive(&key(8)).recipient(), b"hi");
        assert!(matches!(
            id.decrypt(&other[..], Vec::new()),
            Err(IncomingError::Invalid(_))
        ));
        assert!(matches!(
            id.decrypt(&b"hello"[..], Vec::new()),
            Err(IncomingError::Invalid(_))
        ));
        assert!(!looks_like_age(b"age-encryption.org/v10"));
    }
}
