//! Golden tests of every rendered boot file, for every boot mode. Windows cannot run here, so
//! the files WinPE and Windows Setup read are pinned byte for byte (operator/tests/golden/boot)
//! and their load-bearing lines are asserted by name. `RECAST_UPDATE_GOLDEN=1` rewrites the
//! golden files after a deliberate template change; review the diff.

use std::path::PathBuf;

use recast_operator::boot::render::{
    AttemptView, DomainJoin, ImageFile, ImagingEnvironment, Renderer, SiteSettings,
    obscure_admin_password,
};
use recast_operator::store::BootIntent;

const BASE: &str = "http://10.0.40.2:8081";

fn intent(mode: &str) -> BootIntent {
    BootIntent {
        namespace: "store-042".into(),
        endpoint: "kiosk-01".into(),
        mac_addresses: vec!["52:54:00:a1:00:01".into()],
        attempt_id: "kiosk-01-7f3a".into(),
        try_number: 2,
        image: "win11-24h2-2026-01".into(),
        image_digest: Some(
            "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011".into(),
        ),
        boot_mode: mode.into(),
        armed_at: "2026-01-14T08:00:00Z".into(),
    }
}

fn image() -> ImageFile {
    ImageFile {
        url: format!(
            "{BASE}/artifacts/images/3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011.wim"
        ),
        sha256: "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011".into(),
        size: 5_368_709_120,
        index: 1,
    }
}

fn golden(name: &str, actual: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/boot");
    recast_tests::assert_golden(&dir.join(name), actual);
}

#[test]
fn ipxe_scripts() {
    let r = Renderer::new().unwrap();
    let boot = r.boot_ipxe(BASE).unwrap();
    assert!(boot.starts_with("#!ipxe\n"));
    assert!(boot.contains("chain --autofree http://10.0.40.2:8081/boot/${net0/mac}"));
    golden("boot.ipxe", &boot);

    let local_bios = r.local("store-042/kiosk-01", "bios").unwrap();
    assert!(local_bios.contains("sanboot --no-describe --drive 0x80"));
    golden("local-bios.ipxe", &local_bios);
    let local_uefi = r.local("store-042/kiosk-01", "uefi").unwrap();
    assert!(!local_uefi.contains("sanboot"));
    assert!(local_uefi.trim_end().ends_with("exit"));
    golden("local-uefi.ipxe", &local_uefi);

    for mode in ["uefi", "bios"] {
        let i = intent(mode);
        let view = AttemptView::new(BASE, &i);
        let winpe = r
            .imaging_script(ImagingEnvironment::Winpe, BASE, &view)
            .unwrap();
        for line in [
            "kernel http://10.0.40.2:8081/artifacts/winpe/wimboot gui",
            "initrd http://10.0.40.2:8081/artifacts/winpe/BCD BCD",
            "initrd http://10.0.40.2:8081/artifacts/winpe/boot.sdi boot.sdi",
            "initrd http://10.0.40.2:8081/artifacts/winpe/boot.wim boot.wim",
            "initrd http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/startnet.cmd startnet.cmd",
            "initrd http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/winpeshl.ini winpeshl.ini",
        ] {
            assert!(winpe.contains(line), "{mode}: missing {line:?}\n{winpe}");
        }
        // Anyone can ask for this script: it names what to boot and holds no secret.
        assert!(!winpe.contains("token"), "{winpe}");
        golden(&format!("imaging-winpe-{mode}.ipxe"), &winpe);
        let linux = r
            .imaging_script(ImagingEnvironment::Linux, BASE, &view)
            .unwrap();
        assert!(linux.contains(
            "recast.claim=http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/claim"
        ));
        assert!(!linux.contains("token"), "{linux}");
        golden(&format!("imaging-linux-{mode}.ipxe"), &linux);
        let wds = r.wds("store-042", "kiosk-01", mode, "10.0.40.9").unwrap();
        let expected = if mode == "bios" {
            "chain tftp://10.0.40.9/boot\\x64\\wdsnbp.com"
        } else {
            "chain tftp://10.0.40.9/boot\\x64\\wdsmgfw.efi"
        };
        assert!(wds.contains(expected), "{wds}");
        golden(&format!("wds-{mode}.ipxe"), &wds);
    }
}

#[test]
fn startnet_partitions_applies_and_reports_for_each_boot_mode() {
    let r = Renderer::new().unwrap();
    let site = SiteSettings::default();
    let uefi_intent = intent("uefi");
    let uefi = r
        .startnet(&AttemptView::new(BASE, &uefi_intent), &image(), &site)
        .unwrap();
    // Windows' cmd.exe wants CRLF.
    assert!(uefi.contains("\r\n") && !uefi.replace("\r\n", "").contains('\n'));
    for line in [
        "wpeinit",
        "\"%RECAST_URL%/claim?format=text\"",
        "if not defined RECAST_TOKEN",
        "echo convert gpt",
        "echo create partition efi size=260",
        "echo format quick fs=fat32 label=\"System\"",
        "echo create partition msr size=16",
        "echo set id=\"de94bba4-06d1-4d40-a16a-bfd50179d6ac\"",
        "echo gpt attributes=0x8000000000000001",
        "-C - -o W:\\recast\\image.wim",
        "findstr /i /x \"3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011\"",
        "dism /Apply-Image /ImageFile:W:\\recast\\image.wim /Index:1 /ApplyDir:W:\\",
        "bcdboot W:\\Windows /s S: /f UEFI",
        "W:\\Windows\\Panther\\unattend.xml",
        "W:\\ProgramData\\recast\\agent.json",
        "\"%RECAST_URL%/progress\"",
        "\"%RECAST_URL%/result\"",
        "wpeutil reboot",
    ] {
        assert!(uefi.contains(line), "UEFI startnet.cmd lacks {line:?}");
    }
    assert!(!uefi.contains("echo active"));
    // The try is claimed before the disk is touched: a machine that cannot claim it (another
    // holds it) leaves the disk alone.
    assert!(uefi.find("/claim?format=text") < uefi.find("diskpart /s"));
    assert!(
        !uefi.contains("set \"RECAST_TOKEN=0"),
        "no token is rendered in"
    );
    golden("startnet-uefi.cmd", &uefi);

    let bios_intent = intent("bios");
    let bios = r
        .startnet(&AttemptView::new(BASE, &bios_intent), &image(), &site)
        .unwrap();
    for line in [
        "echo active",
        "echo set id=27",
        "bcdboot W:\\Windows /s S: /f BIOS",
    ] {
        assert!(bios.contains(line), "BIOS startnet.cmd lacks {line:?}");
    }
    assert!(!bios.contains("convert gpt"));
    golden("startnet-bios.cmd", &bios);

    let winpeshl = r.winpeshl().unwrap();
    assert!(winpeshl.contains("[LaunchApps]\r\n"));
    assert!(winpeshl.contains("wpeinit.exe"));
    golden("winpeshl.ini", &winpeshl);
}

#[test]
fn unattend_sets_hostname_locale_admin_and_domain_and_escapes_values() {
    let r = Renderer::new().unwrap();
    let i = intent("uefi");
    let view = AttemptView::new(BASE, &i);
    let plain = r
        .unattend(&view, "KIOSK-01", "amd64", &SiteSettings::default())
        .unwrap();
    assert_eq!(
        recast_tests::unattend::problems(&plain, "amd64"),
        Vec::<String>::new()
    );
    assert!(plain.contains("<ComputerName>KIOSK-01</ComputerName>"));
    assert!(plain.contains("<UILanguage>en-US</UILanguage>"));
    assert!(
        !plain.contains("AdministratorPassword"),
        "no password: account stays disabled"
    );
    assert!(!plain.contains("UnattendedJoin"));
    golden("unattend-plain.xml", &plain);

    let site = SiteSettings {
        locale: "de-DE".into(),
        time_zone: "W. Europe Standard Time".into(),
        admin_password: Some(obscure_admin_password("S3cret!")),
        domain: Some(DomainJoin {
            name: "corp.example".into(),
            ou: Some("OU=Kiosks,DC=corp,DC=example".into()),
            username: "join".into(),
            password: "p<&>\"'".into(),
        }),
        ..SiteSettings::default()
    };
    let joined = r.unattend(&view, "KIOSK-01", "amd64", &site).unwrap();
    assert_eq!(
        recast_tests::unattend::problems(&joined, "amd64"),
        Vec::<String>::new()
    );
    assert!(joined.contains("<PlainText>false</PlainText>"));
    assert!(
        !joined.contains("S3cret!"),
        "the password is never in clear text"
    );
    assert!(joined.contains("<JoinDomain>corp.example</JoinDomain>"));
    assert!(joined.contains("<MachineObjectOU>OU=Kiosks,DC=corp,DC=example</MachineObjectOU>"));
    assert!(
        joined.contains("<Password>p&lt;&amp;&gt;&quot;&#x27;</Password>"),
        "XML special characters are escaped:\n{joined}"
    );
    golden("unattend-joined.xml", &joined);

    // Windows on Arm: every component names the image's architecture, or Setup skips it.
    let arm = r.unattend(&view, "KIOSK-01", "arm64", &site).unwrap();
    assert_eq!(
        recast_tests::unattend::problems(&arm, "arm64"),
        Vec::<String>::new()
    );
    assert!(!arm.contains("\"amd64\""), "{arm}");
    assert!(
        !recast_tests::unattend::problems(&arm, "amd64").is_empty(),
        "the checker tells the architectures apart"
    );
}

#[test]
fn unattend_architecture_is_the_images() {
    use recast_crds::golden_image::Arch;
    use recast_operator::boot::http::unattend_arch;
    assert_eq!(
        unattend_arch(Some("arm64"), Some(Arch::Amd64)),
        "arm64",
        "facts win"
    );
    assert_eq!(unattend_arch(Some("AMD64"), None), "amd64");
    assert_eq!(unattend_arch(None, Some(Arch::Arm64)), "arm64");
    assert_eq!(
        unattend_arch(Some("ia64"), Some(Arch::Arm64)),
        "arm64",
        "unknown facts: the spec"
    );
    assert_eq!(unattend_arch(None, None), "amd64");
}

/// agent.json as the reimage flow writes it into the new image: the update mode is part of it,
/// so an immutable endpoint's agent holds quality updates from its first report on.
#[test]
fn agent_configuration() {
    use recast_operator::boot::http::AgentConfig;
    let config = AgentConfig {
        namespace: "default".into(),
        endpoint: "kiosk-01".into(),
        attempt_id: "kiosk-01-0b5e2c1a-3".into(),
        gateway_url: Some("https://recast.example:8443".into()),
        enrollment_token: "e".repeat(64),
        update_mode: recast_crds::policy::UpdateMode::Immutable,
    };
    let json = serde_json::to_string_pretty(&config).unwrap() + "\n";
    assert!(json.contains(r#""updateMode": "immutable""#), "{json}");
    golden("agent-immutable.json", &json);
}

/// Runs GRUB's own parser over a rendered configuration: `grub-script-check` (grub-common,
/// which tests/pxe/setup.sh installs). Skips loudly without it, unless the PXE tier is required.
fn grub_script_check(name: &str, cfg: &str) {
    use std::io::Write;
    let child = std::process::Command::new("grub-script-check")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("RECAST_REQUIRE_PXE").is_none(),
                "grub-script-check is required (RECAST_REQUIRE_PXE) but cannot run: {e}; apt-get install grub-common"
            );
            eprintln!("SKIP grub-script-check for {name}: {e} (apt-get install grub-common)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cfg.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "GRUB refuses {name}: {}{}\n{cfg}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grub_configurations_of_the_signed_chain() {
    let r = Renderer::new().unwrap();
    let root = r.grub_root().unwrap();
    assert!(
        root.contains(r#"  source "/grub/recast/${net_default_mac}.cfg""#),
        "{root}"
    );
    assert!(
        root.contains("for attempt in 1 2 3; do"),
        "asked again: {root}"
    );
    assert!(root.trim_end().ends_with("exit"));
    grub_script_check("grub.cfg", &root);
    golden("grub.cfg", &root);

    let local = r.grub_local("store-042/kiosk-01").unwrap();
    for line in [
        "echo 'recast: store-042/kiosk-01: no reimage armed, booting the local disk'",
        "if search --no-floppy --file --set=root /EFI/Microsoft/Boot/bootmgfw.efi; then",
        "  chainloader /EFI/Microsoft/Boot/bootmgfw.efi",
    ] {
        assert!(local.contains(line), "missing {line:?}\n{local}");
    }
    grub_script_check("local.grub.cfg", &local);
    golden("local.grub.cfg", &local);

    let i = intent("uefi");
    let view = AttemptView::new(BASE, &i);
    let linux = r.grub_imaging(ImagingEnvironment::Linux, &view).unwrap();
    for line in [
        "if linux /linux/vmlinuz console=ttyS0 quiet 'recast.claim=http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/claim'; then",
        "  if initrd /linux/initrd; then",
        "    boot",
    ] {
        assert!(linux.contains(line), "missing {line:?}\n{linux}");
    }
    // Anyone can ask for this file: it names what to boot and holds no secret.
    assert!(!linux.contains("token"), "{linux}");
    grub_script_check("imaging-linux.grub.cfg", &linux);
    golden("imaging-linux.grub.cfg", &linux);

    let winpe = r.grub_imaging(ImagingEnvironment::Winpe, &view).unwrap();
    assert!(!winpe.contains("linux "), "{winpe}");
    grub_script_check("imaging-winpe.grub.cfg", &winpe);
    golden("imaging-winpe.grub.cfg", &winpe);
}

#[test]
fn grub_values_cannot_break_out_of_their_quotes_or_comments() {
    let r = Renderer::new().unwrap();
    // A name is a DNS label today; the quoting must hold whatever comes.
    let who = "x'; reboot; echo '\nset root=(hd9)";
    let local = r.grub_local(who).unwrap();
    assert!(
        local.contains(r#"echo 'recast: x'\''; reboot; echo '\''"#),
        "{local}"
    );
    let mut i = intent("uefi");
    i.endpoint = "kiosk\nreboot".into();
    i.image = "img'x".into();
    let view = AttemptView::new(BASE, &i);
    let linux = r.grub_imaging(ImagingEnvironment::Linux, &view).unwrap();
    assert!(
        !linux.lines().any(|l| l.trim() == "reboot"),
        "a value started a command line:\n{linux}"
    );
    for (name, cfg) in [("hostile local", &local), ("hostile imaging", &linux)] {
        grub_script_check(name, cfg);
    }
    assert_eq!(
        recast_operator::boot::render::grub_single_quoted("a'b"),
        r"a'\''b"
    );
    assert_eq!(
        recast_operator::boot::render::grub_comment("a\nb\rc"),
        "a b c"
    );
}
