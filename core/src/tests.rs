//! Scenario tests and property tests for the lifecycle core.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;
use recast_crds::common::SecretRef;
use recast_crds::endpoint::{
    AttemptOutcome, AttemptTrigger, BmcSpec, BootMode, EndpointIdentity, EndpointPhase,
    EndpointSpec, EndpointStatus, ImageRef, PowerWay, ReimageRequest, ReportSummary,
};
use recast_crds::policy::RemediationAction;
use recast_crds::report::{NetworkRestartOutcome, NetworkRestartRefusal, NetworkRestartResult};

use super::build::Build;
use super::fleet::FleetIndex;
use super::lifecycle::*;
use super::policy::PolicyView;
use super::signal::SignalKind;
use super::time;
use super::transitions::{self, State};

const T0: &str = "2026-01-14T08:00:00Z";

fn spec(bmc: bool) -> EndpointSpec {
    EndpointSpec {
        hostname: None,
        wake_on_lan: true,
        boot_chain: Default::default(),
        identity: EndpointIdentity {
            mac_addresses: vec!["52:54:00:a1:00:01".into()],
            smbios_uuid: None,
            serial_number: None,
        },
        boot_mode: BootMode::Uefi,
        bmc: bmc.then(|| BmcSpec {
            driver: Default::default(),
            address: "https://10.40.0.101".into(),
            credentials_secret_ref: SecretRef { name: "bmc".into() },
            insecure_skip_tls_verify: false,
            ca_bundle_secret_ref: None,
            system_id: None,
        }),
        image: ImageRef {
            golden_image: None,
            channel: Some("stable".into()),
        },
        target_disk: None,
        site: Some("store-042".into()),
        protected: false,
        paused: false,
        reimage_request: None,
        policy_ref: None,
        update_mode: None,
        manual_update_hold: None,
        boot_server: Default::default(),
    }
}

fn image(verified: bool) -> ImageView {
    ImageView {
        name: "win11-24h2-2026-01".into(),
        digest: Some("3f1c".into()),
        verified,
        minimum_build: Some("26100.7623".parse().unwrap()),
    }
}

/// `input` (an agent report) with Windows Setup's ImageState.
fn with_setup_state(input: Input, state: &str) -> Input {
    match input {
        Input::AgentReport(mut r) => {
            r.setup_state = Some(state.into());
            Input::AgentReport(r)
        }
        other => other,
    }
}

fn report(build: &str, attempt: Option<&str>) -> Input {
    Input::AgentReport(ReportSummary {
        setup_state: None,
        boot_time: None,
        network_restart: None,
        build: build.into(),
        reported_at: String::new(),
        agent_version: None,
        attempt_id: attempt.map(str::to_string),
        update_results: vec![],
        crashes: vec![],
        update_hold: None,
    })
}

fn signals(kinds: &[SignalKind]) -> Input {
    Input::Signals(kinds.iter().map(|k| (*k, format!("{k} seen"))).collect())
}

/// One endpoint driven through the core, with the invariants checked on every step.
struct One {
    spec: EndpointSpec,
    status: EndpointStatus,
    now: Timestamp,
    policy: PolicyView,
    image: Option<ImageView>,
    fleet: FleetView,
    wave: Option<WaveView>,
    policy_problem: Option<String>,
    last: Option<Decision>,
}

impl One {
    fn new(bmc: bool) -> Self {
        One {
            spec: spec(bmc),
            status: EndpointStatus::default(),
            now: T0.parse().unwrap(),
            policy: PolicyView::built_in(),
            image: Some(image(true)),
            fleet: FleetView {
                namespace_total: 10,
                site_total: 5,
                ..Default::default()
            },
            wave: None,
            policy_problem: None,
            last: None,
        }
    }

    fn feed(&mut self, input: Input) -> Decision {
        let view = EndpointView {
            namespace: "default",
            name: "kiosk-01",
            uid: "0b5e2c1a-aaaa-bbbb-cccc-000000000001",
            generation: Some(1),
            spec: &self.spec,
            status: &self.status,
        };
        let ctx = Context {
            now: self.now,
            policy: &self.policy,
            policy_problem: self.policy_problem.as_deref(),
            image: self.image.as_ref(),
            fleet: self.fleet,
            wave: self.wave.as_ref(),
        };
        let d = decide(view, &input, ctx);
        assert_eq!(d, decide(view, &input, ctx), "decide must be deterministic");
        check_edge(&self.status, &d);
        self.status = d.status.clone();
        self.last = Some(d.clone());
        d
    }

    fn advance(&mut self, secs: u64) {
        self.now = time::add(self.now, Duration::from_secs(secs));
    }

    fn attempt_id(&self) -> String {
        self.status
            .active_attempt
            .as_ref()
            .expect("an attempt")
            .id
            .clone()
    }

    fn try_number(&self) -> u32 {
        self.status
            .active_attempt
            .as_ref()
            .expect("an attempt")
            .try_number
    }

    fn succeed(&mut self, action: ActionKind) -> Decision {
        let input = Input::ActionSucceeded {
            attempt_id: self.attempt_id(),
            try_number: self.try_number(),
            action,
        };
        self.feed(input)
    }

    /// The executor confirms the disarm the core asked for.
    fn disarmed(&mut self) -> Decision {
        let id = self
            .status
            .history
            .first()
            .map(|h| h.id.clone())
            .unwrap_or_default();
        self.feed(Input::ActionSucceeded {
            attempt_id: id,
            try_number: 0,
            action: ActionKind::DisarmBoot,
        })
    }

    fn state(&self) -> State {
        state_of(&self.status)
    }
}

/// Every change of state must be a row of the transition table.
fn check_edge(before: &EndpointStatus, d: &Decision) {
    let (from, to) = (state_of(before), state_of(&d.status));
    match d.edge {
        None => assert_eq!(
            from, to,
            "state changed {from:?} -> {to:?} without naming an edge"
        ),
        Some(edge) => {
            let t = transitions::transition(edge);
            assert!(
                t.from.contains(&from) && t.to.contains(&to),
                "{edge:?} took {from:?} -> {to:?}, which the table does not allow"
            );
        }
    }
}

fn kinds(d: &Decision) -> Vec<ActionKind> {
    d.actions.iter().map(Action::kind).collect()
}

fn healthy(bmc: bool) -> One {
    let mut e = One::new(bmc);
    e.feed(report("26100.7462", None));
    assert_eq!(e.state(), State::Ready);
    e
}

/// Takes a started attempt through arming, power cycle, network boot and imaging to its first
/// boot; returns its id.
fn image_to_first_boot(e: &mut One) -> String {
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        try_number: None,
        attempt_id: id.clone(),
        client: None,
    });
    e.feed(Input::ImagingFinished {
        try_number: None,
        attempt_id: id.clone(),
        result: Ok(()),
        refusal: None,
    });
    id
}

/// Runs one attempt to the end along the happy path.
fn run_happy_attempt(e: &mut One) {
    assert_eq!(e.state(), State::ArmingBoot);
    let id = image_to_first_boot(e);
    e.feed(report("26100.7623", Some(&id)));
    e.disarmed();
}

#[test]
fn an_imaging_refusal_stops_the_attempt_for_a_person_at_once() {
    use crate::imaging::ImagingRefusal;
    for refusal in [ImagingRefusal::WrongMachine, ImagingRefusal::NoTargetDisk] {
        let mut e = healthy(true);
        e.feed(signals(&[SignalKind::FailedRollback]));
        e.succeed(ActionKind::ArmBoot);
        e.succeed(ActionKind::PowerCycle);
        let id = e.attempt_id();
        e.feed(Input::NetworkBooted {
            try_number: Some(1),
            attempt_id: id.clone(),
            client: Some("10.0.40.17".into()),
        });
        // Try 1 of a policy that allows more: a refusal is not retried all the same.
        assert!(e.policy.max_tries > 1);
        let d = e.feed(Input::ImagingFinished {
            try_number: Some(1),
            attempt_id: id.clone(),
            result: Err("identity: the machine is another one".into()),
            refusal: Some(refusal),
        });
        assert_eq!(d.edge, Some(transitions::Edge::Quarantined), "{refusal:?}");
        assert_eq!(kinds(&d), [ActionKind::DisarmBoot]);
        let notice = d
            .notices
            .iter()
            .find(|n| n.reason == refusal.reason())
            .unwrap_or_else(|| panic!("a {} event: {:?}", refusal.reason(), d.notices));
        assert_eq!(notice.type_, NoticeType::Warning);
        assert!(
            notice.message.contains("wrote nothing"),
            "{}",
            notice.message
        );
        assert_eq!(e.status.phase, Some(EndpointPhase::Quarantined));
        assert!(e.status.active_attempt.is_none());
        assert!(
            e.status.history[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("not retryable")),
            "{:?}",
            e.status.history[0]
        );
    }
}

#[test]
fn failed_rollback_reimages_along_the_whole_path() {
    let mut e = healthy(true);
    let d = e.feed(signals(&[SignalKind::FailedRollback]));
    assert_eq!(kinds(&d), [ActionKind::ArmBoot]);
    assert_eq!(d.edge, Some(transitions::Edge::AttemptStarted));
    let a = e.status.active_attempt.clone().unwrap();
    assert_eq!(a.id, "kiosk-01-0b5e2c1a-1");
    assert_eq!(a.trigger, AttemptTrigger::FailedRollback);
    assert_eq!(a.expected_build.as_deref(), Some("26100.7623"));
    assert_eq!(e.status.phase, Some(EndpointPhase::Reimaging));

    let d = e.succeed(ActionKind::ArmBoot);
    assert_eq!(kinds(&d), [ActionKind::PowerCycle]);
    assert_eq!(e.state(), State::PowerCycling);
    let d = e.succeed(ActionKind::PowerCycle);
    assert!(d.actions.is_empty());
    assert_eq!(e.state(), State::Booting);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        try_number: None,
        attempt_id: id.clone(),
        client: None,
    });
    assert_eq!(e.state(), State::Applying);
    e.feed(Input::ImagingProgress {
        try_number: None,
        attempt_id: id.clone(),
        percent: 1,
        secure_boot: Some(true),
        firmware: Some(crate::imaging::FirmwareReport {
            db_certificates: vec!["Microsoft Windows Production PCA 2011".into()],
            db_hashes: 0,
            dbx_entries: 431,
        }),
    });
    assert_eq!(
        e.status.active_attempt.as_ref().unwrap().secure_boot,
        Some(true)
    );
    // What the firmware trusts stays on the Endpoint, past this attempt, with who read it.
    let f = e.status.firmware.clone().expect("the firmware's databases");
    assert_eq!(
        (
            f.secure_boot,
            f.db_certificates,
            f.dbx_entries,
            &f.read_by_attempt
        ),
        (
            Some(true),
            vec!["Microsoft Windows Production PCA 2011".to_string()],
            431,
            &id
        )
    );
    // Later reports that do not say keep what the first one said.
    e.feed(Input::ImagingProgress {
        try_number: None,
        attempt_id: id.clone(),
        percent: 40,
        secure_boot: None,
        firmware: None,
    });
    let a = e.status.active_attempt.as_ref().unwrap();
    assert_eq!(a.progress_percent, Some(40));
    assert_eq!(a.secure_boot, Some(true));
    let d = e.feed(Input::ImagingFinished {
        try_number: None,
        attempt_id: id.clone(),
        result: Ok(()),
        refusal: None,
    });
    assert_eq!(kinds(&d), [ActionKind::DisarmBoot]);
    assert_eq!(e.state(), State::FirstBoot);

    // A report without the attempt id (the stub, or a stale report) does not end the attempt.
    e.feed(report("26100.7623", None));
    assert_eq!(e.state(), State::FirstBoot);

    // The new Windows reports while Setup still waits at OOBE (its service runs then): the
    // attempt waits, saying why, and ends on the first report after OOBE has finished.
    for state in [
        "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE",
        "IMAGE_STATE_UNDEPLOYABLE",
    ] {
        let d = e.feed(with_setup_state(report("26100.7623", Some(&id)), state));
        assert_eq!(d.edge, None, "{state}");
        assert_eq!(e.state(), State::FirstBoot, "{state}");
        assert!(
            d.notices
                .iter()
                .any(|n| n.reason == "WaitingForSetup" && n.message.contains(state)),
            "{:?}",
            d.notices
        );
    }
    let d = e.feed(with_setup_state(
        report("26100.7623", Some(&id)),
        "IMAGE_STATE_COMPLETE",
    ));
    assert_eq!(d.edge, Some(transitions::Edge::CheckedIn));
    assert_eq!(e.state(), State::Ready);
    assert!(
        e.status.signals.is_empty(),
        "the old machine's signals are gone"
    );
    assert_eq!(e.status.history.len(), 1);
    assert_eq!(
        e.status.history[0].secure_boot,
        Some(true),
        "the record keeps how the machine booted"
    );
    assert_eq!(e.status.history[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!(e.status.current_image_digest.as_deref(), Some("3f1c"));
    let compliant = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .unwrap();
    assert_eq!(compliant.status, recast_crds::ConditionStatus::True);

    // The channel moves to a newer verified image with the same minimum build: the endpoint
    // becomes NonCompliant for a wave to handle, and nothing reimages it now.
    e.image = Some(ImageView {
        name: "win11-24h2-2026-02".into(),
        digest: Some("9e4d".into()),
        ..image(true)
    });
    let d = e.feed(report("26100.7623", None));
    assert!(
        !kinds(&d)
            .iter()
            .any(|k| matches!(k, ActionKind::ArmBoot | ActionKind::PowerCycle)),
        "no instant reimage: {:?}",
        d.actions
    );
    assert!(e.status.active_attempt.is_none());
    assert_eq!(e.state(), State::Ready);
    let compliant = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .unwrap();
    assert_eq!(
        (compliant.status, compliant.reason.as_str()),
        (recast_crds::ConditionStatus::False, "NewerImage")
    );
    assert!(compliant.message.contains("win11-24h2-2026-02"));
    // An unverified newer image does not count: it is never served.
    e.image = Some(ImageView {
        name: "win11-24h2-2026-02".into(),
        digest: Some("9e4d".into()),
        ..image(false)
    });
    e.feed(report("26100.7623", None));
    let compliant = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .unwrap();
    assert_eq!(compliant.reason, "AtOrAboveMinimum");
}

#[test]
fn without_a_bmc_the_machine_must_be_restarted_by_hand() {
    let mut e = healthy(false);
    e.spec.wake_on_lan = false;
    e.feed(signals(&[SignalKind::BootCrash]));
    let d = e.succeed(ActionKind::ArmBoot);
    assert!(d.actions.is_empty());
    assert!(d.notices.iter().any(|n| n.reason == "PowerCycleNeeded"));
    assert_eq!(e.state(), State::Booting);
    assert_eq!(power_way(&e), Some(PowerWay::Person));
}

/// The boot service saw the machine network-boot with nothing armed, now.
fn booted(e: &One) -> Input {
    Input::NetworkBootObserved {
        at: time::format(e.now),
    }
}

fn power_way(e: &One) -> Option<PowerWay> {
    e.status.active_attempt.as_ref().and_then(|a| a.power_way)
}

fn restart_outcome(e: &One, result: NetworkRestartResult) -> Input {
    let mut r = match report("26100.7462", None) {
        Input::AgentReport(r) => r,
        _ => unreachable!(),
    };
    r.network_restart = Some(NetworkRestartOutcome {
        attempt_id: e.attempt_id(),
        try_number: e.try_number(),
        result,
        detail: "UEFI PXEv4 (MAC:525400A10001) {8b6f1c4e-0000-0000-0000-000000000001}".into(),
        at: T0.into(),
    });
    Input::AgentReport(r)
}

#[test]
fn without_a_bmc_a_running_agent_restarts_its_machine_into_the_network_once() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let d = e.succeed(ActionKind::ArmBoot);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.notices.iter().any(|n| n.reason == "AgentRestartOrdered"));
    assert!(!d.notices.iter().any(|n| n.reason == "PowerCycleNeeded"));
    assert_eq!(e.state(), State::Booting);
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
    // A report from before the order changes nothing.
    let d = e.feed(report("26100.7462", None));
    assert!(d.notices.is_empty(), "{:?}", d.notices);
    // The agent says it scheduled the restart: recorded once, however often it says so.
    let d = e.feed(restart_outcome(&e, NetworkRestartResult::Scheduled));
    assert!(
        d.notices
            .iter()
            .any(|n| n.reason == "AgentRestartScheduled")
    );
    let d = e.feed(restart_outcome(&e, NetworkRestartResult::Scheduled));
    assert!(d.notices.is_empty(), "{:?}", d.notices);
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
    // The machine comes up in the imaging environment.
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id,
        try_number: Some(1),
        client: None,
    });
    assert_eq!(e.state(), State::Applying);
}

#[test]
fn an_agent_that_cannot_restart_into_the_network_falls_back_to_a_person() {
    for why in [
        NetworkRestartRefusal::NotUefi,
        NetworkRestartRefusal::NoNetworkEntry,
        NetworkRestartRefusal::NotElevated,
        NetworkRestartRefusal::BcdeditFailed,
        NetworkRestartRefusal::ShutdownFailed,
    ] {
        let mut e = healthy(false);
        e.feed(signals(&[SignalKind::FailedRollback]));
        e.succeed(ActionKind::ArmBoot);
        let d = e.feed(restart_outcome(&e, NetworkRestartResult::Refused(why)));
        let reasons: Vec<&str> = d.notices.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["AgentRestartRefused", "PowerCycleNeeded"],
            "{why:?}"
        );
        // The machine runs, so Wake-on-LAN would do nothing: a person.
        assert_eq!(power_way(&e), Some(PowerWay::Person), "{why:?}");
        assert!(d.actions.is_empty());
        assert_eq!(e.state(), State::Booting);
        // Said again: nothing more.
        let d = e.feed(restart_outcome(&e, NetworkRestartResult::Refused(why)));
        assert!(d.notices.is_empty(), "{why:?}: {:?}", d.notices);
    }
}

#[test]
fn an_outcome_for_another_try_or_attempt_changes_nothing() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    let mut input = restart_outcome(
        &e,
        NetworkRestartResult::Refused(NetworkRestartRefusal::NoNetworkEntry),
    );
    if let Input::AgentReport(r) = &mut input {
        r.network_restart.as_mut().unwrap().try_number = 7;
    }
    let d = e.feed(input.clone());
    assert!(d.notices.is_empty());
    if let Input::AgentReport(r) = &mut input {
        let o = r.network_restart.as_mut().unwrap();
        o.try_number = 1;
        o.attempt_id = "someone-else-1".into();
    }
    let d = e.feed(input);
    assert!(d.notices.is_empty());
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
}

#[test]
fn a_silent_machine_without_a_bmc_is_woken_and_a_failed_wake_asks_a_person() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::HeartbeatLost, SignalKind::BootCrash]));
    let d = e.succeed(ActionKind::ArmBoot);
    assert_eq!(kinds(&d), [ActionKind::WakeOnLan]);
    match &d.actions[0] {
        Action::WakeOnLan { mac_addresses, .. } => {
            assert_eq!(mac_addresses, &["52:54:00:a1:00:01".to_string()])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.state(), State::PowerCycling);
    assert_eq!(power_way(&e), Some(PowerWay::WakeOnLan));
    // After a restart of the operator the same action is asked for again, same key.
    let again = e.feed(Input::Reconcile);
    assert_eq!(again.actions, d.actions);
    // Sent: waits for the network boot as after a BMC's power cycle.
    e.succeed(ActionKind::WakeOnLan);
    assert_eq!(e.state(), State::Booting);

    // Sending fails (no provisioning interface): not a failed try; a person is asked.
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::HeartbeatLost]));
    e.spec.reimage_request = Some(recast_crds::endpoint::ReimageRequest {
        token: "t".into(),
        reason: "x".into(),
    });
    e.feed(Input::Reconcile);
    e.succeed(ActionKind::ArmBoot);
    let d = e.feed(Input::ActionFailed {
        attempt_id: e.attempt_id(),
        try_number: 1,
        action: ActionKind::WakeOnLan,
        error: ActionError {
            permanent: false,
            message: "no such interface".into(),
        },
    });
    assert_eq!(e.state(), State::Booting);
    assert_eq!(power_way(&e), Some(PowerWay::Person));
    let n = d
        .notices
        .iter()
        .find(|n| n.reason == "PowerCycleNeeded")
        .expect("a person is asked");
    assert!(n.message.contains("no such interface"), "{}", n.message);
    assert!(e.status.history.is_empty());
}

#[test]
fn the_way_is_chosen_again_for_each_try() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
    // The try times out; meanwhile the agent went silent.
    e.feed(signals(&[
        SignalKind::FailedRollback,
        SignalKind::HeartbeatLost,
    ]));
    e.advance(e.policy.try_timeout.as_secs() + 1);
    e.feed(Input::Reconcile);
    e.advance(3600);
    e.feed(Input::Reconcile);
    assert_eq!(e.try_number(), 2);
    assert_eq!(power_way(&e), None);
    let d = e.succeed(ActionKind::ArmBoot);
    assert_eq!(kinds(&d), [ActionKind::WakeOnLan]);
}

// ---- boot loops (no BMC, no agent) ----------------------------------------------------------

#[test]
fn a_machine_that_network_boots_again_and_again_is_found_looping_and_reimaged() {
    // No agent ever reported, no BMC.
    let mut e = One::new(false);
    for _ in 0..2 {
        let d = e.feed(booted(&e));
        assert!(d.actions.is_empty());
        e.advance(90);
    }
    assert!(e.status.signals.is_empty());
    assert_eq!(e.status.network_boots.len(), 2);
    let d = e.feed(booted(&e));
    let types: Vec<&str> = e.status.signals.iter().map(|s| s.type_.as_str()).collect();
    assert_eq!(types, ["BootLoop"]);
    assert!(d.notices.iter().any(|n| n.reason == "BootLoop"));
    assert_eq!(kinds(&d), [ActionKind::ArmBoot]);
    let a = e.status.active_attempt.as_ref().unwrap();
    assert_eq!(a.trigger, AttemptTrigger::BootLoop);
    // Nothing switches it on: its own loop brings it to the armed boot.
    let d = e.succeed(ActionKind::ArmBoot);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.notices.iter().any(|n| n.reason == "WaitingForLoop"));
    assert_eq!(power_way(&e), Some(PowerWay::Loop));
    assert_eq!(e.state(), State::Booting);
    // The attempt's own network boots are not counted.
    let before = e.status.network_boots.clone();
    e.feed(booted(&e));
    assert_eq!(e.status.network_boots, before);
    // On its next turn it takes the armed boot.
    e.advance(60);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id,
        try_number: Some(1),
        client: None,
    });
    assert_eq!(e.state(), State::Applying);
}

/// A machine found looping with its BootLoop attempt armed, no BMC.
fn looping(bmc: bool, agent: bool) -> One {
    let mut e = One::new(bmc);
    if agent {
        e.feed(report("26100.7462", None));
        e.advance(60);
        e.feed(signals(&[SignalKind::HeartbeatLost]));
    }
    for _ in 0..3 {
        e.advance(60);
        e.feed(booted(&e));
    }
    assert_eq!(
        e.status.active_attempt.as_ref().map(|a| a.trigger),
        Some(AttemptTrigger::BootLoop)
    );
    let d = e.succeed(ActionKind::ArmBoot);
    // Not even a BMC switches it on.
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(power_way(&e), Some(PowerWay::Loop));
    e
}

#[test]
fn a_loop_attempt_whose_machine_does_not_come_back_stops_without_a_wipe() {
    for bmc in [false, true] {
        // The boots were spoofed, or the machine was switched off: it never comes back.
        let mut e = looping(bmc, false);
        let d = e.feed(Input::Reconcile);
        assert_eq!(d.requeue_after, Some(e.policy.boot_loop.within));
        e.advance(e.policy.boot_loop.within.as_secs() - 1);
        e.feed(Input::Reconcile);
        assert_eq!(e.state(), State::Booting);
        e.advance(1);
        let d = e.feed(Input::Reconcile);
        assert!(e.status.active_attempt.is_none());
        assert_eq!(e.status.history[0].outcome, AttemptOutcome::Aborted);
        assert!(
            e.status.history[0]
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("did not network-boot within 30m"),
            "{:?}",
            e.status.history[0].message
        );
        assert!(kinds(&d).contains(&ActionKind::DisarmBoot));
    }
}

#[test]
fn a_loop_that_did_not_come_back_is_over_and_starts_nothing_after_the_cooldown() {
    let mut e = looping(false, false);
    e.advance(e.policy.boot_loop.within.as_secs());
    let d = e.feed(Input::Reconcile);
    assert!(d.notices.iter().any(|n| n.reason == "BootLoopEnded"));
    assert!(e.status.signals.is_empty(), "{:?}", e.status.signals);
    assert!(e.status.network_boots.is_empty());
    e.advance(7 * 24 * 3600);
    let d = e.feed(Input::Reconcile);
    assert!(e.status.active_attempt.is_none());
    assert!(!kinds(&d).contains(&ActionKind::ArmBoot));
}

#[test]
fn the_machines_own_claim_wins_over_the_loop_deadline() {
    let mut e = looping(false, false);
    // Decided exactly at the deadline (or after it: a backlog): the claim proves it came back.
    e.advance(e.policy.boot_loop.within.as_secs() + 30);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id,
        try_number: Some(1),
        client: None,
    });
    assert_eq!(e.state(), State::Applying);
    assert!(e.status.history.is_empty());
}

#[test]
fn a_person_asking_during_a_loop_try_makes_it_theirs() {
    let mut e = looping(false, false);
    e.spec.reimage_request = Some(recast_crds::endpoint::ReimageRequest {
        token: "t1".into(),
        reason: "ticket 4711".into(),
    });
    let d = e.feed(Input::Reconcile);
    let a = e.status.active_attempt.clone().unwrap();
    assert_eq!(a.trigger, AttemptTrigger::Manual);
    assert_eq!(a.power_way, Some(PowerWay::Person));
    assert!(d.notices.iter().any(|n| n.reason == "PowerCycleNeeded"));
    // No longer stopped by the loop's deadline.
    e.advance(e.policy.boot_loop.within.as_secs() + 60);
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::Booting);
}

#[test]
fn a_loop_attempts_later_try_uses_the_usual_ways() {
    let mut e = looping(false, false);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id.clone(),
        try_number: Some(1),
        client: None,
    });
    e.feed(Input::ImagingFinished {
        attempt_id: id,
        try_number: Some(1),
        result: Err("download failed".into()),
        refusal: None,
    });
    e.advance(3600);
    e.feed(Input::Reconcile);
    assert_eq!(e.try_number(), 2);
    let d = e.succeed(ActionKind::ArmBoot);
    // Its disk may no longer loop: woken (no agent ever reported).
    assert_eq!(kinds(&d), [ActionKind::WakeOnLan]);
}

#[test]
fn a_way_that_brought_the_machine_is_counted_on_again() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id.clone(),
        try_number: Some(1),
        client: None,
    });
    e.feed(Input::ImagingFinished {
        attempt_id: id,
        try_number: Some(1),
        result: Err("download failed".into()),
        refusal: None,
    });
    // Back in Windows, its agent reports.
    e.feed(report("26100.7462", None));
    e.advance(3600);
    e.feed(Input::Reconcile);
    assert_eq!(e.try_number(), 2);
    e.succeed(ActionKind::ArmBoot);
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
    assert!(
        e.status
            .active_attempt
            .as_ref()
            .unwrap()
            .power_ways_tried
            .is_empty()
    );
}

#[test]
fn the_restart_order_stands_after_the_grace() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    let macs = e.spec.identity.mac_addresses.clone();
    assert!(super::power::restart_order(&e.status, &macs).is_some());
    e.advance(super::power::PERSON_GRACE.as_secs());
    e.feed(Input::Reconcile);
    assert_eq!(power_way(&e), Some(PowerWay::Person));
    assert!(super::power::restart_order(&e.status, &macs).is_some());
    // A refusal ends it.
    let mut r = restart_outcome(
        &e,
        NetworkRestartResult::Refused(NetworkRestartRefusal::NoNetworkEntry),
    );
    if let Input::AgentReport(s) = &mut r {
        s.reported_at = String::new();
    }
    e.feed(r);
    let a = e.status.active_attempt.clone().unwrap();
    assert_eq!(a.power_way, Some(PowerWay::Person));
    assert_eq!(super::power::restart_order(&e.status, &macs), None);
}

#[test]
fn a_loop_attempt_stops_when_the_agent_reports() {
    let mut e = looping(false, true);
    e.advance(60);
    let d = e.feed(report("26100.7462", None));
    assert!(e.status.active_attempt.is_none());
    assert_eq!(e.status.history[0].outcome, AttemptOutcome::Aborted);
    assert!(kinds(&d).contains(&ActionKind::DisarmBoot));
    assert!(
        !e.status
            .signals
            .iter()
            .any(|s| s.type_ == SignalKind::BootLoop)
    );
}

#[test]
fn the_agents_restart_and_wake_on_lan_get_a_grace_then_a_person_and_are_not_tried_again() {
    let mut e = healthy(false);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let d = e.succeed(ActionKind::ArmBoot);
    assert_eq!(power_way(&e), Some(PowerWay::Agent));
    assert_eq!(d.requeue_after, Some(recast_core_grace()));
    e.advance(recast_core_grace().as_secs() - 1);
    let d = e.feed(Input::Reconcile);
    assert!(!d.notices.iter().any(|n| n.reason == "PowerCycleNeeded"));
    e.advance(1);
    let d = e.feed(Input::Reconcile);
    let asked = d
        .notices
        .iter()
        .find(|n| n.reason == "PowerCycleNeeded")
        .expect("a person is asked");
    assert!(
        asked.message.contains("the agent's restart"),
        "{}",
        asked.message
    );
    assert_eq!(power_way(&e), Some(PowerWay::Person));
    // Once.
    e.advance(60);
    let d = e.feed(Input::Reconcile);
    assert!(!d.notices.iter().any(|n| n.reason == "PowerCycleNeeded"));
    // The try times out; the next one does not count on the agent again (it still reports,
    // so the machine is on: a person at once).
    e.advance(e.policy.try_timeout.as_secs());
    e.feed(Input::Reconcile);
    e.advance(3600);
    e.feed(Input::Reconcile);
    assert_eq!(e.try_number(), 2);
    let d = e.succeed(ActionKind::ArmBoot);
    assert_eq!(power_way(&e), Some(PowerWay::Person));
    assert!(d.notices.iter().any(|n| n.reason == "PowerCycleNeeded"));
    assert_eq!(
        e.status.active_attempt.as_ref().unwrap().power_ways_tried,
        [PowerWay::Agent]
    );
}

fn recast_core_grace() -> Duration {
    super::power::PERSON_GRACE
}

#[test]
fn a_report_between_network_boots_is_a_normal_start() {
    let mut e = healthy(false);
    for _ in 0..5 {
        e.advance(60);
        e.feed(booted(&e));
        e.advance(60);
        e.feed(report("26100.7462", None));
        assert!(e.status.network_boots.is_empty());
    }
    assert!(e.status.signals.is_empty());
    assert!(e.status.active_attempt.is_none());
}

#[test]
fn a_boot_loop_ends_when_the_agent_reports_and_the_gateway_cannot_drop_it() {
    let mut e = healthy(false);
    e.spec.protected = true;
    for _ in 0..3 {
        e.advance(60);
        e.feed(booted(&e));
    }
    // Its agent has reported and is not silent: boot requests alone (which anyone can send
    // with its MAC) are no loop.
    assert!(e.status.signals.is_empty());
    assert_eq!(e.status.network_boots.len(), 3);
    // The agent goes silent: the boots already recorded make the loop.
    let d = e.feed(signals(&[SignalKind::HeartbeatLost]));
    assert!(d.notices.iter().any(|n| n.reason == "BootLoop"));
    let types: Vec<&str> = e.status.signals.iter().map(|s| s.type_.as_str()).collect();
    assert_eq!(types, ["BootLoop", "HeartbeatLost"]);
    // A protected endpoint shows the finding but is never reimaged.
    assert!(e.status.active_attempt.is_none());
    // The gateway's own set does not drop the boot service's finding.
    e.feed(signals(&[SignalKind::HeartbeatLost, SignalKind::Drift]));
    let types: Vec<&str> = e.status.signals.iter().map(|s| s.type_.as_str()).collect();
    assert_eq!(types, ["BootLoop", "Drift", "HeartbeatLost"]);
    // A fourth boot while it stands raises nothing new.
    e.advance(60);
    let d = e.feed(booted(&e));
    assert!(!d.notices.iter().any(|n| n.reason == "BootLoop"));
    // The agent reports: the OS came up.
    let d = e.feed(report("26100.7462", None));
    assert!(d.notices.iter().any(|n| n.reason == "BootLoopEnded"));
    assert!(
        !e.status
            .signals
            .iter()
            .any(|s| s.type_ == SignalKind::BootLoop)
    );
    assert!(e.status.network_boots.is_empty());
}

#[test]
fn the_policy_sets_the_loop_and_its_action() {
    let mut e = One::new(false);
    e.policy.boot_loop.boots = 5;
    for _ in 0..4 {
        e.advance(60);
        e.feed(booted(&e));
    }
    assert!(e.status.signals.is_empty());
    e.advance(60);
    e.feed(booted(&e));
    assert_eq!(e.status.signals[0].type_, SignalKind::BootLoop);
    assert!(e.status.active_attempt.is_some());

    let mut e = One::new(false);
    e.policy.actions.boot_loop = recast_crds::policy::RemediationAction::AlertOnly;
    for _ in 0..3 {
        e.advance(60);
        e.feed(booted(&e));
    }
    assert_eq!(e.status.signals[0].type_, SignalKind::BootLoop);
    assert!(e.status.active_attempt.is_none());
    // The list stays bounded however long the machine loops.
    for _ in 0..100 {
        e.advance(60);
        e.feed(booted(&e));
    }
    assert_eq!(
        e.status.network_boots.len(),
        recast_crds::endpoint::MAX_NETWORK_BOOTS
    );
}

#[test]
fn a_restart_re_emits_the_same_action_with_the_same_key() {
    let mut e = healthy(true);
    let first = e.feed(signals(&[SignalKind::FailedRollback])).actions[0].idempotency_key();
    // The shell crashed after persisting: the next reconcile asks for the same side effect.
    let again = e.feed(Input::Reconcile).actions[0].idempotency_key();
    assert_eq!(first, again);
    assert_eq!(e.status.attempts_started, 1);
    e.succeed(ActionKind::ArmBoot);
    let k1 = e.feed(Input::Reconcile).actions[0].idempotency_key();
    let k2 = e.feed(Input::Reconcile).actions[0].idempotency_key();
    assert_eq!(k1, k2);
    assert!(k1.ends_with("/1/PowerCycle"));
}

#[test]
fn protected_endpoints_are_never_reimaged() {
    let mut e = healthy(true);
    e.spec.protected = true;
    e.feed(signals(&[
        SignalKind::FailedRollback,
        SignalKind::BootCrash,
    ]));
    assert_eq!(e.state(), State::Degraded);
    assert!(e.status.message.as_deref().unwrap().contains("protected"));
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t1".into(),
        reason: "please".into(),
    });
    let d = e.feed(Input::Reconcile);
    assert!(d.actions.is_empty());
    assert!(d.notices.iter().any(|n| n.reason == "ReimageRefused"));
    assert_eq!(e.status.handled_reimage_token.as_deref(), Some("t1"));
    // Lifting protection does not replay the refused request; the live signal still acts.
    e.spec.protected = false;
    e.feed(signals(&[]));
    assert_eq!(e.state(), State::Ready);
    assert_eq!(e.status.attempts_started, 0);
}

#[test]
fn protection_aborts_an_attempt_before_the_restart_but_not_after() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.spec.protected = true;
    let d = e.feed(Input::Reconcile);
    assert_eq!(d.edge, Some(transitions::Edge::Aborted));
    assert_eq!(kinds(&d), [ActionKind::DisarmBoot]);
    assert_eq!(e.status.history[0].outcome, AttemptOutcome::Aborted);

    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    // Restarted but not yet in the imaging environment: still safe to stop.
    e.spec.protected = true;
    let d = e.feed(Input::Reconcile);
    assert_eq!(d.edge, Some(transitions::Edge::Aborted));
    assert!(!e.disarmed().status.boot_armed);

    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        try_number: None,
        attempt_id: id,
        client: None,
    });
    e.spec.protected = true;
    e.feed(Input::Reconcile);
    assert_eq!(
        e.state(),
        State::Applying,
        "the disk is being written: finish"
    );
}

#[test]
fn a_try_belongs_to_the_first_machine_that_claims_it() {
    let claim = |id: &str, client: Option<&str>| Input::NetworkBooted {
        try_number: Some(1),
        attempt_id: id.to_string(),
        client: client.map(str::to_string),
    };
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    e.feed(claim(&id, Some("10.0.40.17")));
    assert_eq!(e.state(), State::Applying);
    let a = e.status.active_attempt.clone().unwrap();
    assert_eq!(a.boot_client.as_deref(), Some("10.0.40.17"));

    // The same machine again (its imaging environment restarted), or a claim that names no
    // address: nothing changes.
    for again in [claim(&id, Some("10.0.40.17")), claim(&id, None)] {
        let d = e.feed(again);
        assert_eq!(d.edge, None);
        assert_eq!(e.state(), State::Applying);
    }
    // Another try's or another attempt's claim from elsewhere: not this try's business.
    let d = e.feed(Input::NetworkBooted {
        try_number: Some(2),
        attempt_id: id.clone(),
        client: Some("10.0.40.99".into()),
    });
    assert_eq!((d.edge, e.state()), (None, State::Applying));
    let d = e.feed(claim("someone-else-1", Some("10.0.40.99")));
    assert_eq!((d.edge, e.state()), (None, State::Applying));

    // A second machine claims the same try: the attempt stops for a person, disarmed.
    let d = e.feed(claim(&id, Some("10.0.40.99")));
    assert_eq!(d.edge, Some(transitions::Edge::Quarantined));
    assert_eq!(kinds(&d), [ActionKind::DisarmBoot]);
    assert!(
        d.notices
            .iter()
            .any(|n| n.reason == "ImagingClaimConflict" && n.message.contains("10.0.40.99")),
        "{:?}",
        d.notices
    );
    assert_eq!(e.status.phase, Some(EndpointPhase::Quarantined));
    assert!(e.status.active_attempt.is_none());

    // A new try starts with nobody holding it.
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    e.feed(claim(&id, Some("10.0.40.17")));
    e.feed(Input::ImagingFinished {
        try_number: Some(1),
        attempt_id: id.clone(),
        result: Err("dism failed".into()),
        refusal: None,
    });
    let a = e.status.active_attempt.clone().unwrap();
    assert!(a.retry_after.is_some());
    assert_eq!(
        a.boot_client.as_deref(),
        Some("10.0.40.17"),
        "kept for the record until the retry"
    );
}

#[test]
fn a_lost_disarm_is_asked_for_again_until_confirmed() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert!(
        e.status.boot_armed,
        "armed is recorded before the boot is armed"
    );
    let id = e.attempt_id();
    let d = e.feed(Input::ActionFailed {
        attempt_id: id,
        try_number: 1,
        action: ActionKind::ArmBoot,
        error: ActionError {
            permanent: true,
            message: "x".into(),
        },
    });
    assert!(kinds(&d).contains(&ActionKind::DisarmBoot));
    // The disarm was lost (crash, lost lease, API error): every reconcile asks again.
    for _ in 0..3 {
        assert_eq!(kinds(&e.feed(Input::Reconcile)), [ActionKind::DisarmBoot]);
    }
    e.disarmed();
    assert!(!e.status.boot_armed);
    assert!(e.feed(Input::Reconcile).actions.is_empty());
}

#[test]
fn a_revoked_image_is_never_served_by_a_retry() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let id = e.attempt_id();
    e.feed(Input::ActionFailed {
        attempt_id: id,
        try_number: 1,
        action: ActionKind::ArmBoot,
        error: ActionError {
            permanent: false,
            message: "x".into(),
        },
    });
    e.image = Some(image(false));
    e.advance(3600);
    let d = e.feed(Input::Reconcile);
    assert_eq!(d.edge, Some(transitions::Edge::Aborted));
    assert!(!kinds(&d).contains(&ActionKind::ArmBoot));
    assert!(
        e.status.history[0]
            .message
            .as_deref()
            .unwrap()
            .contains("no longer Verified")
    );
}

#[test]
fn paused_endpoints_wait_but_a_person_can_still_ask() {
    let mut e = healthy(true);
    e.spec.paused = true;
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(e.status.message.as_deref().unwrap().contains("paused"));
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t1".into(),
        reason: "ticket 42".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
    assert_eq!(
        e.status.active_attempt.as_ref().unwrap().trigger,
        AttemptTrigger::Manual
    );
}

#[test]
fn an_unverified_image_is_never_served() {
    let mut e = healthy(true);
    e.image = Some(image(false));
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t1".into(),
        reason: "x".into(),
    });
    e.feed(signals(&[SignalKind::BootCrash]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("not Verified")
    );
    e.image = None;
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ReimageScheduled);
    e.image = Some(image(true));
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn cooldown_delays_automatic_but_not_manual_reimages() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    run_happy_attempt(&mut e);
    e.advance(60);
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(e.status.message.as_deref().unwrap().starts_with("cooldown"));
    e.advance(6 * 3600);
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
    assert_eq!(e.status.attempts_started, 2);

    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    run_happy_attempt(&mut e);
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t".into(),
        reason: "x".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn retries_back_off_then_quarantine() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    for try_number in 1..=3u32 {
        assert_eq!(e.try_number(), try_number);
        let id = e.attempt_id();
        let d = e.feed(Input::ActionFailed {
            attempt_id: id,
            try_number,
            action: ActionKind::ArmBoot,
            error: ActionError {
                permanent: false,
                message: "boot service unreachable".into(),
            },
        });
        assert!(kinds(&d).contains(&ActionKind::DisarmBoot));
        if try_number < 3 {
            assert_eq!(e.state(), State::Failed);
            assert_eq!(e.status.phase, Some(EndpointPhase::Failed));
            let wait = 300 * (1 << (try_number - 1));
            assert_eq!(d.requeue_after, Some(Duration::from_secs(wait)));
            e.advance(wait - 1);
            assert!(
                !kinds(&e.feed(Input::Reconcile)).contains(&ActionKind::ArmBoot),
                "no retry before the backoff"
            );
            e.advance(1);
            let d = e.feed(Input::Reconcile);
            assert_eq!(d.edge, Some(transitions::Edge::RetryStarted));
            assert_eq!(kinds(&d), [ActionKind::ArmBoot]);
        }
    }
    assert_eq!(e.state(), State::Quarantined);
    assert_eq!(e.status.history[0].outcome, AttemptOutcome::Failed);
    assert_eq!(e.status.history[0].tries, 3);
    // Quarantined stays put whatever the signals say, until a person asks.
    e.advance(24 * 3600);
    e.feed(signals(&[
        SignalKind::FailedRollback,
        SignalKind::BootCrash,
    ]));
    assert_eq!(e.state(), State::Quarantined);
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t".into(),
        reason: "fixed the NIC".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn permanent_errors_quarantine_at_once() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::BootCrash]));
    e.succeed(ActionKind::ArmBoot);
    let id = e.attempt_id();
    e.feed(Input::ActionFailed {
        attempt_id: id,
        try_number: 1,
        action: ActionKind::PowerCycle,
        error: ActionError {
            permanent: true,
            message: "401 Unauthorized from the BMC".into(),
        },
    });
    assert_eq!(e.state(), State::Quarantined);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("not retryable")
    );
}

#[test]
fn a_try_times_out() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::BootCrash]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    e.advance(2 * 3600 - 1);
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::Booting);
    e.advance(1);
    let d = e.feed(Input::Reconcile);
    assert_eq!(d.edge, Some(transitions::Edge::TryFailed));
    assert!(
        e.status
            .active_attempt
            .as_ref()
            .unwrap()
            .last_error
            .as_deref()
            .unwrap()
            .contains("timed out")
    );
}

#[test]
fn oobe_is_waited_for_once_per_state_and_a_low_build_fails_even_during_it() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let id = image_to_first_boot(&mut e);
    let oobe = "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE";
    let d = e.feed(with_setup_state(report("26100.7623", Some(&id)), oobe));
    assert_eq!(e.state(), State::FirstBoot);
    assert_eq!(d.notices.len(), 1, "{:?}", d.notices);
    // The same state again (the agent reports every few minutes): no second event.
    let d = e.feed(with_setup_state(report("26100.7623", Some(&id)), oobe));
    assert_eq!(e.state(), State::FirstBoot);
    assert!(
        d.notices.iter().all(|n| n.reason != "WaitingForSetup"),
        "{:?}",
        d.notices
    );
    // A build below the required one fails the try at once, OOBE or not.
    e.feed(with_setup_state(report("26100.7462", Some(&id)), oobe));
    assert_eq!(e.state(), State::Failed);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("below the required 26100.7623")
    );
}

#[test]
fn a_new_image_with_a_low_build_fails_the_try() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let id = image_to_first_boot(&mut e);
    e.feed(report("26100.7462", Some(&id)));
    assert_eq!(e.state(), State::Failed);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("below the required 26100.7623")
    );
    // Outside a restore a report never ends a waiting try: the judged first report stands
    // even if the build rises later.
    e.feed(report("26100.7623", Some(&id)));
    assert_eq!(
        e.state(),
        State::Failed,
        "a later report does not overrule the judged one"
    );
}

#[test]
fn inputs_for_another_attempt_are_ignored() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let before = e.status.clone();
    let d = e.feed(Input::ActionSucceeded {
        attempt_id: "someone-else-1".into(),
        try_number: 1,
        action: ActionKind::ArmBoot,
    });
    assert_eq!(kinds(&d), [ActionKind::ArmBoot]);
    assert_eq!(e.status.active_attempt, before.active_attempt);
    e.feed(Input::ImagingFinished {
        try_number: None,
        attempt_id: "old".into(),
        result: Err("x".into()),
        refusal: None,
    });
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn concurrency_limits_hold_automatic_and_manual_reimages() {
    let mut e = healthy(true);
    e.fleet.active_namespace = 10;
    e.feed(signals(&[SignalKind::BootCrash]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(
        e.status.message.as_deref().unwrap().contains(
            "10/10 reimages running in namespace default (the policy's concurrency.global)"
        )
    );
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t".into(),
        reason: "x".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ReimageScheduled);
    e.fleet.active_namespace = 1;
    e.policy.per_site_limit =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
    e.fleet.active_site = 1;
    e.feed(Input::Reconcile);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("in site store-042")
    );
    e.fleet.active_site = 0;
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn the_operators_ceiling_bounds_the_fleet_whatever_a_namespace_allows() {
    let mut e = healthy(true);
    // This namespace has room (1 of 10), the fleet does not (100 of 100).
    e.fleet.active_namespace = 1;
    e.fleet.active_fleet = 100;
    e.fleet.fleet_ceiling = Some(100);
    e.feed(signals(&[SignalKind::BootCrash]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(e.status.message.as_deref().unwrap().contains(
        "100/100 reimages running fleet-wide (the operator's --max-concurrent-reimages)"
    ));
    // No ceiling: the namespace's own limit decides.
    e.fleet.fleet_ceiling = None;
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn the_failure_budget_halts_automatic_remediation_only() {
    let mut e = healthy(true);
    e.fleet.recent_failures = 3;
    e.feed(signals(&[SignalKind::BootCrash]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("halted in namespace default")
    );
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t".into(),
        reason: "x".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn an_open_breaker_stops_automatic_reimages_with_one_warning_and_lets_people_through() {
    let trip = crate::breaker::Trip {
        at: "2026-01-15T08:50:00Z".parse().unwrap(),
        starts: 3,
        limit: 3,
        window: Duration::from_secs(3600),
    };
    for (scope, says) in [
        (
            crate::breaker::BreakerScope::Namespace,
            "recastctl breaker reset -n default",
        ),
        (crate::breaker::BreakerScope::Fleet, "reset --fleet"),
    ] {
        let mut e = healthy(true);
        e.fleet.breaker = Some((scope, trip));
        let d = e.feed(signals(&[SignalKind::FailedRollback]));
        assert_eq!(e.state(), State::ReimageScheduled);
        let msg = e.status.message.clone().unwrap();
        assert!(
            msg.contains("circuit breaker open") && msg.contains(says),
            "{msg}"
        );
        // The Reimaging condition says why nothing runs.
        let c = e
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Reimaging")
            .unwrap();
        assert_eq!(
            (c.status, c.reason.as_str()),
            (recast_crds::ConditionStatus::False, "BreakerOpen")
        );
        assert_eq!(c.message, msg);
        let warnings: Vec<_> = d
            .notices
            .iter()
            .filter(|n| n.reason == "BreakerOpen")
            .collect();
        assert_eq!(warnings.len(), 1, "{:?}", d.notices);
        assert_eq!(warnings[0].type_, NoticeType::Warning);
        // Said once: the next reconcile, still blocked, raises no second Warning.
        let d = e.feed(Input::Reconcile);
        assert!(
            d.notices.iter().all(|n| n.reason != "BreakerOpen"),
            "{:?}",
            d.notices
        );
        assert_eq!(e.state(), State::ReimageScheduled);
        // A person's reimage still runs.
        e.spec.reimage_request = Some(ReimageRequest {
            token: "t".into(),
            reason: "x".into(),
        });
        e.feed(Input::Reconcile);
        assert_eq!(e.state(), State::ArmingBoot);
    }
    // Held by an earlier guard (paused) while a breaker is open: no BreakerOpen said.
    let mut e = healthy(true);
    e.spec.paused = true;
    e.fleet.breaker = Some((crate::breaker::BreakerScope::Namespace, trip));
    let d = e.feed(signals(&[SignalKind::FailedRollback]));
    assert!(
        d.notices.iter().all(|n| n.reason != "BreakerOpen"),
        "{:?}",
        d.notices
    );
    let c = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reimaging")
        .unwrap();
    assert_eq!(c.reason, "Idle");
    // Closed again (a reset): the automatic reimage starts.
    let mut e = healthy(true);
    e.fleet.breaker = Some((crate::breaker::BreakerScope::Namespace, trip));
    e.feed(signals(&[SignalKind::BootCrash]));
    assert_eq!(e.state(), State::ReimageScheduled);
    e.fleet.breaker = None;
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn reimage_in_window_waits_for_the_window() {
    let mut e = healthy(true);
    e.policy.actions.non_compliant = RemediationAction::ReimageInWindow;
    e.policy.window = Some(recast_crds::MaintenanceWindow {
        start: "22:00".into(),
        duration: "6h".into(),
        days: vec![],
        time_zone: None,
    });
    e.feed(signals(&[SignalKind::NonCompliant]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("maintenance window")
    );
    e.now = "2026-01-14T22:00:00Z".parse().unwrap();
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn heartbeat_lost_alone_never_wipes() {
    let mut e = healthy(true);
    e.policy.actions.heartbeat_lost = RemediationAction::ReimageNow;
    e.feed(signals(&[SignalKind::HeartbeatLost]));
    assert_eq!(e.state(), State::Degraded);
    let connected = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "AgentConnected")
        .unwrap();
    assert_eq!(connected.status, recast_crds::ConditionStatus::False);
}

#[test]
fn alert_only_and_ignore() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::Drift]));
    assert_eq!(e.state(), State::Degraded);
    e.policy.actions.drift = RemediationAction::Ignore;
    e.feed(signals(&[SignalKind::Drift]));
    assert_eq!(e.state(), State::Ready);
}

#[test]
fn a_wave_reimages_each_endpoint_once() {
    let mut e = healthy(true);
    e.wave = Some(WaveView {
        name: "jan".into(),
        image: Some(image(true)),
    });
    e.feed(Input::Reconcile);
    assert_eq!(
        e.status.active_attempt.as_ref().unwrap().trigger,
        AttemptTrigger::Wave
    );
    run_happy_attempt(&mut e);
    assert_eq!(e.status.history[0].wave.as_deref(), Some("jan"));
    // The wave controller has not caught up yet: no second attempt.
    let d = e.feed(Input::Reconcile);
    assert!(d.actions.is_empty());
    assert_eq!(e.state(), State::Ready);
}

#[test]
fn a_wave_attempt_is_served_the_wave_image_not_the_endpoint_image() {
    let mut e = healthy(true);
    let newer = ImageView {
        name: "win11-24h2-2026-02".into(),
        digest: Some("9a7e".into()),
        verified: true,
        minimum_build: Some("26100.7800".parse().unwrap()),
    };
    e.wave = Some(WaveView {
        name: "feb".into(),
        image: Some(newer.clone()),
    });
    e.feed(Input::Reconcile);
    let a = e.status.active_attempt.clone().unwrap();
    assert_eq!(a.image, "win11-24h2-2026-02");
    assert_eq!(a.image_digest.as_deref(), Some("9a7e"));
    assert_eq!(a.expected_build.as_deref(), Some("26100.7800"));
    // While the wave is in view the endpoint's own image does not revoke the attempt.
    let d = e.succeed(ActionKind::ArmBoot);
    assert_eq!(kinds(&d), [ActionKind::PowerCycle]);
    // A wave whose image stops being Verified stops its attempt.
    e.wave = Some(WaveView {
        name: "feb".into(),
        image: Some(ImageView {
            verified: false,
            ..newer
        }),
    });
    e.feed(Input::Reconcile);
    assert!(e.status.active_attempt.is_none());
}

#[test]
fn a_wave_whose_image_does_not_resolve_waits_with_a_reason() {
    let mut e = healthy(true);
    e.wave = Some(WaveView {
        name: "feb".into(),
        image: None,
    });
    e.feed(Input::Reconcile);
    assert!(e.status.active_attempt.is_none());
    assert_eq!(e.status.phase, Some(EndpointPhase::ReimageScheduled));
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap()
            .contains("the wave's GoldenImage does not exist")
    );
}

#[test]
fn a_missing_policy_stops_automatic_remediation() {
    let mut e = healthy(true);
    e.policy_problem = Some("RemediationPolicy \"strict\" not found".into());
    e.feed(signals(&[SignalKind::BootCrash]));
    assert_eq!(e.state(), State::ReimageScheduled);
    assert!(e.status.message.as_deref().unwrap().contains("not found"));
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t".into(),
        reason: "x".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::ArmingBoot);
}

#[test]
fn a_request_during_an_attempt_joins_it() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.spec.reimage_request = Some(ReimageRequest {
        token: "t".into(),
        reason: "x".into(),
    });
    let d = e.feed(Input::Reconcile);
    assert!(d.notices.iter().any(|n| n.reason == "ReimageRequestJoined"));
    run_happy_attempt(&mut e);
    e.feed(Input::Reconcile);
    assert_eq!(e.status.attempts_started, 1);
    assert_eq!(e.state(), State::Ready);
}

#[test]
fn pending_until_the_first_report() {
    let mut e = One::new(true);
    e.feed(Input::Reconcile);
    assert_eq!(e.state(), State::Pending);
    e.feed(signals(&[SignalKind::Drift]));
    assert_eq!(e.state(), State::Degraded);
    e.feed(signals(&[]));
    assert_eq!(e.state(), State::Pending);
}

#[test]
fn history_is_bounded() {
    let mut e = healthy(true);
    e.policy.cooldown = Duration::ZERO;
    for i in 0..25 {
        e.spec.reimage_request = Some(ReimageRequest {
            token: format!("t{i}"),
            reason: "x".into(),
        });
        e.feed(Input::Reconcile);
        run_happy_attempt(&mut e);
    }
    assert_eq!(e.status.history.len(), recast_crds::endpoint::MAX_HISTORY);
    assert_eq!(e.status.attempts_started, 25);
    assert!(e.status.history[0].id.ends_with("-25"));
}

#[test]
fn lifecycle_doc_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/lifecycle.md");
    let generated = transitions::render_markdown();
    if std::env::var_os("RECAST_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/lifecycle.md is stale: run `make docs`"
    );
}

// ---- property tests over random event sequences ------------------------------------------

const FLEET: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Reconcile(usize),
    Signals(usize, Vec<SignalKind>),
    Report(usize, bool, bool),
    /// Complete the n-th pending action (mod len): success, or a (permanent) failure.
    Complete(usize, bool, bool),
    NetBoot(usize),
    Imaging(usize, bool),
    Protect(usize, bool),
    Pause(usize, bool),
    Request(usize),
    Verified(bool),
    Wave(Option<u8>),
    /// A person resets the breaker.
    ResetBreaker,
    /// The store is restored from a backup (recast_core::restore::fence on every endpoint).
    Restore,
}

fn op() -> impl Strategy<Value = Op> {
    let ep = 0..FLEET;
    prop_oneof![
        (1u64..4000).prop_map(Op::Advance),
        ep.clone().prop_map(Op::Reconcile),
        (
            ep.clone(),
            proptest::sample::subsequence(SignalKind::ALL.to_vec(), 0..=3)
        )
            .prop_map(|(e, s)| Op::Signals(e, s)),
        (ep.clone(), any::<bool>(), any::<bool>()).prop_map(|(e, a, b)| Op::Report(e, a, b)),
        (0usize..8, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(n, ok, p)| Op::Complete(n, ok, p)),
        ep.clone().prop_map(Op::NetBoot),
        (ep.clone(), prop::bool::weighted(0.8)).prop_map(|(e, ok)| Op::Imaging(e, ok)),
        (ep.clone(), prop::bool::weighted(0.3)).prop_map(|(e, b)| Op::Protect(e, b)),
        (ep.clone(), prop::bool::weighted(0.3)).prop_map(|(e, b)| Op::Pause(e, b)),
        ep.clone().prop_map(Op::Request),
        prop::bool::weighted(0.8).prop_map(Op::Verified),
        prop::option::of(0u8..2).prop_map(Op::Wave),
        Just(Op::ResetBreaker),
        Just(Op::Restore),
    ]
}

/// The property fleet's breaker limit (automatic starts per hour).
const BREAKER: i32 = 1;

struct Fleet {
    specs: Vec<EndpointSpec>,
    statuses: Vec<EndpointStatus>,
    now: Timestamp,
    policy: PolicyView,
    image: ImageView,
    wave: Option<(String, Vec<usize>)>,
    pending: Vec<(usize, Action)>,
    index: FleetIndex,
    tokens: u32,
}

impl Fleet {
    fn new() -> Self {
        let mut policy = PolicyView::built_in();
        policy.global_limit = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2);
        policy.per_site_limit =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        policy.cooldown = Duration::from_secs(1800);
        policy.try_timeout = Duration::from_secs(7200);
        policy.breaker_max_starts =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(BREAKER));
        let specs: Vec<_> = (0..FLEET)
            .map(|i| {
                let mut s = spec(i % 3 != 2);
                s.site = Some(format!("site-{}", i % 2));
                s
            })
            .collect();
        let mut index = FleetIndex::default();
        for (i, s) in specs.iter().enumerate() {
            index.upsert(
                &format!("ns/e{i}"),
                s.site.as_deref(),
                &EndpointStatus::default(),
            );
        }
        Fleet {
            specs,
            statuses: vec![EndpointStatus::default(); FLEET],
            now: T0.parse().unwrap(),
            policy,
            image: image(true),
            wave: None,
            pending: Vec::new(),
            index,
            tokens: 0,
        }
    }

    fn feed(&mut self, i: usize, input: Input) -> Result<(), TestCaseError> {
        let key = format!("ns/e{i}");
        let name = format!("e{i}");
        let uid = format!("uid-{i}-0000");
        let settings = crate::fleet::BreakerSettings {
            max_starts: self.policy.breaker_max_starts.clone(),
            window: self.policy.breaker_window,
            reset: self.policy.breaker_reset,
        };
        let fleet = self.index.view_for(
            &key,
            self.specs[i].site.as_deref(),
            self.now,
            self.policy.budget_window,
            crate::fleet::Breakers {
                namespace: &settings,
                fleet: None,
                fleet_ceiling: None,
            },
        );
        let wave = self
            .wave
            .as_ref()
            .filter(|(_, members)| members.contains(&i))
            .map(|(n, _)| WaveView {
                name: n.clone(),
                image: Some(self.image.clone()),
            });
        let view = EndpointView {
            namespace: "default",
            name: &name,
            uid: &uid,
            generation: Some(1),
            spec: &self.specs[i],
            status: &self.statuses[i],
        };
        let ctx = Context {
            now: self.now,
            policy: &self.policy,
            policy_problem: None,
            image: Some(&self.image),
            fleet,
            wave: wave.as_ref(),
        };
        let d = decide(view, &input, ctx);
        prop_assert_eq!(&d, &decide(view, &input, ctx), "same inputs, same decision");
        check_edge(&self.statuses[i], &d);

        let before = &self.statuses[i];
        let started = d.edge == Some(transitions::Edge::AttemptStarted);
        if started {
            prop_assert!(before.active_attempt.is_none(), "a second attempt started");
            prop_assert!(!self.specs[i].protected, "attempt on a protected endpoint");
            let trigger = d.status.active_attempt.as_ref().unwrap().trigger;
            prop_assert!(
                !self.specs[i].paused || trigger == AttemptTrigger::Manual,
                "automatic attempt on a paused endpoint"
            );
            prop_assert!(self.image.verified, "attempt with an unverified image");
            prop_assert_eq!(d.status.attempts_started, before.attempts_started + 1);
        } else {
            prop_assert_eq!(
                d.status.attempts_started,
                before.attempts_started,
                "attempt counter moved without AttemptStarted"
            );
        }
        if let (Some(a), Some(b)) = (&before.active_attempt, &d.status.active_attempt) {
            prop_assert_eq!(&a.id, &b.id, "attempt replaced without ending");
        }
        // After a restore nothing starts on its own until fresh evidence: the agent's report
        // or a person's request (which is what this input is, or it clears the mark first).
        if before.restored_at.is_some() {
            let manual = started
                && d.status.active_attempt.as_ref().unwrap().trigger == AttemptTrigger::Manual;
            prop_assert!(
                !started || manual,
                "an attempt started on its own after a restore"
            );
            if d.edge == Some(transitions::Edge::RetryStarted)
                && !matches!(input, Input::AgentReport(_))
            {
                prop_assert!(
                    d.status.restored_at.is_none(),
                    "a retry started after a restore without fresh evidence"
                );
            }
        }
        if started {
            let trigger = d.status.active_attempt.as_ref().unwrap().trigger;
            if !matches!(trigger, AttemptTrigger::Manual | AttemptTrigger::Wave) {
                prop_assert!(
                    d.status
                        .signals
                        .iter()
                        .any(|s| s.type_ != recast_crds::signal::SignalKind::HeartbeatLost),
                    "HeartbeatLost alone started an attempt"
                );
            }
        }
        // A boot that may still be armed while no try needs it is always being disarmed.
        let needs_boot = d.status.active_attempt.as_ref().is_some_and(|a| {
            a.retry_after.is_none()
                && !matches!(a.step, recast_crds::endpoint::ReimageStep::FirstBoot)
        });
        if d.status.boot_armed && !needs_boot {
            prop_assert!(
                d.actions.iter().any(|a| a.kind() == ActionKind::DisarmBoot),
                "boot left armed with no try needing it"
            );
        }
        self.statuses[i] = d.status.clone();
        self.index
            .upsert(&key, self.specs[i].site.as_deref(), &self.statuses[i]);
        for a in d.actions {
            self.pending.push((i, a));
        }

        // Limits, fleet-wide and per site.
        let active: Vec<usize> = (0..FLEET)
            .filter(|j| self.statuses[*j].active_attempt.is_some())
            .collect();
        prop_assert!(active.len() <= 2, "global limit exceeded: {:?}", active);
        for site in ["site-0", "site-1"] {
            let n = active
                .iter()
                .filter(|j| self.specs[**j].site.as_deref() == Some(site))
                .count();
            prop_assert!(n <= 1, "per-site limit exceeded in {}", site);
        }
        // The breaker: never more automatic starts within one window than its limit.
        let automatic: Vec<Timestamp> = self
            .statuses
            .iter()
            .flat_map(|st| {
                st.history
                    .iter()
                    .filter(|h| crate::breaker::is_automatic(h.trigger))
                    .map(|h| h.started_at.clone())
                    .chain(
                        st.active_attempt
                            .iter()
                            .filter(|a| crate::breaker::is_automatic(a.trigger))
                            .filter(|a| !st.history.iter().any(|h| h.id == a.id))
                            .map(|a| a.started_at.clone()),
                    )
                    .collect::<Vec<_>>()
            })
            .filter_map(|t| time::parse(&t))
            .collect();
        prop_assert!(
            crate::breaker::trip(
                &automatic,
                self.policy.breaker_reset,
                BREAKER as u32 + 1,
                self.policy.breaker_window
            )
            .is_none(),
            "more than {} automatic starts within {:?}",
            BREAKER,
            self.policy.breaker_window
        );
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Advance(s) => self.now = time::add(self.now, Duration::from_secs(s)),
            Op::Reconcile(i) => self.feed(i, Input::Reconcile)?,
            Op::Signals(i, s) => self.feed(i, signals(&s))?,
            Op::Report(i, new_build, with_attempt) => {
                let attempt = self.statuses[i]
                    .active_attempt
                    .as_ref()
                    .map(|a| a.id.clone());
                let build = if new_build {
                    "26100.7623"
                } else {
                    "26100.7462"
                };
                self.feed(
                    i,
                    report(build, attempt.as_deref().filter(|_| with_attempt)),
                )?
            }
            Op::Complete(n, ok, permanent) => {
                if !self.pending.is_empty() {
                    let (i, action) = self.pending.remove(n % self.pending.len());
                    let (attempt_id, try_number) = match &action {
                        Action::ArmBoot {
                            attempt_id,
                            try_number,
                            ..
                        }
                        | Action::PowerCycle {
                            attempt_id,
                            try_number,
                        }
                        | Action::WakeOnLan {
                            attempt_id,
                            try_number,
                            ..
                        } => (attempt_id.clone(), *try_number),
                        Action::DisarmBoot { attempt_id } => {
                            // The controller runs actions in order, so a disarm is confirmed
                            // before any later arm; a stale one (a try armed since) is dropped.
                            let needs_boot =
                                self.statuses[i].active_attempt.as_ref().is_some_and(|a| {
                                    a.retry_after.is_none()
                                        && !matches!(
                                            a.step,
                                            recast_crds::endpoint::ReimageStep::FirstBoot
                                        )
                                });
                            if ok && !needs_boot {
                                let input = Input::ActionSucceeded {
                                    attempt_id: attempt_id.clone(),
                                    try_number: 0,
                                    action: ActionKind::DisarmBoot,
                                };
                                self.feed(i, input)?;
                            }
                            return Ok(());
                        }
                    };
                    let input = if ok {
                        Input::ActionSucceeded {
                            attempt_id,
                            try_number,
                            action: action.kind(),
                        }
                    } else {
                        Input::ActionFailed {
                            attempt_id,
                            try_number,
                            action: action.kind(),
                            error: ActionError {
                                permanent,
                                message: "simulated".into(),
                            },
                        }
                    };
                    self.feed(i, input)?;
                }
            }
            Op::NetBoot(i) => {
                if let Some(a) = &self.statuses[i].active_attempt {
                    let id = a.id.clone();
                    self.feed(
                        i,
                        Input::NetworkBooted {
                            try_number: None,
                            attempt_id: id,
                            client: None,
                        },
                    )?;
                }
            }
            Op::Imaging(i, ok) => {
                if let Some(a) = &self.statuses[i].active_attempt {
                    let id = a.id.clone();
                    let result = if ok {
                        Ok(())
                    } else {
                        Err("disk not found".into())
                    };
                    self.feed(
                        i,
                        Input::ImagingFinished {
                            try_number: None,
                            attempt_id: id,
                            result,
                            refusal: None,
                        },
                    )?;
                }
            }
            Op::Protect(i, b) => self.specs[i].protected = b,
            Op::Pause(i, b) => self.specs[i].paused = b,
            Op::Request(i) => {
                self.tokens += 1;
                self.specs[i].reimage_request = Some(ReimageRequest {
                    token: format!("t{}", self.tokens),
                    reason: "prop".into(),
                });
            }
            Op::Verified(v) => self.image.verified = v,
            Op::ResetBreaker => self.policy.breaker_reset = Some(self.now),
            Op::Restore => {
                for i in 0..FLEET {
                    let token = self.specs[i]
                        .reimage_request
                        .as_ref()
                        .map(|r| r.token.clone());
                    let f = crate::restore::fence(
                        &format!("e{i}"),
                        &self.statuses[i],
                        token.as_deref(),
                        None,
                        self.now,
                    );
                    self.statuses[i] = f.status;
                    self.index.upsert(
                        &format!("ns/e{i}"),
                        self.specs[i].site.as_deref(),
                        &self.statuses[i],
                    );
                }
                // The restore disarms every boot: nothing the old tries asked for is pending.
                self.pending.clear();
            }
            Op::Wave(w) => {
                self.wave = w.map(|n| {
                    (
                        format!("wave-{n}"),
                        (0..FLEET).filter(|j| j % 2 == n as usize).collect(),
                    )
                })
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_event_sequences(ops in prop::collection::vec(op(), 1..120)) {
        let mut f = Fleet::new();
        for op in ops {
            f.apply(op)?;
        }
        // Liveness: with nothing else happening, every attempt ends (retried, then Ready or
        // Quarantined). Each try needs two rounds (time out, retry), and with one slot per
        // site the waiting ones go one after another.
        for i in 0..FLEET {
            f.specs[i].paused = false;
            // A restored endpoint waits for fresh evidence: its agent reports (the old image
            // still runs), which lets its attempt go on.
            if f.statuses[i].restored_at.is_some() {
                f.feed(i, report("26100.7462", None))?;
            }
        }
        for _ in 0..(FLEET as u32 * f.policy.max_tries * 2 + 4) {
            f.now = time::add(f.now, f.policy.try_timeout + f.policy.backoff_before(f.policy.max_tries));
            for i in 0..FLEET {
                f.feed(i, Input::Reconcile)?;
            }
        }
        for i in 0..FLEET {
            prop_assert!(
                f.statuses[i].active_attempt.is_none(),
                "attempt never ended: {:?}", f.statuses[i].active_attempt
            );
            prop_assert!(f.statuses[i].history.len() <= recast_crds::endpoint::MAX_HISTORY);
        }
    }

    #[test]
    fn builds_order_numerically(a in 0u32..100_000, b in 0u32..100_000, c in 0u32..100_000, d in 0u32..100_000) {
        let x: Build = format!("{a}.{b}").parse().unwrap();
        let y: Build = format!("{c}.{d}").parse().unwrap();
        prop_assert_eq!(x.cmp(&y), (a, b).cmp(&(c, d)));
    }
}

#[test]
fn after_a_restore_an_attempt_waits_for_evidence_and_ends_on_it() {
    // Imaged in the hour the backup does not know: the agent's report from the new image
    // ends the restored attempt as succeeded, with no second try.
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    let f = crate::restore::fence("e", &e.status, None, None, e.now);
    e.status = f.status;
    e.advance(7 * 24 * 3600);
    for _ in 0..3 {
        let d = e.feed(Input::Reconcile);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(e.state(), State::Failed);
    }
    // Its first report comes while Windows Setup still runs OOBE: no retry, no end yet, and
    // the restore's hold stays (no "decisions go on" notice while nothing is decided).
    for _ in 0..2 {
        let d = e.feed(with_setup_state(
            report("26100.7623", Some(&id)),
            "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE",
        ));
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert!(
            d.notices.iter().all(|n| n.reason != "ReportedSinceRestore"),
            "{:?}",
            d.notices
        );
        assert_eq!(e.state(), State::Failed);
        assert!(e.status.restored_at.is_some());
        let d = e.feed(Input::Reconcile);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
    }
    let d = e.feed(report("26100.7623", Some(&id)));
    assert_eq!(d.edge, Some(transitions::Edge::CheckedIn));
    assert_eq!(e.state(), State::Ready);
    assert_eq!(e.status.history[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!(e.status.attempts_started, 1);
    assert_eq!(e.status.restored_at, None);

    // Not imaged: the agent reports the old build, and the next try of the same attempt
    // starts.
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let id = e.attempt_id();
    e.status = crate::restore::fence("e", &e.status, None, None, e.now).status;
    e.advance(3600);
    assert!(e.feed(Input::Reconcile).actions.is_empty());
    e.feed(report("26100.7462", None));
    e.feed(Input::Reconcile);
    assert_eq!((e.attempt_id(), e.try_number()), (id, 2));
    assert_eq!(e.state(), State::ArmingBoot);

    // No attempt in flight: the restore drops the backup's signals; a signal raised before
    // the agent reports again starts nothing, nor does the report that ends the wait (the
    // signals beside it come next); then the fresh evidence decides.
    let mut e = healthy(true);
    e.spec.paused = true;
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.spec.paused = false;
    e.status = crate::restore::fence("e", &e.status, None, None, e.now).status;
    assert!(e.status.signals.is_empty());
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert!(e.status.active_attempt.is_none());
    assert!(
        e.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("restored from a backup"),
        "{:?}",
        e.status.message
    );
    e.feed(report("26100.7462", None));
    assert!(
        e.status.active_attempt.is_none(),
        "the clearing report started an attempt"
    );
    assert_eq!(e.status.restored_at, None);
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert_eq!(
        e.status.active_attempt.as_ref().map(|a| a.trigger),
        Some(AttemptTrigger::FailedRollback)
    );

    // A person's request starts one at once, and ends the wait.
    let mut e = healthy(true);
    e.status = crate::restore::fence("e", &e.status, None, None, e.now).status;
    e.spec.reimage_request = Some(recast_crds::endpoint::ReimageRequest {
        token: "after-restore".into(),
        reason: "looked at it".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(
        e.status.active_attempt.as_ref().map(|a| a.trigger),
        Some(AttemptTrigger::Manual)
    );
    assert_eq!(e.status.restored_at, None);
}

#[test]
fn a_later_attempt_the_machine_reports_supersedes_a_restored_one_and_ids_are_not_reused() {
    // The backup knew attempt 1 in flight; in the lost time attempt 1 failed, attempt 2 ran
    // and imaged the machine. Its agent reports attempt 2's id.
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let first = e.attempt_id();
    let second = first.replace("-1", "-2");
    assert_ne!(first, second);
    e.status = crate::restore::fence("e", &e.status, None, None, e.now).status;
    let d = e.feed(report("26100.7623", Some(&second)));
    assert_eq!(d.edge, Some(transitions::Edge::Aborted));
    assert!(e.status.active_attempt.is_none());
    assert!(
        e.status.history[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("superseded"),
        "{:?}",
        e.status.history[0].message
    );
    // The next attempt gets a new id, never the one the machine already carries.
    assert_eq!(e.status.attempts_started, 2);
    e.advance(7 * 24 * 3600);
    e.spec.reimage_request = Some(recast_crds::endpoint::ReimageRequest {
        token: "again".into(),
        reason: "x".into(),
    });
    e.feed(Input::Reconcile);
    assert_eq!(e.attempt_id(), first.replace("-1", "-3"));
}

#[test]
fn every_edge_is_reachable_in_the_scenarios() {
    // The scenarios above exercise each row; this guards against a row nobody can take.
    let mut seen = BTreeMap::new();
    let mut record = |e: &One| {
        if let Some(edge) = e.last.as_ref().and_then(|d| d.edge) {
            seen.insert(format!("{edge:?}"), ());
        }
    };
    let mut e = One::new(true);
    e.feed(signals(&[SignalKind::Drift]));
    record(&e); // SignalRaised
    e.feed(signals(&[]));
    record(&e); // Settled
    e.feed(report("26100.7462", None));
    record(&e); // Healthy
    e.spec.paused = true;
    e.feed(signals(&[SignalKind::BootCrash]));
    record(&e); // Scheduled
    e.spec.paused = false;
    e.feed(Input::Reconcile);
    record(&e); // AttemptStarted
    e.succeed(ActionKind::ArmBoot);
    record(&e); // BootArmed
    e.succeed(ActionKind::PowerCycle);
    record(&e); // PowerCycled
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        try_number: None,
        attempt_id: id.clone(),
        client: None,
    });
    record(&e);
    e.feed(Input::ImagingFinished {
        try_number: None,
        attempt_id: id.clone(),
        result: Ok(()),
        refusal: None,
    });
    record(&e);
    e.feed(report("26100.7623", Some(&id)));
    record(&e); // CheckedIn
    let mut n = One::new(false);
    n.spec.wake_on_lan = false;
    n.feed(report("26100.7462", None));
    n.feed(signals(&[SignalKind::BootCrash]));
    n.succeed(ActionKind::ArmBoot);
    record(&n); // BootArmedNoBmc
    let id = n.attempt_id();
    n.feed(Input::ImagingFinished {
        try_number: None,
        attempt_id: id,
        result: Err("x".into()),
        refusal: None,
    });
    record(&n); // TryFailed
    n.spec.protected = true;
    n.feed(Input::Reconcile);
    record(&n); // Aborted
    let mut q = healthy(true);
    q.feed(signals(&[SignalKind::BootCrash]));
    let id = q.attempt_id();
    q.feed(Input::ActionFailed {
        attempt_id: id,
        try_number: 1,
        action: ActionKind::ArmBoot,
        error: ActionError {
            permanent: false,
            message: "x".into(),
        },
    });
    q.advance(3600);
    q.feed(Input::Reconcile);
    record(&q); // RetryStarted
    let id = q.attempt_id();
    q.feed(Input::ActionFailed {
        attempt_id: id,
        try_number: 2,
        action: ActionKind::ArmBoot,
        error: ActionError {
            permanent: true,
            message: "x".into(),
        },
    });
    record(&q); // Quarantined
    let mut w = healthy(true);
    w.spec.boot_server = recast_crds::endpoint::BootServer::Wds;
    w.feed(signals(&[SignalKind::BootCrash]));
    w.succeed(ActionKind::ArmBoot);
    w.succeed(ActionKind::PowerCycle);
    let id = w.attempt_id();
    w.feed(Input::HandedOff {
        attempt_id: id,
        try_number: None,
        server: "10.0.40.9".into(),
    });
    record(&w); // HandedOff
    let all: Vec<String> = transitions::TABLE
        .iter()
        .map(|t| format!("{:?}", t.edge))
        .collect();
    let missing: Vec<_> = all.iter().filter(|e| !seen.contains_key(*e)).collect();
    assert!(missing.is_empty(), "edges never taken: {missing:?}");
}

#[test]
fn every_change_of_state_is_an_event_but_a_new_endpoint_is_quiet() {
    let mut e = One::new(true);
    assert!(
        e.feed(Input::Reconcile).notices.is_empty(),
        "first status: no event"
    );
    let d = e.feed(report("26100.7462", None));
    assert!(
        d.notices.iter().any(|n| n.reason == "Ready"),
        "{:?}",
        d.notices
    );
    let d = e.feed(signals(&[SignalKind::Drift]));
    assert!(
        d.notices.iter().any(|n| n.reason == "Degraded"),
        "{:?}",
        d.notices
    );
    let d = e.feed(signals(&[]));
    assert!(
        d.notices.iter().any(|n| n.reason == "Ready"),
        "{:?}",
        d.notices
    );
    assert!(
        e.feed(Input::Reconcile).notices.is_empty(),
        "no change, no event"
    );
}

#[test]
fn a_late_message_from_an_earlier_try_is_ignored() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    // Try 1 times out; try 2 starts after the backoff.
    e.advance(2 * 3600);
    e.feed(Input::Reconcile);
    e.advance(3600);
    e.feed(Input::Reconcile);
    assert_eq!(e.try_number(), 2);
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    // Try 1's imaging environment finally reports: it must not fail try 2.
    e.feed(Input::ImagingFinished {
        attempt_id: id.clone(),
        try_number: Some(1),
        result: Err("disk gone".into()),
        refusal: None,
    });
    assert_eq!(e.state(), State::Booting);
    e.feed(Input::NetworkBooted {
        attempt_id: id.clone(),
        try_number: Some(2),
        client: None,
    });
    assert_eq!(e.state(), State::Applying);
}

#[test]
fn a_bmc_crash_counts_only_while_the_agent_is_silent() {
    let mut e = healthy(true);
    // The agent still reports: a BMC finding is history, nothing changes.
    let d = e.feed(Input::BmcCrash {
        message: "the BMC recorded bugcheck 0xed".into(),
    });
    assert!(e.status.signals.is_empty());
    assert!(!kinds(&d).contains(&ActionKind::ArmBoot));
    // Silent, then the BMC finding: BootCrash joins HeartbeatLost and the reimage starts.
    e.feed(signals(&[SignalKind::HeartbeatLost]));
    let d = e.feed(Input::BmcCrash {
        message: "the BMC recorded bugcheck 0xed".into(),
    });
    let types: Vec<&str> = e.status.signals.iter().map(|s| s.type_.as_str()).collect();
    assert_eq!(types, ["BootCrash", "HeartbeatLost"]);
    assert_eq!(kinds(&d), [ActionKind::ArmBoot]);
    assert_eq!(
        e.status.active_attempt.as_ref().unwrap().trigger,
        AttemptTrigger::BootCrash
    );
}

// ---- update hold ---------------------------------------------------------------------------

fn hold(e: &One) -> recast_crds::endpoint::UpdateHoldStatus {
    e.status
        .update_hold
        .clone()
        .expect("every decision sets status.updateHold")
}

fn hold_notices(d: &Decision) -> Vec<&Notice> {
    d.notices
        .iter()
        .filter(|n| n.reason == "UpdatesHeld" || n.reason == "UpdatesReleased")
        .collect()
}

fn manual(
    e: &One,
    action: recast_crds::endpoint::ManualHoldAction,
) -> recast_crds::endpoint::ManualUpdateHold {
    recast_crds::endpoint::ManualUpdateHold {
        action,
        reason: "ticket 4711".into(),
        requested_at: time::format(e.now),
        requested_by: Some("ops".into()),
    }
}

/// Drives the running attempt to a successful check-in from the new image.
fn finish_attempt(e: &mut One) {
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id.clone(),
        try_number: None,
        client: None,
    });
    e.feed(Input::ImagingFinished {
        attempt_id: id.clone(),
        try_number: None,
        result: Ok(()),
        refusal: None,
    });
    e.feed(report("26100.7623", Some(&id)));
}

#[test]
fn a_managed_endpoint_is_released_quietly_from_its_first_status() {
    let mut e = One::new(true);
    let d = e.feed(Input::Reconcile);
    assert!(hold_notices(&d).is_empty(), "{:?}", d.notices);
    let h = hold(&e);
    assert!(!h.held);
    assert_eq!(h.reason, recast_crds::signal::HoldReason::Managed);
    assert_eq!(h.since, T0);
    let c = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "UpdatesHeld")
        .unwrap();
    assert_eq!(c.status, recast_crds::ConditionStatus::False);
    assert_eq!(c.reason, "Managed");
}

#[test]
fn an_immutable_endpoint_is_held_from_its_first_status_and_across_reimages() {
    let mut e = One::new(true);
    e.spec.update_mode = Some(recast_crds::policy::UpdateMode::Immutable);
    let d = e.feed(Input::Reconcile);
    let n = hold_notices(&d);
    assert_eq!(n.len(), 1, "a hold is news even on the first status");
    assert_eq!(n[0].reason, "UpdatesHeld");
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Immutable);
    e.feed(report("26100.7462", None));
    e.feed(Input::Signals(vec![(SignalKind::BootCrash, "0xED".into())]));
    assert!(e.status.active_attempt.is_some());
    finish_attempt(&mut e);
    assert!(e.status.active_attempt.is_none());
    let h = hold(&e);
    assert!(
        h.held && h.reason == recast_crds::signal::HoldReason::Immutable && h.since == T0,
        "{h:?}"
    );
}

#[test]
fn the_policy_mode_applies_unless_the_endpoint_overrides_it() {
    let mut e = One::new(true);
    e.policy.update_mode = recast_crds::policy::UpdateMode::Immutable;
    e.feed(Input::Reconcile);
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Immutable);
    e.spec.update_mode = Some(recast_crds::policy::UpdateMode::Managed);
    let d = e.feed(Input::Reconcile);
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Managed);
    assert_eq!(hold_notices(&d)[0].reason, "UpdatesReleased");
}

#[test]
fn failed_rollback_holds_until_the_reimage_that_replaces_the_machine_ends() {
    let mut e = healthy(true);
    e.advance(60);
    let d = e.feed(signals(&[SignalKind::FailedRollback]));
    let h = hold(&e);
    assert!(h.held, "{h:?}");
    assert_eq!(h.reason, recast_crds::signal::HoldReason::FailedRollback);
    assert_eq!(h.since, "2026-01-14T08:01:00Z");
    assert_eq!(
        h.guard_engaged_since.as_deref(),
        Some("2026-01-14T08:01:00Z")
    );
    assert_eq!(hold_notices(&d)[0].reason, "UpdatesHeld");
    assert!(e.status.active_attempt.is_some());
    // Every step of the attempt keeps the hold; the new image's check-in releases it.
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    assert!(hold(&e).held);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        attempt_id: id.clone(),
        try_number: None,
        client: None,
    });
    e.feed(Input::ImagingFinished {
        attempt_id: id.clone(),
        try_number: None,
        result: Ok(()),
        refusal: None,
    });
    assert!(
        hold(&e).held,
        "applied is not replaced: the machine has not checked in"
    );
    e.advance(60);
    let d = e.feed(report("26100.7623", Some(&id)));
    let h = hold(&e);
    assert!(!h.held, "{h:?}");
    assert_eq!(h.reason, recast_crds::signal::HoldReason::Managed);
    assert_eq!(h.guard_engaged_since, None);
    assert_eq!(hold_notices(&d)[0].reason, "UpdatesReleased");
}

#[test]
fn the_guard_outlives_the_signal_and_a_failed_attempt() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    let id = e.attempt_id();
    // The machine never reaches the imaging environment: all tries fail, Quarantined.
    for t in 1..=e.policy.max_tries {
        e.feed(Input::ActionFailed {
            attempt_id: id.clone(),
            try_number: t,
            action: ActionKind::ArmBoot,
            error: ActionError {
                permanent: false,
                message: "BMC unreachable".into(),
            },
        });
        e.advance(24 * 3600);
        e.feed(Input::Reconcile);
    }
    assert_eq!(e.state(), State::Quarantined);
    assert!(hold(&e).held, "a failed attempt replaced nothing");
    // The signal disappears from the reports (the event log rotated): still held.
    e.feed(signals(&[]));
    let h = hold(&e);
    assert!(
        h.held && h.reason == recast_crds::signal::HoldReason::FailedRollback,
        "{h:?}"
    );
}

/// An agent report carrying the agent's judgement of the hold.
fn report_with_enforcement(
    enforcement: recast_crds::report::HoldEnforcement,
    obstacles: Vec<recast_crds::report::HoldObstacle>,
    evidence: &[&str],
) -> Input {
    Input::AgentReport(ReportSummary {
        setup_state: None,
        boot_time: None,
        network_restart: None,
        build: "26100.7462".into(),
        reported_at: String::new(),
        agent_version: None,
        attempt_id: None,
        update_results: vec![],
        crashes: vec![],
        update_hold: Some(recast_crds::report::EffectiveUpdateHold {
            held: enforcement == recast_crds::report::HoldEnforcement::Held,
            enforcement: Some(enforcement),
            obstacles,
            evidence: evidence.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }),
    })
}

/// A Windows Home machine's read-back: the hold written, not enforceable.
fn home_report() -> Input {
    report_with_enforcement(
        recast_crds::report::HoldEnforcement::NotEnforceable,
        vec![recast_crds::report::HoldObstacle::HomeEdition],
        &["EditionID=Core"],
    )
}

fn enforcement_notices(d: &Decision) -> Vec<&Notice> {
    d.notices
        .iter()
        .filter(|n| n.reason.starts_with("UpdateHold") && n.reason != "UpdateHoldDrift")
        .collect()
}

#[test]
fn a_hold_windows_will_not_honour_alerts_once_and_escalates_the_guard_only_when_asked() {
    use recast_crds::report::HoldEnforcement;
    let mut e = healthy(true);
    // The site reimages FailedRollback machines only when told to, trusting the hold.
    e.policy.actions.failed_rollback = RemediationAction::AlertOnly;
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert!(hold(&e).held);
    let d = e.feed(home_report());
    let n = enforcement_notices(&d);
    assert_eq!(n.len(), 1, "{:?}", d.notices);
    assert_eq!(n[0].reason, "UpdateHoldNotEnforced");
    assert_eq!(n[0].type_, NoticeType::Warning);
    assert!(n[0].message.contains("EditionID=Core"), "{}", n[0].message);
    assert!(
        n[0].message.contains("Pro or Enterprise"),
        "{}",
        n[0].message
    );
    assert!(n[0].message.contains("only alerts"), "{}", n[0].message);
    assert_eq!(hold(&e).enforcement, Some(HoldEnforcement::NotEnforceable));
    assert!(
        e.status.active_attempt.is_none(),
        "AlertOnly never reimages"
    );
    let c = e
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "UpdatesHeld")
        .unwrap();
    assert!(
        c.message.contains("not in effect: Windows will not honour"),
        "{c:?}"
    );
    // The same read-back again is no news.
    let d = e.feed(home_report());
    assert!(enforcement_notices(&d).is_empty(), "{:?}", d.notices);
    // The policy now treats such machines as unable to hold: the guard's reimage starts.
    e.policy.hold_not_enforced = RemediationAction::ReimageNow;
    e.feed(Input::Reconcile);
    let a = e.status.active_attempt.as_ref().expect("an attempt");
    assert_eq!(a.trigger, AttemptTrigger::FailedRollback);
    assert!(a.reason.contains("not enforced"), "{a:?}");
}

#[test]
fn an_unenforceable_hold_that_is_not_the_guard_only_alerts_whatever_the_policy() {
    use recast_crds::report::{HoldEnforcement, HoldObstacle};
    let mut e = healthy(true);
    e.spec.update_mode = Some(recast_crds::policy::UpdateMode::Immutable);
    e.policy.hold_not_enforced = RemediationAction::ReimageNow;
    e.feed(Input::Reconcile);
    let d = e.feed(report_with_enforcement(
        HoldEnforcement::NotEnforceable,
        vec![HoldObstacle::WsusManaged],
        &[r"AU\UseWUServer=0x1 (WUServer=http://wsus:8530)"],
    ));
    let n = enforcement_notices(&d);
    assert_eq!(n.len(), 1, "{:?}", d.notices);
    assert!(
        n[0].message.contains("decline the next cumulative update"),
        "{}",
        n[0].message
    );
    assert!(
        n[0].message
            .contains("a reimage would not make Windows honour it"),
        "{}",
        n[0].message
    );
    assert!(
        e.status.active_attempt.is_none(),
        "an immutable hold is never a reason to wipe"
    );
    // Windows Update's own record changes its mind: overridden, a new event.
    let d = e.feed(report_with_enforcement(
        HoldEnforcement::Overridden,
        vec![],
        &["PolicyState QualityUpdatesPaused=0x0"],
    ));
    let n = enforcement_notices(&d);
    assert_eq!(n.len(), 1, "{:?}", d.notices);
    assert!(
        n[0].message.contains("QualityUpdatesPaused=0x0"),
        "{}",
        n[0].message
    );
    // And back to held: one Normal event.
    let d = e.feed(report_with_enforcement(HoldEnforcement::Held, vec![], &[]));
    let n = enforcement_notices(&d);
    assert_eq!(n.len(), 1, "{:?}", d.notices);
    assert_eq!(n[0].reason, "UpdateHoldEnforced");
    assert_eq!(n[0].type_, NoticeType::Normal);
    // Pending and not-in-place are the agent's business, not an alert.
    let d = e.feed(report_with_enforcement(
        HoldEnforcement::Pending,
        vec![],
        &[],
    ));
    assert!(enforcement_notices(&d).is_empty(), "{:?}", d.notices);
}

#[test]
fn a_manual_hold_over_the_guard_is_never_escalated_and_a_missing_read_back_is_no_news() {
    use recast_crds::endpoint::ManualHoldAction;
    use recast_crds::report::HoldEnforcement;
    let mut e = healthy(true);
    e.policy.actions.failed_rollback = RemediationAction::AlertOnly;
    e.policy.hold_not_enforced = RemediationAction::ReimageNow;
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.spec.manual_update_hold = Some(manual(&e, ManualHoldAction::Hold));
    let d = e.feed(home_report());
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Manual);
    assert!(
        hold(&e).guard_engaged_since.is_some(),
        "the guard stays latched"
    );
    assert!(
        e.status.active_attempt.is_none(),
        "a manual hold is not the guard's"
    );
    let n = enforcement_notices(&d);
    assert_eq!(n.len(), 1, "{:?}", d.notices);
    assert!(n[0].message.contains("only alerts"), "{}", n[0].message);
    // A report whose read-back failed, then the same verdict again: no second alert.
    let d = e.feed(report("26100.7462", None));
    assert!(enforcement_notices(&d).is_empty(), "{:?}", d.notices);
    assert_eq!(hold(&e).enforcement, Some(HoldEnforcement::NotEnforceable));
    let d = e.feed(home_report());
    assert!(enforcement_notices(&d).is_empty(), "{:?}", d.notices);
    // The manual hold lifted: the guard's own hold, and now the policy's reimage.
    e.spec.manual_update_hold = None;
    e.feed(Input::Reconcile);
    assert_eq!(
        hold(&e).reason,
        recast_crds::signal::HoldReason::FailedRollback
    );
    assert!(e.status.active_attempt.is_some());
}

#[test]
fn ignore_records_nothing_and_a_released_endpoint_is_never_alerted() {
    use recast_crds::report::{HoldEnforcement, HoldObstacle};
    let mut e = healthy(true);
    e.policy.hold_not_enforced = RemediationAction::Ignore;
    e.feed(signals(&[SignalKind::FailedRollback]));
    let d = e.feed(report_with_enforcement(
        HoldEnforcement::NotEnforceable,
        vec![HoldObstacle::MdmConflict],
        &["MDM Update/AllowAutoUpdate=0x2"],
    ));
    assert!(enforcement_notices(&d).is_empty(), "{:?}", d.notices);
    let d = e.feed(report_with_enforcement(HoldEnforcement::Held, vec![], &[]));
    assert!(
        enforcement_notices(&d).is_empty(),
        "Ignore: not the recovery either"
    );
    // A managed endpoint wants no hold: what Windows would do with one is nobody's concern.
    let mut e = healthy(true);
    let d = e.feed(home_report());
    assert!(!hold(&e).held);
    assert!(enforcement_notices(&d).is_empty(), "{:?}", d.notices);
}

#[test]
fn guard_off_does_not_hold_on_failed_rollback() {
    let mut e = healthy(true);
    e.policy.guard_on_failed_rollback = false;
    let d = e.feed(signals(&[SignalKind::FailedRollback]));
    assert!(!hold(&e).held);
    assert!(hold_notices(&d).is_empty());
}

#[test]
fn a_manual_hold_wins_and_a_manual_release_consumes_only_the_guard_before_it() {
    use recast_crds::endpoint::ManualHoldAction;
    let mut e = healthy(true);
    e.spec.manual_update_hold = Some(manual(&e, ManualHoldAction::Hold));
    let d = e.feed(Input::Reconcile);
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Manual);
    assert!(hold_notices(&d)[0].message.contains("ticket 4711"));
    e.spec.manual_update_hold = None;
    e.feed(Input::Reconcile);
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Managed);

    // Immutable, released by hand: updates run.
    e.spec.update_mode = Some(recast_crds::policy::UpdateMode::Immutable);
    e.feed(Input::Reconcile);
    assert_eq!(hold(&e).reason, recast_crds::signal::HoldReason::Immutable);
    e.advance(60);
    e.spec.manual_update_hold = Some(manual(&e, ManualHoldAction::Release));
    e.feed(Input::Reconcile);
    assert_eq!(
        hold(&e).reason,
        recast_crds::signal::HoldReason::ManualRelease
    );
    // A FailedRollback first seen after the release engages the guard again.
    e.spec.paused = true;
    e.advance(60);
    e.feed(signals(&[SignalKind::FailedRollback]));
    assert_eq!(
        hold(&e).reason,
        recast_crds::signal::HoldReason::FailedRollback
    );
    // A release requested after it consumes it.
    e.advance(60);
    e.spec.manual_update_hold = Some(manual(&e, ManualHoldAction::Release));
    e.feed(Input::Reconcile);
    let h = hold(&e);
    assert_eq!(h.reason, recast_crds::signal::HoldReason::ManualRelease);
    assert_eq!(h.guard_engaged_since, None);
}

#[test]
fn the_agent_reading_and_drift_show_in_the_condition_and_events() {
    let mut e = One::new(true);
    e.spec.update_mode = Some(recast_crds::policy::UpdateMode::Immutable);
    e.feed(Input::Reconcile);
    let c = |e: &One| {
        e.status
            .conditions
            .iter()
            .find(|c| c.type_ == "UpdatesHeld")
            .unwrap()
            .clone()
    };
    assert!(
        c(&e).message.contains("no agent report confirms it yet"),
        "{:?}",
        c(&e)
    );
    let with_hold = |held: bool, drift: Vec<String>| {
        Input::AgentReport(ReportSummary {
            setup_state: None,
            boot_time: None,
            network_restart: None,
            build: "26100.7623".into(),
            reported_at: String::new(),
            agent_version: None,
            attempt_id: None,
            update_results: vec![],
            crashes: vec![],
            update_hold: Some(recast_crds::report::EffectiveUpdateHold {
                held,
                drift,
                ..Default::default()
            }),
        })
    };
    e.feed(with_hold(false, vec![]));
    assert_eq!(hold(&e).effective, Some(false));
    assert!(c(&e).message.contains("not in effect yet"), "{:?}", c(&e));
    let d = e.feed(with_hold(true, vec![r"AU\NoAutoUpdate: 0x1 -> 0x0".into()]));
    assert_eq!(hold(&e).effective, Some(true));
    let drift: Vec<_> = d
        .notices
        .iter()
        .filter(|n| n.reason == "UpdateHoldDrift")
        .collect();
    assert_eq!(drift.len(), 1, "{:?}", d.notices);
    assert!(drift[0].message.contains("NoAutoUpdate"));
    assert!(!c(&e).message.contains("not in effect"), "{:?}", c(&e));
}

#[derive(Clone, Debug)]
enum HoldOp {
    Advance(u64),
    FailedRollback(bool),
    Reimage(bool),
    Mode(Option<bool>),
    Guard(bool),
    Manual(Option<bool>),
    Report,
    Restart,
}

fn hold_op() -> impl Strategy<Value = HoldOp> {
    prop_oneof![
        (1u64..20_000).prop_map(HoldOp::Advance),
        any::<bool>().prop_map(HoldOp::FailedRollback),
        prop::bool::weighted(0.7).prop_map(HoldOp::Reimage),
        prop::option::of(any::<bool>()).prop_map(HoldOp::Mode),
        prop::bool::weighted(0.8).prop_map(HoldOp::Guard),
        prop::option::of(any::<bool>()).prop_map(HoldOp::Manual),
        Just(HoldOp::Report),
        Just(HoldOp::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Holds appear and clear exactly as described, over random sequences of signals,
    /// attempts (succeeding or failing), mode and guard switches, manual overrides and
    /// operator restarts.
    #[test]
    fn holds_follow_the_rules_over_random_sequences(ops in prop::collection::vec(hold_op(), 1..60)) {
        use recast_crds::endpoint::ManualHoldAction;
        use recast_crds::policy::UpdateMode;
        let mut e = healthy(true);
        e.policy.cooldown = Duration::from_secs(1);
        // Model: the FailedRollback guard is engaged from the decision that first sees the
        // signal until one that ends an attempt successfully, turns the guard off, or takes a
        // manual release requested after it engaged.
        let mut engaged = false;
        for op in ops {
            let before = hold(&e);
            let mut succeeded = false;
            let mut decisions = Vec::new();
            let mut restart = false;
            match op {
                HoldOp::Advance(s) => {
                    e.advance(s);
                    decisions.push(e.feed(Input::Reconcile));
                }
                HoldOp::FailedRollback(on) => {
                    let kinds: &[SignalKind] = if on { &[SignalKind::FailedRollback] } else { &[] };
                    decisions.push(e.feed(signals(kinds)));
                }
                HoldOp::Reimage(ok) => {
                    if e.status.active_attempt.is_none() {
                        e.spec.reimage_request = Some(ReimageRequest {
                            token: format!("t{}", e.status.attempts_started),
                            reason: "test".into(),
                        });
                        decisions.push(e.feed(Input::Reconcile));
                    }
                    if e.status.active_attempt.is_some() && e.state() == State::ArmingBoot {
                        decisions.push(e.succeed(ActionKind::ArmBoot));
                        decisions.push(e.succeed(ActionKind::PowerCycle));
                        let id = e.attempt_id();
                        decisions.push(e.feed(Input::NetworkBooted { attempt_id: id.clone(), try_number: None, client: None }));
                        if ok {
                            decisions.push(e.feed(Input::ImagingFinished { attempt_id: id.clone(), try_number: None, result: Ok(()) , refusal: None }));
                            e.advance(1);
                            decisions.push(e.feed(report("26100.7623", Some(&id))));
                        } else {
                            decisions.push(e.feed(Input::ImagingFinished { attempt_id: id, try_number: None, result: Err("disk".into()) , refusal: None }));
                        }
                    }
                }
                HoldOp::Mode(m) => {
                    e.spec.update_mode = m.map(|i| if i { UpdateMode::Immutable } else { UpdateMode::Managed });
                    decisions.push(e.feed(Input::Reconcile));
                }
                HoldOp::Guard(g) => {
                    e.policy.guard_on_failed_rollback = g;
                    decisions.push(e.feed(Input::Reconcile));
                }
                HoldOp::Manual(m) => {
                    e.advance(1);
                    e.spec.manual_update_hold = m.map(|h| manual(&e, if h { ManualHoldAction::Hold } else { ManualHoldAction::Release }));
                    decisions.push(e.feed(Input::Reconcile));
                }
                HoldOp::Report => decisions.push(e.feed(report("26100.7462", None))),
                HoldOp::Restart => {
                    // A restarted operator decides again from the stored status.
                    restart = true;
                    decisions.push(e.feed(Input::Reconcile));
                }
            }
            // Replay the model over each decision.
            let mut prev = before.clone();
            for d in &decisions {
                succeeded |= d.notices.iter().any(|n| n.reason == "AttemptSucceeded");
                let h = d.status.update_hold.clone().unwrap();
                let fr_active = d.status.signals.iter().any(|s| s.type_ == recast_crds::signal::SignalKind::FailedRollback);
                let released_after = e.spec.manual_update_hold.as_ref().is_some_and(|m| {
                    m.action == ManualHoldAction::Release
                        && prev.guard_engaged_since.as_deref().is_some_and(|g| time::parse(&m.requested_at) >= time::parse(g))
                });
                if d.notices.iter().any(|n| n.reason == "AttemptSucceeded") || !e.policy.guard_on_failed_rollback || released_after {
                    engaged = false;
                }
                let replaced_at = d.status.history.iter().filter(|h| h.outcome == AttemptOutcome::Succeeded).map(|h| time::parse(&h.finished_at)).max();
                if e.policy.guard_on_failed_rollback && fr_active {
                    let since = d.status.signals.iter().find(|s| s.type_ == recast_crds::signal::SignalKind::FailedRollback).unwrap().since.clone();
                    let stale = replaced_at.is_some_and(|r| r >= time::parse(&since));
                    let released_before = e.spec.manual_update_hold.as_ref().is_some_and(|m| {
                        m.action == ManualHoldAction::Release && time::parse(&m.requested_at) >= time::parse(&since)
                    });
                    if !released_before && !stale {
                        engaged = true;
                    }
                }
                prop_assert_eq!(h.guard_engaged_since.is_some(), engaged, "guard: {:?} after {:?}", h, prev);
                let mode = e.spec.update_mode.unwrap_or(e.policy.update_mode);
                let want = match e.spec.manual_update_hold.as_ref().map(|m| m.action) {
                    Some(ManualHoldAction::Hold) => "Manual",
                    _ if engaged => "FailedRollback",
                    Some(ManualHoldAction::Release) => "ManualRelease",
                    None if mode == UpdateMode::Immutable => "Immutable",
                    None => "Managed",
                };
                prop_assert_eq!(h.reason.as_str(), want);
                prop_assert_eq!(h.held, matches!(want, "Manual" | "FailedRollback" | "Immutable"));
                // Every change is one event; no change, no event; since moves with the change.
                let changed = (h.held, h.reason.as_str()) != (prev.held, prev.reason.as_str());
                let n = hold_notices(d);
                prop_assert_eq!(n.len(), usize::from(changed), "events {:?} for {:?} -> {:?}", n, prev, h);
                if changed {
                    prop_assert_eq!(&n[0].reason, if h.held { "UpdatesHeld" } else { "UpdatesReleased" });
                    prop_assert_eq!(&h.since, &time::format(e.now));
                } else {
                    prop_assert_eq!(&h.since, &prev.since);
                }
                let c = d.status.conditions.iter().find(|c| c.type_ == "UpdatesHeld").unwrap();
                prop_assert_eq!(c.status == recast_crds::ConditionStatus::True, h.held);
                // The gateway's answer, from the same stored facts and signals, agrees.
                let kinds: Vec<SignalKind> = d.status.signals.iter().map(|s| s.type_).collect();
                let answer = super::hold::HoldFacts::of(&e.spec, Some(&d.status), &e.policy)
                    .desired_with(&kinds, &time::format(e.now));
                prop_assert_eq!(answer.reason.as_str(), h.reason.as_str(), "gateway and controller disagree");
                prev = h;
            }
            if restart {
                prop_assert_eq!(&hold(&e), &before, "a restart moved the hold");
            }
            let _ = succeeded;
        }
    }
}

#[test]
fn a_wds_hand_off_ends_the_attempt_and_the_signals_of_the_replaced_machine() {
    use recast_crds::endpoint::{AttemptOutcome, BootServer};
    let mut e = healthy(true);
    e.spec.boot_server = BootServer::Wds;
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    assert_eq!(e.state(), State::Booting);
    let id = e.attempt_id();
    let handed = |attempt: &str, try_number: Option<u32>| Input::HandedOff {
        attempt_id: attempt.into(),
        try_number,
        server: "10.0.40.9".into(),
    };
    // Another attempt's or another try's referral changes nothing.
    for other in [handed("kiosk-01-older", None), handed(&id, Some(9))] {
        let before = e.status.clone();
        let d = e.feed(other);
        assert_eq!(d.status, before);
        assert!(d.actions.is_empty());
    }
    // A referral for an endpoint not in WDS mode (a forged input, a stale boot index) is not
    // a hand-off.
    e.spec.boot_server = BootServer::Recast;
    let before = e.status.clone();
    assert_eq!(e.feed(handed(&id, Some(1))).status, before);
    e.spec.boot_server = BootServer::Wds;
    let d = e.feed(handed(&id, Some(1)));
    assert_eq!(d.edge, Some(crate::transitions::Edge::HandedOff));
    assert_eq!(e.state(), State::Ready);
    assert!(kinds(&d).contains(&ActionKind::DisarmBoot), "{d:?}");
    let h = &e.status.history[0];
    assert_eq!(h.outcome, AttemptOutcome::HandedOff);
    assert!(
        h.message.as_deref().unwrap_or("").contains("10.0.40.9"),
        "{h:?}"
    );
    assert!(e.status.signals.is_empty(), "{:?}", e.status.signals);
    assert!(
        d.notices
            .iter()
            .any(|n| n.reason == "AttemptHandedOff" && n.type_ == NoticeType::Normal),
        "{:?}",
        d.notices
    );
    // A late repeat (DHCP retransmits) finds no attempt and changes nothing.
    let before = e.status.clone();
    assert_eq!(e.feed(handed(&id, Some(1))).status, before);
    // Events before the hand-off describe the machine WDS replaced.
    assert!(crate::derive::last_reimage_end(&e.status).is_some());
    // WDS's own deployment restarts the machine through the network: not a boot loop.
    for _ in 0..5 {
        e.advance(60);
        e.feed(booted(&e));
    }
    assert!(e.status.network_boots.is_empty());
    assert!(e.status.signals.is_empty(), "{:?}", e.status.signals);
}

#[test]
fn a_hand_off_after_the_imaging_environment_started_is_not_one() {
    let mut e = healthy(true);
    e.feed(signals(&[SignalKind::FailedRollback]));
    e.succeed(ActionKind::ArmBoot);
    e.succeed(ActionKind::PowerCycle);
    let id = e.attempt_id();
    e.feed(Input::NetworkBooted {
        try_number: None,
        attempt_id: id.clone(),
        client: Some("10.0.40.17".into()),
    });
    let before = e.status.clone();
    let d = e.feed(Input::HandedOff {
        attempt_id: id,
        try_number: None,
        server: "10.0.40.9".into(),
    });
    assert_eq!(
        d.status, before,
        "recast's own imaging environment holds the try"
    );
}
