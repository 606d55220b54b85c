//! cargo-fuzz target `keyfile`: the body is `blobsync_tests::fuzz::keyfile`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/keyfile/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::keyfile(data));
