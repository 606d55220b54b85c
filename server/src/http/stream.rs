//! `POST /stream/{user}`: many blobs in one request, up (Soledad's framing, one index commit
//! for the batch) and down (blobsync's frames, or Soledad's for Soledad clients).

use super::blob::{if_absent_since, over_quota, read_small_body};
use super::*;

// ---- POST /stream/{user} ---------------------------------------------------------------

pub(super) async fn stream(st: &ServerState, user: String, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(
        &req,
        &[query::NAMESPACE, query::DIRECTION, query::IF_ABSENT_SINCE],
    )?;
    let ns = q.namespace("default")?;
    let since = if_absent_since(&q)?;
    match q.get(query::DIRECTION) {
        Some("upload") => stream_up(st, user, ns, req, since).await,
        Some("download") if since.is_some() => Err(ApiError::bad(format!(
            "{} applies to uploads only (direction=upload)",
            query::IF_ABSENT_SINCE
        ))),
        Some("download") => stream_down(st, user, ns, req).await,
        Some(d) => Err(ApiError::bad(format!(
            "direction={d:?} is not known: use upload or download"
        ))),
        None => Err(ApiError::bad(
            "missing direction: use direction=upload or direction=download",
        )),
    }
}

/// Payloads a `/stream` download opens ahead of the one it is sending.
const DOWN_AHEAD: usize = 8;

/// Bytes of small payloads one `/stream` upload may hold in memory until its commit (they are
/// kept inside the index, `--inline-max`); later small blobs of the request are files. A
/// daemon's batch (at most 200 blobs) of blobs of a few KiB fits.
const STREAM_INLINE_BUDGET: u64 = 1 << 20;

/// A blob of a stream upload that reached its end and is being written out.
type Finished = Result<(usize, BlobId, u64, Staged), std::io::Error>;

async fn stream_up(
    st: &ServerState,
    user: String,
    ns: Namespace,
    req: Request<Incoming>,
    since: Option<u64>,
) -> ApiResult {
    let cfg = st.config().clone();
    let mut dec = UploadDecoder::new(cfg.max_stream_header);
    let mut status: UploadResponse = BTreeMap::new();
    let mut skip: HashSet<BlobId> = HashSet::new();
    // (header position, writer) of the blob being received; None writer = discarding.
    let mut current: Option<(usize, Option<Box<dyn crate::payload::PayloadWriter>>)> = None;
    let mut position = 0usize;
    let mut fsyncs: tokio::task::JoinSet<Finished> = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(
        cfg.stream_parallel_writes.max(1),
    ));
    let mut body = BodyReader::new(st, req.into_body());
    // Room left under the quota (None: unlimited), and bytes accepted against it so far.
    let mut room: Option<u64> = None;
    let mut accepted = 0u64;
    let mut inline_held = 0u64;

    let result: Result<(), ApiError> = async {
        let mut eof = false;
        while !eof {
            let data = match body.data().await {
                None => {
                    eof = true;
                    Bytes::new()
                }
                Some(d) => d?,
            };
            let mut input = &data[..];
            while !input.is_empty() || dec.has_pending_event() {
                let (used, ev) = dec
                    .decode(input)
                    .map_err(|e| ApiError::bad(format!("malformed stream body: {e}")))?;
                input = &input[used..];
                match ev {
                    None => {}
                    Some(UploadEvent::Header(entries)) => {
                        if entries.len() as u64 > cfg.max_page {
                            return Err(ApiError::bad(format!(
                                "stream of {} blobs is over this server's limit of {} per request",
                                entries.len(),
                                cfg.max_page
                            )));
                        }
                        let ids: Vec<BlobId> = entries.iter().map(|(i, _)| i.clone()).collect();
                        // With `if_absent_since`, tombstones matter too (412 per entry).
                        let rows = if since.is_some() {
                            st.index().lookup_many_any(&user, &ns, &ids).await?
                        } else {
                            st.index().lookup_many(&user, &ns, &ids).await?
                        };
                        let usage = st.index().usage(&user).await?;
                        room = usage.and_then(|(used, own)| {
                            own.or(cfg.default_quota).map(|q| q.saturating_sub(used))
                        });
                        // Up front from the header's sizes: blobs that cannot fit are 507 and
                        // never written (the commit re-checks the rest under the lock).
                        let mut planned = 0u64;
                        for ((id, size), row) in entries.into_iter().zip(rows) {
                            if row.as_ref().is_some_and(|r| !r.deleted) {
                                status.insert(id.clone(), 409);
                                skip.insert(id);
                            } else if index::deleted_after(row.as_ref(), since).is_some() {
                                status.insert(id.clone(), 412);
                                skip.insert(id);
                            } else if size > cfg.max_blob_size {
                                status.insert(id.clone(), 413);
                                skip.insert(id);
                            } else if room.is_some_and(|r| planned + size > r) {
                                status.insert(id.clone(), 507);
                                skip.insert(id);
                            } else {
                                planned += size;
                            }
                        }
                    }
                    Some(UploadEvent::Blob { id, size }) => {
                        // Small payloads kept inline wait in memory for the one commit: at
                        // most STREAM_INLINE_BUDGET of them per request, the rest are files.
                        let inline = size <= st.payloads().inline_max()
                            && inline_held + size <= STREAM_INLINE_BUDGET;
                        let writer = (!skip.contains(&id)).then(|| {
                            if inline {
                                inline_held += size;
                                st.payloads().writer(&user, &ns, &id)
                            } else {
                                st.payloads().file_writer(&user, &ns, &id)
                            }
                        });
                        current = Some((position, writer));
                        position += 1;
                    }
                    Some(UploadEvent::Data(d)) => {
                        st.inner.metrics.add_in(d.len() as u64);
                        if let Some((_, Some(w))) = current.as_mut() {
                            // Enforced again as bytes arrive, whatever the header said.
                            accepted += d.len() as u64;
                            if room.is_some_and(|r| accepted > r) {
                                return Err(over_quota(&user));
                            }
                            w.write(d).await.map_err(ApiError::internal)?;
                        }
                    }
                    Some(UploadEvent::End { id }) => {
                        if let Some((pos, Some(w))) = current.take() {
                            let permit = permits
                                .clone()
                                .acquire_owned()
                                .await
                                .map_err(ApiError::internal)?;
                            fsyncs.spawn(async move {
                                let _permit = permit;
                                let size = w.len();
                                let path = w.finish(false).await?;
                                Ok((pos, id, size, path))
                            });
                        }
                    }
                }
            }
        }
        dec.finish()
            .map_err(|e| ApiError::bad(format!("malformed stream body: {e}")))
    }
    .await;
    // Whatever happened, wait for every write so no temp file is written after we decide.
    let mut done: Vec<(usize, BlobId, u64, Staged)> = Vec::new();
    let mut write_err: Option<std::io::Error> = None;
    while let Some(r) = fsyncs.join_next().await {
        match r {
            Ok(Ok(x)) => done.push(x),
            Ok(Err(e)) => write_err = Some(e),
            Err(e) => write_err = Some(std::io::Error::other(e)),
        }
    }
    drop(current);
    let fail = match (result, write_err) {
        (Err(e), _) => Some(e),
        (Ok(()), Some(e)) => Some(ApiError::internal(e)),
        (Ok(()), None) => None,
    };
    if let Some(e) = fail {
        // Nothing partial is stored: the finished payloads are removed, none was indexed.
        st.payloads()
            .discard(done.into_iter().map(|d| d.3).collect())
            .await;
        return Err(e);
    }
    done.sort_by_key(|d| d.0);
    // In commit order, to match the outcomes.
    let staged: Vec<Staged> = done.iter().map(|d| d.3.clone()).collect();
    let items: Vec<PendingPut> = done
        .into_iter()
        .map(|(_, id, size, staged)| PendingPut {
            id,
            size,
            staged,
            external: false,
            age_sha256: None,
            flags: 0,
            if_absent_since: since,
        })
        .collect();
    let ids: Vec<BlobId> = items.iter().map(|i| i.id.clone()).collect();
    let default_quota = cfg.default_quota;
    let t = std::time::Instant::now();
    let outcomes = st
        .index()
        .commit_puts(&user, &ns, items, default_quota)
        .await;
    st.metrics()
        .backend(st.index().kind(), "commit", t.elapsed());
    let outcomes = outcomes?;
    let refused: Vec<Staged> = staged
        .into_iter()
        .zip(&outcomes)
        .filter(|(_, o)| !matches!(o, PutOutcome::Created(_)))
        .map(|(s, _)| s)
        .collect();
    if !refused.is_empty() {
        st.payloads().discard(refused).await;
    }
    for (id, out) in ids.into_iter().zip(outcomes) {
        let code = match out {
            PutOutcome::Created(_) => 201,
            PutOutcome::Exists => 409,
            PutOutcome::OverQuota => 507,
            PutOutcome::DeletedAfter(_) => 412,
        };
        status.insert(id, code);
    }
    json(StatusCode::OK, &status)
}

async fn stream_down(
    st: &ServerState,
    user: String,
    ns: Namespace,
    req: Request<Incoming>,
) -> ApiResult {
    let cfg = st.config().clone();
    let req_dialect = req.extensions().get::<Dialect>().copied();
    let b = read_small_body(st, req, cfg.max_stream_header).await?;
    let ids: Vec<String> = serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad(format!("body must be a JSON list of blob ids: {e}")))?;
    if ids.len() as u64 > cfg.max_page {
        return Err(ApiError::bad(format!(
            "{} ids is over this server's limit of {} per request",
            ids.len(),
            cfg.max_page
        )));
    }
    let ids = ids
        .into_iter()
        .map(|i| parse_id(&i))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = st.index().lookup_many(&user, &ns, &ids).await?;
    if req_dialect == Some(Dialect::Soledad) {
        return soledad_down(st, &user, &ns, ids, rows);
    }
    let (tx, body) = body::channel();
    let st2 = st.clone();
    // One task produces the whole response: small blobs are coalesced into CHUNK messages,
    // large ones go out in pieces; the bounded channel applies backpressure. Up to
    // `DOWN_AHEAD` payloads are opened ahead (an object store's latency overlaps).
    tokio::spawn(async move {
        let payloads = st2.payloads();
        let opens = futures_util::stream::iter(ids.into_iter().zip(rows))
            .map(|(id, row)| {
                let (user, ns) = (user.clone(), ns.clone());
                async move {
                    let Some(r) = row else { return (id, None) };
                    let loc = Location {
                        user,
                        ns,
                        id: id.clone(),
                        object_key: r.object_key,
                        size: r.size,
                    };
                    // Missing (deleted since the lookup): framed as missing.
                    let s = payloads.open(&loc, 0, r.size).await.ok();
                    (id, s.map(|s| (s, r.size)))
                }
            })
            .buffered(DOWN_AHEAD);
        futures_util::pin_mut!(opens);
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        while let Some((id, opened)) = opens.next().await {
            let Some((mut s, size)) = opened else {
                buf.extend_from_slice(&wire::encode_frame_header(&id, None));
                continue;
            };
            buf.extend_from_slice(&wire::encode_frame_header(&id, Some(size)));
            let mut got = 0u64;
            while let Some(b) = s.next().await {
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                got += b.len() as u64;
                st2.inner.metrics.add_out(b.len() as u64);
                buf.extend_from_slice(&b);
                if buf.len() >= CHUNK {
                    let chunk = Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)));
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            if got != size {
                // A short payload: cut the body off rather than send a frame that lies.
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "blob {id}: payload has {got} bytes, the index says {size}"
                    ))))
                    .await;
                return;
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(Ok(Bytes::from(buf))).await;
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// A `/stream` download in Soledad's framing ([`soledad::download_body`]). The framing has no
/// way to say "missing", so a missing id fails the whole request before a byte is sent.
fn soledad_down(
    st: &ServerState,
    user: &str,
    ns: &Namespace,
    ids: Vec<BlobId>,
    rows: Vec<Option<BlobRow>>,
) -> ApiResult {
    let missing: Vec<&str> = ids
        .iter()
        .zip(&rows)
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| i.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::not_found(format!(
            "no blob {} in namespace {ns} of {user}; Soledad's stream framing cannot skip one",
            missing.join(", ")
        )));
    }
    let mut files = Vec::with_capacity(ids.len());
    for (id, row) in ids.into_iter().zip(rows) {
        let row = row.expect("checked above");
        if row.size > soledad::MAX_FRAMED_SIZE {
            return Err(ApiError::bad(format!(
                "blob {id} ({} bytes) is too large for Soledad's stream framing (at most {} \
                 bytes); GET it on its own",
                row.size,
                soledad::MAX_FRAMED_SIZE
            )));
        }
        let loc = Location {
            user: user.to_owned(),
            ns: ns.clone(),
            id,
            object_key: row.object_key.clone(),
            size: row.size,
        };
        files.push((loc, row));
    }
    let mut r = Response::new(soledad::download_body(st, files));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}
