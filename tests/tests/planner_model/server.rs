//! The simulated server of the model: live blobs and tombstones with sequence numbers, the
//! model's delete proofs, and the changes a listing `since` a sequence number returns. Its
//! tombstones keep the deleted blob's size, as the real server's do.

use super::*;

/// The simulated server: live blobs and tombstones with sequence numbers.
#[derive(Default, Debug)]
pub(crate) struct Server {
    pub(crate) seq: u64,
    /// id -> (seq, size, uploader, header salt of the stored version)
    pub(crate) live: BTreeMap<String, (u64, u64, usize, Salt)>,
    /// id -> (seq of the delete, size of the deleted copy, uploader of the deleted copy, its
    /// salt, the delete proof sent with it). The real server's tombstone keeps the size and
    /// the proof; the proof names the deleted version's salt.
    pub(crate) dead: BTreeMap<String, (u64, u64, usize, Salt, Option<String>)>,
    /// Bumped when the server is replaced by an empty one (a new instance id).
    pub(crate) instance: u32,
}

pub(crate) type Salt = [u8; 32];

/// The model's delete proof: the real one is an HMAC under the storage key over the version's
/// salt (unit-tested in `shared::tombstone`); here it is the salt itself, which a forging
/// server in this model never sends.
pub(crate) fn proof_of(salt: &Salt) -> String {
    hex::encode(salt)
}

pub(crate) fn proven(l: &BlobInfo, c: &Change) -> bool {
    l.upload_salt
        .is_some_and(|s| c.proof.as_deref() == Some(proof_of(&s).as_str()))
}

impl Server {
    pub(crate) fn put(&mut self, id: &str, size: u64, who: usize, salt: Salt) -> Result<(), Salt> {
        if let Some((_, _, _, theirs)) = self.live.get(id) {
            return Err(*theirs);
        }
        self.seq += 1;
        self.dead.remove(id);
        self.live
            .insert(id.to_string(), (self.seq, size, who, salt));
        Ok(())
    }

    /// A delete as a device (or a forging server, with `proof` None) makes it.
    pub(crate) fn delete(&mut self, id: &str, proof: Option<String>) -> bool {
        match self.live.remove(id) {
            Some((_, size, who, salt)) => {
                self.seq += 1;
                self.dead
                    .insert(id.to_string(), (self.seq, size, who, salt, proof));
                true
            }
            None => false,
        }
    }

    /// The server loses a blob: no tombstone at all (a restore from an old backup).
    pub(crate) fn lose(&mut self, id: &str) {
        self.live.remove(id);
    }

    /// The latest state of each id changed after `since`, ascending seq (the `since` listing).
    pub(crate) fn changes_since(&self, since: u64) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .live
            .iter()
            .filter(|(_, (s, _, _, _))| *s > since)
            .map(|(id, (s, size, _, _))| change(id, ChangeOp::Put, *size, *s))
            .chain(
                self.dead
                    .iter()
                    .filter(|(_, (s, _, _, _, _))| *s > since)
                    .map(|(id, (s, size, _, _, proof))| Change {
                        proof: proof.clone(),
                        ..change(id, ChangeOp::Delete, *size, *s)
                    }),
            )
            .collect();
        out.sort_by_key(|c| c.seq);
        out
    }
}

pub(crate) fn change(id: &str, op: ChangeOp, size: u64, seq: u64) -> Change {
    Change {
        id: BlobId::new(id).expect("generated ids are valid"),
        op,
        size,
        created: 1_700_000_000,
        seq,
        external: false,
        proof: None,
    }
}
