//! A RemediationPolicy resolved for the core: durations parsed, defaults filled in.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use recast_crds::MaintenanceWindow;
use recast_crds::common::resolve_int_or_percent;
use recast_crds::duration;
use recast_crds::policy::{RemediationAction, RemediationPolicySpec, SignalActions, UpdateMode};

use super::signal::SignalKind;

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyView {
    pub name: String,
    pub actions: SignalActions,
    pub cooldown: Duration,
    pub max_tries: u32,
    pub backoff: Duration,
    pub try_timeout: Duration,
    pub global_limit: IntOrString,
    pub per_site_limit: Option<IntOrString>,
    pub budget_max_failures: u32,
    pub budget_window: Duration,
    pub window: Option<MaintenanceWindow>,
    pub heartbeat_timeout: Duration,
    pub update_mode: UpdateMode,
    pub guard_on_failed_rollback: bool,
    /// What to do when Windows will not honour the update hold (`holdNotEnforced`).
    pub hold_not_enforced: RemediationAction,
    /// What makes a boot loop (`bootLoop`).
    pub boot_loop: crate::power::BootLoopRule,
    /// The circuit breaker: automatic starts allowed within `breaker_window` (None: the
    /// default for the namespace's size, see [`crate::breaker::default_limit`]).
    pub breaker_max_starts: Option<IntOrString>,
    pub breaker_window: Duration,
    /// When a person last reset it (the policy's reset annotation).
    pub breaker_reset: Option<jiff::Timestamp>,
    /// When a person last reset the fleet-wide breaker, if this policy records it (only the
    /// operator's namespace's "default" is read for that).
    pub fleet_breaker_reset: Option<jiff::Timestamp>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("RemediationPolicy {policy:?}: {field}: {source}")]
    Duration {
        policy: String,
        field: &'static str,
        source: duration::DurationError,
    },
    #[error(
        "RemediationPolicy {policy:?}: breaker.window is zero, which would turn the breaker off; write a window such as 1h"
    )]
    ZeroWindow { policy: String },
    #[error(
        "RemediationPolicy {policy:?}: annotation {annotation} is {value:?}, not an RFC 3339 time; reset the breaker again with `recastctl breaker reset`"
    )]
    Annotation {
        policy: String,
        annotation: &'static str,
        value: String,
    },
}

impl PolicyView {
    pub fn from_spec(name: &str, spec: &RemediationPolicySpec) -> Result<Self, PolicyError> {
        let d = |field: &'static str, v: &str| {
            duration::parse(v).map_err(|source| PolicyError::Duration {
                policy: name.to_string(),
                field,
                source,
            })
        };
        Ok(PolicyView {
            name: name.to_string(),
            actions: spec.signals.clone(),
            cooldown: d("cooldown", &spec.cooldown)?,
            max_tries: spec.retry.max_tries.max(1),
            backoff: d("retry.backoff", &spec.retry.backoff)?,
            try_timeout: d("retry.tryTimeout", &spec.retry.try_timeout)?,
            global_limit: spec.concurrency.global.clone(),
            per_site_limit: spec.concurrency.per_site.clone(),
            budget_max_failures: spec.failure_budget.max_failed_attempts.max(1),
            budget_window: d("failureBudget.window", &spec.failure_budget.window)?,
            window: spec.maintenance_window.clone(),
            heartbeat_timeout: d("heartbeatTimeout", &spec.heartbeat_timeout)?,
            update_mode: spec.update_mode,
            guard_on_failed_rollback: spec.guard_on_failed_rollback,
            hold_not_enforced: spec.hold_not_enforced,
            boot_loop: crate::power::BootLoopRule {
                // The API allows 2..=20; a policy stored before that rule still never calls one
                // boot a loop.
                boots: spec.boot_loop.boots.clamp(2, 20),
                within: d("bootLoop.within", &spec.boot_loop.within)?,
            },
            breaker_max_starts: spec.breaker.max_starts.clone(),
            breaker_window: match d("breaker.window", &spec.breaker.window)? {
                // A zero window never holds two starts together: the breaker off by accident.
                w if w.is_zero() => {
                    return Err(PolicyError::ZeroWindow {
                        policy: name.to_string(),
                    });
                }
                w => w,
            },
            breaker_reset: None,
            fleet_breaker_reset: None,
        })
    }

    /// The view of a stored policy: its spec, and the breaker reset its annotations record
    /// (an annotation that is not an RFC 3339 time is an error naming it, never ignored: a
    /// reset a person made must not silently not count).
    pub fn from_policy(
        name: &str,
        policy: &recast_crds::policy::RemediationPolicy,
    ) -> Result<Self, PolicyError> {
        let mut v = Self::from_spec(name, &policy.spec)?;
        let annotated = |annotation: &'static str| -> Result<Option<jiff::Timestamp>, PolicyError> {
            policy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotation))
                .map(|at| {
                    crate::time::parse(at).ok_or_else(|| PolicyError::Annotation {
                        policy: name.to_string(),
                        annotation,
                        value: at.clone(),
                    })
                })
                .transpose()
        };
        v.breaker_reset = annotated(recast_crds::policy::BREAKER_RESET_ANNOTATION)?;
        v.fleet_breaker_reset = annotated(recast_crds::policy::FLEET_BREAKER_RESET_ANNOTATION)?;
        Ok(v)
    }

    /// The policy endpoints get when no RemediationPolicy named "default" exists: the API's
    /// own defaults.
    pub fn built_in() -> Self {
        let spec: RemediationPolicySpec = serde_json::from_value(serde_json::json!({}))
            .unwrap_or_else(|_| unreachable!("every RemediationPolicySpec field has a default"));
        // The defaults are literals that parse; see policy.rs in crds.
        Self::from_spec("(built-in defaults)", &spec).unwrap_or_else(|_| unreachable!())
    }

    /// The action for a signal. HeartbeatLost alone never wipes a machine, whatever the policy
    /// says: a switch port going down looks the same as a crash.
    pub fn action_for(&self, kind: SignalKind) -> RemediationAction {
        let a = match kind {
            SignalKind::FailedRollback => self.actions.failed_rollback,
            SignalKind::BootCrash => self.actions.boot_crash,
            SignalKind::BootLoop => self.actions.boot_loop,
            SignalKind::HeartbeatLost => self.actions.heartbeat_lost,
            SignalKind::Drift => self.actions.drift,
            SignalKind::NonCompliant => self.actions.non_compliant,
        };
        match (kind, a) {
            (
                SignalKind::HeartbeatLost,
                RemediationAction::ReimageNow | RemediationAction::ReimageInWindow,
            ) => RemediationAction::AlertOnly,
            _ => a,
        }
    }

    /// Fleet-wide limit on attempts at once, for a fleet of `total` endpoints (at least 1).
    pub fn global_limit(&self, total: u32) -> u32 {
        resolve_int_or_percent(&self.global_limit, total, false)
            .unwrap_or(1)
            .max(1)
    }

    /// Per-site limit for a site of `site_total` endpoints; None when unlimited.
    pub fn per_site_limit(&self, site_total: u32) -> Option<u32> {
        self.per_site_limit.as_ref().map(|l| {
            resolve_int_or_percent(l, site_total, false)
                .unwrap_or(1)
                .max(1)
        })
    }

    /// Whether `failures` recent failed attempts spend the failure budget (automatic
    /// reimages then wait).
    pub fn budget_spent(&self, failures: u32) -> bool {
        failures >= self.budget_max_failures
    }

    /// Backoff before try `next_try` (2, 3, ...): backoff, 2×backoff, 4×backoff, ...
    pub fn backoff_before(&self, next_try: u32) -> Duration {
        let exp = next_try.saturating_sub(2).min(16);
        self.backoff.saturating_mul(1u32 << exp)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_breaker_window_of_zero_and_a_bad_reset_are_errors_that_say_what_to_write() {
        let mut spec: RemediationPolicySpec =
            serde_json::from_value(serde_json::json!({})).unwrap();
        spec.breaker.window = "0s".into();
        let e = PolicyView::from_spec("default", &spec).unwrap_err();
        assert!(e.to_string().contains("breaker.window is zero"), "{e}");
        let p: recast_crds::policy::RemediationPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "default", "annotations": {
                recast_crds::policy::BREAKER_RESET_ANNOTATION: "yesterday",
                recast_crds::policy::FLEET_BREAKER_RESET_ANNOTATION: "2026-01-15T09:00:00Z"}},
            "spec": {}
        }))
        .unwrap();
        let e = PolicyView::from_policy("default", &p).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"yesterday\", not an RFC 3339 time"),
            "{e}"
        );
        // The two resets are read apart: the namespace's and the fleet's.
        let mut p = p;
        p.metadata.annotations.as_mut().unwrap().insert(
            recast_crds::policy::BREAKER_RESET_ANNOTATION.into(),
            "2026-01-15T08:00:00Z".into(),
        );
        let v = PolicyView::from_policy("default", &p).unwrap();
        assert_eq!(
            (
                v.breaker_reset.map(crate::time::format),
                v.fleet_breaker_reset.map(crate::time::format)
            ),
            (
                Some("2026-01-15T08:00:00Z".to_string()),
                Some("2026-01-15T09:00:00Z".to_string())
            )
        );
    }

    use super::*;

    #[test]
    fn built_in_defaults_are_conservative() {
        let p = PolicyView::built_in();
        assert_eq!(p.max_tries, 3);
        assert_eq!(p.cooldown, Duration::from_secs(6 * 3600));
        assert_eq!(p.global_limit(1000), 10);
        assert_eq!(p.per_site_limit(50), None);
        assert!(p.guard_on_failed_rollback);
        assert_eq!(
            p.action_for(SignalKind::FailedRollback),
            RemediationAction::ReimageNow
        );
        assert_eq!(
            p.action_for(SignalKind::NonCompliant),
            RemediationAction::AlertOnly
        );
    }

    #[test]
    fn heartbeat_lost_never_reimages_on_its_own() {
        let mut p = PolicyView::built_in();
        p.actions.heartbeat_lost = RemediationAction::ReimageNow;
        assert_eq!(
            p.action_for(SignalKind::HeartbeatLost),
            RemediationAction::AlertOnly
        );
        p.actions.heartbeat_lost = RemediationAction::Ignore;
        assert_eq!(
            p.action_for(SignalKind::HeartbeatLost),
            RemediationAction::Ignore
        );
    }

    #[test]
    fn percentage_limits_round_down_but_never_to_zero() {
        let mut p = PolicyView::built_in();
        p.global_limit = IntOrString::String("10%".into());
        assert_eq!(p.global_limit(400), 40);
        assert_eq!(p.global_limit(5), 1);
        p.per_site_limit = Some(IntOrString::String("50%".into()));
        assert_eq!(p.per_site_limit(3), Some(1));
    }

    #[test]
    fn backoff_doubles() {
        let p = PolicyView::built_in();
        assert_eq!(p.backoff_before(2), Duration::from_secs(300));
        assert_eq!(p.backoff_before(3), Duration::from_secs(600));
        assert_eq!(p.backoff_before(4), Duration::from_secs(1200));
    }
}
