//! [`PlainHash`]: the SHA-256 of a download's plaintext, computed on a blocking thread for a
//! big blob while the download task goes on receiving and decrypting. SHA-256 costs more
//! than AES-GCM here (on one core a 1 GB download spent more time hashing than decrypting),
//! so hashing inline kept the other core idle (issue 20, W6 down).

use std::io;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Plaintext bytes per hand-off to the hashing thread (a batch of whole segments).
const PIPE_CHUNK: usize = 1 << 20;

/// Bytes handed off and not hashed yet, at most (one hand-off bigger than this, a single
/// segment of a blob with 16 MiB segments, goes alone): bounds the pipe's memory whatever
/// segment size the blob's header picked.
const PIPE_BYTES: usize = 4 * PIPE_CHUNK;

/// Blob size from which the hash runs on its own thread: below it a thread hop costs more
/// than it saves.
pub(super) const PIPE_MIN: u64 = 4 << 20;

/// The plaintext hash of a download in progress: inline, or fed to a blocking thread.
pub(super) enum PlainHash {
    Inline(ring::digest::Context),
    Piped(Pipe),
}

pub(super) struct Pipe {
    /// Segments taken and not handed off yet, and their bytes.
    batch: Vec<Vec<u8>>,
    batch_bytes: usize,
    tx: mpsc::UnboundedSender<(Vec<Vec<u8>>, OwnedSemaphorePermit)>,
    /// [`PIPE_BYTES`] of permits: a hand-off holds as many as it has bytes until hashed.
    room: Arc<Semaphore>,
    /// Segment buffers the hasher is done with, given back to the decoder so a big download
    /// allocates only a few.
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<ring::digest::Context>,
}

impl PlainHash {
    /// Continues `ctx` (empty, or holding a resumed partial's plaintext); on a thread of its
    /// own when the blob is at least [`PIPE_MIN`] bytes.
    pub(super) fn new(ctx: ring::digest::Context, size: u64) -> Self {
        if size < PIPE_MIN {
            return Self::Inline(ctx);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<Vec<u8>>, OwnedSemaphorePermit)>();
        let (back_tx, back) = std::sync::mpsc::channel();
        let task = tokio::task::spawn_blocking(move || {
            let mut ctx = ctx;
            while let Some((batch, permit)) = rx.blocking_recv() {
                for seg in batch {
                    ctx.update(&seg);
                    // The download may be gone (an error): then the buffer is just freed.
                    let _ = back_tx.send(seg);
                }
                drop(permit);
            }
            ctx
        });
        Self::Piped(Pipe {
            batch: Vec::new(),
            batch_bytes: 0,
            tx,
            room: Arc::new(Semaphore::new(PIPE_BYTES)),
            back,
            task,
        })
    }

    /// Takes a verified segment's plaintext: hashed at once, or its buffer taken for the
    /// hashing thread (a used one, or none, left in its place: no copy).
    pub(super) fn take(&mut self, seg: &mut Vec<u8>) {
        match self {
            Self::Inline(ctx) => ctx.update(seg),
            Self::Piped(pipe) => {
                let mut spare = pipe.back.try_recv().unwrap_or_default();
                spare.clear();
                let seg = std::mem::replace(seg, spare);
                pipe.batch_bytes += seg.len();
                pipe.batch.push(seg);
            }
        }
    }

    /// Hands what was taken to the hashing thread once it is a chunk's worth (waiting while
    /// the thread is [`PIPE_BYTES`] behind).
    pub(super) async fn pass_on(&mut self) -> io::Result<()> {
        match self {
            Self::Piped(pipe) if pipe.batch_bytes >= PIPE_CHUNK => pipe.send().await,
            _ => Ok(()),
        }
    }

    /// The SHA-256 of all the plaintext taken.
    pub(super) async fn finish(self) -> io::Result<[u8; 32]> {
        let ctx = match self {
            Self::Inline(ctx) => ctx,
            Self::Piped(mut pipe) => {
                if !pipe.batch.is_empty() {
                    pipe.send().await?;
                }
                drop(pipe.tx);
                pipe.task.await.map_err(|_| gone())?
            }
        };
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ctx.finish().as_ref());
        Ok(sha)
    }
}

impl Pipe {
    async fn send(&mut self) -> io::Result<()> {
        let n = self.batch_bytes.min(PIPE_BYTES) as u32;
        let permit = Arc::clone(&self.room)
            .acquire_many_owned(n)
            .await
            .map_err(|_| gone())?;
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.tx.send((batch, permit)).map_err(|_| gone())
    }
}

fn gone() -> io::Error {
    io::Error::other("the download's hashing thread stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn piped_and_inline_hashes_agree_with_one_pass_over_the_bytes() {
        let data: Vec<u8> = (0..PIPE_MIN as usize * 2 + 12_345)
            .map(|i| (i * 13 % 255) as u8)
            .collect();
        let want = ring::digest::digest(&ring::digest::SHA256, &data);
        // Inline, then piped with 64 KiB segments, then with segments bigger than the pipe's
        // whole byte budget (each goes alone).
        for (size, segment) in [(0, 65_536), (PIPE_MIN, 65_536), (PIPE_MIN, PIPE_BYTES + 7)] {
            // A context that already holds a resumed prefix, then segment-sized pieces.
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&data[..1000]);
            let mut h = PlainHash::new(ctx, size);
            assert_eq!(matches!(h, PlainHash::Piped(_)), size > 0);
            for piece in data[1000..].chunks(segment) {
                let mut seg = piece.to_vec();
                h.take(&mut seg);
                // Piped, the buffer was taken (no copy): an empty one is left in its place.
                assert_eq!(seg.is_empty(), size > 0);
                h.pass_on().await.unwrap();
            }
            assert_eq!(
                &h.finish().await.unwrap()[..],
                want.as_ref(),
                "size {size}, segment {segment}"
            );
        }
    }
}
