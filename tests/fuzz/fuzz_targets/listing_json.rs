//! Fuzzes the listing JSON the daemon parses from the server: the incremental `since`
//! listing (`ChangesResponse`), the `detail=1` listing, counts and plain id lists. Nothing may
//! panic, and whatever parses must hold only valid ids (validation is part of parsing) and
//! survive a serialize/parse round trip unchanged.
#![no_main]

use blobsync_shared::BlobId;
use blobsync_shared::wire::{BlobDetail, ChangesResponse, CountResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<ChangesResponse>(data) {
        for c in &r.changes {
            assert!(BlobId::new(c.id.as_str()).is_ok());
        }
        let again: ChangesResponse =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
    if let Ok(v) = serde_json::from_slice::<Vec<BlobDetail>>(data) {
        let again: Vec<BlobDetail> = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(again, v);
    }
    let _ = serde_json::from_slice::<CountResponse>(data);
    if let Ok(ids) = serde_json::from_slice::<Vec<BlobId>>(data) {
        for id in &ids {
            assert!(BlobId::new(id.as_str()).is_ok());
        }
    }
});
