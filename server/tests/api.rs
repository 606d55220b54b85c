//! The HTTP API (server/README.md), driven over loopback with a real hyper client against the
//! in-process server. Tests in `both_backends!` run twice: on `fs+sqlite` (real SQLite index,
//! real payload files in a temp dir) and on `s3+postgres` (a real Garage and PostgreSQL,
//! started for the test); the rest are about one node's files or limits.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use blobsync_shared::BlobId;
use blobsync_shared::wire::{
    BlobDetail, ChangeOp, ChangesResponse, CountResponse, Flag, NamespacesResponse,
    encode_upload_header,
};
use bytes::Bytes;
use common::{TestServer, body, decode_frames};

fn id(s: &str) -> BlobId {
    BlobId::new(s).unwrap()
}

both_backends! {
#[tokio::test]
async fn put_get_list_delete_round_trip() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let r = s.put("/blobs/alice/b1", &t, "hello world").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-blobsync-seq"), Some("1"));
    s.put("/blobs/alice/a0", &t, "").await;
    let r = s.get("/blobs/alice/b1", &t).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
    assert_eq!(r.header("content-length"), Some("11"));
    let r = s.get("/blobs/alice/a0", &t).await;
    assert_eq!((r.status, r.body.len()), (200, 0));

    assert_eq!(
        s.get("/blobs/alice", &t).await.json::<Vec<String>>(),
        ["a0", "b1"]
    );
    let d: Vec<BlobDetail> = s.get("/blobs/alice?detail=1", &t).await.json();
    assert_eq!(d[1].id, id("b1"));
    assert_eq!(d[1].size, 11);
    assert!(d[1].flags.is_empty());
    let c: CountResponse = s.get("/blobs/alice?only_count=1", &t).await.json();
    assert_eq!(c.count, 2);

    // fs: the payload sits in Soledad's layout, and is gone after the delete.
    let p = s.data_dir().join("alice/default/b/b1/b1");
    if s.engines.is_none() {
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
    }

    let r = s.delete("/blobs/alice/b1", &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!p.exists());
    assert_eq!(s.get("/blobs/alice/b1", &t).await.status, 404);
    assert_eq!(s.delete("/blobs/alice/b1", &t).await.status, 404);
    assert_eq!(
        s.get("/blobs/alice", &t).await.json::<Vec<String>>(),
        ["a0"]
    );
    assert_eq!(
        s.get("/blobs/alice?deleted=1", &t)
            .await
            .json::<Vec<String>>(),
        ["b1"]
    );
    // Delete then put again is how a blob is replaced.
    assert_eq!(s.put("/blobs/alice/b1", &t, "v2").await.status, 201);
    assert_eq!(&s.get("/blobs/alice/b1", &t).await.body[..], b"v2");
}
}

both_backends! {
#[tokio::test]
async fn namespaces_are_separate() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    assert_eq!(
        s.put("/blobs/alice/x?namespace=n1", &t, "1").await.status,
        201
    );
    assert_eq!(
        s.put("/blobs/alice/x?namespace=n2", &t, "22").await.status,
        201
    );
    assert_eq!(
        &s.get("/blobs/alice/x?namespace=n2", &t).await.body[..],
        b"22"
    );
    assert_eq!(s.get("/blobs/alice/x", &t).await.status, 404);
    assert_eq!(
        s.get("/blobs/alice?namespace=n1", &t)
            .await
            .json::<Vec<String>>(),
        ["x"]
    );
    assert!(
        s.get("/blobs/alice", &t)
            .await
            .json::<Vec<String>>()
            .is_empty()
    );
}
}

both_backends! {
#[tokio::test]
async fn namespaces_lists_the_users_namespaces_with_blobs_or_tombstones() {
    let s = TestServer::start().await;
    let a = s.add_user("alice", None).await;
    let b = s.add_user("bob", None).await;
    // A user with nothing yet has no namespaces (not even `default`).
    let r = s.get("/blobs/alice?namespaces=1", &a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json::<Vec<String>>().is_empty());
    for (path, tok) in [
        ("/blobs/alice/p1?namespace=photos", &a),
        ("/blobs/alice/p2?namespace=photos", &a),
        ("/blobs/alice/d1", &a),
        ("/blobs/alice/gone?namespace=old", &a),
        ("/blobs/bob/x?namespace=bobs", &b),
    ] {
        assert_eq!(s.put(path, tok, "x").await.status, 201);
    }
    // A namespace with only a tombstone left still counts: its deletion must reach devices.
    assert_eq!(
        s.delete("/blobs/alice/gone?namespace=old", &a).await.status,
        200
    );
    let ns: NamespacesResponse = s.get("/blobs/alice?namespaces=true", &a).await.json();
    let ns: Vec<&str> = ns.iter().map(|n| n.as_str()).collect();
    assert_eq!(
        ns,
        ["default", "old", "photos"],
        "bob's namespace stays his"
    );
    // Another user's namespaces are 403 like every other listing.
    assert_eq!(s.get("/blobs/bob?namespaces=1", &a).await.status, 403);
    // It takes no other parameter; namespaces=0 is the ordinary listing.
    let r = s
        .get("/blobs/alice?namespaces=1&namespace=photos", &a)
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("namespaces cannot be combined with namespace"),
        "{}",
        r.text()
    );
    assert_eq!(s.get("/blobs/alice?namespaces=maybe", &a).await.status, 400);
    assert_eq!(
        s.get("/blobs/alice?namespaces=0", &a)
            .await
            .json::<Vec<String>>(),
        ["d1"]
    );
}
}

both_backends! {
#[tokio::test]
async fn auth_errors_are_401_and_403() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None).await;
    let app = s.add_app("mx").await;
    let r = s.req("GET", "/blobs/alice", None, body(""), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.text().contains("Authorization"), "{}", r.text());
    let r = s.get("/blobs/alice", "not-a-token").await;
    assert_eq!(r.status, 401);
    let r = s
        .req(
            "GET",
            "/blobs/alice",
            None,
            body(""),
            &[("authorization", "Basic abc")],
        )
        .await;
    assert_eq!(r.status, 401);
    let r = s.get("/blobs/bob", &alice).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("alice"), "{}", r.text());
    // An app token is only for /incoming; a user token never is.
    assert_eq!(s.get("/blobs/alice", &app).await.status, 403);
    assert_eq!(s.put("/blobs/alice/x", &app, "x").await.status, 403);
    assert_eq!(s.put("/incoming/alice/x", &alice, "x").await.status, 403);
    assert_eq!(
        s.req(
            "POST",
            "/stream/alice?direction=download",
            None,
            body("[]"),
            &[]
        )
        .await
        .status,
        401
    );
    // /healthz needs no token; /metrics needs one.
    let r = s.req("GET", "/healthz", None, body(""), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_eq!(
        s.req("GET", "/metrics", None, body(""), &[]).await.status,
        401
    );
}
}

both_backends! {
#[tokio::test]
async fn bad_input_is_400_with_a_clear_message() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let cases = [
        ("GET", "/blobs/alice/bad.id", "blob id"),
        ("PUT", "/blobs/alice/..", "blob id"),
        ("GET", "/blobs/alice/x%2F..", "blob id"),
        ("GET", "/blobs/alice?namespace=a/b", "namespace"),
        ("GET", "/blobs/alice?bogus=1", "unknown query parameter"),
        ("GET", "/blobs/alice?limit=0", "limit"),
        ("GET", "/blobs/alice?limit=abc", "limit"),
        ("GET", "/blobs/alice?since=-1", "since"),
        ("GET", "/blobs/alice?order_by=size", "order_by"),
        ("GET", "/blobs/alice?filter_flag=NOPE", "flag"),
        ("GET", "/blobs/alice?detail=maybe", "boolean"),
        (
            "GET",
            "/blobs/alice?since=0&deleted=1",
            "since cannot be combined",
        ),
        ("GET", "/blobs/alice?namespace=a&namespace=b", "twice"),
        ("GET", "/blobs/alice?order_by=date&after=nothere", "after"),
        ("POST", "/stream/alice", "direction"),
        ("POST", "/stream/alice?direction=sideways", "direction"),
        ("POST", "/blobs/alice/x", "JSON list"),
    ];
    for (m, p, want) in cases {
        let r = s.req(m, p, Some(&t), body("nope"), &[]).await;
        assert_eq!(r.status, 400, "{m} {p}: {}", r.text());
        assert!(
            r.text().contains(want),
            "{m} {p}: {:?} lacks {want:?}",
            r.text()
        );
    }
    // Routing errors.
    assert_eq!(s.get("/nothing", &t).await.status, 404);
    let r = s
        .req("PATCH", "/blobs/alice/x", Some(&t), body(""), &[])
        .await;
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("PUT"));
    // Nothing was stored by any of it.
    assert!(
        s.get("/blobs/alice", &t)
            .await
            .json::<Vec<String>>()
            .is_empty()
    );
}
}

both_backends! {
#[tokio::test]
async fn put_conflict_size_and_quota_errors() {
    let s = TestServer::start_with(|c| c.max_blob_size = 1000).await;
    let t = s.add_user("alice", Some(1500)).await;
    assert_eq!(
        s.put("/blobs/alice/a", &t, vec![1u8; 1000]).await.status,
        201
    );
    let r = s.put("/blobs/alice/a", &t, "x").await;
    assert_eq!(r.status, 409);
    assert!(r.text().contains("already exists"), "{}", r.text());
    // 413 by Content-Length and by a streamed (chunked) body that grows too big.
    let r = s.put("/blobs/alice/big", &t, vec![0u8; 1001]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..5)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![0u8; 300]))))
        .collect();
    let streamed = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
        futures_util::stream::iter(chunks),
    ));
    // (bob has no quota: for alice the 507 of the running quota check would come first.)
    let bob = s.add_user("bob", None).await;
    let r = s
        .req("PUT", "/blobs/bob/big2", Some(&bob), streamed, &[])
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // 507 over quota (1000 used of 1500).
    let r = s.put("/blobs/alice/q", &t, vec![0u8; 600]).await;
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(
        s.put("/blobs/alice/q", &t, vec![0u8; 500]).await.status,
        201
    );
    // Deleting frees quota.
    s.delete("/blobs/alice/a", &t).await;
    assert_eq!(
        s.put("/blobs/alice/q2", &t, vec![0u8; 900]).await.status,
        201
    );
    // None of the rejected bodies left a file or an entry.
    let ids: Vec<String> = s.get("/blobs/alice", &t).await.json();
    assert_eq!(ids, ["q", "q2"]);
}
}

both_backends! {
#[tokio::test]
async fn default_quota_applies_to_users_without_their_own() {
    let s = TestServer::start_with(|c| c.default_quota = Some(10)).await;
    let t = s.add_user("alice", None).await;
    let big = s.add_user("bob", Some(100)).await;
    assert_eq!(s.put("/blobs/alice/a", &t, vec![0u8; 11]).await.status, 507);
    assert_eq!(s.put("/blobs/bob/a", &big, vec![0u8; 11]).await.status, 201);
}
}

both_backends! {
#[tokio::test]
async fn two_users_are_kept_apart() {
    let s = TestServer::start().await;
    let a = s.add_user("alice", None).await;
    let b = s.add_user("bob", None).await;
    assert_eq!(s.put("/blobs/alice/same", &a, "alice's").await.status, 201);
    assert_eq!(s.put("/blobs/bob/same", &b, "bob's").await.status, 201);
    assert_eq!(s.put("/blobs/bob/only-bob", &b, "x").await.status, 201);
    assert_eq!(&s.get("/blobs/alice/same", &a).await.body[..], b"alice's");
    assert_eq!(&s.get("/blobs/bob/same", &b).await.body[..], b"bob's");
    assert_eq!(
        s.get("/blobs/alice", &a).await.json::<Vec<String>>(),
        ["same"]
    );
    assert_eq!(s.get("/blobs/alice/same", &b).await.status, 403);
    assert_eq!(s.delete("/blobs/alice/same", &b).await.status, 403);
    // Sequence numbers are per user.
    let ch: ChangesResponse = s.get("/blobs/alice?since=0", &a).await.json();
    assert_eq!(ch.seq, 1);
    let ch: ChangesResponse = s.get("/blobs/bob?since=0", &b).await.json();
    assert_eq!(ch.seq, 2);
}
}

both_backends! {
#[tokio::test]
async fn get_ranges_at_the_edges() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    s.put("/blobs/alice/r", &t, data.clone()).await;
    s.put("/blobs/alice/empty", &t, "").await;
    let range = |h: &'static str| {
        let s = &s;
        let t = t.clone();
        async move {
            s.req("GET", "/blobs/alice/r", Some(&t), body(""), &[("range", h)])
                .await
        }
    };
    for (h, a, b) in [
        ("bytes=0-0", 0, 0),
        ("bytes=0-999", 0, 999),
        ("bytes=999-999", 999, 999),
        ("bytes=999-", 999, 999),
        ("bytes=500-5000", 500, 999),
        ("bytes=-1", 999, 999),
        ("bytes=-1000", 0, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=100-199", 100, 199),
    ] {
        let r = range(h).await;
        assert_eq!(r.status, 206, "{h}: {}", r.text());
        assert_eq!(&r.body[..], &data[a..=b], "{h}");
        let want = format!("bytes {a}-{b}/1000");
        assert_eq!(r.header("content-range"), Some(want.as_str()), "{h}");
    }
    for h in [
        "bytes=1000-",
        "bytes=1000-2000",
        "bytes=5-4",
        "bytes=-0",
        "bytes=0-1,4-5",
        "lines=1-2",
    ] {
        let r = range(h).await;
        assert_eq!(r.status, 416, "{h}: {}", r.text());
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{h}");
    }
    let r = s
        .req(
            "GET",
            "/blobs/alice/empty",
            Some(&t),
            body(""),
            &[("range", "bytes=0-")],
        )
        .await;
    assert_eq!(r.status, 416);
    let r = s.get("/blobs/alice/r", &t).await;
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    // HEAD gives the size without the bytes.
    let r = s
        .req("HEAD", "/blobs/alice/r", Some(&t), body(""), &[])
        .await;
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (200, Some("1000"), 0)
    );
    let r = s
        .req("HEAD", "/blobs/alice/nope", Some(&t), body(""), &[])
        .await;
    assert_eq!(r.status, 404);
}
}

both_backends! {
#[tokio::test]
async fn flags_set_read_filter_and_reject_unknown() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    s.put("/blobs/alice/a", &t, "a").await;
    s.put("/blobs/alice/b", &t, "b").await;
    let r = s
        .post("/blobs/alice/a", &t, r#"["PROCESSING","PENDING"]"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Vec<Flag>>(), [Flag::Pending, Flag::Processing]);
    let r = s.get("/blobs/alice/a?only_flags=1", &t).await;
    assert_eq!(r.json::<Vec<Flag>>(), [Flag::Pending, Flag::Processing]);
    assert_eq!(
        s.get("/blobs/alice?filter_flag=PENDING", &t)
            .await
            .json::<Vec<String>>(),
        ["a"]
    );
    assert!(
        s.get("/blobs/alice?filter_flag=FAILED", &t)
            .await
            .json::<Vec<String>>()
            .is_empty()
    );
    let r = s.post("/blobs/alice/a", &t, r#"["DONE"]"#).await;
    assert_eq!(r.status, 406);
    assert!(r.text().contains("DONE"), "{}", r.text());
    assert_eq!(
        s.post("/blobs/alice/nope", &t, r#"["FAILED"]"#)
            .await
            .status,
        404
    );
    assert_eq!(
        s.get("/blobs/alice/nope?only_flags=1", &t).await.status,
        404
    );
    // Unknown flag changed nothing.
    let r = s.get("/blobs/alice/a?only_flags=1", &t).await;
    assert_eq!(r.json::<Vec<Flag>>(), [Flag::Pending, Flag::Processing]);
}
}

both_backends! {
#[tokio::test]
async fn incoming_stores_external_pending_blobs_in_mx() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let app = s.add_app("mail").await;
    let r = s
        .put("/incoming/alice/m1", &app, "age-encryption.org/v1\nmail")
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        s.put("/incoming/alice/m1", &app, "age-encryption.org/v1\nagain")
            .await
            .status,
        409
    );
    assert_eq!(
        s.put("/incoming/nobody/m1", &app, "age-encryption.org/v1\nx")
            .await
            .status,
        404
    );
    // Only into the app's namespaces (MX by default).
    let r = s
        .put(
            "/incoming/alice/m2?namespace=other",
            &app,
            "age-encryption.org/v1\ny",
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("may not deliver into namespace other"),
        "{}",
        r.text()
    );
    let other = s.add_app_in("other-mail", &["other", "MX"]).await;
    assert_eq!(
        s.put(
            "/incoming/alice/m2?namespace=other",
            &other,
            "age-encryption.org/v1\ny"
        )
        .await
        .status,
        201
    );
    let d: Vec<BlobDetail> = s.get("/blobs/alice?namespace=MX&detail=1", &t).await.json();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].flags, [Flag::Pending]);
    let ch: ChangesResponse = s.get("/blobs/alice?namespace=MX&since=0", &t).await.json();
    assert!(ch.changes[0].external);
    assert_eq!(
        &s.get("/blobs/alice/m1?namespace=MX", &t).await.body[..],
        b"age-encryption.org/v1\nmail"
    );
}
}

both_backends! {
#[tokio::test]
async fn since_lists_puts_and_deletes_incrementally() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let ch: ChangesResponse = s.get("/blobs/alice?since=0&detail=1", &t).await.json();
    assert_eq!((ch.seq, ch.changes.len(), ch.more), (0, 0, false));
    for i in 0..5 {
        s.put(&format!("/blobs/alice/b{i}"), &t, vec![0u8; i]).await;
    }
    s.put("/blobs/alice/other?namespace=ns2", &t, "z").await;
    let ch: ChangesResponse = s.get("/blobs/alice?since=0&detail=1", &t).await.json();
    assert_eq!(ch.seq, 6);
    assert_eq!(ch.changes.len(), 5);
    assert!(ch.changes.iter().all(|c| c.op == ChangeOp::Put));
    assert_eq!(ch.changes[3].size, 3);
    let cursor = ch.seq;
    // Nothing new: empty, same cursor.
    let ch: ChangesResponse = s
        .get(&format!("/blobs/alice?since={cursor}"), &t)
        .await
        .json();
    assert_eq!((ch.seq, ch.changes.len()), (cursor, 0));
    // A delete, a delete-then-put, and a new put.
    s.delete("/blobs/alice/b1", &t).await;
    s.delete("/blobs/alice/b2", &t).await;
    s.put("/blobs/alice/b2", &t, "new").await;
    s.put("/blobs/alice/b9", &t, "9").await;
    let ch: ChangesResponse = s
        .get(&format!("/blobs/alice?since={cursor}&detail=1"), &t)
        .await
        .json();
    let got: Vec<(String, ChangeOp, u64)> = ch
        .changes
        .iter()
        .map(|c| (c.id.to_string(), c.op, c.size))
        .collect();
    assert_eq!(
        got,
        [
            ("b1".into(), ChangeOp::Delete, 1),
            ("b2".into(), ChangeOp::Put, 3),
            ("b9".into(), ChangeOp::Put, 1),
        ]
    );
    assert_eq!(ch.seq, 10);
    assert!(ch.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    // Paging with limit: follow `more` until done, and see every change once.
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let ch: ChangesResponse = s
            .get(&format!("/blobs/alice?since={since}&limit=2"), &t)
            .await
            .json();
        assert!(ch.changes.len() <= 2);
        seen.extend(ch.changes.iter().map(|c| c.id.to_string()));
        since = ch.seq;
        if !ch.more {
            break;
        }
    }
    assert_eq!(seen, ["b0", "b3", "b4", "b1", "b2", "b9"]);
    assert_eq!(since, 10);
    // A cursor from the future (another server) is refused.
    let r = s.get("/blobs/alice?since=99", &t).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("full listing"), "{}", r.text());
}
}

both_backends! {
#[tokio::test]
async fn listing_pages_orders_and_counts() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    for id in ["c", "a", "e", "b", "d"] {
        s.put(&format!("/blobs/alice/{id}"), &t, "x").await;
    }
    let page: Vec<String> = s.get("/blobs/alice?limit=2", &t).await.json();
    assert_eq!(page, ["a", "b"]);
    let page: Vec<String> = s.get("/blobs/alice?limit=2&after=b", &t).await.json();
    assert_eq!(page, ["c", "d"]);
    let page: Vec<String> = s.get("/blobs/alice?limit=2&after=d", &t).await.json();
    assert_eq!(page, ["e"]);
    // Same second: date order falls back to creation sequence.
    let by_date: Vec<String> = s.get("/blobs/alice?order_by=date", &t).await.json();
    assert_eq!(by_date, ["c", "a", "e", "b", "d"]);
    let plus: Vec<String> = s.get("/blobs/alice?order_by=%2Bdate", &t).await.json();
    assert_eq!(plus, by_date);
    let newest: Vec<String> = s.get("/blobs/alice?order_by=-date", &t).await.json();
    assert_eq!(newest, ["d", "b", "e", "a", "c"]);
    let page: Vec<String> = s
        .get("/blobs/alice?order_by=-date&limit=2&after=b", &t)
        .await
        .json();
    assert_eq!(page, ["e", "a"]);
    let c: CountResponse = s
        .get("/blobs/alice?only_count=1&deleted=1", &t)
        .await
        .json();
    assert_eq!(c.count, 0);
}
}

both_backends! {
#[tokio::test]
async fn full_listing_streams_past_one_internal_page() {
    let s = TestServer::start_with(|c| c.list_chunk = 100).await;
    let t = s.add_user("alice", None).await;
    // 250 ids through /stream (empty blobs): more than two internal pages of 100.
    let entries: Vec<(BlobId, u64)> = (0..250).map(|i| (id(&format!("id{i:06}")), 0)).collect();
    let r = s
        .post(
            "/stream/alice?direction=upload",
            &t,
            encode_upload_header(&entries),
        )
        .await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = s.get("/blobs/alice", &t).await.json();
    assert_eq!(ids.len(), 250);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let d: Vec<BlobDetail> = s.get("/blobs/alice?detail=1", &t).await.json();
    assert_eq!(d.len(), 250);
    assert_eq!(d[249].id, id("id000249"));
    // Date order streams past the internal page too (paging by (created, seq)).
    let newest: Vec<String> = s.get("/blobs/alice?order_by=-date", &t).await.json();
    assert_eq!(newest.len(), 250);
    assert_eq!(
        (newest[0].as_str(), newest[249].as_str()),
        ("id000249", "id000000")
    );
    let page: Vec<String> = s
        .get("/blobs/alice?limit=100&after=id000199", &t)
        .await
        .json();
    assert_eq!(page.len(), 50);
}
}

fn stream_body(blobs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<(BlobId, u64)> = blobs.iter().map(|(i, b)| (id(i), b.len() as u64)).collect();
    let mut out = encode_upload_header(&entries);
    for (_, b) in blobs {
        out.extend_from_slice(b);
    }
    out
}

both_backends! {
#[tokio::test]
async fn stream_up_and_down_1000_small_blobs() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let blobs: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            (
                format!("blob{i:04}"),
                format!("payload {i} ").repeat(i % 50).into_bytes(),
            )
        })
        .collect();
    s.put("/blobs/alice/blob0007", &t, "taken").await;
    let r = s
        .post("/stream/alice?direction=upload", &t, stream_body(&blobs))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status: BTreeMap<String, u16> = r.json();
    assert_eq!(status.len(), 1000);
    assert_eq!(status["blob0007"], 409);
    assert_eq!(status.values().filter(|c| **c == 201).count(), 999);

    let mut ids: Vec<String> = blobs.iter().map(|(i, _)| i.clone()).collect();
    ids.insert(500, "absent".into());
    let r = s
        .post(
            "/stream/alice?direction=download",
            &t,
            serde_json::to_vec(&ids).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = decode_frames(&r.body);
    assert_eq!(frames.len(), 1001);
    assert_eq!(frames[500], ("absent".to_string(), None));
    for (i, (fid, data)) in frames.iter().enumerate().filter(|(i, _)| *i != 500) {
        let j = if i > 500 { i - 1 } else { i };
        assert_eq!(fid, &blobs[j].0);
        if fid == "blob0007" {
            assert_eq!(data.as_deref(), Some(&b"taken"[..]));
        } else {
            assert_eq!(data.as_deref(), Some(&blobs[j].1[..]), "{fid}");
        }
    }
    // Uploads through /stream are ordinary blobs: GET and since see them.
    assert_eq!(
        &s.get("/blobs/alice/blob0003", &t).await.body[..],
        &blobs[3].1[..]
    );
    let ch: ChangesResponse = s.get("/blobs/alice?since=1", &t).await.json();
    assert_eq!(ch.changes.len(), 999);
}
}

#[tokio::test]
async fn malformed_stream_uploads_store_nothing() {
    let s = TestServer::start_with(|c| c.max_blob_size = 100).await;
    let t = s.add_user("alice", None).await;
    let good = stream_body(&[("a".into(), b"abc".to_vec()), ("b".into(), b"de".to_vec())]);
    let truncated = good[..good.len() - 1].to_vec();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"zz");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (truncated, "ended early"),
        (trailing, "after the last blob"),
        (b"not json\nabc".to_vec(), "header"),
        (b"[[\"a\",3]]".to_vec(), "ended early"),
        (b"[[\"../x\",1]]\nx".to_vec(), "blob id"),
        (b"[[\"a\",1],[\"a\",1]]\nxy".to_vec(), "twice"),
    ];
    for (b, want) in cases {
        let r = s.post("/stream/alice?direction=upload", &t, b).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(want), "{:?} lacks {want:?}", r.text());
    }
    let r = s
        .post(
            "/stream/alice?direction=download",
            &t,
            "[\"ok\", \"not ok\"]",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        s.get("/blobs/alice", &t)
            .await
            .json::<Vec<String>>()
            .is_empty()
    );
    // Per-blob limits inside a good stream: 413 for the big one, the rest stored.
    let b = stream_body(&[("small".into(), vec![1; 10]), ("huge".into(), vec![2; 101])]);
    let st: BTreeMap<String, u16> = s.post("/stream/alice?direction=upload", &t, b).await.json();
    assert_eq!((st["small"], st["huge"]), (201, 413));
    // No temp file is left behind by any of it.
    let dir = s.into_dir().await;
    let report = blobsync_server::fsck::fsck(&dir.path().join("data"), false).unwrap();
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(report.checked, 1);
}

both_backends! {
#[tokio::test]
async fn stream_upload_respects_quota_per_blob() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", Some(25)).await;
    let b = stream_body(&[
        ("a".into(), vec![1; 10]),
        ("b".into(), vec![1; 10]),
        ("c".into(), vec![1; 10]),
        ("d".into(), vec![1; 5]),
    ]);
    let st: BTreeMap<String, u16> = s.post("/stream/alice?direction=upload", &t, b).await.json();
    assert_eq!(
        st.into_iter().collect::<Vec<_>>(),
        [
            ("a".into(), 201),
            ("b".into(), 201),
            ("c".into(), 507),
            ("d".into(), 201)
        ]
    );
}
}

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
async fn oversized_headers_are_rejected() {
    let s = TestServer::start_with(|c| c.max_header_bytes = 8192).await;
    let t = s.add_user("alice", None).await;
    let big = "x".repeat(20_000);
    let c = common::client();
    let req = http::Request::get(s.url("/blobs/alice"))
        .header("authorization", format!("Bearer {t}"))
        .header("x-big", big)
        .body(body(""))
        .unwrap();
    // hyper answers 431 or closes the connection; either way no 200.
    if let Ok(r) = c.request(req).await {
        assert_eq!(r.status().as_u16(), 431);
    }
    assert_eq!(s.get("/blobs/alice", &t).await.status, 200);
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
    let p = s.data_dir().join("alice/default/s/slo/slow");
    assert_eq!(std::fs::read(p).unwrap(), b"first second");
}

#[tokio::test]
async fn fsck_finds_and_repairs_leftovers() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    s.put("/blobs/alice/keep", &t, "k").await;
    s.put("/blobs/alice/gone", &t, "g").await;
    let dir = s.into_dir().await;
    let d = dir.path().join("data");
    // An orphan payload (crash between rename and commit), a temp file, a lost payload.
    std::fs::create_dir_all(d.join("alice/default/o/orp")).unwrap();
    std::fs::write(d.join("alice/default/o/orp/orphan"), "o").unwrap();
    std::fs::write(d.join("alice/default/k/kee/.tmp-keep-1234"), "t").unwrap();
    std::fs::remove_file(d.join("alice/default/g/gon/gone")).unwrap();
    let r = blobsync_server::fsck::fsck(&d, false).unwrap();
    assert!(!r.is_clean());
    assert_eq!(
        (r.orphans.len(), r.temp_files.len(), r.missing.len()),
        (1, 1, 1)
    );
    let r = blobsync_server::fsck::fsck(&d, true).unwrap();
    assert!(
        r.render()
            .contains("MISSING payload for indexed blob alice/default/gone")
    );
    assert!(!d.join("alice/default/o/orp/orphan").exists());
    assert!(!d.join("alice/default/k/kee/.tmp-keep-1234").exists());
    assert!(d.join("alice/default/k/kee/keep").exists());
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

both_backends! {
#[tokio::test]
async fn since_older_than_purged_tombstones_is_410() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    s.put("/blobs/alice/a", &t, "a").await; // seq 1
    s.put("/blobs/alice/b", &t, "b").await; // seq 2
    s.delete("/blobs/alice/a", &t).await; // seq 3
    s.put("/blobs/alice/c", &t, "c").await; // seq 4
    // Purge every tombstone (all are older than "one second from now").
    let idx = s.state.index();
    assert_eq!(
        idx.purge_tombstones(blobsync_server::index::now_secs() + 1)
            .await
            .unwrap(),
        1
    );
    let r = s.get("/blobs/alice?since=2", &t).await;
    assert_eq!(r.status, 410, "{}", r.text());
    assert!(r.text().contains("full listing"), "{}", r.text());
    // A cursor at or past the purged delete still works; since=0 lists the live state.
    let ch: ChangesResponse = s.get("/blobs/alice?since=3", &t).await.json();
    assert_eq!(ch.changes.len(), 1);
    let ch: ChangesResponse = s.get("/blobs/alice?since=0", &t).await.json();
    let ids: Vec<String> = ch.changes.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert!(
        s.get("/blobs/alice?deleted=1", &t)
            .await
            .json::<Vec<String>>()
            .is_empty()
    );
}
}
