//! `outbox-relay-bench`: the benchmark harness (`make bench`).
//!
//! Every scenario runs the relay in this process against a database of its
//! own (a SQLite file on disk, or a fresh Postgres or MariaDB database), writes its
//! figures to `bench/results/<scenario>.json`, and adds rows to the summary
//! printed at the end (also written as `summary.md`). Ratios are taken
//! between runs of the same invocation, on the same machine. Nothing here
//! asserts a timing: a missed target is reported, not failed.
//!
//! See docs/performance.md for what each scenario measures and the recorded run.

#![allow(clippy::unwrap_used)]

mod adopted;
mod console;
mod drain;
mod fanout;
mod latency;
mod ordered;
mod report;
mod rss;
mod setup;
mod tls;
mod transports;
mod writers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

use drain::{DrainParams, DrainRun};
use report::{Row, RunInfo, ScenarioResult};
use setup::{BenchDb, DbKind, Sink, thousands};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// A backlog relayed to the `null` component, per database.
    Drain,
    /// The seed's algorithm against the same database as the drain (Postgres,
    /// MariaDB), at 0 s and 1 s poll.
    SeedBaseline,
    /// The drain through a native in-process null sink versus the `null` component.
    WasmOverhead,
    /// Concurrent single-message writers while the relay runs.
    Writers,
    /// Commit-to-ack latency at a steady rate (Postgres, MariaDB).
    Latency,
    /// `webhook` to a local receiver, `nats` to JetStream.
    Transports,
    /// Ordered backlogs (10 keys, one key) beside an unordered drain of the same backlog.
    Ordered,
    /// Peak RSS of the real CLI with six targets loaded.
    Rss,
    /// A backlog in spakky-outbox's table: the seed's real relay versus
    /// outbox-relay through `adopt spakky --backfill`.
    Adopted,
    /// One backlog to 1, 4 and 16 `null` targets, and the database's own
    /// streaming read of the same rows (the read ceiling), per database.
    Fanout,
    /// The web console's dead-letter pages with 100,000 dead letters on Postgres.
    Console,
}

const ALL: [Scenario; 11] = [
    Scenario::Drain,
    Scenario::SeedBaseline,
    Scenario::WasmOverhead,
    Scenario::Writers,
    Scenario::Latency,
    Scenario::Ordered,
    Scenario::Transports,
    Scenario::Rss,
    Scenario::Adopted,
    Scenario::Fanout,
    Scenario::Console,
];

/// Benchmarks of outbox-relay. Results go to bench/results/ (with --quick, to
/// target/bench-quick/ unless --out is given).
#[derive(Debug, Parser)]
#[command(name = "outbox-relay-bench")]
struct Args {
    /// Scenarios to run, comma-separated (default: all, in this order).
    #[arg(long, short, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Databases, comma-separated [default: each scenario's own: drain and
    /// writers on sqlite, postgres, mariadb; seed-baseline and latency on
    /// postgres, mariadb; wasm-overhead, ordered and fanout on sqlite,
    /// postgres]. Each scenario runs on those of them it has; one with none
    /// of them is skipped (its results file is left alone). The other
    /// scenarios run on Postgres.
    #[arg(long, value_enum, value_delimiter = ',')]
    databases: Vec<DbKind>,
    /// Backlog size for drain, seed-baseline and wasm-overhead [default: 200000; quick 5000].
    #[arg(long)]
    messages: Option<u64>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Force the relay's batch_size (default: the relay's default, 100).
    #[arg(long)]
    batch_size: Option<u32>,
    /// Concurrent writer connections in the writers scenario.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// How long the writers write, in seconds [default: 30; quick 5].
    #[arg(long)]
    writers_secs: Option<u64>,
    /// Messages per second in the latency scenario.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// How long the latency scenario produces, in seconds [default: 30; quick 5].
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Time box of the seed algorithm at 0 s poll, in seconds [default: 30; quick 5].
    #[arg(long)]
    baseline_secs: Option<u64>,
    /// Time box of the seed algorithm at its default 1 s poll [default: 20; quick 5].
    #[arg(long)]
    baseline_poll_secs: Option<u64>,
    /// Messages per transport in the transports scenario [default: 50000; quick 2000].
    #[arg(long)]
    transport_messages: Option<u64>,
    /// Backlog of each drain in the ordered scenario [default: 10000; quick 1000].
    #[arg(long)]
    ordered_messages: Option<u64>,
    /// Backlog for the six targets of the rss scenario [default: 20000; quick 1000].
    #[arg(long)]
    rss_messages: Option<u64>,
    /// The NATS server (JetStream enabled) for the transports and rss scenarios.
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: String,
    /// Alternating drains per sink in wasm-overhead, after a warm-up drain (medians compared) [default: 5; quick 1].
    #[arg(long)]
    repeat: Option<u32>,
    /// A smoke run: small backlogs and short windows.
    #[arg(long)]
    quick: bool,
    /// Where the JSON results and summary.md go.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn pick<T: Copy>(&self, given: Option<T>, full: T, quick: T) -> T {
        given.unwrap_or(if self.quick { quick } else { full })
    }

    /// The databases `scenario` runs on: those of `--databases` it has, in
    /// that order (all it has by default); `None` when it runs on Postgres
    /// alone, whatever `--databases` says.
    fn databases(&self, scenario: Scenario) -> Option<Vec<DbKind>> {
        use DbKind::{MariaDb, Postgres, Sqlite};
        let has: &[DbKind] = match scenario {
            Scenario::Drain | Scenario::Writers => &[Sqlite, Postgres, MariaDb],
            Scenario::SeedBaseline | Scenario::Latency => &[Postgres, MariaDb],
            Scenario::WasmOverhead | Scenario::Ordered | Scenario::Fanout => &[Sqlite, Postgres],
            Scenario::Transports | Scenario::Rss | Scenario::Adopted | Scenario::Console => {
                return None;
            }
        };
        Some(if self.databases.is_empty() {
            has.to_vec()
        } else {
            self.databases
                .iter()
                .copied()
                .filter(|kind| has.contains(kind))
                .collect()
        })
    }

    fn drain_params(&self) -> DrainParams {
        DrainParams {
            messages: self.pick(self.messages, 200_000, 5_000),
            payload: self.payload,
            batch_size: self.batch_size,
        }
    }
}

fn main() -> ExitCode {
    // The rss scenario runs this binary as the real `outbox-relay` CLI.
    if std::env::var_os(rss::AS_RELAY).is_some() {
        return outbox_relay::cli::main();
    }
    let args = Args::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some scenarios failed to run (see above); the others' results were written");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs as the relay binary does (`info`, or `RUST_LOG`), to a file, so the
/// relay pays for its logging as in production without flooding the output.
fn init_logging() {
    let dir = setup::repo_root().join("target").join("bench-tmp");
    let _ = std::fs::create_dir_all(&dir);
    let Ok(file) = std::fs::File::create(dir.join("bench.log")) else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let scenarios: Vec<Scenario> = if args.scenario.is_empty() {
        ALL.to_vec()
    } else {
        ALL.iter()
            .copied()
            .filter(|s| args.scenario.contains(s))
            .collect()
    };
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            setup::repo_root().join("target").join("bench-quick")
        } else {
            setup::repo_root().join("bench").join("results")
        }
    });
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let info = RunInfo {
        command: format!(
            "cargo run --release -p outbox-relay-tests --bin outbox-relay-bench --{}",
            argv.iter().map(|a| format!(" {a}")).collect::<String>()
        ),
        machine: setup::machine(),
        databases: setup::database_versions().await,
        git: setup::git_commit(),
        started_at: now_utc(),
    };
    eprintln!(
        "outbox-relay-bench: {} on {} (nproc {}), results to {}",
        scenarios
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        info.machine["cpu"].as_str().unwrap_or("?"),
        info.machine["nproc"],
        out.display()
    );

    let overrides: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("OUTBOX_RELAY__"))
        .collect();
    if !overrides.is_empty() {
        eprintln!(
            "warning: {} override the benchmark's configs; unset them for comparable figures",
            overrides.join(", ")
        );
    }

    let params = args.drain_params();
    let mut rows = Vec::new();
    let mut ok = true;
    // The drains of the databases the seed baseline runs on, kept so that it
    // runs in the same database.
    let baseline_dbs = args
        .databases(Scenario::SeedBaseline)
        .filter(|_| scenarios.contains(&Scenario::SeedBaseline))
        .unwrap_or_default();
    let mut kept: Vec<(BenchDb, DrainRun)> = Vec::new();
    for scenario in scenarios {
        let name = scenario_name(scenario);
        eprintln!("\n== {name}");
        let dbs = match args.databases(scenario) {
            Some(dbs) if dbs.is_empty() => {
                eprintln!("  skipped: it runs on none of --databases");
                continue;
            }
            dbs => dbs.unwrap_or_default(),
        };
        let result = match scenario {
            Scenario::Drain => drain_scenario(&dbs, &params, &baseline_dbs, &mut kept).await,
            Scenario::SeedBaseline => baseline_scenario(&args, &dbs, &params, &mut kept).await,
            Scenario::WasmOverhead => overhead_scenario(&args, &dbs, &params).await,
            Scenario::Writers => writers_scenario(&args, &dbs).await,
            Scenario::Latency => latency_scenario(&args, &dbs).await,
            Scenario::Transports => transports_scenario(&args).await,
            Scenario::Ordered => {
                ordered::scenario(&dbs, args.pick(args.ordered_messages, 10_000, 1_000)).await
            }
            Scenario::Rss => rss_scenario(&args).await,
            Scenario::Fanout => fanout_scenario(&args, &dbs).await,
            Scenario::Console => console_scenario(&args).await,
            Scenario::Adopted => {
                adopted::scenario(args.pick(None, 3_000, 500), args.payload.min(1024)).await
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                ok = false;
                eprintln!("  FAILED: {e:#}");
                ScenarioResult {
                    name,
                    params: json!({}),
                    data: json!({ "error": format!("{e:#}") }),
                    rows: vec![Row::new(name, "(scenario)", "failed").note(format!("{e:#}"))],
                }
            }
        };
        report::write_scenario(&out, &info, &result)?;
        rows.extend(result.rows);
    }
    report::print_summary(&rows);
    let summary = report::markdown(&info, &rows);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("summary.md"), summary)?;
    eprintln!("\nresults: {}", out.display());
    Ok(ok)
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Drain => "drain",
        Scenario::SeedBaseline => "seed-baseline",
        Scenario::WasmOverhead => "wasm-overhead",
        Scenario::Writers => "writers",
        Scenario::Latency => "latency",
        Scenario::Transports => "transports",
        Scenario::Ordered => "ordered",
        Scenario::Rss => "rss",
        Scenario::Adopted => "adopted",
        Scenario::Fanout => "fanout",
        Scenario::Console => "console",
    }
}

fn drain_params_json(p: &DrainParams) -> Value {
    json!({
        "messages": p.messages,
        "payload_bytes": p.payload,
        "batch_size": p.batch_size.unwrap_or(100),
        "partitions": 1,
    })
}

async fn drain_scenario(
    databases: &[DbKind],
    params: &DrainParams,
    keep: &[DbKind],
    kept: &mut Vec<(BenchDb, DrainRun)>,
) -> anyhow::Result<ScenarioResult> {
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    for &kind in databases {
        let db = BenchDb::new(kind).await?;
        let run = drain::drain(&db, params, Sink::Configured).await?;
        rows.push(
            Row::new(
                "drain",
                format!(
                    "{} × {} B → null component, {}",
                    thousands(params.messages as f64),
                    params.payload,
                    kind.label()
                ),
                run.value(),
            )
            .note(format!(
                "{:.2} s; the cursor is at the end afterwards (lag {})",
                run.elapsed.as_secs_f64(),
                run.lag_after
            )),
        );
        let mut json = run.json();
        if kind == DbKind::MariaDb {
            // What the drain above paid to sequence the backlog, measured alone.
            let seq = drain::sequencing(params).await?;
            rows.push(
                Row::new(
                    "drain",
                    format!(
                        "sequencing passes alone (no relay), {} rows, MariaDB",
                        thousands(params.messages as f64)
                    ),
                    format!("{} rows/s", thousands(seq.rate())),
                )
                .ratio(format!("{:.2}× the drain", seq.rate() / run.rate))
                .note(format!(
                    "{} passes in {:.2} s, a pass p50 {:.1} ms, max {:.1} ms",
                    seq.passes,
                    seq.elapsed.as_secs_f64(),
                    seq.pass_p50.as_secs_f64() * 1000.0,
                    seq.pass_max.as_secs_f64() * 1000.0
                )),
            );
            json["sequencing_alone"] = seq.json();
        }
        runs.push(json);
        if keep.contains(&kind) {
            kept.push((db, run));
        }
    }
    Ok(ScenarioResult {
        name: "drain",
        params: drain_params_json(params),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn baseline_scenario(
    args: &Args,
    databases: &[DbKind],
    params: &DrainParams,
    kept: &mut Vec<(BenchDb, DrainRun)>,
) -> anyhow::Result<ScenarioResult> {
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &kind in databases {
        let (db, relay) = match kept.iter().position(|(db, _)| db.kind == kind) {
            Some(i) => {
                let kept = kept.swap_remove(i);
                eprintln!(
                    "  the relay's figure: the {} drain of this run ({} msg/s)",
                    kind.label(),
                    thousands(kept.1.rate)
                );
                kept
            }
            None => {
                let db = BenchDb::new(kind).await?;
                let run = drain::drain(&db, params, Sink::Configured).await?;
                (db, run)
            }
        };
        let config = drain::drain_config(&db, params)?;
        let zero = drain::seed_baseline(
            &db,
            &config,
            params,
            Duration::ZERO,
            Duration::from_secs(args.pick(args.baseline_secs, 30, 5)),
        )
        .await?;
        let one = drain::seed_baseline(
            &db,
            &config,
            params,
            Duration::from_secs(1),
            Duration::from_secs(args.pick(args.baseline_poll_secs, 20, 5)),
        )
        .await?;
        let ratio0 = relay.rate / zero.rate.max(f64::MIN_POSITIVE);
        let ratio1 = relay.rate / one.rate.max(f64::MIN_POSITIVE);
        rows.push(
            Row::new(
                "seed-baseline",
                format!("seed algorithm, poll 0 s, {}", kind.label()),
                format!("{} msg/s", thousands(zero.rate)),
            )
            .ratio(format!("relay {ratio0:.1}× baseline"))
            .target("relay ≥ 20× baseline at 0 s poll", ratio0 >= 20.0)
            .note(format!(
                "relay {} msg/s (drain, same database); baseline {} messages in {:.1} s{}",
                thousands(relay.rate),
                thousands(zero.published as f64),
                zero.elapsed.as_secs_f64(),
                if zero.drained {
                    ", backlog drained"
                } else {
                    ", time-boxed"
                }
            )),
        );
        rows.push(
            Row::new(
                "seed-baseline",
                format!("seed algorithm, poll 1 s (its default), {}", kind.label()),
                format!("{:.1} msg/s", one.rate),
            )
            .ratio(format!("relay {ratio1:.0}× baseline"))
            .note(format!(
                "{} messages in {:.1} s (time-boxed)",
                one.published,
                one.elapsed.as_secs_f64()
            )),
        );
        runs.push(json!({
            "database": kind.label(),
            "relay": relay.json(),
            "baseline_poll_0s": zero.json(),
            "baseline_poll_1s": one.json(),
            "ratio_relay_to_baseline_0s": (ratio0 * 100.0).round() / 100.0,
            "ratio_relay_to_baseline_1s": (ratio1 * 10.0).round() / 10.0,
            "baseline_algorithm": drain::SeedSql::of(kind)?.summary,
        }));
    }
    Ok(ScenarioResult {
        name: "seed-baseline",
        params: drain_params_json(params),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn overhead_scenario(
    args: &Args,
    databases: &[DbKind],
    params: &DrainParams,
) -> anyhow::Result<ScenarioResult> {
    let repeat = args.pick(args.repeat, 5, 1).max(1);
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &kind in databases {
        // One backlog, drained once to warm up (not counted), then 2 ×
        // `repeat` times, alternating sinks, the cursor rewound in between;
        // the medians are compared. Without the warm-up, the first drain
        // after seeding (always the component's) paid for the cold caches
        // and, on SQLite, for checkpointing the seeding's WAL.
        let db = BenchDb::new(kind).await?;
        let config = drain::drain_config(&db, params)?;
        let seeded_in = drain::seed(&db, &config, params).await?;
        let warm_up =
            drain::drain_seeded(&db, &config, params, Sink::Configured, seeded_in).await?;
        let mut wasm = Vec::new();
        let mut native = Vec::new();
        for r in 0..repeat {
            let order = if r % 2 == 0 {
                [Sink::Configured, Sink::NativeNull]
            } else {
                [Sink::NativeNull, Sink::Configured]
            };
            for sink in order {
                drain::rewind(&db).await?;
                let run = drain::drain_seeded(&db, &config, params, sink, seeded_in).await?;
                match sink {
                    Sink::Configured => wasm.push(run),
                    Sink::NativeNull => native.push(run),
                }
            }
        }
        let median = |runs: &[DrainRun]| {
            let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
            rates.sort_by(f64::total_cmp);
            rates.get(rates.len() / 2).copied().unwrap_or(0.0)
        };
        let (w, n) = (median(&wasm), median(&native));
        let ratio = w / n.max(f64::MIN_POSITIVE);
        rows.push(
            Row::new(
                "wasm-overhead",
                format!("null component vs native null sink, {}", kind.label()),
                format!("{} vs {} msg/s", thousands(w), thousands(n)),
            )
            .ratio(format!("{ratio:.2}×"))
            .target("≥ 0.85×", ratio >= 0.85)
            .note(format!(
                "medians of {repeat} alternating drains each of the same backlog, after a warm-up drain"
            )),
        );
        runs.push(json!({
            "database": kind.label(),
            "repeat": repeat,
            "warm_up_not_counted": warm_up.json(),
            "wasm": wasm.iter().map(DrainRun::json).collect::<Vec<_>>(),
            "native": native.iter().map(DrainRun::json).collect::<Vec<_>>(),
            "median_wasm_per_s": w.round(),
            "median_native_per_s": n.round(),
            "ratio_wasm_to_native": (ratio * 1000.0).round() / 1000.0,
        }));
    }
    Ok(ScenarioResult {
        name: "wasm-overhead",
        params: drain_params_json(params),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn writers_scenario(args: &Args, databases: &[DbKind]) -> anyhow::Result<ScenarioResult> {
    let window = Duration::from_secs(args.pick(args.writers_secs, 30, 5));
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &kind in databases {
        let run =
            writers::writers(kind, args.writers, window, args.payload, args.batch_size).await?;
        rows.push(
            Row::new(
                "writers",
                format!(
                    "{} writers, 1 message per transaction, {}",
                    args.writers,
                    kind.label()
                ),
                format!(
                    "insert {}/s, drain {}/s",
                    thousands(run.insert_rate),
                    thousands(run.drain_rate)
                ),
            )
            .ratio(format!(
                "drain/insert {:.3}",
                run.drain_rate / run.insert_rate.max(f64::MIN_POSITIVE)
            ))
            .target("drain ≥ insert, lag bounded", run.keeps_up)
            .note(run.lag_summary()),
        );
        runs.push(run.json());
    }
    Ok(ScenarioResult {
        name: "writers",
        params: json!({
            "writers": args.writers,
            "window_s": window.as_secs(),
            "payload_bytes": args.payload,
            "batch_size": args.batch_size.unwrap_or(100),
            "keeps_up_means": "mean lag over the last third of the window is at most the first third's plus one second of inserts, and the relay catches up within 2 s after the writers stop",
        }),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn latency_scenario(args: &Args, databases: &[DbKind]) -> anyhow::Result<ScenarioResult> {
    let window = Duration::from_secs(args.pick(args.latency_secs, 30, 5));
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &kind in databases {
        let run = latency::latency(
            kind,
            args.latency_rate,
            window,
            args.payload,
            args.batch_size,
        )
        .await?;
        rows.push(
            Row::new(
                "latency",
                format!(
                    "commit → ack at {}/s, {}",
                    thousands(f64::from(args.latency_rate)),
                    kind.label()
                ),
                run.value(),
            )
            .target("p99 ≤ 50 ms", run.p99 <= Duration::from_millis(50))
            .note(format!(
                "{} messages at {}/s achieved; p99.9 {:.1} ms, max {:.1} ms",
                thousands(run.messages as f64),
                thousands(run.rate_achieved),
                run.p999.as_secs_f64() * 1000.0,
                run.max.as_secs_f64() * 1000.0
            )),
        );
        runs.push(run.json());
    }
    Ok(ScenarioResult {
        name: "latency",
        params: json!({
            "rate_per_s": args.latency_rate,
            "window_s": window.as_secs(),
            "producer_connections": 32, "load": "open loop: one transaction started every 1/rate s, each on a pooled connection",
            "payload_bytes": args.payload,
            "measured": "from the producer's COMMIT returning to the null component's deliver returning",
        }),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn transports_scenario(args: &Args) -> anyhow::Result<ScenarioResult> {
    let n = args.pick(args.transport_messages, 50_000, 2_000);
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    let cases: [(&str, f64); 2] = [("webhook", 5_000.0), ("nats", 20_000.0)];
    for (transport, goal) in cases {
        let result = match transport {
            "webhook" => transports::webhook(n, args.payload, args.batch_size).await,
            _ => transports::nats(n, args.payload, args.batch_size, &args.nats).await,
        };
        let target = format!("≥ {}/s", thousands(goal));
        let figure = match transport {
            "webhook" => "webhook → local keep-alive receiver (204), Postgres",
            _ => "nats → JetStream, one ack per message, Postgres",
        };
        let run = match result {
            Ok(run) => run,
            Err(e) => transports::TransportRun::NotMeasured {
                transport: if transport == "webhook" {
                    "webhook"
                } else {
                    "nats"
                },
                reason: format!("failed: {e:#}"),
            },
        };
        rows.push(match &run {
            transports::TransportRun::Measured { rate, check, .. } => {
                Row::new("transports", figure, format!("{} msg/s", thousands(*rate)))
                    .target(target, *rate >= goal)
                    .note(check.clone())
            }
            transports::TransportRun::NotMeasured { reason, .. } => {
                eprintln!("  {transport}: not measured: {reason}");
                let mut row = Row::new("transports", figure, "not measured")
                    .note(format!("not measured: {reason}"));
                row.target = target;
                row
            }
        });
        runs.push(run.json());
    }
    // TLS beside plaintext, each pair in the same run on servers of its own.
    let pki = outbox_relay_tests::tls::Pki::new();
    let goal = 0.7;
    for (name, figure) in [
        (
            "webhook",
            "webhook over HTTPS (the target's own client, sandbox.tls) vs HTTP, Postgres",
        ),
        (
            "nats",
            "nats over TLS (tls://, outbox:relay/tls) vs plaintext, own nats-server, Postgres",
        ),
    ] {
        let (plain, tls) = if name == "webhook" {
            (
                tls::webhook(n, args.payload, args.batch_size, None).await,
                tls::webhook(n, args.payload, args.batch_size, Some(&pki)).await,
            )
        } else {
            (
                tls::nats(n, args.payload, args.batch_size, None).await,
                tls::nats(n, args.payload, args.batch_size, Some(&pki)).await,
            )
        };
        let target = format!("≥ {goal}× plaintext");
        let row = match (&plain, &tls) {
            (
                Ok(transports::TransportRun::Measured { rate: p, .. }),
                Ok(transports::TransportRun::Measured { rate: t, check, .. }),
            ) => {
                let ratio = t / p;
                Row::new("transports", figure, format!("{} msg/s", thousands(*t)))
                    .ratio(format!("{ratio:.2}× plaintext"))
                    .target(target, ratio >= goal)
                    .note(format!(
                        "plaintext in the same run: {} msg/s; {check}",
                        thousands(*p)
                    ))
            }
            _ => {
                let why = |r: &anyhow::Result<transports::TransportRun>| match r {
                    Ok(transports::TransportRun::NotMeasured { reason, .. }) => reason.clone(),
                    Ok(_) => "measured".into(),
                    Err(e) => format!("{e:#}"),
                };
                let reason = format!("plaintext: {}; TLS: {}", why(&plain), why(&tls));
                eprintln!("  {name} over TLS: not measured: {reason}");
                let mut row = Row::new("transports", figure, "not measured")
                    .note(format!("not measured: {reason}"));
                row.target = target;
                row
            }
        };
        rows.push(row);
        for run in [plain, tls] {
            runs.push(match run {
                Ok(run) => run.json(),
                Err(e) => json!({ "transport": format!("{name}-tls-pair"), "not_measured": format!("{e:#}") }),
            });
        }
    }
    // Kafka, with librdkafka as the peer in the same run.
    let goal = 0.8;
    let figure = "kafka → tansu (memory), acks=all, idempotent, Postgres";
    match transports::kafka(n, args.payload, args.batch_size).await {
        Ok(k) => {
            let row = match (&k.run, k.peer) {
                (transports::TransportRun::Measured { rate, check, .. }, Some(peer)) => {
                    let ratio = rate / peer;
                    Row::new("transports", figure, format!("{} msg/s", thousands(*rate)))
                        .ratio(format!("{ratio:.2}× peer"))
                        .target(format!("≥ {goal}× librdkafka"), ratio >= goal)
                        .note(format!(
                            "{check}; {} ({} msg/s); the relay's ceiling in this run (the same drain to the `null` component): {} msg/s, kafka at {:.2}× of it",
                            k.peer_note,
                            thousands(peer),
                            thousands(k.null_rate),
                            rate / k.null_rate
                        ))
                }
                (transports::TransportRun::Measured { rate, check, .. }, None) => {
                    let mut row =
                        Row::new("transports", figure, format!("{} msg/s", thousands(*rate)))
                            .note(format!("{check}; {}", k.peer_note));
                    row.target = format!("≥ {goal}× librdkafka");
                    row
                }
                (transports::TransportRun::NotMeasured { reason, .. }, _) => {
                    let mut row = Row::new("transports", figure, "not measured")
                        .note(format!("not measured: {reason}"));
                    row.target = format!("≥ {goal}× librdkafka");
                    row
                }
            };
            rows.push(row);
            let mut json = k.run.json();
            json["peer_messages_per_s"] = json!(k.peer.map(f64::round));
            json["peer"] = json!(k.peer_note);
            json["null_component_messages_per_s"] = json!(k.null_rate.round());
            runs.push(json);
        }
        Err(e) => {
            eprintln!("  kafka: not measured: {e:#}");
            let mut row = Row::new("transports", figure, "not measured")
                .note(format!("not measured: failed: {e:#}"));
            row.target = format!("≥ {goal}× librdkafka");
            rows.push(row);
            runs.push(json!({ "transport": "kafka", "not_measured": format!("{e:#}") }));
        }
    }
    Ok(ScenarioResult {
        name: "transports",
        params: json!({ "messages": n, "payload_bytes": args.payload, "batch_size": args.batch_size.unwrap_or(100), "nats": args.nats }),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn fanout_scenario(args: &Args, databases: &[DbKind]) -> anyhow::Result<ScenarioResult> {
    let params = DrainParams {
        messages: args.pick(args.messages, 100_000, 5_000),
        payload: args.payload,
        batch_size: args.batch_size,
    };
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &kind in databases {
        let db = BenchDb::new(kind).await?;
        let (_, config) = db.config("fanout-seed", &setup::relay_lines(params.batch_size), "")?;
        drain::seed(&db, &config, &params).await?;
        let (ceiling_rows, ceiling_time) = fanout::read_ceiling(&db).await?;
        let ceiling = setup::rate(ceiling_rows, ceiling_time);
        let mut one = None;
        for n in [1u32, 4, 16] {
            let run = fanout::fanout(&db, &params, n).await?;
            let rate = run.messages_per_s();
            let base = *one.get_or_insert(rate);
            let mut row = Row::new(
                "fanout",
                format!(
                    "{} × {} B → {n} `null` target{}, {}",
                    thousands(params.messages as f64),
                    params.payload,
                    if n == 1 { "" } else { "s" },
                    kind.label()
                ),
                format!("{} msg/s", thousands(rate)),
            )
            .note(format!(
                "{} deliveries/s (all targets)",
                thousands(rate * f64::from(n))
            ));
            if n > 1 {
                let goal = if n == 4 { 0.8 } else { 0.5 };
                row = row
                    .ratio(format!("{:.2}× 1 target", rate / base))
                    .target(format!("≥ {goal}× 1 target"), rate / base >= goal);
            }
            rows.push(row);
            runs.push(json!({ "database": kind.label(), "run": run.json() }));
        }
        let one = one.unwrap_or(0.0);
        let ceiling_figure = match kind {
            DbKind::Postgres => {
                "COPY (the relay's read, ORDER BY xact_id, seq) TO STDOUT (FORMAT binary)"
            }
            DbKind::Sqlite => "a plain SELECT loop of the relay's columns, ORDER BY seq",
            DbKind::MariaDb => "(not measured on MariaDB)",
        };
        let mut row = Row::new(
            "read-ceiling",
            format!("{ceiling_figure}, {}", kind.label()),
            format!("{} rows/s", thousands(ceiling)),
        )
        .ratio(format!("1 target at {:.2}× of it", one / ceiling))
        .note(format!(
            "{ceiling_rows} rows in {:.2} s; the single-target drain of the same rows in this run: {} msg/s (batch_size {})",
            ceiling_time.as_secs_f64(),
            thousands(one),
            params.batch_size.unwrap_or(100)
        ));
        if kind == DbKind::Postgres {
            row = row.target("1 target ≥ 0.5× ceiling", one / ceiling >= 0.5);
        }
        rows.push(row);
        runs.push(json!({
            "database": kind.label(),
            "read_ceiling": { "rows": ceiling_rows, "elapsed_s": drain::secs(ceiling_time), "rows_per_s": ceiling.round() },
        }));
    }
    Ok(ScenarioResult {
        name: "fanout",
        params: drain_params_json(&params),
        data: json!({ "runs": runs }),
        rows,
    })
}

async fn rss_scenario(args: &Args) -> anyhow::Result<ScenarioResult> {
    let n = args.pick(args.rss_messages, 20_000, 1_000);
    let run = rss::rss(n, args.payload, &args.nats).await?;
    // The target is in MB; compare in bytes.
    let met = run.peak_rss_kib * 1024 <= 150_000_000;
    let mut row = Row::new(
        "rss",
        "peak RSS, `outbox-relay run` with six targets loaded, draining",
        format!("{:.1} MiB", run.peak_mb()),
    )
    .target("≤ 150 MB (143 MiB)", met)
    .note(format!(
        "targets {}; {} messages to each in {:.1} s; RSS at the end {:.1} MiB",
        run.targets.join(", "),
        thousands(run.backlog as f64),
        run.drained_in.as_secs_f64(),
        run.rss_at_end_kib as f64 / 1024.0
    ));
    if !run.notes.is_empty() {
        row.note = format!("{}; {}", row.note, run.notes.join("; "));
    }
    Ok(ScenarioResult {
        name: "rss",
        params: json!({ "backlog": n, "payload_bytes": args.payload }),
        data: run.json(),
        rows: vec![row],
    })
}

async fn console_scenario(args: &Args) -> anyhow::Result<ScenarioResult> {
    let dead_letters = args.pick(None, 100_000, 5_000);
    let data = console::console(dead_letters, args.pick(None, 20, 5)).await?;
    let rows = data["pages"]
        .as_array()
        .map(|pages| {
            pages
                .iter()
                .map(|p| {
                    let max = p["max_ms"].as_f64().unwrap_or(f64::MAX);
                    Row::new(
                        "console",
                        format!(
                            "{}, {} dead letters, Postgres",
                            p["page"].as_str().unwrap_or_default(),
                            thousands(dead_letters as f64)
                        ),
                        format!(
                            "p50 {:.1} ms, max {:.1} ms",
                            p["p50_ms"].as_f64().unwrap_or_default(),
                            max
                        ),
                    )
                    .target("every answer < 200 ms", max < 200.0)
                    .note(p["path"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ScenarioResult {
        name: "console",
        params: json!({ "dead_letters": dead_letters }),
        data,
        rows,
    })
}
