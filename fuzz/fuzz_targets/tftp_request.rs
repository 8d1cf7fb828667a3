//! A read request end to end through the pure decisions: parse, path rules, option
//! negotiation. An accepted path never leaves the root; negotiated values stay in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_operator::boot::tftp::options::{Limits, negotiate};
use recast_operator::boot::tftp::packet::{Packet, parse};
use recast_operator::boot::tftp::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(Packet::Rrq(request)) = parse(data) else {
        return;
    };
    if let Ok(path) = normalize(&request.filename) {
        let rel = path.to_relative_path_buf();
        assert!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        );
    }
    let limits = Limits::default();
    let n = negotiate(
        &request.options,
        request.mode,
        Some(data.len() as u64),
        &limits,
    );
    assert!((8..=65464).contains(&n.blksize));
    assert!(n.windowsize >= 1 && n.windowsize <= limits.max_windowsize);
    assert!(
        usize::from(n.windowsize) * usize::from(n.blksize) <= limits.max_window_bytes.max(65464)
    );
});
