//! The `recast.dev/v1alpha1` API.
//!
//! Every kind is a plain serde type with a kube `CustomResource` derive; the CRD YAML under
//! `crds/yaml/` is generated from these types (`make crds`) and a test fails when it is stale.
//! Validation a user can trip lives on the types as CEL rules, so the apiserver and the embedded
//! store ([`validate`]) enforce the same rules with the same messages.

// kube's `printcolumn(...)` repeats `type_ = ...` per column, which this lint misreads as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod duration;
pub mod endpoint;
pub mod golden_image;
pub mod manifest;
pub mod policy;
pub mod report;
pub mod signal;
pub mod validate;
pub mod wave;

pub use common::{API_VERSION, Condition, ConditionStatus, GROUP, MaintenanceWindow, VERSION};
pub use endpoint::{Endpoint, EndpointSpec, EndpointStatus};
pub use golden_image::{GoldenImage, GoldenImageSpec, GoldenImageStatus};
pub use manifest::{Kind, Object};
pub use policy::{RemediationPolicy, RemediationPolicySpec, RemediationPolicyStatus};
pub use wave::{ReimageWave, ReimageWaveSpec, ReimageWaveStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD recast defines, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Endpoint::crd(),
        GoldenImage::crd(),
        ReimageWave::crd(),
        RemediationPolicy::crd(),
    ]
}

/// The file name `make crds` writes a CRD to, such as `endpoints.recast.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML `make crds` writes for a CRD, with a header saying where it comes from.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(crd)?;
    Ok(format!(
        "# Generated from crds/src by `make crds`; do not edit by hand.\n{body}"
    ))
}

/// The namespace of an object that names none: kubectl's default, and the embedded store's.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object's namespace, or [`DEFAULT_NAMESPACE`] when it names none.
pub fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// An error with its causes on one line ("error sending request: dns error: no such host"),
/// since many errors' own message (reqwest's) hides why. Here because every recast binary
/// (operator, agent, recastctl) depends on this crate.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
