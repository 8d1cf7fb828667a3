//! `recastctl breaker status|reset`: the circuit breaker on automatic reimages (see
//! recast_core::breaker and docs/breaker.md). Status is computed here from the endpoints and
//! the policies with the same functions the operator uses; a reset is an annotation on the
//! RemediationPolicies that govern the namespace (the operator reads it on its next pass).

use std::process::ExitCode;

use clap::Subcommand;
use jiff::Timestamp;
use recast_core::breaker::{self, Trip};
use recast_core::fleet::{BreakerSettings, FleetIndex};
use recast_core::policy::PolicyView;
use recast_crds::Endpoint;
use recast_crds::manifest::Kind;
use recast_crds::policy::{
    BREAKER_RESET_ANNOTATION, BREAKER_RESET_REASON_ANNOTATION, DEFAULT_POLICY_NAME,
    FLEET_BREAKER_RESET_ANNOTATION, FLEET_BREAKER_RESET_REASON_ANNOTATION, RemediationPolicy,
};
use serde_json::{Value, json};

use crate::backend::Backend;
use crate::{CliError, table};

#[derive(Subcommand)]
pub enum BreakerCommand {
    /// Whether automatic reimages are stopped in this namespace, why, and the automatic
    /// reimages that count (those since the last reset).
    Status,
    /// A person looked: automatic reimages may start again (only those after now count). Writes
    /// the reset on every RemediationPolicy of the namespace (creating "default" with the
    /// built-in settings when there is none).
    Reset {
        /// What was looked at, for the record.
        #[arg(long, required = true)]
        reason: String,
        /// Reset the fleet-wide breaker instead (the operator's): recorded on the
        /// RemediationPolicy "default" of the operator's namespace.
        #[arg(long)]
        fleet: bool,
        /// The operator's namespace, for --fleet: on Kubernetes the namespace recast-operator
        /// runs in (required there); the embedded store's is "default".
        #[arg(long)]
        operator_namespace: Option<String>,
    },
}

/// One automatic attempt that counts toward a breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub at: Timestamp,
    pub endpoint: String,
    pub trigger: String,
    pub attempt: String,
}

/// Every automatic attempt (running or finished) of `endpoints`, newest first.
pub fn automatic_starts(endpoints: &[Endpoint]) -> Vec<Start> {
    let mut out = Vec::new();
    for ep in endpoints {
        let Some(st) = &ep.status else { continue };
        let name = ep.metadata.name.clone().unwrap_or_default();
        out.extend(breaker::automatic_starts(st).map(|s| Start {
            at: s.at,
            endpoint: name.clone(),
            trigger: format!("{:?}", s.trigger),
            attempt: s.attempt.to_string(),
        }));
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.at));
    out
}

/// The status screen of one namespace for one policy's settings (pure).
pub fn status_text(
    ns: &str,
    policy: &str,
    settings: &BreakerSettings,
    endpoints: u32,
    starts: &[Start],
    trip: Option<Trip>,
) -> String {
    let limit = breaker::limit(
        settings.max_starts.as_ref(),
        endpoints.max(1),
        breaker::default_limit,
    );
    let how = match &settings.max_starts {
        Some(v) => format!("spec.breaker.maxStarts {}", int_or_percent(v)),
        None => format!("the default: 5% of {endpoints} endpoints, at least 3, at most 50"),
    };
    let reset = settings
        .reset
        .map_or("never".to_string(), recast_core::time::format);
    let counted: Vec<&Start> = starts
        .iter()
        .filter(|s| settings.reset.is_none_or(|r| s.at > r))
        .collect();
    let mut out = match trip {
        Some(t) => format!(
            "Namespace {ns} (policy {policy}): OPEN. {}\n",
            t.explain(
                &format!("namespace {ns}"),
                &format!("recastctl breaker reset -n {ns} --reason ...")
            )
        ),
        None => format!(
            "Namespace {ns} (policy {policy}): closed. {} automatic reimage(s) since the last reset.\n",
            counted.len()
        ),
    };
    out.push_str(&format!(
        "Limit: {limit} automatic reimages within {} ({how}); last reset: {reset}.\n",
        recast_crds::duration::format(settings.window)
    ));
    if !counted.is_empty() {
        let mut rows = vec![
            ["STARTED", "ENDPOINT", "TRIGGER", "ATTEMPT"]
                .map(String::from)
                .to_vec(),
        ];
        for s in counted.iter().take(20) {
            rows.push(vec![
                recast_core::time::format(s.at),
                s.endpoint.clone(),
                s.trigger.clone(),
                s.attempt.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&table::plain(&rows));
        if counted.len() > 20 {
            out.push_str(&format!("... and {} more\n", counted.len() - 20));
        }
    }
    out
}

fn int_or_percent(v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> String {
    match v {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    }
}

fn policies(store: &Backend, ns: &str) -> Result<Vec<(String, PolicyView)>, CliError> {
    let mut out = Vec::new();
    for v in store.list(Kind::RemediationPolicy, Some(ns))? {
        let p: RemediationPolicy = serde_json::from_value(v).map_err(|e| {
            CliError::Failed(format!("a stored RemediationPolicy does not decode: {e}"))
        })?;
        let name = p.metadata.name.clone().unwrap_or_default();
        let view =
            PolicyView::from_policy(&name, &p).map_err(|e| CliError::Failed(e.to_string()))?;
        out.push((name, view));
    }
    if !out.iter().any(|(n, _)| n == DEFAULT_POLICY_NAME) {
        out.insert(
            0,
            (
                format!("{DEFAULT_POLICY_NAME} (built-in, not stored)"),
                PolicyView::built_in(),
            ),
        );
    }
    Ok(out)
}

pub fn run(
    store: &Backend,
    ns: &str,
    command: BreakerCommand,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    match command {
        BreakerCommand::Status => {
            let endpoints: Vec<Endpoint> = store
                .list(Kind::Endpoint, Some(ns))?
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect();
            let mut index = FleetIndex::default();
            for ep in &endpoints {
                index.upsert(
                    &format!("{ns}/{}", ep.metadata.name.as_deref().unwrap_or_default()),
                    ep.spec.site.as_deref(),
                    &ep.status.clone().unwrap_or_default(),
                );
            }
            let starts = automatic_starts(&endpoints);
            let mut first = true;
            for (name, view) in policies(store, ns)? {
                let settings = BreakerSettings::of_policy(&view);
                if !first {
                    println!();
                }
                first = false;
                print!(
                    "{}",
                    status_text(
                        ns,
                        &name,
                        &settings,
                        index.namespace_len(ns),
                        &starts,
                        index.namespace_breaker(ns, &settings),
                    )
                );
            }
            println!(
                "\nThe fleet-wide breaker (all namespaces) is set by the operator's flags (--fleet-breaker-max-starts, default 2% of all endpoints, at least 5, at most 100, within --fleet-breaker-window 1h); when it holds an endpoint, the endpoint's message says so. The operator's administrator resets it with `recastctl breaker reset --fleet --operator-namespace NS --reason ...`."
            );
            Ok(ExitCode::SUCCESS)
        }
        BreakerCommand::Reset {
            reason,
            fleet,
            operator_namespace,
        } => {
            if reason.trim().is_empty() {
                return Err(CliError::Usage(
                    "--reason must say what was looked at before automatic reimages may start again"
                        .into(),
                ));
            }
            let who = std::env::var("USER").unwrap_or_else(|_| "unknown user".into());
            let at = recast_core::time::format(now);
            // The fleet's reset is its own annotation: resetting the operator's namespace's
            // breaker never resets the fleet's, nor the other way round.
            let (reset_key, reason_key) = if fleet {
                (
                    FLEET_BREAKER_RESET_ANNOTATION,
                    FLEET_BREAKER_RESET_REASON_ANNOTATION,
                )
            } else {
                (BREAKER_RESET_ANNOTATION, BREAKER_RESET_REASON_ANNOTATION)
            };
            let mut annotations = serde_json::Map::new();
            annotations.insert(reset_key.into(), at.clone().into());
            annotations.insert(
                reason_key.into(),
                format!("{} ({who}, {at})", reason.trim()).into(),
            );
            let operator_namespace = match (operator_namespace, store) {
                (Some(n), _) => n,
                (None, Backend::Kube(_)) if fleet => {
                    return Err(CliError::Usage(
                        "--fleet on Kubernetes needs --operator-namespace: the namespace recast-operator runs in, where its fleet-wide breaker's reset is read"
                            .into(),
                    ));
                }
                (None, _) => recast_crds::DEFAULT_NAMESPACE.to_string(),
            };
            let target_ns = if fleet {
                operator_namespace.as_str()
            } else {
                ns
            };
            let names: Vec<String> = if fleet {
                vec![DEFAULT_POLICY_NAME.to_string()]
            } else {
                store
                    .list(Kind::RemediationPolicy, Some(ns))?
                    .iter()
                    .filter_map(|v| v.pointer("/metadata/name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            };
            let mut created = false;
            for name in names.iter().chain(
                (!names.iter().any(|n| n == DEFAULT_POLICY_NAME))
                    .then(|| DEFAULT_POLICY_NAME.to_string())
                    .iter(),
            ) {
                if store
                    .get(Kind::RemediationPolicy, target_ns, name)?
                    .is_none()
                {
                    // Empty spec: the built-in settings, so creating it changes nothing else.
                    store.apply(
                        &json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
                                "metadata": {"name": name, "namespace": target_ns, "annotations": annotations},
                                "spec": {}}),
                        target_ns,
                    )?;
                    created = true;
                } else {
                    store.set_annotations(
                        Kind::RemediationPolicy,
                        target_ns,
                        name,
                        &annotations,
                    )?;
                }
            }
            let scope = if fleet {
                "fleet-wide breaker".to_string()
            } else {
                format!("breaker of namespace {ns}")
            };
            println!(
                "{scope} reset at {at}: automatic reimages may start again, paced by the concurrency limits; only those started from now on count{}",
                if created {
                    format!(
                        " (created RemediationPolicy {DEFAULT_POLICY_NAME} in {target_ns} with the built-in settings to record it)"
                    )
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_status_says_open_or_closed_what_counts_and_how_to_reset() {
        let starts = vec![
            Start {
                at: t("2026-01-15T08:50:00Z"),
                endpoint: "kiosk-03".into(),
                trigger: "FailedRollback".into(),
                attempt: "kiosk-03-ab-1".into(),
            },
            Start {
                at: t("2026-01-15T08:20:00Z"),
                endpoint: "kiosk-02".into(),
                trigger: "BootCrash".into(),
                attempt: "kiosk-02-ab-1".into(),
            },
            Start {
                at: t("2026-01-15T08:00:00Z"),
                endpoint: "kiosk-01".into(),
                trigger: "FailedRollback".into(),
                attempt: "kiosk-01-ab-1".into(),
            },
        ];
        let settings = BreakerSettings {
            max_starts: None,
            window: Duration::from_secs(3600),
            reset: None,
        };
        let at: Vec<Timestamp> = starts.iter().map(|s| s.at).collect();
        let trip = breaker::trip(&at, None, 3, settings.window);
        let open = status_text("kiosks", "default", &settings, 10, &starts, trip);
        recast_tests::assert_golden(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/breaker/open.txt"),
            &open,
        );
        // After a reset: closed, and the earlier starts no longer listed.
        let reset = BreakerSettings {
            reset: Some(t("2026-01-15T09:00:00Z")),
            ..settings
        };
        let closed = status_text("kiosks", "default", &reset, 10, &starts, None);
        assert!(
            closed.starts_with("Namespace kiosks (policy default): closed. 0 automatic reimage(s) since the last reset.\nLimit: 3 automatic reimages within 1h (the default: 5% of 10 endpoints, at least 3, at most 50); last reset: 2026-01-15T09:00:00Z.\n"),
            "{closed}"
        );
        assert!(!closed.contains("kiosk-01"));
    }
}
