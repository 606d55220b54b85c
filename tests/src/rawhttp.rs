//! A tiny blocking HTTP/1.1 client that can also send malformed requests.
//!
//! The bad-input tables need requests no well-behaved client library would send (truncated
//! bodies, oversized headers, lying `Content-Length`), so requests are written byte for byte.
//! One request per connection (`Connection: close`). Responses are parsed with
//! `Content-Length`, chunked encoding or read-to-EOF. Not for big payloads: bodies are held in
//! memory, which is fine for the small bodies tests send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::IoContext;
use crate::{HarnessError, Result};

/// How long a request may take before it is an error.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends a well-formed request with `Content-Length` and returns the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

/// Writes `bytes` as-is and parses the response (the request should say
/// `Connection: close`, or the read waits for the server's idle timeout).
///
/// A write error (the server answered early and closed) is not fatal: the response it sent
/// is still read.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<Response> {
    raw_opts(addr, bytes, false)
}

/// Like [`raw`], but with `half_close = true` the write side is shut down after `bytes`, as a
/// client that died mid-request would. hyper closes a connection whose read side ends (it
/// does not support half-closed clients by default), so expect no response then.
pub fn raw_opts(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .ctx(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s.set_write_timeout(Some(IO_TIMEOUT)).ok();
    let write_result = s.write_all(bytes).and_then(|_| s.flush());
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = Vec::new();
    let read_result = s.read_to_end(&mut buf);
    if buf.is_empty() {
        return Err(match (write_result, read_result) {
            (Err(e), _) | (_, Err(e)) => HarnessError::io(format!("request to {addr}"), e),
            _ => {
                HarnessError::protocol(format!("http {addr}"), "connection closed with no response")
            }
        });
    }
    parse_response(&buf).ok_or_else(|| {
        HarnessError::protocol(
            format!("http {addr}"),
            format!(
                "unparsable response: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(500)])
            ),
        )
    })
}

/// Parses one HTTP/1.1 response (status, headers, body by length, chunks or EOF).
pub fn parse_response(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let rest = &buf[end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r =
            parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcdef")
                .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"abc"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"garbage").is_none());
    }
}
