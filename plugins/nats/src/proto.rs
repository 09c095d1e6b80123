//! The slice of the NATS client protocol this transport speaks, sans I/O.
//!
//! Client → server: `CONNECT`, `SUB`, `HPUB`, `PING`, `PONG`.
//! Server → client: `INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`.
//! Every control line ends in `\r\n`; `MSG`/`HMSG` are followed by their
//! bytes and another `\r\n`. See <https://docs.nats.io/reference/reference-protocols/nats-protocol>.

use serde::{Deserialize, Serialize};

/// Longest control line accepted before the parser gives up (`INFO` lines
/// carry cluster URLs and can be long; no legitimate one comes near this).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(String),
    Msg {
        subject: String,
        reply: Option<String>,
        /// The raw header block (`NATS/1.0 ...\r\n...\r\n\r\n`) of an `HMSG`.
        headers: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Parses the first complete operation in `buf`. Returns it and how many
/// bytes it took, `None` when more bytes are needed, or an error when the
/// bytes are not the NATS protocol.
pub fn parse(buf: &[u8]) -> Result<Option<(ServerOp, usize)>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > MAX_CONTROL_LINE {
            Err(format!("control line longer than {MAX_CONTROL_LINE} bytes"))
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&buf[..eol]).map_err(|_| "control line is not UTF-8".to_string())?;
    let after_line = eol + 2;
    let (op, rest) = line
        .split_once([' ', '\t'])
        .map_or((line, ""), |(op, rest)| (op, rest.trim()));
    let simple = |op| Ok(Some((op, after_line)));
    match op.to_ascii_uppercase().as_str() {
        "PING" => simple(ServerOp::Ping),
        "PONG" => simple(ServerOp::Pong),
        "+OK" => simple(ServerOp::Ok),
        "-ERR" => simple(ServerOp::Err(rest.trim_matches('\'').to_string())),
        "INFO" => simple(ServerOp::Info(rest.to_string())),
        "MSG" | "HMSG" => {
            let has_headers = op.eq_ignore_ascii_case("HMSG");
            let args: Vec<&str> = rest.split_ascii_whitespace().collect();
            let sizes = if has_headers { 2 } else { 1 };
            // subject sid [reply] [hdr_len] total_len
            if args.len() != 2 + sizes && args.len() != 3 + sizes {
                return Err(format!("malformed {op} line: {line:?}"));
            }
            let number = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| format!("malformed {op} line: {line:?}"))
            };
            let total = number(args[args.len() - 1])?;
            let header_len = if has_headers {
                number(args[args.len() - 2])?
            } else {
                0
            };
            if header_len > total {
                return Err(format!("malformed {op} line: {line:?}"));
            }
            let end = after_line + total;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(format!("{op} payload is not followed by CRLF"));
            }
            let reply = (args.len() == 3 + sizes).then(|| args[2].to_string());
            let (headers, payload) = buf[after_line..end].split_at(header_len);
            Ok(Some((
                ServerOp::Msg {
                    subject: args[0].to_string(),
                    reply,
                    headers: has_headers.then(|| headers.to_vec()),
                    payload: payload.to_vec(),
                },
                end + 2,
            )))
        }
        _ => Err(format!("unknown operation {line:?}")),
    }
}

/// The status line of a header block: `NATS/1.0 503` → `(503, "")`,
/// `NATS/1.0 408 Request Timeout` → `(408, "Request Timeout")`; `None` when
/// it carries no status (plain headers).
pub fn status(headers: &[u8]) -> Option<(u16, String)> {
    let first = headers.split(|b| *b == b'\n').next()?;
    let first = std::str::from_utf8(first).ok()?.trim_end();
    let rest = first.strip_prefix("NATS/1.0")?.trim_start();
    let (code, description) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((code.parse().ok()?, description.trim().to_string()))
}

/// What the server says about itself, first thing on a connection.
#[derive(Debug, Default, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub headers: bool,
    pub max_payload: Option<u64>,
    #[serde(default)]
    pub tls_required: bool,
    /// The server takes TLS and plaintext alike (`allow_non_tls`).
    #[serde(default)]
    pub tls_available: bool,
    #[serde(default)]
    pub jetstream: bool,
    pub version: Option<String>,
    /// Sent by a server that takes NKey or JWT authentication: the client
    /// signs it with the user's seed (`sig` in `CONNECT`).
    pub nonce: Option<String>,
}

/// The `CONNECT` options this transport sends.
#[derive(Debug, Serialize)]
pub struct Connect<'a> {
    pub verbose: bool,
    pub pedantic: bool,
    pub tls_required: bool,
    pub name: &'a str,
    pub lang: &'a str,
    pub version: &'a str,
    pub protocol: u8,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<&'a str>,
    /// The user JWT (decentralised auth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<&'a str>,
    /// base64url (no padding) of the Ed25519 signature of the `INFO` nonce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<&'a str>,
}

/// Appends `CONNECT {...}\r\n`.
pub fn encode_connect(out: &mut Vec<u8>, connect: &Connect<'_>) -> Result<(), String> {
    out.extend_from_slice(b"CONNECT ");
    serde_json::to_writer(&mut *out, connect).map_err(|e| e.to_string())?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Appends `SUB <subject> <sid>\r\n`.
pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// The header block of a message: `NATS/1.0\r\n` then `Name: value\r\n` per
/// header, then an empty line. Names and values must have passed
/// [`check_header`].
pub fn header_block<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// Appends `HPUB <subject> <reply> <hdr_len> <total_len>\r\n<headers><payload>\r\n`.
pub fn encode_hpub(out: &mut Vec<u8>, subject: &str, reply: &str, headers: &[u8], payload: &[u8]) {
    let total = headers.len() + payload.len();
    out.extend_from_slice(
        format!("HPUB {subject} {reply} {} {total}\r\n", headers.len()).as_bytes(),
    );
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Whether `subject` can be published to: non-empty dot-separated tokens of
/// printable characters, no wildcard token.
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".into());
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "subject {subject:?} contains {c:?}; subjects cannot hold whitespace or control characters"
        ));
    }
    for token in subject.split('.') {
        match token {
            "" => return Err(format!("subject {subject:?} has an empty token")),
            "*" | ">" => {
                return Err(format!(
                    "subject {subject:?} has the wildcard token {token:?}; one cannot publish to a wildcard"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a header can travel in a NATS header block: a name of printable
/// ASCII without `:`, and a value without line breaks.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!(
            "header name {name:?} cannot travel in NATS headers (printable ASCII without `:` only)"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!(
            "the value of header {name:?} holds a line break, which NATS headers cannot carry"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> (ServerOp, usize) {
        parse(buf).unwrap().unwrap()
    }

    #[test]
    fn parses_simple_operations() {
        assert_eq!(one(b"PING\r\n"), (ServerOp::Ping, 6));
        assert_eq!(one(b"pong\r\nPING\r\n"), (ServerOp::Pong, 6));
        assert_eq!(one(b"+OK\r\n"), (ServerOp::Ok, 5));
        assert_eq!(
            one(b"-ERR 'Authorization Violation'\r\n").0,
            ServerOp::Err("Authorization Violation".into())
        );
        assert_eq!(
            one(b"INFO {\"headers\":true} \r\n").0,
            ServerOp::Info("{\"headers\":true}".into())
        );
    }

    #[test]
    fn parses_msg_with_and_without_reply() {
        let (op, used) = one(b"MSG _INBOX.a.1 1 11\r\n{\"seq\":12}X\r\nPING\r\n");
        assert_eq!(used, 34);
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: "_INBOX.a.1".into(),
                reply: None,
                headers: None,
                payload: b"{\"seq\":12}X".to_vec(),
            }
        );
        let (op, _) = one(b"MSG a 9 reply.to 2\r\n\xff\x00\r\n");
        let ServerOp::Msg { reply, payload, .. } = op else {
            panic!()
        };
        assert_eq!(reply.as_deref(), Some("reply.to"));
        assert_eq!(payload, [0xff, 0]);
    }

    #[test]
    fn parses_hmsg_and_its_status() {
        // What nats-server sends for a request nobody answers.
        let buf = b"HMSG _INBOX.x.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n";
        let (op, used) = one(buf);
        assert_eq!(used, buf.len());
        let ServerOp::Msg {
            subject,
            headers,
            payload,
            ..
        } = op
        else {
            panic!()
        };
        assert_eq!(subject, "_INBOX.x.1");
        assert!(payload.is_empty());
        assert_eq!(status(&headers.unwrap()), Some((503, String::new())));
        assert_eq!(
            status(b"NATS/1.0 408 Request Timeout\r\n\r\n"),
            Some((408, "Request Timeout".into()))
        );
        assert_eq!(status(b"NATS/1.0\r\nA: b\r\n\r\n"), None);
    }

    #[test]
    fn waits_for_whole_operations() {
        let full = b"HMSG s 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(one(full).1, full.len());
    }

    #[test]
    fn rejects_what_is_not_the_protocol() {
        assert!(parse(b"HELLO\r\n").is_err());
        assert!(parse(b"MSG a 1\r\n").is_err());
        assert!(parse(b"MSG a 1 x\r\n").is_err());
        assert!(parse(b"HMSG a 1 5 2\r\n").is_err());
        assert!(parse(b"MSG a 1 2\r\nabXY").is_err());
        assert!(parse(&vec![b'A'; MAX_CONTROL_LINE + 1]).is_err());
    }

    #[test]
    fn encodes_hpub_with_headers() {
        let headers = header_block([("Nats-Msg-Id", "id-1"), ("x-a", "b c")]);
        assert_eq!(
            headers,
            b"NATS/1.0\r\nNats-Msg-Id: id-1\r\nx-a: b c\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_hpub(
            &mut out,
            "orders.created",
            "_INBOX.z.7",
            &headers,
            &[0, 0xff],
        );
        let mut expected = b"HPUB orders.created _INBOX.z.7 41 43\r\n".to_vec();
        expected.extend_from_slice(&headers);
        expected.extend_from_slice(b"\x00\xff\r\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn encodes_connect_and_sub() {
        let mut out = Vec::new();
        let connect = Connect {
            verbose: false,
            pedantic: false,
            tls_required: false,
            name: "n",
            lang: "rust",
            version: "1",
            protocol: 1,
            echo: false,
            headers: true,
            no_responders: true,
            user: None,
            pass: None,
            auth_token: Some("t"),
            jwt: None,
            sig: None,
        };
        encode_connect(&mut out, &connect).unwrap();
        encode_sub(&mut out, "_INBOX.a.*", 1);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("CONNECT {\"verbose\":false,"), "{text}");
        assert!(text.contains("\"headers\":true,\"no_responders\":true"));
        assert!(text.contains("\"auth_token\":\"t\"") && !text.contains("\"user\""));
        assert!(text.ends_with("}\r\nSUB _INBOX.a.* 1\r\n"), "{text}");
        assert!(
            !text.contains("\"jwt\"") && !text.contains("\"sig\""),
            "{text}"
        );

        let mut out = Vec::new();
        let connect = Connect {
            auth_token: None,
            jwt: Some("h.c.s"),
            sig: Some("c2ln"),
            ..connect
        };
        encode_connect(&mut out, &connect).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(",\"jwt\":\"h.c.s\",\"sig\":\"c2ln\"}\r\n"),
            "{text}"
        );
    }

    #[test]
    fn info_carries_the_nonce() {
        let info: Info = serde_json::from_str(
            r#"{"server_id":"N","headers":true,"auth_required":true,"nonce":"pQmN2bB1x_yW5-g"}"#,
        )
        .unwrap();
        assert_eq!(info.nonce.as_deref(), Some("pQmN2bB1x_yW5-g"));
        let info: Info = serde_json::from_str(r#"{"headers":true}"#).unwrap();
        assert_eq!(info.nonce, None);
    }

    #[test]
    fn checks_subjects_and_headers() {
        assert!(check_subject("orders.created.v1").is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject("a.").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_subject("a.*").is_err());
        assert!(check_subject("a.>").is_err());
        assert!(check_subject("a.b*").is_ok());
        assert!(check_header("traceparent", "00-ab").is_ok());
        assert!(check_header("a:b", "x").is_err());
        assert!(check_header("a b", "x").is_err());
        assert!(check_header("", "x").is_err());
        assert!(check_header("a", "x\r\nEvil: 1").is_err());
    }
}
