//! Backups of the embedded store, taken while the operator runs, and restores from them.
//!
//! A backup is a consistent snapshot: SQLite's online backup copies every page under one read
//! transaction (the operator keeps writing meanwhile, into the WAL), into a file created 0600
//! beside the destination and renamed into place only once it is complete and checked. It is
//! a recast store file itself (same application id and schema), so it can be opened, checked
//! and restored by this build or a later one.
//!
//! A restore needs the operator stopped (it holds [`OperatorLock`] while it runs): the
//! operator decides from what it read, and would keep acting on the state the restore throws
//! away. The backup is copied, upgraded to this build's schema and *fenced* in a scratch file
//! first, and only then copied over the live store in one SQLite transaction, so a restore
//! that dies half-way leaves the live store as it was. Fencing (see
//! [`recast_core::restore`]): every armed network boot is disarmed, and every attempt that was
//! in flight when the backup was taken keeps its record but has its try ended and its endpoint
//! paused, so nothing wipes a machine twice on the strength of an hour-old record.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use recast_crds::endpoint::EndpointStatus;
use recast_crds::manifest::Kind;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use super::{
    APPLICATION_ID, DB_FILE, EmbeddedStore, EventRecord, OpenMode, SCHEMA_VERSION, StoreError,
};

/// The lock file a running embedded operator holds in its data directory.
pub const OPERATOR_LOCK_FILE: &str = "operator.lock";

/// An exclusive lock on a data directory: held by `recast-operator run` for its whole life
/// (so two operators never drive one store) and by a restore.
#[derive(Debug)]
pub struct OperatorLock {
    _file: File,
}

impl OperatorLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(data_dir: &Path, purpose: &str) -> Result<Self, StoreError> {
        super::super::private::private_dir(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(OPERATOR_LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::DataDir {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(StoreError::Locked {
                    dir: data_dir.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::DataDir { path, source });
            }
        }
        use std::io::Write;
        let _ = file.set_len(0);
        let _ = writeln!(file, "{purpose} (pid {})", std::process::id());
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
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    pub objects: i64,
    /// The backup's schema, before it was upgraded to this build's.
    pub schema: i64,
    pub backed_up_at: Option<jiff::Timestamp>,
    /// Endpoints whose attempt in flight was held, as "namespace/name".
    pub held: Vec<String>,
    pub boots_disarmed: i64,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// Copies every page of `from` into `to` in one step (one read transaction on `from`, one
/// write transaction on `to`): the copy is one consistent moment.
fn copy_all(from: &Connection, to: &mut Connection) -> Result<(), rusqlite::Error> {
    let backup = rusqlite::backup::Backup::new(from, to)?;
    loop {
        match backup.step(-1)? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            // Another connection held a lock: try again shortly (the busy timeout of a normal
            // statement does not apply to a backup step).
            rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            _ => {}
        }
    }
}

fn scratch_beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn remove_db_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(scratch_beside(path, suffix));
    }
}

fn count(conn: &Connection, sql: &str) -> Result<i64, rusqlite::Error> {
    conn.query_row(sql, [], |r| r.get(0))
}

impl EmbeddedStore {
    /// Writes a consistent snapshot of the store to `dest` (which must not exist unless
    /// `overwrite`) while the operator keeps running.
    pub fn backup_to(&self, dest: &Path, overwrite: bool) -> Result<BackupSummary, StoreError> {
        if dest.exists() && !overwrite {
            return Err(StoreError::BackupExists {
                path: dest.to_path_buf(),
            });
        }
        let partial = scratch_beside(dest, ".partial");
        remove_db_files(&partial);
        // Created 0600 before SQLite opens it: the backup holds BMC credentials.
        super::super::private::private_db_file(&partial).map_err(|source| StoreError::DataDir {
            path: partial.clone(),
            source,
        })?;
        let result = (|| {
            let mut out = Connection::open(&partial).map_err(sqlite_err(&partial))?;
            copy_all(&self.conn(), &mut out).map_err(sqlite_err(&partial))?;
            // When, for the restore's messages (the copy is a moment; this says which).
            out.execute(
                "INSERT OR REPLACE INTO meta VALUES ('backed_up_at', ?1)",
                [jiff::Timestamp::now().as_second()],
            )
            .map_err(sqlite_err(&partial))?;
            let check: String = out
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(sqlite_err(&partial))?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: partial.clone(),
                    why: check,
                });
            }
            let summary = BackupSummary {
                path: dest.to_path_buf(),
                bytes: 0,
                schema: EmbeddedStore::schema_of(&out).map_err(sqlite_err(&partial))?,
                revision: count(&out, "SELECT value FROM meta WHERE key = 'revision'")
                    .map_err(sqlite_err(&partial))?,
                objects: count(&out, "SELECT count(*) FROM objects WHERE deleted_at IS NULL")
                    .map_err(sqlite_err(&partial))?,
                attempts_in_flight: count(
                    &out,
                    "SELECT count(*) FROM objects WHERE kind = 'Endpoint' AND json_extract(status, '$.activeAttempt') IS NOT NULL",
                )
                .map_err(sqlite_err(&partial))?,
            };
            // One file, no WAL beside it: the backup is self-contained.
            out.pragma_update(None, "journal_mode", "DELETE")
                .map_err(sqlite_err(&partial))?;
            drop(out);
            File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(|source| StoreError::DataDir {
                    path: partial.clone(),
                    source,
                })?;
            Ok(summary)
        })();
        match result {
            Ok(mut summary) => {
                std::fs::rename(&partial, dest).map_err(|source| StoreError::DataDir {
                    path: dest.to_path_buf(),
                    source,
                })?;
                summary.bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
                Ok(summary)
            }
            Err(e) => {
                remove_db_files(&partial);
                Err(e)
            }
        }
    }

    /// Replaces the store in `data_dir` with the backup at `src` (the operator must be
    /// stopped), upgraded to this build's schema and fenced (see the module's documentation).
    pub fn restore_from(
        data_dir: &Path,
        src: &Path,
        now: jiff::Timestamp,
    ) -> Result<RestoreSummary, StoreError> {
        let _lock = OperatorLock::acquire(data_dir, "recastctl store restore")?;
        // The backup must be a recast store this build can read, and undamaged.
        let backup =
            Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
                StoreError::Foreign {
                    path: src.to_path_buf(),
                    why: e.to_string(),
                }
            })?;
        let app_id: i64 = backup
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| StoreError::Foreign {
                path: src.to_path_buf(),
                why: e.to_string(),
            })?;
        if app_id != APPLICATION_ID {
            return Err(StoreError::Foreign {
                path: src.to_path_buf(),
                why: format!("application_id {app_id:#x}: not a recast store or backup"),
            });
        }
        let check: String = backup
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(sqlite_err(src))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: src.to_path_buf(),
                why: check,
            });
        }
        let schema = EmbeddedStore::schema_of(&backup).map_err(sqlite_err(src))?;
        if schema > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: src.to_path_buf(),
                found: schema,
                known: SCHEMA_VERSION,
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

        // Copy, upgrade and fence in a scratch store beside the live one.
        let scratch_dir = data_dir.join(".restore");
        let _ = std::fs::remove_dir_all(&scratch_dir);
        let staged = {
            super::super::private::private_dir(&scratch_dir).map_err(|source| {
                StoreError::DataDir {
                    path: scratch_dir.clone(),
                    source,
                }
            })?;
            let file = scratch_dir.join(DB_FILE);
            super::super::private::private_db_file(&file).map_err(|source| {
                StoreError::DataDir {
                    path: file.clone(),
                    source,
                }
            })?;
            let mut conn = Connection::open(&file).map_err(sqlite_err(&file))?;
            copy_all(&backup, &mut conn).map_err(sqlite_err(&file))?;
            drop(conn);
            EmbeddedStore::open_with(&scratch_dir, OpenMode::Create)?
        };
        drop(backup);
        let result = (|| {
            let summary = staged.fence(schema, backed_up_at, now)?;
            // Revisions only go forward: a client that read the live store must see a
            // conflict, never a reused resourceVersion.
            let live = EmbeddedStore::open_with(data_dir, OpenMode::Create)?;
            let live_revision = count(
                &live.conn(),
                "SELECT value FROM meta WHERE key = 'revision'",
            )
            .map_err(sqlite_err(live.path()))?;
            staged
                .conn()
                .execute(
                    "UPDATE meta SET value = max(value, ?1) + 1 WHERE key = 'revision'",
                    [live_revision],
                )
                .map_err(sqlite_err(staged.path()))?;
            copy_all(&staged.conn(), &mut live.conn()).map_err(sqlite_err(live.path()))?;
            Ok(summary)
        })();
        drop(staged);
        let _ = std::fs::remove_dir_all(&scratch_dir);
        result
    }

    /// Disarms every network boot and holds every attempt that was in flight (in this store,
    /// a staged copy of a backup).
    fn fence(
        &self,
        schema: i64,
        backed_up_at: Option<jiff::Timestamp>,
        now: jiff::Timestamp,
    ) -> Result<RestoreSummary, StoreError> {
        let boots_disarmed = self
            .conn()
            .execute("DELETE FROM boot_intents", [])
            .map_err(StoreError::from)? as i64;
        let mut held = Vec::new();
        for ep in self.list(Kind::Endpoint, None)? {
            let ns = ep
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let name = ep
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let status: EndpointStatus = match ep.get("status") {
                Some(s) => {
                    serde_json::from_value(s.clone()).map_err(|e| StoreError::BadRecord {
                        kind: Kind::Endpoint,
                        namespace: ns.clone(),
                        name: name.clone(),
                        why: e.to_string(),
                    })?
                }
                None => continue,
            };
            let Some(hold) =
                recast_core::restore::hold_after_restore(&name, &status, backed_up_at, now)
            else {
                continue;
            };
            self.update(Kind::Endpoint, &ns, &name, |obj| {
                obj["spec"]["paused"] = json!(true);
                Ok(())
            })?;
            let status = serde_json::to_value(&hold.status).map_err(|e| StoreError::BadRecord {
                kind: Kind::Endpoint,
                namespace: ns.clone(),
                name: name.clone(),
                why: e.to_string(),
            })?;
            self.write_status(Kind::Endpoint, &ns, &name, None, &status)?;
            self.record_event(
                Kind::Endpoint,
                &ns,
                &name,
                &EventRecord {
                    time: recast_core::time::format(now),
                    type_: "Warning".into(),
                    reason: "RestoredFromBackup".into(),
                    message: hold.message,
                },
            )?;
            held.push(format!("{ns}/{name}"));
        }
        let objects = count(
            &self.conn(),
            "SELECT count(*) FROM objects WHERE deleted_at IS NULL",
        )?;
        Ok(RestoreSummary {
            objects,
            schema,
            backed_up_at,
            held,
            boots_disarmed,
        })
    }
}
