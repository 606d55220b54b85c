//! `blobsyncd`: loads the config, opens the store, builds the remote and the engine, binds
//! the control socket, tells systemd it is ready, and runs until SIGTERM/SIGINT (drain
//! in-flight transfers within a bound, exit 0). SIGHUP reloads the config's limits, interval,
//! policies and log level. See ARCHITECTURE.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use blobsync_shared::config::{Config, RemoteUrl, ServerKind};
use blobsync_shared::keyfile::{self, KeyError};
use blobsync_shared::keystore::{KeyStore, KeyStoreError, KeyStoreKind};
use blobsync_shared::paths::DefaultPaths;
use blobsyncd::clock::{Clock, SystemClock};
use blobsyncd::engine::{Engine, EngineSettings};
use blobsyncd::events::EventBus;
use blobsyncd::notify::notify;
use blobsyncd::remote::Remote;
use blobsyncd::remote::dir::DirRemote;
use blobsyncd::remote::http::{HttpRemote, HttpRemoteConfig};
use blobsyncd::remote::soledad::SoledadRemote;
use blobsyncd::retry::TimeScale;
use blobsyncd::store::payload::{self, DataDir};
use blobsyncd::store::{OpenOutcome, Store};
use clap::Parser;
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::{EnvFilter, reload};

/// blobsync daemon: keeps this device's blobs in sync with the blob server.
#[derive(Debug, Parser)]
#[command(name = "blobsyncd", version)]
struct Args {
    /// Config file (TOML). Default: ~/.config/blobsync/config.toml if it exists, else
    /// built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stay in the foreground (the daemon never forks; accepted for service managers).
    #[arg(long)]
    foreground: bool,
    /// Override `data_dir`.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Override `socket` (the control socket).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Override `remote` (`http(s)://host:port` or `file:///path`).
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Override `log` (a RUST_LOG-style filter).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Create a new storage key even though the remote already holds this user's blobs
    /// (they stay unreadable on this device). Without it, a start with no key file and a
    /// remote holding data is refused: import the key of your other devices instead.
    #[arg(long, env = "BLOBSYNCD_NEW_KEY", value_parser = clap::builder::FalseyValueParser::new())]
    new_key: bool,
}

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn init_logging(filter: &str) -> Result<LogHandle> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let env = EnvFilter::try_new(&filter).with_context(|| format!("bad log filter {filter:?}"))?;
    let (layer, handle) = reload::Layer::new(env);
    let tty = std::io::stderr().is_terminal();
    // Under systemd (not a tty) journald adds its own timestamps: plain lines.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .with_target(false);
    if tty {
        tracing_subscriber::registry().with(layer).with(fmt).init();
    } else {
        tracing_subscriber::registry()
            .with(layer)
            .with(fmt.without_time())
            .init();
    }
    Ok(handle)
}

/// Reads the config: `--config` must exist; otherwise the default file if present.
fn load_config(args: &Args, defaults: &DefaultPaths) -> Result<(Config, Option<PathBuf>)> {
    let (mut cfg, source) = match &args.config {
        Some(p) => (Config::load(p, defaults)?, Some(p.clone())),
        None => {
            let p = defaults.config_file();
            if p.exists() {
                (Config::load(&p, defaults)?, Some(p))
            } else {
                (Config::defaults(defaults), None)
            }
        }
    };
    if let Some(d) = &args.data_dir {
        let d = std::path::absolute(d)?;
        if cfg.remote_is_default {
            cfg.remote = RemoteUrl::Dir(d.join("remote"));
        }
        cfg.data_dir = d;
    }
    if let Some(s) = &args.socket {
        cfg.socket = std::path::absolute(s)?;
    }
    if let Some(r) = &args.remote {
        cfg.remote = RemoteUrl::parse(r).map_err(|e| anyhow::anyhow!("--remote: {e}"))?;
        cfg.remote
            .check_transport(cfg.allow_insecure_http)
            .map_err(|e| anyhow::anyhow!("--remote: {e}"))?;
        cfg.remote_is_default = false;
    }
    if let Some(l) = &args.log {
        cfg.log = l.clone();
    }
    Ok((cfg, source))
}

fn main() -> std::process::ExitCode {
    // Everything the daemon creates is the user's alone (trust model, promise 7), whichever
    // module creates it and whatever umask the caller had: files 0600, dirs 0700.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    let args = Args::parse();
    let _ = args.foreground;
    let defaults = match DefaultPaths::discover() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("blobsyncd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (cfg, source) = match load_config(&args, &defaults) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("blobsyncd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log = match init_logging(&cfg.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("blobsyncd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blobsyncd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, defaults, cfg, source, log)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: the log goes to stderr too, so logging it as well printed it twice.
            eprintln!("blobsyncd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    defaults: DefaultPaths,
    cfg: Config,
    source: Option<PathBuf>,
    log: LogHandle,
) -> Result<()> {
    match &source {
        Some(p) => info!(config = %p.display(), "config loaded"),
        None => info!(
            looked_at = %defaults.config_file().display(),
            "no config file: using built-in defaults"
        ),
    }
    if cfg.remote.is_insecure() {
        warn!(
            remote = %cfg.remote,
            "allow_insecure_http = true: the bearer token and all metadata travel in cleartext \
             to this remote; use https:// unless the network path is trusted"
        );
    }
    let data = DataDir::new(&cfg.data_dir);
    data.create()
        .with_context(|| format!("cannot create the data dir {}", cfg.data_dir.display()))?;
    // A walk of the whole tree: off the async workers.
    let d2 = data.clone();
    tokio::task::spawn_blocking(move || secure_data_dir(&d2))
        .await
        .context("the data dir check panicked")??;
    let swept = payload::sweep_temps(&data).unwrap_or(0);
    if swept > 0 {
        info!(swept, "removed temp files left by an earlier crash");
    }
    let events = EventBus::new();
    let (store, outcome) = Store::open(&data.store_file(), cfg.db_ops, events.clone())
        .await
        .with_context(|| format!("cannot open the store {}", data.store_file().display()))?;
    match &outcome {
        OpenOutcome::Created => info!(store = %data.store_file().display(), "created a new store"),
        OpenOutcome::Opened => {}
        OpenOutcome::Rebuilt { moved_to, reason } => error!(
            moved_to = %moved_to.display(), %reason,
            "the store was unusable; rebuilding it from payload files and a full listing"
        ),
    }
    let settings = EngineSettings::from_config(&cfg);
    if settings.time_scale != TimeScale::default() {
        warn!(
            factor = settings.time_scale.factor(),
            "BLOBSYNCD_TIME_SCALE is set: every wait is scaled (test-only)"
        );
    }
    match cfg.remote.clone() {
        RemoteUrl::Dir(path) => {
            if cfg.remote_is_default {
                info!(remote = %path.display(), "no remote configured: using the local folder remote");
            }
            let remote = DirRemote::new(&path, &cfg.user)?;
            let key = load_key(&cfg, &remote, args.new_key).await?;
            serve(
                args, defaults, cfg, source, log, store, outcome, remote, key, data, settings,
                events,
            )
            .await
        }
        RemoteUrl::Http(base) if cfg.server_kind == ServerKind::Soledad => {
            let remote = SoledadRemote::new(HttpRemoteConfig {
                base,
                user: cfg.user.clone(),
                token_file: cfg.token_file.clone(),
                ca_file: cfg.ca_file.clone(),
            })?;
            warn!(
                remote = %remote.describe(),
                "the remote is a Soledad server: tombstones there carry no delete proofs, so its \
                 deleted listing deletes local copies (a weaker guarantee than a blobsync-server's)"
            );
            let key = load_key(&cfg, &remote, args.new_key).await?;
            serve(
                args, defaults, cfg, source, log, store, outcome, remote, key, data, settings,
                events,
            )
            .await
        }
        RemoteUrl::Http(base) => {
            let remote = HttpRemote::new(HttpRemoteConfig {
                base,
                user: cfg.user.clone(),
                token_file: cfg.token_file.clone(),
                ca_file: cfg.ca_file.clone(),
            })?;
            let key = load_key(&cfg, &remote, args.new_key).await?;
            serve(
                args, defaults, cfg, source, log, store, outcome, remote, key, data, settings,
                events,
            )
            .await
        }
    }
}

/// How long the start waits for the remote's namespace list before creating a key.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Loads the storage key from its store (`key_store`, docs/keys.md), or creates one. A key
/// created while the remote already holds this user's blobs could read none of them (the
/// device would download and fail them all), so that start is refused unless `new_key`. A
/// remote that cannot be asked does not block a first start: the engine's wrong-key alarm
/// still stops the downloads. A key that cannot be had (a locked keyring, no credentials
/// directory...) stops the start with what was wrong and how to fix it.
async fn load_key<R: Remote>(
    cfg: &Config,
    remote: &R,
    new_key: bool,
) -> Result<blobsync_shared::StorageKey> {
    let store = KeyStore::new(cfg.key_store, &cfg.key_file, &cfg.user);
    let s2 = store.clone();
    let found = tokio::task::spawn_blocking(move || s2.load())
        .await
        .context("the key store thread failed")?;
    let missing = match found {
        Ok(key) => {
            if store.kind() == KeyStoreKind::File {
                secure_key_dir(&cfg.key_file);
            }
            return Ok(key);
        }
        Err(KeyStoreError::Missing { .. } | KeyStoreError::File(KeyError::Missing { .. }))
            if store.kind() != KeyStoreKind::Credential =>
        {
            true
        }
        Err(e) => return Err(anyhow::anyhow!(e)),
    };
    if missing && !new_key {
        match tokio::time::timeout(KEY_CHECK_TIMEOUT, remote.namespaces()).await {
            Ok(Ok(ns)) if !ns.is_empty() => {
                let names: Vec<&str> = ns.iter().map(|n| n.as_str()).collect();
                anyhow::bail!(
                    "there is no storage key in {}, but the remote {} already holds this \
                     user's blobs (namespaces: {}); a new key could decrypt none of them. \
                     Restore the key from its backup on the server: `blobctl key restore` \
                     (it asks for the passphrase), or copy it from another device (there \
                     `blobctl key export -o key.txt`, here `blobctl key import key.txt`); then \
                     start blobsyncd again. To start over with a new key anyway, start once \
                     with --new-key",
                    store.describe(),
                    remote.describe(),
                    names.join(", ")
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(
                error = %e,
                "cannot ask the remote whether it already holds blobs: creating a new key"
            ),
            Err(_) => warn!(
                timeout = ?KEY_CHECK_TIMEOUT,
                "the remote did not answer whether it already holds blobs: creating a new key"
            ),
        }
    }
    let (key, created) = match &store {
        KeyStore::File(path) => keyfile::load_or_generate(path)
            .with_context(|| format!("storage key {}", path.display()))?,
        _ => {
            let key = blobsync_shared::StorageKey::generate();
            let (s2, k2) = (store.clone(), key.clone());
            tokio::task::spawn_blocking(move || s2.save(&k2))
                .await
                .context("the key store thread failed")??;
            (key, true)
        }
    };
    if store.kind() == KeyStoreKind::File {
        secure_key_dir(&cfg.key_file);
    }
    if created {
        warn!(
            key_store = %store.describe(),
            "created a new storage key; back it up (`blobctl key backup` puts it on the server, wrapped with your passphrase): without it the data cannot be decrypted"
        );
    }
    Ok(key)
}

/// Tightens the data dir to `0700` dirs and `0600` files (each change logged at warn), or
/// refuses to start when another user owns something in it. Runs before the store opens.
fn secure_data_dir(data: &DataDir) -> Result<()> {
    let secured = payload::secure(data).with_context(|| {
        format!(
            "the data dir {} is not private to this user",
            data.root().display()
        )
    })?;
    if secured.tightened > 0 {
        let examples: Vec<String> = secured
            .examples
            .iter()
            .map(|(p, m)| format!("{} was {m:04o}", p.display()))
            .collect();
        warn!(
            data_dir = %data.root().display(),
            tightened = secured.tightened,
            examples = %examples.join(", "),
            "the data dir was readable by other users: tightened to 0700 dirs and 0600 files"
        );
    }
    Ok(())
}

/// Tightens the key file's directory to `0700` when it is ours (the key file itself must
/// already be `0600`: `load_key_file` refuses anything else). Not the home directory: the
/// key is safe in a `0600` file there, and chmodding `~` would surprise. Not a directory of
/// another user's (`/etc/blobsync` owned by root): not ours to change.
fn secure_key_dir(key_file: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(dir) = key_file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    if !ours || mode & 0o077 == 0 || home.as_deref() == Some(dir) {
        return;
    }
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => warn!(
            dir = %dir.display(),
            was = format!("{mode:04o}"),
            "the key file's directory was open to other users: tightened to 0700"
        ),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot tighten the key file's directory")
        }
    }
}

#[allow(clippy::too_many_arguments)] // the startup pieces, passed once
async fn serve<R: Remote>(
    args: Args,
    defaults: DefaultPaths,
    cfg: Config,
    source: Option<PathBuf>,
    log: LogHandle,
    store: Store,
    outcome: OpenOutcome,
    remote: R,
    key: blobsync_shared::StorageKey,
    data: DataDir,
    settings: EngineSettings,
    events: EventBus,
) -> Result<()> {
    let remote_desc = remote.describe();
    let engine = Engine::new(store, remote, SystemClock, key, data, settings, events);
    if matches!(outcome, OpenOutcome::Rebuilt { .. }) {
        engine.set_rebuild_pending();
    }
    let handle = engine.handle();
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // CONTROL HOOK: the control service on the Unix socket.
    let listener = blobsyncd::control::bind(&cfg.socket)
        .with_context(|| format!("control socket {}", cfg.socket.display()))?;
    {
        let (h, c) = (handle.clone(), cancel.child_token());
        let info = blobsyncd::control::DaemonInfo {
            key_store: cfg.key_store.as_str().to_owned(),
            key_file: cfg.key_file.clone(),
            user: cfg.user.clone(),
            config_file: source.clone().unwrap_or_else(|| defaults.config_file()),
        };
        tasks.spawn(async move {
            if let Err(e) = blobsyncd::control::serve(listener, h, c, info).await {
                error!(error = %e, "control service failed");
            }
        });
    }

    // Signals: TERM/INT cancel, HUP reloads. Installed before READY=1: systemd may send
    // `reload` (SIGHUP, whose default action kills) the moment it sees READY.
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let sig_handle = signals.handle();
    let engine_task = tokio::spawn(engine.clone().run(cancel.child_token()));
    info!(
        remote = %remote_desc,
        data_dir = %cfg.data_dir.display(),
        socket = %cfg.socket.display(),
        key_store = %KeyStore::new(cfg.key_store, &cfg.key_file, &cfg.user).describe(),
        "blobsyncd ready"
    );
    let _ = notify("READY=1");
    tasks.spawn(status_lines(handle.clone(), cancel.child_token()));

    while let Some(sig) = signals.next().await {
        match sig {
            SIGHUP => reload(&args, &defaults, &source, &cfg, &engine, &log),
            _ => {
                info!(signal = sig, "shutting down: draining in-flight transfers");
                let _ = notify("STOPPING=1");
                cancel.cancel();
                break;
            }
        }
    }
    sig_handle.close();
    // The engine bounds its own drain (drain_timeout); this outer bound is a backstop.
    if tokio::time::timeout(Duration::from_secs(30), engine_task)
        .await
        .is_err()
    {
        warn!("engine did not stop in time");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    info!("blobsyncd stopped");
    Ok(())
}

fn reload<R: Remote, C: Clock>(
    args: &Args,
    defaults: &DefaultPaths,
    source: &Option<PathBuf>,
    old: &Config,
    engine: &Arc<Engine<R, C>>,
    log: &LogHandle,
) {
    let args = Args {
        config: source.clone().or_else(|| args.config.clone()),
        foreground: args.foreground,
        data_dir: args.data_dir.clone(),
        socket: args.socket.clone(),
        remote: args.remote.clone(),
        log: args.log.clone(),
        new_key: args.new_key,
    };
    let new = match load_config(&args, defaults) {
        Ok((c, _)) => c,
        Err(e) => {
            error!(error = %format!("{e:#}"), "SIGHUP: config not reloaded, keeping the old one");
            return;
        }
    };
    engine.reload(&EngineSettings::from_config(&new));
    if std::env::var("RUST_LOG").is_err() {
        match EnvFilter::try_new(&new.log) {
            Ok(f) => {
                let _ = log.reload(f);
            }
            Err(e) => warn!(error = %e, log = %new.log, "SIGHUP: bad log filter ignored"),
        }
    }
    for (what, changed) in [
        ("remote", new.remote != old.remote),
        ("data_dir", new.data_dir != old.data_dir),
        ("socket", new.socket != old.socket),
        ("key_file", new.key_file != old.key_file),
        ("key_store", new.key_store != old.key_store),
        ("user", new.user != old.user),
    ] {
        if changed {
            warn!(
                key = what,
                "SIGHUP: this setting needs a restart to take effect"
            );
        }
    }
    info!(
        sync_interval = ?new.sync_interval,
        transfers = new.transfers,
        bwlimit_up = new.bwlimit_up,
        bwlimit_down = new.bwlimit_down,
        "config reloaded"
    );
}

/// Keeps systemd's STATUS= line current with the queue counts.
async fn status_lines(handle: blobsyncd::handle::EngineHandle, cancel: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(s) = handle.status().await {
            use blobsyncd::status::Status as S;
            let line = format!(
                "STATUS={} synced, {} to upload, {} to download, {} to delete, {} failed, {} transfers{}{}",
                s.counts[&S::Synced],
                s.counts[&S::PendingUpload],
                s.counts[&S::PendingDownload],
                s.counts[&S::PendingDelete],
                s.counts[&S::FailedDownload] + s.counts[&S::FailedUpload],
                s.transfers.len(),
                if s.paused { ", paused" } else { "" },
                match s.remote.reachable {
                    Some(false) => ", remote unreachable",
                    _ if s.remote.unauthorized => ", remote refuses credentials",
                    _ => "",
                },
            );
            let _ = notify(&line);
        }
    }
}
