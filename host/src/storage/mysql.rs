//! MySQL / MariaDB adapter of the storage port (MySQL 8.0+, MariaDB 10.6+).
//!
//! # Commit order: the relay sequences the log
//!
//! `AUTO_INCREMENT` values are handed out at insert, not at commit: a
//! transaction that took `seq = 10` may commit after one that took 11, and a
//! relay that read "everything after 11" would skip 10 for good. Postgres has
//! `xact_id` and a snapshot horizon for this; MySQL has neither, and no
//! commit-time hook.
//!
//! So the relay writes the commit order itself. A row that a producer
//! inserted is not sequenced yet (`partition` -1, `commit_seq` 0: the
//! columns are NOT NULL, so giving them values updates the row in place).
//! Whenever a relay looks for new messages it runs a *sequencing pass*
//! ([`MySqlStorage::sequence`]):
//!
//! 1. a plain (consistent, non-locking) read of the rows not sequenced yet,
//!    in `seq` order: only committed rows are visible to it;
//! 2. in one transaction: lock the `commit_seq` counter in `outbox_settings`
//!    (`SELECT … FOR UPDATE`, so passes of several relays run one after the
//!    other), give those rows the next numbers of the counter in `seq` order
//!    and their `partition` (FNV-1a of the key or id, as on the other
//!    backends), only where they are still unset, and move the counter
//!    past them; commit. One `UPDATE` joins the plan (a JSON array, through
//!    `JSON_TABLE`) to the rows by primary key, so no other row is touched
//!    and no open transaction's row lock is waited for.
//!
//! Delivery reads a partition in `commit_seq` order, after the cursor. A
//! pass's numbers are all higher than every earlier pass's, and a pass
//! commits as a whole, so a reader never sees a higher `commit_seq` before
//! a lower one: a row committed late is simply sequenced by a later pass and
//! delivered after the rows sequenced before it. **Nothing is skipped, and
//! an open transaction holds nothing back**: rows committed after it began
//! are delivered while it is open, and its own rows when it commits. A
//! rolled-back insert leaves a hole in `seq` that nobody waits for.
//!
//! Order: a key's messages are delivered in the order the relay saw their
//! transactions committed: a later pass's rows after an earlier pass's, and
//! within one pass (and one transaction) in insert order. So transactions
//! that commit within one pass of each other come in insert order. Producers
//! that serialise the writes of a key (the usual row lock on the entity)
//! get insert order, which is then also commit order.
//!
//! The price: one `UPDATE` per pass (by primary key, up to
//! [`SEQUENCE_PASS`] rows), on the relay's side, never on the producer's.
//!
//! Sessions set what the relay's SQL relies on, whatever the server's
//! defaults (`session_settings`), and a relay stopped inside a pass holds
//! the others up for at most [`IDLE_TRANSACTION_TIMEOUT`] (MariaDB) or three
//! times that (MySQL): the server then ends its session.
//!
//! Reads of the log are bounded by the counter in the same statement, and
//! rows whose `commit_seq` is above the counter, whose partition has no
//! `commit_seq` or is out of range are put back in line (once a second,
//! [`FORGED_CHECK`]): a producer that wrote the relay's columns cannot make
//! a cursor jump past rows not delivered yet. Deadlocks and lock waits run
//! the transaction again (`DEADLOCK_TRIES`).
//!
//! The relay's user needs `UPDATE` on `outbox_messages`; without it the pass
//! fails with [`StorageError::Privilege`], which names the grant. Producers
//! need `INSERT` on `outbox_messages` only: no triggers, no stored
//! functions, nothing that needs `SUPER` with binary logging on.
//!
//! # Wake-up
//!
//! MySQL has no `NOTIFY`. [`Storage::watch_commits`] runs a sequencing pass
//! every [`WATCH_INTERVAL`] on the pool: when it sequences anything, the
//! relay is woken at once. An idle pass is one index lookup
//! (`partition = -1`: not sequenced yet).
//!
//! Retries are claimed with `SKIP LOCKED`, every time is the database's
//! clock (`now!`), and the conformance suite is `tests/it/conformance.rs`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, MySqlConnection, Row};

use super::{
    Ack, DeadLetter, DeadLetterDetail, DeadLetterFilter, DueRetry, FailureState, Lease, LiveRelay,
    Result, ServedTarget, Settlement, Storage, StorageError, TargetStatus, dead_letter_row,
    disposition_columns, due_in, duration_ms, encode_served, glob_to_like, served_by,
};
use crate::message::{LogEntry, MalformedMessage, NewMessage, Position, RawRow, decode_row};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");

/// At most this many rows are sequenced by one pass.
pub const SEQUENCE_PASS: u32 = 5000;

/// How often a pass looks for rows whose relay columns a producer wrote.
pub const FORGED_CHECK: Duration = Duration::from_secs(1);

/// How often [`Storage::watch_commits`] looks for committed rows.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// The database's clock in ms since the Unix epoch, as SQL (sessions run in
/// UTC: sqlx sets `time_zone = '+00:00'`).
macro_rules! now {
    () => {
        "CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)"
    };
}

/// How many times a transaction that InnoDB chose as a deadlock's victim
/// (1213), or that timed out on a lock (1205), is run again before the error
/// is returned. Both roll the transaction back (the statement, for 1205, and
/// the dropped transaction the rest), so running it again is safe; deadlocks
/// between relays' failure records (gap locks) are ordinary on InnoDB, and
/// an acknowledgement lost to one would be a duplicate delivery.
const DEADLOCK_TRIES: u32 = 5;

/// Runs the block (an async block's body whose value is a `Result`) again
/// when it fails on a deadlock or a lock wait, up to [`DEADLOCK_TRIES`].
macro_rules! again_on_deadlock {
    ($body:block) => {{
        let mut tries = 0u32;
        loop {
            match async $body.await {
                Err(e) if tries < DEADLOCK_TRIES && lock_conflict(&e) => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "lock conflict; running the transaction again");
                    tokio::time::sleep(Duration::from_millis(2u64 << tries)).await;
                }
                other => break other,
            }
        }
    }};
}

/// A deadlock (1213) or a lock wait time-out (1205).
fn lock_conflict(e: &StorageError) -> bool {
    let (StorageError::Database(sqlx::Error::Database(d))
    | StorageError::Privilege {
        cause: sqlx::Error::Database(d),
        ..
    }) = e
    else {
        return false;
    };
    d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| matches!(m.number(), 1213 | 1205))
}

/// The `commit_seq` counter, as SQL. A read of the log bounded by it in the
/// same statement sees only numbers a pass gave: a pass commits its rows and
/// the counter together, and a number a producer wrote above it is ignored
/// until a pass renumbers the row.
macro_rules! counter {
    () => {
        "(SELECT CAST(value AS SIGNED) FROM outbox_settings WHERE `key` = 'commit_seq')"
    };
}

/// The log columns, for [`decode_entry`]; a payload over `max_payload` (a
/// SQL expression) is measured, not returned.
fn message_columns(max_payload: &str) -> String {
    format!(
        "m.seq, m.commit_seq AS xid, m.id, m.event_name, m.partition_key, \
         CAST(m.`partition` AS CHAR) AS `partition`, CAST(OCTET_LENGTH(m.payload) AS SIGNED) AS payload_len, \
         CASE WHEN OCTET_LENGTH(m.payload) > {max_payload} THEN NULL ELSE m.payload END AS payload, \
         m.headers, m.created_at_ms"
    )
}

/// No limit on the payload: for reads that are not deliveries of the log.
const ANY_PAYLOAD: &str = "9223372036854775807";

#[derive(Debug, Clone)]
pub struct MySqlStorage {
    pool: MySqlPool,
    /// The stored partition count once known (0: not read yet).
    partitions: Arc<AtomicU32>,
    /// One sequencing pass at a time in this process (others wait and then
    /// find the work done).
    sequencing: Arc<tokio::sync::Mutex<()>>,
    /// When [`MySqlStorage::reset_forged`] last looked.
    forged_checked: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl MySqlStorage {
    /// Connects to `url` (`mysql://user:password@host:port/db`). One
    /// connection is tried first, once, so a refused or silent server is
    /// reported at once, naming it; a server older than MySQL 8.0 or MariaDB
    /// 10.6 (no `SKIP LOCKED`) is refused by name.
    pub async fn connect(url: &str) -> Result<Self> {
        let shown = crate::storage::redact_url(url);
        let connect_error = |cause| StorageError::Connect {
            url: shown.clone(),
            cause,
        };
        let options = MySqlConnectOptions::from_str(url).map_err(connect_error)?;
        let mut first =
            super::first_connection(&shown, MySqlConnection::connect_with(&options)).await?;
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&mut first)
            .await?;
        let _ = first.close().await;
        if let Some(reason) = unsupported_version(&version) {
            return Err(StorageError::Unsupported(reason));
        }
        let maria = version.to_ascii_lowercase().contains("mariadb");
        let pool = MySqlPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(session_settings(maria)))
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            // Before the server's own `wait_timeout` for this session (MySQL).
            .idle_timeout(Some(Duration::from_secs(20)))
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Self {
            pool,
            partitions: Arc::new(AtomicU32::new(0)),
            sequencing: Arc::default(),
            forged_checked: Arc::default(),
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The stored partition count ([`Storage::ensure_partitions`] keeps it
    /// once set; until then it is read).
    async fn partitions(&self) -> Result<u32> {
        match self.partitions.load(Ordering::Relaxed) {
            0 => stored_partitions(&mut *self.pool.acquire().await?).await,
            known => Ok(known),
        }
    }

    /// One sequencing pass (see the module docs): gives the committed rows
    /// that have none a `commit_seq` and a partition. Returns how many it
    /// sequenced.
    pub async fn sequence(&self) -> Result<u64> {
        again_on_deadlock!({
            let _one = self.sequencing.lock().await;
            self.reset_forged().await?;
            let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
                // Both columns of the index by equality, so it gives `seq` order:
                // `partition = -1` alone was planned as a primary-key scan from
                // the table's first row (a pass costing more the longer the log).
                "SELECT seq, id, partition_key FROM outbox_messages
                 WHERE `partition` = -1 AND commit_seq = 0 ORDER BY seq LIMIT ?",
            )
            .bind(SEQUENCE_PASS)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(0);
            }
            let partitions = self.partitions().await?;
            let mut tx = self.pool.begin().await?;
            let counter: String = sqlx::query_scalar(
                "SELECT value FROM outbox_settings WHERE `key` = 'commit_seq' FOR UPDATE",
            )
            .fetch_one(&mut *tx)
            .await?;
            let base: i64 = counter.trim().parse().unwrap_or(0);
            // [seq, partition, commit_seq] for each row, numbered in seq order
            // after the counter.
            let plan: Vec<[i64; 3]> = (1..)
                .zip(&rows)
                .map(|(rank, (seq, id, key))| {
                    let partition = partition_of_row(key.as_deref(), id, partitions);
                    [*seq, i64::from(partition), base + rank]
                })
                .collect();
            let top = base + i64::try_from(plan.len()).unwrap_or(i64::MAX);
            // The rows are reached from the plan by primary key alone
            // (STRAIGHT_JOIN, FORCE INDEX): a scan of the table (which the
            // optimizer picks for a small one) or of the `commit_seq` index
            // would lock, and so wait for, rows of transactions still open. A
            // row another relay's pass sequenced meanwhile keeps its numbers.
            let sequenced = sqlx::query(
                "UPDATE JSON_TABLE(?, '$[*]' COLUMNS (
                        s BIGINT PATH '$[0]', p INT PATH '$[1]', o BIGINT PATH '$[2]')) plan
                    STRAIGHT_JOIN outbox_messages m FORCE INDEX (PRIMARY) ON m.seq = plan.s
                 SET m.`partition` = plan.p, m.commit_seq = plan.o
                 WHERE m.`partition` = -1",
            )
            .bind(serde_json::to_string(&plan).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await
            .map_err(privilege("UPDATE on outbox_messages"))?
            .rows_affected();
            sqlx::query("UPDATE outbox_settings SET value = ? WHERE `key` = 'commit_seq'")
                .bind(top.to_string())
                .execute(&mut *tx)
                .await
                .map_err(privilege("UPDATE on outbox_settings"))?;
            tx.commit().await?;
            Ok(sequenced)
        })
    }

    /// Puts rows whose relay columns no pass wrote back to "not sequenced"
    /// (`partition` -1, `commit_seq` 0), for the next pass to number: a
    /// `commit_seq` above the counter, a partition without a `commit_seq`, a
    /// `commit_seq` without a partition, a partition outside the count. Looked for at most every [`FORGED_CHECK`], by index
    /// lookups; the reset runs under the counter's lock, so no pass's own
    /// numbers are taken for forged ones.
    async fn reset_forged(&self) -> Result<()> {
        again_on_deadlock!({
            {
                let mut last = self
                    .forged_checked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.is_some_and(|at| at.elapsed() < FORGED_CHECK) {
                    return Ok(());
                }
                *last = Some(std::time::Instant::now());
            }
            let partitions = self.partitions().await?;
            let each = (0..partitions)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let highest = (0..partitions)
                .map(|p| {
                    format!("(SELECT max(commit_seq) FROM outbox_messages WHERE `partition` = {p})")
                })
                .collect::<Vec<_>>()
                .join(", ");
            // Numbers the relay wrote itself: no parameters.
            let probe = format!(
                concat!(
                    "SELECT EXISTS (SELECT 1 FROM outbox_messages WHERE `partition` IN ({each}) AND commit_seq = 0)
                         OR EXISTS (SELECT 1 FROM outbox_messages WHERE `partition` = -1 AND (commit_seq > 0 OR commit_seq < 0))
                         OR EXISTS (SELECT 1 FROM outbox_messages WHERE `partition` < -1 OR `partition` >= {n})
                         OR coalesce(GREATEST({highest}, 0), 0) > ",
                    counter!()
                ),
                each = each,
                n = partitions,
                highest = highest,
            );
            let forged: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(probe))
                .persistent(false)
                .fetch_one(&self.pool)
                .await?;
            if forged == 0 {
                return Ok(());
            }
            let mut tx = self.pool.begin().await?;
            let counter: String = sqlx::query_scalar(
                "SELECT value FROM outbox_settings WHERE `key` = 'commit_seq' FOR UPDATE",
            )
            .fetch_one(&mut *tx)
            .await?;
            let base: i64 = counter.trim().parse().unwrap_or(0);
            let mut reset = 0;
            for condition in [
                format!("`partition` IN ({each}) AND commit_seq > {base}"),
                format!("`partition` IN ({each}) AND commit_seq = 0"),
                "`partition` = -1 AND (commit_seq > 0 OR commit_seq < 0)".to_string(),
                format!("`partition` < -1 OR `partition` >= {partitions}"),
            ] {
                reset += sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE outbox_messages SET `partition` = -1, commit_seq = 0 WHERE {condition}"
                )))
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(privilege("UPDATE on outbox_messages"))?
                .rows_affected();
            }
            tx.commit().await?;
            if reset > 0 {
                tracing::warn!(
                    rows = reset,
                    "rows whose partition or commit_seq a producer wrote were put back in line to be \
                     sequenced (producers must leave both columns out)"
                );
            }
            Ok(())
        })
    }

    /// The live relays (heartbeat not expired by the database's clock).
    async fn live_relays(&self, conn: &mut MySqlConnection) -> Result<Vec<LiveRelay>> {
        let rows: Vec<(String, String)> = sqlx::query_as(concat!(
            "SELECT owner, targets FROM outbox_relays WHERE expires_ms >= ",
            now!(),
            " ORDER BY owner"
        ))
        .fetch_all(&mut *conn)
        .await?;
        Ok(super::live_relays_of(rows))
    }

    /// The log entries of `seqs` (any that are gone are missing), in seq order.
    async fn entries_of(&self, seqs: &[i64], partitions: u32) -> Result<Vec<(i64, LogEntry)>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM outbox_messages m WHERE m.seq IN ({}) ORDER BY m.seq",
            message_columns(ANY_PAYLOAD),
            join(seqs)
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("seq")?,
                    decode_entry(row, partitions, usize::MAX)?,
                ))
            })
            .collect()
    }
}

/// How long a relay's transaction may sit idle before the server ends its
/// session (and so its locks): a relay stopped (`SIGSTOP`, a paused VM)
/// inside a sequencing pass holds the counter's lock, and every relay's
/// passes wait on it.
pub const IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What every relay session sets first: `autocommit` and `REPEATABLE READ`
/// (a server default of `READ UNCOMMITTED` would let a pass see rows not
/// yet committed, `SERIALIZABLE` would make its plain read wait on them),
/// a `sql_mode` the relay's SQL is written for (whatever the server's, e.g.
/// `ORACLE` or `ANSI_QUOTES`), a short lock wait, and the idle limit: on
/// MariaDB for a transaction (`idle_transaction_timeout`), on MySQL, which
/// has none, for the session (`wait_timeout`: the pool retires idle
/// connections before that).
fn session_settings(maria: bool) -> String {
    let idle = IDLE_TRANSACTION_TIMEOUT.as_secs();
    let idle = if maria {
        format!("SET SESSION idle_transaction_timeout = {idle};")
    } else {
        format!("SET SESSION wait_timeout = {};", idle * 3)
    };
    format!(
        "SET SESSION autocommit = 1;
         SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;
         SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION';
         SET SESSION innodb_lock_wait_timeout = 5;
         {idle}"
    )
}

/// Why this server cannot hold the outbox, if it cannot: `SKIP LOCKED`
/// came with MySQL 8.0 and MariaDB 10.6.
fn unsupported_version(version: &str) -> Option<String> {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let maria = version.to_ascii_lowercase().contains("mariadb");
    let ok = if maria {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    };
    (!ok).then(|| {
        format!(
            "the server is {version}; outbox-relay needs MySQL 8.0+ or MariaDB 10.6+ \
             (for SELECT ... FOR UPDATE SKIP LOCKED)"
        )
    })
}

/// The partition of a row being sequenced: as the other backends assign it
/// (FNV-1a of the key, or of the id's text when there is no key).
fn partition_of_row(key: Option<&str>, id: &str, partitions: u32) -> u32 {
    match uuid::Uuid::parse_str(id) {
        Ok(uuid) => crate::message::partition_of(key, &uuid, partitions),
        // A malformed id: the row is dead-lettered for it wherever it lands.
        Err(_) => {
            crate::message::partition_of(Some(key.unwrap_or(id)), &uuid::Uuid::nil(), partitions)
        }
    }
}

/// The dead letters a [`DeadLetterFilter`] matches, as SQL over
/// `outbox_deliveries d LEFT JOIN outbox_messages m`, with the ten
/// parameters of [`bind_dead_letter_filter`].
const DEAD_LETTERS_MATCHING: &str = "d.state = 'dead' AND (? IS NULL OR d.target = ?)
               AND (? IS NULL OR m.event_name LIKE ? ESCAPE '|')
               AND (? IS NULL OR d.updated_at_ms >= ?)
               AND (? IS NULL OR d.updated_at_ms < ?)
               AND (? IS NULL OR LOCATE(LOWER(?), LOWER(d.last_error)) > 0)";

fn bind_dead_letter_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    filter: &'q DeadLetterFilter,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    let pattern = filter
        .event_pattern
        .as_deref()
        .map(|g| glob_to_like(g, '|'));
    query
        .bind(filter.target.as_deref())
        .bind(filter.target.as_deref())
        .bind(filter.event_pattern.as_deref())
        .bind(pattern)
        .bind(filter.since_ms)
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .bind(filter.until_ms)
        .bind(filter.error_contains.as_deref())
        .bind(filter.error_contains.as_deref())
}

/// Numbers as a SQL list.
fn join(values: &[i64]) -> String {
    values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `n` placeholders as a SQL list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// Maps a refused statement (MySQL errors 1142, 1143: command or column
/// denied) to [`StorageError::Privilege`] naming `grant`.
fn privilege(grant: &'static str) -> impl Fn(sqlx::Error) -> StorageError {
    move |e| {
        let denied = match &e {
            sqlx::Error::Database(d) => d
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| matches!(m.number(), 1142 | 1143)),
            _ => false,
        };
        if denied {
            StorageError::Privilege {
                grant: grant.to_string(),
                cause: e,
            }
        } else {
            StorageError::Database(e)
        }
    }
}

fn decode_entry(row: &MySqlRow, partitions: u32, max_payload_bytes: usize) -> Result<LogEntry> {
    Ok(decode_row(RawRow {
        seq: row.try_get("seq")?,
        xid: row.try_get("xid")?,
        id: Ok(row.try_get("id")?),
        event_name: Ok(row.try_get("event_name")?),
        partition_key: Ok(row.try_get("partition_key")?),
        partition: row.try_get("partition")?,
        partitions,
        payload_len: row.try_get("payload_len")?,
        payload: row.try_get("payload")?,
        max_payload_bytes,
        headers: Ok(Some(row.try_get("headers")?)),
        created_at_ms: row.try_get("created_at_ms")?,
    }))
}

/// The migrations applied to the database (none when it has no migrations table).
pub async fn applied_migrations(pool: &MySqlPool) -> Result<Vec<i64>> {
    let has_table: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    if has_table == 0 {
        // A table the user has no privilege on is not shown to it.
        let outbox: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = DATABASE() AND table_name = 'outbox_messages'",
        )
        .fetch_one(pool)
        .await?;
        if outbox > 0 {
            return Err(StorageError::Unsupported(
                "the database has the outbox tables, but its user cannot see _sqlx_migrations, \
                 where `migrate` records the schema's version: grant it SELECT on _sqlx_migrations"
                    .into(),
            ));
        }
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?,
    )
}

pub(crate) async fn stored_partitions(conn: &mut MySqlConnection) -> Result<u32> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM outbox_settings WHERE `key` = 'partitions'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
}

/// Inserts `message` on `conn` (the producer API's INSERT, and
/// [`Storage::save`]'s). Its partition and commit order are the relay's to
/// assign, once the transaction has committed.
pub async fn enqueue(conn: &mut MySqlConnection, message: &NewMessage) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox_messages (id, event_name, partition_key, payload, headers)
             VALUES (?, ?, ?, ?, ?)",
    )
    .bind(message.id.to_string())
    .bind(&message.event_name)
    .bind(message.partition_key.as_deref())
    .bind(message.payload.as_slice())
    .bind(crate::message::encode_headers(&message.headers))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One entry of a failure record's history, built in SQL with the
/// database's clock from the parameters `attempt` and `error` (in that order).
macro_rules! history_entry {
    () => {
        concat!(
            "JSON_OBJECT('attempt', ?, 'at_ms', ",
            now!(),
            ", 'error', ?)"
        )
    };
}

#[async_trait]
impl Storage for MySqlStorage {
    async fn migrate(&self) -> Result<()> {
        // Nothing to do, nothing to ask for: a relay whose user may not
        // create tables runs on a schema that `migrate` set up.
        let applied = applied_migrations(&self.pool).await?;
        if MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .all(|m| applied.contains(&m.version))
        {
            return Ok(());
        }
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ensure_partitions(&self, configured: u32) -> Result<u32> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO outbox_settings (`key`, value) VALUES ('partitions', ?)
             ON DUPLICATE KEY UPDATE value = value",
        )
        .bind(configured.to_string())
        .execute(&mut *conn)
        .await?;
        // A counter behind the cursors (a restore of some tables only) would
        // hand out numbers the cursors have passed: move it past them. (The
        // cursors, not the log's numbers: a producer may have written those.)
        // Looked at first by a plain read: the counter's row is locked while
        // a pass runs, and a start should not wait on one.
        let (counter, cursors): (i64, i64) = sqlx::query_as(concat!(
            "SELECT ",
            counter!(),
            ", (SELECT coalesce(max(position_xid), 0) FROM outbox_cursors)"
        ))
        .fetch_one(&mut *conn)
        .await?;
        if counter < cursors {
            sqlx::query(
                "UPDATE outbox_settings SET value = CAST(GREATEST(CAST(value AS SIGNED), ?) AS CHAR)
                 WHERE `key` = 'commit_seq'",
            )
            .bind(cursors)
            .execute(&mut *conn)
            .await?;
        }
        super::agreed_partitions(
            stored_partitions(&mut conn).await?,
            configured,
            &self.partitions,
        )
    }

    async fn save(&self, messages: &[NewMessage]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for message in messages {
            enqueue(&mut tx, &crate::trace_context::with_trace_context(message)).await?;
        }
        tx.commit().await?;
        self.sequence().await?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        target: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        again_on_deadlock!({
            // MySQL applies SET assignments left to right, each seeing the ones
            // before: `lease_owner` first, so the expiry is renewed exactly when
            // the owner is (now) `owner`.
            sqlx::query(concat!(
                "INSERT INTO outbox_cursors (target, `partition`, lease_owner, lease_expires_ms, updated_at_ms)
                 VALUES (?, ?, ?, ",
                now!(),
                " + ?, ",
                now!(),
                ")
                 ON DUPLICATE KEY UPDATE
                    lease_owner = IF(lease_owner IS NULL OR lease_owner = VALUES(lease_owner)
                                     OR lease_expires_ms < VALUES(updated_at_ms), VALUES(lease_owner), lease_owner),
                    lease_expires_ms = IF(lease_owner = VALUES(lease_owner), VALUES(lease_expires_ms), lease_expires_ms)"
            ))
            .bind(target)
            .bind(partition)
            .bind(owner)
            .bind(duration_ms(ttl))
            .execute(&self.pool)
            .await?;
            let row: Option<(Option<String>, i64, i64)> = sqlx::query_as(
                "SELECT lease_owner, position_xid, position_seq FROM outbox_cursors
                 WHERE target = ? AND `partition` = ?",
            )
            .bind(target)
            .bind(partition)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row
                .filter(|(holder, _, _)| holder.as_deref() == Some(owner))
                .map(|(_, xid, seq)| Lease {
                    target: target.to_string(),
                    partition,
                    owner: owner.to_string(),
                    position: Position { xid, seq },
                }))
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        sqlx::query(
            "UPDATE outbox_cursors SET lease_owner = NULL, lease_expires_ms = 0
             WHERE target = ? AND `partition` = ? AND lease_owner = ?",
        )
        .bind(&lease.target)
        .bind(lease.partition)
        .bind(&lease.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fetch_pending(
        &self,
        partition: u32,
        after: Position,
        limit: u32,
        max_payload_bytes: usize,
    ) -> Result<Vec<LogEntry>> {
        let partitions = self.partitions().await?;
        let sql = format!(
            "SELECT {columns} FROM outbox_messages m
             WHERE m.`partition` = ? AND m.commit_seq > ? AND m.commit_seq <= {counter}
             ORDER BY m.commit_seq
             LIMIT ?",
            columns = message_columns("?"),
            counter = counter!(),
        );
        let read = |limit: u32| {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(i64::try_from(max_payload_bytes).unwrap_or(i64::MAX))
                .bind(partition)
                .bind(after.xid)
                .bind(limit)
                .fetch_all(&self.pool)
        };
        let mut rows = read(limit).await?;
        // Short of a full batch: sequence what has committed since, and
        // read again if that found anything.
        if rows.len() < limit as usize && self.sequence().await? > 0 {
            rows = read(limit).await?;
        }
        rows.iter()
            .map(|row| decode_entry(row, partitions, max_payload_bytes))
            .collect()
    }

    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()> {
        again_on_deadlock!({
            let plain = ack.resolved.is_empty() && ack.failures.is_empty();
            let mut tx = if plain {
                None
            } else {
                Some(self.pool.begin().await?)
            };
            // Assignments run left to right: `position_seq` is set first, by the
            // comparison on the old pair; then `position_xid`, whose comparison
            // sees the new seq and so holds exactly when the old xid was lower
            // or the pair moved within the same xid.
            let cursor = sqlx::query(concat!(
                "UPDATE outbox_cursors SET
                    position_seq = IF((position_xid, position_seq) < (?, ?), ?, position_seq),
                    position_xid = IF((position_xid, position_seq) < (?, ?), ?, position_xid),
                    updated_at_ms = ",
                now!(),
                " WHERE target = ? AND `partition` = ? AND lease_owner = ?"
            ))
            .bind(ack.position.xid)
            .bind(ack.position.seq)
            .bind(ack.position.seq)
            .bind(ack.position.xid)
            .bind(ack.position.seq)
            .bind(ack.position.xid)
            .bind(&lease.target)
            .bind(lease.partition)
            .bind(&lease.owner);
            let updated = match tx.as_mut() {
                Some(tx) => cursor.execute(&mut **tx).await?,
                None => cursor.execute(&self.pool).await?,
            };
            if updated.rows_affected() == 0 {
                return Err(super::lease_lost(lease));
            }
            let Some(mut tx) = tx else {
                return Ok(());
            };
            if !ack.resolved.is_empty() {
                let sql = format!(
                    "DELETE FROM outbox_deliveries WHERE target = ? AND seq IN ({})",
                    join(&ack.resolved)
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(&lease.target)
                    .execute(&mut *tx)
                    .await?;
            }
            for failure in &ack.failures {
                let (state, wait_ms) = disposition_columns(&failure.disposition);
                let attempts = i32::try_from(failure.attempts).unwrap_or(i32::MAX);
                sqlx::query(concat!(
                    "INSERT INTO outbox_deliveries
                        (target, seq, message_id, state, attempts, next_attempt_ms, last_error, history, updated_at_ms)
                     VALUES (?, ?, ?, ?, ?, ",
                    now!(),
                    " + ?, ?, JSON_ARRAY(",
                    history_entry!(),
                    "), ",
                    now!(),
                    ")
                     ON DUPLICATE KEY UPDATE
                        state = VALUES(state), attempts = VALUES(attempts),
                        next_attempt_ms = VALUES(next_attempt_ms), last_error = VALUES(last_error),
                        history = JSON_MERGE_PRESERVE(history, VALUES(history)),
                        updated_at_ms = VALUES(updated_at_ms)"
                ))
                .bind(&lease.target)
                .bind(failure.seq)
                .bind(&failure.message_id)
                .bind(state)
                .bind(attempts)
                .bind(wait_ms)
                .bind(&failure.error)
                .bind(attempts)
                .bind(&failure.error)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn claim_retries(
        &self,
        target: &str,
        owner: &str,
        limit: u32,
        claim_ttl: Duration,
    ) -> Result<Vec<DueRetry>> {
        again_on_deadlock!({
            let partitions = self.partitions().await?;
            let mut tx = self.pool.begin().await?;
            // A record ahead of its partition's cursor is an ordered target's
            // held message, retried in place by the ordered path: only records
            // behind the cursor are claimed. The lock is on the failure records
            // alone (MariaDB has no `FOR UPDATE OF`): the held check reads the
            // log and cursors without locking them.
            let due: Vec<(i64, String, i32)> = sqlx::query_as(concat!(
                "SELECT d.seq, d.message_id, d.attempts FROM outbox_deliveries d
                 WHERE d.target = ? AND d.state = 'retry' AND d.next_attempt_ms <= ",
                now!(),
                " AND d.claim_expires_ms <= ",
                now!(),
                " ORDER BY d.next_attempt_ms, d.seq
                 LIMIT ?
                 FOR UPDATE SKIP LOCKED"
            ))
            .bind(target)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            if due.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let seqs: Vec<i64> = due.iter().map(|d| d.0).collect();
            let held: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT m.seq FROM outbox_messages m JOIN outbox_cursors c
                   ON c.target = ? AND c.`partition` = m.`partition`
                 WHERE m.seq IN ({}) AND (m.commit_seq, m.seq) > (c.position_xid, c.position_seq)",
                join(&seqs)
            )))
            .persistent(false)
            .bind(target)
            .fetch_all(&mut *tx)
            .await?;
            let claimed: Vec<&(i64, String, i32)> =
                due.iter().filter(|d| !held.contains(&d.0)).collect();
            if claimed.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let claimed_seqs: Vec<i64> = claimed.iter().map(|d| d.0).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                concat!(
                    "UPDATE outbox_deliveries SET claim_owner = ?, claim_expires_ms = ",
                    now!(),
                    " + ? WHERE target = ? AND seq IN ({})"
                ),
                join(&claimed_seqs)
            )))
            .persistent(false)
            .bind(owner)
            .bind(duration_ms(claim_ttl))
            .bind(target)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            let mut entries = self
                .entries_of(&claimed_seqs, partitions)
                .await?
                .into_iter();
            let mut next = entries.next();
            let mut out = Vec::with_capacity(claimed.len());
            for (seq, id, attempts) in claimed {
                let entry = match next.take() {
                    Some((found, entry)) if found == *seq => {
                        next = entries.next();
                        entry
                    }
                    other => {
                        next = other;
                        Err(MalformedMessage::gone(*seq, id.clone()))
                    }
                };
                out.push(DueRetry {
                    entry,
                    attempts: u32::try_from(*attempts).unwrap_or(0),
                });
            }
            out.sort_by_key(|r| crate::message::entry_position(&r.entry).seq);
            Ok(out)
        })
    }

    async fn settle_retries(&self, target: &str, settlements: &[Settlement]) -> Result<()> {
        again_on_deadlock!({
            if settlements.is_empty() {
                return Ok(());
            }
            let mut tx = self.pool.begin().await?;
            for settlement in settlements {
                match settlement {
                    Settlement::Delivered { seq } => {
                        sqlx::query("DELETE FROM outbox_deliveries WHERE target = ? AND seq = ?")
                            .bind(target)
                            .bind(seq)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Settlement::Failed(failure) => {
                        let (state, wait_ms) = disposition_columns(&failure.disposition);
                        let attempts = i32::try_from(failure.attempts).unwrap_or(i32::MAX);
                        // `history` is appended to before `attempts` and
                        // `last_error` change (left-to-right assignments), from
                        // the parameters.
                        sqlx::query(concat!(
                            "UPDATE outbox_deliveries SET
                                history = JSON_ARRAY_APPEND(history, '$', ",
                            history_entry!(),
                            "),
                                state = ?, attempts = ?, next_attempt_ms = ",
                            now!(),
                            " + ?, last_error = ?,
                                claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ",
                            now!(),
                            " WHERE target = ? AND seq = ?"
                        ))
                        .bind(attempts)
                        .bind(&failure.error)
                        .bind(state)
                        .bind(attempts)
                        .bind(wait_ms)
                        .bind(&failure.error)
                        .bind(target)
                        .bind(failure.seq)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn status(&self, targets: &[String]) -> Result<Vec<TargetStatus>> {
        let mut conn = self.pool.acquire().await?;
        let partitions = stored_partitions(&mut conn).await?;
        let now: i64 = sqlx::query_scalar(concat!("SELECT ", now!()))
            .fetch_one(&mut *conn)
            .await?;
        let live = self.live_relays(&mut conn).await?;
        // Committed rows not sequenced yet are pending at every target.
        let (unsequenced, unsequenced_oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(created_at_ms) FROM outbox_messages WHERE `partition` = -1",
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(targets.len());
        for target in targets {
            let cursors: Vec<(i32, i64, Option<String>, i64)> = sqlx::query_as(
                "SELECT `partition`, position_xid, lease_owner, lease_expires_ms FROM outbox_cursors
                 WHERE target = ? ORDER BY `partition`",
            )
            .bind(target)
            .fetch_all(&mut *conn)
            .await?;
            let (mut lag, mut oldest) = (unsequenced, unsequenced_oldest);
            for partition in 0..partitions {
                let after = cursors
                    .iter()
                    .find(|c| u32::try_from(c.0).ok() == Some(partition))
                    .map_or(0, |c| c.1);
                let (n, first): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT count(*), min(created_at_ms) FROM outbox_messages
                     WHERE `partition` = ? AND commit_seq > ?",
                )
                .bind(partition)
                .bind(after)
                .fetch_one(&mut *conn)
                .await?;
                lag += n;
                oldest = match (oldest, first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let (retries, dead, registered): (i64, i64, i64) = sqlx::query_as(
                "SELECT CAST(coalesce(sum(state = 'retry'), 0) AS SIGNED),
                        CAST(coalesce(sum(state = 'dead'), 0) AS SIGNED),
                        CAST(EXISTS (SELECT 1 FROM outbox_targets WHERE name = ?) AS SIGNED)
                 FROM outbox_deliveries WHERE target = ?",
            )
            .bind(target)
            .bind(target)
            .fetch_one(&mut *conn)
            .await?;
            out.push(TargetStatus {
                target: target.clone(),
                lag,
                oldest_pending_age_ms: oldest.map(|o| (now - o).max(0)),
                retries_pending: retries,
                dead_letters: dead,
                lease_owners: cursors
                    .iter()
                    .filter(|c| c.2.is_some() && c.3 >= now)
                    .map(|c| format!("{} (p{})", c.2.as_deref().unwrap_or_default(), c.0))
                    .collect(),
                registered: registered != 0,
                served_by: served_by(&live, target),
                waiting_on: None,
            });
        }
        Ok(out)
    }

    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let sql = format!(
            "SELECT d.target, d.seq, d.message_id, m.event_name, CAST(d.attempts AS SIGNED) AS attempts,
                    d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE {DEAD_LETTERS_MATCHING}
               AND (? IS NULL OR (d.updated_at_ms, ?, d.seq) < (?, d.target, ?))
             ORDER BY d.updated_at_ms DESC, d.target, d.seq DESC LIMIT ?"
        );
        let older = filter.older_than.as_ref();
        let rows = bind_dead_letter_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), filter)
            .bind(older.map(|k| k.dead_at_ms))
            .bind(older.map(|k| k.target.as_str()))
            .bind(older.map(|k| k.dead_at_ms))
            .bind(older.map(|k| k.seq))
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dead_letter_row).collect()
    }

    async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let sql = format!(
            "SELECT count(*) FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE {DEAD_LETTERS_MATCHING}"
        );
        let count: i64 = bind_dead_letter_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), filter)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn dead_letter(&self, target: &str, seq: i64) -> Result<Option<DeadLetterDetail>> {
        let partitions = self.partitions().await?;
        let sql = format!(
            "SELECT d.target, d.seq AS d_seq, d.message_id, CAST(d.attempts AS SIGNED) AS attempts, d.last_error, d.updated_at_ms,
                    d.history, m.event_name AS d_event_name, {}
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.target = ? AND d.seq = ? AND d.state = 'dead'",
            message_columns(ANY_PAYLOAD)
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(target)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let message = match row.try_get::<Option<i64>, _>("seq")? {
            Some(_) => Some(decode_entry(&row, partitions, usize::MAX)?),
            None => None,
        };
        super::dead_letter_detail(&row, message).map(Some)
    }

    async fn replay_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64> {
        again_on_deadlock!({
            if seqs.is_empty() {
                return Ok(0);
            }
            let sql = format!(
                concat!(
                    "UPDATE outbox_deliveries SET state = 'retry', next_attempt_ms = ",
                    now!(),
                    ", claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ",
                    now!(),
                    " WHERE target = ? AND state = 'dead' AND seq IN ({})"
                ),
                join(seqs)
            );
            let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .bind(target)
                .execute(&self.pool)
                .await?;
            Ok(updated.rows_affected())
        })
    }

    async fn purge_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64> {
        again_on_deadlock!({
            if seqs.is_empty() {
                return Ok(0);
            }
            let sql = format!(
                "DELETE FROM outbox_deliveries WHERE target = ? AND state = 'dead' AND seq IN ({})",
                join(seqs)
            );
            let deleted = sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .bind(target)
                .execute(&self.pool)
                .await?;
            Ok(deleted.rows_affected())
        })
    }

    async fn prune(&self, targets: &[String], retention: Duration, limit: u32) -> Result<u64> {
        again_on_deadlock!({
            // Every registered target and every one named; none at all prunes nothing.
            let mut all: Vec<String> = self.registered_targets().await?;
            all.extend(targets.iter().cloned());
            all.sort();
            all.dedup();
            if all.is_empty() {
                return Ok(0);
            }
            // The doomed rows are found by a plain read, then deleted by primary
            // key alone (as in `sequence`, a scan would wait on open inserts): a subquery on the log inside the DELETE could take shared
            // next-key locks (statement-based binary logging) and hold up
            // producers' inserts. Cursors only move forward, so what was passed
            // stays passed; a failure record written since is checked again.
            let sql = format!(
                concat!(
                    "SELECT m.seq FROM outbox_messages m
                     WHERE m.`partition` >= 0 AND m.commit_seq > 0 AND m.created_at_ms < ",
                    now!(),
                    " - ?
                       AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = m.seq)
                       AND (SELECT count(*) FROM outbox_cursors c
                            WHERE c.target IN ({names}) AND c.`partition` = m.`partition`
                              AND (c.position_xid, c.position_seq) >= (m.commit_seq, m.seq)) = ?
                     ORDER BY m.seq
                     LIMIT ?"
                ),
                names = placeholders(all.len())
            );
            let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .bind(duration_ms(retention));
            for name in &all {
                query = query.bind(name);
            }
            let doomed = query
                .bind(i64::try_from(all.len()).unwrap_or(i64::MAX))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            if doomed.is_empty() {
                return Ok(0);
            }
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE m FROM outbox_messages m FORCE INDEX (PRIMARY) WHERE m.seq IN ({})
                   AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = m.seq)",
                join(&doomed)
            )))
            .persistent(false)
            .execute(&self.pool)
            .await?;
            Ok(deleted.rows_affected())
        })
    }

    async fn heartbeat(
        &self,
        owner: &str,
        serving: &[ServedTarget],
        ttl: Duration,
    ) -> Result<Vec<LiveRelay>> {
        again_on_deadlock!({
            let mut tx = self.pool.begin().await?;
            sqlx::query(concat!(
                "INSERT INTO outbox_relays (owner, heartbeat_ms, started_at_ms, expires_ms, targets)
                 VALUES (?, ",
                now!(),
                ", ",
                now!(),
                ", ",
                now!(),
                " + ?, ?)
                 ON DUPLICATE KEY UPDATE heartbeat_ms = VALUES(heartbeat_ms),
                    expires_ms = VALUES(expires_ms), targets = VALUES(targets)"
            ))
            .bind(owner)
            .bind(duration_ms(ttl))
            .bind(encode_served(serving))
            .execute(&mut *tx)
            .await?;
            for target in serving {
                sqlx::query(concat!(
                    "INSERT INTO outbox_targets (name, registered_at_ms) VALUES (?, ",
                    now!(),
                    ") ON DUPLICATE KEY UPDATE name = name"
                ))
                .bind(&target.name)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(concat!(
                "DELETE FROM outbox_relays WHERE owner <> ? AND heartbeat_ms < ",
                now!(),
                " - 10 * ?"
            ))
            .bind(owner)
            .bind(duration_ms(ttl))
            .execute(&mut *tx)
            .await?;
            let rows: Vec<(String, String)> = sqlx::query_as(concat!(
                "SELECT owner, targets FROM outbox_relays WHERE owner = ? OR expires_ms >= ",
                now!(),
                " ORDER BY owner"
            ))
            .bind(owner)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(super::live_relays_of(rows))
        })
    }

    async fn registered_targets(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM outbox_targets ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn forget_target(&self, target: &str) -> Result<u64> {
        again_on_deadlock!({
            let mut tx = self.pool.begin().await?;
            super::refuse_if_served(target, &self.live_relays(&mut tx).await?)?;
            let mut removed = [0u64; 3];
            for (i, sql) in [
                "DELETE FROM outbox_targets WHERE name = ?",
                "DELETE FROM outbox_cursors WHERE target = ?",
                "DELETE FROM outbox_deliveries WHERE target = ?",
            ]
            .into_iter()
            .enumerate()
            {
                removed[i] = sqlx::query(sql)
                    .bind(target)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            let forgotten = super::forgotten(target, removed)?;
            tx.commit().await?;
            Ok(forgotten)
        })
    }

    async fn leave(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM outbox_relays WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn failure_state(&self, target: &str, seq: i64) -> Result<Option<FailureState>> {
        let row: Option<(i32, i64, String)> = sqlx::query_as(concat!(
            "SELECT attempts, CAST(next_attempt_ms - ",
            now!(),
            " AS SIGNED), state FROM outbox_deliveries WHERE target = ? AND seq = ?"
        ))
        .bind(target)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(attempts, due_in_ms, state)| FailureState {
            attempts: u32::try_from(attempts).unwrap_or(0),
            due_in: due_in(due_in_ms),
            dead: state == "dead",
        }))
    }

    async fn watch_commits(&self, on_commit: &tokio::sync::watch::Sender<u64>) {
        let mut failures = 0u32;
        loop {
            match self.sequence().await {
                Ok(0) => failures = 0,
                Ok(_) => {
                    failures = 0;
                    on_commit.send_modify(|n| *n += 1);
                    // More may be waiting: look again at once.
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot sequence new messages; trying again");
                    }
                }
            }
            let wait = if failures == 0 {
                WATCH_INTERVAL
            } else {
                Duration::from_millis(100u64 << failures.min(5))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused_by_name() {
        assert!(unsupported_version("10.11.19-MariaDB-0+deb12u1").is_none());
        assert!(unsupported_version("10.6.4-MariaDB").is_none());
        assert!(unsupported_version("8.0.36").is_none());
        assert!(unsupported_version("9.1.0").is_none());
        let old = unsupported_version("10.5.9-MariaDB").unwrap();
        assert!(
            old.contains("10.5.9-MariaDB") && old.contains("10.6"),
            "{old}"
        );
        assert!(unsupported_version("5.7.44-log").is_some());
    }

    #[test]
    fn globs_escape_like_metacharacters() {
        assert_eq!(glob_to_like("order.*", '|'), "order.%");
        assert_eq!(glob_to_like("a?c", '|'), "a_c");
        assert_eq!(glob_to_like("100%_|x", '|'), "100|%|_||x");
        assert_eq!(glob_to_like("100%_\\x", '\\'), "100\\%\\_\\\\x");
    }

    #[test]
    fn rows_are_partitioned_as_on_the_other_backends() {
        let id = uuid::Uuid::now_v7();
        for key in [Some("order-42"), None] {
            assert_eq!(
                partition_of_row(key, &id.to_string(), 16),
                crate::message::partition_of(key, &id, 16)
            );
        }
        assert_eq!(partition_of_row(Some("order-42"), "not-a-uuid", 16), 4);
        assert!(partition_of_row(None, "not-a-uuid", 16) < 16);
    }
}
