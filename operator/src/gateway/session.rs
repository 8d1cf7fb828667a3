//! What the gateway remembers about one endpoint between reports, and the pure decisions on
//! each report: the sequence check, what changed, and which inputs the controller must get.
//!
//! The store sees a write only when something changed: a new summary (build, attempt id,
//! update results, crashes), a different set of signals, or, at most once per heartbeat
//! period, the fact that the endpoint is still reporting.

use std::time::Duration;

use jiff::Timestamp;
use recast_crds::endpoint::{CrashSummary, ReportSummary, UpdateResultSummary};
use recast_crds::policy::UpdateMode;
use recast_crds::report::{AgentReport, ServicingOutcome, UpdateOutcome};

use recast_core::build::Build;
use recast_core::derive::{DeriveInput, Evidence, derive};
use recast_core::hold::HoldFacts;
use recast_core::signal::{SignalKind, Urgency};
use recast_core::time;

/// Update results and crashes kept in the status summary.
pub const SUMMARY_ITEMS: usize = 10;

/// A report whose `collectedAt` is outside the window the gateway accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Staleness {
    #[error(
        "collectedAt {collected_at} is {}s old, more than the gateway's --gateway-max-report-age ({}s): send a freshly collected report (and check the endpoint's clock)",
        .age.as_secs(), .limit.as_secs()
    )]
    TooOld {
        collected_at: String,
        age: Duration,
        limit: Duration,
    },
    #[error(
        "collectedAt {collected_at} is {}s in the future, more than the gateway's --gateway-max-clock-skew ({}s): fix the endpoint's clock (or the gateway's)",
        .ahead.as_secs(), .limit.as_secs()
    )]
    Future {
        collected_at: String,
        ahead: Duration,
        limit: Duration,
    },
    #[error("collectedAt {0:?} is not an RFC 3339 UTC time")]
    Unreadable(String),
}

/// Whether a report collected at `collected_at` is fresh at `now`: no older than `max_age`,
/// no further ahead than `max_skew` (clocks differ a little; a report from the future is a
/// forged or a broken clock).
pub fn check_fresh(
    collected_at: &str,
    now: Timestamp,
    max_age: Duration,
    max_skew: Duration,
) -> Result<(), Staleness> {
    let at = time::parse(collected_at).ok_or_else(|| Staleness::Unreadable(collected_at.into()))?;
    if at > now {
        let ahead = time::since(at, now);
        if ahead > max_skew {
            return Err(Staleness::Future {
                collected_at: collected_at.into(),
                ahead,
                limit: max_skew,
            });
        }
        return Ok(());
    }
    let age = time::since(now, at);
    if age > max_age {
        return Err(Staleness::TooOld {
            collected_at: collected_at.into(),
            age,
            limit: max_age,
        });
    }
    Ok(())
}

/// The store's facts the derivation needs, read once and cached for a while.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointFacts {
    pub heartbeat_timeout: Duration,
    pub update_mode: UpdateMode,
    pub minimum_build: Option<Build>,
    /// End of the last successful reimage: older events describe the replaced machine.
    pub events_after: Option<Timestamp>,
    /// The last report the store holds (status.lastReport), whichever gateway process took
    /// it: a report another process received is not silence (at most the heartbeat period
    /// old, which must stay below the heartbeat timeout).
    pub stored_report_at: Option<Timestamp>,
    /// What the reply's update hold depends on.
    pub hold: HoldFacts,
    /// The restart-into-the-network order the reply carries (see `power::restart_order`).
    pub restart_order: Option<recast_crds::report::NetworkRestartOrder>,
}

/// What the store held when the session started (after a gateway restart, say).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredState {
    pub last_report_at: Option<Timestamp>,
    pub build: Option<Build>,
    pub signals: Vec<(SignalKind, String)>,
    pub sequence: u64,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub last_sequence: u64,
    /// The highest sequence the credential store has; the flusher catches up to
    /// `last_sequence`.
    pub persisted_sequence: u64,
    /// What the last report showed, condensed to what derivation needs: a session lives as
    /// long as the process for every endpoint, so the full report would be most of the
    /// gateway's memory.
    pub evidence: Option<Evidence>,
    pub last_report_at: Option<Timestamp>,
    /// The build recast last saw with its blessing (for Drift).
    pub baseline: Option<Build>,
    /// The digest of the summary last handed to the controller (reported_at blanked): all a
    /// comparison needs, at 32 bytes instead of the summary's strings.
    posted_summary: Option<SummaryDigest>,
    posted_summary_at: Option<Timestamp>,
    posted_signals: Vec<SignalKind>,
    /// Signals the store had when this session began; they stand until a report replaces them
    /// (a restart must never drop a FailedRollback just because no report arrived yet).
    carried_signals: Vec<(SignalKind, String)>,
    /// A Drift the store had when this session began. The baseline it was measured against is
    /// not stored (the status keeps only the drifted build), so it stands until a reimage's
    /// first report replaces the machine; it must not vanish because the gateway restarted.
    sticky_drift: Option<String>,
}

/// SHA-256 of a summary's JSON: equal digests mean equal summaries.
type SummaryDigest = [u8; 32];

fn summary_digest(summary: &ReportSummary) -> SummaryDigest {
    // Serialising a struct is deterministic (fields in declaration order), so equal summaries
    // give equal bytes; a derived Serialize cannot fail.
    let json = serde_json::to_vec(summary).unwrap_or_default();
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &json).as_ref());
    out
}

/// Inputs for the controller, in this order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Writes {
    pub report: Option<ReportSummary>,
    pub signals: Option<Vec<(SignalKind, String)>>,
}

impl Writes {
    pub fn count(&self) -> u64 {
        u64::from(self.report.is_some()) + u64::from(self.signals.is_some())
    }
}

/// Why a report was refused by the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub last: u64,
}

fn kinds(list: &[(SignalKind, String)]) -> Vec<SignalKind> {
    let mut k: Vec<SignalKind> = list.iter().map(|(k, _)| *k).collect();
    k.sort();
    k.dedup();
    k
}

/// The condensed report the lifecycle keeps in status.lastReport.
pub fn summarize(r: &AgentReport, now: Timestamp) -> ReportSummary {
    let mut update_results: Vec<(String, UpdateResultSummary)> = Vec::new();
    for u in &r.update_events {
        let result = match u.outcome {
            UpdateOutcome::Installed => "Installed",
            UpdateOutcome::Failed => "Failed",
            UpdateOutcome::Started => continue,
        };
        update_results.push((
            u.time.clone(),
            UpdateResultSummary {
                update: u.title.clone(),
                result: result.into(),
                time: u.time.clone(),
            },
        ));
    }
    for s in &r.servicing_events {
        let result = match s.outcome {
            ServicingOutcome::Succeeded => "Installed",
            ServicingOutcome::Failed => "Failed",
            ServicingOutcome::FailedPartiallyInstalled => "RolledBack",
            ServicingOutcome::RebootRequired => "Pending",
            ServicingOutcome::Initiated => continue,
        };
        update_results.push((
            s.time.clone(),
            UpdateResultSummary {
                update: s.package.clone(),
                result: result.into(),
                time: s.time.clone(),
            },
        ));
    }
    // Newest first by time (RFC 3339 strings of one zone sort like times only when their
    // precision matches, so compare parsed values).
    update_results.sort_by_key(|(t, _)| {
        std::cmp::Reverse(recast_crds::report::parse_timestamp(t).unwrap_or(Timestamp::MIN))
    });
    update_results.truncate(SUMMARY_ITEMS);
    let mut crashes: Vec<CrashSummary> = r
        .crashes
        .iter()
        .filter_map(|c| {
            Some(CrashSummary {
                bugcheck_code: format!("0x{:08x}", c.bugcheck_code?),
                time: c.time.clone(),
                source: "agent".into(),
            })
        })
        .collect();
    crashes.sort_by_key(|c| {
        std::cmp::Reverse(recast_crds::report::parse_timestamp(&c.time).unwrap_or(Timestamp::MIN))
    });
    crashes.truncate(SUMMARY_ITEMS);
    ReportSummary {
        boot_time: r.boot_time.clone(),
        network_restart: r.network_restart.clone(),
        build: r.os.build_string(),
        reported_at: time::format(now),
        agent_version: Some(r.agent_version.clone()),
        attempt_id: r.attempt_id.clone(),
        update_results: update_results.into_iter().map(|(_, u)| u).collect(),
        crashes,
        update_hold: r.update_hold.clone(),
        setup_state: r.setup_state.clone(),
    }
}

impl Session {
    pub fn new(stored: StoredState) -> Self {
        let sticky_drift = stored
            .signals
            .iter()
            .find(|(k, _)| *k == SignalKind::Drift)
            .map(|(_, m)| m.clone());
        Session {
            sticky_drift,
            last_sequence: stored.sequence,
            persisted_sequence: stored.sequence,
            evidence: None,
            last_report_at: stored.last_report_at,
            baseline: stored.build,
            posted_summary: None,
            posted_summary_at: stored.last_report_at,
            posted_signals: kinds(&stored.signals),
            carried_signals: stored.signals,
        }
    }

    /// A new token means a new sequence space (what the credential store holds for it).
    pub fn reset_sequence(&mut self, stored: u64) {
        self.last_sequence = stored;
        self.persisted_sequence = stored;
    }

    /// Replay protection: the sequence must exceed the last accepted one.
    pub fn check_sequence(&self, sequence: u64) -> Result<(), Replayed> {
        if sequence > self.last_sequence {
            Ok(())
        } else {
            Err(Replayed {
                last: self.last_sequence,
            })
        }
    }

    fn signals_now(&self, facts: &EndpointFacts, now: Timestamp) -> Vec<(SignalKind, String)> {
        let input = DeriveInput {
            evidence: self.evidence.as_ref(),
            last_report_at: self.last_report_at.max(facts.stored_report_at),
            now,
            heartbeat_timeout: facts.heartbeat_timeout,
            minimum_build: facts.minimum_build,
            baseline_build: self.baseline,
            update_mode: facts.update_mode,
            events_after: facts.events_after,
        };
        let mut derived = derive(&input);
        if let Some(msg) = &self.sticky_drift
            && self.evidence.is_some()
            && !derived.iter().any(|(k, _)| *k == SignalKind::Drift)
        {
            derived.push((SignalKind::Drift, msg.clone()));
            derived.sort_by_key(|(k, _)| k.urgency());
        }
        if self.evidence.is_none() {
            // No report in this session yet: what the store had stands, except the heartbeat
            // judgement, which is made afresh.
            derived.extend(
                self.carried_signals
                    .iter()
                    .filter(|(k, _)| *k != SignalKind::HeartbeatLost)
                    .cloned(),
            );
            derived.sort_by_key(|(k, _)| k.urgency());
        }
        derived
    }

    /// Takes an accepted report (the caller has checked the token, rate and sequence) and says
    /// what to write.
    pub fn accept(
        &mut self,
        report: AgentReport,
        now: Timestamp,
        facts: &EndpointFacts,
        heartbeat_period: Duration,
    ) -> Writes {
        self.last_sequence = report.sequence;
        let build = Build {
            build: report.os.current_build,
            ubr: report.os.ubr,
        };
        // A report from a freshly applied image re-baselines; so does the first one ever.
        if report.attempt_id.is_some() {
            self.sticky_drift = None;
        }
        if report.attempt_id.is_some() || self.baseline.is_none() {
            self.baseline = Some(build);
        }
        let mut summary = summarize(&report, now);
        self.evidence = Some(Evidence::of(&report));
        self.last_report_at = Some(now);
        self.carried_signals.clear();

        let mut writes = Writes::default();
        let reported_at = std::mem::take(&mut summary.reported_at);
        let digest = summary_digest(&summary);
        let changed = self.posted_summary != Some(digest);
        let heartbeat_due = self
            .posted_summary_at
            .is_none_or(|t| time::since(now, t) >= heartbeat_period);
        if changed || heartbeat_due {
            self.posted_summary = Some(digest);
            self.posted_summary_at = Some(now);
            summary.reported_at = reported_at;
            writes.report = Some(summary);
        }
        let signals = self.signals_now(facts, now);
        if kinds(&signals) != self.posted_signals {
            self.posted_signals = kinds(&signals);
            writes.signals = Some(signals);
        }
        writes
    }

    /// The signal kinds as last handed to the controller (after `accept`: this report's).
    pub fn current_signals(&self) -> &[SignalKind] {
        &self.posted_signals
    }

    /// The periodic sweep: the signal set when it changed with time alone (HeartbeatLost).
    pub fn tick(
        &mut self,
        now: Timestamp,
        facts: &EndpointFacts,
    ) -> Option<Vec<(SignalKind, String)>> {
        self.last_report_at?;
        let signals = self.signals_now(facts, now);
        if kinds(&signals) != self.posted_signals {
            self.posted_signals = kinds(&signals);
            Some(signals)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn freshness_window_of_collected_at() {
        let now: Timestamp = "2026-01-15T12:00:00Z".parse().unwrap();
        let hour = Duration::from_secs(3600);
        let skew = Duration::from_secs(600);
        for ok in [
            "2026-01-15T12:00:00Z",
            "2026-01-15T11:00:00Z",
            "2026-01-15T12:10:00Z",
            "2026-01-15T11:59:59Z",
        ] {
            assert_eq!(check_fresh(ok, now, hour, skew), Ok(()), "{ok}");
        }
        let old = check_fresh("2026-01-15T10:59:59Z", now, hour, skew).unwrap_err();
        assert!(matches!(old, Staleness::TooOld { .. }), "{old}");
        assert!(old.to_string().contains("--gateway-max-report-age"));
        let future = check_fresh("2026-01-15T12:10:01Z", now, hour, skew).unwrap_err();
        assert!(matches!(future, Staleness::Future { .. }), "{future}");
        assert!(future.to_string().contains("--gateway-max-clock-skew"));
        assert!(matches!(
            check_fresh("2020-01-01T00:00:00Z", now, hour, skew),
            Err(Staleness::TooOld { .. })
        ));
        assert!(matches!(
            check_fresh("2099-01-01T00:00:00Z", now, hour, skew),
            Err(Staleness::Future { .. })
        ));
        assert!(matches!(
            check_fresh("yesterday", now, hour, skew),
            Err(Staleness::Unreadable(_))
        ));
    }

    use super::*;
    use recast_crds::report::{CrashEvent, CrashSource, UpdateEvent};

    const JAN: &str = "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5074109) (26100.7623)";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn facts() -> EndpointFacts {
        EndpointFacts {
            restart_order: None,
            heartbeat_timeout: Duration::from_secs(900),
            update_mode: UpdateMode::Managed,
            hold: HoldFacts::default(),
            minimum_build: Some("26100.7623".parse().unwrap()),
            events_after: None,
            stored_report_at: None,
        }
    }

    fn report(seq: u64, ubr: u32) -> AgentReport {
        recast_core::derive::sample_report(seq, ubr)
    }

    fn failed(seq: u64) -> AgentReport {
        let mut r = report(seq, 7462);
        r.update_events = vec![UpdateEvent {
            event_id: 20,
            outcome: UpdateOutcome::Failed,
            time: "2026-01-14T08:41:02Z".into(),
            title: JAN.into(),
            error_code: Some("0x800f0922".into()),
            update_guid: None,
            revision: None,
        }];
        r
    }

    const PERIOD: Duration = Duration::from_secs(600);

    #[test]
    fn a_change_in_the_hold_read_back_is_written_a_repeat_is_not() {
        use recast_crds::report::EffectiveUpdateHold;
        let with = |seq: u64, held: bool, drift: &[&str]| {
            let mut r = report(seq, 7623);
            r.update_hold = Some(EffectiveUpdateHold {
                held,
                drift: drift.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            });
            r
        };
        let mut s = Session::new(StoredState::default());
        let t = ts("2026-01-15T09:00:00Z");
        assert!(
            s.accept(with(1, false, &[]), t, &facts(), PERIOD)
                .report
                .is_some()
        );
        let w = s.accept(with(2, true, &[]), t, &facts(), PERIOD);
        assert_eq!(
            w.report.and_then(|r| r.update_hold).map(|h| h.held),
            Some(true),
            "the hold now in effect is news"
        );
        assert!(
            s.accept(with(3, true, &[]), t, &facts(), PERIOD)
                .report
                .is_none()
        );
        let w = s.accept(
            with(4, true, &["SetDisableUXWUAccess: 0x1 -> absent"]),
            t,
            &facts(),
            PERIOD,
        );
        assert!(w.report.is_some(), "drift is news");
        assert_eq!(s.current_signals(), &[] as &[SignalKind]);
    }

    #[test]
    fn first_report_writes_then_heartbeats_coalesce() {
        let mut s = Session::new(StoredState::default());
        let w = s.accept(
            report(1, 7623),
            ts("2026-01-15T09:00:00Z"),
            &facts(),
            PERIOD,
        );
        assert_eq!(w.report.as_ref().unwrap().build, "26100.7623");
        assert_eq!(
            w.report.as_ref().unwrap().reported_at,
            "2026-01-15T09:00:00Z"
        );
        assert_eq!(
            w.signals, None,
            "no signals, and none stored: nothing to change"
        );
        // Identical reports within the period: no writes at all.
        for (i, t) in ["09:05:00", "09:09:59"].iter().enumerate() {
            let w = s.accept(
                report(2 + i as u64, 7623),
                ts(&format!("2026-01-15T{t}Z")),
                &facts(),
                PERIOD,
            );
            assert_eq!(w, Writes::default(), "{t}");
        }
        // After the period: one heartbeat write.
        let w = s.accept(
            report(4, 7623),
            ts("2026-01-15T09:10:00Z"),
            &facts(),
            PERIOD,
        );
        assert!(w.report.is_some());
        assert_eq!(w.signals, None);
    }

    #[test]
    fn a_change_writes_at_once() {
        let mut s = Session::new(StoredState::default());
        s.accept(
            report(1, 7623),
            ts("2026-01-15T09:00:00Z"),
            &facts(),
            PERIOD,
        );
        let w = s.accept(failed(2), ts("2026-01-15T09:01:00Z"), &facts(), PERIOD);
        assert!(w.report.is_some());
        let signals = w.signals.unwrap();
        assert_eq!(
            kinds(&signals),
            [SignalKind::FailedRollback, SignalKind::NonCompliant]
        );
        // The same evidence again: nothing.
        let w = s.accept(failed(3), ts("2026-01-15T09:02:00Z"), &facts(), PERIOD);
        assert_eq!(w, Writes::default());
        // A crash: report and signals change.
        let mut r = failed(4);
        r.crashes = vec![CrashEvent {
            source: CrashSource::KernelPower,
            event_id: 41,
            time: "2026-01-15T09:02:30Z".into(),
            bugcheck_code: Some(0xED),
            parameters: vec![],
        }];
        let w = s.accept(r, ts("2026-01-15T09:03:00Z"), &facts(), PERIOD);
        assert_eq!(w.report.unwrap().crashes[0].bugcheck_code, "0x000000ed");
        assert_eq!(w.signals.unwrap()[0].0, SignalKind::BootCrash);
    }

    #[test]
    fn attempt_reports_are_never_coalesced() {
        let mut s = Session::new(StoredState::default());
        s.accept(failed(1), ts("2026-01-15T09:00:00Z"), &facts(), PERIOD);
        let mut r = report(2, 7623);
        r.attempt_id = Some("kiosk-01-uid-1".into());
        let w = s.accept(r, ts("2026-01-15T09:01:00Z"), &facts(), PERIOD);
        assert_eq!(
            w.report.unwrap().attempt_id.as_deref(),
            Some("kiosk-01-uid-1")
        );
        assert_eq!(
            w.signals,
            Some(vec![]),
            "the fresh image clears the signals"
        );
        assert_eq!(s.baseline, Some("26100.7623".parse().unwrap()));
    }

    #[test]
    fn the_session_keeps_evidence_not_the_report_and_judges_it_afresh() {
        let mut s = Session::new(StoredState::default());
        let r = failed(1);
        let w = s.accept(r.clone(), ts("2026-01-15T09:00:00Z"), &facts(), PERIOD);
        assert_eq!(
            kinds(&w.signals.unwrap()),
            [SignalKind::FailedRollback, SignalKind::NonCompliant]
        );
        assert_eq!(s.evidence, Some(Evidence::of(&r)));
        // A reimage that ended after the failure (learned from the store, not the report):
        // the kept evidence no longer shows FailedRollback.
        let after = EndpointFacts {
            events_after: Some(ts("2026-01-14T12:00:00Z")),
            ..facts()
        };
        let now = s.tick(ts("2026-01-15T09:01:00Z"), &after).unwrap();
        assert_eq!(kinds(&now), [SignalKind::NonCompliant]);
    }

    #[test]
    fn replay_is_refused() {
        let mut s = Session::new(StoredState {
            sequence: 10,
            ..Default::default()
        });
        assert_eq!(s.check_sequence(10), Err(Replayed { last: 10 }));
        assert_eq!(s.check_sequence(9), Err(Replayed { last: 10 }));
        assert!(s.check_sequence(11).is_ok());
        s.accept(
            report(11, 7623),
            ts("2026-01-15T09:00:00Z"),
            &facts(),
            PERIOD,
        );
        assert!(s.check_sequence(11).is_err());
    }

    #[test]
    fn heartbeat_lost_by_sweep_and_kept_signals_after_restart() {
        let stored = StoredState {
            last_report_at: Some(ts("2026-01-15T09:00:00Z")),
            build: Some("26100.7462".parse().unwrap()),
            signals: vec![(SignalKind::FailedRollback, "KB5074109 failed".into())],
            sequence: 5,
        };
        let mut s = Session::new(stored);
        // Within the timeout: nothing to change; the stored FailedRollback stands.
        assert_eq!(s.tick(ts("2026-01-15T09:10:00Z"), &facts()), None);
        let lost = s.tick(ts("2026-01-15T09:16:00Z"), &facts()).unwrap();
        assert_eq!(
            kinds(&lost),
            [SignalKind::FailedRollback, SignalKind::HeartbeatLost]
        );
        assert_eq!(
            s.tick(ts("2026-01-15T09:20:00Z"), &facts()),
            None,
            "said once"
        );
        // The endpoint comes back, healthy: both clear.
        let w = s.accept(
            report(6, 7623),
            ts("2026-01-15T09:30:00Z"),
            &facts(),
            PERIOD,
        );
        assert_eq!(w.signals, Some(vec![]));
        // Never reported: the sweep has nothing to say.
        let mut fresh = Session::new(StoredState::default());
        assert_eq!(fresh.tick(ts("2030-01-01T00:00:00Z"), &facts()), None);
    }

    #[test]
    fn a_report_taken_by_another_gateway_process_is_not_silence() {
        let stored = StoredState {
            last_report_at: Some(ts("2026-01-15T09:00:00Z")),
            build: Some("26100.7623".parse().unwrap()),
            signals: vec![],
            sequence: 5,
        };
        let mut s = Session::new(stored);
        // This process has heard nothing for 30 minutes, but the store shows a report from
        // 10 minutes ago (another gateway process took it).
        let elsewhere = EndpointFacts {
            stored_report_at: Some(ts("2026-01-15T09:20:00Z")),
            ..facts()
        };
        assert_eq!(s.tick(ts("2026-01-15T09:30:00Z"), &elsewhere), None);
        // Once the store, too, is older than the timeout, it is lost.
        let lost = s.tick(ts("2026-01-15T09:36:00Z"), &elsewhere).unwrap();
        assert_eq!(kinds(&lost), [SignalKind::HeartbeatLost]);
    }

    #[test]
    fn a_stored_drift_survives_a_restart_until_a_reimage() {
        let immutable = EndpointFacts {
            update_mode: UpdateMode::Immutable,
            hold: HoldFacts::default(),
            minimum_build: None,
            ..facts()
        };
        let mut s = Session::new(StoredState {
            last_report_at: Some(ts("2026-02-12T09:00:00Z")),
            build: Some("26100.7705".parse().unwrap()),
            signals: vec![(SignalKind::Drift, "patched in place".into())],
            sequence: 3,
        });
        let w = s.accept(
            report(4, 7705),
            ts("2026-02-12T09:05:00Z"),
            &immutable,
            PERIOD,
        );
        assert_eq!(w.signals, None, "Drift stays, so the set is unchanged");
        let mut fresh = report(5, 7623);
        fresh.attempt_id = Some("a-1".into());
        let w = s.accept(fresh, ts("2026-02-12T10:00:00Z"), &immutable, PERIOD);
        assert_eq!(w.signals, Some(vec![]));
    }

    #[test]
    fn summary_is_bounded_and_newest_first() {
        let mut r = failed(1);
        for i in 0..30 {
            r.update_events.push(UpdateEvent {
                event_id: 19,
                outcome: UpdateOutcome::Installed,
                time: format!("2025-12-{:02}T00:00:00Z", 1 + i % 28),
                title: format!("update {i}"),
                error_code: None,
                update_guid: None,
                revision: None,
            });
        }
        let s = summarize(&r, ts("2026-01-15T09:00:00Z"));
        assert_eq!(s.update_results.len(), SUMMARY_ITEMS);
        assert_eq!(s.update_results[0].update, JAN);
        assert_eq!(s.update_results[0].result, "Failed");
    }
}
