//! `blobctl watch`: a put seen going from PENDING_UPLOAD to SYNCED, open watches ended by
//! the daemon's SIGTERM (and the daemon's exit 0), and a watch that outlives a daemon restart
//! while printing nothing for idle cycles.

use super::*;

#[test]
fn watch_sees_a_put_go_from_pending_upload_to_synced() {
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "watch");
    let sock = d.socket();
    // Subscribing from the last id before the put means the watcher cannot miss the
    // put's first event however late its process starts.
    let before = ctl_json(sock, &["status"])["last_event_id"]
        .as_u64()
        .unwrap();
    let mut watch = Command::new(ctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "watch",
            "--no-progress",
        ])
        .args(["--since", &before.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let file = env.root().join("f");
    write_file(&file, 70_000, 9);
    ctl_json(sock, &["put", file.to_str().unwrap(), "--id", "w1"]);
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut last_id = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains(&"SYNCED".to_string()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("saw only {seen:?}"));
        let ev: Value = serde_json::from_str(&line).unwrap();
        let id = ev["id"].as_u64().unwrap();
        assert!(id > last_id, "event ids must grow: {last_id} then {id}");
        last_id = id;
        if ev["status_changed"]["id"] == "w1" {
            seen.push(
                ev["status_changed"]["new_status"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("PENDING_UPLOAD"),
        "{seen:?}"
    );
    let row = wait_status(sock, "w1", "SYNCED");
    assert_eq!(row["attempts"], 0, "{row}");
    watch.kill().unwrap();
    watch.wait().unwrap();

    // Resuming with --since replays what was missed, from the buffer.
    let mut replay = Command::new(ctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "watch",
            "--since",
            &before.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first: Value = {
        let mut l = String::new();
        BufReader::new(replay.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        serde_json::from_str(&l).unwrap()
    };
    assert_eq!(first["id"], before + 1, "{first}");
    replay.kill().unwrap();
    replay.wait().unwrap();
}

#[test]
fn sigterm_ends_open_watches_and_the_daemon_exits_0() {
    let env = TestEnv::new().unwrap();
    let mut d = start_daemon(&env, "term");
    // Something to replay: idle cycles print nothing in text.
    let file = env.root().join("f");
    write_file(&file, 1000, 1);
    ctl_json(d.socket(), &["put", file.to_str().unwrap(), "--id", "t"]);
    let mut watch = Command::new(ctl_bin())
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "watch",
            "--since",
            "0",
            "--no-reconnect",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line proves the watch is connected.
    let mut first = String::new();
    BufReader::new(watch.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains('#'), "{first}");
    let code = d.terminate(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "SIGTERM with a watcher connected must still exit 0 promptly"
    );
    let out = watch.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutting down"));
    assert!(
        !d.socket().exists(),
        "the daemon removes its socket on the way out"
    );
}

/// Issue 21: `watch` outlives a daemon restart (it waits and resumes), prints no lines for idle
/// cycles, and shows the blob put after the restart.
#[test]
fn watch_resumes_after_a_daemon_restart_and_folds_idle_cycles() {
    let env = TestEnv::new().unwrap();
    let mut d = start_daemon(&env, "rewatch");
    let err_path = env.root().join("watch.err");
    let mut watch = Command::new(ctl_bin())
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "watch",
            "--since",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    // Idle cycles (the daemon runs them every 0.3 s at this time scale) print nothing.
    let file = env.root().join("f");
    write_file(&file, 1000, 3);
    ctl_json(
        d.socket(),
        &["put", file.to_str().unwrap(), "--id", "before"],
    );
    wait_status(d.socket(), "before", "SYNCED");
    // Let idle cycles happen while the watch is open (what the fold below is about): wait
    // until the daemon has finished five more cycles, not a fixed time.
    let cycle = |sock: &Path| ctl_json(sock, &["status"])["last_cycle"]["cycle"].as_u64();
    let from = cycle(d.socket()).unwrap_or(0);
    wait_until("five more idle cycles", Duration::from_secs(30), || {
        Ok(match cycle(d.socket()) {
            Some(n) if n >= from + 5 => Poll::Ready(()),
            n => Poll::Pending(format!("at cycle {n:?}, from {from}")),
        })
    })
    .unwrap();
    d.restart(&env).unwrap();
    ctl_json(
        d.socket(),
        &["put", file.to_str().unwrap(), "--id", "after"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("/after") && l.contains("SYNCED"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "no SYNCED line for the blob put after the restart: {seen:#?}\nstderr: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            ),
        }
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(err.contains("reconnected"), "{err}");
    let cycle_lines = seen.iter().filter(|l| l.contains("cycle")).count();
    assert!(
        cycle_lines <= 8,
        "idle cycles print nothing (only cycles that did something): {seen:#?}"
    );
}
