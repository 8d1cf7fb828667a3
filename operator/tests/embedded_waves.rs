//! Reimage waves on the embedded store (SQLite): a wave over 50 endpoints with simulated
//! outcomes, an operator restart mid-wave, the global concurrency limit shared with the
//! lifecycle, a failure storm that trips the wave's budget, pause and abort. The same scenarios
//! run on the real kube-apiserver in kube_waves.rs.

mod wave_sim;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use recast_core::lifecycle::Input;
use recast_crds::endpoint::AttemptOutcome;
use recast_crds::manifest::Kind;
use recast_crds::wave::WavePhase;
use recast_operator::store::embedded::EmbeddedBackend;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::json;
use wave_sim::{FLEET, ManualClock, Sim, WAVE, controller, ep_name};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-wave-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The simulated fleet (wave_sim) in a fresh store, with both images Verified.
fn fleet(name: &str) -> Arc<EmbeddedStore> {
    let store = Arc::new(EmbeddedStore::open(&temp_dir(name)).unwrap());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
        if doc.value["kind"] == "GoldenImage" {
            for image in wave_sim::images(&doc.value) {
                let (_, name, _) = store.apply(&image, "default").unwrap();
                let status = recast_tests::inputs::verified_image_status();
                store
                    .write_status(Kind::GoldenImage, "default", &name, None, &status)
                    .unwrap();
            }
        }
    }
    store.apply(&wave_sim::policy(), "default").unwrap();
    for ep in wave_sim::endpoints() {
        store.apply(&ep, "default").unwrap();
    }
    store
}

fn sim(store: &Arc<EmbeddedStore>) -> Sim<EmbeddedBackend> {
    let clock = ManualClock::new();
    Sim {
        ctrl: controller(
            EmbeddedBackend {
                store: store.clone(),
            },
            &clock,
        ),
        clock,
        ns: "default".into(),
    }
}

fn wave_events(store: &EmbeddedStore) -> Vec<String> {
    store
        .events(Kind::ReimageWave, "default", WAVE)
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn a_wave_over_50_endpoints_survives_a_restart_and_shares_the_global_limit() {
    let store = fleet("restart");
    store
        .apply(
            &wave_sim::wave(json!({"canary": 2, "batchSize": 8, "maxFailures": 3})),
            "default",
        )
        .unwrap();
    let fresh = async || EmbeddedBackend {
        store: store.clone(),
    };
    wave_sim::wave_through_a_restart(sim(&store), fresh).await;
    let events = wave_events(&store);
    assert_eq!(events.first().map(String::as_str), Some("WavePlanned"));
    assert_eq!(
        events.iter().filter(|r| *r == "BatchStarted").count(),
        7,
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("WaveSucceeded"));
}

#[tokio::test]
async fn a_failure_storm_trips_the_budget_and_no_new_batch_starts() {
    let store = fleet("storm");
    store
        .apply(
            &wave_sim::wave(json!({"batchSize": 10, "maxFailures": 3})),
            "default",
        )
        .unwrap();
    wave_sim::a_failure_storm_trips_the_budget(&sim(&store)).await;
    let events = store.events(Kind::ReimageWave, "default", WAVE).unwrap();
    let failed = events.iter().find(|e| e.reason == "WaveFailed").unwrap();
    assert_eq!(failed.type_, "Warning");
}

#[tokio::test]
async fn pause_and_abort_stop_new_attempts_and_let_running_ones_finish() {
    let store = fleet("pause");
    let sim = sim(&store);
    sim.all_ready().await;
    store
        .apply(&wave_sim::wave(json!({"batchSize": 4})), "default")
        .unwrap();
    let ctrl = &sim.ctrl;
    let step = ctrl.reconcile_wave("default", WAVE).await.unwrap();
    assert_eq!(step.due.len(), 4);
    // Paused between the wave's decision and the endpoints' reconcile: the stored wave has the
    // last word, so nothing starts.
    store
        .update(Kind::ReimageWave, "default", WAVE, |o| {
            o["spec"]["paused"] = json!(true);
            Ok(())
        })
        .unwrap();
    for k in &step.due {
        ctrl.reconcile(k, Input::Reconcile).await.unwrap();
        assert!(sim.status(&k.name).await.active_attempt.is_none());
    }
    let step = ctrl.reconcile_wave("default", WAVE).await.unwrap();
    assert!(step.due.is_empty());
    assert_eq!(sim.wave_status().await.phase, Some(WavePhase::Paused));
    // Resume: the first batch starts.
    store
        .update(Kind::ReimageWave, "default", WAVE, |o| {
            o["spec"]["paused"] = json!(false);
            Ok(())
        })
        .unwrap();
    let step = ctrl.reconcile_wave("default", WAVE).await.unwrap();
    for k in &step.due {
        ctrl.reconcile(k, Input::Reconcile).await.unwrap();
    }
    let mut running = Vec::new();
    for n in (0..FLEET).map(ep_name) {
        if sim.status(&n).await.active_attempt.is_some() {
            running.push(n);
        }
    }
    assert_eq!(running.len(), 4);
    // Abort with four attempts running: they finish, nothing new starts.
    store
        .update(Kind::ReimageWave, "default", WAVE, |o| {
            o["spec"]["aborted"] = json!(true);
            Ok(())
        })
        .unwrap();
    for _ in 0..5 {
        sim.pass(&BTreeSet::new()).await;
    }
    let w = sim.wave_status().await;
    assert_eq!(w.phase, Some(WavePhase::Aborted));
    assert_eq!(w.counts.succeeded, 4);
    assert_eq!(w.counts.running, 0);
    for n in &running {
        assert_eq!(
            sim.status(n).await.history[0].outcome,
            AttemptOutcome::Succeeded
        );
    }
    let mut started = 0;
    for i in 0..FLEET {
        started += sim.status(&ep_name(i)).await.attempts_started;
    }
    assert_eq!(started, 4);
}
