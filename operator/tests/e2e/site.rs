//! One site as a user runs it, inside network namespaces the suite creates: recast-operator
//! (controller, agent gateway, boot service with proxyDHCP next to dnsmasq) in the boot
//! namespace, machines on the site's bridge, BMCs behind sushy-tools' Redfish emulator, agents
//! replaying Windows' own tool output. Every check goes through what a user has: recastctl,
//! the operator's /metrics and logs, the machines' disks and consoles, the BMC's request log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bmc::{self, Bridge};
use crate::net::{self, Forward};

pub const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
pub const BOOT_IP: &str = "10.77.0.2";
pub const BOOT_HTTP: &str = "10.77.0.2:8081";
pub const GATEWAY: &str = "https://127.0.0.1:8443";
pub const IMAGE: &str = "win11-24h2-2026-01";
/// Debian's libfaketime (package faketime, installed by tests/pxe/setup.sh).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(OPERATOR).with_file_name(name);
    assert!(
        p.is_file(),
        "no {name} next to {OPERATOR}: `make e2e` (or make test) builds every binary first"
    );
    p
}

/// Kills (SIGKILL) and reaps a child when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone)]
pub enum Backend {
    Embedded,
    Kube { k8s: recast_tests::K8s, ns: String },
}

pub struct MachineSpec {
    pub name: String,
    pub mac: String,
    pub qemu: bool,
    /// A QEMU machine with UEFI Secure Boot enforced (bootMode uefi, the signed chain);
    /// otherwise BIOS with iPXE.
    pub secure_boot: bool,
    pub protected: bool,
    pub labels: &'static str,
    /// The Endpoint names a BMC (sushy's emulator behind the bridge); without one, recast
    /// brings the machine to network-boot through its agent, Wake-on-LAN or a person.
    pub bmc: bool,
}

pub struct Site {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub root: PathBuf,
    pub backend: Backend,
    pub net_name: String,
    pub bridge: Bridge,
    pub digest: String,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    operator: Option<Proc>,
    pub operator_runs: u32,
    /// The kube backend's gateway replicas (`--role gateway`, started from the chart's
    /// rendered Deployment), by port; None once killed.
    gateways: Vec<(u16, Option<Proc>)>,
    agents: BTreeMap<String, Proc>,
    _sushy: recast_tests::redfish::Sushy,
    _dnsmasq: Proc,
    _api: Option<Forward>,
    uuids: BTreeMap<String, String>,
    transcript: Vec<String>,
}

impl Site {
    pub fn boot_ns(&self) -> String {
        format!("{}-boot", self.net_name)
    }

    pub fn new(tag: &str, backend: Backend, machines: &[MachineSpec], policy: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("recast-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("boot");
        let data = dir.join("data");
        std::fs::create_dir_all(root.join("ipxe")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        for f in ["undionly.kpxe", "snponly.efi", "ipxe.efi"] {
            std::fs::copy(format!("/usr/lib/ipxe/{f}"), root.join("ipxe").join(f)).unwrap();
        }
        recast_tests::imaging_env::build(&root, &dir);
        recast_tests::secure_boot::lay_out_signed_chain(&root);
        fixtures(&dir);

        // The January golden image: a miniature Windows captured by wimlib-imagex from an NTFS
        // tree (security descriptors, streams, a junction, hard links, \Windows\Boot with
        // boot-manager stand-ins, a BCD-Template) holding the RollupFix 26100.7623 package,
        // with XML that says so; the GoldenImage controller verifies it, recast-imager
        // applies it.
        let jan = recast_tests::wimlib::JANUARY_2026;
        let golden = recast_tests::golden_ntfs::build_golden(
            &std::env::temp_dir().join("recast-golden-ntfs"),
            jan,
            &recast_tests::hive::bcd_template(true),
        );
        let wim = dir.join("golden/win11-24h2-2026-01.wim");
        std::fs::create_dir_all(wim.parent().unwrap()).unwrap();
        std::fs::copy(&golden.wim, &wim).unwrap();
        let digest = golden.wim_sha256.clone();

        let net_name = format!(
            "rce{}{}",
            tag.chars().next().unwrap(),
            std::process::id() % 10000
        );
        let script = recast_tests::repo_root().join("tests/pxe/netns.sh");
        let _ = Command::new(&script).args(["down", &net_name]).status();
        let taps = machines
            .iter()
            .filter(|m| m.qemu)
            .count()
            .max(1)
            .to_string();
        let ok = Command::new(&script)
            .args(["up", &net_name, &taps])
            .status()
            .unwrap();
        assert!(ok.success(), "netns.sh up failed");
        let log = std::fs::File::create(dir.join("dnsmasq.log")).unwrap();
        let dnsmasq = Proc(
            Command::new(&script)
                .args(["dnsmasq", &net_name])
                .arg(dir.join("dnsmasq.leases"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );

        // The BMCs: one sushy-tools emulator with a fake system per machine.
        let sushy_bin =
            recast_tests::redfish::sushy_bin().expect("sushy-tools (tests/redfish/setup.sh)");
        let mut uuids = BTreeMap::new();
        let systems: Vec<(String, String)> = machines
            .iter()
            .map(|m| {
                let uuid = recast_tests::redfish::fresh_uuid();
                uuids.insert(m.name.clone(), uuid.clone());
                (uuid, m.name.clone())
            })
            .collect();
        let sushy = recast_tests::redfish::Sushy::start(
            &sushy_bin,
            recast_tests::redfish::SushyOptions {
                systems,
                ..Default::default()
            },
        );
        let sushy_addr: SocketAddr = sushy.url.trim_start_matches("http://").parse().unwrap();
        let mut tap = 0;
        let bridge_machines = machines
            .iter()
            .map(|m| {
                let kind = if m.qemu {
                    // Sparse: 4 GiB of nothing until the imager writes it (the layout needs 1 GiB
                    // for Windows beside 1 GiB of recovery).
                    let disk = dir.join(format!("disk-{}.img", m.name));
                    std::fs::File::create(&disk)
                        .unwrap()
                        .set_len(4 << 30)
                        .unwrap();
                    tap += 1;
                    bmc::Kind::Qemu {
                        tap: format!("tap{}", tap - 1),
                        disk,
                        secure_boot: m.secure_boot,
                    }
                } else {
                    bmc::Kind::Simulated
                };
                bmc::Machine {
                    name: m.name.clone(),
                    uuid: uuids[&m.name].clone(),
                    mac: m.mac.clone(),
                    kind,
                    control: String::new(),
                    powered: false,
                    vm: None,
                    network_boots: 0,
                    imaged: 0,
                    agent_config: None,
                    serial: None,
                    event_log: Vec::new(),
                }
            })
            .collect();
        let boot_ns = format!("{net_name}-boot");
        let bridge = Bridge::start(
            bridge_machines,
            sushy_addr,
            &boot_ns,
            &format!("{net_name}-site"),
            &dir,
            BOOT_HTTP.parse().unwrap(),
        );

        // The gateway's certificate, for 127.0.0.1 (agents reach it on the boot namespace's
        // loopback).
        let pki = recast_tests::redfish::make_pki(&dir, "gateway");
        let ca = dir.join("gateway-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();

        // The apiserver listens on the root namespace's loopback; the operator reaches it on
        // its own loopback through a forward.
        let api = if let Backend::Kube { k8s, .. } = &backend {
            let kubeconfig = std::fs::read_to_string(&k8s.kubeconfig).unwrap();
            let port: u16 = kubeconfig
                .lines()
                .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
                .and_then(|p| p.trim().parse().ok())
                .expect("apiserver port in the kubeconfig");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            Some(Forward::start(Some(&boot_ns), addr, None, addr))
        } else {
            None
        };

        let mut site = Site {
            dir: dir.clone(),
            data,
            root,
            backend,
            net_name,
            bridge,
            digest,
            ca,
            cert: pki.cert,
            key: pki.key,
            operator: None,
            gateways: Vec::new(),
            operator_runs: 0,
            agents: BTreeMap::new(),
            _sushy: sushy,
            _dnsmasq: dnsmasq,
            _api: api,
            uuids,
            transcript: Vec::new(),
        };
        site.write_manifests(machines, &wim, policy);
        site
    }

    pub fn uuid(&self, name: &str) -> String {
        self.uuids[name].clone()
    }

    fn write_manifests(&mut self, machines: &[MachineSpec], wim: &Path, policy: &str) {
        let mut docs = vec![
            "# BMC credentials (sushy's emulator is started without authentication)\napiVersion: v1\nkind: Secret\nmetadata:\n  name: bmc-credentials\nstringData:\n  username: admin\n  password: e2e-not-a-secret\n".to_string(),
            policy.to_string(),
            format!(
                "apiVersion: recast.dev/v1alpha1\nkind: GoldenImage\nmetadata:\n  name: {IMAGE}\n  annotations:\n    recast.dev/known-good: promoted\n    recast.dev/known-good-reason: e2e\nspec:\n  source:\n    path: {}\n  sha256: {}\n  requirements:\n    minimumBuild: \"26100.7623\"\n  channels: [stable]\n",
                wim.display(),
                self.digest
            ),
        ];
        for m in machines {
            let bmc = if m.bmc {
                format!(
                    "  bmc:\n    address: {}\n    credentialsSecretRef: {{name: bmc-credentials}}\n    systemId: {}\n",
                    self.bridge.url, self.uuids[&m.name]
                )
            } else {
                String::new()
            };
            docs.push(format!(
                "apiVersion: recast.dev/v1alpha1\nkind: Endpoint\nmetadata:\n  name: {name}\n  labels: {labels}\nspec:\n  identity:\n    macAddresses: [\"{mac}\"]\n    smbiosUuid: {uuid}\n  bootMode: {mode}\n  targetDisk: {{minSizeGiB: 1}}\n{bmc}  image: {{goldenImage: {IMAGE}}}\n  site: e2e\n  protected: {protected}\n",
                name = m.name,
                labels = m.labels,
                mac = m.mac,
                uuid = self.uuids[&m.name],
                protected = m.protected,
                mode = if m.secure_boot { "uefi" } else { "bios" },
            ));
        }
        let dir = self.dir.join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("site.yaml"), docs.join("---\n")).unwrap();
        if let Backend::Kube { k8s, ns } = &self.backend {
            k8s.kubectl_ok(&["apply", "-n", ns, "-f", dir.to_str().unwrap()]);
        }
    }

    fn operator_command(&self, faketime: Option<&str>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.boot_ns()]);
        if let Some(offset) = faketime {
            // libfaketime preloaded into the operator itself (not the `faketime` wrapper, which
            // would stay the parent and take the SIGKILL instead). Only the wall clock jumps;
            // timers keep running.
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.arg(OPERATOR).arg("run");
        match &self.backend {
            Backend::Embedded => {
                cmd.args(["--backend", "embedded"]);
                if self.operator_runs == 0 {
                    cmd.arg("--load").arg(self.dir.join("manifests"));
                }
            }
            Backend::Kube { k8s, ns } => {
                cmd.args([
                    "--backend",
                    "kube",
                    "--watch-namespace",
                    ns,
                    "--lease-namespace",
                    ns,
                ])
                .args([
                    "--lease-duration-seconds",
                    "6",
                    "--lease-grace-seconds",
                    "2",
                ])
                .env("KUBECONFIG", &k8s.kubeconfig);
            }
        }
        cmd.arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", "127.0.0.1:8080", "--power-driver", "redfish"])
            .args(["--bmc-watch-interval", "5s"])
            .args(["--boot-http", BOOT_HTTP, "--boot-root"])
            .arg(&self.root)
            // The golden WIM is a local file: its directory must be an allowed source root.
            .arg("--image-source-root")
            .arg(self.dir.join("golden"))
            .args(["--imaging-environment", "linux", "--dhcp", "proxy"])
            .args(["--dhcp-server-ip", BOOT_IP, "--dhcp-interface", "vr0"])
            // The firmware's own PXE client (the Secure Boot machine) fetches shim over TFTP.
            .args(["--tftp", &format!("{BOOT_IP}:69")])
            .args(["--gateway-url", GATEWAY])
            .env("RECAST_LOG", "info");
        if matches!(self.backend, Backend::Embedded) {
            // On Kubernetes the gateway is its own replicas (start_gateways).
            cmd.args(["--gateway-listen", "127.0.0.1:8443", "--gateway-cert"])
                .arg(&self.cert)
                .arg("--gateway-key")
                .arg(&self.key)
                .args(["--gateway-heartbeat-period", "10s"]);
        }
        cmd
    }

    /// The kube backend's gateway as the chart deploys it: `helm template` renders the gateway
    /// Deployment, and each of its replicas runs with that container's flags (what only makes
    /// sense in a pod replaced: ports, paths, the pod's name and namespace) in the boot
    /// namespace, where the agents are. The agents' address (127.0.0.1:8443) reaches them the
    /// way a Service does: the kernel spreads new connections over the replicas (iptables
    /// REDIRECT, nth), and a replica that is gone is taken out (`kill_gateway`).
    pub fn start_gateways(&mut self) {
        let Backend::Kube { k8s, ns } = &self.backend else {
            return;
        };
        if !self.gateways.is_empty() {
            return;
        }
        let helm =
            recast_tests::helm().expect("helm (tests/helm/setup.sh) for the gateway's chart");
        let out = Command::new(&helm)
            .args(["template", "e2e"])
            .arg(recast_tests::repo_root().join("charts/recast"))
            .args(["-n", ns, "--set", &format!("operator.watchNamespace={ns}")])
            .args([
                "--set",
                "boot.enabled=true",
                "--set",
                "gateway.heartbeatPeriod=10s",
            ])
            .env("HELM_CACHE_HOME", self.dir.join("helm-cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm-config"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let deployment: Value = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(d).ok()?;
                serde_json::to_value(v).ok()
            })
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "e2e-recast-gateway")
            .expect("the chart's gateway Deployment");
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
        assert_eq!(replicas, 2, "the chart's default");
        let chart_args: Vec<String> =
            deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
        for i in 0..replicas {
            let port = 8444 + i as u16;
            let pod = format!("e2e-recast-gateway-{i}");
            let data = self.dir.join(format!("gateway-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let args: Vec<String> = chart_args
                .iter()
                .map(|a| {
                    let flag = a.split('=').next().unwrap();
                    match flag {
                        "--listen" => format!("--listen=127.0.0.1:{}", 9180 + i),
                        "--data-dir" => format!("--data-dir={}", data.display()),
                        "--gateway-listen" => format!("--gateway-listen=127.0.0.1:{port}"),
                        // The Secrets a pod mounts: the site's certificate for 127.0.0.1 and
                        // the operator's imaging key (enrollment credentials).
                        "--gateway-cert" => format!("--gateway-cert={}", self.cert.display()),
                        "--gateway-key" => format!("--gateway-key={}", self.key.display()),
                        "--imaging-key-file" => {
                            format!(
                                "--imaging-key-file={}",
                                self.data.join("imaging.key").display()
                            )
                        }
                        _ => a
                            .replace("$(POD_NAMESPACE)", ns)
                            .replace("$(POD_NAME)", &pod),
                    }
                })
                .collect();
            let log = std::fs::File::create(self.dir.join(format!("gateway-{i}.log"))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &self.boot_ns()])
                .arg(OPERATOR)
                .args(&args)
                .env("KUBECONFIG", &k8s.kubeconfig)
                .env("RECAST_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start a gateway replica");
            self.gateways.push((port, Some(Proc(child))));
        }
        let ports: Vec<u16> = self.gateways.iter().map(|(p, _)| *p).collect();
        for port in &ports {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            self.wait(
                Duration::from_secs(60),
                "a gateway replica to listen",
                || net::connect(Some(&self.boot_ns()), addr).is_ok(),
            );
        }
        self.route_gateways();
        self.note(&format!(
            "{} gateway replicas started from the chart's Deployment (--role gateway), behind 127.0.0.1:8443",
            ports.len()
        ));
    }

    /// Points 127.0.0.1:8443 at the live replicas, as a Service's endpoints are.
    fn route_gateways(&self) {
        let live: Vec<u16> = self
            .gateways
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(port, _)| *port)
            .collect();
        let ipt = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.boot_ns(), "iptables", "-t", "nat"])
                .args(args)
                .status()
                .unwrap();
            assert!(ok.success(), "iptables {args:?}");
        };
        ipt(&["-F", "OUTPUT"]);
        for (i, port) in live.iter().enumerate() {
            let to = port.to_string();
            let mut rule = vec![
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                "127.0.0.1",
                "--dport",
                "8443",
            ];
            let every = (live.len() - i).to_string();
            if i + 1 < live.len() {
                rule.extend([
                    "-m",
                    "statistic",
                    "--mode",
                    "nth",
                    "--every",
                    &every,
                    "--packet",
                    "0",
                ]);
            }
            rule.extend(["-j", "REDIRECT", "--to-ports", &to]);
            ipt(&rule);
        }
    }

    /// SIGKILL one gateway replica (a node lost, a pod evicted); the address stops sending
    /// new connections to it.
    pub fn kill_gateway(&mut self, index: usize, why: &str) {
        if let Some((_, p)) = self.gateways.get_mut(index) {
            p.take();
        }
        self.route_gateways();
        self.note(&format!("gateway replica {index} killed (SIGKILL) {why}"));
    }

    /// Each gateway replica's log, in order.
    pub fn gateway_logs(&self) -> String {
        (0..self.gateways.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("gateway-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn operator_log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("operator-{run}.log"))
    }

    /// Every run's log, in order.
    pub fn operator_logs(&self) -> String {
        (1..=self.operator_runs)
            .map(|r| std::fs::read_to_string(self.operator_log_path(r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn start_operator(&mut self) {
        self.start_operator_with(None);
    }

    pub fn start_operator_with(&mut self, faketime: Option<&str>) {
        assert!(self.operator.is_none(), "the operator is already running");
        let mut cmd = self.operator_command(faketime);
        self.operator_runs += 1;
        let log = std::fs::File::create(self.operator_log_path(self.operator_runs)).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start recast-operator");
        self.operator = Some(Proc(child));
        let run = self.operator_runs;
        let path = self.operator_log_path(run);
        self.wait(
            Duration::from_secs(60),
            "the operator to serve HTTP boot",
            || {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                log.contains("serving HTTP boot")
            },
        );
        self.start_gateways();
    }

    /// SIGKILL: no shutdown path runs (a crash, an OOM kill, a node lost).
    pub fn kill_operator(&mut self, why: &str) {
        if let Some(mut p) = self.operator.take() {
            // `ip netns exec` execs the operator, so the child is the operator itself.
            let _ = p.0.kill();
            let _ = p.0.wait();
            std::mem::forget(p);
        }
        self.note(&format!("operator killed (SIGKILL) {why}"));
    }

    pub fn restart_operator(&mut self, why: &str) {
        self.kill_operator(why);
        self.start_operator();
    }

    pub fn note(&mut self, what: &str) {
        eprintln!("[e2e] {what}");
        self.transcript.push(format!("- {what}"));
    }

    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// recastctl pointed at this site's store, as a user runs it.
    fn recastctl_command(&self) -> Command {
        let mut cmd = Command::new(bin("recastctl"));
        match &self.backend {
            Backend::Embedded => {
                cmd.arg("--data-dir").arg(&self.data);
            }
            Backend::Kube { k8s, ns } => {
                cmd.args(["--backend", "kube", "-n", ns])
                    .env("KUBECONFIG", &k8s.kubeconfig);
            }
        }
        cmd
    }

    /// recastctl as a user runs it against this site's store.
    pub fn recastctl(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .recastctl_command()
            .args(args)
            .output()
            .expect("run recastctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `recastctl ARGS`, recorded for the walkthrough with its real output.
    pub fn show(&mut self, args: &[&str]) -> String {
        let (ok, out) = self.show_exit(args);
        assert!(ok, "recastctl {} failed:\n{out}", args.join(" "));
        out
    }

    /// Like `show`, for a command whose exit code is part of the answer.
    pub fn show_exit(&mut self, args: &[&str]) -> (bool, String) {
        let (ok, out) = self.recastctl(args);
        self.transcript.push(format!(
            "\n```console\n$ recastctl {}\n{}```\n",
            args.join(" "),
            out
        ));
        (ok, out)
    }

    pub fn get(&self, kind: &str, name: &str) -> Value {
        for _ in 0..20 {
            let (ok, out) = self.recastctl(&["get", kind, name, "-o", "json"]);
            if ok {
                return serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            }
            // The apiserver may be restarting.
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("recastctl get {kind} {name} kept failing");
    }

    pub fn endpoint(&self, name: &str) -> Value {
        self.get("rep", name)
    }

    pub fn events(&self, name: &str) -> String {
        self.recastctl(&["describe", "rep", name]).1
    }

    pub fn metrics(&self) -> String {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        net::connect(Some(&self.boot_ns()), addr)
            .and_then(|s| crate::http::send(s, "GET", "127.0.0.1", "/metrics", &[], b""))
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// Issues the endpoint's gateway token as a site does, with `recastctl token issue` (on
    /// Kubernetes into the control namespace, here the lease namespace).
    pub fn issue_token(&self, name: &str) -> PathBuf {
        let mut args = vec!["token", "issue", name];
        if let Backend::Kube { ns, .. } = &self.backend {
            args.extend(["--operator-namespace", ns.as_str()]);
        }
        let out = self.recastctl_command().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join(format!("{name}.token"));
        std::fs::write(&path, String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        path
    }

    /// Points the agent of `name` at replay fixture `phase` (december, failed-rollback,
    /// january): the files Windows' tools print on that machine now.
    pub fn windows_state(&self, name: &str, phase: &str) -> PathBuf {
        let live = self.dir.join(format!("windows-{name}"));
        let _ = std::fs::remove_dir_all(&live);
        std::fs::create_dir_all(&live).unwrap();
        for f in std::fs::read_dir(self.dir.join("fixtures").join(phase)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), live.join(f.file_name())).unwrap();
        }
        live
    }

    /// Starts the endpoint's agent (a Windows service on the real machine): every 3 s, from
    /// the boot namespace's loopback to the gateway.
    pub fn start_agent(
        &mut self,
        name: &str,
        token: &Path,
        state: &str,
        agent_config: Option<&Path>,
    ) {
        self.stop_agent(name);
        let mut cmd = self.agent_command(name, token, state, agent_config);
        cmd.args(["--interval", "3s", "--jitter", "0s"]);
        let log =
            std::fs::File::create(self.dir.join(format!("agent-{name}-{state}.log"))).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(name.to_string(), Proc(child));
    }

    pub fn agent_command(
        &self,
        name: &str,
        token: &Path,
        state: &str,
        agent_config: Option<&Path>,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.boot_ns()])
            .arg(bin("recast-agent"))
            .args([
                "run",
                "--endpoint",
                name,
                "--gateway",
                GATEWAY,
                "--token-file",
            ])
            .arg(token)
            .arg("--state-file")
            .arg(self.dir.join(format!("agent-{name}-{state}.seq")))
            .arg("--ca-file")
            .arg(&self.ca)
            .arg("--replay")
            .arg(self.dir.join(format!("windows-{name}")))
            .env("RECAST_LOG", "info");
        if let Some(c) = agent_config {
            cmd.arg("--agent-config").arg(c);
        }
        cmd
    }

    /// The agent as a golden image's service starts it: nothing per machine on its command
    /// line, the endpoint and the gateway from the agent.json the imager wrote.
    pub fn agent_command_from_config(
        &self,
        name: &str,
        token: &Path,
        agent_config: &Path,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.boot_ns()])
            .arg(bin("recast-agent"))
            .args(["run", "--token-file"])
            .arg(token)
            .arg("--state-file")
            .arg(self.dir.join(format!("agent-{name}-from-config.seq")))
            .arg("--ca-file")
            .arg(&self.ca)
            .arg("--replay")
            .arg(self.dir.join(format!("windows-{name}")))
            .arg("--agent-config")
            .arg(agent_config)
            .env("RECAST_LOG", "info")
            .env_remove("RECAST_ENDPOINT")
            .env_remove("RECAST_GATEWAY");
        cmd
    }

    /// `recast-agent collect`: the report the agent would send now, as a file.
    pub fn collect(&self, name: &str, tag: &str) -> PathBuf {
        let out = Command::new(bin("recast-agent"))
            .args([
                "collect",
                "--endpoint",
                name,
                "--interval",
                "3s",
                "--replay",
            ])
            .arg(self.dir.join(format!("windows-{name}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join(format!("report-{name}-{tag}.json"));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    /// POSTs a report file to the gateway with curl, as any HTTP client could; returns the
    /// status code and body.
    pub fn post_report(&self, token: &Path, report: &Path) -> (u16, String) {
        let token = std::fs::read_to_string(token).unwrap();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.boot_ns(),
                "curl",
                "-sS",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", report.display()))
            .arg(format!("{GATEWAY}/v1/reports"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn stop_agent(&mut self, name: &str) {
        self.agents.remove(name);
    }

    /// Waits for `done`, failing at once (with its log) if the operator process died: nothing
    /// here restarts it, so a crash is a finding, not a delay.
    pub fn wait(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            self.assert_operator_alive(what);
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\noperator (last run):\n{}",
                tail(
                    &std::fs::read_to_string(self.operator_log_path(self.operator_runs))
                        .unwrap_or_default(),
                    40
                )
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn assert_operator_alive(&self, what: &str) {
        let Some(p) = &self.operator else { return };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.0.id())).unwrap_or_default();
        // The third field is the state; an exited child we have not reaped is a zombie (Z).
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        assert!(
            !matches!(state, None | Some("Z") | Some("X")),
            "the operator exited while waiting for {what}:\n{}",
            tail(
                &std::fs::read_to_string(self.operator_log_path(self.operator_runs))
                    .unwrap_or_default(),
                40
            )
        );
    }

    /// The endpoint's status once it has not changed for `quiet` (at most a minute): what the
    /// controller made of everything queued before the call.
    pub fn settled_status(&self, name: &str, quiet: Duration) -> Value {
        let start = Instant::now();
        let mut last = self.endpoint(name)["status"].clone();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.endpoint(name)["status"].clone();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return last;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name}: the status kept changing for a minute"
            );
        }
    }

    pub fn wait_endpoint(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let ep = self.endpoint(name);
            if done(&ep) {
                return ep;
            }
            self.assert_operator_alive(what);
            if start.elapsed() > limit {
                panic!(
                    "{name}: {what} did not happen within {limit:?}\nendpoint:\n{}\nevents:\n{}\nBMC requests:\n{}\noperator (last run):\n{}",
                    serde_json::to_string_pretty(&ep["status"]).unwrap(),
                    self.events(name),
                    self.bridge.requests.lock().unwrap().join("\n"),
                    tail(
                        &std::fs::read_to_string(self.operator_log_path(self.operator_runs))
                            .unwrap_or_default(),
                        60
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Slows (or, with `None`, frees) the link into QEMU machine `name`: a token bucket on the
    /// egress of its tap in the site namespace, i.e. on everything the machine downloads. A
    /// slow download is how the suite catches recast-imager mid-download.
    pub fn throttle(&self, name: &str, rate: Option<&str>) {
        let tap = self
            .bridge
            .with(name, |m| match &m.kind {
                bmc::Kind::Qemu { tap, .. } => Some(tap.clone()),
                bmc::Kind::Simulated => None,
            })
            .unwrap_or_else(|| panic!("{name} is not a QEMU machine"));
        let ns = format!("{}-site", self.net_name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "tc", "qdisc"]);
        match rate {
            Some(rate) => cmd.args([
                "replace", "dev", &tap, "root", "tbf", "rate", rate, "burst", "32kb", "latency",
                "2s",
            ]),
            None => cmd.args(["del", "dev", &tap, "root"]),
        };
        let ok = cmd.status().unwrap();
        assert!(ok.success(), "tc on {tap} ({rate:?}) failed");
    }

    pub fn serial(&self, name: &str) -> String {
        self.bridge
            .with(name, |m| m.serial.clone())
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.agents.clear();
        self.operator.take();
        self.gateways.clear();
        let _ = Command::new(recast_tests::repo_root().join("tests/pxe/netns.sh"))
            .args(["down", &self.net_name])
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("[e2e] kept {} for inspection", self.dir.display());
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The Windows sides the agents replay, from the agent's fixtures (the exact shape
/// wevtutil/reg/fsutil print): december (healthy on 26100.7462, before the January update),
/// failed-rollback (KB5074109 failed and rolled back: WindowsUpdateClient 20 + Servicing 3 for
/// the RollupFix package), january (the golden image's 26100.7623).
fn fixtures(dir: &Path) {
    let src = recast_tests::repo_root().join("agent/tests/fixtures/replay");
    let out = dir.join("fixtures");
    let copy = |from: &str, to: &str| {
        let target = out.join(to);
        std::fs::create_dir_all(&target).unwrap();
        for f in std::fs::read_dir(src.join(from)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), target.join(f.file_name())).unwrap();
        }
    };
    copy("failed-rollback", "failed-rollback");
    copy("healthy", "january");
    // December: the failed-rollback machine before the January update was tried: the same
    // build, only the December LCU's successful install, nothing pending.
    copy("failed-rollback", "december");
    let dec = out.join("december");
    for f in ["reg-rebootpending.txt", "pending-xml.txt"] {
        let _ = std::fs::remove_file(dec.join(f));
    }
    std::fs::copy(
        src.join("healthy/reg-sessionspending.txt"),
        dec.join("reg-sessionspending.txt"),
    )
    .unwrap();
    let keep_only = |file: &str, keep: &dyn Fn(&str) -> bool| {
        let path = dec.join(file);
        // wevtutil /uni:true's UTF-16LE, as the fixtures hold it.
        let text = recast_agent::text::decode_event_xml(&std::fs::read(&path).unwrap())
            .expect("a wevtutil fixture");
        let mut events = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("<Event ") {
            let end = rest[start..].find("</Event>").unwrap() + start + "</Event>".len();
            if keep(&rest[start..end]) {
                events.push(rest[start..end].to_string());
            }
            rest = &rest[end..];
        }
        let body = if events.is_empty() {
            "<Events>\r\n</Events>\r\n".to_string()
        } else {
            format!("<Events>\r\n{}\r\n</Events>\r\n", events.join("\r\n"))
        };
        let mut bytes = vec![0xff, 0xfe];
        bytes.extend(body.encode_utf16().flat_map(u16::to_le_bytes));
        std::fs::write(&path, bytes).unwrap();
    };
    keep_only("wevtutil-updates.xml", &|e| {
        e.contains("2025-12 Cumulative Update")
    });
    keep_only("wevtutil-servicing.xml", &|e| !e.contains("26100.7623"));
}
