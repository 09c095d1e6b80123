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
//!
//! With the `otel` feature (on by default), enqueue records the current
//! OpenTelemetry trace context as the `traceparent`/`tracestate` headers, so the
//! delivery continues the trace that produced the event.

#[cfg(feature = "otel")]
pub use crate::trace_context::current_trace_context;
pub use crate::trace_context::with_trace_context;

#[cfg(feature = "sqlite")]
pub mod sqlite {
    use sqlx::SqliteConnection;

    use crate::message::NewMessage;
    use crate::storage::Result;

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
        let message = &*super::with_trace_context(message);
        crate::storage::sqlite::enqueue(conn, message).await
    }
}

#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::PgConnection;

    use crate::message::NewMessage;
    use crate::storage::Result;

    /// Enqueues `message` on `conn`, normally a transaction the caller commits.
    /// The partition is assigned by the table's trigger, and the relays are
    /// woken by `NOTIFY` when the transaction commits.
    pub async fn enqueue(conn: &mut PgConnection, message: &NewMessage) -> Result<()> {
        let message = &*super::with_trace_context(message);
        crate::storage::postgres::enqueue(conn, message).await
    }
}

#[cfg(feature = "mysql")]
pub mod mysql {
    use sqlx::MySqlConnection;

    use crate::message::NewMessage;
    use crate::storage::Result;

    /// Enqueues `message` on `conn`, normally a transaction the caller
    /// commits. The relay gives the row its partition and its place in
    /// commit order once the transaction has committed.
    pub async fn enqueue(conn: &mut MySqlConnection, message: &NewMessage) -> Result<()> {
        let message = &*super::with_trace_context(message);
        crate::storage::mysql::enqueue(conn, message).await
    }
}
