//! The daemon's config file (`config.toml`, see the README's "Configuration reference") and its defaults.
//!
//! [`ConfigFile`] is exactly what the TOML may say (unknown keys are rejected and every field is
//! optional); [`Config::resolve`] fills in the defaults and checks every value, naming the key
//! of anything wrong. This module only parses: it never creates files or directories.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::id::Namespace;
use crate::paths::DefaultPaths;

/// The bounds of `transfers` (concurrent transfers), in the config and in `SetLimits`.
pub const TRANSFERS_MIN: u64 = 1;
/// See [`TRANSFERS_MIN`].
pub const TRANSFERS_MAX: u64 = 64;

/// A config that could not be read or has a bad value; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key or a value of the wrong type (toml's message names the key
    /// and shows the line).
    #[error("config file {path}: {source}")]
    Parse {
        /// The config file (or `<string>`).
        path: PathBuf,
        /// toml's error, which quotes the offending line.
        #[source]
        source: toml::de::Error,
    },
    /// A value of the right type that is not allowed.
    #[error("config file {path}: bad value for `{key}`: {reason}")]
    Invalid {
        /// The config file (or `<string>`).
        path: PathBuf,
        /// The dotted key, e.g. `namespaces.MX.policy`.
        key: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// Download policy of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespacePolicy {
    /// Download every blob the server has (the default).
    #[default]
    Eager,
    /// Keep blobs `REMOTE_ONLY` until a get asks for one.
    Lazy,
    /// An incoming box: besides normal blobs, it takes blobs delivered by a trusted app
    /// (`external`), which are stored as the app sent them. Everywhere else an external blob
    /// is refused. Eager otherwise. `MX` has this policy unless configured.
    Incoming,
}

/// The namespace that is an incoming box unless the config says otherwise (Soledad's mail).
pub const DEFAULT_INCOMING_NAMESPACE: &str = "MX";

/// One `[namespaces.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `eager` (default), `lazy` or `incoming`.
    #[serde(default)]
    pub policy: NamespacePolicy,
}

/// The TOML file as written: every key optional, unknown keys rejected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `http(s)://host:port` or `file:///path`.
    pub remote: Option<String>,
    /// The user name on the server.
    pub user: Option<String>,
    /// File holding the bearer token (one line).
    pub token_file: Option<PathBuf>,
    /// The storage key file.
    pub key_file: Option<PathBuf>,
    /// Where the storage key is kept: `"file"` (default), `"keyring"` or `"credential"`.
    pub key_store: Option<String>,
    /// The daemon's data dir.
    pub data_dir: Option<PathBuf>,
    /// The control socket.
    pub socket: Option<PathBuf>,
    /// Seconds between sync cycles.
    pub sync_interval: Option<u64>,
    /// Concurrent transfers.
    pub transfers: Option<u64>,
    /// Concurrent store operations.
    pub db_ops: Option<u64>,
    /// Download attempts of a blob that fails verification before `FAILED_DOWNLOAD`.
    pub max_invalid_retries: Option<u64>,
    /// A full listing every this many cycles (0 = only when needed).
    pub full_list_every: Option<u64>,
    /// Upload limit in bytes per second, 0 = none.
    pub bwlimit_up: Option<u64>,
    /// Download limit in bytes per second, 0 = none.
    pub bwlimit_down: Option<u64>,
    /// PEM file of extra CA certificates for `https` remotes.
    pub ca_file: Option<PathBuf>,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `blobsyncd=debug`.
    pub log: Option<String>,
    /// Hold mass remote deletions until the user allows them (default true).
    pub mass_delete_guard: Option<bool>,
    /// Allow plain `http://` to a host that is not loopback (the token travels in cleartext).
    pub allow_insecure_http: Option<bool>,
    /// What the `http(s)` remote is: `"blobsync"` (default) or `"soledad"`.
    pub server_kind: Option<String>,
    /// Per-namespace settings.
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

/// What kind of server an `http(s)` remote is (`server_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKind {
    /// A `blobsync-server` (the default).
    #[default]
    Blobsync,
    /// A genuine Soledad server (leap.soledad 0.10): `Token` auth with `user` as the uuid, full
    /// listings every cycle, namespaces from this file only, and its `deleted` listing taken as
    /// deletions without delete proofs (a weaker guarantee).
    Soledad,
}

/// Where the daemon's blobs live remotely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    /// A `blobsync-server`: the base URL without a trailing slash, e.g. `http://127.0.0.1:7070`.
    Http(String),
    /// A local folder in the server's layout.
    Dir(PathBuf),
}

impl RemoteUrl {
    /// Whether the token would travel in cleartext to another machine: plain `http://` to a
    /// host that is not loopback (`127.0.0.0/8`, `::1`, `localhost`).
    pub fn is_insecure(&self) -> bool {
        let Self::Http(url) = self else {
            return false;
        };
        let lower = url.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("http://") else {
            return false; // https
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            hostport.split(':').next().unwrap_or("")
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    }

    /// Refuses a cleartext remote (see [`RemoteUrl::is_insecure`]) unless `allow_insecure`.
    pub fn check_transport(&self, allow_insecure: bool) -> Result<(), String> {
        if self.is_insecure() && !allow_insecure {
            return Err(format!(
                "{self} is plain http to a host that is not loopback: the bearer token would \
                 travel in cleartext. Use https://, or set `allow_insecure_http = true` if the \
                 network path is trusted"
            ));
        }
        Ok(())
    }

    /// Parses `http://`, `https://` or `file:///absolute/path`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{s:?} is not an absolute file URL; write file:///absolute/path"
                ));
            }
            return Ok(Self::Dir(PathBuf::from(rest)));
        }
        let lower = s.to_ascii_lowercase();
        if let Some(rest) = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
        {
            if rest.trim_end_matches('/').is_empty() {
                return Err(format!("{s:?} has no host"));
            }
            return Ok(Self::Http(s.trim_end_matches('/').to_owned()));
        }
        Err(format!(
            "{s:?} is not a remote URL; use http://host:port, https://host or file:///path"
        ))
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(u) => f.write_str(u),
            Self::Dir(p) => write!(f, "file://{}", p.display()),
        }
    }
}

/// The daemon's resolved settings: every default filled in, every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The remote (default: `file://<data_dir>/remote`).
    pub remote: RemoteUrl,
    /// Whether `remote` came from the default rather than the file.
    pub remote_is_default: bool,
    /// The user on the server (default: the login name).
    pub user: String,
    /// Bearer token file (none: no `Authorization` header).
    pub token_file: Option<PathBuf>,
    /// Storage key file (default `<config_dir>/key`).
    pub key_file: PathBuf,
    /// Where the storage key is kept (default: the key file).
    pub key_store: crate::keystore::KeyStoreKind,
    /// Data dir (default: `directories`' data dir).
    pub data_dir: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Time between cycles (default 30 s).
    pub sync_interval: Duration,
    /// Concurrent transfers (default 3).
    pub transfers: usize,
    /// Concurrent store operations (default 10).
    pub db_ops: usize,
    /// Verification failures before `FAILED_DOWNLOAD` (default 3).
    pub max_invalid_retries: u32,
    /// Full listing every N cycles (default 20; 0 = never periodically).
    pub full_list_every: u32,
    /// Upload limit, bytes/s, 0 = none.
    pub bwlimit_up: u64,
    /// Download limit, bytes/s, 0 = none.
    pub bwlimit_down: u64,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Log filter.
    pub log: String,
    /// Plain `http://` to a non-loopback host is allowed (default false).
    pub allow_insecure_http: bool,
    /// What the `http(s)` remote is (default: a `blobsync-server`).
    pub server_kind: ServerKind,
    /// Per-namespace policies; namespaces not listed are eager (`MX`: incoming).
    pub namespaces: BTreeMap<Namespace, NamespacePolicy>,
    /// Hold a cycle's remote deletions when they would remove more than max(100, 25 %) of a
    /// namespace's blobs, until `blobctl sync --allow-mass-delete` (default true).
    pub mass_delete_guard: bool,
}

/// The login name: `$USER`, then `$LOGNAME`, else `user`.
pub fn login_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "user".to_owned())
}

impl Config {
    /// Parses TOML text; `origin` names the file in error messages.
    pub fn parse_file(text: &str, origin: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_path_buf(),
            source,
        })
    }

    /// Reads and resolves `path`.
    pub fn load(path: &Path, defaults: &DefaultPaths) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::resolve(Self::parse_file(&text, path)?, defaults, path)
    }

    /// The configuration with no file at all.
    pub fn defaults(defaults: &DefaultPaths) -> Self {
        // Unwrap: the empty file has no value to be wrong.
        Self::resolve(ConfigFile::default(), defaults, Path::new("<defaults>")).unwrap()
    }

    /// Fills in defaults and checks every value; errors name `origin` and the key.
    pub fn resolve(
        file: ConfigFile,
        defaults: &DefaultPaths,
        origin: &Path,
    ) -> Result<Self, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        let abs = |key: &str, p: Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
            match p {
                Some(p) if p.as_os_str().is_empty() => Err(bad(key, "the path is empty".into())),
                Some(p) if p.is_relative() => Err(bad(
                    key,
                    format!("{} is relative; write an absolute path", p.display()),
                )),
                other => Ok(other),
            }
        };
        let data_dir = abs("data_dir", file.data_dir)?.unwrap_or_else(|| defaults.data_dir.clone());
        let (remote, remote_is_default) = match file.remote {
            Some(r) => (RemoteUrl::parse(&r).map_err(|e| bad("remote", e))?, false),
            None => (RemoteUrl::Dir(data_dir.join("remote")), true),
        };
        let allow_insecure_http = file.allow_insecure_http.unwrap_or(false);
        remote
            .check_transport(allow_insecure_http)
            .map_err(|e| bad("remote", e))?;
        let server_kind = match file.server_kind.as_deref() {
            None | Some("blobsync") => ServerKind::Blobsync,
            Some("soledad") if matches!(remote, RemoteUrl::Http(_)) => ServerKind::Soledad,
            Some("soledad") => {
                return Err(bad(
                    "server_kind",
                    "\"soledad\" needs an http(s) remote: set remote to the Soledad server's \
                     blobs URL, e.g. https://soledad.example.org:2424"
                        .into(),
                ));
            }
            Some(k) => {
                return Err(bad(
                    "server_kind",
                    format!("{k:?} is not known; use \"blobsync\" or \"soledad\""),
                ));
            }
        };
        let user = file.user.unwrap_or_else(login_name);
        if crate::id::Namespace::new(user.as_str()).is_err() {
            return Err(bad(
                "user",
                format!("{user:?}: use 1 to 128 characters of A-Z a-z 0-9 _ -"),
            ));
        }
        let range = |key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
            let v = v.unwrap_or(default);
            if v < min || v > max {
                Err(bad(key, format!("{v} is outside {min}..={max}")))
            } else {
                Ok(v)
            }
        };
        let sync_interval = range("sync_interval", file.sync_interval, 30, 1, 7 * 24 * 3600)?;
        let transfers = range("transfers", file.transfers, 3, TRANSFERS_MIN, TRANSFERS_MAX)?;
        let db_ops = range("db_ops", file.db_ops, 10, 1, 1000)?;
        let max_invalid_retries =
            range("max_invalid_retries", file.max_invalid_retries, 3, 1, 100)?;
        let full_list_every = range("full_list_every", file.full_list_every, 20, 0, 1_000_000)?;
        let log = file.log.unwrap_or_else(|| "info".to_owned());
        if log.trim().is_empty() {
            return Err(bad(
                "log",
                "empty; use e.g. \"info\" or \"blobsyncd=debug\"".into(),
            ));
        }
        let mut namespaces = BTreeMap::new();
        for (name, ns) in file.namespaces {
            let parsed = Namespace::new(name.as_str())
                .map_err(|e| bad(&format!("namespaces.{name}"), e.to_string()))?;
            namespaces.insert(parsed, ns.policy);
        }
        Ok(Self {
            remote,
            remote_is_default,
            user,
            token_file: abs("token_file", file.token_file)?,
            key_file: abs("key_file", file.key_file)?.unwrap_or_else(|| defaults.key_file()),
            key_store: match file.key_store.as_deref() {
                None => Default::default(),
                Some(s) => {
                    crate::keystore::KeyStoreKind::parse(s).map_err(|e| bad("key_store", e))?
                }
            },
            socket: abs("socket", file.socket)?.unwrap_or_else(|| defaults.socket()),
            data_dir,
            sync_interval: Duration::from_secs(sync_interval),
            transfers: transfers as usize,
            db_ops: db_ops as usize,
            max_invalid_retries: max_invalid_retries as u32,
            full_list_every: full_list_every as u32,
            bwlimit_up: file.bwlimit_up.unwrap_or(0),
            bwlimit_down: file.bwlimit_down.unwrap_or(0),
            ca_file: abs("ca_file", file.ca_file)?,
            log,
            allow_insecure_http,
            namespaces,
            mass_delete_guard: file.mass_delete_guard.unwrap_or(true),
            server_kind,
        })
    }

    /// The policy of `ns` (eager unless configured; `MX` incoming unless configured).
    pub fn policy(&self, ns: &Namespace) -> NamespacePolicy {
        policy_of(&self.namespaces, ns)
    }
}

/// The policy of `ns` under the configured `namespaces`: eager unless configured, except
/// [`DEFAULT_INCOMING_NAMESPACE`], which is incoming unless configured.
pub fn policy_of(
    namespaces: &BTreeMap<Namespace, NamespacePolicy>,
    ns: &Namespace,
) -> NamespacePolicy {
    match namespaces.get(ns) {
        Some(p) => *p,
        None if ns.as_str() == DEFAULT_INCOMING_NAMESPACE => NamespacePolicy::Incoming,
        None => NamespacePolicy::Eager,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> DefaultPaths {
        DefaultPaths {
            config_dir: "/home/a/.config/blobsync".into(),
            data_dir: "/home/a/.local/share/blobsync".into(),
            runtime_dir: Some("/run/user/1000/blobsync".into()),
        }
    }

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::resolve(
            Config::parse_file(s, Path::new("c.toml"))?,
            &defaults(),
            Path::new("c.toml"),
        )
    }

    #[test]
    fn empty_config_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.remote,
            RemoteUrl::Dir("/home/a/.local/share/blobsync/remote".into())
        );
        assert!(c.remote_is_default);
        assert_eq!(c.sync_interval, Duration::from_secs(30));
        assert_eq!((c.transfers, c.db_ops, c.max_invalid_retries), (3, 10, 3));
        assert_eq!(c.full_list_every, 20);
        assert_eq!(c.key_file, Path::new("/home/a/.config/blobsync/key"));
        assert_eq!(
            c.socket,
            Path::new("/run/user/1000/blobsync/blobsyncd.sock")
        );
        assert_eq!(c.log, "info");
        assert_eq!(c, Config::defaults(&defaults()));
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"
            remote = "http://127.0.0.1:7070/"
            user = "alice"
            token_file = "/t"
            key_file = "/k"
            data_dir = "/d"
            socket = "/s.sock"
            sync_interval = 5
            transfers = 4
            db_ops = 2
            max_invalid_retries = 5
            full_list_every = 0
            bwlimit_up = 1000
            bwlimit_down = 2000
            ca_file = "/ca.pem"
            log = "debug"
            [namespaces.MX]
            policy = "lazy"
            "#,
        )
        .unwrap();
        assert_eq!(c.remote, RemoteUrl::Http("http://127.0.0.1:7070".into()));
        assert_eq!(c.user, "alice");
        assert_eq!(c.data_dir, Path::new("/d"));
        assert_eq!(c.transfers, 4);
        assert_eq!(c.bwlimit_down, 2000);
        assert_eq!(
            c.policy(&Namespace::new("MX").unwrap()),
            NamespacePolicy::Lazy
        );
        assert_eq!(c.policy(&Namespace::default()), NamespacePolicy::Eager);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = parse("transfer = 3").unwrap_err().to_string();
        assert!(e.contains("transfer") && e.contains("unknown field"), "{e}");
        let e = parse("transfers = 0").unwrap_err().to_string();
        assert!(e.contains("`transfers`"), "{e}");
        let e = parse("sync_interval = \"30s\"").unwrap_err().to_string();
        assert!(e.contains("sync_interval"), "{e}");
        let e = parse("remote = \"ftp://x\"").unwrap_err().to_string();
        assert!(e.contains("`remote`"), "{e}");
        let e = parse("[namespaces.MX]\npolicy = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy"), "{e}");
        let e = parse("[namespaces.\"a b\"]").unwrap_err().to_string();
        assert!(e.contains("namespaces.a b"), "{e}");
        let e = parse("data_dir = \"rel\"").unwrap_err().to_string();
        assert!(e.contains("`data_dir`"), "{e}");
    }

    #[test]
    fn plain_http_to_another_host_needs_the_opt_in() {
        for url in [
            "http://192.168.1.5:7070",
            "http://blobs.example.org",
            "http://user@10.0.0.1:80/",
            "http://[2001:db8::1]:7070",
            "HTTP://Example.org",
        ] {
            let e = parse(&format!("remote = \"{url}\""))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`remote`") && e.contains("cleartext"),
                "{url}: {e}"
            );
            assert!(
                e.contains("https://") && e.contains("allow_insecure_http = true"),
                "{e}"
            );
            let c = parse(&format!("remote = \"{url}\"\nallow_insecure_http = true")).unwrap();
            assert!(c.allow_insecure_http && c.remote.is_insecure(), "{url}");
        }
        for url in [
            "http://127.0.0.1:7070",
            "http://127.9.9.9",
            "http://[::1]:7070/",
            "http://localhost:7070",
            "https://blobs.example.org",
            "file:///srv/blobs",
        ] {
            let c = parse(&format!("remote = \"{url}\"")).unwrap();
            assert!(!c.remote.is_insecure() && !c.allow_insecure_http, "{url}");
        }
        // A name that only starts like loopback is not loopback.
        assert!(parse("remote = \"http://127.0.0.1.evil.org\"").is_err());
        assert!(parse("remote = \"http://localhost.evil.org\"").is_err());
    }

    #[test]
    fn transfers_bounds_are_the_shared_constants() {
        assert!(parse(&format!("transfers = {TRANSFERS_MAX}")).is_ok());
        let e = parse(&format!("transfers = {}", TRANSFERS_MAX + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`transfers`") && e.contains("1..=64"), "{e}");
    }

    #[test]
    fn server_kind_is_checked() {
        assert_eq!(parse("").unwrap().server_kind, ServerKind::Blobsync);
        let c = parse("remote = \"http://127.0.0.1:2424\"\nserver_kind = \"soledad\"").unwrap();
        assert_eq!(c.server_kind, ServerKind::Soledad);
        let e = parse("server_kind = \"soledad\"").unwrap_err().to_string();
        assert!(
            e.contains("`server_kind`") && e.contains("http(s) remote"),
            "{e}"
        );
        let e = parse("server_kind = \"couch\"").unwrap_err().to_string();
        assert!(
            e.contains("`server_kind`") && e.contains("\"soledad\""),
            "{e}"
        );
    }
}
