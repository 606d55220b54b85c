//! Turning the daemon's answers into text: aligned tables with KiB/MiB sizes for people, and
//! JSON documents whose field names follow the proto (snake_case, enums by name without
//! their prefix, timestamps as RFC 3339 strings as in protobuf's JSON mapping) for scripts.
//!
//! Pure functions only: this module never talks to the daemon or touches files.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use blobsync_proto as pb;
use serde_json::{Map, Value, json};

/// A size in bytes, humanly: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A rate in bytes per second, `0` meaning unlimited.
pub fn human_rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        "unlimited".into()
    } else {
        format!("{}/s", human_size(bytes_per_sec))
    }
}

/// An enum's proto name without its type prefix: `BLOB_STATUS_SYNCED` -> `SYNCED`.
fn strip(name: &str, prefix: &str) -> String {
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
fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
fn ts_json(ts: &Option<prost_types::Timestamp>) -> Value {
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
fn use_color() -> bool {
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

fn counts_json(counts: &[pb::StatusCount]) -> (Value, Value) {
    let mut c = Map::new();
    let mut bytes = Map::new();
    for s in STATUSES {
        c.insert(status_name(s as i32), json!(0));
        bytes.insert(status_name(s as i32), json!(0));
    }
    for sc in counts {
        c.insert(status_name(sc.status), json!(sc.count));
        bytes.insert(status_name(sc.status), json!(sc.bytes));
    }
    (Value::Object(c), Value::Object(bytes))
}

/// A cycle summary as JSON.
pub fn cycle_json(c: &pb::CycleSummary) -> Value {
    json!({
        "cycle": c.cycle,
        "started": ts_json(&c.started),
        "finished": ts_json(&c.finished),
        "full_list": c.full_list,
        "uploaded": c.uploaded,
        "downloaded": c.downloaded,
        "deleted_local": c.deleted_local,
        "deleted_remote": c.deleted_remote,
        "failed": c.failed,
        "bytes_up": c.bytes_up,
        "bytes_down": c.bytes_down,
        "pending": c.pending,
        "reuploaded_missing": c.reuploaded_missing,
        "deletions_held": c.deletions_held,
        "error": if c.error.is_empty() { Value::Null } else { c.error.clone().into() },
    })
}

/// An alarm as JSON.
pub fn alarm_json(a: &pb::Alarm) -> Value {
    json!({
        "kind": a.kind,
        "namespace": if a.namespace.is_empty() { Value::Null } else { a.namespace.clone().into() },
        "message": a.message,
        "count": a.count,
        "at": ts_json(&a.at),
    })
}

/// An alarm for people: one line.
pub fn alarm_text(a: &pb::Alarm) -> String {
    format!("ALARM {}: {}", a.kind, a.message)
}

/// Limits as JSON.
pub fn limits_json(l: &pb::Limits) -> Value {
    json!({ "bwlimit_up": l.bwlimit_up, "bwlimit_down": l.bwlimit_down, "transfers": l.transfers })
}

fn transfer_json(t: &pb::Transfer) -> Value {
    json!({
        "namespace": t.namespace,
        "id": t.id,
        "direction": direction_name(t.direction),
        "bytes_done": t.bytes_done,
        "bytes_total": t.bytes_total,
        "priority": priority_name(t.priority),
        "attempt": t.attempt,
        "started": ts_json(&t.started),
    })
}

/// `status --json`: counts keyed by status name (every status, zeros included), namespaces
/// keyed by name.
pub fn status_json(s: &pb::StatusResponse) -> Value {
    let (counts, bytes) = counts_json(&s.counts);
    let mut namespaces = Map::new();
    for ns in &s.namespaces {
        let (c, b) = counts_json(&ns.counts);
        namespaces.insert(
            ns.namespace.clone(),
            json!({ "counts": c, "bytes": b, "paused": ns.paused, "policy": policy_name(ns.policy) }),
        );
    }
    let remote = s.remote.as_ref().map_or(Value::Null, |r| {
        json!({
            "url": r.url,
            "user": if r.user.is_empty() { Value::Null } else { r.user.clone().into() },
            "reachable": r.reachable,
            "unauthorized": r.unauthorized,
            "last_contact": ts_json(&r.last_contact),
            "last_error": if r.last_error.is_empty() { Value::Null } else { r.last_error.clone().into() },
            "identity": if r.identity.is_empty() { Value::Null } else { r.identity.clone().into() },
        })
    });
    json!({
        "counts": counts,
        "bytes": bytes,
        "namespaces": namespaces,
        "transfers": s.transfers.iter().map(transfer_json).collect::<Vec<_>>(),
        "remote": remote,
        "paused": s.paused,
        "limits": s.limits.as_ref().map_or(Value::Null, limits_json),
        "last_cycle": s.last_cycle.as_ref().map_or(Value::Null, cycle_json),
        "next_cycle": ts_json(&s.next_cycle),
        "cycle_running": s.cycle_running,
        "daemon_version": s.daemon_version,
        "api_version": s.api_version,
        "started": ts_json(&s.started),
        "last_event_id": s.last_event_id,
        "alarms": s.alarms.iter().map(alarm_json).collect::<Vec<_>>(),
    })
}

/// `status` for people.
pub fn status_text(s: &pb::StatusResponse) -> String {
    let now = now_unix();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "blobsyncd {} (API v1.{}), up since {}",
        s.daemon_version,
        s.api_version,
        s.started.as_ref().map_or("-".into(), rfc3339)
    );
    if let Some(r) = &s.remote {
        let state = if r.unauthorized {
            format!("REFUSED CREDENTIALS: {}", r.last_error)
        } else if r.reachable {
            "reachable".to_owned()
        } else if r.last_error.is_empty() {
            "not contacted yet".to_owned()
        } else {
            format!("UNREACHABLE: {}", r.last_error)
        };
        let user = if r.user.is_empty() {
            String::new()
        } else {
            format!(" as {}", r.user)
        };
        let _ = writeln!(out, "remote:   {}{user} ({state})", r.url);
        if !r.identity.is_empty() {
            let _ = writeln!(out, "identity: {}", r.identity);
        }
    }
    for a in &s.alarms {
        let _ = writeln!(out, "{}", alarm_text(a));
    }
    let paused: Vec<&str> = s
        .namespaces
        .iter()
        .filter(|n| n.paused)
        .map(|n| n.namespace.as_str())
        .collect();
    let _ = writeln!(
        out,
        "sync:     {}",
        match (s.paused, paused.is_empty()) {
            (true, _) => "PAUSED".to_owned(),
            (false, true) => "running".to_owned(),
            (false, false) => format!("running (paused: {})", paused.join(", ")),
        }
    );
    let cycle = if s.cycle_running {
        "a cycle is running now".to_owned()
    } else {
        format!("next cycle {}", relative(&s.next_cycle, now))
    };
    let last = s.last_cycle.as_ref().map_or("none yet".to_owned(), |c| {
        let when = match relative(&c.finished, now).as_str() {
            "now" => "just now".to_owned(),
            w => w.to_owned(),
        };
        let err = if c.error.is_empty() {
            String::new()
        } else {
            format!(", error: {}", c.error)
        };
        format!(
            "#{} {when}: {} up, {} down, {} failed, {} to retry{err}",
            c.cycle, c.uploaded, c.downloaded, c.failed, c.pending
        )
    });
    let _ = writeln!(out, "cycles:   last {last}; {cycle}");
    if let Some(l) = &s.limits {
        let _ = writeln!(
            out,
            "limits:   up {}, down {}, {} transfers",
            human_rate(l.bwlimit_up),
            human_rate(l.bwlimit_down),
            l.transfers
        );
    }
    out.push('\n');
    // A daemon that does not track sizes per status sends zeros: show no SIZE column then
    // rather than a column of misleading "0 B".
    let sizes = s.counts.iter().any(|c| c.bytes > 0);
    let mut cols = vec![("STATUS", Align::Left), ("BLOBS", Align::Right)];
    if sizes {
        cols.push(("SIZE", Align::Right));
    }
    let mut t = Table::new(&cols);
    for st in STATUSES {
        let c = s.counts.iter().find(|c| c.status == st as i32);
        let (n, b) = c.map_or((0, 0), |c| (c.count, c.bytes));
        let mut row = vec![status_name(st as i32), n.to_string()];
        if sizes {
            row.push(human_size(b));
        }
        t.row(row);
    }
    out.push_str(&t.render());
    if !s.namespaces.is_empty() {
        out.push('\n');
        let ns_sizes = s
            .namespaces
            .iter()
            .any(|n| n.counts.iter().any(|c| c.bytes > 0));
        let mut cols = vec![("NAMESPACE", Align::Left), ("BLOBS", Align::Right)];
        if ns_sizes {
            cols.push(("SIZE", Align::Right));
        }
        cols.extend([("POLICY", Align::Left), ("STATE", Align::Left)]);
        let mut t = Table::new(&cols);
        for ns in &s.namespaces {
            let n: u64 = ns.counts.iter().map(|c| c.count).sum();
            let b: u64 = ns.counts.iter().map(|c| c.bytes).sum();
            // Settled states need nothing more from the sync engine.
            let settled = [
                pb::BlobStatus::Synced as i32,
                pb::BlobStatus::LocalOnly as i32,
                pb::BlobStatus::RemoteOnly as i32,
            ];
            let unsettled: u64 = ns
                .counts
                .iter()
                .filter(|c| !settled.contains(&c.status))
                .map(|c| c.count)
                .sum();
            let state = match (ns.paused, unsettled) {
                (true, _) => "paused".to_owned(),
                (false, 0) => "in sync".to_owned(),
                (false, p) => format!("{p} not synced"),
            };
            let mut row = vec![ns.namespace.clone(), n.to_string()];
            if ns_sizes {
                row.push(human_size(b));
            }
            row.push(if ns.policy == 0 {
                "-".to_owned()
            } else {
                policy_name(ns.policy).to_ascii_lowercase()
            });
            row.push(state);
            t.row(row);
        }
        out.push_str(&t.render());
    }
    if !s.transfers.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            ("DIR", Align::Left),
            ("NAMESPACE", Align::Left),
            ("ID", Align::Left),
            ("DONE", Align::Right),
            ("TOTAL", Align::Right),
            ("ATTEMPT", Align::Right),
        ]);
        for tr in &s.transfers {
            t.row(vec![
                direction_name(tr.direction).to_ascii_lowercase(),
                tr.namespace.clone(),
                tr.id.clone(),
                human_size(tr.bytes_done),
                human_size(tr.bytes_total),
                tr.attempt.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

/// A cycle summary for people, one line.
pub fn cycle_text(c: &pb::CycleSummary) -> String {
    let mut s = format!(
        "cycle {}{}: {} uploaded ({}), {} downloaded ({}), {} deleted here, {} deleted on the \
         server, {} failed, {} to retry",
        c.cycle,
        if c.full_list { " (full listing)" } else { "" },
        c.uploaded,
        human_size(c.bytes_up),
        c.downloaded,
        human_size(c.bytes_down),
        c.deleted_local,
        c.deleted_remote,
        c.failed,
        c.pending
    );
    if c.reuploaded_missing > 0 {
        let _ = write!(
            s,
            "; {} re-uploaded (missing on the server)",
            c.reuploaded_missing
        );
    }
    if c.deletions_held > 0 {
        let _ = write!(
            s,
            "; {} remote deletions HELD (blobctl sync --allow-mass-delete applies them)",
            c.deletions_held
        );
    }
    if !c.error.is_empty() {
        let _ = write!(s, "; stopped early: {}", c.error);
    }
    s
}

/// A watch event as one JSON object: `{"id", "time", "<kind>": {...}}` (the proto's oneof
/// field name as the key, as protobuf's JSON mapping does).
pub fn event_json(e: &pb::Event) -> Value {
    use pb::event::Kind;
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("time".into(), ts_json(&e.time));
    let (key, body) = match &e.kind {
        Some(Kind::StatusChanged(s)) => (
            "status_changed",
            json!({
                "namespace": s.namespace, "id": s.id,
                "old_status": opt_status(s.old_status), "new_status": opt_status(s.new_status),
                "reason": if s.reason.is_empty() { Value::Null } else { s.reason.clone().into() },
            }),
        ),
        Some(Kind::TransferProgress(p)) => (
            "transfer_progress",
            json!({
                "namespace": p.namespace, "id": p.id, "direction": direction_name(p.direction),
                "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
            }),
        ),
        Some(Kind::CycleStarted(c)) => (
            "cycle_started",
            json!({ "cycle": c.cycle, "full_list": c.full_list }),
        ),
        Some(Kind::CycleFinished(c)) => (
            "cycle_finished",
            json!({ "summary": c.summary.as_ref().map_or(Value::Null, cycle_json) }),
        ),
        Some(Kind::TransferFailed(f)) => (
            "transfer_failed",
            json!({
                "namespace": f.namespace, "id": f.id, "direction": direction_name(f.direction),
                "message": f.message, "attempt": f.attempt, "retryable": f.retryable,
                "next_attempt": ts_json(&f.next_attempt),
            }),
        ),
        Some(Kind::EventsMissed(g)) => (
            "events_missed",
            json!({
                "reason": pb::events_missed::Reason::try_from(g.reason)
                    .map(|r| strip(r.as_str_name(), "REASON_"))
                    .unwrap_or_else(|_| g.reason.to_string()),
                "first_id": g.first_id, "last_id": g.last_id,
            }),
        ),
        Some(Kind::PauseChanged(p)) => ("pause_changed", pause_json(p.state.as_ref())),
        Some(Kind::Error(err)) => (
            "error",
            json!({ "message": err.message, "namespace": err.namespace, "id": err.id }),
        ),
        Some(Kind::Alarm(a)) => ("alarm", alarm_json(a)),
        None => ("unknown", Value::Null),
    };
    m.insert(key.into(), body);
    Value::Object(m)
}

fn opt_status(v: i32) -> Value {
    if v == 0 {
        Value::Null
    } else {
        status_name(v).into()
    }
}

/// A watch event for people, one line.
/// What `watch` prints in text, event by event: a cycle that did nothing prints nothing (its
/// "started" line is held until something happens in it), progress lines carry the rate since
/// the transfer's first progress event, and progress that arrives after the blob's last
/// status change of that transfer (a late 100 % after SYNCED) is dropped.
#[derive(Default)]
pub struct WatchView {
    /// The held "cycle N started" line.
    held_start: Option<String>,
    /// First progress seen per transfer: (time, bytes done then).
    started: std::collections::HashMap<(String, String, i32), (std::time::Instant, u64)>,
    /// Transfers whose blob already reached a settled status.
    settled: std::collections::HashSet<(String, String)>,
}

impl WatchView {
    /// The lines to print for `e` (none, one, or the held start line and this one).
    pub fn lines(&mut self, e: &pb::Event) -> Vec<String> {
        use pb::event::Kind;
        let mut text = event_text(e);
        match &e.kind {
            Some(Kind::CycleStarted(_)) => {
                self.held_start = Some(text);
                return Vec::new();
            }
            Some(Kind::CycleFinished(c)) => {
                let idle = c.summary.as_ref().is_none_or(cycle_is_idle);
                let start = self.held_start.take();
                if idle {
                    return Vec::new();
                }
                return start.into_iter().chain(std::iter::once(text)).collect();
            }
            Some(Kind::StatusChanged(s)) => {
                let key = (s.namespace.clone(), s.id.clone());
                let settled = [
                    pb::BlobStatus::Synced as i32,
                    pb::BlobStatus::FailedUpload as i32,
                    pb::BlobStatus::FailedDownload as i32,
                    0,
                ];
                if settled.contains(&s.new_status) {
                    self.settled.insert(key.clone());
                    self.started.retain(|k, _| (&k.0, &k.1) != (&key.0, &key.1));
                } else {
                    self.settled.remove(&key);
                }
            }
            Some(Kind::TransferProgress(p)) => {
                if self.settled.contains(&(p.namespace.clone(), p.id.clone())) {
                    return Vec::new();
                }
                let key = (p.namespace.clone(), p.id.clone(), p.direction);
                let now = std::time::Instant::now();
                let (t0, b0) = *self.started.entry(key).or_insert((now, p.bytes_done));
                let secs = now.duration_since(t0).as_secs_f64();
                if secs >= 0.5 && p.bytes_done > b0 {
                    let rate = ((p.bytes_done - b0) as f64 / secs) as u64;
                    text.push_str(&format!("  {}/s", human_size(rate)));
                }
                if let Some(pct) = p.bytes_done.saturating_mul(100).checked_div(p.bytes_total) {
                    text.push_str(&format!("  {pct}%"));
                }
            }
            _ => {}
        }
        self.held_start
            .take()
            .into_iter()
            .chain(std::iter::once(text))
            .collect()
    }
}

/// A cycle that moved nothing, failed nothing and listed no change.
fn cycle_is_idle(c: &pb::CycleSummary) -> bool {
    c.uploaded == 0
        && c.downloaded == 0
        && c.deleted_local == 0
        && c.deleted_remote == 0
        && c.failed == 0
        && c.reuploaded_missing == 0
        && c.deletions_held == 0
        && c.error.is_empty()
}

pub fn event_text(e: &pb::Event) -> String {
    use pb::event::Kind;
    let time = e.time.as_ref().map_or("-".into(), rfc3339);
    let what = match &e.kind {
        Some(Kind::StatusChanged(s)) => {
            let old = if s.old_status == 0 {
                "new".into()
            } else {
                status_name(s.old_status)
            };
            let new = if s.new_status == 0 {
                "gone".into()
            } else {
                status_name(s.new_status)
            };
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.reason)
            };
            format!("{}/{}  {old} -> {new}{reason}", s.namespace, s.id)
        }
        Some(Kind::TransferProgress(p)) => format!(
            "{}/{}  {} {} / {}",
            p.namespace,
            p.id,
            direction_name(p.direction).to_ascii_lowercase(),
            human_size(p.bytes_done),
            human_size(p.bytes_total)
        ),
        Some(Kind::CycleStarted(c)) => format!(
            "cycle {} started{}",
            c.cycle,
            if c.full_list { " (full listing)" } else { "" }
        ),
        Some(Kind::CycleFinished(c)) => c
            .summary
            .as_ref()
            .map_or("cycle finished".into(), cycle_text),
        Some(Kind::TransferFailed(f)) => {
            let attempt = if f.attempt > 0 {
                format!(" attempt {}", f.attempt)
            } else {
                String::new()
            };
            let next = match (f.retryable, &f.next_attempt) {
                (false, _) => " (given up)".to_owned(),
                (true, None) => " (will retry)".to_owned(),
                (true, t) => format!(" (retry {})", relative(t, now_unix())),
            };
            format!(
                "{}/{}  {}{attempt} failed: {}{next}",
                f.namespace,
                f.id,
                direction_name(f.direction).to_ascii_lowercase(),
                f.message,
            )
        }
        Some(Kind::EventsMissed(g)) => format!(
            "missed events {}..={} ({})",
            g.first_id,
            g.last_id,
            if g.reason == pb::events_missed::Reason::SlowWatcher as i32 {
                "this watcher fell behind"
            } else {
                "no longer buffered"
            }
        ),
        Some(Kind::PauseChanged(p)) => pause_text(p.state.as_ref()),
        Some(Kind::Error(err)) => format!("error: {}", err.message),
        Some(Kind::Alarm(a)) => alarm_text(a),
        None => "(an event this blobctl does not know)".into(),
    };
    format!("{time}  #{:<6} {what}", e.id)
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
