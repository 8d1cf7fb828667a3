//! The circuit breaker on automatic reimages. recast reimages on its own when it sees a failed
//! rollback or a boot crash; the day a rule is wrong (a parser mistake, an update that fails
//! everywhere, a bad golden image) it is wrong on every machine at once. The breaker counts
//! automatic attempts as they start; when more than a namespace's limit start within the
//! window (the limit'th start opens it), no automatic attempt starts there again until a
//! person resets it.
//! Manual reimages and waves still run: a person asked for them. Pure.
//!
//! It latches: the attempts that opened it stay in the endpoints' histories, so the breaker
//! stays open after the window has passed, and only starts after the last reset count. That is
//! what "waits for a person" means: a storm that stopped by itself is still worth a look.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use recast_crds::common::resolve_int_or_percent;
use recast_crds::endpoint::AttemptTrigger;

/// Whether an attempt started on recast's own decision (a signal), not a person's or a wave's.
pub fn is_automatic(trigger: AttemptTrigger) -> bool {
    !matches!(trigger, AttemptTrigger::Manual | AttemptTrigger::Wave)
}

/// One automatic attempt of an endpoint, as the breaker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutomaticStart<'a> {
    pub at: Timestamp,
    pub trigger: AttemptTrigger,
    pub attempt: &'a str,
}

/// The endpoint's automatic attempts that count toward a breaker: the running one (until its
/// record is in the history) and the finished ones, each with a readable start time.
pub fn automatic_starts(
    status: &recast_crds::endpoint::EndpointStatus,
) -> impl Iterator<Item = AutomaticStart<'_>> {
    let running = status
        .active_attempt
        .iter()
        .filter(|a| !status.history.iter().any(|h| h.id == a.id))
        .map(|a| (a.trigger, a.started_at.as_str(), a.id.as_str()));
    let finished = status
        .history
        .iter()
        .map(|h| (h.trigger, h.started_at.as_str(), h.id.as_str()));
    running
        .chain(finished)
        .filter(|(trigger, _, _)| is_automatic(*trigger))
        .filter_map(|(trigger, started, attempt)| {
            Some(AutomaticStart {
                at: crate::time::parse(started)?,
                trigger,
                attempt,
            })
        })
}

/// Which breaker is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerScope {
    Namespace,
    Fleet,
}

/// The default limit for a namespace of `endpoints`, when the policy sets none: 5% of them,
/// at least 3 and at most 50. A fleet of 10 opens at the third start within the window (a
/// real incident shows itself on three machines), one of 10,000 at the fiftieth (fifty
/// wipes an hour is an incident to look at whatever caused them).
pub fn default_limit(endpoints: u32) -> u32 {
    (endpoints.saturating_mul(5).div_ceil(100)).clamp(3, 50)
}

/// The fleet-wide default across all namespaces: 2%, at least 5 and at most 100.
pub fn default_fleet_limit(endpoints: u32) -> u32 {
    (endpoints.saturating_mul(2).div_ceil(100)).clamp(5, 100)
}

/// The limit for `endpoints`: the policy's count or percentage (rounded up, at least 1), or
/// the default.
pub fn limit(max_starts: Option<&IntOrString>, endpoints: u32, default: fn(u32) -> u32) -> u32 {
    match max_starts {
        Some(v) => resolve_int_or_percent(v, endpoints, true)
            .unwrap_or(1)
            .max(1),
        None => default(endpoints),
    }
}

/// Why the breaker is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trip {
    /// When the start that reached the limit happened.
    pub at: Timestamp,
    /// Automatic starts within the window that ends at `at`.
    pub starts: u32,
    pub limit: u32,
    pub window: Duration,
}

/// Whether `limit` automatic starts fell within one `window` since `reset` (starts before the
/// reset do not count; one in the reset's own second does: while the breaker is open nothing
/// automatic starts, so a start that shares the second came after the person looked, or is a
/// clock skew that must not be free). `starts` need not be sorted.
pub fn trip(
    starts: &[Timestamp],
    reset: Option<Timestamp>,
    limit: u32,
    window: Duration,
) -> Option<Trip> {
    let mut after: Vec<Timestamp> = starts
        .iter()
        .copied()
        .filter(|t| reset.is_none_or(|r| *t >= r))
        .collect();
    after.sort();
    let limit_n = limit.max(1) as usize;
    let span = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    let mut first = 0;
    for (last, t) in after.iter().enumerate() {
        while after[first].checked_add(span).is_ok_and(|end| end < *t) {
            first += 1;
        }
        let n = last + 1 - first;
        if n >= limit_n {
            return Some(Trip {
                at: *t,
                starts: n as u32,
                limit,
                window,
            });
        }
    }
    None
}

impl Trip {
    /// What a person reads: how many, where, since when, and what to do.
    pub fn explain(&self, scope: &str, reset_hint: &str) -> String {
        format!(
            "circuit breaker open in {scope}: {} automatic reimages started within {} (limit {}), the last at {}; no automatic reimage starts until a person looks and resets it ({reset_hint}); manual reimages and waves still run",
            self.starts,
            recast_crds::duration::format(self.window),
            self.limit,
            crate::time::format(self.at)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn defaults_are_safe_for_ten_and_for_ten_thousand() {
        assert_eq!(default_limit(1), 3);
        assert_eq!(default_limit(10), 3);
        assert_eq!(default_limit(100), 5);
        assert_eq!(default_limit(1_000), 50);
        assert_eq!(default_limit(10_000), 50);
        assert_eq!(default_fleet_limit(10), 5);
        assert_eq!(default_fleet_limit(1_000), 20);
        assert_eq!(default_fleet_limit(100_000), 100);
        // A policy's own value: a count, or a percentage rounded up; never 0.
        let pct = IntOrString::String("10%".into());
        assert_eq!(limit(Some(&pct), 25, default_limit), 3);
        assert_eq!(limit(Some(&IntOrString::Int(7)), 25, default_limit), 7);
        assert_eq!(limit(Some(&IntOrString::Int(0)), 25, default_limit), 1);
        assert_eq!(limit(None, 25, default_limit), 3);
    }

    #[test]
    fn it_opens_at_the_limit_within_the_window_and_stays_open() {
        let starts = [
            t("2026-01-15T08:00:00Z"),
            t("2026-01-15T08:20:00Z"),
            t("2026-01-15T08:59:00Z"),
        ];
        let trip = trip(&starts, None, 3, HOUR).expect("three within an hour");
        assert_eq!((trip.at, trip.starts), (t("2026-01-15T08:59:00Z"), 3));
        // Spread wider than the window: closed.
        let spread = [
            t("2026-01-15T08:00:00Z"),
            t("2026-01-15T08:50:00Z"),
            t("2026-01-15T09:40:00Z"),
        ];
        assert_eq!(super::trip(&spread, None, 3, HOUR), None);
        // Order does not matter.
        let mut shuffled = starts;
        shuffled.reverse();
        assert!(super::trip(&shuffled, None, 3, HOUR).is_some());
        // One below the limit: closed.
        assert_eq!(super::trip(&starts[..2], None, 3, HOUR), None);
    }

    #[test]
    fn a_reset_closes_it_and_only_later_starts_count() {
        let starts = [
            t("2026-01-15T08:00:00Z"),
            t("2026-01-15T08:10:00Z"),
            t("2026-01-15T08:20:00Z"),
        ];
        let reset = Some(t("2026-01-15T08:30:00Z"));
        assert_eq!(trip(&starts, reset, 3, HOUR), None);
        // A start in the reset's own second counts: it cannot have been held by the breaker.
        assert!(trip(&starts, Some(t("2026-01-15T08:20:00Z")), 1, HOUR).is_some());
        assert_eq!(
            trip(&starts, Some(t("2026-01-15T08:20:01Z")), 1, HOUR),
            None
        );
        let mut more = starts.to_vec();
        more.extend([
            t("2026-01-15T08:40:00Z"),
            t("2026-01-15T08:45:00Z"),
            t("2026-01-15T08:50:00Z"),
        ]);
        let again = trip(&more, reset, 3, HOUR).expect("three more after the reset");
        assert_eq!(again.at, t("2026-01-15T08:50:00Z"));
        let msg = again.explain("namespace kiosks", "recastctl breaker reset -n kiosks");
        assert!(
            msg.starts_with("circuit breaker open in namespace kiosks: 3 automatic reimages started within 1h (limit 3), the last at 2026-01-15T08:50:00Z"),
            "{msg}"
        );
    }

    proptest::proptest! {
        /// Open exactly when some window holds `limit` starts after the reset (checked by
        /// brute force), and never with fewer starts than the limit.
        #[test]
        fn it_agrees_with_brute_force(
            minutes in proptest::collection::vec(0u32..600, 0..30),
            limit in 1u32..6,
            window_min in 1u64..120,
            reset_min in proptest::option::of(0u32..600),
        ) {
            let base = t("2026-01-15T00:00:00Z");
            let at = |m: u32| base.checked_add(jiff::SignedDuration::from_mins(m as i64)).unwrap();
            let starts: Vec<Timestamp> = minutes.iter().map(|m| at(*m)).collect();
            let reset = reset_min.map(at);
            let window = Duration::from_secs(window_min * 60);
            let got = trip(&starts, reset, limit, window);
            let counted: Vec<u32> = minutes
                .iter()
                .copied()
                .filter(|m| reset_min.is_none_or(|r| *m >= r))
                .collect();
            let brute = counted.iter().any(|end| {
                counted
                    .iter()
                    .filter(|m| **m <= *end && (*end - **m) as u64 <= window_min)
                    .count() as u32
                    >= limit
            });
            proptest::prop_assert_eq!(got.is_some(), brute);
            if let Some(tr) = got {
                proptest::prop_assert!(tr.starts >= limit);
            }
        }
    }
}
