//! `blobctl key`: the storage key's custody, outside the daemon (a new device has no key, so
//! its daemon cannot start yet). `export|import` move it between devices as a file wrapped
//! with a passphrase (`blobsync_shared::keyfile`); `migrate` moves it between key stores
//! (`custody`); `backup|restore` keep it wrapped on the server (`backup`).
//!
//! This module never prints or logs key bytes or passphrases.

mod backup;
mod custody;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use blobsync_shared::keyfile::{self, KeyError};
use serde_json::json;

use blobsync_shared::config::{Config, ConfigFile};
use blobsync_shared::paths::DefaultPaths;

use crate::cli::{KeyCommand, KeyExportArgs, KeyImportArgs};
use crate::client::{self, CtlError};
use crate::commands::out;

/// Shortest passphrase `key export` accepts: the export protects every blob.
const MIN_PASSPHRASE_CHARS: usize = 8;

impl From<KeyError> for CtlError {
    fn from(e: KeyError) -> Self {
        CtlError::Key(e.to_string())
    }
}

/// Runs a `key` subcommand.
pub async fn run(cmd: KeyCommand, json: bool, socket: Option<&Path>) -> Result<(), CtlError> {
    match cmd {
        KeyCommand::Export(a) => export(a, json, socket).await,
        KeyCommand::Import(a) => import(a, json),
        KeyCommand::Migrate(a) => custody::migrate(a, json).await,
        KeyCommand::Backup(a) => backup::backup(a, json).await,
        KeyCommand::Restore(a) => restore_cmd(a, json).await,
    }
}

async fn restore_cmd(a: crate::cli::KeyRestoreArgs, json: bool) -> Result<(), CtlError> {
    backup::restore(a, json).await
}

/// The daemon's config as the key commands need it (remote, user, token, key store), from
/// `--config`, else the default config file; without a file, every default.
pub(crate) fn config(flag: Option<&Path>) -> Result<Config, CtlError> {
    config_and_path(flag).map(|(c, _)| c)
}

/// [`config`] and the path of its file (which may not exist yet).
pub(crate) fn config_and_path(flag: Option<&Path>) -> Result<(Config, PathBuf), CtlError> {
    let defaults = DefaultPaths::discover().map_err(|e| CtlError::Usage(e.to_string()))?;
    let path = flag
        .map(Path::to_path_buf)
        .unwrap_or_else(|| defaults.config_file());
    let cfg = if path.exists() {
        Config::load(&path, &defaults)
    } else {
        Config::resolve(ConfigFile::default(), &defaults, &path)
    }
    .map_err(|e| CtlError::Usage(format!("{e}; fix the config first")))?;
    Ok((cfg, path))
}

/// Asks twice for a new passphrase at the terminal (three tries at a short or mistyped one).
fn new_passphrase(question: &str) -> Result<String, CtlError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let p = prompt(question)?;
        let problem = if p.chars().count() < MIN_PASSPHRASE_CHARS {
            format!("shorter than {MIN_PASSPHRASE_CHARS} characters")
        } else if prompt("Same passphrase again: ")? != p {
            "the two passphrases differ".to_owned()
        } else {
            return Ok(p);
        };
        if tries == 3 {
            return Err(CtlError::Usage(format!("{problem}; nothing was written")));
        }
        eprintln!("blobctl: {problem}; try again");
    }
}

/// Refuses a passphrase too short to protect every blob.
fn check_passphrase(pass: &str) -> Result<(), CtlError> {
    if pass.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(CtlError::Usage(format!(
            "the passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters; it alone protects \
             every blob, so choose a longer one"
        )));
    }
    Ok(())
}

/// Where the running daemon keeps its key, asked over its socket (`GetVersion`), so `key
/// export --socket S` exports the key of the daemon at S, and `sudo blobctl key export` the
/// system service's. `None` when no daemon answers at the default socket (then the config
/// decides); an error when the socket was named and nothing answers there.
async fn daemon_key_store(
    socket: Option<&Path>,
) -> Result<Option<blobsync_shared::keystore::KeyStore>, CtlError> {
    use blobsync_shared::keystore::{KeyStore, KeyStoreKind};
    let path = client::discover_socket(socket)?;
    let mut c = match client::connect(&path).await {
        Ok(c) => c,
        Err(CtlError::Unreachable { socket: s, reason }) if socket.is_some() => {
            return Err(CtlError::Unreachable {
                socket: s,
                reason: format!(
                    "{reason}; `key export --socket` asks that daemon where its key is, so start                      it, or name the key with --key-file"
                ),
            });
        }
        Err(CtlError::Unreachable { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let v = c
        .get_version(blobsync_proto::GetVersionRequest {})
        .await?
        .into_inner();
    if v.key_store.is_empty() {
        // A daemon older than these fields: the config decides, as before.
        return Ok(None);
    }
    let kind = KeyStoreKind::parse(&v.key_store).map_err(|e| {
        CtlError::Key(format!(
            "the daemon at {} reported its key store as {e}",
            path.display()
        ))
    })?;
    Ok(Some(KeyStore::new(kind, Path::new(&v.key_file), &v.user)))
}

async fn export(a: KeyExportArgs, json: bool, socket: Option<&Path>) -> Result<(), CtlError> {
    // The key is read from where the daemon keeps it: --key-file if given; else the running
    // daemon's store (it says over its socket); else the config's `key_store` and `key_file`.
    let named_config = client::config_path().is_some_and(|(_, named)| named);
    let from_daemon = match (&a.key_file, named_config) {
        (None, false) => daemon_key_store(socket).await?,
        _ => None,
    };
    let keyring_or_credential = match &a.key_file {
        None if from_daemon.is_none() => config(None)
            .ok()
            .filter(|c| c.key_store != blobsync_shared::keystore::KeyStoreKind::File)
            .map(|c| blobsync_shared::keystore::KeyStore::new(c.key_store, &c.key_file, &c.user)),
        _ => None,
    };
    let (key, key_path) = match from_daemon.or(keyring_or_credential) {
        Some(store) => {
            let key = store.load().map_err(|e| CtlError::Key(e.to_string()))?;
            (key, PathBuf::from(store.describe()))
        }
        None => {
            let key_path = client::discover_key_file(a.key_file.as_deref())?;
            (keyfile::load_key_file(&key_path)?, key_path)
        }
    };
    let pass = match &a.passphrase_file {
        Some(f) => passphrase_from_file(f)?,
        // At the terminal a short or mistyped passphrase asks again (three tries).
        None => new_passphrase("Passphrase to protect the exported key: ")?,
    };
    check_passphrase(&pass)?;
    let wrapped = keyfile::export_wrapped(&key, &pass);
    let to_stdout = a.output == Path::new("-");
    if to_stdout {
        if json {
            return Err(CtlError::Usage(
                "--json prints a JSON document on standard output, so it needs -o FILE".into(),
            ));
        }
        return out(std::str::from_utf8(&wrapped).expect("the export format is text"));
    }
    write_new_private(&a.output, &wrapped)?;
    if json {
        out(&format!(
            "{}\n",
            json!({ "key_file": key_path.display().to_string(), "output": a.output.display().to_string() })
        ))
    } else {
        out(&format!(
            "wrote the key from {} to {}, protected by your passphrase.\n\
             Import it on another device with `blobctl key import {}`.\n",
            key_path.display(),
            a.output.display(),
            a.output.display()
        ))
    }
}

fn import(a: KeyImportArgs, json: bool) -> Result<(), CtlError> {
    let key_path = client::discover_key_file(a.key_file.as_deref())?;
    let mut wrapped = Vec::new();
    if a.input == Path::new("-") {
        if a.passphrase_file.is_none() {
            return Err(CtlError::Usage(
                "reading the export from standard input needs --passphrase-file (the terminal \
                 cannot also answer the passphrase prompt)"
                    .into(),
            ));
        }
        std::io::stdin()
            .read_to_end(&mut wrapped)
            .map_err(|e| CtlError::io("reading standard input", e))?;
    } else {
        wrapped = std::fs::read(&a.input)
            .map_err(|e| CtlError::io(format!("reading {}", a.input.display()), e))?;
    }
    let pass = match &a.passphrase_file {
        Some(f) => passphrase_from_file(f)?,
        None => prompt("Passphrase of the exported key: ")?,
    };
    let key = keyfile::import_wrapped(&wrapped, &pass)?;
    let mut replaced: Option<PathBuf> = None;
    if key_path.exists() {
        match keyfile::load_key_file(&key_path) {
            Ok(existing) if existing.as_bytes() == key.as_bytes() => {
                return report_import(&key_path, None, true, json);
            }
            _ if !a.force => {
                return Err(CtlError::Key(format!(
                    "a different key is already installed at {}; blobs encrypted with it would \
                     become unreadable here. If you are sure, run again with --force (the old \
                     key is kept beside it as a backup)",
                    key_path.display()
                )));
            }
            _ => {
                let backup = backup_path(&key_path);
                std::fs::rename(&key_path, &backup).map_err(|e| {
                    CtlError::io(format!("moving the old key to {}", backup.display()), e)
                })?;
                replaced = Some(backup);
            }
        }
    }
    keyfile::save_key_file(&key_path, &key)?;
    report_import(&key_path, replaced.as_deref(), false, json)
}

fn report_import(
    key_path: &Path,
    backup: Option<&Path>,
    unchanged: bool,
    json: bool,
) -> Result<(), CtlError> {
    if json {
        return out(&format!(
            "{}\n",
            json!({
                "key_file": key_path.display().to_string(),
                "unchanged": unchanged,
                "backup": backup.map(|b| b.display().to_string()),
            })
        ));
    }
    if unchanged {
        return out(&format!(
            "this key is already installed at {}\n",
            key_path.display()
        ));
    }
    let mut msg = format!("installed the key at {}", key_path.display());
    if let Some(b) = backup {
        msg.push_str(&format!(" (the old key is saved as {})", b.display()));
    }
    msg.push_str(
        ".\nRestart blobsyncd so it uses the key (`systemctl --user restart blobsyncd`).\n",
    );
    out(&msg)
}

/// `key` -> `key.replaced-<unix seconds>`.
fn backup_path(key: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".replaced-{secs}"));
    key.with_file_name(name)
}

/// The first line of `path`, without its line end.
fn passphrase_from_file(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::io(format!("reading the passphrase file {}", path.display()), e))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// Writes a new file readable by its owner only; refuses to replace an existing one.
fn write_new_private(path: &Path, data: &[u8]) -> Result<(), CtlError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            CtlError::io(
                format!(
                    "creating {} (an existing file is never replaced)",
                    path.display()
                ),
                e,
            )
        })?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| CtlError::io(format!("writing {}", path.display()), e))
}

/// Asks for a passphrase on the terminal without echoing it.
fn prompt(question: &str) -> Result<String, CtlError> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()
        .filter(|t| t.is_terminal());
    let Some(mut tty) = tty else {
        return Err(CtlError::Usage(
            "no terminal to ask for the passphrase; pass --passphrase-file FILE".into(),
        ));
    };
    tty.write_all(question.as_bytes())
        .and_then(|_| tty.flush())
        .map_err(|e| CtlError::io("writing to the terminal", e))?;
    let line = with_echo_off(&tty, || {
        let mut line = String::new();
        let mut byte = [0u8; 1];
        // Byte by byte: a buffered reader could swallow input meant for later prompts.
        loop {
            match (&tty).read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0] as char),
                Err(e) => return Err(e),
            }
        }
        Ok(line)
    })
    .map_err(|e| CtlError::io("reading the passphrase from the terminal", e))?;
    let _ = tty.write_all(b"\n");
    // The bytes were pushed as Latin-1 chars above; rebuild them as UTF-8.
    let bytes: Vec<u8> = line.chars().map(|c| c as u32 as u8).collect();
    String::from_utf8(bytes)
        .map(|s| s.trim_end_matches('\r').to_owned())
        .map_err(|_| CtlError::Usage("the passphrase is not valid UTF-8".into()))
}

/// Runs `f` with terminal echo off, restoring the previous settings afterwards.
fn with_echo_off<T>(
    tty: &std::fs::File,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    // SAFETY: `termios` is plain data; tcgetattr fills it for a valid open fd.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: fd is valid and `quiet` a copy of settings the kernel gave us.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above; restores what was there.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn export_then_import_moves_the_key_and_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cfg/key");
        let original = keyfile::generate_key_file(&key).unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "correct horse battery\n").unwrap();
        let wrapped = dir.path().join("export.txt");
        export(
            KeyExportArgs {
                output: wrapped.clone(),
                passphrase_file: Some(pass.clone()),
                key_file: Some(key.clone()),
            },
            true,
            None,
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&wrapped).unwrap();
        assert!(text.starts_with("blobsync-key v1"));
        assert!(
            !text.contains(&hex_of(&original)),
            "the export must not hold the raw key"
        );

        // A second device: no key yet.
        let other = dir.path().join("other/key");
        let args = |force| KeyImportArgs {
            input: wrapped.clone(),
            passphrase_file: Some(pass.clone()),
            key_file: Some(other.clone()),
            force,
        };
        import(args(false), true).unwrap();
        assert_eq!(
            keyfile::load_key_file(&other).unwrap().as_bytes(),
            original.as_bytes()
        );
        // Importing the same key again is a no-op.
        import(args(false), true).unwrap();

        // A different key in place is refused without --force, kept as a backup with it.
        std::fs::remove_file(&other).unwrap();
        keyfile::generate_key_file(&other).unwrap();
        let e = import(args(false), true).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        import(args(true), true).unwrap();
        assert_eq!(
            keyfile::load_key_file(&other).unwrap().as_bytes(),
            original.as_bytes()
        );
        let backups = std::fs::read_dir(other.parent().unwrap())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("key.replaced-")
            })
            .count();
        assert_eq!(backups, 1);
    }

    #[tokio::test]
    async fn wrong_passphrase_and_short_passphrase_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        keyfile::generate_key_file(&key).unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = export(
            KeyExportArgs {
                output: dir.path().join("x"),
                passphrase_file: Some(short),
                key_file: Some(key.clone()),
            },
            true,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(!dir.path().join("x").exists());

        let good = dir.path().join("good");
        std::fs::write(&good, "a long passphrase").unwrap();
        let out_file = dir.path().join("exp");
        export(
            KeyExportArgs {
                output: out_file.clone(),
                passphrase_file: Some(good),
                key_file: Some(key),
            },
            true,
            None,
        )
        .await
        .unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "another long passphrase").unwrap();
        let target = dir.path().join("new/key");
        let e = import(
            KeyImportArgs {
                input: out_file,
                passphrase_file: Some(bad),
                key_file: Some(target.clone()),
                force: false,
            },
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("wrong passphrase"), "{e}");
        assert!(
            !target.exists(),
            "nothing may be written on a failed import"
        );
    }

    fn hex_of(k: &blobsync_shared::StorageKey) -> String {
        k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}
