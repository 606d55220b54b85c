//! Store benchmark: prints how long the store takes for 100k blobs (batch insert through the
//! listing path, paged listing, counts, the due queue, single gets) on a real SQLite file.
//! `cargo run --release -p blobsyncd --example store_bench [N]`

use std::time::{Duration, Instant, UNIX_EPOCH};

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::events::EventBus;
use blobsyncd::status::Status;
use blobsyncd::store::{DueFilter, ListFilter, RemoteFact, Store};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("s.sqlite"), 10, EventBus::new())
        .await
        .unwrap();
    let ns = Namespace::default();

    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let facts = chunk
            .iter()
            .map(|i| RemoteFact::New {
                id: BlobId::new(format!("blob{i:08}")).unwrap(),
                remote_size: 10_000,
                created: UNIX_EPOCH + Duration::from_secs(*i as u64),
                external: false,
                seq: *i as u64 + 1,
                status: Status::PendingDownload,
            })
            .collect();
        store
            .apply_remote(
                &ns,
                facts,
                Some(chunk[chunk.len() - 1] as u64 + 1),
                UNIX_EPOCH,
            )
            .await
            .unwrap();
    }
    let ins = t.elapsed();
    println!(
        "insert {n} rows in batches of 1000: {:?} ({:.0} rows/s)",
        ins,
        n as f64 / ins.as_secs_f64()
    );

    let t = Instant::now();
    let mut after = None;
    let mut rows = 0;
    loop {
        let page = store
            .list(ListFilter {
                after: after.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.ns.clone(), last.id.clone()));
        rows += page.len();
    }
    println!("list all {rows} rows in pages of 1000: {:?}", t.elapsed());

    let t = Instant::now();
    let c = store.counts().await.unwrap();
    println!("counts: {:?} ({} statuses)", t.elapsed(), c.by_status.len());

    let t = Instant::now();
    let due = store
        .due(DueFilter {
            now: UNIX_EPOCH + Duration::from_secs(1 << 40),
            limit: 600,
        })
        .await
        .unwrap();
    println!("due queue (first {}): {:?}", due.len(), t.elapsed());

    let t = Instant::now();
    let rows_all = store.namespace_rows(&ns).await.unwrap();
    println!(
        "namespace_rows ({}; the listing diff's input): {:?}",
        rows_all.len(),
        t.elapsed()
    );

    let t = Instant::now();
    for i in (0..n).step_by((n / 1000).max(1)) {
        store
            .get(&ns, &BlobId::new(format!("blob{i:08}")).unwrap())
            .await
            .unwrap();
    }
    println!("1000 single gets: {:?}", t.elapsed());
}
