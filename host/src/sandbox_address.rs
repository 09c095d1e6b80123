//! The addresses a target's sandbox may reach: `allow_tcp` entries
//! ([`HostPort`]) and `allow_http` entries ([`AllowedHost`]).
//!
//! One grammar for both, checked when the config file is parsed (the types
//! deserialize with `serde(try_from = "String")`), so a bad entry fails at
//! load time with its field named, and the sandbox never meets one:
//!
//! - `host:port` or, for HTTP, `host` alone (any port);
//! - an IPv6 address in brackets: `[::1]:4222`, `[::1]`;
//! - a port from 1 to 65535;
//! - no scheme, path or user (`https://x/`, `user@x` are refused), and no
//!   second `:` outside brackets (`a:b:80` is refused).
//!
//! Host names are compared case-insensitively and kept in lower case. This
//! module is domain code: the wasm adapter resolves and enforces these
//! addresses, but they do not depend on it.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Why an address entry was refused. The message quotes the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is empty or names no host")]
    NoHost(String),
    #[error("{0:?} is not `host:port` (no scheme, path or user, e.g. \"127.0.0.1:4222\")")]
    NotAnAddress(String),
    #[error("{0:?} has more than one ':'; write an IPv6 address in brackets, e.g. \"[::1]:4222\"")]
    UnbracketedColon(String),
    #[error("{entry:?}: {inside:?} in brackets is not an IPv6 address")]
    NotIpv6 { entry: String, inside: String },
    #[error("{entry:?}: unexpected {after:?} after `]`")]
    AfterBracket { entry: String, after: String },
    #[error("{entry:?}: {host:?} is not a host name or IP address")]
    BadHost { entry: String, host: String },
    #[error("{0:?} has no port; write `host:port`, e.g. \"127.0.0.1:4222\"")]
    NoPort(String),
    #[error("{entry:?}: {port:?} is not a port (1 to 65535)")]
    BadPort { entry: String, port: String },
}

/// A TCP address a plugin may connect to (`sandbox.allow_tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort {
    host: String,
    port: u16,
}

/// A host a plugin may send HTTP to (`sandbox.allow_http`), on one port or any.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl HostPort {
    /// The host name or IP address (IPv6 without its brackets), in lower case.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl AllowedHost {
    /// Whether a request to `host` (a URL's host; IPv6 with or without
    /// brackets) on `port` (explicit or the scheme's default) is allowed.
    pub fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case(&self.host) && self.port.is_none_or(|p| port == Some(p))
    }
}

/// Splits an entry into its host (lower case, IPv6 unbracketed) and port.
fn split(entry: &str) -> Result<(String, Option<u16>), AddressError> {
    if entry.trim().is_empty() {
        return Err(AddressError::NoHost(entry.to_string()));
    }
    if entry.contains(['/', '@', '?', '#']) {
        return Err(AddressError::NotAnAddress(entry.to_string()));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| AddressError::NotAnAddress(entry.to_string()))?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(AddressError::NotIpv6 {
                entry: entry.to_string(),
                inside: inside.to_string(),
            });
        }
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => {
                return Err(AddressError::AfterBracket {
                    entry: entry.to_string(),
                    after: after.to_string(),
                });
            }
        };
        (inside, port)
    } else {
        match entry.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(AddressError::UnbracketedColon(entry.to_string()));
            }
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err(AddressError::NoHost(entry.to_string()));
    }
    let is_ipv6 = entry.starts_with('[');
    if !is_ipv6
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(AddressError::BadHost {
            entry: entry.to_string(),
            host: host.to_string(),
        });
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(AddressError::BadPort {
                entry: entry.to_string(),
                port: p.to_string(),
            }),
        })
        .transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

impl FromStr for HostPort {
    type Err = AddressError;

    fn from_str(entry: &str) -> Result<Self, AddressError> {
        match split(entry)? {
            (host, Some(port)) => Ok(HostPort { host, port }),
            (_, None) => Err(AddressError::NoPort(entry.to_string())),
        }
    }
}

impl FromStr for AllowedHost {
    type Err = AddressError;

    fn from_str(entry: &str) -> Result<Self, AddressError> {
        let (host, port) = split(entry)?;
        Ok(AllowedHost { host, port })
    }
}

impl TryFrom<String> for HostPort {
    type Error = AddressError;

    fn try_from(entry: String) -> Result<Self, AddressError> {
        entry.parse()
    }
}

impl TryFrom<String> for AllowedHost {
    type Error = AddressError;

    fn try_from(entry: String) -> Result<Self, AddressError> {
        entry.parse()
    }
}

/// Writes a host, in brackets when it is an IPv6 address.
fn write_host(f: &mut fmt::Formatter<'_>, host: &str) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]")
    } else {
        f.write_str(host)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_host(f, &self.host)?;
        write!(f, ":{}", self.port)
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_host(f, &self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_parse_and_print_back() {
        for (entry, host, port, shown) in [
            ("127.0.0.1:4222", "127.0.0.1", 4222, "127.0.0.1:4222"),
            ("LocalHost:6379", "localhost", 6379, "localhost:6379"),
            ("[::1]:80", "::1", 80, "[::1]:80"),
            ("[fe80::1]:65535", "fe80::1", 65535, "[fe80::1]:65535"),
            (
                "broker_1.internal:1883",
                "broker_1.internal",
                1883,
                "broker_1.internal:1883",
            ),
        ] {
            let parsed: HostPort = entry.parse().unwrap();
            assert_eq!((parsed.host(), parsed.port()), (host, port), "{entry}");
            assert_eq!(parsed.to_string(), shown);
        }
    }

    #[test]
    fn bad_host_ports_say_why() {
        for (entry, why) in [
            ("a:b:80", "more than one ':'"),
            ("::1:80", "more than one ':'"),
            ("nowhere", "has no port"),
            ("[::1]", "has no port"),
            ("x:", "is not a port"),
            ("x:0", "is not a port"),
            ("x:70000", "is not a port"),
            ("x:+80", "is not a port"),
            (":80", "names no host"),
            ("", "names no host"),
            ("[::1", "is not `host:port`"),
            ("[nope]:80", "is not an IPv6 address"),
            ("[::1]80", "unexpected \"80\" after `]`"),
            ("tcp://x:80", "no scheme"),
            ("user@x:80", "no scheme, path or user"),
            ("a b:80", "is not a host name"),
        ] {
            let e = entry.parse::<HostPort>().unwrap_err().to_string();
            assert!(e.contains(why), "{entry:?}: {e}");
            assert!(
                e.contains(&format!("{entry:?}")),
                "the entry is quoted: {e}"
            );
        }
    }

    #[test]
    fn allowed_hosts_match_host_and_optional_port() {
        let any: AllowedHost = "Hooks.Example.com".parse().unwrap();
        assert!(any.allows("hooks.example.com", Some(443)));
        assert!(any.allows("HOOKS.example.com", Some(8080)));
        assert!(!any.allows("evil.example.com", Some(443)));
        let port: AllowedHost = "127.0.0.1:8080".parse().unwrap();
        assert!(port.allows("127.0.0.1", Some(8080)));
        assert!(!port.allows("127.0.0.1", Some(8081)));
        assert!(!port.allows("127.0.0.1", None));
        let v6: AllowedHost = "[::1]:9000".parse().unwrap();
        assert!(v6.allows("[::1]", Some(9000)));
        assert!(v6.allows("::1", Some(9000)));
        assert_eq!(v6.to_string(), "[::1]:9000");
        let v6_any: AllowedHost = "[::1]".parse().unwrap();
        assert!(v6_any.allows("[::1]", Some(1)));
    }

    #[test]
    fn bad_allowed_hosts_say_why() {
        for bad in [
            "https://x/",
            "x:notaport",
            "",
            "user@x",
            ":80",
            "a:b:80",
            "x/y",
        ] {
            assert!(bad.parse::<AllowedHost>().is_err(), "{bad}");
        }
    }

    /// Both types deserialize from TOML strings and fail there, naming the entry.
    #[test]
    fn entries_deserialize_from_toml() {
        #[derive(serde::Deserialize)]
        struct Sandbox {
            allow_tcp: Vec<HostPort>,
            allow_http: Vec<AllowedHost>,
        }
        let ok: Sandbox = toml::from_str(
            r#"allow_tcp = ["127.0.0.1:4222", "[::1]:6379"]
               allow_http = ["hooks.example.com", "[::1]:8080"]"#,
        )
        .unwrap();
        assert_eq!(ok.allow_tcp[1].to_string(), "[::1]:6379");
        assert_eq!(ok.allow_http[0].to_string(), "hooks.example.com");
        let e = toml::from_str::<Sandbox>(
            r#"allow_tcp = ["127.0.0.1:4222", "a:b:80"]
               allow_http = []"#,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("\"a:b:80\" has more than one ':'"), "{e}");
    }
}
