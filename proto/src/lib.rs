//! Generated code for `proto/blobsync.proto` (package `blobsync.v1`). No hand-written logic.
