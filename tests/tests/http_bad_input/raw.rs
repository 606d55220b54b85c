//! Requests malformed at the HTTP level, written byte for byte: bodies cut short of their
//! Content-Length (with the client gone), a chunked PUT over the max size, and a request line
//! that is not HTTP.

use super::*;

/// (name, bytes, want, half-close after writing: a client that died mid-request); `auth` is
/// the `Authorization` header line of alice.
pub(super) fn cases(auth: &str) -> Vec<RawCase> {
    vec![
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
    ]
}
