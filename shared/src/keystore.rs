//! Key custody (`key_store`, [docs/keys.md](../../docs/keys.md)): where the storage key is
//! kept. `file`: the key file (`0600`, [`crate::keyfile`]), the default; `keyring`: the OS
//! keyring (Secret Service on Linux desktops, Keychain on macOS) through the `keyring` crate,
//! built only with this crate's `keyring` feature; `credential`: a systemd credential, read
//! from `$CREDENTIALS_DIRECTORY/<name>` (the system unit's `LoadCredentialEncrypted=`), never
//! written.
//!
//! Every error says where the key was looked for, why it could not be had, and what to do.
//! Synchronous, and a keyring call may wait on D-Bus: async callers use a blocking thread.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::StorageKey;
use crate::keyfile::{self, KeyError};

/// The keyring service name of blobsync's entries (the entry's user is the config's `user`).
pub const KEYRING_SERVICE: &str = "blobsync";
/// The default name of the systemd credential (`LoadCredentialEncrypted=blobsync-key:...`).
pub const CREDENTIAL_NAME: &str = "blobsync-key";
/// The environment variable systemd sets to the directory of a service's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Which kind of store `key_store` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStoreKind {
    /// The key file (default).
    #[default]
    File,
    /// The OS keyring.
    Keyring,
    /// A systemd credential.
    Credential,
}

impl KeyStoreKind {
    /// Parses a `key_store` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(Self::File),
            "keyring" => Ok(Self::Keyring),
            "credential" => Ok(Self::Credential),
            other => Err(format!(
                "{other:?} is not a key store; use \"file\", \"keyring\" or \"credential\""
            )),
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Keyring => "keyring",
            Self::Credential => "credential",
        }
    }
}

impl fmt::Display for KeyStoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One place a storage key is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStore {
    /// The key file at this path.
    File(PathBuf),
    /// The keyring entry (service [`KEYRING_SERVICE`], this user).
    Keyring {
        /// The entry's user name (the config's `user`).
        user: String,
    },
    /// The systemd credential of this name, in `$CREDENTIALS_DIRECTORY` (or `dir`).
    Credential {
        /// The credential's name.
        name: String,
        /// The directory; `None` reads `$CREDENTIALS_DIRECTORY`.
        dir: Option<PathBuf>,
    },
}

/// Why a key could not be had from, or put into, a store.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The store works, but holds no key.
    #[error("there is no storage key in {place}. {fix}")]
    Missing {
        /// Where it was looked for.
        place: String,
        /// What to do.
        fix: String,
    },
    /// The store cannot be used here (no keyring service, no credentials directory...).
    #[error("cannot use {place}: {why}. {fix}")]
    Unavailable {
        /// The store.
        place: String,
        /// What went wrong.
        why: String,
        /// What to do.
        fix: String,
    },
    /// The store holds something that is not a key.
    #[error("{place} holds no valid storage key: {why}. {fix}")]
    Invalid {
        /// The store.
        place: String,
        /// What is wrong (never quotes the contents).
        why: String,
        /// What to do.
        fix: String,
    },
    /// A key is there already (stores are never overwritten blindly).
    #[error(
        "{place} already holds a storage key; refusing to replace it (losing a key loses the data). Remove it first if you really mean to"
    )]
    Exists {
        /// The store.
        place: String,
    },
    /// The key file (its own errors already say what to do).
    #[error(transparent)]
    File(#[from] KeyError),
}

impl KeyStore {
    /// The store `kind` means for a daemon whose key file is `key_file` and user is `user`.
    pub fn new(kind: KeyStoreKind, key_file: &Path, user: &str) -> Self {
        match kind {
            KeyStoreKind::File => Self::File(key_file.to_path_buf()),
            KeyStoreKind::Keyring => Self::Keyring {
                user: user.to_owned(),
            },
            KeyStoreKind::Credential => Self::Credential {
                name: CREDENTIAL_NAME.to_owned(),
                dir: None,
            },
        }
    }

    /// Its kind.
    pub fn kind(&self) -> KeyStoreKind {
        match self {
            Self::File(_) => KeyStoreKind::File,
            Self::Keyring { .. } => KeyStoreKind::Keyring,
            Self::Credential { .. } => KeyStoreKind::Credential,
        }
    }

    /// Where it is, in words.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("the key file {}", p.display()),
            Self::Keyring { user } => {
                format!("the OS keyring (entry service {KEYRING_SERVICE:?}, user {user:?})")
            }
            Self::Credential { name, dir } => match dir {
                Some(d) => format!("the systemd credential {name:?} in {}", d.display()),
                None => {
                    format!("the systemd credential {name:?} (${CREDENTIALS_DIRECTORY}/{name})")
                }
            },
        }
    }

    /// Loads the key.
    pub fn load(&self) -> Result<StorageKey, KeyStoreError> {
        match self {
            Self::File(p) => Ok(keyfile::load_key_file(p)?),
            Self::Keyring { user } => keyring_load(user, &self.describe()),
            Self::Credential { name, dir } => self.load_credential(name, dir.as_deref()),
        }
    }

    /// Whether the store holds a key (errors other than "no key" are errors).
    pub fn exists(&self) -> Result<bool, KeyStoreError> {
        match self.load() {
            Ok(_) => Ok(true),
            Err(KeyStoreError::Missing { .. }) => Ok(false),
            Err(KeyStoreError::File(KeyError::Missing { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores `key` where no key is yet ([`KeyStoreError::Exists`] otherwise). A credential
    /// cannot be written from here: it is made with `systemd-creds encrypt`.
    pub fn save(&self, key: &StorageKey) -> Result<(), KeyStoreError> {
        match self {
            Self::File(p) => Ok(keyfile::save_key_file(p, key)?),
            Self::Keyring { user } => {
                if self.exists()? {
                    return Err(KeyStoreError::Exists {
                        place: self.describe(),
                    });
                }
                keyring_save(user, key, &self.describe())?;
                // Read it back: a keyring that accepts and loses a secret must not be the
                // only copy of the key.
                match keyring_load(user, &self.describe()) {
                    Ok(k) if k.as_bytes() == key.as_bytes() => Ok(()),
                    Ok(_) => Err(KeyStoreError::Unavailable {
                        place: self.describe(),
                        why: "the key read back differs from the one written".into(),
                        fix: "keep key_store = \"file\"".into(),
                    }),
                    Err(e) => Err(e),
                }
            }
            Self::Credential { name, .. } => Err(KeyStoreError::Unavailable {
                place: self.describe(),
                why: "a systemd credential is read-only for blobsync".into(),
                fix: format!(
                    "make it with `blobctl key migrate --to credential` (as root: it runs \
                     `systemd-creds encrypt --name={name} - /etc/credstore.encrypted/{name}`)"
                ),
            }),
        }
    }

    /// Removes the key from the store (after it was moved elsewhere). A missing key is fine.
    pub fn delete(&self) -> Result<(), KeyStoreError> {
        match self {
            Self::File(p) => match std::fs::remove_file(p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(KeyError::Io {
                    path: p.clone(),
                    source: e,
                }
                .into()),
            },
            Self::Keyring { user } => keyring_delete(user, &self.describe()),
            Self::Credential { .. } => Ok(()),
        }
    }

    fn load_credential(&self, name: &str, dir: Option<&Path>) -> Result<StorageKey, KeyStoreError> {
        let place = self.describe();
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => match std::env::var_os(CREDENTIALS_DIRECTORY) {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => {
                    return Err(KeyStoreError::Unavailable {
                        place,
                        why: format!("${CREDENTIALS_DIRECTORY} is not set"),
                        fix: format!(
                            "key_store = \"credential\" is for the system unit, which sets it \
                             through `LoadCredentialEncrypted={name}:/etc/credstore.encrypted/{name}` \
                             (see systemd/blobsyncd.service); run blobsyncd from that unit, or set \
                             key_store = \"file\""
                        ),
                    });
                }
            },
        };
        let path = dir.join(name);
        // systemd makes credentials read-only for the service; the mode checks of a key file do
        // not apply (the directory is private to the unit), its format does.
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyStoreError::Missing {
                    place,
                    fix: format!(
                        "{} has no file {name:?}: add `LoadCredentialEncrypted={name}:\
                         /etc/credstore.encrypted/{name}` to the unit, and create that file with \
                         `blobctl key migrate --to credential` (as root)",
                        dir.display()
                    ),
                });
            }
            Err(e) => {
                return Err(KeyStoreError::Unavailable {
                    place,
                    why: e.to_string(),
                    fix: "check the unit's credential settings".into(),
                });
            }
        };
        let mut raw = raw;
        let r = keyfile::parse_key_text(&raw).map_err(|why| KeyStoreError::Invalid {
            place,
            why,
            fix: "the credential must hold the key file's text (64 lowercase hex characters); \
                  make it again with `blobctl key migrate --to credential`"
                .into(),
        });
        raw.fill(0);
        r
    }
}

#[cfg(feature = "keyring")]
fn keyring_entry(user: &str, place: &str) -> Result<keyring::Entry, KeyStoreError> {
    keyring::Entry::new(KEYRING_SERVICE, user).map_err(|e| keyring_error(e, place))
}

/// What a keyring failure means for the user.
#[cfg(feature = "keyring")]
fn keyring_error(e: keyring::Error, place: &str) -> KeyStoreError {
    let fix_service = "the keyring store needs a running Secret Service (GNOME Keyring, KWallet) \
                       on the session's D-Bus, unlocked: log in to the desktop session (or start \
                       `gnome-keyring-daemon --unlock`), then start blobsyncd again; on a \
                       headless machine use key_store = \"file\" or \"credential\"";
    match e {
        keyring::Error::NoEntry => KeyStoreError::Missing {
            place: place.to_owned(),
            fix: "move the key there with `blobctl key migrate --to keyring`, or restore it \
                  with `blobctl key restore --to keyring`"
                .into(),
        },
        keyring::Error::NoStorageAccess(inner) => KeyStoreError::Unavailable {
            place: place.to_owned(),
            why: format!("the keyring refused access ({inner}); it may be locked"),
            fix: fix_service.into(),
        },
        keyring::Error::PlatformFailure(inner) => KeyStoreError::Unavailable {
            place: place.to_owned(),
            why: format!("the Secret Service cannot be reached ({inner})"),
            fix: fix_service.into(),
        },
        other => KeyStoreError::Unavailable {
            place: place.to_owned(),
            why: other.to_string(),
            fix: fix_service.into(),
        },
    }
}

#[cfg(feature = "keyring")]
fn keyring_load(user: &str, place: &str) -> Result<StorageKey, KeyStoreError> {
    let secret = keyring_entry(user, place)?
        .get_password()
        .map_err(|e| keyring_error(e, place))?;
    let mut raw = secret.into_bytes();
    let r = keyfile::parse_key_text(&raw).map_err(|why| KeyStoreError::Invalid {
        place: place.to_owned(),
        why,
        fix: "delete the entry (e.g. `secret-tool clear service blobsync`) and move the key \
              there again with `blobctl key migrate --to keyring`"
            .into(),
    });
    raw.fill(0);
    r
}

#[cfg(feature = "keyring")]
fn keyring_save(user: &str, key: &StorageKey, place: &str) -> Result<(), KeyStoreError> {
    let mut text = hex::encode(key.as_bytes());
    let r = keyring_entry(user, place)?
        .set_password(&text)
        .map_err(|e| keyring_error(e, place));
    // SAFETY: overwriting ASCII hex digits with ASCII zeros keeps the string valid UTF-8.
    unsafe { text.as_bytes_mut().fill(b'0') };
    r
}

#[cfg(feature = "keyring")]
fn keyring_delete(user: &str, place: &str) -> Result<(), KeyStoreError> {
    match keyring_entry(user, place)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(keyring_error(e, place)),
    }
}

#[cfg(not(feature = "keyring"))]
fn not_built(place: &str) -> KeyStoreError {
    KeyStoreError::Unavailable {
        place: place.to_owned(),
        why: "this build has no keyring support".into(),
        fix: "use key_store = \"file\" or \"credential\"".into(),
    }
}

#[cfg(not(feature = "keyring"))]
fn keyring_load(_: &str, place: &str) -> Result<StorageKey, KeyStoreError> {
    Err(not_built(place))
}

#[cfg(not(feature = "keyring"))]
fn keyring_save(_: &str, _: &StorageKey, place: &str) -> Result<(), KeyStoreError> {
    Err(not_built(place))
}

#[cfg(not(feature = "keyring"))]
fn keyring_delete(_: &str, place: &str) -> Result<(), KeyStoreError> {
    Err(not_built(place))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_read_from_its_directory_and_errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::Credential {
            name: CREDENTIAL_NAME.into(),
            dir: Some(dir.path().to_path_buf()),
        };
        let e = store.load().unwrap_err();
        assert!(matches!(e, KeyStoreError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("LoadCredentialEncrypted="), "{e}");
        let key = StorageKey::generate();
        std::fs::write(
            dir.path().join(CREDENTIAL_NAME),
            format!("{}\n", hex::encode(key.as_bytes())),
        )
        .unwrap();
        assert_eq!(store.load().unwrap().as_bytes(), key.as_bytes());
        std::fs::write(dir.path().join(CREDENTIAL_NAME), "not a key\n").unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, KeyStoreError::Invalid { .. }), "{e}");
        assert!(!e.to_string().contains("not a key"), "never quotes: {e}");
        assert!(store.save(&key).is_err(), "read-only");
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in [
            KeyStoreKind::File,
            KeyStoreKind::Keyring,
            KeyStoreKind::Credential,
        ] {
            assert_eq!(KeyStoreKind::parse(k.as_str()).unwrap(), k);
        }
        assert!(
            KeyStoreKind::parse("vault")
                .unwrap_err()
                .contains("\"file\"")
        );
    }
}
