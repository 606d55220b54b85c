//! The local store encrypted at rest (docs/local-store.md): payloads in blob format v1,
//! byte-identical to the remote's copy; no plaintext anywhere under a data dir after a put,
//! a download, a Get and a verify; the migration of a store an earlier release left
//! (plaintext payloads) sealed in place, readable meanwhile, and resumable.

mod common;
/// The plaintext-marker scan, shared with the end-to-end at-rest test (the file says why it
/// is included rather than depended on).
#[path = "../../tests/src/plaintext.rs"]
mod plaintext;

use std::path::{Path, PathBuf};

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::handle::PutItem;
use blobsyncd::status::{Priority, Status};
use common::{Device, settings};
use plaintext::{files_under, files_with_plaintext, marked};
use tokio_util::sync::CancellationToken;

/// The remote's stored copy of `default/id` (the directory remote's layout).
fn remote_copy(remote: &Path, id: &str) -> Vec<u8> {
    let hit = files_under(remote)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == id) && p.to_string_lossy().contains("default"))
        .unwrap_or_else(|| panic!("{id} not on the remote"));
    std::fs::read(hit).unwrap()
}

fn payload(dev: &Path, id: &str) -> Vec<u8> {
    let dd = blobsyncd::store::payload::DataDir::new(dev);
    std::fs::read(dd.payload_path(&Namespace::default(), &BlobId::new(id).unwrap())).unwrap()
}

#[tokio::test]
async fn no_plaintext_under_the_data_dir_after_put_download_get_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Device::open(&da, &remote, settings()).await;
    // Every way a blob comes in: streamed with a size (even length) and without (odd), by
    // path, big (one transfer) and small (batched: at least 8 of them).
    a.put("stream-even", &marked(200_000, 1)).await;
    a.put("stream-odd", &marked(200_001, 2)).await;
    let src = tmp.path().join("source");
    std::fs::write(&src, marked(150_000, 3)).unwrap();
    let item = |id: &str| PutItem {
        path: src.clone(),
        ns: Namespace::default(),
        id: Some(BlobId::new(id).unwrap()),
        priority: Priority::Medium,
        local_only: false,
    };
    for r in a.handle.put_paths(vec![item("by-path")]).await.unwrap() {
        r.unwrap();
    }
    for i in 0..12u32 {
        a.put(&format!("small{i}"), &marked(900 + i as usize, i))
            .await;
    }
    assert_eq!(
        files_with_plaintext(&da),
        Vec::<PathBuf>::new(),
        "after put"
    );
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("small3").await, Some(Status::Synced));
    // The payload is the stored blob: what went up is the file, byte for byte.
    for id in ["stream-even", "stream-odd", "by-path", "small0", "small11"] {
        assert_eq!(payload(&da, id), remote_copy(&remote, id), "{id} on a");
    }

    let b = Device::open(&db, &remote, settings()).await;
    b.engine.run_cycle().await;
    for id in ["stream-even", "stream-odd", "by-path", "small0", "small11"] {
        assert_eq!(b.status_of(id).await, Some(Status::Synced), "{id}");
        assert_eq!(payload(&db, id), remote_copy(&remote, id), "{id} on b");
    }
    assert_eq!(
        files_with_plaintext(&db),
        Vec::<PathBuf>::new(),
        "after download"
    );

    // Get, whole and by range, on both devices.
    for d in [&a, &b] {
        assert_eq!(d.read("stream-odd").await, marked(200_001, 2));
        assert_eq!(d.read("by-path").await, marked(150_000, 3));
        assert_eq!(d.read("small7").await, marked(907, 7));
        let (mut r, len) = d
            .handle
            .open_for_read(
                &Namespace::default(),
                &BlobId::new("stream-even").unwrap(),
                Some(70_000..140_123),
                false,
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got)
            .await
            .unwrap();
        assert_eq!(len, 70_123);
        assert_eq!(got, marked(200_000, 1)[70_000..140_123]);
    }
    for d in [&a, &b] {
        let (tx, _rx) = tokio::sync::mpsc::channel(1000);
        let report = d.handle.verify(true, tx).await.unwrap();
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
        assert_eq!(report.checked_local, 15);
    }
    assert_eq!(
        files_with_plaintext(&da),
        Vec::<PathBuf>::new(),
        "a, at the end"
    );
    assert_eq!(
        files_with_plaintext(&db),
        Vec::<PathBuf>::new(),
        "b, at the end"
    );
}

#[tokio::test]
async fn a_damaged_payload_is_never_handed_out_and_verify_requeues_it() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let data = marked(50_000, 9);
    a.put("x", &data).await;
    a.engine.run_cycle().await;
    let path = blobsyncd::store::payload::DataDir::new(tmp.path().join("a"))
        .payload_path(&Namespace::default(), &BlobId::new("x").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20_000] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    // The segments before the damage read; the damaged one ends the read with an error.
    let (mut r, _) = a
        .handle
        .open_for_read(
            &Namespace::default(),
            &BlobId::new("x").unwrap(),
            None,
            false,
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let e = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(got.len() < 20_000 && data.starts_with(&got));
    let (tx, _rx) = tokio::sync::mpsc::channel(1000);
    let report = a.handle.verify(false, tx).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert!(report.damaged[0].requeued);
    a.engine.run_cycle().await;
    assert_eq!(a.read("x").await, data);
}

#[tokio::test]
async fn a_sealed_payload_cut_to_its_plaintexts_length_is_never_read_as_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let data = marked(20_000, 3);
    a.put("cut", &data).await;
    a.engine.run_cycle().await;
    let path = blobsyncd::store::payload::DataDir::new(tmp.path().join("a"))
        .payload_path(&Namespace::default(), &BlobId::new("cut").unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(data.len() as u64).unwrap();
    drop(f);
    // Not listed as plaintext: the header is read, the cut segment fails, nothing handed out
    // but what authenticated.
    let got = match a
        .handle
        .open_for_read(
            &Namespace::default(),
            &BlobId::new("cut").unwrap(),
            None,
            false,
        )
        .await
    {
        Ok((mut r, _)) => {
            let mut got = Vec::new();
            assert!(
                tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got)
                    .await
                    .is_err()
            );
            got
        }
        Err(_) => Vec::new(),
    };
    assert!(data.starts_with(&got) && got.len() < data.len());
    let (tx, _rx) = tokio::sync::mpsc::channel(1000);
    let report = a.handle.verify(false, tx).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
}

/// Turns a device's store into what an earlier release left: every payload plaintext, and
/// listed in `plain_payloads` (as migration 6 lists them when it opens such a store).
async fn as_previous_release(dev: &Path, ids: &[(&str, Vec<u8>)]) {
    let dd = blobsyncd::store::payload::DataDir::new(dev);
    for (id, plain) in ids {
        std::fs::write(
            dd.payload_path(&Namespace::default(), &BlobId::new(*id).unwrap()),
            plain,
        )
        .unwrap();
    }
    let c = rusqlite::Connection::open(dd.store_file()).unwrap();
    c.execute_batch(
        "INSERT OR IGNORE INTO plain_payloads (ns, id) \
         SELECT ns, id FROM blobs WHERE status IN (1, 2, 3, 5, 7)",
    )
    .unwrap();
}

#[tokio::test]
async fn a_store_of_the_previous_release_is_sealed_in_place_and_readable_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let da = tmp.path().join("a");
    let blobs: Vec<(String, Vec<u8>)> = (0..20u32)
        .map(|i| (format!("m{i}"), marked(3_000 * i as usize + 7, i)))
        .collect();
    {
        let a = Device::open(&da, &remote, settings()).await;
        for (id, b) in &blobs {
            a.put(id, b).await;
        }
        // These synced, one more still waiting for its upload.
        a.engine.run_cycle().await;
        a.put("pending", &marked(10_000, 77)).await;
    }
    let mut all: Vec<(&str, Vec<u8>)> =
        blobs.iter().map(|(i, b)| (i.as_str(), b.clone())).collect();
    all.push(("pending", marked(10_000, 77)));
    as_previous_release(&da, &all).await;
    assert!(!files_with_plaintext(&da).is_empty());

    let a = Device::open(&da, &remote, settings()).await;
    // Readable before the migration ran, and verify finds nothing wrong.
    for (id, b) in &all {
        assert_eq!(&a.read(id).await, b, "{id} before the migration");
    }
    let (tx, _rx) = tokio::sync::mpsc::channel(1000);
    assert!(a.handle.verify(false, tx).await.unwrap().damaged.is_empty());
    a.engine
        .clone()
        .migrate_at_rest(CancellationToken::new())
        .await;
    assert_eq!(files_with_plaintext(&da), Vec::<PathBuf>::new());
    for (id, b) in &all {
        assert_eq!(&a.read(id).await, b, "{id} after the migration");
    }
    let (tx, _rx) = tokio::sync::mpsc::channel(1000);
    let report = a.handle.verify(true, tx).await.unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    // The pending one goes up as its sealed payload is, and a second device gets it all.
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("pending").await, Some(Status::Synced));
    assert_eq!(payload(&da, "pending"), remote_copy(&remote, "pending"));
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    b.engine.run_cycle().await;
    for (id, bytes) in &all {
        assert_eq!(&b.read(id).await, bytes, "{id} on b");
    }
    // Run again: nothing left to do.
    a.engine
        .clone()
        .migrate_at_rest(CancellationToken::new())
        .await;
}

#[tokio::test]
async fn a_migration_cut_after_a_rename_but_before_its_commit_reads_the_sealed_file_right() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let da = tmp.path().join("a");
    let data = marked(100_000, 5);
    {
        let a = Device::open(&da, &remote, settings()).await;
        a.put("c", &data).await;
        a.engine.run_cycle().await;
    }
    // The file is sealed (the rename happened) but the store still lists it as plaintext.
    let c = rusqlite::Connection::open(da.join("store.sqlite")).unwrap();
    c.execute(
        "INSERT INTO plain_payloads (ns, id) VALUES ('default', 'c')",
        [],
    )
    .unwrap();
    drop(c);
    let a = Device::open(&da, &remote, settings()).await;
    assert_eq!(a.read("c").await, data);
    a.engine
        .clone()
        .migrate_at_rest(CancellationToken::new())
        .await;
    assert_eq!(a.read("c").await, data);
    assert_eq!(payload(&da, "c"), remote_copy(&remote, "c"));
}

#[tokio::test]
async fn a_blob_the_server_lost_goes_up_again_under_a_fresh_salt() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let da = tmp.path().join("a");
    let a = Device::open(&da, &remote, settings()).await;
    let data = marked(30_000, 4);
    a.put("lost", &data).await;
    a.engine.run_cycle().await;
    let before = payload(&da, "lost");
    // The server loses it (no tombstone): wipe the remote folder's copy and its log entry by
    // starting over with an empty remote.
    std::fs::remove_dir_all(&remote).unwrap();
    let a2 = {
        drop(a);
        Device::open(&da, &remote, settings()).await
    };
    a2.engine.run_cycle().await;
    a2.engine.run_cycle().await;
    assert_eq!(a2.status_of("lost").await, Some(Status::Synced));
    let after = payload(&da, "lost");
    assert_ne!(before[6..38], after[6..38], "a fresh salt");
    assert_eq!(after, remote_copy(&remote, "lost"));
    assert_eq!(a2.read("lost").await, data);
}
