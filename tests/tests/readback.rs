//! recast-tests' read-back helpers and the NTFS golden image, proved against the tools they
//! wrap before any imaging suite trusts them: the golden WIM applied by wimlib-imagex itself
//! must compare equal to its source, every kind of damage to the applied volume must make the
//! comparison fail with a message that names it, and the stand-in boot programs must really
//! boot in QEMU.
//!
//! Root-only parts (FUSE mounts, loop devices) and parts that need QEMU, syslinux or GRUB skip
//! loudly when those are missing; RECAST_REQUIRE_IMAGER=1 turns the skips into failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recast_tests::golden_ntfs::{self, GoldenWim, REQUIRE_IMAGER, paths};
use recast_tests::readback::{
    self, MountedNtfs, Table, XATTR_ACL, XATTR_ATTRIB, XATTR_DOS_NAME, XATTR_REPARSE, find_tool,
    run_ok, tool,
};
use recast_tests::wimlib::{self, JANUARY_2026};

/// A scratch directory under cargo's per-target tmp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("readback-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Skips (loudly) unless every tool is on the (sbin-extended) PATH.
fn have_tools(tools: &[&str], why: &str) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| find_tool(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    recast_tests::skip_or_fail(REQUIRE_IMAGER, &format!("{why}: {missing:?} not installed"));
    false
}

/// A stand-in for Windows' BCD-Template: the golden only carries the bytes.
fn bcd_template() -> Vec<u8> {
    let mut b = b"regf".to_vec();
    b.extend(wimlib::noise(4242, 8188));
    b
}

/// The golden image, built once per test binary (and reused across runs: build_golden keeps
/// a stamp of its inputs).
fn golden() -> &'static GoldenWim {
    static G: OnceLock<GoldenWim> = OnceLock::new();
    G.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-ntfs");
        let start = Instant::now();
        let g = golden_ntfs::build_golden(&dir, JANUARY_2026, &bcd_template());
        eprintln!("golden image ready in {:?}", start.elapsed());
        g
    })
}

/// A fresh NTFS image of 64 MiB (sparse) with `wim` applied by wimlib-imagex.
fn applied(wim: &Path, target: &Path) {
    let f = std::fs::File::create(target).expect("create target");
    f.set_len(64 << 20).expect("size target");
    drop(f);
    run_ok(tool("mkntfs").args(["-Q", "-F", "-q"]).arg(target));
    run_ok(
        tool("wimlib-imagex")
            .arg("apply")
            .arg(wim)
            .arg("1")
            .arg(target),
    );
}

#[test]
fn applied_golden_compares_equal_to_its_source_and_carries_the_special_cases() {
    if !golden_ntfs::prerequisites() {
        return;
    }
    let g = golden();
    let s = Scratch::new("equal");

    // The XML recast's golden-image checks read.
    let info = run_ok(tool("wimlib-imagex").arg("info").arg(&g.wim).arg("1")).stdout;
    let info = String::from_utf8_lossy(&info);
    assert!(info.contains("Build:                  26100"), "{info}");
    assert!(info.contains("Service Pack Build:     7623"), "{info}");
    assert!(info.contains(golden_ntfs::IMAGE_NAME), "{info}");
    let dir = run_ok(tool("wimlib-imagex").arg("dir").arg(&g.wim).arg("1")).stdout;
    let dir = String::from_utf8_lossy(&dir);
    assert!(
        dir.contains(&format!(
            "/Windows/servicing/Packages/{}",
            wimlib::rollup_name(JANUARY_2026)
        )),
        "{dir}"
    );

    let source = MountedNtfs::image(&g.source);
    let target = s.join("target.img");
    applied(&g.wim, &target);
    let mounted = MountedNtfs::image(&target);
    let report = readback::compare_trees(source.path(), mounted.path()).unwrap_or_else(|e| {
        panic!(
            "the applied golden differs from its source:\n{}",
            e.join("\n")
        )
    });
    eprintln!("{report:#?}");

    // The comparison saw every special case the golden holds.
    let sp = &g.special;
    for (path, stream, _) in &sp.named_streams {
        assert!(
            report
                .named_streams
                .contains(&(path.to_string(), stream.to_string())),
            "named stream {path}:{stream} was not compared: {:?}",
            report.named_streams
        );
    }
    for (path, _, _) in &sp.junctions {
        assert!(report.reparse_points.contains(&path.to_string()));
    }
    for pair in &sp.hard_links {
        let mut want: Vec<String> = pair.iter().map(|p| p.to_string()).collect();
        want.sort();
        assert!(report.hard_links.contains(&want), "{:?}", report.hard_links);
    }
    for (path, short) in &sp.dos_names {
        assert!(
            report
                .dos_names
                .contains(&(path.to_string(), short.to_string())),
            "{:?}",
            report.dos_names
        );
    }
    // The custom ones (all different) and at least ntfs-3g's default for new files.
    assert!(
        report.distinct_security_descriptors > sp.security_descriptors.len(),
        "{report:?}"
    );
    assert!(report.bytes > 1 << 20, "{report:?}");
    assert!(report.files > 20 && report.attributes == report.paths);
    assert_eq!(report.timestamps, report.paths);

    // And each special case is what the builder set, read through the target's own mount
    // (so a comparison that both sides got wrong in the same way cannot pass unnoticed).
    let on = |rel: &str, name: &str| {
        readback::get_xattr(&mounted.path().join(rel), name)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{rel} has no {name}"))
    };
    for (rel, sd) in &sp.security_descriptors {
        assert_eq!(&on(rel, XATTR_ACL), sd, "{rel}: security descriptor");
    }
    for (rel, stream, data) in &sp.named_streams {
        assert_eq!(&on(rel, &format!("user.{stream}")), data, "{rel}:{stream}");
    }
    for (rel, _, rp) in &sp.junctions {
        assert_eq!(&on(rel, XATTR_REPARSE), rp, "{rel}: reparse data");
    }
    for (rel, short) in &sp.dos_names {
        assert_eq!(on(rel, XATTR_DOS_NAME), short.as_bytes(), "{rel}: DOS name");
    }
    for (rel, attrs) in &sp.attributes {
        let got = u32::from_le_bytes(on(rel, XATTR_ATTRIB).try_into().unwrap());
        assert_eq!(got & attrs, *attrs, "{rel}: attributes {got:#x}");
    }
    for (rel, size) in &sp.sized_files {
        let len = std::fs::metadata(mounted.path().join(rel)).unwrap().len();
        assert_eq!(len, *size as u64, "{rel}");
    }
    let bytes = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for (rel, standin) in [
        (paths::BOOTMGFW_EFI, &g.standins.bootmgfw_efi),
        (paths::BOOTMGR_EFI, &g.standins.bootmgr_efi),
        (paths::MEMTEST_EFI, &g.standins.memtest_efi),
        (paths::PCAT_BOOTMGR, &g.standins.bootmgr),
    ] {
        assert_eq!(bytes(&mounted.path().join(rel)), bytes(standin), "{rel}");
    }
    assert_eq!(
        bytes(&mounted.path().join(paths::BCD_TEMPLATE)),
        bcd_template()
    );
    drop(mounted);

    // The pipable WIM streamed through stdin gives the same volume.
    let target2 = s.join("target-pipable.img");
    let f = std::fs::File::create(&target2).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    run_ok(tool("mkntfs").args(["-Q", "-F", "-q"]).arg(&target2));
    run_ok(
        tool("wimlib-imagex")
            .args(["apply", "-", "1"])
            .arg(&target2)
            .stdin(std::fs::File::open(&g.pipable).unwrap()),
    );
    let mounted2 = MountedNtfs::image(&target2);
    let report2 = readback::compare_trees(source.path(), mounted2.path())
        .unwrap_or_else(|e| panic!("the pipable apply differs:\n{}", e.join("\n")));
    assert_eq!(report2, report);
}

/// One way to damage the applied volume, and what the comparison must then say.
struct Damage {
    what: &'static str,
    /// A line of the error must contain this.
    expect: &'static str,
    apply: fn(&Path),
}

fn flip_byte(root: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let p = root.join("Windows/System32/sizes/large.dat");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    let mut b = [0u8];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

fn set(root: &Path, rel: &str, name: &str, value: &[u8]) {
    readback::set_xattr(&root.join(rel), name, value).unwrap_or_else(|e| panic!("{e}"));
}

const DAMAGE: &[Damage] = &[
    Damage {
        what: "one byte of file data flipped",
        expect: "Windows/System32/sizes/large.dat: data differs",
        apply: flip_byte,
    },
    Damage {
        what: "a named stream rewritten",
        expect: "Users/Public/Downloads/setup.exe: named stream \"Zone.Identifier\" differs",
        apply: |r| {
            set(
                r,
                "Users/Public/Downloads/setup.exe",
                "user.Zone.Identifier",
                b"[ZoneTransfer]\r\nZoneId=0\r\n",
            )
        },
    },
    Damage {
        what: "a named stream deleted",
        expect: "Users/Public/Downloads/setup.exe: named stream \"SmartScreen\" missing",
        apply: |r| {
            readback::remove_xattr(
                &r.join("Users/Public/Downloads/setup.exe"),
                "user.SmartScreen",
            )
            .unwrap()
        },
    },
    Damage {
        what: "a directory's security descriptor replaced",
        expect: "Windows/System32/config: security descriptor differs",
        apply: |r| {
            let sd = readback::get_xattr(&r.join("Windows/System32/config/SYSTEM"), XATTR_ACL)
                .unwrap()
                .unwrap();
            set(r, "Windows/System32/config", XATTR_ACL, &sd)
        },
    },
    Damage {
        what: "the junction retargeted",
        expect: "Documents and Settings: reparse data differs",
        apply: |r| {
            let mut rp = readback::get_xattr(&r.join("Documents and Settings"), XATTR_REPARSE)
                .unwrap()
                .unwrap();
            // "C:\Users" -> "D:\Users" in both names (UTF-16: every 'C' is 0x43 0x00).
            for i in 0..rp.len() - 1 {
                if rp[i] == b'C' && rp[i + 1] == 0 && i > 8 {
                    rp[i] = b'D';
                }
            }
            set(r, "Documents and Settings", XATTR_REPARSE, &rp)
        },
    },
    Damage {
        what: "a hard link broken into two copies",
        expect: "hard links differ",
        apply: |r| {
            let (a, b) = (
                r.join("Windows/notepad.exe"),
                r.join("Windows/System32/notepad.exe"),
            );
            let data = std::fs::read(&a).unwrap();
            std::fs::remove_file(&a).unwrap();
            std::fs::write(&a, data).unwrap();
            // Same descriptor, so the link is the thing that differs.
            let sd = readback::get_xattr(&b, XATTR_ACL).unwrap().unwrap();
            readback::set_xattr(&a, XATTR_ACL, &sd).unwrap();
        },
    },
    Damage {
        what: "a DOS name changed",
        expect: "Program Files: DOS name differs (expected \"PROGRA~1\", found \"PROGRA~3\")",
        apply: |r| set(r, "Program Files", XATTR_DOS_NAME, b"PROGRA~3"),
    },
    Damage {
        what: "a file's attributes cleared",
        expect: "Users/Public/desktop.ini: attributes differ (expected 0x26, found 0x20)",
        apply: |r| {
            set(
                r,
                "Users/Public/desktop.ini",
                XATTR_ATTRIB,
                &0x20u32.to_le_bytes(),
            )
        },
    },
    Damage {
        what: "a file deleted",
        expect: "Windows/System32/drivers/etc/hosts: missing from the applied volume",
        apply: |r| std::fs::remove_file(r.join("Windows/System32/drivers/etc/hosts")).unwrap(),
    },
    Damage {
        what: "a file added",
        expect: "Windows/extra.txt: present on the applied volume but not in the golden image",
        apply: |r| std::fs::write(r.join("Windows/extra.txt"), b"x").unwrap(),
    },
];

#[test]
fn comparison_fails_on_each_kind_of_damage_and_says_what() {
    if !golden_ntfs::prerequisites() {
        return;
    }
    let g = golden();
    let s = Scratch::new("damage");
    let pristine = s.join("pristine.img");
    applied(&g.wim, &pristine);
    let source = MountedNtfs::image(&g.source);

    for d in DAMAGE {
        let img = s.join("damaged.img");
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&pristine)
                .arg(&img),
        );
        let rw = MountedNtfs::image_rw(&img);
        (d.apply)(rw.path());
        rw.unmount()
            .unwrap_or_else(|e| panic!("{}: unmount: {e}", d.what));
        let ro = MountedNtfs::image(&img);
        match readback::compare_trees(source.path(), ro.path()) {
            Ok(r) => panic!("{}: the comparison passed ({r:?})", d.what),
            Err(lines) => {
                eprintln!("{}:\n  {}", d.what, lines.join("\n  "));
                assert!(
                    lines.iter().any(|l| l.contains(d.expect)),
                    "{}: no line says {:?}:\n{}",
                    d.what,
                    d.expect,
                    lines.join("\n")
                );
            }
        }
        if d.what == "a file added" {
            // What the imager writes after apply is allowed when named.
            readback::compare_trees_allowing(source.path(), ro.path(), &["Windows/extra.txt"])
                .unwrap_or_else(|e| panic!("allowed addition refused:\n{}", e.join("\n")));
        }
    }
}

#[test]
fn partition_tables_read_back_through_sfdisk() {
    if !have_tools(&["sfdisk"], "reading partition tables") {
        return;
    }
    let s = Scratch::new("tables");
    let sfdisk = |disk: &Path, script: &str| {
        let f = std::fs::File::create(disk).unwrap();
        f.set_len(2 << 30).unwrap();
        drop(f);
        if let Err(e) = readback::write_table(disk, script) {
            panic!("sfdisk {script}: {e}");
        }
    };

    // The GPT layout of the research note §2.1.
    let gpt = s.join("gpt.img");
    sfdisk(
        &gpt,
        "label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\nunit: sectors\n\
         start=2048, size=532480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=11111111-2222-3333-4444-000000000001, name=\"EFI system partition\"\n\
         start=534528, size=32768, type=E3C9E316-0B5C-4DB8-817D-F92DF00215AE, uuid=11111111-2222-3333-4444-000000000002, name=\"Microsoft reserved partition\"\n\
         start=567296, size=1529856, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=11111111-2222-3333-4444-000000000003, name=\"Basic data partition\"\n\
         start=2097152, type=DE94BBA4-06D1-4D40-A16A-BFD50179D6AC, uuid=11111111-2222-3333-4444-000000000004, name=\"Basic data partition\", attrs=\"RequiredPartition GUID:63\"\n",
    );
    let t = Table::read(&gpt);
    assert_eq!(t.label, "gpt");
    assert_eq!(t.id, "11111111-2222-3333-4444-555555555555");
    assert_eq!(t.sector_size, 512);
    assert_eq!(t.partitions.len(), 4);
    assert_eq!(t.partitions[0].start, 2048);
    assert_eq!(t.partitions[0].size, 532480);
    assert_eq!(
        t.partitions[0].type_,
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    );
    assert_eq!(
        t.partitions[2].uuid.as_deref(),
        Some("11111111-2222-3333-4444-000000000003")
    );
    assert_eq!(
        t.partitions[1].name.as_deref(),
        Some("Microsoft reserved partition")
    );
    assert_eq!(
        t.partitions[3].attrs.as_deref(),
        Some("RequiredPartition GUID:63")
    );
    assert_eq!(t.partitions[0].attrs, None);
    assert!(!t.partitions[0].bootable);
    assert_eq!(t.extent(2), (567296 * 512, 1529856 * 512));
    assert_eq!(
        readback::partition_table(&gpt)["partitiontable"]["unit"],
        "sectors"
    );

    // The MBR layout of §2.2, with syslinux's MBR code when it is installed.
    let mbr = s.join("mbr.img");
    sfdisk(
        &mbr,
        "label: dos\nlabel-id: 0x1234abcd\nunit: sectors\n\
         start=2048, size=204800, type=c, bootable\n\
         start=206848, size=1683456, type=7\n\
         start=1890304, type=27\n",
    );
    let t = Table::read(&mbr);
    assert_eq!((t.label.as_str(), t.id.as_str()), ("dos", "0x1234abcd"));
    let types: Vec<&str> = t.partitions.iter().map(|p| p.type_.as_str()).collect();
    assert_eq!(types, ["c", "7", "27"]);
    let active: Vec<bool> = t.partitions.iter().map(|p| p.bootable).collect();
    assert_eq!(active, [true, false, false]);
    assert_eq!(t.partitions[1].uuid, None);
    assert_eq!(readback::disk_signature(&mbr), 0x1234_abcd);
    assert_eq!(readback::mbr_boot_code(&mbr), [0u8; 440]);
    let mbr_bin = Path::new("/usr/lib/syslinux/mbr/mbr.bin");
    if mbr_bin.is_file() {
        let code = std::fs::read(mbr_bin).unwrap();
        write_at(&mbr, 0, &code[..440]);
        assert_eq!(readback::mbr_boot_code(&mbr).as_slice(), &code[..440]);
        // The code ends where the signature begins: both survive.
        assert_eq!(readback::disk_signature(&mbr), 0x1234_abcd);
        assert_eq!(Table::read(&mbr).partitions.len(), 3);
    }
}

fn write_at(file: &Path, offset: u64, data: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
}

/// How [`fat_disk`] partitions.
#[derive(Clone, Copy, PartialEq)]
enum Label {
    /// One EFI system partition.
    Gpt,
    /// One active FAT32 partition (the BIOS system partition).
    Dos,
}

/// A disk image with one FAT partition at 1 MiB holding `files` (path → bytes; directories
/// are made as needed), built with mkfs.fat and mtools. Returns the partition's byte offset.
fn fat_disk(disk: &Path, files: &[(&str, &[u8])], fat: &str, mib: u64, label: Label) -> u64 {
    let part = disk.with_extension("part");
    let f = std::fs::File::create(&part).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    run_ok(
        tool("mkfs.fat")
            .args(["-F", fat, "-h", "2048", "-n", "SYSTEM"])
            .arg(&part),
    );
    for (path, data) in files {
        let mut dir = String::from("::");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for d in &parts[..parts.len() - 1] {
            dir = format!("{dir}/{d}");
            let _ = tool("mmd")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&part)
                .arg(&dir)
                .output();
        }
        let local = disk.with_extension("tmp");
        std::fs::write(&local, data).unwrap();
        run_ok(
            tool("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&part)
                .arg(&local)
                .arg(format!("::{path}")),
        );
        let _ = std::fs::remove_file(&local);
    }
    let f = std::fs::File::create(disk).unwrap();
    f.set_len((mib + 2) << 20).unwrap();
    drop(f);
    let mut child = tool("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let script = match label {
        Label::Gpt => format!(
            "label: gpt\nstart=2048, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
            mib * 2048
        ),
        Label::Dos => format!(
            "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size={}, type=c, bootable\n",
            mib * 2048
        ),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    write_at(disk, 1 << 20, &std::fs::read(&part).unwrap());
    let _ = std::fs::remove_file(&part);
    1 << 20
}

#[test]
fn fat_volumes_read_back_through_mtools() {
    if !have_tools(
        &["sfdisk", "mkfs.fat", "mdir", "mcopy", "mmd", "mattrib"],
        "FAT read-back",
    ) {
        return;
    }
    let s = Scratch::new("fat");
    let disk = s.join("esp.img");
    let bcd = wimlib::noise(5, 24 * 1024);
    let off = fat_disk(
        &disk,
        &[
            ("/EFI/Microsoft/Boot/BCD", &bcd),
            ("/EFI/Boot/bootx64.efi", b"MZ stand-in"),
            ("/EFI/Microsoft/Boot/Fonts/segmono_boot.ttf", b"font"),
        ],
        "32",
        40,
        Label::Gpt,
    );
    let listed = readback::fat_list(&disk, off);
    for want in [
        "/EFI/",
        "/EFI/Boot/",
        "/EFI/Boot/bootx64.efi",
        "/EFI/Microsoft/Boot/BCD",
        "/EFI/Microsoft/Boot/Fonts/segmono_boot.ttf",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} not in {listed:?}");
    }
    assert_eq!(
        readback::fat_read(&disk, off, "/EFI/Microsoft/Boot/BCD"),
        bcd
    );
    assert_eq!(
        readback::fat_read(&disk, off, "EFI/Boot/bootx64.efi"),
        b"MZ stand-in"
    );
    // bcdboot marks the BIOS \bootmgr system, hidden, read-only; mattrib reads FAT flags.
    run_ok(
        tool("mattrib")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{off}", disk.display()))
            .args(["+s", "+h", "+r", "::/EFI/Boot/bootx64.efi"]),
    );
    assert_eq!(
        readback::fat_attributes(&disk, off, "/EFI/Boot/bootx64.efi"),
        "A  SHR"
    );
    assert!(
        readback::fat_list(&disk, off)
            .iter()
            .any(|l| l == "/EFI/Boot/bootx64.efi"),
        "hidden files are listed"
    );
}

#[test]
fn partition_mount_reads_an_ntfs_partition_inside_a_disk() {
    if !golden_ntfs::prerequisites() {
        return;
    }
    let g = golden();
    let s = Scratch::new("partition");
    // The applied volume placed as partition 2 of an MBR disk, read through losetup -o.
    let vol = s.join("vol.img");
    applied(&g.wim, &vol);
    let disk = s.join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(80 << 20).unwrap();
    drop(f);
    let mut child = tool("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=20480, type=c, bootable\nstart=22528, size=131072, type=7\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", vol.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=1M", "seek=11", "conv=notrunc,sparse", "status=none"]),
    );
    let t = Table::read(&disk);
    let (off, len) = t.extent(1);
    assert_eq!((off, len), (11 << 20, 64 << 20));
    let loops_before = loop_devices();
    {
        let part = MountedNtfs::partition(&disk, off, len);
        let source = MountedNtfs::image(&g.source);
        readback::compare_trees(source.path(), part.path())
            .unwrap_or_else(|e| panic!("{}", e.join("\n")));
        // Read-only: writing fails.
        assert!(std::fs::write(part.path().join("x"), b"x").is_err());
    }
    // Dropping unmounted and freed the loop device.
    wait_until(Duration::from_secs(10), || loop_devices() == loops_before);
    assert_eq!(loop_devices(), loops_before, "a loop device leaked");
}

/// Loop devices backed by a file in this process's scratch dirs.
fn loop_devices() -> Vec<String> {
    let out = tool("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    let tag = format!("readback-partition-{}", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect()
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit && !done() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The stand-ins boot

/// Runs QEMU (TCG) until it exits or `limit` passes; returns the serial log and whether it
/// exited by itself. Kills it on the way out whatever happens.
fn qemu(args: &[&str], log: &Path, limit: Duration) -> (String, bool) {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "256",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("run qemu-system-x86_64"),
    );
    let start = Instant::now();
    let exited = loop {
        if let Ok(Some(_)) = child.0.try_wait() {
            break true;
        }
        if start.elapsed() > limit {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "qemu ran {:?} (exited by itself: {exited})",
        start.elapsed()
    );
    (
        String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned(),
        exited,
    )
}

#[test]
fn efi_standin_boots_under_ovmf_from_the_fallback_path() {
    let ovmf = Path::new("/usr/share/ovmf/OVMF.fd");
    if !have_tools(
        &[
            "qemu-system-x86_64",
            "grub-mkstandalone",
            "mkfs.fat",
            "mcopy",
            "mmd",
            "sfdisk",
        ],
        "booting the UEFI stand-in",
    ) {
        return;
    }
    if !ovmf.is_file() {
        recast_tests::skip_or_fail(
            REQUIRE_IMAGER,
            "no /usr/share/ovmf/OVMF.fd (apt-get install ovmf)",
        );
        return;
    }
    let s = Scratch::new("efi-boot");
    let efi = s.join("bootmgfw.efi");
    golden_ntfs::grub_standin(golden_ntfs::BOOTMGFW_MARKER, &efi);
    let disk = s.join("esp-disk.img");
    fat_disk(
        &disk,
        &[("/EFI/Boot/bootx64.efi", &std::fs::read(&efi).unwrap())],
        "16",
        32,
        Label::Gpt,
    );
    let (log, exited) = qemu(
        &[
            "-bios",
            &ovmf.display().to_string(),
            "-drive",
            &format!("file={},format=raw", disk.display()),
            "-net",
            "none",
        ],
        &s.join("serial.log"),
        Duration::from_secs(180),
    );
    assert!(
        log.contains(golden_ntfs::BOOTMGFW_MARKER),
        "no {} on the serial console:\n{log}",
        golden_ntfs::BOOTMGFW_MARKER
    );
    assert!(exited, "GRUB's halt did not power the VM off:\n{log}");
}

#[test]
fn bios_standin_boots_through_syslinux_chain_ntldr() {
    let bios = Path::new("/usr/lib/syslinux/modules/bios");
    let mbr_bin = Path::new("/usr/lib/syslinux/mbr/mbr.bin");
    if !have_tools(
        &[
            "qemu-system-x86_64",
            "syslinux",
            "mkfs.fat",
            "mcopy",
            "mmd",
            "sfdisk",
        ],
        "booting the BIOS stand-in",
    ) {
        return;
    }
    if !mbr_bin.is_file() || !bios.join("chain.c32").is_file() {
        recast_tests::skip_or_fail(
            REQUIRE_IMAGER,
            "no syslinux mbr.bin/chain.c32 (apt-get install syslinux-common)",
        );
        return;
    }
    let s = Scratch::new("bios-boot");
    let c32 = |n: &str| std::fs::read(bios.join(n)).unwrap();
    let cfg =
        b"SERIAL 0 115200\nDEFAULT w\nLABEL w\n  COM32 chain.c32\n  APPEND boot ntldr=/bootmgr\n";
    let (chain, libcom32, libutil) = (c32("chain.c32"), c32("libcom32.c32"), c32("libutil.c32"));
    let standin = golden_ntfs::bootmgr_standin();
    let disk = s.join("bios-disk.img");
    let off = fat_disk(
        &disk,
        &[
            ("/chain.c32", &chain),
            ("/libcom32.c32", &libcom32),
            ("/libutil.c32", &libutil),
            ("/syslinux.cfg", cfg),
            ("/bootmgr", &standin),
        ],
        "32",
        40,
        Label::Dos,
    );
    write_at(&disk, 0, &std::fs::read(mbr_bin).unwrap()[..440]);
    run_ok(
        tool("syslinux")
            .arg("--offset")
            .arg(off.to_string())
            .arg("--install")
            .arg(&disk),
    );
    let (log, exited) = qemu(
        &[
            "-drive",
            &format!("file={},format=raw", disk.display()),
            "-net",
            "none",
        ],
        &s.join("serial.log"),
        Duration::from_secs(60),
    );
    assert!(
        log.contains(golden_ntfs::BOOTMGR_MARKER),
        "no {} on the serial console:\n{log}",
        golden_ntfs::BOOTMGR_MARKER
    );
    assert!(exited, "the stand-in did not power the VM off:\n{log}");
}

#[test]
fn bootmgr_standin_bytes_match_their_assembly() {
    if !have_tools(&["as", "ld"], "assembling the bootmgr stand-in") {
        return;
    }
    let s = Scratch::new("asm");
    let src = s.join("standin.S");
    std::fs::write(&src, golden_ntfs::BOOTMGR_STANDIN_ASM).unwrap();
    run_ok(
        Command::new("as")
            .args(["--32", "-o"])
            .arg(s.join("standin.o"))
            .arg(&src),
    );
    run_ok(
        Command::new("ld")
            .args([
                "-m",
                "elf_i386",
                "-Ttext=0",
                "-e",
                "0",
                "--oformat",
                "binary",
                "-o",
            ])
            .arg(s.join("standin.bin"))
            .arg(s.join("standin.o")),
    );
    assert_eq!(
        std::fs::read(s.join("standin.bin")).unwrap(),
        golden_ntfs::bootmgr_standin()
    );
}
