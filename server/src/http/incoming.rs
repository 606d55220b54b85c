//! The incoming box's HTTP side (README.md, "The incoming box"): the age check and hash of an
//! `/incoming` delivery, `GET`/`PUT /keys/{user}/incoming`, and the conditional replace
//! `PUT /blobs/{user}/{id}?replace_external=<sha256>` by which a device adopts a delivery.

use blobsync_shared::incoming::{AGE_MAGIC, is_recipient, looks_like_age};
use blobsync_shared::{BlobId, Namespace};
use http::header::HeaderValue;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::blob::{content_length, over_quota, read_small_body, too_large};
use super::{ApiError, ApiResult, BodyReader, text};
use crate::ServerState;
use crate::index::{Principal, ReplaceOutcome};

/// Longest recipient body accepted (an `age1...` string is 62 characters).
const MAX_RECIPIENT_BODY: usize = 1024;

/// Watches an `/incoming` body as it streams: its first line and its SHA-256.
pub(super) struct AgeCheck {
    head: Vec<u8>,
    hash: ring::digest::Context,
}

impl Default for AgeCheck {
    fn default() -> Self {
        Self {
            head: Vec::new(),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }
}

impl AgeCheck {
    pub(super) fn update(&mut self, data: &[u8]) {
        let want = (AGE_MAGIC.len() + 1).saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..want.min(data.len())]);
        self.hash.update(data);
    }

    /// The age file's SHA-256 (64 hex), or the 400 for a body that is not an age file.
    pub(super) fn finish(self, user: &str) -> Result<String, ApiError> {
        if self.head.len() <= AGE_MAGIC.len() || !looks_like_age(&self.head) {
            return Err(ApiError::bad(format!(
                "an /incoming delivery must be an age file (binary, not armored) encrypted to \
                 the user's incoming recipient: its first line is \"age-encryption.org/v1\". \
                 Fetch the recipient with GET /keys/{user}/incoming and encrypt with \
                 age -r <recipient>"
            )));
        }
        Ok(hex::encode(self.hash.finish().as_ref()))
    }
}

/// Parses a `replace_external` value: 64 lowercase hex characters.
pub(super) fn parse_sha256(v: &str) -> Result<String, ApiError> {
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::bad(format!(
            "replace_external={v:?} is not a SHA-256: give the 64 lowercase hex characters \
             of the stored age file's SHA-256"
        )));
    }
    Ok(v.to_owned())
}

/// `GET /keys/{user}/incoming` (the user or any app) and `PUT` (the user only).
pub(super) async fn keys(
    st: &ServerState,
    who: &Principal,
    user: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let is_user = matches!(who, Principal::User(u) if u == user);
    match (req.method().clone(), who) {
        (Method::GET, Principal::App(..)) => {}
        (_, Principal::User(_)) if is_user => {}
        (_, Principal::User(u)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token belongs to user {u:?}, not {user:?}"),
            ));
        }
        (_, Principal::App(a, _)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "app token {a:?} may only read /keys/{{user}}/incoming; the user's devices \
                     publish it"
                ),
            ));
        }
    }
    if Namespace::new(user).is_err() {
        return Err(ApiError::bad(format!(
            "user name {user:?} is invalid: use 1 to 128 characters of A-Z a-z 0-9 _ -"
        )));
    }
    let u = user.to_owned();
    if req.method() == Method::GET {
        return match st.index().incoming_recipient(&u).await? {
            Some(r) => Ok(text(StatusCode::OK, format!("{r}\n"))),
            None => Err(ApiError::not_found(format!(
                "user {user:?} has no incoming recipient yet: it is published when one of \
                 their devices runs blobsyncd"
            ))),
        };
    }
    let b = read_small_body(st, req, MAX_RECIPIENT_BODY).await?;
    let r = std::str::from_utf8(&b).unwrap_or("").trim().to_owned();
    if !is_recipient(&r) {
        return Err(ApiError::bad(
            "the body must be an age X25519 recipient (age1..., as blobctl incoming recipient \
             prints it)",
        ));
    }
    let r2 = r.clone();
    st.index().set_incoming_recipient(&u, &r2).await?;
    Ok(text(StatusCode::OK, format!("{r}\n")))
}

/// `PUT /blobs/{user}/{id}?replace_external=<sha256>`: the adoption of a delivered age file
/// (see [`crate::index::Index::replace_external`]). 201 with the new seq; 412 when the stored
/// copy is not that age file; 404 when there is no live blob. Max size and quota apply.
pub(super) async fn replace_external(
    st: &ServerState,
    user: String,
    ns: Namespace,
    id: BlobId,
    age_sha256: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let max = st.config().max_blob_size;
    let default_quota = st.config().default_quota;
    if let Some(n) = content_length(&req).filter(|n| *n > max) {
        return Err(too_large(n, max));
    }
    let mut w = st.payloads().writer(&user, &ns, &id);
    let mut body = BodyReader::new(st, req.into_body());
    while let Some(data) = body.data().await {
        let data = data?;
        let total = w.len() + data.len() as u64;
        if total > max {
            return Err(too_large(total, max));
        }
        w.write(&data).await.map_err(ApiError::internal)?;
        st.inner.metrics.add_in(data.len() as u64);
    }
    let size = w.len();
    let staged = w.finish(true).await.map_err(ApiError::internal)?;
    let out = st
        .index()
        .replace_external(
            &user,
            &ns,
            &id,
            age_sha256,
            staged.clone(),
            size,
            default_quota,
        )
        .await?;
    match &out {
        ReplaceOutcome::Replaced {
            old_object: Some(old),
            ..
        } => {
            // The age file's object, unreachable since the commit.
            if let Err(e) = st.payloads().remove_object(old).await {
                tracing::warn!(error = %e, "removing a replaced object failed; fsck --repair removes it");
            }
        }
        ReplaceOutcome::Replaced { .. } => {}
        _ => st.payloads().discard(vec![staged]).await,
    }
    match out {
        ReplaceOutcome::Replaced { seq, .. } => {
            let mut r = text(
                StatusCode::CREATED,
                format!("adopted {id} ({size} bytes replace the age file)\n"),
            );
            r.headers_mut()
                .insert("x-blobsync-seq", HeaderValue::from(seq));
            Ok(r)
        }
        ReplaceOutcome::Missing => Err(ApiError::not_found(format!(
            "no blob {id} in namespace {ns} of {user}"
        ))),
        ReplaceOutcome::NotThatFile => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "blob {id} in namespace {ns} is not the age file with SHA-256 {age_sha256} \
                 (already adopted, or not a delivery): fetch the stored copy instead"
            ),
        )),
        ReplaceOutcome::OverQuota => Err(over_quota(&user)),
    }
}
