//! The store interface: what recast keeps and where. One interface, split into the roles its
//! users need (a boot service reads boot intents and queues inputs; it never writes status),
//! with two implementations: `embedded` (SQLite, the default, one process per site) and
//! `kube` (the Kubernetes API server). Everything above this module (controller, boot service,
//! gateway, image controller) reaches stored state only through these traits, so a test double
//! implements the roles its subject uses and nothing more.
//!
//! Layering (checked by tests/arch/check.py, see docs/architecture.md): the store depends on
//! recast-core and the API types only; it never imports the services built on it.

pub mod arming;
#[cfg(feature = "tokens")]
pub mod control;
pub mod embedded;
#[cfg(feature = "services")]
pub mod kube;
pub mod private;

use std::future::Future;

use jiff::Timestamp;
use recast_core::lifecycle::{Input, Notice};
use recast_core::policy::PolicyView;
use recast_crds::Endpoint;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::golden_image::{GoldenImage, GoldenImageStatus};
use recast_crds::policy::{DEFAULT_POLICY_NAME, RemediationPolicy, RemediationPolicyStatus};
use recast_crds::wave::{ReimageWave, ReimageWaveStatus};

pub use arming::{BootIntent, BootIntents};

/// "namespace/name" of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn of(ep: &Endpoint) -> Key {
        Key {
            namespace: recast_crds::namespace_of(&ep.metadata).to_string(),
            name: ep.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a store call failed, in the categories callers act on: retry at once (Conflict), stop
/// acting (NotLeader), retry shortly (NotReady, Unavailable), or give up on this object until
/// it changes (Invalid). `category()` names them for metrics and logs.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object changed since it was read; read again and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// This replica may not write (it lost the lease).
    #[error("not the leader")]
    NotLeader,
    /// The answer is not known yet (a cache still loading); ask again shortly.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The store could not be reached or failed (the API server, the SQLite file); transient
    /// as far as the caller can tell.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// What is stored does not decode, or a request the store refuses as malformed: retrying
    /// the same thing gives the same answer.
    #[error("invalid: {0}")]
    Invalid(String),
    /// This store does not keep that kind of object.
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
}

/// The categories of [`BackendError`], as metrics label them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    Conflict,
    NotLeader,
    NotReady,
    Unavailable,
    Invalid,
    Unsupported,
}

impl ErrorCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Conflict => "conflict",
            ErrorCategory::NotLeader => "not_leader",
            ErrorCategory::NotReady => "not_ready",
            ErrorCategory::Unavailable => "unavailable",
            ErrorCategory::Invalid => "invalid",
            ErrorCategory::Unsupported => "unsupported",
        }
    }
}

impl BackendError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            BackendError::Conflict(_) => ErrorCategory::Conflict,
            BackendError::NotLeader => ErrorCategory::NotLeader,
            BackendError::NotReady(_) => ErrorCategory::NotReady,
            BackendError::Unavailable(_) => ErrorCategory::Unavailable,
            BackendError::Invalid(_) => ErrorCategory::Invalid,
            BackendError::Unsupported(_) => ErrorCategory::Unsupported,
        }
    }
}

/// What journal says about an action key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    New,
    Interrupted,
    Done,
}

/// Endpoints and their status, events and finalizer.
/// What an endpoint's gateway facts are made of, as a version: the Endpoint's resourceVersion
/// and how many policy or image changes the backend has seen. Equal versions, equal facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactsVersion {
    pub endpoint: String,
    pub context: u64,
}

pub trait EndpointStore: Send + Sync + 'static {
    /// The current [`FactsVersion`] of an endpoint, where the backend watches for changes;
    /// None where it does not (the gateway then reloads facts by age).
    fn facts_version(&self, _key: &Key) -> Option<FactsVersion> {
        None
    }

    fn endpoint(
        &self,
        key: &Key,
    ) -> impl Future<Output = Result<Option<Endpoint>, BackendError>> + Send;
    fn endpoints(&self) -> impl Future<Output = Result<Vec<Endpoint>, BackendError>> + Send;
    /// Writes status, failing with Conflict when the endpoint changed since `ep` was read.
    /// Returns the stored object when the backend gets it back for free.
    fn write_status(
        &self,
        ep: &Endpoint,
        status: &EndpointStatus,
    ) -> impl Future<Output = Result<Option<Endpoint>, BackendError>> + Send;
    fn record(
        &self,
        ep: &Endpoint,
        notice: &Notice,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Adds the finalizer if missing; returns the updated object when it patched one.
    fn ensure_finalizer(
        &self,
        ep: &Endpoint,
    ) -> impl Future<Output = Result<Option<Endpoint>, BackendError>> + Send;
    fn remove_finalizer(
        &self,
        ep: &Endpoint,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Drops what the backend keeps beside a deleted endpoint (its journal and inbox) where
    /// nothing else collects it (idempotent). Called once the endpoint is gone or finalizing.
    fn release(&self, key: &Key) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = key;
        async { Ok(()) }
    }
}

/// What an endpoint's decisions read beside the endpoint: its policy and the images.
pub trait ContextStore: Send + Sync + 'static {
    fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<RemediationPolicy>, BackendError>> + Send;
    fn golden_images(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<GoldenImage>, BackendError>> + Send;
}

/// The endpoint's input queue: the gateway and boot service post, the controller consumes.
pub trait Inbox: Send + Sync + 'static {
    /// Queues an input for an endpoint; it is kept until a decision on it has been persisted.
    fn post_input(
        &self,
        key: &Key,
        input: &Input,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// The endpoint's queued inputs, oldest first; None for one that does not decode.
    fn pending_inputs(
        &self,
        key: &Key,
    ) -> impl Future<Output = Result<Vec<(String, Option<Input>)>, BackendError>> + Send;
    fn ack_input(
        &self,
        key: &Key,
        id: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// The action journal that makes each action run at most once per idempotency key.
pub trait ActionJournal: Send + Sync + 'static {
    fn journal_begin(
        &self,
        ep: &Endpoint,
        key: &str,
    ) -> impl Future<Output = Result<Journal, BackendError>> + Send;
    fn journal_finish(
        &self,
        ep: &Endpoint,
        key: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn journal_forget(
        &self,
        ep: &Endpoint,
        key: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// Arming and disarming the network boot (the boot service reads it through [`BootIntents`]).
pub trait BootArming: Send + Sync + 'static {
    /// Makes the boot service hand the endpoint's MACs the imaging environment (idempotent).
    fn arm_boot(
        &self,
        ep: &Endpoint,
        intent: &BootIntent,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Back to local boot for every MAC of the endpoint (idempotent).
    fn disarm_boot(&self, key: &Key) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// ReimageWaves. Stores without waves keep the defaults: none, and writes refused.
pub trait WaveStore: Send + Sync + 'static {
    /// Every ReimageWave the controller watches.
    fn waves(&self) -> impl Future<Output = Result<Vec<ReimageWave>, BackendError>> + Send {
        async { Ok(Vec::new()) }
    }
    fn wave(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ReimageWave>, BackendError>> + Send {
        let _ = (namespace, name);
        async { Ok(None) }
    }
    /// Writes a wave's status, failing with Conflict when the wave changed since it was read.
    fn write_wave_status(
        &self,
        wave: &ReimageWave,
        status: &ReimageWaveStatus,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = (wave, status);
        async { Err(BackendError::Unsupported("ReimageWave")) }
    }
    /// Records an event on a wave.
    fn record_wave(
        &self,
        wave: &ReimageWave,
        notice: &Notice,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = (wave, notice, now);
        async { Ok(()) }
    }
}

/// RemediationPolicies' status: their failure budget and breaker as the controller counts them.
/// Stores without it keep the defaults: no policies, and writes refused.
pub trait PolicyStatusStore: Send + Sync + 'static {
    /// Every RemediationPolicy the controller watches.
    fn all_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<RemediationPolicy>, BackendError>> + Send {
        async { Ok(Vec::new()) }
    }
    /// Writes a policy's status (the status subresource; the spec is left alone).
    fn write_policy_status(
        &self,
        policy: &RemediationPolicy,
        status: &RemediationPolicyStatus,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = (policy, status);
        async { Err(BackendError::Unsupported("RemediationPolicy status")) }
    }
}

/// Fencing right before an irreversible side effect (a BMC power cycle): a replica that lost
/// the lease since it decided must not act. Single-writer stores always may.
pub trait Fencing: Send + Sync + 'static {
    fn ensure_leader(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Everything the endpoint controller needs: every role at once. Implemented for any store
/// that has them all.
pub trait Backend:
    EndpointStore
    + ContextStore
    + Inbox
    + ActionJournal
    + BootArming
    + WaveStore
    + PolicyStatusStore
    + Fencing
{
}

impl<T> Backend for T where
    T: EndpointStore
        + ContextStore
        + Inbox
        + ActionJournal
        + BootArming
        + WaveStore
        + PolicyStatusStore
        + Fencing
{
}

/// What the image controller needs from a store beside the endpoints' context.
pub trait ImageStore: EndpointStore + ContextStore + Fencing {
    /// Every GoldenImage the controller watches, in all namespaces.
    fn all_golden_images(
        &self,
    ) -> impl Future<Output = Result<Vec<GoldenImage>, BackendError>> + Send;
    /// Writes status; a spec that changed since `gi` was read is a Conflict where the store
    /// can tell.
    fn write_image_status(
        &self,
        gi: &GoldenImage,
        status: &GoldenImageStatus,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn record_image(
        &self,
        gi: &GoldenImage,
        notice: &Notice,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// Where a boot-role replica's forwarded inputs go on the operator's side: the inbox, written
/// under an entry id chosen by the sender so a retried forward is queued once.
pub trait InputSink: Send + Sync + 'static {
    fn queue(
        &self,
        key: &Key,
        entry_id: &str,
        input: &Input,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// A Secret's data, key → bytes.
pub type SecretData = std::collections::BTreeMap<String, Vec<u8>>;
/// Secrets of one namespace by name.
pub type SecretMap = std::collections::BTreeMap<String, SecretData>;

/// `secrets` cut down to the keys `wanted` names (what a profile needs for one machine).
pub fn only_keys(
    mut secrets: SecretMap,
    wanted: &std::collections::BTreeMap<String, Vec<String>>,
) -> SecretMap {
    secrets.retain(|name, data| match wanted.get(name) {
        Some(keys) => {
            data.retain(|k, _| keys.contains(k));
            true
        }
        None => false,
    });
    secrets
}

/// Why an armed try's Secrets could not be read; `permanent` when a person must act (RBAC, a
/// refusal by the operator), not a hiccup to retry.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SecretsError {
    pub message: String,
    pub permanent: bool,
}

/// The Secrets an armed try's provisioning profile needs, read by whoever may read them: the
/// process itself (embedded, or the operator's own boot service), or, for a Kubernetes boot
/// pod whose ServiceAccount reads no Secrets, the operator on its behalf, for that try only.
pub trait TrySecrets: Send + Sync + 'static {
    /// `names`: the Secrets of the intent's namespace wanted; ones that do not exist are left
    /// out (the caller says which is missing). A reader may answer with what the try's own
    /// policy needs instead (the operator decides that itself).
    fn try_secrets<'a>(
        &'a self,
        intent: &'a BootIntent,
        names: &'a [String],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<SecretMap, SecretsError>> + Send + 'a>>;
}

/// The policy an endpoint answers to, and what is wrong with it when it cannot be used (a
/// missing or broken policy counts as the built-in defaults; the controller reports the
/// problem on the endpoint, the gateway and boot service just use the defaults).
pub async fn policy_of<S: ContextStore>(
    store: &S,
    ep: &Endpoint,
) -> Result<(PolicyView, Option<String>), BackendError> {
    let ns = recast_crds::namespace_of(&ep.metadata);
    let named = ep.spec.policy_ref.as_deref();
    let name = named.unwrap_or(DEFAULT_POLICY_NAME);
    match store.policy(ns, name).await? {
        Some(p) => match PolicyView::from_policy(name, &p) {
            Ok(v) => Ok((v, None)),
            Err(e) => Ok((PolicyView::built_in(), Some(e.to_string()))),
        },
        None if named.is_some() => Ok((
            PolicyView::built_in(),
            Some(format!(
                "RemediationPolicy {name:?} named by spec.policyRef does not exist"
            )),
        )),
        None => Ok((PolicyView::built_in(), None)),
    }
}

/// The policy view alone (see [`policy_of`]).
pub async fn policy_view_for<S: ContextStore>(
    store: &S,
    ep: &Endpoint,
) -> Result<PolicyView, BackendError> {
    Ok(policy_of(store, ep).await?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_its_category_for_metrics() {
        let cases = [
            (BackendError::Conflict("x".into()), "conflict"),
            (BackendError::NotLeader, "not_leader"),
            (BackendError::NotReady("x".into()), "not_ready"),
            (BackendError::Unavailable("x".into()), "unavailable"),
            (BackendError::Invalid("x".into()), "invalid"),
            (BackendError::Unsupported("ReimageWave"), "unsupported"),
        ];
        for (e, label) in cases {
            assert_eq!(e.category().as_str(), label, "{e}");
        }
    }
}
