//! Integration tests: a real SQLite file, real components built from source
//! (tests/build.rs), and the real `outbox-relay` binary where a process matters.

#![allow(clippy::unwrap_used)]

mod adopt;
mod authoring;
mod chaos;
mod conformance;
mod console;
mod crash;
mod dead_letters;
mod delivery;
mod faults;
mod file_target;
mod hostile;
mod hostile_input;
mod injectors;
mod kafka;
mod mqtt;
mod mysql;
mod nats;
mod nats_creds;
mod operate;
mod pipeline;
mod postgres;
mod producers;
mod rabbitmq;
mod redis_streams;
mod registry;
mod secrets;
mod soak_matrix;
mod startup;
mod storage_faults;
mod tls;
mod tls_brokers;
mod webhook;

/// The `outbox-relay` CLI under test (built from `tests/bin/outbox-relay.rs`).
pub(crate) fn relay_binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay-under-test"))
}

/// Starts `outbox-relay run --config <config>` as a child process.
pub(crate) fn spawn_relay(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(relay_binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and waits (up to 10 s) for the process to exit.
pub(crate) fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("the relay did not exit within 10s of SIGTERM");
}

/// A port nothing listens on yet.
pub(crate) use outbox_relay_tests::free_port;

/// A plain HTTP/1.1 GET; returns the status code and body.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
