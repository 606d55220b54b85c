//! Rendering a [`BenchReport`] as the one table `blobsync-bench` prints.
//!
//! Pure formatting: this module never measures anything.

use super::BenchReport;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{}GB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{}MB", bytes >> 20)
    } else {
        format!("{}KB", bytes >> 10)
    }
}

/// The table: one line per workload, then the disk, idle and startup figures.
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    let create = r
        .create_us
        .map(|us| format!("; file create {us:.0} us"))
        .unwrap_or_default();
    out.push_str(&format!(
        "blobsync-bench ({}; put: {}{create}; MB = 10^6 B, RSS in MiB)\n",
        r.machine, r.put_method
    ));
    out.push_str(&format!(
        "{:<4} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5}\n",
        "row", "blobs", "put s", "up s", "down s", "wall s", "up MB/s", "dn MB/s", "up b/s", "dn b/s",
        "A rss", "B rss", "S rss", "A cpu", "B cpu", "S cpu", "steal%", "ok"
    ));
    for w in &r.workloads {
        out.push_str(&format!(
            "{:<4} {:>12} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.1} {:>9.1} {:>8.0} {:>8.0} {:>6.1} {:>6.1} {:>6.1} {:>6.2} {:>6.2} {:>6.2} {:>6.1} {:>5}\n",
            w.name,
            format!("{}x{}", w.count, size(w.size)),
            w.put_s,
            w.upload_s,
            w.download_s,
            w.wall_s,
            w.upload_mb_s,
            w.download_mb_s,
            w.upload_blobs_s,
            w.download_blobs_s,
            mib(w.daemon_a.peak_rss_bytes),
            mib(w.daemon_b.peak_rss_bytes),
            mib(w.server.peak_rss_bytes),
            w.daemon_a.cpu_s,
            w.daemon_b.cpu_s,
            w.server.cpu_s,
            w.steal_pct,
            if w.verified == w.count { "yes".to_string() } else { format!("{}", w.verified) },
        ));
    }
    if let Some(d) = &r.disk {
        out.push_str(&format!(
            "DISK durable write: {} MiB + fsync in {:.3} s = {:.0} MB/s (median of {:?} MB/s)\n",
            d.bytes >> 20,
            d.seconds,
            d.mb_s,
            d.runs_mb_s
                .iter()
                .map(|r| r.round() as u64)
                .collect::<Vec<_>>()
        ));
        for w in r.workloads.iter().filter(|w| w.name == "W6") {
            out.push_str(&format!(
                "W6 vs disk: upload {:.0}%, download {:.0}% of the durable write rate\n",
                w.upload_mb_s / d.mb_s * 100.0,
                w.download_mb_s / d.mb_s * 100.0
            ));
        }
    }
    if let Some(i) = &r.incoming {
        out.push_str(&format!(
            "INCOMING {} messages x {}: delivered in {:.2} s, adopted on both devices after {:.2} s \
             ({:.0} messages/s); CPU daemon A {:.1} s, B {:.1} s, server {:.1} s\n",
            i.count,
            size(i.size as u64),
            i.deliver_s,
            i.wall_s,
            i.messages_s,
            i.daemon_a.cpu_s,
            i.daemon_b.cpu_s,
            i.server.cpu_s,
        ));
    }
    if let Some(i) = &r.idle {
        out.push_str(&format!(
            "IDLE {} blobs x {}: populate {:.1} s; no-change cycle median {:.1} ms (runs: {}; full listing: {}); \
             per cycle: daemon {:.1} ms CPU, server {:.1} ms CPU\n",
            i.blobs,
            size(i.blob_size),
            i.populate_s,
            i.nochange_cycle_median_ms,
            i.nochange_cycle_ms.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(" "),
            i.nochange_full_list.iter().filter(|f| **f).count(),
            i.daemon_cpu_ms_per_cycle,
            i.server_cpu_ms_per_cycle,
        ));
        out.push_str(&format!(
            "IDLE CPU over {:.0} s: daemon {:.2}% of a core ({:.2} s), server {:.2}%; daemon peak RSS {:.1} MiB, server {:.1} MiB\n",
            i.idle_s,
            i.idle_daemon_cpu_pct,
            i.idle_daemon_cpu_s,
            i.idle_server_cpu_pct,
            mib(i.daemon.peak_rss_bytes),
            mib(i.server.peak_rss_bytes),
        ));
        out.push_str(&format!(
            "STARTUP with {} blobs: socket accepts after {:.1} ms, Status answers after {:.1} ms\n",
            i.blobs, i.startup_ms, i.startup_status_ms
        ));
    }
    for v in &r.server {
        out.push_str(&format!(
            "{} over {} connections for {:.0} s (offered {:.0}/s, 0 = closed loop): {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, \
             {} errors; server peak RSS {:.1} MiB\n",
            v.row,
            v.connections,
            v.seconds,
            v.offered_per_s,
            v.per_s,
            v.p50_ms,
            v.p99_ms,
            v.max_ms,
            v.errors,
            mib(v.server_peak_rss_bytes),
        ));
    }
    if r.neighbour_bytes > 0 {
        out.push_str(&format!(
            "(workload rows ran with a neighbour writing up to {} MiB without fsync on the same file system)\n",
            r.neighbour_bytes >> 20
        ));
    }
    for s in &r.sync {
        out.push_str(&format!(
            "SYNC {:<20} {:<11} {:>6} files: {:>7.0} files/s, batch of 32 p50 {:>7.1} ms, p99 {:>7.1} ms\n",
            format!("{:?}", s.strategy),
            if s.neighbour { "+neighbour" } else { "quiet" },
            s.files,
            s.files_s,
            s.p50_ms,
            s.p99_ms
        ));
    }
    if let Some(m) = &r.million {
        out.push_str(&format!(
            "SRV-FULL {} blobs x {} (populated over /stream in {:.1} s): full listing of ids {:.3} s to the last byte \
             ({:.1} MiB, server peak RSS {:.1} MiB); detail=1 {:.3} s ({:.1} MiB, server peak RSS {:.1} MiB)\n",
            m.blobs,
            size(m.blob_size),
            m.server_populate_s,
            m.full_list_ids_s,
            mib(m.full_list_ids_bytes),
            mib(m.full_list_ids_server_rss_bytes),
            m.full_list_detail_s,
            mib(m.full_list_detail_bytes),
            mib(m.full_list_detail_server_rss_bytes),
        ));
        if let Some(d) = &m.device {
            out.push_str(&format!(
                "IDLE-1M {} blobs: device populate (download) {:.1} s; no-change cycle median {:.1} ms (runs: {}); \
                 spawn -> socket {:.1} ms, first Status {:.1} ms (spawn -> answer {:.1} ms), warm Status {:.2} ms; \
                 daemon RSS peak {:.1} MiB, now {:.1} MiB; data dir {:.0} MiB\n",
                m.blobs,
                d.populate_s,
                d.nochange_cycle_median_ms,
                d.nochange_cycle_ms.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(" "),
                d.startup_ms,
                d.first_status_ms,
                d.startup_status_ms,
                d.status_median_ms,
                mib(d.daemon_peak_rss_bytes),
                mib(d.daemon_rss_bytes),
                mib(d.data_dir_bytes),
            ));
        }
    }
    out
}
