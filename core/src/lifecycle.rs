//! The endpoint lifecycle: given an endpoint, one input and the context, the next status and
//! the actions to run. Pure: no I/O, no clock, no randomness; the same arguments always give the
//! same decision.
//!
//! Shells persist `Decision::status` before they run `Decision::actions`, and run each action
//! idempotently keyed by (attempt id, try, action), so a restart anywhere resumes the attempt
//! instead of starting a second one.

use std::time::Duration;

use jiff::Timestamp;
use recast_crds::ConditionStatus;
use recast_crds::endpoint::{
    Attempt, AttemptOutcome, AttemptRecord, AttemptTrigger, BootMode, BootServer, EndpointPhase,
    EndpointSpec, EndpointStatus, FirmwareTrust, MAX_HISTORY, MAX_NETWORK_BOOTS, PowerWay,
    ReimageStep, ReportSummary, SignalStatus,
};
use recast_crds::policy::RemediationAction;
use recast_crds::report::NetworkRestartResult;

use super::breaker::is_automatic;
use super::build::Build;
use super::hold::{self, HoldInputs};
use super::policy::PolicyView;
use super::signal::{SignalKind, Urgency};
use super::time;
use super::transitions::{Edge, State};
use super::window;

/// The endpoint as the core sees it.
#[derive(Clone, Copy, Debug)]
pub struct EndpointView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// Object uid; part of attempt ids so a re-created endpoint never reuses one.
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a EndpointSpec,
    pub status: &'a EndpointStatus,
}

/// The GoldenImage the endpoint resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageView {
    pub name: String,
    pub digest: Option<String>,
    /// Only a Verified image is ever served.
    pub verified: bool,
    pub minimum_build: Option<Build>,
}

/// What the limits need from the rest of the fleet. Counts exclude this endpoint. A policy's
/// limits and failure budget are its namespace's own (one tenant can neither take every slot
/// nor halt everyone); the operator's ceiling bounds the whole fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Endpoints in this endpoint's namespace.
    pub namespace_total: u32,
    pub site_total: u32,
    /// Attempts running in this endpoint's namespace.
    pub active_namespace: u32,
    /// Attempts running fleet-wide, and the operator's ceiling on them (None: none).
    pub active_fleet: u32,
    pub fleet_ceiling: Option<u32>,
    pub active_site: u32,
    /// Attempts in this endpoint's namespace that failed (ended Quarantined) within the
    /// policy's failure-budget window.
    pub recent_failures: u32,
    /// The circuit breaker that stops this endpoint's automatic reimages, when one is open.
    pub breaker: Option<(crate::breaker::BreakerScope, crate::breaker::Trip)>,
}

/// A wave this endpoint belongs to: its batch is due now, or the endpoint's running attempt
/// was started by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaveView {
    pub name: String,
    /// The GoldenImage the wave moves endpoints onto (None when it does not resolve). A wave
    /// attempt is served this image, not the one the endpoint's own spec.image resolves to.
    pub image: Option<ImageView>,
}

#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub now: Timestamp,
    pub policy: &'a PolicyView,
    /// Set when the endpoint's policyRef names a policy that does not exist (or does not
    /// parse): automatic remediation stops for it until that is fixed.
    pub policy_problem: Option<&'a str>,
    pub image: Option<&'a ImageView>,
    pub fleet: FleetView,
    pub wave: Option<&'a WaveView>,
}

/// What an executor did with an action.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionError {
    /// A permanent error (wrong credentials, no BMC support) will not go away by retrying: the
    /// endpoint goes straight to Quarantined.
    pub permanent: bool,
    pub message: String,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ActionKind {
    ArmBoot,
    PowerCycle,
    WakeOnLan,
    DisarmBoot,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::ArmBoot => "ArmBoot",
            ActionKind::PowerCycle => "PowerCycle",
            ActionKind::WakeOnLan => "WakeOnLan",
            ActionKind::DisarmBoot => "DisarmBoot",
        }
    }
}

/// Side effects for the shells to run after persisting the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the boot service hand this endpoint the imaging environment on its next network
    /// boot, for this attempt and try.
    ArmBoot {
        attempt_id: String,
        try_number: u32,
        image: String,
        image_digest: Option<String>,
        mac_addresses: Vec<String>,
        boot_mode: BootMode,
    },
    /// Set a one-time network boot on the BMC and power-cycle the machine.
    PowerCycle { attempt_id: String, try_number: u32 },
    /// Send Wake-on-LAN magic packets for the machine's MAC addresses (no BMC, agent silent).
    WakeOnLan {
        attempt_id: String,
        try_number: u32,
        mac_addresses: Vec<String>,
    },
    /// Back to local boot: the imaging environment must never run twice.
    DisarmBoot { attempt_id: String },
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::ArmBoot { .. } => ActionKind::ArmBoot,
            Action::PowerCycle { .. } => ActionKind::PowerCycle,
            Action::WakeOnLan { .. } => ActionKind::WakeOnLan,
            Action::DisarmBoot { .. } => ActionKind::DisarmBoot,
        }
    }

    pub fn attempt_id(&self) -> &str {
        match self {
            Action::ArmBoot { attempt_id, .. }
            | Action::PowerCycle { attempt_id, .. }
            | Action::WakeOnLan { attempt_id, .. }
            | Action::DisarmBoot { attempt_id } => attempt_id,
        }
    }

    /// The key executors deduplicate on: one side effect per attempt, try and action.
    pub fn idempotency_key(&self) -> String {
        let try_number = match self {
            Action::ArmBoot { try_number, .. }
            | Action::PowerCycle { try_number, .. }
            | Action::WakeOnLan { try_number, .. } => *try_number,
            Action::DisarmBoot { .. } => 0,
        };
        format!(
            "{}/{}/{}",
            self.attempt_id(),
            try_number,
            self.kind().as_str()
        )
    }
}

/// Something that happened to the endpoint (or a plain reconcile). Serialisable: the embedded
/// store keeps inputs from the gateway and boot service in an inbox until they are decided.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "data")]
// An agent report is the common input, not the rare large one: boxing it would allocate for
// nearly every input to spare the few small ones a few hundred bytes on the stack.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// Re-evaluate: timers, signals, requests, waves, limits.
    Reconcile,
    /// The current set of signals (replaces the previous set).
    Signals(Vec<(SignalKind, String)>),
    /// The BMC's event log shows a boot crash while the agent is silent (decided by
    /// `derive::bmc_boot_crash`): adds BootCrash to the signals while HeartbeatLost stands.
    /// The agent's next report replaces the set, so a machine that comes back clears it.
    BmcCrash { message: String },
    /// An agent report, already condensed.
    AgentReport(ReportSummary),
    /// The boot service saw the machine network-boot with nothing armed for it (its firmware
    /// then boots the local disk): evidence for BootLoop (see `power::boot_loop`). `at`: when
    /// it saw it (RFC 3339), so a backlog decided late keeps the boots' spacing.
    NetworkBootObserved { at: String },
    ActionSucceeded {
        attempt_id: String,
        try_number: u32,
        action: ActionKind,
    },
    ActionFailed {
        attempt_id: String,
        try_number: u32,
        action: ActionKind,
        error: ActionError,
    },
    /// A machine's imaging environment claimed this attempt's try from the boot service
    /// (`client`: the network address it claimed from; every later imaging call of the try
    /// must come from there).
    ///
    /// Boot-service and imaging inputs name the try they belong to when the sender knows it
    /// (the per-try imaging script does); a message from an earlier, timed-out try is then
    /// ignored instead of acting on the current one.
    NetworkBooted {
        attempt_id: String,
        #[serde(default)]
        try_number: Option<u32>,
        #[serde(default)]
        client: Option<String>,
    },
    /// The imaging environment reports progress (percent of the WIM applied).
    ImagingProgress {
        attempt_id: String,
        #[serde(default)]
        try_number: Option<u32>,
        percent: u8,
        /// Secure Boot as the imaging environment read it, when this report says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secure_boot: Option<bool>,
        /// The firmware's Secure Boot databases, when this report carries them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        firmware: Option<crate::imaging::FirmwareReport>,
    },
    /// The boot service referred the machine of this try to the site's WDS server (the
    /// endpoint's `spec.bootServer: wds`): WDS deploys the image from here, and recast does
    /// not see it finish (no imaging protocol, no agent.json), so the attempt ends handed off.
    HandedOff {
        attempt_id: String,
        #[serde(default)]
        try_number: Option<u32>,
        /// The WDS server it was referred to.
        server: String,
    },
    /// The imaging environment finished: Ok, or the reason it failed; `refusal` when it wrote
    /// nothing on purpose (wrong machine, no single target disk): no retry, a person looks.
    ImagingFinished {
        attempt_id: String,
        #[serde(default)]
        try_number: Option<u32>,
        result: Result<(), String>,
        #[serde(default)]
        refusal: Option<crate::imaging::ImagingRefusal>,
    },
}

pub use crate::notice::{Notice, NoticeType};

/// The first try of an attempt that answers a boot loop: it waits on the loop alone (see
/// `power::power_way`). Later tries (an earlier one reached the machine) use the usual ways.
fn loop_try(a: &Attempt) -> bool {
    a.trigger == AttemptTrigger::BootLoop && a.try_number == 1
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: EndpointStatus,
    pub actions: Vec<Action>,
    pub notices: Vec<Notice>,
    /// Reconcile again after this long even if nothing changes.
    pub requeue_after: Option<Duration>,
    /// The transition taken, if the state changed (see `transitions`).
    pub edge: Option<Edge>,
}

/// How long to wait before looking again while waiting for a window, a slot or a cooldown.
pub const WAIT_REQUEUE: Duration = Duration::from_secs(60);

/// The lifecycle state of a status (phase, or the step while reimaging).
pub fn state_of(status: &EndpointStatus) -> State {
    match (&status.active_attempt, status.phase) {
        (Some(a), _) if a.retry_after.is_some() => State::Failed,
        (Some(a), _) => match a.step {
            ReimageStep::ArmingBoot => State::ArmingBoot,
            ReimageStep::PowerCycling => State::PowerCycling,
            ReimageStep::Booting => State::Booting,
            ReimageStep::Applying => State::Applying,
            ReimageStep::FirstBoot => State::FirstBoot,
        },
        (None, Some(EndpointPhase::Quarantined)) => State::Quarantined,
        (None, Some(EndpointPhase::Ready)) => State::Ready,
        (None, Some(EndpointPhase::Degraded)) => State::Degraded,
        (None, Some(EndpointPhase::ReimageScheduled)) => State::ReimageScheduled,
        (None, _) => State::Pending,
    }
}

struct Run<'a> {
    ep: EndpointView<'a>,
    ctx: Context<'a>,
    now_s: String,
    st: EndpointStatus,
    actions: Vec<Action>,
    notices: Vec<Notice>,
    requeue: Option<Duration>,
    edge: Option<Edge>,
    /// An automatic reimage is wanted and an open circuit breaker holds it.
    breaker_held: bool,
}

/// The lifecycle's one entry point.
/// The build the attempt's new image must report (None: not set, or unreadable).
fn expected_build(a: &Attempt) -> Option<Build> {
    a.expected_build.as_deref().and_then(|b| b.parse().ok())
}

pub fn decide(ep: EndpointView<'_>, input: &Input, ctx: Context<'_>) -> Decision {
    let mut run = Run {
        ep,
        ctx,
        now_s: time::format(ctx.now),
        st: ep.status.clone(),
        actions: Vec::new(),
        notices: Vec::new(),
        requeue: None,
        edge: None,
        breaker_held: false,
    };
    let before = state_of(&run.st);
    run.absorb(input);
    let had_attempt = run.st.active_attempt.is_some();
    if had_attempt {
        run.advance_attempt(input);
    }
    if run.st.active_attempt.is_none() {
        if had_attempt {
            // An attempt ended in this decision: settle, and let the next reconcile (with the
            // cooldown in force) decide whether anything else is wanted.
            let quarantined = run.st.phase == Some(EndpointPhase::Quarantined);
            run.settle_phase(quarantined, None);
        } else {
            run.settle();
        }
    }
    run.reconcile_boot();
    run.reconcile_update_hold();
    run.st.image = ctx.image.map(|i| i.name.clone());
    run.st.observed_generation = ep.generation;
    run.set_conditions();
    if state_of(&run.st) == before {
        run.edge = None;
    }
    Decision {
        status: run.st,
        actions: run.actions,
        notices: run.notices,
        requeue_after: run.requeue,
        edge: run.edge,
    }
}

impl<'a> Run<'a> {
    fn notice(&mut self, type_: NoticeType, reason: &str, message: String) {
        self.notices.push(Notice {
            type_,
            reason: reason.to_string(),
            message,
        });
    }

    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn take(&mut self, edge: Edge) {
        self.edge = Some(edge);
    }

    /// Records what the input says about the endpoint, independent of any attempt.
    fn absorb(&mut self, input: &Input) {
        match input {
            Input::ActionSucceeded {
                action: ActionKind::DisarmBoot,
                ..
            } => {
                self.st.boot_armed = false;
            }
            Input::AgentReport(r) => {
                let mut r = r.clone();
                if r.reported_at.is_empty() {
                    r.reported_at = self.now_s.clone();
                }
                if let Some(h) = &r.update_hold
                    && !h.drift.is_empty()
                {
                    self.notice(
                        NoticeType::Warning,
                        "UpdateHoldDrift",
                        format!(
                            "someone undid the update hold on the endpoint (a user, a GPO or a script); the agent put it back: {}",
                            h.drift.join("; ")
                        ),
                    );
                }
                // Attempt ids are never used twice, even when the store was restored from a
                // backup older than an attempt whose id the machine reports.
                if let Some(n) = r
                    .attempt_id
                    .as_deref()
                    .and_then(|id| self.own_attempt_number(id))
                    && n > self.st.attempts_started
                {
                    self.st.attempts_started = n;
                }
                // A try a restore ended whose machine reports from the new image while Windows
                // Setup still runs: the restore's hold stays until Setup is done (a retry now
                // would wipe a machine finishing its first boot).
                let setup_after_restore = self.in_setup_after_restore(&r);
                self.st.last_report = Some(r);
                // The OS came up: the network boots before it were starts, not a loop.
                self.loop_ended("the agent reported: the OS came up");
                if !setup_after_restore && let Some(at) = self.st.restored_at.take() {
                    self.notice(
                        NoticeType::Normal,
                        "ReportedSinceRestore",
                        format!(
                            "the agent reported after the restore of {at}: decisions go on from what it says"
                        ),
                    );
                }
            }
            Input::Signals(list) => {
                let mut next: Vec<SignalStatus> = Vec::new();
                let mut kinds: Vec<&(SignalKind, String)> = list.iter().collect();
                kinds.sort_by_key(|(k, _)| k.urgency());
                kinds.dedup_by_key(|(k, _)| *k);
                for (kind, message) in kinds {
                    let since = self
                        .st
                        .signals
                        .iter()
                        .find(|s| s.type_ == *kind)
                        .map(|s| s.since.clone())
                        .unwrap_or_else(|| self.now_s.clone());
                    if !self.st.signals.iter().any(|s| s.type_ == *kind) {
                        self.notice(self.signal_notice(*kind), kind.as_str(), message.clone());
                    }
                    next.push(SignalStatus {
                        type_: *kind,
                        since,
                        message: message.clone(),
                    });
                }
                // BootLoop is the boot service's finding, not the gateway's: only an agent
                // report ends it.
                if let Some(l) = self
                    .st
                    .signals
                    .iter()
                    .find(|s| s.type_ == SignalKind::BootLoop)
                    && !next.iter().any(|s| s.type_ == SignalKind::BootLoop)
                {
                    next.push(l.clone());
                    next.sort_by_key(|s| s.type_.urgency());
                }
                self.st.signals = next;
                // The agent may just have gone silent over boots already recorded.
                self.judge_boot_loop();
            }
            Input::NetworkBootObserved { at } => self.network_boot_observed(at),
            Input::BmcCrash { message } => {
                let has = |k: SignalKind| self.st.signals.iter().any(|s| s.type_ == k);
                // Only while the agent is silent: a late BMC finding about a machine that
                // reports again is history.
                if has(SignalKind::HeartbeatLost) && !has(SignalKind::BootCrash) {
                    self.raise_signal(SignalKind::BootCrash, message.clone());
                }
            }
            _ => {}
        }
    }

    /// A network boot with nothing armed: recorded while no attempt runs (an attempt's own
    /// restarts are its business), and a boot loop raises BootLoop.
    fn network_boot_observed(&mut self, at: &str) {
        // A WDS-mode machine's own deployment restarts it through the network after the
        // hand-off: recast cannot tell those boots from a loop, so they are not counted.
        if self.st.active_attempt.is_some() || self.ep.spec.boot_server == BootServer::Wds {
            return;
        }
        // When the boot service saw it (never later than now: a clock ahead must not keep a
        // boot "recent"); decided late after an outage, the boots keep their spacing.
        let at = time::parse(at)
            .filter(|t| *t <= self.ctx.now)
            .unwrap_or(self.ctx.now);
        self.st.network_boots.push(time::format(at));
        self.st.network_boots.sort_by_key(|t| time::parse(t));
        let over = self
            .st
            .network_boots
            .len()
            .saturating_sub(MAX_NETWORK_BOOTS);
        self.st.network_boots.drain(..over);
        self.judge_boot_loop();
    }

    /// Raises BootLoop when the recorded network boots make one (`power::boot_loop`): after a
    /// boot, or when the agent goes silent after boots were recorded.
    fn judge_boot_loop(&mut self) {
        let has = |st: &EndpointStatus, k: SignalKind| st.signals.iter().any(|s| s.type_ == k);
        if self.st.active_attempt.is_some()
            || self.st.network_boots.is_empty()
            || has(&self.st, SignalKind::BootLoop)
        {
            return;
        }
        let Some(message) = crate::power::boot_loop(
            &crate::power::network_boots(&self.st),
            crate::derive::last_report_at(&self.st),
            crate::derive::last_reimage_end(&self.st),
            has(&self.st, SignalKind::HeartbeatLost),
            self.ctx.now,
            self.ctx.policy.boot_loop,
        ) else {
            return;
        };
        self.raise_signal(SignalKind::BootLoop, message);
    }

    /// How a new signal is announced: quietly when the policy ignores it.
    fn signal_notice(&self, kind: SignalKind) -> NoticeType {
        if self.ctx.policy.action_for(kind) == RemediationAction::Ignore {
            NoticeType::Normal
        } else {
            NoticeType::Warning
        }
    }

    /// Adds a signal the lifecycle finds itself (the BMC's crash record, a boot loop), which
    /// the gateway's set does not carry, with its notice.
    fn raise_signal(&mut self, kind: SignalKind, message: String) {
        self.notice(self.signal_notice(kind), kind.as_str(), message.clone());
        self.st.signals.push(SignalStatus {
            type_: kind,
            since: self.now_s.clone(),
            message,
        });
        self.st.signals.sort_by_key(|s| s.type_.urgency());
    }

    /// The boot loop is over (the OS came up, or the machine did not come back): its signal
    /// and the counted boots go, so the same boot requests start nothing more.
    fn loop_ended(&mut self, why: &str) {
        self.st.network_boots.clear();
        if let Some(i) = self
            .st
            .signals
            .iter()
            .position(|s| s.type_ == SignalKind::BootLoop)
        {
            self.st.signals.remove(i);
            self.notice(NoticeType::Normal, "BootLoopEnded", why.to_string());
        }
    }

    // ---- attempts -------------------------------------------------------------------------

    fn advance_attempt(&mut self, input: &Input) {
        let Some(mut a) = self.st.active_attempt.clone() else {
            return;
        };
        if self.join_reimage_request(&a) && loop_try(&a) {
            // A person asked for this reimage: it is theirs now, and no longer waits on the
            // loop alone (nor stops with it).
            a.trigger = AttemptTrigger::Manual;
            if a.step == ReimageStep::Booting {
                a.power_way = Some(PowerWay::Person);
                self.ask_a_person(
                    &a,
                    "a person asked for this reimage while it waited for the boot loop",
                );
            }
        }
        if let Some(retry_after) = a.retry_after.as_deref().and_then(time::parse) {
            // A try the restore ended (its retry time is the restore's own moment): the
            // machine's report says what happened in the time the backup does not know.
            let ended_by_restore =
                self.ep.status.restored_at.is_some() && a.retry_after == self.ep.status.restored_at;
            if ended_by_restore && let Input::AgentReport(r) = input {
                if self.st.restored_at.is_some() && self.in_setup_after_restore(r) {
                    // Imaged in that time, and Windows Setup still running: no retry; the
                    // restore's hold stayed (see absorb), so its next report decides. A
                    // person's request (which lifts the hold) retries on the next pass.
                    return;
                }
                if self.runs_the_attempts_image(&a, r)
                    && recast_crds::report::setup_finished(r.setup_state.as_deref())
                {
                    // Imaged in that time: the attempt succeeded.
                    self.succeed(a, &r.build);
                    return;
                }
                let own = |id: &str| self.own_attempt_number(id);
                if let (Some(theirs), Some(ours)) =
                    (r.attempt_id.as_deref().and_then(own), own(&a.id))
                    && theirs > ours
                {
                    // A later attempt ran in that time: this one is over.
                    let why = format!(
                        "superseded: the machine reports attempt {} (build {}), which ran after the backup the store was restored from",
                        r.attempt_id.as_deref().unwrap_or_default(),
                        r.build
                    );
                    self.end_attempt(a, AttemptOutcome::Aborted, why);
                    self.take(Edge::Aborted);
                    return;
                }
            }
            self.wait_or_retry(a, retry_after);
            return;
        }
        if let Some(why) = self.stop_before_imaging(&a) {
            self.end_attempt(a, AttemptOutcome::Aborted, why);
            self.take(Edge::Aborted);
            return;
        }
        let Some(a) = self.apply_to_try(a, input) else {
            return;
        };
        if let Some(why) = self.loop_over(&a, input) {
            self.actions.clear();
            self.end_loop(a, why);
            return;
        }
        self.reemit_step_action(&a);
        self.time_out_or_go_on(a);
    }

    /// What every attempt id of this endpoint starts with: `NAME-UID8-` (then the number).
    fn attempt_id_prefix(&self) -> String {
        let uid: String = self.ep.uid.chars().filter(|c| *c != '-').take(8).collect();
        format!("{}-{uid}-", self.ep.name)
    }

    /// The number at the end of one of this endpoint's attempt ids.
    fn own_attempt_number(&self, id: &str) -> Option<u32> {
        id.strip_prefix(&self.attempt_id_prefix())?.parse().ok()
    }

    /// Whether `r` comes from the image of the try a restore ended, with Windows Setup not
    /// finished yet.
    fn in_setup_after_restore(&self, r: &ReportSummary) -> bool {
        let Some(a) = &self.st.active_attempt else {
            return false;
        };
        self.ep.status.restored_at.is_some()
            && a.retry_after == self.ep.status.restored_at
            && self.runs_the_attempts_image(a, r)
            && !recast_crds::report::setup_finished(r.setup_state.as_deref())
    }

    /// Whether an agent report says the machine runs the image `a` applied: the attempt's id
    /// (from the agent.json the imaging wrote) and a build that meets the expected one.
    fn runs_the_attempts_image(&self, a: &Attempt, r: &ReportSummary) -> bool {
        let expected = expected_build(a);
        r.attempt_id.as_deref() == Some(a.id.as_str())
            && r.build
                .parse::<Build>()
                .is_ok_and(|got| expected.is_none_or(|min| got.satisfies(min)))
    }

    /// A new manual request while an attempt runs joins it instead of starting another.
    /// A new reimage request joins the running attempt; true when one did.
    fn join_reimage_request(&mut self, a: &Attempt) -> bool {
        if let Some(req) = &self.ep.spec.reimage_request
            && self.st.handled_reimage_token.as_deref() != Some(req.token.as_str())
        {
            // A person asked: a hold after a restore ends (they have looked at the machine).
            self.st.restored_at = None;
            self.st.handled_reimage_token = Some(req.token.clone());
            self.notice(
                NoticeType::Normal,
                "ReimageRequestJoined",
                format!(
                    "reimage request {:?} joins running attempt {}",
                    req.token, a.id
                ),
            );
            return true;
        }
        false
    }

    /// The attempt waits to retry a failed try: it stops (protected, image revoked), holds
    /// (paused), keeps waiting until `retry_after`, or starts the next try.
    fn wait_or_retry(&mut self, a: Attempt, retry_after: Timestamp) {
        if self.ep.spec.protected {
            self.end_attempt(
                a,
                AttemptOutcome::Aborted,
                "endpoint became protected".into(),
            );
            self.take(Edge::Aborted);
            return;
        }
        if self.ep.spec.paused {
            self.st.message = Some(format!(
                "attempt {} try {} failed; retry held while spec.paused is true",
                a.id, a.try_number
            ));
            return;
        }
        if let Some(at) = &self.st.restored_at {
            self.st.message = Some(format!(
                "attempt {} try {}: the store was restored from a backup at {at}; the next try waits for the agent's next report (it ends the attempt if the machine already runs the new image) or a person's `recastctl reimage`",
                a.id, a.try_number
            ));
            return;
        }
        if self.ctx.now < retry_after {
            self.requeue_in(time::since(retry_after, self.ctx.now));
            return;
        }
        if let Some(why) = self.image_revoked(&a) {
            self.end_attempt(a, AttemptOutcome::Aborted, why);
            self.take(Edge::Aborted);
            return;
        }
        self.start_next_try(a);
    }

    /// The next try starts from the beginning: arm the boot again.
    fn start_next_try(&mut self, mut a: Attempt) {
        a.try_number += 1;
        a.retry_after = None;
        a.boot_client = None;
        // Chosen again when the next try's boot is armed (the machine may have changed; see
        // fail_try for the ways not counted on again).
        a.power_way = None;
        a.step = ReimageStep::ArmingBoot;
        a.try_started_at = self.now_s.clone();
        a.step_started_at = self.now_s.clone();
        a.progress_percent = None;
        // Said again by the next try's imaging environment (it may be another machine's).
        a.secure_boot = None;
        self.actions.push(self.arm_boot(&a));
        self.notice(
            NoticeType::Normal,
            "RetryStarted",
            format!(
                "attempt {}: try {} of {}",
                a.id, a.try_number, self.ctx.policy.max_tries
            ),
        );
        self.st.active_attempt = Some(a.clone());
        self.take(Edge::RetryStarted);
        self.requeue_in(self.ctx.policy.try_timeout);
    }

    /// Why a running try must stop before the machine runs the imaging environment, if it
    /// must: protection set before NetworkBooted (the disarm makes the machine's next boot a
    /// local one), or an image revoked before the machine is restarted (never served).
    fn stop_before_imaging(&self, a: &Attempt) -> Option<String> {
        if self.ep.spec.protected
            && matches!(
                a.step,
                ReimageStep::ArmingBoot | ReimageStep::PowerCycling | ReimageStep::Booting
            )
        {
            return Some("endpoint became protected".into());
        }
        if matches!(a.step, ReimageStep::ArmingBoot | ReimageStep::PowerCycling) {
            return self.image_revoked(a);
        }
        None
    }

    /// Why a boot-loop try must stop before its machine takes the armed boot (looked at after
    /// the input was applied, so the machine's own claim always wins): an agent report (the OS
    /// comes up: not a loop, or no longer), or no network boot within the policy's
    /// `bootLoop.within` of arming (a loop would have come back). Either way the boot requests
    /// were not a loop to wipe a machine for.
    fn loop_over(&self, a: &Attempt, input: &Input) -> Option<String> {
        if !loop_try(a)
            || !matches!(
                a.step,
                ReimageStep::ArmingBoot | ReimageStep::PowerCycling | ReimageStep::Booting
            )
        {
            return None;
        }
        if let Input::AgentReport(r) = input
            && r.attempt_id.as_deref() != Some(a.id.as_str())
        {
            return Some(
                "the agent reported after the boot loop was seen: the OS comes up, so the machine is not wiped"
                    .into(),
            );
        }
        if a.step != ReimageStep::Booting {
            return None;
        }
        let booting = time::parse(&a.step_started_at)?;
        let within = self.ctx.policy.boot_loop.within;
        (self.ctx.now >= time::add(booting, within)).then(|| {
            format!(
                "the machine did not network-boot within {} of arming: it is not looping (any more), so it is not wiped; request a reimage if it needs one",
                recast_crds::duration::format(within)
            )
        })
    }

    /// A boot loop's try stopped: the loop is over (the signal and the counted boots go, so
    /// the same boot requests do not start another attempt after the cooldown).
    fn end_loop(&mut self, a: Attempt, why: String) {
        self.loop_ended(&why);
        self.end_attempt(a, AttemptOutcome::Aborted, why);
        self.take(Edge::Aborted);
    }

    /// Moves the try on by what the input says about it (inputs of another attempt, another
    /// try or another step change nothing). Returns the attempt while it still runs; None once
    /// this input ended the try (failed, or the attempt succeeded).
    fn apply_to_try(&mut self, mut a: Attempt, input: &Input) -> Option<Attempt> {
        let matches = |id: &str| id == a.id;
        let current_try = a.try_number;
        let this_try = |t: Option<u32>| t.is_none_or(|t| t == current_try);
        match input {
            Input::ActionSucceeded {
                attempt_id,
                try_number,
                action,
            } if matches(attempt_id) && *try_number == a.try_number => {
                self.action_done(&mut a, *action);
            }
            Input::ActionFailed {
                attempt_id,
                try_number,
                action: ActionKind::WakeOnLan,
                error,
            } if matches(attempt_id)
                && *try_number == a.try_number
                && a.step == ReimageStep::PowerCycling =>
            {
                // Not a reason to fail the try: the machine may be started by hand.
                a.power_way = Some(PowerWay::Person);
                self.enter_step(&mut a, ReimageStep::Booting);
                self.ask_a_person(
                    &a,
                    &format!(
                        "the Wake-on-LAN packets could not be sent ({})",
                        error.message
                    ),
                );
                self.take(Edge::PowerCycled);
            }
            Input::ActionFailed {
                attempt_id,
                try_number,
                action,
                error,
            } if matches(attempt_id)
                && *try_number == a.try_number
                && *action != ActionKind::DisarmBoot =>
            {
                let why = format!("{} failed: {}", action.as_str(), error.message);
                self.fail_try(a, why, error.permanent);
                return None;
            }
            Input::NetworkBooted {
                attempt_id,
                try_number,
                client,
            } if matches(attempt_id)
                && this_try(*try_number)
                && matches!(a.step, ReimageStep::PowerCycling | ReimageStep::Booting) =>
            {
                a.boot_client = client.clone();
                self.enter_step(&mut a, ReimageStep::Applying);
                self.take(Edge::NetworkBooted);
            }
            Input::HandedOff {
                attempt_id,
                try_number,
                server,
            } if matches(attempt_id)
                && this_try(*try_number)
                && self.ep.spec.boot_server == BootServer::Wds
                && matches!(a.step, ReimageStep::PowerCycling | ReimageStep::Booting) =>
            {
                self.hand_off(a, server);
                return None;
            }
            Input::NetworkBooted {
                attempt_id,
                try_number,
                client: Some(client),
            } if matches(attempt_id)
                && this_try(*try_number)
                && matches!(a.step, ReimageStep::Applying | ReimageStep::FirstBoot)
                && a.boot_client.as_deref().is_some_and(|c| c != client) =>
            {
                self.claimed_twice(a, client);
                return None;
            }
            Input::ImagingProgress {
                attempt_id,
                try_number,
                percent,
                secure_boot,
                firmware,
            } if matches(attempt_id)
                && this_try(*try_number)
                && a.step == ReimageStep::Applying =>
            {
                a.progress_percent = Some((*percent).min(100));
                if secure_boot.is_some() {
                    a.secure_boot = *secure_boot;
                }
                if let Some(f) = firmware {
                    self.st.firmware = Some(FirmwareTrust {
                        secure_boot: a.secure_boot,
                        db_certificates: f.db_certificates.clone(),
                        db_hashes: f.db_hashes,
                        dbx_entries: f.dbx_entries,
                        read_by_attempt: a.id.clone(),
                        read_at: self.now_s.clone(),
                    });
                }
            }
            Input::ImagingFinished {
                attempt_id,
                try_number,
                result,
                refusal,
            } if matches(attempt_id)
                && this_try(*try_number)
                && matches!(a.step, ReimageStep::Booting | ReimageStep::Applying) =>
            {
                return self.imaging_finished(a, result, *refusal);
            }
            Input::AgentReport(r)
                if a.step == ReimageStep::Booting && a.power_way == Some(PowerWay::Agent) =>
            {
                self.agent_restart_outcome(&mut a, r);
            }
            Input::AgentReport(r)
                if a.step == ReimageStep::FirstBoot
                    && self.runs_the_attempts_image(&a, r)
                    && !recast_crds::report::setup_finished(r.setup_state.as_deref()) =>
            {
                // The agent's service runs while Windows Setup still waits at OOBE: the
                // machine is not back until Setup has finished (the try's timeout still runs).
                // A wrong build fails at once (the arm below); this waits only for Setup. Said
                // once per state, not with every report.
                let before = self
                    .ep
                    .status
                    .last_report
                    .as_ref()
                    .and_then(|p| p.setup_state.as_deref());
                if before != r.setup_state.as_deref() {
                    self.notice(
                        NoticeType::Normal,
                        "WaitingForSetup",
                        format!(
                            "attempt {} try {}: the new Windows reports, but Setup has not finished (ImageState {}); the attempt ends once OOBE completes",
                            a.id,
                            a.try_number,
                            r.setup_state.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
            Input::AgentReport(r)
                if a.step == ReimageStep::FirstBoot && r.attempt_id.as_deref() == Some(&a.id) =>
            {
                self.first_report(a, r);
                return None;
            }
            _ => {}
        }
        Some(a)
    }

    /// The executor confirmed this try's action: the next step, by the way the machine is
    /// brought to network-boot (`power::power_way`).
    fn action_done(&mut self, a: &mut Attempt, action: ActionKind) {
        match (a.step, action) {
            (ReimageStep::ArmingBoot, ActionKind::ArmBoot) => {
                let way = self.power_way_for(a);
                a.power_way = Some(way);
                match way {
                    PowerWay::Redfish | PowerWay::WakeOnLan => {
                        self.enter_step(a, ReimageStep::PowerCycling);
                        self.actions.push(self.power_action(a));
                        self.take(Edge::BootArmed);
                    }
                    PowerWay::Agent => {
                        self.enter_step(a, ReimageStep::Booting);
                        self.notice(
                            NoticeType::Normal,
                            "AgentRestartOrdered",
                            format!(
                                "attempt {} try {}: no BMC; the agent is told to restart the machine into the network with its next report",
                                a.id, a.try_number
                            ),
                        );
                        self.take(Edge::BootArmedNoBmc);
                    }
                    PowerWay::Loop => {
                        self.enter_step(a, ReimageStep::Booting);
                        self.notice(
                            NoticeType::Normal,
                            "WaitingForLoop",
                            format!(
                                "attempt {} try {}: network boot armed; the looping machine takes it on its next turn (nothing switches it on); the attempt stops if it does not come back within {}",
                                a.id,
                                a.try_number,
                                recast_crds::duration::format(self.ctx.policy.boot_loop.within)
                            ),
                        );
                        self.take(Edge::BootArmedNoBmc);
                    }
                    PowerWay::Person => {
                        self.enter_step(a, ReimageStep::Booting);
                        let why = if a.power_ways_tried.is_empty() {
                            "no BMC and no running agent"
                        } else {
                            "the ways tried before did not bring the machine to network-boot"
                        };
                        self.ask_a_person(a, why);
                        self.take(Edge::BootArmedNoBmc);
                    }
                }
            }
            (ReimageStep::PowerCycling, ActionKind::PowerCycle | ActionKind::WakeOnLan) => {
                self.enter_step(a, ReimageStep::Booting);
                self.take(Edge::PowerCycled);
            }
            _ => {}
        }
    }

    /// How this try's machine is brought to network-boot.
    fn power_way_for(&self, a: &Attempt) -> PowerWay {
        crate::power::power_way(crate::power::PowerFacts::of(
            &self.st,
            self.ep.spec.bmc.is_some(),
            self.ep.spec.wake_on_lan,
            a,
        ))
    }

    /// The action of the PowerCycling step for the try's way.
    fn power_action(&self, a: &Attempt) -> Action {
        match a.power_way {
            Some(PowerWay::WakeOnLan) => Action::WakeOnLan {
                attempt_id: a.id.clone(),
                try_number: a.try_number,
                mac_addresses: self.ep.spec.identity.mac_addresses.clone(),
            },
            _ => Action::PowerCycle {
                attempt_id: a.id.clone(),
                try_number: a.try_number,
            },
        }
    }

    /// The agent's restart or Wake-on-LAN has had `PERSON_GRACE` without a network boot: a
    /// person is asked as well (once: the way becomes Person). Until then, looked at again
    /// when the grace ends.
    fn ask_a_person_after_grace(&mut self, a: &mut Attempt) {
        if a.step != ReimageStep::Booting
            || !matches!(a.power_way, Some(PowerWay::Agent | PowerWay::WakeOnLan))
        {
            return;
        }
        let Some(since) = time::parse(&a.step_started_at) else {
            return;
        };
        let grace_end = time::add(since, crate::power::PERSON_GRACE);
        if self.ctx.now < grace_end {
            self.requeue_in(time::since(grace_end, self.ctx.now));
            return;
        }
        let way = a.power_way.take().unwrap_or(PowerWay::Person);
        if !a.power_ways_tried.contains(&way) {
            a.power_ways_tried.push(way);
        }
        a.power_way = Some(PowerWay::Person);
        let why = format!(
            "{} did not bring the machine to network-boot within {}",
            match way {
                PowerWay::Agent => "the agent's restart into the network",
                _ => "Wake-on-LAN",
            },
            recast_crds::duration::format(crate::power::PERSON_GRACE)
        );
        self.ask_a_person(a, &why);
    }

    /// The last way: a Warning asks a person to restart the machine.
    fn ask_a_person(&mut self, a: &Attempt, why: &str) {
        self.notice(
            NoticeType::Warning,
            "PowerCycleNeeded",
            format!(
                "attempt {} try {}: {why}; network boot is armed, restart the machine to start imaging",
                a.id, a.try_number
            ),
        );
    }

    /// What the agent did with this try's restart order (its report carries the outcome):
    /// scheduled is recorded once; a refusal falls back to the next way (the machine runs, so
    /// a person).
    fn agent_restart_outcome(&mut self, a: &mut Attempt, r: &ReportSummary) {
        let Some(o) = r
            .network_restart
            .as_ref()
            .filter(|o| o.attempt_id == a.id && o.try_number == a.try_number)
        else {
            return;
        };
        let seen_before = self
            .ep
            .status
            .last_report
            .as_ref()
            .and_then(|r| r.network_restart.as_ref())
            == Some(o);
        match o.result {
            NetworkRestartResult::Scheduled if !seen_before => {
                self.notice(
                    NoticeType::Normal,
                    "AgentRestartScheduled",
                    format!(
                        "attempt {} try {}: the agent set a one-time network boot ({}) and scheduled the restart",
                        a.id, a.try_number, o.detail
                    ),
                );
            }
            NetworkRestartResult::Scheduled => {}
            NetworkRestartResult::Refused(why) => {
                // The agent just reported: the machine runs, so a person (Wake-on-LAN would
                // do nothing, whatever an older HeartbeatLost still says).
                a.power_way = Some(PowerWay::Person);
                self.notice(
                    NoticeType::Warning,
                    "AgentRestartRefused",
                    format!(
                        "attempt {} try {}: the agent could not restart into the network ({why:?}: {})",
                        a.id, a.try_number, o.detail
                    ),
                );
                self.ask_a_person(
                    a,
                    "the agent could not restart the machine into the network",
                );
            }
        }
    }

    /// A second machine claims a try another one already holds: one of them is not the
    /// endpoint. Nothing it could do is trusted (the try's files, result and enrollment were
    /// bound to the first claimant), so the attempt stops for a person to look.
    fn claimed_twice(&mut self, a: Attempt, client: &str) {
        let first = a.boot_client.clone().unwrap_or_default();
        self.notice(
            NoticeType::Warning,
            "ImagingClaimConflict",
            format!(
                "attempt {} try {}: claimed from {first}, then from {client}; another machine on the provisioning network asked for this endpoint's imaging",
                a.id, a.try_number
            ),
        );
        let why = format!(
            "two machines claimed the imaging try ({first} and {client}); check the provisioning network for an impostor"
        );
        self.fail_try(a, why, true);
    }

    /// The imaging environment finished: on to the first boot of the new image, or the try
    /// failed (None).
    fn imaging_finished(
        &mut self,
        mut a: Attempt,
        result: &Result<(), String>,
        refusal: Option<crate::imaging::ImagingRefusal>,
    ) -> Option<Attempt> {
        match result {
            Ok(()) => {
                a.progress_percent = Some(100);
                self.enter_step(&mut a, ReimageStep::FirstBoot);
                // Local boot from now on: the imaging environment must not run again.
                self.actions.push(Action::DisarmBoot {
                    attempt_id: a.id.clone(),
                });
                self.take(Edge::ImageApplied);
                Some(a)
            }
            Err(e) => match refusal {
                // The imaging environment wrote nothing on purpose; another try would see the
                // same machine and the same disks.
                Some(refusal) => {
                    self.notice(
                        NoticeType::Warning,
                        refusal.reason(),
                        format!(
                            "attempt {} try {}: the imaging environment wrote nothing: {e}; {}",
                            a.id,
                            a.try_number,
                            refusal.next_step()
                        ),
                    );
                    self.fail_try(a, format!("imaging refused: {e}"), true);
                    None
                }
                None => {
                    self.fail_try(a, format!("imaging failed: {e}"), false);
                    None
                }
            },
        }
    }

    /// The new image's first agent report ends the attempt: it succeeds when the build it
    /// reports is readable and at least the one the attempt expects.
    fn first_report(&mut self, a: Attempt, r: &ReportSummary) {
        let expected = expected_build(&a);
        let got = r.build.parse::<Build>().ok();
        match (got, expected) {
            (Some(got), Some(min)) if !got.satisfies(min) => {
                let why = format!("the new image reported build {got}, below the required {min}");
                self.fail_try(a, why, false);
            }
            (None, _) => {
                let why = format!("the new image reported an unreadable build {:?}", r.build);
                self.fail_try(a, why, false);
            }
            _ => self.succeed(a, &r.build),
        }
    }

    /// Re-emits the action the current step waits for. Executors deduplicate on the
    /// idempotency key, so after a restart this resumes the step instead of repeating it.
    fn reemit_step_action(&mut self, a: &Attempt) {
        match a.step {
            ReimageStep::ArmingBoot if self.actions.is_empty() => {
                self.actions.push(self.arm_boot(a));
            }
            ReimageStep::PowerCycling if self.actions.is_empty() => {
                self.actions.push(self.power_action(a));
            }
            _ => {}
        }
    }

    /// The try fails when its time is up; otherwise the attempt goes on, looked at again by
    /// the deadline.
    fn time_out_or_go_on(&mut self, mut a: Attempt) {
        if loop_try(&a)
            && a.step == ReimageStep::Booting
            && let Some(booting) = time::parse(&a.step_started_at)
        {
            let end = time::add(booting, self.ctx.policy.boot_loop.within);
            self.requeue_in(time::since(end, self.ctx.now));
        }
        let started = time::parse(&a.try_started_at).unwrap_or(self.ctx.now);
        let deadline = time::add(started, self.ctx.policy.try_timeout);
        if self.ctx.now >= deadline {
            let why = format!(
                "try {} timed out after {} in step {:?}",
                a.try_number,
                recast_crds::duration::format(self.ctx.policy.try_timeout),
                a.step
            );
            self.actions.clear();
            self.fail_try(a, why, false);
            return;
        }
        self.requeue_in(time::since(deadline, self.ctx.now));
        self.ask_a_person_after_grace(&mut a);
        self.st.message = Some(format!(
            "attempt {} try {}/{}: {:?}",
            a.id, a.try_number, self.ctx.policy.max_tries, a.step
        ));
        self.st.phase = Some(EndpointPhase::Reimaging);
        self.st.active_attempt = Some(a);
    }

    /// Why the attempt's image may no longer be served (not Verified any more, or the endpoint
    /// now resolves to another image or digest); None while it still may.
    fn image_revoked(&self, a: &Attempt) -> Option<String> {
        match self.image_for(a.trigger) {
            Some(i) if i.verified && i.name == a.image && i.digest == a.image_digest => None,
            Some(i) if i.name == a.image && !i.verified => Some(format!(
                "GoldenImage {} is no longer Verified; attempt stopped before serving it",
                a.image
            )),
            _ => Some(format!(
                "the endpoint no longer resolves to GoldenImage {} at the same digest; attempt stopped",
                a.image
            )),
        }
    }

    fn enter_step(&mut self, a: &mut Attempt, step: ReimageStep) {
        a.step = step;
        a.step_started_at = self.now_s.clone();
        self.notice(
            NoticeType::Normal,
            &format!("{step:?}"),
            format!("attempt {} try {}: {step:?}", a.id, a.try_number),
        );
    }

    /// The boot must be armed only while a try needs it (ArmingBoot to Applying, not waiting to
    /// retry). Whenever it may still be armed otherwise, ask for the disarm again: a disarm lost
    /// to a crash, a lost lease or an API error is retried on every reconcile until confirmed.
    fn reconcile_boot(&mut self) {
        if self.actions.iter().any(|a| a.kind() == ActionKind::ArmBoot) {
            self.st.boot_armed = true;
            return;
        }
        let needed = self.st.active_attempt.as_ref().is_some_and(|a| {
            a.retry_after.is_none()
                && matches!(
                    a.step,
                    ReimageStep::ArmingBoot
                        | ReimageStep::PowerCycling
                        | ReimageStep::Booting
                        | ReimageStep::Applying
                )
        });
        if self.st.boot_armed
            && !needed
            && !self
                .actions
                .iter()
                .any(|a| a.kind() == ActionKind::DisarmBoot)
        {
            let attempt_id = self
                .st
                .active_attempt
                .as_ref()
                .map(|a| a.id.clone())
                .or_else(|| self.st.history.first().map(|h| h.id.clone()))
                .unwrap_or_default();
            self.actions.push(Action::DisarmBoot { attempt_id });
        }
    }

    fn arm_boot(&self, a: &Attempt) -> Action {
        Action::ArmBoot {
            attempt_id: a.id.clone(),
            try_number: a.try_number,
            image: a.image.clone(),
            image_digest: a.image_digest.clone(),
            mac_addresses: self.ep.spec.identity.mac_addresses.clone(),
            boot_mode: self.ep.spec.boot_mode,
        }
    }

    fn fail_try(&mut self, mut a: Attempt, why: String, permanent: bool) {
        self.actions.push(Action::DisarmBoot {
            attempt_id: a.id.clone(),
        });
        // The try ends before its machine network-booted: its way (the agent's restart,
        // Wake-on-LAN) brought nothing, and the next try does not count on it again. (The BMC
        // and a loop are asked again; a person is always the last way.)
        if matches!(a.step, ReimageStep::PowerCycling | ReimageStep::Booting)
            && let Some(w @ (PowerWay::Agent | PowerWay::WakeOnLan)) = a.power_way
            && !a.power_ways_tried.contains(&w)
        {
            a.power_ways_tried.push(w);
        }
        if permanent || a.try_number >= self.ctx.policy.max_tries {
            let message = if permanent {
                format!("{why} (not retryable); fix the cause, then request a reimage")
            } else {
                format!(
                    "{why}; all {} tries failed; inspect the machine, then request a reimage",
                    a.try_number
                )
            };
            self.end_attempt(a, AttemptOutcome::Failed, message);
            self.st.phase = Some(EndpointPhase::Quarantined);
            self.take(Edge::Quarantined);
            return;
        }
        let wait = self.ctx.policy.backoff_before(a.try_number + 1);
        a.retry_after = Some(time::format(time::add(self.ctx.now, wait)));
        a.last_error = Some(why.clone());
        self.notice(
            NoticeType::Warning,
            "TryFailed",
            format!(
                "attempt {} try {}/{}: {why}; retrying in {}",
                a.id,
                a.try_number,
                self.ctx.policy.max_tries,
                recast_crds::duration::format(wait)
            ),
        );
        self.st.phase = Some(EndpointPhase::Failed);
        self.st.message = Some(format!("try {} failed: {why}", a.try_number));
        self.st.active_attempt = Some(a);
        self.requeue_in(wait);
        self.take(Edge::TryFailed);
    }

    fn succeed(&mut self, a: Attempt, build: &str) {
        self.st.current_image_digest = a.image_digest.clone();
        // The signals described the machine that was replaced.
        self.st.signals.clear();
        let msg = format!("reimaged onto {} (build {build})", a.image);
        self.end_attempt(a, AttemptOutcome::Succeeded, msg);
        self.st.phase = Some(EndpointPhase::Ready);
        self.take(Edge::CheckedIn);
    }

    /// The machine went to the site's WDS server: recast's part of the reimage is over. The
    /// signals go with the machine they described (WDS replaces it; a machine that was not
    /// replaced reports its state again), as after a reimage recast watched to the end.
    fn hand_off(&mut self, a: Attempt, server: &str) {
        self.st.signals.clear();
        let msg = format!(
            "referred to the site's WDS server {server}, which deploys the image; recast does not see WDS finish, so this attempt ends here and the agent's next report is the new machine's"
        );
        self.end_attempt(a, AttemptOutcome::HandedOff, msg);
        // Ready once an agent reported (from either machine); Pending while none ever has.
        self.st.phase = Some(if self.st.last_report.is_some() {
            EndpointPhase::Ready
        } else {
            EndpointPhase::Pending
        });
        self.take(Edge::HandedOff);
    }

    fn end_attempt(&mut self, a: Attempt, outcome: AttemptOutcome, message: String) {
        // Whatever the outcome, the machine's next network boot must be a local boot.
        if !self
            .actions
            .iter()
            .any(|x| x.kind() == ActionKind::DisarmBoot)
        {
            self.actions.push(Action::DisarmBoot {
                attempt_id: a.id.clone(),
            });
        }
        let t = if matches!(
            outcome,
            AttemptOutcome::Succeeded | AttemptOutcome::HandedOff
        ) {
            NoticeType::Normal
        } else {
            NoticeType::Warning
        };
        self.notice(
            t,
            &format!("Attempt{outcome:?}"),
            format!("attempt {}: {message}", a.id),
        );
        self.st.history.insert(
            0,
            AttemptRecord {
                id: a.id,
                trigger: a.trigger,
                reason: a.reason,
                image: a.image,
                wave: a.wave,
                outcome,
                tries: a.try_number,
                started_at: a.started_at,
                finished_at: self.now_s.clone(),
                message: Some(message.clone()),
                secure_boot: a.secure_boot,
            },
        );
        self.st.history.truncate(MAX_HISTORY);
        self.st.active_attempt = None;
        self.st.message = Some(message);
    }

    // ---- no attempt running ----------------------------------------------------------------

    /// The image an attempt with `trigger` is served: the wave's for a wave attempt, else the
    /// one the endpoint's spec.image resolves to.
    fn image_for(&self, trigger: AttemptTrigger) -> Option<&'a ImageView> {
        if trigger == AttemptTrigger::Wave {
            self.ctx.wave.and_then(|w| w.image.as_ref())
        } else {
            self.ctx.image
        }
    }

    /// What would start a reimage now, most urgent first, with the policy action that applies.
    fn wanted(&self) -> Option<(AttemptTrigger, String, RemediationAction)> {
        if let Some(req) = &self.ep.spec.reimage_request
            && self.st.handled_reimage_token.as_deref() != Some(req.token.as_str())
        {
            return Some((
                AttemptTrigger::Manual,
                format!("requested: {}", req.reason),
                RemediationAction::ReimageNow,
            ));
        }
        let mut candidates: Vec<(SignalKind, RemediationAction, String)> = self
            .st
            .signals
            .iter()
            .map(|s| {
                (
                    s.type_,
                    self.ctx.policy.action_for(s.type_),
                    s.message.clone(),
                )
            })
            .collect();
        // The FailedRollback guard protects the machine only while Windows honours the hold;
        // where it cannot, the policy may ask for the reimage the hold was standing in for.
        if let Some((action, why)) = self.unenforced_guard() {
            candidates.push((SignalKind::FailedRollback, action, why));
        }
        let mut best: Option<(SignalKind, RemediationAction, String)> = None;
        for (kind, action, message) in candidates {
            if !matches!(
                action,
                RemediationAction::ReimageNow | RemediationAction::ReimageInWindow
            ) {
                continue;
            }
            let better = best.as_ref().is_none_or(|(k, a, _)| {
                kind.urgency() < k.urgency()
                    || (kind == *k
                        && action == RemediationAction::ReimageNow
                        && *a == RemediationAction::ReimageInWindow)
            });
            if better {
                best = Some((kind, action, message));
            }
        }
        if let Some((kind, action, message)) = best {
            let trigger = match kind {
                SignalKind::FailedRollback => AttemptTrigger::FailedRollback,
                SignalKind::BootCrash => AttemptTrigger::BootCrash,
                SignalKind::BootLoop => AttemptTrigger::BootLoop,
                SignalKind::Drift => AttemptTrigger::Drift,
                SignalKind::NonCompliant | SignalKind::HeartbeatLost => {
                    AttemptTrigger::NonCompliant
                }
            };
            return Some((trigger, format!("{kind}: {message}"), action));
        }
        // A wave reimages an endpoint once: an attempt it already started (whatever its
        // outcome) is the wave's answer for this endpoint, even if the wave's view lags.
        let done_for_wave = |w: &WaveView| {
            self.st
                .history
                .iter()
                .any(|h| h.wave.as_deref() == Some(&w.name))
        };
        self.ctx.wave.filter(|w| !done_for_wave(w)).map(|w| {
            (
                AttemptTrigger::Wave,
                format!("wave {}", w.name),
                RemediationAction::ReimageNow,
            )
        })
    }

    /// Why a wanted reimage cannot start now; None when it can.
    /// What an open circuit breaker says, when one holds this endpoint's automatic reimages.
    fn breaker_message(&self) -> Option<String> {
        let (scope, trip) = self.ctx.fleet.breaker?;
        let ns = self.ep.namespace;
        Some(match scope {
            crate::breaker::BreakerScope::Namespace => trip.explain(
                &format!("namespace {ns}"),
                &format!(
                    "`recastctl breaker status -n {ns}`, then `recastctl breaker reset -n {ns} --reason ...`"
                ),
            ),
            crate::breaker::BreakerScope::Fleet => trip.explain(
                "the whole fleet",
                "the operator's administrator runs `recastctl breaker reset --fleet --operator-namespace NS --reason ...`",
            ),
        })
    }

    fn blocker(&self, trigger: AttemptTrigger, action: RemediationAction) -> Option<String> {
        let manual = trigger == AttemptTrigger::Manual;
        let automatic = !manual && trigger != AttemptTrigger::Wave;
        if self.ep.spec.paused && !manual {
            return Some("spec.paused is true: no reimage starts on its own".into());
        }
        // The status before this input counts too: the report that ends the wait is fresh,
        // but the signals beside it are not decided yet (the gateway posts them next).
        if let Some(at) = self
            .st
            .restored_at
            .as_ref()
            .or(self.ep.status.restored_at.as_ref())
            && !manual
        {
            return Some(format!(
                "the store was restored from a backup at {at}: nothing starts on its own until the agent reports again (if the machine cannot report, `recastctl reimage` it)"
            ));
        }
        if self.ctx.policy_problem.is_some() && automatic {
            return self
                .ctx
                .policy_problem
                .map(|p| format!("{p}; automatic remediation is off for this endpoint"));
        }
        let Some(image) = self.image_for(trigger) else {
            if trigger == AttemptTrigger::Wave {
                return Some(
                    "the wave's GoldenImage does not exist; check the wave's spec.image".into(),
                );
            }
            return Some(
                "no GoldenImage resolves for spec.image; check the name or channel".into(),
            );
        };
        if !image.verified {
            return Some(format!(
                "GoldenImage {} is not Verified; recast never serves an unverified image",
                image.name
            ));
        }
        if automatic {
            if let Some(why) = self.breaker_message() {
                return Some(why);
            }
            if let Some(last) = self.st.history.first()
                && let Some(finished) = time::parse(&last.finished_at)
            {
                let until = time::add(finished, self.ctx.policy.cooldown);
                if self.ctx.now < until {
                    return Some(format!(
                        "cooldown: the last reimage ended at {}; next possible at {}",
                        last.finished_at,
                        time::format(until)
                    ));
                }
            }
            let f = self.ctx.fleet;
            if self.ctx.policy.budget_spent(f.recent_failures) {
                return Some(format!(
                    "remediation halted in namespace {}: {} attempts failed within {} (budget {}); investigate, then raise the budget or wait",
                    self.ep.namespace,
                    f.recent_failures,
                    recast_crds::duration::format(self.ctx.policy.budget_window),
                    self.ctx.policy.budget_max_failures
                ));
            }
            if action == RemediationAction::ReimageInWindow {
                match self
                    .ctx
                    .policy
                    .window
                    .as_ref()
                    .map(|w| window::is_open(w, self.ctx.now))
                {
                    Some(Ok(true)) => {}
                    Some(Ok(false)) => return Some("waiting for the maintenance window".into()),
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return Some("the policy has no maintenance window".into()),
                }
            }
        }
        let f = self.ctx.fleet;
        if let Some(ceiling) = f.fleet_ceiling
            && f.active_fleet >= ceiling
        {
            return Some(format!(
                "waiting for a slot: {}/{ceiling} reimages running fleet-wide (the operator's --max-concurrent-reimages)",
                f.active_fleet
            ));
        }
        let global = self.ctx.policy.global_limit(f.namespace_total.max(1));
        if f.active_namespace >= global {
            return Some(format!(
                "waiting for a slot: {}/{global} reimages running in namespace {} (the policy's concurrency.global)",
                f.active_namespace, self.ep.namespace
            ));
        }
        if let Some(site_limit) = self.ctx.policy.per_site_limit(f.site_total.max(1))
            && f.active_site >= site_limit
        {
            return Some(format!(
                "waiting for a slot: {}/{site_limit} reimages running in site {}",
                f.active_site,
                self.ep.spec.site.as_deref().unwrap_or("(none)")
            ));
        }
        None
    }

    fn settle(&mut self) {
        let quarantined = self.st.phase == Some(EndpointPhase::Quarantined);
        let wanted = self.wanted();

        // A request to reimage a protected machine is refused and consumed, so lifting the
        // protection later never wipes it by surprise.
        if self.ep.spec.protected {
            if let Some(req) = &self.ep.spec.reimage_request
                && self.st.handled_reimage_token.as_deref() != Some(req.token.as_str())
            {
                self.st.handled_reimage_token = Some(req.token.clone());
                self.notice(
                    NoticeType::Warning,
                    "ReimageRefused",
                    "reimage request refused: the endpoint is protected; set spec.protected=false first".into(),
                );
            }
            self.settle_phase(quarantined, None);
            return;
        }

        if let Some((trigger, reason, action)) = wanted {
            if quarantined && trigger != AttemptTrigger::Manual {
                self.settle_phase(true, None);
                return;
            }
            match self.blocker(trigger, action) {
                None => self.start_attempt(trigger, reason),
                Some(why) => {
                    self.requeue_in(WAIT_REQUEUE);
                    // The breaker, and not an earlier guard (paused, no image, ...), holds it.
                    let by_breaker =
                        is_automatic(trigger) && self.breaker_message().as_ref() == Some(&why);
                    self.breaker_held = by_breaker;
                    let was = self.st.message.clone();
                    self.settle_phase(quarantined, Some(why.clone()));
                    // An open breaker is a Warning a person must act on: said once per
                    // endpoint and trip (a new message), not on every reconcile.
                    if by_breaker && was.as_deref() != Some(why.as_str()) {
                        self.notice(NoticeType::Warning, "BreakerOpen", why);
                    }
                }
            }
            return;
        }
        self.settle_phase(quarantined, None);
    }

    /// Phase with no attempt running. `blocked` carries why a wanted reimage waits.
    fn settle_phase(&mut self, quarantined: bool, blocked: Option<String>) {
        let next = if quarantined {
            EndpointPhase::Quarantined
        } else if blocked.is_some() {
            EndpointPhase::ReimageScheduled
        } else if self
            .st
            .signals
            .iter()
            .any(|s| self.ctx.policy.action_for(s.type_) != RemediationAction::Ignore)
        {
            EndpointPhase::Degraded
        } else if self.st.last_report.is_none() {
            EndpointPhase::Pending
        } else {
            EndpointPhase::Ready
        };
        let changed = self.st.phase != Some(next);
        self.st.phase = Some(next);
        match (&blocked, next) {
            (Some(why), _) => self.st.message = Some(why.clone()),
            (None, EndpointPhase::Quarantined) => {}
            (None, EndpointPhase::Degraded) if self.ep.spec.protected => {
                self.st.message =
                    Some("protected: recast reports but never reimages this endpoint".into())
            }
            (None, EndpointPhase::Degraded) => {
                let kinds: Vec<&str> = self.st.signals.iter().map(|s| s.type_.as_str()).collect();
                self.st.message = Some(format!("signals: {} (alert only)", kinds.join(", ")))
            }
            (None, _) => self.st.message = None,
        }
        // An attempt that just ended already named the transition.
        if changed && self.edge.is_none() {
            self.take(match next {
                EndpointPhase::ReimageScheduled => Edge::Scheduled,
                EndpointPhase::Degraded => Edge::SignalRaised,
                EndpointPhase::Ready => Edge::Healthy,
                _ => Edge::Settled,
            });
            // A new endpoint's first status (Pending) is not news; everything after is.
            let first_status = self.ep.status.phase.is_none();
            match (&blocked, next) {
                _ if first_status && next == EndpointPhase::Pending => {}
                (Some(why), EndpointPhase::ReimageScheduled) => {
                    self.notice(NoticeType::Normal, "ReimageScheduled", why.clone())
                }
                (_, EndpointPhase::Ready) => self.notice(
                    NoticeType::Normal,
                    "Ready",
                    "agent reports and no signal is active".into(),
                ),
                (_, EndpointPhase::Degraded) => {
                    let msg = self.st.message.clone().unwrap_or_default();
                    self.notice(NoticeType::Warning, "Degraded", msg)
                }
                (_, EndpointPhase::Pending) => self.notice(
                    NoticeType::Normal,
                    "Pending",
                    "waiting for the first agent report".into(),
                ),
                _ => {}
            }
        }
    }

    fn start_attempt(&mut self, trigger: AttemptTrigger, reason: String) {
        let Some(image) = self.image_for(trigger) else {
            return;
        };
        if trigger == AttemptTrigger::Manual
            && let Some(req) = &self.ep.spec.reimage_request
        {
            self.st.handled_reimage_token = Some(req.token.clone());
            // A person asked: a hold after a restore ends (they have looked at the machine).
            self.st.restored_at = None;
        }
        self.st.attempts_started += 1;
        let a = Attempt {
            power_ways_tried: vec![],
            id: format!("{}{}", self.attempt_id_prefix(), self.st.attempts_started),
            trigger,
            reason: reason.clone(),
            image: image.name.clone(),
            image_digest: image.digest.clone(),
            wave: self
                .ctx
                .wave
                .filter(|_| trigger == AttemptTrigger::Wave)
                .map(|w| w.name.clone()),
            step: ReimageStep::ArmingBoot,
            try_number: 1,
            started_at: self.now_s.clone(),
            try_started_at: self.now_s.clone(),
            step_started_at: self.now_s.clone(),
            expected_build: image.minimum_build.map(|b| b.to_string()),
            progress_percent: None,
            last_error: None,
            retry_after: None,
            secure_boot: None,
            power_way: None,
            boot_client: None,
        };
        self.actions.push(self.arm_boot(&a));
        self.notice(
            NoticeType::Normal,
            "AttemptStarted",
            format!(
                "attempt {} ({trigger:?}): reimaging onto {}: {reason}",
                a.id, a.image
            ),
        );
        self.st.phase = Some(EndpointPhase::Reimaging);
        self.st.message = Some(format!(
            "attempt {} try 1/{}: ArmingBoot",
            a.id, self.ctx.policy.max_tries
        ));
        self.st.active_attempt = Some(a);
        self.requeue_in(self.ctx.policy.try_timeout);
        self.take(Edge::AttemptStarted);
    }

    /// The reimage the FailedRollback guard asks for when Windows will not hold the machine
    /// (see [`hold::unenforced_guard`]).
    fn unenforced_guard(&self) -> Option<(RemediationAction, String)> {
        hold::unenforced_guard(
            &hold::desired(&self.hold_inputs()),
            self.hold_read_back(),
            self.ctx.policy.hold_not_enforced,
        )
    }

    /// What the hold depends on, from this decision's status.
    fn hold_inputs(&self) -> HoldInputs<'_> {
        HoldInputs::of(
            self.ep.spec,
            self.ctx.policy,
            &self.st.signals,
            &self.st.history,
            self.st.update_hold.as_ref(),
        )
    }

    /// What the agent last read back of the hold (its verdict, evidence, drift).
    fn hold_read_back(&self) -> Option<&recast_crds::report::EffectiveUpdateHold> {
        self.st
            .last_report
            .as_ref()
            .and_then(|r| r.update_hold.as_ref())
    }

    /// The update hold follows every decision: signals, attempts ending, the spec's mode and
    /// manual override all move it (see `hold`).
    fn reconcile_update_hold(&mut self) {
        let (next, notices) = hold::next(
            &self.hold_inputs(),
            self.hold_read_back(),
            self.ctx.policy.hold_not_enforced,
            &self.now_s,
        );
        self.notices.extend(notices);
        self.st.update_hold = Some(next);
    }

    // ---- conditions ------------------------------------------------------------------------

    fn set_conditions(&mut self) {
        let phase = self.st.phase;
        let reimaging = self.st.active_attempt.is_some();
        let ready = phase == Some(EndpointPhase::Ready);
        self.condition(
            "Ready",
            ready,
            &format!("{:?}", phase.unwrap_or(EndpointPhase::Pending)),
            self.st.message.clone().unwrap_or_default(),
        );
        let (reason, message) = match (&self.st.active_attempt, self.breaker_held) {
            (Some(a), _) => (
                "AttemptRunning",
                format!("attempt {} try {}: {:?}", a.id, a.try_number, a.step),
            ),
            // A reimage is wanted and the breaker holds it: the condition says why.
            (None, true) => ("BreakerOpen", self.st.message.clone().unwrap_or_default()),
            (None, false) => ("Idle", String::new()),
        };
        self.condition("Reimaging", reimaging, reason, message);
        let min = self.ctx.image.and_then(|i| i.minimum_build);
        let build = self
            .st
            .last_report
            .as_ref()
            .and_then(|r| r.build.parse::<Build>().ok());
        // The channel (or spec.image) moved on to another verified image since this endpoint
        // was last reimaged: NonCompliant, for a wave to handle, never an instant reimage.
        let moved = self.ctx.image.filter(|i| i.verified).and_then(|i| {
            let current = self.st.current_image_digest.as_deref()?;
            (i.digest.as_deref() != Some(current)).then(|| i.name.clone())
        });
        match (build, min) {
            (Some(b), Some(m)) if b.satisfies(m) && moved.is_some() => self.condition(
                "Compliant",
                false,
                "NewerImage",
                format!(
                    "build {b} meets the minimum {m}, but spec.image now resolves to GoldenImage {}; a wave moves this endpoint onto it",
                    moved.unwrap_or_default()
                ),
            ),
            (Some(b), Some(m)) => self.condition(
                "Compliant",
                b.satisfies(m),
                if b.satisfies(m) {
                    "AtOrAboveMinimum"
                } else {
                    "BelowMinimum"
                },
                format!("build {b}, minimum {m}"),
            ),
            _ => self.condition_unknown("Compliant", "NoReportOrImage"),
        }
        let connected = self.st.last_report.is_some()
            && !self
                .st
                .signals
                .iter()
                .any(|s| s.type_ == SignalKind::HeartbeatLost);
        self.condition(
            "AgentConnected",
            connected,
            if connected {
                "Reporting"
            } else {
                "NoRecentReport"
            },
            self.st
                .last_report
                .as_ref()
                .map(|r| format!("last report {}", r.reported_at))
                .unwrap_or_else(|| "no agent report yet".into()),
        );
        self.update_hold_condition();
    }

    fn update_hold_condition(&mut self) {
        let Some(h) = self.st.update_hold.clone() else {
            return;
        };
        let applied = match (h.effective, self.hold_read_back()) {
            (Some(e), _) if e == h.held => String::new(),
            (Some(_), Some(r)) if h.held && r.enforcement.is_some() => {
                format!("; not in effect: {}", hold::describe_enforcement(r))
            }
            (Some(e), _) => format!(
                "; not in effect yet: the agent last read the hold back as {}",
                if e { "held" } else { "released" }
            ),
            (None, _) if h.held => "; no agent report confirms it yet".into(),
            (None, _) => String::new(),
        };
        self.condition(
            "UpdatesHeld",
            h.held,
            h.reason.as_str(),
            format!("{} (since {}){applied}", h.message, h.since),
        );
    }

    fn condition(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        let status = if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        self.put_condition(type_, status, reason, message);
    }

    fn condition_unknown(&mut self, type_: &str, reason: &str) {
        self.put_condition(type_, ConditionStatus::Unknown, reason, String::new());
    }

    fn put_condition(
        &mut self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: String,
    ) {
        recast_crds::common::set_condition(
            &mut self.st.conditions,
            type_,
            status,
            reason,
            message,
            &self.now_s,
            self.ep.generation,
        );
    }
}
