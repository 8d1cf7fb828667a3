//! The controller on Kubernetes: the leader-elected kube-rs Controller that drives the
//! Kubernetes store (store/kube). Only the holder of the `recast-operator` Lease runs it; every
//! write also checks the lease, so a replica that just lost it writes nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::controller::Action as KubeAction;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller as KubeController, watcher};
use kube::{Client, ResourceExt};
use recast_crds::Endpoint;
use recast_crds::wave::ReimageWave;
use tokio::sync::watch;

use super::Controller;
use crate::bmc::PowerControl;
use crate::store::kube::{
    ControlKind, FIELD_MANAGER, INBOX_LABEL, KubeBackend, LEASE_NAME, Scope, control_owner, scoped,
};
use crate::store::{BackendError, ErrorCategory, Key};
use recast_core::lifecycle::Input;

/// Settings of the leader-elected controller.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// The multicast sessions of this process's boot service, shown in the waves' status.
    pub sessions: Option<Arc<dyn crate::controller::wave::BatchSessions>>,
    /// Namespace of the Lease (the operator's own namespace).
    pub lease_namespace: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub lease_grace: Duration,
    /// Watch only this namespace (a namespaced install); None watches all.
    pub watch_namespace: Option<String>,
    /// The operator's own namespace, where boot intents, journals and inboxes live; no tenant
    /// may write there.
    pub control_namespace: String,
    /// The artifact store the GoldenImage controller fills (the boot root, its staging
    /// directory, and what image sources may reach); None runs no image controller in this
    /// process.
    pub image_store: Option<crate::golden::ImageConfig>,
    /// How often silent endpoints' BMC event logs are read.
    pub bmc_watch_interval: Duration,
    /// Where Wake-on-LAN packets go.
    pub wake: crate::wake::WakeConfig,
    /// Limits of the image controller's sandboxed deep check.
    pub deep_check_limits: recast_golden::sandbox::Limits,
    /// The fleet-wide breaker (its reset lives in the control namespace); None: off.
    pub fleet_breaker: Option<super::FleetBreaker>,
    /// The ceiling on attempts running fleet-wide (None: none).
    pub fleet_ceiling: Option<u32>,
}

impl KubeOptions {
    /// What the store needs of these settings.
    pub fn scope(&self) -> Scope {
        Scope {
            identity: self.identity.clone(),
            watch_namespace: self.watch_namespace.clone(),
            control_namespace: self.control_namespace.clone(),
        }
    }
}

/// Runs the endpoint controller while this replica holds the lease, until `shutdown`, on the
/// caches of `store` (connected once per process; see [`KubeBackend::sibling`]).
pub async fn run<P: PowerControl>(
    client: Client,
    store: &KubeBackend,
    power: Arc<P>,
    metrics: Arc<crate::metrics::Metrics>,
    opts: KubeOptions,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let leader = Arc::new(AtomicBool::new(false));
    let (ctrl, inbox_index) =
        build_controller(store, leader.clone(), power, metrics, &opts, &shutdown)?;
    let Some(lease) = set_up_lease(&client, &opts, &mut shutdown).await else {
        return Ok(());
    };
    let (mut is_leader, lease_task) = lease.watch().await;
    ready.store(true, Ordering::SeqCst);
    tracing::info!(identity = %opts.identity, "waiting for the {LEASE_NAME} lease");

    loop {
        if !wait_for_leadership(&mut is_leader, &mut shutdown).await? {
            drop(is_leader);
            let _ = lease_task.await;
            return Ok(());
        }
        leader.store(true, Ordering::SeqCst);
        tracing::info!(identity = %opts.identity, "became leader; starting the endpoint controller");
        if !prime_while_leading(&ctrl, &is_leader, &shutdown).await {
            leader.store(false, Ordering::SeqCst);
            continue;
        }
        lead(&client, &ctrl, &opts, &inbox_index, &is_leader, &shutdown).await;
        leader.store(false, Ordering::SeqCst);
        tracing::info!("endpoint controller stopped (leadership lost or shutting down)");
        if *shutdown.borrow() {
            drop(is_leader);
            let _ = lease_task.await;
            return Ok(());
        }
    }
}

/// Which endpoints have something queued in their inbox (kept by the inbox watch).
type InboxIndex = Arc<std::sync::Mutex<std::collections::HashSet<Key>>>;

/// The endpoint controller on a sibling of `store` whose writes check `leader`, and the inbox
/// index it reads; with an image store, also starts this replica's image controller.
fn build_controller<P: PowerControl>(
    store: &KubeBackend,
    leader: Arc<AtomicBool>,
    power: Arc<P>,
    metrics: Arc<crate::metrics::Metrics>,
    opts: &KubeOptions,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Arc<Controller<KubeBackend, P>>, InboxIndex), String> {
    let mut backend = store.sibling(leader);
    let inbox_index: InboxIndex = Default::default();
    backend.inboxes = Some(inbox_index.clone());
    let backend = Arc::new(backend);
    if let Some(config) = &opts.image_store {
        // Every replica keeps its own cache filled; only the leader writes image status.
        let images = crate::golden::ImageController::new(backend.clone(), config.clone())?
            .with_deep_check_limits(opts.deep_check_limits);
        tokio::spawn(Arc::new(images).run(shutdown.clone()));
    }
    let ctrl = Arc::new(
        Controller::new(backend, power, Arc::new(crate::clock::SystemClock), metrics)
            .with_bmc_watch_interval(opts.bmc_watch_interval)
            .with_wake(opts.wake.clone())
            .with_sessions(opts.sessions.clone())
            // The fleet breaker's reset is read from the control namespace, where no tenant
            // writes; a namespaced install (one watched namespace, no rights elsewhere) reads
            // it from that namespace, which is the whole fleet it sees.
            .with_fleet_breaker(opts.fleet_breaker.clone().map(|b| {
                super::FleetBreaker {
                    reset_namespace: opts
                        .watch_namespace
                        .clone()
                        .unwrap_or_else(|| opts.control_namespace.clone()),
                    ..b
                }
            }))
            .with_fleet_ceiling(opts.fleet_ceiling),
    );
    Ok((ctrl, inbox_index))
}

/// Setting up the lease reads (or creates) it: an apiserver that is restarting or briefly
/// unreachable is waited for, not a reason to exit (the e2e suite restarts it). None when
/// shutdown came first.
async fn set_up_lease(
    client: &Client,
    opts: &KubeOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<kube_lease_manager::LeaseManager> {
    let mut wait = Duration::from_secs(1);
    loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
            .with_namespace(opts.lease_namespace.clone())
            .with_identity(opts.identity.clone())
            .with_duration(opts.lease_duration.as_secs())
            .with_grace(opts.lease_grace.as_secs())
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await;
        match built {
            Ok(lease) => return Some(lease),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot set up leader election yet: is the apiserver reachable, and may this identity get and create Leases in {}?", opts.lease_namespace);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Waits until this replica leads (true) or shutdown (false).
async fn wait_for_leadership(
    is_leader: &mut watch::Receiver<bool>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, String> {
    loop {
        if *shutdown.borrow() {
            return Ok(false);
        }
        if *is_leader.borrow() {
            return Ok(true);
        }
        tokio::select! {
            r = is_leader.changed() => if r.is_err() { return Err("leader election stopped".into()) },
            _ = shutdown.changed() => {}
        }
    }
}

/// Loads every endpoint into the fleet index before the first reconcile of a term: without
/// it, limits and the failure budget would read zero. False when leadership was lost or
/// shutdown came first.
async fn prime_while_leading<P: PowerControl>(
    ctrl: &Controller<KubeBackend, P>,
    is_leader: &watch::Receiver<bool>,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    while *is_leader.borrow() && !*shutdown.borrow() {
        match ctrl.prime().await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load endpoints; retrying in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    false
}

/// One term as leader: the endpoint and wave controllers, with the BMC watch, the orphan
/// sweep and the phase gauge beside them, until leadership is lost or shutdown.
async fn lead<P: PowerControl>(
    client: &Client,
    ctrl: &Arc<Controller<KubeBackend, P>>,
    opts: &KubeOptions,
    inbox_index: &InboxIndex,
    is_leader: &watch::Receiver<bool>,
    shutdown: &watch::Receiver<bool>,
) {
    let kc = endpoint_controller(
        client,
        opts,
        inbox_index.clone(),
        lost_or_shutdown(is_leader, shutdown),
    );
    // A policy or image change re-evaluates every endpoint; each term subscribes afresh.
    let kc = kc.reconcile_all_on(changes(ctrl.backend.changes()));
    // Endpoints per phase, from the controller's own watch cache.
    let cache = kc.store();
    let metrics = ctrl.metrics.clone();
    // Silent endpoints' BMC logs are read by the lease holder only.
    let bmc_watch = tokio::spawn(
        ctrl.clone()
            .watch_bmcs(ctrl.bmc_watch_interval, shutdown.clone()),
    );
    let sweeper = spawn_orphan_sweeper(ctrl.backend.clone());
    let gauge = spawn_phase_gauge(cache, metrics);
    let policy_status = spawn_policy_status(ctrl.clone(), lost_or_shutdown(is_leader, shutdown));
    // Waves run beside the endpoints, under the same lease and shutdown.
    let waves = wave_controller(client, opts, ctrl, lost_or_shutdown(is_leader, shutdown));
    let endpoints = kc
        .run(reconcile::<P>, error_policy::<P>, ctrl.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile error");
            }
        });
    futures::future::join(endpoints, waves).await;
    gauge.abort();
    policy_status.abort();
    sweeper.abort();
    bmc_watch.abort();
}

/// Resolves when this replica loses the lease or the process shuts down: the end of a term.
fn lost_or_shutdown(
    is_leader: &watch::Receiver<bool>,
    shutdown: &watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + Sync + 'static + use<> {
    let mut lost = is_leader.clone();
    let mut stop = shutdown.clone();
    async move {
        tokio::select! {
            _ = lost.wait_for(|l| !*l) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// The endpoint controller of one term: the endpoints in scope, plus their inboxes (a queued
/// input reconciles its endpoint), shutting down gracefully at `end`.
fn endpoint_controller(
    client: &Client,
    opts: &KubeOptions,
    inbox_index: InboxIndex,
    end: impl Future<Output = ()> + Send + Sync + 'static,
) -> KubeController<Endpoint> {
    let endpoints = scoped::<Endpoint>(client, opts.watch_namespace.as_deref());
    let inboxes: Api<ConfigMap> = Api::namespaced(client.clone(), &opts.control_namespace);
    let watched = opts.watch_namespace.clone();
    // Bounded concurrency: unbounded, a cold start over thousands of endpoints floods the
    // apiserver with parallel writes and holds every in-flight request in memory.
    KubeController::new(endpoints, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(16))
        .watches(
            inboxes,
            watcher::Config::default().labels(&format!("{INBOX_LABEL}=true")),
            move |cm: ConfigMap| {
                let Some(key) = control_owner(ControlKind::Inbox, &cm)
                    .filter(|k| watched.as_deref().is_none_or(|w| w == k.namespace))
                else {
                    return Vec::new();
                };
                // Note which endpoints have something queued, before their reconcile runs.
                {
                    let mut known = inbox_index.lock().unwrap_or_else(|p| p.into_inner());
                    if cm.data.as_ref().is_some_and(|d| !d.is_empty()) {
                        known.insert(key.clone());
                    } else {
                        known.remove(&key);
                    }
                }
                vec![ObjectRef::<Endpoint>::new(&key.name).within(&key.namespace)]
            },
        )
        .graceful_shutdown_on(end)
}

/// Control objects whose endpoint went without passing the finalizer (removed by hand, or
/// deleted while no replica led) are swept every [`ORPHAN_SWEEP_INTERVAL`].
fn spawn_orphan_sweeper(backend: Arc<KubeBackend>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match backend.sweep_orphans(ORPHAN_GRACE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    "removed control objects of endpoints that are gone"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sweep orphaned control objects; trying again later")
                }
            }
            tokio::time::sleep(ORPHAN_SWEEP_INTERVAL).await;
        }
    })
}

/// Sets the endpoints-per-phase gauge from the controller's watch cache every 15 seconds.
fn spawn_phase_gauge(
    cache: kube::runtime::reflector::Store<Endpoint>,
    metrics: Arc<crate::metrics::Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            metrics.set_phases(
                cache
                    .state()
                    .iter()
                    .map(|ep| ep.status.as_ref().and_then(|s| s.phase)),
            );
        }
    })
}

/// The RemediationPolicies' status, written by the lease holder (see controller::policy_status)
/// until `end`: the moment the lease is lost, not when the term's controllers have wound down
/// (a stale index must not write over the next leader's).
fn spawn_policy_status<P: PowerControl>(
    ctrl: Arc<Controller<KubeBackend, P>>,
    end: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let passes = async {
            loop {
                if let Err(e) = ctrl.write_policy_statuses().await {
                    tracing::warn!(error = %e, "cannot read the policies to write their status");
                }
                tokio::time::sleep(super::policy_status::POLICY_STATUS_EVERY).await;
            }
        };
        tokio::select! {
            _ = passes => {}
            _ = end => {}
        }
    })
}

/// The wave controller of one term, built now and run by the returned future until `end`:
/// the waves in scope, each re-evaluated when an endpoint of its namespace changes while it
/// has not settled.
fn wave_controller<P: PowerControl, E: Future<Output = ()> + Send + Sync + 'static>(
    client: &Client,
    opts: &KubeOptions,
    ctrl: &Arc<Controller<KubeBackend, P>>,
    end: E,
) -> impl Future<Output = ()> + use<P, E> {
    let wave_kc = KubeController::new(
        scoped::<ReimageWave>(client, opts.watch_namespace.as_deref()),
        watcher::Config::default().any_semantic(),
    )
    // A busy batch changes endpoint statuses many times a second; one wave reconcile (a
    // LIST of the namespace) per second is enough to follow them.
    .with_config(kube::runtime::controller::Config::default().debounce(WAVE_DEBOUNCE));
    // An endpoint change re-evaluates the waves of its namespace that have not settled.
    let wave_cache = wave_kc.store();
    wave_kc
        .watches(
            scoped::<Endpoint>(client, opts.watch_namespace.as_deref()),
            watcher::Config::default().any_semantic(),
            move |ep: Endpoint| {
                let ns = ep.namespace();
                wave_cache
                    .state()
                    .iter()
                    .filter(|w| {
                        w.namespace() == ns
                            && !w.status.as_ref().is_some_and(recast_core::wave::settled)
                    })
                    .map(|w| ObjectRef::from_obj(&**w))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(end)
        .run(reconcile_wave::<P>, wave_error_policy::<P>, ctrl.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "wave reconcile error");
            }
        })
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

/// A failed reconcile as kube-rs's controller sees it: the store's error, whose category
/// decides when to look again (see [`retry_after`]).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReconcileError(#[from] BackendError);

/// When to reconcile again after a failure, by its category: a conflict at once (the object
/// changed; read it again), anything else after a pause. Lost leadership needs no retry of
/// its own (the next leader starts afresh), but a short one costs nothing and covers a lease
/// that comes back to this replica.
pub fn retry_after(category: ErrorCategory) -> Duration {
    match category {
        ErrorCategory::Conflict => Duration::from_secs(1),
        ErrorCategory::NotLeader
        | ErrorCategory::NotReady
        | ErrorCategory::Unavailable
        | ErrorCategory::Invalid
        | ErrorCategory::Unsupported => Duration::from_secs(5),
    }
}

/// Logs a failed reconcile at the level its category deserves.
fn log_failure(what: &str, name: &str, e: &ReconcileError, retry: Duration) {
    let category = e.0.category().as_str();
    match e.0.category() {
        ErrorCategory::Conflict | ErrorCategory::NotLeader => {
            tracing::debug!(object = %name, error = %e, category, ?retry, "{what} reconcile failed")
        }
        ErrorCategory::Invalid | ErrorCategory::Unsupported => tracing::error!(
            object = %name, error = %e, category, ?retry,
            "{what} reconcile failed: fix the object or the operator's permissions"
        ),
        ErrorCategory::NotReady | ErrorCategory::Unavailable => {
            tracing::warn!(object = %name, error = %e, category, ?retry, "{what} reconcile failed")
        }
    }
}

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
        Err(e) => Err(ReconcileError(e)),
    }
}

/// How often the leader looks for control objects whose endpoint is gone.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// A control object younger than this is never swept (an input posted for an endpoint the
/// sweep's list did not show yet).
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// How often a running wave is looked at even when nothing seems to change (a missed watch
/// event, a pause between batches running out).
const WAVE_POLL: Duration = Duration::from_secs(15);
/// Endpoint changes re-evaluate a wave at most this often.
const WAVE_DEBOUNCE: Duration = Duration::from_secs(1);

async fn reconcile_wave<P: PowerControl>(
    w: Arc<ReimageWave>,
    ctrl: Arc<Controller<KubeBackend, P>>,
) -> Result<KubeAction, ReconcileError> {
    let ns = recast_crds::namespace_of(&w.metadata).to_string();
    match ctrl.reconcile_wave_and_members(&ns, &w.name_any()).await {
        Ok(Some(after)) => Ok(KubeAction::requeue(after.min(WAVE_POLL))),
        Ok(None) => Ok(KubeAction::requeue(Duration::from_secs(300))),
        Err(e) => Err(ReconcileError(e)),
    }
}

fn wave_error_policy<P: PowerControl>(
    w: Arc<ReimageWave>,
    e: &ReconcileError,
    _ctrl: Arc<Controller<KubeBackend, P>>,
) -> KubeAction {
    let retry = retry_after(e.0.category());
    log_failure("wave", &w.name_any(), e, retry);
    KubeAction::requeue(retry)
}

fn error_policy<P: PowerControl>(
    ep: Arc<Endpoint>,
    e: &ReconcileError,
    _ctrl: Arc<Controller<KubeBackend, P>>,
) -> KubeAction {
    let retry = retry_after(e.0.category());
    log_failure("endpoint", &ep.name_any(), e, retry);
    KubeAction::requeue(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_is_retried_sooner_than_any_other_failure() {
        let all = [
            ErrorCategory::Conflict,
            ErrorCategory::NotLeader,
            ErrorCategory::NotReady,
            ErrorCategory::Unavailable,
            ErrorCategory::Invalid,
            ErrorCategory::Unsupported,
        ];
        for c in all {
            let retry = retry_after(c);
            assert!(
                retry > Duration::ZERO,
                "{c:?} is never retried in a hot loop"
            );
            if c != ErrorCategory::Conflict {
                assert!(retry_after(ErrorCategory::Conflict) < retry, "{c:?}");
            }
        }
    }
}
