//! Early uploads: a big put is sent to the server while it is still being written, so the
//! two durable writes of its bytes (ours, then the server's) overlap instead of following
//! each other.
//!
//! The body follows the put's writer through a second descriptor of the new payload
//! ([`Feed`]) and holds its last [`HOLD`] bytes back until the put hands over: the payload is
//! fsynced and linked, its row committed, and the upload's salt recorded. Until then the server
//! cannot have the whole body, so it never holds a blob this device might lose in a crash.
//! After the hand-off the task owns the blob's lock, so the queue's own upload of the row
//! waits for it and then finds it `SYNCED`. Anything that goes wrong (the put fails, the
//! server refuses or is down, shutdown) just drops the request: the server discards a body
//! cut short, nothing is recorded as a failed attempt, and the row, if it was committed, is
//! uploaded by the queue as any other.
//!
//! While an early upload's salt is recorded and its answer not yet taken, listings wait
//! ([`Gate::quiet`]): the transfer loop never lists with an upload in flight either, and a
//! full listing that missed the blob by a moment would take it for lost.

use std::sync::{Arc, Condvar, Mutex};

use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, RwLock, RwLockWriteGuard, Semaphore};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span};

use super::upload::paced_body;
use super::{Progress, READ_AHEAD, UPLOAD_CHUNK, read_chunks};
use crate::clock::Clock;
use crate::engine::{Engine, Shared, TransferStats};
use crate::events::Direction;
use crate::remote::{ByteStream, Remote};
use crate::status::Status;
use crate::store::BlobInfo;

/// Puts from this size on are uploaded while they are written. Smaller ones gain little (the
/// server's write of a few MiB is short) and go up in the queue's batches.
pub(crate) const EARLY_MIN: u64 = 16 << 20;
/// Bytes of the body held back until the put hands over.
const HOLD: u64 = UPLOAD_CHUNK as u64;
/// Early uploads at once; a put that finds none free is uploaded by the queue.
const EARLY_SLOTS: usize = 1;

/// The engine's side of early uploads: their slots, and the lock listings take.
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    listing: RwLock<()>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(EARLY_SLOTS)),
            listing: RwLock::new(()),
        }
    }
}

impl Gate {
    /// Waits until no early upload is between its recorded salt and its answer, and keeps
    /// new ones from getting there while the guard lives (a listing holds it).
    pub(crate) async fn quiet(&self) -> RwLockWriteGuard<'_, ()> {
        self.listing.write().await
    }
}

/// What the put hands the early upload once the blob is durable and its row committed.
pub(crate) struct Handoff {
    /// The committed row.
    pub blob: BlobInfo,
    /// The blob's lock, held from the put on: the queue's upload of the row waits for it.
    pub guard: OwnedMutexGuard<()>,
}

/// How far a put has written its payload, and whether the body may send all of it.
#[derive(Default)]
pub(crate) struct Feed {
    state: Mutex<FeedState>,
    moved: Condvar,
}

#[derive(Default)]
struct FeedState {
    written: u64,
    gate: Hold,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The last bytes wait.
    #[default]
    Held,
    /// The put handed over: everything may go.
    Open,
    /// Given up: the body ends with an error.
    Shut,
}

impl Feed {
    /// The put wrote `n` more bytes at the end of the payload.
    pub(crate) fn advance(&self, n: usize) {
        self.lock().written += n as u64;
        self.moved.notify_all();
    }

    fn set(&self, to: Hold) {
        let mut s = self.lock();
        if s.gate == Hold::Held {
            s.gate = to;
        }
        drop(s);
        self.moved.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocking: waits until the bytes up to `end` may be read (written, and below
    /// `held_from` unless the put handed over).
    fn wait_for(&self, end: u64, held_from: u64) -> std::io::Result<()> {
        let mut s = self.lock();
        loop {
            match s.gate {
                Hold::Shut => {
                    return Err(std::io::Error::other("early upload given up"));
                }
                Hold::Open => return Ok(()),
                Hold::Held if end <= held_from && s.written >= end => return Ok(()),
                Hold::Held => {}
            }
            s = self.moved.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Shuts the feed when the early upload ends for any reason but success, so the reader
/// thread never waits for a writer nobody follows.
struct ShutOnDrop(Arc<Feed>);

impl Drop for ShutOnDrop {
    fn drop(&mut self) {
        self.0.set(Hold::Shut);
    }
}

/// An early upload about to start, made by the put (on its blocking thread) once it knows
/// the payload's header.
pub(crate) struct EarlyUpload {
    pub ns: Namespace,
    pub id: BlobId,
    pub salt: [u8; 32],
    /// The payload's full length.
    pub stored: u64,
    /// A second descriptor of the payload being written.
    pub file: std::fs::File,
    pub feed: Arc<Feed>,
    pub handoff: oneshot::Receiver<Handoff>,
    /// Its slot, given back when it ends.
    pub permit: OwnedSemaphorePermit,
}

/// Takes an early-upload slot for a put of `stored` bytes: `None` when the put is too small,
/// the slots are taken, or the remote refused our credentials.
pub(crate) fn slot(shared: &Shared, stored: u64) -> Option<OwnedSemaphorePermit> {
    if stored < EARLY_MIN || shared.cancel.is_cancelled() || shared.state().remote.unauthorized {
        return None;
    }
    shared.early.slots.clone().try_acquire_owned().ok()
}

/// Bytes sent so far, and the transfer `status` shows once the row exists.
#[derive(Default)]
struct Sent {
    bytes: u64,
    progress: Option<Progress>,
}

/// Blocking: reads the payload in `file` front to back as the feed allows (its last [`HOLD`]
/// bytes only after the hand-off), handing each chunk, or the error that ends it, to `send`
/// until it returns `false`.
fn follow(
    file: &std::fs::File,
    stored: u64,
    feed: &Feed,
    send: impl FnMut(std::io::Result<Bytes>) -> bool,
) {
    let held_from = stored - stored.min(HOLD);
    read_chunks(file, stored, |end| feed.wait_for(end, held_from), send);
}

/// The body: the payload read front to back as the put writes it, its last [`HOLD`] bytes
/// only after the hand-off; paced by the upload limiter.
fn feed_stream(
    shared: Arc<Shared>,
    file: std::fs::File,
    stored: u64,
    feed: Arc<Feed>,
    sent: Arc<Mutex<Sent>>,
) -> ByteStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        follow(&file, stored, &feed, |c| tx.blocking_send(c).is_ok())
    });
    paced_body(shared, rx, move |n| {
        let mut s = sent.lock().unwrap_or_else(|p| p.into_inner());
        s.bytes += n;
        if let Some(p) = s.progress.as_mut() {
            p.add(n);
        }
    })
}

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Runs an early upload to its end (see the module docs). Never records a failure: the
    /// queue uploads whatever this did not.
    pub(crate) async fn early_upload(self: &Arc<Self>, e: EarlyUpload) {
        let span = info_span!("transfer", ns = %e.ns, blob = %e.id, dir = "up", size = e.stored, early = true);
        self.early_inner(e).instrument(span).await
    }

    async fn early_inner(self: &Arc<Self>, e: EarlyUpload) {
        let EarlyUpload {
            ns,
            id,
            salt,
            stored,
            file,
            feed,
            mut handoff,
            permit: _permit,
        } = e;
        let _shut = ShutOnDrop(feed.clone());
        let paused = match self.shared.store.paused().await {
            Ok(p) => p.iter().any(|p| p.as_ref().is_none_or(|p| *p == ns)),
            Err(_) => true,
        };
        if paused {
            return;
        }
        let sent = Arc::new(Mutex::new(Sent::default()));
        let body = feed_stream(
            self.shared.clone(),
            file,
            stored,
            feed.clone(),
            sent.clone(),
        );
        // Not `self.remote`: a body we cut short on purpose is no sign of a sick server.
        let put = self.remote.inner.put(&ns, &id, stored, body, None);
        tokio::pin!(put);
        let cancel = self.shared.cancel.clone();
        let Handoff { blob, guard } = tokio::select! {
            r = &mut put => {
                debug!(answer = ?r.err(), "the server answered before the put was committed; the queue uploads it");
                return;
            }
            h = &mut handoff => match h {
                Ok(h) => h,
                Err(_) => return debug!("the put failed; early upload dropped"),
            },
            _ = cancel.cancelled() => return,
        };
        if blob.status != Status::PendingUpload || blob.upload_salt.is_some() {
            return;
        }
        let _quiet = self.shared.early.listing.read().await;
        if let Err(err) = self
            .shared
            .store
            .set_upload_salt(&ns, &id, salt, stored)
            .await
        {
            return debug!(error = %err, "cannot record the salt; the queue uploads it");
        }
        {
            let mut s = sent.lock().unwrap_or_else(|p| p.into_inner());
            let mut p = Progress::start(&self.shared, &blob, Direction::Upload, stored, 1);
            p.set(s.bytes);
            s.progress = Some(p);
        }
        feed.set(Hold::Open);
        let res = tokio::select! {
            r = &mut put => r,
            _ = cancel.cancelled() => return,
        };
        match res {
            Ok(()) => {
                self.shared.note_remote_ok();
                let mut stats = TransferStats::default();
                self.mark_uploaded(&blob, stored, &mut stats).await;
                self.shared.state().between_cycles.add(stats);
            }
            Err(err) => {
                info!(error = %err, "early upload failed; the queue uploads it again");
            }
        }
        drop(sent);
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc::{Receiver, RecvTimeoutError};
    use std::time::Duration;

    use super::*;

    /// Follows `file` on a thread; the chunks (or the error) arrive on the receiver.
    fn start(
        file: &std::fs::File,
        stored: u64,
        feed: &Arc<Feed>,
    ) -> Receiver<std::io::Result<Bytes>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (file, feed) = (file.try_clone().unwrap(), feed.clone());
        std::thread::spawn(move || follow(&file, stored, &feed, |c| tx.send(c).is_ok()));
        rx
    }

    /// Everything that arrives until nothing has for `quiet`.
    fn drain(rx: &Receiver<std::io::Result<Bytes>>, quiet: Duration) -> (Vec<u8>, Option<String>) {
        let mut got = Vec::new();
        loop {
            match rx.recv_timeout(quiet) {
                Ok(Ok(b)) => got.extend_from_slice(&b),
                Ok(Err(e)) => return (got, Some(e.to_string())),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return (got, None);
                }
            }
        }
    }

    fn payload(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    #[test]
    fn the_body_follows_the_writer_and_holds_its_tail_until_the_hand_off() {
        let len = 3 * UPLOAD_CHUNK + 777;
        let (f, data) = payload(len);
        let feed = Arc::new(Feed::default());
        let rx = start(f.as_file(), len as u64, &feed);
        let quiet = Duration::from_millis(200);
        // Nothing written yet: nothing read.
        assert_eq!(drain(&rx, quiet).0.len(), 0);
        // Written in part: only whole chunks of what is written go.
        feed.advance(UPLOAD_CHUNK + 10);
        let first = drain(&rx, quiet).0;
        assert!(first == data[..UPLOAD_CHUNK], "{} bytes", first.len());
        // All written, not yet handed over: more goes, but never the last HOLD bytes.
        feed.advance(len - UPLOAD_CHUNK - 10);
        let (mid, err) = drain(&rx, quiet);
        assert_eq!(err, None);
        let sent = UPLOAD_CHUNK + mid.len();
        assert!(
            !mid.is_empty() && sent <= len - HOLD as usize,
            "{sent} of {len} sent"
        );
        assert!(mid == data[UPLOAD_CHUNK..sent]);
        // Handed over: the rest, and the body ends.
        feed.set(Hold::Open);
        let (tail, err) = drain(&rx, quiet);
        assert_eq!(err, None);
        assert!(
            tail == data[sent..],
            "{} bytes of {}",
            tail.len(),
            len - sent
        );
    }

    #[test]
    fn a_shut_feed_ends_the_body_with_an_error_and_never_sends_the_tail() {
        let len = 2 * UPLOAD_CHUNK;
        let (f, data) = payload(len);
        let feed = Arc::new(Feed::default());
        let rx = start(f.as_file(), len as u64, &feed);
        feed.advance(len);
        let quiet = Duration::from_millis(200);
        let sent = drain(&rx, quiet).0;
        assert!(sent == data[..len - HOLD as usize], "{} bytes", sent.len());
        {
            let _shut = ShutOnDrop(feed.clone());
        }
        let (rest, err) = drain(&rx, quiet);
        assert!(rest.is_empty());
        assert!(err.is_some_and(|e| e.contains("given up")));
        // Shut stays shut: a late hand-off opens nothing.
        feed.set(Hold::Open);
        assert_eq!(feed.lock().gate, Hold::Shut);
    }

    #[test]
    fn a_payload_smaller_than_the_hold_waits_whole() {
        let len = 1000;
        let (f, data) = payload(len);
        let feed = Arc::new(Feed::default());
        let rx = start(f.as_file(), len as u64, &feed);
        feed.advance(len);
        let quiet = Duration::from_millis(200);
        assert!(drain(&rx, quiet).0.is_empty());
        feed.set(Hold::Open);
        assert!(drain(&rx, quiet).0 == data);
    }
}
