//! The boot service's view of the fleet: MAC address → the Endpoint(s) that list it, and MAC
//! address → the boot intents armed for it. Fed by watches (on Kubernetes) so that answering a
//! DHCP packet or a `/boot/{mac}` request costs a hash lookup, never a request to the
//! apiserver: anyone on the provisioning network can send those, as fast as they like.
//!
//! Pure: the shell turns watch events into [`Feed`] items and applies them; [`BootIndex::lookup`]
//! answers. A MAC listed by two Endpoints is reported as [`Known::Ambiguous`] (it boots
//! nothing). Until both feeds have delivered their first complete listing the index answers
//! [`Lookup::NotSynced`]: an empty index would call every managed machine "unknown".

use std::collections::{BTreeMap, BTreeSet, HashMap};

use recast_crds::Endpoint;

use crate::store::Key;
use crate::store::arming::{BootIntent, Known, normalize_mac};

/// What the index keeps of an Endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointFacts {
    pub key: Key,
    /// Normalised (lower-case, colon-separated).
    pub macs: Vec<String>,
    /// spec.bootServer is wds.
    pub wds: bool,
    /// spec.bootChain as written, and spec.bootMode (`Known::chain` resolves them).
    pub chain: recast_crds::endpoint::BootChain,
    pub mode: recast_crds::endpoint::BootMode,
}

impl EndpointFacts {
    /// The facts of an Endpoint; None for one being deleted (it no longer owns its MACs:
    /// its finalizer is disarming it).
    pub fn of(ep: &Endpoint) -> Option<EndpointFacts> {
        if ep.metadata.deletion_timestamp.is_some() {
            return None;
        }
        Some(EndpointFacts {
            key: Key::of(ep),
            macs: ep
                .spec
                .identity
                .mac_addresses
                .iter()
                .map(|m| normalize_mac(m).unwrap_or_else(|| m.to_ascii_lowercase()))
                .collect(),
            wds: ep.spec.boot_server == recast_crds::endpoint::BootServer::Wds,
            chain: ep.spec.boot_chain,
            mode: ep.spec.boot_mode,
        })
    }
}

/// One step of a watch, in the index's own terms (mirrors kube-runtime's watcher events, so
/// the index does not depend on them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed<I, T> {
    /// The watch (re)starts a full listing; the current contents stay served until it is done.
    Restart,
    /// One object of the listing; `None` when the object exists but is not served (an Endpoint
    /// being deleted, a ConfigMap that does not decode as an intent).
    Listed(I, Option<T>),
    /// The listing is complete: it replaces the contents.
    Done,
    /// An object was added or changed after the listing.
    Applied(I, Option<T>),
    Deleted(I),
}

/// What the index says about a MAC. Returned by value once per lookup and unpacked at once,
/// so the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The first listing of Endpoints or of intents has not arrived: nothing is known yet.
    NotSynced,
    Found(Known, Option<BootIntent>),
}

/// A map from object id to object plus the reverse map from MAC to ids, with the buffer of a
/// listing in progress.
#[derive(Debug)]
struct Table<I: Ord + Clone, T> {
    objects: BTreeMap<I, T>,
    by_mac: HashMap<String, BTreeSet<I>>,
    listing: Option<Vec<(I, T)>>,
    synced: bool,
}

impl<I: Ord + Clone, T> Default for Table<I, T> {
    fn default() -> Self {
        Table {
            objects: BTreeMap::new(),
            by_mac: HashMap::new(),
            listing: None,
            synced: false,
        }
    }
}

impl<I: Ord + Clone, T> Table<I, T> {
    fn remove(&mut self, id: &I, macs: impl Fn(&T) -> Vec<String>) {
        if let Some(old) = self.objects.remove(id) {
            for mac in macs(&old) {
                if let Some(set) = self.by_mac.get_mut(&mac) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_mac.remove(&mac);
                    }
                }
            }
        }
    }

    fn upsert(&mut self, id: I, object: Option<T>, macs: impl Fn(&T) -> Vec<String>) {
        self.remove(&id, &macs);
        if let Some(object) = object {
            for mac in macs(&object) {
                self.by_mac.entry(mac).or_default().insert(id.clone());
            }
            self.objects.insert(id, object);
        }
    }

    fn apply(&mut self, feed: Feed<I, T>, macs: impl Fn(&T) -> Vec<String>) {
        match feed {
            Feed::Restart => self.listing = Some(Vec::new()),
            Feed::Listed(id, object) => {
                // A listing item without a Restart (a watcher that skips it) still starts one.
                let listing = self.listing.get_or_insert_with(Vec::new);
                if let Some(object) = object {
                    listing.push((id, object));
                }
            }
            Feed::Done => {
                let listed = self.listing.take().unwrap_or_default();
                self.objects.clear();
                self.by_mac.clear();
                for (id, object) in listed {
                    self.upsert(id, Some(object), &macs);
                }
                self.synced = true;
            }
            Feed::Applied(id, object) => self.upsert(id, object, &macs),
            Feed::Deleted(id) => self.remove(&id, &macs),
        }
    }

    fn ids(&self, mac: &str) -> impl Iterator<Item = &I> {
        self.by_mac.get(mac).into_iter().flatten()
    }
}

/// Intents are keyed by the id of the object that carries them (on Kubernetes, the
/// ConfigMap's namespace/name), not by the endpoint they name: a hand-made object naming an
/// endpoint must not hide or replace the operator's own.
pub type IntentId = String;

#[derive(Debug, Default)]
pub struct BootIndex {
    endpoints: Table<Key, EndpointFacts>,
    intents: Table<IntentId, BootIntent>,
}

fn endpoint_macs(e: &EndpointFacts) -> Vec<String> {
    e.macs.clone()
}

fn intent_macs(i: &BootIntent) -> Vec<String> {
    i.mac_addresses
        .iter()
        .map(|m| normalize_mac(m).unwrap_or_else(|| m.to_ascii_lowercase()))
        .collect()
}

impl BootIndex {
    pub fn apply_endpoint(&mut self, feed: Feed<Key, EndpointFacts>) {
        self.endpoints.apply(feed, endpoint_macs);
    }

    pub fn apply_intent(&mut self, feed: Feed<IntentId, BootIntent>) {
        self.intents.apply(feed, intent_macs);
    }

    /// Both feeds have delivered a complete listing at least once.
    pub fn synced(&self) -> bool {
        self.endpoints.synced && self.intents.synced
    }

    /// Who owns `mac` (normalised) and what is armed for it. The intent returned is the
    /// owner's when there is one; otherwise any intent listing the MAC, so that
    /// [`super::intent::choose`] can say why it is not served.
    pub fn lookup(&self, mac: &str) -> Lookup {
        if !self.synced() {
            return Lookup::NotSynced;
        }
        let owners: Vec<&Key> = self.endpoints.ids(mac).collect();
        let known = Known::from_owners(
            owners
                .iter()
                .map(|key| {
                    let facts = self.endpoints.objects.get(*key);
                    crate::store::arming::Owner {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        wds: facts.is_some_and(|e| e.wds),
                        chain: facts.map_or(recast_crds::endpoint::BootChain::Ipxe, |e| e.chain),
                        mode: facts.map_or(recast_crds::endpoint::BootMode::Uefi, |e| e.mode),
                    }
                })
                .collect(),
        );
        let intents: Vec<&BootIntent> = self
            .intents
            .ids(mac)
            .filter_map(|id| self.intents.objects.get(id))
            .collect();
        let owned = match &known {
            Known::Endpoint {
                namespace, name, ..
            } => intents
                .iter()
                .find(|i| &i.namespace == namespace && &i.endpoint == name),
            _ => None,
        };
        let intent = owned.or(intents.first()).map(|i| (*i).clone());
        Lookup::Found(known, intent)
    }

    /// The endpoints that list `mac`, for log lines about an ambiguous MAC.
    pub fn owners(&self, mac: &str) -> Vec<Key> {
        self.endpoints.ids(mac).cloned().collect()
    }

    /// Objects held (endpoints, intents).
    pub fn len(&self) -> (usize, usize) {
        (self.endpoints.objects.len(), self.intents.objects.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> Key {
        Key {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn ep(ns: &str, name: &str, macs: &[&str]) -> EndpointFacts {
        EndpointFacts {
            key: key(ns, name),
            macs: macs.iter().map(|m| m.to_string()).collect(),
            wds: false,
            chain: recast_crds::endpoint::BootChain::Auto,
            mode: recast_crds::endpoint::BootMode::Uefi,
        }
    }

    fn intent(ns: &str, name: &str, macs: &[&str]) -> BootIntent {
        BootIntent {
            namespace: ns.into(),
            endpoint: name.into(),
            mac_addresses: macs.iter().map(|m| m.to_string()).collect(),
            attempt_id: format!("{name}-a1"),
            try_number: 1,
            image: "win11".into(),
            image_digest: Some("ab".into()),
            boot_mode: "uefi".into(),
            armed_at: String::new(),
        }
    }

    const M1: &str = "52:54:00:00:00:01";
    const M2: &str = "52:54:00:00:00:02";

    fn listed(endpoints: Vec<EndpointFacts>, intents: Vec<(&str, BootIntent)>) -> BootIndex {
        let mut ix = BootIndex::default();
        ix.apply_endpoint(Feed::Restart);
        for e in endpoints {
            ix.apply_endpoint(Feed::Listed(e.key.clone(), Some(e)));
        }
        ix.apply_endpoint(Feed::Done);
        ix.apply_intent(Feed::Restart);
        for (id, i) in intents {
            ix.apply_intent(Feed::Listed(id.to_string(), Some(i)));
        }
        ix.apply_intent(Feed::Done);
        ix
    }

    fn known(ns: &str, name: &str) -> Known {
        Known::Endpoint {
            namespace: ns.into(),
            name: name.into(),
            wds: false,
            chain: recast_crds::endpoint::BootChain::Auto,
            mode: recast_crds::endpoint::BootMode::Uefi,
        }
    }

    #[test]
    fn nothing_is_answered_before_both_listings_are_complete() {
        let mut ix = BootIndex::default();
        assert_eq!(ix.lookup(M1), Lookup::NotSynced);
        ix.apply_endpoint(Feed::Restart);
        ix.apply_endpoint(Feed::Listed(key("a", "k1"), Some(ep("a", "k1", &[M1]))));
        assert_eq!(ix.lookup(M1), Lookup::NotSynced);
        ix.apply_endpoint(Feed::Done);
        assert!(!ix.synced(), "the intents have not been listed yet");
        assert_eq!(ix.lookup(M1), Lookup::NotSynced);
        ix.apply_intent(Feed::Restart);
        ix.apply_intent(Feed::Done);
        assert_eq!(ix.lookup(M1), Lookup::Found(known("a", "k1"), None));
        assert_eq!(ix.lookup(M2), Lookup::Found(Known::Unknown, None));
    }

    #[test]
    fn an_armed_mac_finds_its_owners_intent() {
        let ix = listed(
            vec![ep("a", "k1", &[M1, M2])],
            vec![("a/recast-boot-k1", intent("a", "k1", &[M1, M2]))],
        );
        for mac in [M1, M2] {
            assert_eq!(
                ix.lookup(mac),
                Lookup::Found(known("a", "k1"), Some(intent("a", "k1", &[M1, M2])))
            );
        }
    }

    #[test]
    fn the_owners_intent_wins_over_a_foreign_one_for_the_same_mac() {
        let forged = intent("b", "evil", &[M1]);
        let mine = intent("a", "k1", &[M1]);
        // Whatever the ids' order, the owner's intent is the one returned.
        for (forged_id, mine_id) in [("0/forged", "a/mine"), ("z/forged", "a/mine")] {
            let ix = listed(
                vec![ep("a", "k1", &[M1])],
                vec![(forged_id, forged.clone()), (mine_id, mine.clone())],
            );
            assert_eq!(
                ix.lookup(M1),
                Lookup::Found(known("a", "k1"), Some(mine.clone()))
            );
        }
        // Only a foreign intent: it is returned so that choose() refuses it with a reason.
        let ix = listed(vec![ep("a", "k1", &[M1])], vec![("b/x", forged.clone())]);
        assert_eq!(ix.lookup(M1), Lookup::Found(known("a", "k1"), Some(forged)));
    }

    #[test]
    fn a_mac_two_endpoints_list_is_ambiguous_until_one_lets_go() {
        let mut ix = listed(
            vec![ep("a", "k1", &[M1]), ep("b", "thief", &[M1, M2])],
            vec![("a/recast-boot-k1", intent("a", "k1", &[M1]))],
        );
        match ix.lookup(M1) {
            Lookup::Found(Known::Ambiguous { .. }, _) => {}
            other => panic!("expected Ambiguous, got {other:?}"),
        }
        assert_eq!(ix.owners(M1), vec![key("a", "k1"), key("b", "thief")]);
        assert_eq!(ix.lookup(M2), Lookup::Found(known("b", "thief"), None));
        // The thief drops the MAC: the owner is known again.
        ix.apply_endpoint(Feed::Applied(
            key("b", "thief"),
            Some(ep("b", "thief", &[M2])),
        ));
        assert_eq!(
            ix.lookup(M1),
            Lookup::Found(known("a", "k1"), Some(intent("a", "k1", &[M1])))
        );
    }

    #[test]
    fn changes_and_deletions_after_the_listing_apply() {
        let mut ix = listed(vec![ep("a", "k1", &[M1])], vec![]);
        ix.apply_intent(Feed::Applied(
            "a/recast-boot-k1".into(),
            Some(intent("a", "k1", &[M1])),
        ));
        assert!(matches!(ix.lookup(M1), Lookup::Found(_, Some(_))));
        // A ConfigMap edited into something that is not an intent stops being served.
        ix.apply_intent(Feed::Applied("a/recast-boot-k1".into(), None));
        assert_eq!(ix.lookup(M1), Lookup::Found(known("a", "k1"), None));
        ix.apply_intent(Feed::Applied(
            "a/recast-boot-k1".into(),
            Some(intent("a", "k1", &[M1])),
        ));
        ix.apply_intent(Feed::Deleted("a/recast-boot-k1".into()));
        assert_eq!(ix.lookup(M1), Lookup::Found(known("a", "k1"), None));
        // A MAC moved to another endpoint.
        ix.apply_endpoint(Feed::Applied(key("a", "k1"), Some(ep("a", "k1", &[M2]))));
        assert_eq!(ix.lookup(M1), Lookup::Found(Known::Unknown, None));
        assert_eq!(ix.lookup(M2), Lookup::Found(known("a", "k1"), None));
        // An endpoint being deleted (None) no longer owns anything.
        ix.apply_endpoint(Feed::Applied(key("a", "k1"), None));
        assert_eq!(ix.lookup(M2), Lookup::Found(Known::Unknown, None));
        ix.apply_endpoint(Feed::Deleted(key("a", "k1")));
        assert_eq!(ix.len(), (0, 0));
    }

    #[test]
    fn a_relisting_keeps_serving_the_old_contents_then_replaces_them() {
        let mut ix = listed(vec![ep("a", "k1", &[M1])], vec![]);
        ix.apply_endpoint(Feed::Restart);
        ix.apply_endpoint(Feed::Listed(key("a", "k2"), Some(ep("a", "k2", &[M2]))));
        // Mid-listing: still the old answer, and still synced.
        assert_eq!(ix.lookup(M1), Lookup::Found(known("a", "k1"), None));
        assert_eq!(ix.lookup(M2), Lookup::Found(Known::Unknown, None));
        ix.apply_endpoint(Feed::Done);
        // k1 was deleted while the watch was down: gone after the relisting.
        assert_eq!(ix.lookup(M1), Lookup::Found(Known::Unknown, None));
        assert_eq!(ix.lookup(M2), Lookup::Found(known("a", "k2"), None));
    }

    #[test]
    fn wds_endpoints_and_boot_chains_are_reported_as_such() {
        let mut e = ep("a", "k1", &[M1]);
        e.wds = true;
        e.chain = recast_crds::endpoint::BootChain::Ipxe;
        let ix = listed(vec![e], vec![]);
        assert_eq!(
            ix.lookup(M1),
            Lookup::Found(
                Known::Endpoint {
                    namespace: "a".into(),
                    name: "k1".into(),
                    wds: true,
                    chain: recast_crds::endpoint::BootChain::Ipxe,
                    mode: recast_crds::endpoint::BootMode::Uefi,
                },
                None
            )
        );
    }

    #[test]
    fn endpoint_facts_normalise_macs_and_drop_deleting_endpoints() {
        let mut e: Endpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": "k1", "namespace": "a"},
            "spec": {"identity": {"macAddresses": ["52-54-00-AB-CD-01"]}, "bootMode": "uefi",
                     "image": {"goldenImage": "win11"}}
        }))
        .expect("a minimal endpoint");
        let facts = EndpointFacts::of(&e).expect("not deleting");
        assert_eq!(facts.macs, vec!["52:54:00:ab:cd:01".to_string()]);
        assert_eq!(facts.key, key("a", "k1"));
        e.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        assert_eq!(EndpointFacts::of(&e), None);
    }
}
