//! The event bus that watchers (`blobctl watch`) follow: every event gets a strictly growing
//! id, the last [`RING_CAPACITY`] stay in a ring so a watcher can resume with `since`, and a
//! live broadcast feeds connected watchers. A slow watcher gets a "dropped N" marker instead
//! of slowing the daemon down.
//!
//! This module never blocks the publisher: publishing is a short critical section.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blobsync_shared::{BlobId, Namespace};
use tokio::sync::broadcast;

use crate::status::Status;

/// Events kept for `subscribe(since)`; older ones are reported as a gap.
pub const RING_CAPACITY: usize = 4096;
/// Events a live watcher may fall behind before it gets a "dropped" marker.
const LIVE_CAPACITY: usize = 1024;

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local to remote.
    Upload,
    /// Remote to local.
    Download,
}

/// What a finished cycle did. Its transfer counts include the transfers run since the
/// previous cycle ended (a put's upload starts at once, between cycles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleSummary {
    /// The cycle number (counts from 1 over the store's life).
    pub cycle: u64,
    /// Whether it used a full listing.
    pub full_listing: bool,
    /// Remote changes seen.
    pub listed_changes: u64,
    /// Blobs uploaded.
    pub uploaded: u64,
    /// Blobs downloaded.
    pub downloaded: u64,
    /// Deletions sent to the server.
    pub deleted_remote: u64,
    /// Local blobs removed because the server deleted them.
    pub deleted_local: u64,
    /// Transfers that failed and are scheduled again.
    pub retried: u64,
    /// Transfers that failed for good.
    pub failed: u64,
    /// Stored (encrypted) bytes uploaded by finished uploads.
    pub bytes_up: u64,
    /// Stored bytes downloaded by finished downloads.
    pub bytes_down: u64,
    /// Blobs this device holds that the server had lost (absent, or an unproven tombstone),
    /// queued to be uploaded again.
    pub reuploaded_missing: u64,
    /// Proven remote deletions held by the mass-deletion guard at the end of the cycle.
    pub deletions_held: u64,
    /// Set when the cycle could not reach the remote (or was refused).
    pub error: Option<String>,
    /// When it started.
    pub started: Option<SystemTime>,
    /// When it ended.
    pub finished: Option<SystemTime>,
}

/// Kinds of integrity alarms: something the server (or the path to it) did that a correct
/// server never does, or that needs the user's decision before data is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// A cycle would delete more than max(100, 25 %) of a namespace's blobs: held.
    MassDeleteHeld,
    /// Tombstones without a valid delete proof: the copies were uploaded again.
    UnprovenTombstone,
    /// The server offered a version of an id this device held before (rollback): refused.
    Rollback,
    /// An `external` blob outside an incoming namespace: refused.
    ExternalRefused,
    /// The remote is not the one this device synced with before (URL, user or instance).
    RemoteChanged,
    /// Downloads fail authentication as written with another storage key: this device's key
    /// is not the user's. Downloads stop until the right key is imported and the daemon
    /// restarted.
    WrongKey,
}

impl AlarmKind {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::MassDeleteHeld => "mass_delete_held",
            AlarmKind::UnprovenTombstone => "unproven_tombstone",
            AlarmKind::Rollback => "rollback_refused",
            AlarmKind::ExternalRefused => "external_refused",
            AlarmKind::RemoteChanged => "remote_changed",
            AlarmKind::WrongKey => "wrong_key",
        }
    }
}

/// An alarm, as `status` shows it and `Watch` announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// What kind.
    pub kind: AlarmKind,
    /// The namespace it concerns, if one.
    pub ns: Option<Namespace>,
    /// What happened and what to do, for a person.
    pub message: String,
    /// How many blobs it concerns.
    pub count: u64,
    /// When it was raised (last raised, for a repeated one).
    pub at: SystemTime,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// An integrity alarm was raised (also kept in `status` until resolved).
    Alarm(Alarm),
    /// A blob changed status (`to == None`: the row is gone).
    StatusChanged {
        /// Namespace.
        ns: Namespace,
        /// Blob id.
        id: BlobId,
        /// Previous status (`None`: new row).
        from: Option<Status>,
        /// New status (`None`: removed).
        to: Option<Status>,
    },
    /// Progress of a transfer (throttled to a few per second per transfer).
    TransferProgress {
        /// Namespace.
        ns: Namespace,
        /// Blob id.
        id: BlobId,
        /// Direction.
        dir: Direction,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A transfer completed.
    TransferFinished {
        /// Namespace.
        ns: Namespace,
        /// Blob id.
        id: BlobId,
        /// Direction.
        dir: Direction,
        /// Bytes moved.
        bytes: u64,
    },
    /// A transfer failed (it may be retried; `will_retry` says).
    TransferFailed {
        /// Namespace.
        ns: Namespace,
        /// Blob id.
        id: BlobId,
        /// Direction.
        dir: Direction,
        /// Why.
        error: String,
        /// Which attempt failed, from 1.
        attempt: u32,
        /// Whether it stays queued.
        will_retry: bool,
        /// When the next attempt is due (`will_retry` only).
        next_attempt: Option<std::time::SystemTime>,
    },
    /// A sync cycle started.
    CycleStarted {
        /// Its number.
        cycle: u64,
        /// It lists everything (forced, periodic, or after a rebuild); a namespace the daemon
        /// has no cursor for is listed in full in any cycle.
        full_list: bool,
    },
    /// A sync cycle finished.
    CycleFinished {
        /// What it did.
        summary: CycleSummary,
    },
    /// Something went wrong outside one transfer.
    Error {
        /// A human message.
        message: String,
    },
}

/// An event with its id and time.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Strictly growing over the daemon's life (starts at 1).
    pub id: u64,
    /// When it was published.
    pub time: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// One item a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// An event.
    Event(Event),
    /// This many events were lost (evicted from the ring, or the watcher was too slow).
    Dropped(u64),
}

struct Ring {
    next_id: u64,
    events: VecDeque<Event>,
}

/// Cloneable publisher and subscription point.
#[derive(Clone)]
pub struct EventBus {
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus; the first event gets id 1.
    pub fn new() -> Self {
        Self {
            ring: Arc::new(Mutex::new(Ring {
                next_id: 1,
                events: VecDeque::with_capacity(RING_CAPACITY),
            })),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    /// Publishes an event and returns its id.
    pub fn publish(&self, kind: EventKind) -> u64 {
        // Held only to assign the id, push and send, so ids and live order agree and a
        // subscriber taking its snapshot sees each event exactly once.
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            id: ring.next_id,
            time: SystemTime::now(),
            kind,
        };
        ring.next_id += 1;
        if ring.events.len() == RING_CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(event);
        ring.next_id - 1
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).next_id
    }

    /// Subscribes: with `since = Some(n)`, first the buffered events with id > n (preceded by
    /// a `Dropped` marker when some of them were evicted), then live ones.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut backlog = VecDeque::new();
        if let Some(since) = since {
            let first = ring.events.front().map_or(ring.next_id, |e| e.id);
            let missed = first.saturating_sub(since.saturating_add(1));
            if missed > 0 {
                backlog.push_back(Delivery::Dropped(missed));
            }
            backlog.extend(
                ring.events
                    .iter()
                    .filter(|e| e.id > since)
                    .cloned()
                    .map(Delivery::Event),
            );
        }
        Subscription {
            backlog,
            live: self.live.subscribe(),
        }
    }
}

/// A watcher's feed.
pub struct Subscription {
    backlog: VecDeque<Delivery>,
    live: broadcast::Receiver<Event>,
}

impl Subscription {
    /// The next delivery; `None` when the bus is gone (daemon shutting down).
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(d) = self.backlog.pop_front() {
            return Some(d);
        }
        match self.live.recv().await {
            Ok(e) => Some(Delivery::Event(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Delivery::Dropped(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(n: u32) -> EventKind {
        EventKind::Error {
            message: n.to_string(),
        }
    }

    #[tokio::test]
    async fn ids_grow_and_resume_with_since() {
        let bus = EventBus::new();
        assert_eq!(bus.publish(err(1)), 1);
        assert_eq!(bus.publish(err(2)), 2);
        let mut sub = bus.subscribe(Some(1));
        bus.publish(err(3));
        let ids: Vec<u64> = [sub.next().await, sub.next().await]
            .into_iter()
            .map(|d| match d {
                Some(Delivery::Event(e)) => e.id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [2, 3]);
    }

    #[tokio::test]
    async fn evicted_events_show_as_a_gap() {
        let bus = EventBus::new();
        for i in 0..(RING_CAPACITY as u32 + 10) {
            bus.publish(err(i));
        }
        let mut sub = bus.subscribe(Some(0));
        assert_eq!(sub.next().await, Some(Delivery::Dropped(10)));
        match sub.next().await {
            Some(Delivery::Event(e)) => assert_eq!(e.id, 11),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_watcher_gets_a_dropped_marker() {
        let bus = EventBus::new();
        let mut sub = bus.subscribe(None);
        for i in 0..(LIVE_CAPACITY as u32 + 5) {
            bus.publish(err(i));
        }
        assert_eq!(sub.next().await, Some(Delivery::Dropped(5)));
    }
}
