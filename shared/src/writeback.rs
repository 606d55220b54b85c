//! Getting bytes to the disk cheaply. [`WriteBehind`], for big files that end in an fsync:
//! start the disk writing each chunk as soon as it is in the page cache, instead of leaving a
//! whole blob dirty for the final fsync. [`sync_data_all`] and [`sync_dirs`], for batches of
//! small files.
//!
//! Without it a 1 GB download or upload is two phases in a row, filling the page cache at
//! memory speed and then waiting for the disk at the fsync, and the disk idles during the
//! first. With it the network, the crypto and the disk work at the same time, the final fsync
//! only waits for the last chunks, and a big transfer keeps at most a few chunks dirty (kinder
//! to the rest of the machine than a gigabyte of dirty pages). Write-behind is Linux only
//! (`sync_file_range`); elsewhere a no-op, and the final fsync does all the work as before.

use std::fs::File;
use std::io;

/// Bytes between two write-behind calls.
pub const CHUNK: u64 = 8 << 20;

/// Tracks how much of a file written front to back has been handed to the disk. Call
/// [`WriteBehind::wrote`] after each write; it is a blocking call (it may wait for the disk),
/// so async code calls it from a blocking thread.
#[derive(Debug, Default, Clone)]
pub struct WriteBehind {
    /// End of what was written to the file so far.
    end: u64,
    /// End of what was handed to the disk.
    started: u64,
    /// Drop written chunks from the page cache once they are on disk.
    uncached: bool,
}

impl WriteBehind {
    /// A file written from `offset` on (0 for a new file; a resumed one starts at its length).
    pub fn from(offset: u64) -> Self {
        Self {
            end: offset,
            started: offset,
            uncached: false,
        }
    }

    /// Also drops each chunk from the page cache once it is on disk: for a file nobody reads
    /// back soon (a download), so a big blob does not push the rest of the machine's cache
    /// out. Not for a file that is read right after (a put, which is uploaded next).
    pub fn uncached(mut self) -> Self {
        self.uncached = true;
        self
    }

    /// Notes `n` more bytes written at the end of `file`. Every [`CHUNK`] it starts writeback
    /// of the new chunk and waits for the one before it, so the writer runs at most two chunks
    /// ahead of the disk.
    pub fn wrote(&mut self, file: &File, n: usize) -> io::Result<()> {
        self.end += n as u64;
        if self.end - self.started < CHUNK {
            return Ok(());
        }
        let chunk = self.started..self.end;
        start_writeback(file, chunk.clone())?;
        if chunk.start >= CHUNK {
            // Bounds the dirty pages; by now that chunk is usually on disk already.
            wait_writeback(file, chunk.start - CHUNK..chunk.start)?;
            if self.uncached {
                drop_cached(file, chunk.start - CHUNK..chunk.start);
            }
        }
        self.started = self.end;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn sync_range(file: &File, range: std::ops::Range<u64>, flags: libc::c_uint) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let len = range.end.saturating_sub(range.start);
    // SAFETY: an fd we own and plain integers; no memory is passed.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            range.start as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    match r {
        0 => Ok(()),
        _ => {
            let e = io::Error::last_os_error();
            // A file system without it (some FUSE, NFS) just leaves the work to the fsync.
            match e.raw_os_error() {
                Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::ESPIPE) => Ok(()),
                _ => Err(e),
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, range: std::ops::Range<u64>) -> io::Result<()> {
    sync_range(file, range, libc::SYNC_FILE_RANGE_WRITE)
}

#[cfg(target_os = "linux")]
fn wait_writeback(file: &File, range: std::ops::Range<u64>) -> io::Result<()> {
    sync_range(
        file,
        range,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

/// Drops clean cached pages of the range (a hint; failure is harmless).
#[cfg(target_os = "linux")]
fn drop_cached(file: &File, range: std::ops::Range<u64>) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: an fd we own and plain integers.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            range.start as libc::off_t,
            (range.end - range.start) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_cached(_: &File, _: std::ops::Range<u64>) {}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: std::ops::Range<u64>) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn wait_writeback(_: &File, _: std::ops::Range<u64>) -> io::Result<()> {
    Ok(())
}

/// Threads that wait for a batch's files at once: enough that the journal folds their commits
/// together and the disk queue stays full, few enough to be cheap to start per batch.
pub const SYNC_THREADS: usize = 8;

/// Runs `f` on every item, on up to [`SYNC_THREADS`] scoped threads; the first error wins.
fn on_threads<T: Sync>(items: &[T], f: impl Fn(&T) -> io::Result<()> + Sync) -> io::Result<()> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&f);
    }
    let per = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|c| s.spawn(|| c.iter().try_for_each(&f)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a sync thread panicked")))
        })
    })
}

/// Makes a batch of written files durable (data, and the size and blocks needed to read it):
/// starts every file's writeback first, so the disk gets them all at once, then waits for
/// each with `fdatasync` on [`SYNC_THREADS`] threads. Unlike `syncfs(2)` it waits for these
/// files only: `syncfs` also flushes every other program's dirty pages on the file system,
/// and with a neighbour writing gigabytes (a build, a download) that made each batch of small
/// puts wait seconds (measured: BENCHMARKS.md, "A neighbour on the disk").
pub fn sync_data_all(files: &[&File]) -> io::Result<()> {
    for f in files {
        // An empty range is the whole file (sync_file_range's length 0 runs to the end).
        start_writeback(f, 0..0)?;
    }
    on_threads(files, |f| f.sync_data())
}

/// fsyncs each directory (making the names created in it durable), on [`SYNC_THREADS`]
/// threads.
pub fn sync_dirs<P: AsRef<std::path::Path> + Sync>(dirs: &[P]) -> io::Result<()> {
    on_threads(dirs, |d| File::open(d.as_ref())?.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_written_with_write_behind_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        let mut wb = WriteBehind::from(0);
        let piece = vec![7u8; 3 << 20];
        for _ in 0..7 {
            f.write_all(&piece).unwrap();
            wb.wrote(&f, piece.len()).unwrap();
        }
        // Two chunks were handed to the disk, the rest waits for the caller's fsync.
        assert_eq!(wb.started, 18 << 20);
        f.sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 21 << 20);
        assert!(back.iter().all(|&b| b == 7));
    }
}
