//! PostgreSQL adapter of the storage port.
//!
//! The log is read in `(xact_id, seq)` order and only below the oldest
//! transaction still running (`pg_snapshot_xmin`), so a transaction that
//! commits late is never skipped. Retries are claimed with `SKIP LOCKED`, and
//! an insert trigger `NOTIFY`s the relays once per transaction.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};

use super::{
    Ack, DeadLetter, DeadLetterDetail, DeadLetterFilter, DueRetry, FailureState, Lease, Result,
    Settlement, Storage, StorageError, TargetStatus, decode_history, disposition_columns,
    duration_ms, glob_to_like, history_entry, now_ms,
};
use crate::message::{LogEntry, MalformedMessage, Message, NewMessage, Position, decode_headers};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel the insert trigger notifies.
pub const CHANNEL: &str = "outbox_relay";

const MESSAGE_COLUMNS: &str = "m.seq, m.xact_id::text::bigint AS xid, m.id::text AS id, m.event_name, \
     m.partition_key, m.partition, m.payload, m.headers::text AS headers, m.created_at_ms";

#[derive(Debug, Clone)]
pub struct PgStorage {
    pool: PgPool,
}

impl PgStorage {
    /// Connects to `url` (`postgres://user:password@host/db`). Connections carry
    /// `application_name = outbox-relay`, so operators can find them.
    pub async fn connect(url: &str) -> Result<Self> {
        let shown = crate::storage::redact_url(url);
        let connect_error = |cause| StorageError::Connect {
            url: shown.clone(),
            cause,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(connect_error)?
            .application_name("outbox-relay");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn decode_entry(row: &PgRow) -> Result<LogEntry> {
    let seq: i64 = row.try_get("seq")?;
    let xid: i64 = row.try_get("xid")?;
    let id_text: String = row.try_get("id")?;
    let event_name: String = row.try_get("event_name")?;
    let malformed = |reason: String| {
        Ok(Err(MalformedMessage {
            seq,
            xid,
            id: id_text.clone(),
            event_name: event_name.clone(),
            reason,
        }))
    };
    let id = match uuid::Uuid::parse_str(&id_text) {
        Ok(id) => id,
        Err(e) => return malformed(format!("id {id_text:?} is not a UUID: {e}")),
    };
    if event_name.trim().is_empty() {
        return malformed("event name is empty".into());
    }
    let headers_raw: String = row.try_get("headers")?;
    let headers = match decode_headers(&headers_raw) {
        Ok(h) => h,
        Err(reason) => return malformed(reason),
    };
    let partition: i32 = row.try_get("partition")?;
    Ok(Ok(Message {
        seq,
        xid,
        id,
        event_name,
        partition_key: row.try_get("partition_key")?,
        partition: u32::try_from(partition).unwrap_or(0),
        payload: row.try_get("payload")?,
        headers,
        created_at_ms: row.try_get("created_at_ms")?,
    }))
}

pub(crate) async fn stored_partitions(conn: &mut PgConnection) -> Result<u32> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM outbox_settings WHERE key = 'partitions'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A row of a dead-letter listing.
fn dead_letter_row(r: &PgRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        target: r.try_get("target")?,
        seq: r.try_get("seq")?,
        message_id: r.try_get("message_id")?,
        event_name: r.try_get("event_name")?,
        attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
        last_error: r.try_get("last_error")?,
        dead_at_ms: r.try_get("updated_at_ms")?,
    })
}

#[async_trait]
impl Storage for PgStorage {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ensure_partitions(&self, configured: u32) -> Result<u32> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO outbox_settings (key, value) VALUES ('partitions', $1) ON CONFLICT DO NOTHING",
        )
        .bind(configured.to_string())
        .execute(&mut *conn)
        .await?;
        // Positions are transaction ids of this cluster: after a dump and
        // restore (or a move by logical replication) they would be ahead of
        // every new transaction, and new messages would be skipped.
        let ahead: bool = sqlx::query_scalar(
            "SELECT coalesce(max(position_xid), 0) > pg_current_xact_id()::text::bigint FROM outbox_cursors",
        )
        .fetch_one(&mut *conn)
        .await?;
        if ahead {
            return Err(StorageError::CursorsAhead);
        }
        let stored = stored_partitions(&mut conn).await?;
        if stored != configured {
            return Err(StorageError::PartitionMismatch { stored, configured });
        }
        Ok(stored)
    }

    async fn save(&self, messages: &[NewMessage]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for message in messages {
            crate::producer::postgres::enqueue(&mut tx, message).await?;
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
            "INSERT INTO outbox_cursors (target, partition, lease_owner, lease_expires_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (target, partition) DO UPDATE
                SET lease_owner = EXCLUDED.lease_owner, lease_expires_ms = EXCLUDED.lease_expires_ms
              WHERE outbox_cursors.lease_owner IS NULL
                 OR outbox_cursors.lease_owner = EXCLUDED.lease_owner
                 OR outbox_cursors.lease_expires_ms < $5
             RETURNING position_xid, position_seq",
        )
        .bind(target)
        .bind(i32_of(partition))
        .bind(owner)
        .bind(now.saturating_add(duration_ms(ttl)))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Lease {
                target: target.to_string(),
                partition,
                owner: owner.to_string(),
                position: Position {
                    xid: row.try_get("position_xid")?,
                    seq: row.try_get("position_seq")?,
                },
            })
        })
        .transpose()
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        sqlx::query(
            "UPDATE outbox_cursors SET lease_owner = NULL, lease_expires_ms = 0
             WHERE target = $1 AND partition = $2 AND lease_owner = $3",
        )
        .bind(&lease.target)
        .bind(i32_of(lease.partition))
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
             WHERE m.partition = $1
               AND (m.xact_id, m.seq) > ($2::text::xid8, $3)
               AND m.xact_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY m.xact_id, m.seq
             LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i32_of(partition))
            .bind(after.xid.to_string())
            .bind(after.seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_entry).collect()
    }

    async fn has_unsettled(&self, partition: u32, after: Position) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (
                SELECT 1 FROM outbox_messages
                WHERE partition = $1 AND (xact_id, seq) > ($2::text::xid8, $3)
                  AND xact_id >= pg_snapshot_xmin(pg_current_snapshot()))",
        )
        .bind(i32_of(partition))
        .bind(after.xid.to_string())
        .bind(after.seq)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()> {
        let now = now_ms();
        // A batch with nothing to record is one statement, so no BEGIN and
        // COMMIT round trips: the cursor update is atomic on its own.
        let plain = ack.resolved.is_empty() && ack.failures.is_empty();
        let mut tx = if plain {
            None
        } else {
            Some(self.pool.begin().await?)
        };
        let cursor = sqlx::query(
            "UPDATE outbox_cursors SET
                position_xid = CASE WHEN (position_xid, position_seq) < ($1, $2) THEN $1 ELSE position_xid END,
                position_seq = CASE WHEN (position_xid, position_seq) < ($1, $2) THEN $2 ELSE position_seq END,
                updated_at_ms = $3
             WHERE target = $4 AND partition = $5 AND lease_owner = $6",
        )
        .bind(ack.position.xid)
        .bind(ack.position.seq)
        .bind(now)
        .bind(&lease.target)
        .bind(i32_of(lease.partition))
        .bind(&lease.owner);
        let updated = match tx.as_mut() {
            Some(tx) => cursor.execute(&mut **tx).await?,
            None => cursor.execute(&self.pool).await?,
        };
        if updated.rows_affected() == 0 {
            return Err(StorageError::LeaseLost {
                target: lease.target.clone(),
                partition: lease.partition,
                owner: lease.owner.clone(),
            });
        }
        let Some(mut tx) = tx else {
            return Ok(());
        };
        if !ack.resolved.is_empty() {
            sqlx::query("DELETE FROM outbox_deliveries WHERE target = $1 AND seq = ANY($2)")
                .bind(&lease.target)
                .bind(&ack.resolved)
                .execute(&mut *tx)
                .await?;
        }
        for failure in &ack.failures {
            let (state, next) = disposition_columns(&failure.disposition);
            sqlx::query(
                "INSERT INTO outbox_deliveries
                    (target, seq, message_id, state, attempts, next_attempt_ms, last_error, history, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, jsonb_build_array($8::jsonb), $9)
                 ON CONFLICT (target, seq) DO UPDATE SET
                    state = EXCLUDED.state, attempts = EXCLUDED.attempts,
                    next_attempt_ms = EXCLUDED.next_attempt_ms, last_error = EXCLUDED.last_error,
                    history = outbox_deliveries.history || jsonb_build_array($8::jsonb),
                    updated_at_ms = EXCLUDED.updated_at_ms",
            )
            .bind(&lease.target)
            .bind(failure.seq)
            .bind(&failure.message_id)
            .bind(state)
            .bind(i32::try_from(failure.attempts).unwrap_or(i32::MAX))
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
        // A record ahead of its partition's cursor is an ordered target's
        // held message, retried in place by the ordered path: only records
        // behind the cursor are claimed.
        let sql = format!(
            "WITH due AS (
                SELECT d.target, d.seq FROM outbox_deliveries d
                WHERE d.target = $1 AND d.state = 'retry' AND d.next_attempt_ms <= $2 AND d.claim_expires_ms <= $2
                AND NOT EXISTS (SELECT 1 FROM outbox_messages m JOIN outbox_cursors c
                    ON c.target = d.target AND c.partition = m.partition
                    WHERE m.seq = d.seq
                    AND (m.xact_id::text::bigint, m.seq) > (c.position_xid, c.position_seq))
                ORDER BY d.next_attempt_ms, d.seq
                LIMIT $3
                FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE outbox_deliveries d SET claim_owner = $4, claim_expires_ms = $5
                FROM due WHERE d.target = due.target AND d.seq = due.seq
                RETURNING d.seq, d.message_id, d.attempts
             )
             SELECT c.seq AS d_seq, c.message_id AS d_id, c.attempts, {MESSAGE_COLUMNS}
             FROM claimed c LEFT JOIN outbox_messages m ON m.seq = c.seq
             ORDER BY c.seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(target)
            .bind(now)
            .bind(i64::from(limit))
            .bind(owner)
            .bind(now.saturating_add(duration_ms(claim_ttl)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get("attempts")?;
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
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn settle_retries(&self, target: &str, settlements: &[Settlement]) -> Result<()> {
        if settlements.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for settlement in settlements {
            match settlement {
                Settlement::Delivered { seq } => {
                    sqlx::query("DELETE FROM outbox_deliveries WHERE target = $1 AND seq = $2")
                        .bind(target)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                Settlement::Failed(failure) => {
                    let (state, next) = disposition_columns(&failure.disposition);
                    sqlx::query(
                        "UPDATE outbox_deliveries SET
                            state = $1, attempts = $2, next_attempt_ms = $3, last_error = $4,
                            history = history || jsonb_build_array($5::jsonb),
                            claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = $6
                         WHERE target = $7 AND seq = $8",
                    )
                    .bind(state)
                    .bind(i32::try_from(failure.attempts).unwrap_or(i32::MAX))
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
            let row = sqlx::query(
                "WITH parts AS (SELECT generate_series(0, $2 - 1) AS partition),
                      cur AS (
                        SELECT p.partition, coalesce(c.position_xid, 0) AS xid, coalesce(c.position_seq, 0) AS seq
                        FROM parts p LEFT JOIN outbox_cursors c ON c.target = $1 AND c.partition = p.partition)
                 SELECT count(m.seq) AS lag, min(m.created_at_ms) AS oldest
                 FROM cur JOIN outbox_messages m
                   ON m.partition = cur.partition AND (m.xact_id, m.seq) > (cur.xid::text::xid8, cur.seq)",
            )
            .bind(target)
            .bind(i32_of(partitions))
            .fetch_one(&mut *conn)
            .await?;
            let lag: i64 = row.try_get("lag")?;
            let oldest: Option<i64> = row.try_get("oldest")?;
            let owners: Vec<(i32, String)> = sqlx::query_as(
                "SELECT partition, lease_owner FROM outbox_cursors
                 WHERE target = $1 AND lease_owner IS NOT NULL AND lease_expires_ms >= $2
                 ORDER BY partition",
            )
            .bind(target)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            let counts = sqlx::query(
                "SELECT count(*) FILTER (WHERE state = 'retry') AS retries,
                        count(*) FILTER (WHERE state = 'dead') AS dead
                 FROM outbox_deliveries WHERE target = $1",
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
                lease_owners: owners
                    .into_iter()
                    .map(|(p, owner)| format!("{owner} (p{p})"))
                    .collect(),
            });
        }
        Ok(out)
    }

    async fn dead_letters(&self, target: Option<&str>, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT d.target, d.seq, d.message_id, m.event_name, d.attempts, d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.state = 'dead' AND ($1::text IS NULL OR d.target = $1)
             ORDER BY d.updated_at_ms DESC, d.seq DESC LIMIT $2",
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
                    attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    last_error: r.try_get("last_error")?,
                    dead_at_ms: r.try_get("updated_at_ms")?,
                })
            })
            .collect()
    }

    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            r"SELECT d.target, d.seq, d.message_id, m.event_name, d.attempts, d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.state = 'dead' AND ($1::text IS NULL OR d.target = $1)
               AND ($2::text IS NULL OR m.event_name LIKE $2 ESCAPE '\')
               AND ($3::bigint IS NULL OR d.updated_at_ms >= $3)
               AND ($4::bigint IS NULL OR d.updated_at_ms < $4)
             ORDER BY d.updated_at_ms DESC, d.target, d.seq DESC LIMIT $5",
        )
        .bind(filter.target.as_deref())
        .bind(filter.event_pattern.as_deref().map(glob_to_like))
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
                    d.history::text AS history, m.event_name AS d_event_name, {MESSAGE_COLUMNS}
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.target = $1 AND d.seq = $2 AND d.state = 'dead'"
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
        let history: String = row.try_get("history")?;
        Ok(Some(DeadLetterDetail {
            letter: DeadLetter {
                target: row.try_get("target")?,
                seq: row.try_get("d_seq")?,
                message_id: row.try_get("message_id")?,
                event_name: row.try_get("d_event_name")?,
                attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                last_error: row.try_get("last_error")?,
                dead_at_ms: row.try_get("updated_at_ms")?,
            },
            message,
            history: decode_history(&history),
        }))
    }

    async fn replay_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE outbox_deliveries SET state = 'retry', next_attempt_ms = $1,
                    claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = $1
             WHERE target = $2 AND state = 'dead' AND seq = ANY($3)",
        )
        .bind(now)
        .bind(target)
        .bind(seqs)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }

    async fn purge_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let deleted = sqlx::query(
            "DELETE FROM outbox_deliveries WHERE target = $1 AND state = 'dead' AND seq = ANY($2)",
        )
        .bind(target)
        .bind(seqs)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn prune(&self, targets: &[String], before_ms: i64, limit: u32) -> Result<u64> {
        if targets.is_empty() {
            return Ok(0);
        }
        let deleted = sqlx::query(
            "DELETE FROM outbox_messages WHERE seq IN (
                SELECT m.seq FROM outbox_messages m
                WHERE m.created_at_ms < $1
                  AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = m.seq)
                  AND (SELECT count(*) FROM outbox_cursors c
                       WHERE c.target = ANY($2) AND c.partition = m.partition
                         AND (c.position_xid, c.position_seq) >= (m.xact_id::text::bigint, m.seq)
                      ) = cardinality($2)
                ORDER BY m.seq
                LIMIT $3)",
        )
        .bind(before_ms)
        .bind(targets)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn heartbeat(&self, owner: &str, ttl: Duration) -> Result<Vec<String>> {
        let now = now_ms();
        let ttl = duration_ms(ttl);
        sqlx::query(
            "INSERT INTO outbox_relays (owner, heartbeat_ms, started_at_ms) VALUES ($1, $2, $2)
             ON CONFLICT (owner) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms",
        )
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM outbox_relays WHERE heartbeat_ms < $1")
            .bind(now.saturating_sub(ttl.saturating_mul(10)))
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar(
            "SELECT owner FROM outbox_relays WHERE heartbeat_ms >= $1 ORDER BY owner",
        )
        .bind(now.saturating_sub(ttl))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn leave(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM outbox_relays WHERE owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn failure_state(&self, target: &str, seq: i64) -> Result<Option<FailureState>> {
        let row = sqlx::query(
            "SELECT attempts, next_attempt_ms, state FROM outbox_deliveries WHERE target = $1 AND seq = $2",
        )
        .bind(target)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(FailureState {
                attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
                next_attempt_ms: r.try_get("next_attempt_ms")?,
                dead: r.try_get::<String, _>("state")? == "dead",
            })
        })
        .transpose()
    }

    async fn watch_commits(&self, on_commit: &tokio::sync::watch::Sender<u64>) {
        let mut failures = 0u32;
        loop {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener.listen(CHANNEL).await {
                    Ok(()) => {
                        failures = 0;
                        tracing::debug!("listening for commits");
                        // Catch up on anything committed while we were not listening.
                        on_commit.send_modify(|n| *n += 1);
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => on_commit.send_modify(|n| *n += 1),
                                // The connection dropped; the next call reconnects.
                                Ok(None) => {
                                    tracing::warn!(
                                        "LISTEN connection lost; polling until it is back"
                                    );
                                    on_commit.send_modify(|n| *n += 1);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "LISTEN failed; polling until it is back");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN; polling instead"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the LISTEN connection; polling instead")
                }
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(200u64 << failures.min(7))).await;
        }
    }
}
