//! The WIM's XML metadata: UTF-16LE (with a byte-order mark) describing each image — name,
//! edition, architecture, version and languages — as the capturing tool recorded them.
//!
//! These are claims, not proof: anyone can rewrite them (`wimlib-imagex info --image-property`).
//! The deep check compares them with the servicing packages inside the image.

use serde::Serialize;

use crate::build::Build;

/// The largest XML resource recast reads. A Windows install.wim with a dozen editions has a
/// few dozen KiB of XML; a header claiming more is damaged or hostile.
pub const MAX_XML_BYTES: u64 = 16 * 1024 * 1024;
/// Nodes of the parsed XML tree recast accepts (elements, attributes and text).
pub const MAX_XML_NODES: u32 = 500_000;
/// Images per WIM recast accepts (the GoldenImage imageIndex is capped at 256 as well).
pub const MAX_IMAGES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error(
        "the WIM's XML metadata is {size} bytes, more than the {MAX_XML_BYTES} recast reads: the header is damaged"
    )]
    TooLarge { size: u64 },
    #[error(
        "the WIM's XML metadata is compressed, which no WIM writer does: the header is damaged"
    )]
    Compressed,
    #[error(
        "the WIM has no XML metadata (its header names none): the file is damaged or incomplete"
    )]
    Missing,
    #[error(
        "the WIM's XML metadata is not UTF-16LE text ({why}): the file is damaged; rebuild or copy it again"
    )]
    NotUtf16 { why: String },
    #[error("the WIM's XML metadata is not well-formed XML ({why}): the file is damaged")]
    Malformed { why: String },
    #[error("the WIM's XML metadata has no <WIM> root element but <{found}>: the file is damaged")]
    WrongRoot { found: String },
    #[error(
        "the WIM's XML metadata lists more than {MAX_IMAGES} images: the file is damaged or hostile"
    )]
    TooManyImages,
    #[error(
        "the WIM's XML has an IMAGE element with INDEX {index:?}, not a number from 1 to {MAX_IMAGES}"
    )]
    BadIndex { index: String },
    #[error("the WIM's XML lists image {index} twice: the file is damaged")]
    DuplicateIndex { index: u32 },
    #[error("the WIM's XML field {field} of image {index} is {value:?}, not a number")]
    BadNumber {
        index: u32,
        field: &'static str,
        value: String,
    },
}

/// Facts the XML records about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    /// 1-based index.
    pub index: u32,
    pub name: Option<String>,
    pub description: Option<String>,
    pub display_name: Option<String>,
    /// WINDOWS/EDITIONID, such as "Enterprise" or "Professional".
    pub edition: Option<String>,
    /// WINDOWS/ARCH as Windows writes it (0 x86, 5 ARM, 6 IA-64, 9 x64, 12 ARM64).
    pub arch_code: Option<u32>,
    pub product_name: Option<String>,
    /// WINDOWS/INSTALLATIONTYPE, such as "Client" or "Server".
    pub installation_type: Option<String>,
    pub major_version: Option<u32>,
    pub minor_version: Option<u32>,
    /// WINDOWS/VERSION/BUILD, such as 26100.
    pub build: Option<u32>,
    /// WINDOWS/VERSION/SPBUILD: the update build revision (UBR), such as 7623.
    pub sp_build: Option<u32>,
    pub sp_level: Option<u32>,
    pub languages: Vec<String>,
    pub default_language: Option<String>,
    pub dir_count: Option<u64>,
    pub file_count: Option<u64>,
    pub total_bytes: Option<u64>,
    pub hard_link_bytes: Option<u64>,
}

impl ImageInfo {
    /// The architecture name recast uses (the CRD's `amd64`/`arm64`, and the rest by their
    /// Windows servicing names).
    pub fn arch(&self) -> Option<&'static str> {
        arch_name(self.arch_code?)
    }

    /// build.UBR when the XML records both.
    pub fn build_ubr(&self) -> Option<Build> {
        Some(Build::new(self.build?, self.sp_build?))
    }
}

/// Servicing name of a Windows PROCESSOR_ARCHITECTURE code.
pub fn arch_name(code: u32) -> Option<&'static str> {
    match code {
        0 => Some("x86"),
        5 => Some("arm"),
        6 => Some("ia64"),
        9 => Some("amd64"),
        12 => Some("arm64"),
        _ => None,
    }
}

/// The whole XML document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WimXml {
    /// <WIM><TOTALBYTES>: the size of the WIM as its writer recorded it.
    pub total_bytes: Option<u64>,
    /// Sorted by index.
    pub images: Vec<ImageInfo>,
}

impl WimXml {
    pub fn image(&self, index: u32) -> Option<&ImageInfo> {
        self.images.iter().find(|i| i.index == index)
    }
}

/// Decodes the raw XML resource (UTF-16LE, normally with a BOM) and parses it.
pub fn parse_xml_resource(raw: &[u8]) -> Result<WimXml, XmlError> {
    if raw.len() as u64 > MAX_XML_BYTES {
        return Err(XmlError::TooLarge {
            size: raw.len() as u64,
        });
    }
    let text = decode_utf16le(raw)?;
    parse_xml_text(&text)
}

/// UTF-16LE to a String. A BOM is skipped; a big-endian BOM is refused; a trailing NUL (some
/// writers add one) is dropped.
pub fn decode_utf16le(raw: &[u8]) -> Result<String, XmlError> {
    if !raw.len().is_multiple_of(2) {
        return Err(XmlError::NotUtf16 {
            why: format!("odd length {}", raw.len()),
        });
    }
    let mut units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    match units.first() {
        Some(0xFEFF) => {
            units.remove(0);
        }
        Some(0xFFFE) => {
            return Err(XmlError::NotUtf16 {
                why: "big-endian byte-order mark".into(),
            });
        }
        _ => {}
    }
    while units.last() == Some(&0) {
        units.pop();
    }
    String::from_utf16(&units).map_err(|e| XmlError::NotUtf16 { why: e.to_string() })
}

/// Parses the XML text of a WIM.
pub fn parse_xml_text(text: &str) -> Result<WimXml, XmlError> {
    let options = roxmltree::ParsingOptions {
        // WIM XML never uses a DTD; refusing it rules out entity-expansion tricks.
        allow_dtd: false,
        // About 40 nodes per image; this bounds the tree whatever the text holds.
        nodes_limit: MAX_XML_NODES,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options)
        .map_err(|e| XmlError::Malformed { why: e.to_string() })?;
    let root = doc.root_element();
    if root.tag_name().name() != "WIM" {
        return Err(XmlError::WrongRoot {
            found: truncate(root.tag_name().name(), 64),
        });
    }
    let mut out = WimXml::default();
    for child in root.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "TOTALBYTES" => {
                out.total_bytes = text_of(child).and_then(|t| t.parse().ok());
            }
            "IMAGE" => {
                if out.images.len() >= MAX_IMAGES {
                    return Err(XmlError::TooManyImages);
                }
                let image = parse_image(child)?;
                if out.images.iter().any(|i| i.index == image.index) {
                    return Err(XmlError::DuplicateIndex { index: image.index });
                }
                out.images.push(image);
            }
            _ => {}
        }
    }
    out.images.sort_by_key(|i| i.index);
    Ok(out)
}

fn parse_image(node: roxmltree::Node<'_, '_>) -> Result<ImageInfo, XmlError> {
    let raw_index = node.attribute("INDEX").unwrap_or("");
    let index: u32 = match raw_index.trim().parse() {
        Ok(i) if (1..=MAX_IMAGES as u32).contains(&i) => i,
        _ => {
            return Err(XmlError::BadIndex {
                index: truncate(raw_index, 32),
            });
        }
    };
    let mut info = ImageInfo {
        index,
        ..Default::default()
    };
    let num_u64 = |field: &'static str,
                   n: roxmltree::Node<'_, '_>|
     -> Result<Option<u64>, XmlError> { parse_number(index, field, n) };
    let num_u32 =
        |field: &'static str, n: roxmltree::Node<'_, '_>| -> Result<Option<u32>, XmlError> {
            match parse_number(index, field, n)? {
                None => Ok(None),
                Some(v) => u32::try_from(v).map(Some).map_err(|_| XmlError::BadNumber {
                    index,
                    field,
                    value: v.to_string(),
                }),
            }
        };
    for child in node.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "NAME" => info.name = text_of(child),
            "DESCRIPTION" => info.description = text_of(child),
            "DISPLAYNAME" => info.display_name = text_of(child),
            "DIRCOUNT" => info.dir_count = num_u64("DIRCOUNT", child)?,
            "FILECOUNT" => info.file_count = num_u64("FILECOUNT", child)?,
            "TOTALBYTES" => info.total_bytes = num_u64("TOTALBYTES", child)?,
            "HARDLINKBYTES" => info.hard_link_bytes = num_u64("HARDLINKBYTES", child)?,
            "WINDOWS" => {
                for w in child.children().filter(|n| n.is_element()) {
                    match w.tag_name().name() {
                        "ARCH" => info.arch_code = num_u32("WINDOWS/ARCH", w)?,
                        "PRODUCTNAME" => info.product_name = text_of(w),
                        "EDITIONID" => info.edition = text_of(w),
                        "INSTALLATIONTYPE" => info.installation_type = text_of(w),
                        "LANGUAGES" => {
                            for l in w.children().filter(|n| n.is_element()) {
                                match l.tag_name().name() {
                                    "LANGUAGE" => {
                                        if let Some(t) = text_of(l) {
                                            info.languages.push(t);
                                        }
                                    }
                                    "DEFAULT" => info.default_language = text_of(l),
                                    _ => {}
                                }
                            }
                        }
                        "VERSION" => {
                            for v in w.children().filter(|n| n.is_element()) {
                                match v.tag_name().name() {
                                    "MAJOR" => info.major_version = num_u32("VERSION/MAJOR", v)?,
                                    "MINOR" => info.minor_version = num_u32("VERSION/MINOR", v)?,
                                    "BUILD" => info.build = num_u32("VERSION/BUILD", v)?,
                                    "SPBUILD" => info.sp_build = num_u32("VERSION/SPBUILD", v)?,
                                    "SPLEVEL" => info.sp_level = num_u32("VERSION/SPLEVEL", v)?,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Decimal, or hexadecimal with 0x as some writers record sizes.
fn parse_number(
    index: u32,
    field: &'static str,
    node: roxmltree::Node<'_, '_>,
) -> Result<Option<u64>, XmlError> {
    let Some(text) = text_of(node) else {
        return Ok(None);
    };
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map(Some).map_err(|_| XmlError::BadNumber {
        index,
        field,
        value: truncate(&text, 32),
    })
}

fn text_of(node: roxmltree::Node<'_, '_>) -> Option<String> {
    let text: String = node
        .children()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect();
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// `text` with each edit applied in turn: (position, 0 replace / 1 drop / 2 insert, char);
/// never empty (a '<' stands in), so every edit has a place. For the mutation tests of the
/// readers of untrusted text.
#[cfg(test)]
pub(crate) fn mutated(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, op, c) in edits {
        if chars.is_empty() {
            chars.push('<');
        }
        let at = at % chars.len();
        match op {
            0 => chars[at] = c,
            1 => {
                chars.remove(at);
            }
            _ => chars.insert(at, c),
        }
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"<WIM><TOTALBYTES>4816566272</TOTALBYTES><IMAGE INDEX="1"><DIRCOUNT>23112</DIRCOUNT><FILECOUNT>102930</FILECOUNT><TOTALBYTES>19811234651</TOTALBYTES><HARDLINKBYTES>8340281211</HARDLINKBYTES><CREATIONTIME><HIGHPART>0x01DC8F5E</HIGHPART><LOWPART>0x1A4B7C20</LOWPART></CREATIONTIME><WINDOWS><ARCH>9</ARCH><PRODUCTNAME>Microsoft® Windows® Operating System</PRODUCTNAME><EDITIONID>Enterprise</EDITIONID><INSTALLATIONTYPE>Client</INSTALLATIONTYPE><PRODUCTTYPE>WinNT</PRODUCTTYPE><LANGUAGES><LANGUAGE>en-US</LANGUAGE><LANGUAGE>de-DE</LANGUAGE><DEFAULT>en-US</DEFAULT></LANGUAGES><VERSION><MAJOR>10</MAJOR><MINOR>0</MINOR><BUILD>26100</BUILD><SPBUILD>7623</SPBUILD><SPLEVEL>0</SPLEVEL></VERSION><SYSTEMROOT>WINDOWS</SYSTEMROOT></WINDOWS><NAME>Windows 11 Enterprise</NAME><DESCRIPTION>Windows 11 Enterprise</DESCRIPTION><FLAGS>Enterprise</FLAGS><DISPLAYNAME>Windows 11 Enterprise</DISPLAYNAME></IMAGE></WIM>"#;

    fn utf16_with_bom(s: &str) -> Vec<u8> {
        let mut out = vec![0xFF, 0xFE];
        for u in s.encode_utf16() {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    }

    #[test]
    fn parses_a_windows_install_wim_xml() {
        let x = parse_xml_resource(&utf16_with_bom(SAMPLE)).unwrap();
        assert_eq!(x.total_bytes, Some(4816566272));
        let i = x.image(1).unwrap();
        assert_eq!(i.name.as_deref(), Some("Windows 11 Enterprise"));
        assert_eq!(i.edition.as_deref(), Some("Enterprise"));
        assert_eq!(i.arch(), Some("amd64"));
        assert_eq!(i.installation_type.as_deref(), Some("Client"));
        assert_eq!(i.build_ubr(), Some(Build::new(26100, 7623)));
        assert_eq!(i.languages, vec!["en-US", "de-DE"]);
        assert_eq!(i.default_language.as_deref(), Some("en-US"));
        assert_eq!(i.total_bytes, Some(19811234651));
        assert_eq!(i.file_count, Some(102930));
        assert_eq!(
            i.product_name.as_deref(),
            Some("Microsoft® Windows® Operating System")
        );
    }

    #[test]
    fn accepts_no_bom_and_trailing_nul() {
        let mut raw = utf16_with_bom(SAMPLE)[2..].to_vec();
        raw.extend_from_slice(&[0, 0]);
        assert_eq!(parse_xml_resource(&raw).unwrap().images.len(), 1);
    }

    #[test]
    fn sorts_images_and_refuses_duplicates() {
        let x = parse_xml_text(r#"<WIM><IMAGE INDEX="2"/><IMAGE INDEX="1"/></WIM>"#).unwrap();
        assert_eq!(
            x.images.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            parse_xml_text(r#"<WIM><IMAGE INDEX="1"/><IMAGE INDEX="1"/></WIM>"#),
            Err(XmlError::DuplicateIndex { index: 1 })
        );
    }

    #[test]
    fn refuses_bad_input_with_typed_errors() {
        assert!(matches!(
            parse_xml_resource(&[0xFF, 0xFE, 0x3C]),
            Err(XmlError::NotUtf16 { .. })
        ));
        assert!(matches!(
            parse_xml_resource(&[0xFE, 0xFF, 0, 0x3C]),
            Err(XmlError::NotUtf16 { .. })
        ));
        // An unpaired surrogate.
        assert!(matches!(
            parse_xml_resource(&[0xFF, 0xFE, 0x00, 0xD8]),
            Err(XmlError::NotUtf16 { .. })
        ));
        assert!(matches!(
            parse_xml_text("<WIM><IMAGE>"),
            Err(XmlError::Malformed { .. })
        ));
        assert!(matches!(
            parse_xml_text("<FOO/>"),
            Err(XmlError::WrongRoot { .. })
        ));
        assert!(matches!(
            parse_xml_text(r#"<WIM><IMAGE INDEX="x"/></WIM>"#),
            Err(XmlError::BadIndex { .. })
        ));
        assert!(matches!(
            parse_xml_text(r#"<WIM><IMAGE INDEX="0"/></WIM>"#),
            Err(XmlError::BadIndex { .. })
        ));
        assert!(matches!(
            parse_xml_text(r#"<WIM><IMAGE INDEX="1"/><IMAGE INDEX="999"/></WIM>"#),
            Err(XmlError::BadIndex { .. })
        ));
        let err = parse_xml_text(r#"<WIM><IMAGE INDEX="1"><WINDOWS><VERSION><SPBUILD>76x3</SPBUILD></VERSION></WINDOWS></IMAGE></WIM>"#).unwrap_err();
        assert_eq!(
            err,
            XmlError::BadNumber {
                index: 1,
                field: "VERSION/SPBUILD",
                value: "76x3".into()
            }
        );
        assert!(err.to_string().contains("76x3"));
        assert!(matches!(
            parse_xml_text(
                r#"<WIM><IMAGE INDEX="1"><WINDOWS><VERSION><BUILD>99999999999</BUILD></VERSION></WINDOWS></IMAGE></WIM>"#
            ),
            Err(XmlError::BadNumber { .. })
        ));
        // Entity-expansion bombs need a DTD; it is refused.
        let bomb = r#"<!DOCTYPE WIM [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><WIM><TOTALBYTES>&b;</TOTALBYTES></WIM>"#;
        assert!(matches!(
            parse_xml_text(bomb),
            Err(XmlError::Malformed { .. })
        ));
        let many: String = (1..=257)
            .map(|i| format!(r#"<IMAGE INDEX="{i}"/>"#))
            .collect();
        // Index 257 fails the index check before the count check; both are refusals.
        assert!(parse_xml_text(&format!("<WIM>{many}</WIM>")).is_err());
        let wide: String = "<A/>".repeat(MAX_XML_NODES as usize + 1);
        assert!(matches!(
            parse_xml_text(&format!("<WIM>{wide}</WIM>")),
            Err(XmlError::Malformed { .. })
        ));
        let too_big = vec![0u8; MAX_XML_BYTES as usize + 2];
        assert!(matches!(
            parse_xml_resource(&too_big),
            Err(XmlError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_arch_codes_have_no_name() {
        assert_eq!(arch_name(12), Some("arm64"));
        assert_eq!(arch_name(7), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_xml_resource(&bytes);
        }

        /// Mutations of a real document: flipped, dropped and duplicated characters.
        #[test]
        fn mutated_documents_never_panic(edits in proptest::collection::vec((0usize..SAMPLE.len(), 0u8..3, proptest::prelude::any::<char>()), 1..12)) {
            let _ = parse_xml_text(&mutated(SAMPLE, &edits));
        }
    }
}
