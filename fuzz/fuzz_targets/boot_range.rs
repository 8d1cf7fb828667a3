//! Any Range header against any file size: a full answer, an unsatisfiable one, or a
//! partial one that lies inside the file; the reply's Content-Length and Content-Range agree
//! with the bytes it sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_operator::boot::artifacts::{Conditions, RangeAnswer, parse_range, reply};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, value) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap());
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    match parse_range(Some(value), size) {
        RangeAnswer::Full | RangeAnswer::Unsatisfiable => {}
        RangeAnswer::Partial {
            start,
            end_inclusive,
        } => assert!(start <= end_inclusive && end_inclusive < size),
    }
    let r = reply(
        size,
        "\"t\"",
        Conditions {
            range: Some(value),
            ..Default::default()
        },
    );
    if let Some((start, len)) = r.body {
        assert!(start.checked_add(len).is_some_and(|e| e <= size));
        let length = r
            .headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.clone());
        assert_eq!(length, Some(len.to_string()));
    }
});
