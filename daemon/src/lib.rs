//! `blobsyncd`: blobsync's daemon — the local store, the sync engine with its persistent retry
//! queue, the remotes (HTTP and local directory) and the process plumbing. See
//! ARCHITECTURE.md for the map. The control service (`control`) only calls
//! [`handle::EngineHandle`].

pub mod clock;
pub mod control;
pub mod engine;
pub mod events;
pub mod handle;
pub mod notify;
pub mod remote;
pub mod retry;
mod spool;
pub mod status;
pub mod store;
