//! Rows about `/stream`: a missing or unknown direction, upload bodies whose header is not a
//! JSON list of `[id, size]` pairs (or lacks its newline), whose blobs are cut short or
//! followed by trailing bytes, with bad or repeated ids or a blob over the max size, download
//! bodies that are not a JSON list of good ids, and a header block far over the limit.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // Stream uploads.
        case(
            "stream without direction",
            "POST",
            "/stream/alice",
            Tok::Alice,
            400,
        )
        .says("direction")
        .body("[]\n"),
        case(
            "stream unknown direction",
            "POST",
            "/stream/alice?direction=sideways",
            Tok::Alice,
            400,
        )
        .says("direction")
        .body("[]\n"),
        case(
            "stream header not JSON",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("header")
        .body("not json\nabc"),
        case(
            "stream header without newline",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("ended early")
        .body(r#"[["s1",1]]"#),
        case(
            "stream bad id",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("blob id")
        .body(stream_body("[[\"s.1\",1]]\n", b"x")),
        case(
            "stream negative size",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("not a JSON list of [id, size] pairs")
        .body(stream_body("[[\"s2\",-1]]\n", b"x")),
        case(
            "stream pair of three",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("not a JSON list of [id, size] pairs")
        .body(stream_body("[[\"s3\",1,2]]\n", b"x")),
        case(
            "stream truncated blob",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("ended early")
        .body(stream_body("[[\"s4\",5]]\n", b"abc")),
        case(
            "stream second blob truncated",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("ended early")
        .body(stream_body("[[\"s5\",3],[\"s6\",5]]\n", b"abcde")),
        case(
            "stream trailing bytes",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("after the last blob")
        .body(stream_body("[[\"s7\",2]]\n", b"abcdef")),
        case(
            "stream duplicate id",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("twice")
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
        .says("body must be a JSON list of blob ids")
        .body("existing"),
        case(
            "stream download bad id",
            "POST",
            "/stream/alice?direction=download",
            Tok::Alice,
            400,
        )
        .says("blob id \"a.b\" has the character '.'")
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
        case(
            "stream id ..",
            "POST",
            "/stream/alice?direction=upload",
            Tok::Alice,
            400,
        )
        .says("blob id")
        .body(stream_body("[[\"../x\",1]]\n", b"x")),
        case(
            "stream download of a bad id among good ones",
            "POST",
            "/stream/alice?direction=download",
            Tok::Alice,
            400,
        )
        .says("blob id \"not ok\"")
        .body(r#"["ok", "not ok"]"#),
    ]
}
