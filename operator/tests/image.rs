//! The recast-operator container image: `images/build.sh` builds `images/operator/Containerfile`
//! without a registry (a debootstrap base, buildah with chroot isolation) around this test
//! build's recast-operator and recastctl, and smoke-tests it inside the image (`--version`, an
//! embedded-mode run as the image's user with examples loaded: health, metrics, HTTP boot of
//! Debian's iPXE, recastctl reading the store, a clean stop).
//!
//! Needs root; without it the build skips loudly unless RECAST_REQUIRE_IMAGE=1 (set by CI).

use std::process::Command;

use recast_tests::{repo_root, skip_or_fail};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");

const REQUIRE_IMAGE: &str = "RECAST_REQUIRE_IMAGE";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The chart and the image agree: the chart's init container copies iPXE from where the
/// Containerfile puts it, and the user the chart runs as is the image's.
#[test]
fn chart_and_containerfile_agree_on_paths_and_user() {
    let containerfile = read("images/operator/Containerfile");
    let helpers = read("charts/recast/templates/_helpers.tpl");
    assert!(
        containerfile.contains("COPY --from=ipxe /out/ipxe/ /usr/share/recast/boot/ipxe/"),
        "the Containerfile no longer puts iPXE under /usr/share/recast/boot/ipxe/"
    );
    assert!(
        helpers.contains("[/bin/cp, -R, /usr/share/recast/boot, /var/lib/recast/]"),
        "the chart's init container no longer copies /usr/share/recast/boot into the data volume"
    );
    assert!(containerfile.contains("USER 65532:65532"));
    assert!(helpers.contains("runAsUser: 65532"));
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/recast-operator\"]"));
}

#[test]
fn image_builds_and_runs() {
    if !recast_tests::is_root() {
        skip_or_fail(
            REQUIRE_IMAGE,
            "the image build needs root (debootstrap, buildah's chroot isolation); run images/build.sh as root",
        );
        return;
    }
    // This test build's binaries, as they are: a cargo build from here would build another
    // feature set and replace the binaries that other tests are running. recastctl is built by
    // `cargo test --workspace` (make test) next to recast-operator.
    let bin_dir = std::path::Path::new(OPERATOR).parent().unwrap();
    assert!(
        bin_dir.join("recastctl").is_file(),
        "no recastctl next to {OPERATOR}: run `cargo build -p recastctl --ignore-rust-version` (make test builds it)"
    );
    // buildah's vfs storage copies every layer: keep it under target/, not in /tmp.
    let work = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("recast-image");
    let out = Command::new(repo_root().join("images/build.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .env("RECAST_IMAGE_WORK", &work)
        .env("RECAST_IMAGE_TAG", "localhost/recast-operator:test")
        .env("RECAST_IMAGE_CLEAN", "1")
        .output()
        .expect("run images/build.sh");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "images/build.sh failed:\n{log}");
    for want in [
        "recast-operator --version: recast-operator ",
        "iPXE: ipxe ",
        "smoke run: ready, healthy, metrics, HTTP boot with iPXE, recastctl reads the store, store owned by 65532, clean stop",
        "image localhost/recast-operator:test OK",
    ] {
        assert!(log.contains(want), "expected {want:?} in:\n{log}");
    }
}
