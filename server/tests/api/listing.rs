//! Listings: incremental `since` listings of puts and deletes, pages in id and date order
//! with counts, full listings that stream past one internal page, a `since` older than the
//! purged tombstones (410), and caught-up listings (answered from memory on `fs+sqlite`) that
//! still see every later change, by this server or by another process on its index.

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

/// The changes of `since=cursor`: (id, op) in order, and the new cursor.
async fn changes_after(s: &TestServer, t: &str, cursor: u64) -> (Vec<(String, ChangeOp)>, u64) {
    let r = s
        .get(&format!("/blobs/alice?since={cursor}&detail=1"), t)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ch: ChangesResponse = r.json();
    let got = ch
        .changes
        .iter()
        .map(|c| (c.id.to_string(), c.op))
        .collect();
    (got, ch.seq)
}

/// Asks `since=cursor` a few times while nothing changes (on `fs+sqlite` the head is then
/// answered from memory): empty, same cursor.
async fn caught_up(s: &TestServer, t: &str, cursor: u64) {
    for _ in 0..3 {
        assert_eq!(changes_after(s, t, cursor).await, (vec![], cursor));
    }
}

both_backends! {
#[tokio::test]
async fn a_caught_up_listing_sees_every_later_change() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let bob = s.add_user("bob", None).await;
    s.put("/blobs/alice/a", &t, "a").await;
    let (_, mut cursor) = changes_after(&s, &t, 0).await;
    assert_eq!(cursor, 1);
    // A PUT right after caught-up listings: the next listing has it.
    caught_up(&s, &t, cursor).await;
    assert_eq!(s.put("/blobs/alice/b", &t, "b").await.status, 201);
    assert_eq!(changes_after(&s, &t, cursor).await, (vec![("b".into(), ChangeOp::Put)], 2));
    cursor = 2;
    // Through /stream.
    caught_up(&s, &t, cursor).await;
    let up = s
        .post("/stream/alice?direction=upload", &t, stream_body(&[("c".into(), b"c".to_vec())]))
        .await;
    assert_eq!(up.status, 200, "{}", up.text());
    assert_eq!(changes_after(&s, &t, cursor).await, (vec![("c".into(), ChangeOp::Put)], 3));
    cursor = 3;
    // A delete: its tombstone.
    caught_up(&s, &t, cursor).await;
    assert_eq!(s.delete("/blobs/alice/a", &t).await.status, 200);
    assert_eq!(changes_after(&s, &t, cursor).await, (vec![("a".into(), ChangeOp::Delete)], 4));
    cursor = 4;
    // Another user's writes change nothing for alice; a cursor ahead is still refused.
    caught_up(&s, &t, cursor).await;
    assert_eq!(s.put("/blobs/bob/x", &bob, "x").await.status, 201);
    caught_up(&s, &t, cursor).await;
    assert_eq!(s.get("/blobs/alice?since=5", &t).await.status, 400);
    // A purge makes an old cursor 410 at once, even right after it was answered.
    assert_eq!(changes_after(&s, &t, 3).await, (vec![("a".into(), ChangeOp::Delete)], 4));
    let idx = s.state.index();
    assert_eq!(
        idx.purge_tombstones(blobsync_server::index::now_secs() + 1).await.unwrap(),
        1
    );
    assert_eq!(s.get("/blobs/alice?since=3", &t).await.status, 410);
    caught_up(&s, &t, cursor).await;
}
}

/// `fs+sqlite`: admin commands write the index while the server runs (no data dir lock), so
/// what the server keeps in memory must not outlive their commits. Another `Index` on the
/// same file plays the admin process.
#[tokio::test]
async fn changes_by_another_process_are_seen_at_once() {
    use blobsync_server::index::{Index, PendingPut, PutOutcome, Staged};
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    s.put("/blobs/alice/a", &t, "a").await;
    caught_up(&s, &t, 1).await;
    let data = s.data_dir();
    let other = tokio::task::spawn_blocking(move || Index::open(&data).unwrap())
        .await
        .unwrap();
    // A put committed by the other process: the very next listing has it.
    let layout = blobsync_server::Layout::new(&s.data_dir());
    let ns = blobsync_shared::Namespace::default();
    let temp = layout.temp_path("alice", &ns, &id("z"));
    std::fs::create_dir_all(temp.parent().unwrap()).unwrap();
    std::fs::write(&temp, b"zz").unwrap();
    std::fs::File::open(&temp).unwrap().sync_all().unwrap();
    let item = PendingPut {
        id: id("z"),
        size: 2,
        staged: Staged::File(temp),
        external: false,
        age_sha256: None,
        flags: 0,
        if_absent_since: None,
    };
    let out = other
        .commit_puts("alice", &ns, vec![item], None, &layout)
        .unwrap();
    assert_eq!(out, [PutOutcome::Created(2)]);
    assert_eq!(
        changes_after(&s, &t, 1).await,
        (vec![("z".into(), ChangeOp::Put)], 2)
    );
    caught_up(&s, &t, 2).await;
    // `user remove`, then `user add` of the same name: the old token is refused at once, and
    // the new user's sequence starts over (the old cursor is ahead of it).
    assert!(other.remove_user("alice", &layout).unwrap());
    assert_eq!(s.get("/blobs/alice?since=2", &t).await.status, 401);
    let t2 = blobsync_server::token::generate();
    other
        .add_user("alice", &blobsync_server::token::hash(&t2), None)
        .unwrap();
    assert_eq!(s.get("/blobs/alice?since=2", &t).await.status, 401);
    assert_eq!(s.get("/blobs/alice?since=2", &t2).await.status, 400);
    caught_up(&s, &t2, 0).await;
}
