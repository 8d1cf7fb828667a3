//! A golden image's offline SOFTWARE and SYSTEM hives (untrusted bytes from the WIM) read by
//! recast's hive reader: every walk ends in a value or a typed error, never a panic, and never
//! more work than the bytes allow (the reader's budget; libFuzzer's timeout and RSS limit
//! catch a walk that escapes it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_core::regf::read::Hive;

fuzz_target!(|data: &[u8]| {
    // The two walks deployability makes, whole.
    let _ = recast_golden::deployable::read_software(data);
    let _ = recast_golden::deployable::read_system(data);
    let Ok(hive) = Hive::parse(data) else {
        return;
    };
    // Two levels of every key, and a value of each.
    let Ok(top) = hive.subkeys(hive.root()) else {
        return;
    };
    for key in top {
        let _ = hive.name(key);
        let _ = hive
            .value(key, "ImagePath")
            .map(|v| v.map(|v| (v.text(), v.dword())));
        if let Ok(below) = hive.subkeys(key) {
            for k in below {
                let _ = hive.value(k, "Start");
            }
        }
    }
});
