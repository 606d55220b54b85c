//! Replays the committed fuzz corpora (`tests/fuzz/seeds/<target>/`,
//! `shared/fuzz/seeds/decode/`) through the fuzz targets' own bodies
//! (`blobsync_tests::fuzz`), as ordinary tests on the stable toolchain: every seed and every
//! regression input a fuzzer found must keep passing. Add a crashing input a fuzzer finds to
//! the target's `seeds/` dir once it is fixed.

use std::path::PathBuf;

use blobsync_tests::bins::workspace_root;
use blobsync_tests::fuzz;

/// Runs `target` on every file of `dir` (relative to the workspace root); panics naming the
/// inputs that panic. Returns how many inputs ran.
fn replay(dir: &str, target: fn(&[u8])) -> usize {
    let dir: PathBuf = workspace_root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "inputs that panic: {failed:?}");
    eprintln!("{}: {} inputs replayed", dir.display(), files.len());
    files.len()
}

#[test]
fn stream_upload_corpus() {
    replay("tests/fuzz/seeds/stream_upload", fuzz::stream_upload);
}

#[test]
fn stream_download_corpus() {
    replay("tests/fuzz/seeds/stream_download", fuzz::stream_download);
}

#[test]
fn listing_json_corpus() {
    replay("tests/fuzz/seeds/listing_json", fuzz::listing_json);
}

#[test]
fn keyfile_corpus() {
    replay("tests/fuzz/seeds/keyfile", fuzz::keyfile);
}

#[test]
fn config_corpus() {
    replay("tests/fuzz/seeds/config", fuzz::config);
}

#[test]
fn range_query_corpus() {
    replay("tests/fuzz/seeds/range_query", fuzz::range_query);
}

#[test]
fn decode_corpus() {
    replay("shared/fuzz/seeds/decode", fuzz::decode);
}

/// The targets must be able to fail: a contract break is a panic, not a quiet pass.
#[test]
#[should_panic(expected = "inputs that panic")]
fn a_panicking_target_fails_the_replay() {
    replay("tests/fuzz/seeds/config", |_| panic!("boom"));
}
