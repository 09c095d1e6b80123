//! Back-off between delivery attempts.
//!
//! The schedule is stateless (a function of the attempt count) because the next
//! attempt time is stored in the database and any relay may make it; retry
//! crates such as `backon` model an in-process loop instead.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryPolicy;

/// The delay after `attempts` failed attempts (1 = after the first failure),
/// never shorter than the transport's `hint`.
pub fn delay(policy: &RetryPolicy, attempts: u32, hint: Option<Duration>) -> Duration {
    let exponent = attempts.saturating_sub(1).min(64) as i32;
    let base = policy.initial_backoff.as_secs_f64() * policy.multiplier.powi(exponent);
    let capped = base.min(policy.max_backoff.as_secs_f64());
    let factor = if policy.jitter > 0.0 {
        rand::rng().random_range((1.0 - policy.jitter)..=(1.0 + policy.jitter))
    } else {
        1.0
    };
    let jittered =
        Duration::try_from_secs_f64((capped * factor).max(0.0)).unwrap_or(policy.max_backoff);
    match hint {
        Some(h) if h > jittered => h,
        _ => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            jitter,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let p = policy(0.0);
        assert_eq!(delay(&p, 1, None), Duration::from_secs(1));
        assert_eq!(delay(&p, 2, None), Duration::from_secs(2));
        assert_eq!(delay(&p, 4, None), Duration::from_secs(8));
        assert_eq!(delay(&p, 30, None), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let p = policy(0.2);
        for _ in 0..200 {
            let d = delay(&p, 3, None).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
        }
    }

    #[test]
    fn hint_is_a_lower_bound() {
        let p = policy(0.0);
        assert_eq!(
            delay(&p, 1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            delay(&p, 4, Some(Duration::from_millis(5))),
            Duration::from_secs(8)
        );
    }
}
