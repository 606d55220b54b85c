//! Put, PutPath(s), Get with ranges, List pages, Delete; cancelled and stalled puts store nothing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_ranges_list_pages_and_delete() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let data = bytes(250_000, 3);
    let b = put(&mut c, "", "doc", &data, false).await;
    assert_eq!(
        (b.namespace.as_str(), b.id.as_str(), b.size),
        ("default", "doc", 250_000)
    );
    assert!(
        b.status == pb::BlobStatus::PendingUpload as i32
            || b.status == pb::BlobStatus::Synced as i32
    );
    assert_eq!(b.priority, pb::Priority::Medium as i32);

    let (h, whole) = get(&mut c, "doc", None).await.unwrap();
    assert_eq!((h.start, h.length), (0, 250_000));
    assert_eq!(whole, data);
    let (h, part) = get(
        &mut c,
        "doc",
        Some(pb::ByteRange {
            start: 1000,
            end: Some(71_000),
        }),
    )
    .await
    .unwrap();
    assert_eq!((h.start, h.length), (1000, 70_000));
    assert_eq!(part, &data[1000..71_000]);
    // A range reaching past the end is cut at the end.
    let (h, tail) = get(
        &mut c,
        "doc",
        Some(pb::ByteRange {
            start: 249_990,
            end: Some(1 << 40),
        }),
    )
    .await
    .unwrap();
    assert_eq!(h.length, 10);
    assert_eq!(tail, &data[249_990..]);
    let (_, tail) = get(
        &mut c,
        "doc",
        Some(pb::ByteRange {
            start: 249_999,
            end: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!(tail, &data[249_999..]);

    // An empty blob, and a random id.
    let empty = put(&mut c, "", "", b"", true).await;
    assert_eq!(empty.id.len(), 32);
    assert_eq!(empty.status, pb::BlobStatus::LocalOnly as i32);
    let (h, got) = get(
        &mut c,
        &empty.id,
        Some(pb::ByteRange {
            start: 0,
            end: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!((h.length, got.len()), (0, 0));

    // Pages: 25 blobs in namespace "p", 10 per page, three statuses filtered at once.
    for i in 0..25 {
        put(&mut c, "p", &format!("b{i:02}"), &[i as u8], i % 2 == 0).await;
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = c
            .list(pb::ListRequest {
                namespace: "p".into(),
                limit: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.blobs.len() <= 10);
        seen.extend(page.blobs.into_iter().map(|b| b.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("b{i:02}")).collect();
    assert_eq!(seen, want, "every blob once, in order");
    let local_only = c
        .list(pb::ListRequest {
            namespace: "p".into(),
            statuses: vec![
                pb::BlobStatus::LocalOnly as i32,
                pb::BlobStatus::FailedUpload as i32,
            ],
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local_only.blobs.len(), 4);
    assert!(
        local_only
            .blobs
            .iter()
            .all(|b| b.status == pb::BlobStatus::LocalOnly as i32)
    );
    assert!(!local_only.next_page_token.is_empty());

    let d = c
        .delete(pb::DeleteRequest {
            namespace: "p".into(),
            id: "b00".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status, 0, "a local-only blob is simply gone");
    assert_eq!(code(get(&mut c, "nope", None).await), Code::NotFound);
    assert_eq!(
        code(
            c.delete(pb::DeleteRequest {
                namespace: "p".into(),
                id: "b00".into()
            })
            .await
        ),
        Code::NotFound
    );
    let dup = c
        .put(tokio_stream::iter(vec![header("doc", None), chunk(b"x")]))
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_put_stores_nothing() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("cut", None)).await.unwrap();
    tx.send(chunk(&bytes(100_000, 1))).await.unwrap();
    let mut c2 = c.clone();
    let call = tokio::spawn(async move {
        c2.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // The put must be under way (its temp file exists) before the client goes away, or the
    // test would only show that a put never started stores nothing.
    let data = f.data.clone();
    wait_until(
        "the put writes its temp file",
        || !put_temp_files(&data).is_empty(),
        String::new,
    )
    .await;
    call.abort(); // the client goes away mid-stream, without ending the stream
    let _ = call.await;
    drop(tx);
    wait_until(
        "the cut put's temp file is removed",
        || put_temp_files(&data).is_empty(),
        || format!("{:?}", put_temp_files(&data)),
    )
    .await;
    assert_eq!(
        code(
            c.get(pb::GetRequest {
                namespace: String::new(),
                id: "cut".into(),
                range: None,
                wait: false
            })
            .await
        ),
        Code::NotFound
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stalled_put_and_stores_nothing() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("stall", None)).await.unwrap();
    tx.send(chunk(&bytes(50_000, 1))).await.unwrap();
    let mut c2 = c.clone();
    // The client never ends its stream (tx stays alive).
    let call = tokio::spawn(async move {
        c2.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let data = f.data.clone();
    // The put must be in flight (its temp file exists) when shutdown starts.
    wait_until(
        "the put writes its temp file",
        || !put_temp_files(&data).is_empty(),
        String::new,
    )
    .await;
    // stop() fails if serve does not return within its deadline: a stalled client must
    // not hold up shutdown.
    f.stop().await;
    let r = call.await.unwrap();
    assert_eq!(code(r), Code::Unavailable);
    drop(tx);
    let left = || -> Vec<_> {
        walk(&data)
            .into_iter()
            .filter(|p| {
                let rel = p
                    .strip_prefix(&data)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                rel.contains("stall") || rel.starts_with("tmp/")
            })
            .collect()
    };
    wait_until(
        "nothing of the cut put is left",
        || left().is_empty(),
        || format!("{:?}", left()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_paths_stores_a_batch_and_refuses_each_bad_item_alone() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let src = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &[u8]| {
        let p = src.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    };
    let item = |id: &str, path: String| pb::PutPathRequest {
        header: Some(pb::PutHeader {
            id: id.into(),
            ..Default::default()
        }),
        path,
    };
    let big = bytes(3 << 20, 9); // installed on its own, not through the sync group
    let taken = file("taken", b"first");
    let r = c.put_path(item("taken", taken.clone())).await.unwrap();
    assert!(r.into_inner().blob.is_some());

    let req = pb::PutPathsRequest {
        items: vec![
            item("one", file("one", b"first file")),
            item("", file("random", b"an id is chosen")),
            item("big", file("big", &big)),
            item("relative", "relative/path".into()),
            item("missing", src.path().join("nope").to_string_lossy().into()),
            item("taken", taken),
            item("one", file("one-again", b"same id twice")),
            item("bad id!", file("bad", b"x")),
        ],
    };
    let res = c.put_paths(req).await.unwrap().into_inner().results;
    use pb::put_path_result::Result as R;
    let codes: Vec<i32> = res
        .iter()
        .map(|r| match &r.result {
            Some(R::Blob(_)) => 0,
            Some(R::Error(e)) => {
                assert!(!e.message.is_empty());
                e.code
            }
            None => -1,
        })
        .collect();
    let want = [
        Code::Ok,
        Code::Ok,
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::InvalidArgument,
        Code::InvalidArgument,
    ]
    .map(|c| c as i32);
    assert_eq!(codes, want, "{res:?}");
    let Some(R::Blob(random)) = &res[1].result else {
        unreachable!()
    };
    assert_eq!(random.id.len(), 32, "a random UUIDv4 id: {random:?}");

    // The stored blobs read back whole; the refused ones left nothing.
    for (id, want) in [
        ("one", &b"first file"[..]),
        (random.id.as_str(), b"an id is chosen"),
        ("big", &big),
        ("taken", b"first"),
    ] {
        assert_eq!(get(&mut c, id, None).await.unwrap().1, want, "{id}");
    }
    let ls = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<_> = ls.blobs.iter().map(|b| b.id.clone()).collect();
    ids.sort();
    let mut want = vec![
        "big".to_string(),
        "one".into(),
        "taken".into(),
        random.id.clone(),
    ];
    want.sort();
    assert_eq!(ids, want);

    // An empty call, a bad request as a whole, is a row of invalid.rs's table.
    f.stop().await;
}
