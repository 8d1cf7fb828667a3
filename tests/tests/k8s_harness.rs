//! The Kubernetes harness itself: a server that does not come up is reported with its log, and
//! nothing is left running afterwards.

use std::process::Command;

use recast_tests::{K8s, repo_root};

fn processes_mentioning(needle: &str) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_failing_apiserver_is_reported_with_its_log_and_cleaned_up() {
    // Needs the built binaries; the shared harness being up proves they exist.
    if K8s::get().is_none() {
        return;
    }
    let state = std::env::temp_dir().join(format!("recast-harness-fail-{}", std::process::id()));
    let out = Command::new(repo_root().join("tests/k8s/harness.sh"))
        .arg("up")
        .env("RECAST_K8S_DIR", &state)
        .env(
            "RECAST_K8S_APISERVER_EXTRA_ARGS",
            "--no-such-flag-for-recast",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "harness claimed success:\n{stderr}");
    assert!(
        stderr.contains("ERROR: kube-apiserver exited during start-up"),
        "{stderr}"
    );
    assert!(stderr.contains("last 40 lines"), "{stderr}");
    assert!(
        stderr.contains("no-such-flag-for-recast"),
        "the server's own error is missing:\n{stderr}"
    );
    let left = processes_mentioning(&state.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn up_then_down_leaves_no_process_and_no_state() {
    if K8s::get().is_none() {
        return;
    }
    let state = std::env::temp_dir().join(format!("recast-harness-cycle-{}", std::process::id()));
    let harness = repo_root().join("tests/k8s/harness.sh");
    let up = Command::new(&harness)
        .arg("up")
        .env("RECAST_K8S_DIR", &state)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(state.join("kubeconfig").exists());
    assert!(!processes_mentioning(&state.to_string_lossy()).is_empty());
    let down = Command::new(&harness)
        .arg("down")
        .env("RECAST_K8S_DIR", &state)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = processes_mentioning(&state.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    assert!(!state.exists(), "state directory left behind");
}
