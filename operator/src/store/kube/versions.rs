//! Which Endpoints changed, from a metadata-only watch, so the gateway reloads an endpoint's
//! facts (its hold, a restart order, the policy and image it follows) exactly when something
//! they are made of changed, instead of reading every reporting endpoint from the apiserver
//! once its cached facts are a minute old. Memory: each Endpoint's key and resourceVersion
//! (no spec, no status); policies and images are already in this backend's caches, and their
//! changes bump one counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use recast_crds::Endpoint;
use tokio::sync::{broadcast, watch};

use crate::store::{FactsVersion, Key};

#[derive(Default)]
pub struct FactsVersions {
    endpoints: RwLock<HashMap<Key, String>>,
    /// The first full listing is in `endpoints`.
    synced: AtomicBool,
    /// Bumped on every policy or image change this backend's caches see.
    context: AtomicU64,
}

pub type SharedVersions = Arc<FactsVersions>;

impl FactsVersions {
    /// The version of what `key`'s facts are made of; None until the first listing is in (or
    /// for an Endpoint the watch has not seen), so the caller falls back to reloading by age.
    pub fn get(&self, key: &Key) -> Option<FactsVersion> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        let endpoint = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)?
            .clone();
        Some(FactsVersion {
            endpoint,
            context: self.context(),
        })
    }

    /// The policy and image change count.
    pub fn context(&self) -> u64 {
        self.context.load(Ordering::Acquire)
    }
}

fn key_and_version(meta: &kube::api::ObjectMeta) -> Option<(Key, String)> {
    Some((
        Key {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
        },
        meta.resource_version.clone()?,
    ))
}

/// Starts the Endpoint metadata watch (in `namespace`, or all) and the change counter fed by
/// `changed` (the backend's policy and image caches). Runs until `shutdown`.
pub fn spawn(
    client: Client,
    namespace: Option<&str>,
    mut changed: broadcast::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) -> SharedVersions {
    let versions: SharedVersions = Arc::default();
    // An Api of PartialObjectMeta makes metadata-only requests: no spec, no status.
    let api = crate::store::kube::scoped::<PartialObjectMeta<Endpoint>>(&client, namespace);
    let mirror = versions.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut listing: Option<HashMap<Key, String>> = None;
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                _ = stop.changed() => None,
            };
            let Some(event) = event else { break };
            let map = || mirror.endpoints.write().unwrap_or_else(|p| p.into_inner());
            match event {
                Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(m)) => {
                    if let (Some(l), Some((k, v))) =
                        (listing.as_mut(), key_and_version(&m.metadata))
                    {
                        l.insert(k, v);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(l) = listing.take() {
                        *map() = l;
                        mirror.synced.store(true, Ordering::Release);
                    }
                }
                Ok(watcher::Event::Apply(m)) => {
                    if let Some((k, v)) = key_and_version(&m.metadata) {
                        map().insert(k, v);
                    }
                }
                Ok(watcher::Event::Delete(m)) => {
                    if let Some((k, _)) = key_and_version(&m.metadata) {
                        map().remove(&k);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "endpoint version watch: retrying"),
            }
        }
    });
    let counter = versions.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changed.recv() => match r {
                    // A lagged receiver missed changes: counting one is enough to reload.
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        counter.context.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = shutdown.changed() => break,
            }
        }
    });
    versions
}
