//! Feeds the boot service's [`BootIndex`] from two watches on the apiserver: Endpoints, and the
//! ConfigMaps that carry boot intents (label `recast.dev/boot-intent=true`). After the first
//! listing, a DHCP packet or `/boot/{mac}` request is answered from memory: a flood of them
//! costs the control plane nothing.
//!
//! The shell is deliberately thin: where the watches look ([`WatchScope`]) and how a ConfigMap
//! becomes an intent (the `decode` function) are its only inputs; what the index does with the
//! events is pure and tested in `store::kube::index`.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use recast_crds::Endpoint;
use tokio::sync::watch;

use crate::store::BootIntent;
use crate::store::Key;
use crate::store::kube::index::{BootIndex, EndpointFacts, Feed, IntentId, Lookup};

/// The index, shared by the watches (writers) and the boot service (readers).
#[derive(Clone, Debug, Default)]
pub struct SharedBootIndex(Arc<RwLock<BootIndex>>);

impl SharedBootIndex {
    pub fn lookup(&self, mac: &str) -> Lookup {
        self.read().lookup(mac)
    }

    pub fn synced(&self) -> bool {
        self.read().synced()
    }

    pub fn owners(&self, mac: &str) -> Vec<Key> {
        self.read().owners(mac)
    }

    // A panic while holding the lock happens between whole updates of the index's maps (each
    // `apply` either ran or not), so a poisoned lock still guards a consistent index.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BootIndex> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BootIndex> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the two watches look: None for every namespace.
#[derive(Clone, Debug, Default)]
pub struct WatchScope {
    pub endpoints: Option<String>,
    pub intents: Option<String>,
}

/// Reads a boot intent out of a ConfigMap; None when it is not a complete, servable one.
pub type DecodeIntent = fn(&ConfigMap) -> Option<BootIntent>;

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Maps a watcher event to the index's terms.
fn feed<K, I, T>(
    event: watcher::Event<K>,
    id: impl Fn(&K) -> I,
    facts: impl Fn(&K) -> Option<T>,
) -> Feed<I, T> {
    match event {
        watcher::Event::Init => Feed::Restart,
        watcher::Event::InitApply(k) => Feed::Listed(id(&k), facts(&k)),
        watcher::Event::InitDone => Feed::Done,
        watcher::Event::Apply(k) => Feed::Applied(id(&k), facts(&k)),
        watcher::Event::Delete(k) => Feed::Deleted(id(&k)),
    }
}

fn intent_id(cm: &ConfigMap) -> IntentId {
    format!("{}/{}", cm.namespace().unwrap_or_default(), cm.name_any())
}

/// Starts both watches; they run until `shutdown`. Errors (an apiserver restart, a lost watch)
/// are retried with backoff while the index keeps serving what it knew.
pub fn spawn(
    client: Client,
    scope: WatchScope,
    label: &str,
    decode: DecodeIntent,
    shutdown: watch::Receiver<bool>,
) -> SharedBootIndex {
    let index = SharedBootIndex::default();
    let endpoints = api::<Endpoint>(&client, scope.endpoints.as_deref());
    let ix = index.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        // Any semantic: the first listing may come from the apiserver's cache, like the
        // controller's own watch; a stale start is corrected by the watch that follows.
        let stream =
            watcher(endpoints, watcher::Config::default().any_semantic()).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            match next {
                Some(Ok(ev)) => ix
                    .write()
                    .apply_endpoint(feed(ev, Key::of, EndpointFacts::of)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "boot index: Endpoint watch failed; retrying")
                }
                None => return,
            }
        }
    });
    let maps = api::<ConfigMap>(&client, scope.intents.as_deref());
    let selector = format!("{label}=true");
    let ix = index.clone();
    let mut stop = shutdown;
    tokio::spawn(async move {
        let stream = watcher(
            maps,
            watcher::Config::default().labels(&selector).any_semantic(),
        )
        .default_backoff();
        futures::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            match next {
                Some(Ok(ev)) => ix.write().apply_intent(feed(ev, intent_id, decode)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "boot index: boot-intent watch failed; retrying")
                }
                None => return,
            }
        }
    });
    index
}
