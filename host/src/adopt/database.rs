//! Running an adoption against the configured database: the table's
//! columns, the outbox's partition count, and the plan's SQL in one
//! transaction (`adopt` and the benchmark), and the registry `status` reads.

use anyhow::Context;
use sqlx::Row;

use super::{Backend, Column};
use crate::config::Config;
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;

/// The configured database, migrated, as a raw pool: adoption is DDL.
pub enum Database {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// What `adopt` did.
pub struct Adopted {
    /// Rows the backfill copied into the outbox.
    pub copied: i64,
    /// What each column became.
    pub mapping: String,
}

impl Database {
    /// The SQL that adopts `adoption` here (checked against the table's
    /// columns and the outbox's partitions), in the order it runs.
    pub async fn adoption_sql(
        &self,
        adoption: &super::Adoption,
        backfill: bool,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let columns = self.columns(&adoption.table).await?;
        let partitions = self.partitions().await?;
        let schema = self.schemas(&adoption.table).await?;
        let plan = adoption.plan(self.backend(), &columns, partitions, backfill, &schema)?;
        Ok((
            plan.mapping,
            plan.install.into_iter().chain(plan.backfill).collect(),
        ))
    }

    /// The SQL that removes `adoption`.
    pub async fn undo_sql(&self, adoption: &super::Adoption) -> anyhow::Result<Vec<String>> {
        let schema = self.schemas(&adoption.table).await?;
        Ok(adoption.undo(self.backend(), &schema)?)
    }

    /// Where `outbox_messages` and `table` are: the first schema of the
    /// search path that has each (Postgres; "main" on SQLite).
    pub async fn schemas(&self, table: &str) -> anyhow::Result<super::Schemas> {
        Ok(super::Schemas {
            outbox: self
                .schema_of("outbox_messages")
                .await?
                .context("outbox_messages is not in the search path; run `outbox-relay migrate`")?,
            table: self
                .schema_of(table)
                .await?
                .unwrap_or_else(|| "public".into()),
        })
    }

    async fn schema_of(&self, table: &str) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT table_schema::text FROM information_schema.tables
                 WHERE table_name = $1 AND table_schema = ANY (current_schemas(false))
                 ORDER BY array_position(current_schemas(false), table_schema::name) LIMIT 1",
                )
                .bind(table)
                .fetch_optional(pool)
                .await?
            }
            Database::Sqlite(_) => Some("main".into()),
        })
    }

    /// Adopts `adoption`, in one transaction.
    pub async fn adopt(
        &self,
        adoption: &super::Adoption,
        backfill: bool,
    ) -> anyhow::Result<Adopted> {
        let (mapping, sql) = self.adoption_sql(adoption, backfill).await?;
        let before = self.outbox_rows().await?;
        self.execute(&sql).await?;
        Ok(Adopted {
            copied: self.outbox_rows().await? - before,
            mapping,
        })
    }
}

/// One line per adopted table, for `status` (read only).
pub async fn adopted_lines(config: &Config) -> anyhow::Result<Vec<String>> {
    if crate::app::Backend::of(&config.database) == crate::app::Backend::MySql {
        return Ok(Vec::new()); // nothing can be adopted there
    }
    let db = Database::connect(config).await?;
    let mut lines = Vec::new();
    for (table, shape, at_ms) in db.adopted().await? {
        let since = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
        let since = humantime_serde::re::humantime::format_rfc3339_seconds(since);
        lines.push(match db.trigger_state(&table).await? {
            Some(true) => format!(
                "adopted table {table:?} ({shape}, since {since}): its inserted rows are copied into the outbox"
            ),
            Some(false) => format!(
                "adopted table {table:?} ({shape}, since {since}): its trigger is DISABLED (or fires only for replicas), inserted rows are NOT copied (ALTER TABLE ... ENABLE TRIGGER, or adopt again)"
            ),
            None => format!(
                "adopted table {table:?} ({shape}, since {since}): its trigger is MISSING (the table was recreated?), inserted rows are NOT copied: run `outbox-relay adopt` again"
            ),
        });
    }
    Ok(lines)
}

impl Database {
    /// The configured database as it is, refused unless migrated (for
    /// `--dry-run`, which changes nothing).
    pub async fn existing(config: &Config) -> anyhow::Result<Database> {
        crate::app::open_migrated_storage(config).await?;
        Database::connect(config).await
    }

    /// The configured database, neither migrated nor checked.
    async fn connect(config: &Config) -> anyhow::Result<Database> {
        if crate::app::Backend::of(&config.database) == crate::app::Backend::MySql {
            anyhow::bail!(
                "`adopt` works on SQLite and Postgres outboxes; on MySQL, point the producers \
                 at outbox_messages (docs/producers.md) instead"
            );
        }
        Ok(if config.database.starts_with("sqlite:") {
            Database::Sqlite(
                SqliteStorage::connect(&config.database)
                    .await?
                    .pool()
                    .clone(),
            )
        } else {
            Database::Postgres(PgStorage::connect(&config.database).await?.pool().clone())
        })
    }

    /// The configured database, migrated first (as `migrate` does).
    pub async fn open(config: &Config) -> anyhow::Result<Database> {
        crate::app::open_storage(config).await?;
        Database::connect(config).await
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Postgres(_) => Backend::Postgres,
            Database::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The table's columns (none: it does not exist).
    pub async fn columns(&self, table: &str) -> anyhow::Result<Vec<Column>> {
        let rows = match self {
            Database::Postgres(pool) => {
                sqlx::query(
                    "SELECT column_name::text AS name, data_type::text AS kind FROM information_schema.columns
                     WHERE table_name = $1 AND table_schema = (
                         SELECT table_schema FROM information_schema.tables
                         WHERE table_name = $1 AND table_schema = ANY (current_schemas(false))
                         ORDER BY array_position(current_schemas(false), table_schema::name) LIMIT 1)
                     ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| (r.get::<String, _>("name"), r.get::<String, _>("kind")))
                .collect::<Vec<_>>()
            }
            Database::Sqlite(pool) => sqlx::query("SELECT name, type AS kind FROM pragma_table_info(?1)")
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

    pub async fn partitions(&self) -> anyhow::Result<u32> {
        let query = "SELECT CAST(value AS TEXT) FROM outbox_settings WHERE key = 'partitions'";
        let value: Option<String> = match self {
            Database::Postgres(pool) => sqlx::query_scalar(query).fetch_optional(pool).await?,
            Database::Sqlite(pool) => sqlx::query_scalar(query).fetch_optional(pool).await?,
        };
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    pub async fn outbox_rows(&self) -> anyhow::Result<i64> {
        let query = "SELECT count(*) FROM outbox_messages";
        Ok(match self {
            Database::Postgres(pool) => sqlx::query_scalar(query).fetch_one(pool).await?,
            Database::Sqlite(pool) => sqlx::query_scalar(query).fetch_one(pool).await?,
        })
    }

    /// Runs `sql` in one transaction (on SQLite, one that takes the write
    /// lock at once, so no producer's insert falls between the trigger and
    /// the backfill).
    pub async fn execute(&self, sql: &[String]) -> anyhow::Result<()> {
        match self {
            Database::Postgres(pool) => {
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
            Database::Sqlite(pool) => {
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
    /// Whether `table`'s adoption trigger is there and enabled.
    async fn trigger_state(&self, table: &str) -> anyhow::Result<Option<bool>> {
        let name = format!("outbox_adopt_{table}");
        Ok(match self {
            // On the table of that name now (a table renamed away keeps its
            // trigger; its replacement has none), and firing in ordinary
            // sessions ('O'rigin or 'A'lways; not 'D'isabled or 'R'eplica only).
            Database::Postgres(pool) => sqlx::query_scalar::<_, String>(
                "SELECT tgenabled::text FROM pg_trigger
                 WHERE tgname = $1 AND NOT tgisinternal AND tgrelid = to_regclass($2)",
            )
            .bind(&name)
            .bind(format!("\"{table}\""))
            .fetch_optional(pool)
            .await?
            .map(|enabled| enabled == "O" || enabled == "A"),
            Database::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
            )
            .bind(&name)
            .fetch_optional(pool)
            .await?
            .map(|_| true),
        })
    }

    /// Whether `table` is in the registry of adopted tables.
    pub async fn is_adopted(&self, table: &str) -> anyhow::Result<bool> {
        Ok(self.adopted().await?.iter().any(|(t, _, _)| t == table))
    }

    async fn adopted(&self) -> anyhow::Result<Vec<(String, String, i64)>> {
        let query =
            "SELECT table_name, shape, adopted_at_ms FROM outbox_adopted ORDER BY table_name";
        Ok(match self {
            Database::Postgres(pool) => sqlx::query_as(query).fetch_all(pool).await?,
            Database::Sqlite(pool) => sqlx::query_as(query).fetch_all(pool).await?,
        })
    }
}

fn first_line(statement: &str) -> &str {
    statement.lines().next().unwrap_or(statement)
}
