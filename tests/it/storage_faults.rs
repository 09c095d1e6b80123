//! Storage under faults (issue 20): a full disk, busy databases and refused
//! ports, rows that cannot be delivered, skewed clocks, and open
//! transactions in other databases. Each test names the finding it covers
//! and fails on the code before its fix.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outbox_relay::NewMessage;
use outbox_relay::message::Position;
use outbox_relay::storage::sqlite::SqliteStorage;
use outbox_relay::storage::{Storage, StorageError};
use outbox_relay_tests::{
    RunningRelay, Scratch, audit_file_target, dead_letters, enqueue, eventually, read_ids,
};
use serde_json::Value;
use sqlx::Connection;

const WAIT: Duration = Duration::from_secs(30);

/// A small tmpfs mounted over a directory, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            dir.display()
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `file` until the file system is full.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Finding 2: after `database or disk is full` on COMMIT, every pooled
/// connection failed with "attempted to call begin_with at non-zero
/// transaction depth" until a restart. Now the failed write's connection is
/// closed, and the same handle writes again as soon as there is room.
#[tokio::test]
async fn sqlite_a_full_disk_leaves_the_pool_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "3m");
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let storage = SqliteStorage::connect(&url).await.unwrap();
    storage.migrate().await.unwrap();
    enqueue(&storage, "before", 10).await;

    let filler = dir.path().join("filler");
    fill(&filler);
    let big = || NewMessage::new("big", vec![7u8; 512 * 1024]);
    let mut full_errors = 0;
    for _ in 0..5 {
        match storage.save(&[big()]).await {
            Err(e) => {
                assert!(!e.is_transient(), "a full disk is not transient: {e}");
                let text = e.to_string();
                assert!(text.contains("full"), "{text}");
                full_errors += 1;
            }
            Ok(()) => panic!("a 512 KiB message fit on a full disk"),
        }
    }
    assert_eq!(full_errors, 5);

    std::fs::remove_file(&filler).unwrap();
    for i in 0..20 {
        storage
            .save(&[NewMessage::new("after", format!("{i}").into_bytes())])
            .await
            .unwrap_or_else(|e| panic!("write {i} after the disk had room again: {e}"));
    }
    let lag = storage.status(&["t".to_string()]).await.unwrap()[0].lag;
    assert_eq!(
        lag, 30,
        "the 10 written before and the 20 after, none of the failed"
    );
}

/// Finding 2: `is_transient` by error code. A busy SQLite and a Postgres
/// serialization failure are transient; an error whose text merely says
/// "locked" or "busy" is not (it was, when the text was matched).
#[tokio::test]
async fn transient_errors_are_told_by_their_code() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    let options: sqlx::sqlite::SqliteConnectOptions = scratch.database_url().parse().unwrap();
    let mut holder = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut other = sqlx::SqliteConnection::connect_with(&options.busy_timeout(Duration::ZERO))
        .await
        .unwrap();
    let busy = sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap_err();
    assert_eq!(
        busy.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("5")
    );
    assert!(StorageError::Database(busy).is_transient());
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    drop(storage);

    let pg = Scratch::postgres().await;
    let pool = pg.pg_pool().await;
    let raise = |code: &str, text: &str| {
        format!("DO $$ BEGIN RAISE EXCEPTION '{text}' USING ERRCODE = '{code}'; END $$")
    };
    for (code, text, transient) in [
        ("40001", "could not serialize access", true),
        ("40P01", "deadlock detected", true),
        ("23514", "account is locked", false),
        ("P0001", "the broker is busy", false),
    ] {
        let e = sqlx::raw_sql(sqlx::AssertSqlSafe(raise(code, text)))
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(
            StorageError::Database(e).is_transient(),
            transient,
            "{code} {text:?}"
        );
    }
}

/// Finding 11: a refused Postgres port failed after 10 s with only "pool
/// timed out". It fails at once, naming the address.
#[tokio::test]
async fn a_refused_postgres_port_fails_fast_and_names_the_address() {
    let port = crate::free_port();
    let scratch = Scratch::new();
    let config = scratch.path().join("refused.toml");
    std::fs::write(
        &config,
        outbox_relay_tests::config_text(
            &format!("postgres://postgres@127.0.0.1:{port}/outbox"),
            "",
            &audit_file_target(scratch.path()),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(crate::relay_binary())
        .args(["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the error names the address: {stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
}

/// Finding 6: SQLite rows whose `partition` is outside the partition count
/// were never delivered, never dead-lettered and never reported. Now they
/// are dead-lettered with the reason, and the rows around them delivered.
#[tokio::test]
async fn sqlite_rows_outside_the_partitions_are_dead_lettered_with_the_reason() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let path = scratch.write_config_as("relay.toml", "partitions = 4", &audit_file_target(&out));
    let config = outbox_relay::config::Config::load(&path).unwrap();
    let storage = scratch.storage().await;
    storage.ensure_partitions(4).await.unwrap();
    let good = enqueue(&storage, "e", 20).await;
    let mut bad = Vec::new();
    for partition in ["7", "-1", "4096"] {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO outbox_messages (id, event_name, partition, payload) VALUES ('{id}', 'e', {partition}, x'7b7d')"
        )))
        .execute(storage.pool())
        .await
        .unwrap();
        bad.push((id, partition));
    }
    let relay = RunningRelay::start(&config).await;
    let letters = eventually("the three rows dead-lettered", WAIT, || async {
        let letters = dead_letters(&storage, "audit").await;
        (letters.len() == 3).then_some(letters)
    })
    .await;
    for (id, partition) in &bad {
        let letter = letters
            .iter()
            .find(|l| &l.message_id == id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {letters:?}"));
        assert_eq!(
            letter.last_error,
            format!("malformed message: partition {partition} is outside 0..4")
        );
    }
    let file = out.join("audit.jsonl");
    eventually("the good rows delivered", WAIT, || async {
        (read_ids(&file).len() == good.len()).then_some(())
    })
    .await;
    let status = storage.status(&["audit".to_string()]).await.unwrap();
    assert_eq!((status[0].lag, status[0].dead_letters), (0, 3));
    relay.stop().await;
}

/// Finding 8: a row over `max_payload_bytes` comes back malformed with its
/// size, on both backends, and its bytes are not read.
#[tokio::test]
async fn a_payload_over_the_limit_comes_back_malformed_without_its_bytes() {
    let sqlite = Scratch::new();
    let pg = Scratch::postgres().await;
    let backends: Vec<Box<dyn Storage>> = vec![
        Box::new(sqlite.storage().await),
        Box::new(pg.pg_storage().await),
    ];
    for storage in backends {
        let small = NewMessage::new("e", b"{}".to_vec());
        let large = NewMessage::new("e", vec![1u8; 100_000]);
        storage.save(&[small.clone(), large.clone()]).await.unwrap();
        let start = Instant::now();
        let entries = loop {
            let entries = storage
                .fetch_pending(0, Position::default(), 10, 1000)
                .await
                .unwrap();
            if entries.len() == 2 || start.elapsed() > WAIT {
                break entries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(entries[0].as_ref().unwrap().id, small.id);
        let bad = entries[1].as_ref().unwrap_err();
        assert_eq!(bad.id, large.id.to_string());
        assert_eq!(
            bad.reason,
            "the payload is 100000 bytes, over relay.max_payload_bytes (1000)"
        );
    }
}

async fn status_json(config: &Path) -> Vec<Value> {
    let out = Command::new(crate::relay_binary())
        .args(["status", "--json", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The lease owners of the first target in a `status --json`.
fn lease_owners(rows: &[Value]) -> Vec<String> {
    rows[0]["lease_owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect()
}

/// Finding 7: a relay whose clock ran 60 s ahead took every live lease (it
/// judged the other's heartbeat and leases expired by its own clock). Now
/// every expiry is the database's clock: the two relays share the
/// partitions, and the other keeps its half.
#[tokio::test]
async fn a_relay_whose_clock_is_60s_ahead_takes_no_live_lease() {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = scratch.write_config_as("relay.toml", "partitions = 8", &audit_file_target(&out));
    let storage = scratch.pg_storage().await;
    storage.ensure_partitions(8).await.unwrap();
    let mut honest = crate::spawn_relay(&config);
    eventually("the first relay holds all 8 partitions", WAIT, || async {
        (lease_owners(&status_json(&config).await).len() == 8).then_some(())
    })
    .await;
    // libfaketime (the `faketime` package) in the relay's own process, so
    // its pid is the one in its owner name.
    let mut skewed = Command::new(crate::relay_binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .env(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        )
        .env("FAKETIME", "+60s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let honest_tag = format!("-{}-", honest.id());
    let skewed_tag = format!("-{}-", skewed.id());
    let split = eventually("the partitions split 4 and 4", WAIT, || async {
        let owners = lease_owners(&status_json(&config).await);
        let mine = owners.iter().filter(|o| o.contains(&honest_tag)).count();
        let theirs = owners.iter().filter(|o| o.contains(&skewed_tag)).count();
        (mine == 4 && theirs == 4).then_some(owners)
    })
    .await;
    // And it stays so: the skewed relay never takes the other half.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let owners = lease_owners(&status_json(&config).await);
        let mine = owners.iter().filter(|o| o.contains(&honest_tag)).count();
        assert_eq!(
            mine, 4,
            "the honest relay lost leases: {owners:?} (was {split:?})"
        );
    }
    let sent = enqueue(&storage, "e", 200).await;
    eventually("every message delivered", WAIT, || async {
        let got = read_ids(&out.join("audit.jsonl"));
        sent.iter()
            .all(|m| got.contains(&m.id.to_string()))
            .then_some(())
    })
    .await;
    assert!(crate::terminate(&mut skewed).success());
    assert!(crate::terminate(&mut honest).success());
}

/// Finding 10: `pg_snapshot_xmin` is cluster-wide, so a transaction open in
/// another database of the server held every message back. Now only this
/// database's transactions do, and `status` names the backend that holds
/// delivery back.
#[tokio::test]
async fn only_this_databases_open_transactions_hold_delivery_back() {
    let scratch = Scratch::postgres().await;
    let elsewhere = Scratch::postgres().await;
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config_path = scratch.write_config_as("relay.toml", "", &audit_file_target(&out));
    let config = outbox_relay::config::Config::load(&config_path).unwrap();
    let storage = scratch.pg_storage().await;
    assert!(storage.horizon_is_per_database());

    // A writer in another database of the same server, holding its transaction open.
    let mut other = sqlx::PgConnection::connect(&elsewhere.database_url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE busy (i int); BEGIN; INSERT INTO busy VALUES (1);")
        .execute(&mut other)
        .await
        .unwrap();
    let relay = RunningRelay::start(&config).await;
    let file = out.join("audit.jsonl");
    let first = enqueue(&storage, "e", 5).await;
    let started = Instant::now();
    eventually(
        "delivery while another database's transaction is open",
        WAIT,
        || async { (read_ids(&file).len() == first.len()).then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // The same writer in this database holds back what commits after it began.
    let mut here = sqlx::PgConnection::connect(&scratch.database_url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE side (i int)")
        .execute(&mut here)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO side VALUES (1);")
        .execute(&mut here)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut here)
        .await
        .unwrap();
    let held = enqueue(&storage, "e", 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        read_ids(&file).len(),
        first.len(),
        "held back by the open transaction"
    );
    let rows = status_json(&config_path).await;
    let waiting = &rows[0]["waiting_on"];
    assert_eq!(waiting["pid"], pid, "{rows:?}");
    let database = scratch
        .database_url()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(waiting["database"], database.as_str());
    assert!(waiting["age_ms"].as_i64().unwrap() >= 2000, "{waiting}");
    let text = Command::new(crate::relay_binary())
        .args(["status", "--config", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "delivery waits on an open transaction: backend pid {pid} in database {database}"
        )),
        "{text}"
    );

    sqlx::raw_sql("COMMIT").execute(&mut here).await.unwrap();
    eventually("delivery once it commits", WAIT, || async {
        (read_ids(&file).len() == first.len() + held.len()).then_some(())
    })
    .await;
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    relay.stop().await;
}
