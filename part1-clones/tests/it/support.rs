//! Test support: an app on port 0 with its own database and key prefix,
//! and clusters of the real binary behind a real HAProxy.

use common::testing::{self, TestDatabase};
use part1_clones::app::{AppPart, Application};
use part1_clones::client::{UserClient, http};
use part1_clones::cluster::{Cluster, ClusterSpec};
use part1_clones::config::ServerConfig;

pub const PASSWORD: &str = "test-password-1";

/// A running in-process app, with what it runs on.
pub struct TestApp {
    pub url: String,
    pub prefix: String,
    pub db: TestDatabase,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts the app with `sessions` and extra settings, on a fresh database.
pub async fn spawn_app(sessions: &str, tweak: impl FnOnce(&mut ServerConfig)) -> TestApp {
    spawn_app_with((), sessions, tweak).await
}

/// The same, with a later part (a test's own routes and hooks).
pub async fn spawn_app_with<P: AppPart>(
    part: P,
    sessions: &str,
    tweak: impl FnOnce(&mut ServerConfig),
) -> TestApp {
    let stack = testing::stack();
    let db = TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db_url = db.url.clone();
    let prefix = testing::unique_name("p1");
    let mut config = ServerConfig::from_env().expect("config");
    config.port = 0;
    config.clone_id = Some("test-clone".into());
    config.sessions = clap::ValueEnum::from_str(sessions, true).expect("session kind");
    config.key_prefix = prefix.clone();
    config.stack.mariadb_primary_url = db_url;
    tweak(&mut config);
    let app = Application::build_with(config, part)
        .await
        .expect("app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        url,
        prefix,
        db,
        stop: Some(tx),
        server,
    }
}

impl TestApp {
    pub fn user(&self) -> UserClient {
        UserClient::new(http(), &self.url)
    }

    /// A fresh user, signed up and logged in.
    pub async fn logged_in(&self) -> (UserClient, String) {
        let u = self.user();
        let name = fresh_username();
        assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 201);
        u.login(&name, PASSWORD).await.unwrap();
        (u, name)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.server.await;
        self.db.drop_database().await;
    }
}

/// A username no other test uses (valid: [a-z0-9_], at most 32 chars).
pub fn fresh_username() -> String {
    let n = testing::unique_name("u");
    let tail: String = n
        .chars()
        .rev()
        .take(28)
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    format!("u_{}", tail.trim_start_matches('_'))
}

/// A cluster of `clones` real processes behind HAProxy, on a fresh database.
pub async fn cluster(clones: usize, sessions: &str) -> (Cluster, TestDatabase) {
    let stack = testing::stack();
    let db = TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db_url = db.url.clone();
    let prefix = testing::unique_name("p1c");
    // Fail with "run ./lab up" rather than a clone's log if Redis is missing.
    testing::redis().await;
    let spec = ClusterSpec::new(
        env!("CARGO_BIN_EXE_part1-server"),
        clones,
        &[
            ("SESSIONS", sessions),
            ("KEY_PREFIX", &prefix),
            ("REDIS_URL", &stack.redis_url),
            ("MARIADB_PRIMARY_URL", &db_url),
            ("RUST_LOG", "warn"),
        ],
    );
    (Cluster::start(spec).await.expect("cluster starts"), db)
}
