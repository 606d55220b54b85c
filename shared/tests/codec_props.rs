//! Property tests: round trips and ranges for random sizes, data and chunkings; any change to a
//! valid blob (a flipped bit, a cut, an appended byte) is caught; arbitrary bytes never panic
//! the decoder (the in-suite stand-in for the cargo-fuzz target in `shared/fuzz/`).
//!
//! Case counts are modest so the suite stays fast in debug builds.

mod common;

use std::io::Cursor;

use blobsync_shared::codec::{Decoder, Header, decrypt_range};
use common::*;
use proptest::prelude::*;

const K: u8 = 12;
const SEG: usize = 1 << K;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn round_trip_any_size_any_chunking(
        plain in prop::collection::vec(any::<u8>(), 0..4 * SEG + 50),
        chunk in 1usize..3 * SEG,
    ) {
        let (key, n, i) = (key(), ns("default"), id("p"));
        let stored = encrypt(&key, &n, &i, &plain, K);
        let h = Header::parse(&stored).unwrap().unwrap().0;
        prop_assert_eq!(stored.len() as u64, h.stored_size());
        prop_assert_eq!(decrypt_chunked(&key, &n, &i, &stored, chunk).unwrap(), plain);
    }

    #[test]
    fn range_reads_match_the_plaintext(
        size in 0usize..5 * SEG,
        a in 0usize..5 * SEG,
        len in 0usize..3 * SEG,
    ) {
        let (key, n, i) = (key(), ns("default"), id("p"));
        let plain = pattern(size);
        let stored = encrypt(&key, &n, &i, &plain, K);
        let a = a.min(size);
        let b = (a + len).min(size);
        let mut out = Vec::new();
        let got = decrypt_range(&key, Cursor::new(&stored), &n, &i, a as u64..(a + len) as u64, &mut out)
            .unwrap();
        prop_assert_eq!(got as usize, b - a);
        prop_assert_eq!(&out[..], &plain[a..b]);
        // The stored range the arithmetic names, decoded from a resumed decoder, holds it too.
        let h = Header::parse(&stored).unwrap().unwrap().0;
        let segs = h.segments_for(a as u64..b as u64);
        if !segs.is_empty() {
            let sr = h.stored_range_for(a as u64..b as u64);
            let hb = &stored[..h.encoded_len()];
            let mut d = Decoder::resume(&key, hb, &n, &i, segs.start).unwrap();
            let mut out = Vec::new();
            d.feed(&stored[sr.start as usize..sr.end as usize], |p| {
                out.extend_from_slice(p);
                Ok::<(), ()>(())
            })
            .unwrap();
            let base = (segs.start as usize) * SEG;
            prop_assert_eq!(&out[a - base..b - base], &plain[a..b]);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_change_to_a_valid_blob_is_caught(
        size in 0usize..3 * SEG,
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..40),
    ) {
        let (key, n, i) = (key(), ns("default"), id("p"));
        let stored = encrypt(&key, &n, &i, &pattern(size), K);
        let mut flipped = stored.clone();
        flipped[pos.index(stored.len())] ^= 1 << bit;
        prop_assert!(decrypt(&key, &n, &i, &flipped).is_err());
        let cut = cut.index(stored.len());
        prop_assert!(decrypt(&key, &n, &i, &stored[..cut]).is_err());
        let mut longer = stored.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(decrypt(&key, &n, &i, &longer).unwrap_err().check(), "trailing");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        prefix_valid in any::<bool>(),
        junk in prop::collection::vec(any::<u8>(), 0..700),
        chunk in 1usize..300,
    ) {
        let (key, n, i) = (key(), ns("default"), id("p"));
        let mut input = Vec::new();
        if prefix_valid {
            // A valid header makes the junk reach the segment path.
            let h = Header::new(n.clone(), i.clone(), junk.len() as u64, K).unwrap();
            input.extend_from_slice(&h.encode());
        }
        input.extend_from_slice(&junk);
        let r = decrypt_chunked(&key, &n, &i, &input, chunk);
        prop_assert!(r.is_err());
        let _ = Header::parse(&junk);
        let _ = decrypt_range(&key, Cursor::new(&input), &n, &i, 0..u64::MAX, std::io::sink());
    }
}
