//! Any `wevtutil qe /f:xml` output: events or a typed error, and each event converts to an
//! update, servicing or crash record or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_agent::events;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = events::parse_events(data) {
        for e in &list {
            let _ = events::to_update_event(e);
            let _ = events::to_servicing_event(e);
            let _ = events::to_crash_event(e);
        }
    }
});
