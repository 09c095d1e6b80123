//! Logging into the host's `tracing` output.
//!
//! The host tags each line with the plugin and its target, so a message needs
//! neither. Prefer these to printing: stdout is not shown anywhere useful, and
//! stderr is only kept to explain a failed call.

use crate::bindings::transport_world::outbox::relay::log::{Level, log};

/// Logs at `trace` level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs at `debug` level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at `info` level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at `warn` level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at `error` level.
pub fn error(message: &str) {
    log(Level::Error, message);
}
