//! recast's Linux imaging environment for the QEMU tiers: `imager/env/build.sh` around the
//! recast-imager this cargo build made (next to the test binary's directory), cached by content
//! under target/imaging-environment, so every suite and every run shares one build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// target/debug (or the profile dir) holding the workspace's binaries: the test binary lives in
/// its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("deps/");
    deps.parent().expect("the profile directory").to_path_buf()
}

/// Builds (or takes from the cache) `root/linux/{vmlinuz,initrd}`; `scratch` holds the imager
/// without debug info (the initrd stays small and the cache key follows the code).
pub fn build(root: &Path, scratch: &Path) {
    let built = bin_dir().join("recast-imager");
    assert!(
        built.is_file(),
        "no {}: `make test` (cargo test --workspace) builds it; alone: cargo build -p recast-imager",
        built.display()
    );
    std::fs::create_dir_all(scratch).unwrap();
    let stripped = scratch.join("recast-imager");
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg(&built)
        .arg("-o")
        .arg(&stripped)
        .status()
        .expect("run strip (binutils)");
    assert!(ok.success(), "strip recast-imager");
    let ok = Command::new(crate::repo_root().join("imager/env/build.sh"))
        .arg("--imager")
        .arg(&stripped)
        .arg("--out")
        .arg(root)
        .stdout(Stdio::null())
        .status()
        .expect("run imager/env/build.sh");
    assert!(
        ok.success(),
        "imager/env/build.sh failed (packages: imager/env/setup.sh)"
    );
}
