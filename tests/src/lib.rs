//! Test harness for blobsync (see ARCHITECTURE.md).
