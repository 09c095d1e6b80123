//! The part of MQTT 5 a QoS 1 publisher needs: CONNECT, PUBLISH, and reading
//! CONNACK, PUBACK, DISCONNECT (and PINGRESP, which is ignored).

use std::io::{self, BufRead};

pub const CONNACK: u8 = 2;
pub const PUBACK: u8 = 4;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Largest packet this client accepts from the broker: it only expects acks.
const MAX_INCOMING: usize = 1024 * 1024;
/// MQTT's largest remaining length (four bytes of variable byte integer).
pub const MAX_REMAINING: usize = 268_435_455;

// Property identifiers used here.
const CONTENT_TYPE: u8 = 0x03;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A variable byte integer from the front of `buf`, advancing it.
pub fn get_varint(buf: &mut &[u8]) -> io::Result<usize> {
    let mut n = 0usize;
    for i in 0..4 {
        let byte = get_u8(buf)?;
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(invalid("variable byte integer longer than 4 bytes"))
}

fn put_bin(out: &mut Vec<u8>, data: &[u8]) {
    // Callers check lengths first (see `check_str`); a longer value is cut
    // rather than corrupting the packet.
    let len = data.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&data[..len]);
}

/// Whether `s` can travel as an MQTT UTF-8 string (at most 65,535 bytes, no
/// NUL); the error says what is wrong.
pub fn check_str(what: &str, s: &str) -> Result<(), String> {
    if s.len() > usize::from(u16::MAX) {
        return Err(format!(
            "{what} is {} bytes long; MQTT allows 65535",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!(
            "{what} contains a NUL character, which MQTT forbids"
        ));
    }
    Ok(())
}

/// Appends a fixed header (type and flags, remaining length) and `body`.
fn packet(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    out.push(first);
    put_varint(out, body.len());
    out.extend_from_slice(body);
}

pub struct Connect<'a> {
    pub client_id: &'a str,
    pub keep_alive_secs: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// CONNECT for MQTT 5 with Clean Start and no will.
pub fn encode_connect(c: &Connect) -> Vec<u8> {
    let mut body = Vec::new();
    put_bin(&mut body, b"MQTT");
    body.push(5);
    let mut flags = 0x02; // Clean Start
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive_secs.to_be_bytes());
    put_varint(&mut body, 0); // no properties
    put_bin(&mut body, c.client_id.as_bytes());
    if let Some(user) = c.username {
        put_bin(&mut body, user.as_bytes());
    }
    if let Some(password) = c.password {
        put_bin(&mut body, password);
    }
    let mut out = Vec::new();
    packet(&mut out, 0x10, &body);
    out
}

pub struct Publish<'a> {
    pub topic: &'a str,
    pub packet_id: u16,
    pub retain: bool,
    pub content_type: Option<&'a str>,
    pub user_properties: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// PUBLISH at QoS 1, appended to `out`; returns the packet's size in bytes.
/// String lengths must have been checked with [`check_str`].
pub fn encode_publish(out: &mut Vec<u8>, p: &Publish) -> usize {
    let mut props = Vec::new();
    if let Some(content_type) = p.content_type {
        props.push(CONTENT_TYPE);
        put_bin(&mut props, content_type.as_bytes());
    }
    for (name, value) in p.user_properties {
        props.push(USER_PROPERTY);
        put_bin(&mut props, name.as_bytes());
        put_bin(&mut props, value.as_bytes());
    }
    let mut body = Vec::with_capacity(p.topic.len() + props.len() + p.payload.len() + 16);
    put_bin(&mut body, p.topic.as_bytes());
    body.extend_from_slice(&p.packet_id.to_be_bytes());
    put_varint(&mut body, props.len());
    body.extend_from_slice(&props);
    body.extend_from_slice(p.payload);
    let start = out.len();
    packet(out, 0x30 | 0x02 | u8::from(p.retain), &body);
    out.len() - start
}

/// Reads one packet: (type, flags, body). The body is bounded, as this
/// client only expects small acknowledgements.
pub fn read_packet(r: &mut impl BufRead) -> io::Result<(u8, u8, Vec<u8>)> {
    let mut first = [0u8];
    r.read_exact(&mut first)?;
    let mut len = 0usize;
    for i in 0..4 {
        let mut byte = [0u8];
        r.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(invalid("remaining length longer than 4 bytes"));
        }
    }
    if len > MAX_INCOMING {
        return Err(invalid("packet from the broker too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((first[0] >> 4, first[0] & 0x0f, body))
}

/// What a CONNACK says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub reason: u8,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub server_keep_alive: Option<u16>,
}

pub fn decode_connack(mut body: &[u8]) -> io::Result<ConnAck> {
    let buf = &mut body;
    let _session_present = get_u8(buf)?;
    let mut ack = ConnAck {
        reason: get_u8(buf)?,
        ..ConnAck::default()
    };
    // An MQTT 3.1.1 broker answers a version-5 CONNECT with a 2-byte CONNACK.
    if buf.is_empty() {
        return Ok(ack);
    }
    for (id, value) in properties(buf)? {
        match (id, value) {
            (REASON_STRING, Prop::Str(s)) => ack.reason_string = Some(s),
            (RECEIVE_MAXIMUM, Prop::Int(n)) => ack.receive_maximum = u16::try_from(n).ok(),
            (MAXIMUM_QOS, Prop::Int(n)) => ack.maximum_qos = u8::try_from(n).ok(),
            (RETAIN_AVAILABLE, Prop::Int(n)) => ack.retain_available = Some(n != 0),
            (MAXIMUM_PACKET_SIZE, Prop::Int(n)) => ack.maximum_packet_size = Some(n),
            (SERVER_KEEP_ALIVE, Prop::Int(n)) => ack.server_keep_alive = u16::try_from(n).ok(),
            _ => {}
        }
    }
    Ok(ack)
}

/// A PUBACK or a DISCONNECT's reason code and reason string. PUBACK also has
/// a packet id (`None` for DISCONNECT).
#[derive(Debug, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: Option<u16>,
    pub reason: u8,
    pub reason_string: Option<String>,
}

pub fn decode_puback(mut body: &[u8]) -> io::Result<Ack> {
    let buf = &mut body;
    let id = u16::from_be_bytes([get_u8(buf)?, get_u8(buf)?]);
    let mut ack = decode_reason(buf)?;
    ack.packet_id = Some(id);
    Ok(ack)
}

pub fn decode_disconnect(mut body: &[u8]) -> io::Result<Ack> {
    decode_reason(&mut body)
}

/// Reason code (0 when absent) and optional properties.
fn decode_reason(buf: &mut &[u8]) -> io::Result<Ack> {
    let reason = if buf.is_empty() { 0 } else { get_u8(buf)? };
    let mut reason_string = None;
    if !buf.is_empty() {
        for (id, value) in properties(buf)? {
            if let (REASON_STRING, Prop::Str(s)) = (id, value) {
                reason_string = Some(s);
            }
        }
    }
    Ok(Ack {
        packet_id: None,
        reason,
        reason_string,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Prop {
    Int(u32),
    Str(String),
    Bin,
    Pair,
}

/// A property list (length-prefixed), each value decoded by its identifier's
/// type, so unknown-to-us properties are skipped correctly.
fn properties(buf: &mut &[u8]) -> io::Result<Vec<(u8, Prop)>> {
    let len = get_varint(buf)?;
    if len > buf.len() {
        return Err(invalid("property length past the end of the packet"));
    }
    let (mut props, rest) = buf.split_at(len);
    *buf = rest;
    let p = &mut props;
    let mut out = Vec::new();
    while !p.is_empty() {
        let id = get_u8(p)?;
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Prop::Int(get_u8(p)?.into()),
            0x13 | 0x21 | 0x22 | 0x23 => {
                Prop::Int(u16::from_be_bytes([get_u8(p)?, get_u8(p)?]).into())
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                let b = take(p, 4)?;
                Prop::Int(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            0x0B => Prop::Int(get_varint(p)? as u32),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                Prop::Str(String::from_utf8_lossy(get_bin(p)?).into_owned())
            }
            0x09 | 0x16 => {
                get_bin(p)?;
                Prop::Bin
            }
            0x26 => {
                get_bin(p)?;
                get_bin(p)?;
                Prop::Pair
            }
            other => return Err(invalid(&format!("unknown property 0x{other:02x}"))),
        };
        out.push((id, value));
    }
    Ok(out)
}

fn get_u8(buf: &mut &[u8]) -> io::Result<u8> {
    Ok(take(buf, 1)?[0])
}

fn get_bin<'a>(buf: &mut &'a [u8]) -> io::Result<&'a [u8]> {
    let len = u16::from_be_bytes([get_u8(buf)?, get_u8(buf)?]);
    take(buf, len.into())
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if buf.len() < n {
        return Err(invalid("packet ends early"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed MQTT packet: {what}"),
    )
}

/// The name of an MQTT 5 reason code, for error messages.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x04 => "disconnect with will message",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9F => "connection rate exceeded",
        _ => "unknown reason code",
    }
}

/// `name (0xNN): reason string` for messages.
pub fn describe(code: u8, reason_string: Option<&str>) -> String {
    let mut s = format!("{} (0x{code:02x})", reason_name(code));
    if let Some(r) = reason_string.filter(|r| !r.is_empty()) {
        s.push_str(": ");
        s.push_str(r);
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn variable_byte_integers_round_trip_at_every_width() {
        for (n, bytes) in [
            (0, &[0x00][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING, &[0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(out, bytes, "{n}");
            assert_eq!(get_varint(&mut &out[..]).unwrap(), n);
        }
        assert!(get_varint(&mut &[0xff, 0xff, 0xff, 0xff, 0x01][..]).is_err());
        assert!(get_varint(&mut &[0x80][..]).is_err());
    }

    #[test]
    fn connect_is_mqtt5_with_clean_start_and_credentials() {
        let bytes = encode_connect(&Connect {
            client_id: "c1",
            keep_alive_secs: 60,
            username: Some("u"),
            password: Some(b"p\0w"),
        });
        assert_eq!(
            bytes,
            [
                0x10, 23, // CONNECT, remaining length
                0, 4, b'M', b'Q', b'T', b'T', 5, // protocol name and level
                0xC2, 0, 60,
                0, // flags (user, password, clean start), keep alive, no properties
                0, 2, b'c', b'1', 0, 1, b'u', 0, 3, b'p', 0, b'w',
            ]
        );
        let bare = encode_connect(&Connect {
            client_id: "c",
            keep_alive_secs: 0,
            username: None,
            password: None,
        });
        assert_eq!(bare[9], 0x02);
    }

    #[test]
    fn publish_has_qos1_packet_id_and_properties_in_order() {
        let mut out = vec![0xAA];
        let size = encode_publish(
            &mut out,
            &Publish {
                topic: "a/b",
                packet_id: 0x0102,
                retain: true,
                content_type: Some("j"),
                user_properties: &[("k", "v")],
                payload: &[0xff, 0x00],
            },
        );
        assert_eq!(size, out.len() - 1);
        assert_eq!(
            &out[1..],
            [
                0x33, 21, // PUBLISH, QoS 1, retain
                0, 3, b'a', b'/', b'b', 0x01, 0x02, // topic, packet id
                11,   // properties length
                0x03, 0, 1, b'j', // content type
                0x26, 0, 1, b'k', 0, 1, b'v', // user property
                0xff, 0x00, // payload
            ]
        );
    }

    #[test]
    fn a_large_publish_has_a_multi_byte_length() {
        let payload = vec![7u8; 200];
        let mut out = Vec::new();
        encode_publish(
            &mut out,
            &Publish {
                topic: "t",
                packet_id: 1,
                retain: false,
                content_type: None,
                user_properties: &[],
                payload: &payload,
            },
        );
        assert_eq!(out[0], 0x32);
        let (kind, flags, body) = read_packet(&mut &out[..]).unwrap();
        assert_eq!((kind, flags, body.len()), (3, 2, 206));
        assert!(body.ends_with(&payload));
    }

    #[test]
    fn connack_properties_are_read_and_unknown_ones_skipped() {
        let body = [
            0x00, 0x00, // no session, success
            30,   // properties length
            0x21, 0, 20, // receive maximum 20
            0x24, 1, // maximum QoS 1
            0x25, 0, // retain not available
            0x27, 0, 0, 0x10, 0, // maximum packet size 4096
            0x13, 0, 30, // server keep alive
            0x12, 0, 2, b'i', b'd', // assigned client id (skipped)
            0x26, 0, 1, b'a', 0, 1, b'b', // user property (skipped)
            0x1F, 0, 0, // empty reason string
        ];
        let ack = decode_connack(&body).unwrap();
        assert_eq!(
            ack,
            ConnAck {
                reason: 0,
                reason_string: Some(String::new()),
                receive_maximum: Some(20),
                maximum_qos: Some(1),
                retain_available: Some(false),
                maximum_packet_size: Some(4096),
                server_keep_alive: Some(30),
            }
        );
    }

    #[test]
    fn refusals_and_old_brokers_are_understood() {
        let ack = decode_connack(&[0, 0x86, 5, 0x1F, 0, 2, b'n', b'o']).unwrap();
        assert_eq!(ack.reason, 0x86);
        assert_eq!(
            describe(ack.reason, ack.reason_string.as_deref()),
            "bad user name or password (0x86): no"
        );
        // MQTT 3.1.1: "unacceptable protocol version", no properties.
        assert_eq!(decode_connack(&[0, 0x01]).unwrap().reason, 0x01);
        assert!(decode_connack(&[0]).is_err());
        assert!(decode_connack(&[0, 0, 9, 0x21]).is_err());
        assert!(decode_connack(&[0, 0, 2, 0x7e, 0]).is_err());
    }

    #[test]
    fn puback_in_its_short_and_long_forms() {
        let short = decode_puback(&[0x12, 0x34]).unwrap();
        assert_eq!((short.packet_id, short.reason), (Some(0x1234), 0));
        let code_only = decode_puback(&[0, 7, 0x10]).unwrap();
        assert_eq!((code_only.packet_id, code_only.reason), (Some(7), 0x10));
        let full = decode_puback(&[0, 7, 0x87, 6, 0x1F, 0, 3, b'a', b'c', b'l']).unwrap();
        assert_eq!(full.reason, 0x87);
        assert_eq!(full.reason_string.as_deref(), Some("acl"));
        assert!(decode_puback(&[0]).is_err());
    }

    #[test]
    fn disconnect_with_and_without_reason() {
        assert_eq!(decode_disconnect(&[]).unwrap().reason, 0);
        let d = decode_disconnect(&[0x8E, 0]).unwrap();
        assert_eq!(describe(d.reason, None), "session taken over (0x8e)");
    }

    #[test]
    fn read_packet_refuses_oversized_and_truncated_packets() {
        let mut big = vec![0x30];
        put_varint(&mut big, MAX_INCOMING + 1);
        assert!(read_packet(&mut &big[..]).is_err());
        assert!(read_packet(&mut &[0x40, 2, 0][..]).is_err());
        assert!(read_packet(&mut &[0x40, 0xff, 0xff, 0xff, 0xff][..]).is_err());
        assert_eq!(
            read_packet(&mut &[0xD0, 0][..]).unwrap(),
            (PINGRESP, 0, vec![])
        );
    }

    #[test]
    fn strings_are_checked_before_encoding() {
        assert!(check_str("topic", "a/b").is_ok());
        assert!(check_str("topic", "a\0b").unwrap_err().contains("NUL"));
        assert!(
            check_str("topic", &"x".repeat(70_000))
                .unwrap_err()
                .contains("65535")
        );
    }
}
