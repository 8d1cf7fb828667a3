//! recast-operator's library: the lifecycle core, stores, controllers and the services the
//! operator runs. Modules arrive with the issues that build them (see shared/DESIGN.md).

pub mod bmc;
pub mod boot;
pub mod clock;
pub mod controller;
pub mod encoding;
pub mod failpoint;
pub mod gateway;
pub mod golden;
pub mod http;
pub mod manifests;
pub mod metrics;
pub mod notify;
pub mod store;
pub mod token;

/// Every CRD as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in recast_crds::all_crds() {
        out.push_str("---\n");
        out.push_str(&recast_crds::crd_yaml(&crd)?);
    }
    Ok(out)
}
