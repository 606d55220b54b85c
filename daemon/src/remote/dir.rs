//! `DirRemote`: a `file:///path` remote — the blob server's payload layout in a local folder
//! (`{root}/{user}/{ns}/{id[0..1]}/{id[0..3]}/{id}`) plus an append-only JSON-lines change log
//! (`{root}/{user}/.changes.jsonl`) that gives sequence numbers, tombstones and `since`.
//! Several daemons may share one folder: every write holds an exclusive `flock`.
//!
//! This is the daemon's embedded default remote (`file://<data_dir>/remote`). It stores
//! exactly the bytes it is given (ciphertext); it never sees keys.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use blobsync_shared::wire::{BlobDetail, Change, ChangeOp, ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{ByteStream, GetResponse, Remote, RemoteError, RemoteListFilter};

mod incoming;

/// Changes per `since` page.
const PAGE: usize = 1000;
/// Read size when streaming a payload.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogLine {
    seq: u64,
    ns: String,
    id: String,
    op: ChangeOp,
    size: u64,
    created: i64,
    #[serde(default)]
    external: bool,
    /// A delete's proof, as the deleting device sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proof: Option<String>,
}

#[derive(Default)]
struct Cache {
    /// Bytes of the log already applied.
    offset: u64,
    seq: u64,
    /// Latest line per (ns, id).
    latest: BTreeMap<(String, String), LogLine>,
}

/// A remote in a local folder.
#[derive(Clone)]
pub struct DirRemote {
    root: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

impl DirRemote {
    /// The remote for `user` under `root` (created on first write).
    pub fn new(root: impl AsRef<Path>, user: &str) -> Result<Self, RemoteError> {
        let root = root.as_ref().join(user);
        crate::store::payload::create_private_dir(&root.join(".tmp"))
            .map_err(|e| RemoteError::Config(format!("cannot create {}: {e}", root.display())))?;
        Ok(Self {
            root,
            cache: Arc::new(Mutex::new(Cache::default())),
        })
    }

    fn blob_path(&self, ns: &str, id: &str) -> PathBuf {
        self.root
            .join(ns)
            .join(&id[..1])
            .join(&id[..id.len().min(3)])
            .join(id)
    }

    fn flags_path(&self, ns: &str, id: &str) -> PathBuf {
        let mut p = self.blob_path(ns, id).into_os_string();
        p.push(".flags");
        p.into()
    }

    fn log_path(&self) -> PathBuf {
        self.root.join(".changes.jsonl")
    }

    /// Runs `f` under the folder's exclusive lock with the change log caught up.
    fn locked<T>(
        &self,
        f: impl FnOnce(&Self, &mut Cache) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))?;
        // SAFETY: flock on a valid fd we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up(&mut cache)?;
        f(self, &mut cache)
    }

    fn catch_up(&self, cache: &mut Cache) -> Result<(), RemoteError> {
        let mut f = match File::open(self.log_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        f.seek(SeekFrom::Start(cache.offset))?;
        let mut reader = io::BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break; // a torn last line (crash mid-append) is ignored until completed
            }
            cache.offset += n as u64;
            let l: LogLine = serde_json::from_str(line.trim_end())
                .map_err(|e| RemoteError::Protocol(format!("change log: {e}")))?;
            cache.seq = cache.seq.max(l.seq);
            cache.latest.insert((l.ns.clone(), l.id.clone()), l);
        }
        Ok(())
    }

    fn append(&self, cache: &mut Cache, mut line: LogLine) -> Result<(), RemoteError> {
        line.seq = cache.seq + 1;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut text =
            serde_json::to_string(&line).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        cache.offset += text.len() as u64;
        cache.seq = line.seq;
        cache
            .latest
            .insert((line.ns.clone(), line.id.clone()), line);
        Ok(())
    }

    fn is_live(cache: &Cache, ns: &str, id: &str) -> Option<LogLine> {
        cache
            .latest
            .get(&(ns.to_owned(), id.to_owned()))
            .filter(|l| l.op == ChangeOp::Put)
            .cloned()
    }

    /// Installs a complete temp file as a new blob (409 if it exists; with `if_absent_since`,
    /// `DeletedAfter` if the change log's latest line for the id is a delete above it: the
    /// server's rule, decided under the same lock as the install).
    fn commit_put(
        &self,
        ns: &str,
        id: &str,
        temp: &Path,
        size: u64,
        if_absent_since: Option<u64>,
    ) -> Result<(), RemoteError> {
        self.locked(|me, cache| {
            if Self::is_live(cache, ns, id).is_some() {
                let _ = fs::remove_file(temp);
                return Err(RemoteError::Conflict);
            }
            let tombstone = cache
                .latest
                .get(&(ns.to_owned(), id.to_owned()))
                .filter(|l| l.op == ChangeOp::Delete);
            if let (Some(t), Some(since)) = (tombstone, if_absent_since)
                && t.seq > since
            {
                let _ = fs::remove_file(temp);
                return Err(RemoteError::DeletedAfter(format!(
                    "blob {id} in namespace {ns} was deleted at seq {}, after {since}; \
                     not recreating it",
                    t.seq
                )));
            }
            let dest = me.blob_path(ns, id);
            let dir = dest.parent().expect("blob paths have a parent"); // by construction
            fs::create_dir_all(dir)?;
            fs::rename(temp, &dest)?;
            File::open(dir)?.sync_all()?;
            let _ = fs::remove_file(me.flags_path(ns, id));
            me.append(
                cache,
                LogLine {
                    seq: 0,
                    ns: ns.to_owned(),
                    id: id.to_owned(),
                    op: ChangeOp::Put,
                    size,
                    created: unix_now(),
                    external: false,
                    proof: None,
                },
            )
        })
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join(".tmp").join(BlobId::random().to_string())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(DirRemote) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| RemoteError::Io(io::Error::other(e)))?
    }

    /// Writes `len` bytes of `body` to a fresh temp file, fsynced.
    async fn receive(&self, body: &mut ByteStream, len: u64) -> Result<PathBuf, RemoteError> {
        let temp = self.temp_path();
        let mut f = tokio::fs::File::create(&temp).await?;
        let mut got = 0u64;
        let res: Result<(), RemoteError> = async {
            while got < len {
                let Some(chunk) = body.next().await else {
                    break;
                };
                let chunk = chunk?;
                let take = ((len - got) as usize).min(chunk.len());
                f.write_all(&chunk[..take]).await?;
                got += take as u64;
                if take < chunk.len() {
                    return Err(RemoteError::Protocol("body longer than announced".into()));
                }
            }
            if got != len {
                return Err(RemoteError::Transport(format!(
                    "body ended after {got} of {len} bytes"
                )));
            }
            f.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
        Ok(temp)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Streams `len` bytes of `f` from its current position.
fn file_stream(f: File, len: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (Some(f), len),
        |(f, left)| async move {
            let mut f = f?;
            if left == 0 {
                return None;
            }
            let n = (left as usize).min(CHUNK);
            let res = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                let r = f.read(&mut buf).map(|got| {
                    buf.truncate(got);
                    buf
                });
                (f, r)
            })
            .await;
            match res {
                Ok((f, Ok(buf))) if !buf.is_empty() => {
                    let got = buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), (Some(f), left - got)))
                }
                Ok((_, Ok(_))) => Some((
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank")),
                    (None, 0),
                )),
                Ok((_, Err(e))) => Some((Err(e), (None, 0))),
                Err(j) => Some((Err(io::Error::other(j)), (None, 0))),
            }
        },
    ))
}

impl Remote for DirRemote {
    fn describe(&self) -> String {
        format!(
            "file://{}",
            self.root.parent().unwrap_or(&self.root).display()
        )
    }

    async fn changes(&self, ns: &Namespace, since: u64) -> Result<ChangesResponse, RemoteError> {
        let ns = ns.to_string();
        self.blocking(move |me| {
            me.locked(|_, cache| {
                if since > cache.seq {
                    return Err(RemoteError::CursorInvalid {
                        status: 400,
                        message: format!("since={since} is past the current seq {}", cache.seq),
                    });
                }
                let mut lines: Vec<&LogLine> = cache
                    .latest
                    .values()
                    .filter(|l| l.ns == ns && l.seq > since)
                    .collect();
                lines.sort_by_key(|l| l.seq);
                let more = lines.len() > PAGE;
                lines.truncate(PAGE);
                let changes = lines
                    .iter()
                    .map(|l| {
                        Ok(Change {
                            id: BlobId::new(l.id.clone())
                                .map_err(|e| RemoteError::Protocol(e.to_string()))?,
                            op: l.op,
                            size: l.size,
                            created: l.created,
                            seq: l.seq,
                            external: l.external,
                            proof: l.proof.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, RemoteError>>()?;
                let seq = if more {
                    changes.last().map_or(cache.seq, |c| c.seq)
                } else {
                    cache.seq
                };
                Ok(ChangesResponse { seq, changes, more })
            })
        })
        .await
    }

    async fn identity(&self) -> Result<String, RemoteError> {
        // The folder's instance id: made with its first use, so a folder that was wiped or
        // replaced (same path, other data) is told apart from the one we synced with.
        self.blocking(|me| {
            me.locked(|me, _| {
                let path = me.root.join(".instance");
                let id = match std::fs::read_to_string(&path) {
                    Ok(s) => s.trim().to_owned(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let mut b = [0u8; 16];
                        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                            .map_err(|_| RemoteError::Config("no randomness".into()))?;
                        let id = hex::encode(b);
                        let tmp = me.root.join(".instance.tmp");
                        std::fs::write(&tmp, format!("{id}\n"))?;
                        File::open(&tmp)?.sync_all()?;
                        std::fs::rename(&tmp, &path)?;
                        id
                    }
                    Err(e) => return Err(e.into()),
                };
                let user = me
                    .root
                    .file_name()
                    .map(|u| u.to_string_lossy().into_owned());
                Ok(super::identity_string(
                    &me.describe(),
                    user.as_deref().unwrap_or(""),
                    Some(&id),
                ))
            })
        })
        .await
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>, RemoteError> {
        // The change log is what `changes` answers from, so it is the authority: it knows
        // namespaces holding only tombstones (whose folders may be gone), and ignores stray
        // folders nothing was ever logged in.
        self.blocking(|me| {
            me.locked(|_, cache| {
                let names: std::collections::BTreeSet<&str> =
                    cache.latest.keys().map(|(ns, _)| ns.as_str()).collect();
                names
                    .into_iter()
                    .map(|n| {
                        Namespace::new(n).map_err(|e| {
                            RemoteError::Protocol(format!("change log namespace {n:?}: {e}"))
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn list(
        &self,
        ns: &Namespace,
        filter: &RemoteListFilter,
    ) -> Result<Vec<BlobDetail>, RemoteError> {
        let ns = ns.to_string();
        let filter = filter.clone();
        self.blocking(move |me| {
            me.locked(|me, cache| {
                let want = if filter.deleted {
                    ChangeOp::Delete
                } else {
                    ChangeOp::Put
                };
                let mut out = Vec::new();
                for l in cache.latest.values() {
                    if l.ns != ns || l.op != want {
                        continue;
                    }
                    if filter
                        .after
                        .as_ref()
                        .is_some_and(|a| l.id.as_str() <= a.as_str())
                    {
                        continue;
                    }
                    let flags = read_flags(&me.flags_path(&l.ns, &l.id))?;
                    if filter.flag.is_some_and(|f| !flags.contains(&f)) {
                        continue;
                    }
                    out.push(BlobDetail {
                        id: BlobId::new(l.id.clone())
                            .map_err(|e| RemoteError::Protocol(e.to_string()))?,
                        size: l.size,
                        created: l.created,
                        flags,
                        external: l.external,
                    });
                    if filter.limit.is_some_and(|n| out.len() >= n as usize) {
                        break;
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn put(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        mut body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<(), RemoteError> {
        let temp = self.receive(&mut body, len).await?;
        let (ns, id) = (ns.to_string(), id.to_string());
        self.blocking(move |me| me.commit_put(&ns, &id, &temp, len, if_absent_since))
            .await
    }

    async fn get(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Result<GetResponse, RemoteError> {
        let (ns, id) = (ns.to_string(), id.to_string());
        self.blocking(move |me| {
            let path = me.blob_path(&ns, &id);
            let live = me.locked(|_, cache| Ok(Self::is_live(cache, &ns, &id).is_some()))?;
            if !live {
                return Err(RemoteError::NotFound);
            }
            let mut f = File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => RemoteError::NotFound,
                _ => e.into(),
            })?;
            let total = f.metadata()?.len();
            let (offset, end) = match range {
                None => (0, total),
                Some(r) => {
                    if r.start >= total && !(total == 0 && r.start == 0) {
                        return Err(RemoteError::RangeNotSatisfiable);
                    }
                    (r.start, r.end.min(total))
                }
            };
            f.seek(SeekFrom::Start(offset))?;
            Ok(GetResponse {
                total,
                offset,
                len: end - offset,
                body: file_stream(f, end - offset),
            })
        })
        .await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<String>,
    ) -> Result<(), RemoteError> {
        let (ns, id) = (ns.to_string(), id.to_string());
        self.blocking(move |me| {
            me.locked(|me, cache| {
                let Some(live) = Self::is_live(cache, &ns, &id) else {
                    return Err(RemoteError::NotFound);
                };
                crate::store::payload::remove(&me.blob_path(&ns, &id))?;
                crate::store::payload::remove(&me.flags_path(&ns, &id))?;
                me.append(
                    cache,
                    LogLine {
                        op: ChangeOp::Delete,
                        created: unix_now(),
                        proof,
                        ..live
                    },
                )
            })
        })
        .await
    }

    async fn get_flags(&self, ns: &Namespace, id: &BlobId) -> Result<Vec<Flag>, RemoteError> {
        let (ns, id) = (ns.to_string(), id.to_string());
        self.blocking(move |me| {
            me.locked(|me, cache| {
                if Self::is_live(cache, &ns, &id).is_none() {
                    return Err(RemoteError::NotFound);
                }
                read_flags(&me.flags_path(&ns, &id))
            })
        })
        .await
    }

    async fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: &[Flag],
    ) -> Result<(), RemoteError> {
        let (ns, id) = (ns.to_string(), id.to_string());
        let mut flags = flags.to_vec();
        flags.sort();
        flags.dedup();
        self.blocking(move |me| {
            me.locked(|me, cache| {
                if Self::is_live(cache, &ns, &id).is_none() {
                    return Err(RemoteError::NotFound);
                }
                let text =
                    serde_json::to_vec(&flags).map_err(|e| RemoteError::Protocol(e.to_string()))?;
                fs::write(me.flags_path(&ns, &id), text)?;
                Ok(())
            })
        })
        .await
    }

    async fn put_batch(
        &self,
        ns: &Namespace,
        entries: &[(BlobId, u64)],
        mut body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<super::BatchOutcome, RemoteError> {
        // Split the body into its blobs, one temp file each; a chunk may span blobs.
        let mut out = super::BatchOutcome::new();
        let mut carry: Option<Bytes> = None;
        for (id, len) in entries {
            let temp = self.temp_path();
            let mut f = tokio::fs::File::create(&temp).await?;
            let mut left = *len;
            while left > 0 {
                let chunk = match carry.take() {
                    Some(c) => c,
                    None => match body.next().await {
                        Some(c) => c?,
                        None => {
                            let _ = tokio::fs::remove_file(&temp).await;
                            return Err(RemoteError::Transport("batch body ended early".into()));
                        }
                    },
                };
                let take = (left as usize).min(chunk.len());
                f.write_all(&chunk[..take]).await?;
                left -= take as u64;
                if take < chunk.len() {
                    carry = Some(chunk.slice(take..));
                }
            }
            f.sync_all().await?;
            drop(f);
            let (ns_s, id_s, n) = (ns.to_string(), id.to_string(), *len);
            let outcome = match self
                .blocking(move |me| me.commit_put(&ns_s, &id_s, &temp, n, if_absent_since))
                .await
            {
                r @ (Ok(()) | Err(RemoteError::Conflict | RemoteError::DeletedAfter(_))) => r,
                Err(e) => return Err(e),
            };
            out.insert(id.clone(), outcome);
        }
        Ok(out)
    }

    async fn incoming_recipient(&self) -> Result<Option<String>, RemoteError> {
        self.blocking(|me| me.read_recipient()).await
    }

    async fn publish_incoming_recipient(&self, recipient: &str) -> Result<(), RemoteError> {
        let r = recipient.to_owned();
        self.blocking(move |me| me.write_recipient(&r)).await
    }

    async fn replace_external(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        mut body: ByteStream,
        age_sha256: &[u8; 32],
    ) -> Result<Option<u64>, RemoteError> {
        let temp = self.receive(&mut body, len).await?;
        let (ns, id, h) = (ns.to_string(), id.to_string(), *age_sha256);
        self.blocking(move |me| me.commit_replace(&ns, &id, &temp, len, &h))
            .await
    }

    async fn get_batch(
        &self,
        ns: &Namespace,
        ids: &[BlobId],
        max_blob: u64,
    ) -> Result<super::BatchItems, RemoteError> {
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            match self.get(ns, id, None).await {
                Ok(r) if r.total > max_blob => {
                    items.push(Err(RemoteError::Protocol(format!(
                        "batch download: blob {id} is {} bytes, more than asked for",
                        r.total
                    ))));
                    break;
                }
                Ok(r) => match super::collect_body(r.body, r.total as usize).await {
                    Ok(stored) => items.push(Ok(super::BatchItem::Blob {
                        id: id.clone(),
                        stored,
                    })),
                    Err(e) => {
                        items.push(Err(e));
                        break;
                    }
                },
                Err(RemoteError::NotFound) => {
                    items.push(Ok(super::BatchItem::Missing { id: id.clone() }))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Box::pin(futures_util::stream::iter(items)))
    }
}

fn read_flags(path: &Path) -> Result<Vec<Flag>, RemoteError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| RemoteError::Protocol(format!("flags file: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Test helper: overwrite a stored blob's bytes in place (simulates tampering on the server).
pub fn tamper(remote: &DirRemote, ns: &Namespace, id: &BlobId, at: u64) -> io::Result<()> {
    let path = remote.blob_path(ns.as_str(), id.as_str());
    let mut bytes = fs::read(&path)?;
    let i = (at as usize).min(bytes.len().saturating_sub(1));
    bytes[i] ^= 0x55;
    fs::write(path, bytes)
}
