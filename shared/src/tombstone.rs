//! Authenticated tombstones: the proof a deleting device attaches to its `DELETE`, and the
//! check every other device makes before it deletes its own copy.
//!
//! A server (or anyone on the path) can invent a tombstone; it cannot invent its proof, which
//! is an HMAC under a key only the user's devices hold. The proof names the exact version that
//! was deleted (its header salt), so a proof can neither be moved to another id nor replayed
//! against a later version put under the same id. Pure: no I/O.
//!
//! Key: `HKDF-SHA256(salt = "", ikm = storage key, info = "blobsync v1 delete")`, 32 bytes.
//! Message: `namespace || 0x00 || id || 0x00 || salt of the deleted version`.
//! On the wire: 64 lowercase hex characters (`wire::DELETE_PROOF_HEADER`, `Change::proof`).

use ring::{hkdf, hmac};

use crate::codec::StorageKey;
use crate::id::{BlobId, Namespace};

const HKDF_INFO: &[u8] = b"blobsync v1 delete";

/// The HMAC key of delete proofs, derived once from the storage key.
pub struct DeleteKey(hmac::Key);

impl DeleteKey {
    /// Derives the delete-proof key from the storage key.
    pub fn derive(key: &StorageKey) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key.as_bytes());
        let okm = prk
            .expand(&[HKDF_INFO], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(hmac::Key::from(okm))
    }

    fn message(ns: &Namespace, id: &BlobId, salt: &[u8; 32]) -> Vec<u8> {
        let mut m = Vec::with_capacity(ns.as_str().len() + id.as_str().len() + 34);
        m.extend_from_slice(ns.as_str().as_bytes());
        m.push(0);
        m.extend_from_slice(id.as_str().as_bytes());
        m.push(0);
        m.extend_from_slice(salt);
        m
    }

    /// The proof that this device deleted the version of `ns/id` whose header salt is `salt`.
    pub fn prove(&self, ns: &Namespace, id: &BlobId, salt: &[u8; 32]) -> String {
        hex::encode(hmac::sign(&self.0, &Self::message(ns, id, salt)).as_ref())
    }

    /// Whether `proof` (as it came from the server) proves the deletion of exactly that
    /// version. Anything malformed is simply not a proof. Constant-time in the tag.
    pub fn verify(&self, ns: &Namespace, id: &BlobId, salt: &[u8; 32], proof: &str) -> bool {
        if proof.len() != 64 {
            return false;
        }
        let Ok(tag) = hex::decode(proof) else {
            return false;
        };
        hmac::verify(&self.0, &Self::message(ns, id, salt), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_own_version_id_namespace_and_key() {
        let key = StorageKey::from_bytes([7; 32]);
        let dk = DeleteKey::derive(&key);
        let (ns, id) = (
            Namespace::new("default").unwrap(),
            BlobId::new("a").unwrap(),
        );
        let salt = [1u8; 32];
        let p = dk.prove(&ns, &id, &salt);
        assert_eq!(p.len(), 64);
        assert!(dk.verify(&ns, &id, &salt, &p));
        assert!(!dk.verify(&ns, &id, &[2u8; 32], &p), "another version");
        assert!(
            !dk.verify(&ns, &BlobId::new("b").unwrap(), &salt, &p),
            "another id"
        );
        assert!(
            !dk.verify(&Namespace::new("x").unwrap(), &id, &salt, &p),
            "another ns"
        );
        let other = DeleteKey::derive(&StorageKey::from_bytes([8; 32]));
        assert!(!other.verify(&ns, &id, &salt, &p), "another key");
        assert!(!dk.verify(&ns, &id, &salt, "zz"), "malformed");
        assert!(!dk.verify(&ns, &id, &salt, &p.to_uppercase().replace('A', "g")));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        let p2 = dk.prove(
            &Namespace::new("ab").unwrap(),
            &BlobId::new("c").unwrap(),
            &salt,
        );
        assert!(!dk.verify(
            &Namespace::new("a").unwrap(),
            &BlobId::new("bc").unwrap(),
            &salt,
            &p2
        ));
    }
}
