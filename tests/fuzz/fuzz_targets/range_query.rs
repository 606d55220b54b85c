//! cargo-fuzz target `range_query`: the body is `blobsync_tests::fuzz::range_query`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/range_query/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::range_query(data));
