//! The whole loop, end to end, under faults (`make e2e`; part of `make test`).
//!
//! An endpoint reports that its January update failed and rolled back; without anyone
//! touching it, recast power-cycles it over Redfish into a network boot, the machine (QEMU,
//! UEFI with Secure Boot enforced: recast's signed chain of shim, GRUB and kernel) PXE-boots,
//! its imaging environment writes the verified January golden
//! WIM to its disk, and the agent of the new Windows checks in healthy. The same for a machine
//! whose BMC logged a blue screen, and for a wave of 20 whose failure budget trips. Faults are
//! injected at every step; the invariant is always: every intended reimage happens exactly
//! once, nothing else is wiped.
//!
//! Needs root (network namespaces), QEMU, dnsmasq, faketime (tests/pxe/setup.sh), sushy-tools
//! (tests/redfish/setup.sh), wimlib-imagex (tests/golden/setup.sh), openssl, and for the kube
//! backend the apiserver harness. Skips loudly without them unless RECAST_REQUIRE_E2E=1 (CI).

mod bmc;
mod net;
// Shared with `make demo` (recast-demo), which speaks the same imaging protocol.
use recast_tests::http;
mod site;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use recast_tests::status::{condition, signals, step};
use serde_json::Value;
use site::{Backend, MachineSpec, Site};

const REQUIRE: &str = "RECAST_REQUIRE_E2E";

/// The suites share the namespaces' addresses and two CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const POLICY: &str = "# Reimage at once on a failed rollback or a boot crash; short timers so the suite runs in minutes.
apiVersion: recast.dev/v1alpha1
kind: RemediationPolicy
metadata:
  name: default
spec:
  signals:
    failedRollback: ReimageNow
    bootCrash: ReimageNow
    heartbeatLost: AlertOnly
    drift: AlertOnly
    nonCompliant: AlertOnly
  cooldown: 10s
  retry:
    maxTries: 3
    backoff: 20s
    tryTimeout: 20m
  concurrency:
    global: 5
  heartbeatTimeout: 20s
  updateMode: managed
  guardOnFailedRollback: true
";

fn missing_prerequisite() -> Option<String> {
    if !recast_tests::is_root() {
        return Some("the end-to-end suite needs root (network namespaces, tap devices)".into());
    }
    for cmd in [
        "qemu-system-x86_64",
        "dnsmasq",
        "ip",
        "busybox",
        "cpio",
        "faketime",
        "openssl",
        "sha256sum",
        "iptables",
    ] {
        if !recast_tests::have(cmd) {
            return Some(format!("{cmd} is missing (run tests/pxe/setup.sh)"));
        }
    }
    if !Path::new(site::FAKETIME_LIB).exists() {
        return Some("libfaketime is missing (run tests/pxe/setup.sh)".into());
    }
    if !Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists() {
        return Some("Debian's ipxe-qemu is missing (run tests/pxe/setup.sh)".into());
    }
    if let Some(why) = recast_tests::secure_boot::missing() {
        return Some(why);
    }
    if recast_tests::wimlib::find().is_none() {
        return Some("wimlib-imagex is missing (run tests/golden/setup.sh)".into());
    }
    let sushy = std::env::var_os("HOME").map(|h| {
        Path::new(&h).join(format!(
            ".cache/recast/sushy/{}/bin/sushy-emulator",
            recast_tests::redfish::SUSHY_VERSION
        ))
    });
    if !sushy.is_some_and(|p| p.is_file()) {
        return Some("sushy-tools is missing (run tests/redfish/setup.sh)".into());
    }
    None
}

fn ready() -> bool {
    match missing_prerequisite() {
        Some(why) => {
            recast_tests::skip_or_fail(REQUIRE, &format!("end-to-end suite: {why}"));
            false
        }
        None => true,
    }
}

fn machine(name: &str, mac: &str, qemu: bool, protected: bool) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        mac: mac.into(),
        qemu,
        secure_boot: false,
        protected,
        labels: "{site: e2e, role: kiosk}",
        bmc: true,
    }
}

fn history(ep: &Value) -> Vec<Value> {
    ep["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn build(ep: &Value) -> Option<String> {
    ep["status"]["lastReport"]["build"]
        .as_str()
        .map(str::to_string)
}

/// How long an endpoint's status must stay the same to count as settled: well above the
/// time the controller takes to apply a queued input on this machine.
const SETTLE: Duration = Duration::from_secs(4);

const M1: &str = "52:54:00:78:00:01";
const M2: &str = "52:54:00:78:00:02";

/// The failed-rollback chain on one backend, with faults at each step. Returns the site with
/// kiosk-01 healthy on the January image after exactly one reimage.
fn failed_rollback_chain(site: &mut Site, kube: bool) {
    site.note("recast-operator starts (controller, agent gateway, proxyDHCP and HTTP boot)");
    site.start_operator();
    site.wait_endpoint(
        "kiosk-01",
        "the endpoint to be loaded",
        Duration::from_secs(30),
        |_| true,
    );
    site.wait(
        Duration::from_secs(120),
        "the golden image to be verified",
        || condition(&site.get("gi", site::IMAGE), "Verified").as_deref() == Some("True"),
    );
    site.show(&["get", "gi"]);

    // Both machines run Windows on the December build and report healthy.
    let tok1 = site.issue_token("kiosk-01");
    let tok2 = site.issue_token("kiosk-02");
    site.windows_state("kiosk-01", "december");
    site.windows_state("kiosk-02", "december");
    site.start_agent("kiosk-01", &tok1, "december", None);
    site.start_agent("kiosk-02", &tok2, "december", None);
    for name in ["kiosk-01", "kiosk-02"] {
        site.wait_endpoint(
            name,
            "a first report on 26100.7462",
            Duration::from_secs(60),
            |ep| build(ep).as_deref() == Some("26100.7462"),
        );
    }
    site.note("both agents report 26100.7462 (December), healthy");
    // A report collected now and delivered late (a replay), and one delivered twice (a retry
    // after a lost answer). One gateway (embedded): both refused as out of sequence. Two
    // replicas behind a Service (kube): these reports are at rest (the facts already handed
    // on), and a copy that reaches the replica which did not answer the original may be
    // answered there (docs/gateway.md: the price of not waiting for the apiserver); either
    // way nothing changes but, at most, the time of the last report.
    let old_report = site.collect("kiosk-01", "old");
    std::thread::sleep(Duration::from_secs(4));
    site.stop_agent("kiosk-01");
    let report = site.collect("kiosk-01", "dup");
    let (code, body) = site.post_report(&tok1, &report);
    assert_eq!(code, 200, "a fresh report is accepted: {body}");
    // The 200 means the report's inputs (if any) are queued; the controller applies them
    // after it. Compare against the status once that has happened, and give the copies the
    // same time to show any effect.
    let comparable = |mut status: Value| {
        if kube {
            if let Some(last) = status.get_mut("lastReport").and_then(Value::as_object_mut) {
                last.remove("reportedAt");
            }
            // The AgentConnected condition says when the last report came ("last report T"):
            // a copy answered at rest may move that time, and only that.
            if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in conditions
                    .iter_mut()
                    .filter(|c| c["type"] == "AgentConnected")
                {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("message");
                    }
                }
            }
        }
        status
    };
    let status_after_first = comparable(site.settled_status("kiosk-01", SETTLE));
    let refused = |code: u16| code == 409 || (kube && code == 200);
    let (code, body) = site.post_report(&tok1, &report);
    assert!(refused(code), "the same report again: {code} {body}");
    let (code, body) = site.post_report(&tok1, &old_report);
    assert!(refused(code), "an old report delivered late: {code} {body}");
    assert_eq!(
        comparable(site.settled_status("kiosk-01", SETTLE)),
        status_after_first,
        "copies of reports change nothing"
    );
    site.note(
        "a duplicated report and a replayed old one: refused or answered at rest, status unchanged",
    );
    site.start_agent("kiosk-01", &tok1, "december", None);

    // A forged report for the protected kiosk-02 (kiosk-01's token, kiosk-02's name, a failed
    // rollback): refused. Then kiosk-02's own agent reports a real failed rollback: recorded,
    // but a protected endpoint is never reimaged.
    site.windows_state("kiosk-02", "failed-rollback");
    let forged = site
        .agent_command("kiosk-02", &tok1, "forged", None)
        .arg("--once")
        .output()
        .unwrap();
    let forged_text = String::from_utf8_lossy(&forged.stderr).to_string();
    assert!(
        !forged.status.success(),
        "a report with another endpoint's token is refused:\n{forged_text}"
    );
    assert!(
        !signals(&site.endpoint("kiosk-02")).contains(&"FailedRollback".to_string()),
        "the forged report changed nothing"
    );
    site.note("a forged report for the protected kiosk-02 (kiosk-01's token): refused");
    site.wait_endpoint(
        "kiosk-02",
        "its own failed-rollback report to be recorded",
        Duration::from_secs(60),
        |ep| signals(ep).contains(&"FailedRollback".to_string()),
    );

    // kiosk-01's January update fails and rolls back. The BMC answers 500s for a while. The
    // link into kiosk-01 is slowed (6 Mbit/s, everything it downloads) so that the suite can
    // catch recast-imager mid-download below.
    site.throttle("kiosk-01", Some("6mbit"));
    site.bridge.set_fault(bmc::Fault::ServerErrors);
    site.note("the BMC starts answering 500 Internal Server Error");
    site.windows_state("kiosk-01", "failed-rollback");
    site.note("kiosk-01: KB5074109 fails and rolls back (WindowsUpdateClient 20, Servicing 3 for RollupFix 26100.7623)");
    site.wait_endpoint(
        "kiosk-01",
        "the FailedRollback signal",
        Duration::from_secs(60),
        |ep| signals(ep).contains(&"FailedRollback".to_string()),
    );
    site.restart_operator("right after the FailedRollback signal was stored");
    let ep = site.wait_endpoint("kiosk-01", "an attempt", Duration::from_secs(60), |ep| {
        !ep["status"]["activeAttempt"].is_null()
    });
    let attempt = ep["status"]["activeAttempt"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ep["status"]["activeAttempt"]["trigger"], "FailedRollback");
    site.note(&format!(
        "attempt {attempt} created (trigger FailedRollback)"
    ));
    if kube {
        let ok = Command::new(recast_tests::repo_root().join("tests/k8s/harness.sh"))
            .arg("restart-apiserver")
            .status()
            .unwrap();
        assert!(ok.success(), "harness.sh restart-apiserver failed");
        site.note("kube-apiserver restarted with the attempt in flight");
        // One of the chart's two gateway replicas goes away too: the agents' reports, the
        // new image's enrollment and its check-in go to the survivor.
        site.kill_gateway(0, "with the attempt in flight");
    } else {
        site.restart_operator("with the attempt created, before the power cycle");
    }
    site.wait(
        Duration::from_secs(120),
        "the power cycle to meet the 500s",
        || {
            site.bridge
                .requests
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.contains("500 (fault)"))
        },
    );
    site.bridge.set_fault(bmc::Fault::Timeouts);
    site.note("the BMC stops answering (requests time out)");
    site.wait(
        Duration::from_secs(180),
        "a Redfish request to time out",
        || {
            site.bridge
                .requests
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.contains("timeout (fault)"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    site.bridge.set_fault(bmc::Fault::None);
    site.note("the BMC answers again");
    site.wait(
        Duration::from_secs(240),
        "the one-time PXE boot and power cycle",
        || site.bridge.with("kiosk-01", |m| m.network_boots) >= 1,
    );
    let (errors, stalls) = {
        let requests = site.bridge.requests.lock().unwrap();
        (
            requests
                .iter()
                .filter(|r| r.contains("500 (fault)"))
                .count(),
            requests
                .iter()
                .filter(|r| r.contains("timeout (fault)"))
                .count(),
        )
    };
    site.note(&format!(
        "one-time PXE boot set and the machine power-cycled over Redfish (after {errors} requests answered 500 and {stalls} left to time out); it PXE-boots"
    ));

    // The boot service goes away with the image part downloaded; recast-imager resumes with
    // Range (the slowed link makes the download last seconds, long enough to land in).
    site.wait(
        Duration::from_secs(300),
        "recast-imager to be mid-download",
        || {
            // "recast-imager:  10% download: 123456 of 4567890 bytes"
            site.serial("kiosk-01")
                .lines()
                .any(|l| l.contains("% download:") && l.contains(" of "))
        },
    );
    site.restart_operator("mid-download (the boot service restarts with the image partly fetched)");
    site.throttle("kiosk-01", None);
    site.wait(Duration::from_secs(600), "the imager to finish", || {
        site.bridge.with("kiosk-01", |m| m.imaged) >= 1
    });
    let serial = site.serial("kiosk-01");
    assert!(
        serial.contains("recast-imager: done: the image is written"),
        "imaging finished:\n{serial}"
    );
    assert!(
        serial.contains("identity matches"),
        "recast-imager checked the machine's SMBIOS UUID:\n{serial}"
    );
    // A UEFI machine with Secure Boot enforced: the signed chain started the imager.
    recast_tests::secure_boot::assert_console_enforced(&serial);
    assert!(
        site.operator_logs()
            .contains("kind=\"boot-program\" file=sb/shimx64.efi"),
        "DHCP offered the signed shim"
    );
    let disk = site.dir.join("disk-kiosk-01.img");
    let table = recast_tests::readback::Table::read(&disk);
    let types: Vec<&str> = table.partitions.iter().map(|p| p.type_.as_str()).collect();
    assert_eq!(
        types,
        [
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "E3C9E316-0B5C-4DB8-817D-F92DF00215AE",
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC",
        ],
        "ESP, MSR, Windows, Recovery: {table:?}"
    );
    let logs = site.operator_logs();
    let resumed_at = logs
        .lines()
        .filter_map(|l| l.split("start=").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .find(|start| *start > 0)
        .unwrap_or_else(|| {
            panic!(
                "the rest of the image came with a Range request from where it broke off:\n{}",
                site::tail(&logs, 80)
            )
        });
    site.note(&format!(
        "recast-imager resumed the download with `Range: bytes={resumed_at}-` from the restarted boot service, checked sha256, partitioned the disk (active FAT32 system, NTFS Windows, recovery), applied the WIM with wimlib, wrote the boot files and agent.json"
    ));

    site.wait_endpoint("kiosk-01", "FirstBoot", Duration::from_secs(60), |ep| {
        step(ep).as_deref() == Some("FirstBoot")
    });
    // The step's Event follows its status write (Events are best effort): kill only once it
    // is out, so the kill exercises the wait for the first report, and the story checked
    // below can ask for the FirstBoot event.
    site.wait(
        Duration::from_secs(30),
        "the FirstBoot event after the step reached FirstBoot",
        || {
            event_reasons(&site.recastctl(&["describe", "rep", "kiosk-01"]).1)
                .iter()
                .any(|r| r == "FirstBoot")
        },
    );
    site.restart_operator("while the attempt waits for the new image's first report");

    // Windows boots from the new image; its agent enrolls with agent.json and reports.
    let config = site
        .bridge
        .with("kiosk-01", |m| m.agent_config.clone())
        .expect("agent.json on the machine");
    let config_path = site.dir.join("kiosk-01-agent.json");
    std::fs::write(&config_path, &config).unwrap();
    let cfg: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        cfg["attemptId"].as_str(),
        Some(attempt.as_str()),
        "agent.json carries the attempt id"
    );
    site.windows_state("kiosk-01", "january");
    let new_token = site.dir.join("kiosk-01-new.token");
    site.start_agent("kiosk-01", &new_token, "january", Some(&config_path));
    let ep = site.wait_endpoint(
        "kiosk-01",
        "Ready on the January image",
        Duration::from_secs(120),
        |ep| {
            ep["status"]["activeAttempt"].is_null()
                && ep["status"]["phase"] == "Ready"
                && build(ep).as_deref() == Some("26100.7623")
        },
    );
    site.note("the new image's agent enrolled and reported 26100.7623 with the attempt id: Ready");
    if kube {
        assert!(
            site.gateway_logs().contains("agent enrolled"),
            "the surviving gateway replica enrolled the new image:\n{}",
            site.gateway_logs()
        );
    }
    assert_eq!(
        condition(&ep, "Compliant").as_deref(),
        Some("True"),
        "{}",
        ep["status"]
    );
    let h = history(&ep);
    assert_eq!(h.len(), 1, "exactly one attempt: {h:?}");
    assert_eq!(h[0]["outcome"], "Succeeded");
    assert_eq!(h[0]["id"].as_str(), Some(attempt.as_str()));
    assert_eq!(
        h[0]["secureBoot"], true,
        "the record keeps what the imaging environment read: Secure Boot on, as launched"
    );

    // Exactly once; nothing else wiped.
    let uuid1 = site.uuid("kiosk-01");
    let uuid2 = site.uuid("kiosk-02");
    assert_eq!(
        site.bridge.resets(&uuid1),
        1,
        "one power cycle reached the BMC:\n{}",
        site.bridge.requests.lock().unwrap().join("\n")
    );
    assert_eq!(
        site.bridge.with("kiosk-01", |m| m.network_boots),
        1,
        "one network boot"
    );
    assert_eq!(
        site.bridge.resets(&uuid2),
        0,
        "the protected endpoint's BMC was never reset"
    );
    assert_eq!(site.bridge.with("kiosk-02", |m| m.network_boots), 0);
    let ep2 = site.endpoint("kiosk-02");
    assert!(
        history(&ep2).is_empty() && ep2["status"]["activeAttempt"].is_null(),
        "{}",
        ep2["status"]
    );
    // The lease holder that took the check-in counts the attempt. Metrics are per process and
    // the status can be seen before that process's scrape shows the count (on kube, with the
    // lease just changing hands): give it a moment.
    let counted = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("recast_attempt_duration_seconds_count")
                && l.contains("Succeeded")
                && l.trim_end().ends_with(" 1")
        })
    };
    let start = std::time::Instant::now();
    let mut metrics = site.metrics();
    while !counted(&metrics) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        metrics = site.metrics();
    }
    assert!(counted(&metrics), "metrics count the attempt:\n{metrics}");
    site.show(&["get", "rep"]);
    site.show(&["history", "kiosk-01"]);
    let describe = site.show(&["describe", "rep", "kiosk-01"]);
    // The Events tell the story, in order. Events are best effort (as in Kubernetes): the
    // SIGKILL right after the signal was stored can land between the status write and its
    // events, so the story is checked from the power cycle on; the signal and the attempt's
    // start are in the status and history checked above (docs/faults.md).
    let reasons = event_reasons(&describe);
    let cycled = reasons
        .iter()
        .position(|r| r.starts_with("PowerCycle") && r != "PowerCycling")
        .unwrap_or_else(|| panic!("no power-cycle event in {reasons:?}:\n{describe}"));
    assert_in_order(
        &reasons[cycled..],
        &["Booting", "Applying", "FirstBoot", "AttemptSucceeded"],
        &describe,
    );
}

/// The REASON column of `recastctl describe`'s Events table, oldest first.
fn event_reasons(describe: &str) -> Vec<String> {
    describe
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn assert_in_order(got: &[String], want: &[&str], context: &str) {
    let mut at = 0;
    for w in want {
        match got[at..].iter().position(|g| g == w) {
            Some(i) => at += i + 1,
            None => panic!("event {w} missing or out of order in {got:?}:\n{context}"),
        }
    }
}

/// The crash path: the BMC's event log shows an OS critical stop and the agent goes silent.
fn boot_crash_chain(site: &mut Site, previous_attempts: usize) {
    site.stop_agent("kiosk-01");
    site.bridge.with("kiosk-01", |m| m.control = String::new());
    site.bridge
        .record_crash("kiosk-01", 0xED, "UNMOUNTABLE_BOOT_VOLUME");
    site.note("kiosk-01 blue-screens with 0xED UNMOUNTABLE_BOOT_VOLUME: its BMC logs an OS critical stop, its agent goes silent");
    let resets_before = site.bridge.resets(&site.uuid("kiosk-01"));
    let ep = site.wait_endpoint(
        "kiosk-01",
        "a BootCrash attempt",
        Duration::from_secs(120),
        |ep| ep["status"]["activeAttempt"]["trigger"] == "BootCrash",
    );
    assert!(
        signals(&ep).contains(&"BootCrash".to_string()),
        "{}",
        ep["status"]
    );
    site.note("HeartbeatLost, then the BMC's log read: BootCrash, attempt started");
    site.wait(Duration::from_secs(400), "the second network boot", || {
        site.bridge.with("kiosk-01", |m| m.network_boots) >= 2
    });
    // From the network boot to the new image's first report, nothing in between but the
    // machine (QEMU under TCG), recast-imager and the agent (docs/benchmarks.md quotes it).
    let pxe_at = std::time::Instant::now();
    site.wait(Duration::from_secs(400), "the second imaging run", || {
        site.bridge.with("kiosk-01", |m| m.imaged) >= 2
    });
    let imaged_in = pxe_at.elapsed();
    let config = site
        .bridge
        .with("kiosk-01", |m| m.agent_config.clone())
        .expect("agent.json");
    let config_path = site.dir.join("kiosk-01-agent-2.json");
    std::fs::write(&config_path, &config).unwrap();
    site.windows_state("kiosk-01", "january");
    let token = site.dir.join("kiosk-01-new-2.token");
    site.start_agent("kiosk-01", &token, "january-2", Some(&config_path));
    let ep = site.wait_endpoint("kiosk-01", "Ready again", Duration::from_secs(120), |ep| {
        ep["status"]["activeAttempt"].is_null() && ep["status"]["phase"] == "Ready"
    });
    let h = history(&ep);
    assert_eq!(h.len(), previous_attempts + 1, "one more attempt: {h:?}");
    assert_eq!(h[0]["trigger"], "BootCrash");
    assert_eq!(h[0]["outcome"], "Succeeded");
    assert_eq!(
        site.bridge.resets(&site.uuid("kiosk-01")),
        resets_before + 1,
        "one more power cycle"
    );
    site.note(&format!(
        "reimaged once more (one more power cycle, one more network boot) and Ready: {:.0} s from the network boot to the image written, {:.0} s to the new image's first report (QEMU under TCG)",
        imaged_in.as_secs_f64(),
        pxe_at.elapsed().as_secs_f64()
    ));
    site.show(&["history", "kiosk-01"]);
    // The status can be Ready before the apiserver lists the last event (events are recorded
    // after the status write): wait for it rather than race it.
    site.wait(
        Duration::from_secs(30),
        "the AttemptSucceeded event after the last BootCrash",
        || {
            let reasons = event_reasons(&site.recastctl(&["describe", "rep", "kiosk-01"]).1);
            reasons
                .iter()
                .rposition(|r| r == "BootCrash")
                .is_some_and(|at| reasons[at..].iter().any(|r| r == "AttemptSucceeded"))
        },
    );
    let describe = site.recastctl(&["describe", "rep", "kiosk-01"]).1;
    let reasons = event_reasons(&describe);
    let last_crash = reasons
        .iter()
        .rposition(|r| r == "BootCrash")
        .expect("a BootCrash event");
    assert_in_order(
        &reasons[last_crash..],
        &[
            "BootCrash",
            "AttemptStarted",
            "PowerCycling",
            "Applying",
            "FirstBoot",
            "AttemptSucceeded",
        ],
        &describe,
    );
}

#[test]
fn embedded_failed_rollback_crash_and_faults() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let machines = [
        // UEFI with Secure Boot enforced: recast's signed chain boots it.
        MachineSpec {
            secure_boot: true,
            ..machine("kiosk-01", M1, true, false)
        },
        machine("kiosk-02", M2, false, true),
    ];
    let mut site = Site::new("embedded", Backend::Embedded, &machines, POLICY);
    failed_rollback_chain(&mut site, false);
    boot_crash_chain(&mut site, 1);

    // The clock jumps an hour ahead, then back: no endpoint is reimaged for it.
    let resets = site.bridge.resets(&site.uuid("kiosk-01"));
    site.kill_operator("to restart it with the clock an hour ahead");
    site.start_operator_with(Some("+1h"));
    site.note("the operator's clock jumps an hour ahead");
    std::thread::sleep(Duration::from_secs(20));
    // The jump is real: the operator's own log is stamped an hour ahead.
    let log = std::fs::read_to_string(site.operator_log_path(site.operator_runs)).unwrap();
    let stamped: jiff::Timestamp = log.split_whitespace().next().unwrap().parse().unwrap();
    let ahead = stamped.duration_since(jiff::Timestamp::now()).as_secs();
    assert!(
        ahead > 50 * 60,
        "the operator ran {ahead}s ahead, not an hour:\n{}",
        site::tail(&log, 5)
    );
    site.restart_operator("to put the clock back");
    site.note("the clock jumps back an hour");
    std::thread::sleep(Duration::from_secs(20));
    let ep = site.endpoint("kiosk-01");
    assert!(
        ep["status"]["activeAttempt"].is_null(),
        "no attempt for a clock jump: {}",
        ep["status"]
    );
    assert_eq!(history(&ep).len(), 2);
    assert_eq!(
        site.bridge.resets(&site.uuid("kiosk-01")),
        resets,
        "no power cycle for a clock jump"
    );
    assert_eq!(site.bridge.resets(&site.uuid("kiosk-02")), 0);
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-embedded-walkthrough.md"),
        site.transcript(),
    );
}

#[test]
fn kube_failed_rollback_and_faults() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let Some(k8s) = recast_tests::K8s::get() else {
        return;
    };
    k8s.install_crds();
    let ns = k8s.fresh_namespace("e2e");
    let machines = [
        // UEFI with Secure Boot enforced: recast's signed chain boots it.
        MachineSpec {
            secure_boot: true,
            ..machine("kiosk-01", M1, true, false)
        },
        machine("kiosk-02", M2, false, true),
    ];
    let mut site = Site::new("kube", Backend::Kube { k8s, ns }, &machines, POLICY);
    failed_rollback_chain(&mut site, true);
    boot_crash_chain(&mut site, 1);
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-kube-walkthrough.md"),
        site.transcript(),
    );
}

const WAVE_POLICY: &str =
    "# One try per attempt: a failed imaging run fails the attempt, and the wave counts it.
apiVersion: recast.dev/v1alpha1
kind: RemediationPolicy
metadata:
  name: default
spec:
  signals:
    failedRollback: ReimageNow
    bootCrash: ReimageNow
    heartbeatLost: AlertOnly
    drift: AlertOnly
    nonCompliant: AlertOnly
  cooldown: 10s
  retry:
    maxTries: 1
    backoff: 20s
    tryTimeout: 20m
  concurrency:
    global: 5
  heartbeatTimeout: 15m
";

const WAVE: &str = "apiVersion: recast.dev/v1alpha1
kind: ReimageWave
metadata:
  name: tills-2026-01
spec:
  selector:
    matchLabels: {site: e2e, role: till}
  image: win11-24h2-2026-01
  strategy:
    canary: 1
    batchSize: 5
    maxFailures: 1
  reason: January 2026 cumulative update KB5074109 (build 26100.7623)
";

/// A wave of 20 (two QEMU machines, eighteen simulated ones) whose failure budget trips when
/// the imaging environment of two members of the third batch is told to fail.
fn wave_chain(site: &mut Site, names: &[String]) {
    site.start_operator();
    site.wait(
        Duration::from_secs(120),
        "the golden image to be verified",
        || condition(&site.get("gi", site::IMAGE), "Verified").as_deref() == Some("True"),
    );
    for failing in ["till-08", "till-09"] {
        site.bridge
            .with(failing, |m| m.control = "recast-e2e:fail-apply".into());
    }
    let wave = site.dir.join("wave.yaml");
    std::fs::write(&wave, WAVE).unwrap();
    site.show(&["apply", "-f", wave.to_str().unwrap()]);
    site.note("wave tills-2026-01 applied: canary 1, batches of 5, maxFailures 1; till-08 and till-09 will fail to apply");

    // Each machine that finishes imaging boots its new Windows, whose agent reports once.
    let mut reported = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    loop {
        for name in names {
            if reported.contains(name) {
                continue;
            }
            let Some(config) = site.bridge.with(name, |m| m.agent_config.clone()) else {
                continue;
            };
            let path = site.dir.join(format!("{name}-agent.json"));
            std::fs::write(&path, config).unwrap();
            site.windows_state(name, "january");
            let token = site.dir.join(format!("{name}-new.token"));
            let out = site
                .agent_command(name, &token, "january", Some(&path))
                .args(["--once", "--interval", "5m"])
                .output()
                .unwrap();
            if out.status.success() {
                reported.insert(name.clone());
            }
        }
        let w = site.get("wave", "tills-2026-01");
        let phase = w["status"]["phase"].as_str().unwrap_or("").to_string();
        let running = w["status"]["counts"]["running"].as_u64().unwrap_or(0);
        if phase == "Failed" && running == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "the wave did not end: {}\nBMC requests:\n{}",
            serde_json::to_string_pretty(&w["status"]).unwrap(),
            site.bridge.requests.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let w = site.get("wave", "tills-2026-01");
    let failed: Vec<String> = w["status"]["failedEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(failed, ["till-08", "till-09"], "{}", w["status"]);
    site.note("the failure budget tripped: wave Failed, failed endpoints till-08 and till-09");

    // Batches: [01] [02-06] [07-11] [12-16] [17-20]. The first three ran; the rest were never
    // touched.
    for (i, name) in names.iter().enumerate() {
        let ep = site.endpoint(name);
        let resets = site.bridge.resets(&site.uuid(name));
        let h = history(&ep);
        if i < 11 {
            assert_eq!(resets, 1, "{name} was power-cycled exactly once");
            assert_eq!(h.len(), 1, "{name}: one attempt: {h:?}");
            let want = if name == "till-08" || name == "till-09" {
                "Failed"
            } else {
                "Succeeded"
            };
            assert_eq!(h[0]["outcome"], want, "{name}: {}", ep["status"]);
            assert_eq!(h[0]["wave"], "tills-2026-01");
        } else {
            assert_eq!(
                resets, 0,
                "{name} is after the failure and was never power-cycled"
            );
            assert!(
                h.is_empty() && ep["status"]["activeAttempt"].is_null(),
                "{name}: {}",
                ep["status"]
            );
            assert_eq!(site.bridge.with(name, |m| m.network_boots), 0);
        }
    }
    // The QEMU member was imaged for real: its table reads back as system, Windows,
    // Recovery, and its Windows volume holds the agent configuration of its attempt.
    let table = recast_tests::readback::Table::read(&site.dir.join("disk-till-02.img"));
    let types: Vec<&str> = table.partitions.iter().map(|p| p.type_.as_str()).collect();
    assert_eq!(types, ["c", "7", "27"], "till-02's disk: {table:?}");
    let config: Value = serde_json::from_str(
        &site
            .bridge
            .with("till-02", |m| m.agent_config.clone())
            .expect("till-02's agent.json, read from its NTFS volume"),
    )
    .unwrap();
    assert_eq!(config["endpoint"], "till-02", "{config}");
    // `wave status` exits 3 for a Failed wave (pipelines branch on it).
    let (ok, _) = site.show_exit(&["wave", "status", "tills-2026-01"]);
    assert!(
        !ok,
        "`recastctl wave status` exits non-zero for a Failed wave"
    );
}

fn wave_machines() -> (Vec<MachineSpec>, Vec<String>) {
    let names: Vec<String> = (1..=20).map(|i| format!("till-{i:02}")).collect();
    let specs = names
        .iter()
        .enumerate()
        .map(|(i, name)| MachineSpec {
            name: name.clone(),
            mac: format!("52:54:00:79:00:{:02x}", i + 1),
            // The canary and the first member of the second batch are real VMs.
            qemu: i < 2,
            secure_boot: false,
            protected: false,
            labels: "{site: e2e, role: till}",
            bmc: true,
        })
        .collect();
    (specs, names)
}

#[test]
fn embedded_wave_failure_budget() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let (machines, names) = wave_machines();
    let mut site = Site::new("wave", Backend::Embedded, &machines, WAVE_POLICY);
    wave_chain(&mut site, &names);
}

#[test]
fn kube_wave_failure_budget() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let Some(k8s) = recast_tests::K8s::get() else {
        return;
    };
    k8s.install_crds();
    let ns = k8s.fresh_namespace("e2e-wave");
    let (machines, names) = wave_machines();
    let mut site = Site::new("kwave", Backend::Kube { k8s, ns }, &machines, WAVE_POLICY);
    wave_chain(&mut site, &names);
}

const P1: &str = "52:54:00:78:00:11";
const P2: &str = "52:54:00:78:00:12";

/// A disk whose boot sector resets the machine at once (the keyboard controller's reset line),
/// as Windows does when it bugchecks at boot with automatic restart on: the machine is back in
/// its firmware, which boots the network first, every few seconds.
fn write_reset_boot_sector(disk: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut sector = [0u8; 512];
    // mov al, 0xfe; out 0x64, al; hlt; jmp $-1
    sector[..7].copy_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&sector).unwrap();
}

/// The tool calls the replayed Windows saw (`calls.log`, one per line).
fn windows_calls(windows: &Path) -> Vec<String> {
    std::fs::read_to_string(windows.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The new image's first start: the agent the imager installed reports once from the
/// January build, started as the golden image's service is, from the agent.json read back
/// from the disk alone (no endpoint or gateway on its command line).
fn first_start(site: &mut Site, name: &str, config: &str) {
    let path = site.dir.join(format!("{name}-agent.json"));
    std::fs::write(&path, config).unwrap();
    site.windows_state(name, "january");
    let token = site.dir.join(format!("{name}-new.token"));
    let out = site
        .agent_command_from_config(name, &token, &path)
        .args(["--once", "--interval", "5m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}'s new agent could not report:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two machines without a BMC. pc-01's Windows runs: its failed rollback is remediated by the
/// agent restarting the machine into the network (bcdedit's one-time firmware boot, then
/// shutdown /r), which the test's "Windows" turns into the VM's network boot. pc-02 has no
/// agent at all and a disk that restarts it at once on every boot: the boot service's own
/// observations find it looping, and it is reimaged.
fn no_bmc_chain(site: &mut Site) {
    write_reset_boot_sector(&site.dir.join("disk-pc-02.img"));
    site.start_operator();
    site.wait(
        Duration::from_secs(120),
        "the golden image to be verified",
        || condition(&site.get("gi", site::IMAGE), "Verified").as_deref() == Some("True"),
    );
    site.bridge.start_vm("pc-02", true);
    site.note("pc-02 switched on: no BMC, no agent; its firmware boots the network first, and its disk resets the machine at once (a bugcheck at boot with automatic restart)");

    // pc-01 runs Windows; its agent reports December, then KB5074109 fails and rolls back.
    let token = site.issue_token("pc-01");
    site.windows_state("pc-01", "december");
    site.start_agent("pc-01", &token, "december", None);
    site.wait_endpoint(
        "pc-01",
        "a first report on 26100.7462",
        Duration::from_secs(60),
        |ep| build(ep).as_deref() == Some("26100.7462"),
    );
    let windows = site.windows_state("pc-01", "failed-rollback");
    // What bcdedit /enum firmware prints on this machine (OVMF: its own PXE client first).
    std::fs::copy(
        recast_tests::repo_root().join("agent/tests/fixtures/tools/bcdedit-enum-firmware-ovmf.txt"),
        windows.join("bcdedit-enum-firmware.txt"),
    )
    .unwrap();
    site.note("pc-01: KB5074109 fails and rolls back; no BMC");
    let ep = site.wait_endpoint(
        "pc-01",
        "an attempt whose machine its agent restarts",
        Duration::from_secs(90),
        |ep| ep["status"]["activeAttempt"]["powerWay"] == "Agent",
    );
    assert_eq!(ep["status"]["activeAttempt"]["trigger"], "FailedRollback");
    let attempt = ep["status"]["activeAttempt"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    site.wait(
        Duration::from_secs(120),
        "the agent to schedule the restart into the network",
        || {
            windows_calls(&windows)
                .iter()
                .any(|c| c.starts_with("shutdown.exe"))
        },
    );
    site.wait(
        Duration::from_secs(60),
        "the agent's report of the scheduled restart",
        || site.events("pc-01").contains("AgentRestartScheduled"),
    );
    // The replies go on carrying the order until the machine network-boots; the agent acts
    // once. A few more reports (every 3 s) prove it.
    std::thread::sleep(Duration::from_secs(10));
    let calls = windows_calls(&windows);
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0], "bcdedit.exe /enum firmware");
    assert!(
        calls[1].starts_with("bcdedit.exe /set {fwbootmgr} bootsequence {"),
        "{calls:#?}"
    );
    assert!(
        calls[2].starts_with("shutdown.exe /r /t 30 /c ") && calls[2].contains(&attempt),
        "{calls:#?}"
    );
    site.note(&format!(
        "pc-01's agent: {}; {}; {} (once, though every reply repeated the order)",
        calls[0], calls[1], calls[2]
    ));
    // Windows restarts; the firmware's one-time boot goes to the network.
    site.stop_agent("pc-01");
    site.bridge.start_vm("pc-01", false);
    site.wait(Duration::from_secs(600), "pc-01 to be imaged", || {
        site.bridge.with("pc-01", |m| m.agent_config.is_some())
    });
    let config = site
        .bridge
        .with("pc-01", |m| m.agent_config.clone())
        .unwrap();
    first_start(site, "pc-01", &config);
    let ep = site.wait_endpoint(
        "pc-01",
        "the attempt to succeed",
        Duration::from_secs(60),
        |ep| {
            ep["status"]["activeAttempt"].is_null()
                && history(ep)
                    .first()
                    .is_some_and(|h| h["outcome"] == "Succeeded")
        },
    );
    assert_eq!(history(&ep)[0]["id"], attempt.as_str());
    assert_eq!(build(&ep).as_deref(), Some("26100.7623"));
    let events = site.events("pc-01");
    for reason in ["AgentRestartOrdered", "AgentRestartScheduled"] {
        assert!(events.contains(reason), "{reason} missing:\n{events}");
    }
    assert!(
        !events.contains("PowerCycleNeeded"),
        "no person was asked:\n{events}"
    );
    site.note("pc-01 reimaged through its agent's restart, no person, no BMC");

    // pc-02 has looped all along: found from the boot service's observations alone.
    let ep = site.wait_endpoint(
        "pc-02",
        "a BootLoop signal from its network boots",
        Duration::from_secs(600),
        |ep| signals(ep).contains(&"BootLoop".to_string()),
    );
    let boots = ep["status"]["networkBoots"].as_array().map_or(0, Vec::len);
    assert!(boots >= 3, "{}", ep["status"]);
    assert!(ep["status"]["lastReport"].is_null(), "pc-02 has no agent");
    let ep = site.wait_endpoint(
        "pc-02",
        "an attempt for the loop",
        Duration::from_secs(60),
        |ep| ep["status"]["activeAttempt"]["trigger"] == "BootLoop",
    );
    let attempt = ep["status"]["activeAttempt"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    site.note(&format!(
        "pc-02: BootLoop after {boots} network boots with no report; attempt {attempt}"
    ));
    site.wait_endpoint(
        "pc-02",
        "its image to be applied",
        Duration::from_secs(600),
        |ep| step(ep).as_deref() == Some("FirstBoot"),
    );
    let config = site
        .bridge
        .stop_vm("pc-02")
        .expect("pc-02's agent.json, read from its NTFS volume");
    let table = recast_tests::readback::Table::read(&site.dir.join("disk-pc-02.img"));
    let types: Vec<&str> = table.partitions.iter().map(|p| p.type_.as_str()).collect();
    assert_eq!(types, ["c", "7", "27"], "pc-02's disk: {table:?}");
    first_start(site, "pc-02", &config);
    let ep = site.wait_endpoint(
        "pc-02",
        "the attempt to succeed",
        Duration::from_secs(60),
        |ep| {
            ep["status"]["activeAttempt"].is_null()
                && history(ep)
                    .first()
                    .is_some_and(|h| h["outcome"] == "Succeeded")
        },
    );
    assert_eq!(history(&ep)[0]["trigger"], "BootLoop");
    assert!(
        !signals(&ep).contains(&"BootLoop".to_string()),
        "the new image's report ends the loop: {}",
        ep["status"]
    );
    let events = site.events("pc-02");
    assert!(events.contains("BootLoop"), "{events}");
    // Nothing switched it on (boot requests alone never do): its own loop took the armed
    // boot, and no person was asked.
    assert!(events.contains("WaitingForLoop"), "{events}");
    for never in ["WakeOnLanSent", "PowerCycleNeeded"] {
        assert!(!events.contains(never), "{never}:\n{events}");
    }
    site.show(&["describe", "rep", "pc-02"]);
    site.note("pc-02 reimaged from its boot loop, no agent, no BMC, no person at the keyboard");
}

#[test]
fn embedded_machines_without_a_bmc() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let machines = [
        // UEFI: the agent's one-time boot goes through the firmware's boot manager.
        MachineSpec {
            secure_boot: true,
            bmc: false,
            ..machine("pc-01", P1, true, false)
        },
        MachineSpec {
            bmc: false,
            ..machine("pc-02", P2, true, false)
        },
    ];
    let mut site = Site::new("nobmc", Backend::Embedded, &machines, POLICY);
    no_bmc_chain(&mut site);
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-no-bmc-walkthrough.md"),
        site.transcript(),
    );
}
