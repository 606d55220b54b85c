//! Codec behaviour: round trips at the edge sizes, every tamper kind failing with the right
//! check, ranges at and across segment edges, resume, and the io adapters' size checks.

mod common;

use std::io::{Cursor, Read, Write};

use blobsync_shared::codec::{
    CodecError, DecodeError, Decoder, DecryptWriter, Encoder, EncryptReader, Header, InvalidBlob,
    StorageKey, TAG_LEN, decrypt_range, decrypt_to, encrypt_to, invalid_blob,
};
use common::*;

const K: u8 = 12;
const SEG: usize = 1 << K;

#[test]
fn round_trips_at_edge_sizes() {
    let (key, n, i) = (key(), ns("default"), id("blob"));
    for size in [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 5 * SEG + 17] {
        let plain = pattern(size);
        let stored = encrypt(&key, &n, &i, &plain, K);
        let h = Header::parse(&stored).unwrap().unwrap().0;
        assert_eq!(stored.len() as u64, h.stored_size(), "size {size}");
        for chunk in [1, 13, SEG + TAG_LEN, stored.len()] {
            assert_eq!(
                decrypt_chunked(&key, &n, &i, &stored, chunk).unwrap(),
                plain,
                "size {size}"
            );
        }
        let mut w = DecryptWriter::new(&key, &n, &i, Vec::new());
        w.write_all(&stored).unwrap();
        let (h2, out) = w.finish().unwrap();
        assert_eq!((h2, out), (h, plain));
    }
}

#[test]
fn round_trips_a_few_megabytes_at_default_segment_size() {
    let (key, n, i) = (key(), ns("big"), id("blob-3mb"));
    let plain = pattern(3 * 1024 * 1024 + 12345);
    let header = Header::new(n.clone(), i.clone(), plain.len() as u64, 16).unwrap();
    // Small reads exercise the buffered path; big ones the seal-into-caller path.
    for read_size in [1000, 1 << 20] {
        let mut r = EncryptReader::new(&key, header.clone(), &plain[..]);
        let mut stored = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let got = r.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            stored.extend_from_slice(&buf[..got]);
        }
        assert_eq!(stored.len() as u64, header.stored_size());
        assert_eq!(
            decrypt_chunked(&key, &n, &i, &stored, 100_000).unwrap(),
            plain
        );
    }
}

#[test]
fn encoder_and_encrypt_reader_agree() {
    let key = key();
    let plain = pattern(2 * SEG + 5);
    let header = Header::new(ns("a"), id("b"), plain.len() as u64, K).unwrap();
    let mut enc = Encoder::new(&key, header.clone());
    let mut out = enc.header_bytes().to_vec();
    for chunk in plain.chunks(SEG) {
        enc.seal_next(chunk, &mut out).unwrap();
    }
    assert!(enc.is_done());
    assert!(matches!(
        enc.seal_next(&[], &mut out),
        Err(CodecError::AlreadyDone)
    ));
    assert_eq!(out, encrypt_with(&key, header, &plain));
}

#[test]
fn encoder_rejects_wrong_segment_lengths() {
    let header = Header::new(ns("a"), id("b"), (SEG + 1) as u64, K).unwrap();
    let mut enc = Encoder::new(&key(), header);
    let mut out = Vec::new();
    assert!(matches!(
        enc.seal_next(&[0; 10], &mut out),
        Err(CodecError::WrongSegmentLength {
            segment: 0,
            expected: 4096,
            got: 10
        })
    ));
    enc.seal_next(&[0; SEG], &mut out).unwrap();
    assert!(matches!(
        enc.seal_next(&[0; 2], &mut out),
        Err(CodecError::WrongSegmentLength {
            segment: 1,
            expected: 1,
            got: 2
        })
    ));
}

#[test]
fn encrypt_reader_refuses_a_source_of_the_wrong_size() {
    for (declared, actual) in [(100u64, 99usize), (100, 101), (0, 1), (SEG as u64, SEG + 1)] {
        let header = Header::new(ns("a"), id("b"), declared, K).unwrap();
        let plain = pattern(actual);
        let err = EncryptReader::new(&key(), header, &plain[..])
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let inner = err.get_ref().unwrap().downcast_ref::<CodecError>().unwrap();
        assert!(
            matches!(inner, CodecError::SizeMismatch { expected, .. } if *expected == declared),
            "{inner}"
        );
    }
}

/// A 3-segment blob and the offsets of its parts.
struct Blob {
    stored: Vec<u8>,
    header_len: usize,
}

fn three_segments() -> Blob {
    let plain = pattern(2 * SEG + 100);
    let stored = encrypt(&key(), &ns("default"), &id("blob"), &plain, K);
    let header_len = Header::parse(&stored).unwrap().unwrap().1;
    Blob { stored, header_len }
}

fn seg_range(b: &Blob, i: usize) -> std::ops::Range<usize> {
    let start = b.header_len + i * (SEG + TAG_LEN);
    start..(start + SEG + TAG_LEN).min(b.stored.len())
}

fn check(stored: &[u8]) -> Result<Vec<u8>, InvalidBlob> {
    decrypt(&key(), &ns("default"), &id("blob"), stored)
}

#[test]
fn every_tamper_kind_fails_with_the_right_check() {
    let b = three_segments();
    let s = &b.stored;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();

    let mut t = s.clone();
    t[10] ^= 1; // salt
    cases.push(("bit in header salt", t, "tag"));
    let mut t = s.clone();
    t[b.header_len - 1] ^= 1; // last byte of the id: a different (valid) id
    cases.push(("bit in header id", t, "id"));
    let mut t = s.clone();
    t[38 + 8 + 3] ^= 0x20; // "default" -> "deFault": a valid but different namespace
    cases.push(("bit in header namespace", t, "namespace"));
    let mut t = s.clone();
    t[38 + 8] = 200; // namespace length past the limit
    cases.push(("bad namespace length", t, "header"));
    let mut t = s.clone();
    t[5] = 11;
    cases.push(("exponent too small", t, "exponent"));
    let mut t = s.clone();
    t[3] = 2;
    cases.push(("unknown scheme", t, "scheme"));
    let mut t = s.clone();
    t[38 + 7] ^= 1; // low byte of the plaintext size
    cases.push(("bit in header size", t, "tag"));
    let mut t = s.clone();
    t[seg_range(&b, 1).start + 5] ^= 0x80;
    cases.push(("bit in segment 1", t, "tag"));
    let mut t = s.clone();
    t[seg_range(&b, 0).end - 1] ^= 1;
    cases.push(("bit in tag 0", t, "tag"));
    cases.push((
        "last segment dropped",
        s[..seg_range(&b, 2).start].to_vec(),
        "truncated",
    ));
    let mut t = s[..seg_range(&b, 0).start].to_vec();
    t.extend_from_slice(&s[seg_range(&b, 1)]);
    t.extend_from_slice(&s[seg_range(&b, 0)]);
    t.extend_from_slice(&s[seg_range(&b, 2)]);
    cases.push(("segments 0 and 1 swapped", t, "tag"));
    let mut t = s.clone();
    t.extend_from_slice(&s[seg_range(&b, 1)]);
    cases.push(("segment appended", t, "trailing"));
    let mut t = s.clone();
    t.push(0);
    cases.push(("one byte appended", t, "trailing"));
    cases.push((
        "truncated inside a segment",
        s[..seg_range(&b, 1).start + 100].to_vec(),
        "truncated",
    ));
    cases.push(("truncated inside the header", s[..20].to_vec(), "truncated"));
    cases.push(("empty", Vec::new(), "truncated"));
    // The header's size fixes the segment count, so a missing middle segment is missed bytes.
    let mut t = s[..seg_range(&b, 2).start].to_vec();
    t.truncate(seg_range(&b, 1).start);
    t.extend_from_slice(&s[seg_range(&b, 2)]);
    cases.push(("middle segment dropped", t, "truncated"));

    for (what, stored, want) in cases {
        let err = check(&stored).expect_err(what);
        assert_eq!(err.check(), want, "{what}: {err}");
    }
}

#[test]
fn tag_errors_name_the_segment() {
    let b = three_segments();
    let mut t = b.stored.clone();
    t[seg_range(&b, 2).start] ^= 1;
    assert_eq!(check(&t), Err(InvalidBlob::BadTag { segment: 2 }));
}

#[test]
fn a_blob_asked_for_under_another_name_or_key_fails() {
    let b = three_segments();
    let e = decrypt(&key(), &ns("other"), &id("blob"), &b.stored).unwrap_err();
    assert!(matches!(e, InvalidBlob::NamespaceMismatch { .. }), "{e}");
    assert!(e.to_string().contains("\"other\""), "{e}");
    let e = decrypt(&key(), &ns("default"), &id("blobx"), &b.stored).unwrap_err();
    assert!(matches!(e, InvalidBlob::IdMismatch { .. }), "{e}");
    let e = decrypt(
        &StorageKey::from_bytes([8; 32]),
        &ns("default"),
        &id("blob"),
        &b.stored,
    )
    .unwrap_err();
    assert_eq!(e, InvalidBlob::BadTag { segment: 0 });
    // A blob re-labelled: header rewritten with another id, segments kept.
    let plain = pattern(10);
    let stored = encrypt(&key(), &ns("default"), &id("aaaa"), &plain, K);
    let mut relabeled = stored.clone();
    let hl = Header::parse(&stored).unwrap().unwrap().1;
    relabeled[hl - 4..hl].copy_from_slice(b"bbbb");
    let e = decrypt(&key(), &ns("default"), &id("bbbb"), &relabeled).unwrap_err();
    assert_eq!(e, InvalidBlob::BadTag { segment: 0 });
}

#[test]
fn no_unverified_byte_reaches_the_sink() {
    let b = three_segments();
    let mut t = b.stored.clone();
    t[seg_range(&b, 1).start + 3] ^= 1;
    let mut d = Decoder::new(&key(), &ns("default"), &id("blob"));
    let mut got = 0usize;
    let r = d.feed(&t, |p| {
        got += p.len();
        Ok::<(), ()>(())
    });
    assert!(matches!(
        r,
        Err(DecodeError::Invalid(InvalidBlob::BadTag { segment: 1 }))
    ));
    assert_eq!(got, SEG, "only segment 0 was verified");
    assert_eq!(d.verified_segments(), 1);
    // A failed decoder stays failed.
    assert!(d.feed(&[], |_| Ok::<(), ()>(())).is_err());
}

#[test]
fn sink_errors_pass_through_and_do_not_count_the_segment() {
    let b = three_segments();
    let mut d = Decoder::new(&key(), &ns("default"), &id("blob"));
    let mut calls = 0;
    let r = d.feed(&b.stored, |_| {
        calls += 1;
        if calls == 2 { Err("disk full") } else { Ok(()) }
    });
    assert!(matches!(r, Err(DecodeError::Sink("disk full"))));
    assert_eq!(d.verified_segments(), 1);
    assert_eq!(d.verified_stored_bytes(), seg_range(&b, 1).start as u64);
}

#[test]
fn a_sink_may_take_each_segments_buffer() {
    let (key, n, i) = (key(), ns("default"), id("blob"));
    let plain = pattern(4 * SEG + 7);
    let stored = encrypt(&key, &n, &i, &plain, K);
    let mut d = Decoder::new(&key, &n, &i);
    let mut taken: Vec<Vec<u8>> = Vec::new();
    // Odd-sized pieces, so segments straddle them; the sink takes every buffer and leaves an
    // empty one, which the decoder must grow again.
    for piece in stored.chunks(1000) {
        d.feed_segments(piece, |seg| {
            taken.push(std::mem::take(seg));
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    d.finish().unwrap();
    assert_eq!(taken.len(), 5);
    assert!(taken[..4].iter().all(|s| s.len() == SEG));
    assert_eq!(taken.concat(), plain);
}

#[test]
fn resume_at_a_segment_boundary() {
    let (key, n, i) = (key(), ns("default"), id("blob"));
    let plain = pattern(4 * SEG + 7);
    let stored = encrypt(&key, &n, &i, &plain, K);
    // First attempt stops after 2.5 segments.
    let mut d = Decoder::new(&key, &n, &i);
    let mut out = Vec::new();
    let cut = seg_range_of(&stored, 2) + 100;
    d.feed(&stored[..cut], |p| {
        out.extend_from_slice(p);
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(d.verified_segments(), 2);
    let resume_at = d.verified_stored_bytes();
    let hb = d.header_bytes().unwrap().to_vec();
    assert!(matches!(d.finish(), Err(InvalidBlob::Truncated { .. })));
    // Second attempt: header bytes kept, stored bytes from the resume point.
    let mut d = Decoder::resume(&key, &hb, &n, &i, 2).unwrap();
    assert_eq!(d.verified_stored_bytes(), resume_at);
    d.feed(&stored[resume_at as usize..], |p| {
        out.extend_from_slice(p);
        Ok::<(), ()>(())
    })
    .unwrap();
    d.finish().unwrap();
    assert_eq!(out, plain);
    // Resume rejects a header for another blob and an index past the end.
    assert!(matches!(
        Decoder::resume(&key, &hb, &n, &id("other"), 0),
        Err(InvalidBlob::IdMismatch { .. })
    ));
    assert!(Decoder::resume(&key, &hb, &n, &i, 6).is_err());
    assert!(Decoder::resume(&key, &hb[..hb.len() - 1], &n, &i, 0).is_err());
}

fn seg_range_of(stored: &[u8], i: usize) -> usize {
    Header::parse(stored).unwrap().unwrap().1 + i * (SEG + TAG_LEN)
}

#[test]
fn ranges_at_and_across_segment_edges() {
    let (key, n, i) = (key(), ns("default"), id("blob"));
    let size = 3 * SEG + 10;
    let plain = pattern(size);
    let stored = encrypt(&key, &n, &i, &plain, K);
    let s = SEG as u64;
    let size = size as u64;
    for r in [
        0..1,
        0..s,
        s - 1..s,
        s - 1..s + 1,
        s..s + 1,
        s..2 * s,
        s - 1..2 * s + 1,
        3 * s..size,
        3 * s - 1..size,
        0..size,
        5..5,
        size..size,
        size - 1..u64::MAX, // end clamped
    ] {
        let mut out = Vec::new();
        let n_written =
            decrypt_range(&key, Cursor::new(&stored), &n, &i, r.clone(), &mut out).unwrap();
        let end = r.end.min(size) as usize;
        let want = if (r.start as usize) < end {
            &plain[r.start as usize..end]
        } else {
            &[][..]
        };
        assert_eq!(out, want, "range {r:?}");
        assert_eq!(n_written, want.len() as u64);
    }
    assert!(matches!(
        decrypt_range(
            &key,
            Cursor::new(&stored),
            &n,
            &i,
            size + 1..size + 2,
            Vec::new()
        ),
        Err(CodecError::RangeNotSatisfiable { .. })
    ));
}

#[test]
fn ranges_verify_only_the_segments_they_touch() {
    let (key, n, i) = (key(), ns("default"), id("blob"));
    let plain = pattern(3 * SEG);
    let mut stored = encrypt(&key, &n, &i, &plain, K);
    let at = seg_range_of(&stored, 2) + 1;
    stored[at] ^= 1; // damage segment 2 only
    let ok = decrypt_range(
        &key,
        Cursor::new(&stored),
        &n,
        &i,
        0..2 * SEG as u64,
        Vec::new(),
    );
    assert_eq!(ok.unwrap(), 2 * SEG as u64);
    let bad = decrypt_range(
        &key,
        Cursor::new(&stored),
        &n,
        &i,
        2 * SEG as u64 - 1..2 * SEG as u64 + 1,
        Vec::new(),
    );
    assert!(matches!(
        bad,
        Err(CodecError::Invalid(InvalidBlob::BadTag { segment: 2 }))
    ));
    // A stored blob cut inside the range is truncated, and a wrong id is caught first.
    let cut = &stored[..seg_range_of(&stored, 1) + 10];
    let e = decrypt_range(
        &key,
        Cursor::new(cut),
        &n,
        &i,
        0..SEG as u64 + 1,
        Vec::new(),
    )
    .unwrap_err();
    assert!(
        matches!(e, CodecError::Invalid(InvalidBlob::Truncated { .. })),
        "{e}"
    );
    let e = decrypt_range(&key, Cursor::new(&stored), &n, &id("x"), 0..1, Vec::new()).unwrap_err();
    assert!(
        matches!(e, CodecError::Invalid(InvalidBlob::IdMismatch { .. })),
        "{e}"
    );
}

#[test]
fn stored_range_for_matches_what_decrypt_range_reads() {
    // Decoding only the stored bytes stored_range_for names (what an HTTP Range request
    // returns) with a resumed decoder gives the right plaintext.
    let (key, n, i) = (key(), ns("default"), id("blob"));
    let plain = pattern(4 * SEG + 3);
    let stored = encrypt(&key, &n, &i, &plain, K);
    let (h, hl) = Header::parse(&stored).unwrap().unwrap();
    let want = (SEG as u64 + 5)..(3 * SEG as u64 + 1);
    let sr = h.stored_range_for(want.clone());
    let segs = h.segments_for(want.clone());
    assert_eq!(sr.start, h.segment_offset(segs.start));
    let mut d = Decoder::resume(&key, &stored[..hl], &n, &i, segs.start).unwrap();
    let mut out = Vec::new();
    d.feed(&stored[sr.start as usize..sr.end as usize], |p| {
        out.extend_from_slice(p);
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(d.verified_segments(), segs.end);
    let base = segs.start * SEG as u64;
    assert_eq!(
        &out[(want.start - base) as usize..(want.end - base) as usize],
        &plain[want.start as usize..want.end as usize]
    );
}

#[test]
fn io_errors_carry_the_invalid_blob() {
    let b = three_segments();
    let mut t = b.stored.clone();
    t[0] = 0;
    let mut w = DecryptWriter::new(&key(), &ns("default"), &id("blob"), Vec::new());
    let e = w.write_all(&t).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(invalid_blob(&e), Some(&InvalidBlob::BadMagic));
}

#[test]
fn whole_blob_helpers_round_trip_and_return_typed_errors() {
    let (key, n, i) = (key(), ns("default"), id("blob"));
    let plain = pattern(2 * SEG + 3);
    let header = Header::new(n.clone(), i.clone(), plain.len() as u64, K).unwrap();
    let mut stored = Vec::new();
    let written = encrypt_to(&key, header.clone(), &plain[..], &mut stored).unwrap();
    assert_eq!(written, header.stored_size());
    let mut out = Vec::new();
    assert_eq!(
        decrypt_to(&key, &stored[..], &n, &i, &mut out).unwrap(),
        header
    );
    assert_eq!(out, plain);

    let e = encrypt_to(&key, header, &plain[..10], Vec::new()).unwrap_err();
    assert!(
        matches!(e, CodecError::SizeMismatch { actual: 10, .. }),
        "{e}"
    );
    let e = decrypt_to(&key, &stored[..stored.len() - 1], &n, &i, Vec::new()).unwrap_err();
    assert!(
        matches!(e, CodecError::Invalid(InvalidBlob::Truncated { .. })),
        "{e}"
    );
    stored[60] ^= 1;
    let e = decrypt_to(&key, &stored[..], &n, &i, Vec::new()).unwrap_err();
    assert!(matches!(e, CodecError::Invalid(_)), "{e}");
}
