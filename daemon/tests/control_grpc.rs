//! The control service over a real Unix socket, in process: a real engine (store in a temp
//! dir, `DirRemote`), `control::bind` + `control::serve`, and the generated gRPC client.
//! Covers every RPC's happy path, every INVALID_ARGUMENT case, paging, streaming put/get,
//! watch, and shutdown. The process-level behaviour (blobctl, exit codes, memory, peer uid,
//! Python) is in `ctl/tests/control_e2e.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use blobsync_proto as pb;
use blobsync_proto::control_client::ControlClient;
use blobsyncd::clock::ManualClock;
use blobsyncd::engine::Engine;
use blobsyncd::events::{EventBus, EventKind, RING_CAPACITY};
use blobsyncd::remote::dir::DirRemote;
use blobsyncd::store::Store;
use blobsyncd::store::payload::DataDir;
use common::{bytes, key, settings};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    events: EventBus,
    socket: PathBuf,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), blobsyncd::control::ControlError>>,
    engine_task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    /// A real engine (store, `DirRemote`, manual clock) with its control socket; the event
    /// bus is kept so tests can flood it.
    async fn start() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let dd = DataDir::new(&data);
        dd.create().unwrap();
        let events = EventBus::new();
        let (store, _) = Store::open(&dd.store_file(), 4, events.clone())
            .await
            .unwrap();
        let remote = DirRemote::new(tmp.path().join("remote"), "alice").unwrap();
        let engine = Engine::new(
            store,
            remote,
            ManualClock::default(),
            key(),
            dd,
            settings(),
            events.clone(),
        );
        let cancel = CancellationToken::new();
        let engine_task = tokio::spawn(engine.clone().run(cancel.child_token()));
        let socket = tmp.path().join("run/blobsync/blobsyncd.sock");
        let listener = blobsyncd::control::bind(&socket).unwrap();
        let server = tokio::spawn(blobsyncd::control::serve(
            listener,
            engine.handle(),
            cancel.child_token(),
        ));
        Fixture {
            _tmp: tmp,
            data,
            events,
            socket,
            cancel,
            server,
            engine_task,
        }
    }

    async fn client(&self) -> ControlClient<Channel> {
        connect(&self.socket).await
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve returns after cancel")
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.engine_task)
            .await
            .expect("the engine stops after cancel")
            .unwrap();
        assert!(
            !self.socket.exists(),
            "serve removes its socket on the way out"
        );
    }
}

async fn connect(socket: &Path) -> ControlClient<Channel> {
    ControlClient::new(blobsync_proto::connect_unix(socket).await.unwrap())
}

fn header(id: &str, size_hint: Option<u64>) -> pb::PutRequest {
    pb::PutRequest {
        msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
            id: id.into(),
            size_hint,
            ..Default::default()
        })),
    }
}

fn chunk(data: &[u8]) -> pb::PutRequest {
    pb::PutRequest {
        msg: Some(pb::put_request::Msg::Chunk(data.to_vec())),
    }
}

async fn put(
    c: &mut ControlClient<Channel>,
    ns: &str,
    id: &str,
    data: &[u8],
    local_only: bool,
) -> pb::BlobInfo {
    let mut msgs = vec![pb::PutRequest {
        msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
            namespace: ns.into(),
            id: id.into(),
            local_only,
            size_hint: Some(data.len() as u64),
            ..Default::default()
        })),
    }];
    msgs.extend(data.chunks(100_000).map(chunk));
    c.put(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .blob
        .unwrap()
}

async fn get(
    c: &mut ControlClient<Channel>,
    id: &str,
    range: Option<pb::ByteRange>,
) -> Result<(pb::GetHeader, Vec<u8>), tonic::Status> {
    let mut s = c
        .get(pb::GetRequest {
            namespace: String::new(),
            id: id.into(),
            range,
            wait: true,
        })
        .await?
        .into_inner();
    let Some(pb::GetResponse {
        msg: Some(pb::get_response::Msg::Header(h)),
    }) = s.message().await?
    else {
        panic!("no header first");
    };
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        if let Some(pb::get_response::Msg::Chunk(d)) = m.msg {
            assert!(d.len() <= 1 << 20, "chunks are at most 1 MiB");
            out.extend_from_slice(&d);
        }
    }
    Ok((h, out))
}

/// The code of a call's outcome; every refusal must carry a message.
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => {
            assert!(!s.message().is_empty(), "{s:?}");
            assert!(
                !s.message().contains("{ ") && !s.message().contains("Error("),
                "debug dump in message: {s:?}"
            );
            s.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_ranges_list_pages_and_delete() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let data = bytes(250_000, 3);
    let b = put(&mut c, "", "doc", &data, false).await;
    assert_eq!(
        (b.namespace.as_str(), b.id.as_str(), b.size),
        ("default", "doc", 250_000)
    );
    assert!(
        b.status == pb::BlobStatus::PendingUpload as i32
            || b.status == pb::BlobStatus::Synced as i32
    );
    assert_eq!(b.priority, pb::Priority::Medium as i32);

    let (h, whole) = get(&mut c, "doc", None).await.unwrap();
    assert_eq!((h.start, h.length), (0, 250_000));
    assert_eq!(whole, data);
    let (h, part) = get(
        &mut c,
        "doc",
        Some(pb::ByteRange {
            start: 1000,
            end: Some(71_000),
        }),
    )
    .await
    .unwrap();
    assert_eq!((h.start, h.length), (1000, 70_000));
    assert_eq!(part, &data[1000..71_000]);
    // A range reaching past the end is cut at the end.
    let (h, tail) = get(
        &mut c,
        "doc",
        Some(pb::ByteRange {
            start: 249_990,
            end: Some(1 << 40),
        }),
    )
    .await
    .unwrap();
    assert_eq!(h.length, 10);
    assert_eq!(tail, &data[249_990..]);
    let (_, tail) = get(
        &mut c,
        "doc",
        Some(pb::ByteRange {
            start: 249_999,
            end: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!(tail, &data[249_999..]);

    // An empty blob, and a random id.
    let empty = put(&mut c, "", "", b"", true).await;
    assert_eq!(empty.id.len(), 32);
    assert_eq!(empty.status, pb::BlobStatus::LocalOnly as i32);
    let (h, got) = get(
        &mut c,
        &empty.id,
        Some(pb::ByteRange {
            start: 0,
            end: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!((h.length, got.len()), (0, 0));

    // Pages: 25 blobs in namespace "p", 10 per page, three statuses filtered at once.
    for i in 0..25 {
        put(&mut c, "p", &format!("b{i:02}"), &[i as u8], i % 2 == 0).await;
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = c
            .list(pb::ListRequest {
                namespace: "p".into(),
                limit: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.blobs.len() <= 10);
        seen.extend(page.blobs.into_iter().map(|b| b.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("b{i:02}")).collect();
    assert_eq!(seen, want, "every blob once, in order");
    let local_only = c
        .list(pb::ListRequest {
            namespace: "p".into(),
            statuses: vec![
                pb::BlobStatus::LocalOnly as i32,
                pb::BlobStatus::FailedUpload as i32,
            ],
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local_only.blobs.len(), 4);
    assert!(
        local_only
            .blobs
            .iter()
            .all(|b| b.status == pb::BlobStatus::LocalOnly as i32)
    );
    assert!(!local_only.next_page_token.is_empty());

    let d = c
        .delete(pb::DeleteRequest {
            namespace: "p".into(),
            id: "b00".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status, 0, "a local-only blob is simply gone");
    assert_eq!(code(get(&mut c, "nope", None).await), Code::NotFound);
    assert_eq!(
        code(
            c.delete(pb::DeleteRequest {
                namespace: "p".into(),
                id: "b00".into()
            })
            .await
        ),
        Code::NotFound
    );
    let dup = c
        .put(tokio_stream::iter(vec![header("doc", None), chunk(b"x")]))
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_argument_is_refused_with_a_message() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    put(&mut c, "", "ok", &bytes(100, 1), true).await;
    let inv = Code::InvalidArgument;
    let long = "x".repeat(129);
    for (ns, id) in [
        ("", "bad id"),
        ("", "../etc/passwd"),
        ("", long.as_str()),
        ("a/b", "ok"),
        ("é", "ok"),
        ("", ""),
    ] {
        let what = format!("ns {ns:?} id {id:?}");
        assert_eq!(
            code(
                c.get(pb::GetRequest {
                    namespace: ns.into(),
                    id: id.into(),
                    range: None,
                    wait: false
                })
                .await
            ),
            inv,
            "get {what}"
        );
        assert_eq!(
            code(
                c.delete(pb::DeleteRequest {
                    namespace: ns.into(),
                    id: id.into()
                })
                .await
            ),
            inv,
            "delete {what}"
        );
        assert_eq!(
            code(
                c.set_priority(pb::SetPriorityRequest {
                    namespace: ns.into(),
                    id: id.into(),
                    priority: 1
                })
                .await
            ),
            inv,
            "priority {what}"
        );
        assert_eq!(
            code(
                c.get_flags(pb::GetFlagsRequest {
                    namespace: ns.into(),
                    id: id.into()
                })
                .await
            ),
            inv,
            "flags {what}"
        );
        assert_eq!(
            code(
                c.retry(pb::RetryRequest {
                    namespace: ns.into(),
                    id: id.into(),
                    all_failed: false
                })
                .await
            ),
            inv,
            "retry {what}"
        );
        if !id.is_empty() {
            let h = pb::PutRequest {
                msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
                    namespace: ns.into(),
                    id: id.into(),
                    ..Default::default()
                })),
            };
            assert_eq!(
                code(c.put(tokio_stream::iter(vec![h])).await),
                inv,
                "put {what}"
            );
        }
    }
    for ns in ["a b", "../x"] {
        assert_eq!(
            code(
                c.list(pb::ListRequest {
                    namespace: ns.into(),
                    ..Default::default()
                })
                .await
            ),
            inv
        );
        assert_eq!(
            code(
                c.pause(pb::PauseRequest {
                    namespace: ns.into()
                })
                .await
            ),
            inv
        );
        assert_eq!(
            code(
                c.resume(pb::ResumeRequest {
                    namespace: ns.into()
                })
                .await
            ),
            inv
        );
        assert_eq!(
            code(
                c.watch(pb::WatchRequest {
                    namespace: ns.into(),
                    ..Default::default()
                })
                .await
            ),
            inv
        );
        assert_eq!(
            code(
                c.list_remote(pb::ListRemoteRequest {
                    namespace: ns.into(),
                    ..Default::default()
                })
                .await
            ),
            inv
        );
    }
    // Enums out of range or UNSPECIFIED where a value is required.
    for p in [0, 5, -1] {
        assert_eq!(
            code(
                c.set_priority(pb::SetPriorityRequest {
                    namespace: String::new(),
                    id: "ok".into(),
                    priority: p
                })
                .await
            ),
            inv,
            "priority {p}"
        );
    }
    let bad_prio = pb::PutRequest {
        msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
            id: "p9".into(),
            priority: 9,
            ..Default::default()
        })),
    };
    assert_eq!(code(c.put(tokio_stream::iter(vec![bad_prio])).await), inv);
    for flags in [vec![0], vec![99], vec![1, 0]] {
        assert_eq!(
            code(
                c.set_flags(pb::SetFlagsRequest {
                    namespace: String::new(),
                    id: "ok".into(),
                    flags
                })
                .await
            ),
            inv
        );
    }
    assert_eq!(
        code(
            c.list_remote(pb::ListRemoteRequest {
                filter_flag: 42,
                ..Default::default()
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code(
            c.list(pb::ListRequest {
                statuses: vec![0],
                ..Default::default()
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code(
            c.list(pb::ListRequest {
                statuses: vec![42],
                ..Default::default()
            })
            .await
        ),
        inv
    );
    // Page tokens this daemon never issued.
    for t in ["garbage!", "a/b/c", "/x"] {
        assert_eq!(
            code(
                c.list(pb::ListRequest {
                    page_token: t.into(),
                    ..Default::default()
                })
                .await
            ),
            inv,
            "{t}"
        );
    }
    assert_eq!(
        code(
            c.list_remote(pb::ListRemoteRequest {
                page_token: "no good".into(),
                ..Default::default()
            })
            .await
        ),
        inv
    );
    // Limits and retry shapes.
    assert_eq!(
        code(
            c.set_limits(pb::SetLimitsRequest {
                transfers: Some(0),
                ..Default::default()
            })
            .await
        ),
        inv
    );
    assert_eq!(
        code(c.retry(pb::RetryRequest::default()).await),
        inv,
        "neither id nor all_failed"
    );
    assert_eq!(
        code(
            c.retry(pb::RetryRequest {
                id: "ok".into(),
                all_failed: true,
                ..Default::default()
            })
            .await
        ),
        inv,
        "both"
    );
    // Ranges.
    let range = |start, end| pb::GetRequest {
        namespace: String::new(),
        id: "ok".into(),
        range: Some(pb::ByteRange { start, end }),
        wait: false,
    };
    assert_eq!(code(c.get(range(10, Some(10))).await), inv, "empty range");
    assert_eq!(code(c.get(range(10, Some(5))).await), inv, "reversed range");
    assert_eq!(code(c.get(range(100, None)).await), inv, "start at the end");
    assert_eq!(
        code(c.get(range(500, Some(600))).await),
        inv,
        "start past the end"
    );
    // Put stream shapes.
    assert_eq!(
        code(c.put(tokio_stream::iter(vec![chunk(b"abc")])).await),
        inv,
        "chunk before header"
    );
    assert_eq!(
        code(
            c.put(tokio_stream::iter(vec![
                header("h1", None),
                header("h1", None)
            ]))
            .await
        ),
        inv,
        "two headers"
    );
    assert_eq!(
        code(
            c.put(tokio_stream::iter(vec![
                header("h2", Some(5)),
                chunk(b"abc")
            ]))
            .await
        ),
        inv,
        "short of size_hint"
    );
    assert_eq!(
        code(
            c.put(tokio_stream::iter(vec![
                header("h3", Some(2)),
                chunk(b"abc")
            ]))
            .await
        ),
        inv,
        "over size_hint"
    );
    assert_eq!(
        code(
            c.put(tokio_stream::iter(Vec::<pb::PutRequest>::new()))
                .await
        ),
        inv,
        "empty stream"
    );
    // PutPath with a relative path.
    let pp = pb::PutPathRequest {
        header: Some(pb::PutHeader {
            id: "pp".into(),
            ..Default::default()
        }),
        path: "relative/file".into(),
    };
    assert_eq!(code(c.put_path(pp).await), inv);
    // PutPath of a taken id: refused, and the blob that has it keeps its bytes.
    let before = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), b"some other content entirely").unwrap();
    let pp = pb::PutPathRequest {
        header: Some(pb::PutHeader {
            id: "ok".into(),
            ..Default::default()
        }),
        path: src.path().to_string_lossy().into_owned(),
    };
    assert_eq!(code(c.put_path(pp).await), Code::AlreadyExists);
    let after = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.blobs, after.blobs);

    // Nothing refused left a blob or a temp file behind.
    let ls = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = ls.blobs.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
    // Temp-file removal runs on a blocking thread: wait for it rather than guess how long.
    let tmp_files = || -> Vec<_> {
        walk(&f.data)
            .into_iter()
            .filter(|p| {
                p.strip_prefix(&f.data)
                    .unwrap()
                    .to_string_lossy()
                    .contains("tmp")
            })
            .collect()
    };
    wait_until(
        "no temp file is left",
        || tmp_files().is_empty(),
        || format!("{:?}", tmp_files()),
    )
    .await;
    f.stop().await;
}

/// Polls `cond` every 10 ms until it holds; panics after 10 s with `what` and `detail()`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}: {}",
            detail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The daemon's puts in progress under `data`: files it holds open there (this process is the
/// daemon) and that no path names yet. A put writes an `O_TMPFILE` inode, which
/// `/proc/self/fd` shows as `<dir>/#<inode> (deleted)`, or else a named `tmp/put.*` file.
fn put_temp_files(data: &Path) -> Vec<PathBuf> {
    let root = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
    let mut out: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(&root) && t.to_string_lossy().ends_with(" (deleted)"))
        .collect();
    out.extend(walk(&data.join("tmp")).into_iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("put."))
    }));
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

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
    assert_eq!(
        code(
            verify_report(pb::VerifyRequest {
                id: "bad id".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );

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
async fn a_cancelled_put_stores_nothing() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("cut", None)).await.unwrap();
    tx.send(chunk(&bytes(100_000, 1))).await.unwrap();
    let mut c2 = c.clone();
    let call = tokio::spawn(async move {
        c2.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // The put must be under way (its temp file exists) before the client goes away, or the
    // test would only show that a put never started stores nothing.
    let data = f.data.clone();
    wait_until(
        "the put writes its temp file",
        || !put_temp_files(&data).is_empty(),
        String::new,
    )
    .await;
    call.abort(); // the client goes away mid-stream, without ending the stream
    let _ = call.await;
    drop(tx);
    wait_until(
        "the cut put's temp file is removed",
        || put_temp_files(&data).is_empty(),
        || format!("{:?}", put_temp_files(&data)),
    )
    .await;
    assert_eq!(
        code(
            c.get(pb::GetRequest {
                namespace: String::new(),
                id: "cut".into(),
                range: None,
                wait: false
            })
            .await
        ),
        Code::NotFound
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stalled_put_and_stores_nothing() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("stall", None)).await.unwrap();
    tx.send(chunk(&bytes(50_000, 1))).await.unwrap();
    let mut c2 = c.clone();
    // The client never ends its stream (tx stays alive).
    let call = tokio::spawn(async move {
        c2.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let data = f.data.clone();
    // The put must be in flight (its temp file exists) when shutdown starts.
    wait_until(
        "the put writes its temp file",
        || !put_temp_files(&data).is_empty(),
        String::new,
    )
    .await;
    // stop() fails if serve does not return within its deadline: a stalled client must
    // not hold up shutdown.
    f.stop().await;
    let r = call.await.unwrap();
    assert_eq!(code(r), Code::Unavailable);
    drop(tx);
    let left = || -> Vec<_> {
        walk(&data)
            .into_iter()
            .filter(|p| {
                let rel = p
                    .strip_prefix(&data)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                rel.contains("stall") || rel.starts_with("tmp/")
            })
            .collect()
    };
    wait_until(
        "nothing of the cut put is left",
        || left().is_empty(),
        || format!("{:?}", left()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_paths_stores_a_batch_and_refuses_each_bad_item_alone() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    let src = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &[u8]| {
        let p = src.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    };
    let item = |id: &str, path: String| pb::PutPathRequest {
        header: Some(pb::PutHeader {
            id: id.into(),
            ..Default::default()
        }),
        path,
    };
    let big = bytes(3 << 20, 9); // installed on its own, not through the sync group
    let taken = file("taken", b"first");
    let r = c.put_path(item("taken", taken.clone())).await.unwrap();
    assert!(r.into_inner().blob.is_some());

    let req = pb::PutPathsRequest {
        items: vec![
            item("one", file("one", b"first file")),
            item("", file("random", b"an id is chosen")),
            item("big", file("big", &big)),
            item("relative", "relative/path".into()),
            item("missing", src.path().join("nope").to_string_lossy().into()),
            item("taken", taken),
            item("one", file("one-again", b"same id twice")),
            item("bad id!", file("bad", b"x")),
        ],
    };
    let res = c.put_paths(req).await.unwrap().into_inner().results;
    use pb::put_path_result::Result as R;
    let codes: Vec<i32> = res
        .iter()
        .map(|r| match &r.result {
            Some(R::Blob(_)) => 0,
            Some(R::Error(e)) => {
                assert!(!e.message.is_empty());
                e.code
            }
            None => -1,
        })
        .collect();
    let want = [
        Code::Ok,
        Code::Ok,
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::InvalidArgument,
        Code::InvalidArgument,
    ]
    .map(|c| c as i32);
    assert_eq!(codes, want, "{res:?}");
    let Some(R::Blob(random)) = &res[1].result else {
        unreachable!()
    };
    assert_eq!(random.id.len(), 32, "a random UUIDv4 id: {random:?}");

    // The stored blobs read back whole; the refused ones left nothing.
    for (id, want) in [
        ("one", &b"first file"[..]),
        (random.id.as_str(), b"an id is chosen"),
        ("big", &big),
        ("taken", b"first"),
    ] {
        assert_eq!(get(&mut c, id, None).await.unwrap().1, want, "{id}");
    }
    let ls = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<_> = ls.blobs.iter().map(|b| b.id.clone()).collect();
    ids.sort();
    let mut want = vec![
        "big".to_string(),
        "one".into(),
        "taken".into(),
        random.id.clone(),
    ];
    want.sort();
    assert_eq!(ids, want);

    // An empty call is a bad request as a whole.
    let empty = c.put_paths(pb::PutPathsRequest { items: vec![] }).await;
    assert_eq!(code(empty), Code::InvalidArgument);
    f.stop().await;
}
