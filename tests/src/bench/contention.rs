//! A neighbour on the disk (issue 20): a steady background writer on the same file system, as
//! a user's laptop always has one, and the `SYNC` row that compares ways of making a batch of
//! small files durable, quiet and with that neighbour writing.
//!
//! - [`Neighbour`]: one thread writes 1 MiB chunks to a file under `TMPDIR` without fsync,
//!   as `dd` would, up to a cap (then over again from the start), so the page cache always
//!   holds its dirty pages and the disk is always busy with them. `--neighbour` runs it
//!   during every workload row.
//! - `SYNC`: batches of 32 files of 10 KiB (W1's shape: 32 puts in flight), each written to a
//!   temp name, made durable, renamed into one of 16 directories and the renames made
//!   durable, as the daemon's and the server's group commits do, with each strategy:
//!   `syncfs`, `fdatasync` one file after another, `fdatasync` on 8 threads,
//!   `sync_file_range` to start every file's writeback first and then `fdatasync` on 8
//!   threads (`GroupSync::PerFile`), and what `GroupSync::choose` picks per batch (the
//!   product's way: `syncfs` while the machine has little dirty data, else per file).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use blobsync_shared::writeback::{GroupSync, on_threads};

use super::*;

/// A background writer; stops (and removes its file) when dropped.
pub struct Neighbour {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Neighbour {
    /// Starts writing to `dir/neighbour.dat`, at most `cap` bytes of disk.
    pub fn start(dir: &Path, cap: u64) -> Result<Self, BenchError> {
        let path = dir.join("neighbour.dat");
        let mut f = File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), written.clone());
        let thread = std::thread::Builder::new()
            .name("neighbour".into())
            .spawn(move || {
                let mut chunk = vec![0u8; MIB as usize];
                let mut rng = rand::rngs::StdRng::seed_from_u64(20);
                rng.fill_bytes(&mut chunk);
                let mut at = 0u64;
                while !s.load(Ordering::Relaxed) {
                    if at >= cap {
                        at = 0;
                        if f.seek(SeekFrom::Start(0)).is_err() {
                            return;
                        }
                    }
                    // A different first byte each time: every rewrite dirties the page again.
                    chunk[0] = chunk[0].wrapping_add(1);
                    if f.write_all(&chunk).is_err() {
                        return;
                    }
                    at += MIB;
                    w.fetch_add(MIB, Ordering::Relaxed);
                }
            })
            .map_err(io_err("start the neighbour thread"))?;
        Ok(Self {
            stop,
            written,
            thread: Some(thread),
            path,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts the `--neighbour` writer for a row when asked to, after letting it fill the page
/// cache with dirty pages for a few seconds (the state a busy laptop is in).
pub(super) fn neighbour_for_row(opts: &BenchOpts) -> Result<Option<Neighbour>, BenchError> {
    if opts.neighbour_bytes == 0 {
        return Ok(None);
    }
    let dir = std::env::temp_dir();
    let n = Neighbour::start(&dir, opts.neighbour_bytes)?;
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "[neighbour] writing under {} ({} MiB so far, cap {} MiB)",
        dir.display(),
        n.written() >> 20,
        opts.neighbour_bytes >> 20
    );
    Ok(Some(n))
}

/// One way of making a batch durable.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Strategy {
    /// `syncfs` after the writes and after the renames.
    Syncfs,
    /// `fdatasync` each file, one after another; `fsync` each directory.
    FdatasyncSerial,
    /// `fdatasync` each file on 8 threads; `fsync` each directory on 8 threads.
    FdatasyncParallel,
    /// `sync_file_range(WRITE)` every file, then as `FdatasyncParallel` (`GroupSync::PerFile`).
    StartThenFdatasync,
    /// `GroupSync::choose`, per batch (what the daemon and the server do).
    Chosen,
}

const STRATEGIES: [Strategy; 5] = [
    Strategy::Syncfs,
    Strategy::FdatasyncSerial,
    Strategy::FdatasyncParallel,
    Strategy::StartThenFdatasync,
    Strategy::Chosen,
];
const BATCH: usize = 32;
const FILE_SIZE: usize = 10 * KIB as usize;
const DIRS: usize = 16;

/// Figures of one strategy under one condition.
#[derive(Clone, Debug, Serialize)]
pub struct SyncResult {
    /// The strategy.
    pub strategy: Strategy,
    /// Whether the neighbour was writing.
    pub neighbour: bool,
    /// Files made durable.
    pub files: usize,
    /// Files per second of batch time (the pauses between batches not counted).
    pub files_s: f64,
    /// Median batch, ms.
    pub p50_ms: f64,
    /// 99th percentile batch, ms.
    pub p99_ms: f64,
}

/// Writes, makes durable and renames `batches` batches with `s`; batch latencies in ms.
fn run_strategy(
    root: &Path,
    s: Strategy,
    batches: usize,
    gap: Duration,
) -> std::io::Result<Vec<f64>> {
    let dirs: Vec<PathBuf> = (0..DIRS).map(|d| root.join(format!("d{d:02}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
    }
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let root_f = File::open(root)?;
    let mut data = vec![0u8; FILE_SIZE];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
    let mut lat = Vec::with_capacity(batches);
    for b in 0..batches {
        // A pause before each batch, as puts come in a real daemon: what a neighbour dirties
        // meanwhile is what a `syncfs` has to wait for.
        std::thread::sleep(gap);
        let t = Instant::now();
        let mut files = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let p = tmp.join(format!("{b}-{i}"));
            let mut f = OpenOptions::new().write(true).create_new(true).open(&p)?;
            data[0] = i as u8;
            f.write_all(&data)?;
            files.push((p, f));
        }
        let group = match s {
            Strategy::Syncfs => Some(GroupSync::Syncfs),
            Strategy::StartThenFdatasync => Some(GroupSync::PerFile),
            Strategy::Chosen => Some(GroupSync::choose(files.len())),
            Strategy::FdatasyncSerial | Strategy::FdatasyncParallel => None,
        };
        let handles: Vec<&File> = files.iter().map(|(_, f)| f).collect();
        match (s, group) {
            (_, Some(g)) => g.sync_data(&root_f, &handles)?,
            (Strategy::FdatasyncSerial, _) => handles.iter().try_for_each(|f| f.sync_data())?,
            _ => on_threads(
                handles
                    .iter()
                    .map(|f| f.try_clone())
                    .collect::<std::io::Result<_>>()?,
                |f| f.sync_data(),
            )?,
        }
        let mut touched = Vec::new();
        for (i, (p, _)) in files.iter().enumerate() {
            let d = (b * BATCH + i) % DIRS;
            std::fs::rename(p, dirs[d].join(format!("{b}-{i}")))?;
            if !touched.contains(&d) {
                touched.push(d);
            }
        }
        let touched: Vec<&PathBuf> = touched.iter().map(|d| &dirs[*d]).collect();
        match (s, group) {
            (Strategy::Chosen, _) => {
                GroupSync::choose(touched.len()).sync_dirs(&root_f, &touched)?
            }
            (_, Some(g)) => g.sync_dirs(&root_f, &touched)?,
            (Strategy::FdatasyncSerial, _) => {
                touched.iter().try_for_each(|d| File::open(d)?.sync_all())?
            }
            _ => on_threads(touched.iter().map(|d| d.to_path_buf()).collect(), |d| {
                File::open(d)?.sync_all()
            })?,
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(lat)
}

/// The `SYNC` row: every strategy quiet, then with the neighbour writing.
pub fn run_sync(opts: &BenchOpts) -> Result<Vec<SyncResult>, BenchError> {
    let env = new_env(opts)?;
    let batches = opts.sync_batches;
    let mut out = Vec::new();
    for neighbour in [false, true] {
        let n = if neighbour {
            let n = Neighbour::start(&std::env::temp_dir(), opts.neighbour_bytes.max(GIB))?;
            std::thread::sleep(Duration::from_secs(3));
            Some(n)
        } else {
            None
        };
        for s in STRATEGIES {
            let root = env.subdir(&format!("sync-{s:?}-{neighbour}"))?;
            let mut lat = run_strategy(&root, s, batches, opts.sync_gap)
                .map_err(io_err(format!("SYNC {s:?}")))?;
            let secs = lat.iter().sum::<f64>() / 1e3;
            lat.sort_by(|a, b| a.total_cmp(b));
            let r = SyncResult {
                strategy: s,
                neighbour,
                files: batches * BATCH,
                files_s: (batches * BATCH) as f64 / secs,
                p50_ms: lat[lat.len() / 2],
                p99_ms: lat[((lat.len() as f64 - 1.0) * 0.99).round() as usize],
            };
            eprintln!(
                "[SYNC] {:?}{}: {:.0} files/s, batch p50 {:.1} ms, p99 {:.1} ms",
                s,
                if neighbour { " + neighbour" } else { "" },
                r.files_s,
                r.p50_ms,
                r.p99_ms
            );
            out.push(r);
        }
        drop(n);
    }
    Ok(out)
}
