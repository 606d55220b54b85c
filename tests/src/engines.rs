//! Real engines for the scale-out backend: a throwaway PostgreSQL cluster ([`Postgres`]) and
//! a one-node Garage ([`Garage`]), each in its own temp dir on loopback ports, stopped by
//! their PIDs on drop.
//!
//! Plain `std` only, so `server/tests` includes this same file (`#[path]`) instead of a copy.
//! Binaries: `BLOBSYNC_PG_BIN` (the directory holding `initdb` and `pg_ctl`; default: the
//! newest `/usr/lib/postgresql/*/bin`) and `BLOBSYNC_GARAGE` (default `/opt/garage/bin/garage`,
//! then `garage` on `PATH`). `.ci/run` installs both. [`available`] says what is missing;
//! with `CI` set a test that needs them fails instead of skipping.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound then released; the engines bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn pg_bin() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("BLOBSYNC_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    v.sort();
    v.pop()
}

fn garage_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BLOBSYNC_GARAGE") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let opt = PathBuf::from("/opt/garage/bin/garage");
    if opt.is_file() {
        return Some(opt);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    })
}

/// None when both engines can be started; else what is missing and how to get it.
pub fn missing() -> Option<String> {
    let mut m = Vec::new();
    if pg_bin().is_none() {
        m.push("PostgreSQL (apt-get install postgresql, or set BLOBSYNC_PG_BIN)");
    }
    if garage_bin().is_none() {
        m.push(
            "Garage (cargo install garage --version 2.5.0 --locked --no-default-features \
             --features bundled-libs,sqlite --root /opt/garage, or set BLOBSYNC_GARAGE; \
             tests/scripts/scaleout-up.sh does both)",
        );
    }
    (!m.is_empty()).then(|| m.join("; "))
}

/// Whether a test that needs the engines can run: true when they are there; false (with a
/// loud message) when they are not and `CI` is unset; a panic when `CI` is set, so CI never
/// passes by skipping.
pub fn available(test: &str) -> bool {
    let Some(why) = missing() else { return true };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI is set but the scale-out engines are missing: {why}");
    }
    eprintln!(
        "\n*** SKIPPING {test}: the scale-out engines are missing: {why}. \
         Run tests/scripts/scaleout-up.sh or install them. ***\n"
    );
    false
}

fn am_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs `cmd` (as user postgres when we are root: initdb refuses root), failing with its
/// output.
fn run_pg(bin: &Path, args: &[&str]) -> Result<String, String> {
    let mut c = if am_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = c
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} failed: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A throwaway PostgreSQL cluster (trust auth on loopback, fsync on). Stopped on drop.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    /// The postmaster's PID (from `postmaster.pid`), killed on drop.
    pub pid: u32,
    /// Its port.
    pub port: u16,
}

impl Postgres {
    /// initdb + start (2-7 s). `dir` must not exist yet.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let bin = pg_bin().ok_or("no PostgreSQL binaries")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if am_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !st.success() {
                return Err("chown of the cluster dir to postgres failed".into());
            }
            // The temp dirs above it must be passable for user postgres.
            let mut p = dir.parent();
            while let Some(d) = p {
                if d == Path::new("/") || d == Path::new("/tmp") {
                    break;
                }
                use std::os::unix::fs::PermissionsExt;
                if let Ok(m) = std::fs::metadata(d) {
                    let mut perm = m.permissions();
                    perm.set_mode(perm.mode() | 0o711);
                    let _ = std::fs::set_permissions(d, perm);
                }
                p = d.parent();
            }
        }
        let data = dir.join("data");
        let d = data.to_str().ok_or("non-UTF-8 temp dir")?;
        run_pg(
            &bin.join("initdb"),
            &["-D", d, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        let port = free_port();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200",
            dir.display()
        );
        let log = dir.join("log");
        run_pg(
            &bin.join("pg_ctl"),
            &[
                "-D",
                d,
                "-w",
                "-l",
                log.to_str().ok_or("non-UTF-8 temp dir")?,
                "-o",
                &opts,
                "start",
            ],
        )?;
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            .ok_or("postgres started but wrote no postmaster.pid")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            bin,
            pid,
            port,
        })
    }

    /// A URL for database `db` (created by [`Postgres::create_db`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database.
    pub fn create_db(&self, db: &str) -> Result<(), String> {
        run_pg(
            &self.bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                db,
            ],
        )
        .map(|_| ())
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let d = self.dir.join("data");
        if let Some(d) = d.to_str() {
            let _ = run_pg(
                &self.bin.join("pg_ctl"),
                &["-D", d, "-m", "immediate", "stop"],
            );
        }
    }
}

/// A one-node Garage (replication factor 1, sqlite metadata) with one bucket and one key.
/// Killed by PID on drop.
pub struct Garage {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Access key id.
    pub key_id: String,
    /// Secret key.
    pub secret: String,
    /// Garage's region name.
    pub region: String,
    config: PathBuf,
    bin: PathBuf,
}

impl Garage {
    /// Starts Garage in `dir`, lays it out and makes bucket `bucket` with a key (1-3 s).
    pub fn start(dir: &Path, bucket: &str) -> Result<Self, String> {
        let bin = garage_bin().ok_or("no garage binary")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (std::process::id() as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8)
                .wrapping_add(rpc as u8);
        }
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{m}\"\ndata_dir = \"{d}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{hex}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                m = dir.join("meta").display(),
                d = dir.join("data").display(),
            ),
        )
        .map_err(|e| format!("write garage config: {e}"))?;
        let log = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start garage: {e}"))?;
        let mut g = Self {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: bucket.to_owned(),
            key_id: String::new(),
            secret: String::new(),
            region: "garage".into(),
            config,
            bin,
        };
        // The node id, once the RPC answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        let node = loop {
            match g.cli(&["node", "id", "-q"]) {
                Ok(out) => break out.trim().split('@').next().unwrap_or("").to_owned(),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("garage did not start: {e}\n{}", g.log()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        // `node id` can answer from the key on disk before the RPC listens: the first
        // command that needs the RPC is retried until it does (seen as "Connection refused"
        // on a busy box).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("{e}\n{}", g.log()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        g.cli(&["layout", "apply", "--version", "1"])?;
        // The layout takes a moment to apply; bucket creation succeeds once it has.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match g.cli(&["bucket", "create", bucket]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let out = g.cli(&["key", "create", "blobsync-test"])?;
        for line in out.lines() {
            let l = line.trim();
            if let Some(v) = l.strip_prefix("Key ID:") {
                g.key_id = v.trim().to_owned();
            } else if let Some(v) = l.strip_prefix("Secret key:") {
                g.secret = v.trim().to_owned();
            }
        }
        if g.key_id.is_empty() || g.secret.is_empty() {
            return Err(format!("cannot read the key from garage's output:\n{out}"));
        }
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            bucket,
            "--key",
            "blobsync-test",
        ])?;
        Ok(g)
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run garage: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "garage {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Garage's log so far.
    pub fn log(&self) -> String {
        let dir = self.config.parent().unwrap_or(Path::new("."));
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    }

    /// The environment a `blobsync-server` needs to use this bucket and `database_url`.
    pub fn server_env(&self, database_url: &str) -> Vec<(String, String)> {
        [
            ("BLOBSYNC_SERVER_BACKEND", "s3+postgres"),
            ("BLOBSYNC_S3_BUCKET", self.bucket.as_str()),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_ACCESS_KEY_ID", self.key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.as_str()),
            ("DATABASE_URL", database_url),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both engines in one temp dir: a cluster with database `blobsync`, and bucket `blobsync`.
pub struct Engines {
    /// PostgreSQL.
    pub pg: Postgres,
    /// Garage.
    pub garage: Garage,
    /// `postgres://…/blobsync`.
    pub database_url: String,
}

impl Engines {
    /// Starts both under `dir`.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let pg = Postgres::start(&dir.join("pg"))?;
        pg.create_db("blobsync")?;
        let garage = Garage::start(&dir.join("garage"), "blobsync")?;
        let database_url = pg.url("blobsync");
        Ok(Self {
            pg,
            garage,
            database_url,
        })
    }

    /// Environment for `blobsync-server` processes.
    pub fn server_env(&self) -> Vec<(String, String)> {
        self.garage.server_env(&self.database_url)
    }
}
