//! The good rows: a health check, a listing, a get and two ranges that must succeed, so the
//! table would notice a server that refuses everything.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
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
    ]
}
