//! The current trace context as message headers: a message enqueued inside a
//! traced span carries its W3C `traceparent` (and `tracestate`), so the
//! delivery continues the trace that produced the event. Without the `otel`
//! feature, messages pass through unchanged.

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
