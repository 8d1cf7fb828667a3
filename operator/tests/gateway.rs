//! The agent gateway over real HTTPS (rustls) with the real embedded store (SQLite) and the
//! real embedded controller behind it; the agent's own sender (reqwest + rustls) as the client.
//! Certificates come from the openssl CLI.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use recast_agent::send::{SendOutcome, Sender};
use recast_agent::simulate::{Scenario, simulated_report};
use recast_crds::endpoint::EndpointStatus;
use recast_crds::manifest::Kind;
use recast_crds::report::{AgentReport, MAX_REPORT_BYTES};
use recast_operator::bmc::RecordingPower;
use recast_operator::clock::SystemClock;
use recast_operator::controller::Controller;
use recast_operator::controller::embedded::run as run_embedded;
use recast_operator::gateway::credentials::CredentialStore;
use recast_operator::gateway::limit::Rate;
use recast_operator::gateway::{self, Gateway, GatewayConfig};
use recast_operator::metrics::Metrics;
use recast_operator::store::Key;
use recast_operator::store::embedded::EmbeddedBackend;
use recast_operator::store::embedded::EmbeddedStore;

#[path = "support/kube_test.rs"]
mod kube_test;
use serde_json::Value;
use tokio::sync::watch;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-gw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, or None (after a loud skip)
/// without openssl. Returns (CA cert, server cert, server key).
fn certificate(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = dir.join("gateway.key");
    let csr = dir.join("gateway.csr");
    let cert = dir.join("gateway.crt");
    let ext = dir.join("gateway.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let run = |args: Vec<&std::ffi::OsStr>| -> Result<(), String> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            panic!(
                "openssl could not make test certificates: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let ec = [
        os("-newkey"),
        os("ec"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:prime256v1"),
        os("-nodes"),
    ];
    let mut ca_args = vec![os("req"), os("-x509")];
    ca_args.extend(ec);
    ca_args.extend([
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=recast test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    if let Err(e) = run(ca_args) {
        recast_tests::skip_or_fail(
            "RECAST_REQUIRE_OPENSSL",
            &format!("gateway TLS tests need the openssl CLI to make certificates: {e}"),
        );
        return None;
    }
    let mut csr_args = vec![os("req")];
    csr_args.extend(ec);
    csr_args.extend([
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ]);
    run(csr_args).ok()?;
    run(vec![
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ])
    .ok()?;
    Some((ca, cert, key))
}

struct Harness {
    dir: PathBuf,
    store: Arc<EmbeddedStore>,
    gateway: Arc<Gateway<EmbeddedBackend>>,
    credentials: Arc<CredentialStore>,
    sender: Sender,
    url: String,
    ca: PathBuf,
    stop: watch::Sender<bool>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn harness(name: &str, config: GatewayConfig) -> Option<Harness> {
    let dir = temp_dir(name);
    let (ca, cert, key) = certificate(&dir)?;
    let store = Arc::new(EmbeddedStore::open(&dir.join("data")).unwrap());
    let examples = recast_tests::repo_root().join("examples");
    for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
        if recast_operator::manifests::is_recast(&doc) {
            store.apply(&doc.value, "default").unwrap();
        }
    }
    let backend = Arc::new(EmbeddedBackend {
        store: store.clone(),
    });
    let ctrl = Arc::new(Controller::new(
        backend.clone(),
        Arc::new(RecordingPower::default()),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    ));
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(run_embedded(
        ctrl,
        stop_rx.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    let credentials = Arc::new(CredentialStore::open(&dir.join("data")).unwrap());
    let gw = Arc::new(
        Gateway::new(backend, credentials.clone(), config, Arc::new(SystemClock))
            .with_enrollment(imaging_key()),
    );
    let tls = gateway::tls_config(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(gateway::serve_tls(
        listener,
        tls,
        gateway::router(gw.clone()),
        stop_rx,
    ));
    let sender = Sender::new(&url, Some(&ca)).unwrap();
    Some(Harness {
        dir,
        store,
        gateway: gw,
        credentials,
        sender,
        url,
        ca,
        stop,
    })
}

/// The imaging key the boot service and the gateway share in these tests.
fn imaging_key() -> recast_operator::token::TokenKey {
    recast_operator::token::TokenKey::from_bytes([7; 32])
}

/// The agent.json the boot service would render for this attempt.
fn agent_config(name: &str, attempt: &str) -> recast_agent::enroll::AgentConfig {
    recast_agent::enroll::AgentConfig {
        namespace: "default".into(),
        endpoint: name.into(),
        attempt_id: attempt.into(),
        gateway_url: None,
        enrollment_token: recast_operator::boot::http::enrollment_token(
            &imaging_key(),
            "default",
            name,
            attempt,
        ),
    }
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

/// Waits (bounded) until the controller has decided on everything queued for the endpoint.
async fn settled(store: &EmbeddedStore, name: &str) {
    for _ in 0..200 {
        if store.inputs_for("default", name).unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the controller did not drain {name}'s inbox");
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn report_for(name: &str, scenario: Scenario, seq: u64) -> AgentReport {
    simulated_report(name, scenario, 0, seq, now(), 300)
}

fn json(r: &AgentReport) -> Vec<u8> {
    serde_json::to_vec(r).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_becomes_status_and_signals() {
    let Some(h) = harness("flow", GatewayConfig::default()).await else {
        return;
    };
    let token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let r = report_for("kiosk-01", Scenario::FailedRollback, 1);
    assert_eq!(
        h.sender.send(&token, &r).await.unwrap(),
        SendOutcome::Accepted
    );
    settled(&h.store, "kiosk-01").await;
    let st = status(&h.store, "kiosk-01");
    let last = st.last_report.expect("lastReport written");
    assert_eq!(last.build, "26100.7462");
    assert!(
        last.update_results
            .iter()
            .any(|u| u.update.contains("KB5074109") && u.result == "Failed"),
        "{:?}",
        last.update_results
    );
    let kinds: Vec<&str> = st.signals.iter().map(|s| s.type_.as_str()).collect();
    assert!(kinds.contains(&"FailedRollback"), "{kinds:?}");
    assert!(
        st.signals[0].message.contains("KB5074109"),
        "{}",
        st.signals[0].message
    );
    // First report: a summary and a signal set.
    assert_eq!(h.gateway.stats.store_writes.load(Ordering::Relaxed), 2);

    // The same evidence again, sooner than the heartbeat period: accepted, nothing written.
    for seq in 2..6 {
        let r = report_for("kiosk-01", Scenario::FailedRollback, seq);
        assert_eq!(
            h.sender.send(&token, &r).await.unwrap(),
            SendOutcome::Accepted
        );
    }
    assert_eq!(h.gateway.stats.store_writes.load(Ordering::Relaxed), 2);

    // The first report was committed before its 200 (group commit); the ones at rest were
    // answered first and their marks are the flusher's: one mark for the endpoint, the last.
    assert_eq!(h.credentials.sequence(&key("kiosk-01")).await.unwrap(), 1);
    assert_eq!(h.gateway.flush_sequences().await.unwrap(), 1);
    assert_eq!(h.credentials.sequence(&key("kiosk-01")).await.unwrap(), 5);
    assert_eq!(h.gateway.flush_sequences().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_abuse_get_the_right_status_and_change_nothing() {
    let config = GatewayConfig {
        endpoint_rate: Rate {
            burst: 20,
            per_second: 0.001,
        },
        ..GatewayConfig::default()
    };
    let Some(h) = harness("abuse", config).await else {
        return;
    };
    let token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let other = h.credentials.issue(&key("kiosk-02"), "now").await.unwrap();
    let ghost = h
        .credentials
        .issue(&key("no-such-endpoint"), "now")
        .await
        .unwrap();
    let ok = report_for("kiosk-01", Scenario::Healthy, 100);
    assert_eq!(
        h.sender.send(&token, &ok).await.unwrap(),
        SendOutcome::Accepted
    );
    settled(&h.store, "kiosk-01").await;
    let before = status(&h.store, "kiosk-01");
    let writes_before = h.gateway.stats.store_writes.load(Ordering::Relaxed);
    let json_ct = "application/json";

    let mut bad_bound = report_for("kiosk-01", Scenario::FailedRollback, 200);
    bad_bound.update_events[0].title = "x".repeat(10_000);
    let mut unknown_field =
        serde_json::to_value(report_for("kiosk-01", Scenario::FailedRollback, 201)).unwrap();
    unknown_field["os"]["edition"] = Value::from("Enterprise");
    /// (what, token, content type, body, expected status)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 101)),
            401,
        ),
        (
            "wrong token",
            Some("rct_0000000000000000000000000000000000000000000000000000000000000000"),
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 102)),
            401,
        ),
        (
            "garbage token",
            Some("hunter2"),
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 103)),
            401,
        ),
        (
            "another endpoint's identity",
            Some(&other),
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 104)),
            403,
        ),
        (
            "unknown endpoint",
            Some(&ghost),
            json_ct,
            json(&report_for(
                "no-such-endpoint",
                Scenario::FailedRollback,
                105,
            )),
            404,
        ),
        (
            "replayed sequence",
            Some(&token),
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 100)),
            409,
        ),
        (
            "older sequence",
            Some(&token),
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 1)),
            409,
        ),
        (
            "malformed JSON",
            Some(&token),
            json_ct,
            b"{\"version\": 1,".to_vec(),
            400,
        ),
        (
            "not an object",
            Some(&token),
            json_ct,
            b"[1,2,3]".to_vec(),
            400,
        ),
        (
            "unknown field",
            Some(&token),
            json_ct,
            serde_json::to_vec(&unknown_field).unwrap(),
            400,
        ),
        (
            "out of bounds",
            Some(&token),
            json_ct,
            json(&bad_bound),
            422,
        ),
        (
            "oversized body",
            Some(&token),
            json_ct,
            vec![b' '; MAX_REPORT_BYTES + 1],
            413,
        ),
        (
            "wrong content type",
            Some(&token),
            "text/plain",
            json(&report_for("kiosk-01", Scenario::FailedRollback, 106)),
            415,
        ),
    ];
    for (what, tok, ct, body, expected) in cases {
        let (code, text) = h.sender.post_raw(tok, ct, body).await.unwrap();
        assert_eq!(code, expected, "{what}: {text}");
        if code != 413 {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {text}"
            );
        }
    }
    // A revoked token stops working at once.
    h.credentials.revoke(&key("kiosk-01")).await.unwrap();
    let (code, _) = h
        .sender
        .post_raw(
            Some(&token),
            json_ct,
            json(&report_for("kiosk-01", Scenario::FailedRollback, 300)),
        )
        .await
        .unwrap();
    assert_eq!(code, 401);

    settled(&h.store, "kiosk-01").await;
    assert_eq!(
        status(&h.store, "kiosk-01"),
        before,
        "nothing above changed the endpoint"
    );
    assert_eq!(
        h.gateway.stats.store_writes.load(Ordering::Relaxed),
        writes_before
    );
    assert!(status(&h.store, "kiosk-02").last_report.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_endpoint_is_rate_limited_and_others_still_report() {
    let config = GatewayConfig {
        endpoint_rate: Rate {
            burst: 5,
            per_second: 0.01,
        },
        ..GatewayConfig::default()
    };
    let Some(h) = harness("flood", config).await else {
        return;
    };
    let noisy = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let quiet = h.credentials.issue(&key("kiosk-02"), "now").await.unwrap();
    let mut accepted = 0;
    let mut limited = 0;
    for seq in 1..=50 {
        match h
            .sender
            .send(&noisy, &report_for("kiosk-01", Scenario::Crashed, seq))
            .await
            .unwrap()
        {
            SendOutcome::Accepted => accepted += 1,
            SendOutcome::RateLimited(retry) => {
                assert!(retry >= Duration::from_secs(1));
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((accepted, limited), (5, 45));
    assert_eq!(
        h.sender
            .send(&quiet, &report_for("kiosk-02", Scenario::Healthy, 1))
            .await
            .unwrap(),
        SendOutcome::Accepted
    );
    // The flood wrote once (the first report: summary + signals), not 50 times.
    settled(&h.store, "kiosk-01").await;
    assert_eq!(h.gateway.stats.store_writes.load(Ordering::Relaxed), 2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_reports_through_the_gateway() {
    let Some(h) = harness("simulate", GatewayConfig::default()).await else {
        return;
    };
    // The simulator's endpoints must exist: add them to the store.
    let mut tokens = std::collections::HashMap::new();
    for i in 0..20 {
        let name = recast_agent::simulate::endpoint_name("sim", i);
        let doc = serde_json::json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "identity": {"macAddresses": [format!("52:54:00:ff:00:{:02x}", i)]},
                "bootMode": "uefi",
                "image": {"goldenImage": "win11-24h2-2026-01"},
                "site": "lab"
            }
        });
        h.store.apply(&doc, "default").unwrap();
        tokens.insert(
            name.clone(),
            h.credentials.issue(&key(&name), "now").await.unwrap(),
        );
    }
    let summary = recast_agent::simulate::run(recast_agent::simulate::SimulateOptions {
        gateway: h.url.clone(),
        ca_file: Some(h.ca.clone()),
        endpoints: 20,
        scenario: Scenario::FailedRollback,
        prefix: "sim".into(),
        reports: 3,
        pause: Duration::ZERO,
        tokens: Arc::new(tokens),
        concurrency: 8,
    })
    .await
    .unwrap();
    assert_eq!(summary.sent, 60);
    assert_eq!(summary.accepted, 60, "{:?}", summary.refused);
    // Every simulated endpoint was told to hold (FailedRollback) and holds.
    assert_eq!(summary.held, 20);
    // 20 endpoints × (summary + signals) for the first report, and the second report's summary
    // (the hold now reads back as held); the third writes nothing.
    assert_eq!(h.gateway.stats.store_writes.load(Ordering::Relaxed), 60);
    settled(&h.store, "sim-00007").await;
    let st = status(&h.store, "sim-00007");
    assert!(
        st.signals
            .iter()
            .any(|s| s.type_ == recast_crds::signal::SignalKind::FailedRollback),
        "{:?}",
        st.signals
    );
}

async fn wait_for(
    store: &EmbeddedStore,
    name: &str,
    what: &str,
    ok: impl Fn(&EndpointStatus) -> bool,
) -> EndpointStatus {
    for _ in 0..400 {
        let st = status(store, name);
        if ok(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{name}: {what} did not happen; status: {:#?}",
        status(store, name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_closes_through_the_agent() {
    use recast_core::lifecycle::Input;
    use recast_operator::store::Inbox;
    let Some(h) = harness("loop", GatewayConfig::default()).await else {
        return;
    };
    h.store
        .write_status(
            Kind::GoldenImage,
            "default",
            "win11-24h2-2026-01",
            None,
            &recast_tests::inputs::verified_image_status(),
        )
        .unwrap();
    let old_token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let r = report_for("kiosk-01", Scenario::FailedRollback, 1);
    assert_eq!(
        h.sender.send(&old_token, &r).await.unwrap(),
        SendOutcome::Accepted
    );
    let st = wait_for(
        &h.store,
        "kiosk-01",
        "an attempt waiting for the network boot",
        |s| {
            s.active_attempt
                .as_ref()
                .is_some_and(|a| format!("{:?}", a.step) == "Booting")
        },
    )
    .await;
    let attempt = st.active_attempt.unwrap();
    assert_eq!(
        attempt.trigger,
        recast_crds::endpoint::AttemptTrigger::FailedRollback
    );
    // Too early: the machine has not been imaged yet, so nothing may enroll for it.
    let early = h
        .sender
        .enroll(&agent_config("kiosk-01", &attempt.id))
        .await
        .unwrap();
    assert!(
        matches!(&early, Err((409, m)) if m.contains("not waiting")),
        "{early:?}"
    );

    // The boot service and the imaging environment do their part.
    let backend = EmbeddedBackend {
        store: h.store.clone(),
    };
    for input in [
        Input::NetworkBooted {
            attempt_id: attempt.id.clone(),
            try_number: None,
            client: None,
        },
        Input::ImagingFinished {
            attempt_id: attempt.id.clone(),
            try_number: None,
            result: Ok(()),
            refusal: None,
        },
    ] {
        backend.post_input(&key("kiosk-01"), &input).await.unwrap();
    }
    wait_for(&h.store, "kiosk-01", "first boot of the new image", |s| {
        s.active_attempt
            .as_ref()
            .is_some_and(|a| format!("{:?}", a.step) == "FirstBoot")
    })
    .await;

    // Bad enrollments: a forged credential, one from another (earlier) attempt, one for
    // another endpoint. Each gets its status, and the old token still works meanwhile.
    let mut forged = agent_config("kiosk-01", &attempt.id);
    forged.enrollment_token = "0".repeat(64);
    let other_attempt = agent_config("kiosk-01", "kiosk-01-older-1");
    let mut stolen = agent_config("kiosk-02", &attempt.id);
    stolen.endpoint = "kiosk-01".into();
    for (cfg, want) in [(&forged, 401), (&other_attempt, 409), (&stolen, 401)] {
        let got = h.sender.enroll(cfg).await.unwrap();
        assert!(
            matches!(&got, Err((s, _)) if *s == want),
            "{cfg:?}: {got:?}"
        );
    }
    assert_eq!(
        h.credentials.endpoint_for(&old_token).unwrap(),
        Some(key("kiosk-01")),
        "refused enrollments change nothing"
    );

    // The new image's agent enrolls with agent.json's credential (the old token dies) and
    // starts a new sequence space; its first report carries the attempt id and the new build.
    let new_token = h
        .sender
        .enroll(&agent_config("kiosk-01", &attempt.id))
        .await
        .unwrap()
        .expect("enrollment accepted");
    let mut r = report_for("kiosk-01", Scenario::Healthy, 1);
    r.attempt_id = Some(attempt.id.clone());
    assert!(matches!(
        h.sender.send(&old_token, &r).await.unwrap(),
        SendOutcome::Unauthorized(_)
    ));
    assert_eq!(
        h.sender.send(&new_token, &r).await.unwrap(),
        SendOutcome::Accepted
    );
    let st = wait_for(&h.store, "kiosk-01", "the attempt to end", |s| {
        s.active_attempt.is_none()
    })
    .await;
    assert_eq!(st.history[0].id, attempt.id);
    assert_eq!(
        st.history[0].outcome,
        recast_crds::endpoint::AttemptOutcome::Succeeded
    );
    assert_eq!(st.last_report.unwrap().build, "26100.7623");
    assert!(st.signals.is_empty(), "{:?}", st.signals);
}

/// The gateway on the kube backend: the real `recast-operator run --backend kube` process with
/// `--gateway-listen`, a token issued into the control namespace (as `recastctl token issue` does), and the
/// agent's sender. A failed-rollback report becomes the Endpoint's status on the apiserver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_apiserver_a_report_becomes_status() {
    const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    let dir = temp_dir("kube");
    let Some((ca, cert, key_file)) = certificate(&dir) else {
        return;
    };
    k.install_crds();
    let ns = k.fresh_namespace("gw");
    let examples = recast_tests::repo_root().join("examples");
    k.kubectl_ok(&["apply", "-n", &ns, "-f", &examples.to_string_lossy()]);
    let data = dir.join("data");
    // On Kubernetes the tokens live in the control namespace (here the lease namespace), as
    // `recastctl token issue --backend kube` writes them.
    let client = kube_test::client(&k).await;
    let credentials = recast_operator::credentials::KubeCredentials::new(client, &ns);
    let (token, _) = credentials
        .issue(
            &Key {
                namespace: ns.clone(),
                name: "kiosk-01".into(),
            },
            "now",
        )
        .await
        .unwrap();
    let port = recast_tests::free_port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _operator = Kill(
        std::process::Command::new(OPERATOR)
            .args(["run", "--backend", "kube", "--listen", "127.0.0.1:0"])
            .args(["--watch-namespace", &ns, "--lease-namespace", &ns])
            .args(["--gateway-listen", &format!("127.0.0.1:{port}")])
            .arg("--gateway-cert")
            .arg(&cert)
            .arg("--gateway-key")
            .arg(&key_file)
            .arg("--data-dir")
            .arg(&data)
            .env("KUBECONFIG", &k.kubeconfig)
            .env("RECAST_POWER_DRIVER", "record")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    recast_tests::wait_for(Duration::from_secs(60), "the gateway to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let sender = Sender::new(&format!("https://127.0.0.1:{port}"), Some(&ca)).unwrap();
    let r = report_for("kiosk-01", Scenario::FailedRollback, 1);
    assert_eq!(
        sender.send(&token, &r).await.unwrap(),
        SendOutcome::Accepted
    );
    // Another endpoint's identity with this token: refused, as on the embedded backend.
    let other = report_for("kiosk-02", Scenario::Healthy, 2);
    assert!(matches!(
        sender.send(&token, &other).await.unwrap(),
        SendOutcome::Unauthorized(_)
    ));
    let get = || -> Value {
        serde_json::from_str(&k.kubectl_ok(&["get", "rep", "kiosk-01", "-n", &ns, "-o", "json"]))
            .unwrap()
    };
    recast_tests::wait_for(Duration::from_secs(60), "the report in status", || {
        let v = get();
        v.pointer("/status/lastReport/build")
            .and_then(Value::as_str)
            == Some(&r.os.build_string())
            && v.pointer("/status/signals")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| s["type"] == "FailedRollback"))
    });

    // A person releases the hold by hand. The gateway's facts for kiosk-01 were read with the
    // first report; its Endpoint watch says they changed, so the next reply carries the
    // release at once, not when a minute-old cache expires (facts_ttl is 60 s here).
    let (_, reply) = sender
        .send_with_reply(&token, &report_for("kiosk-01", Scenario::FailedRollback, 3))
        .await
        .unwrap();
    assert_ne!(reply.unwrap().update_hold.reason, "ManualRelease");
    let patch = serde_json::json!({"spec": {"manualUpdateHold": {
        "action": "Release", "reason": "watch test", "requestedAt": jiff::Timestamp::now().to_string(),
    }}});
    k.kubectl_ok(&[
        "patch",
        "rep",
        "kiosk-01",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    let mut seq = 4;
    // At most five replies, half a second apart: well inside the 60 s the cache would wait.
    loop {
        let (_, reply) = sender
            .send_with_reply(
                &token,
                &report_for("kiosk-01", Scenario::FailedRollback, seq),
            )
            .await
            .unwrap();
        if reply.unwrap().update_hold.reason == "ManualRelease" {
            break;
        }
        assert!(
            seq < 9,
            "the release never reached the reply (the endpoint's rate limit is near)"
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One pass of a simulated agent: re-assert the hold it was last told (in an in-memory
/// registry that answers reg.exe like Windows), report what it reads back, and adopt the
/// gateway's answer. Returns the answer.
async fn agent_pass(
    h: &Harness,
    token: &str,
    registry: &recast_agent::hold::fake::FakeRegistry,
    told: &mut Option<recast_crds::report::DesiredUpdateHold>,
    mut report: AgentReport,
) -> recast_crds::report::DesiredUpdateHold {
    use recast_agent::hold;
    let effective = hold::apply(registry, told.as_ref(), now()).unwrap();
    report.update_hold = Some(effective);
    let (outcome, reply) = h.sender.send_with_reply(token, &report).await.unwrap();
    assert_eq!(outcome, SendOutcome::Accepted);
    let reply = reply
        .expect("the gateway answers with the update hold")
        .update_hold;
    hold::apply(registry, Some(&reply), now()).unwrap();
    *told = Some(reply.clone());
    reply
}

/// The whole guard, end to end: a report reveals a FailedRollback → the answer says hold → the
/// simulated endpoint holds (and says so) → reimage → the new image's reports → released in
/// managed mode, kept in immutable mode; an undone hold is drift, put back and recorded.
async fn guard_end_to_end(immutable: bool) {
    use recast_agent::hold::{self, fake::FakeRegistry};
    use recast_core::lifecycle::Input;
    use recast_operator::store::Inbox;
    // What Windows would do with a hold on this registry (recast's values and Windows
    // Update's effective policy), not merely whether the values are there.
    let windows_holds =
        |r: &FakeRegistry| hold::judge(true, &hold::read(r).unwrap(), now(), vec![]).held;
    // Facts are read on every report, so answers follow the controller's decisions at once.
    let config = GatewayConfig {
        facts_ttl: Duration::ZERO,
        ..GatewayConfig::default()
    };
    let name = if immutable {
        "guard-immutable"
    } else {
        "guard-managed"
    };
    let Some(h) = harness(name, config).await else {
        return;
    };
    h.store
        .write_status(
            Kind::GoldenImage,
            "default",
            "win11-24h2-2026-01",
            None,
            &recast_tests::inputs::verified_image_status(),
        )
        .unwrap();
    if immutable {
        h.store
            .update(Kind::Endpoint, "default", "kiosk-01", |obj| {
                obj["spec"]["updateMode"] = Value::from("immutable");
                Ok(())
            })
            .unwrap();
        wait_for(&h.store, "kiosk-01", "the immutable hold", |s| {
            s.update_hold
                .as_ref()
                .is_some_and(|u| u.held && u.reason == recast_crds::signal::HoldReason::Immutable)
        })
        .await;
    }
    let registry = FakeRegistry::default();
    let mut told = None;
    let token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();

    // The report that reveals the improper state is answered with a hold at once.
    let r = report_for("kiosk-01", Scenario::FailedRollback, 1);
    let reply = agent_pass(&h, &token, &registry, &mut told, r).await;
    assert!(reply.held, "{reply:?}");
    assert_eq!(reply.reason, "FailedRollback");
    assert!(windows_holds(&registry));
    let st = wait_for(&h.store, "kiosk-01", "the guard in status", |s| {
        s.update_hold
            .as_ref()
            .is_some_and(|u| u.held && u.reason == recast_crds::signal::HoldReason::FailedRollback)
    })
    .await;
    let held_since = st.update_hold.unwrap().since;

    // The attempt runs; meanwhile the agent reports that the hold is in effect.
    let st = wait_for(&h.store, "kiosk-01", "an attempt", |s| {
        s.active_attempt
            .as_ref()
            .is_some_and(|a| format!("{:?}", a.step) == "Booting")
    })
    .await;
    let attempt = st.active_attempt.unwrap();
    let r = report_for("kiosk-01", Scenario::FailedRollback, 2);
    let reply = agent_pass(&h, &token, &registry, &mut told, r).await;
    assert!(reply.held);
    wait_for(&h.store, "kiosk-01", "the agent's read-back", |s| {
        s.update_hold
            .as_ref()
            .is_some_and(|u| u.effective == Some(true))
    })
    .await;
    let backend = EmbeddedBackend {
        store: h.store.clone(),
    };
    for input in [
        Input::NetworkBooted {
            attempt_id: attempt.id.clone(),
            try_number: None,
            client: None,
        },
        Input::ImagingFinished {
            attempt_id: attempt.id.clone(),
            try_number: None,
            result: Ok(()),
            refusal: None,
        },
    ] {
        backend.post_input(&key("kiosk-01"), &input).await.unwrap();
    }
    let st = wait_for(&h.store, "kiosk-01", "first boot of the new image", |s| {
        s.active_attempt
            .as_ref()
            .is_some_and(|a| format!("{:?}", a.step) == "FirstBoot")
    })
    .await;
    assert_eq!(
        st.update_hold.as_ref().map(|u| u.since.as_str()),
        Some(held_since.as_str()),
        "the hold stands, unchanged, through the attempt"
    );

    // The new image: a fresh registry, configured from agent.json's update mode.
    let registry = FakeRegistry::default();
    let mut told = hold::initial(Some(if immutable { "immutable" } else { "managed" }));
    let token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let mut r = report_for("kiosk-01", Scenario::Healthy, 1);
    r.attempt_id = Some(attempt.id.clone());
    agent_pass(&h, &token, &registry, &mut told, r).await;
    let st = wait_for(&h.store, "kiosk-01", "the attempt to end", |s| {
        s.active_attempt.is_none()
    })
    .await;
    assert_eq!(
        st.history[0].outcome,
        recast_crds::endpoint::AttemptOutcome::Succeeded
    );
    let u = st.update_hold.unwrap();
    assert_eq!(u.guard_engaged_since, None, "the machine was replaced");
    let mut r = report_for("kiosk-01", Scenario::Healthy, 2);
    r.attempt_id = Some(attempt.id.clone());
    let reply = agent_pass(&h, &token, &registry, &mut told, r).await;
    let effective = windows_holds(&registry);
    if immutable {
        assert!(
            u.held && u.reason == recast_crds::signal::HoldReason::Immutable,
            "{u:?}"
        );
        assert!(reply.held && reply.reason == "Immutable", "{reply:?}");
        assert!(effective);
        // Someone turns automatic updates back on: the next pass puts the hold back and the
        // report says so; the endpoint records it.
        registry.set(hold::AU_KEY, "NoAutoUpdate", "REG_DWORD", "0x0");
        let mut r = report_for("kiosk-01", Scenario::Healthy, 3);
        r.attempt_id = Some(attempt.id.clone());
        agent_pass(&h, &token, &registry, &mut told, r).await;
        assert!(windows_holds(&registry));
        settled(&h.store, "kiosk-01").await;
        let events = h
            .store
            .events(Kind::Endpoint, "default", "kiosk-01")
            .unwrap();
        let drift: Vec<_> = events
            .iter()
            .filter(|e| e.reason == "UpdateHoldDrift")
            .collect();
        assert_eq!(drift.len(), 1, "{events:#?}");
        assert!(drift[0].message.contains(r"AU\NoAutoUpdate: 0x1 -> 0x0"));
    } else {
        assert!(
            !u.held && u.reason == recast_crds::signal::HoldReason::Managed,
            "{u:?}"
        );
        assert!(!reply.held && reply.reason == "Managed", "{reply:?}");
        assert!(!effective);
    }
    // Every change of the hold is an event.
    let events = h
        .store
        .events(Kind::Endpoint, "default", "kiosk-01")
        .unwrap();
    let changes: Vec<&str> = events
        .iter()
        .filter(|e| e.reason.starts_with("Updates"))
        .map(|e| e.reason.as_str())
        .collect();
    let expected: &[&str] = if immutable {
        &["UpdatesHeld", "UpdatesHeld", "UpdatesHeld"]
    } else {
        &["UpdatesHeld", "UpdatesReleased"]
    };
    assert_eq!(changes, expected, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_holds_until_the_reimage_then_releases_a_managed_endpoint() {
    guard_end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_endpoint_stays_held_through_the_guard_and_the_reimage() {
    guard_end_to_end(true).await;
}

/// A Windows Home kiosk with a FailedRollback, over HTTPS: the agent writes the hold, judges
/// that Windows will not honour it, and the endpoint records that once, with the evidence and
/// what to do; the status shows what Windows will do, not what the registry says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_machine_reports_a_hold_windows_will_not_honour() {
    use recast_agent::hold::{self, fake::FakeRegistry};
    use recast_crds::report::HoldEnforcement;
    let config = GatewayConfig {
        facts_ttl: Duration::ZERO,
        ..GatewayConfig::default()
    };
    let Some(h) = harness("hold-home", config).await else {
        return;
    };
    let registry = FakeRegistry::default();
    registry.set(hold::CURRENT_VERSION_KEY, "EditionID", "REG_SZ", "Core");
    let mut told = None;
    let token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let r = report_for("kiosk-01", Scenario::FailedRollback, 1);
    let reply = agent_pass(&h, &token, &registry, &mut told, r).await;
    assert!(reply.held, "{reply:?}");
    assert!(
        hold::values_in_place(&hold::read(&registry).unwrap(), now()),
        "the registry says held"
    );
    // The next pass reports the judgement of the hold it now applies.
    let r = report_for("kiosk-01", Scenario::FailedRollback, 2);
    agent_pass(&h, &token, &registry, &mut told, r).await;
    let st = wait_for(&h.store, "kiosk-01", "the agent's judgement", |s| {
        s.update_hold
            .as_ref()
            .is_some_and(|u| u.enforcement == Some(HoldEnforcement::NotEnforceable))
    })
    .await;
    let u = st.update_hold.unwrap();
    assert!(u.held && u.effective == Some(false), "{u:?}");
    settled(&h.store, "kiosk-01").await;
    let events = h
        .store
        .events(Kind::Endpoint, "default", "kiosk-01")
        .unwrap();
    let alerts: Vec<_> = events
        .iter()
        .filter(|e| e.reason == "UpdateHoldNotEnforced")
        .collect();
    assert_eq!(alerts.len(), 1, "{events:#?}");
    assert!(
        alerts[0].message.contains("EditionID=Core"),
        "{}",
        alerts[0].message
    );
}

/// Two gateway replicas' ledgers on one control namespace of a real apiserver: a token issued
/// through one is seen by the other; when both see the same reports, every sequence is
/// accepted by exactly one of them; enrollment works once across both; a rotation starts a
/// new sequence space; a revocation reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_tokens_and_never_both_accept_a_sequence() {
    use recast_operator::gateway::credentials::{GroupCommit, MarkOutcome, token_hash};
    use recast_operator::gateway::kube_ledger::KubeLedger;
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    let ns = k.fresh_namespace("gwledger");
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let a = Arc::new(CredentialStore::Kube(
        KubeLedger::start(kube_test::client(&k).await, &ns, stop.clone())
            .await
            .unwrap(),
    ));
    let b = Arc::new(CredentialStore::Kube(
        KubeLedger::start(kube_test::client(&k).await, &ns, stop.clone())
            .await
            .unwrap(),
    ));
    let key_of = |i: usize| Key {
        namespace: "site-a".into(),
        name: format!("kiosk-{i:02}"),
    };
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(a.issue(&key_of(i), "now").await.unwrap());
    }
    recast_tests::wait_for(
        Duration::from_secs(30),
        "replica b to see the tokens",
        || {
            tokens
                .iter()
                .enumerate()
                .all(|(i, t)| b.endpoint_for(t).unwrap() == Some(key_of(i)))
        },
    );
    // Both replicas get every report (a retry that reached both, or a replay): 20 endpoints
    // x 10 sequences, each submitted to both group commits at once.
    let (ga, gb) = (GroupCommit::new(a.clone()), GroupCommit::new(b.clone()));
    let mut saves = Vec::new();
    for seq in 1..=10u64 {
        for (i, t) in tokens.iter().enumerate() {
            let mark = (key_of(i), token_hash(t), seq);
            for g in [&ga, &gb] {
                let (g, mark) = (g.clone(), mark.clone());
                saves.push(tokio::spawn(async move {
                    let saved = g.save(mark.clone()).await;
                    (mark, saved)
                }));
            }
        }
    }
    let mut accepted: std::collections::HashMap<(Key, u64), usize> = Default::default();
    for s in saves {
        let ((key, _, seq), result) = s.await.unwrap();
        if result.unwrap() == MarkOutcome::Saved {
            *accepted.entry((key, seq)).or_default() += 1;
        }
    }
    assert!(
        accepted.values().all(|n| *n == 1),
        "a sequence accepted twice: {accepted:?}"
    );
    for i in 0..20 {
        assert_eq!(a.sequence(&key_of(i)).await.unwrap(), 10);
        assert_eq!(b.sequence(&key_of(i)).await.unwrap(), 10);
    }
    assert_eq!(b.sequences().await.unwrap().len(), 20);
    // A rotation through b: the old token is refused by a at once or soon, the new sequence
    // space starts at 0.
    let rotated = b.issue(&key_of(0), "later").await.unwrap();
    assert_eq!(b.sequence(&key_of(0)).await.unwrap(), 0);
    recast_tests::wait_for(
        Duration::from_secs(30),
        "replica a to see the rotation",
        || {
            a.endpoint_for(&tokens[0]).unwrap().is_none()
                && a.endpoint_for(&rotated).unwrap() == Some(key_of(0))
        },
    );
    assert_eq!(
        ga.save((key_of(0), token_hash(&rotated), 1)).await.unwrap(),
        MarkOutcome::Saved,
        "the new token's first report"
    );
    assert_eq!(
        b.sequence(&key_of(0)).await.unwrap(),
        1,
        "saved, in the new space"
    );
    // A report made with the old token that reaches a replica after the rotation: refused for
    // its token (401, not a replay's 409), and the new token's mark is not touched.
    assert_eq!(
        gb.save((key_of(0), token_hash(&tokens[0]), 11))
            .await
            .unwrap(),
        MarkOutcome::TokenGone
    );
    assert_eq!(a.sequence(&key_of(0)).await.unwrap(), 1);
    // Enrollment: once, whichever replica is asked.
    let first = a.enroll_once(&key_of(1), "attempt-7", "now").await.unwrap();
    assert!(first.is_some());
    assert_eq!(
        b.enroll_once(&key_of(1), "attempt-7", "now").await.unwrap(),
        None,
        "the same attempt's credential works once across replicas"
    );
    // Revocation through a reaches b.
    assert!(a.revoke(&key_of(2)).await.unwrap());
    recast_tests::wait_for(
        Duration::from_secs(30),
        "replica b to see the revocation",
        || b.endpoint_for(&tokens[2]).unwrap().is_none(),
    );
    assert!(!a.revoke(&key_of(2)).await.unwrap());
}

/// Two gateway replicas over one ledger (what the kube backend's replicas share through the
/// apiserver), each called directly: a report that changes anything is accepted by one replica
/// only, whichever gets it first; a report at rest (the same facts as the replica last handed
/// on) is answered from the replica's memory before its mark is committed, so a copy reaching
/// the other replica in that moment is answered there too, and hands nothing on at either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_accept_a_changing_report_once_and_answer_an_at_rest_copy_without_effect() {
    let Some(h) = harness("at-rest", GatewayConfig::default()).await else {
        return;
    };
    let token = h.credentials.issue(&key("kiosk-01"), "now").await.unwrap();
    let other = Gateway::new(
        Arc::new(EmbeddedBackend {
            store: h.store.clone(),
        }),
        h.credentials.clone(),
        GatewayConfig::default(),
        Arc::new(SystemClock),
    );
    let (a, b) = (&*h.gateway, &other);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    let inputs = |g: &Gateway<EmbeddedBackend>| g.stats.snapshot().2;
    let at_rest = |g: &Gateway<EmbeddedBackend>| g.stats.answered_at_rest.load(Ordering::Relaxed);
    let healthy = |seq| json(&report_for("kiosk-01", Scenario::Healthy, seq));

    // The first report changes everything: committed before its 200; a copy is a replay at
    // the other replica, which hands nothing on.
    a.handle(&headers, &healthy(1)).await.unwrap();
    assert_eq!(
        (inputs(a), at_rest(a)),
        (1, 0),
        "the first report is handed on"
    );
    let copy = b.handle(&headers, &healthy(1)).await.unwrap_err();
    assert_eq!(copy.status(), 409, "{copy}");
    assert_eq!(inputs(b), 0);
    // The next report reaches b: the same facts, but b has handed on none yet, so for b it
    // changes something (committed first).
    b.handle(&headers, &healthy(2)).await.unwrap();
    assert_eq!(at_rest(b), 0);
    let mut b_inputs = inputs(b);

    // At rest at both: a answers from memory; the copy at b (whose session last saw 2) too.
    a.handle(&headers, &healthy(3)).await.unwrap();
    assert_eq!(
        (inputs(a), at_rest(a)),
        (1, 1),
        "at rest: nothing handed on"
    );
    b.handle(&headers, &healthy(3)).await.unwrap();
    assert_eq!(
        (inputs(b), at_rest(b)),
        (b_inputs, 1),
        "an at-rest copy is answered and hands nothing on"
    );
    // At one replica the same report twice is refused from memory, committed or not.
    let again = a.handle(&headers, &healthy(3)).await.unwrap_err();
    assert_eq!(again.status(), 409, "{again}");
    // The mark reaches the ledger with the flusher's next pass (every flush_interval), once:
    // the second replica's flush finds it saved.
    assert_eq!(h.credentials.sequence(&key("kiosk-01")).await.unwrap(), 2);
    assert_eq!(a.flush_sequences().await.unwrap(), 1);
    assert_eq!(h.credentials.sequence(&key("kiosk-01")).await.unwrap(), 3);
    b.flush_sequences().await.unwrap();
    assert_eq!(h.credentials.sequence(&key("kiosk-01")).await.unwrap(), 3);
    assert_eq!(
        a.flush_sequences().await.unwrap(),
        0,
        "nothing left to save"
    );
    b_inputs = inputs(b); // b's flush wrote (found the mark saved): a store write, no input

    // A report that changes something (the update failed and rolled back) is committed before
    // its 200, so its copy is refused at the other replica, which had judged it a change too.
    let failed = json(&report_for("kiosk-01", Scenario::FailedRollback, 4));
    a.handle(&headers, &failed).await.unwrap();
    assert!(inputs(a) > 1, "the failed rollback is handed on");
    let copy = b.handle(&headers, &failed).await.unwrap_err();
    assert_eq!(copy.status(), 409, "{copy}");
    assert_eq!(inputs(b), b_inputs, "the refused copy hands nothing on");
    settled(&h.store, "kiosk-01").await;
}
