//! `recastctl wave` as a user runs it on the embedded store: create, plan (golden output),
//! status exit codes per phase, pause/resume/abort/approve, the kubectl plugin, completions,
//! and `status --watch` in a real terminal (tmux).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

const RECASTCTL: &str = env!("CARGO_BIN_EXE_recastctl");
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-recast");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Site {
    dir: PathBuf,
}

impl Site {
    /// A data dir with the examples applied (five endpoints, one protected).
    fn new(tag: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("recastctl-wave-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let site = Site { dir };
        let examples = repo().join("examples");
        site.ok(&["apply", "--create-store", "-f", &examples.to_string_lossy()]);
        site
    }

    fn run_with(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("RECAST_DATA_DIR")
            .env_remove("RECAST_BACKEND")
            .env("USER", "alice")
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(RECASTCTL, args)
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

    fn store(&self) -> EmbeddedStore {
        EmbeddedStore::open(&self.dir).unwrap()
    }

    /// Writes a wave status as the operator would.
    fn set_status(&self, name: &str, status: Value) {
        self.store()
            .write_status(Kind::ReimageWave, "default", name, None, &status)
            .unwrap();
    }

    fn spec(&self, name: &str) -> Value {
        self.store()
            .get(Kind::ReimageWave, "default", name)
            .unwrap()
            .unwrap()["spec"]
            .clone()
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn golden(name: &str, actual: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wave");
    recast_tests::assert_golden(&dir.join(name), actual);
}

fn create_kiosk_wave(site: &Site, extra: &[&str]) {
    let mut args = vec![
        "wave",
        "create",
        "jan",
        "--selector",
        "site=store-042",
        "--image",
        "win11-24h2-2026-01",
        "--reason",
        "January rollup",
        "--canary",
        "1",
        "--batch-size",
        "2",
    ];
    args.extend_from_slice(extra);
    let out = site.ok(&args);
    assert!(out.contains("reimagewave.recast.dev/jan created"), "{out}");
}

#[test]
fn create_and_plan_a_wave_from_flags() {
    let site = Site::new("plan");
    create_kiosk_wave(&site, &["--max-failures", "10%"]);
    let spec = site.spec("jan");
    assert_eq!(
        spec["selector"],
        json!({"matchLabels": {"site": "store-042"}})
    );
    assert_eq!(spec["strategy"]["canary"], json!(1));
    assert_eq!(spec["strategy"]["maxFailures"], json!("10%"));
    // The dry run lists batches and what is skipped and why (reception-01 is protected).
    golden("plan-examples.txt", &site.ok(&["wave", "plan", "jan"]));
    let json_plan: Value =
        serde_json::from_str(&site.ok(&["wave", "plan", "jan", "-o", "json"])).unwrap();
    assert_eq!(json_plan["batches"][0]["canary"], json!(true));
    assert_eq!(json_plan["skipped"][0]["reason"], json!("Protected"));
    // Creating it again is refused with what to do instead.
    let again = site.run(&[
        "wave",
        "create",
        "jan",
        "--selector",
        "a=b",
        "--image",
        "x",
        "--reason",
        "y",
    ]);
    assert_eq!(code(&again), 1);
    assert!(
        stderr(&again).contains("under a new name"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn create_from_a_file_and_list() {
    let site = Site::new("file");
    let file = repo().join("examples/wave.yaml");
    // The examples already hold this wave: delete it, then create it from the file.
    site.ok(&["delete", "wave", "store-042-kiosks-2026-01"]);
    let out = site.ok(&["wave", "create", "-f", &file.to_string_lossy()]);
    assert!(out.contains("store-042-kiosks-2026-01 created"), "{out}");
    let list = site.ok(&["wave", "list"]);
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("store-042-kiosks-2026-01"), "{list}");
    let yaml = site.ok(&["wave", "list", "-o", "yaml"]);
    assert!(yaml.contains("kind: List"), "{yaml}");
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code() {
    let site = Site::new("bad");
    // A selector kubectl would not understand: usage error (2) that shows the grammar.
    let o = site.run(&[
        "wave",
        "create",
        "w",
        "--selector",
        "site in store-042",
        "--image",
        "x",
        "--reason",
        "y",
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("key in (a,b)"), "{}", stderr(&o));
    // A missing flag says which.
    let o = site.run(&["wave", "create", "w", "--selector", "a=b", "--image", "x"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("--reason is required"),
        "{}",
        stderr(&o)
    );
    // An invalid amount is refused by the API's own rules (exit 1).
    let o = site.run(&[
        "wave",
        "create",
        "w",
        "--selector",
        "a=b",
        "--image",
        "x",
        "--reason",
        "y",
        "--batch-size",
        "lots",
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("batchSize"), "{}", stderr(&o));
    // A plan that selects nothing exits 1 and says where to look.
    let o = site.run(&[
        "wave",
        "plan",
        "w",
        "--selector",
        "site=nowhere",
        "--image",
        "x",
        "--reason",
        "y",
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("matches no endpoint"), "{}", stderr(&o));
    // Unknown wave.
    let o = site.run(&["wave", "status", "nope"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

#[test]
fn status_exit_codes_follow_the_phase() {
    let site = Site::new("codes");
    create_kiosk_wave(&site, &[]);
    for (phase, want) in [
        ("Running", 0),
        ("Succeeded", 0),
        ("Failed", 3),
        ("Aborted", 4),
        ("AwaitingApproval", 5),
        ("Paused", 5),
    ] {
        site.set_status("jan", json!({"phase": phase}));
        let o = site.run(&["wave", "status", "jan"]);
        assert_eq!(code(&o), want, "{phase}: {}", stderr(&o));
        let o = site.run(&["wave", "status", "jan", "-o", "json"]);
        assert_eq!(code(&o), want, "{phase} -o json");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["status"]["phase"], json!(phase));
    }
    // --watch returns at once on an ended wave, with its code.
    site.set_status("jan", json!({"phase": "Failed"}));
    assert_eq!(code(&site.run(&["wave", "status", "jan", "--watch"])), 3);
}

#[test]
fn pause_resume_abort_and_approve() {
    let site = Site::new("steer");
    create_kiosk_wave(&site, &["--require-approval"]);
    site.ok(&["wave", "pause", "jan"]);
    assert_eq!(site.spec("jan")["paused"], json!(true));
    site.ok(&["wave", "resume", "jan"]);
    assert_eq!(site.spec("jan")["paused"], json!(false));
    let out = site.ok(&["wave", "approve", "jan"]);
    assert!(out.contains("approved"), "{out}");
    assert_eq!(site.spec("jan")["approvedBy"], json!("alice"));
    site.ok(&["wave", "abort", "jan"]);
    assert_eq!(site.spec("jan")["aborted"], json!(true));
    let o = site.run(&["wave", "resume", "jan"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("create a new wave"), "{}", stderr(&o));
    // An ended wave cannot be steered.
    site.set_status("jan", json!({"phase": "Aborted"}));
    let o = site.run(&["wave", "pause", "jan"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already ended"), "{}", stderr(&o));
}

#[test]
fn the_kubectl_plugin_and_completions() {
    let site = Site::new("plugin");
    create_kiosk_wave(&site, &[]);
    // kubectl-recast runs the recastctl next to it; --backend still chooses.
    let o = site.run_with(PLUGIN, &["--backend", "embedded", "wave", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("jan"));
    let help = Command::new(PLUGIN)
        .args(["wave", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: kubectl recast wave"),
        "{}",
        String::from_utf8_lossy(&help.stdout)
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(RECASTCTL)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(o.status.success());
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("approve"),
            "{shell} completion lacks wave approve"
        );
    }
}

/// `wave status --watch` in a real terminal: bars redraw in colour, and the command ends with
/// the wave's exit code once the operator marks it Succeeded.
#[test]
fn watch_redraws_in_a_terminal_until_the_wave_ends() {
    if Command::new("tmux").arg("-V").output().is_err() {
        recast_tests::skip_or_fail(
            "RECAST_REQUIRE_TMUX",
            "tmux is not installed, so `wave status --watch` was not tried in a terminal (apt-get install -y tmux)",
        );
        return;
    }
    let site = Site::new("watch");
    create_kiosk_wave(&site, &[]);
    let batch = |i: u32, names: &[&str], started: bool, ok: u32, running: u32| {
        json!({
            "index": i, "endpoints": names, "canary": i == 0,
            "startedAt": started.then_some("2026-02-11T08:00:00Z"),
            "succeeded": ok, "running": running,
        })
    };
    site.set_status(
        "jan",
        json!({
            "phase": "Running", "currentBatch": 1, "maxFailures": 0,
            "counts": {"selected": 4, "skipped": 1, "pending": 2, "running": 1, "succeeded": 0, "failed": 0},
            "batches": [batch(0, &["kiosk-01"], true, 0, 1), batch(1, &["kiosk-02", "kiosk-03"], false, 0, 0)],
            "skipped": [{"name": "reception-01", "reason": "Protected"}],
            "messages": ["batch 1/2: 1 running, 0 not started yet"],
        }),
    );
    let session = format!("recast-watch-{}", std::process::id());
    let done = std::env::temp_dir().join(format!("{session}.exit"));
    let _ = std::fs::remove_file(&done);
    let shell_cmd = format!(
        "{RECASTCTL} --data-dir {} wave status jan --watch --interval 1; echo $? > {}; sleep 30",
        site.dir.display(),
        done.display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "140",
        "-y",
        "30",
        "-e",
        "USER=alice",
        &shell_cmd,
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    let capture = |escapes: bool| {
        let mut args = vec!["capture-pane", "-p", "-t", &session];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&tmux(&args).stdout).into_owned()
    };
    let wait_for = |what: &str, escapes: bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = capture(escapes);
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what:?}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let screen = wait_for("Batch 1 (canary)", false);
    assert!(screen.contains("Phase:     Running"), "{screen}");
    assert!(screen.contains("0/3"), "{screen}");
    // Colour on a terminal: the phase is bold and the running part of a bar yellow.
    let coloured = capture(true);
    assert!(
        coloured.contains('\u{1b}'),
        "no colour on a terminal:\n{coloured}"
    );
    // The operator moves the wave on; the screen follows without a keypress.
    site.set_status(
        "jan",
        json!({
            "phase": "Succeeded", "currentBatch": 2, "maxFailures": 0,
            "startedAt": "2026-02-11T08:00:00Z", "finishedAt": "2026-02-11T09:00:00Z",
            "counts": {"selected": 4, "skipped": 1, "pending": 0, "running": 0, "succeeded": 3, "failed": 0},
            "batches": [batch(0, &["kiosk-01"], true, 1, 0), batch(1, &["kiosk-02", "kiosk-03"], true, 2, 0)],
            "skipped": [{"name": "reception-01", "reason": "Protected"}],
            "messages": ["3 endpoints on win11-24h2-2026-01; 0 failed, 1 skipped"],
        }),
    );
    let screen = wait_for("took 1h00m", false);
    assert!(screen.contains("3/3"), "{screen}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done.exists() {
        assert!(
            Instant::now() < deadline,
            "--watch did not end after the wave succeeded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(100));
    let exit = std::fs::read_to_string(&done).unwrap();
    tmux(&["kill-session", "-t", &session]);
    let _ = std::fs::remove_file(&done);
    assert_eq!(exit.trim(), "0");
}

/// The same commands against the real kube-apiserver (`make k8s-up`): create from flags (the
/// apiserver's CEL rules admit it), plan from the cluster's endpoints, steer with merge patches,
/// and read status. Skips without the harness unless RECAST_REQUIRE_K8S=1.
#[test]
fn wave_commands_on_the_apiserver() {
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    k.install_crds();
    let ns = k.fresh_namespace("ctl-wave");
    let kube = |args: &[&str]| {
        Command::new(RECASTCTL)
            .args(["--backend", "kube", "-n", &ns])
            .args(args)
            .env("KUBECONFIG", &k.kubeconfig)
            .env_remove("RECAST_BACKEND")
            .env("USER", "alice")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let o = kube(args);
        assert!(o.status.success(), "recastctl {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let examples = repo().join("examples");
    ok(&["apply", "-f", &examples.to_string_lossy()]);
    ok(&[
        "wave",
        "create",
        "jan",
        "--selector",
        "site=store-042",
        "--image",
        "win11-24h2-2026-01",
        "--reason",
        "January rollup",
        "--canary",
        "1",
        "--batch-size",
        "2",
        "--require-approval",
    ]);
    let plan = ok(&["wave", "plan", "jan"]);
    assert!(plan.contains("4 endpoints in 3 batches"), "{plan}");
    assert!(plan.contains("reception-01"), "{plan}");
    // The apiserver's own rule refuses an invalid amount, and recastctl passes its message on.
    let o = kube(&[
        "wave",
        "create",
        "bad",
        "--selector",
        "a=b",
        "--image",
        "x",
        "--reason",
        "y",
        "--batch-size",
        "0",
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("strategy.batchSize"), "{}", stderr(&o));
    ok(&["wave", "pause", "jan"]);
    ok(&["wave", "approve", "jan"]);
    let v: Value = serde_json::from_str(&ok(&["wave", "status", "jan", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["paused"], json!(true));
    assert_eq!(v["spec"]["approvedBy"], json!("alice"));
    ok(&["wave", "resume", "jan"]);
    let list = ok(&["wave", "list"]);
    assert!(list.contains("jan"), "{list}");
    // The kubectl plugin against the same cluster (kube is its default backend).
    let o = Command::new(PLUGIN)
        .args(["-n", &ns, "wave", "list"])
        .env("KUBECONFIG", &k.kubeconfig)
        .env_remove("RECAST_BACKEND")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("jan"));
    let _ = k.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
