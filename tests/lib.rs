//! Shared harness for the integration tests: where the components are, a
//! scratch directory with a config and a real SQLite file, an in-process relay,
//! and helpers to wait for what the relay does.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outbox_relay::NewMessage;
use outbox_relay::config::Config;
use outbox_relay::storage::mysql::MySqlStorage;
use outbox_relay::storage::postgres::PgStorage;
use outbox_relay::storage::sqlite::SqliteStorage;
use outbox_relay::storage::{DeadLetter, Storage};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod kafka;
mod proxy;
pub mod spakky;
pub mod tls;
pub use proxy::Proxy;

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The cargo target directory (where `make setup` puts the test tools).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
        PathBuf::from,
    )
}

/// Directory holding every built component (`file.wasm`, `trap.wasm`, ...).
pub fn components_dir() -> PathBuf {
    PathBuf::from(env!("OUTBOX_TEST_COMPONENTS"))
}

/// The path of one built component; panics with advice if it is missing.
pub fn component(name: &str) -> PathBuf {
    let path = components_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "component {} was not built (see tests/build.rs)",
        path.display()
    );
    path
}

/// A scratch directory with a database (a SQLite file in it, or a fresh
/// Postgres database dropped afterwards) and a config file.
pub struct Scratch {
    dir: tempfile::TempDir,
    database: String,
    pg_name: Option<String>,
    mysql_name: Option<String>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The Postgres server the tests use (trust auth on localhost by default).
pub fn postgres_admin_url() -> String {
    std::env::var("OUTBOX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The MariaDB / MySQL server the tests use (root with an empty password on localhost by default).
pub fn mysql_admin_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn mysql_url_for(database: &str) -> String {
    format!("{}/{database}", mysql_admin_url().trim_end_matches('/'))
}

fn postgres_url_for(database: &str) -> String {
    let admin = postgres_admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{database}")
}

impl Scratch {
    /// A scratch with a SQLite database file.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("outbox.db").display());
        Self {
            dir,
            database,
            pg_name: None,
            mysql_name: None,
        }
    }

    /// A scratch with its own, new Postgres database. Panics (the test fails
    /// loudly) when the server is not reachable.
    pub async fn postgres() -> Self {
        use sqlx::Connection;
        let name = format!("outbox_test_{}", uuid::Uuid::now_v7().simple());
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}); start it, e.g. `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            database: postgres_url_for(&name),
            pg_name: Some(name),
            mysql_name: None,
        }
    }

    /// A scratch with its own, new MariaDB / MySQL database. Panics (the
    /// test fails loudly) when the server is not reachable.
    pub async fn mysql() -> Self {
        use sqlx::Connection;
        let name = format!("outbox_test_{}", uuid::Uuid::now_v7().simple());
        let admin = mysql_admin_url();
        let mut conn = sqlx::MySqlConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("MariaDB/MySQL is not reachable at {admin} ({e}); start it, e.g. `service mariadb start`")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            database: mysql_url_for(&name),
            pg_name: None,
            mysql_name: Some(name),
        }
    }

    /// The name of this scratch's MySQL database (`None` on the others).
    pub fn mysql_database(&self) -> Option<&str> {
        self.mysql_name.as_deref()
    }

    /// A migrated MySQL storage handle for this scratch's database.
    pub async fn mysql_storage(&self) -> MySqlStorage {
        let storage = MySqlStorage::connect(&self.database_url()).await.unwrap();
        storage.migrate().await.unwrap();
        storage
    }

    /// A plain pool on this scratch's MySQL database, for checks.
    pub async fn mysql_pool(&self) -> sqlx::MySqlPool {
        sqlx::MySqlPool::connect(&self.database_url())
            .await
            .unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn database_url(&self) -> String {
        self.database.clone()
    }

    /// The name of this scratch's Postgres database (`None` on SQLite).
    pub fn pg_database(&self) -> Option<&str> {
        self.pg_name.as_deref()
    }

    /// Writes `relay.toml`: the database, fast test timings, the built
    /// components as the plugin directory, then `body` (routes and targets).
    pub fn write_config(&self, body: &str) -> PathBuf {
        self.write_config_as("relay.toml", "", body)
    }

    /// Like [`Scratch::write_config`], with extra `[relay]` lines, to a file of its own name.
    pub fn write_config_as(&self, file: &str, relay: &str, body: &str) -> PathBuf {
        self.write_config_with_relay(
            file,
            &format!(
                r#"poll_interval = "50ms"
lease_ttl = "3s"
claim_timeout = "10s"
shutdown_grace = "5s"
{relay}"#
            ),
            body,
        )
    }

    /// A config whose `[relay]` settings are `relay` and nothing else but
    /// the plugin and cache directories (none of the tests' short intervals),
    /// to a file of its own name.
    pub fn write_config_with_relay(&self, file: &str, relay: &str, body: &str) -> PathBuf {
        let text = config_text(&self.database_url(), relay, body);
        let path = self.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A migrated Postgres storage handle for this scratch's database.
    pub async fn pg_storage(&self) -> PgStorage {
        let storage = PgStorage::connect(&self.database_url()).await.unwrap();
        storage.migrate().await.unwrap();
        storage
    }

    /// A plain pool on this scratch's Postgres database, for checks; its
    /// connections are not the relay's (no `outbox-relay` application name).
    pub async fn pg_pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url()).await.unwrap()
    }

    pub fn load_config(&self, body: &str) -> Config {
        let path = self.write_config(body);
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens the SQLite database (migrated) as the producer side would.
    pub async fn storage(&self) -> SqliteStorage {
        let storage = SqliteStorage::connect(&self.database_url()).await.unwrap();
        storage.migrate().await.unwrap();
        storage
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(name) = self.mysql_name.take() {
            block_on_own_thread(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::MySqlConnection::connect(&mysql_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name}"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        }
        if let Some(name) = self.pg_name.take() {
            block_on_own_thread(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        }
    }
}

/// Runs `work` to its end on a runtime of its own on a thread of its own
/// (Drop is synchronous, and may run inside a test's runtime).
fn block_on_own_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

/// A relay running in this process.
pub struct RunningRelay {
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl RunningRelay {
    pub async fn start(config: &Config) -> Self {
        let relay = outbox_relay::app::build_relay(config)
            .await
            .unwrap_or_else(|e| panic!("relay did not start: {e}"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            relay.run(token).await.unwrap();
        });
        Self { shutdown, handle }
    }

    /// True while the relay task is alive (it never ends on its own).
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("relay did not stop within 20s")
            .unwrap();
    }
}

/// Enqueues `n` messages named `event` with JSON payloads `{"n": i}`; returns them.
pub async fn enqueue(storage: &dyn Storage, event: &str, n: usize) -> Vec<NewMessage> {
    let messages: Vec<NewMessage> = (0..n)
        .map(|i| {
            NewMessage::new(event, format!("{{\"n\":{i}}}").into_bytes())
                .with_header("x-test", format!("value-{i}"))
        })
        .collect();
    for chunk in messages.chunks(1000) {
        storage.save(chunk).await.unwrap();
    }
    messages
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON lines of a file, or none if it does not exist yet.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    // A last line without its newline is a write still in progress (a
    // reader can see the first pages of a batch's write before the rest):
    // it is left for the next read. Every complete line must parse.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Routes and one `file` target, `audit`, writing `/out/audit.jsonl` in the
/// host directory `out` (the tests' usual recording target).
pub fn audit_file_target(out: &Path) -> String {
    format!(
        r#"
[[routes]]
events = ["*"]
targets = ["audit"]

[targets.audit]
plugin = "file"
config = {{ path = "/out/audit.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    )
}

/// A relay config: `database`, a `[relay]` table of the built components,
/// the tests' compile cache and the `relay` lines, then `body` (routes and
/// targets).
pub fn config_text(database: &str, relay: &str, body: &str) -> String {
    format!(
        r#"database = "{database}"

[relay]
plugin_dir = "{plugins}"
cache_dir = "{cache}"
{relay}

{body}
"#,
        plugins = components_dir().display(),
        cache = env!("OUTBOX_TEST_CACHE"),
    )
}

/// The `id` of every line of a record file (as the `file` target and the
/// test plugins write them), in the file's order.
pub fn read_ids(path: &Path) -> Vec<String> {
    read_jsonl(path)
        .iter()
        .map(|l| {
            l["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a line without an id: {l}"))
                .to_string()
        })
        .collect()
}

/// Dead letters of one target.
pub async fn dead_letters(storage: &dyn Storage, target: &str) -> Vec<DeadLetter> {
    storage
        .list_dead_letters(&outbox_relay::storage::DeadLetterFilter {
            target: Some(target.to_string()),
            ..Default::default()
        })
        .await
        .unwrap()
}
