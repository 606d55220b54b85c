//! The format can never change by accident: the reference vectors (made by an independent
//! implementation of docs/blob-format.md) must encode to the exact stored bytes, decode to the exact
//! plaintext, and every tampered vector must fail with the check it names (in any chunking).

mod common;

use blobsync_shared::codec::{Header, StorageKey};
use common::*;
use ring::digest::{SHA256, digest};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn key_of(v: &Value) -> StorageKey {
    let bytes: [u8; 32] = hex::decode(v["storage_key_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    StorageKey::from_bytes(bytes)
}

fn check_file(name: &str) -> (usize, usize) {
    let doc = load(name);
    let key = key_of(&doc);
    let valid = doc["valid"].as_array().unwrap();
    for v in valid {
        let name = v["name"].as_str().unwrap();
        let len = v["plaintext_len"].as_u64().unwrap() as usize;
        let plain = pattern(len);
        assert_eq!(
            hex::encode(digest(&SHA256, &plain)),
            v["plaintext_sha256"].as_str().unwrap(),
            "{name}: plaintext generator"
        );
        let salt: [u8; 32] = hex::decode(v["salt_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let header = Header {
            segment_exp: v["k"].as_u64().unwrap() as u8,
            salt,
            plain_size: len as u64,
            namespace: ns(v["namespace"].as_str().unwrap()),
            id: id(v["id"].as_str().unwrap()),
        };
        let expected = hex::decode(v["stored_hex"].as_str().unwrap()).unwrap();
        assert_eq!(
            hex::encode(digest(&SHA256, &expected)),
            v["stored_sha256"].as_str().unwrap(),
            "{name}: vector file is self-consistent"
        );
        let stored = encrypt_with(&key, header.clone(), &plain);
        assert!(
            stored == expected,
            "{name}: encoding differs from the vector"
        );
        assert_eq!(header.stored_size(), expected.len() as u64, "{name}");
        for chunk in [1, 7, 4096 + 16, expected.len()] {
            let back = decrypt_chunked(&key, &header.namespace, &header.id, &expected, chunk)
                .unwrap_or_else(|e| panic!("{name}: decode failed: {e}"));
            assert_eq!(
                hex::encode(digest(&SHA256, &back)),
                v["plaintext_sha256"].as_str().unwrap(),
                "{name}"
            );
        }
    }
    let invalid = doc["invalid"].as_array().unwrap();
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let stored = hex::decode(v["stored_hex"].as_str().unwrap()).unwrap();
        let want = v["fails_because"].as_str().unwrap();
        let ns_ = ns(v["namespace"].as_str().unwrap());
        let id_ = id(v["id"].as_str().unwrap());
        for chunk in [1, 1000, stored.len()] {
            match decrypt_chunked(&key, &ns_, &id_, &stored, chunk) {
                Ok(_) => panic!("{name}: tampered vector decoded"),
                Err(e) => assert_eq!(e.check(), want, "{name} (chunk {chunk}): got {e}"),
            }
        }
    }
    (valid.len(), invalid.len())
}

#[test]
fn reference_vectors_encode_decode_and_fail_as_named() {
    let (valid, invalid) = check_file("blob-v1.json");
    assert!(valid >= 7 && invalid >= 12, "vector file lost entries");
}

/// Our own set, made by `tests/vectors/make_extra_vectors.py` (Python, independent of this
/// codec): largest names, k = 13 and 24, exact multiples, and tampers such as a final segment
/// sealed without the last flag.
#[test]
fn extra_vectors_encode_decode_and_fail_as_named() {
    let (valid, invalid) = check_file("blob-v1-extra.json");
    assert!(valid >= 6 && invalid >= 11, "vector file lost entries");
}
