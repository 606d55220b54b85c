//! Waiting for a condition with a deadline, never with fixed sleeps.
//!
//! Polls a closure until it reports success or the deadline passes, and then fails with the
//! last observation so the reader can tell *why* it never happened.

use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a poll saw: done with a value, or not yet with a description of the current state.
pub enum Poll<T> {
    /// The condition holds.
    Ready(T),
    /// Not yet; the string says what was seen (shown on timeout).
    Pending(String),
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns [`Poll::Ready`] or `timeout` passes.
///
/// An `Err` from `check` aborts the wait at once (the condition can never hold, e.g. the
/// child died).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Poll<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        match check()? {
            Poll::Ready(v) => return Ok(v),
            Poll::Pending(last) => {
                if start.elapsed() >= timeout {
                    return Err(HarnessError::Timeout {
                        what: what.to_string(),
                        waited: start.elapsed(),
                        last,
                    });
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Scales a timeout for slow machines: `BLOBSYNC_TEST_TIMEOUT_SCALE` (default 1) multiplies it.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(crate::env_number("BLOBSYNC_TEST_TIMEOUT_SCALE", 1.0f64).max(0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_a_few_polls() {
        let mut n = 0;
        let v = wait_until("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            Ok(if n >= 3 {
                Poll::Ready(n)
            } else {
                Poll::Pending(format!("n={n}"))
            })
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn timeout_reports_last_observation() {
        let err = wait_until::<()>("never", Duration::from_millis(120), || {
            Ok(Poll::Pending("still 0".into()))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("never") && msg.contains("still 0"), "{msg}");
    }
}
