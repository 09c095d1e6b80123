//! `trace-context`: propagates W3C Trace Context (`traceparent`, `tracestate`)
//! to a target as a child of the producer's span.
//!
//! It takes no configuration (any key is an error, to catch a misplaced
//! setting). For each envelope:
//!
//! - a valid `traceparent` is replaced by `00-<same trace-id>-<new parent-id>-<same flags>`:
//!   the delivery becomes a new span in the producer's trace. The new
//!   parent-id is random, never all zeros and never the old one. `tracestate`
//!   is left as it is. A `traceparent` of a higher version is accepted as the
//!   W3C rules say (its first 55 characters have the version-00 shape and the
//!   56th, if any, is `-`) and re-emitted as version `00`;
//! - a malformed `traceparent` is removed together with `tracestate` (W3C: a
//!   `tracestate` must not travel without a valid `traceparent`), and the
//!   reason is logged as a warning;
//! - without a `traceparent` nothing changes.
//!
//! Validation follows W3C Trace Context level 1: lowercase hex only, version
//! `ff` is invalid, trace-id and parent-id must not be all zeros, and version
//! `00` is exactly 55 characters.

use outbox_relay_guest::{Config, Envelope, HeaderEdit, Injector, Result, random};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// How much of a malformed value a log line repeats.
const LOGGED_VALUE_CHARS: usize = 100;

struct TraceContext;

impl Injector for TraceContext {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        config.only_keys(&[])?;
        Ok(TraceContext)
    }

    fn inject(&mut self, envelope: &Envelope, _target: &str) -> Result<Vec<HeaderEdit>> {
        let Some(value) = envelope.header(TRACEPARENT) else {
            return Ok(Vec::new());
        };
        match TraceParent::parse(value) {
            Ok(parent) => {
                let child = parent.child(random::u64);
                Ok(vec![HeaderEdit::set(TRACEPARENT, child)])
            }
            Err(reason) => {
                outbox_relay_guest::log::warn(&format!(
                    "message {}: dropping malformed traceparent {} and any tracestate: {reason}",
                    envelope.id,
                    capped(value),
                ));
                Ok(vec![
                    HeaderEdit::remove(TRACEPARENT),
                    HeaderEdit::remove(TRACESTATE),
                ])
            }
        }
    }
}

outbox_relay_guest::export_injector!(TraceContext);

/// The fields of a valid `traceparent`, borrowed from the header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TraceParent<'a> {
    version: &'a str,
    trace_id: &'a str,
    parent_id: &'a str,
    flags: &'a str,
}

/// Length of a version-00 `traceparent`: `vv-<32>-<16>-ff`.
const V00_LEN: usize = 55;

impl<'a> TraceParent<'a> {
    /// Validates `value` by the W3C Trace Context rules; the error says why
    /// it is not valid.
    fn parse(value: &'a str) -> std::result::Result<TraceParent<'a>, String> {
        if !value.is_ascii() {
            return Err("contains non-ASCII characters".into());
        }
        // ASCII from here on: a byte is a character, every index a char boundary.
        let bytes = value.as_bytes();
        let version = bytes.get(..2).ok_or("shorter than 55 characters")?;
        if !is_lower_hex(version) {
            return Err("the version is not 2 lowercase hex digits".into());
        }
        if version == b"ff" {
            return Err("version ff is invalid".into());
        }
        if version == b"00" && bytes.len() != V00_LEN {
            return Err(format!(
                "a version-00 value has exactly {V00_LEN} characters, this one has {}",
                bytes.len()
            ));
        }
        if bytes.len() < V00_LEN {
            return Err(format!(
                "shorter than {V00_LEN} characters ({})",
                bytes.len()
            ));
        }
        if bytes.len() > V00_LEN && bytes[V00_LEN] != b'-' {
            return Err(format!(
                "after the first {V00_LEN} characters of a version-{} value comes `-` or nothing",
                String::from_utf8_lossy(version)
            ));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err("the fields are not separated by `-` at positions 3, 36 and 53".into());
        }
        let (trace_id, parent_id, flags) = (&bytes[3..35], &bytes[36..52], &bytes[53..55]);
        if !is_lower_hex(trace_id) {
            return Err("the trace-id is not 32 lowercase hex digits".into());
        }
        if trace_id.iter().all(|&b| b == b'0') {
            return Err("the trace-id is all zeros".into());
        }
        if !is_lower_hex(parent_id) {
            return Err("the parent-id is not 16 lowercase hex digits".into());
        }
        if parent_id.iter().all(|&b| b == b'0') {
            return Err("the parent-id is all zeros".into());
        }
        if !is_lower_hex(flags) {
            return Err("the trace-flags are not 2 lowercase hex digits".into());
        }
        Ok(TraceParent {
            version: &value[..2],
            trace_id: &value[3..35],
            parent_id: &value[36..52],
            flags: &value[53..55],
        })
    }

    /// The version-00 `traceparent` of a child span: same trace-id and flags,
    /// a new parent-id drawn from `random` (redrawn while it is all zeros or
    /// equal to the current one).
    fn child(&self, mut random: impl FnMut() -> u64) -> String {
        let parent_id = loop {
            let candidate = format!("{:016x}", random());
            if candidate != "0000000000000000" && candidate != self.parent_id {
                break candidate;
            }
        };
        format!("00-{}-{parent_id}-{}", self.trace_id, self.flags)
    }
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// `value` quoted for a log line, cut after [`LOGGED_VALUE_CHARS`] characters.
fn capped(value: &str) -> String {
    match value.char_indices().nth(LOGGED_VALUE_CHARS) {
        Some((cut, _)) => format!(
            "{:?}… ({} characters)",
            &value[..cut],
            value.chars().count()
        ),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const W3C_1: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const W3C_2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    fn reason(value: &str) -> String {
        TraceParent::parse(value).unwrap_err()
    }

    #[test]
    fn accepts_the_w3c_examples() {
        assert_eq!(
            TraceParent::parse(W3C_1).unwrap(),
            TraceParent {
                version: "00",
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                parent_id: "00f067aa0ba902b7",
                flags: "01",
            }
        );
        let p = TraceParent::parse(W3C_2).unwrap();
        assert_eq!(p.parent_id, "b7ad6b7169203331");
        assert_eq!(p.flags, "00");
        // Unknown flag bits are kept, not validated away.
        assert_eq!(
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff")
                .unwrap()
                .flags,
            "ff"
        );
    }

    #[test]
    fn rejects_all_zero_ids() {
        let r = reason("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        assert!(r.contains("trace-id is all zeros"), "{r}");
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01");
        assert!(r.contains("parent-id is all zeros"), "{r}");
    }

    #[test]
    fn rejects_uppercase_and_non_hex() {
        let r = reason("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");
        assert!(r.contains("trace-id"), "{r}");
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01");
        assert!(r.contains("parent-id"), "{r}");
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A");
        assert!(r.contains("trace-flags"), "{r}");
        let r = reason("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(r.contains("version"), "{r}");
        let r = reason("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(r.contains("version"), "{r}");
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01");
        assert!(r.contains("trace-id"), "{r}");
    }

    #[test]
    fn rejects_wrong_lengths_and_separators() {
        for value in [
            "",
            "0",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        ] {
            assert!(reason(value).contains("55 characters"), "{value:?}");
        }
        let r = reason(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(r.contains("version"), "{r}");
        let r = reason("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(r.contains("separated"), "{r}");
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01");
        assert!(r.contains("separated"), "{r}");
        // Version 00 never carries more fields.
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
        assert!(r.contains("exactly 55"), "{r}");
        let r = reason("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-");
        assert!(r.contains("this one has 56"), "{r}");
        // Multi-byte characters are refused before any slicing.
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "é",
        ] {
            assert!(reason(value).contains("non-ASCII"), "{value:?}");
        }
    }

    #[test]
    fn rejects_version_ff() {
        let r = reason("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(r.contains("version ff"), "{r}");
    }

    #[test]
    fn accepts_future_versions_by_their_version_00_prefix() {
        let exact = TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(exact.unwrap().version, "01");
        let p = TraceParent::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        )
        .unwrap();
        assert_eq!(p.version, "cc");
        assert_eq!(p.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id, "00f067aa0ba902b7");
        assert_eq!(p.flags, "01");
        let child = p.child(|| 0x1234);
        assert_eq!(
            child,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01"
        );

        let r = reason("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.future");
        assert!(r.contains("`-` or nothing"), "{r}");
        let r = reason("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0");
        assert!(r.contains("shorter than 55"), "{r}");
        // The same field rules hold for a future version.
        let r = reason("cc-00000000000000000000000000000000-00f067aa0ba902b7-01-x");
        assert!(r.contains("trace-id is all zeros"), "{r}");
        let r = reason("cc-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01-x");
        assert!(r.contains("parent-id"), "{r}");
    }

    #[test]
    fn a_child_keeps_trace_id_and_flags_and_gets_a_new_parent_id() {
        let p = TraceParent::parse(W3C_1).unwrap();
        // All zeros and the old parent-id are drawn again.
        let mut draws = [0, 0x00f0_67aa_0ba9_02b7, 0xabcd_ef01_2345_6789].into_iter();
        let child = p.child(|| draws.next().unwrap());
        assert_eq!(
            child,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-abcdef0123456789-01"
        );
        assert_eq!(draws.next(), None);
        let child = TraceParent::parse(&child).unwrap();
        assert_eq!(child.version, "00");
        assert_eq!(child.trace_id, p.trace_id);
        assert_eq!(child.flags, p.flags);
        assert_ne!(child.parent_id, p.parent_id);
    }

    fn envelope(headers: &[(&str, &str)]) -> Envelope {
        Envelope::new(
            "0190a1b2-0000-7000-8000-000000000001",
            "order.created",
            b"{}",
        )
        .with_headers(headers)
    }

    fn injector() -> TraceContext {
        TraceContext::init("t", &Config::default()).unwrap()
    }

    #[test]
    fn init_refuses_settings() {
        let config = Config::parse(r#"{"sampled": true}"#).unwrap();
        let err = TraceContext::init("t", &config).err().unwrap();
        assert!(err.message().contains("`sampled`"), "{err}");
    }

    #[test]
    fn inject_makes_a_child_and_keeps_tracestate() {
        let mut injector = injector();
        let e = envelope(&[(TRACEPARENT, W3C_1), (TRACESTATE, "congo=t61rcWkgMzE")]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let edits = injector.inject(&e, "t").unwrap();
            let [HeaderEdit::Set(name, value)] = edits.as_slice() else {
                panic!("{edits:?}");
            };
            assert_eq!(name, TRACEPARENT);
            let child = TraceParent::parse(value).unwrap();
            assert_eq!(child.version, "00");
            assert_eq!(child.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(child.flags, "01");
            assert_ne!(child.parent_id, "00f067aa0ba902b7");
            assert!(seen.insert(child.parent_id.to_owned()), "repeated {value}");
        }
    }

    #[test]
    fn inject_finds_the_header_in_any_case() {
        let e = envelope(&[("TraceParent", W3C_2)]);
        let edits = injector().inject(&e, "t").unwrap();
        assert!(matches!(edits.as_slice(), [HeaderEdit::Set(n, _)] if n == TRACEPARENT));
    }

    #[test]
    fn inject_drops_a_malformed_traceparent_with_its_tracestate() {
        let e = envelope(&[
            (
                TRACEPARENT,
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
            (TRACESTATE, "congo=t61rcWkgMzE"),
        ]);
        assert_eq!(
            injector().inject(&e, "t").unwrap(),
            vec![
                HeaderEdit::remove(TRACEPARENT),
                HeaderEdit::remove(TRACESTATE)
            ]
        );
    }

    #[test]
    fn inject_leaves_envelopes_without_traceparent_alone() {
        let mut injector = injector();
        assert_eq!(injector.inject(&envelope(&[]), "t").unwrap(), vec![]);
        let e = envelope(&[(TRACESTATE, "congo=t61rcWkgMzE"), ("x-other", "1")]);
        assert_eq!(injector.inject(&e, "t").unwrap(), vec![]);
    }

    #[test]
    fn logged_values_are_capped() {
        assert_eq!(capped("short"), "\"short\"");
        let long = "é".repeat(150);
        let logged = capped(&long);
        assert!(logged.starts_with(&format!("\"{}\"…", "é".repeat(100))));
        assert!(logged.ends_with("(150 characters)"), "{logged}");
    }
}
