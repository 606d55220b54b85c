//! `blobsync-server migrate --from DIR --to s3+postgres`: copies a stopped one-node server
//! (`fs+sqlite`) to the scale-out backends.
//!
//! - **Source untouched**: the SQLite index is opened read-only (no migration runs on it) and
//!   payload files are only read; the data dir lock keeps a server off it meanwhile.
//! - **Same identity**: the instance id, every user's token hash, quota, sequence number and
//!   purge mark, every row's sequence number, flags and tombstone proof are copied as they
//!   are, so a device's cursor and the instance id it remembers stay valid.
//! - **Verified**: each payload is streamed to a new object while its SHA-256 is computed;
//!   the object is then read back and must have the same size and hash, else the copy stops.
//! - **Resumable**: a row already in the database with the same sequence number is skipped,
//!   so a cut-off run is simply started again; an object uploaded but not yet recorded by the
//!   cut-off run is an orphan that `fsck --repair` removes.

use std::path::Path;

use futures_util::StreamExt;
use rusqlite::{Connection, OpenFlags};
use tokio::io::AsyncReadExt;

use crate::backend::ScaleOut;
use crate::index::INDEX_FILE as INDEX_FILE_NAME;
use crate::index::IndexError;
use crate::index::postgres::{PgIndex, pg};
use crate::payload::S3Payloads;
use crate::payload::{Location, PayloadStore, Staged};
use crate::{DirLock, ServerError};

/// What a migration did.
#[derive(Debug, Default)]
pub struct MigrateReport {
    /// The instance id kept.
    pub instance: String,
    /// Users copied (or refreshed).
    pub users: u64,
    /// Apps copied.
    pub apps: u64,
    /// Live blobs copied and verified.
    pub copied: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Tombstones copied.
    pub tombstones: u64,
    /// Rows already there from an earlier run.
    pub skipped: u64,
}

impl MigrateReport {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        format!(
            "instance id {} kept\nusers: {}, apps: {}\nblobs copied and verified: {} ({} bytes)\n\
             tombstones copied: {}\nalready there (earlier run): {}\n",
            self.instance,
            self.users,
            self.apps,
            self.copied,
            self.bytes,
            self.tombstones,
            self.skipped
        )
    }
}

fn err(msg: impl Into<String>) -> ServerError {
    ServerError::Index(IndexError::Batch(msg.into()))
}

/// A source row.
struct SrcRow {
    user: String,
    ns: String,
    id: String,
    size: i64,
    created: i64,
    seq: i64,
    deleted: bool,
    flags: i64,
    external: bool,
    proof: Option<String>,
    age_sha256: Option<String>,
    /// A small payload kept inside the index (schema 7 on) instead of as a file.
    inline: Option<Vec<u8>>,
}

/// Reads everything but the blob rows from the read-only source.
type Head = (
    String,
    Vec<(String, Vec<u8>, Option<i64>, i64, i64, i64, i64)>,
    Vec<(String, Vec<u8>, i64, String)>,
    Vec<(String, String, i64)>,
);

fn read_head(c: &Connection) -> rusqlite::Result<Head> {
    let instance: String =
        c.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get(0)
        })?;
    let users = c
        .prepare(
            "SELECT name, token_hash, quota_bytes, seq, used_bytes, created, purged_seq FROM users",
        )?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let apps = c
        .prepare("SELECT name, token_hash, created, namespaces FROM apps")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let keys = c
        .prepare("SELECT user, recipient, updated FROM incoming_keys")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok((instance, users, apps, keys))
}

/// Copies `from` to the scale-out backends in `to` (see the module docs).
pub async fn migrate(from: &Path, to: &ScaleOut) -> Result<MigrateReport, ServerError> {
    let index_path = from.join(INDEX_FILE_NAME);
    if !index_path.is_file() {
        return Err(err(format!(
            "{} holds no {INDEX_FILE_NAME}: give the data dir of a blobsync-server (--data)",
            from.display()
        )));
    }
    let _lock = DirLock::acquire(from)?;
    let src = Connection::open_with_flags(&index_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(IndexError::from)?;
    let version: i64 = src
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(IndexError::from)?;
    if version < 4 {
        return Err(err(format!(
            "the index in {} has schema {version}; start this version of blobsync-server on it \
             once (and stop it) before migrating",
            from.display()
        )));
    }
    let (instance, users, apps, keys) = read_head(&src).map_err(IndexError::from)?;
    let pg_index = PgIndex::open(&to.database_url, 2, Some(&instance)).await?;
    let payloads = S3Payloads::connect(&to.s3).map_err(IndexError::Payload)?;
    payloads.check().await.map_err(IndexError::Payload)?;
    let mut report = MigrateReport {
        instance,
        ..Default::default()
    };
    let c = pg_index.client().await?;
    for (name, hash, quota, seq, used, created, purged) in users {
        c.execute(
            "INSERT INTO users (name, token_hash, quota_bytes, seq, used_bytes, created, \
             purged_seq) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET \
             token_hash = excluded.token_hash, quota_bytes = excluded.quota_bytes, \
             seq = excluded.seq, used_bytes = excluded.used_bytes, purged_seq = excluded.purged_seq",
            &[&name, &hash, &quota, &seq, &used, &created, &purged],
        )
        .await
        .map_err(pg)?;
        report.users += 1;
    }
    for (name, hash, created, ns) in apps {
        c.execute(
            "INSERT INTO apps (name, token_hash, created, namespaces) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, \
             namespaces = excluded.namespaces",
            &[&name, &hash, &created, &ns],
        )
        .await
        .map_err(pg)?;
        report.apps += 1;
    }
    for (user, recipient, updated) in keys {
        c.execute(
            "INSERT INTO incoming_keys (user_name, recipient, updated) VALUES ($1, $2, $3) \
             ON CONFLICT (user_name) DO UPDATE SET recipient = excluded.recipient",
            &[&user, &recipient, &updated],
        )
        .await
        .map_err(pg)?;
    }
    if version >= 5 {
        // Key backups (schema 5 on): opaque bytes with their ETag, as they are.
        let backups: Vec<(String, Vec<u8>, String, i64)> = src
            .prepare("SELECT user, data, etag, updated FROM key_backups")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .map_err(IndexError::from)?;
        for (user, data, etag, updated) in backups {
            c.execute(
                "INSERT INTO key_backups (user_name, data, etag, updated) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_name) DO UPDATE SET data = excluded.data, etag = excluded.etag",
                &[&user, &data, &etag, &updated],
            )
            .await
            .map_err(pg)?;
        }
    }
    // Blob rows: read in pages by rowid-free key order on the blocking pool.
    let mut after: (String, String, String) = Default::default();
    loop {
        let a = after.clone();
        let path = index_path.clone();
        let page: Vec<SrcRow> = tokio::task::spawn_blocking(move || {
            let c = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let inline = if version >= 7 {
                "(SELECT data FROM inline_payloads i WHERE i.user = b.user \
                 AND i.namespace = b.namespace AND i.id = b.id)"
            } else {
                "NULL"
            };
            let mut s = c.prepare(&format!(
                "SELECT user, namespace, id, size, created, seq, deleted, flags, external, \
                 proof, age_sha256, {inline} FROM blobs b \
                 WHERE (user, namespace, id) > (?1, ?2, ?3) \
                 ORDER BY user, namespace, id LIMIT 500"
            ))?;
            let rows = s
                .query_map([&a.0, &a.1, &a.2], |r| {
                    Ok(SrcRow {
                        user: r.get(0)?,
                        ns: r.get(1)?,
                        id: r.get(2)?,
                        size: r.get(3)?,
                        created: r.get(4)?,
                        seq: r.get(5)?,
                        deleted: r.get(6)?,
                        flags: r.get(7)?,
                        external: r.get(8)?,
                        proof: r.get(9)?,
                        age_sha256: r.get(10)?,
                        inline: r.get(11)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, rusqlite::Error>(rows)
        })
        .await
        .map_err(|e| err(format!("read task failed: {e}")))?
        .map_err(IndexError::from)?;
        let Some(last) = page.last() else { break };
        after = (last.user.clone(), last.ns.clone(), last.id.clone());
        for row in page {
            copy_row(from, &row, &payloads, &c, &mut report).await?;
        }
    }
    Ok(report)
}

async fn copy_row(
    from: &Path,
    row: &SrcRow,
    payloads: &dyn PayloadStore,
    c: &deadpool_postgres::Object,
    report: &mut MigrateReport,
) -> Result<(), ServerError> {
    let there: Option<i64> = c
        .query_opt(
            "SELECT seq FROM blobs WHERE user_name = $1 AND namespace = $2 AND id = $3",
            &[&row.user, &row.ns, &row.id],
        )
        .await
        .map_err(pg)?
        .map(|r| r.get(0));
    if there == Some(row.seq) {
        report.skipped += 1;
        return Ok(());
    }
    let bad = |what: &str| err(format!("{}/{}/{}: {what}", row.user, row.ns, row.id));
    let (ns, id) = (
        blobsync_shared::Namespace::new(row.ns.as_str()).map_err(|_| bad("bad namespace"))?,
        blobsync_shared::BlobId::new(row.id.as_str()).map_err(|_| bad("bad id"))?,
    );
    let mut key: Option<String> = None;
    if !row.deleted {
        let mut f: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match &row.inline {
            Some(data) => Box::new(std::io::Cursor::new(data.clone())),
            None => {
                let path = crate::Layout::new(from).blob_path(&row.user, &ns, &id);
                Box::new(
                    tokio::fs::File::open(&path)
                        .await
                        .map_err(|e| bad(&format!("open {}: {e}", path.display())))?,
                )
            }
        };
        let mut w = payloads.writer(&row.user, &ns, &id);
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| bad(&format!("read: {e}")))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            w.write(&buf[..n])
                .await
                .map_err(|e| bad(&format!("upload: {e}")))?;
        }
        let size = w.len();
        if size != row.size as u64 {
            return Err(bad(&format!(
                "the file has {size} bytes, the index says {}: run fsck on the source first",
                row.size
            )));
        }
        let Staged::Object(k) = w
            .finish(true)
            .await
            .map_err(|e| bad(&format!("upload: {e}")))?
        else {
            return Err(bad("the target payload store is not an object store"));
        };
        // Read back and compare before the row makes it visible.
        let loc = Location {
            user: row.user.clone(),
            ns: ns.clone(),
            id: id.clone(),
            object_key: Some(k.clone()),
            size,
        };
        let mut s = payloads
            .open(&loc, 0, size)
            .await
            .map_err(|e| bad(&format!("read back: {e}")))?;
        let mut back = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got = 0u64;
        while let Some(b) = s.next().await {
            let b = b.map_err(|e| bad(&format!("read back: {e}")))?;
            got += b.len() as u64;
            back.update(&b);
        }
        if got != size || back.finish().as_ref() != hash.finish().as_ref() {
            let _ = payloads.remove_object(&k).await;
            return Err(bad(
                "the copy read back differs from the file (size or SHA-256)",
            ));
        }
        report.copied += 1;
        report.bytes += size;
        key = Some(k);
    } else {
        report.tombstones += 1;
    }
    c.execute(
        "INSERT INTO blobs (user_name, namespace, id, size, created, seq, deleted, flags, \
         external, proof, age_sha256, object_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (user_name, namespace, id) DO UPDATE SET size = excluded.size, \
         created = excluded.created, seq = excluded.seq, deleted = excluded.deleted, \
         flags = excluded.flags, external = excluded.external, proof = excluded.proof, \
         age_sha256 = excluded.age_sha256, object_key = excluded.object_key",
        &[
            &row.user,
            &row.ns,
            &row.id,
            &row.size,
            &row.created,
            &row.seq,
            &row.deleted,
            &row.flags,
            &row.external,
            &row.proof,
            &row.age_sha256,
            &key,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
