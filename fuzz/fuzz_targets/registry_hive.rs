//! A golden image's offline SOFTWARE and SYSTEM hives (untrusted bytes from the WIM) read by
//! recast's hive reader: every walk ends in a value or a typed error, never a panic, and never
//! more work than the bytes allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_core::regf::read::Hive;

fuzz_target!(|data: &[u8]| {
    let Ok(hive) = Hive::parse(data) else {
        return;
    };
    // Two levels of every key, every value lookup recast makes, and a path walk.
    let Ok(top) = hive.subkeys(hive.root()) else {
        return;
    };
    for key in top.into_iter().take(64) {
        let _ = hive.name(key);
        let _ = hive.value(key, "ImagePath").map(|v| v.map(|v| (v.text(), v.dword())));
        if let Ok(below) = hive.subkeys(key) {
            for k in below.into_iter().take(64) {
                let _ = hive.value(k, "Start");
            }
        }
    }
    let _ = hive.key("Microsoft\\Windows\\CurrentVersion\\Setup\\State");
});
