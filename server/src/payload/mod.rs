//! The payload store: where blob bytes live, behind [`PayloadStore`].
//!
//! Two implementations: [`fs::FsPayloads`] (files in Soledad's layout under the data dir,
//! the default) and [`s3::S3Payloads`] (objects in an S3-compatible bucket, for many nodes).
//! The index decides what exists; this module only moves bytes. A put streams the body into a
//! [`PayloadWriter`] (a temp file, or an object under a key unique to this upload), which
//! [`PayloadWriter::finish`]es into a durable [`Staged`] payload; the index commit then
//! publishes it (renames the file into place, or records the object key). Reads are ranged and
//! streamed in bounded chunks: nothing here holds a whole blob.
//!
//! This module never touches the index.

use std::pin::Pin;

use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use futures_util::Stream;

pub mod fs;
pub mod s3;

pub use fs::FsPayloads;
pub use s3::{S3Config, S3Payloads};

/// A payload written and durable, not yet published by an index commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// A written temp file beside its final path (`fs`): the commit renames it into place
    /// and makes it durable with the rest of its round.
    File(std::path::PathBuf),
    /// A complete object under a key no other upload uses (`s3`): the commit records the key,
    /// which is what makes the object visible.
    Object(String),
    /// A payload of at most `inline_max` bytes (`fs`), held until the SQLite index's commit
    /// writes it beside its row.
    Inline(Bytes),
}

/// Payloads of at most this many bytes are kept inside the SQLite index (`fs+sqlite`): a
/// blob of a few KiB costs a file create, a rename and its share of a `syncfs` as a file, and
/// a slice of one sequential WAL write inline (issue 20, `SRV-PUT` and `W5`). About a page,
/// so most stay in the table's leaf pages; and a bound on what a request holds in memory.
pub const INLINE_MAX: usize = 4096;

/// The largest `inline_max` a server accepts; payloads up to this size are looked for in the
/// index before the file system, so any earlier setting's stay readable.
pub const INLINE_CAP: usize = 64 * 1024;

/// Where one blob's payload is: its names, and the object key the index recorded (None for
/// `fs`, whose path follows from the names).
#[derive(Debug, Clone)]
pub struct Location {
    /// Owner.
    pub user: String,
    /// Namespace.
    pub ns: Namespace,
    /// Id.
    pub id: BlobId,
    /// The index row's `object_key`.
    pub object_key: Option<String>,
    /// The index row's stored size. A file of another size was replaced since the row was
    /// read (an incoming adoption renames its blob over the age file): the file store refuses
    /// it with `ErrorKind::Interrupted` rather than serve the new bytes under the old length.
    pub size: u64,
}

/// Bytes of a payload, in chunks of at most [`crate::body::CHUNK`]-ish size.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A payload found by [`PayloadStore::list`] (for fsck).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A leftover temp (a cut-off upload): removable.
    Temp(String),
    /// A payload at a proper name.
    Blob {
        /// The file path or object key.
        key: String,
        /// Owner.
        user: String,
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
        /// Size.
        size: u64,
        /// Seconds since it was last written (objects: fsck leaves young orphans alone, they
        /// may be uploads whose commit has not happened yet).
        age_secs: u64,
    },
    /// Something that is no blob (reported only).
    Stray(String),
}

/// A payload being written. Dropped before [`PayloadWriter::finish`], it removes what it wrote
/// (best effort; leftovers are found by fsck).
#[async_trait::async_trait]
pub trait PayloadWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Bytes written so far.
    fn len(&self) -> u64;
    /// Whether nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Completes the payload. `sync`: make it durable now. Puts pass false: the index's
    /// commit makes a round's files durable together before it publishes them (an object
    /// is durable once its upload completes).
    async fn finish(self: Box<Self>, sync: bool) -> std::io::Result<Staged>;
}

/// Where payloads live (see the module docs).
#[async_trait::async_trait]
pub trait PayloadStore: Send + Sync + std::fmt::Debug {
    /// `fs` or `s3`, for logs and metrics.
    fn kind(&self) -> &'static str;
    /// The file layout, when payloads are files (the SQLite index renames them into place
    /// under its writer lock, which is that pairing's crash-safety order).
    fn layout(&self) -> Option<&crate::Layout> {
        None
    }
    /// A writer for a new payload of `user`/`ns`/`id`.
    fn writer(&self, user: &str, ns: &Namespace, id: &BlobId) -> Box<dyn PayloadWriter>;
    /// The largest payload [`PayloadStore::writer`] keeps inside the index instead of a file
    /// (0: none).
    fn inline_max(&self) -> u64 {
        0
    }
    /// [`PayloadStore::writer`] that never keeps the payload in memory for the index
    /// (`Staged::Inline`), whatever its size: for a request over its budget of those.
    fn file_writer(&self, user: &str, ns: &Namespace, id: &BlobId) -> Box<dyn PayloadWriter> {
        self.writer(user, ns, id)
    }
    /// Removes staged payloads that will not be published.
    async fn discard(&self, staged: Vec<Staged>);
    /// `len` bytes from `start` of a payload. A missing payload is `ErrorKind::NotFound`.
    async fn open(&self, loc: &Location, start: u64, len: u64) -> std::io::Result<ByteStream>;
    /// Removes an object (after the index committed its tombstone or replacement). Files are
    /// unlinked by the SQLite index under its lock instead, so this is for object keys.
    async fn remove_object(&self, key: &str) -> std::io::Result<()>;
    /// Removes every payload of a user (after `user remove` committed).
    async fn remove_user(&self, user: &str) -> std::io::Result<()>;
    /// Removes leftover temps of uploads cut off by a crash; how many. Only safe when no
    /// upload is in flight, i.e. at start on `fs`; objects have no temps (a cut-off
    /// multipart upload is invisible and the bucket's lifecycle rule expires it).
    async fn sweep_temps(&self) -> std::io::Result<usize>;
    /// Every payload there is (for fsck).
    async fn list(&self) -> std::io::Result<Vec<Found>>;
    /// Removes a payload fsck found orphaned (a file path or an object key, as listed).
    async fn remove_found(&self, key: &str) -> std::io::Result<()>;
}

/// Reads a whole (small) stream, for the Soledad `Tag` of the last 16 bytes.
pub async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b?);
    }
    Ok(out)
}
