//! The words of an endpoint's status: which signals it shows and why its updates are held.
//! Typed, so a status can only say what recast means; serialised as the same words as before.

use std::fmt;

/// Evidence about an endpoint that may call for a reimage (`status.signals[].type`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum SignalKind {
    /// A cumulative update failed and rolled back while the running UBR stayed below it.
    FailedRollback,
    /// 0xED UNMOUNTABLE_BOOT_VOLUME or 0x7B INACCESSIBLE_BOOT_DEVICE, seen after the fact.
    BootCrash,
    /// The machine network-booted again and again with no agent report in between: its OS
    /// is not coming up (seen by the boot service, for machines without a BMC).
    BootLoop,
    /// No agent report within the policy's heartbeatTimeout.
    HeartbeatLost,
    /// The build changed without a recast attempt.
    Drift,
    /// The build is below the golden image's minimum.
    NonCompliant,
}

impl SignalKind {
    pub const ALL: [SignalKind; 6] = [
        SignalKind::BootCrash,
        SignalKind::BootLoop,
        SignalKind::FailedRollback,
        SignalKind::Drift,
        SignalKind::NonCompliant,
        SignalKind::HeartbeatLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::FailedRollback => "FailedRollback",
            SignalKind::BootCrash => "BootCrash",
            SignalKind::BootLoop => "BootLoop",
            SignalKind::HeartbeatLost => "HeartbeatLost",
            SignalKind::Drift => "Drift",
            SignalKind::NonCompliant => "NonCompliant",
        }
    }

    pub fn parse(s: &str) -> Option<SignalKind> {
        SignalKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why updates are held or released; the word in `status.updateHold.reason`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum HoldReason {
    Manual,
    FailedRollback,
    ManualRelease,
    Immutable,
    Managed,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::Manual => "Manual",
            HoldReason::FailedRollback => "FailedRollback",
            HoldReason::ManualRelease => "ManualRelease",
            HoldReason::Immutable => "Immutable",
            HoldReason::Managed => "Managed",
        }
    }

    pub fn held(self) -> bool {
        matches!(
            self,
            HoldReason::Manual | HoldReason::FailedRollback | HoldReason::Immutable
        )
    }
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
