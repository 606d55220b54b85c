//! cargo-fuzz target `decode`: the body is `blobsync_tests::fuzz::decode`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/decode/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::decode(data));
