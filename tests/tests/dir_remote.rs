//! Two devices syncing through a `file://` remote (the embedded default: no server at all).
//!
//! Puts and a delete on either side must converge, content byte-identical, with the same
//! convergence checks as the HTTP scenarios (minus the server side).

use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged};
use blobsync_tests::daemon::write_key_file;
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::{DaemonOpts, DaemonProc, RemoteSpec, TestEnv, cluster};

#[test]
fn two_devices_converge_through_a_file_remote() -> TestResult {
    let env = TestEnv::new()?;
    let remote = env.subdir("shared-remote")?;
    let key = env.root().join("key");
    write_key_file(&key)?;
    let start = |name: &str| -> blobsync_tests::Result<DaemonProc> {
        let mut o = DaemonOpts::new(RemoteSpec::Dir(remote.clone()), &key);
        o.time_scale = Some(cluster::time_scale());
        DaemonProc::start(&env, name, o)
    };
    let a = start("device-a")?;
    let b = start("device-b")?;
    let mut model = Model::new();
    for (dev, id, size) in [
        (&a, "from-a", 300_000u64),
        (&b, "from-b", 5_000),
        (&a, "gone", 10),
    ] {
        let file = dev.dir().join("put.src");
        let sha = write_random_file(&file, size, size)?;
        dev.ctl().put(&file, id, &["-n", "docs"])?;
        model.insert(("docs".into(), id.into()), sha);
    }
    assert_converged(&[&a, &b], None, &model, Duration::from_secs(60))?;
    b.ctl().rm("gone", "docs")?.ok()?;
    model.remove(&("docs".to_string(), "gone".to_string()));
    assert_converged(&[&a, &b], None, &model, Duration::from_secs(60))?;
    Ok(())
}
