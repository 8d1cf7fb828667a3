//! The shell that reads the machine from sysfs: its SMBIOS identity and its block devices. No
//! udev runs in the imaging environment, so this reads the kernel's files directly. `root` is
//! `/sys` on a machine and a fake tree in tests.

use std::path::Path;

use recast_core::boot_trust::{
    EFI_IMAGE_SECURITY_DATABASE_GUID, Firmware, MachineTrust, SecureBoot, SignatureDatabase,
};

use crate::disks::{Disk, Transport, is_disk_name};
use crate::identity::Seen;

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

/// The SMBIOS version from the entry point structure (`_SM_` for 2.x, `_SM3_` for 3.x).
pub fn smbios_version(entry_point: &[u8]) -> Option<(u8, u8)> {
    if entry_point.starts_with(b"_SM3_") && entry_point.len() > 8 {
        Some((entry_point[7], entry_point[8]))
    } else if entry_point.starts_with(b"_SM_") && entry_point.len() > 7 {
        Some((entry_point[6], entry_point[7]))
    } else {
        None
    }
}

/// What the machine says about itself.
pub fn identity(root: &Path) -> Seen {
    let dmi = root.join("class/dmi/id");
    Seen {
        product_uuid: read_trimmed(&dmi.join("product_uuid")),
        product_serial: read_trimmed(&dmi.join("product_serial")),
        smbios_version: std::fs::read(root.join("firmware/dmi/tables/smbios_entry_point"))
            .ok()
            .and_then(|b| smbios_version(&b)),
    }
}

/// The machine's SMBIOS system manufacturer and product name (`sys_vendor`, `product_name`;
/// empty when the firmware does not say).
pub fn model(root: &Path) -> (String, String) {
    let dmi = root.join("class/dmi/id");
    (
        read_trimmed(&dmi.join("sys_vendor")).unwrap_or_default(),
        read_trimmed(&dmi.join("product_name")).unwrap_or_default(),
    )
}

/// The EFI global variable GUID, which `SecureBoot` and `SetupMode` live under.
const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// The value of the `SecureBoot` variable as efivarfs shows it: four bytes of attributes, then
/// one byte, 1 when Secure Boot is enforced. None for anything else.
pub fn secure_boot_from_var(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [_, _, _, _, 1] => Some(true),
        [_, _, _, _, 0] => Some(false),
        _ => None,
    }
}

/// Whether UEFI Secure Boot is on: false under BIOS (no `firmware/efi`) and on UEFI firmware
/// that has no `SecureBoot` variable; None when the variables cannot be read (efivarfs not
/// mounted) or the value makes no sense.
pub fn secure_boot(root: &Path) -> Option<bool> {
    let efi = root.join("firmware/efi");
    if !efi.is_dir() {
        return Some(false);
    }
    let vars = efi.join("efivars");
    match std::fs::read(vars.join(format!("SecureBoot-{EFI_GLOBAL_VARIABLE}"))) {
        Ok(bytes) => secure_boot_from_var(&bytes),
        // A mounted efivarfs always lists some variable (BootOrder, ...): then the firmware
        // simply has no Secure Boot.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::read_dir(&vars)
            .ok()
            .and_then(|mut d| d.next())
            .map(|_| false),
        Err(_) => None,
    }
}

/// What the firmware trusts for Secure Boot: BIOS (no `firmware/efi`), or UEFI with its
/// Secure Boot state and its `db` and `dbx` as efivarfs shows them (a variable that does not
/// exist is an empty database). A variable that exists and cannot be read or parsed is an
/// error naming it: judging without it could pass an image the firmware refuses.
pub fn firmware_trust(root: &Path) -> Result<MachineTrust, String> {
    let efi = root.join("firmware/efi");
    let firmware = if efi.is_dir() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let secure_boot = match secure_boot(root) {
        Some(true) => SecureBoot::On,
        Some(false) => SecureBoot::Off,
        None => SecureBoot::Unknown,
    };
    let database = |name: &str| -> Result<SignatureDatabase, String> {
        if firmware == Firmware::Bios {
            return Ok(SignatureDatabase::default());
        }
        let path = efi
            .join("efivars")
            .join(format!("{name}-{EFI_IMAGE_SECURITY_DATABASE_GUID}"));
        match std::fs::read(&path) {
            Ok(bytes) => SignatureDatabase::parse_efivarfs(&bytes)
                .map_err(|e| format!("the firmware's {name} variable cannot be parsed: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SignatureDatabase::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    Ok(MachineTrust {
        firmware,
        secure_boot,
        db: database("db")?,
        dbx: database("dbx")?,
    })
}

/// Every disk the kernel shows, with what the target-disk rule needs, sorted by name.
pub fn disks(root: &Path) -> std::io::Result<Vec<Disk>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("block"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !is_disk_name(&name) {
            continue;
        }
        let dir = entry.path();
        let flag = |f: &str| read_trimmed(&dir.join(f)).as_deref() == Some("1");
        let sectors: u64 = read_trimmed(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // virtio-blk keeps its serial on the disk; NVMe and SCSI on the device.
        let serial = read_trimmed(&dir.join("serial"))
            .or_else(|| read_trimmed(&dir.join("device/serial")))
            .or_else(|| vpd_serial(&dir.join("device/vpd_pg80")));
        let wwn =
            read_trimmed(&dir.join("wwid")).or_else(|| read_trimmed(&dir.join("device/wwid")));
        let resolved = std::fs::canonicalize(&dir)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        out.push(Disk {
            name,
            // The kernel counts `size` in 512-byte units whatever the sector size.
            size_bytes: sectors * 512,
            serial,
            wwn,
            removable: flag("removable"),
            read_only: flag("ro"),
            transport: Transport::of_sysfs_path(&resolved),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The serial number in a SCSI Unit Serial Number VPD page (0x80): a 4-byte header, then the
/// serial's length in byte 3 and the ASCII serial.
fn vpd_serial(path: &Path) -> Option<String> {
    let page = std::fs::read(path).ok()?;
    let len = usize::from(*page.get(3)?);
    let serial = String::from_utf8_lossy(page.get(4..4 + len)?)
        .trim()
        .to_string();
    (!serial.is_empty()).then_some(serial)
}

/// The logical sector size of a disk (512 when the kernel does not say).
pub fn sector_size(root: &Path, disk: &str) -> u64 {
    read_trimmed(
        &root
            .join("block")
            .join(disk)
            .join("queue/logical_block_size"),
    )
    .and_then(|s| s.parse().ok())
    .unwrap_or(512)
}

/// Where the kernel thinks partition `part` of `disk` is: (start, length) in 512-byte units,
/// from `/sys/block/DISK/PART/{start,size}`; None when it does not say.
pub fn partition_extent(root: &Path, disk: &str, part: &str) -> Option<(u64, u64)> {
    let dir = root.join("block").join(disk).join(part);
    let num = |f: &str| read_trimmed(&dir.join(f)).and_then(|s| s.parse::<u64>().ok());
    Some((num("start")?, num("size")?))
}

/// The kernel name of partition `n` of `disk`: vda3, sda3, but nvme0n1p3 and mmcblk0p3 (a
/// disk name ending in a digit takes a `p`).
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn firmware_trust_reads_db_and_dbx_from_efivarfs() {
        use recast_core::boot_trust::{DbCertificate, Guid, Signature, SignatureEntry};
        let ca = include_bytes!("../../core/src/testdata/boot_trust/ca-2011.der");
        let db = SignatureDatabase {
            attributes: None,
            entries: vec![SignatureEntry {
                owner: Guid([7; 16]),
                signature: Signature::X509(Box::new(DbCertificate::from_der(ca).unwrap())),
            }],
        };
        let dbx = SignatureDatabase {
            attributes: None,
            entries: vec![SignatureEntry {
                owner: Guid([7; 16]),
                signature: Signature::Sha256([9; 32]),
            }],
        };
        let efivar = |d: &SignatureDatabase| [&0x27u32.to_le_bytes()[..], &d.to_lists()].concat();
        let var =
            |name: &str| format!("firmware/efi/efivars/{name}-{EFI_IMAGE_SECURITY_DATABASE_GUID}");
        let sb = format!("firmware/efi/efivars/SecureBoot-{EFI_GLOBAL_VARIABLE}");

        // BIOS: nothing to read, nothing checked later.
        let bios = tempfile::tempdir().unwrap();
        let t = firmware_trust(bios.path()).unwrap();
        assert_eq!(
            (t.firmware, t.secure_boot),
            (Firmware::Bios, SecureBoot::Off)
        );
        assert!(t.db.entries.is_empty() && t.dbx.entries.is_empty());

        // UEFI, Secure Boot on, both databases present: parsed as the firmware holds them.
        let on = tempfile::tempdir().unwrap();
        write(on.path(), &sb, &[6, 0, 0, 0, 1]);
        write(on.path(), &var("db"), &efivar(&db));
        write(on.path(), &var("dbx"), &efivar(&dbx));
        let t = firmware_trust(on.path()).unwrap();
        assert_eq!(
            (t.firmware, t.secure_boot),
            (Firmware::Uefi, SecureBoot::On)
        );
        assert_eq!(t.db.certificate_names(), "\"Test UEFI CA 2011\"");
        assert!(t.dbx.holds_sha256(&[9; 32]));

        // No dbx variable (firmware that never received one): an empty revocation list.
        std::fs::remove_file(on.path().join(var("dbx"))).unwrap();
        assert!(firmware_trust(on.path()).unwrap().dbx.entries.is_empty());

        // Bad input: a damaged db is an error that names it, never an empty db.
        write(on.path(), &var("db"), &[0x27, 0, 0, 0, 1, 2, 3]);
        let e = firmware_trust(on.path()).unwrap_err();
        assert!(e.contains("db variable cannot be parsed"), "{e}");

        // efivarfs not mounted: Secure Boot unknown (the decision judges it as on).
        let unmounted = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(unmounted.path().join("firmware/efi/efivars")).unwrap();
        let t = firmware_trust(unmounted.path()).unwrap();
        assert_eq!(
            (t.firmware, t.secure_boot),
            (Firmware::Uefi, SecureBoot::Unknown)
        );
    }

    #[test]
    fn secure_boot_reads_the_firmware_variable() {
        assert_eq!(secure_boot_from_var(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(secure_boot_from_var(&[6, 0, 0, 0, 0]), Some(false));
        // Not the variable's shape: unknown, never a guess.
        assert_eq!(secure_boot_from_var(&[6, 0, 0, 0, 2]), None);
        assert_eq!(secure_boot_from_var(&[1]), None);
        assert_eq!(secure_boot_from_var(&[]), None);

        let var = format!("firmware/efi/efivars/SecureBoot-{EFI_GLOBAL_VARIABLE}");
        // BIOS: no firmware/efi at all.
        let bios = tempfile::tempdir().unwrap();
        assert_eq!(secure_boot(bios.path()), Some(false));
        // UEFI with Secure Boot on, and off.
        let on = tempfile::tempdir().unwrap();
        write(on.path(), &var, &[6, 0, 0, 0, 1]);
        assert_eq!(secure_boot(on.path()), Some(true));
        let off = tempfile::tempdir().unwrap();
        write(off.path(), &var, &[6, 0, 0, 0, 0]);
        assert_eq!(secure_boot(off.path()), Some(false));
        // UEFI firmware without Secure Boot: efivarfs lists other variables, not this one.
        let none = tempfile::tempdir().unwrap();
        write(
            none.path(),
            &format!("firmware/efi/efivars/BootOrder-{EFI_GLOBAL_VARIABLE}"),
            &[7, 0, 0, 0, 1, 0],
        );
        assert_eq!(secure_boot(none.path()), Some(false));
        // UEFI, efivarfs not mounted: unknown.
        let unmounted = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(unmounted.path().join("firmware/efi/efivars")).unwrap();
        assert_eq!(secure_boot(unmounted.path()), None);
    }

    #[test]
    fn identity_reads_uuid_serial_and_the_smbios_version() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            "class/dmi/id/product_uuid",
            b"1b4e28ba-2fa1-11d2-883f-0016d3cca427\n",
        );
        write(t.path(), "class/dmi/id/product_serial", b"  SN-01 \n");
        let mut ep = b"_SM3_".to_vec();
        ep.extend_from_slice(&[0x1f, 0x18, 3, 2, 0]);
        write(t.path(), "firmware/dmi/tables/smbios_entry_point", &ep);
        let seen = identity(t.path());
        assert_eq!(
            seen.product_uuid.as_deref(),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert_eq!(seen.product_serial.as_deref(), Some("SN-01"));
        assert_eq!(seen.smbios_version, Some((3, 2)));
        // Nothing there (the kernel hides all-zero UUIDs; a VM may have no serial).
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(identity(empty.path()), Seen::default());
    }

    #[test]
    fn entry_points_of_both_generations_and_garbage() {
        assert_eq!(smbios_version(b"_SM_\x1f\x1f\x02\x08rest"), Some((2, 8)));
        assert_eq!(smbios_version(b"_SM_\x1f\x1f\x02\x05rest"), Some((2, 5)));
        assert_eq!(smbios_version(b"_SM3_\x00\x18\x03\x00"), Some((3, 0)));
        assert_eq!(smbios_version(b"_SM_"), None);
        assert_eq!(smbios_version(b"garbage!"), None);
        assert_eq!(smbios_version(b""), None);
    }

    #[test]
    fn disks_come_with_size_serial_wwn_flags_and_transport() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // Real sysfs entries are symlinks into /sys/devices; the transport comes from there.
        let devices = root.join("devices");
        for (name, path) in [
            ("vda", "pci0000:00/0000:00:04.0/virtio1/block/vda"),
            (
                "sda",
                "pci0000:00/0000:00:14.0/usb2/2-1/host6/target6:0:0/6:0:0:0/block/sda",
            ),
            ("nvme0n1", "pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1"),
            ("loop0", "virtual/block/loop0"),
        ] {
            let dir = devices.join(path);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::create_dir_all(root.join("block")).unwrap();
            std::os::unix::fs::symlink(&dir, root.join("block").join(name)).unwrap();
        }
        let block = |n: &str, f: &str, c: &[u8]| write(root, &format!("block/{n}/{f}"), c);
        block("vda", "size", b"8388608\n");
        block("vda", "serial", b"DISK-A\n");
        block("vda", "removable", b"0\n");
        block("vda", "ro", b"0\n");
        block("sda", "size", b"62914560\n");
        block("sda", "removable", b"1\n");
        block("sda", "device/vpd_pg80", b"\x00\x80\x00\x06USB-01");
        block("nvme0n1", "size", b"1000215216\n");
        block("nvme0n1", "device/serial", b"NVME-SERIAL   \n");
        block("nvme0n1", "wwid", b"eui.0025388b71b0a1b2\n");
        block("nvme0n1", "ro", b"1\n");
        block("loop0", "size", b"100\n");
        let seen = disks(root).unwrap();
        let names: Vec<&str> = seen.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["nvme0n1", "sda", "vda"],
            "loop devices are not disks"
        );
        let vda = &seen[2];
        assert_eq!(vda.size_bytes, 4 << 30);
        assert_eq!(vda.serial.as_deref(), Some("DISK-A"));
        assert_eq!(vda.transport, Transport::Virtio);
        assert!(!vda.removable && !vda.read_only);
        let sda = &seen[1];
        assert_eq!(sda.transport, Transport::Usb);
        assert!(sda.removable);
        assert_eq!(sda.serial.as_deref(), Some("USB-01"));
        let nvme = &seen[0];
        assert_eq!(nvme.serial.as_deref(), Some("NVME-SERIAL"));
        assert_eq!(nvme.wwn.as_deref(), Some("eui.0025388b71b0a1b2"));
        assert_eq!(nvme.transport, Transport::Nvme);
        assert!(nvme.read_only);
        // No block directory at all: an error the imager reports, not an empty list.
        assert!(disks(&root.join("nowhere")).is_err());
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("vda", 3), "vda3");
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("nvme0n1", 3), "nvme0n1p3");
        assert_eq!(partition_name("mmcblk0", 2), "mmcblk0p2");
    }

    #[test]
    fn partition_extents_come_from_the_kernel() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "block/vda/vda3/start", b"567296\n");
        write(t.path(), "block/vda/vda3/size", b"1529856\n");
        assert_eq!(
            partition_extent(t.path(), "vda", "vda3"),
            Some((567296, 1529856))
        );
        assert_eq!(partition_extent(t.path(), "vda", "vda4"), None);
    }

    #[test]
    fn sector_size_defaults_to_512() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "block/sdb/queue/logical_block_size", b"4096\n");
        assert_eq!(sector_size(t.path(), "sdb"), 4096);
        assert_eq!(sector_size(t.path(), "vda"), 512);
    }
}
