//! The embedded store: recast's objects in one SQLite file (WAL mode) in a data directory.
//!
//! Objects are the CRD types serialised as JSON, with the metadata Kubernetes would give them
//! (uid, resourceVersion, generation, creationTimestamp, finalizers, deletionTimestamp). Every
//! write bumps a store-wide revision (like etcd's) that becomes the object's resourceVersion and
//! appends to a change feed the controller follows. `recastctl` opens the same file; SQLite's
//! locking serialises the two processes.
//!
//! Durability: WAL with synchronous=NORMAL. A process killed mid-write leaves the last committed
//! state (a transaction is all or nothing); a power cut may lose the last transactions but never
//! corrupts the file.

mod backend;
mod backup;
pub use backend::EmbeddedBackend;
pub use backup::{BackupSummary, CarriedOutcome, OPERATOR_LOCK_FILE, OperatorLock, RestoreSummary};

use crate::store::BootIntent;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use recast_crds::manifest::Kind;
use recast_crds::validate::{InvalidObject, admit};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

/// `PRAGMA application_id` of a recast data file ("RCST"), so a foreign SQLite file is refused
/// instead of written into.
const APPLICATION_ID: i64 = 0x5243_5354;
pub const DB_FILE: &str = "recast.db";
/// The agent gateway's database beside the store: agents' token hashes and replay marks.
pub const GATEWAY_DB_FILE: &str = "gateway.db";
/// The imaging key's default place beside the store (`--imaging-key-file` moves it).
pub const IMAGING_KEY_FILE: &str = "imaging.key";
/// Events kept per object (the oldest are dropped): see `record_event`.
pub const MAX_EVENTS_PER_OBJECT: i64 = 1000;
/// Discovered MAC addresses kept (the least recently seen are dropped): see
/// `record_discovered`.
pub const MAX_DISCOVERED: i64 = 1024;
/// Finalizer the controller puts on every Endpoint: a pending network boot is disarmed before
/// the object goes away.
pub const BOOT_FINALIZER: &str = "recast.dev/disarm-boot";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path}: not a recast data file ({why}); point --data-dir at an empty or recast directory"
    )]
    Foreign { path: PathBuf, why: String },
    #[error(
        "{path}: the database is damaged ({why}); restore it from a backup, or move it away to start empty"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "{path}: written by a newer recast (schema {found}, this build knows {known}); upgrade recast"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "{dir}: no recast store there ({DB_FILE} does not exist). Point --data-dir (or RECAST_DATA_DIR) at the directory `recast-operator run --data-dir` uses; to start a new store there on purpose, `recastctl --data-dir {dir} apply --create-store -f FILE`"
    )]
    Missing { dir: PathBuf },
    #[error(
        "{dir} is in use by {holder}: stop it first (a restore replaces everything the operator decides from, and two operators must never drive one store)"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("{path} exists: choose another file name, or pass --force to replace it")]
    BackupExists { path: PathBuf },
    #[error(
        "{path} is the live store itself (or one of its files): write the backup somewhere else, ideally another disk"
    )]
    BackupOverLive { path: PathBuf },
    #[error("{op} {path}: {source}; the live store was not changed")]
    Copy {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{op} {path}: the database stayed busy for {secs} s (another process writes without pause); retry, or stop that process"
    )]
    Busy {
        op: &'static str,
        path: PathBuf,
        secs: u64,
    },
    #[error(
        "cannot use the lock file {path}: {source}; check the data directory's owner and permissions"
    )]
    LockFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir} does not exist: a restore goes into the directory the operator uses (`recast-operator run --data-dir`); create it first if this is a new machine"
    )]
    NoDataDir { dir: PathBuf },
    #[error(
        "{path}: written by an older recast (schema {found}; this build writes {known}); start this release's recast-operator once, which upgrades the store in place, then run this command again"
    )]
    TooOld {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidObject),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
    #[error(
        "{kind} {namespace}/{name} was changed by someone else (resourceVersion {expected} is stale); re-read and retry"
    )]
    Conflict {
        kind: Kind,
        namespace: String,
        name: String,
        expected: String,
    },
    #[error("stored {kind} {namespace}/{name} is unreadable: {why}")]
    BadRecord {
        kind: Kind,
        namespace: String,
        name: String,
        why: String,
    },
    #[error("invalid Secret: {why}")]
    InvalidSecret { why: String },
    #[error(
        "Endpoint {namespace}/{name} refused: {}; a MAC address belongs to one Endpoint (remove it from the other Endpoint first, or fix a typo)",
        conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    MacTaken {
        namespace: String,
        name: String,
        conflicts: Vec<crate::store::arming::MacConflict>,
    },
    #[error("Endpoint {namespace}/{name} refused: {message}")]
    ComputerName {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The computer name an Endpoint document gives its machine (None: not an object with a name).
fn computer_name_of(name: &str, obj: &Value) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let hostname = obj.pointer("/spec/hostname").and_then(Value::as_str);
    Some(recast_core::naming::computer_name(name, hostname))
}

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// A recorded event (the embedded counterpart of a Kubernetes Event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub time: String,
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// Journal state of an action key (see `journal_begin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalState {
    /// Never started: run it.
    New,
    /// Started but not recorded as finished (the process died in between): check before
    /// running again.
    Interrupted,
    /// Finished: do not run again.
    Done,
}

pub struct EmbeddedStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now_rfc3339() -> String {
    recast_core::time::format(jiff::Timestamp::now())
}

/// What opening a data directory may do to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The operator's `run`: a missing store is created, an older one upgraded in place.
    Create,
    /// `recastctl apply --create-store`: a missing store is created; an older one is not
    /// upgraded (an older operator may still run on it).
    CreateIfMissing,
    /// Every other command: the store must exist at this build's schema. A mistyped
    /// --data-dir must not look like an empty site, and nothing is created or changed on disk.
    Existing,
    /// `recastctl store backup`: the store must exist, at this build's schema or an older one
    /// (a backup before an upgrade); nothing is changed.
    AnySchema,
}

impl OpenMode {
    fn creates(self) -> bool {
        matches!(self, OpenMode::Create | OpenMode::CreateIfMissing)
    }
}

/// The schema steps, oldest first: step `n` brings a store from schema `n - 1` to `n`. Each
/// runs once, inside the immediate transaction that opens the store, so several processes
/// opening one file at once never run a step twice (see [`EmbeddedStore::open_with`]).
/// Append, never edit: a site's store may be at any earlier step.
const MIGRATIONS: &[&str] = &[
    // 1: the first release's tables.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO meta VALUES ('schema_version', 0), ('revision', 0);
     CREATE TABLE objects (
       kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
       uid TEXT NOT NULL, resource_version INTEGER NOT NULL,
       generation INTEGER NOT NULL, created_at TEXT NOT NULL,
       deleted_at TEXT, finalizers TEXT NOT NULL DEFAULT '[]',
       object TEXT NOT NULL, status TEXT,
       PRIMARY KEY (kind, namespace, name));
     CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,
       kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL);
     CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,
       kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
       time TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
     CREATE INDEX events_by_object ON events (kind, namespace, name);
     CREATE TABLE boot_intents (mac TEXT PRIMARY KEY, namespace TEXT NOT NULL,
       endpoint TEXT NOT NULL, attempt_id TEXT NOT NULL, try_number INTEGER NOT NULL,
       image TEXT NOT NULL, image_digest TEXT, boot_mode TEXT NOT NULL, armed_at TEXT NOT NULL);
     CREATE TABLE journal (key TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT);
     CREATE TABLE inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL,
       name TEXT NOT NULL, input TEXT NOT NULL, received_at TEXT NOT NULL);",
    // 2: BMC credentials. Schema-1 releases created this table on open without a version
    // bump (older binaries ignore it), hence IF NOT EXISTS.
    "CREATE TABLE IF NOT EXISTS secrets (namespace TEXT NOT NULL, name TEXT NOT NULL,
       data TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (namespace, name));",
];

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl EmbeddedStore {
    /// Opens (creating when absent) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, OpenMode::Create)
    }

    /// Opens the store in `data_dir`, which must exist already.
    pub fn open_existing(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, OpenMode::Existing)
    }

    /// Opens the store in `data_dir`: checks it is recast's and undamaged, then creates or
    /// upgrades its schema in one immediate transaction. Any number of processes may open one
    /// file at once (the operator starting while `recastctl` runs): the first to take the write
    /// lock creates the schema, the others wait for it and find it done.
    pub fn open_with(data_dir: &Path, mode: OpenMode) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !mode.creates() && !path.is_file() {
            return Err(StoreError::Missing {
                dir: data_dir.to_path_buf(),
            });
        }
        // recast.db holds BMC passwords: owner-only, whatever the umask.
        super::private::private_dir(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        super::private::private_db_file(&path).map_err(|source| StoreError::DataDir {
            path: path.clone(),
            source,
        })?;
        let conn = Self::connect(&path, mode)?;
        Self::migrate(data_dir, &path, &conn, mode)?;
        Ok(EmbeddedStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// A connection to a recast (or empty) database file that passed SQLite's quick check.
    fn connect(path: &Path, mode: OpenMode) -> Result<Connection, StoreError> {
        let foreign = |why: String| StoreError::Foreign {
            path: path.to_path_buf(),
            why,
        };
        let corrupt = |why: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        // SQLite opens anything lazily; the first read tells a database from another file.
        let mut conn = Connection::open(path).map_err(|e| foreign(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Every write transaction takes the write lock when it begins. A deferred one reads
        // first and asks for the lock later; if another process (recastctl beside the
        // operator) committed in between, WAL refuses the upgrade at once with
        // SQLITE_BUSY_SNAPSHOT ("database is locked"), which the busy timeout never waits out.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        // Both read in one transaction. Tables without recast's id may be a store another
        // process is creating this instant: read again under the write lock, which waits for
        // that process to commit.
        let read_ids = |behavior| -> Result<(i64, i64), StoreError> {
            let tx = rusqlite::Transaction::new_unchecked(&conn, behavior)?;
            let app_id = tx
                .query_row("PRAGMA application_id", [], |r| r.get(0))
                .map_err(|e| match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::NotADatabase) => foreign(e.to_string()),
                    _ => corrupt(e.to_string()),
                })?;
            let tables = tx
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| corrupt(e.to_string()))?;
            Ok((app_id, tables))
        };
        let (mut app_id, mut tables) = read_ids(rusqlite::TransactionBehavior::Deferred)?;
        if app_id == 0 && tables > 0 {
            (app_id, tables) = read_ids(rusqlite::TransactionBehavior::Immediate)?;
        }
        if app_id != APPLICATION_ID && !(app_id == 0 && tables == 0) {
            return Err(foreign(format!(
                "application_id {app_id:#x} with {tables} schema objects"
            )));
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| corrupt(e.to_string()))?;
        if check != "ok" {
            return Err(corrupt(check));
        }
        // Switching to WAL takes an exclusive lock for a moment: another opener holding the
        // file makes it busy; the busy timeout covers a wait, a repeat covers the rest. Only
        // an opener that may create does it (a store it made is WAL already; one that only
        // reads must not change the file).
        let mut tries = 0;
        while mode.creates() {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(e)
                    if tries < 50
                        && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    /// Reads the schema version (0: an empty file) in one transaction of `behavior`.
    fn schema_version<'c>(
        conn: &'c Connection,
        path: &Path,
        behavior: rusqlite::TransactionBehavior,
    ) -> Result<(rusqlite::Transaction<'c>, i64), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(conn, behavior)?;
        let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        let version: i64 = if tables == 0 {
            0
        } else {
            Self::schema_of(&tx).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                why: format!("no schema version: {e}"),
            })?
        };
        if version < 0 {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                why: format!("schema version {version}"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        Ok((tx, version))
    }

    /// Brings the schema to [`SCHEMA_VERSION`] when `mode` may (see [`OpenMode`]): inside one
    /// immediate transaction (the write lock first, so two openers serialise here and the
    /// second finds the first's work). Modes that do not create only read, in a deferred
    /// transaction (a read-only mount works).
    fn migrate(
        data_dir: &Path,
        path: &Path,
        conn: &Connection,
        mode: OpenMode,
    ) -> Result<(), StoreError> {
        let too_old = |found| StoreError::TooOld {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        };
        if !mode.creates() {
            let (_read, version) =
                Self::schema_version(conn, path, rusqlite::TransactionBehavior::Deferred)?;
            return match (mode, version) {
                // An empty file: an operator is creating the store right now, or one died
                // before it could.
                (_, 0) => Err(StoreError::Missing {
                    dir: data_dir.to_path_buf(),
                }),
                (_, SCHEMA_VERSION) | (OpenMode::AnySchema, _) => Ok(()),
                (_, v) => Err(too_old(v)),
            };
        }
        let (tx, version) =
            Self::schema_version(conn, path, rusqlite::TransactionBehavior::Immediate)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > 0 && mode == OpenMode::CreateIfMissing {
            return Err(too_old(version));
        }
        if version == 0 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tracing::info!(path = %path.display(), schema = step + 1, "store schema upgraded");
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [SCHEMA_VERSION],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The schema version a store or backup file records (an error when it records none).
    pub fn schema_of(conn: &Connection) -> Result<i64, rusqlite::Error> {
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses an Endpoint that lists a MAC another live Endpoint lists (in this transaction,
    /// so two applies cannot both pass: SQLite serialises writers).
    /// A computer name belongs to one Endpoint of a namespace (see
    /// `recast_core::naming::computer_name_conflicts`). Checked only when the object's computer
    /// name is new or changes, so an Endpoint already in conflict can still be edited while
    /// someone sorts it out, as with MACs on Kubernetes.
    fn check_computer_name(
        tx: &rusqlite::Transaction<'_>,
        namespace: &str,
        name: &str,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<(), StoreError> {
        let Some(computer) = computer_name_of(name, obj) else {
            return Ok(());
        };
        if old.and_then(|o| computer_name_of(name, o)).as_deref() == Some(computer.as_str()) {
            return Ok(());
        }
        if let Some(problem) = recast_core::naming::computer_name_problem(&computer) {
            return Err(StoreError::ComputerName {
                namespace: namespace.into(),
                name: name.into(),
                message: problem,
            });
        }
        // Only rows that can have this computer name are read and parsed: a derived name is a
        // prefix of the Endpoint's name without dots (any case), and a set one is only in
        // objects whose text holds "hostname" (cheap text tests before any JSON is parsed,
        // so loading a fleet does not parse every Endpoint once per Endpoint).
        let mut stmt = tx.prepare(
            "SELECT name, json_extract(object, '$.spec.hostname')
             FROM objects WHERE kind = 'Endpoint' AND namespace = ?1 AND deleted_at IS NULL
             AND (replace(name, '.', '') LIKE ?2 OR instr(object, '\"hostname\"') > 0)",
        )?;
        // Computer names hold only letters, digits and '-': nothing LIKE treats specially.
        let prefix = format!("{computer}%");
        let others: Vec<(String, String)> = stmt
            .query_map(params![namespace, prefix], |r| {
                let n: String = r.get(0)?;
                let h: Option<String> = r.get(1)?;
                let c = recast_core::naming::computer_name(&n, h.as_deref());
                Ok((n, c))
            })?
            .collect::<Result<_, _>>()?;
        let conflicts = recast_core::naming::computer_name_conflicts(
            (namespace, name, &computer),
            others
                .iter()
                .map(|(n, c)| (namespace, n.as_str(), c.clone())),
        );
        if conflicts.is_empty() {
            return Ok(());
        }
        Err(StoreError::ComputerName {
            namespace: namespace.into(),
            name: name.into(),
            message: recast_core::naming::computer_name_refusal(&computer, &conflicts),
        })
    }

    fn check_macs(
        tx: &rusqlite::Transaction<'_>,
        namespace: &str,
        name: &str,
        obj: &Value,
    ) -> Result<(), StoreError> {
        let macs: Vec<String> = obj
            .pointer("/spec/identity/macAddresses")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if macs.is_empty() {
            return Ok(());
        }
        let mut stmt = tx.prepare(
            "SELECT namespace, name, json_extract(object, '$.spec.identity.macAddresses')
             FROM objects WHERE kind = 'Endpoint' AND deleted_at IS NULL",
        )?;
        let others: Vec<(String, String, Vec<String>)> = stmt
            .query_map([], |r| {
                let list: Option<String> = r.get(2)?;
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    list.and_then(|l| serde_json::from_str::<Vec<String>>(&l).ok())
                        .unwrap_or_default(),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let conflicts = crate::store::arming::mac_conflicts(
            (namespace, name, &macs),
            others
                .iter()
                .map(|(ns, n, m)| (ns.as_str(), n.as_str(), m.as_slice())),
        );
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(StoreError::MacTaken {
                namespace: namespace.into(),
                name: name.into(),
                conflicts,
            })
        }
    }

    fn bump_revision(tx: &rusqlite::Transaction<'_>) -> Result<i64, StoreError> {
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision'",
            [],
        )?;
        Ok(
            tx.query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })?,
        )
    }

    fn record_change(
        tx: &rusqlite::Transaction<'_>,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO changes (kind, namespace, name) VALUES (?1, ?2, ?3)",
            params![kind.as_str(), ns, name],
        )?;
        Ok(())
    }

    /// Creates or updates an object from a manifest document, validating it (as an update
    /// when it exists, so immutability rules apply). Status in the document is ignored.
    pub fn apply(
        &self,
        doc: &Value,
        default_namespace: &str,
    ) -> Result<(Kind, String, ApplyOutcome), StoreError> {
        let mut doc = doc.clone();
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(default_namespace)
            .to_string();
        if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
            // Server-managed fields a user may have copied from `get -o yaml`.
            for f in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "managedFields",
            ] {
                meta.remove(f);
            }
            meta.insert("namespace".into(), json!(namespace));
        }
        let kind_name = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing = match Kind::from_kind(&kind_name) {
            Some(kind) => Self::get_in(&tx, kind, &namespace, &name)?,
            None => None,
        };
        let old = existing.as_ref().map(|e| e.object.clone());
        let typed = admit(&doc, old.as_ref())?;
        let kind = typed.kind();
        if kind == Kind::Endpoint {
            Self::check_macs(&tx, &namespace, &name, &doc)?;
            Self::check_computer_name(&tx, &namespace, &name, &doc, old.as_ref())?;
        }
        let mut stored = doc.clone();
        if let Some(o) = stored.as_object_mut() {
            o.remove("status");
        }
        let outcome = match existing {
            None => {
                let rv = Self::bump_revision(&tx)?;
                tx.execute(
                    "INSERT INTO objects (kind, namespace, name, uid, resource_version, generation, created_at, object)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7)",
                    params![
                        kind.as_str(),
                        namespace,
                        name,
                        uuid::Uuid::new_v4().to_string(),
                        rv,
                        now_rfc3339(),
                        stored.to_string()
                    ],
                )?;
                ApplyOutcome::Created
            }
            Some(e) => {
                let mut merged = stored.clone();
                // Finalizers are the controller's; keep them across a user's apply.
                if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("finalizers");
                }
                let mut before = e.object.clone();
                strip_server_fields(&mut before);
                if before == merged {
                    ApplyOutcome::Unchanged
                } else {
                    let rv = Self::bump_revision(&tx)?;
                    let spec_changed = before.get("spec") != merged.get("spec");
                    tx.execute(
                        "UPDATE objects SET object = ?1, resource_version = ?2,
                           generation = generation + ?3 WHERE kind = ?4 AND namespace = ?5 AND name = ?6",
                        params![merged.to_string(), rv, i64::from(spec_changed), kind.as_str(), namespace, name],
                    )?;
                    ApplyOutcome::Configured
                }
            }
        };
        if outcome != ApplyOutcome::Unchanged {
            Self::record_change(&tx, kind, &namespace, &name)?;
        }
        tx.commit()?;
        Ok((kind, name, outcome))
    }

    /// The full object (metadata filled in, status attached).
    pub fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let conn = self.conn();
        Ok(Self::get_in(&conn, kind, namespace, name)?.map(|r| r.object))
    }

    fn get_in(
        conn: &Connection,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Row>, StoreError> {
        let row = conn
            .query_row(
                "SELECT uid, resource_version, generation, created_at, deleted_at, finalizers, object, status
                 FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind.as_str(), namespace, name],
                RawRow::read,
            )
            .optional()?;
        row.map(|r| r.into_row(kind, namespace, name)).transpose()
    }

    /// Every object of a kind, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Value>, StoreError> {
        self.list_each(kind, namespace, Ok)
    }

    /// Like [`list`](Self::list), handing each object to `each` as soon as it is read: a
    /// caller that decodes into its own type never holds the whole fleet as JSON values
    /// (about 10 KiB per endpoint, several times the decoded size).
    pub fn list_each<T, E: From<StoreError>>(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        mut each: impl FnMut(Value) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT uid, resource_version, generation, created_at, deleted_at, finalizers, object, status, namespace, name
             FROM objects WHERE kind = ?1 AND (?2 IS NULL OR namespace = ?2) ORDER BY namespace, name",
            )
            .map_err(StoreError::from)?;
        let rows = stmt
            .query_map(params![kind.as_str(), namespace], |r| {
                Ok((
                    RawRow::read(r)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                ))
            })
            .map_err(StoreError::from)?;
        let mut out = Vec::new();
        for row in rows {
            let (raw, ns, name) = row.map_err(StoreError::from)?;
            out.push(each(raw.into_row(kind, &ns, &name)?.object)?);
        }
        Ok(out)
    }

    /// The (namespace, name) of every object of a kind, in one namespace or all, ordered:
    /// for callers that only need to know which objects exist.
    pub fn names(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT namespace, name FROM objects WHERE kind = ?1 AND (?2 IS NULL OR namespace = ?2)
             ORDER BY namespace, name",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), namespace], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Read-modify-write of an object's spec/metadata with optimistic concurrency: `mutate` runs
    /// on the current object; a concurrent writer makes it re-read and run again.
    pub fn update<F>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut mutate: F,
    ) -> Result<Value, StoreError>
    where
        F: FnMut(&mut Value) -> Result<(), StoreError>,
    {
        for _ in 0..5 {
            let current = self
                .get(kind, namespace, name)?
                .ok_or_else(|| StoreError::NotFound {
                    kind,
                    namespace: namespace.into(),
                    name: name.into(),
                })?;
            let rv = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("0")
                .to_string();
            let mut next = current.clone();
            mutate(&mut next)?;
            match self.replace(&next, &rv) {
                Err(StoreError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(StoreError::Conflict {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            expected: "(retried 5 times)".into(),
        })
    }

    /// Replaces an object's spec and metadata if its resourceVersion is still `expected_rv`.
    pub fn replace(&self, obj: &Value, expected_rv: &str) -> Result<Value, StoreError> {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::from_kind);
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(recast_crds::DEFAULT_NAMESPACE)
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(kind) = kind else {
            return Err(admit(obj, None)
                .err()
                .map(StoreError::Invalid)
                .unwrap_or_else(|| StoreError::BadRecord {
                    kind: Kind::Endpoint,
                    namespace: ns.clone(),
                    name: name.clone(),
                    why: "no kind".into(),
                }));
        };
        let current = Self::get_in(&tx, kind, &ns, &name)?.ok_or_else(|| StoreError::NotFound {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
        })?;
        if current.resource_version.to_string() != expected_rv {
            return Err(StoreError::Conflict {
                kind,
                namespace: ns,
                name,
                expected: expected_rv.into(),
            });
        }
        admit(obj, Some(&current.object))?;
        if kind == Kind::Endpoint {
            Self::check_macs(&tx, &ns, &name, obj)?;
            Self::check_computer_name(&tx, &ns, &name, obj, Some(&current.object))?;
        }
        let mut stored = obj.clone();
        // Finalizers belong to the controller: a user's replace keeps what is stored.
        let finalizers = current
            .object
            .pointer("/metadata/finalizers")
            .cloned()
            .unwrap_or(json!([]));
        strip_server_fields(&mut stored);
        if let Some(o) = stored.as_object_mut() {
            o.remove("status");
        }
        let mut before = current.object.clone();
        strip_server_fields(&mut before);
        let spec_changed = before.get("spec") != stored.get("spec");
        let rv = Self::bump_revision(&tx)?;
        tx.execute(
            "UPDATE objects SET object = ?1, resource_version = ?2, generation = generation + ?3, finalizers = ?4
             WHERE kind = ?5 AND namespace = ?6 AND name = ?7",
            params![stored.to_string(), rv, i64::from(spec_changed), finalizers.to_string(), kind.as_str(), ns, name],
        )?;
        Self::record_change(&tx, kind, &ns, &name)?;
        // Finalizers emptied on an object being deleted: it goes now.
        if current.deleted_at.is_some() && finalizers.as_array().is_none_or(|f| f.is_empty()) {
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind.as_str(), ns, name],
            )?;
        }
        let out = Self::get_in(&tx, kind, &ns, &name)?
            .map(|r| r.object)
            .unwrap_or(Value::Null);
        tx.commit()?;
        Ok(out)
    }

    /// Writes status (the status subresource). `expected_generation` guards against a spec the
    /// writer has not seen: a mismatch is a Conflict, and the caller decides again.
    pub fn write_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        expected_generation: Option<i64>,
        status: &Value,
    ) -> Result<String, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current =
            Self::get_in(&tx, kind, namespace, name)?.ok_or_else(|| StoreError::NotFound {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            })?;
        if let Some(g) = expected_generation
            && g != current.generation
        {
            return Err(StoreError::Conflict {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                expected: format!("generation {g}"),
            });
        }
        if current.object.get("status") == Some(status) {
            return Ok(current.resource_version.to_string());
        }
        let rv = Self::bump_revision(&tx)?;
        tx.execute(
            "UPDATE objects SET status = ?1, resource_version = ?2 WHERE kind = ?3 AND namespace = ?4 AND name = ?5",
            params![status.to_string(), rv, kind.as_str(), namespace, name],
        )?;
        Self::record_change(&tx, kind, namespace, name)?;
        tx.commit()?;
        Ok(rv.to_string())
    }

    /// Adds a finalizer if missing (the controller does this for every Endpoint).
    pub fn ensure_finalizer(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT finalizers FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND deleted_at IS NULL",
                params![kind.as_str(), namespace, name],
                |r| r.get(0),
            )
            .optional()?;
        // Gone or being deleted: the caller must not go on to arm anything for it.
        let Some(current) = current else {
            return Err(StoreError::NotFound {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        let mut list: Vec<String> = serde_json::from_str(&current).unwrap_or_default();
        if list.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        list.push(finalizer.to_string());
        // A new resourceVersion, so a read-modify-write that started before cannot put the
        // old list back.
        let rv = Self::bump_revision(&tx)?;
        tx.execute(
            "UPDATE objects SET finalizers = ?1, resource_version = ?2 WHERE kind = ?3 AND namespace = ?4 AND name = ?5",
            params![serde_json::to_string(&list).unwrap_or_default(), rv, kind.as_str(), namespace, name],
        )?;
        Self::record_change(&tx, kind, namespace, name)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a finalizer; an object being deleted with no finalizer left is deleted.
    pub fn remove_finalizer(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT finalizers, deleted_at FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind.as_str(), namespace, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((finalizers, deleted_at)) = row else {
            return Ok(());
        };
        let mut list: Vec<String> = serde_json::from_str(&finalizers).unwrap_or_default();
        list.retain(|f| f != finalizer);
        let rv = Self::bump_revision(&tx)?;
        if deleted_at.is_some() && list.is_empty() {
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind.as_str(), namespace, name],
            )?;
        } else {
            tx.execute(
                "UPDATE objects SET finalizers = ?1, resource_version = ?2 WHERE kind = ?3 AND namespace = ?4 AND name = ?5",
                params![serde_json::to_string(&list).unwrap_or_default(), rv, kind.as_str(), namespace, name],
            )?;
        }
        Self::record_change(&tx, kind, namespace, name)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an object; with finalizers it is only marked (deletionTimestamp) until the
    /// controller removes them. Returns false when it did not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let finalizers: Option<String> = tx
            .query_row(
                "SELECT finalizers FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind.as_str(), namespace, name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(finalizers) = finalizers else {
            return Ok(false);
        };
        let list: Vec<String> = serde_json::from_str(&finalizers).unwrap_or_default();
        let rv = Self::bump_revision(&tx)?;
        if list.is_empty() {
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind.as_str(), namespace, name],
            )?;
        } else {
            tx.execute(
                "UPDATE objects SET deleted_at = coalesce(deleted_at, ?1), resource_version = ?2
                 WHERE kind = ?3 AND namespace = ?4 AND name = ?5",
                params![now_rfc3339(), rv, kind.as_str(), namespace, name],
            )?;
        }
        Self::record_change(&tx, kind, namespace, name)?;
        tx.commit()?;
        Ok(true)
    }

    // ---- change feed ---------------------------------------------------------------------

    pub fn latest_change(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })?)
    }

    /// Changes after `seq`, oldest first, at most `limit`.
    pub fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, kind, namespace, name FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![seq, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, namespace, name) = row?;
            if let Some(kind) = Kind::from_kind(&kind) {
                out.push(Change {
                    seq,
                    kind,
                    namespace,
                    name,
                });
            }
        }
        Ok(out)
    }

    /// Drops change-feed entries up to `seq` (the controller calls this after catching up).
    pub fn compact_changes(&self, up_to: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM changes WHERE seq <= ?1", params![up_to])?;
        Ok(())
    }

    // ---- secrets ---------------------------------------------------------------------------
    //
    // `v1 Secret` objects for the embedded backend (BMC credentials, CA bundles), kept in their
    // own table: they are not recast kinds, never appear in `get`/`describe`, and their data
    // is only handed to the code that needs it.

    /// Stores a `v1 Secret` document (`data` base64, `stringData` plain, as Kubernetes takes
    /// them). Returns its name and what changed; never echoes the data.
    pub fn apply_secret(
        &self,
        doc: &Value,
        default_namespace: &str,
    ) -> Result<(String, ApplyOutcome), StoreError> {
        let invalid = |why: String| StoreError::InvalidSecret { why };
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(doc.clone())
            .map_err(|e| {
                invalid(format!(
                    "{e}; a Secret has metadata.name and string values under data (base64) or stringData"
                ))
            })?;
        let name = secret
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("metadata.name is missing".into()))?;
        let namespace = secret
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| default_namespace.to_string());
        let mut data: std::collections::BTreeMap<String, k8s_openapi::ByteString> =
            secret.data.unwrap_or_default();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
        let encoded = serde_json::to_string(&data).map_err(|e| invalid(e.to_string()))?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before: Option<String> = tx
            .query_row(
                "SELECT data FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                |r| r.get(0),
            )
            .optional()?;
        let outcome = match before {
            Some(b) if b == encoded => ApplyOutcome::Unchanged,
            Some(_) => ApplyOutcome::Configured,
            None => ApplyOutcome::Created,
        };
        if outcome != ApplyOutcome::Unchanged {
            tx.execute(
                "INSERT INTO secrets (namespace, name, data, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (namespace, name) DO UPDATE SET data = ?3, updated_at = ?4",
                params![namespace, name, encoded, now_rfc3339()],
            )?;
        }
        tx.commit()?;
        Ok((name, outcome))
    }

    /// The data of a stored Secret, or None when there is no such Secret.
    pub fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, Vec<u8>>>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .query_row(
                "SELECT data FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(raw) = raw else { return Ok(None) };
        let data: std::collections::BTreeMap<String, k8s_openapi::ByteString> =
            serde_json::from_str(&raw).map_err(|e| StoreError::InvalidSecret {
                why: format!(
                    "stored Secret {namespace}/{name} is unreadable ({e}); apply it again"
                ),
            })?;
        Ok(Some(data.into_iter().map(|(k, v)| (k, v.0)).collect()))
    }

    /// The Secrets' names and key names (never their values), for listings.
    pub fn secret_keys(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<String>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT namespace, name, data FROM secrets WHERE (?1 IS NULL OR namespace = ?1) ORDER BY namespace, name",
        )?;
        let rows = stmt.query_map(params![namespace], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (ns, name, raw) = row?;
            let keys = serde_json::from_str::<serde_json::Map<String, Value>>(&raw)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            out.push((ns, name, keys));
        }
        Ok(out)
    }

    // ---- events ----------------------------------------------------------------------------

    /// Appends an event, keeping the newest [`MAX_EVENTS_PER_OBJECT`] of the object.
    pub fn record_event(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        ev: &EventRecord,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO events (kind, namespace, name, time, type, reason, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![kind.as_str(), namespace, name, ev.time, ev.type_, ev.reason, ev.message],
        )?;
        // Some events are caused by unauthenticated requests (a machine that network-boots
        // with nothing armed): an object's history is bounded so that a flood of them cannot
        // grow the database without end. The oldest go first, as Kubernetes expires events.
        conn.execute(
            "DELETE FROM events WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND id <=
               (SELECT id FROM events WHERE kind = ?1 AND namespace = ?2 AND name = ?3
                ORDER BY id DESC LIMIT 1 OFFSET ?4)",
            params![kind.as_str(), namespace, name, MAX_EVENTS_PER_OBJECT],
        )?;
        Ok(())
    }

    pub fn events(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT time, type, reason, message FROM events WHERE kind = ?1 AND namespace = ?2 AND name = ?3 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), namespace, name], |r| {
            Ok(EventRecord {
                time: r.get(0)?,
                type_: r.get(1)?,
                reason: r.get(2)?,
                message: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- inbox -----------------------------------------------------------------------------

    /// Queues an input (an agent report, a boot or imaging event) for an endpoint. It stays
    /// until the controller has decided on it, so a crash in between loses nothing.
    pub fn post_input(
        &self,
        namespace: &str,
        name: &str,
        input: &Value,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO inbox (namespace, name, input, received_at) VALUES (?1, ?2, ?3, ?4)",
            params![namespace, name, input.to_string(), now_rfc3339()],
        )?;
        let seq = tx.last_insert_rowid();
        // The change feed wakes the controller for this endpoint.
        Self::record_change(&tx, Kind::Endpoint, namespace, name)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Queued inputs of all endpoints, oldest first: (seq, namespace, name, input text).
    pub fn pending_inputs(
        &self,
        limit: usize,
    ) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT seq, namespace, name, input FROM inbox ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued inputs of one endpoint, oldest first: (seq, input text).
    pub fn inputs_for(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT seq, input FROM inbox WHERE namespace = ?1 AND name = ?2 ORDER BY seq LIMIT 256")?;
        let rows = stmt.query_map(params![namespace, name], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn ack_input(&self, seq: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM inbox WHERE seq = ?1", params![seq])?;
        Ok(())
    }

    // ---- boot intents and the action journal ---------------------------------------------

    /// Arms network boot for every MAC of an endpoint (idempotent: the same attempt and try
    /// again changes nothing).
    pub fn arm_boot(&self, i: &BootIntent) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // A MAC removed from the endpoint since the last try must not stay armed.
        tx.execute(
            "DELETE FROM boot_intents WHERE namespace = ?1 AND endpoint = ?2",
            params![i.namespace, i.endpoint],
        )?;
        for mac in &i.mac_addresses {
            tx.execute(
                "INSERT INTO boot_intents (mac, namespace, endpoint, attempt_id, try_number, image, image_digest, boot_mode, armed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (mac) DO UPDATE SET namespace = excluded.namespace, endpoint = excluded.endpoint,
                   attempt_id = excluded.attempt_id, try_number = excluded.try_number, image = excluded.image,
                   image_digest = excluded.image_digest, boot_mode = excluded.boot_mode, armed_at = excluded.armed_at",
                params![mac.to_ascii_lowercase(), i.namespace, i.endpoint, i.attempt_id, i.try_number, i.image, i.image_digest, i.boot_mode, i.armed_at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Disarms every MAC armed for an endpoint.
    pub fn disarm_boot(&self, namespace: &str, endpoint: &str) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM boot_intents WHERE namespace = ?1 AND endpoint = ?2",
            params![namespace, endpoint],
        )?)
    }

    /// The intent armed for this MAC address, with every MAC of its endpoint.
    pub fn boot_intent(&self, mac: &str) -> Result<Option<BootIntent>, StoreError> {
        let conn = self.conn();
        let Some(mut intent) = conn
            .query_row(
                "SELECT namespace, endpoint, attempt_id, try_number, image, image_digest, boot_mode, armed_at
                 FROM boot_intents WHERE mac = ?1",
                params![mac.to_ascii_lowercase()],
                |r| {
                    Ok(BootIntent {
                        namespace: r.get(0)?,
                        endpoint: r.get(1)?,
                        mac_addresses: Vec::new(),
                        attempt_id: r.get(2)?,
                        try_number: r.get(3)?,
                        image: r.get(4)?,
                        image_digest: r.get(5)?,
                        boot_mode: r.get(6)?,
                        armed_at: r.get(7)?,
                    })
                },
            )
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt = conn.prepare(
            "SELECT mac FROM boot_intents WHERE namespace = ?1 AND endpoint = ?2 ORDER BY mac",
        )?;
        intent.mac_addresses = stmt
            .query_map(params![intent.namespace, intent.endpoint], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Some(intent))
    }

    /// The endpoint (namespace, name, spec.bootServer) that lists this MAC address.
    /// Every live Endpoint that lists `mac` (namespace, name, spec.bootServer): more than one
    /// is an ambiguous MAC, which boots nothing (see store::arming::Known::Ambiguous).
    pub fn endpoints_by_mac(
        &self,
        mac: &str,
    ) -> Result<Vec<crate::store::arming::Owner>, StoreError> {
        // Admission allows only colon-separated hex octets: case is the only variation.
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT o.namespace, o.name, json_extract(o.object, '$.spec.bootServer'),
                    json_extract(o.object, '$.spec.bootChain'), json_extract(o.object, '$.spec.bootMode')
             FROM objects o, json_each(json_extract(o.object, '$.spec.identity.macAddresses')) m
             WHERE o.kind = 'Endpoint' AND o.deleted_at IS NULL AND lower(m.value) = ?1
             ORDER BY o.namespace, o.name",
        )?;
        let rows = stmt
            .query_map(params![mac.to_ascii_lowercase()], |r| {
                let (server, chain, mode): (Option<String>, Option<String>, Option<String>) =
                    (r.get(2)?, r.get(3)?, r.get(4)?);
                Ok(crate::store::arming::Owner::from_fields(
                    r.get(0)?,
                    r.get(1)?,
                    server.as_deref(),
                    chain.as_deref(),
                    mode.as_deref(),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The intent armed for an endpoint, with all its MACs.
    pub fn boot_intent_of(
        &self,
        namespace: &str,
        endpoint: &str,
    ) -> Result<Option<BootIntent>, StoreError> {
        let mac: Option<String> = self
            .conn()
            .query_row(
                "SELECT mac FROM boot_intents WHERE namespace = ?1 AND endpoint = ?2 ORDER BY mac LIMIT 1",
                params![namespace, endpoint],
                |r| r.get(0),
            )
            .optional()?;
        match mac {
            Some(mac) => self.boot_intent(&mac),
            None => Ok(None),
        }
    }

    /// Remembers a MAC address nobody manages that asked to network-boot (one row per MAC;
    /// `recastctl get discovered` lists them). Anyone can make the boot service see any MAC,
    /// so the table keeps the [`MAX_DISCOVERED`] most recently seen and forgets older ones.
    pub fn record_discovered(&self, mac: &str, time: &str, detail: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM events WHERE kind = 'DiscoveredMac' AND name = ?1",
            params![mac],
        )?;
        tx.execute(
            "INSERT INTO events (kind, namespace, name, time, type, reason, message)
             VALUES ('DiscoveredMac', '', ?1, ?2, 'Normal', 'Discovered', ?3)",
            params![mac, time, detail],
        )?;
        tx.execute(
            "DELETE FROM events WHERE kind = 'DiscoveredMac' AND id <=
               (SELECT id FROM events WHERE kind = 'DiscoveredMac'
                ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![MAX_DISCOVERED],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The MAC addresses recorded by `record_discovered`, newest first.
    pub fn discovered(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, time FROM events WHERE kind = 'DiscoveredMac' ORDER BY id DESC",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks an action key started, returning what was known before.
    pub fn journal_begin(&self, key: &str) -> Result<JournalState, StoreError> {
        let conn = self.conn();
        let row: Option<Option<String>> = conn
            .query_row(
                "SELECT finished_at FROM journal WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?;
        match row {
            Some(Some(_)) => Ok(JournalState::Done),
            Some(None) => Ok(JournalState::Interrupted),
            None => {
                conn.execute(
                    "INSERT INTO journal (key, started_at) VALUES (?1, ?2)",
                    params![key, now_rfc3339()],
                )?;
                Ok(JournalState::New)
            }
        }
    }

    pub fn journal_finish(&self, key: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE journal SET finished_at = ?2 WHERE key = ?1",
            params![key, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Forgets a started-but-failed key so a retry of the same try can run it again.
    pub fn journal_forget(&self, key: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM journal WHERE key = ?1 AND finished_at IS NULL",
            params![key],
        )?;
        Ok(())
    }
}

struct RawRow {
    uid: String,
    resource_version: i64,
    generation: i64,
    created_at: String,
    deleted_at: Option<String>,
    finalizers: String,
    object: String,
    status: Option<String>,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            uid: r.get(0)?,
            resource_version: r.get(1)?,
            generation: r.get(2)?,
            created_at: r.get(3)?,
            deleted_at: r.get(4)?,
            finalizers: r.get(5)?,
            object: r.get(6)?,
            status: r.get(7)?,
        })
    }

    fn into_row(self, kind: Kind, namespace: &str, name: &str) -> Result<Row, StoreError> {
        let bad = |why: String| StoreError::BadRecord {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            why,
        };
        let mut object: Value =
            serde_json::from_str(&self.object).map_err(|e| bad(e.to_string()))?;
        let finalizers: Value =
            serde_json::from_str(&self.finalizers).map_err(|e| bad(e.to_string()))?;
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| bad("no metadata".into()))?;
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("uid".into(), json!(self.uid));
        meta.insert(
            "resourceVersion".into(),
            json!(self.resource_version.to_string()),
        );
        meta.insert("generation".into(), json!(self.generation));
        meta.insert("creationTimestamp".into(), json!(self.created_at));
        if finalizers.as_array().is_some_and(|f| !f.is_empty()) {
            meta.insert("finalizers".into(), finalizers);
        }
        if let Some(d) = &self.deleted_at {
            meta.insert("deletionTimestamp".into(), json!(d));
        }
        if let Some(status) = &self.status {
            let status: Value = serde_json::from_str(status).map_err(|e| bad(e.to_string()))?;
            if let Some(o) = object.as_object_mut() {
                o.insert("status".into(), status);
            }
        }
        Ok(Row {
            resource_version: self.resource_version,
            generation: self.generation,
            deleted_at: self.deleted_at,
            object,
        })
    }
}

struct Row {
    resource_version: i64,
    generation: i64,
    deleted_at: Option<String>,
    object: Value,
}

fn strip_server_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "finalizers",
            "managedFields",
        ] {
            meta.remove(f);
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
}

#[cfg(test)]
mod mac_tests {
    use super::*;

    fn endpoint(ns: &str, name: &str, macs: &[&str]) -> Value {
        json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"identity": {"macAddresses": macs}, "bootMode": "uefi",
                     "image": {"goldenImage": "win11"}},
        })
    }

    fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_mac_another_endpoint_lists_is_refused_naming_the_owner() {
        let (_d, s) = store();
        s.apply(
            &endpoint("tenant-a", "kiosk-01", &["52:54:00:00:00:01"]),
            "default",
        )
        .unwrap();
        let rev = s.latest_change().unwrap();
        for mac in [
            "52:54:00:00:00:01",
            "52:54:00:00:00:01".to_uppercase().as_str(),
        ] {
            let err = s
                .apply(
                    &endpoint("tenant-b", "thief", &["52:54:00:00:00:09", mac]),
                    "default",
                )
                .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StoreError::MacTaken { .. }), "{msg}");
            assert!(
                msg.contains("tenant-a/kiosk-01") && msg.contains("52:54:00:00:00:01"),
                "{msg}"
            );
        }
        // Nothing written.
        assert!(
            s.get(Kind::Endpoint, "tenant-b", "thief")
                .unwrap()
                .is_none()
        );
        assert_eq!(s.latest_change().unwrap(), rev);
        // The owner re-applies freely; another MAC is fine.
        s.apply(
            &endpoint("tenant-a", "kiosk-01", &["52:54:00:00:00:01"]),
            "default",
        )
        .unwrap();
        s.apply(
            &endpoint("tenant-b", "own", &["52:54:00:00:00:02"]),
            "default",
        )
        .unwrap();
    }

    #[test]
    fn a_replace_cannot_take_a_mac_either() {
        let (_d, s) = store();
        s.apply(&endpoint("a", "one", &["52:54:00:00:00:01"]), "default")
            .unwrap();
        s.apply(&endpoint("a", "two", &["52:54:00:00:00:02"]), "default")
            .unwrap();
        let err = s
            .update(Kind::Endpoint, "a", "two", |obj| {
                obj["spec"]["identity"]["macAddresses"] = json!(["52:54:00:00:00:01"]);
                Ok(())
            })
            .unwrap_err();
        // Identity is immutable anyway; whichever rule answers, nothing changes.
        let _ = err;
        let two = s.get(Kind::Endpoint, "a", "two").unwrap().unwrap();
        assert_eq!(
            two["spec"]["identity"]["macAddresses"],
            json!(["52:54:00:00:00:02"])
        );
    }

    #[test]
    fn an_ambiguous_mac_from_an_older_store_shows_every_owner() {
        let (_d, s) = store();
        s.apply(&endpoint("a", "one", &["52:54:00:00:00:01"]), "default")
            .unwrap();
        // A store written before the rule: a second owner already in it.
        {
            let conn = s.conn();
            conn.execute(
                "INSERT INTO objects (kind, namespace, name, uid, resource_version, generation, created_at, object)
                 VALUES ('Endpoint', 'b', 'thief', 'u2', 99, 1, '2026-01-01T00:00:00Z', ?1)",
                params![endpoint("b", "thief", &["52:54:00:00:00:01"]).to_string()],
            )
            .unwrap();
        }
        let owners = s.endpoints_by_mac("52:54:00:00:00:01").unwrap();
        assert_eq!(owners.len(), 2, "{owners:?}");
        let known = crate::store::arming::Known::from_owners(owners);
        assert_eq!(
            known,
            crate::store::arming::Known::Ambiguous {
                owners: vec!["a/one".into(), "b/thief".into()]
            }
        );
    }
}
