//! Which index and payload store a server (or an admin command) runs on: `fs+sqlite` (one
//! node, the data dir; the default) or `s3+postgres` (any number of nodes on one bucket and
//! one database), and where the settings of the latter come from: flags, then the usual
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `DATABASE_URL`, read by clap in `main.rs`), then a TOML config file.
//! Secrets never reach a log line: [`ScaleOut`]'s `Debug` redacts them.

use std::path::Path;
use std::sync::Arc;

use crate::index::{Index, IndexStore, SqliteStore, postgres::PgIndex};
use crate::payload::{FsPayloads, PayloadStore, S3Config, S3Payloads};
use crate::{DirLock, IndexError, Layout, ServerError};

/// The two backend pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Files + SQLite in the data dir.
    #[default]
    FsSqlite,
    /// An S3 bucket + PostgreSQL.
    S3Postgres,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fs+sqlite" | "fs" | "sqlite" => Ok(Kind::FsSqlite),
            "s3+postgres" => Ok(Kind::S3Postgres),
            _ => Err(format!(
                "backend {s:?} is not known: use fs+sqlite (one node, the default) or \
                 s3+postgres (many nodes)"
            )),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::FsSqlite => "fs+sqlite",
            Kind::S3Postgres => "s3+postgres",
        })
    }
}

/// Settings of `s3+postgres`.
#[derive(Clone, Default)]
pub struct ScaleOut {
    /// The bucket.
    pub s3: S3Config,
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub database_url: String,
    /// Connections per node.
    pub pool: usize,
}

impl std::fmt::Debug for ScaleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleOut")
            .field("s3", &self.s3)
            .field(
                "database_url",
                &crate::index::postgres::redact_url(&self.database_url),
            )
            .field("pool", &self.pool)
            .finish()
    }
}

/// What a config file may say (`--backend-config FILE`); unknown keys are refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `fs+sqlite` or `s3+postgres`.
    pub backend: Option<String>,
    /// `[s3]`.
    #[serde(default)]
    pub s3: FileS3,
    /// `[postgres]`.
    #[serde(default)]
    pub postgres: FilePostgres,
}

/// `[s3]` of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileS3 {
    /// Bucket.
    pub bucket: Option<String>,
    /// Endpoint URL.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key (better in the environment or a file only the server reads).
    pub secret_access_key: Option<String>,
}

/// `[postgres]` of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePostgres {
    /// Database URL.
    pub url: Option<String>,
    /// Pool size per node.
    pub pool: Option<usize>,
}

impl FileConfig {
    /// Reads and parses a config file, saying which file and what was wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("read backend config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("backend config {}: {e}", path.display()))
    }
}

/// Settings as they arrive, before the file fills in the gaps: each `Some` wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Given {
    /// `--backend`.
    pub backend: Option<Kind>,
    /// `--s3-bucket`.
    pub bucket: Option<String>,
    /// `--s3-endpoint` / `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// `--s3-region` / `AWS_REGION`.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `--database-url` / `DATABASE_URL`.
    pub database_url: Option<String>,
    /// `--db-pool`.
    pub pool: Option<usize>,
}

impl Given {
    /// Merges with the config file (flags and environment win) and checks that
    /// `s3+postgres` has what it needs, naming what is missing and where to give it.
    pub fn resolve(self, file: Option<FileConfig>) -> Result<(Kind, Option<ScaleOut>), String> {
        let file = file.unwrap_or_default();
        let kind = match (self.backend, &file.backend) {
            (Some(k), _) => k,
            (None, Some(b)) => b.parse()?,
            (None, None) => Kind::FsSqlite,
        };
        if kind == Kind::FsSqlite {
            return Ok((kind, None));
        }
        let need = |v: Option<String>, what: &str, how: &str| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| format!("s3+postgres needs {what}: give {how}"))
        };
        let s3 = S3Config {
            bucket: need(
                self.bucket.or(file.s3.bucket),
                "a bucket",
                "--s3-bucket or bucket in [s3] of the config file",
            )?,
            endpoint: self.endpoint.or(file.s3.endpoint),
            region: self
                .region
                .or(file.s3.region)
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: need(
                self.access_key_id.or(file.s3.access_key_id),
                "an access key id",
                "AWS_ACCESS_KEY_ID or access_key_id in [s3] of the config file",
            )?,
            secret_access_key: need(
                self.secret_access_key.or(file.s3.secret_access_key),
                "a secret access key",
                "AWS_SECRET_ACCESS_KEY or secret_access_key in [s3] of the config file",
            )?,
        };
        let database_url = need(
            self.database_url.or(file.postgres.url),
            "a database",
            "--database-url, DATABASE_URL or url in [postgres] of the config file",
        )?;
        Ok((
            kind,
            Some(ScaleOut {
                s3,
                database_url,
                pool: self
                    .pool
                    .or(file.postgres.pool)
                    .unwrap_or(crate::index::postgres::DEFAULT_POOL),
            }),
        ))
    }
}

/// An opened index and payload store.
pub struct Backends {
    /// The index.
    pub index: Arc<dyn IndexStore>,
    /// The payloads.
    pub payloads: Arc<dyn PayloadStore>,
    /// `fs+sqlite`: the data dir lock.
    pub lock: Option<DirLock>,
}

/// `fs+sqlite` in `data_dir`: takes the lock and opens (creating, migrating) the index.
/// Blocking.
pub fn open_fs_sqlite(data_dir: &Path, inline_max: usize) -> Result<Backends, ServerError> {
    crate::ensure_data_dir(data_dir)?;
    let lock = DirLock::acquire(data_dir)?;
    let layout = Layout::new(data_dir);
    let index = SqliteStore::new(Index::open(data_dir)?, layout.clone());
    Ok(Backends {
        index: Arc::new(index.clone()),
        payloads: Arc::new(FsPayloads::with_inline(layout, index, inline_max)),
        lock: Some(lock),
    })
}

/// `s3+postgres`: connects to both and checks the bucket answers. `instance`: see
/// [`PgIndex::open`].
pub async fn open_s3_postgres(
    cfg: &ScaleOut,
    instance: Option<&str>,
) -> Result<Backends, ServerError> {
    let index = PgIndex::open(&cfg.database_url, cfg.pool, instance).await?;
    let payloads = S3Payloads::connect(&cfg.s3).map_err(IndexError::Payload)?;
    payloads.check().await.map_err(|e| {
        IndexError::Payload(format!(
            "bucket {:?} at {} does not answer: {e}",
            cfg.s3.bucket,
            cfg.s3.endpoint.as_deref().unwrap_or("AWS")
        ))
    })?;
    Ok(Backends {
        index: Arc::new(index),
        payloads: Arc::new(payloads),
        lock: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_gaps_are_named() {
        let file: FileConfig = toml::from_str(
            "backend = \"s3+postgres\"\n[s3]\nbucket = \"b\"\naccess_key_id = \"k\"\n\
             secret_access_key = \"s\"\n[postgres]\nurl = \"postgres://x@h/d\"\n",
        )
        .unwrap();
        let given = Given {
            bucket: Some("flag".into()),
            ..Default::default()
        };
        let (k, so) = given.resolve(Some(file)).unwrap();
        assert_eq!(k, Kind::S3Postgres);
        let so = so.unwrap();
        assert_eq!(so.s3.bucket, "flag");
        assert!(!format!("{so:?}").contains("\"s\""), "secret in Debug");
        let e = Given {
            backend: Some(Kind::S3Postgres),
            ..Default::default()
        }
        .resolve(None)
        .unwrap_err();
        assert!(e.contains("--s3-bucket"), "{e}");
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
