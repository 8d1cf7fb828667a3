//! The clock the simulated-fleet suites (wave_sim, breaker_sim) drive by hand: it starts on the
//! morning after the February 2026 Patch Tuesday and moves only when told.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use recast_operator::clock::Clock;

pub struct ManualClock(Mutex<Timestamp>);

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    #[allow(dead_code)] // store_lifecycle starts its clocks at the fixture's time instead
    pub fn new() -> Arc<ManualClock> {
        Self::at("2026-02-11T08:00:00Z")
    }

    /// A clock standing at `rfc3339`.
    pub fn at(rfc3339: &str) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(rfc3339.parse().unwrap())))
    }

    #[allow(dead_code)] // not every suite moves its clock
    pub fn advance(&self, secs: i64) {
        let mut t = self.0.lock().unwrap();
        *t = t
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap();
    }
}
