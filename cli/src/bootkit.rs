//! `recastctl bootkit check DIR [--install BOOT_ROOT] [--trust CERT.pem]`: the WinPE Secure Boot
//! kit a site copied from its Windows ADK. `recastctl bootkit build DIR --wimboot F --curl F
//! [--ca F] --install BOOT_ROOT`: the same ADK files made into the kit iPXE boots with wimboot,
//! with what startnet.cmd needs injected into boot.wim (with wimlib, so it runs on Linux). recast cannot ship Microsoft's files; this checks the
//! copy (the files present, bootmgfw.efi Authenticode-signed and unaltered, the signer shown)
//! and lays it out under the boot root with the BCD recast generates
//! ([`recast_core::winpe_boot`] decides the names, the layout and the BCD).
//!
//! Exit status: 0 the kit is good (and installed with --install), 1 the kit is refused (each
//! problem printed with what to do; nothing written), 2 bad usage (an unreadable --trust file,
//! a boot root that is not a directory).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use recast_core::authenticode::{self, PeError, PeReport};
use recast_core::winpe_boot::{self, KitFile};
use x509_cert::Certificate;

#[derive(Subcommand)]
pub enum BootkitCommand {
    /// Check a WinPE Secure Boot kit copied from the Windows ADK (bootmgfw.efi, boot.sdi,
    /// boot.wim: flat, or the folder `copype amd64 DIR` made, or its media folder): the files
    /// present, bootmgfw.efi Authenticode-signed and unaltered, the signer shown. Exit 0 good,
    /// 1 refused (nothing written), 2 bad usage.
    Check {
        /// The directory the site copied.
        dir: PathBuf,
        /// Lay the kit out under this boot root (BOOT_ROOT/Boot/: bootmgfw.efi, BCD, boot.sdi,
        /// boot.wim), replacing an earlier kit in one rename: never half a kit.
        #[arg(long, value_name = "BOOT_ROOT")]
        install: Option<PathBuf>,
        /// A certificate (PEM or DER) the signer must chain to, such as Microsoft Windows
        /// Production PCA 2011 exported from the site's own trust store. Repeatable. Without
        /// it the signer is shown but not anchored.
        #[arg(long = "trust", value_name = "CERT.pem")]
        trust: Vec<PathBuf>,
    },
    /// Make the WinPE kit iPXE boots with wimboot (machines without Secure Boot) from the
    /// ADK's files: boot.wim, boot.sdi and BCD (flat, or as `copype amd64 DIR` laid them out),
    /// iPXE's wimboot (2.9.0 or later) and curl.exe injected into a copy of boot.wim (WinPE has
    /// none; startnet.cmd needs it), with the site's CA when the boot service runs HTTPS. The
    /// result is checked (wimlib lists the injected files) and laid out as BOOT_ROOT/winpe/ in
    /// one rename. Exit 0 built, 1 refused (each problem printed; nothing written), 2 bad usage.
    Build {
        /// The directory the ADK's WinPE files were copied to.
        dir: PathBuf,
        /// iPXE's wimboot (https://ipxe.org/wimboot), 2.9.0 or later.
        #[arg(long, value_name = "FILE")]
        wimboot: PathBuf,
        /// curl.exe from C:\Windows\System32 of a Windows 10 or 11 machine of the kit's
        /// architecture.
        #[arg(long, value_name = "FILE")]
        curl: PathBuf,
        /// The site's CA (PEM) for the boot service's HTTPS listener (--boot-https), put at
        /// X:\recast\ca.pem in WinPE.
        #[arg(long, value_name = "CA.pem")]
        ca: Option<PathBuf>,
        /// The image of boot.wim to inject into (1 for the ADK's WinPE).
        #[arg(long, default_value_t = 1)]
        index: u32,
        /// The boot service's boot root (--boot-root, default DATA_DIR/boot).
        #[arg(long, value_name = "BOOT_ROOT")]
        install: PathBuf,
    },
}

pub fn run(command: BootkitCommand) -> ExitCode {
    match command {
        BootkitCommand::Check {
            dir,
            install,
            trust,
        } => check_command(&dir, install.as_deref(), &trust),
        BootkitCommand::Build {
            dir,
            wimboot,
            curl,
            ca,
            index,
            install,
        } => build_command(&BuildInputs {
            dir,
            wimboot,
            curl,
            ca,
            index,
            root: install,
        }),
    }
}

/// What `bootkit build` works from.
pub struct BuildInputs {
    pub dir: PathBuf,
    pub wimboot: PathBuf,
    pub curl: PathBuf,
    pub ca: Option<PathBuf>,
    pub index: u32,
    pub root: PathBuf,
}

/// The kit's files, checked: (name under winpe/, source path).
struct Sources {
    files: Vec<(&'static str, PathBuf)>,
    wimboot_version: (u32, u32, u32),
}

/// Every problem with the inputs, not just the first; nothing is written while there is one.
fn check_build_inputs(i: &BuildInputs) -> Result<Sources, Vec<String>> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for file in [KitFile::Wim, KitFile::Sdi] {
        match check_file(&i.dir, file, &[]) {
            Ok(f) => files.push((file.name(), f.path)),
            Err(p) => problems.push(p.to_string()),
        }
    }
    const BCD_SOURCES: [&str; 3] = ["BCD", "media/Boot/BCD", "Boot/BCD"];
    match BCD_SOURCES
        .iter()
        .find_map(|rel| find_case_insensitive(&i.dir, rel))
    {
        Some(p) if read_head(&p, 4).is_ok_and(|h| h == b"regf") => files.push(("BCD", p)),
        Some(p) => problems.push(format!(
            "{}: does not start with \"regf\", so it is not a BCD store; copy it again from the ADK's media\\Boot\\BCD.",
            p.display()
        )),
        None => problems.push(format!(
            "the BCD store is missing: looked in {} for {}. Copy it from the ADK's WinPE media (media\\Boot\\BCD).",
            i.dir.display(),
            BCD_SOURCES.join(", ")
        )),
    }
    let mut wimboot_version = (0, 0, 0);
    match fs::read(&i.wimboot) {
        Err(e) => problems.push(format!("--wimboot {}: cannot be read ({e})", i.wimboot.display())),
        Ok(bytes) => match winpe_boot::wimboot_version(&bytes) {
            None => problems.push(format!(
                "--wimboot {}: has no wimboot banner, so it is not iPXE's wimboot; download it from https://ipxe.org/wimboot",
                i.wimboot.display()
            )),
            Some(v) if v < winpe_boot::MIN_WIMBOOT => problems.push(format!(
                "--wimboot {}: is wimboot {}.{}.{}; Windows 11 24H2 and later need {}.{}.{} or later (older ones fail at once with 0xc000000f): download the current one from https://ipxe.org/wimboot",
                i.wimboot.display(),
                v.0,
                v.1,
                v.2,
                winpe_boot::MIN_WIMBOOT.0,
                winpe_boot::MIN_WIMBOOT.1,
                winpe_boot::MIN_WIMBOOT.2
            )),
            Some(v) => {
                wimboot_version = v;
                files.push(("wimboot", i.wimboot.clone()));
            }
        },
    }
    match read_head(&i.curl, 2) {
        Err(e) => problems.push(format!("--curl {}: cannot be read ({e})", i.curl.display())),
        Ok(h) if h != b"MZ" => problems.push(format!(
            "--curl {}: is not a Windows program (no MZ header); give curl.exe from C:\\Windows\\System32 of a Windows 10 or 11 machine",
            i.curl.display()
        )),
        Ok(_) => {}
    }
    if let Some(ca) = &i.ca {
        const PEM: &[u8] = b"-----BEGIN CERTIFICATE-----";
        match fs::read(ca) {
            Ok(t) if t.windows(PEM.len()).any(|w| w == PEM) => {}
            Ok(_) => problems.push(format!(
                "--ca {}: holds no PEM certificate; give the CA that signed the boot service's --boot-tls-cert",
                ca.display()
            )),
            Err(e) => problems.push(format!("--ca {}: cannot be read ({e})", ca.display())),
        }
    }
    for (flag, path) in [("--curl", Some(&i.curl)), ("--ca", i.ca.as_ref())] {
        if let Some(p) = path
            && p.to_string_lossy().contains('"')
        {
            problems.push(format!(
                "{flag} {}: a path with a double quote cannot be handed to wimlib; copy the file elsewhere",
                p.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(Sources {
            files,
            wimboot_version,
        })
    } else {
        Err(problems)
    }
}

/// wimlib's update commands that put curl.exe (and the CA) into boot.wim.
fn injections(i: &BuildInputs) -> Vec<(PathBuf, &'static str)> {
    let mut out = vec![(i.curl.clone(), winpe_boot::CURL_IN_WIM)];
    if let Some(ca) = &i.ca {
        out.push((ca.clone(), winpe_boot::CA_IN_WIM));
    }
    out
}

fn build_command(i: &BuildInputs) -> ExitCode {
    if !i.root.is_dir() {
        eprintln!(
            "error: --install {}: not a directory; give the boot service's boot root (--boot-root, default DATA_DIR/boot)",
            i.root.display()
        );
        return ExitCode::from(2);
    }
    if !i.dir.is_dir() {
        eprintln!(
            "error: {}: not a directory; give the directory the ADK's WinPE files were copied to",
            i.dir.display()
        );
        return ExitCode::from(2);
    }
    let sources = match check_build_inputs(i) {
        Ok(s) => s,
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "kit refused: {} problem(s); nothing was written",
                problems.len()
            );
            return ExitCode::from(1);
        }
    };
    match build_kit(i, &sources) {
        Ok(dest) => {
            let (a, b, c) = sources.wimboot_version;
            println!("wimboot v{a}.{b}.{c}");
            for (what, to) in injections(i) {
                println!(
                    "injected {} as {to} (boot.wim image {})",
                    what.display(),
                    i.index
                );
            }
            println!("kit built: {}", dest.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}; nothing was installed");
            ExitCode::from(1)
        }
    }
}

/// Copies the kit into a new directory beside BOOT_ROOT/winpe, injects into its boot.wim,
/// checks the injected files are listed, then swaps it in: never half a kit.
fn build_kit(i: &BuildInputs, sources: &Sources) -> Result<PathBuf, String> {
    let dest = i.root.join(winpe_boot::WIMBOOT_DIR);
    let tmp = i.root.join(format!(
        ".{}.new-{}",
        winpe_boot::WIMBOOT_DIR,
        std::process::id()
    ));
    let result = (|| {
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(|e| format!("cannot make {}: {e}", tmp.display()))?;
        for (name, from) in &sources.files {
            fs::copy(from, tmp.join(name))
                .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
        }
        let wim = tmp.join(KitFile::Wim.name());
        let commands: String = injections(i)
            .iter()
            .map(|(from, to)| format!("add \"{}\" \"{to}\"\n", from.display()))
            .collect();
        println!("injecting into {} with wimlib-imagex update", wim.display());
        let mut child = std::process::Command::new("wimlib-imagex")
            .arg("update")
            .arg(&wim)
            .arg(i.index.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("cannot run wimlib-imagex ({e}); install wimtools (Debian) or wimlib")
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(commands.as_bytes())
                .map_err(|e| format!("wimlib-imagex update: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wimlib-imagex update: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "wimlib-imagex update of boot.wim image {} failed: {} (is the image index right? `wimlib-imagex info boot.wim` lists them)",
                i.index,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // Read back with wimlib: every injected file is in the image.
        let listing = std::process::Command::new("wimlib-imagex")
            .arg("dir")
            .arg(&wim)
            .arg(i.index.to_string())
            .output()
            .map_err(|e| format!("wimlib-imagex dir: {e}"))?;
        let listed = String::from_utf8_lossy(&listing.stdout);
        let has = |path: &str| listed.lines().any(|l| l.trim().eq_ignore_ascii_case(path));
        for (_, to) in injections(i) {
            if !has(to) {
                return Err(format!(
                    "{to} is not in boot.wim after the update (wimlib-imagex dir does not list it)"
                ));
            }
        }
        // Every program startnet.cmd runs: a kit without one would stop every machine.
        let missing: Vec<String> = winpe_boot::WINPE_TOOLS
            .iter()
            .filter(|(tool, _)| !has(&format!("/Windows/System32/{tool}")))
            .map(|(tool, from)| format!("Windows\\System32\\{} ({from})", tool.replace('/', "\\")))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "boot.wim image {} lacks what startnet.cmd runs: {}",
                i.index,
                missing.join("; ")
            ));
        }
        fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
        swap_in(&tmp, &dest).map_err(|e| format!("cannot put the kit in place: {e}"))
    })();
    // On success `tmp` holds the previous kit (or nothing); on failure the partial new one.
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

/// One found, checked file of the kit.
#[derive(Debug)]
pub struct Found {
    pub file: KitFile,
    pub path: PathBuf,
    pub size: u64,
    /// The PE's signatures (bootmgfw.efi only).
    pub pe: Option<PeReport>,
}

/// Why the kit is refused, one per problem, each naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KitProblem {
    #[error(
        "{what} is missing: looked in {dir} for {tried}. Copy it from the ADK's WinPE media (the folder `copype amd64 C:\\winpe_amd64` makes: media\\{hint}), keeping that layout, or put it in the directory as {name}."
    )]
    Missing {
        what: &'static str,
        dir: String,
        tried: String,
        hint: &'static str,
        name: &'static str,
    },
    #[error("{path}: cannot be read ({error}); check its permissions and copy it again.")]
    Unreadable { path: String, error: String },
    #[error(
        "{path}: does not start with {magic}, so it is not {what}; copy it again from the ADK's media\\{hint}."
    )]
    WrongFormat {
        path: String,
        magic: String,
        what: &'static str,
        hint: &'static str,
    },
    #[error("{path}: {error}. {advice}")]
    Pe {
        path: String,
        error: PeError,
        advice: &'static str,
    },
}

/// What to do about a PE problem.
fn pe_advice(e: &PeError) -> &'static str {
    use authenticode::SignatureProblem as P;
    match e {
        PeError::NotPe(_) => {
            "bootmgfw.efi must be the Windows Boot Manager EFI application from the ADK (media\\EFI\\Boot\\bootx64.efi); copy it again, a truncated copy or another file ends up here"
        }
        PeError::Unsigned => {
            "Secure Boot firmware refuses an unsigned boot manager: use Microsoft's signed bootmgfw.efi from the ADK, not a rebuilt or stripped one"
        }
        PeError::Signature {
            problem: P::DigestMismatch { .. },
            ..
        } => {
            "Secure Boot firmware would refuse it: the copy is damaged or was tampered with; copy it again from the ADK and compare its sha256 with the ADK's"
        }
        PeError::NotAnchored { .. } => {
            "check that --trust names the CA that issued Microsoft's boot manager signer (Microsoft Windows Production PCA 2011, or Windows UEFI CA 2023 for newer media), or that the file is Microsoft's"
        }
        PeError::CertificateTable(_) | PeError::Signature { .. } => {
            "Secure Boot firmware would refuse it; copy bootmgfw.efi again from the ADK"
        }
    }
}

fn hint(file: KitFile) -> &'static str {
    match file {
        KitFile::BootManager => "EFI\\Boot\\bootx64.efi",
        KitFile::Sdi => "Boot\\boot.sdi",
        KitFile::Wim => "sources\\boot.wim",
    }
}

/// `rel` (`/`-separated) under `dir`, each component matched case-insensitively (a kit copied
/// from Windows or an ISO may spell `EFI/BOOT/BOOTX64.EFI`); an exact match wins.
fn find_case_insensitive(dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut at = dir.to_path_buf();
    for part in rel.split('/') {
        let exact = at.join(part);
        if exact.symlink_metadata().is_ok() {
            at = exact;
            continue;
        }
        let entry = fs::read_dir(&at).ok()?.filter_map(Result::ok).find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(part))
        })?;
        at = entry.path();
    }
    at.is_file().then_some(at)
}

fn locate(dir: &Path, file: KitFile) -> Result<PathBuf, KitProblem> {
    file.sources()
        .iter()
        .find_map(|rel| find_case_insensitive(dir, rel))
        .ok_or_else(|| KitProblem::Missing {
            what: file.what(),
            dir: dir.display().to_string(),
            tried: file.sources().join(", "),
            hint: hint(file),
            name: file.name(),
        })
}

fn read_head(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    fs::File::open(path)?
        .take(n as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Finds and checks every file of the kit; all problems, not just the first.
pub fn check_kit(dir: &Path, anchors: &[Certificate]) -> Result<Vec<Found>, Vec<KitProblem>> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for file in KitFile::ALL {
        match check_file(dir, file, anchors) {
            Ok(f) => found.push(f),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

fn check_file(dir: &Path, file: KitFile, anchors: &[Certificate]) -> Result<Found, KitProblem> {
    let path = locate(dir, file)?;
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| KitProblem::Unreadable {
        path: shown.clone(),
        error: e.to_string(),
    };
    let size = fs::metadata(&path).map_err(unreadable)?.len();
    let magic = file.magic();
    let pe = if file.is_pe() {
        let data = fs::read(&path).map_err(unreadable)?;
        let report = authenticode::verify(&data, anchors).map_err(|error| KitProblem::Pe {
            path: shown.clone(),
            advice: pe_advice(&error),
            error,
        })?;
        Some(report)
    } else {
        let head = read_head(&path, magic.len()).map_err(unreadable)?;
        if head != magic {
            return Err(KitProblem::WrongFormat {
                path: shown,
                magic: String::from_utf8_lossy(magic).trim_end_matches('\0').into(),
                what: file.what(),
                hint: hint(file),
            });
        }
        None
    };
    Ok(Found {
        file,
        path,
        size,
        pe,
    })
}

/// The report of a good kit.
pub fn render_report(found: &[Found], anchored: bool) -> String {
    let mut out = String::new();
    for f in found {
        out.push_str(&format!(
            "{}: {} ({} bytes)\n",
            f.file.name(),
            f.path.display(),
            f.size
        ));
        match &f.pe {
            None => out.push_str(&format!(
                "  format: starts with {:?}, as {} does\n",
                String::from_utf8_lossy(f.file.magic()).trim_end_matches('\0'),
                f.file.name()
            )),
            Some(pe) => {
                for (i, s) in pe.signatures.iter().enumerate() {
                    out.push_str(&format!(
                        "  signature #{}: signer {:?}, issued by {:?} (serial {})\n",
                        i + 1,
                        s.signer,
                        s.issuer,
                        s.serial
                    ));
                    out.push_str(&format!(
                        "    ok: the file's Authenticode digest sha256:{} is the one signed\n",
                        s.sha256
                    ));
                    out.push_str(
                        "    ok: the signer certificate's RSA key verifies the signature over the signed attributes\n",
                    );
                    match &s.anchored_at {
                        Some(a) => out.push_str(&format!(
                            "    ok: the signer chains to the --trust certificate {a:?}\n"
                        )),
                        None if anchored => out.push_str(
                            "    not anchored: this signature does not chain to a --trust certificate (another one does)\n",
                        ),
                        None => {
                            out.push_str(
                                "    not anchored: recast has no Microsoft root certificates, so the chain to Microsoft is not checked (pass --trust CERT.pem to anchor it); the UEFI firmware checks it against its db at boot\n",
                            );
                            if !s.issuer.contains("Microsoft") {
                                out.push_str(&format!(
                                    "    WARNING: issued by {:?}, not a Microsoft CA: firmware with Microsoft's keys refuses this boot manager unless its db holds that CA; copy bootmgfw.efi again from the ADK, or pass --trust with your own CA if you enrolled it\n",
                                    s.issuer
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn check_command(dir: &Path, install: Option<&Path>, trust: &[PathBuf]) -> ExitCode {
    let mut anchors = Vec::new();
    for t in trust {
        match fs::read(t)
            .map_err(|e| e.to_string())
            .and_then(|b| authenticode::parse_anchors(&b))
        {
            Ok(mut certs) => anchors.append(&mut certs),
            Err(e) => {
                eprintln!(
                    "error: --trust {}: {e}; give a PEM or DER X.509 certificate",
                    t.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(root) = install
        && !root.is_dir()
    {
        eprintln!(
            "error: --install {}: not a directory; give the boot service's boot root (--boot-root, default DATA_DIR/boot)",
            root.display()
        );
        return ExitCode::from(2);
    }
    if !dir.is_dir() {
        eprintln!(
            "error: {}: not a directory; give the directory the kit was copied to",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let found = match check_kit(dir, &anchors) {
        Ok(found) => found,
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "kit refused: {} problem(s); nothing was written",
                problems.len()
            );
            return ExitCode::from(1);
        }
    };
    print!("{}", render_report(&found, !anchors.is_empty()));
    println!("kit ok");
    if let Some(root) = install {
        match install_kit(root, &found) {
            Ok(dest) => {
                println!(
                    "installed in {}: {} (the DHCP boot file for x64 UEFI clients on this chain), {}, {}, {}",
                    dest.display(),
                    winpe_boot::BOOT_FILE,
                    winpe_boot::bcd_installed_path(),
                    KitFile::Sdi.installed_path(),
                    KitFile::Wim.installed_path()
                );
                println!(
                    "BCD: ramdisk TFTP block size {}, window size {}",
                    winpe_boot::RAMDISK_TFTP_BLOCK_SIZE,
                    winpe_boot::RAMDISK_TFTP_WINDOW_SIZE
                );
            }
            Err(e) => {
                eprintln!(
                    "error: installing under {}: {e}; nothing was replaced",
                    root.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Lays the checked kit out as `root/Boot/`: everything is written into a fresh directory next
/// to it and synced, then swapped in with one rename (an exchange when an earlier kit is there),
/// so a reader sees the old kit or the new one, never half of one. Returns the kit directory.
pub fn install_kit(root: &Path, found: &[Found]) -> std::io::Result<PathBuf> {
    let dest = root.join(winpe_boot::KIT_DIR);
    let tmp = root.join(format!(
        ".{}.new-{}",
        winpe_boot::KIT_DIR,
        std::process::id()
    ));
    let result = write_kit(&tmp, found).and_then(|()| swap_in(&tmp, &dest));
    // On success `tmp` holds the previous kit (or nothing); on failure the partial new one.
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

fn write_kit(tmp: &Path, found: &[Found]) -> std::io::Result<()> {
    let _ = fs::remove_dir_all(tmp);
    fs::create_dir(tmp)?;
    for f in found {
        let to = tmp.join(f.file.name());
        fs::copy(&f.path, &to)?;
        fs::File::open(&to)?.sync_all()?;
    }
    // The copy of bootmgfw.efi must be the bytes that were checked: check the copy again
    // rather than trust that the source did not change in between.
    if let Some(pe) = found.iter().find(|f| f.file.is_pe()) {
        let copied = fs::read(tmp.join(pe.file.name()))?;
        let again = authenticode::verify(&copied, &[]).map(|r| r.signatures);
        let before = pe.pe.as_ref().map(|r| {
            r.signatures
                .iter()
                .map(|s| s.sha256.clone())
                .collect::<Vec<_>>()
        });
        let after = again.map(|s| s.into_iter().map(|s| s.sha256).collect::<Vec<_>>());
        if after.ok() != before {
            return Err(std::io::Error::other(format!(
                "{} changed while it was being copied; run the check again",
                pe.path.display()
            )));
        }
    }
    let mut bcd = fs::File::create(tmp.join(winpe_boot::BCD_FILE))?;
    bcd.write_all(&winpe_boot::bcd_bytes())?;
    bcd.sync_all()?;
    fs::File::open(tmp)?.sync_all()
}

fn swap_in(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    if dest.symlink_metadata().is_ok() {
        // One atomic exchange; `tmp` then holds the old kit and is removed by the caller.
        renameat_with(CWD, tmp, CWD, dest, RenameFlags::EXCHANGE)?;
    } else {
        fs::rename(tmp, dest)?;
    }
    if let Some(parent) = dest.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_found_whatever_their_case() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("MEDIA/efi/BOOT");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("BOOTX64.EFI"), b"x").unwrap();
        assert_eq!(
            find_case_insensitive(dir.path(), "media/EFI/Boot/bootx64.efi"),
            Some(p.join("BOOTX64.EFI"))
        );
        assert_eq!(find_case_insensitive(dir.path(), "media/EFI/Boot"), None);
        assert_eq!(find_case_insensitive(dir.path(), "bootmgfw.efi"), None);
    }

    #[test]
    fn every_pe_problem_has_advice() {
        use recast_core::authenticode::SignatureProblem as P;
        for e in [
            PeError::NotPe("x".into()),
            PeError::Unsigned,
            PeError::CertificateTable("x".into()),
            PeError::Signature {
                index: 1,
                problem: P::DigestMismatch {
                    computed: "a".into(),
                    signed: "b".into(),
                },
            },
            PeError::Signature {
                index: 1,
                problem: P::NoSignedAttributes,
            },
            PeError::NotAnchored {
                signers: "s".into(),
                anchors: "a".into(),
            },
        ] {
            assert!(!pe_advice(&e).is_empty());
        }
    }
}
