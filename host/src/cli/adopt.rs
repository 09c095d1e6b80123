//! `outbox-relay adopt`: installs (or with `--undo` removes) the triggers
//! that copy another tool's outbox rows into `outbox_messages`
//! (crate::adopt), in one transaction with the optional backfill and the
//! `outbox_adopted` row that `status` shows.

use anyhow::{Context, bail};
use sqlx::Row;

use super::ConfigArg;
use crate::adopt::{Adoption, Backend, Column, Debezium, Shape};
use crate::config::Config;
use crate::storage::Storage as _;
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;

#[derive(clap::Subcommand)]
pub(crate) enum AdoptCommand {
    /// A spakky-outbox table (`spakky_event_outbox`): each row's
    /// `published_at` is set as it is copied, so spakky's own relay finds
    /// nothing pending.
    Spakky {
        #[command(flatten)]
        options: AdoptOptions,
        /// Also copy the rows already there with `published_at IS NULL`,
        /// once, in `created_at` order.
        #[arg(long)]
        backfill: bool,
    },
    /// A Debezium outbox event router table (`id`, `aggregatetype`,
    /// `aggregateid`, `type`, `payload`).
    Debezium {
        #[command(flatten)]
        options: AdoptOptions,
        /// The column holding the event name.
        #[arg(long, default_value = "aggregatetype")]
        event_from: String,
        /// The column holding the partition key (`none` for no key).
        #[arg(long, default_value = "aggregateid")]
        key_from: String,
        /// An extra column copied as a header: `column=header-name`.
        #[arg(long = "header", value_name = "COLUMN=NAME")]
        headers: Vec<String>,
    },
}

#[derive(clap::Args)]
pub(crate) struct AdoptOptions {
    #[command(flatten)]
    config: ConfigArg,
    /// The table to adopt (spakky: `spakky_event_outbox` by default).
    #[arg(long)]
    table: Option<String>,
    /// Print the SQL instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// Remove the triggers (rows already copied stay in the outbox).
    #[arg(long)]
    undo: bool,
}

pub(crate) async fn run(command: AdoptCommand) -> anyhow::Result<()> {
    let (options, shape, backfill) = match command {
        AdoptCommand::Spakky { options, backfill } => (options, Shape::Spakky, backfill),
        AdoptCommand::Debezium {
            options,
            event_from,
            key_from,
            headers,
        } => {
            let headers = headers
                .iter()
                .map(|h| match h.split_once('=') {
                    Some((column, name)) if !column.is_empty() && !name.is_empty() => {
                        Ok((column.to_string(), name.to_ascii_lowercase()))
                    }
                    _ => bail!("--header {h:?}: write it as COLUMN=HEADER-NAME"),
                })
                .collect::<anyhow::Result<_>>()?;
            let key_from = (key_from != "none").then_some(key_from);
            (
                options,
                Shape::Debezium(Debezium {
                    event_from,
                    key_from,
                    headers,
                }),
                false,
            )
        }
    };
    let table = match (&options.table, shape.default_table()) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) => bail!("name the table with --table"),
    };
    let adoption = Adoption { table, shape };
    let config = Config::load(&options.config.config)?;
    let database = crate::config::redact_url(&config.database);
    let db = Db::open(&config).await?;

    if options.undo {
        let sql = adoption.undo(db.backend())?;
        if options.dry_run {
            print_sql(&sql);
            return Ok(());
        }
        db.execute(&sql).await?;
        println!(
            "{}: table {:?} is no longer adopted (its trigger is gone; rows already copied stay in the outbox)",
            database, adoption.table
        );
        return Ok(());
    }

    let columns = db.columns(&adoption.table).await?;
    let partitions = db.partitions().await?;
    let plan = adoption
        .plan(db.backend(), &columns, partitions, backfill)
        .with_context(|| format!("cannot adopt {:?} in {database}", adoption.table))?;
    let mut sql = plan.install.clone();
    sql.extend(plan.backfill.iter().cloned());
    if options.dry_run {
        println!("-- {}", adoption.mapping());
        print_sql(&sql);
        return Ok(());
    }
    let before = db.outbox_rows().await?;
    db.execute(&sql).await?;
    let copied = db.outbox_rows().await? - before;
    println!(
        "{database}: adopted {:?} ({}): {}",
        adoption.table,
        adoption.shape.name(),
        adoption.mapping()
    );
    if backfill {
        println!("backfilled {copied} unpublished row(s) into the outbox");
    }
    Ok(())
}

fn print_sql(sql: &[String]) {
    println!("BEGIN;");
    for statement in sql {
        println!("{statement}");
    }
    println!("COMMIT;");
}

/// The configured database, migrated, as a raw pool: adoption is DDL.
enum Db {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// One line per adopted table, for `status` (read only).
pub(crate) async fn adopted_lines(config: &Config) -> anyhow::Result<Vec<String>> {
    let db = if config.database.starts_with("sqlite:") {
        Db::Sqlite(
            SqliteStorage::connect(&config.database)
                .await?
                .pool()
                .clone(),
        )
    } else {
        Db::Postgres(PgStorage::connect(&config.database).await?.pool().clone())
    };
    Ok(db
        .adopted()
        .await?
        .into_iter()
        .map(|(table, shape, at_ms)| {
            let since = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
            format!(
                "adopted table {table:?} ({shape}, since {}): its inserted rows are copied into the outbox",
                humantime_serde::re::humantime::format_rfc3339_seconds(since)
            )
        })
        .collect())
}

impl Db {
    async fn open(config: &Config) -> anyhow::Result<Db> {
        Ok(if config.database.starts_with("sqlite:") {
            let storage = SqliteStorage::connect(&config.database).await?;
            storage.migrate().await?;
            Db::Sqlite(storage.pool().clone())
        } else {
            let storage = PgStorage::connect(&config.database).await?;
            storage.migrate().await?;
            Db::Postgres(storage.pool().clone())
        })
    }

    fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The table's columns (none: it does not exist).
    async fn columns(&self, table: &str) -> anyhow::Result<Vec<Column>> {
        let rows = match self {
            Db::Postgres(pool) => {
                sqlx::query(
                    "SELECT column_name::text AS name, data_type::text AS kind FROM information_schema.columns
                     WHERE table_name = $1 AND table_schema = ANY (current_schemas(false))
                     ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| (r.get::<String, _>("name"), r.get::<String, _>("kind")))
                .collect::<Vec<_>>()
            }
            Db::Sqlite(pool) => sqlx::query("SELECT name, type AS kind FROM pragma_table_info(?1)")
                .bind(table)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| (r.get::<String, _>("name"), r.get::<String, _>("kind")))
                .collect(),
        };
        Ok(rows
            .into_iter()
            .map(|(name, kind)| Column {
                name,
                kind: kind.to_ascii_lowercase(),
            })
            .collect())
    }

    async fn partitions(&self) -> anyhow::Result<u32> {
        let query = "SELECT value FROM outbox_settings WHERE key = 'partitions'";
        let value: Option<String> = match self {
            Db::Postgres(pool) => sqlx::query_scalar(query).fetch_optional(pool).await?,
            Db::Sqlite(pool) => sqlx::query_scalar(query).fetch_optional(pool).await?,
        };
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    async fn outbox_rows(&self) -> anyhow::Result<i64> {
        let query = "SELECT count(*) FROM outbox_messages";
        Ok(match self {
            Db::Postgres(pool) => sqlx::query_scalar(query).fetch_one(pool).await?,
            Db::Sqlite(pool) => sqlx::query_scalar(query).fetch_one(pool).await?,
        })
    }

    /// Runs `sql` in one transaction (on SQLite, one that takes the write
    /// lock at once, so no producer's insert falls between the trigger and
    /// the backfill).
    async fn execute(&self, sql: &[String]) -> anyhow::Result<()> {
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for statement in sql {
                    // Names in it are checked identifiers (crate::adopt).
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                        .execute(&mut *tx)
                        .await
                        .with_context(|| format!("running {}", first_line(statement)))?;
                }
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                for statement in sql {
                    let statement_sql = sqlx::AssertSqlSafe(statement.clone());
                    if let Err(e) = sqlx::raw_sql(statement_sql).execute(&mut *conn).await {
                        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                        return Err(anyhow::Error::new(e)
                            .context(format!("running {}", first_line(statement))));
                    }
                }
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// The adopted tables, for `status`.
    async fn adopted(&self) -> anyhow::Result<Vec<(String, String, i64)>> {
        let query =
            "SELECT table_name, shape, adopted_at_ms FROM outbox_adopted ORDER BY table_name";
        Ok(match self {
            Db::Postgres(pool) => sqlx::query_as(query).fetch_all(pool).await?,
            Db::Sqlite(pool) => sqlx::query_as(query).fetch_all(pool).await?,
        })
    }
}

fn first_line(statement: &str) -> &str {
    statement.lines().next().unwrap_or(statement)
}
