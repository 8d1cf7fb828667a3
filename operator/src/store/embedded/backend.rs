//! The embedded store as the store interface: every role of `store::Backend` over the SQLite
//! store in `store::embedded`.

use std::sync::Arc;

use jiff::Timestamp;
use recast_core::lifecycle::{Input, Notice, NoticeType};
use recast_core::time;
use recast_crds::Endpoint;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::golden_image::GoldenImage;
use recast_crds::manifest::Kind;
use recast_crds::policy::{RemediationPolicy, RemediationPolicyStatus};
use recast_crds::wave::{ReimageWave, ReimageWaveStatus};
use serde::de::DeserializeOwned;

use super::{BOOT_FINALIZER, EmbeddedStore, EventRecord, JournalState, StoreError};
use crate::store::{
    ActionJournal, BackendError, BootArming, BootIntent, ContextStore, EndpointStore, Fencing,
    Inbox, Journal, Key, PolicyStatusStore, WaveStore,
};

pub struct EmbeddedBackend {
    pub store: Arc<EmbeddedStore>,
}

/// A SQLite store error in the store interface's categories.
fn categorize(e: StoreError) -> BackendError {
    match e {
        StoreError::Conflict { .. } => BackendError::Conflict(e.to_string()),
        StoreError::Sqlite(_) | StoreError::DataDir { .. } => {
            BackendError::Unavailable(e.to_string())
        }
        e => BackendError::Invalid(e.to_string()),
    }
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        categorize(e)
    }
}

fn decode<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, BackendError> {
    serde_json::from_value(v)
        .map_err(|e| BackendError::Invalid(format!("stored object does not decode: {e}")))
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
        recast_crds::namespace_of(&ep.metadata).to_string(),
        ep.metadata.name.clone().unwrap_or_default(),
    )
}

impl EmbeddedBackend {
    /// Writes the status of the object `meta` describes, if its generation is still the one
    /// read (a spec changed since then is a Conflict, and the caller decides again).
    fn write_status_of(
        &self,
        kind: Kind,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        status: &impl serde::Serialize,
    ) -> Result<(), BackendError> {
        let value =
            serde_json::to_value(status).map_err(|e| BackendError::Invalid(e.to_string()))?;
        self.store
            .write_status(
                kind,
                recast_crds::namespace_of(meta),
                meta.name.as_deref().unwrap_or_default(),
                meta.generation,
                &value,
            )
            .map(|_| ())
            .map_err(categorize)
    }
}

impl EndpointStore for EmbeddedBackend {
    async fn endpoint(&self, key: &Key) -> Result<Option<Endpoint>, BackendError> {
        self.store
            .get(Kind::Endpoint, &key.namespace, &key.name)
            .map_err(categorize)?
            .map(decode)
            .transpose()
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, BackendError> {
        self.store.list_each(Kind::Endpoint, None, decode)
    }

    async fn write_status(
        &self,
        ep: &Endpoint,
        status: &EndpointStatus,
    ) -> Result<Option<Endpoint>, BackendError> {
        let (ns, name) = ns_name(ep);
        let value =
            serde_json::to_value(status).map_err(|e| BackendError::Invalid(e.to_string()))?;
        self.store
            .write_status(Kind::Endpoint, &ns, &name, ep.metadata.generation, &value)
            .map(|_| None)
            .map_err(categorize)
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
            .map_err(categorize)
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
            .map_err(categorize)
    }

    async fn remove_finalizer(&self, ep: &Endpoint) -> Result<(), BackendError> {
        let (ns, name) = ns_name(ep);
        self.store
            .remove_finalizer(Kind::Endpoint, &ns, &name, BOOT_FINALIZER)
            .map_err(categorize)
    }
}

impl ContextStore for EmbeddedBackend {
    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<RemediationPolicy>, BackendError> {
        self.store
            .get(Kind::RemediationPolicy, namespace, name)
            .map_err(categorize)?
            .map(decode)
            .transpose()
    }

    async fn golden_images(&self, namespace: &str) -> Result<Vec<GoldenImage>, BackendError> {
        self.store
            .list_each(Kind::GoldenImage, Some(namespace), decode)
    }
}

impl PolicyStatusStore for EmbeddedBackend {
    async fn all_policies(&self) -> Result<Vec<RemediationPolicy>, BackendError> {
        // One stored policy that does not decode (an older release's) is left out and named,
        // not a reason to count none.
        let mut out = Vec::new();
        for v in self
            .store
            .list(Kind::RemediationPolicy, None)
            .map_err(categorize)?
        {
            let id = format!(
                "{}/{}",
                v.pointer("/metadata/namespace")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default(),
                v.pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default()
            );
            match decode::<RemediationPolicy>(v) {
                Ok(p) => out.push(p),
                Err(e) => {
                    tracing::warn!(policy = %id, error = %e, "a stored RemediationPolicy does not decode; its status is not written")
                }
            }
        }
        Ok(out)
    }

    async fn write_policy_status(
        &self,
        policy: &RemediationPolicy,
        status: &RemediationPolicyStatus,
    ) -> Result<(), BackendError> {
        // observedGeneration says which spec the figures were counted with: a spec changed
        // since the read is a Conflict, and the next pass counts again.
        self.write_status_of(Kind::RemediationPolicy, &policy.metadata, status)
    }
}

impl Inbox for EmbeddedBackend {
    async fn post_input(&self, key: &Key, input: &Input) -> Result<(), BackendError> {
        let value =
            serde_json::to_value(input).map_err(|e| BackendError::Invalid(e.to_string()))?;
        self.store
            .post_input(&key.namespace, &key.name, &value)
            .map(|_| ())
            .map_err(categorize)
    }

    async fn pending_inputs(
        &self,
        key: &Key,
    ) -> Result<Vec<(String, Option<Input>)>, BackendError> {
        Ok(self
            .store
            .inputs_for(&key.namespace, &key.name)
            .map_err(categorize)?
            .into_iter()
            .map(|(seq, text)| (seq.to_string(), serde_json::from_str(&text).ok()))
            .collect())
    }

    async fn ack_input(&self, _key: &Key, id: &str) -> Result<(), BackendError> {
        let seq: i64 = id
            .parse()
            .map_err(|_| BackendError::Invalid(format!("bad inbox id {id:?}")))?;
        self.store.ack_input(seq).map_err(categorize)
    }
}

impl ActionJournal for EmbeddedBackend {
    async fn journal_begin(&self, _ep: &Endpoint, key: &str) -> Result<Journal, BackendError> {
        Ok(match self.store.journal_begin(key).map_err(categorize)? {
            JournalState::New => Journal::New,
            JournalState::Interrupted => Journal::Interrupted,
            JournalState::Done => Journal::Done,
        })
    }

    async fn journal_finish(&self, _ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.store.journal_finish(key).map_err(categorize)
    }

    async fn journal_forget(&self, _ep: &Endpoint, key: &str) -> Result<(), BackendError> {
        self.store.journal_forget(key).map_err(categorize)
    }
}

impl BootArming for EmbeddedBackend {
    async fn arm_boot(&self, _ep: &Endpoint, intent: &BootIntent) -> Result<(), BackendError> {
        self.store.arm_boot(intent).map_err(categorize)
    }

    async fn disarm_boot(&self, key: &Key) -> Result<(), BackendError> {
        self.store
            .disarm_boot(&key.namespace, &key.name)
            .map(|_| ())
            .map_err(categorize)
    }
}

impl WaveStore for EmbeddedBackend {
    async fn waves(&self) -> Result<Vec<ReimageWave>, BackendError> {
        self.store.list_each(Kind::ReimageWave, None, decode)
    }

    async fn wave(&self, namespace: &str, name: &str) -> Result<Option<ReimageWave>, BackendError> {
        self.store
            .get(Kind::ReimageWave, namespace, name)
            .map_err(categorize)?
            .map(decode)
            .transpose()
    }

    async fn write_wave_status(
        &self,
        wave: &ReimageWave,
        status: &ReimageWaveStatus,
    ) -> Result<(), BackendError> {
        // The generation precondition refuses a decision taken before a pause, an abort or an
        // approval that landed since the wave was read.
        self.write_status_of(Kind::ReimageWave, &wave.metadata, status)
    }

    async fn record_wave(
        &self,
        wave: &ReimageWave,
        notice: &Notice,
        now: Timestamp,
    ) -> Result<(), BackendError> {
        let ns = recast_crds::namespace_of(&wave.metadata);
        let name = wave.metadata.name.as_deref().unwrap_or_default();
        self.store
            .record_event(Kind::ReimageWave, ns, name, &event_record(notice, now))
            .map_err(categorize)
    }
}

impl Fencing for EmbeddedBackend {}

impl crate::store::BootIntents for EmbeddedBackend {
    async fn boot_lookup(
        &self,
        mac: &str,
    ) -> Result<(crate::store::arming::Known, Option<BootIntent>), BackendError> {
        let owners = self.store.endpoints_by_mac(mac).map_err(categorize)?;
        let known = crate::store::arming::Known::from_owners(owners);
        let intent = self.store.boot_intent(mac).map_err(categorize)?;
        Ok((known, intent))
    }

    async fn boot_intent_of(&self, key: &Key) -> Result<Option<BootIntent>, BackendError> {
        self.store
            .boot_intent_of(&key.namespace, &key.name)
            .map_err(categorize)
    }

    async fn record_discovered(&self, mac: &str, detail: &str) -> Result<(), BackendError> {
        self.store
            .record_discovered(mac, &time::format(Timestamp::now()), detail)
            .map_err(categorize)
    }
}

impl crate::store::ImageStore for EmbeddedBackend {
    async fn all_golden_images(&self) -> Result<Vec<GoldenImage>, BackendError> {
        self.store
            .list(Kind::GoldenImage, None)
            .map_err(categorize)?
            .into_iter()
            .map(decode)
            .collect()
    }

    async fn write_image_status(
        &self,
        gi: &GoldenImage,
        status: &recast_crds::golden_image::GoldenImageStatus,
    ) -> Result<(), BackendError> {
        self.write_status_of(Kind::GoldenImage, &gi.metadata, status)
    }

    async fn record_image(&self, gi: &GoldenImage, notice: &Notice) -> Result<(), BackendError> {
        let ns = recast_crds::namespace_of(&gi.metadata);
        let name = gi.metadata.name.as_deref().unwrap_or_default();
        let ev = event_record(notice, Timestamp::now());
        self.store
            .record_event(Kind::GoldenImage, ns, name, &ev)
            .map_err(categorize)
    }
}
