//! `outbox:relay/http`: HTTP for plugins through one pooled keep-alive client
//! that the host owns, so connections outlive instances and batches, and a
//! plugin reaches only the hosts its target's `sandbox.allow_http` lists.
//! Redirects are never followed: one could lead anywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;

use super::bindings::outbox::relay::http as wit;
use crate::sandbox_address::AllowedHost;

/// The default time limit of one request, connection included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a response body a plugin gets.
const BODY_LIMIT: usize = 64 * 1024;

/// Headers the host's client sets from the request itself: a plugin's value
/// could contradict the body's framing (`transfer-encoding` with
/// `content-length`), the connection's handling, or the server the URL names
/// (`host`, checked against `sandbox.allow_http`). Such a request is refused.
const HOST_OWNED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "host",
];

/// What one instance may do over HTTP.
#[derive(Clone)]
pub struct HttpGate {
    client: reqwest::Client,
    allowed: Arc<[AllowedHost]>,
    /// Requests of one `send` in flight at once (each may be a connection of
    /// the host's): `sandbox.max_sockets`. The rest wait their turn.
    in_flight: usize,
    /// Bytes of responses (bodies and headers) one `send` may hand back:
    /// half the instance's memory cap (the guest could not take much more). The
    /// host holds a call's responses until all are in; 20,000 requests in
    /// one call once held 2.6 GB.
    response_budget: usize,
    /// Whether the client presents a certificate (`sandbox.tls`), for the
    /// words of a failed handshake.
    client_cert: bool,
}

impl HttpGate {
    pub fn new(
        client: reqwest::Client,
        allowed: &[AllowedHost],
        in_flight: u32,
        response_budget: usize,
    ) -> Self {
        Self {
            client,
            allowed: allowed.into(),
            in_flight: (in_flight as usize).max(1),
            response_budget,
            client_cert: false,
        }
    }

    /// Notes that the client presents a certificate.
    #[must_use]
    pub fn with_client_cert(mut self, client_cert: bool) -> Self {
        self.client_cert = client_cert;
        self
    }

    /// The host's shared client: pooled, keep-alive, no redirects.
    pub fn client() -> Result<reqwest::Client, String> {
        Self::builder()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }

    /// A client like [`HttpGate::client`] for one target with `sandbox.tls`:
    /// its CA bundle and client certificate, its own connection pool.
    pub fn client_with_tls(tls: &rustls::ClientConfig) -> Result<reqwest::Client, String> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::builder()
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| format!("cannot build the target's HTTP client (sandbox.tls): {e}"))
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
    }

    pub async fn send(
        &self,
        plugin: &str,
        target: &str,
        requests: Vec<wit::Request>,
    ) -> Vec<Result<wit::Response, wit::Error>> {
        // In order, at most `in_flight` at once: a call with 15,000 requests
        // once opened 15,000 host sockets. Responses past the call's budget
        // are errors, and the requests after them are not sent.
        let left = AtomicUsize::new(self.response_budget);
        let over = || {
            wit::Error::Transport(format!(
                "the responses of this call exceed {} bytes (half of sandbox.memory_mb); send fewer requests per call",
                self.response_budget
            ))
        };
        futures::stream::iter(requests.into_iter().map(|r| {
            let (left, over) = (&left, &over);
            async move {
                if left.load(Ordering::Relaxed) == 0 {
                    return Err(over());
                }
                let response = self.send_one(plugin, target, r).await?;
                let size = response.body.len()
                    + response
                        .headers
                        .iter()
                        .map(|(n, v)| n.len() + v.len())
                        .sum::<usize>();
                // Past the budget, this response and every later one is refused.
                let taken = left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                    l.checked_sub(size)
                });
                match taken {
                    Ok(_) => Ok(response),
                    Err(_) => {
                        left.store(0, Ordering::Relaxed);
                        Err(over())
                    }
                }
            }
        }))
        .buffered(self.in_flight)
        .collect()
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
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port_or_known_default();
        if !self.allowed.iter().any(|a| a.allows(host, port)) {
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
        if let Some((name, _)) = request
            .headers
            .iter()
            .find(|(name, _)| HOST_OWNED_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
        {
            return Err(wit::Error::Invalid(format!(
                "header {name:?} is the host's to set (it frames the request or names the server), not the plugin's"
            )));
        }
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
        let side = crate::tls::Side {
            has_cert: self.client_cert,
            asked: None,
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let classify = |e: reqwest::Error| {
            // Its URL may carry a token in its query (the target's URL can
            // come from a secret): only the redacted one is shown.
            let e = e.without_url();
            // A failed handshake in the host's words; anything else as
            // the HTTP client puts it.
            let why = crate::tls::explain_chain(&e, &host, side).unwrap_or_else(|| error_chain(&e));
            let text = format!("{}: {why}", redacted(&url));
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

    fn gate(allowed: &[&str]) -> HttpGate {
        let allowed: Vec<AllowedHost> = allowed.iter().map(|a| a.parse().unwrap()).collect();
        HttpGate::new(reqwest::Client::new(), &allowed, 16, 1 << 20)
    }

    #[test]
    fn urls_are_checked_against_host_and_optional_port() {
        let g = gate(&[
            "Hooks.Example.com",
            "127.0.0.1:8080",
            "api.example.com:443",
            "[::1]:9000",
        ]);
        for ok in [
            "https://hooks.example.com/in",
            "http://hooks.example.com:8080/in",
            "http://127.0.0.1:8080/x",
            "https://api.example.com/",
            "http://[::1]:9000/",
        ] {
            assert!(g.check("p", "t", ok).is_ok(), "{ok}");
        }
        for denied in [
            "https://evil.example.com/",
            "http://127.0.0.1:8081/x",
            "http://api.example.com/",
        ] {
            assert!(
                matches!(g.check("p", "t", denied), Err(wit::Error::Denied(_))),
                "{denied}"
            );
        }
        assert!(matches!(
            g.check("p", "t", "ftp://hooks.example.com/"),
            Err(wit::Error::Invalid(_))
        ));
    }
}
