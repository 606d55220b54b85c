//! Listings: incremental `since` listings of puts and deletes, pages in id and date order
//! with counts, full listings that stream past one internal page, and a `since` older than
//! the purged tombstones (410).

use super::*;

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
