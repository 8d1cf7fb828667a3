//! Fleet-wide counts the lifecycle needs for concurrency limits and the failure budget, kept
//! as an index the controller updates after every decision, so limits hold even when many
//! endpoints want a slot in the same pass. It also keeps each endpoint's phase, so the
//! per-phase gauge is counted without reading the fleet from the store.
//!
//! The counts a decision needs are kept up to date on every change, so one decision's view
//! costs the same whatever the fleet's size: recounting 10,000 entries per decision made a
//! pass over the fleet quadratic.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use recast_crds::endpoint::{AttemptOutcome, EndpointPhase, EndpointStatus};

use super::breaker::{self, BreakerScope, Trip};
use super::lifecycle::FleetView;
use super::time;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    site: Option<String>,
    active: bool,
    phase: Option<EndpointPhase>,
    /// finished_at of attempts that ended Failed (the endpoint was quarantined).
    failures: Vec<Timestamp>,
    /// The namespace (the part of the key before '/').
    namespace: String,
    /// started_at of its automatic attempts (running and finished), for the breaker.
    automatic_starts: Vec<Timestamp>,
}

/// One breaker's settings: its limit (None: the default for the scope's size), its window, and
/// the last reset.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    pub max_starts: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    pub window: Duration,
    pub reset: Option<Timestamp>,
}

impl BreakerSettings {
    /// A namespace's breaker as its policy sets it.
    pub fn of_policy(view: &super::policy::PolicyView) -> Self {
        Self {
            max_starts: view.breaker_max_starts.clone(),
            window: view.breaker_window,
            reset: view.breaker_reset,
        }
    }
}

/// The breakers that apply to one endpoint's decision.
#[derive(Clone, Copy, Debug)]
pub struct Breakers<'a> {
    /// Its namespace's, with the endpoint's policy's settings.
    pub namespace: &'a BreakerSettings,
    /// The fleet-wide one, set by the operator's flags (None: off).
    pub fleet: Option<&'a BreakerSettings>,
    /// The operator's ceiling on attempts running fleet-wide (None: none), above every
    /// namespace's own limit.
    pub fleet_ceiling: Option<u32>,
}

/// A multiset of times with its total.
#[derive(Clone, Debug, Default)]
struct Times(BTreeMap<Timestamp, u32>);

impl Times {
    fn step(&mut self, t: Timestamp, add: bool) {
        let n = self.0.entry(t).or_default();
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        if *n == 0 {
            self.0.remove(&t);
        }
    }

    /// The times at or after `reset`, each as often as it occurs.
    fn after(&self, reset: Option<Timestamp>) -> Vec<Timestamp> {
        let range = match reset {
            Some(r) => self.0.range(r..),
            None => self.0.range(..),
        };
        range
            .flat_map(|(t, n)| std::iter::repeat_n(*t, *n as usize))
            .collect()
    }
}

/// Per-endpoint facts, keyed by "namespace/name", with their running totals.
#[derive(Clone, Debug, Default)]
pub struct FleetIndex {
    entries: BTreeMap<String, Entry>,
    /// Endpoints per site, and of those with an attempt running.
    sites: HashMap<String, SiteCount>,
    active: u32,
    /// Endpoints per namespace, and of those with an attempt running.
    namespaces: HashMap<String, u32>,
    namespace_active: HashMap<String, u32>,
    /// Failure times per namespace (the failure budget is each namespace's own).
    namespace_failures: HashMap<String, Times>,
    /// Automatic attempt starts per namespace, and fleet-wide.
    namespace_starts: HashMap<String, Times>,
    all_starts: Times,
}

#[derive(Clone, Copy, Debug, Default)]
struct SiteCount {
    total: u32,
    active: u32,
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
        let automatic_starts = breaker::automatic_starts(status).map(|s| s.at).collect();
        let entry = Entry {
            site: site.map(str::to_string),
            active: status.active_attempt.is_some(),
            phase: status.phase,
            failures,
            namespace: key.split_once('/').map_or("", |(ns, _)| ns).to_string(),
            automatic_starts,
        };
        self.count(&entry, true);
        if let Some(old) = self.entries.insert(key.to_string(), entry) {
            self.count(&old, false);
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.count(&old, false);
        }
    }

    /// Adds an entry to the running totals, or takes it out.
    fn count(&mut self, e: &Entry, add: bool) {
        let step = |n: &mut u32| {
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        };
        if e.active {
            step(&mut self.active);
        }
        if let Some(site) = &e.site {
            let c = self.sites.entry(site.clone()).or_default();
            step(&mut c.total);
            if e.active {
                step(&mut c.active);
            }
            if c.total == 0 {
                self.sites.remove(site);
            }
        }
        let n = self.namespaces.entry(e.namespace.clone()).or_default();
        step(n);
        if *n == 0 {
            self.namespaces.remove(&e.namespace);
        }
        if e.active {
            let n = self
                .namespace_active
                .entry(e.namespace.clone())
                .or_default();
            step(n);
            if *n == 0 {
                self.namespace_active.remove(&e.namespace);
            }
        }
        for t in &e.failures {
            self.namespace_failures
                .entry(e.namespace.clone())
                .or_default()
                .step(*t, add);
        }
        if self
            .namespace_failures
            .get(&e.namespace)
            .is_some_and(|t| t.0.is_empty())
        {
            self.namespace_failures.remove(&e.namespace);
        }
        for t in &e.automatic_starts {
            self.namespace_starts
                .entry(e.namespace.clone())
                .or_default()
                .step(*t, add);
            self.all_starts.step(*t, add);
        }
        if self
            .namespace_starts
            .get(&e.namespace)
            .is_some_and(|t| t.0.is_empty())
        {
            self.namespace_starts.remove(&e.namespace);
        }
    }

    /// Endpoints in `namespace`.
    pub fn namespace_len(&self, namespace: &str) -> u32 {
        self.namespaces.get(namespace).copied().unwrap_or(0)
    }

    /// Attempts of `namespace` that ended Failed within `window` before `now` (the failure
    /// budget's count).
    pub fn namespace_failures_within(
        &self,
        namespace: &str,
        now: Timestamp,
        window: Duration,
    ) -> u32 {
        let since = now
            .checked_sub(
                jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(Timestamp::MIN);
        if since > now {
            return 0;
        }
        self.namespace_failures
            .get(namespace)
            .map_or(0, |t| t.0.range(since..=now).map(|(_, n)| *n).sum())
    }

    /// Whether the namespace's breaker is open, and why.
    pub fn namespace_breaker(&self, namespace: &str, settings: &BreakerSettings) -> Option<Trip> {
        let limit = breaker::limit(
            settings.max_starts.as_ref(),
            self.namespace_len(namespace).max(1),
            breaker::default_limit,
        );
        let starts = self
            .namespace_starts
            .get(namespace)
            .map(|t| t.after(settings.reset))
            .unwrap_or_default();
        breaker::trip(&starts, None, limit, settings.window)
    }

    /// Whether the fleet-wide breaker (all namespaces) is open, and why.
    pub fn fleet_breaker(&self, settings: &BreakerSettings) -> Option<Trip> {
        let limit = breaker::limit(
            settings.max_starts.as_ref(),
            (self.entries.len() as u32).max(1),
            breaker::default_fleet_limit,
        );
        breaker::trip(
            &self.all_starts.after(settings.reset),
            None,
            limit,
            settings.window,
        )
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
        self.active
    }

    /// The view one endpoint's decision uses: counts exclude the endpoint itself.
    pub fn view_for(
        &self,
        key: &str,
        site: Option<&str>,
        now: Timestamp,
        budget_window: Duration,
        breakers: Breakers<'_>,
    ) -> FleetView {
        let me = self.entries.get(key);
        let site_count = site
            .and_then(|s| self.sites.get(s))
            .copied()
            .unwrap_or_default();
        // The endpoint itself counts in the totals (added when not indexed yet), never in the
        // running attempts.
        let me_active = me.is_some_and(|e| e.active);
        let me_active_here =
            me_active && site.is_some() && me.and_then(|e| e.site.as_deref()) == site;
        let ns = key.split_once('/').map_or("", |(ns, _)| ns);
        FleetView {
            namespace_total: self.namespace_len(ns) + u32::from(me.is_none()),
            site_total: site_count.total + u32::from(me.is_none() && site.is_some()),
            active_namespace: self
                .namespace_active
                .get(ns)
                .copied()
                .unwrap_or(0)
                .saturating_sub(u32::from(me_active)),
            active_fleet: self.active.saturating_sub(u32::from(me_active)),
            fleet_ceiling: breakers.fleet_ceiling,
            active_site: site_count.active.saturating_sub(u32::from(me_active_here)),
            recent_failures: self.namespace_failures_within(ns, now, budget_window),
            breaker: self.breaker_for(key, breakers),
        }
    }

    /// The open breaker that stops automatic reimages of `key`'s endpoint, if any: the fleet's
    /// first (no tenant resets it), then its namespace's.
    fn breaker_for(&self, key: &str, breakers: Breakers<'_>) -> Option<(BreakerScope, Trip)> {
        if let Some(fleet) = breakers.fleet
            && let Some(t) = self.fleet_breaker(fleet)
        {
            return Some((BreakerScope::Fleet, t));
        }
        let ns = key.split_once('/').map_or("", |(ns, _)| ns);
        self.namespace_breaker(ns, breakers.namespace)
            .map(|t| (BreakerScope::Namespace, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings under which no breaker ever opens (these tests are about the other counts).
    static NEVER: BreakerSettings = BreakerSettings {
        max_starts: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1_000_000)),
        window: Duration::from_secs(3600),
        reset: None,
    };
    const NO_BREAKER: Breakers<'static> = Breakers {
        namespace: &NEVER,
        fleet: None,
        fleet_ceiling: None,
    };
    use recast_crds::endpoint::{Attempt, AttemptRecord, AttemptTrigger, ReimageStep};

    fn active() -> EndpointStatus {
        EndpointStatus {
            active_attempt: Some(Attempt {
                power_ways_tried: vec![],
                power_way: None,
                secure_boot: None,
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
                boot_client: None,
            }),
            ..Default::default()
        }
    }

    fn failed_at(t: &str) -> EndpointStatus {
        EndpointStatus {
            history: vec![AttemptRecord {
                secure_boot: None,
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
        let v = idx.view_for(
            "ns/a",
            Some("s1"),
            now,
            Duration::from_secs(3600),
            NO_BREAKER,
        );
        assert_eq!(
            (
                v.namespace_total,
                v.site_total,
                v.active_namespace,
                v.active_site
            ),
            (4, 3, 2, 1)
        );
        let v = idx.view_for(
            "ns/d",
            Some("s1"),
            now,
            Duration::from_secs(3600),
            NO_BREAKER,
        );
        assert_eq!((v.active_namespace, v.active_site), (3, 2));
        // An endpoint not yet indexed counts itself in the totals.
        let v = idx.view_for(
            "ns/new",
            Some("s2"),
            now,
            Duration::from_secs(3600),
            NO_BREAKER,
        );
        assert_eq!(
            (
                v.namespace_total,
                v.site_total,
                v.active_namespace,
                v.active_site
            ),
            (5, 2, 3, 1)
        );
        // Another namespace: its own counts, the fleet's together.
        idx.upsert("other/x", Some("s1"), &active());
        let v = idx.view_for(
            "other/y",
            Some("s1"),
            now,
            Duration::from_secs(3600),
            NO_BREAKER,
        );
        assert_eq!(
            (v.namespace_total, v.active_namespace, v.active_fleet),
            (2, 1, 4)
        );
    }

    /// The counts recomputed from the entries, as the index did before it kept totals.
    fn recount(
        idx: &FleetIndex,
        key: &str,
        site: Option<&str>,
        since: Timestamp,
        now: Timestamp,
    ) -> FleetView {
        let mut v = FleetView::default();
        let ns = |k: &str| k.split_once('/').map(|(n, _)| n.to_string());
        for (k, e) in &idx.entries {
            let same_ns = ns(k) == ns(key);
            v.namespace_total += u32::from(same_ns);
            let same_site = site.is_some() && e.site.as_deref() == site;
            v.site_total += u32::from(same_site);
            if same_ns {
                v.recent_failures += e
                    .failures
                    .iter()
                    .filter(|t| **t >= since && **t <= now)
                    .count() as u32;
            }
            if k != key && e.active {
                v.active_fleet += 1;
                v.active_namespace += u32::from(same_ns);
                v.active_site += u32::from(same_site);
            }
        }
        if !idx.entries.contains_key(key) {
            v.namespace_total += 1;
            v.site_total += u32::from(site.is_some());
        }
        v
    }

    proptest::proptest! {
        #[test]
        fn kept_totals_equal_a_recount(
            ops in proptest::collection::vec((0usize..6, proptest::option::of(0usize..3), proptest::bool::ANY, proptest::option::of(0u32..5), proptest::bool::ANY), 0..40),
            asked in 0usize..7,
            asked_site in proptest::option::of(0usize..3),
        ) {
            let mut idx = FleetIndex::default();
            for (k, site, running, failed_day, remove) in ops {
                // Two namespaces: each keeps its own counts.
                let key = format!("ns{}/{k}", k % 2);
                if remove {
                    idx.remove(&key);
                    continue;
                }
                let mut st = match failed_day {
                    Some(d) => failed_at(&format!("2026-01-{:02}T09:00:00Z", 10 + d)),
                    None => EndpointStatus::default(),
                };
                if running {
                    st.active_attempt = active().active_attempt;
                }
                let site = site.map(|s| format!("s{s}"));
                idx.upsert(&key, site.as_deref(), &st);
            }
            let now: Timestamp = "2026-01-14T10:00:00Z".parse().unwrap();
            let key = format!("ns{}/{asked}", asked % 2);
            let site = asked_site.map(|s| format!("s{s}"));
            for window in [3600u64, 2 * 86400, 30 * 86400] {
                let since = now.checked_sub(jiff::SignedDuration::from_secs(window as i64)).unwrap();
                let v = idx.view_for(&key, site.as_deref(), now, Duration::from_secs(window), NO_BREAKER);
                let r = recount(&idx, &key, site.as_deref(), since, now);
                proptest::prop_assert_eq!(
                    (v.namespace_total, v.site_total, v.active_namespace, v.active_fleet, v.active_site, v.recent_failures),
                    (r.namespace_total, r.site_total, r.active_namespace, r.active_fleet, r.active_site, r.recent_failures)
                );
            }
            proptest::prop_assert_eq!(idx.active(), idx.entries.values().filter(|e| e.active).count() as u32);
            // The breaker's kept start times equal a recount too, per namespace and fleet-wide.
            let settings = BreakerSettings {
                max_starts: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2)),
                window: Duration::from_secs(2 * 86400),
                reset: None,
            };
            let starts_of = |ns: Option<&str>| -> Vec<Timestamp> {
                idx.entries
                    .iter()
                    .filter(|(k, _)| ns.is_none_or(|n| k.starts_with(&format!("{n}/"))))
                    .flat_map(|(_, e)| e.automatic_starts.clone())
                    .collect()
            };
            for ns in ["ns0", "ns1"] {
                proptest::prop_assert_eq!(
                    idx.namespace_breaker(ns, &settings),
                    breaker::trip(&starts_of(Some(ns)), None, 2, settings.window)
                );
            }
            proptest::prop_assert_eq!(
                idx.fleet_breaker(&settings),
                breaker::trip(&starts_of(None), None, 2, settings.window)
            );
        }
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
            idx.view_for("ns/c", None, now, Duration::from_secs(3600), NO_BREAKER)
                .recent_failures,
            1
        );
        assert_eq!(
            idx.view_for("ns/c", None, now, Duration::from_secs(3 * 3600), NO_BREAKER)
                .recent_failures,
            2
        );
    }
}
