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

use std::borrow::Cow;

use crate::message::NewMessage;

/// With the `otel` feature: the message, plus the current OpenTelemetry trace
/// context (`traceparent`, and `tracestate` if any) when the message has no
/// `traceparent` of its own and the current `tracing` span belongs to a trace.
pub fn with_trace_context(message: &NewMessage) -> Cow<'_, NewMessage> {
    #[cfg(feature = "otel")]
    {
        if !message.headers.contains_key("traceparent")
            && let Some((traceparent, tracestate)) = current_trace_context()
        {
            let mut m = message.clone();
            m.headers.insert("traceparent".into(), traceparent);
            if let Some(state) = tracestate {
                m.headers.insert("tracestate".into(), state);
            }
            return Cow::Owned(m);
        }
    }
    Cow::Borrowed(message)
}

/// The W3C `traceparent` (and `tracestate`) of the current `tracing` span.
#[cfg(feature = "otel")]
pub fn current_trace_context() -> Option<(String, Option<String>)> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    let state = sc.trace_state().header();
    Some((traceparent, (!state.is_empty()).then_some(state)))
}

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
        let message = &*super::with_trace_context(message);
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
        let message = &*super::with_trace_context(message);
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
