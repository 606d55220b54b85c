//! `fs` payloads: files in Soledad's layout under the data dir ([`crate::layout`]), written
//! through [`TempBlob`] (temp file beside the final name), then renamed into place and made
//! durable with the rest of their round by the SQLite index's commit under its writer lock
//! (`index/sqlite/write.rs`). Reads and walks run on the blocking pool.

use std::io::{Read, Seek};

use blobsync_shared::{BlobId, Namespace};
use bytes::Bytes;

use super::{ByteStream, Found, INLINE_CAP, Location, PayloadStore, PayloadWriter, Staged};
use crate::body::{CHUNK, TempBlob};
use crate::index::SqliteStore;
use crate::layout::{self, Layout};
use blobsync_shared::chunks::ChunkPool;

/// Payload files under a data dir, and the small payloads its SQLite index keeps.
#[derive(Debug, Clone)]
pub struct FsPayloads {
    layout: Layout,
    /// Where small payloads are (`Staged::Inline`); without it every payload is a file.
    inline: Option<SqliteStore>,
    /// New payloads of at most this many bytes are kept inline.
    inline_max: usize,
}

impl FsPayloads {
    /// Payloads in `layout`, all of them files.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            inline: None,
            inline_max: 0,
        }
    }

    /// Payloads in `layout`, the new ones of at most `inline_max` bytes (capped at
    /// [`INLINE_CAP`]) inside `index` (the server's pairing); earlier inline payloads are
    /// read from there whatever `inline_max` is now.
    pub fn with_inline(layout: Layout, index: SqliteStore, inline_max: usize) -> Self {
        Self {
            layout,
            inline: Some(index),
            inline_max: inline_max.min(INLINE_CAP),
        }
    }
}

#[async_trait::async_trait]
impl PayloadWriter for TempBlob {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        TempBlob::write(self, data).await
    }
    fn len(&self) -> u64 {
        TempBlob::len(self)
    }
    async fn finish(mut self: Box<Self>, sync: bool) -> std::io::Result<Staged> {
        if let Some(small) = self.take_small() {
            return Ok(Staged::Inline(small));
        }
        Ok(Staged::File(TempBlob::finish(*self, sync).await?))
    }
}

/// A file of the layout walk as a payload found (files have no age that matters: fsck on
/// `fs` runs with the data dir locked, so no upload is in flight).
pub fn found_of(f: layout::Found) -> Found {
    match f {
        layout::Found::Temp(p) => Found::Temp(p.display().to_string()),
        layout::Found::Stray(p) => Found::Stray(p.display().to_string()),
        layout::Found::Blob {
            path,
            user,
            namespace,
            id,
            size,
        } => Found::Blob {
            key: path.display().to_string(),
            user,
            namespace,
            id,
            size,
            age_secs: u64::MAX,
        },
    }
}

fn files(staged: &[Staged]) -> Vec<std::path::PathBuf> {
    staged
        .iter()
        .filter_map(|s| match s {
            Staged::File(p) => Some(p.clone()),
            Staged::Object(_) | Staged::Inline(_) => None,
        })
        .collect()
}

/// `len` bytes from `start` of a payload kept in the index, checked against its row's `size`
/// as a file is (a replace may have changed it since the row was read).
fn inline_range(data: Bytes, size: u64, start: u64, len: u64) -> std::io::Result<ByteStream> {
    if data.len() as u64 != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            format!(
                "payload replaced since its index row was read ({} bytes, the row says {size})",
                data.len()
            ),
        ));
    }
    let end = start
        .checked_add(len)
        .filter(|e| *e <= size)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bytes {start}+{len} are outside a payload of {size} bytes"),
            )
        })?;
    let part = data.slice(start as usize..end as usize);
    Ok(Box::pin(futures_util::stream::iter([Ok(part)])))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

#[async_trait::async_trait]
impl PayloadStore for FsPayloads {
    fn kind(&self) -> &'static str {
        "fs"
    }

    fn layout(&self) -> Option<&Layout> {
        Some(&self.layout)
    }

    fn writer(&self, user: &str, ns: &Namespace, id: &BlobId) -> Box<dyn PayloadWriter> {
        Box::new(TempBlob::new(self.layout.temp_path(user, ns, id)).inline_up_to(self.inline_max))
    }

    fn inline_max(&self) -> u64 {
        self.inline_max as u64
    }

    fn file_writer(&self, user: &str, ns: &Namespace, id: &BlobId) -> Box<dyn PayloadWriter> {
        Box::new(TempBlob::new(self.layout.temp_path(user, ns, id)))
    }

    async fn discard(&self, staged: Vec<Staged>) {
        let paths = files(&staged);
        let _ = blocking(move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
            Ok(())
        })
        .await;
    }

    async fn open(&self, loc: &Location, start: u64, len: u64) -> std::io::Result<ByteStream> {
        if let Some(index) = self
            .inline
            .as_ref()
            .filter(|_| loc.size <= INLINE_CAP as u64)
            && let Some(data) = index
                .inline_payload(&loc.user, &loc.ns, &loc.id)
                .await
                .map_err(std::io::Error::other)?
        {
            return inline_range(data, loc.size, start, len);
        }
        let path = self.layout.blob_path(&loc.user, &loc.ns, &loc.id);
        let size = loc.size;
        // A small read is done in the same blocking hop as the open.
        let (file, first) = blocking(move || {
            let mut f = std::fs::File::open(path)?;
            // The name may have been replaced since the index row was read. The open file is
            // ours whatever happens next, so this one check makes the whole read consistent.
            let found = f.metadata()?.len();
            if found != size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    format!("payload replaced since its index row was read ({found} bytes, the row says {size})"),
                ));
            }
            f.seek(std::io::SeekFrom::Start(start))?;
            let n = len.min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf)?;
            Ok((f, Bytes::from(buf)))
        })
        .await?;
        let left = len - first.len() as u64;
        let head = futures_util::stream::iter([Ok(first)]);
        if left == 0 {
            return Ok(Box::pin(head));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(crate::body::BODY_CHANNEL);
        tokio::task::spawn_blocking(move || {
            let (mut file, mut left) = (file, left);
            let pool = ChunkPool::default();
            while left > 0 {
                let mut buf = pool.take(left.min(CHUNK as u64) as usize);
                if let Err(e) = file.read_exact(&mut buf) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                left -= buf.len() as u64;
                if tx.blocking_send(Ok(pool.bytes(buf))).is_err() {
                    return; // the reader went away
                }
            }
        });
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(futures_util::StreamExt::chain(head, rest)))
    }

    async fn remove_object(&self, key: &str) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fs payloads have no object keys (asked to remove {key:?})"),
        ))
    }

    async fn remove_user(&self, user: &str) -> std::io::Result<()> {
        let dir = self.layout.user_dir(user);
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        })
        .await
    }

    async fn sweep_temps(&self) -> std::io::Result<usize> {
        let root = self.layout.root().to_path_buf();
        blocking(move || layout::remove_temp_files(&root)).await
    }

    async fn list(&self) -> std::io::Result<Vec<Found>> {
        let root = self.layout.root().to_path_buf();
        let found = blocking(move || layout::walk(&root)).await?;
        Ok(found.into_iter().map(found_of).collect())
    }

    async fn remove_found(&self, key: &str) -> std::io::Result<()> {
        let p = std::path::PathBuf::from(key);
        blocking(move || std::fs::remove_file(p)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::collect;

    /// A file renamed over the payload between the index lookup and the open (an incoming
    /// adoption) is refused, not served under the old row's length: `get` then looks again.
    #[tokio::test]
    async fn a_payload_of_another_size_than_its_row_is_refused_as_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let ns = Namespace::new("default").unwrap();
        let id = BlobId::new("b").unwrap();
        let path = layout.blob_path("u", &ns, &id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"the sealed blob, longer than the age file").unwrap();
        let store = FsPayloads::new(layout);
        let loc = |size| Location {
            user: "u".into(),
            ns: ns.clone(),
            id: id.clone(),
            object_key: None,
            size,
        };
        let Err(e) = store.open(&loc(12), 0, 12).await else {
            panic!("served 12 bytes of a replaced file")
        };
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "{e}");
        assert!(e.to_string().contains("replaced"), "{e}");
        let size = std::fs::metadata(&path).unwrap().len();
        let got = collect(store.open(&loc(size), 0, size).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, std::fs::read(&path).unwrap());
    }
}
