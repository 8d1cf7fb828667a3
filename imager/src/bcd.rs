//! The BCD store (Boot Configuration Data), doing bcdboot's job from Linux.
//!
//! A BCD store is a registry hive: `Description` (KeyName, System) and `Objects\{guid}`, each
//! object with `Description\Type` and `Elements\<8 hex digits>\Element`. hivex can edit a hive
//! but not create one, so the shell copies the image's own
//! `\Windows\System32\config\BCD-Template`, lists what the copy holds ([`listing_script`],
//! [`parse_listing`]) and edits it with one `hivexsh -w -f SCRIPT BCD` run
//! ([`render_hivexsh`]). What to write is decided here, without I/O: [`plan`] is what
//! bcdboot writes for one Windows installation ({bootmgr}, a Windows Boot Loader, its resume
//! object, {memdiag} and the inheritable settings objects), element by element, with the device
//! elements in [`device_element`]'s byte layout.
//!
//! What hivexsh 1.3.23 (Debian 12) does, found by running it:
//! - With `-f` (or any non-terminal stdin) the first command that fails ends hivexsh with exit
//!   status 1; nothing after it runs, so a failure before the final `commit` leaves the file as
//!   it was. Exit status 0 means every command, `commit` included, succeeded.
//! - `add NAME` fails ("add: File exists") when the key exists, and `cd` fails when a path
//!   element is missing: neither can be probed inside one script, hence the listing rounds.
//! - `cd \Objects\{guid}\Elements` works in one command (a leading backslash starts at the
//!   root; elements match case-insensitively). `cd \` alone is the root; the readline quirk in
//!   the man page does not apply to `-f` scripts, which are read with fgets.
//! - `cd` without an argument prints the current path (`\Objects\{guid}`): the listing uses it
//!   to label each `ls`/`lsval` section.
//! - Script lines are read into an 8 KiB buffer; a longer line would be split. Values are
//!   rendered as `hex:<type>:aa,bb,...` (3 characters a byte), so every value stays far below
//!   that ([`MAX_VALUE_BYTES`]).
//! - `setval N` replaces all of a key's values. Element keys hold exactly one value, and the root
//!   `Description` is rewritten with the values the template had plus ours.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::layout::BootMode;

// The BCD vocabulary (object GUIDs, types, element ids) is recast-core's, shared with the
// WinPE ramdisk BCD; the registry value types are the regf writer's.
pub use recast_core::bcd::*;
pub use recast_core::regf::{REG_BINARY, REG_DWORD, REG_MULTI_SZ, REG_SZ};

/// The longest value [`render_hivexsh`] writes: `hex:` lines take 3 characters a byte and
/// hivexsh reads 8 KiB lines.
pub const MAX_VALUE_BYTES: usize = 2500;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BcdError {
    #[error("{0:?} is not a GUID (8-4-4-4-12 hex digits, braces optional)")]
    Guid(String),
    #[error("the Windows Boot Loader and its resume object need two distinct fresh GUIDs, not {0}")]
    ObjectGuid(String),
    #[error("hivexsh printed something recast cannot read: {0:?}")]
    Listing(String),
    #[error(
        "the template's value {0:?} is {1} bytes, too long for one hivexsh script line; recast keeps values up to {MAX_VALUE_BYTES} bytes"
    )]
    TooLong(String, usize),
}

/// A partition as a BCD device element names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// GPT: the partition's unique GUID and the disk GUID (braces optional, any case).
    Gpt { partition: String, disk: String },
    /// MBR: where the partition starts, in bytes (not sectors), and the disk signature (MBR
    /// offset 0x1B8).
    Mbr { offset_bytes: u64, signature: u32 },
}

/// A GUID in Windows' binary form (the GPT on-disk form), or why the text is not one.
pub fn guid_bytes(guid: &str) -> Result<[u8; 16], BcdError> {
    recast_core::bcd::guid_bytes(guid).ok_or_else(|| BcdError::Guid(guid.into()))
}

/// The GUID as BCD writes it in key names and object references: `{lower-case}`.
pub fn guid_key(guid: &str) -> Result<String, BcdError> {
    guid_bytes(guid)?;
    let bare = guid.trim_start_matches('{').trim_end_matches('}');
    Ok(format!("{{{}}}", bare.to_ascii_lowercase()))
}

/// The 88-byte (0x58) partition device element (`11000001`, `21000001`):
///
/// ```text
/// 0x00 16  "additional options" object: none (zero)
/// 0x10 u32 device type 6: partition
/// 0x14 u32 flags 0
/// 0x18 u32 0x48: length of what follows from 0x10
/// 0x1C u32 0
/// 0x20 16  GPT: partition GUID      MBR: start offset in bytes (u64) + 8 zero bytes
/// 0x30 u32 0
/// 0x34 u32 partition style as stored: 0 GPT, 1 MBR (the WMI API's enum is the other way round)
/// 0x38 16  GPT: disk GUID           MBR: disk signature (u32) + 12 zero bytes
/// 0x48 16  zero
/// ```
pub fn device_element(dev: &Device) -> Result<[u8; 88], BcdError> {
    let mut b = [0u8; 88];
    b[0x10..0x14].copy_from_slice(&6u32.to_le_bytes());
    b[0x18..0x1C].copy_from_slice(&0x48u32.to_le_bytes());
    match dev {
        Device::Gpt { partition, disk } => {
            b[0x20..0x30].copy_from_slice(&guid_bytes(partition)?);
            b[0x38..0x48].copy_from_slice(&guid_bytes(disk)?);
        }
        Device::Mbr {
            offset_bytes,
            signature,
        } => {
            b[0x20..0x28].copy_from_slice(&offset_bytes.to_le_bytes());
            b[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
            b[0x38..0x3C].copy_from_slice(&signature.to_le_bytes());
        }
    }
    Ok(b)
}

/// A registry value: type and the bytes as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub reg_type: u32,
    pub data: Vec<u8>,
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

impl Value {
    /// String element: REG_SZ, UTF-16LE with its NUL.
    pub fn string(s: &str) -> Value {
        Value {
            reg_type: REG_SZ,
            data: utf16z(s),
        }
    }
    /// Object element: the `{guid}` as a string.
    pub fn object(guid: &str) -> Value {
        Value::string(guid)
    }
    /// Object list element: REG_MULTI_SZ, each `{guid}` NUL-terminated, then one more NUL.
    pub fn objects(guids: &[&str]) -> Value {
        let mut data: Vec<u8> = guids.iter().flat_map(|g| utf16z(g)).collect();
        data.extend_from_slice(&[0, 0]);
        Value {
            reg_type: REG_MULTI_SZ,
            data,
        }
    }
    /// Integer element: REG_BINARY, 8 bytes little-endian.
    pub fn integer(n: u64) -> Value {
        Value::integers(&[n])
    }
    /// Integer list element: REG_BINARY, 8 bytes little-endian each.
    pub fn integers(ns: &[u64]) -> Value {
        Value {
            reg_type: REG_BINARY,
            data: ns.iter().flat_map(|n| n.to_le_bytes()).collect(),
        }
    }
    /// Boolean element: REG_BINARY, one byte.
    pub fn boolean(b: bool) -> Value {
        Value {
            reg_type: REG_BINARY,
            data: vec![u8::from(b)],
        }
    }
    /// Device element: REG_BINARY, [`device_element`]'s bytes.
    pub fn device(bytes: [u8; 88]) -> Value {
        Value {
            reg_type: REG_BINARY,
            data: bytes.to_vec(),
        }
    }
    /// REG_DWORD (object types, the root Description's flags).
    pub fn dword(n: u32) -> Value {
        Value {
            reg_type: REG_DWORD,
            data: n.to_le_bytes().to_vec(),
        }
    }
    /// hivexsh's generic value syntax: `hex:<type>:aa,bb,...`.
    fn hivexsh(&self) -> String {
        let bytes: Vec<String> = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("hex:{}:{}", self.reg_type, bytes.join(","))
    }
}

/// A named value (the root `Description` key's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedValue {
    /// Empty for the key's default value.
    pub name: String,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub id: u32,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// `{lower-case guid}`.
    pub guid: String,
    pub type_: u32,
    pub elements: Vec<Element>,
    /// Elements this object must not have in this boot mode (a template may carry them): the
    /// render deletes them when the template has them.
    pub absent: Vec<u32>,
}

impl Object {
    pub fn element(&self, id: u32) -> Option<&Value> {
        self.elements.iter().find(|e| e.id == id).map(|e| &e.value)
    }
}

/// What the store must hold after the edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// The root `Description` key's values (other values the template has are kept).
    pub description: Vec<NamedValue>,
    pub objects: Vec<Object>,
}

impl Store {
    /// The object with this GUID, in any spelling.
    pub fn object(&self, guid: &str) -> Option<&Object> {
        let key = guid_key(guid).ok()?;
        self.objects.iter().find(|o| o.guid == key)
    }
}

/// What bcdboot writes for one Windows installation. `system`: the EFI system partition (UEFI)
/// or the active partition (BIOS), which holds bootmgr and the store; `windows`: the Windows
/// partition; `locale` like `en-US`; `description`: the boot menu's name for this Windows (the
/// image's display name); `loader_guid`, `resume_guid`: fresh random GUIDs for the Windows Boot
/// Loader and its resume object. Pure.
///
/// No stale Windows Boot Loader is removed (bcdboot removes loaders naming the same partition
/// when it edits a store in place). recast always starts from a copy of the image's
/// BCD-Template, whose objects cannot name partitions that were created minutes earlier with
/// fresh GUIDs or a fresh disk signature, so there is nothing to find.
pub fn plan(
    mode: BootMode,
    system: &Device,
    windows: &Device,
    locale: &str,
    description: &str,
    loader_guid: &str,
    resume_guid: &str,
) -> Result<Store, BcdError> {
    use element::*;
    let loader = guid_key(loader_guid)?;
    let resume = guid_key(resume_guid)?;
    let well_known = [
        BOOTMGR,
        MEMDIAG,
        GLOBALSETTINGS,
        DBGSETTINGS,
        EMSSETTINGS,
        BADMEMORY,
        BOOTLOADERSETTINGS,
        HYPERVISORSETTINGS,
        RESUMELOADERSETTINGS,
    ];
    for g in [&loader, &resume] {
        if well_known.contains(&g.as_str()) {
            return Err(BcdError::ObjectGuid(format!("{g} (a well-known object)")));
        }
    }
    if loader == resume {
        return Err(BcdError::ObjectGuid(format!("{loader} twice")));
    }
    let sys = Value::device(device_element(system)?);
    let win = Value::device(device_element(windows)?);
    let uefi = mode == BootMode::Uefi;
    let ext = if uefi { "efi" } else { "exe" };
    // Allowed in-memory settings: the one entry bcdboot writes, 0x15000075.
    let in_memory = Value::integers(&[0x1500_0075]);

    let object = |guid: &str, type_: u32, elements: Vec<(u32, Value)>, absent: Vec<u32>| {
        let mut elements: Vec<Element> = elements
            .into_iter()
            .map(|(id, value)| Element { id, value })
            .collect();
        elements.sort_by_key(|e| e.id);
        Object {
            guid: guid.into(),
            type_,
            elements,
            absent,
        }
    };

    let mut bootmgr = vec![
        (APPLICATION_DEVICE, sys.clone()),
        (DESCRIPTION, Value::string("Windows Boot Manager")),
        (PREFERRED_LOCALE, Value::string(locale)),
        (INHERIT, Value::objects(&[GLOBALSETTINGS])),
        (DEFAULT_OBJECT, Value::object(&loader)),
        (RESUME_OBJECT, Value::object(&resume)),
        (DISPLAY_ORDER, Value::objects(&[&loader])),
        (TOOLS_DISPLAY_ORDER, Value::objects(&[MEMDIAG])),
        (TIMEOUT, Value::integer(30)),
    ];
    // BIOS: the volume boot record loads \bootmgr itself; the element is only for firmware
    // that starts bootmgr as an EFI application.
    if uefi {
        bootmgr.push((
            APPLICATION_PATH,
            Value::string(r"\EFI\Microsoft\Boot\bootmgfw.efi"),
        ));
    }
    let bootmgr_absent = if uefi { vec![] } else { vec![APPLICATION_PATH] };

    let mut os_loader = vec![
        (APPLICATION_DEVICE, win.clone()),
        (
            APPLICATION_PATH,
            Value::string(&format!(r"\Windows\system32\winload.{ext}")),
        ),
        (DESCRIPTION, Value::string(description)),
        (PREFERRED_LOCALE, Value::string(locale)),
        (INHERIT, Value::objects(&[BOOTLOADERSETTINGS])),
        (ALLOWED_IN_MEMORY_SETTINGS, in_memory.clone()),
        (OS_DEVICE, win.clone()),
        (SYSTEM_ROOT, Value::string(r"\Windows")),
        (DEFAULT_OBJECT, Value::object(&resume)),
        // NX OptIn; the standard (graphical) boot menu.
        (NX_POLICY, Value::integer(0)),
        (BOOT_MENU_POLICY, Value::integer(1)),
    ];
    let mut resume_app = vec![
        (APPLICATION_DEVICE, win.clone()),
        (
            APPLICATION_PATH,
            Value::string(&format!(r"\Windows\system32\winresume.{ext}")),
        ),
        (DESCRIPTION, Value::string("Windows Resume Application")),
        (PREFERRED_LOCALE, Value::string(locale)),
        (INHERIT, Value::objects(&[RESUMELOADERSETTINGS])),
        (ALLOWED_IN_MEMORY_SETTINGS, in_memory),
        (OS_DEVICE, win),
        (SYSTEM_ROOT, Value::string(r"\hiberfil.sys")),
        (RESUME_CUSTOM_SETTINGS, Value::integer(1)),
    ];
    if uefi {
        os_loader.push((ISOLATED_CONTEXT, Value::boolean(true)));
        resume_app.push((ISOLATED_CONTEXT, Value::boolean(true)));
    } else {
        resume_app.push((RESUME_DEBUG_OPTIONS, Value::boolean(false)));
    }
    let (loader_absent, resume_absent) = if uefi {
        (vec![], vec![RESUME_DEBUG_OPTIONS])
    } else {
        (vec![ISOLATED_CONTEXT], vec![ISOLATED_CONTEXT])
    };
    let memtest = if uefi {
        r"\EFI\Microsoft\Boot\memtest.efi"
    } else {
        r"\Boot\memtest.exe"
    };

    Ok(Store {
        description: vec![
            NamedValue {
                name: "KeyName".into(),
                value: Value::string("BCD00000000"),
            },
            NamedValue {
                name: "System".into(),
                value: Value::dword(1),
            },
        ],
        objects: vec![
            object(BOOTMGR, TYPE_BOOT_MANAGER, bootmgr, bootmgr_absent),
            object(&loader, TYPE_OS_LOADER, os_loader, loader_absent),
            object(&resume, TYPE_RESUME, resume_app, resume_absent),
            object(
                MEMDIAG,
                TYPE_MEMORY_TESTER,
                vec![
                    (APPLICATION_DEVICE, sys),
                    (APPLICATION_PATH, Value::string(memtest)),
                    (DESCRIPTION, Value::string("Windows Memory Diagnostic")),
                    (PREFERRED_LOCALE, Value::string(locale)),
                    (INHERIT, Value::objects(&[GLOBALSETTINGS])),
                    (BAD_MEMORY_ACCESS, Value::boolean(true)),
                ],
                vec![],
            ),
            object(
                GLOBALSETTINGS,
                TYPE_INHERIT_ANY,
                vec![(
                    INHERIT,
                    Value::objects(&[DBGSETTINGS, EMSSETTINGS, BADMEMORY]),
                )],
                vec![],
            ),
            object(
                DBGSETTINGS,
                TYPE_INHERIT_ANY,
                // Debugger type 4: local.
                vec![(DEBUGGER_TYPE, Value::integer(4))],
                vec![],
            ),
            object(
                EMSSETTINGS,
                TYPE_INHERIT_ANY,
                vec![(EMS_ENABLED, Value::boolean(false))],
                vec![],
            ),
            object(BADMEMORY, TYPE_INHERIT_ANY, vec![], vec![]),
            object(
                BOOTLOADERSETTINGS,
                TYPE_INHERIT_OS_LOADER,
                vec![(
                    INHERIT,
                    Value::objects(&[GLOBALSETTINGS, HYPERVISORSETTINGS]),
                )],
                vec![],
            ),
            object(
                HYPERVISORSETTINGS,
                TYPE_INHERIT_OS_LOADER,
                // Hypervisor debugging, if someone turns it on: serial, COM1, 115200 baud.
                vec![
                    (HYPERVISOR_DEBUG_TYPE, Value::integer(0)),
                    (HYPERVISOR_DEBUG_PORT, Value::integer(1)),
                    (HYPERVISOR_BAUD_RATE, Value::integer(115_200)),
                ],
                vec![],
            ),
            object(
                RESUMELOADERSETTINGS,
                TYPE_INHERIT_RESUME,
                vec![(INHERIT, Value::objects(&[GLOBALSETTINGS]))],
                vec![],
            ),
        ],
    })
}

/// What the copied template holds, learnt by running [`listing_script`] rounds. Paths are
/// below the root, lower case, separated by `\` (`objects\{guid}\elements`); the root is "".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    keys: BTreeSet<String>,
    listed: BTreeSet<String>,
    description: Option<Vec<NamedValue>>,
}

impl Existing {
    /// Whether the key at `path` (`Objects\{guid}`, any case) is known to exist.
    pub fn has(&self, path: &str) -> bool {
        path.is_empty() || self.keys.contains(&path.to_ascii_lowercase())
    }

    /// The object keys under `Objects` (lower case).
    pub fn objects(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter_map(|k| k.strip_prefix(r"objects\"))
            .filter(|rest| !rest.contains('\\'))
            .collect()
    }

    /// The subkeys of `path` known to exist (lower case).
    pub fn subkeys(&self, path: &str) -> Vec<&str> {
        let prefix = format!(r"{}\", path.to_ascii_lowercase());
        self.keys
            .iter()
            .filter_map(|k| {
                if path.is_empty() {
                    Some(k.as_str())
                } else {
                    k.strip_prefix(&prefix)
                }
            })
            .filter(|rest| !rest.contains('\\'))
            .collect()
    }

    /// The root `Description` key's values, once read.
    pub fn description(&self) -> Option<&[NamedValue]> {
        self.description.as_deref()
    }
}

/// Keys whose subkeys the listing reads: the root, `Objects`, each object and its `Elements`.
/// Element keys have no subkeys worth reading.
fn to_list(path: &str) -> bool {
    let parts: Vec<&str> = if path.is_empty() {
        vec![]
    } else {
        path.split('\\').collect()
    };
    matches!(
        parts.as_slice(),
        [] | ["objects"] | ["objects", _] | ["objects", _, "elements"]
    )
}

/// The key whose values the listing reads (the only key recast rewrites whole that may hold
/// values recast does not write).
const DESCRIPTION_KEY: &str = "description";

/// A name hivexsh's `cd` can reach: it trims arguments and splits at backslashes.
fn reachable(name: &str) -> bool {
    !name.is_empty() && name.trim() == name && !name.chars().any(|c| c.is_control())
}

/// The next listing round for `hivexsh -f SCRIPT BCD` (read-only, no `-w`), or None when
/// `existing` is complete. A script cannot ask whether a key exists (a failed `cd` ends
/// hivexsh), so each round lists only keys the previous rounds found: run rounds until None,
/// feeding all their output so far to [`parse_listing`]. A BCD-Template needs four rounds:
/// the root; `Description` and `Objects`; each object; each object's `Elements`.
pub fn listing_script(existing: &Existing) -> Option<String> {
    let mut out = String::new();
    // `cd` without an argument prints the path: it heads each section of the output.
    if !existing.listed.contains("") {
        out.push_str("cd \\\ncd\nls\n");
        return Some(out);
    }
    for key in &existing.keys {
        let reachable_path = key.split('\\').all(reachable);
        if to_list(key) && !existing.listed.contains(key) && reachable_path {
            let _ = write!(out, "cd \\{key}\ncd\nls\n");
        }
    }
    if existing.has(DESCRIPTION_KEY) && existing.description.is_none() {
        let _ = write!(out, "cd \\{DESCRIPTION_KEY}\ncd\nlsval\n");
    }
    (!out.is_empty()).then_some(out)
}

/// Reads the output of every listing round so far (concatenated, in any order).
pub fn parse_listing(out: &str) -> Result<Existing, BcdError> {
    let mut existing = Existing::default();
    let mut section: Option<String> = None;
    for line in out.lines() {
        // Key names cannot contain backslashes, so only `cd`'s path lines start with one.
        if let Some(path) = line.strip_prefix('\\') {
            let path = path.to_ascii_lowercase();
            // `cd` reached it, so it and every key above it exist.
            let mut above = String::new();
            for part in path.split('\\').filter(|p| !p.is_empty()) {
                if !above.is_empty() {
                    above.push('\\');
                }
                above.push_str(part);
                existing.keys.insert(above.clone());
            }
            if path == DESCRIPTION_KEY {
                existing.description = Some(Vec::new());
            } else {
                existing.listed.insert(path.clone());
            }
            section = Some(path);
            continue;
        }
        let Some(path) = &section else {
            return Err(BcdError::Listing(line.into()));
        };
        if path == DESCRIPTION_KEY {
            let value = parse_lsval(line)?;
            if value.value.data.len() > MAX_VALUE_BYTES {
                return Err(BcdError::TooLong(value.name, value.value.data.len()));
            }
            if let Some(values) = &mut existing.description {
                values.push(value);
            }
        } else if path.is_empty() {
            existing.keys.insert(line.to_ascii_lowercase());
        } else {
            existing
                .keys
                .insert(format!(r"{path}\{}", line.to_ascii_lowercase()));
        }
    }
    Ok(existing)
}

/// One line of hivexsh's `lsval` (regedit-like): `"Name"="text"`, `"Name"=str(2):"text"`,
/// `"Name"=dword:0000001`, `"Name"=hex(3):aa,bb`; `"@"` is the default value.
fn parse_lsval(line: &str) -> Result<NamedValue, BcdError> {
    let bad = || BcdError::Listing(line.into());
    // A quoted string with `\"` and `\\` escapes; returns it and what follows the quotes.
    fn quoted(s: &str) -> Option<(String, &str)> {
        let mut chars = s.strip_prefix('"')?.char_indices();
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                '"' => return Some((out, &s[i + 2..])),
                c => out.push(c),
            }
        }
        None
    }
    let (name, rest) = quoted(line).ok_or_else(bad)?;
    let rest = rest.strip_prefix('=').ok_or_else(bad)?;
    let name = if name == "@" { String::new() } else { name };
    let value = if rest.starts_with('"') {
        let (text, tail) = quoted(rest).ok_or_else(bad)?;
        if !tail.is_empty() {
            return Err(bad());
        }
        Value::string(&text)
    } else if let Some(s) = rest.strip_prefix("str(") {
        let (t, s) = s.split_once("):").ok_or_else(bad)?;
        let (text, tail) = quoted(s).ok_or_else(bad)?;
        if !tail.is_empty() {
            return Err(bad());
        }
        Value {
            reg_type: t.parse().map_err(|_| bad())?,
            data: utf16z(&text),
        }
    } else if let Some(hex) = rest.strip_prefix("dword:") {
        Value::dword(u32::from_str_radix(hex, 16).map_err(|_| bad())?)
    } else if let Some(s) = rest.strip_prefix("hex(") {
        let (t, hex) = s.split_once("):").ok_or_else(bad)?;
        let data = if hex.is_empty() {
            Vec::new()
        } else {
            hex.split(',')
                .map(|b| u8::from_str_radix(b, 16).map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        };
        Value {
            reg_type: t.parse().map_err(|_| bad())?,
            data,
        }
    } else {
        return Err(bad());
    };
    Ok(NamedValue { name, value })
}

/// The edit as a script for `hivexsh -w -f SCRIPT BCD`: adds the keys `existing` lacks, sets
/// every value (as `hex:` so that no text passes through hivexsh's ASCII-only encoder), deletes
/// the elements the mode rules out, and commits. Objects in the template that are not ours stay
/// as they are. If `existing` is incomplete, an `add` of a key that does exist fails, and with
/// it the whole edit, before `commit`: the file is never half-written.
pub fn render_hivexsh(store: &Store, existing: &Existing) -> String {
    let mut s = Script {
        out: String::new(),
        cwd: None,
        existing,
    };
    s.out.push_str(
        "# The BCD store, written by recast-imager (imager/src/bcd.rs).\n\
         # hivexsh stops at the first failing command, so nothing is written unless every\n\
         # command before `commit` succeeded.\n",
    );
    s.add("", "Description");
    let mut values = store.description.clone();
    for v in existing.description().unwrap_or_default() {
        if !values.iter().any(|o| o.name.eq_ignore_ascii_case(&v.name)) {
            values.push(v.clone());
        }
    }
    s.setval("Description", &values);
    s.add("", "Objects");
    for o in &store.objects {
        let _ = writeln!(s.out, "# {} ({})", o.guid, object_kind(o));
        let base = format!(r"Objects\{}", o.guid);
        s.add("Objects", &o.guid);
        s.add(&base, "Description");
        s.setval(
            &format!(r"{base}\Description"),
            &[NamedValue {
                name: "Type".into(),
                value: Value::dword(o.type_),
            }],
        );
        let elements = format!(r"{base}\Elements");
        s.add(&base, "Elements");
        for e in &o.elements {
            let id = format!("{:08x}", e.id);
            s.add(&elements, &id);
            s.setval(
                &format!(r"{elements}\{id}"),
                &[NamedValue {
                    name: "Element".into(),
                    value: e.value.clone(),
                }],
            );
        }
        for id in &o.absent {
            let path = format!(r"{elements}\{id:08x}");
            if existing.has(&path) {
                s.cd(&path);
                s.out.push_str("del\n");
                s.cwd = Some(elements.clone());
            }
        }
    }
    s.out.push_str("commit\n");
    s.out
}

fn object_kind(o: &Object) -> &'static str {
    match o.guid.as_str() {
        BOOTMGR => "{bootmgr}",
        MEMDIAG => "{memdiag}",
        GLOBALSETTINGS => "{globalsettings}",
        DBGSETTINGS => "{dbgsettings}",
        EMSSETTINGS => "{emssettings}",
        BADMEMORY => "{badmemory}",
        BOOTLOADERSETTINGS => "{bootloadersettings}",
        HYPERVISORSETTINGS => "{hypervisorsettings}",
        RESUMELOADERSETTINGS => "{resumeloadersettings}",
        _ => match o.type_ {
            TYPE_OS_LOADER => "Windows Boot Loader",
            TYPE_RESUME => "Windows Resume Application",
            _ => "object",
        },
    }
}

/// The script being written, and the key hivexsh will be at.
struct Script<'a> {
    out: String,
    cwd: Option<String>,
    existing: &'a Existing,
}

impl Script<'_> {
    /// Absolute paths throughout, so each step reads on its own; `cd` only when it moves.
    fn cd(&mut self, path: &str) {
        if self.cwd.as_deref() != Some(path) {
            let _ = writeln!(self.out, "cd \\{path}");
            self.cwd = Some(path.to_string());
        }
    }

    fn add(&mut self, parent: &str, name: &str) {
        let path = if parent.is_empty() {
            name.to_string()
        } else {
            format!(r"{parent}\{name}")
        };
        if !self.existing.has(&path) {
            self.cd(parent);
            let _ = writeln!(self.out, "add {name}");
        }
    }

    fn setval(&mut self, path: &str, values: &[NamedValue]) {
        self.cd(path);
        let _ = writeln!(self.out, "setval {}", values.len());
        for v in values {
            let name = if v.name.is_empty() { "@" } else { &v.name };
            let _ = writeln!(self.out, "{name}\n{}", v.value.hivexsh());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::element::*;
    use super::*;

    const DISK: &str = "6F1D2A4E-93B0-4C52-9D3E-0A1B2C3D4E5F";
    const ESP: &str = "{6f1d2a4e-93b0-4c52-9d3e-000000000001}";
    const WIN: &str = "6f1d2a4e-93b0-4c52-9d3e-000000000003";
    const LOADER: &str = "{AAAAAAAA-0000-4000-8000-000000000001}";
    const RESUME: &str = "aaaaaaaa-0000-4000-8000-000000000002";

    fn gpt(partition: &str) -> Device {
        Device::Gpt {
            partition: partition.into(),
            disk: DISK.into(),
        }
    }

    fn mbr(lba: u64) -> Device {
        Device::Mbr {
            offset_bytes: lba * 512,
            signature: 0x1234_abcd,
        }
    }

    fn uefi() -> Store {
        plan(
            BootMode::Uefi,
            &gpt(ESP),
            &gpt(WIN),
            "en-US",
            "Windows 11 Pro",
            LOADER,
            RESUME,
        )
        .unwrap()
    }

    fn bios() -> Store {
        plan(
            BootMode::Bios,
            &mbr(2048),
            &mbr(206848),
            "de-DE",
            "Windows 11 Pro",
            LOADER,
            RESUME,
        )
        .unwrap()
    }

    #[test]
    fn guids_take_windows_mixed_endian_form() {
        let want = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        for g in [
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "{C12A7328-F81F-11D2-BA4B-00A0C93EC93B}",
        ] {
            assert_eq!(guid_bytes(g).unwrap(), want, "{g}");
        }
        assert_eq!(
            guid_bytes("aaaaaaaa-0000-0000-0000-000000000003").unwrap(),
            [0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]
        );
        for bad in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93g",
            "{c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "c12a732-8f81f-11d2-ba4b-00a0c93ec93b",
            "+12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        ] {
            assert_eq!(guid_bytes(bad), Err(BcdError::Guid(bad.into())), "{bad}");
        }
        assert_eq!(
            guid_key("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap(),
            "{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}"
        );
    }

    #[test]
    fn gpt_device_names_partition_and_disk() {
        let b = device_element(&Device::Gpt {
            partition: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".into(),
            disk: "{AAAAAAAA-0000-0000-0000-000000000003}".into(),
        })
        .unwrap();
        let mut want = [0u8; 88];
        want[0x10] = 6;
        want[0x18] = 0x48;
        want[0x20..0x30].copy_from_slice(&[
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ]);
        // Partition style 0 = GPT as stored.
        want[0x38..0x48]
            .copy_from_slice(&[0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(b, want);
        assert!(
            device_element(&Device::Gpt {
                partition: "x".into(),
                disk: DISK.into()
            })
            .is_err()
        );
    }

    #[test]
    fn mbr_device_names_offset_in_bytes_and_signature() {
        let b = device_element(&mbr(2048)).unwrap();
        let mut want = [0u8; 88];
        want[0x10] = 6;
        want[0x18] = 0x48;
        // LBA 2048 = 1 MiB.
        want[0x20..0x28].copy_from_slice(&[0x00, 0x00, 0x10, 0x00, 0, 0, 0, 0]);
        want[0x34] = 1;
        want[0x38..0x3C].copy_from_slice(&[0xcd, 0xab, 0x34, 0x12]);
        assert_eq!(b, want);
        // An offset beyond 4 GiB uses the upper half of the u64.
        let far = device_element(&Device::Mbr {
            offset_bytes: 0x0000_0001_5f00_0000,
            signature: 0,
        })
        .unwrap();
        assert_eq!(far[0x20..0x28], [0, 0, 0, 0x5f, 1, 0, 0, 0]);
    }

    #[test]
    fn values_encode_as_bcd_stores_them() {
        assert_eq!(Value::string("A").data, [0x41, 0, 0, 0]);
        assert_eq!(Value::string("A").reg_type, REG_SZ);
        assert_eq!(
            Value::objects(&["a", "b"]).data,
            [0x61, 0, 0, 0, 0x62, 0, 0, 0, 0, 0]
        );
        assert_eq!(Value::objects(&["a"]).reg_type, REG_MULTI_SZ);
        assert_eq!(Value::integer(30).data, [0x1e, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Value::integers(&[0x1500_0075]).data,
            [0x75, 0, 0, 0x15, 0, 0, 0, 0]
        );
        assert_eq!(Value::boolean(true).data, [1]);
        assert_eq!(Value::boolean(false).reg_type, REG_BINARY);
        assert_eq!(Value::dword(0x1020_0003).data, [3, 0, 0x20, 0x10]);
        assert_eq!(Value::string("é").data, [0xe9, 0, 0, 0]);
        assert_eq!(Value::dword(1).hivexsh(), "hex:4:01,00,00,00");
        assert_eq!(Value::integers(&[]).hivexsh(), "hex:3:");
    }

    #[test]
    fn uefi_plan_is_what_bcdboot_writes() {
        let s = uefi();
        let loader = "{aaaaaaaa-0000-4000-8000-000000000001}";
        let resume = "{aaaaaaaa-0000-4000-8000-000000000002}";
        let guids: Vec<&str> = s.objects.iter().map(|o| o.guid.as_str()).collect();
        assert_eq!(
            guids,
            [
                BOOTMGR,
                loader,
                resume,
                MEMDIAG,
                GLOBALSETTINGS,
                DBGSETTINGS,
                EMSSETTINGS,
                BADMEMORY,
                BOOTLOADERSETTINGS,
                HYPERVISORSETTINGS,
                RESUMELOADERSETTINGS
            ]
        );
        let esp = Value::device(device_element(&gpt(ESP)).unwrap());
        let win = Value::device(device_element(&gpt(WIN)).unwrap());

        let b = s.object(BOOTMGR).unwrap();
        assert_eq!(b.type_, TYPE_BOOT_MANAGER);
        let ids: Vec<u32> = b.elements.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [
                0x11000001, 0x12000002, 0x12000004, 0x12000005, 0x14000006, 0x23000003, 0x23000006,
                0x24000001, 0x24000010, 0x25000004
            ]
        );
        assert_eq!(b.element(APPLICATION_DEVICE), Some(&esp));
        assert_eq!(
            b.element(APPLICATION_PATH),
            Some(&Value::string(r"\EFI\Microsoft\Boot\bootmgfw.efi"))
        );
        assert_eq!(b.element(DEFAULT_OBJECT), Some(&Value::string(loader)));
        assert_eq!(b.element(RESUME_OBJECT), Some(&Value::string(resume)));
        assert_eq!(b.element(DISPLAY_ORDER), Some(&Value::objects(&[loader])));
        assert_eq!(
            b.element(TOOLS_DISPLAY_ORDER),
            Some(&Value::objects(&[MEMDIAG]))
        );
        assert_eq!(b.element(TIMEOUT), Some(&Value::integer(30)));
        assert_eq!(b.element(PREFERRED_LOCALE), Some(&Value::string("en-US")));
        assert!(b.absent.is_empty());

        let l = s.object(loader).unwrap();
        assert_eq!(l.type_, TYPE_OS_LOADER);
        let ids: Vec<u32> = l.elements.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [
                0x11000001, 0x12000002, 0x12000004, 0x12000005, 0x14000006, 0x16000060, 0x17000077,
                0x21000001, 0x22000002, 0x23000003, 0x25000020, 0x250000c2
            ]
        );
        assert_eq!(l.element(APPLICATION_DEVICE), Some(&win));
        assert_eq!(l.element(OS_DEVICE), Some(&win));
        assert_eq!(
            l.element(APPLICATION_PATH),
            Some(&Value::string(r"\Windows\system32\winload.efi"))
        );
        assert_eq!(
            l.element(DESCRIPTION),
            Some(&Value::string("Windows 11 Pro"))
        );
        assert_eq!(l.element(SYSTEM_ROOT), Some(&Value::string(r"\Windows")));
        assert_eq!(l.element(DEFAULT_OBJECT), Some(&Value::string(resume)));
        assert_eq!(
            l.element(INHERIT),
            Some(&Value::objects(&[BOOTLOADERSETTINGS]))
        );
        assert_eq!(l.element(ISOLATED_CONTEXT), Some(&Value::boolean(true)));
        assert_eq!(l.element(NX_POLICY), Some(&Value::integer(0)));
        assert_eq!(l.element(BOOT_MENU_POLICY), Some(&Value::integer(1)));

        let r = s.object(resume).unwrap();
        assert_eq!(r.type_, TYPE_RESUME);
        assert_eq!(
            r.element(APPLICATION_PATH),
            Some(&Value::string(r"\Windows\system32\winresume.efi"))
        );
        assert_eq!(r.element(OS_DEVICE), Some(&win));
        assert_eq!(
            r.element(SYSTEM_ROOT),
            Some(&Value::string(r"\hiberfil.sys"))
        );
        assert_eq!(r.element(RESUME_DEBUG_OPTIONS), None);
        assert_eq!(r.absent, [RESUME_DEBUG_OPTIONS]);

        let m = s.object(MEMDIAG).unwrap();
        assert_eq!(m.type_, TYPE_MEMORY_TESTER);
        assert_eq!(m.element(APPLICATION_DEVICE), Some(&esp));
        assert_eq!(
            m.element(APPLICATION_PATH),
            Some(&Value::string(r"\EFI\Microsoft\Boot\memtest.efi"))
        );
        assert_eq!(m.element(BAD_MEMORY_ACCESS), Some(&Value::boolean(true)));

        assert_eq!(
            s.object(GLOBALSETTINGS).unwrap().element(INHERIT),
            Some(&Value::objects(&[DBGSETTINGS, EMSSETTINGS, BADMEMORY]))
        );
        assert_eq!(
            s.object(BOOTLOADERSETTINGS).unwrap().element(INHERIT),
            Some(&Value::objects(&[GLOBALSETTINGS, HYPERVISORSETTINGS]))
        );
        assert_eq!(
            s.object(RESUMELOADERSETTINGS).unwrap().element(INHERIT),
            Some(&Value::objects(&[GLOBALSETTINGS]))
        );
        assert!(s.object(BADMEMORY).unwrap().elements.is_empty());
        assert_eq!(
            s.object(HYPERVISORSETTINGS)
                .unwrap()
                .element(HYPERVISOR_BAUD_RATE),
            Some(&Value::integer(115200))
        );
        let types: Vec<u32> = s.objects[4..].iter().map(|o| o.type_).collect();
        assert_eq!(
            types,
            [
                0x20100000, 0x20100000, 0x20100000, 0x20100000, 0x20200003, 0x20200003, 0x20200004
            ]
        );
        assert_eq!(
            s.description,
            [
                NamedValue {
                    name: "KeyName".into(),
                    value: Value::string("BCD00000000")
                },
                NamedValue {
                    name: "System".into(),
                    value: Value::dword(1)
                }
            ]
        );
    }

    #[test]
    fn bios_plan_has_no_bootmgr_path_and_exe_loaders() {
        let s = bios();
        let b = s.object(BOOTMGR).unwrap();
        assert_eq!(b.element(APPLICATION_PATH), None);
        assert_eq!(b.absent, [APPLICATION_PATH]);
        assert_eq!(
            b.element(APPLICATION_DEVICE),
            Some(&Value::device(device_element(&mbr(2048)).unwrap()))
        );
        let loader = s.object(LOADER).unwrap();
        assert_eq!(
            loader.element(APPLICATION_PATH),
            Some(&Value::string(r"\Windows\system32\winload.exe"))
        );
        assert_eq!(
            loader.element(OS_DEVICE),
            Some(&Value::device(device_element(&mbr(206848)).unwrap()))
        );
        assert_eq!(loader.element(ISOLATED_CONTEXT), None);
        assert_eq!(loader.absent, [ISOLATED_CONTEXT]);
        let resume = s.object(RESUME).unwrap();
        assert_eq!(
            resume.element(APPLICATION_PATH),
            Some(&Value::string(r"\Windows\system32\winresume.exe"))
        );
        assert_eq!(
            resume.element(RESUME_DEBUG_OPTIONS),
            Some(&Value::boolean(false))
        );
        assert_eq!(resume.element(ISOLATED_CONTEXT), None);
        assert_eq!(
            s.object(MEMDIAG).unwrap().element(APPLICATION_PATH),
            Some(&Value::string(r"\Boot\memtest.exe"))
        );
        assert_eq!(b.element(PREFERRED_LOCALE), Some(&Value::string("de-DE")));
    }

    #[test]
    fn plan_refuses_bad_or_clashing_guids() {
        let p = |loader: &str, resume: &str| {
            plan(
                BootMode::Uefi,
                &gpt(ESP),
                &gpt(WIN),
                "en-US",
                "W",
                loader,
                resume,
            )
        };
        assert_eq!(p("nope", RESUME), Err(BcdError::Guid("nope".into())));
        assert!(matches!(p(LOADER, LOADER), Err(BcdError::ObjectGuid(_))));
        // The same GUID in another spelling is still the same object.
        assert!(matches!(
            p(LOADER, "aaaaaaaa-0000-4000-8000-000000000001"),
            Err(BcdError::ObjectGuid(_))
        ));
        assert!(matches!(
            p("9DEA862C-5CDD-4E70-ACC1-F32B344D4795", RESUME),
            Err(BcdError::ObjectGuid(_))
        ));
        let bad_disk = plan(
            BootMode::Uefi,
            &Device::Gpt {
                partition: ESP.into(),
                disk: "disk".into(),
            },
            &gpt(WIN),
            "en-US",
            "W",
            LOADER,
            RESUME,
        );
        assert_eq!(bad_disk, Err(BcdError::Guid("disk".into())));
    }

    #[test]
    fn listing_runs_in_rounds_until_complete() {
        let e = Existing::default();
        assert_eq!(listing_script(&e).unwrap(), "cd \\\ncd\nls\n");
        let round0 = "\\\nDescription\nObjects\n";
        let e = parse_listing(round0).unwrap();
        assert!(e.has("Description") && e.has("objects") && !e.has("Objects\\x"));
        assert_eq!(
            listing_script(&e).unwrap(),
            "cd \\objects\ncd\nls\ncd \\description\ncd\nlsval\n"
        );
        let round1 = "\\Objects\n{9DEA862C-5CDD-4E70-ACC1-F32B344D4795}\n{b2721d73-1db4-4c62-bf78-c548a880142d}\n\
                      \\Description\n\"KeyName\"=\"BCD00000000\"\n\"TreatAsSystem\"=dword:00000001\n";
        let e = parse_listing(&format!("{round0}{round1}")).unwrap();
        assert_eq!(e.objects(), [BOOTMGR, MEMDIAG]);
        assert_eq!(
            e.description().unwrap(),
            [
                NamedValue {
                    name: "KeyName".into(),
                    value: Value::string("BCD00000000")
                },
                NamedValue {
                    name: "TreatAsSystem".into(),
                    value: Value::dword(1)
                }
            ]
        );
        assert_eq!(
            listing_script(&e).unwrap(),
            format!("cd \\objects\\{BOOTMGR}\ncd\nls\ncd \\objects\\{MEMDIAG}\ncd\nls\n")
        );
        let round2 = format!(
            "\\Objects\\{BOOTMGR}\nDescription\nElements\n\\Objects\\{MEMDIAG}\nDescription\n"
        );
        let e = parse_listing(&format!("{round0}{round1}{round2}")).unwrap();
        assert_eq!(
            listing_script(&e).unwrap(),
            format!("cd \\objects\\{BOOTMGR}\\elements\ncd\nls\n")
        );
        let round3 = format!("\\Objects\\{BOOTMGR}\\Elements\n11000001\n12000002\n");
        // Rounds may arrive in any order.
        let e = parse_listing(&format!("{round3}{round1}{round0}{round2}")).unwrap();
        assert_eq!(listing_script(&e), None);
        assert_eq!(
            e.subkeys(&format!(r"Objects\{BOOTMGR}\Elements")),
            ["11000001", "12000002"]
        );
        assert_eq!(e.subkeys(""), ["description", "objects"]);
        assert!(e.has(&format!(r"objects\{BOOTMGR}\elements\12000002")));
        assert!(!e.has(&format!(r"objects\{MEMDIAG}\elements")));
    }

    #[test]
    fn an_empty_template_lists_in_one_round() {
        let e = parse_listing("\\\n").unwrap();
        assert_eq!(listing_script(&e), None);
        assert_eq!(e.description(), None);
        assert!(e.objects().is_empty());
    }

    #[test]
    fn listing_skips_keys_hivexsh_cannot_reach() {
        let e = parse_listing("\\\nObjects\n\\Objects\n trailing \n{ok}\n").unwrap();
        assert_eq!(listing_script(&e).unwrap(), "cd \\objects\\{ok}\ncd\nls\n");
    }

    #[test]
    fn lsval_lines_parse_every_form() {
        let v = |line| parse_lsval(line).unwrap();
        assert_eq!(v(r#""@"="x""#).name, "");
        assert_eq!(
            v(r#""a\"b\\c"="q\"\\""#),
            NamedValue {
                name: r#"a"b\c"#.into(),
                value: Value::string(r#"q"\"#)
            }
        );
        assert_eq!(
            v(r#""E"=str(2):"%x%""#).value,
            Value {
                reg_type: 2,
                data: utf16z("%x%")
            }
        );
        assert_eq!(v(r#""D"=dword:ffffffff"#).value, Value::dword(u32::MAX));
        assert_eq!(
            v(r#""B"=hex(3):01,ab"#).value,
            Value {
                reg_type: 3,
                data: vec![1, 0xab]
            }
        );
        assert_eq!(
            v(r#""N"=hex(0):"#).value,
            Value {
                reg_type: 0,
                data: vec![]
            }
        );
        assert_eq!(v(r#""S"="Ünïcode""#).value, Value::string("Ünïcode"));
        for bad in [
            "",
            "KeyName",
            r#""a"#,
            r#""a"x"#,
            r#""a"="b"#,
            r#""a"="b"c"#,
            r#""a"=dword:xyz"#,
            r#""a"=hex(3):1g"#,
            r#""a"=hex(x):01"#,
            r#""a"=str(1)"x""#,
            r#""a"=qword:1"#,
        ] {
            assert!(parse_lsval(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_listing("\\Description\nnonsense\n"),
            Err(BcdError::Listing(_))
        ));
        assert!(matches!(
            parse_listing("Objects\n"),
            Err(BcdError::Listing(_))
        ));
        let long = format!(
            "\\Description\n\"Big\"=hex(3):{}\n",
            vec!["00"; MAX_VALUE_BYTES + 1].join(",")
        );
        assert_eq!(
            parse_listing(&long),
            Err(BcdError::TooLong("Big".into(), MAX_VALUE_BYTES + 1))
        );
    }

    /// The listing of a template that has `Description` and `Objects` and a {bootmgr} with a
    /// device and an EFI path (which BIOS must remove), as hivexsh prints it.
    const TEMPLATE_WITH_BOOTMGR: &str = "\\\nDescription\nObjects\n\
        \\Description\n\"KeyName\"=\"BCD00000000\"\n\"TreatAsSystem\"=dword:00000001\n\"System\"=dword:00000000\n\
        \\Objects\n{9dea862c-5cdd-4e70-acc1-f32b344d4795}\n\
        \\Objects\\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\nDescription\nElements\n\
        \\Objects\\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\\Elements\n11000001\n12000002\n";

    #[test]
    fn uefi_render_against_a_bare_template_adds_every_key() {
        let e = parse_listing("\\\n").unwrap();
        let script = render_hivexsh(&uefi(), &e);
        recast_tests::assert_golden(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/bcd-uefi-bare.hivexsh"),
            &script,
        );
    }

    #[test]
    fn bios_render_against_a_template_with_bootmgr_adds_only_what_is_missing() {
        let e = parse_listing(TEMPLATE_WITH_BOOTMGR).unwrap();
        assert_eq!(listing_script(&e), None);
        let script = render_hivexsh(&bios(), &e);
        recast_tests::assert_golden(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/bcd-bios-with-bootmgr.hivexsh"),
            &script,
        );
        // Description and Objects exist: nothing happens at the root.
        assert!(!script.contains("cd \\\n"), "{script}");
        assert!(!script.contains(&format!("add {BOOTMGR}\n")));
        let elements = format!("cd \\Objects\\{BOOTMGR}\\Elements");
        assert!(!script.contains(&format!("{elements}\nadd 11000001\n")));
        assert!(script.contains(&format!("{elements}\\11000001\nsetval 1\n")));
        assert!(script.contains(&format!("{elements}\nadd 12000004\n")));
        // The template's EFI path goes; its TreatAsSystem stays, System becomes 1.
        assert!(script.contains(&format!(
            "cd \\Objects\\{BOOTMGR}\\Elements\\12000002\ndel\n"
        )));
        assert!(script.contains(
            "cd \\Description\nsetval 3\nKeyName\nhex:1:42,00,43,00,44,00,30,00,30,00,30,00,30,00,30,00,30,00,30,00,30,00,00,00\n\
             System\nhex:4:01,00,00,00\nTreatAsSystem\nhex:4:01,00,00,00\n"
        ));
    }

    #[test]
    fn render_adds_each_missing_key_once_and_ends_with_commit() {
        for (store, listing) in [
            (uefi(), "\\\n"),
            (bios(), "\\\n"),
            (uefi(), TEMPLATE_WITH_BOOTMGR),
            (bios(), TEMPLATE_WITH_BOOTMGR),
        ] {
            let e = parse_listing(listing).unwrap();
            let script = render_hivexsh(&store, &e);
            assert!(script.ends_with("\ncommit\n"), "{script}");
            for line in script.lines() {
                assert!(line.len() < 8192);
            }
            // Every key of the store is either in the template or added exactly once, and
            // every element gets exactly one setval.
            let setvals = script.matches("setval 1\nElement\n").count();
            let elements: usize = store.objects.iter().map(|o| o.elements.len()).sum();
            assert_eq!(setvals, elements);
            let types = script.matches("setval 1\nType\n").count();
            assert_eq!(types, store.objects.len());
            for o in &store.objects {
                let base = format!(r"Objects\{}", o.guid);
                let added = script.matches(&format!("add {}\n", o.guid)).count();
                assert_eq!(added, usize::from(!e.has(&base)), "{}", o.guid);
            }
        }
    }

    #[test]
    fn script_text_is_ascii_whatever_the_description() {
        let s = plan(
            BootMode::Uefi,
            &gpt(ESP),
            &gpt(WIN),
            "ja-JP",
            "Windows 11 日本語版\nsetval 0",
            LOADER,
            RESUME,
        )
        .unwrap();
        let script = render_hivexsh(&s, &Existing::default());
        assert!(script.is_ascii());
        assert!(!script.contains("setval 0"));
    }
}
