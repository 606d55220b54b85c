//! `Observed`: the engine's remote, wrapped so that every call records the remote's health
//! (what `status` shows on its remote line: reachable, credentials refused, the last error,
//! the last contact) in one place, instead of at each call site.
//!
//! An answer that is about the request and not about the server (404, 409, 412, 413, 416,
//! 406, 507, an unusable cursor) counts as contact: the server is up and took our token. A
//! body cut short mid-stream counts as the error it is.

use std::ops::Range;
use std::sync::Arc;

use blobsync_shared::wire::{BlobDetail, ChangesResponse, Flag};
use blobsync_shared::{BlobId, Namespace};
use futures_util::TryStreamExt;

use super::Shared;
use crate::remote::{BatchItems, ByteStream, GetResponse, Remote, RemoteError, RemoteListFilter};

/// A remote whose calls record the remote's health in [`Shared`].
pub(crate) struct Observed<R> {
    pub(crate) inner: R,
    shared: Arc<Shared>,
}

impl<R: Remote> Observed<R> {
    pub(crate) fn new(inner: R, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Records what `r` says about the remote and hands it back.
    fn seen<T>(&self, r: Result<T, RemoteError>) -> Result<T, RemoteError> {
        match &r {
            Ok(_) => self.shared.note_remote_ok(),
            Err(e) if answered(e) => self.shared.note_remote_ok(),
            Err(e) => self.shared.note_remote_err(e),
        }
        r
    }

    /// A body whose failure mid-stream is recorded too.
    fn watched(&self, body: ByteStream) -> ByteStream {
        let shared = self.shared.clone();
        Box::pin(body.inspect_err(move |e| {
            shared.note_remote_err(&RemoteError::Transport(format!("body cut short: {e}")))
        }))
    }
}

/// Whether `e` is the server's answer about this request (it is up, our token is good).
fn answered(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::NotFound
            | RemoteError::Conflict
            | RemoteError::TooLarge
            | RemoteError::QuotaExceeded
            | RemoteError::BadFlags(_)
            | RemoteError::CursorInvalid { .. }
            | RemoteError::DeletedAfter(_)
            | RemoteError::RangeNotSatisfiable
            | RemoteError::NotTheDelivery(_)
    )
}

impl<R: Remote> Remote for Observed<R> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn full_listings_only(&self) -> bool {
        self.inner.full_listings_only()
    }

    fn tombstones_without_proof_delete(&self) -> bool {
        self.inner.tombstones_without_proof_delete()
    }

    async fn changes(&self, ns: &Namespace, since: u64) -> Result<ChangesResponse, RemoteError> {
        self.seen(self.inner.changes(ns, since).await)
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>, RemoteError> {
        self.seen(self.inner.namespaces().await)
    }

    async fn list(
        &self,
        ns: &Namespace,
        f: &RemoteListFilter,
    ) -> Result<Vec<BlobDetail>, RemoteError> {
        self.seen(self.inner.list(ns, f).await)
    }

    async fn put(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<(), RemoteError> {
        self.seen(self.inner.put(ns, id, len, body, if_absent_since).await)
    }

    async fn get(
        &self,
        ns: &Namespace,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Result<GetResponse, RemoteError> {
        let mut r = self.seen(self.inner.get(ns, id, range).await)?;
        r.body = self.watched(r.body);
        Ok(r)
    }

    async fn delete(
        &self,
        ns: &Namespace,
        id: &BlobId,
        proof: Option<String>,
    ) -> Result<(), RemoteError> {
        self.seen(self.inner.delete(ns, id, proof).await)
    }

    async fn identity(&self) -> Result<String, RemoteError> {
        self.seen(self.inner.identity().await)
    }

    async fn get_flags(&self, ns: &Namespace, id: &BlobId) -> Result<Vec<Flag>, RemoteError> {
        self.seen(self.inner.get_flags(ns, id).await)
    }

    async fn set_flags(
        &self,
        ns: &Namespace,
        id: &BlobId,
        flags: &[Flag],
    ) -> Result<(), RemoteError> {
        self.seen(self.inner.set_flags(ns, id, flags).await)
    }

    async fn put_batch(
        &self,
        ns: &Namespace,
        entries: &[(BlobId, u64)],
        body: ByteStream,
        if_absent_since: Option<u64>,
    ) -> Result<crate::remote::BatchOutcome, RemoteError> {
        self.seen(
            self.inner
                .put_batch(ns, entries, body, if_absent_since)
                .await,
        )
    }

    async fn get_batch(
        &self,
        ns: &Namespace,
        ids: &[BlobId],
        max_blob: u64,
    ) -> Result<BatchItems, RemoteError> {
        let items = self.seen(self.inner.get_batch(ns, ids, max_blob).await)?;
        let shared = self.shared.clone();
        Ok(Box::pin(items.inspect_err(move |e| {
            if !answered(e) {
                shared.note_remote_err(e)
            }
        })))
    }

    async fn incoming_recipient(&self) -> Result<Option<String>, RemoteError> {
        self.seen(self.inner.incoming_recipient().await)
    }

    async fn publish_incoming_recipient(&self, recipient: &str) -> Result<(), RemoteError> {
        self.seen(self.inner.publish_incoming_recipient(recipient).await)
    }

    async fn replace_external(
        &self,
        ns: &Namespace,
        id: &BlobId,
        len: u64,
        body: ByteStream,
        age_sha256: &[u8; 32],
    ) -> Result<Option<u64>, RemoteError> {
        self.seen(
            self.inner
                .replace_external(ns, id, len, body, age_sha256)
                .await,
        )
    }
}
