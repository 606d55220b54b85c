//! Getting bytes to the disk cheaply. [`WriteBehind`], for big files that end in an fsync:
//! start the disk writing each chunk as soon as it is in the page cache, instead of leaving a
//! whole blob dirty for the final fsync. [`GroupSync`], for batches of small files.
//!
//! Without it a 1 GB download or upload is two phases in a row, filling the page cache at
//! memory speed and then waiting for the disk at the fsync, and the disk idles during the
//! first. With it the network, the crypto and the disk work at the same time, the final fsync
//! only waits for the last chunks, and a big transfer keeps at most a few chunks dirty (kinder
//! to the rest of the machine than a gigabyte of dirty pages). Write-behind is Linux only
//! (`sync_file_range`); elsewhere a no-op, and the final fsync does all the work as before.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

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
/// together and the disk queue stays full.
pub const SYNC_THREADS: usize = 8;

/// A job for the sync threads, and the call it belongs to.
type Job = (Box<dyn FnOnce() -> io::Result<()> + Send>, Arc<Countdown>);

/// The threads of [`on_threads`] and their queue, started on first use and kept: starting
/// eight threads per batch (clone, stack mappings, exit) cost the daemon about as much CPU as
/// the syncs they waited for (W5 of issue 20: 8 % of the uploading daemon's samples). An idle
/// thread sleeps on the queue; a work-stealing pool (rayon, before) spun through
/// `sched_yield` between batches, two thirds of these threads' CPU in W5's put phase.
struct SyncPool {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

/// One [`on_threads`] call: jobs not done yet, and the first error.
struct Countdown {
    state: Mutex<(usize, Option<io::Error>)>,
    done: Condvar,
}

impl Countdown {
    fn finish(&self, r: io::Result<()>) {
        let mut st = lock(&self.state);
        st.0 -= 1;
        if let Err(e) = r {
            st.1.get_or_insert(e);
        }
        if st.0 == 0 {
            self.done.notify_all();
        }
    }

    fn wait(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        while st.0 > 0 {
            st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.1.take().map_or(Ok(()), Err)
    }
}

/// The queue's locks are never held while a job runs, so a poisoned one holds no broken state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `None` if no thread can be started; each batch then starts its own.
fn sync_pool() -> Option<&'static SyncPool> {
    static POOL: OnceLock<Option<&'static SyncPool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let pool: &'static SyncPool = Box::leak(Box::new(SyncPool {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }));
        let started = (0..SYNC_THREADS)
            .filter(|i| {
                std::thread::Builder::new()
                    .name(format!("blobsync-fsync-{i}"))
                    .spawn(move || pool.work())
                    .is_ok()
            })
            .count();
        (started > 0).then_some(pool)
    })
}

impl SyncPool {
    fn work(&self) {
        loop {
            let (job, call) = {
                let mut q = lock(&self.jobs);
                loop {
                    match q.pop_front() {
                        Some(j) => break j,
                        None => q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner),
                    }
                }
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(io::Error::other("a sync thread panicked")));
            call.finish(r);
        }
    }
}

/// Runs `f` on every item, up to [`SYNC_THREADS`] at once (shared by every caller of the
/// process), one item per job: the work is waiting for the disk, not computing, so every item
/// should be in flight at once. Every item runs; the first error wins, and a panic in `f`
/// comes back as an error. Blocking: waits until every item is done, always (the per-file
/// barrier's jobs borrow descriptors on that promise). `f` must not call
/// `on_threads` itself: a job waiting for jobs queued behind it could wait forever.
pub fn on_threads<T, F>(items: Vec<T>, f: F) -> io::Result<()>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> io::Result<()> + Send + Sync + 'static,
{
    if items.len() <= 1 {
        return items.iter().try_for_each(&f);
    }
    let Some(pool) = sync_pool() else {
        return on_scoped_threads(&items, f);
    };
    let call = Arc::new(Countdown {
        state: Mutex::new((items.len(), None)),
        done: Condvar::new(),
    });
    let (f, n) = (Arc::new(f), items.len());
    {
        let mut q = lock(&pool.jobs);
        for item in items {
            let f = Arc::clone(&f);
            q.push_back((Box::new(move || f(&item)), Arc::clone(&call)));
        }
    }
    // Wake as many threads as there are jobs, no more: the others would find nothing.
    for _ in 0..n.min(SYNC_THREADS) {
        pool.ready.notify_one();
    }
    call.wait()
}

/// [`on_threads`] on threads started for this call.
fn on_scoped_threads<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> io::Result<()> + Sync,
) -> io::Result<()> {
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

/// How a batch of small files is made durable; chosen per batch by [`GroupSync::choose`].
///
/// Measured on the build box (BENCHMARKS.md, "A neighbour on the disk"): on a quiet disk one
/// `syncfs` makes a batch of 32 files durable about 3x faster than per-file `fdatasync`, even
/// on 8 threads; but `syncfs` also waits for every other program's dirty pages on the file
/// system, and with a neighbour writing gigabytes its batches took up to 0.7 s where per-file
/// syncs stayed under 40 ms. So: `syncfs` while the machine has little dirty data, per-file
/// syncs otherwise. Both are equally durable; only the cost differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSync {
    /// One `syncfs` of the file system (files already named: data and names at once).
    Syncfs,
    /// Every file's writeback started, then `fdatasync` of each file and `fsync` of each
    /// directory, all on [`SYNC_THREADS`] threads.
    PerFile,
}

/// One sync of the per-file barrier.
enum SyncJob {
    /// Start the writeback of these files (queued before every `fdatasync`, so the disk
    /// gets every file's data at once, not as each thread comes to it).
    Start(Vec<RawFd>),
    /// A file the caller holds open until the barrier returns (see [`sync_per_file`]).
    Data(RawFd),
    Dir(std::path::PathBuf),
}

/// The per-file barrier: every file's `fdatasync` and every directory's `fsync` queued for
/// the sync threads at once. The jobs borrow the callers' descriptors rather than owning a
/// `dup` each: a `dup` per file was a syscall on the one thread that feeds the pool, and
/// owning hundreds of them at once could meet the process's descriptor limit.
fn sync_per_file<P: AsRef<std::path::Path>>(files: &[&File], dirs: &[P]) -> io::Result<()> {
    let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
    // Every file's writeback is started first, split over the threads (a syscall per file
    // was the feeding thread's largest cost in W5); a lone file's fdatasync starts its own.
    let starts = match fds.len() {
        0 | 1 => Vec::new(),
        n => fds
            .chunks(n.div_ceil(SYNC_THREADS))
            .map(|c| SyncJob::Start(c.to_vec()))
            .collect(),
    };
    let jobs = starts
        .into_iter()
        .chain(fds.iter().map(|&fd| SyncJob::Data(fd)))
        .chain(dirs.iter().map(|d| SyncJob::Dir(d.as_ref().to_path_buf())))
        .collect();
    // SAFETY (both uses): `fd` is open for as long as its job runs: it comes from a `&File`
    // of this call's caller, and `on_threads` returns only once every job has run (a
    // panicking job included). `ManuallyDrop` leaves closing it to its owner.
    let borrow = |fd: RawFd| std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    on_threads(jobs, move |j: &SyncJob| match j {
        SyncJob::Start(fds) => fds.iter().try_for_each(|&fd| {
            // An empty range is the whole file (sync_file_range's length 0 runs to the end).
            start_writeback(&borrow(fd), 0..0)
        }),
        SyncJob::Data(fd) => borrow(*fd).sync_data(),
        SyncJob::Dir(d) => File::open(d)?.sync_all(),
    })
}

/// Dirty data on the machine below which [`GroupSync::Syncfs`] is chosen: a `syncfs` then
/// waits for at most this much besides the batch (tens of milliseconds on a slow SSD).
pub const SYNCFS_DIRTY_MAX: u64 = 16 << 20;

impl GroupSync {
    /// The cheaper way for a batch of `files` files, given the machine's dirty data now.
    pub fn choose(files: usize) -> GroupSync {
        Self::choose_with(files, dirty_bytes())
    }

    /// [`GroupSync::choose`] for a known amount of dirty data (`None`: unknown).
    pub fn choose_with(files: usize, dirty: Option<u64>) -> GroupSync {
        let syncfs_available = cfg!(target_os = "linux");
        match dirty {
            Some(d) if syncfs_available && files > 1 && d < SYNCFS_DIRTY_MAX => GroupSync::Syncfs,
            _ => GroupSync::PerFile,
        }
    }

    /// Makes written `files` durable (data, and the size and blocks needed to read them).
    /// `root` is an open directory on their file system.
    pub fn sync_data(self, root: &File, files: &[&File]) -> io::Result<()> {
        match self {
            GroupSync::Syncfs => syncfs(root),
            GroupSync::PerFile => sync_per_file::<&std::path::Path>(files, &[]),
        }
    }

    /// Makes renamed `files` durable together with their names in `dirs`, as
    /// [`GroupSync::sync_linked`] does for open files.
    pub fn sync_placed<P: AsRef<std::path::Path> + Sync>(
        self,
        root: &File,
        files: &[P],
        dirs: &[P],
    ) -> io::Result<()> {
        match self {
            GroupSync::Syncfs => syncfs(root),
            GroupSync::PerFile => {
                let open = files
                    .iter()
                    .map(|p| File::open(p.as_ref()))
                    .collect::<io::Result<Vec<_>>>()?;
                self.sync_linked(root, &open.iter().collect::<Vec<_>>(), dirs)
            }
        }
    }

    /// Makes written `files` that already have their names in `dirs` durable, data and names
    /// in one barrier: one `syncfs`, or every file's `fdatasync` and every directory's
    /// `fsync` in flight at once. Nothing is durable in any particular order before it
    /// returns, so the caller's commit (the row that makes the files count) comes after.
    pub fn sync_linked<P: AsRef<std::path::Path> + Sync>(
        self,
        root: &File,
        files: &[&File],
        dirs: &[P],
    ) -> io::Result<()> {
        match self {
            GroupSync::Syncfs if files.is_empty() && dirs.is_empty() => Ok(()),
            GroupSync::Syncfs => syncfs(root),
            GroupSync::PerFile => sync_per_file(files, dirs),
        }
    }

    /// Makes the names created in `dirs` durable. `root` as for [`GroupSync::sync_data`].
    pub fn sync_dirs<P: AsRef<std::path::Path> + Sync>(
        self,
        root: &File,
        dirs: &[P],
    ) -> io::Result<()> {
        match self {
            GroupSync::Syncfs if !dirs.is_empty() => syncfs(root),
            _ => on_threads(
                dirs.iter().map(|d| d.as_ref().to_path_buf()).collect(),
                |d| File::open(d)?.sync_all(),
            ),
        }
    }
}

/// `Dirty` + `Writeback` of `/proc/meminfo`, bytes; `None` where unreadable.
pub fn dirty_bytes() -> Option<u64> {
    parse_dirty(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_dirty(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

/// Flushes every dirty page and inode of the file system holding `dir` (an open directory),
/// and the device's write cache.
#[cfg(target_os = "linux")]
pub fn syncfs(dir: &File) -> io::Result<()> {
    // SAFETY: syncfs on an fd we own; no memory is passed.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Never chosen off Linux ([`GroupSync::choose_with`]); `sync` then the directory if asked.
#[cfg(not(target_os = "linux"))]
pub fn syncfs(dir: &File) -> io::Result<()> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    dir.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    const MEMINFO: &str = "MemTotal:       24000000 kB\nDirty:              2048 kB\nWriteback:           0 kB\nWritebackTmp:        0 kB\n";

    #[test]
    fn dirty_data_is_dirty_plus_writeback_and_decides_the_group_sync() {
        assert_eq!(parse_dirty(MEMINFO), Some(2048 * 1024));
        let busy = MEMINFO.replace("Writeback:           0", "Writeback:      900000");
        assert_eq!(parse_dirty(&busy), Some((2048 + 900_000) * 1024));
        assert_eq!(parse_dirty("MemTotal: 1 kB\n"), None);
        let linux = cfg!(target_os = "linux");
        let quiet = GroupSync::choose_with(32, parse_dirty(MEMINFO));
        assert_eq!(quiet == GroupSync::Syncfs, linux);
        assert_eq!(
            GroupSync::choose_with(32, parse_dirty(&busy)),
            GroupSync::PerFile
        );
        // One file, or nothing known about the machine: per file.
        assert_eq!(GroupSync::choose_with(1, Some(0)), GroupSync::PerFile);
        assert_eq!(GroupSync::choose_with(32, None), GroupSync::PerFile);
    }

    #[test]
    fn both_group_syncs_leave_files_and_names_readable() {
        for how in [GroupSync::Syncfs, GroupSync::PerFile] {
            let dir = tempfile::tempdir().unwrap();
            let root = File::open(dir.path()).unwrap();
            let mut files = Vec::new();
            for i in 0..5u8 {
                let mut f = File::create(dir.path().join(format!("t{i}"))).unwrap();
                f.write_all(&[i; 100]).unwrap();
                files.push(f);
            }
            how.sync_data(&root, &files.iter().collect::<Vec<_>>())
                .unwrap();
            std::fs::create_dir(dir.path().join("d")).unwrap();
            for i in 0..5u8 {
                std::fs::rename(
                    dir.path().join(format!("t{i}")),
                    dir.path().join(format!("d/{i}")),
                )
                .unwrap();
            }
            how.sync_dirs(&root, &[dir.path().join("d")]).unwrap();
            for i in 0..5u8 {
                assert_eq!(
                    std::fs::read(dir.path().join(format!("d/{i}"))).unwrap(),
                    [i; 100]
                );
            }
        }
    }

    #[test]
    fn one_barrier_leaves_named_files_readable_and_reports_a_directory_it_could_not_sync() {
        for how in [GroupSync::Syncfs, GroupSync::PerFile] {
            let dir = tempfile::tempdir().unwrap();
            let root = File::open(dir.path()).unwrap();
            let d = dir.path().join("d");
            std::fs::create_dir(&d).unwrap();
            // More files than there are sync threads.
            let n = (8 * SYNC_THREADS + 3) as u8;
            let mut files = Vec::new();
            for i in 0..n {
                // Named before the barrier, as the daemon's sync group does.
                let mut f = File::create(d.join(i.to_string())).unwrap();
                f.write_all(&[i; 100]).unwrap();
                files.push(f);
            }
            let files: Vec<&File> = files.iter().collect();
            how.sync_linked(&root, &files, std::slice::from_ref(&d))
                .unwrap();
            for i in 0..n {
                assert_eq!(std::fs::read(d.join(i.to_string())).unwrap(), [i; 100]);
            }
            // The barrier borrowed the callers' descriptors: each is still open and theirs.
            for f in &files {
                f.sync_data().unwrap();
            }
            how.sync_linked::<PathBuf>(&root, &[], &[]).unwrap();
            if how == GroupSync::PerFile {
                // Each directory is synced on its own: one that vanished is an error, not
                // a silent success.
                let gone = dir.path().join("gone");
                let err = how
                    .sync_linked(&root, &files, &[d, gone.clone()])
                    .unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::NotFound);
                // Also with no file at all to sync.
                let err = how.sync_linked(&root, &[], &[gone]).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::NotFound);
            }
        }
    }

    #[test]
    fn on_threads_runs_every_item_at_once_and_reports_a_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        type Check = Arc<dyn Fn(&usize) -> io::Result<()> + Send + Sync>;
        type Runner = fn(Vec<usize>, Check) -> io::Result<()>;
        let runners: [(&str, Runner); 2] = [
            ("pool", |items, f| on_threads(items, move |i| f(i))),
            ("scoped", |items, f| on_scoped_threads(&items, |i| f(i))),
        ];
        for (name, run) in runners {
            let items: Vec<usize> = (0..2 * SYNC_THREADS).collect();
            let done: Arc<Vec<AtomicUsize>> =
                Arc::new(items.iter().map(|_| AtomicUsize::new(0)).collect());
            let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (d, n, m) = (done.clone(), now.clone(), most.clone());
            run(
                items.clone(),
                Arc::new(move |&i| {
                    let k = n.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(k, Ordering::SeqCst);
                    // Long enough that items overlap when they can; a disk wait stands in.
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    n.fetch_sub(1, Ordering::SeqCst);
                    d[i].fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .unwrap();
            assert!(done.iter().all(|d| d.load(Ordering::SeqCst) == 1), "{name}");
            let most = most.load(Ordering::SeqCst);
            assert!((2..=SYNC_THREADS).contains(&most), "{name}: {most} at once");
            let err = run(
                items.clone(),
                Arc::new(|&i| match i {
                    5 => Err(io::Error::other("disk on fire")),
                    _ => Ok(()),
                }),
            )
            .unwrap_err();
            assert_eq!(err.to_string(), "disk on fire", "{name}");
            let err = run(
                items.clone(),
                Arc::new(|&i| match i {
                    3 => panic!("a bug in a sync"),
                    _ => Ok(()),
                }),
            )
            .unwrap_err();
            assert_eq!(err.to_string(), "a sync thread panicked", "{name}");
        }
        // The pool's threads outlived the panic: a batch after it still runs on all of them.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        on_threads((0..SYNC_THREADS).collect(), move |_: &usize| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), SYNC_THREADS);
    }

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
