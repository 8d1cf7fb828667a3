//! Reimage waves on the embedded store (SQLite): a wave over 50 endpoints with simulated
//! outcomes, an operator restart mid-wave, the global concurrency limit shared with the
//! lifecycle, and a failure storm that trips the wave's budget.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use recast_crds::endpoint::{AttemptOutcome, EndpointStatus, ReimageStep, ReportSummary};
use recast_crds::manifest::Kind;
use recast_crds::wave::{ReimageWaveStatus, WavePhase};
use recast_operator::bmc::RecordingPower;
use recast_operator::controller::embedded::EmbeddedBackend;
use recast_operator::controller::{Clock, Controller, Key};
use recast_operator::core::lifecycle::Input;
use recast_operator::metrics::Metrics;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

const OLD_BUILD: &str = "26100.7623";
const NEW_IMAGE: &str = "win11-24h2-2026-02";
const NEW_BUILD: &str = "26100.7800";
/// Endpoints in the wave's selection that it may reimage.
const FLEET: usize = 50;
/// The policy's global concurrency limit, below the wave's batch size on purpose.
const GLOBAL_LIMIT: usize = 5;

struct ManualClock(Mutex<Timestamp>);

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    fn advance(&self, secs: i64) {
        let mut t = self.0.lock().unwrap();
        *t = t
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap();
    }
}

type Ctrl = Controller<EmbeddedBackend, RecordingPower>;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-wave-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ep_name(i: usize) -> String {
    format!("pos-{i:02}")
}

/// Two verified golden images (January, and the February one the wave moves to), a policy
/// whose global limit is 5 with one try per attempt, 50 Ready endpoints in ring "broad", and
/// one protected and one paused endpoint in the same ring.
fn fleet(name: &str) -> Arc<EmbeddedStore> {
    let store = Arc::new(EmbeddedStore::open(&temp_dir(name)).unwrap());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
        if doc.value["kind"] == "GoldenImage" {
            store.apply(&doc.value, "default").unwrap();
            let mut feb = doc.value.clone();
            feb["metadata"]["name"] = json!(NEW_IMAGE);
            feb["spec"]["requirements"]["minimumBuild"] = json!(NEW_BUILD);
            feb["spec"]["channels"] = json!([]);
            store.apply(&feb, "default").unwrap();
        }
    }
    for image in ["win11-24h2-2026-01", NEW_IMAGE] {
        let status = recast_tests::inputs::verified_image_status();
        store
            .write_status(Kind::GoldenImage, "default", image, None, &status)
            .unwrap();
    }
    store
        .apply(
            &json!({
                "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
                "metadata": {"name": "default"},
                "spec": {
                    "concurrency": {"global": GLOBAL_LIMIT},
                    "retry": {"maxTries": 1, "backoff": "1m", "tryTimeout": "2h"}
                }
            }),
            "default",
        )
        .unwrap();
    let endpoint = |i: usize, extra: Value| {
        let mut spec = json!({
            "identity": {"macAddresses": [format!("52:54:00:b0:00:{i:02x}")]},
            "bootMode": "uefi",
            "image": {"goldenImage": "win11-24h2-2026-01"},
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": ep_name(i), "labels": {"ring": "broad"}},
            "spec": spec,
        })
    };
    for i in 0..FLEET {
        store.apply(&endpoint(i, json!({})), "default").unwrap();
    }
    store
        .apply(&endpoint(FLEET, json!({"protected": true})), "default")
        .unwrap();
    store
        .apply(&endpoint(FLEET + 1, json!({"paused": true})), "default")
        .unwrap();
    store
}

fn controller(store: &Arc<EmbeddedStore>, clock: &Arc<ManualClock>) -> Arc<Ctrl> {
    Arc::new(Controller::new(
        Arc::new(EmbeddedBackend {
            store: store.clone(),
        }),
        Arc::new(RecordingPower::default()),
        clock.clone(),
        Arc::new(Metrics::new()),
    ))
}

fn key(name: &str) -> Key {
    Key {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn status(store: &EmbeddedStore, name: &str) -> EndpointStatus {
    let obj = store.get(Kind::Endpoint, "default", name).unwrap().unwrap();
    serde_json::from_value(obj.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

fn wave_status(store: &EmbeddedStore) -> ReimageWaveStatus {
    let obj = store
        .get(Kind::ReimageWave, "default", "feb")
        .unwrap()
        .unwrap();
    serde_json::from_value(obj.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

fn report(build: &str, attempt: Option<String>) -> Input {
    Input::AgentReport(ReportSummary {
        build: build.into(),
        attempt_id: attempt,
        ..Default::default()
    })
}

fn apply_wave(store: &EmbeddedStore, strategy: Value) {
    store
        .apply(
            &json!({
                "apiVersion": "recast.dev/v1alpha1", "kind": "ReimageWave",
                "metadata": {"name": "feb"},
                "spec": {
                    "selector": {"matchLabels": {"ring": "broad"}},
                    "image": NEW_IMAGE,
                    "strategy": strategy,
                    "reason": "February rollup"
                }
            }),
            "default",
        )
        .unwrap();
}

/// Every endpoint reports once on the January build, so it is Ready.
async fn all_ready(ctrl: &Ctrl) {
    ctrl.prime().await.unwrap();
    for i in 0..FLEET + 2 {
        ctrl.reconcile(&key(&ep_name(i)), report(OLD_BUILD, None))
            .await
            .unwrap();
    }
}

/// One pass of what the operator and the machines do: the wave reconciles and its due members
/// get a reconcile (as the run loop does), then every machine that is booting into the
/// imaging environment finishes, well (`NEW_BUILD` reported) or badly (imaging error).
/// Returns the number of attempts that were running at once.
async fn pass(
    ctrl: &Ctrl,
    store: &EmbeddedStore,
    clock: &ManualClock,
    failing: &BTreeSet<String>,
) -> usize {
    let step = ctrl.reconcile_wave("default", "feb").await.unwrap();
    for k in &step.due {
        ctrl.reconcile(k, Input::Reconcile).await.unwrap();
    }
    let mut running = 0;
    for i in 0..FLEET + 2 {
        let name = ep_name(i);
        let Some(a) = status(store, &name).active_attempt else {
            continue;
        };
        running += 1;
        assert_eq!(a.step, ReimageStep::Booting, "{name}: {a:?}");
        assert_eq!(a.image, NEW_IMAGE, "a wave attempt serves the wave's image");
        let k = key(&name);
        let boot = Input::NetworkBooted {
            attempt_id: a.id.clone(),
            try_number: None,
        };
        ctrl.reconcile(&k, boot).await.unwrap();
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
        };
        ctrl.reconcile(&k, finished).await.unwrap();
        if !failed {
            ctrl.reconcile(&k, report(NEW_BUILD, Some(a.id.clone())))
                .await
                .unwrap();
        }
    }
    clock.advance(60);
    running
}

fn wave_events(store: &EmbeddedStore) -> Vec<String> {
    store
        .events(Kind::ReimageWave, "default", "feb")
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

fn new_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock(Mutex::new(
        "2026-02-11T08:00:00Z".parse().unwrap(),
    )))
}

#[tokio::test]
async fn a_wave_over_50_endpoints_survives_a_restart_and_shares_the_global_limit() {
    let store = fleet("restart");
    let clock = new_clock();
    let mut ctrl = controller(&store, &clock);
    all_ready(&ctrl).await;
    apply_wave(
        &store,
        json!({"canary": 2, "batchSize": 8, "maxFailures": 3}),
    );
    let none = BTreeSet::new();
    let mut most_at_once = 0;
    let mut restarted = false;
    for round in 0..200 {
        // Restart mid-wave, with attempts of the third batch in flight: a new controller (no
        // memory) on the same store.
        if !restarted && wave_status(&store).current_batch == Some(2) {
            let step = ctrl.reconcile_wave("default", "feb").await.unwrap();
            for k in &step.due {
                ctrl.reconcile(k, Input::Reconcile).await.unwrap();
            }
            assert!(
                (0..FLEET).any(|i| status(&store, &ep_name(i)).active_attempt.is_some()),
                "the restart should happen with attempts running"
            );
            ctrl = controller(&store, &clock);
            ctrl.prime().await.unwrap();
            restarted = true;
        }
        most_at_once = most_at_once.max(pass(&ctrl, &store, &clock, &none).await);
        let w = wave_status(&store);
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

    let w = wave_status(&store);
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
    // Every endpoint was reimaged exactly once, by this wave, onto the new build; the restart
    // started no second attempt.
    for i in 0..FLEET {
        let st = status(&store, &ep_name(i));
        assert_eq!(st.attempts_started, 1, "{}", ep_name(i));
        assert_eq!(st.history[0].wave.as_deref(), Some("feb"));
        assert_eq!(st.history[0].outcome, AttemptOutcome::Succeeded);
        assert_eq!(st.history[0].image, NEW_IMAGE);
    }
    for i in [FLEET, FLEET + 1] {
        assert_eq!(status(&store, &ep_name(i)).attempts_started, 0);
    }
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
    let clock = new_clock();
    let ctrl = controller(&store, &clock);
    all_ready(&ctrl).await;
    apply_wave(&store, json!({"batchSize": 10, "maxFailures": 3}));
    // The whole second batch fails.
    let failing: BTreeSet<String> = (10..20).map(ep_name).collect();
    for _ in 0..100 {
        pass(&ctrl, &store, &clock, &failing).await;
        let w = wave_status(&store);
        if w.phase == Some(WavePhase::Failed) && w.counts.running == 0 {
            break;
        }
    }
    let w = wave_status(&store);
    assert_eq!(w.phase, Some(WavePhase::Failed), "{w:?}");
    assert!(w.counts.failed > 3);
    assert!(w.messages[0].contains("more than maxFailures (3)"), "{w:?}");
    assert_eq!(w.counts.succeeded, 10, "the first batch went through");
    // Failures are bounded by the budget plus what one batch had in flight.
    assert!(w.counts.failed <= 3 + 10);
    // Nothing after the failing batch was touched, however long we wait.
    for _ in 0..5 {
        pass(&ctrl, &store, &clock, &failing).await;
    }
    for i in 20..FLEET {
        assert_eq!(
            status(&store, &ep_name(i)).attempts_started,
            0,
            "{} was reimaged after the budget tripped",
            ep_name(i)
        );
    }
    assert!(w.batches[2].started_at.is_none());
    let events = store.events(Kind::ReimageWave, "default", "feb").unwrap();
    let failed = events.iter().find(|e| e.reason == "WaveFailed").unwrap();
    assert_eq!(failed.type_, "Warning");
}

#[tokio::test]
async fn pause_and_abort_stop_new_attempts_and_let_running_ones_finish() {
    let store = fleet("pause");
    let clock = new_clock();
    let ctrl = controller(&store, &clock);
    all_ready(&ctrl).await;
    apply_wave(&store, json!({"batchSize": 4}));
    let step = ctrl.reconcile_wave("default", "feb").await.unwrap();
    assert_eq!(step.due.len(), 4);
    // Paused between the wave's decision and the endpoints' reconcile: the stored wave has the
    // last word, so nothing starts.
    store
        .update(Kind::ReimageWave, "default", "feb", |o| {
            o["spec"]["paused"] = json!(true);
            Ok(())
        })
        .unwrap();
    for k in &step.due {
        ctrl.reconcile(k, Input::Reconcile).await.unwrap();
        assert!(status(&store, &k.name).active_attempt.is_none());
    }
    let step = ctrl.reconcile_wave("default", "feb").await.unwrap();
    assert!(step.due.is_empty());
    assert_eq!(wave_status(&store).phase, Some(WavePhase::Paused));
    // Resume: the first batch starts.
    store
        .update(Kind::ReimageWave, "default", "feb", |o| {
            o["spec"]["paused"] = json!(false);
            Ok(())
        })
        .unwrap();
    let step = ctrl.reconcile_wave("default", "feb").await.unwrap();
    for k in &step.due {
        ctrl.reconcile(k, Input::Reconcile).await.unwrap();
    }
    let running: Vec<String> = (0..FLEET)
        .map(ep_name)
        .filter(|n| status(&store, n).active_attempt.is_some())
        .collect();
    assert_eq!(running.len(), 4);
    // Abort with four attempts running: they finish, nothing new starts.
    store
        .update(Kind::ReimageWave, "default", "feb", |o| {
            o["spec"]["aborted"] = json!(true);
            Ok(())
        })
        .unwrap();
    for _ in 0..5 {
        pass(&ctrl, &store, &clock, &BTreeSet::new()).await;
    }
    let w = wave_status(&store);
    assert_eq!(w.phase, Some(WavePhase::Aborted));
    assert_eq!(w.counts.succeeded, 4);
    assert_eq!(w.counts.running, 0);
    for n in &running {
        assert_eq!(
            status(&store, n).history[0].outcome,
            AttemptOutcome::Succeeded
        );
    }
    let started: usize = (0..FLEET)
        .map(|i| status(&store, &ep_name(i)).attempts_started as usize)
        .sum();
    assert_eq!(started, 4);
}
