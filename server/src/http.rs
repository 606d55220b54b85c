//! The HTTP API (server/README.md, "API"): routing, authentication, query validation, and the handlers
//! for listing, get (with ranges), put, flags, delete, `/stream` up and down, `/incoming`,
//! `/healthz` and `/metrics`.
//!
//! Handlers validate everything that comes in (ids and namespaces become newtypes before any
//! path is built) and answer errors as plain text saying what was wrong. Index calls and file
//! system work go through the blocking pool; blob bytes move in bounded chunks.
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

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek};
use std::net::IpAddr;
use std::sync::Arc;

use blobsync_shared::wire::{
    self, BlobDetail, CountResponse, Flag, NamespacesResponse, UploadDecoder, UploadEvent,
    UploadResponse, query,
};
use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{self, Body, CHUNK, TempBlob};
use crate::index::{
    self, BlobRow, IndexError, ListQuery, Order, PendingPut, Principal, PutOutcome,
};
use crate::soledad::{self, Dialect, Scheme};
use crate::{Inner, ServerState};

mod incoming;
mod keys;

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

/// Runs blocking index or file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    st: &ServerState,
    f: impl FnOnce(&Inner) -> Result<T, IndexError> + Send + 'static,
) -> Result<T, ApiError> {
    let inner = Arc::clone(&st.inner);
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
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
    let who = blocking(st, move |i| i.index.principal(&hash))
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

/// The query string, validated against the parameters a route knows.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(req: &Request<Incoming>, known: &[&str]) -> Result<Self, ApiError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in req.uri().query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad(format!(
                    "unknown query parameter {k:?} for this route; known: {}",
                    known.join(", ")
                )));
            }
            if out.iter().any(|(x, _)| *x == k) {
                return Err(ApiError::bad(format!("query parameter {k:?} given twice")));
            }
            out.push((k, v));
        }
        Ok(Self(out))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    fn flag(&self, k: &str) -> Result<bool, ApiError> {
        match self.get(k) {
            None => Ok(false),
            // Soledad's client sends Python's `True`/`False`.
            Some(v)
                if ["", "1", "true", "yes"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Ok(true)
            }
            Some(v)
                if ["0", "false", "no"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Ok(false)
            }
            Some(v) => Err(ApiError::bad(format!(
                "{k}={v:?} is not a boolean: use 1 or 0 (true/false)"
            ))),
        }
    }

    fn u64(&self, k: &str) -> Result<Option<u64>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad(format!("{k}={v:?} is not a non-negative integer")))
            })
            .transpose()
    }

    fn namespace(&self, default: &str) -> Result<Namespace, ApiError> {
        Namespace::new(self.get(query::NAMESPACE).unwrap_or(default))
            .map_err(|e| ApiError::bad(e.to_string()))
    }
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    // No '+' to space: `order_by=+date` means what it says.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad(format!("bad percent-encoding in query {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad("query is not UTF-8"))
}

// ---- /metrics ------------------------------------------------------------------------------

async fn metrics(st: &ServerState) -> ApiResult {
    let (blobs, bytes) = blocking(st, |i| i.index.totals()).await?;
    let mut r = text(StatusCode::OK, st.inner.metrics.render(blobs, bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

// ---- GET /blobs/{user} ---------------------------------------------------------------------

/// A `detail=1` listing entry: [`BlobDetail`] plus, on a tombstone (`deleted=1`), the delete
/// proof it was written with (`deleted` listings carry proofs as changes do).
#[derive(serde::Serialize)]
struct DetailOut {
    #[serde(flatten)]
    detail: BlobDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    proof: Option<String>,
}

fn detail_of(r: BlobRow) -> Result<DetailOut, ApiError> {
    Ok(DetailOut {
        proof: r.proof.filter(|_| r.deleted),
        detail: BlobDetail {
            id: BlobId::new(r.id).map_err(ApiError::internal)?,
            size: r.size,
            created: r.created,
            flags: index::bits_to_flags(r.flags),
            external: r.external,
        },
    })
}

/// Appends rows to a JSON array under construction (`first` tracks the separator).
fn push_rows(
    out: &mut Vec<u8>,
    rows: Vec<BlobRow>,
    detail: bool,
    first: &mut bool,
) -> Result<(), ApiError> {
    for r in rows {
        if !*first {
            out.push(b',');
        }
        *first = false;
        if detail {
            serde_json::to_writer(&mut *out, &detail_of(r)?).map_err(ApiError::internal)?;
        } else {
            serde_json::to_writer(&mut *out, &r.id).map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

async fn list(st: &ServerState, user: String, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(
        req,
        &[
            query::NAMESPACE,
            query::FILTER_FLAG,
            query::ORDER_BY,
            query::DELETED,
            query::ONLY_COUNT,
            query::DETAIL,
            query::SINCE,
            query::LIMIT,
            query::AFTER,
            query::NAMESPACES,
        ],
    )?;
    if q.flag(query::NAMESPACES)? {
        if let Some((k, _)) = q.0.iter().find(|(k, _)| k != query::NAMESPACES) {
            return Err(ApiError::bad(format!(
                "namespaces cannot be combined with {k}: it lists the user's namespaces \
                 (those with live blobs or tombstones) and takes no other parameter"
            )));
        }
        let names = blocking(st, move |i| i.index.namespaces(&user)).await?;
        let resp: NamespacesResponse = names;
        return json(StatusCode::OK, &resp);
    }
    let ns = q.namespace("default")?;
    let max_page = st.config().max_page;
    let chunk = st.config().list_chunk.max(1);
    let limit = match q.u64(query::LIMIT)? {
        Some(l) if l == 0 || l > max_page => {
            return Err(ApiError::bad(format!(
                "limit={l} is out of range: use 1 to {max_page}"
            )));
        }
        l => l,
    };
    let _ = q.flag(query::DETAIL)?;
    if let Some(since) = q.u64(query::SINCE)? {
        for k in [
            query::FILTER_FLAG,
            query::ORDER_BY,
            query::DELETED,
            query::ONLY_COUNT,
            query::AFTER,
        ] {
            if q.has(k) {
                return Err(ApiError::bad(format!(
                    "since cannot be combined with {k}: a since listing returns every change \
                     (puts and deletes) after the sequence number"
                )));
            }
        }
        return list_changes(st, user, ns, since, limit.unwrap_or(max_page), chunk).await;
    }
    let filter_flag = q
        .get(query::FILTER_FLAG)
        .map(|f| f.parse::<Flag>())
        .transpose()
        .map_err(|e| ApiError::bad(format!("filter_flag: {e}")))?;
    let order = match q.get(query::ORDER_BY) {
        None => Order::Id,
        Some("date" | "+date") => Order::DateAsc,
        Some("-date") => Order::DateDesc,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "order_by={v:?} is not known: use date, +date or -date"
            )));
        }
    };
    let after = q
        .get(query::AFTER)
        .map(|a| parse_id(a).map(String::from))
        .transpose()?;
    let want = limit.unwrap_or(u64::MAX);
    let mut lq = ListQuery {
        user,
        namespace: ns,
        deleted: q.flag(query::DELETED)?,
        filter_flag,
        order,
        after,
        after_date: None,
        limit: chunk.min(want),
    };
    if q.flag(query::ONLY_COUNT)? {
        let count = blocking(st, move |i| i.index.count(&lq)).await?;
        return json(StatusCode::OK, &CountResponse { count });
    }
    let detail = q.flag(query::DETAIL)?;
    // Every listing goes page by page (`list_chunk` rows per query), whatever its `limit`:
    // memory is one page per listing however many blobs the user has. The first page is
    // read here, so its errors (an unknown `after`) are still a status code.
    let first_q = lq.clone();
    let rows = blocking(st, move |i| i.index.list(&first_q)).await?;
    let mut sent = rows.len() as u64;
    let complete = (rows.len() as u64) < lq.limit || sent >= want;
    let mut out = Vec::with_capacity(rows.len() * 40 + 2);
    out.push(b'[');
    let mut first = true;
    let next_after = rows.last().map(|r| (r.id.clone(), (r.created, r.seq)));
    push_rows(&mut out, rows, detail, &mut first)?;
    if complete {
        out.push(b']');
        return Ok(json_bytes(body::full(out)));
    }
    let (tx, body) = body::channel();
    let st2 = st.clone();
    (lq.after, lq.after_date) = next_after.unzip();
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
        loop {
            lq.limit = chunk.min(want - sent);
            let page_q = lq.clone();
            let rows = match blocking(&st2, move |i| i.index.list(&page_q)).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.msg))).await;
                    return;
                }
            };
            sent += rows.len() as u64;
            let done = (rows.len() as u64) < lq.limit || sent >= want;
            (lq.after, lq.after_date) = rows
                .last()
                .map(|r| (r.id.clone(), (r.created, r.seq)))
                .unzip();
            let mut page = Vec::with_capacity(rows.len() * 40 + 1);
            if let Err(e) = push_rows(&mut page, rows, detail, &mut first) {
                let _ = tx.send(Err(std::io::Error::other(e.msg))).await;
                return;
            }
            if done {
                page.push(b']');
            }
            if tx.send(Ok(Bytes::from(page))).await.is_err() || done {
                crate::release_memory();
                return;
            }
        }
    });
    Ok(json_bytes(body))
}

fn json_bytes(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Writes a `since` listing ([`wire::ChangesResponse`]) page by page: each call reads at most
/// `chunk` changes and returns their JSON, the last call also the closing `more` and `seq`
/// (the cursor is known only at the end, hence the field order `changes`, `more`, `seq`).
/// Every page is bounded by `upto`, the user's sequence number read before the first, so
/// the pages form one consistent snapshot even while changes land (those come next time).
struct ChangesPager {
    user: String,
    ns: Namespace,
    after: u64,
    upto: u64,
    limit: u64,
    sent: u64,
    chunk: u64,
    first: bool,
}

impl ChangesPager {
    /// The next piece of the body, and whether it is the last.
    async fn next(&mut self, st: &ServerState) -> Result<(Vec<u8>, bool), ApiError> {
        let n = self.chunk.min(self.limit - self.sent);
        let (u, ns, after, upto) = (self.user.clone(), self.ns.clone(), self.after, self.upto);
        let page = blocking(st, move |i| i.index.changes_page(&u, &ns, after, upto, n)).await?;
        let mut out = Vec::with_capacity(page.len() * 120 + 48);
        if self.first {
            out.extend_from_slice(b"{\"changes\":[");
        }
        for (k, c) in page.iter().enumerate() {
            if !(self.first && k == 0) {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, c).map_err(ApiError::internal)?;
        }
        if !page.is_empty() {
            self.first = false;
        }
        self.sent += page.len() as u64;
        let full = page.len() as u64 == n;
        if let Some(last) = page.last() {
            self.after = last.seq;
        }
        drop(page);
        let mut more = false;
        if full && self.sent >= self.limit {
            let (u, ns, after) = (self.user.clone(), self.ns.clone(), self.after);
            more = !blocking(st, move |i| i.index.changes_page(&u, &ns, after, upto, 1))
                .await?
                .is_empty();
        } else if full {
            return Ok((out, false));
        }
        let seq = if more { self.after } else { self.upto };
        out.extend_from_slice(format!("],\"more\":{more},\"seq\":{seq}}}").as_bytes());
        Ok((out, true))
    }
}

/// `GET /blobs/{user}?since=S`, streamed (see [`ChangesPager`]). The cursor check and the
/// first page happen before the answer starts, so their errors are still status codes.
async fn list_changes(
    st: &ServerState,
    user: String,
    ns: Namespace,
    since: u64,
    limit: u64,
    chunk: u64,
) -> ApiResult {
    let u2 = user.clone();
    let upto = blocking(st, move |i| i.index.changes_head(&u2, since)).await?;
    let mut pager = ChangesPager {
        user,
        ns,
        after: since,
        upto,
        limit,
        sent: 0,
        chunk,
        first: true,
    };
    let (head, done) = pager.next(st).await?;
    if done {
        return Ok(json_bytes(body::full(head)));
    }
    let (tx, body) = body::channel();
    let st2 = st.clone();
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        loop {
            match pager.next(&st2).await {
                Ok((b, done)) => {
                    if tx.send(Ok(Bytes::from(b))).await.is_err() || done {
                        crate::release_memory();
                        return;
                    }
                }
                Err(e) => {
                    // A cut-off body, never a silently short listing.
                    let _ = tx.send(Err(std::io::Error::other(e.msg))).await;
                    return;
                }
            }
        }
    });
    Ok(json_bytes(body))
}

// ---- GET /blobs/{user}/{id} ------------------------------------------------------------------

/// Parses a single `bytes=` range against `size`: Ok(None) for no header, Err for a range
/// that cannot be served (416).
fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, String> {
    let Some(h) = h else { return Ok(None) };
    let h = h
        .to_str()
        .map_err(|_| "Range header is not ASCII".to_string())?;
    let spec = h
        .strip_prefix("bytes=")
        .ok_or_else(|| format!("Range {h:?} is not in bytes: use bytes=a-b"))?;
    if spec.contains(',') {
        return Err(format!(
            "Range {h:?} has several ranges; ask for one at a time"
        ));
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| format!("Range {h:?} is malformed: use bytes=a-b, bytes=a- or bytes=-n"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("Range {h:?} is malformed: use bytes=a-b, bytes=a- or bytes=-n"))
    };
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err(format!("Range {h:?} names no bytes")),
        (true, false) => {
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Err(format!("Range {h:?} is empty or the blob is empty"));
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, true) => (num(a)?, size.saturating_sub(1)),
        (false, false) => {
            let (s, e) = (num(a)?, num(b)?);
            if e < s {
                return Err(format!("Range {h:?} ends before it starts"));
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(format!(
            "Range {h:?} starts at or past the end of the {size}-byte blob"
        ));
    }
    Ok(Some((start, end)))
}

async fn get(st: &ServerState, user: String, id: BlobId, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req, &[query::NAMESPACE, query::ONLY_FLAGS])?;
    let ns = q.namespace("default")?;
    let only_flags = q.flag(query::ONLY_FLAGS)?;
    let missing = || ApiError::not_found(format!("no blob {id} in namespace {ns} of {user}"));
    let (u2, n2, i2) = (user.clone(), ns.clone(), id.clone());
    let row = blocking(st, move |i| i.index.lookup(&u2, &n2, &i2))
        .await?
        .filter(|r| !r.deleted)
        .ok_or_else(missing)?;
    if only_flags {
        return json(StatusCode::OK, &index::bits_to_flags(row.flags));
    }
    let range = match parse_range(req.headers().get(header::RANGE), row.size) {
        Ok(r) => r,
        Err(msg) => {
            let mut r = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, msg).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", row.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let (start, end) = range.unwrap_or((0, row.size.saturating_sub(1)));
    let len = if row.size == 0 { 0 } else { end - start + 1 };
    let path = st.inner.layout.blob_path(&user, &ns, &id);
    // Soledad's client refuses a download without it.
    let tag = soledad::tag_header(path.clone(), row.size).await;
    let head = req.method() == Method::HEAD;
    let file = match open_at(path, start).await {
        Ok(f) => f,
        // Deleted between the index lookup and the open.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    // HEAD: the same headers (size, ranges) without reading the payload.
    let mut r = Response::new(if head {
        body::empty()
    } else {
        file_body(st, file, len)
    });
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(tag) = tag {
        h.insert("tag", tag);
    }
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", row.size)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

async fn open_at(path: std::path::PathBuf, start: u64) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(path)?;
        f.seek(std::io::SeekFrom::Start(start))?;
        Ok(f)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Streams `len` bytes of `file` (already positioned) in [`CHUNK`]s from a blocking thread.
fn file_body(st: &ServerState, file: std::fs::File, len: u64) -> Body {
    let (tx, body) = body::channel();
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        let mut file = file;
        while left > 0 {
            let mut buf = vec![0u8; (left.min(CHUNK as u64)) as usize];
            if let Err(e) = file.read_exact(&mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            left -= buf.len() as u64;
            st.inner.metrics.add_out(buf.len() as u64);
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // client went away
            }
        }
    });
    body
}

// ---- PUT /blobs/{user}/{id}, PUT /incoming/{user}/{id} -----------------------------------

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("blob of {size} bytes is over this server's limit of {max} bytes"),
    )
}

fn over_quota(user: &str) -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "storing this blob would put user {user:?} over their quota; delete blobs or ask for more"
        ),
    )
}

/// The `if_absent_since` refusal: the id was deleted at `seq`, after the client's `since`.
fn deleted_after(id: &BlobId, ns: &Namespace, seq: u64, since: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        format!(
            "blob {id} in namespace {ns} was deleted at seq {seq}, after {since}; \
             not recreating it"
        ),
    )
}

/// Parses `if_absent_since` (a sequence number), saying what was wrong.
fn if_absent_since(q: &Query) -> Result<Option<u64>, ApiError> {
    q.get(query::IF_ABSENT_SINCE)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad(format!(
                    "{}={v:?} is not a sequence number: give a non-negative integer \
                     (the seq of a listing, as in since=)",
                    query::IF_ABSENT_SINCE
                ))
            })
        })
        .transpose()
}

fn exists(id: &BlobId, ns: &Namespace) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("blob {id} already exists in namespace {ns}; blobs are immutable: delete it first"),
    )
}

async fn put(st: &ServerState, user: String, id: BlobId, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(
        &req,
        &[
            query::NAMESPACE,
            query::IF_ABSENT_SINCE,
            query::REPLACE_EXTERNAL,
        ],
    )?;
    let ns = q.namespace("default")?;
    if let Some(h) = q.get(query::REPLACE_EXTERNAL) {
        let h = incoming::parse_sha256(h)?;
        return incoming::replace_external(st, user, ns, id, &h, req).await;
    }
    let since = if_absent_since(&q)?;
    store_one(st, user, ns, id, req, false, since).await
}

async fn incoming(
    st: &ServerState,
    app: &str,
    allowed: &[Namespace],
    user: &str,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(&req, &[query::NAMESPACE])?;
    let ns = q.namespace("MX")?;
    if !allowed.contains(&ns) {
        let names: Vec<&str> = allowed.iter().map(|n| n.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "app {app:?} may not deliver into namespace {ns}; it may deliver into: {} \
                 (the operator sets this with blobsync-server app add NAME --namespace NS)",
                names.join(", ")
            ),
        ));
    }
    if Namespace::new(user).is_err() {
        return Err(ApiError::bad(format!(
            "user name {user:?} is invalid: use 1 to 128 characters of A-Z a-z 0-9 _ -"
        )));
    }
    let id = parse_id(id)?;
    let u = user.to_string();
    if !blocking(st, move |i| i.index.user_exists(&u)).await? {
        return Err(ApiError::not_found(format!("no user named {user:?}")));
    }
    store_one(st, user.to_string(), ns, id, req, true, None).await
}

async fn store_one(
    st: &ServerState,
    user: String,
    ns: Namespace,
    id: BlobId,
    req: Request<Incoming>,
    external: bool,
    since: Option<u64>,
) -> ApiResult {
    let max = st.config().max_blob_size;
    let default_quota = st.config().default_quota;
    let declared = content_length(&req);
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_large(n, max));
    }
    // Early answers save the client the upload; the commit below re-checks under the lock.
    let (u2, n2, i2) = (user.clone(), ns.clone(), id.clone());
    let (row, usage) = blocking(st, move |i| {
        Ok((i.index.lookup(&u2, &n2, &i2)?, i.index.usage(&u2)?))
    })
    .await?;
    if row.as_ref().is_some_and(|r| !r.deleted) {
        return Err(exists(&id, &ns));
    }
    if let (Some(seq), Some(since)) = (index::deleted_after(row.as_ref(), since), since) {
        // Answer only once the body is in (read and dropped, up to the size limit): a client
        // still sending when we answer and close sees a broken pipe instead of this 412, and
        // could not tell "deleted, drop it" from a network fault.
        let mut body = BodyReader::new(st, req.into_body());
        while let Some(Ok(_)) = body.data().await {
            if body.received > max {
                break;
            }
        }
        return Err(deleted_after(&id, &ns, seq, since));
    }
    // Room left under the quota: checked up front from Content-Length and again as bytes
    // arrive, so an upload without (or with a false) Content-Length cannot fill the disk
    // before the commit's check refuses it. The commit re-checks under the writer lock.
    let room = usage.and_then(|(used, own)| own.or(default_quota).map(|q| q.saturating_sub(used)));
    if let (Some(room), Some(n)) = (room, declared)
        && n > room
    {
        return Err(over_quota(&user));
    }
    let mut w = TempBlob::new(st.inner.layout.temp_path(&user, &ns, &id));
    let mut body = BodyReader::new(st, req.into_body());
    let mut age = external.then(incoming::AgeCheck::default);
    while let Some(data) = body.data().await {
        let data = data?;
        if let Some(a) = age.as_mut() {
            a.update(&data);
        }
        let total = w.len() + data.len() as u64;
        if total > max {
            return Err(too_large(total, max));
        }
        if room.is_some_and(|r| total > r) {
            // Dropping `w` removes the temp file.
            return Err(over_quota(&user));
        }
        w.write(&data).await.map_err(ApiError::internal)?;
        st.inner.metrics.add_in(data.len() as u64);
    }
    let size = w.len();
    // An /incoming body must be an age file; `w` is dropped (and removed) on refusal.
    let age_sha256 = age.map(|a| a.finish(&user)).transpose()?;
    let temp = w.finish(true).await.map_err(ApiError::internal)?;
    let item = PendingPut {
        id: id.clone(),
        size,
        temp,
        external,
        age_sha256,
        flags: if external {
            index::flag_bit(Flag::Pending)
        } else {
            0
        },
        if_absent_since: since,
    };
    let u2 = user.clone();
    let n2 = ns.clone();
    let out = blocking(st, move |i| {
        i.index
            .commit_puts(&u2, &n2, vec![item], default_quota, &i.layout)
    })
    .await?;
    match out.first() {
        Some(PutOutcome::Created(seq)) => {
            let mut r = text(StatusCode::CREATED, format!("stored {id} ({size} bytes)\n"));
            r.headers_mut()
                .insert("x-blobsync-seq", HeaderValue::from(*seq));
            Ok(r)
        }
        Some(PutOutcome::Exists) => Err(exists(&id, &ns)),
        Some(PutOutcome::OverQuota) => Err(over_quota(&user)),
        Some(PutOutcome::DeletedAfter(seq)) => {
            Err(deleted_after(&id, &ns, *seq, since.unwrap_or(0)))
        }
        None => Err(ApiError::internal("commit returned no outcome")),
    }
}

// ---- POST /blobs/{user}/{id} (flags) ------------------------------------------------------

async fn read_small_body(
    st: &ServerState,
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let mut body = BodyReader::new(st, req.into_body());
    let mut out = Vec::new();
    while let Some(d) = body.data().await {
        let d = d?;
        if out.len() + d.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is over {limit} bytes"),
            ));
        }
        out.extend_from_slice(&d);
    }
    Ok(Bytes::from(out))
}

async fn set_flags(
    st: &ServerState,
    user: String,
    id: BlobId,
    req: Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(&req, &[query::NAMESPACE])?;
    let ns = q.namespace("default")?;
    let b = read_small_body(st, req, MAX_FLAGS_BODY).await?;
    let names: Vec<String> = serde_json::from_slice(&b).map_err(|e| {
        ApiError::bad(format!(
            "body must be a JSON list of flag names like [\"PROCESSED\"]: {e}"
        ))
    })?;
    let flags = names
        .iter()
        .map(|n| n.parse::<Flag>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::new(StatusCode::NOT_ACCEPTABLE, e.to_string()))?;
    let bits = index::flags_to_bits(&flags);
    let (u2, n2, i2) = (user.clone(), ns.clone(), id.clone());
    if !blocking(st, move |i| i.index.set_flags(&u2, &n2, &i2, bits)).await? {
        return Err(ApiError::not_found(format!(
            "no blob {id} in namespace {ns} of {user}"
        )));
    }
    json(StatusCode::OK, &index::bits_to_flags(bits))
}

// ---- DELETE /blobs/{user}/{id} -------------------------------------------------------------

/// The optional [`wire::DELETE_PROOF_HEADER`]: exactly 64 lowercase hex characters. The
/// server keeps it with the tombstone and cannot check it (it has no key).
fn delete_proof(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(wire::DELETE_PROOF_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad(format!(
            "{} must be exactly 64 lowercase hex characters (an HMAC-SHA256); \
             send it as the daemon computes it, or leave the header out",
            wire::DELETE_PROOF_HEADER
        ))
    };
    let v = v.to_str().map_err(|_| bad())?;
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(Some(v.to_owned()))
}

async fn delete(st: &ServerState, user: String, id: BlobId, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(req, &[query::NAMESPACE])?;
    let ns = q.namespace("default")?;
    let proof = delete_proof(req)?;
    let (u2, n2, i2) = (user.clone(), ns.clone(), id.clone());
    if !blocking(st, move |i| {
        i.index.delete(&u2, &n2, &i2, proof.as_deref(), &i.layout)
    })
    .await?
    {
        return Err(ApiError::not_found(format!(
            "no blob {id} in namespace {ns} of {user}"
        )));
    }
    Ok(text(StatusCode::OK, format!("deleted {id}\n")))
}

// ---- POST /stream/{user} ---------------------------------------------------------------

async fn stream(st: &ServerState, user: String, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(
        &req,
        &[query::NAMESPACE, query::DIRECTION, query::IF_ABSENT_SINCE],
    )?;
    let ns = q.namespace("default")?;
    let since = if_absent_since(&q)?;
    match q.get(query::DIRECTION) {
        Some("upload") => stream_up(st, user, ns, req, since).await,
        Some("download") if since.is_some() => Err(ApiError::bad(format!(
            "{} applies to uploads only (direction=upload)",
            query::IF_ABSENT_SINCE
        ))),
        Some("download") => stream_down(st, user, ns, req).await,
        Some(d) => Err(ApiError::bad(format!(
            "direction={d:?} is not known: use upload or download"
        ))),
        None => Err(ApiError::bad(
            "missing direction: use direction=upload or direction=download",
        )),
    }
}

/// A blob of a stream upload that reached its end and is being fsynced.
type Finished = Result<(usize, BlobId, u64, std::path::PathBuf), std::io::Error>;

async fn stream_up(
    st: &ServerState,
    user: String,
    ns: Namespace,
    req: Request<Incoming>,
    since: Option<u64>,
) -> ApiResult {
    let cfg = st.config().clone();
    let mut dec = UploadDecoder::new(cfg.max_stream_header);
    let mut status: UploadResponse = BTreeMap::new();
    let mut skip: HashSet<BlobId> = HashSet::new();
    // (header position, writer) of the blob being received; None writer = discarding.
    let mut current: Option<(usize, Option<TempBlob>)> = None;
    let mut position = 0usize;
    let mut fsyncs: tokio::task::JoinSet<Finished> = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(
        cfg.stream_parallel_writes.max(1),
    ));
    let mut body = BodyReader::new(st, req.into_body());
    // Room left under the quota (None: unlimited), and bytes accepted against it so far.
    let mut room: Option<u64> = None;
    let mut accepted = 0u64;

    let result: Result<(), ApiError> = async {
        let mut eof = false;
        while !eof {
            let data = match body.data().await {
                None => {
                    eof = true;
                    Bytes::new()
                }
                Some(d) => d?,
            };
            let mut input = &data[..];
            while !input.is_empty() || dec.has_pending_event() {
                let (used, ev) = dec
                    .decode(input)
                    .map_err(|e| ApiError::bad(format!("malformed stream body: {e}")))?;
                input = &input[used..];
                match ev {
                    None => {}
                    Some(UploadEvent::Header(entries)) => {
                        if entries.len() as u64 > cfg.max_page {
                            return Err(ApiError::bad(format!(
                                "stream of {} blobs is over this server's limit of {} per request",
                                entries.len(),
                                cfg.max_page
                            )));
                        }
                        let ids: Vec<BlobId> = entries.iter().map(|(i, _)| i.clone()).collect();
                        let (u2, n2) = (user.clone(), ns.clone());
                        // With `if_absent_since`, tombstones matter too (412 per entry).
                        let (rows, usage) = blocking(st, move |i| {
                            let rows = if since.is_some() {
                                i.index.lookup_many_any(&u2, &n2, &ids)?
                            } else {
                                i.index.lookup_many(&u2, &n2, &ids)?
                            };
                            Ok((rows, i.index.usage(&u2)?))
                        })
                        .await?;
                        room = usage.and_then(|(used, own)| {
                            own.or(cfg.default_quota).map(|q| q.saturating_sub(used))
                        });
                        // Up front from the header's sizes: blobs that cannot fit are 507 and
                        // never written (the commit re-checks the rest under the lock).
                        let mut planned = 0u64;
                        for ((id, size), row) in entries.into_iter().zip(rows) {
                            if row.as_ref().is_some_and(|r| !r.deleted) {
                                status.insert(id.clone(), 409);
                                skip.insert(id);
                            } else if index::deleted_after(row.as_ref(), since).is_some() {
                                status.insert(id.clone(), 412);
                                skip.insert(id);
                            } else if size > cfg.max_blob_size {
                                status.insert(id.clone(), 413);
                                skip.insert(id);
                            } else if room.is_some_and(|r| planned + size > r) {
                                status.insert(id.clone(), 507);
                                skip.insert(id);
                            } else {
                                planned += size;
                            }
                        }
                    }
                    Some(UploadEvent::Blob { id, .. }) => {
                        let writer = (!skip.contains(&id))
                            .then(|| TempBlob::new(st.inner.layout.temp_path(&user, &ns, &id)));
                        current = Some((position, writer));
                        position += 1;
                    }
                    Some(UploadEvent::Data(d)) => {
                        st.inner.metrics.add_in(d.len() as u64);
                        if let Some((_, Some(w))) = current.as_mut() {
                            // Enforced again as bytes arrive, whatever the header said.
                            accepted += d.len() as u64;
                            if room.is_some_and(|r| accepted > r) {
                                return Err(over_quota(&user));
                            }
                            w.write(d).await.map_err(ApiError::internal)?;
                        }
                    }
                    Some(UploadEvent::End { id }) => {
                        if let Some((pos, Some(w))) = current.take() {
                            let permit = permits
                                .clone()
                                .acquire_owned()
                                .await
                                .map_err(ApiError::internal)?;
                            fsyncs.spawn(async move {
                                let _permit = permit;
                                let size = w.len();
                                let path = w.finish(false).await?;
                                Ok((pos, id, size, path))
                            });
                        }
                    }
                }
            }
        }
        dec.finish()
            .map_err(|e| ApiError::bad(format!("malformed stream body: {e}")))
    }
    .await;
    // Whatever happened, wait for every fsync so no temp file is written after we decide.
    let mut done: Vec<(usize, BlobId, u64, std::path::PathBuf)> = Vec::new();
    let mut write_err: Option<std::io::Error> = None;
    while let Some(r) = fsyncs.join_next().await {
        match r {
            Ok(Ok(x)) => done.push(x),
            Ok(Err(e)) => write_err = Some(e),
            Err(e) => write_err = Some(std::io::Error::other(e)),
        }
    }
    drop(current);
    let fail = match (result, write_err) {
        (Err(e), _) => Some(e),
        (Ok(()), Some(e)) => Some(ApiError::internal(e)),
        (Ok(()), None) => None,
    };
    if let Some(e) = fail {
        // Nothing partial is stored: the finished temp files are removed, none was indexed.
        let paths: Vec<_> = done.into_iter().map(|d| d.3).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
        return Err(e);
    }
    // One durability barrier for the whole batch instead of an fsync per blob.
    let paths: Vec<_> = done.iter().map(|d| d.3.clone()).collect();
    let root = st.inner.layout.root().to_path_buf();
    let synced = tokio::task::spawn_blocking(move || crate::layout::sync_files(&root, &paths))
        .await
        .map_err(ApiError::internal)
        .and_then(|r| r.map_err(ApiError::internal));
    if let Err(e) = synced {
        let paths: Vec<_> = done.into_iter().map(|d| d.3).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
        return Err(e);
    }
    done.sort_by_key(|d| d.0);
    let items: Vec<PendingPut> = done
        .into_iter()
        .map(|(_, id, size, temp)| PendingPut {
            id,
            size,
            temp,
            external: false,
            age_sha256: None,
            flags: 0,
            if_absent_since: since,
        })
        .collect();
    let ids: Vec<BlobId> = items.iter().map(|i| i.id.clone()).collect();
    let default_quota = cfg.default_quota;
    let (u2, n2) = (user.clone(), ns.clone());
    let outcomes = blocking(st, move |i| {
        i.index
            .commit_puts(&u2, &n2, items, default_quota, &i.layout)
    })
    .await?;
    for (id, out) in ids.into_iter().zip(outcomes) {
        let code = match out {
            PutOutcome::Created(_) => 201,
            PutOutcome::Exists => 409,
            PutOutcome::OverQuota => 507,
            PutOutcome::DeletedAfter(_) => 412,
        };
        status.insert(id, code);
    }
    json(StatusCode::OK, &status)
}

async fn stream_down(
    st: &ServerState,
    user: String,
    ns: Namespace,
    req: Request<Incoming>,
) -> ApiResult {
    let cfg = st.config().clone();
    let req_dialect = req.extensions().get::<Dialect>().copied();
    let b = read_small_body(st, req, cfg.max_stream_header).await?;
    let ids: Vec<String> = serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad(format!("body must be a JSON list of blob ids: {e}")))?;
    if ids.len() as u64 > cfg.max_page {
        return Err(ApiError::bad(format!(
            "{} ids is over this server's limit of {} per request",
            ids.len(),
            cfg.max_page
        )));
    }
    let ids = ids
        .into_iter()
        .map(|i| parse_id(&i))
        .collect::<Result<Vec<_>, _>>()?;
    let (u2, n2, ids2) = (user.clone(), ns.clone(), ids.clone());
    let rows = blocking(st, move |i| i.index.lookup_many(&u2, &n2, &ids2)).await?;
    if req_dialect == Some(Dialect::Soledad) {
        return soledad_down(st, &user, &ns, ids, rows);
    }
    let (tx, body) = body::channel();
    let st2 = st.clone();
    // One blocking thread produces the whole response: small blobs are coalesced into CHUNK
    // messages, large ones go out in CHUNK pieces; the bounded channel applies backpressure.
    tokio::task::spawn_blocking(move || {
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        let send = |buf: &mut Vec<u8>| -> bool {
            let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(CHUNK)));
            tx.blocking_send(Ok(chunk)).is_ok()
        };
        for (id, row) in ids.iter().zip(rows) {
            let file = row.and_then(|r| {
                let path = st2.inner.layout.blob_path(&user, &ns, id);
                std::fs::File::open(path).ok().map(|f| (f, r.size))
            });
            let Some((mut file, size)) = file else {
                buf.extend_from_slice(&wire::encode_frame_header(id, None));
                continue;
            };
            buf.extend_from_slice(&wire::encode_frame_header(id, Some(size)));
            let mut left = size;
            while left > 0 {
                if buf.len() >= CHUNK && !send(&mut buf) {
                    return;
                }
                let room = (CHUNK.saturating_sub(buf.len()).max(8192) as u64).min(left) as usize;
                let at = buf.len();
                buf.resize(at + room, 0);
                if let Err(e) = file.read_exact(&mut buf[at..]) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                left -= room as u64;
                st2.inner.metrics.add_out(room as u64);
            }
            if buf.len() >= CHUNK && !send(&mut buf) {
                return;
            }
        }
        if !buf.is_empty() {
            send(&mut buf);
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// A `/stream` download in Soledad's framing ([`soledad::download_body`]). The framing has no
/// way to say "missing", so a missing id fails the whole request before a byte is sent.
fn soledad_down(
    st: &ServerState,
    user: &str,
    ns: &Namespace,
    ids: Vec<BlobId>,
    rows: Vec<Option<BlobRow>>,
) -> ApiResult {
    let missing: Vec<&str> = ids
        .iter()
        .zip(&rows)
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| i.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::not_found(format!(
            "no blob {} in namespace {ns} of {user}; Soledad's stream framing cannot skip one",
            missing.join(", ")
        )));
    }
    let mut files = Vec::with_capacity(ids.len());
    for (id, row) in ids.into_iter().zip(rows) {
        let row = row.expect("checked above");
        if row.size > soledad::MAX_FRAMED_SIZE {
            return Err(ApiError::bad(format!(
                "blob {id} ({} bytes) is too large for Soledad's stream framing (at most {} \
                 bytes); GET it on its own",
                row.size,
                soledad::MAX_FRAMED_SIZE
            )));
        }
        let path = st.inner.layout.blob_path(user, ns, &id);
        files.push((id, path, row));
    }
    let mut r = Response::new(soledad::download_body(st, files));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: &str, size: u64) -> Result<Option<(u64, u64)>, String> {
        parse_range(Some(&HeaderValue::from_str(h).unwrap()), size)
    }

    #[test]
    fn ranges_at_the_edges() {
        assert_eq!(range("bytes=0-0", 10), Ok(Some((0, 0))));
        assert_eq!(range("bytes=0-", 10), Ok(Some((0, 9))));
        assert_eq!(range("bytes=9-", 10), Ok(Some((9, 9))));
        assert_eq!(range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(range("bytes=-30", 10), Ok(Some((0, 9))));
        assert!(range("bytes=10-", 10).is_err());
        assert!(range("bytes=3-2", 10).is_err());
        assert!(range("bytes=-0", 10).is_err());
        assert!(range("bytes=0-", 0).is_err());
        assert!(range("bytes=0-1,3-4", 10).is_err());
        assert!(range("items=0-1", 10).is_err());
        assert!(range("bytes=a-b", 10).is_err());
        assert_eq!(parse_range(None, 10), Ok(None));
    }

    #[test]
    fn percent_decoding_keeps_plus() {
        assert_eq!(percent_decode("+date").unwrap(), "+date");
        assert_eq!(percent_decode("%2Bdate").unwrap(), "+date");
        assert!(percent_decode("%zz").is_err());
    }
}
