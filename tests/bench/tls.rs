//! TLS side by side with plaintext, in the same run: the webhook to a local
//! receiver over HTTP and over HTTPS (the target's own client, with
//! `sandbox.tls`), and NATS to a nats-server of its own without TLS and one
//! with it (`tls://`, through the host's `outbox:relay/tls`). Same
//! messages, same receiver code on both sides; only TLS differs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use outbox_relay_tests::tls::{self as harness, Pki, Served};
use serde_json::json;

use crate::setup::{BenchDb, DbKind};
use crate::transports::{Nats, Receiver, TransportRun, drain_through};

/// A webhook drain to [`Receiver`], over HTTPS when `pki` is given.
pub async fn webhook(
    n: u64,
    size: usize,
    batch_size: Option<u32>,
    pki: Option<&Pki>,
) -> anyhow::Result<TransportRun> {
    let db = BenchDb::new(DbKind::Postgres).await?;
    let receiver = match pki {
        None => Receiver::start().await?,
        Some(pki) => serve_tls(pki).await?,
    };
    let mut body = receiver.target_toml(&db, "hook")?;
    if let Some(pki) = pki {
        let host = receiver.addr.replacen("127.0.0.1", "localhost", 1);
        body = body
            .replace(
                &format!("http://{}/hook", receiver.addr),
                &format!("https://{host}/hook"),
            )
            .replace(
                &format!("allow_http = [\"{}\"]", receiver.addr),
                &format!(
                    "allow_http = [\"{host}\"], tls = {{ ca = \"{}\" }}",
                    pki.ca.cert.display()
                ),
            );
        anyhow::ensure!(body.contains("https://"), "the target was not rewritten");
    }
    let (elapsed, rate) = drain_through(&db, "hook", &body, n, size, batch_size).await?;
    let got = receiver.requests.load(Ordering::Relaxed);
    anyhow::ensure!(got >= n, "the receiver got {got} requests for {n} messages");
    Ok(TransportRun::Measured {
        transport: if pki.is_some() {
            "webhook-tls"
        } else {
            "webhook-plain"
        },
        messages: n,
        elapsed,
        rate,
        check: format!(
            "the receiver answered {got} POSTs (204) over {} {} connections",
            receiver.connections.load(Ordering::Relaxed),
            if pki.is_some() { "TLS" } else { "TCP" }
        ),
    })
}

/// [`Receiver`]'s counting service over TLS (HTTP/1.1), on 127.0.0.1.
async fn serve_tls(pki: &Pki) -> anyhow::Result<Receiver> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = Receiver {
        addr: listener.local_addr()?.to_string(),
        ..Receiver::default()
    };
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(Served::Good, false)));
    let counters = receiver.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counters.connections.fetch_add(1, Ordering::Relaxed);
            let (acceptor, counters) = (acceptor.clone(), counters.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let counters = counters.clone();
                    async move {
                        // As the plaintext receiver: the whole body, then 204.
                        let _ = axum::body::to_bytes(
                            axum::body::Body::new(request.into_body()),
                            usize::MAX,
                        )
                        .await;
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        let mut response = hyper::Response::new(String::new());
                        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(receiver)
}

/// A NATS drain to a nats-server of its own (JetStream, file storage in a
/// temp dir), over TLS when `pki` is given.
pub async fn nats(
    n: u64,
    size: usize,
    batch_size: Option<u32>,
    pki: Option<&Pki>,
) -> anyhow::Result<TransportRun> {
    let label = if pki.is_some() {
        "nats-tls"
    } else {
        "nats-plain"
    };
    let (server, _running) = match pki {
        Some(pki) => {
            let server = harness::nats(pki, Served::Good, false);
            (server.port, Running::Tls(Box::new(server)))
        }
        None => {
            let server = harness::nats_plain();
            (server.port, Running::Plain(server))
        }
    };
    let addr = format!("127.0.0.1:{server}");
    let host = format!("localhost:{server}");
    let mut client =
        Nats::connect_with(&addr, pki.map(|pki| ("localhost", pki.client_config(None)))).await?;
    let (stream, prefix) = client.create_stream().await?.map_err(anyhow::Error::msg)?;
    let (scheme, tls) = match pki {
        Some(pki) => (
            "tls",
            format!(", tls = {{ ca = \"{}\" }}", pki.ca.cert.display()),
        ),
        None => ("nats", String::new()),
    };
    let db = BenchDb::new(DbKind::Postgres).await?;
    let body = format!(
        r#"
[[routes]]
events = ["bench.*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
config = {{ url = "{scheme}://{host}", subject = "{prefix}.{{event}}" }}
sandbox = {{ allow_tcp = ["{host}"]{tls} }}
"#
    );
    let (elapsed, rate) = drain_through(&db, "bus", &body, n, size, batch_size).await?;
    let info = client
        .request(&format!("$JS.API.STREAM.INFO.{stream}"), &json!({}))
        .await?;
    let stored = info["state"]["messages"].as_u64().unwrap_or(0);
    anyhow::ensure!(stored >= n, "the stream holds {stored} of {n} messages");
    Ok(TransportRun::Measured {
        transport: label,
        messages: n,
        elapsed,
        rate,
        check: format!("the JetStream stream holds {stored} messages (file storage)"),
    })
}

/// Keeps a server running while its drain runs.
enum Running {
    Tls(#[allow(dead_code)] Box<harness::Nats>),
    Plain(#[allow(dead_code)] harness::PlainNats),
}
