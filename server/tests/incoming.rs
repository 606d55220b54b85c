//! The incoming box on the server: age-only delivery (with its hash kept), the published
//! recipient (`/keys/{user}/incoming`) and the conditional replace that adopts a delivery.

mod common;

use std::io::Write;
use std::str::FromStr;

use blobsync_shared::StorageKey;
use blobsync_shared::incoming::IncomingIdentity;
use blobsync_shared::wire::{BlobDetail, ChangesResponse, Flag};
use common::TestServer;

fn identity() -> IncomingIdentity {
    IncomingIdentity::derive(&StorageKey::from_bytes([3; 32]))
}

fn age_file(recipient: &str, plain: &[u8]) -> Vec<u8> {
    let r = age::x25519::Recipient::from_str(recipient).unwrap();
    let e = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = e.wrap_output(&mut out).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap();
    out
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

both_backends! {
#[tokio::test]
async fn recipient_is_published_by_the_user_and_read_by_apps() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None).await;
    let bob = s.add_user("bob", None).await;
    let app = s.add_app("mail").await;
    let r = s.get("/keys/alice/incoming", &app).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.text().contains("no incoming recipient yet"),
        "{}",
        r.text()
    );

    let rcpt = identity().recipient();
    let r = s.put("/keys/alice/incoming", &alice, "not a key").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("age1"), "{}", r.text());
    // A secret key is not a recipient either.
    let r = s
        .put("/keys/alice/incoming", &alice, identity().secret_string())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        s.put("/keys/alice/incoming", &bob, rcpt.clone())
            .await
            .status,
        403
    );
    let r = s.put("/keys/alice/incoming", &app, rcpt.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        s.put("/keys/alice/incoming", &alice, format!("{rcpt}\n"))
            .await
            .status,
        200
    );
    for t in [&app, &alice] {
        let r = s.get("/keys/alice/incoming", t).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text().trim(), rcpt);
    }
    assert_eq!(s.get("/keys/alice/incoming", &bob).await.status, 403);
}
}

#[tokio::test]
async fn incoming_takes_only_age_files_and_stores_nothing_else() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None).await;
    let app = s.add_app("mail").await;
    for bad in [
        &b"-----BEGIN PGP MESSAGE-----"[..],
        b"",
        b"age-encryption.org/v1",
        b"age-encryption.org/v10\n",
        b"-----BEGIN AGE ENCRYPTED FILE-----\n",
    ] {
        let r = s.put("/incoming/alice/m1", &app, bad.to_vec()).await;
        assert_eq!(r.status, 400, "{:?}: {}", bad, r.text());
        assert!(r.text().contains("must be an age file"), "{}", r.text());
    }
    let d: Vec<BlobDetail> = s
        .get("/blobs/alice?namespace=MX&detail=1", &alice)
        .await
        .json();
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        std::fs::read_dir(s.data_dir().join("alice"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "a refused delivery leaves no file"
    );
    let file = age_file(&identity().recipient(), b"hello");
    let r = s.put("/incoming/alice/m1", &app, file.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.header("x-blobsync-seq").is_some());
    let r = s
        .put("/incoming/alice/m2?namespace=other", &app, file)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

both_backends! {
#[tokio::test]
async fn replace_external_adopts_once_keeping_flags_and_the_external_mark() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None).await;
    let app = s.add_app("mail").await;
    let file = age_file(&identity().recipient(), b"a message");
    let h = sha256_hex(&file);
    assert_eq!(
        s.put("/incoming/alice/m1", &app, file.clone()).await.status,
        201
    );
    assert_eq!(
        s.post(
            "/blobs/alice/m1?namespace=MX",
            &alice,
            r#"["PENDING","PROCESSING"]"#
        )
        .await
        .status,
        200
    );
    let before: ChangesResponse = s
        .get("/blobs/alice?namespace=MX&since=0", &alice)
        .await
        .json();

    // Bad hashes: malformed is 400, stale is 412, a missing id 404; nothing changes.
    let r = s
        .put(
            "/blobs/alice/m1?namespace=MX&replace_external=XYZ",
            &alice,
            "v1",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let stale = sha256_hex(b"another file");
    let r = s
        .put(
            &format!("/blobs/alice/m1?namespace=MX&replace_external={stale}"),
            &alice,
            "v1",
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(r.text().contains("is not the age file"), "{}", r.text());
    let r = s
        .put(
            &format!("/blobs/alice/nope?namespace=MX&replace_external={h}"),
            &alice,
            "v1",
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        &s.get("/blobs/alice/m1?namespace=MX", &alice).await.body[..],
        &file[..]
    );

    let path = format!("/blobs/alice/m1?namespace=MX&replace_external={h}");
    let r = s.put(&path, &alice, "the format-v1 copy").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let seq: u64 = r.header("x-blobsync-seq").unwrap().parse().unwrap();
    assert!(seq > before.seq);
    assert_eq!(
        &s.get("/blobs/alice/m1?namespace=MX", &alice).await.body[..],
        b"the format-v1 copy"
    );
    // One change, one new seq, still external, flags kept.
    let after: ChangesResponse = s
        .get(
            &format!("/blobs/alice?namespace=MX&since={}", before.seq),
            &alice,
        )
        .await
        .json();
    assert_eq!(after.changes.len(), 1, "{after:?}");
    assert_eq!(after.changes[0].seq, seq);
    assert!(after.changes[0].external);
    assert_eq!(after.changes[0].size, 18);
    let d: Vec<BlobDetail> = s
        .get("/blobs/alice?namespace=MX&detail=1", &alice)
        .await
        .json();
    assert_eq!(d[0].flags, [Flag::Pending, Flag::Processing]);
    // The other device's adoption of the same delivery loses: 412, the winner's copy stays.
    let r = s.put(&path, &alice, "the loser's copy").await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(
        &s.get("/blobs/alice/m1?namespace=MX", &alice).await.body[..],
        b"the format-v1 copy"
    );
    // A blob that was never delivered cannot be "adopted" over.
    assert_eq!(
        s.put("/blobs/alice/own?namespace=MX", &alice, "x")
            .await
            .status,
        201
    );
    let r = s
        .put(
            &format!(
                "/blobs/alice/own?namespace=MX&replace_external={}",
                sha256_hex(b"x")
            ),
            &alice,
            "y",
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
    // An app token cannot replace anything.
    let r = s.put(&path, &app, "app").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let usage = s.state.index().usage("alice").await.unwrap().unwrap().0;
    assert_eq!(usage, 18 + 1);
}
}

both_backends! {
#[tokio::test]
async fn concurrent_adoptions_exactly_one_wins() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None).await;
    let app = s.add_app("mail").await;
    let file = age_file(&identity().recipient(), b"race");
    assert_eq!(
        s.put("/incoming/alice/m1", &app, file.clone()).await.status,
        201
    );
    let path = format!(
        "/blobs/alice/m1?namespace=MX&replace_external={}",
        sha256_hex(&file)
    );
    let (a, b) = tokio::join!(
        s.put(&path, &alice, "from A"),
        s.put(&path, &alice, "from B")
    );
    let mut st = [a.status, b.status];
    st.sort();
    assert_eq!(st, [201, 412], "{} / {}", a.text(), b.text());
    let winner = if a.status == 201 { "from A" } else { "from B" };
    assert_eq!(
        &s.get("/blobs/alice/m1?namespace=MX", &alice).await.body[..],
        winner.as_bytes()
    );
}
}

both_backends! {
#[tokio::test]
async fn replace_respects_max_size_and_quota() {
    let file = age_file(&identity().recipient(), b"q");
    let s = TestServer::start_with(|c| c.max_blob_size = file.len() as u64 + 100).await;
    let alice = s.add_user("alice", Some(file.len() as u64 + 50)).await;
    let app = s.add_app("mail").await;
    assert_eq!(
        s.put("/incoming/alice/m1", &app, file.clone()).await.status,
        201
    );
    let path = format!(
        "/blobs/alice/m1?namespace=MX&replace_external={}",
        sha256_hex(&file)
    );
    let r = s.put(&path, &alice, vec![0u8; file.len() + 101]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = s.put(&path, &alice, vec![0u8; file.len() + 60]).await;
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(
        &s.get("/blobs/alice/m1?namespace=MX", &alice).await.body[..],
        &file[..]
    );
    assert_eq!(
        s.put(&path, &alice, vec![0u8; file.len() + 40])
            .await
            .status,
        201
    );
}
}
