//! The controller on Kubernetes: the Backend implementation over the API server, and the
//! leader-elected kube-rs Controller that drives it.
//!
//! - Status is written with server-side apply (field manager `recast-operator`) on the status
//!   subresource, with the endpoint's resourceVersion as a precondition, so a decision taken on
//!   a spec the user has since changed is refused (409) and taken again.
//! - Every Endpoint carries the `recast.dev/disarm-boot` finalizer (applied by its own field
//!   manager), so a pending network boot is disarmed before the object goes away.
//! - Boot intents, the action journal and the input inbox are ConfigMaps owned by the Endpoint
//!   (`recast-boot-NAME`, `recast-journal-NAME`, `recast-inbox-NAME`).
//! - Only the holder of the `recast-operator` Lease runs the controller; every write also checks
//!   the lease, so a replica that just lost it writes nothing more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as KubeAction;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller as KubeController, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use recast_crds::Endpoint;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::golden_image::GoldenImage;
use recast_crds::policy::RemediationPolicy;
use recast_crds::wave::{ReimageWave, ReimageWaveStatus};
use serde_json::json;
use tokio::sync::watch;

use super::{Backend, BackendError, Controller, Journal, Key};
use crate::bmc::PowerControl;
use crate::boot::BootIntent;
use crate::core::lifecycle::{Input, Notice, NoticeType};
use crate::core::time;
use crate::store::embedded::BOOT_FINALIZER;

pub const FIELD_MANAGER: &str = "recast-operator";
pub const LEASE_NAME: &str = "recast-operator";
pub const INBOX_LABEL: &str = "recast.dev/inbox";
pub const BOOT_LABEL: &str = "recast.dev/boot-intent";
const ENDPOINT_ANNOTATION: &str = "recast.dev/endpoint";

pub struct KubeBackend {
    client: Client,
    policies: Store<RemediationPolicy>,
    images: Store<GoldenImage>,
    recorder: Recorder,
    leader: Arc<AtomicBool>,
    watch_namespace: Option<String>,
    /// Endpoints whose inbox ConfigMap holds entries, kept by the controller's inbox watch
    /// (None when no watch feeds it: then every reconcile reads the inbox).
    inboxes: Option<Arc<std::sync::Mutex<std::collections::HashSet<Key>>>>,
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
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
        _ => BackendError::Other(e.to_string()),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn ns_of(ep: &Endpoint) -> String {
    ep.namespace().unwrap_or_else(|| "default".into())
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

fn owner_ref(ep: &Endpoint) -> serde_json::Value {
    json!([{
        "apiVersion": recast_crds::API_VERSION,
        "kind": "Endpoint",
        "name": ep.name_any(),
        "uid": ep.uid().unwrap_or_default(),
        "blockOwnerDeletion": false,
    }])
}

impl KubeBackend {
    /// Connects: starts the policy and image caches and waits until they are filled. The stream
    /// fires when a policy or image changes. Writes succeed only while `leader` is true.
    pub async fn connect(
        client: Client,
        opts: &KubeOptions,
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
        );
        spawn_reflector(
            scoped::<GoldenImage>(&client, ns),
            image_writer,
            changed.clone(),
        );
        let trigger = changed;
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
            inboxes: None,
        };
        Ok((backend, trigger))
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

    fn cms(&self, ns: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Merge-patches entries into a ConfigMap, creating it (owned by the endpoint) if missing.
    async fn merge_cm(
        &self,
        ns: &str,
        name: &str,
        owner: Option<&Endpoint>,
        label: &str,
        endpoint: &str,
        data: serde_json::Value,
    ) -> Result<(), BackendError> {
        let api = self.cms(ns);
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
                let mut meta = json!({
                    "name": name,
                    "labels": {label: "true"},
                    "annotations": {ENDPOINT_ANNOTATION: endpoint},
                });
                if let Some(ep) = owner {
                    meta["ownerReferences"] = owner_ref(ep);
                }
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
                    .map_err(|e| BackendError::Other(e.to_string()))?;
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
        ns: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, BackendError> {
        match self.cms(ns).get_opt(name).await.map_err(kube_err)? {
            Some(cm) => Ok(cm.data.unwrap_or_default()),
            None => Ok(BTreeMap::new()),
        }
    }
}

impl Backend for KubeBackend {
    fn ensure_leader(&self) -> Result<(), BackendError> {
        self.check_leader()
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

    async fn arm_boot(&self, ep: &Endpoint, intent: &BootIntent) -> Result<(), BackendError> {
        self.check_leader()?;
        let data = boot_intent_data(intent);
        let name = format!("recast-boot-{}", ep.name_any());
        self.merge_cm(
            &ns_of(ep),
            &name,
            Some(ep),
            BOOT_LABEL,
            &ep.name_any(),
            data,
        )
        .await
    }

    async fn disarm_boot(&self, key: &Key) -> Result<(), BackendError> {
        self.check_leader()?;
        let name = format!("recast-boot-{}", key.name);
        match self
            .cms(&key.namespace)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_err(e)),
        }
    }

    async fn journal_begin(&self, ep: &Endpoint, key: &str) -> Result<Journal, BackendError> {
        self.check_leader()?;
        let (ns, name) = journal_location(ep);
        let k = cm_key(key);
        let api = self.cms(&ns);
        // Claim the key atomically (create, or patch guarded by resourceVersion): two replicas
        // that both believe they lead during a lease hand-over cannot both see it as New.
        for _ in 0..8 {
            let started = json!(format!("started {}", time::format(Timestamp::now())));
            match api.get_opt(&name).await.map_err(kube_err)? {
                Some(cm) => {
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
                        "metadata": {"name": name, "labels": {"recast.dev/journal": "true"},
                                     "annotations": {ENDPOINT_ANNOTATION: ep.name_any()},
                                     "ownerReferences": owner_ref(ep)},
                        "data": {k.clone(): started},
                    }))
                    .map_err(|e| BackendError::Other(e.to_string()))?;
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
        let (ns, name) = journal_location(ep);
        self.merge_cm(
            &ns,
            &name,
            Some(ep),
            "recast.dev/journal",
            &ep.name_any(),
            json!({cm_key(key): format!("done {}", time::format(Timestamp::now()))}),
        )
        .await
    }

    async fn journal_forget(&self, ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.check_leader()?;
        let (ns, name) = journal_location(ep);
        self.merge_cm(
            &ns,
            &name,
            Some(ep),
            "recast.dev/journal",
            &ep.name_any(),
            json!({cm_key(key): null}),
        )
        .await
    }

    async fn post_input(&self, key: &Key, input: &Input) -> Result<(), BackendError> {
        let text = serde_json::to_string(input).map_err(|e| BackendError::Other(e.to_string()))?;
        // Sortable and unique enough: nanoseconds since the epoch plus a random suffix.
        let id = format!(
            "{:020}-{}",
            Timestamp::now().as_nanosecond(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let name = format!("recast-inbox-{}", key.name);
        self.merge_cm(
            &key.namespace,
            &name,
            None,
            INBOX_LABEL,
            &key.name,
            json!({id: text}),
        )
        .await
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
        let data = self
            .cm_data(&key.namespace, &format!("recast-inbox-{}", key.name))
            .await?;
        Ok(data
            .into_iter()
            .map(|(id, text)| (id, serde_json::from_str(&text).ok()))
            .collect())
    }

    async fn ack_input(&self, key: &Key, id: &str) -> Result<(), BackendError> {
        self.check_leader()?;
        let name = format!("recast-inbox-{}", key.name);
        match self
            .cms(&key.namespace)
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
        self.check_leader()?;
        // The resourceVersion makes the write conditional: a pause, abort or approval that
        // landed since the wave was read is a 409, and the wave is decided again.
        let patch = json!({
            "apiVersion": recast_crds::API_VERSION,
            "kind": "ReimageWave",
            "metadata": {"name": wave.name_any(), "resourceVersion": wave.resource_version()},
            "status": status,
        });
        Api::<ReimageWave>::namespaced(
            self.client.clone(),
            &wave.namespace().unwrap_or_else(|| "default".into()),
        )
        .patch_status(
            &wave.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map(|_| ())
        .map_err(kube_err)
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

/// Where an endpoint's action journal lives: a ConfigMap next to it.
fn journal_location(ep: &Endpoint) -> (String, String) {
    (ns_of(ep), format!("recast-journal-{}", ep.name_any()))
}

/// Settings of the leader-elected controller.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Namespace of the Lease (the operator's own namespace).
    pub lease_namespace: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub lease_grace: Duration,
    /// Watch only this namespace (a namespaced install); None watches all.
    pub watch_namespace: Option<String>,
    /// The artifact store the GoldenImage controller fills (the boot root); None runs no
    /// image controller in this process.
    pub image_store: Option<std::path::PathBuf>,
    /// How often silent endpoints' BMC event logs are read.
    pub bmc_watch_interval: Duration,
    /// Limits of the image controller's sandboxed deep check.
    pub deep_check_limits: recast_golden::sandbox::Limits,
}

/// Runs the endpoint controller while this replica holds the lease, until `shutdown`.
pub async fn run<P: PowerControl>(
    client: Client,
    power: Arc<P>,
    metrics: Arc<crate::metrics::Metrics>,
    opts: KubeOptions,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let leader = Arc::new(AtomicBool::new(false));
    let (mut backend, trigger) =
        KubeBackend::connect(client.clone(), &opts, leader.clone()).await?;
    let inbox_index: Arc<std::sync::Mutex<std::collections::HashSet<Key>>> = Default::default();
    backend.inboxes = Some(inbox_index.clone());
    let backend = Arc::new(backend);
    if let Some(root) = &opts.image_store {
        // Every replica keeps its own cache filled; only the leader writes image status.
        let images = crate::golden::ImageController::new(
            backend.clone(),
            crate::golden::fetch::ArtifactStore { root: root.clone() },
        )?
        .with_deep_check_limits(opts.deep_check_limits);
        tokio::spawn(Arc::new(images).run(shutdown.clone()));
    }
    let ctrl = Arc::new(
        Controller::new(backend, power, Arc::new(super::SystemClock), metrics)
            .with_bmc_watch_interval(opts.bmc_watch_interval),
    );

    // Setting up the lease reads (or creates) it: an apiserver that is restarting or briefly
    // unreachable is waited for, not a reason to exit (the e2e suite restarts it).
    let mut wait = Duration::from_secs(1);
    let lease = loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
            .with_namespace(opts.lease_namespace.clone())
            .with_identity(opts.identity.clone())
            .with_duration(opts.lease_duration.as_secs())
            .with_grace(opts.lease_grace.as_secs())
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await;
        match built {
            Ok(lease) => break lease,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot set up leader election yet: is the apiserver reachable, and may this identity get and create Leases in {}?", opts.lease_namespace);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    };
    let (mut is_leader, lease_task) = lease.watch().await;
    ready.store(true, Ordering::SeqCst);
    tracing::info!(identity = %opts.identity, "waiting for the {LEASE_NAME} lease");

    loop {
        // Wait for leadership or shutdown.
        loop {
            if *shutdown.borrow() {
                drop(is_leader);
                let _ = lease_task.await;
                return Ok(());
            }
            if *is_leader.borrow() {
                break;
            }
            tokio::select! {
                r = is_leader.changed() => if r.is_err() { return Err("leader election stopped".into()) },
                _ = shutdown.changed() => {}
            }
        }
        leader.store(true, Ordering::SeqCst);
        tracing::info!(identity = %opts.identity, "became leader; starting the endpoint controller");
        // Without the fleet index, limits and the failure budget would read zero: no
        // reconcile runs until every endpoint is loaded.
        let mut primed = false;
        while !primed && *is_leader.borrow() && !*shutdown.borrow() {
            match ctrl.prime().await {
                Ok(_) => primed = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load endpoints; retrying in 2s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        if !primed {
            leader.store(false, Ordering::SeqCst);
            continue;
        }
        let mut lost = is_leader.clone();
        let mut stop = shutdown.clone();
        let end = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        let endpoints = scoped::<Endpoint>(&client, opts.watch_namespace.as_deref());
        let inbox_index = inbox_index.clone();
        let inboxes = scoped::<ConfigMap>(&client, opts.watch_namespace.as_deref());
        // Bounded concurrency: unbounded, a cold start over thousands of endpoints floods the
        // apiserver with parallel writes and holds every in-flight request in memory.
        let mut kc = KubeController::new(endpoints, watcher::Config::default().any_semantic())
            .with_config(kube::runtime::controller::Config::default().concurrency(16))
            .watches(
                inboxes,
                watcher::Config::default().labels(&format!("{INBOX_LABEL}=true")),
                move |cm: ConfigMap| {
                    let ns = cm.namespace();
                    // Note which endpoints have something queued, before their reconcile runs.
                    if let Some(name) = cm.annotations().get(ENDPOINT_ANNOTATION) {
                        let key = Key {
                            namespace: ns.clone().unwrap_or_else(|| "default".into()),
                            name: name.clone(),
                        };
                        let mut known = inbox_index.lock().unwrap_or_else(|p| p.into_inner());
                        if cm.data.as_ref().is_some_and(|d| !d.is_empty()) {
                            known.insert(key);
                        } else {
                            known.remove(&key);
                        }
                    }
                    cm.annotations()
                        .get(ENDPOINT_ANNOTATION)
                        .map(|name| {
                            let r = ObjectRef::<Endpoint>::new(name);
                            match ns {
                                Some(ns) => r.within(&ns),
                                None => r,
                            }
                        })
                        .into_iter()
                        .collect::<Vec<_>>()
                },
            )
            .graceful_shutdown_on(end);
        // A policy or image change re-evaluates every endpoint; each term subscribes afresh.
        kc = kc.reconcile_all_on(changes(trigger.subscribe()));
        // Endpoints per phase, from the controller's own watch cache.
        let cache = kc.store();
        let metrics = ctrl.metrics.clone();
        // Silent endpoints' BMC logs are read by the lease holder only.
        let bmc_watch = tokio::spawn(
            ctrl.clone()
                .watch_bmcs(ctrl.bmc_watch_interval, shutdown.clone()),
        );
        let gauge = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                metrics.set_phases(
                    cache
                        .state()
                        .iter()
                        .map(|ep| ep.status.as_ref().and_then(|s| s.phase)),
                );
            }
        });
        // Waves run beside the endpoints, under the same lease and shutdown.
        let mut lost = is_leader.clone();
        let mut stop = shutdown.clone();
        let wave_end = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        let wave_kc = KubeController::new(
            scoped::<ReimageWave>(&client, opts.watch_namespace.as_deref()),
            watcher::Config::default().any_semantic(),
        )
        // A busy batch changes endpoint statuses many times a second; one wave reconcile (a
        // LIST of the namespace) per second is enough to follow them.
        .with_config(kube::runtime::controller::Config::default().debounce(WAVE_DEBOUNCE));
        // An endpoint change re-evaluates the waves of its namespace that have not settled.
        let wave_cache = wave_kc.store();
        let waves = wave_kc
            .watches(
                scoped::<Endpoint>(&client, opts.watch_namespace.as_deref()),
                watcher::Config::default().any_semantic(),
                move |ep: Endpoint| {
                    let ns = ep.namespace();
                    wave_cache
                        .state()
                        .iter()
                        .filter(|w| {
                            w.namespace() == ns
                                && !w.status.as_ref().is_some_and(crate::core::wave::settled)
                        })
                        .map(|w| ObjectRef::from_obj(&**w))
                        .collect::<Vec<_>>()
                },
            )
            .graceful_shutdown_on(wave_end)
            .run(reconcile_wave::<P>, wave_error_policy::<P>, ctrl.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "wave reconcile error");
                }
            });
        let endpoints = kc
            .run(reconcile::<P>, error_policy::<P>, ctrl.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "reconcile error");
                }
            });
        futures::future::join(endpoints, waves).await;
        gauge.abort();
        bmc_watch.abort();
        leader.store(false, Ordering::SeqCst);
        tracing::info!("endpoint controller stopped (leadership lost or shutting down)");
        if *shutdown.borrow() {
            drop(is_leader);
            let _ = lease_task.await;
            return Ok(());
        }
    }
}

/// A stream of change notifications; a lagging receiver still yields one (nothing is lost by
/// coalescing: the controller re-reads everything anyway).
fn changes(
    rx: tokio::sync::broadcast::Receiver<()>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
}

fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: tokio::sync::broadcast::Sender<()>,
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
        )
        .applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if item.is_ok() {
                let _ = changed.send(());
            }
        }
    });
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(String);

async fn reconcile<P: PowerControl>(
    ep: Arc<Endpoint>,
    ctrl: Arc<Controller<KubeBackend, P>>,
) -> Result<KubeAction, ReconcileError> {
    let key = Key::of(&ep);
    match ctrl
        .reconcile_cached(&key, Input::Reconcile, Some((*ep).clone()))
        .await
    {
        Ok(Some(after)) => Ok(KubeAction::requeue(after)),
        Ok(None) => Ok(KubeAction::requeue(Duration::from_secs(300))),
        Err(e) => Err(ReconcileError(e.to_string())),
    }
}

/// How often a running wave is looked at even when nothing seems to change (a missed watch
/// event, a pause between batches running out).
const WAVE_POLL: Duration = Duration::from_secs(15);
/// Endpoint changes re-evaluate a wave at most this often.
const WAVE_DEBOUNCE: Duration = Duration::from_secs(1);

async fn reconcile_wave<P: PowerControl>(
    w: Arc<ReimageWave>,
    ctrl: Arc<Controller<KubeBackend, P>>,
) -> Result<KubeAction, ReconcileError> {
    let ns = w.namespace().unwrap_or_else(|| "default".into());
    match ctrl.reconcile_wave_and_members(&ns, &w.name_any()).await {
        Ok(Some(after)) => Ok(KubeAction::requeue(after.min(WAVE_POLL))),
        Ok(None) => Ok(KubeAction::requeue(Duration::from_secs(300))),
        Err(e) => Err(ReconcileError(e.to_string())),
    }
}

fn wave_error_policy<P: PowerControl>(
    w: Arc<ReimageWave>,
    e: &ReconcileError,
    _ctrl: Arc<Controller<KubeBackend, P>>,
) -> KubeAction {
    tracing::warn!(wave = %w.name_any(), error = %e, "wave reconcile failed; retrying in 5s");
    KubeAction::requeue(Duration::from_secs(5))
}

fn error_policy<P: PowerControl>(
    ep: Arc<Endpoint>,
    e: &ReconcileError,
    _ctrl: Arc<Controller<KubeBackend, P>>,
) -> KubeAction {
    tracing::warn!(endpoint = %ep.name_any(), error = %e, "reconcile failed; retrying in 5s");
    KubeAction::requeue(Duration::from_secs(5))
}

/// The boot intent as the data of its `recast-boot-NAME` ConfigMap (string values, as
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

impl crate::boot::BootIntents for KubeBackend {
    async fn boot_lookup(
        &self,
        mac: &str,
    ) -> Result<(crate::boot::Known, Option<BootIntent>), BackendError> {
        // A machine network-boots rarely (once per reimage or per fall-back), so a list per
        // boot is cheap next to keeping a MAC index of the whole fleet in every replica.
        let endpoints: Api<Endpoint> = scoped(&self.client, self.watch_namespace.as_deref());
        let list = endpoints
            .list(&ListParams::default())
            .await
            .map_err(kube_err)?;
        let owner = list.items.iter().find(|ep| {
            ep.metadata.deletion_timestamp.is_none()
                && ep
                    .spec
                    .identity
                    .mac_addresses
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(mac))
        });
        let known = match owner {
            Some(ep) => crate::boot::Known::Endpoint {
                namespace: ns_of(ep),
                name: ep.name_any(),
                wds: ep.spec.boot_server == recast_crds::endpoint::BootServer::Wds,
            },
            None => crate::boot::Known::Unknown,
        };
        let cms: Api<ConfigMap> = scoped(&self.client, self.watch_namespace.as_deref());
        let maps = cms
            .list(&ListParams::default().labels(&format!("{BOOT_LABEL}=true")))
            .await
            .map_err(kube_err)?;
        let intent = maps.items.iter().find_map(|cm| {
            let endpoint = cm.name_any().strip_prefix("recast-boot-")?.to_string();
            let intent = boot_intent_from_data(&cm.namespace()?, &endpoint, cm.data.as_ref()?)?;
            intent
                .mac_addresses
                .iter()
                .any(|m| m.eq_ignore_ascii_case(mac))
                .then_some(intent)
        });
        Ok((known, intent))
    }

    async fn boot_intent_of(&self, key: &Key) -> Result<Option<BootIntent>, BackendError> {
        let name = format!("recast-boot-{}", key.name);
        match self.cms(&key.namespace).get_opt(&name).await {
            Ok(Some(cm)) => Ok(cm
                .data
                .as_ref()
                .and_then(|d| boot_intent_from_data(&key.namespace, &key.name, d))),
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

impl crate::golden::ImageBackend for KubeBackend {
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
        let ns = gi.namespace().unwrap_or_else(|| "default".into());
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
