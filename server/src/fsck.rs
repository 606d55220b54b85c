//! `blobsync-server fsck`: checks the index against the payload files and repairs what is
//! safe to repair.
//!
//! Safe (done with `--repair`): removing temp files of cut-off uploads, removing payload files
//! no live index row points at (a crash between rename and commit; the client never got a 201
//! and retries), and recounting per-user usage. Not safe, so only reported: a live row whose
//! payload is missing or has the wrong size (tombstoning it would make every device delete its
//! copy; the owner's daemon can re-upload instead). Runs with the data dir locked, so never
//! beside a running server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::layout::{self, Found};
use crate::{DirLock, Index, ServerError};

/// What fsck found (and, with repair, fixed).
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Live index rows checked.
    pub checked: usize,
    /// Temp files of cut-off uploads (removed with repair).
    pub temp_files: Vec<PathBuf>,
    /// Payload files without a live index row (removed with repair).
    pub orphans: Vec<PathBuf>,
    /// Live rows whose payload file is missing: (user, namespace, id).
    pub missing: Vec<(String, String, String)>,
    /// Live rows whose file size differs: (path, index size, file size).
    pub wrong_size: Vec<(PathBuf, u64, u64)>,
    /// Files that are not where any blob could be (reported only).
    pub strays: Vec<PathBuf>,
    /// Users whose recorded usage was off: (user, recorded, actual) (fixed with repair).
    pub usage: Vec<(String, u64, u64)>,
    /// SQLite integrity_check complaints.
    pub integrity: Vec<String>,
    /// Whether repairs were applied.
    pub repaired: bool,
}

impl FsckReport {
    /// True when nothing is left that needs attention.
    pub fn is_clean(&self) -> bool {
        let fixed = self.repaired;
        self.missing.is_empty()
            && self.wrong_size.is_empty()
            && self.integrity.is_empty()
            && (fixed
                || (self.temp_files.is_empty() && self.orphans.is_empty() && self.usage.is_empty()))
    }

    /// Human-readable lines, one per finding, then a summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let act = if self.repaired { "removed" } else { "found" };
        for p in &self.temp_files {
            s += &format!("{act} temp file of a cut-off upload: {}\n", p.display());
        }
        for p in &self.orphans {
            s += &format!("{act} payload with no index entry: {}\n", p.display());
        }
        for (u, n, i) in &self.missing {
            s += &format!(
                "MISSING payload for indexed blob {u}/{n}/{i} (not repaired: re-upload from a device)\n"
            );
        }
        for (p, want, got) in &self.wrong_size {
            s += &format!(
                "WRONG SIZE {}: index says {want} bytes, file has {got} (not repaired)\n",
                p.display()
            );
        }
        for p in &self.strays {
            s += &format!("stray file (not a blob, left alone): {}\n", p.display());
        }
        for (u, rec, real) in &self.usage {
            let v = if self.repaired { "fixed" } else { "found" };
            s += &format!("{v} usage of {u}: recorded {rec} bytes, actual {real}\n");
        }
        for l in &self.integrity {
            s += &format!("SQLite integrity: {l}\n");
        }
        s += &format!(
            "checked {} blobs: {}\n",
            self.checked,
            if self.is_clean() {
                "clean"
            } else {
                "problems found"
            }
        );
        s
    }
}

/// Checks (and with `repair`, repairs) the data dir. Takes the data dir lock, so it fails
/// with [`ServerError::Locked`] while a server runs on it.
pub fn fsck(data_dir: &Path, repair: bool) -> Result<FsckReport, ServerError> {
    let _lock = DirLock::acquire(data_dir)?;
    let index = Index::open(data_dir)?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ServerError::Io { what, source }
    };
    let mut report = FsckReport {
        integrity: index.integrity_check()?,
        ..Default::default()
    };
    let live = index.all_live()?;
    report.checked = live.len();
    let mut want: HashMap<(String, String, String), u64> = live
        .into_iter()
        .map(|(u, n, i, s)| ((u, n, i), s))
        .collect();
    for f in layout::walk(data_dir).map_err(io("walk the data dir"))? {
        match f {
            Found::Temp(p) => report.temp_files.push(p),
            Found::Stray(p) => report.strays.push(p),
            Found::Blob {
                path,
                user,
                namespace,
                id,
                size,
            } => match want.remove(&(user, namespace, id)) {
                None => report.orphans.push(path),
                Some(s) if s != size => report.wrong_size.push((path, s, size)),
                Some(_) => {}
            },
        }
    }
    report.missing = want.into_keys().collect();
    report.missing.sort();
    report.usage = index.fix_usage(repair)?;
    if repair {
        for p in report.temp_files.iter().chain(&report.orphans) {
            std::fs::remove_file(p).map_err(io(&format!("remove {}", p.display())))?;
        }
        report.repaired = true;
    }
    Ok(report)
}
