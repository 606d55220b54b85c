//! `blobsync-server fsck`: checks the index against the payload files and repairs what is
//! safe to repair.
//!
//! Safe (done with `--repair`): removing temp files of cut-off uploads, removing payload files
//! no live index row points at (a crash between rename and commit; the client never got a 201
//! and retries), and recounting per-user usage. Not safe, so only reported: a live row whose
//! payload is missing or has the wrong size (tombstoning it would make every device delete its
//! copy; the owner's daemon can re-upload instead). On `fs+sqlite` ([`fsck`]) it runs with
//! the data dir locked, so never beside a running server. On `s3+postgres` ([`check`]) the
//! nodes keep serving: an object no live row names is an orphan only once it is older than
//! `min_age` (an upload in flight has its object before its row), so repair never races an
//! upload.

use std::collections::HashMap;
use std::path::Path;

use crate::index::{IndexStore, LiveRow};
use crate::layout;
use crate::payload::{Found, PayloadStore};
use crate::{DirLock, Index, ServerError};

/// What fsck found (and, with repair, fixed).
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Live index rows checked.
    pub checked: usize,
    /// Temp files of cut-off uploads (removed with repair).
    pub temp_files: Vec<String>,
    /// Payloads (file paths, object keys) without a live index row (removed with repair).
    pub orphans: Vec<String>,
    /// Small payloads kept inside the index with no live row, as `user/namespace/id`
    /// (removed with repair).
    pub orphan_inline: Vec<String>,
    /// Objects without a live row but younger than `min_age`: maybe uploads in flight, left.
    pub young: usize,
    /// Live rows whose payload file is missing: (user, namespace, id).
    pub missing: Vec<(String, String, String)>,
    /// Live rows whose payload size differs: (path or key, index size, payload size).
    pub wrong_size: Vec<(String, u64, u64)>,
    /// Files or objects that are not where any blob could be (reported only).
    pub strays: Vec<String>,
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
                || (self.temp_files.is_empty()
                    && self.orphans.is_empty()
                    && self.orphan_inline.is_empty()
                    && self.usage.is_empty()))
    }

    /// Human-readable lines, one per finding, then a summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let act = if self.repaired { "removed" } else { "found" };
        for p in &self.temp_files {
            s += &format!("{act} temp file of a cut-off upload: {p}\n");
        }
        for p in &self.orphans {
            s += &format!("{act} payload with no index entry: {p}\n");
        }
        for b in &self.orphan_inline {
            s += &format!("{act} inline payload with no live index entry: {b}\n");
        }
        for (u, n, i) in &self.missing {
            s += &format!(
                "MISSING payload for indexed blob {u}/{n}/{i} (not repaired: re-upload from a device)\n"
            );
        }
        for (p, want, got) in &self.wrong_size {
            s += &format!(
                "WRONG SIZE {p}: index says {want} bytes, the payload has {got} (not repaired)\n"
            );
        }
        for p in &self.strays {
            s += &format!("stray file (not a blob, left alone): {p}\n");
        }
        for (u, rec, real) in &self.usage {
            let v = if self.repaired { "fixed" } else { "found" };
            s += &format!("{v} usage of {u}: recorded {rec} bytes, actual {real}\n");
        }
        if self.young > 0 {
            s += &format!(
                "{} objects without an index entry are younger than the minimum age (uploads \
                 in flight?); left alone\n",
                self.young
            );
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

/// Compares live rows with the payloads found: fills `checked`, `temp_files`, `orphans`,
/// `young`, `wrong_size`, `strays` and `missing`. A payload belongs to a live row when the row
/// names its object key, or (files) when it sits at the row's layout path.
fn compare(report: &mut FsckReport, live: Vec<LiveRow>, found: Vec<Found>, min_age: u64) {
    report.checked = live.len();
    let mut by_key: HashMap<String, (String, String, String, u64)> = HashMap::new();
    let mut by_name: HashMap<(String, String, String), u64> = HashMap::new();
    for r in live {
        if let Some(n) = r.inline {
            // Kept inside the index: nothing to find on disk (a file at its path is an orphan).
            if n != r.size {
                let what = format!("inline payload of {}/{}/{}", r.user, r.namespace, r.id);
                report.wrong_size.push((what, r.size, n));
            }
            continue;
        }
        match r.object_key {
            Some(k) => {
                by_key.insert(k, (r.user, r.namespace, r.id, r.size));
            }
            None => {
                by_name.insert((r.user, r.namespace, r.id), r.size);
            }
        }
    }
    for f in found {
        match f {
            Found::Temp(p) => report.temp_files.push(p),
            Found::Stray(p) => report.strays.push(p),
            Found::Blob {
                key,
                user,
                namespace,
                id,
                size,
                age_secs,
            } => {
                let want = by_key
                    .remove(&key)
                    .map(|r| r.3)
                    .or_else(|| by_name.remove(&(user, namespace, id)));
                match want {
                    None if age_secs < min_age => report.young += 1,
                    None => report.orphans.push(key),
                    Some(s) if s != size => report.wrong_size.push((key, s, size)),
                    Some(_) => {}
                }
            }
        }
    }
    report.missing = by_name
        .into_keys()
        .chain(by_key.into_values().map(|(u, n, i, _)| (u, n, i)))
        .collect();
    report.missing.sort();
}

/// Checks (and with `repair`, repairs) any backend pair while it serves: see the module docs
/// for `min_age` (seconds).
pub async fn check(
    index: &dyn IndexStore,
    payloads: &dyn PayloadStore,
    repair: bool,
    min_age: u64,
) -> Result<FsckReport, ServerError> {
    let io = |what: &'static str| {
        move |source| ServerError::Io {
            what: what.to_string(),
            source,
        }
    };
    let mut report = FsckReport {
        integrity: index.integrity_check().await?,
        ..Default::default()
    };
    let live = index.all_live().await?;
    let found = payloads.list().await.map_err(io("list the payloads"))?;
    compare(&mut report, live, found, min_age);
    report.usage = index.fix_usage(repair).await?;
    if repair {
        for k in report.orphans.iter().chain(&report.temp_files) {
            payloads
                .remove_found(k)
                .await
                .map_err(io("remove an orphan payload"))?;
        }
        report.repaired = true;
    }
    Ok(report)
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
    let found = layout::walk(data_dir)
        .map_err(io("walk the data dir"))?
        .into_iter()
        .map(crate::payload::fs::found_of)
        .collect();
    // The data dir is locked: no upload is in flight, so every orphan is one.
    compare(&mut report, live, found, 0);
    report.usage = index.fix_usage(repair)?;
    report.orphan_inline = index.fix_orphan_inline(repair)?;
    if repair {
        for p in report.temp_files.iter().chain(&report.orphans) {
            std::fs::remove_file(p).map_err(io(&format!("remove {p}")))?;
        }
        report.repaired = true;
    }
    Ok(report)
}
