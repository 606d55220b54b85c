//! Turning the daemon's answers into text: aligned tables with KiB/MiB sizes for people, and
//! JSON documents whose field names follow the proto (snake_case, enums by name without
//! their prefix, timestamps as RFC 3339 strings as in protobuf's JSON mapping) for scripts.
//!
//! Pure functions only: this module never talks to the daemon or touches files.

use std::time::{SystemTime, UNIX_EPOCH};

use blobsync_proto as pb;
use serde_json::{Value, json};

mod events;
mod status;
pub use events::*;
pub use status::*;

pub use blobsync_shared::units::human_size;

/// A rate in bytes per second, `0` meaning unlimited.
pub fn human_rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        "unlimited".into()
    } else {
        format!("{}/s", human_size(bytes_per_sec))
    }
}

/// An enum's proto name without its type prefix: `BLOB_STATUS_SYNCED` -> `SYNCED`.
pub(crate) fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

/// A status by name (`SYNCED`); unknown numbers (a newer daemon) print as their number.
pub fn status_name(v: i32) -> String {
    pb::BlobStatus::try_from(v)
        .map(|s| strip(s.as_str_name(), "BLOB_STATUS_"))
        .unwrap_or_else(|_| format!("STATUS_{v}"))
}

/// A priority by name (`MEDIUM`).
pub fn priority_name(v: i32) -> String {
    pb::Priority::try_from(v)
        .map(|s| strip(s.as_str_name(), "PRIORITY_"))
        .unwrap_or_else(|_| format!("PRIORITY_{v}"))
}

/// A remote flag by name (`PROCESSED`).
pub fn flag_name(v: i32) -> String {
    pb::Flag::try_from(v)
        .map(|s| strip(s.as_str_name(), "FLAG_"))
        .unwrap_or_else(|_| format!("FLAG_{v}"))
}

/// A direction by name (`UPLOAD`).
pub fn direction_name(v: i32) -> String {
    pb::Direction::try_from(v)
        .map(|s| strip(s.as_str_name(), "DIRECTION_"))
        .unwrap_or_else(|_| format!("DIRECTION_{v}"))
}

/// A namespace policy by name (`EAGER`).
pub fn policy_name(v: i32) -> String {
    pb::NamespacePolicy::try_from(v)
        .map(|s| strip(s.as_str_name(), "NAMESPACE_POLICY_"))
        .unwrap_or_else(|_| format!("POLICY_{v}"))
}

/// Every status except UNSPECIFIED, in proto order (for count tables with zeros).
pub const STATUSES: [pb::BlobStatus; 8] = [
    pb::BlobStatus::Synced,
    pb::BlobStatus::PendingUpload,
    pb::BlobStatus::PendingDownload,
    pb::BlobStatus::FailedDownload,
    pb::BlobStatus::FailedUpload,
    pb::BlobStatus::PendingDelete,
    pb::BlobStatus::LocalOnly,
    pb::BlobStatus::RemoteOnly,
];

/// Days since 1970-01-01 to a civil (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A timestamp as RFC 3339 in UTC with second precision: `2026-11-29T23:40:01Z`.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// An optional timestamp as JSON: an RFC 3339 string or null.
pub(crate) fn ts_json(ts: &Option<prost_types::Timestamp>) -> Value {
    ts.as_ref()
        .map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A timestamp relative to `now` for tables: `in 20s`, `3m ago`, `-` when unset.
pub fn relative(ts: &Option<prost_types::Timestamp>, now: i64) -> String {
    let Some(ts) = ts else { return "-".into() };
    let delta = ts.seconds - now;
    let span = |s: i64| match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    match delta {
        0 => "now".into(),
        d if d > 0 => format!("in {}", span(d)),
        d => format!("{} ago", span(-d)),
    }
}

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers and sizes.
    Right,
}

/// An aligned text table with a header row. Column widths are measured in characters.
pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|c| c.0).collect(),
            align: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, each line ending in `\n`; columns are separated by two spaces and the last
    /// column is not padded.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for r in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                // Failures stand out on a terminal; padding is counted on the plain text.
                let painted;
                let cell = if cell.starts_with("FAILED_") {
                    painted = paint_level(cell, true);
                    &painted
                } else {
                    cell
                };
                match self.align[i] {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left if i + 1 == n => line.push_str(cell),
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Colour for people only: standard output a terminal, `NO_COLOR` unset, `TERM` not `dumb`.
pub(crate) fn use_color() -> bool {
    use std::io::IsTerminal;
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb")
    })
}

/// `s` in bold red when `bad` and colour is on; else as is.
pub fn paint_level(s: &str, bad: bool) -> String {
    if bad && use_color() {
        let style = anstyle::Style::new()
            .bold()
            .fg_color(Some(anstyle::AnsiColor::Red.into()));
        format!("{style}{s}{style:#}")
    } else {
        s.to_owned()
    }
}

// ------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------

/// A local blob as JSON (`put`, `ls`, `priority`).
pub fn blob_json(b: &pb::BlobInfo) -> Value {
    json!({
        "namespace": b.namespace,
        "id": b.id,
        "size": b.size,
        "status": status_name(b.status),
        "priority": priority_name(b.priority),
        "attempts": b.attempts,
        "next_attempt": ts_json(&b.next_attempt),
        "last_error": if b.last_error.is_empty() { Value::Null } else { b.last_error.clone().into() },
        "created": ts_json(&b.created),
        "updated": ts_json(&b.updated),
        "external": b.external,
        "local": b.local,
    })
}

/// The blobs table of `ls` (one page; the caller prints the header once).
pub fn blobs_table() -> Table {
    Table::new(&[
        ("NAMESPACE", Align::Left),
        ("ID", Align::Left),
        ("SIZE", Align::Right),
        ("STATUS", Align::Left),
        ("PRIORITY", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("NEXT", Align::Left),
        ("LAST ERROR", Align::Left),
    ])
}

/// One row of the `ls` table.
pub fn blob_row(b: &pb::BlobInfo, now: i64) -> Vec<String> {
    vec![
        b.namespace.clone(),
        b.id.clone(),
        human_size(b.size),
        // Provenance: an external blob came from an app, not from one of the user's devices.
        if b.external {
            format!("{} (external)", status_name(b.status))
        } else {
            status_name(b.status)
        },
        priority_name(b.priority).to_ascii_lowercase(),
        b.attempts.to_string(),
        relative(&b.next_attempt, now),
        b.last_error.clone(),
    ]
}

/// A remote blob as JSON (`ls --remote`).
pub fn remote_blob_json(b: &pb::RemoteBlob) -> Value {
    json!({
        "id": b.id,
        "size": b.size,
        "created": ts_json(&b.created),
        "flags": b.flags.iter().map(|f| flag_name(*f)).collect::<Vec<_>>(),
        "external": b.external,
    })
}

/// The table of `ls --remote`.
pub fn remote_table() -> Table {
    Table::new(&[
        ("ID", Align::Left),
        ("SIZE", Align::Right),
        ("CREATED", Align::Left),
        ("FLAGS", Align::Left),
    ])
}

/// One row of `ls --remote`.
pub fn remote_row(b: &pb::RemoteBlob) -> Vec<String> {
    let mut flags: Vec<String> = b.flags.iter().map(|f| flag_name(*f)).collect();
    if b.external {
        flags.push("(external)".into());
    }
    vec![
        b.id.clone(),
        human_size(b.size),
        b.created.as_ref().map_or("-".into(), rfc3339),
        flags.join(","),
    ]
}

/// Pause state as JSON: `{"all", "namespaces"}`.
pub fn pause_json(p: Option<&pb::PauseState>) -> Value {
    let p = p.cloned().unwrap_or_default();
    json!({ "all": p.all, "namespaces": p.namespaces })
}

/// Pause state for people.
pub fn pause_text(p: Option<&pb::PauseState>) -> String {
    let p = p.cloned().unwrap_or_default();
    match (p.all, p.namespaces.is_empty()) {
        (true, _) => "sync is paused".into(),
        (false, true) => "sync is running".into(),
        (false, false) => format!(
            "sync is running; paused namespaces: {}",
            p.namespaces.join(", ")
        ),
    }
}

/// A verify problem as JSON.
pub fn problem_json(p: &pb::VerifyProblem) -> Value {
    json!({
        "namespace": p.namespace,
        "id": p.id,
        "kind": pb::verify_problem::Kind::try_from(p.kind)
            .map(|k| strip(k.as_str_name(), "KIND_"))
            .unwrap_or_else(|_| p.kind.to_string()),
        "detail": p.detail,
        "action": if p.action.is_empty() { Value::Null } else { p.action.clone().into() },
    })
}

/// A verify problem for people.
pub fn problem_text(p: &pb::VerifyProblem) -> String {
    let kind = pb::verify_problem::Kind::try_from(p.kind)
        .map(|k| strip(k.as_str_name(), "KIND_"))
        .unwrap_or_else(|_| p.kind.to_string());
    let action = if p.action.is_empty() {
        String::new()
    } else {
        format!(" -> {}", p.action)
    };
    format!("{}/{}: {kind}: {}{action}", p.namespace, p.id, p.detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(100 << 20), "100.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(human_rate(0), "unlimited");
        assert_eq!(human_rate(2 << 20), "2.0 MiB/s");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = |s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        assert_eq!(rfc3339(&t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(&t(1_796_000_000)), "2026-11-30T00:53:20Z");
        assert_eq!(rfc3339(&t(-1)), "1969-12-31T23:59:59Z");
        assert_eq!(relative(&Some(t(120)), 100), "in 20s");
        assert_eq!(relative(&Some(t(100)), 400), "5m ago");
        assert_eq!(relative(&None, 0), "-");
    }

    #[test]
    fn enums_print_without_prefix_and_survive_unknown_values() {
        assert_eq!(
            status_name(pb::BlobStatus::PendingUpload as i32),
            "PENDING_UPLOAD"
        );
        assert_eq!(priority_name(pb::Priority::Urgent as i32), "URGENT");
        assert_eq!(flag_name(pb::Flag::Processed as i32), "PROCESSED");
        assert_eq!(status_name(99), "STATUS_99");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1.0 KiB".into(), "x".into()]);
        t.row(vec!["longer-id".into(), "2 B".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID            SIZE  NOTE\n\
             a          1.0 KiB  x\n\
             longer-id      2 B\n"
        );
    }

    #[test]
    fn blob_json_carries_the_design_fields() {
        let b = pb::BlobInfo {
            namespace: "default".into(),
            id: "x".into(),
            size: 5,
            status: pb::BlobStatus::FailedUpload as i32,
            priority: pb::Priority::High as i32,
            attempts: 2,
            next_attempt: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            last_error: "conflict".into(),
            ..Default::default()
        };
        let v = blob_json(&b);
        for k in [
            "namespace",
            "id",
            "size",
            "status",
            "priority",
            "attempts",
            "next_attempt",
            "last_error",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["status"], "FAILED_UPLOAD");
        assert_eq!(v["priority"], "HIGH");
        assert_eq!(v["next_attempt"], "1970-01-01T00:00:00Z");
        assert_eq!(v["last_error"], "conflict");
    }

    #[test]
    fn status_json_has_every_status_count() {
        let s = pb::StatusResponse {
            counts: vec![pb::StatusCount {
                status: pb::BlobStatus::Synced as i32,
                count: 3,
                bytes: 30,
            }],
            namespaces: vec![pb::NamespaceStatus {
                namespace: "MX".into(),
                paused: true,
                ..Default::default()
            }],
            paused: false,
            ..Default::default()
        };
        let v = status_json(&s);
        assert_eq!(v["counts"]["SYNCED"], 3);
        assert_eq!(v["counts"]["PENDING_UPLOAD"], 0);
        assert_eq!(v["counts"].as_object().unwrap().len(), 8);
        assert_eq!(v["namespaces"]["MX"]["paused"], true);
        assert_eq!(v["paused"], false);
        assert!(v["transfers"].is_array());
        let text = status_text(&s);
        assert!(text.contains("SYNCED") && text.contains("MX"), "{text}");
    }

    #[test]
    fn events_render_as_one_line_and_one_object() {
        let e = pb::Event {
            id: 7,
            time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            kind: Some(pb::event::Kind::StatusChanged(pb::StatusChanged {
                namespace: "default".into(),
                id: "x".into(),
                old_status: pb::BlobStatus::PendingUpload as i32,
                new_status: pb::BlobStatus::Synced as i32,
                reason: String::new(),
            })),
        };
        let v = event_json(&e);
        assert_eq!(v["id"], 7);
        assert_eq!(v["status_changed"]["new_status"], "SYNCED");
        assert_eq!(v["status_changed"]["old_status"], "PENDING_UPLOAD");
        let line = event_text(&e);
        assert!(
            line.contains("default/x  PENDING_UPLOAD -> SYNCED"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
