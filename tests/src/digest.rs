//! SHA-256 of files and byte slices, streamed, for comparing blob contents across devices.
//!
//! Never reads a whole file into memory.

use std::io::Read;
use std::path::Path;

use crate::Result;
use crate::error::IoContext;

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Lowercase hex SHA-256 of a file, read in 64 KiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .ctx(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

/// Writes `size` pseudo-random bytes derived from `seed` to `path` and returns their SHA-256.
///
/// Streams in chunks, so a 200 MB test file costs no memory; the same seed gives the same bytes.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> Result<String> {
    use rand::{RngCore, SeedableRng};
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let f = std::fs::File::create(path).ctx(|| format!("create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        ctx.update(&buf[..n]);
        w.write_all(&buf[..n])
            .ctx(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    w.flush().ctx(|| format!("flush {}", path.display()))?;
    Ok(hex::encode(ctx.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_bytes_digests_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let h = write_random_file(&p, 200_001, 7).unwrap();
        assert_eq!(h, sha256_file(&p).unwrap());
        assert_eq!(h, sha256_bytes(&std::fs::read(&p).unwrap()));
        assert_eq!(
            sha256_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
