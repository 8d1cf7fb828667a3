//! Reimage waves on the real kube-apiserver (`make k8s-up`): the same simulated fleet and
//! scenarios as embedded_waves.rs (wave_sim), through the kube Backend: 50 endpoints, a
//! controller restart mid-wave, the global limit shared with the lifecycle, and a failure storm
//! that trips the budget. Skips without the harness unless RECAST_REQUIRE_K8S=1.

#[path = "support/kube_test.rs"]
mod kube_test;
mod wave_sim;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use recast_operator::store::ContextStore;
use recast_operator::store::kube::KubeBackend;
use recast_tests::{K8s, inputs, repo_root};
use serde_json::{Value, json};
use wave_sim::{ManualClock, NEW_IMAGE, OLD_IMAGE, Sim, WAVE, controller};

struct Cluster {
    k: K8s,
    ns: String,
}

impl Cluster {
    fn apply(&self, docs: &[Value]) {
        kube_test::apply(&self.k, &self.ns, docs);
    }

    async fn backend(&self) -> KubeBackend {
        let backend = kube_test::backend(
            &self.k,
            &kube_test::options(&self.ns),
            Arc::new(AtomicBool::new(true)),
        )
        .await;
        // The policy and images come from watch caches: wait until both images are Verified
        // and the policy is there, as the operator would after its caches fill.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let images = backend.golden_images(&self.ns).await.unwrap();
            let verified = images
                .iter()
                .filter(|gi| {
                    gi.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Verified"))
                })
                .count();
            let policy = backend.policy(&self.ns, "default").await.unwrap();
            if verified == 2 && policy.is_some() {
                return backend;
            }
            assert!(Instant::now() < deadline, "caches never filled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A fresh namespace with the simulated fleet, both images Verified, and the wave.
fn cluster(prefix: &str, strategy: Value) -> Option<Cluster> {
    let k = K8s::get()?;
    k.install_crds();
    let ns = k.fresh_namespace(prefix);
    let c = Cluster { k, ns };
    let examples = repo_root().join("examples/golden-image.yaml");
    let (_, doc) = recast_operator::manifests::load(&examples)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let mut docs: Vec<Value> = wave_sim::images(&doc.value).into();
    docs.push(wave_sim::policy());
    docs.extend(wave_sim::endpoints());
    c.apply(&docs);
    let verified = json!({"status": inputs::verified_image_status()});
    for image in [OLD_IMAGE, NEW_IMAGE] {
        c.k.kubectl_ok(&[
            "patch",
            "-n",
            &c.ns,
            "gi",
            image,
            "--subresource=status",
            "--type=merge",
            "-p",
            &verified.to_string(),
        ]);
    }
    c.apply(&[wave_sim::wave(strategy)]);
    Some(c)
}

async fn sim(c: &Cluster) -> Sim<KubeBackend> {
    let clock = ManualClock::new();
    Sim {
        ctrl: controller(c.backend().await, &clock),
        clock,
        ns: c.ns.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_over_50_endpoints_survives_a_restart_on_the_apiserver() {
    let Some(c) = cluster(
        "kube-wave",
        json!({"canary": 2, "batchSize": 8, "maxFailures": 3}),
    ) else {
        return;
    };
    let fresh = async || c.backend().await;
    wave_sim::wave_through_a_restart(sim(&c).await, fresh).await;
    // Events on the wave, as kubectl shows them.
    let events = c.k.kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        &c.ns,
        "--field-selector",
        &format!("regarding.kind=ReimageWave,regarding.name={WAVE}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    for reason in ["WavePlanned", "BatchStarted", "WaveSucceeded"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }
    let _ = c.k.kubectl(&["delete", "namespace", &c.ns, "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_storm_trips_the_budget_on_the_apiserver() {
    let Some(c) = cluster("kube-storm", json!({"batchSize": 10, "maxFailures": 3})) else {
        return;
    };
    wave_sim::a_failure_storm_trips_the_budget(&sim(&c).await).await;
    let _ = c.k.kubectl(&["delete", "namespace", &c.ns, "--wait=false"]);
}

/// The real `recast-operator --backend kube` process: its wave controller plans the wave,
/// starts the canary attempt under the lease, and stops on an abort patched with kubectl.
#[test]
fn the_operator_process_runs_and_aborts_a_wave_on_the_apiserver() {
    let Some(c) = cluster(
        "kube-wave-op",
        json!({"canary": 1, "batchSize": 10, "maxFailures": 0}),
    ) else {
        return;
    };
    /// SIGKILL on drop, so a failed assertion leaves no operator behind.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _op = Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_recast-operator"))
            .args(["run", "--backend", "kube", "--listen", "127.0.0.1:0"])
            .args(["--watch-namespace", &c.ns, "--lease-namespace", &c.ns])
            .args(["--identity", "wave-test", "--lease-duration-seconds", "6"])
            .args(["--lease-grace-seconds", "2"])
            .env("KUBECONFIG", &c.k.kubeconfig)
            .env("RECAST_LOG", "warn")
            .env("RECAST_POWER_DRIVER", "record")
            .env_remove("RECAST_FAILPOINT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start recast-operator"),
    );
    let wave = || -> Value {
        serde_json::from_str(&c.k.kubectl_ok(&["get", "wave", WAVE, "-n", &c.ns, "-o", "json"]))
            .unwrap()
    };
    let until = |what: &str, ok: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let w = wave();
            if ok(&w) {
                return w;
            }
            assert!(
                Instant::now() < deadline,
                "the wave never {what}: {:#}",
                w["status"]
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let w = until("started its canary", &|w| {
        w["status"]["batches"][0]["startedAt"].is_string()
    });
    assert_eq!(w["status"]["phase"], json!("Running"));
    assert_eq!(w["status"]["batches"][0]["canary"], json!(true));
    let canary = w["status"]["batches"][0]["endpoints"][0]
        .as_str()
        .unwrap()
        .to_string();
    // The canary's attempt starts, serving the wave's image.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ep: Value = serde_json::from_str(
            &c.k.kubectl_ok(&["get", "rep", &canary, "-n", &c.ns, "-o", "json"]),
        )
        .unwrap();
        let attempt = &ep["status"]["activeAttempt"];
        if attempt.is_object() {
            assert_eq!(attempt["wave"], json!(WAVE));
            assert_eq!(attempt["image"], json!(NEW_IMAGE));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{canary} never started its wave attempt: {:#}",
            ep["status"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    c.k.kubectl_ok(&[
        "patch",
        "wave",
        WAVE,
        "-n",
        &c.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"aborted":true}}"#,
    ]);
    let w = until("ended Aborted", &|w| {
        w["status"]["phase"] == json!("Aborted")
    });
    assert!(w["status"]["batches"][1]["startedAt"].is_null());
    let _ = c.k.kubectl(&["delete", "namespace", &c.ns, "--wait=false"]);
}
