//! blobctl with the daemon's remote in view: a real `blobsync-server` (remote listing with
//! flags, a lazy blob fetched on demand by `get`) and a remote nobody answers on (local work
//! goes on, `sync --wait` and `status` say why).

use super::*;

#[test]
fn with_a_real_server_flags_remote_listing_and_get_fetches_a_lazy_blob_on_demand() {
    use blobsync_tests::{ServerOpts, ServerProc};
    let env = TestEnv::new().unwrap();
    let server = ServerProc::start(&env, ServerOpts::default()).unwrap();
    let token = server.add_user("alice").unwrap();
    let key = env.root().join("alice.key");
    write_key_file(&key).unwrap();
    let remote = RemoteSpec::Http {
        url: server.url(),
        user: "alice".into(),
        token,
    };
    let mut opts = DaemonOpts::new(remote.clone(), &key);
    opts.time_scale = Some(0.01);
    let a = DaemonProc::start(&env, "laptop", opts.clone()).unwrap();
    opts.extra_toml = "[namespaces.MX]\npolicy = \"lazy\"\n".into();
    let b = DaemonProc::start(&env, "phone", opts).unwrap();

    let file = env.root().join("mail.eml");
    let data = write_file(&file, 200_000, 11);
    let put = ctl_json(
        a.socket(),
        &[
            "put",
            file.to_str().unwrap(),
            "--id",
            "m1",
            "-n",
            "MX",
            "--wait",
        ],
    );
    assert_eq!(put["status"], "SYNCED", "{put}");

    // Remote flags and listing go through the daemon to the server.
    let f = ctl_json(
        a.socket(),
        &["flags", "m1", "-n", "MX", "--set", "processed"],
    );
    assert_eq!(f["flags"], serde_json::json!(["PROCESSED"]));
    let listed = ctl_json(
        b.socket(),
        &["ls", "--remote", "-n", "MX", "--flag", "processed"],
    );
    assert_eq!(listed["blobs"][0]["id"], "m1", "{listed}");
    assert_eq!(
        listed["blobs"][0]["flags"],
        serde_json::json!(["PROCESSED"])
    );

    // The phone keeps MX lazy: after a sync it knows m1 but has not downloaded it.
    ctl_json(b.socket(), &["sync", "--wait"]);
    wait_status(b.socket(), "m1", "REMOTE_ONLY");
    let out = env.root().join("fetched.eml");
    let (code, doc) = ctl_json_err(
        b.socket(),
        &[
            "get",
            "m1",
            "-n",
            "MX",
            "--no-fetch",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "FAILED_PRECONDITION", "{doc}");
    assert!(!out.exists());
    // A ranged get fetches it on demand and cuts a range reaching past the end at the end
    // (the size is only known once it is here); later gets read the local copy.
    let tail = env.root().join("tail.eml");
    let g = ctl_json(
        b.socket(),
        &[
            "get",
            "m1",
            "-n",
            "MX",
            "--range",
            "199990-999999",
            "-o",
            tail.to_str().unwrap(),
        ],
    );
    assert_eq!(g["length"], 10, "{g}");
    assert_eq!(std::fs::read(&tail).unwrap(), &data[199_990..]);
    ctl_json(
        b.socket(),
        &["get", "m1", "-n", "MX", "-o", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let part = env.root().join("part.eml");
    ctl_json(
        b.socket(),
        &[
            "get",
            "m1",
            "-n",
            "MX",
            "--range",
            "100-199",
            "-o",
            part.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&part).unwrap(), &data[100..200]);
    let row = wait_status(b.socket(), "m1", "SYNCED");
    assert_eq!(row["size"], 200_000);
}

#[test]
fn an_unreachable_remote_is_reported_not_hidden() {
    let env = TestEnv::new().unwrap();
    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = env.root().join("k");
    write_key_file(&key).unwrap();
    let mut opts = DaemonOpts::new(
        RemoteSpec::Http {
            url: format!("http://127.0.0.1:{port}"),
            user: "alice".into(),
            token: "t".into(),
        },
        &key,
    );
    opts.time_scale = Some(0.01);
    let d = DaemonProc::start(&env, "offline", opts).unwrap();
    let sock = d.socket();
    // Local work goes on without the remote.
    let file = env.root().join("f");
    write_file(&file, 1000, 1);
    let put = ctl_json(sock, &["put", file.to_str().unwrap(), "--id", "queued"]);
    assert_eq!(put["status"], "PENDING_UPLOAD");
    // A waited sync exits 1 and says why, with the summary on stdout.
    let (code, out, err) = ctl(sock, &["--json", "sync", "--wait"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert!(doc["summary"]["error"].is_string(), "{doc}");
    let st = ctl_json(sock, &["status"]);
    assert_eq!(st["remote"]["reachable"], false, "{st}");
    assert!(st["remote"]["last_error"].is_string(), "{st}");
    let (code, doc) = ctl_json_err(sock, &["ls", "--remote"]);
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "UNAVAILABLE", "{doc}");
}
