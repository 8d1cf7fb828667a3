//! The target disk, by rule, never "disk 0": an explicit serial or WWN names exactly one disk,
//! or else the rule takes the only non-removable, non-USB disk of at least a minimum size. Zero
//! or several candidates: refuse, write nothing, and say which disks were seen.

use std::fmt;

/// How a disk is attached, from its sysfs path (`readlink -f /sys/block/X`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Usb,
    Nvme,
    Sata,
    Scsi,
    Virtio,
    Mmc,
    Other,
}

impl Transport {
    /// From the resolved sysfs path of a block device. USB is checked first: a USB-attached
    /// SATA or NVMe bridge is still a USB disk.
    pub fn of_sysfs_path(path: &str) -> Transport {
        let has = |part: &str| path.split('/').any(|p| p.starts_with(part));
        if has("usb") {
            Transport::Usb
        } else if has("nvme") {
            Transport::Nvme
        } else if has("virtio") {
            Transport::Virtio
        } else if has("ata") {
            Transport::Sata
        } else if has("mmc") {
            Transport::Mmc
        } else if has("host") || has("target") {
            Transport::Scsi
        } else {
            Transport::Other
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Transport::Usb => "usb",
            Transport::Nvme => "nvme",
            Transport::Sata => "sata",
            Transport::Scsi => "scsi",
            Transport::Virtio => "virtio",
            Transport::Mmc => "mmc",
            Transport::Other => "other",
        }
    }
}

/// One block device as the shell read it from sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: vda, nvme0n1, sda.
    pub name: String,
    pub size_bytes: u64,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub removable: bool,
    pub read_only: bool,
    pub transport: Transport,
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} GiB, {}, serial {}, wwn {}{}{})",
            self.name,
            self.size_bytes / GIB,
            self.transport.as_str(),
            self.serial.as_deref().unwrap_or("-"),
            self.wwn.as_deref().unwrap_or("-"),
            if self.removable { ", removable" } else { "" },
            if self.read_only { ", read-only" } else { "" },
        )
    }
}

const GIB: u64 = 1 << 30;

/// `spec.targetDisk`: which disk the image goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetRule {
    /// The disk with this serial number.
    Serial(String),
    /// The disk with this WWN (or NVMe EUI/NGUID as the kernel shows it in `wwid`).
    Wwn(String),
    /// The only non-removable, non-USB, writable disk of at least this size.
    OnlyFixedDisk { min_bytes: u64 },
}

impl fmt::Display for TargetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetRule::Serial(s) => write!(f, "the disk with serial {s:?}"),
            TargetRule::Wwn(w) => write!(f, "the disk with WWN {w:?}"),
            TargetRule::OnlyFixedDisk { min_bytes } => write!(
                f,
                "a fixed (non-removable, non-USB, writable) disk of at least {} GiB",
                min_bytes / GIB
            ),
        }
    }
}

impl TargetRule {
    /// The rule a task's `targetDisk` states: serial first, then WWN, else the only fixed disk
    /// of at least the minimum size.
    pub fn of(t: &recast_crds::endpoint::TargetDisk) -> TargetRule {
        match (&t.serial, &t.wwn) {
            (Some(s), _) => TargetRule::Serial(s.clone()),
            (None, Some(w)) => TargetRule::Wwn(w.clone()),
            (None, None) => TargetRule::OnlyFixedDisk {
                min_bytes: u64::from(
                    t.min_size_gib
                        .unwrap_or(recast_crds::endpoint::DEFAULT_MIN_DISK_GIB),
                ) << 30,
            },
        }
    }
}

/// Why no disk was chosen. Either way nothing is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no disk is {rule}; disks seen: {}", list(.seen))]
    None { rule: TargetRule, seen: Vec<Disk> },
    #[error("{} disks are {rule} ({}), and the rule needs exactly one: name it with spec.targetDisk (serial or wwn); disks seen: {}", .candidates.len(), .candidates.join(", "), list(.seen))]
    Several {
        rule: TargetRule,
        candidates: Vec<String>,
        seen: Vec<Disk>,
    },
    #[error("{disk} is {rule} but is read-only")]
    ReadOnly { rule: TargetRule, disk: Disk },
}

fn list(seen: &[Disk]) -> String {
    if seen.is_empty() {
        "none".into()
    } else {
        seen.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Picks the target disk. Pure; the shell lists the disks.
pub fn choose<'a>(rule: &TargetRule, seen: &'a [Disk]) -> Result<&'a Disk, Refusal> {
    let same = |a: &Option<String>, b: &str| {
        a.as_deref()
            .is_some_and(|a| a.trim().eq_ignore_ascii_case(b.trim()))
    };
    let candidates: Vec<&Disk> = seen
        .iter()
        .filter(|d| match rule {
            TargetRule::Serial(s) => same(&d.serial, s),
            TargetRule::Wwn(w) => d.wwn.as_deref().is_some_and(|seen| same_wwn(seen, w)),
            TargetRule::OnlyFixedDisk { min_bytes } => {
                !d.removable
                    && !d.read_only
                    && d.transport != Transport::Usb
                    && d.size_bytes >= *min_bytes
            }
        })
        .collect();
    match candidates.as_slice() {
        [] => Err(Refusal::None {
            rule: rule.clone(),
            seen: seen.to_vec(),
        }),
        [one] if one.read_only => Err(Refusal::ReadOnly {
            rule: rule.clone(),
            disk: (*one).clone(),
        }),
        [one] => Ok(one),
        several => Err(Refusal::Several {
            rule: rule.clone(),
            candidates: several.iter().map(|d| d.name.clone()).collect(),
            seen: seen.to_vec(),
        }),
    }
}

/// A WWN reduced to its hex digits, lower case, without the forms' prefixes: the kernel's
/// `wwid` says `naa.5000c500a1b2c3d4` (SCSI/SATA) or `eui.0025388b71b0a1b2` (NVMe), `lsblk -o WWN`
/// says `0x5000c500a1b2c3d4`, Windows tools may print `5000_C500_A1B2_C3D4.` or dashes.
pub fn wwn_digits(wwn: &str) -> String {
    let t = wwn.trim().to_ascii_lowercase();
    let t = ["naa.", "eui.", "nguid.", "0x"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(&t);
    t.chars().filter(char::is_ascii_hexdigit).collect()
}

/// Whether two WWNs name the same disk, whichever form each is written in. Forms that carry
/// more than hex digits (an NVMe fallback `nvme.VID-SERIAL-…`, a `t10.` vendor string) must
/// match as written.
fn same_wwn(seen: &str, wanted: &str) -> bool {
    let plain = |w: &str| {
        let l = w.trim().to_ascii_lowercase();
        !(l.starts_with("nvme.") || l.starts_with("t10."))
    };
    if plain(seen) && plain(wanted) {
        let (a, b) = (wwn_digits(seen), wwn_digits(wanted));
        !a.is_empty() && a == b
    } else {
        seen.trim().eq_ignore_ascii_case(wanted.trim())
    }
}

/// Whether a `/sys/block` entry is a disk recast may consider at all (not a loop, RAM, optical,
/// device-mapper or software-RAID device).
pub fn is_disk_name(name: &str) -> bool {
    !["loop", "ram", "zram", "sr", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64, serial: Option<&str>, transport: Transport) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: gib * GIB,
            serial: serial.map(str::to_string),
            wwn: None,
            removable: false,
            read_only: false,
            transport,
        }
    }

    const AUTO: TargetRule = TargetRule::OnlyFixedDisk {
        min_bytes: 32 * GIB,
    };

    #[test]
    fn the_only_fixed_disk_is_chosen_past_usb_sticks_and_small_disks() {
        let mut stick = disk("sda", 64, Some("USB1"), Transport::Usb);
        stick.removable = true;
        let seen = [
            stick,
            disk("vdb", 1, Some("CONTROL"), Transport::Virtio),
            disk("nvme0n1", 256, Some("S4EWNX0N"), Transport::Nvme),
        ];
        assert_eq!(choose(&AUTO, &seen).unwrap().name, "nvme0n1");
    }

    #[test]
    fn two_equal_disks_are_refused_naming_both() {
        let seen = [
            disk("vda", 64, Some("A"), Transport::Virtio),
            disk("vdb", 64, Some("B"), Transport::Virtio),
        ];
        let e = choose(&AUTO, &seen).unwrap_err();
        assert!(matches!(&e, Refusal::Several { candidates, .. } if candidates == &["vda", "vdb"]));
        let msg = e.to_string();
        assert!(
            msg.starts_with("2 disks are a fixed (non-removable, non-USB, writable) disk of at least 32 GiB (vda, vdb), and the rule needs exactly one")
                && msg.contains("spec.targetDisk")
                && msg.contains("serial A"),
            "{msg}"
        );
    }

    #[test]
    fn no_candidate_is_refused_listing_what_was_seen() {
        let seen = [disk("vda", 16, None, Transport::Virtio)];
        let e = choose(&AUTO, &seen).unwrap_err();
        assert!(matches!(e, Refusal::None { .. }));
        assert!(e.to_string().contains("vda (16 GiB"), "{e}");
        assert!(
            choose(&AUTO, &[])
                .unwrap_err()
                .to_string()
                .contains("disks seen: none")
        );
    }

    #[test]
    fn a_named_disk_is_chosen_even_when_the_rule_would_not_choose_it() {
        let mut usb = disk("sdb", 8, Some("Kiosk-SSD-1"), Transport::Usb);
        usb.wwn = Some("naa.5000c500a1b2c3d4".into());
        let seen = [disk("vda", 64, Some("A"), Transport::Virtio), usb];
        assert_eq!(
            choose(&TargetRule::Serial(" kiosk-ssd-1 ".into()), &seen)
                .unwrap()
                .name,
            "sdb"
        );
        assert_eq!(
            choose(&TargetRule::Wwn("NAA.5000C500A1B2C3D4".into()), &seen)
                .unwrap()
                .name,
            "sdb"
        );
        assert!(matches!(
            choose(&TargetRule::Serial("missing".into()), &seen),
            Err(Refusal::None { .. })
        ));
    }

    #[test]
    fn a_wwn_matches_in_the_kernels_lsblks_and_windows_forms() {
        let mut sata = disk("sda", 500, None, Transport::Sata);
        sata.wwn = Some("naa.5000c500a1b2c3d4".into());
        let mut nvme = disk("nvme0n1", 500, None, Transport::Nvme);
        nvme.wwn = Some("eui.0025388b71b0a1b2".into());
        let mut fallback = disk("nvme1n1", 500, None, Transport::Nvme);
        fallback.wwn = Some("nvme.144d-53334e47-53616d73756e67-00000001".into());
        let seen = [sata, nvme, fallback];
        for (wanted, name) in [
            ("naa.5000c500a1b2c3d4", "sda"),
            ("0x5000c500a1b2c3d4", "sda"),
            ("0x5000C500A1B2C3D4", "sda"),
            ("eui.0025388b71b0a1b2", "nvme0n1"),
            ("0025_388B_71B0_A1B2.", "nvme0n1"),
            ("NVME.144D-53334E47-53616D73756E67-00000001", "nvme1n1"),
        ] {
            let chosen = choose(&TargetRule::Wwn(wanted.into()), &seen);
            assert_eq!(chosen.map(|d| d.name.as_str()), Ok(name), "{wanted}");
        }
        // Not the same digits, a prefix of them, or nothing at all: no disk.
        for wanted in [
            "0x5000c500a1b2c3d5",
            "0x5000c500",
            "naa.",
            "",
            "144d53334e47",
        ] {
            assert!(
                matches!(
                    choose(&TargetRule::Wwn(wanted.into()), &seen),
                    Err(Refusal::None { .. })
                ),
                "{wanted:?}"
            );
        }
        assert_eq!(wwn_digits(" 0x5000C500A1B2C3D4 "), "5000c500a1b2c3d4");
    }

    #[test]
    fn a_named_read_only_disk_is_refused() {
        let mut ro = disk("vda", 64, Some("A"), Transport::Virtio);
        ro.read_only = true;
        assert!(matches!(
            choose(&TargetRule::Serial("A".into()), std::slice::from_ref(&ro)),
            Err(Refusal::ReadOnly { .. })
        ));
        // The automatic rule never even considers it.
        assert!(matches!(choose(&AUTO, &[ro]), Err(Refusal::None { .. })));
    }

    #[test]
    fn transports_come_from_the_sysfs_path() {
        let cases = [
            (
                "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
                Transport::Usb,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1",
                Transport::Nvme,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
                Transport::Virtio,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                Transport::Sata,
            ),
            (
                "/sys/devices/platform/soc/mmc0/mmc0:0001/block/mmcblk0",
                Transport::Mmc,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block/sdc",
                Transport::Scsi,
            ),
            ("/sys/devices/virtual/block/foo", Transport::Other),
        ];
        for (path, want) in cases {
            assert_eq!(Transport::of_sysfs_path(path), want, "{path}");
        }
    }

    #[test]
    fn only_real_disks_are_considered() {
        for name in ["vda", "sda", "nvme0n1", "mmcblk0", "xvda"] {
            assert!(is_disk_name(name), "{name}");
        }
        for name in ["loop0", "ram1", "zram0", "sr0", "dm-0", "md127", "nbd0"] {
            assert!(!is_disk_name(name), "{name}");
        }
    }
}
