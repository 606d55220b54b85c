//! The wrong-key guard: a device started with a key of its own (before `blobctl key import`)
//! cannot authenticate anything its other devices wrote, and would download every blob, fail
//! it and mark it `FAILED_DOWNLOAD`. The first few downloads that fail authentication at
//! segment 0 (the first segment: a key that never matched, not a flipped byte further in)
//! stop all downloads for the run and raise one [`AlarmKind::WrongKey`] alarm.
//!
//! One tampered blob must not stop the device: it takes failures of [`DISTINCT_BLOBS`]
//! different blobs with no blob authenticated in between (a wrong key fails every blob; a
//! successful download proves the key).
//!
//! The incoming recipient is a second witness, checked before any download: it is derived
//! from the storage key, so a recipient published by another device that differs from ours
//! means our key is not theirs (see `Engine::publish_recipient`), unless a download already
//! proved our key in this run.

use std::collections::HashSet;
use std::sync::Mutex;

use blobsync_shared::{BlobId, InvalidBlob, Namespace};

use super::Shared;
use crate::events::AlarmKind;

/// Meta key set once a download authenticated with this device's key (in any run).
pub const KEY_PROVEN: &str = "key_proven";

/// Different blobs failing at segment 0, with no success between, that prove a wrong key.
pub const DISTINCT_BLOBS: usize = 2;

/// What the alarm and every refused download say.
pub const WRONG_KEY_MESSAGE: &str = "this device's key is not the one your other devices use: \
     nothing they wrote can be decrypted here, so downloads are stopped. Run `blobctl key \
     import --force FILE` with a key exported (`blobctl key export`) on another device, then \
     restart blobsyncd";

/// Blobs that failed authentication since the last one that passed.
#[derive(Debug, Default)]
pub struct KeyCheck {
    failed: Mutex<HashSet<(Namespace, BlobId)>>,
    /// A blob written by a device of this user authenticated with our key in this run.
    proven: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Whether the wrong-key alarm is in force (downloads stop until a restart).
    pub fn wrong_key(&self) -> bool {
        self.state()
            .alarms
            .contains_key(&(AlarmKind::WrongKey, None))
    }

    /// A blob authenticated with this device's key: the key is right.
    pub fn key_proven(&self) {
        let before = self
            .key_check
            .proven
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if !before {
            // Kept in the store: a later run trusts a key that once opened another device's
            // blob (see `Engine::publish_recipient`).
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.set_meta(KEY_PROVEN, Some("1".into())).await {
                    tracing::warn!(error = %e, "cannot record that the key was proven");
                }
            });
        }
        self.key_check
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether a download authenticated with our key in this run.
    pub fn key_is_proven(&self) -> bool {
        self.key_check
            .proven
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The remote's published incoming recipient is not ours: unless our key was proven,
    /// another device of this user published it with another key. Raises the alarm (downloads
    /// stop); returns whether ours may replace it (our key is proven: theirs is stale).
    pub fn foreign_recipient(&self, published: &str, ours: &str) -> bool {
        if self.key_is_proven() {
            return true;
        }
        if !self.wrong_key() {
            self.raise(
                AlarmKind::WrongKey,
                None,
                1,
                format!(
                    "{WRONG_KEY_MESSAGE} (the server's incoming recipient {published} is not \
                     derived from this device's key, whose recipient is {ours}: another device \
                     of yours published it with another key, or the server replaced it)"
                ),
            );
        }
        false
    }

    /// A download of `ns/id` failed verification with `inv`; raises the alarm once the
    /// failures say the key is wrong. Returns whether the alarm is in force.
    pub fn download_invalid(&self, ns: &Namespace, id: &BlobId, inv: &InvalidBlob) -> bool {
        if !matches!(inv, InvalidBlob::BadTag { segment: 0 }) {
            return self.wrong_key();
        }
        let n = {
            let mut f = self
                .key_check
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            f.insert((ns.clone(), id.clone()));
            f.len()
        };
        if n >= DISTINCT_BLOBS && !self.wrong_key() {
            self.raise(
                AlarmKind::WrongKey,
                None,
                n as u64,
                WRONG_KEY_MESSAGE.into(),
            );
        }
        self.wrong_key()
    }
}
