//! `webhook`: HTTP POST of each envelope, signed the Standard Webhooks way.
//!
//! ```toml
//! [keys.hooks]
//! algorithm = "HS256"
//! env = "HOOKS_SECRET"            # whsec_... ; the host holds it, never this plugin
//!
//! [targets.partner]
//! plugin = "webhook"
//! keys = ["hooks"]
//! sandbox = { allow_http = ["hooks.partner.example"] }
//! [targets.partner.config]
//! url = "https://hooks.partner.example/outbox/{event}"   # a template
//! secret_key = "hooks"            # optional; without it requests are unsigned
//! timeout_ms = 10000              # per request (default 10 s)
//! content_type = "application/json"   # unless the message has a content-type header
//! ```
//!
//! Each envelope is one `POST` of the payload bytes, as they are, with:
//! - `webhook-id`: the message id, the same on every attempt (the idempotency key);
//! - `webhook-timestamp`: seconds since the Unix epoch when this attempt was signed;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`;
//! - `outbox-message-id`, `outbox-event`, and every header of the message
//!   (except hop-by-hop and framing headers, which HTTP owns).
//!
//! The batch goes out at once: the host sends the requests concurrently over
//! its pooled keep-alive connections. Messages that share a partition key are
//! sent one after another, in order, and after one fails the later ones of
//! that key are retried rather than sent.
//!
//! | response                         | outcome                                  |
//! |----------------------------------|------------------------------------------|
//! | 2xx                              | delivered                                |
//! | 408, 429, 5xx                    | retry, no sooner than `Retry-After`      |
//! | 3xx (redirects are not followed) | reject                                   |
//! | any other 4xx (e.g. 410 Gone)    | reject: the message is dead-lettered     |
//! | time-out, connection failure     | retry                                    |
//! | URL not allowed by the sandbox   | retry (fix the config; nothing is lost)  |

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use outbox_relay_guest::http::{self, Request, Response};
use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Template, Transport, signing};

/// Headers a message may not set on the request: HTTP owns them.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

struct Webhook {
    url: Template,
    secret_key: Option<String>,
    timeout: Duration,
    content_type: String,
}

impl Transport for Webhook {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        let url =
            Template::parse(config.get_str("url")?).map_err(|e| e.context("config: key `url`"))?;
        // A URL without placeholders can be checked against the sandbox now,
        // so a host the operator did not allow stops the target at start-up.
        if !url.as_str().contains('{') {
            http::allowed(url.as_str())
                .map_err(|e| Error::new(format!("config: key `url`: {e}")))?;
        }
        let secret_key = config.get_opt_str("secret_key")?.map(str::to_string);
        if let Some(key) = &secret_key {
            let alg = signing::algorithm(key).map_err(|e| e.context("config: key `secret_key`"))?;
            if alg != "HS256" {
                return Err(Error::new(format!(
                    "config: key `secret_key`: key {key:?} is {alg}; Standard Webhooks signatures need an HS256 (whsec_) key"
                )));
            }
        }
        let timeout = Duration::from_millis(config.get_opt_u64("timeout_ms")?.unwrap_or(10_000));
        let content_type = config
            .get_opt_str("content_type")?
            .unwrap_or("application/json")
            .to_string();
        Ok(Self {
            url,
            secret_key,
            timeout,
            content_type,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Requests in one round go out concurrently. Messages that share a
        // partition key go in successive rounds, so a receiver sees each
        // key's messages in order; once one fails, the later ones of its key
        // are not sent (an ordered target needs that; for the others it only
        // costs a retry).
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for round in rounds(&batch) {
            let mut sent = Vec::new();
            let mut requests = Vec::new();
            for i in round {
                let envelope = &batch[i];
                if let Some(key) = envelope.partition_key.as_deref()
                    && failed_keys.contains(key)
                {
                    outcomes[i] = Some(Outcome::Retry {
                        reason: "an earlier message with the same partition key failed".into(),
                        delay_ms: None,
                    });
                    continue;
                }
                match self.request(envelope, timestamp) {
                    Ok(request) => {
                        sent.push(i);
                        requests.push(request);
                    }
                    Err(outcome) => outcomes[i] = Some(outcome),
                }
            }
            let mut responses = http::send(requests).into_iter();
            for i in sent {
                outcomes[i] = Some(match responses.next() {
                    Some(Ok(response)) => outcome_of(&response),
                    Some(Err(http::Error::Invalid(m))) => {
                        Outcome::Reject(format!("invalid request: {m}"))
                    }
                    Some(Err(other)) => Outcome::Retry {
                        reason: other.to_string(),
                        delay_ms: None,
                    },
                    None => Outcome::Retry {
                        reason: "the host returned fewer responses than requests".into(),
                        delay_ms: None,
                    },
                });
            }
            for (i, outcome) in outcomes.iter().enumerate() {
                if !matches!(outcome, None | Some(Outcome::Delivered))
                    && let Some(key) = batch[i].partition_key.as_deref()
                {
                    failed_keys.insert(key);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Retry {
                    reason: "not sent".into(),
                    delay_ms: None,
                })
            })
            .collect()
    }
}

/// The batch's indices in rounds: the n-th message of each partition key goes
/// in round n; messages without a key all go in the first.
fn rounds(batch: &[Envelope]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, envelope) in batch.iter().enumerate() {
        let round = match envelope.partition_key.as_deref() {
            Some(key) => {
                let n = seen.entry(key).or_insert(0);
                *n += 1;
                *n - 1
            }
            None => 0,
        };
        if rounds.len() <= round {
            rounds.resize(round + 1, Vec::new());
        }
        rounds[round].push(i);
    }
    rounds
}

impl Webhook {
    fn request(
        &self,
        envelope: &Envelope,
        timestamp: u64,
    ) -> std::result::Result<Request, Outcome> {
        let url = self
            .url
            .render(envelope)
            .map_err(|e| Outcome::Reject(e.into_message()))?;
        let mut request = Request::post(url, envelope.payload.clone())
            .timeout(self.timeout)
            .header("webhook-id", envelope.id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("outbox-message-id", envelope.id.as_str())
            .header("outbox-event", envelope.event_name.as_str());
        if envelope.header("content-type").is_none() {
            request = request.header("content-type", self.content_type.as_str());
        }
        for (name, value) in &envelope.headers {
            if !RESERVED.contains(&name.as_str()) && !name.starts_with("outbox-") {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        if let Some(key) = &self.secret_key {
            let signed = signed_content(&envelope.id, timestamp, &envelope.payload);
            let signature = signing::sign(key, &signed).map_err(|e| Outcome::Retry {
                reason: format!("signing with key {key:?}: {e}"),
                delay_ms: None,
            })?;
            request = request.header(
                "webhook-signature",
                format!("v1,{}", BASE64.encode(signature)),
            );
        }
        Ok(request)
    }
}

/// What Standard Webhooks signs: `id.timestamp.body`.
fn signed_content(id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{id}.{timestamp}.").into_bytes();
    out.extend_from_slice(body);
    out
}

fn outcome_of(response: &Response) -> Outcome {
    let status = response.status;
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: format!("HTTP {status}{}", snippet(&response.body)),
            delay_ms: response
                .header("retry-after")
                .and_then(|v| retry_after_ms(v, SystemTime::now())),
        },
        300..=399 => Outcome::Reject(format!(
            "HTTP {status}: redirects are not followed; point the target's url at {}",
            response.header("location").unwrap_or("the final URL")
        )),
        _ => Outcome::Reject(format!("HTTP {status}{}", snippet(&response.body))),
    }
}

/// The start of a response body, for the failure reason.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, in milliseconds from `now`.
fn retry_after_ms(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).map_or(0, |d| d.as_millis() as u64))
}

outbox_relay_guest::export_transport!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: b"nope".to_vec(),
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(outcome_of(&response(204, &[])), Outcome::Delivered);
        assert_eq!(
            outcome_of(&response(503, &[("retry-after", "7")])),
            Outcome::Retry {
                reason: "HTTP 503: nope".into(),
                delay_ms: Some(7000)
            }
        );
        assert!(matches!(
            outcome_of(&response(429, &[])),
            Outcome::Retry { delay_ms: None, .. }
        ));
        assert!(matches!(
            outcome_of(&response(408, &[])),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            outcome_of(&response(410, &[])),
            Outcome::Reject("HTTP 410: nope".into())
        );
        assert!(
            matches!(outcome_of(&response(301, &[("location", "https://x/")])), Outcome::Reject(r) if r.contains("https://x/"))
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
    }

    #[test]
    fn messages_of_one_key_go_in_successive_rounds() {
        let e = |key: Option<&str>| Envelope {
            id: String::new(),
            event_name: String::new(),
            partition_key: key.map(str::to_string),
            payload: vec![],
            headers: vec![],
            attempt: 1,
            created_at_ms: 0,
        };
        let batch = [
            e(Some("a")),
            e(None),
            e(Some("a")),
            e(Some("b")),
            e(Some("a")),
        ];
        assert_eq!(rounds(&batch), vec![vec![0, 1, 3], vec![2], vec![4]]);
    }

    #[test]
    fn the_signed_content_is_id_dot_timestamp_dot_body() {
        assert_eq!(
            signed_content("msg_1", 1614265330, b"{\"a\":1}"),
            b"msg_1.1614265330.{\"a\":1}".to_vec()
        );
    }
}
