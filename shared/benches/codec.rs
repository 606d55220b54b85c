//! Codec throughput on one core: encrypt (plaintext `Read` -> stored bytes) and decrypt
//! (stored bytes -> verified plaintext `Write`) of 64 KiB, 1 MiB and 64 MiB blobs at the
//! default 64 KiB segment size. Run with `cargo bench -p blobsync-shared`.
//!
//! After the criterion groups it streams 1 GiB through encrypt then decrypt and prints the
//! process's peak RSS before and after, to show memory does not grow with blob size.

use std::io::{self, Read, Write};

use blobsync_shared::codec::{
    DEFAULT_SEGMENT_EXP, DecryptWriter, EncryptReader, Header, StorageKey,
};
use blobsync_shared::{BlobId, Namespace};
use criterion::{BenchmarkId, Criterion, Throughput};

const SIZES: [(u64, &str); 3] = [(64 << 10, "64KiB"), (1 << 20, "1MiB"), (64 << 20, "64MiB")];
/// Read/write size of the adapters in this bench: a typical large I/O buffer.
const IO_BUF: usize = 1 << 20;

fn names() -> (Namespace, BlobId) {
    (Namespace::default(), BlobId::new("bench").unwrap())
}

/// Encrypts `size` bytes of a constant plaintext into `out` (reused across iterations).
fn encrypt(key: &StorageKey, size: u64, buf: &mut [u8], mut sink: impl FnMut(&[u8])) {
    let (ns, id) = names();
    let header = Header::new(ns, id, size, DEFAULT_SEGMENT_EXP).unwrap();
    let mut r = EncryptReader::new(key, header, io::repeat(0x5a).take(size));
    loop {
        let n = r.read(buf).unwrap();
        if n == 0 {
            break;
        }
        sink(&buf[..n]);
    }
}

fn stored_blob(key: &StorageKey, size: u64) -> Vec<u8> {
    let mut stored = Vec::new();
    let mut buf = vec![0u8; IO_BUF];
    encrypt(key, size, &mut buf, |c| stored.extend_from_slice(c));
    stored
}

fn decrypt(key: &StorageKey, stored: &[u8]) {
    let (ns, id) = names();
    let mut w = DecryptWriter::new(key, &ns, &id, io::sink());
    for c in stored.chunks(IO_BUF) {
        w.write_all(c).unwrap();
    }
    w.finish().unwrap();
}

fn bench_codec(c: &mut Criterion) {
    let key = StorageKey::generate();
    let mut buf = vec![0u8; IO_BUF];
    let mut g = c.benchmark_group("encrypt");
    for (size, label) in SIZES {
        g.throughput(Throughput::Bytes(size));
        g.sample_size(if size > 1 << 20 { 10 } else { 50 });
        g.bench_with_input(BenchmarkId::from_parameter(label), &size, |b, &size| {
            b.iter(|| {
                encrypt(&key, size, &mut buf, |c| {
                    std::hint::black_box(c);
                })
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("decrypt");
    for (size, label) in SIZES {
        let stored = stored_blob(&key, size);
        g.throughput(Throughput::Bytes(size));
        g.sample_size(if size > 1 << 20 { 10 } else { 50 });
        g.bench_with_input(BenchmarkId::from_parameter(label), &stored, |b, stored| {
            b.iter(|| decrypt(&key, stored))
        });
    }
    g.finish();
}

/// Peak resident set size in KiB (Linux), if known.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn streaming_memory_check() {
    let key = StorageKey::generate();
    let (ns, id) = names();
    let size = 1u64 << 30;
    let before = peak_rss_kib();
    let header = Header::new(ns.clone(), id.clone(), size, DEFAULT_SEGMENT_EXP).unwrap();
    let mut r = EncryptReader::new(&key, header, io::repeat(7).take(size));
    let mut w = DecryptWriter::new(&key, &ns, &id, io::sink());
    let started = std::time::Instant::now();
    io::copy(&mut r, &mut w).unwrap();
    w.finish().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "streamed 1 GiB encrypt->decrypt in {secs:.2} s ({:.2} GB/s end to end); peak RSS before {} KiB, after {} KiB",
        size as f64 / secs / 1e9,
        before.map_or("?".into(), |v| v.to_string()),
        peak_rss_kib().map_or("?".into(), |v| v.to_string()),
    );
}

fn main() {
    // The memory check runs first, while peak RSS still reflects only this process's start.
    streaming_memory_check();
    let mut c = Criterion::default().configure_from_args();
    bench_codec(&mut c);
    c.final_summary();
}
