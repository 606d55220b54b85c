//! HTTPS: the server with `--tls-cert/--tls-key` (a checked-in test CA and a certificate it signed for
//! `localhost` / `127.0.0.1`, test use only) serves the same API over rustls.

mod common;

use std::sync::Arc;

use blobsync_server::TlsFiles;
use bytes::Bytes;
use common::TestServer;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn serves_the_api_over_tls() {
    let s = TestServer::start_with(|c| {
        c.tls = Some(TlsFiles {
            cert: fixture("tls-cert.pem"),
            key: fixture("tls-key.pem"),
        })
    })
    .await;
    let t = s.add_user("alice", None).await;

    let pem = std::fs::read(fixture("tls-ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    let req = |m: &str, p: &str, b: &'static str| {
        http::Request::builder()
            .method(m)
            .uri(p)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::new(Bytes::from_static(b.as_bytes())))
            .unwrap()
    };
    let r = send
        .send_request(req("PUT", "/blobs/alice/x", "secret bytes"))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.into_body().collect().await.unwrap();
    let r = send
        .send_request(req("GET", "/blobs/alice/x", ""))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        &r.into_body().collect().await.unwrap().to_bytes()[..],
        b"secret bytes"
    );

    // Plain HTTP to the TLS port gets no answer.
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<common::ReqBody>();
        c.request(
            http::Request::get(s.url("/healthz"))
                .body(common::body(""))
                .unwrap(),
        )
        .await
    })
    .await
    .unwrap();
    assert!(r.is_err() || !r.unwrap().status().is_success());
}
