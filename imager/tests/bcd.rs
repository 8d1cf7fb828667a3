//! The BCD plan against the real hivexsh and hivexml (Debian's libhivex-bin): list a stand-in
//! BCD-Template with the listing rounds, edit it with the rendered script, and read the store
//! back with hivexml (recast_tests::bcd_xml), which knows nothing of recast's plan. Skips
//! loudly without libhivex-bin unless RECAST_REQUIRE_IMAGER=1.

use std::path::Path;
use std::process::Command;

use recast_imager::bcd::{
    self, BOOTMGR, Device, Existing, MEMDIAG, listing_script, parse_listing, render_hivexsh,
};
use recast_imager::layout::BootMode;
use recast_tests::bcd_xml::{self, Bcd, Value};
use recast_tests::hive::{self, Key, reg_sz};

const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const WINDOWS: &str = "{AAAAAAAA-0000-0000-0000-000000000003}";
const DISK: &str = "01234567-89ab-cdef-0123-456789abcdef";
const LOADER: &str = "{5c5d2b0c-8f6e-4a43-9d2b-6f0c1e2d3a4b}";
const RESUME: &str = "{5c5d2b0c-8f6e-4a43-9d2b-6f0c1e2d3a4c}";

/// The GUIDs above in Windows' binary form, written out by hand rather than computed by the code
/// under test.
const ESP_BYTES: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];
const WINDOWS_BYTES: [u8; 16] = [0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
const DISK_BYTES: [u8; 16] = [
    0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
];

fn have_libhivex() -> bool {
    if recast_tests::have("hivexsh") && recast_tests::have("hivexml") {
        return true;
    }
    recast_tests::skip_or_fail(
        "RECAST_REQUIRE_IMAGER",
        "hivexsh/hivexml are not installed (apt-get install libhivex-bin)",
    );
    false
}

/// `hivexsh [-w] -f SCRIPT HIVE`: exit status, stdout, stderr.
fn hivexsh(hive: &Path, script: &str, write: bool) -> (bool, String, String) {
    let file = hive.with_extension("hivexsh");
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new("hivexsh");
    if write {
        cmd.arg("-w");
    }
    let out = cmd.arg("-f").arg(&file).arg(hive).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs listing rounds until the listing is complete, as the imager's shell does.
fn list(hive: &Path) -> Existing {
    let mut out = String::new();
    for _ in 0..10 {
        let existing = parse_listing(&out).unwrap();
        let Some(script) = listing_script(&existing) else {
            return existing;
        };
        let (ok, stdout, stderr) = hivexsh(hive, &script, false);
        assert!(ok, "listing round failed: {stderr}\n{script}");
        out.push_str(&stdout);
    }
    panic!("the listing did not converge:\n{out}");
}

/// Lists, plans, renders and edits `hive`; returns the store as hivexml reads it.
fn write_store(hive: &Path, mode: BootMode, system: &Device, windows: &Device) -> Bcd {
    let existing = list(hive);
    let store = bcd::plan(
        mode,
        system,
        windows,
        "en-US",
        "Windows 11 Pro",
        LOADER,
        RESUME,
    )
    .unwrap();
    let script = render_hivexsh(&store, &existing);
    let (ok, _, stderr) = hivexsh(hive, &script, true);
    assert!(ok, "hivexsh refused the script: {stderr}\n{script}");
    bcd_xml::read(hive).unwrap()
}

fn device<'a>(bcd: &'a Bcd, guid: &str, id: &str) -> &'a [u8] {
    let v = bcd
        .element(guid, id)
        .unwrap_or_else(|| panic!("{guid} has no element {id}: {bcd:#?}"));
    let bytes = v.binary().unwrap_or_else(|| panic!("{guid} {id}: {v:?}"));
    assert_eq!(bytes.len(), 88, "{guid} {id}");
    assert_eq!(bytes[0x10], 6, "{guid} {id}: a partition device");
    bytes
}

fn string(bcd: &Bcd, guid: &str, id: &str) -> Option<String> {
    bcd.element(guid, id)
        .map(|v| v.string().unwrap_or_else(|| panic!("{v:?}")).to_string())
}

/// A template like Windows' own: `Description` (KeyName, and TreatAsSystem, which recast must
/// keep), a {bootmgr} that already has a device and an EFI path, {memdiag}, and an object that
/// is not recast's (it must survive).
fn template_with_bootmgr() -> Vec<u8> {
    let element = |id: &str, type_: u32, data: Vec<u8>| Key::new(id).value("Element", type_, data);
    let object = |guid: &str, type_: u32, elements: Vec<Key>| {
        let mut e = Key::new("Elements");
        for el in elements {
            e = e.subkey(el);
        }
        Key::new(guid)
            .subkey(Key::new("Description").value("Type", 4, type_.to_le_bytes().to_vec()))
            .subkey(e)
    };
    let root = Key::new(hive::BCD_ROOT)
        .subkey(
            Key::new("Description")
                .value("KeyName", 1, reg_sz("BCD00000000"))
                .value("TreatAsSystem", 4, vec![1, 0, 0, 0]),
        )
        .subkey(
            Key::new("Objects")
                .subkey(object(
                    BOOTMGR,
                    0x1010_0002,
                    vec![
                        element("11000001", 3, vec![0; 88]),
                        element("12000002", 1, reg_sz(r"\EFI\Microsoft\Boot\bootmgfw.efi")),
                        element("25000004", 3, vec![5, 0, 0, 0, 0, 0, 0, 0]),
                    ],
                ))
                .subkey(object(MEMDIAG, 0x1020_0005, vec![]))
                .subkey(object(
                    "{11111111-2222-3333-4444-555555555555}",
                    0x1010_0001,
                    vec![element("12000004", 1, reg_sz("Firmware"))],
                )),
        );
    hive::hive(&root)
}

#[test]
fn the_fixture_template_opens_in_hivexsh_and_hivexml() {
    if !have_libhivex() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("bare", hive::bcd_template(false)),
        ("with-objects", hive::bcd_template(true)),
        ("with-bootmgr", template_with_bootmgr()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (ok, out, err) = hivexsh(&path, "ls\n", false);
        assert!(ok, "{name}: {err}");
        let root = bcd_xml::parse_hive(&bcd_xml::hivexml(&path).unwrap()).unwrap();
        assert_eq!(root.name, hive::BCD_ROOT);
        let names: Vec<&str> = out.lines().collect();
        let want: &[&str] = if name == "bare" {
            &[]
        } else {
            &["Description", "Objects"]
        };
        assert_eq!(names, want, "{name}");
    }
    let bcd = bcd_xml::read(&dir.path().join("with-bootmgr")).unwrap();
    assert_eq!(bcd.objects[BOOTMGR].type_, Some(0x1010_0002));
    assert_eq!(bcd.description.get("TreatAsSystem"), Some(&Value::Int32(1)));
}

#[test]
fn uefi_store_names_the_esp_and_the_windows_partition() {
    if !have_libhivex() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = Device::Gpt {
        partition: ESP.into(),
        disk: DISK.into(),
    };
    let windows = Device::Gpt {
        partition: WINDOWS.into(),
        disk: DISK.to_uppercase(),
    };
    for (name, template) in [
        ("bare", hive::bcd_template(false)),
        ("with-objects", hive::bcd_template(true)),
        ("with-bootmgr", template_with_bootmgr()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, template).unwrap();
        let bcd = write_store(&path, BootMode::Uefi, &esp, &windows);
        let loader = LOADER.to_lowercase();
        let resume = RESUME.to_lowercase();

        assert_eq!(
            bcd.description.get("KeyName"),
            Some(&Value::String("BCD00000000".into())),
            "{name}"
        );
        assert_eq!(bcd.description.get("System"), Some(&Value::Int32(1)));

        assert_eq!(bcd.objects[BOOTMGR].type_, Some(0x1010_0002), "{name}");
        let d = device(&bcd, BOOTMGR, "11000001");
        assert_eq!(d[0x20..0x30], ESP_BYTES, "{name}: {{bootmgr}} partition");
        assert_eq!(d[0x34], 0, "{name}: GPT");
        assert_eq!(d[0x38..0x48], DISK_BYTES, "{name}: {{bootmgr}} disk");
        assert_eq!(
            string(&bcd, BOOTMGR, "12000002").as_deref(),
            Some(r"\EFI\Microsoft\Boot\bootmgfw.efi")
        );
        assert_eq!(string(&bcd, BOOTMGR, "23000003"), Some(loader.clone()));
        assert_eq!(string(&bcd, BOOTMGR, "23000006"), Some(resume.clone()));
        assert_eq!(
            bcd.element(BOOTMGR, "24000001").and_then(Value::strings),
            Some(&[loader.clone()][..]),
            "{name}: display order"
        );
        assert_eq!(
            bcd.element(BOOTMGR, "25000004").and_then(Value::binary),
            Some(&[30u8, 0, 0, 0, 0, 0, 0, 0][..]),
            "{name}: timeout (the template's 5 is replaced)"
        );

        assert_eq!(bcd.objects[&loader].type_, Some(0x1020_0003), "{name}");
        for id in ["11000001", "21000001"] {
            let d = device(&bcd, &loader, id);
            assert_eq!(d[0x20..0x30], WINDOWS_BYTES, "{name}: loader {id}");
            assert_eq!(d[0x34], 0);
            assert_eq!(d[0x38..0x48], DISK_BYTES, "{name}: loader {id}");
        }
        assert_eq!(
            string(&bcd, &loader, "12000002").as_deref(),
            Some(r"\Windows\system32\winload.efi")
        );
        assert_eq!(
            string(&bcd, &loader, "12000004").as_deref(),
            Some("Windows 11 Pro")
        );
        assert_eq!(
            string(&bcd, &loader, "22000002").as_deref(),
            Some(r"\Windows")
        );
        assert_eq!(string(&bcd, &loader, "23000003"), Some(resume.clone()));

        assert_eq!(bcd.objects[&resume].type_, Some(0x1020_0004));
        assert_eq!(
            string(&bcd, &resume, "12000002").as_deref(),
            Some(r"\Windows\system32\winresume.efi")
        );
        assert_eq!(device(&bcd, &resume, "21000001")[0x20..0x30], WINDOWS_BYTES);

        assert_eq!(bcd.objects[MEMDIAG].type_, Some(0x1020_0005));
        assert_eq!(device(&bcd, MEMDIAG, "11000001")[0x20..0x30], ESP_BYTES);
        assert_eq!(
            string(&bcd, MEMDIAG, "12000002").as_deref(),
            Some(r"\EFI\Microsoft\Boot\memtest.efi")
        );
        assert_eq!(bcd.objects[bcd::GLOBALSETTINGS].type_, Some(0x2010_0000));
        // The 11 objects of the plan, plus whatever else the template had.
        assert!(bcd.objects.len() >= 11, "{name}: {bcd:#?}");

        if name == "with-bootmgr" {
            assert_eq!(
                bcd.description.get("TreatAsSystem"),
                Some(&Value::Int32(1)),
                "the template's other Description values stay"
            );
            assert_eq!(
                string(&bcd, "{11111111-2222-3333-4444-555555555555}", "12000004").as_deref(),
                Some("Firmware"),
                "objects that are not recast's stay"
            );
        }

        // Running the whole step again on the finished store changes nothing and adds nothing:
        // the upsert is idempotent, so a retried imaging attempt can rerun it.
        let again = write_store(&path, BootMode::Uefi, &esp, &windows);
        assert_eq!(again, bcd, "{name}: second run");
    }
}

#[test]
fn bios_store_names_partitions_by_offset_and_signature() {
    if !have_libhivex() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let system = Device::Mbr {
        offset_bytes: 2048 * 512,
        signature: 0x1234_abcd,
    };
    let windows = Device::Mbr {
        offset_bytes: 206_848 * 512,
        signature: 0x1234_abcd,
    };
    for (name, template) in [
        ("bare", hive::bcd_template(false)),
        ("with-bootmgr", template_with_bootmgr()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, template).unwrap();
        let bcd = write_store(&path, BootMode::Bios, &system, &windows);
        let loader = LOADER.to_lowercase();

        let d = device(&bcd, BOOTMGR, "11000001");
        assert_eq!(
            d[0x20..0x30],
            [0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(d[0x34], 1, "{name}: MBR");
        assert_eq!(
            d[0x38..0x48],
            [0xcd, 0xab, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        // BIOS: no bootmgr path, even where the template had the EFI one.
        assert_eq!(string(&bcd, BOOTMGR, "12000002"), None, "{name}");
        for id in ["11000001", "21000001"] {
            let d = device(&bcd, &loader, id);
            // 206848 sectors * 512 = 0x0650_0000 bytes.
            assert_eq!(
                d[0x20..0x28],
                [0, 0, 0x50, 0x06, 0, 0, 0, 0],
                "{name}: {id}"
            );
            assert_eq!(d[0x34], 1);
            assert_eq!(d[0x38..0x3C], [0xcd, 0xab, 0x34, 0x12]);
        }
        assert_eq!(
            string(&bcd, &loader, "12000002").as_deref(),
            Some(r"\Windows\system32\winload.exe")
        );
        assert_eq!(bcd.element(&loader, "16000060"), None);
        assert_eq!(
            string(&bcd, &RESUME.to_lowercase(), "12000002").as_deref(),
            Some(r"\Windows\system32\winresume.exe")
        );
        assert_eq!(
            string(&bcd, MEMDIAG, "12000002").as_deref(),
            Some(r"\Boot\memtest.exe")
        );
    }
}

#[test]
fn a_failing_command_fails_the_run_and_leaves_the_hive_untouched() {
    if !have_libhivex() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("BCD");
    let template = hive::bcd_template(true);
    std::fs::write(&path, &template).unwrap();

    // `add` of a key that exists fails; hivexsh stops there, before `commit`.
    let (ok, _, stderr) = hivexsh(&path, "add Extra\nadd Objects\nadd More\ncommit\n", true);
    assert!(!ok);
    assert!(stderr.contains("File exists"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), template);

    // A render from a listing that missed what the template holds fails the same way.
    let store = bcd::plan(
        BootMode::Uefi,
        &Device::Gpt {
            partition: ESP.into(),
            disk: DISK.into(),
        },
        &Device::Gpt {
            partition: WINDOWS.into(),
            disk: DISK.into(),
        },
        "en-US",
        "W",
        LOADER,
        RESUME,
    )
    .unwrap();
    let stale = parse_listing("\\\n").unwrap();
    let (ok, _, stderr) = hivexsh(&path, &render_hivexsh(&store, &stale), true);
    assert!(!ok);
    assert!(stderr.contains("add: File exists"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), template);

    // So does a `cd` to a key that is not there, also in a read-only listing.
    let (ok, stdout, stderr) = hivexsh(&path, "cd \\\ncd\nls\ncd \\Nope\nls\n", false);
    assert!(!ok);
    assert!(stderr.contains("subkey 'Nope' not found"), "{stderr}");
    assert_eq!(stdout, "\\\nDescription\nObjects\n");
}
