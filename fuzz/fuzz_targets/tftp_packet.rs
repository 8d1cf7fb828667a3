//! Any datagram: the parser returns a packet or a typed error, never panics, and whatever it
//! accepts re-encodes to bytes that parse to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_operator::boot::tftp::packet::{encode, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = parse(data) {
        let again = encode(&packet);
        assert_eq!(parse(&again).as_ref(), Ok(&packet));
    }
});
