//! Rollback (the trust model's promise 3): a device that has held a version of an id never
//! goes back to an older one, whatever the listing says; a real delete and re-put from
//! another device (a fresh salt) still goes through.

mod common;

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::events::AlarmKind;
use blobsyncd::remote::{Remote, once_body};
use blobsyncd::status::Status;
use common::*;

/// The stored bytes of the server's copy of `id`.
async fn stored(d: &Device, id: &str) -> Vec<u8> {
    let r = d
        .dir_remote()
        .get(&Namespace::default(), &BlobId::new(id).unwrap(), None)
        .await
        .unwrap();
    blobsyncd::remote::collect_body(r.body, 1 << 20)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_older_version_served_again_is_refused_and_a_real_reput_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    let (ns, x) = (Namespace::default(), BlobId::new("x").unwrap());

    // Version 1, then (deleted and put again on A) version 2; B follows both.
    a.put("x", b"version one").await;
    a.engine.run_cycle().await;
    let v1 = stored(&a, "x").await;
    b.engine.run_cycle().await;
    assert_eq!(b.read("x").await, b"version one");
    a.handle.delete(&ns, &x).await.unwrap();
    a.engine.run_cycle().await;
    a.put("x", b"version two!").await;
    a.engine.run_cycle().await;
    a.engine.run_cycle().await; // lists its own upload back: knows its sequence number
    b.engine.run_cycle().await;
    assert_eq!(b.read("x").await, b"version two!");

    // The server serves version 1's ciphertext again, as a newer change (the operator
    // restored it, or a proxy replays it).
    let r = a.dir_remote();
    r.delete(&ns, &x, None).await.unwrap();
    r.put(&ns, &x, v1.len() as u64, once_body(v1.clone()), None)
        .await
        .unwrap();
    for d in [&a, &b] {
        d.engine.run_cycle().await;
        let row = d.info("x").await.unwrap();
        assert_eq!(row.status, Status::FailedDownload, "{row:?}");
        assert!(
            row.last_error.as_deref().unwrap_or("").contains("rollback"),
            "{row:?}"
        );
        // Never handed out.
        assert!(d.handle.open_for_read(&ns, &x, None, true).await.is_err());
        let alarms = d.handle.status().await.unwrap().alarms;
        assert!(
            alarms.iter().any(|al| al.kind == AlarmKind::Rollback),
            "{alarms:?}"
        );
    }

    // A real delete and re-put from a device of the user (a fresh salt) is taken as usual.
    delete_as_device(a.dir_remote(), &ns, &x).await;
    let c = Device::open(&tmp.path().join("c"), &remote, settings()).await;
    c.put("x", b"version three").await;
    c.engine.run_cycle().await;
    b.handle.retry(&ns, &x).await.unwrap();
    b.engine.run_cycle().await;
    assert_eq!(b.read("x").await, b"version three");
}

/// A store from before delete proofs has no salt for the copies it downloaded, so no proof
/// could verify against them. The daemon reads those salts from the server's copies (a few
/// per cycle), so a deletion made elsewhere afterwards applies instead of coming back.
#[tokio::test]
async fn salts_missing_from_an_older_store_are_backfilled_so_proven_deletions_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Device::open(&da, &remote, settings()).await;
    a.put("x", b"downloaded by an older daemon").await;
    a.put("keep", b"stays").await;
    a.engine.run_cycle().await;
    {
        let b = Device::open(&db, &remote, settings()).await;
        b.engine.run_cycle().await;
        assert_eq!(b.status_of("x").await, Some(Status::Synced));
        let exited = b.engine.store().on_exit();
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(10), exited)
            .await
            .expect("the store closes");
    }
    // What an older daemon left: no salt on downloaded copies, no backfill done yet.
    let c = rusqlite::Connection::open(db.join("store.sqlite")).unwrap();
    c.execute("UPDATE blobs SET upload_salt = NULL", [])
        .unwrap();
    c.execute("DELETE FROM meta WHERE key = 'salt_backfill_done'", [])
        .unwrap();
    drop(c);
    let b = Device::open(&db, &remote, settings()).await;
    b.engine.run_cycle().await; // backfills
    assert!(b.info("x").await.unwrap().upload_salt.is_some());
    // A deletes x (with its proof): B deletes its copy too, nothing comes back.
    a.handle
        .delete(&Namespace::default(), &BlobId::new("x").unwrap())
        .await
        .unwrap();
    a.engine.run_cycle().await;
    let s = b.engine.run_cycle().await;
    assert_eq!((s.deleted_local, s.reuploaded_missing), (1, 0), "{s:?}");
    assert_eq!(b.status_of("x").await, None);
    assert_eq!(b.status_of("keep").await, Some(Status::Synced));
}
