//! The RemediationPolicy status pass: each policy's failure budget and breaker as the fleet
//! index counts them (`recast_core::policy_status` words it), written only where it changed.
//! It runs on a timer beside the endpoint controller, under the same lease: failures leave the
//! budget's window with time alone, without any object changing.

use std::time::Duration;

use recast_core::fleet::BreakerSettings;
use recast_core::policy::PolicyView;
use recast_core::policy_status::{Judged, Standing, policy_status};

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
            let view = PolicyView::from_policy(&name, &policy);
            let problem;
            let judged = match &view {
                Ok(view) => {
                    let index = self.index();
                    Judged::Counted {
                        view,
                        standing: Standing {
                            failures: index.namespace_failures_within(
                                &namespace,
                                now,
                                view.budget_window,
                            ),
                            breaker: index
                                .namespace_breaker(&namespace, &BreakerSettings::of_policy(view)),
                        },
                    }
                }
                Err(e) => {
                    problem = e.to_string();
                    Judged::Invalid { problem: &problem }
                }
            };
            let previous = policy.status.clone().unwrap_or_default();
            let next = policy_status(
                &previous,
                &namespace,
                policy.metadata.generation,
                judged,
                now,
            );
            if policy.status.as_ref() == Some(&next) {
                continue;
            }
            let id = format!("{namespace}/{name}");
            match self.backend.write_policy_status(&policy, &next).await {
                Ok(()) => {
                    written += 1;
                    self.policy_status_failures().remove(&id);
                }
                // Said once per policy and error (a missing RBAC rule fails every pass).
                Err(e) => {
                    let said = self
                        .policy_status_failures()
                        .insert(id.clone(), e.to_string());
                    if said.as_deref() != Some(e.to_string().as_str()) {
                        tracing::warn!(
                            policy = %id,
                            error = %e,
                            "cannot write the policy's status; trying again every {}s",
                            POLICY_STATUS_EVERY.as_secs()
                        );
                    }
                }
            }
        }
        Ok(written)
    }
}
