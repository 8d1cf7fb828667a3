//! `recast-agent simulate`: N simulated endpoints (tokio tasks) reporting to a gateway, for
//! tests, demos and benchmarks. Each scenario produces the events a real endpoint in that
//! state would report, with the same shapes the collector builds from wevtutil output.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use recast_crds::report::{
    AgentReport, CrashEvent, CrashSource, DiskInfo, OsInfo, PendingServicing, REPORT_VERSION,
    ServicingEvent, ServicingOutcome, UpdateEvent, UpdateOutcome,
};

use crate::send::{SendOutcome, Sender};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// On the January 2026 LCU (26100.7623), installed cleanly.
    Healthy,
    /// KB5074109 failed and rolled back; still on December's 26100.7462: the improper state.
    FailedRollback,
    /// Rebooted from a 0xED UNMOUNTABLE_BOOT_VOLUME bugcheck.
    Crashed,
    /// Reports 26100.7623 first, then 26100.7705 after a February LCU installed in place.
    Drifted,
    /// On 26100.7462 with no failure: simply behind the golden image's minimum.
    NonCompliant,
}

pub const LCU_JAN: &str = "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5074109) (26100.7623)";
pub const LCU_FEB: &str = "2026-02 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5077181) (26100.7705)";
pub const DEFENDER: &str = "Security Intelligence Update for Microsoft Defender Antivirus - KB2267602 (Version 1.443.512.0) - Current Channel (Broad)";

fn ts(s: &str) -> String {
    s.to_string()
}

fn update(outcome: UpdateOutcome, time: &str, title: &str, error: Option<&str>) -> UpdateEvent {
    UpdateEvent {
        event_id: match outcome {
            UpdateOutcome::Started => 43,
            UpdateOutcome::Installed => 19,
            UpdateOutcome::Failed => 20,
        },
        outcome,
        time: ts(time),
        title: title.to_string(),
        error_code: error.map(str::to_string),
        update_guid: None,
        revision: Some(1),
    }
}

/// The report a simulated endpoint in `scenario` sends as its `nth` report (0-based).
pub fn simulated_report(
    endpoint: &str,
    scenario: Scenario,
    nth: u64,
    sequence: u64,
    now: Timestamp,
    interval_seconds: u32,
) -> AgentReport {
    let defender = update(
        UpdateOutcome::Installed,
        "2026-01-15T06:00:00Z",
        DEFENDER,
        None,
    );
    let jan_installed = vec![
        defender.clone(),
        update(
            UpdateOutcome::Installed,
            "2026-01-14T08:41:02Z",
            LCU_JAN,
            None,
        ),
        update(
            UpdateOutcome::Started,
            "2026-01-14T08:05:47Z",
            LCU_JAN,
            None,
        ),
    ];
    let jan_failed = vec![
        defender.clone(),
        update(
            UpdateOutcome::Failed,
            "2026-01-14T08:41:02Z",
            LCU_JAN,
            Some("0x800f0922"),
        ),
        update(
            UpdateOutcome::Started,
            "2026-01-14T08:05:47Z",
            LCU_JAN,
            None,
        ),
    ];
    let (ubr, update_events, servicing_events, crashes) = match scenario {
        Scenario::Healthy => (7623, jan_installed, vec![], vec![]),
        Scenario::FailedRollback => (
            7462,
            jan_failed,
            vec![ServicingEvent {
                event_id: 6,
                outcome: ServicingOutcome::FailedPartiallyInstalled,
                time: ts("2026-01-14T08:40:55Z"),
                package: "KB5074109".into(),
                intended_state: Some("Installed".into()),
                error_code: Some("0x800f0922".into()),
                client: Some("WindowsUpdateAgent".into()),
            }],
            vec![],
        ),
        Scenario::Crashed => (
            7462,
            jan_failed,
            vec![],
            vec![
                CrashEvent {
                    source: CrashSource::WerBugcheck,
                    event_id: 1001,
                    time: ts("2026-01-15T08:03:41Z"),
                    bugcheck_code: Some(0xED),
                    parameters: vec![0xffffa50d1c8f2060, 0xffffffffc0000185, 0, 0],
                },
                CrashEvent {
                    source: CrashSource::KernelPower,
                    event_id: 41,
                    time: ts("2026-01-15T08:02:14Z"),
                    bugcheck_code: Some(0xED),
                    parameters: vec![0xffffa50d1c8f2060, 0xffffffffc0000185, 0, 0],
                },
            ],
        ),
        Scenario::Drifted if nth == 0 => (7623, jan_installed, vec![], vec![]),
        Scenario::Drifted => {
            let mut events = vec![update(
                UpdateOutcome::Installed,
                "2026-02-11T08:30:00Z",
                LCU_FEB,
                None,
            )];
            events.extend(jan_installed);
            (7705, events, vec![], vec![])
        }
        Scenario::NonCompliant => (7462, vec![defender], vec![], vec![]),
    };
    AgentReport {
        // A simulated machine is a set-up Windows: OOBE finished.
        setup_state: Some(recast_crds::report::SETUP_COMPLETE.into()),
        version: REPORT_VERSION,
        endpoint: endpoint.to_string(),
        sequence,
        agent_version: format!("{}-sim", env!("CARGO_PKG_VERSION")),
        attempt_id: None,
        collected_at: now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        interval_seconds,
        os: OsInfo {
            current_build: 26100,
            ubr,
        },
        update_events,
        servicing_events,
        pending: PendingServicing::default(),
        crashes,
        boot_time: Some(ts("2026-01-15T08:02:11Z")),
        uptime_seconds: Some(3600),
        system_disk: Some(DiskInfo {
            total_bytes: 255_380_000_768,
            free_bytes: 52_343_234_560,
        }),
        collection_errors: vec![],
        update_hold: None,
        network_restart: None,
    }
}

/// The simulated endpoints' names: `PREFIX-00001` ...
pub fn endpoint_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{:05}", i + 1)
}

#[derive(Clone, Debug)]
pub struct SimulateOptions {
    pub gateway: String,
    pub ca_file: Option<PathBuf>,
    pub endpoints: usize,
    pub scenario: Scenario,
    pub prefix: String,
    /// Reports each endpoint sends before stopping.
    pub reports: u64,
    /// Pause between one endpoint's reports (the fleet's interval, compressed for load tests).
    pub pause: Duration,
    /// Endpoint name → bearer token.
    pub tokens: Arc<HashMap<String, String>>,
    /// Requests in flight at once across all endpoints (a fleet's reports are spread out;
    /// this keeps a load test from being a connection storm).
    pub concurrency: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimulateSummary {
    pub sent: u64,
    pub accepted: u64,
    pub refused: HashMap<String, u64>,
    pub transport_errors: u64,
    pub elapsed: Duration,
    /// Latencies of every request, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Endpoints whose (simulated) registry holds Windows quality updates at the end, as the
    /// gateway's answers asked.
    pub held: u64,
}

impl SimulateSummary {
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * (self.latencies_us.len() as f64 - 1.0)).round() as usize;
        self.latencies_us
            .get(rank.min(self.latencies_us.len() - 1))
            .copied()
    }

    pub fn rate_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.sent as f64 / s } else { 0.0 }
    }
}

fn outcome_label(o: &SendOutcome) -> String {
    match o {
        SendOutcome::Accepted => "accepted".into(),
        SendOutcome::Unauthorized(_) => "unauthorized".into(),
        SendOutcome::Replayed(_) => "replayed".into(),
        SendOutcome::RateLimited(_) => "rate-limited".into(),
        SendOutcome::Rejected(code, _) => format!("rejected-{code}"),
        SendOutcome::ServerError(code, _) => format!("server-error-{code}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Send(#[from] crate::send::SendError),
    #[error(
        "no token for simulated endpoint {0}: pass --tokens FILE with a JSON object of endpoint name to token"
    )]
    NoToken(String),
}

/// Runs the simulation to completion and returns what happened.
pub async fn run(opts: SimulateOptions) -> Result<SimulateSummary, SimulateError> {
    let sender = Sender::new(&opts.gateway, opts.ca_file.as_deref())?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..opts.endpoints {
        let name = endpoint_name(&opts.prefix, i);
        let token = opts
            .tokens
            .get(&name)
            .cloned()
            .ok_or_else(|| SimulateError::NoToken(name.clone()))?;
        let sender = sender.clone();
        let opts = opts.clone();
        let in_flight = in_flight.clone();
        tasks.spawn(async move {
            let mut local = SimulateSummary::default();
            // Spread the first reports over one pause so the fleet does not start in lockstep.
            if !opts.pause.is_zero() {
                let jitter = fastrand::u64(0..opts.pause.as_millis().max(1) as u64);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let mut last_sequence = 0u64;
            // Each simulated endpoint applies the gateway's update hold to its own in-memory
            // registry, exactly as `run` does to the real one, and reports what it reads back.
            let registry = crate::hold::fake::FakeRegistry::default();
            let mut told = None;
            // And obeys a restart-into-the-network order as `run` does, on a virtual machine
            // with one network adapter (it does not restart: recast sees `Scheduled`).
            let firmware = crate::restart::fake::FakeWindows::uefi(crate::restart::fake::OVMF);
            let mut restart: Option<recast_crds::report::NetworkRestartOutcome> = None;
            for nth in 0..opts.reports {
                let now = Timestamp::now();
                let millis = u64::try_from(now.as_millisecond()).unwrap_or(0);
                last_sequence = crate::state::next_sequence(last_sequence, millis);
                let mut report = simulated_report(
                    &name,
                    opts.scenario,
                    nth,
                    last_sequence,
                    now,
                    opts.pause.as_secs().clamp(1, u32::MAX as u64) as u32,
                );
                report.update_hold = crate::hold::apply(&registry, told.as_ref(), now).ok();
                report.network_restart = restart.clone();
                let permit = in_flight.acquire().await;
                let t0 = Instant::now();
                let result = sender.send_with_reply(&token, &report).await;
                local.latencies_us.push(t0.elapsed().as_micros() as u64);
                drop(permit);
                local.sent += 1;
                match result {
                    Ok((SendOutcome::Accepted, reply)) => {
                        local.accepted += 1;
                        if let Some(reply) = reply {
                            let _ = crate::hold::apply(&registry, Some(&reply.update_hold), now);
                            told = Some(reply.update_hold);
                            if let Some(order) = reply.restart_into_network
                                && crate::restart::is_new(&order, restart.as_ref())
                            {
                                let mut record =
                                    |o: &recast_crds::report::NetworkRestartOutcome| {
                                        restart = Some(o.clone());
                                        Ok(())
                                    };
                                let _ = crate::restart::act(&firmware, &order, now, &mut record);
                            }
                        }
                    }
                    Ok((other, _)) => *local.refused.entry(outcome_label(&other)).or_default() += 1,
                    Err(e) => {
                        tracing::debug!(endpoint = %name, error = %e, "report not delivered");
                        local.transport_errors += 1;
                    }
                }
                if !opts.pause.is_zero() {
                    tokio::time::sleep(opts.pause).await;
                }
            }
            let now = Timestamp::now();
            if crate::hold::apply(&registry, told.as_ref(), now).is_ok_and(|e| e.held) {
                local.held = 1;
            }
            local
        });
    }
    let mut total = SimulateSummary::default();
    while let Some(done) = tasks.join_next().await {
        let Ok(part) = done else { continue };
        total.sent += part.sent;
        total.accepted += part.accepted;
        total.transport_errors += part.transport_errors;
        total.held += part.held;
        for (k, v) in part.refused {
            *total.refused.entry(k).or_default() += v;
        }
        total.latencies_us.extend(part.latencies_us);
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_produces_a_valid_report() {
        let now: Timestamp = "2026-01-15T09:00:00Z".parse().unwrap();
        for scenario in [
            Scenario::Healthy,
            Scenario::FailedRollback,
            Scenario::Crashed,
            Scenario::Drifted,
            Scenario::NonCompliant,
        ] {
            for nth in 0..2 {
                let r = simulated_report("sim-00001", scenario, nth, 1 + nth, now, 300);
                r.validate().unwrap_or_else(|e| panic!("{scenario:?}: {e}"));
            }
        }
        let first = simulated_report("a", Scenario::Drifted, 0, 1, now, 300);
        let later = simulated_report("a", Scenario::Drifted, 1, 2, now, 300);
        assert_ne!(first.os, later.os);
    }

    #[test]
    fn percentiles() {
        let s = SimulateSummary {
            latencies_us: (1..=100).collect(),
            ..Default::default()
        };
        assert_eq!(s.percentile_us(50.0), Some(51));
        assert_eq!(s.percentile_us(99.0), Some(99));
        assert_eq!(SimulateSummary::default().percentile_us(50.0), None);
    }
}
