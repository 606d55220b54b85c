//! Convergence checks shared by every multi-device scenario.
//!
//! "Converged" means: every device lists the same set of blobs as the model, all `SYNCED`;
//! each device serves byte-identical content (SHA-256) through `blobctl get`; the server lists
//! exactly the model's ids and its stored ciphertext decrypts, with the user's key, to the same
//! plaintext; and no half-written temp file is left on any device or on the server.
//! This module only observes (through `blobctl`, HTTP and the server's payload files); it never
//! changes state except nudging daemons with `blobctl sync`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use blobsync_shared::{BlobId, Namespace};

use crate::ctl::BlobRow;
use crate::daemon::DaemonProc;
use crate::error::IoContext;
use crate::server::ServerProc;
use crate::wait::{Poll, scaled, wait_until};
use crate::{HarnessError, Result, find_temp_files};

/// A blob's address: `(namespace, id)`.
pub type BlobKey = (String, String);

/// What the test believes the synced state is: address -> SHA-256 of the plaintext.
pub type Model = BTreeMap<BlobKey, String>;

/// The server side of a convergence check: which server, whose blobs, and the key to decrypt.
pub struct ServerView<'a> {
    /// The server.
    pub server: &'a ServerProc,
    /// The user's name.
    pub user: &'a str,
    /// The user's token.
    pub token: &'a str,
    /// The user's storage key file.
    pub key_file: &'a Path,
}

fn diverged(detail: String) -> HarnessError {
    HarnessError::protocol("convergence check", detail)
}

/// Summarises one device's rows for messages: counts per status plus a few non-synced rows.
pub fn describe_rows(rows: &[BlobRow]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(r.status.as_str()).or_default() += 1;
    }
    let odd: Vec<String> = rows
        .iter()
        .filter(|r| r.status != "SYNCED")
        .take(5)
        .map(|r| {
            format!(
                "{}/{} {} attempts={} err={:?}",
                r.namespace, r.id, r.status, r.attempts, r.last_error
            )
        })
        .collect();
    format!("{counts:?} {odd:?}")
}

/// Waits (up to `timeout`, scaled) until `d`'s `ls` satisfies `done`; returns those rows.
/// The rows are shown if it times out. It does not nudge the daemon: the test sees what its
/// own cycles do.
pub fn wait_for_rows(
    d: &DaemonProc,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[BlobRow]) -> bool,
) -> Result<Vec<BlobRow>> {
    wait_until(what, scaled(timeout), || {
        let rows = d.ctl().ls()?;
        Ok(if done(&rows) {
            Poll::Ready(rows)
        } else {
            Poll::Pending(describe_rows(&rows))
        })
    })
}

/// [`wait_for_rows`] that also asks for a cycle (`blobctl sync`) on every poll.
pub fn wait_for_rows_nudging(
    d: &DaemonProc,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[BlobRow]) -> bool,
) -> Result<Vec<BlobRow>> {
    wait_for_rows(d, what, timeout, |rows| {
        let ok = done(rows);
        if !ok {
            let _ = d.ctl().run(&["sync"]);
        }
        ok
    })
}

/// Whether `rows` hold `id` (any namespace) in `status`.
pub fn has(rows: &[BlobRow], id: &str, status: &str) -> bool {
    rows.iter().any(|r| r.id == id && r.status == status)
}

/// Waits until every device lists exactly `expected` (if given; else the same set on all
/// devices), all `SYNCED`. Nudges each daemon with `blobctl sync` while waiting.
pub fn wait_all_synced(
    devices: &[&DaemonProc],
    expected: Option<&BTreeSet<BlobKey>>,
    timeout: Duration,
) -> Result<Vec<Vec<BlobRow>>> {
    let mut polls = 0u32;
    wait_until(
        "every device to list the same blobs, all SYNCED",
        scaled(timeout),
        || {
            polls += 1;
            let mut all = Vec::new();
            let mut problems = Vec::new();
            let mut first_set: Option<BTreeSet<BlobKey>> = None;
            for d in devices {
                let rows = d.ctl().ls()?;
                let set: BTreeSet<BlobKey> = rows
                    .iter()
                    .map(|r| (r.namespace.clone(), r.id.clone()))
                    .collect();
                if set.len() != rows.len() {
                    problems.push(format!("{}: duplicate rows", d.name()));
                }
                let want = expected.or(first_set.as_ref());
                if let Some(want) = want
                    && &set != want
                {
                    let missing: Vec<_> = want.difference(&set).take(5).collect();
                    let extra: Vec<_> = set.difference(want).take(5).collect();
                    problems.push(format!(
                        "{}: {} blobs, missing {missing:?}, extra {extra:?}",
                        d.name(),
                        set.len()
                    ));
                }
                if rows.iter().any(|r| r.status != "SYNCED") {
                    problems.push(format!("{}: {}", d.name(), describe_rows(&rows)));
                }
                if first_set.is_none() {
                    first_set = Some(set);
                }
                all.push(rows);
            }
            if problems.is_empty() {
                return Ok(Poll::Ready(all));
            }
            // Every few polls, ask for a cycle instead of waiting for the interval.
            if polls % 10 == 1 {
                for d in devices {
                    let _ = d.ctl().run(&["sync"]);
                }
            }
            Ok(Poll::Pending(problems.join("; ")))
        },
    )
}

/// Full convergence check against `model`: see the module docs.
pub fn assert_converged(
    devices: &[&DaemonProc],
    server: Option<&ServerView<'_>>,
    model: &Model,
    timeout: Duration,
) -> Result<()> {
    assert_converged_with(devices, server, model, timeout, true)
}

/// [`assert_converged`], where `strict_partials = false` tolerates leftover partial
/// downloads (`tmp/part.*`) of blobs *not* in the model (deleted elsewhere mid-download) and
/// only reports them on stderr: for investigating, never for a committed scenario.
pub fn assert_converged_with(
    devices: &[&DaemonProc],
    server: Option<&ServerView<'_>>,
    model: &Model,
    timeout: Duration,
    strict_partials: bool,
) -> Result<()> {
    let expected: BTreeSet<BlobKey> = model.keys().cloned().collect();
    wait_all_synced(devices, Some(&expected), timeout)?;
    for d in devices {
        let out = d.dir().join("converge-check.out");
        for ((ns, id), sha) in model {
            d.ctl().get_to(id, ns, &out)?;
            let got = crate::digest::sha256_file(&out)?;
            if &got != sha {
                return Err(diverged(format!(
                    "{}: {ns}/{id} has sha256 {got}, want {sha}",
                    d.name()
                )));
            }
        }
        let _ = std::fs::remove_file(&out);
        let mut temps = stray_files(d.data_dir());
        if !strict_partials {
            let (orphans, rest): (Vec<_>, Vec<_>) =
                temps.into_iter().partition(|p| is_orphan_partial(p, model));
            if !orphans.is_empty() {
                eprintln!(
                    "{}: tolerated orphan partial downloads: {orphans:?}",
                    d.name()
                );
            }
            temps = rest;
        }
        if !temps.is_empty() {
            return Err(diverged(format!(
                "{}: temp files left: {temps:?}",
                d.name()
            )));
        }
    }
    if let Some(view) = server {
        check_server(view, model)?;
    }
    Ok(())
}

/// The server lists exactly the model's ids per namespace and each payload decrypts to the
/// model's plaintext.
pub fn check_server(view: &ServerView<'_>, model: &Model) -> Result<()> {
    let key = blobsync_shared::keyfile::load_key_file(view.key_file)
        .map_err(|e| diverged(format!("load key {}: {e}", view.key_file.display())))?;
    let mut namespaces: BTreeSet<String> = model.keys().map(|(ns, _)| ns.clone()).collect();
    namespaces.insert("default".into());
    for ns in &namespaces {
        let mut ids = view.server.list_ids(view.token, view.user, ns)?;
        ids.sort();
        let want: Vec<String> = model
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, id)| id.clone())
            .collect();
        if ids != want {
            let got: BTreeSet<&String> = ids.iter().collect();
            let wanted: BTreeSet<&String> = want.iter().collect();
            return Err(diverged(format!(
                "server {}/{ns}: missing {:?}, extra {:?}",
                view.user,
                wanted.difference(&got).take(5).collect::<Vec<_>>(),
                got.difference(&wanted).take(5).collect::<Vec<_>>(),
            )));
        }
    }
    for ((ns, id), sha) in model {
        let path = view.server.blob_path(view.user, ns, id);
        let got = match view.server.inline_payload(view.user, ns, id)? {
            Some(b) if !path.exists() => {
                decrypt_read_sha256(&key, ns, id, &format!("inline {ns}/{id}"), &b[..])?
            }
            _ => decrypt_sha256(&key, ns, id, &path)?,
        };
        if &got != sha {
            return Err(diverged(format!(
                "server copy of {ns}/{id} decrypts to sha256 {got}, want {sha}"
            )));
        }
    }
    let temps = find_temp_files(view.server.data_dir());
    if !temps.is_empty() {
        return Err(diverged(format!("server: temp files left: {temps:?}")));
    }
    Ok(())
}

/// A `Write` that hashes what passes through.
struct HashSink(ring::digest::Context);

impl Write for HashSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 of the plaintext of a stored blob file, decrypted (and authenticated) as
/// `ns`/`id` with `key`. Streams; never holds the blob.
pub fn decrypt_sha256(
    key: &blobsync_shared::StorageKey,
    ns: &str,
    id: &str,
    stored: &Path,
) -> Result<String> {
    let f = std::fs::File::open(stored).ctx(|| format!("open {}", stored.display()))?;
    decrypt_read_sha256(key, ns, id, &stored.display().to_string(), f)
}

/// [`decrypt_sha256`] of stored bytes from any reader; `what` names them in errors.
pub fn decrypt_read_sha256(
    key: &blobsync_shared::StorageKey,
    ns: &str,
    id: &str,
    what: &str,
    mut f: impl std::io::Read,
) -> Result<String> {
    let ns = Namespace::new(ns).map_err(|e| diverged(format!("namespace {ns:?}: {e}")))?;
    let bid = BlobId::new(id).map_err(|e| diverged(format!("id {id:?}: {e}")))?;
    let mut w = blobsync_shared::codec::DecryptWriter::new(
        key,
        &ns,
        &bid,
        HashSink(ring::digest::Context::new(&ring::digest::SHA256)),
    );
    std::io::copy(&mut f, &mut w).ctx(|| format!("decrypt {what}"))?;
    let (_, sink) = w
        .finish()
        .map_err(|e| diverged(format!("{what} does not decrypt: {e}")))?;
    Ok(hex::encode(sink.0.finish()))
}

/// Half-written files under a daemon's data dir: temp-looking names anywhere (see
/// [`find_temp_files`]) plus every file in its `tmp/` dir (puts in progress, partial
/// downloads), which a converged, idle daemon must have emptied.
pub fn stray_files(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = find_temp_files(data_dir);
    if let Ok(entries) = std::fs::read_dir(data_dir.join("tmp")) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `p` is a partial download (`part.{ns}.{id}`) of a blob that is not in `model`.
fn is_orphan_partial(p: &Path, model: &Model) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(rest) = name.strip_prefix("part.") else {
        return false;
    };
    let Some((ns, id)) = rest.split_once('.') else {
        return false;
    };
    !model.contains_key(&(ns.to_string(), id.to_string()))
}
