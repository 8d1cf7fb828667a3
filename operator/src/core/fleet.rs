//! Fleet-wide counts the lifecycle needs for concurrency limits and the failure budget, kept
//! as an index the controller updates after every decision, so limits hold even when many
//! endpoints want a slot in the same pass. It also keeps each endpoint's phase, so the
//! per-phase gauge is counted without reading the fleet from the store.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use recast_crds::endpoint::{AttemptOutcome, EndpointPhase, EndpointStatus};

use super::lifecycle::FleetView;
use super::time;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    site: Option<String>,
    active: bool,
    phase: Option<EndpointPhase>,
    /// finished_at of attempts that ended Failed (the endpoint was quarantined).
    failures: Vec<Timestamp>,
}

/// Per-endpoint facts, keyed by "namespace/name".
#[derive(Clone, Debug, Default)]
pub struct FleetIndex {
    entries: BTreeMap<String, Entry>,
}

impl FleetIndex {
    /// Records (or replaces) what the index knows about one endpoint.
    pub fn upsert(&mut self, key: &str, site: Option<&str>, status: &EndpointStatus) {
        let failures = status
            .history
            .iter()
            .filter(|h| h.outcome == AttemptOutcome::Failed)
            .filter_map(|h| time::parse(&h.finished_at))
            .collect();
        self.entries.insert(
            key.to_string(),
            Entry {
                site: site.map(str::to_string),
                active: status.active_attempt.is_some(),
                phase: status.phase,
                failures,
            },
        );
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every endpoint's phase as last written.
    pub fn phases(&self) -> impl Iterator<Item = Option<EndpointPhase>> + '_ {
        self.entries.values().map(|e| e.phase)
    }

    /// Attempts running fleet-wide.
    pub fn active(&self) -> u32 {
        self.entries.values().filter(|e| e.active).count() as u32
    }

    /// The view one endpoint's decision uses: counts exclude the endpoint itself.
    pub fn view_for(
        &self,
        key: &str,
        site: Option<&str>,
        now: Timestamp,
        budget_window: Duration,
    ) -> FleetView {
        let since = now
            .checked_sub(
                jiff::SignedDuration::try_from(budget_window).unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(Timestamp::MIN);
        let mut v = FleetView::default();
        for (k, e) in &self.entries {
            v.total += 1;
            let same_site = site.is_some() && e.site.as_deref() == site;
            if same_site {
                v.site_total += 1;
            }
            v.recent_failures += e
                .failures
                .iter()
                .filter(|t| **t >= since && **t <= now)
                .count() as u32;
            if k == key {
                continue;
            }
            if e.active {
                v.active_global += 1;
                if same_site {
                    v.active_site += 1;
                }
            }
        }
        if !self.entries.contains_key(key) {
            v.total += 1;
            if site.is_some() {
                v.site_total += 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::endpoint::{Attempt, AttemptRecord, AttemptTrigger, ReimageStep};

    fn active() -> EndpointStatus {
        EndpointStatus {
            active_attempt: Some(Attempt {
                id: "a".into(),
                trigger: AttemptTrigger::Manual,
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
            }),
            ..Default::default()
        }
    }

    fn failed_at(t: &str) -> EndpointStatus {
        EndpointStatus {
            history: vec![AttemptRecord {
                id: "x".into(),
                trigger: AttemptTrigger::BootCrash,
                reason: String::new(),
                image: "img".into(),
                wave: None,
                outcome: AttemptOutcome::Failed,
                tries: 3,
                started_at: t.into(),
                finished_at: t.into(),
                message: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn counts_exclude_self_and_split_by_site() {
        let mut idx = FleetIndex::default();
        idx.upsert("ns/a", Some("s1"), &active());
        idx.upsert("ns/b", Some("s1"), &active());
        idx.upsert("ns/c", Some("s2"), &active());
        idx.upsert("ns/d", Some("s1"), &EndpointStatus::default());
        let now: Timestamp = "2026-01-14T10:00:00Z".parse().unwrap();
        let v = idx.view_for("ns/a", Some("s1"), now, Duration::from_secs(3600));
        assert_eq!(
            (v.total, v.site_total, v.active_global, v.active_site),
            (4, 3, 2, 1)
        );
        let v = idx.view_for("ns/d", Some("s1"), now, Duration::from_secs(3600));
        assert_eq!((v.active_global, v.active_site), (3, 2));
        // An endpoint not yet indexed counts itself in the totals.
        let v = idx.view_for("ns/new", Some("s2"), now, Duration::from_secs(3600));
        assert_eq!(
            (v.total, v.site_total, v.active_global, v.active_site),
            (5, 2, 3, 1)
        );
    }

    #[test]
    fn phases_follow_the_last_upsert_and_removal() {
        let mut idx = FleetIndex::default();
        let ready = EndpointStatus {
            phase: Some(EndpointPhase::Ready),
            ..Default::default()
        };
        idx.upsert("ns/a", None, &ready);
        idx.upsert("ns/b", None, &EndpointStatus::default());
        idx.upsert(
            "ns/b",
            None,
            &EndpointStatus {
                phase: Some(EndpointPhase::Degraded),
                ..Default::default()
            },
        );
        idx.upsert("ns/c", None, &ready);
        idx.remove("ns/c");
        assert_eq!(
            idx.phases().collect::<Vec<_>>(),
            [Some(EndpointPhase::Ready), Some(EndpointPhase::Degraded)]
        );
    }

    #[test]
    fn failure_budget_counts_only_the_window() {
        let mut idx = FleetIndex::default();
        idx.upsert("ns/a", None, &failed_at("2026-01-14T09:30:00Z"));
        idx.upsert("ns/b", None, &failed_at("2026-01-14T08:00:00Z"));
        let now: Timestamp = "2026-01-14T10:00:00Z".parse().unwrap();
        assert_eq!(
            idx.view_for("ns/c", None, now, Duration::from_secs(3600))
                .recent_failures,
            1
        );
        assert_eq!(
            idx.view_for("ns/c", None, now, Duration::from_secs(3 * 3600))
                .recent_failures,
            2
        );
    }
}
