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
/// (`Retry-After`), whichever is longer. Kept in two parts so [`TimeScale::apply`] scales only
/// the daemon's own schedule: the server's `Retry-After` is the server's to set, and a scaled
/// one would let a test build hammer a server that asked for quiet.
pub fn next_wait(failures: u32, retry_after: Option<Duration>) -> Wait {
    Wait {
        schedule: retry_delay(failures),
        retry_after: retry_after.unwrap_or_default(),
    }
}

/// A retry wait: the daemon's schedule and the server's `Retry-After` floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// From [`retry_delay`]; scaled by [`TimeScale`].
    pub schedule: Duration,
    /// From the server; never scaled.
    pub retry_after: Duration,
}

impl Wait {
    /// The wait at scale 1.
    pub fn unscaled(self) -> Duration {
        self.schedule.max(self.retry_after)
    }
}

/// Something [`TimeScale::apply`] can scale: a plain daemon wait, or a [`Wait`].
pub trait Scalable {
    /// `self` under `scale`.
    fn scaled(self, scale: TimeScale) -> Duration;
}

impl Scalable for Duration {
    fn scaled(self, scale: TimeScale) -> Duration {
        if scale.0 == 1.0 {
            self
        } else {
            self.mul_f64(scale.0)
        }
    }
}

impl Scalable for Wait {
    fn scaled(self, scale: TimeScale) -> Duration {
        self.schedule.scaled(scale).max(self.retry_after)
    }
}

/// The smallest factor [`TimeScale`] accepts: 10 s of schedule become 10 ms, never a tight
/// loop against the server.
pub const MIN_TIME_SCALE: f64 = 0.001;

/// A factor applied to the daemon's own waits (retry delays and the sync interval), never to
/// a server's `Retry-After`.
///
/// Test-only: end-to-end tests set `BLOBSYNCD_TIME_SCALE=0.01` so the schedule 10, 20, 30 s
/// becomes 0.1, 0.2, 0.3 s. Production leaves it unset (1.0); the daemon logs a warning when it
/// is set. Clamped to [[`MIN_TIME_SCALE`], 1]: it can only shorten waits, and not to nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(f64);

impl Default for TimeScale {
    fn default() -> Self {
        Self(1.0)
    }
}

impl TimeScale {
    /// A scale clamped to [[`MIN_TIME_SCALE`], 1]; values that are not finite and positive
    /// mean 1.0.
    pub fn new(factor: f64) -> Self {
        if factor.is_finite() && factor > 0.0 {
            Self(factor.clamp(MIN_TIME_SCALE, 1.0))
        } else {
            Self(1.0)
        }
    }

    /// From [`TIME_SCALE_ENV`]; unset or unparsable means 1.0.
    pub fn from_env() -> Self {
        Self::parse(std::env::var(TIME_SCALE_ENV).ok().as_deref())
    }

    /// The value of [`TIME_SCALE_ENV`] as a scale; `None` or unparsable means 1.0.
    pub fn parse(value: Option<&str>) -> Self {
        value
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Self::new)
            .unwrap_or_default()
    }

    /// The factor.
    pub fn factor(self) -> f64 {
        self.0
    }

    /// `d` scaled: a plain wait by the factor; a [`Wait`]'s schedule by the factor, its
    /// `Retry-After` not at all.
    pub fn apply<T: Scalable>(self, d: T) -> Duration {
        d.scaled(self)
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
        let secs = |w: Wait| w.unscaled().as_secs();
        assert_eq!(secs(next_wait(1, Some(Duration::from_secs(120)))), 120);
        assert_eq!(secs(next_wait(3, Some(Duration::from_secs(5)))), 30);
        assert_eq!(secs(next_wait(2, None)), 20);
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

    #[test]
    fn time_scale_is_clamped_to_a_thousandth_and_one() {
        // 1e-6 would turn the 10 s schedule into 10 us: a tight loop against the server.
        assert_eq!(TimeScale::new(1e-6).factor(), MIN_TIME_SCALE);
        assert_eq!(TimeScale::parse(Some("1e-6")).factor(), MIN_TIME_SCALE);
        assert_eq!(
            TimeScale::new(1e-6).apply(Duration::from_secs(10)),
            Duration::from_millis(10)
        );
        // It only ever shortens waits.
        assert_eq!(TimeScale::new(50.0).factor(), 1.0);
        assert_eq!(TimeScale::parse(Some(" 0.02 ")).factor(), 0.02);
        assert_eq!(TimeScale::parse(Some("fast")), TimeScale::default());
        assert_eq!(TimeScale::parse(None), TimeScale::default());
    }

    #[test]
    fn time_scale_never_shortens_retry_after() {
        let scale = TimeScale::new(0.01);
        // The server asked for 120 s: it gets 120 s at any scale.
        let w = next_wait(1, Some(Duration::from_secs(120)));
        assert_eq!(scale.apply(w), Duration::from_secs(120));
        // Without Retry-After, or with a short one, the scaled schedule decides.
        assert_eq!(scale.apply(next_wait(3, None)), Duration::from_millis(300));
        let w = next_wait(3, Some(Duration::from_millis(100)));
        assert_eq!(scale.apply(w), Duration::from_millis(300));
        let w = next_wait(3, Some(Duration::from_millis(500)));
        assert_eq!(scale.apply(w), Duration::from_millis(500));
    }
}
