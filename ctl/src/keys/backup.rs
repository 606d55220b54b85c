//! `blobctl key backup|restore`: the storage key, wrapped with the user's passphrase
//! (Argon2id at [`keyfile::BACKUP_M_COST_KIB`] / [`keyfile::BACKUP_T_COST`], AES-256-GCM),
//! kept on the server at `/keys/{user}/storage` (server/README.md), so a new device needs
//! only the server, the user's token and the passphrase (docs/keys.md).
//!
//! These talk to the server directly, not through the daemon: a new device has no key yet, so
//! its daemon cannot start. Everything the server answers is hostile until checked: a body
//! over 4 KiB or one that does not unwrap is refused with what to do; the server never sees
//! the key or the passphrase.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blobsync_shared::config::{Config, RemoteUrl};
use blobsync_shared::keyfile::{self, KeyError};
use blobsync_shared::keystore::{KeyStore, KeyStoreError, KeyStoreKind};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::{passphrase_from_file, prompt};
use crate::cli::{KeyBackupArgs, KeyRestoreArgs};
use crate::client::CtlError;
use crate::commands::out;

/// Largest key backup the server keeps, and the most blobctl reads of an answer.
pub const MAX_BACKUP: usize = 4096;
/// Longest wait for the server.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A key-backup endpoint: the server, the user, the token.
struct Endpoint {
    url: String,
    token: String,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

/// What the server holds.
struct Stored {
    body: Vec<u8>,
    etag: String,
}

impl Endpoint {
    fn new(cfg: &Config) -> Result<Self, CtlError> {
        let base = match &cfg.remote {
            RemoteUrl::Http(u) => u.to_string(),
            other => {
                return Err(CtlError::Usage(format!(
                    "the key backup lives on a blobsync-server; the remote {other:?} is not \
                     one. Set `remote` (and `token_file`) in the config to your server"
                )));
            }
        };
        let token_file = cfg.token_file.as_ref().ok_or_else(|| {
            CtlError::Usage(
                "the key backup needs your token: set `token_file` in the config (the file \
                 `blobsync-server user add` printed it into)"
                    .into(),
            )
        })?;
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| CtlError::io(format!("reading token_file {}", token_file.display()), e))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(CtlError::Usage(format!(
                "token_file {} is empty",
                token_file.display()
            )));
        }
        let tls = tls_config(cfg.ca_file.as_deref())?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let user = percent_path(&cfg.user);
        Ok(Self {
            url: format!("{}/keys/{user}/storage", base.trim_end_matches('/')),
            token,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn call(
        &self,
        method: Method,
        headers: &[(header::HeaderName, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>), CtlError> {
        let mut req = Request::builder()
            .method(method)
            .uri(&self.url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header("x-blobsync-client", "blobctl");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CtlError::Key(format!("building the request: {e}")))?;
        let unreachable = |e: String| {
            CtlError::Key(format!(
                "cannot reach the server at {}: {e}; check `remote` in the config and that the \
                 server runs",
                self.url
            ))
        };
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable("no answer in 30 s".into()))?
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Bounded: a hostile server cannot make blobctl read more than a backup can be.
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(resp.into_body(), MAX_BACKUP + 1).collect(),
        )
        .await
        .map_err(|_| unreachable("the answer stalled".into()))?
        .map_err(|e| {
            CtlError::Key(format!(
                "the server's answer is not a key backup ({e}); it may be corrupted: make a \
                 new one with `blobctl key backup --replace` on a device that has the key"
            ))
        })?
        .to_bytes()
        .to_vec();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CtlError::Key(format!(
                "the server refused the token (HTTP {}); check `token_file` and `user` in the \
                 config",
                status.as_u16()
            ))),
            StatusCode::NOT_FOUND if body.starts_with(b"no route") => Err(CtlError::Key(
                "this server has no key backup (an older blobsync-server); upgrade it".into(),
            )),
            _ => Ok((status, etag, body)),
        }
    }

    /// The server's backup, or `None`.
    async fn get(&self) -> Result<Option<Stored>, CtlError> {
        let (status, etag, body) = self.call(Method::GET, &[], Vec::new()).await?;
        match status {
            StatusCode::OK => {
                if body.is_empty() || body.len() > MAX_BACKUP {
                    return Err(corrupted(&format!("it is {} bytes long", body.len())));
                }
                let etag = etag.ok_or_else(|| {
                    CtlError::Key("the server sent the key backup without its ETag".into())
                })?;
                Ok(Some(Stored { body, etag }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(http_error(s, &body)),
        }
    }

    /// Stores `body`: as the first backup (`prev = None`), or in place of the one with ETag
    /// `prev`. `Ok(false)`: the precondition failed (412: there is one / it changed).
    async fn put(&self, body: Vec<u8>, prev: Option<&str>) -> Result<bool, CtlError> {
        let cond = match prev {
            None => (header::IF_NONE_MATCH, "*".to_owned()),
            Some(e) => (header::IF_MATCH, e.to_owned()),
        };
        let (status, _, answer) = self
            .call(
                Method::PUT,
                &[
                    cond,
                    (header::CONTENT_TYPE, "application/octet-stream".into()),
                ],
                body,
            )
            .await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::PRECONDITION_FAILED => Ok(false),
            s => Err(http_error(s, &answer)),
        }
    }
}

fn corrupted(why: &str) -> CtlError {
    CtlError::Key(format!(
        "the key backup on the server is corrupted or not a blobsync key backup ({why}); \
         nothing was written. Make a new one with `blobctl key backup --replace` on a device \
         that has the key"
    ))
}

fn http_error(s: StatusCode, body: &[u8]) -> CtlError {
    let text: String = String::from_utf8_lossy(&body[..body.len().min(300)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    CtlError::Key(format!("the server answered HTTP {}: {text}", s.as_u16()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Percent-encodes a path segment (user names are checked by the server anyway).
fn percent_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, CtlError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        let f = std::fs::File::open(ca)
            .map_err(|e| CtlError::io(format!("reading ca_file {}", ca.display()), e))?;
        for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(f)) {
            let cert = cert.map_err(|e| CtlError::io(format!("ca_file {}", ca.display()), e))?;
            roots
                .add(cert)
                .map_err(|e| CtlError::Key(format!("ca_file {}: {e}", ca.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CtlError::Key(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Argon2id at the backup's cost, off the async threads.
async fn wrap(key: blobsync_shared::StorageKey, pass: String) -> Result<Vec<u8>, CtlError> {
    tokio::task::spawn_blocking(move || {
        keyfile::export_wrapped_with(
            &key,
            &pass,
            keyfile::BACKUP_M_COST_KIB,
            keyfile::BACKUP_T_COST,
        )
    })
    .await
    .map_err(|e| CtlError::Key(e.to_string()))
}

async fn unwrap(body: Vec<u8>, pass: String) -> Result<blobsync_shared::StorageKey, KeyError> {
    tokio::task::spawn_blocking(move || keyfile::import_wrapped(&body, &pass))
        .await
        .unwrap_or_else(|e| Err(KeyError::BadWrapped(e.to_string())))
}

/// `key backup`.
pub async fn backup(a: KeyBackupArgs, json: bool) -> Result<(), CtlError> {
    let cfg = super::config(a.config.as_deref())?;
    let store = KeyStore::new(cfg.key_store, &cfg.key_file, &cfg.user);
    let s2 = store.clone();
    let key = tokio::task::spawn_blocking(move || s2.load())
        .await
        .map_err(|e| CtlError::Key(e.to_string()))?
        .map_err(store_error)?;
    let ep = Endpoint::new(&cfg)?;
    let pass = match &a.passphrase_file {
        Some(f) => passphrase_from_file(f)?,
        None => super::new_passphrase("Passphrase to protect the key on the server: ")?,
    };
    super::check_passphrase(&pass)?;
    let wrapped = wrap(key.clone(), pass.clone()).await?;
    let prev = if a.replace {
        ep.get().await?.map(|s| s.etag)
    } else {
        None
    };
    if ep.put(wrapped, prev.as_deref()).await? {
        return report(&cfg, json, "backed up");
    }
    // 412: the server holds a backup already (or, with --replace, it changed meanwhile).
    if a.replace {
        return Err(CtlError::Key(
            "another device changed the key backup on the server meanwhile (HTTP 412); \
             nothing was replaced. Run `blobctl key backup --replace` again"
                .into(),
        ));
    }
    let Some(stored) = ep.get().await? else {
        return Err(CtlError::Key(
            "the server refused the first backup (HTTP 412) but holds none; try again".into(),
        ));
    };
    match unwrap(stored.body, pass).await {
        Ok(k) if k.as_bytes() == key.as_bytes() => report(&cfg, json, "already backed up"),
        Ok(_) => Err(conflict("holds another storage key")),
        Err(KeyError::WrongPassphrase) => Err(conflict(
            "was made with another passphrase, or holds another key",
        )),
        Err(e) => Err(conflict(&format!("is unreadable ({e})"))),
    }
}

fn conflict(what: &str) -> CtlError {
    CtlError::Key(format!(
        "the server already holds a key backup, and it {what} (HTTP 412: made by another \
         device); nothing was replaced. Your devices must share one storage key: to use the \
         server's, run `blobctl key restore` here; to replace it with this device's key and \
         passphrase, run `blobctl key backup --replace` (devices with the old key can then no \
         longer restore it)"
    ))
}

fn report(cfg: &Config, json: bool, what: &str) -> Result<(), CtlError> {
    if json {
        return out(&format!(
            "{}\n",
            json!({ "user": cfg.user, "remote": cfg.remote.to_string(), "result": what })
        ));
    }
    out(&format!(
        "{what}: the storage key of {}, wrapped with your passphrase, is on {}.\n\
         A new device needs only the server, your token and the passphrase: `blobctl key restore`.\n",
        cfg.user, cfg.remote
    ))
}

fn store_error(e: KeyStoreError) -> CtlError {
    CtlError::Key(e.to_string())
}

/// `key restore`.
pub async fn restore(a: KeyRestoreArgs, json: bool) -> Result<(), CtlError> {
    let cfg = super::config(a.config.as_deref())?;
    let kind = match a.to.as_deref() {
        Some(t) => KeyStoreKind::parse(t).map_err(CtlError::Usage)?,
        None => cfg.key_store,
    };
    let key_file = a.key_file.clone().unwrap_or_else(|| cfg.key_file.clone());
    let store = KeyStore::new(kind, &key_file, &cfg.user);
    if kind == KeyStoreKind::Credential {
        return Err(CtlError::Usage(
            "a credential is written by `blobctl key migrate --to credential` (as root); \
             restore to the key file or the keyring first (--to file)"
                .into(),
        ));
    }
    let ep = Endpoint::new(&cfg)?;
    let Some(stored) = ep.get().await? else {
        return Err(CtlError::Key(format!(
            "there is no key backup on {} for user {}: make one with `blobctl key backup` on \
             a device that has the key (or copy it with `blobctl key export`/`import`)",
            cfg.remote, cfg.user
        )));
    };
    if !stored
        .body
        .starts_with(keyfile::WRAPPED_MAGIC_LINE.as_bytes())
    {
        return Err(corrupted("it does not start with `blobsync-key v1`"));
    }
    let pass = match &a.passphrase_file {
        Some(f) => passphrase_from_file(f)?,
        None => prompt("Passphrase of the key backup: ")?,
    };
    let key = match unwrap(stored.body, pass).await {
        Ok(k) => k,
        Err(KeyError::WrongPassphrase) => {
            return Err(CtlError::Key(
                "wrong passphrase for the key backup on the server (or the backup was \
                 altered); nothing was written. Try again with the passphrase given to `blobctl \
                 key backup`"
                    .into(),
            ));
        }
        Err(e) => return Err(corrupted(&e.to_string())),
    };
    let (s2, k2) = (store.clone(), key.clone());
    let outcome = tokio::task::spawn_blocking(move || match s2.load() {
        Ok(existing) if existing.as_bytes() == k2.as_bytes() => Ok(false),
        Ok(_) => Err(KeyStoreError::Exists {
            place: s2.describe(),
        }),
        Err(KeyStoreError::Missing { .. } | KeyStoreError::File(KeyError::Missing { .. })) => {
            s2.save(&k2).map(|()| true)
        }
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| CtlError::Key(e.to_string()))?;
    let written = match outcome {
        Ok(w) => w,
        Err(KeyStoreError::Exists { place }) => {
            return Err(CtlError::Key(format!(
                "{place} already holds a different storage key; nothing was written (blobs \
                 encrypted with it would become unreadable here). Move it away first if you \
                 are sure"
            )));
        }
        Err(e) => return Err(store_error(e)),
    };
    if json {
        return out(&format!(
            "{}\n",
            json!({ "key_store": kind.as_str(), "place": store.describe(), "unchanged": !written })
        ));
    }
    if !written {
        return out(&format!("this key is already in {}\n", store.describe()));
    }
    let mut msg = format!("restored the storage key into {}", store.describe());
    if kind != cfg.key_store {
        msg.push_str(&format!(
            ".\nSet key_store = \"{}\" in the config so blobsyncd looks there",
            kind.as_str()
        ));
    }
    msg.push_str(".\nStart (or restart) blobsyncd: `systemctl --user restart blobsyncd`.\n");
    out(&msg)
}
