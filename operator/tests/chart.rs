//! The Helm chart (`charts/recast`): its CRDs equal the generated ones; `helm lint` and
//! `helm template` for every value set in `charts/recast/ci/`; every rendered object accepted
//! by the real kube-apiserver (`make k8s-up`) in a server-side dry run with strict field
//! validation; the operator's pods within Pod Security's `restricted` level; and the chart's
//! RBAC checked as the operator's ServiceAccount (impersonation): `kubectl auth can-i` for what
//! it must and must not do, and the real `recast-operator` started with the chart's flags doing
//! its job under those rights.
//!
//! helm is built from its Go module by `tests/helm/setup.sh`; without it these tests skip
//! loudly unless RECAST_REQUIRE_HELM=1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use recast_tests::{K8s, free_port, repo_root, wait_for};
use serde_json::{Value, json};

#[path = "support/kube_test.rs"]
mod kube_test;

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
/// The harness's apiserver (tests/k8s/kube/go.mod); `helm template` renders for it.
const KUBE_VERSION: &str = "1.35.4";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/recast")
}

/// Every value set the chart is tested with, by file stem.
fn value_sets() -> Vec<(String, PathBuf)> {
    let mut sets: Vec<_> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("read charts/recast/ci")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            (name.trim_end_matches("-values.yaml").to_string(), p)
        })
        .collect();
    sets.sort();
    sets
}

struct Helm(PathBuf);

impl Helm {
    fn get() -> Option<Helm> {
        recast_tests::helm().map(Helm)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.0)
            .args(args)
            .env(
                "HELM_CACHE_HOME",
                std::env::temp_dir().join("recast-helm-cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                std::env::temp_dir().join("recast-helm-config"),
            )
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.0.display()))
    }

    /// `helm template` with a value file and `--set`s; Err(stderr) when helm refuses.
    fn template(
        &self,
        release: &str,
        namespace: &str,
        values: Option<&Path>,
        sets: &[&str],
    ) -> Result<Vec<Value>, String> {
        let chart = chart_dir();
        let mut args = vec![
            "template".to_string(),
            release.to_string(),
            chart.to_string_lossy().into_owned(),
            "--namespace".into(),
            namespace.into(),
            "--kube-version".into(),
            KUBE_VERSION.into(),
        ];
        if let Some(v) = values {
            args.push("--values".into());
            args.push(v.to_string_lossy().into_owned());
        }
        for s in sets {
            args.push("--set".into());
            args.push(s.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(documents(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The non-empty documents of a multi-document YAML stream, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v: serde_yaml::Value =
                serde::Deserialize::deserialize(d).expect("helm printed invalid YAML");
            serde_json::to_value(v).expect("YAML document as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"] == kind
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(name_suffix))
    })
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    k.sort();
    k
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {workload}"))
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn release_name(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Without helm.

/// charts/recast/crds holds exactly the generated CRDs (`make crds` writes both).
#[test]
fn chart_crds_are_the_generated_crds() {
    let generated = repo_root().join("crds/yaml");
    let chart = chart_dir().join("crds");
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&generated),
        names(&chart),
        "charts/recast/crds must hold the same files as crds/yaml; run `make crds`"
    );
    for name in names(&generated) {
        let a = std::fs::read(generated.join(&name)).unwrap();
        let b = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/recast/crds/{name} differs from crds/yaml/{name}; run `make crds`"
        );
    }
}

/// Every flag the chart passes to recast-operator exists (`recast-operator run --help`).
#[test]
fn chart_passes_only_flags_recast_operator_knows() {
    let help = Command::new(OPERATOR)
        .args(["run", "--help"])
        .output()
        .expect("recast-operator run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let mut checked = 0;
    for path in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let path = path.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let Some(flag) = line.trim().strip_prefix("- --") else {
                continue;
            };
            let flag = flag.split(['=', ' ']).next().unwrap();
            assert!(
                help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
                "{} passes --{flag}, which `recast-operator run --help` does not list",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "found only {checked} flags in the templates");
}

// ---------------------------------------------------------------------------------------------
// helm lint and template.

#[test]
fn helm_lint_passes_for_every_value_set() {
    let Some(helm) = Helm::get() else { return };
    let sets = value_sets();
    assert!(sets.len() >= 5, "value sets: {sets:?}");
    for (name, path) in sets {
        let out = helm.run(&[
            "lint",
            "--strict",
            &chart_dir().to_string_lossy(),
            "--kube-version",
            KUBE_VERSION,
            "--set",
            "operator.watchNamespace=fleet",
            "--values",
            &path.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "helm lint --strict with {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The chart packages (what a registry or a GitOps tool receives) and the package holds the
/// CRDs and the schema.
#[test]
fn helm_package_holds_the_crds_and_the_schema() {
    let Some(helm) = Helm::get() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let out = helm.run(&[
        "package",
        &chart_dir().to_string_lossy(),
        "--destination",
        &out_dir.path().to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "helm package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tgz = out_dir.path().join("recast-0.1.0.tgz");
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&tgz)
        .output()
        .expect("tar -tzf");
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "recast/Chart.yaml",
        "recast/values.schema.json",
        "recast/templates/NOTES.txt",
        "recast/crds/endpoints.recast.dev.yaml",
        "recast/crds/goldenimages.recast.dev.yaml",
        "recast/crds/reimagewaves.recast.dev.yaml",
        "recast/crds/remediationpolicies.recast.dev.yaml",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} missing from:\n{list}"
        );
    }
}

/// What each value set must render, object by object.
#[test]
fn helm_template_renders_what_each_value_set_asks_for() {
    let Some(helm) = Helm::get() else { return };

    // Defaults: 2 replicas with leader election, cluster-wide RBAC, no boot service.
    let d = helm
        .template("rc", "recast", None, &[])
        .expect("render the defaults");
    assert_eq!(
        kinds(&d),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Deployment",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "Role",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingWebhookConfiguration"
        ]
    );
    // The agent gateway: its own Deployment of 2 replicas with its own identity, state in the
    // release namespace, a certificate the chart made (agents trust its ca.crt), a Service.
    let gw = find(&d, "Deployment", "-gateway").unwrap();
    assert_eq!(gw["spec"]["replicas"], 2);
    assert_eq!(
        gw["spec"]["template"]["spec"]["serviceAccountName"],
        "rc-recast-gateway"
    );
    let ga = args(container(gw, "gateway"));
    for want in [
        "--backend=kube",
        "--role=gateway",
        "--control-namespace=$(POD_NAMESPACE)",
        "--gateway-listen=0.0.0.0:8443",
        "--gateway-cert=/etc/recast/gateway/tls.crt",
    ] {
        assert!(ga.contains(&want.to_string()), "{want} missing from {ga:?}");
    }
    assert!(
        !ga.iter().any(|x| x.starts_with("--power-driver")),
        "{ga:?}"
    );
    let gw_tls = find(&d, "Secret", "-gateway-tls").unwrap();
    assert!(gw_tls["data"]["ca.crt"].is_string() && gw_tls["data"]["tls.key"].is_string());
    assert_eq!(
        find(&d, "Service", "-gateway").unwrap()["spec"]["selector"]["app.kubernetes.io/component"],
        "gateway"
    );
    let gw_role = find(&d, "Role", "-gateway-control").unwrap().to_string();
    assert!(
        gw_role.contains("configmaps")
            && !gw_role.contains("delete")
            && !gw_role.contains("secrets"),
        "{gw_role}"
    );
    let gw_cr = find(&d, "ClusterRole", "-gateway").unwrap().to_string();
    assert!(
        !gw_cr.contains("status") && !gw_cr.contains("patch") && !gw_cr.contains("secrets"),
        "the gateway reads the fleet's objects, writes none: {gw_cr}"
    );
    let op = find(&d, "Deployment", "-operator").unwrap();
    assert_eq!(op["spec"]["replicas"], 2);
    let c = container(op, "operator");
    let a = args(c);
    for want in [
        "run",
        "--backend=kube",
        "--lease-namespace=$(POD_NAMESPACE)",
        "--identity=$(POD_NAME)",
        "--lease-duration-seconds=15",
        "--power-driver=redfish",
        "--control-namespace=$(POD_NAMESPACE)",
        "--webhook-listen=0.0.0.0:9443",
        "--webhook-cert=/etc/recast/webhook/tls.crt",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    assert!(!a.iter().any(|x| x.starts_with("--boot-http")), "{a:?}");
    // No boot pods: nothing to take inputs from.
    assert!(
        !a.iter().any(|x| x.starts_with("--internal-listen")),
        "{a:?}"
    );
    // The webhook: Endpoints only, failing closed, at the operator Service, with its CA.
    let vwc = find(&d, "ValidatingWebhookConfiguration", "-endpoints").unwrap();
    let hook = &vwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["rules"][0]["resources"], json!(["endpoints"]));
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(
        hook["clientConfig"]["service"]["name"],
        "rc-recast-operator"
    );
    assert_eq!(
        hook["clientConfig"]["service"]["path"],
        "/validate/endpoints"
    );
    let tls = find(&d, "Secret", "-webhook-tls").unwrap();
    assert_eq!(hook["clientConfig"]["caBundle"], tls["data"]["ca.crt"]);
    // No cluster-wide Secret access, and no ConfigMap rights outside the release namespace.
    let cr = find(&d, "ClusterRole", "-operator").unwrap().to_string();
    assert!(
        !cr.contains("secrets") && !cr.contains("configmaps"),
        "{cr}"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(
        op["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let lease_role = find(&d, "Role", "-leader-election").unwrap();
    assert_eq!(
        lease_role["rules"][1]["resourceNames"],
        json!(["recast-operator"])
    );
    assert_eq!(
        find(&d, "PodDisruptionBudget", "-operator").unwrap()["spec"]["maxUnavailable"],
        1
    );

    // Bring-your-own RBAC: the ServiceAccount only.
    let byo = helm
        .template("rc", "recast", None, &["rbac.create=false"])
        .expect("render rbac.create=false");
    assert!(
        !byo.iter()
            .any(|d| d["apiVersion"] == "rbac.authorization.k8s.io/v1"),
        "rbac.create=false still rendered RBAC: {:?}",
        kinds(&byo)
    );
    assert!(find(&byo, "ServiceAccount", "rc-recast").is_some());

    // proxyDHCP on an interface: a DaemonSet on the node's network, root with only
    // NET_BIND_SERVICE and NET_RAW, every input mounted.
    let proxy = chart_dir().join("ci/kube-boot-proxy-values.yaml");
    let d = helm
        .template("rc", "recast", Some(&proxy), &[])
        .expect("render kube-boot-proxy");
    assert!(kinds(&d).contains(&"ServiceMonitor".to_string()));
    let ds = find(&d, "DaemonSet", "-boot").expect("a boot DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        spec["nodeSelector"],
        json!({"recast.dev/provisioning": "true"})
    );
    // The boot pods' own read-only identity, and the boot-only role that forwards inputs.
    assert_eq!(spec["serviceAccountName"], "rc-recast-boot");
    assert_eq!(spec["automountServiceAccountToken"], true);
    let c = container(ds, "boot");
    let a = args(c);
    assert!(!a.iter().any(|x| x.starts_with("--lease")), "{a:?}");
    assert!(!a.iter().any(|x| x.starts_with("--power-driver")), "{a:?}");
    for want in [
        "--role=boot",
        "--control-namespace=$(POD_NAMESPACE)",
        "--forward-inputs-to=http://rc-recast-operator.recast.svc:8090",
        "--dhcp=proxy",
        "--dhcp-interface=eth1",
        "--dhcp-server-ip=$(RECAST_SERVER_IP)",
        "--dhcp-ports=67,4011",
        "--tftp=0.0.0.0:69",
        "--boot-http=0.0.0.0:8081",
        "--boot-url=http://$(RECAST_SERVER_IP):8081",
        "--imaging-key-file=/etc/recast/imaging/imaging.key",
        "--wds-server=10.40.0.5",
        "--gateway-url=https://recast-gateway.example.org",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["NET_BIND_SERVICE", "NET_RAW"])
    );
    let env = c["env"].as_array().unwrap();
    let server_ip = env
        .iter()
        .find(|e| e["name"] == "RECAST_SERVER_IP")
        .unwrap();
    assert_eq!(
        server_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    // The operator takes the boot pods' inputs and verifies them with the same key.
    let op = find(&d, "Deployment", "-operator").unwrap();
    let oa = args(container(op, "operator"));
    for want in [
        "--internal-listen=0.0.0.0:8090",
        "--imaging-key-file=/etc/recast/imaging/imaging.key",
    ] {
        assert!(oa.contains(&want.to_string()), "{want} missing from {oa:?}");
    }
    assert!(
        op["spec"]["template"]["spec"]["volumes"]
            .to_string()
            .contains("recast-imaging-key")
    );
    // The Secret the values name is used; the chart creates none of its own.
    assert!(find(&d, "Secret", "imaging-key").is_none());
    let vols = spec["volumes"].to_string();
    assert!(vols.contains("recast-imaging-key") && vols.contains("recast-winpe-kit"));
    // The metrics peers the values name.
    let np = find(&d, "NetworkPolicy", "-operator").unwrap();
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );

    // Full DHCP: a Deployment of one, the lease table mounted, a digest-pinned image.
    let full = chart_dir().join("ci/kube-boot-full-values.yaml");
    let d = helm
        .template(
            "rc",
            "recast",
            Some(&full),
            &["operator.watchNamespace=fleet"],
        )
        .expect("render kube-boot-full");
    let dep = find(&d, "Deployment", "-boot").expect("a boot Deployment");
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let c = container(dep, "boot");
    assert!(
        c["image"]
            .as_str()
            .unwrap()
            .ends_with("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );
    let a = args(c);
    for want in [
        "--dhcp=full",
        "--dhcp-leases=/etc/recast/dhcp/leases",
        "--dhcp-router=10.40.0.1",
        "--dhcp-dns=10.40.0.1",
        "--boot-url=http://10.40.0.2:8081",
        "--imaging-environment=linux",
        "--watch-namespace=fleet",
        "--multicast-interface=eth1",
        "--multicast-group=239.255.77.0",
        "--multicast-ports=9000",
        "--multicast-max-mbps=300",
        "--multicast-automatic-wait=60s",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    assert!(!a.iter().any(|x| x.starts_with("--tftp")), "{a:?}");
    // DHCP 67 still needs NET_BIND_SERVICE; no interface, so no NET_RAW.
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        json!(["NET_BIND_SERVICE"])
    );
    let leases = find(&d, "ConfigMap", "-dhcp-leases").unwrap();
    assert!(
        leases["data"]["leases"]
            .as_str()
            .unwrap()
            .contains("52:54:00:a1:00:01 10.40.0.101 kiosk-01")
    );
    // A namespaced install: the ClusterRole is bound only in the watched namespace.
    assert!(find(&d, "ClusterRoleBinding", "-operator").is_none());
    let rb = find(&d, "RoleBinding", "-operator").unwrap();
    assert_eq!(rb["metadata"]["namespace"], "fleet");
    // BMC Secrets: readable only in the watched namespace.
    let sr = find(&d, "Role", "-bmc-secrets").unwrap();
    assert_eq!(sr["metadata"]["namespace"], "fleet");
    assert_eq!(sr["rules"][0]["verbs"], json!(["get"]));
    assert_eq!(
        find(&d, "ValidatingWebhookConfiguration", "-endpoints").unwrap()["webhooks"][0]["namespaceSelector"]
            ["matchLabels"]["kubernetes.io/metadata.name"],
        "fleet"
    );
    // Without imagingKeySecret the chart makes a 32-byte key.
    let key = find(&d, "Secret", "-imaging-key").expect("an imaging key Secret");
    let b64 = key["data"]["imaging.key"].as_str().unwrap();
    assert_eq!(b64.len(), 44, "32 bytes are 44 base64 characters: {b64}");

    // HTTP boot on a high port only: the boot pod runs without root and without capabilities.
    let unpriv = chart_dir().join("ci/kube-unprivileged-boot-values.yaml");
    let d = helm
        .template("rc", "recast", Some(&unpriv), &[])
        .expect("render kube-unprivileged-boot");
    let c = container(find(&d, "DaemonSet", "-boot").unwrap(), "boot");
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(
        find(&d, "Deployment", "-operator").unwrap()["spec"]["replicas"],
        3
    );

    // Embedded: one pod on its volume, boot service and gateway inside it, no RBAC rules.
    let emb = chart_dir().join("ci/embedded-gateway-values.yaml");
    let d = helm
        .template("rc", "recast", Some(&emb), &[])
        .expect("render embedded-gateway");
    for absent in [
        "ClusterRole",
        "Role",
        "DaemonSet",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(
            !kinds(&d).contains(&absent.to_string()),
            "{absent} rendered"
        );
    }
    let op = find(&d, "Deployment", "-operator").unwrap();
    assert_eq!(op["spec"]["replicas"], 1);
    assert_eq!(op["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(op["spec"]["template"]["spec"]["hostNetwork"], true);
    assert_eq!(
        op["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    let a = args(container(op, "operator"));
    for want in [
        "--backend=embedded",
        "--gateway-listen=0.0.0.0:8443",
        "--gateway-cert=/etc/recast/gateway/tls.crt",
        "--dhcp=proxy",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    assert!(
        a.contains(&"--load=/etc/recast/manifests/manifests.yaml".to_string()),
        "{a:?}"
    );
    let manifests = find(&d, "Secret", "-manifests").expect("the manifests Secret");
    assert!(
        manifests["stringData"]["manifests.yaml"]
            .as_str()
            .unwrap()
            .contains("name: kiosk-01")
    );
    let pvc = find(&d, "PersistentVolumeClaim", "-data").unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
    let ing = find(&d, "Ingress", "-gateway").unwrap();
    assert_eq!(
        ing["spec"]["tls"][0]["secretName"],
        "recast-gateway-ingress-tls"
    );
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        find(&d, "Service", "-gateway").unwrap()["spec"]["ports"][0]["targetPort"],
        "gateway"
    );
}

/// Values that cannot work are refused at render time with a message that says what to set.
#[test]
fn helm_template_refuses_values_that_cannot_work() {
    let Some(helm) = Helm::get() else { return };
    let cases: &[(&[&str], &str)] = &[
        // A misspelt key: the schema, not silence.
        (
            &["operator.replica=3"],
            "additional properties 'replica' not allowed",
        ),
        (
            &["boot.dhcp.mode=of"],
            "value must be one of 'off', 'proxy', 'full'",
        ),
        (&["boot.serverIP=10.40.0.300"], "/boot/serverIP"),
        (&["image.digest=latest"], "/image/digest"),
        // The gateway's certificate comes from one place.
        (
            &["gateway.tlsSecret=t", "gateway.certManager.enabled=true"],
            "choose one",
        ),
        (
            &["gateway.certManager.enabled=true"],
            "gateway.certManager.enabled needs gateway.certManager.issuerRef",
        ),
        (
            &["boot.enabled=true", "boot.dhcp.mode=full"],
            "boot.dhcp.mode=full needs boot.dhcp.leases",
        ),
        (
            &[
                "boot.enabled=true",
                "boot.kind=Deployment",
                "boot.replicas=2",
                "boot.dhcp.mode=proxy",
            ],
            "two DHCP servers on one provisioning network",
        ),
        (
            &[
                "backend=embedded",
                "gateway.enabled=true",
                "gateway.tlsSecret=t",
                "gateway.ingress.enabled=true",
            ],
            "gateway.ingress.enabled needs gateway.ingress.host",
        ),
    ];
    for (sets, expect) in cases {
        match helm.template("rc", "recast", None, sets) {
            Ok(_) => panic!("helm template accepted {sets:?}"),
            Err(stderr) => assert!(
                stderr.contains(expect),
                "helm template {sets:?}: expected {expect:?} in:\n{stderr}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// On the real kube-apiserver.

/// Objects the harness cannot serve: the Prometheus Operator's CRDs are not installed there.
fn served_by_harness(doc: &Value) -> bool {
    doc["apiVersion"] != "monitoring.coreos.com/v1"
}

fn write_docs(dir: &Path, name: &str, docs: &[&Value]) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

/// Every rendered object passes the apiserver's schema (strict field validation: an unknown or
/// misplaced field fails) in a server-side dry run, and the operator's pods are within Pod
/// Security's `restricted` level; pods on the node's network (the boot service) are flagged.
#[test]
fn rendered_chart_passes_server_side_dry_run() {
    let Some(helm) = Helm::get() else { return };
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let tmp = tempfile::tempdir().unwrap();
    for (name, values) in value_sets() {
        let ns = k.fresh_namespace("chart-dry");
        let fleet = k.fresh_namespace("chart-fleet");
        // The apiserver then warns about what a workload's pods would violate.
        k.kubectl_ok(&[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/warn=restricted",
        ]);
        let watch = format!("operator.watchNamespace={fleet}");
        let sets: Vec<&str> = if name.contains("full") {
            vec![&watch]
        } else {
            vec![]
        };
        let docs = helm
            .template(&release_name("dry"), &ns, Some(&values), &sets)
            .unwrap_or_else(|e| panic!("render {name}: {e}"));
        let served: Vec<&Value> = docs.iter().filter(|d| served_by_harness(d)).collect();
        assert!(!served.is_empty());
        // One object at a time, so each warning belongs to the object that caused it.
        for (i, doc) in served.iter().enumerate() {
            let what = format!(
                "{name}: {} {}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            let file = write_docs(tmp.path(), &format!("{name}-{i}"), &[doc]);
            let out = k.kubectl(&[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "--server-side",
                "--field-manager=helm",
                "-f",
                &file.to_string_lossy(),
            ]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.contains("(server dry run)"),
                "server-side dry run of {what} failed:\n{stdout}{stderr}"
            );
            let violations: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("would violate PodSecurity"))
                .collect();
            let pod = &doc["spec"]["template"]["spec"];
            if pod["hostNetwork"] == true {
                assert!(
                    violations.iter().any(|l| l.contains("hostNetwork")),
                    "{what}: expected the host network to be flagged:\n{stderr}"
                );
            } else {
                assert!(
                    violations.is_empty(),
                    "{what}: its pods must meet the restricted Pod Security level:\n{stderr}"
                );
            }
        }
    }
}

/// The subject the chart's RBAC binds: the operator's ServiceAccount.
fn service_account(docs: &[Value]) -> (String, String) {
    let sa = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .expect("a ServiceAccount");
    (
        sa["metadata"]["namespace"].as_str().unwrap().to_string(),
        sa["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

/// Applies the chart's ServiceAccount and RBAC objects for real, removing the cluster-scoped
/// ones when dropped.
struct AppliedRbac {
    k: K8s,
    cluster_scoped: Vec<(String, String)>,
}

impl AppliedRbac {
    fn apply(k: &K8s, docs: &[Value], dir: &Path) -> AppliedRbac {
        let rbac: Vec<&Value> = docs
            .iter()
            .filter(|d| {
                d["kind"] == "ServiceAccount" || d["apiVersion"] == "rbac.authorization.k8s.io/v1"
            })
            .collect();
        let file = write_docs(dir, "rbac", &rbac);
        k.kubectl_ok(&["apply", "-f", &file.to_string_lossy()]);
        let cluster_scoped = rbac
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_lowercase(),
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        AppliedRbac {
            k: k.clone(),
            cluster_scoped,
        }
    }
}

impl Drop for AppliedRbac {
    fn drop(&mut self) {
        for (kind, name) in &self.cluster_scoped {
            let _ = self
                .k
                .kubectl(&["delete", kind, name, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// `kubectl auth can-i VERB RESOURCE [NAME] -n NS --as SA`: true when allowed.
fn can_i(k: &K8s, sa: &(String, String), verb: &str, resource: &str, ns: &str) -> bool {
    let user = format!("system:serviceaccount:{}:{}", sa.0, sa.1);
    can_i_as(k, &user, verb, resource, ns)
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as USER`.
fn can_i_as(k: &K8s, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let mut a = vec!["auth", "can-i", verb];
    a.extend(resource.split(' '));
    a.extend(["-n", ns, "--as", user]);
    let out = k.kubectl(&a);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {verb} {resource}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What the operator must be able to do in a namespace it watches.
const ALLOWED: &[(&str, &str)] = &[
    ("get", "endpoints.recast.dev"),
    ("list", "endpoints.recast.dev"),
    ("watch", "endpoints.recast.dev"),
    ("patch", "endpoints.recast.dev"),
    ("patch", "endpoints.recast.dev --subresource=status"),
    ("list", "remediationpolicies.recast.dev"),
    ("watch", "remediationpolicies.recast.dev"),
    (
        "patch",
        "remediationpolicies.recast.dev --subresource=status",
    ),
    ("list", "goldenimages.recast.dev"),
    ("watch", "goldenimages.recast.dev"),
    ("patch", "goldenimages.recast.dev --subresource=status"),
    ("list", "reimagewaves.recast.dev"),
    ("patch", "reimagewaves.recast.dev --subresource=status"),
    ("create", "events.events.k8s.io"),
    ("patch", "events.events.k8s.io"),
];

/// Its control state (boot intents, journals, inboxes): in the release namespace only.
const CONTROL: &[(&str, &str)] = &[
    ("get", "configmaps"),
    ("list", "configmaps"),
    ("watch", "configmaps"),
    ("create", "configmaps"),
    ("patch", "configmaps"),
    ("delete", "configmaps"),
];

/// What it must never be able to do: people and GitOps own the specs; it never enumerates
/// Secrets; it touches no workloads and no RBAC.
const FORBIDDEN: &[(&str, &str)] = &[
    ("create", "endpoints.recast.dev"),
    ("update", "endpoints.recast.dev"),
    ("delete", "endpoints.recast.dev"),
    ("patch", "goldenimages.recast.dev"),
    ("delete", "goldenimages.recast.dev"),
    ("patch", "remediationpolicies.recast.dev"),
    ("patch", "reimagewaves.recast.dev"),
    ("create", "reimagewaves.recast.dev"),
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "secrets"),
    ("update", "configmaps"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "events"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "leases.coordination.k8s.io"),
];

/// Cluster-wide install: allowed everywhere it must be, and nothing more. The Lease rights hold
/// only in the release namespace and only for the recast-operator Lease.
#[test]
fn operator_service_account_has_exactly_the_rights_it_needs() {
    let Some(helm) = Helm::get() else { return };
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let tmp = tempfile::tempdir().unwrap();
    let ns = k.fresh_namespace("chart-rbac");
    let other = k.fresh_namespace("chart-rbac-other");
    let docs = helm
        .template(&release_name("rbac"), &ns, None, &[])
        .expect("render the defaults");
    let sa = service_account(&docs);
    let _rbac = AppliedRbac::apply(&k, &docs, tmp.path());
    // RBAC is evaluated from an informer cache in the apiserver: wait for the bindings.
    wait_for(
        Duration::from_secs(20),
        "the RBAC bindings to take effect",
        || can_i(&k, &sa, "list", "endpoints.recast.dev", &other),
    );
    for target in [&ns, &other] {
        for (verb, resource) in ALLOWED {
            assert!(
                can_i(&k, &sa, verb, resource, target),
                "the operator cannot {verb} {resource} in {target}"
            );
        }
        for (verb, resource) in FORBIDDEN {
            // Creating its Lease is allowed in its own namespace only.
            if *resource == "leases.coordination.k8s.io" && target == &ns {
                continue;
            }
            assert!(
                !can_i(&k, &sa, verb, resource, target),
                "the operator may {verb} {resource} in {target}; the chart grants too much"
            );
        }
    }
    // Control state in its own namespace, and no ConfigMap right where tenants live.
    for (verb, resource) in CONTROL {
        assert!(
            can_i(&k, &sa, verb, resource, &ns),
            "the operator cannot {verb} {resource} in its control namespace {ns}"
        );
        assert!(
            !can_i(&k, &sa, verb, resource, &other),
            "the operator may {verb} {resource} in the tenant namespace {other}"
        );
    }
    // The Lease: create in its namespace; get and patch only the recast-operator Lease.
    let lease = "leases.coordination.k8s.io";
    assert!(can_i(&k, &sa, "create", lease, &ns));
    assert!(can_i(
        &k,
        &sa,
        "get",
        &format!("{lease}/recast-operator"),
        &ns
    ));
    assert!(can_i(
        &k,
        &sa,
        "patch",
        &format!("{lease}/recast-operator"),
        &ns
    ));
    assert!(!can_i(
        &k,
        &sa,
        "patch",
        &format!("{lease}/another-lease"),
        &ns
    ));
    assert!(!can_i(
        &k,
        &sa,
        "delete",
        &format!("{lease}/recast-operator"),
        &ns
    ));
    assert!(!can_i(&k, &sa, "list", lease, &ns));
    assert!(!can_i(
        &k,
        &sa,
        "patch",
        &format!("{lease}/recast-operator"),
        &other
    ));
}

/// The boot pods' ServiceAccount.
fn boot_service_account(docs: &[Value]) -> (String, String) {
    let sa = find(docs, "ServiceAccount", "-boot").expect("a boot ServiceAccount");
    (
        sa["metadata"]["namespace"].as_str().unwrap().to_string(),
        sa["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

/// A kubeconfig that authenticates as the harness's admin and impersonates `user`, so a process
/// given it acts with exactly that user's RBAC.
fn impersonating_kubeconfig(k: &K8s, user: &str, dir: &Path) -> PathBuf {
    let admin = std::fs::read_to_string(&k.kubeconfig).unwrap();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    let users = cfg["users"].as_sequence_mut().unwrap();
    users[0]["user"]["as"] = serde_yaml::Value::String(user.to_string());
    let path = dir.join("impersonating-kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

/// Expands `$(NAME)` the way the kubelet does in a container's args.
fn expand(arg: &str, env: &[(&str, String)]) -> String {
    env.iter().fold(arg.to_string(), |a, (k, v)| {
        a.replace(&format!("$({k})"), v)
    })
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Like `wait_for`, but a timeout shows what the process logged.
    fn wait(&mut self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out after {limit:?} waiting for {what}; the process logged:\n{}",
            self.drain().join("\n")
        );
    }

    fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts recast-operator with the args of a rendered workload's container, as the chart's
/// ServiceAccount; `replace` swaps flags whose values only make sense in a pod.
fn start_as(
    workload: &Value,
    container_name: &str,
    kubeconfig: &Path,
    env: &[(&str, String)],
    replace: &[(&str, String)],
) -> Running {
    let c = container(workload, container_name);
    let args: Vec<String> = args(c)
        .iter()
        .map(|a| {
            let flag = a.split('=').next().unwrap();
            match replace.iter().find(|(f, _)| *f == flag) {
                Some((f, v)) => format!("{f}={v}"),
                None => expand(a, env),
            }
        })
        .collect();
    let mut cmd = Command::new(OPERATOR);
    cmd.args(&args)
        .env("KUBECONFIG", kubeconfig)
        // RECAST_LOG=debug shows the controller's watch errors when a test fails.
        .env(
            "RECAST_LOG",
            std::env::var("RECAST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("RECAST_POWER_DRIVER")
        .env_remove("RECAST_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start recast-operator");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        lines,
        seen: Vec::new(),
    }
}

fn json_of(k: &K8s, args: &[&str]) -> Value {
    serde_json::from_str(&k.kubectl_ok(args)).unwrap()
}

/// A namespaced install, for real: the operator started with the chart's flags as the chart's
/// ServiceAccount takes the Lease, adds its finalizer, writes Endpoint and GoldenImage status
/// and publishes Events; the boot service with the chart's flags answers from the same rights;
/// and nothing outside the watched namespace is visible to it.
#[test]
fn operator_does_its_job_with_the_charts_flags_and_rbac() {
    let Some(helm) = Helm::get() else { return };
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let tmp = tempfile::tempdir().unwrap();
    let ns = k.fresh_namespace("chart-run");
    let fleet = k.fresh_namespace("chart-run-fleet");
    let outside = k.fresh_namespace("chart-run-outside");
    let watch = format!("operator.watchNamespace={fleet}");
    let values = chart_dir().join("ci/kube-unprivileged-boot-values.yaml");
    let docs = helm
        .template(
            &release_name("run"),
            &ns,
            Some(&values),
            &[&watch, "operator.powerDriver=record"],
        )
        .expect("render a namespaced install");
    let sa = service_account(&docs);
    let _rbac = AppliedRbac::apply(&k, &docs, tmp.path());
    wait_for(
        Duration::from_secs(20),
        "the RBAC bindings to take effect",
        || can_i(&k, &sa, "list", "endpoints.recast.dev", &fleet),
    );
    // Bound only where it watches.
    assert!(!can_i(&k, &sa, "list", "endpoints.recast.dev", &outside));
    assert!(!can_i(&k, &sa, "get", "secrets", &outside));

    // A fleet that needs no network: an image already checked (the status the GoldenImage
    // controller would have written), an endpoint without a BMC with a reimage requested.
    let objects = format!(
        r#"
apiVersion: recast.dev/v1alpha1
kind: GoldenImage
metadata: {{name: chart-image}}
spec:
  source: {{path: /nonexistent/recast-chart-test.wim}}
  sha256: 3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011
  imageIndex: 1
  expected: {{edition: Enterprise, arch: amd64}}
  requirements: {{minimumBuild: "26100.7623"}}
---
apiVersion: recast.dev/v1alpha1
kind: Endpoint
metadata: {{name: chart-kiosk}}
spec:
  identity:
    macAddresses: ["52:54:00:c4:00:01"]
    smbiosUuid: 4c4c4544-0042-3510-8052-b4c04f384dc1
    serialNumber: CHART01
  bootMode: uefi
  image: {{goldenImage: chart-image}}
  site: {fleet}
  reimageRequest: {{token: chart-1, reason: chart RBAC test}}
"#
    );
    apply_fleet(&k, tmp.path(), &fleet, &objects);

    let kubeconfig = impersonating_kubeconfig(
        &k,
        &format!("system:serviceaccount:{}:{}", sa.0, sa.1),
        tmp.path(),
    );
    let boot_sa = boot_service_account(&docs);
    let boot_dir = tmp.path().join("boot-identity");
    std::fs::create_dir_all(&boot_dir).unwrap();
    let boot_kubeconfig = impersonating_kubeconfig(
        &k,
        &format!("system:serviceaccount:{}:{}", boot_sa.0, boot_sa.1),
        &boot_dir,
    );
    // The webhook certificate the chart generated, as its pods would mount it.
    let tls = find(&docs, "Secret", "-webhook-tls").unwrap();
    let (webhook_cert, webhook_key) = (
        pem_from(tls, "tls.crt", &tmp.path().join("tls.crt")),
        pem_from(tls, "tls.key", &tmp.path().join("tls.key")),
    );
    let imaging_key = tmp
        .path()
        .join("imaging.key")
        .to_string_lossy()
        .into_owned();
    let internal = free_port();
    let data = tmp.path().join("operator-data");
    std::fs::create_dir_all(&data).unwrap();
    let env = [
        ("POD_NAMESPACE", ns.clone()),
        ("POD_NAME", "recast-operator-0".to_string()),
        ("POD_IP", "127.0.0.1".to_string()),
    ];
    let op = find(&docs, "Deployment", "-operator").unwrap();
    let mut operator = start_as(
        op,
        "operator",
        &kubeconfig,
        &env,
        &[
            ("--listen", format!("127.0.0.1:{}", free_port())),
            ("--data-dir", data.to_string_lossy().into_owned()),
            ("--internal-listen", format!("127.0.0.1:{internal}")),
            ("--imaging-key-file", imaging_key.clone()),
            ("--webhook-listen", format!("127.0.0.1:{}", free_port())),
            ("--webhook-cert", webhook_cert),
            ("--webhook-key", webhook_key),
        ],
    );

    let lease_holder = || {
        let out = k.kubectl(&[
            "get",
            "lease",
            "recast-operator",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    operator.wait(
        Duration::from_secs(60),
        "the operator to take the Lease",
        || lease_holder() == "recast-operator-0",
    );
    // The reimage arms the network boot: its ConfigMap in the release (control) namespace,
    // and the finalizer that disarms it.
    let boot_intent = recast_operator::store::kube::control_name(
        recast_operator::store::kube::ControlKind::Boot,
        &recast_operator::store::Key {
            namespace: fleet.clone(),
            name: "chart-kiosk".into(),
        },
    );
    operator.wait(
        Duration::from_secs(60),
        "the boot intent and the finalizer on the Endpoint",
        || {
            let ep = json_of(
                &k,
                &["get", "rep", "chart-kiosk", "-n", &fleet, "-o", "json"],
            );
            ep["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "recast.dev/disarm-boot"))
                && ep["status"]["phase"] == "Reimaging"
                && k.kubectl(&["get", "cm", &boot_intent, "-n", &ns])
                    .status
                    .success()
        },
    );
    // The GoldenImage controller's status (KnownGood is written only by the operator).
    operator.wait(
        Duration::from_secs(60),
        "a KnownGood condition on the GoldenImage",
        || {
            let gi = json_of(
                &k,
                &["get", "gi", "chart-image", "-n", &fleet, "-o", "json"],
            );
            gi["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "KnownGood"))
        },
    );
    operator.wait(
        Duration::from_secs(30),
        "an Event from the operator",
        || {
            let ev = json_of(
                &k,
                &["get", "events.events.k8s.io", "-n", &fleet, "-o", "json"],
            );
            ev["items"].as_array().is_some_and(|i| {
                i.iter()
                    .any(|e| e["reportingController"] == "recast-operator")
            })
        },
    );

    // The boot service, with the boot DaemonSet's flags and its own read-only ServiceAccount,
    // answers a machine it knows from the watched namespace (HTTP boot on loopback instead of
    // the node), and its input reaches the operator over the internal endpoint.
    let boot_port = free_port();
    let boot_https = free_port();
    let boot_pki = recast_tests::redfish::make_pki(tmp.path(), "boot");
    let boot_ca = tmp.path().join("boot-ca.pem");
    std::fs::write(&boot_ca, &boot_pki.ca_pem).unwrap();
    let boot_data = tmp.path().join("boot-data");
    std::fs::create_dir_all(boot_data.join("boot")).unwrap();
    let ds = find(&docs, "DaemonSet", "-boot").unwrap();
    let boot_env = [
        ("POD_NAMESPACE", ns.clone()),
        ("POD_NAME", "recast-boot-0".to_string()),
        ("POD_IP", "127.0.0.1".to_string()),
        ("RECAST_SERVER_IP", "127.0.0.1".to_string()),
    ];
    let mut boot = start_as(
        ds,
        "boot",
        &boot_kubeconfig,
        &boot_env,
        &[
            (
                "--forward-inputs-to",
                format!("http://127.0.0.1:{internal}"),
            ),
            ("--listen", format!("127.0.0.1:{}", free_port())),
            ("--data-dir", boot_data.to_string_lossy().into_owned()),
            ("--boot-http", format!("127.0.0.1:{boot_port}")),
            (
                "--boot-root",
                boot_data.join("boot").to_string_lossy().into_owned(),
            ),
            ("--imaging-key-file", imaging_key.clone()),
            ("--boot-https", format!("127.0.0.1:{boot_https}")),
            (
                "--boot-https-url",
                format!("https://127.0.0.1:{boot_https}"),
            ),
            (
                "--boot-tls-cert",
                boot_pki.cert.to_string_lossy().into_owned(),
            ),
            (
                "--boot-tls-key",
                boot_pki.key.to_string_lossy().into_owned(),
            ),
        ],
    );
    let url = format!("http://127.0.0.1:{boot_port}/boot/52:54:00:c4:00:01");
    let mut script = String::new();
    boot.wait(
        Duration::from_secs(60),
        "the boot service to answer",
        || {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "5", &url])
                .output()
                .expect("run curl");
            script = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success()
        },
    );
    // Armed: the boot service read the intent and starts the WinPE imaging environment.
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(script.contains("wimboot"), "{script}");
    // The imaging environment claims the try; the claim's NetworkBooted goes boot pod →
    // operator's internal endpoint → inbox → decision.
    // (The script names the chart's --boot-url; this test reaches the pod on loopback.)
    let start = script
        .find("/imaging/v1/")
        .expect("the try's URL in the script");
    let attempt_path = script[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches("/startnet.cmd")
        .to_string();
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{boot_port}{attempt_path}/claim"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "the claim: {out:?}");
    let claim: Value = serde_json::from_slice(&out.stdout).expect("the claim's answer");
    let token = claim["token"]
        .as_str()
        .expect("a session token")
        .to_string();
    operator.wait(
        Duration::from_secs(60),
        "the forwarded NetworkBooted to move the attempt to Applying",
        || {
            json_of(
                &k,
                &["get", "rep", "chart-kiosk", "-n", &fleet, "-o", "json"],
            )["status"]["activeAttempt"]["step"]
                == "Applying"
        },
    );

    // A provisioning profile whose password is in a Secret: the boot pod, whose ServiceAccount
    // reads no Secrets, gets this armed try's from the operator (signed request, sealed
    // answer, the operator's own Secret RBAC) and serves the unattend.xml over HTTPS only.
    apply_fleet(
        &k,
        tmp.path(),
        &fleet,
        r#"
apiVersion: v1
kind: Secret
metadata: {name: kiosk-accounts}
stringData: {kiosk: Kiosk-Pass1}
---
apiVersion: recast.dev/v1alpha1
kind: RemediationPolicy
metadata: {name: default}
spec:
  provisioning:
    localAccount:
      name: kiosk
      passwordSecretRef: {name: kiosk-accounts, key: kiosk}
"#,
    );
    let unattend_url = format!("https://127.0.0.1:{boot_https}{attempt_path}/unattend.xml");
    let auth = format!("Authorization: Bearer {token}");
    let mut unattend = String::new();
    boot.wait(
        Duration::from_secs(60),
        "the boot pod to serve the profile's unattend.xml over HTTPS",
        || {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "5", "--cacert"])
                .arg(&boot_ca)
                .args(["-H", &auth, &unattend_url])
                .output()
                .expect("run curl");
            unattend = String::from_utf8_lossy(&out.stdout).into_owned();
            unattend.contains("<Name>kiosk</Name>")
        },
    );
    assert!(
        unattend.contains("SwBpAG8AcwBrAC0AUABhAHMAcwAxAFAAYQBzAHMAdwBvAHIAZAA="),
        "the Secret's password, in unattend's obscured form:\n{unattend}"
    );
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &auth])
        .arg(format!(
            "http://127.0.0.1:{boot_port}{attempt_path}/unattend.xml"
        ))
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "403",
        "never over plain HTTP"
    );

    // Real requests as the ServiceAccount, not only can-i: misuse is refused by the apiserver.
    let user = format!("system:serviceaccount:{}:{}", sa.0, sa.1);
    for attempt in [
        vec!["get", "secrets", "-n", &fleet],
        vec!["delete", "rep", "chart-kiosk", "-n", &fleet],
        vec!["get", "rep", "-n", &outside],
    ] {
        let mut a = attempt.clone();
        a.extend(["--as", &user]);
        let out = k.kubectl(&a);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("forbidden"),
            "kubectl {} as the operator was not refused: {stderr}",
            attempt.join(" ")
        );
    }

    // Deleting the Endpoint: the operator disarms its boot and lets it go.
    k.kubectl_ok(&[
        "delete",
        "rep",
        "chart-kiosk",
        "-n",
        &fleet,
        "--timeout=60s",
    ]);

    // Neither process met a permission it lacks.
    std::thread::sleep(Duration::from_secs(2));
    for (what, p) in [("operator", &mut operator), ("boot", &mut boot)] {
        let forbidden: Vec<String> = p
            .drain()
            .iter()
            .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
            .cloned()
            .collect();
        assert!(
            forbidden.is_empty(),
            "the {what} hit a permission the chart does not grant:\n{}",
            forbidden.join("\n")
        );
    }
}

/// `helm install`, `upgrade` and `uninstall` on the real apiserver: the imaging key the chart
/// creates survives an upgrade (signed tokens of armed tries stay valid) and the uninstall,
/// and the uninstall leaves no cluster-wide object behind.
#[test]
fn helm_install_upgrade_uninstall_keep_the_imaging_key() {
    let Some(helm) = Helm::get() else { return };
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let ns = k.fresh_namespace("chart-install");
    let release = release_name("inst");
    let kubeconfig = k.kubeconfig.to_string_lossy().into_owned();
    let chart = chart_dir().to_string_lossy().into_owned();
    let helm_ok = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", &kubeconfig, "-n", &ns]);
        let out = helm.run(&all);
        assert!(
            out.status.success(),
            "helm {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let key_of = || {
        let s = json_of(
            &k,
            &[
                "get",
                "secret",
                &format!("{release}-recast-imaging-key"),
                "-n",
                &ns,
                "-o",
                "json",
            ],
        );
        s["data"]["imaging.key"].as_str().unwrap().to_string()
    };
    // Namespaced, so the admission webhook (failurePolicy Fail, and no operator pod runs in
    // the harness) covers only this namespace and not the other suites' Endpoints.
    let watch = format!("operator.watchNamespace={ns}");
    let webhook_ca = || {
        json_of(
            &k,
            &[
                "get",
                "validatingwebhookconfiguration",
                &format!("{release}-recast-endpoints"),
                "-o",
                "json",
            ],
        )["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let notes = helm_ok(&[
        "install",
        &release,
        &chart,
        "--set",
        "boot.enabled=true",
        "--set",
        "boot.dhcp.mode=proxy",
        "--set",
        &watch,
    ]);
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains("67/udp, 4011/udp"),
        "NOTES name the ports: {notes}"
    );
    let key = key_of();
    let ca = webhook_ca();
    helm_ok(&[
        "upgrade",
        &release,
        &chart,
        "--set",
        "boot.enabled=true",
        "--set",
        "boot.dhcp.mode=proxy",
        "--set",
        "operator.replicas=3",
        "--set",
        &watch,
    ]);
    assert_eq!(
        json_of(
            &k,
            &[
                "get",
                "deployment",
                &format!("{release}-recast-operator"),
                "-n",
                &ns,
                "-o",
                "json"
            ]
        )["spec"]["replicas"],
        3
    );
    assert_eq!(key_of(), key, "helm upgrade replaced the imaging key");
    assert_eq!(
        webhook_ca(),
        ca,
        "helm upgrade replaced the webhook's CA: the apiserver would reject the serving certificate"
    );
    helm_ok(&["uninstall", &release, "--wait"]);
    assert_eq!(key_of(), key, "helm uninstall removed the imaging key");
    let left = k.kubectl(&["get", "clusterrole", &format!("{release}-recast-operator")]);
    assert!(
        !left.status.success(),
        "the ClusterRole outlived the release"
    );
    let hook = k.kubectl(&[
        "get",
        "validatingwebhookconfiguration",
        &format!("{release}-recast-endpoints"),
    ]);
    assert!(
        !hook.status.success(),
        "the admission webhook outlived the release"
    );
    k.kubectl_ok(&[
        "delete",
        "secret",
        &format!("{release}-recast-imaging-key"),
        "-n",
        &ns,
    ]);
}

/// Binds `user` to Kubernetes' built-in `edit` role in `ns`, as a cluster admin gives a tenant
/// its namespace. The harness runs no kube-controller-manager, whose aggregation controller
/// fills `edit` from the `system:aggregate-to-edit` and `-view` roles; when `edit` is still
/// empty those two are bound instead: the same rules.
fn bind_edit(k: &K8s, user: &str, ns: &str) {
    let edit = json_of(k, &["get", "clusterrole", "edit", "-o", "json"]);
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
}

/// Least privilege, asked of the real apiserver by impersonation: the boot pods' ServiceAccount
/// reads what the boot service needs and can write nothing nor read any Secret; the operator
/// reads Secrets only in the namespaces listed; a tenant with `edit` in its namespace cannot
/// reach the control state in the release namespace.
#[test]
fn boot_pods_and_tenants_get_least_privilege() {
    let Some(helm) = Helm::get() else { return };
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let tmp = tempfile::tempdir().unwrap();
    let ns = k.fresh_namespace("chart-lp");
    let tenant = k.fresh_namespace("chart-lp-tenant");
    let other = k.fresh_namespace("chart-lp-other");
    let secrets = format!("operator.secretNamespaces[0]={tenant}");
    let docs = helm
        .template(
            &release_name("lp"),
            &ns,
            None,
            &["boot.enabled=true", &secrets],
        )
        .expect("render with the boot service");
    let sa = service_account(&docs);
    let boot = boot_service_account(&docs);
    assert_ne!(
        sa, boot,
        "the boot pods must not share the operator's identity"
    );
    let _rbac = AppliedRbac::apply(&k, &docs, tmp.path());
    let user = "tenant-a@example.org";
    bind_edit(&k, user, &tenant);
    wait_for(
        Duration::from_secs(20),
        "the RBAC bindings to take effect",
        || {
            can_i(&k, &boot, "list", "endpoints.recast.dev", &tenant)
                && can_i(&k, &sa, "get", "secrets", &tenant)
                && can_i_as(&k, user, "create", "configmaps", &tenant)
        },
    );

    // The boot pods: reads only.
    for target in [&tenant, &other] {
        for (verb, resource) in [
            ("get", "endpoints.recast.dev"),
            ("list", "endpoints.recast.dev"),
            ("watch", "endpoints.recast.dev"),
            ("list", "goldenimages.recast.dev"),
            ("watch", "goldenimages.recast.dev"),
            ("list", "remediationpolicies.recast.dev"),
        ] {
            assert!(
                can_i(&k, &boot, verb, resource, target),
                "the boot pods cannot {verb} {resource} in {target}"
            );
        }
    }
    for (verb, resource) in [
        ("get", "configmaps"),
        ("list", "configmaps"),
        ("watch", "configmaps"),
    ] {
        assert!(
            can_i(&k, &boot, verb, resource, &ns),
            "the boot pods cannot {verb} the boot intents ({resource} in {ns})"
        );
    }
    for target in [&ns, &tenant, &other] {
        for (verb, resource) in [
            ("create", "endpoints.recast.dev"),
            ("patch", "endpoints.recast.dev"),
            ("update", "endpoints.recast.dev"),
            ("delete", "endpoints.recast.dev"),
            ("patch", "endpoints.recast.dev --subresource=status"),
            ("patch", "goldenimages.recast.dev --subresource=status"),
            ("patch", "reimagewaves.recast.dev --subresource=status"),
            (
                "patch",
                "remediationpolicies.recast.dev --subresource=status",
            ),
            ("create", "configmaps"),
            ("patch", "configmaps"),
            ("update", "configmaps"),
            ("delete", "configmaps"),
            ("get", "secrets"),
            ("list", "secrets"),
            ("create", "events.events.k8s.io"),
            ("create", "events"),
            ("create", "leases.coordination.k8s.io"),
            ("get", "leases.coordination.k8s.io/recast-operator"),
            ("patch", "leases.coordination.k8s.io/recast-operator"),
            ("create", "pods"),
        ] {
            assert!(
                !can_i(&k, &boot, verb, resource, target),
                "the boot pods may {verb} {resource} in {target}; they must be read-only"
            );
        }
    }
    assert!(!can_i(&k, &boot, "get", "configmaps", &tenant));

    // The operator: BMC Secrets where listed, nowhere else; never list.
    assert!(can_i(&k, &sa, "get", "secrets", &tenant));
    for target in [&ns, &other] {
        assert!(
            !can_i(&k, &sa, "get", "secrets", target),
            "the operator may read Secrets in {target}, which operator.secretNamespaces does not list"
        );
    }
    assert!(!can_i(&k, &sa, "list", "secrets", &tenant));

    // The tenant: `edit` writes ConfigMaps in its namespace (which nothing reads any more) and
    // nothing in the release namespace, where the control state lives.
    assert!(can_i_as(&k, user, "create", "configmaps", &tenant));
    for (verb, resource) in [
        ("create", "configmaps"),
        ("patch", "configmaps"),
        ("update", "configmaps"),
        ("delete", "configmaps"),
        ("get", "configmaps"),
        ("get", "secrets"),
    ] {
        assert!(
            !can_i_as(&k, user, verb, resource, &ns),
            "a tenant with edit in {tenant} may {verb} {resource} in the release namespace {ns}"
        );
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !can_i_as(
                &k,
                user,
                verb,
                "validatingwebhookconfigurations.admissionregistration.k8s.io",
                &tenant
            ),
            "a tenant may {verb} the admission webhook"
        );
    }
}

/// A Service in front of the gateway replicas, as kube-proxy is: each connection goes to the
/// next replica that accepts it, so a dead replica's share moves to the others.
fn round_robin_proxy(backends: Vec<u16>) -> u16 {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut next = 0usize;
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let upstream = (0..backends.len()).find_map(|i| {
                let p = backends[(next + i) % backends.len()];
                TcpStream::connect(("127.0.0.1", p)).ok()
            });
            next = next.wrapping_add(1);
            let Some(upstream) = upstream else { continue };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

/// Applies a fleet (a GoldenImage "chart-image" and Endpoints) in `fleet`, and gives the image
/// the status the GoldenImage controller writes once it has checked it: the tests need no
/// network to fetch a WIM.
fn apply_fleet(k: &K8s, dir: &Path, fleet: &str, objects: &str) {
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, objects).unwrap();
    k.kubectl_ok(&["apply", "-n", fleet, "-f", &file.to_string_lossy()]);
    let verified = json!({"status": recast_tests::inputs::verified_image_status()});
    k.kubectl_ok(&[
        "patch",
        "-n",
        fleet,
        "gi",
        "chart-image",
        "--subresource=status",
        "--type=merge",
        "-p",
        &verified.to_string(),
    ]);
}

/// A rendered Secret's key as a file, as its pods would mount it.
fn pem_from(secret: &Value, key: &str, path: &Path) -> String {
    let b64 = secret["data"][key].as_str().unwrap();
    let out = Command::new("base64")
        .args(["-d"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b64.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    std::fs::write(path, out.stdout).unwrap();
    path.to_string_lossy().into_owned()
}

/// The gateway as the chart deploys it on Kubernetes: two replicas started with the chart's
/// flags as the chart's gateway ServiceAccount, behind one address, with the chart's own
/// certificate, beside the operator with its flags and rights. A kiosk's failed-rollback
/// report starts a reimage; one gateway replica is killed mid-run; the new image's check-in
/// through the survivor completes the attempt. Every report is answered 200 exactly once:
/// each is also offered to both replicas directly (a retry that reached both), and the second
/// copy is refused as a replay.
#[test]
fn gateway_replicas_from_the_chart_carry_a_failed_rollback_through_a_replica_kill() {
    use recast_agent::send::{SendOutcome, Sender};
    use recast_agent::simulate::{Scenario, simulated_report};
    use recast_core::lifecycle::Input;
    use recast_operator::store::kube::{KubeBackend, Scope};
    use recast_operator::store::{Inbox, Key};
    let Some(helm) = Helm::get() else { return };
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let tmp = tempfile::tempdir().unwrap();
    let ns = k.fresh_namespace("chart-gw");
    let fleet = k.fresh_namespace("chart-gw-fleet");
    let watch = format!("operator.watchNamespace={fleet}");
    let docs = helm
        .template(
            &release_name("gw"),
            &ns,
            None,
            &[
                &watch,
                "operator.powerDriver=record",
                // The name the agents here use for the gateway.
                "gateway.dnsNames[0]=localhost",
            ],
        )
        .expect("render the install");
    let _rbac = AppliedRbac::apply(&k, &docs, tmp.path());
    let sa = service_account(&docs);
    let gw = find(&docs, "Deployment", "-gateway").unwrap();
    assert_eq!(gw["spec"]["replicas"], 2);
    let gw_sa = gw["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_string();
    let gw_subject = (ns.clone(), gw_sa);
    wait_for(
        Duration::from_secs(20),
        "the RBAC bindings to take effect",
        || {
            can_i(&k, &sa, "list", "endpoints.recast.dev", &fleet)
                && can_i(&k, &gw_subject, "update", "configmaps", &ns)
        },
    );
    // The gateway's rights: reads the fleet, writes only ConfigMaps in the release namespace.
    assert!(can_i(
        &k,
        &gw_subject,
        "get",
        "endpoints.recast.dev",
        &fleet
    ));
    assert!(!can_i(
        &k,
        &gw_subject,
        "patch",
        "endpoints.recast.dev",
        &fleet
    ));
    assert!(!can_i(&k, &gw_subject, "get", "secrets", &ns));
    assert!(!can_i(&k, &gw_subject, "update", "configmaps", &fleet));
    assert!(!can_i(&k, &gw_subject, "delete", "configmaps", &ns));
    assert!(!can_i(
        &k,
        &gw_subject,
        "create",
        "leases.coordination.k8s.io",
        &ns
    ));

    let objects = r#"
apiVersion: recast.dev/v1alpha1
kind: GoldenImage
metadata: {name: chart-image}
spec:
  source: {path: /nonexistent/recast-chart-test.wim}
  sha256: 3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011
  imageIndex: 1
  expected: {edition: Enterprise, arch: amd64}
  requirements: {minimumBuild: "26100.7623"}
---
apiVersion: recast.dev/v1alpha1
kind: Endpoint
metadata: {name: kiosk-01}
spec:
  identity:
    macAddresses: ["52:54:00:c4:01:01"]
    smbiosUuid: 4c4c4544-0042-3510-8052-b4c04f384dc2
    serialNumber: CHARTGW01
  bootMode: uefi
  image: {goldenImage: chart-image}
"#;
    apply_fleet(&k, tmp.path(), &fleet, objects);

    let as_sa = |subject: &(String, String), dir: &str| {
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        impersonating_kubeconfig(
            &k,
            &format!("system:serviceaccount:{}:{}", subject.0, subject.1),
            &d,
        )
    };
    let operator_kubeconfig = as_sa(&sa, "operator-identity");
    let gateway_kubeconfig = as_sa(&gw_subject, "gateway-identity");
    // What the gateway may write in the control namespace, narrowed at admission.
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
        })
        .collect();
    assert_eq!(
        policies.len(),
        2,
        "the gateway's admission policy and its binding"
    );
    let policy_file = write_docs(tmp.path(), "gateway-policy", &policies);
    k.kubectl_ok(&["apply", "-f", &policy_file.to_string_lossy()]);
    struct Cleanup(K8s, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.kubectl(&["delete", "-f", &self.1.to_string_lossy()]);
        }
    }
    let _policy = Cleanup(k.clone(), policy_file);
    let as_gateway = |args: &[&str]| {
        Command::new(&k.kubectl)
            .arg("--kubeconfig")
            .arg(&gateway_kubeconfig)
            .args(args)
            .output()
            .unwrap()
    };
    let forge = |name: &str, value: &str| {
        as_gateway(&[
            "create",
            "configmap",
            name,
            "-n",
            &ns,
            &format!("--from-literal=entry={value}"),
        ])
    };
    // The policy takes effect once the apiserver has checked its expressions.
    wait_for(
        Duration::from_secs(30),
        "the gateway's admission policy to refuse a forged boot intent",
        || {
            let out = forge("recast-boot-forged", "x");
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("the gateway writes only")
        },
    );
    let journal = forge("recast-journal-forged", "x");
    assert!(!journal.status.success(), "a journal is not the gateway's");
    let imaging = forge(
        "recast-inbox-forged",
        r#"{"type":"imagingFinished","data":{"attemptId":"a","result":{"Ok":null}}}"#,
    );
    assert!(
        String::from_utf8_lossy(&imaging.stderr).contains("only agent reports and signals"),
        "an ImagingFinished queued by the gateway: {}",
        String::from_utf8_lossy(&imaging.stderr)
    );
    let report = forge("recast-inbox-allowed", r#"{"type":"signals","data":[]}"#);
    assert!(
        report.status.success(),
        "signals are the gateway's to queue: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    k.kubectl_ok(&["delete", "configmap", "recast-inbox-allowed", "-n", &ns]);
    let webhook_tls = find(&docs, "Secret", "-webhook-tls").unwrap();
    let gateway_tls = find(&docs, "Secret", "-gateway-tls").unwrap();
    let ca = tmp.path().join("gateway-ca.crt");
    pem_from(gateway_tls, "ca.crt", &ca);
    let env = |pod: &str| {
        vec![
            ("POD_NAMESPACE", ns.clone()),
            ("POD_NAME", pod.to_string()),
            ("POD_IP", "127.0.0.1".to_string()),
        ]
    };
    let data = tmp.path().join("operator-data");
    std::fs::create_dir_all(&data).unwrap();
    let mut operator = start_as(
        find(&docs, "Deployment", "-operator").unwrap(),
        "operator",
        &operator_kubeconfig,
        &env("recast-operator-0"),
        &[
            ("--listen", format!("127.0.0.1:{}", free_port())),
            ("--data-dir", data.to_string_lossy().into_owned()),
            ("--webhook-listen", format!("127.0.0.1:{}", free_port())),
            (
                "--webhook-cert",
                pem_from(webhook_tls, "tls.crt", &tmp.path().join("webhook.crt")),
            ),
            (
                "--webhook-key",
                pem_from(webhook_tls, "tls.key", &tmp.path().join("webhook.key")),
            ),
        ],
    );
    let gateway = |pod: &str, port: u16| {
        let d = tmp.path().join(pod);
        std::fs::create_dir_all(&d).unwrap();
        start_as(
            gw,
            "gateway",
            &gateway_kubeconfig,
            &env(pod),
            &[
                ("--listen", format!("127.0.0.1:{}", free_port())),
                ("--data-dir", d.to_string_lossy().into_owned()),
                ("--gateway-listen", format!("127.0.0.1:{port}")),
                (
                    "--gateway-cert",
                    pem_from(gateway_tls, "tls.crt", &d.join("tls.crt")),
                ),
                (
                    "--gateway-key",
                    pem_from(gateway_tls, "tls.key", &d.join("tls.key")),
                ),
            ],
        )
    };
    let (port_a, port_b) = (free_port(), free_port());
    let mut replica_a = gateway("recast-gateway-a", port_a);
    let mut replica_b = gateway("recast-gateway-b", port_b);
    for (r, port) in [(&mut replica_a, port_a), (&mut replica_b, port_b)] {
        r.wait(
            Duration::from_secs(60),
            "a gateway replica to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }
    let service = round_robin_proxy(vec![port_a, port_b]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = rt.block_on(kube_test::client(&k));
    let kiosk = Key {
        namespace: fleet.clone(),
        name: "kiosk-01".into(),
    };
    // The site issues the kiosk's token into the control namespace (`recastctl token issue`).
    let (token, _) = rt
        .block_on(
            recast_operator::credentials::KubeCredentials::new(admin.clone(), &ns)
                .issue(&kiosk, "now"),
        )
        .unwrap();
    let url = |port: u16| format!("https://localhost:{port}");
    let through_service = Sender::new(&url(service), Some(&ca)).unwrap();
    let direct = [
        Sender::new(&url(port_a), Some(&ca)).unwrap(),
        Sender::new(&url(port_b), Some(&ca)).unwrap(),
    ];
    let send = |report: &recast_crds::report::AgentReport, both_alive: bool| {
        let outcome = rt.block_on(through_service.send(&token, report)).unwrap();
        assert_eq!(outcome, SendOutcome::Accepted, "report {}", report.sequence);
        // The same report again at each live replica. The first report changes everything
        // (committed before its 200): a replay, whichever replica gets the copy. The later
        // ones carry the same facts as the first (one scenario throughout), so a replica that
        // handed those facts on judges a copy at rest and may answer it from memory, handing
        // nothing on (the gateway test `replicas_accept_a_changing_report_once_...` counts
        // that); each sequence is still in the shards once (checked at the end).
        let replicas = if both_alive {
            &direct[..]
        } else {
            &direct[1..]
        };
        for s in replicas {
            let again = rt.block_on(s.send(&token, report)).unwrap();
            let allowed = matches!(again, SendOutcome::Replayed(_))
                || (report.sequence > 1 && again == SendOutcome::Accepted);
            assert!(allowed, "report {}'s copy: {again:?}", report.sequence);
        }
    };
    let now = || jiff::Timestamp::now();
    let status = || json_of(&k, &["get", "rep", "kiosk-01", "-n", &fleet, "-o", "json"]);
    // December: the cumulative update failed and rolled back. Reports alternate replicas.
    for seq in 1..=4 {
        let r = simulated_report("kiosk-01", Scenario::FailedRollback, 0, seq, now(), 300);
        send(&r, true);
    }
    operator.wait(
        Duration::from_secs(60),
        "the FailedRollback to start a reimage",
        || {
            status()
                .pointer("/status/activeAttempt/id")
                .and_then(Value::as_str)
                .is_some()
        },
    );
    let attempt = status()["status"]["activeAttempt"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // One replica goes away mid-run (a node drained, a pod evicted).
    drop(replica_a);

    // The imaging environment's inputs (the boot service posts these to the inbox).
    let backend = rt
        .block_on(KubeBackend::connect(
            admin.clone(),
            &Scope {
                identity: "chart-test".into(),
                watch_namespace: Some(fleet.clone()),
                control_namespace: ns.clone(),
            },
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        ))
        .unwrap()
        .0;
    for input in [
        Input::NetworkBooted {
            attempt_id: attempt.clone(),
            try_number: None,
            client: None,
        },
        Input::ImagingFinished {
            attempt_id: attempt.clone(),
            try_number: None,
            result: Ok(()),
            refusal: None,
        },
    ] {
        rt.block_on(backend.post_input(&kiosk, &input)).unwrap();
    }
    operator.wait(
        Duration::from_secs(60),
        "the attempt to wait for the new image's first report",
        || status()["status"]["activeAttempt"]["step"] == "FirstBoot",
    );
    // The new image checks in through the surviving replica, with a fresh token (as its
    // enrollment would give it) and the attempt id.
    let (token2, _) = rt
        .block_on(
            recast_operator::credentials::KubeCredentials::new(admin.clone(), &ns)
                .issue(&kiosk, "later"),
        )
        .unwrap();
    let mut r = simulated_report("kiosk-01", Scenario::Healthy, 0, 1, now(), 300);
    r.attempt_id = Some(attempt.clone());
    let mut checked_in = false;
    for _ in 0..60 {
        // The surviving replica sees the new token through its watch within moments; a real
        // agent refused with 401 tries again at its next interval (here: at once, shortly).
        match rt.block_on(through_service.send(&token2, &r)).unwrap() {
            SendOutcome::Accepted => {
                checked_in = true;
                break;
            }
            SendOutcome::Unauthorized(_) => std::thread::sleep(Duration::from_millis(250)),
            other => panic!("the check-in was refused: {other:?}"),
        }
    }
    assert!(checked_in, "the check-in never got through");
    let again = rt.block_on(direct[1].send(&token2, &r)).unwrap();
    assert!(matches!(again, SendOutcome::Replayed(_)), "{again:?}");
    operator.wait(Duration::from_secs(60), "the attempt to succeed", || {
        status()
            .pointer("/status/history/0/outcome")
            .and_then(Value::as_str)
            == Some("Succeeded")
    });
    // Every accepted sequence is in the control namespace's shards once.
    let shards = json_of(
        &k,
        &[
            "get",
            "configmaps",
            "-n",
            &ns,
            "-l",
            "recast.dev/gateway-sequences=true",
            "-o",
            "json",
        ],
    );
    let entry = format!("{fleet}.kiosk-01");
    let marks: Vec<&str> = shards["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|cm| cm["data"][&entry].as_str())
        .collect();
    assert_eq!(marks.len(), 1, "{shards}");
    assert!(marks[0].ends_with(":1"), "the new token's space: {marks:?}");
    drop(replica_b);
}
