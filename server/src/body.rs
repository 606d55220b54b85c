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
/// on the blocking pool while the next chunk arrives (one write in flight: a big upload
/// receives and writes at once, on two cores); the file is created lazily, so a small blob
/// costs one blocking hop (create, write, fsync) at [`TempBlob::finish`]. Dropped unfinished,
/// it removes its file.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    /// `None` before the first write, and while a write is in flight (it holds the file).
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    /// The chunk being written; it hands back the file, its buffer and the write-behind.
    pending: Option<tokio::task::JoinHandle<std::io::Result<Written>>>,
    /// Starts the disk on each chunk as it is written, so the final fsync is short. Written
    /// chunks stay cached: the user's other devices usually fetch a new blob soon after (see
    /// BENCHMARKS.md, issue 20's W6, for what dropping them did).
    behind: WriteBehind,
    len: u64,
    done: bool,
    inline_max: usize,
}

/// What a chunk's write hands back: the file, its emptied buffer, the write-behind state.
type Written = (std::fs::File, Vec<u8>, WriteBehind);

impl TempBlob {
    /// A writer for `path` (not created yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            buf: Vec::new(),
            pending: None,
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

    /// Appends bytes, handing a chunk to the disk when the buffer is full. A failed write
    /// is reported here or by [`TempBlob::finish`], always before anything is committed.
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

    /// Waits for the write in flight, if any, taking back the file and a buffer.
    async fn settle(&mut self) -> std::io::Result<Vec<u8>> {
        let Some(h) = self.pending.take() else {
            return Ok(Vec::new());
        };
        let (file, mut buf, behind) = h.await.map_err(std::io::Error::other)??;
        buf.clear();
        self.file = Some(file);
        self.behind = behind;
        Ok(buf)
    }

    /// Hands the buffer to the blocking pool; with `sync`, waits for it and the fsync.
    async fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        let spare = self.settle().await?;
        let path = self.path.clone();
        let file = self.file.take();
        let buf = std::mem::replace(&mut self.buf, spare);
        let mut behind = std::mem::take(&mut self.behind);
        self.pending = Some(tokio::task::spawn_blocking(
            move || -> std::io::Result<_> {
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
            },
        ));
        if sync {
            self.settle().await?;
        }
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
        if self.file.is_some()
            || self.pending.is_some()
            || self.buf.len() > self.inline_max
            || self.inline_max == 0
        {
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
        self.settle().await?;
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
        let pending = self.pending.take();
        let remove = move || {
            drop(file);
            let _ = std::fs::remove_file(path);
        };
        // Unlinking is a blocking call: keep it off the async threads when we can. A write
        // in flight may still create the file: remove it once that write is over.
        match (tokio::runtime::Handle::try_current(), pending) {
            (Ok(h), Some(write)) => {
                h.spawn(async move {
                    let _ = write.await;
                    let _ = tokio::task::spawn_blocking(remove).await;
                });
            }
            (Ok(h), None) => {
                h.spawn_blocking(remove);
            }
            (Err(_), _) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_temp_blob_writes_every_chunk_in_order_and_a_dropped_one_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..CHUNK * 3 + CHUNK / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let path = dir.path().join("sub").join("t1");
        let mut w = TempBlob::new(path.clone());
        // Pieces that straddle chunk boundaries, as network frames do.
        for piece in data.chunks(100_003) {
            w.write(piece).await.unwrap();
        }
        assert_eq!(w.len(), data.len() as u64);
        assert_eq!(w.finish(true).await.unwrap(), path);
        assert!(std::fs::read(&path).unwrap() == data);

        // Dropped with a chunk still being written: the file it creates is removed after.
        let path = dir.path().join("t2");
        let mut w = TempBlob::new(path.clone());
        w.write(&data[..CHUNK + 1]).await.unwrap();
        assert!(w.pending.is_some(), "the first chunk is in flight");
        drop(w);
        // Give the write time to create the file first: a removal that ran before it would
        // leave the file for good, which the loop below then reports.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for _ in 0..500 {
            if !path.exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{} is left behind", path.display());
    }
}
