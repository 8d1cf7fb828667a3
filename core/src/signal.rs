//! Signal kinds: evidence about an endpoint that may call for a reimage. Deriving them from agent
//! reports, the BMC and the boot service is the gateway's work; the lifecycle only consumes them.

pub use recast_crds::signal::SignalKind;

/// The order in which signals name an attempt (a decision, so it lives in the core).
pub trait Urgency {
    /// Lower is more urgent.
    fn urgency(self) -> u8;
}

impl Urgency for SignalKind {
    /// Which signal names the attempt when several call for a reimage: a machine that already
    /// crashed is the most urgent, then the improper state that precedes the crash.
    fn urgency(self) -> u8 {
        match self {
            SignalKind::BootCrash => 0,
            SignalKind::BootLoop => 1,
            SignalKind::FailedRollback => 2,
            SignalKind::Drift => 3,
            SignalKind::NonCompliant => 4,
            SignalKind::HeartbeatLost => 5,
        }
    }
}
