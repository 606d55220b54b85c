//! Query strings (`Query`: known parameters only, each once, percent-decoded; booleans in
//! Soledad's spellings too) and the `Range` header.

use blobsync_shared::Namespace;
use blobsync_shared::wire::query;
use http::Request;
use http::header::HeaderValue;
use hyper::body::Incoming;

use super::ApiError;

/// The query string, validated against the parameters a route knows.
pub(crate) struct Query(pub(crate) Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(req: &Request<Incoming>, known: &[&str]) -> Result<Self, ApiError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in req.uri().query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad(format!(
                    "unknown query parameter {k:?} for this route; known: {}",
                    known.join(", ")
                )));
            }
            if out.iter().any(|(x, _)| *x == k) {
                return Err(ApiError::bad(format!("query parameter {k:?} given twice")));
            }
            out.push((k, v));
        }
        Ok(Self(out))
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    pub(crate) fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    pub(crate) fn flag(&self, k: &str) -> Result<bool, ApiError> {
        match self.get(k) {
            None => Ok(false),
            // Soledad's client sends Python's `True`/`False`.
            Some(v)
                if ["", "1", "true", "yes"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Ok(true)
            }
            Some(v)
                if ["0", "false", "no"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Ok(false)
            }
            Some(v) => Err(ApiError::bad(format!(
                "{k}={v:?} is not a boolean: use 1 or 0 (true/false)"
            ))),
        }
    }

    pub(crate) fn u64(&self, k: &str) -> Result<Option<u64>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad(format!("{k}={v:?} is not a non-negative integer")))
            })
            .transpose()
    }

    pub(crate) fn namespace(&self, default: &str) -> Result<Namespace, ApiError> {
        Namespace::new(self.get(query::NAMESPACE).unwrap_or(default))
            .map_err(|e| ApiError::bad(e.to_string()))
    }
}

pub(crate) fn percent_decode(s: &str) -> Result<String, ApiError> {
    // No '+' to space: `order_by=+date` means what it says.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad(format!("bad percent-encoding in query {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad("query is not UTF-8"))
}

/// Parses a single `bytes=` range against `size`: Ok(None) for no header, Err for a range
/// that cannot be served (416).
pub(crate) fn parse_range(
    h: Option<&HeaderValue>,
    size: u64,
) -> Result<Option<(u64, u64)>, String> {
    let Some(h) = h else { return Ok(None) };
    let h = h
        .to_str()
        .map_err(|_| "Range header is not ASCII".to_string())?;
    let spec = h
        .strip_prefix("bytes=")
        .ok_or_else(|| format!("Range {h:?} is not in bytes: use bytes=a-b"))?;
    if spec.contains(',') {
        return Err(format!(
            "Range {h:?} has several ranges; ask for one at a time"
        ));
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| format!("Range {h:?} is malformed: use bytes=a-b, bytes=a- or bytes=-n"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("Range {h:?} is malformed: use bytes=a-b, bytes=a- or bytes=-n"))
    };
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err(format!("Range {h:?} names no bytes")),
        (true, false) => {
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Err(format!("Range {h:?} is empty or the blob is empty"));
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, true) => (num(a)?, size.saturating_sub(1)),
        (false, false) => {
            let (s, e) = (num(a)?, num(b)?);
            if e < s {
                return Err(format!("Range {h:?} ends before it starts"));
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(format!(
            "Range {h:?} starts at or past the end of the {size}-byte blob"
        ));
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: &str, size: u64) -> Result<Option<(u64, u64)>, String> {
        parse_range(Some(&HeaderValue::from_str(h).unwrap()), size)
    }

    #[test]
    fn ranges_at_the_edges() {
        assert_eq!(range("bytes=0-0", 10), Ok(Some((0, 0))));
        assert_eq!(range("bytes=0-", 10), Ok(Some((0, 9))));
        assert_eq!(range("bytes=9-", 10), Ok(Some((9, 9))));
        assert_eq!(range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(range("bytes=-30", 10), Ok(Some((0, 9))));
        assert!(range("bytes=10-", 10).is_err());
        assert!(range("bytes=3-2", 10).is_err());
        assert!(range("bytes=-0", 10).is_err());
        assert!(range("bytes=0-", 0).is_err());
        assert!(range("bytes=0-1,3-4", 10).is_err());
        assert!(range("items=0-1", 10).is_err());
        assert!(range("bytes=a-b", 10).is_err());
        assert_eq!(parse_range(None, 10), Ok(None));
    }

    #[test]
    fn percent_decoding_keeps_plus() {
        assert_eq!(percent_decode("+date").unwrap(), "+date");
        assert_eq!(percent_decode("%2Bdate").unwrap(), "+date");
        assert!(percent_decode("%zz").is_err());
    }
}
