//! A bounded reader of registry hives: finds a key by path and reads its values and subkeys,
//! which is all recast asks of a golden image's offline SOFTWARE and SYSTEM hives.
//!
//! Why recast reads hives itself (docs/first-boot.md, "Deployable golden images"): the registry
//! crates on crates.io are GPL (`nt-hive`, `nt_hive2`, not usable in an Apache-2.0 product),
//! do not build with today's dependencies (`notatin` 1.0.1 against nom 8), or assume the root
//! key is the first cell and abort (`unimplemented!()`) on cells they do not expect
//! (`frnsc-hive`). The reader is pure and total: every offset and count is checked against the
//! bytes before use, so a damaged or hostile hive gives a [`ReadError`], never a panic (the
//! `registry_hive` fuzz target holds it to that), and tests read hives written by hivex, an
//! independent writer. The work is bounded by the file too: a key is listed once (a list that
//! names a key twice is damage, else a 500 KiB hive could list one key a million times), and
//! every cell read is charged to a budget of [`WORK_PER_BYTE`] times the hive's size.
//!
//! Layout per msuhanov's "Windows registry file format specification": a 4096-byte base block,
//! then hive bins whose cells are addressed by offsets relative to the first bin. Transaction
//! logs are not replayed: a captured image's hives were flushed when Windows shut down for
//! capture (sysprep shuts the machine down), and a hive that says otherwise is reported.

use super::{BASE_BLOCK, HBIN_HEADER};

/// Why a hive could not be read. Each says what is wrong with the file, in the file's terms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not a registry hive (no \"regf\" signature)")]
    NotAHive,
    #[error(
        "the hive's base block says the last write did not complete (sequence numbers {0} and {1}): the image was captured from a machine that did not shut down cleanly"
    )]
    Dirty(u32, u32),
    #[error(
        "the hive's data is {claimed} bytes by its base block but the file holds {present}: truncated"
    )]
    Truncated { claimed: usize, present: usize },
    #[error("cell at offset {0:#x} is outside the hive's data or has an impossible size")]
    BadCell(u32),
    #[error("cell at offset {offset:#x} should be a {expected} but is not")]
    WrongCell { offset: u32, expected: &'static str },
    #[error("subkey list at offset {0:#x} names a key twice: the hive is damaged or hostile")]
    Repeated(u32),
    #[error(
        "reading it takes more work than a hive of its size can need: the hive is damaged or hostile"
    )]
    TooMuchWork,
}

/// A key found in a hive: its cell's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef(u32);

/// A value's registry type and stored bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueData {
    pub type_: u32,
    pub data: Vec<u8>,
}

impl ValueData {
    /// REG_SZ / REG_EXPAND_SZ text: UTF-16LE up to the first NUL (Windows tolerates a missing
    /// terminator, so does this).
    pub fn text(&self) -> Option<String> {
        if !matches!(self.type_, 1 | 2) {
            return None;
        }
        let units: Vec<u16> = self
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        Some(String::from_utf16_lossy(&units))
    }

    /// REG_DWORD.
    pub fn dword(&self) -> Option<u32> {
        match (self.type_, self.data.as_slice()) {
            (4, [a, b, c, d, ..]) => Some(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }
}

/// A hive's bytes, checked enough to walk.
pub struct Hive<'a> {
    /// The hive bins (file offset 4096 onwards), what cell offsets are relative to.
    data: &'a [u8],
    root: u32,
    /// Cell bytes still allowed to be read (see [`WORK_PER_BYTE`]).
    budget: std::cell::Cell<u64>,
}

/// How many times over its own size a walk may read a hive's cells: reading every key and
/// value of a real hive touches each cell a few times; a hostile hive that points many lists
/// at the same cells runs out.
pub const WORK_PER_BYTE: u64 = 64;

/// More subkeys than one key can hold in any real hive: a count beyond it is damage.
const MAX_SUBKEYS: usize = 1 << 20;
/// Value-name or key-name bytes beyond which a name is damage (Windows limits names to 255
/// and 16383 characters).
const MAX_NAME_BYTES: usize = 32_768;
/// The largest value this reader returns (recast reads names, paths and numbers; Windows'
/// own values of those kinds are far smaller).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Segments of a big-data value of [`MAX_VALUE_BYTES`] (16344 bytes each, rounded up).
const MAX_SEGMENTS: usize = MAX_VALUE_BYTES / super::MAX_CELL_DATA + 1;

impl<'a> Hive<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Hive<'a>, ReadError> {
        if bytes.len() < BASE_BLOCK || &bytes[..4] != b"regf" {
            return Err(ReadError::NotAHive);
        }
        let primary = u32_at(bytes, 0x04).unwrap_or(0);
        let secondary = u32_at(bytes, 0x08).unwrap_or(0);
        if primary != secondary {
            return Err(ReadError::Dirty(primary, secondary));
        }
        let root = u32_at(bytes, 0x24).ok_or(ReadError::NotAHive)?;
        let length = u32_at(bytes, 0x28).ok_or(ReadError::NotAHive)? as usize;
        let present = bytes.len() - BASE_BLOCK;
        if length > present {
            return Err(ReadError::Truncated {
                claimed: length,
                present,
            });
        }
        let hive = Hive {
            data: &bytes[BASE_BLOCK..BASE_BLOCK + length],
            root,
            budget: std::cell::Cell::new((length as u64 + 4096) * WORK_PER_BYTE),
        };
        hive.key_cell(root)?;
        Ok(hive)
    }

    pub fn root(&self) -> KeyRef {
        KeyRef(self.root)
    }

    /// The key at `path` below the root (backslash-separated, compared case-insensitively as
    /// Windows does), or None when some part of it does not exist.
    pub fn key(&self, path: &str) -> Result<Option<KeyRef>, ReadError> {
        let mut at = self.root();
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            match self.subkey(at, part)? {
                Some(k) => at = k,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The direct subkey of `key` named `name` (case-insensitive).
    pub fn subkey(&self, key: KeyRef, name: &str) -> Result<Option<KeyRef>, ReadError> {
        let wanted = name.to_lowercase();
        for k in self.subkeys(key)? {
            if self.name(k)?.to_lowercase() == wanted {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The key's name as stored.
    pub fn name(&self, key: KeyRef) -> Result<String, ReadError> {
        let nk = self.key_cell(key.0)?;
        let flags = u16_at(nk, 0x02).ok_or(ReadError::BadCell(key.0))?;
        let len = u16_at(nk, 0x48).ok_or(ReadError::BadCell(key.0))? as usize;
        let bytes = nk.get(0x4C..0x4C + len).ok_or(ReadError::BadCell(key.0))?;
        // KEY_COMP_NAME: the name is stored one byte per character (Latin-1).
        Ok(decode_name(bytes, flags & 0x20 != 0))
    }

    /// Every direct subkey of `key`, in the order the hive lists them.
    pub fn subkeys(&self, key: KeyRef) -> Result<Vec<KeyRef>, ReadError> {
        let nk = self.key_cell(key.0)?;
        let count = u32_at(nk, 0x14).ok_or(ReadError::BadCell(key.0))? as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > MAX_SUBKEYS {
            return Err(ReadError::BadCell(key.0));
        }
        let list = u32_at(nk, 0x1C).ok_or(ReadError::BadCell(key.0))?;
        let mut out = Vec::with_capacity(count.min(self.data.len() / 0x50));
        self.collect_list(list, &mut out, true)?;
        let mut seen = std::collections::HashSet::with_capacity(out.len());
        if !out.iter().all(|k| seen.insert(k.0)) {
            return Err(ReadError::Repeated(list));
        }
        Ok(out)
    }

    /// Adds the key offsets of the subkey list at `offset` to `out`; an index root ("ri") lists
    /// other lists, one level deep (`nested` false inside one).
    fn collect_list(
        &self,
        offset: u32,
        out: &mut Vec<KeyRef>,
        nested: bool,
    ) -> Result<(), ReadError> {
        let cell = self.cell(offset)?;
        let sig = cell.get(..2).ok_or(ReadError::BadCell(offset))?;
        let n = u16_at(cell, 2).ok_or(ReadError::BadCell(offset))? as usize;
        let stride = match sig {
            b"lf" | b"lh" => 8,
            b"li" => 4,
            b"ri" if nested => 4,
            _ => {
                return Err(ReadError::WrongCell {
                    offset,
                    expected: "subkey list",
                });
            }
        };
        for i in 0..n {
            let item = u32_at(cell, 4 + i * stride).ok_or(ReadError::BadCell(offset))?;
            if sig == b"ri" {
                self.collect_list(item, out, false)?;
            } else {
                if out.len() >= MAX_SUBKEYS {
                    return Err(ReadError::BadCell(offset));
                }
                self.key_cell(item)?;
                out.push(KeyRef(item));
            }
        }
        Ok(())
    }

    /// The value named `name` (case-insensitive; "" is the default value) of `key`.
    pub fn value(&self, key: KeyRef, name: &str) -> Result<Option<ValueData>, ReadError> {
        let nk = self.key_cell(key.0)?;
        let count = u32_at(nk, 0x24).ok_or(ReadError::BadCell(key.0))? as usize;
        if count == 0 {
            return Ok(None);
        }
        let list_offset = u32_at(nk, 0x28).ok_or(ReadError::BadCell(key.0))?;
        let list = self.cell(list_offset)?;
        let wanted = name.to_lowercase();
        for i in 0..count {
            let vk_offset = u32_at(list, i * 4).ok_or(ReadError::BadCell(list_offset))?;
            let vk = self.cell(vk_offset)?;
            if vk.get(..2) != Some(b"vk") {
                return Err(ReadError::WrongCell {
                    offset: vk_offset,
                    expected: "value",
                });
            }
            let bad = || ReadError::BadCell(vk_offset);
            let name_len = u16_at(vk, 0x02).ok_or_else(bad)? as usize;
            let flags = u16_at(vk, 0x10).ok_or_else(bad)?;
            let name_bytes = vk.get(0x14..0x14 + name_len).ok_or_else(bad)?;
            if decode_name(name_bytes, flags & 0x1 != 0).to_lowercase() != wanted {
                continue;
            }
            let size = u32_at(vk, 0x04).ok_or_else(bad)?;
            let type_ = u32_at(vk, 0x0C).ok_or_else(bad)?;
            let data = if size & 0x8000_0000 != 0 {
                // Small data lives in the offset field itself.
                let len = (size & 0x7FFF_FFFF) as usize;
                vk.get(0x08..0x08 + len.min(4)).ok_or_else(bad)?.to_vec()
            } else if size as usize > MAX_VALUE_BYTES {
                return Err(ReadError::BadCell(vk_offset));
            } else {
                let data_offset = u32_at(vk, 0x08).ok_or_else(bad)?;
                self.value_bytes(data_offset, size as usize)?
            };
            return Ok(Some(ValueData { type_, data }));
        }
        Ok(None)
    }

    fn value_bytes(&self, offset: u32, size: usize) -> Result<Vec<u8>, ReadError> {
        let cell = self.cell(offset)?;
        if cell.get(..2) == Some(b"db") && size > super::MAX_CELL_DATA {
            // Big data: a list of segments, each a cell of up to 16344 bytes.
            let segments = u16_at(cell, 2).ok_or(ReadError::BadCell(offset))? as usize;
            let list_offset = u32_at(cell, 4).ok_or(ReadError::BadCell(offset))?;
            if segments > MAX_SEGMENTS {
                return Err(ReadError::BadCell(offset));
            }
            let list = self.cell(list_offset)?;
            let mut out = Vec::with_capacity(size.min(segments * super::MAX_CELL_DATA));
            for i in 0..segments {
                let seg_offset = u32_at(list, i * 4).ok_or(ReadError::BadCell(list_offset))?;
                let seg = self.cell(seg_offset)?;
                let take = (size - out.len()).min(super::MAX_CELL_DATA).min(seg.len());
                out.extend_from_slice(&seg[..take]);
            }
            if out.len() < size {
                return Err(ReadError::BadCell(offset));
            }
            return Ok(out);
        }
        cell.get(..size)
            .map(<[u8]>::to_vec)
            .ok_or(ReadError::BadCell(offset))
    }

    /// An allocated cell's content (after its size field).
    fn cell(&self, offset: u32) -> Result<&'a [u8], ReadError> {
        let at = offset as usize;
        let size = self
            .data
            .get(at..at + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(ReadError::BadCell(offset))?;
        // Allocated cells have a negative size; a free cell is never referenced.
        let len = size
            .checked_neg()
            .filter(|l| *l >= 8)
            .ok_or(ReadError::BadCell(offset))? as usize;
        if at < HBIN_HEADER {
            return Err(ReadError::BadCell(offset));
        }
        let cell = self
            .data
            .get(at + 4..at + len)
            .ok_or(ReadError::BadCell(offset))?;
        let left = self.budget.get();
        let cost = cell.len() as u64 + 4;
        if cost > left {
            return Err(ReadError::TooMuchWork);
        }
        self.budget.set(left - cost);
        Ok(cell)
    }

    fn key_cell(&self, offset: u32) -> Result<&'a [u8], ReadError> {
        let cell = self.cell(offset)?;
        if cell.get(..2) != Some(b"nk") || cell.len() < 0x4C {
            return Err(ReadError::WrongCell {
                offset,
                expected: "key",
            });
        }
        let name_len = u16_at(cell, 0x48).unwrap_or(0) as usize;
        if name_len > MAX_NAME_BYTES {
            return Err(ReadError::BadCell(offset));
        }
        Ok(cell)
    }
}

fn decode_name(bytes: &[u8], one_byte: bool) -> String {
    if one_byte {
        bytes.iter().map(|b| char::from(*b)).collect()
    } else {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
mod tests {
    use super::super::{Key, REG_BINARY, REG_DWORD, REG_SZ, hive, reg_sz};
    use super::*;

    fn sample() -> Vec<u8> {
        let mut services = Key::new("Services");
        for i in 0..300 {
            services = services.subkey(Key::new(&format!("svc{i:03}")));
        }
        services = services.subkey(
            Key::new("recast-agent")
                .value("ImagePath", REG_SZ, reg_sz("C:\\a.exe run"))
                .value("Start", REG_DWORD, 2u32.to_le_bytes().to_vec())
                .value("Blob", REG_BINARY, vec![7; 100]),
        );
        hive(&Key::new("ROOT").subkey(Key::new("ControlSet001").subkey(services))).unwrap()
    }

    #[test]
    fn keys_values_and_subkeys_are_found_case_insensitively() {
        let bytes = sample();
        let h = Hive::parse(&bytes).unwrap();
        let svc = h
            .key("controlset001\\SERVICES\\Recast-Agent")
            .unwrap()
            .unwrap();
        assert_eq!(h.name(svc).unwrap(), "recast-agent");
        let path = h.value(svc, "imagepath").unwrap().unwrap();
        assert_eq!(path.text().as_deref(), Some("C:\\a.exe run"));
        assert_eq!(h.value(svc, "Start").unwrap().unwrap().dword(), Some(2));
        assert_eq!(h.value(svc, "Blob").unwrap().unwrap().data, vec![7; 100]);
        assert_eq!(h.value(svc, "missing").unwrap(), None);
        assert_eq!(h.key("ControlSet001\\Nope").unwrap(), None);
        let all = h.subkeys(h.key("ControlSet001\\Services").unwrap().unwrap());
        assert_eq!(all.unwrap().len(), 301);
    }

    #[test]
    fn what_is_not_a_clean_hive_gets_a_named_error() {
        let good = sample();
        assert_eq!(Hive::parse(b"MZ").err(), Some(ReadError::NotAHive));
        let mut dirty = good.clone();
        dirty[0x04] = 9;
        assert_eq!(Hive::parse(&dirty).err(), Some(ReadError::Dirty(9, 1)));
        let cut = &good[..good.len() - 4096];
        assert!(matches!(
            Hive::parse(cut).err(),
            Some(ReadError::Truncated { .. })
        ));
        let mut bad_root = good.clone();
        bad_root[0x24..0x28].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        assert_eq!(
            Hive::parse(&bad_root).err(),
            Some(ReadError::BadCell(0x7fff_fff0))
        );
    }

    /// A hive laid out by hand, for the structures recast's writer and hivex's small hives do
    /// not produce: an index root ("ri") over an "li" and an "lf" list, a big-data ("db")
    /// value in two segments, a value stored in its offset field, a UTF-16 key name.
    struct HandHive {
        bin: Vec<u8>,
    }

    impl HandHive {
        fn new() -> HandHive {
            let mut bin = b"hbin".to_vec();
            bin.resize(HBIN_HEADER, 0);
            HandHive { bin }
        }

        fn cell(&mut self, content: &[u8]) -> u32 {
            let at = self.bin.len() as u32;
            let total = (4 + content.len()).next_multiple_of(8);
            self.bin.extend_from_slice(&(-(total as i32)).to_le_bytes());
            self.bin.extend_from_slice(content);
            self.bin.resize(at as usize + total, 0);
            at
        }

        fn nk(&mut self, name: &[u8], ascii: bool, subkeys: (u32, u32), values: (u32, u32)) -> u32 {
            let mut c = vec![0u8; 0x4C];
            c[..2].copy_from_slice(b"nk");
            c[2..4].copy_from_slice(&(if ascii { 0x20u16 } else { 0 }).to_le_bytes());
            c[0x14..0x18].copy_from_slice(&subkeys.0.to_le_bytes());
            c[0x1C..0x20].copy_from_slice(&subkeys.1.to_le_bytes());
            c[0x24..0x28].copy_from_slice(&values.0.to_le_bytes());
            c[0x28..0x2C].copy_from_slice(&values.1.to_le_bytes());
            c[0x48..0x4A].copy_from_slice(&(name.len() as u16).to_le_bytes());
            c.extend_from_slice(name);
            self.cell(&c)
        }

        fn vk(&mut self, name: &str, type_: u32, size: u32, data: u32) -> u32 {
            let mut c = vec![0u8; 0x14];
            c[..2].copy_from_slice(b"vk");
            c[2..4].copy_from_slice(&(name.len() as u16).to_le_bytes());
            c[4..8].copy_from_slice(&size.to_le_bytes());
            c[8..12].copy_from_slice(&data.to_le_bytes());
            c[12..16].copy_from_slice(&type_.to_le_bytes());
            c[0x10..0x12].copy_from_slice(&1u16.to_le_bytes());
            c.extend_from_slice(name.as_bytes());
            self.cell(&c)
        }

        fn list(&mut self, sig: &[u8; 2], items: &[u32], stride: usize) -> u32 {
            let mut c = sig.to_vec();
            c.extend_from_slice(&(items.len() as u16).to_le_bytes());
            for i in items {
                c.extend_from_slice(&i.to_le_bytes());
                if stride == 8 {
                    c.extend_from_slice(&0u32.to_le_bytes());
                }
            }
            self.cell(&c)
        }

        fn offsets(&mut self, items: &[u32]) -> u32 {
            let c: Vec<u8> = items.iter().flat_map(|i| i.to_le_bytes()).collect();
            self.cell(&c)
        }

        fn file(mut self, root: u32) -> Vec<u8> {
            let len = self.bin.len().next_multiple_of(4096);
            self.bin.resize(len, 0);
            let mut base = vec![0u8; BASE_BLOCK];
            base[..4].copy_from_slice(b"regf");
            base[4..8].copy_from_slice(&1u32.to_le_bytes());
            base[8..12].copy_from_slice(&1u32.to_le_bytes());
            base[0x24..0x28].copy_from_slice(&root.to_le_bytes());
            base[0x28..0x2C].copy_from_slice(&(len as u32).to_le_bytes());
            base.extend_from_slice(&self.bin);
            base
        }
    }

    #[test]
    fn index_roots_leaf_lists_big_data_and_inline_values_are_read() {
        let mut h = HandHive::new();
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let seg1 = h.cell(&big[..16344]);
        let seg2 = h.cell(&big[16344..]);
        let segs = h.offsets(&[seg1, seg2]);
        let mut db = b"db".to_vec();
        db.extend_from_slice(&2u16.to_le_bytes());
        db.extend_from_slice(&segs.to_le_bytes());
        let db = h.cell(&db);
        let big_vk = h.vk("Big", 3, big.len() as u32, db);
        let a_values = h.offsets(&[big_vk]);
        let a = h.nk(b"Alpha", true, (0, u32::MAX), (1, a_values));
        let small_vk = h.vk("Small", 4, 0x8000_0004, 5);
        let b_values = h.offsets(&[small_vk]);
        let name: Vec<u8> = "Bêta".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let b = h.nk(&name, false, (0, u32::MAX), (1, b_values));
        let li = h.list(b"li", &[a], 4);
        let lf = h.list(b"lf", &[b], 8);
        let ri = h.list(b"ri", &[li, lf], 4);
        let root = h.nk(b"ROOT", true, (2, ri), (0, u32::MAX));
        let bytes = h.file(root);

        let hive = Hive::parse(&bytes).unwrap();
        let keys = hive.subkeys(hive.root()).unwrap();
        let names: Vec<String> = keys.iter().map(|k| hive.name(*k).unwrap()).collect();
        assert_eq!(names, ["Alpha", "Bêta"]);
        let alpha = hive.key("alpha").unwrap().unwrap();
        assert_eq!(hive.value(alpha, "big").unwrap().unwrap().data, big);
        let beta = hive.key("BÊTA").unwrap().unwrap();
        assert_eq!(hive.value(beta, "Small").unwrap().unwrap().dword(), Some(5));
    }

    #[test]
    fn a_key_listed_twice_or_endless_reading_is_refused() {
        // One key named a thousand times by one list: refused, not walked a thousand times.
        let mut h = HandHive::new();
        let leaf = h.nk(b"Leaf", true, (0, u32::MAX), (0, u32::MAX));
        let lh = h.list(b"lh", &vec![leaf; 1000], 8);
        let root = h.nk(b"ROOT", true, (1000, lh), (0, u32::MAX));
        let bytes = h.file(root);
        let hive = Hive::parse(&bytes).unwrap();
        assert_eq!(hive.subkeys(hive.root()), Err(ReadError::Repeated(lh)));
        // An index root naming the same list many times: refused too.
        let mut h = HandHive::new();
        let leaf = h.nk(b"Leaf", true, (0, u32::MAX), (0, u32::MAX));
        let li = h.list(b"li", &[leaf], 4);
        let ri = h.list(b"ri", &vec![li; 4000], 4);
        let root = h.nk(b"ROOT", true, (4000, ri), (0, u32::MAX));
        let bytes = h.file(root);
        let hive = Hive::parse(&bytes).unwrap();
        assert!(hive.subkeys(hive.root()).is_err());
        // Whatever the walk, it ends: asking again and again runs out of budget.
        let bytes = sample();
        let hive = Hive::parse(&bytes).unwrap();
        let svc = hive
            .key("ControlSet001\\Services\\recast-agent")
            .unwrap()
            .unwrap();
        let mut asked = 0u64;
        let err = loop {
            match hive.value(svc, "Blob") {
                Ok(_) => asked += 1,
                Err(e) => break e,
            }
            assert!(asked < 10_000_000, "the budget never ran out");
        };
        assert_eq!(err, ReadError::TooMuchWork);
        assert!(asked > 100, "a real walk is not cut short: {asked}");
    }

    #[test]
    fn every_single_byte_corruption_is_an_error_or_a_walk_never_a_panic() {
        let good = sample();
        for at in (BASE_BLOCK..good.len()).step_by(7) {
            let mut bytes = good.clone();
            bytes[at] ^= 0xA5;
            if let Ok(h) = Hive::parse(&bytes)
                && let Ok(Some(k)) = h.key("ControlSet001\\Services\\recast-agent")
            {
                let _ = h.value(k, "ImagePath");
            }
        }
    }
}
