//! Bearer tokens: 32 random bytes shown once as 64 hex characters; only their SHA-256 is
//! stored, so a copy of the index does not let anyone in.
//!
//! This module never touches the index or the network.

/// A fresh token (64 lowercase hex characters).
pub fn generate() -> String {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the OS random source failed"); // unrecoverable: no token can be made safely
    hex::encode(b)
}

/// The stored form of a token.
pub fn hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_random_hex_and_hash_stably() {
        let a = super::generate();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, super::generate());
        assert_eq!(super::hash(&a), super::hash(&a));
        assert_ne!(super::hash(&a), super::hash("x"));
    }
}
