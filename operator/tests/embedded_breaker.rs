//! The circuit breaker on the embedded store (SQLite), with 1,000 endpoints that all report a
//! failed rollback within a minute (breaker_sim): a namespace's breaker lets its limit start
//! and holds the rest until a person resets it, while another tenant keeps its own; the
//! fleet-wide breaker (the operator's) holds every namespace. kube_breaker.rs runs the same on
//! the real kube-apiserver.

mod breaker_sim;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use breaker_sim::{ManualClock, Sim, Tenant, controller};
use recast_crds::common::{Condition, ConditionStatus};
use recast_crds::manifest::Kind;
use recast_crds::policy::RemediationPolicyStatus;
use recast_operator::clock::Clock;
use recast_operator::controller::FleetBreaker;
use recast_operator::store::embedded::{EmbeddedBackend, EmbeddedStore};
use serde_json::{Value, json};

const FLOOD: usize = 1_000;
const QUIET: usize = 20;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-breaker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Two tenants, "flood" (1,000 endpoints) and "quiet" (20), each with its policy.
fn fleet_with(name: &str, flood_policy: Value, quiet_policy: Value) -> Arc<EmbeddedStore> {
    let store = Arc::new(EmbeddedStore::open(&temp_dir(name)).unwrap());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for ns in ["flood", "quiet"] {
        for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
            if doc.value["kind"] == "GoldenImage"
                && doc.value["metadata"]["name"] == breaker_sim::IMAGE
            {
                let (_, name, _) = store.apply(&doc.value, ns).unwrap();
                store
                    .write_status(
                        Kind::GoldenImage,
                        ns,
                        &name,
                        None,
                        &recast_tests::inputs::verified_image_status(),
                    )
                    .unwrap();
            }
        }
    }
    store.apply(&flood_policy, "flood").unwrap();
    store.apply(&quiet_policy, "quiet").unwrap();
    for ep in breaker_sim::endpoints(FLOOD, 1) {
        store.apply(&ep, "flood").unwrap();
    }
    for ep in breaker_sim::endpoints(QUIET, 2) {
        store.apply(&ep, "quiet").unwrap();
    }
    store
}

/// The two tenants with their breakers at 7 ("flood") and 3 ("quiet") starts an hour.
fn fleet(name: &str) -> Arc<EmbeddedStore> {
    fleet_with(name, breaker_sim::policy(7), breaker_sim::policy(3))
}

fn tenants() -> [Tenant; 2] {
    [
        Tenant {
            ns: "flood".into(),
            size: FLOOD,
        },
        Tenant {
            ns: "quiet".into(),
            size: QUIET,
        },
    ]
}

/// What `recastctl breaker reset` writes: the reset time on the namespace's policy.
fn reset(store: &EmbeddedStore, ns: &str, at: jiff::Timestamp) {
    store
        .update(Kind::RemediationPolicy, ns, "default", |obj| {
            obj["metadata"]["annotations"] = json!({
                recast_crds::policy::BREAKER_RESET_ANNOTATION: recast_core::time::format(at),
            });
            Ok(())
        })
        .unwrap();
}

/// A namespace's policy status as stored (what `recastctl get rpol -o yaml` shows).
fn policy_status(store: &EmbeddedStore, ns: &str) -> RemediationPolicyStatus {
    let p = store
        .get(Kind::RemediationPolicy, ns, "default")
        .unwrap()
        .unwrap();
    serde_json::from_value(p["status"].clone()).expect("the policy has a status")
}

fn condition<'a>(s: &'a RemediationPolicyStatus, type_: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"))
}

fn breaker_warnings(store: &EmbeddedStore, ns: &str, size: usize) -> usize {
    (0..size)
        .map(|i| {
            store
                .events(Kind::Endpoint, ns, &breaker_sim::ep_name(i))
                .unwrap()
                .iter()
                .filter(|e| e.reason == "BreakerOpen" && e.type_ == "Warning")
                .count()
        })
        .sum()
}

#[tokio::test]
async fn a_namespace_storm_opens_its_breaker_and_the_other_tenant_keeps_its_own() {
    let store = fleet("ns");
    let clock = ManualClock::new();
    // The fleet-wide breaker far above the namespaces' (its own test is below).
    let fleet_breaker = FleetBreaker {
        max_starts: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(500)),
        ..Default::default()
    };
    let sim = Sim {
        ctrl: controller(
            EmbeddedBackend {
                store: store.clone(),
            },
            &clock,
            Some(fleet_breaker),
        ),
        clock: clock.clone(),
    };
    let [flood, quiet] = tenants();
    sim.all_ready(&[flood, quiet]).await;
    let [flood, quiet] = tenants();

    // Every flood endpoint reports a failed rollback within a minute.
    sim.storm(&flood, 0, FLOOD).await;
    let c = sim.count(&flood).await;
    assert_eq!(c.attempted, 7, "the breaker's limit, and not one more");
    assert_eq!(c.held_by_breaker, FLOOD - 7);
    let msg = c.message.unwrap();
    assert!(
        msg.starts_with("circuit breaker open in namespace flood: 7 automatic reimages started within 1h (limit 7)")
            && msg.contains("recastctl breaker reset -n flood"),
        "{msg}"
    );
    // Its Reimaging condition says why (as `kubectl get rep -o yaml` would show it).
    let held = sim.status("flood", &breaker_sim::ep_name(FLOOD - 1)).await;
    let c = held
        .conditions
        .iter()
        .find(|c| c.type_ == "Reimaging")
        .unwrap();
    assert_eq!(c.reason, "BreakerOpen");
    assert!(
        c.message
            .starts_with("circuit breaker open in namespace flood")
    );
    // Each held endpoint said so once, as a Warning.
    assert_eq!(breaker_warnings(&store, "flood", FLOOD), FLOOD - 7);
    // The policy says it too, and the other tenant's does not.
    assert_eq!(sim.write_policy_statuses().await, 2);
    let open = condition(&policy_status(&store, "flood"), "BreakerOpen").clone();
    assert_eq!(open.status, ConditionStatus::True);
    assert!(
        open.message
            .starts_with("circuit breaker open in namespace flood: 7 automatic reimages"),
        "{}",
        open.message
    );
    let quiet_status = policy_status(&store, "quiet");
    assert_eq!(
        condition(&quiet_status, "BreakerOpen").status,
        ConditionStatus::False
    );
    assert_eq!(
        quiet_status.budget.as_deref(),
        Some("0/10000 failures in 1h")
    );
    // Nothing changed: nothing is written again.
    assert_eq!(sim.write_policy_statuses().await, 0);

    // The other tenant keeps its own budget: its failed rollbacks are reimaged.
    sim.storm(&quiet, 0, 2).await;
    assert_eq!(sim.count(&quiet).await.attempted, 2);

    // The window passes: the breaker stays open (it waits for a person), nothing new starts,
    // and no second Warning is raised.
    clock.advance(2 * 3600);
    sim.pass(&flood).await;
    assert_eq!(sim.count(&flood).await.attempted, 7);
    assert_eq!(breaker_warnings(&store, "flood", FLOOD), FLOOD - 7);

    // A person resets it: the next ones start, up to the limit again (the paced rate), and
    // the breaker opens again.
    reset(&store, "flood", clock.now());
    clock.advance(60);
    sim.pass(&flood).await;
    let c = sim.count(&flood).await;
    assert_eq!(c.attempted, 14, "seven more after the reset");
    assert_eq!(c.held_by_breaker, FLOOD - 14);

    // A reset annotation that is not a time: the policy says it cannot be used, and that
    // automatic remediation of its endpoints is off (what the lifecycle does).
    store
        .update(Kind::RemediationPolicy, "quiet", "default", |obj| {
            obj["metadata"]["annotations"] =
                json!({recast_crds::policy::BREAKER_RESET_ANNOTATION: "yesterday"});
            Ok(())
        })
        .unwrap();
    sim.write_policy_statuses().await;
    let quiet_status = policy_status(&store, "quiet");
    let valid = condition(&quiet_status, "Valid");
    assert_eq!(valid.status, ConditionStatus::False);
    assert!(
        valid
            .message
            .contains("\"yesterday\", not an RFC 3339 time")
            && valid
                .message
                .contains("automatic remediation of the endpoints that name this policy is off"),
        "{}",
        valid.message
    );
    assert!(quiet_status.remediation_halted);
    // And it is so: the quiet tenant's next failed rollback does not start.
    let before = sim.count(&quiet).await.attempted;
    sim.storm(&quiet, 2, 3).await;
    assert_eq!(sim.count(&quiet).await.attempted, before);
    let held = sim.status("quiet", &breaker_sim::ep_name(2)).await;
    assert!(
        held.message
            .as_deref()
            .is_some_and(|m| m.ends_with("automatic remediation is off for this endpoint")),
        "{held:?}"
    );
}

#[tokio::test]
async fn the_fleet_breaker_holds_every_namespace_until_the_operator_resets_it() {
    let store = fleet("fleet");
    let clock = ManualClock::new();
    let fleet_breaker = FleetBreaker {
        max_starts: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5)),
        reset_namespace: "ops".into(),
        ..Default::default()
    };
    let sim = Sim {
        ctrl: controller(
            EmbeddedBackend {
                store: store.clone(),
            },
            &clock,
            Some(fleet_breaker),
        ),
        clock: clock.clone(),
    };
    let [flood, quiet] = tenants();
    sim.all_ready(&[flood, quiet]).await;
    let [flood, quiet] = tenants();
    sim.storm(&flood, 0, FLOOD).await;
    assert_eq!(sim.count(&flood).await.attempted, 5);
    // The quiet tenant's own breaker is closed, but the fleet's is open: held too.
    sim.storm(&quiet, 0, 2).await;
    let c = sim.count(&quiet).await;
    assert_eq!(c.attempted, 0);
    assert_eq!(c.held_by_breaker, 2);
    assert!(
        c.message
            .unwrap()
            .starts_with("circuit breaker open in the whole fleet: 5 automatic reimages"),
    );
    // A tenant resetting its own namespace does not reset the fleet's.
    reset(&store, "flood", clock.now());
    clock.advance(60);
    sim.pass(&quiet).await;
    assert_eq!(sim.count(&quiet).await.attempted, 0);
    // Nor does a reset of the operator's namespace's own breaker (same policy, its own
    // annotation).
    let operator_policy = |annotation: &str| {
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
               "metadata": {"name": "default", "annotations": {
                   annotation: recast_core::time::format(clock.now())}},
               "spec": {}})
    };
    store
        .apply(
            &operator_policy(recast_crds::policy::BREAKER_RESET_ANNOTATION),
            "ops",
        )
        .unwrap();
    clock.advance(60);
    sim.pass(&quiet).await;
    assert_eq!(sim.count(&quiet).await.attempted, 0);
    // The operator's reset (the fleet annotation on the policy "default" of its namespace,
    // what `recastctl breaker reset --fleet` writes) does.
    store
        .apply(
            &operator_policy(recast_crds::policy::FLEET_BREAKER_RESET_ANNOTATION),
            "ops",
        )
        .unwrap();
    clock.advance(60);
    sim.pass(&quiet).await;
    assert_eq!(sim.count(&quiet).await.attempted, 2);
}

/// Per-namespace accounting: a tenant whose storm fills its own slots and spends its own
/// failure budget neither takes the other tenant's slots nor halts it.
#[tokio::test]
async fn one_tenants_storm_uses_its_own_slots_and_budget() {
    let store = fleet_with(
        "accounting",
        breaker_sim::policy_with(5, 2),
        breaker_sim::policy_with(3, 2),
    );
    let clock = ManualClock::new();
    let sim = Sim {
        ctrl: controller(
            EmbeddedBackend {
                store: store.clone(),
            },
            &clock,
            None,
        ),
        clock: clock.clone(),
    };
    let [flood, quiet] = tenants();
    sim.all_ready(&[flood, quiet]).await;
    let [flood, quiet] = tenants();

    // The flood fills its own five slots and waits for them.
    sim.storm(&flood, 0, FLOOD).await;
    assert_eq!(sim.running(&flood).await, 5);
    assert_eq!(
        sim.held_with(
            &flood,
            "waiting for a slot: 5/5 reimages running in namespace flood"
        )
        .await,
        FLOOD - 5
    );
    // The quiet tenant's slots are its own.
    sim.storm(&quiet, 0, 2).await;
    assert_eq!(sim.running(&quiet).await, 2);

    // The flood's attempts fail: its failure budget (2) is spent and it halts...
    assert_eq!(sim.fail_running(&flood).await, 5);
    clock.advance(60);
    sim.pass(&flood).await;
    assert_eq!(sim.running(&flood).await, 0);
    assert!(
        sim.held_with(&flood, "remediation halted in namespace flood")
            .await
            > 0,
        "the flood halts on its own budget"
    );
    // The flood's policy says it is halted, the quiet one's that it is not.
    sim.write_policy_statuses().await;
    let halted = policy_status(&store, "flood");
    assert!(halted.remediation_halted);
    assert_eq!(
        halted.budget.as_deref(),
        Some("exhausted: 5/2 failures in 1h")
    );
    let c = condition(&halted, "RemediationHalted");
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::True, "BudgetExhausted")
    );
    assert!(
        c.message
            .contains("5 attempts in namespace flood failed within 1h (budget 2)")
    );
    let halted_at = c.last_transition_time.clone();
    let quiet_status = policy_status(&store, "quiet");
    assert!(!quiet_status.remediation_halted);
    assert_eq!(quiet_status.budget.as_deref(), Some("0/2 failures in 1h"));
    // ...while the quiet tenant goes on: a third failed rollback there starts at once.
    sim.storm(&quiet, 2, 3).await;
    assert_eq!(sim.running(&quiet).await, 3);
    // And the flood's halt says it is the flood's own.
    assert_eq!(
        sim.held_with(&quiet, "remediation halted").await,
        0,
        "another tenant's failures never halt this one"
    );

    // The failures leave the window with time alone: the status follows without any object
    // changing.
    clock.advance(2 * 3600);
    assert_eq!(sim.write_policy_statuses().await, 1);
    let recovered = policy_status(&store, "flood");
    assert!(!recovered.remediation_halted);
    assert_eq!(recovered.budget.as_deref(), Some("0/2 failures in 1h"));
    let c = condition(&recovered, "RemediationHalted");
    assert_eq!(c.status, ConditionStatus::False);
    assert_ne!(c.last_transition_time, halted_at);
}
