//! `recastctl breaker status|reset` as a user runs them on the embedded store: the examples'
//! five endpoints, three of which had automatic reimages within the hour (the default limit for
//! five endpoints is 3): open, a reset without a reason refused, a reset that closes it and is
//! recorded on the policy, and the fleet-wide reset recorded in the operator's namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::json;

const RECASTCTL: &str = env!("CARGO_BIN_EXE_recastctl");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(RECASTCTL)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RECAST_DATA_DIR")
        .env_remove("RECAST_BACKEND")
        .env("USER", "alice")
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn site() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("recastctl-breaker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    assert!(
        run(
            &dir,
            &["apply", "--create-store", "-f", &examples.to_string_lossy()]
        )
        .status
        .success()
    );
    // Three automatic reimages in the last hour, as the operator records them.
    let store = EmbeddedStore::open(&dir).unwrap();
    let now = jiff::Timestamp::now();
    for (i, name) in ["kiosk-01", "kiosk-02", "kiosk-03"].iter().enumerate() {
        let started = now
            .checked_sub(jiff::SignedDuration::from_mins(10 * (i as i64 + 1)))
            .unwrap();
        let t = recast_core::time::format(started);
        store
            .write_status(
                Kind::Endpoint,
                "default",
                name,
                None,
                &json!({"history": [{"id": format!("{name}-a-1"), "trigger": "FailedRollback", "reason": "x",
                    "image": "win11-24h2-2026-01", "outcome": "Succeeded", "tries": 1,
                    "startedAt": t, "finishedAt": t}]}),
            )
            .unwrap();
    }
    dir
}

#[test]
fn status_shows_it_open_and_a_reset_with_a_reason_closes_it() {
    let dir = site();
    let o = run(&dir, &["breaker", "status"]);
    let s = out(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("Namespace default (policy default): OPEN. circuit breaker open in namespace default: 3 automatic reimages started within 1h (limit 3)"),
        "{s}"
    );
    for name in ["kiosk-01", "kiosk-02", "kiosk-03"] {
        assert!(s.contains(name), "{s}");
    }

    // Bad input: a reset must say what was looked at; nothing is written.
    let o = run(&dir, &["breaker", "reset", "--reason", "  "]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("--reason must say what was looked at"));
    let o = run(&dir, &["breaker", "reset"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&run(&dir, &["breaker", "status"])).contains("OPEN"));

    let o = run(
        &dir,
        &["breaker", "reset", "--reason", "KB5074109 confirmed bad"],
    );
    let s = out(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.starts_with("breaker of namespace default reset at "),
        "{s}"
    );
    let s = out(&run(&dir, &["breaker", "status"]));
    assert!(
        s.contains("Namespace default (policy default): closed. 0 automatic reimage(s) since the last reset."),
        "{s}"
    );
    let store = EmbeddedStore::open(&dir).unwrap();
    let policy = store
        .get(Kind::RemediationPolicy, "default", "default")
        .unwrap()
        .unwrap();
    let reason = policy["metadata"]["annotations"]
        [recast_crds::policy::BREAKER_RESET_REASON_ANNOTATION]
        .as_str()
        .unwrap();
    assert!(
        reason.starts_with("KB5074109 confirmed bad (alice, "),
        "{reason}"
    );

    // The fleet-wide reset goes to the operator's namespace, creating its policy if needed.
    let o = run(
        &dir,
        &[
            "breaker",
            "reset",
            "--fleet",
            "--operator-namespace",
            "ops",
            "--reason",
            "looked",
        ],
    );
    let s = out(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("fleet-wide breaker reset at")
            && s.contains("created RemediationPolicy default in ops"),
        "{s}"
    );
    let ops = store
        .get(Kind::RemediationPolicy, "ops", "default")
        .unwrap()
        .unwrap();
    let a = &ops["metadata"]["annotations"];
    assert!(
        a[recast_crds::policy::FLEET_BREAKER_RESET_ANNOTATION].is_string(),
        "{a}"
    );
    // The fleet's reset is not the operator namespace's own breaker reset.
    assert!(
        a[recast_crds::policy::BREAKER_RESET_ANNOTATION].is_null(),
        "{a}"
    );
}
