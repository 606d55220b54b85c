//! Finding the Python 2.7 virtualenv with the genuine Soledad 0.10.7 code
//! (`tests/python/soledad-venv.sh` builds it; `.ci/run` does so in
//! `/var/cache/blobsync-ci/soledad-venv` and sets `BLOBSYNC_SOLEDAD_VENV`).
//!
//! A test skips (loudly) only where Python 2.7 is missing. Where Python 2.7 is present but the
//! virtualenv is not, or with `CI` and `BLOBSYNC_SOLEDAD_VENV` set, a missing virtualenv fails.

use std::path::{Path, PathBuf};

/// Set by `.ci/run` once it has built the virtualenv.
const VENV_ENV: &str = "BLOBSYNC_SOLEDAD_VENV";
const DEFAULT_VENV: &str = "/var/cache/blobsync-ci/soledad-venv";

/// `tests/python`, where the drivers live.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

fn python27_present() -> bool {
    if std::env::var_os("BLOBSYNC_PYTHON27").is_some() {
        return true;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    if home.join(".pyenv/versions/2.7.18/bin/python").exists() {
        return true;
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("python2.7").exists()))
}

/// The virtualenv's python, `Ok(None)` to skip (after printing why), or why the test must
/// fail instead.
pub fn venv_python() -> Result<Option<PathBuf>, String> {
    let dir = std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    if dir.join(".complete").exists() {
        return Ok(Some(dir.join("bin/python")));
    }
    let why = format!(
        "no Soledad virtualenv at {} (build it with: bash tests/python/soledad-venv.sh {})",
        dir.display(),
        dir.display()
    );
    if std::env::var_os("CI").is_some() && std::env::var_os(VENV_ENV).is_some() {
        return Err(format!(
            "{why}; CI is set and .ci/run prepared the virtualenv (${VENV_ENV}), so this test \
             must run"
        ));
    }
    if python27_present() {
        return Err(format!(
            "{why}; Python 2.7 is installed, so this test must run"
        ));
    }
    eprintln!("\n======== SKIP: no Python 2.7 here, so no Soledad: {why} ========\n");
    Ok(None)
}
