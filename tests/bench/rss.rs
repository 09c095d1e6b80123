//! Peak memory of a relay process with six targets loaded: the real CLI
//! (`outbox-relay run`, run as a child process of this binary) draining a
//! backlog to every target, with the admin endpoint on. The peak is the
//! kernel's high-water mark of the child's resident set (`VmHWM`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::drain::secs;
use crate::setup::{BenchDb, DbKind, lag, seed_log, thousands};
use crate::transports::{Nats, Receiver};

/// The environment variable that makes this binary behave as `outbox-relay`.
pub const AS_RELAY: &str = "OUTBOX_RELAY_BENCH_AS_RELAY";

pub struct RssRun {
    pub targets: Vec<String>,
    pub backlog: u64,
    pub deliveries: u64,
    pub drained_in: Duration,
    pub peak_rss_kib: u64,
    pub rss_at_end_kib: u64,
    pub notes: Vec<String>,
}

impl RssRun {
    pub fn peak_mb(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }

    pub fn json(&self) -> Value {
        json!({
            "targets": self.targets,
            "database": "Postgres",
            "backlog": self.backlog,
            "deliveries": self.deliveries,
            "drained_in_s": secs(self.drained_in),
            "peak_rss_mib": (self.peak_mb() * 10.0).round() / 10.0,
            "rss_at_end_mib": (self.rss_at_end_kib as f64 / 102.4).round() / 10.0,
            "notes": self.notes,
        })
    }
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

pub async fn rss(backlog: u64, size: usize, nats_server: &str) -> anyhow::Result<RssRun> {
    let db = BenchDb::new(DbKind::Postgres).await?;
    let receiver = Receiver::start().await?;
    let mut notes = Vec::new();
    let out_dir = db.path().join("out");
    std::fs::create_dir_all(&out_dir)?;

    // The sixth target is NATS when its component and server are there.
    let nats_ready = outbox_relay_tests::components_dir()
        .join("nats.wasm")
        .is_file();
    let mut nats = if nats_ready {
        Nats::connect(nats_server).await.ok()
    } else {
        None
    };
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("OUTBOX_BENCH_RSS_{unique}");
    let sixth = match nats.as_mut() {
        Some(client) => {
            let created = client
                .request(
                    &format!("$JS.API.STREAM.CREATE.{stream}"),
                    &json!({"name": stream, "subjects": [format!("outbox_bench_rss.{unique}.>")], "storage": "memory"}),
                )
                .await?;
            anyhow::ensure!(
                created.get("error").is_none(),
                "JetStream refused the stream: {created}"
            );
            format!(
                r#"[targets.bus]
plugin = "nats"
config = {{ url = "nats://{nats_server}", subject = "outbox_bench_rss.{unique}.{{event}}" }}
sandbox = {{ allow_tcp = ["{nats_server}"] }}"#
            )
        }
        None => {
            notes.push("the nats component or server is not available: the sixth target is a second null target".into());
            "[targets.bus]\nplugin = \"null\"".to_string()
        }
    };
    let admin_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let hook = receiver.target_toml(&db, "hook")?;
    let targets = ["null", "traced", "file", "stdout", "hook", "bus"];
    let body = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[[routes]]
events = ["bench.*"]
targets = ["null", "traced", "file", "stdout", "bus"]

[targets.null]
plugin = "null"

[targets.traced]
plugin = "null"
injectors = [{{ plugin = "trace_context" }}]

[targets.file]
plugin = "file"
config = {{ path = "/out/events.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.stdout]
plugin = "stdout"

{sixth}
{hook}
"#,
        out = out_dir.display(),
    );
    let (path, config) = db.config("rss", "", &body)?;
    eprintln!(
        "  seeding {} messages for six targets ...",
        thousands(backlog as f64)
    );
    seed_log(&db, &config, backlog, size).await?;
    let storage = crate::setup::migrate(&config).await?;

    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(db.path().join("relay.log"))?;
    let mut child = std::process::Command::new(exe)
        .env(AS_RELAY, "1")
        .args(["run", "--config"])
        .arg(&path)
        .args(["--stop-after", "20m"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the relay child process")?;
    let pid = child.id();
    let started = Instant::now();
    let mut peak = 0;
    let mut current = 0;
    let mut drained_in = None;
    while started.elapsed() < Duration::from_secs(600) {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the relay exited early ({status}); see {}",
                db.path().join("relay.log").display()
            );
        }
        if let Some((hwm, rss)) = memory_of(pid) {
            peak = peak.max(hwm);
            current = rss;
        }
        if lag(&*storage, &targets).await? == 0 {
            drained_in = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A last look at a steady, idle relay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some((hwm, rss)) = memory_of(pid) {
        peak = peak.max(hwm);
        current = rss;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(client) = nats.as_mut() {
        let _ = client
            .request(&format!("$JS.API.STREAM.DELETE.{stream}"), &json!({}))
            .await;
    }
    let drained_in = drained_in.context("the six targets did not drain within 600 s")?;
    let run = RssRun {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        backlog,
        deliveries: backlog * targets.len() as u64,
        drained_in,
        peak_rss_kib: peak,
        rss_at_end_kib: current,
        notes,
    };
    eprintln!(
        "  six targets drained {} messages each in {:.1} s; peak RSS {:.1} MiB",
        thousands(backlog as f64),
        drained_in.as_secs_f64(),
        run.peak_mb()
    );
    Ok(run)
}
