//! What each Kafka error code of a produce answer means for the messages it
//! covers: the one table the producer consults (see
//! `docs/transports/kafka.md`, "Errors").

use kafka_protocol::ResponseError;

/// What to do with the records of one partition after the broker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Written (`NONE`), or written by an earlier try of the same request
    /// (`DUPLICATE_SEQUENCE_NUMBER`).
    Written,
    /// Not written; try again. `refresh`: the leader may have moved, ask for
    /// metadata first.
    NotWritten { refresh: bool },
    /// Perhaps written (a time-out, written but not replicated). Resending
    /// the same records with the same sequence numbers is safe with the
    /// idempotent producer; giving up on them means the next producer
    /// session starts (see `produce.rs`).
    Unknown,
    /// The broker no longer knows this producer's sequence: start a new
    /// producer session, then try again.
    NewSession,
    /// Too large as one batch: split it, or reject a single record.
    TooLarge,
    /// Throttled: try again after the broker's delay.
    Throttled,
    /// Never accepted: dead-letter, naming the code.
    Reject,
}

pub fn verdict(code: i16) -> Verdict {
    match code {
        0 | 46 => Verdict::Written,
        // UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
        // REPLICA_NOT_AVAILABLE, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH,
        // BROKER_NOT_AVAILABLE
        3 | 5 | 6 | 9 | 74 | 75 | 8 => Verdict::NotWritten { refresh: true },
        // CORRUPT_MESSAGE (checksum failed in transit), NOT_ENOUGH_REPLICAS,
        // KAFKA_STORAGE_ERROR, CONCURRENT_TRANSACTIONS
        2 | 19 | 56 | 51 => Verdict::NotWritten { refresh: false },
        // REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND, NETWORK_EXCEPTION
        7 | 20 | 13 => Verdict::Unknown,
        // OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH,
        // UNKNOWN_PRODUCER_ID, PRODUCER_FENCED, INVALID_PRODUCER_ID_MAPPING
        45 | 47 | 59 | 90 | 49 => Verdict::NewSession,
        // MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE
        10 | 18 => Verdict::TooLarge,
        // THROTTLING_QUOTA_EXCEEDED
        89 => Verdict::Throttled,
        // INVALID_RECORD, TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED,
        // INVALID_TOPIC_EXCEPTION, INVALID_REQUIRED_ACKS, INVALID_TIMESTAMP,
        // UNSUPPORTED_FOR_MESSAGE_FORMAT, POLICY_VIOLATION, UNSUPPORTED_COMPRESSION_TYPE
        87 | 29 | 31 | 17 | 21 | 32 | 43 | 44 | 76 => Verdict::Reject,
        other => match ResponseError::try_from_code(other) {
            // A retriable code this table does not name: assume the worst
            // of it (perhaps written), which is safe to retry.
            Some(e) if e.is_retriable() => Verdict::Unknown,
            _ => Verdict::Reject,
        },
    }
}

/// `NOT_LEADER_OR_FOLLOWER (6)`: the name Kafka's documentation uses.
pub fn code_name(code: i16) -> String {
    let Some(error) = ResponseError::try_from_code(code) else {
        return "NONE (0)".into();
    };
    let camel = error.to_string();
    if camel.starts_with("Unknown error code") {
        return format!("error code {code}");
    }
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    format!("{name} ({code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kafkas() {
        assert_eq!(code_name(6), "NOT_LEADER_OR_FOLLOWER (6)");
        assert_eq!(code_name(10), "MESSAGE_TOO_LARGE (10)");
        assert_eq!(code_name(-1), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(code_name(9999), "error code 9999");
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(0), Verdict::Written);
        assert_eq!(verdict(46), Verdict::Written);
        assert_eq!(verdict(6), Verdict::NotWritten { refresh: true });
        assert_eq!(verdict(7), Verdict::Unknown);
        assert_eq!(verdict(59), Verdict::NewSession);
        assert_eq!(verdict(10), Verdict::TooLarge);
        assert_eq!(verdict(89), Verdict::Throttled);
        for code in [87, 29, 17, 9999, -1] {
            assert_eq!(verdict(code), Verdict::Reject, "{code}");
        }
    }
}
