//! Any 208-byte-or-other prefix and any claimed file length: the WIM header parser returns a
//! header or a typed error, never panics, and every resource it accepts lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_golden::header::WimHeader;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, bytes) = data.split_at(8);
    let file_len = u64::from_le_bytes(len.try_into().unwrap()) % (1 << 40);
    if let Ok(h) = WimHeader::parse(bytes, file_len) {
        for r in [h.blob_table, h.xml, h.boot_metadata, h.integrity] {
            assert!(r.is_empty() || r.end().is_some_and(|e| e <= file_len));
        }
    }
});
