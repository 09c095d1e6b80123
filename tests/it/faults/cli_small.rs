//! Finding 11, the smaller CLI items of issue 20, one test each:
//!
//! - `status` on an unmigrated database does not create the schema (read
//!   commands never write), and says to migrate;
//! - `migrate` works with a config that has no targets;
//! - `enqueue` without a payload is refused with a clear error;
//! - `enqueue -n 15` prints 15 ids;
//! - an unknown key's error has no nested backticks and names the key as
//!   written (not `default.<key>`);
//! - a config path that is a directory gives a clear error, and one from
//!   process substitution (a pipe) is read;
//! - a refused Postgres port fails fast, naming the address;
//! - `dead-letters show nosuch 1` says the target is unknown.

use std::time::Duration;

use outbox_relay_tests::{Scratch, config_text};
use sqlx::Connection as _;

use super::{RecordingTarget, cli, route_all};
use crate::free_port;

fn sink(scratch: &Scratch) -> String {
    route_all(
        &scratch.path().join("out"),
        &[RecordingTarget::file("sink")],
    )
}

/// Tables of the outbox schema in a SQLite file (0 if the file is missing).
async fn sqlite_tables(path: &std::path::Path) -> i64 {
    if !path.exists() {
        return 0;
    }
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'outbox_%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn status_on_an_unmigrated_database_does_not_create_the_schema() {
    // Postgres: a database that exists, without the schema.
    let scratch = Scratch::postgres().await;
    let config = scratch.write_config(&sink(&scratch));
    let run = cli(&["status", "--config", config.to_str().unwrap()]).await;
    let mut conn = sqlx::PgConnection::connect(&scratch.database_url())
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'outbox\\_%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "`status` created the schema on Postgres");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("migrate"),
        "status on an unmigrated database says to run `migrate`: {said}"
    );

    // SQLite: an empty database file.
    let scratch = Scratch::new();
    let file = scratch.path().join("outbox.db");
    drop(
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", file.display()))
            .await
            .unwrap(),
    );
    let config = scratch.write_config(&sink(&scratch));
    let run = cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert_eq!(
        sqlite_tables(&file).await,
        0,
        "`status` created the schema on SQLite"
    );
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("migrate"), "{said}");
}

#[tokio::test]
async fn migrate_works_without_targets() {
    let scratch = Scratch::new();
    let config = scratch.path().join("relay.toml");
    std::fs::write(
        &config,
        config_text(&scratch.database_url(), "partitions = 4", ""),
    )
    .unwrap();
    let run = cli(&["migrate", "--config", config.to_str().unwrap()]).await;
    assert!(run.success, "migrate without targets: {}", run.stderr);
    assert!(run.stdout.contains("4 partitions"), "{}", run.stdout);
    assert!(sqlite_tables(&scratch.path().join("outbox.db")).await >= 4);
}

/// `outbox-relay enqueue --event order.created <args>` on a fresh SQLite
/// scratch; returns the run and the ids in the log afterwards.
async fn enqueue_cli(args: &[&str]) -> (super::CliRun, Vec<String>) {
    let scratch = Scratch::new();
    let config = scratch.write_config(&sink(&scratch));
    let mut all = vec!["enqueue", "--event", "order.created"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config.to_str().unwrap()]);
    let run = cli(&all).await;
    let storage = scratch.storage().await;
    let stored = sqlx::query_scalar("SELECT id FROM outbox_messages ORDER BY seq")
        .fetch_all(storage.pool())
        .await
        .unwrap();
    (run, stored)
}

#[tokio::test]
async fn enqueue_without_a_payload_is_refused() {
    let (run, stored) = enqueue_cli(&[]).await;
    assert!(
        !run.success,
        "enqueue without --payload or --payload-file was accepted: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("--payload"),
        "the error names the missing option: {}",
        run.stderr
    );
    assert_eq!(stored.len(), 0, "nothing was enqueued");
}

#[tokio::test]
async fn enqueue_n_15_prints_15_ids() {
    let (run, stored) = enqueue_cli(&["--payload", "{}", "-n", "15"]).await;
    assert!(run.success, "{}", run.stderr);
    let ids: Vec<uuid::Uuid> = run
        .stdout
        .lines()
        .filter_map(|l| uuid::Uuid::parse_str(l.trim()).ok())
        .collect();
    assert_eq!(ids.len(), 15, "15 ids printed: {}", run.stdout);
    let printed: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(stored, printed, "the printed ids are the enqueued ones");
}

#[tokio::test]
async fn an_unknown_key_error_has_no_nested_backticks() {
    let scratch = Scratch::new();
    let config = scratch.write_config(&sink(&scratch));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("database =", "databse =", 1);
    std::fs::write(&config, text).unwrap();
    let run = cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert!(!run.success);
    let error = run.stderr.trim();
    assert!(error.contains("databse"), "names the key: {error}");
    assert!(
        !error.contains("default.databse"),
        "names the key as written, not figment's profile: {error}"
    );
    // Figment's message quotes a quoted list: ``expected `one of `a`, `b`` ``.
    assert!(
        !error.contains("``") && !error.contains("`one of"),
        "nested backticks in: {error}"
    );
}

#[tokio::test]
async fn a_config_path_that_is_a_directory_or_a_pipe_is_handled() {
    let scratch = Scratch::new();
    let dir = scratch.path().join("conf.d");
    std::fs::create_dir_all(&dir).unwrap();
    let run = cli(&["status", "--config", dir.to_str().unwrap()]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains(dir.to_str().unwrap()) && run.stderr.contains("is a directory"),
        "a directory is called a directory: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("no such file"), "{}", run.stderr);

    // Process substitution: the path is a pipe (/dev/fd/N), readable once.
    let config = scratch.write_config(&sink(&scratch));
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} migrate --config <(cat {})",
            crate::relay_binary().display(),
            config.display()
        ))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "a config from process substitution is read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_refused_postgres_port_fails_fast_naming_the_address() {
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.path().join("relay.toml");
    std::fs::write(
        &config,
        config_text(
            &format!("postgres://postgres@127.0.0.1:{port}/outbox"),
            "",
            &sink(&scratch),
        ),
    )
    .unwrap();
    let run = cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert!(!run.success);
    assert!(
        run.elapsed < Duration::from_secs(5),
        "a refused connection took {:?} to report",
        run.elapsed
    );
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")) && run.stderr.contains("refused"),
        "the error names the address and the refusal: {}",
        run.stderr
    );
}

#[tokio::test]
async fn dead_letters_show_of_an_unknown_target_says_so() {
    let scratch = Scratch::new();
    let config = scratch.write_config(&sink(&scratch));
    let run = cli(&[
        "dead-letters",
        "show",
        "nosuch",
        "1",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert!(!run.success, "{}", run.stdout);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("nosuch") && (said.contains("unknown target") || said.contains("no target")),
        "says the target is unknown: {said}"
    );
}

/// `status --watch` refuses an interval that would busy-loop, and `status`
/// read by a pipe that closes (`status | head`) ends quietly, without a panic.
#[tokio::test]
async fn status_refuses_a_busy_watch_and_ends_quietly_on_a_closed_pipe() {
    let scratch = Scratch::new();
    let config = scratch.write_config(&sink(&scratch));
    let config = config.to_str().unwrap();
    assert!(cli(&["migrate", "--config", config]).await.success);
    let busy = cli(&["status", "--watch", "0s", "--config", config]).await;
    assert!(!busy.success, "{}", busy.stdout);
    assert!(busy.stderr.contains("too short"), "{}", busy.stderr);

    // `head` reads a few bytes and goes; the next refresh writes to a closed pipe.
    let relay = crate::relay_binary();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("bash")
            .args([
                "-c",
                &format!(
                    "set -o pipefail; {} status --watch 100ms --config {config} | head -c 10 >/dev/null",
                    relay.display()
                ),
            ])
            .output(),
    )
    .await
    .expect("status kept running after its reader went away")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}
