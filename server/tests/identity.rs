//! Remote identity and authenticated tombstones, the server's half: the instance id on every
//! answer (stable for as long as the data lives, new with a new data dir), and delete proofs
//! kept with tombstones and handed back in `since` and `deleted` listings.

mod common;

use blobsync_shared::wire::{ChangeOp, ChangesResponse, DELETE_PROOF_HEADER, INSTANCE_HEADER};
use common::{TestServer, body};

fn is_instance_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[tokio::test]
async fn every_answer_names_the_instance_and_the_id_survives_a_restart() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let id = s.state.instance_id().to_owned();
    assert!(is_instance_id(&id), "{id:?}");
    // Success, errors of every kind, and the unauthenticated /healthz all carry it.
    let answers = [
        s.req("GET", "/healthz", None, body(""), &[]).await,
        s.req("GET", "/blobs/alice", None, body(""), &[]).await,
        s.get("/blobs/alice", &t).await,
        s.get("/blobs/alice/missing", &t).await,
        s.get("/blobs/bob", &t).await,
        s.get("/nowhere", &t).await,
        s.req("PATCH", "/blobs/alice/x", Some(&t), body(""), &[])
            .await,
        s.get("/blobs/alice?bogus=1", &t).await,
        s.put("/blobs/alice/x", &t, "x").await,
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200, 404, 403, 404, 405, 400, 201]);
    for r in &answers {
        assert_eq!(r.header(INSTANCE_HEADER), Some(id.as_str()), "{r:?}");
    }

    // Same data dir: same id.
    let dir = s.into_dir().await;
    let again = TestServer::start_with(|c| c.data_dir = dir.path().join("data")).await;
    let r = again.req("GET", "/healthz", None, body(""), &[]).await;
    assert_eq!(r.header(INSTANCE_HEADER), Some(id.as_str()));

    // A new data dir: a new id.
    let other = TestServer::start().await;
    let r = other.req("GET", "/healthz", None, body(""), &[]).await;
    let other_id = r.header(INSTANCE_HEADER).unwrap();
    assert!(is_instance_id(other_id));
    assert_ne!(other_id, id);
}

both_backends! {
#[tokio::test]
async fn delete_proofs_are_kept_and_listed_and_bad_ones_refused() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let proof = "0123456789abcdef".repeat(4);
    for id in ["p", "q"] {
        assert_eq!(
            s.put(&format!("/blobs/alice/{id}"), &t, "x").await.status,
            201
        );
    }

    // Malformed proofs: 400, saying what is expected, and the blob is untouched.
    for bad in [
        "0123".to_string(),
        proof.to_uppercase(),
        format!("{proof}0"),
        proof.replace('a', "g"),
        String::new(),
    ] {
        let r = s
            .req(
                "DELETE",
                "/blobs/alice/p",
                Some(&t),
                body(""),
                &[(DELETE_PROOF_HEADER, &bad)],
            )
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(r.text().contains("64 lowercase hex"), "{}", r.text());
        assert_eq!(s.get("/blobs/alice/p", &t).await.status, 200);
    }
    let before: ChangesResponse = s.get("/blobs/alice?since=0", &t).await.json();

    let r = s
        .req(
            "DELETE",
            "/blobs/alice/p",
            Some(&t),
            body(""),
            &[(DELETE_PROOF_HEADER, &proof)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.delete("/blobs/alice/q", &t).await.status, 200);

    // In since listings, from 0 and from a cursor; only on the tombstone that has one, and
    // the raw JSON has no "proof" key at all where there is none.
    for since in [0, before.seq] {
        let raw = s.get(&format!("/blobs/alice?since={since}"), &t).await;
        let ch: ChangesResponse = raw.json();
        let p = ch.changes.iter().find(|c| c.id.as_str() == "p").unwrap();
        assert_eq!(
            (p.op, p.proof.as_deref()),
            (ChangeOp::Delete, Some(proof.as_str()))
        );
        let q = ch.changes.iter().find(|c| c.id.as_str() == "q").unwrap();
        assert_eq!((q.op, q.proof.as_deref()), (ChangeOp::Delete, None));
        let v: serde_json::Value = raw.json();
        let q_raw = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "q")
            .unwrap();
        assert!(q_raw.get("proof").is_none(), "{q_raw}");
    }
    // In deleted=1&detail=1 listings.
    let v: serde_json::Value = s.get("/blobs/alice?deleted=1&detail=1", &t).await.json();
    let rows = v.as_array().unwrap();
    let p = rows.iter().find(|r| r["id"] == "p").unwrap();
    assert_eq!(p["proof"], proof.as_str());
    let q = rows.iter().find(|r| r["id"] == "q").unwrap();
    assert!(q.get("proof").is_none(), "{q}");

    // A re-put is a new blob: no proof; deleting it without one leaves none either.
    assert_eq!(s.put("/blobs/alice/p", &t, "new").await.status, 201);
    let ch: ChangesResponse = s.get("/blobs/alice?since=0", &t).await.json();
    let p = ch.changes.iter().find(|c| c.id.as_str() == "p").unwrap();
    assert_eq!((p.op, p.proof.as_deref()), (ChangeOp::Put, None));
    assert_eq!(s.delete("/blobs/alice/p", &t).await.status, 200);
    let ch: ChangesResponse = s.get("/blobs/alice?since=0", &t).await.json();
    let p = ch.changes.iter().find(|c| c.id.as_str() == "p").unwrap();
    assert_eq!((p.op, p.proof.as_deref()), (ChangeOp::Delete, None));
}
}

both_backends! {
#[tokio::test]
async fn since_listings_page_through_the_index_and_stay_consistent() {
    // Pages of 7 rows: a listing of 50 changes is written in 8 queries.
    let s = TestServer::start_with(|c| c.list_chunk = 7).await;
    let t = s.add_user("alice", None).await;
    for i in 0..50 {
        assert_eq!(
            s.put(&format!("/blobs/alice/b{i:02}"), &t, "x")
                .await
                .status,
            201
        );
    }
    let proof = "ab".repeat(32);
    let r = s
        .req(
            "DELETE",
            "/blobs/alice/b03",
            Some(&t),
            body(""),
            &[(DELETE_PROOF_HEADER, &proof)],
        )
        .await;
    assert_eq!(r.status, 200);
    let all: ChangesResponse = s.get("/blobs/alice?since=0", &t).await.json();
    assert_eq!((all.seq, all.changes.len(), all.more), (51, 50, false));
    assert!(all.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        all.changes.last().unwrap().proof.as_deref(),
        Some(proof.as_str())
    );
    // With a limit that cuts: the cursor is the last change's seq, then the rest.
    let first: ChangesResponse = s.get("/blobs/alice?since=0&limit=20", &t).await.json();
    assert_eq!((first.changes.len(), first.more), (20, true));
    assert_eq!(first.seq, first.changes.last().unwrap().seq);
    let rest: ChangesResponse = s
        .get(&format!("/blobs/alice?since={}", first.seq), &t)
        .await
        .json();
    assert_eq!((rest.changes.len(), rest.more, rest.seq), (30, false, 51));
    // A limit equal to what is there: no more.
    let exact: ChangesResponse = s.get("/blobs/alice?since=0&limit=50", &t).await.json();
    assert_eq!(
        (exact.changes.len(), exact.more, exact.seq),
        (50, false, 51)
    );
    // Plain listings page too, with and without a limit.
    let ids: Vec<String> = s.get("/blobs/alice", &t).await.json();
    assert_eq!(ids.len(), 49);
    let ids: Vec<String> = s.get("/blobs/alice?limit=30", &t).await.json();
    assert_eq!(ids.len(), 30);
    let ids: Vec<String> = s.get("/blobs/alice?limit=14", &t).await.json();
    assert_eq!(ids.len(), 14);
    // An empty namespace still answers a well-formed document.
    let none: ChangesResponse = s
        .get("/blobs/alice?since=0&namespace=empty", &t)
        .await
        .json();
    assert_eq!((none.changes.len(), none.more, none.seq), (0, false, 51));
}
}
