//! The HTTP API (server/README.md, "API"): routing, authentication, query validation, and the handlers
//! for listing, get (with ranges), put, flags, delete, `/stream` up and down, `/incoming`,
//! `/healthz` and `/metrics`.
//!
//! Handlers validate everything that comes in (ids and namespaces become newtypes before any
//! path is built) and answer errors as plain text saying what was wrong. Index calls and file
//! system work go through the blocking pool (but what the SQLite index answers from memory:
//! token owners and caught-up `since` cursors); blob bytes move in bounded chunks.
//!
//! Tokens come as `Bearer` or as Soledad's `Token base64(user:token)`; where Soledad's API
//! differs, the request's dialect decides the answer ([`crate::soledad`]).
//!
//! Status codes: 401 no/unknown token (with `WWW-Authenticate: Bearer`); 403 a path user that
//! is not the token's, an app token outside `/incoming`, a user token on `/incoming`; 400 bad
//! id, namespace, query parameter (unknown ones too), body or stream framing; 404 unknown
//! route or blob; 405 wrong method (with `Allow`); 406 unknown flag; 409 id exists; 413 over
//! `max_blob_size`; 410 a `since` cursor older than purged tombstones; 412 a put with
//! `if_absent_since=SEQ` of an id deleted after SEQ; 416 unsatisfiable or malformed `Range`
//! (with `Content-Range: bytes */N`); 507 over quota. `/stream` uploads answer 200 with a per-id status map.

pub(crate) use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
pub(crate) use std::sync::Arc;

pub(crate) use blobsync_shared::wire::{
    self, BlobDetail, CountResponse, Flag, NamespacesResponse, UploadDecoder, UploadEvent,
    UploadResponse, query,
};
pub(crate) use blobsync_shared::{BlobId, Namespace};
pub(crate) use bytes::Bytes;
pub(crate) use futures_util::StreamExt;
pub(crate) use http::header::{self, HeaderValue};
pub(crate) use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
pub(crate) use hyper::body::Incoming;

pub(crate) use crate::ServerState;
pub(crate) use crate::body::{self, Body, CHUNK};
pub(crate) use crate::index::{
    self, BlobRow, IndexError, ListQuery, Order, PendingPut, Principal, PutOutcome,
};
pub(crate) use crate::payload::{Location, Staged};
pub(crate) use crate::soledad::{self, Dialect, Scheme};
pub(crate) use params::{Query, parse_range};

mod blob;
mod incoming;
mod keys;
mod list;
mod params;
mod stream;

use blob::{delete, get, incoming, put, set_flags};
use list::list;
use stream::stream;

/// Largest body of a flags POST (four flag names fit many times over).
const MAX_FLAGS_BODY: usize = 4096;

/// A request failure: its status and a plain-text message for the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
    /// Seconds for `Retry-After` (429).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
            retry_after: None,
        }
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal server error: {e}"),
        )
    }

    fn into_response(self) -> Response<Body> {
        let mut r = text(self.status, format!("{}\n", self.msg));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body is not read: the connection cannot carry another request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::UnknownAfter(_) | IndexError::SinceAhead { .. } => {
                ApiError::bad(e.to_string())
            }
            IndexError::UnknownUser(_) => ApiError::not_found(e.to_string()),
            IndexError::Gone { .. } => ApiError::new(StatusCode::GONE, e.to_string()),
            e => ApiError::internal(e),
        }
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

fn text(status: StatusCode, s: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> ApiResult {
    let b = serde_json::to_vec(v).map_err(ApiError::internal)?;
    let mut r = Response::new(body::full(b));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Reads a request body's data, holding it to the minimum body rate: by `body_grace +
/// received / min_body_rate` after the body started, the next piece must have arrived, else
/// the request fails with 408. A client that stalls or trickles thus cannot hold a
/// connection slot for long, while a slow but moving upload is never cut off.
struct BodyReader {
    body: Incoming,
    start: tokio::time::Instant,
    received: u64,
    min_rate: u64,
    grace: std::time::Duration,
}

impl BodyReader {
    fn new(st: &ServerState, body: Incoming) -> Self {
        Self {
            body,
            start: tokio::time::Instant::now(),
            received: 0,
            min_rate: st.config().min_body_rate,
            grace: st.config().body_grace,
        }
    }

    /// The next data piece; None at the end of the body.
    async fn data(&mut self) -> Option<Result<Bytes, ApiError>> {
        loop {
            let frame = if self.min_rate == 0 {
                self.body.frame().await
            } else {
                let due =
                    std::time::Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
                let deadline = self.start + self.grace + due;
                match tokio::time::timeout_at(deadline, self.body.frame()).await {
                    Ok(f) => f,
                    Err(_) => {
                        return Some(Err(ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            format!(
                                "request body too slow: {} bytes in {} s, below this server's \
                                 minimum of {} bytes/s; send the body without pauses",
                                self.received,
                                self.start.elapsed().as_secs(),
                                self.min_rate
                            ),
                        )));
                    }
                }
            };
            match frame? {
                Err(e) => return Some(Err(ApiError::bad(format!("request body failed: {e}")))),
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        self.received += d.len() as u64;
                        return Some(Ok(d));
                    }
                    // Trailers: nothing to store.
                }
            }
        }
    }
}

/// Entry point for every request: routes, counts, and turns errors into plain-text answers.
/// Every answer names the server's instance ([`wire::INSTANCE_HEADER`]). `peer` is the
/// client's address, which the bad-token throttle keys on.
pub async fn handle(st: ServerState, peer: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let (label, result) = route(&st, peer, req).await;
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    resp.headers_mut()
        .insert(wire::INSTANCE_HEADER, st.inner.instance.clone());
    let status = resp.status().as_u16();
    st.inner.metrics.request(label, status);
    // Paths hold user names and ids, never tokens; query strings are left out.
    tracing::debug!(%method, %path, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

/// The metrics listener's only route: `GET /metrics` without a token (see
/// [`crate::run_metrics`]).
pub async fn handle_metrics(st: ServerState, req: Request<Incoming>) -> Response<Body> {
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => metrics(&st).await,
        _ => Err(ApiError::not_found(
            "this is the metrics listener: GET /metrics",
        )),
    }
    .unwrap_or_else(ApiError::into_response);
    resp.headers_mut()
        .insert(wire::INSTANCE_HEADER, st.inner.instance.clone());
    resp
}

async fn route(
    st: &ServerState,
    peer: IpAddr,
    req: Request<Incoming>,
) -> (&'static str, ApiResult) {
    let path = req.uri().path().to_owned();
    let mut segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Soledad's client lists at `/blobs/{user}/` and may stream to `/stream/{user}/`.
    if let ["blobs" | "stream", _, ""] = segs.as_slice() {
        segs.pop();
    }
    let method = req.method().clone();
    let label = match (segs.as_slice(), &method) {
        (["healthz"], _) => "healthz",
        (["metrics"], _) => "metrics",
        (["blobs", _], &Method::GET) => "list",
        (["blobs", _, _], &Method::GET | &Method::HEAD) => "get",
        (["blobs", _, _], &Method::PUT) => "put",
        (["blobs", _, _], &Method::POST) => "flags",
        (["blobs", _, _], &Method::DELETE) => "delete",
        (["stream", _], _) => "stream",
        (["incoming", _, _], _) => "incoming",
        (["keys", _, "incoming" | "storage"], _) => "keys",
        _ => "other",
    };
    let allowed: &[Method] = match segs.as_slice() {
        ["healthz"] | ["metrics"] | ["blobs", _] => &[Method::GET],
        ["blobs", _, _] => &[
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
        ],
        ["stream", _] => &[Method::POST],
        ["incoming", _, _] => &[Method::PUT],
        ["keys", _, "incoming" | "storage"] => &[Method::GET, Method::PUT],
        _ => {
            return (
                label,
                Err(ApiError::not_found(format!(
                    "no route {path}: use /blobs/{{user}}[/{{id}}], /stream/{{user}}, \
                     /incoming/{{user}}/{{id}}, /keys/{{user}}/incoming, /keys/{{user}}/storage, \
                     /healthz or /metrics"
                ))),
            );
        }
    };
    if !allowed.contains(&method) {
        let list: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        let mut r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}; use {}", list.join(", ")),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return (label, Ok(r));
    }
    if segs == ["healthz"] {
        return (label, Ok(text(StatusCode::OK, "ok\n")));
    }
    let mut dialect = Dialect::Blobsync;
    let mut req = req;
    let result = async {
        let (who, scheme) = authenticate(st, peer, &req).await?;
        dialect = Dialect::of(req.headers(), scheme);
        req.extensions_mut().insert(dialect);
        match segs.as_slice() {
            // Server-wide totals are the operator's, not any user's or app's.
            ["metrics"] => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "/metrics is not served to user or app tokens; the operator scrapes it on the \
                 server's --metrics-listen address (loopback by default)",
            )),
            ["incoming", user, id] => {
                let Principal::App(app, namespaces) = who else {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "only trusted-app tokens may deliver to /incoming; user tokens use /blobs",
                    ));
                };
                incoming(st, &app, &namespaces, user, id, req).await
            }
            ["keys", user, "incoming"] => incoming::keys(st, &who, user, req).await,
            ["keys", user, "storage"] => keys::storage(st, &who, user, req).await,
            [_, user, rest @ ..] => {
                match &who {
                    Principal::User(u) if u == user => {}
                    Principal::User(u) => {
                        return Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            format!("this token belongs to user {u:?}, not {user:?}"),
                        ));
                    }
                    Principal::App(a, _) => {
                        return Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            format!("app token {a:?} may only PUT to /incoming/{{user}}/{{id}}"),
                        ));
                    }
                }
                let user = user.to_string();
                match (segs[0], rest) {
                    ("blobs", []) => list(st, user, &req).await,
                    ("stream", []) => stream(st, user, req).await,
                    ("blobs", [id]) => {
                        let id = parse_id(id)?;
                        match method {
                            Method::GET | Method::HEAD => get(st, user, id, &req).await,
                            Method::PUT => put(st, user, id, req).await,
                            Method::POST => set_flags(st, user, id, req).await,
                            _ => delete(st, user, id, &req).await,
                        }
                    }
                    _ => Err(ApiError::not_found(format!("no route {path}"))),
                }
            }
            _ => Err(ApiError::not_found(format!("no route {path}"))),
        }
    }
    .await;
    // Soledad's client takes only 200 as success (see soledad.rs).
    let result = result.map(|mut r| {
        if dialect == Dialect::Soledad && r.status() == StatusCode::CREATED {
            *r.status_mut() = StatusCode::OK;
            r.headers_mut().remove("x-blobsync-seq");
        }
        r
    });
    (label, result)
}

async fn authenticate(
    st: &ServerState,
    peer: IpAddr,
    req: &Request<Incoming>,
) -> Result<(Principal, Scheme), ApiError> {
    if let Some(wait) = st.inner.throttle.blocked(peer) {
        let secs = wait.as_secs() + 1;
        return Err(ApiError {
            retry_after: Some(secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests with bad tokens from {peer}; try again in {secs} s \
                     with a valid token"
                ),
            )
        });
    }
    let principal = check_token(st, req).await;
    if let Err(e) = &principal
        && e.status == StatusCode::UNAUTHORIZED
        && req.headers().contains_key(header::AUTHORIZATION)
    {
        st.inner.throttle.failed(peer);
    }
    principal
}

async fn check_token(
    st: &ServerState,
    req: &Request<Incoming>,
) -> Result<(Principal, Scheme), ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing Authorization header: send \"Authorization: Bearer <token>\" \
             (blobsync-server user add NAME prints a token)",
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| unauthorized("Authorization header is not ASCII"))?;
    let (token, scheme, claimed) = if let Some(t) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        (t.trim().to_owned(), Scheme::Bearer, None)
    } else if let Some(c) = v.strip_prefix("Token ") {
        let (user, token) = soledad::parse_token_credentials(c).map_err(unauthorized)?;
        (token, Scheme::Token, Some(user))
    } else {
        return Err(unauthorized(
            "Authorization header must be \"Bearer <token>\" (or Soledad's \
             \"Token base64(user:token)\")",
        ));
    };
    let hash = crate::token::hash(&token);
    let who = st
        .index()
        .principal(hash.to_vec())
        .await?
        .ok_or_else(|| unauthorized("unknown or revoked token"))?;
    // Soledad's credentials name the user; it must be the token's (the route then checks it
    // against the path's user).
    if let Some(claimed) = claimed {
        let (Principal::User(owner) | Principal::App(owner, _)) = &who;
        if *owner != claimed {
            return Err(unauthorized(&format!(
                "the Token credentials name {claimed:?}, but the token is not theirs"
            )));
        }
    }
    Ok((who, scheme))
}

fn parse_id(s: &str) -> Result<BlobId, ApiError> {
    BlobId::new(s).map_err(|e| ApiError::bad(e.to_string()))
}

// ---- /metrics ------------------------------------------------------------------------------

async fn metrics(st: &ServerState) -> ApiResult {
    let (blobs, bytes) = st.index().totals().await?;
    let mut r = text(StatusCode::OK, st.inner.metrics.render(blobs, bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

fn json_bytes(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
