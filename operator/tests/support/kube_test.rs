//! What the suites that drive the kube Backend in-process share: a client for the test
//! harness's apiserver, the options of a controller scoped to one namespace, the backend
//! connected with them, and `kubectl apply` of a list of objects.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use recast_operator::controller::kube::KubeOptions;
use recast_operator::store::kube::KubeBackend;
use recast_tests::K8s;
use serde_json::{Value, json};

/// A client for the harness's apiserver.
pub async fn client(k: &K8s) -> kube::Client {
    kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&k.kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap()
}

/// A controller that watches `ns` only and keeps its lease and control state there, with the
/// operator's defaults (the fleet breaker and ceiling on, no image store).
pub fn options(ns: &str) -> KubeOptions {
    KubeOptions {
        sessions: None,
        image_store: None,
        bmc_watch_interval: recast_operator::controller::bmc_watch::DEFAULT_INTERVAL,
        wake: Default::default(),
        fleet_breaker: Some(Default::default()),
        fleet_ceiling: Some(recast_operator::controller::DEFAULT_FLEET_CEILING),
        deep_check_limits: Default::default(),
        lease_namespace: ns.to_string(),
        identity: "test".into(),
        lease_duration: Duration::from_secs(4),
        lease_grace: Duration::from_secs(1),
        watch_namespace: Some(ns.to_string()),
        control_namespace: ns.to_string(),
    }
}

/// The backend with `opts`, as the lease holder (`leader`) or not.
pub async fn backend(k: &K8s, opts: &KubeOptions, leader: Arc<AtomicBool>) -> KubeBackend {
    let (backend, _) = KubeBackend::connect(client(k).await, &opts.scope(), leader)
        .await
        .unwrap();
    backend
}

/// `kubectl apply --server-side` of `docs` into `ns`, as one List.
pub fn apply(k: &K8s, ns: &str, docs: &[Value]) {
    let file = std::env::temp_dir().join(format!("{ns}-{}.json", std::process::id()));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    std::fs::write(&file, list.to_string()).unwrap();
    k.kubectl_ok(&[
        "apply",
        "--server-side",
        "-n",
        ns,
        "-f",
        &file.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&file);
}
