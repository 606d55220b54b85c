//! Checks the service definitions in `systemd/` with the tools that will run them and against
//! the binaries they start: `systemd-analyze verify` on every unit, `systemd-analyze security`
//! on the system units (exposure at most 2.0, "OK"), `systemd-sysusers` on the
//! users file, an XML parse of the launchd plist, the system config example through the
//! daemon's own config parser, each `ExecStart=` command line through the binary's own
//! argument parser, and what the daemon units promise systemd: `READY=1` and `STATUS=` on a
//! real `NOTIFY_SOCKET` once the control socket accepts, a config reload on SIGHUP
//! (`ExecReload=`), and exit 0 on SIGTERM.
//!
//! `systemd-analyze verify` refuses a unit whose `ExecStart=` binary does not exist, and the
//! units name the installed path (`/usr/local/bin/...`). So each unit is verified as a copy in
//! a temp dir whose binary path is rewritten to the one built in the target dir: build them
//! first with `cargo build --workspace --bins` (the README's test command does). `verify` also
//! exits 0 on unknown keys and bad values, only printing them, so its output is checked too.
//!
//! These tests never touch the host's service manager: nothing is installed, enabled or
//! started through systemd, and the daemon under test runs on temp dirs only.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use blobsync_shared::config::Config;
use blobsync_shared::paths::{DefaultPaths, SYSTEM_SOCKET};

/// The system units, relative to `systemd/`.
const SYSTEM_UNITS: &[&str] = &["blobsyncd.service", "blobsync-server.service"];
/// The per-user units, relative to `systemd/`.
const USER_UNITS: &[&str] = &["user/blobsyncd.service"];
/// Binaries this workspace builds; an `ExecStart=` of a unit must start one of them.
const OUR_BINARIES: &[&str] = &["blobsyncd", "blobsync-server", "blobctl"];
/// How long the daemon may take from exec to `READY=1`, and from SIGTERM to exit. Generous:
/// CI runs on 2 cores with other tests beside it. The test ends as soon as the event happens.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    // The tests crate lives at `<workspace>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

fn systemd_dir() -> PathBuf {
    workspace_root().join("systemd")
}

/// The built binary `name` (found by the harness's `bins`), or a panic that says how to build it.
fn built(name: &str) -> PathBuf {
    blobsync_tests::bins::bin_path(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A systemd tool from `PATH` (or the usual sbin dirs), or a panic saying how to install it.
fn systemd_tool(name: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found: these tests check the units with systemd's own tools. \
                 Install them with `apt-get install -y --no-install-recommends systemd` \
                 (.ci/run does this on a fresh machine)."
            )
        })
}

/// A unit file as `(section, key, value)` entries in file order. systemd allows a key to
/// repeat (`SystemCallFilter=`), so this keeps every occurrence.
struct Unit {
    path: PathBuf,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(relative: &str) -> Unit {
        let path = systemd_dir().join(relative);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{}: keep unit lines unbroken so this parser and readers see whole values",
                path.display()
            );
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not a key=value line: {line}", path.display()));
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Unit { path, entries }
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The effective value of a key that is set once.
    fn one(&self, key: &str) -> &str {
        match self.all("Service", key).as_slice() {
            [v] => v,
            [] => panic!("{}: [Service] has no {key}=", self.path.display()),
            many => panic!(
                "{}: {key}= is set {} times",
                self.path.display(),
                many.len()
            ),
        }
    }

    /// The `ExecStart=` command line split into words, without systemd's prefix characters.
    fn exec_start(&self) -> Vec<String> {
        let line = self.one("ExecStart");
        let line = line.trim_start_matches(['-', '@', ':', '+', '!']);
        line.split_whitespace().map(str::to_owned).collect()
    }
}

/// Writes `unit` into `dir` under its own file name, with the binary of every `ExecStart=`
/// rewritten to the built one, and returns the copy's path.
fn copy_with_built_binaries(unit: &Path, dir: &Path) -> PathBuf {
    let text = fs::read_to_string(unit).unwrap();
    let mut rewritten = 0;
    let mut out = String::new();
    for line in text.lines() {
        if let Some(cmd) = line.strip_prefix("ExecStart=") {
            let body = cmd.trim_start_matches(['-', '@', ':', '+', '!']);
            let prefix = &cmd[..cmd.len() - body.len()];
            let (program, rest) = body.split_once(' ').unwrap_or((body, ""));
            let name = Path::new(program)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            assert!(
                OUR_BINARIES.contains(&name),
                "{}: ExecStart= starts {program:?}, which is none of {OUR_BINARIES:?}",
                unit.display()
            );
            let built = built(name);
            out.push_str(&format!("ExecStart={prefix}{} {rest}\n", built.display()));
            rewritten += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(rewritten > 0, "{}: no ExecStart= line", unit.display());
    let copy = dir.join(unit.file_name().unwrap());
    fs::write(&copy, out).unwrap();
    copy
}

/// Runs `systemd-analyze verify` on `unit` (the system manager's view, or the user manager's
/// with `user`). Err holds its complaints: a non-zero exit, or any line naming the unit (it
/// exits 0 on unknown keys and unparsable values, so its output must be read).
fn verify(unit: &Path, user: bool) -> Result<(), String> {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(systemd_tool("systemd-analyze"));
    if user {
        // A user manager wants a runtime dir; give it a private one rather than the host's.
        let runtime = scratch.path().join("runtime");
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    let out = cmd
        .args(["--man=no", "verify"])
        .arg(unit)
        .output()
        .expect("systemd-analyze runs");
    let name = unit.file_name().unwrap().to_string_lossy().into_owned();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains(&name)).collect();
    if out.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "systemd-analyze verify {} exited with {}:\n{text}",
            unit.display(),
            out.status
        ))
    }
}

fn verify_ours(relative: &str, user: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_with_built_binaries(&systemd_dir().join(relative), tmp.path());
    if let Err(e) = verify(&copy, user) {
        panic!("{relative} does not pass systemd's checks:\n{e}");
    }
}

#[test]
fn system_units_pass_systemd_analyze_verify() {
    for unit in SYSTEM_UNITS {
        verify_ours(unit, false);
    }
}

#[test]
fn user_unit_passes_systemd_analyze_verify_for_the_user_manager() {
    for unit in USER_UNITS {
        verify_ours(unit, true);
    }
}

#[test]
fn verify_reports_settings_systemd_would_ignore() {
    // The checks above are only worth something if a broken unit fails them.
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_with_built_binaries(&systemd_dir().join("blobsyncd.service"), tmp.path());
    let mut text = fs::read_to_string(&copy).unwrap();
    text = text.replace(
        "ProtectSystem=strict",
        "ProtectSystem=stritc\nProtectHoem=yes",
    );
    fs::write(&copy, text).unwrap();
    let err = verify(&copy, false).expect_err("a misspelled value and key must be reported");
    assert!(
        err.contains("stritc") && err.contains("ProtectHoem"),
        "{err}"
    );
}

/// `systemd-analyze security --offline` on a system unit: Ok when its overall exposure is at
/// most `MAX_EXPOSURE` (systemd's 0-10 scale), else Err with the report.
fn security_check(unit: &Path) -> Result<(), String> {
    let out = Command::new(systemd_tool("systemd-analyze"))
        .args(["security", "--offline=yes", "--no-pager"])
        // The threshold is in tenths of the printed level.
        .arg(format!("--threshold={}", MAX_EXPOSURE * 10))
        .arg(unit)
        .output()
        .expect("systemd-analyze runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The most exposure `systemd-analyze security` may report for a system unit: "OK" is below
/// 2.0; ours score about 1.2 with the network access they need.
const MAX_EXPOSURE: u32 = 2;

#[test]
fn system_units_score_ok_in_systemd_analyze_security() {
    let tmp = tempfile::tempdir().unwrap();
    for relative in SYSTEM_UNITS {
        let copy = copy_with_built_binaries(&systemd_dir().join(relative), tmp.path());
        if let Err(report) = security_check(&copy) {
            panic!("{relative} is exposed more than {MAX_EXPOSURE}.0:\n{report}");
        }
    }
    // The check is only worth something if an unhardened unit fails it.
    let bare = tmp.path().join("bare.service");
    fs::write(&bare, "[Service]\nExecStart=/bin/true\n").unwrap();
    assert!(
        security_check(&bare).is_err(),
        "an unhardened unit must fail"
    );
}

#[test]
fn daemon_units_are_notify_services_with_reload_restart_and_hardening() {
    for relative in ["blobsyncd.service", "user/blobsyncd.service"] {
        let unit = Unit::load(relative);
        let expected = [
            ("Type", "notify"),
            ("ExecReload", "/bin/sh -c \"kill -HUP $MAINPID\""),
            ("Restart", "on-failure"),
            ("RuntimeDirectory", "blobsync"),
            ("ConfigurationDirectory", "blobsync"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
            ("MemoryDenyWriteExecute", "yes"),
            ("LockPersonality", "yes"),
            ("SystemCallArchitectures", "native"),
        ];
        for (key, value) in expected {
            assert_eq!(unit.one(key), value, "{relative}: {key}=");
        }
        let filters = unit.all("Service", "SystemCallFilter");
        assert_eq!(
            filters.first(),
            Some(&"@system-service"),
            "{relative}: the first SystemCallFilter= must allow @system-service"
        );
        let args = unit.exec_start();
        assert!(
            args.iter().any(|a| a == "--foreground"),
            "{relative}: the daemon must stay in the foreground under systemd: {args:?}"
        );
    }

    let system = Unit::load("blobsyncd.service");
    assert_eq!(system.one("User"), "blobsync");
    // systemd leaves a ConfigurationDirectory owned by root, so the service user gets in only
    // through the "other" bits.
    let mode = u32::from_str_radix(system.one("ConfigurationDirectoryMode"), 8).unwrap();
    assert_eq!(
        mode & 0o005,
        0o005,
        "blobsync could not read /etc/blobsync (mode {mode:o})"
    );
    assert_eq!(system.one("StateDirectory"), "blobsync");
    // The daemon warns about a socket dir that others may enter (control::bind): the unit's
    // must not be one. Only blobsync and root may use the socket anyway (0600, uid check).
    assert_eq!(system.one("RuntimeDirectoryMode"), "0700");
    assert_eq!(system.one("ProtectHome"), "yes");
    assert!(
        system
            .all("Install", "WantedBy")
            .contains(&"multi-user.target"),
        "blobsyncd.service must be enabled into multi-user.target"
    );

    let user = Unit::load("user/blobsyncd.service");
    assert!(
        user.all("Service", "User").is_empty(),
        "a user unit runs as its user"
    );
    // The home is read-only to the daemon except for the default data and config dirs
    // (blobsync_shared::paths: ~/.local/share/blobsync, ~/.config/blobsync).
    assert_eq!(user.one("ProtectHome"), "read-only");
    // Before v253 a user manager silently skips the file-system sandbox without it.
    assert_eq!(user.one("PrivateUsers"), "yes");
    let writable = user.one("ReadWritePaths");
    for dir in ["%h/.local/share/blobsync", "%h/.config/blobsync"] {
        assert!(
            writable
                .split_whitespace()
                .any(|p| p.trim_start_matches('-') == dir),
            "user/blobsyncd.service: ReadWritePaths= must include {dir}: {writable}"
        );
    }
    assert!(
        user.all("Install", "WantedBy").contains(&"default.target"),
        "user/blobsyncd.service must be enabled into default.target"
    );
}

#[test]
fn server_unit_runs_as_its_own_user_on_its_state_directory() {
    let unit = Unit::load("blobsync-server.service");
    assert_eq!(unit.one("User"), "blobsync-server");
    assert_eq!(unit.one("StateDirectory"), "blobsync-server");
    assert_eq!(unit.one("Restart"), "on-failure");
    assert_eq!(unit.one("ProtectSystem"), "strict");
    assert_eq!(unit.one("NoNewPrivileges"), "yes");
    let args = unit.exec_start();
    let data_dir = args
        .windows(2)
        .find(|w| w[0] == "--data" || w[0] == "--data-dir")
        .map(|w| w[1].as_str());
    assert_eq!(
        data_dir,
        Some("/var/lib/blobsync-server"),
        "the server's data dir must be its StateDirectory: {args:?}"
    );
}

/// Runs `argv` with `--help` appended: the binary's own parser reads every flag and value
/// the unit gives before it reaches `--help`, so an unknown or misspelled flag fails here.
fn assert_binary_accepts(origin: &str, argv: &[String]) {
    let name = Path::new(&argv[0]).file_name().unwrap().to_str().unwrap();
    let out = Command::new(built(name))
        .args(&argv[1..])
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{origin}: `{}` is not accepted by the built {name}:\n{}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unit_command_lines_are_ones_the_binaries_accept() {
    for relative in SYSTEM_UNITS.iter().chain(USER_UNITS) {
        assert_binary_accepts(relative, &Unit::load(relative).exec_start());
    }
    assert_binary_accepts(
        "launchd/org.blobsync.blobsyncd.plist",
        &plist_program_arguments(),
    );
}

#[test]
fn system_config_example_parses_and_points_into_the_unit_directories() {
    let unit = Unit::load("blobsyncd.service");
    let path = systemd_dir().join("blobsyncd.toml");
    let text = fs::read_to_string(&path).unwrap();
    let file = Config::parse_file(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    // The defaults are the blobsync user's; none of them may be used by the system service.
    let defaults = DefaultPaths {
        config_dir: "/nonexistent/config".into(),
        data_dir: "/nonexistent/data".into(),
        runtime_dir: None,
    };
    let config = Config::resolve(file, &defaults, &path).unwrap_or_else(|e| panic!("{e}"));

    let state = Path::new("/var/lib").join(unit.one("StateDirectory"));
    let runtime = Path::new("/run").join(unit.one("RuntimeDirectory"));
    let etc = Path::new("/etc").join(unit.one("ConfigurationDirectory"));
    assert!(config.data_dir.starts_with(&state), "{config:?}");
    assert!(
        config.key_file.starts_with(&state),
        "the key must be writable: {config:?}"
    );
    assert_eq!(config.socket, runtime.join("blobsyncd.sock"));
    assert_eq!(
        config.socket,
        Path::new(SYSTEM_SOCKET),
        "blobctl looks there"
    );

    let args = unit.exec_start();
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| PathBuf::from(&w[1]));
    assert_eq!(config_arg, Some(etc.join("config.toml")), "{args:?}");
}

#[test]
fn sysusers_file_creates_the_users_the_units_run_as() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("etc")).unwrap();
    let conf = systemd_dir().join("sysusers.d/blobsync.conf");
    let out = Command::new(systemd_tool("systemd-sysusers"))
        .arg(format!("--root={}", root.path().display()))
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-sysusers {}: {}",
        conf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    for relative in SYSTEM_UNITS {
        let unit = Unit::load(relative);
        let user = unit.one("User");
        let home = Path::new("/var/lib").join(unit.one("StateDirectory"));
        let entry = passwd
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .unwrap_or_else(|| panic!("sysusers.d/blobsync.conf does not create {user}"));
        assert_eq!(
            entry.split(':').nth(5),
            Some(home.to_str().unwrap()),
            "{user}'s home should be its StateDirectory: {entry}"
        );
    }
}

/// The plist's top-level dict as key -> value element.
fn plist_dict(doc: &roxmltree::Document<'_>) -> BTreeMap<String, roxmltree::NodeId> {
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "plist");
    assert_eq!(root.attribute("version"), Some("1.0"));
    let dict = root
        .children()
        .find(|n| n.is_element())
        .expect("the plist holds a dict");
    assert_eq!(dict.tag_name().name(), "dict");
    let items: Vec<_> = dict.children().filter(|n| n.is_element()).collect();
    assert!(items.len() % 2 == 0, "every <key> needs a value");
    let mut map = BTreeMap::new();
    for pair in items.chunks(2) {
        assert_eq!(pair[0].tag_name().name(), "key", "expected a <key>");
        let key = pair[0].text().unwrap_or_default().to_owned();
        assert_ne!(pair[1].tag_name().name(), "key", "{key} has no value");
        assert!(
            map.insert(key.clone(), pair[1].id()).is_none(),
            "{key} appears twice"
        );
    }
    map
}

fn plist_text() -> String {
    fs::read_to_string(systemd_dir().join("launchd/org.blobsync.blobsyncd.plist")).unwrap()
}

fn plist_program_arguments() -> Vec<String> {
    let text = plist_text();
    let doc = roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    let dict = plist_dict(&doc);
    let array = doc.get_node(dict["ProgramArguments"]).unwrap();
    assert_eq!(array.tag_name().name(), "array");
    array
        .children()
        .filter(|n| n.is_element())
        .map(|n| {
            assert_eq!(n.tag_name().name(), "string");
            n.text().unwrap_or_default().to_owned()
        })
        .collect()
}

#[test]
fn launchd_plist_parses_and_keeps_the_agent_alive_with_logs_in_library_logs() {
    let text = plist_text();
    // Apple's plists carry a DOCTYPE; roxmltree refuses DTDs unless asked.
    let doc = roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("the plist is not well-formed XML: {e}"));
    let dict = plist_dict(&doc);
    let node = |key: &str| {
        doc.get_node(
            *dict
                .get(key)
                .unwrap_or_else(|| panic!("the plist has no {key}")),
        )
        .unwrap()
    };
    let string = |key: &str| {
        let n = node(key);
        assert_eq!(n.tag_name().name(), "string", "{key} must be a <string>");
        n.text().unwrap_or_default().to_owned()
    };

    assert_eq!(
        string("Label"),
        "org.blobsync.blobsyncd",
        "the file name's label"
    );
    for key in ["RunAtLoad", "KeepAlive"] {
        assert_eq!(node(key).tag_name().name(), "true", "{key} must be <true/>");
    }
    let args = plist_program_arguments();
    assert_eq!(
        Path::new(&args[0]).file_name().and_then(|n| n.to_str()),
        Some("blobsyncd")
    );
    assert!(
        Path::new(&args[0]).is_absolute(),
        "launchd needs an absolute program path"
    );
    assert!(args.iter().any(|a| a == "--foreground"), "{args:?}");
    for key in ["StandardOutPath", "StandardErrorPath"] {
        // launchd expands neither ~ nor $HOME: the README's install step fills __HOME__ in.
        let path = string(key);
        assert!(
            path.starts_with("__HOME__/Library/Logs/"),
            "{key} must be under ~/Library/Logs: {path}"
        );
    }
    assert_eq!(node("Umask").tag_name().name(), "integer");
    assert_eq!(node("Umask").text(), Some("63"), "umask 077, in decimal");
}

/// Kills and reaps the daemon if a test fails before it exits on its own.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
    // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped (we hold
    // its `Child`), so it cannot have been recycled for another process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The daemon's `transfers` limit as `blobctl limits --json` reports it (None if blobctl fails).
fn transfers_limit(socket: &Path) -> Option<u64> {
    let out = Command::new(built("blobctl"))
        .arg("--socket")
        .arg(socket)
        .args(["limits", "--json"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json.get("transfers")?.as_u64()
}

#[test]
fn daemon_tells_systemd_it_is_ready_reloads_on_sighup_and_exits_zero_on_sigterm() {
    let daemon = built("blobsyncd");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for sub in ["home", "run", "data"] {
        fs::create_dir(dir.join(sub)).unwrap();
    }
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o700)).unwrap();

    // systemd's side of the handshake: a datagram socket named by NOTIFY_SOCKET.
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let socket = dir.join("run/blobsyncd.sock");
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\nkey_file = \"{data}/key\"\nsocket = \"{socket}\"\n\
             transfers = 2\n",
            data = dir.join("data").display(),
            socket = socket.display(),
        ),
    )
    .unwrap();
    let log_path = dir.join("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let child = Command::new(&daemon)
        .arg("--foreground")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        // Keep the daemon off the real home, whatever it falls back to.
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .env("XDG_DATA_HOME", dir.join("home/.local/share"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let daemon_log = || {
        let mut s = String::new();
        let _ = fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut s));
        s
    };

    // A notification may carry several `KEY=VALUE` lines; collect until READY=1 and STATUS=.
    let mut lines: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    while !(lines.iter().any(|l| l == "READY=1") && lines.iter().any(|l| l.starts_with("STATUS=")))
    {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "blobsyncd exited ({status}) before READY=1; got {lines:?}; its log:\n{}",
                daemon_log()
            );
        }
        assert!(
            start.elapsed() < DAEMON_DEADLINE,
            "no READY=1 and STATUS= within {DAEMON_DEADLINE:?}; got {lines:?}; its log:\n{}",
            daemon_log()
        );
        match notify.recv(&mut buf) {
            Ok(n) => lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }
    let status_line = lines.iter().find(|l| l.starts_with("STATUS=")).unwrap();
    assert!(
        status_line.len() > "STATUS=".len(),
        "an empty STATUS=: {lines:?}"
    );
    // Ready means ready for blobctl: the control socket accepts connections.
    UnixStream::connect(&socket).unwrap_or_else(|e| {
        panic!(
            "READY=1 was sent but {} does not accept connections: {e}; log:\n{}",
            socket.display(),
            daemon_log()
        )
    });

    // `systemctl reload` is `kill -HUP`: the daemon must survive it (SIGHUP's default action
    // is to terminate) and re-read its config. Watch a reloadable key change through blobctl.
    assert_eq!(
        transfers_limit(&socket),
        Some(2),
        "the config's limit before the reload"
    );
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace("transfers = 2", "transfers = 5")).unwrap();
    send_signal(&child.0, libc::SIGHUP);
    let start = Instant::now();
    while transfers_limit(&socket) != Some(5) {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "blobsyncd died on SIGHUP ({status}); log:\n{}",
                daemon_log()
            );
        }
        assert!(
            start.elapsed() < DAEMON_DEADLINE,
            "SIGHUP did not reload `transfers` within {DAEMON_DEADLINE:?}; log:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    send_signal(&child.0, libc::SIGTERM);
    let status = wait_with_deadline(&mut child.0, DAEMON_DEADLINE).unwrap_or_else(|| {
        panic!(
            "blobsyncd still runs {DAEMON_DEADLINE:?} after SIGTERM; log:\n{}",
            daemon_log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "blobsyncd must exit 0 on SIGTERM, got {status}; log:\n{}",
        daemon_log()
    );
}
