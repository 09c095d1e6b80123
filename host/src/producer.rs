//! The producer API: enqueue a message inside the caller's own transaction, so
//! the event commits if and only if the business data does.
//!
//! This module (with a storage feature, without `relay`) is all an application
//! needs; it does not pull in the plugin runtime:
//!
//! ```toml
//! outbox-relay = { version = "0.1", default-features = false, features = ["sqlite"] }
//! ```
//!
//! Producers in other languages insert the same row with plain SQL; see
//! `docs/producers.md`.

#[cfg(feature = "sqlite")]
pub mod sqlite {
    use sqlx::SqliteConnection;

    use crate::message::{NewMessage, encode_headers, partition_of};
    use crate::storage::Result;
    use crate::storage::sqlite::stored_partitions;

    /// Enqueues `message` on `conn`, normally a transaction the caller commits:
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
    /// use outbox_relay::{NewMessage, producer};
    /// let mut tx = pool.begin().await?;
    /// // ... the application's own writes on `tx` ...
    /// producer::sqlite::enqueue(&mut tx, &NewMessage::new("order.created", br#"{"id":42}"#.to_vec()))
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue(conn: &mut SqliteConnection, message: &NewMessage) -> Result<()> {
        let partitions = stored_partitions(conn).await?;
        let partition = partition_of(message.partition_key.as_deref(), &message.id, partitions);
        sqlx::query(
            "INSERT INTO outbox_messages (id, event_name, partition_key, partition, payload, headers)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(message.id.to_string())
        .bind(&message.event_name)
        .bind(message.partition_key.as_deref())
        .bind(i64::from(partition))
        .bind(message.payload.as_slice())
        .bind(encode_headers(&message.headers))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::PgConnection;

    use crate::message::{NewMessage, encode_headers};
    use crate::storage::Result;

    /// Enqueues `message` on `conn`, normally a transaction the caller commits.
    /// The partition is assigned by the table's trigger, and the relays are
    /// woken by `NOTIFY` when the transaction commits.
    pub async fn enqueue(conn: &mut PgConnection, message: &NewMessage) -> Result<()> {
        sqlx::query(
            "INSERT INTO outbox_messages (id, event_name, partition_key, payload, headers)
             VALUES ($1, $2, $3, $4, $5::jsonb)",
        )
        .bind(message.id)
        .bind(&message.event_name)
        .bind(message.partition_key.as_deref())
        .bind(message.payload.as_slice())
        .bind(encode_headers(&message.headers))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
