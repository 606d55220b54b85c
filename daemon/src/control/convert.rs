//! Translation between the proto messages and the daemon's own types, and the one function
//! that turns engine errors into gRPC statuses.
//!
//! Pure functions only: this module never calls the engine or touches files. Validation of
//! everything a client sends (ids, namespaces, enums, ranges) happens here, so the engine
//! only ever sees checked values.

use std::time::{SystemTime, UNIX_EPOCH};

use blobsync_proto as pb;
use blobsync_shared::{BlobId, Namespace};
use tonic::Status as GrpcStatus;

use crate::events::{self, Delivery, EventKind};
use crate::handle::{EngineError, ErrorCode};
use crate::status::{Priority, Status};
use crate::store::ops::BlobInfo;

/// The one place engine errors become gRPC statuses: the engine classifies (see
/// [`EngineError::code`]), the message is the error's own human text (never a `{:?}` dump).
pub fn engine_status(e: EngineError) -> GrpcStatus {
    let msg = e.to_string();
    match e.code() {
        ErrorCode::InvalidArgument => GrpcStatus::invalid_argument(msg),
        ErrorCode::NotFound => GrpcStatus::not_found(msg),
        ErrorCode::AlreadyExists => GrpcStatus::already_exists(msg),
        ErrorCode::Unavailable => GrpcStatus::unavailable(msg),
        ErrorCode::FailedPrecondition => GrpcStatus::failed_precondition(msg),
        ErrorCode::PermissionDenied => GrpcStatus::permission_denied(msg),
        ErrorCode::Internal => {
            tracing::error!(error = %msg, "control call failed inside the daemon");
            GrpcStatus::internal(format!(
                "{msg} (a local problem in the daemon; its log has details)"
            ))
        }
    }
}

/// A namespace from a request: empty means `default`; anything invalid is InvalidArgument.
#[allow(clippy::result_large_err)]
pub fn namespace_or_default(s: &str) -> Result<Namespace, GrpcStatus> {
    if s.is_empty() {
        return Ok(Namespace::default());
    }
    Namespace::new(s).map_err(|e| GrpcStatus::invalid_argument(e.to_string()))
}

/// An optional namespace filter: empty means "all".
#[allow(clippy::result_large_err)]
pub fn namespace_filter(s: &str) -> Result<Option<Namespace>, GrpcStatus> {
    if s.is_empty() {
        Ok(None)
    } else {
        Namespace::new(s)
            .map(Some)
            .map_err(|e| GrpcStatus::invalid_argument(e.to_string()))
    }
}

/// A required blob id.
#[allow(clippy::result_large_err)]
pub fn blob_id(s: &str) -> Result<BlobId, GrpcStatus> {
    BlobId::new(s).map_err(|e| GrpcStatus::invalid_argument(e.to_string()))
}

/// A status from the wire (UNSPECIFIED and unknown values are InvalidArgument).
#[allow(clippy::result_large_err)]
pub fn status_from_pb(v: i32) -> Result<Status, GrpcStatus> {
    match pb::BlobStatus::try_from(v) {
        Ok(pb::BlobStatus::Synced) => Ok(Status::Synced),
        Ok(pb::BlobStatus::PendingUpload) => Ok(Status::PendingUpload),
        Ok(pb::BlobStatus::PendingDownload) => Ok(Status::PendingDownload),
        Ok(pb::BlobStatus::FailedDownload) => Ok(Status::FailedDownload),
        Ok(pb::BlobStatus::FailedUpload) => Ok(Status::FailedUpload),
        Ok(pb::BlobStatus::PendingDelete) => Ok(Status::PendingDelete),
        Ok(pb::BlobStatus::LocalOnly) => Ok(Status::LocalOnly),
        Ok(pb::BlobStatus::RemoteOnly) => Ok(Status::RemoteOnly),
        Ok(pb::BlobStatus::Unspecified) | Err(_) => Err(GrpcStatus::invalid_argument(format!(
            "{v} is not a blob status; use one of SYNCED, PENDING_UPLOAD, PENDING_DOWNLOAD, \
             FAILED_DOWNLOAD, FAILED_UPLOAD, PENDING_DELETE, LOCAL_ONLY, REMOTE_ONLY"
        ))),
    }
}

/// A status for the wire.
pub fn status_to_pb(s: Status) -> pb::BlobStatus {
    match s {
        Status::Synced => pb::BlobStatus::Synced,
        Status::PendingUpload => pb::BlobStatus::PendingUpload,
        Status::PendingDownload => pb::BlobStatus::PendingDownload,
        Status::FailedDownload => pb::BlobStatus::FailedDownload,
        Status::FailedUpload => pb::BlobStatus::FailedUpload,
        Status::PendingDelete => pb::BlobStatus::PendingDelete,
        Status::LocalOnly => pb::BlobStatus::LocalOnly,
        Status::RemoteOnly => pb::BlobStatus::RemoteOnly,
    }
}

/// A priority from the wire. `unspecified` is what UNSPECIFIED means for this call (MEDIUM
/// for a put; `None` where it must be given, which makes it InvalidArgument).
#[allow(clippy::result_large_err)]
pub fn priority_from_pb(v: i32, unspecified: Option<Priority>) -> Result<Priority, GrpcStatus> {
    let bad = || {
        GrpcStatus::invalid_argument(format!(
            "{v} is not a priority; use PRIORITY_LOW, PRIORITY_MEDIUM, PRIORITY_HIGH or \
             PRIORITY_URGENT"
        ))
    };
    match pb::Priority::try_from(v) {
        Ok(pb::Priority::Low) => Ok(Priority::Low),
        Ok(pb::Priority::Medium) => Ok(Priority::Medium),
        Ok(pb::Priority::High) => Ok(Priority::High),
        Ok(pb::Priority::Urgent) => Ok(Priority::Urgent),
        Ok(pb::Priority::Unspecified) => unspecified.ok_or_else(bad),
        Err(_) => Err(bad()),
    }
}

/// A priority for the wire.
pub fn priority_to_pb(p: Priority) -> pb::Priority {
    match p {
        Priority::Low => pb::Priority::Low,
        Priority::Medium => pb::Priority::Medium,
        Priority::High => pb::Priority::High,
        Priority::Urgent => pb::Priority::Urgent,
    }
}

/// A direction for the wire.
pub fn direction_to_pb(d: events::Direction) -> pb::Direction {
    match d {
        events::Direction::Upload => pb::Direction::Upload,
        events::Direction::Download => pb::Direction::Download,
    }
}

/// A wall-clock time for the wire (times before 1970 do not occur in the daemon; they map
/// to the epoch).
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A stored blob for the wire.
pub fn blob_to_pb(b: &BlobInfo) -> pb::BlobInfo {
    pb::BlobInfo {
        namespace: b.ns.to_string(),
        id: b.id.to_string(),
        size: b.display_size(),
        status: status_to_pb(b.status) as i32,
        priority: priority_to_pb(b.priority) as i32,
        attempts: b.attempts,
        next_attempt: b.next_attempt.map(timestamp),
        last_error: b.last_error.clone().unwrap_or_default(),
        created: Some(timestamp(b.created)),
        updated: Some(timestamp(b.updated)),
        external: b.external,
        local: b.status.has_payload(),
    }
}

/// A cycle summary for the wire.
pub fn cycle_to_pb(c: &events::CycleSummary) -> pb::CycleSummary {
    pb::CycleSummary {
        cycle: c.cycle,
        started: c.started.map(timestamp),
        finished: c.finished.map(timestamp),
        full_list: c.full_listing,
        uploaded: c.uploaded,
        downloaded: c.downloaded,
        deleted_local: c.deleted_local,
        deleted_remote: c.deleted_remote,
        failed: c.failed,
        bytes_up: c.bytes_up,
        bytes_down: c.bytes_down,
        pending: c.retried,
        error: c.error.clone().unwrap_or_default(),
        reuploaded_missing: c.reuploaded_missing,
        deletions_held: c.deletions_held,
    }
}

/// An alarm for the wire.
pub fn alarm_to_pb(a: &events::Alarm) -> pb::Alarm {
    pb::Alarm {
        kind: a.kind.as_str().to_owned(),
        namespace: a.ns.as_ref().map(|n| n.to_string()).unwrap_or_default(),
        message: a.message.clone(),
        count: a.count,
        at: Some(timestamp(a.at)),
    }
}

/// Whether a watcher asked to see this event (`namespace` filter, progress opt-out).
pub fn event_wanted(kind: &EventKind, ns: Option<&Namespace>, no_progress: bool) -> bool {
    if no_progress && matches!(kind, EventKind::TransferProgress { .. }) {
        return false;
    }
    let Some(want) = ns else { return true };
    match kind {
        EventKind::StatusChanged { ns, .. }
        | EventKind::TransferProgress { ns, .. }
        | EventKind::TransferFinished { ns, .. }
        | EventKind::TransferFailed { ns, .. } => ns == want,
        EventKind::Alarm(a) => a.ns.as_ref().is_none_or(|n| n == want),
        // Daemon-wide events go to every watcher.
        EventKind::CycleStarted { .. }
        | EventKind::CycleFinished { .. }
        | EventKind::Error { .. } => true,
    }
}

/// One delivery of the event bus for the wire. A `Dropped(n)` marker right after event
/// `last_seen` becomes EventsMissed covering ids `last_seen+1 ..= last_seen+n`; `None` when
/// the event has no proto form (it then only advances ids, which watchers see as a jump).
pub fn delivery_to_pb(d: &Delivery, last_seen: u64, replaying: bool) -> Option<pb::Event> {
    use pb::event::Kind;
    match d {
        Delivery::Dropped(n) => Some(pb::Event {
            // The marker itself takes no id of its own: it reports the ids it stands for.
            id: last_seen + n,
            time: Some(timestamp(SystemTime::now())),
            kind: Some(Kind::EventsMissed(pb::EventsMissed {
                reason: if replaying {
                    pb::events_missed::Reason::BufferOverwritten
                } else {
                    pb::events_missed::Reason::SlowWatcher
                } as i32,
                first_id: last_seen + 1,
                last_id: last_seen + n,
            })),
        }),
        Delivery::Event(e) => {
            let kind = match &e.kind {
                EventKind::StatusChanged { ns, id, from, to } => {
                    Kind::StatusChanged(pb::StatusChanged {
                        namespace: ns.to_string(),
                        id: id.to_string(),
                        old_status: from.map_or(0, |s| status_to_pb(s) as i32),
                        new_status: to.map_or(0, |s| status_to_pb(s) as i32),
                        reason: String::new(),
                    })
                }
                EventKind::TransferProgress {
                    ns,
                    id,
                    dir,
                    done,
                    total,
                } => Kind::TransferProgress(pb::TransferProgress {
                    namespace: ns.to_string(),
                    id: id.to_string(),
                    direction: direction_to_pb(*dir) as i32,
                    bytes_done: *done,
                    bytes_total: *total,
                }),
                // A finished transfer is reported as its final progress; the status change
                // that follows tells the outcome.
                EventKind::TransferFinished { ns, id, dir, bytes } => {
                    Kind::TransferProgress(pb::TransferProgress {
                        namespace: ns.to_string(),
                        id: id.to_string(),
                        direction: direction_to_pb(*dir) as i32,
                        bytes_done: *bytes,
                        bytes_total: *bytes,
                    })
                }
                EventKind::TransferFailed {
                    ns,
                    id,
                    dir,
                    error,
                    attempt,
                    will_retry,
                    next_attempt,
                } => Kind::TransferFailed(pb::TransferFailed {
                    namespace: ns.to_string(),
                    id: id.to_string(),
                    direction: direction_to_pb(*dir) as i32,
                    message: error.clone(),
                    attempt: *attempt,
                    retryable: *will_retry,
                    next_attempt: next_attempt.map(timestamp),
                }),
                EventKind::CycleStarted { cycle, full_list } => {
                    Kind::CycleStarted(pb::CycleStarted {
                        cycle: *cycle,
                        full_list: *full_list,
                    })
                }
                EventKind::CycleFinished { summary } => Kind::CycleFinished(pb::CycleFinished {
                    summary: Some(cycle_to_pb(summary)),
                }),
                EventKind::Alarm(a) => Kind::Alarm(alarm_to_pb(a)),
                EventKind::Error { message } => Kind::Error(pb::ErrorEvent {
                    message: message.clone(),
                    namespace: String::new(),
                    id: String::new(),
                }),
            };
            Some(pb::Event {
                id: e.id,
                time: Some(timestamp(e.time)),
                kind: Some(kind),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips() {
        for s in Status::ALL {
            assert_eq!(status_from_pb(status_to_pb(s) as i32).unwrap(), s);
            // The proto names and the daemon's names agree.
            assert_eq!(
                status_to_pb(s).as_str_name().strip_prefix("BLOB_STATUS_"),
                Some(s.as_str())
            );
        }
        assert_eq!(
            status_from_pb(0).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            status_from_pb(42).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn priorities_default_only_where_allowed() {
        assert_eq!(
            priority_from_pb(0, Some(Priority::Medium)).unwrap(),
            Priority::Medium
        );
        assert_eq!(
            priority_from_pb(0, None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            priority_from_pb(9, Some(Priority::Medium))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        for p in Priority::ALL {
            assert_eq!(priority_from_pb(priority_to_pb(p) as i32, None).unwrap(), p);
        }
    }

    #[test]
    fn names_are_validated_with_the_shared_rule() {
        assert_eq!(namespace_or_default("").unwrap(), Namespace::default());
        let e = namespace_or_default("a/b").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("\"a/b\""), "{}", e.message());
        assert_eq!(
            blob_id("").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            blob_id(&"x".repeat(129)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(namespace_filter("").unwrap(), None);
    }

    #[test]
    fn dropped_markers_name_the_missed_ids() {
        let e = delivery_to_pb(&Delivery::Dropped(5), 10, false).unwrap();
        let Some(pb::event::Kind::EventsMissed(m)) = e.kind else {
            panic!("{e:?}")
        };
        assert_eq!((m.first_id, m.last_id), (11, 15));
        assert_eq!(m.reason, pb::events_missed::Reason::SlowWatcher as i32);
        assert_eq!(e.id, 15);
    }
}
