//! Crash tests on the embedded backend with the real `recast-operator` process: SIGKILL at each
//! lifecycle step, then restart. The attempt must resume, no second attempt may start, and no
//! side effect may run twice for one attempt (counted from the store's own event log).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use recast_crds::endpoint::{AttemptOutcome, EndpointPhase, EndpointStatus};
use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use recast_tests::inputs;
use serde_json::Value;

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
const EP: &str = "kiosk-01";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fresh_store(tag: &str) -> (PathBuf, EmbeddedStore) {
    let dir = std::env::temp_dir().join(format!("recast-fault-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).unwrap();
    for (_, doc) in recast_operator::manifests::load(&repo().join("examples")).unwrap() {
        if recast_operator::manifests::is_recast(&doc) {
            store.apply(&doc.value, "default").unwrap();
        }
    }
    let verified = inputs::verified_image_status();
    store
        .write_status(
            Kind::GoldenImage,
            "default",
            "win11-24h2-2026-01",
            None,
            &verified,
        )
        .unwrap();
    (dir, store)
}

struct Operator {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Operator {
    fn start(dir: &Path, failpoint: Option<&str>) -> Operator {
        let mut cmd = Command::new(OPERATOR);
        cmd.args([
            "run",
            "--backend",
            "embedded",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .env("RECAST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // These suites are about the lifecycle shells, not BMCs (the Redfish suites are).
        cmd.env("RECAST_POWER_DRIVER", "record");
        match failpoint {
            Some(fp) => cmd.env("RECAST_FAILPOINT", fp),
            None => cmd.env_remove("RECAST_FAILPOINT"),
        };
        let mut child = cmd.spawn().expect("start recast-operator");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Operator { child, lines }
    }

    fn saw(&self, needle: &str) -> bool {
        self.lines.try_iter().any(|l| l.contains(needle))
    }

    /// SIGKILL: no chance to clean up, as in a node failure or an OOM kill.
    fn kill(self) {
        drop(self);
    }
}

/// A failing assertion must not leave an operator running after the test.
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(store: &EmbeddedStore) -> EndpointStatus {
    let obj = store.get(Kind::Endpoint, "default", EP).unwrap().unwrap();
    serde_json::from_value(obj.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

fn post(store: &EmbeddedStore, input: Value) {
    store.post_input("default", EP, &input).unwrap();
}

/// Plays the endpoint and boot service: posts the input the current step waits for, once.
struct Driver {
    posted: Vec<String>,
}

impl Driver {
    fn step(&mut self, store: &EmbeddedStore) {
        let Some(a) = status(store).active_attempt else {
            return;
        };
        if let Some((key, input)) = inputs::next_for(&a)
            && !self.posted.contains(&key)
        {
            post(store, input);
            self.posted.push(key);
        }
    }
}

fn count(store: &EmbeddedStore, reason: &str) -> usize {
    store
        .events(Kind::Endpoint, "default", EP)
        .unwrap()
        .iter()
        .filter(|e| e.reason == reason)
        .count()
}

fn crash_and_resume(failpoint: &str) {
    let (dir, store) = fresh_store(&failpoint.replace(':', "-"));
    for input in inputs::failed_rollback() {
        post(&store, input);
    }
    let mut driver = Driver { posted: Vec::new() };

    let op = Operator::start(&dir, Some(failpoint));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{failpoint}: never reached");
        if op.saw(&format!("FAILPOINT {failpoint}")) {
            break;
        }
        driver.step(&store);
        std::thread::sleep(Duration::from_millis(50));
    }
    op.kill();
    let at_crash = status(&store);
    assert!(
        at_crash.active_attempt.is_some(),
        "{failpoint}: the attempt was persisted before acting"
    );

    let op = Operator::start(&dir, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(&store);
        if st.phase == Some(EndpointPhase::Ready)
            && st.active_attempt.is_none()
            && !st.history.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{failpoint}: did not finish after restart: {st:?}"
        );
        driver.step(&store);
        std::thread::sleep(Duration::from_millis(50));
    }
    op.kill();

    let st = status(&store);
    assert_eq!(
        st.attempts_started, 1,
        "{failpoint}: a second attempt was started"
    );
    assert_eq!(st.history.len(), 1, "{failpoint}");
    assert_eq!(
        st.history[0].outcome,
        AttemptOutcome::Succeeded,
        "{failpoint}"
    );
    assert_eq!(
        st.history[0].id,
        at_crash.active_attempt.unwrap().id,
        "{failpoint}: resumed the same attempt"
    );
    assert_eq!(count(&store, "AttemptStarted"), 1, "{failpoint}");
    assert_eq!(
        count(&store, "BootArmed"),
        1,
        "{failpoint}: boot armed more than once"
    );
    assert_eq!(
        count(&store, "PowerCycle"),
        1,
        "{failpoint}: power-cycled more than once"
    );
    assert!(
        store.boot_intent("52:54:00:a1:00:01").unwrap().is_none(),
        "{failpoint}: boot left armed"
    );
    assert!(
        store.pending_inputs(10).unwrap().is_empty(),
        "{failpoint}: inputs left undecided"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_after_persisting_arming_boot() {
    crash_and_resume("after-persist:ArmingBoot");
}

#[test]
fn killed_after_arming_boot() {
    crash_and_resume("after-action:ArmBoot");
}

#[test]
fn killed_after_persisting_power_cycling() {
    crash_and_resume("after-persist:PowerCycling");
}

#[test]
fn killed_after_power_cycling() {
    crash_and_resume("after-action:PowerCycle");
}

#[test]
fn killed_while_booting() {
    crash_and_resume("after-persist:Booting");
}

#[test]
fn killed_while_applying() {
    crash_and_resume("after-persist:Applying");
}

#[test]
fn killed_at_first_boot() {
    crash_and_resume("after-persist:FirstBoot");
}
