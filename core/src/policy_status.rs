//! What a RemediationPolicy's status says: where its namespace stands against the policy's
//! failure budget and circuit breaker, and whether the policy itself can be used. Pure: the
//! controller counts (from its fleet index) and writes; this decides the words.
//!
//! The budget and the breaker are the namespace's (every endpoint there counts), judged with
//! this policy's limits: the endpoints that name this policy are halted when its limits are
//! reached, whatever another policy of the namespace allows.

use jiff::Timestamp;
use recast_crds::common::{ConditionStatus, set_condition};
use recast_crds::policy::RemediationPolicyStatus;

use crate::breaker::Trip;
use crate::policy::PolicyView;

/// Condition: the policy parsed; False means its endpoints run on the built-in defaults.
pub const VALID: &str = "Valid";
/// Condition: the failure budget is spent; automatic reimages of its endpoints wait.
pub const REMEDIATION_HALTED: &str = "RemediationHalted";
/// Condition: the namespace's circuit breaker (with this policy's limits) is open.
pub const BREAKER_OPEN: &str = "BreakerOpen";

/// What of a RemediationPolicy decides endpoints: its spec and its annotations (the breaker's
/// reset), not the status written from them. Equal fingerprints, equal decisions: a status
/// write must not re-evaluate every endpoint of the namespace.
pub fn fingerprint(policy: &recast_crds::policy::RemediationPolicy) -> String {
    serde_json::json!([policy.spec, policy.metadata.annotations]).to_string()
}

/// Where the namespace stands, counted by the controller with the limits of the view in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Attempts of the namespace that ended Failed within the budget's window.
    pub failures: u32,
    /// Whether the namespace's breaker is open under the view's breaker settings.
    pub breaker: Option<Trip>,
}

/// What the controller found: a policy its endpoints run on, with the namespace's counts under
/// its limits, or one that does not parse (the lifecycle then starts nothing automatic for
/// the endpoints that name it: see `lifecycle`'s blocker).
#[derive(Clone, Copy, Debug)]
pub enum Judged<'a> {
    Counted {
        view: &'a PolicyView,
        standing: Standing,
    },
    Invalid {
        problem: &'a str,
    },
}

/// The status to write. Conditions keep their transition time while their status holds
/// (`previous`); conditions of other types are dropped (an older release's would stand
/// forever).
pub fn policy_status(
    previous: &RemediationPolicyStatus,
    namespace: &str,
    generation: Option<i64>,
    judged: Judged<'_>,
    now: Timestamp,
) -> RemediationPolicyStatus {
    let at = crate::time::format(now);
    let mut conditions = previous.conditions.clone();
    conditions.retain(|c| [VALID, REMEDIATION_HALTED, BREAKER_OPEN].contains(&c.type_.as_str()));
    let mut set = |type_: &str, status, reason: &str, message: String| {
        set_condition(
            &mut conditions,
            type_,
            status,
            reason,
            message,
            &at,
            generation,
        )
    };
    let (view, standing) = match judged {
        Judged::Invalid { problem } => {
            let off = format!(
                "{problem}; automatic remediation of the endpoints that name this policy is off until it is fixed (manual reimages and waves still run, with the built-in limits)"
            );
            set(VALID, ConditionStatus::False, "Invalid", off.clone());
            set(
                REMEDIATION_HALTED,
                ConditionStatus::True,
                "InvalidPolicy",
                off,
            );
            set(
                BREAKER_OPEN,
                ConditionStatus::Unknown,
                "InvalidPolicy",
                "the policy does not parse; its breaker is not counted".into(),
            );
            return RemediationPolicyStatus {
                budget: Some("off: the policy is invalid".into()),
                remediation_halted: true,
                conditions,
                observed_generation: generation,
            };
        }
        Judged::Counted { view, standing } => (view, standing),
    };
    let window = recast_crds::duration::format(view.budget_window);
    let max = view.budget_max_failures;
    let halted = view.budget_spent(standing.failures);
    let counted = format!("{}/{max} failures in {window}", standing.failures);
    set(
        VALID,
        ConditionStatus::True,
        "Parsed",
        "the endpoints that name this policy use it".into(),
    );
    if halted {
        set(
            REMEDIATION_HALTED,
            ConditionStatus::True,
            "BudgetExhausted",
            format!(
                "{} attempts in namespace {namespace} failed within {window} (budget {max}): automatic reimages of the endpoints that name this policy wait; investigate the failures (`recastctl history`), then raise spec.failureBudget.maxFailedAttempts or wait for them to leave the window",
                standing.failures
            ),
        );
    } else {
        set(
            REMEDIATION_HALTED,
            ConditionStatus::False,
            "WithinBudget",
            counted.clone(),
        );
    }
    match standing.breaker {
        Some(trip) => set(
            BREAKER_OPEN,
            ConditionStatus::True,
            "TooManyAutomaticStarts",
            trip.explain(
                &format!("namespace {namespace}"),
                &format!(
                    "`recastctl breaker status -n {namespace}`, then `recastctl breaker reset -n {namespace} --reason ...`"
                ),
            ),
        ),
        None => set(
            BREAKER_OPEN,
            ConditionStatus::False,
            "Closed",
            "automatic reimages start within the breaker's limit".into(),
        ),
    }
    RemediationPolicyStatus {
        budget: Some(if halted {
            format!("exhausted: {counted}")
        } else {
            counted
        }),
        remediation_halted: halted,
        conditions,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn condition<'a>(
        s: &'a RemediationPolicyStatus,
        type_: &str,
    ) -> &'a recast_crds::common::Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    const CALM: Standing = Standing {
        failures: 0,
        breaker: None,
    };

    /// `failures` recent failures and the breaker closed.
    fn failing(failures: u32) -> Standing {
        Standing {
            failures,
            breaker: None,
        }
    }

    /// The status for `standing` under the built-in policy, in namespace "shop".
    fn counted(
        previous: &RemediationPolicyStatus,
        generation: Option<i64>,
        standing: Standing,
        at: &str,
    ) -> RemediationPolicyStatus {
        policy_status(
            previous,
            "shop",
            generation,
            Judged::Counted {
                view: &PolicyView::built_in(),
                standing,
            },
            t(at),
        )
    }

    #[test]
    fn a_calm_namespace_reads_as_within_budget_with_the_breaker_closed() {
        let s = counted(
            &Default::default(),
            Some(3),
            failing(2),
            "2026-01-15T08:00:00Z",
        );
        assert_eq!(s.budget.as_deref(), Some("2/3 failures in 1h"));
        assert!(!s.remediation_halted);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(condition(&s, VALID).status, ConditionStatus::True);
        assert_eq!(condition(&s, REMEDIATION_HALTED).reason, "WithinBudget");
        assert_eq!(condition(&s, BREAKER_OPEN).status, ConditionStatus::False);
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn a_spent_budget_halts_and_says_what_to_do() {
        let s = counted(
            &Default::default(),
            None,
            failing(4),
            "2026-01-15T08:00:00Z",
        );
        assert_eq!(s.budget.as_deref(), Some("exhausted: 4/3 failures in 1h"));
        assert!(s.remediation_halted);
        let c = condition(&s, REMEDIATION_HALTED);
        assert_eq!(c.status, ConditionStatus::True);
        assert_eq!(c.reason, "BudgetExhausted");
        assert!(
            c.message
                .contains("4 attempts in namespace shop failed within 1h (budget 3)")
        );
        assert!(c.message.contains("spec.failureBudget.maxFailedAttempts"));
    }

    #[test]
    fn the_budget_is_spent_by_the_rule_the_lifecycle_holds_starts_with() {
        // One rule (PolicyView::budget_spent), read by the lifecycle's blocker and here.
        let v = PolicyView::built_in();
        for failures in 0..6 {
            let s = counted(
                &Default::default(),
                None,
                failing(failures),
                "2026-01-15T08:00:00Z",
            );
            assert_eq!(s.remediation_halted, v.budget_spent(failures));
            assert_eq!(s.remediation_halted, failures >= 3, "{failures}");
        }
    }

    #[test]
    fn an_open_breaker_names_the_namespace_and_the_reset() {
        let trip = Trip {
            at: t("2026-01-15T07:59:00Z"),
            starts: 5,
            limit: 5,
            window: Duration::from_secs(3600),
        };
        let s = counted(
            &Default::default(),
            None,
            Standing {
                failures: 0,
                breaker: Some(trip),
            },
            "2026-01-15T08:00:00Z",
        );
        let c = condition(&s, BREAKER_OPEN);
        assert_eq!(c.status, ConditionStatus::True);
        assert!(c.message.contains("circuit breaker open in namespace shop"));
        assert!(c.message.contains("recastctl breaker reset -n shop"));
        // The breaker does not spend the budget.
        assert!(!s.remediation_halted);
    }

    #[test]
    fn a_policy_that_does_not_parse_says_automatic_remediation_is_off() {
        // What the lifecycle does with such a policy: nothing automatic starts.
        let s = policy_status(
            &Default::default(),
            "shop",
            Some(2),
            Judged::Invalid {
                problem: "RemediationPolicy \"default\": cooldown: bad",
            },
            t("2026-01-15T08:00:00Z"),
        );
        let c = condition(&s, VALID);
        assert_eq!(c.status, ConditionStatus::False);
        assert_eq!(c.reason, "Invalid");
        assert!(c.message.contains("cooldown: bad"));
        assert!(
            c.message
                .contains("automatic remediation of the endpoints that name this policy is off")
        );
        assert!(s.remediation_halted);
        assert_eq!(condition(&s, REMEDIATION_HALTED).reason, "InvalidPolicy");
        assert_eq!(condition(&s, BREAKER_OPEN).status, ConditionStatus::Unknown);
        assert_eq!(s.budget.as_deref(), Some("off: the policy is invalid"));
    }

    #[test]
    fn a_transition_time_moves_only_when_a_condition_changes_status() {
        let first = counted(&Default::default(), None, CALM, "2026-01-15T08:00:00Z");
        let same = counted(&first, None, failing(1), "2026-01-15T09:00:00Z");
        assert_eq!(
            condition(&same, REMEDIATION_HALTED).last_transition_time,
            "2026-01-15T08:00:00Z"
        );
        assert_eq!(
            condition(&same, REMEDIATION_HALTED).message,
            "1/3 failures in 1h"
        );
        let halted = counted(&same, None, failing(3), "2026-01-15T10:00:00Z");
        assert_eq!(
            condition(&halted, REMEDIATION_HALTED).last_transition_time,
            "2026-01-15T10:00:00Z"
        );
        assert_eq!(
            condition(&halted, BREAKER_OPEN).last_transition_time,
            "2026-01-15T08:00:00Z"
        );
    }

    #[test]
    fn the_same_standing_gives_the_same_status_so_nothing_is_written_again() {
        let first = counted(&Default::default(), Some(1), CALM, "2026-01-15T08:00:00Z");
        let again = counted(&first, Some(1), CALM, "2026-01-15T08:05:00Z");
        assert_eq!(first, again);
    }

    #[test]
    fn a_status_leaves_the_fingerprint_alone_and_a_spec_or_a_reset_changes_it() {
        let mut p: recast_crds::policy::RemediationPolicy =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
                "metadata": {"name": "default", "namespace": "shop"}, "spec": {}
            }))
            .unwrap();
        let before = fingerprint(&p);
        p.status = Some(counted(
            &Default::default(),
            None,
            CALM,
            "2026-01-15T08:00:00Z",
        ));
        assert_eq!(fingerprint(&p), before);
        p.spec.cooldown = "1h".into();
        let spec_changed = fingerprint(&p);
        assert_ne!(spec_changed, before);
        p.metadata.annotations = Some(
            [(
                recast_crds::policy::BREAKER_RESET_ANNOTATION.to_string(),
                "2026-01-15T08:00:00Z".to_string(),
            )]
            .into(),
        );
        assert_ne!(fingerprint(&p), spec_changed);
    }

    #[test]
    fn conditions_written_by_someone_else_or_an_older_release_are_dropped() {
        let mut previous = RemediationPolicyStatus::default();
        set_condition(
            &mut previous.conditions,
            "Stale",
            ConditionStatus::True,
            "Old",
            String::new(),
            "2025-01-01T00:00:00Z",
            None,
        );
        let s = counted(&previous, None, CALM, "2026-01-15T08:00:00Z");
        assert!(s.conditions.iter().all(|c| c.type_ != "Stale"));
        assert_eq!(s.conditions.len(), 3);
    }
}
