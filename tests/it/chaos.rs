//! Chaos: relays killed with SIGKILL at random moments, their Postgres
//! backends terminated (or their MariaDB connections killed with `KILL
//! CONNECTION`), and the NATS server restarted, while messages are
//! being written and delivered to two targets (an ordered file target and
//! NATS JetStream). Afterwards every message is looked for at every target.
//!
//! `short_soak` and `mariadb_short_soak` run in the normal suite. `long_soak` is the recorded run of
//! docs/reliability.md (100,000 messages, at least 20 kills):
//!
//!     make soak
//!
//! It writes its figures to `bench/results/chaos.json`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually, read_jsonl};

use crate::{spawn_relay, terminate};

const KEYS: usize = 50;

struct Plan {
    messages: usize,
    relays: usize,
    kills: usize,
    backend_terminations: usize,
    /// How long the faults are spread over (writing goes on meanwhile).
    chaos_for: Duration,
}

#[derive(Debug, Default)]
struct Report {
    messages: usize,
    relays: usize,
    sigkills: usize,
    backend_terminations: usize,
    nats_restarts: usize,
    seconds: f64,
    ledger_lost: usize,
    ledger_duplicates: usize,
    ledger_out_of_order: usize,
    nats_lost: usize,
    nats_duplicates_in_stream: usize,
}

impl Report {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "messages": self.messages,
            "relays": self.relays,
            "sigkills": self.sigkills,
            "backend_terminations": self.backend_terminations,
            "nats_restarts": self.nats_restarts,
            "seconds": self.seconds,
            "ledger_lost": self.ledger_lost,
            "ledger_duplicates": self.ledger_duplicates,
            "ledger_out_of_order": self.ledger_out_of_order,
            "nats_lost": self.nats_lost,
            "nats_duplicates_in_stream": self.nats_duplicates_in_stream,
        })
    }
}

/// A tiny PRNG (xorshift) for the moments and victims of the faults.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A nats-server of this test's own (the shared one is never restarted).
struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nats-server is not installed (it runs the shared NATS on :4222)");
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        self.spawn();
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The database under the soak, and what is done to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    /// Backends terminated with `pg_terminate_backend`.
    Postgres,
    /// Connections killed with `KILL CONNECTION`.
    MariaDb,
}

/// The application's side of the soak: its writer pool, and the test's own
/// connection that kills the relays' ones.
enum Side {
    Postgres {
        writer: sqlx::PgPool,
        admin: sqlx::PgPool,
        database: String,
    },
    MariaDb {
        writer: sqlx::MySqlPool,
        admin: sqlx::MySqlConnection,
        database: String,
    },
}

impl Side {
    async fn open(db: Db, scratch: &Scratch) -> Self {
        let database = scratch
            .database_url()
            .rsplit_once('/')
            .unwrap()
            .1
            .to_string();
        match db {
            Db::Postgres => {
                scratch
                    .pg_storage()
                    .await
                    .ensure_partitions(4)
                    .await
                    .unwrap();
                Side::Postgres {
                    writer: scratch.pg_pool().await,
                    admin: scratch.pg_pool().await,
                    database,
                }
            }
            Db::MariaDb => {
                use sqlx::Connection as _;
                let storage = scratch.mysql_storage().await;
                storage.ensure_partitions(4).await.unwrap();
                storage.pool().close().await;
                // The application writes as a user of its own with INSERT
                // alone (all a producer needs), so the relays' connections
                // are the root ones.
                let user = format!("w{}", &database[database.len() - 12..]);
                let mut admin = sqlx::MySqlConnection::connect(&scratch.database_url())
                    .await
                    .unwrap();
                for sql in [
                    format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"),
                    format!("GRANT INSERT ON {database}.outbox_messages TO '{user}'@'%'"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await
                        .unwrap();
                }
                let writer = sqlx::MySqlPool::connect(&format!(
                    "mysql://{user}:pw@127.0.0.1:3306/{database}"
                ))
                .await
                .unwrap();
                Side::MariaDb {
                    writer,
                    admin,
                    database,
                }
            }
        }
    }

    async fn write(&self, batch: &[NewMessage]) {
        match self {
            Side::Postgres { writer, .. } => {
                let mut tx = writer.begin().await.unwrap();
                for m in batch {
                    outbox_relay::producer::postgres::enqueue(&mut tx, m)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            Side::MariaDb { writer, .. } => {
                let mut tx = writer.begin().await.unwrap();
                for m in batch {
                    outbox_relay::producer::mysql::enqueue(&mut tx, m)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    }

    /// Terminates every connection the relays have open; returns how many.
    async fn terminate_relay_connections(&mut self) -> usize {
        match self {
            Side::Postgres {
                admin, database, ..
            } => {
                let killed: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name = 'outbox-relay'",
                )
                .bind(&*database)
                .fetch_all(&*admin)
                .await
                .unwrap();
                killed.len()
            }
            Side::MariaDb {
                admin, database, ..
            } => {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM information_schema.processlist
                     WHERE db = ? AND user = 'root' AND id <> CONNECTION_ID()",
                )
                .bind(&*database)
                .fetch_all(&mut *admin)
                .await
                .unwrap();
                for id in &ids {
                    // One may have closed on its own meanwhile.
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                        .execute(&mut *admin)
                        .await;
                }
                ids.len()
            }
        }
    }

    async fn ids(&mut self) -> Vec<String> {
        match self {
            Side::Postgres { admin, .. } => {
                sqlx::query_scalar("SELECT id::text FROM outbox_messages")
                    .fetch_all(&*admin)
                    .await
                    .unwrap()
            }
            Side::MariaDb { admin, .. } => sqlx::query_scalar("SELECT id FROM outbox_messages")
                .fetch_all(&mut *admin)
                .await
                .unwrap(),
        }
    }

    async fn close(self) {
        if let Side::MariaDb {
            writer,
            mut admin,
            database,
        } = self
        {
            writer.close().await;
            let user = format!("w{}", &database[database.len() - 12..]);
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP USER '{user}'@'%'")))
                .execute(&mut admin)
                .await;
        }
    }
}

async fn soak(db: Db, plan: Plan) -> Report {
    let started = Instant::now();
    let scratch = match db {
        Db::Postgres => Scratch::postgres().await,
        Db::MariaDb => Scratch::mysql().await,
    };
    let mut nats = NatsServer::start(&scratch.path().join("nats"));
    let client = async_nats::connect(nats.addr()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "CHAOS".into(),
        subjects: vec!["chaos.>".into()],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();

    let out = scratch.path().join("out");
    let config = scratch.write_config_as(
        "relay.toml",
        "partitions = 4",
        &format!(
            r#"
[[routes]]
events = ["*"]
targets = ["ledger", "bus"]

[targets.ledger]
plugin = "file"
ordered = true
batch_size = 100
config = {{ path = "/out/ledger.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
retry = {{ initial_backoff = "50ms", max_backoff = "1s", max_attempts = 1000 }}

[targets.bus]
plugin = "nats"
batch_size = 100
config = {{ url = "{nats}", subject = "chaos.{{event}}", ack_timeout_ms = 2000, connect_timeout_ms = 1000 }}
sandbox = {{ allow_tcp = ["{nats}"] }}
retry = {{ initial_backoff = "50ms", max_backoff = "1s", max_attempts = 1000 }}
"#,
            out = out.display(),
            nats = nats.addr(),
        ),
    );
    // The schema and its partition count exist before the writers start: a
    // key's messages must all land in the partition they will be read from.
    let side = std::sync::Arc::new(tokio::sync::Mutex::new(Side::open(db, &scratch).await));

    // Writers: keyed messages, each carrying its place in its key's sequence.
    // They use a pool of their own (an application's), so the faults below,
    // aimed at the relays' connections, leave them alone.
    let writer = {
        let side = side.clone();
        let (total, spread) = (plan.messages, plan.chaos_for);
        tokio::spawn(async move {
            let chunk = 500;
            let chunks = total.div_ceil(chunk);
            let pause = spread / (chunks as u32 + 1);
            let mut next_seq = vec![0u64; KEYS];
            for c in 0..chunks {
                let batch: Vec<NewMessage> = (c * chunk..((c + 1) * chunk).min(total))
                    .map(|i| {
                        let key = i % KEYS;
                        next_seq[key] += 1;
                        NewMessage::new("tick", format!("{{\"i\":{i}}}").into_bytes())
                            .with_key(format!("k{key}"))
                            .with_header("x-seq", next_seq[key].to_string())
                    })
                    .collect();
                side.lock().await.write(&batch).await;
                tokio::time::sleep(pause).await;
            }
        })
    };

    let mut relays: Vec<Child> = (0..plan.relays).map(|_| spawn_relay(&config)).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ started.elapsed().as_nanos() as u64 | 1);
    let mut report = Report {
        messages: plan.messages,
        relays: plan.relays,
        ..Default::default()
    };
    let faults = plan.kills + plan.backend_terminations + 1;
    let step = plan.chaos_for / faults as u32;
    let mut kinds: Vec<u8> = std::iter::repeat_n(0, plan.kills)
        .chain(std::iter::repeat_n(1, plan.backend_terminations))
        .chain([2])
        .collect();
    // Shuffle the order of the faults.
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for kind in kinds {
        let jitter = step.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(jitter / 2 + rng.below(jitter.max(1)))).await;
        match kind {
            0 => {
                let victim = rng.below(relays.len() as u64) as usize;
                relays[victim].kill().unwrap(); // SIGKILL
                relays[victim].wait().unwrap();
                relays[victim] = spawn_relay(&config);
                report.sigkills += 1;
            }
            1 => {
                let killed = side.lock().await.terminate_relay_connections().await;
                assert!(killed > 0, "no relay connection to terminate");
                report.backend_terminations += 1;
            }
            _ => {
                nats.restart();
                report.nats_restarts += 1;
            }
        }
    }
    writer.await.unwrap();

    // Let the relays finish on their own, then look for every message.
    let file = out.join("ledger.jsonl");
    let ids: Vec<String> = side.lock().await.ids().await;
    assert_eq!(ids.len(), plan.messages, "every message was written");
    let stream = js.get_stream("CHAOS").await.unwrap();
    eventually(
        "both targets to have every message",
        Duration::from_secs(300),
        || async {
            let mut stream = stream.clone();
            let in_stream = stream.info().await.ok()?.state.messages as usize;
            let ledger: HashSet<String> = read_jsonl(&file)
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_string())
                .collect();
            (in_stream >= plan.messages && ledger.len() >= plan.messages).then_some(())
        },
    )
    .await;
    for mut relay in relays {
        assert!(terminate(&mut relay).success());
    }
    report.seconds = started.elapsed().as_secs_f64();

    // The ordered ledger: lost, duplicated, and first deliveries out of key order.
    let lines = read_jsonl(&file);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut highest: HashMap<String, u64> = HashMap::new();
    for line in &lines {
        let id = line["id"].as_str().unwrap().to_string();
        let first = !seen.contains_key(&id);
        *seen.entry(id).or_default() += 1;
        if first {
            let key = line["partition_key"].as_str().unwrap().to_string();
            let seq: u64 = line["headers"]["x-seq"].as_str().unwrap().parse().unwrap();
            let top = highest.entry(key).or_default();
            if seq != *top + 1 {
                report.ledger_out_of_order += 1;
                if report.ledger_out_of_order <= 5 {
                    println!(
                        "out of order: key {} got seq {seq} after {} (line {}, attempt {})",
                        line["partition_key"],
                        *top,
                        seen.len(),
                        line["attempt"]
                    );
                }
            }
            *top = (*top).max(seq);
        }
    }
    report.ledger_lost = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    report.ledger_duplicates = lines.len() - seen.len();

    // NATS: what the stream holds, by Nats-Msg-Id.
    let info = stream.get_info().await.unwrap().state;
    let mut in_stream: HashMap<String, usize> = HashMap::new();
    for seq in info.first_sequence..=info.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
        *in_stream.entry(id).or_default() += 1;
    }
    report.nats_lost = ids.iter().filter(|id| !in_stream.contains_key(*id)).count();
    report.nats_duplicates_in_stream = in_stream.values().map(|n| n - 1).sum();
    drop(nats);
    if let Ok(side) = std::sync::Arc::try_unwrap(side) {
        side.into_inner().close().await;
    }
    report
}

fn check(report: &Report) {
    println!("{report:#?}");
    assert_eq!(report.ledger_lost, 0, "messages lost at the ordered target");
    assert_eq!(report.nats_lost, 0, "messages lost at NATS");
    assert_eq!(report.ledger_out_of_order, 0, "per-key order broken");
    assert_eq!(
        report.nats_duplicates_in_stream, 0,
        "JetStream's duplicate window keeps redeliveries out of the stream"
    );
    // Each kill can redeliver at most the batches in flight: one batch per
    // partition worker of the killed relay.
    let bound = (report.sigkills + report.backend_terminations + report.nats_restarts) * 4 * 100;
    assert!(
        report.ledger_duplicates <= bound,
        "{} duplicates, more than the {bound} that the batches in flight allow",
        report.ledger_duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak() {
    let report = soak(
        Db::Postgres,
        Plan {
            messages: 4_000,
            relays: 2,
            kills: 5,
            backend_terminations: 2,
            chaos_for: Duration::from_secs(12),
        },
    )
    .await;
    check(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_short_soak() {
    let report = soak(
        Db::MariaDb,
        Plan {
            messages: 4_000,
            relays: 2,
            kills: 5,
            backend_terminations: 2,
            chaos_for: Duration::from_secs(12),
        },
    )
    .await;
    check(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the recorded soak of docs/reliability.md; run with `make soak`"]
async fn long_soak() {
    let report = soak(
        Db::Postgres,
        Plan {
            messages: 100_000,
            relays: 2,
            kills: 24,
            backend_terminations: 8,
            chaos_for: Duration::from_secs(120),
        },
    )
    .await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("chaos.json"),
        serde_json::to_string_pretty(&report.to_json()).unwrap(),
    )
    .unwrap();
    check(&report);
}
