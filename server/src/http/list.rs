//! `GET /blobs/{user}`: listings (by id or date, tombstones, flags, counts, namespaces) and
//! `since` change feeds, streamed page by page so memory is one page whatever the user holds.

use super::*;

// ---- GET /blobs/{user} ---------------------------------------------------------------------

/// A `detail=1` listing entry: [`BlobDetail`] plus, on a tombstone (`deleted=1`), the delete
/// proof it was written with (`deleted` listings carry proofs as changes do).
#[derive(serde::Serialize)]
struct DetailOut {
    #[serde(flatten)]
    detail: BlobDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    proof: Option<String>,
}

fn detail_of(r: BlobRow) -> Result<DetailOut, ApiError> {
    Ok(DetailOut {
        proof: r.proof.filter(|_| r.deleted),
        detail: BlobDetail {
            id: BlobId::new(r.id).map_err(ApiError::internal)?,
            size: r.size,
            created: r.created,
            flags: index::bits_to_flags(r.flags),
            external: r.external,
        },
    })
}

/// Appends rows to a JSON array under construction (`first` tracks the separator).
fn push_rows(
    out: &mut Vec<u8>,
    rows: Vec<BlobRow>,
    detail: bool,
    first: &mut bool,
) -> Result<(), ApiError> {
    for r in rows {
        if !*first {
            out.push(b',');
        }
        *first = false;
        if detail {
            serde_json::to_writer(&mut *out, &detail_of(r)?).map_err(ApiError::internal)?;
        } else {
            serde_json::to_writer(&mut *out, &r.id).map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

pub(super) async fn list(st: &ServerState, user: String, req: &Request<Incoming>) -> ApiResult {
    let q = Query::parse(
        req,
        &[
            query::NAMESPACE,
            query::FILTER_FLAG,
            query::ORDER_BY,
            query::DELETED,
            query::ONLY_COUNT,
            query::DETAIL,
            query::SINCE,
            query::LIMIT,
            query::AFTER,
            query::NAMESPACES,
        ],
    )?;
    if q.flag(query::NAMESPACES)? {
        if let Some((k, _)) = q.0.iter().find(|(k, _)| k != query::NAMESPACES) {
            return Err(ApiError::bad(format!(
                "namespaces cannot be combined with {k}: it lists the user's namespaces \
                 (those with live blobs or tombstones) and takes no other parameter"
            )));
        }
        let names = st.index().namespaces(&user).await?;
        let resp: NamespacesResponse = names;
        return json(StatusCode::OK, &resp);
    }
    let ns = q.namespace("default")?;
    let max_page = st.config().max_page;
    let chunk = st.config().list_chunk.max(1);
    let limit = match q.u64(query::LIMIT)? {
        Some(l) if l == 0 || l > max_page => {
            return Err(ApiError::bad(format!(
                "limit={l} is out of range: use 1 to {max_page}"
            )));
        }
        l => l,
    };
    let _ = q.flag(query::DETAIL)?;
    if let Some(since) = q.u64(query::SINCE)? {
        for k in [
            query::FILTER_FLAG,
            query::ORDER_BY,
            query::DELETED,
            query::ONLY_COUNT,
            query::AFTER,
        ] {
            if q.has(k) {
                return Err(ApiError::bad(format!(
                    "since cannot be combined with {k}: a since listing returns every change \
                     (puts and deletes) after the sequence number"
                )));
            }
        }
        return list_changes(st, user, ns, since, limit.unwrap_or(max_page), chunk).await;
    }
    let filter_flag = q
        .get(query::FILTER_FLAG)
        .map(|f| f.parse::<Flag>())
        .transpose()
        .map_err(|e| ApiError::bad(format!("filter_flag: {e}")))?;
    let order = match q.get(query::ORDER_BY) {
        None => Order::Id,
        Some("date" | "+date") => Order::DateAsc,
        Some("-date") => Order::DateDesc,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "order_by={v:?} is not known: use date, +date or -date"
            )));
        }
    };
    let after = q
        .get(query::AFTER)
        .map(|a| parse_id(a).map(String::from))
        .transpose()?;
    let want = limit.unwrap_or(u64::MAX);
    let mut lq = ListQuery {
        user,
        namespace: ns,
        deleted: q.flag(query::DELETED)?,
        filter_flag,
        order,
        after,
        after_date: None,
        limit: chunk.min(want),
    };
    if q.flag(query::ONLY_COUNT)? {
        let count = st.index().count(&lq).await?;
        return json(StatusCode::OK, &CountResponse { count });
    }
    let detail = q.flag(query::DETAIL)?;
    // Every listing goes page by page (`list_chunk` rows per query), whatever its `limit`:
    // memory is one page per listing however many blobs the user has. The first page is
    // read here, so its errors (an unknown `after`) are still a status code.
    let rows = st.index().list(&lq).await?;
    let mut sent = rows.len() as u64;
    let complete = (rows.len() as u64) < lq.limit || sent >= want;
    let mut out = Vec::with_capacity(rows.len() * 40 + 2);
    out.push(b'[');
    let mut first = true;
    let next_after = rows.last().map(|r| (r.id.clone(), (r.created, r.seq)));
    push_rows(&mut out, rows, detail, &mut first)?;
    if complete {
        out.push(b']');
        return Ok(json_bytes(body::full(out)));
    }
    let (tx, body) = body::channel();
    let st2 = st.clone();
    (lq.after, lq.after_date) = next_after.unzip();
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
        loop {
            lq.limit = chunk.min(want - sent);
            let rows = match st2.index().list(&lq).await.map_err(ApiError::from) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.msg))).await;
                    return;
                }
            };
            sent += rows.len() as u64;
            let done = (rows.len() as u64) < lq.limit || sent >= want;
            (lq.after, lq.after_date) = rows
                .last()
                .map(|r| (r.id.clone(), (r.created, r.seq)))
                .unzip();
            let mut page = Vec::with_capacity(rows.len() * 40 + 1);
            if let Err(e) = push_rows(&mut page, rows, detail, &mut first) {
                let _ = tx.send(Err(std::io::Error::other(e.msg))).await;
                return;
            }
            if done {
                page.push(b']');
            }
            if tx.send(Ok(Bytes::from(page))).await.is_err() || done {
                crate::release_memory();
                return;
            }
        }
    });
    Ok(json_bytes(body))
}

/// Writes a `since` listing ([`wire::ChangesResponse`]) page by page: each call reads at most
/// `chunk` changes and returns their JSON, the last call also the closing `more` and `seq`
/// (the cursor is known only at the end, hence the field order `changes`, `more`, `seq`).
/// Every page is bounded by `upto`, the user's sequence number read before the first, so
/// the pages form one consistent snapshot even while changes land (those come next time).
struct ChangesPager {
    user: String,
    ns: Namespace,
    after: u64,
    upto: u64,
    limit: u64,
    sent: u64,
    chunk: u64,
    first: bool,
}

impl ChangesPager {
    /// The next piece of the body, and whether it is the last.
    async fn next(&mut self, st: &ServerState) -> Result<(Vec<u8>, bool), ApiError> {
        let n = self.chunk.min(self.limit - self.sent);
        let upto = self.upto;
        // A device that is caught up (the common case: every idle cycle) gets its empty page
        // without asking the index.
        let page = if self.after >= upto {
            Vec::new()
        } else {
            let t = std::time::Instant::now();
            let page = st
                .index()
                .changes_page(&self.user, &self.ns, self.after, upto, n)
                .await;
            st.metrics()
                .backend(st.index().kind(), "changes", t.elapsed());
            page?
        };
        let mut out = Vec::with_capacity(page.len() * 120 + 48);
        if self.first {
            out.extend_from_slice(b"{\"changes\":[");
        }
        for (k, c) in page.iter().enumerate() {
            if !(self.first && k == 0) {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, c).map_err(ApiError::internal)?;
        }
        if !page.is_empty() {
            self.first = false;
        }
        self.sent += page.len() as u64;
        let full = page.len() as u64 == n;
        if let Some(last) = page.last() {
            self.after = last.seq;
        }
        drop(page);
        let mut more = false;
        if full && self.sent >= self.limit {
            more = !st
                .index()
                .changes_page(&self.user, &self.ns, self.after, upto, 1)
                .await?
                .is_empty();
        } else if full {
            return Ok((out, false));
        }
        let seq = if more { self.after } else { self.upto };
        out.extend_from_slice(format!("],\"more\":{more},\"seq\":{seq}}}").as_bytes());
        Ok((out, true))
    }
}

/// `GET /blobs/{user}?since=S`, streamed (see [`ChangesPager`]). The cursor check and the
/// first page happen before the answer starts, so their errors are still status codes.
async fn list_changes(
    st: &ServerState,
    user: String,
    ns: Namespace,
    since: u64,
    limit: u64,
    chunk: u64,
) -> ApiResult {
    let upto = st.index().changes_head(&user, since).await?;
    let mut pager = ChangesPager {
        user,
        ns,
        after: since,
        upto,
        limit,
        sent: 0,
        chunk,
        first: true,
    };
    let (head, done) = pager.next(st).await?;
    if done {
        return Ok(json_bytes(body::full(head)));
    }
    let (tx, body) = body::channel();
    let st2 = st.clone();
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        loop {
            match pager.next(&st2).await {
                Ok((b, done)) => {
                    if tx.send(Ok(Bytes::from(b))).await.is_err() || done {
                        crate::release_memory();
                        return;
                    }
                }
                Err(e) => {
                    // A cut-off body, never a silently short listing.
                    let _ = tx.send(Err(std::io::Error::other(e.msg))).await;
                    return;
                }
            }
        }
    });
    Ok(json_bytes(body))
}
