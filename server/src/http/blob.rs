//! One blob: `GET`/`HEAD` (ranges), `PUT` (streamed to the payload store, then committed),
//! `POST` flags, `DELETE` with its proof, and the `/incoming` delivery's store path.

use super::incoming as incoming_box;
use super::*;

pub(super) async fn get(
    st: &ServerState,
    user: String,
    id: BlobId,
    req: &Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(req, &[query::NAMESPACE, query::ONLY_FLAGS])?;
    let ns = q.namespace("default")?;
    let only_flags = q.flag(query::ONLY_FLAGS)?;
    let missing = || ApiError::not_found(format!("no blob {id} in namespace {ns} of {user}"));
    let head = req.method() == Method::HEAD;
    // An incoming adoption may rename a new payload over this one between the index lookup
    // and the open: the open refuses a file whose size is not the row's (`Interrupted`), and
    // the lookup is made again.
    let mut attempts = 0;
    let (row, range, start, end, len, loc, stream) = loop {
        attempts += 1;
        let t = std::time::Instant::now();
        let row = st.index().lookup(&user, &ns, &id).await;
        st.metrics()
            .backend(st.index().kind(), "lookup", t.elapsed());
        let row = row?.filter(|r| !r.deleted).ok_or_else(missing)?;
        if only_flags {
            return json(StatusCode::OK, &index::bits_to_flags(row.flags));
        }
        let range = match parse_range(req.headers().get(header::RANGE), row.size) {
            Ok(r) => r,
            Err(msg) => {
                let mut r = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, msg).into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", row.size)) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
        };
        let (start, end) = range.unwrap_or((0, row.size.saturating_sub(1)));
        let len = if row.size == 0 { 0 } else { end - start + 1 };
        let loc = Location {
            user: user.clone(),
            ns: ns.clone(),
            id: id.clone(),
            object_key: row.object_key.clone(),
            size: row.size,
        };
        // HEAD: the same headers (size, ranges) without reading the payload.
        let t = std::time::Instant::now();
        let opened = st
            .payloads()
            .open(&loc, start, if head { 0 } else { len })
            .await;
        st.metrics()
            .backend(st.payloads().kind(), "open", t.elapsed());
        match opened {
            Ok(s) => break (row, range, start, end, len, loc, s),
            // Deleted between the index lookup and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && attempts < 3 => continue,
            // Still not the row's size: the file and its row disagree (not a race).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Err(ApiError::internal(format!(
                    "{e}; the file and its index row disagree: run `blobsync-server fsck`"
                )));
            }
            Err(e) => return Err(ApiError::internal(e)),
        }
    };
    // Soledad's client refuses a download without it.
    let tag = soledad::tag_header(st.payloads(), &loc, row.size).await;
    let mut r = Response::new(if head {
        body::empty()
    } else {
        payload_body(st, stream)
    });
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(tag) = tag {
        h.insert("tag", tag);
    }
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", row.size)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// A response body fed from a payload stream, counting the bytes out.
fn payload_body(st: &ServerState, stream: crate::payload::ByteStream) -> Body {
    let st = st.clone();
    let counted = stream.map(move |chunk| {
        if let Ok(b) = &chunk {
            st.inner.metrics.add_out(b.len() as u64);
        }
        chunk.map(hyper::body::Frame::data)
    });
    http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(counted))
}

// ---- PUT /blobs/{user}/{id}, PUT /incoming/{user}/{id} -----------------------------------

pub(super) fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("blob of {size} bytes is over this server's limit of {max} bytes"),
    )
}

pub(super) fn over_quota(user: &str) -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "storing this blob would put user {user:?} over their quota; delete blobs or ask for more"
        ),
    )
}

/// The `if_absent_since` refusal: the id was deleted at `seq`, after the client's `since`.
pub(super) fn deleted_after(id: &BlobId, ns: &Namespace, seq: u64, since: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        format!(
            "blob {id} in namespace {ns} was deleted at seq {seq}, after {since}; \
             not recreating it"
        ),
    )
}

/// Parses `if_absent_since` (a sequence number), saying what was wrong.
pub(super) fn if_absent_since(q: &Query) -> Result<Option<u64>, ApiError> {
    q.get(query::IF_ABSENT_SINCE)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad(format!(
                    "{}={v:?} is not a sequence number: give a non-negative integer \
                     (the seq of a listing, as in since=)",
                    query::IF_ABSENT_SINCE
                ))
            })
        })
        .transpose()
}

pub(super) fn exists(id: &BlobId, ns: &Namespace) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("blob {id} already exists in namespace {ns}; blobs are immutable: delete it first"),
    )
}

pub(super) async fn put(
    st: &ServerState,
    user: String,
    id: BlobId,
    req: Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(
        &req,
        &[
            query::NAMESPACE,
            query::IF_ABSENT_SINCE,
            query::REPLACE_EXTERNAL,
        ],
    )?;
    let ns = q.namespace("default")?;
    if let Some(h) = q.get(query::REPLACE_EXTERNAL) {
        let h = incoming_box::parse_sha256(h)?;
        return incoming_box::replace_external(st, user, ns, id, &h, req).await;
    }
    let since = if_absent_since(&q)?;
    store_one(st, user, ns, id, req, false, since).await
}

pub(super) async fn incoming(
    st: &ServerState,
    app: &str,
    allowed: &[Namespace],
    user: &str,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(&req, &[query::NAMESPACE])?;
    let ns = q.namespace("MX")?;
    if !allowed.contains(&ns) {
        let names: Vec<&str> = allowed.iter().map(|n| n.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "app {app:?} may not deliver into namespace {ns}; it may deliver into: {} \
                 (the operator sets this with blobsync-server app add NAME --namespace NS)",
                names.join(", ")
            ),
        ));
    }
    if Namespace::new(user).is_err() {
        return Err(ApiError::bad(format!(
            "user name {user:?} is invalid: use 1 to 128 characters of A-Z a-z 0-9 _ -"
        )));
    }
    let id = parse_id(id)?;
    if !st.index().user_exists(user).await? {
        return Err(ApiError::not_found(format!("no user named {user:?}")));
    }
    store_one(st, user.to_string(), ns, id, req, true, None).await
}

async fn store_one(
    st: &ServerState,
    user: String,
    ns: Namespace,
    id: BlobId,
    req: Request<Incoming>,
    external: bool,
    since: Option<u64>,
) -> ApiResult {
    let max = st.config().max_blob_size;
    let default_quota = st.config().default_quota;
    let declared = content_length(&req);
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_large(n, max));
    }
    // Early answers save the client the upload; the commit below re-checks under the lock.
    let (row, usage) = st.index().lookup_with_usage(&user, &ns, &id).await?;
    if row.as_ref().is_some_and(|r| !r.deleted) {
        return Err(exists(&id, &ns));
    }
    if let (Some(seq), Some(since)) = (index::deleted_after(row.as_ref(), since), since) {
        // Answer only once the body is in (read and dropped, up to the size limit): a client
        // still sending when we answer and close sees a broken pipe instead of this 412, and
        // could not tell "deleted, drop it" from a network fault.
        let mut body = BodyReader::new(st, req.into_body());
        while let Some(Ok(_)) = body.data().await {
            if body.received > max {
                break;
            }
        }
        return Err(deleted_after(&id, &ns, seq, since));
    }
    // Room left under the quota: checked up front from Content-Length and again as bytes
    // arrive, so an upload without (or with a false) Content-Length cannot fill the disk
    // before the commit's check refuses it. The commit re-checks under the writer lock.
    let room = usage.and_then(|(used, own)| own.or(default_quota).map(|q| q.saturating_sub(used)));
    if let (Some(room), Some(n)) = (room, declared)
        && n > room
    {
        return Err(over_quota(&user));
    }
    let mut w = st.payloads().writer(&user, &ns, &id);
    let mut body = BodyReader::new(st, req.into_body());
    let mut age = external.then(incoming_box::AgeCheck::default);
    while let Some(data) = body.data().await {
        let data = data?;
        if let Some(a) = age.as_mut() {
            a.update(&data);
        }
        let total = w.len() + data.len() as u64;
        if total > max {
            return Err(too_large(total, max));
        }
        if room.is_some_and(|r| total > r) {
            // Dropping `w` removes what it wrote.
            return Err(over_quota(&user));
        }
        w.write(&data).await.map_err(ApiError::internal)?;
        st.inner.metrics.add_in(data.len() as u64);
    }
    let size = w.len();
    // An /incoming body must be an age file; `w` is dropped (and removed) on refusal.
    let age_sha256 = age.map(|a| a.finish(&user)).transpose()?;
    let t = std::time::Instant::now();
    let staged = w.finish(false).await.map_err(ApiError::internal)?;
    st.metrics()
        .backend(st.payloads().kind(), "finish", t.elapsed());
    let item = PendingPut {
        id: id.clone(),
        size,
        staged: staged.clone(),
        external,
        age_sha256,
        flags: if external {
            index::flag_bit(Flag::Pending)
        } else {
            0
        },
        if_absent_since: since,
    };
    let t = std::time::Instant::now();
    let out = st
        .index()
        .commit_puts(&user, &ns, vec![item], default_quota)
        .await;
    st.metrics()
        .backend(st.index().kind(), "commit", t.elapsed());
    let out = out?;
    if !matches!(out.first(), Some(PutOutcome::Created(_))) {
        st.payloads().discard(vec![staged]).await;
    }
    match out.first() {
        Some(PutOutcome::Created(seq)) => {
            let mut r = text(StatusCode::CREATED, format!("stored {id} ({size} bytes)\n"));
            r.headers_mut()
                .insert("x-blobsync-seq", HeaderValue::from(*seq));
            Ok(r)
        }
        Some(PutOutcome::Exists) => Err(exists(&id, &ns)),
        Some(PutOutcome::OverQuota) => Err(over_quota(&user)),
        Some(PutOutcome::DeletedAfter(seq)) => {
            Err(deleted_after(&id, &ns, *seq, since.unwrap_or(0)))
        }
        None => Err(ApiError::internal("commit returned no outcome")),
    }
}

// ---- POST /blobs/{user}/{id} (flags) ------------------------------------------------------

pub(super) async fn read_small_body(
    st: &ServerState,
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let mut body = BodyReader::new(st, req.into_body());
    let mut out = Vec::new();
    while let Some(d) = body.data().await {
        let d = d?;
        if out.len() + d.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is over {limit} bytes"),
            ));
        }
        out.extend_from_slice(&d);
    }
    Ok(Bytes::from(out))
}

pub(super) async fn set_flags(
    st: &ServerState,
    user: String,
    id: BlobId,
    req: Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(&req, &[query::NAMESPACE])?;
    let ns = q.namespace("default")?;
    let b = read_small_body(st, req, MAX_FLAGS_BODY).await?;
    let names: Vec<String> = serde_json::from_slice(&b).map_err(|e| {
        ApiError::bad(format!(
            "body must be a JSON list of flag names like [\"PROCESSED\"]: {e}"
        ))
    })?;
    let flags = names
        .iter()
        .map(|n| n.parse::<Flag>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::new(StatusCode::NOT_ACCEPTABLE, e.to_string()))?;
    let bits = index::flags_to_bits(&flags);
    if !st.index().set_flags(&user, &ns, &id, bits).await? {
        return Err(ApiError::not_found(format!(
            "no blob {id} in namespace {ns} of {user}"
        )));
    }
    json(StatusCode::OK, &index::bits_to_flags(bits))
}

// ---- DELETE /blobs/{user}/{id} -------------------------------------------------------------

/// The optional [`wire::DELETE_PROOF_HEADER`]: exactly 64 lowercase hex characters. The
/// server keeps it with the tombstone and cannot check it (it has no key).
fn delete_proof(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(wire::DELETE_PROOF_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad(format!(
            "{} must be exactly 64 lowercase hex characters (an HMAC-SHA256); \
             send it as the daemon computes it, or leave the header out",
            wire::DELETE_PROOF_HEADER
        ))
    };
    let v = v.to_str().map_err(|_| bad())?;
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(Some(v.to_owned()))
}

pub(super) async fn delete(
    st: &ServerState,
    user: String,
    id: BlobId,
    req: &Request<Incoming>,
) -> ApiResult {
    let q = Query::parse(req, &[query::NAMESPACE])?;
    let ns = q.namespace("default")?;
    let proof = delete_proof(req)?;
    let Some(row) = st.index().delete(&user, &ns, &id, proof.as_deref()).await? else {
        return Err(ApiError::not_found(format!(
            "no blob {id} in namespace {ns} of {user}"
        )));
    };
    if let Some(key) = row.object_key {
        // After the tombstone committed: a crash before this leaves an orphan for fsck.
        if let Err(e) = st.payloads().remove_object(&key).await {
            tracing::warn!(error = %e, "removing a deleted blob's object failed; fsck --repair removes it");
        }
    }
    Ok(text(StatusCode::OK, format!("deleted {id}\n")))
}
