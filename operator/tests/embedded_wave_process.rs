//! A wave driven by the real `recast-operator` process on the embedded store: the run loop
//! picks the wave up from the change feed, starts batches, and carries on after a SIGKILL in
//! the middle of the wave. The machines are played by posting the boot service's and agent's
//! inputs into the store's inbox, as the gateway does.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recast_crds::endpoint::{AttemptOutcome, EndpointStatus};
use recast_crds::manifest::Kind;
use recast_crds::wave::{ReimageWaveStatus, WavePhase};
use recast_operator::store::embedded::EmbeddedStore;
use recast_tests::inputs;
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
/// The example site's endpoints the wave takes (reception-01 is protected).
const MEMBERS: [&str; 4] = ["backoffice-01", "kiosk-01", "kiosk-02", "kiosk-03"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Operator(Child);

impl Operator {
    fn start(dir: &Path) -> Operator {
        let mut child = Command::new(OPERATOR)
            .args([
                "run",
                "--backend",
                "embedded",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .env("RECAST_LOG", "warn")
            .env("RECAST_POWER_DRIVER", "record")
            .env_remove("RECAST_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start recast-operator");
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("operator: {line}");
            }
        });
        Operator(child)
    }
}

/// SIGKILL on drop: no chance to clean up, and no operator left behind by a failed assertion.
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(store: &EmbeddedStore, name: &str) -> EndpointStatus {
    let obj = store.get(Kind::Endpoint, "default", name).unwrap().unwrap();
    serde_json::from_value(obj.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

fn wave_status(store: &EmbeddedStore) -> ReimageWaveStatus {
    let obj = store
        .get(Kind::ReimageWave, "default", "jan")
        .unwrap()
        .unwrap();
    serde_json::from_value(obj.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

#[test]
fn the_operator_runs_a_wave_through_a_crash() {
    let dir = std::env::temp_dir().join(format!("recast-wave-process-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).unwrap();
    for (_, doc) in recast_operator::manifests::load(&repo().join("examples")).unwrap() {
        // The example wave waits for a night window and an approval; this test makes its own.
        if recast_operator::manifests::is_recast(&doc) && doc.value["kind"] != "ReimageWave" {
            store.apply(&doc.value, "default").unwrap();
        }
    }
    store
        .write_status(
            Kind::GoldenImage,
            "default",
            "win11-24h2-2026-01",
            None,
            &inputs::verified_image_status(),
        )
        .unwrap();
    let mut op = Some(Operator::start(&dir));
    store
        .apply(
            &json!({
                "apiVersion": "recast.dev/v1alpha1", "kind": "ReimageWave",
                "metadata": {"name": "jan"},
                "spec": {
                    "selector": {"matchLabels": {"site": "store-042"}},
                    "image": "win11-24h2-2026-01",
                    "strategy": {"canary": 1, "batchSize": 2},
                    "reason": "January rollup"
                }
            }),
            "default",
        )
        .unwrap();

    let mut posted = BTreeSet::new();
    let mut crashed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let w = wave_status(&store);
        if w.phase == Some(WavePhase::Succeeded) {
            break;
        }
        if Instant::now() > deadline {
            for name in MEMBERS {
                eprintln!("{name}: {:#?}", status(&store, name));
            }
            panic!("the wave did not finish: {w:#?}");
        }
        // SIGKILL the operator once the second batch runs, and start a new one.
        if !crashed && w.batches.get(1).is_some_and(|b| b.started_at.is_some()) {
            op = None;
            op = op.or_else(|| Some(Operator::start(&dir)));
            crashed = true;
        }
        for name in MEMBERS {
            if let Some(a) = status(&store, name).active_attempt
                && let Some((key, input)) = inputs::next_for(&a)
                && posted.insert(key)
            {
                store.post_input("default", name, &input).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(op);
    assert!(crashed, "the wave finished before the crash point");
    let w = wave_status(&store);
    assert_eq!(w.counts.succeeded, 4);
    assert_eq!(w.skipped[0].name, "reception-01");
    assert_eq!(w.skipped[0].reason, "Protected");
    assert!(w.batches[0].canary);
    // One attempt each, by the wave, whatever the crash interrupted.
    for name in MEMBERS {
        let st = status(&store, name);
        assert_eq!(st.attempts_started, 1, "{name}");
        assert_eq!(st.history[0].wave.as_deref(), Some("jan"));
        assert_eq!(st.history[0].outcome, AttemptOutcome::Succeeded);
    }
    assert_eq!(status(&store, "reception-01").attempts_started, 0);
    let reasons: Vec<String> = store
        .events(Kind::ReimageWave, "default", "jan")
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| *r == "BatchStarted").count(),
        3,
        "{reasons:?}"
    );
}
