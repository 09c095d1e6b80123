//! `nats`: publishes each message to a NATS JetStream stream and waits for
//! the stream's ack, one per message.
//!
//! ```toml
//! [targets.bus]
//! plugin = "nats"
//! config = { url = "nats://127.0.0.1:4222", subject = "orders.{event}" }
//! sandbox = { allow_tcp = ["127.0.0.1:4222"] }
//! ```
//!
//! | key                  | default | meaning                                                  |
//! |----------------------|---------|----------------------------------------------------------|
//! | `url`                | —       | `nats://[user:pass@ or token@]host[:port]` or `host:port` (port 4222); `tls://` for TLS |
//! | `subject`            | —       | a [`Template`]: `{event}`, `{id}`, `{key}`, `{header.NAME}` |
//! | `ack_timeout_ms`     | 5000    | how long a batch waits for its acks                       |
//! | `connect_timeout_ms` | 5000    | connect and handshake time-out                            |
//! | `user`, `password`   | —       | user/password authentication                             |
//! | `token`              | —       | token authentication                                     |
//! | `jwt`, `nkey_key`    | —       | decentralised auth: the user JWT (`{ creds_jwt = "user.creds" }`) and the granted host key holding the user's NKey seed |
//!
//! Each message is one `HPUB` with a reply subject of its own on this
//! connection's inbox, and headers `Nats-Msg-Id` (the message id, which
//! JetStream deduplicates on within the stream's duplicate window),
//! `outbox-message-id`, `outbox-event` and every envelope header. A batch is
//! written in one go, then the acks are read as they come. The connection is
//! kept across batches and dropped after any I/O error, protocol error or ack
//! time-out; the next batch reconnects. `docs/transports/nats.md` has the
//! whole contract.
//!
//! With `jwt` and `nkey_key`, the server's nonce is signed by the host with
//! the key `nkey_key` names (`outbox:relay/signing`): the seed never enters
//! the plugin.

use std::time::{Duration, Instant};

use outbox_relay_guest::{
    Config, Envelope, Error, Outcome, Result, Template, Transport, log, net, signing,
};

mod ack;
mod conn;
mod proto;

use ack::Ack;
use conn::{Conn, Settings, UserJwt, is_timeout, url_auth};
use proto::ServerOp;

const KEYS: [&str; 9] = [
    "url",
    "subject",
    "ack_timeout_ms",
    "connect_timeout_ms",
    "user",
    "password",
    "token",
    "jwt",
    "nkey_key",
];
const DEFAULT_PORT: u16 = 4222;
/// The headers this transport sets itself; envelope headers of these names
/// (in any case) are left out so each appears once.
const OWN_HEADERS: [&str; 3] = ["Nats-Msg-Id", "outbox-message-id", "outbox-event"];

struct Nats {
    settings: Settings,
    subject: Template,
    ack_timeout: Duration,
    /// `None` after a failure; the next batch reconnects.
    conn: Option<Conn>,
}

impl Transport for Nats {
    fn init(target: &str, config: &Config) -> Result<Self> {
        config.only_keys(&KEYS)?;
        let url = config.get_str("url")?;
        let addr = net::host_port(url, DEFAULT_PORT)
            .map_err(|e| Error::new(format!("config: key `url`: {e}")))?;
        let tls = match url.split_once("://") {
            None => false,
            Some(("nats", _)) => false,
            Some(("tls", _)) => true,
            Some((scheme, _)) => {
                return Err(Error::new(format!(
                    "config: key `url`: the scheme must be `nats` or `tls`, not `{scheme}`"
                )));
            }
        };
        let subject = Template::parse(config.get_str("subject")?)
            .map_err(|e| Error::new(format!("config: key `subject`: {e}")))?;
        let millis = |key: &str| config.get_millis_or(key, 5000, 1..=600_000);
        let mut auth = url_auth(url);
        if let Some(user) = config.get_opt_str("user")? {
            auth.user = Some(user.to_owned());
            auth.password = config.get_opt_str("password")?.map(str::to_owned);
        } else if config.get_opt_str("password")?.is_some() {
            return Err(Error::new("config: key `password` needs `user`"));
        }
        if let Some(token) = config.get_opt_str("token")? {
            auth.token = Some(token.to_owned());
        }
        auth.user_jwt = user_jwt(config)?;
        if let Some(user) = &auth.user_jwt {
            check_nkey_key(&user.key, signing::algorithm(&user.key))?;
        }
        let ack_timeout = millis("ack_timeout_ms")?;
        let settings = Settings {
            name: format!("outbox-relay:{target}"),
            addr,
            tls,
            connect_timeout: millis("connect_timeout_ms")?,
            auth,
        };
        // A wrong address, a sandbox that does not allow it or bad credentials
        // are start-up errors rather than a retry on every batch.
        let conn = Conn::open(&settings).map_err(Error::new)?;
        Ok(Nats {
            settings,
            subject,
            ack_timeout,
            conn: Some(conn),
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut conn = match self.connection() {
            Ok(conn) => conn,
            Err(reason) => return vec![Outcome::retry(reason); batch.len()],
        };
        let (mut outcomes, failure) = self.publish(&mut conn, &batch);
        match failure {
            None => self.conn = Some(conn),
            Some(reason) => {
                log::warn(&format!("dropping the connection: {reason}"));
                for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                    *outcome = Some(Outcome::retry(reason.clone()));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no reply")))
            .collect()
    }
}

impl Nats {
    /// Publishes the batch on `conn` and reads the acks. Returns an outcome
    /// for each envelope that got one, and why the connection must be
    /// dropped, if it must (the envelopes without an outcome are then retried).
    fn publish(
        &self,
        conn: &mut Conn,
        batch: &[Envelope],
    ) -> (Vec<Option<Outcome>>, Option<String>) {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];

        // Every publish of the batch first, each with its own reply subject.
        let base = conn.next_token;
        conn.next_token += batch.len() as u64;
        let mut subjects = vec![String::new(); batch.len()];
        let mut out = Vec::new();
        let mut pending = 0;
        for (i, envelope) in batch.iter().enumerate() {
            let reply = format!("{}.{}", conn.inbox, base + i as u64);
            match encode(&self.subject, envelope, &reply, conn.max_payload, &mut out) {
                Ok(subject) => {
                    subjects[i] = subject;
                    pending += 1;
                }
                Err(reason) => outcomes[i] = Some(Outcome::reject(reason)),
            }
        }
        if pending == 0 {
            return (outcomes, None);
        }

        // Then the acks, in whatever order they come.
        let deadline = Instant::now() + self.ack_timeout;
        let mut duplicates = 0;
        let failure = match conn.write(&out, self.ack_timeout) {
            Err(err) => Some(format!("writing to {}: {err}", self.settings.addr)),
            Ok(()) => loop {
                if pending == 0 {
                    break None;
                }
                match conn.read_op(deadline) {
                    Ok(ServerOp::Msg {
                        subject,
                        headers,
                        payload,
                        ..
                    }) => {
                        let Some(i) = index_of(&conn.inbox, &subject, base, batch.len()) else {
                            continue; // not a reply to this batch
                        };
                        if outcomes[i].is_some() {
                            continue;
                        }
                        outcomes[i] = Some(
                            match ack::classify(&subjects[i], headers.as_deref(), &payload) {
                                Ack::Stored { duplicate } => {
                                    duplicates += usize::from(duplicate);
                                    Outcome::Delivered
                                }
                                Ack::Failed(outcome) => outcome,
                            },
                        );
                        pending -= 1;
                    }
                    Ok(ServerOp::Ping) => {
                        if let Err(err) = conn.write(b"PONG\r\n", self.ack_timeout) {
                            break Some(format!("writing to {}: {err}", self.settings.addr));
                        }
                    }
                    Ok(ServerOp::Err(err)) => match denied_subject(&err) {
                        // The server keeps the connection after a permissions
                        // violation: fail the messages for that subject only.
                        Some(denied) => {
                            for (i, outcome) in outcomes.iter_mut().enumerate() {
                                if outcome.is_none() && subjects[i] == denied {
                                    *outcome = Some(Outcome::retry(format!(
                                        "the NATS server refused the publish: {err}"
                                    )));
                                    pending -= 1;
                                }
                            }
                        }
                        None => break Some(format!("the NATS server reported an error: {err}")),
                    },
                    Ok(ServerOp::Info(_) | ServerOp::Pong | ServerOp::Ok) => {}
                    Err(err) if is_timeout(&err) => {
                        break Some(format!(
                            "no JetStream ack within {} ms (ack_timeout_ms) from {}",
                            self.ack_timeout.as_millis(),
                            self.settings.addr
                        ));
                    }
                    Err(err) => {
                        break Some(format!("connection to {} lost: {err}", self.settings.addr));
                    }
                }
            },
        };
        if duplicates > 0 {
            log::info(&format!(
                "{duplicates} of {} messages were already in the stream (same Nats-Msg-Id within its duplicate window)",
                batch.len()
            ));
        }
        (outcomes, failure)
    }

    /// Takes the open connection, after checking it is still alive, or makes
    /// a new one. `deliver` puts it back when the batch went well.
    fn connection(&mut self) -> core::result::Result<Conn, String> {
        match self.conn.take() {
            Some(mut conn) => {
                if conn.still_open() {
                    return Ok(conn);
                }
                log::info(&format!(
                    "the connection to {} was closed; reconnecting",
                    self.settings.addr
                ));
                Conn::open(&self.settings)
            }
            None => Conn::open(&self.settings),
        }
    }
}

/// `jwt` and `nkey_key`: both or neither.
fn user_jwt(config: &Config) -> Result<Option<UserJwt>> {
    match (config.get_opt_str("jwt")?, config.get_opt_str("nkey_key")?) {
        (None, None) => Ok(None),
        (Some(jwt), Some(key)) => {
            let jwt = jwt.trim();
            let parts: Vec<&str> = jwt.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
                return Err(Error::new(
                    "config: key `jwt`: not a JWT (header.claims.signature); \
                     write `jwt = { creds_jwt = \"user.creds\" }`",
                ));
            }
            Ok(Some(UserJwt {
                jwt: jwt.to_owned(),
                key: key.to_owned(),
            }))
        }
        (Some(_), None) => Err(Error::new(
            "config: key `jwt` needs `nkey_key`: the name of the signing key, granted to \
             the target, that holds the user's NKey seed ([keys.<name>] with the .creds file)",
        )),
        (None, Some(_)) => Err(Error::new(
            "config: key `nkey_key` needs `jwt`: the user JWT, e.g. \
             `jwt = { creds_jwt = \"user.creds\" }`",
        )),
    }
}

/// The key `nkey_key` names must be a granted EdDSA key (`algorithm` is what
/// the host answered for it).
fn check_nkey_key(key: &str, algorithm: Result<String>) -> Result<()> {
    match algorithm {
        Err(e) => Err(Error::new(format!(
            "config: key `nkey_key`: {}",
            e.message()
        ))),
        Ok(alg) if alg == "EdDSA" => Ok(()),
        Ok(alg) => Err(Error::new(format!(
            "config: key `nkey_key`: key {key:?} is {alg}; NATS needs an Ed25519 key: \
             [keys.{key}] with algorithm = \"EdDSA\" and the user's NKey seed or .creds file"
        ))),
    }
}

/// The batch index that a reply subject `<inbox>.<token>` answers, if any,
/// for a batch whose tokens are `base..base + len`.
fn index_of(inbox: &str, subject: &str, base: u64, len: usize) -> Option<usize> {
    let token: u64 = subject
        .strip_prefix(inbox)?
        .strip_prefix('.')?
        .parse()
        .ok()?;
    let i = usize::try_from(token.checked_sub(base)?).ok()?;
    (i < len).then_some(i)
}

/// Appends the `HPUB` of one envelope to `out`; returns its subject, or why
/// it can never be published (a reject).
fn encode(
    template: &Template,
    envelope: &Envelope,
    reply: &str,
    max_payload: u64,
    out: &mut Vec<u8>,
) -> core::result::Result<String, String> {
    let subject = template.render(envelope).map_err(Error::into_message)?;
    proto::check_subject(&subject)?;
    let own = [
        (OWN_HEADERS[0], envelope.id.as_str()),
        (OWN_HEADERS[1], envelope.id.as_str()),
        (OWN_HEADERS[2], envelope.event_name.as_str()),
    ];
    let theirs = envelope
        .headers
        .iter()
        .filter(|(name, _)| !OWN_HEADERS.iter().any(|own| own.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.as_str(), value.as_str()));
    let headers: Vec<(&str, &str)> = own.into_iter().chain(theirs).collect();
    for (name, value) in &headers {
        proto::check_header(name, value)?;
    }
    let block = proto::header_block(headers);
    let size = (block.len() + envelope.payload.len()) as u64;
    if size > max_payload {
        return Err(format!(
            "the message is {size} bytes with its headers, over the server's max_payload of {max_payload}"
        ));
    }
    proto::encode_hpub(out, &subject, reply, &block, &envelope.payload);
    Ok(subject)
}

/// The subject of `Permissions Violation for Publish to "<subject>"`.
fn denied_subject(err: &str) -> Option<String> {
    let rest = err.strip_prefix("Permissions Violation for Publish to ")?;
    Some(rest.trim_matches('"').to_string())
}

outbox_relay_guest::export_transport!(Nats);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn envelope(headers: &[(&str, &str)], payload: &[u8]) -> Envelope {
        Envelope::new("0190-a", "order.created", payload).with_headers(headers)
    }

    fn encoded(
        template: &str,
        e: &Envelope,
        max: u64,
    ) -> core::result::Result<(String, Vec<u8>), String> {
        let mut out = Vec::new();
        let subject = encode(
            &Template::parse(template).unwrap(),
            e,
            "_INBOX.x.3",
            max,
            &mut out,
        )?;
        Ok((subject, out))
    }

    #[test]
    fn encodes_id_event_and_headers() {
        let e = envelope(
            &[
                ("traceparent", "00-1"),
                ("outbox-event", "spoofed"),
                ("tenant", "acme"),
            ],
            &[0xff, 0x00],
        );
        let (subject, out) = encoded("orders.{event}.{header.tenant}", &e, u64::MAX).unwrap();
        assert_eq!(subject, "orders.order.created.acme");
        let block = "NATS/1.0\r\nNats-Msg-Id: 0190-a\r\noutbox-message-id: 0190-a\r\n\
                     outbox-event: order.created\r\ntraceparent: 00-1\r\ntenant: acme\r\n\r\n";
        let mut expected = format!(
            "HPUB orders.order.created.acme _INBOX.x.3 {} {}\r\n{block}",
            block.len(),
            block.len() + 2
        )
        .into_bytes();
        expected.extend_from_slice(b"\xff\x00\r\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn unencodable_messages_are_rejected_with_the_reason() {
        let e = envelope(&[("x", "a\r\nb")], b"");
        assert!(
            encoded("s", &e, u64::MAX)
                .unwrap_err()
                .contains("line break")
        );
        let e = envelope(&[], b"");
        assert!(
            encoded("s.{header.tenant}", &e, u64::MAX)
                .unwrap_err()
                .contains("tenant")
        );
        assert!(encoded("s.{key}", &e, u64::MAX).is_err());
        let e = envelope(&[], &[0; 100]);
        assert!(
            encoded("s", &e, 100)
                .unwrap_err()
                .contains("max_payload of 100")
        );
        let e = Envelope {
            event_name: "has space".into(),
            ..envelope(&[], b"")
        };
        assert!(
            encoded("s.{event}", &e, u64::MAX)
                .unwrap_err()
                .contains("whitespace")
        );
    }

    #[test]
    fn credentials_come_from_the_url() {
        let a = url_auth("nats://u:p@h:4222");
        assert_eq!(
            (a.user.as_deref(), a.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert_eq!(url_auth("nats://tok@h").token.as_deref(), Some("tok"));
        assert!(url_auth("127.0.0.1:4222").token.is_none());
    }

    #[test]
    fn config_errors_name_the_key() {
        let init = |json: &str| {
            Nats::init("t", &Config::parse(json).unwrap())
                .err()
                .unwrap()
        };
        assert!(init(r#"{"subject":"s"}"#).message().contains("`url`"));
        assert!(init(r#"{"url":"h"}"#).message().contains("`subject`"));
        let e = init(r#"{"url":"h","subject":"s.{nope}"}"#);
        assert!(e.message().contains("`subject`"), "{e}");
        let e = init(r#"{"url":"h","subject":"s","ack_timeout_ms":0}"#);
        assert!(e.message().contains("`ack_timeout_ms`"), "{e}");
        let e = init(r#"{"url":"h","subject":"s","subjet":"x"}"#);
        assert!(e.message().contains("unknown key `subjet`"), "{e}");
        let e = init(r#"{"url":"h","subject":"s","password":"x"}"#);
        assert!(e.message().contains("`password` needs `user`"), "{e}");
        let e = init(r#"{"url":"h","subject":"s","jwt":"a.b.c"}"#);
        assert!(e.message().contains("`jwt` needs `nkey_key`"), "{e}");
        let e = init(r#"{"url":"h","subject":"s","nkey_key":"k"}"#);
        assert!(e.message().contains("`nkey_key` needs `jwt`"), "{e}");
        let e = init(r#"{"url":"h","subject":"s","jwt":"SUAsecret","nkey_key":"k"}"#);
        assert!(e.message().contains("key `jwt`: not a JWT"), "{e}");
        assert!(!e.message().contains("SUAsecret"), "{e}");
        // Outside a component, the host's answer: the key is looked up.
        let e = init(r#"{"url":"h","subject":"s","jwt":"a.b.c","nkey_key":"k"}"#);
        assert!(e.message().contains("key `nkey_key`"), "{e}");
    }

    #[test]
    fn the_nkey_key_must_be_an_eddsa_key() {
        assert!(check_nkey_key("nats", Ok("EdDSA".into())).is_ok());
        let e = check_nkey_key("nats", Ok("HS256".into())).unwrap_err();
        assert!(e.message().contains("key \"nats\" is HS256"), "{e}");
        let e = check_nkey_key("nats", Err(Error::new("key \"nats\" is not granted"))).unwrap_err();
        assert_eq!(
            e.message(),
            "config: key `nkey_key`: key \"nats\" is not granted"
        );
    }

    #[test]
    fn the_nonce_is_signed_and_sent_base64url_without_padding() {
        let mut signed = Vec::new();
        let sig = conn::sign_nonce("pQmN2bB1x_yW5-g", |m| {
            signed = m.to_vec();
            Ok(vec![0xfb; 64])
        })
        .unwrap();
        assert_eq!(signed, b"pQmN2bB1x_yW5-g");
        assert_eq!(sig.len(), 86, "64 bytes, no padding");
        assert!(
            sig.starts_with("-_v7") && !sig.contains(['=', '+', '/']),
            "{sig}"
        );
        let e = conn::sign_nonce("n", |_| Ok(vec![0; 32])).unwrap_err();
        assert!(e.contains("not the 64 of Ed25519"), "{e}");
        let e = conn::sign_nonce("n", |_| Err("no host".into())).unwrap_err();
        assert_eq!(e, "no host");
    }

    #[test]
    fn an_authorization_violation_says_what_to_check() {
        let settings = |auth| Settings {
            name: "n".into(),
            addr: "h:4222".into(),
            tls: false,
            connect_timeout: Duration::from_secs(1),
            auth,
        };
        let jwt = settings(conn::Auth {
            user_jwt: Some(UserJwt {
                jwt: "a.b.c".into(),
                key: "nats".into(),
            }),
            ..conn::Auth::default()
        });
        let e = conn::refused(&jwt, "Authorization Violation");
        assert!(
            e.starts_with("h:4222 refused the credentials (Authorization Violation): "),
            "{e}"
        );
        assert!(
            e.contains("key \"nats\" (`nkey_key`)") && e.contains("same .creds file"),
            "{e}"
        );
        assert!(!e.contains("a.b.c"), "{e}");
        let e = conn::refused(
            &settings(url_auth("nats://u:p@h")),
            "Authorization Violation",
        );
        assert!(e.ends_with("check `user` and `password`"), "{e}");
        let e = conn::refused(&settings(conn::Auth::default()), "Authorization Violation");
        assert!(e.contains("requires credentials"), "{e}");
        let e = conn::refused(
            &settings(conn::Auth::default()),
            "Maximum Connections Exceeded",
        );
        assert_eq!(
            e,
            "h:4222 refused the connection: Maximum Connections Exceeded"
        );
    }

    #[test]
    fn reply_subjects_map_to_batch_indexes() {
        let inbox = conn::new_inbox();
        assert!(inbox.starts_with("_INBOX.") && inbox.len() == 39, "{inbox}");
        assert_ne!(inbox, conn::new_inbox());
        assert_eq!(index_of("_INBOX.a", "_INBOX.a.12", 10, 5), Some(2));
        assert_eq!(index_of("_INBOX.a", "_INBOX.a.15", 10, 5), None);
        assert_eq!(index_of("_INBOX.a", "_INBOX.a.9", 10, 5), None);
        assert_eq!(index_of("_INBOX.a", "_INBOX.ab.12", 10, 5), None);
        assert_eq!(index_of("_INBOX.a", "_INBOX.a.x", 10, 5), None);
        assert_eq!(
            denied_subject("Permissions Violation for Publish to \"a.b\"").as_deref(),
            Some("a.b")
        );
        assert_eq!(denied_subject("Stale Connection"), None);
    }
}
