//! cargo-fuzz target `stream_upload`: the body is `blobsync_tests::fuzz::stream_upload`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/stream_upload/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::stream_upload(data));
