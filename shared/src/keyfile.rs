//! The storage key on disk: the key file (64 lowercase hex characters and a newline, mode
//! `0600`, written atomically and never overwritten) and the passphrase-wrapped export format
//! that carries the key to a second device.
//!
//! This module never logs or prints key bytes; every error says what to do about it.
//!
//! # Wrapped key format, version 1
//!
//! A UTF-8 text file of `name: value` lines after a first line naming the format:
//!
//! ```text
//! blobsync-key v1
//! kdf: argon2id
//! m: 65536
//! t: 3
//! p: 1
//! salt: <32 hex digits: 16 random bytes>
//! nonce: <24 hex digits: 12 random bytes>
//! ciphertext: <96 hex digits: AES-256-GCM(storage key) || 16-byte tag>
//! ```
//!
//! The wrapping key is Argon2id (version 0x13) of the passphrase's UTF-8 bytes with that salt,
//! `m` KiB of memory, `t` passes and `p` lanes, 32 bytes long. The associated data is every
//! line before the `ciphertext:` line, each ended by `\n` (whatever line ends the file has),
//! so the parameters cannot be altered unnoticed. Readers accept `\n` or `\r\n` line ends and a missing final newline, reject
//! unknown versions, and bound `m`, `t` and `p` so a hostile file cannot exhaust memory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{self, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::codec::{KEY_LEN, StorageKey};

/// First line of a wrapped key file.
pub const WRAPPED_MAGIC_LINE: &str = "blobsync-key v1";

/// Argon2id memory cost written on export, in KiB (64 MiB).
pub const EXPORT_M_COST_KIB: u32 = 64 * 1024;
/// Argon2id passes written on export.
pub const EXPORT_T_COST: u32 = 3;
/// Argon2id lanes written on export.
pub const EXPORT_P_COST: u32 = 1;
/// Largest memory cost an import accepts (1 GiB), so a crafted file cannot exhaust memory.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
/// Largest pass count an import accepts.
pub const MAX_T_COST: u32 = 64;
/// Largest lane count an import accepts.
pub const MAX_P_COST: u32 = 16;

const WRAP_SALT_LEN: usize = 16;

/// Errors of key files and wrapped keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist.
    #[error(
        "key file {} does not exist: create one with `blobctl key import` (from another device's export) or let blobsyncd generate it on first start",
        path.display()
    )]
    Missing {
        /// The key file path.
        path: PathBuf,
    },
    /// Refusing to replace an existing key file: losing a key loses every blob under it.
    #[error(
        "key file {} already exists; refusing to overwrite it (losing a key loses the data). Move it away first if you really mean to replace it",
        path.display()
    )]
    Exists {
        /// The key file path.
        path: PathBuf,
    },
    /// Group or others may access the key file.
    #[error(
        "key file {} has mode {mode:04o}; it must be readable by its owner only: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file's contents are not 64 lowercase hex characters and a newline.
    #[error(
        "key file {} is malformed: {reason}; it must hold exactly 64 lowercase hex characters (32 bytes) and a newline",
        path.display()
    )]
    Format {
        /// The key file path.
        path: PathBuf,
        /// What is wrong (never quotes the contents).
        reason: String,
    },
    /// Reading or writing the key file failed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The passphrase does not open the wrapped key.
    #[error(
        "wrong passphrase for the exported key (or the export was altered): try again with the passphrase used for `blobctl key export`"
    )]
    WrongPassphrase,
    /// The bytes are not a wrapped key this build reads.
    #[error("not a blobsync exported key: {0}")]
    BadWrapped(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Generates a new storage key and writes it to `path` (see [`save_key_file`]).
pub fn generate_key_file(path: &Path) -> Result<StorageKey, KeyError> {
    let key = StorageKey::generate();
    save_key_file(path, &key)?;
    Ok(key)
}

/// Writes `key` to a new key file at `path`: mode `0600`, atomically (a temp file in the same
/// directory, fsynced, then linked into place, so a crash leaves either no file or a whole
/// one), creating missing parent directories with mode `0700`. Never replaces an existing
/// file: [`KeyError::Exists`].
pub fn save_key_file(path: &Path, key: &StorageKey) -> Result<(), KeyError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&dir)?;
    if path.exists() {
        return Err(KeyError::Exists {
            path: path.to_owned(),
        });
    }
    let mut text = hex::encode(key.as_bytes()).into_bytes();
    text.push(b'\n');
    let tmp = tempfile_in(&dir, path)?;
    let written = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()
    })();
    // Overwrite the hex copy in memory: it is as secret as the key.
    text.fill(0);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    // A hard link fails if `path` exists, unlike rename: no race can overwrite a key.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyError::Exists {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(path)(e)),
    }
    // Make the new directory entry durable too.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn tempfile_in(dir: &Path, path: &Path) -> Result<PathBuf, KeyError> {
    let mut r = [0u8; 8];
    SystemRandom::new()
        .fill(&mut r)
        .map_err(|_| io_err(path)(std::io::Error::other("OS random source failed")))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    Ok(dir.join(format!(".{name}.{}.tmp", hex::encode(r))))
}

#[cfg(unix)]
fn open_private(p: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
}

#[cfg(not(unix))]
fn open_private(p: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(p)
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Loads the key file at `path`, refusing one that group or others may access, or whose
/// contents are not 64 lowercase hex characters (a final newline is expected but optional).
pub fn load_key_file(path: &Path) -> Result<StorageKey, KeyError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let format = |reason: String| KeyError::Format {
        path: path.to_owned(),
        reason,
    };
    if !meta.is_file() {
        return Err(format("it is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if meta.len() > 1024 {
        return Err(format(format!("it is {} bytes long", meta.len())));
    }
    let mut raw = fs::read(path).map_err(io_err(path))?;
    let result = parse_key_text(&raw).map_err(format);
    raw.fill(0);
    result
}

/// Parses the key file's text (64 lowercase hex characters, a final newline optional); the
/// error says what is wrong without quoting the contents.
pub fn parse_key_text(raw: &[u8]) -> Result<StorageKey, String> {
    let body = raw.strip_suffix(b"\n").unwrap_or(raw);
    if body.len() != 2 * KEY_LEN {
        return Err(format!(
            "it has {} characters before the newline",
            body.len()
        ));
    }
    if let Some(pos) = body
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!(
            "character {} is not a lowercase hex digit",
            pos + 1
        ));
    }
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(body, &mut key).map_err(|e| e.to_string())?;
    let k = StorageKey::from_bytes(key);
    key.fill(0);
    Ok(k)
}

/// Loads the key file, or generates it if it does not exist. `created` is true when a new key
/// was made: callers should tell the user to back it up (`blobctl key export`).
pub fn load_or_generate(path: &Path) -> Result<(StorageKey, bool), KeyError> {
    match load_key_file(path) {
        Ok(k) => Ok((k, false)),
        Err(KeyError::Missing { .. }) => match generate_key_file(path) {
            Ok(k) => Ok((k, true)),
            // Another process created it between our load and our write: use theirs.
            Err(KeyError::Exists { .. }) => Ok((load_key_file(path)?, false)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

struct KdfParams {
    m: u32,
    t: u32,
    p: u32,
}

fn wrapping_key(
    passphrase: &str,
    salt: &[u8],
    params: &KdfParams,
) -> Result<LessSafeKey, KeyError> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.m, params.t, params.p, Some(32))
            .map_err(|e| KeyError::BadWrapped(format!("argon2 parameters: {e}")))?,
    );
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| KeyError::BadWrapped(format!("argon2: {e}")))?;
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &out).expect("32 bytes is an AES-256 key"));
    out.fill(0);
    Ok(key)
}

/// Argon2id memory (KiB) of the key backup on the server (`blobctl key backup`): the server
/// may try passphrases offline, so each guess costs 256 MiB and [`BACKUP_T_COST`] passes
/// (docs/keys.md has the time it takes).
pub const BACKUP_M_COST_KIB: u32 = 256 * 1024;
/// Argon2id passes of the key backup on the server.
pub const BACKUP_T_COST: u32 = 3;

/// Wraps `key` with `passphrase` in the documented text format (Argon2id + AES-256-GCM, fresh
/// salt and nonce). The caller should refuse empty or short passphrases before calling.
pub fn export_wrapped(key: &StorageKey, passphrase: &str) -> Vec<u8> {
    export_wrapped_with(key, passphrase, EXPORT_M_COST_KIB, EXPORT_T_COST)
}

/// [`export_wrapped`] with Argon2id memory `m` (KiB) and `t` passes (one lane): the key backup
/// on the server uses [`BACKUP_M_COST_KIB`] and [`BACKUP_T_COST`].
pub fn export_wrapped_with(key: &StorageKey, passphrase: &str, m: u32, t: u32) -> Vec<u8> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; WRAP_SALT_LEN];
    let mut nonce = [0u8; aead::NONCE_LEN];
    // The OS random source failing is unrecoverable: no key could be made either.
    rng.fill(&mut salt).expect("the OS random source failed");
    rng.fill(&mut nonce).expect("the OS random source failed");
    let params = KdfParams {
        m,
        t,
        p: EXPORT_P_COST,
    };
    let head = format!(
        "{WRAPPED_MAGIC_LINE}\nkdf: argon2id\nm: {}\nt: {}\np: {}\nsalt: {}\nnonce: {}\n",
        params.m,
        params.t,
        params.p,
        hex::encode(salt),
        hex::encode(nonce)
    );
    let wk = wrapping_key(passphrase, &salt, &params)
        .expect("the export parameters are valid Argon2 parameters");
    let mut buf = key.as_bytes().to_vec();
    wk.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(head.as_bytes()),
        &mut buf,
    )
    .expect("a 32-byte key is within AES-GCM's limits");
    let mut out = head.into_bytes();
    out.extend_from_slice(format!("ciphertext: {}\n", hex::encode(&buf)).as_bytes());
    out
}

/// Unwraps a key exported with [`export_wrapped`]. A wrong passphrase (or an altered file) is
/// [`KeyError::WrongPassphrase`]; anything that is not a v1 export is [`KeyError::BadWrapped`].
pub fn import_wrapped(bytes: &[u8], passphrase: &str) -> Result<StorageKey, KeyError> {
    let bad = |m: &str| KeyError::BadWrapped(m.to_owned());
    let text = std::str::from_utf8(bytes).map_err(|_| bad("the file is not UTF-8 text"))?;
    // The associated data is the canonical (`\n`-ended) form of every line before the
    // ciphertext, so a file whose line ends were converted still opens.
    let mut aad = String::new();
    for line in text.lines() {
        if line.starts_with("ciphertext:") {
            break;
        }
        aad.push_str(line.strip_suffix('\r').unwrap_or(line));
        aad.push('\n');
    }
    let mut lines = text.lines();
    match lines.next().map(str::trim_end) {
        Some(WRAPPED_MAGIC_LINE) => {}
        Some(l) if l.starts_with("blobsync-key ") => {
            return Err(KeyError::BadWrapped(format!(
                "format {:?} is not supported by this build (it reads {WRAPPED_MAGIC_LINE:?})",
                l
            )));
        }
        _ => return Err(bad("the first line is not `blobsync-key v1`")),
    }
    let (mut kdf, mut m, mut t, mut p, mut salt, mut nonce, mut ct) =
        (None, None, None, None, None, None, None);
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| KeyError::BadWrapped(format!("line {line:?} is not `name: value`")))?;
        let value = value.trim();
        let num = |v: &str, max: u32| -> Result<u32, KeyError> {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    KeyError::BadWrapped(format!("`{name}: {v}` is not a number in 1..={max}"))
                })
        };
        let hexv = |v: &str| {
            hex::decode(v).map_err(|_| KeyError::BadWrapped(format!("`{name}` is not hex")))
        };
        match name {
            "kdf" => kdf = Some(value.to_owned()),
            "m" => m = Some(num(value, MAX_M_COST_KIB)?),
            "t" => t = Some(num(value, MAX_T_COST)?),
            "p" => p = Some(num(value, MAX_P_COST)?),
            "salt" => salt = Some(hexv(value)?),
            "nonce" => nonce = Some(hexv(value)?),
            "ciphertext" => ct = Some(hexv(value)?),
            // Unknown fields are covered by the associated data, so ignoring them is safe
            // and lets a later v1 writer add informational lines.
            _ => {}
        }
    }
    let missing = |f: &str| KeyError::BadWrapped(format!("no `{f}:` line"));
    if kdf.as_deref() != Some("argon2id") {
        return Err(bad("`kdf` must be argon2id"));
    }
    let params = KdfParams {
        m: m.ok_or_else(|| missing("m"))?,
        t: t.ok_or_else(|| missing("t"))?,
        p: p.ok_or_else(|| missing("p"))?,
    };
    let salt = salt.ok_or_else(|| missing("salt"))?;
    if salt.len() < 8 {
        return Err(bad("`salt` must be at least 8 bytes"));
    }
    let nonce: [u8; aead::NONCE_LEN] = nonce
        .ok_or_else(|| missing("nonce"))?
        .try_into()
        .map_err(|_| bad("`nonce` must be 12 bytes"))?;
    let mut ct = ct.ok_or_else(|| missing("ciphertext"))?;
    if ct.len() != KEY_LEN + aead::AES_256_GCM.tag_len() {
        return Err(bad("`ciphertext` must be 48 bytes"));
    }
    let wk = wrapping_key(passphrase, &salt, &params)?;
    let plain = wk
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut ct,
        )
        .map_err(|_| KeyError::WrongPassphrase)?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(plain);
    ct.fill(0);
    Ok(StorageKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_must_be_64_lowercase_hex() {
        let good = "ab".repeat(32);
        assert!(parse_key_text(format!("{good}\n").as_bytes()).is_ok());
        assert!(parse_key_text(good.as_bytes()).is_ok());
        assert!(parse_key_text(format!("{good}\n\n").as_bytes()).is_err());
        assert!(parse_key_text(good.to_uppercase().as_bytes()).is_err());
        assert!(parse_key_text(&good.as_bytes()[..62]).is_err());
        let e = parse_key_text(format!("{}zz\n", &good[..62]).as_bytes()).unwrap_err();
        assert!(e.contains("character 63"), "{e}");
    }
}
