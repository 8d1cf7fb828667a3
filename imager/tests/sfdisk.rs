//! The partition plans against the real sfdisk (util-linux): write each plan's script to an
//! image file, read the table back with `sfdisk --json`, and compare it with the plan. Skips
//! loudly without sfdisk unless RECAST_REQUIRE_IMAGER=1.

use std::process::Command;

use recast_imager::layout::{BootMode, GptIds, Sizes, plan, render_sfdisk, verify};

fn sfdisk() -> Option<std::path::PathBuf> {
    ["/usr/sbin/sfdisk", "/sbin/sfdisk", "/usr/bin/sfdisk"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn sfdisk_writes_and_reads_back_every_plan() {
    let Some(sfdisk) = sfdisk() else {
        recast_tests::skip_or_fail(
            "RECAST_REQUIRE_IMAGER",
            "sfdisk is not installed (apt-get install fdisk)",
        );
        return;
    };
    let ids = GptIds {
        disk: "6f1d2a4e-93b0-4c52-9d3e-0a1b2c3d4e5f".into(),
        esp: "6f1d2a4e-93b0-4c52-9d3e-000000000001".into(),
        msr: "6f1d2a4e-93b0-4c52-9d3e-000000000002".into(),
        windows: "6f1d2a4e-93b0-4c52-9d3e-000000000003".into(),
        recovery: "6f1d2a4e-93b0-4c52-9d3e-000000000004".into(),
    };
    let sizes = Sizes {
        recovery_bytes: 512 << 20,
        min_windows_bytes: 1 << 30,
    };
    let dir = tempfile::tempdir().unwrap();
    for (mode, gib) in [
        (BootMode::Uefi, 4u64),
        (BootMode::Bios, 4),
        (BootMode::Uefi, 37),
    ] {
        let image = dir.path().join(format!("{mode:?}-{gib}.img"));
        // Sparse: the file takes no space beyond the tables.
        std::fs::File::create(&image)
            .unwrap()
            .set_len(gib << 30)
            .unwrap();
        let p = plan(mode, gib << 30, 512, &ids, "5eed1e55", sizes).unwrap();
        if let Err(e) = recast_tests::readback::write_table(&image, &render_sfdisk(&p)) {
            panic!("{mode:?} {gib} GiB: sfdisk refused the script: {e}");
        }
        let json = Command::new(&sfdisk)
            .arg("--json")
            .arg(&image)
            .output()
            .unwrap();
        assert!(json.status.success());
        let read = String::from_utf8(json.stdout).unwrap();
        assert_eq!(verify(&p, &read), Ok(()), "{mode:?} {gib} GiB: {read}");
    }
}
