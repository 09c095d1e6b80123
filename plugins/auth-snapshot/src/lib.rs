//! `auth-snapshot`: keeps raw bearer tokens away from targets and attaches a
//! signed snapshot of the producer's auth context instead.
//!
//! Config (the injector's table, as JSON keys):
//!
//! | key | | meaning |
//! |---|---|---|
//! | `key` | required | name of the host signing key; the operator must grant it to the target |
//! | `header` | default `x-auth-snapshot` | header that carries the signed snapshot |
//! | `context_header` | default `x-auth-context` | header the producer put the auth context in |
//! | `issuer` | optional | the `iss` claim |
//! | `ttl_seconds` | optional, ≥ 1 | `exp` = `iat` + `ttl_seconds` |
//!
//! The key is first used when a message carries an auth context: a missing or
//! ungranted key fails those messages (retried, then dead-lettered with the
//! host's reason), while messages without a context still go through.
//!
//! For each envelope:
//!
//! 1. **Bearer stripping.** Every header whose value carries a bearer
//!    credential is removed: the value, trimmed, or any of its comma-separated
//!    elements, starts with `bearer` (any case) followed by whitespace. That
//!    covers `authorization: Bearer …` in any case of name and scheme, and
//!    tokens copied into other headers. Other schemes (`Basic …`) are kept.
//! 2. **Snapshot.** When the context header is present, it must be JSON
//!    `{"sub": "…", "tenant": "…"?, "scopes": ["…"] | "space separated"?}`
//!    (a malformed one is an error naming the header). The injector sets
//!    `header` to a compact JWS (RFC 7515) signed by the host and removes the
//!    context header:
//!
//!    - protected header: `{"alg":<the key's algorithm>,"typ":"JWT","kid":<key>}`
//!    - claims: `{"sub":..,"tenant":..(if any),"scopes":[..],"iat":<now, s>,"jti":<message id>,"target":<target>,"iss":..(if configured),"exp":..(if configured)}`
//!    - `base64url(header) "." base64url(claims) "." base64url(signature)`, unpadded.
//!
//!    `jti` is the message id, which stays the same across retries, so a
//!    target can deduplicate; `iat` is the time of this attempt.
//!
//! A signing error (e.g. the key is no longer granted) is returned as it is;
//! the host retries and eventually dead-letters the message.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outbox_relay_guest::{Config, Envelope, Error, HeaderEdit, Injector, Result, signing};
use serde::Serialize;
use serde_json::Value;

struct AuthSnapshot {
    settings: Settings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    key: String,
    header: String,
    context_header: String,
    issuer: Option<String>,
    ttl_seconds: Option<u64>,
}

const KEYS: [&str; 5] = ["key", "header", "context_header", "issuer", "ttl_seconds"];

impl Settings {
    fn from_config(config: &Config) -> Result<Settings> {
        // The typed accessors name the key in their errors; unknown keys are
        // refused so a misspelt setting is not silently ignored.
        config.only_keys(&KEYS)?;
        let mut settings = Settings {
            key: config.get_str("key")?.to_owned(),
            header: config
                .get_opt_str("header")?
                .unwrap_or("x-auth-snapshot")
                .to_owned(),
            context_header: config
                .get_opt_str("context_header")?
                .unwrap_or("x-auth-context")
                .to_owned(),
            issuer: config.get_opt_str("issuer")?.map(str::to_owned),
            ttl_seconds: config.get_opt_u64("ttl_seconds")?,
        };
        if settings.key.trim().is_empty() {
            return Err(Error::new("config: key `key` must not be empty"));
        }
        for (name, value) in [
            ("header", &mut settings.header),
            ("context_header", &mut settings.context_header),
        ] {
            if value.is_empty() || !value.bytes().all(is_token_char) {
                return Err(Error::new(format!(
                    "config: key `{name}` must be a header name, got {value:?}"
                )));
            }
            value.make_ascii_lowercase();
        }
        if settings.header == settings.context_header {
            return Err(Error::new(
                "config: keys `header` and `context_header` name the same header",
            ));
        }
        if settings.ttl_seconds == Some(0) {
            return Err(Error::new("config: key `ttl_seconds` must be at least 1"));
        }
        Ok(settings)
    }
}

/// RFC 9110 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Injector for AuthSnapshot {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        let settings = Settings::from_config(config)?;
        Ok(AuthSnapshot { settings })
    }

    fn inject(&mut self, envelope: &Envelope, target: &str) -> Result<Vec<HeaderEdit>> {
        let settings = &self.settings;
        let mut edits = strip_bearer(&envelope.headers);
        let Some(raw) = envelope.header(&settings.context_header) else {
            return Ok(edits);
        };
        let context = AuthContext::parse(raw)
            .map_err(|err| Error::new(format!("header `{}`: {err}", settings.context_header)))?;
        let alg = signing::algorithm(&settings.key)?;
        let claims = Claims::new(settings, &context, envelope, target, unix_now()?);
        let token = compact_jws(&alg, &settings.key, &claims, |input| {
            signing::sign(&settings.key, input)
        })?;
        edits.push(HeaderEdit::set(&settings.header, token));
        edits.push(HeaderEdit::remove(&settings.context_header));
        Ok(edits)
    }
}

outbox_relay_guest::export_injector!(AuthSnapshot);

fn unix_now() -> Result<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| Error::new("the clock is before the Unix epoch"))
}

/// One removal per header that carries a bearer credential (each name once).
fn strip_bearer(headers: &[(String, String)]) -> Vec<HeaderEdit> {
    let mut removed: Vec<String> = Vec::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if carries_bearer(value) && !removed.contains(&lower) {
            removed.push(lower);
        }
    }
    removed.into_iter().map(HeaderEdit::remove).collect()
}

/// Whether `value`, or one of its comma-separated elements, is a bearer
/// credential: `bearer` in any case, then whitespace, after optional
/// leading whitespace.
fn carries_bearer(value: &str) -> bool {
    value.split(',').any(|element| {
        let element = element.trim();
        element
            .get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
            && element[6..].starts_with(char::is_whitespace)
    })
}

/// What the producer put in the context header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuthContext {
    sub: String,
    tenant: Option<String>,
    scopes: Vec<String>,
}

impl AuthContext {
    fn parse(raw: &str) -> std::result::Result<AuthContext, String> {
        let value: Value =
            serde_json::from_str(raw).map_err(|err| format!("not valid JSON: {err}"))?;
        let Value::Object(map) = value else {
            return Err("must be a JSON object".into());
        };
        let sub = match map.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            Some(Value::String(_)) => return Err("`sub` must not be empty".into()),
            None | Some(Value::Null) => return Err("`sub` is missing".into()),
            Some(_) => return Err("`sub` must be a string".into()),
        };
        let tenant = match map.get("tenant") {
            None | Some(Value::Null) => None,
            Some(Value::String(tenant)) => Some(tenant.clone()),
            Some(_) => return Err("`tenant` must be a string".into()),
        };
        let scopes = match map.get("scopes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(spaced)) => spaced.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|scope| scope.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("`scopes` must be a list of strings or a space-separated string")?,
            Some(_) => {
                return Err(
                    "`scopes` must be a list of strings or a space-separated string".into(),
                );
            }
        };
        Ok(AuthContext {
            sub,
            tenant,
            scopes,
        })
    }
}

/// The JWS protected header.
#[derive(Serialize)]
struct JoseHeader<'a> {
    alg: &'a str,
    typ: &'static str,
    kid: &'a str,
}

/// The snapshot's claims, serialised in this field order.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    scopes: &'a [String],
    iat: u64,
    jti: &'a str,
    target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

impl<'a> Claims<'a> {
    fn new(
        settings: &'a Settings,
        context: &'a AuthContext,
        envelope: &'a Envelope,
        target: &'a str,
        now: u64,
    ) -> Claims<'a> {
        Claims {
            sub: &context.sub,
            tenant: context.tenant.as_deref(),
            scopes: &context.scopes,
            iat: now,
            jti: &envelope.id,
            target,
            iss: settings.issuer.as_deref(),
            exp: settings.ttl_seconds.map(|ttl| now.saturating_add(ttl)),
        }
    }
}

/// `base64url(header) "." base64url(claims) "." base64url(sign(signing input))`.
fn compact_jws(
    alg: &str,
    kid: &str,
    claims: &Claims<'_>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<String> {
    let header = serde_json::to_vec(&JoseHeader {
        alg,
        typ: "JWT",
        kid,
    })?;
    let claims = serde_json::to_vec(claims)?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let signature = sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn removed(pairs: &[(&str, &str)]) -> Vec<String> {
        strip_bearer(&headers(pairs))
            .into_iter()
            .map(|edit| match edit {
                HeaderEdit::Remove(name) => name,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn strips_every_bearer_credential_in_any_case() {
        let got = removed(&[
            ("authorization", "Bearer abc.def.ghi"),
            ("Authorization", "BeArEr xyz"),
            ("x-forwarded-auth", "  bearer\ttoken-2  "),
            ("x-upstream", "BEARER  token-3"),
            ("x-list", "Basic dXNlcjpwdw==, Bearer token-4"),
            ("proxy-authorization", "bearer t5"),
        ]);
        assert_eq!(
            got,
            [
                "authorization",
                "x-forwarded-auth",
                "x-upstream",
                "x-list",
                "proxy-authorization"
            ]
        );
    }

    #[test]
    fn keeps_other_schemes_and_lookalikes() {
        assert!(
            removed(&[
                ("authorization", "Basic dXNlcjpwdw=="),
                ("x-api-key", "bearertoken"),
                ("x-note", "the bearer of bad news"),
                ("x-empty-scheme", "Bearer"),
                ("x-empty-scheme-2", "  Bearer   "),
                ("x-word", "bearers abc"),
                ("bearer", "not a credential"),
                ("x-unicode", "béarer abc"),
            ])
            .is_empty()
        );
    }

    #[test]
    fn bearer_detection() {
        assert!(carries_bearer("Bearer x"));
        assert!(carries_bearer("bearer\tx"));
        assert!(carries_bearer("\n BEARER x"));
        assert!(carries_bearer("bEaReR\u{a0}x"));
        assert!(carries_bearer("a,bearer x"));
        assert!(!carries_bearer(""));
        assert!(!carries_bearer("Bearer"));
        assert!(!carries_bearer("Bearer,x"));
        assert!(!carries_bearer("Token x"));
        assert!(!carries_bearer("é"));
        assert!(!carries_bearer("beaérer x"));
    }

    #[test]
    fn settings_defaults_and_validation() {
        let s = Settings::from_config(&config(r#"{"key": "snap"}"#)).unwrap();
        assert_eq!(
            s,
            Settings {
                key: "snap".into(),
                header: "x-auth-snapshot".into(),
                context_header: "x-auth-context".into(),
                issuer: None,
                ttl_seconds: None,
            }
        );
        let s = Settings::from_config(&config(
            r#"{"key": "k", "header": "X-Snap", "context_header": "X-Ctx", "issuer": "relay", "ttl_seconds": 60}"#,
        ))
        .unwrap();
        assert_eq!(
            (s.header.as_str(), s.context_header.as_str()),
            ("x-snap", "x-ctx")
        );
        assert_eq!(
            (s.issuer.as_deref(), s.ttl_seconds),
            (Some("relay"), Some(60))
        );

        for (json, needle) in [
            ("{}", "`key`"),
            (r#"{"key": " "}"#, "`key`"),
            (r#"{"key": "k", "hedaer": "x"}"#, "hedaer"),
            (r#"{"key": "k", "header": "bad name"}"#, "`header`"),
            (r#"{"key": "k", "context_header": ""}"#, "`context_header`"),
            (r#"{"key": "k", "header": "X-Auth-Context"}"#, "same header"),
            (r#"{"key": "k", "ttl_seconds": 0}"#, "`ttl_seconds`"),
            (r#"{"key": "k", "ttl_seconds": -5}"#, "`ttl_seconds`"),
            (r#"{"key": "k", "issuer": 1}"#, "`issuer`"),
            (r#"{"key": 1}"#, "`key`"),
        ] {
            let err = Settings::from_config(&config(json)).unwrap_err();
            assert!(err.message().contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn the_key_is_needed_only_for_messages_with_a_context() {
        let mut plugin = AuthSnapshot::init("t", &config(r#"{"key": "snap"}"#)).unwrap();
        let mut envelope = Envelope {
            id: "01936f0e-7b2a-7cc3-9f1e-4a1f5f0c2b11".into(),
            event_name: "e".into(),
            partition_key: None,
            payload: Vec::new(),
            headers: headers(&[("authorization", "Bearer tok")]),
            attempt: 1,
            created_at_ms: 0,
        };
        // No context: only the stripping, no key needed.
        let edits = plugin.inject(&envelope, "t").unwrap();
        assert_eq!(edits, vec![HeaderEdit::remove("authorization")]);
        // A context needs the host's key (not available in a native test).
        envelope
            .headers
            .push(("x-auth-context".into(), r#"{"sub":"u1"}"#.into()));
        let err = plugin.inject(&envelope, "t").unwrap_err();
        assert!(err.message().contains("host"), "{err}");
    }

    #[test]
    fn parses_auth_contexts() {
        assert_eq!(
            AuthContext::parse(r#"{"sub": "u1", "tenant": "acme", "scopes": ["a", "b"]}"#),
            Ok(AuthContext {
                sub: "u1".into(),
                tenant: Some("acme".into()),
                scopes: vec!["a".into(), "b".into()],
            })
        );
        assert_eq!(
            AuthContext::parse(r#"{"sub": "u1", "scopes": " read  write\torders:admin ", "x": 1}"#),
            Ok(AuthContext {
                sub: "u1".into(),
                tenant: None,
                scopes: vec!["read".into(), "write".into(), "orders:admin".into()],
            })
        );
        assert_eq!(
            AuthContext::parse(r#"{"sub": "u1", "tenant": null, "scopes": null}"#),
            Ok(AuthContext {
                sub: "u1".into(),
                tenant: None,
                scopes: vec![],
            })
        );
        for (raw, needle) in [
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            ("{}", "`sub` is missing"),
            (r#"{"sub": ""}"#, "`sub` must not be empty"),
            (r#"{"sub": 7}"#, "`sub` must be a string"),
            (r#"{"sub": "u", "tenant": 1}"#, "`tenant`"),
            (r#"{"sub": "u", "scopes": [1]}"#, "`scopes`"),
            (r#"{"sub": "u", "scopes": {}}"#, "`scopes`"),
        ] {
            let err = AuthContext::parse(raw).unwrap_err();
            assert!(err.contains(needle), "{raw}: {err}");
        }
    }

    fn envelope(pairs: &[(&str, &str)]) -> Envelope {
        Envelope {
            id: "0190a1b2-0000-7000-8000-000000000001".into(),
            event_name: "order.created".into(),
            partition_key: None,
            payload: b"{}".to_vec(),
            headers: headers(pairs),
            attempt: 1,
            created_at_ms: 0,
        }
    }

    fn decode(part: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(part).unwrap()
    }

    #[test]
    fn assembles_a_compact_jws() {
        let settings = Settings::from_config(&config(
            r#"{"key": "snap-2025", "issuer": "outbox-relay", "ttl_seconds": 300}"#,
        ))
        .unwrap();
        let context = AuthContext::parse(
            r#"{"sub": "user-1", "tenant": "acme", "scopes": "orders:read orders:write"}"#,
        )
        .unwrap();
        let e = envelope(&[]);
        let claims = Claims::new(&settings, &context, &e, "billing", 1_700_000_000);

        let mut signed = Vec::new();
        let token = compact_jws("EdDSA", &settings.key, &claims, |input| {
            signed = input.to_vec();
            Ok(vec![0xfb, 0xff, 0x00, 0x3e])
        })
        .unwrap();

        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{token}"
        );
        assert_eq!(signed, format!("{}.{}", parts[0], parts[1]).into_bytes());
        assert_eq!(
            String::from_utf8(decode(parts[0])).unwrap(),
            r#"{"alg":"EdDSA","typ":"JWT","kid":"snap-2025"}"#
        );
        assert_eq!(
            String::from_utf8(decode(parts[1])).unwrap(),
            r#"{"sub":"user-1","tenant":"acme","scopes":["orders:read","orders:write"],"iat":1700000000,"jti":"0190a1b2-0000-7000-8000-000000000001","target":"billing","iss":"outbox-relay","exp":1700000300}"#
        );
        assert_eq!(parts[2], "-_8APg");
        assert_eq!(decode(parts[2]), [0xfb, 0xff, 0x00, 0x3e]);
    }

    #[test]
    fn minimal_claims_leave_out_what_is_not_set() {
        let settings = Settings::from_config(&config(r#"{"key": "k"}"#)).unwrap();
        let context = AuthContext::parse(r#"{"sub": "u"}"#).unwrap();
        let e = envelope(&[]);
        let claims = Claims::new(&settings, &context, &e, "t", 5);
        let token = compact_jws("HS256", "k", &claims, |_| Ok(vec![1; 32])).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(
            String::from_utf8(decode(parts[0])).unwrap(),
            r#"{"alg":"HS256","typ":"JWT","kid":"k"}"#
        );
        assert_eq!(
            String::from_utf8(decode(parts[1])).unwrap(),
            r#"{"sub":"u","scopes":[],"iat":5,"jti":"0190a1b2-0000-7000-8000-000000000001","target":"t"}"#
        );
        assert_eq!(decode(parts[2]), vec![1; 32]);
    }

    #[test]
    fn a_signing_error_is_passed_on_as_it_is() {
        let settings = Settings::from_config(&config(r#"{"key": "k"}"#)).unwrap();
        let context = AuthContext::parse(r#"{"sub": "u"}"#).unwrap();
        let e = envelope(&[]);
        let claims = Claims::new(&settings, &context, &e, "t", 5);
        let err = compact_jws("HS256", "k", &claims, |_| {
            Err(Error::new("key `k` is not granted to target `t`"))
        })
        .unwrap_err();
        assert_eq!(err.message(), "key `k` is not granted to target `t`");
    }

    fn injector(json: &str) -> AuthSnapshot {
        AuthSnapshot {
            settings: Settings::from_config(&config(json)).unwrap(),
        }
    }

    #[test]
    fn without_a_context_header_only_strips() {
        let mut snap = injector(r#"{"key": "k"}"#);
        let e = envelope(&[("authorization", "Bearer t"), ("x-other", "v")]);
        assert_eq!(
            snap.inject(&e, "t").unwrap(),
            vec![HeaderEdit::remove("authorization")]
        );
        assert_eq!(snap.inject(&envelope(&[]), "t").unwrap(), vec![]);
    }

    #[test]
    fn a_malformed_context_header_is_an_error_naming_it() {
        let mut snap = injector(r#"{"key": "k", "context_header": "x-ctx"}"#);
        let e = envelope(&[("X-Ctx", r#"{"tenant": "acme"}"#)]);
        let err = snap.inject(&e, "t").unwrap_err();
        assert!(err.message().starts_with("header `x-ctx`: "), "{err}");
        assert!(err.message().contains("`sub`"), "{err}");
    }

    #[test]
    fn natively_a_context_header_fails_for_want_of_the_host() {
        let mut snap = injector(r#"{"key": "k"}"#);
        let e = envelope(&[("x-auth-context", r#"{"sub": "u"}"#)]);
        let err = snap.inject(&e, "t").unwrap_err();
        assert!(err.message().contains("host"), "{err}");
    }
}
