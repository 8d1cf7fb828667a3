//! Any bytes a client sends to the boot HTTP port: the head reader finds the end of the head
//! or not, routes it (artifact, hyper, or 400) without panicking, and an artifact request's
//! conditions give an answer whose body lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_operator::boot::artifacts::{self, Conditions};
use recast_operator::boot::listener::{MAX_HEAD, Route, head_end, route};

fuzz_target!(|data: &[u8]| {
    let Some(end) = head_end(data) else {
        return;
    };
    assert!(data[..end].ends_with(b"\r\n\r\n"));
    if end > MAX_HEAD {
        return;
    }
    let Route::Artifact(req) = route(&data[..end]) else {
        return;
    };
    for size in [0u64, 1, 4096, u64::MAX] {
        let reply = artifacts::reply(
            size,
            "\"etag\"",
            Conditions {
                range: req.range.as_deref(),
                if_none_match: req.if_none_match.as_deref(),
                if_range: req.if_range.as_deref(),
            },
        );
        if let Some((start, len)) = reply.body {
            assert!(start.checked_add(len).is_some_and(|e| e <= size));
        }
    }
});
