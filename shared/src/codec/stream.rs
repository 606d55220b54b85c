//! Sans-IO [`Encoder`] and [`Decoder`]: the whole codec state machine, with no reads or writes
//! of its own, so sync adapters, async daemon code and the fuzzer all drive the same code.
//!
//! Memory is one segment at most (plus the header); the decoder never passes on a byte whose
//! segment has not been authenticated.

use std::fmt;

use super::header::{FIXED_HEADER_LEN, MAX_HEADER_LEN};
use super::{CodecError, Header, InvalidBlob, SegmentCipher, StorageKey, TAG_LEN};
use crate::id::{BlobId, Namespace};

/// Seals a blob one segment at a time. The caller writes [`Encoder::header_bytes`] first, then
/// the output of [`Encoder::seal_next`] for every segment in order.
pub struct Encoder {
    header: Header,
    cipher: SegmentCipher,
    next: u64,
}

impl Encoder {
    /// An encoder for `header` (build it with [`Header::new`] for a fresh salt).
    pub fn new(key: &StorageKey, header: Header) -> Encoder {
        let bytes = header.encode();
        let cipher = SegmentCipher::new(key, &header, bytes);
        Encoder {
            header,
            cipher,
            next: 0,
        }
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header bytes: the first bytes of the stored blob.
    pub fn header_bytes(&self) -> &[u8] {
        self.cipher.header_bytes()
    }

    /// Index of the next segment to seal.
    pub fn next_segment(&self) -> u64 {
        self.next
    }

    /// Plaintext length the next segment must have; `None` once all are sealed.
    pub fn next_plain_len(&self) -> Option<usize> {
        (!self.is_done()).then(|| self.header.segment_plain_len(self.next) as usize)
    }

    /// Seals the next segment's plaintext (exactly [`Encoder::next_plain_len`] bytes) and
    /// appends ciphertext || tag to `out`.
    pub fn seal_next(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.check_len(plain.len())?;
        let start = out.len();
        out.reserve(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let tag = self.seal_step(&mut out[start..]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Seals the next segment in place (no copy): `segment` holds exactly
    /// [`Encoder::next_plain_len`] plaintext bytes and becomes the ciphertext; store the
    /// returned tag right after it.
    pub fn seal_in_place(&mut self, segment: &mut [u8]) -> Result<[u8; TAG_LEN], CodecError> {
        self.check_len(segment.len())?;
        Ok(self.seal_step(segment))
    }

    /// Whether every segment has been sealed.
    pub fn is_done(&self) -> bool {
        self.next >= self.header.segment_count()
    }

    fn check_len(&self, got: usize) -> Result<(), CodecError> {
        if self.is_done() {
            return Err(CodecError::AlreadyDone);
        }
        let expected = self.header.segment_plain_len(self.next);
        if got as u64 != expected {
            return Err(CodecError::WrongSegmentLength {
                segment: self.next,
                expected,
                got: got as u64,
            });
        }
        Ok(())
    }

    fn seal_step(&mut self, buf: &mut [u8]) -> [u8; TAG_LEN] {
        let index = self.next;
        let tag = self
            .cipher
            .seal(index, self.header.is_last_segment(index), buf);
        self.next += 1;
        tag
    }
}

/// Error from [`Decoder::feed`]: the stored bytes are invalid, or the sink failed.
#[derive(Debug)]
pub enum DecodeError<E> {
    /// The stored bytes are not a valid blob; the decoder is now failed.
    Invalid(InvalidBlob),
    /// The sink returned an error; the segment it was given is not counted as verified.
    Sink(E),
}

impl<E: fmt::Display> fmt::Display for DecodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Invalid(e) => e.fmt(f),
            DecodeError::Sink(e) => write!(f, "writing decrypted plaintext failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for DecodeError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Invalid(e) => Some(e),
            DecodeError::Sink(e) => Some(e),
        }
    }
}

impl<E> From<InvalidBlob> for DecodeError<E> {
    fn from(e: InvalidBlob) -> Self {
        DecodeError::Invalid(e)
    }
}

fn check_names(
    expect_ns: &Namespace,
    expect_id: &BlobId,
    header: &Header,
) -> Result<(), InvalidBlob> {
    if header.namespace != *expect_ns {
        return Err(InvalidBlob::NamespaceMismatch {
            expected: expect_ns.clone(),
            found: header.namespace.clone(),
        });
    }
    if header.id != *expect_id {
        return Err(InvalidBlob::IdMismatch {
            expected: expect_id.clone(),
            found: header.id.clone(),
        });
    }
    Ok(())
}

enum State {
    /// Collecting header bytes.
    Header { buf: Vec<u8> },
    /// Header known; collecting the sealed bytes of segment `next`.
    Body {
        header: Header,
        /// Boxed: the expanded AES key is large, and the state moves between variants.
        cipher: Box<SegmentCipher>,
        next: u64,
    },
}

/// Decrypts a stored blob fed in chunks of any size, verifying each segment before handing its
/// plaintext to the sink.
pub struct Decoder {
    key: StorageKey,
    expect_ns: Namespace,
    expect_id: BlobId,
    state: State,
    /// Sealed bytes of the current segment collected so far.
    seg: Vec<u8>,
    /// Stored bytes consumed, counting from the start of the blob (also after a resume).
    received: u64,
    /// Set once a check (or a sink) failed: every later call repeats it. The state is kept so
    /// the progress counters still give the resume point.
    failed: Option<InvalidBlob>,
}

impl Decoder {
    /// A decoder that expects the blob stored as `expect_ns`/`expect_id` (a header naming
    /// anything else fails: that catches a server returning the wrong blob).
    pub fn new(key: &StorageKey, expect_ns: &Namespace, expect_id: &BlobId) -> Decoder {
        Decoder {
            key: key.clone(),
            expect_ns: expect_ns.clone(),
            expect_id: expect_id.clone(),
            state: State::Header { buf: Vec::new() },
            seg: Vec::new(),
            received: 0,
            failed: None,
        }
    }

    /// Resumes at a segment boundary: `header_bytes` is the complete header (from an earlier
    /// attempt or a Range request), and the next bytes fed are those starting at
    /// [`Header::segment_offset`]`(next_segment)`.
    pub fn resume(
        key: &StorageKey,
        header_bytes: &[u8],
        expect_ns: &Namespace,
        expect_id: &BlobId,
        next_segment: u64,
    ) -> Result<Decoder, InvalidBlob> {
        let mut d = Decoder::new(key, expect_ns, expect_id);
        let Some((header, len)) = Header::parse(header_bytes)? else {
            return Err(InvalidBlob::Truncated {
                received: header_bytes.len() as u64,
                expected: (header_bytes.len() as u64 + 1).max(FIXED_HEADER_LEN as u64 + 2),
            });
        };
        if len != header_bytes.len() {
            return Err(InvalidBlob::BadHeader(format!(
                "resume got {} header bytes but the header is {len} bytes long",
                header_bytes.len()
            )));
        }
        check_names(expect_ns, expect_id, &header)?;
        if next_segment > header.segment_count() {
            return Err(InvalidBlob::BadHeader(format!(
                "resume at segment {next_segment}, but the blob has {} segments",
                header.segment_count()
            )));
        }
        d.received = header.segment_offset(next_segment);
        let cipher = Box::new(SegmentCipher::new(&d.key, &header, header_bytes.to_vec()));
        d.state = State::Body {
            header,
            cipher,
            next: next_segment,
        };
        Ok(d)
    }

    /// Feeds stored bytes. Each segment completed by them is verified, then its plaintext (if
    /// not empty) goes to `sink`, in order. Bytes past the final segment fail with
    /// [`InvalidBlob::TrailingBytes`]. After any error the decoder stays failed, but its
    /// progress counters still tell where a new attempt can resume (verified segments are
    /// authentic whatever came after them).
    pub fn feed<E>(
        &mut self,
        data: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        self.feed_segments(data, |plain| sink(plain))
    }

    /// As [`Decoder::feed`], but the sink gets the buffer that holds the segment's plaintext
    /// (exactly): it may take it, leaving another buffer in its place, so a consumer on another
    /// thread gets the plaintext without a copy. Whatever buffer is left is cleared and reused.
    pub fn feed_segments<E>(
        &mut self,
        data: &[u8],
        sink: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        if let Some(e) = &self.failed {
            return Err(DecodeError::Invalid(e.clone()));
        }
        let r = self.feed_inner(data, sink);
        if let Err(DecodeError::Invalid(e)) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_inner<E>(
        &mut self,
        mut data: &[u8],
        mut sink: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        loop {
            match &mut self.state {
                State::Header { buf } => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let before = buf.len();
                    let take = data.len().min(MAX_HEADER_LEN - before);
                    buf.extend_from_slice(&data[..take]);
                    match Header::parse(buf)? {
                        None => {
                            // A valid header is at most MAX_HEADER_LEN long, so parse has an
                            // answer by then; running out of input here is the only way out.
                            self.received += take as u64;
                            data = &data[take..];
                            debug_assert!(data.is_empty());
                        }
                        Some((header, len)) => {
                            check_names(&self.expect_ns, &self.expect_id, &header)?;
                            let used = len - before;
                            self.received += used as u64;
                            data = &data[used..];
                            buf.truncate(len);
                            let bytes = std::mem::take(buf);
                            let cipher = Box::new(SegmentCipher::new(&self.key, &header, bytes));
                            self.state = State::Body {
                                header,
                                cipher,
                                next: 0,
                            };
                        }
                    }
                }
                State::Body {
                    header,
                    cipher,
                    next,
                } => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let count = header.segment_count();
                    if *next >= count {
                        return Err(DecodeError::Invalid(InvalidBlob::TrailingBytes {
                            expected: header.stored_size(),
                            received: self.received + data.len() as u64,
                        }));
                    }
                    let sealed_len = header.segment_sealed_len(*next) as usize;
                    let take = (sealed_len - self.seg.len()).min(data.len());
                    // A buffer a sink left in place may be small: grow it once, not by doublings.
                    self.seg.reserve(sealed_len - self.seg.len());
                    self.seg.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.received += take as u64;
                    if self.seg.len() == sealed_len {
                        let last = header.is_last_segment(*next);
                        let plain_len = cipher.open(*next, last, &mut self.seg)?.len();
                        self.seg.truncate(plain_len);
                        if plain_len > 0
                            && let Err(e) = sink(&mut self.seg)
                        {
                            // The plaintext went nowhere: the caller must not resume past it,
                            // and this decoder's buffer no longer holds the sealed bytes.
                            self.failed = Some(InvalidBlob::BadHeader(
                                "decoder fed again after its sink failed; resume with a new one"
                                    .into(),
                            ));
                            return Err(DecodeError::Sink(e));
                        }
                        self.seg.clear();
                        *next += 1;
                    }
                }
            }
        }
    }

    /// Ends the stream: the header if every segment arrived and was verified.
    pub fn finish(self) -> Result<Header, InvalidBlob> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.state {
            State::Header { buf } => Err(InvalidBlob::Truncated {
                received: self.received,
                expected: (buf.len() as u64 + 1).max(FIXED_HEADER_LEN as u64 + 2),
            }),
            State::Body { header, next, .. } => {
                if next < header.segment_count() {
                    Err(InvalidBlob::Truncated {
                        received: self.received,
                        expected: header.stored_size(),
                    })
                } else {
                    Ok(header)
                }
            }
        }
    }

    /// The header, once parsed and checked against the expected namespace and id.
    pub fn header(&self) -> Option<&Header> {
        match &self.state {
            State::Body { header, .. } => Some(header),
            _ => None,
        }
    }

    /// The header's bytes, once parsed: keep them to [`Decoder::resume`] later.
    pub fn header_bytes(&self) -> Option<&[u8]> {
        match &self.state {
            State::Body { cipher, .. } => Some(cipher.header_bytes()),
            _ => None,
        }
    }

    /// Segments verified and delivered so far (counting those before a resume point).
    pub fn verified_segments(&self) -> u64 {
        match &self.state {
            State::Body { next, .. } => *next,
            _ => 0,
        }
    }

    /// Stored bytes covered by verified, delivered segments plus the header: where a resumed
    /// download should start (0 while the header is incomplete).
    pub fn verified_stored_bytes(&self) -> u64 {
        match &self.state {
            State::Body { header, next, .. } => header.segment_offset(*next),
            _ => 0,
        }
    }

    /// Plaintext bytes delivered so far (counting those before a resume point).
    pub fn verified_plain_bytes(&self) -> u64 {
        match &self.state {
            State::Body { header, next, .. } => {
                (*next << header.segment_exp).min(header.plain_size)
            }
            _ => 0,
        }
    }

    /// Whether every segment has been verified (only [`Decoder::finish`] is left).
    pub fn is_done(&self) -> bool {
        match &self.state {
            State::Body { header, next, .. } => *next >= header.segment_count(),
            _ => false,
        }
    }
}
