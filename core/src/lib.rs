//! recast-core, the functional core: pure decisions, no I/O. Shells feed it inputs and run
//! its actions. This crate depends only on the API types (recast-crds) and plain data crates,
//! so "no I/O in the core" is kept by the compiler, not by review.

pub mod authenticode;
pub mod bcd;
pub mod boot_manager;
pub mod boot_trust;
pub mod breaker;
pub mod build;
pub mod derive;
pub mod fleet;
pub mod hold;
pub mod image;
pub mod imaging;
pub mod lifecycle;
pub mod machine_identity;
pub mod multicast;
pub mod naming;
pub mod notice;
pub mod policy;
pub mod policy_status;
pub mod power;
pub mod regf;
pub mod restore;
pub mod signal;
pub mod target_disk;
pub mod time;
pub mod transitions;
pub mod wave;
pub mod window;
pub mod winpe_boot;
pub mod winpe_preflight;

#[cfg(test)]
mod tests;
