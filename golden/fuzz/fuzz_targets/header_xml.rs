#![no_main]
//! Arbitrary bytes as a WIM header (with an arbitrary file length), as an XML resource, and as
//! a servicing manifest: each must give facts or a typed error, never a panic, and an accepted
//! header never points outside the file.

use libfuzzer_sys::fuzz_target;
use recast_golden::header::WimHeader;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let len = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        if let Ok(h) = WimHeader::parse(&data[8..], len) {
            for r in [h.blob_table, h.xml, h.boot_metadata, h.integrity] {
                assert!(r.is_empty() || r.end().is_some_and(|e| e <= len));
            }
        }
    }
    let _ = recast_golden::xml::parse_xml_resource(data);
    let _ = recast_golden::servicing::kbs_in_manifest("fuzz.mum", data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = recast_golden::servicing::parse_rollup_name(s);
        let _ = recast_golden::build::Build::parse(s);
    }
});
