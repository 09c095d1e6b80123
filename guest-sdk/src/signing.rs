//! Signing with keys the host holds.
//!
//! Key material never enters a plugin: a plugin names a key and the host signs
//! with it, but only if the operator granted that key to the plugin's target.
//! A key that does not exist or was not granted is an error whose message
//! comes from the host.
//!
//! ```no_run
//! use outbox_relay_guest::signing;
//!
//! let alg = signing::algorithm("snapshots")?;          // "HS256" or "EdDSA"
//! let signature = signing::sign("snapshots", b"header.claims")?;
//! # let _ = (alg, signature);
//! # Ok::<(), outbox_relay_guest::Error>(())
//! ```
//!
//! Outside a component (a plugin's native unit tests) there is no host, and
//! both functions return an error saying so. Keep the code around them
//! testable by passing the signer in, e.g. as a closure.

use crate::Result;

// Both worlds import the same `outbox:relay/signing` interface, so the
// transport world's bindings serve injectors too (as with `log`).
#[cfg(target_arch = "wasm32")]
use crate::bindings::transport_world::outbox::relay::signing as host;

/// The JOSE algorithm name (`alg`) of key `key`: `"HS256"` (HMAC-SHA256) or
/// `"EdDSA"` (Ed25519).
pub fn algorithm(key: &str) -> Result<String> {
    #[cfg(target_arch = "wasm32")]
    {
        host::algorithm(key).map_err(crate::Error::new)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Err(no_host(key))
    }
}

/// Signs `message` with key `key` and returns the raw signature bytes (32 for
/// HS256, 64 for EdDSA).
pub fn sign(key: &str, message: &[u8]) -> Result<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        host::sign(key, message).map_err(crate::Error::new)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = message;
        Err(no_host(key))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn no_host(key: &str) -> crate::Error {
    crate::Error::new(format!(
        "signing with key `{key}` needs the outbox-relay host; \
         it is not available outside a component"
    ))
}

#[cfg(test)]
#[cfg(not(target_arch = "wasm32"))]
mod tests {
    use super::*;

    #[test]
    fn without_a_host_signing_is_an_error_that_says_so() {
        let err = algorithm("k").err().map(crate::Error::into_message);
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("needs the outbox-relay host") && e.contains("`k`")),
            "{err:?}"
        );
        let err = sign("k", b"m").err().map(crate::Error::into_message);
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("needs the outbox-relay host")),
            "{err:?}"
        );
    }
}
