//! The fixed 208-byte WIM header, parsed from bytes with no I/O.
//!
//! Layout (little-endian): magic `MSWIM\0\0\0`, header size, version, flags, chunk size, GUID,
//! part number, total parts, image count, then four resource headers (blob/offset table, XML,
//! boot metadata, integrity table, with the boot index between the last two).

use serde::Serialize;

/// Size of the on-disk header. Every valid WIM starts with exactly this many header bytes.
pub const HEADER_LEN: usize = 208;
/// The eight magic bytes of a WIM (`MSWIM` and three NULs).
pub const WIM_MAGIC: [u8; 8] = *b"MSWIM\0\0\0";
/// The magic of a pipable WIM (`WLPWM` and three NULs), written by `wimlib-imagex capture
/// --pipable`; Windows cannot apply those.
pub const PIPABLE_MAGIC: [u8; 8] = *b"WLPWM\0\0\0";

/// Version of an ordinary WIM (1.13).
pub const VERSION_DEFAULT: u32 = 0x10d00;
/// Version of a WIM with solid (LZMS-packed) resources (an .esd, or `--solid`).
pub const VERSION_SOLID: u32 = 0xe00;

pub const FLAG_COMPRESSION: u32 = 0x0000_0002;
pub const FLAG_READONLY: u32 = 0x0000_0004;
pub const FLAG_SPANNED: u32 = 0x0000_0008;
pub const FLAG_RESOURCE_ONLY: u32 = 0x0000_0010;
pub const FLAG_METADATA_ONLY: u32 = 0x0000_0020;
pub const FLAG_WRITE_IN_PROGRESS: u32 = 0x0000_0040;
pub const FLAG_RP_FIX: u32 = 0x0000_0080;
pub const FLAG_COMPRESS_XPRESS: u32 = 0x0002_0000;
pub const FLAG_COMPRESS_LZX: u32 = 0x0004_0000;
pub const FLAG_COMPRESS_LZMS: u32 = 0x0008_0000;
pub const FLAG_COMPRESS_XPRESS2: u32 = 0x0020_0000;

/// Resource header flag: the resource is compressed.
pub const RESHDR_COMPRESSED: u8 = 0x04;
/// Resource header flag: the resource is metadata.
pub const RESHDR_METADATA: u8 = 0x02;
/// Resource header flag: a solid resource (several blobs compressed together).
pub const RESHDR_SOLID: u8 = 0x10;

/// Chunk sizes above this are not written by Windows or wimlib (LZMS tops out at 64 MiB);
/// anything larger is a damaged or hostile header.
pub const MAX_CHUNK_SIZE: u32 = 1 << 26;

/// A WIM header refused before anything else is read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error(
        "the file is {len} bytes, shorter than the {HEADER_LEN}-byte WIM header: it is truncated or not a WIM; copy it again"
    )]
    Truncated { len: u64 },
    #[error(
        "this is a pipable WIM (magic WLPWM), which Windows setup cannot apply; export it without --pipable (wimlib-imagex export SRC all DEST.wim)"
    )]
    Pipable,
    #[error(
        "not a WIM: the file starts with {found:02x?} instead of the magic \"MSWIM\\0\\0\\0\"; check that FILE is an install.wim"
    )]
    BadMagic { found: [u8; 8] },
    #[error(
        "the WIM header says it is {size} bytes long, but WIM headers are {HEADER_LEN}: the header is damaged"
    )]
    BadHeaderSize { size: u32 },
    #[error(
        "WIM version {version:#x} is not one recast knows ({VERSION_DEFAULT:#x} or {VERSION_SOLID:#x}); the file is damaged or from an unsupported writer"
    )]
    UnknownVersion { version: u32 },
    #[error(
        "the WIM header's flags name more than one compression format ({flags:#010x}): the header is damaged"
    )]
    ConflictingCompression { flags: u32 },
    #[error(
        "the WIM header's chunk size {chunk_size} is not a power of two between 4096 and {MAX_CHUNK_SIZE}: the header is damaged"
    )]
    BadChunkSize { chunk_size: u32 },
    #[error(
        "the WIM header says part {part} of {total}, which is impossible: the header is damaged"
    )]
    BadPartNumber { part: u16, total: u16 },
    #[error(
        "the {which} resource of the WIM runs from byte {offset} for {size} bytes, past the end of the {len}-byte file: the file is truncated or damaged; copy it again"
    )]
    ResourcePastEnd {
        which: &'static str,
        offset: u64,
        size: u64,
        len: u64,
    },
    #[error(
        "the WIM header's boot index {boot_index} is larger than its image count {image_count}: the header is damaged"
    )]
    BadBootIndex { boot_index: u32, image_count: u32 },
    #[error(
        "the WIM was being written when this copy was taken (write-in-progress flag set): wait for the writer to finish and copy it again"
    )]
    WriteInProgress,
}

/// Compression format of the WIM's resources, from the header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Compression {
    None,
    Xpress,
    Lzx,
    Lzms,
    /// XPRESS with a larger window; written by some Windows versions.
    Xpress2,
}

impl Compression {
    /// The name `wimlib-imagex info` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "None",
            Compression::Xpress => "XPRESS",
            Compression::Lzx => "LZX",
            Compression::Lzms => "LZMS",
            Compression::Xpress2 => "XPRESS2",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one resource lives in the file: a short resource header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ResourceHeader {
    /// Bytes the resource occupies in the file (56 bits on disk).
    pub size_in_wim: u64,
    pub flags: u8,
    pub offset: u64,
    /// Bytes once decompressed.
    pub original_size: u64,
}

impl ResourceHeader {
    fn parse(bytes: &[u8; 24]) -> ResourceHeader {
        let mut size = [0u8; 8];
        size[..7].copy_from_slice(&bytes[..7]);
        ResourceHeader {
            size_in_wim: u64::from_le_bytes(size),
            flags: bytes[7],
            offset: le_u64(&bytes[8..16]),
            original_size: le_u64(&bytes[16..24]),
        }
    }

    /// True when the header names no resource at all.
    pub fn is_empty(&self) -> bool {
        self.size_in_wim == 0
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & RESHDR_COMPRESSED != 0
    }

    /// First byte after the resource, or None when offset + size overflows.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.size_in_wim)
    }
}

/// The facts of a WIM header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WimHeader {
    pub version: u32,
    pub flags: u32,
    pub compression: Compression,
    /// Compression chunk size in bytes (0 or the default when uncompressed).
    pub chunk_size: u32,
    /// GUID as 32 lowercase hex digits, in the byte order `wimlib-imagex info --header` prints.
    pub guid: String,
    pub part_number: u16,
    pub total_parts: u16,
    pub image_count: u32,
    /// The blob table (Microsoft calls it the offset table / lookup table).
    pub blob_table: ResourceHeader,
    pub xml: ResourceHeader,
    pub boot_metadata: ResourceHeader,
    /// 1-based index of the bootable image, 0 for none.
    pub boot_index: u32,
    pub integrity: ResourceHeader,
}

impl WimHeader {
    /// Parses the first [`HEADER_LEN`] bytes of a WIM. `file_len` is the file's length, against
    /// which every resource header is checked so that nothing later reads past the end.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<WimHeader, HeaderError> {
        let Some(bytes) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::Truncated {
                len: bytes.len() as u64,
            });
        };
        if file_len < HEADER_LEN as u64 {
            return Err(HeaderError::Truncated { len: file_len });
        }
        let magic: [u8; 8] = array(&bytes[0..8]);
        if magic == PIPABLE_MAGIC {
            return Err(HeaderError::Pipable);
        }
        if magic != WIM_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let header_size = le_u32(&bytes[8..12]);
        if header_size as usize != HEADER_LEN {
            return Err(HeaderError::BadHeaderSize { size: header_size });
        }
        let version = le_u32(&bytes[12..16]);
        if version != VERSION_DEFAULT && version != VERSION_SOLID {
            return Err(HeaderError::UnknownVersion { version });
        }
        let flags = le_u32(&bytes[16..20]);
        if flags & FLAG_WRITE_IN_PROGRESS != 0 {
            return Err(HeaderError::WriteInProgress);
        }
        let compression = compression_from_flags(flags)?;
        let chunk_size = le_u32(&bytes[20..24]);
        // Uncompressed WIMs may carry 0 or any leftover value; only compressed ones use it.
        if compression != Compression::None
            && (!chunk_size.is_power_of_two() || !(4096..=MAX_CHUNK_SIZE).contains(&chunk_size))
        {
            return Err(HeaderError::BadChunkSize { chunk_size });
        }
        let guid: String = bytes[24..40].iter().map(|b| format!("{b:02x}")).collect();
        let part_number = le_u16(&bytes[40..42]);
        let total_parts = le_u16(&bytes[42..44]);
        if part_number == 0 || total_parts == 0 || part_number > total_parts {
            return Err(HeaderError::BadPartNumber {
                part: part_number,
                total: total_parts,
            });
        }
        let image_count = le_u32(&bytes[44..48]);
        let blob_table = ResourceHeader::parse(&array(&bytes[48..72]));
        let xml = ResourceHeader::parse(&array(&bytes[72..96]));
        let boot_metadata = ResourceHeader::parse(&array(&bytes[96..120]));
        let boot_index = le_u32(&bytes[120..124]);
        let integrity = ResourceHeader::parse(&array(&bytes[124..148]));
        for (which, res) in [
            ("blob table", &blob_table),
            ("XML", &xml),
            ("boot metadata", &boot_metadata),
            ("integrity table", &integrity),
        ] {
            if res.is_empty() {
                continue;
            }
            match res.end() {
                Some(end) if res.offset >= HEADER_LEN as u64 && end <= file_len => {}
                _ => {
                    return Err(HeaderError::ResourcePastEnd {
                        which,
                        offset: res.offset,
                        size: res.size_in_wim,
                        len: file_len,
                    });
                }
            }
        }
        // Split parts after the first carry no images; only a part that lists images can
        // point at one of them to boot.
        if boot_index > image_count {
            return Err(HeaderError::BadBootIndex {
                boot_index,
                image_count,
            });
        }
        Ok(WimHeader {
            version,
            flags,
            compression,
            chunk_size,
            guid,
            part_number,
            total_parts,
            image_count,
            blob_table,
            xml,
            boot_metadata,
            boot_index,
            integrity,
        })
    }

    pub fn has_integrity_table(&self) -> bool {
        !self.integrity.is_empty()
    }

    pub fn is_split(&self) -> bool {
        self.total_parts > 1
    }

    pub fn is_solid(&self) -> bool {
        self.version == VERSION_SOLID
    }

    /// The names of the set flags, as `wimlib-imagex info --header` lists them.
    pub fn flag_names(&self) -> Vec<&'static str> {
        [
            (FLAG_COMPRESSION, "WIM_HDR_FLAG_COMPRESSION"),
            (FLAG_READONLY, "WIM_HDR_FLAG_READONLY"),
            (FLAG_SPANNED, "WIM_HDR_FLAG_SPANNED"),
            (FLAG_RESOURCE_ONLY, "WIM_HDR_FLAG_RESOURCE_ONLY"),
            (FLAG_METADATA_ONLY, "WIM_HDR_FLAG_METADATA_ONLY"),
            (FLAG_RP_FIX, "WIM_HDR_FLAG_RP_FIX"),
            (FLAG_COMPRESS_XPRESS, "WIM_HDR_FLAG_COMPRESS_XPRESS"),
            (FLAG_COMPRESS_LZX, "WIM_HDR_FLAG_COMPRESS_LZX"),
            (FLAG_COMPRESS_LZMS, "WIM_HDR_FLAG_COMPRESS_LZMS"),
            (FLAG_COMPRESS_XPRESS2, "WIM_HDR_FLAG_COMPRESS_XPRESS_2"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.flags & bit != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

fn compression_from_flags(flags: u32) -> Result<Compression, HeaderError> {
    if flags & FLAG_COMPRESSION == 0 {
        return Ok(Compression::None);
    }
    let named: Vec<Compression> = [
        (FLAG_COMPRESS_XPRESS, Compression::Xpress),
        (FLAG_COMPRESS_LZX, Compression::Lzx),
        (FLAG_COMPRESS_LZMS, Compression::Lzms),
        (FLAG_COMPRESS_XPRESS2, Compression::Xpress2),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, c)| c)
    .collect();
    match named.as_slice() {
        [one] => Ok(*one),
        _ => Err(HeaderError::ConflictingCompression { flags }),
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes(array(b))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(array(b))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(array(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as wimlib writes it for a one-image LZX WIM with an integrity table.
    pub(crate) fn sample() -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&WIM_MAGIC);
        h[8..12].copy_from_slice(&208u32.to_le_bytes());
        h[12..16].copy_from_slice(&VERSION_DEFAULT.to_le_bytes());
        h[16..20]
            .copy_from_slice(&(FLAG_COMPRESSION | FLAG_COMPRESS_LZX | FLAG_RP_FIX).to_le_bytes());
        h[20..24].copy_from_slice(&32768u32.to_le_bytes());
        h[24..40].copy_from_slice(&[0xab; 16]);
        h[40..42].copy_from_slice(&1u16.to_le_bytes());
        h[42..44].copy_from_slice(&1u16.to_le_bytes());
        h[44..48].copy_from_slice(&1u32.to_le_bytes());
        put_res(&mut h, 48, 100, 0x02, 465, 100);
        put_res(&mut h, 72, 1068, 0x00, 565, 1068);
        put_res(&mut h, 124, 32, 0x00, 1633, 32);
        h
    }

    fn put_res(h: &mut [u8], at: usize, size: u64, flags: u8, offset: u64, orig: u64) {
        h[at..at + 7].copy_from_slice(&size.to_le_bytes()[..7]);
        h[at + 7] = flags;
        h[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
        h[at + 16..at + 24].copy_from_slice(&orig.to_le_bytes());
    }

    #[test]
    fn parses_a_wimlib_header() {
        let h = WimHeader::parse(&sample(), 1665).unwrap();
        assert_eq!(h.version, VERSION_DEFAULT);
        assert_eq!(h.compression, Compression::Lzx);
        assert_eq!(h.chunk_size, 32768);
        assert_eq!((h.part_number, h.total_parts, h.image_count), (1, 1, 1));
        assert_eq!(h.blob_table.offset, 465);
        assert_eq!(h.blob_table.flags, 0x02);
        assert_eq!(h.xml.size_in_wim, 1068);
        assert_eq!(h.integrity.offset, 1633);
        assert!(h.has_integrity_table());
        assert_eq!(h.guid, "ab".repeat(16));
        assert_eq!(
            h.flag_names(),
            vec![
                "WIM_HDR_FLAG_COMPRESSION",
                "WIM_HDR_FLAG_RP_FIX",
                "WIM_HDR_FLAG_COMPRESS_LZX"
            ]
        );
    }

    #[test]
    fn refuses_short_input() {
        let s = sample();
        assert_eq!(
            WimHeader::parse(&s[..100], 100),
            Err(HeaderError::Truncated { len: 100 })
        );
        assert_eq!(
            WimHeader::parse(&s, 150),
            Err(HeaderError::Truncated { len: 150 })
        );
    }

    #[test]
    fn refuses_wrong_and_pipable_magic() {
        let mut s = sample();
        s[0] = b'X';
        assert!(matches!(
            WimHeader::parse(&s, 1665),
            Err(HeaderError::BadMagic { .. })
        ));
        s[0..8].copy_from_slice(&PIPABLE_MAGIC);
        assert_eq!(WimHeader::parse(&s, 1665), Err(HeaderError::Pipable));
    }

    #[test]
    fn refuses_resources_past_the_end() {
        // The file was cut after the XML: the integrity table is gone.
        let err = WimHeader::parse(&sample(), 1640).unwrap_err();
        assert!(matches!(
            err,
            HeaderError::ResourcePastEnd {
                which: "integrity table",
                ..
            }
        ));
        assert!(err.to_string().contains("copy it again"));
        // An offset that overflows when the size is added.
        let mut s = sample();
        put_res(&mut s, 72, 1068, 0, u64::MAX - 10, 1068);
        assert!(matches!(
            WimHeader::parse(&s, 1665),
            Err(HeaderError::ResourcePastEnd { which: "XML", .. })
        ));
        // A resource that claims to overlap the header.
        let mut s = sample();
        put_res(&mut s, 72, 10, 0, 100, 10);
        assert!(WimHeader::parse(&s, 1665).is_err());
    }

    #[test]
    fn refuses_damaged_fields() {
        type Case = (usize, Vec<u8>, fn(&HeaderError) -> bool);
        let cases: Vec<Case> = vec![
            (8, 200u32.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::BadHeaderSize { size: 200 })
            }),
            (12, 0x10c00u32.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::UnknownVersion { .. })
            }),
            (
                16,
                (FLAG_COMPRESSION | FLAG_COMPRESS_LZX | FLAG_COMPRESS_XPRESS)
                    .to_le_bytes()
                    .to_vec(),
                |e| matches!(e, HeaderError::ConflictingCompression { .. }),
            ),
            (16, FLAG_COMPRESSION.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::ConflictingCompression { .. })
            }),
            (
                16,
                (FLAG_COMPRESSION | FLAG_COMPRESS_LZX | FLAG_WRITE_IN_PROGRESS)
                    .to_le_bytes()
                    .to_vec(),
                |e| matches!(e, HeaderError::WriteInProgress),
            ),
            (20, 1000u32.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::BadChunkSize { chunk_size: 1000 })
            }),
            (20, (1u32 << 31).to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::BadChunkSize { .. })
            }),
            (40, 3u16.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::BadPartNumber { part: 3, total: 1 })
            }),
            (40, 0u16.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::BadPartNumber { part: 0, .. })
            }),
            (120, 2u32.to_le_bytes().to_vec(), |e| {
                matches!(e, HeaderError::BadBootIndex { boot_index: 2, .. })
            }),
        ];
        for (at, bytes, expect) in cases {
            let mut s = sample();
            s[at..at + bytes.len()].copy_from_slice(&bytes);
            let err = WimHeader::parse(&s, 1665).unwrap_err();
            assert!(expect(&err), "offset {at}: unexpected {err:?}");
        }
    }

    #[test]
    fn uncompressed_ignores_chunk_size() {
        let mut s = sample();
        s[16..20].copy_from_slice(&0u32.to_le_bytes());
        s[20..24].copy_from_slice(&0u32.to_le_bytes());
        let h = WimHeader::parse(&s, 1665).unwrap();
        assert_eq!(h.compression, Compression::None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// Any byte soup, and any mutation of a valid header, gives a header or a typed error.
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), len in 0u64..u64::MAX) {
            let _ = WimHeader::parse(&bytes, len);
        }

        #[test]
        fn mutated_headers_parse_or_fail_cleanly(flips in proptest::collection::vec((0usize..HEADER_LEN, proptest::prelude::any::<u8>()), 1..8), len in 0u64..4096) {
            let mut s = sample();
            for (at, v) in flips { s[at] = v; }
            if let Ok(h) = WimHeader::parse(&s, len) {
                for r in [h.blob_table, h.xml, h.boot_metadata, h.integrity] {
                    proptest::prop_assert!(r.is_empty() || r.end().is_some_and(|e| e <= len));
                }
            }
        }
    }
}
