//! The `Remote` trait: everything the engine asks of a blob server — incremental and full
//! listings, streamed put, ranged streamed get, delete, flags and `/stream` batches — with
//! three implementations, [`http::HttpRemote`] (a `blobsync-server`), [`soledad::SoledadRemote`]
//! (a genuine Soledad server) and [`dir::DirRemote`] (the same layout in a local folder), plus
//! [`faulty::FaultyRemote`], a wrapper that injects failures for tests.
//!
//! Remotes move opaque stored bytes: they never see keys or plaintext, and never touch the
//! store.

pub mod dir;
pub mod faulty;
pub mod http;
pub mod soledad;

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use blobsync_shared::wire::{BlobDetail, ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use futures_util::Stream;

/// A body of bytes, streamed; an `Err` item means the transfer broke (a transport fault).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// One blob of a batch download ([`Remote::get_batch`]).
#[derive(Debug)]
pub enum BatchItem {
    /// The blob's stored bytes (blob format v1, not yet verified).
    Blob {
        /// Its id.
        id: BlobId,
        /// Its bytes as the remote stores them.
        stored: Vec<u8>,
    },
    /// The remote has no such blob.
    Missing {
        /// Its id.
        id: BlobId,
    },
}

/// The blobs of a batch download, in the remote's order; an error ends it.
pub type BatchItems = Pin<Box<dyn Stream<Item = Result<BatchItem, RemoteError>> + Send>>;

/// Decodes a `/stream` download body (blobsync's framing, `wire::FrameDecoder`) into blobs:
/// the one place the frames are read.
pub fn batch_items(body: ByteStream, max_blob: u64) -> BatchItems {
    use blobsync_shared::wire::{FrameDecoder, FrameEvent};
    use futures_util::StreamExt;

    struct Reader {
        body: ByteStream,
        dec: FrameDecoder,
        current: Option<(BlobId, Vec<u8>)>,
        ready: std::collections::VecDeque<BatchItem>,
        done: bool,
    }
    impl Reader {
        fn feed(&mut self, mut input: &[u8], max_blob: u64) -> Result<(), RemoteError> {
            let bad = |e: String| RemoteError::Protocol(format!("batch download: {e}"));
            while !input.is_empty() || self.dec.has_pending_event() {
                let (used, ev) = self.dec.decode(input).map_err(|e| bad(e.to_string()))?;
                input = &input[used..];
                match ev {
                    Some(FrameEvent::Blob { id, size }) => {
                        if size > max_blob {
                            return Err(bad(format!(
                                "blob {id} is {size} bytes, more than asked for"
                            )));
                        }
                        self.current = Some((id, Vec::with_capacity(size as usize)));
                    }
                    Some(FrameEvent::Data(d)) => {
                        if let Some((_, buf)) = self.current.as_mut() {
                            buf.extend_from_slice(d);
                        }
                    }
                    Some(FrameEvent::End { .. }) => {
                        if let Some((id, stored)) = self.current.take() {
                            self.ready.push_back(BatchItem::Blob { id, stored });
                        }
                    }
                    Some(FrameEvent::Missing { id }) => {
                        self.ready.push_back(BatchItem::Missing { id })
                    }
                    None => {}
                }
            }
            Ok(())
        }
    }
    let reader = Reader {
        body,
        dec: FrameDecoder::new(),
        current: None,
        ready: Default::default(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        reader,
        move |mut r| async move {
            loop {
                if let Some(item) = r.ready.pop_front() {
                    return Some((Ok(item), r));
                }
                if r.done {
                    return None;
                }
                let failed = match r.body.next().await {
                    Some(Ok(chunk)) => r.feed(&chunk, max_blob).err(),
                    Some(Err(e)) => Some(RemoteError::Transport(format!("batch download: {e}"))),
                    None => {
                        r.done = true;
                        r.dec
                            .finish()
                            .err()
                            .map(|e| RemoteError::Protocol(format!("batch download: {e}")))
                    }
                };
                if let Some(e) = failed {
                    r.done = true;
                    r.ready.clear();
                    return Some((Err(e), r));
                }
            }
        },
    ))
}

/// Each blob's outcome in a batch upload ([`Remote::put_batch`]).
pub type BatchOutcome = std::collections::BTreeMap<BlobId, Result<(), RemoteError>>;

/// A blob's outcome from the HTTP status a `/stream` upload answered for it: the same errors
/// a single PUT gives. `since` is the request's `if_absent_since`, for the 412 message.
pub fn batch_status(code: u16, since: Option<u64>) -> Result<(), RemoteError> {
    match code {
        200..=299 => Ok(()),
        409 => Err(RemoteError::Conflict),
        412 => Err(RemoteError::DeletedAfter(format!(
            "HTTP 412 in a batch: deleted after seq {}",
            since.unwrap_or(0)
        ))),
        413 => Err(RemoteError::TooLarge),
        507 => Err(RemoteError::QuotaExceeded),
        status => Err(RemoteError::Http {
            status,
            message: "the batch upload's answer for this blob".into(),
            retry_after: None,
        }),
    }
}

/// A (possibly ranged) download.
pub struct GetResponse {
    /// The full stored size of the blob.
    pub total: u64,
    /// Offset of the first byte of `body` in the stored blob.
    pub offset: u64,
    /// Bytes `body` will yield if not cut short.
    pub len: u64,
    /// The bytes.
    pub body: ByteStream,
}

/// Filters of a remote id listing (`ListRemote`).
#[derive(Debug, Clone, Default)]
pub struct RemoteListFilter {
    /// Only blobs with this flag.
    pub flag: Option<Flag>,
    /// Page cursor: ids after this one.
    pub after: Option<BlobId>,
    /// Page size.
    pub limit: Option<u32>,
    /// List tombstones instead of live blobs.
    pub deleted: bool,
}

/// Errors of the remote layer. The engine retries every failed transfer on the schedule
/// (`retry_delay`) except a blob that fails verification (`InvalidBlob`); the variants say
/// what the status line and the alarms show, and `is_unreachable`/`is_unauthorized` mark
/// the remote's health.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Connecting or talking to the server failed (refused, reset, timeout, body cut short).
    #[error("remote unreachable: {0}")]
    Transport(String),
    /// Local file I/O of the remote failed (DirRemote) or a body broke.
    #[error("remote i/o: {0}")]
    Io(#[from] io::Error),
    /// 401/403: the token is missing, wrong, or for another user.
    #[error("remote refused the credentials (HTTP {status}): {message}; check token_file and user")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// 404.
    #[error("not found on the remote")]
    NotFound,
    /// 409: the id exists on the server.
    #[error("the remote already has a blob with this id (HTTP 409)")]
    Conflict,
    /// 413: over the server's max blob size.
    #[error("the remote refused the blob as too large (HTTP 413)")]
    TooLarge,
    /// 507: over quota.
    #[error("the remote is over quota (HTTP 507)")]
    QuotaExceeded,
    /// 406: unknown flag.
    #[error("the remote refused the flags (HTTP 406): {0}")]
    BadFlags(String),
    /// 410 or 400 on `since`: the cursor is unusable; do a full listing.
    #[error("the listing cursor is no longer valid (HTTP {status}): {message}")]
    CursorInvalid {
        /// 410 or 400.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// 412 on a put with `if_absent_since`: the id was deleted on the remote after that
    /// sequence number, so storing it would resurrect a blob another device deleted.
    #[error("the remote refused to recreate a blob deleted after our first attempt: {0}")]
    DeletedAfter(String),
    /// 416.
    #[error("range not satisfiable (HTTP 416)")]
    RangeNotSatisfiable,
    /// 412 on an adoption (`replace_external`): the stored copy is no longer that age file
    /// (another device adopted it first, or an earlier attempt of ours got through).
    #[error("the remote's copy is not the delivery we adopted: {0}")]
    NotTheDelivery(String),
    /// Any other HTTP status.
    #[error("remote answered HTTP {status}: {message}")]
    Http {
        /// The status.
        status: u16,
        /// The server's message (truncated).
        message: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// The answer did not parse.
    #[error("remote answered something unexpected: {0}")]
    Protocol(String),
    /// The remote is misconfigured (bad URL, CA file, token file).
    #[error("remote setup: {0}")]
    Config(String),
}

impl RemoteError {
    /// 401/403.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, RemoteError::Unauthorized { .. })
    }

    /// The server could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Transport(_) | RemoteError::Io(_))
            || matches!(self, RemoteError::Http { status, .. } if matches!(status, 502..=504))
    }

    /// How long the server asked us to wait (429/503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RemoteError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A blob server, as the engine sees it. Generic (not `dyn`) so methods are plain `async fn`.
pub trait Remote: Send + Sync + 'static {
    /// Human description (`http://host:port as alice`, `file:///path`).
    fn describe(&self) -> String;

    /// Changes of `ns` after `since` (one page; continue while `more`). `since = 0` is the
    /// full listing: every live blob plus tombstones.
    fn changes(
        &self,
        ns: &Namespace,
        since: u64,
    ) -> impl Future<Output = Result<ChangesResponse, RemoteError>> + Send;

    /// Every namespace of the user holding a live blob or a tombstone. The engine asks on
    /// each full listing, so a device learns of namespaces other devices created.
    fn namespaces(&self) -> impl Future<Output = Result<Vec<Namespace>, RemoteError>> + Send;

    /// Live blobs (or tombstones) with details, one page.
    fn list(
        &self,
        ns: &Namespace,
        filter: &RemoteListFilter,
    ) -> impl Future<Output = Result<Vec<BlobDetail>, RemoteError>> + Send;

    /// Stores `len` bytes from `body` as a new blob; `Conflict` if the id exists.
    ///
    /// `if_absent_since: Some(seq)` makes the put conditional (the retry of an upload that was
    /// attempted before): `DeletedAfter` when the id holds a tombstone whose delete has a
    /// sequence number above `seq`, so a retry never recreates a blob deleted meanwhile.
    fn put(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// The stored bytes, or the byte `range` of them.
    fn get(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> impl Future<Output = Result<GetResponse, RemoteError>> + Send;

    /// Deletes a blob (leaves a tombstone); `NotFound` if it is not there. `proof` is this
    /// device's delete proof (`blobsync_shared::tombstone`), kept with the tombstone so the
    /// user's other devices can tell our deletion from an invented one.
    fn delete(
        &self,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<String>,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// Who the remote is: its URL, the user, and the server instance (a random id created
    /// with the server's data, `-` where the remote has none). The engine compares it with
    /// the one it synced with before: a different answer means cursors and sequence numbers
    /// learnt from the old one mean nothing here.
    fn identity(&self) -> impl Future<Output = Result<String, RemoteError>> + Send;

    /// The blob's remote flags.
    fn get_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
    ) -> impl Future<Output = Result<Vec<Flag>, RemoteError>> + Send;

    /// Replaces the blob's remote flags.
    fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: &[Flag],
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// Uploads many blobs in one request: `body` holds their bytes back to back, in the
    /// order and sizes of `entries`. Returns each blob's outcome, as [`Remote::put`] would
    /// have returned it (`Conflict`, `DeletedAfter`, `TooLarge`, ...); the outer error is the
    /// request's. `if_absent_since` applies [`Remote::put`]'s rule to every entry.
    fn put_batch(
        &self,
        ns: &Namespace,
        entries: &[(BlobId, u64)],
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> impl Future<Output = Result<BatchOutcome, RemoteError>> + Send;

    /// Downloads many blobs in one request: each blob's stored bytes (or that the remote has
    /// none), as they arrive. A blob announced at more than `max_blob` bytes ends the stream
    /// with an error: the caller holds each one in memory.
    fn get_batch(
        &self,
        ns: &Namespace,
        ids: &[BlobId],
        max_blob: u64,
    ) -> impl Future<Output = Result<BatchItems, RemoteError>> + Send;

    // ---- incoming box (docs/incoming.md); remotes without one keep the defaults.

    /// The user's published incoming recipient (`age1...`), `None` if there is none.
    fn incoming_recipient(
        &self,
    ) -> impl Future<Output = Result<Option<String>, RemoteError>> + Send {
        async { Ok(None) }
    }

    /// Publishes the user's incoming recipient.
    fn publish_incoming_recipient(
        &self,
        recipient: &str,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send {
        let _ = recipient;
        async { Ok(()) }
    }

    /// Adopts a delivery: replaces the stored age file whose SHA-256 is `age_sha256` with
    /// `len` bytes of `body` (our format-v1 copy), keeping its flags and `external` mark.
    /// `NotTheDelivery` (412) when the stored copy is not that file; `NotFound` when there is
    /// no blob. Returns the new sequence number when the remote says it.
    fn replace_external(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        age_sha256: &[u8; 32],
    ) -> impl Future<Output = Result<Option<u64>, RemoteError>> + Send {
        let _ = (ns, id, len, body, age_sha256);
        async {
            Err(RemoteError::Config(
                "this remote has no incoming box: it cannot adopt deliveries".into(),
            ))
        }
    }

    /// True when the remote has no incremental listing: the engine then lists in full every
    /// cycle (and never keeps a cursor's promise it cannot check).
    fn full_listings_only(&self) -> bool {
        false
    }

    /// True when a tombstone without a delete proof counts as a deletion. Only a remote that
    /// cannot keep proofs says so ([`soledad::SoledadRemote`]: Soledad's `deleted` listing),
    /// which weakens the guarantee that only the user's own devices delete; the mass-deletion
    /// guard still holds. `blobctl status` says so in the remote's description.
    fn tombstones_without_proof_delete(&self) -> bool {
        false
    }
}

/// A body that yields one buffer.
/// An instance id as a remote reported it, if it is one: a hostile server must not smuggle
/// control characters or megabytes into logs and the store through it.
pub fn clean_instance(raw: &str) -> Option<&str> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(raw)
}

/// Builds the identity string of [`Remote::identity`].
pub fn identity_string(url: &str, user: &str, instance: Option<&str>) -> String {
    format!(
        "{url} user={user} instance={}",
        instance.and_then(clean_instance).unwrap_or("-")
    )
}

/// Drops the first `skip` bytes of a body.
pub(crate) fn skip_bytes(body: ByteStream, skip: u64) -> ByteStream {
    let mut left = skip;
    Box::pin(futures_util::StreamExt::filter_map(body, move |chunk| {
        let out = match chunk {
            Ok(c) if left >= c.len() as u64 => {
                left -= c.len() as u64;
                None
            }
            Ok(c) => {
                let c = c.slice(left as usize..);
                left = 0;
                Some(Ok(c))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    }))
}

pub fn once_body(bytes: impl Into<Bytes>) -> ByteStream {
    Box::pin(futures_util::stream::once(std::future::ready(Ok(
        bytes.into()
    ))))
}

/// Reads a whole (small) body into memory, at most `max` bytes.
pub async fn collect_body(mut body: ByteStream, max: usize) -> Result<Vec<u8>, RemoteError> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max {
            return Err(RemoteError::Protocol(format!(
                "answer longer than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use blobsync_shared::wire::encode_frame_header;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn skipping_drops_exactly_the_prefix() {
        let parts: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defg")),
            Ok(Bytes::from_static(b"h")),
        ];
        for (skip, want) in [(0, "abcdefgh"), (3, "defgh"), (5, "fgh"), (8, "")] {
            let body: ByteStream = Box::pin(futures_util::stream::iter(
                parts
                    .iter()
                    .map(|p| Ok(p.as_ref().unwrap().clone()))
                    .collect::<Vec<_>>(),
            ));
            let got = collect_body(skip_bytes(body, skip), 100).await.unwrap();
            assert_eq!(got, want.as_bytes(), "skip {skip}");
        }
    }

    fn id(s: &str) -> BlobId {
        BlobId::new(s).unwrap()
    }

    /// A body cut into `chunk`-byte pieces, so frames span chunks.
    fn body(bytes: Vec<u8>, chunk: usize) -> ByteStream {
        let parts: Vec<io::Result<Bytes>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(parts))
    }

    async fn items(bytes: Vec<u8>, chunk: usize, max: u64) -> Vec<Result<BatchItem, RemoteError>> {
        batch_items(body(bytes, chunk), max).collect().await
    }

    #[tokio::test]
    async fn frames_become_blobs_whatever_the_chunking() {
        let mut wire = encode_frame_header(&id("a"), Some(5));
        wire.extend_from_slice(b"hello");
        wire.extend(encode_frame_header(&id("gone"), None));
        wire.extend(encode_frame_header(&id("b"), Some(0)));
        for chunk in [1, 3, 7, wire.len()] {
            let got = items(wire.clone(), chunk, 5).await;
            assert_eq!(got.len(), 3, "chunk {chunk}: {got:?}");
            assert!(
                matches!(&got[0], Ok(BatchItem::Blob { id: i, stored }) if i.as_str() == "a" && stored == b"hello")
            );
            assert!(matches!(&got[1], Ok(BatchItem::Missing { id: i }) if i.as_str() == "gone"));
            assert!(
                matches!(&got[2], Ok(BatchItem::Blob { id: i, stored }) if i.as_str() == "b" && stored.is_empty())
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_or_cut_body_ends_with_an_error() {
        let mut wire = encode_frame_header(&id("a"), Some(5));
        wire.extend_from_slice(b"hello");
        let got = items(wire.clone(), 4, 4).await;
        assert_eq!(got.len(), 1);
        let e = got[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("more than asked for"), "{e}");

        wire.truncate(wire.len() - 2);
        let got = items(wire, 4, 5).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(matches!(got[0], Err(RemoteError::Protocol(_))), "{got:?}");
    }
}
