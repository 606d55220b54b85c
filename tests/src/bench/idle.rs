//! The IDLE row: a daemon full of synced blobs, its no-change cycles and CPU over an idle
//! interval, and the time a restart takes until the socket accepts and `Status` answers.

use super::*;

/// Runs the IDLE row: fills daemon A with `idle_blobs` synced blobs, times no-change
/// cycles, measures CPU over the idle interval, then restarts A and times startup.
pub fn run_idle(opts: &BenchOpts) -> Result<IdleResult, BenchError> {
    let mut env = new_env(opts)?;
    let stage_dir = env.subdir("stage")?;
    let n = opts.idle_blobs;
    eprintln!("[IDLE] staging {n} x {} bytes", opts.idle_blob_size);
    let blobs = stage(
        &stage_dir,
        "IDLE",
        n,
        opts.idle_blob_size,
        opts.seed,
        opts.spread_ids,
    )?;
    // The daemon's default sync interval: the idle minute includes its periodic cycles.
    let ns = "idle";
    let mut rig = start_rig(&env, false, None, ns, opts.scaleout_nodes)?;
    let server_pid = server_pid(&rig.server)?;
    let rt = runtime()?;
    let first = Snapshot::take(&[pid_of(&rig.a)?, server_pid]);
    let r = rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        let mut ev = watch(&mut ca, ns).await?;
        eprintln!("[IDLE] populating");
        let t0 = Instant::now();
        put_all(&ca, ns, &blobs, opts).await?;
        wait_synced(
            &mut ca,
            &mut ev,
            ns,
            n,
            opts.phase_timeout,
            "IDLE populate on A",
        )
        .await?;
        let populate_s = t0.elapsed().as_secs_f64();
        drop(ev);
        // Let the upload's tail settle (a cycle may still be committing).
        ca.sync(SyncRequest {
            wait: true,
            ..Default::default()
        })
        .await?;
        eprintln!("[IDLE] {} no-change cycles", opts.idle_cycles);
        let pids = [pid_of(&rig.a)?, server_pid];
        let s0 = Snapshot::take(&pids);
        let (ms, full) = time_nochange_cycles(&mut ca, opts.idle_cycles, "IDLE").await?;
        let s1 = Snapshot::take(&pids);
        let per_cycle = measure::usage(&s0, &s1);
        eprintln!("[IDLE] idle for {:?}", opts.idle);
        let i0 = Snapshot::take(&pids);
        tokio::time::sleep(opts.idle).await;
        let i1 = Snapshot::take(&pids);
        let idle = measure::usage(&i0, &i1);
        Ok::<_, BenchError>((populate_s, ms, full, per_cycle, idle))
    })?;
    let (populate_s, ms, full, per_cycle, idle) = r;
    let last = Snapshot::take(&[pid_of(&rig.a)?, server_pid]);
    let whole = measure::usage(&first, &last);
    let cycles = opts.idle_cycles.max(1) as f64;
    let idle_s = opts.idle.as_secs_f64();

    eprintln!("[IDLE] restart timing");
    rig.a.terminate(Duration::from_secs(30));
    let (startup_ms, startup_status_ms) = time_startup(&env, &mut rig.a)?;
    let (synced, _) = rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        synced_in(&mut ca, ns).await
    })?;
    if synced as usize != n {
        return Err(BenchError::Check(format!(
            "IDLE: after restart {synced}/{n} SYNCED"
        )));
    }
    let _ = &mut env;
    Ok(IdleResult {
        blobs: n,
        blob_size: opts.idle_blob_size,
        populate_s,
        nochange_cycle_median_ms: measure::median(&ms),
        nochange_cycle_ms: ms,
        nochange_full_list: full,
        server_cpu_ms_per_cycle: per_cycle[1].cpu_s * 1e3 / cycles,
        daemon_cpu_ms_per_cycle: per_cycle[0].cpu_s * 1e3 / cycles,
        idle_s,
        idle_daemon_cpu_s: idle[0].cpu_s,
        idle_daemon_cpu_pct: idle[0].cpu_s / idle_s * 100.0,
        idle_server_cpu_pct: idle[1].cpu_s / idle_s * 100.0,
        startup_ms,
        startup_status_ms,
        daemon: whole[0].clone(),
        server: whole[1].clone(),
    })
}

/// Restarts `d` and returns milliseconds until its socket accepts a connection, and until
/// a `Status` call answers. A thread polls every 0.5 ms while the harness restarts it.
pub(super) fn time_startup(env: &TestEnv, d: &mut DaemonProc) -> Result<(f64, f64), BenchError> {
    let socket = d.socket().to_path_buf();
    let t0 = Instant::now();
    let poller = std::thread::spawn(move || -> Option<(f64, f64)> {
        let limit = Duration::from_secs(60);
        let accepted = loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break t0.elapsed().as_secs_f64() * 1e3;
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let rt = runtime().ok()?;
        let answered = rt.block_on(async {
            loop {
                if let Ok(mut c) = client::connect(&socket).await
                    && c.status(StatusRequest::default()).await.is_ok()
                {
                    return Some(t0.elapsed().as_secs_f64() * 1e3);
                }
                if t0.elapsed() > limit {
                    return None;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })?;
        Some((accepted, answered))
    });
    d.restart(env)?;
    poller
        .join()
        .map_err(|_| BenchError::Check("startup poller panicked".into()))?
        .ok_or_else(|| BenchError::Check("daemon did not answer within 60 s of a restart".into()))
}

/// Forces `n` cycles one after another, each awaited to its end: each one's ms and whether it
/// listed in full. A cycle that moved blobs is an error naming `row` (the store was to be
/// in sync).
pub(super) async fn time_nochange_cycles(
    c: &mut client::Client,
    n: usize,
    row: &str,
) -> Result<(Vec<f64>, Vec<bool>), BenchError> {
    let (mut ms, mut full) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let resp = c
            .sync(SyncRequest {
                wait: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        let s = resp.summary.unwrap_or_default();
        if s.uploaded + s.downloaded + s.deleted_local > 0 {
            return Err(BenchError::Check(format!(
                "{row}: a no-change cycle moved blobs: {s:?}"
            )));
        }
        full.push(s.full_list);
    }
    Ok((ms, full))
}
