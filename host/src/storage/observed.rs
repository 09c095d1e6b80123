//! Expiry by observation, for a database without one clock.
//!
//! SQLite has no server: every time it writes (`unixepoch()`) is the clock
//! of the relay process that wrote it. Judged by clocks, a relay whose clock
//! is a minute ahead sees every other relay's lease as expired and takes it,
//! and one a minute behind writes leases the others see expired as soon as
//! they are written. So on SQLite another relay's lease or heartbeat is
//! judged by watching it instead: it has expired once this process has seen
//! the same row, unchanged, for longer than its TTL by this process's own
//! monotonic clock. A live holder rewrites its row well within the TTL (a
//! lease once a quarter of it has passed, a heartbeat as often), so a live
//! row never stays the same that long, whatever the clocks say; the row of a
//! relay that died or froze stops changing. Offsets between clocks do not
//! matter, only that they run at about the same rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one look at a row found, against the looks before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sight {
    /// Never seen by this process: nothing is known of how it changes.
    First,
    /// Different from the last look: its writer is alive.
    Changed,
    /// The same as in the looks before, for this long since it was first
    /// seen with this value.
    Unchanged(Duration),
}

/// The last value seen of each row, and since when.
#[derive(Debug)]
pub(crate) struct Observations<K, V> {
    seen: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for Observations<K, V> {
    fn default() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: PartialEq + Clone> Observations<K, V> {
    /// Records a look at `key` showing `value` at `now`.
    pub(crate) fn look(&self, key: &K, value: &V, now: Instant) -> Sight {
        let mut seen = self.lock();
        match seen.get_mut(key) {
            Some((last, since)) if last == value => {
                Sight::Unchanged(now.saturating_duration_since(*since))
            }
            Some(entry) => {
                *entry = (value.clone(), now);
                Sight::Changed
            }
            None => {
                seen.insert(key.clone(), (value.clone(), now));
                Sight::First
            }
        }
    }

    /// The value last seen of `key` if it has stayed the same for at least
    /// `ttl` up to the last look.
    pub(crate) fn unchanged_for(
        &self,
        key: &K,
        ttl: impl Fn(&V) -> Duration,
        now: Instant,
    ) -> Option<V> {
        let seen = self.lock();
        let (value, since) = seen.get(key)?;
        (now.saturating_duration_since(*since) >= ttl(value)).then(|| value.clone())
    }

    /// Forgets `key` (its row was taken or deleted).
    pub(crate) fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Forgets every key but those `keep` accepts (rows no longer there).
    pub(crate) fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn a_row_expires_only_after_staying_the_same_for_its_ttl_by_this_clock() {
        let watch = Observations::<&str, i64>::default();
        let t0 = Instant::now();
        assert_eq!(watch.look(&"p0", &100, t0), Sight::First);
        assert_eq!(watch.unchanged_for(&"p0", |_| TTL, t0 + TTL / 2), None);
        assert_eq!(
            watch.look(&"p0", &100, t0 + TTL / 2),
            Sight::Unchanged(TTL / 2)
        );
        assert_eq!(watch.unchanged_for(&"p0", |_| TTL, t0 + TTL), Some(100));
    }

    #[test]
    fn a_renewal_starts_the_watch_again_whatever_value_it_writes() {
        let watch = Observations::<&str, i64>::default();
        let t0 = Instant::now();
        watch.look(&"p0", &100, t0);
        // A holder whose clock runs a minute behind writes a smaller value.
        assert_eq!(watch.look(&"p0", &-59_900, t0 + TTL / 2), Sight::Changed);
        assert_eq!(watch.unchanged_for(&"p0", |_| TTL, t0 + TTL), None);
        assert_eq!(
            watch.unchanged_for(&"p0", |_| TTL, t0 + TTL / 2 + TTL),
            Some(-59_900)
        );
    }

    #[test]
    fn forgotten_and_unkept_rows_are_first_seen_again() {
        let watch = Observations::<&str, i64>::default();
        let t0 = Instant::now();
        watch.look(&"a", &1, t0);
        watch.look(&"b", &1, t0);
        watch.forget(&"a");
        watch.retain(|k| *k != "b");
        assert_eq!(watch.look(&"a", &1, t0), Sight::First);
        assert_eq!(watch.look(&"b", &1, t0), Sight::First);
    }
}
