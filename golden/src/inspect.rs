//! Reads a WIM's header and XML from a file: two bounded reads, whatever the file's size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::header::{HEADER_LEN, HeaderError, WimHeader};
use crate::xml::{MAX_XML_BYTES, WimXml, XmlError, parse_xml_resource};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Header {
        path: PathBuf,
        #[source]
        source: HeaderError,
    },
    #[error("{path}: {source}")]
    Xml {
        path: PathBuf,
        #[source]
        source: XmlError,
    },
    #[error(
        "{path}: the header lists {header} images but the XML describes {xml}: the file is damaged"
    )]
    ImageCountMismatch {
        path: PathBuf,
        header: u32,
        xml: usize,
    },
}

/// What a WIM says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub path: PathBuf,
    pub file_size: u64,
    pub header: WimHeader,
    pub xml: WimXml,
}

/// Reads the header and XML of the WIM at `path`.
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let io = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    (&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    let header = WimHeader::parse(&head, file_size).map_err(|source| InspectError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    let xml_err = |source| InspectError::Xml {
        path: path.to_path_buf(),
        source,
    };
    if header.xml.is_empty() {
        return Err(xml_err(XmlError::Missing));
    }
    if header.xml.is_compressed() {
        return Err(xml_err(XmlError::Compressed));
    }
    // Checked before allocating: the size comes from the file.
    if header.xml.size_in_wim > MAX_XML_BYTES {
        return Err(xml_err(XmlError::TooLarge {
            size: header.xml.size_in_wim,
        }));
    }
    file.seek(SeekFrom::Start(header.xml.offset)).map_err(io)?;
    let mut raw = Vec::with_capacity(header.xml.size_in_wim as usize);
    file.take(header.xml.size_in_wim)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let xml = parse_xml_resource(&raw).map_err(xml_err)?;
    // Only the first part of a split WIM counts images; the others repeat the XML with a
    // count of 0 in some writers, so the check is for parts that claim images.
    if header.image_count != 0 && header.image_count as usize != xml.images.len() {
        return Err(InspectError::ImageCountMismatch {
            path: path.to_path_buf(),
            header: header.image_count,
            xml: xml.images.len(),
        });
    }
    Ok(Inspection {
        path: path.to_path_buf(),
        file_size,
        header,
        xml,
    })
}

/// The other parts of a split WIM, by wimlib's and DISM's naming (`install.swm`,
/// `install2.swm`, `install3.swm`, ...), each checked to belong to the same set.
pub fn split_parts(first: &Path, header: &WimHeader) -> Result<Vec<PathBuf>, SplitError> {
    if header.total_parts <= 1 {
        return Ok(Vec::new());
    }
    if header.part_number != 1 {
        return Err(SplitError::NotFirstPart {
            path: first.to_path_buf(),
            part: header.part_number,
            total: header.total_parts,
        });
    }
    let stem = first
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = first
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let dir = first.parent().unwrap_or(Path::new("."));
    let mut parts = Vec::new();
    for n in 2..=header.total_parts {
        let p = dir.join(format!("{stem}{n}{ext}"));
        let part = inspect_header_only(&p).map_err(|e| SplitError::Part {
            path: p.clone(),
            why: e.to_string(),
        })?;
        if part.guid != header.guid
            || part.part_number != n
            || part.total_parts != header.total_parts
        {
            return Err(SplitError::Foreign {
                path: p,
                part: part.part_number,
                total: part.total_parts,
            });
        }
        parts.push(p);
    }
    Ok(parts)
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(
        "{path} is part {part} of {total} of a split WIM; give the first part (the .swm without a number)"
    )]
    NotFirstPart {
        path: PathBuf,
        part: u16,
        total: u16,
    },
    #[error(
        "split WIM part {path} is missing or unreadable ({why}); keep all .swm parts next to the first"
    )]
    Part { path: PathBuf, why: String },
    #[error(
        "{path} is not from the same split WIM (it says part {part} of {total} with another GUID); keep each set's parts together"
    )]
    Foreign {
        path: PathBuf,
        part: u16,
        total: u16,
    },
}

fn inspect_header_only(path: &Path) -> Result<WimHeader, InspectError> {
    let io = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    WimHeader::parse(&head, len).map_err(|source| InspectError::Header {
        path: path.to_path_buf(),
        source,
    })
}
