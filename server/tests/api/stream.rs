//! `/stream`: a thousand small blobs up and down in one request each, and a good stream with
//! one blob over the max size (that one refused, the others stored, no temp file left).

use super::*;

both_backends! {
#[tokio::test]
async fn stream_up_and_down_1000_small_blobs() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let blobs: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            (
                format!("blob{i:04}"),
                format!("payload {i} ").repeat(i % 50).into_bytes(),
            )
        })
        .collect();
    s.put("/blobs/alice/blob0007", &t, "taken").await;
    let r = s
        .post("/stream/alice?direction=upload", &t, stream_body(&blobs))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status: BTreeMap<String, u16> = r.json();
    assert_eq!(status.len(), 1000);
    assert_eq!(status["blob0007"], 409);
    assert_eq!(status.values().filter(|c| **c == 201).count(), 999);

    let mut ids: Vec<String> = blobs.iter().map(|(i, _)| i.clone()).collect();
    ids.insert(500, "absent".into());
    let r = s
        .post(
            "/stream/alice?direction=download",
            &t,
            serde_json::to_vec(&ids).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = decode_frames(&r.body);
    assert_eq!(frames.len(), 1001);
    assert_eq!(frames[500], ("absent".to_string(), None));
    for (i, (fid, data)) in frames.iter().enumerate().filter(|(i, _)| *i != 500) {
        let j = if i > 500 { i - 1 } else { i };
        assert_eq!(fid, &blobs[j].0);
        if fid == "blob0007" {
            assert_eq!(data.as_deref(), Some(&b"taken"[..]));
        } else {
            assert_eq!(data.as_deref(), Some(&blobs[j].1[..]), "{fid}");
        }
    }
    // Uploads through /stream are ordinary blobs: GET and since see them.
    assert_eq!(
        &s.get("/blobs/alice/blob0003", &t).await.body[..],
        &blobs[3].1[..]
    );
    let ch: ChangesResponse = s.get("/blobs/alice?since=1", &t).await.json();
    assert_eq!(ch.changes.len(), 999);
}
}

/// The malformed streams of this node's old table (truncated, trailing bytes, bad header,
/// bad id, duplicate id, a download of a bad id) are rows of `tests/tests/http_bad_input.rs`.
#[tokio::test]
async fn a_stream_with_a_blob_over_max_size_stores_the_others_and_leaves_no_temp_file() {
    let s = TestServer::start_with(|c| c.max_blob_size = 100).await;
    let t = s.add_user("alice", None).await;
    // Per-blob limits inside a good stream: 413 for the big one, the rest stored.
    let b = stream_body(&[("small".into(), vec![1; 10]), ("huge".into(), vec![2; 101])]);
    let st: BTreeMap<String, u16> = s.post("/stream/alice?direction=upload", &t, b).await.json();
    assert_eq!((st["small"], st["huge"]), (201, 413));
    assert_eq!(
        s.get("/blobs/alice", &t).await.json::<Vec<String>>(),
        ["small"]
    );
    // No temp file is left behind by any of it.
    let dir = s.into_dir().await;
    let report = blobsync_server::fsck::fsck(&dir.path().join("data"), false).unwrap();
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(report.checked, 1);
}

/// A `/stream` upload holds its small payloads in memory until its one commit, so it keeps at
/// most 1 MiB of them inline; the rest of its small blobs are files. All read back alike.
#[tokio::test]
async fn a_stream_of_many_small_blobs_keeps_a_bounded_share_inline() {
    let s = TestServer::start().await;
    let t = s.add_user("alice", None).await;
    let size = blobsync_server::payload::INLINE_MAX;
    let blobs: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("s{i:03}"), vec![(i % 251) as u8; size]))
        .collect();
    let st: BTreeMap<String, u16> = s
        .post("/stream/alice?direction=upload", &t, stream_body(&blobs))
        .await
        .json();
    assert!(st.values().all(|c| *c == 201), "{st:?}");
    let inline = blobs
        .iter()
        .filter(|(i, _)| s.inline_payload("alice", "default", i).is_some())
        .count();
    let files = blobs
        .iter()
        .filter(|(i, _)| {
            s.data_dir()
                .join(format!("alice/default/s/{}/{i}", &i[..3]))
                .exists()
        })
        .count();
    // 256 x 4 KiB fill the 1 MiB; each blob is one or the other.
    assert_eq!((inline, files), (256, 44));
    for (i, b) in &blobs {
        assert_eq!(
            &s.get(&format!("/blobs/alice/{i}"), &t).await.body[..],
            &b[..]
        );
    }
    let dir = s.into_dir().await;
    let report = blobsync_server::fsck::fsck(&dir.path().join("data"), false).unwrap();
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(report.checked, 300);
}
