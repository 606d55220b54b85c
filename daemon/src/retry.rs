//! The retry schedule of the seed: attempt n waits `min(10 * n, 60)` seconds after the
//! previous failure (10, 20, 30, 40, 50, 60, 60, ...), and the test-only time scale.
//!
//! Pure functions only: the engine persists the resulting times through the store.

use std::time::Duration;

/// Environment variable holding the test-only time scale (see [`TimeScale`]).
pub const TIME_SCALE_ENV: &str = "BLOBSYNCD_TIME_SCALE";

/// The wait after the `failures`-th consecutive failure of a transfer (1-based):
/// `min(10 * failures, 60)` seconds. `0` is treated as `1`.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(u64::from(failures.max(1)).saturating_mul(10).min(60))
}

/// The wait before the next attempt: the schedule, or longer when the server asked for it
/// (`Retry-After`), whichever is longer.
pub fn next_wait(failures: u32, retry_after: Option<Duration>) -> Duration {
    retry_delay(failures).max(retry_after.unwrap_or_default())
}

/// A factor applied to every wait of the daemon (retry delays and the sync interval).
///
/// Test-only: end-to-end tests set `BLOBSYNCD_TIME_SCALE=0.01` so the schedule 10, 20, 30 s
/// becomes 0.1, 0.2, 0.3 s. Production leaves it unset (1.0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(f64);

impl Default for TimeScale {
    fn default() -> Self {
        Self(1.0)
    }
}

impl TimeScale {
    /// A scale; values that are not finite and positive mean 1.0.
    pub fn new(factor: f64) -> Self {
        if factor.is_finite() && factor > 0.0 {
            Self(factor)
        } else {
            Self(1.0)
        }
    }

    /// From [`TIME_SCALE_ENV`]; unset or unparsable means 1.0.
    pub fn from_env() -> Self {
        std::env::var(TIME_SCALE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Self::new)
            .unwrap_or_default()
    }

    /// The factor.
    pub fn factor(self) -> f64 {
        self.0
    }

    /// `d` scaled.
    pub fn apply(self, d: Duration) -> Duration {
        if self.0 == 1.0 { d } else { d.mul_f64(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_the_seeds_table() {
        let waits: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 30, 40, 50, 60, 60, 60]);
        assert_eq!(retry_delay(0).as_secs(), 10);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn retry_after_only_lengthens_the_wait() {
        assert_eq!(next_wait(1, Some(Duration::from_secs(120))).as_secs(), 120);
        assert_eq!(next_wait(3, Some(Duration::from_secs(5))).as_secs(), 30);
        assert_eq!(next_wait(2, None).as_secs(), 20);
    }

    #[test]
    fn time_scale_multiplies_and_rejects_nonsense() {
        assert_eq!(
            TimeScale::new(0.01).apply(Duration::from_secs(10)),
            Duration::from_millis(100)
        );
        assert_eq!(TimeScale::new(-1.0), TimeScale::default());
        assert_eq!(TimeScale::new(f64::NAN), TimeScale::default());
    }
}
