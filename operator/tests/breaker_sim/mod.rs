//! A fleet in which every machine reports a failed rollback within a minute, the same on both
//! backends: the circuit breaker must let only its limit of automatic reimages start, say why
//! (the endpoints' message and a Warning), stay open when the window has passed, and let the
//! next ones start, at the paced rate, only after a person resets it. Drives a `Controller` on
//! any `Backend` the way wave_sim does: the operator's loop and the machines are played here.

#![allow(dead_code)]

use std::sync::Arc;

use recast_core::lifecycle::Input;
use recast_core::signal::SignalKind;
use recast_crds::endpoint::{EndpointStatus, ReportSummary};
use recast_operator::bmc::RecordingPower;
use recast_operator::controller::{Controller, FleetBreaker};
use recast_operator::metrics::Metrics;
use recast_operator::store::{Backend, Key};
use serde_json::{Value, json};

pub const IMAGE: &str = "win11-24h2-2026-01";
pub const OLD_BUILD: &str = "26100.7462";

#[path = "../support/manual_clock.rs"]
mod manual_clock;
pub use manual_clock::ManualClock;

pub fn ep_name(i: usize) -> String {
    format!("kiosk-{i:04}")
}

/// A namespace's policy: FailedRollback reimages now, no concurrency limit in the way (so
/// only the breaker can stop a storm), its breaker at `max_starts` within an hour.
pub fn policy(max_starts: u32) -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "concurrency": {"global": "100%"},
            "cooldown": "1m",
            "failureBudget": {"maxFailedAttempts": 10000},
            "breaker": {"maxStarts": max_starts, "window": "1h"}
        }
    })
}

/// A policy with its own concurrency limit and failure budget, the breaker out of the way.
pub fn policy_with(global: u32, max_failed: u32) -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "concurrency": {"global": global},
            "cooldown": "1m",
            "retry": {"maxTries": 1, "backoff": "1m", "tryTimeout": "2h"},
            "failureBudget": {"maxFailedAttempts": max_failed, "window": "1h"},
            "breaker": {"maxStarts": 10000, "window": "1h"}
        }
    })
}

/// `n` endpoints on the January image; `tenant` keeps their MAC addresses apart from another
/// tenant's (a MAC names one machine fleet-wide).
pub fn endpoints(n: usize, tenant: u8) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
                "metadata": {"name": ep_name(i)},
                "spec": {
                    "identity": {"macAddresses": [format!("52:54:{tenant:02x}:{:02x}:{:02x}:01", i >> 8 & 0xff, i & 0xff)]},
                    "bootMode": "uefi",
                    "image": {"goldenImage": IMAGE},
                },
            })
        })
        .collect()
}

pub type Ctrl<B> = Controller<B, RecordingPower>;

pub fn controller<B: Backend>(
    backend: B,
    clock: &Arc<ManualClock>,
    fleet: Option<FleetBreaker>,
) -> Arc<Ctrl<B>> {
    Arc::new(
        Controller::new(
            Arc::new(backend),
            Arc::new(RecordingPower::default()),
            clock.clone(),
            Arc::new(Metrics::new()),
        )
        .with_fleet_breaker(fleet),
    )
}

pub struct Tenant {
    pub ns: String,
    pub size: usize,
}

/// Plays the operator's loop and the machines against one controller.
pub struct Sim<B: Backend> {
    pub ctrl: Arc<Ctrl<B>>,
    pub clock: Arc<ManualClock>,
}

fn report(build: &str) -> Input {
    Input::AgentReport(ReportSummary {
        build: build.into(),
        ..Default::default()
    })
}

fn failed_rollback() -> Input {
    Input::Signals(vec![(
        SignalKind::FailedRollback,
        "Windows Update failed to install KB5074109 (0x800f0922); the endpoint still runs 26100.7462, below 26100.7623".into(),
    )])
}

/// What one tenant's endpoints look like now.
#[derive(Debug, Default)]
pub struct Count {
    /// Endpoints with an attempt (running or finished) since the simulation began.
    pub attempted: usize,
    /// Endpoints stopped with the breaker's message.
    pub held_by_breaker: usize,
    /// The message of one of them.
    pub message: Option<String>,
}

impl<B: Backend> Sim<B> {
    fn key(ns: &str, name: &str) -> Key {
        Key {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    pub async fn status(&self, ns: &str, name: &str) -> EndpointStatus {
        let ep = self
            .ctrl
            .backend
            .endpoint(&Self::key(ns, name))
            .await
            .unwrap();
        ep.and_then(|e| e.status).unwrap_or_default()
    }

    /// Every endpoint reports once, healthy.
    pub async fn all_ready(&self, tenants: &[Tenant]) {
        self.ctrl.prime().await.unwrap();
        for t in tenants {
            for i in 0..t.size {
                self.ctrl
                    .reconcile(&Self::key(&t.ns, &ep_name(i)), report(OLD_BUILD))
                    .await
                    .unwrap();
            }
        }
    }

    /// The operator's policy-status pass (every 10 s in the operator); how many it wrote.
    pub async fn write_policy_statuses(&self) -> usize {
        self.ctrl.write_policy_statuses().await.unwrap()
    }

    /// Endpoints `from..to` of a tenant report a failed rollback (a second apart).
    pub async fn storm(&self, t: &Tenant, from: usize, to: usize) {
        for i in from..to {
            self.ctrl
                .reconcile(&Self::key(&t.ns, &ep_name(i)), failed_rollback())
                .await
                .unwrap();
            if i % 60 == 0 {
                self.clock.advance(1);
            }
        }
    }

    /// The operator's periodic pass over a tenant: every endpoint reconciles.
    pub async fn pass(&self, t: &Tenant) {
        for i in 0..t.size {
            self.ctrl
                .reconcile(&Self::key(&t.ns, &ep_name(i)), Input::Reconcile)
                .await
                .unwrap();
        }
    }

    /// Every running attempt of a tenant fails its imaging (one try each: quarantined).
    pub async fn fail_running(&self, t: &Tenant) -> usize {
        let mut failed = 0;
        for i in 0..t.size {
            let name = ep_name(i);
            let Some(a) = self.status(&t.ns, &name).await.active_attempt else {
                continue;
            };
            let k = Self::key(&t.ns, &name);
            self.ctrl
                .reconcile(
                    &k,
                    Input::NetworkBooted {
                        attempt_id: a.id.clone(),
                        try_number: None,
                        client: None,
                    },
                )
                .await
                .unwrap();
            self.ctrl
                .reconcile(
                    &k,
                    Input::ImagingFinished {
                        attempt_id: a.id.clone(),
                        try_number: None,
                        result: Err("apply: the disk is failing".into()),
                        refusal: None,
                    },
                )
                .await
                .unwrap();
            failed += 1;
        }
        failed
    }

    /// Endpoints of a tenant whose message starts with `prefix`.
    pub async fn held_with(&self, t: &Tenant, prefix: &str) -> usize {
        let mut n = 0;
        for i in 0..t.size {
            if self
                .status(&t.ns, &ep_name(i))
                .await
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with(prefix))
            {
                n += 1;
            }
        }
        n
    }

    /// Endpoints of a tenant with an attempt running now.
    pub async fn running(&self, t: &Tenant) -> usize {
        let mut n = 0;
        for i in 0..t.size {
            if self
                .status(&t.ns, &ep_name(i))
                .await
                .active_attempt
                .is_some()
            {
                n += 1;
            }
        }
        n
    }

    pub async fn count(&self, t: &Tenant) -> Count {
        let mut c = Count::default();
        for i in 0..t.size {
            let st = self.status(&t.ns, &ep_name(i)).await;
            if st.attempts_started > 0 {
                c.attempted += 1;
            }
            if st
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("circuit breaker open"))
            {
                c.held_by_breaker += 1;
                c.message.get_or_insert(st.message.clone().unwrap());
            }
        }
        c
    }
}
