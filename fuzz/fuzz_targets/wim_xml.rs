//! Any bytes as a WIM's XML resource (UTF-16LE with or without BOM): parsed or a typed error,
//! never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = recast_golden::xml::parse_xml_resource(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = recast_golden::xml::parse_xml_text(text);
    }
});
