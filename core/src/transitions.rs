//! The lifecycle's transition table. `lifecycle::decide` names the edge it takes; the tests
//! check every observed change of state against this table, and docs/lifecycle.md is generated
//! from it, so the diagram cannot drift from the code.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Pending,
    Ready,
    Degraded,
    ReimageScheduled,
    ArmingBoot,
    PowerCycling,
    Booting,
    Applying,
    FirstBoot,
    Failed,
    Quarantined,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Pending,
        State::Ready,
        State::Degraded,
        State::ReimageScheduled,
        State::ArmingBoot,
        State::PowerCycling,
        State::Booting,
        State::Applying,
        State::FirstBoot,
        State::Failed,
        State::Quarantined,
    ];

    /// The steps of phase Reimaging.
    pub fn is_reimaging_step(self) -> bool {
        matches!(
            self,
            State::ArmingBoot
                | State::PowerCycling
                | State::Booting
                | State::Applying
                | State::FirstBoot
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Edge {
    AttemptStarted,
    BootArmed,
    BootArmedNoBmc,
    PowerCycled,
    NetworkBooted,
    ImageApplied,
    HandedOff,
    CheckedIn,
    TryFailed,
    RetryStarted,
    Quarantined,
    Aborted,
    Scheduled,
    SignalRaised,
    Healthy,
    Settled,
}

pub struct Transition {
    pub edge: Edge,
    pub from: &'static [State],
    pub to: &'static [State],
    pub when: &'static str,
}

use State::*;

const STEPS: &[State] = &[ArmingBoot, PowerCycling, Booting, Applying, FirstBoot];

pub const TABLE: &[Transition] = &[
    Transition {
        edge: Edge::AttemptStarted,
        from: &[Pending, Ready, Degraded, ReimageScheduled, Quarantined],
        to: &[ArmingBoot],
        when: "a manual request, a signal whose action is ReimageNow/ReimageInWindow, or a due wave batch, with nothing blocking (protected, paused, unverified image, cooldown, failure budget, window, concurrency); from Quarantined only by a manual request",
    },
    Transition {
        edge: Edge::BootArmed,
        from: &[ArmingBoot],
        to: &[PowerCycling],
        when: "the boot service armed the attempt's network boot; the endpoint has a BMC (Redfish power-cycles it) or, with no BMC and a silent agent, Wake-on-LAN may start it",
    },
    Transition {
        edge: Edge::BootArmedNoBmc,
        from: &[ArmingBoot],
        to: &[Booting],
        when: "network boot armed without a power cycle: the running agent is ordered to restart into the network, a boot loop brings the machine back by itself, or a Warning event asks a person to restart it",
    },
    Transition {
        edge: Edge::PowerCycled,
        from: &[PowerCycling],
        to: &[Booting],
        when: "the BMC set a one-time network boot and power-cycled the machine, or the Wake-on-LAN packets went out (or could not: a Warning then asks a person)",
    },
    Transition {
        edge: Edge::NetworkBooted,
        from: &[PowerCycling, Booting],
        to: &[Applying],
        when: "the boot service handed the machine this attempt's imaging environment",
    },
    Transition {
        edge: Edge::ImageApplied,
        from: &[Booting, Applying],
        to: &[FirstBoot],
        when: "the imaging environment reported the WIM applied; the boot is disarmed",
    },
    Transition {
        edge: Edge::HandedOff,
        from: &[PowerCycling, Booting],
        to: &[Pending, Ready],
        when: "the boot service referred a WDS-mode endpoint (spec.bootServer: wds) to the site's WDS server: WDS deploys the image and recast does not see it finish, so the attempt ends HandedOff, the boot is disarmed and the signals are cleared",
    },
    Transition {
        edge: Edge::CheckedIn,
        from: &[FirstBoot, Failed],
        to: &[Ready],
        when: "the agent checked in from the new image carrying the attempt id, with Windows Setup finished (OOBE complete) and at or above the expected build (also for a try a restore from a backup ended, when the machine reports that it was imaged in the time the backup does not know)",
    },
    Transition {
        edge: Edge::TryFailed,
        from: STEPS,
        to: &[Failed],
        when: "an action failed, imaging failed, the new image reported a low build, or the try timed out; tries remain (backoff doubles)",
    },
    Transition {
        edge: Edge::RetryStarted,
        from: &[Failed],
        to: &[ArmingBoot],
        when: "the backoff elapsed (held while paused)",
    },
    Transition {
        edge: Edge::Quarantined,
        from: STEPS,
        to: &[Quarantined],
        when: "the last try failed, or an error that retrying cannot fix; needs a person (a manual reimage request releases it)",
    },
    Transition {
        edge: Edge::Aborted,
        from: &[ArmingBoot, PowerCycling, Booting, Failed],
        to: &[Pending, Ready, Degraded],
        when: "spec.protected was set before the imaging environment started, the image was revoked (no longer Verified or no longer the endpoint's image) before a retry or a power cycle, or a boot-loop attempt's machine reported or did not come back within bootLoop.within; the boot is disarmed",
    },
    Transition {
        edge: Edge::Scheduled,
        from: &[Pending, Ready, Degraded],
        to: &[ReimageScheduled],
        when: "a reimage is wanted but must wait (window, slot, cooldown, budget, image not Verified, paused)",
    },
    Transition {
        edge: Edge::SignalRaised,
        from: &[Pending, Ready, ReimageScheduled],
        to: &[Degraded],
        when: "a signal is active whose action is AlertOnly (or that nothing may act on)",
    },
    Transition {
        edge: Edge::Healthy,
        from: &[Pending, Degraded, ReimageScheduled],
        to: &[Ready],
        when: "the agent reports and no signal is active",
    },
    Transition {
        edge: Edge::Settled,
        from: &[Degraded, ReimageScheduled],
        to: &[Pending],
        when: "signals cleared before any agent report arrived",
    },
];

pub fn transition(edge: Edge) -> &'static Transition {
    TABLE
        .iter()
        .find(|t| t.edge == edge)
        .unwrap_or_else(|| unreachable!("every Edge has a row in TABLE"))
}

/// docs/lifecycle.md, generated from TABLE.
pub fn render_markdown() -> String {
    let mut out = String::new();
    out.push_str("# Endpoint lifecycle\n\n");
    out.push_str("<!-- Generated from core/src/transitions.rs; do not edit. `make docs` rewrites it. -->\n\n");
    out.push_str("An endpoint's phase is one of Pending, Ready, Degraded, ReimageScheduled, Reimaging, Failed and\nQuarantined; while Reimaging, the active attempt's step is one of ArmingBoot, PowerCycling, Booting,\nApplying and FirstBoot. The diagram shows steps as states. Every change of state the lifecycle core\nmakes is one of the rows below, and the tests fail if the code takes a transition this table does not\nlist.\n\n");
    out.push_str("```mermaid\nstateDiagram-v2\n    [*] --> Pending\n");
    for t in TABLE {
        for from in t.from {
            for to in t.to {
                out.push_str(&format!("    {from:?} --> {to:?}: {:?}\n", t.edge));
            }
        }
    }
    out.push_str("    state Reimaging {\n");
    for s in State::ALL.iter().filter(|s| s.is_reimaging_step()) {
        out.push_str(&format!("        {s:?}\n"));
    }
    out.push_str("    }\n```\n\n");
    out.push_str("| transition | from | to | when |\n|---|---|---|---|\n");
    for t in TABLE {
        let list = |s: &[State]| {
            s.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {:?} | {} | {} | {} |\n",
            t.edge,
            list(t.from),
            list(t.to),
            t.when
        ));
    }
    out.push_str("\nRules that hold in every state (checked by property tests over random event sequences):\n\n");
    for rule in [
        "at most one attempt per endpoint at a time; a restart resumes it (actions are keyed by attempt id, try and action);",
        "a protected endpoint never starts an attempt, and a reimage request made while it is protected is refused and consumed;",
        "a paused endpoint never starts an attempt on its own, and holds retries; a manual request still starts one;",
        "after a restore from a backup (status.restoredAt) nothing starts on its own and no retry starts until the agent reports again or a person requests a reimage;",
        "attempts running at once never exceed the policy's global and per-site limits;",
        "every attempt ends: Ready, retried with backoff, Aborted, or Quarantined after the last try;",
        "HeartbeatLost alone never starts an attempt, whatever the policy says;",
        "an attempt ends successfully only when the agent checks in from the new image with the attempt id and the expected build;",
        "Windows quality updates stay held while the update mode is immutable, and from the first FailedRollback until an attempt has replaced the machine (guardOnFailedRollback), whatever happens in between; every change of the hold is an event (docs/update-hold.md);",
        "a hold Windows will not honour (the agent's verdict NotEnforceable or Overridden) is an event; it starts an attempt only while the FailedRollback guard is engaged and the policy's holdNotEnforced asks for a reimage;",
        "the same inputs always give the same decision.",
    ] {
        out.push_str(&format!("- {rule}\n"));
    }
    out
}
