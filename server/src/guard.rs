//! Per-client defences of the listener: [`ClientConns`] caps the connections one address may
//! hold open, and [`AuthThrottle`] answers 429 to an address that keeps sending bad tokens.
//!
//! Both key on the peer's IP address and keep bounded maps: an attacker with many addresses
//! costs a fixed amount of memory, not more. Nothing here touches the index or the network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most addresses [`AuthThrottle`] tracks at once; beyond it the oldest windows are dropped.
const MAX_TRACKED: usize = 65_536;

/// Open connections per client address.
#[derive(Debug, Default)]
pub struct ClientConns {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnSlot {
    conns: Arc<ClientConns>,
    ip: IpAddr,
}

impl ClientConns {
    /// Counts a new connection from `ip`, or None when `ip` already holds `cap`.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ConnSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            conns: Arc::clone(self),
            ip,
        })
    }

    /// Connections `ip` holds now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Start of the current counting window.
    since: Instant,
    /// Bad tokens in this window.
    count: u32,
    /// Refused (429) until then.
    blocked_until: Option<Instant>,
    /// Last time a line was logged for this address.
    logged: Option<Instant>,
    /// Bad tokens not yet reported in a log line.
    unlogged: u32,
}

/// Throttles addresses that send bad tokens: after `limit` failures within `window`, every
/// authenticated request from that address is answered 429 for `window` (valid tokens too:
/// otherwise the 429s themselves would tell valid from invalid guesses). Logs at most one
/// line per address per window.
#[derive(Debug)]
pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
}

impl AuthThrottle {
    /// `limit` failures per `window` (0: never throttle).
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must still wait, if it is throttled.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)
            .and_then(|f| f.blocked_until)
            .filter(|t| *t > now)
            .map(|t| t - now)
    }

    /// Records a bad token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, f| {
                now.duration_since(f.since) < window || f.blocked_until.is_some_and(|t| t > now)
            });
            if map.len() >= MAX_TRACKED {
                // Still full: many addresses guessing at once. Forget them all rather than grow;
                // each gets `limit` more guesses before it is blocked again.
                tracing::warn!(
                    tracked = map.len(),
                    "too many addresses sending bad tokens; resetting the throttle"
                );
                map.clear();
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
            logged: None,
            unlogged: 0,
        });
        if now.duration_since(f.since) >= self.window {
            f.since = now;
            f.count = 0;
        }
        f.count += 1;
        f.unlogged += 1;
        if f.count >= self.limit {
            f.blocked_until = Some(now + self.window);
        }
        if f.logged
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            tracing::warn!(
                client = %ip,
                bad_tokens = f.unlogged,
                throttled = f.count >= self.limit,
                "requests with unknown or malformed tokens from this address"
            );
            f.logged = Some(now);
            f.unlogged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_address_and_given_back() {
        let conns = Arc::new(ClientConns::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| conns.try_open(a, 3).unwrap()).collect();
        assert!(conns.try_open(a, 3).is_none());
        assert!(conns.try_open(b, 3).is_some());
        drop(held);
        assert_eq!(conns.open_from(a), 0);
        assert!(conns.try_open(a, 3).is_some());
    }

    #[test]
    fn bad_tokens_block_an_address_for_a_window() {
        let t = AuthThrottle::new(3, Duration::from_millis(200));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        t.failed(a);
        t.failed(a);
        assert!(t.blocked(a).is_none());
        t.failed(a);
        assert!(
            t.blocked(a)
                .is_some_and(|d| d <= Duration::from_millis(200))
        );
        assert!(t.blocked(b).is_none());
        // The block ends with its window (polled, with a deadline).
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.blocked(a).is_some() {
            assert!(Instant::now() < deadline, "still blocked after the window");
            std::thread::yield_now();
        }
        // Off: never blocks.
        let off = AuthThrottle::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            off.failed(a);
        }
        assert!(off.blocked(a).is_none());
    }
}
