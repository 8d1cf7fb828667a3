//! recastctl as a user runs it, on the embedded store and on the real kube-apiserver.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const RECASTCTL: &str = env!("CARGO_BIN_EXE_recastctl");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Ctl {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Kubernetes: the operator's control namespace (`--operator-namespace`).
    control: Option<String>,
}

impl Ctl {
    fn embedded(tag: &str) -> Ctl {
        let dir = std::env::temp_dir().join(format!("recastctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Ctl {
            args: vec!["--data-dir".into(), dir.to_string_lossy().into()],
            env: vec![],
            control: None,
        }
    }

    fn kube(k: &recast_tests::K8s, ns: &str) -> Ctl {
        Ctl {
            args: vec!["--backend".into(), "kube".into(), "-n".into(), ns.into()],
            env: vec![("KUBECONFIG".into(), k.kubeconfig.to_string_lossy().into())],
            control: Some(ns.into()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(RECASTCTL);
        cmd.args(&self.args)
            .args(args)
            .env_remove("RECAST_DATA_DIR")
            .env_remove("RECAST_BACKEND");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "recastctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> String {
    repo().join("examples").to_string_lossy().into_owned()
}

/// The same checks on either backend.
fn exercise(ctl: &Ctl) {
    let out = ctl.ok(&["apply", "--create-store", "-f", &examples()]);
    assert!(
        out.contains("endpoint.recast.dev/kiosk-01 created"),
        "{out}"
    );
    // BMC credentials are stored too (the embedded store keeps v1 Secrets), never echoed.
    assert!(out.contains("secret/bmc-credentials created"), "{out}");
    assert!(!out.contains("change-me"), "{out}");
    let again = ctl.ok(&["apply", "-f", &examples()]);
    assert_eq!(again.matches(" unchanged").count(), 9, "{again}");

    let table = ctl.ok(&["get", "rep"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SITE", "PHASE", "STEP", "BUILD", "IMAGE", "UPDATES", "AGE"
        ]
    );
    assert_eq!(table.lines().count(), 6, "{table}");
    let gi = ctl.ok(&["get", "goldenimages"]);
    assert!(
        gi.starts_with("NAME") && gi.contains("VERIFIED") && gi.contains("win11-24h2-2026-01"),
        "{gi}"
    );

    let json: Value =
        serde_json::from_str(&ctl.ok(&["get", "rep", "kiosk-01", "-o", "json"])).unwrap();
    assert_eq!(
        json["spec"]["identity"]["macAddresses"][0],
        "52:54:00:a1:00:01"
    );
    let yaml = ctl.ok(&["get", "wave", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: List") && yaml.contains("store-042-kiosks-2026-01"),
        "{yaml}"
    );

    ctl.ok(&["protect", "kiosk-02"]);
    let wide = ctl.ok(&["get", "rep", "-o", "wide"]);
    let row = wide.lines().find(|l| l.starts_with("kiosk-02")).unwrap();
    assert!(row.contains("true"), "{row}");
    ctl.ok(&["unprotect", "kiosk-02"]);

    let out = ctl.ok(&[
        "reimage",
        "kiosk-03",
        "--reason",
        "ticket 4711: KB5074109 rolled back",
    ]);
    assert!(out.contains("reimage requested"), "{out}");
    let ep: Value =
        serde_json::from_str(&ctl.ok(&["get", "rep", "kiosk-03", "-o", "json"])).unwrap();
    assert_eq!(
        ep["spec"]["reimageRequest"]["reason"],
        "ticket 4711: KB5074109 rolled back"
    );
    assert!(
        ep["spec"]["reimageRequest"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    // Manual update holds: audited (who, why, when) in the spec, on either backend.
    let out = ctl.ok(&[
        "hold",
        "reception-01",
        "--reason",
        "ticket 4712: vendor app freeze",
    ]);
    assert!(out.contains("held by hand"), "{out}");
    let ep: Value =
        serde_json::from_str(&ctl.ok(&["get", "rep", "reception-01", "-o", "json"])).unwrap();
    let m = &ep["spec"]["manualUpdateHold"];
    assert_eq!(m["action"], "Hold");
    assert_eq!(m["reason"], "ticket 4712: vendor app freeze");
    assert!(
        m["requestedAt"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
        "{m}"
    );
    ctl.ok(&["release", "reception-01", "--reason", "freeze over"]);
    let ep: Value =
        serde_json::from_str(&ctl.ok(&["get", "rep", "reception-01", "-o", "json"])).unwrap();
    assert_eq!(ep["spec"]["manualUpdateHold"]["action"], "Release");
    ctl.ok(&[
        "release",
        "reception-01",
        "--reason",
        "back to policy",
        "--clear",
    ]);
    let ep: Value =
        serde_json::from_str(&ctl.ok(&["get", "rep", "reception-01", "-o", "json"])).unwrap();
    assert!(ep["spec"].get("manualUpdateHold").is_none(), "{ep}");
    let no_reason = ctl.run(&["hold", "reception-01", "--reason", " "]);
    assert_eq!(no_reason.status.code(), Some(2), "{}", stderr(&no_reason));
    assert!(
        stderr(&no_reason).contains("--reason must say why"),
        "{}",
        stderr(&no_reason)
    );
    let ghost = ctl.run(&["hold", "nope", "--reason", "x"]);
    assert_eq!(ghost.status.code(), Some(1));

    assert_eq!(
        ctl.ok(&["history", "kiosk-01"]),
        "No reimage attempts yet.\n"
    );
    let d = ctl.ok(&["describe", "rep", "kiosk-01"]);
    assert!(
        d.contains("Name:         kiosk-01") && d.contains("Events:"),
        "{d}"
    );

    // Bad input: each gets a clear message and its exit code, and nothing changes.
    let bad = ctl.run(&[
        "apply",
        "-f",
        &repo()
            .join("examples/invalid/endpoint-site.yaml")
            .to_string_lossy(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("spec.site must be a DNS label"),
        "{}",
        stderr(&bad)
    );
    let missing = ctl.run(&["get", "rep", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("\"nope\" not found"),
        "{}",
        stderr(&missing)
    );
    let kind = ctl.run(&["get", "pods"]);
    assert_eq!(kind.status.code(), Some(2));
    assert!(stderr(&kind).contains("unknown kind"), "{}", stderr(&kind));
    let no_reason = ctl.run(&["reimage", "kiosk-01"]);
    assert_eq!(
        no_reason.status.code(),
        Some(2),
        "clap refuses a reimage without --reason"
    );
    let no_file = ctl.run(&["apply", "-f", "/nonexistent/recast.yaml"]);
    assert_eq!(no_file.status.code(), Some(2));
    assert_eq!(
        ctl.ok(&["get", "rep"]).lines().count(),
        6,
        "nothing was added"
    );

    // Golden images: the list shows verdicts with reasons; promote/demote leave an audited
    // mark the operator turns into KnownGood.
    let list = ctl.ok(&["image", "list"]);
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "BUILD",
            "MIN-BUILD",
            "VERIFIED",
            "KNOWNGOOD",
            "CHANNELS",
            "READY",
            "DIGEST",
            "AGE"
        ]
    );
    let row = list
        .lines()
        .find(|l| l.starts_with("win11-24h2-2026-01"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("26100.7623"), "{row}");
    let out = ctl.ok(&[
        "image",
        "promote",
        "win11-24h2-2026-01",
        "--reason",
        "canary wave clean",
    ]);
    assert!(out.contains("promoted"), "{out}");
    let gi: Value =
        serde_json::from_str(&ctl.ok(&["get", "gi", "win11-24h2-2026-01", "-o", "json"])).unwrap();
    assert_eq!(
        gi["metadata"]["annotations"]["recast.dev/known-good"],
        "promoted"
    );
    assert!(
        gi["metadata"]["annotations"]["recast.dev/known-good-reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("canary wave clean (")),
        "{gi}"
    );
    assert_eq!(
        gi["metadata"]["generation"], 1,
        "a promotion is not a spec change"
    );
    ctl.ok(&[
        "image",
        "demote",
        "win11-24h2-2026-01",
        "--reason",
        "BSOD on canary",
    ]);
    let gi: Value =
        serde_json::from_str(&ctl.ok(&["get", "gi", "win11-24h2-2026-01", "-o", "json"])).unwrap();
    assert_eq!(
        gi["metadata"]["annotations"]["recast.dev/known-good"],
        "demoted"
    );
    let empty = ctl.run(&["image", "promote", "win11-24h2-2026-01", "--reason", " "]);
    assert_eq!(empty.status.code(), Some(2), "a blank reason is refused");
    let nope = ctl.run(&["image", "promote", "nope", "--reason", "x"]);
    assert_eq!(nope.status.code(), Some(1));
    assert!(
        stderr(&nope).contains("\"nope\" not found"),
        "{}",
        stderr(&nope)
    );
    let json: Vec<Value> = serde_json::from_str(&ctl.ok(&["image", "list", "-o", "json"])).unwrap();
    assert_eq!(json.len(), 1);

    // Driver sets by hardware model, listed per image.
    assert!(
        ctl.ok(&["image", "drivers"]).contains("No driver sets"),
        "the example image declares none"
    );
    let with_drivers =
        std::env::temp_dir().join(format!("recastctl-drivers-{}.yaml", std::process::id()));
    std::fs::write(
        &with_drivers,
        format!(
            r#"apiVersion: recast.dev/v1alpha1
kind: GoldenImage
metadata: {{name: win11-drivers}}
spec:
  source: {{url: https://images.example.internal/golden/win11.wim}}
  sha256: "{sha}"
  requirements: {{minimumBuild: "26100.7623"}}
  drivers:
  - manufacturer: Dell Inc.
    model: OptiPlex 7010
    source: {{url: https://images.example.internal/drivers/optiplex-7010.wim}}
    sha256: {d1}
  - manufacturer: LENOVO
    model: 21HD
    source: {{path: /srv/drivers/21hd.wim}}
    sha256: {d2}
"#,
            sha = "1".repeat(64),
            d1 = "a".repeat(64),
            d2 = "b".repeat(64)
        ),
    )
    .unwrap();
    ctl.ok(&["apply", "-f", &with_drivers.to_string_lossy()]);
    let drivers = ctl.ok(&["image", "drivers"]);
    let lines: Vec<&str> = drivers.lines().collect();
    assert_eq!(lines.len(), 3, "{drivers}");
    assert!(lines[0].starts_with("IMAGE"), "{drivers}");
    assert!(
        lines[1].contains("Dell Inc.")
            && lines[1].contains("OptiPlex 7010")
            && lines[1].contains("aaaaaaaaaaaa"),
        "{drivers}"
    );
    assert!(lines[2].contains("/srv/drivers/21hd.wim"), "{drivers}");
    let json: Vec<Value> =
        serde_json::from_str(&ctl.ok(&["image", "drivers", "win11-drivers", "-o", "json"]))
            .unwrap();
    assert_eq!(json.len(), 2);
    assert_eq!(json[1]["model"], "21HD");
    assert_eq!(json[1]["sha256"], "b".repeat(64));
    let nope = ctl.run(&["image", "drivers", "nope"]);
    assert_eq!(nope.status.code(), Some(1));
    assert!(
        stderr(&nope).contains("no GoldenImage \"nope\""),
        "{}",
        stderr(&nope)
    );
    ctl.ok(&["delete", "gi", "win11-drivers"]);
    let _ = std::fs::remove_file(&with_drivers);

    ctl.ok(&["delete", "wave", "store-042-kiosks-2026-01"]);
    let waves = ctl.run(&["get", "wave"]);
    assert!(String::from_utf8_lossy(&waves.stdout).trim().is_empty());

    tokens(ctl);
}

/// `recastctl token issue|revoke` on either backend: each issue prints a new token once,
/// unknown endpoints and missing tokens are errors, Kubernetes needs the control namespace.
fn tokens(ctl: &Ctl) {
    let with_control = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(ns) = &ctl.control {
            v.extend(["--operator-namespace".to_string(), ns.clone()]);
        }
        v
    };
    let run = |args: &[&str]| {
        let v = with_control(args);
        ctl.run(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let issue = || {
        let out = run(&["token", "issue", "kiosk-01"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            token.starts_with("rct_") && token.len() == 68,
            "one token on stdout: {token:?}"
        );
        assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
        token
    };
    let (first, second) = (issue(), issue());
    assert_ne!(first, second, "issuing again rotates");
    let nope = run(&["token", "issue", "no-such-endpoint"]);
    assert_eq!(nope.status.code(), Some(1));
    assert!(stderr(&nope).contains("not found"), "{}", stderr(&nope));
    assert!(nope.stdout.is_empty(), "no token for an unknown endpoint");
    let revoked = run(&["token", "revoke", "kiosk-01"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let again = run(&["token", "revoke", "kiosk-01"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("has no token"),
        "{}",
        stderr(&again)
    );
    if ctl.control.is_some() {
        let bare = ctl.run(&["token", "issue", "kiosk-01"]);
        assert_eq!(bare.status.code(), Some(2), "{}", stderr(&bare));
        assert!(stderr(&bare).contains("--operator-namespace"));
    }
}

#[test]
fn recastctl_on_the_embedded_store() {
    exercise(&Ctl::embedded("flow"));
}

#[test]
fn recastctl_on_the_apiserver() {
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    k.install_crds();
    let ns = k.fresh_namespace("ctl");
    exercise(&Ctl::kube(&k, &ns));
}

/// `recastctl bmc` against sushy-tools' Redfish emulator, credentials from the backend's Secret.
fn bmc_commands(ctl: &Ctl, tag: &str) {
    use recast_tests::redfish::{self, Sushy, SushyOptions, TempDir};
    let Some(bin) = redfish::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            user: Some(("ops", "bmc-pw-7731")),
            ..Default::default()
        },
    );
    let dir = TempDir::new(tag);
    let manifest = dir.path().join("kiosk.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: kiosk-bmc}}\nstringData: {{username: ops, password: bmc-pw-7731}}\n---\n\
             apiVersion: recast.dev/v1alpha1\nkind: Endpoint\nmetadata: {{name: kiosk-77}}\nspec:\n  identity: {{macAddresses: ['52:54:00:a1:00:77']}}\n\
             \x20 bootMode: uefi\n  bmc: {{address: '{}', credentialsSecretRef: {{name: kiosk-bmc}}}}\n  image: {{channel: stable}}\n  site: lab\n",
            sushy.url
        ),
    )
    .unwrap();
    let applied = ctl.ok(&["apply", "--create-store", "-f", &manifest.to_string_lossy()]);
    assert!(
        applied.contains("secret/kiosk-bmc created") && !applied.contains("bmc-pw-7731"),
        "{applied}"
    );

    let status = ctl.ok(&["bmc", "status", "kiosk-77"]);
    assert!(
        status.contains("Power:           Off") && status.contains("Sushy Emulator"),
        "{status}"
    );
    let on = ctl.ok(&["bmc", "power", "kiosk-77", "on"]);
    assert!(on.contains("kiosk-77: On (Off → On)"), "{on}");
    let cycle = ctl.ok(&["bmc", "power", "kiosk-77", "cycle"]);
    assert!(cycle.contains("ForceRestart (On → On)"), "{cycle}");
    let off = ctl.ok(&["bmc", "power", "kiosk-77", "off"]);
    assert!(off.contains("ForceOff (On → Off)"), "{off}");

    // The emulator has no event log: a clear error, exit 1.
    let events = ctl.run(&["bmc", "events", "kiosk-77"]);
    assert_eq!(events.status.code(), Some(1));
    assert!(
        stderr(&events).contains("does not support a system event log"),
        "{}",
        stderr(&events)
    );

    let describe = ctl.ok(&["describe", "rep", "kiosk-77"]);
    assert!(!describe.contains("bmc-pw-7731"), "{describe}");
    let usage = ctl.run(&["bmc", "power", "kiosk-77", "sideways"]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = ctl.run(&["bmc", "status", "no-such-endpoint"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn bmc_commands_on_the_embedded_store() {
    bmc_commands(&Ctl::embedded("bmc"), "ctl-bmc-embedded");
}

#[test]
fn bmc_commands_on_the_apiserver() {
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    k.install_crds();
    let ns = k.fresh_namespace("ctl-bmc");
    bmc_commands(&Ctl::kube(&k, &ns), "ctl-bmc-kube");
}

#[test]
fn a_foreign_data_dir_is_refused_without_touching_it() {
    let ctl = Ctl::embedded("foreign");
    let dir = PathBuf::from(&ctl.args[1]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("recast.db"),
        b"this is somebody's notes, not a database",
    )
    .unwrap();
    let out = ctl.run(&["get", "rep"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a recast data file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(dir.join("recast.db")).unwrap(),
        b"this is somebody's notes, not a database"
    );
}

#[test]
fn a_mistyped_data_dir_is_an_error_not_an_empty_site() {
    let ctl = Ctl::embedded("typo");
    let dir = PathBuf::from(&ctl.args[1]);
    // Every command that reads or changes the store refuses, and creates nothing.
    for args in [
        vec!["get", "rep"],
        vec!["describe", "rep", "kiosk-01"],
        vec!["reimage", "kiosk-01", "--reason", "x"],
        vec!["wave", "list"],
        vec!["breaker", "status"],
        vec!["store", "backup", "/tmp/never-written.db"],
        vec!["apply", "-f", "../examples"],
    ] {
        let out = ctl.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{}: no recast store there", dir.display()))
                && err.contains("--data-dir")
                && err.contains("apply --create-store"),
            "{args:?}: {err}"
        );
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
    assert!(!Path::new("/tmp/never-written.db").exists());
    // Creating on purpose: the directory is owner-only, the file 0600 (it holds BMC
    // credentials).
    let out = ctl.ok(&["apply", "--create-store", "-f", &examples()]);
    assert!(out.contains("created"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("recast.db")), 0o600);
    assert!(ctl.ok(&["get", "rep"]).contains("kiosk-01"));
    // A backup and a restore from the command line (the operator is not running here).
    let backup = dir.with_extension("backup");
    let _ = std::fs::remove_file(&backup);
    let said = ctl.ok(&["store", "backup", &backup.to_string_lossy()]);
    assert!(
        said.contains("backed up 8 objects") && said.contains("BMC credentials"),
        "{said}"
    );
    assert_eq!(mode(&backup), 0o600);
    let again = ctl.run(&["store", "backup", &backup.to_string_lossy()]);
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    ctl.ok(&["delete", "rep", "kiosk-01"]);
    let said = ctl.ok(&["store", "restore", &backup.to_string_lossy()]);
    assert!(
        said.contains("restored 8 objects")
            && said.contains("is kept as")
            && said.contains("5 endpoints start nothing on their own"),
        "{said}"
    );
    assert!(ctl.ok(&["get", "rep"]).contains("kiosk-01"));
    // Restoring into a directory that does not exist is refused, and creates nothing.
    let nowhere = dir.with_extension("nowhere");
    let out = Command::new(RECASTCTL)
        .args(["--data-dir", &nowhere.to_string_lossy()])
        .args(["store", "restore", &backup.to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!nowhere.exists());
    // pause / unpause set spec.paused.
    let paused = |ctl: &Ctl| {
        let json: serde_json::Value =
            serde_json::from_str(&ctl.ok(&["get", "rep", "kiosk-01", "-o", "json"])).unwrap();
        json["spec"]["paused"] == true
    };
    assert!(ctl.ok(&["pause", "kiosk-01"]).contains("paused"));
    assert!(paused(&ctl));
    assert!(ctl.ok(&["unpause", "kiosk-01"]).contains("unpaused"));
    assert!(!paused(&ctl));
    let missing = ctl.run(&["pause", "kiosk-99"]);
    assert_eq!(missing.status.code(), Some(1));
    let _ = std::fs::remove_file(&backup);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_checks_offline() {
    let ok = Command::new(RECASTCTL)
        .args(["validate", "-f", &examples()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = Command::new(RECASTCTL)
        .args([
            "validate",
            "-f",
            &repo().join("examples/invalid").to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("requiredKbs entries must be KB followed by digits"));
}
