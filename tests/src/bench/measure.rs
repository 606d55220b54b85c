//! Per-process figures from `/proc`: CPU seconds (`utime + stime` of `/proc/PID/stat`) and
//! peak resident memory (`VmHWM` of `/proc/PID/status`). Linux only.
//!
//! This module reads `/proc` and does arithmetic; it never starts or signals a process.

use serde::Serialize;

/// One process's usage over an interval.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcUsage {
    /// CPU seconds (user + system) spent in the interval.
    pub cpu_s: f64,
    /// Peak resident memory since the process started (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

/// CPU ticks and peak RSS of a set of processes at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pids: Vec<u32>,
    ticks: Vec<u64>,
    /// The machine's (steal, total) CPU ticks from `/proc/stat`.
    machine: (u64, u64),
}

/// The `cpu` line of `/proc/stat` as (steal, total) ticks; (0, 0) if unreadable.
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user and nice.
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.get(7).copied().unwrap_or(0), v.iter().sum())
}

/// Percent of the machine's CPU time the hypervisor gave to others between two snapshots
/// ("steal"): a row measured while a neighbour was busy shows it here.
pub fn steal_pct(before: &Snapshot, after: &Snapshot) -> f64 {
    let steal = after.machine.0.saturating_sub(before.machine.0);
    let total = after.machine.1.saturating_sub(before.machine.1);
    if total == 0 {
        0.0
    } else {
        steal as f64 * 100.0 / total as f64
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant of the C library; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `utime + stime` of `pid` in clock ticks (0 if unreadable).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are
    // plain: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // rest[0] is field 3, so field n is rest[n - 3].
    get(14 - 3) + get(15 - 3)
}

impl Snapshot {
    /// Reads the CPU ticks of every pid now.
    pub fn take(pids: &[u32]) -> Self {
        Snapshot {
            pids: pids.to_vec(),
            ticks: pids.iter().map(|p| cpu_ticks(*p)).collect(),
            machine: machine_ticks(),
        }
    }
}

/// Usage between two snapshots of the same pids; peak RSS is read now.
pub fn usage(before: &Snapshot, after: &Snapshot) -> Vec<ProcUsage> {
    let hz = clock_ticks_per_s();
    before
        .pids
        .iter()
        .zip(before.ticks.iter().zip(&after.ticks))
        .map(|(pid, (b, a))| ProcUsage {
            cpu_s: a.saturating_sub(*b) as f64 / hz,
            peak_rss_bytes: crate::proc_memory(*pid).map(|(hwm, _)| hwm).unwrap_or(0),
        })
        .collect()
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The pid of the one running process whose command line contains `needle` (e.g. the
/// server's data dir); `ServerProc` does not expose its pid, and a unique temp path on the
/// command line identifies it.
pub fn pid_with_arg(needle: &str) -> Option<u32> {
    let me = std::process::id();
    let mut found = None;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            if found.is_some() {
                return None;
            }
            found = Some(pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_ticks_grow_with_work() {
        let me = std::process::id();
        let t0 = cpu_ticks(me);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_ticks(me) > t0);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
