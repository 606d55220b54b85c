//! Daemon events for `watch`: as JSON objects, and as text lines through [`WatchView`], which
//! folds idle cycles, adds rates to progress and drops progress that comes after the end.

use blobsync_proto as pb;
use serde_json::{Map, Value, json};

use super::*;

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

pub(crate) fn opt_status(v: i32) -> Value {
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
pub(crate) fn cycle_is_idle(c: &pb::CycleSummary) -> bool {
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
