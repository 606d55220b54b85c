//! Namespaces a device learns of from the server. (Trusted-app delivery to `/incoming`, now
//! age-encrypted and adopted, is in `incoming_age.rs`.)

use std::time::Duration;

use blobsync_tests::env::TestResult;
use blobsync_tests::{Cluster, ServerOpts, TestEnv};

/// A second device set up later must see the user's blobs in every namespace, not only in
/// `default` and the ones it has rows in or has configured.
#[test]
fn a_new_device_sees_blobs_in_every_namespace() -> TestResult {
    use blobsync_tests::converge::{Model, assert_converged};
    use blobsync_tests::digest::write_random_file;
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &["alice"], ServerOpts::default())?;
    let a = cluster.start_device(&env, "device-a", 0)?;
    let file = a.dir().join("put.src");
    let sha = write_random_file(&file, 1000, 1)?;
    a.ctl().put(&file, "photo1", &["-n", "photos", "--wait"])?;
    let mut model = Model::new();
    model.insert(("photos".into(), "photo1".into()), sha);
    let b = cluster.start_device(&env, "device-b", 0)?;
    assert_converged(
        &[&a, &b],
        Some(&cluster.view(0)),
        &model,
        Duration::from_secs(20),
    )?;
    Ok(())
}
