//! Scenario 8 (control half): bad arguments to every control RPC, through the real `blobctl`
//! and the real `blobsyncd` over its Unix socket. This is the blobctl boundary's one
//! invalid-input suite: every row is (arguments, exit code, acceptable error codes, a
//! fragment the message must contain).
//!
//! Each row must exit with blobctl's code (2 for usage and INVALID_ARGUMENT, 1 for other
//! errors, 3 when the daemon is unreachable) and print `{"error": {"code", "message"}}` with
//! the expected gRPC code name and a message naming the problem. Afterwards the daemon holds
//! exactly what it held before: bad input stores nothing. Usage errors need no daemon at all:
//! blobctl refuses them before it connects. (The gRPC service's own table, with what blobctl's
//! parser would not let through, is `daemon/tests/control_grpc/invalid.rs`.)

use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged};
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::{Blobctl, Cluster, ServerOpts, TestEnv};

/// One row: the arguments, the exit code, the acceptable error codes, and a fragment of the
/// message (of the JSON error's message, or of clap's plain-text usage error).
struct Row {
    args: Vec<String>,
    exit: i32,
    codes: &'static [&'static str],
    says: &'static str,
}

const INVALID: &[&str] = &["INVALID_ARGUMENT", "USAGE"];
const NOT_FOUND: &[&str] = &["NOT_FOUND"];

fn row(args: &[&str], exit: i32, codes: &'static [&'static str], says: &'static str) -> Row {
    Row {
        args: args.iter().map(|s| s.to_string()).collect(),
        exit,
        codes,
        says,
    }
}

/// Runs every row on `ctl` (with `--json` when `json`); returns a line per row that did not
/// get what it wants.
fn check_rows(ctl: &Blobctl, rows: &[Row], json: bool) -> TestResult<Vec<String>> {
    let mut failures = Vec::new();
    for Row {
        args,
        exit,
        codes,
        says,
    } in rows
    {
        let o = ctl.run_opts(args, json)?;
        let err: Option<serde_json::Value> = serde_json::from_str(o.stderr.trim())
            .ok()
            .or_else(|| o.json.clone());
        let code = err
            .as_ref()
            .and_then(|v| v["error"]["code"].as_str())
            .unwrap_or("")
            .to_string();
        let msg = err
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .unwrap_or("")
            .to_string();
        // clap rejects some rows before any RPC; it prints plain text, which is fine for
        // usage errors as long as the exit code is 2 and it says what is wrong.
        let clap_usage = o.code == 2 && code.is_empty() && !o.stderr.trim().is_empty();
        let text = if clap_usage { o.stderr.as_str() } else { &msg };
        if o.code != *exit
            || (!clap_usage && !codes.contains(&code.as_str()))
            || text.trim().is_empty()
            || !text.contains(says)
        {
            failures.push(format!(
                "blobctl {}: exit {} code {code:?} (want exit {exit}, one of {codes:?}, a message with {says:?}); stderr: {}",
                args.join(" "),
                o.code,
                o.stderr.trim()
            ));
        }
    }
    Ok(failures)
}

/// Usage errors exit 2 before blobctl connects: no daemon is needed to be told. (A command
/// that needs no daemon, `completions`, works the same way and exits 0.)
#[test]
fn usage_errors_exit_2_without_a_daemon() -> TestResult {
    let env = TestEnv::new()?;
    let nowhere = Blobctl::new(&env.root().join("nonexistent/blobsyncd.sock"))?;
    let rows = [
        row(&["priority", "x", "asap"], 2, INVALID, "asap"),
        row(&["get", "x", "--range", "5-2"], 2, INVALID, "5-2"),
        row(&["retry"], 2, INVALID, "--all-failed"),
        row(&["limits", "--up", "fast"], 2, INVALID, "fast"),
        row(&["frobnicate"], 2, INVALID, "frobnicate"),
    ];
    // As a user types them, and with `--json`.
    let mut failures = check_rows(&nowhere, &rows, false)?;
    failures.extend(check_rows(&nowhere, &rows, true)?);
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        2 * rows.len(),
        failures.join("\n")
    );
    let o = nowhere.run_opts(&["completions", "bash"], false)?;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("blobctl"), "{}", o.stdout);
    Ok(())
}

#[test]
fn bad_control_requests_get_the_right_codes_and_store_nothing() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let file = a.dir().join("put.src");
    let sha = write_random_file(&file, 5_000, 1)?;
    a.ctl().put(&file, "existing", &[])?;
    let mut model = Model::new();
    model.insert(("default".into(), "existing".into()), sha);
    assert_converged(
        &[&a],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;

    let f = file.display().to_string();
    let long = "x".repeat(129);
    let missing_file = a.dir().join("no-such-file").display().to_string();
    let out = a.dir().join("get.out").display().to_string();
    let rows: Vec<Row> = vec![
        // Put / PutPath.
        row(&["put", &f, "--id", "bad.id"], 2, INVALID, "'.'"),
        row(&["put", &f, "--id", "bad id"], 2, INVALID, "' '"),
        row(&["put", &f, "--id", &long], 2, INVALID, "128"),
        row(
            &["put", &f, "--id", "ok1", "-n", "bad ns"],
            2,
            INVALID,
            "namespace",
        ),
        row(&["put", &f, "-n", "a/b"], 2, INVALID, "'/'"),
        row(
            &["put", &f, "--id", "ok2", "--priority", "soon"],
            2,
            INVALID,
            "soon",
        ),
        row(
            &["put", &f, "--id", "existing"],
            1,
            &["ALREADY_EXISTS"],
            "existing",
        ),
        row(
            &["put", &missing_file, "--id", "ok3"],
            1,
            &["IO", "NOT_FOUND"],
            "no-such-file",
        ),
        row(
            &["put", &f, "--id", "bad/id", "--by-path"],
            2,
            INVALID,
            "'/'",
        ),
        // Get.
        row(&["get", "bad.id", "-o", &out], 2, INVALID, "'.'"),
        row(&["get", "../etc/passwd", "-o", &out], 2, INVALID, "blob id"),
        row(&["get", "missing", "-o", &out], 1, NOT_FOUND, "missing"),
        row(
            &["get", "existing", "-n", "other", "-o", &out],
            1,
            NOT_FOUND,
            "existing",
        ),
        row(
            &["get", "existing", "--range", "9-2", "-o", &out],
            2,
            INVALID,
            "9-2",
        ),
        row(
            &["get", "existing", "--range", "abc", "-o", &out],
            2,
            INVALID,
            "abc",
        ),
        row(
            &["get", "existing", "--range", "6000-", "-o", &out],
            2,
            &["INVALID_ARGUMENT"],
            "range",
        ),
        row(
            &["get", "existing", "--range", "900000-", "-o", &out],
            2,
            &["INVALID_ARGUMENT", "OUT_OF_RANGE"],
            "range",
        ),
        // Delete.
        row(&["rm", "bad.id"], 2, INVALID, "'.'"),
        row(&["rm", "missing"], 1, NOT_FOUND, "missing"),
        row(&["rm", "existing", "-n", "a.b"], 2, INVALID, "namespace"),
        // List, ListRemote.
        row(&["ls", "-n", "bad.ns"], 2, INVALID, "namespace"),
        row(&["ls", "-n", "sp ace"], 2, INVALID, "namespace"),
        row(&["ls", "--status", "bogus"], 2, INVALID, "bogus"),
        row(&["ls", "--remote", "-n", "bad.ns"], 2, INVALID, "namespace"),
        row(&["ls", "--remote", "--flag", "bogus"], 2, INVALID, "bogus"),
        // Retry, SetPriority.
        row(&["retry", "bad.id"], 2, INVALID, "'.'"),
        row(&["retry", "a b"], 2, INVALID, "' '"),
        row(&["retry", "missing"], 1, NOT_FOUND, "missing"),
        row(
            &["retry", "existing"],
            1,
            &["FAILED_PRECONDITION"],
            "existing",
        ),
        row(&["priority", "bad.id", "high"], 2, INVALID, "'.'"),
        row(&["priority", "é", "low"], 2, INVALID, "'é'"),
        row(&["priority", "missing", "high"], 1, NOT_FOUND, "missing"),
        row(&["priority", "existing", "soon"], 2, INVALID, "soon"),
        // Pause, Resume.
        row(&["pause", "-n", "bad.ns"], 2, INVALID, "namespace"),
        row(&["pause", "-n", "../x"], 2, INVALID, "namespace"),
        row(&["resume", "-n", "bad ns"], 2, INVALID, "namespace"),
        // GetFlags, SetFlags.
        row(&["flags", "bad.id"], 2, INVALID, "'.'"),
        row(
            &["flags", "existing", "-n", "bad/ns"],
            2,
            INVALID,
            "namespace",
        ),
        row(
            &["flags", "missing"],
            1,
            NOT_FOUND,
            "not found on the remote",
        ),
        row(
            &["flags", "existing", "--set", "bogus"],
            2,
            INVALID,
            "bogus",
        ),
        row(
            &["flags", "missing", "--set", "processed"],
            1,
            NOT_FOUND,
            "not found on the remote",
        ),
        // Verify, SetLimits.
        row(&["verify", "--id", "bad.id"], 2, INVALID, "'.'"),
        row(&["verify", "-n", "bad.ns"], 2, INVALID, "namespace"),
        row(&["limits", "--transfers", "0"], 2, INVALID, "transfers"),
        row(&["limits", "--up", "fast"], 2, INVALID, "fast"),
    ];

    let mut failures = check_rows(a.ctl(), &rows, true)?;

    // An unreachable daemon: exit 3 with a message saying how to start it.
    let nowhere = Blobctl::new(&env.root().join("no-daemon.sock"))?;
    let o = nowhere.run(&["status"])?;
    if o.code != 3 || !o.stderr.contains("blobsyncd") {
        failures.push(format!(
            "unreachable daemon: exit {} stderr {}",
            o.code,
            o.stderr.trim()
        ));
    }

    // Nothing was stored, nothing changed.
    let rows_after = a.ctl().ls()?;
    let ids: Vec<(&str, &str, &str)> = rows_after
        .iter()
        .map(|r| (r.namespace.as_str(), r.id.as_str(), r.status.as_str()))
        .collect();
    if ids != [("default", "existing", "SYNCED")] {
        failures.push(format!("daemon holds {ids:?} after the bad requests"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len() + 1,
        failures.join("\n")
    );
    assert_converged(
        &[&a],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(60),
    )?;
    Ok(())
}

/// blobsync.proto: PutPath fails with "NOT_FOUND / PERMISSION_DENIED when the daemon cannot
/// open `path`".
#[test]
fn put_by_path_of_a_missing_file_is_not_found() -> TestResult {
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let missing = a.dir().join("no-such-file").display().to_string();
    let o = a.ctl().run(&["put", &missing, "--id", "x", "--by-path"])?;
    let err: serde_json::Value = serde_json::from_str(o.stderr.trim()).unwrap_or_default();
    assert_eq!(
        (o.code, err["error"]["code"].as_str()),
        (1, Some("NOT_FOUND")),
        "{}",
        o.stderr
    );
    assert!(a.ctl().ls()?.is_empty());
    Ok(())
}
