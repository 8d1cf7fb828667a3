//! The Kubernetes store: the Backend implementation over the API server.
//!
//! - Status is written with server-side apply (field manager `recast-operator`) on the status
//!   subresource, with the endpoint's resourceVersion as a precondition, so a decision taken on
//!   a spec the user has since changed is refused (409) and taken again.
//! - Every Endpoint carries the `recast.dev/disarm-boot` finalizer (applied by its own field
//!   manager), so a pending network boot is disarmed before the object goes away.
//! - Boot intents, the action journal and the input inbox are ConfigMaps in the operator's own
//!   control namespace (`--control-namespace`), never in the tenant's: Kubernetes' built-in
//!   `edit` role writes ConfigMaps, and a forged intent or inbox would arm or steer a reimage.
//!   Their names are `recast-{boot,journal,inbox}-HASH` with HASH from the endpoint's
//!   namespace and name (so tenants cannot collide), and the endpoint is named in annotations.
//!   Owner references cannot cross namespaces: the finalizer deletes them, and the leader
//!   sweeps orphans (see `sweep_orphans`). Objects a previous version left in tenant
//!   namespaces are never read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use recast_crds::Endpoint;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::golden_image::GoldenImage;
use recast_crds::policy::{RemediationPolicy, RemediationPolicyStatus};
use recast_crds::wave::{ReimageWave, ReimageWaveStatus};
use serde_json::json;
use tokio::sync::watch;

use crate::store::embedded::BOOT_FINALIZER;
use crate::store::{
    ActionJournal, BackendError, BootArming, BootIntent, ContextStore, EndpointStore, Fencing,
    Inbox, Journal, Key, PolicyStatusStore, WaveStore,
};
use recast_core::lifecycle::{Input, Notice, NoticeType};
use recast_core::time;

pub mod boot_watch;
pub mod forward;
pub mod index;
pub mod try_secrets;
pub mod versions;

pub const LEASE_NAME: &str = "recast-operator";
pub use super::control::*;

pub struct KubeBackend {
    client: Client,
    policies: Store<RemediationPolicy>,
    images: Store<GoldenImage>,
    recorder: Recorder,
    leader: Arc<AtomicBool>,
    watch_namespace: Option<String>,
    /// Where the boot intents, journals and inboxes live (the operator's own namespace).
    control_namespace: String,
    /// Endpoints whose inbox ConfigMap holds entries, kept by the controller's inbox watch
    /// (None when no watch feeds it: then every reconcile reads the inbox).
    pub(crate) inboxes: Option<Arc<std::sync::Mutex<std::collections::HashSet<Key>>>>,
    /// The boot service's MAC index, fed by watches (see `boot_watch`); None in a process
    /// that serves no boots.
    boot_index: Option<boot_watch::SharedBootIndex>,
    /// A read-only boot pod sends its inputs to the operator instead of writing inboxes.
    forward: Option<Arc<crate::store::kube::forward::Forwarder>>,
    /// Fires when a policy or image in the caches changes.
    changed: tokio::sync::broadcast::Sender<()>,
    /// Endpoint resourceVersions from a metadata watch, for the gateway's facts (None: not
    /// started in this process).
    versions: Option<versions::SharedVersions>,
}

pub(crate) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn kube_err(e: kube::Error) -> BackendError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => BackendError::Conflict(s.message.clone()),
        // The apiserver refused the request itself (forbidden, invalid, not found): the same
        // request gets the same answer.
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
            BackendError::Invalid(e.to_string())
        }
        _ => BackendError::Unavailable(e.to_string()),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn ns_of(ep: &Endpoint) -> String {
    recast_crds::namespace_of(&ep.metadata).to_string()
}

/// ConfigMap keys allow [-._a-zA-Z0-9]; idempotency keys contain '/'.
fn cm_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect()
}

/// Metadata of a new control object for `key`.
/// Where this store looks and who it is: the replica's identity (Events name it), the
/// namespace it watches (None: all), and the operator's control namespace.
#[derive(Clone, Debug)]
pub struct Scope {
    pub identity: String,
    pub watch_namespace: Option<String>,
    pub control_namespace: String,
}

impl KubeBackend {
    /// Connects: starts the policy and image caches and waits until they are filled. The stream
    /// fires when a policy or image changes. Writes succeed only while `leader` is true.
    pub async fn connect(
        client: Client,
        opts: &Scope,
        leader: Arc<AtomicBool>,
    ) -> Result<(KubeBackend, tokio::sync::broadcast::Sender<()>), String> {
        let (policies, policy_writer) = reflector::store::<RemediationPolicy>();
        let (images, image_writer) = reflector::store::<GoldenImage>();
        let (changed, _) = tokio::sync::broadcast::channel::<()>(16);
        let ns = opts.watch_namespace.as_deref();
        spawn_reflector(
            scoped::<RemediationPolicy>(&client, ns),
            policy_writer,
            changed.clone(),
            recast_core::policy_status::fingerprint,
        );
        spawn_reflector(
            scoped::<GoldenImage>(&client, ns),
            image_writer,
            changed.clone(),
            image_fingerprint,
        );
        let trigger = changed.clone();
        policies
            .wait_until_ready()
            .await
            .map_err(|e| e.to_string())?;
        images.wait_until_ready().await.map_err(|e| e.to_string())?;
        let backend = KubeBackend {
            client: client.clone(),
            policies,
            images,
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(opts.identity.clone()),
                },
            ),
            leader,
            watch_namespace: opts.watch_namespace.clone(),
            control_namespace: opts.control_namespace.clone(),
            inboxes: None,
            boot_index: None,
            forward: None,
            changed,
            versions: None,
        };
        Ok((backend, trigger))
    }

    /// Another view of the same caches (no second pair of watches) whose writes follow
    /// `leader`: the controller's, next to the lease-free one the boot service and the
    /// gateway use in the same process.
    pub fn sibling(&self, leader: Arc<AtomicBool>) -> KubeBackend {
        KubeBackend {
            client: self.client.clone(),
            policies: self.policies.clone(),
            images: self.images.clone(),
            recorder: self.recorder.clone(),
            leader,
            watch_namespace: self.watch_namespace.clone(),
            control_namespace: self.control_namespace.clone(),
            inboxes: None,
            boot_index: None,
            forward: None,
            changed: self.changed.clone(),
            versions: None,
        }
    }

    /// Writes `status` through `obj`'s status subresource (server-side apply, recast's field
    /// manager), conditional on the resourceVersion `obj` was read at: a change since then is a
    /// 409 (Conflict), and the caller decides again.
    async fn apply_status_as_read<K>(
        &self,
        obj: &K,
        status: &impl serde::Serialize,
    ) -> Result<(), BackendError>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.check_leader()?;
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {"name": obj.name_any(), "resourceVersion": obj.resource_version()},
            "status": status,
        });
        Api::<K>::namespaced(self.client.clone(), recast_crds::namespace_of(obj.meta()))
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
            .map(|_| ())
            .map_err(kube_err)
    }

    /// Fires when a policy or image in the caches changes.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<()> {
        self.changed.subscribe()
    }

    /// Watches the Endpoints' resourceVersions (metadata only) and the caches' changes, so
    /// [`EndpointStore::facts_version`] can tell the gateway when an endpoint's facts changed.
    pub fn with_facts_versions(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.versions = Some(versions::spawn(
            self.client.clone(),
            self.watch_namespace.as_deref(),
            self.changed.subscribe(),
            shutdown,
        ));
        self
    }

    /// Answers boot lookups from `index` (see `boot_watch::spawn`).
    pub fn with_boot_index(mut self, index: boot_watch::SharedBootIndex) -> Self {
        self.boot_index = Some(index);
        self
    }

    /// Starts the watches that feed the boot index, over the namespaces this backend watches.
    pub fn start_boot_index(&self, shutdown: watch::Receiver<bool>) -> boot_watch::SharedBootIndex {
        boot_watch::spawn(
            self.client.clone(),
            boot_watch::WatchScope {
                endpoints: self.watch_namespace.clone(),
                // Boot intents live in the operator's control namespace, which no tenant writes.
                intents: Some(self.control_namespace.clone()),
            },
            BOOT_LABEL,
            boot_intent_from_configmap,
            shutdown,
        )
    }

    /// Sends inputs to the operator's internal endpoint instead of writing inboxes (the boot
    /// role, whose ServiceAccount may not write).
    pub fn with_forwarder(mut self, forward: crate::store::kube::forward::Forwarder) -> Self {
        self.forward = Some(Arc::new(forward));
        self
    }

    /// Queues an input in the endpoint's inbox under `id` (sortable; the same id twice is one
    /// entry). Needs no lease: any replica may queue.
    pub async fn post_input_as(
        &self,
        key: &Key,
        id: &str,
        input: &Input,
    ) -> Result<(), BackendError> {
        let text =
            serde_json::to_string(input).map_err(|e| BackendError::Invalid(e.to_string()))?;
        self.merge_cm(ControlKind::Inbox, key, None, json!({cm_key(id): text}))
            .await
    }

    fn check_leader(&self) -> Result<(), BackendError> {
        if self.leader.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(BackendError::NotLeader)
        }
    }

    /// Publishes an Event about `reference`. An event that cannot be written must not stop
    /// the controller; it is logged instead.
    async fn publish(&self, reference: ObjectReference, notice: &Notice) {
        let ev = Event {
            type_: match notice.type_ {
                NoticeType::Normal => EventType::Normal,
                NoticeType::Warning => EventType::Warning,
            },
            reason: notice.reason.clone(),
            note: Some(notice.message.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            let object = reference.name.unwrap_or_default();
            tracing::warn!(%object, error = %e, reason = %notice.reason, "cannot record event");
        }
    }

    fn endpoints_api(&self, ns: &str) -> Api<Endpoint> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The ConfigMaps of the control namespace: the only ones this backend reads or writes.
    fn control(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.control_namespace)
    }

    /// The namespace boot intents, journals and inboxes live in.
    pub fn control_namespace(&self) -> &str {
        &self.control_namespace
    }

    /// Merge-patches entries into a control object, creating it if missing.
    async fn merge_cm(
        &self,
        kind: ControlKind,
        key: &Key,
        uid: Option<&str>,
        data: serde_json::Value,
    ) -> Result<(), BackendError> {
        let api = self.control();
        let name = control_name(kind, key);
        let name = name.as_str();
        match api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": data})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                let meta = control_meta(kind, key, uid);
                // Drop nulls (deletions) from the initial data.
                let data: serde_json::Map<String, serde_json::Value> = data
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": meta, "data": data}))
                    .map_err(|e| BackendError::Invalid(e.to_string()))?;
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => Ok(()),
                    // Created concurrently: patch again.
                    Err(kube::Error::Api(s)) if s.code == 409 => api
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": cm.data})),
                        )
                        .await
                        .map(|_| ())
                        .map_err(kube_err),
                    Err(e) => Err(kube_err(e)),
                }
            }
            Err(e) => Err(kube_err(e)),
        }
    }

    async fn cm_data(
        &self,
        kind: ControlKind,
        key: &Key,
    ) -> Result<BTreeMap<String, String>, BackendError> {
        match self
            .control()
            .get_opt(&control_name(kind, key))
            .await
            .map_err(kube_err)?
        {
            Some(cm) if control_owner(kind, &cm).as_ref() == Some(key) => {
                Ok(cm.data.unwrap_or_default())
            }
            _ => Ok(BTreeMap::new()),
        }
    }

    async fn delete_control(&self, kind: ControlKind, key: &Key) -> Result<(), BackendError> {
        match self
            .control()
            .delete(&control_name(kind, key), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_err(e)),
        }
    }

    /// Deletes control objects whose endpoint is gone (or was re-created: another uid), once
    /// they are older than `grace`. Owner references cannot reach across namespaces, so this
    /// stands in for the garbage collector; the finalizer removes them in the normal case.
    /// Returns how many were deleted.
    pub async fn sweep_orphans(&self, grace: Duration) -> Result<usize, BackendError> {
        self.check_leader()?;
        let live: std::collections::HashMap<Key, String> = self
            .endpoints()
            .await?
            .iter()
            .map(|ep| (Key::of(ep), ep.uid().unwrap_or_default()))
            .collect();
        let maps = self
            .control()
            .list(&ListParams::default().labels(&format!("{CONTROL_LABEL}=true")))
            .await
            .map_err(kube_err)?;
        let now = Timestamp::now();
        let mut deleted = 0;
        for cm in &maps.items {
            let created = cm
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(now.as_second());
            let age = Duration::from_secs(u64::try_from(now.as_second() - created).unwrap_or(0));
            if orphaned(cm, &live, self.watch_namespace.as_deref(), age, grace) {
                match self
                    .control()
                    .delete(&cm.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => deleted += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(kube_err(e)),
                }
            }
        }
        Ok(deleted)
    }
}

/// Whether a control object outlived its endpoint. Objects of endpoints outside the watched
/// namespace belong to another install and are left alone; so are objects this version
/// cannot read (no endpoint annotations), which it never wrote.
pub fn orphaned(
    cm: &ConfigMap,
    live: &std::collections::HashMap<Key, String>,
    watch_namespace: Option<&str>,
    age: Duration,
    grace: Duration,
) -> bool {
    let Some(key) = [
        ControlKind::Boot,
        ControlKind::Journal,
        ControlKind::Inbox,
        ControlKind::GatewayCredential,
    ]
    .into_iter()
    .find_map(|k| control_owner(k, cm)) else {
        return false;
    };
    if watch_namespace.is_some_and(|ns| ns != key.namespace) || age < grace {
        return false;
    }
    match live.get(&key) {
        None => true,
        Some(uid) => cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ENDPOINT_UID_ANNOTATION))
            .is_some_and(|written_for| written_for != uid),
    }
}

impl EndpointStore for KubeBackend {
    fn facts_version(&self, key: &Key) -> Option<crate::store::FactsVersion> {
        self.versions.as_ref()?.get(key)
    }

    async fn endpoint(&self, key: &Key) -> Result<Option<Endpoint>, BackendError> {
        // Always fresh from the server: a decision on a cached (older) status could start an
        // attempt that is already running.
        self.endpoints_api(&key.namespace)
            .get_opt(&key.name)
            .await
            .map_err(kube_err)
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, BackendError> {
        let api: Api<Endpoint> = scoped(&self.client, self.watch_namespace.as_deref());
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(kube_err)?
            .items)
    }

    async fn write_status(
        &self,
        ep: &Endpoint,
        status: &EndpointStatus,
    ) -> Result<Option<Endpoint>, BackendError> {
        self.check_leader()?;
        let patch = json!({
            "apiVersion": recast_crds::API_VERSION,
            "kind": "Endpoint",
            "metadata": {"name": ep.name_any(), "resourceVersion": ep.resource_version()},
            "status": status,
        });
        self.endpoints_api(&ns_of(ep))
            .patch_status(
                &ep.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
            .map(Some)
            .map_err(kube_err)
    }

    async fn record(
        &self,
        ep: &Endpoint,
        notice: &Notice,
        _now: Timestamp,
    ) -> Result<(), BackendError> {
        self.check_leader()?;
        self.publish(ep.object_ref(&()), notice).await;
        Ok(())
    }

    async fn ensure_finalizer(&self, ep: &Endpoint) -> Result<Option<Endpoint>, BackendError> {
        if ep.finalizers().iter().any(|f| f == BOOT_FINALIZER) {
            return Ok(None);
        }
        self.check_leader()?;
        // A merge patch of the whole list, guarded by the resourceVersion it was computed
        // from: cheaper for the apiserver than an apply, and never drops someone else's
        // finalizer added meanwhile (that is a 409, and the caller reads again).
        let mut list = ep.finalizers().to_vec();
        list.push(BOOT_FINALIZER.to_string());
        let patch =
            json!({"metadata": {"finalizers": list, "resourceVersion": ep.resource_version()}});
        self.endpoints_api(&ns_of(ep))
            .patch(
                &ep.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map(Some)
            .map_err(kube_err)
    }

    async fn remove_finalizer(&self, ep: &Endpoint) -> Result<(), BackendError> {
        self.check_leader()?;
        let list: Vec<&String> = ep
            .finalizers()
            .iter()
            .filter(|f| *f != BOOT_FINALIZER)
            .collect();
        let patch =
            json!({"metadata": {"finalizers": list, "resourceVersion": ep.resource_version()}});
        match self
            .endpoints_api(&ns_of(ep))
            .patch(
                &ep.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_err(e)),
        }
    }

    async fn release(&self, key: &Key) -> Result<(), BackendError> {
        self.check_leader()?;
        self.delete_control(ControlKind::Journal, key).await?;
        self.delete_control(ControlKind::Inbox, key).await
    }
}

impl ContextStore for KubeBackend {
    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<RemediationPolicy>, BackendError> {
        Ok(self
            .policies
            .get(&ObjectRef::new(name).within(namespace))
            .map(|p| (*p).clone()))
    }

    async fn golden_images(&self, namespace: &str) -> Result<Vec<GoldenImage>, BackendError> {
        Ok(self
            .images
            .state()
            .into_iter()
            .filter(|gi| gi.namespace().as_deref() == Some(namespace))
            .map(|gi| (*gi).clone())
            .collect())
    }
}

impl PolicyStatusStore for KubeBackend {
    async fn all_policies(&self) -> Result<Vec<RemediationPolicy>, BackendError> {
        Ok(self
            .policies
            .state()
            .iter()
            .map(|p| (**p).clone())
            .collect())
    }

    async fn write_policy_status(
        &self,
        policy: &RemediationPolicy,
        status: &RemediationPolicyStatus,
    ) -> Result<(), BackendError> {
        // Conditional on the resourceVersion read: a spec changed since is a 409, and the
        // next pass counts with it.
        self.apply_status_as_read(policy, status).await
    }
}

impl Inbox for KubeBackend {
    async fn post_input(&self, key: &Key, input: &Input) -> Result<(), BackendError> {
        if let Some(forward) = &self.forward {
            return forward.post(key, input).await;
        }
        // Sortable and unique enough: nanoseconds since the epoch plus a random suffix.
        let id = format!(
            "{:020}-{}",
            Timestamp::now().as_nanosecond(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.post_input_as(key, &id, input).await
    }

    async fn pending_inputs(
        &self,
        key: &Key,
    ) -> Result<Vec<(String, Option<Input>)>, BackendError> {
        // Most reconciles have nothing queued; the inbox watch says which do.
        if let Some(known) = &self.inboxes
            && !known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(key)
        {
            return Ok(Vec::new());
        }
        let data = self.cm_data(ControlKind::Inbox, key).await?;
        Ok(data
            .into_iter()
            .map(|(id, text)| (id, serde_json::from_str(&text).ok()))
            .collect())
    }

    async fn ack_input(&self, key: &Key, id: &str) -> Result<(), BackendError> {
        self.check_leader()?;
        let name = control_name(ControlKind::Inbox, key);
        match self
            .control()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {id: null}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_err(e)),
        }
    }
}

impl ActionJournal for KubeBackend {
    async fn journal_begin(&self, ep: &Endpoint, key: &str) -> Result<Journal, BackendError> {
        self.check_leader()?;
        let ep_key = Key::of(ep);
        let name = control_name(ControlKind::Journal, &ep_key);
        let k = cm_key(key);
        let api = self.control();
        // Claim the key atomically (create, or patch guarded by resourceVersion): two replicas
        // that both believe they lead during a lease hand-over cannot both see it as New.
        for _ in 0..8 {
            let started = json!(format!("started {}", time::format(Timestamp::now())));
            match api.get_opt(&name).await.map_err(kube_err)? {
                Some(cm) => {
                    if control_owner(ControlKind::Journal, &cm).as_ref() != Some(&ep_key) {
                        return Err(BackendError::Invalid(format!(
                            "{}/{name} is not the journal of {ep_key} (its annotations name another endpoint); delete it and the controller writes it afresh",
                            self.control_namespace
                        )));
                    }
                    let data = cm.data.clone().unwrap_or_default();
                    match data.get(&k).map(String::as_str) {
                        Some(v) if v.starts_with("done") => return Ok(Journal::Done),
                        Some(_) => return Ok(Journal::Interrupted),
                        None => {}
                    }
                    let patch = json!({"metadata": {"resourceVersion": cm.resource_version()}, "data": {k.clone(): started}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        Ok(_) => return Ok(Journal::New),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(kube_err(e)),
                    }
                }
                None => {
                    let cm: ConfigMap = serde_json::from_value(json!({
                        "metadata": control_meta(ControlKind::Journal, &ep_key, ep.uid().as_deref()),
                        "data": {k.clone(): started},
                    }))
                    .map_err(|e| BackendError::Invalid(e.to_string()))?;
                    match api.create(&PostParams::default(), &cm).await {
                        Ok(_) => return Ok(Journal::New),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(kube_err(e)),
                    }
                }
            }
        }
        Err(BackendError::Conflict(format!(
            "journal {name}: claim of {key} kept conflicting"
        )))
    }

    async fn journal_finish(&self, ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.check_leader()?;
        self.merge_cm(
            ControlKind::Journal,
            &Key::of(ep),
            ep.uid().as_deref(),
            json!({cm_key(key): format!("done {}", time::format(Timestamp::now()))}),
        )
        .await
    }

    async fn journal_forget(&self, ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.check_leader()?;
        self.merge_cm(
            ControlKind::Journal,
            &Key::of(ep),
            ep.uid().as_deref(),
            json!({cm_key(key): null}),
        )
        .await
    }
}

impl BootArming for KubeBackend {
    async fn arm_boot(&self, ep: &Endpoint, intent: &BootIntent) -> Result<(), BackendError> {
        self.check_leader()?;
        let data = boot_intent_data(intent);
        let uid = ep.uid();
        self.merge_cm(ControlKind::Boot, &Key::of(ep), uid.as_deref(), data)
            .await
    }

    async fn disarm_boot(&self, key: &Key) -> Result<(), BackendError> {
        self.check_leader()?;
        self.delete_control(ControlKind::Boot, key).await
    }
}

impl WaveStore for KubeBackend {
    async fn waves(&self) -> Result<Vec<ReimageWave>, BackendError> {
        let api: Api<ReimageWave> = scoped(&self.client, self.watch_namespace.as_deref());
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(kube_err)?
            .items)
    }

    async fn wave(&self, namespace: &str, name: &str) -> Result<Option<ReimageWave>, BackendError> {
        Api::<ReimageWave>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(kube_err)
    }

    async fn write_wave_status(
        &self,
        wave: &ReimageWave,
        status: &ReimageWaveStatus,
    ) -> Result<(), BackendError> {
        // Conditional on the resourceVersion read: a pause, abort or approval that landed
        // since the wave was read is a 409, and the wave is decided again.
        self.apply_status_as_read(wave, status).await
    }

    async fn record_wave(
        &self,
        wave: &ReimageWave,
        notice: &Notice,
        _now: Timestamp,
    ) -> Result<(), BackendError> {
        self.check_leader()?;
        self.publish(wave.object_ref(&()), notice).await;
        Ok(())
    }
}

impl Fencing for KubeBackend {
    fn ensure_leader(&self) -> Result<(), BackendError> {
        self.check_leader()
    }
}
/// The boot intent as the data of its `recast-boot-HASH` ConfigMap (string values, as
/// ConfigMaps hold).
pub fn boot_intent_data(intent: &BootIntent) -> serde_json::Value {
    json!({
        "macAddresses": intent.mac_addresses.join(","),
        "attemptId": intent.attempt_id,
        "tryNumber": intent.try_number.to_string(),
        "image": intent.image,
        "imageDigest": intent.image_digest.clone().unwrap_or_default(),
        "bootMode": intent.boot_mode,
        "armedAt": intent.armed_at,
    })
}

/// Reads a boot intent back from its ConfigMap; None when the data is incomplete (a
/// half-written or hand-edited map is never served).
pub fn boot_intent_from_data(
    namespace: &str,
    endpoint: &str,
    data: &BTreeMap<String, String>,
) -> Option<BootIntent> {
    let get = |k: &str| data.get(k).filter(|v| !v.is_empty()).cloned();
    Some(BootIntent {
        namespace: namespace.to_string(),
        endpoint: endpoint.to_string(),
        mac_addresses: get("macAddresses")?
            .split(',')
            .map(|m| m.trim().to_ascii_lowercase())
            .collect(),
        attempt_id: get("attemptId")?,
        try_number: get("tryNumber")?.parse().ok()?,
        image: get("image")?,
        image_digest: get("imageDigest"),
        boot_mode: get("bootMode")?,
        armed_at: get("armedAt").unwrap_or_default(),
    })
}

/// Reads a boot intent from its ConfigMap in the control namespace; None unless the object is
/// a boot intent named for the endpoint its annotations give (see `control_owner`) and its
/// data is complete. The caller lists only the control namespace.
pub fn boot_intent_from_configmap(cm: &ConfigMap) -> Option<BootIntent> {
    let key = control_owner(ControlKind::Boot, cm)?;
    boot_intent_from_data(&key.namespace, &key.name, cm.data.as_ref()?)
}

/// Who owns a MAC among these endpoints (deleted ones own nothing): one, nobody, or several.
pub fn known_for_mac<'a>(
    mac: &str,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> crate::store::arming::Known {
    crate::store::arming::Known::from_owners(
        endpoints
            .into_iter()
            .filter(|ep| {
                ep.metadata.deletion_timestamp.is_none()
                    && ep
                        .spec
                        .identity
                        .mac_addresses
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(mac))
            })
            .map(crate::store::arming::Owner::of)
            .collect(),
    )
}

impl crate::store::InputSink for KubeBackend {
    async fn queue(&self, key: &Key, entry_id: &str, input: &Input) -> Result<(), BackendError> {
        // Only for endpoints this install manages.
        if self
            .watch_namespace
            .as_deref()
            .is_some_and(|w| w != key.namespace)
        {
            return Err(BackendError::Invalid(format!(
                "{key} is outside the watched namespace"
            )));
        }
        self.post_input_as(key, entry_id, input).await
    }
}

impl crate::store::BootIntents for KubeBackend {
    async fn boot_lookup(
        &self,
        mac: &str,
    ) -> Result<(crate::store::arming::Known, Option<BootIntent>), BackendError> {
        // Never a request to the apiserver: anyone on the provisioning network can make the
        // boot service look a MAC up, as often as they like.
        let Some(index) = &self.boot_index else {
            return Err(BackendError::NotReady(
                "this process keeps no boot index (start it with start_boot_index)".into(),
            ));
        };
        match index.lookup(mac) {
            crate::store::kube::index::Lookup::NotSynced => Err(BackendError::NotReady(
                "the boot index is still loading Endpoints and boot intents".into(),
            )),
            crate::store::kube::index::Lookup::Found(known, intent) => {
                if let crate::store::arming::Known::Ambiguous { owners } = &known {
                    tracing::warn!(mac, owners = ?owners, "more than one Endpoint lists this MAC address; it boots nothing until only one does");
                }
                Ok((known, intent))
            }
        }
    }

    fn boot_lookups_ready(&self) -> bool {
        self.boot_index.as_ref().is_some_and(|ix| ix.synced())
    }

    async fn boot_intent_of(&self, key: &Key) -> Result<Option<BootIntent>, BackendError> {
        match self
            .control()
            .get_opt(&control_name(ControlKind::Boot, key))
            .await
        {
            Ok(Some(cm)) => Ok(boot_intent_from_configmap(&cm).filter(|i| &i.key() == key)),
            Ok(None) => Ok(None),
            Err(e) => Err(kube_err(e)),
        }
    }

    async fn record_discovered(&self, mac: &str, detail: &str) -> Result<(), BackendError> {
        // No object to hang an Event on; the log line and the boot metrics carry it.
        tracing::info!(mac, detail, "discovered a MAC address no Endpoint lists");
        Ok(())
    }
}

impl crate::store::ImageStore for KubeBackend {
    async fn all_golden_images(&self) -> Result<Vec<GoldenImage>, BackendError> {
        Ok(self
            .images
            .state()
            .iter()
            .map(|gi| (**gi).clone())
            .collect())
    }

    async fn write_image_status(
        &self,
        gi: &GoldenImage,
        status: &recast_crds::golden_image::GoldenImageStatus,
    ) -> Result<(), BackendError> {
        self.check_leader()?;
        let ns = recast_crds::namespace_of(&gi.metadata).to_string();
        let api: Api<GoldenImage> = Api::namespaced(self.client.clone(), &ns);
        // The cache may lag: a spec changed since `gi` was read makes this result stale, and
        // the next pass checks the new generation (observedGeneration tells them apart).
        let patch = json!({
            "apiVersion": recast_crds::API_VERSION,
            "kind": "GoldenImage",
            "metadata": {"name": gi.name_any()},
            "status": status,
        });
        match api
            .patch_status(
                &gi.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(BackendError::Conflict(format!(
                "GoldenImage {ns}/{} was deleted",
                gi.name_any()
            ))),
            Err(e) => Err(kube_err(e)),
        }
    }

    async fn record_image(&self, gi: &GoldenImage, notice: &Notice) -> Result<(), BackendError> {
        self.check_leader()?;
        self.publish(gi.object_ref(&()), notice).await;
        Ok(())
    }
}

/// Keeps a reflector store filled from a watch and signals each change on `changed`: every
/// object added, changed or deleted (a deleted policy or image changes what its endpoints
/// follow as much as an edited one).
pub(crate) fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: tokio::sync::broadcast::Sender<()>,
    fingerprint: fn(&K) -> String,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        futures::pin_mut!(stream);
        let mut filter = ChangeFilter::new(fingerprint);
        while let Some(item) = stream.next().await {
            if let Ok(event) = item
                && filter.fires(&event)
            {
                let _ = changed.send(());
            }
        }
    });
}

/// Which watch events of a cache fire the change signal: only changes that matter (by
/// `fingerprint`), so that a write of the controller's own status on a policy does not
/// re-evaluate every endpoint.
pub(crate) struct ChangeFilter<K> {
    fingerprint: fn(&K) -> String,
    /// By (namespace, name), as last seen.
    seen: std::collections::HashMap<(Option<String>, String), String>,
    /// Filled during a relist, replacing `seen` when it is done: an object deleted while the
    /// watch was down leaves no entry behind (its re-creation with the same spec must fire).
    relisting: Option<std::collections::HashMap<(Option<String>, String), String>>,
}

impl<K: kube::Resource> ChangeFilter<K> {
    pub(crate) fn new(fingerprint: fn(&K) -> String) -> Self {
        Self {
            fingerprint,
            seen: Default::default(),
            relisting: None,
        }
    }

    pub(crate) fn fires(&mut self, event: &watcher::Event<K>) -> bool {
        let id = |o: &K| {
            (
                o.meta().namespace.clone(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(o) => {
                let print = (self.fingerprint)(o);
                self.seen.insert(id(o), print.clone()) != Some(print)
            }
            watcher::Event::Delete(o) => {
                self.seen.remove(&id(o));
                true
            }
            watcher::Event::Init => {
                self.relisting = Some(Default::default());
                false
            }
            watcher::Event::InitApply(o) => {
                let print = (self.fingerprint)(o);
                self.relisting
                    .get_or_insert_with(Default::default)
                    .insert(id(o), print);
                false
            }
            // Once per relist, whatever changed while the watch was down.
            watcher::Event::InitDone => {
                self.seen = self.relisting.take().unwrap_or_default();
                true
            }
        }
    }
}

/// All of a GoldenImage matters (its verification lives in status).
pub(crate) fn image_fingerprint(gi: &GoldenImage) -> String {
    gi.resource_version().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rpol(spec: serde_json::Value, status: serde_json::Value) -> RemediationPolicy {
        serde_json::from_value(json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn only_changes_that_decide_endpoints_fire_and_a_relist_forgets_what_it_did_not_see() {
        use watcher::Event::*;
        let mut f = ChangeFilter::new(recast_core::policy_status::fingerprint);
        let p = rpol(json!({}), json!({}));
        assert!(!f.fires(&Init));
        assert!(!f.fires(&InitApply(p.clone())));
        assert!(f.fires(&InitDone), "a relist fires once");
        // The controller's own status write: nothing to re-evaluate.
        assert!(!f.fires(&Apply(rpol(
            json!({}),
            json!({"budget": "1/3 failures in 1h"})
        ))));
        assert!(!f.fires(&Apply(p.clone())));
        // A spec change fires.
        let slower = rpol(json!({"cooldown": "12h"}), json!({}));
        assert!(f.fires(&Apply(slower.clone())));
        // A breaker reset (an annotation) fires.
        let mut reset = slower.clone();
        reset.metadata.annotations = Some(
            [(
                recast_crds::policy::BREAKER_RESET_ANNOTATION.to_string(),
                "2026-01-15T08:00:00Z".to_string(),
            )]
            .into(),
        );
        assert!(f.fires(&Apply(reset.clone())));
        // Deleted while the watch was down: the relist does not list it...
        assert!(!f.fires(&Init));
        assert!(f.fires(&InitDone));
        // ...and its re-creation with the same spec fires.
        assert!(f.fires(&Apply(reset.clone())));
        // A deletion fires, and so does creating it again.
        assert!(f.fires(&Delete(reset.clone())));
        assert!(f.fires(&Apply(reset)));
    }

    fn key(ns: &str, name: &str) -> Key {
        Key {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn intent() -> BootIntent {
        BootIntent {
            namespace: "tenant-a".into(),
            endpoint: "kiosk-01".into(),
            mac_addresses: vec!["52:54:00:00:00:01".into()],
            attempt_id: "a1".into(),
            try_number: 2,
            image: "win11".into(),
            image_digest: Some("ab".into()),
            boot_mode: "uefi".into(),
            armed_at: "2026-01-14T08:00:00Z".into(),
        }
    }

    fn cm(kind: ControlKind, k: &Key, uid: Option<&str>, data: serde_json::Value) -> ConfigMap {
        serde_json::from_value(json!({"metadata": control_meta(kind, k, uid), "data": data}))
            .unwrap()
    }

    #[test]
    fn control_names_never_collide_across_namespaces() {
        let a = control_name(ControlKind::Boot, &key("a-b", "c"));
        let b = control_name(ControlKind::Boot, &key("a", "b-c"));
        assert_ne!(a, b);
        assert!(a.starts_with("recast-boot-") && a.len() == "recast-boot-".len() + 32);
        assert_ne!(
            control_name(ControlKind::Boot, &key("a", "b")),
            control_name(ControlKind::Inbox, &key("a", "b"))
        );
        // Stable: the name is how every replica finds the object.
        assert_eq!(a, control_name(ControlKind::Boot, &key("a-b", "c")));
    }

    #[test]
    fn a_boot_intent_round_trips_through_its_configmap() {
        let i = intent();
        let map = cm(
            ControlKind::Boot,
            &i.key(),
            Some("u1"),
            boot_intent_data(&i),
        );
        assert_eq!(boot_intent_from_configmap(&map), Some(i));
    }

    #[test]
    fn a_configmap_is_taken_only_for_the_endpoint_its_name_belongs_to() {
        let i = intent();
        // Annotations naming another endpoint than the name's hash: ignored.
        let mut map = cm(ControlKind::Boot, &i.key(), None, boot_intent_data(&i));
        map.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ENDPOINT_ANNOTATION.into(), "kiosk-02".into());
        assert_eq!(boot_intent_from_configmap(&map), None);
        // An inbox is no boot intent, whatever its data.
        let inbox = cm(ControlKind::Inbox, &i.key(), None, boot_intent_data(&i));
        assert_eq!(boot_intent_from_configmap(&inbox), None);
        // The old per-namespace name is not read.
        let mut old = cm(ControlKind::Boot, &i.key(), None, boot_intent_data(&i));
        old.metadata.name = Some("recast-boot-kiosk-01".into());
        assert_eq!(boot_intent_from_configmap(&old), None);
        // Incomplete data is never served.
        let mut partial = boot_intent_data(&i);
        partial["imageDigest"] = json!("");
        partial.as_object_mut().unwrap().remove("attemptId");
        assert_eq!(
            boot_intent_from_configmap(&cm(ControlKind::Boot, &i.key(), None, partial)),
            None
        );
    }

    #[test]
    fn orphans_are_objects_whose_endpoint_is_gone_or_was_recreated() {
        let k = key("tenant-a", "kiosk-01");
        let grace = Duration::from_secs(600);
        let old = Duration::from_secs(3600);
        let live: HashMap<Key, String> = [(k.clone(), "u1".to_string())].into();
        let journal = cm(ControlKind::Journal, &k, Some("u1"), json!({}));
        assert!(!orphaned(&journal, &live, None, old, grace));
        // Re-created under the same name: the old journal is not its journal.
        let stale = cm(ControlKind::Journal, &k, Some("u0"), json!({}));
        assert!(orphaned(&stale, &live, None, old, grace));
        // Gone, but young: maybe the list has not caught up.
        let gone = cm(
            ControlKind::Inbox,
            &key("tenant-a", "gone"),
            None,
            json!({}),
        );
        assert!(!orphaned(&gone, &live, None, Duration::from_secs(5), grace));
        assert!(orphaned(&gone, &live, None, old, grace));
        // Another install's namespace, and objects this version did not write: left alone.
        assert!(!orphaned(&gone, &live, Some("tenant-b"), old, grace));
        let mut foreign = gone.clone();
        foreign.metadata.annotations = None;
        assert!(!orphaned(&foreign, &live, None, old, grace));
        // An inbox (no uid) of a live endpoint stays.
        let inbox = cm(ControlKind::Inbox, &k, None, json!({}));
        assert!(!orphaned(&inbox, &live, None, old, grace));
    }
}
