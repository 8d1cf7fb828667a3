//! From Windows-shaped tool output to signals: the agent's collector reads the replay fixtures
//! (agent/tests/fixtures/replay), and the core's derivation decides. This is the path a real
//! report takes, minus the network.

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use recast_agent::collect::{self, Identity, ReplayRunner};
use recast_agent::simulate::{Scenario, simulated_report};
use recast_core::build::Build;
use recast_core::derive::{DeriveInput, Evidence, derive};
use recast_core::signal::SignalKind;
use recast_crds::policy::UpdateMode;

fn replay(name: &str) -> recast_crds::report::AgentReport {
    replay_in("replay", name)
}

fn replay_in(folder: &str, name: &str) -> recast_crds::report::AgentReport {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(folder)
        .join(name);
    let who = Identity {
        endpoint: "kiosk-01".into(),
        agent_version: "0.1.0".into(),
        attempt_id: None,
        interval_seconds: 300,
    };
    collect::collect(&ReplayRunner { dir }, &who, 1, now()).unwrap()
}

fn now() -> Timestamp {
    "2026-01-15T09:02:11Z".parse().unwrap()
}

fn signals(r: &recast_crds::report::AgentReport, mode: UpdateMode) -> Vec<SignalKind> {
    signals_from(r, mode, "26100.7623".parse().unwrap())
}

fn signals_from(
    r: &recast_crds::report::AgentReport,
    mode: UpdateMode,
    baseline: Build,
) -> Vec<SignalKind> {
    let evidence = Evidence::of(r);
    let input = DeriveInput {
        evidence: Some(&evidence),
        last_report_at: Some(now()),
        now: now(),
        heartbeat_timeout: Duration::from_secs(900),
        minimum_build: Some("26100.7623".parse::<Build>().unwrap()),
        baseline_build: Some(baseline),
        update_mode: mode,
        events_after: None,
    };
    derive(&input).into_iter().map(|(k, _)| k).collect()
}

#[test]
fn replayed_windows_output_gives_the_expected_signals() {
    assert_eq!(
        signals(&replay("failed-rollback"), UpdateMode::Managed),
        [SignalKind::FailedRollback, SignalKind::NonCompliant]
    );
    assert_eq!(
        signals(&replay("boot-crash"), UpdateMode::Managed),
        [
            SignalKind::BootCrash,
            SignalKind::FailedRollback,
            SignalKind::NonCompliant
        ]
    );
    assert!(signals(&replay("healthy"), UpdateMode::Managed).is_empty());
    assert!(signals(&replay("healthy"), UpdateMode::Immutable).is_empty());
}

/// German, French, Japanese and Chinese Windows (titles in their language, tools in their
/// encodings) give the signals English Windows gives: no decision reads a word.
#[test]
fn every_locale_gives_the_signals_english_gives() {
    for scenario in ["failed-rollback", "boot-crash", "healthy"] {
        let en = signals(&replay(scenario), UpdateMode::Managed);
        for locale in ["de-DE", "fr-FR", "ja-JP", "zh-CN"] {
            let r = replay_in("replay-locales", &format!("{locale}/{scenario}"));
            assert_eq!(signals(&r, UpdateMode::Managed), en, "{locale}/{scenario}");
            assert_eq!(
                signals(&r, UpdateMode::Immutable),
                signals(&replay(scenario), UpdateMode::Immutable),
                "{locale}/{scenario}"
            );
        }
    }
    // Without the servicing package's own identity (RollupFix, language-independent), only
    // the localised titles and the Setup log's KB say which update failed: the signal must
    // still come, in every language.
    let without_rollupfix = |mut r: recast_crds::report::AgentReport| {
        r.servicing_events
            .retain(|e| !e.package.starts_with("Package_for_RollupFix"));
        r
    };
    let en = signals(
        &without_rollupfix(replay("failed-rollback")),
        UpdateMode::Managed,
    );
    assert!(en.contains(&SignalKind::FailedRollback), "{en:?}");
    for locale in ["de-DE", "fr-FR", "ja-JP", "zh-CN"] {
        let r = replay_in("replay-locales", &format!("{locale}/failed-rollback"));
        assert_eq!(
            signals(&without_rollupfix(r), UpdateMode::Managed),
            en,
            "{locale}: the title's tail alone"
        );
    }
}

#[test]
fn simulated_scenarios_give_the_expected_signals() {
    let cases = [
        (Scenario::Healthy, 1, vec![]),
        (
            Scenario::FailedRollback,
            0,
            vec![SignalKind::FailedRollback, SignalKind::NonCompliant],
        ),
        (
            Scenario::Crashed,
            0,
            vec![
                SignalKind::BootCrash,
                SignalKind::FailedRollback,
                SignalKind::NonCompliant,
            ],
        ),
        (Scenario::Drifted, 0, vec![]),
        (Scenario::Drifted, 1, vec![SignalKind::Drift]),
        (Scenario::NonCompliant, 0, vec![SignalKind::NonCompliant]),
    ];
    for (scenario, nth, expected) in cases {
        // The gateway takes an endpoint's first report as its baseline.
        let first = simulated_report("sim-00001", scenario, 0, 1, now(), 300);
        let baseline = Build {
            build: first.os.current_build,
            ubr: first.os.ubr,
        };
        let r = simulated_report("sim-00001", scenario, nth, 1, now(), 300);
        assert_eq!(
            signals_from(&r, UpdateMode::Immutable, baseline),
            expected,
            "{scenario:?} report #{nth}"
        );
    }
}
