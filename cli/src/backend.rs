//! Where recastctl reads and writes: the embedded store's file, or the Kubernetes API.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use recast_crds::manifest::Kind;
use recast_operator::bmc::redfish::SecretData;
use recast_operator::store::embedded::{ApplyOutcome, EmbeddedStore, EventRecord, StoreError};
use serde_json::{Value, json};

pub const FIELD_MANAGER: &str = "recastctl";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Kube(String),
}

fn kube_err(e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) => BackendError::Kube(s.message),
        other => BackendError::Kube(other.to_string()),
    }
}

pub struct KubeObjects {
    client: Client,
    rt: tokio::runtime::Runtime,
}

pub enum Backend {
    Embedded(EmbeddedStore),
    Kube(KubeObjects),
}

fn resource(kind: Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(recast_crds::GROUP, recast_crds::VERSION, kind.as_str()),
        kind.plural(),
    )
}

impl KubeObjects {
    /// Connects like kubectl: $KUBECONFIG or ~/.kube/config (or in-cluster), optionally a
    /// named context.
    pub fn connect(context: Option<String>) -> Result<KubeObjects, BackendError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Kube(e.to_string()))?;
        let client = rt.block_on(async {
            let config = match context {
                Some(ctx) => Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                    context: Some(ctx),
                    ..Default::default()
                })
                .await
                .map_err(|e| BackendError::Kube(format!("kubeconfig: {e}")))?,
                None => Config::infer().await.map_err(|e| {
                    BackendError::Kube(format!(
                        "no cluster configured ({e}); set KUBECONFIG or use --backend embedded"
                    ))
                })?,
            };
            Client::try_from(config).map_err(|e| BackendError::Kube(e.to_string()))
        })?;
        Ok(KubeObjects { client, rt })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one request (or a few) on this connection's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn api(&self, kind: Kind, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource(kind)),
            None => Api::all_with(self.client.clone(), &resource(kind)),
        }
    }
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

impl Backend {
    pub fn apply(
        &self,
        doc: &Value,
        ns: &str,
    ) -> Result<(Kind, String, ApplyOutcome), BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.apply(doc, ns)?),
            Backend::Kube(k) => {
                let kind_name = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
                let kind = Kind::from_kind(kind_name).ok_or_else(|| {
                    BackendError::Kube(format!("{kind_name:?} is not a recast kind"))
                })?;
                let (name, ns) = name_and_namespace(doc, ns);
                let api = k.api(kind, Some(&ns));
                let outcome = k.rt.block_on(server_side_apply(&api, &name, doc))?;
                Ok((kind, name, outcome))
            }
        }
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Option<Value>, BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.get(kind, ns, name)?),
            Backend::Kube(k) => {
                let api = k.api(kind, Some(ns));
                k.rt.block_on(async {
                    api.get_opt(name)
                        .await
                        .map(|o| o.map(to_value))
                        .map_err(kube_err)
                })
            }
        }
    }

    pub fn list(&self, kind: Kind, ns: Option<&str>) -> Result<Vec<Value>, BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.list(kind, ns)?),
            Backend::Kube(k) => {
                let api = k.api(kind, ns);
                k.rt.block_on(async {
                    let list = api.list(&ListParams::default()).await.map_err(kube_err)?;
                    let mut items: Vec<Value> = list.items.into_iter().map(to_value).collect();
                    items.sort_by_key(|o| {
                        (
                            o.pointer("/metadata/namespace")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            o.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        )
                    });
                    Ok(items)
                })
            }
        }
    }

    /// Stores a `v1 Secret` (BMC credentials, CA bundles). Its data is never printed.
    pub fn apply_secret(
        &self,
        doc: &Value,
        ns: &str,
    ) -> Result<(String, ApplyOutcome), BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.apply_secret(doc, ns)?),
            Backend::Kube(k) => {
                let (name, ns) = name_and_namespace(doc, ns);
                let api: Api<Secret> = Api::namespaced(k.client.clone(), &ns);
                let outcome = k.rt.block_on(server_side_apply(&api, &name, doc))?;
                Ok((name, outcome))
            }
        }
    }

    /// A Secret's data, for the BMC commands.
    pub fn secret(&self, ns: &str, name: &str) -> Result<Option<SecretData>, BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.secret(ns, name)?),
            Backend::Kube(k) => {
                let api: Api<Secret> = Api::namespaced(k.client.clone(), ns);
                k.rt.block_on(async {
                    let secret = api.get_opt(name).await.map_err(kube_err)?;
                    Ok(secret.map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect()
                    }))
                })
            }
        }
    }

    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<bool, BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.delete(kind, ns, name)?),
            Backend::Kube(k) => {
                let api = k.api(kind, Some(ns));
                k.rt.block_on(async {
                    match api.delete(name, &DeleteParams::default()).await {
                        Ok(_) => Ok(true),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
                        Err(e) => Err(kube_err(e)),
                    }
                })
            }
        }
    }

    /// Sets (or, for a null value, removes) annotations on an object, leaving the rest alone.
    pub fn set_annotations(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        annotations: &serde_json::Map<String, Value>,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(s) => {
                s.update(kind, ns, name, |obj| {
                    let meta = obj
                        .as_object_mut()
                        .and_then(|o| o.get_mut("metadata"))
                        .and_then(Value::as_object_mut);
                    if let Some(meta) = meta {
                        let entry = meta.entry("annotations").or_insert_with(|| json!({}));
                        if let Some(map) = entry.as_object_mut() {
                            for (k, v) in annotations {
                                if v.is_null() {
                                    map.remove(k);
                                } else {
                                    map.insert(k.clone(), v.clone());
                                }
                            }
                        }
                    }
                    Ok(())
                })?;
                Ok(())
            }
            Backend::Kube(k) => {
                let api = k.api(kind, Some(ns));
                let patch = json!({"metadata": {"annotations": annotations}});
                k.rt.block_on(async {
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                        .map_err(kube_err)
                })
            }
        }
    }

    /// Sets one field of an endpoint's spec (protect, reimage requests, manual update holds);
    /// a null value removes it.
    pub fn set_spec_field(
        &self,
        ns: &str,
        name: &str,
        field: &str,
        value: Value,
    ) -> Result<(), BackendError> {
        self.merge_spec(Kind::Endpoint, ns, name, json!({ field: value }))
    }

    /// Sets the top-level spec fields in `fields` (an object) of any recast object.
    pub fn merge_spec(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        fields: Value,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(s) => {
                s.update(kind, ns, name, |obj| {
                    if let (Some(spec), Some(fields)) = (
                        obj.get_mut("spec").and_then(Value::as_object_mut),
                        fields.as_object(),
                    ) {
                        for (k, v) in fields {
                            // Null removes the field, as a JSON merge patch does on the
                            // apiserver.
                            if v.is_null() {
                                spec.remove(k);
                            } else {
                                spec.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    Ok(())
                })?;
                Ok(())
            }
            Backend::Kube(k) => {
                let api = k.api(kind, Some(ns));
                let patch = json!({ "spec": fields });
                k.rt.block_on(async {
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                        .map_err(kube_err)
                })
            }
        }
    }

    pub fn events(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Vec<EventRecord>, BackendError> {
        match self {
            Backend::Embedded(s) => Ok(s.events(kind, ns, name)?),
            Backend::Kube(k) => {
                let ar = ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
                    "events",
                );
                let api: Api<DynamicObject> = Api::namespaced_with(k.client.clone(), ns, &ar);
                k.rt.block_on(async {
                    let list = api.list(&ListParams::default()).await.map_err(kube_err)?;
                    let mut out: Vec<EventRecord> = list
                        .items
                        .into_iter()
                        .map(to_value)
                        .filter(|e| {
                            e.pointer("/regarding/name").and_then(Value::as_str) == Some(name)
                                && e.pointer("/regarding/kind").and_then(Value::as_str)
                                    == Some(kind.as_str())
                        })
                        .map(|e| {
                            let s = |p: &str| {
                                e.pointer(p)
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let time = [
                                s("/series/lastObservedTime"),
                                s("/eventTime"),
                                s("/deprecatedLastTimestamp"),
                                s("/metadata/creationTimestamp"),
                            ]
                            .into_iter()
                            .find(|t| !t.is_empty())
                            .unwrap_or_default();
                            EventRecord {
                                time,
                                type_: s("/type"),
                                reason: s("/reason"),
                                message: s("/note"),
                            }
                        })
                        .collect();
                    out.sort_by(|a, b| a.time.cmp(&b.time));
                    Ok(out)
                })
            }
        }
    }
}

/// The document's name, and its namespace or `default_ns`.
fn name_and_namespace(doc: &Value, default_ns: &str) -> (String, String) {
    let field = |ptr: &str| doc.pointer(ptr).and_then(Value::as_str);
    (
        field("/metadata/name").unwrap_or_default().to_string(),
        field("/metadata/namespace")
            .unwrap_or(default_ns)
            .to_string(),
    )
}

/// Server-side applies `doc` as recastctl and says what it did, like `kubectl apply`: created,
/// configured, or unchanged (the resourceVersion did not move).
async fn server_side_apply<K>(
    api: &Api<K>,
    name: &str,
    doc: &Value,
) -> Result<ApplyOutcome, BackendError>
where
    K: kube::Resource + Clone + for<'de> k8s_openapi::serde::Deserialize<'de> + std::fmt::Debug,
{
    let before = api.get_opt(name).await.map_err(kube_err)?;
    let after = api
        .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(doc))
        .await
        .map_err(kube_err)?;
    Ok(match before {
        None => ApplyOutcome::Created,
        Some(b) if b.meta().resource_version == after.meta().resource_version => {
            ApplyOutcome::Unchanged
        }
        Some(_) => ApplyOutcome::Configured,
    })
}
