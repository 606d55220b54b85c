//! Shared helpers of the daemon's engine tests: a "device" is a real store in a temp dir, an
//! engine over a fault-injecting wrapper of a real `DirRemote`, and a `ManualClock`.
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
