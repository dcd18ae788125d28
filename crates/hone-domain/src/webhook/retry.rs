//! When a failed delivery is tried again: exponential backoff with jitter, for about a
//! day. With the default first delay of 5 s and a factor of 6 the retries come after
//! 5 s, 30 s, 3 min, 18 min, 1.8 h, 10.8 h and 12 h (the cap), each ±20%: the first two
//! within a minute, so a receiver that was restarting loses little time, and the whole
//! schedule about 25 hours, so a receiver down for a night still gets its events.
//! After the last attempt the delivery is failed (and can be redelivered by hand).
//! Jitter spreads the retries of many deliveries that failed together (a receiver's
//! outage) instead of sending them back in one burst.

use std::time::Duration;

/// Each delay is this many times the one before.
const FACTOR: u32 = 6;
/// No single wait is longer.
const MAX_DELAY: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait after the first failed attempt (config `webhook_retry_first_delay_ms`).
    pub first_delay: Duration,
    /// Attempts in all, the first included (config `webhook_max_attempts`).
    pub max_attempts: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(5),
            max_attempts: 8,
        }
    }
}

impl RetrySchedule {
    /// The wait before the attempt after `attempt` (1 for the first), or `None` when
    /// `attempt` was the last. `jitter` is uniform in [0, 1): the wait is scaled by
    /// 0.8 to 1.2 of its nominal value.
    pub fn delay_after(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt == 0 || attempt >= self.max_attempts {
            return None;
        }
        let nominal = (1..attempt).fold(self.first_delay, |d, _| {
            d.saturating_mul(FACTOR).min(MAX_DELAY)
        });
        let nominal = nominal.min(MAX_DELAY.max(self.first_delay));
        Some(nominal.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_retries_soon_then_backs_off_for_about_a_day() {
        let s = RetrySchedule::default();
        let nominal: Vec<u64> = (1..s.max_attempts)
            .map(|a| s.delay_after(a, 0.5).expect("a retry").as_secs())
            .collect();
        assert_eq!(nominal, [5, 30, 180, 1080, 6480, 38880, 43200]);
        // The first two retries within about three minutes of the first failure.
        assert!(nominal[0] + nominal[1] <= 180);
        let total: u64 = nominal.iter().sum();
        assert!((20 * 3600..=30 * 3600).contains(&total), "{total} s");
        assert_eq!(s.delay_after(s.max_attempts, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_a_fifth_of_the_nominal_wait() {
        let s = RetrySchedule::default();
        assert_eq!(s.delay_after(1, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(s.delay_after(1, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(s.delay_after(2, 0.0), Some(Duration::from_secs(24)));
    }

    #[test]
    fn a_short_first_delay_scales_the_whole_schedule() {
        let s = RetrySchedule {
            first_delay: Duration::from_millis(100),
            max_attempts: 3,
        };
        assert_eq!(s.delay_after(1, 0.5), Some(Duration::from_millis(100)));
        assert_eq!(s.delay_after(2, 0.5), Some(Duration::from_millis(600)));
        assert_eq!(s.delay_after(3, 0.5), None);
        assert_eq!(s.delay_after(0, 0.5), None);
    }
}
