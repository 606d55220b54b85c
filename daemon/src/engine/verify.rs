//! `verify`: every local payload re-authenticated (its plaintext hashed and written nowhere),
//! and with `remote`, every server copy of a synced blob downloaded and authenticated; a
//! damaged local copy of a synced blob is fetched again.

use blobsync_shared::config::NamespacePolicy;
use blobsync_shared::{BlobId, Namespace};
use tokio::sync::mpsc;

use crate::handle::{EngineError, EngineHandle};
use crate::status::{Status, Transition};
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, ListFilter, payload, sealed};

/// Progress of a verify pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Blobs checked so far.
    pub checked: u64,
    /// Blobs to check.
    pub total: u64,
    /// The blob just checked.
    pub ns: Namespace,
    /// The blob just checked.
    pub id: BlobId,
    /// `None`: fine; else what is wrong.
    pub problem: Option<String>,
}

/// One damaged blob found by verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Namespace.
    pub ns: Namespace,
    /// Id.
    pub id: BlobId,
    /// `"local"` or `"remote"`.
    pub copy: &'static str,
    /// What is wrong.
    pub problem: String,
    /// A download was queued to repair the local copy.
    pub requeued: bool,
}

/// What a verify pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Local payloads re-hashed.
    pub checked_local: u64,
    /// Server copies downloaded and authenticated.
    pub checked_remote: u64,
    /// What is damaged.
    pub damaged: Vec<Damage>,
    /// Blobs not checked, and why (external blobs: not encrypted by us, nothing to
    /// authenticate them with).
    pub skipped: Vec<(Namespace, BlobId, String)>,
}

impl EngineHandle {
    /// Re-hashes every local payload against its recorded SHA-256 (a damaged `SYNCED` copy
    /// is re-queued for download); with `remote`, also downloads and authenticates every
    /// server copy of a synced blob. Progress goes to `progress` (dropped if it is full).
    pub async fn verify(
        &self,
        remote: bool,
        progress: mpsc::Sender<VerifyProgress>,
    ) -> Result<VerifyReport, EngineError> {
        self.verify_only(None, None, remote, progress).await
    }

    /// [`EngineHandle::verify`] limited to one namespace, or to one blob (`ns` and `id`).
    pub async fn verify_only(
        &self,
        ns: Option<Namespace>,
        id: Option<BlobId>,
        remote: bool,
        progress: mpsc::Sender<VerifyProgress>,
    ) -> Result<VerifyReport, EngineError> {
        let mut single = match (&ns, &id) {
            (Some(n), Some(i)) => Some(self.info(n, i).await?),
            (None, Some(_)) => {
                return Err(EngineError::InvalidArgument(
                    "verify of one blob needs its namespace too".into(),
                ));
            }
            _ => None,
        };
        if remote && self.shared.wrong_key() {
            // Every remote copy would fail: one clear answer instead of "checked 0".
            return Err(EngineError::FailedPrecondition(
                crate::engine::keycheck::WRONG_KEY_MESSAGE.into(),
            ));
        }
        let mut report = VerifyReport::default();
        let counts = self.shared.store.counts().await?;
        let total = match (&ns, &single) {
            (_, Some(_)) => 1,
            (Some(n), None) => counts.by_namespace.get(n).map_or(0, |m| m.values().sum()),
            (None, None) => counts.by_status.values().sum::<u64>(),
        };
        let one_blob = single.is_some();
        let mut checked = 0u64;
        let mut after = None;
        loop {
            let page = if one_blob {
                match single.take() {
                    Some(b) => vec![b],
                    None => break,
                }
            } else {
                self.shared
                    .store
                    .list(ListFilter {
                        ns: ns.clone(),
                        after: after.clone(),
                        limit: 500,
                        ..Default::default()
                    })
                    .await?
            };
            let Some(last) = page.last() else { break };
            after = Some((last.ns.clone(), last.id.clone()));
            for b in page {
                if self.shared.cancel.is_cancelled() {
                    return Err(EngineError::ShuttingDown);
                }
                checked += 1;
                let mut problem = None;
                // An incoming delivery is a normal blob once decrypted (and format v1 on the
                // server once adopted); only an external blob elsewhere has nothing to check.
                let foreign =
                    b.external && self.shared.settings().policy(&b.ns) != NamespacePolicy::Incoming;
                if foreign {
                    report.skipped.push((
                        b.ns.clone(),
                        b.id.clone(),
                        "external outside an incoming namespace: refused, never handed out"
                            .to_owned(),
                    ));
                }
                if b.status.has_payload() && !foreign {
                    report.checked_local += 1;
                    if let Some(p) = self.verify_local(&b).await? {
                        let requeued = b.status == Status::Synced
                            && self
                                .shared
                                .store
                                .transition(
                                    &b.ns,
                                    &b.id,
                                    Transition::DamageFound,
                                    RowUpdate {
                                        last_error: Some(format!("local copy damaged: {p}")),
                                        now: Some((self.shared.now)()),
                                        ..Default::default()
                                    },
                                )
                                .await
                                .is_ok();
                        if requeued {
                            self.shared.remove_payload(&b.ns, &b.id).await;
                        }
                        report.damaged.push(Damage {
                            ns: b.ns.clone(),
                            id: b.id.clone(),
                            copy: "local",
                            problem: p.clone(),
                            requeued,
                        });
                        problem = Some(p);
                    }
                }
                if remote && b.status == Status::Synced && !foreign {
                    report.checked_remote += 1;
                    if let Some(p) = self.ops.verify_remote_one(b.clone()).await? {
                        report.damaged.push(Damage {
                            ns: b.ns.clone(),
                            id: b.id.clone(),
                            copy: "remote",
                            problem: p.clone(),
                            requeued: false,
                        });
                        problem = Some(p);
                    }
                }
                let _ = progress.try_send(VerifyProgress {
                    checked,
                    total,
                    ns: b.ns,
                    id: b.id,
                    problem,
                });
            }
        }
        if report.damaged.iter().any(|d| d.requeued) {
            self.shared.kick.notify_one();
        }
        Ok(report)
    }

    /// Re-authenticates a local payload (every segment, the plaintext hashed and compared
    /// with the recorded SHA-256, and written nowhere); a plaintext payload an earlier release
    /// left, not converted yet, is re-hashed.
    async fn verify_local(&self, b: &BlobInfo) -> Result<Option<String>, EngineError> {
        let path = self.shared.data.payload_path(&b.ns, &b.id);
        let key = self.shared.key.clone();
        let (ns, id, size) = (b.ns.clone(), b.id.clone(), b.size.unwrap_or(0));
        let listed = self.shared.store.is_plain(&b.ns, &b.id).await?;
        let res = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)?.len();
            if listed && sealed::is_plain_len(len, size) {
                return payload::sha256_file(&path).map(|(sha, n)| Ok((sha, n)));
            }
            Ok(match sealed::authenticate(&key, &path, &ns, &id) {
                Ok(a) => Ok((a.sha256, a.header.plain_size)),
                Err(blobsync_shared::codec::CodecError::Io(e)) => return Err(e),
                Err(e) => Err(e.to_string()),
            })
        })
        .await
        .map_err(std::io::Error::other)?;
        Ok(match res {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("payload file is missing".into())
            }
            Err(e) => Some(format!("cannot read the payload file: {e}")),
            Ok(Err(why)) => Some(format!("payload failed authentication: {why}")),
            Ok(Ok((sha, size))) => {
                if Some(size) != b.size {
                    Some(format!(
                        "payload is {size} bytes, {} were recorded",
                        b.size.unwrap_or(0)
                    ))
                } else if Some(sha) != b.sha256 {
                    Some("payload SHA-256 does not match the recorded one (bit rot?)".into())
                } else {
                    None
                }
            }
        })
    }
}
