//! Per-key rate limits for the boot service's unauthenticated doors (DHCP packets and
//! `/boot/{mac}` requests, keyed by MAC address). Pure: every call takes `now`.
//!
//! Each key gets a token bucket. The table is bounded: anyone on the provisioning network can
//! send packets with made-up MAC addresses, so a table that grew with every new key would be a
//! memory leak an attacker controls. Keys live in two generations: new and refreshed keys go
//! into the current one; when it is full it becomes the previous one and the old previous one
//! is dropped whole. At most `2 × generation` keys are held, every operation is O(1), and a key
//! that is used at least once per generation keeps its bucket (an approximate LRU).
//!
//! What a flood of spoofed MACs buys: it pushes idle keys out, so a forgotten key comes back
//! with a full bucket. That loosens the limit of a real MAC only while the flood runs, and the
//! limit is about cost per MAC; the flood's own cost is bounded by the table and by the cheap
//! work (an in-memory index lookup) each allowed packet causes.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A bucket's shape: `burst` tokens at most, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    generation: usize,
    current: HashMap<K, Bucket>,
    previous: HashMap<K, Bucket>,
}

/// Why a request was not allowed: when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `max_keys` bounds the table (rounded up to an even number, at least 2).
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        let generation = max_keys.div_ceil(2).max(1);
        KeyedLimiter {
            rate,
            generation,
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Limited> {
        let burst = f64::from(self.rate.burst.max(1));
        let rate = self.rate.per_second.max(f64::MIN_POSITIVE);
        let fresh = Bucket {
            tokens: burst,
            last: now,
        };
        if !self.current.contains_key(key) {
            let carried = self.previous.remove(key).unwrap_or(fresh);
            if self.current.len() >= self.generation {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(key.clone(), carried);
        }
        let bucket = self.current.entry(key.clone()).or_insert(fresh);
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Err(Limited {
                retry_after: Duration::from_secs_f64(wait.min(86_400.0)),
            })
        }
    }

    /// Keys held now (never more than `2 × ceil(max_keys / 2)`).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A limiter shared by a server's tasks.
#[derive(Debug)]
pub struct SharedLimiter<K>(std::sync::Mutex<KeyedLimiter<K>>);

impl<K: Hash + Eq + Clone> SharedLimiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        SharedLimiter(std::sync::Mutex::new(KeyedLimiter::new(rate, max_keys)))
    }

    pub fn check(&self, key: &K) -> Result<(), Limited> {
        // A panic while holding the lock cannot leave a bucket half-updated in a way that
        // matters (the worst is one token too many), so a poisoned lock is still used.
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(key, Instant::now())
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// DHCP: a PXE ROM sends DISCOVER and REQUEST (on 67 and 4011), retransmits at 4, 8, 16 and
/// 32 s, and iPXE then does the same again: about a dozen packets per boot.
pub const DHCP_PER_MAC: Rate = Rate {
    burst: 12,
    per_second: 1.0,
};

/// `/boot/{mac}`: iPXE asks once per boot, and again on a failed attempt.
pub const BOOT_HTTP_PER_MAC: Rate = Rate {
    burst: 6,
    per_second: 0.5,
};

/// Keys each limiter remembers: far more machines than boot at once on one segment.
pub const MAX_TRACKED_MACS: usize = 16_384;

/// `NetworkBootFallback` events for signed-chain machines declined in DHCP: one PXE boot sends
/// several DISCOVERs and REQUESTs (ports 67 and 4011) within seconds, one event says it.
pub const DECLINE_NOTE_PER_MAC: Rate = Rate {
    burst: 1,
    per_second: 1.0 / 120.0,
};

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rate = Rate {
        burst: 3,
        per_second: 1.0,
    };

    #[test]
    fn a_key_gets_its_burst_then_waits_for_refills() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(R, 16);
        for _ in 0..3 {
            assert_eq!(l.check(&"a", t0), Ok(()));
        }
        let e = l.check(&"a", t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(1));
        // Half a second later: still not a whole token.
        assert!(l.check(&"a", t0 + Duration::from_millis(500)).is_err());
        assert_eq!(l.check(&"a", t0 + Duration::from_millis(1000)), Ok(()));
        // The bucket never holds more than the burst, however long the key was idle.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check(&"a", later), Ok(()));
        }
        assert!(l.check(&"a", later).is_err());
    }

    #[test]
    fn keys_do_not_share_buckets() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(R, 16);
        for _ in 0..3 {
            l.check(&"a", t0).unwrap();
        }
        assert!(l.check(&"a", t0).is_err());
        assert_eq!(l.check(&"b", t0), Ok(()));
    }

    #[test]
    fn a_flood_of_new_keys_never_grows_the_table_past_its_bound() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(R, 100);
        for i in 0..100_000u32 {
            l.check(&i, t0).unwrap();
            assert!(l.len() <= 100, "{} keys after {i}", l.len());
        }
    }

    #[test]
    fn a_busy_key_keeps_its_bucket_through_a_flood() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(R, 10);
        for _ in 0..3 {
            l.check(&u32::MAX, t0).unwrap();
        }
        // The busy key is used again at least once per generation (5 new keys), so it is
        // carried over each time and stays limited.
        for i in 0..1000u32 {
            l.check(&i, t0).unwrap();
            if i % 4 == 0 {
                assert!(l.check(&u32::MAX, t0).is_err(), "after {i} other keys");
            }
        }
    }

    #[test]
    fn a_forgotten_key_comes_back_with_a_full_bucket() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(R, 4);
        for _ in 0..3 {
            l.check(&0u32, t0).unwrap();
        }
        for i in 1..=10u32 {
            l.check(&i, t0).unwrap();
        }
        assert_eq!(l.check(&0, t0), Ok(()));
    }
}
