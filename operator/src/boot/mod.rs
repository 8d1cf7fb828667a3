//! The boot service: proxyDHCP/DHCP, TFTP and HTTP boot. It decides per machine — the local
//! disk unless an attempt is armed, the imaging environment when one is — from the boot intents
//! the controller writes, and reports what it saw back to the controller as inputs.

pub mod artifacts;
pub mod dhcp;
pub mod http;
pub mod intent;
pub mod listener;
pub mod multicast;
pub mod provisioning;
pub mod ratelimit;
pub mod render;
pub mod service;
pub mod tftp;
pub mod tftp_root;

pub use intent::{BootChoice, UnknownMacPolicy};
