//! Response bodies (full, channel-fed, file-streamed) and [`TempBlob`], the writer that moves
//! an incoming blob to a temp file in bounded chunks through the blocking pool.
//!
//! Nothing here holds a whole blob: uploads are written in chunks of at most [`CHUNK`] bytes,
//! downloads are read in chunks of the same size. This module never touches the index.

use std::io::Write;
use std::path::PathBuf;

use blobsync_shared::writeback::WriteBehind;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;

/// The body type of every response.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Size of the pieces blobs move in (disk writes, disk reads, channel messages). Large enough
/// to amortize a blocking-pool hop, small enough that many transfers stay cheap in memory.
pub const CHUNK: usize = 256 * 1024;

/// Messages buffered between a body producer and hyper; with [`CHUNK`] this bounds a
/// download's memory to about 1 MiB.
pub const BODY_CHANNEL: usize = 4;

/// A body with these bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body fed through a bounded channel; an `Err` sent aborts the response (the client sees
/// a cut-off body, never a silently short one).
pub fn channel() -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_CHANNEL);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// A blob being received into a temp file. Data is buffered up to [`CHUNK`] bytes and written
/// on the blocking pool; the file is created lazily, so a small blob costs one blocking hop
/// (create, write, fsync) at [`TempBlob::finish`]. Dropped unfinished, it removes its file.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    /// Starts the disk on each chunk as it is written, so the final fsync is short.
    behind: WriteBehind,
    len: u64,
    done: bool,
    inline_max: usize,
}

impl TempBlob {
    /// A writer for `path` (not created yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            buf: Vec::new(),
            behind: WriteBehind::default(),
            len: 0,
            done: false,
            inline_max: 0,
        }
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes, writing a chunk out when the buffer is full.
    pub async fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let room = CHUNK - self.buf.len();
            let n = room.min(data.len());
            if self.buf.capacity() == 0 {
                self.buf.reserve(CHUNK.min(n.max(8 * 1024)));
            }
            self.buf.extend_from_slice(&data[..n]);
            self.len += n as u64;
            data = &data[n..];
            if self.buf.len() >= CHUNK {
                self.flush(false).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        let path = self.path.clone();
        let file = self.file.take();
        let buf = std::mem::take(&mut self.buf);
        let mut behind = std::mem::take(&mut self.behind);
        let (file, mut buf, behind) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut file = match file {
                Some(f) => f,
                None => {
                    let open = || {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)
                    };
                    match open() {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            if let Some(dir) = path.parent() {
                                std::fs::create_dir_all(dir)?;
                            }
                            open()?
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            file.write_all(&buf)?;
            behind.wrote(&file, buf.len())?;
            if sync {
                file.sync_all()?;
            }
            Ok((file, buf, behind))
        })
        .await
        .map_err(std::io::Error::other)??;
        buf.clear();
        self.buf = buf;
        self.behind = behind;
        self.file = Some(file);
        Ok(())
    }

    /// Lets [`TempBlob::take_small`] hand out payloads of at most `max` bytes (default 0).
    pub fn inline_up_to(mut self, max: usize) -> Self {
        self.inline_max = max;
        self
    }

    /// The bytes received, if they are at most [`TempBlob::inline_up_to`] and none was written
    /// to disk yet; the writer is then done (it never creates its file).
    pub fn take_small(&mut self) -> Option<Bytes> {
        if self.file.is_some() || self.buf.len() > self.inline_max || self.inline_max == 0 {
            return None;
        }
        self.done = true;
        // A copy of the length, not the buffer's capacity (8 KiB or more), is what waits for
        // the commit.
        Some(Bytes::copy_from_slice(&self.buf))
    }

    /// Writes the rest, closes (fsyncing first when `sync`; a put's commit makes it durable
    /// with its group otherwise, [`crate::layout::sync_placed`]) and returns the temp path,
    /// now owned by the caller.
    pub async fn finish(mut self, sync: bool) -> std::io::Result<PathBuf> {
        self.flush(sync).await?;
        self.file = None;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let path = std::mem::take(&mut self.path);
        let file = self.file.take();
        let remove = move || {
            drop(file);
            let _ = std::fs::remove_file(path);
        };
        // Unlinking is a blocking call: keep it off the async threads when we can.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}
