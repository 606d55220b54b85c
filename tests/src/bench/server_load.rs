//! The server rows (issue 20): a real `blobsync-server` under many simulated devices, all in
//! this process, over real loopback sockets.
//!
//! - `SRV-LIST`: `devices` devices (default 1,000), each on its own keep-alive connection,
//!   ask for their changes since their cursor with nothing new, as an idle daemon does every
//!   cycle, at an offered rate (default 10,000 listings/s over all devices; open loop: a late
//!   answer counts from when the request was due). They come from different loopback
//!   addresses (127.0.0.2, .3, ...; the server caps connections per client address), 50
//!   devices per address.
//! - `SRV-PUT`: `clients` clients (default 64) each PUT 1 KiB blobs, one at a time, durable as
//!   always.
//!
//! Each row reports requests per second, latency percentiles and the server's peak RSS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpSocket;

use super::{BenchError, BenchOpts, new_env, runtime, server_pid};
use crate::{ServerOpts, ServerProc};

/// Users the simulated devices belong to.
const USERS: usize = 100;
/// Blobs each user holds (so every cursor is past 0).
const BLOBS_PER_USER: usize = 5;
/// Devices per source address (the server allows 64 connections per client address).
const PER_ADDRESS: usize = 50;

/// Figures of one server row.
#[derive(Clone, Debug, Serialize)]
pub struct ServerLoadResult {
    /// `SRV-LIST` or `SRV-PUT`.
    pub row: String,
    /// Connections (simulated devices or clients).
    pub connections: usize,
    /// Offered requests per second (SRV-LIST; 0 for a closed loop, as SRV-PUT).
    pub offered_per_s: f64,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests answered (2xx) in that time.
    pub requests: u64,
    /// Requests per second.
    pub per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Worst latency, ms.
    pub max_ms: f64,
    /// Requests that failed (not 2xx, or a transport error).
    pub errors: u64,
    /// The server's peak RSS over the whole row (`VmHWM`), bytes.
    pub server_peak_rss_bytes: u64,
}

pub(super) fn bench_err(what: &str) -> impl FnOnce(hyper::Error) -> BenchError + '_ {
    move |e| BenchError::Check(format!("{what}: {e}"))
}

/// One keep-alive HTTP/1.1 connection from `local` to the server.
pub(super) async fn connect(
    server: SocketAddr,
    local: IpAddr,
) -> Result<SendRequest<Full<Bytes>>, BenchError> {
    let sock = TcpSocket::new_v4().map_err(|e| BenchError::Check(format!("socket: {e}")))?;
    sock.bind(SocketAddr::new(local, 0))
        .map_err(|e| BenchError::Check(format!("bind {local}: {e}")))?;
    let stream = sock
        .connect(server)
        .await
        .map_err(|e| BenchError::Check(format!("connect from {local}: {e}")))?;
    stream.set_nodelay(true).ok();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bench_err("handshake"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends one request and drains the body; returns whether it was 2xx.
async fn call(
    send: &mut SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    token: &str,
    body: Bytes,
) -> Result<bool, BenchError> {
    let (status, _) = call_full(send, method, uri, token, body).await?;
    Ok((200..300).contains(&status))
}

/// Sends one request and returns its status and whole body.
pub(super) async fn call_full(
    send: &mut SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    token: &str,
    body: Bytes,
) -> Result<(u16, Bytes), BenchError> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {token}"))
        .header("content-length", body.len())
        .body(Full::new(body))
        .map_err(|e| BenchError::Check(format!("request: {e}")))?;
    send.ready().await.map_err(bench_err("ready"))?;
    let resp = send.send_request(req).await.map_err(bench_err("send"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(bench_err("body"))?
        .to_bytes();
    Ok((status, body))
}

/// The server's peak RSS so far, bytes.
fn peak_rss(server: &ServerProc) -> Result<u64, BenchError> {
    let pid = server_pid(server)?;
    crate::proc_memory(pid)
        .map(|(hwm, _)| hwm)
        .ok_or_else(|| BenchError::Check(format!("no /proc/{pid}/status")))
}

/// The source address of device `i`: 127.0.0.2, then one more per [`PER_ADDRESS`] devices.
fn source(i: usize) -> IpAddr {
    let n = 2 + (i / PER_ADDRESS) as u32;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `per_conn` on `n` connections for `secs`; collects latencies.
async fn drive<F, Fut>(
    server: SocketAddr,
    n: usize,
    secs: Duration,
    per_conn: F,
) -> Result<(u64, u64, Vec<f64>, f64), BenchError>
where
    F: Fn(usize, SendRequest<Full<Bytes>>, Instant) -> Fut,
    Fut: std::future::Future<Output = (u64, Vec<f64>)> + Send + 'static,
{
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(connect(server, source(i)).await?);
    }
    let start = Instant::now();
    let until = start + secs;
    let mut tasks = Vec::with_capacity(n);
    for (i, c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(per_conn(i, c, until)));
    }
    let (mut errors, mut lat) = (0u64, Vec::new());
    for t in tasks {
        let (e, l) = t
            .await
            .map_err(|e| BenchError::Check(format!("a load task died: {e}")))?;
        errors += e;
        lat.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat.len() as u64, errors, lat, elapsed))
}

fn result(
    row: &str,
    connections: usize,
    offered_per_s: f64,
    (requests, errors, lat, seconds): (u64, u64, Vec<f64>, f64),
    rss: u64,
) -> ServerLoadResult {
    ServerLoadResult {
        row: row.to_owned(),
        connections,
        offered_per_s,
        seconds,
        requests,
        per_s: requests as f64 / seconds,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        errors,
        server_peak_rss_bytes: rss,
    }
}

/// With `--scaleout-nodes` (any N > 0: these rows use one node): PostgreSQL and Garage for
/// the server, and its options; else none and the defaults (`fs+sqlite`).
fn server_setup(
    env: &crate::TestEnv,
    opts: &BenchOpts,
) -> Result<(Option<crate::engines::Engines>, ServerOpts), BenchError> {
    if opts.scaleout_nodes == 0 {
        return Ok((None, ServerOpts::default()));
    }
    let e = crate::engines::Engines::start(&env.subdir("engines")?).map_err(|e| {
        BenchError::Harness(crate::HarnessError::protocol(
            "start PostgreSQL and Garage",
            e,
        ))
    })?;
    let o = ServerOpts {
        extra_args: vec!["--metrics-listen".into(), "none".into()],
        env: e.server_env(),
    };
    Ok((Some(e), o))
}

/// `SRV-LIST`: idle devices asking for changes since their cursor.
pub fn run_list(opts: &BenchOpts) -> Result<ServerLoadResult, BenchError> {
    let env = new_env(opts)?;
    // Declared before the server: dropped after it.
    let (_engines, server_opts) = server_setup(&env, opts)?;
    let server = ServerProc::start(&env, server_opts)?;
    let addr = server.addr();
    let mut tokens = Vec::with_capacity(USERS);
    for u in 0..USERS {
        tokens.push(server.add_user(&format!("u{u}"))?);
    }
    let tokens = Arc::new(tokens);
    let devices = opts.server_devices;
    let rate = opts.server_rate;
    let secs = opts.server_secs;
    let rt = runtime()?;
    let figures = rt.block_on(async {
        // Each user holds a few blobs: cursors are past 0, as on a real device.
        let mut send = connect(addr, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
        let mut cursor = Vec::with_capacity(USERS);
        for (u, t) in tokens.iter().enumerate() {
            for b in 0..BLOBS_PER_USER {
                let uri = format!("/blobs/u{u}/b{b}?namespace=default");
                call(&mut send, "PUT", &uri, t, Bytes::from(vec![7u8; 1024])).await?;
            }
            cursor.push(BLOBS_PER_USER as u64);
        }
        let cursor = Arc::new(cursor);
        drive(addr, devices, secs, move |i, mut send, until| {
            let (tokens, cursor) = (tokens.clone(), cursor.clone());
            async move {
                let u = i % USERS;
                let uri = format!("/blobs/u{u}?namespace=default&since={}&detail=1", cursor[u]);
                // Open loop: each device asks on its own schedule (the offered rate spread
                // over the devices, phases staggered), and a request's latency counts from
                // when it was due, so a server that falls behind shows it in the latency
                // instead of silently lowering the offered load.
                let period = Duration::from_secs_f64(devices as f64 / rate);
                let mut due =
                    tokio::time::Instant::now() + period.mul_f64(i as f64 / devices as f64);
                let (mut errors, mut lat) = (0u64, Vec::new());
                while Instant::now() < until {
                    tokio::time::sleep_until(due).await;
                    match call(&mut send, "GET", &uri, &tokens[u], Bytes::new()).await {
                        Ok(true) => lat.push(due.elapsed().as_secs_f64() * 1e3),
                        _ => errors += 1,
                    }
                    due += period;
                }
                (errors, lat)
            }
        })
        .await
    })?;
    let rss = peak_rss(&server)?;
    Ok(result("SRV-LIST", devices, rate, figures, rss))
}

/// `SRV-PUT`: clients putting 1 KiB blobs, one at a time each.
pub fn run_put(opts: &BenchOpts) -> Result<ServerLoadResult, BenchError> {
    let env = new_env(opts)?;
    let (_engines, server_opts) = server_setup(&env, opts)?;
    let server = ServerProc::start(&env, server_opts)?;
    let addr = server.addr();
    let token = Arc::new(server.add_user("putter")?);
    let clients = opts.server_put_clients;
    let secs = opts.server_secs;
    let rt = runtime()?;
    let figures = rt.block_on(drive(addr, clients, secs, move |i, mut send, until| {
        let token = token.clone();
        async move {
            let (mut errors, mut lat) = (0u64, Vec::new());
            let body = Bytes::from(vec![3u8; 1024]);
            let mut n = 0u64;
            while Instant::now() < until {
                let uri = format!("/blobs/putter/c{i}-{n}?namespace=default");
                n += 1;
                let t0 = Instant::now();
                match call(&mut send, "PUT", &uri, &token, body.clone()).await {
                    Ok(true) => lat.push(t0.elapsed().as_secs_f64() * 1e3),
                    _ => errors += 1,
                }
            }
            (errors, lat)
        }
    }))?;
    let rss = peak_rss(&server)?;
    Ok(result("SRV-PUT", clients, 0.0, figures, rss))
}
