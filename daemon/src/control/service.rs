//! [`Service`]: the `blobsync.v1.Control` implementation. Each RPC validates its request
//! (through `convert`), makes one engine-handle call, and converts the answer back.
//!
//! Streams (put, get, watch, verify) are bounded and stop when the client goes away or the
//! daemon shuts down. No sync logic lives here, and no blob is ever held in memory whole.

use std::pin::Pin;
use std::time::Duration;

use blobsync_proto as pb;
use blobsync_proto::control_server::Control;
use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::wire::Flag;
use blobsync_shared::{BlobId, Namespace};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::convert::{
    self, blob_id, blob_to_pb, cycle_to_pb, namespace_filter, namespace_or_default,
    priority_from_pb, status_from_pb, status_to_pb, timestamp,
};
use super::engine_status;

mod data;
use crate::events::{Delivery, EventKind};
use crate::handle::{EngineHandle, LimitsUpdate, VerifyProgress};
use crate::remote::RemoteListFilter;
use crate::status::{Priority, Status};
use crate::store::ListFilter;

/// Bytes per Get chunk: the proto promises at most 1 MiB; 256 KiB keeps memory per stream
/// small while per-message overhead stays negligible.
const GET_CHUNK: usize = 256 * 1024;
/// Messages a server stream may run ahead of its client. With Get chunks this bounds the
/// memory of one slow reader to about 1 MiB.
const STREAM_QUEUE: usize = 4;
/// Events a watcher's stream may hold before the watcher counts as slow; the event bus
/// then drops for it (and says so) instead of blocking the daemon.
const WATCH_QUEUE: usize = 64;
/// Default and largest page of List and ListRemote.
const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;
/// Verify progress messages are sent at most this often.
const VERIFY_PROGRESS_EVERY: Duration = Duration::from_millis(250);

type RpcResult<T> = Result<Response<T>, GrpcStatus>;
type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, GrpcStatus>> + Send>>;

/// The control service over one engine.
pub struct Service {
    handle: EngineHandle,
    cancel: CancellationToken,
    info: super::DaemonInfo,
}

impl Service {
    /// A service calling `handle`; `cancel` ends its open streams at shutdown.
    pub fn new(handle: EngineHandle, cancel: CancellationToken, info: super::DaemonInfo) -> Self {
        Self {
            handle,
            cancel,
            info,
        }
    }

    /// Validates a put header into (namespace, id, priority).
    #[allow(clippy::result_large_err)]
    fn put_target(h: &pb::PutHeader) -> Result<(Namespace, Option<BlobId>, Priority), GrpcStatus> {
        let ns = namespace_or_default(&h.namespace)?;
        let id = if h.id.is_empty() {
            None
        } else {
            Some(blob_id(&h.id)?)
        };
        let priority = priority_from_pb(h.priority, Some(Priority::Medium))?;
        Ok((ns, id, priority))
    }

    /// For `wait` puts: returns once the blob is SYNCED or FAILED_UPLOAD (or gone).
    async fn wait_settled(
        &self,
        ns: &Namespace,
        id: &BlobId,
    ) -> Result<crate::store::BlobInfo, GrpcStatus> {
        // Subscribe before looking, so a change between the look and the wait is not lost.
        let mut sub = self.handle.subscribe(None);
        // A refusal of the credentials changes no blob's status: looked at every second.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let b = self.handle.info(ns, id).await.map_err(engine_status)?;
            if !matches!(b.status, Status::PendingUpload) {
                return Ok(b);
            }
            if let Some(why) = self.handle.refused_credentials() {
                return Err(GrpcStatus::permission_denied(format!(
                    "{why}. {ns}/{id} is stored on this device and stays queued for upload"
                )));
            }
            loop {
                let d = tokio::select! {
                    d = sub.next() => d,
                    _ = tick.tick() => break,
                    _ = self.cancel.cancelled() => None,
                };
                match d {
                    None => {
                        return Err(GrpcStatus::unavailable(
                            "the daemon is shutting down; the blob is stored and its upload \
                             will resume at the next start",
                        ));
                    }
                    // Events were dropped: look again rather than guess.
                    Some(Delivery::Dropped(_)) => break,
                    Some(Delivery::Event(e)) => match e.kind {
                        EventKind::StatusChanged { ns: n, id: i, .. } if &n == ns && &i == id => {
                            break;
                        }
                        _ => {}
                    },
                }
            }
        }
    }

    fn page_limit(limit: u32) -> u32 {
        match limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        }
    }
}

/// A page token for List: the (namespace, id) of the last row, `namespace/id`. Neither may
/// contain `/`, so the split is unambiguous.
fn encode_token(ns: &Namespace, id: &BlobId) -> String {
    format!("{ns}/{id}")
}

#[allow(clippy::result_large_err)]
fn decode_token(t: &str) -> Result<Option<(Namespace, BlobId)>, GrpcStatus> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || {
        GrpcStatus::invalid_argument(
            "page_token is not one this daemon issued; pass the next_page_token of the \
             previous page, or an empty token for the first page",
        )
    };
    let (ns, id) = t.split_once('/').ok_or_else(bad)?;
    Ok(Some((
        Namespace::new(ns).map_err(|_| bad())?,
        BlobId::new(id).map_err(|_| bad())?,
    )))
}

#[allow(clippy::result_large_err)]
fn flag_from_pb(v: i32) -> Result<Flag, GrpcStatus> {
    match pb::Flag::try_from(v) {
        Ok(pb::Flag::Pending) => Ok(Flag::Pending),
        Ok(pb::Flag::Processing) => Ok(Flag::Processing),
        Ok(pb::Flag::Processed) => Ok(Flag::Processed),
        Ok(pb::Flag::Failed) => Ok(Flag::Failed),
        Ok(pb::Flag::Unspecified) | Err(_) => Err(GrpcStatus::invalid_argument(format!(
            "{v} is not a flag; use FLAG_PENDING, FLAG_PROCESSING, FLAG_PROCESSED or FLAG_FAILED"
        ))),
    }
}

fn flag_to_pb(f: Flag) -> i32 {
    (match f {
        Flag::Pending => pb::Flag::Pending,
        Flag::Processing => pb::Flag::Processing,
        Flag::Processed => pb::Flag::Processed,
        Flag::Failed => pb::Flag::Failed,
    }) as i32
}

#[tonic::async_trait]
impl Control for Service {
    async fn put(&self, request: Request<Streaming<pb::PutRequest>>) -> RpcResult<pb::PutResponse> {
        data::put(self, request).await
    }

    async fn put_path(&self, request: Request<pb::PutPathRequest>) -> RpcResult<pb::PutResponse> {
        data::put_path(self, request).await
    }

    async fn put_paths(
        &self,
        request: Request<pb::PutPathsRequest>,
    ) -> RpcResult<pb::PutPathsResponse> {
        data::put_paths(self, request).await
    }

    type GetStream = BoxStream<pb::GetResponse>;

    async fn get(&self, request: Request<pb::GetRequest>) -> RpcResult<Self::GetStream> {
        data::get(self, request).await
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> RpcResult<pb::DeleteResponse> {
        let req = request.into_inner();
        let ns = namespace_or_default(&req.namespace)?;
        let id = blob_id(&req.id)?;
        let after = self.handle.delete(&ns, &id).await.map_err(engine_status)?;
        Ok(Response::new(pb::DeleteResponse {
            namespace: ns.to_string(),
            id: id.to_string(),
            status: after.map_or(0, |s| status_to_pb(s) as i32),
        }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> RpcResult<pb::ListResponse> {
        let req = request.into_inner();
        let ns = namespace_filter(&req.namespace)?;
        let statuses = req
            .statuses
            .iter()
            .map(|s| status_from_pb(*s))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = Self::page_limit(req.limit) as usize;
        let mut after = decode_token(&req.page_token)?;
        // The store filters by at most one status; several are filtered here, page by page,
        // so memory stays at one page whatever the store holds.
        let store_status = match statuses.as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        let mut blobs = Vec::new();
        let mut more = true;
        while blobs.len() < limit && more {
            let page = self
                .handle
                .list(ListFilter {
                    ns: ns.clone(),
                    status: store_status,
                    after: after.clone(),
                    limit,
                })
                .await
                .map_err(engine_status)?;
            more = page.len() == limit;
            for b in page {
                after = Some((b.ns.clone(), b.id.clone()));
                if statuses.is_empty() || statuses.contains(&b.status) {
                    blobs.push(blob_to_pb(&b));
                    if blobs.len() == limit {
                        break;
                    }
                }
            }
        }
        let next_page_token = match (&after, blobs.len() == limit) {
            (Some((ns, id)), true) => encode_token(ns, id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListResponse {
            blobs,
            next_page_token,
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> RpcResult<pb::StatusResponse> {
        let s = self.handle.status().await.map_err(engine_status)?;
        type PerStatus = std::collections::BTreeMap<Status, u64>;
        let counts = |m: &PerStatus, bytes: Option<&PerStatus>| -> Vec<pb::StatusCount> {
            m.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(st, n)| pb::StatusCount {
                    status: status_to_pb(*st) as i32,
                    count: *n,
                    bytes: bytes.and_then(|b| b.get(st)).copied().unwrap_or(0),
                })
                .collect()
        };
        let mut names: std::collections::BTreeSet<&Namespace> = s.namespaces.keys().collect();
        names.extend(s.paused_namespaces.iter());
        names.extend(s.policies.keys());
        let namespaces = names
            .into_iter()
            .map(|ns| pb::NamespaceStatus {
                namespace: ns.to_string(),
                counts: s
                    .namespaces
                    .get(ns)
                    .map(|m| counts(m, s.namespace_bytes.get(ns)))
                    .unwrap_or_default(),
                paused: s.paused_namespaces.contains(ns),
                policy: s.policies.get(ns).map_or(0, |p| match p {
                    NamespacePolicy::Eager => pb::NamespacePolicy::Eager as i32,
                    NamespacePolicy::Lazy => pb::NamespacePolicy::Lazy as i32,
                    NamespacePolicy::Incoming => pb::NamespacePolicy::Incoming as i32,
                }),
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            counts: counts(&s.counts, Some(&s.bytes)),
            namespaces,
            transfers: s
                .transfers
                .iter()
                .map(|t| pb::Transfer {
                    namespace: t.ns.to_string(),
                    id: t.id.to_string(),
                    direction: convert::direction_to_pb(t.dir) as i32,
                    bytes_done: t.done,
                    bytes_total: t.total,
                    priority: convert::priority_to_pb(t.priority) as i32,
                    attempt: t.attempt,
                    started: Some(timestamp(t.started)),
                })
                .collect(),
            remote: Some(pb::RemoteStatus {
                // The remote describes itself as `URL as USER` (HTTP): the URL field is a URL.
                url: s
                    .remote
                    .url
                    .split_once(" as ")
                    .map_or(s.remote.url.as_str(), |(u, _)| u)
                    .to_owned(),
                user: s
                    .remote
                    .url
                    .split_once(" as ")
                    .map_or("", |(_, u)| u)
                    .to_owned(),
                reachable: s.remote.reachable == Some(true),
                last_contact: s.remote.last_contact.map(timestamp),
                last_error: s.remote.last_error.clone().unwrap_or_default(),
                identity: s.remote.identity.clone().unwrap_or_default(),
                unauthorized: s.remote.unauthorized,
            }),
            paused: s.paused,
            limits: Some(pb::Limits {
                bwlimit_up: s.limits.up,
                bwlimit_down: s.limits.down,
                transfers: u32::try_from(s.limits.transfers).unwrap_or(u32::MAX),
            }),
            last_cycle: s.last_cycle.as_ref().map(cycle_to_pb),
            next_cycle: if s.paused {
                None
            } else {
                s.next_cycle.map(timestamp)
            },
            cycle_running: s.cycle_running,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: pb::API_VERSION,
            started: Some(timestamp(s.started)),
            last_event_id: s.next_event_id.saturating_sub(1),
            alarms: s.alarms.iter().map(super::convert::alarm_to_pb).collect(),
        }))
    }

    async fn sync(&self, request: Request<pb::SyncRequest>) -> RpcResult<pb::SyncResponse> {
        let req = request.into_inner();
        let summary = tokio::select! {
            r = self.handle.sync_allowing(req.wait, req.allow_mass_delete) => r.map_err(engine_status)?,
            _ = self.cancel.cancelled() => return Err(GrpcStatus::unavailable("the daemon is shutting down")),
        };
        Ok(Response::new(pb::SyncResponse {
            cycle: summary.as_ref().map_or(0, |s| s.cycle),
            summary: summary.as_ref().map(cycle_to_pb),
        }))
    }

    type WatchStream = BoxStream<pb::Event>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> RpcResult<Self::WatchStream> {
        let req = request.into_inner();
        let ns = namespace_filter(&req.namespace)?;
        let mut sub = self.handle.subscribe(req.since);
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let cancel = self.cancel.clone();
        let stopped = self.handle.stopped();
        tokio::spawn(async move {
            let mut last_seen = req.since.unwrap_or(0);
            let mut first = true;
            loop {
                let d = tokio::select! {
                    d = sub.next() => d,
                    _ = cancel.cancelled() => None,
                    _ = stopped.cancelled() => None,
                    _ = tx.closed() => return,
                };
                let Some(d) = d else { return };
                // A Dropped marker first in a resumed stream means the ring no longer held
                // those ids; later ones mean this watcher was too slow.
                let replaying = first && req.since.is_some();
                first = false;
                if let Delivery::Event(e) = &d {
                    if e.id <= last_seen && req.since.is_some() {
                        continue;
                    }
                    if !convert::event_wanted(&e.kind, ns.as_ref(), req.no_progress) {
                        last_seen = e.id;
                        continue;
                    }
                }
                let Some(ev) = convert::delivery_to_pb(&d, last_seen, replaying) else {
                    continue;
                };
                last_seen = ev.id;
                // Waiting here only holds up this watcher's task: the event bus never
                // waits for it, and if it falls behind, the bus drops events for it and the
                // next delivery is a Dropped marker (sent as EventsMissed).
                tokio::select! {
                    r = tx.send(Ok(ev)) => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn retry(&self, request: Request<pb::RetryRequest>) -> RpcResult<pb::RetryResponse> {
        let req = request.into_inner();
        let requeued = match (req.id.is_empty(), req.all_failed) {
            (false, false) => {
                let ns = namespace_or_default(&req.namespace)?;
                let id = blob_id(&req.id)?;
                self.handle.retry(&ns, &id).await.map_err(engine_status)?;
                1
            }
            (true, true) => self
                .handle
                .retry_failed(namespace_filter(&req.namespace)?)
                .await
                .map_err(engine_status)?,
            (true, false) => {
                return Err(GrpcStatus::invalid_argument(
                    "Retry needs a blob id, or all_failed to re-queue every failed blob",
                ));
            }
            (false, true) => {
                return Err(GrpcStatus::invalid_argument(
                    "Retry takes a blob id or all_failed, not both",
                ));
            }
        };
        Ok(Response::new(pb::RetryResponse { requeued }))
    }

    async fn set_priority(
        &self,
        request: Request<pb::SetPriorityRequest>,
    ) -> RpcResult<pb::SetPriorityResponse> {
        let req = request.into_inner();
        let ns = namespace_or_default(&req.namespace)?;
        let id = blob_id(&req.id)?;
        let p = priority_from_pb(req.priority, None)?;
        let b = self
            .handle
            .set_priority(&ns, &id, p)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::SetPriorityResponse {
            blob: Some(blob_to_pb(&b)),
        }))
    }

    async fn pause(&self, request: Request<pb::PauseRequest>) -> RpcResult<pb::PauseResponse> {
        let ns = namespace_filter(&request.into_inner().namespace)?;
        self.handle.pause(ns).await.map_err(engine_status)?;
        Ok(Response::new(pb::PauseResponse {
            state: Some(self.pause_state().await?),
        }))
    }

    async fn resume(&self, request: Request<pb::ResumeRequest>) -> RpcResult<pb::ResumeResponse> {
        let ns = namespace_filter(&request.into_inner().namespace)?;
        self.handle.resume(ns).await.map_err(engine_status)?;
        Ok(Response::new(pb::ResumeResponse {
            state: Some(self.pause_state().await?),
        }))
    }

    async fn set_limits(
        &self,
        request: Request<pb::SetLimitsRequest>,
    ) -> RpcResult<pb::SetLimitsResponse> {
        let req = request.into_inner();
        // The config's bounds: a limit set here must be one the config file could hold.
        // (The bandwidth limits are any u64 there too: 0 = none.)
        use blobsync_shared::config::{TRANSFERS_MAX, TRANSFERS_MIN};
        if let Some(t) = req.transfers
            && !(TRANSFERS_MIN..=TRANSFERS_MAX).contains(&u64::from(t))
        {
            return Err(GrpcStatus::invalid_argument(format!(
                "transfers = {t} is outside {TRANSFERS_MIN}..={TRANSFERS_MAX} (the config's \
                 bounds); to stop transfers, pause syncing with Pause instead"
            )));
        }
        let l = self
            .handle
            .set_limits(LimitsUpdate {
                up: req.bwlimit_up,
                down: req.bwlimit_down,
                transfers: req.transfers.map(|t| t as usize),
            })
            .map_err(engine_status)?;
        Ok(Response::new(pb::SetLimitsResponse {
            limits: Some(pb::Limits {
                bwlimit_up: l.up,
                bwlimit_down: l.down,
                transfers: u32::try_from(l.transfers).unwrap_or(u32::MAX),
            }),
        }))
    }

    type VerifyStream = BoxStream<pb::VerifyResponse>;

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> RpcResult<Self::VerifyStream> {
        data::verify(self, request).await
    }

    async fn get_flags(
        &self,
        request: Request<pb::GetFlagsRequest>,
    ) -> RpcResult<pb::GetFlagsResponse> {
        let req = request.into_inner();
        let ns = namespace_or_default(&req.namespace)?;
        let id = blob_id(&req.id)?;
        let flags = self
            .handle
            .get_flags(&ns, &id)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::GetFlagsResponse {
            flags: flags.into_iter().map(flag_to_pb).collect(),
        }))
    }

    async fn set_flags(
        &self,
        request: Request<pb::SetFlagsRequest>,
    ) -> RpcResult<pb::SetFlagsResponse> {
        let req = request.into_inner();
        let ns = namespace_or_default(&req.namespace)?;
        let id = blob_id(&req.id)?;
        let mut flags = req
            .flags
            .iter()
            .map(|f| flag_from_pb(*f))
            .collect::<Result<Vec<_>, _>>()?;
        flags.sort();
        flags.dedup();
        self.handle
            .set_flags(&ns, &id, flags.clone())
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::SetFlagsResponse {
            flags: flags.into_iter().map(flag_to_pb).collect(),
        }))
    }

    async fn list_remote(
        &self,
        request: Request<pb::ListRemoteRequest>,
    ) -> RpcResult<pb::ListRemoteResponse> {
        let req = request.into_inner();
        let ns = namespace_or_default(&req.namespace)?;
        let flag = match req.filter_flag {
            0 => None,
            f => Some(flag_from_pb(f)?),
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(BlobId::new(&req.page_token).map_err(|_| {
                GrpcStatus::invalid_argument(
                    "page_token is not one this daemon issued; pass the next_page_token of the \
                     previous page, or an empty token for the first page",
                )
            })?)
        };
        let limit = Self::page_limit(req.limit);
        let page = self
            .handle
            .list_remote(
                &ns,
                RemoteListFilter {
                    flag,
                    after,
                    limit: Some(limit),
                    deleted: req.deleted,
                },
            )
            .await
            .map_err(engine_status)?;
        let next_page_token = match page.last() {
            Some(last) if page.len() == limit as usize => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRemoteResponse {
            namespace: ns.to_string(),
            blobs: page
                .iter()
                .map(|d| pb::RemoteBlob {
                    id: d.id.to_string(),
                    size: d.size,
                    created: Some(prost_types::Timestamp {
                        seconds: d.created,
                        nanos: 0,
                    }),
                    flags: d.flags.iter().copied().map(flag_to_pb).collect(),
                    external: d.external,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_version(
        &self,
        _request: Request<pb::GetVersionRequest>,
    ) -> RpcResult<pb::GetVersionResponse> {
        let i = &self.info;
        Ok(Response::new(pb::GetVersionResponse {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: pb::API_VERSION,
            key_store: i.key_store.clone(),
            key_file: i.key_file.display().to_string(),
            user: i.user.clone(),
            config_file: i.config_file.display().to_string(),
        }))
    }

    async fn get_incoming_recipient(
        &self,
        _request: Request<pb::GetIncomingRecipientRequest>,
    ) -> RpcResult<pb::GetIncomingRecipientResponse> {
        Ok(Response::new(pb::GetIncomingRecipientResponse {
            recipient: self.handle.incoming_recipient(),
        }))
    }
}

impl Service {
    async fn pause_state(&self) -> Result<pb::PauseState, GrpcStatus> {
        let s = self.handle.status().await.map_err(engine_status)?;
        Ok(pb::PauseState {
            all: s.paused,
            namespaces: s
                .paused_namespaces
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
    }
}

/// One refused item of `PutPaths`, with the status `PutPath` would have answered.
fn put_error(st: &GrpcStatus) -> pb::put_path_result::Result {
    pb::put_path_result::Result::Error(pb::PutError {
        code: st.code() as i32,
        message: st.message().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let ns = Namespace::new("MX").unwrap();
        let id = BlobId::new("a-1").unwrap();
        let t = encode_token(&ns, &id);
        assert_eq!(decode_token(&t).unwrap(), Some((ns, id)));
        assert_eq!(decode_token("").unwrap(), None);
        for bad in ["nope", "a/b/c", "/x", "x/", "a b/c"] {
            assert_eq!(
                decode_token(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn flags_reject_unspecified() {
        assert_eq!(
            flag_from_pb(0).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            flag_from_pb(pb::Flag::Processed as i32).unwrap(),
            Flag::Processed
        );
        for f in Flag::ALL {
            assert_eq!(flag_from_pb(flag_to_pb(f)).unwrap(), f);
        }
    }

    #[test]
    fn page_limits_are_bounded() {
        assert_eq!(Service::page_limit(0), DEFAULT_PAGE);
        assert_eq!(Service::page_limit(5), 5);
        assert_eq!(Service::page_limit(1_000_000), MAX_PAGE);
    }
}
