//! "Never panics" property tests for the parsers that face the network: the `/stream`
//! upstream parser (`UploadDecoder`, the server's side), the downstream frame parser
//! (`FrameDecoder`, the daemon's side) and the listing JSON types.
//!
//! Inputs are arbitrary bytes, and valid encodings that are cut, mutated and re-chunked at
//! random points. Properties: no panic, no endless loop (every decode call makes progress or
//! the loop ends), an `Ok` finish only when every announced byte arrived, and exact round
//! trips for valid input however it is chunked. The cargo-fuzz targets in `tests/fuzz/`
//! drive the same parsers with coverage guidance.

use blobsync_shared::BlobId;
use blobsync_shared::wire::{
    BlobDetail, ChangesResponse, CountResponse, FrameDecoder, FrameEvent, UploadDecoder,
    UploadEvent, encode_frame_header, encode_upload_header,
};
use proptest::prelude::*;

/// What an upstream decode produced: the blobs with their bytes, or the error text.
#[derive(Debug, PartialEq)]
struct Decoded {
    blobs: Vec<(String, u64, Vec<u8>)>,
    finished: bool,
}

/// Feeds `chunks` to an `UploadDecoder` the way the server does. Returns `Err` on a decode
/// error; panics only if the decoder breaks its own contract (no progress, events out of
/// order), which is what these tests look for.
fn run_upload(chunks: &[&[u8]], max_header: usize) -> Result<Decoded, String> {
    let mut dec = UploadDecoder::new(max_header);
    let mut blobs: Vec<(String, u64, Vec<u8>)> = Vec::new();
    let mut announced: Option<Vec<(BlobId, u64)>> = None;
    let mut open: Option<usize> = None;
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    // Every decode call consumes bytes or emits an event; events are bounded by the blobs the
    // header announced (at most one per byte of header), so this bound means a loop.
    let mut budget = 4 * total + 64;
    for chunk in chunks.iter().copied().chain(std::iter::once(&[][..])) {
        let mut input = chunk;
        while !input.is_empty() || dec.has_pending_event() {
            budget = budget
                .checked_sub(1)
                .expect("UploadDecoder made no progress (endless loop)");
            let (used, ev) = dec.decode(input).map_err(|e| e.to_string())?;
            assert!(used <= input.len(), "used {used} of {}", input.len());
            input = &input[used..];
            match ev {
                None => assert!(used > 0 || input.is_empty(), "no progress and no event"),
                Some(UploadEvent::Header(entries)) => {
                    assert!(announced.is_none(), "second header");
                    announced = Some(entries);
                }
                Some(UploadEvent::Blob { id, size }) => {
                    assert!(open.is_none(), "blob {id} started inside another");
                    let want = &announced.as_ref().expect("blob before header")[blobs.len()];
                    assert_eq!((&want.0, want.1), (&id, size), "blob out of header order");
                    blobs.push((id.to_string(), size, Vec::new()));
                    open = Some(blobs.len() - 1);
                }
                Some(UploadEvent::Data(d)) => {
                    let i = open.expect("data outside a blob");
                    blobs[i].2.extend_from_slice(d);
                    assert!(
                        blobs[i].2.len() as u64 <= blobs[i].1,
                        "more bytes than announced"
                    );
                }
                Some(UploadEvent::End { id }) => {
                    let i = open.take().expect("end outside a blob");
                    assert_eq!(blobs[i].0, id.as_str());
                    assert_eq!(blobs[i].2.len() as u64, blobs[i].1, "end before all bytes");
                }
            }
        }
    }
    let finished = dec.finish().is_ok();
    if finished {
        let announced = announced.expect("finish ok without a header");
        assert_eq!(blobs.len(), announced.len(), "finish ok with blobs missing");
        assert!(open.is_none(), "finish ok inside a blob");
    }
    Ok(Decoded { blobs, finished })
}

/// Downstream frames as decoded: id and bytes (`None` = missing on the server).
type Frames = Vec<(String, Option<Vec<u8>>)>;

/// Same for the downstream frames; the bool is whether `finish` accepted the end.
fn run_frames(chunks: &[&[u8]]) -> Result<(Frames, bool), String> {
    let mut dec = FrameDecoder::new();
    let mut out: Frames = Vec::new();
    let mut open: Option<(usize, u64)> = None;
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut budget = 4 * total + 64;
    for chunk in chunks.iter().copied().chain(std::iter::once(&[][..])) {
        let mut input = chunk;
        while !input.is_empty() || dec.has_pending_event() {
            budget = budget
                .checked_sub(1)
                .expect("FrameDecoder made no progress (endless loop)");
            let (used, ev) = dec.decode(input).map_err(|e| e.to_string())?;
            assert!(used <= input.len());
            input = &input[used..];
            match ev {
                None => assert!(used > 0 || input.is_empty(), "no progress and no event"),
                Some(FrameEvent::Blob { id, size }) => {
                    assert!(open.is_none());
                    out.push((id.to_string(), Some(Vec::new())));
                    open = Some((out.len() - 1, size));
                }
                Some(FrameEvent::Missing { id }) => {
                    assert!(open.is_none());
                    out.push((id.to_string(), None));
                }
                Some(FrameEvent::Data(d)) => {
                    let (i, size) = open.expect("data outside a blob");
                    let buf = out[i].1.as_mut().expect("data for a missing blob");
                    buf.extend_from_slice(d);
                    assert!(buf.len() as u64 <= size);
                }
                Some(FrameEvent::End { id }) => {
                    let (i, size) = open.take().expect("end outside a blob");
                    assert_eq!(out[i].0, id.as_str());
                    assert_eq!(out[i].1.as_ref().map(|b| b.len() as u64), Some(size));
                }
            }
        }
    }
    let finished = dec.finish().is_ok();
    if finished {
        assert!(open.is_none(), "finish ok inside a blob");
    }
    Ok((out, finished))
}

/// Splits `data` at the given cut points (taken modulo its length).
fn chunked(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return vec![Vec::new()];
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % data.len()).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .collect()
}

fn refs(chunks: &[Vec<u8>]) -> Vec<&[u8]> {
    chunks.iter().map(|c| c.as_slice()).collect()
}

fn id_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,20}"
}

fn blobs_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (id_strategy(), prop::collection::vec(any::<u8>(), 0..300)),
        0..6,
    )
    .prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|(id, _)| seen.insert(id.clone()));
        v
    })
}

fn upload_body(blobs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<(BlobId, u64)> = blobs
        .iter()
        .map(|(id, b)| (BlobId::new(id).unwrap(), b.len() as u64))
        .collect();
    let mut body = encode_upload_header(&entries);
    for (_, b) in blobs {
        body.extend_from_slice(b);
    }
    body
}

fn frames_body(blobs: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, b) in blobs {
        let id = BlobId::new(id).unwrap();
        body.extend_from_slice(&encode_frame_header(
            &id,
            b.as_ref().map(|b| b.len() as u64),
        ));
        if let Some(b) = b {
            body.extend_from_slice(b);
        }
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn upload_parser_never_panics_on_arbitrary_bytes(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max_header in 1usize..4096,
    ) {
        let _ = run_upload(&refs(&chunked(&data, &cuts)), max_header);
    }

    #[test]
    fn upload_parser_round_trips_valid_streams_however_chunked(
        blobs in blobs_strategy(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let body = upload_body(&blobs);
        let got = run_upload(&refs(&chunked(&body, &cuts)), 1 << 20).expect("valid stream");
        prop_assert!(got.finished);
        let want: Vec<(String, u64, Vec<u8>)> =
            blobs.iter().map(|(i, b)| (i.clone(), b.len() as u64, b.clone())).collect();
        prop_assert_eq!(got.blobs, want);
    }

    #[test]
    fn upload_parser_rejects_cut_or_extended_streams(
        blobs in blobs_strategy().prop_filter("some bytes", |b| b.iter().any(|(_, d)| !d.is_empty())),
        cut in any::<usize>(),
        extra in prop::collection::vec(any::<u8>(), 1..20),
    ) {
        let body = upload_body(&blobs);
        // Cut anywhere before the end: never a clean finish.
        let at = cut % body.len();
        if let Ok(d) = run_upload(&[&body[..at]], 1 << 20) {
            prop_assert!(!d.finished, "truncated at {} of {} accepted", at, body.len());
        }
        // Bytes after the last blob: an error.
        let mut longer = body.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(run_upload(&[&longer], 1 << 20).is_err());
    }

    #[test]
    fn upload_parser_never_panics_on_mutated_streams(
        blobs in blobs_strategy(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut body = upload_body(&blobs);
        for (at, x) in flips {
            let n = body.len();
            body[at % n] ^= x;
        }
        let _ = run_upload(&refs(&chunked(&body, &cuts)), 1 << 20);
    }

    #[test]
    fn frame_parser_never_panics_on_arbitrary_bytes(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = run_frames(&refs(&chunked(&data, &cuts)));
    }

    #[test]
    fn frame_parser_round_trips_and_rejects_truncation(
        blobs in prop::collection::vec(
            (id_strategy(), prop::option::of(prop::collection::vec(any::<u8>(), 0..300))), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        cut in any::<usize>(),
    ) {
        let body = frames_body(&blobs);
        let (got, finished) = run_frames(&refs(&chunked(&body, &cuts))).expect("valid frames");
        prop_assert!(finished);
        prop_assert_eq!(&got, &blobs);
        let at = cut % body.len();
        if let Ok((_, finished)) = run_frames(&[&body[..at]]) {
            // A cut exactly between frames is a valid shorter response; anywhere else is not.
            let boundary = (0..=blobs.len()).any(|k| frames_body(&blobs[..k]).len() == at);
            prop_assert_eq!(finished, boundary, "cut at {} of {}", at, body.len());
        }
    }

    #[test]
    fn listing_json_parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = serde_json::from_slice::<ChangesResponse>(&data);
        let _ = serde_json::from_slice::<Vec<BlobDetail>>(&data);
        let _ = serde_json::from_slice::<CountResponse>(&data);
        let _ = serde_json::from_slice::<Vec<BlobId>>(&data);
    }

    #[test]
    fn listing_json_rejects_invalid_ids_and_survives_mutation(
        ids in prop::collection::vec(id_strategy(), 1..5),
        bad in "[^A-Za-z0-9_-]{1,3}",
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let changes: Vec<serde_json::Value> = ids.iter().enumerate().map(|(i, id)| serde_json::json!({
            "id": id, "op": if i % 2 == 0 { "put" } else { "delete" }, "size": i * 10,
            "created": 1_700_000_000 + i as i64, "seq": i + 1, "external": false,
        })).collect();
        let good = serde_json::json!({"seq": ids.len(), "changes": changes, "more": false});
        let parsed: ChangesResponse = serde_json::from_value(good.clone()).expect("valid listing");
        prop_assert_eq!(parsed.changes.len(), ids.len());
        // An invalid id anywhere makes the whole listing an error, never a half-parsed one.
        let mut evil = good.clone();
        evil["changes"][0]["id"] = serde_json::Value::String(format!("{}{bad}", ids[0]));
        prop_assert!(serde_json::from_value::<ChangesResponse>(evil).is_err());
        let mut text = serde_json::to_vec(&good).unwrap();
        for (at, x) in flips {
            let n = text.len();
            text[at % n] ^= x;
        }
        if let Ok(r) = serde_json::from_slice::<ChangesResponse>(&text) {
            for c in &r.changes {
                prop_assert!(BlobId::new(c.id.as_str()).is_ok());
            }
        }
    }
}

#[test]
fn upload_header_over_the_limit_is_an_error_not_a_buffer() {
    let body = vec![b'['; 10_000];
    let err = run_upload(&[&body], 1000).unwrap_err();
    assert!(err.contains("1000"), "{err}");
}
