//! Header injectors end to end: W3C trace context checked by OpenTelemetry's
//! own propagator, signed auth snapshots checked by a JOSE library we did not
//! write, bearer tokens stripped, and signing keys that stay in the host.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{RunningRelay, Scratch, dead_letters, eventually, read_jsonl};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::relay_binary;

const WAIT: Duration = Duration::from_secs(60);
const HMAC_SECRET: &str = "a-test-hmac-secret-of-at-least-32-bytes!";
const ED_SEED: [u8; 32] = [42; 32];

fn traced_target(out: &std::path::Path) -> String {
    format!(
        r#"
[[routes]]
events = ["*"]
targets = ["traced"]

[targets.traced]
plugin = "file"
config = {{ path = "/out/traced.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}

[[targets.traced.injectors]]
plugin = "trace_context"
"#,
        out.display()
    )
}

/// Enqueues inside a traced span; the target gets a child `traceparent` of it.
async fn trace_context_end_to_end(scratch: &Scratch, storage: &dyn Storage) {
    let out = scratch.path().join("out");
    let config = scratch.load_config(&traced_target(&out));

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("producer")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("place-order");
    let producer = span.context().span().span_context().clone();
    assert!(producer.is_valid());

    let traced = NewMessage::new("order.created", b"{}".to_vec());
    storage
        .save(std::slice::from_ref(&traced))
        .instrument(span)
        .await
        .unwrap();
    let malformed = NewMessage::new("order.created", b"{}".to_vec())
        .with_header(
            "traceparent",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        )
        .with_header("tracestate", "vendor=x");
    storage
        .save(std::slice::from_ref(&malformed))
        .await
        .unwrap();

    let relay = RunningRelay::start(&config).await;
    let file = out.join("traced.jsonl");
    let lines = eventually("two deliveries", WAIT, || async {
        let l = read_jsonl(&file);
        (l.len() >= 2).then_some(l)
    })
    .await;
    relay.stop().await;

    let by_id: HashMap<&str, &serde_json::Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap(), l))
        .collect();
    let delivered = by_id[traced.id.to_string().as_str()];
    let traceparent = delivered["headers"]["traceparent"]
        .as_str()
        .expect("a traceparent");
    // OpenTelemetry's W3C propagator is the judge of validity.
    let carrier: HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into();
    let extracted = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let child = extracted.span().span_context().clone();
    assert!(child.is_valid(), "{traceparent} is not a valid traceparent");
    assert_eq!(child.trace_id(), producer.trace_id(), "same trace");
    assert_ne!(
        child.span_id(),
        producer.span_id(),
        "a new parent id for the delivery"
    );
    assert_eq!(child.trace_flags(), producer.trace_flags());

    let dropped = by_id[malformed.id.to_string().as_str()];
    assert!(
        dropped["headers"].get("traceparent").is_none(),
        "a malformed traceparent is dropped: {dropped}"
    );
    assert!(dropped["headers"].get("tracestate").is_none());
}

#[tokio::test]
async fn trace_context_end_to_end_on_sqlite() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    trace_context_end_to_end(&scratch, &storage).await;
}

#[tokio::test]
async fn trace_context_end_to_end_on_postgres() {
    let scratch = Scratch::postgres().await;
    let storage = scratch.pg_storage().await;
    trace_context_end_to_end(&scratch, &storage).await;
}

fn signing_config(scratch: &Scratch, out: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(scratch.path().join("hmac.key"), HMAC_SECRET).unwrap();
    std::fs::write(
        scratch.path().join("ed.key"),
        base64::engine::general_purpose::STANDARD.encode(ED_SEED),
    )
    .unwrap();
    scratch.write_config(&format!(
        r#"
[keys.hmac]
algorithm = "HS256"
file = "hmac.key"

[keys.ed]
algorithm = "EdDSA"
file = "ed.key"

[[routes]]
events = ["*"]
targets = ["signed", "signed-ed", "ungranted"]

[targets.signed]
plugin = "file"
keys = ["hmac"]
config = {{ path = "/out/signed.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
injectors = [{{ plugin = "auth_snapshot", config = {{ key = "hmac", issuer = "outbox-test" }} }}]

[targets.signed-ed]
plugin = "file"
keys = ["ed"]
config = {{ path = "/out/signed-ed.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
injectors = [{{ plugin = "auth_snapshot", config = {{ key = "ed" }} }}]

# Asks for a key that exists but was not granted to it.
[targets.ungranted]
plugin = "file"
keys = ["ed"]
config = {{ path = "/out/ungranted.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
retry = {{ max_attempts = 2, initial_backoff = "50ms", jitter = 0.0 }}
injectors = [{{ plugin = "auth_snapshot", config = {{ key = "hmac" }} }}]
"#,
        out = out.display()
    ))
}

#[tokio::test]
async fn auth_snapshots_verify_with_an_independent_jose_library_and_no_bearer_token_escapes() {
    const N: usize = 40;
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let path = signing_config(&scratch, &out);
    let config = outbox_relay::config::Config::load(&path).unwrap();
    let storage = scratch.storage().await;
    let schemes = ["Bearer", "bearer", "BEARER", "bEaReR", "BeArEr"];
    let mut tokens = Vec::new();
    let messages: Vec<NewMessage> = (0..N)
        .map(|i| {
            let scheme = schemes[i % schemes.len()];
            let (a, b, c) = (format!("tok-{i}-a"), format!("tok-{i}-b"), format!("tok-{i}-c"));
            tokens.extend([a.clone(), b.clone(), c.clone()]);
            NewMessage::new("order.created", b"{}".to_vec())
                .with_header(if i % 2 == 0 { "Authorization" } else { "AUTHORIZATION" }, format!("{scheme} {a}"))
                .with_header("x-forwarded-authorization", format!("  {scheme}\t{b}"))
                .with_header("x-upstream-auth", format!("Basic dXNlcg==, {scheme} {c}"))
                .with_header("x-basic", "Basic dXNlcjpwYXNz")
                .with_header(
                    "x-auth-context",
                    format!(r#"{{"sub":"user-{i}","tenant":"acme","scopes":["orders:read","orders:write"]}}"#),
                )
        })
        .collect();
    storage.save(&messages).await.unwrap();
    let relay = RunningRelay::start(&config).await;
    let signed = out.join("signed.jsonl");
    let signed_ed = out.join("signed-ed.jsonl");
    eventually("all signed deliveries", WAIT, || async {
        (read_jsonl(&signed).len() >= N && read_jsonl(&signed_ed).len() >= N).then_some(())
    })
    .await;
    let refused = eventually("the ungranted target's dead letters", WAIT, || async {
        let d = dead_letters(&storage, "ungranted").await;
        (d.len() >= N).then_some(d)
    })
    .await;
    relay.stop().await;

    // No raw bearer token reaches any target, in any header.
    let mut seen_basic = 0;
    for file in [&signed, &signed_ed] {
        for line in read_jsonl(file) {
            for (name, value) in line["headers"].as_object().unwrap() {
                let value = value.as_str().unwrap();
                assert!(
                    !value.contains("tok-"),
                    "a bearer token escaped in {name}: {value}"
                );
                assert!(
                    !value.to_ascii_lowercase().starts_with("bearer"),
                    "{name}: {value}"
                );
                if name == "x-basic" {
                    seen_basic += 1;
                }
            }
        }
    }
    assert_eq!(seen_basic, 2 * N, "other authorization schemes are kept");

    // HS256, checked by jsonwebtoken.
    let ids: HashSet<String> = messages.iter().map(|m| m.id.to_string()).collect();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let good_key = jsonwebtoken::DecodingKey::from_secret(HMAC_SECRET.as_bytes());
    let wrong_key =
        jsonwebtoken::DecodingKey::from_secret(b"another-secret-of-at-least-32-bytes-long");
    let lines = read_jsonl(&signed);
    for line in &lines {
        let token = line["headers"]["x-auth-snapshot"]
            .as_str()
            .expect("a snapshot header");
        assert!(
            line["headers"].get("x-auth-context").is_none(),
            "the raw context is removed"
        );
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &good_key, &validation)
            .unwrap_or_else(|e| panic!("{token} does not verify: {e}"))
            .claims;
        assert_eq!(claims["jti"], line["id"]);
        assert!(ids.contains(claims["jti"].as_str().unwrap()));
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["iss"], "outbox-test");
        assert_eq!(claims["target"], "signed");
        assert_eq!(
            claims["scopes"],
            serde_json::json!(["orders:read", "orders:write"])
        );
        assert!(claims["sub"].as_str().unwrap().starts_with("user-"));
        assert!(claims["iat"].as_i64().unwrap() > 1_700_000_000);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(token, &wrong_key, &validation).is_err(),
            "wrong key"
        );
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut claims_json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&parts[1])
                .unwrap(),
        )
        .unwrap();
        claims_json["sub"] = "mallory".into();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims_json.to_string());
        let tampered = parts.join(".");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&tampered, &good_key, &validation).is_err(),
            "tampered"
        );
    }

    // EdDSA, checked by jsonwebtoken with only the public key.
    let public = ed25519_dalek::SigningKey::from_bytes(&ED_SEED).verifying_key();
    let ed_key = jsonwebtoken::DecodingKey::from_ed_components(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes()),
    )
    .unwrap();
    let other_public = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let other_key = jsonwebtoken::DecodingKey::from_ed_components(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(other_public.as_bytes()),
    )
    .unwrap();
    let mut ed_validation = validation.clone();
    ed_validation.algorithms = vec![jsonwebtoken::Algorithm::EdDSA];
    for line in read_jsonl(&signed_ed) {
        let token = line["headers"]["x-auth-snapshot"].as_str().unwrap();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &ed_key, &ed_validation)
            .unwrap()
            .claims;
        assert_eq!(claims["jti"], line["id"]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(token, &other_key, &ed_validation).is_err()
        );
    }

    // A key the target was not granted: an error, and the message dead-letters.
    for letter in &refused {
        assert!(
            letter
                .last_error
                .contains("not granted to target \"ungranted\""),
            "{}",
            letter.last_error
        );
        assert!(!letter.last_error.contains(HMAC_SECRET));
    }
    assert!(read_jsonl(&out.join("ungranted.jsonl")).is_empty());
    for file in [&signed, &signed_ed] {
        assert!(
            !std::fs::read_to_string(file).unwrap().contains(HMAC_SECRET),
            "the key never leaves the host"
        );
    }

    // The CLI verifies a delivered snapshot, and refuses a tampered one.
    let token = lines[0]["headers"]["x-auth-snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let run = |token: &str| {
        std::process::Command::new(relay_binary())
            .args([
                "verify-snapshot",
                "--config",
                path.to_str().unwrap(),
                "--key",
                "hmac",
                token,
            ])
            .output()
            .unwrap()
    };
    let ok = run(&token);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(claims["jti"], lines[0]["id"]);
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    let refused = run(&bad);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid snapshot"));
}
