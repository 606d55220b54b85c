//! The control gRPC service's one invalid-input suite: every invalid argument of every RPC,
//! including what blobctl's parser would never send (enum values out of range, page tokens
//! it never issued, put streams of the wrong shape), is refused with INVALID_ARGUMENT and a
//! message naming the problem, and leaves no blob and no temp file behind. Each row is (what
//! it is, a fragment the message must contain, the call). blobctl's own table is
//! `tests/tests/control_bad_input.rs`.

use super::*;

/// One call of the table, run later: the code it was answered with, and its message.
type Refusal = std::pin::Pin<Box<dyn std::future::Future<Output = (Code, String)> + Send>>;

/// `call!(c.rpc(request))`: the call on a clone of the client, as a [`Refusal`].
macro_rules! call {
    ($c:ident . $rpc:ident ( $req:expr )) => {{
        let mut client = $c.clone();
        let req = $req;
        Box::pin(async move {
            let r = client.$rpc(req).await;
            let msg = r.as_ref().err().map(|s| s.message().to_owned());
            (code(r), msg.unwrap_or_default())
        }) as Refusal
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_argument_is_refused_with_a_message() {
    let f = Fixture::start().await;
    let mut c = f.client().await;
    put(&mut c, "", "ok", &bytes(100, 1), true).await;
    // Every call below is refused with INVALID_ARGUMENT: (what it is, the call).
    let mut cases: Vec<(String, &str, Refusal)> = Vec::new();
    let long = "x".repeat(129);
    // (namespace, id, what the message must say)
    for (ns, id, says) in [
        ("", "bad id", "' '"),
        ("", "../etc/passwd", "'.'"),
        ("", long.as_str(), "128"),
        ("a/b", "ok", "'/'"),
        ("é", "ok", "'é'"),
        ("", "", "empty"),
    ] {
        let (n, i) = (ns.to_owned(), id.to_owned());
        let what = |rpc: &str| format!("{rpc} ns {ns:?} id {id:?}");
        cases.extend([
            (
                what("get"),
                says,
                call!(c.get(pb::GetRequest {
                    namespace: n.clone(),
                    id: i.clone(),
                    range: None,
                    wait: false
                })),
            ),
            (
                what("delete"),
                says,
                call!(c.delete(pb::DeleteRequest {
                    namespace: n.clone(),
                    id: i.clone()
                })),
            ),
            (
                what("priority"),
                says,
                call!(c.set_priority(pb::SetPriorityRequest {
                    namespace: n.clone(),
                    id: i.clone(),
                    priority: 1
                })),
            ),
            (
                what("flags"),
                says,
                call!(c.get_flags(pb::GetFlagsRequest {
                    namespace: n.clone(),
                    id: i.clone()
                })),
            ),
            (
                what("retry"),
                // Retry of no id is a request for neither an id nor all_failed.
                if id.is_empty() {
                    "needs a blob id"
                } else {
                    says
                },
                call!(c.retry(pb::RetryRequest {
                    namespace: n.clone(),
                    id: i.clone(),
                    all_failed: false
                })),
            ),
        ]);
        if !(ns.is_empty() && id.is_empty()) {
            // (An empty namespace and id is a verification of everything.)
            cases.push((
                what("verify"),
                says,
                call!(c.verify(pb::VerifyRequest {
                    namespace: n.clone(),
                    id: i.clone(),
                    remote: false
                })),
            ));
        }
        if !id.is_empty() {
            let h = pb::PutRequest {
                msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
                    namespace: n.clone(),
                    id: i.clone(),
                    ..Default::default()
                })),
            };
            cases.push((what("put"), says, call!(c.put(tokio_stream::iter(vec![h])))));
        }
    }
    for (ns, says) in [("a b", "' '"), ("../x", "'.'")] {
        let n = ns.to_owned();
        let what = |rpc: &str| format!("{rpc} ns {ns:?}");
        cases.extend([
            (
                what("list"),
                says,
                call!(c.list(pb::ListRequest {
                    namespace: n.clone(),
                    ..Default::default()
                })),
            ),
            (
                what("pause"),
                says,
                call!(c.pause(pb::PauseRequest {
                    namespace: n.clone()
                })),
            ),
            (
                what("resume"),
                says,
                call!(c.resume(pb::ResumeRequest {
                    namespace: n.clone()
                })),
            ),
            (
                what("watch"),
                says,
                call!(c.watch(pb::WatchRequest {
                    namespace: n.clone(),
                    ..Default::default()
                })),
            ),
            (
                what("list_remote"),
                says,
                call!(c.list_remote(pb::ListRemoteRequest {
                    namespace: n.clone(),
                    ..Default::default()
                })),
            ),
        ]);
    }
    // Enums out of range or UNSPECIFIED where a value is required.
    for p in [0, 5, -1, 77] {
        cases.push((
            format!("priority {p}"),
            "priority",
            call!(c.set_priority(pb::SetPriorityRequest {
                namespace: String::new(),
                id: "ok".into(),
                priority: p
            })),
        ));
    }
    let bad_prio = pb::PutRequest {
        msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
            id: "p9".into(),
            priority: 9,
            ..Default::default()
        })),
    };
    cases.push((
        "put priority 9".into(),
        "priority",
        call!(c.put(tokio_stream::iter(vec![bad_prio]))),
    ));
    for flags in [vec![0], vec![99], vec![1, 0]] {
        cases.push((
            format!("set_flags {flags:?}"),
            "flag",
            call!(c.set_flags(pb::SetFlagsRequest {
                namespace: String::new(),
                id: "ok".into(),
                flags
            })),
        ));
    }
    cases.extend([
        (
            "list_remote filter_flag 42".into(),
            "flag",
            call!(c.list_remote(pb::ListRemoteRequest {
                filter_flag: 42,
                ..Default::default()
            })),
        ),
        (
            "list status 0".into(),
            "status",
            call!(c.list(pb::ListRequest {
                statuses: vec![0],
                ..Default::default()
            })),
        ),
        (
            "list status 42".into(),
            "status",
            call!(c.list(pb::ListRequest {
                statuses: vec![42],
                ..Default::default()
            })),
        ),
    ]);
    // Page tokens this daemon never issued.
    for t in ["garbage!", "a/b/c", "/x"] {
        cases.push((
            format!("list page_token {t:?}"),
            "page_token is not one this daemon issued",
            call!(c.list(pb::ListRequest {
                page_token: t.into(),
                ..Default::default()
            })),
        ));
    }
    cases.push((
        "list_remote page_token".into(),
        "page_token is not one this daemon issued",
        call!(c.list_remote(pb::ListRemoteRequest {
            page_token: "no good".into(),
            ..Default::default()
        })),
    ));
    // Limits and retry shapes.
    cases.extend([
        (
            "limits transfers 0".into(),
            "transfers",
            call!(c.set_limits(pb::SetLimitsRequest {
                transfers: Some(0),
                ..Default::default()
            })),
        ),
        (
            "retry with neither id nor all_failed".into(),
            "all_failed",
            call!(c.retry(pb::RetryRequest::default())),
        ),
        (
            "retry with both".into(),
            "all_failed",
            call!(c.retry(pb::RetryRequest {
                id: "ok".into(),
                all_failed: true,
                ..Default::default()
            })),
        ),
    ]);
    // Ranges (the blob "ok" has 100 bytes).
    let range = |start, end| pb::GetRequest {
        namespace: String::new(),
        id: "ok".into(),
        range: Some(pb::ByteRange { start, end }),
        wait: false,
    };
    cases.extend([
        (
            "empty range".into(),
            "range",
            call!(c.get(range(10, Some(10)))),
        ),
        (
            "reversed range".into(),
            "range",
            call!(c.get(range(10, Some(5)))),
        ),
        (
            "range starting at the end".into(),
            "range",
            call!(c.get(range(100, None))),
        ),
        (
            "range starting past the end".into(),
            "range",
            call!(c.get(range(500, Some(600)))),
        ),
        (
            "open range starting past the end".into(),
            "range",
            call!(c.get(range(101, None))),
        ),
    ]);
    // Put stream shapes.
    cases.extend([
        (
            "chunk before header".into(),
            "header",
            call!(c.put(tokio_stream::iter(vec![chunk(b"abc")]))),
        ),
        (
            "two headers".into(),
            "header",
            call!(c.put(tokio_stream::iter(vec![
                header("h1", None),
                header("h1", None)
            ]))),
        ),
        (
            "short of size_hint".into(),
            "size",
            call!(c.put(tokio_stream::iter(vec![
                header("h2", Some(5)),
                chunk(b"abc")
            ]))),
        ),
        (
            "over size_hint".into(),
            "size",
            call!(c.put(tokio_stream::iter(vec![
                header("h3", Some(2)),
                chunk(b"abc")
            ]))),
        ),
        (
            "empty put stream".into(),
            "header",
            call!(c.put(tokio_stream::iter(Vec::<pb::PutRequest>::new()))),
        ),
    ]);
    // PutPath with a relative path.
    let pp = pb::PutPathRequest {
        header: Some(pb::PutHeader {
            id: "pp".into(),
            ..Default::default()
        }),
        path: "relative/file".into(),
    };
    cases.push((
        "put_paths with no items".into(),
        "takes 1 to 10000 items, not 0",
        call!(c.put_paths(pb::PutPathsRequest { items: vec![] })),
    ));
    cases.push((
        "put_path of a relative path".into(),
        "absolute",
        call!(c.put_path(pp)),
    ));

    let mut failures = Vec::new();
    let total = cases.len();
    for (what, says, refusal) in cases {
        let (code, msg) = refusal.await;
        if code != Code::InvalidArgument || !msg.contains(says) {
            failures.push(format!(
                "{what}: {code:?} {msg:?} (want InvalidArgument, a message with {says:?})"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // PutPath of a taken id: refused, and the blob that has it keeps its bytes.
    let before = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), b"some other content entirely").unwrap();
    let pp = pb::PutPathRequest {
        header: Some(pb::PutHeader {
            id: "ok".into(),
            ..Default::default()
        }),
        path: src.path().to_string_lossy().into_owned(),
    };
    assert_eq!(code(c.put_path(pp).await), Code::AlreadyExists);
    let after = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.blobs, after.blobs);

    // Nothing refused left a blob or a temp file behind.
    let ls = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = ls.blobs.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
    // Temp-file removal runs on a blocking thread: wait for it rather than guess how long.
    let tmp_files = || -> Vec<_> {
        walk(&f.data)
            .into_iter()
            .filter(|p| {
                p.strip_prefix(&f.data)
                    .unwrap()
                    .to_string_lossy()
                    .contains("tmp")
            })
            .collect()
    };
    wait_until(
        "no temp file is left",
        || tmp_files().is_empty(),
        || format!("{:?}", tmp_files()),
    )
    .await;
    f.stop().await;
}
