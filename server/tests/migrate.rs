//! `migrate`: a one-node server (fs+sqlite) copied to s3+postgres on a real Garage and
//! PostgreSQL. The instance id, sequence numbers, tombstones and bytes arrive as they were; a
//! second run copies nothing and says so (resumable); the source index is not modified.

mod common;

use blobsync_server::backend::open_s3_postgres;
use blobsync_server::payload::{Location, collect};
use blobsync_shared::{BlobId, Namespace};
use common::TestServer;
use common::engines::{self, Engines};

fn sha(p: &std::path::Path) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &std::fs::read(p).unwrap())
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_one_node_server_moves_to_s3_postgres_with_its_identity() {
    if !engines::available("migrate") {
        return;
    }
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
    s.put("/blobs/alice/a", &t, "aaa").await; // 1
    s.put("/blobs/alice/b", &t, big.clone()).await; // 2
    s.put("/blobs/alice/gone", &t, "g").await; // 3
    s.delete("/blobs/alice/gone", &t).await; // 4
    let instance = s.state.instance_id().to_owned();
    let dir = s.into_dir().await;
    let data = dir.path().join("data");
    let before = sha(&data.join("index.sqlite3"));

    let edir = tempfile::tempdir().unwrap();
    let e = {
        let p = edir.path().to_path_buf();
        tokio::task::spawn_blocking(move || Engines::start(&p))
            .await
            .unwrap()
            .unwrap()
    };
    let to = common::scale_out(&e);
    let r = blobsync_server::migrate::migrate(&data, &to).await.unwrap();
    assert_eq!(
        (r.users, r.copied, r.tombstones, r.skipped),
        (1, 2, 1, 0),
        "{}",
        r.render()
    );
    assert_eq!(r.bytes, 3 + big.len() as u64);
    // Resumable: a second run finds everything there.
    let r = blobsync_server::migrate::migrate(&data, &to).await.unwrap();
    assert_eq!((r.copied, r.skipped), (0, 3), "{}", r.render());
    assert_eq!(
        sha(&data.join("index.sqlite3")),
        before,
        "source index changed"
    );

    let b = open_s3_postgres(&to, None).await.unwrap();
    assert_eq!(b.index.instance_id(), instance);
    assert_eq!(b.index.changes_head("alice", 0).await.unwrap(), 4);
    let ns = Namespace::default();
    let gone = b
        .index
        .lookup("alice", &ns, &BlobId::new("gone").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(gone.deleted && gone.seq == 4);
    let row = b
        .index
        .lookup("alice", &ns, &BlobId::new("b").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.seq, row.size), (2, big.len() as u64));
    let loc = Location {
        user: "alice".into(),
        ns,
        id: BlobId::new("b").unwrap(),
        object_key: row.object_key,
        size: row.size,
    };
    let got = collect(b.payloads.open(&loc, 0, row.size).await.unwrap())
        .await
        .unwrap();
    assert!(got == big, "copied bytes differ");
    // Index and bucket agree.
    let report = blobsync_server::fsck::check(b.index.as_ref(), b.payloads.as_ref(), false, 0)
        .await
        .unwrap();
    assert!(report.is_clean(), "{}", report.render());
}
