//! The fuzz targets' bodies, as plain functions: the cargo-fuzz targets in `tests/fuzz/` and
//! `shared/fuzz/` are one-line calls into this module, and `tests/fuzz_corpus.rs` replays the
//! committed corpora through the same functions as ordinary tests on the stable toolchain. So
//! a target that stops compiling fails `cargo clippy --all-targets`, and a regression input
//! that panics again fails the suite.
//!
//! Every function takes arbitrary bytes and panics only when the code under test breaks its
//! contract (which is what a fuzzer reports).

use std::io::Cursor;
use std::path::Path;

use blobsync_shared::BlobId;
use blobsync_shared::codec::{Decoder, Header, StorageKey, decrypt_range};
use blobsync_shared::config::{Config, ConfigFile};
use blobsync_shared::paths::DefaultPaths;
use blobsync_shared::wire::{
    BlobDetail, ChangesResponse, CountResponse, FrameDecoder, FrameEvent, UploadDecoder,
    UploadEvent,
};

/// The `/stream` upstream parser (`UploadDecoder`, what the server runs on request bodies).
/// Byte 0 picks the chunk size the body arrives in, byte 1 the header limit, so chunk
/// boundaries fall everywhere. Nothing may panic or loop; announced sizes are honoured
/// exactly; a clean `finish` only when every announced blob arrived.
pub fn stream_upload(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let chunk = usize::from(data[0]).max(1);
    let max_header = 16 + usize::from(data[1]) * 64;
    let body = &data[2..];
    let mut dec = UploadDecoder::new(max_header);
    let mut announced: Vec<u64> = Vec::new();
    let mut current: Option<(u64, u64)> = None; // (size, received)
    let mut ended = 0usize;
    let mut steps = 0usize;
    let limit = 4 * body.len() + 64;
    let mut failed = false;
    'outer: for piece in body.chunks(chunk).chain(std::iter::once(&[][..])) {
        let mut input = piece;
        while !input.is_empty() || dec.has_pending_event() {
            steps += 1;
            assert!(steps <= limit, "no progress");
            let Ok((used, ev)) = dec.decode(input) else {
                failed = true;
                break 'outer;
            };
            assert!(used <= input.len());
            input = &input[used..];
            match ev {
                None => assert!(used > 0 || input.is_empty(), "stalled"),
                Some(UploadEvent::Header(h)) => announced = h.iter().map(|(_, s)| *s).collect(),
                Some(UploadEvent::Blob { size, .. }) => {
                    assert!(current.is_none());
                    assert_eq!(
                        announced.get(ended),
                        Some(&size),
                        "blob out of header order"
                    );
                    current = Some((size, 0));
                }
                Some(UploadEvent::Data(d)) => {
                    let c = current.as_mut().expect("data outside a blob");
                    c.1 += d.len() as u64;
                    assert!(c.1 <= c.0, "more bytes than announced");
                }
                Some(UploadEvent::End { .. }) => {
                    let (size, got) = current.take().expect("end outside a blob");
                    assert_eq!(size, got, "end before every byte");
                    ended += 1;
                }
            }
        }
    }
    if !failed && dec.finish().is_ok() {
        assert_eq!(ended, announced.len(), "finish ok with blobs missing");
    }
}

/// The `/stream` downstream frame parser (`FrameDecoder`, what the daemon runs on a batch
/// download). Byte 0 picks the chunk size. Nothing may panic or loop; a frame's bytes never
/// exceed its announced size; `End` only after every byte; a clean `finish` only between
/// frames; ids are valid.
pub fn stream_download(data: &[u8]) {
    let Some((&c, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(c).max(1);
    let mut dec = FrameDecoder::new();
    let mut current: Option<(u64, u64)> = None; // (size, received)
    let mut steps = 0usize;
    let limit = 4 * body.len() + 64;
    for piece in body.chunks(chunk).chain(std::iter::once(&[][..])) {
        let mut input = piece;
        while !input.is_empty() || dec.has_pending_event() {
            steps += 1;
            assert!(steps <= limit, "no progress");
            let Ok((used, ev)) = dec.decode(input) else {
                return;
            };
            assert!(used <= input.len());
            input = &input[used..];
            match ev {
                None => assert!(used > 0 || input.is_empty(), "stalled"),
                Some(FrameEvent::Blob { id, size }) => {
                    assert!(BlobId::new(id.as_str()).is_ok());
                    assert!(current.is_none(), "a frame inside a frame");
                    current = Some((size, 0));
                }
                Some(FrameEvent::Missing { id }) => {
                    assert!(BlobId::new(id.as_str()).is_ok());
                    assert!(current.is_none(), "a frame inside a frame");
                }
                Some(FrameEvent::Data(d)) => {
                    let c = current.as_mut().expect("data outside a frame");
                    c.1 += d.len() as u64;
                    assert!(c.1 <= c.0, "more bytes than announced");
                }
                Some(FrameEvent::End { .. }) => {
                    let (size, got) = current.take().expect("end outside a frame");
                    assert_eq!(size, got, "end before every byte");
                }
            }
        }
    }
    if dec.finish().is_ok() {
        assert!(current.is_none(), "finish ok inside a frame");
    }
}

/// The listing JSON the daemon parses from the server: the incremental `since` listing
/// (`ChangesResponse`), the `detail=1` listing, counts and plain id lists. Nothing may panic,
/// whatever parses holds only valid ids (validation is part of parsing) and survives a
/// serialize/parse round trip unchanged.
pub fn listing_json(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<ChangesResponse>(data) {
        for c in &r.changes {
            assert!(BlobId::new(c.id.as_str()).is_ok());
        }
        let again: ChangesResponse =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
    if let Ok(v) = serde_json::from_slice::<Vec<BlobDetail>>(data) {
        let again: Vec<BlobDetail> =
            serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(again, v);
    }
    let _ = serde_json::from_slice::<CountResponse>(data);
    if let Ok(ids) = serde_json::from_slice::<Vec<BlobId>>(data) {
        for id in &ids {
            assert!(BlobId::new(id.as_str()).is_ok());
        }
    }
}

/// The reference vectors' storage key, so seeds made from them decode.
const DECODE_KEY: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];

/// The blob decoder: header parsing, the segment stream in arbitrary chunkings, and ranged
/// reads. Byte 0 picks the chunk size; the rest is the stored blob. Nothing may panic, the
/// progress counters agree, and a blob decodes only whole and at its announced sizes.
pub fn decode(input: &[u8]) {
    let Some((&c, stored)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(c) * 17 + 1;
    let key = StorageKey::from_bytes(DECODE_KEY);
    // Expect whatever names the header carries, so inputs get past the name check and into
    // the segment path.
    let Ok(Some((header, _))) = Header::parse(stored) else {
        return;
    };
    let (ns, id) = (header.namespace.clone(), header.id.clone());
    let _ = header.stored_range_for(0..u64::from(c) << 12);
    let mut d = Decoder::new(&key, &ns, &id);
    let mut delivered = 0u64;
    let mut failed = false;
    for part in stored.chunks(chunk) {
        let r = d.feed(part, |p| {
            delivered += p.len() as u64;
            Ok::<(), ()>(())
        });
        if r.is_err() {
            failed = true;
            break;
        }
        assert_eq!(delivered, d.verified_plain_bytes());
    }
    if !failed && let Ok(h) = d.finish() {
        assert_eq!(delivered, h.plain_size);
        assert_eq!(stored.len() as u64, h.stored_size());
    }
    let start = u64::from(c) * 1000;
    let _ = decrypt_range(
        &key,
        Cursor::new(stored),
        &ns,
        &id,
        start..start + 5000,
        std::io::sink(),
    );
}

/// The key file (`shared::keyfile`): the plain key file as the daemon loads it, and the
/// passphrase-wrapped export (`blobctl key import`). Nothing may panic; a key file loads only
/// if it is 64 lowercase hex digits (and a newline), and then holds exactly those bytes; a
/// wrapped export never opens under a passphrase it was not made with.
pub fn keyfile(data: &[u8]) {
    use blobsync_shared::keyfile::{import_wrapped, load_key_file};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("key");
    std::fs::write(&path, data).expect("write key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let well_formed =
        body.len() == 64 && body.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match load_key_file(&path) {
        Ok(k) => {
            assert!(well_formed, "loaded a malformed key file");
            assert_eq!(hex::encode(k.as_bytes()).as_bytes(), body);
        }
        Err(_) => assert!(!well_formed, "refused a well-formed key file"),
    }
    // Argon2 runs on whatever cost the input names: keep executions fast by capping the
    // memory cost (the parser itself bounds it to 1 GiB, which a fuzzer cannot afford).
    let costly = std::str::from_utf8(data).is_ok_and(|t| {
        t.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                matches!(k.trim(), "m" | "t") && v.trim().parse::<u64>().is_ok_and(|n| n > 64)
            })
        })
    });
    if !costly {
        assert!(
            import_wrapped(data, "not the fuzz passphrase").is_err(),
            "opened an export under a passphrase it was not made with"
        );
    }
}

/// The daemon's config (`shared::config`): TOML parsing, then resolving every value. Nothing
/// may panic, and a resolved config's values are the checked kind (a positive interval, at
/// least one transfer).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("/fuzz/config.toml");
    let Ok(file) = Config::parse_file(text, origin) else {
        return;
    };
    let file: ConfigFile = file;
    let defaults = DefaultPaths {
        config_dir: "/fuzz/config".into(),
        data_dir: "/fuzz/data".into(),
        runtime_dir: Some("/fuzz/run".into()),
    };
    if let Ok(cfg) = Config::resolve(file, &defaults, origin) {
        assert!(!cfg.sync_interval.is_zero(), "{cfg:?}");
        assert!(cfg.transfers >= 1, "{cfg:?}");
    }
}

/// A server for [`range_query`]: in-process on loopback, started once, with user `alice`
/// holding the 1000-byte blob `b`.
struct RangeServer {
    addr: std::net::SocketAddr,
    token: String,
    _dir: tempfile::TempDir,
}

fn range_server() -> &'static RangeServer {
    static SERVER: std::sync::OnceLock<RangeServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        use blobsync_server::{ServerConfig, ServerState, token};
        let dir = tempfile::tempdir().expect("temp dir");
        let state = ServerState::open(ServerConfig::new(dir.path().join("data"))).expect("open");
        let t = token::generate();
        // The index API is async; this runs before the server's runtime exists.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(state.index().add_user("alice", &token::hash(&t), None))
            .expect("add user");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let cancel = tokio_util::sync::CancellationToken::new();
                let _ = blobsync_server::run(listener, state, cancel).await;
            });
        });
        let s = RangeServer {
            addr,
            token: t,
            _dir: dir,
        };
        let put = http_exchange(
            &s,
            &format!(
                "PUT /blobs/alice/b HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer {}\r\n\
                 Content-Length: 1000\r\nConnection: close\r\n\r\n{}",
                s.token,
                "x".repeat(1000)
            ),
        );
        assert!(put.starts_with("HTTP/1.1 201"), "{put}");
        s
    })
}

/// One request on a fresh connection; the whole response as (lossy) text.
fn http_exchange(s: &RangeServer, request: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(request.as_bytes()).expect("send");
    let mut out = Vec::new();
    c.read_to_end(&mut out)
        .expect("the server answers and closes");
    String::from_utf8_lossy(&out).into_owned()
}

/// The server's query-string and `Range` parsing, through its real HTTP surface (the parsers
/// are private to the server). The first input line is a query string, the second a `Range`
/// header value; both go to a ranged GET of a 1000-byte blob, the query also to a listing.
/// Bytes that would end the request line or header early are dropped (request framing is
/// `http_bad_input.rs`'s business). The server must answer every request with a well-formed
/// response and never a 5xx; a 206 carries a `Content-Range` inside the blob and exactly
/// that many bytes.
pub fn range_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(2, '\n');
    let clean = |s: &str, bad: &[char]| -> String {
        s.chars()
            .filter(|c| !c.is_control() && !bad.contains(c))
            .take(2000)
            .collect()
    };
    let query = clean(lines.next().unwrap_or(""), &[' ', '#']);
    let range = clean(lines.next().unwrap_or(""), &[]);
    let s = range_server();
    let get = format!(
        "GET /blobs/alice/b?{query} HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer {}\r\n\
         Range: {range}\r\nConnection: close\r\n\r\n",
        s.token
    );
    let list = format!(
        "GET /blobs/alice?{query} HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        s.token
    );
    for (what, req) in [("ranged get", get), ("listing", list)] {
        let resp = http_exchange(s, &req);
        let status: u16 = resp
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no status line: {resp:?}"));
        assert!(status < 500, "{what}: {status} for {req:?}: {resp}");
        if status == 206 {
            let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
            let cr = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-range: bytes ")
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| panic!("206 without Content-Range: {head}"));
            let (span, total) = cr.split_once('/').expect("a/b");
            let (a, b) = span.split_once('-').expect("a-b");
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(total, "1000", "{head}");
            assert!(a <= b && b < 1000, "{head}");
            assert_eq!(body.len() as u64, b - a + 1, "{head}");
        }
    }
}
