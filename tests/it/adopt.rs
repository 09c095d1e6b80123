//! `outbox-relay adopt`: another tool's outbox table adopted in place, its
//! rows written by plain SQL producers (committed and rolled back), then
//! delivered by the relay to a `file` target and read back; and a real
//! Spakky application (tests/adopt/spakky/, spakky 6.4.0 in the venv that
//! tests/setup.sh makes) switched to the relay, delivering through RabbitMQ
//! to its own `@on_event` consumer.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use outbox_relay_tests::{RunningRelay, Scratch, audit_file_target, eventually, read_jsonl};
use sqlx::Row;

use crate::relay_binary;

const WAIT: Duration = Duration::from_secs(60);

/// Runs the CLI; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(relay_binary())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn adopt(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["adopt"];
    all.extend_from_slice(&args[..1]);
    all.extend(["--config", config.to_str().unwrap()]);
    all.extend_from_slice(&args[1..]);
    let (ok, stdout, stderr) = cli(&all);
    assert!(ok, "adopt {args:?} failed: {stdout}{stderr}");
    stdout
}

/// The table as SQLAlchemy creates it for `spakky-sqlalchemy` on Postgres.
const SPAKKY_PG: &str = outbox_relay_tests::spakky::TABLE_PG;

/// And on SQLite: the UUID as 32 hex digits, JSON and times as text.
const SPAKKY_SQLITE: &str = "CREATE TABLE spakky_event_outbox (
    id CHAR(32) NOT NULL PRIMARY KEY,
    event_name TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers JSON NOT NULL,
    created_at DATETIME NOT NULL,
    published_at DATETIME,
    retry_count INTEGER NOT NULL,
    claimed_at DATETIME
)";

fn traceparent(i: usize) -> String {
    format!("00-{:032x}-{:016x}-01", i + 1, i + 7)
}

/// Spakky on Postgres: rows already pending are backfilled once, rows
/// written after adoption are copied in the producer's transaction, rolled
/// back rows are not, every copied row is marked published (so spakky's own
/// relay would find nothing), and `--undo` stops the copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spakky_on_postgres_backfills_copies_commits_and_marks_them_published() {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config(&audit_file_target(&out));
    let pool = scratch.pg_pool().await;
    sqlx::raw_sql(SPAKKY_PG).execute(&pool).await.unwrap();
    let insert = "INSERT INTO spakky_event_outbox (id, event_name, payload, headers, created_at, retry_count)
                  VALUES ($1, $2, $3, $4::json, now(), 0)";
    let mut want: Vec<(uuid::Uuid, String)> = Vec::new();
    // Before adoption: 10 pending rows, and 2 spakky already published.
    for i in 0..12 {
        let id = uuid::Uuid::now_v7();
        sqlx::query(insert)
            .bind(id)
            .bind("OrderPlaced")
            .bind(format!(r#"{{"order_id":{i}}}"#).into_bytes())
            .bind(format!(r#"{{"traceparent":"{}"}}"#, traceparent(i)))
            .execute(&pool)
            .await
            .unwrap();
        if i >= 10 {
            sqlx::query("UPDATE spakky_event_outbox SET published_at = now() WHERE id = $1")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        } else {
            want.push((id, traceparent(i)));
        }
    }

    // --dry-run prints the SQL and changes nothing (it needs a migrated outbox).
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = cli(&["adopt", "spakky", "--config", path, "--dry-run"]);
    assert!(!ok && stderr.contains("migrate"), "{stderr}");
    let (ok, _, stderr) = cli(&["migrate", "--config", path]);
    assert!(ok, "{stderr}");
    let dry = adopt(&config, &["spakky", "--backfill", "--dry-run"]);
    assert!(
        dry.contains("CREATE TRIGGER \"outbox_adopt_spakky_event_outbox\" AFTER INSERT"),
        "{dry}"
    );
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(copied, 0, "a dry run writes nothing");

    let said = adopt(&config, &["spakky", "--backfill"]);
    assert!(said.contains("backfilled 10 unpublished row(s)"), "{said}");

    // After adoption: 5 committed transactions, 2 rolled back.
    for i in 20..27 {
        let id = uuid::Uuid::now_v7();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(insert)
            .bind(id)
            .bind("OrderPaid")
            .bind(format!(r#"{{"order_id":{i}}}"#).into_bytes())
            .bind(format!(r#"{{"traceparent":"{}"}}"#, traceparent(i)))
            .execute(&mut *tx)
            .await
            .unwrap();
        if i % 3 == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            want.push((id, traceparent(i)));
        }
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM spakky_event_outbox WHERE published_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "spakky's own relay finds nothing pending");

    let (ok, status, _) = cli(&["status", "--config", config.to_str().unwrap()]);
    assert!(
        ok && status.contains("adopted table \"spakky_event_outbox\" (spakky"),
        "{status}"
    );

    let relay = RunningRelay::start(&scratch.load_config(&audit_file_target(&out))).await;
    let file = out.join("audit.jsonl");
    let lines = eventually("every committed row delivered", WAIT, || {
        let file = file.clone();
        let n = want.len();
        async move {
            let lines = read_jsonl(&file);
            (lines.len() >= n).then_some(lines)
        }
    })
    .await;
    relay.stop().await;
    assert_eq!(lines.len(), want.len(), "nothing else, nothing twice");
    let by_id: HashMap<String, &serde_json::Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap().to_string(), l))
        .collect();
    for (id, tp) in &want {
        let line = by_id
            .get(&id.to_string())
            .unwrap_or_else(|| panic!("row {id} was not delivered"));
        assert_eq!(line["headers"]["traceparent"], tp.as_str(), "{line}");
        assert!(line["payload"]["order_id"].is_number(), "{line}");
    }
    let events: HashSet<&str> = lines
        .iter()
        .map(|l| l["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(events, HashSet::from(["OrderPlaced", "OrderPaid"]));

    // --undo: the trigger is gone; a new row stays spakky's alone.
    adopt(&config, &["spakky", "--undo"]);
    sqlx::query(insert)
        .bind(uuid::Uuid::now_v7())
        .bind("OrderLate")
        .bind(b"{}".to_vec())
        .bind("{}")
        .execute(&pool)
        .await
        .unwrap();
    let copied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_messages WHERE event_name = 'OrderLate'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(copied, 0);
    let (_, status, _) = cli(&["status", "--config", config.to_str().unwrap()]);
    assert!(!status.contains("adopted table"), "{status}");
}

/// Spakky's table as SQLAlchemy makes it on SQLite, rows written by plain
/// SQL: ids become canonical UUIDs, text times become enqueue times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spakky_on_sqlite_copies_hex_ids_and_text_times() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config(&audit_file_target(&out));
    let storage = scratch.storage().await;
    let pool = storage.pool().clone();
    sqlx::raw_sql(SPAKKY_SQLITE).execute(&pool).await.unwrap();
    adopt(&config, &["spakky"]);
    let mut want = Vec::new();
    for i in 0..6 {
        let id = uuid::Uuid::now_v7();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO spakky_event_outbox (id, event_name, payload, headers, created_at, retry_count)
             VALUES (?1, 'OrderPlaced', ?2, ?3, '2026-12-01 10:00:00.250000', 0)",
        )
        .bind(id.simple().to_string())
        .bind(format!(r#"{{"order_id":{i}}}"#).into_bytes())
        .bind(format!(r#"{{"traceparent": "{}"}}"#, traceparent(i)))
        .execute(&mut *tx)
        .await
        .unwrap();
        if i == 2 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            want.push(id);
        }
    }
    let published: Vec<String> =
        sqlx::query_scalar("SELECT published_at FROM spakky_event_outbox ORDER BY published_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(published.len(), 5);
    assert!(
        published
            .iter()
            .all(|p| p.len() == 26 && p.as_bytes()[10] == b' '),
        "published_at in SQLAlchemy's text form: {published:?}"
    );

    let relay = RunningRelay::start(&scratch.load_config(&audit_file_target(&out))).await;
    let file = out.join("audit.jsonl");
    let lines = eventually("every committed row delivered", WAIT, || {
        let file = file.clone();
        async move {
            let lines = read_jsonl(&file);
            (lines.len() >= 5).then_some(lines)
        }
    })
    .await;
    relay.stop().await;
    let ids: Vec<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, want.iter().map(|u| u.to_string()).collect::<Vec<_>>());
    // 2026-12-01 10:00:00.250 UTC
    assert_eq!(lines[0]["created_at_ms"], 1_796_119_200_250_i64);
    assert_eq!(lines[0]["headers"]["traceparent"], traceparent(0).as_str());
}

/// A Debezium outbox on Postgres whose producers insert and delete the row
/// in one transaction: every event arrives, with `aggregateid` as the key,
/// `aggregatetype` as the event, `id` and `type` as headers, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_insert_then_delete_arrives_keyed_and_in_order_per_key() {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let body = audit_file_target(&out).replace(
        "[targets.audit]\n",
        "[targets.audit]\nordered = true\nbatch_size = 7\n",
    );
    let config = scratch.write_config(&body);
    let pool = scratch.pg_pool().await;
    sqlx::raw_sql(
        "CREATE TABLE outbox (
            id UUID PRIMARY KEY,
            aggregatetype VARCHAR(255) NOT NULL,
            aggregateid VARCHAR(255) NOT NULL,
            type VARCHAR(255) NOT NULL,
            payload JSONB,
            tenant TEXT
        )",
    )
    .execute(&pool)
    .await
    .unwrap();
    let said = adopt(
        &config,
        &[
            "debezium",
            "--table",
            "outbox",
            "--header",
            "tenant=x-tenant",
        ],
    );
    assert!(said.contains("aggregateid -> partition key"), "{said}");

    // Three writers, interleaved, each inserting and deleting in one
    // transaction; key k's steps are written in order.
    let mut writers = Vec::new();
    for w in 0..3 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for step in 0..40 {
                let key = format!("order-{w}");
                let id = uuid::Uuid::now_v7();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant)
                     VALUES ($1, 'Order', $2, 'OrderStepped', $3, $4)",
                )
                .bind(id)
                .bind(&key)
                .bind(serde_json::json!({ "step": step }))
                .bind((step % 2 == 0).then_some("acme"))
                .execute(&mut *tx)
                .await
                .unwrap();
                sqlx::query("DELETE FROM outbox WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the producers' deletes work as before");

    let relay = RunningRelay::start(&scratch.load_config(&body)).await;
    let file = out.join("audit.jsonl");
    let lines = eventually("all 120 events", WAIT, || {
        let file = file.clone();
        async move {
            let lines = read_jsonl(&file);
            (lines.len() >= 120).then_some(lines)
        }
    })
    .await;
    relay.stop().await;
    assert_eq!(lines.len(), 120);
    let mut next: HashMap<String, i64> = HashMap::new();
    for l in &lines {
        assert_eq!(l["event_name"], "Order", "{l}");
        assert_eq!(l["headers"]["type"], "OrderStepped", "{l}");
        assert_eq!(l["headers"]["id"], l["id"], "{l}");
        let key = l["partition_key"].as_str().unwrap().to_string();
        let step = l["payload"]["step"].as_i64().unwrap();
        assert_eq!(
            l["headers"].get("x-tenant").and_then(|v| v.as_str()),
            (step % 2 == 0).then_some("acme"),
            "{l}"
        );
        let want = next.entry(key.clone()).or_insert(0);
        assert_eq!(
            step, *want,
            "key {key}: step {step} came when {want} was next"
        );
        *want += 1;
    }
    assert_eq!(next.len(), 3);
}

/// `adopt --backfill` while producers keep writing: 10,000 pending rows from
/// before and every row written during the adoption are each delivered at
/// least once; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_live_writes_loses_nothing() {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config(&audit_file_target(&out));
    let pool = scratch.pg_pool().await;
    sqlx::raw_sql(SPAKKY_PG).execute(&pool).await.unwrap();
    // Run `migrate` first so the writers below do not race the schema.
    let (ok, _, stderr) = cli(&["migrate", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    sqlx::query(
        "INSERT INTO spakky_event_outbox (id, event_name, payload, headers, created_at, retry_count)
         SELECT gen_random_uuid(), 'Backlog', convert_to('{\"n\":' || n || '}', 'UTF8'), '{}'::json,
                now() - (10000 - n) * interval '1 millisecond', 0
         FROM generate_series(1, 10000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();

    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let pool = pool.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                let id = uuid::Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO spakky_event_outbox (id, event_name, payload, headers, created_at, retry_count)
                     VALUES ($1, 'Live', '{}', '{}', now(), 0)",
                )
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
                written.push(id);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config_path = config.clone();
    let said = tokio::task::spawn_blocking(move || adopt(&config_path, &["spakky", "--backfill"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let live = writer.await.unwrap();
    eprintln!("{said}; {} rows written during the adoption", live.len());

    let every: Vec<uuid::Uuid> = sqlx::query("SELECT id FROM spakky_event_outbox")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get::<uuid::Uuid, _>("id"))
        .collect();
    assert_eq!(every.len(), 10_000 + live.len());
    let relay = RunningRelay::start(&scratch.load_config(&audit_file_target(&out))).await;
    let file = out.join("audit.jsonl");
    let lines = eventually("every row delivered", Duration::from_secs(120), || {
        let file = file.clone();
        let n = every.len();
        async move {
            let lines = read_jsonl(&file);
            (lines.len() >= n).then_some(lines)
        }
    })
    .await;
    relay.stop().await;
    let got: HashSet<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    let missing = every
        .iter()
        .filter(|id| !got.contains(&id.to_string()))
        .count();
    assert_eq!(missing, 0, "rows lost across the adoption");
    let backlog_order: Vec<i64> = lines
        .iter()
        .filter(|l| l["event_name"] == "Backlog")
        .map(|l| l["payload"]["n"].as_i64().unwrap())
        .collect();
    assert!(
        backlog_order.windows(2).all(|w| w[0] < w[1]),
        "the backfill is in created_at order"
    );
}

/// Mistakes are named: a missing table, a missing column, a bad header.
#[tokio::test]
async fn adopt_names_a_missing_table_column_or_bad_option() {
    let scratch = Scratch::new();
    let config = scratch.write_config(&audit_file_target(scratch.path()));
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = cli(&["adopt", "spakky", "--config", path]);
    assert!(
        !ok && stderr.contains("table \"spakky_event_outbox\" does not exist"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&["adopt", "spakky", "--config", path, "--undo"]);
    assert!(!ok && stderr.contains("is not adopted"), "{stderr}");
    let storage = scratch.storage().await;
    sqlx::raw_sql("CREATE TABLE outbox (id TEXT PRIMARY KEY, aggregatetype TEXT, payload TEXT)")
        .execute(storage.pool())
        .await
        .unwrap();
    let (ok, _, stderr) = cli(&["adopt", "debezium", "--config", path, "--table", "outbox"]);
    assert!(
        !ok && stderr.contains("no column \"aggregateid\""),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&[
        "adopt",
        "debezium",
        "--config",
        path,
        "--table",
        "outbox",
        "--key-from",
        "none",
        "--header",
        "oops",
    ]);
    assert!(!ok && stderr.contains("COLUMN=HEADER-NAME"), "{stderr}");
    let (ok, stdout, stderr) = cli(&[
        "adopt",
        "debezium",
        "--config",
        path,
        "--table",
        "outbox",
        "--key-from",
        "none",
    ]);
    assert!(ok, "{stdout}{stderr}");
}

/// The Spakky apps of `tests/adopt/spakky/`, run by the virtualenv that
/// `tests/setup.sh` makes; killed on drop (a panicking test too), and the
/// durable queue the consumer declared deleted.
struct SpakkyApps {
    dir: std::path::PathBuf,
    event: String,
    children: Vec<(&'static str, std::process::Child)>,
}

/// The Spakky virtualenv's python; panics (never skips) when it is missing.
fn spakky_python() -> std::path::PathBuf {
    outbox_relay_tests::spakky::python().unwrap_or_else(|e| panic!("{e}"))
}

const SPAKKY_APPS: &str = outbox_relay_tests::spakky::APPS;
const RABBITMQ: &str = "127.0.0.1:5672";

impl SpakkyApps {
    fn new(dir: &Path, event: &str) -> Self {
        spakky_python();
        Self {
            dir: dir.to_path_buf(),
            event: event.to_string(),
            children: Vec::new(),
        }
    }

    fn command(&self, script: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(spakky_python());
        command
            .current_dir(SPAKKY_APPS)
            .arg(format!("{SPAKKY_APPS}/{script}"))
            .args(["--event", &self.event])
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        command
    }

    /// What an app wrote on stderr (its file in the scratch directory).
    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.stderr"))).unwrap_or_default()
    }

    /// Runs the producer to the end; returns its JSON lines (one per order).
    fn produce(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.command("producer.py", args).output().unwrap();
        assert!(
            out.status.success(),
            "the Spakky producer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Starts an app that runs until killed, its stdout in `<name>.stdout`;
    /// returns once it printed `{"started": true}`.
    async fn start(&mut self, name: &'static str, script: &str, args: &[&str]) {
        let stdout = self.dir.join(format!("{name}.stdout"));
        let stderr = self.dir.join(format!("{name}.stderr"));
        let child = self
            .command(script, args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        self.children.push((name, child));
        let start = std::time::Instant::now();
        loop {
            if self.lines(name).iter().any(|l| l.get("started").is_some()) {
                return;
            }
            let (_, child) = self.children.last_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the Spakky {name} exited ({status}): {}", self.stderr(name));
            }
            assert!(
                start.elapsed() < WAIT,
                "the Spakky {name} did not start within {WAIT:?}: {}",
                self.stderr(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The JSON lines an app printed so far.
    fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        read_jsonl(&self.dir.join(format!("{name}.stdout")))
    }

    /// Panics if an app has exited.
    fn assert_running(&mut self, name: &str) {
        let dir = self.dir.clone();
        let (_, child) = self.children.iter_mut().find(|(n, _)| *n == name).unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(dir.join(format!("{name}.stderr")));
            panic!("the Spakky {name} exited ({status}): {err:?}");
        }
    }

    /// SIGTERM, and the exit status once it stopped.
    fn stop(&mut self, name: &str) -> std::process::ExitStatus {
        let at = self.children.iter().position(|(n, _)| *n == name).unwrap();
        let (_, mut child) = self.children.remove(at);
        crate::terminate(&mut child)
    }
}

impl Drop for SpakkyApps {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The consumer's durable queue, named after this run's event class.
        let queue = self.event.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let url = format!("amqp://guest:guest@{RABBITMQ}/%2f");
                let Ok(conn) =
                    lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = conn.create_channel().await {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), Default::default())
                        .await;
                }
                let _ = conn.close(0, "done".into()).await;
            });
        })
        .join();
    }
}

/// True once queue `name` exists (a passive declare; a missing queue closes
/// the channel, so each check has a channel of its own).
async fn queue_exists(conn: &lapin::Connection, name: &str) -> bool {
    let channel = conn.create_channel().await.unwrap();
    let found = channel
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = channel.close(0, "checked".into()).await;
    found
}

/// A real Spakky application (spakky 6.4.0 from PyPI): its producer
/// publishes integration events through `OutboxEventBus` inside
/// `@transactional` units of work on Postgres, some rolled back; the table
/// is adopted (with `--backfill` for the rows written before); outbox-relay
/// delivers through `rabbitmq` the way spakky-rabbitmq does (default
/// exchange, routing key = the event class name); a Spakky consumer's
/// `@on_event` handler gets every committed event, parsed into the event
/// class, with the producer's trace, and no rolled-back one. Spakky's own
/// two relays run alongside the whole time and publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_spakky_app_switches_to_the_relay_without_a_producer_change() {
    let scratch = Scratch::postgres().await;
    // The event class name is spakky's routing key and the consumer's queue:
    // one of this run's own keeps parallel runs on one broker apart.
    let event = format!("OrderPlaced{}", uuid::Uuid::now_v7().simple());
    let mut apps = SpakkyApps::new(scratch.path(), &event);
    let database = scratch.database_url();
    let amqp = lapin::Connection::connect(
        &format!("amqp://guest:guest@{RABBITMQ}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {RABBITMQ} ({e}); start it"));
    let body = format!(
        r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "rabbitmq"
sandbox = {{ allow_tcp = ["{RABBITMQ}"] }}
config = {{ url = "amqp://guest:guest@{RABBITMQ}/%2f", exchange = "", routing_key = "{{event}}" }}
"#
    );
    let config = scratch.write_config(&body);

    // Before the switch: the app makes its table (spakky never does) and
    // writes 4 orders, the 4th rolled back; 3 rows wait for spakky's relay.
    let mut orders = apps.produce(&[
        "--database",
        &database,
        "--create-table",
        "--first",
        "1",
        "--count",
        "4",
        "--rollback-every",
        "4",
    ]);
    let said = adopt(&config, &["spakky", "--backfill"]);
    assert!(said.contains("backfilled 3 unpublished row(s)"), "{said}");

    // The consumer declares its durable queue `<event>`; the relay does not.
    let received = scratch.path().join("received.jsonl");
    apps.start(
        "consumer",
        "consumer.py",
        &["--out", received.to_str().unwrap()],
    )
    .await;
    eventually("the consumer's queue declared", WAIT, || async {
        queue_exists(&amqp, &event).await.then_some(())
    })
    .await;
    // Spakky's own relays (sync and async), left running, polling every 50 ms.
    apps.start("spakky-relay", "relay.py", &["--database", &database])
        .await;

    // After the switch, the same producer, unchanged: 30 orders, every 3rd
    // rolled back.
    orders.extend(apps.produce(&[
        "--database",
        &database,
        "--first",
        "101",
        "--count",
        "30",
        "--rollback-every",
        "3",
    ]));
    let committed: Vec<&serde_json::Value> =
        orders.iter().filter(|o| o["committed"] == true).collect();
    let rolled_back: HashSet<i64> = orders
        .iter()
        .filter(|o| o["committed"] == false)
        .map(|o| o["order_id"].as_i64().unwrap())
        .collect();
    assert_eq!((committed.len(), rolled_back.len()), (23, 11), "{orders:?}");

    let relay = RunningRelay::start(&scratch.load_config(&body)).await;
    let want = committed.len();
    eventually("every committed event handled", WAIT, || {
        let n = read_jsonl(&received).len();
        async move { (n >= want).then_some(()) }
    })
    .await;
    // Time for a late copy (from either relay) to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.stop().await;
    apps.assert_running("consumer");
    apps.assert_running("spakky-relay");
    let status = apps.stop("spakky-relay");
    let spakky_relay = apps.lines("spakky-relay");
    let last = spakky_relay.last().unwrap();
    assert!(
        status.success() && last["stopped"] == true,
        "spakky's relay did not stop cleanly ({status}): {last}; {}",
        apps.stderr("spakky-relay")
    );
    apps.stop("consumer");

    // Spakky's relays were alive and polling throughout, and found nothing.
    assert!(
        last["polls_sync"].as_u64().unwrap() >= 10 && last["polls_async"].as_u64().unwrap() >= 10,
        "spakky's relays polled: {last}"
    );
    assert_eq!(
        (&last["claimed"], &last["sends"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "spakky's relay published something: {last}"
    );

    // Each committed event reached the handler once, parsed into the event
    // class, with the producer's trace; no rolled-back one did.
    let got = read_jsonl(&received);
    assert_eq!(
        got.len(),
        committed.len(),
        "nothing twice, nothing else: {got:?}"
    );
    let by_order: HashMap<i64, &serde_json::Value> = got
        .iter()
        .map(|g| (g["order_id"].as_i64().unwrap(), g))
        .collect();
    assert_eq!(by_order.len(), got.len(), "an event handled twice: {got:?}");
    for want in &committed {
        let order = want["order_id"].as_i64().unwrap();
        let g = by_order
            .get(&order)
            .unwrap_or_else(|| panic!("order {order} never reached the handler: {got:?}"));
        assert_eq!(g["type"], event.as_str(), "{g}");
        for field in ["total_cents", "customer", "event_id", "trace_id"] {
            assert_eq!(
                g[field], want[field],
                "order {order}: {field}: {g} vs {want}"
            );
        }
    }
    assert!(
        by_order.keys().all(|o| !rolled_back.contains(o)),
        "a rolled-back event was delivered: {got:?}"
    );

    // The database agrees: every spakky row copied and marked published,
    // no rolled-back order or event left, nothing dead-lettered.
    let pool = scratch.pg_pool().await;
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM spakky_event_outbox),
                (SELECT count(*) FROM spakky_event_outbox WHERE published_at IS NULL),
                (SELECT count(*) FROM outbox_messages),
                (SELECT count(*) FROM orders)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        (23, 0, 23, 23),
        "(spakky rows, unpublished, copied, orders)"
    );
    let storage = scratch.pg_storage().await;
    assert!(
        outbox_relay_tests::dead_letters(&storage, "bus")
            .await
            .is_empty()
    );
}

/// The Debezium recipe of docs/adopting.md on Kafka: topic
/// `outbox.event.<aggregatetype>`, key `aggregateid`, header `id` (and
/// `type`), value the payload: Debezium's outbox router defaults, read back
/// with librdkafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_on_kafka_arrives_with_the_routers_defaults() {
    use outbox_relay_tests::kafka::Broker;
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("outbox.event.Order", 3);
    let scratch = Scratch::postgres().await;
    let body = format!(
        r#"
[[routes]]
events = ["*"]
targets = ["events"]

[targets.events]
plugin = "kafka"
ordered = true
sandbox = {{ allow_tcp = ["{addr}"] }}
config = {{ bootstrap = ["{addr}"], topic = "outbox.event.{{event}}" }}
"#
    );
    let config = scratch.write_config(&body);
    let pool = scratch.pg_pool().await;
    sqlx::raw_sql(
        "CREATE TABLE outbox (id UUID PRIMARY KEY, aggregatetype TEXT NOT NULL,
         aggregateid TEXT NOT NULL, type TEXT NOT NULL, payload JSONB)",
    )
    .execute(&pool)
    .await
    .unwrap();
    adopt(&config, &["debezium", "--table", "outbox"]);
    let mut sent = Vec::new();
    for i in 0..12 {
        let id = uuid::Uuid::now_v7();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
             VALUES ($1, 'Order', $2, 'OrderCreated', $3)",
        )
        .bind(id)
        .bind(format!("order-{}", i % 3))
        .bind(serde_json::json!({ "i": i }))
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        sent.push((id, format!("order-{}", i % 3), i));
    }
    let relay = RunningRelay::start(&scratch.load_config(&body)).await;
    let records = broker.read("outbox.event.Order", sent.len(), WAIT);
    relay.stop().await;
    assert_eq!(records.len(), sent.len());
    let mut sorted = records.clone();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    for (id, key, i) in &sent {
        let r = records
            .iter()
            .find(|r| r.header("id").as_deref() == Some(id.to_string().as_str()))
            .unwrap_or_else(|| panic!("no record with header id {id}"));
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()), "key = aggregateid");
        assert_eq!(r.header("type").as_deref(), Some("OrderCreated"));
        let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["i"], *i);
    }
    for r in &sorted {
        let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let i = value["i"].as_i64().unwrap();
        let prev = last.insert(r.key.clone().unwrap(), i);
        assert!(prev.is_none_or(|p| p < i), "per-key order on its partition");
    }
}

/// What an outside attack found, each a case here: mixed-case and
/// reserved-word names, a producer's `ON CONFLICT DO NOTHING` that inserts
/// nothing, values Postgres cannot convert, a null Debezium id, a producer
/// whose `search_path` lacks the outbox's schema, and a column type the
/// trigger could not read. No producer insert fails; nothing committed is
/// lost; nothing not inserted is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_and_names_never_fail_a_producer_or_lose_a_row() {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config(&audit_file_target(&out));
    let (ok, _, stderr) = cli(&["migrate", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let pool = scratch.pg_pool().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        SPAKKY_PG.replace("spakky_event_outbox", "\"Order\""),
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE \"DzOut\" (id TEXT, \"AggregateType\" TEXT, \"AggregateId\" TEXT, payload TEXT)",
    )
    .execute(&pool)
    .await
    .unwrap();
    adopt(&config, &["spakky", "--table", "Order"]);
    adopt(
        &config,
        &[
            "debezium",
            "--table",
            "DzOut",
            "--event-from",
            "AggregateType",
            "--key-from",
            "AggregateId",
        ],
    );

    let spakky = "INSERT INTO \"Order\" (id, event_name, payload, headers, created_at, retry_count)
                  VALUES ($1, $2, $3, $4::json, $5::timestamptz, 0)";
    let first = uuid::Uuid::now_v7();
    let row = |id, event: &str, headers: &str, at: &str| {
        sqlx::query(spakky)
            .bind(id)
            .bind(event.to_string())
            .bind(b"{}".to_vec())
            .bind(headers.to_string())
            .bind(at.to_string())
    };
    row(first, "Fine", "{}", "2026-12-01T10:00:00Z")
        .execute(&pool)
        .await
        .unwrap();
    // The same id again, through the producer's own ON CONFLICT DO NOTHING:
    // nothing is inserted, so nothing is delivered.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{spakky} ON CONFLICT DO NOTHING"
    )))
    .bind(first)
    .bind("Retried")
    .bind(b"{}".to_vec())
    .bind("{}")
    .bind("2026-12-01T10:00:00Z")
    .execute(&pool)
    .await
    .unwrap();
    // JSON Postgres accepts but JSONB refuses, and an infinite time.
    row(
        uuid::Uuid::now_v7(),
        "NulHeader",
        r#"{"x":"a\u0000b"}"#,
        "2026-12-01T10:00:00Z",
    )
    .execute(&pool)
    .await
    .unwrap();
    row(uuid::Uuid::now_v7(), "Forever", "{}", "infinity")
        .execute(&pool)
        .await
        .unwrap();
    // A producer whose search_path does not reach the outbox's schema.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET search_path = pg_catalog")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(
        spakky.replace("INTO \"Order\"", "INTO public.\"Order\""),
    ))
    .bind(uuid::Uuid::now_v7())
    .bind("ElsewherePath")
    .bind(b"{}".to_vec())
    .bind("{}")
    .bind("2026-12-01T10:00:00Z")
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    // Debezium rows: a null id, a serial-style id, mixed-case columns.
    for (id, key) in [(None, "k1"), (Some("1"), "k2")] {
        sqlx::query("INSERT INTO \"DzOut\" (id, \"AggregateType\", \"AggregateId\", payload) VALUES ($1, 'Dz', $2, '{}')")
            .bind(id)
            .bind(key)
            .execute(&pool)
            .await
            .unwrap();
    }

    let relay = RunningRelay::start(&scratch.load_config(&audit_file_target(&out))).await;
    let file = out.join("audit.jsonl");
    eventually("every inserted row delivered", WAIT, || {
        let file = file.clone();
        async move {
            let lines = read_jsonl(&file);
            (lines.len() >= 6).then_some(lines)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;
    let lines = read_jsonl(&file);
    let events: Vec<&str> = lines
        .iter()
        .map(|l| l["event_name"].as_str().unwrap())
        .collect();
    let mut sorted = events.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["Dz", "Dz", "ElsewherePath", "Fine", "Forever", "NulHeader"],
        "each inserted row once, the row not inserted never: {lines:?}"
    );
    let nul = lines
        .iter()
        .find(|l| l["event_name"] == "NulHeader")
        .unwrap();
    assert!(
        nul["headers"]["outbox-adopt-error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "why its headers were dropped travels with it: {nul}"
    );
    let keys: HashSet<&str> = lines
        .iter()
        .filter(|l| l["event_name"] == "Dz")
        .map(|l| l["partition_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, HashSet::from(["k1", "k2"]));

    // A column the trigger could not read is refused at adopt time.
    sqlx::raw_sql(
        "CREATE TABLE textual (id UUID PRIMARY KEY, event_name TEXT, payload BYTEA, headers JSON,
         created_at TEXT, published_at TIMESTAMPTZ, retry_count INT, claimed_at TIMESTAMPTZ)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (ok, _, stderr) = cli(&[
        "adopt",
        "spakky",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "textual",
    ]);
    assert!(
        !ok && stderr
            .contains("column \"created_at\" of \"textual\" is text; adopting needs a timestamp"),
        "{stderr}"
    );

    // `status` says when a trigger is gone.
    sqlx::raw_sql("DROP TABLE \"DzOut\"; CREATE TABLE \"DzOut\" (id TEXT, payload TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let (_, status, _) = cli(&["status", "--config", config.to_str().unwrap()]);
    assert!(
        status.contains("adopted table \"DzOut\" (debezium") && status.contains("MISSING"),
        "{status}"
    );
}

/// On SQLite a producer's `INSERT OR REPLACE` must not turn the trigger's
/// duplicate check into a failure or a replacement, and a null id is
/// dead-lettered with its reason rather than dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_producers_or_replace_and_null_ids_lose_nothing() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config(&audit_file_target(&out));
    let storage = scratch.storage().await;
    let pool = storage.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE outbox (id TEXT, aggregatetype TEXT, aggregateid TEXT, payload TEXT)",
    )
    .execute(&pool)
    .await
    .unwrap();
    adopt(&config, &["debezium", "--table", "outbox"]);
    let id = uuid::Uuid::now_v7().to_string();
    for (id, key) in [
        (Some(id.as_str()), "a"),
        (Some(id.as_str()), "b"),
        (None, "c"),
    ] {
        sqlx::query("INSERT OR REPLACE INTO outbox (id, aggregatetype, aggregateid, payload) VALUES (?1, 'T', ?2, '{}')")
            .bind(id)
            .bind(key)
            .execute(&pool)
            .await
            .unwrap();
    }
    let relay = RunningRelay::start(&scratch.load_config(&audit_file_target(&out))).await;
    let file = out.join("audit.jsonl");
    let lines = eventually("the first row delivered", WAIT, || {
        let file = file.clone();
        async move {
            let lines = read_jsonl(&file);
            (!lines.is_empty()).then_some(lines)
        }
    })
    .await;
    let dead = eventually("the null id dead-lettered", WAIT, || {
        let storage = &storage;
        async move {
            let dead = outbox_relay_tests::dead_letters(storage, "audit").await;
            (!dead.is_empty()).then_some(dead)
        }
    })
    .await;
    relay.stop().await;
    assert_eq!(
        lines.len(),
        1,
        "one message per id: the duplicate is the same message id"
    );
    assert_eq!(
        lines[0]["partition_key"], "a",
        "the first kept, not replaced"
    );
    assert!(
        dead[0].last_error.contains("not-a-uuid"),
        "{}",
        dead[0].last_error
    );
}

/// The second attack's cases: a producer as a role with no privilege on the
/// outbox, a producer whose `search_path` finds another `outbox_settings`
/// first, a backfill of rows JSONB cannot hold, and a table renamed away
/// (its replacement is not adopted, and `status` says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_roles_shadow_schemas_bad_backfills_and_renames() {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config(&audit_file_target(&out));
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = cli(&["migrate", "--config", path]);
    assert!(ok, "{stderr}");
    let pool = scratch.pg_pool().await;
    sqlx::raw_sql(SPAKKY_PG).execute(&pool).await.unwrap();
    let insert = "INSERT INTO public.spakky_event_outbox (id, event_name, payload, headers, created_at, retry_count)
                  VALUES ($1, $2, '{}', $3::json, now(), 0)";
    // Pending before adoption, with headers JSONB refuses: the backfill copies it.
    sqlx::query(insert)
        .bind(uuid::Uuid::now_v7())
        .bind("Backfilled")
        .bind(r#"{"x":"\u0000"}"#)
        .execute(&pool)
        .await
        .unwrap();
    let said = adopt(&config, &["spakky", "--backfill"]);
    assert!(said.contains("backfilled 1 unpublished row(s)"), "{said}");

    // A producer role that may only insert into its own table.
    let role = format!("adopt_app_{}", uuid::Uuid::now_v7().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role}; GRANT USAGE ON SCHEMA public TO {role};
         GRANT INSERT ON public.spakky_event_outbox TO {role};
         CREATE SCHEMA shadow; CREATE TABLE shadow.outbox_settings (key TEXT, value TEXT);
         INSERT INTO shadow.outbox_settings VALUES ('partitions', '8');
         GRANT USAGE ON SCHEMA shadow TO {role}; GRANT SELECT ON shadow.outbox_settings TO {role}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {role}; SET search_path = shadow, public"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    for i in 0..4 {
        sqlx::query(insert)
            .bind(uuid::Uuid::now_v7())
            .bind(format!("AsApp{i}"))
            .bind("{}")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::raw_sql("RESET ROLE; RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let relay = RunningRelay::start(&scratch.load_config(&audit_file_target(&out))).await;
    let file = out.join("audit.jsonl");
    let lines = eventually("the backfilled row and the app's four", WAIT, || {
        let file = file.clone();
        async move {
            let lines = read_jsonl(&file);
            (lines.len() >= 5).then_some(lines)
        }
    })
    .await;
    relay.stop().await;
    let backfilled = lines
        .iter()
        .find(|l| l["event_name"] == "Backfilled")
        .unwrap();
    assert!(
        backfilled["headers"]["outbox-adopt-error"].is_string(),
        "{backfilled}"
    );
    let partitions: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT partition FROM outbox_messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        partitions,
        [0],
        "the outbox's own settings, not the shadow's"
    );

    // Renamed away and replaced: the new table is not adopted, and status says so.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE spakky_event_outbox RENAME TO spakky_event_outbox_old; {SPAKKY_PG}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let (_, status, _) = cli(&["status", "--config", path]);
    assert!(status.contains("MISSING"), "{status}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA shadow CASCADE; DROP OWNED BY {role}; DROP ROLE {role}"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
