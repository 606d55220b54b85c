//! A simulated device: the daemon's real store (an in-memory SQLite with the real
//! migrations), its listing cursor and the server instance it last synced with.

use super::*;

pub(crate) struct Device {
    pub(crate) conn: Connection,
    pub(crate) cursor: Option<u64>,
    /// The server instance this device synced with (a change resets its cursor).
    pub(crate) instance: u32,
    /// Ids this device ever had SYNCED (they must never be uploaded again).
    pub(crate) ever_synced: HashSet<String>,
}

impl Device {
    pub(crate) fn new() -> Device {
        let mut conn = Connection::open_in_memory().expect("in-memory SQLite");
        schema::migrate(&mut conn).expect("migrations apply to an empty database");
        Device {
            conn,
            cursor: None,
            instance: 0,
            ever_synced: HashSet::new(),
        }
    }

    pub(crate) fn rows(&self, ns: &Namespace) -> Vec<BlobInfo> {
        ops::namespace_rows(&self.conn, ns).expect("read rows")
    }

    pub(crate) fn row(&self, ns: &Namespace, id: &BlobId) -> Option<BlobInfo> {
        ops::get(&self.conn, ns, id).expect("read row")
    }

    pub(crate) fn note_synced(&mut self, ns: &Namespace) {
        for r in self.rows(ns) {
            if r.status == Status::Synced {
                self.ever_synced.insert(r.id.to_string());
            }
        }
    }
}
