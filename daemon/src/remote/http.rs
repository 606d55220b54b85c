//! `HttpRemote`: the `blobsync-server` HTTP API (server/README.md) over a pooled keep-alive hyper
//! client, with rustls (webpki roots plus an optional CA file) for `https`, and a bearer
//! token read from the token file (re-read after a 401/403, so fixing the file resumes the
//! queue without a restart).
//!
//! Bodies stream both ways; this module never buffers a blob. It never sees keys or
//! plaintext.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blobsync_shared::wire::{
    self, BlobDetail, ChangesResponse, DownloadRequest, Flag, UploadResponse,
};
use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{ByteStream, GetResponse, Remote, RemoteError, RemoteListFilter};

pub(super) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Longest JSON answer read into memory (a listing of ~1M ids).
const MAX_JSON: usize = 256 << 20;
/// Longest error body kept for a message.
const MAX_ERROR_BODY: usize = 4096;
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait without progress: no request body taken and no response head. A big upload
/// may take as long as it keeps moving (a 1 GB blob at a 5 MB/s limit takes 200 s).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per host.
const POOL_IDLE: usize = 16;
/// Changes per listing page.
const PAGE: u32 = 5000;

/// Settings of an HTTP remote.
#[derive(Debug, Clone)]
pub struct HttpRemoteConfig {
    /// Base URL without trailing slash.
    pub base: String,
    /// The user on the server.
    pub user: String,
    /// Bearer token file (one line); `None`: no `Authorization` header.
    pub token_file: Option<PathBuf>,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
}

/// A `blobsync-server` remote.
#[derive(Clone)]
pub struct HttpRemote {
    cfg: Arc<HttpRemoteConfig>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    token: Arc<Mutex<Option<String>>>,
    /// Send Soledad's `Token base64(user:token)` instead of `Bearer` ([`super::soledad`]).
    soledad_auth: bool,
    /// See [`STALL_TIMEOUT`].
    stall: Duration,
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, RemoteError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        let f = std::fs::File::open(ca).map_err(|e| {
            RemoteError::Config(format!("cannot read ca_file {}: {e}", ca.display()))
        })?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut io::BufReader::new(f)) {
            let cert = cert.map_err(|e| {
                RemoteError::Config(format!("ca_file {} is not PEM: {e}", ca.display()))
            })?;
            roots.add(cert).map_err(|e| {
                RemoteError::Config(format!("ca_file {}: bad certificate: {e}", ca.display()))
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(RemoteError::Config(format!(
                "ca_file {} holds no PEM certificate",
                ca.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RemoteError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_token(path: &Path) -> Result<String, RemoteError> {
    let t = std::fs::read_to_string(path).map_err(|e| {
        RemoteError::Config(format!("cannot read token_file {}: {e}", path.display()))
    })?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        return Err(RemoteError::Config(format!(
            "token_file {} is empty",
            path.display()
        )));
    }
    Ok(t)
}

pub(super) fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn streamed(s: ByteStream) -> Body {
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

fn transport(e: impl std::error::Error) -> RemoteError {
    // The legacy client's Display is terse ("client error (Connect)"): add the causes.
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    RemoteError::Transport(msg)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The body as a stream of bytes; a connection closed before the announced length ends
/// the stream with an error (a transport fault).
pub(super) fn body_stream(body: hyper::body::Incoming) -> ByteStream {
    Box::pin(BodyStream::new(body).filter_map(|f| async move {
        match f {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(io::Error::new(io::ErrorKind::ConnectionReset, e))),
        }
    }))
}

impl HttpRemote {
    /// A client for `cfg` (reads the CA file and checks the token file now).
    pub fn new(cfg: HttpRemoteConfig) -> Result<Self, RemoteError> {
        let tls = tls_config(cfg.ca_file.as_deref())?;
        let token = cfg.token_file.as_deref().map(read_token).transpose()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(POOL_IDLE)
            .build(https);
        Ok(Self {
            cfg: Arc::new(cfg),
            client,
            token: Arc::new(Mutex::new(token)),
            soledad_auth: false,
            stall: STALL_TIMEOUT,
        })
    }

    /// The same client, giving up on a request after `stall` without progress (tests).
    #[doc(hidden)]
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The same client, authenticating with Soledad's `Token base64(user:token)`.
    pub(super) fn with_soledad_auth(mut self) -> Self {
        self.soledad_auth = true;
        self
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut u = format!("{}{}", self.cfg.base, path);
        for (i, (k, v)) in query.iter().enumerate() {
            u.push(if i == 0 { '?' } else { '&' });
            u.push_str(k);
            u.push('=');
            // Values are ids, namespaces, numbers and flag names: all URL-safe already.
            u.push_str(v);
        }
        u
    }

    async fn token(&self) -> Result<Option<String>, RemoteError> {
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(Some(t));
        }
        let Some(path) = self.cfg.token_file.clone() else {
            return Ok(None);
        };
        let t = tokio::task::spawn_blocking(move || read_token(&path))
            .await
            .map_err(|e| RemoteError::Io(io::Error::other(e)))??;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(Some(t))
    }

    pub(super) async fn send(
        &self,
        method: Method,
        url: String,
        headers: &[(header::HeaderName, String)],
        body: Body,
    ) -> Result<http::Response<hyper::body::Incoming>, RemoteError> {
        // Ask for blobsync's own dialect explicitly (the server answers `Token` clients
        // Soledad's way otherwise).
        let mut req = Request::builder().method(method).uri(&url).header(
            wire::CLIENT_HEADER,
            concat!("blobsyncd/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(t) = self.token().await? {
            let auth = if self.soledad_auth {
                super::soledad::token_credentials(&self.cfg.user, &t)
            } else {
                format!("Bearer {t}")
            };
            req = req.header(header::AUTHORIZATION, auth);
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        // The clock restarts each time the connection takes a piece of the body, so only a
        // request that stops moving times out, not an upload that is merely long.
        let start = tokio::time::Instant::now();
        let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stamp = moved.clone();
        let body = body
            .map_frame(move |f| {
                let ms = start.elapsed().as_millis() as u64;
                stamp.store(ms, std::sync::atomic::Ordering::Relaxed);
                f
            })
            .boxed_unsync();
        let req = req
            .body(body)
            .map_err(|e| RemoteError::Config(format!("bad request for {url}: {e}")))?;
        let answer = self.client.request(req);
        tokio::pin!(answer);
        let resp = loop {
            let last = moved.load(std::sync::atomic::Ordering::Relaxed);
            let deadline = start + Duration::from_millis(last) + self.stall;
            tokio::select! {
                r = &mut answer => break r.map_err(transport)?,
                _ = tokio::time::sleep_until(deadline) => {
                    if moved.load(std::sync::atomic::Ordering::Relaxed) == last {
                        return Err(RemoteError::Transport(format!(
                            "no progress and no answer within {:?}",
                            self.stall
                        )));
                    }
                }
            }
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_from(resp).await)
    }

    async fn error_from(&self, resp: http::Response<hyper::body::Incoming>) -> RemoteError {
        let status = resp.status();
        let ra = retry_after(resp.headers());
        let msg = match super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
            Err(_) => String::new(),
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                // The token file may have been fixed meanwhile: read it again next time.
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                RemoteError::Unauthorized {
                    status: status.as_u16(),
                    message: msg,
                }
            }
            StatusCode::NOT_FOUND => RemoteError::NotFound,
            StatusCode::CONFLICT => RemoteError::Conflict,
            StatusCode::PRECONDITION_FAILED => RemoteError::DeletedAfter(msg),
            StatusCode::PAYLOAD_TOO_LARGE => RemoteError::TooLarge,
            StatusCode::INSUFFICIENT_STORAGE => RemoteError::QuotaExceeded,
            StatusCode::NOT_ACCEPTABLE => RemoteError::BadFlags(msg),
            StatusCode::RANGE_NOT_SATISFIABLE => RemoteError::RangeNotSatisfiable,
            StatusCode::GONE => RemoteError::CursorInvalid {
                status: 410,
                message: msg,
            },
            s => RemoteError::Http {
                status: s.as_u16(),
                message: msg,
                retry_after: ra,
            },
        }
    }

    pub(super) async fn json<T: serde::de::DeserializeOwned>(
        resp: http::Response<hyper::body::Incoming>,
    ) -> Result<T, RemoteError> {
        let body = super::collect_body(body_stream(resp.into_body()), MAX_JSON).await?;
        serde_json::from_slice(&body).map_err(|e| RemoteError::Protocol(format!("bad JSON: {e}")))
    }

    fn blobs_path(&self) -> String {
        format!("/blobs/{}", self.cfg.user)
    }

    fn blob_path(&self, id: &BlobId) -> String {
        format!("/blobs/{}/{}", self.cfg.user, id)
    }
}

impl Remote for HttpRemote {
    fn describe(&self) -> String {
        format!("{} as {}", self.cfg.base, self.cfg.user)
    }

    async fn changes(&self, ns: &Namespace, since: u64) -> Result<ChangesResponse, RemoteError> {
        let url = self.url(
            &self.blobs_path(),
            &[
                (wire::query::NAMESPACE, ns.to_string()),
                (wire::query::SINCE, since.to_string()),
                (wire::query::DETAIL, "1".into()),
                (wire::query::LIMIT, PAGE.to_string()),
            ],
        );
        match self.send(Method::GET, url, &[], empty()).await {
            Ok(resp) => Self::json(resp).await,
            Err(RemoteError::Http {
                status: 400,
                message,
                ..
            }) if since > 0 => Err(RemoteError::CursorInvalid {
                status: 400,
                message,
            }),
            Err(e) => Err(e),
        }
    }

    async fn identity(&self) -> Result<String, RemoteError> {
        // Every answer of the server carries its instance id; /healthz is the cheapest.
        let url = format!("{}/healthz", self.cfg.base);
        let resp = self.send(Method::GET, url, &[], empty()).await?;
        let instance = resp
            .headers()
            .get(wire::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
        Ok(super::identity_string(
            &self.cfg.base,
            &self.cfg.user,
            instance.as_deref(),
        ))
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>, RemoteError> {
        let url = self.url(
            &self.blobs_path(),
            &[(wire::query::NAMESPACES, "1".to_owned())],
        );
        let resp = self.send(Method::GET, url, &[], empty()).await?;
        let names: wire::NamespacesResponse = Self::json(resp).await?;
        Ok(names)
    }

    async fn list(
        &self,
        ns: &Namespace,
        f: &RemoteListFilter,
    ) -> Result<Vec<BlobDetail>, RemoteError> {
        let mut q = vec![
            (wire::query::NAMESPACE, ns.to_string()),
            (wire::query::DETAIL, "1".to_owned()),
        ];
        if let Some(flag) = f.flag {
            q.push((wire::query::FILTER_FLAG, flag.to_string()));
        }
        if let Some(a) = &f.after {
            q.push((wire::query::AFTER, a.to_string()));
        }
        if let Some(l) = f.limit {
            q.push((wire::query::LIMIT, l.to_string()));
        }
        if f.deleted {
            q.push((wire::query::DELETED, "1".to_owned()));
        }
        let resp = self
            .send(Method::GET, self.url(&self.blobs_path(), &q), &[], empty())
            .await?;
        Self::json(resp).await
    }

    async fn put(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<(), RemoteError> {
        let mut q = vec![(wire::query::NAMESPACE, ns.to_string())];
        if let Some(seq) = if_absent_since {
            q.push((wire::query::IF_ABSENT_SINCE, seq.to_string()));
        }
        let url = self.url(&self.blob_path(id), &q);
        let headers = [
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ];
        let resp = self
            .send(Method::PUT, url, &headers, streamed(body))
            .await?;
        // Drain the (small) answer so the connection goes back to the pool.
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
        Ok(())
    }

    async fn get(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Result<GetResponse, RemoteError> {
        let url = self.url(
            &self.blob_path(id),
            &[(wire::query::NAMESPACE, ns.to_string())],
        );
        let mut headers = Vec::new();
        if let Some(r) = &range {
            let v = if r.end == u64::MAX {
                format!("bytes={}-", r.start)
            } else if r.end > r.start {
                format!("bytes={}-{}", r.start, r.end - 1)
            } else {
                return Err(RemoteError::RangeNotSatisfiable);
            };
            headers.push((header::RANGE, v));
        }
        let resp = self.send(Method::GET, url, &headers, empty()).await?;
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .ok_or_else(|| RemoteError::Protocol("GET answer has no Content-Length".into()))?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        let (offset, total) = if partial {
            // Content-Range: bytes a-b/total
            let cr = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| RemoteError::Protocol("206 without Content-Range".into()))?;
            let parsed = cr.strip_prefix("bytes ").and_then(|rest| {
                let (span, total) = rest.split_once('/')?;
                let (a, _) = span.split_once('-')?;
                Some((a.parse::<u64>().ok()?, total.parse::<u64>().ok()?))
            });
            parsed.ok_or_else(|| RemoteError::Protocol(format!("bad Content-Range {cr:?}")))?
        } else {
            (0, len)
        };
        let mut body = body_stream(resp.into_body());
        let asked = range.as_ref().map_or(0, |r| r.start);
        let (offset, len) = match (offset == asked, partial) {
            (true, _) => (offset, len),
            // A server or proxy may ignore Range and send the whole blob (HTTP allows it):
            // skip to where we asked, rather than hand the decoder bytes from the start that it
            // would take for tampering.
            (false, false) if asked < len => {
                body = super::skip_bytes(body, asked);
                (asked, len - asked)
            }
            (false, false) => return Err(RemoteError::RangeNotSatisfiable),
            (false, true) => {
                return Err(RemoteError::Protocol(format!(
                    "asked for the bytes from {asked} on, the answer starts at byte {offset}"
                )));
            }
        };
        Ok(GetResponse {
            total,
            offset,
            len,
            body,
        })
    }

    async fn delete(
        &self,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<String>,
    ) -> Result<(), RemoteError> {
        let url = self.url(
            &self.blob_path(id),
            &[(wire::query::NAMESPACE, ns.to_string())],
        );
        let headers: Vec<(header::HeaderName, String)> = proof
            .map(|p| {
                (
                    header::HeaderName::from_static(wire::DELETE_PROOF_HEADER),
                    p,
                )
            })
            .into_iter()
            .collect();
        let resp = self.send(Method::DELETE, url, &headers, empty()).await?;
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
        Ok(())
    }

    async fn get_flags(&self, ns: &Namespace, id: &BlobId) -> Result<Vec<Flag>, RemoteError> {
        let url = self.url(
            &self.blob_path(id),
            &[
                (wire::query::NAMESPACE, ns.to_string()),
                (wire::query::ONLY_FLAGS, "1".into()),
            ],
        );
        let resp = self.send(Method::GET, url, &[], empty()).await?;
        Self::json(resp).await
    }

    async fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: &[Flag],
    ) -> Result<(), RemoteError> {
        let url = self.url(
            &self.blob_path(id),
            &[(wire::query::NAMESPACE, ns.to_string())],
        );
        let body = serde_json::to_vec(flags).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let headers = [(header::CONTENT_TYPE, "application/json".to_owned())];
        let resp = self.send(Method::POST, url, &headers, full(body)).await?;
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
        Ok(())
    }

    async fn put_batch(
        &self,
        ns: &Namespace,
        entries: &[(BlobId, u64)],
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<super::BatchOutcome, RemoteError> {
        let mut q = vec![
            (wire::query::NAMESPACE, ns.to_string()),
            (wire::query::DIRECTION, "upload".into()),
        ];
        if let Some(seq) = if_absent_since {
            q.push((wire::query::IF_ABSENT_SINCE, seq.to_string()));
        }
        let url = self.url(&format!("/stream/{}", self.cfg.user), &q);
        let head = wire::encode_upload_header(entries);
        let len = head.len() as u64 + entries.iter().map(|e| e.1).sum::<u64>();
        let whole: ByteStream = Box::pin(super::once_body(head).chain(body));
        let headers = [(header::CONTENT_LENGTH, len.to_string())];
        let resp = self
            .send(Method::POST, url, &headers, streamed(whole))
            .await?;
        let codes: UploadResponse = Self::json(resp).await?;
        Ok(codes
            .into_iter()
            .map(|(id, code)| (id, super::batch_status(code, if_absent_since)))
            .collect())
    }

    async fn incoming_recipient(&self) -> Result<Option<String>, RemoteError> {
        let url = self.url(&format!("/keys/{}/incoming", self.cfg.user), &[]);
        match self.send(Method::GET, url, &[], empty()).await {
            Ok(resp) => {
                let b = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await?;
                Ok(Some(String::from_utf8_lossy(&b).trim().to_owned()))
            }
            Err(RemoteError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn publish_incoming_recipient(&self, recipient: &str) -> Result<(), RemoteError> {
        let url = self.url(&format!("/keys/{}/incoming", self.cfg.user), &[]);
        let headers = [(header::CONTENT_TYPE, "text/plain".to_owned())];
        let resp = self
            .send(Method::PUT, url, &headers, full(recipient.to_owned()))
            .await?;
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
        Ok(())
    }

    async fn replace_external(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        age_sha256: &[u8; 32],
    ) -> Result<Option<u64>, RemoteError> {
        let q = [
            (wire::query::NAMESPACE, ns.to_string()),
            (wire::query::REPLACE_EXTERNAL, hex::encode(age_sha256)),
        ];
        let url = self.url(&self.blob_path(id), &q);
        let headers = [
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ];
        let resp = match self.send(Method::PUT, url, &headers, streamed(body)).await {
            Ok(r) => r,
            // The server's 412 on this route means "not that age file".
            Err(RemoteError::DeletedAfter(m)) => return Err(RemoteError::NotTheDelivery(m)),
            Err(e) => return Err(e),
        };
        let seq = resp
            .headers()
            .get("x-blobsync-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
        Ok(seq)
    }

    async fn get_batch(
        &self,
        ns: &Namespace,
        ids: &[BlobId],
        max_blob: u64,
    ) -> Result<super::BatchItems, RemoteError> {
        let url = self.url(
            &format!("/stream/{}", self.cfg.user),
            &[
                (wire::query::NAMESPACE, ns.to_string()),
                (wire::query::DIRECTION, "download".into()),
            ],
        );
        let req: &DownloadRequest = &ids.to_vec();
        let body = serde_json::to_vec(req).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let headers = [(header::CONTENT_TYPE, "application/json".to_owned())];
        let resp = self.send(Method::POST, url, &headers, full(body)).await?;
        Ok(super::batch_items(body_stream(resp.into_body()), max_blob))
    }
}
