//! Namespace discovery: a device lists the namespaces the remote holds (on its first cycle
//! and on every full listing), not only `default`, configured ones and ones it has rows in.
//! Real stores in temp dirs over a real remote shared by the devices: each behaviour is one
//! body with an `rstest` case for a `DirRemote` and one for `HttpRemote` against the real
//! server in process (whose namespace listing is its own endpoint).

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::{BlobId, Namespace};
use blobsyncd::remote::Remote;
use blobsyncd::status::Status;
use common::*;
use rstest::rstest;

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

async fn a_fresh_device_discovers_every_namespace_on_its_first_cycle_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let photo = bytes(30_000, 1);
    let mail = bytes(20_000, 2);
    a.put_ns(ns("photos"), "p1", &photo).await;
    a.put_ns(ns("MX"), "m1", &mail).await;
    // A namespace left with a tombstone only: listed, nothing to fetch.
    a.put_ns(ns("old"), "gone", &bytes(10, 3)).await;
    a.engine.run_cycle().await;
    a.handle
        .delete(&ns("old"), &BlobId::new("gone").unwrap())
        .await
        .unwrap();
    a.engine.run_cycle().await;
    let mut names: Vec<String> = a
        .remote
        .inner()
        .namespaces()
        .await
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["MX", "old", "photos"]);

    // B configures MX lazy and knows nothing of `photos`: unknown namespaces are eager.
    let mut s = settings();
    s.namespaces.insert(ns("MX"), NamespacePolicy::Lazy);
    let b = m.device(&dir.join("b"), s).await;
    let sum = b.engine.run_cycle().await;
    assert_eq!(sum.error, None, "{sum:?}");
    assert_eq!(sum.downloaded, 1, "{sum:?}");
    assert_eq!(
        b.info_ns(&ns("photos"), "p1").await.unwrap().status,
        Status::Synced
    );
    assert_eq!(b.read_ns(&ns("photos"), "p1", false).await, photo);
    assert_eq!(
        b.info_ns(&ns("MX"), "m1").await.unwrap().status,
        Status::RemoteOnly
    );
    assert!(b.info_ns(&ns("old"), "gone").await.is_none());
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_device_discovers_every_namespace_on_its_first_cycle(#[case] kind: RemoteKind) {
    on_remote!(
        kind,
        a_fresh_device_discovers_every_namespace_on_its_first_cycle_on
    );
}

async fn a_namespace_created_later_is_found_by_the_next_incremental_cycle_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let b = m.device(&dir.join("b"), settings()).await;
    b.engine.run_cycle().await;
    b.engine.run_cycle().await;
    a.put_ns(ns("later"), "x", &bytes(5_000, 4)).await;
    a.engine.run_cycle().await;
    // An incremental cycle sees the user's sequence move (in a namespace it does not list),
    // so it asks for the namespaces again and lists the new one (in full: it has no cursor).
    let sum = b.engine.run_cycle().await;
    assert_eq!(sum.downloaded, 1, "{sum:?}");
    let sum = b.engine.run_full_cycle().await;
    assert_eq!(sum.downloaded, 0, "{sum:?}");
    assert_eq!(
        b.info_ns(&ns("later"), "x").await.unwrap().status,
        Status::Synced
    );
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_created_later_is_found_by_the_next_incremental_cycle(
    #[case] kind: RemoteKind,
) {
    on_remote!(
        kind,
        a_namespace_created_later_is_found_by_the_next_incremental_cycle_on
    );
}

async fn discovery_that_failed_because_the_remote_was_down_is_retried_next_cycle_on<M: Meeting>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    a.put_ns(ns("photos"), "p1", &bytes(8_000, 5)).await;
    a.engine.run_cycle().await;
    let b = m.device(&dir.join("b"), settings()).await;
    b.remote.faults.down.store(true, Ordering::SeqCst);
    let sum = b.engine.run_cycle().await;
    assert!(sum.error.is_some(), "{sum:?}");
    b.remote.faults.down.store(false, Ordering::SeqCst);
    // Not a full listing by the schedule, but this run never listed the namespaces yet.
    let sum = b.cycle_after(30).await;
    assert_eq!(sum.downloaded, 1, "{sum:?}");
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_that_failed_because_the_remote_was_down_is_retried_next_cycle(
    #[case] kind: RemoteKind,
) {
    on_remote!(
        kind,
        discovery_that_failed_because_the_remote_was_down_is_retried_next_cycle_on
    );
}
