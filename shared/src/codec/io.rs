//! `std::io` adapters over the sans-IO codec: [`EncryptReader`] (plaintext `Read` in, stored
//! blob out as a `Read`), [`DecryptWriter`] (stored bytes in as a `Write`, verified plaintext
//! out to an inner `Write`), and [`decrypt_range`] (random access on a seekable stored blob).
//!
//! Each holds at most one segment in memory. Invalid stored bytes surface through `std::io` as
//! `ErrorKind::InvalidData` wrapping an [`InvalidBlob`]; [`invalid_blob`] gets it back.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use super::header::{FIXED_HEADER_LEN, MAX_HEADER_LEN};
use super::stream::{DecodeError, Decoder, Encoder};
use super::{CodecError, Header, InvalidBlob, SegmentCipher, StorageKey, TAG_LEN};
use crate::id::{BlobId, Namespace};

/// The [`InvalidBlob`] inside an `io::Error` produced by these adapters, if that is what it is.
pub fn invalid_blob(err: &io::Error) -> Option<&InvalidBlob> {
    err.get_ref()?.downcast_ref::<InvalidBlob>()
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A `Read` that yields the stored blob (header, then sealed segments) for a plaintext `Read`.
///
/// The plaintext source must give exactly `header.plain_size` bytes: fewer or more is an
/// `InvalidData` error wrapping [`CodecError::SizeMismatch`], so a file that changed while
/// being uploaded is never stored under a wrong size.
pub struct EncryptReader<R: Read> {
    encoder: Encoder,
    plain: R,
    header_pos: usize,
    /// One sealed segment waiting to be read out; allocated on first use.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    plain_read: u64,
    eof_checked: bool,
}

impl<R: Read> EncryptReader<R> {
    /// Encrypts `plain` under `key` with `header` (build it with [`Header::new`]).
    pub fn new(key: &StorageKey, header: Header, plain: R) -> Self {
        EncryptReader {
            encoder: Encoder::new(key, header),
            plain,
            header_pos: 0,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            plain_read: 0,
            eof_checked: false,
        }
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        self.encoder.header()
    }

    /// The plaintext reader back.
    pub fn into_inner(self) -> R {
        self.plain
    }

    fn size_error(&self, actual: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CodecError::SizeMismatch {
                expected: self.encoder.header().plain_size,
                actual,
            },
        )
    }

    /// Reads the next segment's plaintext into `dst[..len]` and seals it there, tag after.
    fn seal_into(&mut self, dst: &mut [u8], len: usize) -> io::Result<usize> {
        let got = read_full(&mut self.plain, &mut dst[..len])?;
        self.plain_read += got as u64;
        if got < len {
            return Err(self.size_error(self.plain_read));
        }
        let tag = self
            .encoder
            .seal_in_place(&mut dst[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        dst[len..len + TAG_LEN].copy_from_slice(&tag);
        Ok(len + TAG_LEN)
    }
}

impl<R: Read> Read for EncryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let hb = self.encoder.header_bytes();
        if self.header_pos < hb.len() {
            let n = out.len().min(hb.len() - self.header_pos);
            out[..n].copy_from_slice(&hb[self.header_pos..self.header_pos + n]);
            self.header_pos += n;
            return Ok(n);
        }
        if self.pos < self.end {
            let n = out.len().min(self.end - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        let Some(len) = self.encoder.next_plain_len() else {
            if !self.eof_checked {
                let mut probe = [0u8; 1];
                if read_full(&mut self.plain, &mut probe)? > 0 {
                    return Err(self.size_error(self.plain_read + 1));
                }
                self.eof_checked = true;
            }
            return Ok(0);
        };
        if out.len() >= len + TAG_LEN {
            // The caller's buffer holds a whole sealed segment: seal straight into it.
            return self.seal_into(out, len);
        }
        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() < len + TAG_LEN {
            buf.resize(len + TAG_LEN, 0);
        }
        let r = self.seal_into(&mut buf, len);
        self.buf = buf;
        self.end = r?;
        self.pos = 0;
        let n = out.len().min(self.end);
        out[..n].copy_from_slice(&self.buf[..n]);
        self.pos = n;
        Ok(n)
    }
}

/// A `Write` that takes stored blob bytes and writes verified plaintext to `inner`.
///
/// Call [`DecryptWriter::finish`] at the end: only it detects a truncated blob.
pub struct DecryptWriter<W: Write> {
    decoder: Decoder,
    inner: W,
}

impl<W: Write> DecryptWriter<W> {
    /// Decrypts the blob expected under `expect_ns`/`expect_id` into `inner`.
    pub fn new(key: &StorageKey, expect_ns: &Namespace, expect_id: &BlobId, inner: W) -> Self {
        DecryptWriter {
            decoder: Decoder::new(key, expect_ns, expect_id),
            inner,
        }
    }

    /// The decoder (progress, header, resume point).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Checks that the whole blob arrived; returns its header and the inner writer (not
    /// flushed: flush it if it buffers).
    pub fn finish(self) -> Result<(Header, W), InvalidBlob> {
        let header = self.decoder.finish()?;
        Ok((header, self.inner))
    }
}

impl<W: Write> Write for DecryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let inner = &mut self.inner;
        match self.decoder.feed(data, |p| inner.write_all(p)) {
            Ok(()) => Ok(data.len()),
            Err(DecodeError::Invalid(e)) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(DecodeError::Sink(e)) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts plaintext bytes `plain` (end clamped to the blob's size) from a seekable stored
/// blob into `out`, reading and verifying only the header and the segments that hold them.
/// Returns the plaintext bytes written. A range starting past the end is
/// [`CodecError::RangeNotSatisfiable`]; an empty range writes nothing.
pub fn decrypt_range<R: Read + Seek, W: Write>(
    key: &StorageKey,
    mut stored: R,
    expect_ns: &Namespace,
    expect_id: &BlobId,
    plain: Range<u64>,
    mut out: W,
) -> Result<u64, CodecError> {
    stored.seek(SeekFrom::Start(0))?;
    // A header is at most MAX_HEADER_LEN bytes; reading that much (maybe into the body, which
    // the seek below skips back over) takes one read instead of one per field.
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let filled = read_full(&mut stored, &mut hbuf)?;
    let Some((header, header_len)) = Header::parse(&hbuf[..filled])? else {
        return Err(InvalidBlob::Truncated {
            received: filled as u64,
            expected: (filled as u64 + 1).max(FIXED_HEADER_LEN as u64 + 2),
        }
        .into());
    };
    if header.namespace != *expect_ns {
        return Err(InvalidBlob::NamespaceMismatch {
            expected: expect_ns.clone(),
            found: header.namespace,
        }
        .into());
    }
    if header.id != *expect_id {
        return Err(InvalidBlob::IdMismatch {
            expected: expect_id.clone(),
            found: header.id,
        }
        .into());
    }
    if plain.start > header.plain_size {
        return Err(CodecError::RangeNotSatisfiable {
            start: plain.start,
            plain_size: header.plain_size,
        });
    }
    let segs = header.segments_for(plain.clone());
    if segs.is_empty() {
        return Ok(0);
    }
    let cipher = SegmentCipher::new(key, &header, hbuf[..header_len].to_vec());
    stored.seek(SeekFrom::Start(header.segment_offset(segs.start)))?;
    // Grown by the bytes that really arrive (reused across segments), not sized from the
    // header up front: a forged header cannot make a short input allocate 16 MiB.
    let mut buf = Vec::new();
    let end = plain.end.min(header.plain_size);
    let mut written = 0u64;
    for i in segs {
        let len = header.segment_sealed_len(i) as usize;
        buf.clear();
        let got = (&mut stored).take(len as u64).read_to_end(&mut buf)?;
        if got < len {
            return Err(InvalidBlob::Truncated {
                received: header.segment_offset(i) + got as u64,
                expected: header.stored_size(),
            }
            .into());
        }
        let p = cipher.open(i, header.is_last_segment(i), &mut buf[..len])?;
        let seg_start = i << header.segment_exp;
        let from = plain.start.saturating_sub(seg_start) as usize;
        let to = (end - seg_start).min(p.len() as u64) as usize;
        out.write_all(&p[from..to])?;
        written += (to - from) as u64;
    }
    Ok(written)
}

/// Encrypts all of `plain` (exactly `header.plain_size` bytes) to `out`: header, then sealed
/// segments. Returns the stored bytes written. Memory: one segment.
pub fn encrypt_to<R: Read, W: Write>(
    key: &StorageKey,
    header: Header,
    plain: R,
    mut out: W,
) -> Result<u64, CodecError> {
    let mut r = EncryptReader::new(key, header, plain);
    io::copy(&mut r, &mut out).map_err(unwrap_codec_error)
}

/// Decrypts a whole stored blob from `stored` to `out`, verifying every segment before writing
/// it; fails on any invalid, truncated or over-long input. Returns the header.
pub fn decrypt_to<R: Read, W: Write>(
    key: &StorageKey,
    stored: R,
    expect_ns: &Namespace,
    expect_id: &BlobId,
    out: W,
) -> Result<Header, CodecError> {
    let mut stored = stored;
    let mut w = DecryptWriter::new(key, expect_ns, expect_id, out);
    io::copy(&mut stored, &mut w).map_err(unwrap_codec_error)?;
    let (header, mut out) = w.finish()?;
    out.flush()?;
    Ok(header)
}

/// Turns the io errors these adapters make back into the codec's own variants.
fn unwrap_codec_error(e: io::Error) -> CodecError {
    if e.get_ref().is_some_and(|i| i.is::<InvalidBlob>()) {
        let inner = e.into_inner().expect("checked above");
        return CodecError::Invalid(*inner.downcast::<InvalidBlob>().expect("checked above"));
    }
    if e.get_ref().is_some_and(|i| i.is::<CodecError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<CodecError>().expect("checked above");
    }
    CodecError::Io(e)
}
