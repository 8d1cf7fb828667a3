//! Signal derivation: what an agent report (and its absence) says about an endpoint. Pure: the
//! shell passes the last report's [`Evidence`], when it arrived, `now`, and the policy and
//! image facts.
//!
//! False positives wipe people's machines, so each rule fires only on evidence that is specific
//! to the improper state, and every rule has negative tests.
//!
//! # Telling a latest cumulative update (LCU) from everything else
//!
//! An update counts as an LCU when one of these holds, and only then. No rule reads a word:
//! titles come in the system's language ("2025-12 Kumulatives Update für Windows 11 …"), so
//! only their language-independent tail counts, and the English words stay for display.
//! - a Windows Update title that ends in "(KBnnnnnnn) (BUILD.UBR)": the tail Microsoft gives
//!   the OS cumulative updates (and their previews), the KB and the build they bring, in every
//!   language; the .NET, Dynamic and servicing stack updates, Defender, drivers and Office
//!   titles seen so far carry none. A title without the tail (some Server titles) is not an
//!   LCU by title (its RollupFix package still is), and a failure counts only when the title's
//!   build is on the machine's own servicing line ([`same_servicing_line`]) and above its UBR,
//!   so a tail on another kind of update could not wipe a machine of another line.
//! - a servicing package identity `Package_for_RollupFix~<key>~<arch>~~<build>.<ubr>.x.y`: its
//!   build is in the identity.
//! - a servicing package identity `KBnnnnnnn` whose KB a Windows Update title in the same report
//!   names as an LCU (the Setup log names LCUs by KB only).
//!
//! An LCU failure whose build cannot be learned this way is not enough to call for a reimage:
//! "the running UBR is still below the update's" cannot be checked, and a guess could wipe a
//! healthy machine.

use std::time::Duration;

use jiff::Timestamp;
use recast_crds::policy::UpdateMode;
use recast_crds::report::{
    AgentReport, CrashSource, ServicingOutcome, UpdateOutcome, parse_timestamp,
};

use super::build::Build;
use super::signal::{SignalKind, Urgency};

/// Stop codes that mean the boot volume could not be used: 0xED UNMOUNTABLE_BOOT_VOLUME (the
/// January 2026 failure) and 0x7B INACCESSIBLE_BOOT_DEVICE.
pub const BOOT_STOP_CODES: [u32; 2] = [0xED, 0x7B];

/// A report may miss one interval (a reboot, a network blip): HeartbeatLost needs at least this
/// many intervals of silence, whatever the policy's timeout.
pub const MISSED_INTERVALS_FOR_LOST: u32 = 3;

/// Everything derivation looks at.
#[derive(Clone, Copy, Debug)]
pub struct DeriveInput<'a> {
    /// What the last accepted report showed, if there is one.
    pub evidence: Option<&'a Evidence>,
    /// When the gateway accepted it (the gateway's clock, not the agent's).
    pub last_report_at: Option<Timestamp>,
    pub now: Timestamp,
    /// The policy's heartbeatTimeout.
    pub heartbeat_timeout: Duration,
    /// The golden image's minimum build.
    pub minimum_build: Option<Build>,
    /// The build recast last saw with its blessing: the build that ended the last reimage, or
    /// the first build the endpoint reported. None: Drift cannot be judged yet.
    pub baseline_build: Option<Build>,
    pub update_mode: UpdateMode,
    /// Events before this time describe a machine that has since been replaced (the end of the
    /// last reimage) and are ignored.
    pub events_after: Option<Timestamp>,
}

/// An LCU as identified from a title or package identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lcu {
    pub kb: Option<u32>,
    pub build: Option<Build>,
}

/// Whether two Windows builds share one servicing line, so that one's cumulative update moves
/// the other's UBR: the same build, or releases serviced by the same updates (Windows 10
/// 19041-19045, Windows 11 22621/22631, 26100/26200). An update of another line (a server
/// build on a client, an older release) says nothing about this machine.
fn same_servicing_line(a: u32, b: u32) -> bool {
    const LINES: [&[u32]; 3] = [
        &[19041, 19042, 19043, 19044, 19045],
        &[22621, 22631],
        &[26100, 26200],
    ];
    a == b
        || LINES
            .iter()
            .any(|line| line.contains(&a) && line.contains(&b))
}

/// The last "(BUILD.UBR)" group of a title.
fn build_in_title(s: &str) -> Option<Build> {
    let end = s.trim_end().strip_suffix(')')?;
    let start = end.rfind('(')?;
    end[start + 1..].parse().ok()
}

/// Whether a Windows Update title names an LCU: its tail is "(KBnnnnnnn) (BUILD.UBR)" with a
/// Windows build (see the module documentation). The words before it are never read.
pub fn lcu_from_title(title: &str) -> Option<Lcu> {
    let build = build_in_title(title)?;
    // Windows 10 and later (10240 on); a smaller number is not a Windows build.
    if build.build < 10_000 {
        return None;
    }
    // What precedes the build group must end in the "(KBnnnnnnn)" group.
    let without_build = title.trim_end().strip_suffix(')')?;
    let head = without_build[..without_build.rfind('(')?].trim_end();
    let kb_group = head.strip_suffix(')')?;
    let digits = kb_group[kb_group.rfind('(')? + 1..]
        .strip_prefix("KB")
        .or_else(|| kb_group[kb_group.rfind('(')? + 1..].strip_prefix("kb"))?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kb: u32 = digits.parse().ok()?;
    Some(Lcu {
        kb: Some(kb),
        build: Some(build),
    })
}

/// Whether a servicing package identity names an LCU on its own (RollupFix), or is a bare KB.
fn lcu_from_package(package: &str) -> PackageKind {
    if let Some(rest) = package.strip_prefix("Package_for_RollupFix~") {
        // Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10
        let version = rest.rsplit("~").next().unwrap_or("");
        let mut parts = version.split('.');
        let build = match (parts.next(), parts.next()) {
            (Some(b), Some(u)) => format!("{b}.{u}").parse().ok(),
            _ => None,
        };
        return PackageKind::Lcu(Lcu { kb: None, build });
    }
    let upper = package.trim().to_ascii_uppercase();
    if let Some(d) = upper.strip_prefix("KB")
        && !d.is_empty()
        && d.bytes().all(|b| b.is_ascii_digit())
        && let Ok(kb) = d.parse()
    {
        return PackageKind::Kb(kb);
    }
    PackageKind::Other
}

enum PackageKind {
    Lcu(Lcu),
    Kb(u32),
    Other,
}

/// One LCU result, from either log.
#[derive(Clone, Debug, PartialEq)]
struct LcuResult {
    lcu: Lcu,
    succeeded: bool,
    time: Timestamp,
    what: String,
}

/// What a Windows Update failure's error code says about where the install stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePhase {
    /// The servicing stack was changing the system and gave up: the update rolled back.
    /// Component-based servicing's codes (facility 0x0F, `0x800Fxxxx`: 0x800f0922
    /// CBS_E_INSTALLERS_FAILED, KB5074109's, 0x800f0831 a missing manifest, 0x800f081f source
    /// files missing) and the component store's (`0x800736B0`..`0x800737FF`: 0x80073712
    /// ERROR_SXS_COMPONENT_STORE_CORRUPT).
    Install,
    /// It never got that far, or nothing failed: Windows Update's own agent and download errors
    /// (facility 0x24, `0x8024xxxx`: 0x80240017 not applicable, 0x8024402c network, 0x80244022
    /// service unavailable), BITS (`0x8019xxxx`), WinHTTP/WinINet (`0x80072Exx`, `0x80072Fxx`),
    /// "a restart is needed to finish" (0x80070BC2, 0x80070BC9), "a shutdown is in progress"
    /// (0x8007045B), a full disk (0x80070070). Windows Update retries these itself.
    NotInstall,
    /// No code, or one recast does not place: not evidence on its own (a Servicing failure of
    /// the package is).
    Unknown,
}

/// Where a Windows Update failure stopped, from its error code ("0x800f0922"; any case, with
/// or without the prefix).
pub fn failure_phase(code: Option<&str>) -> FailurePhase {
    let Some(code) = code else {
        return FailurePhase::Unknown;
    };
    let hex = code.trim();
    let hex = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex);
    let Ok(v) = u32::from_str_radix(hex, 16) else {
        return FailurePhase::Unknown;
    };
    match v {
        // 0x800736B0.. is the side-by-side (component store) range; just below it are IPsec's.
        0x800F_0000..=0x800F_FFFF | 0x8007_36B0..=0x8007_37FF => FailurePhase::Install,
        0x8024_0000..=0x8024_FFFF
        | 0x8019_0000..=0x8019_FFFF
        | 0x8007_2E00..=0x8007_2FFF
        | 0x8007_0BC2
        | 0x8007_0BC9
        | 0x8007_045B
        | 0x8007_0070 => FailurePhase::NotInstall,
        _ => FailurePhase::Unknown,
    }
}

fn lcu_results(r: &AgentReport) -> Vec<LcuResult> {
    let mut out = Vec::new();
    let mut kb_builds: Vec<(u32, Option<Build>)> = Vec::new();
    for u in &r.update_events {
        let Some(lcu) = lcu_from_title(&u.title) else {
            continue;
        };
        if let Some(kb) = lcu.kb {
            kb_builds.push((kb, lcu.build));
        }
        let Some(time) = parse_timestamp(&u.time) else {
            continue;
        };
        let succeeded = match u.outcome {
            UpdateOutcome::Installed => true,
            // Only a failure inside the install is evidence that it rolled back: a download or
            // service error leaves the machine as it was, and Windows Update retries it.
            UpdateOutcome::Failed
                if failure_phase(u.error_code.as_deref()) == FailurePhase::Install =>
            {
                false
            }
            UpdateOutcome::Failed | UpdateOutcome::Started => continue,
        };
        let what = match (&u.error_code, succeeded) {
            (Some(code), false) => format!(
                "Windows Update failed to install {:?} ({code}) at {}",
                u.title, u.time
            ),
            _ => format!("Windows Update installed {:?} at {}", u.title, u.time),
        };
        out.push(LcuResult {
            lcu,
            succeeded,
            time,
            what,
        });
    }
    for s in &r.servicing_events {
        let succeeded = match s.outcome {
            ServicingOutcome::Succeeded => true,
            o if o.is_failure() => false,
            _ => continue,
        };
        // A package failing to be removed, or staged, is not an install that rolled back.
        if let Some(state) = &s.intended_state
            && !state.eq_ignore_ascii_case("Installed")
        {
            continue;
        }
        let lcu = match lcu_from_package(&s.package) {
            PackageKind::Lcu(l) => l,
            PackageKind::Kb(kb) => match kb_builds.iter().find(|(k, _)| *k == kb) {
                Some((_, build)) => Lcu {
                    kb: Some(kb),
                    build: *build,
                },
                // The Setup log alone does not say whether a KB is cumulative.
                None => continue,
            },
            PackageKind::Other => continue,
        };
        let Some(time) = parse_timestamp(&s.time) else {
            continue;
        };
        let what = if succeeded {
            format!("servicing installed package {} at {}", s.package, s.time)
        } else {
            format!(
                "servicing failed to install package {} ({}) at {} (event {})",
                s.package,
                s.error_code.as_deref().unwrap_or("no error code"),
                s.time,
                s.event_id
            )
        };
        out.push(LcuResult {
            lcu,
            succeeded,
            time,
            what,
        });
    }
    out
}

/// What signal derivation needs from one report, and nothing else: the gateway keeps this per
/// endpoint between reports instead of the whole report (a fleet's worth of reports is most of
/// its memory). Everything that depends on facts outside the report (the end of the last
/// reimage, the policy, the image) is still judged in [`derive`], so the same evidence gives
/// the same signals as the report it came from, whatever those facts become.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    running: Build,
    interval_seconds: u32,
    /// LCU install failures that could explain the running build: their build is known and
    /// above it (others can never be FailedRollback for this report).
    failures: Vec<LcuResult>,
    /// LCU installs, which clear earlier failures.
    installs: Vec<LcuInstall>,
    /// Crashes with a boot stop code and a readable time.
    boot_crashes: Vec<BootCrash>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct LcuInstall {
    lcu: Lcu,
    time: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
struct BootCrash {
    at: Timestamp,
    code: u32,
    source: CrashSource,
    /// The time as the agent wrote it, for the message.
    reported: String,
}

impl Evidence {
    pub fn of(r: &AgentReport) -> Evidence {
        let running = Build {
            build: r.os.current_build,
            ubr: r.os.ubr,
        };
        let mut failures = Vec::new();
        let mut installs = Vec::new();
        for res in lcu_results(r) {
            if res.succeeded {
                installs.push(LcuInstall {
                    lcu: res.lcu,
                    time: res.time,
                });
            // Without the update's build, "still below it" cannot be checked: not enough to
            // act. The UBR is what the LCU moves; it is shared across releases on one
            // servicing branch (24H2 and 25H2 get the same UBR from the same month's update).
            } else if res
                .lcu
                .build
                .is_some_and(|b| same_servicing_line(b.build, running.build) && running.ubr < b.ubr)
            {
                failures.push(res);
            }
        }
        let boot_crashes = r
            .crashes
            .iter()
            .filter_map(|c| {
                let code = c.bugcheck_code?;
                if !BOOT_STOP_CODES.contains(&code) {
                    return None;
                }
                Some(BootCrash {
                    at: parse_timestamp(&c.time)?,
                    code,
                    source: c.source,
                    reported: c.time.clone(),
                })
            })
            .collect();
        Evidence {
            running,
            interval_seconds: r.interval_seconds,
            failures,
            installs,
            boot_crashes,
        }
    }

    /// The build the endpoint runs.
    pub fn running(&self) -> Build {
        self.running
    }
}

/// Whether a later success clears a failure: the same KB, or a build at least as new; when
/// either build is unknown, any later LCU install does (LCUs are cumulative, and Windows does
/// not install an older one over a newer one).
fn clears(success: &LcuInstall, failure: &LcuResult) -> bool {
    if success.time <= failure.time {
        return false;
    }
    if let (Some(a), Some(b)) = (success.lcu.kb, failure.lcu.kb)
        && a == b
    {
        return true;
    }
    match (success.lcu.build, failure.lcu.build) {
        (Some(s), Some(f)) => s.ubr >= f.ubr,
        _ => true,
    }
}

fn failed_rollback(e: &Evidence, after: Option<Timestamp>) -> Option<String> {
    let running = e.running;
    let mut active: Vec<&LcuResult> = e
        .failures
        .iter()
        .filter(|f| after.is_none_or(|a| f.time > a))
        .filter(|f| !e.installs.iter().any(|s| clears(s, f)))
        .collect();
    active.sort_by_key(|f| std::cmp::Reverse(f.time));
    let newest = active.first()?;
    let target = newest.lcu.build.map(|b| b.to_string()).unwrap_or_default();
    Some(format!(
        "{}; the endpoint still runs {running}, below {target}: the update rolled back and left servicing in the improper state",
        newest.what
    ))
}

fn boot_crash(e: &Evidence, after: Option<Timestamp>) -> Option<String> {
    let newest = e
        .boot_crashes
        .iter()
        .filter(|c| after.is_none_or(|a| c.at > a))
        // The newest; of equal times, the first reported.
        .min_by_key(|c| std::cmp::Reverse(c.at))?;
    let source = match newest.source {
        CrashSource::WerBugcheck => "WER-SystemErrorReporting 1001",
        CrashSource::KernelPower => "Kernel-Power 41",
        CrashSource::UnexpectedShutdown => "EventLog 6008",
    };
    let name = if newest.code == 0xED {
        "UNMOUNTABLE_BOOT_VOLUME"
    } else {
        "INACCESSIBLE_BOOT_DEVICE"
    };
    Some(format!(
        "bugcheck 0x{:08x} {name} at {} ({source}, reported by the agent)",
        newest.code, newest.reported
    ))
}

/// How long without a report before HeartbeatLost: the policy's timeout, but never less than
/// [`MISSED_INTERVALS_FOR_LOST`] of the agent's own intervals.
pub fn heartbeat_deadline(heartbeat_timeout: Duration, interval_seconds: Option<u32>) -> Duration {
    let floor = Duration::from_secs(
        u64::from(interval_seconds.unwrap_or(0)) * u64::from(MISSED_INTERVALS_FOR_LOST),
    );
    heartbeat_timeout.max(floor)
}

/// The signals an endpoint shows right now, with a reason each, most urgent first.
pub fn derive(input: &DeriveInput<'_>) -> Vec<(SignalKind, String)> {
    let mut out = Vec::new();
    if let Some(last) = input.last_report_at {
        let deadline = heartbeat_deadline(
            input.heartbeat_timeout,
            input.evidence.map(|e| e.interval_seconds),
        );
        let silent = super::time::since(input.now, last);
        if silent > deadline {
            out.push((
                SignalKind::HeartbeatLost,
                format!(
                    "no agent report since {} ({}s, more than the {}s allowed)",
                    super::time::format(last),
                    silent.as_secs(),
                    deadline.as_secs()
                ),
            ));
        }
    }
    if let Some(e) = input.evidence {
        let running = e.running;
        if let Some(why) = boot_crash(e, input.events_after) {
            out.push((SignalKind::BootCrash, why));
        }
        if let Some(why) = failed_rollback(e, input.events_after) {
            out.push((SignalKind::FailedRollback, why));
        }
        // In managed mode Windows Update patches in place by design; only an immutable fleet
        // calls a changed build drift.
        if input.update_mode == UpdateMode::Immutable
            && let Some(base) = input.baseline_build
            && base != running
        {
            out.push((
                SignalKind::Drift,
                format!("the endpoint runs {running}, but recast left it at {base}: it was patched in place"),
            ));
        }
        if let Some(min) = input.minimum_build
            && !running.satisfies(min)
        {
            out.push((
                SignalKind::NonCompliant,
                format!("the endpoint runs {running}, below the golden image's minimum {min}"),
            ));
        }
    }
    out.sort_by_key(|(k, _)| k.urgency());
    out
}

/// When the endpoint's last successful reimage ended: events older than that describe the
/// machine it replaced (the `events_after` of [`DeriveInput`] and of [`bmc_boot_crash`]).
pub fn last_reimage_end(status: &recast_crds::endpoint::EndpointStatus) -> Option<Timestamp> {
    status
        .history
        .iter()
        .filter(|h| h.outcome.replaced_the_machine())
        .filter_map(|h| super::time::parse(&h.finished_at))
        .max()
}

/// When the store last took a report from the endpoint's agent (status.lastReport).
pub fn last_report_at(status: &recast_crds::endpoint::EndpointStatus) -> Option<Timestamp> {
    status
        .last_report
        .as_ref()
        .and_then(|r| super::time::parse(&r.reported_at))
}

/// One OS crash a BMC's event log recorded (SEL, IML, Log1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmcCrash {
    /// When the BMC recorded it; a record without a time cannot be placed and never counts.
    pub at: Option<Timestamp>,
    /// The bug check code when the record carries one.
    pub bugcheck: Option<u32>,
    /// Where it was read ("Sel entry 12"), for the reason.
    pub source: String,
    pub message: String,
}

/// BootCrash from the BMC's side: the agent has gone silent (HeartbeatLost is active) and the
/// BMC recorded an OS critical stop after the agent's last report (and after the last
/// reimage). A stop code other than 0xED/0x7B (a 0x50, say) is not a boot crash; a record with
/// no code counts only because the machine has also stopped reporting. Returns the reason.
pub fn bmc_boot_crash(
    crashes: &[BmcCrash],
    agent_silent: bool,
    last_report_at: Option<Timestamp>,
    events_after: Option<Timestamp>,
) -> Option<String> {
    if !agent_silent {
        return None;
    }
    let after = last_report_at.max(events_after);
    let newest = crashes
        .iter()
        .filter(|c| c.at.is_some_and(|t| after.is_none_or(|a| t > a)))
        .filter(|c| {
            c.bugcheck
                .is_none_or(|code| BOOT_STOP_CODES.contains(&code))
        })
        .max_by_key(|c| c.at)?;
    let what = match newest.bugcheck {
        Some(0xED) => "bugcheck 0x000000ed UNMOUNTABLE_BOOT_VOLUME".to_string(),
        Some(code) => format!("bugcheck 0x{code:08x} INACCESSIBLE_BOOT_DEVICE"),
        None => "an OS critical stop (no stop code recorded)".to_string(),
    };
    Some(format!(
        "the BMC recorded {what} at {} ({}: {}) and the agent has not reported since {}",
        newest.at.map(super::time::format).unwrap_or_default(),
        newest.source,
        newest.message,
        last_report_at
            .map(super::time::format)
            .unwrap_or_else(|| "it was installed".into()),
    ))
}

/// A healthy kiosk's report on build 26100.UBR with nothing else in it, for the unit tests of
/// the derivation and of the gateway's session logic (the operator's tests reach it through
/// the `test-fixtures` feature).
#[cfg(any(test, feature = "test-fixtures"))]
pub fn sample_report(sequence: u64, ubr: u32) -> AgentReport {
    use recast_crds::report::{OsInfo, PendingServicing, REPORT_VERSION};
    AgentReport {
        setup_state: None,
        network_restart: None,
        version: REPORT_VERSION,
        endpoint: "kiosk-01".into(),
        sequence,
        agent_version: "0.1.0".into(),
        attempt_id: None,
        collected_at: "2026-01-15T09:00:00Z".into(),
        interval_seconds: 300,
        os: OsInfo {
            current_build: 26100,
            ubr,
        },
        update_events: vec![],
        servicing_events: vec![],
        pending: PendingServicing::default(),
        crashes: vec![],
        boot_time: None,
        uptime_seconds: None,
        system_disk: None,
        collection_errors: vec![],
        update_hold: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::report::{CrashEvent, CrashSource, ServicingEvent, UpdateEvent};

    const JAN: &str = "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5074109) (26100.7623)";
    const FEB: &str = "2026-02 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5077181) (26100.7705)";
    const DEC: &str = "2025-12 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5072033) (26100.7462)";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sel(at: Option<&str>, code: Option<u32>) -> BmcCrash {
        BmcCrash {
            at: at.map(ts),
            bugcheck: code,
            source: "Sel entry 12".into(),
            message: "OS Stop event: run-time critical stop".into(),
        }
    }

    #[test]
    fn bmc_crash_needs_silence_a_boot_stop_code_and_a_time_after_the_last_report() {
        let last = Some(ts("2026-01-15T09:00:00Z"));
        let ed = sel(Some("2026-01-15T09:05:00Z"), Some(0xED));
        let why = bmc_boot_crash(std::slice::from_ref(&ed), true, last, None).unwrap();
        assert!(
            why.contains("UNMOUNTABLE_BOOT_VOLUME") && why.contains("Sel entry 12"),
            "{why}"
        );
        // The agent still reports: the machine runs, whatever the log says.
        assert_eq!(
            bmc_boot_crash(std::slice::from_ref(&ed), false, last, None),
            None
        );
        // A 0x50 is not a boot crash; a crash before the last report was survived; a record
        // without a time cannot be placed; one before the last reimage was the old machine's.
        for c in [
            sel(Some("2026-01-15T09:05:00Z"), Some(0x50)),
            sel(Some("2026-01-15T08:55:00Z"), Some(0xED)),
            sel(None, Some(0xED)),
        ] {
            assert_eq!(
                bmc_boot_crash(std::slice::from_ref(&c), true, last, None),
                None,
                "{c:?}"
            );
        }
        assert_eq!(
            bmc_boot_crash(
                std::slice::from_ref(&ed),
                true,
                last,
                Some(ts("2026-01-15T09:10:00Z"))
            ),
            None
        );
        // No stop code but silent since: counts, and says the code is unknown.
        let why =
            bmc_boot_crash(&[sel(Some("2026-01-15T09:05:00Z"), None)], true, last, None).unwrap();
        assert!(why.contains("no stop code recorded"), "{why}");
        // Never reported: any placed boot-code crash counts.
        assert!(
            bmc_boot_crash(
                &[sel(Some("2026-01-15T09:05:00Z"), Some(0x7B))],
                true,
                None,
                None
            )
            .is_some()
        );
    }

    fn report(ubr: u32) -> AgentReport {
        sample_report(1, ubr)
    }

    fn wu(outcome: UpdateOutcome, time: &str, title: &str) -> UpdateEvent {
        UpdateEvent {
            event_id: match outcome {
                UpdateOutcome::Installed => 19,
                UpdateOutcome::Failed => 20,
                UpdateOutcome::Started => 43,
            },
            outcome,
            time: time.into(),
            title: title.into(),
            error_code: (outcome == UpdateOutcome::Failed).then(|| "0x800f0922".into()),
            update_guid: None,
            revision: None,
        }
    }

    fn cbs(outcome: ServicingOutcome, time: &str, package: &str) -> ServicingEvent {
        ServicingEvent {
            event_id: match outcome {
                ServicingOutcome::Initiated => 1,
                ServicingOutcome::Succeeded => 2,
                ServicingOutcome::Failed => 3,
                ServicingOutcome::RebootRequired => 4,
                ServicingOutcome::FailedPartiallyInstalled => 6,
            },
            outcome,
            time: time.into(),
            package: package.into(),
            intended_state: Some("Installed".into()),
            error_code: outcome.is_failure().then(|| "0x800f0922".into()),
            client: Some("WindowsUpdateAgent".into()),
        }
    }

    fn crash(source: CrashSource, code: Option<u32>, time: &str) -> CrashEvent {
        CrashEvent {
            source,
            event_id: 41,
            time: time.into(),
            bugcheck_code: code,
            parameters: vec![],
        }
    }

    fn input(e: &Evidence) -> DeriveInput<'_> {
        DeriveInput {
            evidence: Some(e),
            last_report_at: Some(ts("2026-01-15T09:00:00Z")),
            now: ts("2026-01-15T09:01:00Z"),
            heartbeat_timeout: Duration::from_secs(15 * 60),
            minimum_build: None,
            baseline_build: None,
            update_mode: UpdateMode::Managed,
            events_after: None,
        }
    }

    fn kinds(i: &DeriveInput<'_>) -> Vec<SignalKind> {
        derive(i).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn lcu_titles() {
        let jan = lcu_from_title(JAN).unwrap();
        assert_eq!(jan.kb, Some(5074109));
        assert_eq!(jan.build, Some("26100.7623".parse().unwrap()));
        let preview = lcu_from_title("2026-01 Cumulative Update Preview for Windows 11 Version 24H2 for x64-based Systems (KB5074105) (26100.7701)").unwrap();
        assert_eq!(preview.kb, Some(5074105));
        // The shorter title format of later updates has the same tail.
        let short = lcu_from_title("Security Update (KB5079473) (26200.8037)").unwrap();
        assert_eq!(short.kb, Some(5079473));
        // In a language recast has never seen, only the tail counts.
        for title in [
            "2025-12 Kumulatives Update für Windows 11 Version 24H2 für x64-basierte Systeme (KB5072033) (26100.7462)",
            "2025-12 Mise à jour cumulative pour Windows 11 Version 24H2 pour les systèmes x64 (KB5072033) (26100.7462)",
            "2025-12 x64 ベース システム用 Windows 11 Version 24H2 の累積更新プログラム (KB5072033) (26100.7462)",
            "2025-12 适用于 x64 系统的 Windows 11 Version 24H2 累积更新 (KB5072033) (26100.7462)",
            "2025-12 Ꮎ Ꭴ Ꮣ Ꭰ (KB5072033) (26100.7462)",
        ] {
            let lcu = lcu_from_title(title).unwrap_or_else(|| panic!("{title}"));
            assert_eq!(
                (lcu.kb, lcu.build),
                (Some(5072033), Some("26100.7462".parse().unwrap()))
            );
        }
        for not_lcu in [
            // No build tail: not an OS cumulative update, whatever the words say.
            "2026-01 Cumulative Update for Microsoft server operating system version 24H2 for x64-based Systems (KB5073379)",
            "2026-01 Kumulatives Update für .NET Framework 3.5 und 4.8.1 für Windows 11, version 24H2 für x64 (KB5073379)",
            "Update (KB5072033) (7462)",
            "Update (KB5072033) (2.7462)",
            "Update (5072033) (26100.7462)",
            "Update (KBabc) (26100.7462)",
            "(26100.7462)",
            "",
            "2026-01 Cumulative Update for .NET Framework 3.5 and 4.8.1 for Windows 11, version 24H2 for x64 (KB5073379)",
            "Security Intelligence Update for Microsoft Defender Antivirus - KB2267602 (Version 1.443.512.0) - Current Channel (Broad)",
            "Intel Corporation - Display - 32.0.101.6881",
            "2026-01 Dynamic Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5074200)",
            "2026-01 Servicing Stack Update for Windows 11 Version 24H2 for x64-based Systems (KB5074000)",
            "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems",
            "Windows Malicious Software Removal Tool x64 - v5.137 (KB890830)",
        ] {
            assert_eq!(lcu_from_title(not_lcu), None, "{not_lcu}");
        }
    }

    #[test]
    fn failed_lcu_below_its_build_is_failed_rollback() {
        let mut r = report(7462);
        r.update_events = vec![
            wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN),
            wu(UpdateOutcome::Started, "2026-01-14T08:05:47Z", JAN),
            wu(UpdateOutcome::Installed, "2025-12-10T09:20:31Z", DEC),
        ];
        let got = derive(&input(&Evidence::of(&r)));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, SignalKind::FailedRollback);
        assert!(got[0].1.contains("KB5074109"), "{}", got[0].1);
        assert!(got[0].1.contains("26100.7462"), "{}", got[0].1);
    }

    #[test]
    fn servicing_rollupfix_failure_is_failed_rollback_alone() {
        for outcome in [
            ServicingOutcome::Failed,
            ServicingOutcome::FailedPartiallyInstalled,
        ] {
            let mut r = report(7462);
            r.servicing_events = vec![cbs(
                outcome,
                "2026-01-13T21:14:33Z",
                "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10",
            )];
            assert_eq!(
                kinds(&input(&Evidence::of(&r))),
                [SignalKind::FailedRollback]
            );
        }
    }

    #[test]
    fn servicing_kb_failure_counts_only_when_a_title_names_it_an_lcu() {
        let mut r = report(7462);
        r.servicing_events = vec![cbs(
            ServicingOutcome::FailedPartiallyInstalled,
            "2026-01-14T08:40:55Z",
            "KB5074109",
        )];
        assert!(
            kinds(&input(&Evidence::of(&r))).is_empty(),
            "a bare KB is not known to be cumulative"
        );
        r.update_events = vec![wu(UpdateOutcome::Started, "2026-01-14T08:05:47Z", JAN)];
        assert_eq!(
            kinds(&input(&Evidence::of(&r))),
            [SignalKind::FailedRollback]
        );
    }

    #[test]
    fn benign_failures_are_not_failed_rollback() {
        let mut r = report(7462);
        r.update_events = vec![
            wu(
                UpdateOutcome::Failed,
                "2026-01-14T08:00:00Z",
                "Security Intelligence Update for Microsoft Defender Antivirus - KB2267602 (Version 1.443.512.0) - Current Channel (Broad)",
            ),
            wu(
                UpdateOutcome::Failed,
                "2026-01-14T08:00:00Z",
                "Intel Corporation - Display - 32.0.101.6881",
            ),
            wu(
                UpdateOutcome::Failed,
                "2026-01-14T08:00:00Z",
                "2026-01 Cumulative Update for .NET Framework 3.5 and 4.8.1 for Windows 11, version 24H2 for x64 (KB5073379)",
            ),
        ];
        // The .NET package failing in the Setup log too, by KB.
        r.servicing_events = vec![cbs(
            ServicingOutcome::Failed,
            "2026-01-14T08:00:00Z",
            "KB5073379",
        )];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
    }

    #[test]
    fn error_codes_are_placed_in_the_install_or_before_it() {
        use FailurePhase::*;
        for (code, phase) in [
            (Some("0x800f0922"), Install),
            (Some("0x800F0831"), Install),
            (Some("800f081f"), Install),
            (Some("0x80073712"), Install),
            (Some("0x800736b0"), Install),
            // IPsec's codes sit just below the component store's.
            (Some("0x80073600"), Unknown),
            (Some("0x80240017"), NotInstall),
            (Some("0x8024402c"), NotInstall),
            (Some("0x80244022"), NotInstall),
            (Some("0x80246008"), NotInstall),
            (Some("0x80190194"), NotInstall),
            (Some("0x80072efe"), NotInstall),
            (Some("0x80070bc2"), NotInstall),
            (Some("0x80070bc9"), NotInstall),
            (Some("0x8007045b"), NotInstall),
            (Some("0x80070070"), NotInstall),
            (Some("0x80070005"), Unknown),
            (Some(""), Unknown),
            (Some("boom"), Unknown),
            (Some("0x1234567890"), Unknown),
            (None, Unknown),
        ] {
            assert_eq!(failure_phase(code), phase, "{code:?}");
        }
    }

    /// The negatives: failures Windows Update has in its log that are not an install that
    /// rolled back, each on a machine still below the update's build.
    #[test]
    fn only_an_install_phase_failure_is_a_rollback() {
        let failed_with = |code: Option<&str>| {
            let mut e = wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN);
            e.error_code = code.map(str::to_string);
            e
        };
        for (what, code) in [
            ("a download failure", Some("0x80246008")),
            ("a network failure", Some("0x8024402c")),
            ("the Windows Update service failing", Some("0x80244022")),
            ("BITS failing", Some("0x80190194")),
            ("a restart needed to finish", Some("0x80070bc2")),
            ("a shutdown in progress", Some("0x8007045b")),
            ("no error code", None),
            ("an error code recast does not place", Some("0x80070005")),
        ] {
            let mut r = report(7462);
            r.update_events = vec![
                failed_with(code),
                wu(UpdateOutcome::Started, "2026-01-14T08:05:47Z", JAN),
            ];
            assert!(
                kinds(&input(&Evidence::of(&r))).is_empty(),
                "{what} is not a rollback"
            );
        }
        // Not applicable: re-offered to a machine that already runs the update's build.
        let mut r = report(7623);
        r.update_events = vec![failed_with(Some("0x80240017"))];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
        // A pending restart after a successful install: installed, still on the old UBR.
        let mut r = report(7462);
        r.update_events = vec![wu(UpdateOutcome::Installed, "2026-01-14T08:41:02Z", JAN)];
        r.servicing_events = vec![cbs(
            ServicingOutcome::RebootRequired,
            "2026-01-14T08:40:00Z",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10",
        )];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
        // A power loss (Kernel-Power 41 without a bugcheck) is not a boot crash either.
        let mut r = report(7462);
        r.crashes = vec![crash(
            CrashSource::KernelPower,
            None,
            "2026-01-15T08:00:00Z",
        )];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
        // The same download failure, and then the servicing stack's own failure of the
        // package: the install did roll back.
        let mut r = report(7462);
        r.update_events = vec![failed_with(Some("0x80246008"))];
        r.servicing_events = vec![cbs(
            ServicingOutcome::Failed,
            "2026-01-14T09:10:00Z",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10",
        )];
        assert_eq!(
            kinds(&input(&Evidence::of(&r))),
            [SignalKind::FailedRollback]
        );
    }

    #[test]
    fn a_later_install_of_the_same_or_a_newer_lcu_clears_it() {
        let failed = wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN);
        for later in [
            wu(UpdateOutcome::Installed, "2026-01-15T08:00:00Z", JAN),
            wu(UpdateOutcome::Installed, "2026-02-11T08:00:00Z", FEB),
        ] {
            // Still on the old UBR in the report (e.g. a reboot pending): the install clears.
            let mut r = report(7462);
            r.update_events = vec![later, failed.clone()];
            assert!(kinds(&input(&Evidence::of(&r))).is_empty());
        }
        // An install from before the failure does not.
        let mut r = report(7462);
        r.update_events = vec![
            failed.clone(),
            wu(UpdateOutcome::Installed, "2026-01-10T08:00:00Z", JAN),
        ];
        assert_eq!(
            kinds(&input(&Evidence::of(&r))),
            [SignalKind::FailedRollback]
        );
        // An older LCU installed later does not.
        let mut r = report(7462);
        r.update_events = vec![
            wu(UpdateOutcome::Installed, "2026-01-15T08:00:00Z", DEC),
            failed,
        ];
        assert_eq!(
            kinds(&input(&Evidence::of(&r))),
            [SignalKind::FailedRollback]
        );
        // A later servicing success of the RollupFix package clears a servicing failure.
        let mut r = report(7462);
        let pkg = "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10";
        r.servicing_events = vec![
            cbs(ServicingOutcome::Succeeded, "2026-01-15T08:00:00Z", pkg),
            cbs(ServicingOutcome::Failed, "2026-01-14T08:00:00Z", pkg),
        ];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
    }

    #[test]
    fn running_ubr_at_or_above_the_failed_lcu_is_not_failed_rollback() {
        for ubr in [7623, 7705] {
            let mut r = report(ubr);
            r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN)];
            assert!(kinds(&input(&Evidence::of(&r))).is_empty(), "{ubr}");
        }
        // 25H2 (26200) on the same UBR is the same patch level.
        let mut r = report(7623);
        r.os.current_build = 26200;
        r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN)];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
    }

    #[test]
    fn a_title_of_another_servicing_line_is_not_evidence() {
        // A failure whose title carries another line's build says nothing about this machine's
        // UBR (a server build, an older release, a number that is no build at all).
        for title in [
            "Update (KB5099999) (20348.9999)",
            "Update (KB5099999) (22631.9999)",
            "Update (KB5099999) (12345.9000)",
        ] {
            let mut r = report(7462);
            r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", title)];
            assert!(kinds(&input(&Evidence::of(&r))).is_empty(), "{title}");
        }
        // 25H2's own number on a 24H2 machine is the same line: it counts.
        let mut r = report(7462);
        r.update_events = vec![wu(
            UpdateOutcome::Failed,
            "2026-01-14T08:41:02Z",
            "2026-01 Cumulative Update for Windows 11 Version 25H2 for x64-based Systems (KB5074109) (26200.7623)",
        )];
        assert!(kinds(&input(&Evidence::of(&r))).contains(&SignalKind::FailedRollback));
    }

    #[test]
    fn an_lcu_failure_with_unknown_build_is_not_enough() {
        let mut r = report(7462);
        r.update_events = vec![wu(
            UpdateOutcome::Failed,
            "2026-01-14T08:41:02Z",
            "2026-01 Cumulative Update for Microsoft server operating system version 24H2 for x64-based Systems (KB5073379)",
        )];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
    }

    #[test]
    fn a_failed_removal_or_staging_is_not_a_rolled_back_install() {
        let mut r = report(7462);
        let mut e = cbs(
            ServicingOutcome::Failed,
            "2026-01-14T08:00:00Z",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10",
        );
        e.intended_state = Some("Absent".into());
        r.servicing_events = vec![e];
        assert!(kinds(&input(&Evidence::of(&r))).is_empty());
    }

    #[test]
    fn events_from_before_the_last_reimage_are_ignored() {
        let mut r = report(7462);
        r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN)];
        r.crashes = vec![crash(
            CrashSource::KernelPower,
            Some(0xED),
            "2026-01-14T09:00:00Z",
        )];
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        i.events_after = Some(ts("2026-01-14T10:00:00Z"));
        assert!(kinds(&i).is_empty());
    }

    #[test]
    fn evidence_keeps_only_what_can_become_a_signal() {
        // A healthy report: the installed LCU is kept (it clears failures), no text at all.
        let mut r = report(7623);
        r.update_events = vec![
            wu(
                UpdateOutcome::Installed,
                "2026-01-15T06:00:00Z",
                "Security Intelligence Update for Microsoft Defender Antivirus - KB2267602 (Version 1.443.512.0)",
            ),
            wu(UpdateOutcome::Installed, "2026-01-14T08:41:02Z", JAN),
            wu(UpdateOutcome::Started, "2026-01-14T08:05:47Z", JAN),
        ];
        r.crashes = vec![crash(
            CrashSource::KernelPower,
            Some(0x50),
            "2026-01-15T08:02:14Z",
        )];
        let e = Evidence::of(&r);
        assert!(e.failures.is_empty() && e.boot_crashes.is_empty());
        assert_eq!(e.installs.len(), 1);
        assert_eq!(e.running(), "26100.7623".parse().unwrap());
        // A failure the running build is already past can never be FailedRollback: dropped.
        let mut r = report(7705);
        r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN)];
        assert!(Evidence::of(&r).failures.is_empty());
    }

    #[test]
    fn evidence_is_judged_against_the_facts_of_the_moment() {
        // The facts outside the report (the end of the last reimage, the mode, the minimum)
        // may change after the evidence was kept: the signals follow them.
        let mut r = report(7462);
        r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN)];
        r.crashes = vec![
            crash(CrashSource::KernelPower, Some(0xED), "2026-01-15T08:02:14Z"),
            crash(CrashSource::WerBugcheck, Some(0x7B), "2026-01-14T07:00:00Z"),
        ];
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        assert_eq!(
            kinds(&i),
            [SignalKind::BootCrash, SignalKind::FailedRollback]
        );
        // After a reimage that ended between the two crashes: only the newer one counts.
        i.events_after = Some(ts("2026-01-15T08:00:00Z"));
        let got = derive(&i);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].1.contains(
                "0x000000ed UNMOUNTABLE_BOOT_VOLUME at 2026-01-15T08:02:14Z (Kernel-Power 41"
            ),
            "{}",
            got[0].1
        );
        i.events_after = Some(ts("2026-01-15T09:00:00Z"));
        assert!(kinds(&i).is_empty());
        i.minimum_build = Some("26100.7623".parse().unwrap());
        assert_eq!(kinds(&i), [SignalKind::NonCompliant]);
    }

    #[test]
    fn boot_crash_on_0xed_and_0x7b_only() {
        for (source, code) in [
            (CrashSource::WerBugcheck, 0xED),
            (CrashSource::KernelPower, 0xED),
            (CrashSource::KernelPower, 0x7B),
        ] {
            let mut r = report(7623);
            r.crashes = vec![crash(source, Some(code), "2026-01-15T08:02:14Z")];
            let got = derive(&input(&Evidence::of(&r)));
            assert_eq!(got[0].0, SignalKind::BootCrash);
            assert!(got[0].1.contains(&format!("0x{code:08x}")), "{}", got[0].1);
        }
        for (source, code) in [
            (CrashSource::WerBugcheck, Some(0x50)),
            (CrashSource::KernelPower, Some(0x50)),
            (CrashSource::KernelPower, Some(0x1000007e)),
            (CrashSource::KernelPower, Some(0x0)),
            (CrashSource::KernelPower, None),
            (CrashSource::UnexpectedShutdown, None),
        ] {
            let mut r = report(7623);
            r.crashes = vec![crash(source, code, "2026-01-15T08:02:14Z")];
            assert!(
                kinds(&input(&Evidence::of(&r))).is_empty(),
                "{source:?} {code:?}"
            );
        }
    }

    #[test]
    fn heartbeat_lost_needs_more_than_one_late_report() {
        let r = report(7623);
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        // One report late: 2 intervals (10 min) plus jitter, under the 15 min timeout.
        i.now = ts("2026-01-15T09:11:00Z");
        assert!(kinds(&i).is_empty());
        i.now = ts("2026-01-15T09:15:00Z");
        assert!(
            kinds(&i).is_empty(),
            "exactly at the deadline is not past it"
        );
        i.now = ts("2026-01-15T09:15:01Z");
        assert_eq!(kinds(&i), [SignalKind::HeartbeatLost]);
        // With a 15 min agent interval the floor is 3 intervals, not the 15 min timeout.
        let mut slow = report(7623);
        slow.interval_seconds = 900;
        let evidence = Evidence::of(&slow);
        let mut i = input(&evidence);
        i.now = ts("2026-01-15T09:31:00Z");
        assert!(kinds(&i).is_empty(), "one missed 15-minute report");
        i.now = ts("2026-01-15T09:45:01Z");
        assert_eq!(kinds(&i), [SignalKind::HeartbeatLost]);
        // Never reported: nothing to lose.
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        i.evidence = None;
        i.last_report_at = None;
        assert!(kinds(&i).is_empty());
        // A clock behind the last report is not silence.
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        i.now = ts("2026-01-15T08:00:00Z");
        assert!(kinds(&i).is_empty());
    }

    #[test]
    fn non_compliant_below_the_minimum_only() {
        let min: Build = "26100.7623".parse().unwrap();
        for (build, ubr, expect) in [
            (26100, 7462, true),
            (26100, 7623, false),
            (26100, 7705, false),
            (26200, 7623, false),
            (22631, 9999, true),
        ] {
            let mut r = report(ubr);
            r.os.current_build = build;
            let evidence = Evidence::of(&r);
            let mut i = input(&evidence);
            i.minimum_build = Some(min);
            assert_eq!(
                kinds(&i) == [SignalKind::NonCompliant],
                expect,
                "{build}.{ubr}"
            );
        }
    }

    #[test]
    fn drift_only_in_immutable_mode_and_only_on_a_change() {
        let r = report(7705);
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        i.baseline_build = Some("26100.7623".parse().unwrap());
        assert!(
            kinds(&i).is_empty(),
            "managed: patching in place is the design"
        );
        i.update_mode = UpdateMode::Immutable;
        assert_eq!(kinds(&i), [SignalKind::Drift]);
        i.baseline_build = Some("26100.7705".parse().unwrap());
        assert!(kinds(&i).is_empty());
        i.baseline_build = None;
        assert!(kinds(&i).is_empty());
    }

    #[test]
    fn signals_come_most_urgent_first() {
        let mut r = report(7462);
        r.update_events = vec![wu(UpdateOutcome::Failed, "2026-01-14T08:41:02Z", JAN)];
        r.crashes = vec![crash(
            CrashSource::KernelPower,
            Some(0xED),
            "2026-01-15T08:02:14Z",
        )];
        let evidence = Evidence::of(&r);
        let mut i = input(&evidence);
        i.minimum_build = Some("26100.7623".parse().unwrap());
        i.now = ts("2026-01-16T00:00:00Z");
        assert_eq!(
            kinds(&i),
            [
                SignalKind::BootCrash,
                SignalKind::FailedRollback,
                SignalKind::NonCompliant,
                SignalKind::HeartbeatLost
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn title() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(JAN.to_string()),
                Just(FEB.to_string()),
                Just(DEC.to_string()),
                Just("Security Intelligence Update for Microsoft Defender Antivirus - KB2267602 (Version 1.443.512.0)".to_string()),
                Just("2026-01 Cumulative Update for .NET Framework 3.5 and 4.8.1 for Windows 11, version 24H2 for x64 (KB5073379)".to_string()),
                Just("Intel Corporation - Display - 32.0.101.6881".to_string()),
                ".{0,80}",
            ]
        }

        fn event() -> impl Strategy<Value = UpdateEvent> {
            (
                prop_oneof![
                    Just(UpdateOutcome::Installed),
                    Just(UpdateOutcome::Failed),
                    Just(UpdateOutcome::Started)
                ],
                0u32..100,
                title(),
            )
                .prop_map(|(o, hour, t)| {
                    let time = format!("2026-01-{:02}T{:02}:00:00Z", 1 + hour / 24, hour % 24);
                    wu(o, &time, &t)
                })
        }

        proptest! {
            /// Without a failed LCU among the events there is never a FailedRollback, whatever
            /// else failed.
            #[test]
            fn no_failed_lcu_no_failed_rollback(events in proptest::collection::vec(event(), 0..12), ubr in 7000u32..8000) {
                let mut r = report(ubr);
                r.update_events = events;
                let any_failed_lcu = r.update_events.iter().any(|e| {
                    e.outcome == UpdateOutcome::Failed && lcu_from_title(&e.title).is_some_and(|l| l.build.is_some())
                });
                let got = kinds(&input(&Evidence::of(&r)));
                if !any_failed_lcu {
                    prop_assert!(!got.contains(&SignalKind::FailedRollback));
                }
                // Running at or above every LCU mentioned: never FailedRollback.
                if ubr >= 7705 {
                    prop_assert!(!got.contains(&SignalKind::FailedRollback));
                }
            }

            /// Adding a later successful install of the newest LCU clears any FailedRollback.
            #[test]
            fn a_later_newest_install_always_clears(events in proptest::collection::vec(event(), 0..12)) {
                let mut r = report(7462);
                r.update_events = events;
                r.update_events.push(wu(UpdateOutcome::Installed, "2026-03-01T00:00:00Z", FEB));
                prop_assert!(!kinds(&input(&Evidence::of(&r))).contains(&SignalKind::FailedRollback));
            }

            /// Derivation is a function: same input, same output, and never a panic on any
            /// bugcheck code.
            #[test]
            fn deterministic_and_total(code in any::<Option<u32>>(), ubr in any::<u32>(), build in any::<u32>()) {
                let mut r = report(ubr);
                r.os.current_build = build;
                r.crashes = vec![crash(CrashSource::WerBugcheck, code, "2026-01-15T08:02:14Z")];
                let evidence = Evidence::of(&r);
                let i = input(&evidence);
                let a = derive(&i);
                prop_assert_eq!(&a, &derive(&i));
                let boot = a.iter().any(|(k, _)| *k == SignalKind::BootCrash);
                prop_assert_eq!(boot, code.is_some_and(|c| BOOT_STOP_CODES.contains(&c)));
            }
        }
    }
}
