//! Any bytes as a golden WIM, through exactly what the sandboxed deep-check child runs
//! (`recast_golden::sandbox::run_child`: the `wim` crate opens the archive and extracts
//! Windows\servicing\Packages, recast reads the manifests). The reply is always one JSON
//! object the parent can read; a crash, leak or overflow here is one ASan reports.
//!
//! Slow per input (a file and a scratch directory each time): seed it with a real WIM
//! (fuzz/seeds/wim_deep/).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recast_golden::deep::DeepOptions;
use recast_golden::sandbox::{ChildReply, ChildRequest, run_child};

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("recast-fuzz-wim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("input.wim");
    std::fs::write(&path, data).expect("write the input");
    let mut out = Vec::new();
    run_child(
        &ChildRequest {
            path,
            index: 1,
            options: DeepOptions::default(),
        },
        &mut out,
    )
    .expect("the reply is written");
    let reply: ChildReply = serde_json::from_slice(&out).expect("the reply parses");
    if let ChildReply::Evidence(e) = reply {
        assert!(e.rollups.windows(2).all(|w| w[0].build >= w[1].build));
    }
});
