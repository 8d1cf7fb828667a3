//! Token-bucket rate limits, pure: the caller passes the time in seconds since any fixed origin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Sustained requests per second.
    pub per_second: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: f64,
}

impl Bucket {
    pub fn full(rate: Rate, now: f64) -> Self {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes one token; on refusal, how long until one is available.
    pub fn take(&mut self, rate: Rate, now: f64) -> Result<(), Duration> {
        let elapsed = (now - self.at).max(0.0);
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate.per_second).clamp(0.0, 86_400.0),
            ))
        } else {
            Err(Duration::from_secs(86_400))
        }
    }
}

/// One bucket per source address, in a table of at most `max` entries, so one client's flood
/// is refused on its own budget before it can spend the gateway's shared one.
///
/// The table stays bounded whatever the number of addresses: when full, buckets that have
/// refilled (clients idle long enough to be owed their whole burst, which is the same as
/// forgetting them) are dropped; when every bucket is busy, a new address is let through
/// unmetered rather than refused, so a crowd of flooding addresses cannot lock out a
/// newcomer: the global limit still bounds the total.
#[derive(Debug)]
pub struct IpLimiter {
    rate: Rate,
    max: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl IpLimiter {
    pub fn new(rate: Rate, max: usize) -> Self {
        IpLimiter {
            rate,
            max,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `ip`'s bucket; on refusal, how long until one is available.
    pub fn take(&mut self, ip: IpAddr, now: f64) -> Result<(), Duration> {
        // IPv4 written as IPv6 (a dual-stack listener) is the same client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let rate = self.rate;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max {
            self.buckets.retain(|_, b| !b.is_full(rate, now));
            if self.buckets.len() >= self.max {
                return Ok(());
            }
        }
        self.buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

impl Bucket {
    /// Whether the bucket would be full at `now` (its client owes nothing).
    pub fn is_full(&self, rate: Rate, now: f64) -> bool {
        let elapsed = (now - self.at).max(0.0);
        self.tokens + elapsed * rate.per_second >= f64::from(rate.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_flooding_does_not_touch_another() {
        let rate = Rate {
            burst: 5,
            per_second: 1.0,
        };
        let mut l = IpLimiter::new(rate, 100);
        for _ in 0..5 {
            assert!(l.take(ip("10.0.0.1"), 0.0).is_ok());
        }
        assert!(l.take(ip("10.0.0.1"), 0.0).is_err());
        assert!(l.take(ip("::ffff:10.0.0.1"), 0.0).is_err(), "same client");
        assert!(l.take(ip("10.0.0.2"), 0.0).is_ok());
        assert!(l.take(ip("10.0.0.1"), 1.0).is_ok(), "refilled");
    }

    #[test]
    fn the_table_stays_bounded_and_never_locks_out_a_newcomer() {
        let rate = Rate {
            burst: 2,
            per_second: 1.0,
        };
        let mut l = IpLimiter::new(rate, 3);
        for i in 1..=3 {
            let a = ip(&format!("10.0.0.{i}"));
            assert!(l.take(a, 0.0).is_ok());
            assert!(l.take(a, 0.0).is_ok());
            assert!(l.take(a, 0.0).is_err());
        }
        assert_eq!(l.len(), 3);
        // Full of busy flooders: a newcomer passes unmetered, the table does not grow.
        assert!(l.take(ip("10.0.0.9"), 0.0).is_ok());
        assert_eq!(l.len(), 3);
        // Once the flooders have refilled they are forgotten and the newcomer is metered.
        for _ in 0..2 {
            assert!(l.take(ip("10.0.0.9"), 10.0).is_ok());
        }
        assert!(l.take(ip("10.0.0.9"), 10.0).is_err());
        assert_eq!(l.len(), 1);
        // A refused flooder stays refused while busy.
        assert!(l.take(ip("10.0.0.9"), 10.0).is_err());
    }

    #[test]
    fn burst_then_refill() {
        let rate = Rate {
            burst: 3,
            per_second: 0.5,
        };
        let mut b = Bucket::full(rate, 0.0);
        for _ in 0..3 {
            assert!(b.take(rate, 0.0).is_ok());
        }
        let wait = b.take(rate, 0.0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert!(b.take(rate, 1.0).is_err());
        assert!(b.take(rate, 2.0).is_ok());
        // Never more than the burst, however long the pause.
        for _ in 0..3 {
            assert!(b.take(rate, 1000.0).is_ok());
        }
        assert!(b.take(rate, 1000.0).is_err());
        // A clock going backwards does not mint tokens.
        assert!(b.take(rate, 10.0).is_err());
    }

    #[test]
    fn zero_rate_refuses_after_burst() {
        let rate = Rate {
            burst: 1,
            per_second: 0.0,
        };
        let mut b = Bucket::full(rate, 0.0);
        assert!(b.take(rate, 0.0).is_ok());
        assert!(b.take(rate, 1e9).is_err());
    }
}
