//! `make demo`: recast doing its job without hardware, narrated, in well under a minute.
//!
//! The site of examples/ (five endpoints, the January 2026 golden image, the default policy, a
//! wave) on the embedded store, with three things made real that `make run` leaves as
//! placeholders:
//! - the golden image is a small WIM built here with wimlib-imagex (a miniature installed
//!   Windows whose servicing store and XML say 26100.7623, KB5074109), which the GoldenImage
//!   controller verifies for real through --image-source-root;
//! - three endpoints run real `recast-agent` processes replaying a Windows machine's tool
//!   output; kiosk-01's says the January update failed and rolled back (the December build
//!   stays, the improper state behind the UNMOUNTABLE_BOOT_VOLUME failures);
//! - kiosk-01's imaging environment is simulated: it speaks the real imaging protocol (claim,
//!   task, image, progress, agent.json, result) against the operator's boot service, and the
//!   new image's agent then enrolls and reports the new build.
//!
//! The power driver is `record` (no BMC): power cycles are recorded, not performed.
//! `--exit-when-done` ends the demo once kiosk-01 is Ready (tests/tests/demo.rs runs it so);
//! without it, everything keeps running until Ctrl-C so the newcomer can look around.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use recast_tests::status::{condition, signals, step};
use serde_json::Value;

const IMAGE: &str = "win11-24h2-2026-01";
/// The endpoint whose update fails and rolls back, and its first MAC (examples/endpoints.yaml).
const VICTIM: &str = "kiosk-01";
const VICTIM_MAC: &str = "52:54:00:a1:00:01";
/// The other endpoints that run an agent: healthy on the January build.
const HEALTHY: [&str; 2] = ["kiosk-02", "reception-01"];
const NEW_BUILD: &str = "26100.7623";

struct Options {
    data_dir: PathBuf,
    work_dir: PathBuf,
    listen: SocketAddr,
    boot_http: SocketAddr,
    gateway: SocketAddr,
    exit_when_done: bool,
    watcher_wait: Duration,
    /// A pause after each imaging step, so a watcher polling every second sees each one.
    pace: Duration,
}

const USAGE: &str = "usage: recast-demo [--data-dir DIR] [--work-dir DIR] [--listen ADDR] [--boot-http ADDR] [--gateway-listen ADDR] [--watcher-wait SECONDS] [--pace SECONDS] [--exit-when-done]";

fn options() -> Result<Options, String> {
    let mut o = Options {
        data_dir: PathBuf::from(".recast-data"),
        work_dir: PathBuf::from(".recast-demo"),
        listen: ([127, 0, 0, 1], 8080).into(),
        boot_http: ([127, 0, 0, 1], 8081).into(),
        gateway: ([127, 0, 0, 1], 8443).into(),
        exit_when_done: false,
        watcher_wait: Duration::ZERO,
        pace: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--exit-when-done" {
            o.exit_when_done = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|e| format!("{flag} {v}: {e} (give an address such as 127.0.0.1:8081)"))
        };
        match flag.as_str() {
            "--data-dir" => o.data_dir = value.into(),
            "--work-dir" => o.work_dir = value.into(),
            "--listen" => o.listen = addr(&value)?,
            "--boot-http" => o.boot_http = addr(&value)?,
            "--gateway-listen" => o.gateway = addr(&value)?,
            "--watcher-wait" | "--pace" => {
                let secs = Duration::from_secs(
                    value
                        .parse()
                        .map_err(|e| format!("{flag} {value}: {e} (whole seconds)"))?,
                );
                if flag == "--pace" {
                    o.pace = secs;
                } else {
                    o.watcher_wait = secs;
                }
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut demo = Demo {
        started: Instant::now(),
        opts,
        operator: None,
        agents: BTreeMap::new(),
        seen: BTreeMap::new(),
        observing: false,
    };
    match demo.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nrecast-demo: {e}");
            eprintln!(
                "The operator's log is {}; agents' logs are next to it.",
                demo.opts.work_dir.join("operator.log").display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Kills (SIGKILL) and reaps a child when dropped, so an ended or failed demo leaves nothing
/// running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the narration last said about an endpoint.
#[derive(Clone, Default, PartialEq)]
struct Seen {
    phase: String,
    step: String,
    signals: String,
    build: String,
}

struct Demo {
    started: Instant,
    opts: Options,
    operator: Option<Proc>,
    agents: BTreeMap<String, Proc>,
    seen: BTreeMap<String, Seen>,
    /// Once the operator has created its store: recastctl must not be the one creating it.
    observing: bool,
}

/// The binaries cargo built next to this one.
fn bin(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let p = me.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: build it first (make demo does: cargo build --ignore-rust-version -p recast-operator -p recastctl -p recast-agent -p recast-tests --bins)",
            p.display()
        ))
    }
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

impl Demo {
    fn say(&self, what: &str) {
        println!("[{:5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn work(&self, name: &str) -> PathBuf {
        self.opts.work_dir.join(name)
    }

    fn run(&mut self) -> Result<(), String> {
        let operator = bin("recast-operator")?;
        bin("recastctl")?;
        let agent = bin("recast-agent")?;
        for cmd in ["openssl", "sha256sum"] {
            if !recast_tests::have(cmd) {
                return Err(format!(
                    "{cmd} is missing: install it (apt-get install {})",
                    if cmd == "openssl" {
                        "openssl"
                    } else {
                        "coreutils"
                    }
                ));
            }
        }
        let wimlib = wimlib_imagex()?;
        self.opts.data_dir = absolute(&self.opts.data_dir)?;
        self.opts.work_dir = absolute(&self.opts.work_dir)?;
        for d in [&self.opts.data_dir, &self.opts.work_dir] {
            // A fresh site each time, as `make run` does.
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }

        println!(
            "recast demo: the examples/ site, with a real golden WIM, agents and an imaging client."
        );
        println!("Watch the endpoints in another terminal, from the repository root:\n");
        let data_flag = if self.opts.data_dir == absolute(Path::new(".recast-data"))? {
            String::new()
        } else {
            format!(" --data-dir {}", self.opts.data_dir.display())
        };
        println!("    cargo run -q --ignore-rust-version -p recastctl --{data_flag} get rep -w\n");

        // 1. The golden image.
        let golden = self.work("golden");
        std::fs::create_dir_all(&golden).map_err(|e| e.to_string())?;
        let wim = golden.join(format!("{IMAGE}.wim"));
        let jan = recast_tests::wimlib::JANUARY_2026;
        recast_tests::wimlib::capture_windows(
            &wimlib,
            &wim,
            "lzx",
            &[],
            &[(jan, "KB5074109")],
            jan,
        );
        let digest = recast_tests::sha256_file(&wim);
        let size = std::fs::metadata(&wim).map(|m| m.len()).unwrap_or(0);
        self.say(&format!(
            "built the golden WIM with wimlib-imagex capture: {} ({size} bytes, sha256 {}…), a miniature Windows 11 Enterprise whose servicing store holds RollupFix {NEW_BUILD} (KB5074109)",
            wim.display(),
            &digest[..12]
        ));

        // 2. The site: examples/, with the GoldenImage pointed at that WIM.
        let manifests = self.work("manifests");
        self.write_manifests(&manifests, &wim, &digest)?;
        self.say(&format!(
            "manifests: examples/ with the GoldenImage's source.path set to the WIM ({})",
            manifests.display()
        ));

        // 3. The operator: embedded store, HTTP boot, agent gateway, power driver `record`.
        let pki = recast_tests::redfish::make_pki(&self.opts.work_dir, "gateway");
        let ca = self.work("gateway-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).map_err(|e| e.to_string())?;
        self.start_operator(&operator, &manifests, &golden, &pki)?;
        self.observing = true;
        self.say(&format!(
            "recast-operator runs: store {}, HTTP boot on {}, agent gateway on https://{}, power driver `record` (no BMC: power cycles are recorded)",
            self.opts.data_dir.display(),
            self.opts.boot_http,
            self.opts.gateway
        ));
        if !self.opts.watcher_wait.is_zero() {
            self.say(&format!(
                "start the watch above now if you like; continuing in {} s",
                self.opts.watcher_wait.as_secs()
            ));
            std::thread::sleep(self.opts.watcher_wait);
        }

        // 4. The controller verifies the WIM's own bytes.
        self.wait(
            Duration::from_secs(60),
            "the golden image to be Verified",
            |d| {
                let gi = d.recastctl_json(&["get", "gi", IMAGE, "-o", "json"])?;
                Ok(condition(&gi, "Verified").as_deref() == Some("True"))
            },
        )?;
        self.say(&format!(
            "GoldenImage {IMAGE}: Verified (the GoldenImage controller read the WIM: sha256, edition, build {NEW_BUILD}, KB5074109)"
        ));

        // 5. Agents on three machines.
        for name in HEALTHY {
            self.start_agent(&agent, name, "healthy", None, &ca)?;
        }
        self.start_agent(&agent, VICTIM, "failed-rollback", None, &ca)?;
        self.say(&format!(
            "recast-agent runs for {VICTIM}, {} (replaying a real Windows machine's wevtutil/reg/fsutil output every 3 s); {VICTIM}'s says KB5074109 failed and rolled back",
            HEALTHY.join(", ")
        ));

        // 6. The signal, the attempt, the recorded power cycle.
        self.wait(Duration::from_secs(60), "the FailedRollback signal", |d| {
            Ok(signals(&d.endpoint(VICTIM)?).contains(&"FailedRollback".to_string()))
        })?;
        let ep = self.wait_endpoint(Duration::from_secs(60), "an attempt to boot", |ep| {
            matches!(step(ep).as_deref(), Some("Booting"))
        })?;
        self.say(&format!(
            "{VICTIM}: attempt {} (trigger {}): the power cycle into a one-time network boot is recorded; its boot is armed",
            ep["status"]["activeAttempt"]["id"].as_str().unwrap_or("?"),
            ep["status"]["activeAttempt"]["trigger"].as_str().unwrap_or("?"),
        ));
        // The machine went down with the power cycle: its old Windows no longer reports.
        self.agents.remove(VICTIM);

        // 7. The imaging environment.
        self.say(&format!(
            "{VICTIM} network-boots (simulated): its imaging client talks to {}",
            self.opts.boot_http
        ));
        let boot = self.opts.boot_http;
        let pace = self.opts.pace;
        let mut lines = Vec::new();
        let config = {
            let mut narrate = |line: &str| {
                self.say(&format!("  imaging: {line}"));
                lines.push(line.to_string());
                std::thread::sleep(pace);
                // Between the protocol steps, what the operator made of them.
                let _ = self.observe();
            };
            recast_tests::imaging::simulated_imaging(
                &|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)),
                boot,
                VICTIM_MAC,
                "",
                &mut narrate,
            )
        };
        let config = config.ok_or_else(|| {
            format!(
                "the simulated imaging client did not finish (last step: {}); see the operator's log",
                lines.last().map(String::as_str).unwrap_or("none")
            )
        })?;
        let config_path = self.work(&format!("{VICTIM}-agent.json"));
        std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;

        // 8. The new image's first boot: its agent enrolls and reports the new build. A real
        // machine takes minutes to reboot into it; here the agent waits until the operator has
        // taken the result (the gateway refuses enrollment before FirstBoot).
        self.wait_endpoint(Duration::from_secs(60), "the imaging result", |ep| {
            step(ep).as_deref() == Some("FirstBoot")
        })?;
        self.start_agent(&agent, VICTIM, "healthy", Some(&config_path), &ca)?;
        self.say(&format!(
            "{VICTIM} boots the new image: its agent enrolls with agent.json and reports"
        ));
        self.wait_endpoint(Duration::from_secs(60), "Ready on the new build", |ep| {
            ep["status"]["activeAttempt"].is_null()
                && ep["status"]["phase"] == "Ready"
                && ep["status"]["lastReport"]["build"] == NEW_BUILD
        })?;
        self.say(&format!(
            "{VICTIM}: Ready on {NEW_BUILD}; the attempt succeeded. Done in {:.0} s (kiosk-03 and backoffice-01 run no agent here: they stay Pending).",
            self.started.elapsed().as_secs_f64()
        ));
        println!(
            "\n$ recastctl get rep\n{}",
            self.recastctl(&["get", "rep"])?
        );
        println!(
            "$ recastctl history {VICTIM}\n{}",
            self.recastctl(&["history", VICTIM])?
        );
        if self.opts.exit_when_done {
            return Ok(());
        }
        println!(
            "The operator and the agents keep running; try `recastctl describe rep {VICTIM}` or `recastctl image list`. Ctrl-C ends the demo."
        );
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let _ = self.observe();
            self.check_operator()?;
        }
    }

    fn write_manifests(&self, dir: &Path, wim: &Path, digest: &str) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let examples = recast_tests::repo_root().join("examples");
        for f in [
            "bmc-credentials.yaml",
            "endpoints.yaml",
            "policy.yaml",
            "wave.yaml",
        ] {
            std::fs::copy(examples.join(f), dir.join(f))
                .map_err(|e| format!("copy examples/{f}: {e}"))?;
        }
        // The example GoldenImage as it is, but for its source and digest: so the demo shows
        // the same site `make run` loads, with the image made real.
        let text = std::fs::read_to_string(examples.join("golden-image.yaml"))
            .map_err(|e| format!("read examples/golden-image.yaml: {e}"))?;
        let mut out = String::new();
        let mut replaced = (false, false);
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if trimmed.starts_with("url: ") && !replaced.0 {
                out.push_str(&format!("{indent}path: {}\n", wim.display()));
                replaced.0 = true;
            } else if trimmed.starts_with("sha256: ") && !replaced.1 {
                out.push_str(&format!("{indent}sha256: {digest}\n"));
                replaced.1 = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if replaced != (true, true) {
            return Err(
                "examples/golden-image.yaml no longer has spec.source.url and spec.sha256 lines; update write_manifests in tests/src/bin/recast-demo.rs".into(),
            );
        }
        std::fs::write(dir.join("golden-image.yaml"), out).map_err(|e| e.to_string())
    }

    fn start_operator(
        &mut self,
        operator: &Path,
        manifests: &Path,
        golden: &Path,
        pki: &recast_tests::redfish::Pki,
    ) -> Result<(), String> {
        let log_path = self.work("operator.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let child = Command::new(operator)
            .args(["run", "--backend", "embedded", "--data-dir"])
            .arg(&self.opts.data_dir)
            .arg("--load")
            .arg(manifests)
            .args(["--power-driver", "record"])
            .args(["--listen", &self.opts.listen.to_string()])
            .args(["--boot-http", &self.opts.boot_http.to_string()])
            // The simulated imaging client reads the claim URL from the Linux imager's
            // script (the WinPE script names it inside startnet.cmd instead).
            .args(["--imaging-environment", "linux"])
            // The WIM is a local file: its directory must be an allowed source root.
            .arg("--image-source-root")
            .arg(golden)
            .args(["--gateway-listen", &self.opts.gateway.to_string()])
            .arg("--gateway-cert")
            .arg(&pki.cert)
            .arg("--gateway-key")
            .arg(&pki.key)
            .args(["--gateway-url", &format!("https://{}", self.opts.gateway)])
            .args(["--gateway-heartbeat-period", "10s"])
            .env("RECAST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", operator.display()))?;
        self.operator = Some(Proc(child));
        self.wait(
            Duration::from_secs(60),
            "the operator to serve HTTP boot",
            |d| {
                let log = std::fs::read_to_string(d.work("operator.log")).unwrap_or_default();
                Ok(log.contains("serving HTTP boot"))
            },
        )
    }

    fn start_agent(
        &mut self,
        agent: &Path,
        name: &str,
        fixture: &str,
        agent_config: Option<&Path>,
        ca: &Path,
    ) -> Result<(), String> {
        self.agents.remove(name);
        let tag = if agent_config.is_some() { "new" } else { "old" };
        let token = self.work(&format!("{name}-{tag}.token"));
        if agent_config.is_none() {
            // The token an administrator installs with the agent; a reimaged machine's
            // agent enrolls with agent.json instead and writes its own.
            let operator = bin("recast-operator")?;
            let out = Command::new(operator)
                .args(["gateway-token", "issue", name, "--data-dir"])
                .arg(&self.opts.data_dir)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "gateway-token issue {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::fs::write(&token, String::from_utf8_lossy(&out.stdout).trim())
                .map_err(|e| e.to_string())?;
        }
        let log = std::fs::File::create(self.work(&format!("agent-{name}-{tag}.log")))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(agent);
        cmd.args(["run", "--endpoint", name])
            .args(["--gateway", &format!("https://{}", self.opts.gateway)])
            .arg("--token-file")
            .arg(&token)
            .arg("--state-file")
            .arg(self.work(&format!("agent-{name}-{tag}.seq")))
            .arg("--ca-file")
            .arg(ca)
            .arg("--replay")
            .arg(
                recast_tests::repo_root()
                    .join("agent/tests/fixtures/replay")
                    .join(fixture),
            )
            .args(["--interval", "3s", "--jitter", "0s"])
            .env("RECAST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some(c) = agent_config {
            cmd.arg("--agent-config").arg(c);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", agent.display()))?;
        self.agents.insert(name.to_string(), Proc(child));
        Ok(())
    }

    fn recastctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bin("recastctl")?)
            .arg("--data-dir")
            .arg(&self.opts.data_dir)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "recastctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn recastctl_json(&self, args: &[&str]) -> Result<Value, String> {
        let text = self.recastctl(args)?;
        serde_json::from_str(&text).map_err(|e| format!("recastctl {}: {e}", args.join(" ")))
    }

    fn endpoint(&self, name: &str) -> Result<Value, String> {
        self.recastctl_json(&["get", "rep", name, "-o", "json"])
    }

    /// Narrates what changed on each endpoint since the last look: phase, attempt step,
    /// signals, reported build.
    fn observe(&mut self) -> Result<(), String> {
        let list = self.recastctl_json(&["get", "rep", "-o", "json"])?;
        for ep in list["items"].as_array().into_iter().flatten() {
            let name = ep["metadata"]["name"].as_str().unwrap_or("?").to_string();
            let now = Seen {
                phase: ep["status"]["phase"].as_str().unwrap_or("").into(),
                step: step(ep).unwrap_or_default(),
                signals: signals(ep).join(","),
                build: ep["status"]["lastReport"]["build"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
            };
            let before = self.seen.get(&name).cloned().unwrap_or_default();
            if now == before {
                continue;
            }
            let mut parts = Vec::new();
            if now.phase != before.phase && !now.phase.is_empty() {
                parts.push(format!("phase {}", now.phase));
            }
            if now.step != before.step && !now.step.is_empty() {
                parts.push(format!("step {}", now.step));
            }
            if now.signals != before.signals && !now.signals.is_empty() {
                parts.push(format!("signals {}", now.signals));
            }
            if now.build != before.build && !now.build.is_empty() {
                parts.push(format!("reports build {}", now.build));
            }
            if !parts.is_empty() {
                self.say(&format!("  {name}: {}", parts.join(", ")));
            }
            self.seen.insert(name, now);
        }
        Ok(())
    }

    fn check_operator(&mut self) -> Result<(), String> {
        if let Some(p) = self.operator.as_mut()
            && let Ok(Some(status)) = p.0.try_wait()
        {
            let log = std::fs::read_to_string(self.work("operator.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "the operator exited ({status}); the end of its log:\n{}\n(another recast on {} / {} / {}? stop it, or pass other addresses: recast-demo --help)",
                tail.join("\n"),
                self.opts.listen,
                self.opts.boot_http,
                self.opts.gateway
            ));
        }
        Ok(())
    }

    /// Waits for `done`, narrating as it goes; fails after `limit` or when the operator dies.
    fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&mut Demo) -> Result<bool, String>,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            self.check_operator()?;
            if self.observing {
                let _ = self.observe();
            }
            if done(self).unwrap_or(false) {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "gave up after {} s waiting for {what}",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn wait_endpoint(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let mut last = Value::Null;
        let result = self.wait(limit, &format!("{VICTIM}: {what}"), |d| {
            last = d.endpoint(VICTIM)?;
            Ok(done(&last))
        });
        match result {
            Ok(()) => Ok(last),
            Err(e) => Err(format!(
                "{e}\n{VICTIM}'s status:\n{}",
                serde_json::to_string_pretty(&last["status"]).unwrap_or_default()
            )),
        }
    }
}

/// wimlib-imagex, installed by tests/golden/setup.sh when it is missing and we may.
fn wimlib_imagex() -> Result<PathBuf, String> {
    if !recast_tests::have("wimlib-imagex") {
        println!(
            "wimlib-imagex is missing; installing it with tests/golden/setup.sh (Debian's wimtools)"
        );
        let ok = Command::new("bash")
            .arg(recast_tests::repo_root().join("tests/golden/setup.sh"))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("wimlib-imagex is missing and tests/golden/setup.sh could not install it: apt-get install wimtools (as root), then run make demo again".into());
        }
    }
    recast_tests::wimlib::find().ok_or_else(|| "wimlib-imagex is not on PATH".to_string())
}
