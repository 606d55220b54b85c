//! One workload row: stage, upload through daemon A, download through daemon B, verify, and
//! the figures of each leg (time, rate, CPU, peak RSS).

use super::*;

/// Runs one workload on a fresh server and two fresh daemons.
pub fn run_workload(opts: &BenchOpts, wl: &Workload) -> Result<WorkloadResult, BenchError> {
    let env = new_env(opts)?;
    let stage_dir = env.subdir("stage")?;
    eprintln!("[{}] staging {} x {} bytes", wl.name, wl.count, wl.size);
    let blobs = stage(
        &stage_dir,
        wl.name,
        wl.count,
        wl.size,
        opts.seed,
        opts.spread_ids,
    )?;
    let ns = wl.name.to_ascii_lowercase();
    let rig = start_rig(&env, true, Some(86_400), &ns, opts.scaleout_nodes)?;
    let b = rig.b.as_ref().expect("two devices were started");
    let pids = [pid_of(&rig.a)?, pid_of(b)?, server_pid(&rig.server)?];
    let rt = runtime()?;
    if opts.staged_at_rest {
        blobsync_shared::writeback::syncfs(
            &std::fs::File::open(&stage_dir).map_err(io_err("open the stage dir"))?,
        )
        .map_err(io_err("syncfs after staging"))?;
    }
    // Started after staging and the daemons' start, stopped when the row returns.
    let _neighbour = contention::neighbour_for_row(opts)?;
    let (put_s, upload_s, download_s, verified, before, after) = rt.block_on(async {
        let mut ca = client::connect(rig.a.socket()).await?;
        let mut cb = client::connect(b.socket()).await?;
        let mut ev_a = watch(&mut ca, &ns).await?;
        let before = Snapshot::take(&pids);
        eprintln!("[{}] upload", wl.name);
        let t0 = Instant::now();
        put_all(&ca, &ns, &blobs, opts).await?;
        let put_s = t0.elapsed().as_secs_f64();
        wait_synced(
            &mut ca,
            &mut ev_a,
            &ns,
            wl.count,
            opts.phase_timeout,
            "upload on A",
        )
        .await?;
        let upload_s = t0.elapsed().as_secs_f64();
        eprintln!("[{}] download", wl.name);
        // B must start from nothing (its interval is a day, but a stray cycle would have it
        // list or fetch during the upload and flatter the download figure).
        let held = rows_in(&mut cb, &ns).await?;
        if held != 0 {
            return Err(BenchError::Check(format!(
                "device B already holds {held} blob(s) of {ns} before the download clock starts"
            )));
        }
        let mut ev_b = watch(&mut cb, &ns).await?;
        let t1 = Instant::now();
        cb.sync(SyncRequest {
            wait: false,
            ..Default::default()
        })
        .await?;
        wait_synced(
            &mut cb,
            &mut ev_b,
            &ns,
            wl.count,
            opts.phase_timeout,
            "download on B",
        )
        .await?;
        let download_s = t1.elapsed().as_secs_f64();
        let after = Snapshot::take(&pids);
        let verified = if opts.verify {
            eprintln!("[{}] verifying (not timed)", wl.name);
            verify_all(&mut cb, &ns, &blobs).await?
        } else {
            0
        };
        Ok::<_, BenchError>((put_s, upload_s, download_s, verified, before, after))
    })?;
    let usage = measure::usage(&before, &after);
    let steal_pct = measure::steal_pct(&before, &after);
    let bytes = wl.count as f64 * wl.size as f64;
    Ok(WorkloadResult {
        name: wl.name.into(),
        count: wl.count,
        size: wl.size,
        put_s,
        upload_s,
        download_s,
        wall_s: upload_s + download_s,
        upload_mb_s: bytes / 1e6 / upload_s,
        download_mb_s: bytes / 1e6 / download_s,
        upload_blobs_s: wl.count as f64 / upload_s,
        download_blobs_s: wl.count as f64 / download_s,
        daemon_a: usage[0].clone(),
        daemon_b: usage[1].clone(),
        server: usage[2].clone(),
        verified,
        steal_pct,
        put_concurrency: opts.put_concurrency,
    })
}
