//! UEFI Secure Boot for the QEMU tiers: OVMF's Secure Boot build with Microsoft's keys
//! enrolled (Debian's `ovmf`), the signed chain recast serves (Debian's shim and GRUB, laid out
//! by `imager/env/signed-chain.sh`), and a disk that boots under Secure Boot to a marker on the
//! serial console, so a test sees the firmware leave the network boot for the disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// OVMF built with Secure Boot (needs q35 with SMM and the secure pflash).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Its variable store with Microsoft's KEK and db (Windows Production PCA 2011, UEFI CA 2011)
/// enrolled and Secure Boot enforced. Each machine gets a copy: the firmware writes to it.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// What the disk from [`marker_disk`] prints when the firmware boots it.
pub const DISK_MARKER: &str = "RECAST-SB-DISK: the local disk booted under Secure Boot";

/// What the serial console of a Secure Boot imaging run says (imager/env/init and
/// recast-imager): Debian's kernel locked itself down, and the imager read the firmware's
/// `SecureBoot` variable as on.
pub const CONSOLE_ENFORCED: [&str; 2] = [
    "imaging-environment: kernel lockdown: none [integrity] confidentiality",
    "recast-imager: UEFI Secure Boot: on",
];

/// Fails unless `serial` shows [`CONSOLE_ENFORCED`].
pub fn assert_console_enforced(serial: &str) {
    for said in CONSOLE_ENFORCED {
        assert!(
            serial.contains(said),
            "the console says {said:?}:\n{serial}"
        );
    }
}

/// Why the Secure Boot parts cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            return Some(format!("{f} is missing (apt-get install ovmf)"));
        }
    }
    if virt_fw_vars().is_none() {
        return Some(
            "virt-firmware's virt-fw-vars is not installed (run tests/pxe/setup.sh)".into(),
        );
    }
    if crate::readback::find_tool("sbsign").is_none() {
        return Some("sbsign is missing (apt-get install sbsigntool)".into());
    }
    if signed_chain_cache().is_none() {
        return Some(
            "Debian's signed shim and GRUB are not cached (run imager/env/signed-chain.sh --out DIR, \
             or tests/pxe/setup.sh)"
                .into(),
        );
    }
    None
}

/// The newest cache directory of imager/env/signed-chain.sh (shimx64.efi, grubx64.efi and
/// grubx64-disk.efi, Debian's GRUB for disks).
pub fn signed_chain_cache() -> Option<PathBuf> {
    let cache = std::env::var_os("RECAST_SIGNED_CHAIN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/signed-chain"));
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("shimx64.efi").is_file() && p.join("grubx64-disk.efi").is_file())
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

/// Lays the signed chain out under a boot root (sb/shimx64.efi, sb/grubx64.efi) with the
/// product's script.
pub fn lay_out_signed_chain(root: &Path) {
    let ok = Command::new(crate::repo_root().join("imager/env/signed-chain.sh"))
        .arg("--out")
        .arg(root)
        .status()
        .expect("run imager/env/signed-chain.sh");
    assert!(ok.success(), "imager/env/signed-chain.sh failed");
}

/// The test CAs standing in for Microsoft's two Windows boot CAs: "recast test Windows CA 2011"
/// (which the test fleet's firmware trusts, next to Microsoft's keys) and "recast test Windows
/// CA 2023" (which it does not), each with a signer certificate and key for sbsign. Made once
/// with openssl into `target/boot-trust-cas/` and reused (an flock serialises the first use).
#[derive(Clone, Debug)]
pub struct TestCas {
    dir: PathBuf,
}

/// Which test CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    Y2011,
    Y2023,
}

impl Era {
    fn tag(self) -> &'static str {
        match self {
            Era::Y2011 => "2011",
            Era::Y2023 => "2023",
        }
    }

    /// The CA's subject common name, as recast's refusal names it.
    pub fn ca_name(self) -> String {
        format!("recast test Windows CA {}", self.tag())
    }
}

/// The owner GUID the test enrolls its db and dbx entries under.
pub const TEST_OWNER: &str = "7265632d-6173-7400-0000-000000000001";

impl TestCas {
    pub fn get() -> TestCas {
        use std::os::fd::AsRawFd;
        let dir = crate::repo_root().join("target/boot-trust-cas");
        std::fs::create_dir_all(&dir).expect("create target/boot-trust-cas");
        let lock = std::fs::File::create(dir.join(".lock")).expect("open the CA lock");
        // SAFETY: flock on an open descriptor; released when `lock` is closed.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let cas = TestCas { dir };
        for era in [Era::Y2011, Era::Y2023] {
            if !cas.signer_key(era).is_file() {
                cas.make(era);
            }
        }
        cas
    }

    fn file(&self, era: Era, what: &str) -> PathBuf {
        self.dir.join(format!("{what}-{}", era.tag()))
    }

    /// The CA certificate (PEM): what a db that trusts this era holds.
    pub fn ca_cert(&self, era: Era) -> PathBuf {
        self.file(era, "ca.pem")
    }

    fn signer_cert(&self, era: Era) -> PathBuf {
        self.file(era, "signer.pem")
    }

    fn signer_key(&self, era: Era) -> PathBuf {
        self.file(era, "signer.key")
    }

    fn make(&self, era: Era) {
        use crate::readback::{run_ok, tool};
        let ext = self.dir.join("ext.cnf");
        std::fs::write(
            &ext,
            "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
             [leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .unwrap();
        let ca_key = self.file(era, "ca.key");
        let csr = self.file(era, "signer.csr");
        run_ok(
            tool("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-sha256",
                    "-days",
                    "36500",
                    "-extensions",
                    "ca",
                ])
                .arg("-config")
                .arg(&ext)
                .arg("-subj")
                .arg(format!("/O=recast test/CN={}", era.ca_name()))
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(self.ca_cert(era)),
        );
        run_ok(
            tool("openssl")
                .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
                .arg("-subj")
                .arg(format!(
                    "/O=recast test/CN=recast test Windows boot signer {}",
                    era.tag()
                ))
                .arg("-keyout")
                .arg(self.file(era, "signer.key.tmp"))
                .arg("-out")
                .arg(&csr),
        );
        run_ok(
            tool("openssl")
                .args([
                    "x509",
                    "-req",
                    "-sha256",
                    "-days",
                    "36500",
                    "-extensions",
                    "leaf",
                ])
                .arg("-extfile")
                .arg(&ext)
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(self.ca_cert(era))
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-set_serial")
                .arg(format!(
                    "0x{}",
                    if era == Era::Y2011 { "2011" } else { "2023" }
                ))
                .arg("-out")
                .arg(self.signer_cert(era)),
        );
        // The key last: its presence says the set is complete.
        std::fs::rename(self.file(era, "signer.key.tmp"), self.signer_key(era)).unwrap();
    }

    /// Signs the EFI program `input` into `output` (sbsign, Authenticode) with this era's signer.
    pub fn sign(&self, era: Era, input: &Path, output: &Path) {
        crate::readback::run_ok(
            crate::readback::tool("sbsign")
                .arg("--key")
                .arg(self.signer_key(era))
                .arg("--cert")
                .arg(self.signer_cert(era))
                .arg("--output")
                .arg(output)
                .arg(input),
        );
    }

    /// A fingerprint of the signer certificates (a cache key for what they signed).
    pub fn fingerprint(&self) -> String {
        [Era::Y2011, Era::Y2023]
            .map(|era| crate::sha256_file(&self.signer_cert(era)))
            .join(" ")
    }
}

/// virt-firmware's variable-store editor, from the venv tests/pxe/setup.sh makes.
pub fn virt_fw_vars() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RECAST_VIRT_FW_VARS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let base = PathBuf::from(home).join(".cache/recast/virt-firmware");
    std::fs::read_dir(base)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/virt-fw-vars"))
        .find(|p| p.is_file())
}

/// What a test machine's firmware trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetTrust {
    /// Authenticode SHA-256 digests (hex) added to dbx.
    pub dbx_hashes: Vec<String>,
}

/// Writes the test fleet's variable store to `vars`: OVMF's store with Microsoft's keys (which
/// start Debian's shim, the imaging environment's chain), plus the test "2011" CA in db (which
/// starts the golden images' boot managers signed under it), plus `trust`'s dbx entries.
/// Secure Boot stays enforced.
pub fn fleet_vars(vars: &Path, trust: &FleetTrust) {
    let cas = TestCas::get();
    let tool = virt_fw_vars().expect("virt-fw-vars (tests/pxe/setup.sh installs it)");
    let mut cmd = Command::new(tool);
    cmd.args(["-i", OVMF_VARS, "-o"])
        .arg(vars)
        .args(["--add-db", TEST_OWNER])
        .arg(cas.ca_cert(Era::Y2011));
    for h in &trust.dbx_hashes {
        cmd.args(["--add-dbx-hash", TEST_OWNER, h]);
    }
    crate::readback::run_ok(&mut cmd);
}

/// QEMU arguments of a q35 machine with Secure Boot enforced, its variable store at `vars`
/// (made by [`fleet_vars`]; the firmware writes to it). IPv6 is off (no PXE or HTTP boot over IPv6), as on most fleets: OVMF would
/// otherwise spend about a minute on each before it tries the disk. PXE and HTTP boot over
/// IPv4 stay (`IPv4Support=no` would take the whole IPv4 network boot away).
pub fn qemu_args(vars: &Path) -> Vec<String> {
    assert!(
        vars.is_file(),
        "{}: make it with fleet_vars first",
        vars.display()
    );
    [
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive",
        &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6PXESupport,string=no",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6Support,string=no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The Authenticode SHA-256 (hex) of an EFI program, computed by virt-firmware's own PE code
/// (pefile): what firmware compares with a db/dbx hash entry, from an implementation that is
/// not recast's.
pub fn authenticode_sha256(efi: &Path) -> String {
    let python = virt_fw_vars()
        .expect("virt-firmware (tests/pxe/setup.sh installs it)")
        .with_file_name("python");
    let out = crate::readback::run_ok(
        Command::new(python)
            .args([
                "-c",
                "import sys, pefile\nfrom virt.peutils import pesign\nprint(pesign.pe_authenticode_hash(pefile.PE(sys.argv[1])).hex())",
            ])
            .arg(efi),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A GPT disk of 64 MiB with one EFI system partition that boots under Secure Boot: Debian's
/// shim as \EFI\BOOT\BOOTX64.EFI (Microsoft UEFI CA 2011 signed), Debian's disk GRUB next to
/// it, and \EFI\debian\grub.cfg printing [`DISK_MARKER`] and powering the machine off.
pub fn marker_disk(path: &Path) {
    let cache = signed_chain_cache().expect("the signed chain cache (see missing())");
    let cfg = path.with_extension("grub.cfg");
    std::fs::write(&cfg, format!("echo '{DISK_MARKER}'\nhalt\n")).unwrap();
    esp_disk(
        path,
        &[
            (cache.join("shimx64.efi"), "EFI/BOOT/BOOTX64.EFI"),
            (cache.join("grubx64-disk.efi"), "EFI/BOOT/grubx64.efi"),
            (cfg, "EFI/debian/grub.cfg"),
        ],
    );
}

/// A GPT disk of 64 MiB with one EFI system partition holding `files` (source, path on the
/// partition): the firmware starts `EFI/BOOT/BOOTX64.EFI` from it, as from any new disk.
pub fn esp_disk(path: &Path, files: &[(PathBuf, &str)]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    crate::readback::write_table(
        path,
        "label: gpt\nstart=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
    )
    .unwrap();
    // The partition: sectors 2048 .. end-34 (the backup GPT); mkfs.fat counts 1 KiB blocks.
    let blocks = ((64u64 << 20) / 512 - 2048 - 34) / 2;
    let image = path.display().to_string();
    crate::readback::run_ok(
        crate::readback::tool("mkfs.fat")
            .args(["-F", "16", "-n", "RECASTSB", "--offset", "2048"])
            .arg(path)
            .arg(blocks.to_string()),
    );
    let at = format!("{image}@@1M");
    let mut made = std::collections::BTreeSet::new();
    for (from, to) in files {
        // Each directory on the way, once (mmd refuses an existing one).
        let mut dir = String::new();
        for part in to
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            dir = if dir.is_empty() {
                part.to_string()
            } else {
                format!("{dir}/{part}")
            };
            if made.insert(dir.clone()) {
                crate::readback::run_ok(crate::readback::tool("mmd").args([
                    "-i",
                    &at,
                    &format!("::{dir}"),
                ]));
            }
        }
        crate::readback::run_ok(
            crate::readback::tool("mcopy")
                .args(["-i", &at])
                .arg(from)
                .arg(format!("::{to}")),
        );
    }
}
