//! The conditional put `if_absent_since=SEQ` (the resurrection guard of retried uploads), on
//! `PUT /blobs/{user}/{id}` and on `/stream` uploads, against the in-process server (real
//! SQLite index, real payload files in a temp dir).

mod common;

use std::collections::BTreeMap;

use blobsync_shared::BlobId;
use blobsync_shared::wire::{ChangeOp, ChangesResponse, encode_upload_header};
use bytes::Bytes;
use common::{ReqBody, TestServer};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};

fn stream_body(blobs: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<(BlobId, u64)> = blobs
        .iter()
        .map(|(i, b)| (BlobId::new(*i).unwrap(), b.len() as u64))
        .collect();
    let mut out = encode_upload_header(&entries);
    for (_, b) in blobs {
        out.extend_from_slice(b);
    }
    out
}

/// The ids of the live listing.
async fn live(s: &TestServer, t: &str) -> Vec<String> {
    s.get("/blobs/alice", t).await.json()
}

both_backends! {
#[tokio::test]
async fn put_refuses_an_id_deleted_after_since_and_stores_otherwise() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    assert_eq!(s.put("/blobs/alice/x", &t, "first").await.status, 201); // seq 1
    assert_eq!(s.delete("/blobs/alice/x", &t).await.status, 200); // seq 2

    // Deleted at seq 2, after 1: refused, nothing stored, the tombstone stays.
    let r = s.put("/blobs/alice/x?if_absent_since=1", &t, "again").await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(
        r.text().contains(
            "blob x in namespace default was deleted at seq 2, after 1; not recreating it"
        ),
        "{}",
        r.text()
    );
    assert!(live(&s, &t).await.is_empty());
    assert_eq!(s.get("/blobs/alice/x", &t).await.status, 404);
    // A big body gets the 412 too, not a connection cut mid-send: the client must be able
    // to tell "deleted" from a network fault.
    let r = s
        .put("/blobs/alice/x?if_absent_since=1", &t, vec![7u8; 8 << 20])
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
    let ch: ChangesResponse = s.get("/blobs/alice?since=0", &t).await.json();
    assert_eq!(ch.seq, 2, "a refused put takes no sequence number");
    assert_eq!(ch.changes[0].op, ChangeOp::Delete);

    // Deleted at or before since: an ordinary put (delete then put again is how a blob is
    // replaced).
    let r = s
        .put("/blobs/alice/x?if_absent_since=2", &t, "replacement")
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(&s.get("/blobs/alice/x", &t).await.body[..], b"replacement");

    // A live id is today's 409, whatever since says.
    let r = s.put("/blobs/alice/x?if_absent_since=0", &t, "other").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("already exists"), "{}", r.text());

    // An id never seen is stored, even with since=0.
    let r = s.put("/blobs/alice/new?if_absent_since=0", &t, "n").await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Other namespaces have their own tombstones.
    s.put("/blobs/alice/y?namespace=photos", &t, "p").await;
    s.delete("/blobs/alice/y?namespace=photos", &t).await;
    let r = s.put("/blobs/alice/y?if_absent_since=0", &t, "d").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = s
        .put("/blobs/alice/y?namespace=photos&if_absent_since=0", &t, "d")
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
}
}

both_backends! {
#[tokio::test]
async fn bad_if_absent_since_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    for bad in ["abc", "-1", "1.5", "", "18446744073709551616"] {
        let r = s
            .put(&format!("/blobs/alice/x?if_absent_since={bad}"), &t, "x")
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(
            r.text().contains("if_absent_since") && r.text().contains("not a sequence number"),
            "{bad:?}: {}",
            r.text()
        );
        let r = s
            .post(
                &format!("/stream/alice?direction=upload&if_absent_since={bad}"),
                &t,
                stream_body(&[("x", b"x")]),
            )
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
    let r = s
        .post(
            "/stream/alice?direction=download&if_absent_since=1",
            &t,
            "[\"x\"]",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("uploads only"), "{}", r.text());
    // Not a parameter of /incoming (the app delivers, it does not retry our uploads).
    let app = s.add_app("mail").await;
    let r = s
        .put("/incoming/alice/m1?if_absent_since=1", &app, "mail")
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(live(&s, &t).await.is_empty());
}
}

both_backends! {
#[tokio::test]
async fn stream_upload_applies_if_absent_since_to_every_entry() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    s.put("/blobs/alice/old", &t, "o").await; // seq 1
    s.delete("/blobs/alice/old", &t).await; // seq 2
    s.put("/blobs/alice/live", &t, "l").await; // seq 3
    s.put("/blobs/alice/gone", &t, "g").await; // seq 4
    s.delete("/blobs/alice/gone", &t).await; // seq 5

    let b = stream_body(&[
        ("old", b"o2"),
        ("live", b"l2"),
        ("gone", b"g2"),
        ("fresh", b"f"),
    ]);
    let r = s
        .post("/stream/alice?direction=upload&if_absent_since=3", &t, b)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let st: BTreeMap<String, u16> = r.json();
    assert_eq!(
        st.into_iter().collect::<Vec<_>>(),
        [
            ("fresh".into(), 201),
            ("gone".into(), 412),
            ("live".into(), 409),
            ("old".into(), 201),
        ]
    );
    assert_eq!(live(&s, &t).await, ["fresh", "live", "old"]);

    // Without the parameter a stream upload recreates a tombstoned id as before.
    let r = s
        .post(
            "/stream/alice?direction=upload",
            &t,
            stream_body(&[("gone", b"g3")]),
        )
        .await;
    assert_eq!(r.json::<BTreeMap<String, u16>>()["gone"], 201);
}
}

/// The check that counts is the one under the index's writer lock: a delete that lands while
/// the body is still uploading (after the early look-up passed) is caught at the commit.
#[tokio::test]
async fn a_delete_during_the_upload_is_caught_at_the_commit() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body: ReqBody = BodyExt::boxed(StreamBody::new(
        chunks.map(|r| r.map(hyper::body::Frame::data)),
    ));
    let client = s.client.clone();
    let url = s.url("/blobs/alice/x?if_absent_since=0");
    let tok = t.clone();
    let slow =
        tokio::spawn(
            async move { common::send(&client, "PUT", &url, Some(&tok), body, &[]).await },
        );
    tx.send(Ok(Bytes::from_static(b"first half ")))
        .await
        .unwrap();
    // The server counts body bytes only once the early look-up has passed: wait for that, so
    // the delete below lands during the upload and only the commit-time check can catch it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s
        .state
        .metrics()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed)
        < 11
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never got past the early look-up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Meanwhile another device puts x and deletes it: seq 1 and 2.
    assert_eq!(s.put("/blobs/alice/x", &t, "theirs").await.status, 201);
    assert_eq!(s.delete("/blobs/alice/x", &t).await.status, 200);
    tx.send(Ok(Bytes::from_static(b"second half")))
        .await
        .unwrap();
    drop(tx);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(
        r.text().contains("deleted at seq 2, after 0"),
        "{}",
        r.text()
    );
    assert!(live(&s, &t).await.is_empty());
    // The refused upload's temp file was removed.
    let dir = s.into_dir().await;
    let report = blobsync_server::fsck::fsck(&dir.path().join("data"), false).unwrap();
    assert!(report.is_clean(), "{}", report.render());
}
