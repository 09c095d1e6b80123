//! The TLS harness (tests/tls.rs) proven with clients the project did not
//! write: for each broker, the good certificate works over TLS; an mTLS
//! broker refuses a client without a certificate (or with one from another
//! CA) and accepts one from the client CA; a client trusting only the test
//! CA refuses the wrong-name and the unknown-CA certificates, while one
//! trusting that name or that CA accepts them (so the refusal is for that
//! reason alone). No relay runs here.
//!
//! Each test starts its own broker processes (RabbitMQ: listeners on the
//! shared node, about 1 s to add and 1 s to remove each).

use std::time::Duration;

use outbox_relay_tests::tls::{self, Pki, Served};

const WAIT: Duration = Duration::from_secs(20);

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[track_caller]
fn refused<T>(result: Result<T, String>, why: &str, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: accepted, expected a refusal ({why})"),
        Err(e) => {
            assert!(e.contains(why), "{what}: refused, but not for {why:?}: {e}");
            e
        }
    }
}

/// rustls's words for the two server-certificate failures.
const UNKNOWN_ISSUER: &str = "UnknownIssuer";
const NOT_FOR_NAME: &str = "not valid for name";

/// The server-side probes every listener gets: the test CA's client refuses
/// `WrongName` for `localhost` but accepts it as `wrong.example`, and
/// refuses `UnknownCa` but accepts it when it trusts the unknown CA.
async fn check_refusals<F, Fut>(pki: &Pki, served: Served, probe: F)
where
    F: Fn(&'static str, rustls::ClientConfig) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    match served {
        Served::Good => {
            probe("localhost", pki.client_config(None)).await.unwrap();
            probe("127.0.0.1", pki.client_config(None)).await.unwrap();
        }
        Served::WrongName => {
            refused(
                probe("localhost", pki.client_config(None)).await,
                NOT_FOR_NAME,
                "wrong name as localhost",
            );
            refused(
                probe("127.0.0.1", pki.client_config(None)).await,
                NOT_FOR_NAME,
                "wrong name as 127.0.0.1",
            );
            probe("wrong.example", pki.client_config(None))
                .await
                .expect("the wrong-name certificate is good for wrong.example");
        }
        Served::UnknownCa => {
            refused(
                probe("localhost", pki.client_config(None)).await,
                UNKNOWN_ISSUER,
                "unknown CA",
            );
            probe("localhost", tls::client_config(&[&pki.unknown_ca], None))
                .await
                .expect("a client trusting the unknown CA accepts its certificate");
        }
    }
}

/// OpenSSL (s_client) agrees: only the good certificate verifies.
async fn check_openssl(pki: &Pki, served: Served, addr: &str) {
    let result = tls::openssl_verify(addr, &pki.ca.cert, Some(&pki.client)).await;
    match served {
        Served::Good => result.unwrap(),
        Served::WrongName => {
            refused(result, "hostname mismatch", "openssl, wrong name");
        }
        Served::UnknownCa => {
            refused(
                result,
                "unable to get local issuer certificate",
                "openssl, unknown CA",
            );
        }
    }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_pki_verifies_with_openssl() {
    let pki = Pki::new();
    let verify = |ca: &std::path::Path, args: &[&str], cert: &std::path::Path| {
        std::process::Command::new("/usr/bin/openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .args(args)
            .arg(cert)
            .output()
            .expect("openssl is installed")
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let fails = |out: std::process::Output| assert!(!out.status.success());
    let server = ["-purpose", "sslserver"];
    ok(verify(
        &pki.ca.cert,
        &["-purpose", "sslserver", "-verify_hostname", "localhost"],
        &pki.server.cert,
    ));
    ok(verify(
        &pki.ca.cert,
        &["-purpose", "sslserver", "-verify_ip", "127.0.0.1"],
        &pki.server.cert,
    ));
    ok(verify(&pki.ca.cert, &server, &pki.wrong_name.cert));
    fails(verify(
        &pki.ca.cert,
        &["-verify_hostname", "localhost"],
        &pki.wrong_name.cert,
    ));
    fails(verify(&pki.ca.cert, &server, &pki.unknown_ca_server.cert));
    ok(verify(
        &pki.unknown_ca.cert,
        &server,
        &pki.unknown_ca_server.cert,
    ));
    ok(verify(
        &pki.client_ca.cert,
        &["-purpose", "sslclient"],
        &pki.client.cert,
    ));
    fails(verify(&pki.client_ca.cert, &[], &pki.stranger_client.cert));
    fails(verify(&pki.ca.cert, &[], &pki.client.cert));
    // The combined file is the certificate then the key.
    let combined = std::fs::read_to_string(&pki.client.combined).unwrap();
    assert_eq!(
        combined,
        format!("{}{}", pki.client.cert_pem, pki.client.key_pem)
    );
    assert!(
        pki.client
            .key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
}

// ---------------------------------------------------------------------------
// NATS (async-nats; nats-server 2.9 starts TLS after a plaintext INFO).

#[tokio::test]
async fn nats_jetstream_over_tls_round_trips_with_async_nats() {
    let pki = Pki::new();
    let nats = tls::nats(&pki, Served::Good, false);
    check_refusals(&pki, Served::Good, |name, config| nats.probe(name, config)).await;

    let id = unique();
    let stream = nats
        .create_stream(&format!("TLS_{id}"), &[&format!("tls.{id}.>")])
        .await;
    let js = nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "m-1");
    headers.insert("outbox-message-id", "m-1");
    let payload: Vec<u8> = vec![0x00, 0xff, b'\r', b'\n', 0x80];
    js.publish_with_headers(format!("tls.{id}.order"), headers, payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A client without a certificate is fine when none is required.
    nats.connect(None).await.unwrap();

    let messages = tls::stream_messages(&stream).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload.as_ref(), payload.as_slice());
    assert_eq!(messages[0].subject.as_str(), format!("tls.{id}.order"));
    assert_eq!(
        messages[0].headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("m-1")
    );
}

#[tokio::test]
async fn nats_with_mtls_refuses_clients_without_a_client_ca_certificate() {
    let pki = Pki::new();
    let nats = tls::nats(&pki, Served::Good, true);
    nats.connect(None)
        .await
        .map(|_| ())
        .expect_err("no client certificate: refused");
    nats.connect(Some(&pki.stranger_client))
        .await
        .map(|_| ())
        .expect_err("a client certificate from another CA: refused");
    assert!(
        nats.probe("localhost", pki.client_config(None))
            .await
            .is_err()
    );
    nats.probe("localhost", pki.client_config(Some(&pki.client)))
        .await
        .unwrap();

    let id = unique();
    let stream = nats
        .create_stream(&format!("TLS_{id}"), &[&format!("tls.{id}.>")])
        .await;
    let client = nats.connect(Some(&pki.client)).await.unwrap();
    async_nats::jetstream::new(client)
        .publish(format!("tls.{id}.x"), "mtls".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let messages = tls::stream_messages(&stream).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload.as_ref(), b"mtls");
}

#[tokio::test]
async fn nats_clients_trusting_the_test_ca_refuse_wrong_name_and_unknown_ca() {
    let pki = Pki::new();
    for served in [Served::WrongName, Served::UnknownCa] {
        let nats = tls::nats(&pki, served, false);
        check_refusals(&pki, served, |name, config| nats.probe(name, config)).await;
        let error = nats
            .connect(Some(&pki.client))
            .await
            .err()
            .unwrap_or_else(|| panic!("async-nats accepted {served:?}"));
        assert!(!error.is_empty());
    }
}

// ---------------------------------------------------------------------------
// Mosquitto (rumqttc, and mosquitto_pub/mosquitto_sub with OpenSSL).

#[tokio::test]
async fn mosquitto_over_tls_round_trips_with_rumqttc_and_the_mosquitto_clients() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;

    let pki = Pki::new();
    let broker = tls::mosquitto(&pki, Served::Good, false);
    check_refusals(&pki, Served::Good, |name, config| {
        broker.probe(name, config)
    })
    .await;
    check_openssl(&pki, Served::Good, &broker.addr()).await;

    let prefix = format!("tls/{}", unique());
    let subscriber = broker.subscribe(&format!("{prefix}/#")).await;
    // mosquitto_pub (OpenSSL) without a client certificate: none required.
    broker
        .mosquitto_pub(None, &format!("{prefix}/text"), "hello")
        .unwrap();
    let got = subscriber.wait_for(1, WAIT).await;
    assert_eq!(got[0].payload.as_ref(), b"hello");
    assert_eq!(got[0].topic.as_ref(), format!("{prefix}/text").as_bytes());

    // rumqttc publishes a retained binary message with a user property;
    // mosquitto_sub, subscribing afterwards, reads it back byte for byte.
    let binary = vec![0x00, 0xff, 0xfe, b'\n', 0x80];
    let properties = PublishProperties {
        user_properties: vec![("outbox-message-id".into(), "m-1".into())],
        ..Default::default()
    };
    subscriber
        .client()
        .publish_with_properties(
            format!("{prefix}/bin"),
            QoS::AtLeastOnce,
            true,
            binary.clone(),
            properties,
        )
        .await
        .unwrap();
    let got = subscriber.wait_for(2, WAIT).await;
    assert_eq!(
        tls::mqtt_property(&got[1], "outbox-message-id").as_deref(),
        Some("m-1")
    );
    let read = broker
        .mosquitto_sub(&format!("{prefix}/bin"), 1, Duration::from_secs(10))
        .wait();
    assert_eq!(read, vec![(format!("{prefix}/bin"), binary)]);
    subscriber.stop().await;
}

#[tokio::test]
async fn mosquitto_with_mtls_refuses_clients_without_a_client_ca_certificate() {
    let pki = Pki::new();
    let broker = tls::mosquitto(&pki, Served::Good, true);
    let prefix = format!("tls/{}", unique());
    broker
        .try_subscribe(&prefix, None)
        .await
        .map(|_| ())
        .expect_err("rumqttc without a client certificate: refused");
    broker
        .try_subscribe(&prefix, Some(&pki.stranger_client))
        .await
        .map(|_| ())
        .expect_err("rumqttc with a certificate from another CA: refused");
    broker
        .mosquitto_pub(None, &prefix, "x")
        .expect_err("mosquitto_pub without a client certificate: refused");
    broker
        .mosquitto_pub(Some(&pki.stranger_client), &prefix, "x")
        .expect_err("mosquitto_pub with a certificate from another CA: refused");
    assert!(
        broker
            .probe("localhost", pki.client_config(None))
            .await
            .is_err()
    );

    let subscriber = broker.subscribe(&format!("{prefix}/#")).await;
    broker
        .mosquitto_pub(Some(&pki.client), &format!("{prefix}/a"), "mtls")
        .unwrap();
    let got = subscriber.wait_for(1, WAIT).await;
    assert_eq!(got[0].payload.as_ref(), b"mtls");
    subscriber.stop().await;
}

#[tokio::test]
async fn mosquitto_clients_trusting_the_test_ca_refuse_wrong_name_and_unknown_ca() {
    let pki = Pki::new();
    for served in [Served::WrongName, Served::UnknownCa] {
        let broker = tls::mosquitto(&pki, served, false);
        check_refusals(&pki, served, |name, config| broker.probe(name, config)).await;
        check_openssl(&pki, served, &broker.addr()).await;
        broker
            .try_subscribe("tls/#", Some(&pki.client))
            .await
            .err()
            .unwrap_or_else(|| panic!("rumqttc accepted {served:?}"));
        broker
            .mosquitto_pub(Some(&pki.client), "tls/x", "x")
            .expect_err("mosquitto_pub refuses the certificate");
    }
}

// ---------------------------------------------------------------------------
// Redis (redis-rs over tokio-rustls, and redis-cli with OpenSSL).

#[tokio::test]
async fn redis_over_tls_round_trips_a_stream_with_redis_rs_and_redis_cli() {
    let pki = Pki::new();
    let redis = tls::redis(&pki, Served::Good, false);
    check_refusals(&pki, Served::Good, |name, config| redis.probe(name, config)).await;
    check_openssl(&pki, Served::Good, &redis.addr()).await;

    let key = format!("tls:{}", unique());
    let payload = vec![0x00, 0xff, b'\r', b'\n', b'$', 0x80];
    let mut connection = redis.connect(None).await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("id")
        .arg("m-1")
        .arg("payload")
        .arg(payload.as_slice())
        .query_async(&mut connection)
        .await
        .unwrap();
    let entries = redis.xrange(&key).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1["id"], b"m-1");
    assert_eq!(entries[0].1["payload"], payload);

    let out = redis.redis_cli(None, &["XLEN", &key]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

#[tokio::test]
async fn redis_with_mtls_refuses_clients_without_a_client_ca_certificate() {
    let pki = Pki::new();
    let redis = tls::redis(&pki, Served::Good, true);
    redis
        .connect(None)
        .await
        .map(|_| ())
        .expect_err("redis-rs without a client certificate: refused");
    redis
        .connect(Some(&pki.stranger_client))
        .await
        .map(|_| ())
        .expect_err("redis-rs with a certificate from another CA: refused");
    assert!(
        redis
            .probe("localhost", pki.client_config(None))
            .await
            .is_err()
    );
    let out = redis.redis_cli(None, &["PING"]);
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "redis-cli without a client certificate: refused"
    );
    let out = redis.redis_cli(Some(&pki.client), &["PING"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "{out:?}"
    );
    redis.connect(Some(&pki.client)).await.unwrap();
    assert!(redis.xrange("tls:none").await.is_empty());
}

#[tokio::test]
async fn redis_clients_trusting_the_test_ca_refuse_wrong_name_and_unknown_ca() {
    let pki = Pki::new();
    for served in [Served::WrongName, Served::UnknownCa] {
        let redis = tls::redis(&pki, served, false);
        check_refusals(&pki, served, |name, config| redis.probe(name, config)).await;
        check_openssl(&pki, served, &redis.addr()).await;
        redis
            .connect(Some(&pki.client))
            .await
            .err()
            .unwrap_or_else(|| panic!("redis-rs accepted {served:?}"));
        // redis-cli 7.0 (hiredis) checks the chain but not the host name:
        // it is a judge of the CA only.
        if served == Served::UnknownCa {
            let out = redis.redis_cli(Some(&pki.client), &["PING"]);
            assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
        }
    }
}

// ---------------------------------------------------------------------------
// RabbitMQ (lapin; TLS listeners added to the shared node).

#[tokio::test]
async fn rabbitmq_over_tls_round_trips_with_lapin() {
    use lapin::options::BasicPublishOptions;

    let pki = Pki::new();
    let rabbit = tls::rabbitmq(&pki, Served::Good, false);
    check_refusals(&pki, Served::Good, |name, config| {
        rabbit.probe(name, config)
    })
    .await;
    check_openssl(&pki, Served::Good, &rabbit.addr()).await;

    let queue = rabbit.queue("orders.#").await;
    let payload = vec![0x00, 0xff, 0x80, b'{'];
    queue
        .channel
        .basic_publish(
            queue.exchange.as_str().into(),
            "orders.created".into(),
            BasicPublishOptions::default(),
            &payload,
            lapin::BasicProperties::default().with_message_id("m-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let got = queue.collect(1, WAIT).await;
    assert_eq!(got[0].data, payload);
    assert_eq!(
        got[0].properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m-1")
    );
    // A client without a certificate is fine when none is required.
    rabbit.connect(None).await.unwrap();
}

#[tokio::test]
async fn rabbitmq_with_mtls_refuses_clients_without_a_client_ca_certificate() {
    let pki = Pki::new();
    let rabbit = tls::rabbitmq(&pki, Served::Good, true);
    rabbit
        .connect(None)
        .await
        .map(|_| ())
        .expect_err("lapin without a client certificate: refused");
    rabbit
        .connect(Some(&pki.stranger_client))
        .await
        .map(|_| ())
        .expect_err("lapin with a certificate from another CA: refused");
    assert!(
        rabbit
            .probe("localhost", pki.client_config(None))
            .await
            .is_err()
    );
    rabbit.connect(Some(&pki.client)).await.unwrap();
    let queue = rabbit.queue("#").await;
    assert!(queue.drain().await.is_empty());
}

#[tokio::test]
async fn rabbitmq_clients_trusting_the_test_ca_refuse_wrong_name_and_unknown_ca() {
    let pki = Pki::new();
    for served in [Served::WrongName, Served::UnknownCa] {
        let rabbit = tls::rabbitmq(&pki, served, false);
        check_refusals(&pki, served, |name, config| rabbit.probe(name, config)).await;
        check_openssl(&pki, served, &rabbit.addr()).await;
        rabbit
            .connect(Some(&pki.client))
            .await
            .err()
            .unwrap_or_else(|| panic!("lapin accepted {served:?}"));
    }
}

// ---------------------------------------------------------------------------
// HTTPS (curl with OpenSSL).

#[tokio::test]
async fn https_receiver_records_what_curl_posts() {
    let pki = Pki::new();
    let https = tls::https(&pki, Served::Good, false).await;
    check_refusals(&pki, Served::Good, |name, config| https.probe(name, config)).await;
    check_openssl(&pki, Served::Good, &https.addr()).await;

    assert_eq!(
        https.curl_post(None, "/hook?x=1", r#"{"a":1}"#).await,
        Ok(200)
    );
    https.set_status(503);
    assert_eq!(https.curl_post(None, "/busy", "{}").await, Ok(503));
    let requests = https.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/hook?x=1");
    assert_eq!(requests[0].body, br#"{"a":1}"#);
    assert_eq!(requests[0].headers["content-type"], "application/json");
    assert_eq!(requests[0].client_cert, None);
}

#[tokio::test]
async fn https_with_mtls_refuses_clients_without_a_client_ca_certificate() {
    let pki = Pki::new();
    let https = tls::https(&pki, Served::Good, true).await;
    https
        .curl_post(None, "/x", "{}")
        .await
        .expect_err("curl without a client certificate: refused");
    https
        .curl_post(Some(&pki.stranger_client), "/x", "{}")
        .await
        .expect_err("curl with a certificate from another CA: refused");
    assert!(
        https
            .probe("localhost", pki.client_config(None))
            .await
            .is_err()
    );
    assert!(https.requests().is_empty());
    assert!(https.failed_handshakes() >= 3);

    assert_eq!(
        https.curl_post(Some(&pki.client), "/x", "{}").await,
        Ok(200)
    );
    let requests = https.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].client_cert.as_deref(),
        Some(pki.client.cert_der.as_slice())
    );
}

#[tokio::test]
async fn https_clients_trusting_the_test_ca_refuse_wrong_name_and_unknown_ca() {
    let pki = Pki::new();
    for served in [Served::WrongName, Served::UnknownCa] {
        let https = tls::https(&pki, served, false).await;
        check_refusals(&pki, served, |name, config| https.probe(name, config)).await;
        check_openssl(&pki, served, &https.addr()).await;
        https
            .curl_post(Some(&pki.client), "/x", "{}")
            .await
            .expect_err("curl refuses the certificate");
        assert!(https.requests().is_empty());
    }
}
