//! `import-soledad DIR`: copies a Soledad server's blobs directory
//! (`{DIR}/{uuid}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}`, flags in `{id}.flags`) into
//! this server's layout and index, for users that already exist here (`user add UUID`).
//!
//! Blobs keep their bytes (Soledad's encryption: Soledad clients read them as before,
//! blobsyncd lists them as a foreign format) and flags; their creation time is the import's.
//! Tombstones (`{id}.deleted`) are not imported: they carry no delete proof, and a blob absent
//! here is simply absent. An id that exists here already is left alone. Run it with the
//! server stopped; it may be run again (what is there is skipped).

use std::path::{Path, PathBuf};

use blobsync_shared::wire::Flag;
use blobsync_shared::{BlobId, Namespace};

use crate::index::{self, Index, PendingPut, PutOutcome};
use crate::layout::Layout;

/// Blobs committed per transaction.
const BATCH: usize = 200;

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Blobs stored.
    pub imported: u64,
    /// Ids that were here already.
    pub existing: u64,
    /// `.deleted` files left out.
    pub tombstones: u64,
    /// Things not imported, each with why.
    pub skipped: Vec<String>,
}

impl ImportReport {
    /// The report as lines for the operator.
    pub fn render(&self) -> String {
        let mut s = format!(
            "imported {} blobs; {} already here; {} Soledad tombstones not imported\n",
            self.imported, self.existing, self.tombstones
        );
        for k in &self.skipped {
            s.push_str(&format!("skipped: {k}\n"));
        }
        s
    }
}

fn dirs(p: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p)? {
        let e = e?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// Every regular file under `p`, recursively.
fn files(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            files(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn read_flags(blob: &Path) -> Result<i64, String> {
    let mut p = blob.as_os_str().to_owned();
    p.push(".flags");
    let raw = match std::fs::read(&p) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read its flags: {e}")),
    };
    let names: Vec<String> =
        serde_json::from_slice(&raw).map_err(|e| format!("its .flags is not a JSON list: {e}"))?;
    let flags = names
        .iter()
        .map(|n| n.parse::<Flag>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("its .flags: {e}"))?;
    Ok(index::flags_to_bits(&flags))
}

/// Imports Soledad's blobs directory `src` into `index` and `layout` (see the module docs).
pub fn import_soledad(
    index: &Index,
    layout: &Layout,
    src: &Path,
) -> Result<ImportReport, anyhow::Error> {
    let mut report = ImportReport::default();
    for (user, user_dir) in dirs(src)? {
        if !user_dir.is_dir() {
            continue;
        }
        if Namespace::new(user.as_str()).is_err() || !index.user_exists(&user)? {
            report.skipped.push(format!(
                "{}: no user {user:?} here (create it with `blobsync-server user add {user}`, \
                 then import again)",
                user_dir.display()
            ));
            continue;
        }
        for (ns_name, ns_dir) in dirs(&user_dir)? {
            if !ns_dir.is_dir() {
                continue;
            }
            let Ok(ns) = Namespace::new(ns_name.as_str()) else {
                report
                    .skipped
                    .push(format!("{}: not a valid namespace name", ns_dir.display()));
                continue;
            };
            let mut all = Vec::new();
            files(&ns_dir, &mut all)?;
            all.sort();
            let mut batch = Vec::new();
            for path in all {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.ends_with(".flags") {
                    continue;
                }
                if name.ends_with(".deleted") {
                    report.tombstones += 1;
                    continue;
                }
                let Ok(id) = BlobId::new(name.as_str()) else {
                    report
                        .skipped
                        .push(format!("{}: not a valid blob id", path.display()));
                    continue;
                };
                let flags = match read_flags(&path) {
                    Ok(f) => f,
                    Err(why) => {
                        report.skipped.push(format!("{}: {why}", path.display()));
                        continue;
                    }
                };
                let temp = layout.temp_path(&user, &ns, &id);
                if let Some(d) = temp.parent() {
                    std::fs::create_dir_all(d)?;
                }
                // The commit makes the batch's files durable together.
                let size = std::fs::copy(&path, &temp)?;
                batch.push(PendingPut {
                    id,
                    size,
                    staged: crate::payload::Staged::File(temp),
                    external: false,
                    age_sha256: None,
                    flags,
                    if_absent_since: None,
                });
                if batch.len() >= BATCH {
                    commit(
                        index,
                        layout,
                        &user,
                        &ns,
                        std::mem::take(&mut batch),
                        &mut report,
                    )?;
                }
            }
            commit(index, layout, &user, &ns, batch, &mut report)?;
        }
    }
    Ok(report)
}

fn commit(
    index: &Index,
    layout: &Layout,
    user: &str,
    ns: &Namespace,
    batch: Vec<PendingPut>,
    report: &mut ImportReport,
) -> Result<(), anyhow::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let ids: Vec<BlobId> = batch.iter().map(|p| p.id.clone()).collect();
    // No default quota: the operator moves what Soledad held (a user's own quota still holds).
    for (id, out) in ids
        .iter()
        .zip(index.commit_puts(user, ns, batch, None, layout)?)
    {
        match out {
            PutOutcome::Created(_) => report.imported += 1,
            PutOutcome::Exists => report.existing += 1,
            PutOutcome::OverQuota => report
                .skipped
                .push(format!("{user}/{ns}/{id}: over {user}'s quota")),
            PutOutcome::DeletedAfter(_) => report
                .skipped
                .push(format!("{user}/{ns}/{id}: deleted here meanwhile")),
        }
    }
    Ok(())
}
