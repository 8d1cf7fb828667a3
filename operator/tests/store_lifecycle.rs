//! The embedded store's life on a site: opened by several processes at once, upgraded in
//! place from an older release's file, backed up while the operator runs, and restored without
//! wiping a machine twice.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use recast_core::lifecycle::Input;
use recast_crds::endpoint::{EndpointPhase, EndpointStatus};
use recast_crds::manifest::Kind;
use recast_operator::bmc::RecordingPower;
use recast_operator::controller::Controller;
use recast_operator::metrics::Metrics;
use recast_operator::store::Key;
use recast_operator::store::embedded::{
    EmbeddedBackend, EmbeddedStore, OpenMode, OperatorLock, SCHEMA_VERSION, StoreError,
};
use rusqlite::Connection;
use serde_json::Value;

#[path = "support/manual_clock.rs"]
mod manual_clock;
use manual_clock::ManualClock;

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> PathBuf {
    repo().join("operator/tests/fixtures/store-schema-1.db")
}

/// Every row the store keeps, as text, table by table (the change feed and meta aside: they
/// are the store's own bookkeeping).
fn rows(db: &Path) -> Vec<(String, Vec<String>)> {
    let conn = Connection::open(db).unwrap();
    [
        "SELECT kind, namespace, name, uid, resource_version, generation, created_at, deleted_at, finalizers, object, status FROM objects ORDER BY kind, namespace, name",
        "SELECT id, kind, namespace, name, time, type, reason, message FROM events ORDER BY id",
        "SELECT mac, namespace, endpoint, attempt_id, try_number, image, image_digest, boot_mode, armed_at FROM boot_intents ORDER BY mac",
        "SELECT key, started_at, finished_at FROM journal ORDER BY key",
        "SELECT seq, namespace, name, input, received_at FROM inbox ORDER BY seq",
        "SELECT namespace, name, data, updated_at FROM secrets ORDER BY namespace, name",
    ]
    .into_iter()
    .map(|sql| {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let out = stmt
            .query_map([], |r| {
                let mut cells = Vec::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cells.push(format!("{v:?}"));
                }
                Ok(cells.join("|"))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (sql.split_whitespace().nth(sql.split_whitespace().position(|w| w == "FROM").unwrap() + 1).unwrap().to_string(), out)
    })
    .collect()
}

/// A value of the store file's `meta` table, read by SQLite itself.
fn meta(db: &Path, key: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .unwrap()
}

fn schema(db: &Path) -> i64 {
    meta(db, "schema_version")
}

fn revision(db: &Path) -> i64 {
    meta(db, "revision")
}

/// A store copied from the fixture into a fresh data directory, and a backup of it in another.
fn store_and_backup() -> (
    tempfile::TempDir,
    tempfile::TempDir,
    EmbeddedStore,
    PathBuf,
    i64,
) {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), data.path().join("recast.db")).unwrap();
    let store = EmbeddedStore::open(data.path()).unwrap();
    let backup = elsewhere.path().join("b.db");
    let taken = store.backup_to(&backup, false).unwrap().revision;
    (data, elsewhere, store, backup, taken)
}

fn key(name: &str) -> Key {
    Key {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn status(store: &EmbeddedStore, name: &str) -> EndpointStatus {
    let obj = store.get(Kind::Endpoint, "default", name).unwrap().unwrap();
    serde_json::from_value(obj.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

fn spec_paused(store: &EmbeddedStore, name: &str) -> bool {
    store.get(Kind::Endpoint, "default", name).unwrap().unwrap()["spec"]["paused"] == true
}

type Ctrl = Controller<EmbeddedBackend, RecordingPower>;

/// A controller whose clock stands at `now` (the fixture was written at 08:00).
fn controller(store: &Arc<EmbeddedStore>, now: &str) -> Arc<Ctrl> {
    Arc::new(Controller::new(
        Arc::new(EmbeddedBackend {
            store: store.clone(),
        }),
        Arc::new(RecordingPower::default()),
        ManualClock::at(now),
        Arc::new(Metrics::new()),
    ))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_store_of_the_last_release_is_upgraded_in_place_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("recast.db");
    std::fs::copy(fixture(), &db).unwrap();
    assert_eq!(schema(&db), 1);
    let before = rows(&db);

    // recastctl (opening an existing store) never upgrades it: an older operator may be
    // running on it. It says what to do, and the file is untouched.
    let err = EmbeddedStore::open_existing(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::TooOld { found: 1, .. }), "{err}");
    assert!(
        err.to_string()
            .contains("start this release's recast-operator once"),
        "{err}"
    );
    assert_eq!(schema(&db), 1);
    assert!(rows(&db) == before, "recastctl changed the old store");

    // The operator upgrades it, and every row is as it was.
    let store = Arc::new(EmbeddedStore::open_with(dir.path(), OpenMode::Create).unwrap());
    assert_eq!(schema(&db), SCHEMA_VERSION);
    assert!(rows(&db) == before, "the upgrade changed a row");
    // A second open finds nothing to do.
    drop(EmbeddedStore::open_existing(dir.path()).unwrap());
    assert!(rows(&db) == before, "the upgrade changed a row");

    // Every object decodes, and the attempt the old release left in flight goes on.
    for kind in [
        Kind::Endpoint,
        Kind::GoldenImage,
        Kind::RemediationPolicy,
        Kind::ReimageWave,
    ] {
        store.list(kind, None).unwrap();
    }
    assert_eq!(status(&store, "kiosk-01").history.len(), 1);
    let running = status(&store, "kiosk-02")
        .active_attempt
        .expect("in flight");
    let ctrl = controller(&store, "2026-01-14T08:05:00Z");
    ctrl.prime().await.unwrap();
    ctrl.reconcile(
        &key("kiosk-02"),
        Input::NetworkBooted {
            try_number: None,
            attempt_id: running.id.clone(),
            client: None,
        },
    )
    .await
    .unwrap();
    let a = status(&store, "kiosk-02").active_attempt.unwrap();
    assert_eq!(
        (a.id, format!("{:?}", a.step)),
        (running.id, "Applying".into())
    );
    // The old release's queued input is decided by this one.
    let queued = store.pending_inputs(100).unwrap();
    assert_eq!(
        queued
            .iter()
            .filter(|(_, _, name, _)| name == "kiosk-03")
            .count(),
        1,
        "{queued:?}"
    );
}

#[tokio::test]
async fn backup_while_running_and_restore_neither_repeats_nor_loses_an_attempt() {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let db = data.path().join("recast.db");
    std::fs::copy(fixture(), &db).unwrap();
    let store = Arc::new(EmbeddedStore::open(data.path()).unwrap());
    assert_eq!(mode(data.path()), 0o700);
    assert_eq!(mode(&db), 0o600);
    let ctrl = controller(&store, "2026-01-14T08:05:00Z");
    ctrl.prime().await.unwrap();
    // kiosk-02's attempt is in flight (the store's last release armed its boot and
    // power-cycled it); kiosk-03 waits for the one slot the example policy allows.
    let kiosk = key("kiosk-02");
    ctrl.reconcile(&kiosk, Input::Reconcile).await.unwrap();
    let first = status(&store, "kiosk-02")
        .active_attempt
        .expect("in flight in the fixture");
    assert_eq!(first.try_number, 1);
    let started = status(&store, "kiosk-02").attempts_started;
    assert!(store.boot_intent("52:54:00:a1:00:02").unwrap().is_some());
    assert!(ctrl.power.log().is_empty());

    // The backup is taken while another connection writes (a second process's traffic):
    // the copy is one consistent moment (every revision bump is in an object's
    // resourceVersion in the same transaction), and 0600.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (dir, stop, writing) = (data.path().to_path_buf(), stop.clone(), writing.clone());
        std::thread::spawn(move || {
            let other = EmbeddedStore::open_existing(&dir).unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if n == 1 {
                    writing.wait();
                }
                other
                    .write_status(
                        Kind::Endpoint,
                        "default",
                        "reception-01",
                        None,
                        &serde_json::json!({"message": format!("write {n}")}),
                    )
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    // The writer has written and goes on writing.
    writing.wait();
    let backup = elsewhere.path().join("site.backup");
    let summary = store.backup_to(&backup, false).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(mode(&backup), 0o600);
    assert_eq!(
        (summary.schema, summary.attempts_in_flight),
        (SCHEMA_VERSION, 1)
    );
    let snap = Connection::open(&backup).unwrap();
    let (revision, newest): (i64, i64) = snap
        .query_row(
            "SELECT (SELECT value FROM meta WHERE key = 'revision'), (SELECT max(resource_version) FROM objects)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(revision, newest, "a torn snapshot");
    assert_eq!(revision, summary.revision);
    drop(snap);
    let leftovers: Vec<_> = std::fs::read_dir(elsewhere.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["site.backup"], "no partial file left");

    // Bad input loses nothing: an existing file is not overwritten, and the live store's
    // own files are never a destination.
    std::fs::write(elsewhere.path().join("taken"), b"keep me").unwrap();
    let err = store
        .backup_to(&elsewhere.path().join("taken"), false)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::BackupExists { .. }), "{err}");
    assert_eq!(
        std::fs::read(elsewhere.path().join("taken")).unwrap(),
        b"keep me"
    );
    for live in ["recast.db", "recast.db-wal"] {
        let err = store
            .backup_to(&data.path().join(live), true)
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::BackupOverLive { .. }), "{err}");
    }

    // After the backup the machine went on: it booted the imaging environment, was imaged
    // and started the new Windows. Then the store is damaged, and restored from the backup.
    for input in [
        Input::NetworkBooted {
            try_number: None,
            attempt_id: first.id.clone(),
            client: None,
        },
        Input::ImagingFinished {
            try_number: None,
            attempt_id: first.id.clone(),
            result: Ok(()),
            refusal: None,
        },
    ] {
        ctrl.reconcile(&kiosk, input).await.unwrap();
    }

    // A restore under a running operator is refused: it holds the directory's lock.
    let running = OperatorLock::acquire(data.path(), "recast-operator run").unwrap();
    let err = EmbeddedStore::restore_from(data.path(), &backup, Timestamp::now())
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::Locked { .. })
            && err.to_string().contains("recast-operator run (pid"),
        "{err}"
    );
    drop(running);
    drop(ctrl);
    drop(store);
    // Damage: the WAL is lost and a page in the middle is overwritten.
    let _ = std::fs::remove_file(data.path().join("recast.db-wal"));
    let _ = std::fs::remove_file(data.path().join("recast.db-shm"));
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4096].fill(0xA5);
    bytes[100..4096].fill(0x5A);
    std::fs::write(&db, &bytes).unwrap();
    assert!(
        EmbeddedStore::open(data.path()).is_err(),
        "the store is damaged"
    );

    let restored = EmbeddedStore::restore_from(
        data.path(),
        &backup,
        "2026-01-14T09:00:00Z".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(restored.held, vec!["default/kiosk-02"]);
    assert_eq!(restored.boots_disarmed, 1);
    assert_eq!(restored.endpoints, 5);
    assert!(restored.previous_damaged);
    let aside = restored.previous.clone().unwrap();
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the damaged store is kept aside"
    );
    let scratch: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".restore"))
        .collect();
    assert!(scratch.is_empty(), "the scratch copy is gone: {scratch:?}");

    // The operator starts again on the restored store.
    let store = Arc::new(EmbeddedStore::open(data.path()).unwrap());
    let st = status(&store, "kiosk-02");
    let kept = st
        .active_attempt
        .clone()
        .expect("the first attempt is not lost");
    assert_eq!((kept.id.as_str(), kept.try_number), (first.id.as_str(), 1));
    assert!(st.restored_at.is_some());
    assert!(!spec_paused(&store, "kiosk-02"));
    assert_eq!(st.attempts_started, started);
    assert!(
        store.boot_intent("52:54:00:a1:00:02").unwrap().is_none(),
        "no boot armed from the old record"
    );
    assert!(status(&store, "kiosk-01").restored_at.is_some());
    let events = store.events(Kind::Endpoint, "default", "kiosk-02").unwrap();
    let ev = events
        .iter()
        .find(|e| e.reason == "RestoredFromBackup")
        .expect("an Event");
    assert!(
        ev.message
            .contains("`recastctl reimage kiosk-02 --reason ...`"),
        "{}",
        ev.message
    );

    let ctrl = controller(&store, "2026-01-14T09:01:00Z");
    ctrl.prime().await.unwrap();
    // Reconciles, and the old try's late report, start nothing.
    for input in [
        Input::Reconcile,
        Input::ImagingFinished {
            try_number: Some(1),
            attempt_id: first.id.clone(),
            result: Ok(()),
            refusal: None,
        },
        Input::Reconcile,
    ] {
        ctrl.reconcile(&kiosk, input).await.unwrap();
    }
    let st = status(&store, "kiosk-02");
    assert_eq!(
        st.active_attempt
            .as_ref()
            .map(|a| (a.id.as_str(), a.try_number)),
        Some((first.id.as_str(), 1))
    );
    assert_eq!(st.phase, Some(EndpointPhase::Failed));
    assert_eq!(st.attempts_started, started, "no second attempt");
    assert!(
        ctrl.power.log().is_empty(),
        "no power cycle: {:?}",
        ctrl.power.log()
    );
    assert!(store.boot_intent("52:54:00:a1:00:02").unwrap().is_none());

    // The machine's agent reports from the new image with the attempt's id: the attempt
    // the backup knew as in flight ends as succeeded, with no second wipe.
    ctrl.reconcile(
        &kiosk,
        Input::AgentReport(recast_crds::endpoint::ReportSummary {
            build: "26100.7623".into(),
            attempt_id: Some(first.id.clone()),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let st = status(&store, "kiosk-02");
    assert_eq!(st.phase, Some(EndpointPhase::Ready), "{:?}", st.message);
    assert!(st.active_attempt.is_none());
    assert_eq!(st.history[0].id, first.id);
    assert_eq!(
        st.history[0].outcome,
        recast_crds::endpoint::AttemptOutcome::Succeeded
    );
    assert_eq!(st.attempts_started, started);
    assert_eq!(st.restored_at, None);
    assert!(ctrl.power.log().is_empty());
}

#[test]
fn a_restore_keeps_the_store_it_replaces_and_moves_revisions_forward() {
    let (data, _elsewhere, store, backup, taken) = store_and_backup();
    // The site goes on: many writes after the backup.
    for n in 0..20 {
        store
            .write_status(
                Kind::Endpoint,
                "default",
                "reception-01",
                None,
                &serde_json::json!({"message": format!("later {n}")}),
            )
            .unwrap();
    }
    let live_revision = revision(&data.path().join("recast.db"));
    assert!(live_revision > taken);
    drop(store);
    let restored = EmbeddedStore::restore_from(data.path(), &backup, Timestamp::now()).unwrap();
    assert!(!restored.previous_damaged);
    let kept = restored.previous.unwrap();
    assert_eq!(mode(&kept), 0o600);
    assert_eq!(
        revision(&kept),
        live_revision,
        "the replaced store is kept whole"
    );
    let store = EmbeddedStore::open_existing(data.path()).unwrap();
    assert!(
        revision(&data.path().join("recast.db")) > live_revision,
        "revisions only go forward"
    );
    assert_eq!(
        status(&store, "reception-01").message.as_deref(),
        None,
        "the backup's content, not the later writes"
    );
}

#[test]
fn a_restore_refuses_what_it_cannot_trust_and_loses_nothing() {
    let (data, elsewhere, store, backup, _) = store_and_backup();
    drop(store);
    let live = rows(&data.path().join("recast.db"));

    // From a newer release.
    let newer = elsewhere.path().join("newer.db");
    std::fs::copy(&backup, &newer).unwrap();
    Connection::open(&newer)
        .unwrap()
        .execute(
            "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    let err = EmbeddedStore::restore_from(data.path(), &newer, Timestamp::now())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade recast"), "{err}");
    // Not a recast file at all.
    let notes = elsewhere.path().join("notes.txt");
    std::fs::write(&notes, b"not a database").unwrap();
    let err = EmbeddedStore::restore_from(data.path(), &notes, Timestamp::now())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    // Another SQLite database.
    let other = elsewhere.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x);")
        .unwrap();
    let err = EmbeddedStore::restore_from(data.path(), &other, Timestamp::now())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("not a recast store or backup"),
        "{err}"
    );
    // A missing file.
    let err = EmbeddedStore::restore_from(
        data.path(),
        &elsewhere.path().join("gone.db"),
        Timestamp::now(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, StoreError::Foreign { .. } | StoreError::Corrupt { .. }),
        "{err}"
    );

    assert!(
        rows(&data.path().join("recast.db")) == live,
        "the live store was changed"
    );
}

#[test]
fn the_operator_starting_beside_recastctl_on_a_fresh_directory_never_fails() {
    let recastctl = recast_tests::workspace_binary("recastctl");
    for round in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log_path = dir.path().join("operator.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut operator = Command::new(OPERATOR)
            .args(["run", "--backend", "embedded", "--power-driver", "record"])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", recast_tests::free_port()),
            ])
            .env("RECAST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let readers: Vec<_> = (0..8)
            .map(|_| {
                Command::new(&recastctl)
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["get", "rep"])
                    .env_remove("RECAST_BACKEND")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for r in readers {
            let out = r.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            // Either the store answered, or it was not there yet: never a database error.
            assert!(
                out.status.success() || err.contains("no recast store there"),
                "round {round}: recastctl: {err}"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("embedded store open") {
                break;
            }
            if let Some(code) = operator.try_wait().unwrap() {
                panic!("round {round}: the operator exited ({code}): {text}");
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the operator did not open the store: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A second operator on the same directory is refused, naming the first.
        let second = Command::new(OPERATOR)
            .args(["run", "--backend", "embedded", "--power-driver", "record"])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", recast_tests::free_port()),
            ])
            .output()
            .unwrap();
        assert!(!second.status.success());
        assert!(
            String::from_utf8_lossy(&second.stderr)
                .contains("is in use by recast-operator run (pid"),
            "{}",
            String::from_utf8_lossy(&second.stderr)
        );
        assert!(
            operator.try_wait().unwrap().is_none(),
            "round {round}: the operator died"
        );
        let _ = operator.kill();
        let _ = operator.wait();
    }
}

#[test]
fn two_processes_writing_one_store_wait_for_each_other_instead_of_failing() {
    // recastctl writes (a reimage request, a pause) while the operator writes statuses: two
    // connections to one file. Each writer here is a store of its own, as each process has.
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), data.path().join("recast.db")).unwrap();
    let name = EmbeddedStore::open(data.path())
        .unwrap()
        .list(Kind::Endpoint, None)
        .unwrap()
        .first()
        .and_then(|o| o.pointer("/metadata/name")?.as_str().map(str::to_string))
        .expect("the fixture has an endpoint");
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|who| {
            let dir = data.path().to_path_buf();
            let name = name.clone();
            std::thread::spawn(move || {
                let store = EmbeddedStore::open(&dir).unwrap();
                for i in 0..300 {
                    store
                        .update(Kind::Endpoint, "default", &name, |o| {
                            o["metadata"]["annotations"][format!("test/{who}")] =
                                i.to_string().into();
                            Ok(())
                        })
                        .unwrap_or_else(|e| panic!("writer {who}, write {i}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer failed");
    }
    let obj = EmbeddedStore::open(data.path())
        .unwrap()
        .get(Kind::Endpoint, "default", &name)
        .unwrap()
        .unwrap();
    assert_eq!(obj["metadata"]["annotations"]["test/a"], "299");
    assert_eq!(obj["metadata"]["annotations"]["test/b"], "299");
}

#[test]
fn a_backup_carries_the_agents_tokens_to_a_new_host() {
    use recast_operator::credentials::{SqliteLedger, token_hash};
    use recast_operator::store::embedded::CarriedOutcome;
    let (data, elsewhere, store, _, _) = store_and_backup();
    let ledger = SqliteLedger::open(data.path()).unwrap();
    let token = ledger
        .issue(&key("kiosk-01"), "2026-01-15T08:00:00Z")
        .unwrap();
    let backup = elsewhere.path().join("with-tokens.db");
    let taken = store.backup_to(&backup, false).unwrap();
    assert_eq!(taken.carried, ["gateway.db"]);
    assert_eq!(taken.not_carried, None);
    // A token issued after the backup: the live gateway.db knows more than the backup's.
    let later = ledger
        .issue(&key("kiosk-02"), "2026-01-15T09:00:00Z")
        .unwrap();
    drop(ledger);
    drop(store);
    let carried_in = |dir: &Path| {
        let live = std::fs::read(dir.join("recast.db")).unwrap();
        let hash = token_hash(&token);
        live.windows(hash.len()).any(|w| w == hash.as_bytes())
    };

    // A new host whose operator ran once: its gateway.db exists but holds no token.
    let host = tempfile::tempdir().unwrap();
    let fresh = host.path().join("data");
    std::fs::create_dir(&fresh).unwrap();
    drop(SqliteLedger::open(&fresh).unwrap());
    let restored = EmbeddedStore::restore_from(&fresh, &backup, Timestamp::now()).unwrap();
    assert_eq!(
        restored.carried,
        [("gateway.db".to_string(), CarriedOutcome::Restored)]
    );
    assert_eq!(mode(&fresh.join("gateway.db")), 0o600);
    // The carried bytes never end up inside the live store, not even in its free pages.
    assert!(
        !carried_in(&fresh),
        "the live recast.db holds the carried gateway.db"
    );
    // Read back with the gateway's own ledger: the agent's token still names its endpoint
    // (its agent reports without a person); the one issued after the backup does not.
    let ledger = SqliteLedger::open(&fresh).unwrap();
    assert_eq!(ledger.endpoint_for(&token).unwrap(), Some(key("kiosk-01")));
    assert_eq!(ledger.endpoint_for(&later).unwrap(), None);
    drop(ledger);

    // The same host, its gateway.db still there (the store alone was lost): kept, so the token
    // issued after the backup still works.
    let again = EmbeddedStore::restore_from(data.path(), &backup, Timestamp::now()).unwrap();
    assert_eq!(
        again.carried,
        [("gateway.db".to_string(), CarriedOutcome::KeptLive)]
    );
    let ledger = SqliteLedger::open(data.path()).unwrap();
    assert_eq!(ledger.endpoint_for(&later).unwrap(), Some(key("kiosk-02")));
    drop(ledger);
    // The copy the restore kept of the store it replaced does not carry gateway.db.
    let aside = again.previous.unwrap();
    let kept = Connection::open(&aside).unwrap();
    let carried_tables: i64 = kept
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'backup_carried_files'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(carried_tables, 0);

    // A damaged gateway.db is moved aside and the backup's put in its place.
    let damaged = tempfile::tempdir().unwrap();
    let broken = damaged.path().join("data");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("gateway.db"),
        b"not a database at all, 32 bytes+",
    )
    .unwrap();
    let restored = EmbeddedStore::restore_from(&broken, &backup, Timestamp::now()).unwrap();
    assert_eq!(
        restored.carried,
        [("gateway.db".to_string(), CarriedOutcome::Restored)]
    );
    let moved: Vec<String> = std::fs::read_dir(&broken)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gateway.db.damaged-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let ledger = SqliteLedger::open(&broken).unwrap();
    assert_eq!(ledger.endpoint_for(&token).unwrap(), Some(key("kiosk-01")));

    // A backup taken before this release carried nothing: nothing is written.
    let old_style = tempfile::tempdir().unwrap();
    let bare = old_style.path().join("data");
    std::fs::create_dir(&bare).unwrap();
    let restored = EmbeddedStore::restore_from(&bare, &fixture(), Timestamp::now()).unwrap();
    assert_eq!(
        restored.carried,
        [("gateway.db".to_string(), CarriedOutcome::NotInBackup)]
    );
    assert!(!bare.join("gateway.db").exists());
}
