//! Early uploads: a big put goes up while it is written, and the remote never gets all of it
//! before the put is durable and committed. No cycle runs in these tests unless they say so,
//! so a blob that reaches `SYNCED` was uploaded by the put's early upload.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::handle::{EngineError, PutItem};
use blobsyncd::remote::RemoteError;
use blobsyncd::status::{Priority, Status};
use common::{Device, bytes, settings};

/// Bigger than the early-upload threshold (16 MiB).
const BIG: usize = 20 << 20;

fn item(src: &Path, id: &str, local_only: bool) -> PutItem {
    PutItem {
        path: src.to_path_buf(),
        ns: Namespace::default(),
        id: Some(BlobId::new(id).unwrap()),
        priority: Priority::Medium,
        local_only,
    }
}

async fn put_path(d: &Device, src: &Path, id: &str, local_only: bool) -> Result<(), EngineError> {
    let mut r = d
        .handle
        .put_paths(vec![item(src, id, local_only)])
        .await
        .unwrap();
    r.pop().unwrap().map(|_| ())
}

async fn wait_status(d: &Device, id: &str, want: Status) {
    for _ in 0..600 {
        if d.status_of(id).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never became {want:?}: {:?}", d.status_of(id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_put_is_synced_without_a_cycle_and_reads_back_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let data = bytes(BIG + 12_345, 7);
    let src = tmp.path().join("big");
    std::fs::write(&src, &data).unwrap();
    put_path(&a, &src, "big", false).await.unwrap();
    wait_status(&a, "big", Status::Synced).await;
    let info = a.info("big").await.unwrap();
    assert!(info.upload_salt.is_some(), "the salt of the upload is kept");
    // Nothing is left for the queue: one PUT in all (the cycle's summary counts the early
    // upload among the transfers since the last cycle).
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 1, "{s:?}");
    assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), 1);
    assert_eq!(a.remote_ids().await, ["big"]);
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    b.engine.run_cycle().await;
    assert_eq!(b.status_of("big").await, Some(Status::Synced));
    assert!(b.read("big").await == data, "b reads back what a put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_dies_before_its_commit_never_reaches_the_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, remote) = (tmp.path().join("a"), tmp.path().join("r"));
    let src = tmp.path().join("big");
    std::fs::write(&src, bytes(BIG, 8)).unwrap();
    {
        let a = Device::open(&da, &remote, settings()).await;
        // Stopped dead after the payload is durable and linked, before its row commits: the
        // early upload has most of the body out by then, and must not send the rest.
        a.engine.arm_crash_point("put.after_link");
        let r = put_path(&a, &src, "dead", false).await;
        assert!(r.is_err(), "the put stopped at its crash point: {r:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.remote_ids().await, Vec::<String>::new());
    }
    // Restarted: the uncommitted payload is garbage, and nothing goes up.
    let a = Device::open(&da, &remote, settings()).await;
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("dead").await, None);
    assert_eq!(a.remote_ids().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_and_paused_big_puts_stay_home() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let src = tmp.path().join("big");
    std::fs::write(&src, bytes(BIG, 9)).unwrap();
    put_path(&a, &src, "mine", true).await.unwrap();
    a.handle.pause(None).await.unwrap();
    put_path(&a, &src, "later", false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.remote_ids().await, Vec::<String>::new());
    assert_eq!(a.status_of("mine").await, Some(Status::LocalOnly));
    assert_eq!(a.status_of("later").await, Some(Status::PendingUpload));
    // Resumed, the queue uploads the paused one as any other.
    a.handle.resume(None).await.unwrap();
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 1, "{s:?}");
    assert_eq!(a.remote_ids().await, ["later"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_early_upload_is_left_to_the_queue_without_a_retry_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let data = bytes(BIG, 10);
    let src = tmp.path().join("big");
    std::fs::write(&src, &data).unwrap();
    a.remote
        .faults
        .next_put_errors
        .lock()
        .unwrap()
        .push_back(RemoteError::Transport("refused (injected)".into()));
    put_path(&a, &src, "big", false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = a.info("big").await.unwrap();
    assert_eq!(info.status, Status::PendingUpload);
    assert_eq!(info.attempts, 0, "no failed attempt is recorded for it");
    // Due at once: the next cycle uploads it, with no clock advance.
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 1, "{s:?}");
    assert_eq!(a.status_of("big").await, Some(Status::Synced));
    assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), 2);
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    b.engine.run_cycle().await;
    assert!(b.read("big").await == data, "b reads back what a put");
}
