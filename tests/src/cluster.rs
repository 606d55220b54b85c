//! [`Cluster`]: one server, its users, and devices (daemons) for them — the setup every
//! multi-device scenario starts from.
//!
//! Each user gets a token and a storage key file shared by all of that user's devices (as
//! `blobctl key export`/`import` would arrange). Devices run with a test time scale so the
//! retry schedule and sync interval take fractions of a second. This module starts things;
//! checking them is [`crate::converge`]'s job.

use std::path::PathBuf;

use crate::converge::ServerView;
use crate::daemon::{DaemonOpts, DaemonProc, RemoteSpec, write_key_file};
use crate::env::TestEnv;
use crate::server::{ServerOpts, ServerProc};
use crate::{Result, env_number};

/// Default factor on every daemon wait in e2e tests (`BLOBSYNC_TEST_TIME_SCALE` overrides):
/// the 10, 20, 30 s retry schedule becomes 0.2, 0.4, 0.6 s, the 30 s sync interval 0.6 s.
pub const DEFAULT_TIME_SCALE: f64 = 0.02;

/// The time scale tests should use.
pub fn time_scale() -> f64 {
    env_number("BLOBSYNC_TEST_TIME_SCALE", DEFAULT_TIME_SCALE)
}

/// A user of the cluster.
pub struct User {
    /// Name.
    pub name: String,
    /// Bearer token.
    pub token: String,
    /// Storage key file shared by the user's devices.
    pub key_file: PathBuf,
}

/// A server and its users.
pub struct Cluster {
    /// The server.
    pub server: ServerProc,
    /// The users, in creation order.
    pub users: Vec<User>,
}

impl Cluster {
    /// Starts a server with `opts` and creates `users`.
    pub fn start(env: &TestEnv, users: &[&str], opts: ServerOpts) -> Result<Self> {
        let server = ServerProc::start(env, opts)?;
        let keys = env.subdir("keys")?;
        let mut out = Vec::new();
        for name in users {
            let token = server.add_user(name)?;
            let key_file = keys.join(format!("{name}.key"));
            write_key_file(&key_file)?;
            out.push(User {
                name: name.to_string(),
                token,
                key_file,
            });
        }
        Ok(Cluster { server, users: out })
    }

    /// Daemon options for user `u` syncing to `url` (the server's, or a proxy's).
    pub fn daemon_opts_via(&self, u: usize, url: &str) -> DaemonOpts {
        let user = &self.users[u];
        let mut o = DaemonOpts::new(
            RemoteSpec::Http {
                url: url.to_string(),
                user: user.name.clone(),
                token: user.token.clone(),
            },
            &user.key_file,
        );
        o.time_scale = Some(time_scale());
        o
    }

    /// Daemon options for user `u` syncing straight to the server.
    pub fn daemon_opts(&self, u: usize) -> DaemonOpts {
        self.daemon_opts_via(u, &self.server.url())
    }

    /// Starts a device for user `u` straight on the server.
    pub fn start_device(&self, env: &TestEnv, name: &str, u: usize) -> Result<DaemonProc> {
        DaemonProc::start(env, name, self.daemon_opts(u))
    }

    /// The server side of a convergence check for user `u`.
    pub fn view(&self, u: usize) -> ServerView<'_> {
        let user = &self.users[u];
        ServerView {
            server: &self.server,
            user: &user.name,
            token: &user.token,
            key_file: &user.key_file,
        }
    }
}

/// The RNG seed of a randomized test: `BLOBSYNC_TEST_SEED` to replay, else a fresh one.
/// Printed to stderr so a failing run shows it.
pub fn test_seed(test: &str) -> u64 {
    // BLOBSYNC_SEED is accepted as a shorter alias.
    let seed = ["BLOBSYNC_TEST_SEED", "BLOBSYNC_SEED"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.trim().parse().ok()))
        .unwrap_or_else(rand::random);
    eprintln!("{test}: BLOBSYNC_TEST_SEED={seed}");
    seed
}
