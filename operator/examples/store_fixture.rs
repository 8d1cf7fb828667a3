//! Writes an embedded store as a running site's would look (every kind of row the store
//! keeps) into one self-contained file: the migration test's fixture,
//! `operator/tests/fixtures/store-schema-1.db`, was written by this program at the commit
//! before schema 2 (see operator/tests/fixtures/README.md).
//!
//! cargo run -p recast-operator --example store_fixture -- OUT.db

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use recast_core::lifecycle::Input;
use recast_core::signal::SignalKind;
use recast_crds::endpoint::ReportSummary;
use recast_crds::manifest::Kind;
use recast_operator::bmc::RecordingPower;
use recast_operator::clock::Clock;
use recast_operator::controller::Controller;
use recast_operator::metrics::Metrics;
use recast_operator::store::Key;
use recast_operator::store::embedded::{EmbeddedBackend, EmbeddedStore};

struct Fixed(Mutex<Timestamp>);

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

fn report(build: &str, attempt: Option<String>) -> Input {
    Input::AgentReport(ReportSummary {
        build: build.into(),
        attempt_id: attempt,
        ..Default::default()
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: store_fixture OUT.db"),
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    for (_, doc) in recast_operator::manifests::load(&repo.join("examples")).unwrap() {
        if recast_operator::manifests::is_recast(&doc) {
            store.apply(&doc.value, "default").unwrap();
        } else if doc.value.get("kind").and_then(|k| k.as_str()) == Some("Secret") {
            store.apply_secret(&doc.value, "default").unwrap();
        }
    }
    store
        .write_status(
            Kind::GoldenImage,
            "default",
            "win11-24h2-2026-01",
            None,
            &recast_tests::inputs::verified_image_status(),
        )
        .unwrap();
    let ctrl = Controller::new(
        Arc::new(EmbeddedBackend {
            store: store.clone(),
        }),
        Arc::new(RecordingPower::default()),
        Arc::new(Fixed(Mutex::new("2026-01-14T08:00:00Z".parse().unwrap()))),
        Arc::new(Metrics::new()),
    );
    ctrl.prime().await.unwrap();
    let key = |n: &str| Key {
        namespace: "default".into(),
        name: n.into(),
    };
    let rolled_back = || {
        Input::Signals(vec![(
            SignalKind::FailedRollback,
            "KB5074109 rolled back".into(),
        )])
    };
    // kiosk-01: one whole reimage, in its history.
    let k1 = key("kiosk-01");
    ctrl.reconcile(&k1, report("26100.7462", None))
        .await
        .unwrap();
    ctrl.reconcile(&k1, rolled_back()).await.unwrap();
    let st: recast_crds::endpoint::EndpointStatus = serde_json::from_value(
        store
            .get(Kind::Endpoint, "default", "kiosk-01")
            .unwrap()
            .unwrap()["status"]
            .clone(),
    )
    .unwrap();
    let id = st.active_attempt.unwrap().id;
    for input in [
        Input::NetworkBooted {
            try_number: None,
            attempt_id: id.clone(),
            client: None,
        },
        Input::ImagingFinished {
            try_number: None,
            attempt_id: id.clone(),
            result: Ok(()),
            refusal: None,
        },
        report("26100.7623", Some(id.clone())),
    ] {
        ctrl.reconcile(&k1, input).await.unwrap();
    }
    // kiosk-02: an attempt in flight (boot armed, power-cycled, journaled).
    let k2 = key("kiosk-02");
    ctrl.reconcile(&k2, report("26100.7462", None))
        .await
        .unwrap();
    ctrl.reconcile(&k2, rolled_back()).await.unwrap();
    // kiosk-03: checked in; an input queued and not yet decided.
    ctrl.reconcile(&key("kiosk-03"), report("26100.7623", None))
        .await
        .unwrap();
    store
        .post_input(
            "default",
            "kiosk-03",
            &serde_json::to_value(report("26100.7623", None)).unwrap(),
        )
        .unwrap();
    drop(ctrl);
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("recast.db")).unwrap();
    let _ = std::fs::remove_file(&out);
    conn.execute("VACUUM INTO ?1", [out.to_str().unwrap()])
        .unwrap();
    println!("wrote {}", out.display());
}
