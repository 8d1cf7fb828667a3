//! The endpoint controller: the shell around `core::lifecycle::decide`, shared by both
//! backends. It reads an endpoint and its context, asks the core, persists the status first,
//! then runs the actions idempotently and feeds their results back, until nothing is left.

pub mod admission;
pub mod bmc_watch;
pub mod boot_watch;
pub mod embedded;
pub mod kube;
pub mod wave;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::golden_image::GoldenImage;
use recast_crds::policy::{DEFAULT_POLICY_NAME, RemediationPolicy};
use recast_crds::wave::{ReimageWave, ReimageWaveStatus};
use recast_crds::{ConditionStatus, Endpoint};

use crate::bmc::PowerControl;
use recast_core::build::Build;
use recast_core::fleet::FleetIndex;
use recast_core::lifecycle::{
    Action, ActionError, ActionKind, Context, Decision, EndpointView, ImageView, Input, Notice,
    decide,
};
use recast_core::policy::PolicyView;
use recast_core::transitions::Edge;
use crate::metrics::Metrics;

/// "namespace/name" of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn of(ep: &Endpoint) -> Key {
        Key {
            namespace: ep
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: ep.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

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
    #[error("{0}")]
    Other(String),
}

/// What journal says about an action key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    New,
    Interrupted,
    Done,
}

/// What the controller needs from a store. Both backends implement it.
pub trait Backend: Send + Sync + 'static {
    fn endpoint(
        &self,
        key: &Key,
    ) -> impl Future<Output = Result<Option<Endpoint>, BackendError>> + Send;
    fn endpoints(&self) -> impl Future<Output = Result<Vec<Endpoint>, BackendError>> + Send;
    fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<RemediationPolicy>, BackendError>> + Send;
    fn golden_images(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<GoldenImage>, BackendError>> + Send;
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
    /// Makes the boot service hand the endpoint's MACs the imaging environment (idempotent).
    fn arm_boot(
        &self,
        ep: &Endpoint,
        intent: &crate::boot::BootIntent,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Back to local boot for every MAC of the endpoint (idempotent).
    fn disarm_boot(&self, key: &Key) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Drops what the backend keeps beside a deleted endpoint (its journal and inbox) where
    /// nothing else collects it (idempotent). Called once the endpoint is gone or finalizing.
    fn release(&self, key: &Key) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = key;
        async { Ok(()) }
    }
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
    /// Queues an input for an endpoint (the gateway and boot service use this); it is kept
    /// until a decision on it has been persisted.
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
    /// Every ReimageWave the controller watches. Backends without waves have none.
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
        async { Err(BackendError::Other("this backend keeps no waves".into())) }
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
    /// Fencing right before an irreversible side effect (a BMC power cycle): a replica that
    /// lost the lease since it decided must not act. Single-writer backends always may.
    fn ensure_leader(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The clock, injected so tests can move time.
/// The policy an endpoint answers to, for the gateway and the boot service: a missing or broken
/// policy counts as the built-in defaults, as the controller does (which also reports the
/// problem on the endpoint).
pub async fn policy_view_for<B: Backend>(
    backend: &B,
    ep: &Endpoint,
) -> Result<PolicyView, BackendError> {
    let ns = ep.metadata.namespace.as_deref().unwrap_or("default");
    let name = ep.spec.policy_ref.as_deref().unwrap_or(DEFAULT_POLICY_NAME);
    Ok(match backend.policy(ns, name).await? {
        Some(p) => PolicyView::from_spec(name, &p.spec).unwrap_or_else(|_| PolicyView::built_in()),
        None => PolicyView::built_in(),
    })
}

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

pub struct Controller<B: Backend, P: PowerControl> {
    pub backend: Arc<B>,
    pub power: Arc<P>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Where Warning notices go besides the event log (replace with `with_notifier`).
    notifier: Arc<dyn crate::notify::Notifier>,
    index: std::sync::Mutex<FleetIndex>,
    /// Serialises decisions that start an attempt, so two endpoints never take the last slot.
    start_lock: tokio::sync::Mutex<()>,
    /// Endpoints whose wave batch is due, with the wave's name; kept by `reconcile_wave`
    /// (see controller/wave.rs) and read when the endpoint's lifecycle decides.
    wave_due: std::sync::Mutex<std::collections::HashMap<Key, String>>,
    /// One reconcile per endpoint at a time (the loop and the gateway both feed inputs).
    key_locks: std::sync::Mutex<std::collections::HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// How often the lease holder reads silent endpoints' BMC event logs.
    pub bmc_watch_interval: Duration,
}

/// At most this many inputs are processed in one reconcile (a guard against a loop).
const MAX_STEPS: usize = 32;

impl<B: Backend, P: PowerControl> Controller<B, P> {
    pub fn new(
        backend: Arc<B>,
        power: Arc<P>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Controller {
            backend,
            power,
            clock,
            metrics,
            notifier: Arc::new(crate::notify::LogNotifier),
            index: std::sync::Mutex::new(FleetIndex::default()),
            start_lock: tokio::sync::Mutex::new(()),
            wave_due: Default::default(),
            key_locks: Default::default(),
            bmc_watch_interval: bmc_watch::DEFAULT_INTERVAL,
        }
    }

    /// Reads silent endpoints' BMC event logs this often instead of every two minutes.
    pub fn with_bmc_watch_interval(mut self, interval: Duration) -> Self {
        self.bmc_watch_interval = interval;
        self
    }

    fn key_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.key_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget locks nobody holds, so the map does not grow with deleted endpoints.
        if locks.len() > 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key.clone()).or_default().clone()
    }

    /// Sends Warning notices to `notifier` instead of the log.
    pub fn with_notifier(mut self, notifier: Arc<dyn crate::notify::Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    fn index(&self) -> std::sync::MutexGuard<'_, FleetIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every endpoint's phase, from the fleet index (for the per-phase gauge).
    pub fn phases(&self) -> Vec<Option<recast_crds::endpoint::EndpointPhase>> {
        self.index().phases().collect()
    }

    /// Loads every endpoint into the fleet index (at start, before the first decision).
    pub async fn prime(&self) -> Result<usize, BackendError> {
        let all = self.backend.endpoints().await?;
        let mut idx = self.index();
        // Start from nothing: entries from an earlier leadership term may be gone or stale.
        *idx = FleetIndex::default();
        // Likewise which endpoints waves made due: another replica may have moved the waves
        // on; the first wave reconciles of this term say afresh.
        self.wave_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for ep in &all {
            let key = Key::of(ep);
            idx.upsert(
                &key.to_string(),
                ep.spec.site.as_deref(),
                &ep.status.clone().unwrap_or_default(),
            );
        }
        Ok(all.len())
    }

    /// Reconciles one endpoint with one input; returns when to look again.
    pub async fn reconcile(
        &self,
        key: &Key,
        input: Input,
    ) -> Result<Option<Duration>, BackendError> {
        self.reconcile_cached(key, input, None).await
    }

    /// Like `reconcile`, starting from a copy of the endpoint the caller already has (from a
    /// watch cache). A stale copy costs nothing but a retry: status writes carry the copy's
    /// resourceVersion as a precondition, and a conflict reads the endpoint afresh.
    pub async fn reconcile_cached(
        &self,
        key: &Key,
        input: Input,
        cached: Option<Endpoint>,
    ) -> Result<Option<Duration>, BackendError> {
        let lock = self.key_lock(key);
        let _guard = lock.lock().await;
        let started = std::time::Instant::now();
        let result = self.drain_then(key, input, cached).await;
        self.metrics
            .observe_reconcile(started.elapsed(), result.as_ref().err());
        result
    }

    /// Decides on the endpoint's queued inputs (acknowledging each once its decision is
    /// persisted), then on `input`.
    async fn drain_then(
        &self,
        key: &Key,
        input: Input,
        mut cached: Option<Endpoint>,
    ) -> Result<Option<Duration>, BackendError> {
        let pending = self.backend.pending_inputs(key).await?;
        if !pending.is_empty() {
            // Queued inputs are acknowledged once decided: decide them on a fresh read only.
            cached = None;
        }
        for (id, queued) in pending {
            match queued {
                Some(queued) => {
                    self.reconcile_inner(key, queued, cached.take()).await?;
                }
                None => tracing::warn!(endpoint = %key, id, "dropping an unreadable queued input"),
            }
            self.backend.ack_input(key, &id).await?;
        }
        self.reconcile_inner(key, input, cached).await
    }

    async fn reconcile_inner(
        &self,
        key: &Key,
        input: Input,
        cached: Option<Endpoint>,
    ) -> Result<Option<Duration>, BackendError> {
        let mut inputs = VecDeque::from([input]);
        // A cached copy may be stale: its decisions are trusted only once a write carrying its
        // resourceVersion succeeded; otherwise the endpoint is read afresh before acting.
        let mut known_is_fresh = cached.is_none();
        let mut known = cached;
        let mut requeue = None;
        let mut steps = 0;
        let mut conflicts = 0;
        while let Some(input) = inputs.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                tracing::warn!(endpoint = %key, "reconcile stopped after {MAX_STEPS} steps; continuing on the next pass");
                return Ok(Some(Duration::from_secs(1)));
            }
            let ep = match known.take() {
                Some(ep) => ep,
                None => match self.backend.endpoint(key).await? {
                    Some(ep) => ep,
                    None => {
                        // Gone without passing the finalizer (deleted before its first attempt,
                        // or removed by hand): make sure nothing is left armed for it.
                        self.backend.disarm_boot(key).await?;
                        self.backend.release(key).await?;
                        self.index().remove(&key.to_string());
                        return Ok(None);
                    }
                },
            };
            if ep.metadata.deletion_timestamp.is_some() {
                self.finalize(&ep).await?;
                self.index().remove(&key.to_string());
                return Ok(None);
            }
            let decision = match self.decide_and_persist(key, &ep, &input).await {
                Ok((d, stored)) => {
                    let wrote = stored.is_some();
                    let was_fresh = known_is_fresh;
                    known = stored;
                    known_is_fresh = true;
                    if !was_fresh && !wrote && !d.actions.is_empty() {
                        // Nothing verified this copy, and acting on it could repeat a side
                        // effect a newer status already moved past: read and decide again.
                        inputs.push_front(input);
                        continue;
                    }
                    d
                }
                Err(BackendError::Conflict(why)) if conflicts < 5 => {
                    conflicts += 1;
                    tracing::debug!(endpoint = %key, "status write conflicted ({why}); deciding again");
                    inputs.push_front(input);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = self.clock.now();
            for n in &decision.notices {
                self.backend.record(&ep, n, now).await?;
                if n.type_ == recast_core::lifecycle::NoticeType::Warning {
                    self.notifier.notify(key, n);
                }
            }
            if let Some(a) = &decision.status.active_attempt {
                crate::failpoint::hit(&format!("after-persist:{:?}", a.step)).await;
            }
            // The finalizer goes on before a boot is armed (and stays), so deleting the
            // endpoint can never leave the machine booting into the imaging environment.
            let mut current = known.clone().unwrap_or_else(|| ep.clone());
            let arms = decision
                .actions
                .iter()
                .any(|a| a.kind() == ActionKind::ArmBoot);
            if arms && let Some(updated) = self.ensure_finalizer_fresh(key, &current).await? {
                current = updated.clone();
                known = Some(updated);
            }
            for action in &decision.actions {
                if let Some(next) = self.execute(&current, action).await? {
                    crate::failpoint::hit(&format!("after-action:{}", action.kind().as_str()))
                        .await;
                    inputs.push_back(next);
                }
            }
            requeue = decision.requeue_after;
        }
        Ok(requeue)
    }

    async fn decide_and_persist(
        &self,
        key: &Key,
        ep: &Endpoint,
        input: &Input,
    ) -> Result<(Decision, Option<Endpoint>), BackendError> {
        let (policy, policy_problem) = self.policy_for(ep).await?;
        let image = self.image_for(ep).await?;
        let status = ep.status.clone().unwrap_or_default();
        let wave = self.wave_view_for(key, &status).await?;
        let uid = ep.metadata.uid.clone().unwrap_or_default();
        let view = EndpointView {
            name: key.name.as_str(),
            uid: &uid,
            generation: ep.metadata.generation,
            spec: &ep.spec,
            status: &status,
        };
        let decide_now = |now: Timestamp| {
            let fleet = self.index().view_for(
                &key.to_string(),
                ep.spec.site.as_deref(),
                now,
                policy.budget_window,
            );
            let ctx = Context {
                now,
                policy: &policy,
                policy_problem: policy_problem.as_deref(),
                image: image.as_ref(),
                fleet,
                wave: wave.as_ref(),
            };
            decide(view, input, ctx)
        };
        let decision = decide_now(self.clock.now());
        if decision.edge != Some(Edge::AttemptStarted) {
            let stored = self.persist(key, ep, &status, &decision).await?;
            return Ok((decision, stored));
        }
        // Starting takes a slot: decide again under the lock, with the index as it is now.
        let _slot = self.start_lock.lock().await;
        let decision = decide_now(self.clock.now());
        let stored = self.persist(key, ep, &status, &decision).await?;
        Ok((decision, stored))
    }

    async fn persist(
        &self,
        key: &Key,
        ep: &Endpoint,
        before: &EndpointStatus,
        d: &Decision,
    ) -> Result<Option<Endpoint>, BackendError> {
        let mut stored = None;
        if d.status != *before {
            stored = self.backend.write_status(ep, &d.status).await?;
            self.metrics.status_write();
            if let Some(edge) = d.edge {
                self.metrics.transition(edge);
                if matches!(edge, Edge::CheckedIn | Edge::Quarantined | Edge::Aborted)
                    && let Some(h) = d.status.history.first()
                {
                    self.metrics.attempt_finished(h);
                }
            }
        }
        self.index()
            .upsert(&key.to_string(), ep.spec.site.as_deref(), &d.status);
        Ok(stored)
    }

    /// Adds the finalizer, reading the endpoint again when the copy was stale. Returns the
    /// updated object when the backend hands it back.
    async fn ensure_finalizer_fresh(
        &self,
        key: &Key,
        ep: &Endpoint,
    ) -> Result<Option<Endpoint>, BackendError> {
        let mut ep = ep.clone();
        for _ in 0..5 {
            match self.backend.ensure_finalizer(&ep).await {
                Ok(updated) => return Ok(updated),
                Err(BackendError::Conflict(_)) => {
                    ep = self
                        .backend
                        .endpoint(key)
                        .await?
                        .ok_or_else(|| BackendError::Other(format!("{key} disappeared")))?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(BackendError::Conflict(format!(
            "{key}: finalizer kept conflicting"
        )))
    }

    async fn finalize(&self, ep: &Endpoint) -> Result<(), BackendError> {
        // Whatever happens to the object, the machine must not be left booting into the
        // imaging environment.
        self.backend.disarm_boot(&Key::of(ep)).await?;
        self.backend.release(&Key::of(ep)).await?;
        self.backend.remove_finalizer(ep).await
    }

    /// MACs of `ep` that another Endpoint lists too. Admission refuses that on both backends;
    /// this is the controller's own check, for objects that got in anyway.
    async fn ambiguous_macs(
        &self,
        ep: &Endpoint,
    ) -> Result<Vec<crate::boot::intent::MacConflict>, BackendError> {
        let key = Key::of(ep);
        let all = self.backend.endpoints().await?;
        Ok(crate::boot::intent::mac_conflicts(
            (&key.namespace, &key.name, &ep.spec.identity.mac_addresses),
            all.iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .map(|o| {
                    (
                        o.metadata.namespace.as_deref().unwrap_or("default"),
                        o.metadata.name.as_deref().unwrap_or_default(),
                        o.spec.identity.mac_addresses.as_slice(),
                    )
                }),
        ))
    }

    /// Runs one action idempotently; returns the input that reports its result.
    async fn execute(&self, ep: &Endpoint, action: &Action) -> Result<Option<Input>, BackendError> {
        let key = action.idempotency_key();
        let (attempt_id, try_number) = match action {
            Action::ArmBoot {
                attempt_id,
                try_number,
                ..
            }
            | Action::PowerCycle {
                attempt_id,
                try_number,
            } => (attempt_id.clone(), *try_number),
            Action::DisarmBoot { attempt_id } => {
                // Naturally idempotent, and needed again after every failed try; the core keeps
                // asking until this confirmation lands.
                self.backend.disarm_boot(&Key::of(ep)).await?;
                self.metrics.action(action.kind());
                return Ok(Some(Input::ActionSucceeded {
                    attempt_id: attempt_id.clone(),
                    try_number: 0,
                    action: action.kind(),
                }));
            }
        };
        let ok = Input::ActionSucceeded {
            attempt_id: attempt_id.clone(),
            try_number,
            action: action.kind(),
        };
        let journal = self.backend.journal_begin(ep, &key).await?;
        if journal == Journal::Done {
            return Ok(Some(ok));
        }
        let result = match action {
            Action::ArmBoot { mac_addresses, .. } => {
                let intent = crate::boot::BootIntent::for_action(ep, action, self.clock.now());
                let conflicts = self.ambiguous_macs(ep).await?;
                if !conflicts.is_empty() {
                    // Never arm a MAC another Endpoint claims: the machine that boots with it
                    // may be the other one. The try fails (retried with backoff, quarantined
                    // after the policy's tries) and says why.
                    let why = conflicts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    let notice = Notice {
                        type_: recast_core::lifecycle::NoticeType::Warning,
                        reason: "AmbiguousMac".into(),
                        message: format!(
                            "attempt {attempt_id} try {try_number}: not arming the network boot: {why}; a MAC address must belong to one Endpoint"
                        ),
                    };
                    self.backend.record(ep, &notice, self.clock.now()).await?;
                    self.notifier.notify(&Key::of(ep), &notice);
                    Err(ActionError {
                        permanent: false,
                        message: format!("ambiguous MAC address: {why}"),
                    })
                } else {
                    match self.backend.arm_boot(ep, &intent).await {
                        Ok(()) => {
                            let notice = Notice {
                                type_: recast_core::lifecycle::NoticeType::Normal,
                                reason: "BootArmed".into(),
                                message: format!(
                                    "attempt {attempt_id} try {try_number}: network boot armed for {}",
                                    mac_addresses.join(", ")
                                ),
                            };
                            self.backend.record(ep, &notice, self.clock.now()).await?;
                            Ok(())
                        }
                        Err(e) => Err(ActionError {
                            permanent: false,
                            message: e.to_string(),
                        }),
                    }
                }
            }
            Action::PowerCycle { .. } => {
                // A deposed leader stops here; the journal entry stays "started", so the next
                // leader resumes with maybe_done and asks the BMC before cycling.
                self.backend.ensure_leader()?;
                // Interrupted means a power cycle may already have happened; the BMC driver
                // is told so it can check before cycling a machine that is already booting.
                match self
                    .power
                    .power_cycle(ep, &attempt_id, try_number, journal == Journal::Interrupted)
                    .await
                {
                    Ok(what) => {
                        let notice = Notice {
                            type_: recast_core::lifecycle::NoticeType::Normal,
                            // A resumed cycle is told apart: the driver checked, not cycled blind.
                            reason: if journal == Journal::Interrupted {
                                "PowerCycleResumed".into()
                            } else {
                                "PowerCycle".into()
                            },
                            message: format!("attempt {attempt_id} try {try_number}: {what}"),
                        };
                        self.backend.record(ep, &notice, self.clock.now()).await?;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Action::DisarmBoot { .. } => Ok(()),
        };
        match result {
            Ok(()) => {
                self.backend.journal_finish(ep, &key).await?;
                self.metrics.action(action.kind());
                Ok(Some(ok))
            }
            Err(error) => {
                self.backend.journal_forget(ep, &key).await?;
                Ok(Some(Input::ActionFailed {
                    attempt_id,
                    try_number,
                    action: action.kind(),
                    error,
                }))
            }
        }
    }

    async fn policy_for(
        &self,
        ep: &Endpoint,
    ) -> Result<(PolicyView, Option<String>), BackendError> {
        let ns = ep.metadata.namespace.as_deref().unwrap_or("default");
        let named = ep.spec.policy_ref.as_deref();
        let name = named.unwrap_or(DEFAULT_POLICY_NAME);
        match self.backend.policy(ns, name).await? {
            Some(p) => match PolicyView::from_spec(name, &p.spec) {
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

    async fn image_for(&self, ep: &Endpoint) -> Result<Option<ImageView>, BackendError> {
        let ns = ep.metadata.namespace.as_deref().unwrap_or("default");
        let images = self.backend.golden_images(ns).await?;
        Ok(resolve_image(&ep.spec.image, &images))
    }
}

/// The GoldenImage an endpoint's spec.image resolves to. A channel resolves to the newest
/// Verified image that lists it in status.channels (or, before the image controller has run,
/// in spec.channels, unverified).
pub fn resolve_image(
    image: &recast_crds::endpoint::ImageRef,
    images: &[GoldenImage],
) -> Option<ImageView> {
    let view = |gi: &GoldenImage| {
        let verified = gi.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Verified" && c.status == ConditionStatus::True)
        });
        ImageView {
            name: gi.metadata.name.clone().unwrap_or_default(),
            digest: gi
                .status
                .as_ref()
                .and_then(|s| s.digest.clone())
                .or_else(|| Some(gi.spec.sha256.clone())),
            verified,
            minimum_build: gi.spec.requirements.minimum_build.parse::<Build>().ok(),
        }
    };
    if let Some(name) = &image.golden_image {
        return images
            .iter()
            .find(|gi| gi.metadata.name.as_deref() == Some(name))
            .map(view);
    }
    let channel = image.channel.as_deref()?;
    let in_channel = |gi: &&GoldenImage| {
        gi.status
            .as_ref()
            .is_some_and(|s| s.channels.iter().any(|c| c == channel))
            || gi.spec.channels.iter().any(|c| c == channel)
    };
    images
        .iter()
        .filter(in_channel)
        .map(view)
        .max_by(|a, b| (a.verified, a.minimum_build).cmp(&(b.verified, b.minimum_build)))
}
