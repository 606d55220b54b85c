//! Scenario 8 (HTTP half): a table of bad requests against the real `blobsync-server`.
//!
//! Every row must get the documented status and a non-empty message, and afterwards the
//! server must hold exactly what the good rows stored: bad input stores nothing and leaves no
//! temp file behind.

use blobsync_tests::env::TestResult;
use blobsync_tests::rawhttp::{self, Response};
use blobsync_tests::{Result, ServerOpts, ServerProc, TestEnv, find_temp_files};

/// Small enough to test "over max size" cheaply.
const MAX_BLOB: u64 = 100_000;
const CONTENT: &[u8] = b"0123456789";

#[derive(Clone, Copy)]
enum Tok {
    None,
    Alice,
    Bob,
    App,
    Raw(&'static str),
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    tok: Tok,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    want: u16,
}

fn case(name: &'static str, method: &'static str, path: &str, tok: Tok, want: u16) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        tok,
        headers: Vec::new(),
        body: Vec::new(),
        want,
    }
}

impl Case {
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
}

struct Tokens {
    alice: String,
    bob: String,
    app: String,
}

fn send(server: &ServerProc, toks: &Tokens, c: &Case) -> Result<Response> {
    let mut headers: Vec<(&str, String)> = Vec::new();
    let auth = match c.tok {
        Tok::None => None,
        Tok::Alice => Some(format!("Bearer {}", toks.alice)),
        Tok::Bob => Some(format!("Bearer {}", toks.bob)),
        Tok::App => Some(format!("Bearer {}", toks.app)),
        Tok::Raw(v) => Some(v.to_string()),
    };
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    headers.extend(c.headers.iter().map(|(k, v)| (*k, v.clone())));
    let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rawhttp::request(server.addr(), c.method, &c.path, &hs, &c.body)
}

fn stream_body(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = header.as_bytes().to_vec();
    b.extend_from_slice(data);
    b
}

#[test]
fn bad_http_requests_get_clear_errors_and_store_nothing() -> TestResult {
    let env = TestEnv::new()?;
    let server = ServerProc::start(
        &env,
        ServerOpts {
            extra_args: vec!["--max-blob-size".into(), MAX_BLOB.to_string()],
            ..Default::default()
        },
    )?;
    let toks = Tokens {
        alice: server.add_user("alice")?,
        bob: server.add_user("bob")?,
        app: server.add_app("mailer")?,
    };
    // The one blob the good rows create before the table runs.
    let r = server.request(&toks.alice, "PUT", "/blobs/alice/existing", CONTENT)?;
    assert_eq!(r.status, 201, "setup PUT: {}", r.text());

    let long = "a".repeat(129);
    let cases = vec![
        // Auth.
        case("no token", "GET", "/blobs/alice", Tok::None, 401),
        case(
            "basic auth",
            "GET",
            "/blobs/alice",
            Tok::Raw("Basic YWxpY2U6eA=="),
            401,
        ),
        case(
            "unknown token",
            "GET",
            "/blobs/alice",
            Tok::Raw("Bearer nope"),
            401,
        ),
        case(
            "empty bearer",
            "GET",
            "/blobs/alice",
            Tok::Raw("Bearer "),
            401,
        ),
        case("other user's token", "GET", "/blobs/alice", Tok::Bob, 403),
        case(
            "other user's blob",
            "GET",
            "/blobs/alice/existing",
            Tok::Bob,
            403,
        ),
        case(
            "bob deletes alice's blob",
            "DELETE",
            "/blobs/alice/existing",
            Tok::Bob,
            403,
        ),
        case("app token on /blobs", "GET", "/blobs/alice", Tok::App, 403),
        case(
            "app token PUT on /blobs",
            "PUT",
            "/blobs/alice/viaapp",
            Tok::App,
            403,
        )
        .body("x"),
        case(
            "user token on /incoming",
            "PUT",
            "/incoming/alice/m1",
            Tok::Alice,
            403,
        )
        .body("x"),
        case("metrics without token", "GET", "/metrics", Tok::None, 401),
        case(
            "incoming for unknown user",
            "PUT",
            "/incoming/nobody/m1",
            Tok::App,
            404,
        )
        .body("x"),
        case(
            "incoming bad user name",
            "PUT",
            "/incoming/no.body/m1",
            Tok::App,
            400,
        )
        .body("x"),
        case(
            "incoming bad id",
            "PUT",
            "/incoming/alice/m.1",
            Tok::App,
            400,
        )
        .body("x"),
        // Ids and namespaces.
        case(
            "id with a dot",
            "PUT",
            "/blobs/alice/bad.id",
            Tok::Alice,
            400,
        )
        .body("x"),
        case(
            "id too long",
            "PUT",
            &format!("/blobs/alice/{long}"),
            Tok::Alice,
            400,
        )
        .body("x"),
        case(
            "id percent-encoded slash",
            "PUT",
            "/blobs/alice/a%2Fb",
            Tok::Alice,
            400,
        )
        .body("x"),
        case(
            "id with space",
            "GET",
            "/blobs/alice/a%20b",
            Tok::Alice,
            400,
        ),
        case(
            "namespace with a dot",
            "PUT",
            "/blobs/alice/ok1?namespace=a.b",
            Tok::Alice,
            400,
        )
        .body("x"),
        case(
            "empty namespace",
            "PUT",
            "/blobs/alice/ok2?namespace=",
            Tok::Alice,
            400,
        )
        .body("x"),
        case(
            "namespace too long",
            "GET",
            &format!("/blobs/alice?namespace={long}"),
            Tok::Alice,
            400,
        ),
        case(
            "namespace path traversal",
            "GET",
            "/blobs/alice?namespace=..%2F..",
            Tok::Alice,
            400,
        ),
        // Query parameters.
        case(
            "unknown query parameter",
            "GET",
            "/blobs/alice?colour=red",
            Tok::Alice,
            400,
        ),
        case(
            "duplicate query parameter",
            "GET",
            "/blobs/alice?limit=1&limit=2",
            Tok::Alice,
            400,
        ),
        case("limit zero", "GET", "/blobs/alice?limit=0", Tok::Alice, 400),
        case(
            "limit not a number",
            "GET",
            "/blobs/alice?limit=ten",
            Tok::Alice,
            400,
        ),
        case(
            "negative since",
            "GET",
            "/blobs/alice?since=-1",
            Tok::Alice,
            400,
        ),
        case(
            "since ahead of the server",
            "GET",
            "/blobs/alice?since=999999",
            Tok::Alice,
            400,
        ),
        case(
            "since with order_by",
            "GET",
            "/blobs/alice?since=0&order_by=date",
            Tok::Alice,
            400,
        ),
        case(
            "unknown order_by",
            "GET",
            "/blobs/alice?order_by=size",
            Tok::Alice,
            400,
        ),
        case(
            "unknown filter_flag",
            "GET",
            "/blobs/alice?filter_flag=DONE",
            Tok::Alice,
            400,
        ),
        case(
            "lowercase filter_flag",
            "GET",
            "/blobs/alice?filter_flag=pending",
            Tok::Alice,
            400,
        ),
        case(
            "detail not a boolean",
            "GET",
            "/blobs/alice?detail=maybe",
            Tok::Alice,
            400,
        ),
        case(
            "bad percent-encoding",
            "GET",
            "/blobs/alice?namespace=%zz",
            Tok::Alice,
            400,
        ),
        case(
            "after with a bad id",
            "GET",
            "/blobs/alice?after=a.b",
            Tok::Alice,
            400,
        ),
        // Flags.
        case(
            "unknown flag",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            406,
        )
        .body(r#"["DONE"]"#),
        case(
            "flags not JSON",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            400,
        )
        .body("PROCESSED"),
        case(
            "flags not a list",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            400,
        )
        .body(r#"{"flag":"PROCESSED"}"#),
        case(
            "flags body too large",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            413,
        )
        .body(format!("[{}\"PENDING\"]", "\"PENDING\",".repeat(1000))),
        case(
            "flags on a missing blob",
            "POST",
            "/blobs/alice/missing",
            Tok::Alice,
            404,
        )
        .body(r#"["PROCESSED"]"#),
        // Missing blobs and wrong methods.
        case(
            "get missing",
            "GET",
            "/blobs/alice/missing",
            Tok::Alice,
            404,
        ),
        case(
            "get in another namespace",
            "GET",
            "/blobs/alice/existing?namespace=other",
            Tok::Alice,
            404,
        ),
        case(
            "delete missing",
            "DELETE",
            "/blobs/alice/missing",
            Tok::Alice,
            404,
        ),
        case(
            "put existing id",
            "PUT",
            "/blobs/alice/existing",
            Tok::Alice,
            409,
        )
        .body("other"),
        case(
            "PATCH a blob",
            "PATCH",
            "/blobs/alice/existing",
            Tok::Alice,
            405,
        ),
        case(
            "DELETE a listing",
            "DELETE",
            "/blobs/alice",
            Tok::Alice,
            405,
        ),
        case("GET a stream", "GET", "/stream/alice", Tok::Alice, 405),
        case("unknown route", "GET", "/nothing/here", Tok::Alice, 404),
        case(
            "too many path segments",
            "GET",
            "/blobs/alice/a/b",
            Tok::Alice,
            404,
        ),
        // Ranges (the blob is 10 bytes).
        case(
            "range ends before start",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .header("Range", "bytes=5-2"),
        case(
            "range past the end",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .header("Range", "bytes=10-"),
        case(
            "several ranges",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .header("Range", "bytes=0-1,3-4"),
        case(
            "range not in bytes",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .header("Range", "pages=0-1"),
        case(
            "range garbage",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .header("Range", "bytes=x-y"),
        case(
            "empty suffix range",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .header("Range", "bytes=-0"),
        // Sizes.
        case(
            "declared over max size",
            "PUT",
            "/blobs/alice/big1",
            Tok::Alice,
            413,
        )
        .body(vec![7u8; MAX_BLOB as usize + 1]),
        // Stream uploads.
        case(
            "stream without direction",
            "POST",
            "/stream/alice",
            Tok::Alice,
            400,
        )
        .body("[]\n"),
        case(
            "stream unknown direction",
            "POST",
            "/stream/alice?direction=sideways",
            Tok::Alice,
            400,
        )
        .body("[]\n"),
        case(
            "stream header not JSON",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body("not json\nabc"),
        case(
            "stream header without newline",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(r#"[["s1",1]]"#),
        case(
            "stream bad id",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s.1\",1]]\n", b"x")),
        case(
            "stream negative size",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s2\",-1]]\n", b"x")),
        case(
            "stream pair of three",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s3\",1,2]]\n", b"x")),
        case(
            "stream truncated blob",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s4\",5]]\n", b"abc")),
        case(
            "stream second blob truncated",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s5\",3],[\"s6\",5]]\n", b"abcde")),
        case(
            "stream trailing bytes",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s7\",2]]\n", b"abcdef")),
        case(
            "stream duplicate id",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .body(stream_body("[[\"s8\",1],[\"s8\",1]]\n", b"ab")),
        case(
            "stream blob over max size",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            200,
        )
        .body(stream_body(
            &format!("[[\"s9\",{}]]\n", MAX_BLOB + 1),
            &vec![1u8; MAX_BLOB as usize + 1],
        )),
        case(
            "stream download not JSON",
            "POST",
            "/stream/alice?direction=download",
            Tok::Alice,
            400,
        )
        .body("existing"),
        case(
            "stream download bad id",
            "POST",
            "/stream/alice?direction=download",
            Tok::Alice,
            400,
        )
        .body(r#"["a.b"]"#),
        // Oversized headers.
        case(
            "header block far over the limit",
            "GET",
            "/blobs/alice",
            Tok::Alice,
            431,
        )
        .header("X-Padding", "p".repeat(512 * 1024)),
        // Good rows, so the table would notice a server that rejects everything.
        case("healthz", "GET", "/healthz", Tok::None, 200),
        case("list", "GET", "/blobs/alice", Tok::Alice, 200),
        case("get", "GET", "/blobs/alice/existing", Tok::Alice, 200),
        case(
            "valid range",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            206,
        )
        .header("Range", "bytes=2-4"),
        case(
            "suffix range",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            206,
        )
        .header("Range", "bytes=-3"),
        case(
            "bob's own empty listing",
            "GET",
            "/blobs/bob",
            Tok::Bob,
            200,
        ),
    ];

    let mut failures = Vec::new();
    for c in &cases {
        match send(&server, &toks, c) {
            Ok(r) => {
                if r.status != c.want {
                    failures.push(format!(
                        "{}: {} {} -> {} (want {}): {}",
                        c.name,
                        c.method,
                        short(&c.path),
                        r.status,
                        c.want,
                        r.text().trim()
                    ));
                } else if r.status >= 400 && r.status != 431 && r.text().trim().is_empty() {
                    // 431 comes from hyper before routing; its reason phrase is the message.
                    failures.push(format!(
                        "{}: status {} with an empty message",
                        c.name, r.status
                    ));
                } else if c.name == "valid range" && r.body != b"234" {
                    failures.push(format!("valid range: body {:?}", r.text()));
                } else if c.name == "suffix range" && r.body != b"789" {
                    failures.push(format!("suffix range: body {:?}", r.text()));
                } else if c.name == "get" && r.body != CONTENT {
                    failures.push(format!("get: body {:?}", r.text()));
                } else if c.want == 401 && r.header("www-authenticate").is_none() {
                    failures.push(format!("{}: 401 without WWW-Authenticate", c.name));
                } else if c.name == "stream blob over max size" {
                    let v = r.json().unwrap_or_default();
                    if v.get("s9").and_then(|s| s.as_u64()) != Some(413) {
                        failures.push(format!(
                            "stream over max: want {{\"s9\":413}}, got {}",
                            r.text()
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: no response: {e}", c.name)),
        }
    }

    // Malformed at the HTTP level: written byte for byte.
    let auth = format!("Authorization: Bearer {}\r\n", toks.alice);
    // (name, bytes, want, half-close after writing: a client that died mid-request)
    let raw_cases: Vec<(&str, Vec<u8>, Option<u16>, bool)> = vec![
        (
            "truncated PUT body (Content-Length 1000, 10 sent)",
            format!("PUT /blobs/alice/trunc HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000\r\n\r\n0123456789").into_bytes(),
            None,
            true,
        ),
        (
            "truncated chunked PUT body",
            format!("PUT /blobs/alice/trunc2 HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n10\r\n0123").into_bytes(),
            None,
            true,
        ),
        (
            "truncated stream upload",
            format!("POST /stream/alice?direction=upload HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 500\r\n\r\n[[\"t1\",3]]\nabc[[").into_bytes(),
            None,
            true,
        ),
        (
            "chunked PUT over max size",
            {
                let mut b = format!("PUT /blobs/alice/big2 HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
                let chunk = vec![b'z'; 50_000];
                for _ in 0..3 {
                    b.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    b.extend_from_slice(&chunk);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(b"0\r\n\r\n");
                b
            },
            Some(413),
            false,
        ),
        (
            "garbage request line",
            b"HELLO\r\n\r\n".to_vec(),
            Some(400),
            false,
        ),
    ];
    for (name, bytes, want, half_close) in &raw_cases {
        match (rawhttp::raw_opts(server.addr(), bytes, *half_close), want) {
            // A cut-off request may get a 400 or just a closed connection; both are fine as
            // long as nothing is stored (checked below).
            (Ok(r), None) if r.status == 400 => {}
            (Err(_), None) => {}
            (Ok(r), Some(w)) if r.status == *w => {}
            (Ok(r), w) => failures.push(format!(
                "{name}: got {} (want {w:?}): {}",
                r.status,
                r.text().trim()
            )),
            (Err(e), Some(w)) => failures.push(format!("{name}: no response (want {w}): {e}")),
        }
    }

    // Nothing the bad rows sent is stored, in any namespace, for anybody.
    let ids = server.list_ids(&toks.alice, "alice", "default")?;
    if ids != ["existing"] {
        failures.push(format!(
            "alice's default namespace holds {ids:?}, want [\"existing\"]"
        ));
    }
    for (tok, user, ns) in [
        (&toks.alice, "alice", "other"),
        (&toks.alice, "alice", "MX"),
        (&toks.bob, "bob", "default"),
    ] {
        let ids = server.list_ids(tok, user, ns)?;
        if !ids.is_empty() {
            failures.push(format!("{user}/{ns} holds {ids:?}, want none"));
        }
    }
    let r = server.request(&toks.alice, "GET", "/blobs/alice?since=0", b"")?;
    let changes = r
        .json()
        .and_then(|v| v.get("changes").and_then(|c| c.as_array()).map(|c| c.len()));
    if changes != Some(1) {
        failures.push(format!(
            "alice's change log: want 1 change, got {}",
            r.text()
        ));
    }
    let r = server.request(&toks.alice, "GET", "/blobs/alice/existing", b"")?;
    if r.body != CONTENT {
        failures.push(format!("existing blob changed: {:?}", r.text()));
    }
    // Temp files of refused uploads are removed as the request ends; give the blocking
    // unlink a moment, then insist.
    let temps = blobsync_tests::wait::wait_until(
        "temp files of refused uploads to be removed",
        std::time::Duration::from_secs(5),
        || {
            let t = find_temp_files(server.data_dir());
            Ok(if t.is_empty() {
                blobsync_tests::wait::Poll::Ready(t)
            } else {
                blobsync_tests::wait::Poll::Pending(format!("{t:?}"))
            })
        },
    );
    if let Err(e) = temps {
        failures.push(e.to_string());
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len() + raw_cases.len(),
        failures.join("\n")
    );
    Ok(())
}

fn short(path: &str) -> String {
    if path.len() > 60 {
        format!("{}...", &path[..60])
    } else {
        path.to_string()
    }
}

/// `--max-header-bytes` bounds a request's header block. hyper enforces it on its read
/// buffer, so the bound is approximate (a 100 KiB block passes the 64 KiB default); a block
/// several times the configured bound is always refused.
#[test]
fn header_block_over_the_configured_limit_gets_431() -> TestResult {
    let env = TestEnv::new()?;
    let server = ServerProc::start(
        &env,
        ServerOpts {
            extra_args: vec!["--max-header-bytes".into(), "16384".into()],
            ..Default::default()
        },
    )?;
    let alice = server.add_user("alice")?;
    let auth = format!("Bearer {alice}");
    let padding = "p".repeat(100 * 1024);
    let r = rawhttp::request(
        server.addr(),
        "GET",
        "/blobs/alice",
        &[("Authorization", &auth), ("X-Padding", &padding)],
        b"",
    )?;
    assert_eq!(r.status, 431, "{}", r.text());
    Ok(())
}
