//! Types shared by several kinds: conditions, durations, int-or-percent values, maintenance
//! windows. Each validation rule a user can trip is written once, here or on the field, as a
//! CEL rule with a message that names the rule; the apiserver and the embedded store both run it.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "recast.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "recast.dev/v1alpha1";

/// The regular expression behind every duration field ("90s", "15m", "1h30m", "7d").
///
/// Kept in one place because the CEL rules, the examples and the parser in `duration.rs` must
/// agree on it.
pub const DURATION_PATTERN: &str = "^([0-9]+(d|h|m|s))+$";

/// A status condition, in the shape of `metav1.Condition` so kubectl and tools like
/// `kubectl wait --for=condition=Ready` understand it. Times are RFC 3339 strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Compliant, Reimaging, AgentConnected, Verified, KnownGood, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: ConditionStatus,
    /// A CamelCase reason a script can branch on.
    pub reason: String,
    /// What happened and, when something is wrong, what to do next.
    #[serde(default)]
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Sets condition `type_` in `conditions` the way Kubernetes controllers do: the transition
/// time moves only when the status changes; reason, message and generation always follow.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    now: &str,
    observed_generation: Option<i64>,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.to_string();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: now.to_string(),
            observed_generation,
        }),
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A weekly maintenance window: reimages that may wait ("reimage in window", waves) start only
/// inside it. `start` is local wall-clock time in `timeZone`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Local start time, 24-hour "HH:MM".
    #[x_kube(validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("maintenanceWindow.start must be 24-hour HH:MM, such as 22:00"))]
    #[schemars(length(max = 5))]
    pub start: String,
    /// How long the window stays open, such as "4h".
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("maintenanceWindow.duration must be a duration such as 90m, 4h or 1h30m"))]
    #[schemars(length(max = 32))]
    pub duration: String,
    /// Days on which the window opens; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// IANA time zone such as "Europe/Berlin" or "America/New_York"; defaults to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$')").message("maintenanceWindow.timeZone must be an IANA zone name such as Europe/Berlin"))]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A reference to a Secret (kube backend) or a stored credential (embedded backend) in the
/// object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self) <= 253").message("secret names must be DNS subdomains: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(max = 253))]
    pub name: String,
}

/// How an int-or-percent value (batch sizes, budgets, concurrency) resolves against a total.
///
/// Kubernetes rounds maxUnavailable-like values down and maxSurge-like values up; `round_up`
/// picks which. Returns None when the value is malformed (validation rejects those first).
pub fn resolve_int_or_percent(value: &IntOrString, total: u32, round_up: bool) -> Option<u32> {
    match value {
        IntOrString::Int(n) => u32::try_from(*n).ok(),
        IntOrString::String(s) => {
            let pct: u64 = s.strip_suffix('%')?.parse().ok()?;
            if pct > 100 {
                return None;
            }
            let scaled = u64::from(total) * pct;
            let v = if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            };
            u32::try_from(v).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_like_kubernetes() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve_int_or_percent(&p("25%"), 10, false), Some(2));
        assert_eq!(resolve_int_or_percent(&p("25%"), 10, true), Some(3));
        assert_eq!(resolve_int_or_percent(&p("100%"), 7, false), Some(7));
        assert_eq!(resolve_int_or_percent(&p("0%"), 7, true), Some(0));
        assert_eq!(
            resolve_int_or_percent(&IntOrString::Int(4), 2, false),
            Some(4)
        );
    }

    #[test]
    fn malformed_int_or_percent_resolves_to_none() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve_int_or_percent(&p("101%"), 10, false), None);
        assert_eq!(resolve_int_or_percent(&p("ten"), 10, false), None);
        assert_eq!(resolve_int_or_percent(&p("10"), 10, false), None);
        assert_eq!(
            resolve_int_or_percent(&IntOrString::Int(-1), 10, false),
            None
        );
    }
}
