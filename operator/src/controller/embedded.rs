//! The controller on the embedded store: the Backend implementation over SQLite, and the loop
//! that follows the store's change feed and requeue timers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use recast_crds::Endpoint;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::golden_image::GoldenImage;
use recast_crds::manifest::Kind;
use recast_crds::policy::RemediationPolicy;
use recast_crds::wave::{ReimageWave, ReimageWaveStatus};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{Backend, BackendError, Controller, Journal, Key};
use crate::bmc::PowerControl;
use crate::boot::BootIntent;
use recast_core::lifecycle::{Input, Notice, NoticeType};
use recast_core::time;
use crate::store::embedded::{
    BOOT_FINALIZER, EmbeddedStore, EventRecord, JournalState, StoreError,
};

pub struct EmbeddedBackend {
    pub store: Arc<EmbeddedStore>,
}

fn other(e: StoreError) -> BackendError {
    match e {
        StoreError::Conflict { .. } => BackendError::Conflict(e.to_string()),
        e => BackendError::Other(e.to_string()),
    }
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        other(e)
    }
}

fn decode<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, BackendError> {
    serde_json::from_value(v)
        .map_err(|e| BackendError::Other(format!("stored object does not decode: {e}")))
}

fn event_record(notice: &Notice, now: Timestamp) -> EventRecord {
    EventRecord {
        time: time::format(now),
        type_: match notice.type_ {
            NoticeType::Normal => "Normal".into(),
            NoticeType::Warning => "Warning".into(),
        },
        reason: notice.reason.clone(),
        message: notice.message.clone(),
    }
}

fn ns_name(ep: &Endpoint) -> (String, String) {
    (
        ep.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        ep.metadata.name.clone().unwrap_or_default(),
    )
}

impl Backend for EmbeddedBackend {
    async fn endpoint(&self, key: &Key) -> Result<Option<Endpoint>, BackendError> {
        self.store
            .get(Kind::Endpoint, &key.namespace, &key.name)
            .map_err(other)?
            .map(decode)
            .transpose()
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, BackendError> {
        self.store.list_each(Kind::Endpoint, None, decode)
    }

    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<RemediationPolicy>, BackendError> {
        self.store
            .get(Kind::RemediationPolicy, namespace, name)
            .map_err(other)?
            .map(decode)
            .transpose()
    }

    async fn golden_images(&self, namespace: &str) -> Result<Vec<GoldenImage>, BackendError> {
        self.store
            .list_each(Kind::GoldenImage, Some(namespace), decode)
    }

    async fn write_status(
        &self,
        ep: &Endpoint,
        status: &EndpointStatus,
    ) -> Result<Option<Endpoint>, BackendError> {
        let (ns, name) = ns_name(ep);
        let value = serde_json::to_value(status).map_err(|e| BackendError::Other(e.to_string()))?;
        self.store
            .write_status(Kind::Endpoint, &ns, &name, ep.metadata.generation, &value)
            .map(|_| None)
            .map_err(other)
    }

    async fn record(
        &self,
        ep: &Endpoint,
        notice: &Notice,
        now: Timestamp,
    ) -> Result<(), BackendError> {
        let (ns, name) = ns_name(ep);
        self.store
            .record_event(Kind::Endpoint, &ns, &name, &event_record(notice, now))
            .map_err(other)
    }

    async fn ensure_finalizer(&self, ep: &Endpoint) -> Result<Option<Endpoint>, BackendError> {
        if ep
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == BOOT_FINALIZER))
        {
            return Ok(None);
        }
        let (ns, name) = ns_name(ep);
        self.store
            .ensure_finalizer(Kind::Endpoint, &ns, &name, BOOT_FINALIZER)
            .map(|()| None)
            .map_err(other)
    }

    async fn remove_finalizer(&self, ep: &Endpoint) -> Result<(), BackendError> {
        let (ns, name) = ns_name(ep);
        self.store
            .remove_finalizer(Kind::Endpoint, &ns, &name, BOOT_FINALIZER)
            .map_err(other)
    }

    async fn arm_boot(&self, _ep: &Endpoint, intent: &BootIntent) -> Result<(), BackendError> {
        self.store.arm_boot(intent).map_err(other)
    }

    async fn disarm_boot(&self, key: &Key) -> Result<(), BackendError> {
        self.store
            .disarm_boot(&key.namespace, &key.name)
            .map(|_| ())
            .map_err(other)
    }

    async fn journal_begin(&self, _ep: &Endpoint, key: &str) -> Result<Journal, BackendError> {
        Ok(match self.store.journal_begin(key).map_err(other)? {
            JournalState::New => Journal::New,
            JournalState::Interrupted => Journal::Interrupted,
            JournalState::Done => Journal::Done,
        })
    }

    async fn journal_finish(&self, _ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.store.journal_finish(key).map_err(other)
    }

    async fn journal_forget(&self, _ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.store.journal_forget(key).map_err(other)
    }

    async fn post_input(&self, key: &Key, input: &Input) -> Result<(), BackendError> {
        let value = serde_json::to_value(input).map_err(|e| BackendError::Other(e.to_string()))?;
        self.store
            .post_input(&key.namespace, &key.name, &value)
            .map(|_| ())
            .map_err(other)
    }

    async fn pending_inputs(
        &self,
        key: &Key,
    ) -> Result<Vec<(String, Option<Input>)>, BackendError> {
        Ok(self
            .store
            .inputs_for(&key.namespace, &key.name)
            .map_err(other)?
            .into_iter()
            .map(|(seq, text)| (seq.to_string(), serde_json::from_str(&text).ok()))
            .collect())
    }

    async fn ack_input(&self, _key: &Key, id: &str) -> Result<(), BackendError> {
        let seq: i64 = id
            .parse()
            .map_err(|_| BackendError::Other(format!("bad inbox id {id:?}")))?;
        self.store.ack_input(seq).map_err(other)
    }

    async fn waves(&self) -> Result<Vec<ReimageWave>, BackendError> {
        self.store.list_each(Kind::ReimageWave, None, decode)
    }

    async fn wave(&self, namespace: &str, name: &str) -> Result<Option<ReimageWave>, BackendError> {
        self.store
            .get(Kind::ReimageWave, namespace, name)
            .map_err(other)?
            .map(decode)
            .transpose()
    }

    async fn write_wave_status(
        &self,
        wave: &ReimageWave,
        status: &ReimageWaveStatus,
    ) -> Result<(), BackendError> {
        let ns = wave.metadata.namespace.as_deref().unwrap_or("default");
        let name = wave.metadata.name.as_deref().unwrap_or_default();
        let value = serde_json::to_value(status).map_err(|e| BackendError::Other(e.to_string()))?;
        // The generation precondition refuses a decision taken before a pause, an abort or an
        // approval that landed since the wave was read.
        self.store
            .write_status(
                Kind::ReimageWave,
                ns,
                name,
                wave.metadata.generation,
                &value,
            )
            .map(|_| ())
            .map_err(other)
    }

    async fn record_wave(
        &self,
        wave: &ReimageWave,
        notice: &Notice,
        now: Timestamp,
    ) -> Result<(), BackendError> {
        let ns = wave.metadata.namespace.as_deref().unwrap_or("default");
        let name = wave.metadata.name.as_deref().unwrap_or_default();
        self.store
            .record_event(Kind::ReimageWave, ns, name, &event_record(notice, now))
            .map_err(other)
    }
}

/// How often the loop looks at the change feed when nothing is due (writes by recastctl come
/// from another process, so there is no in-process signal for them).
const POLL: Duration = Duration::from_millis(200);
/// Every endpoint is reconciled at least this often, whatever the feed says.
const RESYNC: Duration = Duration::from_secs(300);
/// After a failed reconcile.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// Endpoint changes re-evaluate the waves of their namespace at most this often.
const WAVE_COALESCE: Duration = Duration::from_secs(1);

/// Runs the endpoint controller on the embedded store until `shutdown` turns true.
pub async fn run<P: PowerControl>(
    ctrl: Arc<Controller<EmbeddedBackend, P>>,
    mut shutdown: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
) -> Result<(), BackendError> {
    let store = ctrl.backend.store.clone();
    let primed = ctrl.prime().await?;
    let mut cursor = store.latest_change().map_err(other)?;
    let mut due: BTreeMap<Key, Instant> = BTreeMap::new();
    // Waves, keyed by (namespace, name); each is reconciled at start, so a restart rebuilds
    // which endpoints are due from the waves' status before any endpoint decides.
    let mut waves_due: BTreeMap<(String, String), Instant> = BTreeMap::new();
    let start = Instant::now();
    for key in endpoint_keys(&store, None)? {
        due.insert(key, start);
    }
    for w in ctrl.backend.waves().await? {
        waves_due.insert(wave_id(&w), start);
    }
    tracing::info!(endpoints = primed, "embedded controller started");
    tokio::spawn(
        ctrl.clone()
            .watch_bmcs(ctrl.bmc_watch_interval, shutdown.clone()),
    );
    ready.store(true, Ordering::SeqCst);
    let mut last_resync = Instant::now();
    let mut last_metrics = Instant::now() - Duration::from_secs(3600);
    loop {
        if *shutdown.borrow() {
            tracing::info!("embedded controller stopping");
            return Ok(());
        }
        // Follow the change feed.
        let mut endpoint_namespaces = std::collections::BTreeSet::new();
        // Namespaces whose policy or images changed: every endpoint there is due, once however
        // many changes the feed holds.
        let mut namespaces_due = std::collections::BTreeSet::new();
        loop {
            let changes = store.changes_since(cursor, 1000).map_err(other)?;
            if changes.is_empty() {
                break;
            }
            for ch in &changes {
                cursor = ch.seq;
                match ch.kind {
                    Kind::Endpoint => {
                        endpoint_namespaces.insert(ch.namespace.clone());
                        due.insert(
                            Key {
                                namespace: ch.namespace.clone(),
                                name: ch.name.clone(),
                            },
                            Instant::now(),
                        );
                    }
                    Kind::RemediationPolicy | Kind::GoldenImage => {
                        namespaces_due.insert(ch.namespace.clone());
                    }
                    Kind::ReimageWave => {
                        waves_due.insert((ch.namespace.clone(), ch.name.clone()), Instant::now());
                    }
                }
            }
        }
        for ns in namespaces_due {
            for key in endpoint_keys(&store, Some(&ns))? {
                due.insert(key, Instant::now());
            }
        }
        // Endpoints moved: the waves over them may have a batch to close or open. Finished
        // waves with nothing running have nothing left to count.
        if !endpoint_namespaces.is_empty() {
            for w in ctrl.backend.waves().await? {
                let (ns, _) = wave_id(&w);
                if endpoint_namespaces.contains(&ns)
                    && !w.status.as_ref().is_some_and(recast_core::wave::settled)
                {
                    // Coalesced: a busy batch writes endpoint statuses many times a second,
                    // and each wave reconcile reads the whole namespace.
                    let soon = Instant::now() + WAVE_COALESCE;
                    let slot = waves_due.entry(wave_id(&w)).or_insert(soon);
                    *slot = (*slot).min(soon);
                }
            }
        }
        let now = Instant::now();
        let ready_waves: Vec<(String, String)> = waves_due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in ready_waves {
            waves_due.remove(&(ns.clone(), name.clone()));
            match ctrl.reconcile_wave(&ns, &name).await {
                Ok(step) => {
                    for key in step.due {
                        due.insert(key, Instant::now());
                    }
                    if let Some(after) = step.requeue_after {
                        waves_due.insert((ns, name), Instant::now() + after);
                    }
                }
                Err(e) => {
                    tracing::warn!(wave = %format!("{ns}/{name}"), error = %e, "wave reconcile failed; retrying in {ERROR_BACKOFF:?}");
                    waves_due.insert((ns, name), Instant::now() + ERROR_BACKOFF);
                }
            }
        }
        if last_resync.elapsed() >= RESYNC {
            last_resync = Instant::now();
            for key in endpoint_keys(&store, None)? {
                due.entry(key).or_insert_with(Instant::now);
            }
            for w in ctrl.backend.waves().await? {
                waves_due.entry(wave_id(&w)).or_insert_with(Instant::now);
            }
            store.compact_changes(cursor).map_err(other)?;
        }
        // Reconcile what is due.
        let now = Instant::now();
        let ready_keys: Vec<Key> = due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready_keys {
            due.remove(&key);
            match ctrl.reconcile(&key, Input::Reconcile).await {
                Ok(Some(after)) => {
                    let at = Instant::now() + after;
                    let slot = due.entry(key).or_insert(at);
                    *slot = (*slot).min(at);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %key, error = %e, "reconcile failed; retrying in {ERROR_BACKOFF:?}");
                    due.insert(key, Instant::now() + ERROR_BACKOFF);
                }
            }
            if *shutdown.borrow() {
                break;
            }
            // The store's calls complete without awaiting, so a backlog of thousands of
            // decisions would otherwise hold this worker thread until it is done: give the
            // runtime's other tasks (the gateway's requests) their turn between decisions.
            tokio::task::yield_now().await;
        }
        if last_metrics.elapsed() >= Duration::from_secs(15) {
            last_metrics = Instant::now();
            // From the controller's own index: reading and decoding the whole fleet every 15 s
            // would cost a fleet's worth of memory and hold the store from the gateway.
            ctrl.metrics.set_phases(ctrl.phases().into_iter());
        }
        let next = due
            .values()
            .chain(waves_due.values())
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + POLL);
        let wait = next.saturating_duration_since(Instant::now()).min(POLL);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn wave_id(w: &ReimageWave) -> (String, String) {
    (
        w.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        w.metadata.name.clone().unwrap_or_default(),
    )
}

/// Which endpoints exist (in one namespace or all), without reading them.
fn endpoint_keys(store: &EmbeddedStore, namespace: Option<&str>) -> Result<Vec<Key>, BackendError> {
    Ok(store
        .names(Kind::Endpoint, namespace)?
        .into_iter()
        .map(|(namespace, name)| Key { namespace, name })
        .collect())
}

impl crate::boot::BootIntents for EmbeddedBackend {
    async fn boot_lookup(
        &self,
        mac: &str,
    ) -> Result<(crate::boot::Known, Option<BootIntent>), BackendError> {
        let owners = self.store.endpoints_by_mac(mac).map_err(other)?;
        let known = crate::boot::Known::from_owners(
            owners
                .into_iter()
                .map(|(ns, name, boot_server)| (ns, name, boot_server.as_deref() == Some("wds")))
                .collect(),
        );
        let intent = self.store.boot_intent(mac).map_err(other)?;
        Ok((known, intent))
    }

    async fn boot_intent_of(&self, key: &Key) -> Result<Option<BootIntent>, BackendError> {
        self.store
            .boot_intent_of(&key.namespace, &key.name)
            .map_err(other)
    }

    async fn record_discovered(&self, mac: &str, detail: &str) -> Result<(), BackendError> {
        self.store
            .record_discovered(mac, &time::format(Timestamp::now()), detail)
            .map_err(other)
    }
}

impl crate::golden::ImageBackend for EmbeddedBackend {
    async fn all_golden_images(&self) -> Result<Vec<GoldenImage>, BackendError> {
        self.store
            .list(Kind::GoldenImage, None)
            .map_err(other)?
            .into_iter()
            .map(decode)
            .collect()
    }

    async fn write_image_status(
        &self,
        gi: &GoldenImage,
        status: &recast_crds::golden_image::GoldenImageStatus,
    ) -> Result<(), BackendError> {
        let ns = gi.metadata.namespace.as_deref().unwrap_or("default");
        let name = gi.metadata.name.as_deref().unwrap_or_default();
        let value = serde_json::to_value(status).map_err(|e| BackendError::Other(e.to_string()))?;
        self.store
            .write_status(Kind::GoldenImage, ns, name, gi.metadata.generation, &value)
            .map(|_| ())
            .map_err(other)
    }

    async fn record_image(&self, gi: &GoldenImage, notice: &Notice) -> Result<(), BackendError> {
        let ns = gi.metadata.namespace.as_deref().unwrap_or("default");
        let name = gi.metadata.name.as_deref().unwrap_or_default();
        let ev = event_record(notice, Timestamp::now());
        self.store
            .record_event(Kind::GoldenImage, ns, name, &ev)
            .map_err(other)
    }
}
