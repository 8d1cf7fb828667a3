//! A minimal registry hive ("regf") writer. hivex (and so hivexsh, the tool recast-imager edits
//! BCD stores with) can edit hives but cannot create one, and a real `BCD-Template` is
//! Microsoft's file, so recast writes its own: the WinPE Secure Boot BCD that `recastctl
//! bootkit check --install` lays out (planned in the `winpe_boot` module) and the tests'
//! stand-in templates (`recast_tests::hive`).
//!
//! The writer covers what a BCD store uses and nothing more: ASCII key and value names, values
//! up to 16 KiB (no "big data" cells), one security descriptor shared by every key, and all
//! cells in one hive bin. Layout per the format as described by msuhanov's regf specification
//! and hivex's own checks (hivex `lib/handle.c` refuses what it cannot walk). Pure: a tree in,
//! the file's bytes out, the same bytes for the same tree.

pub mod read;

/// A key to write, with its values and subkeys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub values: Vec<Value>,
    pub subkeys: Vec<Key>,
}

/// A value: registry type (1 = REG_SZ, 3 = REG_BINARY, 4 = REG_DWORD, 7 = REG_MULTI_SZ) and raw
/// bytes, exactly as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub name: String,
    pub type_: u32,
    pub data: Vec<u8>,
}

pub const REG_SZ: u32 = 1;
pub const REG_EXPAND_SZ: u32 = 2;
pub const REG_BINARY: u32 = 3;
pub const REG_DWORD: u32 = 4;
pub const REG_MULTI_SZ: u32 = 7;

impl Key {
    pub fn new(name: &str) -> Key {
        Key {
            name: name.into(),
            ..Key::default()
        }
    }

    pub fn value(mut self, name: &str, type_: u32, data: Vec<u8>) -> Key {
        self.values.push(Value {
            name: name.into(),
            type_,
            data,
        });
        self
    }

    pub fn subkey(mut self, key: Key) -> Key {
        self.subkeys.push(key);
        self
    }
}

/// UTF-16LE with the terminating NUL, as REG_SZ stores text.
pub fn reg_sz(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// What the writer cannot store. Each names the key or value so the caller can fix its tree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegfError {
    #[error("key name {0:?}: names must be non-empty ASCII (this writer stores names as ASCII)")]
    KeyName(String),
    #[error("value name {0:?} under key {1:?}: names must be ASCII")]
    ValueName(String, String),
    #[error(
        "value {0:?} under key {1:?} is {2} bytes; this writer keeps values up to {MAX_CELL_DATA} bytes (no big-data cells)"
    )]
    ValueTooLarge(String, String, usize),
    #[error(
        "the hive would be {0} bytes; this writer keeps everything in one hive bin under 4 GiB"
    )]
    TooLarge(usize),
}

/// Offsets inside the hive are relative to the start of the hive bins data (file offset 4096);
/// 0xFFFFFFFF means "none".
const NONE: u32 = 0xFFFF_FFFF;
pub const BASE_BLOCK: usize = 4096;
pub const HBIN_HEADER: usize = 32;
/// A fixed FILETIME (2024-01-01T00:00:00Z) so that files are byte-for-byte reproducible.
const TIMESTAMP: u64 = 133_485_408_000_000_000;
/// The largest value kept in one cell; beyond it Windows uses "db" big-data cells, which this
/// writer does not need.
pub const MAX_CELL_DATA: usize = 16344;

fn validate(key: &Key) -> Result<(), RegfError> {
    if !key.name.is_ascii() || key.name.is_empty() {
        return Err(RegfError::KeyName(key.name.clone()));
    }
    for v in &key.values {
        if !v.name.is_ascii() {
            return Err(RegfError::ValueName(v.name.clone(), key.name.clone()));
        }
        if v.data.len() > MAX_CELL_DATA {
            return Err(RegfError::ValueTooLarge(
                v.name.clone(),
                key.name.clone(),
                v.data.len(),
            ));
        }
    }
    key.subkeys.iter().try_for_each(validate)
}

/// The hive file for `root`.
pub fn hive(root: &Key) -> Result<Vec<u8>, RegfError> {
    validate(root)?;
    let mut cells = Cells::default();
    let sk = cells.alloc(0x14 + SECURITY_DESCRIPTOR.len());
    let mut keys = 0u32;
    let root_offset = write_key(&mut cells, root, None, sk, &mut keys);
    // The one sk cell is a circular list of itself (flink = blink = self), referenced by every
    // key; hivex increments the count when it adds a key and frees the cell when it reaches 0.
    cells.put(sk, 0, b"sk");
    cells.put_u32(sk, 0x04, sk);
    cells.put_u32(sk, 0x08, sk);
    cells.put_u32(sk, 0x0C, keys);
    cells.put_u32(sk, 0x10, SECURITY_DESCRIPTOR.len() as u32);
    cells.put(sk, 0x14, &SECURITY_DESCRIPTOR);

    // One hive bin, a multiple of 4096 bytes; what the cells do not use is one free cell
    // (positive size), because cells must fill the bin without gaps.
    let used = HBIN_HEADER + cells.data.len();
    let bin_size = used.next_multiple_of(4096);
    let bin_size_u32 = u32::try_from(bin_size).map_err(|_| RegfError::TooLarge(bin_size))?;
    let mut bin = Vec::with_capacity(bin_size);
    bin.extend_from_slice(b"hbin");
    bin.extend_from_slice(&0u32.to_le_bytes()); // this bin's offset: the first
    bin.extend_from_slice(&bin_size_u32.to_le_bytes());
    bin.extend_from_slice(&[0; 8]);
    bin.extend_from_slice(&TIMESTAMP.to_le_bytes());
    bin.extend_from_slice(&[0; 4]);
    bin.extend_from_slice(&cells.data);
    if bin_size > used {
        bin.extend_from_slice(&((bin_size - used) as i32).to_le_bytes());
        bin.resize(bin_size, 0);
    }

    let mut base = base_block(root_offset, bin_size_u32, TIMESTAMP);
    if matches!(checksum(&base), 0 | NONE) {
        // Windows stores an XOR of 0 as 1 and of 0xFFFFFFFF as 0xFFFFFFFE; hivex compares the
        // plain XOR, so the two would disagree about this file. A timestamp one tick later
        // changes the XOR's lowest bit and leaves both values.
        base = base_block(root_offset, bin_size_u32, TIMESTAMP + 1);
    }
    base.extend_from_slice(&bin);
    Ok(base)
}

/// The XOR of the base block's first 508 bytes, as 32-bit words.
fn checksum(base: &[u8]) -> u32 {
    base[..0x1FC]
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .fold(0, |a, w| a ^ w)
}

fn base_block(root_offset: u32, bin_size: u32, timestamp: u64) -> Vec<u8> {
    let mut base = vec![0u8; BASE_BLOCK];
    let mut put = |at: usize, bytes: &[u8]| base[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, b"regf");
    // Equal sequence numbers: the last write completed, so no log needs replaying.
    put(0x04, &1u32.to_le_bytes());
    put(0x08, &1u32.to_le_bytes());
    put(0x0C, &timestamp.to_le_bytes());
    // Version 1.5: the first with "lh" (hash leaf) subkey lists, which is what hivex writes.
    put(0x14, &1u32.to_le_bytes());
    put(0x18, &5u32.to_le_bytes());
    put(0x1C, &0u32.to_le_bytes()); // primary file (not a log)
    put(0x20, &1u32.to_le_bytes()); // "direct memory load", the only format
    put(0x24, &root_offset.to_le_bytes());
    put(0x28, &bin_size.to_le_bytes());
    put(0x2C, &1u32.to_le_bytes()); // clustering factor: 512-byte sectors
    put(0x30, &reg_sz("BCD")[..6]); // file name, for debugging only
    let sum = checksum(&base);
    base[0x1FC..0x200].copy_from_slice(&sum.to_le_bytes());
    base
}

/// A self-relative security descriptor: owner BUILTIN\Administrators, group SYSTEM, no DACL.
/// No DACL means no access checks, which is enough for a fixture no Windows will mount.
const SECURITY_DESCRIPTOR: [u8; 48] = [
    1, 0, // revision 1, padding
    0x00, 0x80, // control: SE_SELF_RELATIVE
    20, 0, 0, 0, // owner SID at 20
    36, 0, 0, 0, // group SID at 36
    0, 0, 0, 0, // no SACL
    0, 0, 0, 0, // no DACL
    // S-1-5-32-544
    1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 0x02, 0, 0, //
    // S-1-5-18
    1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0,
];

/// The cells of the one hive bin, laid out in allocation order.
#[derive(Default)]
struct Cells {
    data: Vec<u8>,
}

impl Cells {
    /// A used cell with room for `len` bytes after its size field; returns its offset. Cells are
    /// 8-byte aligned and a used cell's size is negative.
    fn alloc(&mut self, len: usize) -> u32 {
        let size = (4 + len).next_multiple_of(8);
        let offset = (HBIN_HEADER + self.data.len()) as u32;
        self.data.extend_from_slice(&(-(size as i32)).to_le_bytes());
        self.data.resize(self.data.len() + size - 4, 0);
        offset
    }

    /// Writes `bytes` at `at` bytes into the cell's data (after its size field).
    fn put(&mut self, cell: u32, at: usize, bytes: &[u8]) {
        let start = cell as usize - HBIN_HEADER + 4 + at;
        self.data[start..start + bytes.len()].copy_from_slice(bytes);
    }

    fn put_u32(&mut self, cell: u32, at: usize, v: u32) {
        self.put(cell, at, &v.to_le_bytes());
    }
}

/// The lh hash: the upper-cased name's characters folded as h = 37 h + c.
fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0u32, |h, c| {
        h.wrapping_mul(37)
            .wrapping_add(u32::from(c.to_ascii_uppercase()))
    })
}

/// Writes `key` and everything below it (already validated); returns the key's nk cell.
fn write_key(cells: &mut Cells, key: &Key, parent: Option<u32>, sk: u32, keys: &mut u32) -> u32 {
    *keys += 1;
    // The nk cell first, so that children can name it as their parent.
    let nk = cells.alloc(0x4C + key.name.len());

    // Subkey lists must be sorted by upper-cased name, or Windows cannot find keys by binary
    // search (and hivex inserts new keys assuming the order).
    let mut subkeys: Vec<&Key> = key.subkeys.iter().collect();
    subkeys.sort_by_key(|k| k.name.to_ascii_uppercase());
    let children: Vec<u32> = subkeys
        .iter()
        .map(|k| write_key(cells, k, Some(nk), sk, keys))
        .collect();
    let subkey_list = if children.is_empty() {
        NONE
    } else {
        let lh = cells.alloc(4 + 8 * children.len());
        cells.put(lh, 0, b"lh");
        cells.put(lh, 2, &(children.len() as u16).to_le_bytes());
        for (i, (child, k)) in children.iter().zip(&subkeys).enumerate() {
            cells.put_u32(lh, 4 + 8 * i, *child);
            cells.put_u32(lh, 8 + 8 * i, name_hash(&k.name));
        }
        lh
    };

    let mut vks = Vec::new();
    for v in &key.values {
        let vk = cells.alloc(0x14 + v.name.len());
        cells.put(vk, 0, b"vk");
        cells.put(vk, 2, &(v.name.len() as u16).to_le_bytes());
        if v.data.len() <= 4 {
            // Up to four bytes live in the offset field itself, flagged by the size's top bit.
            cells.put_u32(vk, 4, v.data.len() as u32 | 0x8000_0000);
            cells.put(vk, 8, &v.data);
        } else {
            let data = cells.alloc(v.data.len());
            cells.put(data, 0, &v.data);
            cells.put_u32(vk, 4, v.data.len() as u32);
            cells.put_u32(vk, 8, data);
        }
        cells.put_u32(vk, 0x0C, v.type_);
        // Flag 1: the name is stored as ASCII, not UTF-16. An empty name is the default value.
        cells.put(vk, 0x10, &u16::from(!v.name.is_empty()).to_le_bytes());
        cells.put(vk, 0x14, v.name.as_bytes());
        vks.push(vk);
    }
    let value_list = if vks.is_empty() {
        NONE
    } else {
        let list = cells.alloc(4 * vks.len());
        for (i, vk) in vks.iter().enumerate() {
            cells.put_u32(list, 4 * i, *vk);
        }
        list
    };

    // Flags: 0x20 = name stored as ASCII; the root also 0x04 (hive entry) and 0x08 (no delete).
    let flags: u16 = if parent.is_none() { 0x2C } else { 0x20 };
    cells.put(nk, 0x00, b"nk");
    cells.put(nk, 0x02, &flags.to_le_bytes());
    cells.put(nk, 0x04, &TIMESTAMP.to_le_bytes());
    // The root's parent field means nothing on disk; NONE keeps readers from following it.
    cells.put_u32(nk, 0x10, parent.unwrap_or(NONE));
    cells.put_u32(nk, 0x14, children.len() as u32);
    cells.put_u32(nk, 0x1C, subkey_list);
    cells.put_u32(nk, 0x20, NONE); // volatile subkeys exist only in memory
    cells.put_u32(nk, 0x24, vks.len() as u32);
    cells.put_u32(nk, 0x28, value_list);
    cells.put_u32(nk, 0x2C, sk);
    cells.put_u32(nk, 0x30, NONE); // no class name
    // The "largest" fields are hints Windows sizes buffers by, in UTF-16 bytes.
    let longest = |lens: &mut dyn Iterator<Item = usize>| (lens.max().unwrap_or(0) * 2) as u32;
    cells.put_u32(
        nk,
        0x34,
        longest(&mut key.subkeys.iter().map(|k| k.name.len())),
    );
    cells.put_u32(
        nk,
        0x3C,
        longest(&mut key.values.iter().map(|v| v.name.len())),
    );
    cells.put_u32(
        nk,
        0x40,
        key.values.iter().map(|v| v.data.len()).max().unwrap_or(0) as u32,
    );
    cells.put(nk, 0x48, &(key.name.len() as u16).to_le_bytes());
    cells.put(nk, 0x4C, key.name.as_bytes());
    nk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn tree(with_subkeys: bool) -> Key {
        let mut root = Key::new("NewStoreRoot");
        if with_subkeys {
            root = root
                .subkey(Key::new("Description").value("KeyName", REG_SZ, reg_sz("BCD00000000")))
                .subkey(Key::new("Objects"));
        }
        root
    }

    #[test]
    fn base_block_and_bin_are_consistent() {
        for with in [false, true] {
            let h = hive(&tree(with)).unwrap();
            assert_eq!(&h[..4], b"regf");
            assert_eq!(h.len(), 8192, "one 4 KiB bin after the base block");
            assert_eq!(&h[4096..4100], b"hbin");
            assert_eq!(u32_at(&h, 0x28) as usize, h.len() - 4096);
            assert_eq!(checksum(&h), u32_at(&h, 0x1FC));
            let root = 4096 + u32_at(&h, 0x24) as usize;
            assert_eq!(&h[root + 4..root + 6], b"nk");
            assert_eq!(&h[root + 0x50..root + 0x50 + 12], b"NewStoreRoot");
            assert_eq!(u32_at(&h, root + 4 + 0x14), if with { 2 } else { 0 });
            // Cells tile the bin exactly.
            let mut at = 4096 + HBIN_HEADER;
            while at < h.len() {
                let size = (u32_at(&h, at) as i32).unsigned_abs() as usize;
                assert!(
                    size >= 8 && size.is_multiple_of(8),
                    "cell at {at:#x}: {size}"
                );
                at += size;
            }
            assert_eq!(at, h.len());
        }
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes() {
        assert_eq!(hive(&tree(true)).unwrap(), hive(&tree(true)).unwrap());
        assert_ne!(hive(&tree(true)).unwrap(), hive(&tree(false)).unwrap());
    }

    #[test]
    fn a_checksum_windows_and_hivex_would_disagree_on_moves_the_timestamp() {
        // Whatever the XOR of the other words, one timestamp tick flips its lowest bit: 0 and
        // 0xFFFFFFFF (the two values Windows rewrites) become 1 and 0xFFFFFFFE.
        let a = base_block(0x20, 4096, TIMESTAMP);
        let b = base_block(0x20, 4096, TIMESTAMP + 1);
        // TIMESTAMP is even, so one tick changes bit 0 of the low word and nothing else.
        assert_eq!(checksum(&a) ^ checksum(&b), 1);
        // The stored checksum is always the plain XOR, and never one of the two.
        for with in [false, true] {
            let h = hive(&tree(with)).unwrap();
            assert!(!matches!(u32_at(&h, 0x1FC), 0 | NONE));
        }
    }

    #[test]
    fn subkeys_are_sorted_by_upper_case_name_and_hashed() {
        let root = Key::new("R")
            .subkey(Key::new("b"))
            .subkey(Key::new("A"))
            .subkey(Key::new("_c"));
        let h = hive(&root).unwrap();
        let nk = 4096 + u32_at(&h, 0x24) as usize;
        let lh = 4096 + u32_at(&h, nk + 4 + 0x1C) as usize;
        assert_eq!(&h[lh + 4..lh + 6], b"lh");
        let names: Vec<String> = (0..3)
            .map(|i| {
                let child = 4096 + u32_at(&h, lh + 8 + 8 * i) as usize;
                let len = u16::from_le_bytes([h[child + 0x4C], h[child + 0x4D]]) as usize;
                let name = String::from_utf8(h[child + 0x50..child + 0x50 + len].to_vec()).unwrap();
                assert_eq!(u32_at(&h, lh + 12 + 8 * i), name_hash(&name));
                name
            })
            .collect();
        // Upper case: 'A' < 'B' < '_' (0x5F); a lower-case sort would put '_' first.
        assert_eq!(names, ["A", "b", "_c"]);
        assert_eq!(name_hash("ab"), 65 * 37 + 66);
    }

    #[test]
    fn small_values_are_inline_and_large_ones_in_a_cell() {
        let h = hive(
            &Key::new("R").value("D", REG_DWORD, vec![1, 0, 0, 0]).value(
                "S",
                REG_SZ,
                reg_sz("hello"),
            ),
        )
        .unwrap();
        let nk = 4096 + u32_at(&h, 0x24) as usize;
        assert_eq!(u32_at(&h, nk + 4 + 0x24), 2);
        let list = 4096 + u32_at(&h, nk + 4 + 0x28) as usize;
        let dword = 4096 + u32_at(&h, list + 4) as usize;
        assert_eq!(u32_at(&h, dword + 8), 0x8000_0004);
        assert_eq!(u32_at(&h, dword + 12), 1);
        let sz = 4096 + u32_at(&h, list + 8) as usize;
        assert_eq!(u32_at(&h, sz + 8), 12);
        let data = 4096 + u32_at(&h, sz + 12) as usize;
        assert_eq!(&h[data + 4..data + 16], &reg_sz("hello")[..]);
    }

    #[test]
    fn large_trees_grow_the_bin_in_4_kib_steps() {
        let mut objects = Key::new("Objects");
        for i in 0..100 {
            objects = objects.subkey(Key::new(&format!(
                "{{{i:08x}-0000-0000-0000-000000000000}}"
            )));
        }
        let h = hive(&Key::new("NewStoreRoot").subkey(objects)).unwrap();
        assert_eq!((h.len() - 4096) % 4096, 0);
        assert!(h.len() > 8192);
        assert_eq!(u32_at(&h, 4096 + 8) as usize, h.len() - 4096);
    }

    #[test]
    fn what_the_writer_cannot_store_is_refused_by_name() {
        assert_eq!(
            hive(&Key::new("R").subkey(Key::new(""))),
            Err(RegfError::KeyName(String::new()))
        );
        assert_eq!(
            hive(&Key::new("Clé")),
            Err(RegfError::KeyName("Clé".into()))
        );
        assert_eq!(
            hive(&Key::new("R").subkey(Key::new("K").value("é", REG_SZ, vec![]))),
            Err(RegfError::ValueName("é".into(), "K".into()))
        );
        assert_eq!(
            hive(&Key::new("R").value("big", REG_BINARY, vec![0; MAX_CELL_DATA + 1])),
            Err(RegfError::ValueTooLarge(
                "big".into(),
                "R".into(),
                MAX_CELL_DATA + 1
            ))
        );
        assert!(hive(&Key::new("R").value("max", REG_BINARY, vec![0; MAX_CELL_DATA])).is_ok());
    }
}
