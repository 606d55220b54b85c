//! Watch, Status, Sync, Pause, Limits, Flags, ListRemote, Verify and Version.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_an_upload_and_resumes_with_since() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let before = c
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_event_id;
    let mut w = c
        .watch(pb::WatchRequest {
            since: Some(before),
            no_progress: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    put(&mut c, "", "w1", &bytes(70_000, 9), false).await;
    let mut statuses = Vec::new();
    let mut last = before;
    while !statuses.contains(&pb::BlobStatus::Synced) {
        let e = tokio::time::timeout(Duration::from_secs(20), w.message())
            .await
            .unwrap_or_else(|_| panic!("saw only {statuses:?}"))
            .unwrap()
            .unwrap();
        assert!(e.id > last, "ids grow: {last} then {}", e.id);
        last = e.id;
        assert!(
            !matches!(e.kind, Some(pb::event::Kind::TransferProgress(_))),
            "no_progress honoured"
        );
        if let Some(pb::event::Kind::StatusChanged(s)) = e.kind
            && s.id == "w1"
        {
            statuses.push(pb::BlobStatus::try_from(s.new_status).unwrap());
        }
    }
    assert_eq!(statuses[0], pb::BlobStatus::PendingUpload, "{statuses:?}");

    // A second watcher resuming from `before` replays the same events.
    let mut again = c
        .watch(pb::WatchRequest {
            since: Some(before),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = again.message().await.unwrap().unwrap();
    assert_eq!(first.id, before + 1);

    // Shutdown ends open watches: serve returns although watchers are connected.
    f.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match again.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the watch stream ends at shutdown");
    let _ = end;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sync_pause_limits_flags_remote_listing_verify_and_version() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let mut put_wait = vec![pb::PutRequest {
        msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
            id: "s1".into(),
            wait: true,
            ..Default::default()
        })),
    }];
    put_wait.push(chunk(&bytes(5000, 4)));
    let b = c
        .put(tokio_stream::iter(put_wait))
        .await
        .unwrap()
        .into_inner()
        .blob
        .unwrap();
    assert_eq!(
        b.status,
        pb::BlobStatus::Synced as i32,
        "wait returns once uploaded: {b:?}"
    );

    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    let synced = st
        .counts
        .iter()
        .find(|c| c.status == pb::BlobStatus::Synced as i32)
        .map(|c| c.count);
    assert_eq!(synced, Some(1), "{st:?}");
    let synced_bytes = st
        .counts
        .iter()
        .find(|c| c.status == pb::BlobStatus::Synced as i32)
        .map(|c| c.bytes);
    assert_eq!(synced_bytes, Some(5000), "{st:?}");
    assert_eq!(
        st.namespaces[0].policy,
        pb::NamespacePolicy::Eager as i32,
        "{st:?}"
    );
    assert!(st.started.is_some());
    assert_eq!(
        st.namespaces
            .iter()
            .map(|n| n.namespace.as_str())
            .collect::<Vec<_>>(),
        ["default"]
    );
    assert_eq!(st.api_version, pb::API_VERSION);
    assert!(!st.daemon_version.is_empty());
    assert!(st.remote.as_ref().unwrap().reachable, "{st:?}");
    assert!(st.last_event_id > 0);

    let s = c
        .sync(pb::SyncRequest {
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let sum = s.summary.unwrap();
    assert!(sum.cycle >= 1 && sum.error.is_empty(), "{sum:?}");
    assert_eq!(s.cycle, sum.cycle);

    let p = c
        .pause(pb::PauseRequest {
            namespace: "MX".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(
        (p.all, p.namespaces.as_slice()),
        (false, &["MX".to_string()][..])
    );
    let p = c
        .pause(pb::PauseRequest::default())
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert!(p.all);
    assert!(
        c.status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .paused
    );
    let p = c
        .resume(pb::ResumeRequest::default())
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(
        (p.all, p.namespaces.len()),
        (false, 0),
        "resuming all clears namespace pauses"
    );

    let l = c
        .set_limits(pb::SetLimitsRequest {
            bwlimit_up: Some(1 << 20),
            transfers: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!((l.bwlimit_up, l.bwlimit_down, l.transfers), (1 << 20, 0, 5));
    let l = c
        .set_limits(pb::SetLimitsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(l.transfers, 5, "an empty request changes nothing");

    let pr = c
        .set_priority(pb::SetPriorityRequest {
            namespace: String::new(),
            id: "s1".into(),
            priority: pb::Priority::Urgent as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pr.blob.unwrap().priority, pb::Priority::Urgent as i32);

    let set = c
        .set_flags(pb::SetFlagsRequest {
            namespace: String::new(),
            id: "s1".into(),
            flags: vec![pb::Flag::Processing as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.flags, [pb::Flag::Processing as i32]);
    let got = c
        .get_flags(pb::GetFlagsRequest {
            namespace: String::new(),
            id: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.flags, [pb::Flag::Processing as i32]);
    assert_eq!(
        code(
            c.get_flags(pb::GetFlagsRequest {
                namespace: String::new(),
                id: "absent".into()
            })
            .await
        ),
        Code::NotFound
    );

    let remote = c
        .list_remote(pb::ListRemoteRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(remote.namespace, "default");
    assert_eq!(
        remote
            .blobs
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>(),
        ["s1"]
    );
    assert!(
        remote.blobs[0].size > 5000,
        "stored size includes the header and tags"
    );

    let r = c
        .retry(pb::RetryRequest {
            all_failed: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.requeued, 0);
    let r = c
        .retry(pb::RetryRequest {
            all_failed: true,
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.requeued, 0);
    assert_eq!(
        code(
            c.retry(pb::RetryRequest {
                id: "s1".into(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition,
        "nothing to retry on a synced blob"
    );

    let mut v = c
        .verify(pb::VerifyRequest {
            remote: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut report = None;
    while let Some(m) = v.message().await.unwrap() {
        match m.msg {
            Some(pb::verify_response::Msg::Report(r)) => report = Some(r),
            Some(pb::verify_response::Msg::Problem(p)) => panic!("unexpected problem {p:?}"),
            _ => {}
        }
    }
    let report = report.expect("verify ends with a report");
    assert_eq!((report.checked, report.ok, report.problems), (1, 1, 0));

    // Filtered verification: one namespace, one blob, and a blob that does not exist.
    let verify_report = |req: pb::VerifyRequest| {
        let mut c = c.clone();
        async move {
            let mut v = c.verify(req).await?.into_inner();
            let mut report = None;
            while let Some(m) = v.message().await? {
                if let Some(pb::verify_response::Msg::Report(r)) = m.msg {
                    report = Some(r);
                }
            }
            Ok::<_, tonic::Status>(report.expect("a report ends the stream"))
        }
    };
    let r = verify_report(pb::VerifyRequest {
        namespace: "other".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(r.checked, 0);
    let r = verify_report(pb::VerifyRequest {
        id: "s1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!((r.checked, r.ok), (1, 1));
    assert_eq!(
        code(
            verify_report(pb::VerifyRequest {
                id: "absent".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    // A bad id is a row of invalid.rs's table.

    let ver = c
        .get_version(pb::GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ver.api_version, pb::API_VERSION);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_damaged_local_copy() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    put(&mut c, "", "v1", &bytes(10_000, 5), true).await;
    // Flip bytes of the payload file behind the daemon's back.
    let payload = walk(&f.data)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "v1"))
        .expect("payload file");
    let mut raw = std::fs::read(&payload).unwrap();
    raw[100] ^= 0xff;
    std::fs::write(&payload, raw).unwrap();
    let mut v = c
        .verify(pb::VerifyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut problems = Vec::new();
    let mut report = None;
    while let Some(m) = v.message().await.unwrap() {
        match m.msg {
            Some(pb::verify_response::Msg::Problem(p)) => problems.push(p),
            Some(pb::verify_response::Msg::Report(r)) => report = Some(r),
            _ => {}
        }
    }
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].id.as_str(), problems[0].kind),
        ("v1", pb::verify_problem::Kind::LocalCorrupt as i32)
    );
    assert_eq!(report.unwrap().problems, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_a_gap_marker_and_never_slows_the_daemon() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let first_id = c
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_event_id
        + 1;
    let mut w = c
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Make sure the watcher is subscribed before the flood.
    let marker = f.events.publish(EventKind::Error {
        message: "start".into(),
    });
    loop {
        let e = w.message().await.unwrap().unwrap();
        if e.id == marker {
            break;
        }
    }
    // The watcher does not read while the daemon publishes far more than every buffer on
    // the way (bus, stream queue, HTTP/2 window) holds. Publishing never waits for it.
    const FLOOD: u64 = 20_000;
    let t = std::time::Instant::now();
    let mut last = marker;
    for i in 0..FLOOD {
        last = f.events.publish(EventKind::Error {
            message: format!("event {i}"),
        });
    }
    let publish_time = t.elapsed();
    eprintln!("published {FLOOD} events with a stalled watcher in {publish_time:?}");
    // The engine may publish its own events (cycles) meanwhile: every id still arrives
    // exactly once, as an event or inside a gap marker.
    let mut expect = marker + 1;
    let mut missed = 0;
    let mut gaps = 0;
    while expect <= last {
        let e = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match e.kind {
            Some(pb::event::Kind::EventsMissed(m)) => {
                assert_eq!(m.reason, pb::events_missed::Reason::SlowWatcher as i32);
                assert_eq!(
                    m.first_id, expect,
                    "the gap starts right after the last event seen"
                );
                assert_eq!(e.id, m.last_id);
                missed += m.last_id - m.first_id + 1;
                gaps += 1;
                expect = m.last_id + 1;
            }
            _ => {
                assert_eq!(e.id, expect, "no silent gap");
                expect += 1;
            }
        }
    }
    assert!(
        gaps >= 1 && missed > 0,
        "a stalled watcher must be told it missed events"
    );
    assert!(first_id <= marker);

    // Resuming from an id the ring no longer holds says so too.
    let mut old = c
        .watch(pb::WatchRequest {
            since: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = old.message().await.unwrap().unwrap();
    let Some(pb::event::Kind::EventsMissed(m)) = e.kind else {
        panic!("{e:?}")
    };
    assert_eq!(
        m.reason,
        pb::events_missed::Reason::BufferOverwritten as i32
    );
    assert_eq!(m.first_id, 1);
    assert!(m.last_id >= last - RING_CAPACITY as u64, "{m:?}");
    let next = old.message().await.unwrap().unwrap();
    assert_eq!(next.id, m.last_id + 1, "replay resumes right after the gap");
    f.stop().await;
}
