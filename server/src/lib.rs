//! `blobsync-server`: Soledad's Blobs HTTP API plus incremental listing, on hyper.
//!
//! Owns the HTTP routes ([`http`]), the payload store ([`payload`]: files in Soledad's layout
//! ([`layout`]) or objects in an S3 bucket), the index with users, tokens, flags, tombstones
//! and sequence numbers ([`index`]: SQLite or PostgreSQL), the choice between the two pairs
//! ([`backend`]), and the consistency checker ([`fsck`]). The server only ever sees
//! ciphertext: it never holds keys and never decrypts.
//!
//! Entry points: [`ServerState::open`] (`fs` + `sqlite`) or [`ServerState::with_backends`]
//! then [`run`] with a bound listener and a cancellation token (tests bind `127.0.0.1:0`;
//! `main.rs` binds `--listen`).

pub mod backend;
pub mod body;
pub mod fsck;
pub mod guard;
pub mod http;
pub mod import;
pub mod index;
pub mod layout;
pub mod metrics;
pub mod migrate;
pub mod payload;
pub mod soledad;
pub mod token;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use index::{Index, IndexError, IndexStore};
pub use layout::Layout;
pub use payload::PayloadStore;

/// Name of the lock file that keeps two servers (or a server and `fsck`) off one data dir.
pub const LOCK_FILE: &str = ".lock";

/// Server settings, with defaults a small deployment can use as they are.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data dir: the index and every payload.
    pub data_dir: PathBuf,
    /// Largest blob accepted (413 above it). Default 4 GiB.
    pub max_blob_size: u64,
    /// Quota of users who have none of their own (507 above it). None: unlimited.
    pub default_quota: Option<u64>,
    /// Most connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Most connections one client address may hold open; more are closed at once, so one
    /// address cannot take the slots of everyone else. Default 64.
    pub max_connections_per_client: usize,
    /// A request body must arrive at least this fast (bytes per second, averaged from its
    /// start, after [`ServerConfig::body_grace`]); slower, it is cut off with 408. Default 1 KiB/s.
    pub min_body_rate: u64,
    /// How long a body may send nothing at all before the rate applies. Default 30 s.
    pub body_grace: Duration,
    /// Bad tokens an address may send within [`ServerConfig::auth_window`] before it gets 429
    /// for a window. Default 20; 0 disables the throttle.
    pub auth_fail_limit: u32,
    /// The bad-token counting and blocking window. Default 60 s.
    pub auth_window: Duration,
    /// Bound on a request's header block (hyper's read buffer), in bytes.
    pub max_header_bytes: usize,
    /// Largest `limit` of a listing page, and most ids in one `/stream` download.
    pub max_page: u64,
    /// Rows per index query of a listing (every listing is streamed in pages of this many
    /// rows, which bounds its memory whatever its `limit`). Default 1,000.
    pub list_chunk: u64,
    /// Bound on an upstream `/stream` header line and a downstream id list, in bytes.
    pub max_stream_header: usize,
    /// Most blobs one `/stream` upload is fsynced in parallel.
    pub stream_parallel_writes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How long a client may take to send its request headers; hyper arms the same timer
    /// while a kept-alive connection waits for its next request, so it is also the idle
    /// keep-alive timeout. Default 30 s.
    pub header_timeout: Duration,
    /// `fs+sqlite`: payloads of at most this many bytes are kept inside the index instead
    /// of as files (default [`payload::INLINE_MAX`]; 0: every payload a file; at most
    /// [`payload::INLINE_CAP`]). Payloads stored earlier stay readable whatever it is now.
    pub inline_max: usize,
    /// TLS, when set.
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl ServerConfig {
    /// Defaults for a data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_blob_size: 4 << 30,
            default_quota: None,
            max_connections: 1024,
            max_connections_per_client: 64,
            min_body_rate: 1024,
            body_grace: Duration::from_secs(30),
            auth_fail_limit: 20,
            auth_window: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_page: 100_000,
            list_chunk: 1_000,
            max_stream_header: blobsync_shared::wire::DEFAULT_MAX_UPLOAD_HEADER,
            stream_parallel_writes: 32,
            shutdown_grace: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            inline_max: payload::INLINE_MAX,
            tls: None,
        }
    }
}

/// Errors of starting and running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data dir.
    #[error(
        "data dir {0} is in use by another blobsync-server or fsck (lock file {LOCK_FILE}); \
         stop it first"
    )]
    Locked(PathBuf),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// An exclusive lock on a data dir (released on drop).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock or fails at once with [`ServerError::Locked`].
    pub fn acquire(data_dir: &Path) -> Result<Self, ServerError> {
        use std::os::fd::AsRawFd;
        let path = data_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        // SAFETY: flock on an fd we own; it has no memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(ServerError::Locked(data_dir.to_path_buf()));
        }
        Ok(Self { _file: file })
    }
}

/// Creates the data dir (mode 0700) if needed.
pub fn ensure_data_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("create data dir {}", dir.display())))
}

pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    pub(crate) index: Arc<dyn IndexStore>,
    pub(crate) payloads: Arc<dyn PayloadStore>,
    /// The instance id as the header value every response carries.
    pub(crate) instance: ::http::HeaderValue,
    pub(crate) conns: Arc<guard::ClientConns>,
    pub(crate) throttle: guard::AuthThrottle,
    pub(crate) metrics: metrics::Metrics,
    /// `fs` + `sqlite`: the data dir's lock (one server per data dir).
    pub(crate) _lock: Option<DirLock>,
}

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("data_dir", &self.inner.config.data_dir)
            .finish()
    }
}

impl ServerState {
    /// `fs` + `sqlite`: locks the data dir, opens the index and removes temp files left by a
    /// crash. Blocking: call it before serving (or from `spawn_blocking`).
    pub fn open(config: ServerConfig) -> Result<Self, ServerError> {
        let b = backend::open_fs_sqlite(&config.data_dir, config.inline_max)?;
        let removed = layout::remove_temp_files(&config.data_dir)
            .map_err(io_err("remove leftover temp files"))?;
        if removed > 0 {
            tracing::info!(removed, "removed temp files of uploads cut off earlier");
        }
        Self::with_backends(config, b)
    }

    /// A server over opened backends (see [`backend`]).
    pub fn with_backends(config: ServerConfig, b: backend::Backends) -> Result<Self, ServerError> {
        let instance = ::http::HeaderValue::from_str(b.index.instance_id()).map_err(|_| {
            ServerError::Index(IndexError::Batch(format!(
                "instance id {:?} in the index is not a valid header value",
                b.index.instance_id()
            )))
        })?;
        let throttle = guard::AuthThrottle::new(config.auth_fail_limit, config.auth_window);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                index: b.index,
                payloads: b.payloads,
                instance,
                conns: Arc::default(),
                throttle,
                metrics: metrics::Metrics::default(),
                _lock: b.lock,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The server's counters.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// The index.
    pub fn index(&self) -> &dyn IndexStore {
        self.inner.index.as_ref()
    }

    /// The payload store.
    pub fn payloads(&self) -> &dyn PayloadStore {
        self.inner.payloads.as_ref()
    }

    /// The server's instance id (the same on every node of a deployment).
    pub fn instance_id(&self) -> &str {
        self.inner.index.instance_id()
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| ServerError::Tls(format!("read {}: {e}", p.display())))
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{} holds no PEM certificate",
            files.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.key.display())))?
        .ok_or_else(|| {
            ServerError::Tls(format!("{} holds no PEM private key", files.key.display()))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Purges tombstones older than `ttl` now and then every `min(ttl / 2, 1 h)` until `cancel`
/// fires: what `purge-tombstones --older-than-days` does by hand, so a long-lived server's
/// index does not grow with every blob ever deleted. A device whose cursor predates a purge
/// gets 410 and does a full listing; a device offline for longer than `ttl` may therefore
/// upload a blob deleted elsewhere again (the conditional put can no longer see the delete).
pub async fn purge_tombstones_periodically(
    state: ServerState,
    ttl: Duration,
    cancel: CancellationToken,
) {
    let every = (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = now.saturating_sub(ttl).as_secs() as i64;
        match state.index().purge_tombstones(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, ?ttl, "purged tombstones older than the retention"),
            Err(e) => tracing::warn!(error = %e, "tombstone purge failed; trying again later"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Sets up glibc's malloc for a server whose big allocations are short-lived (listing pages,
/// body chunks): at most 4 arenas instead of 8 per core, and a fixed mmap threshold (256 KiB)
/// so page-sized buffers are mapped and unmapped instead of growing heaps that are never
/// given back. Call once at start, before threads exist. A no-op on other platforms.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Gives memory freed by a large listing back to the OS (glibc keeps freed heap pages in
/// its arenas otherwise, so RSS would stay at the high-water mark). At most once a second;
/// runs on the blocking pool.
pub(crate) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        drop(last);
        tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only returns free memory to the OS.
            unsafe { libc::malloc_trim(0) };
        });
    }
}

/// Rate-limits the log line about connections refused for the per-client cap: one line per
/// minute at most, with how many were refused since the last one.
#[derive(Default)]
struct RefusedLog {
    last: Option<std::time::Instant>,
    count: u64,
}

impl RefusedLog {
    fn note(&mut self, ip: std::net::IpAddr, cap: usize) {
        self.count += 1;
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(
                client = %ip,
                cap,
                refused = self.count,
                "closed connections over the per-client connection cap"
            );
            self.last = Some(now);
            self.count = 0;
        }
    }
}

/// Serves `GET /metrics` (Prometheus text, no token) on its own `listener` until `cancel`
/// fires: the operator's endpoint, kept off the API port so no user or app token can read
/// server-wide totals. `main` binds it to loopback unless told otherwise.
pub async fn run_metrics(listener: TcpListener, state: ServerState, cancel: CancellationToken) {
    // A scraper needs one connection; a few more do no harm, many would be an attack.
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config().header_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let st = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(http::handle_metrics(st, req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = conn.await;
        });
    }
}

/// Serves HTTP(S) on `listener` until `cancel` fires; then stops accepting, gives in-flight
/// requests up to `shutdown_grace`, and returns.
pub async fn run(
    listener: TcpListener,
    state: ServerState,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    let cfg = state.config().clone();
    let tls = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused_log = RefusedLog::default();
    let over_cap = {
        let msg = format!(
            "too many connections from your address (at most {}); reuse a connection or retry \
             later\n",
            cfg.max_connections_per_client
        );
        format!(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\n{}: {}\r\n\
             content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{msg}",
            blobsync_shared::wire::INSTANCE_HEADER,
            state.instance_id(),
            msg.len()
        )
        .into_bytes()
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = state
            .inner
            .conns
            .try_open(peer.ip(), cfg.max_connections_per_client)
        else {
            // Answered without reading (a non-blocking write into the empty socket buffer)
            // and closed at once: its slot goes back to everyone else.
            let _ = stream.try_write(&over_cap);
            refused_log.note(peer.ip(), cfg.max_connections_per_client);
            continue;
        };
        let permit = (permit, slot);
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        let ip = peer.ip();
        let service = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(http::handle(st, ip, req).await) }
        });
        let metrics_state = state.clone();
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    let m = &metrics_state.inner.metrics;
                    m.connections
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = fut.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    m.connections
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
            Some(acc) => {
                // The handshake runs in the task so a slow client cannot stall the accept loop;
                // it is bounded by the header timeout.
                let acc = acc.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let hs_timeout = cfg.header_timeout;
                tokio::spawn(async move {
                    let _permit = permit;
                    let tls_stream =
                        match tokio::time::timeout(hs_timeout, acc.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                    let m = &metrics_state.inner.metrics;
                    m.connections
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    m.connections
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; waiting for in-flight requests");
    if tokio::time::timeout(cfg.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = cfg.shutdown_grace.as_secs(),
            "in-flight requests did not finish in time; closing them"
        );
    }
    Ok(())
}
