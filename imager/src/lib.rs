//! recast-imager: the imaging step, as its own program (issue 19). This crate is built in two
//! halves, like the operator: pure decisions here, each with exhaustive tests, and thin shells
//! that read sysfs and run sfdisk, mkfs, wimlib-imagex and hivexsh (to come).
//!
//! - [`identity`]: is this the machine the Endpoint names (SMBIOS UUID, serial number)?
//! - [`disks`]: which disk to write, by rule, never "disk 0".
//! - [`layout`]: the partition table for the boot mode, rendered as an sfdisk script and checked
//!   against what `sfdisk --json` reads back.

pub mod acl;
pub mod bcd;
pub mod bootfiles;
pub mod disks;
pub mod identity;
pub mod layout;
pub mod progress;
pub mod run;
pub mod sysfs;
