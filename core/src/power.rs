//! Machines without a BMC: how a try's machine is brought to network-boot ([`power_way`]),
//! and when its network boots show that its OS is not coming up ([`boot_loop`]).
//!
//! Both are decisions over the endpoint's status and the clock only; the lifecycle applies
//! them, the controller and the gateway carry them out.

use std::time::Duration;

use jiff::Timestamp;
use recast_crds::endpoint::{Attempt, AttemptTrigger, EndpointStatus, PowerWay, ReimageStep};
use recast_crds::report::{NetworkRestartOrder, NetworkRestartOutcome, NetworkRestartResult};

use crate::signal::SignalKind;
use crate::time;

/// What a try's machine has, as far as bringing it to network-boot goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerFacts {
    /// `spec.bmc` is set.
    pub has_bmc: bool,
    /// Windows runs and its agent reports: a last report, and no signal that says the OS is
    /// down (HeartbeatLost, BootCrash, BootLoop).
    pub agent_running: bool,
    /// The agent already refused to restart into the network for this attempt (no firmware
    /// network entry, not elevated, ...): asking again gets the same answer.
    pub agent_refused: bool,
    /// `spec.wakeOnLan`.
    pub wake_on_lan: bool,
    /// The attempt's first try answers a boot loop: the machine comes back to the network by
    /// itself.
    pub looping: bool,
    /// An earlier try of the attempt ordered the agent's restart without a network boot.
    pub agent_tried: bool,
    /// An earlier try of the attempt sent Wake-on-LAN without a network boot.
    pub wake_tried: bool,
}

impl PowerFacts {
    /// The facts of an endpoint's status for attempt `a`.
    pub fn of(status: &EndpointStatus, has_bmc: bool, wake_on_lan: bool, a: &Attempt) -> Self {
        let attempt_id = a.id.as_str();
        let down = [
            SignalKind::HeartbeatLost,
            SignalKind::BootCrash,
            SignalKind::BootLoop,
        ];
        let agent_running =
            status.last_report.is_some() && !status.signals.iter().any(|s| down.contains(&s.type_));
        let agent_refused = status
            .last_report
            .as_ref()
            .and_then(|r| r.network_restart.as_ref())
            .is_some_and(|o| o.attempt_id == attempt_id && refused(o));
        PowerFacts {
            has_bmc,
            agent_running,
            agent_refused,
            wake_on_lan,
            // Only the first try waits on the loop: a later one follows a try that reached the
            // machine, which may no longer loop.
            looping: a.trigger == AttemptTrigger::BootLoop && a.try_number == 1,
            agent_tried: a.power_ways_tried.contains(&PowerWay::Agent),
            wake_tried: a.power_ways_tried.contains(&PowerWay::WakeOnLan),
        }
    }
}

fn refused(o: &NetworkRestartOutcome) -> bool {
    matches!(o.result, NetworkRestartResult::Refused(_))
}

/// The way to bring the machine to network-boot, in order of preference: a boot loop's own
/// restarts for an attempt that answers one (nothing switches such a machine on: the loop was
/// seen only in boot requests, which anyone can send, and a machine that must be switched on
/// was not looping); the BMC; the running agent (unless it refused for this attempt, or an
/// earlier try's order brought no network boot); Wake-on-LAN for a machine that may be off (a
/// machine whose Windows runs is on, so a magic packet would do nothing; not again after a try
/// it did not wake); else a person.
pub fn power_way(f: PowerFacts) -> PowerWay {
    if f.looping {
        PowerWay::Loop
    } else if f.has_bmc {
        PowerWay::Redfish
    } else if f.agent_running && !f.agent_refused && !f.agent_tried {
        PowerWay::Agent
    } else if f.wake_on_lan && !f.agent_running && !f.wake_tried {
        PowerWay::WakeOnLan
    } else {
        PowerWay::Person
    }
}

/// How long the agent's restart or Wake-on-LAN may take to bring the machine to network-boot
/// before a person is asked as well (the order reaches the agent with its next report, up to
/// its interval plus the gateway's cache; a woken machine POSTs).
pub const PERSON_GRACE: Duration = Duration::from_secs(10 * 60);

/// How long the agent's `shutdown /r /t` waits: long enough for its report to reach recast
/// and for a signed-in user to read why, short enough that imaging starts at once.
pub const RESTART_DELAY_SECONDS: u32 = 30;

/// The restart order the gateway's reply carries while the current try waits for the agent to
/// restart its machine into the network (armed, no BMC, the agent chosen); none otherwise.
/// Given again with every reply until the machine network-boots: the agent acts once per try.
pub fn restart_order(status: &EndpointStatus, macs: &[String]) -> Option<NetworkRestartOrder> {
    let a = status.active_attempt.as_ref()?;
    // After the grace a person is asked as well, and the order stands (the agent may not
    // have reported since); an agent that refused is not asked again.
    let agent = match a.power_way {
        Some(PowerWay::Agent) => true,
        Some(PowerWay::Person) => a.power_ways_tried.contains(&PowerWay::Agent),
        _ => false,
    };
    let refused = status
        .last_report
        .as_ref()
        .and_then(|r| r.network_restart.as_ref())
        .is_some_and(|o| o.attempt_id == a.id && o.try_number == a.try_number && refused(o));
    (a.step == ReimageStep::Booting && agent && !refused && a.retry_after.is_none()).then(|| {
        NetworkRestartOrder {
            attempt_id: a.id.clone(),
            try_number: a.try_number,
            delay_seconds: RESTART_DELAY_SECONDS,
            mac_addresses: macs.to_vec(),
        }
    })
}

/// What makes a boot loop (a RemediationPolicy's `bootLoop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLoopRule {
    /// At least 2.
    pub boots: u32,
    pub within: Duration,
}

/// A network boot less than this after the one before it is part of it (a firmware's DHCP and
/// boot-script retries, its next network entry after iPXE's exit, a second NIC); a machine that
/// POSTs, network-boots, starts its OS and restarts takes longer.
pub const SAME_BOOT: Duration = Duration::from_secs(15);

/// A boot loop: at least `rule.boots` network boots with nothing armed within `rule.within`
/// of now, all after the agent's last report and after the last reimage ended, and, for a
/// machine whose agent has reported before, that agent silent (HeartbeatLost). Returns the
/// reason.
///
/// The negatives, and why: a machine that reports after each start is not looping (boots
/// before its last report do not count); a machine powered off is not looping (no boots); one
/// restart is not a loop (`boots` is at least 2); boots spread over longer than `within` are
/// normal starts without an agent, not a loop; boots long ago are history; retries within
/// [`SAME_BOOT`] are one boot. A machine whose agent still reports is not looping whatever the
/// network shows: boot requests carry nothing but a MAC address, which anyone on the
/// provisioning network can send, so they wipe a machine only when its own agent has gone
/// quiet too (as the BMC's crash record does).
pub fn boot_loop(
    boots: &[Timestamp],
    last_report_at: Option<Timestamp>,
    last_reimage_end: Option<Timestamp>,
    agent_silent: bool,
    now: Timestamp,
    rule: BootLoopRule,
) -> Option<String> {
    if last_report_at.is_some() && !agent_silent {
        return None;
    }
    let after = last_report_at.max(last_reimage_end);
    let mut recent: Vec<Timestamp> = boots
        .iter()
        .copied()
        .filter(|t| after.is_none_or(|a| *t > a))
        .filter(|t| *t <= now && time::since(now, *t) <= rule.within)
        .collect();
    recent.sort();
    // Each against the boot just before it (kept or not): a chain of retries is one boot.
    let recent: Vec<Timestamp> = recent
        .iter()
        .enumerate()
        .filter(|(i, t)| *i == 0 || time::since(**t, recent[i - 1]) >= SAME_BOOT)
        .map(|(_, t)| *t)
        .collect();
    let needed = rule.boots.max(2) as usize;
    if recent.len() < needed {
        return None;
    }
    let first = recent[recent.len() - needed];
    let last = recent[recent.len() - 1];
    let silence = match last_report_at {
        Some(t) => format!("with no agent report since {}", time::format(t)),
        None => "and no agent has ever reported".to_string(),
    };
    Some(format!(
        "network-booted {} times between {} and {} {silence}: the OS is not coming up (a boot loop)",
        recent.len(),
        time::format(first),
        time::format(last),
    ))
}

/// The times in `status.networkBoots`, unreadable entries skipped.
pub fn network_boots(status: &EndpointStatus) -> Vec<Timestamp> {
    status
        .network_boots
        .iter()
        .filter_map(|t| time::parse(t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::endpoint::{ReportSummary, SignalStatus};
    use recast_crds::report::NetworkRestartRefusal;

    fn t(min: i64) -> Timestamp {
        time::parse("2026-01-15T09:00:00Z").unwrap() + jiff::SignedDuration::from_mins(min)
    }

    const RULE: BootLoopRule = BootLoopRule {
        boots: 3,
        within: Duration::from_secs(30 * 60),
    };

    #[test]
    fn three_boots_in_the_window_with_no_report_are_a_loop() {
        let why = boot_loop(&[t(1), t(3), t(5)], Some(t(0)), None, true, t(6), RULE).unwrap();
        assert!(why.contains("3 times"), "{why}");
        assert!(why.contains("2026-01-15T09:00:00Z"), "{why}");
    }

    #[test]
    fn a_machine_that_never_reported_can_loop() {
        let why = boot_loop(&[t(1), t(2), t(3)], None, None, true, t(3), RULE).unwrap();
        assert!(why.contains("no agent has ever reported"), "{why}");
    }

    #[test]
    fn a_machine_that_reports_after_each_start_is_not_looping() {
        // Boots at 1, 61, 121 with reports after each; the last report was at 122.
        assert_eq!(
            boot_loop(
                &[t(1), t(61), t(121)],
                Some(t(122)),
                None,
                true,
                t(125),
                RULE
            ),
            None
        );
        // Boots before the last report never count, however many.
        let many: Vec<_> = (0..10).map(t).collect();
        assert_eq!(boot_loop(&many, Some(t(10)), None, true, t(11), RULE), None);
    }

    #[test]
    fn a_machine_powered_off_is_not_looping() {
        assert_eq!(boot_loop(&[], Some(t(0)), None, true, t(600), RULE), None);
        assert_eq!(boot_loop(&[], None, None, true, t(600), RULE), None);
    }

    #[test]
    fn a_single_reboot_is_not_a_loop() {
        assert_eq!(boot_loop(&[t(1)], Some(t(0)), None, true, t(2), RULE), None);
        // Nor two with a rule of three.
        assert_eq!(
            boot_loop(&[t(1), t(2)], Some(t(0)), None, true, t(3), RULE),
            None
        );
        // A rule that says one boot would be a loop is read as two.
        let one = BootLoopRule { boots: 1, ..RULE };
        assert_eq!(boot_loop(&[t(1)], Some(t(0)), None, true, t(2), one), None);
        assert!(boot_loop(&[t(1), t(2)], Some(t(0)), None, true, t(3), one).is_some());
    }

    #[test]
    fn boots_spread_wider_than_the_window_are_not_a_loop() {
        // A kiosk without an agent, started each morning: three boots over three days.
        assert_eq!(
            boot_loop(&[t(0), t(1440), t(2880)], None, None, true, t(2881), RULE),
            None
        );
        // Two recent boots and one old one.
        assert_eq!(
            boot_loop(&[t(0), t(100), t(101)], None, None, true, t(102), RULE),
            None
        );
    }

    #[test]
    fn boots_long_ago_are_history() {
        assert_eq!(
            boot_loop(&[t(1), t(2), t(3)], Some(t(0)), None, true, t(600), RULE),
            None
        );
    }

    #[test]
    fn boots_before_the_last_reimage_do_not_count() {
        // The new image's first starts (specialize, OOBE) are before its first report, but
        // boots before the reimage ended belong to the old machine.
        assert_eq!(
            boot_loop(&[t(1), t(2), t(3)], None, Some(t(3)), true, t(4), RULE),
            None
        );
        assert!(boot_loop(&[t(4), t(5), t(6)], None, Some(t(3)), true, t(7), RULE).is_some());
    }

    #[test]
    fn boots_of_a_machine_whose_agent_still_reports_are_not_a_loop() {
        // Anyone on the provisioning network can send a known MAC's boot requests: without the
        // agent's silence they wipe nothing.
        let boots = [t(1), t(2), t(3)];
        assert_eq!(boot_loop(&boots, Some(t(0)), None, false, t(4), RULE), None);
        assert!(boot_loop(&boots, Some(t(0)), None, true, t(4), RULE).is_some());
        // A machine no agent ever reported from has only its boots.
        assert!(boot_loop(&boots, None, None, false, t(4), RULE).is_some());
    }

    #[test]
    fn retries_within_a_boot_count_once() {
        let s = |secs: i64| t(10) + jiff::SignedDuration::from_secs(secs);
        // One start whose retries and network entries follow each other for a minute, each
        // less than SAME_BOOT after the one before: one boot.
        let chain = [s(0), s(10), s(20), s(30), s(40), s(50), s(60)];
        assert_eq!(boot_loop(&chain, None, None, true, s(70), RULE), None);
        // Three turns of a loop 20 s apart, each with a retry: three boots.
        let three = [s(0), s(4), s(20), s(24), s(40), s(44)];
        assert!(boot_loop(&three, None, None, true, s(50), RULE).is_some());
    }

    #[test]
    fn repeated_and_future_times_do_not_count_twice() {
        assert_eq!(
            boot_loop(&[t(1), t(1), t(1)], None, None, true, t(2), RULE),
            None
        );
        assert_eq!(
            boot_loop(&[t(1), t(2), t(30)], None, None, true, t(3), RULE),
            None
        );
    }

    fn att(id: &str) -> Attempt {
        att_with(id, AttemptTrigger::FailedRollback, &[])
    }

    fn att_with(id: &str, trigger: AttemptTrigger, tried: &[PowerWay]) -> Attempt {
        Attempt {
            id: id.into(),
            trigger,
            reason: String::new(),
            image: "img".into(),
            image_digest: None,
            wave: None,
            step: ReimageStep::ArmingBoot,
            try_number: 1,
            started_at: String::new(),
            try_started_at: String::new(),
            step_started_at: String::new(),
            expected_build: None,
            progress_percent: None,
            last_error: None,
            retry_after: None,
            secure_boot: None,
            power_way: None,
            power_ways_tried: tried.to_vec(),
            boot_client: None,
        }
    }

    #[test]
    fn a_boot_loop_is_left_to_bring_the_machine_back_by_itself() {
        // Whatever the machine has: nothing switches on a machine seen looping only in boot
        // requests.
        for (bmc, report, wol) in [
            (true, true, true),
            (false, true, true),
            (false, false, true),
        ] {
            let a = att_with("a-1", AttemptTrigger::BootLoop, &[]);
            let f = PowerFacts::of(&status(report, &[]), bmc, wol, &a);
            assert_eq!(power_way(f), PowerWay::Loop);
        }
    }

    #[test]
    fn a_way_that_brought_no_network_boot_is_not_counted_on_again() {
        let a = att_with("a-1", AttemptTrigger::FailedRollback, &[PowerWay::Agent]);
        // The agent still reports, so the machine is on: a person.
        assert_eq!(
            power_way(PowerFacts::of(&status(true, &[]), false, true, &a)),
            PowerWay::Person
        );
        // Silent by now: Wake-on-LAN, once.
        let silent = status(true, &[SignalKind::HeartbeatLost]);
        assert_eq!(
            power_way(PowerFacts::of(&silent, false, true, &a)),
            PowerWay::WakeOnLan
        );
        let a = att_with(
            "a-1",
            AttemptTrigger::FailedRollback,
            &[PowerWay::Agent, PowerWay::WakeOnLan],
        );
        assert_eq!(
            power_way(PowerFacts::of(&silent, false, true, &a)),
            PowerWay::Person
        );
        // The BMC is asked every try.
        assert_eq!(
            power_way(PowerFacts::of(&silent, true, true, &a)),
            PowerWay::Redfish
        );
    }

    fn status(report: bool, signals: &[SignalKind]) -> EndpointStatus {
        EndpointStatus {
            last_report: report.then(ReportSummary::default),
            signals: signals
                .iter()
                .map(|k| SignalStatus {
                    type_: *k,
                    since: "2026-01-15T09:00:00Z".into(),
                    message: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_order_stands_while_the_agent_is_to_restart_the_machine() {
        let attempt = |step, way, retry: bool| Attempt {
            step,
            try_number: 2,
            retry_after: retry.then(|| "2026-01-15T10:00:00Z".into()),
            power_way: way,
            ..att("kiosk-01-ab-1")
        };
        let with = |a: Option<Attempt>| EndpointStatus {
            active_attempt: a,
            ..Default::default()
        };
        let order = restart_order(
            &with(Some(attempt(
                ReimageStep::Booting,
                Some(PowerWay::Agent),
                false,
            ))),
            &["52:54:00:a1:00:01".to_string()],
        )
        .unwrap();
        assert_eq!(
            (order.attempt_id.as_str(), order.try_number),
            ("kiosk-01-ab-1", 2)
        );
        assert_eq!(order.delay_seconds, RESTART_DELAY_SECONDS);
        assert_eq!(order.mac_addresses, ["52:54:00:a1:00:01"]);
        for (step, way, retry) in [
            (ReimageStep::Booting, Some(PowerWay::Person), false),
            (ReimageStep::Booting, Some(PowerWay::WakeOnLan), false),
            (ReimageStep::Booting, None, false),
            (ReimageStep::Booting, Some(PowerWay::Agent), true),
            (ReimageStep::ArmingBoot, Some(PowerWay::Agent), false),
            (ReimageStep::Applying, Some(PowerWay::Agent), false),
            (ReimageStep::FirstBoot, Some(PowerWay::Agent), false),
        ] {
            assert_eq!(
                restart_order(&with(Some(attempt(step, way, retry))), &[]),
                None,
                "{step:?} {way:?} {retry}"
            );
        }
        assert_eq!(restart_order(&with(None), &[]), None);
    }

    #[test]
    fn the_bmc_comes_first() {
        for report in [false, true] {
            let f = PowerFacts::of(&status(report, &[]), true, true, &att("a-1"));
            assert_eq!(power_way(f), PowerWay::Redfish);
        }
    }

    #[test]
    fn a_running_agent_restarts_its_machine() {
        let f = PowerFacts::of(
            &status(true, &[SignalKind::FailedRollback]),
            false,
            true,
            &att("a-1"),
        );
        assert!(f.agent_running);
        assert_eq!(power_way(f), PowerWay::Agent);
        // Also without Wake-on-LAN.
        let f = PowerFacts::of(&status(true, &[]), false, false, &att("a-1"));
        assert_eq!(power_way(f), PowerWay::Agent);
    }

    #[test]
    fn a_silent_or_crashed_machine_is_woken_or_left_to_a_person() {
        for down in [
            SignalKind::HeartbeatLost,
            SignalKind::BootCrash,
            SignalKind::BootLoop,
        ] {
            let f = PowerFacts::of(&status(true, &[down]), false, true, &att("a-1"));
            assert!(!f.agent_running, "{down}");
            assert_eq!(power_way(f), PowerWay::WakeOnLan, "{down}");
            let f = PowerFacts::of(&status(true, &[down]), false, false, &att("a-1"));
            assert_eq!(power_way(f), PowerWay::Person, "{down}");
        }
        // No agent ever.
        let f = PowerFacts::of(&status(false, &[]), false, true, &att("a-1"));
        assert_eq!(power_way(f), PowerWay::WakeOnLan);
    }

    fn with_outcome(attempt: &str, result: NetworkRestartResult) -> EndpointStatus {
        let mut st = status(true, &[]);
        st.last_report.as_mut().unwrap().network_restart = Some(NetworkRestartOutcome {
            attempt_id: attempt.into(),
            try_number: 1,
            result,
            detail: String::new(),
            at: "2026-01-15T09:00:00Z".into(),
        });
        st
    }

    #[test]
    fn an_agent_that_refused_is_not_asked_again_and_a_running_machine_is_not_woken() {
        let st = with_outcome(
            "a-1",
            NetworkRestartResult::Refused(NetworkRestartRefusal::NoNetworkEntry),
        );
        let f = PowerFacts::of(&st, false, true, &att("a-1"));
        assert!(f.agent_refused);
        // The machine is on: Wake-on-LAN would do nothing.
        assert_eq!(power_way(f), PowerWay::Person);
        // A refusal for another attempt does not count.
        let f = PowerFacts::of(&st, false, true, &att("a-2"));
        assert_eq!(power_way(f), PowerWay::Agent);
        // Nor does a restart it scheduled.
        let st = with_outcome("a-1", NetworkRestartResult::Scheduled);
        assert_eq!(
            power_way(PowerFacts::of(&st, false, true, &att("a-1"))),
            PowerWay::Agent
        );
    }
}
