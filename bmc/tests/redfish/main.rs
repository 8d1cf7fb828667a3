//! The Redfish client against real and recorded BMCs.
//!
//! - `sushy`: sushy-tools' Redfish emulator (the real peer, fake systems driver), started here
//!   on loopback with and without TLS and basic auth. Mandatory in CI (RECAST_REQUIRE_REDFISH).
//! - `recorded`: what the emulator lacks (sessions, ETag enforcement, task monitors, vendor log
//!   paths with OS Stop records, misbehaving BMCs) served from payloads in the shape iDRAC, iLO
//!   and the Redfish specification document, by a small axum server in this binary.

mod recorded;
mod support;
mod sushy;
