//! SQLite adapter of the storage port: a single file in WAL mode.
//!
//! Writes take the database lock up front (`BEGIN IMMEDIATE`) so two writers
//! never deadlock upgrading a read lock; SQLite serialises them, which is also
//! why rowid order is commit order here.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::{
    Ack, DeadLetter, DeadLetterDetail, DeadLetterFilter, DueRetry, FailureState, Lease, Result,
    Settlement, Storage, StorageError, TargetStatus, decode_history, disposition_columns,
    duration_ms, glob_to_sqlite_glob, history_entry, now_ms,
};
use crate::message::{LogEntry, MalformedMessage, Message, NewMessage, Position, decode_headers};

/// How often the relay asks SQLite whether another connection committed.
const COMMIT_CHECK: Duration = Duration::from_millis(20);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The columns every log read selects, in the order [`decode_entry`] expects.
/// Casts make rows written by other producers decodable, whatever their types.
const MESSAGE_COLUMNS: &str = "m.seq, CAST(m.id AS BLOB) AS id, CAST(m.event_name AS BLOB) AS event_name, \
     CAST(m.partition_key AS BLOB) AS partition_key, CAST(m.partition AS INTEGER) AS partition, \
     CAST(m.payload AS BLOB) AS payload, CAST(m.headers AS BLOB) AS headers, \
     CAST(m.created_at_ms AS INTEGER) AS created_at_ms";

#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
}

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
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Reads the partition count that the outbox was set up with (1 if never set).
pub(crate) async fn stored_partitions(conn: &mut SqliteConnection) -> Result<u32> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM outbox_settings WHERE key = 'partitions'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
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

fn decode_entry(row: &SqliteRow) -> Result<LogEntry> {
    let seq: i64 = row.try_get("seq")?;
    let raw_id = text(row, "id")?;
    let raw_event = text(row, "event_name")?;
    let id_text = raw_id.clone().ok().flatten().unwrap_or_default();
    let event_name = raw_event.clone().ok().flatten().unwrap_or_default();
    let malformed = |reason: String| {
        Ok(Err(MalformedMessage {
            seq,
            xid: 0,
            id: id_text.clone(),
            event_name: event_name.clone(),
            reason,
        }))
    };
    if let Err(reason) = raw_id.and(raw_event) {
        return malformed(reason);
    }
    let id = match Uuid::parse_str(&id_text) {
        Ok(id) => id,
        Err(e) => return malformed(format!("id {id_text:?} is not a UUID: {e}")),
    };
    if event_name.trim().is_empty() {
        return malformed("event name is empty".into());
    }
    let headers = match text(row, "headers")? {
        Ok(raw) => match decode_headers(raw.as_deref().unwrap_or("{}")) {
            Ok(h) => h,
            Err(reason) => return malformed(reason),
        },
        Err(reason) => return malformed(reason),
    };
    let partition_key = match text(row, "partition_key")? {
        Ok(k) => k,
        Err(reason) => return malformed(reason),
    };
    let partition: Option<i64> = row.try_get("partition")?;
    let payload: Option<Vec<u8>> = row.try_get("payload")?;
    Ok(Ok(Message {
        seq,
        xid: 0,
        id,
        event_name,
        partition_key,
        partition: partition.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        payload: payload.unwrap_or_default(),
        headers,
        created_at_ms: row.try_get::<Option<i64>, _>("created_at_ms")?.unwrap_or(0),
    }))
}

/// A row of a dead-letter listing.
fn dead_letter_row(r: &SqliteRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        target: r.try_get("target")?,
        seq: r.try_get("seq")?,
        message_id: r.try_get("message_id")?,
        event_name: r.try_get("event_name")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        last_error: r.try_get("last_error")?,
        dead_at_ms: r.try_get("updated_at_ms")?,
    })
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
        if stored != configured {
            return Err(StorageError::PartitionMismatch { stored, configured });
        }
        Ok(stored)
    }

    async fn save(&self, messages: &[NewMessage]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for message in messages {
            crate::producer::sqlite::enqueue(&mut tx, message).await?;
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
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO outbox_cursors (target, partition, position, lease_owner, lease_expires_ms, updated_at_ms)
             VALUES (?1, ?2, 0, ?3, ?4, ?5)
             ON CONFLICT (target, partition) DO UPDATE
                SET lease_owner = excluded.lease_owner,
                    lease_expires_ms = excluded.lease_expires_ms
              WHERE outbox_cursors.lease_owner IS NULL
                 OR outbox_cursors.lease_owner = excluded.lease_owner
                 OR outbox_cursors.lease_expires_ms < ?5
             RETURNING position",
        )
        .bind(target)
        .bind(i64::from(partition))
        .bind(owner)
        .bind(now.saturating_add(duration_ms(ttl)))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
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
    ) -> Result<Vec<LogEntry>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox_messages m
             WHERE m.partition = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(partition))
            .bind(after.seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_entry).collect()
    }

    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE outbox_cursors SET position = max(position, ?), updated_at_ms = ?
             WHERE target = ? AND partition = ? AND lease_owner = ?",
        )
        .bind(ack.position.seq)
        .bind(now)
        .bind(&lease.target)
        .bind(i64::from(lease.partition))
        .bind(&lease.owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StorageError::LeaseLost {
                target: lease.target.clone(),
                partition: lease.partition,
                owner: lease.owner.clone(),
            });
        }
        for seq in &ack.resolved {
            sqlx::query("DELETE FROM outbox_deliveries WHERE target = ? AND seq = ?")
                .bind(&lease.target)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        for failure in &ack.failures {
            let (state, next) = disposition_columns(&failure.disposition);
            sqlx::query(
                "INSERT INTO outbox_deliveries
                    (target, seq, message_id, state, attempts, next_attempt_ms, last_error, history, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, json_array(json(?8)), ?9)
                 ON CONFLICT (target, seq) DO UPDATE SET
                    state = excluded.state, attempts = excluded.attempts,
                    next_attempt_ms = excluded.next_attempt_ms, last_error = excluded.last_error,
                    history = json_insert(outbox_deliveries.history, '$[#]', json(?8)),
                    updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&lease.target)
            .bind(failure.seq)
            .bind(&failure.message_id)
            .bind(state)
            .bind(i64::from(failure.attempts))
            .bind(next)
            .bind(&failure.error)
            .bind(history_entry(failure, now))
            .bind(now)
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
        let now = now_ms();
        let claim_expires = now.saturating_add(duration_ms(claim_ttl));
        // A record ahead of its partition's cursor is an ordered target's
        // held message, which the ordered path retries in place: only records
        // behind the cursor are claimed (every record of an unordered target,
        // and an ordered target's replayed dead letters and the retries left
        // from a time it was unordered).
        // Look before taking the write lock: the relay asks on every batch,
        // and nothing is due almost always. A read does not contend with
        // the application's writers; a `BEGIN IMMEDIATE` does.
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox_deliveries d
                WHERE d.target = ?1 AND d.state = 'retry' AND d.next_attempt_ms <= ?2 AND d.claim_expires_ms <= ?2
                AND NOT EXISTS (SELECT 1 FROM outbox_messages m JOIN outbox_cursors c
                    ON c.target = d.target AND c.partition = m.partition
                    WHERE m.seq = d.seq AND m.seq > c.position))",
        )
        .bind(target)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        if !due {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let claimed: Vec<i64> = sqlx::query_scalar(
            "UPDATE outbox_deliveries SET claim_owner = ?1, claim_expires_ms = ?2
             WHERE rowid IN (
                SELECT d.rowid FROM outbox_deliveries d
                WHERE d.target = ?3 AND d.state = 'retry' AND d.next_attempt_ms <= ?4 AND d.claim_expires_ms <= ?4
                AND NOT EXISTS (SELECT 1 FROM outbox_messages m JOIN outbox_cursors c
                    ON c.target = d.target AND c.partition = m.partition
                    WHERE m.seq = d.seq AND m.seq > c.position)
                ORDER BY d.next_attempt_ms, d.seq LIMIT ?5)
             RETURNING seq",
        )
        .bind(owner)
        .bind(claim_expires)
        .bind(target)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT d.seq AS d_seq, CAST(d.message_id AS TEXT) AS d_id, d.attempts, {MESSAGE_COLUMNS}
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.target = ? AND d.seq IN (SELECT value FROM json_each(?))
             ORDER BY d.seq"
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
                    decode_entry(row)?
                } else {
                    Err(MalformedMessage {
                        seq: row.try_get("d_seq")?,
                        xid: 0,
                        id: row.try_get("d_id")?,
                        event_name: String::new(),
                        reason: "the message is no longer in the log".into(),
                    })
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
        let now = now_ms();
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
                    let (state, next) = disposition_columns(&failure.disposition);
                    sqlx::query(
                        "UPDATE outbox_deliveries SET
                            state = ?1, attempts = ?2, next_attempt_ms = ?3, last_error = ?4,
                            history = json_insert(history, '$[#]', json(?5)),
                            claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ?6
                         WHERE target = ?7 AND seq = ?8",
                    )
                    .bind(state)
                    .bind(i64::from(failure.attempts))
                    .bind(next)
                    .bind(&failure.error)
                    .bind(history_entry(failure, now))
                    .bind(now)
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
        let now = now_ms();
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
                let row = sqlx::query(
                    "SELECT count(*) AS n, min(created_at_ms) AS oldest FROM outbox_messages
                     WHERE partition = ? AND seq > ?",
                )
                .bind(i64::from(partition))
                .bind(position)
                .fetch_one(&mut *conn)
                .await?;
                lag += row.try_get::<i64, _>("n")?;
                if let Some(o) = row.try_get::<Option<i64>, _>("oldest")? {
                    oldest = Some(oldest.map_or(o, |cur| cur.min(o)));
                }
            }
            let counts = sqlx::query(
                "SELECT coalesce(sum(state = 'retry'), 0) AS retries, coalesce(sum(state = 'dead'), 0) AS dead
                 FROM outbox_deliveries WHERE target = ?",
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
            });
        }
        Ok(out)
    }

    async fn dead_letters(&self, target: Option<&str>, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT d.target, d.seq, d.message_id, CAST(m.event_name AS TEXT) AS event_name, d.attempts,
                    d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.state = 'dead' AND (?1 IS NULL OR d.target = ?1)
             ORDER BY d.updated_at_ms DESC, d.seq DESC LIMIT ?2",
        )
        .bind(target)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    target: r.try_get("target")?,
                    seq: r.try_get("seq")?,
                    message_id: r.try_get("message_id")?,
                    event_name: r.try_get("event_name")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    last_error: r.try_get("last_error")?,
                    dead_at_ms: r.try_get("updated_at_ms")?,
                })
            })
            .collect()
    }

    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT d.target, d.seq, d.message_id, CAST(m.event_name AS TEXT) AS event_name, d.attempts,
                    d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.state = 'dead' AND (?1 IS NULL OR d.target = ?1)
               AND (?2 IS NULL OR CAST(m.event_name AS TEXT) GLOB ?2)
               AND (?3 IS NULL OR d.updated_at_ms >= ?3)
               AND (?4 IS NULL OR d.updated_at_ms < ?4)
             ORDER BY d.updated_at_ms DESC, d.target, d.seq DESC LIMIT ?5",
        )
        .bind(filter.target.as_deref())
        .bind(filter.event_pattern.as_deref().map(glob_to_sqlite_glob))
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter_row).collect()
    }

    async fn dead_letter(&self, target: &str, seq: i64) -> Result<Option<DeadLetterDetail>> {
        let sql = format!(
            "SELECT d.target, d.seq AS d_seq, d.message_id, d.attempts, d.last_error, d.updated_at_ms,
                    CAST(d.history AS TEXT) AS history, CAST(m.event_name AS TEXT) AS d_event_name,
                    {MESSAGE_COLUMNS}
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.target = ? AND d.seq = ? AND d.state = 'dead'"
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
            Some(_) => Some(decode_entry(&row)?),
            None => None,
        };
        let history: Option<String> = row.try_get("history")?;
        Ok(Some(DeadLetterDetail {
            letter: DeadLetter {
                target: row.try_get("target")?,
                seq: row.try_get("d_seq")?,
                message_id: row.try_get("message_id")?,
                event_name: row.try_get("d_event_name")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                last_error: row.try_get("last_error")?,
                dead_at_ms: row.try_get("updated_at_ms")?,
            },
            message,
            history: decode_history(history.as_deref().unwrap_or("[]")),
        }))
    }

    async fn replay_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE outbox_deliveries SET state = 'retry', next_attempt_ms = ?1,
                    claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ?1
             WHERE target = ?2 AND state = 'dead' AND seq IN (SELECT value FROM json_each(?3))",
        )
        .bind(now)
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

    async fn prune(&self, targets: &[String], before_ms: i64, limit: u32) -> Result<u64> {
        if targets.is_empty() {
            return Ok(0);
        }
        let targets_json = serde_json::to_string(targets).unwrap_or_else(|_| "[]".into());
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM outbox_messages WHERE seq IN (
                SELECT m.seq FROM outbox_messages m
                WHERE m.created_at_ms < ?1
                  AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = m.seq)
                  AND (SELECT count(*) FROM outbox_cursors c
                       WHERE c.target IN (SELECT value FROM json_each(?2))
                         AND c.partition = m.partition AND c.position >= m.seq
                      ) = json_array_length(?2)
                ORDER BY m.seq
                LIMIT ?3)",
        )
        .bind(before_ms)
        .bind(targets_json)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }

    async fn heartbeat(&self, owner: &str, ttl: Duration) -> Result<Vec<String>> {
        let now = now_ms();
        let ttl = duration_ms(ttl);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO outbox_relays (owner, heartbeat_ms, started_at_ms) VALUES (?1, ?2, ?2)
             ON CONFLICT (owner) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
        )
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox_relays WHERE heartbeat_ms < ?")
            .bind(now.saturating_sub(ttl.saturating_mul(10)))
            .execute(&mut *tx)
            .await?;
        let live = sqlx::query_scalar(
            "SELECT owner FROM outbox_relays WHERE heartbeat_ms >= ? ORDER BY owner",
        )
        .bind(now.saturating_sub(ttl))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(live)
    }

    async fn leave(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM outbox_relays WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn failure_state(&self, target: &str, seq: i64) -> Result<Option<FailureState>> {
        let row = sqlx::query(
            "SELECT attempts, next_attempt_ms, state FROM outbox_deliveries WHERE target = ? AND seq = ?",
        )
        .bind(target)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(FailureState {
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                next_attempt_ms: r.try_get("next_attempt_ms")?,
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
