//! recast-imager: the program recast's Linux imaging environment runs as its init's last act.
//! It claims the machine's armed try from the boot service, checks the machine's identity,
//! picks the target disk by rule, downloads and verifies the golden WIM, partitions, applies
//! the image with wimlib, writes the boot files and the agent's configuration, reports, and
//! restarts the machine into the new Windows (or powers it off after a failure: the
//! controller decides about another try).

use std::path::PathBuf;

use clap::Parser;
use recast_imager::run::{self, Env, say};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The try's claim URL. Default: `recast.claim=` on the kernel command line (what recast's
    /// iPXE script passes).
    #[arg(long)]
    claim: Option<String>,
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    #[arg(long, default_value = "/dev")]
    dev: PathBuf,
    /// Scratch space in RAM: the staged WIM and mount points.
    #[arg(long, default_value = "/run/recast")]
    work: PathBuf,
    /// syslinux's BIOS files (mbr/mbr.bin and modules/bios/*.c32).
    #[arg(long, default_value = "/usr/lib/syslinux")]
    syslinux: PathBuf,
    /// Exit at the end instead of restarting or powering off the machine (the default when
    /// not running as PID 1).
    #[arg(long)]
    no_reboot: bool,
}

/// `recast.claim=` from a kernel command line.
fn claim_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("recast.claim="))
        .map(str::to_string)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let is_init = std::process::id() == 1;
    let finish = |ok: bool| -> ! {
        if is_init && !cli.no_reboot {
            end_machine(ok)
        }
        std::process::exit(if ok { 0 } else { 1 })
    };
    let claim = cli.claim.clone().or_else(|| {
        std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| claim_from_cmdline(&c))
    });
    let Some(claim) = claim else {
        say("FAILED: no claim URL (recast.claim= on the kernel command line, or --claim)");
        finish(false)
    };
    let env = Env {
        sysfs: cli.sysfs.clone(),
        dev: cli.dev.clone(),
        work: cli.work.clone(),
        syslinux: cli.syslinux.clone(),
    };
    let http = match run::http_client() {
        Ok(h) => h,
        Err(e) => {
            say(&format!("FAILED: {e}"));
            finish(false)
        }
    };
    let session = match run::start(http, &claim).await {
        Ok(s) => s,
        Err(f) => {
            say(&format!("FAILED at {}: {}", f.step.as_str(), f.message));
            finish(false)
        }
    };
    say(&format!(
        "task: {}/{} attempt {} try {}, image {} ({} bytes), {} boot",
        session.task.namespace,
        session.task.endpoint,
        session.task.attempt_id,
        session.task.try_number,
        session.task.image.name,
        session.task.image.size,
        session.task.boot_mode
    ));
    let outcome = run::image(&session, &env).await;
    match &outcome {
        Ok(()) => say("done: the image is written"),
        Err(f) => say(&format!("FAILED at {}: {}", f.step.as_str(), f.message)),
    }
    session.result(&outcome).await;
    finish(outcome.is_ok())
}

/// As PID 1: flush, then restart into the new Windows, or power off after a failure.
fn end_machine(ok: bool) -> ! {
    // SAFETY: sync and reboot take no pointers; reboot does not return on success.
    unsafe {
        libc::sync();
        libc::reboot(if ok {
            libc::RB_AUTOBOOT
        } else {
            libc::RB_POWER_OFF
        });
    }
    std::process::exit(if ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_url_comes_from_the_kernel_command_line() {
        assert_eq!(
            claim_from_cmdline(
                "initrd=initrd console=ttyS0 quiet recast.claim=http://10.0.0.2:8081/imaging/default/kiosk/a1/1/claim\n"
            )
            .as_deref(),
            Some("http://10.0.0.2:8081/imaging/default/kiosk/a1/1/claim")
        );
        assert_eq!(claim_from_cmdline("console=ttyS0 quiet"), None);
        assert_eq!(claim_from_cmdline(""), None);
    }
}
