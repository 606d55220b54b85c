//! The parsers for values that need more than clap gives: priorities, statuses and flags
//! (lenient spelling, listed in completions and `--help`), byte ranges, rates.

use blobsync_proto::{BlobStatus, Flag, Priority};

/// A parsed `--range`: `[start, end)` in the proto's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRangeArg {
    /// First byte.
    pub start: u64,
    /// One past the last byte; `None` for "to the end".
    pub end: Option<u64>,
}

/// Normalises user spelling of an enum value: case-insensitive, `-` or `_`.
pub(super) fn canonical(s: &str) -> String {
    s.trim().to_ascii_uppercase().replace('-', "_")
}

/// Parses `low|medium|high|urgent` (any case).
pub fn parse_priority(s: &str) -> Result<Priority, String> {
    let c = canonical(s);
    let c = c.strip_prefix("PRIORITY_").unwrap_or(&c);
    match Priority::from_str_name(&format!("PRIORITY_{c}")) {
        Some(p) if p != Priority::Unspecified => Ok(p),
        _ => Err(format!(
            "{s:?} is not a priority; use low, medium, high or urgent"
        )),
    }
}

/// The names completions offer (any case and `_` for `-` are accepted too).
pub(super) const PRIORITIES: &[&str] = &["low", "medium", "high", "urgent"];
pub(super) const STATUSES: &[&str] = &[
    "synced",
    "pending-upload",
    "pending-download",
    "failed-download",
    "failed-upload",
    "pending-delete",
    "local-only",
    "remote-only",
];
pub(super) const FLAGS: &[&str] = &["pending", "processing", "processed", "failed"];

/// A value parser that keeps our lenient parsing (any case, `_` or `-`, the proto's long
/// names) and tells clap the canonical names, so shell completions offer them.
#[derive(Clone)]
pub struct Named<T> {
    parse: fn(&str) -> Result<T, String>,
    names: &'static [&'static str],
}

impl<T> Named<T> {
    pub fn new(parse: fn(&str) -> Result<T, String>, names: &'static [&'static str]) -> Self {
        Self { parse, names }
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let s = value.to_str().ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, "not UTF-8\n").with_cmd(cmd)
        })?;
        (self.parse)(s).map_err(|e| {
            let name = arg.map_or(String::new(), |a| format!("{a}: "));
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{name}{e}\n"))
                .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.names
                .iter()
                .map(|n| clap::builder::PossibleValue::new(*n)),
        ))
    }
}

/// Parses a status name such as `pending-upload` or `PENDING_UPLOAD`.
pub fn parse_status(s: &str) -> Result<BlobStatus, String> {
    let c = canonical(s);
    let c = c.strip_prefix("BLOB_STATUS_").unwrap_or(&c);
    match BlobStatus::from_str_name(&format!("BLOB_STATUS_{c}")) {
        Some(p) if p != BlobStatus::Unspecified => Ok(p),
        _ => Err(format!(
            "{s:?} is not a status; use synced, pending-upload, pending-download, \
             failed-download, failed-upload, pending-delete, local-only or remote-only"
        )),
    }
}

/// Parses a remote flag name such as `processed`.
pub fn parse_flag(s: &str) -> Result<Flag, String> {
    let c = canonical(s);
    let c = c.strip_prefix("FLAG_").unwrap_or(&c);
    match Flag::from_str_name(&format!("FLAG_{c}")) {
        Some(p) if p != Flag::Unspecified => Ok(p),
        _ => Err(format!(
            "{s:?} is not a flag; use pending, processing, processed or failed"
        )),
    }
}

/// Parses `A-B` (inclusive, like HTTP ranges and `curl -r`) or `A-` into `[A, B+1)`.
pub fn parse_range(s: &str) -> Result<ByteRangeArg, String> {
    let bad = || {
        format!(
            "{s:?} is not a byte range; write A-B (bytes A through B, from 0) or A- (A to the end)"
        )
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let b = b.trim();
    if b.is_empty() {
        return Ok(ByteRangeArg { start, end: None });
    }
    let last: u64 = b.parse().map_err(|_| bad())?;
    if last < start {
        return Err(format!(
            "{s:?}: the range ends ({last}) before it starts ({start})"
        ));
    }
    let end = last
        .checked_add(1)
        .ok_or_else(|| format!("{s:?}: the end is too large"))?;
    Ok(ByteRangeArg {
        start,
        end: Some(end),
    })
}

/// Parses a rate like `0`, `512`, `500K`, `2M`, `1G`, `1.5M` (powers of 1024; a trailing
/// `B`, `iB` or `/s` is allowed).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate; write bytes per second like 0, 500K, 2M or 1G");
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let upper = t.to_ascii_uppercase();
    let t = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    let bytes = v * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}
