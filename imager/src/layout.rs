//! The partition table, per boot mode, as Windows Setup lays it out:
//!
//! - UEFI/GPT: EFI system partition 260 MiB (FAT32; 260 so that it holds FAT32 on 4K-sector
//!   disks too), Microsoft reserved 16 MiB, Windows (NTFS), Recovery (type
//!   de94bba4-06d1-4d40-a16a-bfd50179d6ac, attributes 0x8000000000000001: required, no drive
//!   letter).
//! - BIOS/MBR: an active FAT32 system partition (100 MiB), Windows (NTFS), Recovery (type 0x27).
//!
//! The plan fixes every sector and every GUID itself (the shell passes in fresh GUIDs), so what
//! `sfdisk --json` reads back can be compared field by field before anything else is written.

use serde::Deserialize;

const MIB: u64 = 1 << 20;

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const MSR_TYPE: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
pub const BASIC_DATA_TYPE: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
pub const RECOVERY_TYPE: &str = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC";
/// GPT attributes of the Recovery partition: bit 0 (required by the platform) and bit 63 (no
/// drive letter), as sfdisk writes and reads them.
pub const RECOVERY_ATTRS: &str = "RequiredPartition GUID:63";
/// MBR partition ids.
pub const MBR_NTFS: &str = "7";
/// The BIOS system partition is FAT32 (LBA): Windows boots from a FAT32 active partition as
/// well as from NTFS, and FAT32 is what a Linux imaging environment can give a volume boot
/// record that loads `\bootmgr` (syslinux's; no Debian package ships Windows' NTFS one).
pub const MBR_FAT32: &str = "c";
pub const MBR_RECOVERY: &str = "27";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    Bios,
}

impl BootMode {
    /// The partition the firmware boots from: the ESP, or the active system partition.
    pub fn system_role(self) -> Role {
        match self {
            BootMode::Uefi => Role::EfiSystem,
            BootMode::Bios => Role::System,
        }
    }
}

/// What a partition is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    EfiSystem,
    MicrosoftReserved,
    /// BIOS: the active partition that holds bootmgr and \Boot\BCD.
    System,
    Windows,
    Recovery,
}

/// GUIDs the shell generated for a GPT layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptIds {
    pub disk: String,
    pub esp: String,
    pub msr: String,
    pub windows: String,
    pub recovery: String,
}

/// Sizes that are choices rather than rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub recovery_bytes: u64,
    /// The smallest Windows partition worth writing; a smaller disk is refused.
    pub min_windows_bytes: u64,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            recovery_bytes: 1024 * MIB,
            min_windows_bytes: 16 * 1024 * MIB,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub role: Role,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub size: u64,
    /// GPT type GUID or MBR id (as sfdisk prints it).
    pub type_: String,
    /// GPT partition GUID.
    pub uuid: Option<String>,
    /// GPT partition name.
    pub name: Option<String>,
    /// GPT attributes (sfdisk's words).
    pub attrs: Option<String>,
    /// MBR active flag.
    pub bootable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub mode: BootMode,
    pub sector_size: u64,
    /// GPT disk GUID, or the MBR disk signature as `0x` + 8 hex digits.
    pub disk_id: String,
    pub partitions: Vec<Partition>,
}

impl Plan {
    pub fn partition(&self, role: Role) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the disk is {disk_mib} MiB: too small for a Windows partition of at least {min_mib} MiB after the boot and recovery partitions"
    )]
    TooSmall { disk_mib: u64, min_mib: u64 },
    #[error("a sector size of {0} bytes is not one recast can lay out (512 or 4096)")]
    SectorSize(u64),
    #[error(
        "the disk is {disk_gib} GiB: an MBR disk cannot address more than 2 TiB; boot it in UEFI mode"
    )]
    MbrTooLarge { disk_gib: u64 },
    #[error("{0:?} is not an MBR disk signature (eight hex digits)")]
    Signature(String),
}

/// The layout for a disk of `disk_bytes` with `sector_size`-byte sectors. `mbr_signature`: the
/// MBR disk signature (BIOS only; eight hex digits). Pure.
pub fn plan(
    mode: BootMode,
    disk_bytes: u64,
    sector_size: u64,
    gpt: &GptIds,
    mbr_signature: &str,
    sizes: Sizes,
) -> Result<Plan, LayoutError> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(LayoutError::SectorSize(sector_size));
    }
    let sectors = |bytes: u64| bytes.div_ceil(sector_size);
    let align = sectors(MIB);
    let align_down = |s: u64| s / align * align;
    let total = disk_bytes / sector_size;
    // The last sector a partition may use: GPT keeps a backup header and entry array (128
    // entries of 128 bytes) at the end of the disk; MBR keeps nothing there.
    let last_usable = match mode {
        BootMode::Uefi => total.saturating_sub(1 + (128 * 128u64).div_ceil(sector_size) + 1),
        BootMode::Bios => total.saturating_sub(1),
    };
    let too_small = || LayoutError::TooSmall {
        disk_mib: disk_bytes / MIB,
        min_mib: sizes.min_windows_bytes / MIB,
    };
    let recovery_size = sectors(sizes.recovery_bytes);
    let recovery_start = align_down(
        last_usable
            .checked_sub(recovery_size)
            .ok_or_else(too_small)?
            + 1,
    );
    let part = |role, start, size, type_: &str| Partition {
        role,
        start,
        size,
        type_: type_.to_string(),
        uuid: None,
        name: None,
        attrs: None,
        bootable: false,
    };
    let mut partitions = Vec::new();
    let disk_id = match mode {
        BootMode::Uefi => {
            let esp_size = sectors(260 * MIB);
            let msr_size = sectors(16 * MIB);
            let esp = align;
            let msr = esp + esp_size;
            let windows = msr + msr_size;
            partitions.push(Partition {
                uuid: Some(gpt.esp.clone()),
                name: Some("EFI system partition".into()),
                ..part(Role::EfiSystem, esp, esp_size, ESP_TYPE)
            });
            partitions.push(Partition {
                uuid: Some(gpt.msr.clone()),
                name: Some("Microsoft reserved partition".into()),
                ..part(Role::MicrosoftReserved, msr, msr_size, MSR_TYPE)
            });
            partitions.push(Partition {
                uuid: Some(gpt.windows.clone()),
                name: Some("Basic data partition".into()),
                ..part(
                    Role::Windows,
                    windows,
                    recovery_start.saturating_sub(windows),
                    BASIC_DATA_TYPE,
                )
            });
            partitions.push(Partition {
                uuid: Some(gpt.recovery.clone()),
                name: Some("Basic data partition".into()),
                attrs: Some(RECOVERY_ATTRS.into()),
                ..part(
                    Role::Recovery,
                    recovery_start,
                    last_usable - recovery_start + 1,
                    RECOVERY_TYPE,
                )
            });
            gpt.disk.to_ascii_uppercase()
        }
        BootMode::Bios => {
            if total > u64::from(u32::MAX) {
                return Err(LayoutError::MbrTooLarge {
                    disk_gib: disk_bytes >> 30,
                });
            }
            let sig = mbr_signature.trim_start_matches("0x");
            if sig.len() != 8 || !sig.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(LayoutError::Signature(mbr_signature.into()));
            }
            let system_size = sectors(100 * MIB);
            let system = align;
            let windows = system + system_size;
            partitions.push(Partition {
                bootable: true,
                ..part(Role::System, system, system_size, MBR_FAT32)
            });
            partitions.push(part(
                Role::Windows,
                windows,
                recovery_start.saturating_sub(windows),
                MBR_NTFS,
            ));
            partitions.push(part(
                Role::Recovery,
                recovery_start,
                last_usable - recovery_start + 1,
                MBR_RECOVERY,
            ));
            format!("0x{}", sig.to_ascii_lowercase())
        }
    };
    let windows = partitions
        .iter()
        .find(|p| p.role == Role::Windows)
        .map_or(0, |p| p.size);
    if windows * sector_size < sizes.min_windows_bytes {
        return Err(too_small());
    }
    Ok(Plan {
        mode,
        sector_size,
        disk_id,
        partitions,
    })
}

/// The plan as an `sfdisk` script (`sfdisk DISK < script`; add `--no-reread --no-tell-kernel`
/// for an image file).
pub fn render_sfdisk(plan: &Plan) -> String {
    let mut out = String::new();
    match plan.mode {
        BootMode::Uefi => out.push_str("label: gpt\n"),
        BootMode::Bios => out.push_str("label: dos\n"),
    }
    out.push_str(&format!("label-id: {}\n", plan.disk_id));
    out.push_str("unit: sectors\n");
    out.push_str(&format!("sector-size: {}\n\n", plan.sector_size));
    for p in &plan.partitions {
        let mut fields = vec![
            format!("start={}", p.start),
            format!("size={}", p.size),
            format!("type={}", p.type_),
        ];
        if let Some(u) = &p.uuid {
            fields.push(format!("uuid={u}"));
        }
        if let Some(n) = &p.name {
            fields.push(format!("name=\"{n}\""));
        }
        if let Some(a) = &p.attrs {
            fields.push(format!("attrs=\"{a}\""));
        }
        if p.bootable {
            fields.push("bootable".into());
        }
        out.push_str(&fields.join(", "));
        out.push('\n');
    }
    out
}

/// What `sfdisk --json` prints.
#[derive(Debug, Deserialize)]
struct SfdiskJson {
    partitiontable: Table,
}

#[derive(Debug, Deserialize)]
struct Table {
    label: String,
    id: String,
    #[serde(default)]
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<ReadPartition>,
}

#[derive(Debug, Deserialize)]
struct ReadPartition {
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    attrs: Option<String>,
    #[serde(default)]
    bootable: bool,
}

/// Compares what `sfdisk --json` read back with the plan; every difference, in words.
pub fn verify(plan: &Plan, sfdisk_json: &str) -> Result<(), Vec<String>> {
    let read: SfdiskJson = serde_json::from_str(sfdisk_json)
        .map_err(|e| vec![format!("sfdisk --json printed something unreadable: {e}")])?;
    let t = read.partitiontable;
    let mut diffs = Vec::new();
    let label = match plan.mode {
        BootMode::Uefi => "gpt",
        BootMode::Bios => "dos",
    };
    if t.label != label {
        diffs.push(format!("partition table is {:?}, not {label:?}", t.label));
    }
    if !t.id.eq_ignore_ascii_case(&plan.disk_id) {
        diffs.push(format!("disk id is {}, not {}", t.id, plan.disk_id));
    }
    if let Some(s) = t.sectorsize.filter(|s| *s != plan.sector_size) {
        diffs.push(format!("sector size is {s}, not {}", plan.sector_size));
    }
    if t.partitions.len() != plan.partitions.len() {
        diffs.push(format!(
            "{} partitions, not {}",
            t.partitions.len(),
            plan.partitions.len()
        ));
    }
    let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a.is_none() && b.is_none(),
    };
    for (i, (want, got)) in plan.partitions.iter().zip(&t.partitions).enumerate() {
        let n = i + 1;
        let role = want.role;
        let mut field = |what: &str, ok: bool, got: String, want: String| {
            if !ok {
                diffs.push(format!(
                    "partition {n} ({role:?}): {what} is {got}, not {want}"
                ));
            }
        };
        field(
            "start",
            got.start == want.start,
            got.start.to_string(),
            want.start.to_string(),
        );
        field(
            "size",
            got.size == want.size,
            got.size.to_string(),
            want.size.to_string(),
        );
        field(
            "type",
            got.type_.eq_ignore_ascii_case(&want.type_),
            got.type_.clone(),
            want.type_.clone(),
        );
        field(
            "uuid",
            same(&got.uuid, &want.uuid),
            format!("{:?}", got.uuid),
            format!("{:?}", want.uuid),
        );
        field(
            "name",
            got.name == want.name,
            format!("{:?}", got.name),
            format!("{:?}", want.name),
        );
        field(
            "attributes",
            got.attrs == want.attrs,
            format!("{:?}", got.attrs),
            format!("{:?}", want.attrs),
        );
        field(
            "active flag",
            got.bootable == want.bootable,
            got.bootable.to_string(),
            want.bootable.to_string(),
        );
    }
    if diffs.is_empty() { Ok(()) } else { Err(diffs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn ids() -> GptIds {
        GptIds {
            disk: "11111111-2222-3333-4444-555555555555".into(),
            esp: "11111111-2222-3333-4444-000000000001".into(),
            msr: "11111111-2222-3333-4444-000000000002".into(),
            windows: "11111111-2222-3333-4444-000000000003".into(),
            recovery: "11111111-2222-3333-4444-000000000004".into(),
        }
    }

    fn small() -> Sizes {
        Sizes {
            recovery_bytes: 1024 * MIB,
            min_windows_bytes: 512 * MIB,
        }
    }

    /// What sfdisk 2.38 (Debian 12) read back after writing `render_sfdisk` of these plans to
    /// 2 GiB image files on this machine: the oracle for `verify` (tests/sfdisk.rs does the same
    /// live when sfdisk is installed).
    const SFDISK_GPT_2GIB: &str = include_str!("../tests/fixtures/sfdisk-gpt-2gib.json");
    const SFDISK_MBR_2GIB: &str = include_str!("../tests/fixtures/sfdisk-mbr-2gib.json");

    #[test]
    fn uefi_layout_of_a_2_gib_disk_matches_what_sfdisk_wrote() {
        let p = plan(BootMode::Uefi, 2 * GIB, 512, &ids(), "", small()).unwrap();
        let got: Vec<(Role, u64, u64)> = p
            .partitions
            .iter()
            .map(|p| (p.role, p.start, p.size))
            .collect();
        assert_eq!(
            got,
            [
                (Role::EfiSystem, 2048, 532480),
                (Role::MicrosoftReserved, 534528, 32768),
                (Role::Windows, 567296, 1527808),
                (Role::Recovery, 2095104, 2099167),
            ]
        );
        assert_eq!(verify(&p, SFDISK_GPT_2GIB), Ok(()));
        let script = render_sfdisk(&p);
        assert!(
            script.starts_with("label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\n"),
            "{script}"
        );
        assert!(script.contains("type=DE94BBA4-06D1-4D40-A16A-BFD50179D6AC, uuid=11111111-2222-3333-4444-000000000004, name=\"Basic data partition\", attrs=\"RequiredPartition GUID:63\""), "{script}");
    }

    #[test]
    fn verify_names_each_difference() {
        let p = plan(BootMode::Uefi, 2 * GIB, 512, &ids(), "", small()).unwrap();
        let tampered = SFDISK_GPT_2GIB
            .replace(
                ",\n            \"attrs\": \"RequiredPartition GUID:63\"",
                "",
            )
            .replace("\"size\": 32768", "\"size\": 32767");
        let diffs = verify(&p, &tampered).unwrap_err();
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(
            diffs[0].contains("partition 2") && diffs[0].contains("size"),
            "{diffs:?}"
        );
        assert!(
            diffs[1].contains("partition 4") && diffs[1].contains("attributes"),
            "{diffs:?}"
        );
        assert!(verify(&p, "not json").is_err());
        let mbr = SFDISK_GPT_2GIB.replace("\"gpt\"", "\"dos\"");
        assert!(verify(&p, &mbr).unwrap_err()[0].contains("\"dos\""));
    }

    #[test]
    fn bios_layout_has_an_active_system_partition_and_recovery_0x27() {
        let p = plan(BootMode::Bios, GIB * 2, 512, &ids(), "1234ABCD", small()).unwrap();
        assert_eq!(p.disk_id, "0x1234abcd");
        let sys = p.partition(Role::System).unwrap();
        assert!(sys.bootable && sys.start == 2048 && sys.size == 204800);
        assert_eq!(p.partition(Role::Recovery).unwrap().type_, MBR_RECOVERY);
        // MBR keeps nothing at the end of the disk: the last sector is usable.
        let rec = p.partition(Role::Recovery).unwrap();
        assert_eq!(rec.start + rec.size, 2 * GIB / 512);
        assert_eq!(verify(&p, SFDISK_MBR_2GIB), Ok(()));
        let script = render_sfdisk(&p);
        assert!(
            script.starts_with("label: dos\nlabel-id: 0x1234abcd\n"),
            "{script}"
        );
        assert!(
            script.contains("start=2048, size=204800, type=c, bootable\n"),
            "{script}"
        );
    }

    #[test]
    fn four_k_sector_disks_keep_mib_alignment_and_sizes() {
        let p = plan(BootMode::Uefi, 64 * GIB, 4096, &ids(), "", Sizes::default()).unwrap();
        for part in &p.partitions {
            assert_eq!(part.start * 4096 % MIB, 0, "{part:?}");
        }
        assert_eq!(p.partition(Role::EfiSystem).unwrap().size * 4096, 260 * MIB);
        // The backup GPT (header + 4 sectors of entries) stays free.
        let rec = p.partition(Role::Recovery).unwrap();
        assert_eq!(rec.start + rec.size, 64 * GIB / 4096 - 5);
    }

    #[test]
    fn bad_disks_and_inputs_are_refused_with_a_reason() {
        assert!(matches!(
            plan(BootMode::Uefi, GIB, 512, &ids(), "", Sizes::default()),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(matches!(
            plan(BootMode::Uefi, 10 * MIB, 512, &ids(), "", Sizes::default()),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(matches!(
            plan(BootMode::Uefi, 64 * GIB, 520, &ids(), "", Sizes::default()),
            Err(LayoutError::SectorSize(520))
        ));
        assert!(matches!(
            plan(
                BootMode::Bios,
                3 * 1024 * GIB,
                512,
                &ids(),
                "1234abcd",
                Sizes::default()
            ),
            Err(LayoutError::MbrTooLarge { .. })
        ));
        assert!(matches!(
            plan(
                BootMode::Bios,
                64 * GIB,
                512,
                &ids(),
                "xyz",
                Sizes::default()
            ),
            Err(LayoutError::Signature(_))
        ));
    }

    #[test]
    fn partitions_never_overlap_and_fill_the_disk_in_order() {
        for gib in [20u64, 64, 500, 1900] {
            for (mode, sector) in [
                (BootMode::Uefi, 512),
                (BootMode::Uefi, 4096),
                (BootMode::Bios, 512),
            ] {
                let p = plan(
                    mode,
                    gib * GIB + 12345,
                    sector,
                    &ids(),
                    "1234abcd",
                    Sizes::default(),
                )
                .unwrap();
                for w in p.partitions.windows(2) {
                    assert_eq!(
                        w[0].start + w[0].size,
                        w[1].start,
                        "{mode:?} {gib} GiB: {w:?}"
                    );
                }
            }
        }
    }
}
