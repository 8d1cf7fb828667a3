//! Signal kinds: evidence about an endpoint that may call for a reimage. Deriving them from agent
//! reports, the BMC and the boot service is the gateway's work; the lifecycle only consumes them.

use std::fmt;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum SignalKind {
    /// A cumulative update failed and rolled back while the running UBR stayed below it.
    FailedRollback,
    /// 0xED UNMOUNTABLE_BOOT_VOLUME or 0x7B INACCESSIBLE_BOOT_DEVICE, seen after the fact.
    BootCrash,
    /// No agent report within the policy's heartbeatTimeout.
    HeartbeatLost,
    /// The build changed without a recast attempt.
    Drift,
    /// The build is below the golden image's minimum.
    NonCompliant,
}

impl SignalKind {
    pub const ALL: [SignalKind; 5] = [
        SignalKind::BootCrash,
        SignalKind::FailedRollback,
        SignalKind::Drift,
        SignalKind::NonCompliant,
        SignalKind::HeartbeatLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::FailedRollback => "FailedRollback",
            SignalKind::BootCrash => "BootCrash",
            SignalKind::HeartbeatLost => "HeartbeatLost",
            SignalKind::Drift => "Drift",
            SignalKind::NonCompliant => "NonCompliant",
        }
    }

    pub fn parse(s: &str) -> Option<SignalKind> {
        SignalKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Which signal names the attempt when several call for a reimage: a machine that already
    /// crashed is the most urgent, then the improper state that precedes the crash.
    pub fn urgency(self) -> u8 {
        match self {
            SignalKind::BootCrash => 0,
            SignalKind::FailedRollback => 1,
            SignalKind::Drift => 2,
            SignalKind::NonCompliant => 3,
            SignalKind::HeartbeatLost => 4,
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
