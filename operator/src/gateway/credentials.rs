//! The gateway's view of its credential store: the embedded backend's SQLite ledger or the
//! apiserver ledger, and the group commit that makes accepted sequences durable before their
//! 200. Tokens, their hashes and the SQLite ledger are in [`crate::credentials`].

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::credentials::*;
use crate::store::Key;

/// Where the gateway keeps tokens, enrollments and accepted report sequences: its own SQLite
/// file on the embedded backend, the apiserver (ConfigMaps in the control namespace, see
/// [`super::kube_ledger`]) on Kubernetes, where any number of gateway replicas share it.
pub enum CredentialStore {
    Sqlite(Arc<SqliteLedger>),
    Kube(super::kube_ledger::KubeLedger),
}

impl CredentialStore {
    /// The embedded backend's `gateway.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, CredentialError> {
        SqliteLedger::open(data_dir).map(|s| CredentialStore::Sqlite(Arc::new(s)))
    }

    /// Issues (or rotates) the endpoint's token and returns it, shown once.
    pub async fn issue(&self, key: &Key, now: &str) -> Result<String, CredentialError> {
        match self {
            CredentialStore::Sqlite(s) => s.issue(key, now),
            CredentialStore::Kube(k) => k.issue(key, now).await,
        }
    }

    /// Issues the endpoint's token for the enrollment of `attempt`, once.
    pub async fn enroll_once(
        &self,
        key: &Key,
        attempt: &str,
        now: &str,
    ) -> Result<Option<String>, CredentialError> {
        match self {
            CredentialStore::Sqlite(s) => s.enroll_once(key, attempt, now),
            CredentialStore::Kube(k) => k.enroll_once(key, attempt, now).await,
        }
    }

    /// Revokes the endpoint's token; true if it had one.
    pub async fn revoke(&self, key: &Key) -> Result<bool, CredentialError> {
        match self {
            CredentialStore::Sqlite(s) => s.revoke(key),
            CredentialStore::Kube(k) => k.revoke(key).await,
        }
    }

    /// The endpoint a token belongs to, from memory.
    pub fn endpoint_for(&self, token: &str) -> Result<Option<Key>, CredentialError> {
        if !well_formed(token) {
            return Ok(None);
        }
        self.endpoint_for_hash(&token_hash(token))
    }

    /// Like [`endpoint_for`](Self::endpoint_for), by the token's hash.
    pub fn endpoint_for_hash(&self, hash: &str) -> Result<Option<Key>, CredentialError> {
        match self {
            CredentialStore::Sqlite(s) => s.endpoint_for_hash(hash),
            CredentialStore::Kube(k) => Ok(k.endpoint_for_hash(hash)),
        }
    }

    /// The last accepted sequence of every endpoint that has one.
    pub async fn sequences(&self) -> Result<Vec<(Key, u64)>, CredentialError> {
        match self {
            CredentialStore::Sqlite(s) => s.sequences(),
            CredentialStore::Kube(k) => k.sequences().await,
        }
    }

    /// The stored high-water mark of one endpoint's current token (0 when none).
    pub async fn sequence(&self, key: &Key) -> Result<u64, CredentialError> {
        match self {
            CredentialStore::Sqlite(s) => s.sequence(key),
            CredentialStore::Kube(k) => k.sequence(key).await,
        }
    }

    /// Saves marks (SQLite's work on the blocking pool: it must not hold a runtime worker
    /// from the requests). Per mark: what it found, or an error when it could not be written
    /// (on SQLite the whole transaction; on the apiserver its shard).
    pub async fn save_sequences(&self, marks: Vec<Mark>) -> Vec<Result<MarkOutcome, String>> {
        match self {
            CredentialStore::Sqlite(s) => {
                let s = s.clone();
                let n = marks.len();
                let result = tokio::task::spawn_blocking(move || s.save_sequences(&marks))
                    .await
                    .map_err(|e| CredentialError::Stopped(e.to_string()))
                    .and_then(|r| r);
                match result {
                    Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.to_string()); n],
                }
            }
            CredentialStore::Kube(k) => k.save_sequences(&marks).await,
        }
    }

    /// How many marks one flush hands [`save_sequences`](Self::save_sequences) at a time:
    /// [`super::FLUSH_BATCH`] per SQLite transaction (a longer one would hold the database
    /// from the requests' token rechecks); all of them on the apiserver, where a call writes
    /// each shard it touches once however many marks it carries.
    pub fn marks_per_flush(&self) -> usize {
        match self {
            CredentialStore::Sqlite(_) => super::FLUSH_BATCH,
            CredentialStore::Kube(_) => usize::MAX,
        }
    }

    /// Store writes one commit of [`save_sequences`](Self::save_sequences) cost (for the
    /// gateway's stats): one transaction on SQLite, one write per shard touched on the
    /// apiserver (counted by the ledger itself).
    pub(super) fn writes_per_commit(&self) -> u64 {
        match self {
            CredentialStore::Sqlite(_) => 1,
            CredentialStore::Kube(k) => k.take_writes(),
        }
    }
}

/// Saves accepted sequences durably before their reports are answered, without one fsync
/// per report: every mark submitted while a commit runs waits for the next one, so a
/// commit carries all reports that arrived during the previous (group commit). At most
/// [`super::FLUSH_BATCH`] marks per transaction.
pub struct GroupCommit {
    store: Arc<CredentialStore>,
    queue: Mutex<Queue>,
    /// Transactions committed (for stats and benchmarks).
    pub commits: AtomicU64,
}

type Waiter = tokio::sync::oneshot::Sender<Result<MarkOutcome, String>>;

#[derive(Default)]
struct Queue {
    marks: Vec<(Mark, Waiter)>,
    /// A writer task is draining the queue.
    writing: bool,
}

impl GroupCommit {
    pub fn new(store: Arc<CredentialStore>) -> Arc<Self> {
        Arc::new(GroupCommit {
            store,
            queue: Mutex::new(Queue::default()),
            commits: AtomicU64::new(0),
        })
    }

    /// Returns once `mark` is committed: Saved, or Superseded when the stored mark was
    /// already at or above it (another gateway replica accepted this sequence: the report must
    /// be refused as a replay), or TokenGone when the endpoint holds another token now (the
    /// report must be refused for its token); an error when the commit failed (the report must
    /// then not be acknowledged). The writing happens in a task of its own, so a caller that goes away
    /// (a client that hung up) cannot strand the others of its batch.
    pub async fn save(self: &Arc<Self>, mark: Mark) -> Result<MarkOutcome, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.marks.push((mark, tx));
            !std::mem::replace(&mut q.writing, true)
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        rx.await
            .map_err(|_| "the sequence writer stopped".to_string())?
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let batch: Vec<(Mark, Waiter)> = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.marks.is_empty() {
                    q.writing = false;
                    return;
                }
                let n = q.marks.len().min(super::FLUSH_BATCH);
                q.marks.drain(..n).collect()
            };
            let marks: Vec<Mark> = batch.iter().map(|(m, _)| m.clone()).collect();
            let outcomes = self.store.save_sequences(marks).await;
            self.commits
                .fetch_add(self.store.writes_per_commit(), Ordering::Relaxed);
            for ((_, waiter), outcome) in batch.into_iter().zip(outcomes) {
                let _ = waiter.send(outcome);
            }
        }
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

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("recast-gw-gc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn group_commit_makes_marks_durable_in_few_transactions() {
        let d = dir("group");
        let store = Arc::new(CredentialStore::open(&d).unwrap());
        let mut hashes = Vec::new();
        for i in 0..200 {
            let t = store.issue(&key(&format!("ep-{i}")), "t").await.unwrap();
            hashes.push(token_hash(&t));
        }
        let gc = GroupCommit::new(store.clone());
        let saves = (0..200).map(|i| {
            let gc = gc.clone();
            let mark = (key(&format!("ep-{i}")), hashes[i].clone(), 7 + i as u64);
            async move { gc.save(mark).await }
        });
        for r in futures::future::join_all(saves).await {
            assert_eq!(r.unwrap(), MarkOutcome::Saved, "every mark is new");
        }
        // The same marks again: superseded, each of them (what a second gateway replica that
        // saw the same reports is told).
        let again = (0..200).map(|i| {
            let gc = gc.clone();
            let mark = (key(&format!("ep-{i}")), hashes[i].clone(), 7 + i as u64);
            async move { gc.save(mark).await }
        });
        for r in futures::future::join_all(again).await {
            assert_eq!(
                r.unwrap(),
                MarkOutcome::Superseded,
                "an accepted sequence is never accepted again"
            );
        }
        let commits = gc.commits.load(Ordering::Relaxed);
        assert!(commits < 200, "{commits} transactions for 200 marks");
        // Durable: a fresh connection (another process after a crash) reads every mark.
        let other = SqliteLedger::open(&d).unwrap();
        let marks: std::collections::HashMap<Key, u64> =
            other.sequences().unwrap().into_iter().collect();
        for i in 0..200 {
            assert_eq!(marks.get(&key(&format!("ep-{i}"))), Some(&(7 + i as u64)));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
