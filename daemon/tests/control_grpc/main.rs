//! The control service over a real Unix socket, in process: a real engine (store in a temp
//! dir, `DirRemote`), `control::bind` + `control::serve`, and the generated gRPC client.
//! Covers every RPC's happy path, every INVALID_ARGUMENT case, paging, streaming put/get,
//! watch, and shutdown. The process-level behaviour (blobctl, exit codes, memory, peer uid,
//! Python) is in `ctl/tests/control_e2e.rs`.

#[path = "../common/mod.rs"]
mod common;

mod data;
mod invalid;
mod state;

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
            blobsyncd::control::DaemonInfo::default(),
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
