//! [`ChunkPool`]: recycled read buffers for a file streamed out in chunks (the server's
//! downloads, the daemon's uploads).

use bytes::Bytes;

/// Read buffers for a file streamed out in chunks, each handed back when its `Bytes` is dropped
/// (once sent): a big transfer reuses a few buffers instead of allocating one per chunk (an
/// allocator may map and unmap every chunk-sized buffer, and on a VM each freshly mapped page
/// is a fault) and zeroing it. Buffers exist only while in flight or waiting here.
#[derive(Debug)]
pub struct ChunkPool {
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    tx: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Default for ChunkPool {
    fn default() -> Self {
        let (tx, back) = std::sync::mpsc::channel();
        Self { back, tx }
    }
}

impl ChunkPool {
    /// A buffer of `n` bytes to read into: one handed back (holding its old bytes: not zeroed
    /// again when its length fits, a memset per chunk for nothing), or a new one of zeroes.
    pub fn take(&self, n: usize) -> Vec<u8> {
        let mut v = self.back.try_recv().unwrap_or_default();
        if v.len() != n {
            v.clear();
            v.resize(n, 0);
        }
        v
    }

    /// `buf` as `Bytes` that return it to this pool when dropped (or free it, once the pool
    /// is gone).
    pub fn bytes(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled {
            buf,
            back: self.tx.clone(),
        })
    }
}

struct Recycled {
    buf: Vec<u8>,
    back: std::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let _ = self.back.send(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 256 * 1024;

    #[test]
    fn a_chunk_pool_reuses_a_buffer_once_its_bytes_are_dropped() {
        let pool = ChunkPool::default();
        let mut v = pool.take(CHUNK);
        v[0] = 7;
        let first = v.as_ptr();
        let b = pool.bytes(v);
        assert_eq!((b.len(), b[0]), (CHUNK, 7));
        // Still in flight: the next chunk gets a buffer of its own.
        let other = pool.take(100);
        assert_ne!(other.as_ptr(), first);
        drop(b);
        let again = pool.take(CHUNK / 2);
        assert_eq!(
            again.as_ptr(),
            first,
            "the dropped chunk's buffer came back"
        );
        assert!(again.iter().all(|&x| x == 0) && again.len() == CHUNK / 2);
        // One of the same length comes back as it was: the reader overwrites it all anyway.
        let mut same = pool.take(100);
        same[99] = 9;
        drop(pool.bytes(same));
        assert_eq!(pool.take(100)[99], 9);
        // Bytes that outlive their pool just free their buffer.
        let late = pool.bytes(again);
        drop(pool);
        assert_eq!(late.len(), CHUNK / 2);
    }
}
