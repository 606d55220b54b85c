//! [`Spool`]: how a download or a streamed put writes its plaintext. Writes are buffered and
//! handed to the blocking pool a chunk at a time, with one chunk in flight while the next one
//! fills, so receiving, decrypting and hashing overlap the disk instead of taking turns with
//! it; each chunk also starts its own writeback ([`WriteBehind`]), so the final fsync of a big
//! blob only waits for the last few megabytes.

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
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = std::mem::take(&mut self.spare);
                self.buf.reserve(CHUNK);
            }
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= CHUNK {
                self.send().await?;
            }
        }
        Ok(())
    }

    /// Waits for the write in flight and starts writing the buffer.
    async fn send(&mut self) -> io::Result<()> {
        self.settle().await?;
        let (mut file, mut behind) = self.idle.take().ok_or_else(closed)?;
        let buf = std::mem::take(&mut self.buf);
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

    /// Writes everything buffered (not durable yet).
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send().await?;
        }
        self.settle().await
    }

    /// Writes everything and closes the file (not durable: the caller fsyncs or syncs it with
    /// others).
    pub async fn close(mut self) -> io::Result<()> {
        self.flush().await
    }

    /// Writes everything, fsyncs and closes the file.
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
}
