//! The wrong-key guard's two witnesses: a published incoming recipient that is not derived
//! from this device's key (before any download), and, where no recipient is published (a
//! remote that lost it, a Soledad server), downloads failing authentication at their first
//! segment. Either stops downloads with one `wrong_key` alarm; a correct key downloads.

mod common;

use blobsync_shared::StorageKey;
use blobsyncd::events::AlarmKind;
use blobsyncd::status::Status;
use common::{Device, bytes, settings};

async fn first_device(tmp: &std::path::Path) -> Device {
    let a = Device::open(&tmp.join("a"), &tmp.join("remote"), settings()).await;
    // Over the batch limit: each is its own download.
    for i in 0..6u8 {
        a.put(&format!("b{i}"), &bytes(100_000, i)).await;
    }
    a.engine.run_cycle().await;
    a
}

async fn wrong_key_device(tmp: &std::path::Path) -> Device {
    Device::open_keyed(
        &tmp.join("b"),
        &tmp.join("remote"),
        settings(),
        StorageKey::from_bytes([9; 32]),
    )
    .await
}

async fn wrong_key_alarms(d: &Device) -> usize {
    let s = d.handle.status().await.unwrap();
    s.alarms
        .iter()
        .filter(|a| a.kind == AlarmKind::WrongKey)
        .count()
}

async fn tried(d: &Device) -> usize {
    let mut n = 0;
    for i in 0..6u8 {
        let b = d.info(&format!("b{i}")).await.unwrap();
        if b.attempts > 0 || b.status != Status::PendingDownload {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_published_recipient_of_another_key_stops_downloads_before_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let _a = first_device(tmp.path()).await;
    let b = wrong_key_device(tmp.path()).await;
    b.engine.run_cycle().await;
    b.engine.run_cycle().await;
    assert_eq!(wrong_key_alarms(&b).await, 1);
    assert_eq!(tried(&b).await, 0, "no download was even tried");
    // The other devices' recipient stays: their mail must not go to this device's key.
    let published =
        std::fs::read_to_string(tmp.path().join("remote/alice/.incoming_recipient")).unwrap();
    let ours = blobsync_shared::incoming::IncomingIdentity::derive(&common::key()).recipient();
    assert_eq!(published.trim(), ours);
}

#[tokio::test]
async fn without_a_published_recipient_the_first_failed_downloads_stop_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let _a = first_device(tmp.path()).await;
    std::fs::remove_file(tmp.path().join("remote/alice/.incoming_recipient")).unwrap();
    let mut s = settings();
    s.transfers = 1;
    let b = Device::open_keyed(
        &tmp.path().join("b"),
        &tmp.path().join("remote"),
        s,
        StorageKey::from_bytes([9; 32]),
    )
    .await;
    b.engine.run_cycle().await;
    b.engine.run_cycle().await;
    assert_eq!(wrong_key_alarms(&b).await, 1);
    let n = tried(&b).await;
    // The download whose failure completes the proof is refused, not counted as a failure.
    assert!(
        (1..=2).contains(&n),
        "two failures prove the key wrong, and the rest are not tried: {n} tried"
    );
}

#[tokio::test]
async fn the_right_key_downloads_everything_and_raises_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let _a = first_device(tmp.path()).await;
    let c = Device::open(
        &tmp.path().join("c"),
        &tmp.path().join("remote"),
        settings(),
    )
    .await;
    c.engine.run_cycle().await;
    assert_eq!(wrong_key_alarms(&c).await, 0);
    for i in 0..6u8 {
        assert_eq!(
            c.info(&format!("b{i}")).await.unwrap().status,
            Status::Synced
        );
    }
}

#[tokio::test]
async fn a_device_whose_key_was_proven_republishes_a_replaced_recipient_without_an_alarm() {
    let tmp = tempfile::tempdir().unwrap();
    let _a = first_device(tmp.path()).await;
    let c = Device::open(
        &tmp.path().join("c"),
        &tmp.path().join("remote"),
        settings(),
    )
    .await;
    c.engine.run_cycle().await;
    assert_eq!(c.info("b0").await.unwrap().status, Status::Synced);
    // The server (or an old daemon) replaces the published recipient.
    let path = tmp.path().join("remote/alice/.incoming_recipient");
    let other =
        blobsync_shared::incoming::IncomingIdentity::derive(&StorageKey::from_bytes([9; 32]))
            .recipient();
    std::fs::write(&path, format!("{other}\n")).unwrap();
    // A restarted device: the proof is remembered by the store, not only by this run (it is
    // written in the background: wait for it).
    for _ in 0..200 {
        if c.engine.store().meta("key_proven").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(c.engine.store().meta("key_proven").await.unwrap().is_some());
    drop(c);
    let c = Device::open(
        &tmp.path().join("c"),
        &tmp.path().join("remote"),
        settings(),
    )
    .await;
    c.engine.run_cycle().await;
    assert_eq!(wrong_key_alarms(&c).await, 0);
    let ours = blobsync_shared::incoming::IncomingIdentity::derive(&common::key()).recipient();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        ours,
        "ours is back"
    );
}
