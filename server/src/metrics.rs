//! Prometheus counters of the server: requests by route and status, bytes in and out, time
//! spent in the backends (index commits and lookups, payload writes and opens: where a
//! request's time goes on `s3+postgres`); the stored-blob gauges are read from the index at
//! scrape time.
//!
//! Counting is a short std-mutex critical section (never held across an await) or an atomic.
//! This module never touches the network or the disk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A backend (`sqlite`, `postgres`, `fs`, `s3`) and one of its operations.
type BackendOp = (&'static str, &'static str);

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Blob bytes received (PUT, /stream up, /incoming).
    pub bytes_in: AtomicU64,
    /// Blob bytes sent (GET, /stream down).
    pub bytes_out: AtomicU64,
    /// Connections currently open.
    pub connections: AtomicU64,
    /// Backend calls: (backend, op) -> (count, total microseconds).
    backend: Mutex<BTreeMap<BackendOp, (u64, u64)>>,
}

impl Metrics {
    /// Counts one finished request.
    pub fn request(&self, route: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route, status)).or_insert(0) += 1;
    }

    /// Records one backend call of `op` on `backend` (`sqlite`, `postgres`, `fs`, `s3`).
    pub fn backend(&self, backend: &'static str, op: &'static str, took: std::time::Duration) {
        let mut m = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry((backend, op)).or_insert((0, 0));
        e.0 += 1;
        e.1 += took.as_micros() as u64;
    }

    /// Adds received blob bytes.
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds sent blob bytes.
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the stored totals given.
    pub fn render(&self, blobs: u64, bytes: u64) -> String {
        let mut s = String::new();
        s.push_str("# HELP blobsync_requests_total HTTP requests by route and status code.\n");
        s.push_str("# TYPE blobsync_requests_total counter\n");
        let reqs = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((route, code), n) in reqs {
            let _ = writeln!(
                s,
                "blobsync_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        let backend = self
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !backend.is_empty() {
            s.push_str(
                "# HELP blobsync_backend_seconds Time in backend calls (index, payloads).\n\
                 # TYPE blobsync_backend_seconds summary\n",
            );
        }
        for ((b, op), (n, us)) in backend {
            let _ = writeln!(
                s,
                "blobsync_backend_seconds_count{{backend=\"{b}\",op=\"{op}\"}} {n}\n\
                 blobsync_backend_seconds_sum{{backend=\"{b}\",op=\"{op}\"}} {:.6}",
                us as f64 / 1e6
            );
        }
        let gauges = [
            (
                "blobsync_bytes_received_total",
                "counter",
                "Blob bytes received.",
                self.bytes_in.load(Ordering::Relaxed),
            ),
            (
                "blobsync_bytes_sent_total",
                "counter",
                "Blob bytes sent.",
                self.bytes_out.load(Ordering::Relaxed),
            ),
            (
                "blobsync_open_connections",
                "gauge",
                "Connections currently open.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "blobsync_stored_blobs",
                "gauge",
                "Live blobs in the index.",
                blobs,
            ),
            (
                "blobsync_stored_bytes",
                "gauge",
                "Bytes of live blobs.",
                bytes,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        s
    }
}
