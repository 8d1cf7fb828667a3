//! The recast.dev API against a real kube-apiserver + etcd (`make k8s-up`): the CRDs install
//! and are served, the examples apply with kubectl, every invalid example is refused with the
//! message its rule defines, and status is a subresource.

use recast_tests::{InvalidExample, K8s, repo_root, yaml_files};

fn k8s() -> Option<K8s> {
    let k = K8s::get()?;
    k.install_crds();
    Some(k)
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("recast-k8s-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// "endpoint.recast.dev/kiosk-bad" for a document, as `kubectl get -o name` prints it.
fn object_ref(doc: &str) -> String {
    let field = |prefix: &str| {
        doc.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{}.recast.dev/{}",
        field("kind: ").to_lowercase(),
        field("  name: ")
    )
}

#[test]
fn crds_are_established_with_names_and_subresources() {
    let Some(k) = k8s() else { return };
    let out = k.kubectl_ok(&[
        "get",
        "crd",
        "-o",
        "jsonpath={range .items[?(@.spec.group==\"recast.dev\")]}{.metadata.name} {.spec.names.shortNames} {.spec.names.categories} {.status.conditions[?(@.type==\"Established\")].status}{\"\\n\"}{end}",
    ]);
    for (crd, short) in [
        ("endpoints.recast.dev", "rep"),
        ("goldenimages.recast.dev", "gi"),
        ("reimagewaves.recast.dev", "wave"),
        ("remediationpolicies.recast.dev", "rpol"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(crd))
            .unwrap_or_else(|| panic!("{crd} not installed:\n{out}"));
        assert!(
            line.contains(short),
            "{crd} lacks short name {short}: {line}"
        );
        assert!(
            line.contains("recast"),
            "{crd} lacks category recast: {line}"
        );
        assert!(line.ends_with("True"), "{crd} not Established: {line}");
    }
    // `kubectl get recast` lists every kind through the category. Discovery follows a CRD
    // that was just installed or updated a moment later: give it that moment, then insist.
    let ns = k.fresh_namespace("crds");
    recast_tests::wait_for(
        std::time::Duration::from_secs(30),
        "the recast category in discovery",
        || k.kubectl(&["get", "recast", "-n", &ns]).status.success(),
    );
    k.kubectl_ok(&["get", "recast", "-n", &ns]);
}

#[test]
fn examples_apply_and_show_printer_columns() {
    let Some(k) = k8s() else { return };
    let ns = k.fresh_namespace("examples");
    let dir = repo_root().join("examples");
    let out = k.kubectl_ok(&["apply", "-n", &ns, "-f", &dir.to_string_lossy()]);
    for name in [
        "kiosk-01",
        "reception-01",
        "win11-24h2-2026-01",
        "default",
        "store-042-kiosks-2026-01",
    ] {
        assert!(out.contains(name), "{name} not applied:\n{out}");
    }
    // Re-applying the same files changes no recast object. (A Secret written with stringData
    // always reports "configured"; that is kubectl's behaviour, not ours.)
    let again = k.kubectl_ok(&["apply", "-n", &ns, "-f", &dir.to_string_lossy()]);
    let recast_lines: Vec<_> = again
        .lines()
        .filter(|l| l.contains(".recast.dev/"))
        .collect();
    assert_eq!(recast_lines.len(), 8, "{again}");
    assert!(
        recast_lines.iter().all(|l| l.ends_with("unchanged")),
        "second apply changed objects:\n{again}"
    );

    let reps = k.kubectl_ok(&["get", "rep", "-n", &ns]);
    let header: Vec<&str> = reps
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "SITE", "PHASE", "STEP", "BUILD", "IMAGE", "UPDATES", "AGE"
        ],
        "{reps}"
    );
    assert_eq!(reps.lines().count(), 6, "five endpoints expected:\n{reps}");
    let wide = k.kubectl_ok(&["get", "rep", "-n", &ns, "-o", "wide"]);
    assert!(
        wide.lines()
            .next()
            .unwrap_or_default()
            .contains("PROTECTED"),
        "{wide}"
    );
    let reception = wide
        .lines()
        .find(|l| l.starts_with("reception-01"))
        .unwrap();
    assert!(
        reception.contains("true"),
        "reception-01 should show protected: {reception}"
    );

    let gis = k.kubectl_ok(&["get", "goldenimages", "-n", &ns]);
    let header: Vec<&str> = gis
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "BUILD",
            "EDITION",
            "VERIFIED",
            "KNOWNGOOD",
            "CHANNELS",
            "AGE"
        ],
        "{gis}"
    );
    let waves = k.kubectl_ok(&["get", "wave", "-n", &ns]);
    assert!(
        waves.starts_with("NAME") && waves.contains("win11-24h2-2026-01"),
        "{waves}"
    );
    let pols = k.kubectl_ok(&["get", "rpol", "-n", &ns]);
    assert!(pols.contains("ReimageNow"), "{pols}");
}

#[test]
fn every_invalid_example_is_rejected_with_its_message() {
    let Some(k) = k8s() else { return };
    let ns = k.fresh_namespace("invalid");
    let examples = InvalidExample::all();
    assert!(examples.len() >= 50);
    for ex in &examples {
        let file_name = ex.path.file_name().unwrap().to_string_lossy().to_string();
        let rejected = match ex.documents.as_slice() {
            [_] => &ex.path,
            [original, _] => {
                let first = write_temp(&format!("orig-{file_name}"), original);
                k.kubectl_ok(&["apply", "-n", &ns, "-f", &first.to_string_lossy()]);
                &write_temp(&format!("update-{file_name}"), &ex.documents[1])
            }
            other => panic!("{}: {} documents", ex.path.display(), other.len()),
        };
        let out = k.kubectl(&["apply", "-n", &ns, "-f", &rejected.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{} was accepted by the apiserver; expected: {}",
            ex.path.display(),
            ex.kube_expectation()
        );
        assert!(
            stderr.contains(ex.kube_expectation()),
            "{}: expected the apiserver's error to contain {:?}, got:\n{stderr}",
            ex.path.display(),
            ex.kube_expectation()
        );
    }
    // Nothing invalid was stored: only the originals of the update cases exist.
    let left = k.kubectl_ok(&["get", "recast", "-n", &ns, "-o", "name"]);
    let mut originals: Vec<String> = examples
        .iter()
        .filter(|e| e.documents.len() == 2)
        .map(|e| object_ref(&e.documents[0]))
        .collect();
    originals.sort();
    originals.dedup();
    let mut stored: Vec<String> = left.lines().map(str::to_string).collect();
    stored.sort();
    assert_eq!(stored, originals, "unexpected objects stored");
}

#[test]
fn status_is_a_subresource() {
    let Some(k) = k8s() else { return };
    let ns = k.fresh_namespace("status");
    let examples = repo_root().join("examples/endpoints.yaml");
    k.kubectl_ok(&["apply", "-n", &ns, "-f", &examples.to_string_lossy()]);
    let get = |path: &str| {
        k.kubectl_ok(&[
            "get",
            "rep",
            "kiosk-01",
            "-n",
            &ns,
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    let generation = get("{.metadata.generation}");

    // Writing status through the status subresource sets it and leaves spec and generation alone.
    k.kubectl_ok(&[
        "patch", "rep", "kiosk-01", "-n", &ns, "--subresource=status", "--type=merge",
        "-p", r#"{"status":{"phase":"Ready","lastReport":{"build":"26100.7462","reportedAt":"2026-01-13T09:00:00Z"}},"spec":{"paused":true}}"#,
    ]);
    assert_eq!(get("{.status.phase}"), "Ready");
    assert_eq!(
        get("{.spec.paused}"),
        "false",
        "a status write must not change spec"
    );
    assert_eq!(
        get("{.metadata.generation}"),
        generation,
        "a status write must not bump generation"
    );

    // Writing spec through the main resource ignores status and bumps generation.
    k.kubectl_ok(&[
        "patch",
        "rep",
        "kiosk-01",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":true},"status":{"phase":"Failed"}}"#,
    ]);
    assert_eq!(get("{.spec.paused}"), "true");
    assert_eq!(
        get("{.status.phase}"),
        "Ready",
        "a spec write must not change status"
    );
    assert_ne!(
        get("{.metadata.generation}"),
        generation,
        "a spec write must bump generation"
    );

    // The printer columns read status.
    let row = k.kubectl_ok(&["get", "rep", "kiosk-01", "-n", &ns, "--no-headers"]);
    assert!(row.contains("Ready") && row.contains("26100.7462"), "{row}");

    // The status subresource validates too: an unknown phase is refused and nothing changes.
    let out = k.kubectl(&[
        "patch",
        "rep",
        "kiosk-01",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Exploded"}}"#,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unsupported value"));
    assert_eq!(get("{.status.phase}"), "Ready");
}

#[test]
fn example_files_are_all_covered_by_these_tests() {
    // Guard against a new example directory nobody applies.
    assert!(yaml_files("examples").len() >= 5);
}
