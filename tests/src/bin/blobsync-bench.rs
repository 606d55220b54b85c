//! `blobsync-bench`: Soledad's workloads through a real `blobsync-server` and two real
//! `blobsyncd` over loopback; prints one table and writes JSON (issue 8).
//!
//! Build the release binaries first (`cargo build --release --workspace --bins`), then
//! `cargo run --release -p blobsync-tests --bin blobsync-bench -- [ROW...] [--json FILE]`.
//! Rows: W1..W6, IDLE, DISK, INCOMING, SRV-LIST, SRV-PUT, SRV-FULL, IDLE-1M; none given = all but
//! the last two (they populate a million blobs: minutes and gigabytes), in that order
//! (DISK first).
//! It is a benchmark: it prints figures and never passes or fails on them.

use std::time::Duration;

use anyhow::{Context, bail};
use blobsync_tests::bench::{self, BenchOpts, BenchReport, WORKLOADS};

const USAGE: &str = "usage: blobsync-bench [W1 W2 W3 W4 W5 W6 IDLE DISK INCOMING SRV-LIST SRV-PUT SRV-FULL IDLE-1M SYNC ...] [--json FILE]
  [--scaleout-nodes N] [--seed N] [--put-concurrency N] [--put-batch N] [--idle-secs S] [--idle-blobs N] [--idle-blob-size BYTES]
  [--idle-cycles N] [--disk-bytes BYTES] [--no-verify] [--spread-ids] [--staged-at-rest] [--phase-timeout S]
  [--server-devices N] [--server-rate PER_S] [--server-put-clients N] [--server-secs S] [--million-blobs N]
  [--neighbour BYTES] [--sync-batches N] [--sync-gap-ms MS]
Rows default to DISK W1 W2 W3 W4 W5 W6 IDLE INCOMING SRV-LIST SRV-PUT (SYNC, and SRV-FULL and IDLE-1M, which
share one populate of --million-blobs, run only when named). Temp dirs go under TMPDIR.
Needs the release binaries: cargo build --release --workspace --bins";

fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> anyhow::Result<T> {
    let v = v.with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
    v.parse()
        .map_err(|_| anyhow::anyhow!("{flag}: {v:?} is not a number\n{USAGE}"))
}

fn main() -> anyhow::Result<()> {
    let mut opts = BenchOpts::default();
    let mut rows: Vec<String> = Vec::new();
    let mut json: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => {
                json = Some(
                    args.next()
                        .with_context(|| format!("--json needs a FILE\n{USAGE}"))?,
                )
            }
            "--seed" => opts.seed = num(&a, args.next())?,
            "--put-concurrency" => opts.put_concurrency = num(&a, args.next())?,
            "--put-batch" => opts.put_batch = num(&a, args.next())?,
            "--idle-secs" => opts.idle = Duration::from_secs_f64(num(&a, args.next())?),
            "--idle-blobs" => opts.idle_blobs = num(&a, args.next())?,
            "--idle-blob-size" => opts.idle_blob_size = num(&a, args.next())?,
            "--idle-cycles" => opts.idle_cycles = num(&a, args.next())?,
            "--disk-bytes" => opts.disk_bytes = num(&a, args.next())?,
            "--phase-timeout" => {
                opts.phase_timeout = Duration::from_secs_f64(num(&a, args.next())?)
            }
            "--no-verify" => opts.verify = false,
            "--spread-ids" => opts.spread_ids = true,
            "--staged-at-rest" => opts.staged_at_rest = true,
            // s3+postgres on N nodes (Garage + PostgreSQL started for each row).
            "--scaleout-nodes" => opts.scaleout_nodes = num(&a, args.next())?,
            "--server-devices" => opts.server_devices = num(&a, args.next())?,
            "--server-rate" => opts.server_rate = num(&a, args.next())?,
            "--server-put-clients" => opts.server_put_clients = num(&a, args.next())?,
            "--server-secs" => opts.server_secs = Duration::from_secs_f64(num(&a, args.next())?),
            "--million-blobs" => opts.million_blobs = num(&a, args.next())?,
            "--neighbour" => opts.neighbour_bytes = num(&a, args.next())?,
            "--sync-batches" => opts.sync_batches = num(&a, args.next())?,
            "--sync-gap-ms" => opts.sync_gap = Duration::from_millis(num(&a, args.next())?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            r => {
                let up = r.to_ascii_uppercase();
                if up == "IDLE"
                    || up == "DISK"
                    || up == "INCOMING"
                    || up == "SRV-LIST"
                    || up == "SRV-PUT"
                    || up == "SRV-FULL"
                    || up == "IDLE-1M"
                    || up == "SYNC"
                    || WORKLOADS.iter().any(|w| w.name == up)
                {
                    rows.push(up);
                } else {
                    bail!("unknown argument {r:?}\n{USAGE}");
                }
            }
        }
    }
    if rows.is_empty() {
        rows = [
            "DISK", "W1", "W2", "W3", "W4", "W5", "W6", "IDLE", "INCOMING", "SRV-LIST", "SRV-PUT",
        ]
        .map(String::from)
        .to_vec();
    }
    if cfg!(debug_assertions) {
        eprintln!("blobsync-bench: warning: this is a debug build of the harness; use --release");
    }
    let mut report = BenchReport {
        put_method: match opts.put_batch {
            0 => format!("{} (N = {})", bench::PUT_METHOD, opts.put_concurrency),
            b => format!(
                "gRPC PutPaths of {b} staged files per call, {} calls in flight",
                opts.put_concurrency
            ),
        } + if opts.spread_ids {
            "; ids spread (16 hex digits)"
        } else {
            "; ids b000000.."
        } + if opts.staged_at_rest {
            "; staged files flushed before the clock"
        } else {
            ""
        },
        seed: opts.seed,
        machine: bench::machine(),
        neighbour_bytes: opts.neighbour_bytes,
        ..Default::default()
    };
    if let Some(age) = bench::trash_emptied_ago().filter(|a| *a < bench::TRASH_AGE) {
        eprintln!(
            "blobsync-bench: warning: the last run deleted old files {} s ago; on ext4 without a \
             journal, rows that create many small files (W1, W5, SRV-PUT) run slower until \
             {} s have passed (the inode allocator skips recently freed inodes)",
            age.as_secs(),
            bench::TRASH_AGE.as_secs()
        );
    }
    report.create_us = bench::create_probe(&std::env::temp_dir()).map(|d| d.as_secs_f64() * 1e6);
    if let Some(us) = report
        .create_us
        .filter(|us| *us > bench::SLOW_CREATE.as_secs_f64() * 1e6)
    {
        eprintln!(
            "blobsync-bench: warning: creating a file takes {us:.0} us here (usually about 20 us); \
             rows that create many small files (W1, W5, SRV-PUT) may measure the file system, \
             not blobsync. On ext4 without a journal this follows a mass delete in the last \
             minutes: wait and run again"
        );
    }
    let mut run_rows = || -> anyhow::Result<()> {
        for row in &rows {
            match row.as_str() {
                "DISK" => {
                    eprintln!("[DISK] writing {} bytes + fsync", opts.disk_bytes);
                    report.disk = Some(bench::run_disk(&opts).context("disk test")?);
                }
                "IDLE" => report.idle = Some(bench::run_idle(&opts).context("IDLE")?),
                "SYNC" => report.sync = bench::contention::run_sync(&opts).context("SYNC")?,
                // One populate serves both; IDLE-1M includes SRV-FULL.
                "SRV-FULL" | "IDLE-1M" if report.million.is_some() => {}
                "SRV-FULL" | "IDLE-1M" => {
                    let device = rows.iter().any(|r| r == "IDLE-1M");
                    report.million =
                        Some(bench::run_million(&opts, device).with_context(|| row.clone())?);
                }
                "SRV-LIST" | "SRV-PUT" => {
                    let r = if row == "SRV-LIST" {
                        bench::server_load::run_list(&opts)
                    } else {
                        bench::server_load::run_put(&opts)
                    }
                    .with_context(|| row.clone())?;
                    eprintln!(
                        "[{row}] {:.0}/s over {} connections, p50 {:.2} ms, p99 {:.2} ms, {} errors, server peak RSS {} MiB",
                        r.per_s,
                        r.connections,
                        r.p50_ms,
                        r.p99_ms,
                        r.errors,
                        r.server_peak_rss_bytes >> 20
                    );
                    report.server.push(r);
                }
                "INCOMING" => {
                    let r = bench::run_incoming(&opts).context("INCOMING")?;
                    eprintln!("[INCOMING] wall {:.3} s", r.wall_s);
                    report.incoming = Some(r);
                }
                w => {
                    let wl = WORKLOADS
                        .iter()
                        .find(|x| x.name == w)
                        .expect("rows were checked above");
                    let r =
                        bench::run_workload(&opts, wl).with_context(|| format!("workload {w}"))?;
                    eprintln!(
                        "[{w}] up {:.3} s, down {:.3} s, wall {:.3} s",
                        r.upload_s, r.download_s, r.wall_s
                    );
                    report.workloads.push(r);
                }
            }
            if let Some(path) = &json {
                // Written after every row, so a long run that dies keeps what it measured.
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("write {path}"))?;
            }
        }
        Ok(())
    };
    let ran = run_rows();
    // Rows keep their files until now, so one row's cleanup is not measured in the next.
    bench::remove_row_dirs();
    // After the rows, not before: deleting earlier runs' files is itself slow to recover
    // from (see `remove_row_dirs`), and must not be measured in this run.
    bench::empty_old_trash();
    ran?;
    print!("{}", bench::report::table(&report));
    Ok(())
}
