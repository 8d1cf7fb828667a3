//! The controller on the embedded store: the loop that follows the store's change feed and
//! requeue timers (the store itself is `store::embedded`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use recast_core::lifecycle::Input;
use recast_crds::manifest::Kind;
use recast_crds::wave::ReimageWave;
use tokio::sync::watch;

use super::Controller;
use crate::bmc::PowerControl;
use crate::store::embedded::{EmbeddedBackend, EmbeddedStore};
use crate::store::{BackendError, Key, PolicyStatusStore, WaveStore};

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
    let mut cursor = store.latest_change().map_err(BackendError::from)?;
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
    let mut last_policy_status = Instant::now() - Duration::from_secs(3600);
    // What of each policy decides endpoints, as last seen (at start, then in the change feed).
    let mut policy_prints: BTreeMap<(String, String), String> = BTreeMap::new();
    for p in ctrl.backend.all_policies().await? {
        policy_prints.insert(
            (
                recast_crds::namespace_of(&p.metadata).to_string(),
                p.metadata.name.clone().unwrap_or_default(),
            ),
            recast_core::policy_status::fingerprint(&p),
        );
    }
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
            let changes = store
                .changes_since(cursor, 1000)
                .map_err(BackendError::from)?;
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
                    Kind::RemediationPolicy => {
                        // The controller's own status writes land here too: only a change of
                        // what decides endpoints makes the namespace's endpoints due.
                        let now = store
                            .get(Kind::RemediationPolicy, &ch.namespace, &ch.name)
                            .map_err(BackendError::from)?
                            .and_then(|v| serde_json::from_value(v).ok())
                            .map(|p| recast_core::policy_status::fingerprint(&p));
                        let id = (ch.namespace.clone(), ch.name.clone());
                        let before = match &now {
                            Some(print) => policy_prints.insert(id, print.clone()),
                            None => policy_prints.remove(&id),
                        };
                        if now.is_none() || before != now {
                            namespaces_due.insert(ch.namespace.clone());
                        }
                    }
                    Kind::GoldenImage => {
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
            store.compact_changes(cursor).map_err(BackendError::from)?;
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
        if last_policy_status.elapsed() >= super::policy_status::POLICY_STATUS_EVERY {
            last_policy_status = Instant::now();
            if let Err(e) = ctrl.write_policy_statuses().await {
                tracing::warn!(error = %e, "cannot read the policies to write their status");
            }
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
        recast_crds::namespace_of(&w.metadata).to_string(),
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
