//! WinPE under UEFI Secure Boot, decided in one place: which files a site's kit holds and where
//! recast lays them out under the boot root, the TFTP block and window sizes the ramdisk is
//! fetched with, what DHCP must offer, and the BCD store that ties them together. Pure: the
//! shells (`recastctl bootkit check --install`, the boot service's DHCP) read these.
//!
//! The chain: the machine's UEFI PXE firmware downloads Microsoft's signed `bootmgfw.efi` over
//! TFTP (the DHCP boot file [`BOOT_FILE`]); bootmgfw, started by PXE firmware, reads its BCD
//! over TFTP from `\Boot\BCD` (its default when DHCP carries no option 252), then
//! `\Boot\boot.sdi` and `\Boot\boot.wim` as the BCD names them, with the ramdisk TFTP options
//! below, and starts WinPE's `winload.efi` from the RAM disk. recast's TFTP treats `\` as a
//! separator and is case-sensitive, so the kit is laid out under `Boot/` spelt exactly so.
//!
//! Why `Boot/`: with the store where bootmgfw looks by default, the chain does not depend on
//! DHCP option 252 (which WDS uses to point bootmgfw at another store) being sent or honoured.
//!
//! The BCD's element ids and object GUIDs are the ones bcdedit writes (Geoff Chappell's BCD
//! element list; `BcdDeviceObjectElementTypes` in Microsoft's BCD WMI documentation gives the
//! ramdisk TFTP elements a boolean format byte, 0x36000007/8, which is wrong: they are integers,
//! 0x35000007/8, as bcdedit writes them). The ramdisk device element's byte layout is the one
//! bcdedit writes for `ramdisk=[boot]\path,{ramdiskoptions}` (as ntloader's `bcd.c` builds it).

use crate::regf::{self, Key, REG_BINARY, REG_DWORD, REG_MULTI_SZ, REG_SZ, reg_sz};

/// TFTP block size bootmgfw asks for when it fetches boot.sdi and boot.wim: 1456 bytes of data
/// + 4 (TFTP) + 8 (UDP) + 20 (IPv4) = 1488, inside a 1500-byte Ethernet MTU with room for a VLAN
///   or tunnel header. A larger block would be fragmented, and one lost fragment costs the block.
pub const RAMDISK_TFTP_BLOCK_SIZE: u16 = 1456;

/// TFTP window (RFC 7440) bootmgfw asks for: 16 blocks (about 23 KiB) per acknowledgement.
/// recast's TFTP grants up to 64; 16 is what its benchmarks measure (docs/benchmarks.md) and
/// what public WinPE-over-TFTP setups report booting reliably with.
pub const RAMDISK_TFTP_WINDOW_SIZE: u16 = 16;

/// The directory under the boot root that holds the kit and its BCD.
pub const KIT_DIR: &str = "Boot";

/// The BCD's file name in [`KIT_DIR`].
pub const BCD_FILE: &str = "BCD";

/// What DHCP offers x64 UEFI clients on this chain as the boot file (the `file` field, or
/// option 67), relative to the TFTP root.
pub const BOOT_FILE: &str = "Boot/bootmgfw.efi";

/// The TFTP path bootmgfw requests its store from when DHCP carries no option 252. The kit's
/// BCD is there, so recast sends no option 252.
pub const BCD_TFTP_PATH: &str = r"\Boot\BCD";

/// `{bootmgr}`.
pub const BOOTMGR_GUID: &str = crate::bcd::BOOTMGR;
/// `{ramdiskoptions}`: the well-known object that holds the ramdisk's SDI and TFTP options.
pub const RAMDISK_OPTIONS_GUID: &str = crate::bcd::RAMDISKOPTIONS;
/// The WinPE loader object. Fixed, so the same kit always gives the same BCD bytes: the bytes
/// after `7265-6361-7374` spell "recast" and "winpe_" in ASCII.
pub const LOADER_GUID: &str = "{72656361-7374-4000-8000-77696e70655f}";

/// The path bootmgfw starts WinPE's OS loader from, inside boot.wim.
pub const WINLOAD_PATH: &str = r"\Windows\System32\winload.efi";

/// The root key's name in a store bcdedit creates (Windows mounts it as HKLM\BCD00000000
/// whatever it says).
pub const BCD_ROOT: &str = "NewStoreRoot";

/// One file of a site's kit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KitFile {
    /// Microsoft's Windows Boot Manager for UEFI, signed by Microsoft (Authenticode).
    BootManager,
    /// The System Deployment Image the ramdisk is built on.
    Sdi,
    /// The WinPE image.
    Wim,
}

impl KitFile {
    pub const ALL: [KitFile; 3] = [KitFile::BootManager, KitFile::Sdi, KitFile::Wim];

    /// Its name under [`KIT_DIR`].
    pub fn name(self) -> &'static str {
        match self {
            KitFile::BootManager => "bootmgfw.efi",
            KitFile::Sdi => "boot.sdi",
            KitFile::Wim => "boot.wim",
        }
    }

    /// Its path under the boot root, `/`-separated.
    pub fn installed_path(self) -> String {
        format!("{KIT_DIR}/{}", self.name())
    }

    /// The TFTP path bootmgfw requests (the form the BCD names it in).
    pub fn tftp_path(self) -> String {
        format!(r"\{KIT_DIR}\{}", self.name())
    }

    /// What a person knows it as.
    pub fn what(self) -> &'static str {
        match self {
            KitFile::BootManager => "the Windows Boot Manager for UEFI (bootmgfw.efi)",
            KitFile::Sdi => "the ramdisk's System Deployment Image (boot.sdi)",
            KitFile::Wim => "the WinPE image (boot.wim)",
        }
    }

    /// Whether the file is a PE image that must carry an Authenticode signature.
    pub fn is_pe(self) -> bool {
        matches!(self, KitFile::BootManager)
    }

    /// Where the file may sit in the directory a site copied, in the order tried; matched
    /// case-insensitively, `/`-separated. Three shapes are accepted: a flat directory with the
    /// three files; the ADK's `copype amd64 DIR` folder (`media/` is what `MakeWinPEMedia`
    /// writes to a USB stick, and `media/EFI/Boot/bootx64.efi` is bootmgfw.efi under the name
    /// UEFI firmware looks for on removable media); and that `media` folder alone.
    pub fn sources(self) -> &'static [&'static str] {
        match self {
            KitFile::BootManager => &[
                "bootmgfw.efi",
                "media/EFI/Boot/bootx64.efi",
                "EFI/Boot/bootx64.efi",
                "media/EFI/Microsoft/Boot/bootmgfw.efi",
                "EFI/Microsoft/Boot/bootmgfw.efi",
            ],
            KitFile::Sdi => &["boot.sdi", "media/Boot/boot.sdi", "Boot/boot.sdi"],
            KitFile::Wim => &["boot.wim", "media/sources/boot.wim", "sources/boot.wim"],
        }
    }

    /// The bytes the file must start with, when its format has a signature: `MZ` (PE),
    /// `$SDI0001` (SDI), `MSWIM\0\0\0` (WIM).
    pub fn magic(self) -> &'static [u8] {
        match self {
            KitFile::BootManager => b"MZ",
            KitFile::Sdi => b"$SDI0001",
            KitFile::Wim => b"MSWIM\0\0\0",
        }
    }
}

/// The directory under the boot root of the kit iPXE boots with wimboot (machines without
/// Secure Boot): `wimboot`, `BCD`, `boot.sdi` and `boot.wim`, which the boot service serves as
/// `/artifacts/winpe/...` (`recastctl bootkit build` lays it out).
pub const WIMBOOT_DIR: &str = "winpe";

/// The oldest wimboot that starts the boot manager of Windows 11 24H2 and later (it must
/// expose `boot.stl`; older ones fail at once with 0xc000000f under Secure Boot).
pub const MIN_WIMBOOT: (u32, u32, u32) = (2, 9, 0);

/// Where `recastctl bootkit build` puts curl.exe inside boot.wim: WinPE from the ADK has no
/// curl, and startnet.cmd speaks the imaging protocol with it.
pub const CURL_IN_WIM: &str = "/Windows/System32/curl.exe";

/// The programs startnet.cmd runs, under WinPE's `Windows/System32`, each with where a kit
/// gets it. `recastctl bootkit build` refuses a boot.wim that lacks one, and startnet.cmd checks
/// the same list before it claims the try (it renders this list).
pub const WINPE_TOOLS: &[(&str, &str)] = &[
    ("curl.exe", "recastctl bootkit build --curl puts it there"),
    (
        "wbem/WMIC.exe",
        "the WinPE-WMI optional component: Dism /Image:MOUNT /Add-Package /PackagePath:\"%WinPERoot%\\amd64\\WinPE_OCs\\WinPE-WMI.cab\" on the ADK machine, then build the kit again",
    ),
    (
        "diskpart.exe",
        "every WinPE has it: the boot.wim is not the ADK's WinPE",
    ),
    (
        "Dism.exe",
        "every WinPE has it: the boot.wim is not the ADK's WinPE",
    ),
    (
        "certutil.exe",
        "copy it from the ADK machine's System32 into the kit's boot.wim",
    ),
    (
        "reg.exe",
        "every WinPE has it: the boot.wim is not the ADK's WinPE",
    ),
    (
        "xcopy.exe",
        "every WinPE has it: the boot.wim is not the ADK's WinPE",
    ),
    (
        "wpeutil.exe",
        "every WinPE has it: the boot.wim is not the ADK's WinPE",
    ),
    (
        "wpeinit.exe",
        "every WinPE has it: the boot.wim is not the ADK's WinPE",
    ),
];

/// Where it puts the site's CA inside boot.wim (`X:\recast\ca.pem` in WinPE), which
/// startnet.cmd's curl checks the boot service's HTTPS listener against.
pub const CA_IN_WIM: &str = "/recast/ca.pem";

/// wimboot's version from the banner it prints and carries in its binary ("wimboot v2.9.0 --
/// Windows Imaging Format bootloader -- https://ipxe.org/wimboot"); None when the file has no
/// such banner (not wimboot).
pub fn wimboot_version(binary: &[u8]) -> Option<(u32, u32, u32)> {
    const BANNER: &[u8] = b"wimboot v";
    const TAIL: &[u8] = b" -- Windows Imaging Format bootloader";
    let mut from = 0;
    while let Some(at) = binary[from..]
        .windows(BANNER.len())
        .position(|w| w == BANNER)
        .map(|i| from + i)
    {
        let rest = &binary[at + BANNER.len()..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .unwrap_or(rest.len());
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        let parts: Vec<u32> = text.split('.').filter_map(|p| p.parse().ok()).collect();
        if rest[end..].starts_with(TAIL) && parts.len() == 3 {
            return Some((parts[0], parts[1], parts[2]));
        }
        from = at + 1;
    }
    None
}

/// The BCD's path under the boot root, `/`-separated.
pub fn bcd_installed_path() -> String {
    format!("{KIT_DIR}/{BCD_FILE}")
}

pub use crate::bcd::{TYPE_BOOT_MANAGER, TYPE_DEVICE_OPTIONS, TYPE_OS_LOADER, element};

/// An element's value as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElementValue {
    /// REG_SZ: strings and single objects (`{guid}`).
    Text(String),
    /// REG_MULTI_SZ: object lists.
    Objects(Vec<String>),
    /// REG_BINARY, 8 bytes little-endian.
    Integer(u64),
    /// REG_BINARY, one byte.
    Boolean(bool),
    /// REG_BINARY: a device element's bytes.
    Device(Vec<u8>),
}

impl ElementValue {
    /// Registry type and bytes.
    pub fn encode(&self) -> (u32, Vec<u8>) {
        match self {
            ElementValue::Text(s) => (REG_SZ, reg_sz(s)),
            ElementValue::Objects(list) => {
                let mut data: Vec<u8> = list.iter().flat_map(|g| reg_sz(g)).collect();
                data.extend_from_slice(&[0, 0]);
                (REG_MULTI_SZ, data)
            }
            ElementValue::Integer(n) => (REG_BINARY, n.to_le_bytes().to_vec()),
            ElementValue::Boolean(b) => (REG_BINARY, vec![u8::from(*b)]),
            ElementValue::Device(bytes) => (REG_BINARY, bytes.clone()),
        }
    }
}

/// One BCD object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BcdObject {
    /// `{lower-case guid}`.
    pub guid: &'static str,
    pub type_: u32,
    /// Sorted by id.
    pub elements: Vec<(u32, ElementValue)>,
}

impl BcdObject {
    pub fn element(&self, id: u32) -> Option<&ElementValue> {
        self.elements.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
}

/// A GUID in Windows' binary form, as the store's object references write it: `None` unless
/// `{8-4-4-4-12}` hex digits, braces included (the shared parser takes them optional).
pub fn guid_bytes(guid: &str) -> Option<[u8; 16]> {
    guid.strip_prefix('{')?.strip_suffix('}')?;
    crate::bcd::guid_bytes(guid)
}

/// Device type 5, "boot": the device the boot manager was started from (for a PXE boot, the
/// network boot server).
const DEVICE_BOOT: u32 = 5;

/// The 88-byte device element for `boot` (`ramdisksdidevice boot`):
///
/// ```text
/// 0x00 16  additional options object: none (zero)
/// 0x10 u32 device type 5: boot
/// 0x14 u32 flags 0
/// 0x18 u32 0x48: length of the descriptor from 0x10
/// 0x1C ... zero
/// ```
pub fn boot_device() -> [u8; 88] {
    let mut b = [0u8; 88];
    b[0x10..0x14].copy_from_slice(&DEVICE_BOOT.to_le_bytes());
    b[0x18..0x1C].copy_from_slice(&0x48u32.to_le_bytes());
    b
}

/// The device element for `ramdisk=[boot]<path>,{ramdiskoptions}`:
///
/// ```text
/// 0x00 16  additional options object: {ramdiskoptions}
/// 0x10 u32 device type 0 (block I/O device)
/// 0x14 u32 flags 1
/// 0x18 u32 length from 0x10 to the end
/// 0x1C u32 0
/// 0x20 u32 block I/O type 3: RAM disk
/// 0x24 20  image base, size (u64 each) and offset (u32): zero, the loader fills them in
/// 0x38 u32 1: a file path follows
/// 0x3C u32 length from 0x38 to the end
/// 0x40 u32 5
/// 0x44 72  the device the file is on: the boot device (type 5, length 0x48)
/// 0x8C     the file's path, UTF-16LE with its NUL
/// ```
pub fn ramdisk_device(path: &str) -> Vec<u8> {
    let name = reg_sz(path);
    let total = 0x8C + name.len();
    let mut b = vec![0u8; total];
    b[0x00..0x10].copy_from_slice(
        &guid_bytes(RAMDISK_OPTIONS_GUID).expect("RAMDISK_OPTIONS_GUID is a GUID"),
    );
    b[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    b[0x18..0x1C].copy_from_slice(&((total - 0x10) as u32).to_le_bytes());
    b[0x20..0x24].copy_from_slice(&3u32.to_le_bytes());
    b[0x38..0x3C].copy_from_slice(&1u32.to_le_bytes());
    b[0x3C..0x40].copy_from_slice(&((total - 0x38) as u32).to_le_bytes());
    b[0x40..0x44].copy_from_slice(&5u32.to_le_bytes());
    b[0x44..0x48].copy_from_slice(&DEVICE_BOOT.to_le_bytes());
    b[0x4C..0x50].copy_from_slice(&0x48u32.to_le_bytes());
    b[0x8C..].copy_from_slice(&name);
    b
}

/// The store: `{bootmgr}` starting the WinPE loader at once (no menu), the loader booting
/// boot.wim from a RAM disk, and `{ramdiskoptions}` naming boot.sdi and the TFTP sizes.
pub fn bcd_plan() -> Vec<BcdObject> {
    use ElementValue::*;
    use element::*;
    let wim = Device(ramdisk_device(&KitFile::Wim.tftp_path()));
    let mut objects = vec![
        BcdObject {
            guid: BOOTMGR_GUID,
            type_: TYPE_BOOT_MANAGER,
            elements: vec![
                (DESCRIPTION, Text("Windows Boot Manager".into())),
                (DEFAULT_OBJECT, Text(LOADER_GUID.into())),
                (DISPLAY_ORDER, Objects(vec![LOADER_GUID.into()])),
                (TIMEOUT, Integer(0)),
            ],
        },
        BcdObject {
            guid: LOADER_GUID,
            type_: TYPE_OS_LOADER,
            elements: vec![
                (APPLICATION_DEVICE, wim.clone()),
                (APPLICATION_PATH, Text(WINLOAD_PATH.into())),
                (DESCRIPTION, Text("recast WinPE (Secure Boot)".into())),
                (OS_DEVICE, wim),
                (SYSTEM_ROOT, Text(r"\Windows".into())),
                (DETECT_HAL, Boolean(true)),
                (WINPE, Boolean(true)),
            ],
        },
        BcdObject {
            guid: RAMDISK_OPTIONS_GUID,
            type_: TYPE_DEVICE_OPTIONS,
            elements: vec![
                (DESCRIPTION, Text("Ramdisk Options".into())),
                (RAMDISK_SDI_DEVICE, Device(boot_device().to_vec())),
                (RAMDISK_SDI_PATH, Text(KitFile::Sdi.tftp_path())),
                (
                    element::RAMDISK_TFTP_BLOCK_SIZE,
                    Integer(u64::from(self::RAMDISK_TFTP_BLOCK_SIZE)),
                ),
                (
                    element::RAMDISK_TFTP_WINDOW_SIZE,
                    Integer(u64::from(self::RAMDISK_TFTP_WINDOW_SIZE)),
                ),
            ],
        },
    ];
    for o in &mut objects {
        o.elements.sort_by_key(|(id, _)| *id);
    }
    objects
}

/// The store as a registry tree: `Description\KeyName = BCD00000000` and
/// `Objects\{guid}\Description\Type`, `Objects\{guid}\Elements\<id>\Element`.
pub fn bcd_tree(objects: &[BcdObject]) -> Key {
    let mut objects_key = Key::new("Objects");
    for o in objects {
        let mut elements = Key::new("Elements");
        for (id, value) in &o.elements {
            let (type_, data) = value.encode();
            elements =
                elements.subkey(Key::new(&format!("{id:08x}")).value("Element", type_, data));
        }
        objects_key = objects_key.subkey(
            Key::new(o.guid)
                .subkey(Key::new("Description").value(
                    "Type",
                    REG_DWORD,
                    o.type_.to_le_bytes().to_vec(),
                ))
                .subkey(elements),
        );
    }
    Key::new(BCD_ROOT)
        .subkey(Key::new("Description").value("KeyName", REG_SZ, reg_sz("BCD00000000")))
        .subkey(objects_key)
}

/// The BCD file's bytes.
pub fn bcd_bytes() -> Vec<u8> {
    // The plan is fixed and small (three objects, values under 200 bytes): the writer's limits
    // cannot be reached, which the tests check.
    regf::hive(&bcd_tree(&bcd_plan())).expect("the WinPE BCD fits the regf writer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wimboots_version_comes_from_its_banner() {
        let mut bin = vec![0u8; 64];
        bin.extend_from_slice(
            b"\n\nwimboot v2.9.0 -- Windows Imaging Format bootloader -- https://ipxe.org/wimboot\n",
        );
        assert_eq!(wimboot_version(&bin), Some((2, 9, 0)));
        assert!(wimboot_version(&bin) >= Some(MIN_WIMBOOT));
        let old = b"wimboot v2.8.0 -- Windows Imaging Format bootloader".to_vec();
        assert!(wimboot_version(&old) < Some(MIN_WIMBOOT));
        // A later banner counts when an earlier mention is not one.
        let mut two = b"see wimboot v3 docs; ".to_vec();
        two.extend_from_slice(b"wimboot v2.10.1 -- Windows Imaging Format bootloader");
        assert_eq!(wimboot_version(&two), Some((2, 10, 1)));
        assert_eq!(wimboot_version(b"MZ not wimboot"), None);
        assert_eq!(wimboot_version(b""), None);
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn the_sizes_fit_an_ethernet_frame_and_recasts_window() {
        // 1456 data + 4 TFTP + 8 UDP + 20 IPv4 header.
        assert!(usize::from(RAMDISK_TFTP_BLOCK_SIZE) + 4 + 8 + 20 <= 1500);
        // recast's TFTP grants windows up to 64 blocks.
        assert!((2..=64).contains(&RAMDISK_TFTP_WINDOW_SIZE));
    }

    #[test]
    fn guids_convert_to_windows_byte_order() {
        assert_eq!(
            guid_bytes(RAMDISK_OPTIONS_GUID).unwrap(),
            [
                0xe0, 0x34, 0x55, 0xae, 0x24, 0xa9, 0x6c, 0x46, 0xb8, 0x36, 0x75, 0x85, 0x39, 0xa3,
                0xee, 0x3a
            ]
        );
        assert_eq!(&guid_bytes(LOADER_GUID).unwrap()[10..], b"winpe_");
        for bad in [
            "ae5534e0-a924-466c-b836-758539a3ee3a",
            "{ae5534e0-a924-466c-b836-758539a3ee3}",
            "{ae5534e0a924-466c-b836-758539a3ee3a0}",
            "{ge5534e0-a924-466c-b836-758539a3ee3a}",
            "{}",
        ] {
            assert_eq!(guid_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_ramdisk_device_names_its_options_the_boot_device_and_the_wim() {
        let path = KitFile::Wim.tftp_path();
        assert_eq!(path, r"\Boot\boot.wim");
        let d = ramdisk_device(&path);
        assert_eq!(d.len(), 0x8C + 2 * (path.len() + 1));
        assert_eq!(&d[..16], &guid_bytes(RAMDISK_OPTIONS_GUID).unwrap());
        assert_eq!(u32_at(&d, 0x10), 0);
        assert_eq!(u32_at(&d, 0x14), 1);
        assert_eq!(u32_at(&d, 0x18) as usize, d.len() - 0x10);
        assert_eq!(u32_at(&d, 0x20), 3);
        assert!(d[0x24..0x38].iter().all(|&b| b == 0));
        assert_eq!(u32_at(&d, 0x38), 1);
        assert_eq!(u32_at(&d, 0x3C) as usize, d.len() - 0x38);
        assert_eq!(u32_at(&d, 0x40), 5);
        // The inner device is 72 bytes: "boot", nothing else.
        assert_eq!(u32_at(&d, 0x44), 5);
        assert_eq!(u32_at(&d, 0x4C), 0x48);
        assert!(d[0x50..0x8C].iter().all(|&b| b == 0));
        assert_eq!(&d[0x8C..], &reg_sz(&path)[..]);
        // The same layout as the boot device element, from 0x10 on.
        assert_eq!(&d[0x44..0x8C], &boot_device()[0x10..]);
    }

    #[test]
    fn the_plan_boots_winpe_from_the_ram_disk_with_recasts_tftp_sizes() {
        use element::*;
        let plan = bcd_plan();
        let by = |g: &str| plan.iter().find(|o| o.guid == g).unwrap();
        assert_eq!(plan.len(), 3);
        let bootmgr = by(BOOTMGR_GUID);
        assert_eq!(bootmgr.type_, TYPE_BOOT_MANAGER);
        assert_eq!(
            bootmgr.element(DEFAULT_OBJECT),
            Some(&ElementValue::Text(LOADER_GUID.into()))
        );
        assert_eq!(bootmgr.element(TIMEOUT), Some(&ElementValue::Integer(0)));
        let loader = by(LOADER_GUID);
        assert_eq!(loader.type_, TYPE_OS_LOADER);
        let wim = ElementValue::Device(ramdisk_device(r"\Boot\boot.wim"));
        assert_eq!(loader.element(APPLICATION_DEVICE), Some(&wim));
        assert_eq!(loader.element(OS_DEVICE), Some(&wim));
        assert_eq!(
            loader.element(APPLICATION_PATH),
            Some(&ElementValue::Text(r"\Windows\System32\winload.efi".into()))
        );
        assert_eq!(
            loader.element(SYSTEM_ROOT),
            Some(&ElementValue::Text(r"\Windows".into()))
        );
        assert_eq!(loader.element(WINPE), Some(&ElementValue::Boolean(true)));
        assert_eq!(
            loader.element(DETECT_HAL),
            Some(&ElementValue::Boolean(true))
        );
        let ram = by(RAMDISK_OPTIONS_GUID);
        assert_eq!(ram.type_, TYPE_DEVICE_OPTIONS);
        assert_eq!(
            ram.element(RAMDISK_SDI_PATH),
            Some(&ElementValue::Text(r"\Boot\boot.sdi".into()))
        );
        assert_eq!(
            ram.element(RAMDISK_SDI_DEVICE),
            Some(&ElementValue::Device(boot_device().to_vec()))
        );
        assert_eq!(
            ram.element(element::RAMDISK_TFTP_BLOCK_SIZE),
            Some(&ElementValue::Integer(1456))
        );
        assert_eq!(
            ram.element(element::RAMDISK_TFTP_WINDOW_SIZE),
            Some(&ElementValue::Integer(16))
        );
        for o in &plan {
            let ids: Vec<u32> = o.elements.iter().map(|(i, _)| *i).collect();
            assert!(ids.is_sorted(), "{}", o.guid);
            // Each id's format nibble matches its value's encoding.
            for (id, v) in &o.elements {
                let format = (id >> 24) & 0xF;
                let ok = match v {
                    ElementValue::Device(_) => format == 1,
                    ElementValue::Text(_) => format == 2 || format == 3,
                    ElementValue::Objects(_) => format == 4,
                    ElementValue::Integer(_) => format == 5,
                    ElementValue::Boolean(_) => format == 6,
                };
                assert!(ok, "{id:08x} in {}: {v:?}", o.guid);
            }
        }
    }

    #[test]
    fn values_encode_as_bcdedit_stores_them() {
        assert_eq!(
            ElementValue::Integer(1456).encode(),
            (REG_BINARY, vec![0xb0, 0x05, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(ElementValue::Boolean(true).encode(), (REG_BINARY, vec![1]));
        assert_eq!(
            ElementValue::Text("a".into()).encode(),
            (REG_SZ, vec![b'a', 0, 0, 0])
        );
        assert_eq!(
            ElementValue::Objects(vec!["a".into(), "b".into()]).encode(),
            (REG_MULTI_SZ, vec![b'a', 0, 0, 0, b'b', 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn the_layout_and_the_bcd_agree() {
        assert_eq!(KitFile::BootManager.installed_path(), BOOT_FILE);
        assert_eq!(
            bcd_installed_path().replace('/', "\\"),
            BCD_TFTP_PATH.trim_start_matches('\\')
        );
        for f in KitFile::ALL {
            assert_eq!(
                f.tftp_path().trim_start_matches('\\').replace('\\', "/"),
                f.installed_path()
            );
            assert!(!f.sources().is_empty());
            assert!(
                f.sources().iter().any(|s| *s == f.name()),
                "a flat kit names {} as itself",
                f.name()
            );
        }
    }

    #[test]
    fn the_bcd_is_a_hive_with_three_objects_and_the_same_bytes_every_time() {
        let b = bcd_bytes();
        assert_eq!(&b[..4], b"regf");
        assert_eq!(b, bcd_bytes());
        let tree = bcd_tree(&bcd_plan());
        let objects = tree.subkeys.iter().find(|k| k.name == "Objects").unwrap();
        let mut guids: Vec<&str> = objects.subkeys.iter().map(|k| k.name.as_str()).collect();
        guids.sort();
        let mut want = vec![BOOTMGR_GUID, LOADER_GUID, RAMDISK_OPTIONS_GUID];
        want.sort();
        assert_eq!(guids, want);
    }
}
