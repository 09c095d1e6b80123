//! # outbox-relay
//!
//! A transactional-outbox relay. Applications enqueue events in the same
//! database transaction as their business data ([`producer`]); the relay reads
//! committed events from the log and delivers each, at least once, to every
//! target whose route matches, through transports that are WebAssembly
//! components ([`plugin`]).
//!
//! # Layout
//!
//! Ports (traits the relay depends on) are kept apart from their adapters:
//!
//! - [`message`]: the domain types — [`NewMessage`], [`Message`], [`Envelope`], [`Outcome`].
//! - [`producer`]: enqueue inside the caller's transaction. With only a storage
//!   feature (`default-features = false, features = ["sqlite"]`) this and
//!   [`storage`] are the whole crate, and wasmtime is not compiled.
//! - [`storage`]: the storage port; [`storage::sqlite`] is its SQLite adapter.
//! - [`transport`]: the transport port (`relay` feature); [`injector`]: the
//!   header-injector port and the chain that runs injectors before a transport.
//! - [`keys`]: signing keys held by the host for plugins; [`snapshot`]: signed
//!   auth snapshots, and their verification for consumers.
//! - [`plugin`]: the wasmtime adapter of the transport port: engine, sandbox,
//!   compiled-component cache, long-lived instances.
//! - [`config`]: TOML + environment configuration, validated.
//! - [`sandbox_address`]: the `host:port` and host entries a sandbox may
//!   reach (`allow_tcp`, `allow_http`), one grammar, checked as the config is parsed.
//! - [`routes`]: event-name globs to targets.
//! - [`backoff`]: the retry schedule.
//! - [`relay`]: the workers that tie it together; [`app`] wires them from a
//!   config, and [`app::supervisor`] runs, reloads and stops them.
//! - [`dead_letters`]: which dead letters may be replayed, and how a replay or
//!   purge works through a selection.
//! - [`cli`]: the `outbox-relay` command line (parsing and printing only);
//!   [`admin`]: the relay's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`),
//!   fed by [`metrics`].

pub mod message;
pub mod producer;
#[cfg(feature = "snapshot")]
pub mod snapshot;
pub mod storage;
pub mod trace_context;

#[cfg(feature = "relay")]
pub mod activity;
#[cfg(feature = "relay")]
pub mod admin;
#[cfg(feature = "relay")]
pub mod adopt;
#[cfg(feature = "relay")]
pub mod app;
#[cfg(feature = "relay")]
pub mod authoring;
#[cfg(feature = "relay")]
pub mod backoff;
#[cfg(feature = "relay")]
pub mod cli;
#[cfg(feature = "relay")]
pub mod config;
#[cfg(feature = "relay")]
pub mod console;
#[cfg(feature = "relay")]
pub mod dead_letters;
#[cfg(feature = "relay")]
pub mod injector;
#[cfg(feature = "relay")]
pub mod keys;
#[cfg(feature = "relay")]
pub mod metrics;
#[cfg(feature = "relay")]
pub mod nats_creds;
#[cfg(feature = "relay")]
pub mod plugin;
#[cfg(feature = "relay")]
pub mod plugin_config;
#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "relay")]
pub mod routes;
#[cfg(feature = "relay")]
pub mod sandbox_address;
#[cfg(feature = "relay")]
pub mod secret_source;
#[cfg(feature = "relay")]
pub mod tls;
#[cfg(feature = "relay")]
pub mod transport;

pub use message::{Envelope, Headers, Message, NewMessage, Outcome};
