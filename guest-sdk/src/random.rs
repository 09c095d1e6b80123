//! Random numbers for identifiers: client ids, inbox names, trace ids.
//!
//! Not for secrets. The bits come from `std`'s per-process random hash keys
//! (on `wasm32-wasip2` they are taken from the host's `wasi:random`), mixed
//! with a process-wide counter and the clock, so no two draws in an instance
//! are alike and two instances started at once differ too.

use std::hash::{BuildHasher as _, Hasher as _, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static DRAWS: AtomicU64 = AtomicU64::new(0);

/// 64 random bits.
pub fn u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// `digits` random lowercase hex digits.
///
/// ```
/// let id = outbox_relay_guest::random::hex(12);
/// assert_eq!(id.len(), 12);
/// assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
/// ```
pub fn hex(digits: usize) -> String {
    let mut out = String::with_capacity(digits + 16);
    while out.len() < digits {
        out.push_str(&format!("{:016x}", u64()));
    }
    out.truncate(digits);
    out
}

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let bits = u64().to_le_bytes();
        chunk.copy_from_slice(&bits[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        let draws: std::collections::HashSet<u64> = (0..1000).map(|_| u64()).collect();
        assert_eq!(draws.len(), 1000);
        assert_ne!(hex(32), hex(32));
        assert_eq!(hex(5).len(), 5);
        let mut a = [0u8; 13];
        let mut b = [0u8; 13];
        fill(&mut a);
        fill(&mut b);
        assert_ne!(a, b);
    }
}
