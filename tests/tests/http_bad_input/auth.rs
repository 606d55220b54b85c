//! Rows about who may ask: no token, a token of the wrong kind or another user's, Basic
//! auth, an empty bearer, `/metrics` without a token, and `/incoming` for a user who does not
//! exist or with a bad user name or id.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // Auth.
        case("no token", "GET", "/blobs/alice", Tok::None, 401)
            .says("missing Authorization header"),
        case(
            "basic auth",
            "GET",
            "/blobs/alice",
            Tok::Raw("Basic YWxpY2U6eA=="),
            401,
        )
        .says("must be \"Bearer <token>\""),
        case(
            "unknown token",
            "GET",
            "/blobs/alice",
            Tok::Raw("Bearer nope"),
            401,
        )
        .says("unknown or revoked token"),
        case(
            "empty bearer",
            "GET",
            "/blobs/alice",
            Tok::Raw("Bearer "),
            401,
        )
        .says("must be \"Bearer <token>\""),
        case("other user's token", "GET", "/blobs/alice", Tok::Bob, 403)
            .says("belongs to user \"bob\", not \"alice\""),
        case(
            "other user's blob",
            "GET",
            "/blobs/alice/existing",
            Tok::Bob,
            403,
        )
        .says("belongs to user \"bob\", not \"alice\""),
        case(
            "bob deletes alice's blob",
            "DELETE",
            "/blobs/alice/existing",
            Tok::Bob,
            403,
        )
        .says("belongs to user \"bob\", not \"alice\""),
        case("app token on /blobs", "GET", "/blobs/alice", Tok::App, 403)
            .says("may only PUT to /incoming"),
        case(
            "app token PUT on /blobs",
            "PUT",
            "/blobs/alice/viaapp",
            Tok::App,
            403,
        )
        .says("may only PUT to /incoming")
        .body("x"),
        case(
            "user token on /incoming",
            "PUT",
            "/incoming/alice/m1",
            Tok::Alice,
            403,
        )
        .says("only trusted-app tokens may deliver to /incoming")
        .body("x"),
        case("metrics without token", "GET", "/metrics", Tok::None, 401)
            .says("missing Authorization header"),
        case(
            "incoming for unknown user",
            "PUT",
            "/incoming/nobody/m1",
            Tok::App,
            404,
        )
        .says("no user named \"nobody\"")
        .body("x"),
        case(
            "incoming bad user name",
            "PUT",
            "/incoming/no.body/m1",
            Tok::App,
            400,
        )
        .says("user name \"no.body\" is invalid")
        .body("x"),
        case(
            "incoming bad id",
            "PUT",
            "/incoming/alice/m.1",
            Tok::App,
            400,
        )
        .says("blob id \"m.1\" has the character '.'")
        .body("x"),
        case("other user's listing", "GET", "/blobs/bob", Tok::Alice, 403)
            .says("belongs to user \"alice\", not \"bob\""),
        case(
            "stream download without token",
            "POST",
            "/stream/alice?direction=download",
            Tok::None,
            401,
        )
        .says("missing Authorization header")
        .body("[]"),
    ]
}
