//! recast's Redfish client: finds an endpoint's ComputerSystem behind its BMC, reads and
//! changes its power state, arms a one-time network boot, and reads the system event log for
//! OS crashes (BootCrash evidence).
//!
//! Decisions over Redfish payloads (which system, which ResetType, whether an override took,
//! whether a log entry is a crash) are pure functions in `model` and `events`; `transport`
//! and `client` do the I/O.

pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod model;
mod transport;

pub use client::{ArmOutcome, Bmc, EventLog, PowerOutcome};
pub use config::{AuthMode, ClientConfig, Credentials, TlsVerify};
pub use error::RedfishError;
pub use events::{CrashEvidence, LogEntry, crash_evidence};
pub use model::{BootMode, NetworkBoot, OverrideCheck, PowerAction, PowerState, SystemInfo};
