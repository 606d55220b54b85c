//! `blobctl key migrate --to file|keyring|credential`: moves the storage key between the key
//! stores of `key_store` (docs/keys.md). The key is written to the new store and read back
//! before anything else happens; then the config's `key_store` is set, and only then is the
//! old copy removed (a credential target keeps it: the unit must be changed first). The
//! daemon picks the new store up at its next start.

use std::path::{Path, PathBuf};

use blobsync_shared::keystore::{CREDENTIAL_NAME, KeyStore, KeyStoreKind};
use serde_json::json;

use crate::cli::KeyMigrateArgs;
use crate::client::CtlError;
use crate::commands::out;

/// Where `--to credential` writes the encrypted credential by default (the unit's
/// `LoadCredentialEncrypted=` names it).
pub const CREDENTIAL_FILE: &str = "/etc/credstore.encrypted/blobsync-key";

/// `key migrate`.
pub async fn migrate(a: KeyMigrateArgs, json: bool) -> Result<(), CtlError> {
    let (cfg, cfg_path) = super::config_and_path(a.config.as_deref())?;
    let to = KeyStoreKind::parse(&a.to).map_err(CtlError::Usage)?;
    let from_kind = match a.from.as_deref() {
        Some(f) => KeyStoreKind::parse(f).map_err(CtlError::Usage)?,
        None => cfg.key_store,
    };
    if from_kind == to {
        return Err(CtlError::Usage(format!(
            "the key is in the {to} store already (key_store = \"{to}\"); give --to another one"
        )));
    }
    let key_file = a.key_file.clone().unwrap_or_else(|| cfg.key_file.clone());
    let from = KeyStore::new(from_kind, &key_file, &cfg.user);
    let target = KeyStore::new(to, &key_file, &cfg.user);
    let credential_file = a
        .credential_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(CREDENTIAL_FILE));
    let (f2, t2, cf) = (from.clone(), target.clone(), credential_file.clone());
    let moved = tokio::task::spawn_blocking(move || -> Result<bool, CtlError> {
        let key = f2.load().map_err(|e| CtlError::Key(e.to_string()))?;
        if t2.kind() == KeyStoreKind::Credential {
            write_credential(&key, &cf)?;
            return Ok(true);
        }
        match t2.load() {
            Ok(k) if k.as_bytes() == key.as_bytes() => return Ok(false),
            Ok(_) => {
                return Err(CtlError::Key(format!(
                    "{} already holds a different storage key; nothing was moved. Remove it \
                     first if you are sure (blobs encrypted with it become unreadable here)",
                    t2.describe()
                )));
            }
            Err(_) => {}
        }
        t2.save(&key).map_err(|e| CtlError::Key(e.to_string()))?;
        // Read back before the old copy goes.
        match t2.load() {
            Ok(k) if k.as_bytes() == key.as_bytes() => Ok(true),
            _ => Err(CtlError::Key(format!(
                "the key written to {} does not read back; the old copy is kept",
                t2.describe()
            ))),
        }
    })
    .await
    .map_err(|e| CtlError::Key(e.to_string()))??;
    set_key_store(&cfg_path, to)?;
    let removed_old = to != KeyStoreKind::Credential;
    if removed_old {
        let f2 = from.clone();
        tokio::task::spawn_blocking(move || f2.delete())
            .await
            .map_err(|e| CtlError::Key(e.to_string()))?
            .map_err(|e| CtlError::Key(format!("the key is in its new store, but: {e}")))?;
    }
    if json {
        return out(&format!(
            "{}\n",
            json!({
                "from": from.describe(), "to": target.describe(), "moved": moved,
                "old_removed": removed_old, "config": cfg_path.display().to_string(),
            })
        ));
    }
    let mut msg = format!(
        "moved the storage key from {} to {}",
        from.describe(),
        if to == KeyStoreKind::Credential {
            format!("the encrypted credential {}", credential_file.display())
        } else {
            target.describe()
        }
    );
    msg.push_str(&format!(
        ".\nSet key_store = \"{to}\" in {}.\n",
        cfg_path.display()
    ));
    if to == KeyStoreKind::Credential {
        msg.push_str(&format!(
            "The old copy is kept until the unit loads the credential: check that the system \
             unit has `LoadCredentialEncrypted={CREDENTIAL_NAME}:{}`, restart it, then remove \
             {}.\n",
            credential_file.display(),
            from.describe()
        ));
    } else {
        msg.push_str("Restart blobsyncd so it reads the key from there.\n");
    }
    out(&msg)
}

/// Blocking: encrypts the key into a systemd credential with `systemd-creds encrypt` (run as
/// root, like the system unit), the key text on its standard input.
fn write_credential(key: &blobsync_shared::StorageKey, to: &Path) -> Result<(), CtlError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if to.exists() {
        return Err(CtlError::Key(format!(
            "{} exists; refusing to replace a credential (losing a key loses the data)",
            to.display()
        )));
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CtlError::io(format!("creating {}", dir.display()), e))?;
    }
    let mut child = Command::new("systemd-creds")
        .arg("encrypt")
        .arg(format!("--name={CREDENTIAL_NAME}"))
        .arg("-")
        .arg(to)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CtlError::io(
                "running systemd-creds (systemd 250 or newer, as root) to encrypt the credential",
                e,
            )
        })?;
    let mut text = format!("{}\n", hex_of(key));
    let w = child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes());
    // SAFETY: overwriting ASCII with ASCII keeps the string valid UTF-8.
    unsafe { text.as_bytes_mut().fill(b'0') };
    w.map_err(|e| CtlError::io("writing to systemd-creds", e))?;
    let status = child
        .wait()
        .map_err(|e| CtlError::io("waiting for systemd-creds", e))?;
    if !status.success() {
        let _ = std::fs::remove_file(to);
        return Err(CtlError::Key(format!(
            "systemd-creds encrypt failed ({status}); nothing was moved (run it as root)"
        )));
    }
    Ok(())
}

fn hex_of(k: &blobsync_shared::StorageKey) -> String {
    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets `key_store = "<kind>"` in the config file: the line is replaced where there is one,
/// else put first (top-level keys must come before any `[table]`); a missing file is created
/// (mode `0600`). The rest of the file is left as it is.
pub fn set_key_store(path: &Path, kind: KeyStoreKind) -> Result<(), CtlError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(CtlError::io(format!("reading {}", path.display()), e)),
    };
    let line = format!("key_store = \"{}\"", kind.as_str());
    let mut found = false;
    let mut out: Vec<String> = Vec::new();
    let mut in_table = false;
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with('[') {
            in_table = true;
        }
        if !in_table && !found && (t.starts_with("key_store ") || t.starts_with("key_store=")) {
            out.push(line.clone());
            found = true;
        } else {
            out.push(l.to_owned());
        }
    }
    if !found {
        out.insert(0, line);
    }
    let mut new = out.join("\n");
    new.push('\n');
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CtlError::io(format!("creating {}", dir.display()), e))?;
    }
    let tmp = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| CtlError::io(format!("writing {}", tmp.display()), e))?;
        f.write_all(new.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| CtlError::io(format!("writing {}", tmp.display()), e))?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| CtlError::io(format!("replacing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_store_replaces_the_top_level_line_or_puts_one_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        set_key_store(&p, KeyStoreKind::Keyring).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "key_store = \"keyring\"\n"
        );
        std::fs::write(
            &p,
            "# mine\nremote = \"x\"\nkey_store = \"file\"\n[namespaces.a]\npolicy = \"lazy\"\n",
        )
        .unwrap();
        set_key_store(&p, KeyStoreKind::Credential).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# mine\nremote = \"x\"\nkey_store = \"credential\"\n[namespaces.a]\npolicy = \"lazy\"\n"
        );
        std::fs::write(&p, "remote = \"x\"\n[namespaces.a]\npolicy = \"lazy\"\n").unwrap();
        set_key_store(&p, KeyStoreKind::File).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .starts_with("key_store = \"file\"\nremote")
        );
    }
}
