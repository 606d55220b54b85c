//! The RPCs that move blob bytes (Put, PutPath, PutPaths, Get) and Verify, which streams its
//! progress. Each is bounded: no blob is held in memory whole, and a stream stops when its
//! client goes away or the daemon shuts down.

use std::time::Instant;

use blobsync_proto as pb;
use blobsync_shared::{BlobId, Namespace};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use crate::control::convert::{blob_id, blob_to_pb, namespace_filter, namespace_or_default};
use crate::control::engine_status;

use super::*;

pub(super) async fn put(
    svc: &Service,
    request: Request<Streaming<pb::PutRequest>>,
) -> RpcResult<pb::PutResponse> {
    use pb::put_request::Msg;
    let mut stream = request.into_inner();
    let header = match stream.message().await? {
        Some(pb::PutRequest {
            msg: Some(Msg::Header(h)),
        }) => h,
        Some(_) => {
            return Err(GrpcStatus::invalid_argument(
                "the first message of a Put must be its header (namespace, id, ...), then \
                 the chunks",
            ));
        }
        None => {
            return Err(GrpcStatus::invalid_argument(
                "the Put stream ended before its header; send a PutHeader first",
            ));
        }
    };
    let (ns, id, priority) = Service::put_target(&header)?;
    let mut writer = svc
        .handle
        .put_writer(ns, id, priority, header.local_only, header.size_hint)
        .await
        .map_err(engine_status)?;
    // Each chunk goes to the writer as it arrives: memory stays at one chunk. On any
    // error below, `writer` is dropped uncommitted, which removes its temp file.
    loop {
        // A client that stalls mid-upload must not hold up shutdown.
        let next = tokio::select! {
            m = stream.message() => m?,
            _ = svc.cancel.cancelled() => {
                return Err(GrpcStatus::unavailable(
                    "the daemon is shutting down; nothing was stored, send the blob again",
                ));
            }
        };
        let Some(msg) = next else { break };
        match msg.msg {
            Some(Msg::Chunk(data)) => {
                if let Some(hint) = header.size_hint
                    && writer.written() + data.len() as u64 > hint
                {
                    return Err(GrpcStatus::invalid_argument(format!(
                        "the Put sent more than the {hint} bytes its size_hint promised; \
                         nothing was stored"
                    )));
                }
                writer.write(&data).await.map_err(engine_status)?;
            }
            Some(Msg::Header(_)) => {
                return Err(GrpcStatus::invalid_argument(
                    "a Put has exactly one header; this one sent a second; nothing was stored",
                ));
            }
            None => {}
        }
    }
    if let Some(hint) = header.size_hint
        && writer.written() != hint
    {
        return Err(GrpcStatus::invalid_argument(format!(
            "the Put sent {} bytes but its size_hint promised {hint}; nothing was stored",
            writer.written()
        )));
    }
    let (ns, id) = (writer.namespace().clone(), writer.id().clone());
    let mut blob = writer.commit().await.map_err(engine_status)?;
    if header.wait && !header.local_only {
        blob = svc.wait_settled(&ns, &id).await?;
    }
    Ok(Response::new(pb::PutResponse {
        blob: Some(blob_to_pb(&blob)),
    }))
}

pub(super) async fn put_path(
    svc: &Service,
    request: Request<pb::PutPathRequest>,
) -> RpcResult<pb::PutResponse> {
    let req = request.into_inner();
    let header = req.header.unwrap_or_default();
    let (ns, id, priority) = Service::put_target(&header)?;
    let path = std::path::PathBuf::from(&req.path);
    // A missing or unreadable file gets NOT_FOUND / PERMISSION_DENIED
    // (`EngineError::Source`), so an app can tell it from a malformed request.
    let mut blob = svc
        .handle
        .put_path(&path, ns, id, priority, header.local_only)
        .await
        .map_err(engine_status)?;
    if header.wait && !header.local_only {
        blob = svc.wait_settled(&blob.ns.clone(), &blob.id.clone()).await?;
    }
    Ok(Response::new(pb::PutResponse {
        blob: Some(blob_to_pb(&blob)),
    }))
}

pub(super) async fn put_paths(
    svc: &Service,
    request: Request<pb::PutPathsRequest>,
) -> RpcResult<pb::PutPathsResponse> {
    /// Most items in one call: bounds the work (and the answer) of one request.
    const MAX_ITEMS: usize = 10_000;
    let req = request.into_inner();
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        return Err(GrpcStatus::invalid_argument(format!(
            "PutPaths takes 1 to {MAX_ITEMS} items, not {}; split the files into several calls",
            req.items.len()
        )));
    }
    let n = req.items.len();
    let mut results: Vec<Option<pb::put_path_result::Result>> = (0..n).map(|_| None).collect();
    let mut items = Vec::with_capacity(n);
    let mut slots = Vec::with_capacity(n);
    for (i, it) in req.items.into_iter().enumerate() {
        let header = it.header.unwrap_or_default();
        match Service::put_target(&header) {
            Ok((ns, id, priority)) => {
                slots.push(i);
                items.push(crate::handle::PutItem {
                    path: std::path::PathBuf::from(&it.path),
                    ns,
                    id,
                    priority,
                    local_only: header.local_only,
                });
            }
            Err(st) => results[i] = Some(put_error(&st)),
        }
    }
    if !items.is_empty() {
        let done = svc.handle.put_paths(items).await.map_err(engine_status)?;
        for (i, r) in slots.into_iter().zip(done) {
            results[i] = Some(match r {
                Ok(b) => pb::put_path_result::Result::Blob(blob_to_pb(&b)),
                Err(e) => put_error(&engine_status(e)),
            });
        }
    }
    Ok(Response::new(pb::PutPathsResponse {
        results: results
            .into_iter()
            .map(|r| pb::PutPathResult { result: r })
            .collect(),
    }))
}

pub(super) async fn get(
    svc: &Service,
    request: Request<pb::GetRequest>,
) -> RpcResult<BoxStream<pb::GetResponse>> {
    let req = request.into_inner();
    let ns = namespace_or_default(&req.namespace)?;
    let id = blob_id(&req.id)?;
    let mut info = svc.handle.info(&ns, &id).await.map_err(engine_status)?;
    if req.range.is_some() && info.size.is_none() && req.wait {
        // Not local yet, so the plaintext size is unknown: fetch first (as a whole
        // read would), then cut the range at the real end like for a local blob.
        drop(
            svc.handle
                .open_for_read(&ns, &id, None, true)
                .await
                .map_err(engine_status)?,
        );
        info = svc.handle.info(&ns, &id).await.map_err(engine_status)?;
    }
    let range = match req.range {
        None => None,
        Some(r) => {
            if let Some(end) = r.end
                && end <= r.start
            {
                return Err(GrpcStatus::invalid_argument(format!(
                    "range [{}, {end}) is empty or reversed; the end must be greater than \
                     the start",
                    r.start
                )));
            }
            // The size is known for local blobs; for others the engine checks after the
            // fetch.
            match info.size {
                Some(size) => {
                    if r.start >= size && !(r.start == 0 && size == 0) {
                        return Err(GrpcStatus::invalid_argument(format!(
                            "range start {} is past the end of blob {id} ({size} bytes)",
                            r.start
                        )));
                    }
                    Some(r.start..r.end.unwrap_or(size).min(size))
                }
                None => r.end.map(|end| r.start..end),
            }
        }
    };
    let start = range.as_ref().map_or(0, |r| r.start);
    let (mut file, length) = svc
        .handle
        .open_for_read(&ns, &id, range, req.wait)
        .await
        .map_err(engine_status)?;
    // After a fetch the row changed (status, size): report the current one.
    let info = svc.handle.info(&ns, &id).await.map_err(engine_status)?;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let header = pb::GetResponse {
        msg: Some(pb::get_response::Msg::Header(pb::GetHeader {
            blob: Some(blob_to_pb(&info)),
            start,
            length,
        })),
    };
    let cancel = svc.cancel.clone();
    tokio::spawn(async move {
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        let mut left = length;
        while left > 0 {
            let mut buf = vec![0u8; GET_CHUNK.min(usize::try_from(left).unwrap_or(GET_CHUNK))];
            let read = tokio::select! {
                r = file.read(&mut buf) => r,
                _ = cancel.cancelled() => {
                    let _ = tx.send(Err(GrpcStatus::unavailable("the daemon is shutting down"))).await;
                    return;
                }
            };
            let msg = match read {
                Ok(0) => Err(GrpcStatus::internal(format!(
                    "blob {id}'s local file ended {left} bytes early; run `blobctl verify`"
                ))),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    Ok(pb::GetResponse {
                        msg: Some(pb::get_response::Msg::Chunk(buf)),
                    })
                }
                Err(e) => Err(GrpcStatus::internal(format!(
                    "reading blob {id}'s local file failed: {e}"
                ))),
            };
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

pub(super) async fn verify(
    svc: &Service,
    request: Request<pb::VerifyRequest>,
) -> RpcResult<BoxStream<pb::VerifyResponse>> {
    use pb::verify_response::Msg;
    let req = request.into_inner();
    let ns = namespace_filter(&req.namespace)?;
    let id = if req.id.is_empty() {
        None
    } else {
        Some(blob_id(&req.id)?)
    };
    // One blob is named by namespace and id; its namespace defaults like everywhere.
    let ns = if id.is_some() {
        Some(ns.unwrap_or_default())
    } else {
        ns
    };
    let (ptx, mut prx) = mpsc::channel::<VerifyProgress>(STREAM_QUEUE * 16);
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let handle = svc.handle.clone();
    let cancel = svc.cancel.clone();
    tokio::spawn(async move {
        let run = handle.verify_only(ns, id, req.remote, ptx);
        tokio::pin!(run);
        let mut last_sent = Instant::now() - VERIFY_PROGRESS_EVERY;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                Some(p) = prx.recv() => {
                    if last_sent.elapsed() >= VERIFY_PROGRESS_EVERY {
                        last_sent = Instant::now();
                        let msg = pb::VerifyResponse { msg: Some(Msg::Progress(pb::VerifyProgress {
                            checked: p.checked, total: p.total, bytes_done: 0, bytes_total: 0,
                        })) };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = cancel.cancelled() => {
                    let _ = tx.send(Err(GrpcStatus::unavailable("the daemon is shutting down"))).await;
                    return;
                }
                _ = tx.closed() => return,
            }
        };
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(engine_status(e))).await;
                return;
            }
        };
        for d in &report.damaged {
            let kind = match (d.copy, d.problem.contains("missing")) {
                ("local", true) => pb::verify_problem::Kind::LocalMissing,
                ("local", false) => pb::verify_problem::Kind::LocalCorrupt,
                (_, true) => pb::verify_problem::Kind::RemoteMissing,
                (_, false) => pb::verify_problem::Kind::RemoteInvalid,
            };
            let msg = pb::VerifyResponse {
                msg: Some(Msg::Problem(pb::VerifyProblem {
                    namespace: d.ns.to_string(),
                    id: d.id.to_string(),
                    kind: kind as i32,
                    detail: d.problem.clone(),
                    action: if d.requeued {
                        "queued for download".into()
                    } else {
                        String::new()
                    },
                })),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        let mut bad: Vec<(&Namespace, &BlobId)> =
            report.damaged.iter().map(|d| (&d.ns, &d.id)).collect();
        bad.sort();
        bad.dedup();
        let checked = report.checked_local.max(report.checked_remote);
        let problems = bad.len() as u64;
        let _ = tx
            .send(Ok(pb::VerifyResponse {
                msg: Some(Msg::Report(pb::VerifyReport {
                    checked,
                    ok: checked.saturating_sub(problems),
                    problems,
                    bytes: 0,
                    skipped: report.skipped.len() as u64,
                    skipped_blobs: report
                        .skipped
                        .iter()
                        .map(|(ns, id, why)| pb::VerifySkipped {
                            namespace: ns.to_string(),
                            id: id.to_string(),
                            reason: why.clone(),
                        })
                        .collect(),
                })),
            }))
            .await;
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
