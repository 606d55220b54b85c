//! One blob's life and where it lives: put, get, list, delete and put again; namespaces kept
//! apart and listed; users kept apart; byte ranges at the edges; flags set, read and
//! filtered; and blobs delivered to a user's incoming namespace by a trusted app.

use super::*;

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

    // fs: a payload this small is kept inside the index (no file in the layout), and is gone
    // after the delete.
    let p = s.data_dir().join("alice/default/b/b1/b1");
    if s.engines.is_none() {
        assert!(!p.exists());
        assert_eq!(
            s.inline_payload("alice", "default", "b1").as_deref(),
            Some(&b"hello world"[..])
        );
    }

    let r = s.delete("/blobs/alice/b1", &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!p.exists());
    if s.engines.is_none() {
        assert_eq!(s.inline_payload("alice", "default", "b1"), None);
    }
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

/// fs+sqlite keeps blobs of at most `--inline-max` bytes inside the index: they read, range,
/// delete and come back like files, the next byte up is a file, and 0 turns it off (while
/// what was stored inline stays readable).
#[tokio::test]
async fn small_blobs_live_inside_the_index_and_behave_like_files() {
    let max = blobsync_server::payload::INLINE_MAX;
    let mut s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let small: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    let large: Vec<u8> = (0..=max).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        s.put("/blobs/alice/small", &t, small.clone()).await.status,
        201
    );
    assert_eq!(
        s.put("/blobs/alice/large", &t, large.clone()).await.status,
        201
    );
    let d = s.data_dir();
    assert!(!d.join("alice/default/s/sma/small").exists());
    assert_eq!(
        s.inline_payload("alice", "default", "small"),
        Some(small.clone())
    );
    assert_eq!(
        std::fs::read(d.join("alice/default/l/lar/large")).unwrap(),
        large
    );
    assert_eq!(s.inline_payload("alice", "default", "large"), None);

    assert_eq!(s.get("/blobs/alice/small", &t).await.body, small);
    for (range, status, want) in [
        ("bytes=10-19", 206, &small[10..20]),
        ("bytes=-5", 206, &small[max - 5..]),
        ("bytes=5000-", 416, &[][..]),
    ] {
        let r = s
            .req(
                "GET",
                "/blobs/alice/small",
                Some(&t),
                body(""),
                &[("range", range)],
            )
            .await;
        assert_eq!(r.status, status, "{range}");
        if status == 206 {
            assert_eq!(r.body, want, "{range}");
        }
    }
    let r = s
        .req("HEAD", "/blobs/alice/small", Some(&t), body(""), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(max.to_string().as_str()));
    // Soledad's client checks this tag: the last 16 bytes, as for a file.
    assert!(r.header("tag").is_some());

    // Immutable while live; deleted, then stored again with other bytes.
    assert_eq!(s.put("/blobs/alice/small", &t, "x").await.status, 409);
    assert_eq!(s.delete("/blobs/alice/small", &t).await.status, 200);
    assert_eq!(s.inline_payload("alice", "default", "small"), None);
    assert_eq!(s.get("/blobs/alice/small", &t).await.status, 404);
    assert_eq!(s.put("/blobs/alice/small", &t, "again").await.status, 201);
    assert_eq!(&s.get("/blobs/alice/small", &t).await.body[..], b"again");

    // 0: every new blob a file; the inline one stays readable.
    s.stop().await;
    let dir = s.into_dir().await;
    let s = TestServer::start_in(dir, |c| c.inline_max = 0).await;
    assert_eq!(&s.get("/blobs/alice/small", &t).await.body[..], b"again");
    assert_eq!(s.put("/blobs/alice/tiny", &t, "t").await.status, 201);
    assert_eq!(
        std::fs::read(d.join("alice/default/t/tin/tiny")).unwrap(),
        b"t"
    );
    assert_eq!(&s.get("/blobs/alice/tiny", &t).await.body[..], b"t");
}
