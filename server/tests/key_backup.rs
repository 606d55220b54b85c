//! Key backup on the server (`/keys/{user}/storage`): opaque bytes for the user's own token,
//! written only under a precondition, so two devices can't overwrite each other blindly.

mod common;

use common::{TestServer, body};

const PATH: &str = "/keys/alice/storage";

fn etag(r: &common::Resp) -> String {
    r.headers
        .get("etag")
        .expect("an ETag header")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_backup_is_created_once_and_replaced_only_with_the_etag_read() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None);

    let r = s.get(PATH, &alice).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("blobctl key backup"), "{}", r.text());

    // No precondition: refused, nothing stored.
    let r = s.put(PATH, &alice, "wrapped-1").await;
    assert_eq!(r.status, 428, "{}", r.text());
    assert!(r.text().contains("If-None-Match"), "{}", r.text());
    assert_eq!(s.get(PATH, &alice).await.status, 404);

    // Replacing what doesn't exist is a conflict too.
    let put = |data: &'static str, h: (&'static str, String)| {
        let s = &s;
        let alice = alice.clone();
        async move {
            s.req(
                "PUT",
                PATH,
                Some(&alice),
                body(data),
                &[(h.0, h.1.as_str())],
            )
            .await
        }
    };
    let r = put("wrapped-1", ("if-match", "\"00ff\"".into())).await;
    assert_eq!(r.status, 412, "{}", r.text());

    let r = put("wrapped-1", ("if-none-match", "*".into())).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let tag1 = etag(&r);
    let r = s.get(PATH, &alice).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"wrapped-1");
    assert_eq!(etag(&r), tag1);

    // A second "first backup" (another device) loses, and learns the current tag.
    let r = put("wrapped-2", ("if-none-match", "*".into())).await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(etag(&r), tag1);

    let r = put("wrapped-2", ("if-match", tag1.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tag2 = etag(&r);
    assert_ne!(tag1, tag2);

    // The device still holding tag1 can't overwrite the newer backup.
    let r = put("wrapped-3", ("if-match", tag1.clone())).await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(r.text().contains("fetch it again"), "{}", r.text());
    assert_eq!(&s.get(PATH, &alice).await.body[..], b"wrapped-2");

    let r = put("wrapped-3", ("if-match", "not quoted".into())).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn only_the_users_own_token_reads_or_writes_it_and_size_is_bounded() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None);
    let bob = s.add_user("bob", None);
    let app = s.add_app("mail");
    let r = s
        .req(
            "PUT",
            PATH,
            Some(&alice),
            body("k"),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    for t in [&bob, &app] {
        assert_eq!(s.get(PATH, t).await.status, 403);
        let r = s
            .req(
                "PUT",
                PATH,
                Some(t),
                body("evil"),
                &[("if-match", &etag(&r))],
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    assert_eq!(s.req("GET", PATH, None, body(""), &[]).await.status, 401);

    let big = vec![b'x'; 4097];
    let r = s
        .req(
            "PUT",
            "/keys/bob/storage",
            Some(&bob),
            body(big),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = s
        .req(
            "PUT",
            "/keys/bob/storage",
            Some(&bob),
            body(""),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.get("/keys/bob/storage", &bob).await.status, 404);
    assert_eq!(&s.get(PATH, &alice).await.body[..], b"k");
}

#[tokio::test]
async fn the_backup_survives_a_restart() {
    let s = TestServer::start().await;
    let alice = s.add_user("alice", None);
    let r = s
        .req(
            "PUT",
            PATH,
            Some(&alice),
            body("kept"),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(r.status, 201);
    let dir = s.into_dir().await;
    let s = TestServer::start_with(|c| c.data_dir = dir.path().join("data")).await;
    let r = s.get(PATH, &alice).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"kept");
}
