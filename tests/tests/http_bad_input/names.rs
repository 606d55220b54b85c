//! Rows about names and query parameters: blob ids and namespaces that are not allowed
//! (dots, slashes, spaces, too long, empty, path traversal), and query parameters that are
//! unknown, repeated, out of range, not of their type or not combinable.

use super::*;

pub(super) fn cases(long: &str) -> Vec<Case> {
    vec![
        // Ids and namespaces.
        case(
            "id with a dot",
            "PUT",
            "/blobs/alice/bad.id",
            Tok::Alice,
            400,
        )
        .says("blob id \"bad.id\" has the character '.'")
        .body("x"),
        case(
            "id too long",
            "PUT",
            &format!("/blobs/alice/{long}"),
            Tok::Alice,
            400,
        )
        .says("is 129 characters long; the limit is 128")
        .body("x"),
        case(
            "id percent-encoded slash",
            "PUT",
            "/blobs/alice/a%2Fb",
            Tok::Alice,
            400,
        )
        .says("blob id \"a%2Fb\" has the character '%'")
        .body("x"),
        case(
            "id with space",
            "GET",
            "/blobs/alice/a%20b",
            Tok::Alice,
            400,
        )
        .says("blob id \"a%20b\" has the character '%'"),
        case(
            "namespace with a dot",
            "PUT",
            "/blobs/alice/ok1?namespace=a.b",
            Tok::Alice,
            400,
        )
        .says("namespace \"a.b\" has the character '.'")
        .body("x"),
        case(
            "empty namespace",
            "PUT",
            "/blobs/alice/ok2?namespace=",
            Tok::Alice,
            400,
        )
        .says("namespace must not be empty")
        .body("x"),
        case(
            "namespace too long",
            "GET",
            &format!("/blobs/alice?namespace={long}"),
            Tok::Alice,
            400,
        )
        .says("is 129 characters long; the limit is 128"),
        case(
            "namespace path traversal",
            "GET",
            "/blobs/alice?namespace=..%2F..",
            Tok::Alice,
            400,
        )
        .says("namespace \"../..\" has the character '.'"),
        // Query parameters.
        case(
            "unknown query parameter",
            "GET",
            "/blobs/alice?colour=red",
            Tok::Alice,
            400,
        )
        .says("unknown query parameter \"colour\""),
        case(
            "duplicate query parameter",
            "GET",
            "/blobs/alice?limit=1&limit=2",
            Tok::Alice,
            400,
        )
        .says("query parameter \"limit\" given twice"),
        case("limit zero", "GET", "/blobs/alice?limit=0", Tok::Alice, 400)
            .says("limit=0 is out of range"),
        case(
            "limit not a number",
            "GET",
            "/blobs/alice?limit=ten",
            Tok::Alice,
            400,
        )
        .says("limit=\"ten\" is not a non-negative integer"),
        case(
            "negative since",
            "GET",
            "/blobs/alice?since=-1",
            Tok::Alice,
            400,
        )
        .says("since=\"-1\" is not a non-negative integer"),
        case(
            "since ahead of the server",
            "GET",
            "/blobs/alice?since=999999",
            Tok::Alice,
            400,
        )
        .says("is ahead of this server's sequence number"),
        case(
            "since with order_by",
            "GET",
            "/blobs/alice?since=0&order_by=date",
            Tok::Alice,
            400,
        )
        .says("since cannot be combined with order_by"),
        case(
            "unknown order_by",
            "GET",
            "/blobs/alice?order_by=size",
            Tok::Alice,
            400,
        )
        .says("order_by=\"size\" is not known"),
        case(
            "unknown filter_flag",
            "GET",
            "/blobs/alice?filter_flag=DONE",
            Tok::Alice,
            400,
        )
        .says("unknown flag \"DONE\""),
        case(
            "lowercase filter_flag",
            "GET",
            "/blobs/alice?filter_flag=pending",
            Tok::Alice,
            400,
        )
        .says("unknown flag \"pending\""),
        case(
            "detail not a boolean",
            "GET",
            "/blobs/alice?detail=maybe",
            Tok::Alice,
            400,
        )
        .says("detail=\"maybe\" is not a boolean"),
        case(
            "bad percent-encoding",
            "GET",
            "/blobs/alice?namespace=%zz",
            Tok::Alice,
            400,
        )
        .says("bad percent-encoding"),
        case(
            "after with a bad id",
            "GET",
            "/blobs/alice?after=a.b",
            Tok::Alice,
            400,
        )
        .says("blob id \"a.b\" has the character '.'"),
        // The in-process API test's table of 400s (server/tests/api), folded in here.
        case(
            "id with a dot (GET)",
            "GET",
            "/blobs/alice/bad.id",
            Tok::Alice,
            400,
        )
        .says("blob id")
        .body("nope"),
        case("id ..", "PUT", "/blobs/alice/..", Tok::Alice, 400)
            .says("blob id")
            .body("nope"),
        case(
            "id with an encoded slash and ..",
            "GET",
            "/blobs/alice/x%2F..",
            Tok::Alice,
            400,
        )
        .says("blob id")
        .body("nope"),
        case(
            "namespace with a slash",
            "GET",
            "/blobs/alice?namespace=a/b",
            Tok::Alice,
            400,
        )
        .says("namespace")
        .body("nope"),
        case(
            "unknown query parameter bogus",
            "GET",
            "/blobs/alice?bogus=1",
            Tok::Alice,
            400,
        )
        .says("unknown query parameter")
        .body("nope"),
        case(
            "limit abc",
            "GET",
            "/blobs/alice?limit=abc",
            Tok::Alice,
            400,
        )
        .says("limit")
        .body("nope"),
        case(
            "unknown filter_flag NOPE",
            "GET",
            "/blobs/alice?filter_flag=NOPE",
            Tok::Alice,
            400,
        )
        .says("flag")
        .body("nope"),
        case(
            "since with deleted",
            "GET",
            "/blobs/alice?since=0&deleted=1",
            Tok::Alice,
            400,
        )
        .says("since cannot be combined")
        .body("nope"),
        case(
            "namespace twice",
            "GET",
            "/blobs/alice?namespace=a&namespace=b",
            Tok::Alice,
            400,
        )
        .says("twice")
        .body("nope"),
        case(
            "after an id that is not there",
            "GET",
            "/blobs/alice?order_by=date&after=nothere",
            Tok::Alice,
            400,
        )
        .says("after")
        .body("nope"),
        case(
            "flags body not a JSON list",
            "POST",
            "/blobs/alice/x",
            Tok::Alice,
            400,
        )
        .says("JSON list")
        .body("nope"),
    ]
}
