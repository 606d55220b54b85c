//! What the server does differently for genuine Soledad clients (leap.soledad 0.10
//! `BlobManager`): the `Token base64(user:token)` credentials, the dialect a request is
//! answered in, the `Tag` header of a GET and Soledad's `/stream` download framing.
//!
//! The dialect: a request carrying [`wire::CLIENT_HEADER`] (blobsyncd sends it on every
//! request) or a `Bearer` token is answered in blobsync's own dialect (201 + sequence number on
//! a put, blobsync framing on `/stream` downloads), so daemons that predate the header keep
//! working; a `Token` request without the header is a Soledad client and gets 200 on a put and
//! Soledad's framing. Everything else (listings, flags, deletes, errors) is the same for both.

use base64::Engine;
use blobsync_shared::wire;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue};

use crate::ServerState;
use crate::body::{self, Body};
use crate::index::BlobRow;
use crate::payload::{self, Location, PayloadStore};

/// How a request is answered where blobsync and Soledad differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// blobsyncd and other clients of blobsync's own API.
    Blobsync,
    /// A genuine Soledad client.
    Soledad,
}

impl Dialect {
    /// The dialect of a request authenticated with `scheme` (see the module docs).
    pub fn of(headers: &HeaderMap, scheme: Scheme) -> Self {
        if scheme == Scheme::Token && !headers.contains_key(wire::CLIENT_HEADER) {
            Dialect::Soledad
        } else {
            Dialect::Blobsync
        }
    }
}

/// The `Authorization` scheme a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer <token>`.
    Bearer,
    /// Soledad's `Token base64(user:token)`.
    Token,
}

/// The user and token of a `Token` credential (the part after `Token `), or why it is
/// malformed.
pub fn parse_token_credentials(b64: &str) -> Result<(String, String), &'static str> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "the Token credentials are not base64; send \"Token base64(user:token)\"")?;
    let raw = String::from_utf8(raw).map_err(|_| "the Token credentials are not UTF-8")?;
    let (user, token) = raw
        .split_once(':')
        .ok_or("the Token credentials must be base64 of \"user:token\"")?;
    if user.is_empty() || token.is_empty() {
        return Err("the Token credentials name no user or no token");
    }
    Ok((user.to_owned(), token.to_owned()))
}

/// Soledad's tag of a stored blob: the urlsafe base64 of its last 16 bytes (the AES-GCM tag
/// of a Soledad blob; for other blobs just their last bytes, or all of a shorter one).
pub fn tag_of(tail: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(&tail[tail.len().saturating_sub(16)..])
}

/// The `Tag` header value for the blob at `loc` of `size` bytes.
pub async fn tag_header(
    payloads: &dyn PayloadStore,
    loc: &Location,
    size: u64,
) -> std::io::Result<HeaderValue> {
    let n = size.min(16);
    let tail = payload::collect(payloads.open(loc, size - n, n).await?).await?;
    HeaderValue::from_str(&tag_of(&tail)).map_err(std::io::Error::other)
}

/// Largest blob Soledad's download framing can announce (8 hex digits).
pub const MAX_FRAMED_SIZE: u64 = u32::MAX as u64;

/// The body of a `/stream` download in Soledad's framing: per blob, `%08x` size, the urlsafe
/// base64 tag, a space, then the bytes. Every present blob must be in `files`, in order.
///
/// Each frame header goes out as its own HTTP chunk and no chunk spans two blobs: Soledad's
/// client splits its buffer on the first space with `buf.split(' ')` and crashes when the
/// blob bytes that came with the header contain a space too (Soledad's own server writes the
/// header in separate chunks, which is why this never shows there).
pub fn download_body(st: &ServerState, files: Vec<(Location, BlobRow)>) -> Body {
    let (tx, body) = body::channel();
    let st = st.clone();
    tokio::spawn(async move {
        for (loc, row) in files {
            let res = async {
                let tag = tag_header(st.payloads(), &loc, row.size).await?;
                let head = format!("{:08x}{} ", row.size, tag.to_str().unwrap_or(""));
                if tx.send(Ok(Bytes::from(head))).await.is_err() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                let mut s = st.payloads().open(&loc, 0, row.size).await?;
                while let Some(b) = s.next().await {
                    let b = b?;
                    st.inner.metrics.add_out(b.len() as u64);
                    if tx.send(Ok(b)).await.is_err() {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
                Ok::<(), std::io::Error>(())
            }
            .await;
            if let Err(e) = res {
                // Cut the body off: the client sees a broken download, never a short blob.
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    });
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_credentials() {
        let b = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        assert_eq!(
            parse_token_credentials(&b).unwrap(),
            ("alice".into(), "s3cr:et".into())
        );
        assert!(parse_token_credentials("!!").is_err());
        let b = base64::engine::general_purpose::STANDARD.encode("alice");
        assert!(parse_token_credentials(&b).is_err());
        let b = base64::engine::general_purpose::STANDARD.encode(":tok");
        assert!(parse_token_credentials(&b).is_err());
    }

    #[test]
    fn tags_are_the_last_16_bytes() {
        let data: Vec<u8> = (0u8..40).collect();
        let want = base64::engine::general_purpose::URL_SAFE.encode(&data[24..]);
        assert_eq!(tag_of(&data), want);
        assert_eq!(tag_of(b"abc"), "YWJj");
    }
}
