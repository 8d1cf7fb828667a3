//! The agent gateway's state in the apiserver, so that any number of gateway replicas on the
//! Kubernetes backend share it: per-endpoint tokens (their SHA-256 only), enrollments, and the
//! accepted report sequences. Everything lives in the operator's control namespace, which only
//! recast's own service accounts may write (docs/security.md).
//!
//! - **Credentials**: one ConfigMap per endpoint, `recast-gwcred-HASH` (the control-object
//!   naming of `store::kube`), data `tokenHash`, `issuedAt` and `enrolled` (the attempt ids that
//!   enrolled, newest last, at most [`ENROLLMENTS_KEPT`]). Every replica mirrors them in memory
//!   through a watch, so a made-up token is refused without a request to the apiserver.
//! - **Sequences**: [`SHARDS`] ConfigMaps `recast-gwseq-NN`; an endpoint's entry (key
//!   `namespace.name`, value `TOKENHASH16:SEQUENCE`) lives in the shard its name hashes to.
//!   A token's marks count only while it is the endpoint's current token: a rotation starts a
//!   new sequence space, as on the embedded backend.
//!
//! Every write replaces an object at the resourceVersion it was read at (optimistic
//! concurrency), so two replicas can never both raise an endpoint's mark past the same
//! sequence: the loser re-reads, finds its mark superseded, and its report is refused as a
//! replay. The gateway's group commit hands all marks that arrive during a write to the next
//! one, so a busy gateway writes each shard once per batch, not once per report.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::credentials::kube_credentials::{api_err, is_conflict, token_of};
use crate::credentials::{CredentialError, KubeCredentials, Mark, MarkOutcome};
use crate::store::Key;
use crate::store::control::ControlKind;

/// Shards of the sequence table. A group commit writes every shard its marks fall in, so fewer
/// shards mean fewer writes per report under load (16 shards measured 0.15 writes per report,
/// 4 shards 0.04, docs/benchmarks.md); 10,000 endpoints' entries (about 45 bytes each) still
/// keep each shard near 110 KiB, far below a ConfigMap's 1 MiB.
pub const SHARDS: usize = 4;
/// Label of the sequence shards.
pub const SEQUENCES_LABEL: &str = "recast.dev/gateway-sequences";
/// A shard write that keeps losing the race to other replicas gives up after this many tries.
const MAX_TRIES: usize = 16;
/// How long `start` waits for the first listing of the credentials.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The shard an endpoint's mark lives in.
pub fn shard_of(key: &Key) -> usize {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{}/{}", key.namespace, key.name).as_bytes());
    usize::from(d[0]) % SHARDS
}

pub fn shard_name(shard: usize) -> String {
    format!("recast-gwseq-{shard:02}")
}

/// The entry key of an endpoint in its shard. Namespaces cannot contain '.', so the first dot
/// separates them from the name.
fn entry_key(key: &Key) -> String {
    format!("{}.{}", key.namespace, key.name)
}

fn key_of_entry(entry: &str) -> Option<Key> {
    let (namespace, name) = entry.split_once('.')?;
    Some(Key {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// The first 16 hex digits of a token hash: enough to tell an endpoint's tokens apart.
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

fn parse_mark(value: &str) -> Option<(&str, u64)> {
    let (h, seq) = value.split_once(':')?;
    Some((h, seq.parse().ok()?))
}

/// Pure: raises the marks of one shard's data. Per mark: Saved when it was raised; Superseded
/// when the stored mark of the same token is already at or above it (another replica accepted
/// that report or a later one); TokenGone when the mark's token is not the endpoint's current
/// one (a rotation or revocation since: nothing is written for it). `current_token` must be fresh
/// from the apiserver for every endpoint whose stored entry belongs to another token than its
/// mark's (see `KubeLedger::save_shard`): a replica whose mirror still has an old token must
/// never overwrite the new token's mark. Returns whether the data changed.
pub fn raise_marks(
    data: &mut BTreeMap<String, String>,
    marks: &[&Mark],
    current_token: &dyn Fn(&Key) -> Option<String>,
) -> (Vec<MarkOutcome>, bool) {
    let mut changed = false;
    let outcomes = marks
        .iter()
        .map(|(key, hash, seq)| {
            if current_token(key).as_deref() != Some(hash.as_str()) {
                return MarkOutcome::TokenGone;
            }
            let k = entry_key(key);
            let stored = data
                .get(&k)
                .and_then(|v| parse_mark(v))
                .filter(|(h, _)| *h == short(hash))
                .map(|(_, s)| s);
            if stored.is_some_and(|s| s >= *seq) {
                return MarkOutcome::Superseded;
            }
            data.insert(k, format!("{}:{seq}", short(hash)));
            changed = true;
            MarkOutcome::Saved
        })
        .collect();
    (outcomes, changed)
}

/// The tokens every replica mirrors: hash → endpoint, and each endpoint's current hash.
#[derive(Default)]
struct Tokens {
    by_hash: HashMap<String, Key>,
    by_key: HashMap<Key, String>,
}

impl Tokens {
    fn set(&mut self, key: &Key, hash: Option<&str>) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_hash.remove(&old);
        }
        if let Some(h) = hash {
            self.by_hash.insert(h.to_string(), key.clone());
            self.by_key.insert(key.clone(), h.to_string());
        }
    }

    fn apply(&mut self, cm: &ConfigMap) {
        if let Some((key, hash)) = token_of(cm) {
            self.set(&key, hash.as_deref());
        }
    }

    fn delete(&mut self, cm: &ConfigMap) {
        if let Some((key, _)) = token_of(cm) {
            self.set(&key, None);
        }
    }
}

pub struct KubeLedger {
    credentials: KubeCredentials,
    tokens: Arc<RwLock<Tokens>>,
    /// Each shard as this replica last read or wrote it: a write starts from it and re-reads
    /// only when another replica moved the shard on (a conflict).
    shards: Mutex<HashMap<usize, ConfigMap>>,
    /// apiserver writes of sequence shards since last taken (for the gateway's stats).
    writes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubeLedger {
    /// Connects to the control namespace and mirrors the credentials; returns once the first
    /// listing is in memory (a gateway must not refuse every token while it starts).
    pub async fn start(
        client: Client,
        namespace: &str,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, CredentialError> {
        let tokens = Arc::new(RwLock::new(Tokens::default()));
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default()
            .labels(&format!("{}=true", ControlKind::GatewayCredential.label()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mirror = tokens.clone();
        tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff();
            futures::pin_mut!(stream);
            let mut ready = Some(ready_tx);
            let mut listing: Option<Tokens> = None;
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = shutdown.changed() => None,
                };
                let Some(event) = event else { break };
                match event {
                    Ok(watcher::Event::Init) => listing = Some(Tokens::default()),
                    Ok(watcher::Event::InitApply(cm)) => {
                        if let Some(l) = listing.as_mut() {
                            l.apply(&cm);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(l) = listing.take() {
                            *mirror.write().unwrap_or_else(|p| p.into_inner()) = l;
                        }
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(cm)) => {
                        mirror.write().unwrap_or_else(|p| p.into_inner()).apply(&cm)
                    }
                    Ok(watcher::Event::Delete(cm)) => mirror
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .delete(&cm),
                    Err(e) => tracing::warn!(error = %e, "gateway credential watch; retrying"),
                }
            }
        });
        tokio::time::timeout(START_TIMEOUT, ready_rx)
            .await
            .map_err(|_| {
                CredentialError::Apiserver(format!(
                    "the gateway credentials in namespace {namespace} were not listed within {}s: check the gateway's RBAC (list and watch ConfigMaps there)",
                    START_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|_| CredentialError::Apiserver("the credential watch stopped".into()))?;
        Ok(KubeLedger {
            credentials: KubeCredentials::new(client, namespace),
            tokens,
            shards: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
        })
    }

    fn current_token(&self, key: &Key) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .get(key)
            .cloned()
    }

    /// Sequence-shard writes since the last call.
    pub fn take_writes(&self) -> u64 {
        self.writes.swap(0, Ordering::Relaxed)
    }

    pub fn endpoint_for_hash(&self, hash: &str) -> Option<Key> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_hash
            .get(hash)
            .cloned()
    }

    fn mirror(&self, cm: &ConfigMap) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(cm);
    }

    /// Issues (or rotates) the endpoint's token.
    pub async fn issue(&self, key: &Key, now: &str) -> Result<String, CredentialError> {
        let (token, cm) = self.credentials.issue(key, now).await?;
        self.mirror(&cm);
        Ok(token)
    }

    /// Issues the token for the enrollment of `attempt`, once (None when it already enrolled).
    pub async fn enroll_once(
        &self,
        key: &Key,
        attempt: &str,
        now: &str,
    ) -> Result<Option<String>, CredentialError> {
        Ok(
            match self.credentials.enroll_once(key, attempt, now).await? {
                Some((token, cm)) => {
                    self.mirror(&cm);
                    Some(token)
                }
                None => None,
            },
        )
    }

    /// Revokes the endpoint's token; true if it had one.
    pub async fn revoke(&self, key: &Key) -> Result<bool, CredentialError> {
        let (had, _) = self.credentials.revoke(key).await?;
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set(key, None);
        Ok(had)
    }

    async fn read_shard(&self, shard: usize) -> Result<ConfigMap, CredentialError> {
        let api = self.credentials.api();
        let name = shard_name(shard);
        let cm = match api.get_opt(&name).await.map_err(api_err)? {
            Some(cm) => cm,
            None => {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {
                        "name": name,
                        "labels": {
                            SEQUENCES_LABEL: "true",
                            "app.kubernetes.io/managed-by": crate::store::control::FIELD_MANAGER,
                        },
                    },
                    "data": {},
                }))
                .map_err(|e| CredentialError::Apiserver(e.to_string()))?;
                match api.create(&PostParams::default(), &cm).await {
                    Ok(cm) => cm,
                    Err(e) if is_conflict(&e) => api.get(&name).await.map_err(api_err)?,
                    Err(e) => return Err(api_err(e)),
                }
            }
        };
        lock(&self.shards).insert(shard, cm.clone());
        Ok(cm)
    }

    async fn shard(&self, shard: usize) -> Result<ConfigMap, CredentialError> {
        let cached = lock(&self.shards).get(&shard).cloned();
        match cached {
            Some(cm) => Ok(cm),
            None => self.read_shard(shard).await,
        }
    }

    /// Raises the marks of one shard: one replace at the version last seen, re-read and
    /// redone when another replica wrote it meanwhile.
    async fn save_shard(
        &self,
        shard: usize,
        marks: &[&Mark],
    ) -> Result<Vec<MarkOutcome>, CredentialError> {
        let api = self.credentials.api();
        let mut cm = self.shard(shard).await?;
        for _ in 0..MAX_TRIES {
            let mut data = cm.data.clone().unwrap_or_default();
            // An entry of another token than its mark's: after a rotation, either the mark or
            // the entry is stale. The mirror may lag; the credential object decides.
            let mut fresh: HashMap<Key, Option<String>> = HashMap::new();
            for (key, hash, _) in marks.iter().copied() {
                let other = data
                    .get(&entry_key(key))
                    .and_then(|v| parse_mark(v))
                    .is_some_and(|(h, _)| h != short(hash));
                if other && !fresh.contains_key(key) {
                    fresh.insert(key.clone(), self.credentials.current_hash(key).await?);
                }
            }
            let current = |k: &Key| match fresh.get(k) {
                Some(h) => h.clone(),
                None => self.current_token(k),
            };
            let (outcomes, changed) = raise_marks(&mut data, marks, &current);
            if !changed {
                return Ok(outcomes);
            }
            let mut next = cm.clone();
            next.data = Some(data);
            match api
                .replace(&shard_name(shard), &PostParams::default(), &next)
                .await
            {
                Ok(written) => {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    lock(&self.shards).insert(shard, written);
                    return Ok(outcomes);
                }
                Err(e) if is_conflict(&e) => cm = self.read_shard(shard).await?,
                Err(e) => {
                    // The cached version may be what is wrong: read afresh next time.
                    lock(&self.shards).remove(&shard);
                    return Err(api_err(e));
                }
            }
        }
        Err(CredentialError::Apiserver(format!(
            "sequence shard {} kept changing under this write; the reports are refused and the agents retry",
            shard_name(shard)
        )))
    }

    /// Saves marks, one write per shard touched (the shards in parallel). Per mark: what it
    /// found, or an error when its shard could not be written (the other shards' marks stand).
    pub async fn save_sequences(&self, marks: &[Mark]) -> Vec<Result<MarkOutcome, String>> {
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, (key, _, _)) in marks.iter().enumerate() {
            by_shard.entry(shard_of(key)).or_default().push(i);
        }
        let saves = by_shard.iter().map(|(shard, idx)| {
            let ms: Vec<&Mark> = idx.iter().map(|i| &marks[*i]).collect();
            async move { self.save_shard(*shard, &ms).await }
        });
        let results = futures::future::join_all(saves).await;
        let mut outcomes: Vec<Result<MarkOutcome, String>> =
            vec![Ok(MarkOutcome::Superseded); marks.len()];
        for ((_, idx), result) in by_shard.iter().zip(results) {
            match result {
                Ok(saved) => {
                    for (i, ok) in idx.iter().zip(saved) {
                        outcomes[*i] = Ok(ok);
                    }
                }
                Err(e) => {
                    for i in idx {
                        outcomes[*i] = Err(e.to_string());
                    }
                }
            }
        }
        outcomes
    }

    /// The stored mark of an endpoint's current token (0 when none), read afresh.
    pub async fn sequence(&self, key: &Key) -> Result<u64, CredentialError> {
        let cm = self.read_shard(shard_of(key)).await?;
        let current = self.current_token(key);
        Ok(cm
            .data
            .as_ref()
            .and_then(|d| d.get(&entry_key(key)))
            .and_then(|v| parse_mark(v))
            .filter(|(h, _)| current.as_deref().map(short) == Some(*h))
            .map_or(0, |(_, s)| s))
    }

    /// Every endpoint's stored mark of its current token.
    pub async fn sequences(&self) -> Result<Vec<(Key, u64)>, CredentialError> {
        let list = self
            .credentials
            .api()
            .list(&ListParams::default().labels(&format!("{SEQUENCES_LABEL}=true")))
            .await
            .map_err(api_err)?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for cm in &list.items {
            if !cm.name_any().starts_with("recast-gwseq-") {
                continue;
            }
            for (k, v) in cm.data.iter().flatten() {
                let (Some(key), Some((h, seq))) = (key_of_entry(k), parse_mark(v)) else {
                    continue;
                };
                if tokens.by_key.get(&key).map(|c| short(c)) == Some(h) {
                    out.push((key, seq));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            namespace: "site-a".into(),
            name: name.into(),
        }
    }

    #[test]
    fn marks_rise_once_per_sequence_and_only_for_the_current_token() {
        use MarkOutcome::{Saved, Superseded, TokenGone};
        let h1 = "a".repeat(64);
        let h2 = "b".repeat(64);
        let current = |k: &Key| (k.name != "gone").then(|| h1.clone());
        let mut data = BTreeMap::new();
        let m = |name: &str, hash: &str, seq| (key(name), hash.to_string(), seq);
        let (a, b, c) = (m("k1", &h1, 10), m("k2", &h1, 5), m("gone", &h1, 7));
        let (out, changed) = raise_marks(&mut data, &[&a, &b, &c], &current);
        assert_eq!(out, [Saved, Saved, TokenGone], "no token: refused");
        assert!(changed);
        assert_eq!(data.get("site-a.k1").unwrap(), &format!("{}:10", &h1[..16]));
        assert!(!data.contains_key("site-a.gone"), "no token, no mark");
        // The same sequence again (another replica's copy of the report): superseded.
        let (out, changed) = raise_marks(&mut data, &[&a], &current);
        assert_eq!((out, changed), (vec![Superseded], false));
        // Lower: superseded; higher: raised.
        let (out, _) = raise_marks(&mut data, &[&m("k1", &h1, 9), &m("k1", &h1, 11)], &current);
        assert_eq!(out, [Superseded, Saved]);
        // A mark reached with a token that is no longer current is refused, and not written.
        let (out, changed) = raise_marks(&mut data, &[&m("k2", &h2, 1)], &current);
        assert_eq!((out, changed), (vec![TokenGone], false));
        // After a rotation the stored mark of the old token does not hold the new one back.
        let rotated = |_: &Key| Some(h2.clone());
        let (out, _) = raise_marks(&mut data, &[&m("k1", &h2, 1)], &rotated);
        assert_eq!(out, [Saved]);
        assert_eq!(data.get("site-a.k1").unwrap(), &format!("{}:1", &h2[..16]));
    }

    #[test]
    fn entries_and_shards_are_stable() {
        let k = Key {
            namespace: "kiosks".into(),
            name: "till.07".into(),
        };
        assert_eq!(key_of_entry(&entry_key(&k)), Some(k.clone()));
        assert_eq!(shard_of(&k), shard_of(&k.clone()));
        assert!(shard_of(&k) < SHARDS);
        assert_eq!(shard_name(3), "recast-gwseq-03");
        assert_eq!(parse_mark("abc:12"), Some(("abc", 12)));
        assert_eq!(parse_mark("abc"), None);
        assert_eq!(parse_mark("abc:x"), None);
    }
}
