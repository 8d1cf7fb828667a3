//! The boot service proven with real firmware: QEMU machines whose NIC boot ROM is Debian's
//! iPXE (`ipxe-qemu`) boot over a provisioning network inside network namespaces this test
//! creates (tests/pxe/netns.sh), next to dnsmasq as the site's DHCP server, against the real
//! recast-operator binary on the embedded store.
//!
//! (a) an endpoint with no armed attempt is told to boot locally;
//! (b) an armed endpoint gets the imaging script and its files; the imaging environment (a Debian
//!     kernel + busybox initrd playing WinPE's part, tests/pxe/imager-init.sh) follows the
//!     imaging protocol, downloads the image with a Range-resumed GET, checks its sha256, writes
//!     it to the VM's disk and reports; the test compares the disk's bytes;
//! (c) full DHCP mode works without dnsmasq;
//! (d) a first-stage client that only speaks TFTP (OVMF's own PXE client) gets the iPXE binary
//!     from recast's TFTP server and chains into HTTP.
//!
//! Needs root, QEMU, dnsmasq and the Debian kernel (tests/pxe/setup.sh). Skips loudly without
//! them unless RECAST_REQUIRE_PXE=1 (CI sets it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

const REQUIRE: &str = "RECAST_REQUIRE_PXE";
const ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";
const EFI_ROM: &str = "/usr/lib/ipxe/qemu/efi-e1000.rom";
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[derive(Clone, Copy, PartialEq)]
enum Firmware {
    Bios,
    Uefi,
}

fn repo() -> PathBuf {
    recast_tests::repo_root()
}

fn missing_prerequisite() -> Option<String> {
    if !recast_tests::is_root() {
        return Some("the PXE tier needs root (network namespaces, tap devices)".into());
    }
    for cmd in ["qemu-system-x86_64", "dnsmasq", "ip", "busybox", "cpio"] {
        if !recast_tests::have(cmd) {
            return Some(format!("{cmd} is missing (run tests/pxe/setup.sh)"));
        }
    }
    if !Path::new(OVMF).exists() {
        return Some("OVMF (UEFI firmware) is missing (run tests/pxe/setup.sh)".into());
    }
    if !Path::new(ROM).exists() || !Path::new("/usr/lib/ipxe/undionly.kpxe").exists() {
        return Some("Debian's ipxe-qemu / ipxe are missing (run tests/pxe/setup.sh)".into());
    }
    None
}

/// Kills and reaps a child process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The namespaces of one test run; removed on drop.
struct Net(String);

impl Net {
    fn up(name: &str) -> Net {
        let script = repo().join("tests/pxe/netns.sh");
        let _ = Command::new(&script).args(["down", name]).status();
        let ok = Command::new(&script)
            .args(["up", name])
            .status()
            .expect("run netns.sh");
        assert!(ok.success(), "netns.sh up {name} failed");
        Net(name.to_string())
    }

    fn site(&self) -> String {
        format!("{}-site", self.0)
    }

    fn boot(&self) -> String {
        format!("{}-boot", self.0)
    }

    fn dnsmasq(&self, dir: &Path) -> Proc {
        let log = std::fs::File::create(dir.join("dnsmasq.log")).unwrap();
        let child = Command::new(repo().join("tests/pxe/netns.sh"))
            .args(["dnsmasq", &self.0])
            .arg(dir.join("dnsmasq.leases"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dnsmasq");
        Proc(child)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/pxe/netns.sh"))
            .args(["down", &self.0])
            .status();
    }
}

/// Deterministic pseudo-random bytes: the "WIM" the imaging environment writes.
fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Site {
    dir: PathBuf,
    root: PathBuf,
    data: PathBuf,
    digest: String,
    payload: Vec<u8>,
}

const VM1: &str = "52:54:00:77:00:01";
const VM2: &str = "52:54:00:77:00:02";
const VM3: &str = "52:54:00:77:00:03";

fn prepare(tag: &str) -> Site {
    let dir = std::env::temp_dir().join(format!("recast-pxe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("boot");
    let data = dir.join("data");
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    for f in ["undionly.kpxe", "snponly.efi", "ipxe.efi"] {
        std::fs::copy(format!("/usr/lib/ipxe/{f}"), root.join("ipxe").join(f)).unwrap();
    }
    let ok = Command::new(repo().join("tests/pxe/build-imager.sh"))
        .arg(&root)
        .status()
        .unwrap();
    assert!(ok.success(), "build-imager.sh failed");
    let bytes = payload(3 * 1024 * 1024 + 12345);
    let tmp = dir.join("payload");
    std::fs::write(&tmp, &bytes).unwrap();
    let digest = recast_tests::sha256_file(&tmp);
    std::fs::rename(&tmp, root.join("images").join(format!("{digest}.wim"))).unwrap();

    let store = EmbeddedStore::open(&data).unwrap();
    let docs = [
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "vm-01"},
               "spec": {"identity": {"macAddresses": [VM1]}, "bootMode": "bios", "image": {"goldenImage": "golden"}}}),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "vm-02"},
               "spec": {"identity": {"macAddresses": [VM2]}, "bootMode": "bios", "image": {"goldenImage": "golden"}}}),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "vm-03"},
               "spec": {"identity": {"macAddresses": [VM3]}, "bootMode": "uefi", "image": {"goldenImage": "golden"}}}),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "default"},
               "spec": {"signals": {"failedRollback": "ReimageNow", "bootCrash": "ReimageNow", "heartbeatLost": "AlertOnly", "drift": "AlertOnly", "nonCompliant": "AlertOnly"},
                        "cooldown": "1m", "retry": {"maxTries": 2, "backoff": "1m", "tryTimeout": "30m"}, "concurrency": {"global": 5}}}),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "GoldenImage", "metadata": {"name": "golden"},
               "spec": {"source": {"path": "/srv/golden.wim"}, "sha256": digest, "requirements": {"minimumBuild": "26100.7623"}}}),
    ];
    for d in &docs {
        store.apply(d, "default").unwrap();
    }
    store
        .write_status(
            Kind::GoldenImage,
            "default",
            "golden",
            None,
            &json!({"digest": digest, "observedGeneration": 1, "conditions": [{"type": "Verified", "status": "True", "reason": "Checked", "message": "", "lastTransitionTime": "2026-01-14T07:00:00Z"}]}),
        )
        .unwrap();
    Site {
        dir,
        root,
        data,
        digest,
        payload: bytes,
    }
}

fn operator(net: &Net, site: &Site, extra: &[&str]) -> Proc {
    let log = std::fs::File::create(site.dir.join("operator.log")).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.boot()])
        .arg(env!("CARGO_BIN_EXE_recast-operator"))
        .args(["run", "--backend", "embedded", "--data-dir"])
        .arg(&site.data)
        .args([
            "--listen",
            "10.77.0.2:8080",
            "--boot-http",
            "10.77.0.2:8081",
            "--boot-root",
        ])
        .arg(&site.root)
        .args([
            "--imaging-environment",
            "linux",
            "--dhcp-server-ip",
            "10.77.0.2",
        ])
        .args(["--dhcp-interface", "vr0"])
        .args(extra)
        .env("RECAST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let p = Proc(cmd.spawn().expect("start recast-operator"));
    recast_tests::wait_for(
        Duration::from_secs(20),
        "the operator's boot service",
        || operator_log(site).contains("serving HTTP boot"),
    );
    p
}

fn operator_log(site: &Site) -> String {
    std::fs::read_to_string(site.dir.join("operator.log")).unwrap_or_default()
}

fn vm(net: &Net, site: &Site, mac: &str, disk: &Path, tag: &str) -> Proc {
    vm_with(net, site, mac, disk, tag, Firmware::Bios)
}

fn vm_with(net: &Net, site: &Site, mac: &str, disk: &Path, tag: &str, fw: Firmware) -> Proc {
    let serial = site.dir.join(format!("serial-{tag}.log"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.site(), "qemu-system-x86_64"])
        .args([
            "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
        ])
        .args(["-no-reboot", "-boot", "n"]);
    if fw == Firmware::Uefi {
        // A fresh copy of the firmware volume: OVMF keeps its variables in it.
        let fd = site.dir.join(format!("ovmf-{tag}.fd"));
        std::fs::copy(OVMF, &fd).unwrap();
        cmd.args([
            "-drive",
            &format!("if=pflash,format=raw,file={}", fd.display()),
        ]);
    }
    let rom = if fw == Firmware::Uefi { EFI_ROM } else { ROM };
    let child = cmd
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args([
            "-device",
            &format!("e1000,netdev=n0,mac={mac},romfile={rom}"),
        ])
        .args([
            "-drive",
            &format!("file={},format=raw,if=virtio", disk.display()),
        ])
        .args(["-serial", &format!("file:{}", serial.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    Proc(child)
}

fn events(store: &EmbeddedStore, name: &str) -> Vec<String> {
    store
        .events(Kind::Endpoint, "default", name)
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.reason, e.message))
        .collect()
}

fn endpoint(store: &EmbeddedStore, name: &str) -> Value {
    store.get(Kind::Endpoint, "default", name).unwrap().unwrap()
}

#[test]
fn real_ipxe_firmware_boots_locally_then_images_when_armed_then_full_dhcp() {
    if let Some(why) = missing_prerequisite() {
        recast_tests::skip_or_fail(REQUIRE, &format!("PXE tier: {why}"));
        return;
    }
    let site = prepare("loop");
    let net = Net::up(&format!("rcp{}", std::process::id() % 100000));
    let dnsmasq = net.dnsmasq(&site.dir);
    let op = operator(&net, &site, &["--dhcp", "proxy", "--tftp", "10.77.0.2:69"]);
    let store = EmbeddedStore::open(&site.data).unwrap();
    let disk = site.dir.join("disk-vm1.img");
    std::fs::write(&disk, vec![0u8; 16 * 1024 * 1024]).unwrap();

    // (a) Nothing armed: the machine PXE-boots (dnsmasq gives the address, recast's proxyDHCP
    // the iPXE script URL), asks for its script and is told to boot locally.
    {
        let _vm = vm(&net, &site, VM1, &disk, "a");
        recast_tests::wait_for(
            Duration::from_secs(120),
            "vm-01's network-boot fall-back event",
            || has_fallback(&store, "vm-01"),
        );
    }
    let log = operator_log(&site);
    assert!(
        log.contains("kind=\"ipxe-script\""),
        "the iPXE ROM got the script URL from proxyDHCP:\n{log}"
    );
    assert!(
        !log.contains("served the imaging script"),
        "nothing was armed, so no imaging script may be served:\n{log}"
    );
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|b| *b == 0),
        "an unarmed machine's disk is never touched"
    );
    let leases = std::fs::read_to_string(site.dir.join("dnsmasq.leases")).unwrap_or_default();
    assert!(leases.contains(VM1), "dnsmasq gave the address: {leases}");

    // (b) A reimage request arms the boot; the "power cycle" (no BMC here) is starting the VM.
    image_it(
        &net,
        &site,
        &store,
        "vm-01",
        VM1,
        &disk,
        Firmware::Bios,
        "b",
    );

    // The same on UEFI firmware (OVMF with iPXE's EFI ROM): told to boot locally first, then
    // imaged once armed.
    let disk3 = site.dir.join("disk-vm3.img");
    std::fs::write(&disk3, vec![0u8; 16 * 1024 * 1024]).unwrap();
    {
        let _vm = vm_with(&net, &site, VM3, &disk3, "a-uefi", Firmware::Uefi);
        recast_tests::wait_for(
            Duration::from_secs(180),
            "vm-03's (UEFI) fall-back event",
            || has_fallback(&store, "vm-03"),
        );
        // (d) After iPXE's ROM hands back, OVMF's own PXE client (a first stage that speaks
        // only TFTP: option 93 = 7, no iPXE user class) gets snponly.efi over recast's TFTP,
        // which is iPXE and chains into HTTP and asks for its script again.
        recast_tests::wait_for(
            Duration::from_secs(240),
            "OVMF's PXE client to fetch iPXE over TFTP and chain into HTTP",
            || {
                let log = operator_log(&site);
                log.lines().any(|l| {
                    l.contains("tftp transfer")
                        && l.contains("file=ipxe/snponly.efi")
                        && l.contains("completed")
                }) && fallbacks(&store, "vm-03") >= 2
            },
        );
    }
    let log = operator_log(&site);
    assert!(
        log.contains("kind=\"boot-program\" file=ipxe/snponly.efi"),
        "the first-stage UEFI client was given the iPXE binary, not a script URL:\n{log}"
    );
    image_it(
        &net,
        &site,
        &store,
        "vm-03",
        VM3,
        &disk3,
        Firmware::Uefi,
        "b-uefi",
    );
    drop(op);

    // (c) Full DHCP mode, no dnsmasq: recast leases from its static table.
    drop(dnsmasq);
    let leases = site.dir.join("leases.txt");
    std::fs::write(&leases, format!("{VM2} 10.77.0.50 vm-02\n")).unwrap();
    let _op = operator(
        &net,
        &site,
        &["--dhcp", "full", "--dhcp-leases", leases.to_str().unwrap()],
    );
    let disk2 = site.dir.join("disk-vm2.img");
    std::fs::write(&disk2, vec![0u8; 1024 * 1024]).unwrap();
    {
        let _vm = vm(&net, &site, VM2, &disk2, "c");
        recast_tests::wait_for(
            Duration::from_secs(120),
            "vm-02's network boot in full DHCP mode",
            || has_fallback(&store, "vm-02"),
        );
    }
    let log = operator_log(&site);
    assert!(log.contains("DHCP Offer mac=52:54:00:77:00:02"), "{log}");
    assert!(log.contains("kind=\"ipxe-script\""), "{log}");
    let _ = std::fs::remove_dir_all(&site.dir);
}

fn has_fallback(store: &EmbeddedStore, name: &str) -> bool {
    fallbacks(store, name) > 0
}

fn fallbacks(store: &EmbeddedStore, name: &str) -> usize {
    events(store, name)
        .iter()
        .filter(|e| e.starts_with("NetworkBootFallback"))
        .count()
}

/// Requests a reimage, boots the machine (the power cycle a BMC would do), and checks every
/// step from the outside: the serial console, the disk's bytes, the operator's log, the status.
#[allow(clippy::too_many_arguments)]
fn image_it(
    net: &Net,
    site: &Site,
    store: &EmbeddedStore,
    name: &str,
    mac: &str,
    disk: &Path,
    fw: Firmware,
    tag: &str,
) {
    store
        .update(Kind::Endpoint, "default", name, |obj| {
            obj["spec"]["reimageRequest"] = json!({"token": "t1", "reason": "PXE test"});
            Ok(())
        })
        .unwrap();
    recast_tests::wait_for(Duration::from_secs(30), "the boot intent", || {
        store.boot_intent(mac).unwrap().is_some()
    });
    let intent = store.boot_intent(mac).unwrap().unwrap();
    assert_eq!(intent.image_digest.as_deref(), Some(site.digest.as_str()));
    let serial_path = site.dir.join(format!("serial-{tag}.log"));
    {
        let mut qemu = vm_with(net, site, mac, disk, tag, fw);
        // The imaging environment powers the VM off when it is done.
        let start = Instant::now();
        while qemu.0.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(400),
                "the imaging VM did not finish; serial console:\n{}\noperator:\n{}",
                std::fs::read_to_string(&serial_path).unwrap_or_default(),
                operator_log(site)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let serial = std::fs::read_to_string(&serial_path).unwrap_or_default();
    assert!(serial.contains("imager: done"), "serial console:\n{serial}");
    assert!(
        serial.contains(&format!("first part: {} bytes", site.payload.len() / 2)),
        "the download broke half-way:\n{serial}"
    );
    let log = operator_log(site);
    let resumed_from = site.payload.len() / 2;
    assert!(
        log.contains(&format!("start={resumed_from}")),
        "the rest came from a Range request starting at byte {resumed_from}:\n{log}"
    );
    let written = std::fs::read(disk).unwrap();
    assert_eq!(
        &written[..site.payload.len()],
        &site.payload[..],
        "the disk holds the image's bytes"
    );
    assert!(log.contains("served the imaging script"), "{log}");
    assert!(
        log.contains("imaging finished") && log.contains("ok=true"),
        "{log}"
    );
    // The controller took the boot service's inputs: the attempt waits for the agent's first
    // report from the new image, and the boot is disarmed so it never images twice.
    recast_tests::wait_for(
        Duration::from_secs(30),
        "the attempt to reach FirstBoot",
        || endpoint(store, name)["status"]["activeAttempt"]["step"] == "FirstBoot",
    );
    recast_tests::wait_for(Duration::from_secs(30), "the boot to be disarmed", || {
        store.boot_intent(mac).unwrap().is_none()
    });
}
