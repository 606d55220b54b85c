//! `SoledadRemote`: a genuine Soledad server (leap.soledad 0.10, its `BlobsResource`) as the
//! remote (`server_kind = "soledad"`). It speaks through [`HttpRemote`]'s client with Soledad's
//! `Token base64(uuid:token)` credentials (`user` is the uuid) and bridges what Soledad lacks:
//!
//! - **Listings.** Soledad has no `since`, sizes or dates: every listing is full (the engine
//!   keeps no cursor, [`Remote::full_listings_only`]), made of the plain id list plus the
//!   `deleted=True` list, turned into changes with `seq` 0. An id in both (re-put after a
//!   delete: Soledad keeps the `.deleted` file) is live. Sizes are learnt once per blob with a
//!   `Range: bytes=0-0` probe (the total in `Content-Range`; Soledad sends no bytes for it, a
//!   blobsync-server one) and remembered.
//! - **Deletions.** Soledad keeps no delete proofs, so its `deleted` listing counts as
//!   deletions ([`Remote::tombstones_without_proof_delete`]): a weaker guarantee, named in the
//!   description `blobctl status` shows. The mass-deletion guard still holds.
//! - **Namespaces** come from the config only: Soledad has no namespace listing (it answers
//!   `?namespaces=1` with the default namespace's ids).
//! - **Ranges** are not used: Soledad sends one byte short of a range and fails on open-ended
//!   ones, so a resumed download fetches the whole blob and skips what it has.
//! - **Batches** (`/stream`) are single requests per blob: Soledad's stream upload overwrites,
//!   its download framing differs and it routes only `/stream/{uuid}/`.
//! - **Conditional puts** (`if_absent_since`) check the `deleted` listing first.
//! - **401** means bad credentials *or* a path Soledad does not route; the error says both.

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use base64::Engine;
use blobsync_shared::wire::{self, BlobDetail, Change, ChangeOp, ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode, header};

use super::http::{HttpRemote, HttpRemoteConfig, body_stream, empty, full};
use super::{ByteStream, GetResponse, Remote, RemoteError, RemoteListFilter};

/// Longest error body kept.
const MAX_ERROR_BODY: usize = 4096;
/// Size probes in flight at once.
const PROBES: usize = 8;

/// Soledad's `Authorization` value for `user` and `token`.
pub fn token_credentials(user: &str, token: &str) -> String {
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
    format!("Token {creds}")
}

/// A Soledad server.
#[derive(Clone)]
pub struct SoledadRemote {
    http: HttpRemote,
    base: String,
    uuid: String,
    /// Stored sizes learnt from probes, puts and gets (Soledad's listings have none).
    sizes: Arc<Mutex<HashMap<(Namespace, BlobId), u64>>>,
}

fn enc(v: &str) -> String {
    // Ids, namespaces and flag names are URL-safe already; `True` is what Soledad expects.
    v.to_owned()
}

impl SoledadRemote {
    /// A client for the Soledad server at `cfg.base` (the blobs server's root, e.g.
    /// `https://host:2424`), as user (uuid) `cfg.user`.
    pub fn new(cfg: HttpRemoteConfig) -> Result<Self, RemoteError> {
        let base = cfg.base.clone();
        let uuid = cfg.user.clone();
        Ok(Self {
            http: HttpRemote::new(cfg)?.with_soledad_auth(),
            base,
            uuid,
            sizes: Arc::default(),
        })
    }

    fn url(&self, id: Option<&BlobId>, ns: Option<&Namespace>, q: &[(&str, &str)]) -> String {
        // Soledad routes `/blobs/{uuid}/` (with the slash) and `/blobs/{uuid}/{id}`.
        let mut u = format!(
            "{}/blobs/{}/{}",
            self.base,
            self.uuid,
            id.map(BlobId::as_str).unwrap_or("")
        );
        let mut sep = '?';
        for (k, v) in ns
            .map(|n| (wire::query::NAMESPACE, n.as_str()))
            .into_iter()
            .chain(q.iter().copied())
        {
            u.push(sep);
            sep = '&';
            u.push_str(k);
            u.push('=');
            u.push_str(&enc(v));
        }
        u
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        headers: &[(header::HeaderName, String)],
        body: super::http::Body,
    ) -> Result<http::Response<hyper::body::Incoming>, RemoteError> {
        self.http
            .send(method, url, headers, body)
            .await
            .map_err(|e| match e {
                RemoteError::Unauthorized {
                    status: 401,
                    message,
                } => RemoteError::Unauthorized {
                    status: 401,
                    message: format!(
                        "{message} (a Soledad server answers 401 for wrong credentials and for \
                         paths it does not route alike: check token_file, that user is the \
                         uuid, and that remote is the blobs server's root URL)"
                    ),
                },
                e => e,
            })
    }

    async fn drain(resp: http::Response<hyper::body::Incoming>) {
        let _ = super::collect_body(body_stream(resp.into_body()), MAX_ERROR_BODY).await;
    }

    async fn ids(
        &self,
        ns: &Namespace,
        extra: &[(&str, &str)],
    ) -> Result<Vec<BlobId>, RemoteError> {
        let resp = self
            .send(Method::GET, self.url(None, Some(ns), extra), &[], empty())
            .await?;
        let ids: Vec<String> = HttpRemote::json(resp).await?;
        ids.into_iter()
            .map(|i| {
                BlobId::new(i.as_str()).map_err(|e| {
                    RemoteError::Protocol(format!("the Soledad server listed a bad id {i:?}: {e}"))
                })
            })
            .collect()
    }

    fn known_size(&self, ns: &Namespace, id: &BlobId) -> Option<u64> {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(ns.clone(), id.clone()))
            .copied()
    }

    fn remember(&self, ns: &Namespace, id: &BlobId, size: Option<u64>) {
        let mut m = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        match size {
            Some(s) => m.insert((ns.clone(), id.clone()), s),
            None => m.remove(&(ns.clone(), id.clone())),
        };
    }

    /// The stored size of a blob: `Range: bytes=0-0` and the total of `Content-Range`.
    async fn probe_size(&self, ns: &Namespace, id: &BlobId) -> Result<Option<u64>, RemoteError> {
        if let Some(s) = self.known_size(ns, id) {
            return Ok(Some(s));
        }
        let headers = [(header::RANGE, "bytes=0-0".to_owned())];
        let resp = match self
            .send(
                Method::GET,
                self.url(Some(id), Some(ns), &[]),
                &headers,
                empty(),
            )
            .await
        {
            Ok(r) => r,
            // Deleted between the listing and the probe.
            Err(RemoteError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let total = if resp.status() == StatusCode::PARTIAL_CONTENT {
            resp.headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, t)| t.parse::<u64>().ok())
        } else {
            content_length(&resp)
        };
        Self::drain(resp).await;
        let total = total.ok_or_else(|| {
            RemoteError::Protocol(format!(
                "no size for {ns}/{id} in the answer to a range probe"
            ))
        })?;
        self.remember(ns, id, Some(total));
        Ok(Some(total))
    }

    /// The whole blob, as a body and its size.
    async fn whole(&self, ns: &Namespace, id: &BlobId) -> Result<(u64, ByteStream), RemoteError> {
        let resp = self
            .send(Method::GET, self.url(Some(id), Some(ns), &[]), &[], empty())
            .await?;
        let len = content_length(&resp)
            .ok_or_else(|| RemoteError::Protocol("GET answer has no Content-Length".into()))?;
        self.remember(ns, id, Some(len));
        Ok((len, body_stream(resp.into_body())))
    }

    async fn put_bytes(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: super::http::Body,
    ) -> Result<(), RemoteError> {
        let headers = [
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ];
        let resp = self
            .send(
                Method::PUT,
                self.url(Some(id), Some(ns), &[]),
                &headers,
                body,
            )
            .await?;
        Self::drain(resp).await;
        self.remember(ns, id, Some(len));
        Ok(())
    }
}

fn content_length(resp: &http::Response<hyper::body::Incoming>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

impl Remote for SoledadRemote {
    fn describe(&self) -> String {
        format!(
            "soledad server {} as {} (full listings; Soledad keeps no delete proofs, so its \
             deleted listing counts as deletions)",
            self.base, self.uuid
        )
    }

    async fn changes(&self, ns: &Namespace, _since: u64) -> Result<ChangesResponse, RemoteError> {
        let live = self.ids(ns, &[]).await?;
        let deleted = self.ids(ns, &[(wire::query::DELETED, "True")]).await?;
        let live_set: HashSet<&BlobId> = live.iter().collect();
        let sizes: Vec<Option<u64>> = futures_util::stream::iter(live.clone())
            .map(|id| {
                let (me, ns) = (self.clone(), ns.clone());
                async move { me.probe_size(&ns, &id).await }
            })
            .buffered(PROBES)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut changes = Vec::with_capacity(live.len() + deleted.len());
        for (id, size) in live.iter().zip(sizes) {
            // None: deleted since the listing; the next cycle sees its tombstone.
            let Some(size) = size else { continue };
            changes.push(Change {
                id: id.clone(),
                op: ChangeOp::Put,
                size,
                created: 0,
                seq: 0,
                external: false,
                proof: None,
            });
        }
        for id in deleted.iter().filter(|d| !live_set.contains(d)) {
            self.remember(ns, id, None);
            changes.push(Change {
                id: id.clone(),
                op: ChangeOp::Delete,
                size: 0,
                created: 0,
                seq: 0,
                external: false,
                proof: None,
            });
        }
        Ok(ChangesResponse {
            seq: 0,
            changes,
            more: false,
        })
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>, RemoteError> {
        Ok(Vec::new())
    }

    async fn list(
        &self,
        ns: &Namespace,
        f: &RemoteListFilter,
    ) -> Result<Vec<BlobDetail>, RemoteError> {
        let flag = f.flag.map(|fl| fl.to_string());
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(fl) = &flag {
            q.push((wire::query::FILTER_FLAG, fl));
        }
        if f.deleted {
            q.push((wire::query::DELETED, "True"));
        }
        let mut ids = self.ids(ns, &q).await?;
        ids.sort();
        ids.retain(|i| f.after.as_ref().is_none_or(|a| i > a));
        if let Some(l) = f.limit {
            ids.truncate(l as usize);
        }
        Ok(ids
            .into_iter()
            .map(|id| BlobDetail {
                size: self.known_size(ns, &id).unwrap_or(0),
                id,
                created: 0,
                flags: flag.iter().filter_map(|fl| fl.parse().ok()).collect(),
                external: false,
            })
            .collect())
    }

    async fn put(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<(), RemoteError> {
        if if_absent_since.is_some() {
            let deleted = self.ids(ns, &[(wire::query::DELETED, "True")]).await?;
            if deleted.contains(id) {
                return Err(RemoteError::DeletedAfter(format!(
                    "the Soledad server lists {ns}/{id} as deleted"
                )));
            }
        }
        self.put_bytes(ns, id, len, super::http::streamed(body))
            .await
    }

    async fn get(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Result<GetResponse, RemoteError> {
        let (total, body) = self.whole(ns, id).await?;
        let Some(r) = range else {
            return Ok(GetResponse {
                total,
                offset: 0,
                len: total,
                body,
            });
        };
        let end = r.end.min(total);
        if r.start >= end {
            return Err(RemoteError::RangeNotSatisfiable);
        }
        let body = super::skip_bytes(body, r.start);
        Ok(GetResponse {
            total,
            offset: r.start,
            len: end - r.start,
            body,
        })
    }

    async fn delete(
        &self,
        ns: &Namespace,
        id: &BlobId,
        _proof: Option<String>,
    ) -> Result<(), RemoteError> {
        let resp = self
            .send(
                Method::DELETE,
                self.url(Some(id), Some(ns), &[]),
                &[],
                empty(),
            )
            .await?;
        Self::drain(resp).await;
        self.remember(ns, id, None);
        Ok(())
    }

    async fn identity(&self) -> Result<String, RemoteError> {
        // Soledad has no instance id; an authenticated count checks the credentials.
        let resp = self
            .send(
                Method::GET,
                self.url(None, None, &[(wire::query::ONLY_COUNT, "True")]),
                &[],
                empty(),
            )
            .await?;
        Self::drain(resp).await;
        Ok(super::identity_string(
            &format!("soledad+{}", self.base),
            &self.uuid,
            None,
        ))
    }

    async fn get_flags(&self, ns: &Namespace, id: &BlobId) -> Result<Vec<Flag>, RemoteError> {
        let resp = self
            .send(
                Method::GET,
                self.url(Some(id), Some(ns), &[(wire::query::ONLY_FLAGS, "True")]),
                &[],
                empty(),
            )
            .await?;
        HttpRemote::json(resp).await
    }

    async fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: &[Flag],
    ) -> Result<(), RemoteError> {
        let body = serde_json::to_vec(flags).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let resp = self
            .send(
                Method::POST,
                self.url(Some(id), Some(ns), &[]),
                &[],
                full(body),
            )
            .await?;
        Self::drain(resp).await;
        Ok(())
    }

    async fn put_batch(
        &self,
        ns: &Namespace,
        entries: &[(BlobId, u64)],
        mut body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<super::BatchOutcome, RemoteError> {
        // One PUT per blob (batch members are small: each is held in memory).
        let deleted: HashSet<BlobId> = match if_absent_since {
            Some(_) => self
                .ids(ns, &[(wire::query::DELETED, "True")])
                .await?
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        let mut out = super::BatchOutcome::new();
        let mut pending = Bytes::new();
        for (id, len) in entries {
            let mut buf = Vec::with_capacity(*len as usize);
            while (buf.len() as u64) < *len {
                if pending.is_empty() {
                    pending = match body.next().await {
                        Some(c) => c?,
                        None => {
                            return Err(RemoteError::Io(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "batch body ended early",
                            )));
                        }
                    };
                }
                let take = pending.len().min((*len - buf.len() as u64) as usize);
                buf.extend_from_slice(&pending.split_to(take));
            }
            if deleted.contains(id) {
                out.insert(id.clone(), super::batch_status(412, if_absent_since));
                continue;
            }
            let outcome = match self.put_bytes(ns, id, *len, full(buf)).await {
                r @ (Ok(())
                | Err(
                    RemoteError::Conflict | RemoteError::TooLarge | RemoteError::QuotaExceeded,
                )) => r,
                Err(e) => return Err(e),
            };
            out.insert(id.clone(), outcome);
        }
        Ok(out)
    }

    async fn get_batch(
        &self,
        ns: &Namespace,
        ids: &[BlobId],
        max_blob: u64,
    ) -> Result<super::BatchItems, RemoteError> {
        // One GET per blob, each read whole (batch members are small).
        let me = self.clone();
        let ns = ns.clone();
        let items = futures_util::stream::iter(ids.to_vec()).then(move |id| {
            let (me, ns) = (me.clone(), ns.clone());
            async move {
                match me.whole(&ns, &id).await {
                    Ok((size, _)) if size > max_blob => Err(RemoteError::Protocol(format!(
                        "batch download: blob {id} is {size} bytes, more than asked for"
                    ))),
                    Ok((size, body)) => super::collect_body(body, size as usize)
                        .await
                        .map(|stored| super::BatchItem::Blob { id, stored }),
                    Err(RemoteError::NotFound) => Ok(super::BatchItem::Missing { id }),
                    Err(e) => Err(e),
                }
            }
        });
        // An error ends the batch, as a broken `/stream` body does.
        let items = items.scan(false, |failed, item| {
            let out = (!*failed).then(|| {
                *failed = item.is_err();
                item
            });
            std::future::ready(out)
        });
        Ok(Box::pin(items))
    }

    fn full_listings_only(&self) -> bool {
        true
    }

    fn tombstones_without_proof_delete(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_base64_of_user_colon_token() {
        assert_eq!(token_credentials("u", "t"), "Token dTp0");
    }
}
