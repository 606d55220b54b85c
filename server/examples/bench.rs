//! Benchmark of `blobsync-server` over loopback with Soledad's workloads; prints figures.
//!
//! Run in release: `cargo run --release -p blobsync-server --example bench [-- --quick]`.
//! Set `BENCH_DIR` to put the data dir on a particular disk (default: the system temp dir).
//! The 1 GB PUT/GET needs about 1 GB free; `--quick` uses 100 MB and 10,000 listed blobs.

use std::time::{Duration, Instant};

use blobsync_server::{ServerConfig, ServerState, token};
use blobsync_shared::BlobId;
use blobsync_shared::wire::{ChangesResponse, FrameDecoder, FrameEvent, encode_upload_header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

type B = BoxBody<Bytes, std::io::Error>;

struct Ctx {
    base: String,
    auth: String,
    client: Client<HttpConnector, B>,
}

impl Ctx {
    async fn send(&self, method: &str, path: &str, body: B) -> (u16, Bytes) {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("authorization", &self.auth)
            .body(body)
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let st = resp.status().as_u16();
        (st, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

fn full(b: impl Into<Bytes>) -> B {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn peak_rss_mb() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .map(|kb| format!("{:.0} MB", kb.parse::<f64>().unwrap_or(0.0) / 1024.0))
        .unwrap_or_else(|| "?".into())
}

async fn stream_up(ctx: &Ctx, ns: &str, blobs: &[(BlobId, Vec<u8>)]) {
    let entries: Vec<(BlobId, u64)> = blobs
        .iter()
        .map(|(i, b)| (i.clone(), b.len() as u64))
        .collect();
    let mut body = encode_upload_header(&entries);
    for (_, b) in blobs {
        body.extend_from_slice(b);
    }
    let (st, resp) = ctx
        .send(
            "POST",
            &format!("/stream/bench?direction=upload&namespace={ns}"),
            full(body),
        )
        .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&resp));
    assert!(
        !String::from_utf8_lossy(&resp).contains(":4"),
        "some blob failed"
    );
}

async fn stream_down(ctx: &Ctx, ns: &str, ids: &[BlobId]) -> u64 {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/stream/bench?direction=download&namespace={ns}",
            ctx.base
        ))
        .header("authorization", &ctx.auth)
        .body(full(serde_json::to_vec(ids).unwrap()))
        .unwrap();
    let resp = ctx.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut dec = FrameDecoder::new();
    let (mut bytes, mut blobs) = (0u64, 0usize);
    while let Some(f) = body.frame().await {
        let Ok(data) = f.unwrap().into_data() else {
            continue;
        };
        let mut input = &data[..];
        while !input.is_empty() || dec.has_pending_event() {
            let (used, ev) = dec.decode(input).unwrap();
            input = &input[used..];
            match ev {
                Some(FrameEvent::Data(d)) => bytes += d.len() as u64,
                Some(FrameEvent::End { .. }) => blobs += 1,
                Some(FrameEvent::Missing { id }) => panic!("{id} missing"),
                _ => {}
            }
        }
    }
    dec.finish().unwrap();
    assert_eq!(blobs, ids.len());
    bytes
}

fn report(name: &str, n: usize, bytes: u64, d: Duration, requests: usize) {
    let s = d.as_secs_f64();
    println!(
        "{name:<44} {:>8.3} s  {:>9.0} blobs/s  {:>8.1} MB/s  {:>8.1} req/s",
        s,
        n as f64 / s,
        mb(bytes) / s,
        requests as f64 / s
    );
}

async fn small_blob_workload(ctx: &Ctx, ns: &str, count: usize, size: usize, batch: usize) {
    let blobs: Vec<(BlobId, Vec<u8>)> = (0..count)
        .map(|i| {
            (
                BlobId::new(format!("{ns}-{i:06}")).unwrap(),
                vec![(i % 251) as u8; size],
            )
        })
        .collect();
    let total = (count * size) as u64;
    let t = Instant::now();
    for chunk in blobs.chunks(batch) {
        stream_up(ctx, ns, chunk).await;
    }
    let reqs = count.div_ceil(batch);
    report(
        &format!(
            "/stream up   {count} x {} KB (batches of {batch})",
            size / 1000
        ),
        count,
        total,
        t.elapsed(),
        reqs,
    );
    let ids: Vec<BlobId> = blobs.iter().map(|(i, _)| i.clone()).collect();
    let t = Instant::now();
    let mut got = 0;
    for chunk in ids.chunks(batch) {
        got += stream_down(ctx, ns, chunk).await;
    }
    assert_eq!(got, total);
    report(
        &format!(
            "/stream down {count} x {} KB (batches of {batch})",
            size / 1000
        ),
        count,
        total,
        t.elapsed(),
        reqs,
    );
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let base_dir = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base_dir).unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("data"));
    cfg.max_blob_size = 2 << 30;
    let state = ServerState::open(cfg).unwrap();
    let tok = token::generate();
    state
        .index()
        .add_user("bench", &token::hash(&tok), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(blobsync_server::run(
        listener,
        state.clone(),
        cancel.clone(),
    ));
    let ctx = Ctx {
        base: format!("http://{addr}"),
        auth: format!("Bearer {tok}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    println!(
        "data dir: {} ({} cores)",
        dir.path().display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Soledad's small-blob workloads through /stream.
    small_blob_workload(&ctx, "w10k", 1000, 10_000, 1000).await;
    small_blob_workload(&ctx, "w1k", 10_000, 1000, 1000).await;
    small_blob_workload(&ctx, "w1kb", 10_000, 1000, 100).await;

    // Plain PUTs and GETs, 8 clients in parallel.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let ctx = Ctx {
            base: ctx.base.clone(),
            auth: ctx.auth.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let (st, _) = ctx
                    .send(
                        "PUT",
                        &format!("/blobs/bench/p{c}-{i}?namespace=puts"),
                        full(vec![1u8; 10_000]),
                    )
                    .await;
                assert_eq!(st, 201);
            }
            ctx
        }));
    }
    let mut ctxs = Vec::new();
    for t in tasks {
        ctxs.push(t.await.unwrap());
    }
    report(
        "PUT 1000 x 10 KB, 8 clients",
        1000,
        10_000_000,
        t.elapsed(),
        1000,
    );
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (c, ctx) in ctxs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let (st, b) = ctx
                    .send(
                        "GET",
                        &format!("/blobs/bench/p{c}-{i}?namespace=puts"),
                        full(""),
                    )
                    .await;
                assert_eq!((st, b.len()), (200, 10_000));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    report(
        "GET 1000 x 10 KB, 8 clients",
        1000,
        10_000_000,
        t.elapsed(),
        1000,
    );

    // One big blob, streamed both ways (generated and consumed chunk by chunk).
    let big: u64 = if quick { 100 << 20 } else { 1 << 30 };
    let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
    let n_chunks = big >> 20;
    let c2 = chunk.clone();
    let stream = futures_util::stream::iter(
        (0..n_chunks).map(move |_| Ok(hyper::body::Frame::data(c2.clone()))),
    );
    let t = Instant::now();
    let (st, _) = ctx
        .send("PUT", "/blobs/bench/big", StreamBody::new(stream).boxed())
        .await;
    assert_eq!(st, 201);
    report(&format!("PUT 1 x {} MB", big >> 20), 1, big, t.elapsed(), 1);
    let t = Instant::now();
    let req = http::Request::get(format!("{}/blobs/bench/big", ctx.base))
        .header("authorization", &ctx.auth)
        .body(full(""))
        .unwrap();
    let mut body = ctx.client.request(req).await.unwrap().into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, big);
    report(&format!("GET 1 x {} MB", big >> 20), 1, big, t.elapsed(), 1);

    // Listing at scale: N ids in one namespace (empty blobs, added through /stream).
    let n_list: usize = if quick { 10_000 } else { 100_000 };
    let t = Instant::now();
    for start in (0..n_list).step_by(10_000) {
        let blobs: Vec<(BlobId, Vec<u8>)> = (start..(start + 10_000).min(n_list))
            .map(|i| (BlobId::new(format!("l{i:07}")).unwrap(), Vec::new()))
            .collect();
        stream_up(&ctx, "list", &blobs).await;
    }
    println!(
        "(setup: {n_list} empty blobs through /stream in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let (_, b) = ctx
        .send(
            "GET",
            "/blobs/bench?namespace=list&since=0&limit=1",
            full(""),
        )
        .await;
    let cursor = serde_json::from_slice::<ChangesResponse>(&b).unwrap();
    // The cursor a caught-up client holds: the user's current sequence number.
    let seq = state
        .index()
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.name == "bench")
        .unwrap()
        .seq;
    assert!(cursor.more);
    let ns = blobsync_shared::Namespace::new("list").unwrap();
    let reps = 2000;
    let t = Instant::now();
    for _ in 0..reps {
        // The index half of a caught-up `since` listing: the head check and one empty page.
        let idx = state.index();
        let upto = idx.changes_head("bench", seq).await.unwrap();
        let r = idx
            .changes_page("bench", &ns, seq, upto, 100_000)
            .await
            .unwrap();
        assert!(r.is_empty());
    }
    let idx = t.elapsed() / reps;
    let t = Instant::now();
    for _ in 0..reps / 4 {
        let (st, b) = ctx
            .send(
                "GET",
                &format!("/blobs/bench?namespace=list&since={seq}&detail=1"),
                full(""),
            )
            .await;
        assert_eq!(st, 200);
        assert!(
            serde_json::from_slice::<ChangesResponse>(&b)
                .unwrap()
                .changes
                .is_empty()
        );
    }
    let http_rt = t.elapsed() / (reps / 4);
    println!(
        "since listing, {n_list} blobs, no changes: index {:.1} us, full HTTP round trip {:.1} us",
        idx.as_secs_f64() * 1e6,
        http_rt.as_secs_f64() * 1e6
    );
    for (what, q) in [("ids", ""), ("detail=1", "&detail=1")] {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let (st, b) = ctx
                .send("GET", &format!("/blobs/bench?namespace=list{q}"), full(""))
                .await;
            let d = t.elapsed();
            assert_eq!(st, 200);
            let v: Vec<serde_json::Value> = serde_json::from_slice(&b).unwrap();
            assert_eq!(v.len(), n_list);
            best = best.min(d);
        }
        println!(
            "full listing of {n_list} blobs ({what}): {:.1} ms (best of 5, HTTP incl. transfer)",
            best.as_secs_f64() * 1e3
        );
    }
    println!(
        "peak RSS of this process (server + client): {}",
        peak_rss_mb()
    );
    cancel.cancel();
    server.await.unwrap().unwrap();
}
