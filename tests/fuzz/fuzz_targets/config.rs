//! cargo-fuzz target `config`: the body is `blobsync_tests::fuzz::config`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/config/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::config(data));
