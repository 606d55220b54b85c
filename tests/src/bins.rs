//! Finding the workspace's built binaries.
//!
//! `CARGO_BIN_EXE_*` only exists for binaries of the crate under test, and the binaries we
//! need live in other packages, so we look in the target dir ourselves. This module never
//! builds anything: a missing binary is an error that says how to build it.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

/// The server binary's name.
pub const SERVER: &str = "blobsync-server";
/// The daemon binary's name.
pub const DAEMON: &str = "blobsyncd";
/// The control CLI's name.
pub const CTL: &str = "blobctl";

/// Directories that may hold the built binaries, best first.
///
/// Order: `BLOBSYNC_BIN_DIR`; the directory of the running executable and its parent (a test
/// runs from `target/<profile>/deps/`, a benchmark from `target/<profile>/`);
/// `CARGO_TARGET_DIR/<profile>`; `<workspace>/target/<profile>`. The profile this crate was
/// built with comes before the other one.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("BLOBSYNC_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(parent) = exe.parent()
    {
        if parent.file_name().is_some_and(|n| n == "deps")
            && let Some(profile_dir) = parent.parent()
        {
            dirs.push(profile_dir.to_path_buf());
        } else {
            dirs.push(parent.to_path_buf());
        }
    }
    let (first, second) = if cfg!(debug_assertions) {
        ("debug", "release")
    } else {
        ("release", "debug")
    };
    let mut roots = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        // A relative CARGO_TARGET_DIR is relative to the workspace root.
        roots.push(if t.is_absolute() {
            t
        } else {
            workspace_root().join(t)
        });
    }
    roots.push(workspace_root().join("target"));
    for profile in [first, second] {
        for root in &roots {
            dirs.push(root.join(profile));
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The workspace root (the parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The path of the built binary `name`, or an error saying to build the workspace first.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dirs = candidate_dirs();
    for dir in &dirs {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(HarnessError::MissingBinary {
        name: name.to_string(),
        searched: dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_says_how_to_build() {
        let err = bin_path("no-such-blobsync-binary").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
        assert!(msg.contains("no-such-blobsync-binary"), "{msg}");
    }

    #[test]
    fn candidates_include_the_workspace_target_dir() {
        let dirs = candidate_dirs();
        let target = workspace_root().join("target");
        assert!(dirs.iter().any(|d| d.starts_with(&target)), "{dirs:?}");
    }
}
