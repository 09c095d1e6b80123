//! Who may use the console: the login token, sessions, and the CSRF token
//! every change must carry.
//!
//! A browser logs in with the token (read from a file or the environment
//! at start) and gets a session cookie (`HttpOnly`, `SameSite=Strict`,
//! random, 12 h). Every form that changes data carries the session's CSRF
//! token, which is compared with the session's own. A script may instead
//! send `Authorization: Bearer <token>`: no cookie, so nothing to forge.
//! Tokens are compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::Rng;

/// The session cookie's name.
pub const COOKIE: &str = "outbox_console";

/// How long a session lasts after login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// At most this many sessions are kept; the oldest go first.
const MAX_SESSIONS: usize = 1000;

/// The console's access rules and live sessions.
#[derive(Clone)]
pub struct Access {
    token: Arc<String>,
    pub read_only: bool,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    since: Instant,
}

/// A request that passed the check: with its session's CSRF token, or by
/// bearer token (then no CSRF token is needed).
#[derive(Debug, Clone)]
pub struct Caller {
    pub csrf: Option<String>,
}

impl Caller {
    /// Whether `form_token` may change data for this caller.
    pub fn may_change(&self, form_token: Option<&str>) -> bool {
        match (&self.csrf, form_token) {
            (None, _) => true, // bearer
            (Some(mine), Some(given)) => same(mine, given),
            (Some(_), None) => false,
        }
    }
}

impl Access {
    pub fn new(token: String, read_only: bool) -> Self {
        Self {
            token: Arc::new(token),
            read_only,
            sessions: Arc::default(),
        }
    }

    /// Whether `given` is the login token.
    pub fn token_matches(&self, given: &str) -> bool {
        same(&self.token, given)
    }

    /// A new session: its id (for the cookie).
    pub fn open(&self) -> String {
        let id = random_token();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.since.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.since)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: random_token(),
                since: Instant::now(),
            },
        );
        id
    }

    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.lock().remove(&id);
        }
    }

    /// The caller, if the request carries a live session or the bearer token.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        if let Some(bearer) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self
                .token_matches(bearer.trim())
                .then_some(Caller { csrf: None });
        }
        let id = cookie(headers)?;
        let sessions = self.lock();
        let session = sessions
            .get(&id)
            .filter(|s| s.since.elapsed() < SESSION_TTL)?;
        Some(Caller {
            csrf: Some(session.csrf.clone()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The session id in the request's cookies.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// 32 random bytes as hex.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_session_or_the_bearer_token_lets_a_caller_in_and_csrf_guards_changes() {
        let access = Access::new("s3cret-token".into(), false);
        assert!(access.caller(&HeaderMap::new()).is_none());
        assert!(access.caller(&with_cookie("forged")).is_none());
        let id = access.open();
        let caller = access.caller(&with_cookie(&id)).unwrap();
        let csrf = caller.csrf.clone().unwrap();
        assert!(caller.may_change(Some(&csrf)));
        assert!(!caller.may_change(None));
        assert!(!caller.may_change(Some("x")));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer s3cret-token".parse().unwrap(),
        );
        assert!(access.caller(&bearer).unwrap().may_change(None));
        bearer.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer wrong".parse().unwrap(),
        );
        assert!(access.caller(&bearer).is_none());
        access.close(&with_cookie(&id));
        assert!(access.caller(&with_cookie(&id)).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "a"));
    }
}
