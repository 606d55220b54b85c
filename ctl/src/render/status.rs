//! `status` and cycle summaries, as text and as JSON.

use blobsync_proto as pb;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

use super::*;

pub(crate) fn counts_json(counts: &[pb::StatusCount]) -> (Value, Value) {
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

pub(crate) fn transfer_json(t: &pb::Transfer) -> Value {
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
