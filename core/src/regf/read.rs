//! A bounded reader of registry hives: finds a key by path and reads its values and subkeys,
//! which is all recast asks of a golden image's offline SOFTWARE and SYSTEM hives.
//!
//! Why recast reads hives itself (docs/first-boot.md, "Deployable golden images"): the registry
//! crates on crates.io are GPL (`nt-hive`, `nt_hive2`, not usable in an Apache-2.0 product),
//! do not build with today's dependencies (`notatin` 1.0.1 against nom 8), or assume the root
//! key is the first cell and abort (`unimplemented!()`) on cells they do not expect
//! (`frnsc-hive`). The reader is pure and total: every offset and count is checked against the
//! bytes before use, so a damaged or hostile hive gives an [`ReadError`], never a panic (the
//! `regf_read` fuzz target holds it to that), and tests read hives written by hivex, an
//! independent writer.
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
}

/// More subkeys than one key can hold in any real hive: a count beyond it is damage.
const MAX_SUBKEYS: usize = 1 << 20;
/// Value-name or key-name bytes beyond which a name is damage (Windows limits names to 255
/// and 16383 characters).
const MAX_NAME_BYTES: usize = 32_768;
/// Segments a big-data value may have (a value is at most 1 MiB in practice; 64 segments of
/// 16344 bytes).
const MAX_SEGMENTS: usize = 4096;

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
        for k in self.subkeys(key)? {
            if self.name(k)?.to_lowercase() == name.to_lowercase() {
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
        let mut out = Vec::with_capacity(count);
        self.collect_list(list, &mut out, true)?;
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
        self.data
            .get(at + 4..at + len)
            .ok_or(ReadError::BadCell(offset))
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
