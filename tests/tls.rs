//! TLS for the tests: a throwaway PKI ([`Pki`]), brokers that speak only TLS
//! on free ports, and clients the project did not write that read back over
//! TLS what a transport delivered.
//!
//! - Brokers ([`nats`], [`mosquitto`], [`redis`], [`rabbitmq`], [`https`])
//!   listen on 127.0.0.1 only, present the server certificate [`Served`]
//!   picks, and with `require_client_cert` refuse a client without a
//!   certificate from [`Pki::client_ca`] (mTLS). Each is its own process
//!   (RabbitMQ: its own TLS listener on the node the tests share), stopped
//!   when dropped.
//! - Readers: async-nats, rumqttc and `mosquitto_sub`/`mosquitto_pub`
//!   (OpenSSL), redis-rs over tokio-rustls and `redis-cli` (OpenSSL), lapin,
//!   and for HTTPS the requests the receiver recorded. They trust the test
//!   CA only, and present [`Pki::client`] when asked to.
//! - Probes: [`handshake`] (rustls, ring) and [`openssl_verify`] (OpenSSL's
//!   `s_client`) say whether a client trusting one CA accepts a listener.
//!
//! Nothing here skips: a missing binary or service is a panic that says so.
//! Kafka has no starter: tansu, the tests' Kafka broker, has no TLS listener.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
pub use rustls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncReadExt as _;

use crate::free_port;

/// How long a broker may take to start listening.
const START: Duration = Duration::from_secs(30);

/// ring, the provider the host's rustls uses. (The test binary has
/// aws-lc-rs too, through lapin: everything here names its provider.)
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which certificate and key a listener presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Signed by the test CA, for DNS `localhost` and IP 127.0.0.1.
    Good,
    /// Signed by the test CA, for DNS `wrong.example` only.
    WrongName,
    /// For `localhost` and 127.0.0.1, signed by a CA nobody trusts.
    UnknownCa,
}

/// A CA certificate (PEM file and its contents).
#[derive(Debug, Clone)]
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert: PathBuf,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
}

/// A certificate and its private key, as files and in memory.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate alone, PEM.
    pub cert: PathBuf,
    /// The private key alone, PEM (PKCS#8, ECDSA P-256).
    pub key: PathBuf,
    /// The certificate then the key in one PEM file.
    pub combined: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Identity {
    /// The certificate chain to present (the end-entity certificate alone:
    /// every CA here is a root).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

/// A PKI of the test's own, in a temporary directory that lives as long
/// as any clone (brokers keep one). ECDSA P-256 keys, valid 2000-2099 (so
/// a relay under faketime still accepts them). The directory and files are
/// world-readable: RabbitMQ and Mosquitto read them as their own users.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: Arc<tempfile::TempDir>,
    /// "test CA": what the clients here trust.
    pub ca: Ca,
    /// `localhost` + 127.0.0.1, by the test CA ([`Served::Good`]).
    pub server: Identity,
    /// `wrong.example` only, by the test CA ([`Served::WrongName`]).
    pub wrong_name: Identity,
    /// "unknown CA": trusted by no one.
    pub unknown_ca: Ca,
    /// `localhost` + 127.0.0.1, by the unknown CA ([`Served::UnknownCa`]).
    pub unknown_ca_server: Identity,
    /// "client CA": what an mTLS broker checks client certificates against.
    pub client_ca: Ca,
    /// CN `outbox-relay-test`, by the client CA: an mTLS broker accepts it.
    pub client: Identity,
    /// CN `outbox-relay-test` too, by the unknown CA: an mTLS broker refuses it.
    pub stranger_client: Identity,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca: Ca,
}

fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "outbox-relay tests");
    dn
}

impl Pki {
    /// Generates every certificate and key, and writes them as PEM files.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("outbox-pki-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let at = dir.path();
        let ca = authority(at, "ca", "test CA");
        let unknown = authority(at, "unknown-ca", "unknown CA");
        let client_ca = authority(at, "client-ca", "client CA");
        let server_names = || vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let server = leaf(at, "server", &ca, "localhost", server_names(), true);
        let wrong_name = leaf(
            at,
            "wrong-name",
            &ca,
            "wrong.example",
            vec!["wrong.example".into()],
            true,
        );
        let unknown_ca_server = leaf(
            at,
            "unknown-ca-server",
            &unknown,
            "localhost",
            server_names(),
            true,
        );
        let client = leaf(at, "client", &client_ca, "outbox-relay-test", vec![], false);
        let stranger_client = leaf(
            at,
            "stranger-client",
            &unknown,
            "outbox-relay-test",
            vec![],
            false,
        );
        Pki {
            dir: Arc::new(dir),
            ca: ca.ca,
            server,
            wrong_name,
            unknown_ca: unknown.ca,
            unknown_ca_server,
            client_ca: client_ca.ca,
            client,
            stranger_client,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The certificate and key a listener presents for `served`.
    pub fn served(&self, served: Served) -> &Identity {
        match served {
            Served::Good => &self.server,
            Served::WrongName => &self.wrong_name,
            Served::UnknownCa => &self.unknown_ca_server,
        }
    }

    /// Writes `contents` to `name` in the PKI's directory (world-readable).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        write_file(self.dir(), name, contents)
    }

    /// A PEM file holding several CA certificates, e.g. a bundle that
    /// trusts both the test CA and the unknown one.
    pub fn bundle(&self, name: &str, cas: &[&Ca]) -> PathBuf {
        let pem: String = cas.iter().map(|ca| ca.cert_pem.as_str()).collect();
        self.write(name, &pem)
    }

    /// A rustls client (ring) that trusts the test CA only and presents
    /// `identity`, if any.
    pub fn client_config(&self, identity: Option<&Identity>) -> ClientConfig {
        client_config(&[&self.ca], identity)
    }

    /// A rustls server (ring) presenting `served`; with
    /// `require_client_cert`, it refuses clients without a certificate from
    /// the client CA; without, it asks for none.
    pub fn server_config(&self, served: Served, require_client_cert: bool) -> ServerConfig {
        self.server_config_with(served, require_client_cert, rustls::DEFAULT_VERSIONS)
    }

    /// [`Pki::server_config`] speaking only `versions`.
    pub fn server_config_with(
        &self,
        served: Served,
        require_client_cert: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> ServerConfig {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from(self.client_ca.cert_der.clone()))
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let id = self.served(served);
        builder
            .with_single_cert(id.chain(), id.private_key())
            .unwrap()
    }
}

/// A rustls client (ring) trusting exactly `trust`, presenting `identity`.
pub fn client_config(trust: &[&Ca], identity: Option<&Identity>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for ca in trust {
        roots
            .add(CertificateDer::from(ca.cert_der.clone()))
            .unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain(), id.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn authority(dir: &Path, file: &str, cn: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = named(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let cert = params.self_signed(&key).unwrap();
    let cert_pem = cert.pem();
    let path = write_file(dir, &format!("{file}.pem"), &cert_pem);
    write_file(dir, &format!("{file}.key"), &key.serialize_pem());
    Authority {
        issuer: Issuer::new(params, key),
        ca: Ca {
            cert: path,
            cert_pem,
            cert_der: cert.der().to_vec(),
        },
    }
}

fn leaf(
    dir: &Path,
    file: &str,
    by: &Authority,
    cn: &str,
    names: Vec<String>,
    server: bool,
) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = named(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let cert = params.signed_by(&key, &by.issuer).unwrap();
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    Identity {
        cert: write_file(dir, &format!("{file}.pem"), &cert_pem),
        key: write_file(dir, &format!("{file}.key"), &key_pem),
        combined: write_file(
            dir,
            &format!("{file}.combined.pem"),
            &format!("{cert_pem}{key_pem}"),
        ),
        cert_pem,
        key_pem,
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

// ---------------------------------------------------------------------------
// Probes.

/// Connects to `addr` over TLS with `config`, checking the server as
/// `server_name`, then waits 300 ms for the server to object: with TLS 1.3
/// a server refuses a client certificate (or its absence) only after the
/// client's side of the handshake is done. `Ok` when the server accepted.
pub async fn handshake(addr: &str, server_name: &str, config: ClientConfig) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    handshake_on(tcp, server_name, config).await
}

async fn handshake_on(
    tcp: tokio::net::TcpStream,
    server_name: &str,
    config: ClientConfig,
) -> Result<(), String> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err("the server closed the connection after the handshake".into()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// OpenSSL's view: `openssl s_client` connects to `addr` trusting `ca`
/// only, checking the name `localhost`, presenting `identity` if any.
/// `Ok` when the server's certificate verified and the handshake ended
/// well; `Err` has s_client's output. (Async, so that it can reach an
/// [`Https`] receiver on the test's own runtime.)
pub async fn openssl_verify(
    addr: &str,
    ca: &Path,
    identity: Option<&Identity>,
) -> Result<(), String> {
    let openssl = need("/usr/bin/openssl", "openssl (Debian package `openssl`)");
    let mut command = tokio::process::Command::new(openssl);
    command
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .args(["-verify_hostname", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(ca)
        .arg("-brief");
    if let Some(id) = identity {
        command.arg("-cert").arg(&id.cert).arg("-key").arg(&id.key);
    }
    let out = command.stdin(Stdio::null()).output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("Verification: OK") {
        Ok(())
    } else {
        Err(text)
    }
}

// ---------------------------------------------------------------------------
// Processes.

fn need<'a>(path: &'a str, what: &str) -> &'a str {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: the TLS tests need {what}"
    );
    path
}

fn log_file(dir: &Path, name: &str) -> (PathBuf, std::fs::File) {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `ready` holds, panicking with the log if the process exits
/// or [`START`] passes.
fn wait_until(child: &mut Child, what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + START;
    loop {
        if ready() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited at start ({status}):\n{}", read_log(log));
        }
        assert!(
            Instant::now() < deadline,
            "{what} was not ready within {START:?}:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process killed (and reaped) on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What every listener here has.
macro_rules! listener_common {
    ($t:ty) => {
        impl $t {
            /// `127.0.0.1:<port>`.
            pub fn addr(&self) -> String {
                format!("127.0.0.1:{}", self.port)
            }

            /// `localhost:<port>` (the name the good certificate carries).
            pub fn host_port(&self) -> String {
                format!("localhost:{}", self.port)
            }

            /// The PKI the listener's certificates come from.
            pub fn pki(&self) -> &Pki {
                &self.pki
            }
        }
    };
}

/// [`handshake`] with a listener that starts TLS right away.
macro_rules! tls_first_probe {
    ($t:ty) => {
        impl $t {
            /// [`handshake`] with this listener, checking it as `server_name`.
            pub async fn probe(
                &self,
                server_name: &str,
                config: ClientConfig,
            ) -> Result<(), String> {
                handshake(&self.addr(), server_name, config).await
            }
        }
    };
}

tls_first_probe!(Mosquitto);
tls_first_probe!(Redis);
tls_first_probe!(RabbitMq);
tls_first_probe!(Https);

// ---------------------------------------------------------------------------
// NATS.

/// A nats-server with JetStream, TLS only.
pub struct Nats {
    _process: Process,
    _dir: tempfile::TempDir,
    pki: Pki,
    pub port: u16,
    pub served: Served,
    pub require_client_cert: bool,
}

listener_common!(Nats);

/// Starts `/usr/sbin/nats-server` on a free port with JetStream (its own
/// store) and TLS (`tls { verify }` against the client CA for mTLS, a
/// 10 s handshake timeout). nats-server 2.9 sends its INFO in plaintext
/// first and then expects the client to start TLS (no TLS-first mode).
/// Ready when it logs "Server is ready" (about 0.1 s).
pub fn nats(pki: &Pki, served: Served, require_client_cert: bool) -> Nats {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let id = pki.served(served);
    let verify = if require_client_cert {
        format!(
            "ca_file: \"{}\"\n  verify: true",
            pki.client_ca.cert.display()
        )
    } else {
        String::new()
    };
    let tls = format!(
        r#"tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  {verify}
  timeout: 10
}}
"#,
        cert = id.cert.display(),
        key = id.key.display(),
    );
    let process = spawn_nats(dir.path(), port, &tls);
    Nats {
        _process: process,
        _dir: dir,
        pki: pki.clone(),
        port,
        served,
        require_client_cert,
    }
}

/// A nats-server like [`nats`]'s, without TLS (for a plaintext run beside
/// a TLS one).
pub struct PlainNats {
    _process: Process,
    _dir: tempfile::TempDir,
    pub port: u16,
}

/// Starts a [`PlainNats`] on a free port.
pub fn nats_plain() -> PlainNats {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let process = spawn_nats(dir.path(), port, "");
    PlainNats {
        _process: process,
        _dir: dir,
        port,
    }
}

/// `/usr/sbin/nats-server` on `port` with JetStream in `dir`, and `extra`
/// config; ready on return.
fn spawn_nats(dir: &Path, port: u16, extra: &str) -> Process {
    let binary = need(
        "/usr/sbin/nats-server",
        "nats-server (Debian package `nats-server`)",
    );
    let config = write_file(
        dir,
        "nats.conf",
        &format!(
            r#"listen: "127.0.0.1:{port}"
jetstream {{
  store_dir: "{store}"
}}
{extra}"#,
            store = dir.join("js").display(),
        ),
    );
    let (log, file) = log_file(dir, "nats.log");
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    wait_until(&mut child, "nats-server", &log, || {
        read_log(&log).contains("Server is ready")
    });
    Process(child)
}

impl Nats {
    /// `tls://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("tls://localhost:{}", self.port)
    }

    /// An async-nats client over TLS to 127.0.0.1 (checked against the IP
    /// address), trusting the test CA, presenting `identity`.
    pub async fn connect(&self, identity: Option<&Identity>) -> Result<async_nats::Client, String> {
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .tls_client_config(self.pki.client_config(identity))
            .connection_timeout(Duration::from_secs(10))
            .connect(format!("tls://127.0.0.1:{}", self.port))
            .await
            .map_err(|e| e.to_string())
    }

    /// A JetStream context on a client presenting [`Pki::client`].
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = self
            .connect(Some(&self.pki.client))
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach nats-server at {} over TLS: {e}", self.addr())
            });
        async_nats::jetstream::new(client)
    }

    /// A stream `name` over `subjects` with a two-minute duplicate window.
    pub async fn create_stream(
        &self,
        name: &str,
        subjects: &[&str],
    ) -> async_nats::jetstream::stream::Stream {
        self.jetstream()
            .await
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.to_owned(),
                subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("creating stream {name}: {e}"))
    }

    /// [`handshake`] after reading the server's plaintext INFO line.
    pub async fn probe(&self, server_name: &str, config: ClientConfig) -> Result<(), String> {
        let mut tcp = tokio::net::TcpStream::connect(self.addr())
            .await
            .map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            let n = tcp.read(&mut byte).await.map_err(|e| e.to_string())?;
            if n == 0 || line.len() > 65536 {
                return Err(format!(
                    "no INFO line: {:?}",
                    String::from_utf8_lossy(&line)
                ));
            }
            line.push(byte[0]);
        }
        if !line.starts_with(b"INFO ") {
            return Err(format!(
                "not an INFO line: {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        handshake_on(tcp, server_name, config).await
    }
}

/// Every message `stream` holds, in stream order.
pub async fn stream_messages(
    stream: &async_nats::jetstream::stream::Stream,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let state = stream.get_info().await.unwrap().state;
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        out.push(stream.get_raw_message(seq).await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------
// Mosquitto.

/// A mosquitto with one TLS listener.
pub struct Mosquitto {
    _process: Process,
    _dir: tempfile::TempDir,
    pki: Pki,
    pub port: u16,
    pub served: Served,
    pub require_client_cert: bool,
}

listener_common!(Mosquitto);

/// Starts `/usr/sbin/mosquitto -c <file>` with `listener <port> 127.0.0.1`,
/// the served certificate and key, `cafile` the client CA,
/// `require_certificate`, `allow_anonymous true`, no persistence. Ready
/// when the port accepts (about 0.05 s).
pub fn mosquitto(pki: &Pki, served: Served, require_client_cert: bool) -> Mosquitto {
    let binary = need(
        "/usr/sbin/mosquitto",
        "mosquitto (Debian package `mosquitto`)",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let id = pki.served(served);
    let config = write_file(
        dir.path(),
        "mosquitto.conf",
        &format!(
            "listener {port} 127.0.0.1\n\
             certfile {cert}\n\
             keyfile {key}\n\
             cafile {ca}\n\
             require_certificate {require_client_cert}\n\
             allow_anonymous true\n\
             persistence false\n\
             log_dest stderr\n",
            cert = id.cert.display(),
            key = id.key.display(),
            ca = pki.client_ca.cert.display(),
        ),
    );
    let (log, file) = log_file(dir.path(), "mosquitto.log");
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    wait_until(&mut child, "mosquitto", &log, || listening(port));
    Mosquitto {
        _process: Process(child),
        _dir: dir,
        pki: pki.clone(),
        port,
        served,
        require_client_cert,
    }
}

/// An MQTT 5 subscriber (rumqttc over TLS) collecting every publish.
pub struct MqttSubscriber {
    received: Arc<Mutex<Vec<rumqttc::v5::mqttbytes::v5::Publish>>>,
    client: rumqttc::v5::AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Mosquitto {
    /// `mqtts://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("mqtts://localhost:{}", self.port)
    }

    /// Subscribes to `filter` at QoS 1 over TLS to 127.0.0.1, trusting the
    /// test CA and presenting [`Pki::client`]; panics if it cannot.
    pub async fn subscribe(&self, filter: &str) -> MqttSubscriber {
        self.try_subscribe(filter, Some(&self.pki.client))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot subscribe at mosquitto {} over TLS: {e}",
                    self.addr()
                )
            })
    }

    /// Subscribes to `filter` presenting `identity`; `Ok` once the broker
    /// acknowledged the subscription.
    pub async fn try_subscribe(
        &self,
        filter: &str,
        identity: Option<&Identity>,
    ) -> Result<MqttSubscriber, String> {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};

        let id = format!("outbox-tls-test-{}", uuid::Uuid::now_v7().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", self.port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_start(true);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(self.pki.client_config(identity))),
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (ready, subscribed) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let mut ready = Some(ready);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(p),
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), subscribed).await {
            Ok(Ok(Ok(()))) => Ok(MqttSubscriber {
                received,
                client,
                task,
            }),
            Ok(Ok(Err(e))) => Err(e),
            other => {
                task.abort();
                Err(format!("no SUBACK: {other:?}"))
            }
        }
    }

    fn mosquitto_tls_args(&self, command: &mut Command, identity: Option<&Identity>) {
        command
            .args(["-h", "localhost", "-p", &self.port.to_string()])
            .arg("--cafile")
            .arg(&self.pki.ca.cert)
            .args(["-V", "mqttv5"]);
        if let Some(id) = identity {
            command
                .arg("--cert")
                .arg(&id.cert)
                .arg("--key")
                .arg(&id.key);
        }
    }

    /// Publishes `message` to `topic` at QoS 1 with `mosquitto_pub`
    /// (OpenSSL), checking the server as `localhost`.
    pub fn mosquitto_pub(
        &self,
        identity: Option<&Identity>,
        topic: &str,
        message: &str,
    ) -> Result<(), String> {
        let mut command = Command::new(need(
            "/usr/bin/mosquitto_pub",
            "mosquitto_pub (Debian package `mosquitto-clients`)",
        ));
        self.mosquitto_tls_args(&mut command, identity);
        let out = command
            .args(["-q", "1", "-t", topic, "-m", message])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "mosquitto_pub: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts `mosquitto_sub` (OpenSSL, presenting [`Pki::client`]) on
    /// `filter` at QoS 1; it stops after `count` messages or `timeout`.
    /// Subscribed once [`MosquittoSub::wait`] can be called; give it a
    /// moment (it prints nothing until a message comes).
    pub fn mosquitto_sub(&self, filter: &str, count: usize, timeout: Duration) -> MosquittoSub {
        let mut command = Command::new(need(
            "/usr/bin/mosquitto_sub",
            "mosquitto_sub (Debian package `mosquitto-clients`)",
        ));
        self.mosquitto_tls_args(&mut command, Some(&self.pki.client));
        let child = command
            .args(["-q", "1", "-t", filter, "-C", &count.to_string()])
            .args(["-W", &timeout.as_secs().max(1).to_string()])
            .args(["-F", "%t\t%x"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        MosquittoSub { child }
    }
}

/// A running `mosquitto_sub`.
pub struct MosquittoSub {
    child: Child,
}

impl MosquittoSub {
    /// Waits for it to end; returns (topic, payload) of each message.
    pub fn wait(self) -> Vec<(String, Vec<u8>)> {
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout
            .lines()
            .map(|line| {
                let (topic, hex) = line.split_once('\t').unwrap_or((line, ""));
                (topic.to_owned(), from_hex(hex))
            })
            .collect()
    }
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

impl MqttSubscriber {
    /// The subscriber's client (to publish on the same connection).
    pub fn client(&self) -> &rumqttc::v5::AsyncClient {
        &self.client
    }

    /// Every publish so far.
    pub fn received(&self) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` publishes came, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} MQTT publishes within {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

/// The MQTT 5 user property `name` of `p`.
pub fn mqtt_property(p: &rumqttc::v5::mqttbytes::v5::Publish, name: &str) -> Option<String> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

// ---------------------------------------------------------------------------
// Redis.

/// A redis-server with TLS only (`--port 0`).
pub struct Redis {
    _process: Process,
    _dir: tempfile::TempDir,
    pki: Pki,
    pub port: u16,
    pub served: Served,
    pub require_client_cert: bool,
}

listener_common!(Redis);

/// Starts `/usr/bin/redis-server --port 0 --tls-port <port>` bound to
/// 127.0.0.1, the served certificate, `--tls-ca-cert-file` the client CA,
/// `--tls-auth-clients yes|no`, no persistence. Ready when it logs "Ready
/// to accept connections" (about 0.05 s).
pub fn redis(pki: &Pki, served: Served, require_client_cert: bool) -> Redis {
    let binary = need(
        "/usr/bin/redis-server",
        "redis-server 7 (Debian package `redis-server`)",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let id = pki.served(served);
    let (log, file) = log_file(dir.path(), "redis.log");
    let mut child = Command::new(binary)
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .args(["--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(&id.cert)
        .arg("--tls-key-file")
        .arg(&id.key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.client_ca.cert)
        .args([
            "--tls-auth-clients",
            if require_client_cert { "yes" } else { "no" },
        ])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    wait_until(&mut child, "redis-server", &log, || {
        read_log(&log).contains("Ready to accept connections")
    });
    Redis {
        _process: Process(child),
        _dir: dir,
        pki: pki.clone(),
        port,
        served,
        require_client_cert,
    }
}

impl Redis {
    /// `rediss://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// A redis-rs connection over tokio-rustls to 127.0.0.1 (checked
    /// against the IP address), trusting the test CA, presenting
    /// `identity`. The first command tells whether the server kept it.
    pub async fn connect(
        &self,
        identity: Option<&Identity>,
    ) -> Result<redis::aio::MultiplexedConnection, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr())
            .await
            .map_err(|e| e.to_string())?;
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(self.pki.client_config(identity)));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        // The driver future borrows the info: a static one outlives it.
        static INFO: std::sync::LazyLock<redis::RedisConnectionInfo> =
            std::sync::LazyLock::new(redis::RedisConnectionInfo::default);
        let (mut connection, driver) = redis::aio::MultiplexedConnection::new(&INFO, tls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        let pong: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        if pong != "PONG" {
            return Err(format!("PING answered {pong:?}"));
        }
        Ok(connection)
    }

    /// Every entry of stream `key` (XRANGE - +): (entry id, fields), on a
    /// connection presenting [`Pki::client`].
    pub async fn xrange(&self, key: &str) -> Vec<(String, HashMap<String, Vec<u8>>)> {
        let mut connection = self
            .connect(Some(&self.pki.client))
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach redis-server at {} over TLS: {e}", self.addr())
            });
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let fields = entry
                    .map
                    .into_iter()
                    .map(|(k, v)| match v {
                        redis::Value::BulkString(bytes) => (k, bytes),
                        other => panic!("field {k} is not a bulk string: {other:?}"),
                    })
                    .collect();
                (entry.id, fields)
            })
            .collect()
    }

    /// `redis-cli --tls` (OpenSSL) to `localhost:<port>`, trusting the
    /// test CA, presenting `identity`, running `args`. It checks the
    /// server's chain but not its host name (redis-cli 7.0: it accepts
    /// [`Served::WrongName`]).
    pub fn redis_cli(&self, identity: Option<&Identity>, args: &[&str]) -> Output {
        let mut command = Command::new(need(
            "/usr/bin/redis-cli",
            "redis-cli (Debian package `redis-tools`)",
        ));
        command
            .args(["--tls", "-h", "localhost", "-p", &self.port.to_string()])
            .arg("--cacert")
            .arg(&self.pki.ca.cert);
        if let Some(id) = identity {
            command
                .arg("--cert")
                .arg(&id.cert)
                .arg("--key")
                .arg(&id.key);
        }
        command.args(args).stdin(Stdio::null()).output().unwrap()
    }
}

// ---------------------------------------------------------------------------
// RabbitMQ.

/// A TLS (AMQPS) listener of the test's own on the RabbitMQ node the tests
/// share (guest/guest, which logs in from loopback only).
pub struct RabbitMq {
    pki: Pki,
    pub port: u16,
    pub served: Served,
    pub require_client_cert: bool,
}

listener_common!(RabbitMq);

fn rabbitmqctl_eval(expression: &str) -> Output {
    let ctl = need(
        "/usr/sbin/rabbitmqctl",
        "RabbitMQ (Debian package `rabbitmq-server`)",
    );
    Command::new(ctl)
        .args(["eval", expression])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Adds an SSL listener on 127.0.0.1:<free port> to the running RabbitMQ
/// node (`rabbitmqctl eval 'rabbit_networking:start_ssl_listener(..)'`)
/// with the served certificate, and for mTLS `verify_peer` and
/// `fail_if_no_peer_cert` against the client CA; dropping it stops that
/// listener. About 1 s each way (rabbitmqctl boots an Erlang VM). Panics
/// when the node is not running.
pub fn rabbitmq(pki: &Pki, served: Served, require_client_cert: bool) -> RabbitMq {
    let port = free_port();
    let id = pki.served(served);
    let verify = if require_client_cert {
        format!(
            r#"{{cacertfile, "{}"}}, {{verify, verify_peer}}, {{fail_if_no_peer_cert, true}}"#,
            pki.client_ca.cert.display()
        )
    } else {
        "{verify, verify_none}".to_string()
    };
    let expression = format!(
        r#"rabbit_networking:start_ssl_listener({{"127.0.0.1", {port}}}, [{{certfile, "{cert}"}}, {{keyfile, "{key}"}}, {verify}], 1)."#,
        cert = id.cert.display(),
        key = id.key.display(),
    );
    let out = rabbitmqctl_eval(&expression);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim() == "ok",
        "cannot add a TLS listener to RabbitMQ (is the node running?): {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + START;
    while !listening(port) {
        assert!(
            Instant::now() < deadline,
            "RabbitMQ's TLS listener on {port} did not accept within {START:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    RabbitMq {
        pki: pki.clone(),
        port,
        served,
        require_client_cert,
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = rabbitmqctl_eval(&format!(
            r#"rabbit_networking:stop_tcp_listener({{"127.0.0.1", {}}})."#,
            self.port
        ));
    }
}

/// A topic exchange and an exclusive queue bound to it, both unique, on a
/// TLS connection of their own.
pub struct RabbitQueue {
    _connection: lapin::Connection,
    pub channel: lapin::Channel,
    pub exchange: String,
    pub queue: String,
}

impl RabbitMq {
    /// `amqps://guest:guest@localhost:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }

    /// A lapin connection (rustls) to `amqps://guest:guest@127.0.0.1:<port>`
    /// trusting the test CA, presenting `identity`.
    pub async fn connect(&self, identity: Option<&Identity>) -> Result<lapin::Connection, String> {
        let config = lapin::tcp::OwnedTLSConfig {
            identity: identity.map(|id| lapin::tcp::OwnedIdentity::PKCS8 {
                pem: id.cert_pem.clone().into_bytes(),
                key: id.key_pem.clone().into_bytes(),
            }),
            cert_chain: Some(self.pki.ca.cert_pem.clone()),
        };
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        tokio::time::timeout(
            Duration::from_secs(15),
            lapin::Connection::connect_with_config(
                &format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port),
                lapin::ConnectionProperties::default(),
                config,
                runtime,
            ),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())
    }

    /// A fresh topic exchange with an exclusive queue bound by `binding`,
    /// on a connection presenting [`Pki::client`].
    pub async fn queue(&self, binding: &str) -> RabbitQueue {
        use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;

        let connection = self
            .connect(Some(&self.pki.client))
            .await
            .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at {} over TLS: {e}", self.addr()));
        let channel = connection.create_channel().await.unwrap();
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("outbox-tls-test-{unique}");
        let queue = format!("outbox-tls-test-{unique}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        RabbitQueue {
            _connection: connection,
            channel,
            exchange,
            queue,
        }
    }
}

impl RabbitQueue {
    /// Every message waiting in the queue, taken off it.
    pub async fn drain(&self) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(m.delivery);
        }
        out
    }

    /// Drains until `n` messages came in all, or panics after `timeout`.
    pub async fn collect(&self, n: usize, timeout: Duration) -> Vec<lapin::message::Delivery> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            got.extend(self.drain().await);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} AMQP messages within {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// HTTPS.

/// One request as the HTTPS receiver saw it.
#[derive(Debug, Clone)]
pub struct HttpsRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
    /// The DER of the client's certificate, when it presented one.
    pub client_cert: Option<Vec<u8>>,
}

/// An in-process HTTPS (HTTP/1.1) receiver on 127.0.0.1 that records every
/// request and answers [`Https::set_status`] (200 at first) with an empty
/// body. Dropping it closes its listener and every connection.
pub struct Https {
    pki: Pki,
    pub port: u16,
    pub served: Served,
    pub require_client_cert: bool,
    requests: Arc<Mutex<Vec<HttpsRequest>>>,
    status: Arc<AtomicU16>,
    failed_handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

listener_common!(Https);

/// Starts an [`Https`] receiver (tokio-rustls and hyper, on the current
/// runtime) presenting `served`; with `require_client_cert`, the handshake
/// fails without a certificate from the client CA. Ready on return.
pub async fn https(pki: &Pki, served: Served, require_client_cert: bool) -> Https {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(served, require_client_cert)));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(AtomicU16::new(200));
    let failed_handshakes = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(serve_https(
        listener,
        acceptor,
        requests.clone(),
        status.clone(),
        failed_handshakes.clone(),
    ));
    Https {
        pki: pki.clone(),
        port,
        served,
        require_client_cert,
        requests,
        status,
        failed_handshakes,
        task,
    }
}

async fn serve_https(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    requests: Arc<Mutex<Vec<HttpsRequest>>>,
    status: Arc<AtomicU16>,
    failed_handshakes: Arc<AtomicUsize>,
) {
    // Connections live in this set: aborting this task drops them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let requests = requests.clone();
                let status = status.clone();
                let failed = failed_handshakes.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| c.to_vec());
                    let service = hyper::service::service_fn(move |request| {
                        record(request, client_cert.clone(), requests.clone(), status.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn record(
    request: hyper::Request<hyper::body::Incoming>,
    client_cert: Option<Vec<u8>>,
    requests: Arc<Mutex<Vec<HttpsRequest>>>,
    status: Arc<AtomicU16>,
) -> Result<hyper::Response<String>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(axum::body::Body::new(body), usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    requests.lock().unwrap().push(HttpsRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
        client_cert,
    });
    let mut response = hyper::Response::new(String::new());
    *response.status_mut() = hyper::StatusCode::from_u16(status.load(Ordering::SeqCst))
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}

impl Https {
    /// `https://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<HttpsRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The status later requests get.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// TLS handshakes that failed (a client that refused the certificate,
    /// or one the receiver refused).
    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }

    /// POSTs `body` to `path` with `curl` (OpenSSL), trusting the test CA,
    /// presenting `identity`; the HTTP status, or curl's complaint.
    pub async fn curl_post(
        &self,
        identity: Option<&Identity>,
        path: &str,
        body: &str,
    ) -> Result<u16, String> {
        let mut command =
            tokio::process::Command::new(need("/usr/bin/curl", "curl (Debian package `curl`)"));
        command
            .args(["--silent", "--show-error", "--max-time", "10"])
            .arg("--cacert")
            .arg(&self.pki.ca.cert)
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                body,
            ]);
        if let Some(id) = identity {
            command
                .arg("--cert")
                .arg(&id.cert)
                .arg("--key")
                .arg(&id.key);
        }
        let out = command
            .arg(format!("{}{path}", self.url()))
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Https {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// A TLS front for a plaintext server (tansu has no TLS listener).

/// A TLS listener on 127.0.0.1 that forwards each connection, once its
/// handshake is done, to a plaintext `upstream`: what a broker without TLS
/// of its own (tansu) looks like behind a TLS-terminating proxy. It runs on
/// a thread and runtime of its own; dropping it stops accepting.
pub struct Front {
    pki: Pki,
    pub port: u16,
    pub served: Served,
    pub require_client_cert: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

listener_common!(Front);
tls_first_probe!(Front);

/// Starts a [`Front`] on `port` (0: a free one) presenting `served`, in
/// front of `upstream`; with `require_client_cert`, a handshake without a
/// certificate from the client CA fails.
pub fn front(
    pki: &Pki,
    served: Served,
    require_client_cert: bool,
    port: u16,
    upstream: &str,
) -> Front {
    front_with(
        pki,
        served,
        require_client_cert,
        port,
        upstream,
        rustls::DEFAULT_VERSIONS,
    )
}

/// [`front`] speaking only TLS `versions`.
pub fn front_with(
    pki: &Pki,
    served: Served,
    require_client_cert: bool,
    port: u16,
    upstream: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Front {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config_with(
        served,
        require_client_cert,
        versions,
    )));
    let upstream = upstream.to_owned();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => return,
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    Front {
        pki: pki.clone(),
        port,
        served,
        require_client_cert,
        stop: Some(stop),
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
