//! The vocabulary of BCD stores (Boot Configuration Data) as bcdedit writes them: well-known
//! object GUIDs, object types, element ids, and GUIDs in Windows' byte order. One place for the
//! two BCDs recast writes: the disk's, by recast-imager (`imager/src/bcd.rs`, bcdboot's job), and
//! the WinPE ramdisk boot's (`winpe_boot`). Pure.

/// Well-known objects (lower case, braces: the form of their key names).
pub const BOOTMGR: &str = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
pub const MEMDIAG: &str = "{b2721d73-1db4-4c62-bf78-c548a880142d}";
pub const GLOBALSETTINGS: &str = "{7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}";
pub const DBGSETTINGS: &str = "{4636856e-540f-4170-a130-a84776f4c654}";
pub const EMSSETTINGS: &str = "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}";
pub const BADMEMORY: &str = "{5189b25c-5558-4bf2-bca4-289b11bd29e2}";
pub const BOOTLOADERSETTINGS: &str = "{6efb52bf-1766-41db-a6b3-0ee5eff72bd7}";
pub const HYPERVISORSETTINGS: &str = "{7ff607e0-4395-11db-b0de-0800200c9a66}";
pub const RESUMELOADERSETTINGS: &str = "{1afa9c49-16ab-4a5c-901b-212802da9460}";
/// `{ramdiskoptions}`: the ramdisk's SDI file and TFTP options.
pub const RAMDISKOPTIONS: &str = "{ae5534e0-a924-466c-b836-758539a3ee3a}";

/// Object types (`Description\Type`).
pub const TYPE_BOOT_MANAGER: u32 = 0x1010_0002;
pub const TYPE_OS_LOADER: u32 = 0x1020_0003;
pub const TYPE_RESUME: u32 = 0x1020_0004;
pub const TYPE_MEMORY_TESTER: u32 = 0x1020_0005;
pub const TYPE_INHERIT_ANY: u32 = 0x2010_0000;
pub const TYPE_INHERIT_OS_LOADER: u32 = 0x2020_0003;
pub const TYPE_INHERIT_RESUME: u32 = 0x2020_0004;
/// Device options (`{ramdiskoptions}`).
pub const TYPE_DEVICE_OPTIONS: u32 = 0x3000_0000;

/// Element ids: class (1 library, 2 application, 3 device) | format (1 device, 2 string, 3 object,
/// 4 object list, 5 integer, 6 boolean, 7 integer list) | subtype. The same id means different
/// things in different object types (`21000001` is the OS device of a loader and the hiberfile
/// device of a resume object).
pub mod element {
    pub const APPLICATION_DEVICE: u32 = 0x1100_0001;
    pub const APPLICATION_PATH: u32 = 0x1200_0002;
    pub const DESCRIPTION: u32 = 0x1200_0004;
    pub const PREFERRED_LOCALE: u32 = 0x1200_0005;
    pub const INHERIT: u32 = 0x1400_0006;
    pub const BAD_MEMORY_ACCESS: u32 = 0x1600_000b;
    pub const EMS_ENABLED: u32 = 0x1600_0020;
    pub const ISOLATED_CONTEXT: u32 = 0x1600_0060;
    pub const DEBUGGER_TYPE: u32 = 0x1500_0011;
    pub const ALLOWED_IN_MEMORY_SETTINGS: u32 = 0x1700_0077;
    /// Loader: the partition Windows is on. Resume: the partition of the hiberfile.
    pub const OS_DEVICE: u32 = 0x2100_0001;
    /// Loader: `\Windows`. Resume: the hiberfile's path.
    pub const SYSTEM_ROOT: u32 = 0x2200_0002;
    /// Boot manager: the default loader. Loader: its resume object.
    pub const DEFAULT_OBJECT: u32 = 0x2300_0003;
    pub const RESUME_OBJECT: u32 = 0x2300_0006;
    pub const DISPLAY_ORDER: u32 = 0x2400_0001;
    pub const TOOLS_DISPLAY_ORDER: u32 = 0x2400_0010;
    pub const TIMEOUT: u32 = 0x2500_0004;
    pub const RESUME_CUSTOM_SETTINGS: u32 = 0x2500_0008;
    pub const NX_POLICY: u32 = 0x2500_0020;
    pub const BOOT_MENU_POLICY: u32 = 0x2500_00c2;
    pub const HYPERVISOR_DEBUG_TYPE: u32 = 0x2500_00f3;
    pub const HYPERVISOR_DEBUG_PORT: u32 = 0x2500_00f4;
    pub const HYPERVISOR_BAUD_RATE: u32 = 0x2500_00f5;
    pub const RESUME_DEBUG_OPTIONS: u32 = 0x2600_0006;
    /// `detecthal`
    pub const DETECT_HAL: u32 = 0x2600_0010;
    /// `winpe`
    pub const WINPE: u32 = 0x2600_0022;
    /// `ramdisksdidevice`
    pub const RAMDISK_SDI_DEVICE: u32 = 0x3100_0003;
    /// `ramdisksdipath`
    pub const RAMDISK_SDI_PATH: u32 = 0x3200_0004;
    /// `ramdisktftpblocksize` (an integer: 0x35…, not the boolean 0x36… one page gives)
    pub const RAMDISK_TFTP_BLOCK_SIZE: u32 = 0x3500_0007;
    /// `ramdisktftpwindowsize`
    pub const RAMDISK_TFTP_WINDOW_SIZE: u32 = 0x3500_0008;
}

/// A GUID in Windows' binary form (the GPT on-disk form): the first three fields little-endian,
/// the last two as written. Braces optional, any case; None unless 8-4-4-4-12 hex digits.
pub fn guid_bytes(guid: &str) -> Option<[u8; 16]> {
    let bare = guid
        .strip_prefix('{')
        .and_then(|g| g.strip_suffix('}'))
        .unwrap_or(guid);
    let fields: Vec<&str> = bare.split('-').collect();
    let lens: Vec<usize> = fields.iter().map(|f| f.len()).collect();
    if lens != [8, 4, 4, 4, 12] || !bare.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return None;
    }
    let hex: String = fields.concat();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}
