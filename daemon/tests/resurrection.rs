//! The resurrection guard: a retried upload (its first PUT's answer was lost) must not recreate
//! a blob another device deleted in the window between this device's listing and its retry.
//! The retry carries `if_absent_since` = the listing cursor; the remote refuses, and the blob
//! ends as one deleted remotely (row and payload gone). Each behaviour is one body with an `rstest`
//! case over `DirRemote` (its change-log rule) and one over `HttpRemote` against the real
//! `blobsync-server` in process (the server's rule).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::remote::{Remote, RemoteError, RemoteListFilter, collect_body};
use blobsyncd::store::payload::DataDir;
use common::*;
use rstest::rstest;

/// What the window between listing and PUT holds: when armed, the next conditional put (or
/// batch) first deletes `victims` on the real remote underneath, as another device would,
/// and records the `if_absent_since` it was sent. A `FaultyRemote` hook runs it.
#[derive(Default)]
struct Window {
    armed: AtomicBool,
    victims: Mutex<Vec<BlobId>>,
    deleted: AtomicU64,
    /// Every `if_absent_since` sent, in order (puts and batches).
    sent: Mutex<Vec<Option<u64>>>,
}

impl Window {
    fn arm(&self, victims: &[&str]) {
        *self.victims.lock().unwrap() = victims.iter().map(|v| BlobId::new(*v).unwrap()).collect();
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// A device on `inner` whose uploads first open the window (see [`Window`]).
async fn device_with_window<R: Remote + Clone + 'static>(
    data: &Path,
    inner: R,
) -> (Device<R>, Arc<Window>) {
    let a = Device::open_on(data, inner.clone(), settings(), Default::default()).await;
    let window = Arc::new(Window::default());
    let w = window.clone();
    a.remote.faults.before_put(Arc::new(move |ns, since| {
        let (w, inner) = (w.clone(), inner.clone());
        Box::pin(async move {
            w.sent.lock().unwrap().push(since);
            if since.is_some() && w.armed.swap(false, Ordering::SeqCst) {
                let victims = w.victims.lock().unwrap().clone();
                for id in victims {
                    common::delete_as_device(&inner, &ns, &id).await;
                    w.deleted.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    }));
    (a, window)
}

/// Live ids on the remote.
async fn live_ids<R: Remote>(r: &R) -> Vec<String> {
    r.list(&Namespace::default(), &RemoteListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id.to_string())
        .collect()
}

/// One blob: its PUT is stored but the answer is lost (and the salt check cannot reach the
/// server either), so it stays PENDING_UPLOAD with its salt; the next cycle lists (and sees it
/// live), and right after that listing another device deletes it. The retry must be refused.
async fn single_put_retry_is_refused<R: Remote + Clone>(dir: &Path, inner: R) {
    let ns = Namespace::default();
    let (a, window) = device_with_window(&dir.join("a"), inner.clone()).await;
    let data = bytes(30_000, 9);
    a.put("x", &data).await;
    a.put("keep", b"unrelated").await;
    a.engine.run_cycle().await; // both up; "x" and "keep" are SYNCED
    // A second blob whose answer gets lost.
    a.put("y", &data).await;
    a.lose_next_put_answer_and_its_check();
    a.engine.run_cycle().await;
    let y = a.info("y").await.unwrap();
    assert_eq!(y.status, blobsyncd::status::Status::PendingUpload);
    assert!(y.upload_salt.is_some(), "the attempt recorded its salt");
    assert!(
        live_ids(&inner).await.contains(&"y".to_string()),
        "it did reach the remote"
    );
    assert_eq!(*window.sent.lock().unwrap(), [None, None, None]);

    window.arm(&["y"]);
    a.cycle_after(120).await; // lists (sees y live), then the retry PUT
    assert_eq!(
        window.deleted.load(Ordering::SeqCst),
        1,
        "the window opened"
    );
    let sent = window.sent.lock().unwrap().clone();
    let cursor = a.engine.store().cursor(&ns).await.unwrap();
    assert_eq!(sent.last().copied(), Some(Some(cursor.unwrap_or(0))));
    assert!(cursor.is_some(), "the cycle listed before the retry");
    // Not recreated on the remote. The 412 alone is only the server's word: the blob stays
    // queued until the next listing shows the tombstone with the deleting device's proof.
    assert_eq!(live_ids(&inner).await, ["keep", "x"]);
    assert_eq!(
        a.status_of("y").await,
        Some(blobsyncd::status::Status::PendingUpload)
    );
    a.cycle_after(1).await;
    assert_eq!(live_ids(&inner).await, ["keep", "x"], "not recreated");
    let left = a.info("y").await;
    assert_eq!(left.as_ref().map(|b| b.status), None, "{left:?}");
    let payload = DataDir::new(&a.data).payload_path(&ns, &BlobId::new("y").unwrap());
    assert!(!payload.exists(), "{} is left", payload.display());
    // It stays that way: later cycles neither upload nor fetch it, and the rest is intact.
    let puts = a.remote.faults.puts.load(Ordering::SeqCst);
    a.cycle_after(120).await;
    assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), puts);
    assert_eq!(live_ids(&inner).await, ["keep", "x"]);
    assert_eq!(a.info("y").await.map(|b| b.status), None);
    assert_eq!(a.read("x").await, data);
    assert_eq!(
        a.status_of("x").await,
        Some(blobsyncd::status::Status::Synced)
    );
}

/// The partial outage: the blob is deleted elsewhere, then this device's listing fails but its
/// retried PUT gets through. Without a listing only the server can stop the PUT.
async fn retry_after_a_failed_listing_is_refused<R: Remote + Clone>(dir: &Path, inner: R) {
    let (a, window) = device_with_window(&dir.join("a"), inner.clone()).await;
    a.put("first", b"lists once, so there is a cursor").await;
    a.engine.run_cycle().await;
    a.put("y", &bytes(5_000, 3)).await;
    a.lose_next_put_answer_and_its_check();
    a.engine.run_cycle().await;
    assert!(a.info("y").await.unwrap().upload_salt.is_some());
    // Another device deletes it; then this device's listing fails (a 503 from a broken
    // listing backend, say) while PUTs still work.
    common::delete_as_device(&inner, &Namespace::default(), &BlobId::new("y").unwrap()).await;
    a.remote.faults.fail_next(RemoteError::Http {
        status: 503,
        message: "listing backend down (injected)".into(),
        retry_after: None,
    });
    let puts = a.remote.faults.puts.load(Ordering::SeqCst);
    a.cycle_after(120).await;
    assert_eq!(
        a.remote.faults.puts.load(Ordering::SeqCst),
        puts + 1,
        "the retry ran without a listing"
    );
    assert!(window.sent.lock().unwrap().last().unwrap().is_some());
    assert_eq!(live_ids(&inner).await, ["first"]);
    // Refused, not recreated; the next listing's proven tombstone removes it here.
    a.cycle_after(1).await;
    assert_eq!(live_ids(&inner).await, ["first"]);
    assert_eq!(a.info("y").await.map(|b| b.status), None);
}

/// The same through `/stream`: a batch stored but its answer lost; before the retried batch
/// two of its blobs are deleted elsewhere. Those two are refused (412 in the map) and removed
/// here; the others get 409 with our salt and are SYNCED.
async fn batch_retry_refuses_only_the_deleted<R: Remote + Clone>(dir: &Path, inner: R) {
    let (a, window) = device_with_window(&dir.join("a"), inner.clone()).await;
    let ids: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        a.put(id, &bytes(200 + i, i as u8)).await;
    }
    a.remote
        .faults
        .lose_batch_answers
        .store(1, Ordering::SeqCst);
    a.engine.run_cycle().await;
    assert!(
        a.remote.faults.batches.load(Ordering::SeqCst) >= 1,
        "went as a batch"
    );
    assert_eq!(live_ids(&inner).await.len(), 10);
    for id in &ids {
        let b = a.info(id).await.unwrap();
        assert_eq!(b.status, blobsyncd::status::Status::PendingUpload, "{id}");
    }

    window.arm(&["s3", "s7"]);
    a.cycle_after(120).await;
    assert_eq!(window.deleted.load(Ordering::SeqCst), 2);
    assert!(
        window.sent.lock().unwrap().last().unwrap().is_some(),
        "the retried batch was conditional"
    );
    let live = live_ids(&inner).await;
    assert_eq!(live.len(), 8, "{live:?}");
    assert!(!live.contains(&"s3".to_string()) && !live.contains(&"s7".to_string()));
    // The next listing carries the deleting device's proofs: that, not the 412, removes them.
    a.cycle_after(1).await;
    assert_eq!(live_ids(&inner).await.len(), 8, "not recreated");
    for id in &ids {
        let st = a.status_of(id).await;
        if id == "s3" || id == "s7" {
            assert_eq!(st, None, "{id} must end deleted locally");
        } else {
            assert_eq!(st, Some(blobsyncd::status::Status::Synced), "{id}");
        }
    }
}

// ---- each behaviour over DirRemote (its change-log rule) and HttpRemote (the server's) ------

async fn a_delete_between_listing_and_retry_is_not_undone_on<M: Meeting>(m: &M, dir: &Path) {
    single_put_retry_is_refused(dir, m.remote()).await;
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test]
async fn a_delete_between_listing_and_retry_is_not_undone(#[case] kind: RemoteKind) {
    on_remote!(kind, a_delete_between_listing_and_retry_is_not_undone_on);
}

async fn a_retry_after_a_failed_listing_is_refused_on<M: Meeting>(m: &M, dir: &Path) {
    retry_after_a_failed_listing_is_refused(dir, m.remote()).await;
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test]
async fn a_retry_after_a_failed_listing_is_refused(#[case] kind: RemoteKind) {
    on_remote!(kind, a_retry_after_a_failed_listing_is_refused_on);
}

async fn a_batch_retry_skips_the_blobs_deleted_meanwhile_on<M: Meeting>(m: &M, dir: &Path) {
    batch_retry_refuses_only_the_deleted(dir, m.remote()).await;
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test]
async fn a_batch_retry_skips_the_blobs_deleted_meanwhile(#[case] kind: RemoteKind) {
    on_remote!(kind, a_batch_retry_skips_the_blobs_deleted_meanwhile_on);
}

/// The rule itself, at the remote: a put with `if_absent_since` is a conflict while the blob
/// lives, `DeletedAfter` (the server's 412) when it was deleted after `since`, and stored when
/// it was deleted at or before `since`.
async fn the_remote_refuses_a_put_deleted_after_since_on<M: Meeting>(m: &M, _dir: &Path) {
    let r = m.remote();
    let ns = Namespace::default();
    let id = BlobId::new("z").unwrap();
    let put = |since| {
        let r = r.clone();
        let (ns, id) = (ns.clone(), id.clone());
        async move {
            r.put(&ns, &id, 1, blobsyncd::remote::once_body(&b"z"[..]), since)
                .await
        }
    };
    put(None).await.unwrap(); // seq 1
    assert!(matches!(put(Some(0)).await, Err(RemoteError::Conflict)));
    r.delete(&ns, &id, None).await.unwrap(); // seq 2
    match put(Some(1)).await {
        Err(RemoteError::DeletedAfter(m)) => {
            assert!(m.contains("deleted at seq 2, after 1"), "{m}")
        }
        other => panic!("want DeletedAfter, got {other:?}"),
    }
    put(Some(2)).await.unwrap(); // deleted at or before since: stored
    let got = r.get(&ns, &id, None).await.unwrap();
    assert_eq!(collect_body(got.body, 10).await.unwrap(), b"z");
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test]
async fn the_remote_refuses_a_put_deleted_after_since(#[case] kind: RemoteKind) {
    on_remote!(kind, the_remote_refuses_a_put_deleted_after_since_on);
}
