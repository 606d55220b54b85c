//! Crash safety: the engine is stopped dead at each step of a put, an upload, a download
//! and a delete (an armed crash point: nothing after it runs), the device is dropped and
//! reopened on the same data dir, and sync continues: nothing lost, nothing duplicated, no
//! half file.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::clock::ManualClock;
use blobsyncd::status::{Priority, Status};
use common::*;

fn tmp_files(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn upload_survives_a_crash_at_every_step() {
    for point in ["upload.after_salt", "upload.after_put"] {
        let tmp = tempfile::tempdir().unwrap();
        let (da, remote) = (tmp.path().join("a"), tmp.path().join("r"));
        let clock = ManualClock::default();
        let data = bytes(123_456, 1);
        {
            let a = Device::open_with_clock(&da, &remote, settings(), clock.clone()).await;
            a.put("u", &data).await;
            a.engine.arm_crash_point(point);
            a.engine.run_cycle().await;
            assert_eq!(
                a.status_of("u").await,
                Some(Status::PendingUpload),
                "{point}"
            );
        }
        let a = Device::open_with_clock(&da, &remote, settings(), clock.clone()).await;
        clock.advance(std::time::Duration::from_secs(60));
        let s = a.engine.run_cycle().await;
        assert_eq!(s.uploaded, 1, "{point}: {s:?}");
        assert_eq!(a.status_of("u").await, Some(Status::Synced), "{point}");
        assert_eq!(
            a.remote_ids().await,
            ["u"],
            "{point}: exactly one copy on the server"
        );
        let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
        b.engine.run_cycle().await;
        assert_eq!(b.read("u").await, data, "{point}");
        assert!(tmp_files(&da).is_empty(), "{point}: {:?}", tmp_files(&da));
    }
}

#[tokio::test]
async fn download_survives_a_crash_at_every_step() {
    for point in ["download.after_body", "download.after_install"] {
        let tmp = tempfile::tempdir().unwrap();
        let (db, remote) = (tmp.path().join("b"), tmp.path().join("r"));
        let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
        let data = bytes(99_999, 2);
        a.put("d", &data).await;
        a.engine.run_cycle().await;
        {
            let b = Device::open(&db, &remote, settings()).await;
            b.engine.arm_crash_point(point);
            b.engine.run_cycle().await;
            assert_eq!(
                b.status_of("d").await,
                Some(Status::PendingDownload),
                "{point}"
            );
        }
        let b = Device::open(&db, &remote, settings()).await;
        let s = b.engine.run_cycle().await;
        assert_eq!(s.downloaded, 1, "{point}: {s:?}");
        assert_eq!(b.read("d").await, data, "{point}");
        assert!(tmp_files(&db).is_empty(), "{point}: {:?}", tmp_files(&db));
        // Nothing went back up.
        assert_eq!(b.remote.faults.puts.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_put_that_crashed_before_its_commit_leaves_nothing_and_can_be_redone() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, remote) = (tmp.path().join("a"), tmp.path().join("r"));
    {
        let a = Device::open(&da, &remote, settings()).await;
        a.engine.arm_crash_point("put.after_link");
        let mut w = a
            .handle
            .put_writer(
                Namespace::default(),
                Some(BlobId::new("p").unwrap()),
                Priority::Medium,
                false,
                None,
            )
            .await
            .unwrap();
        w.write(b"first").await.unwrap();
        assert!(w.commit().await.is_err());
        // A half-written put, never committed: the temp a real crash leaves.
        let mut w2 = a
            .handle
            .put_writer(Namespace::default(), None, Priority::Medium, false, None)
            .await
            .unwrap();
        w2.write(b"half").await.unwrap();
        std::mem::forget(w2);
    }
    let a = Device::open(&da, &remote, settings()).await;
    assert_eq!(
        a.status_of("p").await,
        None,
        "an uncommitted put is not a blob"
    );
    assert!(tmp_files(&da).is_empty(), "{:?}", tmp_files(&da));
    a.put("p", b"second").await;
    a.engine.run_cycle().await;
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    b.engine.run_cycle().await;
    assert_eq!(b.read("p").await, b"second");
}

#[tokio::test]
async fn a_delete_that_crashed_after_the_server_call_completes_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, remote) = (tmp.path().join("a"), tmp.path().join("r"));
    {
        let a = Device::open(&da, &remote, settings()).await;
        a.put("x", b"bye").await;
        a.engine.run_cycle().await;
        a.handle
            .delete(&Namespace::default(), &BlobId::new("x").unwrap())
            .await
            .unwrap();
        a.engine.arm_crash_point("delete.after_remote");
        a.engine.run_cycle().await;
        assert_eq!(a.status_of("x").await, Some(Status::PendingDelete));
    }
    let a = Device::open(&da, &remote, settings()).await;
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("x").await, None);
    assert!(a.remote_ids().await.is_empty());
}

#[tokio::test]
async fn a_corrupt_store_is_moved_aside_and_rebuilt_from_payloads_and_the_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, remote) = (tmp.path().join("a"), tmp.path().join("r"));
    {
        let a = Device::open(&da, &remote, settings()).await;
        a.put("synced", b"on the server").await;
        a.engine.run_cycle().await;
        a.put("local", b"not uploaded yet").await;
        let exited = a.engine.store().on_exit();
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(10), exited)
            .await
            .expect("the store closes once every handle is gone");
    }
    // Trash the store file (and its WAL).
    let db = da.join("store.sqlite");
    std::fs::write(
        &db,
        b"this is not a database at all, just garbage bytes......",
    )
    .unwrap();
    let _ = std::fs::remove_file(da.join("store.sqlite-wal"));
    // A put cut off by a crash after its name reached the disk and before its data did (the
    // sync group names files before its one barrier, and commits the row after it): an empty
    // file and no row.
    let cut = blobsyncd::store::payload::DataDir::new(&da)
        .payload_path(&Namespace::default(), &BlobId::new("cut").unwrap());
    std::fs::create_dir_all(cut.parent().unwrap()).unwrap();
    std::fs::File::create(&cut).unwrap();
    let a = Device::open(&da, &remote, settings()).await;
    let moved: Vec<_> = std::fs::read_dir(&da)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("broken") && !n.ends_with("-shm") && !n.ends_with("-wal"))
        .collect();
    assert_eq!(moved.len(), 1, "the broken store is kept aside");
    let s = a.engine.run_cycle().await;
    assert!(s.full_listing);
    assert_eq!(a.status_of("synced").await, Some(Status::Synced));
    assert_eq!(a.read("synced").await, b"on the server");
    assert_eq!(
        a.status_of("local").await,
        Some(Status::Synced),
        "adopted then uploaded"
    );
    assert_eq!(s.downloaded, 0, "nothing re-downloaded: {s:?}");
    assert_eq!(
        a.status_of("cut").await,
        None,
        "an empty file is no payload: not adopted"
    );
    assert!(!a.remote_ids().await.iter().any(|id| id == "cut"));
    // The only read is of the adopted copy's header: its salt, for delete proofs.
    assert!(a.remote.faults.gets.load(Ordering::SeqCst) <= 1);
    assert!(a.info("synced").await.unwrap().upload_salt.is_some());
}

#[tokio::test]
async fn a_download_stopped_mid_body_resumes_after_a_restart_from_the_verified_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, remote) = (tmp.path().join("b"), tmp.path().join("r"));
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let data = bytes(300_000, 6);
    a.put("big", &data).await;
    a.engine.run_cycle().await;
    {
        let b = Device::open(&db, &remote, settings()).await;
        b.remote.faults.cut_next_get(200_000);
        b.engine.arm_crash_point("download.mid_body");
        b.engine.run_cycle().await;
        assert_eq!(b.status_of("big").await, Some(Status::PendingDownload));
    }
    let b = Device::open(&db, &remote, settings()).await;
    // The partial is kept: the verified prefix of the stored blob (its header first, no
    // sidecar), and no plaintext.
    let kept = tmp_files(&db);
    assert_eq!(kept.len(), 1, "partial kept: {kept:?}");
    let partial = std::fs::read(db.join("tmp").join(&kept[0])).unwrap();
    assert_eq!(
        &partial[..2],
        &[0x13, 0x37],
        "starts with the blob's header"
    );
    assert!(
        !partial.windows(64).any(|w| w == &data[70_000..70_064]),
        "no plaintext in the partial"
    );
    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 1, "{s:?}");
    assert_eq!(b.remote.faults.gets.load(Ordering::SeqCst), 1);
    assert_eq!(
        b.remote.faults.ranged_gets.load(Ordering::SeqCst),
        1,
        "resumed with a Range"
    );
    assert_eq!(b.read("big").await, data);
    assert!(tmp_files(&db).is_empty(), "{:?}", tmp_files(&db));
}

#[tokio::test]
async fn a_stale_partial_of_a_blob_put_again_is_not_mistaken_for_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, remote) = (tmp.path().join("b"), tmp.path().join("r"));
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    a.put("v", &bytes(300_000, 1)).await;
    a.engine.run_cycle().await;
    {
        let b = Device::open(&db, &remote, settings()).await;
        b.remote.faults.cut_next_get(200_000);
        b.engine.arm_crash_point("download.mid_body");
        b.engine.run_cycle().await;
    }
    // Meanwhile the blob is deleted and put again (another salt, other bytes).
    a.handle
        .delete(&Namespace::default(), &BlobId::new("v").unwrap())
        .await
        .unwrap();
    a.engine.run_cycle().await;
    let new = bytes(300_000, 2);
    a.put("v", &new).await;
    a.engine.run_cycle().await;
    let b = Device::open(&db, &remote, settings()).await;
    b.engine.run_cycle().await;
    b.engine.run_cycle().await;
    assert_eq!(b.status_of("v").await, Some(Status::Synced));
    assert_eq!(b.read("v").await, new);
    assert_eq!(b.info("v").await.unwrap().invalid_attempts, 0);
}
