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
