//! `s3` payloads: objects in an S3-compatible bucket (Garage, MinIO, Ceph RGW, AWS) through
//! `object_store`'s S3 client (features `aws-base` + `reqwest` + `ring`: no C build).
//!
//! Every upload gets its own key, `blobs/{user}/{namespace}/{id}/{16 random hex}`: S3 has no
//! rename and stores such as Garage may ignore `If-None-Match: *`, so a key is never written
//! twice and never overwritten, and the index commit that records the key is what publishes
//! the object (see `index/postgres`). A body is streamed: buffered up to [`PART`] bytes, then
//! a multipart upload with [`PARTS_IN_FLIGHT`] parts in flight. A node killed mid-upload leaves an unfinished multipart upload (which
//! no GET sees) or a complete object no row names (an orphan that fsck finds and removes once
//! it is older than any upload can take).

use std::sync::Arc;

use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::{ByteStream, Found, Location, PayloadStore, PayloadWriter, Staged};

/// Bytes buffered before an upload turns multipart (and the part size after that): S3's
/// smallest part, so an upload holds at most [`PARTS_IN_FLIGHT`] + 1 parts in memory.
pub const PART: usize = 5 << 20;

/// Parts of one multipart upload sent at once (memory per upload: about 15 MiB).
pub const PARTS_IN_FLIGHT: usize = 2;

/// Prefix of every blob object; anything else in the bucket is left alone.
const PREFIX: &str = "blobs";

/// Where the bucket is. Secrets are never printed: `Debug` redacts them.
#[derive(Clone, Default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL (`http://127.0.0.1:3900` for a local Garage); None: AWS for the region.
    pub endpoint: Option<String>,
    /// Region (Garage's default is `garage`).
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Blob payloads in an object store.
#[derive(Debug, Clone)]
pub struct S3Payloads {
    store: Arc<dyn ObjectStore>,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn io_of(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        e => other(e),
    }
}

/// A fresh key for one upload of `user`/`ns`/`id`.
pub fn new_key(user: &str, ns: &Namespace, id: &BlobId) -> String {
    let mut r = [0u8; 8];
    // Uniqueness, not secrecy; the OS source does not fail on Linux.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    format!(
        "{PREFIX}/{user}/{}/{}/{}",
        ns.as_str(),
        id.as_str(),
        hex::encode(r)
    )
}

/// Splits a key made by [`new_key`] into (user, namespace, id); None for anything else.
fn parse_key(key: &str) -> Option<(String, String, String)> {
    let mut it = key.split('/');
    let (p, u, n, i, r) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let ok = p == PREFIX
        && it.next().is_none()
        && Namespace::new(u).is_ok()
        && Namespace::new(n).is_ok()
        && BlobId::new(i).is_ok()
        && r.len() == 16
        && r.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| (u.to_owned(), n.to_owned(), i.to_owned()))
}

impl S3Payloads {
    /// Connects (lazily: the first request opens the connection) to the bucket.
    pub fn connect(cfg: &S3Config) -> Result<Self, String> {
        // reqwest is built without a TLS provider (no aws-lc-sys): ring's, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(&cfg.secret_access_key);
        if let Some(e) = &cfg.endpoint {
            // Self-hosted stores serve the bucket as a path, not a virtual host.
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| {
            format!(
                "S3 bucket {:?} at {}: {e}",
                cfg.bucket,
                cfg.endpoint.as_deref().unwrap_or("AWS")
            )
        })?;
        Ok(Self::from_store(Arc::new(store)))
    }

    /// Over any object store (unit tests use `object_store`'s in-memory store).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Checks that the bucket answers (a one-key listing), so a wrong endpoint, bucket or key
    /// fails at start with the store's own message rather than on the first upload.
    pub async fn check(&self) -> Result<(), String> {
        let prefix = ObjPath::from(PREFIX);
        let mut l = self.store.list(Some(&prefix));
        match l.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
        }
    }
}

/// An upload in progress: [`BufWriter`] does one PUT for a small body and a multipart
/// upload above [`PART`].
struct ObjectWriter {
    key: String,
    w: Option<BufWriter>,
    len: u64,
}

#[async_trait::async_trait]
impl PayloadWriter for ObjectWriter {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| other("writer already finished"))?;
        w.put(Bytes::copy_from_slice(data)).await.map_err(other)?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn finish(mut self: Box<Self>, _sync: bool) -> std::io::Result<Staged> {
        let mut w = self
            .w
            .take()
            .ok_or_else(|| other("writer already finished"))?;
        // A completed PUT or CompleteMultipartUpload is durable in the store.
        tokio::io::AsyncWriteExt::shutdown(&mut w).await?;
        Ok(Staged::Object(std::mem::take(&mut self.key)))
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // Cut off: abort a started multipart upload (nothing else was written).
        if let Some(mut w) = self.w.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}

#[async_trait::async_trait]
impl PayloadStore for S3Payloads {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn writer(&self, user: &str, ns: &Namespace, id: &BlobId) -> Box<dyn PayloadWriter> {
        let key = new_key(user, ns, id);
        let w = BufWriter::with_capacity(self.store.clone(), ObjPath::from(key.as_str()), PART)
            .with_max_concurrency(PARTS_IN_FLIGHT);
        Box::new(ObjectWriter {
            key,
            w: Some(w),
            len: 0,
        })
    }

    async fn discard(&self, staged: Vec<Staged>) {
        for s in staged {
            if let Staged::Object(k) = s {
                let _ = self.store.delete(&ObjPath::from(k.as_str())).await;
            }
        }
    }

    async fn open(&self, loc: &Location, start: u64, len: u64) -> std::io::Result<ByteStream> {
        let key = loc.object_key.as_deref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("blob {} has no object key in the index", loc.id),
            )
        })?;
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&ObjPath::from(key), opts)
            .await
            .map_err(io_of)?;
        Ok(Box::pin(r.into_stream().map_err(io_of)))
    }

    async fn remove_object(&self, key: &str) -> std::io::Result<()> {
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(other(e)),
        }
    }

    async fn remove_user(&self, user: &str) -> std::io::Result<()> {
        let prefix = ObjPath::from(format!("{PREFIX}/{user}"));
        let keys: Vec<ObjPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(other)?;
        for k in keys {
            self.remove_object(k.as_ref()).await?;
        }
        Ok(())
    }

    async fn sweep_temps(&self) -> std::io::Result<usize> {
        Ok(0)
    }

    async fn list(&self) -> std::io::Result<Vec<Found>> {
        let prefix = ObjPath::from(PREFIX);
        let now = std::time::SystemTime::now();
        let mut s = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            let m = m.map_err(other)?;
            let key = m.location.to_string();
            let age_secs = now
                .duration_since(std::time::SystemTime::from(m.last_modified))
                .map(|d| d.as_secs())
                .unwrap_or(0);
            out.push(match parse_key(&key) {
                Some((user, namespace, id)) => Found::Blob {
                    key,
                    user,
                    namespace,
                    id,
                    size: m.size,
                    age_secs,
                },
                None => Found::Stray(key),
            });
        }
        Ok(out)
    }

    async fn remove_found(&self, key: &str) -> std::io::Result<()> {
        self.remove_object(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_parse_back() {
        let (ns, id) = (Namespace::default(), BlobId::new("abc").unwrap());
        let (a, b) = (new_key("u", &ns, &id), new_key("u", &ns, &id));
        assert_ne!(a, b);
        assert_eq!(
            parse_key(&a),
            Some(("u".into(), "default".into(), "abc".into()))
        );
        assert_eq!(parse_key("blobs/u/default/abc"), None);
        assert_eq!(parse_key("other/u/default/abc/0123456789abcdef"), None);
    }

    #[tokio::test]
    async fn write_read_ranges_and_remove_in_memory() {
        let p = S3Payloads::from_store(Arc::new(object_store::memory::InMemory::new()));
        let (ns, id) = (Namespace::default(), BlobId::new("abc").unwrap());
        let mut w = p.writer("u", &ns, &id);
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        let Staged::Object(key) = w.finish(true).await.unwrap() else {
            panic!("not an object")
        };
        let loc = Location {
            user: "u".into(),
            ns,
            id,
            object_key: Some(key.clone()),
            size: 11,
        };
        let got = super::super::collect(p.open(&loc, 6, 5).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"world");
        let found = p.list().await.unwrap();
        assert!(matches!(&found[..], [Found::Blob { size: 11, .. }]));
        p.remove_object(&key).await.unwrap();
        let e = match p.open(&loc, 0, 1).await {
            Err(e) => e,
            Ok(_) => panic!("removed object still readable"),
        };
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
