//! When to ask the CA: the renewal time of a certificate (a fraction of its lifetime, with
//! jitter so that pods started together do not renew together), and the backoff between failed
//! attempts. Pure, so the arithmetic is tested without clocks.

use std::time::{Duration, SystemTime};

/// Renewal happens at `ratio` of the lifetime, moved by up to this fraction of that delay either
/// way.
const RENEW_JITTER: f64 = 0.05;
/// The first retry after a failure, and the most any retry waits.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// Retries are moved by up to this fraction of their delay either way.
const RETRY_JITTER: f64 = 0.1;

/// When to renew a certificate valid from `not_before` to `not_after`: at `ratio` of its
/// lifetime, times `1 + jitter` where `jitter` is in [-1, 1] scaled by [`RENEW_JITTER`]. Never
/// after the expiry.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, ratio: f64, jitter: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = (ratio * (1.0 + jitter.clamp(-1.0, 1.0) * RENEW_JITTER)).clamp(0.0, 1.0);
    not_before + lifetime.mul_f64(fraction)
}

/// The delays between failed attempts: doubling from [`FIRST_RETRY`] up to [`MAX_RETRY`],
/// each moved by a jitter; reset by a success.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt; `jitter` in [-1, 1].
    pub fn next(&mut self, jitter: f64) -> Duration {
        let doubled = FIRST_RETRY.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        doubled
            .min(MAX_RETRY)
            .mul_f64(1.0 + jitter.clamp(-1.0, 1.0) * RETRY_JITTER)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A uniform jitter in [-1, 1].
pub fn jitter() -> f64 {
    rand::random_range(-1.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn renewal_is_at_the_ratio_of_the_lifetime_within_the_jitter() {
        let start = SystemTime::UNIX_EPOCH + HOUR;
        let end = start + 24 * HOUR;
        assert_eq!(renewal_time(start, end, 0.5, 0.0), start + 12 * HOUR);
        let early = renewal_time(start, end, 0.5, -1.0);
        let late = renewal_time(start, end, 0.5, 1.0);
        assert_eq!(late.duration_since(early).unwrap(), (24 * HOUR).mul_f64(0.05));
        assert_eq!(renewal_time(start, end, 0.99, 1.0), end, "never after expiry");
        assert_eq!(
            renewal_time(end, start, 0.5, 0.0),
            end,
            "an inverted window renews at once"
        );
    }

    #[test]
    fn retries_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..9).map(|_| backoff.next(0.0)).collect();
        assert_eq!(
            delays[..4],
            [FIRST_RETRY, FIRST_RETRY * 2, FIRST_RETRY * 4, FIRST_RETRY * 8]
        );
        assert_eq!(delays[8], MAX_RETRY);
        assert!(backoff.next(1.0) <= MAX_RETRY.mul_f64(1.1));
        backoff.reset();
        assert_eq!(backoff.next(0.0), FIRST_RETRY);
    }
}
