//! The Redfish power driver against sushy-tools' emulator (the real peer), with credentials
//! from the embedded store's Secrets. Mandatory in CI (RECAST_REQUIRE_REDFISH).

use std::sync::Arc;
use std::time::Duration;

use recast_crds::Endpoint;
use recast_operator::bmc::PowerControl;
use recast_operator::bmc::redfish::{EmbeddedSecrets, RedfishPower, RedfishTuning};
use recast_operator::store::embedded::{ApplyOutcome, EmbeddedStore};
use recast_tests::redfish::{self, Sushy, SushyOptions, TempDir};
use serde_json::json;

#[path = "support/kube_test.rs"]
mod kube_test;

const PASSWORD: &str = "kiosk-bmc-pw-0193";

fn endpoint(name: &str, bmc: Option<serde_json::Value>) -> Endpoint {
    let mut spec = json!({
        "identity": {"macAddresses": ["52:54:00:a1:00:01"]},
        "bootMode": "uefi",
        "image": {"channel": "stable"},
        "site": "store-042"
    });
    if let Some(b) = bmc {
        spec["bmc"] = b;
    }
    serde_json::from_value(json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    }))
    .unwrap()
}

fn tuning() -> RedfishTuning {
    RedfishTuning {
        request_timeout: Duration::from_secs(10),
        power_settle: Duration::from_secs(30),
        poll_interval: Duration::from_millis(250),
        retries: 1,
        ..Default::default()
    }
}

fn resets(sushy: &Sushy) -> usize {
    sushy.log().matches("Actions/ComputerSystem.Reset").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cycle_through_sushy_with_embedded_secrets() {
    let Some(bin) = redfish::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            user: Some(("recast", PASSWORD)),
            ..Default::default()
        },
    );
    let dir = TempDir::new("op-bmc");
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc-creds"},
                        "stringData": {"username": "recast", "password": PASSWORD}});
    assert_eq!(
        store.apply_secret(&secret, "default").unwrap(),
        ("bmc-creds".into(), ApplyOutcome::Created)
    );
    assert_eq!(
        store.apply_secret(&secret, "default").unwrap().1,
        ApplyOutcome::Unchanged
    );
    let power = RedfishPower::new(EmbeddedSecrets(store.clone()), tuning());
    let ep = endpoint(
        "kiosk-01",
        Some(json!({"address": sushy.url, "credentialsSecretRef": {"name": "bmc-creds"}})),
    );

    // The machine is off: the cycle arms the one-time PXE boot and switches it on.
    let done = power.power_cycle(&ep, "a-1", 1, false).await.unwrap();
    assert!(
        done.contains("one-time Pxe boot (UEFI)") && done.contains("via On → On"),
        "{done}"
    );
    assert!(
        done.contains("Continuous"),
        "the emulator's Continuous override is reported: {done}"
    );
    assert_eq!(resets(&sushy), 1);

    // An interrupted run of the same try: the machine is on and the override is Continuous,
    // so whether it booted cannot be told: it is not cycled blind.
    let resumed = power.power_cycle(&ep, "a-1", 1, true).await.unwrap();
    assert!(resumed.starts_with("not cycled again"), "{resumed}");
    assert_eq!(resets(&sushy), 1, "no reset was sent");

    // A new try cycles a running machine with a hard restart.
    let again = power.power_cycle(&ep, "a-1", 2, false).await.unwrap();
    assert!(again.contains("via ForceRestart → On"), "{again}");
    assert_eq!(resets(&sushy), 2);
    assert!(!again.contains(PASSWORD) && !done.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_errors_are_typed_and_never_show_the_password() {
    let Some(bin) = redfish::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            user: Some(("recast", PASSWORD)),
            ..Default::default()
        },
    );
    let dir = TempDir::new("op-bmc-err");
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let power = RedfishPower::new(EmbeddedSecrets(store.clone()), tuning());
    let bmc = json!({"address": sushy.url, "credentialsSecretRef": {"name": "bmc-creds"}});

    // No BMC: today's behaviour, an event asking for a restart by hand.
    let manual = power
        .power_cycle(&endpoint("pc-01", None), "a-2", 1, false)
        .await
        .unwrap();
    assert!(manual.contains("restart pc-01 by hand"), "{manual}");

    let err = power
        .power_cycle(&endpoint("kiosk-02", Some(bmc.clone())), "a-3", 1, false)
        .await
        .unwrap_err();
    assert!(
        err.permanent && err.message.contains("Secret default/bmc-creds"),
        "{err:?}"
    );

    let wrong = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc-creds"},
                       "data": {"username": "cmVjYXN0", "password": "d3Jvbmctc2VjcmV0"}});
    store.apply_secret(&wrong, "default").unwrap();
    let err = power
        .power_cycle(&endpoint("kiosk-02", Some(bmc.clone())), "a-3", 1, false)
        .await
        .unwrap_err();
    assert!(err.permanent && err.message.contains("HTTP 401"), "{err:?}");
    assert!(!err.message.contains("wrong-secret"), "{err:?}");
    assert_eq!(resets(&sushy), 0);

    // An unreachable BMC is transient: the core retries.
    let port = recast_tests::free_port();
    let gone = json!({"address": format!("http://127.0.0.1:{port}"), "credentialsSecretRef": {"name": "bmc-creds"}});
    let err = power
        .power_cycle(&endpoint("kiosk-03", Some(gone)), "a-4", 1, false)
        .await
        .unwrap_err();
    assert!(!err.permanent, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cycle_with_credentials_from_a_kubernetes_secret() {
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    let Some(bin) = redfish::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            user: Some(("recast", PASSWORD)),
            ..Default::default()
        },
    );
    let ns = k.fresh_namespace("bmc");
    k.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "bmc-creds",
        "-n",
        &ns,
        "--from-literal=username=recast",
        &format!("--from-literal=password={PASSWORD}"),
    ]);
    let client = kube_test::client(&k).await;
    let power = RedfishPower::new(recast_operator::bmc::redfish::KubeSecrets(client), tuning());
    let mut ep = endpoint(
        "kiosk-01",
        Some(json!({"address": sushy.url, "credentialsSecretRef": {"name": "bmc-creds"}})),
    );
    ep.metadata.namespace = Some(ns.clone());
    let done = power.power_cycle(&ep, "a-k", 1, false).await.unwrap();
    assert!(done.contains("via On → On"), "{done}");
    assert_eq!(resets(&sushy), 1);

    ep.spec.bmc.as_mut().unwrap().credentials_secret_ref.name = "absent".into();
    let err = power.power_cycle(&ep, "a-k", 2, false).await.unwrap_err();
    assert!(
        err.permanent && err.message.contains(&format!("Secret {ns}/absent")),
        "{err:?}"
    );
}

/// The real operator binary (embedded backend, the default Redfish driver) reimages an endpoint
/// whose BMC is sushy-tools: the power cycle of the attempt goes to the emulator.
#[test]
fn the_operator_power_cycles_through_the_bmc_during_a_reimage() {
    use recast_crds::endpoint::{EndpointPhase, EndpointStatus};
    use recast_crds::manifest::Kind;
    use recast_tests::inputs;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let Some(bin) = redfish::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            user: Some(("recast", PASSWORD)),
            ..Default::default()
        },
    );
    let dir = TempDir::new("op-bmc-e2e");
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let examples = recast_tests::repo_root().join("examples");
    for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
        if recast_operator::manifests::is_recast(&doc) {
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
    store
        .apply_secret(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc-credentials"},
                    "stringData": {"username": "recast", "password": PASSWORD}}),
            "default",
        )
        .unwrap();
    store
        .update(Kind::Endpoint, "default", "kiosk-01", |obj| {
            obj["spec"]["bmc"]["address"] = json!(sushy.url);
            Ok(())
        })
        .unwrap();
    for input in inputs::failed_rollback() {
        store.post_input("default", "kiosk-01", &input).unwrap();
    }

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _op = Kill(
        Command::new(env!("CARGO_BIN_EXE_recast-operator"))
            .args([
                "run",
                "--backend",
                "embedded",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .env("RECAST_LOG", "warn")
            .env_remove("RECAST_POWER_DRIVER")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = || -> EndpointStatus {
        let obj = store
            .get(Kind::Endpoint, "default", "kiosk-01")
            .unwrap()
            .unwrap();
        serde_json::from_value(obj.get("status").cloned().unwrap_or_default()).unwrap_or_default()
    };
    let mut posted: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = status();
        if st.phase == Some(EndpointPhase::Ready)
            && st.active_attempt.is_none()
            && !st.history.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reimage did not finish: {st:?}"
        );
        if let Some(a) = &st.active_attempt
            && let Some((key, input)) = inputs::next_for(a)
            && !posted.contains(&key)
        {
            store.post_input("default", "kiosk-01", &input).unwrap();
            posted.push(key);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = store.events(Kind::Endpoint, "default", "kiosk-01").unwrap();
    let cycles: Vec<&str> = events
        .iter()
        .filter(|e| e.reason == "PowerCycle")
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(cycles.len(), 1, "{events:?}");
    assert!(
        cycles[0].contains("one-time Pxe boot (UEFI)") && cycles[0].contains("via On"),
        "{}",
        cycles[0]
    );
    assert_eq!(resets(&sushy), 1);
}
