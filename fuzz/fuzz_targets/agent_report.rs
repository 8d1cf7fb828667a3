//! Any request body the gateway receives: a valid report or a typed error; whatever is
//! accepted re-encodes to a body that decodes to the same report.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_crds::report::AgentReport;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = AgentReport::from_json(data) {
        let again = serde_json::to_vec(&report).unwrap();
        assert_eq!(AgentReport::from_json(&again).ok(), Some(report));
    }
});
