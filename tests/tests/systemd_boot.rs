//! Boots a real systemd (Debian 12's, v252) as PID 1 of a `systemd-nspawn` container and
//! installs the units of `systemd/` as an administrator would: command by command from the code
//! blocks of README.md's "Installing the units", run as an admin user with sudo rights (only the
//! binary paths are substituted, and `sudoedit` becomes a scripted edit). Then it drives them:
//! `enable --now` is active and `blobctl status` answers at once; a blob put through the system
//! daemon reaches the server unit (SYNCED); reload applies a changed config, and a broken one is
//! refused while the daemon keeps running; stop in the middle of an upload exits 0; kill -9 is
//! restarted; the sandbox is really applied (`/proc/PID/status`: CapEff 0, NoNewPrivs,
//! seccomp; a mount namespace of its own) for all three units; and the per-user unit runs with
//! lingering, with its file-system sandbox in a user namespace of its own.
//!
//! Needs root, `systemd-nspawn` and the Debian 12 rootfs that `tests/systemd-rootfs.sh` caches
//! (in `/var/cache/blobsync-ci/bookworm`, or `$BLOBSYNC_SYSTEMD_ROOTFS`). Where they are missing
//! or nspawn cannot boot it prints `SKIP: <why>` and passes, except with `CI` set and
//! `BLOBSYNC_SYSTEMD_ROOTFS` set (`.ci/run` sets it after preparing the rootfs): then it fails.
//!
//! The host needs no systemd: nspawn runs with `--register=no --keep-unit`, in a private mount
//! namespace with a tmpfs on `/run/systemd` (nspawn keeps its state there), and commands enter
//! the container with `nsenter`. `--volatile=overlay` keeps every write in a tmpfs, so the
//! cached rootfs is never changed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `tests/systemd-rootfs.sh` puts the rootfs unless told otherwise.
const DEFAULT_ROOTFS: &str = "/var/cache/blobsync-ci/bookworm";
/// Set by `.ci/run` once it has prepared the rootfs: with `CI`, a skip becomes a failure.
const ROOTFS_ENV: &str = "BLOBSYNC_SYSTEMD_ROOTFS";
/// The file `tests/systemd-rootfs.sh` writes last: its presence means a whole rootfs.
const ROOTFS_MARKER: &str = ".blobsync-ci";
/// Bound for each awaited event (boot, a unit becoming active, a blob syncing). Generous: CI
/// runs on 2 cores beside other tests; every wait ends as soon as the event happens.
const DEADLINE: Duration = Duration::from_secs(60);
/// The admin who installs everything (with sudo rights), the per-user unit's user, and the
/// server's user.
const ADMIN: &str = "alice";
/// Where the README's commands run inside the container: `systemd/` is bound here read-only,
/// the built binaries under `target/debug/`.
const SRC: &str = "/src";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The system daemon's control socket, as the unit's config example sets it.
const SYSTEM_SOCKET: &str = "/run/blobsync/blobsyncd.sock";

fn workspace_root() -> PathBuf {
    blobsync_tests::bins::workspace_root()
}

fn built(name: &str) -> PathBuf {
    blobsync_tests::bins::bin_path(name).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------
// The README's install steps

/// The shell commands of the code block after the paragraph starting `**{title}` in README.md's
/// "Installing the units", one per line (backslash continuations joined).
fn readme_block(title: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split_once("\n## Installing the units\n")
        .expect("README.md has no \"## Installing the units\" section")
        .1;
    let section = section.split("\n## ").next().unwrap();
    let after = section
        .split_once(&format!("\n**{title}"))
        .unwrap_or_else(|| panic!("README.md's \"Installing the units\" has no **{title}"))
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("no ```sh block after **{title} in README.md"))
        .0;
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// What the test runs for a README command: the same line with the built binaries' path, or
/// `None` for the build step (the test's binaries are already built).
fn adapt(command: &str) -> Option<String> {
    if command.starts_with("cargo ") {
        return None;
    }
    Some(command.replace("target/release/", "target/debug/"))
}

// ---------------------------------------------------------------------------------------
// The container

/// A booted container: `unshare -m` + `systemd-nspawn --boot`, and its PID 1 as the host sees it.
struct Container {
    nspawn: Child,
    leader: u32,
    console: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Why the test cannot run here; a skip, or a failure where it must run.
fn cannot_run(why: &str) {
    let must = std::env::var_os("CI").is_some() && std::env::var_os(ROOTFS_ENV).is_some();
    if must {
        panic!(
            "CI is set and .ci/run prepared the rootfs (${ROOTFS_ENV}), so this test must run, \
             but: {why}"
        );
    }
    eprintln!("\n======== SKIP: {why} ========\n");
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Pid of the process whose parent is `parent` and whose command is `comm`, if any.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|(_, n)| n);
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if name == Some(comm) && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

impl Container {
    /// Boots the rootfs with the built binaries and `systemd/` bound in, and waits until
    /// systemd reports the boot finished. `Err` says why it cannot (the caller skips or fails).
    fn boot(rootfs: &Path) -> Result<Container, String> {
        let tmp = tempfile::tempdir().unwrap();
        let console = tmp.path().join("console.log");
        let log = std::fs::File::create(&console).unwrap();
        let mut args: Vec<String> = [
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--volatile=overlay",
            "--console=read-only",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--directory={}", rootfs.display()));
        for bin in ["blobsyncd", "blobctl", "blobsync-server"] {
            args.push(format!(
                "--bind-ro={}:{SRC}/target/debug/{bin}",
                built(bin).display()
            ));
        }
        args.push(format!(
            "--bind-ro={}:{SRC}/systemd",
            workspace_root().join("systemd").display()
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(
                "mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 tmpfs /run/systemd \
                 && exec systemd-nspawn \"$@\"",
            )
            .arg("sh")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; a container must not outlive a killed test.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut nspawn = cmd
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
        let start = Instant::now();
        // unshare and sh exec nspawn, so the container's PID 1 is a child of our child.
        let leader = loop {
            if let Some(status) = nspawn.try_wait().unwrap() {
                return Err(format!(
                    "systemd-nspawn exited ({status}) before booting; its output:\n{}",
                    console_text()
                ));
            }
            if let Some(pid) = child_named(nspawn.id(), "systemd") {
                break pid;
            }
            if start.elapsed() > DEADLINE {
                let _ = nspawn.kill();
                let _ = nspawn.wait();
                return Err(format!(
                    "no systemd in the container after {DEADLINE:?}; nspawn's output:\n{}",
                    console_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let container = Container {
            nspawn,
            leader,
            console,
            _tmp: tmp,
        };
        // `is-system-running` says "starting" until the boot's jobs are done.
        let state = loop {
            let out = container.run(None, "systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break state;
            }
            if start.elapsed() > DEADLINE {
                return Err(format!(
                    "systemd in the container is still {state:?} after {DEADLINE:?}; console:\n{}",
                    std::fs::read_to_string(&container.console).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("container booted ({state}) in {:?}", start.elapsed());
        if state == "degraded" {
            eprintln!("{}", container.ok(None, "systemctl --failed --no-legend"));
        }
        Ok(container)
    }

    /// `sh -c script` in the container, in `/src`, as root or as `user` (through runuser,
    /// with the environment of that user's login: HOME, XDG_RUNTIME_DIR for `systemctl --user`).
    fn run(&self, user: Option<&str>, script: &str) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"]);
        let script = format!("cd {SRC} && {script}");
        match user {
            None => {
                cmd.args([
                    "env",
                    "-i",
                    &format!("PATH={PATH}"),
                    "HOME=/root",
                    "USER=root",
                ]);
                cmd.args(["/bin/sh", "-c", &script]);
            }
            Some(user) => {
                cmd.args(["runuser", "-u", user, "--", "/bin/sh", "-c"])
                    .arg(format!(
                        "export PATH={PATH} HOME=/home/{user} USER={user} LOGNAME={user} \
                     XDG_RUNTIME_DIR=/run/user/$(id -u); {script}"
                    ));
            }
        }
        cmd.env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// Like [`Container::run`], and panics (with the container's journal) unless it succeeds;
    /// returns stdout.
    fn ok(&self, user: Option<&str>, script: &str) -> String {
        let out = self.run(user, script);
        if !out.status.success() {
            panic!(
                "`{script}` as {} failed ({}):\nstdout: {}\nstderr: {}",
                user.unwrap_or("root"),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Trimmed stdout of a command as root.
    fn value(&self, script: &str) -> String {
        self.ok(None, script).trim().to_owned()
    }

    /// Polls `probe` until it returns `Some`, for at most [`DEADLINE`].
    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `systemctl show` property of a system unit.
    fn property(&self, unit: &str, property: &str) -> String {
        self.value(&format!("systemctl show -p {property} --value {unit}"))
    }

    /// The main pid of a running system unit.
    fn main_pid(&self, unit: &str) -> u32 {
        let pid: u32 = self.property(unit, "MainPID").parse().unwrap();
        assert_ne!(pid, 0, "{unit} has no main process");
        pid
    }

    /// `blobctl --json ARGS` against the system daemon, run as its user.
    fn system_ctl_json(&self, args: &str) -> Option<serde_json::Value> {
        let out = self.run(
            None,
            &format!("runuser -u blobsync -- blobctl --socket {SYSTEM_SOCKET} {args} --json"),
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn system_blob_status(&self, id: &str) -> Option<String> {
        let ls = self.system_ctl_json("ls")?;
        ls["blobs"]
            .as_array()?
            .iter()
            .find(|b| b["id"] == id)
            .and_then(|b| b["status"].as_str().map(str::to_owned))
    }

    fn system_limit(&self, key: &str) -> Option<u64> {
        self.system_ctl_json("limits")?[key].as_u64()
    }

    /// Checks the sandbox systemd put `pid` in: no capabilities, no_new_privs, a seccomp filter,
    /// and a mount namespace other than `outside`'s (PID 1, or the user manager).
    fn assert_sandboxed(&self, what: &str, pid: u32, outside: u32) {
        let status = self.ok(None, &format!("cat /proc/{pid}/status"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{what}: no {name} in /proc/{pid}/status"))
                .to_owned()
        };
        assert_eq!(field("CapEff"), "0000000000000000", "{what}: capabilities");
        assert_eq!(field("NoNewPrivs"), "1", "{what}: NoNewPrivileges=");
        assert_eq!(
            field("Seccomp"),
            "2",
            "{what}: SystemCallFilter= (2 = filter mode)"
        );
        let mnt = |p: u32| self.value(&format!("readlink /proc/{p}/ns/mnt"));
        assert_ne!(
            mnt(pid),
            mnt(outside),
            "{what}: shares the mount namespace of pid {outside}, so ProtectSystem=, \
             ProtectHome=, PrivateTmp= and ReadWritePaths= are not applied"
        );
    }

    fn journal(&self, args: &str) -> String {
        let out = self.run(None, &format!("journalctl --no-pager {args}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- the container's journal (last 150 lines) ----\n{}",
                self.journal("-n 150")
            );
        }
        // Killing PID 1 ends the container (its whole pid namespace); nspawn then exits and
        // the private mount namespace with the overlay's tmpfs goes with it.
        // SAFETY: kill(2) with plain integers; the pid is the container's init we started.
        unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGKILL) };
        let start = Instant::now();
        while self.nspawn.try_wait().ok().flatten().is_none() && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The container, or `None` after printing why it cannot boot here.
fn boot_or_skip() -> Option<Container> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cannot_run("not root: systemd-nspawn needs root");
        return None;
    }
    for tool in ["systemd-nspawn", "unshare", "nsenter"] {
        if find_tool(tool).is_none() {
            cannot_run(&format!(
                "`{tool}` not found (apt-get install systemd-container util-linux)"
            ));
            return None;
        }
    }
    let rootfs = std::env::var_os(ROOTFS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS));
    if !rootfs.join(ROOTFS_MARKER).is_file() {
        cannot_run(&format!(
            "no rootfs at {} (build it with `tests/systemd-rootfs.sh {}`)",
            rootfs.display(),
            rootfs.display()
        ));
        return None;
    }
    match Container::boot(&rootfs) {
        Ok(c) => Some(c),
        Err(why) => {
            cannot_run(&format!(
                "systemd-nspawn cannot boot {}: {why}",
                rootfs.display()
            ));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// The test

#[test]
fn units_installed_as_the_readme_says_run_under_a_real_systemd() {
    let started = Instant::now();
    let Some(c) = boot_or_skip() else { return };
    let admin = Some(ADMIN);

    // The admin: a login with sudo rights (the README's commands use sudo); the hostname
    // resolvable, or sudo complains on every call.
    c.ok(
        None,
        &format!(
            "echo \"127.0.1.1 $(hostname)\" >> /etc/hosts && useradd -m -s /bin/sh {ADMIN} \
             && echo '{ADMIN} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{ADMIN}"
        ),
    );
    // A minimal system has no /bin/kill (procps): ExecReload= must not need it.
    c.ok(None, "test ! -e /bin/kill && test ! -e /usr/bin/kill");

    // ---- The server, as the README installs it. The last step prints alice's token.
    let mut token = None;
    for command in readme_block("The server") {
        let Some(command) = adapt(&command) else {
            continue;
        };
        if command.contains(" user add ") {
            // The unit is Type=exec: `enable --now` returns before the server has created its
            // index, and a `user add` racing that first migration can fail ("table users
            // already exists": Index::open reads user_version outside its transaction). Wait
            // for the listener, which the server opens after the index, until that is fixed.
            c.wait_for("blobsync-server listens on 127.0.0.1:7070", || {
                let probe = c.run(None, "bash -c 'exec 3<>/dev/tcp/127.0.0.1/7070'");
                probe.status.success().then_some(())
            });
        }
        let out = c.ok(admin, &command);
        if command.contains(" user add ") {
            token = out.lines().last().map(str::to_owned);
        }
    }
    let token = token.expect("the README's server steps add a user");
    assert_eq!(c.property("blobsync-server", "ActiveState"), "active");
    let server_pid = c.main_pid("blobsync-server");
    c.assert_sandboxed("blobsync-server.service", server_pid, 1);

    // ---- The system daemon, pointed at that server.
    let mut status_line = None;
    for command in readme_block("System-wide") {
        let Some(command) = adapt(&command) else {
            continue;
        };
        if command.starts_with("sudoedit /etc/blobsync/config.toml") {
            // What the admin types into the editor, and the token file the paragraph after the
            // block describes (installed with the command it gives).
            c.ok(
                admin,
                &format!(
                    "printf '%s\\n' 'remote = \"http://127.0.0.1:7070\"' 'user = \"{ADMIN}\"' \
                     'token_file = \"/etc/blobsync/token\"' 'transfers = 2' \
                     | sudo tee -a /etc/blobsync/config.toml >/dev/null \
                     && cd && umask 077 && printf %s {token} > token \
                     && sudo install -m 0640 -g blobsync token /etc/blobsync/token && rm token"
                ),
            );
            continue;
        }
        let out = c.ok(admin, &command);
        if command.contains("blobctl") && command.ends_with(" status") {
            // Type=notify: `enable --now` returned once the daemon was ready, so the status
            // right after it already answers.
            status_line = Some(out);
        }
    }
    let status = status_line.expect("the README's system steps end with blobctl status");
    assert!(
        status.contains("http://127.0.0.1:7070"),
        "blobctl status does not show the configured server:\n{status}"
    );
    assert_eq!(c.property("blobsyncd", "ActiveState"), "active");
    let status_text = c.property("blobsyncd", "StatusText");
    assert!(
        status_text.contains(" synced, "),
        "STATUS= did not reach systemd: {status_text:?}"
    );
    // The unit's RuntimeDirectoryMode= and the daemon's socket-dir check agree: no warning.
    assert_eq!(c.value("stat -c %a /run/blobsync"), "700");
    let journal = c.journal("-u blobsyncd");
    assert!(
        !journal.contains("control socket's directory"),
        "the daemon warns about the unit's runtime directory:\n{journal}"
    );
    let daemon_pid = c.main_pid("blobsyncd");
    c.assert_sandboxed("blobsyncd.service", daemon_pid, 1);

    // A blob through the system daemon to the server unit.
    c.ok(
        None,
        &format!(
            "echo hello from systemd | runuser -u blobsync -- \
             blobctl --socket {SYSTEM_SOCKET} put - --id hello"
        ),
    );
    c.wait_for("the blob put through blobsyncd.service is SYNCED", || {
        (c.system_blob_status("hello")?.as_str() == "SYNCED").then_some(())
    });
    // On the server unit: a blob this small is kept inside its index (`--inline-max`), whose
    // file or write-ahead log then holds the id.
    c.ok(
        None,
        "grep -qs hello /var/lib/blobsync-server/index.sqlite3 \
         /var/lib/blobsync-server/index.sqlite3-wal",
    );

    // ---- Reload: a changed config is applied, by `sh`'s kill (there is no /bin/kill).
    assert_eq!(c.system_limit("transfers"), Some(2));
    c.ok(
        admin,
        "sudo sed -i 's/^transfers = 2$/transfers = 4/' /etc/blobsync/config.toml \
         && sudo systemctl reload blobsyncd",
    );
    c.wait_for("reload applies transfers = 4", || {
        (c.system_limit("transfers")? == 4).then_some(())
    });
    // A config that no longer parses is refused; the daemon keeps running on the old one.
    c.ok(
        admin,
        "echo 'this is not toml' | sudo tee -a /etc/blobsync/config.toml >/dev/null \
         && sudo systemctl reload blobsyncd",
    );
    c.wait_for("the refused reload is logged", || {
        c.journal("-u blobsyncd")
            .contains("config not reloaded, keeping the old one")
            .then_some(())
    });
    assert_eq!(c.property("blobsyncd", "ActiveState"), "active");
    assert_eq!(
        c.main_pid("blobsyncd"),
        daemon_pid,
        "a bad reload restarted it"
    );
    assert_eq!(c.system_limit("transfers"), Some(4));
    c.ok(
        admin,
        "sudo sed -i '/^this is not toml$/d' /etc/blobsync/config.toml",
    );

    // ---- Stop in the middle of an upload: exit 0. 1 MiB/s makes a 3 MiB upload last.
    c.ok(
        admin,
        "echo 'bwlimit_up = 1048576' | sudo tee -a /etc/blobsync/config.toml >/dev/null \
         && sudo systemctl reload blobsyncd",
    );
    c.wait_for("reload applies bwlimit_up", || {
        (c.system_limit("bwlimit_up")? == 1_048_576).then_some(())
    });
    c.ok(
        None,
        &format!(
            "head -c 3145728 /dev/urandom | runuser -u blobsync -- \
             blobctl --socket {SYSTEM_SOCKET} put - --id big"
        ),
    );
    c.wait_for("the 3 MiB upload is under way", || {
        let status = c.system_ctl_json("status")?;
        status["transfers"]
            .as_array()?
            .iter()
            .any(|t| t["id"] == "big" && t["bytes_done"].as_u64() > Some(0))
            .then_some(())
    });
    let stop = Instant::now();
    c.ok(admin, "sudo systemctl stop blobsyncd");
    eprintln!("stop during an upload took {:?}", stop.elapsed());
    let journal = c.journal("-u blobsyncd -o cat");
    assert!(
        journal.contains("draining in-flight transfers"),
        "the daemon stopped with no transfer in flight:\n{journal}"
    );
    assert_eq!(c.property("blobsyncd", "Result"), "success");
    assert_eq!(c.property("blobsyncd", "ExecMainStatus"), "0");
    // Started again (without the limit), it finishes the interrupted upload.
    c.ok(
        admin,
        "sudo sed -i '/^bwlimit_up = /d' /etc/blobsync/config.toml \
         && sudo systemctl start blobsyncd",
    );
    c.wait_for("the interrupted upload is SYNCED after a restart", || {
        (c.system_blob_status("big")?.as_str() == "SYNCED").then_some(())
    });

    // ---- kill -9: Restart=on-failure brings it back (after RestartSec=5s).
    let killed = c.main_pid("blobsyncd");
    c.ok(None, &format!("kill -9 {killed}"));
    let restarted = c.wait_for("blobsyncd is restarted after kill -9", || {
        let pid: u32 = c.property("blobsyncd", "MainPID").parse().ok()?;
        (pid != 0 && pid != killed && c.property("blobsyncd", "ActiveState") == "active")
            .then_some(pid)
    });
    assert_eq!(c.property("blobsyncd", "NRestarts"), "1");
    c.assert_sandboxed("blobsyncd.service after a restart", restarted, 1);
    assert_eq!(c.system_blob_status("hello").as_deref(), Some("SYNCED"));

    // ---- The per-user unit. Logging in starts the user's manager (logind does that through
    // pam_systemd; a login needs a terminal, so the test starts it the same way).
    let uid = c.value(&format!("id -u {ADMIN}"));
    c.ok(None, &format!("systemctl start user@{uid}.service"));
    let mut user_status = None;
    for command in readme_block("Per user") {
        let Some(command) = adapt(&command) else {
            continue;
        };
        let out = c.ok(admin, &command);
        if command == "blobctl status" {
            user_status = Some(out);
        }
    }
    let user_status = user_status.expect("the README's per-user steps end with blobctl status");
    assert!(
        user_status.contains(&format!("/home/{ADMIN}/.local/share/blobsync")),
        "the per-user daemon does not use the default data dir:\n{user_status}"
    );
    let user_unit = |prop: &str| {
        c.ok(
            admin,
            &format!("systemctl --user show -p {prop} --value blobsyncd"),
        )
        .trim()
        .to_owned()
    };
    assert_eq!(user_unit("ActiveState"), "active");
    // Lingering: logind keeps the manager (and the daemon) with no session at all.
    assert_eq!(
        c.value(&format!("loginctl show-user {ADMIN} -p Linger --value")),
        "yes"
    );
    assert_eq!(
        c.value(&format!("loginctl show-user {ADMIN} -p State --value")),
        "lingering"
    );
    let user_pid: u32 = user_unit("MainPID").parse().unwrap();
    let manager_pid = c.main_pid(&format!("user@{uid}.service"));
    c.assert_sandboxed("user/blobsyncd.service", user_pid, manager_pid);
    let userns = |p: u32| c.value(&format!("readlink /proc/{p}/ns/user"));
    assert_ne!(
        userns(user_pid),
        userns(manager_pid),
        "PrivateUsers=yes: the per-user daemon needs a user namespace for its sandbox"
    );
    // ReadWritePaths= made the data dir a writable mount point of its own.
    let mounts = c.ok(None, &format!("cat /proc/{user_pid}/mountinfo"));
    let mount_opts = |point: &str| {
        mounts
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.get(4) == Some(&point)).then(|| fields[5].to_owned())
            })
            .next_back()
    };
    let data = format!("/home/{ADMIN}/.local/share/blobsync");
    assert!(
        mount_opts(&data).is_some_and(|o| o.starts_with("rw")),
        "ReadWritePaths= not applied to {data}:\n{mounts}"
    );
    // ProtectSystem=strict: everything else, the home included, is read-only.
    assert!(
        mount_opts("/").is_some_and(|o| o.starts_with("ro")),
        "ProtectSystem=strict not applied:\n{mounts}"
    );
    c.ok(admin, "systemctl --user reload blobsyncd");
    assert_eq!(user_unit("MainPID"), user_pid.to_string());

    eprintln!("systemd_boot: whole run {:?}", started.elapsed());
}
