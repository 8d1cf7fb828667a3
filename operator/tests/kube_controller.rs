//! The endpoint controller on the real kube-apiserver (`make k8s-up`), with the real
//! `recast-operator --backend kube` process: the whole reimage path, the finalizer, two replicas
//! with leader election and fail-over, a crash at every lifecycle step, and the
//! resourceVersion precondition that keeps a user's spec edit from being overwritten.

#[path = "support/kube_test.rs"]
mod kube_test;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use recast_crds::endpoint::{AttemptOutcome, EndpointPhase, EndpointStatus, ReimageStep};
use recast_operator::store::kube::{ControlKind, control_name};
use recast_operator::store::{BackendError, EndpointStore, Key};
use recast_tests::{K8s, inputs, repo_root};
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");

struct Site {
    k: K8s,
    ns: String,
    posted: u32,
}

impl Site {
    /// A fresh namespace with the examples applied and the golden image marked Verified.
    fn new(prefix: &str) -> Option<Site> {
        let k = K8s::get()?;
        k.install_crds();
        let ns = k.fresh_namespace(prefix);
        let examples = repo_root().join("examples");
        k.kubectl_ok(&["apply", "-n", &ns, "-f", &examples.to_string_lossy()]);
        let verified = json!({"status": inputs::verified_image_status()});
        k.kubectl_ok(&[
            "patch",
            "-n",
            &ns,
            "gi",
            "win11-24h2-2026-01",
            "--subresource=status",
            "--type=merge",
            "-p",
            &verified.to_string(),
        ]);
        Some(Site { k, ns, posted: 0 })
    }

    fn operator(&self, identity: &str, failpoint: Option<&str>) -> Operator {
        self.operator_env(identity, failpoint, &[])
    }

    fn operator_env(
        &self,
        identity: &str,
        failpoint: Option<&str>,
        env: &[(&str, &str)],
    ) -> Operator {
        let mut cmd = Command::new(OPERATOR);
        cmd.envs(env.iter().copied());
        cmd.args(["run", "--backend", "kube", "--listen", "127.0.0.1:0"])
            .args([
                "--watch-namespace",
                &self.ns,
                "--lease-namespace",
                &self.ns,
                "--identity",
                identity,
            ])
            .args([
                "--lease-duration-seconds",
                "6",
                "--lease-grace-seconds",
                "2",
            ])
            .env("KUBECONFIG", &self.k.kubeconfig)
            .env("RECAST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // These suites are about the lifecycle shells, not BMCs (the Redfish suites are).
        cmd.env("RECAST_POWER_DRIVER", "record");
        match failpoint {
            Some(fp) => cmd.env("RECAST_FAILPOINT", fp),
            None => cmd.env_remove("RECAST_FAILPOINT"),
        };
        let mut child = cmd.spawn().expect("start recast-operator");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Operator {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn status(&self, name: &str) -> EndpointStatus {
        let out = self
            .k
            .kubectl_ok(&["get", "rep", name, "-n", &self.ns, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        serde_json::from_value(v.get("status").cloned().unwrap_or(Value::Null)).unwrap_or_default()
    }

    /// The name of an endpoint's control object in the control namespace (the operator's
    /// --lease-namespace, which is the site's namespace here).
    fn control(&self, kind: ControlKind, name: &str) -> String {
        control_name(
            kind,
            &Key {
                namespace: self.ns.clone(),
                name: name.into(),
            },
        )
    }

    /// Queues an input in the endpoint's inbox ConfigMap, as the gateway will.
    fn post(&mut self, name: &str, input: Value) {
        self.posted += 1;
        let cm = self.control(ControlKind::Inbox, name);
        let key = format!("t{:06}", self.posted);
        let exists = self
            .k
            .kubectl(&["get", "cm", &cm, "-n", &self.ns])
            .status
            .success();
        if !exists {
            let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": cm, "labels": {"recast.dev/inbox": "true", "recast.dev/control": "true"},
                             "annotations": {"recast.dev/endpoint": name, "recast.dev/endpoint-namespace": self.ns}},
                "data": {key: input.to_string()}});
            let path = std::env::temp_dir().join(format!("{}-{cm}-{}.json", self.ns, self.posted));
            std::fs::write(&path, manifest.to_string()).unwrap();
            self.k
                .kubectl_ok(&["create", "-n", &self.ns, "-f", &path.to_string_lossy()]);
        } else {
            let patch = json!({"data": {key: input.to_string()}});
            self.k.kubectl_ok(&[
                "patch",
                "cm",
                &cm,
                "-n",
                &self.ns,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ]);
        }
    }

    /// events.k8s.io events about an endpoint: (reason, reporting instance, count).
    fn events(&self, name: &str) -> Vec<(String, String, u64)> {
        let out = self
            .k
            .kubectl_ok(&["get", "events.events.k8s.io", "-n", &self.ns, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["reportingInstance"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["series"]["count"].as_u64().unwrap_or(1),
                )
            })
            .collect()
    }

    fn count(&self, name: &str, reason: &str) -> u64 {
        self.events(name)
            .iter()
            .filter(|(r, _, _)| r == reason)
            .map(|(_, _, c)| *c)
            .sum()
    }

    fn lease_holder(&self) -> Option<String> {
        let out = self.k.kubectl(&[
            "get",
            "lease",
            "recast-operator",
            "-n",
            &self.ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// Plays the boot service and the endpoint: posts what the current step waits for, once.
    fn drive(&mut self, name: &str, done: &mut Vec<String>) {
        let Some(a) = self.status(name).active_attempt else {
            return;
        };
        if let Some((key, input)) = inputs::next_for(&a)
            && !done.contains(&key)
        {
            self.post(name, input);
            done.push(key);
        }
    }

    fn wait_ready(
        &mut self,
        name: &str,
        done: &mut Vec<String>,
        within: Duration,
    ) -> EndpointStatus {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status(name);
            if st.phase == Some(EndpointPhase::Ready)
                && st.active_attempt.is_none()
                && !st.history.is_empty()
            {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become Ready: {st:?}"
            );
            self.drive(name, done);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_failed_rollback(&mut self, name: &str) {
        for input in inputs::failed_rollback() {
            self.post(name, input);
        }
    }
}

struct Operator {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Operator {
    fn saw(&mut self, needle: &str) -> bool {
        self.seen.extend(self.lines.try_iter());
        self.seen.iter().any(|l| l.contains(needle))
    }

    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.saw(needle) {
            assert!(
                Instant::now() < deadline,
                "operator never logged {needle:?}; log:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(self) {
        drop(self);
    }
}

/// A failing assertion must not leave an operator running after the test.
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_one_clean_attempt(site: &Site, name: &str, st: &EndpointStatus) {
    assert_eq!(st.attempts_started, 1, "a second attempt was started");
    assert_eq!(st.history.len(), 1);
    assert_eq!(st.history[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!(site.count(name, "AttemptStarted"), 1);
    assert_eq!(
        site.count(name, "BootArmed"),
        1,
        "boot armed more than once"
    );
    assert_eq!(
        site.count(name, "PowerCycle"),
        1,
        "power-cycled more than once"
    );
    let boot = site.k.kubectl(&[
        "get",
        "cm",
        &site.control(ControlKind::Boot, name),
        "-n",
        &site.ns,
    ]);
    assert!(!boot.status.success(), "boot left armed");
}

#[test]
fn reimages_through_every_step_on_the_apiserver() {
    let Some(mut site) = Site::new("kube-flow") else {
        return;
    };
    let mut op = site.operator("op-flow", None);
    op.wait_for("became leader", Duration::from_secs(30));
    site.start_failed_rollback("kiosk-01");
    let mut done = Vec::new();
    let st = site.wait_ready("kiosk-01", &mut done, Duration::from_secs(60));
    assert_one_clean_attempt(&site, "kiosk-01", &st);
    // Status was written by the operator's field manager through the status subresource.
    let managed = site.k.kubectl_ok(&[
        "get",
        "rep",
        "kiosk-01",
        "-n",
        &site.ns,
        "--show-managed-fields",
        "-o",
        "json",
    ]);
    assert!(
        managed.contains("\"manager\": \"recast-operator\"")
            && managed.contains("\"subresource\": \"status\""),
        "{managed}"
    );
    // The printer columns show the outcome.
    let row = site
        .k
        .kubectl_ok(&["get", "rep", "kiosk-01", "-n", &site.ns, "--no-headers"]);
    assert!(row.contains("Ready") && row.contains("26100.7623"), "{row}");
    // The protected endpoint beside it was never touched.
    site.post(
        "reception-01",
        json!({"type": "signals", "data": [["BootCrash", "0xED"]]}),
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = site.status("reception-01");
    assert_eq!(r.attempts_started, 0);
    assert_eq!(site.count("reception-01", "BootArmed"), 0);
    op.kill();
}

#[test]
fn deleting_an_endpoint_disarms_its_boot_first() {
    let Some(mut site) = Site::new("kube-final") else {
        return;
    };
    let mut op = site.operator("op-final", None);
    op.wait_for("became leader", Duration::from_secs(30));
    site.post(
        "kiosk-02",
        json!({"type": "signals", "data": [["BootCrash", "0xED"]]}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !site
        .k
        .kubectl(&[
            "get",
            "cm",
            &site.control(ControlKind::Boot, "kiosk-02"),
            "-n",
            &site.ns,
        ])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "boot never armed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let fin = site.k.kubectl_ok(&[
        "get",
        "rep",
        "kiosk-02",
        "-n",
        &site.ns,
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(fin.contains("recast.dev/disarm-boot"), "{fin}");
    site.k
        .kubectl_ok(&["delete", "rep", "kiosk-02", "-n", &site.ns, "--timeout=30s"]);
    assert!(
        !site
            .k
            .kubectl(&["get", "rep", "kiosk-02", "-n", &site.ns])
            .status
            .success(),
        "endpoint still there"
    );
    assert!(
        !site
            .k
            .kubectl(&[
                "get",
                "cm",
                &site.control(ControlKind::Boot, "kiosk-02"),
                "-n",
                &site.ns
            ])
            .status
            .success(),
        "boot still armed"
    );
    op.kill();
}

#[test]
fn two_replicas_only_the_leader_writes_and_the_standby_takes_over() {
    let Some(mut site) = Site::new("kube-ha") else {
        return;
    };
    let a = site.operator("op-a", None);
    let b = site.operator("op-b", None);
    // On a loaded machine the two may trade the lease right after start; the claim under test is
    // about a settled leader, so wait until one holder keeps it for a whole lease duration.
    let deadline = Instant::now() + Duration::from_secs(90);
    let leader = loop {
        let first = site.lease_holder();
        std::thread::sleep(Duration::from_secs(7));
        let second = site.lease_holder();
        if let (Some(a), Some(b)) = (&first, &second)
            && a == b
        {
            break b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no stable lease holder: {first:?} then {second:?}"
        );
    };
    let (mut leading, standby, standby_id) = if leader == "op-a" {
        (a, b, "op-b")
    } else {
        (b, a, "op-a")
    };
    leading.wait_for("became leader", Duration::from_secs(30));

    site.start_failed_rollback("kiosk-01");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = site.status("kiosk-01");
        if st
            .active_attempt
            .as_ref()
            .is_some_and(|a| a.step == ReimageStep::Booting)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempt never reached Booting: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Only the leader wrote: every event so far came from it.
    let before = site.events("kiosk-01");
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|(_, who, _)| *who == leader),
        "a standby wrote: {before:?}"
    );

    // The leader dies without releasing the lease.
    let killed_at = Instant::now();
    leading.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if site.lease_holder().as_deref() == Some(standby_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never took the lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = killed_at.elapsed();
    // Lease duration 4s, plus the standby's retry interval and our polling.
    assert!(
        took < Duration::from_secs(6 + 6),
        "take-over took {took:?}, beyond the lease duration"
    );

    let mut done = Vec::new();
    let st = site.wait_ready("kiosk-01", &mut done, Duration::from_secs(60));
    assert_one_clean_attempt(&site, "kiosk-01", &st);
    let after = site.events("kiosk-01");
    assert!(
        after
            .iter()
            .any(|(r, who, _)| r == "AttemptSucceeded" && who == standby_id),
        "{after:?}"
    );
    standby.kill();
}

#[test]
fn killed_at_each_step_the_attempt_resumes_on_the_apiserver() {
    let failpoints = [
        "after-persist:ArmingBoot",
        "after-action:ArmBoot",
        "after-persist:PowerCycling",
        "after-action:PowerCycle",
        "after-persist:Booting",
        "after-persist:Applying",
        "after-persist:FirstBoot",
    ];
    for (i, fp) in failpoints.iter().enumerate() {
        let Some(mut site) = Site::new(&format!("kube-crash{i}")) else {
            return;
        };
        let identity = format!("op-crash-{i}");
        let mut op = site.operator(&identity, Some(fp));
        op.wait_for("became leader", Duration::from_secs(30));
        site.start_failed_rollback("kiosk-01");
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !op.saw(&format!("FAILPOINT {fp}")) {
            assert!(Instant::now() < deadline, "{fp}: never reached");
            site.drive("kiosk-01", &mut done);
            std::thread::sleep(Duration::from_millis(200));
        }
        op.kill();
        let at_crash = site.status("kiosk-01");
        let id = at_crash
            .active_attempt
            .clone()
            .unwrap_or_else(|| panic!("{fp}: attempt not persisted"))
            .id;
        // The same replica comes back (same identity: it may take its own lease at once).
        let mut op = site.operator(&identity, None);
        op.wait_for("became leader", Duration::from_secs(30));
        let st = site.wait_ready("kiosk-01", &mut done, Duration::from_secs(60));
        assert_eq!(st.history[0].id, id, "{fp}: resumed another attempt");
        assert_one_clean_attempt(&site, "kiosk-01", &st);
        op.kill();
    }
}

#[tokio::test]
async fn a_status_write_on_a_stale_spec_is_refused() {
    let Some(site) = Site::new("kube-stale") else {
        return;
    };
    let opts = kube_test::options(&site.ns);
    let leader = Arc::new(AtomicBool::new(true));
    let backend = kube_test::backend(&site.k, &opts, leader.clone()).await;
    let key = recast_operator::store::Key {
        namespace: site.ns.clone(),
        name: "kiosk-03".into(),
    };
    let read = backend.endpoint(&key).await.unwrap().unwrap();
    // A user protects the machine after the controller read it.
    site.k.kubectl_ok(&[
        "patch",
        "rep",
        "kiosk-03",
        "-n",
        &site.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"protected":true}}"#,
    ]);
    let decided = EndpointStatus {
        phase: Some(EndpointPhase::Reimaging),
        ..Default::default()
    };
    match backend.write_status(&read, &decided).await {
        Err(BackendError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let st = site.status("kiosk-03");
    assert_ne!(
        st.phase,
        Some(EndpointPhase::Reimaging),
        "the stale decision was written"
    );
    // A replica that is not the leader writes nothing at all.
    leader.store(false, std::sync::atomic::Ordering::SeqCst);
    let fresh = backend.endpoint(&key).await.unwrap().unwrap();
    assert!(matches!(
        backend.write_status(&fresh, &decided).await,
        Err(BackendError::NotLeader)
    ));
}

#[test]
fn a_golden_image_turning_verified_releases_the_waiting_reimage() {
    let Some(mut site) = Site::new("kube-verify") else {
        return;
    };
    let unverified = json!({"status": {"observedGeneration": 1, "conditions": [{"type": "Verified", "status": "False", "reason": "Checking", "message": "", "lastTransitionTime": "2026-01-14T07:00:00Z"}]}});
    site.k.kubectl_ok(&[
        "patch",
        "-n",
        &site.ns,
        "gi",
        "win11-24h2-2026-01",
        "--subresource=status",
        "--type=merge",
        "-p",
        &unverified.to_string(),
    ]);
    let mut op = site.operator("op-verify", None);
    op.wait_for("became leader", Duration::from_secs(30));
    site.start_failed_rollback("kiosk-01");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = site.status("kiosk-01");
        if st.phase == Some(EndpointPhase::ReimageScheduled) {
            assert!(
                st.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("not Verified"),
                "{st:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never waited for the image: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The image controller marks it Verified: the wait ends at once (not on the 60 s requeue).
    let verified = json!({"status": {"observedGeneration": 1, "conditions": [{"type": "Verified", "status": "True", "reason": "Checked", "message": "", "lastTransitionTime": "2026-01-14T07:05:00Z"}]}});
    site.k.kubectl_ok(&[
        "patch",
        "-n",
        &site.ns,
        "gi",
        "win11-24h2-2026-01",
        "--subresource=status",
        "--type=merge",
        "-p",
        &verified.to_string(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while site.status("kiosk-01").active_attempt.is_none() {
        assert!(
            Instant::now() < deadline,
            "the image change did not wake the controller"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    op.kill();
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The boot service on the kube backend: it reads the boot intent ConfigMap the leader wrote,
/// serves the armed endpoint its imaging script, takes the imaging protocol's reports into the
/// inbox, and the token dies when the controller disarms the boot.
#[test]
fn the_boot_service_serves_armed_endpoints_from_the_apiserver() {
    let Some(site) = Site::new("rboot") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("recast-kboot-{}", std::process::id()));
    let root = dir.join("boot");
    std::fs::create_dir_all(root.join("images")).unwrap();
    let digest = inputs::verified_image_status()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(
        root.join("images").join(format!("{digest}.wim")),
        b"wim bytes",
    )
    .unwrap();
    let port = recast_tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (listen, root_s, key) = (
        format!("127.0.0.1:{port}"),
        root.to_string_lossy().to_string(),
        dir.join("imaging.key").to_string_lossy().to_string(),
    );
    let mut op = site.operator_env(
        "boot-a",
        None,
        &[
            ("RECAST_BOOT_HTTP", &listen),
            ("RECAST_BOOT_ROOT", &root_s),
            ("RECAST_IMAGING_KEY_FILE", &key),
        ],
    );
    op.wait_for("serving HTTP boot", Duration::from_secs(30));
    op.wait_for("boot index loaded", Duration::from_secs(30));
    let mac = "52:54:00:a1:00:01";
    let (code, body) = curl(&[&format!("{base}/boot/{mac}")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("no reimage armed"), "{body}");
    assert_eq!(curl(&[&format!("{base}/boot/52:54:00:ff:00:01")]).0, 404);

    site.k.kubectl_ok(&[
        "patch",
        "rep",
        "kiosk-01",
        "-n",
        &site.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"reimageRequest":{"token":"boot-1","reason":"boot service test"}}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while site
        .k
        .kubectl(&[
            "get",
            "cm",
            &site.control(ControlKind::Boot, "kiosk-01"),
            "-n",
            &site.ns,
        ])
        .status
        .code()
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "the boot intent ConfigMap never appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, script) = curl(&[&format!("{base}/boot/{mac}")]);
    assert_eq!(code, 200);
    let at = script.find("/imaging/v1/").expect("an imaging script");
    let rest = &script[at..];
    let attempt_url = format!("{base}{}", &rest[..rest.find("/startnet.cmd").unwrap()]);
    assert!(!script.contains("token"), "{script}");
    // The imaging environment claims the try once recast has restarted the machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        let (code, body) = curl(&["-X", "POST", &format!("{attempt_url}/claim?format=text")]);
        if code == 200 {
            break body.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the claim: {code} {body}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let auth = format!("Authorization: Bearer {token}");
    let (code, task) = curl(&["-H", &auth, &format!("{attempt_url}/task")]);
    assert_eq!(code, 200, "{task}");
    let task: Value = serde_json::from_str(&task).unwrap();
    assert_eq!(task["image"]["sha256"], digest.as_str());
    assert_eq!(curl(&[&format!("{attempt_url}/task")]).0, 401);
    let (code, _) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        r#"{"percent": 40, "step": "apply"}"#,
        &format!("{attempt_url}/progress"),
    ]);
    assert_eq!(code, 204);
    let (code, _) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        r#"{"ok": true}"#,
        &format!("{attempt_url}/result"),
    ]);
    assert_eq!(code, 204);
    // The leader takes the result from the inbox, moves to FirstBoot and disarms.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = site.status("kiosk-01");
        if st.active_attempt.as_ref().map(|a| a.step) == Some(ReimageStep::FirstBoot)
            && curl(&["-H", &auth, &format!("{attempt_url}/task")]).0 == 410
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no FirstBoot + disarm; status {st:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = std::fs::remove_dir_all(dir);
}
