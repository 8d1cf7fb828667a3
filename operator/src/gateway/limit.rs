//! Token-bucket rate limits, pure: the caller passes the time in seconds since any fixed origin.

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

#[cfg(test)]
mod tests {
    use super::*;

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
