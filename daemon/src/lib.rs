//! The blobsync daemon (see ARCHITECTURE.md).
