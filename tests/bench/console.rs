//! `console`: the web console's dead-letter pages with 100,000 dead letters
//! on Postgres: the first page, filters (target, event glob, error text,
//! time), a page deep in the list, a dead letter's page and the overview,
//! each fetched over HTTP from the real console router (in this process,
//! with the bearer token), timed per request. Target (issue 17): every page
//! under 200 ms.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::setup::{BenchDb, DbKind};

const TOKEN: &str = "bench-console-token-0123456789";

/// The pages timed, by name: path and query.
fn pages(deep: &str, one: &str) -> Vec<(&'static str, String)> {
    vec![
        ("overview", "/".into()),
        ("dead letters, first page", "/dead-letters".into()),
        ("filter: target", "/dead-letters?target=alpha".into()),
        ("filter: event glob", "/dead-letters?event=order.*".into()),
        ("filter: error text", "/dead-letters?error=timeout".into()),
        ("filter: since 1h", "/dead-letters?since=1h".into()),
        (
            "filter: all four",
            "/dead-letters?target=alpha&event=order.*&error=timeout&since=1h".into(),
        ),
        ("a page 1,000 rows deep", deep.to_string()),
        ("one dead letter", one.to_string()),
    ]
}

pub async fn console(dead_letters: u64, samples: usize) -> anyhow::Result<Value> {
    let db = BenchDb::new(DbKind::Postgres).await?;
    let body = r#"
[[routes]]
events = ["nothing.*"]
targets = ["alpha", "beta"]

[targets.alpha]
plugin = "null"

[targets.beta]
plugin = "null"
"#;
    let (_, config) = db.config("console", "", body)?;
    let storage = outbox_relay::app::open_storage(&config).await?;
    let pool = db.pg_pool().await?;
    eprintln!("  writing {dead_letters} dead letters ...");
    sqlx::query(
        "INSERT INTO outbox_messages (id, event_name, payload)
         SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'order.created' ELSE 'user.updated' END,
                convert_to('{\"i\":' || i || '}', 'UTF8')
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(dead_letters)?)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO outbox_deliveries
            (target, seq, message_id, state, attempts, next_attempt_ms, last_error, history, updated_at_ms)
         SELECT CASE WHEN seq % 2 = 0 THEN 'alpha' ELSE 'beta' END, seq, id::text, 'dead', 3, 0,
                CASE WHEN seq % 10 = 0 THEN 'HTTP 504: gateway timeout' ELSE 'connection refused' END,
                '[{\"attempt\":1,\"at_ms\":0,\"error\":\"connection refused\"}]',
                (extract(epoch FROM clock_timestamp()) * 1000)::bigint - seq * 30
         FROM outbox_messages",
    )
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;

    let targets = vec!["alpha".to_string(), "beta".to_string()];
    let state = outbox_relay::admin::AdminState {
        metrics: outbox_relay::metrics::install()
            .ok_or_else(|| anyhow::anyhow!("no metrics recorder"))?,
        storage: Arc::new(RwLock::new(storage.clone())),
        targets: Arc::new(RwLock::new(targets)),
        ready: Arc::new(AtomicBool::new(true)),
        health: Default::default(),
        config: Arc::new(RwLock::new(Arc::new(config.clone()))),
        console: None,
    };
    let router = outbox_relay::console::router(outbox_relay::console::Console {
        admin: state,
        access: outbox_relay::console::session::Access::new(TOKEN.into(), false),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();

    // A key 1,000 rows deep, and one dead letter, for their pages.
    let deep: (i64, String, i64) = sqlx::query_as(
        "SELECT updated_at_ms, target, seq FROM outbox_deliveries WHERE state = 'dead'
         ORDER BY updated_at_ms DESC, target, seq DESC OFFSET 1000 LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    let deep = format!(
        "/dead-letters?older_ms={}&older_target={}&older_seq={}",
        deep.0, deep.1, deep.2
    );
    let one = format!("/dead-letters/alpha/{}", dead_letters / 2 * 2);
    let mut rows = Vec::new();
    let mut worst = Duration::ZERO;
    for (name, path) in pages(&deep, &one) {
        let mut times = Vec::with_capacity(samples);
        for i in 0..samples + 2 {
            let started = Instant::now();
            let res = http
                .get(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await?;
            let status = res.status();
            let text = res.text().await?;
            let took = started.elapsed();
            anyhow::ensure!(status.is_success(), "{path}: {status}: {text}");
            if i >= 2 {
                times.push(took); // the first two warm the caches
            }
        }
        times.sort();
        let p50 = times[times.len() / 2];
        let max = *times.last().unwrap_or(&Duration::ZERO);
        worst = worst.max(max);
        eprintln!(
            "  {name:<28} p50 {:>6.1} ms  max {:>6.1} ms",
            ms(p50),
            ms(max)
        );
        rows.push(json!({ "page": name, "path": path, "p50_ms": ms(p50), "max_ms": ms(max) }));
    }
    server.abort();
    Ok(json!({
        "dead_letters": dead_letters,
        "samples_per_page": samples,
        "pages": rows,
        "worst_ms": ms(worst),
        "target_ms": 200,
        "met": worst < Duration::from_millis(200),
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
