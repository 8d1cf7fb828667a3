//! Turning Windows' tool output into text, as Windows really writes it to a pipe:
//! - `wevtutil … /uni:true` writes UTF-16LE, with or without a byte-order mark;
//! - `reg.exe` and `fsutil.exe` write in the console's OEM code page (850 on German and French
//!   systems, 932 on Japanese, 936 on Chinese, 437 on US English), which the agent reads once
//!   from the registry (`HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage`, value `OEMCP`).
//!
//! Decisions read only ASCII tokens (value names, REG_ types, hex and decimal numbers, XML
//! markup); everything else is decoded as well as the code page allows and never makes a probe
//! fail: a byte the code page does not map becomes U+FFFD.

/// Which code page `reg.exe` and `fsutil.exe` wrote in, when the agent knows it.
pub type OemCodePage = Option<u16>;

/// Text written by `wevtutil /uni:true` (UTF-16LE, with or without a BOM), or UTF-8 (with or
/// without a BOM) from a capture made another way. None when it is neither.
pub fn decode_event_xml(bytes: &[u8]) -> Option<String> {
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        return utf16le(rest);
    }
    if looks_like_utf16le(bytes) {
        return utf16le(bytes);
    }
    // UTF-16 cut to an odd length: not text, rather than NULs read as UTF-8.
    if bytes.len() >= 2 && bytes[1] == 0 {
        return None;
    }
    let bytes = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(bytes);
    String::from_utf8(bytes.to_vec()).ok()
}

/// Console output of `reg.exe` or `fsutil.exe` in the OEM code page `cp` (UTF-16 or UTF-8 when
/// the bytes say so). Never fails: what cannot be decoded becomes U+FFFD.
pub fn decode_console(bytes: &[u8], cp: OemCodePage) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        return utf16le_lossy(rest);
    }
    if looks_like_utf16le(bytes) {
        return utf16le_lossy(bytes);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return String::from_utf8_lossy(rest).into_owned();
    }
    if bytes.is_ascii() {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    match cp {
        Some(65001) => String::from_utf8_lossy(bytes).into_owned(),
        Some(932) => dbcs(encoding_rs::SHIFT_JIS, bytes),
        Some(936) => dbcs(encoding_rs::GBK, bytes),
        Some(949) => dbcs(encoding_rs::EUC_KR, bytes),
        Some(950) => dbcs(encoding_rs::BIG5, bytes),
        Some(n) => match oem_cp::code_table::DECODING_TABLE_CP_MAP.get(&n) {
            Some(table) => table.decode_string_lossy(bytes),
            None => ascii_lossy(bytes),
        },
        // Unknown: UTF-8 if it is that, else keep the ASCII and mark the rest.
        None => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => ascii_lossy(bytes),
        },
    }
}

fn dbcs(encoding: &'static encoding_rs::Encoding, bytes: &[u8]) -> String {
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

fn ascii_lossy(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b.is_ascii() { b as char } else { '\u{FFFD}' })
        .collect()
}

/// UTF-16LE without a BOM: an even length, and the text starts with an ASCII character
/// followed by a zero byte ('<', '\r', a letter), as every tool output recast reads does.
fn looks_like_utf16le(bytes: &[u8]) -> bool {
    bytes.len() >= 2
        && bytes.len().is_multiple_of(2)
        && bytes[0] != 0
        && bytes[0].is_ascii()
        && bytes[1] == 0
}

fn units(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// UTF-16LE text; an unpaired surrogate (a damaged record) becomes U+FFFD instead of losing
/// the whole log: only the ASCII markup is read.
fn utf16le(bytes: &[u8]) -> Option<String> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    Some(String::from_utf16_lossy(&units(bytes)))
}

fn utf16le_lossy(bytes: &[u8]) -> String {
    String::from_utf16_lossy(&units(bytes))
}

/// Whether [`decode_console`] has a table for this code page (else it reads ASCII only).
pub fn decodes_code_page(cp: u16) -> bool {
    matches!(cp, 65001 | 932 | 936 | 949 | 950)
        || oem_cp::code_table::DECODING_TABLE_CP_MAP.contains_key(&cp)
}

/// The OEM code page from `reg query HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage /v
/// OEMCP` (ASCII in every language).
pub fn oem_code_page(reg_output: &str) -> Option<u16> {
    crate::tools::reg_sz_number(reg_output, "OEMCP")
        .ok()
        .and_then(|n| u16::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str, bom: bool) -> Vec<u8> {
        let mut out = if bom { vec![0xff, 0xfe] } else { vec![] };
        for u in s.encode_utf16() {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    }

    #[test]
    fn event_xml_in_every_shape_windows_writes() {
        let xml = "<Events><Event Name='Kumulatives Update für Windows'/></Events>\r\n";
        for bytes in [
            utf16(xml, true),
            utf16(xml, false),
            xml.as_bytes().to_vec(),
            [&[0xef, 0xbb, 0xbf][..], xml.as_bytes()].concat(),
        ] {
            assert_eq!(decode_event_xml(&bytes).as_deref(), Some(xml));
        }
        // Not text: an odd UTF-16 length (with or without a BOM), or bytes that are neither.
        assert_eq!(decode_event_xml(&[0xff, 0xfe, b'<']), None);
        assert_eq!(decode_event_xml(&[b'<', 0, b'a']), None);
        // A damaged record (an unpaired surrogate) costs one character, not the log.
        assert_eq!(
            decode_event_xml(&[b'<', 0, 0x00, 0xd8, b'>', 0]).as_deref(),
            Some("<\u{FFFD}>")
        );
        assert_eq!(decode_event_xml(b"<a>\xfc</a>"), None);
    }

    #[test]
    fn console_output_in_the_oem_code_pages() {
        // "für" and a no-break space digit separator (0xFF) in cp850.
        assert_eq!(
            decode_console(b"f\x81r 52\xff343", Some(850)),
            "für 52\u{a0}343"
        );
        // Japanese and Chinese labels in cp932 and cp936.
        let ja = encoding_rs::SHIFT_JIS.encode("空きバイト総数").0;
        assert_eq!(decode_console(&ja, Some(932)), "空きバイト総数");
        let zh = encoding_rs::GBK.encode("可用字节总数").0;
        assert_eq!(decode_console(&zh, Some(936)), "可用字节总数");
        // Unknown code page: the ASCII survives, the rest is marked.
        assert_eq!(
            decode_console(b"UBR \x81 0x1dc7", None),
            "UBR \u{FFFD} 0x1dc7"
        );
        assert_eq!(decode_console(b"UBR \x81", Some(1)), "UBR \u{FFFD}");
        // ASCII and UTF-16 whatever the code page.
        assert_eq!(decode_console(b"UBR 0x1dc7", Some(932)), "UBR 0x1dc7");
        assert_eq!(decode_console(&utf16("UBR", false), Some(850)), "UBR");
    }

    #[test]
    fn the_code_page_from_reg() {
        let out = "\r\nHKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Control\\Nls\\CodePage\r\n    OEMCP    REG_SZ    850\r\n\r\n";
        assert_eq!(oem_code_page(out), Some(850));
        assert_eq!(oem_code_page("    OEMCP    REG_SZ    x\r\n"), None);
        assert_eq!(oem_code_page(""), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), cp in proptest::option::of(proptest::prelude::any::<u16>())) {
            let _ = decode_event_xml(&bytes);
            let text = decode_console(&bytes, cp);
            // ASCII bytes are never lost (outside UTF-16 input).
            if !looks_like_utf16le(&bytes) && !bytes.starts_with(&[0xff, 0xfe]) && bytes.is_ascii() {
                proptest::prop_assert_eq!(text.as_bytes(), &bytes[..]);
            }
        }
    }
}
