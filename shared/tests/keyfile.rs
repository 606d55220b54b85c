//! Key files and wrapped keys: permissions, format errors that say how to fix them, atomic
//! no-clobber writes, and passphrase export/import.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use blobsync_shared::StorageKey;
use blobsync_shared::keyfile::{
    KeyError, export_wrapped, generate_key_file, import_wrapped, load_key_file, load_or_generate,
    save_key_file,
};

fn mode(p: &std::path::Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn generated_key_file_is_private_hex_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf/blobsync/key");
    let key = generate_key_file(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    assert!(
        text[..64]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(hex::decode(&text[..64]).unwrap(), key.as_bytes());
    assert_eq!(load_key_file(&path).unwrap(), key);
    // No temp files left behind.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn an_existing_key_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let key = generate_key_file(&path).unwrap();
    let e = generate_key_file(&path).unwrap_err();
    assert!(matches!(e, KeyError::Exists { .. }), "{e}");
    let e = save_key_file(&path, &StorageKey::generate()).unwrap_err();
    assert!(matches!(e, KeyError::Exists { .. }), "{e}");
    assert_eq!(load_key_file(&path).unwrap(), key);
}

#[test]
fn loose_permissions_are_refused_with_the_chmod_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    generate_key_file(&path).unwrap();
    for bad in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let e = load_key_file(&path).unwrap_err();
        assert!(
            matches!(e, KeyError::Permissions { mode, .. } if mode == bad),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(load_key_file(&path).is_ok(), "owner-only read is fine");
}

#[test]
fn malformed_key_files_are_refused_without_quoting_them() {
    let dir = tempfile::tempdir().unwrap();
    let good = "0123456789abcdef".repeat(4);
    for (what, content) in [
        ("short", good[..60].to_owned() + "\n"),
        ("long", good.clone() + "00\n"),
        ("uppercase", good.to_uppercase() + "\n"),
        ("not hex", good[..63].to_owned() + "g\n"),
        ("binary", String::from_utf8(vec![b'a'; 32]).unwrap()),
        ("two newlines", good.clone() + "\n\n"),
        ("empty", String::new()),
    ] {
        let path = dir.path().join(what.replace(' ', "-"));
        fs::write(&path, &content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_key_file(&path).unwrap_err();
        assert!(matches!(e, KeyError::Format { .. }), "{what}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("64 lowercase hex"), "{what}: {msg}");
        if content.len() > 8 {
            assert!(
                !msg.contains(&content[..8]),
                "{what}: message quotes the key: {msg}"
            );
        }
    }
    let path = dir.path().join("no-newline");
    fs::write(&path, &good).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        load_key_file(&path).is_ok(),
        "a missing final newline is tolerated"
    );
}

#[test]
fn missing_key_file_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_key_file(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(e, KeyError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("blobctl key import"), "{e}");
}

#[test]
fn load_or_generate_creates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/key");
    let (k1, created) = load_or_generate(&path).unwrap();
    assert!(created);
    let (k2, created) = load_or_generate(&path).unwrap();
    assert!(!created);
    assert_eq!(k1, k2);
    // A broken key file is reported, never silently replaced.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        load_or_generate(&path),
        Err(KeyError::Permissions { .. })
    ));
}

#[test]
fn wrapped_export_round_trips_and_rejects_a_wrong_passphrase() {
    let key = StorageKey::generate();
    let wrapped = export_wrapped(&key, "correct horse battery staple");
    let text = String::from_utf8(wrapped.clone()).unwrap();
    assert!(
        text.starts_with("blobsync-key v1\nkdf: argon2id\n"),
        "{text}"
    );
    assert!(!text.contains(&hex::encode(key.as_bytes())));
    assert_eq!(
        import_wrapped(&wrapped, "correct horse battery staple").unwrap(),
        key
    );
    // Two exports of one key differ (fresh salt and nonce).
    assert_ne!(export_wrapped(&key, "pw"), export_wrapped(&key, "pw"));

    let e = import_wrapped(&wrapped, "Correct horse battery staple").unwrap_err();
    assert!(matches!(e, KeyError::WrongPassphrase), "{e}");
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    // CRLF line ends (a file passed through Windows) still import.
    let crlf = text.replace('\n', "\r\n");
    assert_eq!(
        import_wrapped(crlf.as_bytes(), "correct horse battery staple").unwrap(),
        key
    );
}

#[test]
fn altered_or_foreign_exports_are_refused() {
    let key = StorageKey::generate();
    let text = String::from_utf8(export_wrapped(&key, "pw")).unwrap();
    // Parameters are authenticated: weakening them fails like a wrong passphrase.
    let weakened = text.replace("\nt: 3\n", "\nt: 1\n");
    assert_ne!(weakened, text);
    assert!(matches!(
        import_wrapped(weakened.as_bytes(), "pw"),
        Err(KeyError::WrongPassphrase)
    ));
    for (what, bytes) in [
        (
            "other version",
            text.replace("blobsync-key v1", "blobsync-key v2")
                .into_bytes(),
        ),
        ("not a key", b"hello\n".to_vec()),
        ("binary", vec![0xff, 0xfe, 0]),
        (
            "no ciphertext",
            text.lines()
                .take(7)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        ),
        (
            "huge memory",
            text.replace("\nm: 65536\n", "\nm: 4294967295\n")
                .into_bytes(),
        ),
        ("other kdf", text.replace("argon2id", "scrypt").into_bytes()),
    ] {
        let e = import_wrapped(&bytes, "pw").unwrap_err();
        assert!(matches!(e, KeyError::BadWrapped(_)), "{what}: {e}");
    }
    let e = import_wrapped(
        text.replace("blobsync-key v1", "blobsync-key v2")
            .as_bytes(),
        "pw",
    )
    .unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

/// The cost of the key backup's wrapping (Argon2id at 256 MiB, t = 3), which every passphrase
/// guess of an offline attack by the server pays too: docs/keys.md publishes the time. Run it
/// with `cargo test -p blobsync-shared --release --test keyfile -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (about a second, 256 MiB), not a check"]
fn backup_wrapping_cost() {
    use blobsync_shared::keyfile::{BACKUP_M_COST_KIB, BACKUP_T_COST, export_wrapped_with};
    let key = blobsync_shared::StorageKey::generate();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let w = export_wrapped_with(
            &key,
            "a passphrase of some length",
            BACKUP_M_COST_KIB,
            BACKUP_T_COST,
        );
        let wrap = t.elapsed();
        let t = std::time::Instant::now();
        let k =
            blobsync_shared::keyfile::import_wrapped(&w, "a passphrase of some length").unwrap();
        let unwrap = t.elapsed();
        assert_eq!(k.as_bytes(), key.as_bytes());
        times.push((wrap, unwrap));
    }
    for (w, u) in times {
        eprintln!("argon2id m=256MiB t=3 p=1: wrap {w:?}, unwrap {u:?}");
    }
}
