//! The HTTP wire types of the blob server: listing JSON, flags, incremental changes, and the
//! `/stream` framing (upstream header + bodies, downstream frames) as sans-IO encoders and
//! incremental decoders that never hold a whole blob.
//!
//! Both `blobsync-server` and the daemon's HTTP remote use these, so the two ends cannot drift.
//! This module does no I/O: callers feed it bytes and write out what it returns.
//!
//! HTTP semantics the types carry (the server implements them, the client relies on them):
//! - `GET /blobs/{user}?namespace=N&since=S[&limit=L]` returns a [`ChangesResponse`]: the latest
//!   state of every id of namespace `N` whose sequence number is `> S`, in ascending `seq`, each
//!   id at most once (a put then delete shows only the delete). Continue with `since = seq` of
//!   the response while `more` is true. `since=0` lists everything including tombstones.
//!   If `S` is older than what the server can still answer (tombstones compacted) the answer is
//!   `410 Gone`: the client must fall back to a full listing and restart from its `seq`.
//! - `GET /blobs/{user}?namespaces=1` returns a [`NamespacesResponse`]: the sorted namespaces
//!   that hold any live blob or tombstone of the user.
//! - `created` is **unix seconds as an integer** (`i64`); ties in `order_by=date` are broken by
//!   sequence number, so the order is still total.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::{BlobId, IdError};

/// Query parameter names of the blob server's HTTP API (server/README.md, "API").
pub mod query {
    /// Namespace of the request; default `default` (`MX` on `/incoming`).
    pub const NAMESPACE: &str = "namespace";
    /// List only blobs carrying this flag.
    pub const FILTER_FLAG: &str = "filter_flag";
    /// `date`, `+date` (both oldest first) or `-date` (newest first).
    pub const ORDER_BY: &str = "order_by";
    /// `1`/`true`: list tombstones instead of live blobs.
    pub const DELETED: &str = "deleted";
    /// `1`/`true`: answer a [`super::CountResponse`].
    pub const ONLY_COUNT: &str = "only_count";
    /// `1`/`true`: answer [`super::BlobDetail`] objects instead of bare ids.
    pub const DETAIL: &str = "detail";
    /// A sequence number: answer a [`super::ChangesResponse`] of changes after it.
    pub const SINCE: &str = "since";
    /// Page size (the server caps it; see its `--max-page`).
    pub const LIMIT: &str = "limit";
    /// Page cursor for id listings: the last id of the previous page.
    pub const AFTER: &str = "after";
    /// `1`/`true` on `GET /blobs/{user}/{id}`: answer the blob's flags as a JSON list.
    pub const ONLY_FLAGS: &str = "only_flags";
    /// `upload` or `download` on `/stream/{user}`.
    pub const DIRECTION: &str = "direction";
    /// `1`/`true` on `GET /blobs/{user}`: answer a [`super::NamespacesResponse`], the user's
    /// namespaces that hold live blobs or tombstones. Takes no other parameter.
    pub const NAMESPACES: &str = "namespaces";
    /// A sequence number on `PUT /blobs/{user}/{id}` and `/stream/{user}?direction=upload`:
    /// refuse (412) to store an id whose tombstone is newer than it, so a retried upload
    /// never recreates a blob another device deleted after the first attempt.
    pub const IF_ABSENT_SINCE: &str = "if_absent_since";
    /// `PUT /blobs/...`: adopt a delivered age file — replace it only if the stored copy is
    /// still the age file with this SHA-256 (64 hex); 412 otherwise.
    pub const REPLACE_EXTERNAL: &str = "replace_external";
}

/// Errors of parsing wire data: flags and stream framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A flag name that is not one of the four.
    #[error("unknown flag {0:?}: use PENDING, PROCESSING, PROCESSED or FAILED")]
    UnknownFlag(String),
    /// The upstream header line is longer than the decoder accepts.
    #[error("stream header is longer than {limit} bytes without a newline")]
    HeaderTooLong {
        /// The limit given to the decoder.
        limit: usize,
    },
    /// The upstream header is not a JSON list of `[id, size]` pairs.
    #[error("stream header is not a JSON list of [id, size] pairs: {0}")]
    BadHeader(String),
    /// An id appears twice in one upstream header.
    #[error("blob id {0} appears twice in the stream header")]
    DuplicateId(String),
    /// A frame names an invalid id.
    #[error("invalid blob id in stream frame: {0}")]
    BadId(#[from] IdError),
    /// A frame's id bytes are not UTF-8.
    #[error("blob id in stream frame is not UTF-8")]
    IdNotUtf8,
    /// The body ended in the middle of the header, a frame or a blob.
    #[error("stream ended early: {0}")]
    Truncated(&'static str),
    /// Bytes follow the last blob the header announced.
    #[error("stream has {0} bytes after the last blob the header announced")]
    TrailingBytes(usize),
}

/// A remote flag of a blob (server side); serialized as its upper-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Flag {
    /// Waiting to be processed (set on `/incoming` deliveries).
    Pending,
    /// Being processed by the consuming app.
    Processing,
    /// Done.
    Processed,
    /// Processing failed.
    Failed,
}

impl Flag {
    /// All flags, in their canonical order.
    pub const ALL: [Flag; 4] = [
        Flag::Pending,
        Flag::Processing,
        Flag::Processed,
        Flag::Failed,
    ];

    /// The wire name (`"PENDING"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Pending => "PENDING",
            Flag::Processing => "PROCESSING",
            Flag::Processed => "PROCESSED",
            Flag::Failed => "FAILED",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Flag {
    type Err = WireError;
    /// Exact, case-sensitive names, as on the wire.
    fn from_str(s: &str) -> Result<Self, WireError> {
        Flag::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| WireError::UnknownFlag(s.chars().take(64).collect()))
    }
}

/// One blob in a `detail=1` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDetail {
    /// The blob id.
    pub id: BlobId,
    /// Stored size in bytes.
    pub size: u64,
    /// Creation time, unix seconds.
    pub created: i64,
    /// Remote flags, in canonical order.
    pub flags: Vec<Flag>,
    /// Delivered through `/incoming` by a trusted app (stored as-is, not blobsync-encrypted).
    /// Absent in answers of older servers: false.
    #[serde(default)]
    pub external: bool,
}

/// Kind of a [`Change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// The blob exists (created at `seq`).
    Put,
    /// The blob was deleted at `seq` (a tombstone).
    Delete,
}

/// The latest state of one id, in a `since` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The blob id.
    pub id: BlobId,
    /// Put or delete.
    pub op: ChangeOp,
    /// Size in bytes of the blob (for a delete: of the blob that was deleted).
    pub size: u64,
    /// Unix seconds of the change: creation time for a put, deletion time for a delete.
    pub created: i64,
    /// The user's sequence number at this change.
    pub seq: u64,
    /// Delivered through `/incoming` by a trusted app (stored as-is, not blobsync-encrypted).
    pub external: bool,
    /// On a delete: the deleting device's proof ([`DELETE_PROOF_HEADER`], 64 lowercase hex),
    /// as the server stored it. Absent on puts, on tombstones written without one (an admin,
    /// an older daemon) and in answers of older servers. The server cannot check it (it has no
    /// key); devices do, and delete their copy only when it verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Response header that names the server's instance: a stable random id created with the
/// server's data (its index), the same on every node of a deployment. A device that sees it
/// change knows the remote forgot or replaced its data, and reconciles instead of deleting.
pub const INSTANCE_HEADER: &str = "blobsync-instance";

/// Request header of `DELETE /blobs/{user}/{id}`: the deleting device's proof, an HMAC-SHA256
/// under a key derived from the storage key over `namespace || 0 || id || 0 || salt` of the
/// deleted version, as 64 lowercase hex characters. The server keeps it with the tombstone and
/// returns it as [`Change::proof`].
pub const DELETE_PROOF_HEADER: &str = "x-blobsync-delete-proof";

/// Request header blobsyncd sends on every request (value: `blobsyncd/VERSION`): answer in
/// blobsync's own dialect (201 + sequence number on a put, blobsync's `/stream` download
/// framing) even where the credentials are Soledad's `Token`. See the server's README.
pub const CLIENT_HEADER: &str = "x-blobsync-client";

/// Answer of `GET /blobs/{user}?since=S`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// The cursor to pass as `since` next time. When `more` is false this is the user's current
    /// sequence number (so an idle namespace still advances); otherwise the last change's `seq`.
    pub seq: u64,
    /// Changes with `seq` greater than the request's `since`, ascending.
    pub changes: Vec<Change>,
    /// True when `limit` cut the answer: ask again with `since = seq`.
    #[serde(default)]
    pub more: bool,
}

/// Answer of `only_count=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResponse {
    /// Number of blobs matching the other query parameters.
    pub count: u64,
}

/// Answer of `GET /blobs/{user}?namespaces=1`: every namespace of the user with at least one
/// live blob or tombstone, sorted. A device lists these to discover namespaces it has never
/// seen (a namespace whose last tombstone was purged may drop out: nothing left to sync).
pub type NamespacesResponse = Vec<crate::Namespace>;

/// Answer of an upstream `/stream`: HTTP status per blob id (201 stored, 409 exists, 413 too
/// large, 507 over quota, 400 ...).
pub type UploadResponse = BTreeMap<BlobId, u16>;

/// Body of a downstream `/stream` request: the ids to fetch, in order.
pub type DownloadRequest = Vec<BlobId>;

/// Size value of a downstream frame for an id the server does not have.
pub const MISSING_SIZE: u64 = u64::MAX;

/// Default bound on the upstream header line the server accepts (ids are <= 128 bytes, so
/// this fits well over 10,000 entries).
pub const DEFAULT_MAX_UPLOAD_HEADER: usize = 4 << 20;

/// Encodes the first line of an upstream `/stream` body: `[[id, size], ...]\n`. The blobs'
/// bytes follow back to back, in the same order, exactly `size` bytes each.
pub fn encode_upload_header(entries: &[(BlobId, u64)]) -> Vec<u8> {
    // Serializing ids and integers cannot fail.
    let mut out = serde_json::to_vec(entries).expect("ids and sizes always serialize");
    out.push(b'\n');
    out
}

/// Encodes a downstream frame header: `u16 id length, id, u64 size` (big-endian). `None`
/// encodes a missing blob ([`MISSING_SIZE`], no bytes follow).
pub fn encode_frame_header(id: &BlobId, size: Option<u64>) -> Vec<u8> {
    let id = id.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + id.len() + 8);
    // Ids are at most 128 bytes, so the length always fits in a u16.
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&size.unwrap_or(MISSING_SIZE).to_be_bytes());
    out
}

/// What the downstream decoder found in the bytes it was fed.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A blob starts: `size` bytes of [`FrameEvent::Data`] follow, then [`FrameEvent::End`].
    Blob {
        /// Its id.
        id: BlobId,
        /// Its size.
        size: u64,
    },
    /// The server has no such blob (no data, no `End`).
    Missing {
        /// Its id.
        id: BlobId,
    },
    /// The next piece of the current blob's bytes (borrowed from the input).
    Data(&'a [u8]),
    /// The current blob is complete.
    End {
        /// Its id.
        id: BlobId,
    },
}

#[derive(Debug)]
enum FrameState {
    /// Collecting a frame header (id length, id, size) into `head`.
    Head,
    /// Inside a blob with `left` bytes to go.
    Body { id: BlobId, left: u64 },
}

/// Incremental decoder of a downstream `/stream` response. Feed it whatever the body yields;
/// it buffers at most one frame header (< 140 bytes), never blob bytes.
///
/// ```
/// # use blobsync_shared::wire::*;
/// # use blobsync_shared::BlobId;
/// let id = BlobId::new("a").unwrap();
/// let mut body = encode_frame_header(&id, Some(2));
/// body.extend_from_slice(b"hi");
/// let mut dec = FrameDecoder::new();
/// let mut input = &body[..];
/// let mut got = Vec::new();
/// while !input.is_empty() || dec.has_pending_event() {
///     let (used, ev) = dec.decode(input).unwrap();
///     input = &input[used..];
///     if let Some(FrameEvent::Data(d)) = ev { got.extend_from_slice(d) }
/// }
/// dec.finish().unwrap();
/// assert_eq!(got, b"hi");
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    state: FrameState,
    head: Vec<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder at the start of a response.
    pub fn new() -> Self {
        Self {
            state: FrameState::Head,
            head: Vec::with_capacity(2 + 128 + 8),
        }
    }

    /// True when an event is due without more input: the `End` of a blob whose last byte (or
    /// zero-size body) was already consumed. Call `decode(&[])` until it turns false.
    pub fn has_pending_event(&self) -> bool {
        matches!(self.state, FrameState::Body { left: 0, .. })
    }

    /// Consumes a prefix of `input` and returns how many bytes it used and at most one event.
    /// `(n, None)` means the bytes went into a partial frame header: feed more.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<FrameEvent<'a>>), WireError> {
        match &mut self.state {
            FrameState::Body { left: 0, .. } => {
                let FrameState::Body { id, .. } =
                    std::mem::replace(&mut self.state, FrameState::Head)
                else {
                    unreachable!("matched Body just above")
                };
                Ok((0, Some(FrameEvent::End { id })))
            }
            FrameState::Body { left, .. } => {
                if input.is_empty() {
                    return Ok((0, None));
                }
                let n = (*left).min(input.len() as u64) as usize;
                *left -= n as u64;
                Ok((n, Some(FrameEvent::Data(&input[..n]))))
            }
            FrameState::Head => {
                let mut used = 0;
                // Need 2 bytes for the length, then id + 8.
                let need_len = |head: &[u8]| -> usize {
                    if head.len() < 2 {
                        2
                    } else {
                        2 + u16::from_be_bytes([head[0], head[1]]) as usize + 8
                    }
                };
                loop {
                    let need = need_len(&self.head);
                    if self.head.len() >= 2 && need - 10 > crate::id::MAX_NAME_LEN {
                        return Err(WireError::BadId(IdError::TooLong {
                            kind: "blob id",
                            value: String::new(),
                            len: need - 10,
                        }));
                    }
                    if self.head.len() == need && need > 2 {
                        break;
                    }
                    if used == input.len() {
                        return Ok((used, None));
                    }
                    let take = (need - self.head.len()).min(input.len() - used);
                    self.head.extend_from_slice(&input[used..used + take]);
                    used += take;
                }
                let idlen = self.head.len() - 10;
                let id = std::str::from_utf8(&self.head[2..2 + idlen])
                    .map_err(|_| WireError::IdNotUtf8)?;
                let id = BlobId::new(id)?;
                let mut sz = [0u8; 8];
                sz.copy_from_slice(&self.head[2 + idlen..]);
                let size = u64::from_be_bytes(sz);
                self.head.clear();
                if size == MISSING_SIZE {
                    Ok((used, Some(FrameEvent::Missing { id })))
                } else {
                    self.state = FrameState::Body {
                        id: id.clone(),
                        left: size,
                    };
                    Ok((used, Some(FrameEvent::Blob { id, size })))
                }
            }
        }
    }

    /// Call at end of body: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.state {
            FrameState::Body { .. } => Err(WireError::Truncated("inside a blob's bytes")),
            FrameState::Head if !self.head.is_empty() => {
                Err(WireError::Truncated("inside a frame header"))
            }
            FrameState::Head => Ok(()),
        }
    }
}

/// What the upstream decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadEvent<'a> {
    /// The header: every blob that follows, in order (validated ids, no duplicates).
    Header(Vec<(BlobId, u64)>),
    /// A blob's bytes start (it may be empty).
    Blob {
        /// Its id.
        id: BlobId,
        /// Its size.
        size: u64,
    },
    /// The next piece of the current blob.
    Data(&'a [u8]),
    /// The current blob is complete.
    End {
        /// Its id.
        id: BlobId,
    },
}

#[derive(Debug)]
enum UploadState {
    Header,
    /// Between blobs: `next` indexes `entries`.
    Between,
    Body {
        left: u64,
    },
    Done,
}

/// Incremental decoder of an upstream `/stream` body (used by the server). It buffers only the
/// header line (bounded by `max_header`), never blob bytes.
#[derive(Debug)]
pub struct UploadDecoder {
    state: UploadState,
    max_header: usize,
    header: Vec<u8>,
    entries: Vec<(BlobId, u64)>,
    next: usize,
}

impl UploadDecoder {
    /// A decoder that rejects a header line longer than `max_header` bytes.
    pub fn new(max_header: usize) -> Self {
        Self {
            state: UploadState::Header,
            max_header,
            header: Vec::new(),
            entries: Vec::new(),
            next: 0,
        }
    }

    /// True when an event is due without more input (an empty blob's start or end, or the
    /// end of the last blob's bytes). Call `decode(&[])` until it turns false.
    pub fn has_pending_event(&self) -> bool {
        match self.state {
            UploadState::Between => self.next < self.entries.len(),
            UploadState::Body { left } => left == 0,
            _ => false,
        }
    }

    /// Consumes a prefix of `input`; returns the bytes used and at most one event.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<UploadEvent<'a>>), WireError> {
        match self.state {
            UploadState::Header => {
                let room = self.max_header + 1 - self.header.len();
                let window = &input[..input.len().min(room)];
                match window.iter().position(|&b| b == b'\n') {
                    None => {
                        self.header.extend_from_slice(window);
                        if self.header.len() > self.max_header {
                            return Err(WireError::HeaderTooLong {
                                limit: self.max_header,
                            });
                        }
                        Ok((window.len(), None))
                    }
                    Some(pos) => {
                        self.header.extend_from_slice(&window[..pos]);
                        let raw: Vec<(String, u64)> = serde_json::from_slice(&self.header)
                            .map_err(|e| WireError::BadHeader(e.to_string()))?;
                        let mut seen = std::collections::HashSet::with_capacity(raw.len());
                        let mut entries = Vec::with_capacity(raw.len());
                        for (id, size) in raw {
                            let id = BlobId::new(id)?;
                            if !seen.insert(id.clone()) {
                                return Err(WireError::DuplicateId(id.to_string()));
                            }
                            entries.push((id, size));
                        }
                        self.header = Vec::new();
                        self.entries = entries.clone();
                        self.state = UploadState::Between;
                        Ok((pos + 1, Some(UploadEvent::Header(entries))))
                    }
                }
            }
            UploadState::Between => {
                if self.next == self.entries.len() {
                    self.state = UploadState::Done;
                    return self.decode(input);
                }
                let (id, size) = self.entries[self.next].clone();
                self.state = UploadState::Body { left: size };
                Ok((0, Some(UploadEvent::Blob { id, size })))
            }
            UploadState::Body { left: 0 } => {
                let id = self.entries[self.next].0.clone();
                self.next += 1;
                self.state = UploadState::Between;
                Ok((0, Some(UploadEvent::End { id })))
            }
            UploadState::Body { ref mut left } => {
                if input.is_empty() {
                    return Ok((0, None));
                }
                let n = (*left).min(input.len() as u64) as usize;
                *left -= n as u64;
                Ok((n, Some(UploadEvent::Data(&input[..n]))))
            }
            UploadState::Done => {
                if input.is_empty() {
                    Ok((0, None))
                } else {
                    Err(WireError::TrailingBytes(input.len()))
                }
            }
        }
    }

    /// Call at end of body: an error unless every announced blob arrived complete.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.state {
            UploadState::Header => Err(WireError::Truncated("inside the header line")),
            UploadState::Done => Ok(()),
            UploadState::Between if self.next == self.entries.len() => Ok(()),
            UploadState::Body { left: 0 } if self.next + 1 == self.entries.len() => Ok(()),
            _ => Err(WireError::Truncated("before every announced blob arrived")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> BlobId {
        BlobId::new(s).unwrap()
    }

    #[test]
    fn flags_parse_and_serialize_as_upper_case_names() {
        for f in Flag::ALL {
            assert_eq!(f.as_str().parse::<Flag>().unwrap(), f);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{f}\""));
        }
        let e = "pending".parse::<Flag>().unwrap_err();
        assert!(e.to_string().contains("PENDING, PROCESSING"), "{e}");
    }

    #[test]
    fn changes_json_has_the_documented_field_names() {
        let r = ChangesResponse {
            seq: 7,
            more: false,
            changes: vec![Change {
                id: id("x"),
                op: ChangeOp::Delete,
                size: 3,
                created: 10,
                seq: 7,
                external: false,
                proof: None,
            }],
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq": 7, "more": false, "changes": [
                {"id": "x", "op": "delete", "size": 3, "created": 10, "seq": 7, "external": false}
            ]})
        );
        let resp: UploadResponse = [(id("a"), 201u16)].into_iter().collect();
        assert_eq!(serde_json::to_string(&resp).unwrap(), r#"{"a":201}"#);
    }

    /// (id, Some(bytes) | None for missing), as decoded.
    type Decoded = Vec<(String, Option<Vec<u8>>)>;

    /// Feeds `body` in pieces of `chunk` bytes.
    fn decode_frames(body: &[u8], chunk: usize) -> Result<Decoded, WireError> {
        let mut dec = FrameDecoder::new();
        let mut out: Decoded = Vec::new();
        for piece in body.chunks(chunk.max(1)) {
            let mut input = piece;
            while !input.is_empty() || dec.has_pending_event() {
                let (used, ev) = dec.decode(input)?;
                input = &input[used..];
                match ev {
                    Some(FrameEvent::Blob { id, .. }) => out.push((id.to_string(), Some(vec![]))),
                    Some(FrameEvent::Missing { id }) => out.push((id.to_string(), None)),
                    Some(FrameEvent::Data(d)) => out
                        .last_mut()
                        .unwrap()
                        .1
                        .as_mut()
                        .unwrap()
                        .extend_from_slice(d),
                    Some(FrameEvent::End { .. }) | None => {}
                }
            }
        }
        dec.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_round_trip_at_every_chunking() {
        let mut body = Vec::new();
        body.extend(encode_frame_header(&id("one"), Some(5)));
        body.extend(b"hello");
        body.extend(encode_frame_header(&id("gone"), None));
        body.extend(encode_frame_header(&id("empty"), Some(0)));
        body.extend(encode_frame_header(&id("two"), Some(2)));
        body.extend(b"ok");
        let want = vec![
            ("one".to_string(), Some(b"hello".to_vec())),
            ("gone".to_string(), None),
            ("empty".to_string(), Some(vec![])),
            ("two".to_string(), Some(b"ok".to_vec())),
        ];
        for chunk in 1..=body.len() {
            assert_eq!(decode_frames(&body, chunk).unwrap(), want, "chunk {chunk}");
        }
    }

    #[test]
    fn truncated_or_bad_frames_are_errors() {
        let mut body = encode_frame_header(&id("one"), Some(5));
        body.extend(b"hel");
        assert!(matches!(
            decode_frames(&body, 4),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(
            decode_frames(&body[..4], 4),
            Err(WireError::Truncated(_))
        ));
        let bad = [0u8, 3, b'a', b'/', b'b', 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode_frames(&bad, 64), Err(WireError::BadId(_))));
        let long = [0xffu8, 0xff, b'a'];
        assert!(matches!(decode_frames(&long, 64), Err(WireError::BadId(_))));
    }

    fn decode_upload(body: &[u8], chunk: usize) -> Result<Vec<(String, Vec<u8>)>, WireError> {
        let mut dec = UploadDecoder::new(1024);
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut ends = 0;
        for piece in body.chunks(chunk.max(1)) {
            let mut input = piece;
            while !input.is_empty() || dec.has_pending_event() {
                let (used, ev) = dec.decode(input)?;
                input = &input[used..];
                match ev {
                    Some(UploadEvent::Blob { id, .. }) => out.push((id.to_string(), vec![])),
                    Some(UploadEvent::Data(d)) => out.last_mut().unwrap().1.extend_from_slice(d),
                    Some(UploadEvent::End { .. }) => ends += 1,
                    Some(UploadEvent::Header(_)) | None => {}
                }
            }
        }
        dec.finish()?;
        assert_eq!(ends, out.len());
        Ok(out)
    }

    #[test]
    fn upload_round_trips_at_every_chunking() {
        let mut body = encode_upload_header(&[(id("a"), 3), (id("e"), 0), (id("b"), 2)]);
        body.extend(b"xyzhi");
        let want = vec![
            ("a".to_string(), b"xyz".to_vec()),
            ("e".to_string(), vec![]),
            ("b".to_string(), b"hi".to_vec()),
        ];
        for chunk in 1..=body.len() {
            assert_eq!(decode_upload(&body, chunk).unwrap(), want, "chunk {chunk}");
        }
        assert_eq!(decode_upload(b"[]\n", 1).unwrap(), vec![]);
    }

    #[test]
    fn malformed_uploads_are_errors() {
        let mut body = encode_upload_header(&[(id("a"), 3)]);
        body.extend(b"xy");
        assert!(matches!(
            decode_upload(&body, 7),
            Err(WireError::Truncated(_))
        ));
        body.extend(b"zz");
        assert!(matches!(
            decode_upload(&body, 7),
            Err(WireError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode_upload(b"[[\"a\",1]", 3),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(
            decode_upload(b"{}\n", 3),
            Err(WireError::BadHeader(_))
        ));
        assert!(matches!(
            decode_upload(b"[[\"../x\",1]]\nx", 3),
            Err(WireError::BadId(_))
        ));
        assert!(matches!(
            decode_upload(b"[[\"a\",0],[\"a\",0]]\n", 3),
            Err(WireError::DuplicateId(_))
        ));
        let long = vec![b' '; 2000];
        assert!(matches!(
            decode_upload(&long, 100),
            Err(WireError::HeaderTooLong { .. })
        ));
    }
}
