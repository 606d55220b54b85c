//! cargo-fuzz target `listing_json`: the body is `blobsync_tests::fuzz::listing_json`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/listing_json/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::listing_json(data));
