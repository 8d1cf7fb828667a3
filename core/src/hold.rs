//! The update hold: whether Windows quality updates must stay held on an endpoint, why, and
//! since when. Pure: the lifecycle calls [`next`] on every decision, and the gateway calls
//! [`desired`] to answer each report with the hold the agent must apply.
//!
//! The January 2026 boot failures happened when the *next* cumulative update landed on a
//! machine whose previous one had failed and rolled back. So the guard engages the moment a
//! FailedRollback is seen and stays engaged until a reimage replaces the machine; a signal that
//! later disappears from the agent's reports (an event log rotated, an update installed on top
//! of the improper state) does not prove the machine sound, only a replacement does.
//!
//! Precedence, first match wins:
//! 1. a manual `Hold` (`recastctl hold`): held, reason `Manual`;
//! 2. the guard engaged (a FailedRollback seen, `guardOnFailedRollback` on, no successful reimage
//!    since, and no manual `Release` requested after it was first seen): held, `FailedRollback`;
//! 3. a manual `Release` (`recastctl release`): released, `ManualRelease`;
//! 4. update mode `immutable`: held, `Immutable`;
//! 5. otherwise released, `Managed`.

use jiff::Timestamp;
use recast_crds::endpoint::{
    AttemptOutcome, AttemptRecord, EndpointSpec, ManualHoldAction, ManualUpdateHold, SignalStatus,
    UpdateHoldStatus,
};
use recast_crds::policy::{RemediationAction, UpdateMode};
use recast_crds::report::{DesiredUpdateHold, EffectiveUpdateHold, HoldEnforcement, HoldObstacle};

use super::notice::{Notice, NoticeType};
use super::policy::PolicyView;
use super::signal::SignalKind;
use super::time;
pub use recast_crds::signal::HoldReason;

/// The endpoint's update mode: its own override, else its policy's.
pub fn effective_mode(spec: &EndpointSpec, policy: &PolicyView) -> UpdateMode {
    spec.update_mode.unwrap_or(policy.update_mode)
}

/// Everything the hold depends on.
#[derive(Clone, Copy, Debug)]
pub struct HoldInputs<'a> {
    pub mode: UpdateMode,
    pub guard_on_failed_rollback: bool,
    /// The endpoint's active signals (`status.signals`).
    pub signals: &'a [SignalStatus],
    /// Finished attempts, newest first (`status.history`).
    pub history: &'a [AttemptRecord],
    pub manual: Option<&'a ManualUpdateHold>,
    /// The hold as the last decision left it.
    pub previous: Option<&'a UpdateHoldStatus>,
}

impl<'a> HoldInputs<'a> {
    pub fn of(
        spec: &'a EndpointSpec,
        policy: &PolicyView,
        signals: &'a [SignalStatus],
        history: &'a [AttemptRecord],
        previous: Option<&'a UpdateHoldStatus>,
    ) -> Self {
        HoldInputs {
            mode: effective_mode(spec, policy),
            guard_on_failed_rollback: policy.guard_on_failed_rollback,
            signals,
            history,
            manual: spec.manual_update_hold.as_ref(),
            previous,
        }
    }
}

/// The hold recast wants now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub reason: HoldReason,
    pub message: String,
    /// When the FailedRollback that engaged the guard was first seen; None while disengaged.
    pub guard_engaged_since: Option<String>,
}

impl Desired {
    pub fn held(&self) -> bool {
        self.reason.held()
    }

    /// The hold as the gateway tells the agent.
    pub fn to_reply(&self) -> DesiredUpdateHold {
        DesiredUpdateHold {
            held: self.held(),
            reason: self.reason.as_str().to_string(),
        }
    }
}

/// `a` is at or after `b`; an unparsable time counts as "long ago", so a damaged field can
/// never release a guard.
fn at_or_after(a: &str, b: &str) -> bool {
    match (time::parse(a), time::parse(b)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// When the most recent reimage that replaced the machine ended.
fn replaced_at(history: &[AttemptRecord]) -> Option<&str> {
    history
        .iter()
        .filter(|h| h.outcome == AttemptOutcome::Succeeded)
        .map(|h| h.finished_at.as_str())
        .max_by_key(|t| time::parse(t).unwrap_or(Timestamp::MIN))
}

/// Whether the FailedRollback guard is engaged, and since when.
fn guard(i: &HoldInputs<'_>) -> Option<String> {
    if !i.guard_on_failed_rollback {
        return None;
    }
    let replaced = replaced_at(i.history);
    // Status times have one-second resolution and a whole attempt can fit in one second (in
    // tests, at least). A FailedRollback first seen in the second the machine was replaced
    // describes the replaced machine (a report in flight), not the new one.
    let still_improper = |since: &str| replaced.is_none_or(|r| !at_or_after(r, since));
    let latched = i
        .previous
        .and_then(|p| p.guard_engaged_since.as_deref())
        .filter(|s| still_improper(s));
    let seen_now = i
        .signals
        .iter()
        .find(|s| s.type_ == SignalKind::FailedRollback)
        .map(|s| s.since.as_str())
        .filter(|s| still_improper(s));
    let since = latched.or(seen_now)?;
    // A manual release consumes the guard engaged before it; a FailedRollback first seen
    // after the release is new evidence and engages it again.
    if let Some(m) = i.manual
        && m.action == ManualHoldAction::Release
        && at_or_after(&m.requested_at, since)
    {
        return seen_now
            .filter(|s| !at_or_after(&m.requested_at, s))
            .map(str::to_string);
    }
    Some(since.to_string())
}

/// The hold recast wants, from the inputs alone.
pub fn desired(i: &HoldInputs<'_>) -> Desired {
    let guard_engaged_since = guard(i);
    let by = |m: &ManualUpdateHold| {
        m.requested_by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default()
    };
    let (reason, message) = match (i.manual, &guard_engaged_since) {
        (Some(m), _) if m.action == ManualHoldAction::Hold => (
            HoldReason::Manual,
            format!(
                "held by hand{} at {}: {}; `recastctl release` or removing spec.manualUpdateHold ends it",
                by(m),
                m.requested_at,
                m.reason
            ),
        ),
        (_, Some(since)) => (
            HoldReason::FailedRollback,
            format!(
                "a cumulative update failed and rolled back (first seen {since}): quality updates stay held until a reimage replaces the machine"
            ),
        ),
        (Some(m), None) => (
            HoldReason::ManualRelease,
            format!(
                "released by hand{} at {}: {}; remove spec.manualUpdateHold to return to the {} mode",
                by(m),
                m.requested_at,
                m.reason,
                mode_word(i.mode)
            ),
        ),
        (None, None) if i.mode == UpdateMode::Immutable => (
            HoldReason::Immutable,
            "update mode immutable: quality updates stay held; patches arrive as reimages onto a newer golden image".into(),
        ),
        (None, None) => (
            HoldReason::Managed,
            "update mode managed: Windows Update runs".into(),
        ),
    };
    Desired {
        reason,
        message,
        guard_engaged_since,
    }
}

fn mode_word(m: UpdateMode) -> &'static str {
    match m {
        UpdateMode::Managed => "managed",
        UpdateMode::Immutable => "immutable",
    }
}

/// The next `status.updateHold`, and the events to record: when the hold changed, and when
/// what Windows will do with it (the agent's read-back) changed.
///
/// `since` moves only when `held` or `reason` changes, so re-deciding the same facts (a
/// reconcile, an operator restart) changes nothing and records nothing. An endpoint's first
/// hold status is an event only when it is a hold: a new managed endpoint is quiet.
pub fn next(
    i: &HoldInputs<'_>,
    read_back: Option<&EffectiveUpdateHold>,
    not_enforced: RemediationAction,
    now: &str,
) -> (UpdateHoldStatus, Vec<Notice>) {
    let d = desired(i);
    let held = d.held();
    let reason = d.reason;
    let unchanged = i
        .previous
        .is_some_and(|p| p.held == held && p.reason == reason);
    let since = match i.previous {
        Some(p) if unchanged => p.since.clone(),
        _ => now.to_string(),
    };
    let mut notices = Vec::new();
    match i.previous {
        _ if unchanged => {}
        None if !held => {}
        _ => notices.push(Notice {
            type_: if held {
                NoticeType::Warning
            } else {
                NoticeType::Normal
            },
            reason: if held {
                "UpdatesHeld"
            } else {
                "UpdatesReleased"
            }
            .into(),
            message: format!("{reason}: {}", d.message),
        }),
    }
    let before = i.previous.and_then(|p| p.enforcement);
    // A report without a read-back (the agent's reg.exe failed: a collection error) says
    // nothing about Windows: the last verdict stands, so the next one is not news twice.
    let enforcement = match read_back {
        Some(r) => r.enforcement,
        None => before,
    };
    if held && enforcement != before && not_enforced != RemediationAction::Ignore {
        match read_back {
            Some(r) if r.enforcement.is_some_and(HoldEnforcement::fails) => {
                notices.push(Notice {
                    type_: NoticeType::Warning,
                    reason: "UpdateHoldNotEnforced".into(),
                    message: format!(
                        "{}; {}",
                        describe_enforcement(r),
                        consequence(&d, not_enforced)
                    ),
                });
            }
            Some(r)
                if r.enforcement == Some(HoldEnforcement::Held)
                    && before.is_some_and(HoldEnforcement::fails) =>
            {
                notices.push(Notice {
                    type_: NoticeType::Normal,
                    reason: "UpdateHoldEnforced".into(),
                    message: "Windows honours the update hold again".into(),
                });
            }
            _ => {}
        }
    }
    (
        UpdateHoldStatus {
            held,
            reason,
            message: d.message,
            since,
            guard_engaged_since: d.guard_engaged_since,
            effective: read_back.map(|r| r.held),
            enforcement,
        },
        notices,
    )
}

/// What Windows will do with the hold, in words, with the agent's evidence.
pub fn describe_enforcement(r: &EffectiveUpdateHold) -> String {
    let evidence = if r.evidence.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.evidence.join("; "))
    };
    match r.enforcement {
        None => format!(
            "the agent read the hold back as {}",
            if r.held { "held" } else { "released" }
        ),
        Some(HoldEnforcement::Held) => "Windows will hold quality updates".into(),
        Some(HoldEnforcement::Pending) => format!(
            "recast's policy values are written and Windows Update has not applied them yet{evidence}"
        ),
        Some(HoldEnforcement::NotInPlace) => {
            format!("recast's policy values are not all in place{evidence}")
        }
        Some(HoldEnforcement::Released) => "no hold is in place".into(),
        Some(HoldEnforcement::Overridden) => format!(
            "Windows does not honour the hold: recast's policy values are in place, but Windows Update's effective policy shows no pause{evidence}; find the policy source that wins (an MDM ring, a GPO) and pause quality updates there"
        ),
        Some(HoldEnforcement::NotEnforceable) => {
            let remedies: Vec<&str> = r.obstacles.iter().map(|o| remedy(*o)).collect();
            format!(
                "Windows will not honour the hold on this machine{evidence}: {}",
                remedies.join("; ")
            )
        }
    }
}

/// What a person can do about one obstacle.
fn remedy(o: HoldObstacle) -> &'static str {
    match o {
        HoldObstacle::HomeEdition => {
            "Windows Home ignores Windows Update policy; move the machine to a Pro or Enterprise image"
        }
        HoldObstacle::WsusManaged => {
            "its updates come from WSUS; decline the next cumulative update for this machine there"
        }
        HoldObstacle::ConfigMgrManaged => {
            "Configuration Manager installs its updates; exclude this machine from the next cumulative update's deployment"
        }
        HoldObstacle::MdmConflict => {
            "an MDM update ring contradicts the hold; exclude this device from the ring or pause quality updates in it"
        }
    }
}

/// What recast does about a hold Windows will not honour.
fn consequence(d: &Desired, action: RemediationAction) -> String {
    let reimage = match action {
        RemediationAction::ReimageNow => Some("now"),
        RemediationAction::ReimageInWindow => Some("in the maintenance window"),
        RemediationAction::AlertOnly | RemediationAction::Ignore => None,
    };
    match (reimage, d.reason == HoldReason::FailedRollback) {
        (Some(when), true) => format!(
            "the FailedRollback guard cannot protect this machine, so recast reimages it {when} (RemediationPolicy holdNotEnforced: {action:?})"
        ),
        (Some(_), false) => format!(
            "recast only alerts: the hold is for {} and a reimage would not make Windows honour it",
            d.reason
        ),
        (None, _) => format!("recast only alerts (RemediationPolicy holdNotEnforced: {action:?})"),
    }
}

/// The reimage the FailedRollback guard needs when Windows will not hold the machine: the
/// guard is engaged, the agent's last read-back says the hold is not enforced, and the
/// policy's `holdNotEnforced` asks for a reimage. The action and why.
pub fn unenforced_guard(
    d: &Desired,
    read_back: Option<&EffectiveUpdateHold>,
    action: RemediationAction,
) -> Option<(RemediationAction, String)> {
    // Only the guard's own hold: a manual hold or an immutable one wins over it and is not
    // something a reimage ends.
    if d.reason != HoldReason::FailedRollback {
        return None;
    }
    let r = read_back.filter(|r| r.enforcement.is_some_and(HoldEnforcement::fails))?;
    matches!(
        action,
        RemediationAction::ReimageNow | RemediationAction::ReimageInWindow
    )
    .then(|| {
        (
            action,
            format!(
                "the update hold that guards this machine is not enforced: {}",
                describe_enforcement(r)
            ),
        )
    })
}

/// What the gateway keeps of an endpoint's hold between reads of the store, to answer each
/// report with the hold the agent must apply without waiting for the controller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HoldFacts {
    pub mode: UpdateMode,
    pub guard_on_failed_rollback: bool,
    pub manual: Option<ManualUpdateHold>,
    pub history: Vec<AttemptRecord>,
    /// The signals in the stored status, for when each was first seen.
    pub signals: Vec<SignalStatus>,
    pub previous: Option<UpdateHoldStatus>,
}

impl HoldFacts {
    pub fn of(
        spec: &EndpointSpec,
        status: Option<&recast_crds::endpoint::EndpointStatus>,
        policy: &PolicyView,
    ) -> Self {
        HoldFacts {
            mode: effective_mode(spec, policy),
            guard_on_failed_rollback: policy.guard_on_failed_rollback,
            manual: spec.manual_update_hold.clone(),
            history: status.map(|s| s.history.clone()).unwrap_or_default(),
            signals: status.map(|s| s.signals.clone()).unwrap_or_default(),
            previous: status.and_then(|s| s.update_hold.clone()),
        }
    }

    /// The hold with the signals the gateway has just derived (`current`) in place of the
    /// stored ones: a report that reveals a FailedRollback is answered with a hold at once,
    /// before the controller has decided anything.
    pub fn desired_with(&self, current: &[SignalKind], now: &str) -> Desired {
        let signals: Vec<SignalStatus> = current
            .iter()
            .map(|k| SignalStatus {
                type_: *k,
                since: self
                    .signals
                    .iter()
                    .find(|s| s.type_ == *k)
                    .map(|s| s.since.clone())
                    .unwrap_or_else(|| now.to_string()),
                message: String::new(),
            })
            .collect();
        desired(&HoldInputs {
            mode: self.mode,
            guard_on_failed_rollback: self.guard_on_failed_rollback,
            signals: &signals,
            history: &self.history,
            manual: self.manual.as_ref(),
            previous: self.previous.as_ref(),
        })
    }
}
