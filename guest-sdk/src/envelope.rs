/// One message as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUIDv7 of the message. It is the same on every attempt, so use it as the
    /// idempotency key towards the target.
    pub id: String,
    /// The producer's event name, e.g. `order.created`.
    pub event_name: String,
    /// The ordering key, when the producer set one.
    pub partition_key: Option<String>,
    /// The payload bytes, exactly as the producer stored them.
    pub payload: Vec<u8>,
    /// Headers after the target's injectors ran. Names are lower-case and
    /// appear at most once.
    pub headers: Vec<(String, String)>,
    /// 1 on the first attempt to deliver to this target, 2 on the first retry, ...
    pub attempt: u32,
    /// When the producer enqueued the message, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl Envelope {
    /// An envelope of a first attempt, with no key and no headers: for a
    /// plugin's unit tests, with the `with_*` methods below.
    ///
    /// ```
    /// use outbox_relay_guest::Envelope;
    ///
    /// let e = Envelope::new("0190-a", "order.created", b"{}")
    ///     .with_key("order-7")
    ///     .with_header("traceparent", "00-1");
    /// assert_eq!(e.header("TraceParent"), Some("00-1"));
    /// assert_eq!((e.attempt, e.partition_key.as_deref()), (1, Some("order-7")));
    /// ```
    pub fn new(
        id: impl Into<String>,
        event_name: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Envelope {
            id: id.into(),
            event_name: event_name.into(),
            partition_key: None,
            payload: payload.into(),
            headers: Vec::new(),
            attempt: 1,
            created_at_ms: 0,
        }
    }

    /// The same envelope with partition key `key`.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// The same envelope with header `name` added.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same envelope with every header of `headers` added, in order.
    #[must_use]
    pub fn with_headers(mut self, headers: &[(&str, &str)]) -> Self {
        self.headers.extend(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// The value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The payload as UTF-8 text, or `None` when it is not valid UTF-8.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// The payload parsed as JSON into `T`.
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        serde_json::from_slice(&self.payload)
            .map_err(|err| crate::Error::new(format!("payload of message {}: {err}", self.id)))
    }
}

/// What became of one envelope of a batch. A transport returns exactly one per
/// envelope, in the batch's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target has the message; the host will not send it to this target again
    /// (barring a crash before the host records it: delivery is at least once).
    Delivered,
    /// A transient failure (timeout, 5xx, broker unavailable): the host tries
    /// again later with back-off, until the target's last attempt, after which
    /// it dead-letters the message.
    Retry {
        /// Why; shown to operators and stored with the message.
        reason: String,
        /// A lower bound on the next attempt's delay, e.g. from `Retry-After`.
        delay_ms: Option<u64>,
    },
    /// A permanent failure (4xx, a payload the target can never accept): the
    /// host dead-letters the message at once with this reason.
    Reject(String),
}

impl Outcome {
    /// A transient failure with the host's own back-off.
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            reason: reason.into(),
            delay_ms: None,
        }
    }

    /// A transient failure, to be tried again no sooner than `delay_ms` from now.
    pub fn retry_after(reason: impl Into<String>, delay_ms: u64) -> Outcome {
        Outcome::Retry {
            reason: reason.into(),
            delay_ms: Some(delay_ms),
        }
    }

    /// A permanent failure: the message is dead-lettered.
    pub fn reject(reason: impl Into<String>) -> Outcome {
        Outcome::Reject(reason.into())
    }

    /// Whether this is [`Outcome::Delivered`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }
}

/// One change an injector makes to an envelope's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Set header `.0` (lower-cased by the host) to `.1`, replacing any earlier value.
    Set(String, String),
    /// Remove the header with this name (any case).
    Remove(String),
}

impl HeaderEdit {
    /// [`HeaderEdit::Set`].
    pub fn set(name: impl Into<String>, value: impl Into<String>) -> HeaderEdit {
        HeaderEdit::Set(name.into(), value.into())
    }

    /// [`HeaderEdit::Remove`].
    pub fn remove(name: impl Into<String>) -> HeaderEdit {
        HeaderEdit::Remove(name.into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn envelope(payload: &[u8]) -> Envelope {
        Envelope {
            id: "0190".into(),
            event_name: "e".into(),
            partition_key: None,
            payload: payload.to_vec(),
            headers: vec![("traceparent".into(), "00-abc".into())],
            attempt: 1,
            created_at_ms: 0,
        }
    }

    #[test]
    fn header_lookup_ignores_case() {
        let e = envelope(b"");
        assert_eq!(e.header("TraceParent"), Some("00-abc"));
        assert_eq!(e.header("missing"), None);
    }

    #[test]
    fn payload_views() {
        assert_eq!(envelope(b"{\"a\":1}").payload_str(), Some("{\"a\":1}"));
        assert_eq!(envelope(&[0xff, 0xfe]).payload_str(), None);
        let v: serde_json::Value = envelope(b"{\"a\":1}").payload_json().unwrap();
        assert_eq!(v["a"], 1);
        let err = envelope(b"nope")
            .payload_json::<serde_json::Value>()
            .unwrap_err();
        assert!(err.message().contains("0190"), "{err}");
    }

    #[test]
    fn outcome_constructors() {
        assert_eq!(
            Outcome::retry("x"),
            Outcome::Retry {
                reason: "x".into(),
                delay_ms: None
            }
        );
        assert_eq!(
            Outcome::retry_after("x", 5),
            Outcome::Retry {
                reason: "x".into(),
                delay_ms: Some(5)
            }
        );
        assert_eq!(Outcome::reject("y"), Outcome::Reject("y".into()));
        assert!(Outcome::Delivered.is_delivered());
        assert_eq!(
            HeaderEdit::set("a", "b"),
            HeaderEdit::Set("a".into(), "b".into())
        );
    }
}
