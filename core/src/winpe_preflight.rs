//! WinPE's preflight, decided by the boot service with the same rules recast-imager runs on
//! Linux: startnet.cmd reports what WinPE sees (its firmware type, the machine's SMBIOS
//! identity and model, its disks) before anything is written, and gets back the plan — which
//! disk to write and which driver set to place — or a refusal that ends the try with the disk
//! untouched. cmd.exe cannot run recast's rules; sending it the answer keeps one source of
//! truth ([`crate::target_disk`], [`crate::machine_identity`], [`crate::imaging::driver_set_for`]).
//!
//! The report is what WinPE's own tools print, sections headed by startnet.cmd:
//!
//! ```text
//! [firmware]                 reg query HKLM\System\CurrentControlSet\Control /v PEFirmwareType
//! [csproduct]                wmic csproduct get IdentifyingNumber,Name,UUID,Vendor /value
//! [bios]                     wmic bios get SMBIOSMajorVersion,SMBIOSMinorVersion /value
//! [diskdrive]                wmic diskdrive get Index,InterfaceType,MediaType,Model,SerialNumber,Size /value
//! ```
//!
//! wmic writes UTF-16 when redirected; startnet.cmd turns each into text with `type` and the
//! parser also takes a UTF-16LE body, so either arrives whole.

use crate::imaging::{DriverChoice, ImagingRefusal, ImagingTask, TaskDriverSet, driver_set_for};
use crate::machine_identity::{self, Expected, Seen, Verdict};
use crate::target_disk::{self, Disk, TargetRule, Transport};

/// Larger than any report: four sections and a few dozen disks.
pub const MAX_REPORT_BYTES: usize = 32 * 1024;

/// What WinPE says its firmware is (`PEFirmwareType`: 1 BIOS, 2 UEFI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// One disk as `wmic diskdrive` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WinDisk {
    pub index: u32,
    pub interface: String,
    pub media: String,
    pub model: String,
    pub serial: Option<String>,
    pub size_bytes: u64,
}

/// What WinPE reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineReport {
    pub firmware: Option<Firmware>,
    pub uuid: Option<String>,
    pub serial_number: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub smbios_version: Option<(u8, u8)>,
    pub disks: Vec<WinDisk>,
}

/// The body as text: UTF-16LE when it starts with the byte-order mark (or looks like it),
/// else UTF-8 (lossy: tools print OEM code pages, and only ASCII fields matter).
fn text_of(body: &[u8]) -> String {
    let utf16 = body.starts_with(&[0xFF, 0xFE])
        || (body.len() >= 4 && body[1] == 0 && body[3] == 0 && body[0] != 0);
    if utf16 {
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
            .trim_start_matches('\u{feff}')
            .to_string()
    } else {
        String::from_utf8_lossy(body)
            .trim_start_matches('\u{feff}')
            .to_string()
    }
}

fn non_empty(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Parses the report. Unknown lines are ignored: a tool that prints more says nothing wrong.
pub fn parse(body: &[u8]) -> MachineReport {
    let text = text_of(body);
    let mut report = MachineReport::default();
    let mut section = "";
    let mut bios_major: Option<u8> = None;
    let mut bios_minor: Option<u8> = None;
    for raw in text.lines() {
        let line = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = match name {
                "firmware" => "firmware",
                "csproduct" => "csproduct",
                "bios" => "bios",
                "diskdrive" => "diskdrive",
                _ => "",
            };
            continue;
        }
        if section == "firmware" {
            // "    PEFirmwareType    REG_DWORD    0x2"
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() == 3 && words[0].eq_ignore_ascii_case("PEFirmwareType") {
                report.firmware = match words[2].to_ascii_lowercase().as_str() {
                    "0x1" => Some(Firmware::Bios),
                    "0x2" => Some(Firmware::Uefi),
                    _ => None,
                };
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match (section, key.trim()) {
            ("csproduct", "IdentifyingNumber") => report.serial_number = non_empty(value),
            ("csproduct", "Name") => report.model = non_empty(value),
            ("csproduct", "Vendor") => report.manufacturer = non_empty(value),
            ("csproduct", "UUID") => report.uuid = non_empty(value),
            ("bios", "SMBIOSMajorVersion") => bios_major = value.trim().parse().ok(),
            ("bios", "SMBIOSMinorVersion") => bios_minor = value.trim().parse().ok(),
            ("diskdrive", "Index") => {
                if let Ok(index) = value.trim().parse() {
                    report.disks.push(WinDisk {
                        index,
                        ..WinDisk::default()
                    });
                }
            }
            ("diskdrive", k) => {
                let Some(disk) = report.disks.last_mut() else {
                    continue;
                };
                match k {
                    "InterfaceType" => disk.interface = value.trim().to_string(),
                    "MediaType" => disk.media = value.trim().to_string(),
                    "Model" => disk.model = value.trim().to_string(),
                    "SerialNumber" => disk.serial = non_empty(value),
                    "Size" => disk.size_bytes = value.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (bios_major, bios_minor) {
        report.smbios_version = Some((a, b));
    }
    report
}

impl WinDisk {
    /// The disk as the shared rule sees it. wmic names no WWN, but Windows' NVMe driver reports
    /// an NVMe disk's EUI-64 as its serial number (`0025_38B3_71B0_A1B2.`): that is taken as
    /// its WWN too, so a WWN rule written from Linux (`eui.002538b371b0a1b2`) finds it.
    fn as_disk(&self) -> Disk {
        let interface = self.interface.to_ascii_uppercase();
        let media = self.media.to_ascii_lowercase();
        Disk {
            name: format!("disk {} ({})", self.index, self.model),
            size_bytes: self.size_bytes,
            serial: self.serial.clone(),
            wwn: self.serial.clone().filter(|s| looks_like_eui(s)),
            // "Removable Media" and "External hard disk media": not the machine's own disk.
            removable: media.contains("removable") || media.contains("external"),
            read_only: false,
            transport: match interface.as_str() {
                "USB" | "1394" => Transport::Usb,
                "IDE" => Transport::Sata,
                // NVMe and SAS disks are "SCSI" to Win32_DiskDrive.
                "SCSI" => Transport::Scsi,
                _ => Transport::Other,
            },
        }
    }
}

/// A serial number in the form Windows prints an NVMe EUI-64 or NGUID: groups of four hex
/// digits joined by `_`, usually with a closing `.`.
fn looks_like_eui(serial: &str) -> bool {
    let s = serial.trim().trim_end_matches('.');
    let groups: Vec<&str> = s.split('_').collect();
    matches!(groups.len(), 4 | 8)
        && groups
            .iter()
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What startnet.cmd does, once the rules agree.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// diskpart's disk number.
    pub disk: u32,
    pub disk_summary: String,
    pub drivers: Option<TaskDriverSet>,
    /// How the identity was established, for the try's progress.
    pub identity: String,
}

impl Plan {
    /// `KEY=value` lines startnet.cmd reads with `for /f` into RECAST_ variables.
    pub fn render(&self) -> String {
        let mut out = format!("DISK={}\r\n", self.disk);
        if let Some(d) = &self.drivers
            && let Some(url) = &d.url
        {
            out.push_str(&format!(
                "DRIVERS_URL={url}\r\nDRIVERS_SHA256={}\r\n",
                d.sha256
            ));
        }
        out
    }
}

/// Why nothing may be written: the message, and the refusal kind when it is one the lifecycle
/// knows (the same the Linux imager reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    pub refusal: Option<ImagingRefusal>,
}

impl From<String> for Refused {
    fn from(message: String) -> Refused {
        Refused {
            message,
            refusal: None,
        }
    }
}

/// The plan for this machine, or why nothing may be written.
pub fn plan(task: &ImagingTask, report: &MachineReport) -> Result<Plan, Refused> {
    let want = match task.boot_mode.as_str() {
        "bios" => Firmware::Bios,
        _ => Firmware::Uefi,
    };
    match report.firmware {
        Some(f) if f == want => {}
        Some(f) => {
            return Err(Refused::from(format!(
                "the Endpoint's boot mode is {} but WinPE booted with {} firmware: correct spec.bootMode (or the machine's firmware setting) before imaging",
                task.boot_mode,
                match f {
                    Firmware::Bios => "BIOS",
                    Firmware::Uefi => "UEFI",
                }
            )));
        }
        None => {
            return Err(Refused::from(
                "WinPE did not report its firmware type (PEFirmwareType): the kit's WinPE is not one recast can check; rebuild it with `recastctl bootkit build`".to_string(),
            ));
        }
    }
    let uuid = report.uuid.clone().filter(|u| {
        // Firmware without a UUID prints all zeros or all Fs, as the Linux kernel hides.
        machine_identity::parse_uuid(u).is_some_and(|b| b != [0; 16] && b != [0xFF; 16])
    });
    let verdict = machine_identity::check(
        &Expected {
            smbios_uuid: task.identity.smbios_uuid.clone(),
            serial_number: task.identity.serial_number.clone(),
        },
        &Seen {
            product_uuid: uuid.map(|u| u.to_ascii_lowercase()),
            product_serial: report.serial_number.clone(),
            smbios_version: report.smbios_version,
        },
    );
    let identity = match verdict {
        Verdict::Mismatch(m) => {
            return Err(Refused {
                message: format!(
                    "this is not the Endpoint's machine: {}",
                    m.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                refusal: Some(ImagingRefusal::WrongMachine),
            });
        }
        Verdict::Match { .. } => "identity matches".to_string(),
        Verdict::NothingToCheck => {
            "the Endpoint sets no SMBIOS identity: only its MAC address names this machine".into()
        }
    };
    if report.disks.is_empty() {
        return Err(Refused {
            message: "WinPE listed no disks (wmic diskdrive): the kit's WinPE lacks WinPE-WMI or the disk controller's driver; rebuild the kit with both".into(),
            refusal: Some(ImagingRefusal::NoTargetDisk),
        });
    }
    let disks: Vec<Disk> = report.disks.iter().map(WinDisk::as_disk).collect();
    let rule = TargetRule::of(&task.target_disk);
    let chosen = target_disk::choose(&rule, &disks).map_err(|r| {
        let hint = if matches!(rule, TargetRule::Wwn(_)) {
            " (WinPE shows a WWN only for NVMe disks, as their serial number: name other disks by spec.targetDisk.serial for WinPE)"
        } else {
            ""
        };
        Refused {
            message: format!("{r}{hint}"),
            refusal: Some(ImagingRefusal::NoTargetDisk),
        }
    })?;
    let index = disks
        .iter()
        .position(|d| d == chosen)
        .map(|i| report.disks[i].index)
        .unwrap_or_default();
    let drivers = match driver_set_for(
        &task.drivers,
        report.manufacturer.as_deref().unwrap_or_default(),
        report.model.as_deref().unwrap_or_default(),
    ) {
        DriverChoice::None => None,
        DriverChoice::Ready(s) => Some(s.clone()),
        DriverChoice::NotReady(s) => {
            return Err(Refused::from(format!(
                "the driver set for {} {} is not served by this boot server yet; the machine would come up without its drivers: wait for the GoldenImage's DriverSetFailed condition to clear",
                s.manufacturer, s.model
            )));
        }
    };
    Ok(Plan {
        disk: index,
        disk_summary: chosen.to_string(),
        drivers,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{ImageTaskFile, TaskIdentity};

    /// What a UEFI WinPE on a two-disk kiosk prints (wmic's /value blocks, reg's line).
    const REPORT: &str = "[firmware]\r\n\r\nHKEY_LOCAL_MACHINE\\System\\CurrentControlSet\\Control\r\n    PEFirmwareType    REG_DWORD    0x2\r\n\r\n[csproduct]\r\n\r\n\r\nIdentifyingNumber=KIOSK-0001\r\nName=Kiosk 5000\r\nUUID=4C4C4544-0031-3910-8033-B4C04F4A3332\r\nVendor=Contoso Ltd.\r\n\r\n\r\n[bios]\r\n\r\nSMBIOSMajorVersion=3\r\nSMBIOSMinorVersion=4\r\n\r\n[diskdrive]\r\n\r\n\r\nIndex=0\r\nInterfaceType=USB\r\nMediaType=Removable Media\r\nModel=SanDisk Cruzer USB Device\r\nSerialNumber=4C530001\r\nSize=31457280000\r\n\r\n\r\nIndex=1\r\nInterfaceType=SCSI\r\nMediaType=Fixed hard disk media\r\nModel=Samsung SSD 980 PRO 1TB\r\nSerialNumber=S5GXNX0T123456\r\nSize=1000202273280\r\n\r\n";

    fn task() -> ImagingTask {
        ImagingTask {
            multicast: None,
            namespace: "default".into(),
            endpoint: "kiosk-01".into(),
            attempt_id: "a".into(),
            try_number: 1,
            boot_mode: "uefi".into(),
            hostname: "KIOSK-01".into(),
            image: ImageTaskFile {
                name: "win11".into(),
                url: "http://boot/win11.wim".into(),
                sha256: "cd".repeat(32),
                size: 1,
                index: 1,
            },
            identity: TaskIdentity {
                smbios_uuid: Some("4c4c4544-0031-3910-8033-b4c04f4a3332".into()),
                serial_number: Some("KIOSK-0001".into()),
            },
            target_disk: crate::imaging::target_disk(None),
            progress_url: String::new(),
            result_url: String::new(),
            unattend_url: String::new(),
            agent_config_url: String::new(),
            drivers: vec![TaskDriverSet {
                manufacturer: "Contoso Ltd.".into(),
                model: "Kiosk 5000".into(),
                sha256: "ab".repeat(32),
                url: Some("http://boot/artifacts/drivers.wim".into()),
                size: 10,
            }],
        }
    }

    fn utf16(text: &str) -> Vec<u8> {
        [0xFF, 0xFE]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect()
    }

    #[test]
    fn wmic_and_reg_output_parse_in_either_encoding() {
        for body in [REPORT.as_bytes().to_vec(), utf16(REPORT)] {
            let r = parse(&body);
            assert_eq!(r.firmware, Some(Firmware::Uefi));
            assert_eq!(r.serial_number.as_deref(), Some("KIOSK-0001"));
            assert_eq!(r.manufacturer.as_deref(), Some("Contoso Ltd."));
            assert_eq!(r.model.as_deref(), Some("Kiosk 5000"));
            assert_eq!(r.smbios_version, Some((3, 4)));
            assert_eq!(r.disks.len(), 2);
            assert_eq!(r.disks[1].index, 1);
            assert_eq!(r.disks[1].serial.as_deref(), Some("S5GXNX0T123456"));
            assert_eq!(r.disks[1].size_bytes, 1_000_202_273_280);
        }
        assert_eq!(parse(b"garbage\x00\xff"), MachineReport::default());
    }

    #[test]
    fn the_plan_takes_the_only_fixed_disk_and_the_models_drivers() {
        let plan = plan(&task(), &parse(REPORT.as_bytes())).unwrap();
        assert_eq!(plan.disk, 1, "never the USB stick at disk 0");
        assert_eq!(plan.identity, "identity matches");
        assert_eq!(
            plan.render(),
            format!(
                "DISK=1\r\nDRIVERS_URL=http://boot/artifacts/drivers.wim\r\nDRIVERS_SHA256={}\r\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn each_unsafe_machine_is_refused_saying_why() {
        let good = parse(REPORT.as_bytes());
        let cases: Vec<(ImagingTask, MachineReport, &str)> = vec![
            (
                ImagingTask {
                    boot_mode: "bios".into(),
                    ..task()
                },
                good.clone(),
                "boot mode is bios but WinPE booted with UEFI firmware",
            ),
            (
                task(),
                MachineReport {
                    firmware: None,
                    ..good.clone()
                },
                "did not report its firmware type",
            ),
            (
                task(),
                MachineReport {
                    serial_number: Some("OTHER".into()),
                    ..good.clone()
                },
                "this is not the Endpoint's machine: the Endpoint's serial number is \"KIOSK-0001\", this machine's is \"OTHER\"",
            ),
            (
                task(),
                MachineReport {
                    uuid: Some("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF".into()),
                    ..good.clone()
                },
                "this machine reports none",
            ),
            (
                task(),
                MachineReport {
                    disks: vec![],
                    ..good.clone()
                },
                "WinPE listed no disks",
            ),
            (
                task(),
                MachineReport {
                    disks: vec![
                        good.disks[1].clone(),
                        WinDisk {
                            index: 2,
                            ..good.disks[1].clone()
                        },
                    ],
                    ..good.clone()
                },
                "2 disks are a fixed",
            ),
            (
                ImagingTask {
                    target_disk: recast_crds::endpoint::TargetDisk {
                        wwn: Some("0x5002538e40a1b2c3".into()),
                        serial: None,
                        min_size_gib: None,
                    },
                    ..task()
                },
                good.clone(),
                "WinPE shows a WWN only for NVMe disks",
            ),
            (
                ImagingTask {
                    drivers: vec![TaskDriverSet {
                        url: None,
                        ..task().drivers[0].clone()
                    }],
                    ..task()
                },
                good.clone(),
                "not served by this boot server yet",
            ),
        ];
        for (task, report, says) in cases {
            let err = plan(&task, &report).unwrap_err();
            assert!(err.message.contains(says), "{says:?} not in {err:?}");
            let kind =
                if says.contains("not the Endpoint's machine") || says.contains("reports none") {
                    Some(ImagingRefusal::WrongMachine)
                } else if says.contains("disk") || says.contains("WWN") {
                    Some(ImagingRefusal::NoTargetDisk)
                } else {
                    None
                };
            assert_eq!(err.refusal, kind, "{says}");
        }
    }

    #[test]
    fn an_nvme_disk_is_found_by_the_eui_linux_reports_as_its_wwn() {
        let mut report = parse(REPORT.as_bytes());
        report.disks.push(WinDisk {
            index: 2,
            interface: "SCSI".into(),
            media: "Fixed hard disk media".into(),
            model: "NVMe Samsung SSD 980".into(),
            serial: Some("0025_38B3_71B0_A1B2.".into()),
            size_bytes: 1_000_202_273_280,
        });
        let t = ImagingTask {
            target_disk: recast_crds::endpoint::TargetDisk {
                wwn: Some("eui.002538b371b0a1b2".into()),
                serial: None,
                min_size_gib: None,
            },
            ..task()
        };
        assert_eq!(plan(&t, &report).unwrap().disk, 2);
        assert!(looks_like_eui("0025_38B3_71B0_A1B2_0000_0000_0000_0001."));
        assert!(!looks_like_eui("S5GXNX0T123456"));
        assert!(!looks_like_eui("ABCD_EFGH_0000_0000"));
    }

    #[test]
    fn a_serial_rule_picks_that_disk_even_when_it_is_not_the_only_one() {
        let mut report = parse(REPORT.as_bytes());
        report.disks.push(WinDisk {
            index: 2,
            serial: Some("OTHER".into()),
            ..report.disks[1].clone()
        });
        let t = ImagingTask {
            target_disk: recast_crds::endpoint::TargetDisk {
                serial: Some("S5GXNX0T123456".into()),
                wwn: None,
                min_size_gib: None,
            },
            drivers: vec![],
            ..task()
        };
        let p = plan(&t, &report).unwrap();
        assert_eq!((p.disk, &p.drivers), (1, &None));
        assert_eq!(p.render(), "DISK=1\r\n");
    }
}
