//! The boot service proven with real firmware: QEMU machines whose NIC boot ROM is Debian's
//! iPXE (`ipxe-qemu`) boot over a provisioning network inside network namespaces this test
//! creates (tests/pxe/netns.sh), next to dnsmasq as the site's DHCP server, against the real
//! recast-operator binary on the embedded store.
//!
//! (a) an endpoint with no armed attempt is told to boot locally;
//! (b) an armed endpoint gets the imaging script and its files; recast's Linux imaging
//!     environment (`make imager`: Debian's kernel + recast-imager, wimlib, ntfs-3g, sfdisk,
//!     hivexsh, syslinux) checks the machine's SMBIOS UUID, picks the disk by rule, downloads
//!     and verifies a golden WIM that looks like Windows where it matters, partitions, applies
//!     it with wimlib, writes the boot files and the BCD, reports, and restarts. The test then
//!     reads the disk back with tools that are not recast (sfdisk, mtools, ntfs-3g, hivexml),
//!     compares the NTFS volume file by file with the golden source, and boots the disk alone
//!     to see the boot-manager stand-in run (BIOS and UEFI);
//! (e) the refusals: a machine whose SMBIOS UUID is not the Endpoint's, a machine with two
//!     equal candidate disks, and a corrupted download leave every disk byte-for-byte as it
//!     was, and the first two stop the attempt for a person;
//! (f) UEFI Secure Boot enforced (OVMF's Secure Boot build, Microsoft's keys enrolled): the
//!     same machine offered unsigned iPXE refuses to run it ("Access Denied", and no iPXE ever
//!     asks recast anything) and boots its disk; on the signed chain with nothing armed it is
//!     declined at once and boots its disk; armed, Debian's Microsoft-signed shim, signed GRUB
//!     (configured by recast over TFTP) and signed kernel start recast-imager, which reports
//!     Secure Boot on and images the disk, read back as in (b); its boot manager (signed under
//!     the test "2011" CA the fleet's db holds) then starts from the disk under Secure Boot;
//! (g) will it boot here: a golden image whose boot manager is signed under a "2023" CA the
//!     machine's db lacks is refused before any write (the disk byte for byte as it was), and
//!     the firmware agrees (the same boot manager on a disk the test writes: "Access Denied");
//!     so is one whose boot manager's hash is in the machine's dbx;
//! (c) full DHCP mode works without dnsmasq;
//! (d) a first-stage client that only speaks TFTP (OVMF's own PXE client) gets the iPXE binary
//!     from recast's TFTP server and chains into HTTP.
//!
//! Needs root, QEMU, dnsmasq, the Debian kernel (tests/pxe/setup.sh) and the imaging
//! environment's packages (imager/env/setup.sh). Skips loudly without
//! them unless RECAST_REQUIRE_PXE=1 (CI sets it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use recast_tests::golden_ntfs::{self, GoldenWim};
use recast_tests::readback::{self, MountedNtfs, Table};
use recast_tests::{bcd_xml, hive, secure_boot, wimlib};
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
    if let Some(why) = secure_boot::missing() {
        return Some(why);
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
        // Two taps: the multicast wave runs two machines at once.
        let ok = Command::new(&script)
            .args(["up", name, "2"])
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

struct Site {
    dir: PathBuf,
    root: PathBuf,
    data: PathBuf,
    digest: String,
    golden: GoldenWim,
    /// The same image with its boot manager signed under the test "2023" CA.
    golden_2023: GoldenWim,
    /// The driver set of the "Contoso Ltd." "Kiosk 5000" model: the folder it was captured
    /// from (a WIM made with wimlib, served by digest like the image).
    drivers_src: PathBuf,
}

/// The SMBIOS system manufacturer and product of the model the test image has drivers for.
const DRIVER_MODEL: (&str, &str) = ("Contoso Ltd.", "Kiosk 5000");

/// A driver set as a site makes one: INF folders captured into a WIM with wimlib.
fn driver_set(dir: &Path) -> (PathBuf, PathBuf, String) {
    let src = dir.join("drivers-src");
    let nic = src.join("contoso-nic");
    std::fs::create_dir_all(&nic).unwrap();
    std::fs::write(
        nic.join("contoso-nic.inf"),
        "[Version]\r\nSignature=\"$WINDOWS NT$\"\r\nClass=Net\r\n",
    )
    .unwrap();
    std::fs::write(nic.join("contoso-nic.sys"), vec![0x4d, 0x5a, 0x90, 0x00]).unwrap();
    let wim = dir.join("drivers-kiosk-5000.wim");
    let out = Command::new("wimlib-imagex")
        .arg("capture")
        .arg(&src)
        .arg(&wim)
        .arg("Kiosk 5000 drivers")
        .output()
        .expect("run wimlib-imagex");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = recast_tests::sha256_file(&wim);
    (src, wim, sha)
}

const VM1: &str = "52:54:00:77:00:01";
const VM2: &str = "52:54:00:77:00:02";
const VM3: &str = "52:54:00:77:00:03";
const VM4: &str = "52:54:00:77:00:04";
const VM5: &str = "52:54:00:77:00:05";
const VM6: &str = "52:54:00:77:00:06";
const VM7: &str = "52:54:00:77:00:07";
const VM8: &str = "52:54:00:77:00:08";
/// The two machines of the multicast wave.
const VM9: &str = "52:54:00:77:00:09";
const VM10: &str = "52:54:00:77:00:0a";
/// The SMBIOS UUIDs the Endpoints name (QEMU `-uuid`).
const UUID1: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca401";
const UUID3: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca403";
const UUID4: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca404";
const UUID7: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca407";
const UUID8: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca408";
/// vm-03's and vm-07's disks, named by serial in their Endpoints.
const DISK3_SERIAL: &str = "RECAST-DISK-03";
const DISK7_SERIAL: &str = "RECAST-DISK-07";
const DISK8_SERIAL: &str = "RECAST-DISK-08";
const GIB: u64 = 1 << 30;

fn endpoint_doc(name: &str, mac: &str, mode: &str, uuid: Option<&str>, target: Value) -> Value {
    let mut identity = json!({"macAddresses": [mac]});
    if let Some(u) = uuid {
        identity["smbiosUuid"] = json!(u);
    }
    json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name},
           "spec": {"identity": identity, "bootMode": mode, "image": {"goldenImage": "golden"},
                    "targetDisk": target}})
}

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
    recast_tests::imaging_env::build(&root, &dir);
    secure_boot::lay_out_signed_chain(&root);
    // The golden image: Windows where it matters (security descriptors, named streams, a
    // junction, hard links, short names, \Windows\Boot with runnable boot-manager stand-ins,
    // a BCD-Template, the January servicing package). Built once per machine, reused.
    let golden = golden_ntfs::build_golden(
        &std::env::temp_dir().join("recast-golden-ntfs"),
        wimlib::JANUARY_2026,
        &hive::bcd_template(true),
    );
    let digest = golden.wim_sha256.clone();
    std::fs::copy(
        &golden.wim,
        root.join("images").join(format!("{digest}.wim")),
    )
    .unwrap();
    let golden_2023 = golden_ntfs::build_golden_signed(
        &std::env::temp_dir().join("recast-golden-ntfs-2023"),
        wimlib::JANUARY_2026,
        &hive::bcd_template(true),
        secure_boot::Era::Y2023,
    );
    std::fs::copy(
        &golden_2023.wim,
        root.join("images")
            .join(format!("{}.wim", golden_2023.wim_sha256)),
    )
    .unwrap();

    let (drivers_src, drivers_wim, drivers_sha) = driver_set(&dir);
    std::fs::copy(
        &drivers_wim,
        root.join("images").join(format!("{drivers_sha}.wim")),
    )
    .unwrap();

    let store = EmbeddedStore::open(&data).unwrap();
    let small = json!({"minSizeGiB": 1});
    // vm-03: UEFI with Secure Boot off, on the iPXE chain.
    let mut vm3 = endpoint_doc(
        "vm-03",
        VM3,
        "uefi",
        Some(UUID3),
        json!({"serial": DISK3_SERIAL}),
    );
    vm3["spec"]["bootChain"] = json!("ipxe");
    let docs = [
        endpoint_doc("vm-01", VM1, "bios", Some(UUID1), json!({"minSizeGiB": 2})),
        endpoint_doc("vm-02", VM2, "bios", None, small.clone()),
        vm3,
        // vm-07: UEFI with Secure Boot enforced; bootChain unset (auto: the signed chain).
        endpoint_doc(
            "vm-07",
            VM7,
            "uefi",
            Some(UUID7),
            json!({"serial": DISK7_SERIAL}),
        ),
        // vm-08: UEFI with Secure Boot enforced, following the image signed under "2023".
        {
            let mut vm8 = endpoint_doc(
                "vm-08",
                VM8,
                "uefi",
                Some(UUID8),
                json!({"serial": DISK8_SERIAL}),
            );
            vm8["spec"]["image"] = json!({"goldenImage": "golden-2023"});
            vm8
        },
        endpoint_doc("vm-04", VM4, "bios", Some(UUID4), small.clone()),
        // vm-09 and vm-10: one wave batch, imaged from one multicast session.
        {
            let mut d = endpoint_doc("vm-09", VM9, "bios", None, small.clone());
            d["metadata"]["labels"] = json!({"wave": "multicast"});
            d
        },
        {
            let mut d = endpoint_doc("vm-10", VM10, "bios", None, small.clone());
            d["metadata"]["labels"] = json!({"wave": "multicast"});
            d
        },
        endpoint_doc("vm-05", VM5, "bios", None, small.clone()),
        endpoint_doc("vm-06", VM6, "bios", None, small),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "default"},
               "spec": {"signals": {"failedRollback": "ReimageNow", "bootCrash": "ReimageNow", "heartbeatLost": "AlertOnly", "drift": "AlertOnly", "nonCompliant": "AlertOnly"},
                        "cooldown": "1m", "retry": {"maxTries": 2, "backoff": "1m", "tryTimeout": "30m"}, "concurrency": {"global": 5}}}),
    ];
    for d in &docs {
        store.apply(d, "default").unwrap();
    }
    for (name, digest) in [
        ("golden", &digest),
        ("golden-2023", &golden_2023.wim_sha256),
    ] {
        store
            .apply(
                &json!({"apiVersion": "recast.dev/v1alpha1", "kind": "GoldenImage", "metadata": {"name": name},
                        "spec": {"source": {"path": format!("/srv/{name}.wim")}, "sha256": digest, "requirements": {"minimumBuild": "26100.7623"},
                                 "drivers": [{"manufacturer": DRIVER_MODEL.0, "model": DRIVER_MODEL.1,
                                              "source": {"path": "/srv/drivers-kiosk-5000.wim"}, "sha256": drivers_sha}]}}),
                "default",
            )
            .unwrap();
        store
            .write_status(
                Kind::GoldenImage,
                "default",
                name,
                None,
                &json!({"digest": digest, "observedGeneration": 1, "conditions": [{"type": "Verified", "status": "True", "reason": "Checked", "message": "", "lastTransitionTime": "2026-01-14T07:00:00Z"}]}),
            )
            .unwrap();
    }
    Site {
        dir,
        root,
        data,
        digest,
        golden,
        golden_2023,
        drivers_src,
    }
}

/// A sparse disk image of `bytes`, all zeros.
fn blank_disk(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
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

/// A machine on the provisioning network.
struct Machine<'a> {
    mac: &'a str,
    fw: Firmware,
    /// UEFI with Secure Boot enforced (OVMF's Secure Boot build, Microsoft's keys), on a q35
    /// machine with the firmware's own PXE client (virtio-net, no option ROM).
    secure_boot: bool,
    /// With Secure Boot: what its firmware trusts beyond the test fleet's keys.
    trust: secure_boot::FleetTrust,
    /// SMBIOS UUID (QEMU picks none when unset).
    uuid: Option<&'a str>,
    /// Disks, each with an optional serial number, as virtio-blk devices.
    disks: Vec<(&'a Path, Option<&'a str>)>,
    /// SMBIOS system manufacturer and product (QEMU's own when unset).
    model: Option<(&'a str, &'a str)>,
    /// Which of the site's tap devices it is plugged into (two machines at once: 0 and 1).
    tap: usize,
}

impl<'a> Machine<'a> {
    fn bios(mac: &'a str, disk: &'a Path) -> Self {
        Machine {
            mac,
            fw: Firmware::Bios,
            secure_boot: false,
            trust: Default::default(),
            uuid: None,
            disks: vec![(disk, None)],
            model: None,
            tap: 0,
        }
    }
}

fn vm(net: &Net, site: &Site, mac: &str, disk: &Path, tag: &str) -> Proc {
    vm_with(net, site, &Machine::bios(mac, disk), tag)
}

fn qemu_base(site: &Site, m: &Machine, tag: &str) -> Command {
    let serial = site.dir.join(format!("serial-{tag}.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    // shim, GRUB, the kernel and the imaging environment's initrd, then the image in RAM.
    let memory = if m.secure_boot { "1024" } else { "512" };
    cmd.args([
        "-accel", "tcg", "-m", memory, "-display", "none", "-monitor", "none",
    ])
    .arg("-no-reboot");
    if m.secure_boot {
        let vars = site.dir.join(format!("ovmf-vars-{tag}.fd"));
        secure_boot::fleet_vars(&vars, &m.trust);
        cmd.args(secure_boot::qemu_args(&vars));
    } else if m.fw == Firmware::Uefi {
        // A fresh copy of the firmware volume: OVMF keeps its variables in it.
        let fd = site.dir.join(format!("ovmf-{tag}.fd"));
        std::fs::copy(OVMF, &fd).unwrap();
        cmd.args([
            "-drive",
            &format!("if=pflash,format=raw,file={}", fd.display()),
        ]);
    }
    if let Some(u) = m.uuid {
        cmd.args(["-uuid", u]);
    }
    if let Some((manufacturer, product)) = m.model {
        cmd.args([
            "-smbios",
            &format!("type=1,manufacturer={manufacturer},product={product}"),
        ]);
    }
    for (i, (disk, serial)) in m.disks.iter().enumerate() {
        cmd.args([
            "-drive",
            &format!("if=none,id=d{i},file={},format=raw", disk.display()),
        ]);
        let mut dev = format!("virtio-blk-pci,drive=d{i}");
        if let Some(s) = serial {
            dev.push_str(&format!(",serial={s}"));
        }
        if m.secure_boot {
            // After the network (bootindex 1): where the firmware goes when it is declined.
            dev.push_str(&format!(",bootindex={}", i + 2));
        }
        cmd.args(["-device", &dev]);
    }
    cmd.args(["-serial", &format!("file:{}", serial.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn vm_with(net: &Net, site: &Site, m: &Machine, tag: &str) -> Proc {
    let base = qemu_base(site, m, tag);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.site()])
        .arg(base.get_program())
        .args(base.get_args());
    if m.secure_boot {
        // OVMF's own PXE client (no option ROM: iPXE's would be refused), first in the boot
        // order, the disks after it.
        let child = cmd
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname=tap{},script=no,downscript=no", m.tap),
            ])
            .args([
                "-device",
                &format!(
                    "virtio-net-pci,netdev=n0,mac={},romfile=,bootindex=1",
                    m.mac
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu");
        return Proc(child);
    }
    cmd.args(["-boot", "n"]);
    let rom = if m.fw == Firmware::Uefi { EFI_ROM } else { ROM };
    let child = cmd
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname=tap{},script=no,downscript=no", m.tap),
        ])
        .args([
            "-device",
            &format!("e1000,netdev=n0,mac={},romfile={rom}", m.mac),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    Proc(child)
}

/// Boots the machine from its disk alone (no network) until the serial console shows
/// `marker` (the boot-manager stand-in ran) or the time is up.
fn boot_from_disk(site: &Site, m: &Machine, tag: &str, marker: &str, limit: Duration) {
    let serial = site.dir.join(format!("serial-{tag}.log"));
    let mut cmd = qemu_base(site, m, tag);
    cmd.args(["-boot", "c", "-nic", "none"]);
    let _qemu = Proc(cmd.spawn().expect("start qemu"));
    recast_tests::wait_for(
        limit,
        &format!("{tag}: {marker} on the serial console"),
        || {
            std::fs::read_to_string(&serial)
                .unwrap_or_default()
                .contains(marker)
        },
    );
}

fn wait_exit(qemu: &mut Proc, limit: Duration, what: &str, serial: &Path, site: &Site) {
    let start = Instant::now();
    while qemu.0.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < limit,
            "{what} did not finish; serial console:\n{}\noperator:\n{}",
            std::fs::read_to_string(serial).unwrap_or_default(),
            operator_log(site)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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
    // Multicast sessions for waves (automatic attempts keep downloading over HTTP here).
    let op = operator(
        &net,
        &site,
        &[
            "--dhcp",
            "proxy",
            "--tftp",
            "10.77.0.2:69",
            "--multicast-interface",
            "vr0",
            "--multicast-automatic-wait",
            "0s",
            // QEMU's emulated NICs under TCG drop what comes faster (retransmissions).
            "--multicast-max-mbps",
            "100",
        ],
    );
    let store = EmbeddedStore::open(&site.data).unwrap();
    let disk = site.dir.join("disk-vm1.img");
    blank_disk(&disk, 4 * GIB);
    let blank = recast_tests::sha256_file(&disk);

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
    assert_eq!(
        recast_tests::sha256_file(&disk),
        blank,
        "an unarmed machine's disk is never touched"
    );
    let leases = std::fs::read_to_string(site.dir.join("dnsmasq.leases")).unwrap_or_default();
    assert!(leases.contains(VM1), "dnsmasq gave the address: {leases}");

    // (b) A reimage request arms the boot; the "power cycle" (no BMC here) is starting the VM.
    // vm-01 is the model the image has drivers for.
    let vm1 = Machine {
        uuid: Some(UUID1),
        model: Some(DRIVER_MODEL),
        ..Machine::bios(VM1, &disk)
    };
    image_it(
        &net,
        &site,
        &store,
        "vm-01",
        &vm1,
        "b",
        "served the imaging script",
    );
    read_back(&site, &disk, Firmware::Bios, true);
    boot_from_disk(
        &site,
        &vm1,
        "b-disk",
        golden_ntfs::BOOTMGR_MARKER,
        Duration::from_secs(120),
    );

    // The same on UEFI firmware (OVMF with iPXE's EFI ROM): told to boot locally first, then
    // imaged once armed.
    let disk3 = site.dir.join("disk-vm3.img");
    blank_disk(&disk3, 4 * GIB);
    let vm3 = Machine {
        tap: 0,
        model: None,
        mac: VM3,
        fw: Firmware::Uefi,
        secure_boot: false,
        trust: Default::default(),
        uuid: Some(UUID3),
        disks: vec![(&disk3, Some(DISK3_SERIAL))],
    };
    {
        let _vm = vm_with(&net, &site, &vm3, "a-uefi");
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
    // UEFI imaging runs on the Secure Boot machine: (f).
    secure_boot_machine(&net, &site, &store);
    will_it_boot(&net, &site, &store);

    refusals(&net, &site, &store);
    multicast_wave(&net, &site, &store);
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

/// A wave of two machines (vm-09, vm-10) and three receiver processes standing in for more
/// machines, all on one multicast session of the boot service; one process drops out after
/// 1 MiB (a machine losing power), the others are not held back beyond udpcast's drop timeout.
/// Proven from the outside: both disks read back like any imaged disk, each process's bytes
/// hash to the stream's sha256, the bytes sent to the session's group are counted by netfilter
/// in the boot service's namespace (about the stream once, not once per receiver), and no
/// machine downloaded the image over HTTP.
fn multicast_wave(net: &Net, site: &Site, store: &EmbeddedStore) {
    // The controller makes the pipable form of the served image (and its boot manager).
    let facts = site
        .root
        .join("images")
        .join(format!("{}-1.stream.json", site.digest));
    recast_tests::wait_for(
        Duration::from_secs(120),
        "the pipable form of the golden image",
        || facts.is_file(),
    );
    let facts: Value = serde_json::from_slice(&std::fs::read(&facts).unwrap()).unwrap();
    let stream_sha = facts["sha256"].as_str().unwrap().to_string();
    let stream_size = facts["size"].as_u64().unwrap();
    let stream_file = site
        .root
        .join("images")
        .join(format!("{}-1.stream.wim", site.digest));
    assert_eq!(recast_tests::sha256_file(&stream_file), stream_sha);
    // It is wimlib's pipable format, and holds the same image as the verified WIM (read
    // with wimlib itself, not recast's check).
    assert_eq!(&std::fs::read(&stream_file).unwrap()[..8], b"WLPWM\0\0\0");
    let info = |wim: &Path, index: &str| {
        let out = Command::new("wimlib-imagex")
            .args(["info"])
            .arg(wim)
            .arg(index)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                ["Total Bytes", "File Count", "Directory Count"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(info(&stream_file, "1"), info(&site.golden.wim, "1"));

    // Netfilter counts what the boot service sends to the session's group.
    let boot = net.boot();
    let run = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(["netns", "exec", &boot])
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "{args:?}");
    };
    run(&[
        "iptables",
        "-I",
        "OUTPUT",
        "-d",
        "239.255.77.0/24",
        "-j",
        "ACCEPT",
    ]);
    let group_bytes = || -> u64 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &boot, "iptables", "-L", "OUTPUT", "-v", "-x", "-n",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("239.255.77.0/24"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap()
    };
    let tx = || -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &boot,
                "cat",
                "/sys/class/net/vr0/statistics/tx_bytes",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };

    // Three receiver processes on the site's bridge (10.77.0.60-62), waiting for the session.
    let site_ns = net.site();
    let mut receivers = Vec::new();
    for (i, drop_out) in [(0, false), (1, false), (2, true)] {
        let ns = format!("{}-rx{i}", net.0);
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let setup = format!(
            "ip netns add {ns} && ip link add rx{i} type veth peer name rxb{i} netns {site_ns} \
             && ip link set rx{i} netns {ns} && ip -n {ns} addr add 10.77.0.{}/24 brd + dev rx{i} \
             && ip -n {ns} link set rx{i} up && ip -n {ns} link set lo up \
             && ip -n {site_ns} link set rxb{i} master br0 && ip -n {site_ns} link set rxb{i} up",
            60 + i
        );
        assert!(
            Command::new("sh")
                .args(["-c", &setup])
                .status()
                .unwrap()
                .success()
        );
        let sink = if drop_out {
            "head -c 1048576 | sha256sum".to_string()
        } else {
            "sha256sum".to_string()
        };
        let out = site.dir.join(format!("rx{i}.sha"));
        let child = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns exec {ns} udp-receiver --nokbd --portbase 9000 --interface rx{i} \
                     --start-timeout 600 --receive-timeout 60 2>{err} | {sink} > {out}",
                    err = site.dir.join(format!("rx{i}.log")).display(),
                    out = out.display()
                ),
            ])
            .spawn()
            .unwrap();
        receivers.push((ns, out, drop_out, Proc(child)));
    }

    let before = (group_bytes(), tx());
    store
        .apply(
            &json!({"apiVersion": "recast.dev/v1alpha1", "kind": "ReimageWave", "metadata": {"name": "mc"},
                    "spec": {"selector": {"matchLabels": {"wave": "multicast"}}, "image": "golden",
                             "strategy": {"canary": 2, "batchSize": 2},
                             "multicast": {"minReceivers": 5, "maxWait": "10m"},
                             "reason": "multicast test"}}),
            "default",
        )
        .unwrap();
    for mac in [VM9, VM10] {
        recast_tests::wait_for(Duration::from_secs(60), "the wave to arm its batch", || {
            store.boot_intent(mac).unwrap().is_some()
        });
    }
    let disk9 = site.dir.join("disk-vm9.img");
    let disk10 = site.dir.join("disk-vm10.img");
    blank_disk(&disk9, 4 * GIB);
    blank_disk(&disk10, 4 * GIB);
    let vm9 = Machine::bios(VM9, &disk9);
    let vm10 = Machine {
        tap: 1,
        ..Machine::bios(VM10, &disk10)
    };
    {
        let mut q9 = vm_with(net, site, &vm9, "mc9");
        let mut q10 = vm_with(net, site, &vm10, "mc10");
        for (q, tag) in [(&mut q9, "mc9"), (&mut q10, "mc10")] {
            let serial = site.dir.join(format!("serial-{tag}.log"));
            wait_exit(
                q,
                Duration::from_secs(900),
                "a multicast-imaged VM",
                &serial,
                site,
            );
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            // Applied from the stream: no HTTP download of the image (the imager says
            // "downloading over HTTP" when it falls back).
            assert!(
                text.contains("recast-imager: done: the image is written")
                    && text.contains("image applied from the multicast session; sha256 matches")
                    && !text.contains("downloading over HTTP")
                    && !text.contains("downloading golden ("),
                "{tag}: serial console:\n{text}"
            );
        }
    }
    for (ns, out, drop_out, mut child) in receivers {
        let _ = child.0.wait();
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let got = std::fs::read_to_string(&out).unwrap_or_default();
        let got = got
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if drop_out {
            // Exactly the stream's first MiB, then it left.
            let first_mib = {
                let bytes = std::fs::read(&stream_file).unwrap();
                let head = site.dir.join("stream-first-mib");
                std::fs::write(&head, &bytes[..1 << 20]).unwrap();
                recast_tests::sha256_file(&head)
            };
            assert_eq!(got, first_mib, "the drop-out's first MiB");
        } else {
            assert_eq!(got, stream_sha, "{}: the stream's bytes", out.display());
        }
    }
    let sent = group_bytes() - before.0;
    let all = tx() - before.1;
    run(&[
        "iptables",
        "-D",
        "OUTPUT",
        "-d",
        "239.255.77.0/24",
        "-j",
        "ACCEPT",
    ]);
    let log = operator_log(site);
    eprintln!(
        "multicast wave: {sent} bytes to the group and {all} bytes on vr0 for a {stream_size}-byte stream to 5 receivers"
    );
    // About once (headers, retransmissions, the drop-out's rounds), not once per receiver
    // (which would be 5×). Measured 1.26× on an idle host and 1.52× with the host's two cores
    // busy (receivers starved of CPU ask for more retransmissions): under 2× tells the two apart.
    assert!(
        sent >= stream_size && sent < 2 * stream_size,
        "{sent} bytes sent to the group for {stream_size} × 5 receivers\n{log}"
    );
    assert!(
        log.contains("joining the batch's multicast session"),
        "{log}"
    );
    for (disk, name) in [(&disk9, "vm-09"), (&disk10, "vm-10")] {
        read_back(site, disk, Firmware::Bios, false);
        recast_tests::wait_for(
            Duration::from_secs(30),
            "the attempt to reach FirstBoot",
            || endpoint(store, name)["status"]["activeAttempt"]["step"] == "FirstBoot",
        );
    }
    // The wave's status shows the batch's session as the boot service saw it.
    recast_tests::wait_for(
        Duration::from_secs(30),
        "the session in the wave's status",
        || {
            let w = store
                .get(Kind::ReimageWave, "default", "mc")
                .unwrap()
                .unwrap();
            let m = &w["status"]["batches"][0]["multicast"];
            m["phase"] == "Complete"
                && m["receivers"] == 5
                && m["dropped"] == 1
                && m["bytes"] == json!(stream_size)
        },
    );
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

fn request_reimage(store: &EmbeddedStore, name: &str, mac: &str) {
    // A fresh token each time: a machine can be asked again (a token is acted on once).
    let token = format!(
        "t-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    store
        .update(Kind::Endpoint, "default", name, |obj| {
            obj["spec"]["reimageRequest"] = json!({"token": token, "reason": "PXE test"});
            Ok(())
        })
        .unwrap();
    recast_tests::wait_for(Duration::from_secs(30), "the boot intent", || {
        store.boot_intent(mac).unwrap().is_some()
    });
}

fn set_chain(store: &EmbeddedStore, name: &str, chain: Option<&str>) {
    store
        .update(Kind::Endpoint, "default", name, |obj| {
            match chain {
                Some(c) => obj["spec"]["bootChain"] = json!(c),
                None => {
                    obj["spec"].as_object_mut().unwrap().remove("bootChain");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// The operator's log lines about one MAC address.
fn log_of(site: &Site, mac: &str) -> Vec<String> {
    operator_log(site)
        .lines()
        .filter(|l| l.contains(&format!("mac={mac}")))
        .map(str::to_string)
        .collect()
}

/// A completed TFTP transfer of `file` in the operator's log.
fn tftp_sent(site: &Site, file: &str) -> bool {
    operator_log(site).lines().any(|l| {
        l.contains("tftp transfer")
            && l.contains(&format!("file={file} "))
            && l.contains("completed")
    })
}

/// (f) UEFI Secure Boot enforced, the same machine three times.
fn secure_boot_machine(net: &Net, site: &Site, store: &EmbeddedStore) {
    // A disk that boots under Secure Boot (Debian's signed shim and GRUB) to a marker and
    // powers off: the firmware reached it after leaving the network boot.
    let marker = site.dir.join("disk-vm7-marker.img");
    secure_boot::marker_disk(&marker);
    let untouched = recast_tests::sha256_file(&marker);
    let on_marker = Machine {
        tap: 0,
        model: None,
        mac: VM7,
        fw: Firmware::Uefi,
        secure_boot: true,
        trust: Default::default(),
        uuid: Some(UUID7),
        disks: vec![(&marker, None)],
    };
    let run_to_off = |tag: &str, what: &str| -> String {
        let serial = site.dir.join(format!("serial-{tag}.log"));
        {
            let mut qemu = vm_with(net, site, &on_marker, tag);
            wait_exit(&mut qemu, Duration::from_secs(600), what, &serial, site);
        }
        std::fs::read_to_string(&serial).unwrap_or_default()
    };

    // Enforcement is real: offered unsigned iPXE (the chain forced to ipxe), the firmware
    // downloads it, refuses to start it, and goes on to the disk. iPXE never runs: no DHCP
    // with its user class and no script request ever comes from this MAC.
    set_chain(store, "vm-07", Some("ipxe"));
    let serial = run_to_off("f-ipxe", "the Secure Boot machine offered iPXE");
    assert!(
        serial.contains("Access Denied"),
        "the firmware refuses the unsigned iPXE binary:\n{serial}"
    );
    assert!(serial.contains(secure_boot::DISK_MARKER), "{serial}");
    assert!(
        tftp_sent(site, "ipxe/snponly.efi"),
        "{}",
        operator_log(site)
    );
    let lines = log_of(site, VM7);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("kind=\"boot-program\" file=ipxe/snponly.efi")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("kind=\"ipxe-script\"")),
        "iPXE ran after all: {lines:#?}"
    );
    assert_eq!(
        fallbacks(store, "vm-07"),
        0,
        "no iPXE script was ever asked for"
    );

    // The signed chain with nothing armed: declined at once, the disk boots.
    set_chain(store, "vm-07", None);
    let serial = run_to_off("f-local", "the unarmed Secure Boot machine");
    assert!(serial.contains(secure_boot::DISK_MARKER), "{serial}");
    assert!(!serial.contains("Access Denied"), "{serial}");
    let lines = log_of(site, VM7);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("kind=\"decline\" file=sb/boot-local-disk.efi")),
        "{lines:#?}"
    );
    assert!(
        !operator_log(site).contains("served the GRUB imaging configuration"),
        "nothing armed, nothing served"
    );
    // Declined in DHCP, it still says what iPXE's machines say: it network-booted on its own.
    recast_tests::wait_for(
        Duration::from_secs(30),
        "vm-07's fall-back event from the DHCP decline",
        || fallbacks(store, "vm-07") == 1,
    );
    assert_eq!(
        recast_tests::sha256_file(&marker),
        untouched,
        "an unarmed machine's disk is never touched"
    );

    // Armed: shim → GRUB → kernel → recast-imager, all under Secure Boot.
    let disk7 = site.dir.join("disk-vm7.img");
    blank_disk(&disk7, 4 * GIB);
    let vm7 = Machine {
        disks: vec![(&disk7, Some(DISK7_SERIAL))],
        ..on_marker
    };
    image_it(
        net,
        site,
        store,
        "vm-07",
        &vm7,
        "f-image",
        "served the GRUB imaging configuration",
    );
    let serial = std::fs::read_to_string(site.dir.join("serial-f-image.log")).unwrap();
    secure_boot::assert_console_enforced(&serial);
    assert!(
        log_of(site, VM7)
            .iter()
            .any(|l| l.contains("kind=\"boot-program\" file=sb/shimx64.efi")),
        "{:#?}",
        log_of(site, VM7)
    );
    for file in [
        "sb/shimx64.efi",
        "sb/grubx64.efi",
        "grub/grub.cfg",
        "grub/recast/52:54:00:77:00:07.cfg",
        "linux/vmlinuz",
        "linux/initrd",
    ] {
        assert!(
            tftp_sent(site, file),
            "TFTP delivered {file}:\n{}",
            operator_log(site)
        );
    }
    read_back(site, &disk7, Firmware::Uefi, false);
    // The image's boot manager is signed under the test "2011" CA, which this firmware's db
    // holds: the imager judged it would boot, and the firmware starts it from the disk.
    let serial = std::fs::read_to_string(site.dir.join("serial-f-image.log")).unwrap();
    assert!(
        serial.contains(
            "boot manager: boots: chains to db certificate \"recast test Windows CA 2011\""
        ),
        "{serial}"
    );
    boot_from_disk(
        site,
        &vm7,
        "f-disk",
        golden_ntfs::BOOTMGFW_MARKER,
        Duration::from_secs(300),
    );
}

/// (g) Will it boot here? The imaging environment reads the firmware's db and dbx and refuses
/// an image whose boot manager the firmware would not start, before any write; and the
/// firmware, given the same boot manager on a disk, agrees.
fn will_it_boot(net: &Net, site: &Site, store: &EmbeddedStore) {
    let disk8 = site.dir.join("disk-vm8.img");
    blank_disk(&disk8, 4 * GIB);
    // Not all zeros: a wipe or a fresh partition table would change these bytes (an all-zero
    // disk hides a zeroing).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk8)
            .unwrap();
        for at in [0, 512, 1 << 20, 2 * GIB, 4 * GIB - (1 << 20)] {
            f.write_all_at(&[0xA5; 4096], at).unwrap();
        }
    }
    let blank = recast_tests::sha256_file(&disk8);
    let vm8 = Machine {
        tap: 0,
        model: None,
        mac: VM8,
        fw: Firmware::Uefi,
        secure_boot: true,
        trust: Default::default(),
        uuid: Some(UUID8),
        disks: vec![(&disk8, Some(DISK8_SERIAL))],
    };
    let ca_2023 = secure_boot::Era::Y2023.ca_name();

    // The "2023" image on a machine whose db holds Microsoft's 2011 CAs and the test "2011" CA.
    refused(
        net,
        site,
        store,
        "vm-08",
        &vm8,
        "g-2023",
        "ImagingWillNotBoot",
        &format!("needs \"{ca_2023}\" in db"),
    );
    assert_eq!(
        recast_tests::sha256_file(&disk8),
        blank,
        "refused before any write: the disk is byte for byte as it was"
    );
    // What the machine trusts is on the Endpoint.
    let firmware = &endpoint(store, "vm-08")["status"]["firmware"];
    assert_eq!(firmware["secureBoot"], json!(true), "{firmware}");
    let cas: Vec<&str> = firmware["dbCertificates"]
        .as_array()
        .unwrap_or_else(|| panic!("{firmware}"))
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        cas.contains(&"recast test Windows CA 2011")
            && cas.contains(&"Microsoft Windows Production PCA 2011")
            && !cas.contains(&ca_2023.as_str()),
        "{cas:?}"
    );

    // The firmware agrees: the same boot manager on a disk the test writes itself is refused.
    let direct = site.dir.join("disk-vm8-2023-direct.img");
    secure_boot::esp_disk(
        &direct,
        &[(
            site.golden_2023.standins.bootmgfw_efi.clone(),
            "EFI/BOOT/BOOTX64.EFI",
        )],
    );
    let on_direct = Machine {
        disks: vec![(&direct, None)],
        trust: Default::default(),
        ..vm8
    };
    boot_from_disk(
        site,
        &on_direct,
        "g-2023-direct",
        "Access Denied",
        Duration::from_secs(300),
    );
    let console = std::fs::read_to_string(site.dir.join("serial-g-2023-direct.log")).unwrap();
    assert!(
        !console.contains(golden_ntfs::BOOTMGFW_MARKER),
        "the firmware refused it, as predicted:\n{console}"
    );

    // dbx: the "2011" image's boot manager, revoked by its hash (computed by virt-firmware,
    // not recast), on a machine that otherwise trusts it.
    let revoked_hash = secure_boot::authenticode_sha256(&site.golden.standins.bootmgfw_efi);
    let revoking = secure_boot::FleetTrust {
        dbx_hashes: vec![revoked_hash.clone()],
    };
    store
        .update(Kind::Endpoint, "default", "vm-08", |obj| {
            obj["spec"]["image"] = json!({"goldenImage": "golden"});
            Ok(())
        })
        .unwrap();
    let vm8_revoking = Machine {
        disks: vec![(&disk8, Some(DISK8_SERIAL))],
        trust: revoking.clone(),
        ..on_direct
    };
    refused(
        net,
        site,
        store,
        "vm-08",
        &vm8_revoking,
        "g-dbx",
        "ImagingWillNotBoot",
        &format!("sha256:{revoked_hash} is in dbx"),
    );
    assert_eq!(
        recast_tests::sha256_file(&disk8),
        blank,
        "refused before any write: the disk is byte for byte as it was"
    );
    let direct_2011 = site.dir.join("disk-vm8-2011-direct.img");
    secure_boot::esp_disk(
        &direct_2011,
        &[(
            site.golden.standins.bootmgfw_efi.clone(),
            "EFI/BOOT/BOOTX64.EFI",
        )],
    );
    let on_direct_2011 = Machine {
        disks: vec![(&direct_2011, None)],
        ..vm8_revoking
    };
    boot_from_disk(
        site,
        &on_direct_2011,
        "g-dbx-direct",
        "Access Denied",
        Duration::from_secs(300),
    );
    let console = std::fs::read_to_string(site.dir.join("serial-g-dbx-direct.log")).unwrap();
    assert!(
        !console.contains(golden_ntfs::BOOTMGFW_MARKER),
        "the firmware refused the revoked boot manager, as predicted:\n{console}"
    );
}

/// Requests a reimage, boots the machine (the power cycle a BMC would do), and checks every
/// step from the outside: the serial console, the operator's log, the status. The disk itself
/// is read back by [`read_back`]. `served`: the boot service's log line for the imaging
/// configuration this machine's loader reads.
fn image_it(
    net: &Net,
    site: &Site,
    store: &EmbeddedStore,
    name: &str,
    m: &Machine,
    tag: &str,
    served: &str,
) {
    request_reimage(store, name, m.mac);
    let intent = store.boot_intent(m.mac).unwrap().unwrap();
    assert_eq!(intent.image_digest.as_deref(), Some(site.digest.as_str()));
    let serial_path = site.dir.join(format!("serial-{tag}.log"));
    {
        // recast-imager restarts the machine when it is done; -no-reboot ends QEMU there.
        let mut qemu = vm_with(net, site, m, tag);
        wait_exit(
            &mut qemu,
            Duration::from_secs(600),
            "the imaging VM",
            &serial_path,
            site,
        );
    }
    let serial = std::fs::read_to_string(&serial_path).unwrap_or_default();
    assert!(
        serial.contains("recast-imager: done: the image is written"),
        "serial console:\n{serial}"
    );
    if m.uuid.is_some() {
        assert!(
            serial.contains("identity matches"),
            "the imager checked the SMBIOS UUID:\n{serial}"
        );
    }
    let log = operator_log(site);
    assert!(log.contains(served), "{log}");
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
    // What the imaging environment read from the firmware is what the machine was launched
    // with: on under Secure Boot, off under BIOS.
    assert_eq!(
        endpoint(store, name)["status"]["activeAttempt"]["secureBoot"],
        json!(m.secure_boot),
        "{name}: the reported Secure Boot state"
    );
    recast_tests::wait_for(Duration::from_secs(30), "the boot to be disarmed", || {
        store.boot_intent(m.mac).unwrap().is_none()
    });
}

/// Reads an imaged disk back with tools that are not recast: the partition table (sfdisk),
/// the system partition's files (mtools), the Windows volume compared file by file with the
/// golden source (ntfs-3g, read-only), agent.json's security descriptor, and the BCD store
/// (hivexml) naming the Windows partition.
/// `drivers`: the machine is the model the image has a driver set for.
fn read_back(site: &Site, disk: &Path, fw: Firmware, drivers: bool) {
    let table = Table::read(disk);
    let ss = table.sector_size;
    let (system, windows) = match fw {
        Firmware::Uefi => {
            assert_eq!(table.label, "gpt");
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
            assert_eq!(table.partitions[0].bytes(ss), 260 << 20, "a 260 MiB ESP");
            assert_eq!(table.partitions[1].bytes(ss), 16 << 20, "a 16 MiB MSR");
            assert_eq!(
                table.partitions[3].attrs.as_deref(),
                Some("RequiredPartition GUID:63"),
                "Recovery: attributes 0x8000000000000001"
            );
            (0, 2)
        }
        Firmware::Bios => {
            assert_eq!(table.label, "dos");
            let types: Vec<(&str, bool)> = table
                .partitions
                .iter()
                .map(|p| (p.type_.as_str(), p.bootable))
                .collect();
            assert_eq!(
                types,
                [("c", true), ("7", false), ("27", false)],
                "active FAT32 system, Windows, Recovery: {table:?}"
            );
            let mbr = std::fs::read("/usr/lib/syslinux/mbr/mbr.bin").unwrap();
            assert_eq!(
                &readback::mbr_boot_code(disk)[..],
                &mbr[..],
                "syslinux's MBR code (boots the active partition)"
            );
            (0, 1)
        }
    };

    // The system partition: the boot manager and its fallback copy, byte for byte.
    let (sys_off, _) = table.extent(system);
    let files = readback::fat_list(disk, sys_off);
    let standins = &site.golden.standins;
    let expect_file = |path: &str, want: &Path| {
        assert_eq!(
            readback::fat_read(disk, sys_off, path),
            std::fs::read(want).unwrap(),
            "{path} on the system partition; it holds: {files:?}"
        );
    };
    let bcd_path = match fw {
        Firmware::Uefi => {
            expect_file("EFI/Microsoft/Boot/bootmgfw.efi", &standins.bootmgfw_efi);
            expect_file("EFI/Boot/bootx64.efi", &standins.bootmgfw_efi);
            expect_file("EFI/Microsoft/Boot/memtest.efi", &standins.memtest_efi);
            "EFI/Microsoft/Boot/BCD"
        }
        Firmware::Bios => {
            expect_file("bootmgr", &standins.bootmgr);
            "Boot/BCD"
        }
    };

    // The BCD store: its Windows Boot Loader and the boot manager name the right partitions.
    let bcd_file = site.dir.join(format!(
        "BCD-{}",
        disk.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&bcd_file, readback::fat_read(disk, sys_off, bcd_path)).unwrap();
    let bcd = bcd_xml::read(&bcd_file).unwrap();
    check_bcd(&bcd, &table, disk, system, windows, fw);

    // The Windows volume against the golden source, file by file.
    let (win_off, win_len) = table.extent(windows);
    let imaged = MountedNtfs::partition(disk, win_off, win_len);
    let golden = MountedNtfs::image(&site.golden.source);
    let mut added = vec![
        "Windows/Panther",
        "Windows/Panther/unattend.xml",
        "ProgramData/recast",
        "ProgramData/recast/agent.json",
        "recast",
        "recast/drivers",
        "Windows/Setup",
        "Windows/Setup/Scripts",
        "Windows/Setup/Scripts/SetupComplete.cmd",
    ];
    if drivers {
        added.extend([
            "recast/drivers/contoso-nic",
            "recast/drivers/contoso-nic/contoso-nic.inf",
            "recast/drivers/contoso-nic/contoso-nic.sys",
        ]);
    }
    let report = readback::compare_trees_allowing(golden.path(), imaged.path(), &added)
        .unwrap_or_else(|diffs| {
            panic!(
                "the Windows volume differs from the golden image:\n{}",
                diffs.join("\n")
            )
        });
    assert!(report.files > 10, "{report:?}");
    assert!(
        !report.named_streams.is_empty(),
        "named streams compared: {report:?}"
    );
    assert!(
        !report.reparse_points.is_empty(),
        "a junction compared: {report:?}"
    );
    assert!(
        !report.hard_links.is_empty(),
        "hard links compared: {report:?}"
    );
    assert!(
        !report.dos_names.is_empty(),
        "short names compared: {report:?}"
    );
    assert!(
        report.distinct_security_descriptors > 1,
        "security descriptors: {report:?}"
    );

    // agent.json: the attempt's configuration, readable by SYSTEM and Administrators only.
    let agent = imaged.path().join("ProgramData/recast/agent.json");
    let config: Value = serde_json::from_slice(&std::fs::read(&agent).unwrap()).unwrap();
    assert!(
        config["enrollmentToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{config}"
    );
    let sd = readback::get_xattr(&agent, readback::XATTR_ACL)
        .unwrap()
        .unwrap();
    assert_eq!(
        sd, PROTECTED_SD,
        "agent.json's security descriptor is O:SYG:SYD:P(A;;FA;;;SY)(A;;FA;;;BA)"
    );
    assert!(imaged.path().join("Windows/Panther/unattend.xml").is_file());
    // Setup's cached answer file (join credentials in clear text) goes once Setup is done.
    let setup_complete = std::fs::read_to_string(
        imaged
            .path()
            .join("Windows/Setup/Scripts/SetupComplete.cmd"),
    )
    .unwrap();
    assert!(
        setup_complete.contains(r"del /f /q %WINDIR%\Panther\unattend.xml"),
        "{setup_complete}"
    );
    // The machine's drivers, where the unattend points Windows' PnP: the set of its SMBIOS
    // model byte for byte, or an empty directory for a model without one.
    let unattend =
        std::fs::read_to_string(imaged.path().join("Windows/Panther/unattend.xml")).unwrap();
    assert_eq!(
        recast_tests::unattend::driver_paths(&unattend),
        vec![(
            "specialize".to_string(),
            r"%SystemDrive%\recast\drivers".to_string()
        )]
    );
    let placed = imaged.path().join("recast/drivers");
    let mut found: Vec<String> = walk(&placed);
    found.sort();
    if drivers {
        assert_eq!(
            found,
            vec![
                "contoso-nic/contoso-nic.inf".to_string(),
                "contoso-nic/contoso-nic.sys".to_string()
            ]
        );
        for f in &found {
            assert_eq!(
                std::fs::read(placed.join(f)).unwrap(),
                std::fs::read(site.drivers_src.join(f)).unwrap(),
                "{f}"
            );
        }
    } else {
        assert_eq!(found, Vec::<String>::new(), "another model gets no drivers");
    }
    imaged.unmount().unwrap();
    golden.unmount().unwrap();
}

/// The files under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// O:SYG:SYD:P(A;;FA;;;SY)(A;;FA;;;BA), self-relative, written out by hand from the SDDL.
const PROTECTED_SD: [u8; 96] = [
    1, 0, 0x04, 0x90, 72, 0, 0, 0, 84, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, // header
    2, 0, 52, 0, 2, 0, 0, 0, // DACL: 52 bytes, 2 ACEs
    0, 0, 20, 0, 0xff, 0x01, 0x1f, 0x00, 1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0, // allow SY FA
    0, 0, 24, 0, 0xff, 0x01, 0x1f, 0x00, 1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0,
    0, // allow BA FA
    1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0, // owner SY
    1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0, // group SY
];

/// {bootmgr}: the well-known GUID of the Windows Boot Manager object.
const BOOTMGR: &str = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";

/// The GUID in Windows' binary form (first three fields little-endian), from its text.
fn guid_le(text: &str) -> Vec<u8> {
    let hex: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    [
        &b[0..4].iter().rev().copied().collect::<Vec<_>>()[..],
        &[b[5], b[4], b[7], b[6]],
        &b[8..16],
    ]
    .concat()
}

fn check_bcd(
    bcd: &bcd_xml::Bcd,
    table: &Table,
    disk: &Path,
    system: usize,
    windows: usize,
    fw: Firmware,
) {
    let loader = bcd
        .objects
        .iter()
        .find(|(_, o)| o.type_ == Some(0x1020_0003))
        .map(|(g, _)| g.clone())
        .unwrap_or_else(|| panic!("no Windows Boot Loader object in the BCD: {bcd:#?}"));
    let device = |guid: &str, id: &str| -> Vec<u8> {
        bcd.element(guid, id)
            .and_then(|v| v.binary())
            .unwrap_or_else(|| panic!("{guid} has no device element {id}"))
            .to_vec()
    };
    let names_partition = |bytes: &[u8], index: usize, what: &str| {
        assert_eq!(bytes.len(), 88, "{what}: a partition device element");
        assert_eq!(
            &bytes[0x10..0x14],
            &6u32.to_le_bytes(),
            "{what}: device type partition"
        );
        let p = &table.partitions[index];
        match fw {
            Firmware::Uefi => {
                assert_eq!(
                    &bytes[0x20..0x30],
                    &guid_le(p.uuid.as_deref().unwrap())[..],
                    "{what}: partition GUID"
                );
                assert_eq!(bytes[0x34], 0, "{what}: GPT");
                assert_eq!(
                    &bytes[0x38..0x48],
                    &guid_le(&table.id)[..],
                    "{what}: disk GUID"
                );
            }
            Firmware::Bios => {
                assert_eq!(
                    &bytes[0x20..0x28],
                    &p.offset(table.sector_size).to_le_bytes(),
                    "{what}: partition offset"
                );
                assert_eq!(bytes[0x34], 1, "{what}: MBR");
                assert_eq!(
                    &bytes[0x38..0x3c],
                    &readback::disk_signature(disk).to_le_bytes(),
                    "{what}: disk signature"
                );
            }
        }
    };
    names_partition(
        &device(&loader, "11000001"),
        windows,
        "the loader's application device",
    );
    names_partition(
        &device(&loader, "21000001"),
        windows,
        "the loader's OS device",
    );
    names_partition(
        &device(BOOTMGR, "11000001"),
        system,
        "the boot manager's device",
    );
    let winload = bcd
        .element(&loader, "12000002")
        .and_then(|v| v.string())
        .unwrap_or_default()
        .to_string();
    let want = match fw {
        Firmware::Uefi => "\\Windows\\system32\\winload.efi",
        Firmware::Bios => "\\Windows\\system32\\winload.exe",
    };
    assert!(
        winload.eq_ignore_ascii_case(want),
        "loader path {winload:?}"
    );
    let default = bcd
        .element(BOOTMGR, "23000003")
        .and_then(|v| v.string())
        .unwrap_or_default()
        .to_string();
    assert!(
        default.eq_ignore_ascii_case(&loader),
        "the boot manager's default is the loader: {default}"
    );
}

/// The refusals: nothing is written, every disk stays byte-for-byte as it was.
fn refusals(net: &Net, site: &Site, store: &EmbeddedStore) {
    // A machine that answers for vm-04's MAC but has another SMBIOS UUID.
    let disk4 = site.dir.join("disk-vm4.img");
    blank_disk(&disk4, 2 * GIB);
    let before = recast_tests::sha256_file(&disk4);
    let impostor = Machine {
        uuid: Some("1b4e28ba-2fa1-11d2-883f-0016d3cc0bad"),
        ..Machine::bios(VM4, &disk4)
    };
    refused(
        net,
        site,
        store,
        "vm-04",
        &impostor,
        "e-uuid",
        "ImagingWrongMachine",
        "not this Endpoint's machine",
    );
    assert_eq!(
        recast_tests::sha256_file(&disk4),
        before,
        "the impostor's disk is untouched"
    );

    // Two equal disks and no rule that tells them apart.
    let (d5a, d5b) = (
        site.dir.join("disk-vm5a.img"),
        site.dir.join("disk-vm5b.img"),
    );
    blank_disk(&d5a, 2 * GIB);
    blank_disk(&d5b, 2 * GIB);
    let two = Machine {
        disks: vec![(&d5a, None), (&d5b, None)],
        ..Machine::bios(VM5, &d5a)
    };
    refused(
        net,
        site,
        store,
        "vm-05",
        &two,
        "e-disks",
        "ImagingNoTargetDisk",
        "2 disks are",
    );
    assert_eq!(
        recast_tests::sha256_file(&d5a),
        before,
        "the first disk is untouched"
    );
    assert_eq!(
        recast_tests::sha256_file(&d5b),
        before,
        "the second disk is untouched"
    );

    // A corrupted download: one byte of the served image flipped.
    let disk6 = site.dir.join("disk-vm6.img");
    // Big enough for the layout: the imager must get as far as the download.
    blank_disk(&disk6, 4 * GIB);
    let before6 = recast_tests::sha256_file(&disk6);
    let served = site
        .root
        .join("images")
        .join(format!("{}.wim", site.digest));
    let good = std::fs::read(&served).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&served, &bad).unwrap();
    request_reimage(store, "vm-06", VM6);
    let tag = "e-corrupt";
    let serial = site.dir.join(format!("serial-{tag}.log"));
    {
        let mut qemu = vm_with(net, site, &Machine::bios(VM6, &disk6), tag);
        wait_exit(
            &mut qemu,
            Duration::from_secs(600),
            "the corrupt-download VM",
            &serial,
            site,
        );
    }
    std::fs::write(&served, &good).unwrap();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        console.contains("FAILED at download")
            && console.contains("nothing was written to the disk"),
        "{console}"
    );
    assert_eq!(
        recast_tests::sha256_file(&disk6),
        before6,
        "a corrupt image never reaches the disk"
    );
    recast_tests::wait_for(
        Duration::from_secs(30),
        "vm-06's try to fail (and wait for a retry)",
        || endpoint(store, "vm-06")["status"]["phase"] == "Failed",
    );
}

#[allow(clippy::too_many_arguments)]
fn refused(
    net: &Net,
    site: &Site,
    store: &EmbeddedStore,
    name: &str,
    m: &Machine,
    tag: &str,
    reason: &str,
    says: &str,
) {
    let history_len = |store: &EmbeddedStore| {
        endpoint(store, name)["status"]["history"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let finished_before = history_len(store);
    request_reimage(store, name, m.mac);
    let serial = site.dir.join(format!("serial-{tag}.log"));
    {
        let mut qemu = vm_with(net, site, m, tag);
        wait_exit(&mut qemu, Duration::from_secs(600), name, &serial, site);
    }
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        console.contains(says),
        "{name}: the imager says why:\n{console}"
    );
    recast_tests::wait_for(
        Duration::from_secs(30),
        &format!("{name} to stop for a person"),
        || {
            endpoint(store, name)["status"]["phase"] == "Quarantined"
                && history_len(store) > finished_before
        },
    );
    let events = events(store, name);
    assert!(
        events
            .iter()
            .any(|e| e.starts_with(reason) && e.contains("wrote nothing")),
        "{name}: a {reason} event: {events:?}"
    );
    recast_tests::wait_for(
        Duration::from_secs(30),
        &format!("{name}'s boot to be disarmed"),
        || store.boot_intent(m.mac).unwrap().is_none(),
    );
}
