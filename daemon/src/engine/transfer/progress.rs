//! [`Progress`]: one transfer as `status` shows it, and its throttled Watch events.

use std::sync::Arc;

use blobsync_shared::{BlobId, Namespace};

use super::PROGRESS_EVERY;
use crate::engine::{Shared, TransferInfo};
use crate::events::{Direction, EventKind};
use crate::store::BlobInfo;

/// Tracks one transfer in `status` and publishes throttled progress events.
pub(crate) struct Progress {
    shared: Arc<Shared>,
    tid: u64,
    ns: Namespace,
    id: BlobId,
    dir: Direction,
    done: u64,
    pub(super) total: u64,
    last: tokio::time::Instant,
}

impl Progress {
    pub fn start(
        shared: &Arc<Shared>,
        b: &BlobInfo,
        dir: Direction,
        total: u64,
        blobs: usize,
    ) -> Self {
        let (ns, id) = (&b.ns, &b.id);
        let tid = {
            let mut st = shared.state();
            st.next_transfer_id += 1;
            let tid = st.next_transfer_id;
            st.transfers.insert(
                tid,
                TransferInfo {
                    ns: ns.clone(),
                    id: id.clone(),
                    dir,
                    done: 0,
                    total,
                    blobs,
                    priority: b.priority,
                    attempt: b.attempts + 1,
                    started: (shared.now)(),
                },
            );
            tid
        };
        Self {
            shared: shared.clone(),
            tid,
            ns: ns.clone(),
            id: id.clone(),
            dir,
            done: 0,
            total,
            last: tokio::time::Instant::now(),
        }
    }

    pub fn set(&mut self, done: u64) {
        self.done = done;
        if let Some(t) = self.shared.state().transfers.get_mut(&self.tid) {
            t.done = done;
        }
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = tokio::time::Instant::now();
            self.shared.events.publish(EventKind::TransferProgress {
                ns: self.ns.clone(),
                id: self.id.clone(),
                dir: self.dir,
                done,
                total: self.total,
            });
        }
    }

    pub fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shared.state().transfers.remove(&self.tid);
    }
}
