//! Store query tests on a real SQLite file.

use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn open() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connection::open(dir.path().join("s.sqlite")).unwrap();
    crate::store::schema::migrate(&mut c).unwrap();
    (dir, c)
}

fn put(c: &mut Connection, ns: &str, id: &str, p: Priority, t: u64) -> BlobInfo {
    let b = NewLocalBlob {
        ns: Namespace::new(ns).unwrap(),
        id: BlobId::new(id).unwrap(),
        size: 3,
        sha256: [0; 32],
        priority: p,
        local_only: false,
        created: UNIX_EPOCH + Duration::from_secs(t),
    };
    insert_local(c, &b).unwrap().0
}

#[test]
fn migrations_run_from_scratch_and_are_idempotent() {
    let (dir, mut c) = open();
    assert_eq!(
        crate::store::schema::migrate(&mut c).unwrap(),
        crate::store::schema::SCHEMA_VERSION
    );
    drop(c);
    let mut c = Connection::open(dir.path().join("s.sqlite")).unwrap();
    assert_eq!(
        crate::store::schema::migrate(&mut c).unwrap(),
        crate::store::schema::SCHEMA_VERSION
    );
    c.pragma_update(None, "user_version", 99).unwrap();
    let e = crate::store::schema::migrate(&mut c).unwrap_err();
    assert!(e.to_string().contains("newer"), "{e}");
}

#[test]
fn a_remote_change_forgets_the_salts_of_synced_copies_and_rearms_the_backfill() {
    let (_d, mut c) = open();
    let ns = Namespace::default();
    let synced = put(&mut c, "default", "s", Priority::Medium, 1);
    let pending = put(&mut c, "default", "p", Priority::Medium, 1);
    for b in [&synced, &pending] {
        record_upload_attempt(&mut c, &ns, &b.id, &[7; 32], 3).unwrap();
    }
    let u = RowUpdate::default();
    transition(&c, &ns, &synced.id, Transition::UploadSucceeded, &u).unwrap();
    set_meta(&c, SALT_BACKFILL_DONE, Some("1")).unwrap();

    reset_remote(&mut c, "instance B").unwrap();
    // The synced copy's salt is the old server's: read again from the new one.
    assert_eq!(get(&c, &ns, &synced.id).unwrap().unwrap().upload_salt, None);
    assert_eq!(synced_without_salt(&mut c, 10).unwrap().len(), 1);
    assert_eq!(meta(&mut c, SALT_BACKFILL_DONE).unwrap(), None);
    // A pending upload keeps the salt it may already have stored under.
    let p = get(&c, &ns, &pending.id).unwrap().unwrap();
    assert_eq!(p.upload_salt, Some([7; 32]));
    assert_eq!(
        meta(&mut c, REMOTE_IDENTITY).unwrap().as_deref(),
        Some("instance B")
    );
}

#[test]
fn insert_twice_is_already_exists() {
    let (_d, mut c) = open();
    put(&mut c, "default", "a", Priority::Medium, 1);
    let b = NewLocalBlob {
        ns: Namespace::default(),
        id: BlobId::new("a").unwrap(),
        size: 1,
        sha256: [1; 32],
        priority: Priority::Low,
        local_only: true,
        created: UNIX_EPOCH,
    };
    assert!(matches!(
        insert_local(&mut c, &b),
        Err(StoreError::AlreadyExists {
            status: Status::PendingUpload,
            ..
        })
    ));
}

#[test]
fn list_pages_in_key_order_with_filters() {
    let (_d, mut c) = open();
    for i in 0..25 {
        put(
            &mut c,
            if i % 2 == 0 { "a" } else { "b" },
            &format!("id{i:02}"),
            Priority::Medium,
            i,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = list(
            &c,
            &ListFilter {
                after: after.clone(),
                limit: 7,
                ..Default::default()
            },
        )
        .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.ns.clone(), last.id.clone()));
        seen.extend(page.into_iter().map(|b| format!("{}/{}", b.ns, b.id)));
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let only_b = list(
        &c,
        &ListFilter {
            ns: Some(Namespace::new("b").unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(only_b.len(), 12);
    let none = list(
        &c,
        &ListFilter {
            status: Some(Status::Synced),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
}

#[test]
fn due_orders_by_priority_then_time_and_skips_paused_and_future() {
    let (_d, mut c) = open();
    put(&mut c, "default", "low", Priority::Low, 1);
    put(&mut c, "default", "urgent", Priority::Urgent, 3);
    put(&mut c, "default", "med-old", Priority::Medium, 1);
    put(&mut c, "default", "med-new", Priority::Medium, 2);
    put(&mut c, "other", "paused", Priority::Urgent, 1);
    set_paused(&mut c, Some(&Namespace::new("other").unwrap()), true).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(100);
    let plan = RetryPlan {
        error: "x".into(),
        next_attempt: now + Duration::from_secs(10),
        invalid: false,
        max_invalid: 3,
        now,
    };
    record_failure(
        &mut c,
        &Namespace::default(),
        &BlobId::new("med-old").unwrap(),
        &plan,
    )
    .unwrap();
    let f = DueFilter { now, limit: 10 };
    let ids: Vec<String> = due(&c, &f)
        .unwrap()
        .into_iter()
        .map(|b| b.id.to_string())
        .collect();
    assert_eq!(ids, ["urgent", "med-new", "low"]);
    assert_eq!(next_due(&mut c).unwrap(), Some(UNIX_EPOCH));
    set_paused(&mut c, None, true).unwrap();
    assert!(due(&c, &f).unwrap().is_empty());
    set_paused(&mut c, None, false).unwrap();
    assert_eq!(paused(&mut c).unwrap(), Vec::<Option<Namespace>>::new());
}

#[test]
fn illegal_transitions_are_refused_and_change_nothing() {
    let (_d, mut c) = open();
    put(&mut c, "default", "a", Priority::Medium, 1);
    let ns = Namespace::default();
    let id = BlobId::new("a").unwrap();
    let e = transition(
        &c,
        &ns,
        &id,
        Transition::DownloadSucceeded,
        &RowUpdate::default(),
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::Illegal(_)), "{e}");
    assert_eq!(
        get(&c, &ns, &id).unwrap().unwrap().status,
        Status::PendingUpload
    );
    let e = retry(&mut c, &ns, &BlobId::new("nope").unwrap()).unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }));
}

#[test]
fn invalid_downloads_fail_at_the_limit_and_keep_the_reason() {
    let (_d, mut c) = open();
    let ns = Namespace::default();
    let id = BlobId::new("r").unwrap();
    let fact = RemoteFact::New {
        id: id.clone(),
        remote_size: 10,
        created: UNIX_EPOCH,
        external: false,
        seq: 1,
        status: Status::PendingDownload,
    };
    apply_remote(&mut c, &ns, &[fact], Some(1), UNIX_EPOCH).unwrap();
    assert_eq!(cursor(&mut c, &ns).unwrap(), Some(1));
    let plan = RetryPlan {
        error: "bad tag".into(),
        next_attempt: UNIX_EPOCH,
        invalid: true,
        max_invalid: 3,
        now: UNIX_EPOCH,
    };
    assert!(record_failure(&mut c, &ns, &id, &plan).unwrap().is_none());
    assert!(record_failure(&mut c, &ns, &id, &plan).unwrap().is_none());
    let ch = record_failure(&mut c, &ns, &id, &plan).unwrap().unwrap();
    assert_eq!(ch.to, Some(Status::FailedDownload));
    let b = get(&c, &ns, &id).unwrap().unwrap();
    assert_eq!((b.attempts, b.invalid_attempts), (3, 3));
    assert!(b.last_error.unwrap().contains("bad tag"));
    // A retry of another namespace's failures leaves this one failed.
    let other = Namespace::new("other").unwrap();
    assert!(retry_failed(&mut c, Some(&other)).unwrap().is_empty());
    assert_eq!(
        get(&c, &ns, &id).unwrap().unwrap().status,
        Status::FailedDownload
    );
    assert_eq!(retry_failed(&mut c, Some(&ns)).unwrap().len(), 1);
    let b = get(&c, &ns, &id).unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (Status::PendingDownload, 0));
    assert!(retry_all_failed(&mut c).unwrap().is_empty());
}

#[test]
fn cycle_counter_and_meta_persist() {
    let (_d, mut c) = open();
    assert_eq!(next_cycle(&mut c).unwrap(), 1);
    assert_eq!(next_cycle(&mut c).unwrap(), 2);
    set_meta(&c, "k", Some("v")).unwrap();
    assert_eq!(meta(&mut c, "k").unwrap().as_deref(), Some("v"));
    set_meta(&c, "k", None).unwrap();
    assert_eq!(meta(&mut c, "k").unwrap(), None);
}

/// The plan SQLite picks for `sql`, its steps joined.
fn plan(c: &Connection, sql: &str) -> String {
    let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Value::Null; st.parameter_count()];
    let steps = st
        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap();
    steps.map(Result::unwrap).collect::<Vec<_>>().join("; ")
}

/// Every cycle asks for a namespace's `REMOTE_ONLY` rows, and `blobctl list --status` pages
/// through one status: both must seek the status index, not read the namespace through the
/// primary key (the planner's own pick, which made a no-change cycle O(blobs)).
#[test]
fn status_queries_seek_the_status_index_not_the_whole_namespace() {
    let (_d, mut c) = open();
    let ns = Namespace::default();
    for i in 0..50 {
        put(&mut c, "default", &format!("b{i:02}"), Priority::Medium, 1);
    }
    let p = plan(&c, &rows_with_status_sql());
    assert!(
        p.contains("USING INDEX blobs_by_status (status=? AND ns=?)"),
        "{p}"
    );
    for only_ns in [None, Some(ns.clone())] {
        for after in [None, Some((ns.clone(), BlobId::new("b10").unwrap()))] {
            let f = ListFilter {
                ns: only_ns.clone(),
                status: Some(Status::PendingUpload),
                after,
                limit: 5,
            };
            let p = plan(&c, &list_sql(&f).0);
            assert!(p.contains("USING INDEX blobs_by_status"), "{p}");
            assert!(!p.contains("TEMP B-TREE"), "sorted by hand: {p}");
        }
    }
    // And the answers: the status's rows, in (ns, id) order, from the cursor on.
    let f = ListFilter {
        ns: Some(ns.clone()),
        status: Some(Status::PendingUpload),
        after: Some((ns.clone(), BlobId::new("b10").unwrap())),
        limit: 3,
    };
    let ids: Vec<_> = list(&c, &f).unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, ["b11", "b12", "b13"].map(|i| BlobId::new(i).unwrap()));
    assert_eq!(
        rows_with_status(&c, &ns, Status::PendingUpload)
            .unwrap()
            .len(),
        50
    );
    assert!(
        rows_with_status(&c, &ns, Status::RemoteOnly)
            .unwrap()
            .is_empty()
    );
}

/// Whether a due upload has had an attempt: only a `PENDING_UPLOAD` row with a salt, in an
/// unpaused namespace, counts; downloads queued ahead of it (a new device's) do not hide it.
#[test]
fn an_attempted_upload_is_found_behind_any_number_of_queued_downloads() {
    let (_d, mut c) = open();
    let ns = Namespace::default();
    let now = UNIX_EPOCH + Duration::from_secs(100);
    let downloads: Vec<RemoteFact> = (0..1500)
        .map(|i| RemoteFact::New {
            id: BlobId::new(format!("d{i:04}")).unwrap(),
            remote_size: 10,
            created: UNIX_EPOCH,
            external: false,
            seq: i + 1,
            status: Status::PendingDownload,
        })
        .collect();
    apply_remote(&mut c, &ns, &downloads, Some(1500), UNIX_EPOCH).unwrap();
    let up = put(&mut c, "default", "up", Priority::Low, 1);
    assert!(
        !attempted_upload_due(&c, now).unwrap(),
        "no salt: never tried"
    );
    record_upload_attempt(&mut c, &ns, &up.id, &[9; 32], 50).unwrap();
    assert!(attempted_upload_due(&c, now).unwrap());
    set_paused(&mut c, Some(&ns), true).unwrap();
    assert!(!attempted_upload_due(&c, now).unwrap(), "paused namespace");
    set_paused(&mut c, Some(&ns), false).unwrap();
    set_paused(&mut c, None, true).unwrap();
    assert!(!attempted_upload_due(&c, now).unwrap(), "everything paused");
}
