//! The golden WIM for the imaging suites, captured the way a real one is: from an NTFS volume
//! (wimlib's NTFS-3G capture mode), so it carries what a directory capture cannot: security
//! descriptors, named streams, a junction, hard links, DOS names, attributes. The tree is a
//! miniature installed Windows: boot files where bcdboot looks for them (stand-ins that print
//! a marker on COM1, so a VM test can prove the imaged disk boots), a BCD-Template, and the
//! servicing store recast's golden-image checks read ([`crate::wimlib::make_tree`]).
//!
//! Building needs root (ntfs-3g FUSE mount of the source image), mkntfs, ntfs-3g,
//! wimlib-imagex and grub-mkstandalone; [`prerequisites`] checks and skips loudly.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::readback::{self, MountedNtfs, find_tool, run_ok, set_xattr, tool};
use crate::secure_boot::{Era, TestCas};
use crate::wimlib::{self, BuildUbr};

/// Environment variable that makes the imager tier (root, FUSE, loop devices, wimlib, QEMU)
/// mandatory (CI sets it).
pub const REQUIRE_IMAGER: &str = "RECAST_REQUIRE_IMAGER";

/// Printed on the serial console by the `bootmgfw.efi` stand-in (also `\EFI\Boot\bootx64.efi`
/// after bcdboot's copy): the UEFI disk boot reached Windows' boot manager.
pub const BOOTMGFW_MARKER: &str = "recast-bootmgfw-standin";
/// Printed by the `bootmgr.efi` stand-in (never the firmware's first choice).
pub const BOOTMGR_EFI_MARKER: &str = "recast-bootmgr-efi-standin";
/// Printed by the `memtest.efi` stand-in.
pub const MEMTEST_EFI_MARKER: &str = "recast-memtest-efi-standin";
/// Printed on COM1 by the BIOS `bootmgr` stand-in: the BIOS disk boot reached `\bootmgr`.
pub const BOOTMGR_MARKER: &str = "recast-bootmgr-standin";

/// The image's name in the WIM (index 1).
pub const IMAGE_NAME: &str = "Windows 11 Enterprise";

/// Where the boot files are in the image (bcdboot's sources, see the research note §1.7).
pub mod paths {
    pub const BOOTMGFW_EFI: &str = "Windows/Boot/EFI/bootmgfw.efi";
    pub const BOOTMGR_EFI: &str = "Windows/Boot/EFI/bootmgr.efi";
    pub const MEMTEST_EFI: &str = "Windows/Boot/EFI/memtest.efi";
    pub const BOOTMGFW_MUI: &str = "Windows/Boot/EFI/en-US/bootmgfw.efi.mui";
    pub const PCAT_BOOTMGR: &str = "Windows/Boot/PCAT/bootmgr";
    pub const PCAT_BOOTNXT: &str = "Windows/Boot/PCAT/bootnxt";
    pub const PCAT_MEMTEST: &str = "Windows/Boot/PCAT/memtest.exe";
    pub const PCAT_BOOTMGR_MUI: &str = "Windows/Boot/PCAT/en-US/bootmgr.exe.mui";
    pub const FONT: &str = "Windows/Boot/Fonts/segmono_boot.ttf";
    pub const RESOURCES: &str = "Windows/Boot/Resources/bootres.dll";
    pub const BCD_TEMPLATE: &str = "Windows/System32/config/BCD-Template";
}

/// The BIOS `bootmgr` stand-in: a flat 16-bit real-mode program that writes [`BOOTMGR_MARKER`]
/// to COM1 and powers the machine off. It is position independent (it finds its message with
/// call/pop and addresses it through DS = CS), so it runs wherever a loader puts it: syslinux
/// `chain.c32 ntldr=/bootmgr` loads it at 0x2000:0000 and jumps there, as the NT boot sector
/// would. It uses two bytes of whatever stack the loader left.
///
/// Assembly (GNU as, `.code16`; [`BOOTMGR_STANDIN_ASM`] is the same text, which a test
/// assembles when binutils is installed and compares with these bytes):
///
/// ```text
/// 00  fc          cld                      ; lodsb counts up
/// 01  0e          push %cs
/// 02  1f          pop  %ds                 ; DS = CS: our bytes, wherever we were loaded
/// 03  e8 00 00    call here                ; pushes the run-time offset of `here`
/// 06  5e    here: pop  %si
/// 07  81 c6 27 00 add  $(msg-here), %si    ; SI = run-time offset of msg
/// 0b  ac    next: lodsb                    ; AL = DS:[SI++]
/// 0c  84 c0       test %al, %al
/// 0e  74 12       jz   done                ; NUL ends the message
/// 10  88 c4       mov  %al, %ah
/// 12  ba fd 03    mov  $0x3fd, %dx         ; COM1 line status register
/// 15  ec    wait: in   %dx, %al
/// 16  a8 20       test $0x20, %al          ; transmit holding register empty?
/// 18  74 fb       jz   wait
/// 1a  88 e0       mov  %ah, %al
/// 1c  ba f8 03    mov  $0x3f8, %dx         ; COM1 data
/// 1f  ee          out  %al, %dx
/// 20  eb e9       jmp  next
/// 22  b8 00 20    done: mov $0x2000, %ax   ; SLP_EN with SLP_TYP 0 (S5) ...
/// 25  ba 04 06    mov  $0x604, %dx         ; ... into PM1a_CNT: SeaBIOS puts the ACPI PM
/// 28  ef          out  %ax, %dx            ;     block at 0x600 on QEMU's pc and q35
/// 29  fa          cli                      ; elsewhere: stop here
/// 2a  f4    hang: hlt
/// 2b  eb fd       jmp  hang
/// 2d  "recast-bootmgr-standin\r\n\0"  msg
/// ```
///
/// Verified on this machine (QEMU 7.2, SeaBIOS 1.16.2, syslinux 6.04): a disk with syslinux's
/// mbr.bin, an active FAT32 partition with `syslinux --install`, chain.c32 + libcom32.c32 +
/// libutil.c32 and `APPEND boot ntldr=/bootmgr` printed "Booting..." then the marker, and QEMU
/// exited by itself (the power-off) about 0.3 s after start, on `-M pc` and `-M q35`.
/// (An earlier draft that kept 0x3fd in DX and decremented it wrote to 0x3fc, the modem
/// control register, and printed nothing: the boot test is what caught it.)
pub fn bootmgr_standin() -> Vec<u8> {
    let mut b = vec![
        0xfc, 0x0e, 0x1f, 0xe8, 0x00, 0x00, 0x5e, 0x81, 0xc6, 0x27, 0x00, 0xac, 0x84, 0xc0, 0x74,
        0x12, 0x88, 0xc4, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x20, 0x74, 0xfb, 0x88, 0xe0, 0xba, 0xf8,
        0x03, 0xee, 0xeb, 0xe9, 0xb8, 0x00, 0x20, 0xba, 0x04, 0x06, 0xef, 0xfa, 0xf4, 0xeb, 0xfd,
    ];
    b.extend_from_slice(BOOTMGR_MARKER.as_bytes());
    b.extend_from_slice(b"\r\n\0");
    b
}

/// The source of [`bootmgr_standin`] for GNU as (`as --32`, then `ld -m elf_i386 -Ttext=0
/// --oformat binary`).
pub const BOOTMGR_STANDIN_ASM: &str = r#".code16
  cld
  push %cs
  pop %ds
  call here
here:
  pop %si
  add $(msg - here), %si
next:
  lodsb
  test %al, %al
  jz done
  mov %al, %ah
  mov $0x3fd, %dx
wait:
  in %dx, %al
  test $0x20, %al
  jz wait
  mov %ah, %al
  mov $0x3f8, %dx
  out %al, %dx
  jmp next
done:
  mov $0x2000, %ax
  mov $0x604, %dx
  out %ax, %dx
  cli
hang:
  hlt
  jmp hang
msg: .ascii "recast-bootmgr-standin\r\n\0"
"#;

/// Builds a UEFI stand-in with `grub-mkstandalone -O x86_64-efi`: GRUB with an embedded
/// grub.cfg that prints `marker` on COM1 (and the firmware console) and powers off.
///
/// Verified on this machine (OVMF 2022.11 from Debian's ovmf, QEMU 7.2, grub-efi-amd64-bin
/// 2.06): with the image as `\EFI\Boot\bootx64.efi` on a FAT16 ESP of a GPT disk, `qemu-system-
/// x86_64 -accel tcg -m 256 -bios /usr/share/ovmf/OVMF.fd -drive file=disk,format=raw -serial
/// file:log -display none -no-reboot` found it through the removable-media fallback path with
/// empty NVRAM, the log showed "Welcome to GRUB!" and the marker (twice: GRUB's serial terminal
/// and OVMF's console, which OVMF also mirrors to COM1), and `halt` made QEMU exit with status
/// 0 about 4 s after start. The image is ~620 KiB (only the modules the config needs).
pub fn grub_standin(marker: &str, out: &Path) {
    let cfg = out.with_extension("cfg");
    std::fs::write(
        &cfg,
        format!(
            "serial --unit=0 --speed=115200\nterminal_output serial console\necho {marker}\nhalt\n"
        ),
    )
    .expect("write grub.cfg");
    run_ok(
        tool("grub-mkstandalone")
            .args(["-O", "x86_64-efi", "-o"])
            .arg(out)
            // Only what the config uses: keeps the image small and the build fast.
            .args([
                "--install-modules=normal serial echo halt terminal configfile",
                "--modules=serial halt",
                "--locales=",
                "--fonts=",
                "--themes=",
            ])
            .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
    );
    let _ = std::fs::remove_file(&cfg);
}

/// The stand-in boot programs as separate files (what the imaged ESP or system partition must
/// hold, byte for byte).
#[derive(Clone, Debug)]
pub struct Standins {
    pub bootmgfw_efi: PathBuf,
    pub bootmgr_efi: PathBuf,
    pub memtest_efi: PathBuf,
    /// The BIOS `\Windows\Boot\PCAT\bootmgr`.
    pub bootmgr: PathBuf,
}

/// The things in the golden image a plain file copy would lose, each as it was set through
/// ntfs-3g's xattrs. The builder applies exactly this description, so the two cannot drift.
#[derive(Clone, Debug)]
pub struct Special {
    /// (path, self-relative security descriptor) set explicitly; everything else has
    /// ntfs-3g's default descriptor.
    pub security_descriptors: Vec<(&'static str, Vec<u8>)>,
    /// (path, stream name, bytes): alternate data streams.
    pub named_streams: Vec<(&'static str, &'static str, Vec<u8>)>,
    /// (path, target as Windows writes it, reparse point bytes): junctions (tag 0xA0000003).
    pub junctions: Vec<(&'static str, &'static str, Vec<u8>)>,
    /// Pairs of names of one file.
    pub hard_links: Vec<[&'static str; 2]>,
    /// (path, 8.3 name).
    pub dos_names: Vec<(&'static str, &'static str)>,
    /// (path, FILE_ATTRIBUTE_* set); NTFS adds DIRECTORY/REPARSE_POINT bits itself.
    pub attributes: Vec<(&'static str, u32)>,
    /// (path, size) of files of deterministic content ([`wimlib::noise`]), from empty (no data
    /// run) through resident in the MFT record to non-resident above 1 MiB.
    pub sized_files: Vec<(&'static str, usize)>,
}

/// The golden image [`build_golden`] made.
#[derive(Clone, Debug)]
pub struct GoldenWim {
    /// The NTFS image file the WIM was captured from: mount it read-only
    /// ([`MountedNtfs::image`]) as the "expected" side of [`readback::compare_trees`].
    pub source: PathBuf,
    /// `capture --compress=none`, image 1 [`IMAGE_NAME`], with DISM's XML properties.
    pub wim: PathBuf,
    /// The same tree captured `--pipable` (for `wimlib-imagex apply -` from a stream).
    pub pipable: PathBuf,
    pub build: BuildUbr,
    /// The RollupFix package's KB in the servicing store.
    pub kb: String,
    pub special: Special,
    pub standins: Standins,
    /// sha256 (hex) of each file.
    pub wim_sha256: String,
    pub pipable_sha256: String,
}

// -- security descriptors -----------------------------------------------------------------

fn sid(authority: u64, subs: &[u32]) -> Vec<u8> {
    let mut v = vec![1, subs.len() as u8];
    v.extend_from_slice(&authority.to_be_bytes()[2..]);
    for s in subs {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// Well-known SIDs.
fn sid_system() -> Vec<u8> {
    sid(5, &[18])
}
fn sid_admins() -> Vec<u8> {
    sid(5, &[32, 544])
}
fn sid_users() -> Vec<u8> {
    sid(5, &[32, 545])
}
fn sid_everyone() -> Vec<u8> {
    sid(1, &[0])
}
/// NT SERVICE\TrustedInstaller, owner of Windows' own files.
fn sid_trusted_installer() -> Vec<u8> {
    sid(
        5,
        &[
            80, 956008885, 3418522649, 1831038044, 1853292631, 2271478464,
        ],
    )
}

const ALLOW: u8 = 0;
const DENY: u8 = 1;
/// OBJECT_INHERIT | CONTAINER_INHERIT.
const OICI: u8 = 0x03;
const FULL: u32 = 0x001F_01FF;
/// Read and execute.
const RX: u32 = 0x0012_00A9;
/// FILE_LIST_DIRECTORY.
const LIST: u32 = 0x0000_0001;

/// A self-relative security descriptor with a protected DACL (SE_SELF_RELATIVE |
/// SE_DACL_PROTECTED | SE_DACL_PRESENT), laid out header, DACL, owner, group.
fn security_descriptor(owner: &[u8], group: &[u8], aces: &[(u8, u8, u32, Vec<u8>)]) -> Vec<u8> {
    let mut acl_body = Vec::new();
    for (kind, flags, mask, sid) in aces {
        acl_body.push(*kind);
        acl_body.push(*flags);
        acl_body.extend_from_slice(&((8 + sid.len()) as u16).to_le_bytes());
        acl_body.extend_from_slice(&mask.to_le_bytes());
        acl_body.extend_from_slice(sid);
    }
    let mut acl = vec![2, 0];
    acl.extend_from_slice(&((8 + acl_body.len()) as u16).to_le_bytes());
    acl.extend_from_slice(&(aces.len() as u16).to_le_bytes());
    acl.extend_from_slice(&[0, 0]);
    acl.extend_from_slice(&acl_body);
    let dacl_at = 20u32;
    let owner_at = dacl_at + acl.len() as u32;
    let group_at = owner_at + owner.len() as u32;
    let mut sd = vec![1, 0];
    sd.extend_from_slice(&0x9004u16.to_le_bytes());
    for off in [owner_at, group_at, 0, dacl_at] {
        sd.extend_from_slice(&off.to_le_bytes());
    }
    sd.extend_from_slice(&acl);
    sd.extend_from_slice(owner);
    sd.extend_from_slice(group);
    sd
}

/// A mount-point reparse buffer for `target` ("C:\Users"): substitute name "\??\C:\Users",
/// print name "C:\Users", both NUL-terminated, as Windows writes junctions.
fn junction(target: &str) -> Vec<u8> {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let subst = utf16(&format!("\\??\\{target}"));
    let print = utf16(target);
    let mut buf = subst.clone();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&print);
    buf.extend_from_slice(&[0, 0]);
    let mut rp = 0xA000_0003u32.to_le_bytes().to_vec();
    rp.extend_from_slice(&((8 + buf.len()) as u16).to_le_bytes());
    rp.extend_from_slice(&[0, 0]);
    for v in [0, subst.len(), subst.len() + 2, print.len()] {
        rp.extend_from_slice(&(v as u16).to_le_bytes());
    }
    rp.extend_from_slice(&buf);
    rp
}

const HIDDEN: u32 = 0x2;
const SYSTEM: u32 = 0x4;
const DIRECTORY: u32 = 0x10;
const ARCHIVE: u32 = 0x20;
const NOT_CONTENT_INDEXED: u32 = 0x2000;

/// The special cases of the golden image.
pub fn special() -> Special {
    let (sy, ba, bu, wd, ti) = (
        sid_system(),
        sid_admins(),
        sid_users(),
        sid_everyone(),
        sid_trusted_installer(),
    );
    Special {
        security_descriptors: vec![
            // Windows\System32\config: SYSTEM and Administrators only, inherited by children.
            (
                "Windows/System32/config",
                security_descriptor(
                    &sy,
                    &sy,
                    &[
                        (ALLOW, OICI, FULL, sy.clone()),
                        (ALLOW, OICI, FULL, ba.clone()),
                    ],
                ),
            ),
            (
                "Windows/System32/config/SYSTEM",
                security_descriptor(
                    &sy,
                    &sy,
                    &[(ALLOW, 0, FULL, sy.clone()), (ALLOW, 0, FULL, ba.clone())],
                ),
            ),
            // Owned by TrustedInstaller, read-only for everyone else: what Windows' own
            // binaries carry.
            (
                "Windows/System32/notepad.exe",
                security_descriptor(
                    &ti,
                    &ti,
                    &[
                        (ALLOW, 0, FULL, ti.clone()),
                        (ALLOW, 0, RX, sy.clone()),
                        (ALLOW, 0, RX, ba.clone()),
                        (ALLOW, 0, RX, bu.clone()),
                    ],
                ),
            ),
            // The legacy junction: Everyone may not list it (so tools do not recurse into
            // C:\Users twice), with a deny ACE first.
            (
                "Documents and Settings",
                security_descriptor(
                    &sy,
                    &sy,
                    &[
                        (DENY, 0, LIST, wd.clone()),
                        (ALLOW, 0, RX, wd.clone()),
                        (ALLOW, 0, FULL, sy.clone()),
                        (ALLOW, 0, FULL, ba.clone()),
                    ],
                ),
            ),
        ],
        named_streams: vec![
            (
                "Users/Public/Downloads/setup.exe",
                "Zone.Identifier",
                b"[ZoneTransfer]\r\nZoneId=3\r\nReferrerUrl=https://example.com/\r\n".to_vec(),
            ),
            (
                "Users/Public/Downloads/setup.exe",
                "SmartScreen",
                b"Anaheim".to_vec(),
            ),
            // Larger than fits in an MFT record: a non-resident stream.
            (
                "Windows/System32/sizes/large.dat",
                "recast.nonresident",
                wimlib::noise(77, 8192),
            ),
        ],
        junctions: vec![("Documents and Settings", "C:\\Users", junction("C:\\Users"))],
        hard_links: vec![["Windows/System32/notepad.exe", "Windows/notepad.exe"]],
        dos_names: vec![
            ("Program Files", "PROGRA~1"),
            ("Program Files (x86)", "PROGRA~2"),
            ("Windows/System32/LongFileName.dat", "LONGFI~1.DAT"),
        ],
        attributes: vec![
            ("ProgramData", DIRECTORY | HIDDEN),
            ("Users/Public/desktop.ini", HIDDEN | SYSTEM | ARCHIVE),
            (
                "Documents and Settings",
                DIRECTORY | HIDDEN | SYSTEM | NOT_CONTENT_INDEXED,
            ),
        ],
        sized_files: vec![
            ("Windows/System32/sizes/empty.dat", 0),
            ("Windows/System32/sizes/one.dat", 1),
            ("Windows/System32/sizes/resident.dat", 600),
            ("Windows/System32/sizes/cluster.dat", 4096),
            ("Windows/System32/sizes/odd.dat", 65537),
            ("Windows/System32/sizes/large.dat", 1_572_865),
        ],
    }
}

/// The KB recast's checks expect for a build (the ones the suites use; others get a made-up
/// one).
pub fn kb_for(build: BuildUbr) -> String {
    match build {
        wimlib::JANUARY_2026 => "KB5074109".into(),
        wimlib::DECEMBER_2025 => "KB5072033".into(),
        (_, ubr) => format!("KB50{ubr:05}"),
    }
}

/// True when this process can build the golden image and mount NTFS volumes; otherwise skips
/// loudly (a failure when RECAST_REQUIRE_IMAGER=1) and returns false.
pub fn prerequisites() -> bool {
    if !crate::is_root() {
        crate::skip_or_fail(
            REQUIRE_IMAGER,
            "the NTFS golden image and read-back need root (FUSE mounts, loop devices)",
        );
        return false;
    }
    let missing: Vec<&str> = [
        "mkntfs",
        "ntfs-3g",
        "wimlib-imagex",
        "grub-mkstandalone",
        "losetup",
        "sfdisk",
        "mdir",
        "mcopy",
        "sbsign",
        "openssl",
    ]
    .into_iter()
    .filter(|t| find_tool(t).is_none())
    .collect();
    if !missing.is_empty() || !Path::new("/dev/fuse").exists() {
        crate::skip_or_fail(
            REQUIRE_IMAGER,
            &format!(
                "missing for the NTFS golden image: {}{} (apt-get install ntfs-3g wimtools grub-efi-amd64-bin fdisk mtools sbsigntool openssl)",
                missing.join(" "),
                if Path::new("/dev/fuse").exists() {
                    ""
                } else {
                    " /dev/fuse"
                }
            ),
        );
        return false;
    }
    true
}

/// Bump when the tree changes, so cached builds are redone.
const LAYOUT_VERSION: u32 = 2;
const SOURCE_BYTES: u64 = 64 << 20;

/// Builds (or reuses, when `dir` already holds a build for the same inputs) the golden image
/// in `dir`: `source.img` (NTFS), `golden.wim`, `golden-pipable.wim`, `standins/`. Safe to
/// call from several tests and processes at once (an flock on `dir/.lock` serialises them).
/// Root only; check [`prerequisites`] first.
pub fn build_golden(dir: &Path, build: BuildUbr, bcd_template: &[u8]) -> GoldenWim {
    build_golden_signed(dir, build, bcd_template, Era::Y2011)
}

/// [`build_golden`] with `\Windows\Boot\EFI\bootmgfw.efi` signed by `era`'s test signer
/// ([`crate::secure_boot::TestCas`]): the test fleet's firmware trusts 2011, not 2023.
pub fn build_golden_signed(
    dir: &Path,
    build: BuildUbr,
    bcd_template: &[u8],
    era: Era,
) -> GoldenWim {
    assert!(
        crate::is_root(),
        "build_golden mounts an NTFS image with ntfs-3g and needs root; call prerequisites() first"
    );
    std::fs::create_dir_all(dir.join("standins")).expect("create the golden directory");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .expect("open the golden lock");
    // SAFETY: flock on an open descriptor; released when `lock` is closed.
    let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", dir.join(".lock").display());

    let kb = kb_for(build);
    let standins = Standins {
        bootmgfw_efi: dir.join("standins/bootmgfw.efi"),
        bootmgr_efi: dir.join("standins/bootmgr.efi"),
        memtest_efi: dir.join("standins/memtest.efi"),
        bootmgr: dir.join("standins/bootmgr"),
    };
    let mut golden = GoldenWim {
        source: dir.join("source.img"),
        wim: dir.join("golden.wim"),
        pipable: dir.join("golden-pipable.wim"),
        build,
        kb: kb.clone(),
        special: special(),
        standins,
        wim_sha256: String::new(),
        pipable_sha256: String::new(),
    };
    let cas = TestCas::get();
    let key = format!(
        "layout {LAYOUT_VERSION}\nbuild {}.{}\nkb {kb}\nbcd-template {}\nbootmgfw signed by {era:?} {}\n",
        build.0,
        build.1,
        hex(&Sha256::digest(bcd_template)),
        cas.fingerprint()
    );
    let stamp = dir.join("golden.stamp");
    let outputs = [
        &golden.source,
        &golden.wim,
        &golden.pipable,
        &golden.standins.bootmgfw_efi,
        &golden.standins.bootmgr_efi,
        &golden.standins.memtest_efi,
        &golden.standins.bootmgr,
    ];
    let cached = std::fs::read_to_string(&stamp).is_ok_and(|s| s == key)
        && outputs.iter().all(|p| p.is_file());
    if !cached {
        let _ = std::fs::remove_file(&stamp);
        build_into(&golden, bcd_template, &cas, era);
        std::fs::write(&stamp, &key).expect("write the golden stamp");
    }
    golden.wim_sha256 = crate::sha256_file(&golden.wim);
    golden.pipable_sha256 = crate::sha256_file(&golden.pipable);
    golden
}

fn build_into(g: &GoldenWim, bcd_template: &[u8], cas: &TestCas, era: Era) {
    let wimlib = find_tool("wimlib-imagex").expect("wimlib-imagex (see prerequisites())");
    let unsigned = g.standins.bootmgfw_efi.with_extension("unsigned.efi");
    grub_standin(BOOTMGFW_MARKER, &unsigned);
    cas.sign(era, &unsigned, &g.standins.bootmgfw_efi);
    let _ = std::fs::remove_file(&unsigned);
    grub_standin(BOOTMGR_EFI_MARKER, &g.standins.bootmgr_efi);
    grub_standin(MEMTEST_EFI_MARKER, &g.standins.memtest_efi);
    std::fs::write(&g.standins.bootmgr, bootmgr_standin()).expect("write the bootmgr stand-in");

    // A fresh sparse file each time: mkntfs -Q writes only metadata, so this costs little.
    let _ = std::fs::remove_file(&g.source);
    let f = std::fs::File::create(&g.source).expect("create source.img");
    f.set_len(SOURCE_BYTES).expect("size source.img");
    drop(f);
    run_ok(
        tool("mkntfs")
            .args(["-Q", "-F", "-q", "-L", "Windows"])
            .arg(&g.source),
    );

    let mount = MountedNtfs::image_rw(&g.source);
    populate(mount.path(), g, bcd_template);
    // The unmount waits for ntfs-3g to exit, so the image is complete before capture reads it.
    mount
        .unmount()
        .unwrap_or_else(|e| panic!("writing the golden tree: {e}"));

    let props = wimlib::windows_props(g.build, "Enterprise");
    for (wim, extra) in [(&g.wim, None), (&g.pipable, Some("--pipable"))] {
        let _ = std::fs::remove_file(wim);
        let mut c = std::process::Command::new(&wimlib);
        // The source is an image file, so this is wimlib's NTFS-3G capture: it reads the
        // volume with libntfs-3g and keeps descriptors, streams, reparse points, DOS names.
        c.arg("capture")
            .arg(&g.source)
            .arg(wim)
            .arg(IMAGE_NAME)
            .arg("--compress=none");
        if let Some(x) = extra {
            c.arg(x);
        }
        run_ok(&mut c);
        wimlib::set_props(&wimlib, wim, 1, &props);
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    let mut f = std::fs::File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn xattr(root: &Path, rel: &str, name: &str, value: &[u8]) {
    set_xattr(&root.join(rel), name, value).unwrap_or_else(|e| panic!("{e}"));
}

fn populate(root: &Path, g: &GoldenWim, bcd_template: &[u8]) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // The servicing store and System32 payload exactly as the directory-captured suites make
    // them, so recast's golden-image checks read this WIM the same way.
    wimlib::make_tree(root, &[(g.build, g.kb.as_str())], 3);

    // Boot files: bcdboot copies these to the ESP / the BIOS system partition.
    write(root, paths::BOOTMGFW_EFI, &read(&g.standins.bootmgfw_efi));
    write(root, paths::BOOTMGR_EFI, &read(&g.standins.bootmgr_efi));
    write(root, paths::MEMTEST_EFI, &read(&g.standins.memtest_efi));
    write(root, paths::BOOTMGFW_MUI, &wimlib::noise(11, 10 * 1024));
    write(root, paths::PCAT_BOOTMGR, &read(&g.standins.bootmgr));
    write(root, paths::PCAT_BOOTNXT, &wimlib::noise(12, 2048));
    write(root, paths::PCAT_MEMTEST, &wimlib::noise(13, 70 * 1024));
    write(root, paths::PCAT_BOOTMGR_MUI, &wimlib::noise(14, 9 * 1024));
    write(root, paths::FONT, &wimlib::noise(15, 40 * 1024));
    write(root, paths::RESOURCES, &wimlib::noise(16, 90 * 1024));
    write(root, paths::BCD_TEMPLATE, bcd_template);
    // A real SYSTEM hive (the agent service, amd64), padded as a real one is with free space:
    // the golden-image checks read it, and its security descriptor is checked on the disk.
    let mut system = crate::hive::system_hive(Some(crate::hive::AGENT_SERVICE_COMMAND));
    system.resize(256 * 1024, 0);
    write(root, "Windows/System32/config/SYSTEM", &system);
    write(
        root,
        "Windows/System32/drivers/etc/hosts",
        b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# localhost name resolution is handled within DNS itself.\r\n",
    );
    write(root, "Windows/System32/LongFileName.dat", b"long name\r\n");
    write(
        root,
        "Users/Public/desktop.ini",
        "\u{feff}[.ShellClassInfo]\r\nLocalizedResourceName=@%SystemRoot%\\system32\\shell32.dll,-21816\r\n"
            .as_bytes(),
    );
    write(
        root,
        "Users/Public/Documents/r\u{e9}sum\u{e9} \u{2014} \u{fc}n\u{ef}code.txt",
        "names are UTF-16 on NTFS\r\n".as_bytes(),
    );
    write(
        root,
        "Users/Public/Downloads/setup.exe",
        &wimlib::noise(18, 5000),
    );
    for d in [
        "ProgramData/Microsoft",
        "Program Files/Common Files",
        "Program Files (x86)",
        "Users/Default",
        "Documents and Settings",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }

    let s = &g.special;
    for (i, (rel, size)) in s.sized_files.iter().enumerate() {
        write(root, rel, &wimlib::noise(100 + i as u64, *size));
    }
    for [first, second] in &s.hard_links {
        write(root, first, &wimlib::noise(19, 200 * 1024));
        std::fs::hard_link(root.join(first), root.join(second))
            .unwrap_or_else(|e| panic!("ln {first} {second}: {e}"));
    }
    for (rel, stream, data) in &s.named_streams {
        xattr(root, rel, &format!("user.{stream}"), data);
    }
    // ntfs-3g refuses a DOS name on a file with several names (EMLINK), as NTFS does.
    for (rel, short) in &s.dos_names {
        xattr(root, rel, readback::XATTR_DOS_NAME, short.as_bytes());
    }
    for (rel, sd) in &s.security_descriptors {
        xattr(root, rel, readback::XATTR_ACL, sd);
    }
    for (rel, attrs) in &s.attributes {
        xattr(root, rel, readback::XATTR_ATTRIB, &attrs.to_le_bytes());
    }
    // Last: once the directory is a reparse point, ntfs-3g shows it as a symlink and nothing
    // more can be created in it (and the kernel's cached view of it as a directory goes
    // stale, so nothing else touches it).
    for (rel, _, data) in &s.junctions {
        xattr(root, rel, readback::XATTR_REPARSE, data);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
