//! AMQP 0-9-1 wire format: frames, the field types, the methods this transport
//! sends and the ones it reads. No I/O here (see `conn.rs`).
//!
//! Reference: the AMQP 0-9-1 specification (sections 2.3 and 4.2) with
//! RabbitMQ's field-table type letters (its "errata" page).

use std::fmt;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Frame type, channel and payload size.
pub const FRAME_HEADER_LEN: usize = 7;
/// What a frame adds around its payload: the 7-byte header and the end octet.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

pub const CLASS_CONNECTION: u16 = 10;
pub const CLASS_CHANNEL: u16 = 20;
pub const CLASS_EXCHANGE: u16 = 40;
pub const CLASS_BASIC: u16 = 60;
pub const CLASS_CONFIRM: u16 = 85;

/// A decoding or encoding error; the connection is unusable after a decoding one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type CodecResult<T> = core::result::Result<T, CodecError>;

fn err<T>(msg: impl Into<String>) -> CodecResult<T> {
    Err(CodecError(msg.into()))
}

/// A field-table value. Encoding covers what this transport sends; decoding
/// covers every type RabbitMQ sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    LongStr(Vec<u8>),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Timestamp(u64),
    Table(Table),
    Void,
}

pub type Table = Vec<(String, Value)>;

// ---------------------------------------------------------------- encoding

pub fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// A short string: at most 255 bytes.
pub fn put_shortstr(buf: &mut Vec<u8>, s: &str) -> CodecResult<()> {
    let len = u8::try_from(s.len()).or_else(|_| {
        err(format!(
            "{} bytes is too long for an AMQP short string (at most 255): {:?}",
            s.len(),
            truncate(s, 40)
        ))
    })?;
    buf.push(len);
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

pub fn put_longstr(buf: &mut Vec<u8>, bytes: &[u8]) -> CodecResult<()> {
    put_u32(buf, len32(bytes.len())?);
    buf.extend_from_slice(bytes);
    Ok(())
}

pub fn put_table(buf: &mut Vec<u8>, table: &[(String, Value)]) -> CodecResult<()> {
    let at = buf.len();
    put_u32(buf, 0);
    for (name, value) in table {
        put_shortstr(buf, name)?;
        put_value(buf, value)?;
    }
    let len = len32(buf.len() - at - 4)?;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_value(buf: &mut Vec<u8>, value: &Value) -> CodecResult<()> {
    match value {
        Value::Bool(b) => buf.extend_from_slice(&[b't', u8::from(*b)]),
        Value::I8(v) => buf.extend_from_slice(&[b'b', v.to_be_bytes()[0]]),
        Value::U8(v) => buf.extend_from_slice(&[b'B', *v]),
        Value::I16(v) => {
            buf.push(b's');
            buf.extend_from_slice(&v.to_be_bytes());
        }
        Value::U16(v) => {
            buf.push(b'u');
            put_u16(buf, *v);
        }
        Value::I32(v) => {
            buf.push(b'I');
            buf.extend_from_slice(&v.to_be_bytes());
        }
        Value::U32(v) => {
            buf.push(b'i');
            put_u32(buf, *v);
        }
        Value::I64(v) => {
            buf.push(b'l');
            buf.extend_from_slice(&v.to_be_bytes());
        }
        Value::F32(v) => {
            buf.push(b'f');
            buf.extend_from_slice(&v.to_be_bytes());
        }
        Value::F64(v) => {
            buf.push(b'd');
            buf.extend_from_slice(&v.to_be_bytes());
        }
        Value::Decimal(scale, v) => {
            buf.extend_from_slice(&[b'D', *scale]);
            put_u32(buf, *v);
        }
        Value::LongStr(s) => {
            buf.push(b'S');
            put_longstr(buf, s)?;
        }
        Value::Bytes(s) => {
            buf.push(b'x');
            put_longstr(buf, s)?;
        }
        Value::Array(items) => {
            buf.push(b'A');
            let at = buf.len();
            put_u32(buf, 0);
            for item in items {
                put_value(buf, item)?;
            }
            let len = len32(buf.len() - at - 4)?;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Value::Timestamp(v) => {
            buf.push(b'T');
            put_u64(buf, *v);
        }
        Value::Table(t) => {
            buf.push(b'F');
            put_table(buf, t)?;
        }
        Value::Void => buf.push(b'V'),
    }
    Ok(())
}

fn len32(len: usize) -> CodecResult<u32> {
    u32::try_from(len).or_else(|_| err(format!("{len} bytes is too long for an AMQP field")))
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends one frame: type, channel, size, `payload`, frame-end.
pub fn put_frame(buf: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) -> CodecResult<()> {
    buf.push(kind);
    put_u16(buf, channel);
    put_u32(buf, len32(payload.len())?);
    buf.extend_from_slice(payload);
    buf.push(FRAME_END);
    Ok(())
}

/// The start of a method frame's payload: class and method ids.
pub fn method(class: u16, method: u16) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    put_u16(&mut buf, class);
    put_u16(&mut buf, method);
    buf
}

/// The `basic` content properties this transport sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<Table>,
    pub delivery_mode: Option<u8>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
}

// Property flags, most significant bit first, in wire order.
const P_CONTENT_TYPE: u16 = 1 << 15;
const P_CONTENT_ENCODING: u16 = 1 << 14;
const P_HEADERS: u16 = 1 << 13;
const P_DELIVERY_MODE: u16 = 1 << 12;
const P_PRIORITY: u16 = 1 << 11;
const P_CORRELATION_ID: u16 = 1 << 10;
const P_REPLY_TO: u16 = 1 << 9;
const P_EXPIRATION: u16 = 1 << 8;
const P_MESSAGE_ID: u16 = 1 << 7;
const P_TIMESTAMP: u16 = 1 << 6;
const P_TYPE: u16 = 1 << 5;

/// A content header frame's payload for a `basic` message of `body_size` bytes.
pub fn content_header(body_size: u64, props: &Properties) -> CodecResult<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    put_u16(&mut buf, CLASS_BASIC);
    put_u16(&mut buf, 0); // weight
    put_u64(&mut buf, body_size);
    let flags_at = buf.len();
    put_u16(&mut buf, 0);
    let mut flags = 0;
    if let Some(v) = &props.content_type {
        flags |= P_CONTENT_TYPE;
        put_shortstr(&mut buf, v)?;
    }
    if let Some(v) = &props.content_encoding {
        flags |= P_CONTENT_ENCODING;
        put_shortstr(&mut buf, v)?;
    }
    if let Some(v) = &props.headers {
        flags |= P_HEADERS;
        put_table(&mut buf, v)?;
    }
    if let Some(v) = props.delivery_mode {
        flags |= P_DELIVERY_MODE;
        buf.push(v);
    }
    if let Some(v) = &props.message_id {
        flags |= P_MESSAGE_ID;
        put_shortstr(&mut buf, v)?;
    }
    if let Some(v) = props.timestamp {
        flags |= P_TIMESTAMP;
        put_u64(&mut buf, v);
    }
    if let Some(v) = &props.kind {
        flags |= P_TYPE;
        put_shortstr(&mut buf, v)?;
    }
    buf[flags_at..flags_at + 2].copy_from_slice(&flags.to_be_bytes());
    Ok(buf)
}

// ---------------------------------------------------------------- decoding

/// A cursor over a frame's payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> CodecResult<&'a [u8]> {
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => err(format!(
                "truncated AMQP data: wanted {n} bytes at offset {}, have {}",
                self.pos,
                self.buf.len() - self.pos
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> CodecResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> CodecResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> CodecResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> CodecResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> CodecResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn shortstr(&mut self) -> CodecResult<String> {
        let len = self.u8()?;
        Ok(String::from_utf8_lossy(self.take(usize::from(len))?).into_owned())
    }

    pub fn longstr(&mut self) -> CodecResult<&'a [u8]> {
        let len = self.u32()?;
        self.take(len as usize)
    }

    pub fn table(&mut self) -> CodecResult<Table> {
        let mut inner = Reader::new(self.longstr()?);
        let mut table = Vec::new();
        while inner.pos < inner.buf.len() {
            let name = inner.shortstr()?;
            let value = inner.value()?;
            table.push((name, value));
        }
        Ok(table)
    }

    fn value(&mut self) -> CodecResult<Value> {
        Ok(match self.u8()? {
            b't' => Value::Bool(self.u8()? != 0),
            b'b' => Value::I8(i8::from_be_bytes(self.array()?)),
            b'B' => Value::U8(self.u8()?),
            b's' => Value::I16(i16::from_be_bytes(self.array()?)),
            b'u' => Value::U16(self.u16()?),
            b'I' => Value::I32(i32::from_be_bytes(self.array()?)),
            b'i' => Value::U32(self.u32()?),
            b'l' => Value::I64(i64::from_be_bytes(self.array()?)),
            b'f' => Value::F32(f32::from_be_bytes(self.array()?)),
            b'd' => Value::F64(f64::from_be_bytes(self.array()?)),
            b'D' => Value::Decimal(self.u8()?, self.u32()?),
            b'S' => Value::LongStr(self.longstr()?.to_vec()),
            b'x' => Value::Bytes(self.longstr()?.to_vec()),
            b'A' => {
                let mut inner = Reader::new(self.longstr()?);
                let mut items = Vec::new();
                while inner.pos < inner.buf.len() {
                    items.push(inner.value()?);
                }
                Value::Array(items)
            }
            b'T' => Value::Timestamp(self.u64()?),
            b'F' => Value::Table(self.table()?),
            b'V' => Value::Void,
            other => return err(format!("unknown AMQP field type {:?}", char::from(other))),
        })
    }
}

/// The methods this transport reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Start {
        server_properties: Table,
        mechanisms: String,
    },
    Tune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    OpenOk,
    /// `connection.close` (`channel` false) or `channel.close` (`channel` true).
    Close {
        channel: bool,
        code: u16,
        text: String,
    },
    /// `connection.close-ok` or `channel.close-ok`.
    CloseOk,
    ChannelOpenOk,
    DeclareOk,
    SelectOk,
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    /// `basic.return`; a content header and body follow.
    Return {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
    },
    Other(u16, u16),
}

impl Method {
    pub fn decode(payload: &[u8]) -> CodecResult<Method> {
        let mut r = Reader::new(payload);
        let ids = (r.u16()?, r.u16()?);
        Ok(match ids {
            (10, 10) => {
                let _major = r.u8()?;
                let _minor = r.u8()?;
                let server_properties = r.table()?;
                let mechanisms = String::from_utf8_lossy(r.longstr()?).into_owned();
                Method::Start {
                    server_properties,
                    mechanisms,
                }
            }
            (10, 30) => Method::Tune {
                channel_max: r.u16()?,
                frame_max: r.u32()?,
                heartbeat: r.u16()?,
            },
            (10, 41) => Method::OpenOk,
            (10, 50) | (20, 40) => Method::Close {
                channel: ids.0 == CLASS_CHANNEL,
                code: r.u16()?,
                text: r.shortstr()?,
            },
            (10, 51) | (20, 41) => Method::CloseOk,
            (20, 11) => Method::ChannelOpenOk,
            (40, 11) => Method::DeclareOk,
            (85, 11) => Method::SelectOk,
            (60, 80) => Method::Ack {
                tag: r.u64()?,
                multiple: r.u8()? & 1 != 0,
            },
            (60, 120) => Method::Nack {
                tag: r.u64()?,
                multiple: r.u8()? & 1 != 0,
            },
            (60, 50) => Method::Return {
                code: r.u16()?,
                text: r.shortstr()?,
                exchange: r.shortstr()?,
                routing_key: r.shortstr()?,
            },
            (class, method) => Method::Other(class, method),
        })
    }
}

/// A content header frame's body size and message id (the rest is skipped).
pub fn decode_content_header(payload: &[u8]) -> CodecResult<(u64, Option<String>)> {
    let mut r = Reader::new(payload);
    let _class = r.u16()?;
    let _weight = r.u16()?;
    let size = r.u64()?;
    let flags = r.u16()?;
    // Bit 0 announces another flags word; `basic` defines no such properties.
    let mut more = flags & 1 != 0;
    while more {
        more = r.u16()? & 1 != 0;
    }
    let has = |bit: u16| flags & bit != 0;
    for (bit, skip) in [
        (P_CONTENT_TYPE, Skip::Short),
        (P_CONTENT_ENCODING, Skip::Short),
        (P_HEADERS, Skip::Long),
        (P_DELIVERY_MODE, Skip::Octet),
        (P_PRIORITY, Skip::Octet),
        (P_CORRELATION_ID, Skip::Short),
        (P_REPLY_TO, Skip::Short),
        (P_EXPIRATION, Skip::Short),
    ] {
        if has(bit) {
            match skip {
                Skip::Short => drop(r.shortstr()?),
                Skip::Long => drop(r.longstr()?),
                Skip::Octet => drop(r.u8()?),
            }
        }
    }
    let message_id = if has(P_MESSAGE_ID) {
        Some(r.shortstr()?)
    } else {
        None
    };
    Ok((size, message_id))
}

enum Skip {
    Short,
    Long,
    Octet,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_length_prefixed_and_at_most_255_bytes() {
        let mut buf = Vec::new();
        put_shortstr(&mut buf, "abc").unwrap();
        assert_eq!(buf, b"\x03abc");
        assert_eq!(Reader::new(&buf).shortstr().unwrap(), "abc");
        let mut buf = Vec::new();
        put_shortstr(&mut buf, &"x".repeat(255)).unwrap();
        assert_eq!(buf.len(), 256);
        let e = put_shortstr(&mut Vec::new(), &"é".repeat(128)).unwrap_err();
        assert!(e.0.contains("256 bytes"), "{e}");
    }

    #[test]
    fn tables_round_trip_with_every_type() {
        let table: Table = vec![
            ("s".into(), Value::LongStr(b"caf\xc3\xa9 \x00\xff".to_vec())),
            ("t".into(), Value::Bool(true)),
            ("b".into(), Value::I8(-2)),
            ("B".into(), Value::U8(200)),
            ("i16".into(), Value::I16(-300)),
            ("u16".into(), Value::U16(60000)),
            ("I".into(), Value::I32(-70000)),
            ("i".into(), Value::U32(4_000_000_000)),
            ("l".into(), Value::I64(-1 << 40)),
            ("f".into(), Value::F32(1.5)),
            ("d".into(), Value::F64(-2.25)),
            ("D".into(), Value::Decimal(2, 12345)),
            ("x".into(), Value::Bytes(vec![0, 1, 2])),
            (
                "A".into(),
                Value::Array(vec![Value::U8(1), Value::LongStr(b"two".to_vec())]),
            ),
            ("T".into(), Value::Timestamp(1_700_000_000)),
            (
                "F".into(),
                Value::Table(vec![("inner".into(), Value::Bool(false))]),
            ),
            ("V".into(), Value::Void),
        ];
        let mut buf = Vec::new();
        put_table(&mut buf, &table).unwrap();
        let mut r = Reader::new(&buf);
        assert_eq!(r.table().unwrap(), table);
        assert_eq!(r.pos, buf.len());
    }

    #[test]
    fn a_table_is_a_length_then_name_type_value_entries() {
        let mut buf = Vec::new();
        put_table(&mut buf, &[("k".into(), Value::LongStr(b"v".to_vec()))]).unwrap();
        assert_eq!(buf, b"\x00\x00\x00\x08\x01kS\x00\x00\x00\x01v");
        let mut empty = Vec::new();
        put_table(&mut empty, &[]).unwrap();
        assert_eq!(empty, [0, 0, 0, 0]);
    }

    #[test]
    fn truncated_or_unknown_data_is_an_error() {
        assert!(Reader::new(b"\x05ab").shortstr().is_err());
        assert!(Reader::new(b"\x00\x00\x00\x03\x01kZ").table().is_err());
        assert!(
            Reader::new(b"\x00\x00\x00\x09\x01kS\x00\x00\x00\x05v")
                .table()
                .is_err()
        );
    }

    #[test]
    fn frames_wrap_the_payload() {
        let mut buf = Vec::new();
        put_frame(&mut buf, FRAME_METHOD, 1, &method(85, 10)).unwrap();
        assert_eq!(buf, [1, 0, 1, 0, 0, 0, 4, 0, 85, 0, 10, 0xCE]);
    }

    #[test]
    fn methods_decode() {
        let mut ack = method(60, 80);
        put_u64(&mut ack, 7);
        ack.push(1);
        assert_eq!(
            Method::decode(&ack).unwrap(),
            Method::Ack {
                tag: 7,
                multiple: true
            }
        );
        let mut close = method(20, 40);
        put_u16(&mut close, 404);
        put_shortstr(&mut close, "NOT_FOUND - no exchange 'x'").unwrap();
        put_u16(&mut close, 60);
        put_u16(&mut close, 40);
        assert_eq!(
            Method::decode(&close).unwrap(),
            Method::Close {
                channel: true,
                code: 404,
                text: "NOT_FOUND - no exchange 'x'".into()
            }
        );
        let mut ret = method(60, 50);
        put_u16(&mut ret, 312);
        for s in ["NO_ROUTE", "ex", "rk"] {
            put_shortstr(&mut ret, s).unwrap();
        }
        assert_eq!(
            Method::decode(&ret).unwrap(),
            Method::Return {
                code: 312,
                text: "NO_ROUTE".into(),
                exchange: "ex".into(),
                routing_key: "rk".into()
            }
        );
        assert_eq!(
            Method::decode(&method(10, 40)).unwrap(),
            Method::Other(10, 40)
        );
        assert_eq!(Method::decode(&method(10, 51)).unwrap(), Method::CloseOk);
        assert!(Method::decode(&[0, 60]).is_err());
    }

    #[test]
    fn content_headers_carry_the_properties_in_flag_order() {
        let props = Properties {
            content_type: Some("application/json".into()),
            content_encoding: None,
            headers: Some(vec![("a".into(), Value::LongStr(b"b".to_vec()))]),
            delivery_mode: Some(2),
            message_id: Some("0190-id".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order.created".into()),
        };
        let buf = content_header(42, &props).unwrap();
        let mut r = Reader::new(&buf);
        assert_eq!((r.u16().unwrap(), r.u16().unwrap()), (60, 0));
        assert_eq!(r.u64().unwrap(), 42);
        assert_eq!(
            r.u16().unwrap(),
            P_CONTENT_TYPE | P_HEADERS | P_DELIVERY_MODE | P_MESSAGE_ID | P_TIMESTAMP | P_TYPE
        );
        assert_eq!(r.shortstr().unwrap(), "application/json");
        assert_eq!(
            r.table().unwrap(),
            vec![("a".to_string(), Value::LongStr(b"b".to_vec()))]
        );
        assert_eq!(r.u8().unwrap(), 2);
        assert_eq!(r.shortstr().unwrap(), "0190-id");
        assert_eq!(r.u64().unwrap(), 1_700_000_000);
        assert_eq!(r.shortstr().unwrap(), "order.created");
        assert_eq!(r.pos, buf.len());

        assert_eq!(
            decode_content_header(&buf).unwrap(),
            (42, Some("0190-id".to_string()))
        );
        let bare = content_header(0, &Properties::default()).unwrap();
        assert_eq!(decode_content_header(&bare).unwrap(), (0, None));
    }
}
