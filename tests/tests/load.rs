//! Scenario 9: load with several users and devices through one server at once.
//!
//! Default: 3 users x 2 devices, each device putting 50 small-to-medium blobs concurrently
//! (300 blobs); `BLOBSYNC_TEST_FULL=1`: 5 users x 4 devices x 200 blobs (the 20
//! daemons). Every user's devices must converge to that user's blobs, and no user may see
//! another's. Slow: skipped with `BLOBSYNC_SKIP_SLOW=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use blobsync_tests::converge::{Model, assert_converged};
use blobsync_tests::digest::write_random_file;
use blobsync_tests::env::TestResult;
use blobsync_tests::{
    Cluster, DaemonProc, Result, ServerOpts, TestEnv, env_number, full_size, skip_slow_test,
};

#[test]
fn many_devices_of_several_users_converge_and_stay_apart() -> TestResult {
    if skip_slow_test("many_devices_of_several_users_converge_and_stay_apart") {
        return Ok(());
    }
    let full = full_size();
    let users = env_number("BLOBSYNC_LOAD_USERS", if full { 5usize } else { 3 });
    let per_user = env_number(
        "BLOBSYNC_LOAD_DEVICES_PER_USER",
        if full { 4usize } else { 2 },
    );
    let blobs = env_number("BLOBSYNC_LOAD_BLOBS", if full { 200usize } else { 50 });
    let names: Vec<String> = (0..users).map(|u| format!("user{u}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let env = TestEnv::new()?;
    let cluster = Cluster::start(&env, &name_refs, ServerOpts::default())?;
    let mut devices: Vec<(usize, DaemonProc)> = Vec::new();
    for u in 0..users {
        for d in 0..per_user {
            devices.push((u, cluster.start_device(&env, &format!("u{u}-d{d}"), u)?));
        }
    }
    // Every device puts its blobs at the same time as the others.
    let models: Vec<Result<Model>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, (_, dev))| {
                s.spawn(move || -> Result<Model> {
                    let mut m = Model::new();
                    let file = dev.dir().join("put.src");
                    for k in 0..blobs {
                        // Mostly small (batched through /stream), some larger.
                        let size = if k % 10 == 0 {
                            300_000
                        } else {
                            (k as u64 * 997) % 20_000
                        };
                        let id = format!("{}-{k}", dev.name());
                        let sha = write_random_file(&file, size, (i * 100_000 + k) as u64)?;
                        dev.ctl().put(&file, &id, &[])?;
                        m.insert(("default".into(), id), sha);
                    }
                    Ok(m)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("put thread panicked"))
            .collect()
    });
    let mut per_user_model: BTreeMap<usize, Model> = BTreeMap::new();
    for ((u, _), m) in devices.iter().zip(models) {
        per_user_model.entry(*u).or_default().extend(m?);
    }
    for u in 0..users {
        let devs: Vec<&DaemonProc> = devices
            .iter()
            .filter(|(x, _)| *x == u)
            .map(|(_, d)| d)
            .collect();
        let model = &per_user_model[&u];
        assert_eq!(model.len(), per_user * blobs);
        // The server listing check inside also proves no other user's blob leaked in.
        assert_converged(
            &devs,
            Some(&cluster.view(u)),
            model,
            Duration::from_secs(240),
        )?;
    }
    Ok(())
}
