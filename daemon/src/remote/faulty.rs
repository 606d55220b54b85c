//! `FaultyRemote`: wraps any [`Remote`] and injects failures on request — the remote being
//! down, refusing credentials, answering an error once, cutting a download body after N
//! bytes, or storing an upload but losing the answer (a crash between PUT and commit). It
//! counts calls so tests can assert "exactly 3 attempts", and runs a test's hooks inside
//! calls (a listing's answer reshaped, another device acting right before a PUT), so tests
//! need no forwarding wrapper of their own. Used by tests; a real remote underneath does the
//! real work.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blobsync_shared::wire::{BlobDetail, ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::{ByteStream, GetResponse, Remote, RemoteError, RemoteListFilter};

/// Failure switches and call counters, shared by clones.
#[derive(Default)]
pub struct Faults {
    /// Every call fails as unreachable.
    pub down: AtomicBool,
    /// Every call fails with 401.
    pub unauthorized: AtomicBool,
    /// The next PUTs store the blob but report a transport error.
    pub lose_put_answers: AtomicU64,
    /// The next downloads are cut after this many body bytes each.
    pub cut_gets_after: Mutex<VecDeque<u64>>,
    /// Errors the next calls answer with (one per call, before anything else).
    pub next_errors: Mutex<VecDeque<RemoteError>>,
    /// Errors the next PUTs answer with (one per PUT).
    pub next_put_errors: Mutex<VecDeque<RemoteError>>,
    /// Errors the next GETs answer with (one per GET).
    pub next_get_errors: Mutex<VecDeque<RemoteError>>,
    /// PUT calls that reached the wrapper.
    pub puts: AtomicU64,
    /// GET calls (ranged or not).
    pub gets: AtomicU64,
    /// GET calls that asked for a range.
    pub ranged_gets: AtomicU64,
    /// DELETE calls.
    pub deletes: AtomicU64,
    /// Listing calls.
    pub listings: AtomicU64,
    /// Batch calls (either direction).
    pub batches: AtomicU64,
    /// The next upload batches are stored but answer a transport error.
    pub lose_batch_answers: AtomicU64,
    /// Batch downloads answer every blob twice (a hostile server replaying an item).
    pub repeat_batch_items: AtomicBool,
    /// Reshapes every listing answer (see [`ChangesHook`]).
    pub on_changes: Mutex<Option<ChangesHook>>,
    /// Runs before every PUT and upload batch reaches the remote (see [`BeforePutHook`]).
    pub before_put: Mutex<Option<BeforePutHook>>,
}

/// A test's hook on `changes`: gets the namespace, the `since` asked for and the inner
/// remote's answer, returns what the engine sees (a page of it, fewer ids, an error).
pub type ChangesHook = Arc<
    dyn Fn(&Namespace, u64, ChangesResponse) -> Result<ChangesResponse, RemoteError> + Send + Sync,
>;

/// A test's hook before a PUT or an upload batch, with its namespace and `if_absent_since`:
/// what another device does in the window between the listing and the upload.
pub type BeforePutHook =
    Arc<dyn Fn(Namespace, Option<u64>) -> BoxFuture<'static, ()> + Send + Sync>;

impl Faults {
    /// Queues an error for the next call.
    pub fn fail_next(&self, e: RemoteError) {
        self.next_errors.lock().unwrap().push_back(e);
    }

    /// Queues an error for the next PUT.
    pub fn fail_next_put(&self, e: RemoteError) {
        self.next_put_errors.lock().unwrap().push_back(e);
    }

    /// Queues an error for the next GET.
    pub fn fail_next_get(&self, e: RemoteError) {
        self.next_get_errors.lock().unwrap().push_back(e);
    }

    /// Sets the listing hook.
    pub fn on_changes(&self, h: ChangesHook) {
        *self.on_changes.lock().unwrap() = Some(h);
    }

    /// Sets the hook run before each upload.
    pub fn before_put(&self, h: BeforePutHook) {
        *self.before_put.lock().unwrap() = Some(h);
    }

    async fn run_before_put(&self, ns: &Namespace, since: Option<u64>) {
        let h = self.before_put.lock().unwrap().clone();
        if let Some(h) = h {
            h(ns.clone(), since).await;
        }
    }

    /// Cuts the next download after `n` bytes.
    pub fn cut_next_get(&self, n: u64) {
        self.cut_gets_after.lock().unwrap().push_back(n);
    }

    fn check(&self) -> Result<(), RemoteError> {
        if let Some(e) = self.next_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        self.check_switches()
    }

    /// `down` and `unauthorized` only: calls that tests do not aim queued errors at.
    fn check_switches(&self) -> Result<(), RemoteError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RemoteError::Transport(
                "connection refused (injected)".into(),
            ));
        }
        if self.unauthorized.load(Ordering::SeqCst) {
            return Err(RemoteError::Unauthorized {
                status: 401,
                message: "bad token (injected)".into(),
            });
        }
        Ok(())
    }
}

/// A remote with injectable faults.
#[derive(Clone)]
pub struct FaultyRemote<R> {
    inner: R,
    /// The switches.
    pub faults: Arc<Faults>,
}

impl<R: Remote> FaultyRemote<R> {
    /// Wraps `inner` with no faults switched on.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// The wrapped remote.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

fn cut(body: ByteStream, after: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (Some(body), after),
        |(body, left)| async move {
            let mut body = body?;
            if left == 0 {
                return Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset (injected cut)",
                    )),
                    (None, 0),
                ));
            }
            match body.next().await {
                None => None,
                Some(Err(e)) => Some((Err(e), (None, 0))),
                Some(Ok(mut chunk)) => {
                    if chunk.len() as u64 > left {
                        chunk.truncate(left as usize);
                    }
                    let n = chunk.len() as u64;
                    Some((Ok(chunk), (Some(body), left - n)))
                }
            }
        },
    ))
}

/// Takes one from a counter of pending faults; whether there was one.
fn take_one(n: &AtomicU64) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl<R: Remote> Remote for FaultyRemote<R> {
    fn describe(&self) -> String {
        format!("{} (fault-injecting)", self.inner.describe())
    }

    fn full_listings_only(&self) -> bool {
        self.inner.full_listings_only()
    }

    fn tombstones_without_proof_delete(&self) -> bool {
        self.inner.tombstones_without_proof_delete()
    }

    async fn changes(&self, ns: &Namespace, since: u64) -> Result<ChangesResponse, RemoteError> {
        self.faults.listings.fetch_add(1, Ordering::SeqCst);
        self.faults.check()?;
        let r = self.inner.changes(ns, since).await?;
        let hook = self.faults.on_changes.lock().unwrap().clone();
        match hook {
            Some(h) => h(ns, since, r),
            None => Ok(r),
        }
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>, RemoteError> {
        // Not counted in `listings` and not failed by `fail_next`: tests count and fail the
        // per-namespace listings, which this discovery call must not shift.
        self.faults.check_switches()?;
        self.inner.namespaces().await
    }

    async fn list(
        &self,
        ns: &Namespace,
        f: &RemoteListFilter,
    ) -> Result<Vec<BlobDetail>, RemoteError> {
        self.faults.check()?;
        self.inner.list(ns, f).await
    }

    async fn put(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<(), RemoteError> {
        self.faults.puts.fetch_add(1, Ordering::SeqCst);
        self.faults.check()?;
        if let Some(e) = self.faults.next_put_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        self.faults.run_before_put(ns, if_absent_since).await;
        self.inner.put(ns, id, len, body, if_absent_since).await?;
        if take_one(&self.faults.lose_put_answers) {
            return Err(RemoteError::Transport(
                "answer lost after the server stored it (injected)".into(),
            ));
        }
        Ok(())
    }

    async fn get(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Result<GetResponse, RemoteError> {
        self.faults.gets.fetch_add(1, Ordering::SeqCst);
        if range.is_some() {
            self.faults.ranged_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.faults.check()?;
        if let Some(e) = self.faults.next_get_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        let mut r = self.inner.get(ns, id, range).await?;
        if let Some(n) = self.faults.cut_gets_after.lock().unwrap().pop_front() {
            r.body = cut(r.body, n);
        }
        Ok(r)
    }

    async fn delete(
        &self,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<String>,
    ) -> Result<(), RemoteError> {
        self.faults.deletes.fetch_add(1, Ordering::SeqCst);
        self.faults.check()?;
        self.inner.delete(ns, id, proof).await
    }

    async fn identity(&self) -> Result<String, RemoteError> {
        // Like namespace discovery: not counted and not failed, so tests that count and fail
        // listings see the same calls as before.
        self.inner.identity().await
    }

    async fn get_flags(&self, ns: &Namespace, id: &BlobId) -> Result<Vec<Flag>, RemoteError> {
        self.faults.check()?;
        self.inner.get_flags(ns, id).await
    }

    async fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: &[Flag],
    ) -> Result<(), RemoteError> {
        self.faults.check()?;
        self.inner.set_flags(ns, id, flags).await
    }

    async fn put_batch(
        &self,
        ns: &Namespace,
        entries: &[(BlobId, u64)],
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<crate::remote::BatchOutcome, RemoteError> {
        self.faults.batches.fetch_add(1, Ordering::SeqCst);
        self.faults.check()?;
        self.faults.run_before_put(ns, if_absent_since).await;
        let r = self
            .inner
            .put_batch(ns, entries, body, if_absent_since)
            .await?;
        if take_one(&self.faults.lose_batch_answers) {
            return Err(RemoteError::Transport(
                "batch answer lost after the server stored it (injected)".into(),
            ));
        }
        Ok(r)
    }

    // Like `namespaces`: not failed by `fail_next`, so tests that fail a listing or a
    // transfer keep failing the call they aimed at.
    async fn incoming_recipient(&self) -> Result<Option<String>, RemoteError> {
        self.faults.check_switches()?;
        self.inner.incoming_recipient().await
    }

    async fn publish_incoming_recipient(&self, recipient: &str) -> Result<(), RemoteError> {
        self.faults.check_switches()?;
        self.inner.publish_incoming_recipient(recipient).await
    }

    async fn replace_external(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        age_sha256: &[u8; 32],
    ) -> Result<Option<u64>, RemoteError> {
        self.faults.puts.fetch_add(1, Ordering::SeqCst);
        self.faults.check()?;
        if let Some(e) = self.faults.next_put_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        self.inner
            .replace_external(ns, id, len, body, age_sha256)
            .await
    }

    async fn get_batch(
        &self,
        ns: &Namespace,
        ids: &[BlobId],
        max_blob: u64,
    ) -> Result<super::BatchItems, RemoteError> {
        self.faults.batches.fetch_add(1, Ordering::SeqCst);
        self.faults.check()?;
        let items = self.inner.get_batch(ns, ids, max_blob).await?;
        if !self.faults.repeat_batch_items.load(Ordering::SeqCst) {
            return Ok(items);
        }
        Ok(Box::pin(items.flat_map(|item| {
            let again = match &item {
                Ok(super::BatchItem::Blob { id, stored }) => Some(Ok(super::BatchItem::Blob {
                    id: id.clone(),
                    stored: stored.clone(),
                })),
                _ => None,
            };
            futures_util::stream::iter(std::iter::once(item).chain(again))
        })))
    }
}
