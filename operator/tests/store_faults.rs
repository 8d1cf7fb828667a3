//! The embedded store under bad conditions: foreign and damaged files get a clear error and are
//! left untouched; a process killed while writing leaves a consistent database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::{DB_FILE, EmbeddedStore, StoreError};
use serde_json::json;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn open_err(d: &Path) -> StoreError {
    match EmbeddedStore::open(d) {
        Ok(_) => panic!("{} opened", d.display()),
        Err(e) => e,
    }
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_untouched() {
    let d = dir("garbage");
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(d.join(DB_FILE), &bytes).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    assert!(e.to_string().contains("not a recast data file"), "{e}");
    assert_eq!(
        std::fs::read(d.join(DB_FILE)).unwrap(),
        bytes,
        "the file was modified"
    );
}

#[test]
fn another_applications_database_is_refused_and_untouched() {
    let d = dir("foreign");
    {
        let c = rusqlite::Connection::open(d.join(DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);").unwrap();
    }
    let before = std::fs::read(d.join(DB_FILE)).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    assert!(
        e.to_string().contains("point --data-dir"),
        "the error says what to do: {e}"
    );
    assert_eq!(std::fs::read(d.join(DB_FILE)).unwrap(), before);
}

fn populated(tag: &str) -> PathBuf {
    let d = dir(tag);
    let store = EmbeddedStore::open(&d).unwrap();
    for i in 0..300 {
        let doc = json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": format!("ep-{i}")},
            "spec": {"identity": {"macAddresses": [format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256)]}, "bootMode": "uefi", "image": {"channel": "stable"}}});
        store.apply(&doc, "default").unwrap();
    }
    drop(store);
    // Fold the WAL into the main file so damage to the file is damage to the data.
    let c = rusqlite::Connection::open(d.join(DB_FILE)).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    d
}

#[test]
fn a_damaged_database_gets_a_clear_error_not_a_panic() {
    let d = populated("damaged");
    let path = d.join(DB_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096, "test needs several pages");
    // Scribble over pages in the middle of the file (b-tree pages of the objects table).
    for b in &mut bytes[4096 * 3..4096 * 8] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(
        e.to_string().contains("damaged") && e.to_string().contains("backup"),
        "{e}"
    );
}

#[test]
fn a_truncated_database_gets_a_clear_error_not_a_panic() {
    let d = populated("truncated");
    let path = d.join(DB_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let e = open_err(&d);
    assert!(
        matches!(e, StoreError::Corrupt { .. } | StoreError::Foreign { .. }),
        "{e:?}"
    );
}

#[test]
fn a_process_killed_mid_write_leaves_a_consistent_database() {
    // recast-operator --load applies a large manifest one object per transaction; kill it at
    // several points and check the file each time.
    let d = dir("killed");
    let manifest = d.join("many.yaml");
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!(
            "---\napiVersion: recast.dev/v1alpha1\nkind: Endpoint\nmetadata: {{name: lane-{i}}}\nspec:\n  identity: {{macAddresses: ['52:54:01:00:{:02x}:{:02x}']}}\n  bootMode: uefi\n  image: {{channel: stable}}\n",
            i / 256,
            i % 256
        ));
    }
    std::fs::write(&manifest, text).unwrap();
    let data = d.join("data");
    let mut last = 0;
    for delay_ms in [150u64, 400, 900] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_recast-operator"))
            .args([
                "run",
                "--backend",
                "embedded",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .arg("--load")
            .arg(&manifest)
            .env("RECAST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();

        let store = EmbeddedStore::open(&data).expect("the store opens after a kill");
        let all = store
            .list(Kind::Endpoint, Some("default"))
            .expect("every stored object decodes");
        assert!(
            all.len() >= last,
            "objects were lost: {} after {last}",
            all.len()
        );
        last = all.len();
        for o in &all {
            assert!(o.pointer("/metadata/uid").is_some() && o.pointer("/spec/identity").is_some());
        }
    }
    assert!(
        last > 0,
        "nothing was written before the kills; raise the delays"
    );
}
