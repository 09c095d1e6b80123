//! `outbox:relay/http`: HTTP for plugins through one pooled keep-alive client
//! that the host owns, so connections outlive instances and batches, and a
//! plugin reaches only the hosts its target's `sandbox.allow_http` lists.
//! Redirects are never followed: one could lead anywhere.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::bindings::outbox::relay::http as wit;

/// The default time limit of one request, connection included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a response body a plugin gets.
const BODY_LIMIT: usize = 64 * 1024;

/// One `allow_http` entry: a host name or IP, and optionally a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    /// Parses `host` or `host:port` (IPv6 in brackets); the error says what is wrong.
    pub fn parse(entry: &str) -> Result<Self, String> {
        if entry.contains('/') || entry.contains('@') || entry.trim().is_empty() {
            return Err(format!(
                "{entry:?} is not `host` or `host:port` (no scheme, path or user)"
            ));
        }
        let port_of = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{entry:?}: {p:?} is not a port"))
        };
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{entry:?}: `[` without `]`"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(port_of(p)?)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{entry:?}: unexpected {after:?} after `]`")),
            }
        } else {
            match entry.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(format!("{entry:?}: write an IPv6 address in brackets"));
                }
                Some((host, p)) => (host, Some(port_of(p)?)),
                None => (entry, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{entry:?} names no host"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn allows(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        host == self.host
            && self
                .port
                .is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

/// What one instance may do over HTTP.
#[derive(Clone)]
pub struct HttpGate {
    client: reqwest::Client,
    allowed: Arc<[AllowedHost]>,
}

impl HttpGate {
    pub fn new(client: reqwest::Client, entries: &[String]) -> Self {
        // Entries were validated with the config; a bad one allows nothing.
        let allowed = entries
            .iter()
            .filter_map(|e| AllowedHost::parse(e).ok())
            .collect();
        Self { client, allowed }
    }

    /// The host's shared client: pooled, keep-alive, no redirects.
    pub fn client() -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }

    pub async fn send(
        &self,
        plugin: &str,
        target: &str,
        requests: Vec<wit::Request>,
    ) -> Vec<Result<wit::Response, wit::Error>> {
        join_all(
            requests
                .into_iter()
                .map(|r| self.send_one(plugin, target, r)),
        )
        .await
    }

    /// Parses `url` and checks it against the allowed hosts.
    pub fn check(&self, plugin: &str, target: &str, url: &str) -> Result<reqwest::Url, wit::Error> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| wit::Error::Invalid(format!("url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(wit::Error::Invalid(format!(
                "url {}: only http and https are supported",
                redacted(&parsed)
            )));
        }
        if !self.allowed.iter().any(|a| a.allows(&parsed)) {
            let host = parsed.host_str().unwrap_or_default();
            tracing::warn!(plugin, target, url = %redacted(&parsed), "HTTP request denied by the sandbox");
            return Err(wit::Error::Denied(format!(
                "the sandbox does not allow HTTP to {host}: add it to the target's `sandbox.allow_http`"
            )));
        }
        Ok(parsed)
    }

    async fn send_one(
        &self,
        plugin: &str,
        target: &str,
        request: wit::Request,
    ) -> Result<wit::Response, wit::Error> {
        let url = self.check(plugin, target, &request.url)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| wit::Error::Invalid(format!("method {:?}", request.method)))?;
        let mut builder = self
            .client
            .request(method, url.clone())
            .timeout(
                request
                    .timeout_ms
                    .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms.into())),
            )
            .body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let classify = |e: reqwest::Error| {
            let text = format!("{}: {}", redacted(&url), error_chain(&e));
            if e.is_timeout() {
                wit::Error::Timeout(text)
            } else if e.is_builder() {
                wit::Error::Invalid(text)
            } else {
                wit::Error::Transport(text)
            }
        };
        let mut response = builder.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            let room = BODY_LIMIT - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == BODY_LIMIT {
                // Dropping the rest closes this connection rather than reading
                // an unbounded body; the pool opens another when needed.
                break;
            }
        }
        Ok(wit::Response {
            status,
            headers,
            body,
        })
    }
}

/// A URL without user info or query, for logs and errors.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn entries_match_host_and_optional_port() {
        let any = AllowedHost::parse("Hooks.Example.com").unwrap();
        assert!(any.allows(&url("https://hooks.example.com/in")));
        assert!(any.allows(&url("http://hooks.example.com:8080/in")));
        assert!(!any.allows(&url("https://evil.example.com/")));
        let port = AllowedHost::parse("127.0.0.1:8080").unwrap();
        assert!(port.allows(&url("http://127.0.0.1:8080/x")));
        assert!(!port.allows(&url("http://127.0.0.1:8081/x")));
        let tls = AllowedHost::parse("api.example.com:443").unwrap();
        assert!(tls.allows(&url("https://api.example.com/")));
        let v6 = AllowedHost::parse("[::1]:9000").unwrap();
        assert!(v6.allows(&url("http://[::1]:9000/")));
    }

    #[test]
    fn bad_entries_say_why() {
        for bad in ["https://x/", "x:notaport", "", "user@x", ":80"] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }
}
