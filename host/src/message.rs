//! The outbox message as producers write it and as the relay reads it back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header map: lower-case names to string values.
pub type Headers = BTreeMap<String, String>;

/// What a producer hands to [`crate::producer`] to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: Uuid,
    pub event_name: String,
    pub partition_key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl NewMessage {
    /// A message with a fresh UUIDv7 id, no key and no headers.
    pub fn new(event_name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_name: event_name.into(),
            partition_key: None,
            payload: payload.into(),
            headers: Headers::new(),
        }
    }

    /// Messages with the same key keep their order on an ordered target.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.as_ref().to_ascii_lowercase(), value.into());
        self
    }
}

/// Where a message sits in the log. Ordered by `(xid, seq)`: on Postgres `xid`
/// is the inserting transaction's id (so a transaction that commits late is
/// still read in order, never skipped); on SQLite, where writes are serialised,
/// it is always 0 and `seq` alone is commit order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub xid: i64,
    pub seq: i64,
}

/// A committed message, read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique and increasing in insert order.
    pub seq: i64,
    /// The inserting transaction (Postgres), or 0.
    pub xid: i64,
    pub id: Uuid,
    pub event_name: String,
    pub partition_key: Option<String>,
    pub partition: u32,
    pub payload: Vec<u8>,
    pub headers: Headers,
    pub created_at_ms: i64,
}

/// A row that a producer wrote but that the relay cannot decode. It is
/// dead-lettered with `reason` instead of blocking the messages behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedMessage {
    pub seq: i64,
    pub xid: i64,
    /// The id as written, which may itself be what is malformed.
    pub id: String,
    pub event_name: String,
    pub reason: String,
}

impl MalformedMessage {
    /// A failure record whose message was pruned from the log meanwhile.
    pub fn gone(seq: i64, id: String) -> Self {
        Self {
            seq,
            xid: 0,
            id,
            event_name: String::new(),
            reason: "the message is no longer in the log".into(),
        }
    }
}

impl Message {
    pub fn position(&self) -> Position {
        Position {
            xid: self.xid,
            seq: self.seq,
        }
    }
}

/// One row of the log as decoded: usable, or malformed with a reason.
pub type LogEntry = Result<Message, MalformedMessage>;

/// The log position of an entry, usable or not.
pub fn entry_position(entry: &LogEntry) -> Position {
    match entry {
        Ok(m) => m.position(),
        Err(bad) => Position {
            xid: bad.xid,
            seq: bad.seq,
        },
    }
}

/// A message on its way to one target, on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub message: Message,
    /// 1 on the first attempt at this target.
    pub attempt: u32,
}

/// What became of one envelope, as a transport reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Transient: try again after back-off, no sooner than `delay_ms` if given.
    Retry {
        reason: String,
        delay_ms: Option<u64>,
    },
    /// Permanent: dead-letter with this reason.
    Reject(String),
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            delay_ms: None,
        }
    }
}

/// One log row as an adapter read it, before any validation. Every backend
/// fills one in from its own columns and [`decode_row`] decides, once for
/// all of them, whether it is a usable [`Message`] or malformed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    pub seq: i64,
    /// The inserting transaction (Postgres), or 0.
    pub xid: i64,
    /// A text column as read, or why it could not be read as text.
    pub id: Result<String, String>,
    pub event_name: Result<String, String>,
    pub partition_key: Result<Option<String>, String>,
    /// The `partition` column as text, whatever its stored type.
    pub partition: String,
    /// The partition count the outbox was set up with.
    pub partitions: u32,
    /// The payload's size in bytes, as the database reports it.
    pub payload_len: i64,
    /// The payload, unless it was over `max_payload_bytes` and not read.
    pub payload: Option<Vec<u8>>,
    pub max_payload_bytes: usize,
    /// The headers column as read (`None` is an empty object).
    pub headers: Result<Option<String>, String>,
    pub created_at_ms: i64,
}

/// Why a payload of `len` bytes is refused, if it is over `max`.
pub fn payload_over_limit(len: i64, max: usize) -> Option<String> {
    (usize::try_from(len).map_or(len > 0, |l| l > max))
        .then(|| format!("the payload is {len} bytes, over relay.max_payload_bytes ({max})"))
}

/// The one row decoder: a usable message, or malformed with the reason.
pub fn decode_row(row: RawRow) -> LogEntry {
    let id_text = row.id.clone().unwrap_or_default();
    let event_name = row.event_name.clone().unwrap_or_default();
    let malformed = |reason: String| {
        Err(MalformedMessage {
            seq: row.seq,
            xid: row.xid,
            id: id_text.clone(),
            event_name: event_name.clone(),
            reason,
        })
    };
    if let Err(reason) = row.id.as_ref().and(row.event_name.as_ref()) {
        return malformed(reason.clone());
    }
    let id = match Uuid::parse_str(&id_text) {
        Ok(id) => id,
        Err(e) => return malformed(format!("id {id_text:?} is not a UUID: {e}")),
    };
    if event_name.trim().is_empty() {
        return malformed("event name is empty".into());
    }
    let partition = match row.partition.trim().parse::<u32>() {
        Ok(p) if p < row.partitions.max(1) => p,
        _ => {
            return malformed(format!(
                "partition {} is outside 0..{}",
                row.partition,
                row.partitions.max(1)
            ));
        }
    };
    if let Some(reason) = payload_over_limit(row.payload_len, row.max_payload_bytes) {
        return malformed(reason);
    }
    let headers = match &row.headers {
        Ok(raw) => match decode_headers(raw.as_deref().unwrap_or("{}")) {
            Ok(h) => h,
            Err(reason) => return malformed(reason),
        },
        Err(reason) => return malformed(reason.clone()),
    };
    let partition_key = match &row.partition_key {
        Ok(k) => k.clone(),
        Err(reason) => return malformed(reason.clone()),
    };
    Ok(Message {
        seq: row.seq,
        xid: row.xid,
        id,
        event_name,
        partition_key,
        partition,
        payload: row.payload.unwrap_or_default(),
        headers,
        created_at_ms: row.created_at_ms,
    })
}

/// Decodes a stored headers column (JSON object of strings). Names are lower-cased.
pub fn decode_headers(raw: &str) -> Result<Headers, String> {
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("headers are not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("headers must be a JSON object of strings".into());
    };
    let mut headers = Headers::new();
    for (name, value) in map {
        match value {
            serde_json::Value::String(s) => {
                headers.insert(name.to_ascii_lowercase(), s);
            }
            other => {
                return Err(format!(
                    "header {name:?} must be a string, found {}",
                    json_kind(&other)
                ));
            }
        }
    }
    Ok(headers)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Encodes headers for storage.
pub fn encode_headers(headers: &Headers) -> String {
    // A BTreeMap<String, String> always serialises.
    serde_json::to_string(headers).unwrap_or_else(|_| "{}".into())
}

/// The partition of a message: a stable hash of its key (or, without a key,
/// its id) modulo the partition count. FNV-1a, so producers in any language
/// can compute the same value (see docs/producers.md).
pub fn partition_of(partition_key: Option<&str>, id: &Uuid, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let id_text;
    let key = match partition_key {
        Some(k) => k,
        None => {
            id_text = id.to_string();
            &id_text
        }
    };
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_decode_and_lowercase() {
        let h = decode_headers(r#"{"TraceParent":"00-abc","x":"y"}"#).unwrap();
        assert_eq!(h.get("traceparent").map(String::as_str), Some("00-abc"));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn bad_headers_have_reasons() {
        assert!(
            decode_headers("not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(decode_headers("[1]").unwrap_err().contains("JSON object"));
        let e = decode_headers(r#"{"a":1}"#).unwrap_err();
        assert!(e.contains("\"a\"") && e.contains("number"), "{e}");
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        let id = Uuid::now_v7();
        // FNV-1a 32 of "order-42" is 0x572446f4; pinned so other languages can check.
        assert_eq!(partition_of(Some("a"), &id, 1), 0);
        assert_eq!(partition_of(Some("order-42"), &id, 16), 0x5724_46f4 % 16);
        assert_eq!(partition_of(Some("order-42"), &Uuid::now_v7(), 16), 4);
    }

    fn raw() -> RawRow {
        RawRow {
            seq: 7,
            xid: 0,
            id: Ok(Uuid::now_v7().to_string()),
            event_name: Ok("e".into()),
            partition_key: Ok(None),
            partition: "1".into(),
            partitions: 4,
            payload_len: 2,
            payload: Some(b"{}".to_vec()),
            max_payload_bytes: 10,
            headers: Ok(None),
            created_at_ms: 1,
        }
    }

    #[test]
    fn a_row_outside_the_partitions_is_malformed_with_the_reason() {
        assert_eq!(decode_row(raw()).unwrap().partition, 1);
        for (stored, reason) in [
            ("7", "partition 7 is outside 0..4"),
            ("-1", "partition -1 is outside 0..4"),
            ("4096", "partition 4096 is outside 0..4"),
            ("x", "partition x is outside 0..4"),
        ] {
            let bad = decode_row(RawRow {
                partition: stored.into(),
                ..raw()
            })
            .unwrap_err();
            assert_eq!(bad.reason, reason);
            assert_eq!(bad.seq, 7);
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_malformed_without_being_read() {
        let bad = decode_row(RawRow {
            payload_len: 11,
            payload: None,
            ..raw()
        })
        .unwrap_err();
        assert_eq!(
            bad.reason,
            "the payload is 11 bytes, over relay.max_payload_bytes (10)"
        );
    }

    /// Fuzzing the row decoder's headers column (see docs/reliability.md).
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn fuzz_any_headers_text_decodes_or_gives_a_reason(raw in "(?s).{0,300}") {
                if let Err(reason) = decode_headers(&raw) {
                    prop_assert!(!reason.is_empty());
                }
            }

            #[test]
            fn fuzz_jsonish_headers_decode_or_give_a_reason(
                raw in "\\{(\"[A-Za-z-]{0,8}\": ?(\"[a-z ]{0,8}\"|[0-9]{1,3}|null|true|\\[\\]|\\{\\}), ?){0,6}\"z\": \"\"\\}"
            ) {
                if let Err(reason) = decode_headers(&raw) {
                    prop_assert!(reason.contains("must be a string") || reason.contains("JSON"), "{}", reason);
                }
            }

            #[test]
            fn fuzz_a_map_of_strings_round_trips_lower_cased(
                map in proptest::collection::btree_map("[A-Za-z0-9-]{1,12}", "(?s).{0,20}", 0..8)
            ) {
                let raw = serde_json::to_string(&map).unwrap();
                let decoded = decode_headers(&raw).unwrap();
                for (name, value) in &map {
                    // Names differing only in case collapse to one; the last wins.
                    prop_assert!(decoded.contains_key(&name.to_ascii_lowercase()));
                    let _ = value;
                }
                prop_assert!(decoded.keys().all(|k| *k == k.to_ascii_lowercase()));
            }

            #[test]
            fn fuzz_partition_is_always_in_range(key in proptest::option::of("(?s).{0,64}"), n in 1u32..5000) {
                let p = partition_of(key.as_deref(), &Uuid::now_v7(), n);
                prop_assert!(p < n);
            }
        }
    }
}
