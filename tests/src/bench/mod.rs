//! The benchmark harness behind `blobsync-bench`: Soledad's workloads through a real server
//! and two real daemons over loopback, with the figures issue 8 asks for.
//!
//! Each workload runs on a fresh [`TestEnv`] (one server, daemon A and daemon B of one user),
//! so peak RSS and CPU are that workload's alone. Blobs are staged as files before the clock
//! starts (random, incompressible, from a fixed seed) and put on A with `PutPath`, many calls
//! in flight, so the client is never the bottleneck. Upload = first put until A reports every
//! blob `SYNCED` (watched through `Watch`); download = a forced `Sync` on B (checked to hold
//! nothing of the workload first) until B reports every blob `SYNCED` (B verified each segment's tag while downloading); afterwards, out of the
//! clock, every blob is read back from B and its SHA-256 compared with the staged file's.
//! This module measures; it never asserts a target (it is a benchmark, not a test).

pub mod client;
pub mod contention;
pub mod measure;
pub mod report;

mod idle;
mod incoming;
mod million;
mod opts;
mod results;
mod rig;
pub mod server_load;
mod staging;
mod workload;

pub use idle::run_idle;
pub use incoming::{IncomingResult, run_incoming};
pub use million::{MillionDevice, MillionResult, run_million};
pub use opts::{BenchOpts, PUT_METHOD, WORKLOADS, Workload};
pub use results::{BenchReport, DiskResult, IdleResult, WorkloadResult};
pub use staging::{
    SLOW_CREATE, TRASH_AGE, create_probe, disk_rate, empty_old_trash, remove_row_dirs, run_disk,
    trash_emptied_ago,
};
pub use workload::run_workload;

use opts::{GIB, KIB, MIB};
use rig::*;
use staging::*;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobsync_proto::event::Kind;
use blobsync_proto::{
    BlobStatus, GetRequest, PutHeader, PutPathRequest, PutPathsRequest, StatusRequest, SyncRequest,
    WatchRequest, get_response,
};
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use tonic::Streaming;

use crate::daemon::write_key_file;
use crate::{DaemonOpts, DaemonProc, HarnessError, RemoteSpec, ServerOpts, ServerProc, TestEnv};
use client::Client;
use measure::{ProcUsage, Snapshot};

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Starting or driving the processes failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A control call failed.
    #[error("control call failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// Connecting to a control socket failed.
    #[error("cannot connect to the control socket: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// Local file I/O (staging, disk test).
    #[error("{context}: {source}")]
    Io {
        /// What the benchmark was doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The system did not reach the state the benchmark waits for, or read back wrong data.
    #[error("{0}")]
    Check(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    // One thread: the client must take as little of the 2 cores as it can.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("start the tokio runtime"))
}

/// `uname -r` and the CPU count.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("linux {} / {cpus} cpus", kernel.trim())
}
