//! The plaintext-marker scan of the at-rest tests: blobs whose plaintext repeats a marker no
//! encryption output holds by chance, and a search of a data dir for files holding it.
//!
//! Plain `std` only, so `daemon/tests/at_rest.rs` includes this same file (`#[path]`, as
//! `server/tests` does with [`crate::engines`]): a dev-dependency of the daemon on this crate
//! would be a cycle (this crate's tests depend on the daemon) and would build the harness for
//! every daemon test.

use std::path::{Path, PathBuf};

/// A plaintext no encryption output contains by chance.
pub const MARKER: &[u8] = b"AT-REST-MARKER:plaintext-must-never-be-on-disk:";

/// `n` bytes of plaintext: the marker, `seed` and a counter, over and over (so blobs of
/// different seeds differ, and every `MARKER.len() + 8` bytes hold the marker).
pub fn marked(n: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + MARKER.len() + 8);
    let mut i = 0u32;
    while out.len() < n {
        out.extend_from_slice(MARKER);
        out.extend_from_slice(&seed.to_be_bytes());
        out.extend_from_slice(&i.to_be_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// Every regular file under `d`, recursively (none when `d` does not exist).
pub fn files_under(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// Every file under `d` that holds the marker. Its first 32 bytes are enough: a stretch of
/// plaintext of twice the marker's period holds them whole, whatever the offset.
pub fn files_with_plaintext(d: &Path) -> Vec<PathBuf> {
    let needle = &MARKER[..32];
    files_under(d)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}
