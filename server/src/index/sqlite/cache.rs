//! What idle devices ask for most, answered from memory: each user's sequence number (with
//! their purged mark) and who owns a token. An idle device's `since` listing then costs no
//! index read and no trip to the blocking pool (issue 20, `SRV-LIST`).
//!
//! The SQLite file is not this process's alone: admin commands (`user remove`, `app remove`,
//! `purge-tombstones`) write it while the server runs, without the data dir lock. So memory
//! answers only while the index is known to be unchanged since the memory was last checked:
//! - `PRAGMA data_version` on a connection of the cache's own (`watch`) changes whenever any
//!   other connection commits, this process's writer or another process. An answer from
//!   memory needs it equal to `validated`, its value at the last check, read just before.
//! - The check ([`Cache::revalidate`]) runs whenever the writer lock is released (after every
//!   write of this process) and on a miss. The writer connection's own `data_version` changes
//!   only on commits of *other* connections (our readers never write): if it did, another
//!   process wrote and the memory is dropped; if not, every commit since is this process's,
//!   and each of those forgot what it changed, under the writer lock, before it answered.
//! - A read that fills the memory carries the generation it started in, and is not kept if a
//!   write forgot something in between (it may have read the state before that write).
//!
//! PostgreSQL (many nodes on one database) has no such cache: another node's commit is not
//! visible to this one without a query.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use crate::index::Principal;

/// Most users, and most tokens, kept; past it the memory starts over (a bound on RSS, not
/// an eviction policy: 65,536 entries are a few MiB).
const MAX_ENTRIES: usize = 65_536;

#[derive(Default)]
struct State {
    /// `watch`'s `data_version` at the last check that found no foreign commit.
    validated: Option<i64>,
    /// The writer connection's `data_version` at the last check.
    writer_version: Option<i64>,
    /// Bumped by every forget: fills started before it are not kept.
    generation: u64,
    /// User -> (seq, purged_seq).
    heads: HashMap<String, (u64, u64)>,
    /// Token hash -> owner.
    principals: HashMap<[u8; 32], Principal>,
}

/// See the module docs.
pub(super) struct Cache {
    /// None when it could not be opened: then nothing is answered from memory.
    watch: Mutex<Option<Connection>>,
    state: Mutex<State>,
}

fn data_version(c: &Connection) -> rusqlite::Result<i64> {
    c.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

impl Cache {
    /// A cache over the index file at `path` (opens its watch connection).
    pub(super) fn open(path: &Path) -> Self {
        // Opened after the writer (the file is WAL already); it only ever reads. It is asked
        // on async worker threads, so it must never wait: a busy index (a WAL recovery) is a
        // miss, and the caller reads the index the usual way.
        let watch = Connection::open(path)
            .and_then(|c| c.busy_timeout(std::time::Duration::ZERO).map(|()| c));
        if let Err(e) = &watch {
            tracing::warn!(error = %e, "index cache disabled: cannot open its connection");
        }
        Self {
            watch: Mutex::new(watch.ok()),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch_version(&self) -> Option<i64> {
        let w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        data_version(w.as_ref()?).ok()
    }

    /// The memory, if the index has not changed since it was checked.
    fn valid(&self) -> Option<MutexGuard<'_, State>> {
        let v = self.watch_version()?;
        let s = self.state();
        (s.validated == Some(v)).then_some(s)
    }

    /// The user's (seq, purged_seq), if known and current.
    pub(super) fn head(&self, user: &str) -> Option<(u64, u64)> {
        self.valid()?.heads.get(user).copied()
    }

    /// The token's owner, if known and current. Unknown tokens are never remembered.
    pub(super) fn principal(&self, token_hash: &[u8]) -> Option<Principal> {
        let key: [u8; 32] = token_hash.try_into().ok()?;
        self.valid()?.principals.get(&key).cloned()
    }

    /// The generation to pass to a fill, taken before its read.
    pub(super) fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Keeps a head read in generation `generation`.
    pub(super) fn fill_head(&self, generation: u64, user: &str, head: (u64, u64)) {
        let mut s = self.state();
        if s.generation == generation {
            if s.heads.len() >= MAX_ENTRIES {
                s.heads.clear();
            }
            s.heads.insert(user.to_owned(), head);
        }
    }

    /// Keeps a token's owner read in generation `generation`.
    pub(super) fn fill_principal(&self, generation: u64, token_hash: &[u8], p: &Principal) {
        let Ok(key) = <[u8; 32]>::try_from(token_hash) else {
            return;
        };
        let mut s = self.state();
        if s.generation == generation {
            if s.principals.len() >= MAX_ENTRIES {
                s.principals.clear();
            }
            s.principals.insert(key, p.clone());
        }
    }

    /// A write of this process changed `user`'s sequence number: called under the writer
    /// lock, after the commit (or its failure), before the writer answers anyone.
    pub(super) fn forget_user(&self, user: &str) {
        let mut s = self.state();
        s.generation += 1;
        s.heads.remove(user);
    }

    /// A write of this process changed users, tokens or purge marks: forget everything.
    pub(super) fn forget_all(&self) {
        let mut s = self.state();
        s.generation += 1;
        s.heads.clear();
        s.principals.clear();
    }

    /// The check of the module docs; `writer` is the writer connection, whose lock the caller
    /// holds. Order matters: `watch` first, then `writer`, so a foreign commit between the
    /// two is seen by the second and drops the memory.
    pub(super) fn revalidate(&self, writer: &Connection) {
        let watched = self.watch_version();
        let written = data_version(writer).ok();
        let mut s = self.state();
        match (watched, written) {
            (Some(w), Some(d)) => {
                if s.writer_version != Some(d) {
                    // Another process committed (or this is the first check).
                    s.generation += 1;
                    s.heads.clear();
                    s.principals.clear();
                    s.writer_version = Some(d);
                }
                s.validated = Some(w);
            }
            _ => s.validated = None,
        }
    }
}
