//! The RemediationPolicy status pass: each policy's failure budget and breaker as the fleet
//! index counts them (`recast_core::policy_status` words it), written only where it changed.
//! It runs on a timer beside the endpoint controller, under the same lease: failures leave the
//! budget's window with time alone, without any object changing.

use std::time::Duration;

use recast_core::fleet::BreakerSettings;
use recast_core::policy::PolicyView;
use recast_core::policy_status::{Standing, policy_status};

use super::Controller;
use crate::bmc::PowerControl;
use crate::store::{Backend, BackendError};

/// How often the policies' status is brought up to date.
pub const POLICY_STATUS_EVERY: Duration = Duration::from_secs(10);

impl<B: Backend, P: PowerControl> Controller<B, P> {
    /// Writes each RemediationPolicy's status where it differs from what is stored; returns how
    /// many were written. A policy whose write fails is logged and tried again next pass.
    pub async fn write_policy_statuses(&self) -> Result<usize, BackendError> {
        let now = self.clock.now();
        let mut written = 0;
        for policy in self.backend.all_policies().await? {
            let namespace = recast_crds::namespace_of(&policy.metadata).to_string();
            let name = policy.metadata.name.clone().unwrap_or_default();
            // The view its endpoints run on: a policy that does not parse counts as the
            // built-in defaults (see store::policy_of).
            let (view, problem) = match PolicyView::from_policy(&name, &policy) {
                Ok(v) => (v, None),
                Err(e) => (PolicyView::built_in(), Some(e.to_string())),
            };
            let standing = {
                let index = self.index();
                Standing {
                    failures: index.namespace_failures_within(&namespace, now, view.budget_window),
                    breaker: index.namespace_breaker(
                        &namespace,
                        &BreakerSettings {
                            max_starts: view.breaker_max_starts.clone(),
                            window: view.breaker_window,
                            reset: view.breaker_reset,
                        },
                    ),
                }
            };
            let previous = policy.status.clone().unwrap_or_default();
            let next = policy_status(
                &previous,
                &namespace,
                policy.metadata.generation,
                &view,
                problem.as_deref(),
                standing,
                now,
            );
            if policy.status.as_ref() == Some(&next) {
                continue;
            }
            match self.backend.write_policy_status(&policy, &next).await {
                Ok(()) => written += 1,
                Err(e) => tracing::warn!(
                    policy = %format!("{namespace}/{name}"),
                    error = %e,
                    "cannot write the policy's status; trying again in {}s",
                    POLICY_STATUS_EVERY.as_secs()
                ),
            }
        }
        Ok(written)
    }
}
