//! Backups of the embedded store, taken while the operator runs, and restores from them.
//!
//! A backup is a consistent snapshot: SQLite's online backup copies every page under one read
//! transaction (the operator keeps writing meanwhile, into the WAL), into a file of its own
//! name beside the destination, created 0600, checked, and renamed into place only once it is
//! complete. It is a recast store file itself (same application id and schema), so it can be
//! opened, checked and restored by this build or a later one.
//!
//! A restore needs the operator stopped (it takes [`OperatorLock`], which the operator holds
//! while it runs): the operator decides from what it read, and would keep acting on the state
//! the restore throws away. The live store is first copied aside (`recast.db.before-restore-*`,
//! or moved aside as `recast.db.damaged-*` when it no longer opens, which is a restore's main
//! use); the backup is copied, upgraded to this build's schema and *fenced* in a scratch
//! directory; only then is it copied over the live store in one SQLite transaction, so a
//! restore that fails leaves the live store as it was. Fencing (see [`recast_core::restore`]):
//! every armed network boot is disarmed, every queued input dropped (it predates the backup),
//! and every endpoint waits for fresh evidence before anything starts on its own.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use recast_crds::endpoint::EndpointStatus;
use recast_crds::manifest::Kind;
use rusqlite::{Connection, OpenFlags};

use super::super::private::SQLITE_SIDE_FILES;
use super::{
    APPLICATION_ID, DB_FILE, EmbeddedStore, EventRecord, GATEWAY_DB_FILE, OpenMode, SCHEMA_VERSION,
    StoreError,
};

/// The table of a backup file that holds the agent gateway's database (`gateway.db`: the
/// agents' token hashes, replay marks and enrollments), so that a store restored on a new host
/// still knows every agent that had enrolled. Never copied into a live store.
const CARRIED_TABLE: &str = "backup_carried_files";

/// What a restore did with the `gateway.db` a backup carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CarriedOutcome {
    /// The data directory had none, or one without any token or enrollment (a new host whose
    /// operator ran once): written from the backup.
    Restored,
    /// The data directory's own holds tokens: kept (it knows every token issued since).
    KeptLive,
    /// The backup does not hold one (taken without a gateway, or by an older release).
    NotInBackup,
    /// The store was restored, but this file could not be written: why.
    Failed(String),
}

/// The lock file a running embedded operator holds in its data directory.
pub const OPERATOR_LOCK_FILE: &str = "operator.lock";

/// How long a copy waits for a database another process keeps busy.
const COPY_DEADLINE: Duration = Duration::from_secs(60);

/// An exclusive lock on a data directory: held by `recast-operator run` for its whole life
/// (so two operators never drive one store) and by a restore.
#[derive(Debug)]
pub struct OperatorLock {
    _file: File,
}

impl OperatorLock {
    /// Takes the lock (creating the data directory, owner-only, when it is missing), or says
    /// who holds it.
    pub fn acquire(data_dir: &Path, purpose: &str) -> Result<Self, StoreError> {
        super::super::private::private_dir(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(OPERATOR_LOCK_FILE);
        let lock_err = |source| StoreError::LockFile {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "another process (starting right now)".to_string(),
                    h => h.to_string(),
                };
                return Err(StoreError::Locked {
                    dir: data_dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(lock_err(source)),
        }
        use std::io::Write;
        file.set_len(0).map_err(lock_err)?;
        writeln!(file, "{purpose} (pid {})", std::process::id()).map_err(lock_err)?;
        Ok(OperatorLock { _file: file })
    }
}

/// What a backup wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub schema: i64,
    /// The store's revision at the moment of the snapshot.
    pub revision: i64,
    pub objects: i64,
    pub attempts_in_flight: i64,
    /// The data directory's files it carries besides the store (`gateway.db`, see
    /// CARRIED_TABLE).
    pub carried: Vec<String>,
    /// Why `gateway.db` is not in it although the data directory has one (the store's backup
    /// is complete all the same).
    pub not_carried: Option<String>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    pub objects: i64,
    /// The backup's schema, before it was upgraded to this build's.
    pub schema: i64,
    pub backed_up_at: Option<jiff::Timestamp>,
    /// Endpoints whose attempt in flight now waits for evidence, as "namespace/name".
    pub held: Vec<String>,
    /// Endpoints whose pending reimage request was dropped, as "namespace/name".
    pub requests_dropped: Vec<String>,
    /// Endpoints that wait for their agent's next report.
    pub endpoints: usize,
    pub boots_disarmed: i64,
    pub inputs_dropped: i64,
    /// Where the store that was replaced went.
    pub previous: Option<PathBuf>,
    /// Whether the replaced store was damaged (moved aside, not copied).
    pub previous_damaged: bool,
    /// What became of each file the backup carries besides the store.
    pub carried: Vec<(String, CarriedOutcome)>,
}

fn copy_err<'p>(op: &'static str, path: &'p Path) -> impl Fn(rusqlite::Error) -> StoreError + 'p {
    move |source| StoreError::Copy {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies every page of `from` into `to` in one step (one read transaction on `from`, one
/// write transaction on `to`): the copy is one consistent moment.
fn copy_all(
    from: &Connection,
    to: &mut Connection,
    op: &'static str,
    path: &Path,
) -> Result<(), StoreError> {
    let backup = rusqlite::backup::Backup::new(from, to).map_err(copy_err(op, path))?;
    let started = Instant::now();
    loop {
        match backup.step(-1).map_err(copy_err(op, path))? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            // Another connection held a lock: try again shortly (the busy timeout of a normal
            // statement does not apply to a backup step), but not forever.
            _ if started.elapsed() > COPY_DEADLINE => {
                return Err(StoreError::Busy {
                    op,
                    path: path.to_path_buf(),
                    secs: COPY_DEADLINE.as_secs(),
                });
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A database file and its SQLite companions.
fn db_files(path: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    std::iter::once(path.to_path_buf()).chain(
        SQLITE_SIDE_FILES
            .iter()
            .map(move |side| with_suffix(path, side)),
    )
}

fn remove_db_files(path: &Path) {
    for file in db_files(path) {
        let _ = std::fs::remove_file(file);
    }
}

fn count(conn: &Connection, sql: &str, path: &Path) -> Result<i64, StoreError> {
    conn.query_row(sql, [], |r| r.get(0))
        .map_err(copy_err("reading", path))
}

fn stamp(now: jiff::Timestamp) -> String {
    now.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Whether `dest` names the store file at `live` or one of its companions.
fn is_live_file(dest: &Path, live: &Path) -> bool {
    let canon = |p: &Path| {
        p.parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .zip(p.file_name())
            .map(|(d, f)| d.join(f))
    };
    let (Some(dest), Some(live)) = (canon(dest), canon(live)) else {
        return false;
    };
    db_files(&live).any(|f| f == dest)
}

impl EmbeddedStore {
    /// Writes a consistent snapshot of the store to `dest` (which must not exist unless
    /// `overwrite`) while the operator keeps running.
    pub fn backup_to(&self, dest: &Path, overwrite: bool) -> Result<BackupSummary, StoreError> {
        self.backup_with(dest, overwrite, true)
    }

    /// [`backup_to`](Self::backup_to), carrying `gateway.db` or not (the copy a restore keeps
    /// of the store it replaces does not: a restore never replaces a gateway.db with tokens).
    fn backup_with(
        &self,
        dest: &Path,
        overwrite: bool,
        carry: bool,
    ) -> Result<BackupSummary, StoreError> {
        if is_live_file(dest, self.path()) {
            return Err(StoreError::BackupOverLive {
                path: dest.to_path_buf(),
            });
        }
        if dest.exists() && !overwrite {
            return Err(StoreError::BackupExists {
                path: dest.to_path_buf(),
            });
        }
        // A name of its own: two backups to one destination never share a half file.
        let partial = with_suffix(
            dest,
            &format!(
                ".partial-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        );
        let result = self.write_snapshot(&partial, dest, carry);
        let result = result.and_then(|mut summary| {
            if !overwrite && dest.exists() {
                return Err(StoreError::BackupExists {
                    path: dest.to_path_buf(),
                });
            }
            std::fs::rename(&partial, dest).map_err(|source| StoreError::DataDir {
                path: dest.to_path_buf(),
                source,
            })?;
            // The rename itself is durable once the directory is.
            if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            summary.bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
            Ok(summary)
        });
        if result.is_err() {
            // Never leave a copy (with BMC credentials) behind.
            remove_db_files(&partial);
        }
        result
    }

    fn write_snapshot(
        &self,
        partial: &Path,
        dest: &Path,
        carry: bool,
    ) -> Result<BackupSummary, StoreError> {
        // Created 0600 before SQLite opens it: the backup holds BMC credentials.
        super::super::private::private_db_file(partial).map_err(|source| StoreError::DataDir {
            path: partial.to_path_buf(),
            source,
        })?;
        let mut out = Connection::open(partial).map_err(copy_err("writing", partial))?;
        copy_all(&self.conn(), &mut out, "backing up into", partial)?;
        // A table an older release may have copied into the live store goes first.
        out.execute(&format!("DROP TABLE IF EXISTS {CARRIED_TABLE}"), [])
            .map_err(copy_err("writing", partial))?;
        let (carried, not_carried) = if carry {
            self.carry_gateway(&out, partial)?
        } else {
            (Vec::new(), None)
        };
        // When, for the restore's messages (the copy is a moment; this says which).
        out.execute(
            "INSERT OR REPLACE INTO meta VALUES ('backed_up_at', ?1)",
            [jiff::Timestamp::now().as_second()],
        )
        .map_err(copy_err("writing", partial))?;
        let check: String = out
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(copy_err("checking", partial))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: partial.to_path_buf(),
                why: check,
            });
        }
        let summary = BackupSummary {
            path: dest.to_path_buf(),
            bytes: 0,
            schema: EmbeddedStore::schema_of(&out).map_err(copy_err("reading", partial))?,
            revision: count(
                &out,
                "SELECT value FROM meta WHERE key = 'revision'",
                partial,
            )?,
            objects: count(
                &out,
                "SELECT count(*) FROM objects WHERE deleted_at IS NULL",
                partial,
            )?,
            attempts_in_flight: count(
                &out,
                "SELECT count(*) FROM objects WHERE kind = 'Endpoint' AND json_extract(status, '$.activeAttempt') IS NOT NULL",
                partial,
            )?,
            carried,
            not_carried,
        };
        // One file, no WAL beside it: the backup is self-contained.
        out.pragma_update(None, "journal_mode", "DELETE")
            .map_err(copy_err("writing", partial))?;
        drop(out);
        File::open(partial)
            .and_then(|f| f.sync_all())
            .map_err(|source| StoreError::DataDir {
                path: partial.to_path_buf(),
                source,
            })?;
        Ok(summary)
    }

    /// Copies the data directory's `gateway.db` into the backup being written (`out`): the
    /// names carried, or why it could not be (a gateway database that cannot be read does not
    /// stop the store's backup).
    fn carry_gateway(
        &self,
        out: &Connection,
        partial: &Path,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let data_dir = self.path().parent().unwrap_or(Path::new("."));
        let file = data_dir.join(GATEWAY_DB_FILE);
        if !file.is_file() {
            return Ok((Vec::new(), None));
        }
        out.execute(
            &format!("CREATE TABLE {CARRIED_TABLE} (name TEXT PRIMARY KEY, data BLOB NOT NULL)"),
            [],
        )
        .map_err(copy_err("writing", partial))?;
        let data = match sqlite_snapshot(&file, &with_suffix(partial, ".gateway")) {
            Ok(d) => d,
            Err(e) => return Ok((Vec::new(), Some(e.to_string()))),
        };
        out.execute(
            &format!("INSERT INTO {CARRIED_TABLE} (name, data) VALUES (?1, ?2)"),
            rusqlite::params![GATEWAY_DB_FILE, data],
        )
        .map_err(copy_err("writing", partial))?;
        Ok((vec![GATEWAY_DB_FILE.to_string()], None))
    }

    /// Replaces the store in `data_dir` with the backup at `src` (the operator must be
    /// stopped), upgraded to this build's schema and fenced (see the module's documentation).
    pub fn restore_from(
        data_dir: &Path,
        src: &Path,
        now: jiff::Timestamp,
    ) -> Result<RestoreSummary, StoreError> {
        if !data_dir.is_dir() {
            return Err(StoreError::NoDataDir {
                dir: data_dir.to_path_buf(),
            });
        }
        let _lock = OperatorLock::acquire(data_dir, "recastctl store restore")?;
        let (schema, backed_up_at) = check_backup(src)?;

        // Copy, upgrade and fence in a scratch store beside the live one.
        let scratch_dir = data_dir.join(format!(".restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch_dir);
        let result = (|| {
            // Written (0600, fsynced) before the live store is touched; put in place after.
            let gateway = prepare_gateway(src, data_dir, now)?;
            let staged = stage(src, &scratch_dir)?;
            let mut summary = staged.fence(backed_up_at, now)?;
            summary.schema = schema;
            let (live, previous, damaged) = open_live_for_restore(data_dir, now)?;
            summary.previous = previous;
            summary.previous_damaged = damaged;
            // Revisions only go forward: a client that read the live store must see a
            // conflict, never a reused resourceVersion.
            let live_revision = count(
                &live.conn(),
                "SELECT value FROM meta WHERE key = 'revision'",
                live.path(),
            )?;
            staged
                .conn()
                .execute(
                    "UPDATE meta SET value = max(value, ?1) + 1 WHERE key = 'revision'",
                    [live_revision],
                )
                .map_err(copy_err("writing", staged.path()))?;
            copy_all(
                &staged.conn(),
                &mut live.conn(),
                "restoring into",
                live.path(),
            )?;
            // The store is restored: what happens to gateway.db now is reported, not an error
            // that would hide the summary.
            summary.carried = vec![(GATEWAY_DB_FILE.to_string(), gateway.put_in_place())];
            Ok(summary)
        })();
        let _ = std::fs::remove_dir_all(&scratch_dir);
        result
    }

    /// Disarms every network boot, drops every queued input and fences every endpoint (in
    /// this store, a staged copy of a backup).
    fn fence(
        &self,
        backed_up_at: Option<jiff::Timestamp>,
        now: jiff::Timestamp,
    ) -> Result<RestoreSummary, StoreError> {
        let (boots_disarmed, inputs_dropped) = {
            let conn = self.conn();
            let boots = conn.execute("DELETE FROM boot_intents", [])? as i64;
            let inputs = conn.execute("DELETE FROM inbox", [])? as i64;
            // The backup's own moment is the backup's, not the live store's.
            conn.execute("DELETE FROM meta WHERE key = 'backed_up_at'", [])?;
            (boots, inputs)
        };
        let mut summary = RestoreSummary {
            objects: 0,
            schema: 0,
            backed_up_at,
            held: Vec::new(),
            requests_dropped: Vec::new(),
            endpoints: 0,
            boots_disarmed,
            inputs_dropped,
            previous: None,
            previous_damaged: false,
            carried: Vec::new(),
        };
        for ep in self.list(Kind::Endpoint, None)? {
            let text = |p: &str| {
                ep.pointer(p)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let (ns, name) = (text("/metadata/namespace"), text("/metadata/name"));
            let bad = |why: String| StoreError::BadRecord {
                kind: Kind::Endpoint,
                namespace: ns.clone(),
                name: name.clone(),
                why,
            };
            let status: EndpointStatus = match ep.get("status") {
                Some(s) => serde_json::from_value(s.clone()).map_err(|e| bad(e.to_string()))?,
                None => EndpointStatus::default(),
            };
            let request = ep
                .pointer("/spec/reimageRequest/token")
                .and_then(|v| v.as_str());
            let fence = recast_core::restore::fence(&name, &status, request, backed_up_at, now);
            let value = serde_json::to_value(&fence.status).map_err(|e| bad(e.to_string()))?;
            self.write_status(Kind::Endpoint, &ns, &name, None, &value)?;
            for (reason, message) in &fence.events {
                self.record_event(
                    Kind::Endpoint,
                    &ns,
                    &name,
                    &EventRecord {
                        time: recast_core::time::format(now),
                        type_: "Warning".into(),
                        reason: (*reason).into(),
                        message: message.clone(),
                    },
                )?;
                if *reason == "RestoredRequestDropped" {
                    summary.requests_dropped.push(format!("{ns}/{name}"));
                }
            }
            if fence.held_attempt {
                summary.held.push(format!("{ns}/{name}"));
            }
            summary.endpoints += 1;
        }
        summary.objects = count(
            &self.conn(),
            "SELECT count(*) FROM objects WHERE deleted_at IS NULL",
            self.path(),
        )?;
        Ok(summary)
    }
}

/// The backup must be a recast store this build can read, and undamaged: its schema and when
/// it was taken.
fn check_backup(src: &Path) -> Result<(i64, Option<jiff::Timestamp>), StoreError> {
    let foreign = |why: String| StoreError::Foreign {
        path: src.to_path_buf(),
        why,
    };
    if !src.is_file() {
        return Err(foreign("no such file".into()));
    }
    let backup = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| foreign(e.to_string()))?;
    let app_id: i64 = backup
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| foreign(e.to_string()))?;
    if app_id != APPLICATION_ID {
        return Err(foreign(format!(
            "application_id {app_id:#x}: not a recast store or backup"
        )));
    }
    let check: String = backup
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| StoreError::Corrupt {
            path: src.to_path_buf(),
            why: e.to_string(),
        })?;
    if check != "ok" {
        return Err(StoreError::Corrupt {
            path: src.to_path_buf(),
            why: check,
        });
    }
    let schema = EmbeddedStore::schema_of(&backup).map_err(|e| StoreError::Corrupt {
        path: src.to_path_buf(),
        why: format!("no schema version: {e}"),
    })?;
    if schema > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: src.to_path_buf(),
            found: schema,
            known: SCHEMA_VERSION,
        });
    }
    if schema < 1 {
        return Err(StoreError::Corrupt {
            path: src.to_path_buf(),
            why: format!("schema version {schema}"),
        });
    }
    let backed_up_at = backup
        .query_row(
            "SELECT value FROM meta WHERE key = 'backed_up_at'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok());
    Ok((schema, backed_up_at))
}

/// The bytes of a consistent, self-contained copy of the SQLite database `file` (written to
/// `scratch`, 0600, and removed again).
fn sqlite_snapshot(file: &Path, scratch: &Path) -> Result<Vec<u8>, StoreError> {
    let result = (|| {
        super::super::private::private_db_file(scratch).map_err(|source| StoreError::DataDir {
            path: scratch.to_path_buf(),
            source,
        })?;
        let from = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(copy_err("reading", file))?;
        let mut to = Connection::open(scratch).map_err(copy_err("writing", scratch))?;
        copy_all(&from, &mut to, "backing up", file)?;
        to.pragma_update(None, "journal_mode", "DELETE")
            .map_err(copy_err("writing", scratch))?;
        drop(to);
        std::fs::read(scratch).map_err(|source| StoreError::DataDir {
            path: scratch.to_path_buf(),
            source,
        })
    })();
    remove_db_files(scratch);
    result
}

/// The backup's `gateway.db`, staged beside its place when the data directory's own is to be
/// replaced (see [`CarriedOutcome`]).
struct PreparedGateway {
    outcome: CarriedOutcome,
    /// (the staged file, its place, where a damaged or empty one goes first)
    staged: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
}

/// A staged file that never reached its place (the restore failed) is removed.
impl Drop for PreparedGateway {
    fn drop(&mut self) {
        if let Some((staged, _, _)) = &self.staged {
            let _ = std::fs::remove_file(staged);
        }
    }
}

impl PreparedGateway {
    /// Renames the staged file into place (after the store's restore).
    fn put_in_place(mut self) -> CarriedOutcome {
        let Some((staged, place, aside)) = self.staged.take() else {
            return self.outcome.clone();
        };
        let moved = (|| {
            if let Some(aside) = &aside {
                for (from, to) in db_files(&place).zip(db_files(aside)) {
                    if from.exists() {
                        std::fs::rename(from, to)?;
                    }
                }
            }
            // A journal left behind by a database that is gone would be replayed onto the
            // restored one.
            remove_db_files(&place);
            std::fs::rename(&staged, &place)?;
            File::open(place.parent().unwrap_or(Path::new(".")))?.sync_all()
        })();
        match moved {
            Ok(()) => self.outcome.clone(),
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                CarriedOutcome::Failed(format!("{}: {e}", place.display()))
            }
        }
    }
}

/// Decides what becomes of `gateway.db` and, when the backup's is to be restored, writes it
/// beside its place (0600, fsynced).
fn prepare_gateway(
    src: &Path,
    data_dir: &Path,
    now: jiff::Timestamp,
) -> Result<PreparedGateway, StoreError> {
    let done = |outcome| {
        Ok(PreparedGateway {
            outcome,
            staged: None,
        })
    };
    let backup = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(copy_err("reading", src))?;
    let data: Vec<u8> = match backup.query_row(
        &format!("SELECT data FROM {CARRIED_TABLE} WHERE name = ?1"),
        [GATEWAY_DB_FILE],
        |r| r.get(0),
    ) {
        Ok(d) => d,
        // No row, or a backup from before carried files (no table).
        Err(rusqlite::Error::QueryReturnedNoRows) => return done(CarriedOutcome::NotInBackup),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
            return done(CarriedOutcome::NotInBackup);
        }
        Err(e) => return Err(copy_err("reading", src)(e)),
    };
    let place = data_dir.join(GATEWAY_DB_FILE);
    let aside = if place.exists() {
        match gateway_rows(&place) {
            Some(0) => Some(with_suffix(&place, &format!(".empty-{}", stamp(now)))),
            Some(_) => return done(CarriedOutcome::KeptLive),
            None => Some(with_suffix(&place, &format!(".damaged-{}", stamp(now)))),
        }
    } else {
        None
    };
    let staged = with_suffix(&place, ".restoring");
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)?;
        std::io::Write::write_all(&mut f, &data)?;
        f.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&staged);
        return Err(StoreError::DataDir {
            path: staged,
            source,
        });
    }
    Ok(PreparedGateway {
        outcome: CarriedOutcome::Restored,
        staged: Some((staged, place, aside)),
    })
}

/// Tokens and enrollments in a gateway database; None when it cannot be read as one.
fn gateway_rows(file: &Path) -> Option<i64> {
    let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_WRITE).ok()?;
    conn.query_row(
        "SELECT (SELECT count(*) FROM tokens) + (SELECT count(*) FROM enrollments)",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// A copy of the backup in `scratch_dir`, upgraded to this build's schema.
fn stage(src: &Path, scratch_dir: &Path) -> Result<EmbeddedStore, StoreError> {
    super::super::private::private_dir(scratch_dir).map_err(|source| StoreError::DataDir {
        path: scratch_dir.to_path_buf(),
        source,
    })?;
    let file = scratch_dir.join(DB_FILE);
    super::super::private::private_db_file(&file).map_err(|source| StoreError::DataDir {
        path: file.clone(),
        source,
    })?;
    {
        let backup = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(copy_err("reading", src))?;
        let mut conn = Connection::open(&file).map_err(copy_err("staging", &file))?;
        copy_all(&backup, &mut conn, "staging", &file)?;
        // The carried gateway.db goes to its own place, never into the live store: dropped,
        // its pages zeroed and the file rebuilt without them (a page copy would carry free
        // pages along).
        conn.execute_batch(&format!(
            "PRAGMA secure_delete = ON; DROP TABLE IF EXISTS {CARRIED_TABLE}; VACUUM;"
        ))
        .map_err(copy_err("staging", &file))?;
    }
    EmbeddedStore::open_with(scratch_dir, OpenMode::Create)
}

/// The live store to restore into, after keeping what it holds: copied aside when it opens,
/// moved aside when it is damaged or foreign (a restore's main use), nothing when there is
/// none. Returns the store, where the old one went, and whether it was damaged.
fn open_live_for_restore(
    data_dir: &Path,
    now: jiff::Timestamp,
) -> Result<(EmbeddedStore, Option<PathBuf>, bool), StoreError> {
    let live_file = data_dir.join(DB_FILE);
    let had_one = std::fs::metadata(&live_file).is_ok_and(|m| m.len() > 0);
    match EmbeddedStore::open_with(data_dir, OpenMode::Create) {
        Ok(live) if had_one => {
            let aside = with_suffix(&live_file, &format!(".before-restore-{}", stamp(now)));
            live.backup_with(&aside, false, false)?;
            Ok((live, Some(aside), false))
        }
        Ok(live) => Ok((live, None, false)),
        Err(StoreError::Corrupt { .. } | StoreError::Foreign { .. }) => {
            let aside = with_suffix(&live_file, &format!(".damaged-{}", stamp(now)));
            for (from, to) in db_files(&live_file).zip(db_files(&aside)) {
                if from.exists() {
                    std::fs::rename(&from, to).map_err(|source| StoreError::DataDir {
                        path: from.clone(),
                        source,
                    })?;
                }
            }
            let live = EmbeddedStore::open_with(data_dir, OpenMode::Create)?;
            Ok((live, Some(aside), true))
        }
        Err(e) => Err(e),
    }
}
