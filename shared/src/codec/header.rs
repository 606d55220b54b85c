//! The v1 header: its byte layout, incremental parsing, and the segment arithmetic that maps
//! plaintext offsets to stored offsets (what HTTP Range requests and resumed downloads need).
//!
//! This module does no cryptography and no I/O.

use std::ops::Range;

use ring::rand::SecureRandom;

use super::{
    CodecError, InvalidBlob, MAGIC, MAX_SEGMENT_EXP, METHOD_AES256GCM_SEGMENTED, MIN_SEGMENT_EXP,
    SALT_LEN, SCHEME_SYMKEY, TAG_LEN, VERSION,
};
use crate::id::{BlobId, MAX_NAME_LEN, Namespace};

/// Bytes before the namespace: magic, version, scheme, method, exponent, salt, plaintext size.
pub const FIXED_HEADER_LEN: usize = 2 + 1 + 1 + 1 + 1 + SALT_LEN + 8;

/// The longest valid header: both names at their 128-byte limit.
pub const MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + 2 * (1 + MAX_NAME_LEN);

/// A parsed (or to-be-written) v1 header. Magic, version, scheme and method are implied: v1
/// writes only one combination and rejects the rest when parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `k`: segments hold `2^k` plaintext bytes (12..=24).
    pub segment_exp: u8,
    /// Per-upload salt for the HKDF that derives this blob's key.
    pub salt: [u8; SALT_LEN],
    /// Exact plaintext size in bytes.
    pub plain_size: u64,
    /// The namespace the blob was written under (authenticated as associated data).
    pub namespace: Namespace,
    /// The blob id it was written under (authenticated as associated data).
    pub id: BlobId,
}

/// Stored size of a blob: header, then every segment's ciphertext and tag.
///
/// Saturates at `u64::MAX` for sizes no valid header can carry ([`Header::new`] and
/// [`Header::parse`] reject those).
pub fn stored_size(plain_size: u64, segment_exp: u8, header_len: usize) -> u64 {
    checked_stored_size(plain_size, segment_exp, header_len).unwrap_or(u64::MAX)
}

fn segment_count_for(plain_size: u64, segment_exp: u8) -> u64 {
    // max(1, ceil(size / 2^k)): an empty blob still has one (empty) sealed segment, so even
    // it is authenticated.
    if plain_size == 0 {
        1
    } else {
        ((plain_size - 1) >> segment_exp) + 1
    }
}

fn checked_stored_size(plain_size: u64, segment_exp: u8, header_len: usize) -> Option<u64> {
    let tags = segment_count_for(plain_size, segment_exp).checked_mul(TAG_LEN as u64)?;
    plain_size.checked_add(tags)?.checked_add(header_len as u64)
}

fn check_exponent(segment_exp: u8) -> bool {
    (MIN_SEGMENT_EXP..=MAX_SEGMENT_EXP).contains(&segment_exp)
}

impl Header {
    /// A header for a new upload, with a fresh random salt (so a fresh key: segment counters
    /// never repeat under one key).
    pub fn new(
        namespace: Namespace,
        id: BlobId,
        plain_size: u64,
        segment_exp: u8,
    ) -> Result<Header, CodecError> {
        if !check_exponent(segment_exp) {
            return Err(CodecError::BadSegmentExponent(segment_exp));
        }
        let mut salt = [0u8; SALT_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .expect("the OS random source failed"); // unrecoverable: no key could be made either
        let header = Header {
            segment_exp,
            salt,
            plain_size,
            namespace,
            id,
        };
        if checked_stored_size(plain_size, segment_exp, header.encoded_len()).is_none() {
            return Err(CodecError::TooLarge { plain_size });
        }
        Ok(header)
    }

    /// The header bytes, exactly as stored and as used for associated data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(SCHEME_SYMKEY);
        out.push(METHOD_AES256GCM_SEGMENTED);
        out.push(self.segment_exp);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.plain_size.to_be_bytes());
        // Both names are validated to be at most 128 ASCII bytes, so the length fits a byte.
        out.push(self.namespace.as_str().len() as u8);
        out.extend_from_slice(self.namespace.as_str().as_bytes());
        out.push(self.id.as_str().len() as u8);
        out.extend_from_slice(self.id.as_str().as_bytes());
        out
    }

    /// Length of [`Header::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN + 2 + self.namespace.as_str().len() + self.id.as_str().len()
    }

    /// Parses a header from the start of `buf`.
    ///
    /// `Ok(None)` means `buf` is a valid prefix but too short: feed more bytes. Every field is
    /// checked as soon as its bytes are present, so a wrong magic fails after two bytes.
    /// `Ok(Some((header, header_len)))`: the bytes after `header_len` are the body.
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, InvalidBlob> {
        for (i, &b) in buf.iter().take(2).enumerate() {
            if b != MAGIC[i] {
                return Err(InvalidBlob::BadMagic);
            }
        }
        if let Some(&v) = buf.get(2)
            && v != VERSION
        {
            return Err(InvalidBlob::UnsupportedVersion(v));
        }
        if let Some(&s) = buf.get(3)
            && s != SCHEME_SYMKEY
        {
            return Err(InvalidBlob::UnsupportedScheme(s));
        }
        if let Some(&m) = buf.get(4)
            && m != METHOD_AES256GCM_SEGMENTED
        {
            return Err(InvalidBlob::UnsupportedMethod(m));
        }
        if let Some(&k) = buf.get(5)
            && !check_exponent(k)
        {
            return Err(InvalidBlob::BadSegmentExponent(k));
        }
        if buf.len() < FIXED_HEADER_LEN + 1 {
            return Ok(None);
        }
        let segment_exp = buf[5];
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&buf[6..6 + SALT_LEN]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&buf[6 + SALT_LEN..FIXED_HEADER_LEN]);
        let plain_size = u64::from_be_bytes(size);

        let mut pos = FIXED_HEADER_LEN;
        let Some(ns) = parse_name(buf, &mut pos, "namespace")? else {
            return Ok(None);
        };
        let namespace = Namespace::new(ns)
            .map_err(|e| InvalidBlob::BadHeader(format!("invalid namespace in header: {e}")))?;
        let Some(id) = parse_name(buf, &mut pos, "blob id")? else {
            return Ok(None);
        };
        let id = BlobId::new(id)
            .map_err(|e| InvalidBlob::BadHeader(format!("invalid blob id in header: {e}")))?;
        if checked_stored_size(plain_size, segment_exp, pos).is_none() {
            return Err(InvalidBlob::BadHeader(format!(
                "plaintext size {plain_size} is too large to be stored"
            )));
        }
        Ok(Some((
            Header {
                segment_exp,
                salt,
                plain_size,
                namespace,
                id,
            },
            pos,
        )))
    }

    /// Plaintext bytes per segment (`2^k`).
    pub fn segment_size(&self) -> u64 {
        1u64 << self.segment_exp
    }

    /// Number of sealed segments: `max(1, ceil(plain_size / 2^k))`.
    pub fn segment_count(&self) -> u64 {
        segment_count_for(self.plain_size, self.segment_exp)
    }

    /// Total stored size: header plus every sealed segment.
    pub fn stored_size(&self) -> u64 {
        stored_size(self.plain_size, self.segment_exp, self.encoded_len())
    }

    /// Plaintext length of segment `index` (`0` past the end).
    pub fn segment_plain_len(&self, index: u64) -> u64 {
        let count = self.segment_count();
        if index + 1 < count {
            self.segment_size()
        } else if index + 1 == count {
            self.plain_size - (index << self.segment_exp)
        } else {
            0
        }
    }

    /// Stored length (ciphertext and tag) of segment `index` (`0` past the end).
    pub fn segment_sealed_len(&self, index: u64) -> u64 {
        if index < self.segment_count() {
            self.segment_plain_len(index) + TAG_LEN as u64
        } else {
            0
        }
    }

    /// Whether `index` is the final segment (its nonce carries the last flag).
    pub fn is_last_segment(&self, index: u64) -> bool {
        index + 1 == self.segment_count()
    }

    /// Offset in the stored blob where sealed segment `index` starts. For
    /// `index >= segment_count()` this is [`Header::stored_size`], the end: so
    /// `segment_offset(n)` is also "stored bytes needed for the first `n` segments".
    pub fn segment_offset(&self, index: u64) -> u64 {
        if index >= self.segment_count() {
            return self.stored_size();
        }
        self.encoded_len() as u64 + index * (self.segment_size() + TAG_LEN as u64)
    }

    /// Segments holding plaintext `plain` (clamped to the blob): `first..last + 1`. Empty when
    /// the clamped range is empty.
    pub fn segments_for(&self, plain: Range<u64>) -> Range<u64> {
        let end = plain.end.min(self.plain_size);
        if plain.start >= end {
            return 0..0;
        }
        (plain.start >> self.segment_exp)..((end - 1) >> self.segment_exp) + 1
    }

    /// The stored byte range covering every segment that holds plaintext `plain` (clamped to
    /// the blob): what to ask the server for in an HTTP Range request. The header is not
    /// included; an empty plaintext range maps to an empty range at the first segment.
    pub fn stored_range_for(&self, plain: Range<u64>) -> Range<u64> {
        let segs = self.segments_for(plain);
        if segs.is_empty() {
            let at = self.encoded_len() as u64;
            return at..at;
        }
        self.segment_offset(segs.start)
            ..self.segment_offset(segs.end - 1) + self.segment_sealed_len(segs.end - 1)
    }
}

/// Reads a length-prefixed name at `*pos`; `Ok(None)` when `buf` ends first.
fn parse_name<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    what: &str,
) -> Result<Option<&'a str>, InvalidBlob> {
    let Some(&len) = buf.get(*pos) else {
        return Ok(None);
    };
    let len = len as usize;
    if len == 0 || len > MAX_NAME_LEN {
        return Err(InvalidBlob::BadHeader(format!(
            "{what} length {len} in header is outside 1..=128"
        )));
    }
    let start = *pos + 1;
    let Some(bytes) = buf.get(start..start + len) else {
        return Ok(None);
    };
    let s = std::str::from_utf8(bytes)
        .map_err(|_| InvalidBlob::BadHeader(format!("{what} in header is not ASCII")))?;
    *pos = start + len;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64, k: u8) -> Header {
        Header::new(
            Namespace::new("ns").unwrap(),
            BlobId::new("id").unwrap(),
            size,
            k,
        )
        .unwrap()
    }

    #[test]
    fn segment_counts_follow_the_design() {
        let seg = 1u64 << 12;
        for (size, count, last) in [
            (0, 1, 0),
            (1, 1, 1),
            (seg - 1, 1, seg - 1),
            (seg, 1, seg),
            (seg + 1, 2, 1),
            (3 * seg, 3, seg),
        ] {
            let h = header(size, 12);
            assert_eq!(h.segment_count(), count, "size {size}");
            assert_eq!(h.segment_plain_len(count - 1), last, "size {size}");
            assert_eq!(
                h.stored_size(),
                h.encoded_len() as u64 + size + 16 * count,
                "size {size}"
            );
            assert_eq!(h.segment_offset(count), h.stored_size());
        }
    }

    #[test]
    fn stored_range_covers_exactly_the_touched_segments() {
        let h = header(10_000, 12); // segments of 4096, 4096, 1808
        let hl = h.encoded_len() as u64;
        let s = 4096 + 16;
        assert_eq!(h.stored_range_for(0..1), hl..hl + s);
        assert_eq!(h.stored_range_for(4095..4096), hl..hl + s);
        assert_eq!(h.stored_range_for(4095..4097), hl..hl + 2 * s);
        assert_eq!(h.stored_range_for(4096..4097), hl + s..hl + 2 * s);
        assert_eq!(h.stored_range_for(0..u64::MAX), hl..h.stored_size());
        assert_eq!(
            h.stored_range_for(9000..10_000),
            hl + 2 * s..h.stored_size()
        );
        assert!(h.stored_range_for(5..5).is_empty());
        assert!(h.stored_range_for(10_000..20_000).is_empty());
    }

    #[test]
    fn parse_reports_need_more_for_every_prefix() {
        let h = header(123, 16);
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            assert_eq!(Header::parse(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
        let (back, len) = Header::parse(&bytes).unwrap().unwrap();
        assert_eq!((back, len), (h, bytes.len()));
    }

    #[test]
    fn parse_rejects_bad_fields_early() {
        assert_eq!(Header::parse(&[0x13, 0x38]), Err(InvalidBlob::BadMagic));
        assert_eq!(
            Header::parse(&[0x13, 0x37, 2]),
            Err(InvalidBlob::UnsupportedVersion(2))
        );
        assert_eq!(
            Header::parse(&[0x13, 0x37, 1, 2]),
            Err(InvalidBlob::UnsupportedScheme(2))
        );
        assert_eq!(
            Header::parse(&[0x13, 0x37, 1, 1, 1]),
            Err(InvalidBlob::UnsupportedMethod(1))
        );
        assert_eq!(
            Header::parse(&[0x13, 0x37, 1, 1, 4, 25]),
            Err(InvalidBlob::BadSegmentExponent(25))
        );
        let mut bytes = header(1, 12).encode();
        bytes[FIXED_HEADER_LEN] = 0;
        assert!(matches!(
            Header::parse(&bytes),
            Err(InvalidBlob::BadHeader(_))
        ));
        let mut bytes = header(1, 12).encode();
        bytes[FIXED_HEADER_LEN + 1] = b'/';
        assert!(matches!(
            Header::parse(&bytes),
            Err(InvalidBlob::BadHeader(_))
        ));
        let mut bytes = header(1, 12).encode();
        bytes[FIXED_HEADER_LEN - 8..FIXED_HEADER_LEN].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            Header::parse(&bytes),
            Err(InvalidBlob::BadHeader(_))
        ));
    }

    #[test]
    fn new_rejects_bad_exponents_and_sizes() {
        let ns = Namespace::default();
        let id = BlobId::new("x").unwrap();
        for k in [0, 11, 25, 255] {
            assert!(matches!(
                Header::new(ns.clone(), id.clone(), 1, k),
                Err(CodecError::BadSegmentExponent(e)) if e == k
            ));
        }
        assert!(matches!(
            Header::new(ns, id, u64::MAX, 12),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
