//! `make demo` runs to completion, so it cannot rot: the recast-demo binary, without a
//! terminal and on free ports, must take kiosk-01 from its failed-rollback report through one
//! attempt to Ready on the new build. Checked from the outside, with recastctl on the store
//! the demo leaves behind.
//!
//! Needs the workspace's binaries next to recast-demo (`cargo test --workspace`, as `make test`
//! runs it, builds them), wimlib-imagex and openssl; skips loudly without them unless
//! RECAST_REQUIRE_DEMO=1 (CI).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const REQUIRE: &str = "RECAST_REQUIRE_DEMO";
const DEMO: &str = env!("CARGO_BIN_EXE_recast-demo");

fn missing() -> Option<String> {
    for bin in ["recast-operator", "recastctl", "recast-agent"] {
        if !Path::new(DEMO).with_file_name(bin).is_file() {
            return Some(format!(
                "{bin} is not built next to recast-demo (run `cargo build --ignore-rust-version --workspace --bins`, or the whole workspace's tests as make test does)"
            ));
        }
    }
    if !recast_tests::have("wimlib-imagex") {
        return Some("wimlib-imagex is missing (run tests/golden/setup.sh)".into());
    }
    if !recast_tests::have("openssl") {
        return Some("openssl is missing (apt-get install openssl)".into());
    }
    None
}

fn recastctl(data: &Path, args: &[&str]) -> Value {
    let out = Command::new(Path::new(DEMO).with_file_name("recastctl"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run recastctl");
    assert!(
        out.status.success(),
        "recastctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("recastctl -o json prints JSON")
}

#[test]
fn demo_takes_the_failed_rollback_endpoint_through_an_attempt_to_ready() {
    if let Some(why) = missing() {
        recast_tests::skip_or_fail(REQUIRE, &format!("make demo: {why}"));
        return;
    }
    let dir = recast_tests::redfish::TempDir::new("demo");
    let data = dir.path().join("data");
    let port = || format!("127.0.0.1:{}", recast_tests::free_port());
    // The demo bounds each of its waits itself and exits non-zero when one runs out.
    let out = Command::new(DEMO)
        .arg("--data-dir")
        .arg(&data)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .args(["--listen", &port(), "--boot-http", &port()])
        .args(["--gateway-listen", &port(), "--exit-when-done"])
        .output()
        .expect("run recast-demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "recast-demo failed:\n{text}");
    for step in [
        "GET /boot/",
        "POST .../claim",
        "GET .../task",
        "POST .../result ok",
    ] {
        assert!(text.contains(step), "the narration shows {step:?}:\n{text}");
    }

    let ep = recastctl(&data, &["get", "rep", "kiosk-01", "-o", "json"]);
    let status = &ep["status"];
    assert_eq!(status["phase"], "Ready", "{status:#}");
    assert!(status["activeAttempt"].is_null(), "{status:#}");
    assert_eq!(status["lastReport"]["build"], "26100.7623", "{status:#}");
    let history = status["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), 1, "exactly one attempt: {status:#}");
    assert_eq!(history[0]["trigger"], "FailedRollback", "{status:#}");
    assert_eq!(history[0]["outcome"], "Succeeded", "{status:#}");
    // The healthy endpoints the demo's agents play were left alone.
    for name in ["kiosk-02", "reception-01"] {
        let ep = recastctl(&data, &["get", "rep", name, "-o", "json"]);
        assert!(
            ep["status"]["history"]
                .as_array()
                .is_none_or(|h| h.is_empty()),
            "{name} was not reimaged: {:#}",
            ep["status"]
        );
    }
    let gi = recastctl(&data, &["get", "gi", "win11-24h2-2026-01", "-o", "json"]);
    let verified = gi["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Verified" && c["status"] == "True");
    assert!(
        verified,
        "the golden image was verified: {:#}",
        gi["status"]
    );
}
