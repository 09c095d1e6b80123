//! Logging into the host's `tracing` output.
//!
//! The host tags each line with the plugin and its target, so a message needs
//! neither. Prefer these to printing: stdout is not shown anywhere useful, and
//! stderr is only kept to explain a failed call.

#[cfg(target_arch = "wasm32")]
use crate::bindings::transport_world::outbox::relay::log::{Level, log};

/// Outside a component (a plugin's native unit tests) there is no host to log
/// to, so lines go to stderr instead of failing.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone, Copy)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(not(target_arch = "wasm32"))]
fn log(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}

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
