//! The test-only bridge between sushy-tools' Redfish emulator and the machines. Every Redfish
//! request from the operator goes through it to sushy (the real Redfish peer: sessions, ETags,
//! the boot override and power state are sushy's); the bridge
//! - starts a machine when a reset switches it on: a network boot when sushy's boot override
//!   says Pxe (then it consumes the override, as a real BMC does with a one-time boot; sushy's
//!   fake driver keeps it), otherwise "Windows" boots from the disk, which the test's agent
//!   plays; it stops the machine when a reset switches it off;
//! - adds the system event log sushy's fake driver lacks (the crash path writes an OS critical
//!   stop there, as a BMC's SEL records a blue screen);
//! - answers 500s or stalls past the client's timeout while a fault is switched on.
//!
//! A machine is a QEMU VM (BIOS with Debian's iPXE as its NIC ROM, or UEFI with Secure Boot
//! enforced and the signed chain; the imaging environment runs in it), or a simulated one whose imaging environment is `recast_tests::imaging`, which speaks
//! the same imaging protocol from the test process.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http;
use crate::net;

const ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    /// Every request gets 500 Internal Server Error.
    ServerErrors,
    /// Every request hangs for longer than the client's timeout, then the connection drops.
    Timeouts,
}

#[derive(Clone)]
pub enum Kind {
    /// A QEMU VM on `tap` (in the site namespace) with `disk` as its only disk, imaged by
    /// recast's Linux imaging environment.
    Qemu {
        tap: String,
        disk: PathBuf,
        /// UEFI with Secure Boot enforced (OVMF's own PXE, the signed chain) instead of BIOS
        /// with Debian's iPXE as the NIC ROM.
        secure_boot: bool,
    },
    Simulated,
}

pub struct Machine {
    pub name: String,
    pub uuid: String,
    pub mac: String,
    pub kind: Kind,
    /// What a simulated machine's imaging environment is told: "" or
    /// "recast-e2e:fail-apply" (QEMU machines run the real recast-imager, which takes no
    /// orders; their faults come from the network, see `Site::throttle`).
    pub control: String,
    pub powered: bool,
    pub vm: Option<Child>,
    /// Network boots (each one the start of an imaging run).
    pub network_boots: u32,
    /// Imaging runs that ended (the machine then boots Windows from its disk).
    pub imaged: u32,
    /// agent.json the last imaging run left for Windows: read back from the imaged NTFS volume
    /// (`\ProgramData\recast\agent.json`) for QEMU machines.
    pub agent_config: Option<String>,
    /// The serial console of the last QEMU run.
    pub serial: Option<PathBuf>,
    pub event_log: Vec<Value>,
}

pub struct Bridge {
    pub machines: Arc<Mutex<BTreeMap<String, Machine>>>,
    pub fault: Arc<Mutex<Fault>>,
    /// Every request the bridge saw: "METHOD path -> status".
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Where the operator reaches the bridge (inside the boot namespace).
    pub url: String,
    ctx: Ctx,
}

#[derive(Clone)]
struct Ctx {
    machines: Arc<Mutex<BTreeMap<String, Machine>>>,
    fault: Arc<Mutex<Fault>>,
    requests: Arc<Mutex<Vec<String>>>,
    sushy: SocketAddr,
    site_ns: String,
    boot_ns: String,
    dir: PathBuf,
    boot_http: SocketAddr,
}

impl Bridge {
    /// Listens on 127.0.0.1:`port` inside `boot_ns` and forwards to sushy at `sushy` (root
    /// namespace loopback).
    pub fn start(
        machines: Vec<Machine>,
        sushy: SocketAddr,
        boot_ns: &str,
        site_ns: &str,
        dir: &Path,
        boot_http: SocketAddr,
    ) -> Bridge {
        let port = recast_tests::free_port();
        let listener = net::listen(Some(boot_ns), ([127, 0, 0, 1], port).into());
        let ctx = Ctx {
            machines: Arc::new(Mutex::new(
                machines.into_iter().map(|m| (m.uuid.clone(), m)).collect(),
            )),
            fault: Arc::new(Mutex::new(Fault::None)),
            requests: Arc::new(Mutex::new(Vec::new())),
            sushy,
            site_ns: site_ns.to_string(),
            boot_ns: boot_ns.to_string(),
            dir: dir.to_path_buf(),
            boot_http,
        };
        let bridge = Bridge {
            machines: ctx.machines.clone(),
            fault: ctx.fault.clone(),
            requests: ctx.requests.clone(),
            url: format!("http://127.0.0.1:{port}"),
            ctx: ctx.clone(),
        };
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let ctx = ctx.clone();
                std::thread::spawn(move || ctx.serve(conn));
            }
        });
        let watch = bridge.machines.clone();
        std::thread::spawn(move || reap(watch));
        bridge
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Machine) -> T) -> T {
        let mut all = self.machines.lock().unwrap();
        let m = all
            .values_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no machine {name}"));
        f(m)
    }

    /// Power-state changes the BMC performed, per machine name: the resets that reached sushy
    /// and succeeded.
    pub fn resets(&self, uuid: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("POST") && r.contains(uuid) && r.contains("Reset -> 20"))
            .count()
    }

    /// Starts `name`'s VM booting from the network, as its own firmware does when Windows
    /// restarts into a one-time network boot (no BMC involved). `reboots`: the VM restarts
    /// when the machine resets instead of exiting (a machine left to itself, looping).
    pub fn start_vm(&self, name: &str, reboots: bool) {
        let uuid = self.with(name, |m| m.uuid.clone());
        self.ctx.start_vm(&uuid, reboots);
    }

    /// Switches `name`'s VM off (as a person holding the power button would) and returns the
    /// agent.json its disk holds, if any.
    pub fn stop_vm(&self, name: &str) -> Option<String> {
        let (vm, disk) = self.with(name, |m| {
            m.powered = false;
            let disk = match &m.kind {
                Kind::Qemu { disk, .. } => Some(disk.clone()),
                Kind::Simulated => None,
            };
            (m.vm.take(), disk)
        });
        if let Some(mut vm) = vm {
            let _ = vm.kill();
            let _ = vm.wait();
        }
        disk.and_then(|d| agent_json_on(&d))
    }

    /// The BMC's event log records an OS critical stop (a blue screen) on `name` now.
    pub fn record_crash(&self, name: &str, bugcheck: u32, what: &str) {
        self.with(name, |m| {
            let id = (m.event_log.len() + 1).to_string();
            m.event_log.push(json!({
                "@odata.id": format!("/redfish/v1/Systems/{}/LogServices/EventLog/Entries/{id}", m.uuid),
                "@odata.type": "#LogEntry.v1_9_0.LogEntry",
                "Id": id,
                "Name": format!("Log Entry {id}"),
                "EntryType": "SEL",
                "Created": jiff::Timestamp::now().to_string(),
                "Severity": "Critical",
                "SensorType": "OS Stop/Shutdown",
                "EntryCode": "Assert",
                "Message": format!("OS Stop/Shutdown: run-time critical stop. STOP: 0x{bugcheck:08X} ({what})"),
            }));
        });
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for m in self.machines.lock().unwrap().values_mut() {
            if let Some(mut vm) = m.vm.take() {
                let _ = vm.kill();
                let _ = vm.wait();
            }
        }
    }
}

/// Notices VMs that powered themselves off at the end of imaging: the machine then reboots into
/// the freshly applied Windows, whose agent configuration the imager wrote into it.
fn reap(machines: Arc<Mutex<BTreeMap<String, Machine>>>) {
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let mut all = match machines.lock() {
            Ok(all) => all,
            Err(_) => return,
        };
        for m in all.values_mut() {
            let exited =
                m.vm.as_mut()
                    .is_some_and(|vm| vm.try_wait().ok().flatten().is_some());
            if exited {
                m.vm = None;
                m.imaged += 1;
                if let Kind::Qemu { disk, .. } = &m.kind {
                    m.agent_config = agent_json_on(disk);
                }
            }
        }
    }
}

/// agent.json as the imager left it in the new Windows, read from the disk with sfdisk and a
/// read-only ntfs-3g mount of the Windows partition (MBR id 7), or None when the disk holds
/// no such file (the imaging run failed).
fn agent_json_on(disk: &Path) -> Option<String> {
    // A disk the run never partitioned has no table: nothing to read.
    let table = recast_tests::readback::Table::try_read(disk)?;
    // MBR id 7, or GPT's Microsoft basic data type.
    let windows = table.partitions.iter().position(|p| {
        p.type_ == "7"
            || p.type_
                .eq_ignore_ascii_case("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
    })?;
    let (offset, len) = table.extent(windows);
    let mount = recast_tests::readback::MountedNtfs::partition(disk, offset, len);
    let text = std::fs::read_to_string(mount.path().join("ProgramData/recast/agent.json")).ok();
    let _ = mount.unmount();
    text
}

impl Ctx {
    fn log(&self, line: String) {
        self.requests.lock().unwrap().push(line);
    }

    fn serve(&self, conn: TcpStream) {
        let Ok(req) = http::read_request(&conn) else {
            return;
        };
        let fault = *self.fault.lock().unwrap();
        match fault {
            Fault::ServerErrors => {
                self.log(format!("{} {} -> 500 (fault)", req.method, req.path));
                let body = json!({"error": {"code": "Base.1.0.InternalError", "message": "injected by the e2e suite"}});
                http::write_response(
                    &conn,
                    500,
                    &[("Content-Type".into(), "application/json".into())],
                    body.to_string().as_bytes(),
                );
                return;
            }
            Fault::Timeouts => {
                self.log(format!("{} {} -> timeout (fault)", req.method, req.path));
                // Longer than the operator's Redfish request timeout; then drop the connection.
                std::thread::sleep(Duration::from_secs(45));
                return;
            }
            Fault::None => {}
        }
        let path = req.path.split('?').next().unwrap_or("").to_string();
        if let Some((uuid, rest)) = system_path(&path)
            && rest.starts_with("/LogServices")
        {
            let (status, body) = self.log_service(&uuid, &rest);
            self.log(format!("{} {} -> {status}", req.method, req.path));
            http::write_response(
                &conn,
                status,
                &[("Content-Type".into(), "application/json".into())],
                body.to_string().as_bytes(),
            );
            return;
        }
        let mut headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .filter(|(k, _)| {
                !["host", "connection", "content-length", "accept-encoding"]
                    .iter()
                    .any(|s| k.eq_ignore_ascii_case(s))
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("Accept-Encoding", "identity"));
        let upstream = match net::connect(None, self.sushy).and_then(|s| {
            http::send(
                s,
                &req.method,
                &self.sushy.to_string(),
                &req.path,
                &headers,
                &req.body,
            )
        }) {
            Ok(r) => r,
            Err(e) => {
                self.log(format!("{} {} -> 502 ({e})", req.method, req.path));
                http::write_response(&conn, 502, &[], e.to_string().as_bytes());
                return;
            }
        };
        let mut body = upstream.body.clone();
        // The system resource gains the event log sushy's fake driver lacks.
        if req.method == "GET"
            && let Some((uuid, rest)) = system_path(&path)
            && rest.is_empty()
            && upstream.status == 200
            && let Ok(mut v) = serde_json::from_slice::<Value>(&body)
        {
            v["LogServices"] =
                json!({"@odata.id": format!("/redfish/v1/Systems/{uuid}/LogServices")});
            body = v.to_string().into_bytes();
        }
        if req.method == "POST"
            && (200..300).contains(&upstream.status)
            && let Some((uuid, rest)) = system_path(&path)
            && rest == "/Actions/ComputerSystem.Reset"
        {
            let reset = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v["ResetType"].as_str().map(str::to_string))
                .unwrap_or_default();
            self.react(&uuid, &reset);
        }
        self.log(format!(
            "{} {} -> {}",
            req.method, req.path, upstream.status
        ));
        http::write_response(&conn, upstream.status, &upstream.headers, &body);
    }

    fn log_service(&self, uuid: &str, rest: &str) -> (u16, Value) {
        let base = format!("/redfish/v1/Systems/{uuid}/LogServices");
        let machines = self.machines.lock().unwrap();
        let Some(m) = machines.get(uuid) else {
            return (404, json!({"error": {"message": "no such system"}}));
        };
        match rest.trim_end_matches('/') {
            "/LogServices" => (
                200,
                json!({"@odata.id": base, "@odata.type": "#LogServiceCollection.LogServiceCollection",
                       "Name": "System Log Services", "Members@odata.count": 1,
                       "Members": [{"@odata.id": format!("{base}/EventLog")}]}),
            ),
            "/LogServices/EventLog" => (
                200,
                json!({"@odata.id": format!("{base}/EventLog"), "@odata.type": "#LogService.v1_1_0.LogService",
                       "Id": "EventLog", "Name": "System Event Log", "OverWritePolicy": "WrapsWhenFull",
                       "Entries": {"@odata.id": format!("{base}/EventLog/Entries")}}),
            ),
            "/LogServices/EventLog/Entries" => (
                200,
                json!({"@odata.id": format!("{base}/EventLog/Entries"), "@odata.type": "#LogEntryCollection.LogEntryCollection",
                       "Name": "System Event Log Entries", "Members@odata.count": m.event_log.len(),
                       "Members": m.event_log}),
            ),
            _ => (404, json!({"error": {"message": "no such log resource"}})),
        }
    }

    /// What the machine does after a reset sushy accepted.
    fn react(&self, uuid: &str, reset: &str) {
        match reset {
            "On" | "ForceOn" => self.power_on(uuid),
            "ForceOff" | "GracefulShutdown" | "PushPowerButton" | "Nmi" => self.power_off(uuid),
            "ForceRestart" | "GracefulRestart" | "PowerCycle" => {
                self.power_off(uuid);
                self.power_on(uuid);
            }
            _ => {}
        }
    }

    fn power_off(&self, uuid: &str) {
        let mut machines = self.machines.lock().unwrap();
        if let Some(m) = machines.get_mut(uuid) {
            m.powered = false;
            if let Some(mut vm) = m.vm.take() {
                let _ = vm.kill();
                let _ = vm.wait();
            }
        }
    }

    fn power_on(&self, uuid: &str) {
        let sys = net::connect(None, self.sushy)
            .and_then(|s| {
                http::send(
                    s,
                    "GET",
                    &self.sushy.to_string(),
                    &format!("/redfish/v1/Systems/{uuid}"),
                    &[],
                    b"",
                )
            })
            .map(|r| r.json())
            .unwrap_or(Value::Null);
        let boot = &sys["Boot"];
        let network = boot["BootSourceOverrideTarget"] == "Pxe"
            && boot["BootSourceOverrideEnabled"] != "Disabled";
        if network {
            // A one-time override is used up by this boot (sushy's fake driver keeps it).
            let patch = json!({"Boot": {"BootSourceOverrideEnabled": "Disabled"}}).to_string();
            let _ = net::connect(None, self.sushy).and_then(|s| {
                http::send(
                    s,
                    "PATCH",
                    &self.sushy.to_string(),
                    &format!("/redfish/v1/Systems/{uuid}"),
                    &[("Content-Type", "application/json")],
                    patch.as_bytes(),
                )
            });
        }
        if network {
            self.start_vm(uuid, false);
        } else if let Some(m) = self.machines.lock().unwrap().get_mut(uuid) {
            // Windows boots from the disk; the test's agent plays it.
            m.powered = true;
        }
    }

    /// The machine boots from the network: a QEMU VM (exiting at its first reset unless
    /// `reboots`), or the simulated imaging environment.
    fn start_vm(&self, uuid: &str, reboots: bool) {
        let mut machines = self.machines.lock().unwrap();
        let Some(m) = machines.get_mut(uuid) else {
            return;
        };
        m.powered = true;
        m.network_boots += 1;
        m.agent_config = None;
        match m.kind.clone() {
            Kind::Qemu {
                tap,
                disk,
                secure_boot,
            } => {
                let serial = self
                    .dir
                    .join(format!("serial-{}-{}.log", m.name, m.network_boots));
                m.serial = Some(serial.clone());
                let vm = Vm {
                    site_ns: &self.site_ns,
                    tap: &tap,
                    mac: &m.mac,
                    uuid: &m.uuid,
                    disk: &disk,
                    serial: &serial,
                    secure_boot,
                    reboots,
                };
                m.vm = Some(qemu(&vm));
            }
            Kind::Simulated => {
                let ctx = self.clone();
                let (uuid, mac, control) = (uuid.to_string(), m.mac.clone(), m.control.clone());
                std::thread::spawn(move || {
                    let ns = ctx.boot_ns.clone();
                    let config = recast_tests::imaging::simulated_imaging(
                        &|addr| net::connect(Some(&ns), addr),
                        ctx.boot_http,
                        &mac,
                        &control,
                        &mut |_| {},
                    );
                    let mut machines = ctx.machines.lock().unwrap();
                    if let Some(m) = machines.get_mut(&uuid) {
                        m.imaged += 1;
                        m.agent_config = config;
                    }
                });
            }
        }
    }
}

/// ("uuid", "rest of the path") of /redfish/v1/Systems/<uuid><rest>.
fn system_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/redfish/v1/Systems/")?;
    let (uuid, rest) = rest.split_once('/').map_or((rest, ""), |(u, r)| (u, r));
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("/{rest}")
    };
    Some((uuid.to_string(), rest))
}

/// One QEMU run of a machine.
struct Vm<'a> {
    site_ns: &'a str,
    tap: &'a str,
    mac: &'a str,
    uuid: &'a str,
    disk: &'a Path,
    serial: &'a Path,
    secure_boot: bool,
    /// Restart at a reset instead of exiting.
    reboots: bool,
}

fn qemu(vm: &Vm) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", vm.site_ns, "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-display", "none", "-monitor", "none"]);
    if !vm.reboots {
        cmd.arg("-no-reboot");
    }
    cmd
        // The Endpoint names this SMBIOS UUID; recast-imager checks it before writing.
        .args(["-uuid", vm.uuid])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", vm.tap),
        ]);
    if vm.secure_boot {
        // OVMF enforcing Secure Boot with Microsoft's keys and the test fleet's "2011" CA
        // (which signed the golden image's boot manager); its own PXE client first (an option
        // ROM would be iPXE, which it refuses), then the disk.
        let vars = vm.serial.with_extension("vars.fd");
        recast_tests::secure_boot::fleet_vars(&vars, &Default::default());
        cmd.args(["-m", "1024"])
            .args(recast_tests::secure_boot::qemu_args(&vars))
            .args([
                "-device",
                &format!(
                    "virtio-net-pci,netdev=n0,mac={},romfile=,bootindex=1",
                    vm.mac
                ),
            ])
            .args([
                "-drive",
                &format!("if=none,id=d0,file={},format=raw", vm.disk.display()),
            ])
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=2"]);
    } else {
        cmd.args(["-m", "512", "-boot", "n"])
            .args([
                "-device",
                &format!("e1000,netdev=n0,mac={},romfile={ROM}", vm.mac),
            ])
            .args([
                "-drive",
                &format!("file={},format=raw,if=virtio", vm.disk.display()),
            ]);
    }
    cmd.args(["-serial", &format!("file:{}", vm.serial.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu")
}
