//! The few pieces of RESP2 (the Redis protocol) this transport needs: encoding
//! a command as an array of bulk strings, and reading one reply.

use std::io::{self, BufRead};

/// The longest bulk string or array a reply may announce; anything larger is
/// a corrupt stream rather than a reply to XADD, AUTH or SELECT.
const MAX_LEN: usize = 64 * 1024 * 1024;
/// How deeply arrays may nest in a reply.
const MAX_DEPTH: usize = 8;

/// Appends `args` to `out` as one command (`*N` then `$len` bulk strings).
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the whole line, prefix included.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`; `None` for the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`; `None` for the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

/// Reads one reply. An `Err` means the connection can no longer be trusted:
/// an I/O error, an early end of stream or bytes that are not RESP2.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    read_at(r, 0)
}

fn read_at(r: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| invalid("empty reply line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    Ok(match kind {
        b'+' => Reply::Simple(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Integer(number(rest)?),
        b'$' => match length(rest)? {
            None => Reply::Bulk(None),
            Some(len) => {
                let mut data = vec![0; len + 2];
                r.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(invalid("bulk string not followed by CRLF"));
                }
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match length(rest)? {
            None => Reply::Array(None),
            Some(_) if depth >= MAX_DEPTH => return Err(invalid("arrays nested too deeply")),
            Some(len) => {
                let items = (0..len)
                    .map(|_| read_at(r, depth + 1))
                    .collect::<io::Result<_>>()?;
                Reply::Array(Some(items))
            }
        },
        other => {
            return Err(invalid(&format!(
                "unexpected reply type byte 0x{other:02x}"
            )));
        }
    })
}

/// A line without its CRLF.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    // Bounded, so a peer that never sends a line break cannot grow it forever.
    let n = io::Read::take(&mut *r, 64 * 1024).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("reply line not terminated by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad integer in reply"))
}

/// A length; `-1` is the null value.
fn length(digits: &[u8]) -> io::Result<Option<usize>> {
    match number(digits)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_LEN)
            .map(Some)
            .ok_or_else(|| invalid("bad length in reply")),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a Redis reply: {what}"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read_all(mut bytes: &[u8]) -> Vec<io::Result<Reply>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let r = read_reply(&mut bytes);
            let stop = r.is_err();
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn encodes_binary_safe_bulk_strings() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &[b"XADD", b"s", b"*", b"payload", &[0, 0xff, b'\r', b'\n']],
        );
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$7\r\npayload\r\n$4\r\n\x00\xff\r\n\r\n"
        );
        encode(&mut out, &[b""]);
        assert!(out.ends_with(b"*1\r\n$0\r\n\r\n"));
    }

    #[test]
    fn reads_every_reply_type_in_sequence() {
        let replies = read_all(
            b"+OK\r\n-WRONGTYPE Operation against a key\r\n:-7\r\n$5\r\n1-0\r\n\r\n$-1\r\n\
              *2\r\n$1\r\na\r\n*1\r\n:1\r\n*-1\r\n$0\r\n\r\n",
        );
        let replies: Vec<Reply> = replies.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            replies,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("WRONGTYPE Operation against a key".into()),
                Reply::Integer(-7),
                Reply::Bulk(Some(b"1-0\r\n".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a".to_vec())),
                    Reply::Array(Some(vec![Reply::Integer(1)])),
                ])),
                Reply::Array(None),
                Reply::Bulk(Some(vec![])),
            ]
        );
    }

    #[test]
    fn a_truncated_reply_is_an_error_not_a_value() {
        let mut partial: &[u8] = b"$10\r\n1712-0";
        assert!(read_reply(&mut partial).is_err());
        let mut empty: &[u8] = b"";
        let err = read_reply(&mut empty).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut no_crlf: &[u8] = b"+OK\n";
        assert!(read_reply(&mut no_crlf).is_err());
    }

    #[test]
    fn garbage_and_absurd_lengths_are_refused() {
        for bad in [
            &b"?what\r\n"[..],
            b"$abc\r\n",
            b"$-2\r\n",
            b"$999999999999\r\n",
            b":1.5\r\n",
            b"\r\n",
            b"$3\r\nabcXY",
        ] {
            let mut bytes = bad;
            let err = read_reply(&mut bytes).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(read_reply(&mut deep.as_bytes()).is_err());
    }
}
