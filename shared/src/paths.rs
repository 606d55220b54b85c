//! Default locations of blobsync's files, from the `directories` crate (XDG on Linux, the
//! platform conventions elsewhere).
//!
//! This module only computes paths; it never creates, reads or writes anything.

use std::path::{Path, PathBuf};

/// The file name of the daemon's control socket.
pub const SOCKET_NAME: &str = "blobsyncd.sock";
/// The file name of the config file inside the config dir.
pub const CONFIG_NAME: &str = "config.toml";
/// The file name of the storage key inside the config dir.
pub const KEY_NAME: &str = "key";
/// The control socket of the system service (systemd's `RuntimeDirectory=blobsync`).
pub const SYSTEM_SOCKET: &str = "/run/blobsync/blobsyncd.sock";

/// Why no default location could be computed.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// No home directory: `directories` could not find where per-user files go.
    #[error(
        "cannot find the home directory to place blobsync's files; set HOME, or pass \
         --config/--data-dir/--socket explicitly"
    )]
    NoHome,
}

/// The per-user default directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPaths {
    /// Config dir, e.g. `~/.config/blobsync`: holds `config.toml` and `key`.
    pub config_dir: PathBuf,
    /// Data dir, e.g. `~/.local/share/blobsync`: the daemon's store and payloads.
    pub data_dir: PathBuf,
    /// Runtime dir, e.g. `$XDG_RUNTIME_DIR/blobsync`, when the platform has one.
    pub runtime_dir: Option<PathBuf>,
}

impl DefaultPaths {
    /// The platform defaults for the current user.
    pub fn discover() -> Result<Self, PathsError> {
        let dirs = directories::ProjectDirs::from("", "", "blobsync").ok_or(PathsError::NoHome)?;
        Ok(Self {
            config_dir: dirs.config_dir().to_path_buf(),
            data_dir: dirs.data_dir().to_path_buf(),
            runtime_dir: dirs.runtime_dir().map(Path::to_path_buf),
        })
    }

    /// `<config_dir>/config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join(CONFIG_NAME)
    }

    /// `<config_dir>/key`.
    pub fn key_file(&self) -> PathBuf {
        self.config_dir.join(KEY_NAME)
    }

    /// `<runtime_dir>/blobsyncd.sock`, or `<data_dir>/blobsyncd.sock` on a platform without a
    /// runtime dir (the data dir is private to the user too).
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir
            .as_deref()
            .unwrap_or(&self.data_dir)
            .join(SOCKET_NAME)
    }
}

/// Where a client looks for the daemon's socket: `$XDG_RUNTIME_DIR/blobsync/blobsyncd.sock`
/// when it exists, else the system service's socket when that exists, else the per-user default.
pub fn discover_socket() -> Result<PathBuf, PathsError> {
    let user = DefaultPaths::discover()?.socket();
    if !user.exists() && Path::new(SYSTEM_SOCKET).exists() {
        return Ok(PathBuf::from(SYSTEM_SOCKET));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_files_live_in_their_dirs() {
        let p = DefaultPaths {
            config_dir: "/c".into(),
            data_dir: "/d".into(),
            runtime_dir: None,
        };
        assert_eq!(p.config_file(), Path::new("/c/config.toml"));
        assert_eq!(p.key_file(), Path::new("/c/key"));
        assert_eq!(p.socket(), Path::new("/d/blobsyncd.sock"));
        let p = DefaultPaths {
            runtime_dir: Some("/r/blobsync".into()),
            ..p
        };
        assert_eq!(p.socket(), Path::new("/r/blobsync/blobsyncd.sock"));
    }
}
