//! cargo-fuzz target `stream_download`: the body is `blobsync_tests::fuzz::stream_download`, which
//! `tests/tests/fuzz_corpus.rs` also replays over `seeds/stream_download/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobsync_tests::fuzz::stream_download(data));
