//! `recastctl bootkit check DIR [--install BOOT_ROOT] [--trust CERT]` on real Authenticode-signed
//! PE files. No Microsoft-signed bootmgfw.efi exists on this machine, so Debian's signed shim
//! (two signatures: Microsoft UEFI CA 2011 and 2023) and GRUB (Debian Secure Boot CA), cached by
//! `imager/env/signed-chain.sh` under target/signed-chain/, stand in for it; the unsigned PE is
//! Debian's iPXE. Without the cache the tests skip loudly, or fail with RECAST_REQUIRE_PXE=1
//! (`.ci/run` runs tests/pxe/setup.sh, which fills it). The generated BCD is read back with
//! hivexml (libhivex-bin), an implementation independent of recast's writer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use recast_core::winpe_boot::{self, KitFile};
use recast_tests::bcd_xml::{self, Value};

mod common;
use common::{code, ctl, text};

const UNSIGNED_PE: &str = "/usr/lib/ipxe/snponly.efi";

/// The cached signed chain: (shimx64.efi, grubx64.efi), or None after skipping.
fn signed() -> Option<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("RECAST_SIGNED_CHAIN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| recast_tests::repo_root().join("target/signed-chain"));
    let found = fs::read_dir(&cache).ok().and_then(|dirs| {
        dirs.filter_map(Result::ok)
            .map(|d| d.path())
            .find(|d| d.join("shimx64.efi").is_file() && d.join("grubx64.efi").is_file())
    });
    match found {
        Some(d) => Some((d.join("shimx64.efi"), d.join("grubx64.efi"))),
        None => {
            recast_tests::skip_or_fail(
                "RECAST_REQUIRE_PXE",
                &format!(
                    "bootkit: no signed PE files under {} (run imager/env/signed-chain.sh --out /tmp/x, or tests/pxe/setup.sh)",
                    cache.display()
                ),
            );
            None
        }
    }
}

/// A flat kit: `bootmgr` as bootmgfw.efi, a minimal SDI and WIM (their magic and some bytes).
fn flat_kit(dir: &Path, bootmgr: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::copy(bootmgr, dir.join("bootmgfw.efi")).unwrap();
    fs::write(
        dir.join("boot.sdi"),
        b"$SDI0001 stand-in system deployment image",
    )
    .unwrap();
    fs::write(dir.join("boot.wim"), b"MSWIM\0\0\0 stand-in WinPE image").unwrap();
}

/// Runs `bootkit check DIR`, which must refuse the kit (exit 1); its stderr.
fn refused(dir: &Path) -> String {
    let out = ctl(&["bootkit", "check", s(dir)]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        text(&out.stdout).is_empty(),
        "a refused kit prints no report"
    );
    stderr
}

fn says(stderr: &str, what: &str) {
    assert!(stderr.contains(what), "expected {what:?} in:\n{stderr}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// osslsigncode's view of a single-signature file: (subject CN, issuer CN, serial).
fn osslsigncode_signer(file: &Path) -> Option<(String, String, String)> {
    let out = Command::new("osslsigncode")
        .args(["verify", "-in", s(file)])
        .output()
        .ok()?;
    let t = text(&out.stdout);
    let field = |name: &str| {
        t.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some((
        field("Subject: /CN=")?,
        field("Issuer : /CN=")?,
        field("Serial : ")?,
    ))
}

#[test]
fn a_signed_kit_is_shown_with_its_signers_and_exit_0() {
    let Some((shim, grub)) = signed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kit = dir.path().join("kit");
    flat_kit(&kit, &shim);
    let out = ctl(&["bootkit", "check", s(&kit)]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}{}", text(&out.stderr));
    // Both of shim's signatures, each with its signer and issuer.
    assert!(stdout.contains(r#"signature #1: signer "Microsoft Windows UEFI Driver Publisher", issued by "Microsoft Corporation UEFI CA 2011""#), "{stdout}");
    assert!(stdout.contains(r#"signature #2: signer "Microsoft UEFI CA 2023 signer", issued by "Microsoft UEFI CA 2023""#), "{stdout}");
    assert_eq!(
        stdout.matches("ok: the file's Authenticode digest").count(),
        2
    );
    assert_eq!(
        stdout
            .matches("ok: the signer certificate's RSA key verifies")
            .count(),
        2
    );
    assert!(stdout.contains("not anchored: recast has no Microsoft root certificates"));
    assert!(!stdout.contains("WARNING"), "Microsoft's CAs: {stdout}");
    assert!(stdout.ends_with("kit ok\n"), "{stdout}");
    // Nothing laid out without --install.
    assert_eq!(entries(dir.path()), ["kit"]);

    // GRUB's one signature, cross-checked with osslsigncode (which cannot read shim's two).
    flat_kit(&kit, &grub);
    let out = ctl(&["bootkit", "check", s(&kit)]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}{}", text(&out.stderr));
    // Signed by Debian's CA, not Microsoft's: shown loudly, not refused (a site may have
    // enrolled its own CA).
    assert!(
        stdout.contains(r#"WARNING: issued by "Debian Secure Boot CA", not a Microsoft CA"#),
        "{stdout}"
    );
    let (subject, issuer, serial) =
        osslsigncode_signer(&grub).expect("osslsigncode verify names the signer");
    assert!(
        stdout.contains(&format!(
            "signature #1: signer {subject:?}, issued by {issuer:?} (serial {serial})"
        )),
        "{stdout}"
    );
    let ossl = text(
        &Command::new("osslsigncode")
            .args(["verify", "-in", s(&grub)])
            .output()
            .unwrap()
            .stdout,
    );
    let digest = ossl
        .lines()
        .find_map(|l| l.trim().strip_prefix("Calculated message digest :"))
        .unwrap()
        .trim()
        .to_lowercase();
    assert!(
        stdout.contains(&format!("sha256:{digest} is the one signed")),
        "{stdout}"
    );
}

#[test]
fn install_lays_out_the_kit_and_a_bcd_hivexml_reads_back() {
    let Some((shim, _)) = signed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kit = dir.path().join("kit");
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    flat_kit(&kit, &shim);
    let out = ctl(&["bootkit", "check", s(&kit), "--install", s(&root)]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("ramdisk TFTP block size 1456, window size 16"));
    assert_eq!(entries(&root), [winpe_boot::KIT_DIR], "no temporary left");
    let boot = root.join(winpe_boot::KIT_DIR);
    assert_eq!(
        entries(&boot),
        ["BCD", "boot.sdi", "boot.wim", "bootmgfw.efi"]
    );
    for f in KitFile::ALL {
        assert_eq!(
            fs::read(root.join(f.installed_path())).unwrap(),
            fs::read(kit.join(f.name())).unwrap(),
            "{}",
            f.name()
        );
    }
    assert!(root.join(winpe_boot::BOOT_FILE).is_file());

    // The BCD, from the outside.
    let bcd = bcd_xml::read(&root.join(winpe_boot::bcd_installed_path())).unwrap();
    assert_eq!(
        bcd.description.get("KeyName"),
        Some(&Value::String("BCD00000000".into()))
    );
    let mut guids: Vec<&str> = bcd.objects.keys().map(String::as_str).collect();
    guids.sort();
    assert_eq!(
        guids,
        [
            "{72656361-7374-4000-8000-77696e70655f}",
            "{9dea862c-5cdd-4e70-acc1-f32b344d4795}",
            "{ae5534e0-a924-466c-b836-758539a3ee3a}",
        ]
    );
    let bootmgr = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
    let loader = "{72656361-7374-4000-8000-77696e70655f}";
    let ramdisk = "{ae5534e0-a924-466c-b836-758539a3ee3a}";
    assert_eq!(bcd.objects[bootmgr].type_, Some(0x1010_0002));
    assert_eq!(bcd.objects[loader].type_, Some(0x1020_0003));
    assert_eq!(bcd.objects[ramdisk].type_, Some(0x3000_0000));
    let el = |g: &str, id: &str| {
        bcd.element(g, id)
            .unwrap_or_else(|| panic!("{g} {id} missing"))
    };
    let string = |g: &str, id: &str| el(g, id).string().unwrap().to_string();
    let binary = |g: &str, id: &str| el(g, id).binary().unwrap().to_vec();
    // {bootmgr}: default and displayorder name the loader, no menu.
    assert_eq!(string(bootmgr, "23000003"), loader);
    assert_eq!(el(bootmgr, "24000001").strings().unwrap(), [loader]);
    assert_eq!(binary(bootmgr, "25000004"), 0u64.to_le_bytes());
    // The loader: winload.efi from the RAM disk made of boot.wim, WinPE.
    assert_eq!(string(loader, "12000002"), r"\Windows\System32\winload.efi");
    assert_eq!(string(loader, "22000002"), r"\Windows");
    assert_eq!(binary(loader, "26000010"), [1]);
    assert_eq!(binary(loader, "26000022"), [1]);
    for id in ["11000001", "21000001"] {
        let dev = binary(loader, id);
        // {ramdiskoptions} as the device's options, a RAM disk, the boot device's file.
        assert_eq!(
            &dev[..16],
            [
                0xe0, 0x34, 0x55, 0xae, 0x24, 0xa9, 0x6c, 0x46, 0xb8, 0x36, 0x75, 0x85, 0x39, 0xa3,
                0xee, 0x3a
            ]
        );
        assert_eq!(dev[0x20], 3, "RAM disk");
        assert_eq!(dev[0x44], 5, "on the boot device");
        let path: Vec<u16> = dev[0x8C..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&path).unwrap(), "\\Boot\\boot.wim\0");
    }
    // {ramdiskoptions}: boot.sdi from the boot device, the TFTP sizes as 8-byte integers.
    assert_eq!(string(ramdisk, "32000004"), r"\Boot\boot.sdi");
    assert_eq!(binary(ramdisk, "31000003")[0x10], 5);
    assert_eq!(binary(ramdisk, "35000007"), 1456u64.to_le_bytes());
    assert_eq!(binary(ramdisk, "35000008"), 16u64.to_le_bytes());
    assert_eq!(bcd.objects[ramdisk].elements.len(), 5);
    assert_eq!(bcd.objects[loader].elements.len(), 7);
    assert_eq!(bcd.objects[bootmgr].elements.len(), 4);
}

#[test]
fn install_replaces_an_earlier_kit_whole() {
    let Some((shim, grub)) = signed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (kit, root) = (dir.path().join("kit"), dir.path().join("root"));
    fs::create_dir(&root).unwrap();
    flat_kit(&kit, &shim);
    assert_eq!(
        code(&ctl(&["bootkit", "check", s(&kit), "--install", s(&root)])),
        0
    );
    fs::write(root.join("Boot/stale-from-before"), b"x").unwrap();
    flat_kit(&kit, &grub);
    let out = ctl(&["bootkit", "check", s(&kit), "--install", s(&root)]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(entries(&root), ["Boot"]);
    assert_eq!(
        entries(&root.join("Boot")),
        ["BCD", "boot.sdi", "boot.wim", "bootmgfw.efi"]
    );
    assert_eq!(
        fs::read(root.join("Boot/bootmgfw.efi")).unwrap(),
        fs::read(&grub).unwrap()
    );
}

#[test]
fn the_adk_copype_layout_is_accepted_whatever_the_case() {
    let Some((shim, _)) = signed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("winpe_amd64/media");
    fs::create_dir_all(media.join("EFI/BOOT")).unwrap();
    fs::create_dir_all(media.join("Boot")).unwrap();
    fs::create_dir_all(media.join("sources")).unwrap();
    fs::create_dir_all(dir.path().join("winpe_amd64/fwfiles")).unwrap();
    fs::copy(&shim, media.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    fs::write(media.join("Boot/boot.sdi"), b"$SDI0001").unwrap();
    fs::write(media.join("sources/boot.wim"), b"MSWIM\0\0\0").unwrap();
    for d in [dir.path().join("winpe_amd64"), media.clone()] {
        let out = ctl(&["bootkit", "check", s(&d)]);
        let stdout = text(&out.stdout);
        assert_eq!(code(&out), 0, "{}: {}", d.display(), text(&out.stderr));
        assert!(stdout.contains("EFI/BOOT/BOOTX64.EFI"), "{stdout}");
        assert!(stdout.contains("sources/boot.wim"), "{stdout}");
    }
}

/// The file offset and size of the PE's `.text` section.
fn text_section(pe: &[u8]) -> (usize, usize) {
    use object::{Object, ObjectSection};
    let file = object::File::parse(pe).unwrap();
    let s = file.section_by_name(".text").expect(".text");
    let (off, size) = s.file_range().unwrap();
    (off as usize, size as usize)
}

#[test]
fn a_tampered_file_is_refused_and_nothing_is_written() {
    let Some((_, grub)) = signed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (kit, root) = (dir.path().join("kit"), dir.path().join("root"));
    fs::create_dir(&root).unwrap();
    flat_kit(&kit, &grub);
    let mut pe = fs::read(&grub).unwrap();
    let (off, size) = text_section(&pe);
    pe[off + size / 2] ^= 0x01;
    fs::write(kit.join("bootmgfw.efi"), &pe).unwrap();
    let out = ctl(&["bootkit", "check", s(&kit), "--install", s(&root)]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    says(
        &stderr,
        "bootmgfw.efi: signature #1: the file's Authenticode digest is sha256:",
    );
    says(&stderr, "the file was changed after it was signed");
    says(&stderr, "copy it again from the ADK");
    says(&stderr, "nothing was written");
    assert!(text(&out.stdout).is_empty());
    assert!(entries(&root).is_empty(), "{:?}", entries(&root));
}

#[test]
fn an_altered_signature_is_refused() {
    let Some((_, grub)) = signed() else { return };
    let mut pe = fs::read(&grub).unwrap();
    // The RSA signature value is the last thing in GRUB's one PKCS#7 blob (no unsigned
    // attributes); find it through the signature itself and flip its last byte.
    let sig = {
        use object::read::pe::PeFile64;
        let file = PeFile64::parse(&pe[..]).unwrap();
        let cert = authenticode::AttributeCertificateIterator::new(&file)
            .unwrap()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        cert.get_authenticode_signature()
            .unwrap()
            .signature()
            .to_vec()
    };
    let at = pe
        .windows(sig.len())
        .position(|w| w == sig)
        .expect("the signature value is in the file");
    pe[at + sig.len() - 1] ^= 0x01;
    let dir = tempfile::tempdir().unwrap();
    flat_kit(dir.path(), &grub);
    fs::write(dir.path().join("bootmgfw.efi"), &pe).unwrap();
    let stderr = refused(dir.path());
    says(
        &stderr,
        "the signature does not verify with the signer certificate's public key (signer Debian Secure Boot Signer 2022 - grub2)",
    );
}

#[test]
fn an_unsigned_pe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    flat_kit(dir.path(), Path::new(UNSIGNED_PE));
    let stderr = refused(dir.path());
    says(&stderr, "bootmgfw.efi: no Authenticode signature");
    says(&stderr, "use Microsoft's signed bootmgfw.efi from the ADK");
}

#[test]
fn a_file_that_is_not_pe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    flat_kit(dir.path(), Path::new(UNSIGNED_PE));
    fs::write(
        dir.path().join("bootmgfw.efi"),
        b"<html>404 Not Found</html>",
    )
    .unwrap();
    let stderr = refused(dir.path());
    says(
        &stderr,
        "bootmgfw.efi: not a PE image (it does not start with the MZ header)",
    );
    // A truncated PE: the MZ header, and nothing it points at.
    let pe = fs::read(UNSIGNED_PE).unwrap();
    fs::write(dir.path().join("bootmgfw.efi"), &pe[..200]).unwrap();
    let out = ctl(&["bootkit", "check", s(dir.path())]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("bootmgfw.efi: not a PE image ("),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_files_are_all_named_with_where_they_were_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (kit, root) = (dir.path().join("kit"), dir.path().join("root"));
    fs::create_dir_all(&kit).unwrap();
    fs::create_dir(&root).unwrap();
    fs::write(kit.join("boot.sdi"), b"$SDI0001").unwrap();
    let out = ctl(&["bootkit", "check", s(&kit), "--install", s(&root)]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    says(
        &stderr,
        "the Windows Boot Manager for UEFI (bootmgfw.efi) is missing",
    );
    says(
        &stderr,
        "bootmgfw.efi, media/EFI/Boot/bootx64.efi, EFI/Boot/bootx64.efi",
    );
    says(&stderr, "the WinPE image (boot.wim) is missing");
    says(&stderr, r"media\sources\boot.wim");
    assert!(!stderr.contains("boot.sdi) is missing"), "{stderr}");
    says(&stderr, "kit refused: 2 problem(s); nothing was written");
    assert!(entries(&root).is_empty());
}

#[test]
fn an_sdi_or_wim_in_the_wrong_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    flat_kit(dir.path(), Path::new(UNSIGNED_PE));
    fs::write(dir.path().join("boot.sdi"), b"MSWIM\0\0\0").unwrap();
    fs::write(dir.path().join("boot.wim"), b"").unwrap();
    let stderr = refused(dir.path());
    says(
        &stderr,
        "boot.sdi: does not start with $SDI0001, so it is not the ramdisk's System Deployment Image",
    );
    says(
        &stderr,
        "boot.wim: does not start with MSWIM, so it is not the WinPE image",
    );
    says(&stderr, "kit refused: 3 problem(s)");
}

/// The DER of the certificate in `pe`'s first signature whose subject CN is `cn`.
fn embedded_cert(pe: &Path, cn: &str) -> Vec<u8> {
    use der::{Decode, Encode};
    use object::read::pe::PeFile64;
    let data = fs::read(pe).unwrap();
    let file = PeFile64::parse(&data[..]).unwrap();
    let entry = authenticode::AttributeCertificateIterator::new(&file)
        .unwrap()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    // WIN_CERTIFICATE entries are padded to 8 bytes: decode one value, not the whole slice.
    let mut reader = der::SliceReader::new(entry.data).unwrap();
    let info = cms::content_info::ContentInfo::decode(&mut reader).unwrap();
    let signed = info
        .content
        .decode_as::<cms::signed_data::SignedData>()
        .unwrap();
    signed
        .certificates
        .unwrap()
        .0
        .iter()
        .find_map(|c| match c {
            cms::cert::CertificateChoices::Certificate(c)
                if c.tbs_certificate
                    .subject
                    .to_string()
                    .contains(&format!("CN={cn}")) =>
            {
                Some(c.to_der().unwrap())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no certificate {cn:?} in {}", pe.display()))
}

#[test]
fn trust_anchors_the_signer_through_the_certificates_it_carries() {
    let Some((shim, grub)) = signed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kit = dir.path().join("kit");
    flat_kit(&kit, &shim);
    // Microsoft's UEFI CA 2011 travels in shim's first signature: anchoring at it follows the
    // chain one step, signer → CA, with a real RSA signature check.
    let ca = dir.path().join("uefi-ca-2011.der");
    fs::write(
        &ca,
        embedded_cert(&shim, "Microsoft Corporation UEFI CA 2011"),
    )
    .unwrap();
    let out = ctl(&["bootkit", "check", s(&kit), "--trust", s(&ca)]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(r#"ok: the signer chains to the --trust certificate "Microsoft Corporation UEFI CA 2011""#), "{stdout}");
    assert!(stdout.contains("not anchored: this signature does not chain to a --trust certificate (another one does)"), "{stdout}");

    // GRUB's signer does not chain to Microsoft's CA: refused, the signer named.
    flat_kit(&kit, &grub);
    let out = ctl(&["bootkit", "check", s(&kit), "--trust", s(&ca)]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    says(
        &stderr,
        r#"no signature chains to a --trust certificate (signed by "Debian Secure Boot Signer 2022 - grub2" issued by "Debian Secure Boot CA")"#,
    );

    // An unreadable or non-certificate --trust file is bad usage.
    fs::write(dir.path().join("junk.pem"), b"junk").unwrap();
    let out = ctl(&[
        "bootkit",
        "check",
        s(&kit),
        "--trust",
        s(&dir.path().join("junk.pem")),
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("give a PEM or DER X.509 certificate"));
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl(&["bootkit", "check", s(&dir.path().join("nope"))]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("not a directory; give the directory the kit was copied to")
    );
    let out = ctl(&[
        "bootkit",
        "check",
        s(dir.path()),
        "--install",
        s(&dir.path().join("nope")),
    ]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("not a directory; give the boot service's boot root"));
}

/// The ADK files of a test kit: a WinPE boot.wim made with wimlib (Windows\System32 holding a
/// stand-in for winpeshl.exe), boot.sdi and a BCD with their formats' signatures, in the
/// layout `copype amd64 DIR` makes; wimboot and curl.exe stand-ins with the banner and header
/// the real ones carry (neither is packaged for Debian).
fn wimboot_kit(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    if Command::new("wimlib-imagex")
        .arg("--version")
        .output()
        .is_err()
    {
        recast_tests::skip_or_fail("RECAST_REQUIRE_WIMLIB", "wimlib-imagex is missing");
        return None;
    }
    let adk = dir.join("winpe_amd64");
    let tree = dir.join("pe-tree/Windows/System32");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("winpeshl.exe"), b"MZ stand-in").unwrap();
    // What the ADK's WinPE with WinPE-WMI holds of what startnet.cmd runs (curl.exe is the
    // kit's to inject).
    for (tool, _) in winpe_boot::WINPE_TOOLS
        .iter()
        .filter(|(t, _)| *t != "curl.exe")
    {
        let at = tree.join(tool);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, b"MZ stand-in").unwrap();
    }
    fs::create_dir_all(adk.join("media/sources")).unwrap();
    fs::create_dir_all(adk.join("media/Boot")).unwrap();
    let out = Command::new("wimlib-imagex")
        .arg("capture")
        .arg(dir.join("pe-tree"))
        .arg(adk.join("media/sources/boot.wim"))
        .arg("Microsoft Windows PE (amd64)")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::write(adk.join("media/Boot/boot.sdi"), b"$SDI0001 ramdisk").unwrap();
    fs::write(adk.join("media/Boot/BCD"), b"regf a hive").unwrap();
    let wimboot = dir.join("wimboot");
    let mut bin = vec![0x7f, b'E', b'L', b'F'];
    bin.extend_from_slice(
        b"\n\nwimboot v2.9.0 -- Windows Imaging Format bootloader -- https://ipxe.org/wimboot\n",
    );
    fs::write(&wimboot, &bin).unwrap();
    let curl = dir.join("curl.exe");
    fs::write(&curl, b"MZ\x90\x00 curl 8.x for Windows").unwrap();
    let ca = dir.join("site-ca.pem");
    fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    Some((adk, wimboot, curl, ca))
}

fn wim_dir(wim: &Path) -> Vec<String> {
    let out = Command::new("wimlib-imagex")
        .arg("dir")
        .arg(wim)
        .arg("1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn build_injects_curl_and_the_ca_into_boot_wim_and_lays_the_kit_out() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((adk, wimboot, curl, ca)) = wimboot_kit(tmp.path()) else {
        return;
    };
    let root = tmp.path().join("boot");
    fs::create_dir_all(&root).unwrap();
    let source_wim = fs::read(adk.join("media/sources/boot.wim")).unwrap();
    let o = ctl(&[
        "bootkit",
        "build",
        s(&adk),
        "--wimboot",
        s(&wimboot),
        "--curl",
        s(&curl),
        "--ca",
        s(&ca),
        "--install",
        s(&root),
    ]);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).contains("wimboot v2.9.0"),
        "{}",
        text(&o.stdout)
    );
    let kit = root.join(winpe_boot::WIMBOOT_DIR);
    assert_eq!(entries(&kit), ["BCD", "boot.sdi", "boot.wim", "wimboot"]);
    // Read back with wimlib, not recast: the injected files beside what boot.wim held.
    let listed = wim_dir(&kit.join("boot.wim"));
    for want in [
        winpe_boot::CURL_IN_WIM,
        winpe_boot::CA_IN_WIM,
        "/Windows/System32/winpeshl.exe",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} not in {listed:?}");
    }
    let extracted = Command::new("wimlib-imagex")
        .arg("extract")
        .arg(kit.join("boot.wim"))
        .arg("1")
        .arg(winpe_boot::CURL_IN_WIM)
        .arg("--to-stdout")
        .output()
        .unwrap();
    assert_eq!(
        extracted.stdout,
        fs::read(&curl).unwrap(),
        "curl.exe byte for byte"
    );
    assert_eq!(
        fs::read(kit.join("wimboot")).unwrap(),
        fs::read(&wimboot).unwrap()
    );
    assert_eq!(
        fs::read(adk.join("media/sources/boot.wim")).unwrap(),
        source_wim,
        "the site's own boot.wim is left as it was"
    );
    // Built again without a CA: the new kit replaces the old one whole.
    let o = ctl(&[
        "bootkit",
        "build",
        s(&adk),
        "--wimboot",
        s(&wimboot),
        "--curl",
        s(&curl),
        "--install",
        s(&root),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let listed = wim_dir(&kit.join("boot.wim"));
    assert!(
        !listed.iter().any(|l| l == winpe_boot::CA_IN_WIM),
        "{listed:?}"
    );
    assert_eq!(
        entries(&root),
        [winpe_boot::WIMBOOT_DIR],
        "no leftovers beside it"
    );
}

#[test]
fn build_refuses_each_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((adk, wimboot, curl, ca)) = wimboot_kit(tmp.path()) else {
        return;
    };
    let root = tmp.path().join("boot");
    fs::create_dir_all(&root).unwrap();
    let old = tmp.path().join("wimboot-2.8.0");
    fs::write(
        &old,
        b"wimboot v2.8.0 -- Windows Imaging Format bootloader -- https://ipxe.org/wimboot",
    )
    .unwrap();
    let not_wimboot = tmp.path().join("bootx64.efi");
    fs::write(&not_wimboot, b"MZ some other loader").unwrap();
    let not_pe = tmp.path().join("curl");
    fs::write(&not_pe, b"\x7fELF curl for Linux").unwrap();
    let not_pem = tmp.path().join("ca.der");
    fs::write(&not_pem, b"\x30\x82 DER").unwrap();
    let no_bcd = tmp.path().join("no-bcd");
    fs::create_dir_all(no_bcd.join("media/sources")).unwrap();
    fs::create_dir_all(no_bcd.join("media/Boot")).unwrap();
    fs::copy(
        adk.join("media/sources/boot.wim"),
        no_bcd.join("media/sources/boot.wim"),
    )
    .unwrap();
    fs::copy(
        adk.join("media/Boot/boot.sdi"),
        no_bcd.join("media/Boot/boot.sdi"),
    )
    .unwrap();
    for (what, args, says) in [
        (
            "wimboot 2.8.0",
            vec![s(&adk), "--wimboot", s(&old), "--curl", s(&curl)],
            "2.9.0 or later",
        ),
        (
            "not wimboot",
            vec![s(&adk), "--wimboot", s(&not_wimboot), "--curl", s(&curl)],
            "not iPXE's wimboot",
        ),
        (
            "a Linux curl",
            vec![s(&adk), "--wimboot", s(&wimboot), "--curl", s(&not_pe)],
            "not a Windows program",
        ),
        (
            "a DER CA",
            vec![
                s(&adk),
                "--wimboot",
                s(&wimboot),
                "--curl",
                s(&curl),
                "--ca",
                s(&not_pem),
            ],
            "no PEM certificate",
        ),
        (
            "no BCD",
            vec![s(&no_bcd), "--wimboot", s(&wimboot), "--curl", s(&curl)],
            "the BCD store is missing",
        ),
    ] {
        let mut a = vec!["bootkit", "build"];
        a.extend(args);
        a.extend(["--install", s(&root)]);
        let o = ctl(&a);
        assert_eq!(code(&o), 1, "{what}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains(says), "{what}: {err}");
        assert!(err.contains("nothing was written"), "{what}: {err}");
        assert!(entries(&root).is_empty(), "{what}: {:?}", entries(&root));
    }
    let _ = ca;
    // A WinPE without WinPE-WMI: startnet.cmd could not list the disks; refused, saying how to
    // add it, and the boot root keeps nothing.
    let no_wmi = tmp.path().join("no-wmi");
    fs::create_dir_all(no_wmi.join("media/sources")).unwrap();
    fs::create_dir_all(no_wmi.join("media/Boot")).unwrap();
    for f in ["sources/boot.wim", "Boot/boot.sdi", "Boot/BCD"] {
        fs::copy(adk.join("media").join(f), no_wmi.join("media").join(f)).unwrap();
    }
    let mut update = Command::new("wimlib-imagex")
        .arg("update")
        .arg(no_wmi.join("media/sources/boot.wim"))
        .arg("1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        update.stdin.as_mut().unwrap(),
        b"delete /Windows/System32/wbem/WMIC.exe\n",
    )
    .unwrap();
    drop(update.stdin.take());
    assert!(update.wait().unwrap().success());
    let o = ctl(&[
        "bootkit",
        "build",
        s(&no_wmi),
        "--wimboot",
        s(&wimboot),
        "--curl",
        s(&curl),
        "--install",
        s(&root),
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("lacks what startnet.cmd runs: Windows\\System32\\wbem\\WMIC.exe (the WinPE-WMI optional component"),
        "{err}"
    );
    assert!(err.contains("nothing was installed"), "{err}");
    assert!(entries(&root).is_empty(), "{:?}", entries(&root));
    // A boot root that does not exist is bad usage.
    let o = ctl(&[
        "bootkit",
        "build",
        s(&adk),
        "--wimboot",
        s(&wimboot),
        "--curl",
        s(&curl),
        "--install",
        "/nonexistent/boot",
    ]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
}
