//! Per-endpoint bearer tokens and the replay high-water marks, in the gateway's own SQLite file
//! (`gateway.db` in the data directory, WAL mode).
//!
//! A token is 32 random bytes (ring's system RNG), shown once as `rct_<64 hex>` when issued and
//! stored only as its SHA-256. Issuing again rotates it (the old token stops working at once);
//! revoking deletes it. Rotation also resets the endpoint's report sequence: a freshly imaged
//! agent with new credentials starts a new sequence space.
//!
//! The whole token table is mirrored in memory (a fleet's hashes are a few MB), so a made-up
//! token is refused without a database query: a flood of junk costs no SQLite work. The file
//! is created 0600 and commits are fsynced (`synchronous=FULL`): an accepted report's sequence
//! is on disk before its 2xx, written by the gateway's group commit in one transaction per
//! batch. On Kubernetes the same state lives in the apiserver ([`kube_credentials`] and the
//! gateway's `kube_ledger`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};

use crate::encoding::hex;
use crate::store::Key;

pub use kube_credentials::KubeCredentials;

pub mod kube_credentials;

pub const TOKEN_PREFIX: &str = "rct_";
pub const DB_FILE: &str = crate::store::embedded::GATEWAY_DB_FILE;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("gateway database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the system random number generator failed; no token was issued")]
    Random,
    #[error("gateway database {path}: {source}; check the data directory's ownership")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gateway state in the apiserver: {0}")]
    Apiserver(String),
    #[error("the gateway's state write stopped: {0}")]
    Stopped(String),
}

/// The SHA-256 of a presented token, hex. Only this is ever stored or compared.
pub fn token_hash(token: &str) -> String {
    hex(digest(&SHA256, token.as_bytes()).as_ref())
}

/// A new token: 32 bytes from the system RNG, as `rct_<64 hex>`.
pub fn new_token(rng: &SystemRandom) -> Result<String, CredentialError> {
    let mut raw = [0u8; 32];
    rng.fill(&mut raw).map_err(|_| CredentialError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&raw)))
}

/// A token's shape, checked before hashing, so junk never reaches the database.
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_PREFIX.len() + 64
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub struct SqliteLedger {
    path: PathBuf,
    conn: Mutex<Connection>,
    rng: SystemRandom,
    /// The whole token table (hash → endpoint), valid while SQLite's data_version (which
    /// moves when another connection commits) is unchanged; this process's own issue/revoke
    /// update it in place.
    cache: Mutex<TokenCache>,
}

#[derive(Default)]
struct TokenCache {
    /// None: not loaded yet (or forgotten): the next lookup loads the table.
    data_version: Option<i64>,
    /// When `data_version` was last read from the database.
    checked_at: Option<std::time::Instant>,
    keys: std::collections::HashMap<String, Key>,
}

/// How stale the mirror may be: a token issued, rotated or revoked by another process
/// (`recastctl token`, `recast-operator gateway-token`) takes effect within this long. Reading the database's
/// version on every request would serialise all requests on its connection.
const TOKEN_CACHE_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

impl SqliteLedger {
    pub fn open(data_dir: &Path) -> Result<Self, CredentialError> {
        let path = data_dir.join(DB_FILE);
        let err = |source| CredentialError::Db {
            path: path.clone(),
            source,
        };
        // Token hashes and replay marks: owner-only, whatever the umask.
        crate::store::private::private_db_file(&path).map_err(|e| CredentialError::File {
            path: path.clone(),
            source: e,
        })?;
        let mut conn = Connection::open(&path).map_err(err)?;
        // Write transactions take the write lock when they begin (see the embedded store's
        // connect: a deferred read-then-write fails at once when another connection wrote).
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        // FULL: a commit is fsynced, so a sequence acknowledged with a 2xx survives a crash
        // or power loss (commits are batched, see GroupCommit).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS tokens (
                 namespace TEXT NOT NULL, name TEXT NOT NULL,
                 hash TEXT NOT NULL UNIQUE, issued_at TEXT NOT NULL,
                 PRIMARY KEY (namespace, name));
             CREATE TABLE IF NOT EXISTS sequences (
                 namespace TEXT NOT NULL, name TEXT NOT NULL, last INTEGER NOT NULL,
                 PRIMARY KEY (namespace, name));
             CREATE TABLE IF NOT EXISTS enrollments (
                 namespace TEXT NOT NULL, name TEXT NOT NULL, attempt TEXT NOT NULL,
                 enrolled_at TEXT NOT NULL,
                 PRIMARY KEY (namespace, name, attempt));",
        )
        .map_err(err)?;
        Ok(SqliteLedger {
            path,
            conn: Mutex::new(conn),
            rng: SystemRandom::new(),
            cache: Mutex::new(TokenCache::default()),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every change is one
        // statement or transaction), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After this process's own commit to the token table (which does not move its own
    /// connection's data_version): the key's old hash goes, its new one (if any) comes.
    fn cache_set(&self, key: &Key, hash: Option<String>) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.keys.retain(|_, k| k != key);
        if let Some(h) = hash {
            c.keys.insert(h, key.clone());
        }
    }

    fn db_err(&self, source: rusqlite::Error) -> CredentialError {
        CredentialError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Issues (or rotates) the endpoint's token and returns it. The caller shows it once; it
    /// cannot be read back.
    pub fn issue(&self, key: &Key, now: &str) -> Result<String, CredentialError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        let token = self.issue_in(&tx, key, now)?;
        tx.commit().map_err(|e| self.db_err(e))?;
        self.cache_set(key, Some(token_hash(&token)));
        Ok(token)
    }

    /// Issues the endpoint's token for the enrollment of `attempt`, once: None when that
    /// attempt already enrolled (its credential works one time, so a copy of agent.json
    /// cannot take the endpoint's token from the agent that enrolled with it).
    pub fn enroll_once(
        &self,
        key: &Key,
        attempt: &str,
        now: &str,
    ) -> Result<Option<String>, CredentialError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        let fresh = tx
            .execute(
                "INSERT INTO enrollments (namespace, name, attempt, enrolled_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                params![key.namespace, key.name, attempt, now],
            )
            .map_err(|e| self.db_err(e))?;
        if fresh == 0 {
            return Ok(None);
        }
        let token = self.issue_in(&tx, key, now)?;
        tx.commit().map_err(|e| self.db_err(e))?;
        self.cache_set(key, Some(token_hash(&token)));
        Ok(Some(token))
    }

    fn issue_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &Key,
        now: &str,
    ) -> Result<String, CredentialError> {
        let token = new_token(&self.rng)?;
        tx.execute(
            "INSERT INTO tokens (namespace, name, hash, issued_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (namespace, name) DO UPDATE SET hash = excluded.hash, issued_at = excluded.issued_at",
            params![key.namespace, key.name, token_hash(&token), now],
        )
        .map_err(|e| self.db_err(e))?;
        tx.execute(
            "DELETE FROM sequences WHERE namespace = ?1 AND name = ?2",
            params![key.namespace, key.name],
        )
        .map_err(|e| self.db_err(e))?;
        Ok(token)
    }

    /// Revokes the endpoint's token; true if it had one.
    pub fn revoke(&self, key: &Key) -> Result<bool, CredentialError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM tokens WHERE namespace = ?1 AND name = ?2",
                params![key.namespace, key.name],
            )
            .map_err(|e| self.db_err(e))?;
        self.cache_set(key, None);
        Ok(n > 0)
    }

    /// The endpoint a token belongs to, if it is current. A rotation or revocation by
    /// another process (`recastctl token`) takes effect within
    /// [`TOKEN_CACHE_RECHECK`]; one by this process at once.
    pub fn endpoint_for(&self, token: &str) -> Result<Option<Key>, CredentialError> {
        if !well_formed(token) {
            return Ok(None);
        }
        self.endpoint_for_hash(&token_hash(token))
    }

    /// Like [`endpoint_for`](Self::endpoint_for), by the token's hash. Answered from memory;
    /// the database is read only to notice another process's change (its data_version, at
    /// most every [`TOKEN_CACHE_RECHECK`]) and then to reload the table.
    pub fn endpoint_for_hash(&self, hash: &str) -> Result<Option<Key>, CredentialError> {
        {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = c.data_version.is_some()
                && c.checked_at
                    .is_some_and(|t| t.elapsed() < TOKEN_CACHE_RECHECK);
            if fresh {
                return Ok(c.keys.get(hash).cloned());
            }
        }
        let conn = self.conn();
        let version: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.db_err(e))?;
        let stale = {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.data_version != Some(version)
        };
        let reloaded = if stale {
            // Another process issued, rotated or revoked a token (or this is the first
            // lookup): read the table again.
            let mut stmt = conn
                .prepare_cached("SELECT hash, namespace, name FROM tokens")
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Key {
                            namespace: r.get(1)?,
                            name: r.get(2)?,
                        },
                    ))
                })
                .map_err(|e| self.db_err(e))?;
            Some(
                rows.collect::<Result<std::collections::HashMap<_, _>, _>>()
                    .map_err(|e| self.db_err(e))?,
            )
        } else {
            None
        };
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(keys) = reloaded {
            c.keys = keys;
            c.data_version = Some(version);
        }
        c.checked_at = Some(std::time::Instant::now());
        Ok(c.keys.get(hash).cloned())
    }

    /// The last accepted sequence of every endpoint that has one.
    pub fn sequences(&self) -> Result<Vec<(Key, u64)>, CredentialError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT namespace, name, last FROM sequences")
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    Key {
                        namespace: r.get(0)?,
                        name: r.get(1)?,
                    },
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))
    }

    /// Stores high-water marks in one transaction (the flusher batches them), never lowering
    /// one, and only while the endpoint still holds the token the mark was reached with (a
    /// rotation in between starts a new sequence space and wins). Per mark, what it found.
    pub fn save_sequences(&self, marks: &[Mark]) -> Result<Vec<MarkOutcome>, CredentialError> {
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        let mut outcomes = Vec::with_capacity(marks.len());
        {
            let mut raise = tx
                .prepare_cached(
                    "INSERT INTO sequences (namespace, name, last)
                     SELECT ?1, ?2, ?3 WHERE EXISTS
                         (SELECT 1 FROM tokens WHERE namespace = ?1 AND name = ?2 AND hash = ?4)
                     ON CONFLICT (namespace, name) DO UPDATE SET last = excluded.last
                         WHERE excluded.last > last",
                )
                .map_err(|e| self.db_err(e))?;
            let mut current_token = tx
                .prepare_cached(
                    "SELECT 1 FROM tokens WHERE namespace = ?1 AND name = ?2 AND hash = ?3",
                )
                .map_err(|e| self.db_err(e))?;
            for (key, hash, seq) in marks {
                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                let raised = raise
                    .execute(params![key.namespace, key.name, seq, hash])
                    .map_err(|e| self.db_err(e))?;
                // Not raised: either the mark is not above the stored one (superseded), or the
                // endpoint holds another token now (this one was revoked or rotated).
                let outcome = if raised > 0 {
                    MarkOutcome::Saved
                } else if current_token
                    .exists(params![key.namespace, key.name, hash])
                    .map_err(|e| self.db_err(e))?
                {
                    MarkOutcome::Superseded
                } else {
                    MarkOutcome::TokenGone
                };
                outcomes.push(outcome);
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(outcomes)
    }

    /// The stored high-water mark of one endpoint (0 when none).
    pub fn sequence(&self, key: &Key) -> Result<u64, CredentialError> {
        self.conn()
            .query_row(
                "SELECT last FROM sequences WHERE namespace = ?1 AND name = ?2",
                params![key.namespace, key.name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
            .map_err(|e| self.db_err(e))
    }
}

/// A replay mark: the endpoint, the hash of the token it was reached with, the sequence.
pub type Mark = (Key, String, u64);

/// What saving one accepted sequence found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkOutcome {
    /// Raised: this report is accepted.
    Saved,
    /// The stored mark of the same token is already at or above it: the report (or a later
    /// one) was accepted before, by this process or another replica; a replay.
    Superseded,
    /// The endpoint no longer holds the token the report came with (revoked, or rotated by a
    /// reissue or an enrollment since the token was checked): the token is what is refused.
    TokenGone,
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

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("recast-gw-cred-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn issue_rotate_revoke() {
        let d = dir("irr");
        let store = SqliteLedger::open(&d).unwrap();
        let t1 = store
            .issue(&key("kiosk-01"), "2026-01-15T00:00:00Z")
            .unwrap();
        assert!(well_formed(&t1), "{t1}");
        assert_eq!(store.endpoint_for(&t1).unwrap(), Some(key("kiosk-01")));
        store
            .save_sequences(&[(key("kiosk-01"), token_hash(&t1), 10)])
            .unwrap();
        assert_eq!(store.sequence(&key("kiosk-01")).unwrap(), 10);
        // Rotation: the old token dies, the sequence space restarts.
        let t2 = store
            .issue(&key("kiosk-01"), "2026-01-15T00:01:00Z")
            .unwrap();
        assert_ne!(t1, t2);
        assert_eq!(store.endpoint_for(&t1).unwrap(), None);
        assert_eq!(store.endpoint_for(&t2).unwrap(), Some(key("kiosk-01")));
        assert_eq!(store.sequence(&key("kiosk-01")).unwrap(), 0);
        // A mark reached with the old token is not saved over the new sequence space: the
        // token is what is refused.
        assert_eq!(
            store
                .save_sequences(&[(key("kiosk-01"), token_hash(&t1), 30)])
                .unwrap(),
            [MarkOutcome::TokenGone]
        );
        assert_eq!(store.sequence(&key("kiosk-01")).unwrap(), 0);
        // Never lowered.
        let h2 = token_hash(&t2);
        assert_eq!(
            store
                .save_sequences(&[(key("kiosk-01"), h2.clone(), 20)])
                .unwrap(),
            [MarkOutcome::Saved]
        );
        assert_eq!(
            store.save_sequences(&[(key("kiosk-01"), h2, 5)]).unwrap(),
            [MarkOutcome::Superseded]
        );
        assert_eq!(store.sequence(&key("kiosk-01")).unwrap(), 20);
        assert!(store.revoke(&key("kiosk-01")).unwrap());
        assert!(!store.revoke(&key("kiosk-01")).unwrap());
        assert_eq!(store.endpoint_for(&t2).unwrap(), None);
        // No token, no mark.
        store
            .save_sequences(&[(key("kiosk-02"), token_hash(&t2), 5)])
            .unwrap();
        assert_eq!(store.sequence(&key("kiosk-02")).unwrap(), 0);
        // Only the hash is on disk.
        drop(store);
        let bytes = std::fs::read(d.join(DB_FILE)).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(&t2[TOKEN_PREFIX.len()..]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_revocation_by_another_process_takes_effect_within_the_recheck_period() {
        let d = dir("other");
        let gateway_side = SqliteLedger::open(&d).unwrap();
        let cli_side = SqliteLedger::open(&d).unwrap();
        let t = cli_side.issue(&key("kiosk-01"), "t").unwrap();
        // Cached on the gateway's side after the first lookup.
        for _ in 0..2 {
            assert_eq!(
                gateway_side.endpoint_for(&t).unwrap(),
                Some(key("kiosk-01"))
            );
        }
        assert!(cli_side.revoke(&key("kiosk-01")).unwrap());
        std::thread::sleep(TOKEN_CACHE_RECHECK);
        assert_eq!(gateway_side.endpoint_for(&t).unwrap(), None);
        let t2 = cli_side.issue(&key("kiosk-01"), "t").unwrap();
        // A token issued elsewhere works within the recheck period too (misses are answered
        // from memory: junk costs no query).
        std::thread::sleep(TOKEN_CACHE_RECHECK);
        assert_eq!(
            gateway_side.endpoint_for(&t2).unwrap(),
            Some(key("kiosk-01"))
        );
        assert_eq!(gateway_side.endpoint_for(&t).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_database_is_owner_only_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let store = SqliteLedger::open(&d).unwrap();
        store.issue(&key("a"), "t").unwrap();
        for f in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
            let mode = std::fs::metadata(d.join(&f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_tokens_are_refused_from_memory() {
        let d = dir("mem");
        let store = SqliteLedger::open(&d).unwrap();
        let t = store.issue(&key("a"), "t").unwrap();
        assert_eq!(store.endpoint_for(&t).unwrap(), Some(key("a")));
        // The table is mirrored: take the database away and lookups still answer, hits and
        // misses alike, until the recheck.
        store.conn().execute_batch("DROP TABLE tokens").unwrap();
        let junk = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
        for _ in 0..1000 {
            assert_eq!(store.endpoint_for(&junk).unwrap(), None);
        }
        assert_eq!(store.endpoint_for(&t).unwrap(), Some(key("a")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn junk_tokens_never_match() {
        let d = dir("junk");
        let store = SqliteLedger::open(&d).unwrap();
        store.issue(&key("a"), "t").unwrap();
        for junk in [
            "",
            "rct_",
            "Bearer x",
            &"a".repeat(68),
            &format!("rct_{}", "G".repeat(64)),
        ] {
            assert_eq!(store.endpoint_for(junk).unwrap(), None, "{junk}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
