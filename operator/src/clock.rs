//! The clock, injected so tests can move time. Everything in the operator that stamps or
//! compares a time asks a [`Clock`]; only [`SystemClock`] reads the system time.

use jiff::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
