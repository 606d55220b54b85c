//! The `counts` table (schema migration 3) is kept by triggers on `blobs`, so `status` does
//! not group every row. These tests drive the real store's operations (puts, listing facts,
//! transitions, failures, retries, deletions) in a seeded random order over a real SQLite
//! file and check after every step that the table says exactly what a fresh
//! `GROUP BY ns, status` over `blobs` says; and that a store written by the previous schema
//! version, rows and all, comes up with the right counts.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use blobsync_shared::{BlobId, Namespace};
use blobsyncd::events::EventBus;
use blobsyncd::status::{Priority, Status, Transition};
use blobsyncd::store::ops::{self, RowUpdate};
use blobsyncd::store::schema;
use blobsyncd::store::{Counts, NewLocalBlob, RemoteFact, RetryPlan, Store};
use rusqlite::Connection;

/// xorshift64*: a seeded, dependency-free generator (the sequence only has to be repeatable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn ns(&mut self) -> Namespace {
        Namespace::new(["default", "mail", "photos"][self.below(3) as usize]).unwrap()
    }

    fn id(&mut self) -> BlobId {
        BlobId::new(format!("b{}", self.below(40))).unwrap()
    }

    fn size(&mut self) -> Option<u64> {
        (self.below(4) != 0).then(|| self.below(1 << 20))
    }
}

/// What `counts` must say: a fresh grouping of every row.
fn grouped(c: &Connection) -> Counts {
    let mut out = Counts::default();
    let mut st = c
        .prepare(
            "SELECT ns, status, COUNT(*), SUM(COALESCE(size, remote_size, 0)) FROM blobs \
             GROUP BY ns, status",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (ns, code, n, bytes) = row.unwrap();
        let s = Status::from_code(code).unwrap();
        *out.by_status.entry(s).or_default() += n as u64;
        *out.bytes_by_status.entry(s).or_default() += bytes as u64;
        *out.by_namespace
            .entry(Namespace::new(ns.clone()).unwrap())
            .or_default()
            .entry(s)
            .or_default() += n as u64;
        *out.bytes_by_namespace
            .entry(Namespace::new(ns).unwrap())
            .or_default()
            .entry(s)
            .or_default() += bytes as u64;
    }
    out
}

fn assert_counts_match(c: &mut Connection, step: usize, what: &str) {
    let want = grouped(c);
    let got = ops::counts(c).unwrap();
    assert_eq!(
        got, want,
        "step {step} ({what}): trigger-kept counts drifted"
    );
    let empty: i64 = c
        .query_row("SELECT COUNT(*) FROM counts WHERE n <= 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        empty, 0,
        "step {step} ({what}): a (ns, status) with no blobs is kept"
    );
}

const TRANSITIONS: [Transition; 14] = [
    Transition::UploadSucceeded,
    Transition::UploadRejected,
    Transition::DownloadSucceeded,
    Transition::DownloadInvalid,
    Transition::Requeue,
    Transition::DeletedLocally {
        maybe_uploaded: true,
    },
    Transition::DeletedLocally {
        maybe_uploaded: false,
    },
    Transition::DeleteConfirmed,
    Transition::DeletedRemotely,
    Transition::UploadDeletedRemotely,
    Transition::DamageFound,
    Transition::ReplacedRemotely,
    Transition::Wanted,
    Transition::UploadSucceeded,
];

fn row_update(rng: &mut Rng) -> RowUpdate {
    RowUpdate {
        size: rng.size(),
        remote_size: rng.size(),
        sha256: (rng.below(2) == 0).then_some([9; 32]),
        now: Some(UNIX_EPOCH + Duration::from_secs(rng.below(1000))),
        ..Default::default()
    }
}

/// One random store operation, through the same `ops` functions the daemon calls.
fn random_op(c: &mut Connection, rng: &mut Rng) -> &'static str {
    let now = UNIX_EPOCH + Duration::from_secs(1_000 + rng.below(1000));
    let ns = rng.ns();
    match rng.below(9) {
        0 | 1 => {
            let blobs: Vec<NewLocalBlob> = (0..1 + rng.below(4))
                .map(|_| NewLocalBlob {
                    ns: ns.clone(),
                    id: rng.id(),
                    size: rng.below(1 << 20),
                    sha256: [1; 32],
                    priority: Priority::Medium,
                    local_only: rng.below(4) == 0,
                    created: now,
                })
                .collect();
            // Duplicate ids come back as per-put AlreadyExists: that is part of the test.
            ops::insert_local_many(c, &blobs).unwrap();
            "insert_local_many"
        }
        2 | 3 => {
            let facts: Vec<RemoteFact> = (0..1 + rng.below(6))
                .map(|_| {
                    let id = rng.id();
                    let remote_size = rng.below(1 << 20);
                    let seq = rng.below(500);
                    match rng.below(4) {
                        0 => RemoteFact::New {
                            id,
                            remote_size,
                            created: now,
                            external: false,
                            seq,
                            status: if rng.below(2) == 0 {
                                Status::PendingDownload
                            } else {
                                Status::RemoteOnly
                            },
                        },
                        1 => RemoteFact::Gone { id },
                        2 => RemoteFact::Replaced {
                            id,
                            seq,
                            remote_size,
                        },
                        _ => RemoteFact::Seen {
                            id,
                            seq,
                            remote_size,
                        },
                    }
                })
                .collect();
            ops::apply_remote(c, &ns, &facts, Some(rng.below(500)), now).unwrap();
            "apply_remote"
        }
        4 | 5 => {
            let t = TRANSITIONS[rng.below(TRANSITIONS.len() as u64) as usize];
            let items: Vec<_> = (0..1 + rng.below(3))
                .map(|_| (rng.id(), t, row_update(rng)))
                .collect();
            ops::transition_many(c, &ns, &items).unwrap();
            "transition_many"
        }
        6 => {
            let items: Vec<_> = (0..1 + rng.below(3))
                .map(|_| (rng.id(), [rng.below(255) as u8; 32], rng.below(1 << 20)))
                .collect();
            ops::record_upload_attempts(c, &ns, &items).unwrap();
            "record_upload_attempts"
        }
        7 => {
            let plan = RetryPlan {
                error: "injected".into(),
                next_attempt: now,
                invalid: rng.below(2) == 0,
                max_invalid: 1,
                now,
            };
            // An invalid download on an upload row is refused and rolled back: also tested.
            match ops::record_failure(c, &ns, &rng.id(), &plan) {
                Ok(_)
                | Err(blobsyncd::store::StoreError::NotFound { .. })
                | Err(blobsyncd::store::StoreError::Illegal(_)) => {}
                Err(e) => panic!("record_failure: {e}"),
            }
            "record_failure"
        }
        _ => {
            if rng.below(2) == 0 {
                ops::retry_all_failed(c).unwrap();
            } else {
                match ops::retry(c, &ns, &rng.id()) {
                    Ok(_)
                    | Err(blobsyncd::store::StoreError::NotFound { .. })
                    | Err(blobsyncd::store::StoreError::Illegal(_)) => {}
                    Err(e) => panic!("retry: {e}"),
                }
            }
            "retry"
        }
    }
}

#[test]
fn trigger_kept_counts_always_equal_a_fresh_group_by() {
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("store.sqlite")).unwrap();
        // What is tested is the triggers' arithmetic, not durability: no fsync per step.
        c.pragma_update(None, "synchronous", "OFF").unwrap();
        schema::migrate(&mut c).unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut seen_statuses = BTreeMap::new();
        for step in 0..1500 {
            let what = random_op(&mut c, &mut rng);
            assert_counts_match(&mut c, step, what);
            for (s, n) in ops::counts(&mut c).unwrap().by_status {
                *seen_statuses.entry(s).or_insert(0u64) += n;
            }
        }
        // The walk reached every status (or the test would prove less than it says).
        for s in Status::ALL {
            assert!(
                seen_statuses.get(&s).copied().unwrap_or(0) > 0,
                "seed {seed}: status {s} never reached"
            );
        }
    }
}

#[tokio::test]
async fn a_store_at_the_previous_schema_version_gets_its_counts_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let mut rng = Rng(42);
    {
        // The file as the previous blobsyncd left it: schema 2, rows in every status.
        let mut c = Connection::open(&path).unwrap();
        c.pragma_update(None, "synchronous", "OFF").unwrap();
        assert_eq!(schema::migrate_to(&mut c, 2).unwrap(), 2);
        let exists: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'counts'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(exists, 0, "schema 2 has no counts table");
        // Rows in every status, made by today's store operations on a scratch store, copied
        // in with the columns schema 2 had (today's operations need today's columns).
        let scratch = dir.path().join("scratch.sqlite");
        {
            let mut s = Connection::open(&scratch).unwrap();
            schema::migrate(&mut s).unwrap();
            for _ in 0..400 {
                random_op(&mut s, &mut rng);
            }
        }
        let cols = "ns, id, size, remote_size, sha256, status, priority, attempts, \
            next_attempt_ms, last_error, invalid_attempts, upload_salt, external, created_ms, \
            updated_ms, remote_seq";
        c.execute("ATTACH DATABASE ?1 AS scratch", [scratch.to_str().unwrap()])
            .unwrap();
        c.execute(
            &format!("INSERT INTO blobs ({cols}) SELECT {cols} FROM scratch.blobs"),
            [],
        )
        .unwrap();
        c.execute("DETACH DATABASE scratch", []).unwrap();
        assert!(grouped(&c).by_status.len() >= 5, "{:?}", grouped(&c));
    }
    let want = grouped(&Connection::open(&path).unwrap());

    let (store, _) = Store::open(&path, 2, EventBus::new()).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), want);
    // And the triggers keep it from there on.
    let ns = Namespace::default();
    let id = BlobId::new("after-migration").unwrap();
    store
        .insert_local(NewLocalBlob {
            ns: ns.clone(),
            id: id.clone(),
            size: 1234,
            sha256: [3; 32],
            priority: Priority::High,
            local_only: false,
            created: UNIX_EPOCH,
        })
        .await
        .unwrap();
    store
        .transition(&ns, &id, Transition::UploadSucceeded, RowUpdate::default())
        .await
        .unwrap();
    let got = store.counts().await.unwrap();
    let closed = store.on_exit();
    drop(store);
    closed.await;
    let mut c = Connection::open(&path).unwrap();
    let version: u32 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    assert_eq!(got, grouped(&c));
    assert_counts_match(&mut c, 0, "after reopening");
}
