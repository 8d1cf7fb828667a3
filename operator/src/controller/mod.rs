//! The endpoint controller: the shell around `core::lifecycle::decide`, shared by both
//! backends. It reads an endpoint and its context, asks the core, persists the status first,
//! then runs the actions idempotently and feeds their results back, until nothing is left.

pub mod admission;
pub mod bmc_watch;
pub mod embedded;
pub mod kube;
pub mod policy_status;
pub mod wave;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use recast_crds::Endpoint;
use recast_crds::endpoint::EndpointStatus;

use crate::bmc::PowerControl;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Backend, BackendError, Journal, Key};
use recast_core::fleet::FleetIndex;
use recast_core::image::resolve_image;
use recast_core::lifecycle::{
    Action, ActionError, ActionKind, Context, Decision, EndpointView, ImageView, Input, Notice,
    decide,
};
use recast_core::policy::PolicyView;
use recast_core::transitions::Edge;

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
    /// The last error writing each policy's status, by "namespace/name" (said once).
    policy_status_failures: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// One reconcile per endpoint at a time (the loop and the gateway both feed inputs).
    key_locks: std::sync::Mutex<std::collections::HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// How often the lease holder reads silent endpoints' BMC event logs.
    pub bmc_watch_interval: Duration,
    /// The fleet-wide circuit breaker (the operator's flags; None: off).
    pub fleet_breaker: Option<FleetBreaker>,
    /// The operator's ceiling on attempts running fleet-wide, above every namespace's own
    /// limit (None: none).
    pub fleet_ceiling: Option<u32>,
    /// Where Wake-on-LAN packets go (`--wake-on-lan-*`).
    pub wake: crate::wake::WakeConfig,
    /// The multicast sessions of the boot service in this process, shown in each wave
    /// batch's status (None: no sessions here).
    pub sessions: Option<Arc<dyn wave::BatchSessions>>,
}

/// The default ceiling on attempts running fleet-wide (`--max-concurrent-reimages`).
pub const DEFAULT_FLEET_CEILING: u32 = 100;

/// The fleet-wide breaker across every namespace: set by the operator's flags, never by a
/// tenant; a person resets it on the RemediationPolicy "default" of `reset_namespace` (the
/// operator's own namespace, where tenants cannot write).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetBreaker {
    /// None: 2% of all endpoints, at least 5 and at most 100.
    pub max_starts: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    pub window: Duration,
    pub reset_namespace: String,
}

impl Default for FleetBreaker {
    fn default() -> Self {
        FleetBreaker {
            max_starts: None,
            window: Duration::from_secs(3600),
            reset_namespace: recast_crds::DEFAULT_NAMESPACE.to_string(),
        }
    }
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
            policy_status_failures: Default::default(),
            sessions: None,
            key_locks: Default::default(),
            bmc_watch_interval: bmc_watch::DEFAULT_INTERVAL,
            fleet_breaker: Some(FleetBreaker::default()),
            fleet_ceiling: Some(DEFAULT_FLEET_CEILING),
            wake: Default::default(),
        }
    }

    /// Where Wake-on-LAN packets go.
    pub fn with_wake(mut self, wake: crate::wake::WakeConfig) -> Self {
        self.wake = wake;
        self
    }

    /// Shows the boot service's multicast sessions in the waves' batch status.
    pub fn with_sessions(mut self, sessions: Option<Arc<dyn wave::BatchSessions>>) -> Self {
        self.sessions = sessions;
        self
    }

    /// The operator's ceiling on attempts running fleet-wide (None: none).
    pub fn with_fleet_ceiling(mut self, ceiling: Option<u32>) -> Self {
        self.fleet_ceiling = ceiling;
        self
    }

    /// The fleet-wide breaker's settings (None turns it off).
    pub fn with_fleet_breaker(mut self, breaker: Option<FleetBreaker>) -> Self {
        self.fleet_breaker = breaker;
        self
    }

    /// The fleet-wide breaker's settings with its last reset, read from the RemediationPolicy
    /// "default" of its reset namespace.
    async fn fleet_breaker_settings(
        &self,
    ) -> Result<Option<recast_core::fleet::BreakerSettings>, BackendError> {
        let Some(fb) = &self.fleet_breaker else {
            return Ok(None);
        };
        let reset = match self
            .backend
            .policy(
                &fb.reset_namespace,
                recast_crds::policy::DEFAULT_POLICY_NAME,
            )
            .await?
        {
            Some(p) => {
                match PolicyView::from_policy(recast_crds::policy::DEFAULT_POLICY_NAME, &p) {
                    Ok(v) => v.fleet_breaker_reset,
                    Err(e) => {
                        tracing::warn!(error = %e, "the fleet breaker's reset cannot be read; it counts every automatic start");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Some(recast_core::fleet::BreakerSettings {
            max_starts: fb.max_starts.clone(),
            window: fb.window,
            reset,
        }))
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

    fn policy_status_failures(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.policy_status_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
            namespace: key.namespace.as_str(),
            name: key.name.as_str(),
            uid: &uid,
            generation: ep.metadata.generation,
            spec: &ep.spec,
            status: &status,
        };
        let namespace_breaker = recast_core::fleet::BreakerSettings::of_policy(&policy);
        let fleet_breaker = self.fleet_breaker_settings().await?;
        let decide_now = |now: Timestamp| {
            let fleet = self.index().view_for(
                &key.to_string(),
                ep.spec.site.as_deref(),
                now,
                policy.budget_window,
                recast_core::fleet::Breakers {
                    namespace: &namespace_breaker,
                    fleet: fleet_breaker.as_ref(),
                    fleet_ceiling: self.fleet_ceiling,
                },
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
            let way = |s: &EndpointStatus| s.active_attempt.as_ref().and_then(|a| a.power_way);
            if let Some(w) = way(&d.status)
                && way(before) != Some(w)
            {
                self.metrics.power_way(w);
            }
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
                        .ok_or_else(|| BackendError::Conflict(format!("{key} disappeared")))?;
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
    ) -> Result<Vec<crate::store::arming::MacConflict>, BackendError> {
        let key = Key::of(ep);
        let all = self.backend.endpoints().await?;
        Ok(crate::store::arming::mac_conflicts(
            (&key.namespace, &key.name, &ep.spec.identity.mac_addresses),
            all.iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .map(|o| {
                    (
                        recast_crds::namespace_of(&o.metadata),
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
            }
            | Action::WakeOnLan {
                attempt_id,
                try_number,
                ..
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
                let intent = crate::store::BootIntent::for_action(ep, action, self.clock.now());
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
            Action::WakeOnLan { mac_addresses, .. } => {
                // Sending twice wakes nothing twice; a deposed leader still stops here.
                self.backend.ensure_leader()?;
                match self.wake.wake(mac_addresses).await {
                    Ok(what) => {
                        let notice = Notice {
                            type_: recast_core::lifecycle::NoticeType::Normal,
                            reason: "WakeOnLanSent".into(),
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
        crate::store::policy_of(self.backend.as_ref(), ep).await
    }

    async fn image_for(&self, ep: &Endpoint) -> Result<Option<ImageView>, BackendError> {
        let ns = recast_crds::namespace_of(&ep.metadata);
        let images = self.backend.golden_images(ns).await?;
        Ok(resolve_image(&ep.spec.image, &images))
    }
}
