//! SQLite adapter of the storage port: a single file in WAL mode.
//!
//! Writes take the database lock up front (`BEGIN IMMEDIATE`) so two writers
//! never deadlock upgrading a read lock; SQLite serialises them, which is also
//! why rowid order is commit order here: that is this backend's horizon, and
//! a reader never needs to wait for a late commit.
//!
//! A write transaction ([`WriteTx`]) never goes back to the pool unfinished:
//! after a failed statement or `COMMIT` (a full disk, an I/O error) its
//! connection is closed, not reused, so the pool stays healthy and the next
//! write works as soon as the cause is gone.
//!
//! Times are the database's clock ([`now!`]), never the relay's; but a SQLite
//! "database's clock" is that of whichever process runs the statement, so
//! another relay's lease and heartbeat are judged by watching them change
//! ([`observed`](super::observed)), never by comparing clocks. Rows whose
//! `partition` is outside the partition count are read with partition 0 and
//! dead-lettered with the reason; a payload over the limit is measured with
//! `octet_length` and never read. The conformance suite is
//! `tests/it/conformance.rs`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection};

use super::observed::{Observations, Sight};
use super::{
    Ack, DeadLetter, DeadLetterDetail, DeadLetterFilter, DueRetry, FailureState, Lease, LiveRelay,
    Result, ServedTarget, Settlement, Storage, StorageError, TargetStatus, dead_letter_row,
    disposition_columns, due_in, duration_ms, encode_served, glob_to_sqlite_glob, live_relay,
    served_by,
};
use crate::message::{LogEntry, MalformedMessage, NewMessage, Position, RawRow, decode_row};

/// How often the relay asks SQLite whether another connection committed.
const COMMIT_CHECK: Duration = Duration::from_millis(20);

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The database's clock in ms since the Unix epoch, as SQL.
macro_rules! now {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}

/// The columns every log read selects, for [`decode_entry`]. Casts make rows
/// written by other producers decodable, whatever their types; a payload
/// over `max_payload` (a SQL expression) is measured, not read.
fn message_columns(max_payload: &str) -> String {
    format!(
        "m.seq, CAST(m.id AS BLOB) AS id, CAST(m.event_name AS BLOB) AS event_name, \
         CAST(m.partition_key AS BLOB) AS partition_key, CASE WHEN typeof(m.partition) = 'blob' THEN 'x''' || hex(m.partition) || '''' \
         ELSE CAST(m.partition AS TEXT) END AS partition, \
         octet_length(m.payload) AS payload_len, \
         CASE WHEN octet_length(m.payload) > {max_payload} THEN NULL ELSE CAST(m.payload AS BLOB) END AS payload, \
         CAST(m.headers AS BLOB) AS headers, CAST(m.created_at_ms AS INTEGER) AS created_at_ms"
    )
}

/// No limit on the payload: for reads that are not deliveries of the log.
const ANY_PAYLOAD: &str = "9223372036854775807";

#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    /// The stored partition count once known (0: not read yet).
    partitions: Arc<AtomicU32>,
    /// Other relays' leases as this process saw them.
    leases: Arc<Observations<(String, u32), SeenLease>>,
    /// Relays' heartbeats as this process saw them: owner → `heartbeat_ms`.
    heartbeats: Arc<Observations<String, i64>>,
}

/// A lease as another relay holds it: owner, `lease_expires_ms` (its
/// clock), and the owner's TTL in ms (0: unknown).
type SeenLease = (String, i64, i64);

/// A relay's row is deleted once it has been seen unchanged for this many
/// of its TTLs.
const FORGET_RELAY_AFTER_TTLS: u32 = 10;

impl SqliteStorage {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self> {
        let connect_error = |cause| StorageError::Connect {
            url: url.to_string(),
            cause,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(connect_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        // "Created if missing" includes the directory it lives in.
        let file = options.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| connect_error(sqlx::Error::Io(e)))?;
        }
        // A worker reads its next batch and writes its last acknowledgement
        // while its plugin delivers; reads run side by side in WAL mode.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Self {
            pool,
            partitions: Arc::new(AtomicU32::new(0)),
            leases: Arc::default(),
            heartbeats: Arc::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<WriteTx> {
        WriteTx::begin(&self.pool).await
    }

    /// The stored partition count ([`Storage::ensure_partitions`] keeps it
    /// once set; until then it is read).
    async fn partitions(&self) -> Result<u32> {
        match self.partitions.load(Ordering::Relaxed) {
            0 => stored_partitions(&mut *self.pool.acquire().await?).await,
            known => Ok(known),
        }
    }

    /// The live relays, and the owners of rows seen unchanged for
    /// [`FORGET_RELAY_AFTER_TTLS`] TTLs. A row's TTL is its own
    /// (`expires_ms - heartbeat_ms`, both its writer's clock). A row first
    /// seen by this process is judged by this process's clock; after that,
    /// by whether it changes ([`observed`](super::observed)).
    async fn live_relays(
        &self,
        conn: &mut SqliteConnection,
    ) -> Result<(Vec<LiveRelay>, Vec<String>)> {
        let rows: Vec<(String, String, i64, i64, bool)> = sqlx::query_as(concat!(
            "SELECT owner, targets, heartbeat_ms, expires_ms - heartbeat_ms, expires_ms >= ",
            now!(),
            " FROM outbox_relays ORDER BY owner"
        ))
        .fetch_all(&mut *conn)
        .await?;
        let now = Instant::now();
        self.heartbeats
            .retain(|owner| rows.iter().any(|(o, ..)| o == owner));
        let (mut live, mut gone) = (Vec::new(), Vec::new());
        for (owner, targets, heartbeat, ttl_ms, fresh_by_clock) in rows {
            let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
            let alive = match self.heartbeats.look(&owner, &heartbeat, now) {
                Sight::First => fresh_by_clock,
                Sight::Changed => true,
                Sight::Unchanged(for_) => {
                    if for_ >= ttl * FORGET_RELAY_AFTER_TTLS {
                        gone.push(owner.clone());
                    }
                    for_ < ttl
                }
            };
            if alive {
                live.push(live_relay(owner, &targets));
            }
        }
        Ok((live, gone))
    }

    /// The lease of `target`'s `partition` as another relay holds it, if
    /// this process has watched it stay the same for the longer of `ttl`
    /// and the holder's own TTL: the values to take it over with.
    fn stale_lease(&self, target: &str, partition: u32, ttl: Duration) -> Option<(String, i64)> {
        let key = (target.to_string(), partition);
        self.leases
            .unchanged_for(
                &key,
                |(_, _, holder_ttl)| {
                    ttl.max(Duration::from_millis(
                        u64::try_from(*holder_ttl).unwrap_or(0),
                    ))
                },
                Instant::now(),
            )
            .map(|(owner, expires, _)| (owner, expires))
    }

    /// Looks at the lease of `target`'s `partition` that another relay
    /// holds, so that [`Self::stale_lease`] can tell when it stops changing.
    async fn watch_lease(&self, target: &str, partition: u32) -> Result<()> {
        let row: Option<(Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT c.lease_owner, c.lease_expires_ms, coalesce(r.expires_ms - r.heartbeat_ms, 0)
             FROM outbox_cursors c LEFT JOIN outbox_relays r ON r.owner = c.lease_owner
             WHERE c.target = ? AND c.partition = ?",
        )
        .bind(target)
        .bind(i64::from(partition))
        .fetch_optional(&self.pool)
        .await?;
        let key = (target.to_string(), partition);
        match row {
            Some((Some(owner), expires, holder_ttl)) => {
                self.leases
                    .look(&key, &(owner, expires, holder_ttl), Instant::now());
            }
            _ => self.leases.forget(&key),
        }
        Ok(())
    }

    /// Looks at every lease other relays hold on the targets in `served`
    /// (with each heartbeat), so that a dead relay's leases have been
    /// watched for as long as its heartbeat by the time this relay is
    /// assigned its partitions: the take-over then waits one TTL, not two.
    async fn watch_leases(
        &self,
        conn: &mut SqliteConnection,
        owner: &str,
        served: &str,
    ) -> Result<()> {
        let rows: Vec<(String, i64, String, i64, i64)> = sqlx::query_as(
            "SELECT c.target, c.partition, c.lease_owner, c.lease_expires_ms,
                    coalesce(r.expires_ms - r.heartbeat_ms, 0)
             FROM outbox_cursors c LEFT JOIN outbox_relays r ON r.owner = c.lease_owner
             WHERE c.lease_owner IS NOT NULL AND c.lease_owner <> ?1
               AND c.target IN (SELECT json_extract(value, '$.name') FROM json_each(?2))",
        )
        .bind(owner)
        .bind(served)
        .fetch_all(&mut *conn)
        .await?;
        let now = Instant::now();
        for (target, partition, holder, expires, holder_ttl) in rows {
            let Ok(partition) = u32::try_from(partition) else {
                continue;
            };
            self.leases
                .look(&(target, partition), &(holder, expires, holder_ttl), now);
        }
        Ok(())
    }
}

/// A write transaction (`BEGIN IMMEDIATE`) on a pooled connection of its
/// own. Committed or rolled back, the connection goes back to the pool; in
/// any other case (a failed statement or `COMMIT`, a dropped future) it is
/// closed instead, so no pooled connection is ever left inside a transaction
/// (SQLite may or may not have rolled it back after `SQLITE_FULL`).
struct WriteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        // A BEGIN that fails (the lock stayed busy) leaves no transaction.
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(Self { conn, open: true })
    }

    async fn commit(mut self) -> Result<()> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.open = false;
        Ok(())
    }

    async fn rollback(mut self) -> Result<()> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// Inserts `message` on `conn` (the producer API's INSERT, and
/// [`Storage::save`]'s): its partition from the stored partition count, its
/// headers as JSON text. [`crate::producer::sqlite::enqueue`] adds the
/// current trace context first.
pub async fn enqueue(conn: &mut SqliteConnection, message: &NewMessage) -> Result<()> {
    let partitions = stored_partitions(conn).await?;
    let partition =
        crate::message::partition_of(message.partition_key.as_deref(), &message.id, partitions);
    sqlx::query(
        "INSERT INTO outbox_messages (id, event_name, partition_key, partition, payload, headers)
             VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(message.id.to_string())
    .bind(&message.event_name)
    .bind(message.partition_key.as_deref())
    .bind(i64::from(partition))
    .bind(message.payload.as_slice())
    .bind(crate::message::encode_headers(&message.headers))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Reads the partition count that the outbox was set up with (1 if never set).
pub(crate) async fn stored_partitions(conn: &mut SqliteConnection) -> Result<u32> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM outbox_settings WHERE key = 'partitions'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
}

/// The dead letters a [`DeadLetterFilter`] matches, as SQL over
/// `outbox_deliveries d LEFT JOIN outbox_messages m`, with the parameters
/// ?1..?5 of [`bind_dead_letter_filter`].
const DEAD_LETTERS_MATCHING: &str = "d.state = 'dead' AND (?1 IS NULL OR d.target = ?1)
               AND (?2 IS NULL OR CAST(m.event_name AS TEXT) GLOB ?2)
               AND (?3 IS NULL OR d.updated_at_ms >= ?3)
               AND (?4 IS NULL OR d.updated_at_ms < ?4)
               AND (?5 IS NULL OR instr(lower(d.last_error), lower(?5)) > 0)";

fn bind_dead_letter_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    filter: &'q DeadLetterFilter,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(filter.target.as_deref())
        .bind(filter.event_pattern.as_deref().map(glob_to_sqlite_glob))
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .bind(filter.error_contains.as_deref())
}

/// A text column read as bytes, so a value that is not UTF-8 makes the row
/// malformed instead of failing the whole read.
fn text(row: &SqliteRow, column: &str) -> Result<Result<Option<String>, String>> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    Ok(match bytes {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| format!("{column} is not valid UTF-8")),
    })
}

fn decode_entry(row: &SqliteRow, partitions: u32, max_payload_bytes: usize) -> Result<LogEntry> {
    let required = |r: Result<Option<String>, String>| r.map(Option::unwrap_or_default);
    Ok(decode_row(RawRow {
        seq: row.try_get("seq")?,
        xid: 0,
        id: required(text(row, "id")?),
        event_name: required(text(row, "event_name")?),
        partition_key: text(row, "partition_key")?,
        partition: row
            .try_get::<Option<String>, _>("partition")?
            .unwrap_or_else(|| "NULL".into()),
        partitions,
        payload_len: row.try_get::<Option<i64>, _>("payload_len")?.unwrap_or(0),
        payload: row.try_get("payload")?,
        max_payload_bytes,
        headers: text(row, "headers")?,
        created_at_ms: row.try_get::<Option<i64>, _>("created_at_ms")?.unwrap_or(0),
    }))
}

/// One entry of a failure record's history, built in SQL with the
/// database's clock: `?attempt`, `?error` are the parameters given.
macro_rules! history_entry {
    ($attempt:literal, $error:literal) => {
        concat!(
            "json_object('attempt', ",
            $attempt,
            ", 'at_ms', ",
            now!(),
            ", 'error', ",
            $error,
            ")"
        )
    };
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ensure_partitions(&self, configured: u32) -> Result<u32> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT OR IGNORE INTO outbox_settings (key, value) VALUES ('partitions', ?)")
            .bind(configured.to_string())
            .execute(&mut *tx)
            .await?;
        let stored = stored_partitions(&mut tx).await?;
        tx.commit().await?;
        super::agreed_partitions(stored, configured, &self.partitions)
    }

    async fn save(&self, messages: &[NewMessage]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for message in messages {
            enqueue(&mut tx, &crate::trace_context::with_trace_context(message)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        target: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        // Free, ours, or another relay's that this process has watched go
        // unrenewed for its TTL (taken only if it is still that very row).
        let stale = self.stale_lease(target, partition, ttl);
        let row = sqlx::query(concat!(
            "INSERT INTO outbox_cursors (target, partition, position, lease_owner, lease_expires_ms, updated_at_ms)
             VALUES (?1, ?2, 0, ?3, ",
            now!(),
            " + ?4, ",
            now!(),
            ")
             ON CONFLICT (target, partition) DO UPDATE
                SET lease_owner = excluded.lease_owner,
                    lease_expires_ms = CASE WHEN outbox_cursors.lease_owner = excluded.lease_owner
                        THEN max(excluded.lease_expires_ms, outbox_cursors.lease_expires_ms + 1)
                        ELSE excluded.lease_expires_ms END
              WHERE outbox_cursors.lease_owner IS NULL
                 OR outbox_cursors.lease_owner = excluded.lease_owner
                 OR (outbox_cursors.lease_owner = ?5 AND outbox_cursors.lease_expires_ms = ?6)
             RETURNING position"
        ))
        .bind(target)
        .bind(i64::from(partition))
        .bind(owner)
        .bind(duration_ms(ttl))
        .bind(stale.as_ref().map(|(owner, _)| owner))
        .bind(stale.as_ref().map(|(_, expires)| *expires))
        .fetch_optional(&self.pool)
        .await?;
        if row.is_none() {
            self.watch_lease(target, partition).await?;
        } else {
            self.leases.forget(&(target.to_string(), partition));
            if let Some((from, _)) = &stale {
                tracing::info!(
                    target, partition, from = %from,
                    "took over a lease its holder had not renewed for its TTL"
                );
            }
        }
        Ok(match row {
            Some(row) => Some(Lease {
                target: target.to_string(),
                partition,
                owner: owner.to_string(),
                position: Position {
                    xid: 0,
                    seq: row.try_get("position")?,
                },
            }),
            None => None,
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        sqlx::query(
            "UPDATE outbox_cursors SET lease_owner = NULL, lease_expires_ms = 0
             WHERE target = ? AND partition = ? AND lease_owner = ?",
        )
        .bind(&lease.target)
        .bind(i64::from(lease.partition))
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
        let binds = |sql: String| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(partition))
                .bind(after.seq)
                .bind(i64::from(limit))
                .bind(i64::from(partitions))
                .bind(i64::try_from(max_payload_bytes).unwrap_or(i64::MAX))
        };
        let columns = message_columns("?5");
        // One partition's range of the (partition, seq) index. Partition 0
        // also reads the rows outside 0..partitions (normally none), so that
        // they are dead-lettered instead of never read: its read says where
        // the first of those is, and only when one falls inside the batch
        // (or nothing else is left) are the three ranges merged, which costs
        // a sort (a read of a backlog about three times as long).
        let first_outside = "(SELECT min(seq) FROM (
                SELECT seq FROM outbox_messages WHERE partition < 0 AND seq > ?2
                UNION ALL SELECT seq FROM outbox_messages WHERE partition >= ?4 AND seq > ?2))";
        let rows = binds(format!(
            "SELECT {columns}, {outside} AS first_outside FROM outbox_messages m
             WHERE m.partition = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
            outside = if partition == 0 {
                first_outside
            } else {
                "NULL"
            },
        ))
        .fetch_all(&self.pool)
        .await?;
        let outside_in_batch = partition == 0
            && match rows.last() {
                None => true,
                Some(last) => {
                    let first: Option<i64> = last.try_get("first_outside")?;
                    let seq: i64 = last.try_get("seq")?;
                    first.is_some_and(|first| first < seq)
                }
            };
        let rows = if outside_in_batch {
            let branch = |condition: &str| {
                format!(
                    "SELECT * FROM (SELECT {columns} FROM outbox_messages m INDEXED BY outbox_messages_partition_seq
                     WHERE {condition} AND m.seq > ?2 ORDER BY m.seq LIMIT ?3)"
                )
            };
            binds(format!(
                "{} UNION ALL {} UNION ALL {} ORDER BY seq LIMIT ?3",
                branch("m.partition = ?1"),
                branch("m.partition < 0"),
                branch("m.partition >= ?4"),
            ))
            .fetch_all(&self.pool)
            .await?
        } else {
            rows
        };
        rows.iter()
            .map(|row| decode_entry(row, partitions, max_payload_bytes))
            .collect()
    }

    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(concat!(
            "UPDATE outbox_cursors SET position = max(position, ?), updated_at_ms = ",
            now!(),
            " WHERE target = ? AND partition = ? AND lease_owner = ?"
        ))
        .bind(ack.position.seq)
        .bind(&lease.target)
        .bind(i64::from(lease.partition))
        .bind(&lease.owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(super::lease_lost(lease));
        }
        for seq in &ack.resolved {
            sqlx::query("DELETE FROM outbox_deliveries WHERE target = ? AND seq = ?")
                .bind(&lease.target)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        for failure in &ack.failures {
            let (state, wait_ms) = disposition_columns(&failure.disposition);
            sqlx::query(concat!(
                "INSERT INTO outbox_deliveries
                    (target, seq, message_id, state, attempts, next_attempt_ms, last_error, history, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ",
                now!(),
                " + ?6, ?7, json_array(",
                history_entry!("?5", "?7"),
                "), ",
                now!(),
                ")
                 ON CONFLICT (target, seq) DO UPDATE SET
                    state = excluded.state, attempts = excluded.attempts,
                    next_attempt_ms = excluded.next_attempt_ms, last_error = excluded.last_error,
                    history = json_insert(outbox_deliveries.history, '$[#]', ",
                history_entry!("?5", "?7"),
                "),
                    updated_at_ms = excluded.updated_at_ms"
            ))
            .bind(&lease.target)
            .bind(failure.seq)
            .bind(&failure.message_id)
            .bind(state)
            .bind(i64::from(failure.attempts))
            .bind(wait_ms)
            .bind(&failure.error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_retries(
        &self,
        target: &str,
        owner: &str,
        limit: u32,
        claim_ttl: Duration,
    ) -> Result<Vec<DueRetry>> {
        // A record ahead of its partition's cursor is an ordered target's
        // held message, which the ordered path retries in place: only records
        // behind the cursor are claimed (every record of an unordered target,
        // and an ordered target's replayed dead letters and the retries left
        // from a time it was unordered).
        // Look before taking the write lock: the relay asks on every batch,
        // and nothing is due almost always. A read does not contend with
        // the application's writers; a `BEGIN IMMEDIATE` does.
        let due: bool = sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM outbox_deliveries d
                WHERE d.target = ?1 AND d.state = 'retry' AND d.next_attempt_ms <= ",
            now!(),
            " AND d.claim_expires_ms <= ",
            now!(),
            " AND NOT EXISTS (SELECT 1 FROM outbox_messages m JOIN outbox_cursors c
                    ON c.target = d.target AND c.partition = m.partition
                    WHERE m.seq = d.seq AND m.seq > c.position))"
        ))
        .bind(target)
        .fetch_one(&self.pool)
        .await?;
        if !due {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let claimed: Vec<i64> = sqlx::query_scalar(concat!(
            "UPDATE outbox_deliveries SET claim_owner = ?1, claim_expires_ms = ",
            now!(),
            " + ?2
             WHERE rowid IN (
                SELECT d.rowid FROM outbox_deliveries d
                WHERE d.target = ?3 AND d.state = 'retry' AND d.next_attempt_ms <= ",
            now!(),
            " AND d.claim_expires_ms <= ",
            now!(),
            "
                AND NOT EXISTS (SELECT 1 FROM outbox_messages m JOIN outbox_cursors c
                    ON c.target = d.target AND c.partition = m.partition
                    WHERE m.seq = d.seq AND m.seq > c.position)
                ORDER BY d.next_attempt_ms, d.seq LIMIT ?4)
             RETURNING seq"
        ))
        .bind(owner)
        .bind(duration_ms(claim_ttl))
        .bind(target)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let partitions = stored_partitions(&mut tx).await?;
        let sql = format!(
            "SELECT d.seq AS d_seq, CAST(d.message_id AS TEXT) AS d_id, d.attempts, {}
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.target = ? AND d.seq IN (SELECT value FROM json_each(?))
             ORDER BY d.seq",
            message_columns(ANY_PAYLOAD)
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(target)
            .bind(serde_json::to_string(&claimed).unwrap_or_else(|_| "[]".into()))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let attempts: i64 = row.try_get("attempts")?;
                let found: Option<i64> = row.try_get("seq")?;
                let entry = if found.is_some() {
                    decode_entry(row, partitions, usize::MAX)?
                } else {
                    Err(MalformedMessage::gone(
                        row.try_get("d_seq")?,
                        row.try_get("d_id")?,
                    ))
                };
                Ok(DueRetry {
                    entry,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn settle_retries(&self, target: &str, settlements: &[Settlement]) -> Result<()> {
        if settlements.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
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
                    sqlx::query(concat!(
                        "UPDATE outbox_deliveries SET
                            state = ?1, attempts = ?2, next_attempt_ms = ",
                        now!(),
                        " + ?3, last_error = ?4,
                            history = json_insert(history, '$[#]', ",
                        history_entry!("?2", "?4"),
                        "),
                            claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ",
                        now!(),
                        " WHERE target = ?5 AND seq = ?6"
                    ))
                    .bind(state)
                    .bind(i64::from(failure.attempts))
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
    }

    async fn status(&self, targets: &[String]) -> Result<Vec<TargetStatus>> {
        let mut conn = self.pool.acquire().await?;
        let partitions = stored_partitions(&mut conn).await?;
        let now: i64 = sqlx::query_scalar(concat!("SELECT ", now!()))
            .fetch_one(&mut *conn)
            .await?;
        let (live, _) = self.live_relays(&mut conn).await?;
        let mut out = Vec::with_capacity(targets.len());
        for target in targets {
            let cursors = sqlx::query(
                "SELECT partition, position, lease_owner, lease_expires_ms FROM outbox_cursors WHERE target = ?",
            )
            .bind(target)
            .fetch_all(&mut *conn)
            .await?;
            let mut lag = 0;
            let mut oldest: Option<i64> = None;
            let mut lease_owners = Vec::new();
            for partition in 0..partitions {
                let cursor = cursors
                    .iter()
                    .find(|r| r.try_get::<i64, _>("partition").ok() == Some(i64::from(partition)));
                let position = match cursor {
                    Some(r) => {
                        let owner: Option<String> = r.try_get("lease_owner")?;
                        let expires: i64 = r.try_get("lease_expires_ms")?;
                        if let Some(owner) = owner.filter(|_| expires >= now) {
                            lease_owners.push(format!("{owner} (p{partition})"));
                        }
                        r.try_get("position")?
                    }
                    None => 0_i64,
                };
                // Partition 0 reads the rows outside the partition count too.
                let row = sqlx::query(
                    "SELECT count(*) AS n, min(created_at_ms) AS oldest FROM outbox_messages
                     WHERE (partition = ?1 OR (?1 = 0 AND (partition < 0 OR partition >= ?3))) AND seq > ?2",
                )
                .bind(i64::from(partition))
                .bind(position)
                .bind(i64::from(partitions))
                .fetch_one(&mut *conn)
                .await?;
                lag += row.try_get::<i64, _>("n")?;
                if let Some(o) = row.try_get::<Option<i64>, _>("oldest")? {
                    oldest = Some(oldest.map_or(o, |cur| cur.min(o)));
                }
            }
            let counts = sqlx::query(
                "SELECT coalesce(sum(state = 'retry'), 0) AS retries, coalesce(sum(state = 'dead'), 0) AS dead,
                        EXISTS (SELECT 1 FROM outbox_targets WHERE name = ?1) AS registered
                 FROM outbox_deliveries WHERE target = ?1",
            )
            .bind(target)
            .fetch_one(&mut *conn)
            .await?;
            out.push(TargetStatus {
                target: target.clone(),
                lag,
                oldest_pending_age_ms: oldest.map(|o| (now - o).max(0)),
                retries_pending: counts.try_get("retries")?,
                dead_letters: counts.try_get("dead")?,
                lease_owners,
                registered: counts.try_get("registered")?,
                served_by: served_by(&live, target),
                waiting_on: None,
            });
        }
        Ok(out)
    }

    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let sql = format!(
            "SELECT d.target, d.seq, d.message_id, CAST(m.event_name AS TEXT) AS event_name, d.attempts,
                    d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE {DEAD_LETTERS_MATCHING}
               AND (?6 IS NULL OR d.updated_at_ms < ?6
                    OR (d.updated_at_ms = ?6 AND (d.target > ?7 OR (d.target = ?7 AND d.seq < ?8))))
             ORDER BY d.updated_at_ms DESC, d.target, d.seq DESC LIMIT ?9"
        );
        let older = filter.older_than.as_ref();
        let rows = bind_dead_letter_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), filter)
            .bind(older.map(|k| k.dead_at_ms))
            .bind(older.map(|k| k.target.as_str()))
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
        let row = bind_dead_letter_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), filter)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0))
    }

    async fn dead_letter(&self, target: &str, seq: i64) -> Result<Option<DeadLetterDetail>> {
        let partitions = self.partitions().await?;
        let sql = format!(
            "SELECT d.target, d.seq AS d_seq, d.message_id, d.attempts, d.last_error, d.updated_at_ms,
                    CAST(d.history AS TEXT) AS history, CAST(m.event_name AS TEXT) AS d_event_name,
                    {}
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
        if seqs.is_empty() {
            return Ok(0);
        }
        let updated = sqlx::query(concat!(
            "UPDATE outbox_deliveries SET state = 'retry', next_attempt_ms = ",
            now!(),
            ", claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ",
            now!(),
            " WHERE target = ?1 AND state = 'dead' AND seq IN (SELECT value FROM json_each(?2))"
        ))
        .bind(target)
        .bind(serde_json::to_string(seqs).unwrap_or_else(|_| "[]".into()))
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }

    async fn purge_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let deleted = sqlx::query(
            "DELETE FROM outbox_deliveries
             WHERE target = ?1 AND state = 'dead' AND seq IN (SELECT value FROM json_each(?2))",
        )
        .bind(target)
        .bind(serde_json::to_string(seqs).unwrap_or_else(|_| "[]".into()))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn prune(&self, targets: &[String], retention: Duration, limit: u32) -> Result<u64> {
        let partitions = self.partitions().await?;
        let targets_json = serde_json::to_string(targets).unwrap_or_else(|_| "[]".into());
        let mut tx = self.begin_write().await?;
        // Every registered target and every one named; none at all prunes
        // nothing. A row outside the partition count is partition 0's.
        let deleted = sqlx::query(concat!(
            "WITH t(name) AS (SELECT value FROM json_each(?2) UNION SELECT name FROM outbox_targets)
             DELETE FROM outbox_messages WHERE seq IN (
                SELECT m.seq FROM outbox_messages m
                WHERE m.created_at_ms < ",
            now!(),
            " - ?1
                  AND (SELECT count(*) FROM t) > 0
                  AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = m.seq)
                  AND (SELECT count(*) FROM outbox_cursors c JOIN t ON c.target = t.name
                       WHERE c.partition = CASE
                                WHEN typeof(m.partition) = 'integer' AND m.partition >= 0 AND m.partition < ?4
                                THEN m.partition ELSE 0 END
                         AND c.position >= m.seq
                      ) = (SELECT count(*) FROM t)
                ORDER BY m.seq
                LIMIT ?3)"
        ))
        .bind(duration_ms(retention))
        .bind(targets_json)
        .bind(i64::from(limit))
        .bind(i64::from(partitions))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }

    async fn heartbeat(
        &self,
        owner: &str,
        serving: &[ServedTarget],
        ttl: Duration,
    ) -> Result<Vec<LiveRelay>> {
        let ttl = duration_ms(ttl);
        let served = encode_served(serving);
        let mut tx = self.begin_write().await?;
        sqlx::query(concat!(
            "INSERT INTO outbox_relays (owner, heartbeat_ms, started_at_ms, expires_ms, targets)
             VALUES (?1, ",
            now!(),
            ", ",
            now!(),
            ", ",
            now!(),
            " + ?2, ?3)
             ON CONFLICT (owner) DO UPDATE SET
                heartbeat_ms = max(excluded.heartbeat_ms, outbox_relays.heartbeat_ms + 1),
                expires_ms = max(excluded.heartbeat_ms, outbox_relays.heartbeat_ms + 1) + ?2,
                targets = excluded.targets"
        ))
        .bind(owner)
        .bind(ttl)
        .bind(&served)
        .execute(&mut *tx)
        .await?;
        sqlx::query(concat!(
            "INSERT OR IGNORE INTO outbox_targets (name, registered_at_ms)
             SELECT json_extract(value, '$.name'), ",
            now!(),
            " FROM json_each(?1)"
        ))
        .bind(&served)
        .execute(&mut *tx)
        .await?;
        let (live, gone) = self.live_relays(&mut tx).await?;
        if !gone.is_empty() {
            sqlx::query(
                "DELETE FROM outbox_relays WHERE owner IN (SELECT value FROM json_each(?))",
            )
            .bind(serde_json::to_string(&gone).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // A read: after the commit, so the write lock is not held for it.
        self.watch_leases(&mut *self.pool.acquire().await?, owner, &served)
            .await?;
        Ok(live)
    }

    async fn registered_targets(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM outbox_targets ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn forget_target(&self, target: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        if let Err(e) = super::refuse_if_served(target, &self.live_relays(&mut tx).await?.0) {
            tx.rollback().await?;
            return Err(e);
        }
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
        let forgotten = super::forgotten(target, removed);
        match forgotten {
            Ok(_) => tx.commit().await?,
            Err(_) => tx.rollback().await?,
        }
        forgotten
    }

    async fn leave(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM outbox_relays WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn failure_state(&self, target: &str, seq: i64) -> Result<Option<FailureState>> {
        let row = sqlx::query(concat!(
            "SELECT attempts, next_attempt_ms - ",
            now!(),
            " AS due_in_ms, state FROM outbox_deliveries WHERE target = ? AND seq = ?"
        ))
        .bind(target)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(FailureState {
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                due_in: due_in(r.try_get("due_in_ms")?),
                dead: r.try_get::<String, _>("state")? == "dead",
            })
        })
        .transpose()
    }

    /// SQLite announces nothing, but `PRAGMA data_version` changes whenever
    /// another connection commits, and asking reads only the WAL index in
    /// shared memory: this asks every [`COMMIT_CHECK`] on a connection of its
    /// own, so a commit wakes the workers within that instead of the poll interval.
    async fn watch_commits(&self, on_commit: &tokio::sync::watch::Sender<u64>) {
        use sqlx::Connection;
        let options = self.pool.connect_options();
        let mut conn: Option<SqliteConnection> = None;
        let mut seen: Option<i64> = None;
        let mut failing = false;
        let mut ticks = tokio::time::interval(COMMIT_CHECK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let version = match conn.as_mut() {
                Some(c) => sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                    .fetch_one(c)
                    .await
                    .map_err(|e| e.to_string()),
                None => match SqliteConnection::connect_with(&options).await {
                    Ok(c) => {
                        conn = Some(c);
                        continue;
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            match version {
                Ok(version) => {
                    if failing {
                        failing = false;
                        tracing::info!("watching for commits again");
                    }
                    // The first answer on a connection is a baseline; a
                    // commit could have come in between, so wake then too.
                    if seen != Some(version) {
                        on_commit.send_modify(|n| *n += 1);
                    }
                    seen = Some(version);
                }
                Err(error) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(%error, "cannot watch for commits; polling until it can");
                    }
                    conn = None;
                    seen = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
