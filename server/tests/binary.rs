//! The real `blobsync-server` binary: CLI, startup line, kill -9 during an upload, restart,
//! SIGTERM exit status, and fsck.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_blobsync-server");

fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run blobsync-server")
}

/// A served binary; killed and reaped on drop.
struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Proc {
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn blobsync-server serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Proc { child, addr }
}

fn temp_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(temp_files(&p));
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn user_and_app_commands() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let out = cli(&data, &["user", "add", "alice", "--quota", "1000"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    assert_eq!(token.len(), 64, "{stdout}");
    let out = cli(&data, &["user", "add", "alice"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("blobsync-server: user \"alice\" already exists; nothing was changed")
            && err.contains("user remove alice")
            && !err.contains("Caused by"),
        "{err}"
    );
    let out = cli(&data, &["user", "add", "../evil"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid"));
    let list = String::from_utf8(cli(&data, &["user", "list"]).stdout).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice") && l.contains("1000 B")),
        "{list}"
    );
    let list = String::from_utf8(cli(&data, &["user", "list", "--bytes"]).stdout).unwrap();
    let alice: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("alice"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(alice.get(3), Some(&"1000"), "{list}");
    let out = cli(&data, &["app", "add", "mail"]);
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .len(),
        64
    );
    let apps = String::from_utf8(cli(&data, &["app", "list"]).stdout).unwrap();
    let rows: Vec<Vec<&str>> = apps
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [vec!["APP", "NAMESPACES"], vec!["mail", "MX"]],
        "{apps}"
    );
    assert!(cli(&data, &["user", "remove", "alice"]).status.success());
    assert!(!cli(&data, &["user", "remove", "alice"]).status.success());
    assert!(
        !String::from_utf8(cli(&data, &["user", "list"]).stdout)
            .unwrap()
            .contains("alice")
    );
}

#[tokio::test]
async fn kill_9_mid_upload_then_restart_and_fsck_show_no_partial_blob() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let out = cli(&data, &["user", "add", "alice"]);
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let mut server = serve(&data);
    let client = common::client();
    let url = |p: &str, addr: &str| format!("http://{addr}{p}");
    let r = common::send(
        &client,
        "PUT",
        &url("/blobs/alice/done", &server.addr),
        Some(&token),
        common::body("complete"),
        &[],
    )
    .await;
    assert_eq!(r.status, 201);

    // A large upload, cut off by SIGKILL halfway.
    let mut tcp = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        tcp,
        "PUT /blobs/alice/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n\r\n",
        64 << 20
    )
    .unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..4 {
        tcp.write_all(&chunk).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while temp_files(&data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no temp file appeared during the upload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(tcp);
    assert!(!data.join("alice/default/b/big/big").exists());

    // fsck before restart: the cut-off upload is a temp file, never a blob.
    let out = cli(&data, &["fsck"]);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains("temp file of a cut-off upload"), "{report}");
    assert!(report.contains("checked 1 blobs"), "{report}");
    assert!(!report.contains("MISSING"), "{report}");

    // Restart: temp files are cleaned, the finished blob is intact, the cut one absent.
    let mut server = serve(&data);
    assert!(temp_files(&data).is_empty());
    let ids: Vec<String> = common::send(
        &client,
        "GET",
        &url("/blobs/alice", &server.addr),
        Some(&token),
        common::body(""),
        &[],
    )
    .await
    .json();
    assert_eq!(ids, ["done"]);
    let r = common::send(
        &client,
        "GET",
        &url("/blobs/alice/big", &server.addr),
        Some(&token),
        common::body(""),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    let r = common::send(
        &client,
        "GET",
        &url("/blobs/alice/done", &server.addr),
        Some(&token),
        common::body(""),
        &[],
    )
    .await;
    assert_eq!(&r.body[..], b"complete");
    // The same id can be uploaded again after the crash.
    let r = common::send(
        &client,
        "PUT",
        &url("/blobs/alice/big", &server.addr),
        Some(&token),
        common::body(vec![1u8; 1000]),
        &[],
    )
    .await;
    assert_eq!(r.status, 201);

    // fsck refuses to run beside the server (it would race uploads).
    let out = cli(&data, &["fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));

    // SIGTERM: graceful exit with status 0.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let out = cli(&data, &["fsck"]);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert!(report.contains("checked 2 blobs: clean"), "{report}");
}

#[tokio::test]
async fn instance_command_prints_the_id_every_answer_carries() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let out = cli(&data, &["instance"]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    let out = cli(&data, &["instance"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);
    let server = serve(&data);
    let r = common::send(
        &common::client(),
        "GET",
        &format!("http://{}/healthz", server.addr),
        None,
        common::body(""),
        &[],
    )
    .await;
    assert_eq!(
        r.header(blobsync_shared::wire::INSTANCE_HEADER),
        Some(id.as_str())
    );
}
