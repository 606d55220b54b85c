//! A token bucket shared by all transfers of one direction (`bwlimit_up`, `bwlimit_down`);
//! the rate changes at run time (`SetLimits`, SIGHUP). 0 means unlimited.
//!
//! The lock is a std mutex held only to do arithmetic, never across an `.await`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

struct Bucket {
    rate: u64,
    /// Tokens (bytes) available; negative means debt the next caller waits off.
    tokens: f64,
    last: Instant,
}

/// Shared bandwidth limiter.
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// A limiter at `rate` bytes per second (0: unlimited).
    pub fn new(rate: u64) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                rate,
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// The current rate (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).rate
    }

    /// Changes the rate; waiters pick it up at their next call.
    pub fn set_rate(&self, rate: u64) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.rate = rate;
        b.tokens = 0.0;
        b.last = Instant::now();
    }

    /// Waits until `n` bytes may pass. Bursts are capped at a quarter second of traffic.
    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            if b.rate == 0 {
                return;
            }
            let now = Instant::now();
            let rate = b.rate as f64;
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + elapsed * rate).min(rate / 4.0);
            b.tokens -= n as f64;
            if b.tokens >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-b.tokens / rate)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_throughput_to_the_rate() {
        let l = RateLimiter::new(1000);
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire(500).await;
        }
        // 5000 bytes at 1000 B/s: about 5 s (minus the small initial burst allowance).
        let took = start.elapsed().as_secs_f64();
        assert!((4.5..=5.1).contains(&took), "{took}");
        l.set_rate(0);
        let t = Instant::now();
        l.acquire(1 << 30).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
