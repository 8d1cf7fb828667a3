//! The endpoint controller on the real embedded store (SQLite): the whole reimage path, the
//! finalizer, protection, a spec edit racing a status write, and concurrency limits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use recast_core::lifecycle::{Input, Notice};
use recast_core::signal::SignalKind;
use recast_crds::endpoint::{AttemptOutcome, EndpointPhase, EndpointStatus, ReportSummary};
use recast_crds::manifest::Kind;
use recast_operator::bmc::RecordingPower;
use recast_operator::clock::Clock;
use recast_operator::controller::Controller;
use recast_operator::metrics::Metrics;
use recast_operator::store::embedded::EmbeddedBackend;
use recast_operator::store::embedded::EmbeddedStore;
use recast_operator::store::{Backend, BackendError, Journal, Key};
use serde_json::{Value, json};

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

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A store with the examples applied and the golden image marked Verified (the image
/// controller's job, which is not part of this suite).
fn store_with_examples(name: &str) -> Arc<EmbeddedStore> {
    let store = Arc::new(EmbeddedStore::open(&temp_dir(name)).unwrap());
    for (_, doc) in recast_operator::manifests::load(&repo().join("examples")).unwrap() {
        if recast_operator::manifests::is_recast(&doc) {
            store.apply(&doc.value, "default").unwrap();
        }
    }
    verify_image(&store);
    store
}

fn verify_image(store: &EmbeddedStore) {
    let status = recast_tests::inputs::verified_image_status();
    store
        .write_status(
            Kind::GoldenImage,
            "default",
            "win11-24h2-2026-01",
            None,
            &status,
        )
        .unwrap();
}

type Ctrl<B> = Controller<B, RecordingPower>;

fn controller<B: Backend>(backend: B) -> (Arc<Ctrl<B>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock(Mutex::new(
        "2026-01-14T08:00:00Z".parse().unwrap(),
    )));
    let ctrl = Arc::new(Controller::new(
        Arc::new(backend),
        Arc::new(RecordingPower::default()),
        clock.clone(),
        Arc::new(Metrics::new()),
    ));
    (ctrl, clock)
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

fn report(build: &str, attempt: Option<String>) -> Input {
    Input::AgentReport(ReportSummary {
        build: build.into(),
        attempt_id: attempt,
        ..Default::default()
    })
}

fn reasons(store: &EmbeddedStore, name: &str) -> Vec<String> {
    store
        .events(Kind::Endpoint, "default", name)
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn a_failed_rollback_reimages_through_every_step() {
    let store = store_with_examples("flow");
    let (ctrl, _clock) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    assert_eq!(ctrl.prime().await.unwrap(), 5);
    let k = key("kiosk-01");
    ctrl.reconcile(&k, Input::Reconcile).await.unwrap();
    assert_eq!(
        status(&store, "kiosk-01").phase,
        Some(EndpointPhase::Pending)
    );
    ctrl.reconcile(&k, report("26100.7462", None))
        .await
        .unwrap();
    assert_eq!(status(&store, "kiosk-01").phase, Some(EndpointPhase::Ready));

    // The improper state: the controller arms the boot and power-cycles in one pass.
    ctrl.reconcile(
        &k,
        Input::Signals(vec![(
            SignalKind::FailedRollback,
            "KB5074109 rolled back".into(),
        )]),
    )
    .await
    .unwrap();
    let st = status(&store, "kiosk-01");
    let attempt = st.active_attempt.clone().expect("an attempt");
    assert_eq!(st.phase, Some(EndpointPhase::Reimaging));
    assert_eq!(format!("{:?}", attempt.step), "Booting");
    let intent = store
        .boot_intent("52:54:00:A1:00:01")
        .unwrap()
        .expect("boot armed");
    assert_eq!(intent.attempt_id, attempt.id);
    assert_eq!(intent.image, "win11-24h2-2026-01");
    assert_eq!(ctrl.power.log(), [format!("kiosk-01 {} 1", attempt.id)]);

    ctrl.reconcile(
        &k,
        Input::NetworkBooted {
            try_number: None,
            attempt_id: attempt.id.clone(),
            client: None,
        },
    )
    .await
    .unwrap();
    ctrl.reconcile(
        &k,
        Input::ImagingProgress {
            try_number: None,
            attempt_id: attempt.id.clone(),
            percent: 55,
            secure_boot: None,
            firmware: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        status(&store, "kiosk-01")
            .active_attempt
            .unwrap()
            .progress_percent,
        Some(55)
    );
    ctrl.reconcile(
        &k,
        Input::ImagingFinished {
            try_number: None,
            attempt_id: attempt.id.clone(),
            result: Ok(()),
            refusal: None,
        },
    )
    .await
    .unwrap();
    assert!(
        store.boot_intent("52:54:00:a1:00:01").unwrap().is_none(),
        "disarmed after imaging"
    );
    ctrl.reconcile(&k, report("26100.7623", Some(attempt.id.clone())))
        .await
        .unwrap();

    let st = status(&store, "kiosk-01");
    assert_eq!(st.phase, Some(EndpointPhase::Ready));
    assert_eq!(st.history.len(), 1);
    assert_eq!(st.history[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!(st.attempts_started, 1);
    let reasons = reasons(&store, "kiosk-01");
    for r in [
        "FailedRollback",
        "AttemptStarted",
        "BootArmed",
        "PowerCycle",
        "Booting",
        "Applying",
        "FirstBoot",
        "AttemptSucceeded",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    let metrics = ctrl.metrics.render();
    assert!(
        metrics.contains("recast_lifecycle_transitions_total{edge=\"CheckedIn\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recast_actions_total{action=\"PowerCycle\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reconciling_an_unchanged_endpoint_writes_nothing() {
    let store = store_with_examples("nowrite");
    let (ctrl, clock) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    ctrl.prime().await.unwrap();
    for name in ["kiosk-01", "kiosk-02", "backoffice-01"] {
        ctrl.reconcile(&key(name), report("26100.7623", None))
            .await
            .unwrap();
    }
    let writes = ctrl.metrics.status_writes();
    let rv = store.latest_change().unwrap();
    clock.advance(60);
    for _ in 0..3 {
        for name in ["kiosk-01", "kiosk-02", "backoffice-01"] {
            ctrl.reconcile(&key(name), Input::Reconcile).await.unwrap();
        }
    }
    assert_eq!(ctrl.metrics.status_writes(), writes);
    assert_eq!(
        store.latest_change().unwrap(),
        rv,
        "no store write for an unchanged status"
    );
}

#[tokio::test]
async fn deleting_an_endpoint_disarms_its_boot_first() {
    let store = store_with_examples("finalizer");
    let (ctrl, _) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    ctrl.prime().await.unwrap();
    let k = key("kiosk-02");
    ctrl.reconcile(
        &k,
        Input::Signals(vec![(SignalKind::BootCrash, "0xED".into())]),
    )
    .await
    .unwrap();
    assert!(store.boot_intent("52:54:00:a1:00:02").unwrap().is_some());
    assert!(store.delete(Kind::Endpoint, "default", "kiosk-02").unwrap());
    let obj = store
        .get(Kind::Endpoint, "default", "kiosk-02")
        .unwrap()
        .expect("held by the finalizer");
    assert!(obj.pointer("/metadata/deletionTimestamp").is_some());
    ctrl.reconcile(&k, Input::Reconcile).await.unwrap();
    assert!(
        store.boot_intent("52:54:00:a1:00:02").unwrap().is_none(),
        "boot disarmed"
    );
    assert!(
        store
            .get(Kind::Endpoint, "default", "kiosk-02")
            .unwrap()
            .is_none(),
        "object gone"
    );
}

#[tokio::test]
async fn a_protected_endpoint_is_never_touched() {
    let store = store_with_examples("protected");
    let (ctrl, _) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    ctrl.prime().await.unwrap();
    let k = key("reception-01");
    ctrl.reconcile(&k, report("26100.7462", None))
        .await
        .unwrap();
    ctrl.reconcile(
        &k,
        Input::Signals(vec![
            (SignalKind::BootCrash, "0xED".into()),
            (SignalKind::FailedRollback, "x".into()),
        ]),
    )
    .await
    .unwrap();
    store
        .update(Kind::Endpoint, "default", "reception-01", |o| {
            o["spec"]["reimageRequest"] = json!({"token": "t1", "reason": "ticket"});
            Ok(())
        })
        .unwrap();
    ctrl.reconcile(&k, Input::Reconcile).await.unwrap();
    let st = status(&store, "reception-01");
    assert_eq!(st.phase, Some(EndpointPhase::Degraded));
    assert_eq!(st.attempts_started, 0);
    assert!(store.boot_intent("52:54:00:c3:00:01").unwrap().is_none());
    assert!(ctrl.power.log().is_empty());
    assert!(reasons(&store, "reception-01").contains(&"ReimageRefused".to_string()));
}

/// Edits the spec (protects the endpoint) just before the controller's first status write,
/// as a user racing the controller would.
struct RacingEdit {
    inner: EmbeddedBackend,
    raced: Mutex<bool>,
    /// Acts as a replica that lost the lease after deciding.
    deposed: bool,
}

impl recast_operator::store::EndpointStore for RacingEdit {
    async fn endpoint(&self, key: &Key) -> Result<Option<recast_crds::Endpoint>, BackendError> {
        self.inner.endpoint(key).await
    }

    async fn endpoints(&self) -> Result<Vec<recast_crds::Endpoint>, BackendError> {
        self.inner.endpoints().await
    }

    async fn write_status(
        &self,
        ep: &recast_crds::Endpoint,
        s: &EndpointStatus,
    ) -> Result<Option<recast_crds::Endpoint>, BackendError> {
        let first = std::mem::replace(&mut *self.raced.lock().unwrap(), true);
        if !first && s.active_attempt.is_some() {
            self.inner
                .store
                .update(
                    Kind::Endpoint,
                    "default",
                    ep.metadata.name.as_deref().unwrap(),
                    |o| {
                        o["spec"]["protected"] = json!(true);
                        Ok(())
                    },
                )
                .unwrap();
        }
        self.inner.write_status(ep, s).await
    }

    async fn record(
        &self,
        ep: &recast_crds::Endpoint,
        n: &Notice,
        now: Timestamp,
    ) -> Result<(), BackendError> {
        self.inner.record(ep, n, now).await
    }

    async fn ensure_finalizer(
        &self,
        ep: &recast_crds::Endpoint,
    ) -> Result<Option<recast_crds::Endpoint>, BackendError> {
        self.inner.ensure_finalizer(ep).await
    }

    async fn remove_finalizer(&self, ep: &recast_crds::Endpoint) -> Result<(), BackendError> {
        self.inner.remove_finalizer(ep).await
    }
}

impl recast_operator::store::ContextStore for RacingEdit {
    async fn policy(
        &self,
        ns: &str,
        n: &str,
    ) -> Result<Option<recast_crds::RemediationPolicy>, BackendError> {
        self.inner.policy(ns, n).await
    }

    async fn golden_images(&self, ns: &str) -> Result<Vec<recast_crds::GoldenImage>, BackendError> {
        self.inner.golden_images(ns).await
    }
}

impl recast_operator::store::Inbox for RacingEdit {
    async fn post_input(&self, k: &Key, i: &Input) -> Result<(), BackendError> {
        self.inner.post_input(k, i).await
    }

    async fn pending_inputs(&self, k: &Key) -> Result<Vec<(String, Option<Input>)>, BackendError> {
        self.inner.pending_inputs(k).await
    }

    async fn ack_input(&self, k: &Key, id: &str) -> Result<(), BackendError> {
        self.inner.ack_input(k, id).await
    }
}

impl recast_operator::store::ActionJournal for RacingEdit {
    async fn journal_begin(
        &self,
        ep: &recast_crds::Endpoint,
        k: &str,
    ) -> Result<Journal, BackendError> {
        self.inner.journal_begin(ep, k).await
    }

    async fn journal_finish(
        &self,
        ep: &recast_crds::Endpoint,
        k: &str,
    ) -> Result<(), BackendError> {
        self.inner.journal_finish(ep, k).await
    }

    async fn journal_forget(
        &self,
        ep: &recast_crds::Endpoint,
        k: &str,
    ) -> Result<(), BackendError> {
        self.inner.journal_forget(ep, k).await
    }
}

impl recast_operator::store::BootArming for RacingEdit {
    async fn arm_boot(
        &self,
        ep: &recast_crds::Endpoint,
        intent: &recast_operator::store::BootIntent,
    ) -> Result<(), BackendError> {
        self.inner.arm_boot(ep, intent).await
    }

    async fn disarm_boot(&self, key: &Key) -> Result<(), BackendError> {
        self.inner.disarm_boot(key).await
    }
}

impl recast_operator::store::WaveStore for RacingEdit {}
impl recast_operator::store::PolicyStatusStore for RacingEdit {}

impl recast_operator::store::Fencing for RacingEdit {
    fn ensure_leader(&self) -> Result<(), BackendError> {
        if self.deposed {
            Err(BackendError::NotLeader)
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_never_power_cycles() {
    let store = store_with_examples("deposed");
    verify_image(&store);
    let (ctrl, _) = controller(RacingEdit {
        inner: EmbeddedBackend {
            store: store.clone(),
        },
        raced: Mutex::new(true),
        deposed: true,
    });
    ctrl.prime().await.unwrap();
    let result = ctrl
        .reconcile(
            &key("kiosk-01"),
            Input::Signals(vec![(SignalKind::FailedRollback, "x".into())]),
        )
        .await;
    assert!(
        matches!(result, Err(BackendError::NotLeader)),
        "the fence stops the action: {result:?}"
    );
    assert!(
        ctrl.power.log().is_empty(),
        "no power cycle after losing the lease"
    );
    // The decision was persisted before acting, so the next leader resumes this attempt.
    let st = status(&store, "kiosk-01");
    assert_eq!(
        format!("{:?}", st.active_attempt.unwrap().step),
        "PowerCycling"
    );
}

#[tokio::test]
async fn a_spec_edit_racing_the_controller_is_not_lost() {
    let store = store_with_examples("race");
    let (ctrl, _) = controller(RacingEdit {
        inner: EmbeddedBackend {
            store: store.clone(),
        },
        raced: Mutex::new(false),
        deposed: false,
    });
    ctrl.prime().await.unwrap();
    let k = key("kiosk-03");
    ctrl.reconcile(
        &k,
        Input::Signals(vec![(SignalKind::FailedRollback, "x".into())]),
    )
    .await
    .unwrap();
    let obj = store
        .get(Kind::Endpoint, "default", "kiosk-03")
        .unwrap()
        .unwrap();
    assert_eq!(
        obj["spec"]["protected"],
        json!(true),
        "the user's edit survived"
    );
    let st = status(&store, "kiosk-03");
    assert_eq!(
        st.attempts_started, 0,
        "the decision was taken again on the protected spec"
    );
    assert!(st.active_attempt.is_none());
    assert!(ctrl.power.log().is_empty());
    assert_eq!(st.signals.len(), 1, "the signal input was not lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limits_hold_across_the_fleet() {
    let store = store_with_examples("limits");
    // Eight more kiosks and a policy allowing two reimages at once, one per site.
    for i in 0..8 {
        let doc = json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": format!("lane-{i}")},
            "spec": {"identity": {"macAddresses": [format!("52:54:00:d0:00:{i:02x}")]}, "bootMode": "uefi",
                     "image": {"channel": "stable"}, "site": if i % 2 == 0 { "north" } else { "south" }}
        });
        store.apply(&doc, "default").unwrap();
    }
    store
        .update(Kind::RemediationPolicy, "default", "default", |o| {
            o["spec"]["concurrency"] = json!({"global": 2, "perSite": 1});
            Ok(())
        })
        .unwrap();
    let (ctrl, _) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    ctrl.prime().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ctrl = ctrl.clone();
        tasks.push(tokio::spawn(async move {
            ctrl.reconcile(
                &key(&format!("lane-{i}")),
                Input::Signals(vec![(SignalKind::BootCrash, "0xED".into())]),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let statuses: Vec<_> = (0..8)
        .map(|i| status(&store, &format!("lane-{i}")))
        .collect();
    let active: Vec<usize> = (0..8)
        .filter(|i| statuses[*i].active_attempt.is_some())
        .collect();
    assert_eq!(
        active.len(),
        2,
        "exactly the global limit starts: {active:?}"
    );
    assert_ne!(active[0] % 2, active[1] % 2, "one per site");
    let waiting = statuses
        .iter()
        .filter(|s| s.phase == Some(EndpointPhase::ReimageScheduled))
        .count();
    assert_eq!(waiting, 6);
    assert!(statuses.iter().any(|s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for a slot"))
    }));
}

struct Collect(Mutex<Vec<String>>);

impl recast_operator::notify::Notifier for Collect {
    fn notify(&self, endpoint: &Key, notice: &Notice) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", endpoint.name, notice.reason));
    }
}

#[tokio::test]
async fn warnings_reach_the_notifier() {
    let store = store_with_examples("notify");
    let sink = Arc::new(Collect(Mutex::new(Vec::new())));
    let clock = Arc::new(ManualClock(Mutex::new(
        "2026-01-14T08:00:00Z".parse().unwrap(),
    )));
    let ctrl = Controller::new(
        Arc::new(EmbeddedBackend {
            store: store.clone(),
        }),
        Arc::new(RecordingPower::default()),
        clock,
        Arc::new(Metrics::new()),
    )
    .with_notifier(sink.clone());
    ctrl.prime().await.unwrap();
    store
        .update(Kind::Endpoint, "default", "reception-01", |o| {
            o["spec"]["reimageRequest"] = json!({"token": "t1", "reason": "ticket"});
            Ok(())
        })
        .unwrap();
    ctrl.reconcile(&key("reception-01"), Input::Reconcile)
        .await
        .unwrap();
    ctrl.reconcile(
        &key("backoffice-01"),
        Input::Signals(vec![(SignalKind::BootCrash, "0xED".into())]),
    )
    .await
    .unwrap();
    let got = sink.0.lock().unwrap().clone();
    assert!(
        got.contains(&"reception-01 ReimageRefused".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"backoffice-01 BootCrash".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"backoffice-01 PowerCycleNeeded".to_string()),
        "no BMC: a person must restart it: {got:?}"
    );
}

/// The BMC crash watch: only silent endpoints with a BMC are read; a boot crash (0xED) the
/// BMC recorded after the last report becomes BootCrash and a reimage, a 0x50 does not, and a
/// healthy endpoint's BMC is never asked.
#[tokio::test]
async fn a_boot_crash_in_the_bmc_log_of_a_silent_endpoint_reimages_it() {
    use recast_core::derive::BmcCrash;
    let store = store_with_examples("bmc-watch");
    let (ctrl, _clock) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    ctrl.prime().await.unwrap();
    let crash = |code: u32| BmcCrash {
        at: Some("2026-01-14T08:30:00Z".parse().unwrap()),
        bugcheck: Some(code),
        source: "Sel entry 7".into(),
        message: format!("OS Stop event: bug check 0x{code:x}"),
    };
    for (name, code) in [("kiosk-01", 0xED), ("kiosk-02", 0x50), ("kiosk-03", 0xED)] {
        ctrl.power.script_crashes(name, vec![crash(code)]);
        ctrl.reconcile(&key(name), report("26100.7462", None))
            .await
            .unwrap();
    }
    for name in ["kiosk-01", "kiosk-02"] {
        ctrl.reconcile(
            &key(name),
            Input::Signals(vec![(SignalKind::HeartbeatLost, "silent for 20m".into())]),
        )
        .await
        .unwrap();
    }

    assert_eq!(ctrl.watch_bmcs_once().await.unwrap(), 1);
    let mut read = ctrl.power.crash_reads();
    read.sort();
    assert_eq!(
        read,
        ["kiosk-01", "kiosk-02"],
        "healthy endpoints' BMCs are left alone"
    );

    ctrl.reconcile(&key("kiosk-01"), Input::Reconcile)
        .await
        .unwrap();
    let st = status(&store, "kiosk-01");
    let boot_crash = st
        .signals
        .iter()
        .find(|s| s.type_ == recast_crds::signal::SignalKind::BootCrash)
        .expect("BootCrash from the BMC");
    assert!(
        boot_crash.message.contains("UNMOUNTABLE_BOOT_VOLUME")
            && boot_crash.message.contains("Sel entry 7"),
        "{}",
        boot_crash.message
    );
    let attempt = st.active_attempt.expect("a reimage");
    assert_eq!(
        attempt.trigger,
        recast_crds::endpoint::AttemptTrigger::BootCrash
    );
    assert!(reasons(&store, "kiosk-01").contains(&"BootCrash".to_string()));

    ctrl.reconcile(&key("kiosk-02"), Input::Reconcile)
        .await
        .unwrap();
    let st2 = status(&store, "kiosk-02");
    assert!(
        st2.signals
            .iter()
            .all(|s| s.type_ != recast_crds::signal::SignalKind::BootCrash),
        "0x50 is not a boot crash"
    );
    assert!(st2.active_attempt.is_none());

    // kiosk-01 is being reimaged now: its BMC is not read again.
    assert_eq!(ctrl.watch_bmcs_once().await.unwrap(), 0);
    assert_eq!(ctrl.power.crash_reads().len(), 3);
}

#[tokio::test]
async fn a_boot_loop_waits_for_its_machine_and_a_failed_wake_asks_a_person() {
    let store = store_with_examples("boot-loop");
    let (ctrl, clock) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    // The operator runs with --wake-on-lan off: the packets cannot be sent.
    let ctrl = Arc::new(
        Arc::try_unwrap(ctrl)
            .unwrap_or_else(|_| unreachable!())
            .with_wake(recast_operator::wake::WakeConfig {
                disabled: true,
                ..Default::default()
            }),
    );
    ctrl.prime().await.unwrap();
    // backoffice-01: no BMC, no agent ever; its firmware boots the network first, and its
    // Windows restarts it again and again.
    let k = key("backoffice-01");
    let boot = |ctrl: Arc<Ctrl<EmbeddedBackend>>, at: Timestamp| async move {
        ctrl.reconcile(
            &key("backoffice-01"),
            Input::NetworkBootObserved { at: at.to_string() },
        )
        .await
        .unwrap();
    };
    for _ in 0..2 {
        boot(ctrl.clone(), clock.now()).await;
        clock.advance(60);
    }
    assert!(status(&store, "backoffice-01").signals.is_empty());
    assert_eq!(status(&store, "backoffice-01").network_boots.len(), 2);
    boot(ctrl.clone(), clock.now()).await;
    // The attempt starts and the boot is armed; nothing switches the machine on: its own loop
    // brings it to the armed boot.
    for _ in 0..3 {
        ctrl.reconcile(&k, Input::Reconcile).await.unwrap();
    }
    let st = status(&store, "backoffice-01");
    assert!(
        st.signals
            .iter()
            .any(|s| s.type_ == recast_crds::signal::SignalKind::BootLoop)
    );
    let a = st.active_attempt.expect("a reimage for the loop");
    assert_eq!(a.trigger, recast_crds::endpoint::AttemptTrigger::BootLoop);
    assert_eq!(a.step, recast_crds::endpoint::ReimageStep::Booting);
    assert_eq!(a.power_way, Some(recast_crds::endpoint::PowerWay::Loop));
    let events = reasons(&store, "backoffice-01");
    for r in ["BootLoop", "WaitingForLoop"] {
        assert!(events.contains(&r.to_string()), "{r}: {events:?}");
    }
    assert!(!events.contains(&"WakeOnLanSent".to_string()));

    // It never comes back (the boots were not a loop after all): the attempt stops, disarmed.
    clock.advance(30 * 60);
    ctrl.reconcile(&k, Input::Reconcile).await.unwrap();
    let st = status(&store, "backoffice-01");
    assert!(st.active_attempt.is_none(), "{st:?}");
    assert_eq!(st.history[0].outcome, AttemptOutcome::Aborted);
    assert!(!st.boot_armed);

    // A person asks for a reimage: the machine may be off, so Wake-on-LAN, which cannot be
    // sent here; a person is asked and the try waits for the network boot.
    clock.advance(7 * 24 * 3600);
    store
        .update(Kind::Endpoint, "default", "backoffice-01", |o| {
            o["spec"]["reimageRequest"] = json!({"token": "t2", "reason": "ticket 4711"});
            Ok(())
        })
        .unwrap();
    for _ in 0..3 {
        ctrl.reconcile(&k, Input::Reconcile).await.unwrap();
    }
    let a = status(&store, "backoffice-01")
        .active_attempt
        .expect("the requested reimage");
    assert_eq!(a.step, recast_crds::endpoint::ReimageStep::Booting);
    assert_eq!(a.power_way, Some(recast_crds::endpoint::PowerWay::Person));
    let events = store
        .events(Kind::Endpoint, "default", "backoffice-01")
        .unwrap();
    let asked = events
        .iter()
        .rev()
        .find(|e| e.reason == "PowerCycleNeeded")
        .expect("a person is asked");
    assert!(
        asked.message.contains("--wake-on-lan off"),
        "{}",
        asked.message
    );
    let metrics = ctrl.metrics.render();
    for way in ["Loop", "WakeOnLan", "Person"] {
        assert!(
            metrics.contains(&format!("recast_power_way_total{{way=\"{way}\"}} 1")),
            "{way}:\n{metrics}"
        );
    }
}

/// Endpoint reconciles once they have stopped for `quiet`.
async fn settled_reconciles(ctrl: &Ctrl<EmbeddedBackend>, quiet: std::time::Duration) -> u64 {
    let mut last = ctrl.metrics.reconciles();
    loop {
        tokio::time::sleep(quiet).await;
        let now = ctrl.metrics.reconciles();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_writes_the_policys_status_and_its_own_writes_reevaluate_nothing() {
    use std::time::{Duration, Instant};
    let store = store_with_examples("policy-status");
    let (ctrl, _clock) = controller(EmbeddedBackend {
        store: store.clone(),
    });
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = tokio::spawn(recast_operator::controller::embedded::run(
        ctrl.clone(),
        shutdown,
        ready,
    ));
    let policy_status = || {
        store
            .get(Kind::RemediationPolicy, "default", "default")
            .unwrap()
            .unwrap()["status"]
            .clone()
    };
    let wait_until = |what: &str, deadline: Duration, ok: &dyn Fn() -> bool| {
        let until = Instant::now() + deadline;
        while !ok() {
            assert!(Instant::now() < until, "{what}: not within {deadline:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The first pass runs as the loop starts.
    wait_until(
        "the policy's first status",
        Duration::from_secs(10),
        &|| policy_status()["budget"].is_string(),
    );
    let first = policy_status();
    assert_eq!(first["budget"], "0/3 failures in 1h");
    assert_eq!(first["remediationHalted"], false);
    let valid = first["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Valid")
        .unwrap();
    assert_eq!(valid["status"], "True");
    let settled = settled_reconciles(&ctrl, Duration::from_secs(2)).await;
    assert!(
        settled >= 5,
        "every example endpoint was reconciled at start"
    );

    // A status-only write (what the loop's own pass does, or a previous leader's) goes through
    // the change feed and re-evaluates no endpoint...
    store
        .write_status(
            Kind::RemediationPolicy,
            "default",
            "default",
            None,
            &json!({"budget": "stale"}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ctrl.metrics.reconciles(), settled);
    // ...and the next pass puts it right, again without re-evaluating anything.
    wait_until("the pass to rewrite it", Duration::from_secs(15), &|| {
        policy_status()["budget"] == "0/3 failures in 1h"
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ctrl.metrics.reconciles(), settled);

    // A spec change does re-evaluate every endpoint of the namespace.
    store
        .update(Kind::RemediationPolicy, "default", "default", |o| {
            o["spec"]["failureBudget"]["maxFailedAttempts"] = json!(5);
            Ok(())
        })
        .unwrap();
    wait_until(
        "the namespace's endpoints to be re-evaluated",
        Duration::from_secs(10),
        &|| ctrl.metrics.reconciles() >= settled + 5,
    );
    // And the status follows the new budget.
    wait_until(
        "the status to follow the spec",
        Duration::from_secs(15),
        &|| policy_status()["budget"] == "0/5 failures in 1h",
    );
    assert_eq!(
        policy_status()["observedGeneration"],
        store
            .get(Kind::RemediationPolicy, "default", "default")
            .unwrap()
            .unwrap()["metadata"]["generation"]
    );
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}
