//! The incoming box against the real server, in process: a delivery (an age file encrypted
//! to the user's recipient) is decrypted and adopted, and the engine is stopped dead at each
//! step of that (after the payload is installed but before its row moves on, between the
//! decryption and the adoption, between the adoption and its local commit), dropped, and
//! reopened: nothing lost, the delivery adopted exactly once, nothing half-adopted.

mod common;

use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use blobsync_shared::incoming::IncomingIdentity;
use blobsync_shared::wire::{ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use blobsyncd::clock::ManualClock;
use blobsyncd::remote::Remote;
use blobsyncd::remote::http::HttpRemote;
use blobsyncd::status::Status;
use common::*;

async fn start_server(dir: &Path) -> TestServer {
    TestServer::start(dir).await
}

fn remote(s: &TestServer) -> HttpRemote {
    s.remote()
}

async fn device(data: &Path, s: &TestServer, clock: &ManualClock) -> Device<HttpRemote> {
    Device::open_on(data, remote(s), settings(), clock.clone()).await
}

fn age_file(plain: &[u8]) -> Vec<u8> {
    let r = IncomingIdentity::derive(&key()).recipient();
    let r = age::x25519::Recipient::from_str(&r).unwrap();
    let e = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = e.wrap_output(&mut out).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap();
    out
}

/// An HTTP request with a token, fully read: (status, body).
async fn request(
    s: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", s.base))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let b = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, b)
}

async fn deliver(s: &TestServer, id: &str, file: &[u8]) -> u64 {
    let (st, body) = request(
        s,
        &s.app_token,
        "PUT",
        &format!("/incoming/alice/{id}"),
        file.to_vec(),
    )
    .await;
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
    let ch: ChangesResponse = serde_json::from_slice(
        &request(
            s,
            &s.user_token,
            "GET",
            "/blobs/alice?namespace=MX&since=0",
            vec![],
        )
        .await
        .1,
    )
    .unwrap();
    ch.seq
}

/// The server's stored bytes of `MX/id`.
async fn server_copy(s: &TestServer, id: &str) -> Vec<u8> {
    request(
        s,
        &s.user_token,
        "GET",
        &format!("/blobs/alice/{id}?namespace=MX"),
        vec![],
    )
    .await
    .1
}

fn mx() -> Namespace {
    Namespace::new("MX").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_decrypted_adopted_and_reaches_another_device_as_format_v1() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let clock = ManualClock::default();
    let a = device(&tmp.path().join("a"), &srv, &clock).await;
    a.engine.run_cycle().await;
    // The first cycle published the recipient.
    let (st, r) = request(&srv, &srv.app_token, "GET", "/keys/alice/incoming", vec![]).await;
    assert_eq!(st, 200);
    assert_eq!(
        String::from_utf8_lossy(&r).trim(),
        IncomingIdentity::derive(&key()).recipient()
    );
    assert_eq!(
        a.remote.incoming_recipient().await.unwrap().as_deref(),
        Some(&*String::from_utf8_lossy(&r).trim().to_owned())
    );

    let plain = bytes(200_000, 3);
    let file = age_file(&plain);
    deliver(&srv, "m1", &file).await;
    let id = BlobId::new("m1").unwrap();
    request(
        &srv,
        &srv.user_token,
        "POST",
        "/blobs/alice/m1?namespace=MX",
        br#"["PENDING","PROCESSING"]"#.to_vec(),
    )
    .await;
    a.engine.run_cycle().await;
    a.cycle_after(1).await;
    let info = a.info_ns(&mx(), "m1").await.unwrap();
    assert_eq!(info.status, Status::Synced, "{info:?}");
    assert!(info.external);
    assert_eq!(a.read_ns(&mx(), "m1", false).await, plain);
    let stored = server_copy(&srv, "m1").await;
    assert!(!stored.starts_with(b"age-encryption.org/v1"));
    assert_eq!(
        a.handle.get_flags(&mx(), &id).await.unwrap(),
        vec![Flag::Pending, Flag::Processing],
        "flags survive the adoption"
    );
    // Another device takes the format-v1 copy as it is: nothing to adopt any more.
    let b = device(&tmp.path().join("b"), &srv, &clock).await;
    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 1, "{s:?}");
    assert_eq!(s.uploaded, 0, "{s:?}");
    let info = b.info_ns(&mx(), "m1").await.unwrap();
    assert_eq!(info.status, Status::Synced);
    assert!(info.external);
    assert_eq!(b.read_ns(&mx(), "m1", false).await, plain);
    assert_eq!(server_copy(&srv, "m1").await, stored, "b adopted nothing");
    // A damaged delivery is InvalidBlob, retried, then FAILED_DOWNLOAD; nothing handed out.
    let mut bad = age_file(&bytes(100_000, 4));
    let n = bad.len();
    bad[n - 5] ^= 0x40;
    deliver(&srv, "bad", &bad).await;
    for _ in 0..5 {
        a.cycle_after(120).await;
    }
    let info = a.info_ns(&mx(), "bad").await.unwrap();
    assert_eq!(info.status, Status::FailedDownload, "{info:?}");
    assert!(
        info.last_error
            .as_deref()
            .unwrap_or("")
            .contains("invalid incoming delivery"),
        "{info:?}"
    );
    assert!(
        a.handle
            .open_for_read(&mx(), &BlobId::new("bad").unwrap(), None, false)
            .await
            .is_err()
    );
    assert_eq!(server_copy(&srv, "bad").await, bad, "nothing adopted");
    let _ = srv.state.index();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_survives_a_crash_at_every_step() {
    for point in [
        "download.after_install",
        "incoming.before_adopt",
        "incoming.after_adopt",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let srv = start_server(tmp.path()).await;
        let clock = ManualClock::default();
        let da = tmp.path().join("a");
        let plain = bytes(150_000, 9);
        let file = age_file(&plain);
        let delivered_at = deliver(&srv, "m1", &file).await;
        {
            let a = device(&da, &srv, &clock).await;
            a.engine.arm_crash_point(point);
            a.engine.run_cycle().await;
            a.cycle_after(1).await;
            let info = a.info_ns(&mx(), "m1").await.unwrap();
            assert_ne!(
                info.status,
                Status::Synced,
                "{point}: the crash point never fired"
            );
        }
        let a = device(&da, &srv, &clock).await;
        for _ in 0..3 {
            a.cycle_after(120).await;
        }
        let info = a.info_ns(&mx(), "m1").await.unwrap();
        assert_eq!(info.status, Status::Synced, "{point}: {info:?}");
        assert_eq!(a.read_ns(&mx(), "m1", false).await, plain, "{point}");
        assert!(
            !server_copy(&srv, "m1")
                .await
                .starts_with(b"age-encryption.org/v1"),
            "{point}: not adopted"
        );
        // Adopted exactly once: one change after the delivery.
        let ch: ChangesResponse = serde_json::from_slice(
            &request(
                &srv,
                &srv.user_token,
                "GET",
                &format!("/blobs/alice?namespace=MX&since={delivered_at}"),
                vec![],
            )
            .await
            .1,
        )
        .unwrap();
        assert_eq!(ch.changes.len(), 1, "{point}: {ch:?}");
        assert!(ch.changes[0].external, "{point}");
        // Nothing half-done is left behind: no partial or temp files.
        let tmp_left: Vec<_> = std::fs::read_dir(da.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(tmp_left.is_empty(), "{point}: {tmp_left:?}");
        // A second device agrees.
        let b = device(&tmp.path().join("b"), &srv, &clock).await;
        b.engine.run_cycle().await;
        assert_eq!(b.read_ns(&mx(), "m1", false).await, plain, "{point}");
    }
}

/// The tamper case of the issue: after the adoption, the server swaps the age file back in
/// (under the adopted row). The device that adopted keeps its copy; a new device ends in a
/// failed state with the reason (the served bytes no longer match what the server lists, so
/// they fail verification; had they matched, its adoption would be refused and the conflict
/// kept), and never loops adopting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_swaps_the_age_file_back_after_adoption_gets_no_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let clock = ManualClock::default();
    let plain = bytes(30_000, 5);
    let file = age_file(&plain);
    deliver(&srv, "m1", &file).await;
    let a = device(&tmp.path().join("a"), &srv, &clock).await;
    a.engine.run_cycle().await;
    a.cycle_after(1).await;
    assert_eq!(a.info_ns(&mx(), "m1").await.unwrap().status, Status::Synced);
    // The operator puts the age file back under the adopted blob (same index row) and sets
    // the row's size to the file's: an honest server refuses to serve a file whose size is
    // not its row's (it was replaced after the lookup), a hostile one serves what it likes.
    let path = tmp.path().join("server/alice/MX/m/m1/m1");
    assert!(path.exists(), "server layout changed: {}", path.display());
    std::fs::write(&path, &file).unwrap();
    let index = rusqlite::Connection::open(tmp.path().join("server/index.sqlite3")).unwrap();
    index
        .busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let rows = index
        .execute(
            "UPDATE blobs SET size = ?1 WHERE user = 'alice' AND namespace = 'MX' AND id = 'm1'",
            [file.len() as i64],
        )
        .unwrap();
    assert_eq!(rows, 1, "the adopted row");

    let c = device(&tmp.path().join("c"), &srv, &clock).await;
    let mut puts = Vec::new();
    for _ in 0..4 {
        c.cycle_after(120).await;
        puts.push(
            c.remote
                .faults
                .puts
                .load(std::sync::atomic::Ordering::SeqCst),
        );
    }
    let info = c.info_ns(&mx(), "m1").await.unwrap();
    assert!(
        matches!(info.status, Status::FailedDownload | Status::FailedUpload),
        "{info:?}"
    );
    assert!(info.last_error.is_some(), "{info:?}");
    assert_eq!(
        puts[2], puts[3],
        "no adoption attempts once failed: {puts:?}"
    );
    if info.status == Status::FailedDownload {
        assert!(
            c.handle
                .open_for_read(&mx(), &BlobId::new("m1").unwrap(), None, false)
                .await
                .is_err(),
            "nothing handed out"
        );
    }
    assert_eq!(
        a.read_ns(&mx(), "m1", false).await,
        plain,
        "a is not affected"
    );
}

/// Deliveries whose number reaches the batch size: delivered with one damaged and one
/// encrypted to another recipient among them.
async fn deliver_group(srv: &TestServer, n: usize) -> (Vec<Vec<u8>>, u64) {
    let mut plains = Vec::new();
    let mut at = 0;
    for i in 0..n {
        let plain = bytes(10_000 + i, i as u8);
        at = deliver(srv, &format!("g{i:02}"), &age_file(&plain)).await;
        plains.push(plain);
    }
    (plains, at)
}

/// The server's changes of `MX` after `since`.
async fn changes_since(srv: &TestServer, since: u64) -> ChangesResponse {
    serde_json::from_slice(
        &request(
            srv,
            &srv.user_token,
            "GET",
            &format!("/blobs/alice?namespace=MX&since={since}"),
            vec![],
        )
        .await
        .1,
    )
    .unwrap()
}

/// Issue 20: a group of deliveries is fetched in one `/stream` batch, decrypted and installed
/// together, and adopted in one batch; a tampered delivery and one encrypted to someone else
/// in the same group fail alone, as the contract says (retried, then `FAILED_DOWNLOAD`,
/// nothing handed out, the age file left on the server), and the others are adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_deliveries_is_adopted_in_batches_and_a_tampered_one_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let clock = ManualClock::default();
    let (plains, _) = deliver_group(&srv, 10).await;
    let mut tampered = age_file(&bytes(20_000, 77));
    let n = tampered.len();
    tampered[n - 40] ^= 0x01;
    deliver(&srv, "tampered", &tampered).await;
    let stranger = {
        let other = IncomingIdentity::derive(&blobsync_shared::StorageKey::from_bytes([9u8; 32]))
            .recipient();
        let r = age::x25519::Recipient::from_str(&other).unwrap();
        let e =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        w.write_all(&bytes(5_000, 3)).unwrap();
        w.finish().unwrap();
        out
    };
    deliver(&srv, "stranger", &stranger).await;
    let a = device(&tmp.path().join("a"), &srv, &clock).await;
    let gets = |d: &Device<HttpRemote>| {
        let f = &d.remote.faults;
        f.gets.load(std::sync::atomic::Ordering::SeqCst)
            - f.ranged_gets.load(std::sync::atomic::Ordering::SeqCst)
    };
    let s = a.engine.run_cycle().await;
    assert_eq!(s.downloaded, 10, "{s:?}");
    assert_eq!(s.uploaded, 10, "{s:?}");
    assert_eq!(gets(&a), 0, "fetched in a batch, not one GET a delivery");
    assert!(
        a.remote
            .faults
            .batches
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    for (i, plain) in plains.iter().enumerate() {
        let id = format!("g{i:02}");
        let info = a.info_ns(&mx(), &id).await.unwrap();
        assert_eq!(info.status, Status::Synced, "{info:?}");
        assert!(info.external);
        assert_eq!(&a.read_ns(&mx(), &id, false).await, plain, "{id}");
        assert!(
            !server_copy(&srv, &id)
                .await
                .starts_with(b"age-encryption.org/v1"),
            "{id}: not adopted"
        );
    }
    for _ in 0..5 {
        a.cycle_after(120).await;
    }
    for (id, file) in [("tampered", &tampered), ("stranger", &stranger)] {
        let info = a.info_ns(&mx(), id).await.unwrap();
        assert_eq!(info.status, Status::FailedDownload, "{id}: {info:?}");
        assert!(
            info.last_error
                .as_deref()
                .unwrap_or("")
                .contains("invalid incoming delivery"),
            "{id}: {info:?}"
        );
        assert!(
            a.handle
                .open_for_read(&mx(), &BlobId::new(id).unwrap(), None, false)
                .await
                .is_err(),
            "{id}: nothing handed out"
        );
        assert_eq!(&server_copy(&srv, id).await, file, "{id}: nothing adopted");
    }
    // Nothing half-done left behind.
    let tmp_left: Vec<_> = std::fs::read_dir(tmp.path().join("a/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(tmp_left.is_empty(), "{tmp_left:?}");
}

/// Two devices take in the same group at once: each delivery is adopted exactly once, the
/// loser of each race takes the winner's copy (in a batch too), and both hold every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_adopting_one_group_adopt_each_delivery_once() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(tmp.path()).await;
    let clock = ManualClock::default();
    let a = device(&tmp.path().join("a"), &srv, &clock).await;
    let b = device(&tmp.path().join("b"), &srv, &clock).await;
    a.engine.run_cycle().await;
    b.engine.run_cycle().await;
    let start = changes_since(&srv, 0).await.seq;
    let (plains, delivered_at) = deliver_group(&srv, 12).await;
    tokio::join!(a.engine.run_cycle(), b.engine.run_cycle());
    for _ in 0..3 {
        a.cycle_after(120).await;
        b.cycle_after(0).await;
    }
    for (i, plain) in plains.iter().enumerate() {
        let id = format!("g{i:02}");
        for d in [&a, &b] {
            let info = d.info_ns(&mx(), &id).await.unwrap();
            assert_eq!(info.status, Status::Synced, "{info:?}");
            assert_eq!(&d.read_ns(&mx(), &id, false).await, plain, "{id}");
        }
    }
    let ch = changes_since(&srv, delivered_at).await;
    assert_eq!(ch.changes.len(), 12, "one adoption each: {ch:?}");
    assert!(ch.changes.iter().all(|c| c.external));
    assert!(start < delivered_at);
}

/// The crash points of the adoption, hit in the batch path (a group of deliveries): a
/// restart loses nothing, and each delivery is adopted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_adoption_survives_a_crash_at_every_step() {
    for point in [
        "download.after_install",
        "incoming.before_adopt",
        "incoming.after_adopt",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let srv = start_server(tmp.path()).await;
        let clock = ManualClock::default();
        let da = tmp.path().join("a");
        let (plains, delivered_at) = deliver_group(&srv, 9).await;
        {
            let a = device(&da, &srv, &clock).await;
            a.engine.arm_crash_point(point);
            a.engine.run_cycle().await;
            a.cycle_after(1).await;
            let synced = {
                let mut n = 0;
                for i in 0..plains.len() {
                    let info = a.info_ns(&mx(), &format!("g{i:02}")).await.unwrap();
                    n += usize::from(info.status == Status::Synced);
                }
                n
            };
            assert!(
                synced < plains.len(),
                "{point}: the crash point never fired"
            );
        }
        let a = device(&da, &srv, &clock).await;
        for _ in 0..3 {
            a.cycle_after(120).await;
        }
        for (i, plain) in plains.iter().enumerate() {
            let id = format!("g{i:02}");
            let info = a.info_ns(&mx(), &id).await.unwrap();
            assert_eq!(info.status, Status::Synced, "{point} {id}: {info:?}");
            assert_eq!(&a.read_ns(&mx(), &id, false).await, plain, "{point} {id}");
            assert!(
                !server_copy(&srv, &id)
                    .await
                    .starts_with(b"age-encryption.org/v1"),
                "{point} {id}: not adopted"
            );
        }
        let ch = changes_since(&srv, delivered_at).await;
        assert_eq!(ch.changes.len(), plains.len(), "{point}: {ch:?}");
        let tmp_left: Vec<_> = std::fs::read_dir(da.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(tmp_left.is_empty(), "{point}: {tmp_left:?}");
    }
}
