//! The kubectl plugin entry point: with `kubectl-recast` on PATH, `kubectl recast wave status
//! NAME` runs recastctl against the cluster kubectl uses. It runs the `recastctl` installed
//! next to it (else the one on PATH) with the kube backend as the default (`RECAST_BACKEND`
//! or `--backend` still choose), and `--context` and `-n` work as with kubectl.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// Tells recastctl to print its usage as `kubectl recast`.
const PLUGIN_ENV: &str = "RECASTCTL_AS_KUBECTL_PLUGIN";

fn main() -> ExitCode {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("recastctl")))
        .filter(|p| p.is_file());
    let program = sibling.unwrap_or_else(|| PathBuf::from("recastctl"));
    let mut cmd = Command::new(&program);
    cmd.args(std::env::args_os().skip(1)).env(PLUGIN_ENV, "1");
    if std::env::var_os("RECAST_BACKEND").is_none() {
        cmd.env("RECAST_BACKEND", "kube");
    }
    // exec only returns when it failed.
    let err = cmd.exec();
    eprintln!(
        "error: cannot run {}: {err}; install recastctl next to kubectl-recast or on PATH",
        program.display()
    );
    ExitCode::from(1)
}
