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
pub mod layout;
pub mod progress;
pub mod run;
pub mod stream;
pub mod sysfs;
// The disk rule and the identity check are shared with the boot service, which runs them for
// WinPE's preflight (startnet.cmd): one source of truth in recast-core.
pub use recast_core::machine_identity as identity;
pub use recast_core::target_disk as disks;
