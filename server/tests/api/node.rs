//! One node under load and over its life: concurrent puts of one id (exactly one wins), a
//! hundred concurrent clients, request and byte metrics, shutdown that lets in-flight
//! requests finish, fsck of leftovers, and connections over the limit waiting for a slot.

use super::*;

both_backends! {
#[tokio::test]
async fn concurrent_puts_of_one_id_exactly_one_wins() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let url = s.url("/blobs/alice/contended");
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let c = common::client();
            let data = vec![i; 50_000];
            common::send(&c, "PUT", &url, Some(&t), body(data), &[])
                .await
                .status
        }));
    }
    let mut codes = Vec::new();
    for h in tasks {
        codes.push(h.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 19, "{codes:?}");
    // The stored bytes are all one writer's.
    let b = s.get("/blobs/alice/contended", &t).await.body;
    assert_eq!(b.len(), 50_000);
    assert!(b.iter().all(|x| *x == b[0]));
}
}

#[tokio::test]
async fn hundred_concurrent_clients() {
    // All from 127.0.0.1: above the default per-client connection cap of 64.
    let s = TestServer::start_with(|c| c.max_connections_per_client = 1024).await;
    let t = s.add_user("alice", None).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let base = s.url("/blobs/alice");
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let c = common::client();
            let data = format!("client {i}").repeat(100);
            let url = format!("{base}/c{i}");
            let p = common::send(&c, "PUT", &url, Some(&t), body(data.clone()), &[]).await;
            assert_eq!(p.status, 201);
            let g = common::send(&c, "GET", &url, Some(&t), body(""), &[]).await;
            assert_eq!(g.body, data.as_bytes());
            let l = common::send(
                &c,
                "GET",
                &format!("{base}?only_count=1"),
                Some(&t),
                body(""),
                &[],
            )
            .await;
            assert_eq!(l.status, 200);
        }));
    }
    for h in tasks {
        h.await.unwrap();
    }
    let c: CountResponse = s.get("/blobs/alice?only_count=1", &t).await.json();
    assert_eq!(c.count, 100);
}

both_backends! {
#[tokio::test]
async fn metrics_count_requests_and_bytes() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    s.put("/blobs/alice/m", &t, "12345").await;
    s.get("/blobs/alice/m", &t).await;
    s.get("/blobs/alice/zz", &t).await;
    // Never to a user token on the API port: server-wide totals are the operator's.
    let denied = s.get("/metrics", &t).await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(!denied.text().contains("blobsync_stored"));
    let maddr = s.start_metrics().await;
    let m = common::send(
        &s.client,
        "GET",
        &format!("http://{maddr}/metrics"),
        None,
        body(""),
        &[],
    )
    .await;
    assert_eq!(m.status, 200);
    let text = m.text();
    for line in [
        "blobsync_requests_total{route=\"put\",code=\"201\"} 1",
        "blobsync_requests_total{route=\"get\",code=\"404\"} 1",
        "blobsync_requests_total{route=\"metrics\",code=\"403\"} 1",
        "blobsync_bytes_received_total 5",
        "blobsync_bytes_sent_total 5",
        "blobsync_stored_blobs 1",
        "blobsync_stored_bytes 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Where the time went: one commit in the index, one payload written.
    let (i, p) = (s.state.index().kind(), s.state.payloads().kind());
    for line in [
        format!("blobsync_backend_seconds_count{{backend=\"{i}\",op=\"commit\"}} 1"),
        format!("blobsync_backend_seconds_count{{backend=\"{p}\",op=\"finish\"}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(4);
    let slow = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }),
    ));
    let url = s.url("/blobs/alice/slow");
    let tok = t.clone();
    let upload = tokio::spawn(async move {
        let c = common::client();
        common::send(&c, "PUT", &url, Some(&tok), slow, &[])
            .await
            .status
    });
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first "))))
        .await
        .unwrap();
    // Wait until the server is inside the request (it has received the first bytes).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s
        .state
        .metrics()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed)
        < 6
    {
        assert!(
            std::time::Instant::now() < deadline,
            "upload never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.cancel.cancel();
    // New connections are refused once the accept loop has seen the cancel...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(s.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener still accepting after cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...but the upload in flight completes.
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"second"))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(upload.await.unwrap(), 201);
    s.stop().await;
    assert_eq!(
        s.inline_payload("alice", "default", "slow").as_deref(),
        Some(&b"first second"[..])
    );
}

#[tokio::test]
async fn fsck_finds_and_repairs_leftovers() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    // Files (over --inline-max) and one blob kept inside the index.
    let big = |c: u8| vec![c; blobsync_server::payload::INLINE_MAX + 1];
    s.put("/blobs/alice/keep", &t, big(b'k')).await;
    s.put("/blobs/alice/gone", &t, big(b'g')).await;
    s.put("/blobs/alice/tiny", &t, "t").await;
    let dir = s.into_dir().await;
    let d = dir.path().join("data");
    assert!(!d.join("alice/default/t/tin/tiny").exists());
    let clean = blobsync_server::fsck::fsck(&d, false).unwrap();
    assert!(clean.is_clean(), "{}", clean.render());
    assert_eq!(clean.checked, 3);
    // An orphan payload (crash between rename and commit), a temp file, a lost payload, and a
    // file where the inline blob's name would be (a crash before an unlink; orphan too).
    std::fs::create_dir_all(d.join("alice/default/o/orp")).unwrap();
    std::fs::write(d.join("alice/default/o/orp/orphan"), "o").unwrap();
    std::fs::write(d.join("alice/default/k/kee/.tmp-keep-1234"), "t").unwrap();
    std::fs::remove_file(d.join("alice/default/g/gon/gone")).unwrap();
    std::fs::create_dir_all(d.join("alice/default/t/tin")).unwrap();
    std::fs::write(d.join("alice/default/t/tin/tiny"), "stale").unwrap();
    // And inline bytes no live row owns (a delete removes them in its transaction, so only
    // damage or a bug leaves them).
    rusqlite::Connection::open(d.join(blobsync_server::index::INDEX_FILE))
        .unwrap()
        .execute(
            "INSERT INTO inline_payloads (user, namespace, id, data) \
             VALUES ('alice', 'default', 'ghost', x'00')",
            [],
        )
        .unwrap();
    let r = blobsync_server::fsck::fsck(&d, false).unwrap();
    assert!(!r.is_clean());
    assert_eq!(
        (r.orphans.len(), r.temp_files.len(), r.missing.len()),
        (2, 1, 1),
        "{}",
        r.render()
    );
    assert_eq!(r.orphan_inline, ["alice/default/ghost"], "{}", r.render());
    assert!(
        r.render()
            .contains("found inline payload with no live index entry: alice/default/ghost")
    );
    let r = blobsync_server::fsck::fsck(&d, true).unwrap();
    assert!(
        r.render()
            .contains("MISSING payload for indexed blob alice/default/gone")
    );
    assert!(!d.join("alice/default/o/orp/orphan").exists());
    assert!(!d.join("alice/default/k/kee/.tmp-keep-1234").exists());
    assert!(d.join("alice/default/k/kee/keep").exists());
    assert!(!d.join("alice/default/t/tin/tiny").exists());
    assert_eq!(
        common::inline_payload(&d, "alice", "default", "tiny").as_deref(),
        Some(&b"t"[..])
    );
    assert_eq!(
        common::inline_payload(&d, "alice", "default", "ghost"),
        None
    );
    let again = blobsync_server::fsck::fsck(&d, false).unwrap();
    assert!(again.orphan_inline.is_empty(), "{}", again.render());
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let s = TestServer::start_with(|c| c.max_connections = 2).await;
    let t = s.add_user("alice", None).await;
    // Two idle connections take both slots.
    let a = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // Both must be served (holding their slots) before the third tries: otherwise the third
    // would wait behind them in the backlog and pass without the limit being involved.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s
        .state
        .metrics()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the two idle connections were never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = tokio::time::timeout(Duration::from_millis(300), s.get("/blobs/alice", &t)).await;
    assert!(
        waited.is_err(),
        "a third connection was served beyond the limit"
    );
    // Freeing one slot lets the next request through.
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(5), s.get("/blobs/alice", &t))
        .await
        .expect("served once a slot is free");
    assert_eq!(r.status, 200);
}
