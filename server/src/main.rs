//! `blobsync-server`: command line of the blob server (serve, user and app tokens, fsck).
//! See the crate docs and ARCHITECTURE.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::io::Write;

use anyhow::{Context, bail};
use blobsync_server::{Index, Layout, ServerConfig, ServerState, TlsFiles, fsck, token};
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
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Check the index against the payload files (server must be stopped).
    Fsck {
        /// Remove temp files and orphan payloads, recount usage.
        #[arg(long)]
        repair: bool,
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
    /// List users with usage.
    List,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let data = match cli.data {
        Some(d) => d,
        None => default_data_dir()?,
    };
    match cli.cmd {
        Cmd::Serve(a) => serve(data, a),
        Cmd::User(c) => {
            if let UserCmd::Add { name, .. } | UserCmd::Remove { name } = &c {
                check_name("user", name)?;
            }
            blobsync_server::ensure_data_dir(&data)?;
            let index = Index::open(&data)
                .with_context(|| format!("open the index in {}", data.display()))?;
            match c {
                UserCmd::Add { name, quota } => {
                    let t = token::generate();
                    index.add_user(&name, &token::hash(&t), quota)?;
                    println!("added user {name}; their token (shown only this once):");
                    println!("{t}");
                }
                UserCmd::List => {
                    println!(
                        "{:<24} {:>10} {:>16} {:>16} {:>10}",
                        "USER", "BLOBS", "USED", "QUOTA", "SEQ"
                    );
                    for u in index.list_users()? {
                        let quota = u
                            .quota_bytes
                            .map_or("default".to_string(), |q| q.to_string());
                        println!(
                            "{:<24} {:>10} {:>16} {:>16} {:>10}",
                            u.name, u.blobs, u.used_bytes, quota, u.seq
                        );
                    }
                }
                UserCmd::Remove { name } => {
                    if !index.remove_user(&name, &Layout::new(&data))? {
                        bail!("no user named {name:?}");
                    }
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
            blobsync_server::ensure_data_dir(&data)?;
            let index = Index::open(&data)
                .with_context(|| format!("open the index in {}", data.display()))?;
            match c {
                AppCmd::Add { name, .. } => {
                    let t = token::generate();
                    index.add_app_with_namespaces(&name, &token::hash(&t), &namespaces)?;
                    let ns: Vec<&str> = namespaces.iter().map(|n| n.as_str()).collect();
                    println!(
                        "added app {name} (may deliver into: {}); its token (shown only this once):",
                        ns.join(", ")
                    );
                    println!("{t}");
                }
                AppCmd::List => {
                    println!("{:<24} NAMESPACES", "APP");
                    for (a, ns) in index.list_apps()? {
                        let ns: Vec<&str> = ns.iter().map(|n| n.as_str()).collect();
                        println!("{a:<24} {}", ns.join(","));
                    }
                }
                AppCmd::Remove { name } => {
                    if !index.remove_app(&name)? {
                        bail!("no app named {name:?}");
                    }
                    println!("removed app {name}");
                }
            }
            Ok(())
        }
        Cmd::PurgeTombstones { older_than_days } => {
            let index = Index::open(&data)
                .with_context(|| format!("open the index in {}", data.display()))?;
            let before = blobsync_server::index::now_secs()
                .saturating_sub(older_than_days.saturating_mul(86_400) as i64);
            let n = index.purge_tombstones(before)?;
            println!("purged {n} tombstones older than {older_than_days} days");
            Ok(())
        }
        Cmd::Instance => {
            blobsync_server::ensure_data_dir(&data)?;
            let index = Index::open(&data)
                .with_context(|| format!("open the index in {}", data.display()))?;
            println!("{}", index.instance_id());
            Ok(())
        }
        Cmd::ImportSoledad { dir } => {
            if !dir.is_dir() {
                anyhow::bail!(
                    "{} is not a directory: give Soledad's blobs_path (it holds one directory \
                     per user uuid)",
                    dir.display()
                );
            }
            blobsync_server::ensure_data_dir(&data)?;
            let index = Index::open(&data)
                .with_context(|| format!("open the index in {}", data.display()))?;
            let layout = blobsync_server::Layout::new(&data);
            let report = blobsync_server::import::import_soledad(&index, &layout, &dir)
                .with_context(|| format!("import of {}", dir.display()))?;
            print!("{}", report.render());
            Ok(())
        }
        Cmd::Fsck { repair } => {
            let report =
                fsck::fsck(&data, repair).with_context(|| format!("fsck of {}", data.display()))?;
            print!("{}", report.render());
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn serve(data: PathBuf, a: ServeArgs) -> anyhow::Result<()> {
    blobsync_server::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cfg = ServerConfig::new(&data);
    cfg.max_blob_size = a.max_blob_size;
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
    let state =
        ServerState::open(cfg).with_context(|| format!("open data dir {}", data.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
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
