//! Fuzzes the `/stream` upstream parser (`UploadDecoder`, what the server runs on request
//! bodies). The first input byte picks the chunk size the body arrives in and the second the
//! header limit, so chunk boundaries fall everywhere. Nothing may panic or loop; announced
//! sizes must be honoured exactly; a clean `finish` only when every announced blob arrived.
#![no_main]

use blobsync_shared::wire::{UploadDecoder, UploadEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = usize::from(data[0]).max(1);
    let max_header = 16 + usize::from(data[1]) * 64;
    let body = &data[2..];
    let mut dec = UploadDecoder::new(max_header);
    let mut announced: Vec<u64> = Vec::new();
    let mut current: Option<(u64, u64)> = None; // (size, received)
    let mut ended = 0usize;
    let mut steps = 0usize;
    let limit = 4 * body.len() + 64;
    let mut failed = false;
    'outer: for piece in body.chunks(chunk).chain(std::iter::once(&[][..])) {
        let mut input = piece;
        while !input.is_empty() || dec.has_pending_event() {
            steps += 1;
            assert!(steps <= limit, "no progress");
            let (used, ev) = match dec.decode(input) {
                Ok(x) => x,
                Err(_) => {
                    failed = true;
                    break 'outer;
                }
            };
            assert!(used <= input.len());
            input = &input[used..];
            match ev {
                None => assert!(used > 0 || input.is_empty(), "stalled"),
                Some(UploadEvent::Header(h)) => announced = h.iter().map(|(_, s)| *s).collect(),
                Some(UploadEvent::Blob { size, .. }) => {
                    assert!(current.is_none());
                    assert_eq!(announced.get(ended), Some(&size), "blob out of header order");
                    current = Some((size, 0));
                }
                Some(UploadEvent::Data(d)) => {
                    let c = current.as_mut().expect("data outside a blob");
                    c.1 += d.len() as u64;
                    assert!(c.1 <= c.0, "more bytes than announced");
                }
                Some(UploadEvent::End { .. }) => {
                    let (size, got) = current.take().expect("end outside a blob");
                    assert_eq!(size, got, "end before every byte");
                    ended += 1;
                }
            }
        }
    }
    if !failed && dec.finish().is_ok() {
        assert_eq!(ended, announced.len(), "finish ok with blobs missing");
    }
});
