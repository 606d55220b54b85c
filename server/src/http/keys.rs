//! `GET`/`PUT /keys/{user}/storage`: the user's passphrase-wrapped storage key backup, opaque
//! bytes the server keeps for a new device (see docs/http-api.md, "Key backup"). User token
//! only; a `PUT` must say what it expects to replace (`If-None-Match: *` for the first backup,
//! `If-Match: "<etag>"` after), so two devices can't overwrite each other blindly.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{ApiError, ApiResult, blocking, read_small_body, text};
use crate::ServerState;
use crate::body;
use crate::index::{BackupCondition, BackupOutcome, Principal};

/// Largest backup accepted: an exported key is a few hundred bytes.
pub(super) const MAX_KEY_BACKUP: usize = 4096;

pub(super) async fn storage(
    st: &ServerState,
    who: &Principal,
    user: &str,
    req: Request<Incoming>,
) -> ApiResult {
    match who {
        Principal::User(u) if u == user => {}
        Principal::User(u) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token belongs to user {u:?}, not {user:?}"),
            ));
        }
        Principal::App(a, _) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "app token {a:?} may not read or write key backups; only the user's own \
                     token may"
                ),
            ));
        }
    }
    let u = user.to_owned();
    if req.method() == Method::GET {
        let Some((data, etag)) = blocking(st, move |i| i.index.key_backup(&u)).await? else {
            return Err(ApiError::not_found(format!(
                "user {user:?} has no key backup: run `blobctl key backup` on a device that \
                 has the key"
            )));
        };
        let mut r = http::Response::new(body::full(data));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        insert_etag(h, &etag);
        return Ok(r);
    }
    let cond = condition(req.headers())?;
    let data = read_small_body(st, req, MAX_KEY_BACKUP).await?;
    if data.is_empty() {
        return Err(ApiError::bad(
            "the key backup is empty: send the wrapped key `blobctl key backup` produces",
        ));
    }
    let created = cond == BackupCondition::Absent;
    let out = blocking(st, move |i| i.index.put_key_backup(&u, &data, &cond)).await?;
    match out {
        BackupOutcome::Stored(etag) => {
            let (status, what) = if created {
                (StatusCode::CREATED, "stored")
            } else {
                (StatusCode::OK, "replaced")
            };
            let mut r = text(status, format!("key backup {what}\n"));
            insert_etag(r.headers_mut(), &etag);
            Ok(r)
        }
        BackupOutcome::Conflict(current) => {
            let msg = match &current {
                Some(_) => {
                    "the stored key backup is not the one this request expected (another \
                            device replaced it, or one already exists): fetch it again and \
                            retry with its ETag in If-Match"
                }
                None => {
                    "there is no key backup to replace: send If-None-Match: * to store \
                         the first one"
                }
            };
            let mut r = ApiError::new(StatusCode::PRECONDITION_FAILED, msg).into_response();
            if let Some(etag) = current {
                insert_etag(r.headers_mut(), &etag);
            }
            Ok(r)
        }
    }
}

/// The write's precondition: exactly one of `If-None-Match: *` and `If-Match: "<etag>"`.
fn condition(h: &HeaderMap) -> Result<BackupCondition, ApiError> {
    let get = |name| {
        h.get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap_or("").trim().to_owned())
    };
    match (get(header::IF_NONE_MATCH), get(header::IF_MATCH)) {
        (Some(v), None) if v == "*" => Ok(BackupCondition::Absent),
        (None, Some(v)) => {
            let tag = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
            match tag {
                Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    Ok(BackupCondition::Matches(t.to_owned()))
                }
                _ => Err(ApiError::bad(format!(
                    "If-Match {v:?} is not an ETag this server gave out: send it exactly as \
                     the GET's ETag header, quotes included"
                ))),
            }
        }
        (None, None) => Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "a key backup PUT must say what it replaces: If-None-Match: * for the first \
             backup, or If-Match with the ETag of the backup you fetched",
        )),
        _ => Err(ApiError::bad(
            "send exactly one of If-None-Match: * (first backup) and If-Match: \"<etag>\" \
             (replace the backup you fetched)",
        )),
    }
}

fn insert_etag(h: &mut HeaderMap, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        h.insert(header::ETAG, v);
    }
}
