//! PostgreSQL adapter of the storage port.
//!
//! # The horizon
//!
//! The log is read in `(xact_id, seq)` order and only below a *horizon*, so
//! a transaction that commits late is never skipped: every row below it is
//! committed (or rolled back) and visible to the read.
//!
//! The horizon is the oldest transaction id that was still running when the
//! read's snapshot was taken (`pg_snapshot_xip(pg_current_snapshot())`),
//! leaving out the transactions known to belong to *other* databases of the
//! server (`pg_stat_activity.backend_xid` where `datname` is another
//! database, and `pg_prepared_xacts` of other databases); with none left it
//! is the snapshot's `xmax`. A transaction in another database cannot write
//! this outbox, so it no longer holds delivery back. The rule stays safe in
//! every race: a running transaction of this database is never left out
//! (only transactions seen in another database are), and one that ends
//! between the snapshot and the look at `pg_stat_activity` is simply waited
//! for once more. The relay's reads use a look at the other databases up to
//! [`OTHER_DATABASES_FRESH`] old (a transaction begun there since is waited
//! for until the next look), so `pg_stat_activity` is not read per batch.
//!
//! Seeing other users' `backend_xid` needs `pg_read_all_stats` (or
//! superuser): without it those columns are hidden. A relay whose role has
//! neither falls back, with a warning at start, to the cluster-wide rule,
//! `pg_snapshot_xmin(pg_current_snapshot())`, under which an open writing
//! transaction in any database of the server holds every message back.
//! When delivery waits, `status` names the transaction's backend
//! ([`OpenTransaction`]).
//!
//! Retries are claimed with `SKIP LOCKED`, an insert trigger `NOTIFY`s the
//! relays once per transaction, and every time is the database's clock
//! ([`now!`]). The conformance suite is `tests/it/conformance.rs`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};

use super::{
    Ack, DeadLetter, DeadLetterDetail, DeadLetterFilter, DueRetry, FailureState, Lease, LiveRelay,
    OpenTransaction, Result, ServedTarget, Settlement, Storage, StorageError, TargetStatus,
    dead_letter_row, disposition_columns, due_in, duration_ms, encode_served, glob_to_like,
    served_by,
};
use crate::message::{LogEntry, MalformedMessage, NewMessage, Position, RawRow, decode_row};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel the insert trigger notifies.
pub const CHANNEL: &str = "outbox_relay";

/// The database's clock in ms since the Unix epoch, as SQL.
macro_rules! now {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

/// The transactions seen running in *other* databases of the server: a
/// backend's `backend_xid` (its `datname` another database) and prepared
/// transactions of other databases, as 32-bit ids.
const OTHER_DATABASES_XIDS: &str = "SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
        WHERE a.backend_xid IS NOT NULL AND a.datname IS NOT NULL AND a.datname <> current_database()
        UNION ALL
        SELECT p.transaction::text::bigint FROM pg_prepared_xacts p
        WHERE p.database <> current_database()";

/// The horizon of this database's transactions (see the module docs): the
/// oldest running transaction of the snapshot whose 32-bit id is not in
/// `others` (an SQL `bigint[]`), or the snapshot's `xmax`.
fn database_horizon(others: &str) -> String {
    format!(
        "coalesce((SELECT x.xid
     FROM pg_snapshot_xip(pg_current_snapshot()) AS x(xid)
     WHERE (x.xid::text::bigint % 4294967296) <> ALL({others})
     ORDER BY x.xid LIMIT 1), pg_snapshot_xmax(pg_current_snapshot()))"
    )
}

/// The cluster-wide horizon, for a role that cannot see other users' transactions.
const CLUSTER_HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())";

/// How long a look at the other databases' transactions is used by the
/// relay's reads of the log before it is taken again.
///
/// Reading `pg_stat_activity` on every read of the log cost about 15 % of a
/// backlog's drain rate. A stale look is safe: a transaction id belongs to
/// one database for good, so an id seen in another database can be left out
/// of the horizon for as long as the id is not reused (2^32 transactions
/// later); a transaction begun there since the look is merely waited for,
/// for at most this long.
const OTHER_DATABASES_FRESH: Duration = Duration::from_millis(100);

/// A look at the other databases' transactions: when, and their ids.
type OtherDatabasesLook = Option<(Instant, Arc<Vec<i64>>)>;

/// Which horizon this role can compute.
#[derive(Debug, Clone)]
enum Horizon {
    /// This database's, with the last look at the other databases'
    /// transactions (time taken, their ids).
    Database(Arc<Mutex<OtherDatabasesLook>>),
    /// The cluster-wide one ([`CLUSTER_HORIZON`]).
    Cluster,
}

/// The log columns, for [`decode_entry`]; a payload over `max_payload` (a
/// SQL expression) is measured, not read (`octet_length` of a TOASTed value
/// reads only its header).
fn message_columns(max_payload: &str) -> String {
    format!(
        "m.seq, m.xact_id::text::bigint AS xid, m.id::text AS id, m.event_name, \
         m.partition_key, m.partition::text AS partition, octet_length(m.payload)::bigint AS payload_len, \
         CASE WHEN octet_length(m.payload) > {max_payload} THEN NULL ELSE m.payload END AS payload, \
         m.headers::text AS headers, m.created_at_ms"
    )
}

/// No limit on the payload: for reads that are not deliveries of the log.
const ANY_PAYLOAD: &str = "9223372036854775807";

#[derive(Debug, Clone)]
pub struct PgStorage {
    pool: PgPool,
    /// This database's horizon, or the cluster's without the privilege.
    horizon: Horizon,
    /// The stored partition count once known (0: not read yet).
    partitions: Arc<AtomicU32>,
}

impl PgStorage {
    /// Connects to `url` (`postgres://user:password@host/db`). Connections carry
    /// `application_name = outbox-relay`, so operators can find them. One
    /// connection is tried first, once: a refused or unreachable server is
    /// reported at once, naming it, instead of after the pool's time-out.
    pub async fn connect(url: &str) -> Result<Self> {
        let shown = crate::storage::redact_url(url);
        let connect_error = |cause| StorageError::Connect {
            url: shown.clone(),
            cause,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(connect_error)?
            .application_name("outbox-relay");
        let mut first =
            super::first_connection(&shown, PgConnection::connect_with(&options)).await?;
        let privileged: bool = sqlx::query_scalar(
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
                 OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)",
        )
        .fetch_one(&mut first)
        .await?;
        let _ = first.close().await;
        let horizon = if privileged {
            Horizon::Database(Arc::default())
        } else {
            tracing::warn!(
                "the database role is neither superuser nor a member of pg_read_all_stats, so other \
                 users' transactions are hidden from it: delivery waits for open writing transactions \
                 of every database on the server (grant pg_read_all_stats to wait only for this one's)"
            );
            Horizon::Cluster
        };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Self {
            pool,
            horizon,
            partitions: Arc::new(AtomicU32::new(0)),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the horizon is this database's (the role can see every
    /// backend's transaction), not the whole server's.
    pub fn horizon_is_per_database(&self) -> bool {
        matches!(self.horizon, Horizon::Database(_))
    }

    /// The horizon for a read of the log, as SQL whose parameter `others`
    /// (a `bigint[]`) is bound to the second value returned: the other
    /// databases' transaction ids as last seen, looked at again once the
    /// look is older than [`OTHER_DATABASES_FRESH`].
    async fn horizon(&self, others: &str) -> Result<(String, Arc<Vec<i64>>)> {
        let Horizon::Database(seen) = &self.horizon else {
            return Ok((CLUSTER_HORIZON.to_string(), Arc::default()));
        };
        let fresh = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < OTHER_DATABASES_FRESH)
            .map(|(_, xids)| xids.clone());
        let xids = match fresh {
            Some(xids) => xids,
            None => {
                let at = Instant::now();
                let xids: Arc<Vec<i64>> = Arc::new(
                    sqlx::query_scalar(OTHER_DATABASES_XIDS)
                        .fetch_all(&self.pool)
                        .await?,
                );
                *seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((at, xids.clone()));
                xids
            }
        };
        Ok((database_horizon(others), xids))
    }

    /// The horizon as one expression that looks at the other databases
    /// itself, for reads that are not the relay's deliveries (`status`).
    fn horizon_now(&self) -> String {
        match self.horizon {
            Horizon::Database(_) => database_horizon(&format!("ARRAY({OTHER_DATABASES_XIDS})")),
            Horizon::Cluster => CLUSTER_HORIZON.to_string(),
        }
    }

    /// The stored partition count ([`Storage::ensure_partitions`] keeps it
    /// once set; until then it is read).
    async fn partitions(&self) -> Result<u32> {
        match self.partitions.load(Ordering::Relaxed) {
            0 => stored_partitions(&mut *self.pool.acquire().await?).await,
            known => Ok(known),
        }
    }

    /// The live relays (heartbeat not expired by the database's clock).
    async fn live_relays(&self, conn: &mut PgConnection) -> Result<Vec<LiveRelay>> {
        let rows: Vec<(String, String)> = sqlx::query_as(concat!(
            "SELECT owner, targets FROM outbox_relays WHERE expires_ms >= ",
            now!(),
            " ORDER BY owner"
        ))
        .fetch_all(&mut *conn)
        .await?;
        Ok(super::live_relays_of(rows))
    }

    /// The transaction the horizon waits for, when committed rows are
    /// beyond it (so delivery is held back), with its backend.
    async fn waiting_on(
        &self,
        conn: &mut PgConnection,
        partitions: u32,
    ) -> Result<Option<OpenTransaction>> {
        let sql = format!(
            "WITH h AS (SELECT {horizon} AS x),
                  held AS (SELECT 1 FROM h, generate_series(0, $1 - 1) AS p(partition)
                           WHERE EXISTS (SELECT 1 FROM outbox_messages m
                                         WHERE m.partition = p.partition AND m.xact_id >= h.x)
                           LIMIT 1)
             SELECT a.pid, a.datname::text AS database, NULL::text AS prepared,
                    (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::bigint AS age_ms
             FROM h, pg_stat_activity a
             WHERE EXISTS (SELECT 1 FROM held)
               AND a.backend_xid::text::bigint = h.x::text::bigint % 4294967296
             UNION ALL
             SELECT NULL, p.database::text, p.gid,
                    (extract(epoch FROM clock_timestamp() - p.prepared) * 1000)::bigint
             FROM h, pg_prepared_xacts p
             WHERE EXISTS (SELECT 1 FROM held)
               AND p.transaction::text::bigint = h.x::text::bigint % 4294967296
             LIMIT 1",
            horizon = self.horizon_now()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i32_of(partitions))
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| {
            Ok(OpenTransaction {
                pid: r.try_get("pid")?,
                database: r.try_get("database")?,
                age_ms: r.try_get::<Option<i64>, _>("age_ms")?.unwrap_or(0),
                prepared: r.try_get("prepared")?,
            })
        })
        .transpose()
    }
}

fn decode_entry(row: &PgRow, partitions: u32, max_payload_bytes: usize) -> Result<LogEntry> {
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

pub(crate) async fn stored_partitions(conn: &mut PgConnection) -> Result<u32> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM outbox_settings WHERE key = 'partitions'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
}

/// The dead letters a [`DeadLetterFilter`] matches, as SQL over
/// `outbox_deliveries d LEFT JOIN outbox_messages m`, with the parameters
/// $1..$5 of [`bind_dead_letter_filter`].
const DEAD_LETTERS_MATCHING: &str = r"d.state = 'dead' AND ($1::text IS NULL OR d.target = $1)
               AND ($2::text IS NULL OR m.event_name LIKE $2 ESCAPE '\')
               AND ($3::bigint IS NULL OR d.updated_at_ms >= $3)
               AND ($4::bigint IS NULL OR d.updated_at_ms < $4)
               AND ($5::text IS NULL OR strpos(lower(d.last_error), lower($5)) > 0)";

fn bind_dead_letter_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    filter: &'q DeadLetterFilter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(filter.target.as_deref())
        .bind(
            filter
                .event_pattern
                .as_deref()
                .map(|g| glob_to_like(g, '\\')),
        )
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .bind(filter.error_contains.as_deref())
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// One entry of a failure record's history, built in SQL with the
/// database's clock from the parameters given.
macro_rules! history_entry {
    ($attempt:literal, $error:literal) => {
        concat!(
            "jsonb_build_object('attempt', ",
            $attempt,
            "::int, 'at_ms', ",
            now!(),
            ", 'error', ",
            $error,
            "::text)"
        )
    };
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
        Ok(())
    }

    async fn acquire_lease(
        &self,
        target: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let row = sqlx::query(concat!(
            "INSERT INTO outbox_cursors (target, partition, lease_owner, lease_expires_ms, updated_at_ms)
             VALUES ($1, $2, $3, ",
            now!(),
            " + $4, ",
            now!(),
            ")
             ON CONFLICT (target, partition) DO UPDATE
                SET lease_owner = EXCLUDED.lease_owner, lease_expires_ms = EXCLUDED.lease_expires_ms
              WHERE outbox_cursors.lease_owner IS NULL
                 OR outbox_cursors.lease_owner = EXCLUDED.lease_owner
                 OR outbox_cursors.lease_expires_ms < EXCLUDED.updated_at_ms
             RETURNING position_xid, position_seq"
        ))
        .bind(target)
        .bind(i32_of(partition))
        .bind(owner)
        .bind(duration_ms(ttl))
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
        max_payload_bytes: usize,
    ) -> Result<Vec<LogEntry>> {
        let partitions = self.partitions().await?;
        let (horizon, others) = self.horizon("$6").await?;
        let sql = format!(
            "SELECT {columns} FROM outbox_messages m
             WHERE m.partition = $1
               AND (m.xact_id, m.seq) > ($2::text::xid8, $3)
               AND m.xact_id < {horizon}
             ORDER BY m.xact_id, m.seq
             LIMIT $4",
            columns = message_columns("$5"),
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i32_of(partition))
            .bind(after.xid.to_string())
            .bind(after.seq)
            .bind(i64::from(limit))
            .bind(i64::try_from(max_payload_bytes).unwrap_or(i64::MAX))
            .bind(&*others)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| decode_entry(row, partitions, max_payload_bytes))
            .collect()
    }

    async fn has_unsettled(&self, partition: u32, after: Position) -> Result<bool> {
        let (horizon, others) = self.horizon("$4").await?;
        let sql = format!(
            "SELECT EXISTS (
                SELECT 1 FROM outbox_messages
                WHERE partition = $1 AND (xact_id, seq) > ($2::text::xid8, $3)
                  AND xact_id >= {horizon})"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(i32_of(partition))
            .bind(after.xid.to_string())
            .bind(after.seq)
            .bind(&*others)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()> {
        // A batch with nothing to record is one statement, so no BEGIN and
        // COMMIT round trips: the cursor update is atomic on its own.
        let plain = ack.resolved.is_empty() && ack.failures.is_empty();
        let mut tx = if plain {
            None
        } else {
            Some(self.pool.begin().await?)
        };
        let cursor = sqlx::query(concat!(
            "UPDATE outbox_cursors SET
                position_xid = CASE WHEN (position_xid, position_seq) < ($1, $2) THEN $1 ELSE position_xid END,
                position_seq = CASE WHEN (position_xid, position_seq) < ($1, $2) THEN $2 ELSE position_seq END,
                updated_at_ms = ",
            now!(),
            " WHERE target = $3 AND partition = $4 AND lease_owner = $5"
        ))
        .bind(ack.position.xid)
        .bind(ack.position.seq)
        .bind(&lease.target)
        .bind(i32_of(lease.partition))
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
            sqlx::query("DELETE FROM outbox_deliveries WHERE target = $1 AND seq = ANY($2)")
                .bind(&lease.target)
                .bind(&ack.resolved)
                .execute(&mut *tx)
                .await?;
        }
        for failure in &ack.failures {
            let (state, wait_ms) = disposition_columns(&failure.disposition);
            sqlx::query(concat!(
                "INSERT INTO outbox_deliveries
                    (target, seq, message_id, state, attempts, next_attempt_ms, last_error, history, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, ",
                now!(),
                " + $6, $7, jsonb_build_array(",
                history_entry!("$5", "$7"),
                "), ",
                now!(),
                ")
                 ON CONFLICT (target, seq) DO UPDATE SET
                    state = EXCLUDED.state, attempts = EXCLUDED.attempts,
                    next_attempt_ms = EXCLUDED.next_attempt_ms, last_error = EXCLUDED.last_error,
                    history = outbox_deliveries.history || EXCLUDED.history,
                    updated_at_ms = EXCLUDED.updated_at_ms"
            ))
            .bind(&lease.target)
            .bind(failure.seq)
            .bind(&failure.message_id)
            .bind(state)
            .bind(i32::try_from(failure.attempts).unwrap_or(i32::MAX))
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
        let partitions = self.partitions().await?;
        // A record ahead of its partition's cursor is an ordered target's
        // held message, retried in place by the ordered path: only records
        // behind the cursor are claimed.
        let sql = format!(
            "WITH due AS (
                SELECT d.target, d.seq FROM outbox_deliveries d
                WHERE d.target = $1 AND d.state = 'retry' AND d.next_attempt_ms <= {now}
                  AND d.claim_expires_ms <= {now}
                  AND NOT EXISTS (SELECT 1 FROM outbox_messages m JOIN outbox_cursors c
                    ON c.target = d.target AND c.partition = m.partition
                    WHERE m.seq = d.seq
                    AND (m.xact_id::text::bigint, m.seq) > (c.position_xid, c.position_seq))
                ORDER BY d.next_attempt_ms, d.seq
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE outbox_deliveries d SET claim_owner = $3, claim_expires_ms = {now} + $4
                FROM due WHERE d.target = due.target AND d.seq = due.seq
                RETURNING d.seq, d.message_id, d.attempts
             )
             SELECT c.seq AS d_seq, c.message_id AS d_id, c.attempts, {columns}
             FROM claimed c LEFT JOIN outbox_messages m ON m.seq = c.seq
             ORDER BY c.seq",
            now = now!(),
            columns = message_columns(ANY_PAYLOAD),
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(target)
            .bind(i64::from(limit))
            .bind(owner)
            .bind(duration_ms(claim_ttl))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get("attempts")?;
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
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn settle_retries(&self, target: &str, settlements: &[Settlement]) -> Result<()> {
        if settlements.is_empty() {
            return Ok(());
        }
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
                    let (state, wait_ms) = disposition_columns(&failure.disposition);
                    sqlx::query(concat!(
                        "UPDATE outbox_deliveries SET
                            state = $1, attempts = $2, next_attempt_ms = ",
                        now!(),
                        " + $3, last_error = $4,
                            history = history || jsonb_build_array(",
                        history_entry!("$2", "$4"),
                        "),
                            claim_owner = NULL, claim_expires_ms = 0, updated_at_ms = ",
                        now!(),
                        " WHERE target = $5 AND seq = $6"
                    ))
                    .bind(state)
                    .bind(i32::try_from(failure.attempts).unwrap_or(i32::MAX))
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
        let live = self.live_relays(&mut conn).await?;
        let waiting_on = if targets.is_empty() {
            None
        } else {
            self.waiting_on(&mut conn, partitions).await?
        };
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
                        count(*) FILTER (WHERE state = 'dead') AS dead,
                        EXISTS (SELECT 1 FROM outbox_targets WHERE name = $1) AS registered
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
                registered: counts.try_get("registered")?,
                served_by: served_by(&live, target),
                waiting_on: waiting_on.clone().filter(|_| lag > 0),
            });
        }
        Ok(out)
    }

    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let sql = format!(
            "SELECT d.target, d.seq, d.message_id, m.event_name, d.attempts::bigint AS attempts, d.last_error, d.updated_at_ms
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE {DEAD_LETTERS_MATCHING}
               AND ($6::bigint IS NULL OR (d.updated_at_ms, $7::text, d.seq) < ($6, d.target, $8::bigint))
             ORDER BY d.updated_at_ms DESC, d.target, d.seq DESC LIMIT $9"
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
        let count: i64 = bind_dead_letter_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), filter)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn dead_letter(&self, target: &str, seq: i64) -> Result<Option<DeadLetterDetail>> {
        let partitions = self.partitions().await?;
        let sql = format!(
            "SELECT d.target, d.seq AS d_seq, d.message_id, d.attempts::bigint AS attempts, d.last_error, d.updated_at_ms,
                    d.history::text AS history, m.event_name AS d_event_name, {}
             FROM outbox_deliveries d LEFT JOIN outbox_messages m ON m.seq = d.seq
             WHERE d.target = $1 AND d.seq = $2 AND d.state = 'dead'",
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
            " WHERE target = $1 AND state = 'dead' AND seq = ANY($2)"
        ))
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

    async fn prune(&self, targets: &[String], retention: Duration, limit: u32) -> Result<u64> {
        // Every registered target and every one named; none at all prunes nothing.
        let deleted = sqlx::query(concat!(
            "WITH t AS (SELECT unnest($2::text[]) AS name UNION SELECT name FROM outbox_targets)
             DELETE FROM outbox_messages WHERE seq IN (
                SELECT m.seq FROM outbox_messages m
                WHERE m.created_at_ms < ",
            now!(),
            " - $1
                  AND (SELECT count(*) FROM t) > 0
                  AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = m.seq)
                  AND (SELECT count(*) FROM outbox_cursors c JOIN t ON c.target = t.name
                       WHERE c.partition = m.partition
                         AND (c.position_xid, c.position_seq) >= (m.xact_id::text::bigint, m.seq)
                      ) = (SELECT count(*) FROM t)
                ORDER BY m.seq
                LIMIT $3)"
        ))
        .bind(duration_ms(retention))
        .bind(targets)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn heartbeat(
        &self,
        owner: &str,
        serving: &[ServedTarget],
        ttl: Duration,
    ) -> Result<Vec<LiveRelay>> {
        // One statement: the row, the registry, the long dead, and who is live.
        let rows: Vec<(String, String)> = sqlx::query_as(concat!(
            "WITH me AS (
                INSERT INTO outbox_relays (owner, heartbeat_ms, started_at_ms, expires_ms, targets)
                VALUES ($1, ",
            now!(),
            ", ",
            now!(),
            ", ",
            now!(),
            " + $2, $3)
                ON CONFLICT (owner) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms,
                    expires_ms = EXCLUDED.expires_ms, targets = EXCLUDED.targets
                RETURNING owner, targets
             ), registered AS (
                INSERT INTO outbox_targets (name, registered_at_ms)
                SELECT t->>'name', ",
            now!(),
            " FROM jsonb_array_elements($3::jsonb) AS t
                ON CONFLICT (name) DO NOTHING
             ), gone AS (
                DELETE FROM outbox_relays WHERE owner <> $1 AND heartbeat_ms < ",
            now!(),
            " - 10 * $2
             )
             SELECT owner, targets FROM outbox_relays WHERE owner <> $1 AND expires_ms >= ",
            now!(),
            "
             UNION ALL SELECT owner, targets FROM me
             ORDER BY owner"
        ))
        .bind(owner)
        .bind(duration_ms(ttl))
        .bind(encode_served(serving))
        .fetch_all(&self.pool)
        .await?;
        Ok(super::live_relays_of(rows))
    }

    async fn registered_targets(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM outbox_targets ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn forget_target(&self, target: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        super::refuse_if_served(target, &self.live_relays(&mut tx).await?)?;
        let mut removed = [0u64; 3];
        for (i, sql) in [
            "DELETE FROM outbox_targets WHERE name = $1",
            "DELETE FROM outbox_cursors WHERE target = $1",
            "DELETE FROM outbox_deliveries WHERE target = $1",
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
    }

    async fn leave(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM outbox_relays WHERE owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn failure_state(&self, target: &str, seq: i64) -> Result<Option<FailureState>> {
        let row = sqlx::query(concat!(
            "SELECT attempts, next_attempt_ms - ",
            now!(),
            " AS due_in_ms, state FROM outbox_deliveries WHERE target = $1 AND seq = $2"
        ))
        .bind(target)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(FailureState {
                attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
                due_in: due_in(r.try_get("due_in_ms")?),
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

/// Inserts `message` on `conn` (the producer API's INSERT, and
/// [`Storage::save`]'s). The partition is assigned by the table's trigger,
/// and the relays are woken by `NOTIFY` when the transaction commits.
/// [`crate::producer::postgres::enqueue`] adds the current trace context first.
pub async fn enqueue(conn: &mut sqlx::PgConnection, message: &NewMessage) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox_messages (id, event_name, partition_key, payload, headers)
             VALUES ($1, $2, $3, $4, $5::jsonb)",
    )
    .bind(message.id)
    .bind(&message.event_name)
    .bind(message.partition_key.as_deref())
    .bind(message.payload.as_slice())
    .bind(crate::message::encode_headers(&message.headers))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
