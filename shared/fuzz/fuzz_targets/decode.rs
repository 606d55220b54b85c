//! Fuzzes the blob decoder: header parsing, the segment stream in arbitrary chunkings, and
//! ranged reads. Nothing may panic, and no input may decode unless it is a blob sealed with
//! the fuzz key (the seeds in `seeds/decode/` are; mutations of them must then fail).

#![no_main]

use std::io::Cursor;

use blobsync_shared::codec::{Decoder, Header, StorageKey, decrypt_range};
use libfuzzer_sys::fuzz_target;

/// The reference vectors' storage key, so the seeds made from them decode.
const KEY: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];

fuzz_target!(|input: &[u8]| {
    // First byte picks the chunk size (so chunk boundaries fall everywhere); the rest is the
    // stored blob.
    let Some((&c, stored)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(c) * 17 + 1;
    let key = StorageKey::from_bytes(KEY);
    // Expect whatever names the header carries, so inputs get past the name check and into
    // the segment path.
    let Ok(Some((header, _))) = Header::parse(stored) else {
        return;
    };
    let (ns, id) = (header.namespace.clone(), header.id.clone());
    let _ = header.stored_range_for(0..u64::from(c) << 12);

    let mut d = Decoder::new(&key, &ns, &id);
    let mut delivered = 0u64;
    let mut failed = false;
    for part in stored.chunks(chunk) {
        let r = d.feed(part, |p| {
            delivered += p.len() as u64;
            Ok::<(), ()>(())
        });
        if r.is_err() {
            failed = true;
            break;
        }
        assert_eq!(delivered, d.verified_plain_bytes());
    }
    if !failed && let Ok(h) = d.finish() {
        assert_eq!(delivered, h.plain_size);
        assert_eq!(stored.len() as u64, h.stored_size());
    }

    let start = u64::from(c) * 1000;
    let _ = decrypt_range(
        &key,
        Cursor::new(stored),
        &ns,
        &id,
        start..start + 5000,
        std::io::sink(),
    );
});
