//! What the offline recastctl suites share: running the built binary with no backend settings
//! from the environment, and reading its output.

use std::process::{Command, Output};

pub const RECASTCTL: &str = env!("CARGO_BIN_EXE_recastctl");

/// Runs recastctl with `args`, RECAST_DATA_DIR and RECAST_BACKEND removed.
pub fn ctl(args: &[&str]) -> Output {
    Command::new(RECASTCTL)
        .args(args)
        .env_remove("RECAST_DATA_DIR")
        .env_remove("RECAST_BACKEND")
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The exit code (-1 when killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
