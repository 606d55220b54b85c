//! Rows about requests that name a real route wrongly: flags bodies that are not a JSON list
//! of known flags (or too large, or for a missing blob), missing blobs, ids that exist, wrong
//! methods and unknown routes, byte ranges that cannot be served, and a body over the max
//! blob size. The good rows at the end make the table notice a server that refuses
//! everything.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // Flags.
        case(
            "unknown flag",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            406,
        )
        .says("unknown flag \"DONE\"")
        .body(r#"["DONE"]"#),
        case(
            "flags not JSON",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            400,
        )
        .says("body must be a JSON list of flag names")
        .body("PROCESSED"),
        case(
            "flags not a list",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            400,
        )
        .says("body must be a JSON list of flag names")
        .body(r#"{"flag":"PROCESSED"}"#),
        case(
            "flags body too large",
            "POST",
            "/blobs/alice/existing",
            Tok::Alice,
            413,
        )
        .says("request body is over 4096 bytes")
        .body(format!("[{}\"PENDING\"]", "\"PENDING\",".repeat(1000))),
        case(
            "flags on a missing blob",
            "POST",
            "/blobs/alice/missing",
            Tok::Alice,
            404,
        )
        .says("no blob missing in namespace default")
        .body(r#"["PROCESSED"]"#),
        // Missing blobs and wrong methods.
        case(
            "get missing",
            "GET",
            "/blobs/alice/missing",
            Tok::Alice,
            404,
        )
        .says("no blob missing in namespace default"),
        case(
            "get in another namespace",
            "GET",
            "/blobs/alice/existing?namespace=other",
            Tok::Alice,
            404,
        )
        .says("no blob existing in namespace other"),
        case(
            "delete missing",
            "DELETE",
            "/blobs/alice/missing",
            Tok::Alice,
            404,
        )
        .says("no blob missing in namespace default"),
        case(
            "put existing id",
            "PUT",
            "/blobs/alice/existing",
            Tok::Alice,
            409,
        )
        .says("already exists")
        .body("other"),
        case(
            "PATCH a blob",
            "PATCH",
            "/blobs/alice/existing",
            Tok::Alice,
            405,
        )
        .says("PATCH is not allowed"),
        case(
            "DELETE a listing",
            "DELETE",
            "/blobs/alice",
            Tok::Alice,
            405,
        )
        .says("DELETE is not allowed"),
        case("GET a stream", "GET", "/stream/alice", Tok::Alice, 405).says("GET is not allowed"),
        case("unknown route", "GET", "/nothing/here", Tok::Alice, 404)
            .says("no route /nothing/here"),
        case(
            "too many path segments",
            "GET",
            "/blobs/alice/a/b",
            Tok::Alice,
            404,
        )
        .says("no route /blobs/alice/a/b"),
        // Ranges (the blob is 10 bytes).
        case(
            "range ends before start",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .says("ends before it starts")
        .header("Range", "bytes=5-2"),
        case(
            "range past the end",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .says("starts at or past the end")
        .header("Range", "bytes=10-"),
        case(
            "several ranges",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .says("has several ranges")
        .header("Range", "bytes=0-1,3-4"),
        case(
            "range not in bytes",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .says("is not in bytes")
        .header("Range", "pages=0-1"),
        case(
            "range garbage",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .says("is malformed")
        .header("Range", "bytes=x-y"),
        case(
            "empty suffix range",
            "GET",
            "/blobs/alice/existing",
            Tok::Alice,
            416,
        )
        .says("is empty")
        .header("Range", "bytes=-0"),
        // Sizes.
        case(
            "declared over max size",
            "PUT",
            "/blobs/alice/big1",
            Tok::Alice,
            413,
        )
        .says("is over this server's limit of 100000 bytes")
        .body(vec![7u8; MAX_BLOB as usize + 1]),
        case("unknown route /nothing", "GET", "/nothing", Tok::Alice, 404)
            .says("no route /nothing"),
        case(
            "PATCH a missing blob",
            "PATCH",
            "/blobs/alice/x",
            Tok::Alice,
            405,
        )
        .says("PATCH is not allowed"),
    ]
}
