//! Listings are diffed and applied page by page (issue 8, IDLE: the daemon's memory must not
//! grow with a listing's length): an incremental listing moves the cursor with each applied
//! page, so a cycle that dies mid-listing leaves the pages before it applied and the next
//! cycle resumes after them; a full listing applies its pages but moves the cursor only at
//! the end, once it can tell which local rows the server no longer names.
//!
//! The remote is a real `DirRemote` or, in a second `rstest` case of each test, `HttpRemote`
//! against the real server in process; a `FaultyRemote` hook cuts its listings into pages of a
//! few changes (as the real server does at 5,000); the hook records the `since` of every
//! listing call, fails a chosen listing call, and can hide ids (a server that lost them,
//! tombstones and all).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blobsync_shared::wire::ChangesResponse;
use blobsync_shared::{BlobId, Namespace};
use blobsyncd::remote::{Remote, RemoteError};
use blobsyncd::status::{Priority, Status};
use common::*;
use rstest::rstest;

/// Changes per listing page.
const PAGE: usize = 10;

#[derive(Default)]
struct Paging {
    /// The `since` of every listing call, in order.
    sinces: Mutex<Vec<u64>>,
    /// Fail the listing call with this 1-based number (0: none).
    fail_call: AtomicU64,
    /// Ids the "server" lost: never listed.
    lost: Mutex<HashSet<String>>,
}

/// Cuts a listing answer into a page of [`PAGE`] changes, records its `since`, fails the
/// chosen call and hides the lost ids: the `FaultyRemote` hook of every paged device.
fn page(
    paging: &Paging,
    ns: &Namespace,
    since: u64,
    mut r: ChangesResponse,
) -> Result<ChangesResponse, RemoteError> {
    // Only `default`'s listings are paged and counted (the daemon also lists `MX`).
    if *ns != Namespace::default() {
        return Ok(r);
    }
    let call = {
        let mut s = paging.sinces.lock().unwrap();
        s.push(since);
        s.len() as u64
    };
    if paging.fail_call.load(Ordering::SeqCst) == call {
        return Err(RemoteError::Transport("injected: listing page lost".into()));
    }
    let lost = paging.lost.lock().unwrap().clone();
    r.changes.retain(|c| !lost.contains(c.id.as_str()));
    if r.changes.len() > PAGE {
        r.changes.truncate(PAGE);
        r.more = true;
        r.seq = r.changes[PAGE - 1].seq;
    }
    Ok(r)
}

/// A device on the meeting's remote whose listings come in pages of [`PAGE`] changes.
async fn paged_device<M: Meeting>(m: &M, data: &Path) -> (Device<M::R>, Arc<Paging>) {
    let paging = Arc::new(Paging::default());
    let dev = m.device(data, settings()).await;
    let p = paging.clone();
    dev.remote
        .faults
        .on_changes(Arc::new(move |ns, since, r| page(&p, ns, since, r)));
    (dev, paging)
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("blob{i:03}")).collect()
}

async fn present<R: Remote + Clone>(dev: &Device<R>, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        if dev.status_of(id).await.is_some() {
            out.push(id.clone());
        }
    }
    out
}

async fn cursor<R: Remote + Clone>(dev: &Device<R>) -> Option<u64> {
    dev.engine
        .store()
        .cursor(&Namespace::default())
        .await
        .unwrap()
}

/// The seq of each of the namespace's changes on the server, in order.
async fn server_seqs<M: Meeting>(m: &M) -> Vec<u64> {
    m.remote()
        .changes(&Namespace::default(), 0)
        .await
        .unwrap()
        .changes
        .iter()
        .map(|c| c.seq)
        .collect()
}

async fn an_incremental_listing_cut_off_midway_keeps_its_applied_pages_and_resumes_after_them_on<
    M: Meeting,
>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let (b, paging) = paged_device(m, &dir.join("b")).await;
    // B's first cycle (full, empty remote) leaves it a cursor: what follows is incremental.
    b.engine.run_cycle().await;
    let start = cursor(&b).await.expect("a cursor after the first listing");

    let names = ids(25);
    for (i, id) in names.iter().enumerate() {
        a.put(id, &bytes(300, i as u8)).await;
    }
    let s = a.engine.run_cycle().await;
    assert_eq!(s.uploaded, 25, "{s:?}");
    let seqs = server_seqs(m).await;
    assert_eq!(seqs.len(), 25);

    // The second page of B's listing is lost: the first page is applied, cursor and all.
    let before = paging.sinces.lock().unwrap().len() as u64;
    paging.fail_call.store(before + 2, Ordering::SeqCst);
    let s = b.engine.run_cycle().await;
    assert!(s.error.is_some(), "the listing failed: {s:?}");
    assert!(!s.full_listing);
    assert_eq!(cursor(&b).await, Some(seqs[PAGE - 1]));
    assert_eq!(present(&b, &names).await, names[..PAGE].to_vec());
    assert_eq!(
        paging.sinces.lock().unwrap()[before as usize..],
        [start, seqs[PAGE - 1]]
    );

    // The next cycle goes on from there, not from the start, and gets the rest.
    let before = paging.sinces.lock().unwrap().len();
    let s = b.engine.run_cycle().await;
    assert!(s.error.is_none(), "{s:?}");
    assert_eq!(s.listed_changes, 15, "{s:?}");
    assert_eq!(
        paging.sinces.lock().unwrap()[before..],
        [seqs[PAGE - 1], seqs[2 * PAGE - 1]]
    );
    assert_eq!(cursor(&b).await, Some(*seqs.last().unwrap()));
    assert_eq!(present(&b, &names).await, names);
    for (i, id) in names.iter().enumerate() {
        assert_eq!(b.status_of(id).await, Some(Status::Synced), "{id}");
        assert_eq!(b.read(id).await, bytes(300, i as u8));
    }

    // A's own uploads, listed back to it over several pages, are seen, never downloaded.
    let s = a.engine.run_cycle().await;
    assert_eq!((s.downloaded, s.uploaded, s.deleted_local), (0, 0, 0));
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_listing_cut_off_midway_keeps_its_applied_pages_and_resumes_after_them(
    #[case] kind: RemoteKind,
) {
    on_remote!(
        kind,
        an_incremental_listing_cut_off_midway_keeps_its_applied_pages_and_resumes_after_them_on
    );
}

async fn a_paged_full_listing_deletes_only_on_proven_tombstones_reuploads_what_the_server_lost_and_moves_the_cursor_last_on<
    M: Meeting,
>(
    m: &M,
    dir: &Path,
) {
    let a = m.device(&dir.join("a"), settings()).await;
    let (b, paging) = paged_device(m, &dir.join("b")).await;
    let names = ids(25);
    for (i, id) in names.iter().enumerate() {
        a.put(id, &bytes(100, i as u8)).await;
    }
    a.engine.run_cycle().await;
    let s = b.engine.run_cycle().await;
    assert!(s.full_listing);
    assert_eq!(s.downloaded, 25, "{s:?}");
    let synced_cursor = cursor(&b).await;

    // A deletes one (a tombstone), the server loses three more (no tombstone at all), and
    // B has local work of its own the server has never seen.
    a.handle
        .delete(&Namespace::default(), &BlobId::new(&names[3]).unwrap())
        .await
        .unwrap();
    a.engine.run_cycle().await;
    let lost: Vec<String> = [0, 12, 24].iter().map(|&i| names[i].clone()).collect();
    paging.lost.lock().unwrap().extend(lost.iter().cloned());
    let mut w = b
        .handle
        .put_writer(
            Namespace::default(),
            Some(BlobId::new("mine").unwrap()),
            Priority::Medium,
            true,
            None,
        )
        .await
        .unwrap();
    w.write(b"local work").await.unwrap();
    w.commit().await.unwrap();

    // A full listing that dies on its second page applies its first page but keeps the old
    // cursor: only a complete listing may say what is absent.
    let before = paging.sinces.lock().unwrap().len() as u64;
    paging.fail_call.store(before + 2, Ordering::SeqCst);
    let s = b.engine.run_full_cycle().await;
    assert!(s.error.is_some(), "{s:?}");
    assert_eq!(cursor(&b).await, synced_cursor);
    for id in &lost {
        assert_eq!(b.status_of(id).await, Some(Status::Synced), "{id}");
    }

    let before = paging.sinces.lock().unwrap().len();
    let s = b.engine.run_full_cycle().await;
    assert!(s.error.is_none() && s.full_listing, "{s:?}");
    let sinces = paging.sinces.lock().unwrap()[before..].to_vec();
    assert_eq!(sinces[0], 0, "a full listing starts at 0: {sinces:?}");
    assert!(sinces.len() >= 3, "listed in pages: {sinces:?}");
    // Only A's delete (a tombstone with A's proof) deletes here; the three the server lost
    // without a tombstone are still B's, and go back up.
    assert_eq!(s.deleted_local, 1, "{s:?}");
    assert_eq!(s.reuploaded_missing, 3, "{s:?}");
    let kept: Vec<String> = names.iter().filter(|n| **n != names[3]).cloned().collect();
    assert_eq!(present(&b, &names).await, kept);
    assert!(
        !b.data
            .join(format!("blobs/default/{}/{}", &names[3][..2], names[3]))
            .exists()
    );
    for id in &lost {
        assert!(b.status_of(id).await.is_some(), "{id} was not deleted");
    }
    // (This "server" only hid them from listings: the re-upload meets the copy it still has,
    // made by A with another salt, and B takes it.) Soon all are SYNCED, bytes intact.
    for _ in 0..3 {
        b.engine.run_full_cycle().await;
    }
    for (i, id) in names.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert_eq!(b.status_of(id).await, Some(Status::Synced), "{id}");
        assert_eq!(b.read(id).await, bytes(100, i as u8), "{id}");
    }
    // Local work is never "absent", though the server has never heard of it.
    assert_eq!(b.status_of("mine").await, Some(Status::LocalOnly));
    assert!(cursor(&b).await > synced_cursor);
}

#[rstest]
#[case::dir(RemoteKind::Dir)]
#[case::http(RemoteKind::Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_full_listing_deletes_only_on_proven_tombstones_reuploads_what_the_server_lost_and_moves_the_cursor_last(
    #[case] kind: RemoteKind,
) {
    on_remote!(kind, a_paged_full_listing_deletes_only_on_proven_tombstones_reuploads_what_the_server_lost_and_moves_the_cursor_last_on);
}
