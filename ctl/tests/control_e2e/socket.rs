//! Who reaches the daemon's socket, and what happens when nobody is there: no daemon (exit
//! 3, naming the socket and how to start one), a stale socket file replaced while a running
//! daemon's is not, another user's process refused by peer uid, and a Python client that only
//! knows the socket and finds the service by reflection.

use super::*;

#[test]
fn no_daemon_exits_3_naming_the_socket_and_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-here.sock");
    for args in [&["status"][..], &["ls"], &["put", "-"], &["version"]] {
        let (code, _out, err) = ctl(&sock, args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(&sock.display().to_string()), "{err}");
        assert!(err.contains("blobsyncd --foreground"), "{err}");
    }
    let (code, doc) = ctl_json_err(&sock, &["status"]);
    assert_eq!(code, 3);
    assert_eq!(doc["error"]["code"], "UNREACHABLE");
}

#[test]
fn a_stale_socket_is_replaced_and_a_running_daemon_is_not() {
    let env = TestEnv::new().unwrap();
    let mut d = start_daemon(&env, "stale");
    let file = env.root().join("f");
    write_file(&file, 10, 1);
    ctl_json(
        d.socket(),
        &[
            "put",
            file.to_str().unwrap(),
            "--id",
            "keep",
            "--local-only",
        ],
    );
    d.kill9();
    assert!(d.socket().exists(), "kill -9 leaves the socket file behind");
    d.restart(&env).unwrap();
    assert_eq!(ctl_json(d.socket(), &["ls"])["blobs"][0]["id"], "keep");

    // A second daemon on the same socket refuses to start and says why.
    let out = Command::new(bins::bin_path(bins::DAEMON).unwrap())
        .args(["--foreground", "--config"])
        .arg(d.config_path())
        .arg("--socket")
        .arg(d.socket())
        .env("HOME", d.dir().join("home"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another blobsyncd is running"), "{err}");
    // And the first one still answers.
    ctl_json(d.socket(), &["status"]);
}

#[test]
fn another_users_process_is_refused() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run blobctl as another user");
        return;
    }
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "peer");
    // Open the door on purpose: the peer check must hold even when the file modes do not.
    use std::os::unix::fs::PermissionsExt;
    let mut p = d.socket().to_path_buf();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    while let Some(parent) = p.parent() {
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o055)).unwrap();
        if parent == env.root() || parent == Path::new("/") {
            break;
        }
        p = parent.to_path_buf();
    }
    use std::os::unix::process::CommandExt;
    let out = Command::new(ctl_bin())
        .args(["--socket", d.socket().to_str().unwrap(), "--json", "status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // The modes above open the env's own dirs; if an ancestor of the temp dir still shuts out
    // uid 65534, the peer check was never reached: that is a failure, not a pass.
    assert!(
        !err.contains("Permission denied (os error 13)"),
        "uid 65534 cannot reach the socket, so the peer check went untested; put the temp dir \
         where any user can traverse (TMPDIR=/tmp): {err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    let doc: Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(doc["error"]["code"], "PERMISSION_DENIED", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534"),
        "{doc}"
    );
}

#[test]
fn a_python_client_lists_services_by_reflection_and_calls_status() {
    let script = bins::workspace_root().join("tests/python/control_client.py");
    let has_grpc = |py: &str| {
        Command::new(py)
            .args(["-c", "import grpc, grpc_reflection"])
            .status()
            .is_ok_and(|s| s.success())
    };
    // .ci/run sets BLOBSYNC_PYTHON to its venv's python, which must have the libraries;
    // without it, python3 from PATH, installing them if it can.
    let from_env = std::env::var("BLOBSYNC_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(py) = &from_env {
        assert!(
            has_grpc(py),
            "BLOBSYNC_PYTHON={py} cannot import grpc and grpc_reflection"
        );
    }
    let python = from_env.as_deref().unwrap_or("python3");
    if !has_grpc(python) {
        // Test setup: install the client libraries (CI's .ci/run does this up front).
        let pip = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "grpcio",
                "grpcio-reflection",
            ])
            .status();
        match pip {
            Ok(s) if s.success() && has_grpc(python) => {}
            Ok(s) => panic!("pip install grpcio grpcio-reflection failed ({s}); run it by hand"),
            Err(e) => {
                eprintln!("skipped: no python3 with pip to install grpcio ({e})");
                return;
            }
        }
    }
    let env = TestEnv::new().unwrap();
    let d = start_daemon(&env, "py");
    let out = Command::new(python)
        .arg(&script)
        .arg(d.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in ["blobsync.v1.Control", "grpc.health.v1.Health"] {
        assert!(services.contains(&s), "{services:?}");
    }
    assert_eq!(doc["health"], "SERVING");
    assert_eq!(doc["version"]["api_version"], pb::API_VERSION);
    assert!(
        doc["status"]["daemon_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{doc}"
    );
}
