//! Shared helpers of the daemon's engine tests: a "device" is a real store in a temp dir, an
//! engine over a fault-injecting wrapper of a real remote (a `DirRemote` unless a test says
//! otherwise), and a `ManualClock`. A behaviour that must hold on either remote is one test
//! body generic over [`Meeting`], run by `rstest` cases through [`on_remote!`].
#![allow(dead_code)] // each test file uses a different subset

mod server;
#[allow(unused_imports)] // each test file uses a different subset
pub use server::TestServer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blobsync_shared::{BlobId, Namespace, StorageKey};
use blobsyncd::clock::ManualClock;
use blobsyncd::engine::{Engine, EngineSettings};
use blobsyncd::events::EventBus;
use blobsyncd::handle::EngineHandle;
use blobsyncd::remote::Remote;
use blobsyncd::remote::dir::DirRemote;
use blobsyncd::remote::faulty::FaultyRemote;
use blobsyncd::remote::http::HttpRemote;
use blobsyncd::retry::TimeScale;
use blobsyncd::status::{Priority, Status};
use blobsyncd::store::payload::DataDir;
use blobsyncd::store::{BlobInfo, Store};
use tokio::io::AsyncReadExt;

pub type TestEngine<X = DirRemote> = Engine<FaultyRemote<X>, ManualClock>;

pub fn key() -> StorageKey {
    StorageKey::from_bytes([7u8; 32])
}

pub fn settings() -> EngineSettings {
    EngineSettings {
        sync_interval: Duration::from_secs(30),
        transfers: 3,
        max_invalid_retries: 3,
        full_list_every: 20,
        bwlimit_up: 0,
        bwlimit_down: 0,
        namespaces: Default::default(),
        segment_exp: 12,
        time_scale: TimeScale::default(),
        drain_timeout: Duration::from_secs(5),
        batch: Default::default(),
        mass_delete_guard: true,
    }
}

/// One device: its own data dir and store, sharing the remote folder `remote_root`.
pub struct Device<X: Remote + Clone = DirRemote> {
    pub data: PathBuf,
    pub engine: Arc<TestEngine<X>>,
    pub handle: EngineHandle,
    pub clock: ManualClock,
    pub remote: FaultyRemote<X>,
}

impl Device<DirRemote> {
    pub async fn open(data: &Path, remote_root: &Path, settings: EngineSettings) -> Device {
        Self::open_with_clock(data, remote_root, settings, ManualClock::default()).await
    }

    pub async fn open_with_clock(
        data: &Path,
        remote_root: &Path,
        settings: EngineSettings,
        clock: ManualClock,
    ) -> Device {
        Device::open_on(
            data,
            DirRemote::new(remote_root, "alice").unwrap(),
            settings,
            clock,
        )
        .await
    }

    /// A device on the folder remote with a storage key of its own (a device set up before
    /// its key was imported).
    pub async fn open_keyed(
        data: &Path,
        remote_root: &Path,
        settings: EngineSettings,
        key: StorageKey,
    ) -> Device {
        Device::open_on_keyed(
            data,
            DirRemote::new(remote_root, "alice").unwrap(),
            settings,
            ManualClock::default(),
            key,
        )
        .await
    }

    pub fn dir_remote(&self) -> &DirRemote {
        self.remote.inner()
    }

    /// The ids the folder remote lists in the default namespace.
    pub async fn remote_ids(&self) -> Vec<String> {
        self.dir_remote()
            .list(&Namespace::default(), &Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id.to_string())
            .collect()
    }
}

impl<X: Remote + Clone> Device<X> {
    pub async fn open_on(
        data: &Path,
        inner: X,
        settings: EngineSettings,
        clock: ManualClock,
    ) -> Device<X> {
        Self::open_on_keyed(data, inner, settings, clock, key()).await
    }

    pub async fn open_on_keyed(
        data: &Path,
        inner: X,
        settings: EngineSettings,
        clock: ManualClock,
        key: StorageKey,
    ) -> Device<X> {
        let dd = DataDir::new(data);
        dd.create().unwrap();
        // As main does at start: temps of a crashed put are garbage.
        blobsyncd::store::payload::sweep_temps(&dd).unwrap();
        let events = EventBus::new();
        let (store, outcome) = Store::open(&dd.store_file(), 4, events.clone())
            .await
            .unwrap();
        let remote = FaultyRemote::new(inner);
        let engine = Engine::new(
            store,
            remote.clone(),
            clock.clone(),
            key,
            dd,
            settings,
            events,
        );
        if matches!(outcome, blobsyncd::store::OpenOutcome::Rebuilt { .. }) {
            engine.set_rebuild_pending();
        }
        let handle = engine.handle();
        Device {
            data: data.to_path_buf(),
            engine,
            handle,
            clock,
            remote,
        }
    }

    pub async fn put(&self, id: &str, bytes: &[u8]) -> BlobInfo {
        self.put_ns(Namespace::default(), id, bytes).await
    }

    pub async fn put_ns(&self, ns: Namespace, id: &str, bytes: &[u8]) -> BlobInfo {
        // Both ways a streamed put is sealed get exercised: with the size known up front
        // (sealed as it arrives), and without (spooled under a one-time key first).
        let hint = bytes.len().is_multiple_of(2).then_some(bytes.len() as u64);
        let mut w = self
            .handle
            .put_writer(
                ns,
                Some(BlobId::new(id).unwrap()),
                Priority::Medium,
                false,
                hint,
            )
            .await
            .unwrap();
        for chunk in bytes.chunks(10_000) {
            w.write(chunk).await.unwrap();
        }
        w.commit().await.unwrap()
    }

    /// The next PUT reaches the server but its answer is lost, and the check of the server's
    /// copy that follows (which retries once) fails too: the blob stays `PENDING_UPLOAD` with
    /// its salt recorded, as after a connection cut at the worst moment.
    pub fn lose_next_put_answer_and_its_check(&self) {
        use std::sync::atomic::Ordering;
        self.remote
            .faults
            .lose_put_answers
            .store(1, Ordering::SeqCst);
        for _ in 0..2 {
            self.remote
                .faults
                .fail_next_get(blobsyncd::remote::RemoteError::Transport(
                    "salt check cut (injected)".into(),
                ));
        }
    }

    pub async fn info(&self, id: &str) -> Option<BlobInfo> {
        self.info_ns(&Namespace::default(), id).await
    }

    pub async fn info_ns(&self, ns: &Namespace, id: &str) -> Option<BlobInfo> {
        self.handle.info(ns, &BlobId::new(id).unwrap()).await.ok()
    }

    pub async fn status_of(&self, id: &str) -> Option<Status> {
        self.info(id).await.map(|b| b.status)
    }

    pub async fn read(&self, id: &str) -> Vec<u8> {
        self.read_ns(&Namespace::default(), id, false).await
    }

    pub async fn read_ns(&self, ns: &Namespace, id: &str, fetch: bool) -> Vec<u8> {
        let (mut f, len) = self
            .handle
            .open_for_read(ns, &BlobId::new(id).unwrap(), None, fetch)
            .await
            .unwrap();
        let mut out = Vec::new();
        (&mut f).take(len).read_to_end(&mut out).await.unwrap();
        out
    }

    /// Advances the clock past any retry wait and runs a cycle.
    pub async fn cycle_after(&self, secs: u64) -> blobsyncd::events::CycleSummary {
        self.clock.advance(Duration::from_secs(secs));
        self.engine.run_cycle().await
    }
}

/// Deterministic test bytes.
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Deletes `ns/id` on `remote` as another device of the same user does: with the delete proof
/// of the server copy's version (its header salt), under the test key.
pub async fn delete_as_device<X: Remote>(remote: &X, ns: &Namespace, id: &BlobId) {
    let proof = device_proof(remote, ns, id).await;
    remote.delete(ns, id, proof).await.unwrap();
}

/// The delete proof another device of the user would send for the server's copy of `ns/id`.
pub async fn device_proof<X: Remote>(remote: &X, ns: &Namespace, id: &BlobId) -> Option<String> {
    let head = remote
        .get(
            ns,
            id,
            Some(0..blobsync_shared::codec::MAX_HEADER_LEN as u64),
        )
        .await
        .ok()?;
    let bytes = blobsyncd::remote::collect_body(head.body, blobsync_shared::codec::MAX_HEADER_LEN)
        .await
        .ok()?;
    let (h, _) = blobsync_shared::codec::Header::parse(&bytes).ok()??;
    let dk = blobsync_shared::tombstone::DeleteKey::derive(&key());
    Some(dk.prove(ns, id, &h.salt))
}

/// The two remotes a behaviour is checked against: a folder (`DirRemote`) and the real server
/// in this process (`HttpRemote` against a [`TestServer`]).
#[derive(Clone, Copy, Debug)]
pub enum RemoteKind {
    Dir,
    Http,
}

/// Where a test's devices meet, whichever the remote (see [`on_remote!`]).
pub trait Meeting {
    type R: Remote + Clone + 'static;
    /// A new client of the remote, for user alice.
    fn remote(&self) -> Self::R;
    /// The directory under which the remote keeps its payload files.
    fn payload_root(&self) -> &Path;

    /// The remote's (encrypted) payload file of `id` (found by name: both remotes name it
    /// after the id; the layout is theirs).
    fn stored_file(&self, id: &str) -> PathBuf {
        find_file(self.payload_root(), id).unwrap_or_else(|| panic!("no stored file for {id}"))
    }

    /// Flips one byte of the stored copy of `id` at `at` (as `dir::tamper` does).
    fn tamper(&self, id: &str, at: usize) {
        let path = self.stored_file(id);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = at.min(bytes.len().saturating_sub(1));
        bytes[i] ^= 0x55;
        std::fs::write(path, bytes).unwrap();
    }

    /// A device with its data in `data`, on this remote, with a manual clock.
    #[allow(async_fn_in_trait)] // only these tests call it
    async fn device(&self, data: &Path, settings: EngineSettings) -> Device<Self::R> {
        Device::open_on(data, self.remote(), settings, ManualClock::default()).await
    }
}

/// A folder remote under `root` (what `Device::open` uses).
pub struct DirMeeting {
    pub root: PathBuf,
}

impl DirMeeting {
    pub fn new(dir: &Path) -> DirMeeting {
        DirMeeting {
            root: dir.join("remote"),
        }
    }
}

impl Meeting for DirMeeting {
    type R = DirRemote;
    fn remote(&self) -> DirRemote {
        DirRemote::new(&self.root, "alice").unwrap()
    }
    fn payload_root(&self) -> &Path {
        &self.root
    }
}

impl Meeting for TestServer {
    type R = HttpRemote;
    fn remote(&self) -> HttpRemote {
        TestServer::remote(self)
    }
    fn payload_root(&self) -> &Path {
        &self.data
    }
}

/// The first file named `name` under `root`.
pub fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if e.file_name() == name {
                return Some(e.path());
            }
        }
    }
    None
}

/// `on_remote!(kind, body)`: runs `body(&meeting, dir).await` in a fresh temp dir `dir`, with
/// the meeting of `kind` ([`DirMeeting`] or a started [`TestServer`]). `body` is an async fn
/// generic over [`Meeting`]; each `#[case]` of an `rstest` names the kind.
#[macro_export]
macro_rules! on_remote {
    ($kind:expr, $body:ident) => {{
        let tmp = tempfile::tempdir().unwrap();
        match $kind {
            $crate::common::RemoteKind::Dir => {
                $body(&$crate::common::DirMeeting::new(tmp.path()), tmp.path()).await
            }
            $crate::common::RemoteKind::Http => {
                $body(
                    &$crate::common::TestServer::start(tmp.path()).await,
                    tmp.path(),
                )
                .await
            }
        }
    }};
}
