//! UEFI Secure Boot for the QEMU tiers: OVMF's Secure Boot build with Microsoft's keys
//! enrolled (Debian's `ovmf`), the signed chain recast serves (Debian's shim and GRUB, laid out
//! by `imager/env/signed-chain.sh`), and a disk that boots under Secure Boot to a marker on the
//! serial console, so a test sees the firmware leave the network boot for the disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// OVMF built with Secure Boot (needs q35 with SMM and the secure pflash).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Its variable store with Microsoft's KEK and db (Windows Production PCA 2011, UEFI CA 2011)
/// enrolled and Secure Boot enforced. Each machine gets a copy: the firmware writes to it.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// What the disk from [`marker_disk`] prints when the firmware boots it.
pub const DISK_MARKER: &str = "RECAST-SB-DISK: the local disk booted under Secure Boot";

/// What the serial console of a Secure Boot imaging run says (imager/env/init and
/// recast-imager): Debian's kernel locked itself down, and the imager read the firmware's
/// `SecureBoot` variable as on.
pub const CONSOLE_ENFORCED: [&str; 2] = [
    "imaging-environment: kernel lockdown: none [integrity] confidentiality",
    "recast-imager: UEFI Secure Boot: on",
];

/// Fails unless `serial` shows [`CONSOLE_ENFORCED`].
pub fn assert_console_enforced(serial: &str) {
    for said in CONSOLE_ENFORCED {
        assert!(
            serial.contains(said),
            "the console says {said:?}:\n{serial}"
        );
    }
}

/// Why the Secure Boot parts cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            return Some(format!("{f} is missing (apt-get install ovmf)"));
        }
    }
    if signed_chain_cache().is_none() {
        return Some(
            "Debian's signed shim and GRUB are not cached (run imager/env/signed-chain.sh --out DIR, \
             or tests/pxe/setup.sh)"
                .into(),
        );
    }
    None
}

/// The newest cache directory of imager/env/signed-chain.sh (shimx64.efi, grubx64.efi and
/// grubx64-disk.efi, Debian's GRUB for disks).
pub fn signed_chain_cache() -> Option<PathBuf> {
    let cache = std::env::var_os("RECAST_SIGNED_CHAIN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/signed-chain"));
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("shimx64.efi").is_file() && p.join("grubx64-disk.efi").is_file())
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

/// Lays the signed chain out under a boot root (sb/shimx64.efi, sb/grubx64.efi) with the
/// product's script.
pub fn lay_out_signed_chain(root: &Path) {
    let ok = Command::new(crate::repo_root().join("imager/env/signed-chain.sh"))
        .arg("--out")
        .arg(root)
        .status()
        .expect("run imager/env/signed-chain.sh");
    assert!(ok.success(), "imager/env/signed-chain.sh failed");
}

/// QEMU arguments of a q35 machine with Secure Boot enforced, its variable store a fresh copy
/// at `vars`. IPv6 is off (no PXE or HTTP boot over IPv6), as on most fleets: OVMF would
/// otherwise spend about a minute on each before it tries the disk. PXE and HTTP boot over
/// IPv4 stay (`IPv4Support=no` would take the whole IPv4 network boot away).
pub fn qemu_args(vars: &Path) -> Vec<String> {
    std::fs::copy(OVMF_VARS, vars).expect("copy the OVMF variable store");
    [
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive",
        &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6PXESupport,string=no",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6Support,string=no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A GPT disk of 64 MiB with one EFI system partition that boots under Secure Boot: Debian's
/// shim as \EFI\BOOT\BOOTX64.EFI (Microsoft UEFI CA 2011 signed), Debian's disk GRUB next to
/// it, and \EFI\debian\grub.cfg printing [`DISK_MARKER`] and powering the machine off.
pub fn marker_disk(path: &Path) {
    let cache = signed_chain_cache().expect("the signed chain cache (see missing())");
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    crate::readback::write_table(
        path,
        "label: gpt\nstart=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
    )
    .unwrap();
    // The partition: sectors 2048 .. end-34 (the backup GPT); mkfs.fat counts 1 KiB blocks.
    let blocks = ((64u64 << 20) / 512 - 2048 - 34) / 2;
    let image = path.display().to_string();
    crate::readback::run_ok(
        crate::readback::tool("mkfs.fat")
            .args(["-F", "16", "-n", "RECASTSB", "--offset", "2048"])
            .arg(path)
            .arg(blocks.to_string()),
    );
    let at = format!("{image}@@1M");
    let cfg = path.with_extension("grub.cfg");
    std::fs::write(&cfg, format!("echo '{DISK_MARKER}'\nhalt\n")).unwrap();
    for d in ["::EFI", "::EFI/BOOT", "::EFI/debian"] {
        crate::readback::run_ok(crate::readback::tool("mmd").args(["-i", &at, d]));
    }
    for (from, to) in [
        (cache.join("shimx64.efi"), "::EFI/BOOT/BOOTX64.EFI"),
        (cache.join("grubx64-disk.efi"), "::EFI/BOOT/grubx64.efi"),
        (cfg, "::EFI/debian/grub.cfg"),
    ] {
        crate::readback::run_ok(
            crate::readback::tool("mcopy")
                .args(["-i", &at])
                .arg(&from)
                .arg(to),
        );
    }
}
