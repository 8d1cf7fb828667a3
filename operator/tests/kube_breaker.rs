//! The circuit breaker on the real kube-apiserver (`make k8s-up`): the storm of
//! embedded_breaker.rs (breaker_sim) through the kube Backend, in one namespace of 1,000
//! endpoints: exactly the limit starts, the rest are held with the message and a Warning event
//! each (as kubectl shows them), nothing more starts when the window has passed, and a reset
//! (the annotation `recastctl breaker reset` writes, here with kubectl) lets the next ones
//! start at the limit. The two-tenant and fleet-wide cases run on the embedded store, where one
//! process sees several namespaces without other tests' objects. Skips without the harness
//! unless RECAST_REQUIRE_K8S=1.

mod breaker_sim;
#[path = "support/kube_test.rs"]
mod kube_test;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use breaker_sim::{ManualClock, Sim, Tenant, controller};
use recast_operator::clock::Clock;
use recast_operator::controller::kube::KubeOptions;
use recast_operator::store::ContextStore;
use recast_operator::store::kube::KubeBackend;
use recast_tests::{K8s, inputs, repo_root};
use serde_json::{Value, json};

const FLOOD: usize = 1_000;

struct Cluster {
    k: K8s,
    ns: String,
}

impl Cluster {
    fn apply(&self, docs: &[Value]) {
        kube_test::apply(&self.k, &self.ns, docs);
    }

    async fn backend(&self) -> KubeBackend {
        let opts = KubeOptions {
            fleet_breaker: None,
            ..kube_test::options(&self.ns)
        };
        let backend = kube_test::backend(&self.k, &opts, Arc::new(AtomicBool::new(true))).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let images = backend.golden_images(&self.ns).await.unwrap();
            let verified = images.iter().any(|gi| {
                gi.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Verified"))
            });
            let policy = backend.policy(&self.ns, "default").await.unwrap();
            if verified && policy.is_some() {
                return backend;
            }
            assert!(Instant::now() < deadline, "caches never filled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the controller's policy cache shows the reset annotation.
    async fn wait_for_reset(&self, backend: &KubeBackend) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = backend.policy(&self.ns, "default").await.unwrap().unwrap();
            if p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(recast_crds::policy::BREAKER_RESET_ANNOTATION))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the reset never reached the cache"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_1000_failed_rollbacks_opens_the_breaker_on_the_apiserver() {
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let ns = k.fresh_namespace("kube-breaker");
    let c = Cluster { k, ns };
    let examples = repo_root().join("examples/golden-image.yaml");
    let (_, doc) = recast_operator::manifests::load(&examples)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let mut docs = vec![doc.value.clone(), breaker_sim::policy(7)];
    docs.extend(breaker_sim::endpoints(FLOOD, 3));
    c.apply(&docs);
    c.k.kubectl_ok(&[
        "patch",
        "-n",
        &c.ns,
        "gi",
        breaker_sim::IMAGE,
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({"status": inputs::verified_image_status()}).to_string(),
    ]);
    let clock = ManualClock::new();
    let backend = c.backend().await;
    let sim = Sim {
        ctrl: controller(backend, &clock, None),
        clock: clock.clone(),
    };
    let flood = Tenant {
        ns: c.ns.clone(),
        size: FLOOD,
    };
    sim.all_ready(std::slice::from_ref(&flood)).await;
    sim.storm(&flood, 0, FLOOD).await;
    let count = sim.count(&flood).await;
    assert_eq!(count.attempted, 7, "the breaker's limit, and not one more");
    assert_eq!(count.held_by_breaker, FLOOD - 7);
    let msg = count.message.unwrap();
    assert!(
        msg.starts_with(&format!(
            "circuit breaker open in namespace {}: 7 automatic reimages started within 1h (limit 7)",
            c.ns
        )),
        "{msg}"
    );
    // The Warning events, as kubectl shows them.
    let events = c.k.kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        &c.ns,
        "--field-selector",
        "reason=BreakerOpen",
        "-o",
        "jsonpath={range .items[*]}{.type}{\"\\n\"}{end}",
    ]);
    let warnings = events.lines().filter(|l| *l == "Warning").count();
    assert_eq!(warnings, FLOOD - 7, "{}", &events[..events.len().min(500)]);

    // The policy's status says so, through the status subresource, as kubectl shows it.
    assert_eq!(sim.write_policy_statuses().await, 1);
    let breaker = c.k.kubectl_ok(&[
        "get",
        "rpol",
        "default",
        "-n",
        &c.ns,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"BreakerOpen\")].status} {.status.conditions[?(@.type==\"BreakerOpen\")].message}",
    ]);
    assert!(
        breaker.starts_with(&format!(
            "True circuit breaker open in namespace {}: 7 automatic reimages",
            c.ns
        )),
        "{breaker}"
    );
    let table = c.k.kubectl_ok(&["get", "rpol", "-n", &c.ns]);
    assert!(
        table.contains("0/10000 failures in 1h"),
        "the Budget column: {table}"
    );

    // The window passes: still open, nothing new starts.
    clock.advance(2 * 3600);
    sim.pass(&flood).await;
    assert_eq!(sim.count(&flood).await.attempted, 7);

    // The reset `recastctl breaker reset` writes, with kubectl.
    c.k.kubectl_ok(&[
        "annotate",
        "-n",
        &c.ns,
        "rpol",
        "default",
        &format!(
            "{}={}",
            recast_crds::policy::BREAKER_RESET_ANNOTATION,
            recast_core::time::format(clock.now())
        ),
    ]);
    c.wait_for_reset(&sim.ctrl.backend).await;
    clock.advance(60);
    sim.pass(&flood).await;
    let count = sim.count(&flood).await;
    assert_eq!(count.attempted, 14, "seven more after the reset");
    assert_eq!(count.held_by_breaker, FLOOD - 14);
    let _ = c.k.kubectl(&["delete", "namespace", &c.ns, "--wait=false"]);
}
