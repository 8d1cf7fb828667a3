//! Reading an imaged disk back with tools that share no code with recast: util-linux's
//! `sfdisk --json` for the partition table, mtools for FAT volumes (no mount), `losetup` +
//! ntfs-3g (FUSE, read-only) for NTFS volumes, and a tree comparison that checks what a WIM
//! apply must preserve (file data, named streams, security descriptors, reparse points, DOS
//! names, attributes, hard links, timestamps).
//!
//! Everything that mounts needs root and /dev/fuse; the rest runs as any user.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Running the tools

/// PATH for child processes: sfdisk, mkntfs, losetup live in /usr/sbin and /sbin, which a
/// non-login shell (and cargo's environment) often lacks.
pub fn tool_path() -> std::ffi::OsString {
    let mut dirs = vec![PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Where `name` is on [`tool_path`], if anywhere.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&tool_path())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A command for `name` whose PATH includes the sbin directories (std resolves the program
/// with the child's PATH when it is set on the Command).
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.env("PATH", tool_path());
    c
}

/// Runs `cmd` and returns its output; panics with stdout and stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Partition table

/// Writes a partition table with an sfdisk script to an image file (not a device: no re-read);
/// Err holds what sfdisk said.
pub fn write_table(disk: &Path, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = tool("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sfdisk: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to sfdisk: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `sfdisk --json DISK`: the whole answer, for fields the typed view below leaves out.
pub fn partition_table(disk: &Path) -> Value {
    let out = run_ok(tool("sfdisk").arg("--json").arg(disk));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sfdisk --json {} is not JSON: {e}\n{}",
            disk.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The partition table as sfdisk reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// "gpt" or "dos".
    pub label: String,
    /// GPT: the disk GUID (sfdisk prints it upper case). MBR: the disk signature, "0x1234abcd".
    pub id: String,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub size: u64,
    /// GPT: type GUID (upper case). MBR: the id in hex without 0x ("7", "c", "27").
    pub type_: String,
    /// GPT only.
    pub uuid: Option<String>,
    /// GPT only.
    pub name: Option<String>,
    /// GPT attribute names as sfdisk prints them ("RequiredPartition GUID:63").
    pub attrs: Option<String>,
    /// MBR: the active flag.
    pub bootable: bool,
}

impl Partition {
    /// Byte offset of the partition on the disk.
    pub fn offset(&self, sector_size: u64) -> u64 {
        self.start * sector_size
    }

    /// Length in bytes.
    pub fn bytes(&self, sector_size: u64) -> u64 {
        self.size * sector_size
    }
}

impl Table {
    /// Reads `disk`'s table with sfdisk.
    pub fn read(disk: &Path) -> Table {
        Table::from_json(&partition_table(disk))
    }

    /// The table, or None when `disk` has none sfdisk can read (a disk nothing partitioned).
    pub fn try_read(disk: &Path) -> Option<Table> {
        let out = tool("sfdisk").arg("--json").arg(disk).output().ok()?;
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(Table::from_json(&json))
    }

    /// The typed view of `sfdisk --json` output.
    pub fn from_json(v: &Value) -> Table {
        let t = &v["partitiontable"];
        let s = |v: &Value, k: &str| v[k].as_str().map(str::to_string);
        Table {
            label: s(t, "label").unwrap_or_default(),
            id: s(t, "id").unwrap_or_default(),
            // sfdisk omits sectorsize for 512-byte disks in some versions.
            sector_size: t["sectorsize"].as_u64().unwrap_or(512),
            partitions: t["partitions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| Partition {
                    start: p["start"].as_u64().unwrap_or_default(),
                    size: p["size"].as_u64().unwrap_or_default(),
                    type_: s(p, "type").unwrap_or_default(),
                    uuid: s(p, "uuid"),
                    name: s(p, "name"),
                    attrs: s(p, "attrs"),
                    bootable: p["bootable"].as_bool().unwrap_or(false),
                })
                .collect(),
        }
    }

    /// (offset, length) in bytes of partition `index` (0-based), for mtools and losetup.
    pub fn extent(&self, index: usize) -> (u64, u64) {
        let p = &self.partitions[index];
        (p.offset(self.sector_size), p.bytes(self.sector_size))
    }
}

// ---------------------------------------------------------------------------------------------
// MBR

fn read_at(disk: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(disk).unwrap_or_else(|e| panic!("open {}: {e}", disk.display()));
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {len} bytes at {offset} of {}: {e}", disk.display()));
    buf
}

/// The MBR's boot code: the first 440 bytes of the disk (compare with syslinux's mbr.bin).
pub fn mbr_boot_code(disk: &Path) -> [u8; 440] {
    read_at(disk, 0, 440)
        .try_into()
        .expect("440 bytes were read")
}

/// The MBR disk signature (bytes 0x1B8..0x1BC, little endian): what BIOS BCD device elements
/// name the disk by, and what sfdisk prints as the dos label-id.
pub fn disk_signature(disk: &Path) -> u32 {
    let b = read_at(disk, 0x1B8, 4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

// ---------------------------------------------------------------------------------------------
// FAT volumes through mtools (no mount, no root)

fn mtools(name: &str, disk: &Path, offset: u64) -> (Command, String) {
    let mut c = tool(name);
    // Skips mtools' sanity checks of the boot sector's geometry, which mkfs.fat on an image
    // file need not satisfy.
    c.env("MTOOLS_SKIP_CHECK", "1");
    (c, format!("{}@@{offset}", disk.display()))
}

/// Every path on the FAT volume at byte `offset` of `disk`, hidden and system files included,
/// as "/EFI/Boot/bootx64.efi"; directories end with '/'.
pub fn fat_list(disk: &Path, offset: u64) -> Vec<String> {
    let (mut c, image) = mtools("mdir", disk, offset);
    let out = run_ok(c.args(["-/", "-b", "-a", "-i", &image, "::/"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("::"))
        .map(str::to_string)
        .collect()
}

/// The bytes of `path` ("/EFI/Microsoft/Boot/BCD") on the FAT volume at byte `offset`.
pub fn fat_read(disk: &Path, offset: u64, path: &str) -> Vec<u8> {
    let (mut c, image) = mtools("mcopy", disk, offset);
    let src = format!("::{}", ensure_slash(path));
    run_ok(c.args(["-i", &image, &src, "-"])).stdout
}

/// The FAT attribute letters mattrib prints for `path` ("A  SHR" = archive, system, hidden,
/// read-only), trimmed.
pub fn fat_attributes(disk: &Path, offset: u64, path: &str) -> String {
    let (mut c, image) = mtools("mattrib", disk, offset);
    let src = format!("::{}", ensure_slash(path));
    let out = run_ok(c.args(["-i", &image, &src]));
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit_once("::")
        .map(|(flags, _)| flags.trim().to_string())
        .unwrap_or_default()
}

fn ensure_slash(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

// ---------------------------------------------------------------------------------------------
// NTFS volumes through ntfs-3g

/// An NTFS volume mounted with ntfs-3g (`streams_interface=xattr`: named streams are `user.*`
/// xattrs). Unmounts, waits for ntfs-3g to exit and removes the mount point on drop.
///
/// Leaks are contained three ways: ntfs-3g runs in the foreground as our child (`no_detach`),
/// so drop can wait until it has written everything and exited; the loop device is detached
/// lazily right after ntfs-3g opened it, so the kernel frees it whenever ntfs-3g goes, however
/// it goes; and mount points of test processes that died without dropping are swept (lazy
/// unmount) by the next mount.
pub struct MountedNtfs {
    dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    what: String,
}

const MOUNT_PREFIX: &str = "recast-ntfs-";

impl MountedNtfs {
    /// Mounts the NTFS partition at `offset`..`offset+len` of `disk` read-only, through
    /// `losetup -r -o OFFSET --sizelimit LEN`.
    pub fn partition(disk: &Path, offset: u64, len: u64) -> MountedNtfs {
        let out = run_ok(
            tool("losetup")
                .args(["-r", "-f", "--show", "-o"])
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(len.to_string())
                .arg(disk),
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let what = format!("{} at {offset} (+{len}) via {dev}", disk.display());
        let mounted = MountedNtfs::spawn(Path::new(&dev), "ro", what);
        // With ntfs-3g holding it open, detach only marks the device autoclear: the kernel
        // frees it when ntfs-3g closes it. A failed mount left it unused: this frees it now.
        let _ = tool("losetup").arg("-d").arg(&dev).status();
        mounted.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mounts a whole-file NTFS image read-only.
    pub fn image(image: &Path) -> MountedNtfs {
        MountedNtfs::spawn(image, "ro", image.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mounts a whole-file NTFS image read-write (building fixtures; tampering in tests).
    pub fn image_rw(image: &Path) -> MountedNtfs {
        MountedNtfs::spawn(image, "rw", image.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts and waits for ntfs-3g to finish; an error says what went wrong (a rw mount
    /// whose ntfs-3g failed may not have written everything).
    pub fn unmount(mut self) -> Result<(), String> {
        self.finish()
    }

    fn spawn(source: &Path, mode: &str, what: String) -> Result<MountedNtfs, String> {
        sweep_stale_mounts();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{MOUNT_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let log = dir.with_extension("log");
        let log_file = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let child = tool("ntfs-3g")
            // no_detach: stay our child, so drop knows when the volume is consistent.
            .arg("-o")
            .arg(format!("{mode},streams_interface=xattr,no_detach"))
            .arg(source)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run ntfs-3g: {e}"))?;
        let mut m = MountedNtfs {
            dir,
            child: Some(child),
            log,
            what,
        };
        let start = Instant::now();
        loop {
            if is_mountpoint(&m.dir) {
                return Ok(m);
            }
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let _ = m.finish();
                return Err(format!(
                    "ntfs-3g -o {mode} {} did not mount ({}):\n{log}",
                    m.what,
                    exited.map_or("timed out".to_string(), |s| s.to_string())
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut problems = Vec::new();
        if is_mountpoint(&self.dir) {
            let plain = tool("umount").arg(&self.dir).output();
            if !plain.as_ref().is_ok_and(|o| o.status.success()) {
                // Busy (a test still holds a file open): detach it from the namespace now;
                // ntfs-3g exits when the last user goes.
                problems.push(format!(
                    "umount {} failed ({}); unmounted lazily",
                    self.dir.display(),
                    plain.map_or_else(
                        |e| e.to_string(),
                        |o| String::from_utf8_lossy(&o.stderr).trim().to_string()
                    )
                ));
                let _ = tool("umount").arg("-l").arg(&self.dir).status();
            }
        }
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => problems.push(format!(
                "ntfs-3g for {} exited with {s}:\n{}",
                self.what,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )),
            None => problems.push(format!(
                "ntfs-3g for {} did not exit within 30 s of the unmount; killed",
                self.what
            )),
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_file(&self.log);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

impl Drop for MountedNtfs {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("MountedNtfs: {e}");
        }
    }
}

/// Mount points in /proc/self/mountinfo (field 5, octal escapes for space, tab, newline, \).
fn mountpoints() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\'
                    && i + 3 < b.len()
                    && let Ok(v) = u8::from_str_radix(&m[i + 1..i + 4], 8)
                {
                    out.push(v);
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            PathBuf::from(std::ffi::OsStr::from_bytes(&out))
        })
        .collect()
}

fn is_mountpoint(dir: &Path) -> bool {
    mountpoints().iter().any(|m| m == dir)
}

/// The test process that made a mount point or log under our prefix, from its name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(MOUNT_PREFIX)?
        .split(['-', '.'])
        .next()?
        .parse()
        .ok()
}

fn is_dead(pid: u32) -> bool {
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Lazily unmounts what a test process that no longer runs left mounted under our prefix,
/// and removes its mount points and logs.
fn sweep_stale_mounts() {
    let tmp = std::env::temp_dir();
    for m in mountpoints() {
        let Some(pid) = m
            .strip_prefix(&tmp)
            .ok()
            .and_then(|r| r.to_str())
            .and_then(owner_pid)
        else {
            continue;
        };
        if is_dead(pid) {
            eprintln!("unmounting {} left by process {pid}", m.display());
            let _ = tool("umount").arg("-l").arg(&m).status();
        }
    }
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name();
        if let Some(pid) = name.to_str().and_then(owner_pid)
            && is_dead(pid)
            && !is_mountpoint(&e.path())
        {
            // remove_dir only removes an empty directory: never anything mounted.
            let _ = std::fs::remove_dir(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extended attributes (libc: the xattr names ntfs-3g exposes)

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a path")
}

/// `lgetxattr`: the attribute of `path` itself (a junction is a symlink to ntfs-3g; following
/// it fails). None when the attribute does not exist.
pub fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    let p = cpath(path);
    let n = CString::new(name).expect("no NUL in an xattr name");
    loop {
        // SAFETY: p and n are NUL-terminated; a null buffer of size 0 asks for the size.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(format!("lgetxattr {} {name}: {e}", path.display())),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has buf.len() writable bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(Some(buf));
        }
        // ERANGE: it grew between the two calls; ask again.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(format!(
                "lgetxattr {} {name}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
}

/// `lsetxattr`: sets `name` on `path` itself (not a symlink's target).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let p = cpath(path);
    let n = CString::new(name).expect("no NUL in an xattr name");
    // SAFETY: p and n are NUL-terminated; value is valid for value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "lsetxattr {} {name} ({} bytes): {}",
            path.display(),
            value.len(),
            std::io::Error::last_os_error()
        ))
    }
}

/// `lremovexattr`: removes `name` from `path` itself (with ntfs-3g: deletes a named stream).
pub fn remove_xattr(path: &Path, name: &str) -> Result<(), String> {
    let p = cpath(path);
    let n = CString::new(name).expect("no NUL in an xattr name");
    // SAFETY: p and n are NUL-terminated.
    if unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "lremovexattr {} {name}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// `llistxattr`: the names listed for `path` (ntfs-3g lists `user.*` named streams; its
/// `system.ntfs_*` attributes are never listed and must be asked for by name).
pub fn list_xattrs(path: &Path) -> Result<Vec<String>, String> {
    let p = cpath(path);
    loop {
        // SAFETY: as in get_xattr.
        let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(format!(
                "llistxattr {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has buf.len() writable bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(format!(
                "llistxattr {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing two mounted trees

/// Security descriptor (self-relative bytes).
pub const XATTR_ACL: &str = "system.ntfs_acl";
/// Reparse point data (tag + buffer).
pub const XATTR_REPARSE: &str = "system.ntfs_reparse_data";
/// The 8.3 name, when the file has one.
pub const XATTR_DOS_NAME: &str = "system.ntfs_dos_name";
/// FILE_ATTRIBUTE_* as 4 bytes little endian.
pub const XATTR_ATTRIB: &str = "system.ntfs_attrib";
/// Creation, last write, last access, MFT change: four 64-bit FILETIMEs.
pub const XATTR_TIMES: &str = "system.ntfs_times";

/// What a successful comparison looked at, so a test can assert that the special cases were
/// there to compare (a comparison of two empty trees also "passes").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Paths compared (the root is "").
    pub paths: usize,
    pub directories: usize,
    pub files: usize,
    /// Bytes of file content hashed on each side.
    pub bytes: u64,
    /// (path, stream name) of every named data stream compared.
    pub named_streams: Vec<(String, String)>,
    /// Security descriptors compared, and how many different ones there were.
    pub security_descriptors: usize,
    pub distinct_security_descriptors: usize,
    /// Paths that are reparse points (junctions, symlinks).
    pub reparse_points: Vec<String>,
    /// Sets of names that are one file (two or more names).
    pub hard_links: Vec<Vec<String>>,
    /// (path, 8.3 name).
    pub dos_names: Vec<(String, String)>,
    /// Attribute words compared.
    pub attributes: usize,
    /// Creation and last-write times compared.
    pub timestamps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    size: u64,
    ino: u64,
    sha256: Option<String>,
    streams: BTreeMap<String, Vec<u8>>,
    xattrs: BTreeMap<&'static str, Option<Vec<u8>>>,
}

fn walk(root: &Path, errors: &mut Vec<String>) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{}: cannot stat: {e}", path.display()));
                continue;
            }
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        let sha256 = (kind == Kind::File).then(|| match hash_file(&path) {
            Ok(h) => h,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", path.display()));
                String::new()
            }
        });
        let mut streams = BTreeMap::new();
        match list_xattrs(&path) {
            Ok(names) => {
                for name in names.iter().filter(|n| n.starts_with("user.")) {
                    match get_xattr(&path, name) {
                        Ok(v) => {
                            streams.insert(name.clone(), v.unwrap_or_default());
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        let mut xattrs = BTreeMap::new();
        for name in [
            XATTR_ACL,
            XATTR_REPARSE,
            XATTR_DOS_NAME,
            XATTR_ATTRIB,
            XATTR_TIMES,
        ] {
            // The root has no entry in a parent directory, so no DOS name; ntfs-3g answers
            // EPERM rather than ENODATA.
            if rel.is_empty() && name == XATTR_DOS_NAME {
                xattrs.insert(name, None);
                continue;
            }
            match get_xattr(&path, name) {
                Ok(v) => {
                    xattrs.insert(name, v);
                }
                Err(e) => errors.push(e),
            }
        }
        if kind == Kind::Dir {
            match std::fs::read_dir(&path) {
                Ok(rd) => {
                    for e in rd {
                        match e {
                            Ok(e) => {
                                let name = e.file_name().to_string_lossy().into_owned();
                                stack.push(if rel.is_empty() {
                                    name
                                } else {
                                    format!("{rel}/{name}")
                                });
                            }
                            Err(e) => errors.push(format!("{}: readdir: {e}", path.display())),
                        }
                    }
                }
                Err(e) => errors.push(format!("{}: readdir: {e}", path.display())),
            }
        }
        out.insert(
            rel,
            Entry {
                kind,
                size: if kind == Kind::File { meta.len() } else { 0 },
                ino: meta.ino(),
                sha256,
                streams,
                xattrs,
            },
        );
    }
    out
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Short, readable rendering of an attribute value for a mismatch message.
fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "absent".into(),
        Some(b) if b.len() <= 48 => format!("{} bytes {}", b.len(), hex(b)),
        Some(b) => format!(
            "{} bytes, sha256 {}…",
            b.len(),
            &hex(&Sha256::digest(b))[..16]
        ),
    }
}

fn show_path(p: &str) -> &str {
    if p.is_empty() { "/ (root)" } else { p }
}

/// Compares two mounted ntfs-3g trees (`streams_interface=xattr`): the golden source and an
/// applied volume. Same set of paths and kinds; for each regular file the size and sha256 of
/// its data; named streams (`user.*`); security descriptor; reparse data (read with
/// lgetxattr, the junction is not followed); DOS name; attribute word; creation and last-write
/// times; hard links (names that are one file on one side are one file on the other). The
/// error lists every difference, one line each, naming the path and what differs.
pub fn compare_trees(expected: &Path, actual: &Path) -> Result<Report, Vec<String>> {
    compare_trees_allowing(expected, actual, &[])
}

/// [`compare_trees`], but the paths in `added` ("Windows/Panther/unattend.xml") may exist in
/// `actual` only (what the imager writes after apply). Their parent directories' last-write
/// time is not compared, since adding the files changes it.
pub fn compare_trees_allowing(
    expected: &Path,
    actual: &Path,
    added: &[&str],
) -> Result<Report, Vec<String>> {
    let mut errors = Vec::new();
    let exp = walk(expected, &mut errors);
    let act = walk(actual, &mut errors);
    let mut report = Report::default();

    let added: BTreeSet<&str> = added.iter().map(|a| a.trim_matches('/')).collect();
    // Directories whose contents the imager changes (the parents of added paths).
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for a in &added {
        let mut p = *a;
        while let Some((parent, _)) = p.rsplit_once('/') {
            touched.insert(parent.to_string());
            p = parent;
        }
        touched.insert(String::new());
    }

    for p in exp.keys().filter(|p| !act.contains_key(*p)) {
        errors.push(format!("{}: missing from the applied volume", show_path(p)));
    }
    for p in act.keys().filter(|p| !exp.contains_key(*p)) {
        let allowed = added.contains(p.as_str())
            || added.iter().any(|a| p.starts_with(&format!("{a}/")))
            || added.iter().any(|a| a.starts_with(&format!("{p}/")));
        if !allowed {
            errors.push(format!(
                "{}: present on the applied volume but not in the golden image",
                show_path(p)
            ));
        }
    }

    let mut sds = BTreeSet::new();
    for (p, e) in &exp {
        let Some(a) = act.get(p) else { continue };
        let name = show_path(p);
        report.paths += 1;
        if e.kind != a.kind {
            errors.push(format!(
                "{name}: expected a {:?}, found a {:?}",
                e.kind, a.kind
            ));
            continue;
        }
        match e.kind {
            Kind::Dir => report.directories += 1,
            Kind::File => {
                report.files += 1;
                report.bytes += e.size;
                if e.size != a.size {
                    errors.push(format!(
                        "{name}: expected {} bytes of data, found {}",
                        e.size, a.size
                    ));
                } else if e.sha256 != a.sha256 {
                    errors.push(format!(
                        "{name}: data differs (sha256 expected {}, found {})",
                        e.sha256.as_deref().unwrap_or_default(),
                        a.sha256.as_deref().unwrap_or_default()
                    ));
                }
            }
            Kind::Symlink | Kind::Other => {}
        }

        for (stream, v) in &e.streams {
            let s = stream.trim_start_matches("user.");
            report.named_streams.push((p.clone(), s.to_string()));
            match a.streams.get(stream) {
                None => errors.push(format!("{name}: named stream {s:?} missing")),
                Some(w) if w != v => errors.push(format!(
                    "{name}: named stream {s:?} differs (expected {}, found {})",
                    show(&Some(v.clone())),
                    show(&Some(w.clone()))
                )),
                Some(_) => {}
            }
        }
        for stream in a.streams.keys().filter(|s| !e.streams.contains_key(*s)) {
            errors.push(format!(
                "{name}: unexpected named stream {:?}",
                stream.trim_start_matches("user.")
            ));
        }

        let x = |m: &BTreeMap<&'static str, Option<Vec<u8>>>, k| m.get(k).cloned().flatten();
        let (sd_e, sd_a) = (x(&e.xattrs, XATTR_ACL), x(&a.xattrs, XATTR_ACL));
        if let Some(sd) = &sd_e {
            report.security_descriptors += 1;
            sds.insert(sd.clone());
        }
        if sd_e != sd_a {
            errors.push(format!(
                "{name}: security descriptor differs (expected {}, found {})",
                show(&sd_e),
                show(&sd_a)
            ));
        }
        let (rp_e, rp_a) = (x(&e.xattrs, XATTR_REPARSE), x(&a.xattrs, XATTR_REPARSE));
        if rp_e.is_some() {
            report.reparse_points.push(p.clone());
        }
        if rp_e != rp_a {
            errors.push(format!(
                "{name}: reparse data differs (expected {}, found {})",
                show(&rp_e),
                show(&rp_a)
            ));
        }
        let (dos_e, dos_a) = (x(&e.xattrs, XATTR_DOS_NAME), x(&a.xattrs, XATTR_DOS_NAME));
        if let Some(d) = &dos_e {
            report
                .dos_names
                .push((p.clone(), String::from_utf8_lossy(d).into_owned()));
        }
        if dos_e != dos_a {
            let s = |v: &Option<Vec<u8>>| {
                v.as_ref().map_or("none".to_string(), |b| {
                    format!("{:?}", String::from_utf8_lossy(b))
                })
            };
            errors.push(format!(
                "{name}: DOS name differs (expected {}, found {})",
                s(&dos_e),
                s(&dos_a)
            ));
        }
        let (at_e, at_a) = (x(&e.xattrs, XATTR_ATTRIB), x(&a.xattrs, XATTR_ATTRIB));
        if at_e.is_some() {
            report.attributes += 1;
        }
        if at_e != at_a {
            let s = |v: &Option<Vec<u8>>| match v.as_deref() {
                Some([a, b, c, d]) => format!("{:#x}", u32::from_le_bytes([*a, *b, *c, *d])),
                _ => show(v),
            };
            errors.push(format!(
                "{name}: attributes differ (expected {}, found {})",
                s(&at_e),
                s(&at_a)
            ));
        }
        // Creation and last-write time: wimlib restores both. Last access moves when anything
        // reads the volume read-write, and the MFT change time cannot be set at all.
        let (t_e, t_a) = (x(&e.xattrs, XATTR_TIMES), x(&a.xattrs, XATTR_TIMES));
        let first16 = |v: &Option<Vec<u8>>| v.as_ref().map(|b| b[..b.len().min(16)].to_vec());
        let check_write = !(e.kind == Kind::Dir && touched.contains(p));
        if let (Some(te), Some(ta)) = (first16(&t_e), first16(&t_a)) {
            report.timestamps += 1;
            let (ce, we) = te.split_at(te.len().min(8));
            let (ca, wa) = ta.split_at(ta.len().min(8));
            if ce != ca {
                errors.push(format!(
                    "{name}: creation time differs (expected {}, found {})",
                    filetime(ce),
                    filetime(ca)
                ));
            }
            if check_write && we != wa {
                errors.push(format!(
                    "{name}: last-write time differs (expected {}, found {})",
                    filetime(we),
                    filetime(wa)
                ));
            }
        } else if t_e.is_some() != t_a.is_some() {
            errors.push(format!(
                "{name}: timestamps expected {}, found {}",
                show(&t_e),
                show(&t_a)
            ));
        }
    }
    report.distinct_security_descriptors = sds.len();

    // Hard links: group the regular files by inode on each side; a file's group of names must
    // be the same on both (inode numbers themselves differ between volumes).
    let groups = |t: &BTreeMap<String, Entry>| {
        let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (p, e) in t.iter().filter(|(_, e)| e.kind == Kind::File) {
            by_ino.entry(e.ino).or_default().push(p.clone());
        }
        by_ino
    };
    let (ge, ga) = (groups(&exp), groups(&act));
    let group_of = |g: &BTreeMap<u64, Vec<String>>, t: &BTreeMap<String, Entry>, p: &str| {
        t.get(p)
            .and_then(|e| g.get(&e.ino))
            .cloned()
            .unwrap_or_default()
    };
    for names in ge.values() {
        if names.len() > 1 {
            report.hard_links.push(names.clone());
        }
    }
    for (p, e) in exp.iter().filter(|(_, e)| e.kind == Kind::File) {
        let Some(a) = act.get(p) else { continue };
        if a.kind != Kind::File {
            continue;
        }
        let want = ge.get(&e.ino).cloned().unwrap_or_default();
        let got = group_of(&ga, &act, p);
        if want != got {
            errors.push(format!(
                "{p}: hard links differ (expected the names {want:?} to be one file, found {got:?})"
            ));
        }
    }

    if errors.is_empty() {
        Ok(report)
    } else {
        Err(errors)
    }
}

/// A FILETIME (100 ns ticks since 1601) as seconds since the Unix epoch, for messages.
fn filetime(b: &[u8]) -> String {
    let Ok(arr) = <[u8; 8]>::try_from(b) else {
        return hex(b);
    };
    let ticks = u64::from_le_bytes(arr);
    let unix = ticks as i128 / 10_000_000 - 11_644_473_600;
    format!("{unix}.{:07} (unix)", ticks % 10_000_000)
}
