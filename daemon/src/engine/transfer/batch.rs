//! `/stream` batches: many small uploads in one request (the payload files, read whole, sent as
//! they are) and many small downloads (verified in memory, installed together through the sync
//! group), each recorded in one store transaction.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

use blobsync_shared::codec::{DecodeError, Decoder, Header, MAX_HEADER_LEN};
use blobsync_shared::{BlobId, InvalidBlob, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::upload::read_exactly;
use super::{NotReady, Progress};
use crate::clock::Clock;
use crate::engine::{Engine, TransferStats};
use crate::events::Direction;
use crate::remote::{BatchItem, ByteStream, Remote, RemoteError};
use crate::status::Transition;
use crate::store::ops::RowUpdate;
use crate::store::{BlobInfo, payload};

impl<R: Remote, C: Clock> Engine<R, C> {
    /// Writes small verified payloads (replacing stale copies) and makes them durable
    /// together through the sync group. One result per item, in order.
    pub(in crate::engine) async fn install_many(
        &self,
        files: Vec<(std::path::PathBuf, Vec<u8>)>,
    ) -> Vec<std::io::Result<()>> {
        use std::io::Write;
        let data = self.shared.data.clone();
        let n = files.len();
        let written = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(dest, bytes)| {
                    let p = payload::NewPayload::create(&data, &dest)
                        .and_then(|mut p| p.file().write_all(&bytes).map(|()| p));
                    (dest, p)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let written = match written {
            Ok(w) => w,
            Err(j) => {
                return (0..n)
                    .map(|_| Err(std::io::Error::other(j.to_string())))
                    .collect();
            }
        };
        let mut results: Vec<std::io::Result<()>> = Vec::with_capacity(n);
        let mut items = Vec::new();
        let mut slots = Vec::new();
        for (i, (dest, p)) in written.into_iter().enumerate() {
            match p {
                Ok(payload) => {
                    items.push(payload::Install {
                        payload,
                        dest,
                        replace: true,
                    });
                    slots.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        match self.shared.syncer.install(items).await {
            Ok(done) => {
                for (slot, (_, r)) in slots.into_iter().zip(done) {
                    results[slot] = r;
                }
            }
            Err(e) => {
                for slot in slots {
                    results[slot] = Err(std::io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
        results
    }

    /// The payload files of a batch of small blobs of `ns`, each whole, in one trip to the
    /// blocking pool (at most `BatchPolicy::max_blob` of plaintext each, so a batch is a few
    /// MiB; each is the stored blob, sent as it is), and the salts each id was seen with
    /// (the rollback check). `None`, logged, when either cannot be read: the batch stays
    /// queued.
    pub(in crate::engine) async fn read_batch_payloads(
        &self,
        ns: &Namespace,
        blobs: &[BlobInfo],
    ) -> Option<(
        Vec<std::io::Result<Vec<u8>>>,
        HashMap<BlobId, Vec<[u8; 32]>>,
    )> {
        let paths: Vec<std::path::PathBuf> = blobs
            .iter()
            .map(|b| self.shared.data.payload_path(&b.ns, &b.id))
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            paths.iter().map(std::fs::read).collect::<Vec<_>>()
        })
        .await
        .inspect_err(|e| error!(error = %e, "cannot read a batch's payloads; left queued"))
        .ok()?;
        let ids = blobs.iter().map(|b| b.id.clone()).collect();
        let seen = self
            .shared
            .store
            .seen_salts_many(ns, ids)
            .await
            .inspect_err(
                |e| error!(error = %e, "cannot read the salts seen before; batch left queued"),
            )
            .ok()?;
        Some((read, seen))
    }

    /// Many small uploads in one `/stream` request; results recorded in one transaction.
    pub(in crate::engine) async fn upload_batch(
        self: &Arc<Self>,
        blobs: Vec<BlobInfo>,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let ns = blobs[0].ns.clone();
        let Some((read, seen)) = self.read_batch_payloads(&ns, &blobs).await else {
            return;
        };
        let mut entries = Vec::new();
        let mut encoders: Vec<(BlobInfo, Header, Bytes)> = Vec::new();
        let mut fresh = Vec::new();
        let mut slow = Vec::new();
        for (b, r) in blobs.iter().zip(read) {
            let bytes = match r {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.reject_upload(b, "local payload file is missing".into(), stats)
                        .await;
                    continue;
                }
                Err(e) => {
                    let msg = format!("reading the local payload: {e}");
                    self.record_failure(b, Direction::Upload, msg, None, false, stats)
                        .await;
                    continue;
                }
            };
            let size = b.size.unwrap_or(0);
            let parsed = match Header::parse(&bytes) {
                Ok(Some((h, _)))
                    if !crate::store::sealed::is_plain_len(bytes.len() as u64, size) =>
                {
                    Some(h)
                }
                _ => None,
            };
            match parsed {
                // A plaintext payload of an earlier release, or a salt this device held
                // before: the single-blob preparation seals it (rare).
                None => slow.push(b.clone()),
                Some(h)
                    if b.upload_salt.is_none()
                        && seen.get(&b.id).is_some_and(|s| s.contains(&h.salt)) =>
                {
                    slow.push(b.clone())
                }
                Some(h) => {
                    if h.namespace != b.ns
                        || h.id != b.id
                        || h.plain_size != size
                        || h.stored_size() != bytes.len() as u64
                        || b.upload_salt.is_some_and(|s| s != h.salt)
                    {
                        let why = "the local payload does not match its blob (damaged on disk)";
                        self.reject_upload(b, why.into(), stats).await;
                        continue;
                    }
                    if b.upload_salt.is_none() {
                        fresh.push((b.id.clone(), h.salt, h.stored_size()));
                    }
                    entries.push((b.id.clone(), h.stored_size()));
                    encoders.push((b.clone(), h, Bytes::from(bytes)));
                }
            }
        }
        for b in slow {
            let lock = self.shared.blob_lock(&b.ns, &b.id);
            let _g = lock.lock().await;
            let h = match self.upload_header(&b).await {
                Ok(h) => h,
                Err(NotReady::Retry(e)) => {
                    self.record_failure(&b, Direction::Upload, e, None, false, stats)
                        .await;
                    continue;
                }
                Err(NotReady::Reject(e)) => {
                    self.reject_upload(&b, e, stats).await;
                    continue;
                }
            };
            let path = self.shared.data.payload_path(&b.ns, &b.id);
            let n = h.stored_size();
            match tokio::task::spawn_blocking(move || read_exactly(&path, n)).await {
                Ok(Ok(bytes)) => {
                    entries.push((b.id.clone(), n));
                    encoders.push((b, h, bytes));
                }
                other => {
                    let msg = format!("reading the local payload: {other:?}");
                    self.record_failure(&b, Direction::Upload, msg, None, false, stats)
                        .await;
                }
            }
        }
        // The fresh salts are recorded in one transaction (one commit instead of one per
        // blob: W5 of issue 8).
        if !fresh.is_empty()
            && let Err(e) = self.shared.store.set_upload_salts(&ns, fresh).await
        {
            for (b, _, _) in &encoders {
                self.record_failure(b, Direction::Upload, e.to_string(), None, false, stats)
                    .await;
            }
            return;
        }
        if encoders.is_empty() {
            return;
        }
        // One condition for the whole request: the cursor, when any blob of it is a retry.
        let any_retry = encoders.iter().any(|(b, _, _)| b.upload_salt.is_some());
        let since = self.if_absent_since(&ns, any_retry).await;
        let total: u64 = entries.iter().map(|e| e.1).sum();
        let progress = Progress::start(
            &self.shared,
            &encoders[0].0,
            Direction::Upload,
            total,
            encoders.len(),
        );
        let progress = std::sync::Arc::new(std::sync::Mutex::new(progress));
        let parts: Vec<Bytes> = encoders.iter().map(|(_, _, b)| b.clone()).collect();
        let shared = self.shared.clone();
        let body: ByteStream = Box::pin(futures_util::stream::iter(parts).then(move |b| {
            let (shared, progress) = (shared.clone(), progress.clone());
            async move {
                shared.up.acquire(b.len()).await;
                progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(b.len() as u64);
                Ok(b)
            }
        }));
        let encoders: Vec<(BlobInfo, Header)> =
            encoders.into_iter().map(|(b, h, _)| (b, h)).collect();
        let res = tokio::select! {
            r = self.remote.put_batch(&ns, &entries, body, since) => r,
            _ = cancel.cancelled() => return,
        };
        let mut results = match res {
            Ok(r) => r,
            Err(e) => {
                let ra = e.retry_after();
                for (b, _) in &encoders {
                    self.record_failure(
                        b,
                        Direction::Upload,
                        format!("batch upload: {e}"),
                        ra,
                        false,
                        stats,
                    )
                    .await;
                }
                return;
            }
        };
        let now = self.clock.now();
        let mut ok = Vec::new();
        for (b, h) in &encoders {
            let res = results.remove(&b.id).unwrap_or_else(|| {
                Err(RemoteError::Protocol(
                    "the batch upload's answer has no result for this blob".into(),
                ))
            });
            if self.settle_upload(b, &h.salt, res, stats).await {
                ok.push((
                    b.id.clone(),
                    Transition::UploadSucceeded,
                    RowUpdate {
                        remote_size: Some(h.stored_size()),
                        now: Some(now),
                        ..Default::default()
                    },
                ));
            }
        }
        match self.shared.store.transition_many(&ns, ok).await {
            Ok(changes) => {
                stats.uploaded += changes.len() as u64;
                stats.bytes_up += total;
                for ch in changes {
                    if let Some((b, h)) = encoders.iter().find(|(b, _)| b.id == ch.id) {
                        self.finished(b, Direction::Upload, h.stored_size());
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot record a batch upload"),
        }
    }

    /// Many small downloads in one `/stream` request (each blob is small: held in memory
    /// for verification); results recorded in one transaction.
    pub(in crate::engine) async fn download_batch(
        self: &Arc<Self>,
        blobs: Vec<BlobInfo>,
        cancel: &CancellationToken,
        stats: &mut TransferStats,
    ) {
        let ns = blobs[0].ns.clone();
        let ids: Vec<BlobId> = blobs.iter().map(|b| b.id.clone()).collect();
        let total: u64 = blobs.iter().filter_map(|b| b.remote_size).sum();
        let mut progress = Progress::start(
            &self.shared,
            &blobs[0],
            Direction::Download,
            total,
            ids.len(),
        );
        let max_blob = self.shared.settings().batch.max_blob * 2 + MAX_HEADER_LEN as u64;
        let res = tokio::select! {
            r = self.remote.get_batch(&ns, &ids, max_blob) => r,
            _ = cancel.cancelled() => return,
        };
        let mut items = match res {
            Ok(b) => b,
            Err(e) => {
                let ra = e.retry_after();
                for b in &blobs {
                    self.record_failure(
                        b,
                        Direction::Download,
                        format!("batch download: {e}"),
                        ra,
                        false,
                        stats,
                    )
                    .await;
                }
                return;
            }
        };
        let asked: HashMap<&BlobId, &BlobInfo> = blobs.iter().map(|b| (&b.id, b)).collect();
        let mut complete: Vec<(&BlobInfo, Vec<u8>)> = Vec::new();
        let mut missing: HashSet<BlobId> = HashSet::new();
        let mut answered: HashSet<BlobId> = HashSet::new();
        let mut broken: Option<String> = None;
        while let Some(item) = items.next().await {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            let (BatchItem::Blob { id, .. } | BatchItem::Missing { id }) = &item;
            // A hostile server must not answer one blob twice: the copies would both pass
            // and then wait on each other's lock below.
            if !answered.insert(id.clone()) {
                broken = Some(format!("the batch answer holds blob {id} twice"));
                break;
            }
            match item {
                BatchItem::Blob { id, stored } => {
                    self.shared.down.acquire(stored.len()).await;
                    progress.add(stored.len() as u64);
                    // An id that was not asked for is dropped.
                    if let Some(b) = asked.get(&id) {
                        complete.push((b, stored));
                    }
                }
                BatchItem::Missing { id } => {
                    missing.insert(id);
                }
            }
            // A hostile server must not make us hold more than we asked for.
            if answered.len() > ids.len() {
                broken = Some("the batch answer holds more blobs than were asked for".into());
                break;
            }
        }
        drop(progress);
        let now = self.clock.now();
        // Verify every blob first (in memory), then install the good ones together: one
        // write pass, concurrent fsyncs, one fsync per directory, and the one commit below,
        // instead of two fsyncs per blob in a row (W1/W5 of issue 8).
        let mut ok = Vec::new();
        let mut verified = Vec::new();
        let seen = match self.shared.store.seen_salts_many(&ns, ids.clone()).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot read the salts seen before; batch left queued");
                return;
            }
        };
        for (b, stored) in complete {
            let forbidden: Vec<[u8; 32]> = seen
                .get(&b.id)
                .into_iter()
                .flatten()
                .filter(|s| Some(**s) != b.upload_salt)
                .copied()
                .collect();
            match open_small(&self.shared.key, b, &stored) {
                Ok((plain_size, sha, salt)) => {
                    self.shared.key_proven();
                    match self.check_rollback(b, Some(salt), &sha, &forbidden) {
                        Ok(()) => verified.push((b, stored, plain_size, sha, salt)),
                        Err(e) => {
                            let _ = self
                                .settle(b, Transition::DownloadInvalid, &e.to_string())
                                .await;
                            stats.failed += 1;
                        }
                    }
                }
                Err(e) if self.shared.download_invalid(&b.ns, &b.id, &e) => {}
                Err(InvalidBlob::BadMagic) => self.foreign_format(b).await,
                Err(e) => {
                    self.record_failure(b, Direction::Download, e.to_string(), None, true, stats)
                        .await
                }
            }
        }
        // The per-blob locks keep an on-demand fetch of the same blob out; taken in id order.
        verified.sort_by(|x, y| x.0.id.cmp(&y.0.id));
        let mut guards = Vec::with_capacity(verified.len());
        for (b, _, _, _, _) in &verified {
            guards.push(self.shared.blob_lock(&b.ns, &b.id).lock_owned().await);
        }
        let mut files = Vec::with_capacity(verified.len());
        let mut facts = Vec::with_capacity(verified.len());
        for (b, stored, size, sha, salt) in verified {
            facts.push((b, stored.len() as u64, size, sha, salt));
            // The verified stored bytes are the payload, as they are.
            files.push((self.shared.data.payload_path(&b.ns, &b.id), stored));
        }
        let installed = self.install_many(files).await;
        for (i, (b, stored_len, size, sha, salt)) in facts.into_iter().enumerate() {
            match installed.get(i).or(installed.first()) {
                Some(Ok(())) => ok.push((
                    b.id.clone(),
                    Transition::DownloadSucceeded,
                    RowUpdate {
                        size: Some(size),
                        sha256: Some(sha),
                        remote_size: Some(stored_len),
                        salt: Some(salt),
                        now: Some(now),
                        ..Default::default()
                    },
                )),
                Some(Err(e)) => {
                    let msg = format!("local i/o: {e}");
                    self.record_failure(b, Direction::Download, msg, None, false, stats)
                        .await
                }
                None => {}
            }
        }
        drop(guards);
        let got: std::collections::HashSet<&BlobId> = ok.iter().map(|(id, _, _)| id).collect();
        for b in &blobs {
            if got.contains(&b.id) {
                continue;
            }
            if missing.contains(&b.id) {
                // Gone meanwhile: the next listing removes the row.
                continue;
            }
            if let Some(why) = &broken {
                self.record_failure(
                    b,
                    Direction::Download,
                    format!("batch download cut short: {why}"),
                    None,
                    false,
                    stats,
                )
                .await;
            }
        }
        let _g = ();
        match self.shared.store.transition_many(&ns, ok).await {
            Ok(changes) => {
                stats.downloaded += changes.len() as u64;
                stats.bytes_down += total;
                for ch in changes {
                    if let Some(b) = asked.get(&ch.id) {
                        self.finished(b, Direction::Download, b.remote_size.unwrap_or(0));
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot record a batch download"),
        }
    }
}

/// Verifies a small stored blob held in memory: its plaintext size, the plaintext's SHA-256
/// and its header salt. The plaintext goes nowhere but the hash.
pub(in crate::engine) fn open_small(
    key: &blobsync_shared::StorageKey,
    b: &BlobInfo,
    stored: &[u8],
) -> Result<(u64, [u8; 32], [u8; 32]), InvalidBlob> {
    if b.external {
        // Never in a download batch (`plan::next_transfers` puts it in an incoming batch,
        // which decrypts an age file, or passes a format-v1 copy here as a plain row).
        return Err(InvalidBlob::BadHeader(
            "an external blob cannot come in a batch".into(),
        ));
    }
    let mut d = Decoder::new(key, &b.ns, &b.id);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    d.feed(stored, |p| {
        ctx.update(p);
        Ok::<(), Infallible>(())
    })
    .map_err(|e| match e {
        DecodeError::Invalid(i) => i,
        DecodeError::Sink(never) => match never {},
    })?;
    let h = d.finish()?;
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ctx.finish().as_ref());
    Ok((h.plain_size, sha, h.salt))
}
