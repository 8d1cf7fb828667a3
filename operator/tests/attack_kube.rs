//! Attacks on the Kubernetes backend (issue 17, items 2 and 4), performed against the real
//! kube-apiserver (`make k8s-up`) and the real `recast-operator` binary, as tenants made by
//! impersonation (`kubectl --as`):
//!
//! - a tenant with the built-in `edit` role forges a boot intent and an inbox entry: refused
//!   (403) in the operator's control namespace; written in its own namespace, where nothing
//!   reads them, and shown to have no effect (next to a positive control that does);
//! - a tenant claims another tenant's machine by listing its MAC in its own Endpoint: refused
//!   at admission by the operator's webhook; forced in anyway, the MAC boots nothing and is
//!   never armed;
//! - a forged input posted to the operator's internal endpoint without the key: refused (401);
//! - the boot pods' ServiceAccount (rendered from the chart) tries to write and to read
//!   Secrets: refused.
//!
//! Without the harness these tests skip loudly (RECAST_REQUIRE_K8S=1 makes that a failure).

#[path = "support/kube_test.rs"]
mod kube_test;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use recast_operator::boot::intent::{self, BootChoice, UnknownMacPolicy};
use recast_operator::controller::kube::KubeOptions;
use recast_operator::store::BootIntents;
use recast_operator::store::Key;
use recast_operator::store::arming::{BootIntent, Known};
use recast_operator::store::kube::{ControlKind, control_name};
use recast_tests::{K8s, free_port, inputs, repo_root, wait_for};
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
const TENANT_A: &str = "tenant-a@example.org";
const TENANT_B: &str = "tenant-b@example.org";

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    fn wait_line(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.drain().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {needle:?}; the operator logged:\n{}",
            self.seen.join("\n")
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator's namespaces and files for one test.
struct Site {
    k: K8s,
    /// The operator's own namespace: Lease and control state.
    ctl: String,
    /// The victim tenant's namespace (the one the operator watches).
    a: String,
    dir: tempfile::TempDir,
    boot_port: u16,
    internal_port: u16,
    webhook_port: u16,
}

impl Site {
    fn new(prefix: &str) -> Option<Site> {
        let k = K8s::get()?;
        k.install_crds();
        let ctl = k.fresh_namespace(&format!("{prefix}-ctl"));
        let a = k.fresh_namespace(&format!("{prefix}-a"));
        let examples = repo_root().join("examples");
        k.kubectl_ok(&["apply", "-n", &a, "-f", &examples.to_string_lossy()]);
        let verified = json!({"status": inputs::verified_image_status()});
        k.kubectl_ok(&[
            "patch",
            "-n",
            &a,
            "gi",
            "win11-24h2-2026-01",
            "--subresource=status",
            "--type=merge",
            "-p",
            &verified.to_string(),
        ]);
        bind_tenant(&k, TENANT_A, &a);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/boot")).unwrap();
        Some(Site {
            k,
            ctl,
            a,
            dir,
            boot_port: free_port(),
            internal_port: free_port(),
            webhook_port: free_port(),
        })
    }

    fn key(&self, name: &str) -> Key {
        Key {
            namespace: self.a.clone(),
            name: name.into(),
        }
    }

    /// The real binary: controller (watching the victim's namespace), boot service, internal
    /// input endpoint and admission webhook, as a cluster admin (the chart tests prove the
    /// chart's RBAC is enough for it).
    fn operator(&self) -> Proc {
        let (cert, key) = self.webhook_cert();
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(OPERATOR);
        cmd.args(["run", "--backend", "kube", "--listen", "127.0.0.1:0"])
            .args(["--watch-namespace", &self.a])
            .args(["--lease-namespace", &self.ctl, "--identity", "attack"])
            .args(["--control-namespace", &self.ctl])
            .args([
                "--lease-duration-seconds",
                "6",
                "--lease-grace-seconds",
                "2",
            ])
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--boot-http=127.0.0.1:{}", self.boot_port))
            .arg(format!(
                "--internal-listen=127.0.0.1:{}",
                self.internal_port
            ))
            .arg(format!("--webhook-listen=127.0.0.1:{}", self.webhook_port))
            .arg(format!("--webhook-cert={}", cert.display()))
            .arg(format!("--webhook-key={}", key.display()))
            .env("KUBECONFIG", &self.k.kubeconfig)
            .env("RECAST_POWER_DRIVER", "record")
            .env("RECAST_LOG", "info")
            .env_remove("RECAST_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start recast-operator");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut p = Proc {
            child,
            lines,
            seen: Vec::new(),
        };
        p.wait_line("became leader", Duration::from_secs(60));
        p
    }

    /// A CA and a certificate for 127.0.0.1 (made once per site with openssl).
    fn webhook_cert(&self) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (ca, crt, key) = (d.join("ca.crt"), d.join("tls.crt"), d.join("tls.key"));
        if crt.exists() {
            return (crt, key);
        }
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=attack-webhook-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
        ]);
        std::fs::write(
            d.join("ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext",
            "-out",
            "tls.crt",
        ]);
        assert!(ca.exists());
        (crt, key)
    }

    fn boot_script(&self, mac: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{}/boot/{mac}", self.boot_port),
            ])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, name: &str) -> Value {
        let out = self
            .k
            .kubectl_ok(&["get", "rep", name, "-n", &self.a, "-o", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
    }

    fn exists(&self, kind: &str, name: &str, ns: &str) -> bool {
        self.k
            .kubectl(&["get", kind, name, "-n", ns])
            .status
            .success()
    }

    fn events(&self, name: &str, reason: &str) -> Vec<String> {
        let out = self
            .k
            .kubectl_ok(&["get", "events.events.k8s.io", "-n", &self.a, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
            .map(|e| e["note"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn write_json(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }
}

/// Gives `user` the built-in `edit` role in `ns` (see chart.rs: the harness has no
/// aggregation controller, so `edit`'s own aggregated roles stand in when it is empty), plus
/// the right to manage recast Endpoints there, as a site admin would grant a tenant.
fn bind_tenant(k: &K8s, user: &str, ns: &str) {
    let edit: Value =
        serde_json::from_str(&k.kubectl_ok(&["get", "clusterrole", "edit", "-o", "json"])).unwrap();
    let roles: Vec<&str> = if edit["rules"].as_array().is_some_and(|r| !r.is_empty()) {
        vec!["edit"]
    } else {
        vec!["system:aggregate-to-edit", "system:aggregate-to-view"]
    };
    for (i, role) in roles.iter().enumerate() {
        k.kubectl_ok(&[
            "create",
            "rolebinding",
            &format!("tenant-edit-{i}"),
            "-n",
            ns,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }
    k.kubectl_ok(&[
        "create",
        "role",
        "tenant-recast",
        "-n",
        ns,
        "--verb=get,list,watch,create,update,patch,delete",
        "--resource=endpoints.recast.dev,goldenimages.recast.dev",
    ]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "tenant-recast",
        "-n",
        ns,
        "--role=tenant-recast",
        &format!("--user={user}"),
    ]);
    wait_for(Duration::from_secs(20), "the tenant's RBAC", || {
        let out = k.kubectl(&[
            "auth",
            "can-i",
            "create",
            "configmaps",
            "-n",
            ns,
            "--as",
            user,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    });
}

/// Runs kubectl as `user` and asserts the apiserver refused it with 403.
fn refused_as(k: &K8s, user: &str, args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.extend(["--as", user]);
    let out = k.kubectl(&a);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("forbidden"),
        "kubectl {} as {user} was not refused with 403:\n{}{stderr}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn ok_as(k: &K8s, user: &str, args: &[&str]) {
    let mut a = args.to_vec();
    a.extend(["--as", user]);
    let out = k.kubectl(&a);
    assert!(
        out.status.success(),
        "kubectl {} as {user} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A complete boot intent for kiosk-01, as the operator would write it.
fn intent_data(_ns: &str) -> Value {
    json!({
        "macAddresses": "52:54:00:a1:00:01",
        "attemptId": "forged-attempt",
        "tryNumber": "1",
        "image": "win11-24h2-2026-01",
        "imageDigest": "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011",
        "bootMode": "uefi",
        "armedAt": "2026-01-14T08:00:00Z",
    })
}

fn configmap(name: &str, ns: &str, labels: Value, annotations: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
           "data": data})
}

#[test]
fn a_tenant_cannot_forge_boot_intents_or_inbox_entries() {
    let Some(site) = Site::new("atk-forge") else {
        return;
    };
    let mut op = site.operator();
    let (k, a, ctl) = (&site.k, site.a.as_str(), site.ctl.as_str());
    let boot_crash = json!({"type": "signals", "data": [["BootCrash", "0xED"]]}).to_string();
    let owner =
        |name: &str| json!({"recast.dev/endpoint": name, "recast.dev/endpoint-namespace": a});

    // 1. In the control namespace: refused outright, in every form.
    let intent_name = control_name(ControlKind::Boot, &site.key("kiosk-01"));
    let inbox_name = control_name(ControlKind::Inbox, &site.key("kiosk-02"));
    let forged_intent = site.write_json(
        "forged-intent.json",
        &configmap(
            &intent_name,
            ctl,
            json!({"recast.dev/boot-intent": "true", "recast.dev/control": "true"}),
            owner("kiosk-01"),
            intent_data(a),
        ),
    );
    refused_as(
        k,
        TENANT_A,
        &["create", "-f", &forged_intent.to_string_lossy()],
    );
    let forged_inbox = site.write_json(
        "forged-inbox.json",
        &configmap(
            &inbox_name,
            ctl,
            json!({"recast.dev/inbox": "true", "recast.dev/control": "true"}),
            owner("kiosk-02"),
            json!({"00000000000000000001-forged": boot_crash}),
        ),
    );
    refused_as(
        k,
        TENANT_A,
        &["create", "-f", &forged_inbox.to_string_lossy()],
    );
    refused_as(k, TENANT_A, &["get", "configmaps", "-n", ctl]);

    // 2. In the tenant's own namespace (where `edit` may write, and where earlier versions
    // kept them): old names and new names alike.
    for (name, labels) in [
        (
            "recast-boot-kiosk-01".to_string(),
            json!({"recast.dev/boot-intent": "true"}),
        ),
        (
            intent_name.clone(),
            json!({"recast.dev/boot-intent": "true", "recast.dev/control": "true"}),
        ),
    ] {
        let f = site.write_json(
            &format!("tenant-{name}.json"),
            &configmap(&name, a, labels, owner("kiosk-01"), intent_data(a)),
        );
        ok_as(k, TENANT_A, &["create", "-f", &f.to_string_lossy()]);
    }
    for (name, labels) in [
        (
            "recast-inbox-kiosk-02".to_string(),
            json!({"recast.dev/inbox": "true"}),
        ),
        (
            inbox_name.clone(),
            json!({"recast.dev/inbox": "true", "recast.dev/control": "true"}),
        ),
    ] {
        let f = site.write_json(
            &format!("tenant-{name}.json"),
            &configmap(
                &name,
                a,
                labels,
                owner("kiosk-02"),
                json!({"00000000000000000001-forged": boot_crash}),
            ),
        );
        ok_as(k, TENANT_A, &["create", "-f", &f.to_string_lossy()]);
    }
    // 3. A forged input on the operator's internal endpoint, without the imaging key.
    let forged_input = json!({"namespace": a, "name": "kiosk-01", "id": "0123456789abcdef0123456789abcdef",
        "sentAt": jiff::Timestamp::now().as_nanosecond() as i64,
        "input": {"type": "networkBooted", "data": {"attemptId": "x"}}});
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-H",
            "x-recast-signature: 00",
            "--data",
            &forged_input.to_string(),
            &format!("http://127.0.0.1:{}/internal/v1/inputs", site.internal_port),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");

    // No effect: the machine boots locally, no attempt starts, nothing gets armed.
    std::thread::sleep(Duration::from_secs(8));
    let script = site.boot_script("52:54:00:a1:00:01");
    assert!(
        script.starts_with("#!ipxe") && !script.contains("wimboot"),
        "a forged intent was served:\n{script}"
    );
    for name in ["kiosk-01", "kiosk-02"] {
        assert!(
            site.status(name)["activeAttempt"].is_null(),
            "a forged input started an attempt on {name}: {}",
            site.status(name)
        );
    }
    assert!(!site.exists(
        "cm",
        &control_name(ControlKind::Boot, &site.key("kiosk-02")),
        ctl
    ));

    // Positive control: the same input in the real inbox (written by the cluster admin, as
    // only the operator's identity may) starts the reimage and arms the boot, which the boot
    // service then serves.
    let real_inbox = site.write_json(
        "real-inbox.json",
        &configmap(
            &inbox_name,
            ctl,
            json!({"recast.dev/inbox": "true", "recast.dev/control": "true"}),
            owner("kiosk-02"),
            json!({"00000000000000000002-admin": boot_crash}),
        ),
    );
    k.kubectl_ok(&["create", "-f", &real_inbox.to_string_lossy()]);
    let armed = control_name(ControlKind::Boot, &site.key("kiosk-02"));
    wait_for(
        Duration::from_secs(60),
        "the real inbox entry to arm kiosk-02",
        || site.exists("cm", &armed, ctl),
    );
    let script = site.boot_script("52:54:00:a1:00:02");
    assert!(
        script.contains("wimboot"),
        "the armed machine was not served:\n{script}"
    );
    // And the tenant can neither remove nor rewrite what the operator armed.
    refused_as(k, TENANT_A, &["delete", "cm", &armed, "-n", ctl]);
    refused_as(
        k,
        TENANT_A,
        &[
            "patch",
            "cm",
            &armed,
            "-n",
            ctl,
            "--type=merge",
            "-p",
            r#"{"data":{"macAddresses":"52:54:00:a1:00:01"}}"#,
        ],
    );
    let forbidden: Vec<String> = op
        .drain()
        .iter()
        .filter(|l| l.contains("panicked"))
        .cloned()
        .collect();
    assert!(forbidden.is_empty(), "{forbidden:?}");
}

/// Registers the operator's webhook for the labelled namespaces; removed when dropped.
struct Webhook {
    k: K8s,
    name: String,
}

impl Webhook {
    fn register(site: &Site, label: &str) -> Webhook {
        let ca = std::fs::read(site.dir.path().join("ca.crt")).unwrap();
        let b64 = {
            let out = Command::new("base64")
                .args(["-w0", &site.dir.path().join("ca.crt").to_string_lossy()])
                .output()
                .unwrap();
            assert!(!ca.is_empty());
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let name = format!("recast-attack-{label}");
        let vwc = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "endpoints.recast.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "rules": [{"apiGroups": ["recast.dev"], "apiVersions": ["*"], "resources": ["endpoints"],
                           "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"recast-attack": label}},
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{}/validate/endpoints", site.webhook_port),
                    "caBundle": b64,
                },
            }],
        });
        let f = site.write_json("vwc.json", &vwc);
        site.k.kubectl_ok(&["apply", "-f", &f.to_string_lossy()]);
        Webhook {
            k: site.k.clone(),
            name,
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.k.kubectl(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

fn endpoint(name: &str, ns: &str, mac: &str) -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "identity": {"macAddresses": [mac]},
            "bootMode": "uefi",
            "image": {"goldenImage": "win11-24h2-2026-01"},
        },
    })
}

#[test]
fn a_tenant_cannot_claim_another_tenants_machine() {
    let Some(site) = Site::new("atk-claim") else {
        return;
    };
    let k = &site.k;
    let (a, ctl) = (site.a.as_str(), site.ctl.as_str());
    let b = k.fresh_namespace("atk-claim-b");
    bind_tenant(k, TENANT_B, &b);
    let label = format!("{}", std::process::id());
    for ns in [a, b.as_str()] {
        k.kubectl_ok(&["label", "namespace", ns, &format!("recast-attack={label}")]);
    }
    let mut op = site.operator();
    op.wait_line(
        "serving the Endpoint admission webhook",
        Duration::from_secs(30),
    );
    let hook = Webhook::register(&site, &label);

    // Tenant B lists tenant A's kiosk-01 MAC in its own Endpoint: refused at admission.
    let thief = site.write_json("thief.json", &endpoint("thief", &b, "52:54:00:a1:00:01"));
    let mut stderr = String::new();
    wait_for(Duration::from_secs(30), "the webhook to answer", || {
        let out = k.kubectl(&["create", "-f", &thief.to_string_lossy(), "--as", TENANT_B]);
        assert!(
            !out.status.success(),
            "the apiserver admitted the thief's Endpoint"
        );
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // While the operator's listener starts, the apiserver says it could not call it.
        stderr.contains("denied the request")
    });
    assert!(
        stderr.contains(&format!("{a}/kiosk-01")) && stderr.contains("52:54:00:a1:00:01"),
        "the refusal does not name the owner: {stderr}"
    );
    assert!(!site.exists("rep", "thief", &b));
    // Upper case is the same machine.
    let upper = site.write_json("upper.json", &endpoint("upper", &b, "52:54:00:A1:00:01"));
    let out = k.kubectl(&["create", "-f", &upper.to_string_lossy(), "--as", TENANT_B]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("denied the request")
    );
    // Positive control: a MAC nobody lists is admitted.
    let own = site.write_json("own.json", &endpoint("own", &b, "52:54:00:b0:00:01"));
    ok_as(k, TENANT_B, &["create", "-f", &own.to_string_lossy()]);

    // Forced in (the webhook unregistered, as during an outage with failurePolicy Ignore):
    // across namespaces, and inside the victim's namespace.
    drop(hook);
    wait_for(
        Duration::from_secs(30),
        "the thief's Endpoint to get in",
        || {
            k.kubectl(&["create", "-f", &thief.to_string_lossy(), "--as", TENANT_B])
                .status
                .success()
                || site.exists("rep", "thief", &b)
        },
    );
    let intruder = site.write_json(
        "intruder.json",
        &endpoint("intruder", a, "52:54:00:a1:00:01"),
    );
    k.kubectl_ok(&["create", "-f", &intruder.to_string_lossy()]);

    // A reimage of the victim is never armed: a Warning says why, and nothing is served.
    k.kubectl_ok(&[
        "patch",
        "rep",
        "kiosk-01",
        "-n",
        a,
        "--type=merge",
        "-p",
        r#"{"spec":{"reimageRequest":{"token":"attack-1","reason":"ambiguous MAC test"}}}"#,
    ]);
    let mut notes = Vec::new();
    wait_for(
        Duration::from_secs(60),
        "an AmbiguousMac warning on kiosk-01",
        || {
            notes = site.events("kiosk-01", "AmbiguousMac");
            !notes.is_empty()
        },
    );
    assert!(
        notes[0].contains(&format!("{a}/intruder")),
        "the warning does not name the other owner: {notes:?}"
    );
    assert!(
        !site.exists(
            "cm",
            &control_name(ControlKind::Boot, &site.key("kiosk-01")),
            ctl
        ),
        "an ambiguous MAC was armed"
    );
    let script = site.boot_script("52:54:00:a1:00:01");
    assert!(
        script.starts_with("#!ipxe") && !script.contains("wimboot"),
        "an ambiguous MAC was served an imaging script:\n{script}"
    );
    op.wait_line(
        "MAC address is listed by several Endpoints",
        Duration::from_secs(10),
    );

    // Across namespaces (a cluster-wide install sees both): the lookup says Ambiguous and the
    // boot choice is the local disk, whatever is armed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let known = rt.block_on(async {
        // Cluster-wide, as a boot replica: no lease.
        let opts = KubeOptions {
            identity: "attack-lookup".into(),
            watch_namespace: None,
            ..kube_test::options(ctl)
        };
        let leader = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = kube_test::backend(k, &opts, leader).await;
        // As the boot service does: lookups from the watch-fed index, once it has loaded.
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let index = backend.start_boot_index(stop);
        let backend = backend.with_boot_index(index);
        for _ in 0..200 {
            match backend.boot_lookup("52:54:00:a1:00:01").await {
                Ok((known, _)) => return known,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("the boot index did not load in 20 s")
    });
    let Known::Ambiguous { owners } = &known else {
        panic!("expected an ambiguous MAC, got {known:?}");
    };
    for owner in [
        format!("{a}/kiosk-01"),
        format!("{a}/intruder"),
        format!("{b}/thief"),
    ] {
        assert!(owners.contains(&owner), "{owner} missing from {owners:?}");
    }
    let armed = BootIntent {
        namespace: b.clone(),
        endpoint: "thief".into(),
        mac_addresses: vec!["52:54:00:a1:00:01".into()],
        attempt_id: "a".into(),
        try_number: 1,
        image: "win11-24h2-2026-01".into(),
        image_digest: Some("ab".into()),
        boot_mode: "uefi".into(),
        armed_at: String::new(),
    };
    assert_eq!(
        intent::choose(&known, Some(&armed), UnknownMacPolicy::Ignore).0,
        BootChoice::Local { discovered: false }
    );
}

/// The boot pods' ServiceAccount, with the chart's RBAC applied for real: it reads what the
/// boot service needs, and every write and every Secret read is refused.
#[test]
fn the_boot_service_account_cannot_write_or_read_secrets() {
    let Some(helm) = recast_tests::helm() else {
        return;
    };
    let Some(site) = Site::new("atk-bootsa") else {
        return;
    };
    let k = &site.k;
    let (a, ctl) = (site.a.as_str(), site.ctl.as_str());
    let release = format!("atk{}", std::process::id());
    let out = Command::new(&helm)
        .args(["template", &release])
        .arg(repo_root().join("charts/recast"))
        .args(["--namespace", ctl, "--set", "boot.enabled=true"])
        .args(["--set", &format!("operator.watchNamespace={a}")])
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("recast-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("recast-helm-config"),
        )
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rbac: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| {
            d["kind"] == "ServiceAccount" || d["apiVersion"] == "rbac.authorization.k8s.io/v1"
        })
        .collect();
    let file = site.write_json(
        "rbac.json",
        &json!({"apiVersion": "v1", "kind": "List", "items": rbac}),
    );
    k.kubectl_ok(&["apply", "-f", &file.to_string_lossy()]);
    let _cleanup = ClusterScoped {
        k: k.clone(),
        names: rbac
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_lowercase(),
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    };
    let boot = format!("system:serviceaccount:{ctl}:{release}-recast-boot");
    wait_for(
        Duration::from_secs(20),
        "the boot ServiceAccount's bindings",
        || {
            k.kubectl(&["get", "rep", "-n", a, "--as", &boot])
                .status
                .success()
        },
    );
    // What it needs works (the positive control).
    ok_as(k, &boot, &["get", "rep", "kiosk-01", "-n", a]);
    ok_as(k, &boot, &["get", "configmaps", "-n", ctl]);
    // Secrets: the BMC credentials next to the Endpoints, and the imaging key's namespace.
    refused_as(k, &boot, &["get", "secret", "bmc-credentials", "-n", a]);
    refused_as(k, &boot, &["get", "secrets", "-n", ctl]);
    // Writes: a forged intent, a status, a spec, an event, the Lease.
    let forged = site.write_json(
        "boot-forged.json",
        &configmap(
            &control_name(ControlKind::Boot, &site.key("kiosk-01")),
            ctl,
            json!({"recast.dev/boot-intent": "true"}),
            json!({"recast.dev/endpoint": "kiosk-01", "recast.dev/endpoint-namespace": a}),
            intent_data(a),
        ),
    );
    refused_as(k, &boot, &["create", "-f", &forged.to_string_lossy()]);
    refused_as(
        k,
        &boot,
        &[
            "patch",
            "rep",
            "kiosk-01",
            "-n",
            a,
            "--type=merge",
            "-p",
            r#"{"spec":{"protected":false}}"#,
        ],
    );
    refused_as(
        k,
        &boot,
        &[
            "patch",
            "rep",
            "kiosk-01",
            "-n",
            a,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#,
        ],
    );
    refused_as(k, &boot, &["delete", "rep", "kiosk-01", "-n", a]);
    refused_as(k, &boot, &["create", "configmap", "x", "-n", a]);
    let lease = site.write_json(
        "lease.json",
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "recast-operator", "namespace": ctl},
                "spec": {"holderIdentity": "boot-pod"}}),
    );
    refused_as(k, &boot, &["create", "-f", &lease.to_string_lossy()]);
}

struct ClusterScoped {
    k: K8s,
    names: Vec<(String, String)>,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for (kind, name) in &self.names {
            let _ = self
                .k
                .kubectl(&["delete", kind, name, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// The embedded backend's half of the rule, on the real binary: loading a second Endpoint that
/// lists a MAC the first one lists is refused with the owner's name, and the store keeps only
/// the first (no harness needed).
#[test]
fn the_embedded_store_refuses_a_second_owner_of_a_mac() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = |docs: &[Value]| {
        let text: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        let p = dir.path().join("fleet.yaml");
        std::fs::write(&p, text.join("---\n")).unwrap();
        p
    };
    let run = |file: &std::path::Path| {
        Command::new(OPERATOR)
            .args(["run", "--backend", "embedded", "--listen", "127.0.0.1:0"])
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--load={}", file.display()))
            .env("RECAST_POWER_DRIVER", "record")
            .env_remove("RECAST_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start recast-operator")
    };
    let victim = endpoint("kiosk-01", "tenant-a", "52:54:00:e0:00:01");
    let thief = endpoint("thief", "tenant-b", "52:54:00:E0:00:01");
    let file = endpoints(&[victim, thief]);
    let child = run(&file);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the operator loaded both:\n{stderr}");
    assert!(
        stderr.contains("Endpoint tenant-b/thief refused")
            && stderr.contains("already belongs to Endpoint tenant-a/kiosk-01"),
        "{stderr}"
    );
    let store =
        recast_operator::store::embedded::EmbeddedStore::open(&dir.path().join("data")).unwrap();
    use recast_crds::manifest::Kind;
    assert!(
        store
            .get(Kind::Endpoint, "tenant-a", "kiosk-01")
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get(Kind::Endpoint, "tenant-b", "thief")
            .unwrap()
            .is_none()
    );
}

/// Two Endpoints of one site whose names cut to the same 15-character computer name: on the
/// Kubernetes backend the admission webhook refuses the second (naming the first and what to
/// do), and a spec.hostname lets it in; a spec.hostname Windows would refuse is stopped by the
/// CRD's own rule.
#[test]
fn a_second_endpoint_with_the_same_computer_name_is_refused_at_admission() {
    let Some(site) = Site::new("atk-name") else {
        return;
    };
    let k = &site.k;
    let a = site.a.as_str();
    let label = format!("name-{}", std::process::id());
    k.kubectl_ok(&["label", "namespace", a, &format!("recast-attack={label}")]);
    let mut op = site.operator();
    op.wait_line(
        "serving the Endpoint admission webhook",
        Duration::from_secs(30),
    );
    let _hook = Webhook::register(&site, &label);
    let first = site.write_json(
        "first.json",
        &endpoint("lobby-kiosk-north-1", a, "52:54:00:c0:00:01"),
    );
    ok_as(k, TENANT_A, &["create", "-f", &first.to_string_lossy()]);
    let second_doc = endpoint("lobby-kiosk-north-2", a, "52:54:00:c0:00:02");
    let second = site.write_json("second.json", &second_doc);
    let mut stderr = String::new();
    wait_for(Duration::from_secs(30), "the webhook to answer", || {
        let out = k.kubectl(&["create", "-f", &second.to_string_lossy(), "--as", TENANT_A]);
        assert!(
            !out.status.success(),
            "the apiserver admitted a second LOBBY-KIOSK-NOR"
        );
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.contains("denied the request")
    });
    assert!(
        stderr.contains("LOBBY-KIOSK-NOR")
            && stderr.contains(&format!("{a}/lobby-kiosk-north-1"))
            && stderr.contains("spec.hostname"),
        "{stderr}"
    );
    assert!(!site.exists("rep", "lobby-kiosk-north-2", a));
    // The way out the message names: a computer name of its own.
    let mut named = second_doc.clone();
    named["spec"]["hostname"] = json!("LOBBY-NORTH-2");
    let named = site.write_json("named.json", &named);
    ok_as(k, TENANT_A, &["create", "-f", &named.to_string_lossy()]);
    // A computer name Windows would refuse never gets that far.
    let mut bad = endpoint("lobby-kiosk-3", a, "52:54:00:c0:00:03");
    bad["spec"]["hostname"] = json!("LOBBY_3");
    let bad = site.write_json("bad.json", &bad);
    let out = k.kubectl(&["create", "-f", &bad.to_string_lossy(), "--as", TENANT_A]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("spec.hostname must be a Windows computer name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The embedded backend's half: `recastctl apply`'s store refuses the second Endpoint with the
/// same message and keeps the first; a spec.hostname lets the second in.
#[test]
fn the_embedded_store_refuses_a_second_endpoint_with_the_same_computer_name() {
    use recast_crds::manifest::Kind;
    let dir = tempfile::tempdir().unwrap();
    let store =
        recast_operator::store::embedded::EmbeddedStore::open(&dir.path().join("data")).unwrap();
    store
        .apply(
            &endpoint("lobby-kiosk-north-1", "site-a", "52:54:00:c0:00:01"),
            "default",
        )
        .unwrap();
    let second = endpoint("lobby-kiosk-north-2", "site-a", "52:54:00:c0:00:02");
    let err = store.apply(&second, "default").unwrap_err().to_string();
    assert!(
        err.contains("LOBBY-KIOSK-NOR")
            && err.contains("site-a/lobby-kiosk-north-1")
            && err.contains("spec.hostname"),
        "{err}"
    );
    assert!(
        store
            .get(Kind::Endpoint, "site-a", "lobby-kiosk-north-2")
            .unwrap()
            .is_none()
    );
    // Another site may use the name; a spec.hostname settles it in this one.
    store
        .apply(
            &endpoint("lobby-kiosk-north-2", "site-b", "52:54:00:c0:00:03"),
            "default",
        )
        .unwrap();
    let mut named = second.clone();
    named["spec"]["hostname"] = json!("LOBBY-NORTH-2");
    store.apply(&named, "default").unwrap();
    // Taking the first one's name with spec.hostname is refused too, case-blind.
    let mut taken = endpoint("lobby-kiosk-4", "site-a", "52:54:00:c0:00:04");
    taken["spec"]["hostname"] = json!("lobby-kiosk-nor");
    assert!(store.apply(&taken, "default").is_err());
    assert!(
        store
            .get(Kind::Endpoint, "site-a", "lobby-kiosk-north-1")
            .unwrap()
            .is_some()
    );
}
