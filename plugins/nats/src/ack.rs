//! What the reply to one JetStream publish means for the message.

use outbox_relay_guest::Outcome;
use serde::Deserialize;

use crate::proto;

/// JetStream API error codes that no retry can fix, because they are about
/// the message itself:
///
/// | err_code | name                             | why                                   |
/// |----------|----------------------------------|---------------------------------------|
/// | 10054    | JSStreamMessageExceedsMaximumErr | larger than the stream's max_msg_size |
/// | 10097    | JSStreamHeaderExceedsMaximumErr  | headers over 64 KiB                   |
/// | 10165    | JSMessageTTLInvalidErr           | a `Nats-TTL` header it cannot parse   |
/// | 10166    | JSMessageTTLDisabledErr          | a `Nats-TTL` header on a stream without per-message TTLs |
///
/// Every other error is retried: it is about the stream's state or set-up
/// (not found, full, sealed, offline, no quorum, too many requests), which an
/// operator or time can change, and the target's `retry.max_attempts`
/// bounds it anyway.
pub const PERMANENT: [u32; 4] = [10054, 10097, 10165, 10166];

/// The reply to one publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Ack {
    /// The stream holds the message; `duplicate` when it already did (same
    /// `Nats-Msg-Id` within the stream's duplicate window).
    Stored { duplicate: bool },
    /// Not stored: what to tell the host.
    Failed(Outcome),
}

#[derive(Deserialize)]
struct PubAck {
    stream: Option<String>,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// Reads the reply (`headers` of an `HMSG`, and the payload) to a publish on `subject`.
pub fn classify(subject: &str, headers: Option<&[u8]>, payload: &[u8]) -> Ack {
    if let Some((code, description)) = headers.and_then(proto::status) {
        return Ack::Failed(Outcome::retry(match code {
            503 => format!(
                "no JetStream stream captures subject {subject:?} (503 no responders): \
                 create a stream whose subjects include it"
            ),
            _ => format!(
                "unexpected status {code} {description} in reply to a publish on {subject:?}"
            ),
        }));
    }
    let not_an_ack = || {
        Ack::Failed(Outcome::retry(format!(
            "the reply to a publish on {subject:?} is not a JetStream ack ({:?}): \
             is the subject served by a plain NATS subscriber rather than a stream?",
            String::from_utf8_lossy(&payload[..payload.len().min(120)])
        )))
    };
    let Ok(ack) = serde_json::from_slice::<PubAck>(payload) else {
        return not_an_ack();
    };
    if let Some(err) = ack.error {
        let reason = format!(
            "JetStream refused the publish on {subject:?}: {} (code {}, err_code {})",
            err.description, err.code, err.err_code
        );
        return Ack::Failed(if PERMANENT.contains(&err.err_code) {
            Outcome::reject(reason)
        } else {
            Outcome::retry(reason)
        });
    }
    match ack.stream {
        Some(_) => Ack::Stored {
            duplicate: ack.duplicate,
        },
        None => not_an_ack(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(ack: Ack) -> Outcome {
        match ack {
            Ack::Failed(outcome) => outcome,
            Ack::Stored { .. } => panic!("expected a failure"),
        }
    }

    #[test]
    fn stored_and_duplicate_acks() {
        assert_eq!(
            classify("s", None, br#"{"stream":"S","seq":7}"#),
            Ack::Stored { duplicate: false }
        );
        assert_eq!(
            classify("s", None, br#"{"stream":"S","seq":7,"duplicate":true}"#),
            Ack::Stored { duplicate: true }
        );
    }

    #[test]
    fn no_responders_is_a_retry_that_says_so() {
        let out = failed(classify("a.b", Some(b"NATS/1.0 503\r\n\r\n"), b""));
        let Outcome::Retry { reason, .. } = out else {
            panic!("{out:?}")
        };
        assert!(
            reason.contains("no JetStream stream captures subject \"a.b\""),
            "{reason}"
        );
    }

    #[test]
    fn api_errors_map_by_code() {
        let too_big = br#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        let out = failed(classify("s", None, too_big));
        assert!(
            matches!(&out, Outcome::Reject(r) if r.contains("message size exceeds") && r.contains("10054")),
            "{out:?}"
        );
        let full =
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        assert!(matches!(
            failed(classify("s", None, full)),
            Outcome::Retry { .. }
        ));
        let sealed = br#"{"type":"x","error":{"code":400,"err_code":10109,"description":"invalid operation on sealed stream"}}"#;
        assert!(matches!(
            failed(classify("s", None, sealed)),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn a_reply_that_is_not_an_ack_is_retried() {
        for payload in [&b"pong"[..], b"{}", b"[1]"] {
            let out = failed(classify("s", None, payload));
            assert!(
                matches!(&out, Outcome::Retry { reason, .. } if reason.contains("not a JetStream ack")),
                "{out:?}"
            );
        }
    }
}
