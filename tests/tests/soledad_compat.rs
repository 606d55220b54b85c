//! Soledad compatibility of blobsync-server (README.md, "Soledad compatibility"; server/README.md).
//!
//! The genuine Soledad 0.10.7 client (`BlobManager`, from PyPI, Python 2.7) runs its HTTP code
//! unmodified against the server (`tests/python/soledad_client_conformance.py`); only its
//! local SQLCipher store is plain sqlite3. A second test pins down, byte by byte, what the
//! server answers each dialect: `Token` credentials, trailing slashes, Python booleans, 200
//! versus 201 on a put, the `Tag` header and the two `/stream` download framings.

mod soledad_common;

use std::process::Command;

use base64::Engine;
use blobsync_tests::env::TestResult;
use blobsync_tests::rawhttp::{self, Response};
use blobsync_tests::{HarnessError, ServerOpts, ServerProc, TestEnv};

/// Checks the Python driver prints, one per `check`/`expect_error`; fewer means it stopped.
const CLIENT_CHECKS: usize = 25;

#[test]
fn genuine_soledad_client_works_against_blobsync_server() -> TestResult {
    let Some(python) =
        soledad_common::venv_python().map_err(|e| HarnessError::protocol("venv", e))?
    else {
        return Ok(());
    };
    let env = TestEnv::new()?;
    let server = ServerProc::start(&env, ServerOpts::default())?;
    let token = server.add_user("alice")?;
    let work = env.subdir("soledad-client")?;
    let out = Command::new(&python)
        .arg("-W")
        .arg("ignore")
        .arg(soledad_common::python_dir().join("soledad_client_conformance.py"))
        .arg(server.url())
        .arg("alice")
        .arg(&token)
        .arg(&work)
        .output()
        .map_err(|e| HarnessError::io("run the Soledad client", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let oks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        out.status.success() && oks == CLIENT_CHECKS,
        "Soledad client: {} with {oks}/{CLIENT_CHECKS} checks passed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // What the client did is what blobsync's own API sees.
    let mut default = server.list_ids(&token, "alice", "default")?;
    default.sort();
    assert_eq!(default, ["b1", "from-b", "m1"]);
    let mut photos = server.list_ids(&token, "alice", "photos")?;
    photos.sort();
    assert_eq!(photos, ["b2", "s0", "s1", "s2", "s3"]);
    Ok(())
}

fn token_auth(user: &str, token: &str) -> String {
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
    format!("Token {creds}")
}

fn req(server: &ServerProc, auth: &str, method: &str, path: &str, body: &[u8]) -> Response {
    req_with(server, &[("Authorization", auth)], method, path, body)
}

fn req_with(
    server: &ServerProc,
    headers: &[(&str, &str)],
    method: &str,
    path: &str,
    body: &[u8],
) -> Response {
    rawhttp::request(server.addr(), method, path, headers, body).expect("request")
}

fn tag(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(&bytes[bytes.len().saturating_sub(16)..])
}

#[test]
fn server_answers_soledad_and_blobsync_dialects() -> TestResult {
    let env = TestEnv::new()?;
    let server = ServerProc::start(&env, ServerOpts::default())?;
    let alice = server.add_user("alice")?;
    let bob = server.add_user("bob")?;
    let soledad = token_auth("alice", &alice);
    let bearer = format!("Bearer {alice}");
    let client = ("x-blobsync-client", "blobsyncd/test");

    // Token credentials: the user they name must be the token's and the path's.
    let r = req(
        &server,
        &token_auth("bob", &alice),
        "GET",
        "/blobs/bob/",
        b"",
    );
    assert_eq!(
        r.status,
        401,
        "another user's name with alice's token: {}",
        r.text()
    );
    let r = req(&server, &soledad, "GET", "/blobs/bob/", b"");
    assert_eq!(
        r.status,
        403,
        "alice's credentials on bob's path: {}",
        r.text()
    );
    let r = req(&server, "Token !!!", "GET", "/blobs/alice/", b"");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("base64"), "{}", r.text());
    let r = req(&server, &token_auth("bob", &bob), "GET", "/blobs/bob/", b"");
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));

    // A put: 200 for Soledad, 201 + sequence number for blobsync (asked for, or Bearer).
    let one: Vec<u8> = (0..100u8).collect();
    let r = req(&server, &soledad, "PUT", "/blobs/alice/one", &one);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-blobsync-seq").is_none());
    let r = req_with(
        &server,
        &[("Authorization", &soledad), client],
        "PUT",
        "/blobs/alice/two",
        b"two two two",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.header("x-blobsync-seq").is_some());
    let r = req(&server, &bearer, "PUT", "/blobs/alice/three", b"3");
    assert_eq!(
        r.status,
        201,
        "an older daemon (Bearer, no header): {}",
        r.text()
    );
    let r = req(&server, &soledad, "PUT", "/blobs/alice/one", b"again");
    assert_eq!(r.status, 409, "{}", r.text());

    // GET carries Soledad's tag: the last 16 stored bytes.
    let r = req(&server, &soledad, "GET", "/blobs/alice/one", b"");
    assert_eq!((r.status, &r.body), (200, &one));
    assert_eq!(r.header("tag"), Some(tag(&one).as_str()));
    let r = req(&server, &bearer, "GET", "/blobs/alice/three", b"");
    assert_eq!(r.header("tag"), Some(tag(b"3").as_str()));

    // Python booleans, any case; anything else is still refused.
    let r = req(
        &server,
        &soledad,
        "GET",
        "/blobs/alice/?only_count=True",
        b"",
    );
    assert_eq!(
        r.json(),
        Some(serde_json::json!({"count": 3})),
        "{}",
        r.text()
    );
    let r = req(
        &server,
        &soledad,
        "GET",
        "/blobs/alice/one?only_flags=TRUE",
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    let r = req(&server, &soledad, "GET", "/blobs/alice/?deleted=False", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = req(&server, &soledad, "GET", "/blobs/alice/?deleted=maybe", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    // Tombstones are not counted (Soledad counts them).
    let r = req(&server, &soledad, "DELETE", "/blobs/alice/three", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = req(
        &server,
        &soledad,
        "GET",
        "/blobs/alice/?only_count=true",
        b"",
    );
    assert_eq!(r.json(), Some(serde_json::json!({"count": 2})));

    // /stream downloads: Soledad's framing for Soledad, blobsync's when asked for.
    let ids = br#"["one","two"]"#;
    let path = "/stream/alice/?direction=download";
    let r = req(&server, &soledad, "POST", path, ids);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut want = format!("{:08x}{} ", one.len(), tag(&one)).into_bytes();
    want.extend_from_slice(&one);
    want.extend_from_slice(format!("{:08x}{} ", 11, tag(b"two two two")).as_bytes());
    want.extend_from_slice(b"two two two");
    assert_eq!(r.body, want, "Soledad framing: {:?}", r.text());
    let r = req_with(
        &server,
        &[("Authorization", &soledad), client],
        "POST",
        path,
        ids,
    );
    let mut want = blobsync_shared::wire::encode_frame_header(
        &blobsync_shared::BlobId::new("one").expect("an id"),
        Some(100),
    );
    want.extend_from_slice(&one);
    assert!(
        r.body.starts_with(&want),
        "blobsync framing: {:?}",
        r.text()
    );
    // Soledad's framing cannot say "missing": the request fails whole.
    let r = req(&server, &soledad, "POST", path, br#"["one","three"]"#);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("three"), "{}", r.text());
    Ok(())
}
