//! The incoming box of a `file://` remote: the published recipient in
//! `{root}/{user}/.incoming_recipient`, and the adoption of a delivery (an `external` blob,
//! written into the folder by a test or a local delivery tool) by conditional replace. The
//! folder keeps no hashes: the stored file is hashed under the lock, which costs a read of
//! one small message.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use blobsync_shared::incoming::looks_like_age;
use blobsync_shared::wire::ChangeOp;

use super::{DirRemote, LogLine, RemoteError};

impl DirRemote {
    pub(super) fn recipient_path(&self) -> PathBuf {
        self.root.join(".incoming_recipient")
    }

    pub(super) fn read_recipient(&self) -> Result<Option<String>, RemoteError> {
        match fs::read_to_string(self.recipient_path()) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn write_recipient(&self, recipient: &str) -> Result<(), RemoteError> {
        self.locked(|me, _| {
            let temp = me.temp_path();
            fs::write(&temp, format!("{recipient}\n"))?;
            File::open(&temp)?.sync_all()?;
            fs::rename(&temp, me.recipient_path())?;
            Ok(())
        })
    }

    /// Replaces the external blob `ns/id` with `temp` if its stored bytes are the age file
    /// hashing to `age_sha256`: one new change-log line, still `external`, flags kept.
    pub(super) fn commit_replace(
        &self,
        ns: &str,
        id: &str,
        temp: &Path,
        size: u64,
        age_sha256: &[u8; 32],
    ) -> Result<Option<u64>, RemoteError> {
        let out = self.locked(|me, cache| {
            let Some(live) = Self::is_live(cache, ns, id) else {
                return Err(RemoteError::NotFound);
            };
            let dest = me.blob_path(ns, id);
            let not_it = || {
                RemoteError::NotTheDelivery(format!(
                    "blob {id} in namespace {ns} is not the age file with SHA-256 {}",
                    hex::encode(age_sha256)
                ))
            };
            if !live.external || !is_age_file_with(&dest, age_sha256)? {
                return Err(not_it());
            }
            fs::rename(temp, &dest)?;
            if let Some(dir) = dest.parent() {
                File::open(dir)?.sync_all()?;
            }
            me.append(
                cache,
                LogLine {
                    seq: 0,
                    ns: ns.to_owned(),
                    id: id.to_owned(),
                    op: ChangeOp::Put,
                    size,
                    created: live.created,
                    external: true,
                    proof: None,
                },
            )?;
            Ok(Some(cache.seq))
        });
        if out.is_err() {
            let _ = fs::remove_file(temp);
        }
        out
    }
}

/// Whether the file at `path` is an age file whose SHA-256 is `want`.
fn is_age_file_with(path: &Path, want: &[u8; 32]) -> Result<bool, RemoteError> {
    let mut f = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first && !looks_like_age(&buf[..n.min(22)]) {
            return Ok(false);
        }
        first = false;
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref() == want)
}
