//! The JSON-lines shape shared by the `file` and `stdout` transports.
//!
//! Each envelope becomes one line:
//! `{"id":..,"event_name":..,"partition_key":..|null,"headers":{..},"attempt":N,"created_at_ms":N,"payload":<JSON>}`.
//! A payload that is not UTF-8 JSON is written as `"payload_base64":"<standard base64>"`
//! instead. A JSON payload is copied verbatim, minus insignificant whitespace:
//! re-encoding it through `serde_json::Value` would reorder keys and round big
//! numbers, and keeping its own line breaks would split the line.

use std::collections::BTreeMap;

use base64::Engine as _;
use outbox_relay_guest::Envelope;
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct Line<'a> {
    id: &'a str,
    event_name: &'a str,
    partition_key: Option<&'a str>,
    headers: BTreeMap<&'a str, &'a str>,
    attempt: u32,
    created_at_ms: i64,
    #[serde(flatten)]
    payload: Payload,
}

#[derive(Serialize)]
enum Payload {
    #[serde(rename = "payload")]
    Json(Box<RawValue>),
    #[serde(rename = "payload_base64")]
    Base64(String),
}

/// Appends `envelope` as one line, `\n` included, to `out`.
pub fn write_line(out: &mut Vec<u8>, envelope: &Envelope) -> serde_json::Result<()> {
    let line = Line {
        id: &envelope.id,
        event_name: &envelope.event_name,
        partition_key: envelope.partition_key.as_deref(),
        headers: envelope
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
        attempt: envelope.attempt,
        created_at_ms: envelope.created_at_ms,
        payload: payload(&envelope.payload),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

fn payload(bytes: &[u8]) -> Payload {
    let json = std::str::from_utf8(bytes)
        .ok()
        .filter(|text| serde_json::from_str::<&RawValue>(text).is_ok())
        .and_then(|text| RawValue::from_string(minify(text)).ok());
    match json {
        Some(raw) => Payload::Json(raw),
        None => Payload::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// Drops whitespace outside strings from text already known to be valid JSON.
/// (Inside a JSON string a line break is always escaped, so the result is one line.)
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(payload: &[u8]) -> String {
        let envelope = Envelope {
            id: "id-1".into(),
            event_name: "order.created".into(),
            partition_key: Some("k".into()),
            payload: payload.to_vec(),
            headers: vec![("traceparent".into(), "00-x".into())],
            attempt: 2,
            created_at_ms: 1700,
        };
        let mut out = Vec::new();
        write_line(&mut out, &envelope).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_payloads_are_kept_verbatim_on_one_line() {
        let got =
            line(b"{ \"b\": 1,\n  \"a\": \"x y\\n\\\"z\",\n \"n\": 123456789012345678901234 }");
        assert_eq!(
            got,
            concat!(
                r#"{"id":"id-1","event_name":"order.created","partition_key":"k","#,
                r#""headers":{"traceparent":"00-x"},"attempt":2,"created_at_ms":1700,"#,
                r#""payload":{"b":1,"a":"x y\n\"z","n":123456789012345678901234}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn other_payloads_are_base64() {
        assert!(line(&[0xff, 0x00]).ends_with("\"payload_base64\":\"/wA=\"}\n"));
        assert!(line(b"not json").contains(r#""payload_base64":"bm90IGpzb24=""#));
        assert!(line(b"").contains(r#""payload_base64":"""#));
    }
}
