//! `blobsync-server`: command line of the blob server (serve, user and app tokens, fsck).
//! See the crate docs and ARCHITECTURE.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::io::Write;

use std::sync::Arc;

use anyhow::{Context, bail};
use blobsync_server::backend::{self, FileConfig, Given, Kind, ScaleOut};
use blobsync_server::index::SqliteStore;
use blobsync_server::payload::FsPayloads;
use blobsync_server::{
    Index, IndexStore, Layout, PayloadStore, ServerConfig, ServerState, TlsFiles, fsck, token,
};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "blobsync-server", version, about = "blobsync's blob server")]
struct Cli {
    /// Data dir (index and payloads). Default: the platform data dir, e.g.
    /// ~/.local/share/blobsync/server.
    #[arg(
        long,
        visible_alias = "data-dir",
        global = true,
        env = "BLOBSYNC_SERVER_DATA"
    )]
    data: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the index and payloads are (every command). Credentials come only from the
/// environment or the config file, never from flags (a command line is visible in `ps`).
#[derive(clap::Args, Debug)]
struct BackendArgs {
    /// fs+sqlite (one node, in --data; the default) or s3+postgres (many nodes on one bucket
    /// and one database).
    #[arg(long, global = true, env = "BLOBSYNC_SERVER_BACKEND")]
    backend: Option<Kind>,
    /// TOML file with `backend`, `[s3]` (bucket, endpoint, region, access_key_id,
    /// secret_access_key) and `[postgres]` (url, pool); flags and environment win over it.
    #[arg(long, global = true, env = "BLOBSYNC_SERVER_BACKEND_CONFIG")]
    backend_config: Option<PathBuf>,
    /// S3 bucket (s3+postgres).
    #[arg(long, global = true, env = "BLOBSYNC_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// S3 endpoint URL, e.g. http://127.0.0.1:3900 for a local Garage (default: AWS).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    s3_endpoint: Option<String>,
    /// S3 region (Garage's default is "garage").
    #[arg(long, global = true, env = "AWS_REGION")]
    s3_region: Option<String>,
    /// PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DB (s3+postgres).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Database connections per node.
    #[arg(long, global = true)]
    db_pool: Option<usize>,
}

impl BackendArgs {
    /// The backend pair and, for s3+postgres, its settings (flags, environment, file).
    fn resolve(&self) -> anyhow::Result<(Kind, Option<ScaleOut>)> {
        let file = self
            .backend_config
            .as_deref()
            .map(FileConfig::load)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Given {
            backend: self.backend,
            bucket: self.s3_bucket.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: env("AWS_ACCESS_KEY_ID"),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
            database_url: self.database_url.clone(),
            pool: self.db_pool,
        }
        .resolve(file)
        .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the HTTP API until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Manage users (each has one bearer token).
    #[command(subcommand)]
    User(UserCmd),
    /// Manage trusted apps (tokens that may only PUT to /incoming).
    #[command(subcommand)]
    App(AppCmd),
    /// Forget deletions older than DAYS (their tombstones); clients whose `since` cursor is
    /// older then get 410 Gone and do a full listing. Safe while the server runs.
    PurgeTombstones {
        /// Age in days of the tombstones to remove.
        #[arg(long)]
        older_than_days: u64,
    },
    /// Print this server's instance id (the `blobsync-instance` header of every answer; it
    /// stays the same for as long as the index lives).
    Instance,
    /// Import a Soledad server's blobs directory (`{DIR}/{uuid}/{namespace}/...`) for users
    /// that exist here (server must be stopped). Tombstones are not imported; ids already here
    /// are left alone.
    ImportSoledad {
        /// Soledad's `blobs_path`.
        dir: PathBuf,
    },
    /// Check the index against the payloads. fs+sqlite: the server must be stopped;
    /// s3+postgres: safe while nodes serve (young orphans are left, see --min-age-secs).
    Fsck {
        /// Remove temp files and orphan payloads, recount usage.
        #[arg(long)]
        repair: bool,
        /// s3+postgres: objects without an index entry count as orphans only once older than
        /// this (an upload in flight writes its object before its row).
        #[arg(long, default_value_t = 3600)]
        min_age_secs: u64,
    },
    /// Copy a stopped one-node server (fs+sqlite in --from) to s3+postgres (the backend flags,
    /// environment or config file). Resumable, verified (size and SHA-256 of every object),
    /// the source is only read, and the instance id is kept, so devices see no change.
    Migrate {
        /// The one-node server's data dir.
        #[arg(long)]
        from: PathBuf,
        /// Where to: s3+postgres.
        #[arg(long)]
        to: Kind,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed as
    /// `listening on ADDR` on stdout).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest blob accepted, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_blob_size: u64,
    /// fs+sqlite: blobs of at most this many bytes are kept inside the index (one commit for
    /// data and row) instead of as files; 0 keeps every blob a file. At most 65536.
    #[arg(long, default_value_t = blobsync_server::payload::INLINE_MAX as u64,
          value_parser = clap::value_parser!(u64).range(0..=blobsync_server::payload::INLINE_CAP as u64))]
    inline_max: u64,
    /// Quota in bytes of users without their own (default: unlimited).
    #[arg(long)]
    default_quota: Option<u64>,
    /// Most connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections one client address may hold open; further ones are closed at once.
    #[arg(long, default_value_t = 64)]
    max_connections_per_client: usize,
    /// Seconds a client may take to send a request's headers; also how long a kept-alive
    /// connection may sit idle between requests.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// Slowest request body accepted, in bytes per second averaged from its start (after
    /// --body-grace); slower bodies get 408. 0 disables the check.
    #[arg(long, default_value_t = 1024)]
    min_body_rate: u64,
    /// Seconds a request body may send nothing before --min-body-rate applies.
    #[arg(long, default_value_t = 30)]
    body_grace: u64,
    /// Bad tokens one address may send per minute before it gets 429 for a minute
    /// (0: no throttling).
    #[arg(long, default_value_t = 20)]
    auth_fail_limit: u32,
    /// Address of the Prometheus endpoint (GET /metrics, no token); `none` turns it off.
    /// Never served on --listen. The default is loopback; if its port is taken the server
    /// runs without metrics and says so.
    #[arg(long, default_value = DEFAULT_METRICS)]
    metrics_listen: String,
    /// Largest listing page and most ids per /stream request.
    #[arg(long, default_value_t = 100_000)]
    max_page: u64,
    /// Bound on a request's headers, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Seconds shutdown waits for in-flight requests.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Days a tombstone (the record of a delete) is kept before it is purged automatically;
    /// 0 keeps them forever. Devices offline for longer must do a full listing when they return.
    #[arg(long, default_value_t = 180.0, value_parser = parse_days)]
    tombstone_days: f64,
}

/// Loopback, next to the API's default port.
const DEFAULT_METRICS: &str = "127.0.0.1:7071";

fn parse_days(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.0..=36_500.0).contains(&d) => Ok(d),
        _ => Err(format!(
            "{s:?} is not a number of days from 0 to 36500 (e.g. 90 or 0.5; 0 keeps tombstones)"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user and print their token (once, alone on the last line).
    Add {
        /// User name: 1 to 128 characters of A-Z a-z 0-9 _ -.
        name: String,
        /// Quota in bytes (default: the server's --default-quota).
        #[arg(long)]
        quota: Option<u64>,
    },
    /// List users with usage (sizes in KiB/MiB/GiB; --bytes for exact byte counts).
    List {
        /// Exact byte counts, for scripts.
        #[arg(long)]
        bytes: bool,
    },
    /// Remove a user, their token, index entries and payloads.
    Remove {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum AppCmd {
    /// Add a trusted app and print its token (once, alone on the last line).
    Add {
        /// App name: 1 to 128 characters of A-Z a-z 0-9 _ -.
        name: String,
        /// A namespace the app may deliver into (repeat for several). Default: MX.
        #[arg(long = "namespace", value_name = "NS")]
        namespaces: Vec<String>,
    },
    /// List apps.
    List,
    /// Remove an app and its token.
    Remove {
        /// App name.
        name: String,
    },
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "blobsync")
        .context("cannot find a home directory for the default data dir; pass --data DIR")?;
    Ok(dirs.data_dir().join("server"))
}

/// Every admin command validates names first (the rule of ids and namespaces): a user name
/// becomes a directory, so `""`, `..` or an absolute path must be refused before anything.
fn check_name(kind: &str, name: &str) -> anyhow::Result<()> {
    if blobsync_shared::Namespace::new(name).is_err() {
        bail!("{kind} name {name:?} is invalid: use 1 to 128 characters of A-Z a-z 0-9 _ -");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with its causes (`a: b: c`), as the other tools print errors; not
            // anyhow's "Error: ... Caused by:" block.
            eprintln!("blobsync-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // The ring provider for TLS to an object store (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let data = match cli.data {
        Some(d) => d,
        None => default_data_dir()?,
    };
    let mut backend = cli.backend;
    if let Cmd::Migrate { to, .. } = &cli.cmd {
        // The target's settings are the backend settings.
        backend.backend = Some(*to);
    }
    let (kind, scale) = backend.resolve()?;
    if let Cmd::Serve(a) = cli.cmd {
        return serve(data, kind, scale, a);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(admin(data, kind, scale, cli.cmd))
}

/// Opens the index and payloads for an admin command. fs+sqlite takes no data dir lock (a
/// running server and `user add` share the SQLite file safely).
async fn open_admin(
    data: &std::path::Path,
    kind: Kind,
    scale: Option<&ScaleOut>,
) -> anyhow::Result<(Arc<dyn IndexStore>, Arc<dyn PayloadStore>)> {
    match (kind, scale) {
        (Kind::S3Postgres, Some(s)) => {
            let b = backend::open_s3_postgres(s, None)
                .await
                .context("open the s3+postgres backend")?;
            Ok((b.index, b.payloads))
        }
        _ => {
            blobsync_server::ensure_data_dir(data)?;
            let d = data.to_path_buf();
            let index = tokio::task::spawn_blocking(move || Index::open(&d))
                .await?
                .with_context(|| format!("open the index in {}", data.display()))?;
            let layout = Layout::new(data);
            let index = SqliteStore::new(index, layout.clone());
            Ok((
                Arc::new(index.clone()),
                Arc::new(FsPayloads::with_inline(layout, index, 0)),
            ))
        }
    }
}

async fn admin(data: PathBuf, kind: Kind, scale: Option<ScaleOut>, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve(_) => unreachable!("handled in main"),
        Cmd::User(c) => {
            if let UserCmd::Add { name, .. } | UserCmd::Remove { name } = &c {
                check_name("user", name)?;
            }
            let (index, payloads) = open_admin(&data, kind, scale.as_ref()).await?;
            match c {
                UserCmd::Add { name, quota } => {
                    if index.list_users().await?.iter().any(|u| u.name == name) {
                        bail!(
                            "user {name:?} already exists; nothing was changed (their token \
                             stays valid). To start over: `user remove {name}` (deletes their \
                             blobs too), then `user add {name}`"
                        );
                    }
                    let t = token::generate();
                    index.add_user(&name, &token::hash(&t), quota).await?;
                    println!("added user {name}; their token (shown only this once):");
                    println!("{t}");
                }
                UserCmd::List { bytes } => {
                    let size = |n: u64| {
                        if bytes {
                            n.to_string()
                        } else {
                            blobsync_shared::units::human_size(n)
                        }
                    };
                    println!(
                        "{:<24} {:>10} {:>16} {:>16} {:>10}",
                        "USER", "BLOBS", "USED", "QUOTA", "SEQ"
                    );
                    for u in index.list_users().await? {
                        let quota = u.quota_bytes.map_or("default".to_string(), size);
                        println!(
                            "{:<24} {:>10} {:>16} {:>16} {:>10}",
                            u.name,
                            u.blobs,
                            size(u.used_bytes),
                            quota,
                            u.seq
                        );
                    }
                }
                UserCmd::Remove { name } => {
                    if !index.remove_user(&name).await? {
                        bail!("no user named {name:?}");
                    }
                    payloads
                        .remove_user(&name)
                        .await
                        .with_context(|| format!("remove the payloads of {name}"))?;
                    println!("removed user {name}, their token and their blobs");
                }
            }
            Ok(())
        }
        Cmd::App(c) => {
            let mut namespaces = Vec::new();
            match &c {
                AppCmd::Add {
                    name,
                    namespaces: ns,
                } => {
                    check_name("app", name)?;
                    for n in ns {
                        namespaces.push(blobsync_shared::Namespace::new(n).map_err(|_| {
                            anyhow::anyhow!(
                                "namespace {n:?} is invalid: use 1 to 128 characters of \
                                 A-Z a-z 0-9 _ -"
                            )
                        })?);
                    }
                    if namespaces.is_empty() {
                        namespaces.push(blobsync_shared::Namespace::new("MX")?);
                    }
                }
                AppCmd::Remove { name } => check_name("app", name)?,
                AppCmd::List => {}
            }
            let (index, _) = open_admin(&data, kind, scale.as_ref()).await?;
            match c {
                AppCmd::Add { name, .. } => {
                    let t = token::generate();
                    index.add_app(&name, &token::hash(&t), &namespaces).await?;
                    let ns: Vec<&str> = namespaces.iter().map(|n| n.as_str()).collect();
                    println!(
                        "added app {name} (may deliver into: {}); its token (shown only this once):",
                        ns.join(", ")
                    );
                    println!("{t}");
                }
                AppCmd::List => {
                    println!("{:<24} NAMESPACES", "APP");
                    for (a, ns) in index.list_apps().await? {
                        let ns: Vec<&str> = ns.iter().map(|n| n.as_str()).collect();
                        println!("{a:<24} {}", ns.join(","));
                    }
                }
                AppCmd::Remove { name } => {
                    if !index.remove_app(&name).await? {
                        bail!("no app named {name:?}");
                    }
                    println!("removed app {name}");
                }
            }
            Ok(())
        }
        Cmd::PurgeTombstones { older_than_days } => {
            let (index, _) = open_admin(&data, kind, scale.as_ref()).await?;
            let before = blobsync_server::index::now_secs()
                .saturating_sub(older_than_days.saturating_mul(86_400) as i64);
            let n = index.purge_tombstones(before).await?;
            println!("purged {n} tombstones older than {older_than_days} days");
            Ok(())
        }
        Cmd::Instance => {
            let (index, _) = open_admin(&data, kind, scale.as_ref()).await?;
            println!("{}", index.instance_id());
            Ok(())
        }
        Cmd::ImportSoledad { dir } => {
            if kind != Kind::FsSqlite {
                bail!(
                    "import-soledad writes a fs+sqlite data dir: import into one, then copy it \
                     with blobsync-server migrate --from DIR --to s3+postgres"
                );
            }
            if !dir.is_dir() {
                anyhow::bail!(
                    "{} is not a directory: give Soledad's blobs_path (it holds one directory \
                     per user uuid)",
                    dir.display()
                );
            }
            tokio::task::spawn_blocking(move || {
                blobsync_server::ensure_data_dir(&data)?;
                let index = Index::open(&data)
                    .with_context(|| format!("open the index in {}", data.display()))?;
                let layout = blobsync_server::Layout::new(&data);
                let report = blobsync_server::import::import_soledad(&index, &layout, &dir)
                    .with_context(|| format!("import of {}", dir.display()))?;
                print!("{}", report.render());
                Ok(())
            })
            .await?
        }
        Cmd::Fsck {
            repair,
            min_age_secs,
        } => {
            let report = match (kind, scale.as_ref()) {
                (Kind::S3Postgres, Some(_)) => {
                    let (index, payloads) = open_admin(&data, kind, scale.as_ref()).await?;
                    fsck::check(index.as_ref(), payloads.as_ref(), repair, min_age_secs).await?
                }
                _ => {
                    let d = data.clone();
                    tokio::task::spawn_blocking(move || fsck::fsck(&d, repair))
                        .await?
                        .with_context(|| format!("fsck of {}", data.display()))?
                }
            };
            print!("{}", report.render());
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Migrate { from, to } => {
            let Some(scale) = scale.filter(|_| to == Kind::S3Postgres) else {
                bail!(
                    "migrate copies to s3+postgres: pass --to s3+postgres and its settings \
                     (--s3-bucket, --database-url or DATABASE_URL, AWS_ACCESS_KEY_ID, \
                     AWS_SECRET_ACCESS_KEY, or --backend-config FILE)"
                );
            };
            let report = blobsync_server::migrate::migrate(&from, &scale)
                .await
                .with_context(|| format!("migrate {}", from.display()))?;
            print!("{}", report.render());
            Ok(())
        }
    }
}

fn serve(data: PathBuf, kind: Kind, scale: Option<ScaleOut>, a: ServeArgs) -> anyhow::Result<()> {
    blobsync_server::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cfg = ServerConfig::new(&data);
    cfg.max_blob_size = a.max_blob_size;
    cfg.inline_max = a.inline_max as usize;
    cfg.default_quota = a.default_quota;
    cfg.max_connections = a.max_connections;
    cfg.max_connections_per_client = a.max_connections_per_client.max(1);
    cfg.header_timeout = Duration::from_secs(a.header_timeout.max(1));
    cfg.min_body_rate = a.min_body_rate;
    cfg.body_grace = Duration::from_secs(a.body_grace);
    cfg.auth_fail_limit = a.auth_fail_limit;
    let metrics_addr: Option<SocketAddr> = match a.metrics_listen.as_str() {
        "none" | "off" => None,
        v => Some(v.parse().map_err(|_| {
            anyhow::anyhow!("--metrics-listen {v:?} is not an address like 127.0.0.1:7071 or none")
        })?),
    };
    cfg.max_page = a.max_page;
    cfg.max_header_bytes = a.max_header_bytes;
    cfg.shutdown_grace = Duration::from_secs(a.shutdown_grace);
    cfg.tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    if let Some(s) = &scale {
        tracing::info!(settings = ?s, "backend s3+postgres");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let state = match (kind, scale) {
        (Kind::S3Postgres, Some(s)) => {
            let b = rt
                .block_on(backend::open_s3_postgres(&s, None))
                .context("open the s3+postgres backend")?;
            ServerState::with_backends(cfg, b)?
        }
        _ => ServerState::open(cfg).with_context(|| format!("open data dir {}", data.display()))?,
    };
    let backend_name = kind.to_string();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listen on {}", a.listen))?;
        let addr = listener.local_addr().context("read the bound address")?;
        // Parseable by tests and scripts: the one line on stdout.
        println!("listening on {addr}");
        tracing::info!(
            %addr,
            %scheme,
            data = %data.display(),
            backend = %backend_name,
            instance = state.instance_id(),
            "serving"
        );
        let cancel = CancellationToken::new();
        if let Some(m) = metrics_addr {
            match tokio::net::TcpListener::bind(m).await {
                Ok(l) => {
                    let bound = l.local_addr().context("read the metrics address")?;
                    if !bound.ip().is_loopback() {
                        tracing::warn!(%bound, "metrics are reachable beyond this host");
                    }
                    // Second stdout line, after the API address that scripts parse first;
                    // stdout may be closed by then (a script read its one line), so no panic.
                    let _ = writeln!(std::io::stdout(), "metrics on http://{bound}/metrics");
                    tracing::info!(%bound, "metrics endpoint ready");
                    tokio::spawn(blobsync_server::run_metrics(
                        l,
                        state.clone(),
                        cancel.clone(),
                    ));
                }
                // The default port is a courtesy: another server on this host may hold it.
                Err(e) if a.metrics_listen == DEFAULT_METRICS => tracing::warn!(
                    error = %e,
                    // No "listen" in this line: test harnesses look for the API address by it.
                    "cannot bind the default metrics address {DEFAULT_METRICS}; running without \
                     metrics (give the metrics flag another address, or none)"
                ),
                Err(e) => return Err(e).with_context(|| format!("bind metrics address {m}")),
            }
        }
        let signals = tokio::spawn(wait_for_signal(cancel.clone()));
        if a.tombstone_days > 0.0 {
            let ttl = Duration::from_secs_f64(a.tombstone_days * 86_400.0);
            tokio::spawn(blobsync_server::purge_tombstones_periodically(
                state.clone(),
                ttl,
                cancel.clone(),
            ));
        }
        blobsync_server::run(listener, state, cancel.clone())
            .await
            .context("serve")?;
        signals.abort();
        tracing::info!("shut down");
        Ok(())
    })
}

/// `RUST_LOG`, else `info`; tokio-postgres at debug prints every statement's parameters
/// (token hashes, key backups), so it stays at info unless `RUST_LOG` names it.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut f = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !spec.contains("tokio_postgres")
        && let Ok(d) = "tokio_postgres=info".parse()
    {
        f = f.add_directive(d);
    }
    f
}

/// Turns the first SIGTERM or SIGINT into a cancel.
async fn wait_for_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    cancel.cancel();
}
