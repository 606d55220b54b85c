//! A real `blobsync-server` in this process, on a loopback port, for the tests that drive the
//! engine through `HttpRemote`: user `alice` (token in `dir/token`) and the trusted app
//! `mailer`. It stops when dropped.

use std::path::{Path, PathBuf};

use blobsyncd::remote::http::{HttpRemote, HttpRemoteConfig};
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT` with TLS).
    pub base: String,
    /// The server's data dir.
    pub data: PathBuf,
    pub state: blobsync_server::ServerState,
    /// Alice's token, and the file holding it.
    pub user_token: String,
    pub token_file: PathBuf,
    /// The `mailer` app's token.
    pub app_token: String,
    /// The CA file of the TLS server, if any.
    pub ca_file: Option<PathBuf>,
    cancel: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TestServer {
    /// A plain-HTTP server under `dir/server`.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, None, None).await
    }

    /// With TLS (`tls`, and the CA file clients should trust).
    pub async fn start_with(
        dir: &Path,
        tls: Option<blobsync_server::TlsFiles>,
        ca_file: Option<PathBuf>,
    ) -> Self {
        let data = dir.join("server");
        let mut cfg = blobsync_server::ServerConfig::new(&data);
        let https = tls.is_some();
        cfg.tls = tls;
        let state = tokio::task::spawn_blocking(move || blobsync_server::ServerState::open(cfg))
            .await
            .unwrap()
            .unwrap();
        let user_token = blobsync_server::token::generate();
        state
            .index()
            .add_user("alice", &blobsync_server::token::hash(&user_token), None)
            .await
            .unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{user_token}\n")).unwrap();
        let app_token = blobsync_server::token::generate();
        state
            .index()
            .add_app(
                "mailer",
                &blobsync_server::token::hash(&app_token),
                &[blobsync_shared::Namespace::new("MX").unwrap()],
            )
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = if https {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let cancel = CancellationToken::new();
        tokio::spawn(blobsync_server::run(
            listener,
            state.clone(),
            cancel.clone(),
        ));
        TestServer {
            base,
            data,
            state,
            user_token,
            token_file,
            app_token,
            ca_file,
            cancel,
        }
    }

    /// An `HttpRemote` for alice.
    pub fn remote(&self) -> HttpRemote {
        HttpRemote::new(HttpRemoteConfig {
            base: self.base.clone(),
            user: "alice".into(),
            token_file: Some(self.token_file.clone()),
            ca_file: self.ca_file.clone(),
        })
        .unwrap()
    }

    /// Stops serving (as a dropped server does).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}
