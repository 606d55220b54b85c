//! [`Spool`]: how a download or a streamed put writes its plaintext. Writes are buffered and
//! handed to the blocking pool a chunk at a time, with one chunk in flight while the next one
//! fills, so receiving, decrypting and hashing overlap the disk instead of taking turns with
//! it; each chunk also starts its own writeback ([`WriteBehind`]), so the final fsync of a big
//! blob only waits for the last few megabytes. A download appends its bytes as they arrive
//! but holds them back until verified ([`Spool::hold`], [`Spool::release`]): the buffer is
//! their only copy before the disk.

use std::fs::File;
use std::io::{self, Seek, Write};

use blobsync_shared::writeback::WriteBehind;
use tokio::task::JoinHandle;

/// Plaintext bytes buffered before a write.
const CHUNK: usize = 1 << 20;

type InFlight = JoinHandle<io::Result<(File, Vec<u8>, WriteBehind)>>;

/// A file written front to back from its current position, off the async threads.
pub struct Spool {
    /// The file and the write-behind state, when no write is in flight.
    idle: Option<(File, WriteBehind)>,
    in_flight: Option<InFlight>,
    buf: Vec<u8>,
    /// Bytes at the end of `buf` held back from the file until released.
    held: usize,
    /// A spare buffer, handed back by the last write.
    spare: Vec<u8>,
    /// The write-behind state starts at the file's position, read on the first write.
    positioned: bool,
    /// Drop written chunks from the page cache (see [`WriteBehind::uncached`]).
    uncached: bool,
}

impl Spool {
    /// Writes go to `file` from its current position; for a download, whose chunks leave the
    /// page cache once on disk.
    pub fn new(file: File) -> Self {
        Self {
            idle: Some((file, WriteBehind::default())),
            in_flight: None,
            buf: Vec::new(),
            held: 0,
            spare: Vec::new(),
            positioned: false,
            uncached: true,
        }
    }

    /// As [`Spool::new`], for a put: its pages stay cached for the upload that reads them next.
    pub fn cached(file: File) -> Self {
        Self {
            uncached: false,
            ..Self::new(file)
        }
    }

    /// Appends bytes; a full buffer goes to the disk while the next one fills.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        assert_eq!(self.held, 0, "write_all behind bytes held back");
        while !data.is_empty() {
            let n = CHUNK.saturating_sub(self.buf.len()).clamp(1, data.len());
            self.hold(&data[..n]);
            self.release(n).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Appends bytes that must not reach the file yet: they wait in the buffer until
    /// [`Spool::release`] lets them go, or [`Spool::discard_held`] drops them.
    pub fn hold(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = std::mem::take(&mut self.spare);
        }
        self.buf
            .reserve(CHUNK.max(self.buf.len() + data.len()) - self.buf.len());
        self.buf.extend_from_slice(data);
        self.held += data.len();
    }

    /// Lets the first `n` held bytes go to the file; a chunk's worth of them goes to the disk
    /// while the next one fills.
    pub async fn release(&mut self, n: usize) -> io::Result<()> {
        assert!(n <= self.held, "released {n} bytes of {} held", self.held);
        self.held -= n;
        if self.buf.len() - self.held >= CHUNK {
            self.send(true).await?;
        }
        Ok(())
    }

    /// Drops the bytes still held back.
    pub fn discard_held(&mut self) {
        self.buf.truncate(self.buf.len() - self.held);
        self.held = 0;
    }

    /// Waits for the write in flight and starts writing the released bytes (`whole`: only
    /// whole chunks of them); the rest move to the next buffer.
    async fn send(&mut self, whole: bool) -> io::Result<()> {
        self.settle().await?;
        let (mut file, mut behind) = self.idle.take().ok_or_else(closed)?;
        let mut next = std::mem::take(&mut self.spare);
        let released = self.buf.len() - self.held;
        // Writes stay whole chunks (at chunk-aligned offsets, in a file written from its
        // start): a download's writes cut at segment ends instead, a few bytes past each MiB,
        // made the kernel's copies into the page cache three times as costly and W6's download
        // a quarter slower.
        let cut = if whole {
            released - released % CHUNK
        } else {
            released
        };
        if cut < self.buf.len() {
            next.reserve(CHUNK.max(self.buf.len() - cut));
            next.extend_from_slice(&self.buf[cut..]);
            self.buf.truncate(cut);
        }
        let buf = std::mem::replace(&mut self.buf, next);
        let position = !std::mem::replace(&mut self.positioned, true);
        let uncached = self.uncached;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            if position {
                behind = WriteBehind::from(file.stream_position()?);
                if uncached {
                    behind = behind.uncached();
                }
            }
            file.write_all(&buf)?;
            behind.wrote(&file, buf.len())?;
            Ok((file, buf, behind))
        }));
        Ok(())
    }

    /// Waits for the write in flight, if any.
    async fn settle(&mut self) -> io::Result<()> {
        if let Some(w) = self.in_flight.take() {
            let (file, mut buf, behind) = w.await.map_err(io::Error::other)??;
            buf.clear();
            self.spare = buf;
            self.idle = Some((file, behind));
        }
        Ok(())
    }

    /// Writes everything released (not durable yet); held bytes stay held.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.buf.len() > self.held {
            self.send(false).await?;
        }
        self.settle().await
    }

    /// Writes everything released and closes the file, dropping what is still held (not
    /// durable: the caller fsyncs or syncs it with others).
    pub async fn close(mut self) -> io::Result<()> {
        self.flush().await
    }

    /// Writes everything released, fsyncs and closes the file, dropping what is still held.
    pub async fn sync_and_close(mut self) -> io::Result<()> {
        self.flush().await?;
        let (file, _) = self.idle.take().ok_or_else(closed)?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(io::Error::other)?
    }
}

fn closed() -> io::Error {
    io::Error::other("a previous write to this file failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_arrive_in_order_from_the_files_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"head:").unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(io::SeekFrom::End(0)).unwrap();
        let mut s = Spool::new(f);
        let mut expect = b"head:".to_vec();
        for i in 0..3000u32 {
            let piece = vec![(i % 251) as u8; 1000 + (i as usize % 7)];
            s.write_all(&piece).await.unwrap();
            expect.extend_from_slice(&piece);
        }
        s.sync_and_close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }

    #[tokio::test]
    async fn held_bytes_reach_the_file_only_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut s = Spool::new(std::fs::File::create(&path).unwrap());
        let mut expect = Vec::new();
        // Pieces straddle the chunk size, and some are always held when a chunk goes out.
        for i in 0..400u32 {
            let piece = vec![(i % 251) as u8; 10_007];
            s.hold(&piece);
            if i % 3 == 2 {
                s.release(3 * piece.len()).await.unwrap();
                expect.extend(std::iter::repeat_n(((i - 2) % 251) as u8, piece.len()));
                expect.extend(std::iter::repeat_n(((i - 1) % 251) as u8, piece.len()));
                expect.extend_from_slice(&piece);
            }
        }
        // One piece is held (i = 399): a flush leaves it out, a discard drops it.
        s.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        s.discard_held();
        s.hold(b"tail");
        s.release(4).await.unwrap();
        expect.extend_from_slice(b"tail");
        s.hold(b"never released");
        s.sync_and_close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }
}
