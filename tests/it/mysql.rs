//! MariaDB / MySQL: the commit order the relay writes (late commits are
//! delivered, open and rolled-back transactions hold nothing back), relays
//! sharing and handing over the work, the privileges, and the operator's
//! tools. The crash and chaos tests have MariaDB runs of their own
//! (crash.rs, chaos.rs); the conformance suite runs every case here too.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use outbox_relay::NewMessage;
use outbox_relay::message::Position;
use outbox_relay::producer;
use outbox_relay::storage::{Ack, Storage};
use outbox_relay_tests::{RunningRelay, Scratch, enqueue, eventually, read_jsonl};

use crate::{relay_binary, spawn_relay, terminate};

const WAIT: Duration = Duration::from_secs(120);

/// An ordered `file` target `ledger` writing to `out/ledger.jsonl`.
fn ledger(out: &Path) -> String {
    format!(
        r#"
[[routes]]
events = ["*"]
targets = ["ledger"]

[targets.ledger]
plugin = "file"
ordered = true
config = {{ path = "/out/ledger.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    )
}

/// The `seq` the open transaction on `conn` was given by its last insert.
async fn last_seq(conn: &mut sqlx::MySqlConnection) -> i64 {
    let id: u64 = sqlx::query_scalar("SELECT LAST_INSERT_ID()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    i64::try_from(id).unwrap()
}

async fn commit_one(pool: &sqlx::MySqlPool, message: &NewMessage) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    producer::mysql::enqueue(&mut tx, message).await.unwrap();
    let seq = last_seq(&mut tx).await;
    tx.commit().await.unwrap();
    seq
}

#[tokio::test]
async fn the_log_passes_an_open_transaction_and_reads_its_row_once_it_commits() {
    let scratch = Scratch::mysql().await;
    let storage = scratch.mysql_storage().await;
    storage.ensure_partitions(1).await.unwrap();
    let pool = scratch.mysql_pool().await;
    let lease = storage
        .acquire_lease("t", 0, "me", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();

    let late = NewMessage::new("e", b"late".to_vec());
    let mut open = pool.begin().await.unwrap();
    producer::mysql::enqueue(&mut open, &late).await.unwrap();
    let late_seq = last_seq(&mut open).await;
    let early = NewMessage::new("e", b"early".to_vec());
    let early_seq = commit_one(&pool, &early).await;
    assert!(
        late_seq < early_seq,
        "the open transaction took the lower seq"
    );

    let read = storage
        .fetch_pending(0, lease.position, 100, usize::MAX)
        .await
        .unwrap();
    let got: Vec<_> = read.iter().map(|e| e.as_ref().unwrap().id).collect();
    assert_eq!(
        got,
        [early.id],
        "the committed row, while the lower one is open"
    );
    let passed = read[0].as_ref().unwrap().position();
    storage
        .mark_published(
            &lease,
            &Ack {
                position: passed,
                ..Ack::default()
            },
        )
        .await
        .unwrap();

    open.commit().await.unwrap();
    let read = storage
        .fetch_pending(0, passed, 100, usize::MAX)
        .await
        .unwrap();
    let got: Vec<_> = read.iter().map(|e| e.as_ref().unwrap().id).collect();
    assert_eq!(
        got,
        [late.id],
        "the late commit comes after the cursor, not behind it"
    );
    let late_position = read[0].as_ref().unwrap().position();
    assert!(late_position > passed);
    assert_eq!(late_position.seq, late_seq);
    assert!(
        storage
            .fetch_pending(0, late_position, 100, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    // Read from the start, the log is in commit order.
    let all = storage
        .fetch_pending(0, Position::default(), 100, usize::MAX)
        .await
        .unwrap();
    let got: Vec<_> = all.iter().map(|e| e.as_ref().unwrap().id).collect();
    assert_eq!(got, [early.id, late.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_delivered_in_key_order_and_holds_nothing_back() {
    let scratch = Scratch::mysql().await;
    let out = scratch.path().join("out");
    let config = scratch.load_config(&ledger(&out));
    let _storage = scratch.mysql_storage().await;
    let pool = scratch.mysql_pool().await;
    let file = out.join("ledger.jsonl");
    let relay = RunningRelay::start(&config).await;

    let k1 = NewMessage::new("e", b"k1".to_vec()).with_key("k");
    commit_one(&pool, &k1).await;
    // The late one: a lower seq, open while the others commit and are delivered.
    let k2 = NewMessage::new("e", b"k2".to_vec()).with_key("k");
    let mut open = pool.begin().await.unwrap();
    producer::mysql::enqueue(&mut open, &k2).await.unwrap();
    let late_seq = last_seq(&mut open).await;
    let mut others = Vec::new();
    for i in 0..5 {
        let m = NewMessage::new("e", format!("o{i}").into_bytes()).with_key(format!("other-{i}"));
        assert!(commit_one(&pool, &m).await > late_seq);
        others.push(m.id.to_string());
    }
    eventually(
        "the later commits delivered while the early transaction is open",
        WAIT,
        || async {
            let ids: HashSet<String> = read_jsonl(&file)
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_string())
                .collect();
            others.iter().all(|o| ids.contains(o)).then_some(())
        },
    )
    .await;
    assert!(
        !read_jsonl(&file)
            .iter()
            .any(|l| l["id"] == k2.id.to_string()),
        "nothing of the open transaction is delivered"
    );
    open.commit().await.unwrap();
    let k3 = NewMessage::new("e", b"k3".to_vec()).with_key("k");
    commit_one(&pool, &k3).await;
    let lines = eventually("every message delivered", WAIT, || async {
        let l = read_jsonl(&file);
        (l.len() >= 8).then_some(l)
    })
    .await;
    relay.stop().await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        *counts.entry(l["id"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 8, "{lines:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "no duplicates: {counts:?}"
    );
    let key_order: Vec<&str> = lines
        .iter()
        .filter(|l| l["partition_key"] == "k")
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        key_order,
        [k1.id.to_string(), k2.id.to_string(), k3.id.to_string()],
        "the key's messages in order, the late commit in its place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_insert_does_not_stall_delivery() {
    // docs/operations.md: a rolled-back insert leaves a hole in `seq` that
    // nothing waits for; a commit is delivered within a sequencing interval
    // (10 ms) plus the delivery itself. This bound is generous for a
    // loaded 2-core box; a relay that waited for the hole would never meet it.
    const BOUND: Duration = Duration::from_secs(5);
    let scratch = Scratch::mysql().await;
    let out = scratch.path().join("out");
    let config = scratch.load_config(&ledger(&out));
    let _storage = scratch.mysql_storage().await;
    let pool = scratch.mysql_pool().await;
    let file = out.join("ledger.jsonl");
    let relay = RunningRelay::start(&config).await;

    let doomed = NewMessage::new("e", b"doomed".to_vec()).with_key("k");
    let mut open = pool.begin().await.unwrap();
    producer::mysql::enqueue(&mut open, &doomed).await.unwrap();
    let mut delivered = 0;
    for round in 0..2 {
        for i in 0..5 {
            let m = NewMessage::new("e", format!("{round}-{i}").into_bytes()).with_key("k");
            let committed = Instant::now();
            commit_one(&pool, &m).await;
            delivered += 1;
            eventually("the commit delivered", WAIT, || async {
                read_jsonl(&file)
                    .iter()
                    .any(|l| l["id"] == m.id.to_string())
                    .then_some(())
            })
            .await;
            assert!(
                committed.elapsed() < BOUND,
                "a commit waited {:?} behind the {} transaction",
                committed.elapsed(),
                if round == 0 { "open" } else { "rolled-back" }
            );
        }
        if round == 0 {
            open.rollback().await.unwrap();
            open = pool.begin().await.unwrap();
        }
    }
    open.rollback().await.unwrap();
    let lines = read_jsonl(&file);
    relay.stop().await;
    assert_eq!(lines.len(), delivered);
    assert!(!lines.iter().any(|l| l["id"] == doomed.id.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_processes_share_the_work_and_take_over_a_killed_one() {
    const N: usize = 6_000;
    let scratch = Scratch::mysql().await;
    let storage = scratch.mysql_storage().await;
    storage.ensure_partitions(4).await.unwrap();
    let out = scratch.path().join("out");
    let config = scratch.write_config_as(
        "relay.toml",
        "partitions = 4\nbatch_size = 100",
        &format!(
            r#"
[[routes]]
events = ["*"]
targets = ["counted"]

[targets.counted]
plugin = "count"
config = {{ path = "/out/count.jsonl", sleep_ms = 2 }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
            out.display()
        ),
    );
    let file = out.join("count.jsonl");
    let mut first = spawn_relay(&config);
    let mut second = spawn_relay(&config);
    let sent = enqueue(&storage, "thing.happened", N).await;
    eventually("some deliveries", WAIT, || async {
        (read_jsonl(&file).len() >= N / 5).then_some(())
    })
    .await;
    first.kill().unwrap(); // SIGKILL: its leases expire and the other takes over
    first.wait().unwrap();
    let counts = eventually("every message delivered", WAIT, || async {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in read_jsonl(&file) {
            *counts
                .entry(l["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        (counts.len() >= N).then_some(counts)
    })
    .await;
    assert!(terminate(&mut second).success());
    for m in &sent {
        assert!(counts.contains_key(&m.id.to_string()), "{} lost", m.id);
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    // The killed relay's batches in flight: one per partition it held,
    // plus up to 8 unwritten acknowledgements each (docs/operations.md).
    assert!(duplicates <= 4 * 9 * 100, "{duplicates} duplicates");
}

#[tokio::test]
async fn a_relay_user_without_update_on_the_log_is_told_which_grant() {
    use sqlx::Connection as _;
    let scratch = Scratch::mysql().await;
    let storage = scratch.mysql_storage().await;
    let database = scratch.mysql_database().unwrap().to_string();
    let user = format!("r{}", &database[database.len() - 10..]);
    let admin = scratch.mysql_pool().await;
    for sql in [
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"),
        format!("GRANT SELECT, INSERT, DELETE ON {database}.* TO '{user}'@'%'"),
        format!("GRANT UPDATE ON {database}.outbox_cursors TO '{user}'@'%'"),
        format!("GRANT UPDATE ON {database}.outbox_settings TO '{user}'@'%'"),
        format!("GRANT UPDATE ON {database}.outbox_deliveries TO '{user}'@'%'"),
        format!("GRANT UPDATE ON {database}.outbox_relays TO '{user}'@'%'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    storage
        .save(&[NewMessage::new("e", b"{}".to_vec())])
        .await
        .unwrap();
    // A producer with INSERT alone enqueues.
    let url = format!("mysql://{user}:pw@127.0.0.1:3306/{database}");
    let mut producer_conn = sqlx::MySqlConnection::connect(&url).await.unwrap();
    producer::mysql::enqueue(&mut producer_conn, &NewMessage::new("e", b"{}".to_vec()))
        .await
        .unwrap();
    let limited = outbox_relay::storage::mysql::MySqlStorage::connect(&url)
        .await
        .unwrap();
    let err = limited.sequence().await.unwrap_err().to_string();
    assert!(
        err.contains("lacks UPDATE on outbox_messages") && err.contains("grant"),
        "{err}"
    );
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP USER '{user}'@'%'")))
        .execute(&admin)
        .await;
}

#[tokio::test]
async fn status_and_the_dead_letter_tools_work_on_mysql() {
    let scratch = Scratch::mysql().await;
    let out = scratch.path().join("out");
    let config = scratch.write_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "file"
config = {{ path = "/out/t.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
retry = {{ max_attempts = 1 }}
"#,
        out.display()
    ));
    let storage = scratch.mysql_storage().await;
    let pool = scratch.mysql_pool().await;
    // Two rows the relay cannot decode (dead-lettered with the reason) and one good one.
    sqlx::query(
        "INSERT INTO outbox_messages (id, event_name, payload) VALUES
            ('not-a-uuid', 'order.created', 'x'), (?, 'order.created', 'y')",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO outbox_messages (id, event_name, payload, headers) VALUES (?, 'order.paid', 'z', 'not json')")
        .bind(uuid::Uuid::now_v7().to_string())
        .execute(&pool)
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(relay_binary())
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, text) = run(&["status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains('t') && text.contains('3'),
        "lag 3 before the relay runs: {text}"
    );
    let relay = RunningRelay::start(&outbox_relay::config::Config::load(&config).unwrap()).await;
    let dead = eventually("two dead letters", WAIT, || async {
        let d = outbox_relay_tests::dead_letters(&storage, "t").await;
        (d.len() == 2).then_some(d)
    })
    .await;
    relay.stop().await;
    assert_eq!(read_jsonl(&out.join("t.jsonl")).len(), 1);
    let (ok, text) = run(&["dead-letters", "list", "--event", "order.created"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("not-a-uuid") && !text.contains("order.paid"),
        "{text}"
    );
    let seq = dead
        .iter()
        .find(|d| d.message_id == "not-a-uuid")
        .unwrap()
        .seq
        .to_string();
    let (ok, text) = run(&["dead-letters", "show", "t", &seq]);
    assert!(ok, "{text}");
    assert!(text.contains("is not a UUID"), "{text}");
    let (ok, text) = run(&[
        "dead-letters",
        "purge",
        "--target",
        "t",
        "--event",
        "order.paid",
        "--yes",
    ]);
    assert!(ok, "{text}");
    assert_eq!(
        outbox_relay_tests::dead_letters(&storage, "t").await.len(),
        1
    );
    let (ok, text) = run(&["dead-letters", "replay", "--target", "t", "--yes"]);
    assert!(ok, "{text}");
    let status = storage.status(&["t".into()]).await.unwrap();
    assert_eq!(status[0].retries_pending, 1, "{status:?}");
    assert_eq!(status[0].dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_whose_relay_columns_a_producer_wrote_are_renumbered_not_a_cursor_jump() {
    let scratch = Scratch::mysql().await;
    let out = scratch.path().join("out");
    let config = scratch.load_config(&ledger(&out));
    let _storage = scratch.mysql_storage().await;
    let pool = scratch.mysql_pool().await;
    let file = out.join("ledger.jsonl");
    let relay = RunningRelay::start(&config).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let m = NewMessage::new("e", format!("before-{i}").into_bytes());
        commit_one(&pool, &m).await;
        sent.push(m.id.to_string());
    }
    // A far-ahead number with a partition; a number with no partition.
    for (sql, label) in [
        (
            "INSERT INTO outbox_messages (id, event_name, payload, `partition`, commit_seq) VALUES (?, 'e', 'x', 0, 1000000000000)",
            "high",
        ),
        (
            "INSERT INTO outbox_messages (id, event_name, payload, commit_seq) VALUES (?, 'e', 'y', 3)",
            "no partition",
        ),
    ] {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&id)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        sent.push(id);
    }
    for i in 0..30 {
        let m = NewMessage::new("e", format!("after-{i}").into_bytes());
        commit_one(&pool, &m).await;
        sent.push(m.id.to_string());
    }
    let lines = eventually("every row delivered", WAIT, || async {
        let l = read_jsonl(&file);
        (l.len() >= sent.len()).then_some(l)
    })
    .await;
    relay.stop().await;
    let got: HashSet<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    for id in &sent {
        assert!(got.contains(id), "{id} lost");
    }
    assert_eq!(lines.len(), sent.len(), "no duplicates");
    let top: i64 = sqlx::query_scalar("SELECT max(position_xid) FROM outbox_cursors")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        top < 1_000_000,
        "the cursor did not jump to the forged number: {top}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_inside_a_sequencing_pass_holds_the_others_up_only_briefly() {
    // A relay's session that took the counter's lock and then went silent
    // (SIGSTOP, a paused VM): here a connection of the relay's own pool,
    // with the relay's session settings, that never finishes its pass.
    let scratch = Scratch::mysql().await;
    let out = scratch.path().join("out");
    let storage = scratch.mysql_storage().await;
    let config = scratch.load_config(&ledger(&out));
    let pool = scratch.mysql_pool().await;
    let mut stuck = storage.pool().begin().await.unwrap();
    sqlx::query("SELECT value FROM outbox_settings WHERE `key` = 'commit_seq' FOR UPDATE")
        .execute(&mut *stuck)
        .await
        .unwrap();
    let relay = RunningRelay::start(&config).await;
    let m = NewMessage::new("e", b"waits".to_vec());
    let committed = Instant::now();
    commit_one(&pool, &m).await;
    let file = out.join("ledger.jsonl");
    eventually("the commit delivered past the stuck pass", WAIT, || async {
        (!read_jsonl(&file).is_empty()).then_some(())
    })
    .await;
    let waited = committed.elapsed();
    relay.stop().await;
    // The server ends the silent session after IDLE_TRANSACTION_TIMEOUT
    // (10 s); a loaded box adds the relay's back-off. Without it the wait
    // is the silent relay's whole stop, here forever.
    assert!(
        waited < outbox_relay::storage::mysql::IDLE_TRANSACTION_TIMEOUT * 4,
        "delivery waited {waited:?} on a stuck pass"
    );
    assert!(
        stuck.commit().await.is_err(),
        "the server ended the silent session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_while_the_relay_runs_deliver_each_message_once() {
    // An outside tester's run: an ordered target failing 40 % of attempts
    // with one attempt each, dead letters replayed every second while a
    // producer writes. Deadlocks between the replay and the relay's failure
    // records used to lose acknowledgements, and so deliver batches twice
    // (50 of 1,500 here, with retention pruning every second beside).
    let scratch = Scratch::mysql().await;
    let out = scratch.path().join("out");
    let storage = scratch.mysql_storage().await;
    storage.ensure_partitions(4).await.unwrap();
    let config = scratch.write_config_as(
        "relay.toml",
        "partitions = 4\nbatch_size = 50\nretention = \"1s\"\nprune_interval = \"1s\"",
        &format!(
            r#"
[[routes]]
events = ["*"]
targets = ["flaky", "plain"]

[targets.plain]
plugin = "count"
config = {{ path = "/out/plain.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{0}" }} }}

[targets.flaky]
plugin = "count"
ordered = true
config = {{ path = "/out/flaky.jsonl", fail_percent = 40 }}
sandbox = {{ dirs = {{ "/out" = "{0}" }} }}
retry = {{ max_attempts = 1, initial_backoff = "100ms", max_backoff = "200ms" }}
"#,
            out.display()
        ),
    );
    let file = out.join("flaky.jsonl");
    let mut relay = spawn_relay(&config);
    let pool = scratch.mysql_pool().await;
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..300 {
                let mut tx = pool.begin().await.unwrap();
                for j in 0..5 {
                    let m = NewMessage::new("e", format!("{i}-{j}").into_bytes())
                        .with_key(format!("k{}", (i * 5 + j) % 20));
                    producer::mysql::enqueue(&mut tx, &m).await.unwrap();
                    sent.push(m.id.to_string());
                }
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    let replay = || {
        std::process::Command::new(relay_binary())
            .args(["dead-letters", "replay", "--target", "flaky", "--yes"])
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = replay();
    }
    let sent = writer.await.unwrap();
    let started = Instant::now();
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in read_jsonl(&file) {
            *counts
                .entry(l["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        if sent.iter().all(|id| counts.contains_key(id)) {
            break counts;
        }
        assert!(started.elapsed() < WAIT, "not every message delivered");
        let _ = replay();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(terminate(&mut relay).success());
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {} delivered more than once without a crash: {:?}",
        twice.len(),
        sent.len(),
        &twice[..twice.len().min(5)]
    );
}
