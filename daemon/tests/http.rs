//! The engine over `HttpRemote` against the real `blobsync-server` (started in-process on
//! 127.0.0.1:0 with its own temp data dir), for what only an HTTP remote has: a token, the
//! incoming namespace's external blobs, and TLS with a CA file. Behaviours both remotes must
//! show are `rstest` cases in engine.rs, namespaces.rs and resurrection.rs.

mod common;

use std::path::Path;

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::remote::http::{HttpRemote, HttpRemoteConfig};
use blobsyncd::remote::{Remote, RemoteError};
use blobsyncd::status::Status;
use common::*;

async fn start_server(dir: &Path) -> TestServer {
    TestServer::start(dir).await
}

fn http_remote(s: &TestServer) -> HttpRemote {
    s.remote()
}

/// A wrong token: unauthorized, queue kept; fixing the token file resumes without a restart.
/// (Only `HttpRemote` has a token. What this file's tests of two devices syncing, of a
/// resumed and a tampered download and of a 409 after a lost answer checked is now one
/// `rstest` body per behaviour in engine.rs, with a case for each remote.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_unauthorized_until_the_token_file_is_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let good = std::fs::read_to_string(&srv.token_file).unwrap();
    std::fs::write(&srv.token_file, "wrong\n").unwrap();
    let bad = HttpRemote::new(HttpRemoteConfig {
        base: srv.base.clone(),
        user: "alice".into(),
        token_file: Some(srv.token_file.clone()),
        ca_file: None,
    })
    .unwrap();
    let c = Device::open_on(&tmp.path().join("c"), bad, settings(), Default::default()).await;
    c.put("q", b"queued").await;
    c.engine.run_cycle().await;
    let st = c.handle.status().await.unwrap();
    assert!(st.remote.unauthorized, "{:?}", st.remote);
    assert_eq!(c.status_of("q").await, Some(Status::PendingUpload));
    std::fs::write(&srv.token_file, good).unwrap();
    let s = c.cycle_after(10).await;
    assert_eq!(s.uploaded, 1, "{s:?}");
    assert!(!c.handle.status().await.unwrap().remote.unauthorized);
    assert!(c.remote.inner().describe().contains("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_blobs_are_decrypted_in_an_incoming_namespace_and_refused_elsewhere() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let app_token = srv.app_token.clone();
    // A trusted app delivers a message to alice's MX namespace, encrypted to her incoming
    // recipient (every device of hers derives it from the storage key).
    let plain = b"Subject: hello\r\n\r\nfrom the mail server".to_vec();
    let body = {
        use std::io::Write;
        use std::str::FromStr;
        let r = blobsync_shared::incoming::IncomingIdentity::derive(&key()).recipient();
        let r = age::x25519::Recipient::from_str(&r).unwrap();
        let e =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        out
    };
    let addr = srv.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /incoming/alice/mail1?namespace=MX HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {app_token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 20"), "{answer}");

    // MX is an incoming namespace unless configured otherwise.
    let mx = Namespace::new("MX").unwrap();
    let b = Device::open_on(
        &tmp.path().join("b"),
        http_remote(&srv),
        settings(),
        Default::default(),
    )
    .await;
    let sum = b.engine.run_cycle().await;
    assert_eq!(
        sum.downloaded,
        1,
        "{sum:?} {:?}",
        b.info_ns(&mx, "mail1").await
    );
    b.cycle_after(1).await;
    let info = b.info_ns(&mx, "mail1").await.unwrap();
    assert!(info.external);
    assert_eq!(info.status, Status::Synced);
    assert_eq!(b.read_ns(&mx, "mail1", false).await, plain);
    // The consuming app sets the remote flags through the daemon.
    let id = BlobId::new("mail1").unwrap();
    b.handle
        .set_flags(&mx, &id, vec![blobsync_shared::wire::Flag::Processed])
        .await
        .unwrap();
    assert_eq!(
        b.handle.get_flags(&mx, &id).await.unwrap(),
        vec![blobsync_shared::wire::Flag::Processed]
    );

    // Where MX is configured as an ordinary namespace, nothing authenticates the app's bytes:
    // the blob is refused (no row, nothing served) and an alarm says so.
    let mut s = settings();
    s.namespaces
        .insert(mx.clone(), blobsync_shared::config::NamespacePolicy::Eager);
    let c = Device::open_on(
        &tmp.path().join("c"),
        http_remote(&srv),
        s,
        Default::default(),
    )
    .await;
    let sum = c.engine.run_cycle().await;
    assert_eq!(sum.downloaded, 0, "{sum:?}");
    assert!(c.info_ns(&mx, "mail1").await.is_none());
    assert!(c.handle.open_for_read(&mx, &id, None, true).await.is_err());
    let alarms = c.handle.status().await.unwrap().alarms;
    assert!(
        alarms
            .iter()
            .any(|a| a.kind == blobsyncd::events::AlarmKind::ExternalRefused
                && a.message.contains("mail1")),
        "{alarms:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_file_works_and_an_unknown_ca_is_refused() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_with(
        tmp.path(),
        Some(blobsync_server::TlsFiles {
            cert: fixtures.join("tls-cert.pem"),
            key: fixtures.join("tls-key.pem"),
        }),
        None,
    )
    .await;
    let with_ca = HttpRemote::new(HttpRemoteConfig {
        base: srv.base.clone(),
        user: "alice".into(),
        token_file: Some(srv.token_file.clone()),
        ca_file: Some(fixtures.join("tls-ca.pem")),
    })
    .unwrap();
    let a = Device::open_on(
        &tmp.path().join("a"),
        with_ca,
        settings(),
        Default::default(),
    )
    .await;
    a.put("tls", b"over tls").await;
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 1, "{s:?}");

    let without = http_remote(&srv);
    let err = without.changes(&Namespace::default(), 0).await.unwrap_err();
    assert!(
        err.is_unreachable() && err.to_string().contains("certificate"),
        "{err}"
    );
}

/// An upload may take as long as it keeps moving: the timeout is on progress, not on the
/// whole request (a big blob under a bandwidth limit takes minutes). One that stops moving
/// is given up after the stall timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_completes_and_a_stalled_one_times_out() {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;

    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let stall = Duration::from_millis(300);
    let r = http_remote(&srv).with_stall_timeout(stall);
    let ns = Namespace::default();
    // Eight pieces 100 ms apart: 0.8 s in all, more than twice the stall timeout.
    let piece = vec![7u8; 16 * 1024];
    let data: Vec<u8> = piece.repeat(8);
    let slow = futures_util::stream::iter(0..8).then(move |_| {
        let p = Bytes::from(piece.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(p)
        }
    });
    let id = BlobId::new("slow").unwrap();
    r.put(&ns, &id, data.len() as u64, Box::pin(slow), None)
        .await
        .expect("a slow upload that keeps moving completes");
    let got = r.get(&ns, &id, None).await.unwrap();
    let got = blobsyncd::remote::collect_body(got.body, 1 << 20)
        .await
        .unwrap();
    assert!(got == data, "the server holds what was sent");

    // One piece, then nothing: given up after the stall timeout, not kept forever.
    let stalled = futures_util::stream::iter([Ok(Bytes::from(vec![1u8; 1024]))])
        .chain(futures_util::stream::pending());
    let t = std::time::Instant::now();
    let e = r
        .put(
            &ns,
            &BlobId::new("stalled").unwrap(),
            4096,
            Box::pin(stalled),
            None,
        )
        .await
        .expect_err("a stalled upload fails");
    assert!(e.to_string().contains("no progress"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        r.list(&ns, &Default::default())
            .await
            .unwrap()
            .iter()
            .all(|b| b.id.as_str() != "stalled")
    );
}

/// Alice's `HttpRemote` through `base` (a proxy in front of `srv`).
fn alice_at(srv: &TestServer, base: String) -> HttpRemote {
    HttpRemote::new(HttpRemoteConfig {
        base,
        user: "alice".into(),
        token_file: Some(srv.token_file.clone()),
        ca_file: None,
    })
    .unwrap()
}

/// A proxy in front of the real server that drops every request's `Range` header, as some
/// proxies do (HTTP lets a server answer a ranged GET with the whole blob), or with `from_0`
/// asks for the whole blob from byte 0 instead. Returns its base.
async fn range_dropping_proxy(upstream: &str, from_0: bool) -> String {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<hyper::body::Incoming>();
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (client, upstream) = (client.clone(), upstream.clone());
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    if req.headers_mut().remove(hyper::header::RANGE).is_some() && from_0 {
                        let v = hyper::header::HeaderValue::from_static("bytes=0-");
                        req.headers_mut().insert(hyper::header::RANGE, v);
                    }
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("{upstream}{pq}").parse().unwrap();
                    client.request(req).await
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    base
}

/// A download cut short resumes with a Range; through a proxy that drops it, the whole blob
/// comes back, and the remote skips to where it asked instead of handing the decoder bytes
/// it would take for tampering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_through_a_proxy_that_drops_range_is_not_tampering() {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let clock = blobsyncd::clock::ManualClock::default();
    let a = Device::open_on(
        &tmp.path().join("a"),
        srv.remote(),
        settings(),
        clock.clone(),
    )
    .await;
    let data = bytes(300_000, 5);
    a.put("big", &data).await;
    assert_eq!(a.engine.run_cycle().await.uploaded, 1);
    let via = alice_at(&srv, range_dropping_proxy(&srv.base, false).await);
    // The remote itself: a ranged GET answered whole comes back from the byte asked for.
    let (ns, id) = (Namespace::default(), BlobId::new("big").unwrap());
    let whole = srv.remote().get(&ns, &id, None).await.unwrap();
    let whole = blobsyncd::remote::collect_body(whole.body, 1 << 20)
        .await
        .unwrap();
    let r = via.get(&ns, &id, Some(1000..u64::MAX)).await.unwrap();
    assert_eq!((r.offset, r.len), (1000, whole.len() as u64 - 1000));
    let tail = blobsyncd::remote::collect_body(r.body, 1 << 20)
        .await
        .unwrap();
    assert!(tail == whole[1000..], "the tail from byte 1000");
    // An answer for another range than the one asked for is a protocol error, not bytes.
    let other = alice_at(&srv, range_dropping_proxy(&srv.base, true).await);
    match other.get(&ns, &id, Some(1000..u64::MAX)).await {
        Err(RemoteError::Protocol(m)) => assert!(m.contains("starts at byte 0"), "{m}"),
        r => panic!("{:?}", r.map(|r| r.offset)),
    }
    // The engine: cut after 100 KB, resumed through the proxy, verified, not tampering.
    let b = Device::open_on(&tmp.path().join("b"), via, settings(), clock).await;
    b.remote.faults.cut_next_get(100_000);
    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 1, "{s:?} {:?}", b.info("big").await);
    assert_eq!(b.read("big").await, data);
    assert_eq!(b.remote.faults.ranged_gets.load(Ordering::SeqCst), 1);
    let info = b.info("big").await.unwrap();
    assert_eq!((info.attempts, info.invalid_attempts), (0, 0));
}
