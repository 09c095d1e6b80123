//! HTTP through the host.
//!
//! A plugin has no sockets of its own for HTTP: it hands requests to the host,
//! which sends them over its pooled keep-alive client (so connections are
//! reused across batches and instances), concurrently, to the hosts that the
//! target's `sandbox.allow_http` lists. Redirects are not followed.
//!
//! ```no_run
//! use outbox_relay_guest::http::{self, Request};
//!
//! let responses = http::send(vec![
//!     Request::post("https://hooks.example.com/in", b"{}".to_vec())
//!         .header("content-type", "application/json"),
//! ]);
//! for response in responses {
//!     match response {
//!         Ok(r) if r.is_success() => {}
//!         Ok(r) => eprintln!("status {}", r.status),
//!         Err(e) => eprintln!("{e}"),
//!     }
//! }
//! ```

use std::fmt;
use std::time::Duration;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Time limit of this request; `None` is the host's default (30 s).
    pub timeout: Option<Duration>,
}

impl Request {
    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            method: "POST".into(),
            url: url.into(),
            headers: Vec::new(),
            body,
            timeout: None,
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the time limit.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// One response. The body is cut at 64 KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The sandbox does not allow the URL's host.
    Denied(String),
    /// The time limit passed.
    Timeout(String),
    /// Connecting, sending or receiving failed.
    Transport(String),
    /// The request is malformed.
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied(m) => write!(f, "{m}"),
            Error::Timeout(m) => write!(f, "timed out: {m}"),
            Error::Transport(m) => write!(f, "{m}"),
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        crate::Error::new(e.to_string())
    }
}

/// Whether the target's sandbox lets requests go to `url`; nothing is sent.
/// An `init` whose URL is fixed should call it, so that a URL the operator
/// did not allow stops the plugin at start-up with a clear error.
pub fn allowed(url: &str) -> Result<(), Error> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::transport_world::outbox::relay::http as host;
        host::allowed(url).map_err(from_wire)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = url;
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
fn from_wire(e: crate::bindings::transport_world::outbox::relay::http::Error) -> Error {
    use crate::bindings::transport_world::outbox::relay::http as host;
    match e {
        host::Error::Denied(m) => Error::Denied(m),
        host::Error::Timeout(m) => Error::Timeout(m),
        host::Error::Transport(m) => Error::Transport(m),
        host::Error::Invalid(m) => Error::Invalid(m),
    }
}

/// Sends `requests` concurrently; one result per request, in order.
pub fn send(requests: Vec<Request>) -> Vec<Result<Response, Error>> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::transport_world::outbox::relay::http as host;
        let wire = requests
            .into_iter()
            .map(|r| host::Request {
                method: r.method,
                url: r.url,
                headers: r.headers,
                body: r.body,
                timeout_ms: r
                    .timeout
                    .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
            })
            .collect::<Vec<_>>();
        host::send(&wire)
            .into_iter()
            .map(|r| match r {
                Ok(r) => Ok(Response {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                }),
                Err(e) => Err(from_wire(e)),
            })
            .collect()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        requests
            .iter()
            .map(|r| {
                Err(Error::Transport(format!(
                    "HTTP to {} needs the outbox-relay host; it is not available outside a component",
                    r.url
                )))
            })
            .collect()
    }
}
