//! `blobctl config` (the effective configuration and paths, read as the daemon reads them)
//! and `blobctl doctor` (one report on this device: config, paths, key, daemon, remote,
//! credentials, alarms, failed transfers, each problem with what to do about it).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use blobsync_proto::v1 as pb;
use blobsync_shared::config::{Config, NamespacePolicy};
use blobsync_shared::paths::DefaultPaths;
use serde_json::{Value, json};

use crate::client::{self, CtlError};
use crate::commands::{out, out_json};
use crate::render;

/// The configuration blobctl and the daemon resolve: the file (if any), then defaults.
fn effective() -> Result<(Option<std::path::PathBuf>, Config), CtlError> {
    let defaults = DefaultPaths::discover().map_err(|e| CtlError::Usage(e.to_string()))?;
    let (path, named) = client::config_path().unzip();
    let named = named.unwrap_or(false);
    match path {
        Some(p) if named || p.exists() => {
            let cfg = Config::load(&p, &defaults)
                .map_err(|e| CtlError::Usage(format!("the config file is broken: {e}")))?;
            Ok((Some(p), cfg))
        }
        _ => Ok((None, Config::defaults(&defaults))),
    }
}

/// `blobctl config`.
pub fn config(socket_flag: Option<&Path>, json: bool) -> Result<(), CtlError> {
    let (file, cfg) = effective()?;
    let socket = client::discover_socket(socket_flag)?;
    let policies: serde_json::Map<String, Value> = cfg
        .namespaces
        .iter()
        .map(|(ns, p)| (ns.to_string(), json!(policy_name(*p))))
        .collect();
    let doc = json!({
        "config_file": file.as_ref().map(|p| p.display().to_string()),
        "remote": cfg.remote.to_string(),
        "remote_is_default": cfg.remote_is_default,
        "server_kind": format!("{:?}", cfg.server_kind).to_ascii_lowercase(),
        "user": cfg.user,
        "token_file": cfg.token_file.as_ref().map(|p| p.display().to_string()),
        "key_file": cfg.key_file.display().to_string(),
        "data_dir": cfg.data_dir.display().to_string(),
        "socket": socket.display().to_string(),
        "sync_interval": cfg.sync_interval.as_secs(),
        "transfers": cfg.transfers,
        "db_ops": cfg.db_ops,
        "max_invalid_retries": cfg.max_invalid_retries,
        "full_list_every": cfg.full_list_every,
        "bwlimit_up": cfg.bwlimit_up,
        "bwlimit_down": cfg.bwlimit_down,
        "ca_file": cfg.ca_file.as_ref().map(|p| p.display().to_string()),
        "allow_insecure_http": cfg.allow_insecure_http,
        "mass_delete_guard": cfg.mass_delete_guard,
        "log": cfg.log,
        "namespaces": policies,
    });
    if json {
        return out_json(&doc);
    }
    let mut text = match &file {
        Some(p) => format!("# from {} (unset keys: defaults)\n", p.display()),
        None => "# no config file: every value is a default\n".to_owned(),
    };
    let obj = doc.as_object().expect("an object");
    for (k, v) in obj {
        if k == "config_file" || k == "namespaces" || k == "remote_is_default" {
            continue;
        }
        let v = match v {
            Value::Null => "(none)".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("{k:<20} {v}\n"));
    }
    for (ns, p) in &policies {
        text.push_str(&format!(
            "namespace {ns:<10} {}\n",
            p.as_str().unwrap_or("?")
        ));
    }
    out(&text)
}

fn policy_name(p: NamespacePolicy) -> &'static str {
    match p {
        NamespacePolicy::Eager => "eager",
        NamespacePolicy::Lazy => "lazy",
        NamespacePolicy::Incoming => "incoming",
    }
}

/// One line of the doctor's report.
struct Check {
    what: &'static str,
    level: Level,
    detail: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// `blobctl doctor`: exit 1 when any check fails.
pub async fn doctor(socket_flag: Option<&Path>, json: bool) -> Result<(), CtlError> {
    let mut checks = Vec::new();
    let mut push = |what, level, detail: String| {
        checks.push(Check {
            what,
            level,
            detail,
        })
    };

    let cfg = match effective() {
        Ok((Some(p), cfg)) => {
            push("config", Level::Ok, format!("{} parses", p.display()));
            Some(cfg)
        }
        Ok((None, cfg)) => {
            push("config", Level::Ok, "no config file: defaults".into());
            Some(cfg)
        }
        Err(e) => {
            push("config", Level::Fail, e.to_string());
            None
        }
    };
    if let Some(cfg) = &cfg {
        push(
            "remote (config)",
            Level::Ok,
            if cfg.remote_is_default {
                format!("{} (the embedded default: no server)", cfg.remote)
            } else {
                cfg.remote.to_string()
            },
        );
        let (level, detail) = private_path(&cfg.key_file, 0o077, "key file");
        // No key yet is normal before the first start (blobsyncd makes one when the remote
        // holds none of this user's blobs); a second device must bring the first one's.
        let (level, detail) = if level == Level::Fail && !cfg.key_file.exists() {
            (
                Level::Warn,
                format!(
                    "{detail}. blobsyncd creates one at its first start if the remote holds \
                     none of your blobs; on another device of yours, import that device's key \
                     first (`blobctl key import FILE`)"
                ),
            )
        } else {
            (level, detail)
        };
        push("key", level, detail);
        let (level, detail) = private_path(&cfg.data_dir, 0o077, "data dir");
        let level = if level == Level::Fail && !cfg.data_dir.exists() {
            Level::Warn
        } else {
            level
        };
        push("data dir", level, detail);
        if let Some(t) = &cfg.token_file {
            let (level, detail) = private_path(t, 0o077, "token file");
            push("token", level, detail);
        }
    }

    let socket = client::discover_socket(socket_flag)?;
    match client::connect(&socket).await {
        Err(e) => push("daemon", Level::Fail, e.to_string()),
        Ok(mut c) => match c.status(pb::StatusRequest {}).await {
            Err(e) => push(
                "daemon",
                Level::Fail,
                format!("Status failed: {}", e.message()),
            ),
            Ok(s) => {
                let s = s.into_inner();
                push(
                    "daemon",
                    Level::Ok,
                    format!("blobsyncd {} at {}", s.daemon_version, socket.display()),
                );
                daemon_checks(&s, &mut push);
            }
        },
    }

    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    if json {
        let list: Vec<Value> = checks
            .iter()
            .map(|c| json!({ "check": c.what, "level": c.level.name().to_ascii_lowercase(), "detail": c.detail }))
            .collect();
        out_json(&json!({ "checks": list, "problems": failed }))?;
    } else {
        let mut text = String::new();
        for c in &checks {
            let level = render::paint_level(c.level.name(), c.level == Level::Fail);
            text.push_str(&format!("{level:<5} {:<16} {}\n", c.what, c.detail));
        }
        out(&text)?;
    }
    if failed > 0 {
        return Err(CtlError::Problems(format!(
            "{failed} check{} failed (see above)",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// What the daemon's status says about the remote, alarms and failed transfers.
fn daemon_checks(s: &pb::StatusResponse, push: &mut impl FnMut(&'static str, Level, String)) {
    if let Some(r) = &s.remote {
        if r.unauthorized {
            push(
                "credentials",
                Level::Fail,
                format!(
                    "{}: fix `token_file` or `user` in the config, then restart blobsyncd",
                    r.last_error
                ),
            );
        } else if !r.reachable && !r.last_error.is_empty() {
            push(
                "remote",
                Level::Fail,
                format!(
                    "{} is unreachable: {} (blobs stay queued; check the URL and the network)",
                    r.url, r.last_error
                ),
            );
        } else {
            push(
                "remote",
                Level::Ok,
                format!("{} reachable as {}", r.url, r.user),
            );
        }
    }
    if s.paused {
        push("sync", Level::Warn, "paused (`blobctl resume`)".into());
    }
    for a in &s.alarms {
        let ns = if a.namespace.is_empty() {
            String::new()
        } else {
            format!(" in {}", a.namespace)
        };
        push(
            "alarm",
            Level::Fail,
            format!("{}{ns}: {}", a.kind, a.message),
        );
    }
    let failed: u64 = s
        .counts
        .iter()
        .filter(|c| {
            c.status == pb::BlobStatus::FailedUpload as i32
                || c.status == pb::BlobStatus::FailedDownload as i32
        })
        .map(|c| c.count)
        .sum();
    if failed > 0 {
        push(
            "transfers",
            Level::Warn,
            format!(
                "{failed} failed for good: `blobctl ls --status failed-upload` and \
                 `--status failed-download` say why; `blobctl retry --all-failed` re-queues them"
            ),
        );
    }
    if let Some(c) = &s.last_cycle
        && !c.error.is_empty()
    {
        push("last cycle", Level::Warn, c.error.clone());
    }
}

/// A file or directory only its owner may read: ok, too open (warn), or missing (fail).
fn private_path(p: &Path, forbidden: u32, what: &str) -> (Level, String) {
    match std::fs::metadata(p) {
        Err(e) => (Level::Fail, format!("{what} {}: {e}", p.display())),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & forbidden != 0 {
                (
                    Level::Warn,
                    format!(
                        "{what} {} is mode {mode:o}: others can read it (`chmod go= {}`)",
                        p.display(),
                        p.display()
                    ),
                )
            } else {
                (Level::Ok, format!("{} (mode {mode:o})", p.display()))
            }
        }
    }
}
