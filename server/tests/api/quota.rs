//! What a put may not do: take an existing id (409), exceed the max blob size (413, by
//! Content-Length or by a chunked body that grows), or exceed the user's quota (507), their
//! own or the default one, alone or blob by blob inside a stream upload.

use super::*;

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
