//! Shared helpers of the server's integration tests: an in-process server on a temp dir and
//! `127.0.0.1:0`, and a real hyper client to drive it.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use blobsync_server::{ServerConfig, ServerState, token};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
}

/// fs+sqlite: the bytes a small blob keeps inside the index of `data` (read-only, so also
/// while a server runs or after it stopped), if any.
pub fn inline_payload(data: &std::path::Path, user: &str, ns: &str, id: &str) -> Option<Vec<u8>> {
    let c = rusqlite::Connection::open_with_flags(
        data.join(blobsync_server::index::INDEX_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    rusqlite::OptionalExtension::optional(c.query_row(
        "SELECT data FROM inline_payloads WHERE user = ?1 AND namespace = ?2 AND id = ?3",
        [user, ns, id],
        |r| r.get(0),
    ))
    .unwrap()
}

pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn client() -> Client<HttpConnector, ReqBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The real PostgreSQL and Garage (the tests crate's harness, shared as a file).
#[path = "../../../tests/src/engines.rs"]
pub mod engines;

/// Which backend pair a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Files + SQLite in a temp data dir.
    FsSqlite,
    /// A throwaway Garage bucket + PostgreSQL cluster.
    S3Postgres,
}

thread_local! {
    /// The backend `TestServer::start*` uses on this thread (the `both_backends!` macro sets
    /// it; `#[tokio::test]` runs the body on the test's thread).
    static BACKEND: std::cell::Cell<Backend> = const { std::cell::Cell::new(Backend::FsSqlite) };
}

/// Makes `TestServer::start*` on this thread use `b`.
pub fn use_backend(b: Backend) {
    BACKEND.with(|c| c.set(b));
}

/// Runs each test body twice, as `NAME::fs_sqlite` and `NAME::s3_postgres` (the latter skips
/// loudly without the engines, and fails without them under `CI`).
#[macro_export]
macro_rules! both_backends {
    ($( $(#[doc = $doc:literal])* #[tokio::test] async fn $name:ident() $body:block )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn test_body() $body
                #[tokio::test]
                async fn fs_sqlite() {
                    $crate::common::use_backend($crate::common::Backend::FsSqlite);
                    test_body().await
                }
                #[tokio::test]
                async fn s3_postgres() {
                    if !$crate::common::engines::available(concat!(stringify!($name), "::s3_postgres")) {
                        return;
                    }
                    $crate::common::use_backend($crate::common::Backend::S3Postgres);
                    test_body().await
                }
            }
        )*
    };
}

/// The `s3+postgres` settings of a set of engines.
pub fn scale_out(e: &engines::Engines) -> blobsync_server::backend::ScaleOut {
    blobsync_server::backend::ScaleOut {
        s3: blobsync_server::payload::S3Config {
            bucket: e.garage.bucket.clone(),
            endpoint: Some(e.garage.endpoint.clone()),
            region: e.garage.region.clone(),
            access_key_id: e.garage.key_id.clone(),
            secret_access_key: e.garage.secret.clone(),
        },
        database_url: e.database_url.clone(),
        pool: 8,
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: ServerState,
    pub cancel: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
    /// s3+postgres: the engines, stopped when the server is dropped (before `dir` goes).
    pub engines: Option<engines::Engines>,
    pub dir: tempfile::TempDir,
    pub client: Client<HttpConnector, ReqBody>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), f).await
    }

    /// A server on the data of an earlier one (see [`TestServer::into_dir`]).
    pub async fn start_in(dir: tempfile::TempDir, f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut cfg = ServerConfig::new(dir.path().join("data"));
        cfg.shutdown_grace = Duration::from_secs(5);
        f(&mut cfg);
        let (state, engines) = match BACKEND.with(|c| c.get()) {
            Backend::FsSqlite => (
                tokio::task::spawn_blocking(move || ServerState::open(cfg))
                    .await
                    .unwrap()
                    .unwrap(),
                None,
            ),
            Backend::S3Postgres => {
                let edir = dir.path().join("engines");
                let e = tokio::task::spawn_blocking(move || engines::Engines::start(&edir))
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("start PostgreSQL and Garage: {e}"));
                let scale = scale_out(&e);
                let b = blobsync_server::backend::open_s3_postgres(&scale, None)
                    .await
                    .unwrap();
                (ServerState::with_backends(cfg, b).unwrap(), Some(e))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (s, c) = (state.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            blobsync_server::run(listener, s, c).await.unwrap();
        });
        Self {
            addr,
            state,
            cancel,
            task: Some(task),
            dir,
            client: client(),
            engines,
        }
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// fs+sqlite: the bytes a small blob keeps inside the index (`--inline-max`), if any.
    pub fn inline_payload(&self, user: &str, ns: &str, id: &str) -> Option<Vec<u8>> {
        inline_payload(&self.data_dir(), user, ns, id)
    }

    pub async fn add_user(&self, name: &str, quota: Option<u64>) -> String {
        let t = token::generate();
        self.state
            .index()
            .add_user(name, &token::hash(&t), quota)
            .await
            .unwrap();
        t
    }

    pub async fn add_app(&self, name: &str) -> String {
        self.add_app_in(name, &["MX"]).await
    }

    /// An app that may deliver into `namespaces`.
    pub async fn add_app_in(&self, name: &str, namespaces: &[&str]) -> String {
        let t = token::generate();
        let ns: Vec<blobsync_shared::Namespace> = namespaces
            .iter()
            .map(|n| blobsync_shared::Namespace::new(*n).unwrap())
            .collect();
        self.state
            .index()
            .add_app(name, &token::hash(&t), &ns)
            .await
            .unwrap();
        t
    }

    /// Starts the metrics listener (`run_metrics`) on `127.0.0.1:0`; returns its address.
    pub async fn start_metrics(&self) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(blobsync_server::run_metrics(
            l,
            self.state.clone(),
            self.cancel.clone(),
        ));
        addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request and reads the whole response.
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        b: ReqBody,
        headers: &[(&str, &str)],
    ) -> Resp {
        send(&self.client, method, &self.url(path), token, b, headers).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path, Some(token), body(""), &[]).await
    }

    pub async fn put(&self, path: &str, token: &str, data: impl Into<Bytes>) -> Resp {
        self.req("PUT", path, Some(token), body(data), &[]).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.req("DELETE", path, Some(token), body(""), &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, data: impl Into<Bytes>) -> Resp {
        self.req("POST", path, Some(token), body(data), &[]).await
    }

    /// Cancels and waits for `run` to return.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("run returns after cancel")
                .unwrap();
        }
    }
}

impl TestServer {
    /// Stops the server and releases the data dir (its lock included); returns the temp dir.
    pub async fn into_dir(mut self) -> tempfile::TempDir {
        self.stop().await;
        self.dir
    }
}

pub async fn send(
    client: &Client<HttpConnector, ReqBody>,
    method: &str,
    url: &str,
    token: Option<&str>,
    b: ReqBody,
    headers: &[(&str, &str)],
) -> Resp {
    let mut r = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = client.request(r.body(b).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// Decodes a downstream `/stream` body into (id, Some(bytes) | None when missing).
pub fn decode_frames(b: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
    use blobsync_shared::wire::{FrameDecoder, FrameEvent};
    let mut dec = FrameDecoder::new();
    let mut out: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut input = b;
    while !input.is_empty() || dec.has_pending_event() {
        let (used, ev) = dec.decode(input).unwrap();
        input = &input[used..];
        match ev {
            Some(FrameEvent::Blob { id, .. }) => out.push((id.to_string(), Some(Vec::new()))),
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
    dec.finish().unwrap();
    out
}
