//! recast-operator's library: the stores, controllers and services the operator runs around
//! the pure core (recast-core). See docs/architecture.md for what each module may import.
//!
//! Without the `services` feature (on by default) the library is only what `recastctl` needs
//! on a site: the embedded store, manifest loading and the Redfish glue; the controller, the
//! boot service (DHCP, TFTP, HTTP), the gateway, the image controller and the Kubernetes store
//! are not compiled.

pub mod bmc;
#[cfg(feature = "services")]
pub mod boot;
pub mod clock;
#[cfg(feature = "services")]
pub mod controller;
#[cfg(feature = "tokens")]
pub mod credentials;
pub mod encoding;
pub mod failpoint;
#[cfg(feature = "services")]
pub mod gateway;
#[cfg(feature = "services")]
pub mod golden;
#[cfg(feature = "services")]
pub mod http;
pub mod manifests;
#[cfg(feature = "services")]
pub mod metrics;
#[cfg(feature = "services")]
pub mod notify;
pub mod store;
#[cfg(feature = "services")]
pub mod token;
#[cfg(feature = "services")]
pub mod wake;

/// Every CRD as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in recast_crds::all_crds() {
        out.push_str("---\n");
        out.push_str(&recast_crds::crd_yaml(&crd)?);
    }
    Ok(out)
}
