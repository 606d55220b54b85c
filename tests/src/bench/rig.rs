//! One server with one user and its devices, and what a workload does with them: start the
//! rig, find the processes' pids, count SYNCED rows, follow `Watch` until every blob is
//! SYNCED, put every staged blob with `PutPath` (many calls in flight) and read every blob
//! back to compare its SHA-256.

use super::*;

/// One server with one user, and its devices.
pub(super) struct Rig {
    pub(super) server: ServerProc,
    pub(super) a: DaemonProc,
    pub(super) b: Option<DaemonProc>,
    /// s3+postgres: the other nodes, then the engines (dropped after the nodes).
    pub(super) _more_nodes: Vec<ServerProc>,
    pub(super) _engines: Option<crate::engines::Engines>,
}

pub(super) const USER: &str = "bench";

/// Starts the server, its user and device A (and B when `two`), both configured with
/// namespace `ns` (a daemon lists only `default`, configured namespaces and ones it holds).
pub(super) fn start_rig(
    env: &TestEnv,
    two: bool,
    sync_interval: Option<u64>,
    ns: &str,
    nodes: usize,
) -> Result<Rig, BenchError> {
    // Quiet by default: per-request debug logging would be part of what is measured.
    // `BLOBSYNC_BENCH_LOG` sets another filter (e.g. `debug`) to see where time goes.
    let filter = std::env::var("BLOBSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let quiet = vec![("RUST_LOG".to_string(), filter)];
    let (engines, mut server_env) = if nodes > 0 {
        let e = crate::engines::Engines::start(&env.subdir("engines")?).map_err(|e| {
            BenchError::Harness(HarnessError::protocol("start PostgreSQL and Garage", e))
        })?;
        let v = e.server_env();
        (Some(e), v)
    } else {
        (None, Vec::new())
    };
    server_env.extend(quiet.clone());
    // Several nodes cannot share the default metrics port.
    let extra_args: Vec<String> = if nodes > 0 {
        vec!["--metrics-listen".into(), "none".into()]
    } else {
        Vec::new()
    };
    let node_opts = || ServerOpts {
        extra_args: extra_args.clone(),
        env: server_env.clone(),
    };
    let server = ServerProc::start(env, node_opts())?;
    let mut more_nodes = Vec::new();
    for _ in 1..nodes {
        more_nodes.push(ServerProc::start(env, node_opts())?);
    }
    let token = server.add_user(USER)?;
    let key_file = env.subdir("keys")?.join("bench.key");
    write_key_file(&key_file)?;
    let mut opts = DaemonOpts::new(
        RemoteSpec::Http {
            url: server.url(),
            user: USER.into(),
            token,
        },
        &key_file,
    );
    opts.sync_interval = sync_interval;
    opts.env = quiet;
    opts.extra_toml = format!("\n[namespaces.{ns}]\npolicy = \"eager\"\n");
    let a = DaemonProc::start(env, "daemon-a", opts.clone())?;
    if let (Some(last), RemoteSpec::Http { url, .. }) = (more_nodes.last(), &mut opts.remote) {
        *url = last.url();
    }
    let b = if two {
        Some(DaemonProc::start(env, "daemon-b", opts)?)
    } else {
        None
    };
    Ok(Rig {
        server,
        a,
        b,
        _more_nodes: more_nodes,
        _engines: engines,
    })
}

pub(super) fn pid_of(d: &DaemonProc) -> Result<u32, BenchError> {
    d.pid()
        .ok_or_else(|| BenchError::Check(format!("{} is not running", d.name())))
}

pub(super) fn server_pid(s: &ServerProc) -> Result<u32, BenchError> {
    let dir = s.data_dir().display().to_string();
    measure::pid_with_arg(&dir)
        .ok_or_else(|| BenchError::Check(format!("no single server process with {dir} found")))
}

/// SYNCED count of namespace `ns` in a Status answer.
pub(super) async fn synced_in(client: &mut Client, ns: &str) -> Result<(u64, u64), BenchError> {
    let st = client.status(StatusRequest::default()).await?.into_inner();
    let mut synced = 0;
    let mut failed = 0;
    for n in st.namespaces.iter().filter(|n| n.namespace == ns) {
        for c in &n.counts {
            if c.status == BlobStatus::Synced as i32 {
                synced += c.count;
            } else if c.status == BlobStatus::FailedUpload as i32
                || c.status == BlobStatus::FailedDownload as i32
            {
                failed += c.count;
            }
        }
    }
    Ok((synced, failed))
}

/// Rows of namespace `ns` in a Status answer, whatever their status.
pub(super) async fn rows_in(client: &mut Client, ns: &str) -> Result<u64, BenchError> {
    let st = client.status(StatusRequest::default()).await?.into_inner();
    Ok(st
        .namespaces
        .iter()
        .filter(|n| n.namespace == ns)
        .flat_map(|n| n.counts.iter())
        .map(|c| c.count)
        .sum())
}

/// Opens a Watch on `ns` that misses nothing from now on.
pub(super) async fn watch(
    client: &mut Client,
    ns: &str,
) -> Result<Streaming<blobsync_proto::Event>, BenchError> {
    let st = client.status(StatusRequest::default()).await?.into_inner();
    let req = WatchRequest {
        since: Some(st.last_event_id),
        namespace: ns.into(),
        no_progress: true,
    };
    Ok(client.watch(req).await?.into_inner())
}

/// Waits until `n` blobs of `ns` are SYNCED, following `events`; falls back to polling
/// `Status` if the watcher missed events. Fails on a permanent failure or after `timeout`.
pub(super) async fn wait_synced(
    client: &mut Client,
    events: &mut Streaming<blobsync_proto::Event>,
    ns: &str,
    n: usize,
    timeout: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen: HashSet<String> = HashSet::with_capacity(n);
    let mut polling = false;
    loop {
        if polling {
            let (synced, failed) = synced_in(client, ns).await?;
            if failed > 0 {
                return Err(BenchError::Check(format!(
                    "{what}: {failed} blobs failed permanently"
                )));
            }
            if synced as usize >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BenchError::Check(format!(
                    "{what}: {synced}/{n} SYNCED after {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let ev = match tokio::time::timeout_at(deadline, events.message()).await {
            Err(_) => {
                return Err(BenchError::Check(format!(
                    "{what}: {}/{n} SYNCED after {timeout:?}",
                    seen.len()
                )));
            }
            Ok(r) => r?,
        };
        let Some(ev) = ev else {
            polling = true;
            continue;
        };
        match ev.kind {
            Some(Kind::StatusChanged(sc)) if sc.namespace == ns => {
                if sc.new_status == BlobStatus::Synced as i32 {
                    seen.insert(sc.id);
                    if seen.len() >= n {
                        return Ok(());
                    }
                } else if sc.new_status == BlobStatus::FailedUpload as i32
                    || sc.new_status == BlobStatus::FailedDownload as i32
                {
                    return Err(BenchError::Check(format!(
                        "{what}: {} became {:?}: {}",
                        sc.id,
                        BlobStatus::try_from(sc.new_status),
                        sc.reason
                    )));
                }
            }
            Some(Kind::EventsMissed(_)) => polling = true,
            _ => {}
        }
    }
}

/// Puts every staged blob on `client` with `PutPath`, `concurrency` calls in flight.
pub(super) async fn put_all(
    client: &Client,
    ns: &str,
    blobs: &[Staged],
    opts: &BenchOpts,
) -> Result<(), BenchError> {
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.put_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let item = |b: &Staged| PutPathRequest {
        header: Some(PutHeader {
            namespace: ns.into(),
            id: b.id.clone(),
            ..Default::default()
        }),
        path: b.path.display().to_string(),
    };
    for chunk in blobs.chunks(opts.put_batch.max(1)) {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut c = client.clone();
        let items: Vec<PutPathRequest> = chunk.iter().map(item).collect();
        let batch = opts.put_batch > 0;
        tasks.spawn(async move {
            let r = if batch {
                check_batch(c.put_paths(PutPathsRequest { items }).await?.into_inner())
            } else {
                let req = items.into_iter().next().expect("chunks are not empty");
                c.put_path(req).await.map(|_| ()).map_err(BenchError::from)
            };
            drop(permit);
            r
        });
        // Reap finished calls as we go so errors surface early and the set stays small.
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| BenchError::Check(format!("put task: {e}")))??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Check(format!("put task: {e}")))??;
    }
    Ok(())
}

/// Every item of a `PutPaths` answer was stored.
pub(super) fn check_batch(r: blobsync_proto::PutPathsResponse) -> Result<(), BenchError> {
    for res in r.results {
        if let Some(blobsync_proto::put_path_result::Result::Error(e)) = res.result {
            return Err(BenchError::Check(format!(
                "PutPaths refused an item: {} ({})",
                e.message, e.code
            )));
        }
    }
    Ok(())
}

/// Reads every blob back from `client` and compares SHA-256; returns how many matched.
pub(super) async fn verify_all(
    client: &mut Client,
    ns: &str,
    blobs: &[Staged],
) -> Result<usize, BenchError> {
    for b in blobs {
        let mut s = client
            .get(GetRequest {
                namespace: ns.into(),
                id: b.id.clone(),
                range: None,
                wait: false,
            })
            .await?
            .into_inner();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(m) = s.message().await? {
            if let Some(get_response::Msg::Chunk(c)) = m.msg {
                ctx.update(&c);
            }
        }
        if ctx.finish().as_ref() != b.sha256 {
            return Err(BenchError::Check(format!(
                "{ns}/{}: content read back from B differs",
                b.id
            )));
        }
    }
    Ok(blobs.len())
}
