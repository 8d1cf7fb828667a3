//! A simulated fleet for wave tests, the same on both backends: the objects to create, and a
//! driver that plays the operator's loop and the machines (boot, image, report) against a
//! `Controller` on any `Backend`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use recast_core::lifecycle::Input;
use recast_crds::endpoint::{AttemptOutcome, EndpointStatus, ReimageStep, ReportSummary};
use recast_crds::wave::{ReimageWaveStatus, WavePhase};
use recast_operator::bmc::RecordingPower;
use recast_operator::controller::Controller;
use recast_operator::metrics::Metrics;
use recast_operator::store::{Backend, Key};
use serde_json::{Value, json};

pub const OLD_IMAGE: &str = "win11-24h2-2026-01";
pub const OLD_BUILD: &str = "26100.7623";
pub const NEW_IMAGE: &str = "win11-24h2-2026-02";
pub const NEW_BUILD: &str = "26100.7800";
/// Endpoints in the wave's selection that it may reimage (two more are protected and paused).
pub const FLEET: usize = 50;
/// The policy's global concurrency limit, below the wave's batch size on purpose.
pub const GLOBAL_LIMIT: usize = 5;
pub const WAVE: &str = "feb";

#[path = "../support/manual_clock.rs"]
mod manual_clock;
pub use manual_clock::ManualClock;

pub fn ep_name(i: usize) -> String {
    format!("pos-{i:02}")
}

/// The two golden images (January from the examples, February derived from it).
pub fn images(examples_image: &Value) -> [Value; 2] {
    let mut feb = examples_image.clone();
    feb["metadata"]["name"] = json!(NEW_IMAGE);
    feb["spec"]["requirements"]["minimumBuild"] = json!(NEW_BUILD);
    feb["spec"]["channels"] = json!([]);
    [examples_image.clone(), feb]
}

/// A policy with a global limit of 5 and one try per attempt (a failure ends it at once).
pub fn policy() -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "concurrency": {"global": GLOBAL_LIMIT},
            "retry": {"maxTries": 1, "backoff": "1m", "tryTimeout": "2h"}
        }
    })
}

/// 50 endpoints in ring "broad", then a protected and a paused one in the same ring.
pub fn endpoints() -> Vec<Value> {
    (0..FLEET + 2)
        .map(|i| {
            let mut spec = json!({
                "identity": {"macAddresses": [format!("52:54:00:b0:00:{i:02x}")]},
                "bootMode": "uefi",
                "image": {"goldenImage": OLD_IMAGE},
            });
            if i == FLEET {
                spec["protected"] = json!(true);
            }
            if i == FLEET + 1 {
                spec["paused"] = json!(true);
            }
            json!({
                "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
                "metadata": {"name": ep_name(i), "labels": {"ring": "broad"}},
                "spec": spec,
            })
        })
        .collect()
}

pub fn wave(strategy: Value) -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "ReimageWave",
        "metadata": {"name": WAVE},
        "spec": {
            "selector": {"matchLabels": {"ring": "broad"}},
            "image": NEW_IMAGE,
            "strategy": strategy,
            "reason": "February rollup"
        }
    })
}

pub type Ctrl<B> = Controller<B, RecordingPower>;

pub fn controller<B: Backend>(backend: B, clock: &Arc<ManualClock>) -> Arc<Ctrl<B>> {
    Arc::new(Controller::new(
        Arc::new(backend),
        Arc::new(RecordingPower::default()),
        clock.clone(),
        Arc::new(Metrics::new()),
    ))
}

/// Plays the operator's loop and the machines against one controller.
pub struct Sim<B: Backend> {
    pub ctrl: Arc<Ctrl<B>>,
    pub clock: Arc<ManualClock>,
    pub ns: String,
}

fn report(build: &str, attempt: Option<String>) -> Input {
    Input::AgentReport(ReportSummary {
        build: build.into(),
        attempt_id: attempt,
        ..Default::default()
    })
}

impl<B: Backend> Sim<B> {
    pub fn key(&self, name: &str) -> Key {
        Key {
            namespace: self.ns.clone(),
            name: name.into(),
        }
    }

    pub async fn status(&self, name: &str) -> EndpointStatus {
        let ep = self.ctrl.backend.endpoint(&self.key(name)).await.unwrap();
        ep.and_then(|e| e.status).unwrap_or_default()
    }

    pub async fn wave_status(&self) -> ReimageWaveStatus {
        let w = self.ctrl.backend.wave(&self.ns, WAVE).await.unwrap();
        w.and_then(|w| w.status).unwrap_or_default()
    }

    /// Every endpoint reports once on the January build, so it is Ready.
    pub async fn all_ready(&self) {
        self.ctrl.prime().await.unwrap();
        for i in 0..FLEET + 2 {
            self.ctrl
                .reconcile(&self.key(&ep_name(i)), report(OLD_BUILD, None))
                .await
                .unwrap();
        }
    }

    /// The operator's loop once: the wave reconciles and its due members get a reconcile.
    pub async fn operator_pass(&self) {
        let step = self.ctrl.reconcile_wave(&self.ns, WAVE).await.unwrap();
        for k in &step.due {
            self.ctrl.reconcile(k, Input::Reconcile).await.unwrap();
        }
    }

    /// One round: the operator's pass, then every machine that is booting into the imaging
    /// environment finishes, well (the new build reported) or badly (an imaging error). Returns
    /// how many attempts were running at once.
    pub async fn pass(&self, failing: &BTreeSet<String>) -> usize {
        self.operator_pass().await;
        let mut running = 0;
        for i in 0..FLEET + 2 {
            let name = ep_name(i);
            let Some(a) = self.status(&name).await.active_attempt else {
                continue;
            };
            running += 1;
            assert_eq!(a.step, ReimageStep::Booting, "{name}: {a:?}");
            assert_eq!(a.image, NEW_IMAGE, "a wave attempt serves the wave's image");
            let k = self.key(&name);
            let boot = Input::NetworkBooted {
                attempt_id: a.id.clone(),
                try_number: None,
                client: None,
            };
            self.ctrl.reconcile(&k, boot).await.unwrap();
            let result = if failing.contains(&name) {
                Err("DISM: the disk is failing".to_string())
            } else {
                Ok(())
            };
            let failed = result.is_err();
            let finished = Input::ImagingFinished {
                attempt_id: a.id.clone(),
                try_number: None,
                result,
                refusal: None,
            };
            self.ctrl.reconcile(&k, finished).await.unwrap();
            if !failed {
                self.ctrl
                    .reconcile(&k, report(NEW_BUILD, Some(a.id.clone())))
                    .await
                    .unwrap();
            }
        }
        self.clock.advance(60);
        running
    }

    async fn any_running(&self) -> bool {
        for i in 0..FLEET {
            if self.status(&ep_name(i)).await.active_attempt.is_some() {
                return true;
            }
        }
        false
    }
}

/// A wave (canary 2, batches of 8, maxFailures 3) over the 50 endpoints, with the controller
/// replaced by a fresh one (no memory, same store) while the third batch is in flight. `fresh`
/// makes a new backend on the same store. Checks every endpoint is reimaged exactly once, by the
/// wave, never more than the global limit at once, and the skips.
pub async fn wave_through_a_restart<B: Backend>(
    mut sim: Sim<B>,
    fresh: impl AsyncFn() -> B,
) -> Sim<B> {
    sim.all_ready().await;
    let none = BTreeSet::new();
    let mut most_at_once = 0;
    let mut restarted = false;
    for round in 0..200 {
        if !restarted && sim.wave_status().await.current_batch == Some(3) {
            sim.operator_pass().await;
            assert!(
                sim.any_running().await,
                "the restart should happen with attempts running"
            );
            sim.ctrl = controller(fresh().await, &sim.clock);
            sim.ctrl.prime().await.unwrap();
            restarted = true;
        }
        most_at_once = most_at_once.max(sim.pass(&none).await);
        let w = sim.wave_status().await;
        if w.phase == Some(WavePhase::Succeeded) && w.counts.running == 0 {
            break;
        }
        assert!(round < 199, "the wave did not finish: {w:?}");
    }
    assert!(restarted);
    assert!(
        most_at_once <= GLOBAL_LIMIT,
        "{most_at_once} attempts at once; the global limit is {GLOBAL_LIMIT}"
    );
    assert_eq!(most_at_once, GLOBAL_LIMIT, "batches of 8 fill the 5 slots");

    let w = sim.wave_status().await;
    assert_eq!(w.phase, Some(WavePhase::Succeeded));
    assert_eq!(w.counts.succeeded, FLEET as u32);
    assert_eq!(w.counts.selected, FLEET as u32 + 2);
    let skipped: Vec<(String, String)> = w
        .skipped
        .iter()
        .map(|s| (s.name.clone(), s.reason.clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            (ep_name(FLEET), "Protected".to_string()),
            (ep_name(FLEET + 1), "Paused".to_string())
        ]
    );
    // 2 canaries, then 48 in batches of 8.
    assert_eq!(w.batches.len(), 7);
    assert!(w.batches[0].canary);
    for i in 0..FLEET {
        let st = sim.status(&ep_name(i)).await;
        assert_eq!(st.attempts_started, 1, "{}", ep_name(i));
        assert_eq!(st.history[0].wave.as_deref(), Some(WAVE));
        assert_eq!(st.history[0].outcome, AttemptOutcome::Succeeded);
        assert_eq!(st.history[0].image, NEW_IMAGE);
    }
    for i in [FLEET, FLEET + 1] {
        assert_eq!(sim.status(&ep_name(i)).await.attempts_started, 0);
    }
    sim
}

/// A wave (batches of 10, maxFailures 3) whose whole second batch fails: the wave stops as
/// Failed and nothing after that batch is touched, however long the loop goes on.
pub async fn a_failure_storm_trips_the_budget<B: Backend>(sim: &Sim<B>) {
    sim.all_ready().await;
    let failing: BTreeSet<String> = (10..20).map(ep_name).collect();
    for _ in 0..100 {
        sim.pass(&failing).await;
        let w = sim.wave_status().await;
        if w.phase == Some(WavePhase::Failed) && w.counts.running == 0 {
            break;
        }
    }
    let w = sim.wave_status().await;
    assert_eq!(w.phase, Some(WavePhase::Failed), "{w:?}");
    assert!(w.counts.failed > 3);
    assert!(w.messages[0].contains("more than maxFailures (3)"), "{w:?}");
    assert_eq!(w.counts.succeeded, 10, "the first batch went through");
    // Failures are bounded by the budget plus what one batch had in flight.
    assert!(w.counts.failed <= 3 + 10);
    for _ in 0..5 {
        sim.pass(&failing).await;
    }
    for i in 20..FLEET {
        assert_eq!(
            sim.status(&ep_name(i)).await.attempts_started,
            0,
            "{} was reimaged after the budget tripped",
            ep_name(i)
        );
    }
    assert!(w.batches[2].started_at.is_none());
}
