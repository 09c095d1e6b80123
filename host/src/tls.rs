//! The host's TLS client for one target: which servers it trusts and which
//! certificate it presents, built from the target's `sandbox.tls`, and what a
//! failed handshake means, in words an operator can act on.
//!
//! Used by the `outbox:relay/tls` import ([`crate::plugin`]'s `tls` module)
//! and by a target's own HTTP client. Plugins never see any of it: they ask
//! the host for a connection to an allowed `host:port`, and the host checks
//! the server and holds the client key.
//!
//! - Servers are checked against the system's roots (read once per process)
//!   plus the target's `ca` bundle, always for the host name dialled.
//! - TLS 1.3 and 1.2, rustls with the `ring` provider (as reqwest's).
//! - The client key is read from a file or an environment variable when the
//!   client is built (when the config is checked, and again when the
//!   target's worker starts), and lives only in the rustls config.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use serde::Deserialize;

use crate::plugin_config::{SecretRef, secret_ref};

/// `sandbox.tls`: what a target's TLS connections trust and present.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of certificate authorities trusted besides the system roots.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (and its chain) presented when a
    /// server asks for one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM): a path, `{ file = ... }`
    /// or `{ env = "NAME" }`.
    pub client_key: Option<KeySource>,
    /// Whether the system's roots are trusted too (default true); false
    /// trusts only `ca`.
    #[serde(default = "yes")]
    pub system_roots: bool,
}

fn yes() -> bool {
    true
}

/// Where the host reads a client key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct KeySource(pub SecretRef);

impl TryFrom<toml::Value> for KeySource {
    type Error = String;

    fn try_from(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(path) => Ok(KeySource(SecretRef::File(PathBuf::from(path)))),
            other => secret_ref(&other).map(KeySource).ok_or_else(|| {
                r#"expected a path, { file = "path" } or { env = "NAME" }"#.to_string()
            }),
        }
    }
}

/// A `sandbox.tls` that cannot be used: the key under `sandbox.tls` and why
/// (naming the file, never a key's content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox.tls.{}: {}", self.field, self.message)
    }
}

fn setup_error(field: &'static str, message: impl Into<String>) -> TlsSetupError {
    TlsSetupError {
        field,
        message: message.into(),
    }
}

impl TlsSettings {
    /// Makes relative paths absolute against `base` (the config file's directory).
    pub fn rebase(&mut self, base: &Path) {
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = &mut self.ca {
            rebase(p);
        }
        if let Some(p) = &mut self.client_cert {
            rebase(p);
        }
        if let Some(KeySource(SecretRef::File(p))) = &mut self.client_key {
            rebase(p);
        }
    }

    /// Whether a client certificate is configured.
    pub fn has_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    /// The rustls client config these settings describe, reading every file
    /// (and the key's variable) now.
    pub fn client(&self) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        if self.system_roots {
            roots.add_parsable_certificates(SYSTEM_ROOTS.iter().cloned());
        }
        if let Some(ca) = &self.ca {
            let certs = read_certs("ca", ca)?;
            for (i, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    setup_error(
                        "ca",
                        format!("{}: certificate {} is not usable: {e}", ca.display(), i + 1),
                    )
                })?;
            }
        }
        if roots.is_empty() {
            return Err(setup_error(
                "ca",
                "no certificate authority is trusted: set `ca`, or leave `system_roots` on",
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| setup_error("ca", format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(setup_error(
                    "client_key",
                    "`client_cert` is set, so its key must be too",
                ));
            }
            (None, Some(_)) => {
                return Err(setup_error(
                    "client_cert",
                    "`client_key` is set, so the certificate must be too",
                ));
            }
            (Some(cert), Some(key)) => {
                let chain = read_certs("client_cert", cert)?;
                let key = read_key(key)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    setup_error(
                        "client_key",
                        format!("does not fit the certificate in {}: {e}", cert.display()),
                    )
                })?
            }
        };
        Ok(Arc::new(config))
    }
}

/// The crypto provider of every TLS client the host makes.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's certificate authorities, read once (a failure to read some
/// of them is logged; those are left out).
static SYSTEM_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read some of the system's CA certificates");
    }
    found.certs
});

/// Reads `path` for `field` (see [`crate::secret_source`]: a regular file
/// of at most 1 MiB, and a secret pasted where the path belongs is not
/// repeated).
fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    crate::secret_source::read_file(path).map_err(|e| setup_error(field, e))
}

fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let text = read_file(field, path)?;
    let shown = crate::secret_source::shown_path(path);
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup_error(field, format!("{shown}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(setup_error(
            field,
            format!("{shown}: holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"),
        ));
    }
    Ok(certs)
}

fn read_key(source: &KeySource) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    use crate::secret_source as source_of;
    let (text, from) = match &source.0 {
        SecretRef::File(path) => (read_file("client_key", path)?, source_of::shown_path(path)),
        SecretRef::Env(name) => (
            source_of::read_env(name)
                .map_err(|e| setup_error("client_key", e))?
                .into_bytes(),
            source_of::env_source(name),
        ),
    };
    // The error of a parse never quotes the text.
    PrivateKeyDer::from_pem_slice(&text).map_err(|_| {
        setup_error(
            "client_key",
            format!("{from}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        )
    })
}

/// Why a TLS connection failed, as the guest and the operator are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The handshake failed: certificates, names, versions, a refused client.
    Handshake(String),
    /// Anything else on the connection.
    Other,
}

/// What this side of a connection knows when a handshake fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// Whether a client certificate is configured.
    pub has_cert: bool,
    /// Whether the server asked for one (`None`: not known).
    pub asked: Option<bool>,
}

/// What `err`, from a TLS handshake, read or write, means. `host` is the
/// name that was checked.
pub fn explain(err: &std::io::Error, host: &str, side: Side) -> Failure {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Failure::Other;
    };
    Failure::Handshake(explain_tls(tls, host, side))
}

/// [`explain`] for an error anywhere in `err`'s chain of sources (an HTTP
/// client's error): `None` if no TLS error is in it.
pub fn explain_chain(
    err: &(dyn std::error::Error + 'static),
    host: &str,
    side: Side,
) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_tls(tls, host, side));
        }
        // An `io::Error`'s source is its inner error's source, not the
        // inner error itself (which is where tokio-rustls puts rustls's,
        // and an HTTP connector may wrap that in an `io::Error` again).
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = explain_chain(inner, host, side)
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The alerts a server sends when it does not accept the client's
/// certificate, or its lack of one (in different words: OpenSSL's
/// CertificateRequired, Go's BadCertificate, Erlang's HandshakeFailure).
fn refuses_client(alert: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnknownCA
            | A::AccessDenied
            | A::HandshakeFailure
    )
}

fn explain_tls(err: &rustls::Error, host: &str, side: Side) -> String {
    use rustls::Error as E;
    let why = match err {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the certificate of {host} is signed by an unknown authority (trust it with sandbox.tls.ca)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the certificate of {host} is not valid for the name {host}: {cert}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate of {host} has expired: {cert}")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the certificate of {host} is not valid yet (check the clocks): {cert}")
            }
            CertificateError::Revoked => format!("the certificate of {host} is revoked"),
            other => format!("the certificate of {host} is not accepted: {other}"),
        },
        E::AlertReceived(alert) => {
            let alert = *alert;
            // A server that did not ask for a certificate is not refusing one.
            let about_client = refuses_client(alert) && side.asked != Some(false);
            let required = side.asked == Some(true)
                || (side.asked.is_none() && alert == AlertDescription::CertificateRequired);
            if about_client && side.has_cert && alert == AlertDescription::HandshakeFailure {
                format!(
                    "{host} asked for a client certificate and ended the handshake (alert HandshakeFailure): it may not accept ours, or shares no signature scheme, TLS version or cipher with this host"
                )
            } else if about_client && side.has_cert {
                format!("{host} refused the client certificate (alert {alert:?})")
            } else if about_client && required {
                format!(
                    "{host} requires a client certificate, and none is configured: set sandbox.tls.client_cert and client_key (alert {alert:?})"
                )
            } else if about_client && side.asked.is_none() {
                format!(
                    "{host} ended the handshake (alert {alert:?}): it may require a client certificate (sandbox.tls.client_cert and client_key)"
                )
            } else if alert == AlertDescription::HandshakeFailure
                || alert == AlertDescription::ProtocolVersion
                || alert == AlertDescription::InsufficientSecurity
            {
                format!(
                    "{host} ended the handshake (alert {alert:?}): it shares no TLS version (1.2, 1.3) or cipher suite with this host"
                )
            } else {
                format!("{host} ended the handshake (alert {alert:?})")
            }
        }
        E::PeerIncompatible(why) => {
            format!("{host} and this host share no TLS version or cipher: {why:?}")
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("{host} does not speak TLS here ({err}); is it a plaintext port?")
        }
        other => format!("TLS with {host} failed: {other}"),
    };
    format!("TLS handshake failed: {why}")
}

/// Why a server that asked for a client certificate, and got none, closed
/// the connection right after the handshake, before it sent a byte: some
/// servers (Erlang's) reset the connection rather than send an alert.
pub fn closed_after_handshake(host: &str) -> String {
    format!(
        "TLS handshake failed: {host} asked for a client certificate, got none, and closed the connection: set sandbox.tls.client_cert and client_key"
    )
}

/// A client-certificate resolver that notes whether the server asked, and
/// answers as `inner` does. One per connection: the flag is that
/// connection's.
#[derive(Debug)]
pub struct AskedRecorder {
    inner: Arc<dyn rustls::client::ResolvesClientCert>,
    asked: Arc<std::sync::atomic::AtomicBool>,
}

impl AskedRecorder {
    /// `config` with a recorder of its own, and the flag it sets.
    pub fn install(
        config: &rustls::ClientConfig,
    ) -> (
        Arc<rustls::ClientConfig>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut config = config.clone();
        config.client_auth_cert_resolver = Arc::new(AskedRecorder {
            inner: config.client_auth_cert_resolver.clone(),
            asked: asked.clone(),
        });
        (Arc::new(config), asked)
    }
}

impl rustls::client::ResolvesClientCert for AskedRecorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ca: Option<&Path>) -> TlsSettings {
        TlsSettings {
            ca: ca.map(Path::to_path_buf),
            system_roots: true,
            ..TlsSettings::default()
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = settings(Some(&missing)).client().unwrap_err();
        assert_eq!(e.field, "ca");
        assert!(e.message.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = settings(Some(&empty)).client().unwrap_err();
        assert!(e.message.contains("holds no PEM certificate"), "{e}");
        assert!(e.to_string().starts_with("sandbox.tls.ca: "), "{e}");
    }

    #[test]
    fn a_client_cert_needs_its_key_and_a_key_is_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        std::fs::write(&cert, "x").unwrap();
        let only_cert = TlsSettings {
            client_cert: Some(cert.clone()),
            ..settings(None)
        };
        assert_eq!(only_cert.client().unwrap_err().field, "client_key");
        let key = KeySource(SecretRef::Env("OUTBOX_TLS_TEST_UNSET_KEY".into()));
        let e = read_key(&key).unwrap_err();
        assert!(
            e.message.contains("OUTBOX_TLS_TEST_UNSET_KEY is not set"),
            "{e}"
        );
        let secret = dir.path().join("key.pem");
        std::fs::write(&secret, "s3cret-not-pem").unwrap();
        let e = read_key(&KeySource(SecretRef::File(secret))).unwrap_err();
        assert!(!e.message.contains("s3cret"), "{e}");
        assert!(e.message.contains("holds no PEM private key"), "{e}");
    }

    #[test]
    fn pem_text_where_a_path_belongs_is_refused_unrepeated_and_devices_are_not_read() {
        let pasted = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n";
        let e = read_key(&KeySource(SecretRef::File(pasted.into()))).unwrap_err();
        assert!(e.message.contains("not repeated"), "{e}");
        assert!(!e.to_string().contains("MIGHAgEA"), "{e}");
        let e = settings(Some(Path::new("/dev/zero"))).client().unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = settings(Some(dir.path())).client().unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
    }

    #[test]
    fn only_ca_without_one_trusts_nothing_and_says_so() {
        let none = TlsSettings {
            system_roots: false,
            ..TlsSettings::default()
        };
        assert!(
            none.client()
                .unwrap_err()
                .message
                .contains("no certificate authority")
        );
    }

    #[test]
    fn a_key_source_is_a_path_or_a_reference() {
        let parse = |s: &str| toml::from_str::<TlsSettings>(s);
        assert_eq!(
            parse(r#"client_key = "k.pem""#).unwrap().client_key,
            Some(KeySource(SecretRef::File("k.pem".into())))
        );
        assert_eq!(
            parse(r#"client_key = { env = "K" }"#).unwrap().client_key,
            Some(KeySource(SecretRef::Env("K".into())))
        );
        let e = parse(r#"client_key = { envv = "K" }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a path"), "{e}");
    }

    #[test]
    fn handshake_failures_say_which_one_it_was() {
        let none = Side {
            has_cert: false,
            asked: Some(false),
        };
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(explain_tls(&unknown, "mq", none).contains("unknown authority"));
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(explain_tls(&name, "mq", none).contains("not valid for the name mq"));
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(explain_tls(&expired, "mq", none).contains("expired"));
        // Asked for a certificate: any refusing alert means "required".
        let asked = Side {
            has_cert: false,
            asked: Some(true),
        };
        for alert in [
            AlertDescription::CertificateRequired,
            AlertDescription::BadCertificate,
            AlertDescription::HandshakeFailure,
        ] {
            let e = rustls::Error::AlertReceived(alert);
            assert!(
                explain_tls(&e, "mq", asked).contains("requires a client certificate, and none"),
                "{alert:?}"
            );
        }
        // Not asked: a HandshakeFailure is about versions or ciphers.
        let failure = rustls::Error::AlertReceived(AlertDescription::HandshakeFailure);
        assert!(explain_tls(&failure, "mq", none).contains("shares no TLS version"));
        // Not known whether asked: only CertificateRequired is certain.
        let unknown_side = Side {
            has_cert: false,
            asked: None,
        };
        let wants = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(explain_tls(&wants, "mq", unknown_side).contains("requires a client certificate"));
        assert!(explain_tls(&failure, "mq", unknown_side).contains("it may require"));
        let has = Side {
            has_cert: true,
            asked: Some(true),
        };
        assert!(explain_tls(&wants, "mq", has).contains("refused the client certificate"));
        // With a certificate, but the server asked for none: not about it.
        let not_asked = Side {
            has_cert: true,
            asked: Some(false),
        };
        let e = explain_tls(&failure, "mq", not_asked);
        assert!(
            !e.contains("client certificate") && e.contains("shares no TLS version"),
            "{e}"
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert!(matches!(explain(&io, "mq", none), Failure::Handshake(_)));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(explain(&plain, "mq", none), Failure::Other);
    }
}
