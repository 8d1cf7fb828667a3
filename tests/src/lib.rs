//! Shared helpers for recast's integration suites: finding the real peers the suites run
//! against, and deciding whether a missing peer skips a suite (a laptop) or fails it (CI).

pub mod bcd_xml;
pub mod golden_ntfs;
pub mod hive;
pub mod http;
pub mod imaging;
pub mod imaging_env;
pub mod readback;
pub mod redfish;
pub mod secure_boot;
pub mod status;
pub mod tftp;
pub mod unattend;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod wimlib;

/// A binary of the workspace, built by the same `cargo test --workspace` (or `cargo build`)
/// as the running test: the test binary lives in the profile directory's `deps/`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the profile directory")
        .join(name);
    assert!(
        path.is_file(),
        "no {}: `make test` (cargo test --workspace) builds it; alone: cargo build -p {name}",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// True when `var` is set to 1/true: the tier it names must run, and a missing peer is a
/// failure instead of a skip. `.ci/run` sets these.
pub fn required(var: &str) -> bool {
    matches!(
        std::env::var(var).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Skips (loudly) or fails the calling test when a peer is missing, depending on `var`.
/// Returns normally only when the test should be skipped.
pub fn skip_or_fail(var: &str, why: &str) {
    if required(var) {
        panic!("{why}\n{var} is set, so this tier is mandatory and may not skip");
    }
    eprintln!("\n*** SKIPPED: {why}\n*** (set {var}=1 to make this a failure; CI does)\n");
    // cargo hides the output of passing tests; `make test` collects these and reports them.
    if let Some(path) = std::env::var_os("RECAST_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            // One write per line: O_APPEND keeps parallel tests' lines whole.
            let _ = f.write_all(format!("{why}\n").as_bytes());
        }
    }
}

/// Compares `actual` with the golden file at `path` (templates, CLI screens, command
/// transcripts). With `RECAST_UPDATE_GOLDEN` set it writes the file instead; review the diff.
pub fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("RECAST_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("a golden file has a directory"))
            .expect("create the golden directory");
        std::fs::write(path, actual).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with RECAST_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs from its golden file; if the change is deliberate, rerun with RECAST_UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

/// True when the tests run as root (network namespaces, tap devices, image builds need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// True when `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The file's sha256 in hex, computed by coreutils' `sha256sum`: an implementation
/// independent of the code under test.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("sha256sum {}: {e}", path.display()));
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A TCP port on loopback that was free a moment ago, for a server a test is about to start.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    // Ports are handed out below the kernel's ephemeral range (32768-60999 by default):
    // a port from bind(0) is also what the next outgoing connection of any process may
    // take, so a server started on it a moment later can find it in use (seen in CI with
    // kube-apiserver). Ports are drawn at random so that test processes running side by
    // side rarely draw the same one, and one process never hands out a port twice.
    const FIRST: u64 = 20000;
    const COUNT: u64 = 12000;
    static STATE: Mutex<(u64, Vec<u16>)> = Mutex::new((0, Vec::new()));
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if state.0 == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        state.0 = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
    }
    for _ in 0..COUNT {
        // xorshift64: enough to spread draws, no dependency.
        let mut x = state.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.0 = x;
        let port = (FIRST + x % COUNT) as u16;
        if state.1.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            state.1.push(port);
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 between {FIRST} and {}",
        FIRST + COUNT
    )
}

/// Polls `done` until it holds, failing the test with `what` after `limit`.
pub fn wait_for(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The real Kubernetes control plane started by `make k8s-up` (tests/k8s/harness.sh).
#[derive(Clone, Debug)]
pub struct K8s {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

/// Environment variable that makes the Kubernetes tier mandatory.
pub const REQUIRE_K8S: &str = "RECAST_REQUIRE_K8S";

impl K8s {
    /// Finds the running harness through `<state>/env` (state: $RECAST_K8S_DIR or `.k8s`).
    /// None (after a loud skip message) when it is not running and the tier is optional.
    pub fn get() -> Option<K8s> {
        let state = std::env::var_os("RECAST_K8S_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".k8s"));
        let env_file = state.join("env");
        let Ok(text) = std::fs::read_to_string(&env_file) else {
            skip_or_fail(
                REQUIRE_K8S,
                &format!(
                    "no Kubernetes harness at {} (start it with `make k8s-up`)",
                    state.display()
                ),
            );
            return None;
        };
        let lookup = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(PathBuf::from)
        };
        let (Some(kubeconfig), Some(kubectl)) = (lookup("KUBECONFIG"), lookup("KUBECTL")) else {
            panic!(
                "{} is malformed; run `make k8s-down k8s-up`",
                env_file.display()
            );
        };
        Some(K8s {
            kubeconfig,
            kubectl,
        })
    }

    /// Runs kubectl against the harness and returns its output, whatever the exit code.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()))
    }

    /// Runs kubectl and returns stdout, failing the test with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a namespace unique to this test process and returns its name.
    pub fn fresh_namespace(&self, prefix: &str) -> String {
        let ns = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.kubectl_ok(&["create", "namespace", &ns]);
        ns
    }

    /// Installs (server-side apply, idempotent) recast's CRDs and waits until they are served.
    pub fn install_crds(&self) {
        let dir = repo_root().join("crds/yaml");
        let dir = dir.to_string_lossy();
        self.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &dir]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &dir,
        ]);
    }
}

static NEXT_NS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `*.yaml` files in a directory of the repository, sorted.
pub fn yaml_files(rel_dir: &str) -> Vec<PathBuf> {
    let dir = repo_root().join(rel_dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// One file of `examples/invalid/`: a spec that breaks exactly one validation rule.
///
/// Its header comment says what each backend must answer: `# expect: TEXT` for both, or
/// `# expect-kube:` / `# expect-embedded:` where the apiserver and the embedded store word a
/// schema error differently. A file with two documents creates the first and then applies the
/// second as an update (for immutability rules).
#[derive(Clone, Debug)]
pub struct InvalidExample {
    pub path: PathBuf,
    /// The YAML text of each document.
    pub documents: Vec<String>,
    pub expect: Option<String>,
    pub expect_kube: Option<String>,
    pub expect_embedded: Option<String>,
}

impl InvalidExample {
    pub fn all() -> Vec<InvalidExample> {
        yaml_files("examples/invalid")
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let header = |key: &str| {
                    text.lines()
                        .take_while(|l| l.starts_with('#'))
                        .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
                };
                let ex = InvalidExample {
                    documents: text
                        .split("\n---\n")
                        .map(str::to_string)
                        .filter(|d| {
                            d.lines()
                                .any(|l| !l.starts_with('#') && !l.trim().is_empty())
                        })
                        .collect(),
                    expect: header("expect"),
                    expect_kube: header("expect-kube"),
                    expect_embedded: header("expect-embedded"),
                    path,
                };
                assert!(
                    ex.expect.is_some()
                        || (ex.expect_kube.is_some() && ex.expect_embedded.is_some()),
                    "{} needs `# expect:` (or both expect-kube and expect-embedded)",
                    ex.path.display()
                );
                ex
            })
            .collect()
    }

    /// What the apiserver's error must contain.
    pub fn kube_expectation(&self) -> &str {
        self.expect_kube
            .as_deref()
            .or(self.expect.as_deref())
            .unwrap_or_default()
    }

    /// What the embedded store's error must contain.
    pub fn embedded_expectation(&self) -> &str {
        self.expect_embedded
            .as_deref()
            .or(self.expect.as_deref())
            .unwrap_or_default()
    }
}

/// Inputs the suites post into an endpoint's inbox, in the exact JSON the gateway and the boot
/// service will send, and the golden-image status the image controller will write.
pub mod inputs {
    use recast_crds::endpoint::{Attempt, ReimageStep};
    use serde_json::{Value, json};

    /// status of the example GoldenImage once verified.
    pub fn verified_image_status() -> Value {
        json!({
            "digest": "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011",
            "channels": ["stable"],
            // Generation 1, as created: the GoldenImage controller takes this status as the
            // verdict on the current spec instead of checking the (unreachable) example URL.
            "observedGeneration": 1,
            // Serving "stable" means KnownGood (a channel gets only KnownGood images).
            "conditions": [{"type": "Verified", "status": "True", "reason": "Checked", "message": "", "lastTransitionTime": "2026-01-14T07:00:00Z"},
                           {"type": "KnownGood", "status": "True", "reason": "Promoted", "message": "promoted by hand", "lastTransitionTime": "2026-01-14T07:00:00Z"}]
        })
    }

    /// A healthy report on the December build, then the January update failing and rolling back.
    pub fn failed_rollback() -> [Value; 2] {
        [
            json!({"type": "agentReport", "data": {"build": "26100.7462", "reportedAt": ""}}),
            json!({"type": "signals", "data": [["FailedRollback", "KB5074109 failed and rolled back"]]}),
        ]
    }

    /// What the boot service or the endpoint sends next while an attempt waits at its step,
    /// with a key that names it (post each key once); None while the operator itself acts.
    pub fn next_for(attempt: &Attempt) -> Option<(String, Value)> {
        let id = &attempt.id;
        let (tag, input) = match attempt.step {
            ReimageStep::Booting => (
                "boot",
                json!({"type": "networkBooted", "data": {"attempt_id": id}}),
            ),
            ReimageStep::Applying => (
                "imaged",
                json!({"type": "imagingFinished", "data": {"attempt_id": id, "result": {"Ok": null}}}),
            ),
            ReimageStep::FirstBoot => (
                "report",
                json!({"type": "agentReport", "data": {"build": "26100.7623", "reportedAt": "", "attemptId": id}}),
            ),
            ReimageStep::ArmingBoot | ReimageStep::PowerCycling => return None,
        };
        Some((format!("{id}/{tag}"), input))
    }
}

/// Environment variable that makes the Helm chart tier mandatory.
pub const REQUIRE_HELM: &str = "RECAST_REQUIRE_HELM";

/// The helm binary `tests/helm/setup.sh` built and cached (or `$RECAST_HELM`). None (after a
/// loud skip message) when it is missing and the tier is optional.
pub fn helm() -> Option<PathBuf> {
    let path = match std::env::var_os("RECAST_HELM") {
        Some(p) => PathBuf::from(p),
        None => {
            let script = repo_root().join("tests/helm/setup.sh");
            let out = Command::new(&script)
                .arg("--print-path")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(
        REQUIRE_HELM,
        &format!(
            "no helm at {} (build it with tests/helm/setup.sh)",
            path.display()
        ),
    );
    None
}
