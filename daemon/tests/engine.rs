//! Engine tests: real stores in temp dirs, a real remote, faults injected by `FaultyRemote`,
//! time from a `ManualClock`. The remote is a `DirRemote`, except for the behaviours that
//! depend on what the remote answers (sync, deletes, batches, conflicts, ranges, tampering,
//! refusals): those are one body generic over `Meeting` with an `rstest` case for the
//! `DirRemote` and one for `HttpRemote` against the real server in process.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::clock::Clock;
use blobsyncd::remote::RemoteError;
use blobsyncd::status::Status;
use common::*;
use rstest::rstest;

/// Two devices through one remote: a put on A (a big blob and a dozen small ones, which go
/// up batched) is downloaded by B, the remote holds only ciphertext, A's next cycle re-uploads
/// nothing, and a delete on A is PENDING_DELETE until the remote confirms, then gone on A and
/// on B, which never uploads it again. (Was written twice, for each remote.)
async fn two_devices_sync_puts_and_deletes_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    let big = bytes(1_500_000, 1);
    a.put("big", &big).await;
    for i in 0..12 {
        a.put(&format!("small{i}"), &bytes(300 + i, i as u8)).await;
    }
    assert_eq!(a.status_of("big").await, Some(Status::PendingUpload));
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 13, "{s:?}");
    assert!(
        a.remote.faults.batches.load(Ordering::SeqCst) >= 1,
        "small blobs batched"
    );
    assert_eq!(a.status_of("big").await, Some(Status::Synced));

    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 13, "{s:?}");
    assert_eq!(b.status_of("big").await, Some(Status::Synced));
    assert_eq!(b.read("big").await, big);
    assert_eq!(b.read("small7").await, bytes(307, 7));

    // The remote only ever holds ciphertext.
    let stored = std::fs::read(m.stored_file("big")).unwrap();
    assert_eq!(&stored[..2], &[0x13, 0x37]);
    assert!(!stored.windows(64).any(|w| w == &big[1000..1064]));

    // A's next cycle sees its own blobs listed: nothing to do, nothing re-uploaded.
    let puts = a.remote.faults.puts.load(Ordering::SeqCst);
    let s = a.engine.run_cycle().await;
    assert_eq!((s.uploaded, s.downloaded), (0, 0), "{s:?}");
    assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), puts);

    // Delete on A: PENDING_DELETE until the remote confirms, then gone; B follows.
    let st = a
        .handle
        .delete(&Namespace::default(), &BlobId::new("big").unwrap())
        .await
        .unwrap();
    assert_eq!(st, Some(Status::PendingDelete));
    let s = a.engine.run_cycle().await;
    assert_eq!(s.deleted_remote, 1, "{s:?}");
    assert_eq!(a.status_of("big").await, None);
    let b_file = b.data.join("blobs/default/bi/big");
    assert!(
        b_file.exists(),
        "B's payload of big is at {}",
        b_file.display()
    );
    let s = b.engine.run_cycle().await;
    assert_eq!(s.deleted_local, 1, "{s:?}");
    assert_eq!(b.status_of("big").await, None);
    assert!(!b_file.exists());
    // And B never uploads it again.
    b.engine.run_cycle().await;
    assert_eq!(b.remote.faults.puts.load(Ordering::SeqCst), 0);
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_sync_puts_and_deletes(#[case] kind: RemoteKind) {
    on_remote!(kind, two_devices_sync_puts_and_deletes_on);
}

async fn full_listing_removes_blobs_deleted_elsewhere_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    a.put("x", b"hello").await;
    a.engine.run_cycle().await;
    b.engine.run_cycle().await;
    assert_eq!(b.status_of("x").await, Some(Status::Synced));
    a.handle
        .delete(&Namespace::default(), &BlobId::new("x").unwrap())
        .await
        .unwrap();
    a.engine.run_cycle().await;
    let s = b.engine.run_full_cycle().await;
    assert!(s.full_listing);
    assert_eq!(b.status_of("x").await, None);
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_listing_removes_blobs_deleted_elsewhere(#[case] kind: RemoteKind) {
    on_remote!(kind, full_listing_removes_blobs_deleted_elsewhere_on);
}

#[tokio::test]
async fn failed_uploads_wait_10_20_30_40_50_60_60_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    a.put("q", b"queued").await;
    a.remote.faults.down.store(true, Ordering::SeqCst);
    let mut sub = a.handle.subscribe(None);
    let mut waits = Vec::new();
    for n in 1..=7u32 {
        let before = a.remote.faults.puts.load(Ordering::SeqCst);
        let failed_at = a.clock.now();
        a.engine.run_cycle().await;
        assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), before + 1);
        let info = a.info("q").await.unwrap();
        assert_eq!(info.status, Status::PendingUpload);
        let wait = info
            .next_attempt
            .unwrap()
            .duration_since(failed_at)
            .unwrap();
        waits.push(wait.as_secs());
        // Watchers are told which attempt failed and when the next one is due.
        let mut failed = None;
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            if let blobsyncd::events::Delivery::Event(e) = d
                && let blobsyncd::events::EventKind::TransferFailed {
                    attempt,
                    will_retry,
                    next_attempt,
                    ..
                } = e.kind
            {
                failed = Some((attempt, will_retry, next_attempt));
            }
        }
        assert_eq!(failed, Some((n, true, info.next_attempt)), "attempt {n}");
        // Not due a second early: a cycle then makes no attempt.
        a.clock.advance(wait - Duration::from_secs(1));
        a.engine.run_cycle().await;
        assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), before + 1);
        a.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(waits, [10, 20, 30, 40, 50, 60, 60]);
    assert_eq!(a.info("q").await.unwrap().attempts, 7);
}

#[tokio::test]
async fn a_restart_keeps_the_queue_and_its_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, remote) = (tmp.path().join("a"), tmp.path().join("r"));
    let clock = blobsyncd::clock::ManualClock::default();
    {
        let a = Device::open_with_clock(&data, &remote, settings(), clock.clone()).await;
        a.put("q", b"queued").await;
        a.remote.faults.down.store(true, Ordering::SeqCst);
        a.engine.run_cycle().await;
        clock.advance(Duration::from_secs(10));
        a.engine.run_cycle().await;
        assert_eq!(a.info("q").await.unwrap().attempts, 2);
    }
    let a = Device::open_with_clock(&data, &remote, settings(), clock.clone()).await;
    let info = a.info("q").await.unwrap();
    assert_eq!((info.status, info.attempts), (Status::PendingUpload, 2));
    assert_eq!(
        info.next_attempt
            .unwrap()
            .duration_since(clock.now())
            .unwrap(),
        Duration::from_secs(20)
    );
    clock.advance(Duration::from_secs(20));
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 1);
}

#[tokio::test]
async fn remote_down_then_back_drains_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    a.remote.faults.down.store(true, Ordering::SeqCst);
    for i in 0..5 {
        a.put(&format!("b{i}"), &bytes(1000 * (i + 1), i as u8))
            .await;
    }
    let s = a.engine.run_cycle().await;
    assert!(s.error.is_some());
    let st = a.handle.status().await.unwrap();
    assert_eq!(st.remote.reachable, Some(false));
    assert_eq!(st.counts[&Status::PendingUpload], 5);
    a.remote.faults.down.store(false, Ordering::SeqCst);
    let s = a.cycle_after(10).await;
    assert_eq!(s.uploaded, 5, "{s:?}");
    let st = a.handle.status().await.unwrap();
    assert_eq!(st.counts[&Status::Synced], 5);
    assert_eq!(st.remote.reachable, Some(true));
}

async fn a_tampered_blob_is_tried_exactly_3_times_then_failed_download_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    a.put("t", &bytes(50_000, 3)).await;
    a.engine.run_cycle().await;
    m.tamper("t", 20_000);
    let mut gets = 0;
    for i in 0..6 {
        b.cycle_after(if i == 0 { 0 } else { 60 }).await;
        let now = b.remote.faults.gets.load(Ordering::SeqCst);
        if now > gets {
            gets = now;
        }
    }
    assert_eq!(b.remote.faults.gets.load(Ordering::SeqCst), 3);
    let info = b.info("t").await.unwrap();
    assert_eq!(info.status, Status::FailedDownload);
    assert_eq!(info.invalid_attempts, 3);
    let reason = info.last_error.unwrap();
    assert!(
        reason.contains("segment") && reason.contains("authentication"),
        "{reason}"
    );
    // No plaintext of a bad blob is left behind.
    assert!(!b.data.join("blobs/default/t/t").exists());
    // retry re-queues it.
    b.handle
        .retry(&Namespace::default(), &BlobId::new("t").unwrap())
        .await
        .unwrap();
    assert_eq!(b.status_of("t").await, Some(Status::PendingDownload));
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_tried_exactly_3_times_then_failed_download(#[case] kind: RemoteKind) {
    on_remote!(
        kind,
        a_tampered_blob_is_tried_exactly_3_times_then_failed_download_on
    );
}

async fn a_cut_download_resumes_with_a_range_and_is_not_tampering_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    let data = bytes(300_000, 9);
    a.put("big", &data).await;
    a.engine.run_cycle().await;
    b.remote.faults.cut_next_get(100_000);
    b.remote.faults.cut_next_get(50_000);
    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 1, "{s:?} {:?}", b.info("big").await);
    assert_eq!(b.read("big").await, data);
    assert_eq!(b.remote.faults.ranged_gets.load(Ordering::SeqCst), 2);
    let info = b.info("big").await.unwrap();
    assert_eq!((info.attempts, info.invalid_attempts), (0, 0));
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_with_a_range_and_is_not_tampering(#[case] kind: RemoteKind) {
    on_remote!(
        kind,
        a_cut_download_resumes_with_a_range_and_is_not_tampering_on
    );
}

async fn a_body_cut_without_progress_is_a_retry_not_invalid_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    a.put("c", &bytes(20_000, 2)).await;
    a.engine.run_cycle().await;
    for _ in 0..3 {
        b.remote.faults.cut_next_get(10);
    }
    b.engine.run_cycle().await;
    let info = b.info("c").await.unwrap();
    assert_eq!(info.status, Status::PendingDownload);
    assert_eq!((info.attempts, info.invalid_attempts), (1, 0));
    let s = b.cycle_after(10).await;
    assert_eq!(s.downloaded, 1);
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_without_progress_is_a_retry_not_invalid(#[case] kind: RemoteKind) {
    on_remote!(kind, a_body_cut_without_progress_is_a_retry_not_invalid_on);
}

#[tokio::test]
async fn a_lazy_namespace_stays_remote_only_until_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let mx = Namespace::new("MX").unwrap();
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let mut lazy = settings();
    lazy.namespaces
        .insert(mx.clone(), blobsync_shared::config::NamespacePolicy::Lazy);
    let b = Device::open(&tmp.path().join("b"), &remote, lazy).await;
    let data = bytes(70_000, 5);
    a.put_ns(mx.clone(), "mail1", &data).await;
    a.engine.run_cycle().await;
    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 0);
    assert_eq!(
        b.info_ns(&mx, "mail1").await.unwrap().status,
        Status::RemoteOnly
    );
    // Without fetch: a clear refusal; with fetch: downloaded on demand.
    let err = b
        .handle
        .open_for_read(&mx, &BlobId::new("mail1").unwrap(), None, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), blobsyncd::handle::ErrorCode::FailedPrecondition);
    assert_eq!(b.read_ns(&mx, "mail1", true).await, data);
    assert_eq!(
        b.info_ns(&mx, "mail1").await.unwrap().status,
        Status::Synced
    );
}

async fn a_409_after_a_lost_answer_is_ours_and_becomes_synced_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    a.put("p", &bytes(70_000, 5)).await;
    a.lose_next_put_answer_and_its_check();
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("p").await, Some(Status::PendingUpload));
    let s = a.cycle_after(10).await;
    assert_eq!(s.uploaded, 1, "{s:?}");
    assert_eq!(a.status_of("p").await, Some(Status::Synced));
    assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), 2);
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_after_a_lost_answer_is_ours_and_becomes_synced(#[case] kind: RemoteKind) {
    on_remote!(
        kind,
        a_409_after_a_lost_answer_is_ours_and_becomes_synced_on
    );
}

async fn a_409_for_someone_elses_blob_is_failed_upload_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    a.put("same", b"from a").await;
    b.put("same", b"from b").await;
    a.engine.run_cycle().await;
    b.engine.run_cycle().await;
    let info = b.info("same").await.unwrap();
    assert_eq!(info.status, Status::FailedUpload);
    assert!(info.last_error.unwrap().contains("conflict"));
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_for_someone_elses_blob_is_failed_upload(#[case] kind: RemoteKind) {
    on_remote!(kind, a_409_for_someone_elses_blob_is_failed_upload_on);
}

#[tokio::test]
async fn quota_and_size_refusals_are_failed_upload_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    a.put("big", b"x").await;
    a.remote.faults.fail_next_put(RemoteError::QuotaExceeded);
    a.engine.run_cycle().await;
    let info = a.info("big").await.unwrap();
    assert_eq!(info.status, Status::FailedUpload);
    assert!(info.last_error.unwrap().contains("quota"));
}

#[tokio::test]
async fn retry_after_longer_than_the_schedule_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    a.put("r", b"x").await;
    // The PUT gets 503 with Retry-After: 120 (longer than the schedule's 10 s).
    a.remote.faults.fail_next_put(RemoteError::Http {
        status: 503,
        message: "busy".into(),
        retry_after: Some(Duration::from_secs(120)),
    });
    let t0 = a.clock.now();
    a.engine.run_cycle().await;
    let info = a.info("r").await.unwrap();
    let wait = info.next_attempt.unwrap().duration_since(t0).unwrap();
    assert_eq!(wait, Duration::from_secs(120));
}

async fn unauthorized_stops_transfers_and_shows_in_status_until_fixed_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    a.put("u1", b"1").await;
    a.put("u2", b"2").await;
    a.remote.faults.unauthorized.store(true, Ordering::SeqCst);
    a.engine.run_cycle().await;
    let st = a.handle.status().await.unwrap();
    assert!(st.remote.unauthorized);
    assert_eq!(
        a.remote.faults.puts.load(Ordering::SeqCst),
        0,
        "no transfer while refused"
    );
    a.remote.faults.unauthorized.store(false, Ordering::SeqCst);
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 2);
    assert!(!a.handle.status().await.unwrap().remote.unauthorized);
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_stops_transfers_and_shows_in_status_until_fixed(#[case] kind: RemoteKind) {
    on_remote!(
        kind,
        unauthorized_stops_transfers_and_shows_in_status_until_fixed_on
    );
}

async fn many_small_blobs_go_up_and_down_in_batches_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    for i in 0..40 {
        a.put(&format!("s{i:02}"), &bytes(100 + i, i as u8)).await;
    }
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 40, "{s:?}");
    assert!(a.remote.faults.batches.load(Ordering::SeqCst) >= 1);
    assert_eq!(a.remote.faults.puts.load(Ordering::SeqCst), 0);
    let s = b.engine.run_cycle().await;
    assert_eq!(s.downloaded, 40, "{s:?}");
    assert_eq!(b.remote.faults.gets.load(Ordering::SeqCst), 0);
    for i in [0usize, 17, 39] {
        assert_eq!(b.read(&format!("s{i:02}")).await, bytes(100 + i, i as u8));
    }
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_blobs_go_up_and_down_in_batches(#[case] kind: RemoteKind) {
    on_remote!(kind, many_small_blobs_go_up_and_down_in_batches_on);
}

async fn a_blob_answered_twice_in_a_batch_breaks_it_and_nothing_hangs_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    for i in 0..10 {
        a.put(&format!("s{i:02}"), &bytes(100 + i, i as u8)).await;
    }
    assert_eq!(a.engine.run_cycle().await.uploaded, 10);
    // A hostile server answers each blob twice: both copies are authentic, and two copies of
    // one blob in a batch once made it wait for its own lock, forever.
    b.remote
        .faults
        .repeat_batch_items
        .store(true, Ordering::SeqCst);
    let s = tokio::time::timeout(Duration::from_secs(30), b.engine.run_cycle())
        .await
        .expect("a blob answered twice hung the batch");
    assert!(s.downloaded < 10, "{s:?}");
    let waiting = (0..10).map(|i| format!("s{i:02}")).collect::<Vec<_>>();
    let mut said_twice = false;
    for id in &waiting {
        let info = b.info(id).await.unwrap();
        if info.status == Status::PendingDownload {
            said_twice |= info.last_error.is_some_and(|e| e.contains("twice"));
        }
    }
    assert!(said_twice, "the blobs left waiting say why");
    // An honest answer later brings the rest.
    b.remote
        .faults
        .repeat_batch_items
        .store(false, Ordering::SeqCst);
    b.cycle_after(60).await;
    for (i, id) in waiting.iter().enumerate() {
        assert_eq!(b.read(id).await, bytes(100 + i, i as u8));
    }
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_answered_twice_in_a_batch_breaks_it_and_nothing_hangs(#[case] kind: RemoteKind) {
    on_remote!(
        kind,
        a_blob_answered_twice_in_a_batch_breaks_it_and_nothing_hangs_on
    );
}

#[tokio::test]
async fn pause_is_persisted_and_resume_restarts_transfers() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, remote) = (tmp.path().join("a"), tmp.path().join("r"));
    {
        let a = Device::open(&data, &remote, settings()).await;
        a.handle.pause(None).await.unwrap();
        a.put("p", b"x").await;
        a.engine.run_cycle().await;
        assert_eq!(a.status_of("p").await, Some(Status::PendingUpload));
    }
    let a = Device::open(&data, &remote, settings()).await;
    assert!(a.handle.status().await.unwrap().paused);
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("p").await, Some(Status::PendingUpload));
    a.handle.resume(None).await.unwrap();
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("p").await, Some(Status::Synced));
}

#[tokio::test]
async fn verify_finds_bit_rot_and_requeues_a_download() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    let data = bytes(5000, 8);
    a.put("v", &data).await;
    a.engine.run_cycle().await;
    let path = a.data.join("blobs/default/v/v");
    let mut rotten = std::fs::read(&path).unwrap();
    rotten[100] ^= 1;
    std::fs::write(&path, rotten).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(100);
    let report = a.handle.verify(true, tx).await.unwrap();
    assert_eq!(report.checked_local, 1);
    assert_eq!(report.damaged.len(), 1);
    assert!(report.damaged[0].requeued);
    assert_eq!(a.status_of("v").await, Some(Status::PendingDownload));
    a.engine.run_cycle().await;
    assert_eq!(a.read("v").await, data);
}

#[tokio::test]
async fn events_report_status_changes_and_cycles() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    let mut sub = a.handle.subscribe(Some(0));
    a.put("e", b"x").await;
    a.engine.run_cycle().await;
    let mut kinds = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
        if let blobsyncd::events::Delivery::Event(e) = d {
            kinds.push(e.kind);
        }
    }
    use blobsyncd::events::EventKind as K;
    assert!(kinds.iter().any(|k| matches!(
        k,
        K::StatusChanged {
            from: None,
            to: Some(Status::PendingUpload),
            ..
        }
    )));
    assert!(kinds.iter().any(|k| matches!(
        k,
        K::StatusChanged {
            to: Some(Status::Synced),
            ..
        }
    )));
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, K::CycleFinished { summary } if summary.uploaded == 1))
    );
    // A forced full listing says so when its cycle starts; an ordinary cycle does not.
    a.engine.run_cycle().await;
    a.engine.run_full_cycle().await;
    let mut started = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
        if let blobsyncd::events::Delivery::Event(e) = d
            && let K::CycleStarted { full_list, .. } = e.kind
        {
            started.push(full_list);
        }
    }
    assert_eq!(started, [false, true]);
}

#[tokio::test]
async fn a_blob_deleted_elsewhere_after_a_lost_put_answer_is_not_resurrected() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    a.put("x", &bytes(5000, 1)).await;
    a.lose_next_put_answer_and_its_check();
    a.engine.run_cycle().await;
    assert_eq!(a.status_of("x").await, Some(Status::PendingUpload));
    b.engine.run_cycle().await;
    assert_eq!(b.status_of("x").await, Some(Status::Synced));
    b.handle
        .delete(&Namespace::default(), &BlobId::new("x").unwrap())
        .await
        .unwrap();
    b.engine.run_cycle().await;
    let puts = a.remote.faults.puts.load(Ordering::SeqCst);
    a.cycle_after(60).await;
    assert_eq!(
        a.status_of("x").await,
        None,
        "deleted elsewhere: gone here too"
    );
    assert_eq!(
        a.remote.faults.puts.load(Ordering::SeqCst),
        puts,
        "never re-uploaded"
    );
    b.engine.run_cycle().await;
    assert_eq!(b.status_of("x").await, None);
}

#[tokio::test]
async fn the_run_loop_uploads_at_once_after_a_put_and_coalesces_forced_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(a.engine.clone().run(cancel.clone()));
    // The first cycle runs at start; a put afterwards is uploaded without waiting 30 s.
    a.handle.sync(true).await.unwrap();
    a.put("now", b"right away").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.status_of("now").await != Some(Status::Synced) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not uploaded at once"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Three forced syncs at once: each caller gets a summary, cycles never overlap.
    let (h1, h2, h3) = (a.handle.clone(), a.handle.clone(), a.handle.clone());
    let (s1, s2, s3) = tokio::join!(h1.sync(true), h2.sync(true), h3.sync(true));
    let cycles = [s1, s2, s3].map(|s| s.unwrap().unwrap().cycle);
    assert!(cycles.iter().all(|c| *c >= 2), "{cycles:?}");
    let distinct: std::collections::BTreeSet<_> = cycles.iter().collect();
    assert!(distinct.len() <= 2, "coalesced: {cycles:?}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the loop stops on cancel")
        .unwrap();
    assert!(matches!(
        a.handle.sync(false).await,
        Err(blobsyncd::handle::EngineError::ShuttingDown)
    ));
}

/// A device whose run loop is running and whose first upload (PUT or batch) is held at the
/// remote's door until `gate` gets a permit; `calls` counts every upload that reached it.
struct GatedDevice {
    dev: Device,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cancel: tokio_util::sync::CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

impl GatedDevice {
    async fn start(dir: &Path) -> GatedDevice {
        let dev = Device::open(&dir.join("a"), &dir.join("r"), settings()).await;
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (g, c) = (gate.clone(), calls.clone());
        dev.remote
            .faults
            .before_put(std::sync::Arc::new(move |_, _| {
                let (g, c) = (g.clone(), c.clone());
                Box::pin(async move {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        let _ = g.acquire().await.unwrap();
                    }
                })
            }));
        let cancel = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(dev.engine.clone().run(cancel.clone()));
        dev.handle.sync(true).await.unwrap();
        GatedDevice {
            dev,
            gate,
            calls,
            cancel,
            run,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Puts a small blob and waits until its upload is at the door.
    async fn put_first(&self, id: &str) {
        self.dev.put(id, &bytes(1000, 0)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.calls() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "{id} never went up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every id is `SYNCED`, failing at `deadline`.
    async fn wait_synced<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        deadline: tokio::time::Instant,
    ) {
        for id in ids {
            while self.dev.status_of(id).await != Some(Status::Synced) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} was not uploaded in time: {:?}",
                    self.dev.status_of(id).await
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.run)
            .await
            .expect("the loop stops on cancel")
            .unwrap();
    }
}

fn in_secs(s: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(s)
}

/// Small puts made while a small upload is in flight wait for it (a big one does not), then go
/// up together in one batch; none is left behind by the kick each of them skipped
/// (`Shared::kick_for_put`): all are uploaded at once, with no cycle in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_puts_during_an_upload_go_up_together_when_it_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GatedDevice::start(tmp.path()).await;
    g.put_first("w00").await;
    let ids: Vec<String> = (1..12).map(|i| format!("w{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        g.dev.put(id, &bytes(1000, i as u8 + 1)).await;
    }
    // A big put does not wait, and its pick leaves the small ones waiting.
    g.dev.put("big", &bytes(100_000, 50)).await;
    g.wait_synced(["big"], in_secs(5)).await;
    assert_eq!(g.calls(), 2, "the small puts wait for the upload in flight");
    g.gate.add_permits(1);
    // Well within the 30 s cycle interval: only the end of the first upload picks them up.
    g.wait_synced(
        std::iter::once("w00").chain(ids.iter().map(String::as_str)),
        in_secs(10),
    )
    .await;
    assert_eq!(
        g.calls(),
        3,
        "the first upload, the big one, then one batch of the eleven that waited"
    );
    // With nothing in flight, a small put wakes the loop again.
    g.dev.put("late", &bytes(1000, 99)).await;
    g.wait_synced(["late"], in_secs(5)).await;
    g.stop().await;
}

/// A wave stuck on a stalled connection holds the next small puts back for a few seconds
/// only: they go up while it is still stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_puts_wait_for_a_stuck_upload_only_a_few_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GatedDevice::start(tmp.path()).await;
    g.put_first("stuck").await;
    let started = tokio::time::Instant::now();
    g.dev.put("next1", &bytes(1000, 1)).await;
    g.dev.put("next2", &bytes(1000, 2)).await;
    // Within the 30 s cycle interval, while the first upload is still held at the door.
    g.wait_synced(["next1", "next2"], started + Duration::from_secs(20))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "they did wait for the wave a while first: {:?}",
        started.elapsed()
    );
    assert_eq!(g.dev.status_of("stuck").await, Some(Status::PendingUpload));
    g.gate.add_permits(1);
    g.wait_synced(["stuck"], in_secs(10)).await;
    g.stop().await;
}

/// The mass-deletion guard weighs a listing's deletions against the namespace as this device
/// had it: new blobs listed beside them do not widen the 25 %. Here 101 of B's 120 blobs are
/// deleted on A while A puts 300 new ones: with the 420 rows after the listing as the measure,
/// 101 <= max(100, 105) passed; against B's 120 they are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_blobs_listed_beside_a_mass_deletion_do_not_let_it_through() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    for i in 0..120 {
        a.put(&format!("old{i:03}"), &bytes(100, i as u8)).await;
    }
    a.engine.run_cycle().await;
    b.engine.run_cycle().await;
    assert_eq!(b.handle.list(Default::default()).await.unwrap().len(), 120);
    for i in 0..101 {
        a.handle
            .delete(
                &Namespace::default(),
                &BlobId::new(format!("old{i:03}")).unwrap(),
            )
            .await
            .unwrap();
    }
    for i in 0..300 {
        a.put(&format!("new{i:03}"), &bytes(100, i as u8)).await;
    }
    a.engine.run_cycle().await;
    let s = b.engine.run_cycle().await;
    assert_eq!(s.deletions_held, 101, "{s:?}");
    for i in 0..120 {
        assert_eq!(
            b.status_of(&format!("old{i:03}")).await,
            Some(Status::Synced),
            "old{i:03} is kept while the deletion is held"
        );
    }
}

#[tokio::test]
async fn a_download_of_a_blob_deleted_meanwhile_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let b = Device::open(&tmp.path().join("b"), &remote, settings()).await;
    a.put("doomed", &bytes(50_000, 1)).await;
    a.engine.run_cycle().await;
    b.handle.pause(None).await.unwrap();
    b.engine.run_cycle().await; // lists it, does not fetch it
    assert_eq!(b.status_of("doomed").await, Some(Status::PendingDownload));
    // Cut mid-body once, then the blob is deleted before the resume.
    b.remote.faults.cut_next_get(10_000);
    b.remote.faults.fail_next(RemoteError::NotFound);
    a.handle
        .delete(&Namespace::default(), &BlobId::new("doomed").unwrap())
        .await
        .unwrap();
    a.engine.run_cycle().await;
    b.handle.resume(None).await.unwrap();
    b.engine.run_cycle().await;
    b.cycle_after(60).await;
    assert_eq!(b.status_of("doomed").await, None);
    let left: Vec<_> = std::fs::read_dir(b.data.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_missing_payload_is_failed_upload_not_retried_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    a.put("gone", b"soon missing").await;
    std::fs::remove_file(a.data.join("blobs/default/go/gone")).unwrap();
    a.engine.run_cycle().await;
    let info = a.info("gone").await.unwrap();
    assert_eq!(info.status, Status::FailedUpload);
    assert!(info.last_error.unwrap().contains("missing"));
}

#[tokio::test]
async fn a_namespace_switched_to_eager_fetches_its_remote_only_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let mx = Namespace::new("MX").unwrap();
    let a = Device::open(&tmp.path().join("a"), &remote, settings()).await;
    let mut lazy = settings();
    lazy.namespaces
        .insert(mx.clone(), blobsync_shared::config::NamespacePolicy::Lazy);
    let b = Device::open(&tmp.path().join("b"), &remote, lazy).await;
    a.put_ns(mx.clone(), "m", b"mail").await;
    a.engine.run_cycle().await;
    b.engine.run_cycle().await;
    assert_eq!(
        b.info_ns(&mx, "m").await.unwrap().status,
        Status::RemoteOnly
    );
    b.engine.reload(&settings());
    b.engine.run_cycle().await;
    assert_eq!(b.info_ns(&mx, "m").await.unwrap().status, Status::Synced);
}

#[tokio::test]
async fn a_lost_put_answer_is_settled_at_once_by_the_salt_check() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Device::open(&tmp.path().join("a"), &tmp.path().join("r"), settings()).await;
    a.put("l", &bytes(8000, 1)).await;
    a.remote.faults.lose_put_answers.store(1, Ordering::SeqCst);
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 1, "{s:?}");
    assert_eq!(a.status_of("l").await, Some(Status::Synced));
    assert_eq!(
        a.remote.faults.puts.load(Ordering::SeqCst),
        1,
        "no second PUT"
    );
}

async fn a_listing_that_names_a_blob_twice_is_applied_once_on<M: Meeting>(m: &M, dir: &Path) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    for i in 0..5 {
        a.put(&format!("d{i}"), &bytes(100 + i, i as u8)).await;
    }
    assert_eq!(a.engine.run_cycle().await.uploaded, 5);
    // A hostile or buggy server repeats every change of the page.
    b.remote
        .faults
        .on_changes(std::sync::Arc::new(|_, _, mut r| {
            let again = r.changes.clone();
            r.changes.extend(again);
            Ok(r)
        }));
    let s = b.engine.run_cycle().await;
    assert_eq!((s.error.as_deref(), s.downloaded), (None, 5), "{s:?}");
    for i in 0..5 {
        let id = format!("d{i}");
        assert_eq!(b.status_of(&id).await, Some(Status::Synced));
        assert_eq!(b.read(&id).await, bytes(100 + i, i as u8));
    }
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_names_a_blob_twice_is_applied_once(#[case] kind: RemoteKind) {
    on_remote!(kind, a_listing_that_names_a_blob_twice_is_applied_once_on);
}
