//! The imaging run: the shell around the pure decisions. It speaks the imaging protocol with
//! the boot service, reads the machine from sysfs, and runs Debian's tools (sfdisk, mkfs.fat,
//! mkntfs, wimlib-imagex, ntfs-3g, hivexsh, syslinux) one at a time, each failure naming its
//! step and cause.
//!
//! The order keeps every failure safe: nothing is written before the machine proved who it is,
//! the disk was chosen by rule and the image's sha256 matched; and the boot files, which make
//! the disk bootable, are written last, so a run that stops half-way leaves a disk the firmware
//! skips and the machine network-boots into the imaging environment again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use recast_core::boot_manager::UEFI_BOOT_MANAGER;
use recast_core::boot_trust::{self, BootManager, Firmware, MachineTrust, SecureBoot, Verdict};
use recast_core::imaging::{
    ClaimAnswer, FirmwareReport, ImagingRefusal, ImagingTask, ProgressReport, ResultReport,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::layout::{self, BootMode, Role};
use crate::{acl, bcd, bootfiles, disks, identity, progress, sysfs};

/// Where the imager finds the machine and keeps its files.
#[derive(Clone, Debug)]
pub struct Env {
    /// `/sys`.
    pub sysfs: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
    /// Scratch space in RAM (the staged WIM, mount points): `/run/recast`.
    pub work: PathBuf,
    /// syslinux's BIOS files (mbr/mbr.bin, modules/bios/*.c32).
    pub syslinux: PathBuf,
}

/// The steps of a run, named as progress and results name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Claim,
    Task,
    Identity,
    Disk,
    Download,
    BootTrust,
    Partition,
    Format,
    Apply,
    Configure,
    BootFiles,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Claim => "claim",
            Step::Task => "task",
            Step::Identity => "identity",
            Step::Disk => "disk",
            Step::Download => "download",
            Step::BootTrust => "boottrust",
            Step::Partition => "partition",
            Step::Format => "format",
            Step::Apply => "apply",
            Step::Configure => "configure",
            Step::BootFiles => "bootfiles",
        }
    }
}

/// Why a run stopped.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub message: String,
    pub refusal: Option<ImagingRefusal>,
}

fn fail(step: Step, message: impl Into<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
        refusal: None,
    }
}

/// An error with its causes: reqwest's own message names only the URL, the cause ("connection
/// refused", "invalid peer certificate") is in its sources.
fn chain(e: &dyn std::error::Error) -> String {
    recast_crds::error_chain(e)
}

pub fn say(msg: &str) {
    println!("recast-imager: {msg}");
}

/// Where progress goes: the boot service during a run ([`Session`]), the console in the
/// benchmark.
pub trait Reporter {
    fn progress(&self, percent: u8, step: Step, message: &str) -> impl Future<Output = ()>;
}

/// Progress to the console only.
pub struct Console;

impl Reporter for Console {
    async fn progress(&self, percent: u8, step: Step, message: &str) {
        say(&format!("{percent:>3}% {}: {message}", step.as_str()));
    }
}

impl Reporter for Session {
    async fn progress(&self, percent: u8, step: Step, message: &str) {
        Session::progress(self, percent, step, message).await
    }
}

/// The try's session with the boot service.
pub struct Session {
    http: reqwest::Client,
    token: String,
    pub task: ImagingTask,
}

const RETRIES: u32 = 30;
/// The boot service takes reports of up to 4 KiB; an error (a tool's stderr) is cut to fit.
const MAX_ERROR_BYTES: usize = 3 * 1024;

/// `message` within `max` bytes: its start and its end (a tool's last lines say most), cut on
/// character boundaries.
pub fn fit_report(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    const GAP: &str = " [...] ";
    let half = (max - GAP.len()) / 2;
    let mut head = half;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - half;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{GAP}{}", &message[..head], &message[tail..])
}
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Where a site's CA for an HTTPS boot service goes in the imaging environment (baked into the
/// initrd). Without it no HTTPS server is trusted: the environment has no system roots, and an
/// unverified connection is never an option.
pub const CA_FILE: &str = "/etc/recast/ca.pem";

pub fn http_client() -> Result<reqwest::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if Path::new(CA_FILE).exists() {
        let certs = CertificateDer::pem_file_iter(CA_FILE)
            .map_err(|e| format!("cannot read {CA_FILE}: {e}"))?;
        for c in certs {
            let c = c.map_err(|e| format!("{CA_FILE} holds an unreadable PEM block: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("{CA_FILE} holds an unusable certificate: {e}"))?;
        }
    }
    // reqwest is built without a default TLS provider (and the platform verifier finds no
    // roots in an initramfs): ring, with exactly the roots above.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A server that stops sending mid-response: give up and resume, not hang the try.
        .read_timeout(Duration::from_secs(60))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Claims the try (the token answers only this machine's address), then fetches the task.
/// Retried for a minute each: the boot service may be restarting.
pub async fn start(http: reqwest::Client, claim_url: &str) -> Result<Session, Failure> {
    if claim_url.starts_with("https://") && !Path::new(CA_FILE).exists() {
        return Err(fail(
            Step::Claim,
            format!(
                "the boot service is HTTPS but the imaging environment trusts no CA: put the site's CA at {CA_FILE} in the initrd"
            ),
        ));
    }
    let mut last = String::new();
    let mut claim = None;
    for _ in 0..RETRIES {
        match http.post(claim_url).body("").send().await {
            Ok(r) if r.status().is_success() => match r.json::<ClaimAnswer>().await {
                Ok(a) => {
                    claim = Some(a);
                    break;
                }
                Err(e) => last = format!("unreadable claim answer: {}", chain(&e)),
            },
            // A refusal (another machine holds the try, the try is gone) is final.
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(fail(
                    Step::Claim,
                    format!(
                        "the boot service refused the claim ({status}): {}",
                        body.trim()
                    ),
                ));
            }
            Ok(r) => last = format!("{} from {claim_url}", r.status()),
            Err(e) => last = chain(&e),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let claim = claim.ok_or_else(|| fail(Step::Claim, format!("cannot claim the try: {last}")))?;
    say("try claimed");
    let mut task = None;
    for _ in 0..RETRIES {
        match http
            .get(&claim.task_url)
            .bearer_auth(&claim.token)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => match r.json::<ImagingTask>().await {
                Ok(t) => {
                    task = Some(t);
                    break;
                }
                Err(e) => {
                    return Err(fail(Step::Task, format!("unreadable task: {}", chain(&e))));
                }
            },
            // A refusal (the machine cannot be provisioned, the try is gone) is final, and
            // says why.
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(fail(
                    Step::Task,
                    format!(
                        "the boot service refused the task ({status}): {}",
                        fit_report(body.trim(), 512)
                    ),
                ));
            }
            Ok(r) => last = format!("{} from {}", r.status(), claim.task_url),
            Err(e) => last = chain(&e),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let task = task.ok_or_else(|| fail(Step::Task, format!("cannot fetch the task: {last}")))?;
    Ok(Session {
        http,
        token: claim.token,
        task,
    })
}

impl Session {
    /// Progress is news, not a duty: a lost report is logged, never fatal.
    pub async fn progress(&self, percent: u8, step: Step, message: &str) {
        self.report(percent, step, message, None, None).await
    }

    /// A progress report that also says whether Secure Boot is on and what the firmware
    /// trusts (the run's first one).
    pub async fn report(
        &self,
        percent: u8,
        step: Step,
        message: &str,
        secure_boot: Option<bool>,
        firmware: Option<FirmwareReport>,
    ) {
        say(&format!("{percent:>3}% {}: {message}", step.as_str()));
        let body = ProgressReport {
            percent,
            step: Some(step.as_str().into()),
            message: Some(message.into()),
            secure_boot,
            firmware,
        };
        let sent = self
            .http
            .post(&self.task.progress_url)
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Err(e) = sent {
            say(&format!("could not post progress: {}", chain(&e)));
        }
    }

    /// The result is a duty: retried for a minute.
    pub async fn result(&self, outcome: &Result<(), Failure>) {
        let body = match outcome {
            Ok(()) => ResultReport {
                ok: true,
                step: None,
                error: None,
                refusal: None,
            },
            Err(f) => ResultReport {
                ok: false,
                step: Some(f.step.as_str().into()),
                error: Some(fit_report(&f.message, MAX_ERROR_BYTES)),
                refusal: f.refusal,
            },
        };
        for _ in 0..RETRIES {
            let sent = self
                .http
                .post(&self.task.result_url)
                .bearer_auth(&self.token)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    say("result posted");
                    return;
                }
                // Refused for what it says (or the try is gone): sending it again cannot help.
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    say(&format!(
                        "the boot service refused the result ({status}): {}",
                        text.trim()
                    ));
                    return;
                }
                Ok(r) => say(&format!("result refused: {}", r.status())),
                Err(e) => say(&format!("could not post the result: {}", chain(&e))),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        say("gave up posting the result; the try will time out");
    }

    async fn fetch_text(&self, step: Step, url: &str) -> Result<Vec<u8>, Failure> {
        let mut last = String::new();
        for _ in 0..RETRIES {
            match self.http.get(url).bearer_auth(&self.token).send().await {
                Ok(r) if r.status().is_success() => {
                    return r
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| fail(step, format!("reading {url}: {}", chain(&e))));
                }
                // A refusal says why (a secret over plain HTTP, a Secret to create): pass it on.
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let why = r.text().await.unwrap_or_default();
                    return Err(fail(
                        step,
                        format!("{url} answered {status}: {}", fit_report(why.trim(), 512)),
                    ));
                }
                Ok(r) => last = format!("{url} answered {}", r.status()),
                Err(e) => last = chain(&e),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(fail(step, format!("cannot fetch {url}: {last}")))
    }
}

/// Everything after the task: the whole run, or the step that stopped it.
pub async fn image(session: &Session, env: &Env) -> Result<(), Failure> {
    let task = &session.task;
    let mode = match task.boot_mode.as_str() {
        "uefi" => BootMode::Uefi,
        "bios" => BootMode::Bios,
        other => return Err(fail(Step::Task, format!("unknown boot mode {other:?}"))),
    };

    // Told first, whatever happens next: a person looking at a refused or failed try still
    // sees how the machine booted.
    let secure_boot = sysfs::secure_boot(&env.sysfs);
    say(&format!(
        "UEFI Secure Boot: {}",
        match secure_boot {
            Some(true) => "on",
            Some(false) => "off (or BIOS)",
            None => "unknown (efivarfs unreadable)",
        }
    ));
    // What the firmware trusts, read (never written) before anything else; reported once the
    // machine proved it is the Endpoint's (an impostor's firmware is not this Endpoint's).
    let trust = sysfs::firmware_trust(&env.sysfs);
    match &trust {
        Ok(t) if t.firmware == Firmware::Uefi => say(&format!(
            "Secure Boot db: {}; dbx: {} entries",
            t.db.certificate_names(),
            t.dbx.entries.len()
        )),
        Ok(_) => {}
        Err(e) => say(&format!("Secure Boot databases: {e}")),
    }
    session
        .report(
            1,
            Step::Identity,
            "checking the machine's SMBIOS identity",
            secure_boot,
            None,
        )
        .await;
    let expected = identity::Expected {
        smbios_uuid: task.identity.smbios_uuid.clone(),
        serial_number: task.identity.serial_number.clone(),
    };
    match identity::check(&expected, &sysfs::identity(&env.sysfs)) {
        identity::Verdict::Mismatch(m) => {
            let what: Vec<String> = m.iter().map(ToString::to_string).collect();
            return Err(Failure {
                step: Step::Identity,
                message: format!("not this Endpoint's machine: {}", what.join("; ")),
                refusal: Some(ImagingRefusal::WrongMachine),
            });
        }
        identity::Verdict::Match { uuid } => say(&format!(
            "identity matches{}",
            match uuid {
                Some(identity::UuidForm::AsPrinted) => " (SMBIOS UUID as the firmware prints it)",
                Some(identity::UuidForm::Swapped) =>
                    " (SMBIOS UUID in the raw byte order of a pre-2.6 SMBIOS table)",
                None => "",
            }
        )),
        identity::Verdict::NothingToCheck => {
            say("the Endpoint sets no SMBIOS identity: only its MAC address names this machine")
        }
    }

    session
        .report(
            2,
            Step::Disk,
            "choosing the target disk",
            None,
            trust.as_ref().ok().and_then(firmware_report),
        )
        .await;
    let seen = sysfs::disks(&env.sysfs)
        .map_err(|e| fail(Step::Disk, format!("cannot list disks in sysfs: {e}")))?;
    let rule = target_rule(task);
    let disk = disks::choose(&rule, &seen)
        .map_err(|r| Failure {
            step: Step::Disk,
            message: r.to_string(),
            refusal: Some(ImagingRefusal::NoTargetDisk),
        })?
        .clone();
    say(&format!("target disk: {disk}"));
    // Before the download: a disk too small even for the compressed image never fits, and no
    // other try will change that.
    preflight(env, &disk, mode, task.image.size).map_err(|message| Failure {
        step: Step::Disk,
        message,
        refusal: Some(ImagingRefusal::NoTargetDisk),
    })?;

    // The machine's driver set is chosen before the long download (a declared set that is
    // not served yet stops the try at once), and fetched and checked before the first write.
    let driver_set = machine_driver_set(task, &sysfs::model(&env.sysfs))?;
    // The batch's multicast session, when the task names one that can work and this
    // environment has udp-receiver; otherwise (or when the stream fails) the HTTP download.
    let join = task.multicast.as_ref().filter(|j| {
        let problem = recast_core::multicast::join_problem(j).or_else(|| {
            (!on_path(crate::stream::RECEIVER)).then(|| {
                format!(
                    "this imaging environment has no {}",
                    crate::stream::RECEIVER
                )
            })
        });
        match problem {
            Some(why) => {
                say(&format!(
                    "not joining the multicast session ({why}): downloading over HTTP"
                ));
                false
            }
            None => true,
        }
    });
    if let Some(join) = join {
        return image_from_stream(session, env, mode, &disk, join, driver_set, trust).await;
    }
    let staged = download(session, &session.http, &task.image, &env.work).await?;
    let drivers = stage_driver_set(session, env, driver_set, (40, 40)).await?;
    let image_bytes = image_total_bytes(&staged, task.image.index).await?;
    // Before the first write: would this machine's firmware start the image's boot manager?
    let verdict = will_it_boot(
        env,
        ManagerSource::Wim {
            staged: &staged,
            index: task.image.index,
        },
        trust,
    )
    .await?;
    session
        .progress(41, Step::BootTrust, &format!("boot manager: {verdict}"))
        .await;
    // The files with the machine's credentials, before the first write: a file the boot
    // service will not hand over (a Secret missing, HTTPS this environment cannot verify) stops
    // the try with the disk untouched, never after the wipe.
    let configuration = fetch_configuration(session).await?;

    session
        .progress(
            42,
            Step::Partition,
            &format!("partitioning /dev/{}", disk.name),
        )
        .await;
    let plan = partition(env, &disk, mode, image_bytes).await?;
    let volumes = format(session, env, mode, &plan, &disk).await?;
    apply(session, &staged, task.image.index, &volumes.windows).await?;
    let _ = std::fs::remove_file(&staged);
    finish(
        session,
        env,
        mode,
        &plan,
        &disk,
        &volumes,
        &configuration,
        drivers.as_deref(),
    )
    .await
}

/// The partitions a plan made, as device paths.
struct Volumes {
    system: PathBuf,
    windows: PathBuf,
    recovery: PathBuf,
}

/// Makes the file systems of a written plan.
async fn format(
    session: &Session,
    env: &Env,
    mode: BootMode,
    plan: &layout::Plan,
    disk: &disks::Disk,
) -> Result<Volumes, Failure> {
    session
        .progress(45, Step::Format, "making the file systems")
        .await;
    let dev = |role: Role| -> Result<PathBuf, Failure> {
        let n = plan
            .partitions
            .iter()
            .position(|p| p.role == role)
            .ok_or_else(|| fail(Step::Format, format!("the plan has no {role:?} partition")))?;
        Ok(env
            .dev
            .join(sysfs::partition_name(&disk.name, n as u32 + 1)))
    };
    let volumes = Volumes {
        system: dev(mode.system_role())?,
        windows: dev(Role::Windows)?,
        recovery: dev(Role::Recovery)?,
    };
    run(
        Step::Format,
        "mkfs.fat",
        &["-F", "32", "-n", "SYSTEM"],
        &[&volumes.system],
    )
    .await?;
    format_windows(&volumes.windows).await?;
    run(
        Step::Format,
        "mkntfs",
        &["-Q", "-L", "Recovery"],
        &[&volumes.recovery],
    )
    .await?;
    Ok(volumes)
}

/// The HTTP fallback's apply: the verified, staged WIM onto a Windows volume made again (a
/// broken stream left part of an image on it).
pub async fn reapply(
    reporter: &impl Reporter,
    staged: &Path,
    index: u32,
    windows: &Path,
) -> Result<(), Failure> {
    reporter
        .progress(45, Step::Format, "making the Windows volume again")
        .await;
    format_windows(windows).await?;
    apply(reporter, staged, index, windows).await
}

async fn format_windows(windows: &Path) -> Result<(), Failure> {
    run(Step::Format, "mkntfs", &["-Q", "-L", "Windows"], &[windows]).await
}

/// After the image is on the Windows volume: the machine's files, then the boot files last.
#[allow(clippy::too_many_arguments)]
async fn finish(
    session: &Session,
    env: &Env,
    mode: BootMode,
    plan: &layout::Plan,
    disk: &disks::Disk,
    volumes: &Volumes,
    configuration: &Configuration,
    drivers: Option<&Path>,
) -> Result<(), Failure> {
    session
        .progress(92, Step::Configure, "writing unattend.xml and agent.json")
        .await;
    configure(env, &volumes.windows, configuration).await?;
    if !session.task.drivers.is_empty() {
        session
            .progress(93, Step::Configure, "placing the machine's drivers")
            .await;
        place_drivers(env, &volumes.windows, drivers).await?;
    }

    session
        .progress(
            95,
            Step::BootFiles,
            "writing the boot manager and the BCD store",
        )
        .await;
    boot_files(
        env,
        mode,
        plan,
        &disk.name,
        &volumes.system,
        &volumes.windows,
    )
    .await?;
    run(Step::BootFiles, "sync", &[], &[]).await?;
    session
        .progress(100, Step::BootFiles, "image written")
        .await;
    Ok(())
}

/// The multicast path: every check the HTTP path makes before the first write is made here
/// too (the boot manager fetched on its own, the partition sized from the task), then the
/// stream is applied as it comes. A stream the network spoiled falls back to the HTTP download
/// onto a fresh Windows volume; bytes that are not the image's end the try before anything
/// makes the disk bootable.
async fn image_from_stream(
    session: &Session,
    env: &Env,
    mode: BootMode,
    disk: &disks::Disk,
    join: &recast_core::imaging::TaskMulticast,
    driver_set: Option<recast_core::imaging::ImageTaskFile>,
    trust: Result<MachineTrust, String>,
) -> Result<(), Failure> {
    use recast_core::multicast::{AfterStream, after_stream};
    let task = &session.task;
    // The disk must hold the layout for the image's expanded size (the HTTP path checks the
    // downloaded file's): refused before any write, as there.
    preflight(env, disk, mode, join.image_bytes).map_err(|message| Failure {
        step: Step::Disk,
        message,
        refusal: Some(ImagingRefusal::NoTargetDisk),
    })?;
    let drivers = stage_driver_set(session, env, driver_set, (3, 4)).await?;
    let manager = match &join.boot_manager {
        Some(blob) => Some(fetch_blob(&session.http, Step::BootTrust, blob).await?),
        None => None,
    };
    let verdict = will_it_boot(env, ManagerSource::Fetched(manager), trust.clone()).await?;
    session
        .progress(5, Step::BootTrust, &format!("boot manager: {verdict}"))
        .await;
    let configuration = fetch_configuration(session).await?;

    session
        .progress(
            6,
            Step::Partition,
            &format!("partitioning /dev/{}", disk.name),
        )
        .await;
    let plan = partition(env, disk, mode, join.image_bytes).await?;
    let volumes = format(session, env, mode, &plan, disk).await?;
    let interface = std::env::var(crate::stream::INTERFACE_VAR).ok();
    let end = crate::stream::receive_and_apply(
        session,
        join,
        crate::stream::RECEIVER,
        &volumes.windows,
        interface.as_deref(),
        (10, 90),
    )
    .await;
    match after_stream(&end, join.size) {
        AfterStream::Done => {
            session
                .progress(
                    90,
                    Step::Apply,
                    "image applied from the multicast session; sha256 matches",
                )
                .await;
        }
        AfterStream::Fail(message) => return Err(fail(Step::Apply, message)),
        AfterStream::FallBack(why) => {
            session.progress(10, Step::Download, &why).await;
            let staged = download(session, &session.http, &task.image, &env.work).await?;
            // The downloaded file's boot manager is judged too (it should be the one judged
            // before the first write). The disk is written by now: whatever this says, it is
            // a failure of this try, not a refusal that "wrote nothing".
            will_it_boot(
                env,
                ManagerSource::Wim {
                    staged: &staged,
                    index: task.image.index,
                },
                trust,
            )
            .await
            .map_err(|f| Failure { refusal: None, ..f })?;
            reapply(session, &staged, task.image.index, &volumes.windows).await?;
            let _ = std::fs::remove_file(&staged);
        }
    }
    finish(
        session,
        env,
        mode,
        &plan,
        disk,
        &volumes,
        &configuration,
        drivers.as_deref(),
    )
    .await
}

/// The machine's driver set, when it has one: downloaded into RAM and checked like the image,
/// before the first write.
async fn stage_driver_set(
    session: &Session,
    env: &Env,
    set: Option<recast_core::imaging::ImageTaskFile>,
    progress: (u8, u8),
) -> Result<Option<PathBuf>, Failure> {
    match set {
        Some(set) => download_file(
            session,
            &session.http,
            &set,
            &env.work,
            "drivers.wim",
            progress,
        )
        .await
        .map(Some),
        None => Ok(None),
    }
}

/// Whether `tool` is an executable file in a PATH directory.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A small file the task names (the boot manager), into memory, checked by size and sha256.
async fn fetch_blob(
    http: &reqwest::Client,
    step: Step,
    blob: &recast_core::imaging::TaskBlob,
) -> Result<Vec<u8>, Failure> {
    const MAX: u64 = 64 << 20;
    if blob.size > MAX {
        return Err(fail(step, format!("{} is over {MAX} bytes", blob.url)));
    }
    let mut last = String::new();
    for _ in 0..RETRIES {
        match http.get(&blob.url).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) => {
                    let got = format!("{:x}", Sha256::digest(&b));
                    if b.len() as u64 != blob.size || !got.eq_ignore_ascii_case(&blob.sha256) {
                        return Err(fail(
                            step,
                            format!(
                                "{} has sha256 {got} ({} bytes), not {} ({} bytes): nothing was written to the disk",
                                blob.url,
                                b.len(),
                                blob.sha256,
                                blob.size
                            ),
                        ));
                    }
                    return Ok(b.to_vec());
                }
                Err(e) => last = chain(&e),
            },
            Ok(r) if r.status().is_client_error() => {
                return Err(fail(step, format!("{} answered {}", blob.url, r.status())));
            }
            Ok(r) => last = format!("{} answered {}", blob.url, r.status()),
            Err(e) => last = chain(&e),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(fail(step, format!("cannot fetch {}: {last}", blob.url)))
}

/// Where the boot manager judged before the first write comes from.
enum ManagerSource<'a> {
    /// Extracted from the downloaded WIM.
    Wim { staged: &'a Path, index: u32 },
    /// Fetched on its own (the multicast path); None: the image has none.
    Fetched(Option<Vec<u8>>),
}

fn target_rule(task: &ImagingTask) -> disks::TargetRule {
    disks::TargetRule::of(&task.target_disk)
}

/// Room left in RAM beside the staged image (the tools and their buffers).
const STAGING_MARGIN: u64 = 64 << 20;

/// Free bytes of the file system holding `dir`; None when it cannot be asked.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The first byte of a `Content-Range: bytes START-END/SIZE` answer.
pub fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

/// Downloads the image into RAM with resume, hashing as it streams. Nothing touches the disk
/// until the sha256 matched.
pub async fn download(
    session: &impl Reporter,
    http: &reqwest::Client,
    image: &recast_core::imaging::ImageTaskFile,
    work: &Path,
) -> Result<PathBuf, Failure> {
    download_file(session, http, image, work, "image.wim", (3, 40)).await
}

/// [`download`] of any file the task names, staged as `work/name`, its progress reported
/// between the two percentages.
async fn download_file(
    session: &impl Reporter,
    http: &reqwest::Client,
    image: &recast_core::imaging::ImageTaskFile,
    work: &Path,
    name: &str,
    (from, to): (u8, u8),
) -> Result<PathBuf, Failure> {
    let step = Step::Download;
    std::fs::create_dir_all(work)
        .map_err(|e| fail(step, format!("cannot make {}: {e}", work.display())))?;
    let room = free_bytes(work);
    if let Some(room) = room
        && room < image.size + STAGING_MARGIN
    {
        return Err(fail(
            step,
            format!(
                "{} is {} MiB but the imaging environment has {} MiB of RAM free to stage it in: this machine needs more memory (every file is verified in RAM before anything is written)",
                image.name,
                image.size >> 20,
                room >> 20
            ),
        ));
    }
    let path = work.join(name);
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| {
        fail(
            step,
            format!("cannot stage the image in {}: {e}", path.display()),
        )
    })?;
    let mut hasher = Sha256::new();
    let mut have: u64 = 0;
    let mut last_percent = 0u8;
    session
        .progress(
            from,
            step,
            &format!("downloading {} ({} bytes)", image.name, image.size),
        )
        .await;
    let mut tries = 0;
    let mut had = 0;
    while have < image.size {
        // Only tries that fetched nothing count: a link that keeps breaking but moves on
        // is resumed as long as it moves.
        if have > had {
            had = have;
            tries = 0;
        }
        tries += 1;
        if tries > RETRIES {
            return Err(fail(
                step,
                format!(
                    "the download stopped at byte {have} of {} after {RETRIES} tries",
                    image.size
                ),
            ));
        }
        let mut req = http.get(&image.url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                say(&format!(
                    "download interrupted at byte {have}: {}; resuming",
                    chain(&e)
                ));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let status = resp.status().as_u16();
        let range_start = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range_start);
        match status {
            206 if range_start == Some(have) => {}
            200 | 206 => {
                // The whole file again, or a range that is not the one asked for: start over
                // rather than hash bytes in the wrong place.
                if have > 0 {
                    say(&format!(
                        "the server answered {status} from byte {range_start:?}, not {have}: downloading from the start"
                    ));
                }
                if status == 206 {
                    have = 0;
                    hasher = Sha256::new();
                    file.flush().await.ok();
                    file = tokio::fs::File::create(&path)
                        .await
                        .map_err(|e| fail(step, format!("cannot restage: {e}")))?;
                    continue;
                }
                if let Some(len) = resp.content_length()
                    && len != image.size
                {
                    return Err(fail(
                        step,
                        format!(
                            "{} is {len} bytes, the task says {}: nothing was written to the disk",
                            image.url, image.size
                        ),
                    ));
                }
                have = 0;
                hasher = Sha256::new();
                file.flush().await.ok();
                file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| fail(step, format!("cannot restage: {e}")))?;
            }
            s if (400..500).contains(&s) => {
                return Err(fail(step, format!("{} answered {s}", image.url)));
            }
            s => {
                say(&format!("{} answered {s}; retrying", image.url));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        let mut resp = resp;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    hasher.update(&chunk);
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| fail(step, format!("cannot stage the image: {e}")))?;
                    have += chunk.len() as u64;
                    let percent = (have.min(image.size) * 100 / image.size.max(1)) as u8;
                    if percent >= last_percent + 10 {
                        last_percent = percent;
                        session
                            .progress(
                                progress::overall(from, to, percent),
                                step,
                                &format!("{have} of {} bytes", image.size),
                            )
                            .await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    say(&format!(
                        "download interrupted at byte {have}: {e}; resuming"
                    ));
                    break;
                }
            }
        }
    }
    file.flush()
        .await
        .map_err(|e| fail(step, format!("cannot stage the image: {e}")))?;
    let got = format!("{:x}", hasher.finalize());
    if have != image.size || !got.eq_ignore_ascii_case(&image.sha256) {
        let _ = std::fs::remove_file(&path);
        return Err(fail(
            step,
            format!(
                "the image's sha256 is {got} ({have} bytes), not {} ({} bytes): nothing was written to the disk",
                image.sha256, image.size
            ),
        ));
    }
    session
        .progress(
            to,
            step,
            &format!("{}: downloaded; sha256 matches", image.name),
        )
        .await;
    Ok(path)
}

/// What a progress report says of the firmware's databases: UEFI with a readable Secure Boot
/// state only (an unmounted efivarfs reads as no db at all, which is not what the firmware
/// holds). Names are made to fit what the boot service keeps: at most MAX_NAME bytes, no
/// control characters, at most MAX_CERTIFICATES of them.
pub fn firmware_report(t: &MachineTrust) -> Option<FirmwareReport> {
    if t.firmware != Firmware::Uefi || t.secure_boot == SecureBoot::Unknown {
        return None;
    }
    let fit = |name: &str| {
        let mut out = String::new();
        for c in name.chars().map(|c| if c.is_control() { ' ' } else { c }) {
            if out.len() + c.len_utf8() > FirmwareReport::MAX_NAME {
                break;
            }
            out.push(c);
        }
        out
    };
    let names: Vec<String> =
        t.db.certificates()
            .map(|c| fit(&c.subject))
            .take(FirmwareReport::MAX_CERTIFICATES)
            .collect();
    let hashes =
        t.db.entries
            .iter()
            .filter(|e| matches!(e.signature, boot_trust::Signature::Sha256(_)))
            .count();
    Some(FirmwareReport {
        db_certificates: names,
        db_hashes: hashes as u32,
        dbx_entries: t.dbx.entries.len() as u32,
    })
}

/// Whether the firmware would start the staged image's boot manager; a refusal when it would
/// not (with Secure Boot on, or not readable). BIOS and Secure Boot off check nothing, and
/// nothing is extracted for them.
async fn will_it_boot(
    env: &Env,
    source: ManagerSource<'_>,
    trust: Result<MachineTrust, String>,
) -> Result<Verdict, Failure> {
    let refuse = |message: String| Failure {
        step: Step::BootTrust,
        message,
        refusal: Some(ImagingRefusal::WillNotBoot),
    };
    let trust = match trust {
        Ok(t) => t,
        // A database that exists and cannot be read only matters when the firmware checks.
        Err(e) => match sysfs::secure_boot(&env.sysfs) {
            Some(false) => return Ok(Verdict::NotChecked(boot_trust::NotChecked::SecureBootOff)),
            _ => {
                return Err(refuse(format!(
                    "{e}; with Secure Boot on (or unknown) recast cannot tell whether the image's boot manager would start, and writes nothing"
                )));
            }
        },
    };
    if trust.firmware == Firmware::Bios || trust.secure_boot == SecureBoot::Off {
        let no_manager = BootManager {
            sha256: [0; 32],
            signatures: Vec::new(),
        };
        return Ok(boot_trust::decide(&trust, &no_manager));
    }
    // The boot manager the disk will start under UEFI (bcdboot copies it to the system
    // partition as \EFI\Microsoft\Boot\bootmgfw.efi and \EFI\Boot\bootx64.efi).
    let in_wim = format!("/{UEFI_BOOT_MANAGER}");
    let (staged, index) = match source {
        ManagerSource::Wim { staged, index } => (staged, index),
        ManagerSource::Fetched(None) => {
            return Err(refuse(format!(
                "the image has no {in_wim}: a UEFI machine would find nothing to start"
            )));
        }
        ManagerSource::Fetched(Some(bytes)) => return judge_boot_manager(&trust, &bytes, &in_wim),
    };
    let dir = env.work.join("boot-manager");
    let _ = std::fs::remove_dir_all(&dir);
    let extracted = run_env_paths(
        Step::BootTrust,
        "wimlib-imagex",
        &[
            "extract",
            &staged.to_string_lossy(),
            &index.to_string(),
            &in_wim,
            &format!("--dest-dir={}", dir.display()),
            "--no-acls",
            "--no-attributes",
        ],
        &[],
        // Windows' own paths are case-insensitive; so is this lookup.
        &[("WIMLIB_IMAGEX_IGNORE_CASE", "1")],
    )
    .await;
    let bytes = match extracted {
        // The one file extracted, whatever the case of its name in the image.
        Ok(_) => std::fs::read_dir(&dir)
            .and_then(|mut d| {
                d.next()
                    .ok_or_else(|| std::io::Error::other("wimlib-imagex extracted nothing"))?
            })
            .and_then(|entry| std::fs::read(entry.path()))
            .map_err(|e| {
                fail(
                    Step::BootTrust,
                    format!("reading the extracted boot manager: {e}"),
                )
            }),
        Err(f) if f.message.contains("does not exist") => Err(refuse(format!(
            "the image has no {in_wim}: a UEFI machine would find nothing to start"
        ))),
        Err(f) => Err(f),
    };
    let _ = std::fs::remove_dir_all(&dir);
    judge_boot_manager(&trust, &bytes?, &in_wim)
}

/// The firmware's verdict on a boot manager's bytes; a refusal when it would not start it.
fn judge_boot_manager(
    trust: &MachineTrust,
    bytes: &[u8],
    in_wim: &str,
) -> Result<Verdict, Failure> {
    let refuse = |message: String| Failure {
        step: Step::BootTrust,
        message,
        refusal: Some(ImagingRefusal::WillNotBoot),
    };
    let manager = BootManager::read(bytes).map_err(|e| {
        refuse(format!(
            "the image's {in_wim} cannot be checked: {e}; firmware with Secure Boot on would refuse it"
        ))
    })?;
    match boot_trust::decide(trust, &manager) {
        v @ Verdict::WillNotBoot { .. } => Err(refuse(format!(
            "this machine's firmware would refuse the image's boot manager, so nothing was written: {v}"
        ))),
        v => Ok(v),
    }
}

/// The image's expanded size (wimlib's "Total Bytes"), to size the Windows partition.
async fn image_total_bytes(wim: &Path, index: u32) -> Result<u64, Failure> {
    let out = output(
        Step::Download,
        "wimlib-imagex",
        &["info", &wim.to_string_lossy(), &index.to_string()],
    )
    .await?;
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "Total Bytes").then(|| v.trim().parse::<u64>().ok())?
        })
        .ok_or_else(|| {
            fail(
                Step::Download,
                format!("wimlib-imagex info shows no image {index} in the downloaded WIM"),
            )
        })
}

/// The sizes the layout asks of the Windows partition for an image of `image_bytes` (its
/// expanded size): room for it and a quarter more (page file, the first updates), at least
/// 1 GiB.
fn sizes_for(image_bytes: u64) -> layout::Sizes {
    layout::Sizes {
        min_windows_bytes: (image_bytes + image_bytes / 4).max(1 << 30),
        ..layout::Sizes::default()
    }
}

/// Whether the disk can hold the layout at all, planned with throw-away GUIDs.
fn preflight(
    env: &Env,
    disk: &disks::Disk,
    mode: BootMode,
    image_bytes: u64,
) -> Result<(), String> {
    let sector = sysfs::sector_size(&env.sysfs, &disk.name);
    let ids = layout::GptIds {
        disk: "00000000-0000-0000-0000-000000000001".into(),
        esp: "00000000-0000-0000-0000-000000000002".into(),
        msr: "00000000-0000-0000-0000-000000000003".into(),
        windows: "00000000-0000-0000-0000-000000000004".into(),
        recovery: "00000000-0000-0000-0000-000000000005".into(),
    };
    layout::plan(
        mode,
        disk.size_bytes,
        sector,
        &ids,
        "00000001",
        sizes_for(image_bytes),
    )
    .map(|_| ())
    .map_err(|e| format!("{} cannot hold the image: {e}", disk.name))
}

/// Writes the partition table and reads it back before anything else.
async fn partition(
    env: &Env,
    disk: &disks::Disk,
    mode: BootMode,
    image_bytes: u64,
) -> Result<layout::Plan, Failure> {
    let step = Step::Partition;
    let sector = sysfs::sector_size(&env.sysfs, &disk.name);
    let guid = || uuid::Uuid::new_v4().to_string();
    let ids = layout::GptIds {
        disk: guid(),
        esp: guid(),
        msr: guid(),
        windows: guid(),
        recovery: guid(),
    };
    let signature = format!("{:08x}", fastrand_u32());
    let sizes = sizes_for(image_bytes);
    let plan = layout::plan(mode, disk.size_bytes, sector, &ids, &signature, sizes)
        .map_err(|e| fail(step, e.to_string()))?;
    let device = env.dev.join(&disk.name);
    // No old boot code may survive a half-finished run: firmware must pass over this disk
    // until the boot files are written.
    write_boot_code(&device, &next_device_boot_code()).map_err(|e| fail(step, e))?;
    let script = layout::render_sfdisk(&plan);
    run_with_input(
        step,
        "sfdisk",
        &["--wipe", "always", "--wipe-partitions", "always", "-q"],
        &device,
        &script,
    )
    .await?;
    let json = output(step, "sfdisk", &["--json", &device.to_string_lossy()]).await?;
    layout::verify(&plan, &json).map_err(|diffs| {
        fail(
            step,
            format!(
                "the partition table read back differs: {}",
                diffs.join("; ")
            ),
        )
    })?;
    // devtmpfs makes the partition nodes once the kernel re-read the table; and the kernel
    // must see the new extents, not the old ones (mkfs and wimlib write through its view).
    for (i, p) in plan.partitions.iter().enumerate() {
        let name = sysfs::partition_name(&disk.name, i as u32 + 1);
        let node = env.dev.join(&name);
        wait_for(&node, Duration::from_secs(10))
            .await
            .map_err(|()| fail(step, format!("{} did not appear", node.display())))?;
        let units = plan.sector_size / 512;
        let want = (p.start * units, p.size * units);
        if let Some(seen) = sysfs::partition_extent(&env.sysfs, &disk.name, &name)
            && seen != want
        {
            return Err(fail(
                step,
                format!(
                    "the kernel sees {name} at {seen:?} (start, length in 512-byte units), the table says {want:?}: it did not re-read the partition table; nothing was formatted"
                ),
            ));
        }
    }
    Ok(plan)
}

fn fastrand_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) | 1
}

/// MBR boot code that hands the machine back to the firmware: `int 18h` ("boot failed, try the
/// next device"), then `hlt` in a loop. Zeros would not do: a BIOS checks only the 0x55AA
/// signature sfdisk writes and would run whatever sits there.
pub fn next_device_boot_code() -> [u8; 440] {
    let mut code = [0u8; 440];
    code[..5].copy_from_slice(&[0xCD, 0x18, 0xF4, 0xEB, 0xFD]);
    code
}

async fn wait_for(path: &Path, limit: Duration) -> Result<(), ()> {
    let start = std::time::Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// wimlib-imagex in NTFS-3G mode (the target is an unmounted block device): security
/// descriptors, named streams, reparse points, short names and hard links as DISM writes them.
pub async fn apply(
    session: &impl Reporter,
    wim: &Path,
    index: u32,
    windows: &Path,
) -> Result<(), Failure> {
    let step = Step::Apply;
    session
        .progress(
            50,
            step,
            &format!("applying image {index} to {}", windows.display()),
        )
        .await;
    let mut child = tokio::process::Command::new("wimlib-imagex")
        // Never leave it writing the partition after this function gave up on it.
        .kill_on_drop(true)
        .arg("apply")
        .arg(wim)
        .arg(index.to_string())
        .arg(windows)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(step, format!("cannot run wimlib-imagex: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut buf = [0u8; 4096];
    let mut pending = String::new();
    let mut last = 0u8;
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| fail(step, format!("reading wimlib-imagex: {e}")))?;
        if n == 0 {
            break;
        }
        for line in progress::split_lines(&mut pending, &String::from_utf8_lossy(&buf[..n])) {
            if let Some(p) = progress::file_data_percent(&line)
                && p >= last + 10
            {
                last = p;
                session
                    .progress(progress::overall(50, 90, p), step, &line)
                    .await;
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| fail(step, format!("wimlib-imagex: {e}")))?;
    let errors = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(fail(
            step,
            format!("wimlib-imagex apply failed ({status}): {}", errors.trim()),
        ));
    }
    session.progress(90, step, "image applied").await;
    Ok(())
}

/// Mounts an NTFS volume with ntfs-3g (FUSE); [`NtfsMount::unmount`] ends it.
async fn mount_ntfs(
    step: Step,
    device: &Path,
    at: &Path,
    read_only: bool,
) -> Result<NtfsMount, Failure> {
    std::fs::create_dir_all(at).map_err(|e| fail(step, format!("mkdir {}: {e}", at.display())))?;
    let mut args = vec![];
    if read_only {
        args.push("-o");
        args.push("ro");
    }
    run(step, "ntfs-3g", &args, &[device, at]).await?;
    Ok(NtfsMount(at.to_path_buf()))
}

struct NtfsMount(PathBuf);

impl NtfsMount {
    async fn unmount(self, step: Step) -> Result<(), Failure> {
        run(step, "umount", &[], &[&self.0]).await
    }
}

/// The machine's own files, fetched with the try's token before anything is written.
pub struct Configuration {
    pub unattend: Vec<u8>,
    pub agent: Vec<u8>,
}

async fn fetch_configuration(session: &Session) -> Result<Configuration, Failure> {
    let step = Step::Configure;
    for url in [&session.task.unattend_url, &session.task.agent_config_url] {
        if url.starts_with("https://") && !Path::new(CA_FILE).exists() {
            return Err(fail(
                step,
                format!(
                    "the boot service serves this machine's credential files over HTTPS but the imaging environment trusts no CA: put the site's CA at {CA_FILE} in the initrd (imager/env/build.sh --ca FILE); the disk is untouched"
                ),
            ));
        }
    }
    Ok(Configuration {
        unattend: session.fetch_text(step, &session.task.unattend_url).await?,
        agent: session
            .fetch_text(step, &session.task.agent_config_url)
            .await?,
    })
}

/// unattend.xml to `\Windows\Panther`, agent.json to `\ProgramData\recast`, both readable by
/// SYSTEM and Administrators only (agent.json holds the enrollment credential, unattend.xml
/// the profile's passwords).
async fn configure(env: &Env, windows: &Path, files: &Configuration) -> Result<(), Failure> {
    let step = Step::Configure;
    let at = env.work.join("windows");
    let mount = mount_ntfs(step, windows, &at, false).await?;
    let written = (|| -> Result<(), String> {
        let panther = find_or_make(&at, &["Windows", "Panther"])?;
        let recast = find_or_make(&at, &["ProgramData", "recast"])?;
        set_acl(&recast, &acl::system_and_administrators_only(true))?;
        for (dir, name, bytes) in [
            (&panther, "unattend.xml", &files.unattend),
            (&recast, "agent.json", &files.agent),
        ] {
            // NTFS through ntfs-3g is case-sensitive, Windows is not: replace the image's own
            // Unattend.xml rather than putting a second one beside it.
            let path = find_child(dir, name).unwrap_or_else(|| dir.join(name));
            std::fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
            set_acl(&path, &acl::system_and_administrators_only(false))?;
        }
        // Setup's cached copy of the answer file goes once Setup is done (the same lines
        // startnet.cmd puts first: recast_core::imaging::SETUP_COMPLETE_LINES).
        let [dirs @ .., file] = recast_core::imaging::SETUP_COMPLETE_PATH;
        let scripts = find_or_make(&at, &dirs)?;
        let path = find_child(&scripts, file).unwrap_or_else(|| scripts.join(file));
        let existing = std::fs::read(&path).unwrap_or_default();
        std::fs::write(
            &path,
            recast_core::imaging::setup_complete_with_cleanup(&existing),
        )
        .map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(())
    })();
    let unmounted = mount.unmount(step).await;
    written.map_err(|e| fail(step, e))?;
    unmounted
}

/// The driver set for this machine's SMBIOS manufacturer and model, as a file to download;
/// a set that names the model but is not served yet stops the try before any write (the
/// machine would come up without the drivers its site declared for it).
fn machine_driver_set(
    task: &ImagingTask,
    (manufacturer, model): &(String, String),
) -> Result<Option<recast_core::imaging::ImageTaskFile>, Failure> {
    use recast_core::imaging::{DriverChoice, driver_set_for};
    if task.drivers.is_empty() {
        return Ok(None);
    }
    match driver_set_for(&task.drivers, manufacturer, model) {
        DriverChoice::None => {
            say(&format!(
                "no driver set for {manufacturer:?} {model:?}: Windows uses the image's own drivers"
            ));
            Ok(None)
        }
        DriverChoice::NotReady(set) => Err(fail(
            Step::Download,
            format!(
                "the image's driver set for {:?} {:?} ({}) is not on this boot server yet; nothing was written (retry when its GoldenImage has fetched it)",
                set.manufacturer, set.model, set.sha256
            ),
        )),
        DriverChoice::Ready(set) => {
            say(&format!(
                "driver set for {:?} {:?}: {}",
                set.manufacturer, set.model, set.sha256
            ));
            Ok(Some(recast_core::imaging::ImageTaskFile {
                name: format!(
                    "drivers for {} {}",
                    set.manufacturer.trim(),
                    set.model.trim()
                ),
                url: set.url.clone().unwrap_or_default(),
                sha256: set.sha256.clone(),
                size: set.size,
                index: 1,
            }))
        }
    }
}

/// `\recast\drivers` on the Windows partition, where unattend's PnP driver path points: the
/// machine's set applied into it (wimlib, image 1), or left empty when its model has none.
async fn place_drivers(env: &Env, windows: &Path, set: Option<&Path>) -> Result<(), Failure> {
    let step = Step::Configure;
    let at = env.work.join("windows");
    let mount = mount_ntfs(step, windows, &at, false).await?;
    let applied = async {
        let dir =
            find_or_make(&at, &recast_core::imaging::DRIVER_DIR).map_err(|e| fail(step, e))?;
        if let Some(wim) = set {
            run(
                step,
                "wimlib-imagex",
                &["apply"],
                &[wim, Path::new("1"), dir.as_path()],
            )
            .await?;
        }
        Ok::<(), Failure>(())
    }
    .await;
    let unmounted = mount.unmount(step).await;
    applied?;
    if let Some(wim) = set {
        let _ = std::fs::remove_file(wim);
    }
    unmounted
}

/// The directory `parts` under `root`, matching existing names without regard to case (NTFS
/// keeps Windows' case), creating what is missing.
fn find_or_make(root: &Path, parts: &[&str]) -> Result<PathBuf, String> {
    let mut dir = root.to_path_buf();
    for part in parts {
        dir = match find_child(&dir, part) {
            Some(existing) => existing,
            None => {
                let new = dir.join(part);
                std::fs::create_dir(&new).map_err(|e| format!("mkdir {}: {e}", new.display()))?;
                new
            }
        };
    }
    Ok(dir)
}

fn find_child(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
}

fn find_path(root: &Path, parts: &[&str]) -> Option<PathBuf> {
    parts
        .iter()
        .try_fold(root.to_path_buf(), |dir, part| find_child(&dir, part))
}

fn set_acl(path: &Path, sd: &[u8]) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))?;
    let name = c"system.ntfs_acl";
    // SAFETY: both strings are NUL-terminated and `sd` outlives the call.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            sd.as_ptr().cast(),
            sd.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot set the security descriptor of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// bcdboot's job: the boot manager's files and a BCD store naming the Windows partition, on
/// the system partition; for BIOS also the boot code that reaches `\bootmgr`.
async fn boot_files(
    env: &Env,
    mode: BootMode,
    plan: &layout::Plan,
    disk: &str,
    system: &Path,
    windows: &Path,
) -> Result<(), Failure> {
    let step = Step::BootFiles;
    if mode == BootMode::Bios {
        // syslinux's volume boot record and ldlinux.sys at the root of the FAT32 system
        // partition (syslinux writes them through mtools; the partition must not be mounted).
        run_env(
            step,
            "syslinux",
            &["--install", &system.to_string_lossy()],
            &[("MTOOLS_SKIP_CHECK", "1")],
        )
        .await?;
    }
    let win_at = env.work.join("windows");
    let sys_at = env.work.join("system");
    std::fs::create_dir_all(&sys_at).map_err(|e| fail(step, format!("mkdir: {e}")))?;
    let win = mount_ntfs(step, windows, &win_at, true).await?;
    if let Err(e) = run(step, "mount", &["-t", "vfat"], &[system, &sys_at]).await {
        let _ = win.unmount(step).await;
        return Err(e);
    }
    let work = env.work.clone();
    let copied = copy_boot_files(env, &work, mode, plan, &win_at, &sys_at).await;
    let unmount_sys = run(step, "umount", &[], &[&sys_at]).await;
    let unmount_win = win.unmount(step).await;
    copied?;
    unmount_sys?;
    unmount_win?;
    if mode == BootMode::Bios {
        // syslinux's MBR code: boot the active partition, as Windows' MBR does. It keeps the
        // disk signature and the table (only the first 440 bytes are written).
        let mbr = std::fs::read(env.syslinux.join("mbr/mbr.bin"))
            .map_err(|e| fail(step, format!("cannot read syslinux's mbr.bin: {e}")))?;
        write_boot_code(&env.dev.join(disk), &mbr).map_err(|e| fail(step, e))?;
    }
    Ok(())
}

fn write_boot_code(device: &Path, code: &[u8]) -> Result<(), String> {
    use std::io::{Seek, SeekFrom, Write};
    if code.len() != 440 {
        return Err(format!("MBR boot code is {} bytes, not 440", code.len()));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(code))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write the boot code of {}: {e}", device.display()))
}

async fn copy_boot_files(
    env: &Env,
    work: &Path,
    mode: BootMode,
    plan: &layout::Plan,
    win: &Path,
    sys: &Path,
) -> Result<(), Failure> {
    let step = Step::BootFiles;
    let boot = find_path(win, &["Windows", "Boot"]).ok_or_else(|| {
        fail(
            step,
            "the image has no \\Windows\\Boot: not a Windows image",
        )
    })?;
    let files = list_files(&boot).map_err(|e| fail(step, e))?;
    let copies = bootfiles::plan(mode, &files).map_err(|e| fail(step, e.to_string()))?;

    // The BCD store first, in RAM: if it cannot be built, nothing that firmware would boot
    // is on the system partition yet.
    let template = find_path(win, &["Windows", "System32", "config", "BCD-Template"]).ok_or_else(
        || fail(step, "the image has no \\Windows\\System32\\config\\BCD-Template to build the BCD store from"),
    )?;
    let store = work.join("BCD");
    std::fs::copy(&template, &store).map_err(|e| fail(step, format!("copy BCD-Template: {e}")))?;
    write_bcd(mode, plan, &store).await?;

    // Then everything but the firmware's fallback loader, then the store, then the fallback
    // loader: the one file UEFI firmware boots from a disk without an NVRAM entry comes last.
    let copy = |from: &Path, to_rel: &str| -> Result<(), Failure> {
        let to = sys.join(to_rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(step, format!("mkdir {}: {e}", parent.display())))?;
        }
        std::fs::copy(from, &to)
            .map(|_| ())
            .map_err(|e| fail(step, format!("copy {} to {to_rel}: {e}", from.display())))
    };
    let (last, first): (Vec<_>, Vec<_>) = copies
        .iter()
        .partition(|c| c.to == bootfiles::FALLBACK_LOADER);
    for c in &first {
        copy(&boot.join(&c.from), &c.to)?;
    }
    copy(&store, bootfiles::bcd_path(mode))?;
    for c in &last {
        copy(&boot.join(&c.from), &c.to)?;
    }
    say(&format!(
        "{} boot files and the BCD store written",
        copies.len()
    ));
    if mode == BootMode::Bios {
        let dir = sys;
        for m in ["chain.c32", "libcom32.c32", "libutil.c32"] {
            std::fs::copy(env.syslinux.join("modules/bios").join(m), dir.join(m))
                .map_err(|e| fail(step, format!("copy syslinux's {m}: {e}")))?;
        }
        std::fs::write(dir.join("syslinux.cfg"), SYSLINUX_CFG)
            .map_err(|e| fail(step, format!("write syslinux.cfg: {e}")))?;
    }
    Ok(())
}

/// syslinux hands over to `\bootmgr` the way Windows' volume boot record does (chain.c32's
/// `ntldr=`: load the file at 0x2000:0 with the partition's BPB), at once and silently.
pub const SYSLINUX_CFG: &str = "DEFAULT windows\nPROMPT 0\nTIMEOUT 0\nLABEL windows\n  COM32 chain.c32\n  APPEND boot ntldr=/bootmgr\n";

fn list_files(root: &Path) -> Result<Vec<String>, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), String> {
        for e in std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ty = e.file_type().map_err(|e| e.to_string())?;
            if ty.is_dir() {
                walk(&e.path(), &rel, out)?;
            } else if ty.is_file() {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

/// Fills the copied BCD-Template with what bcdboot writes: hivexsh lists what the template
/// holds, the pure plan says what to add and set.
async fn write_bcd(mode: BootMode, plan: &layout::Plan, store: &Path) -> Result<(), Failure> {
    let step = Step::BootFiles;
    let device = |role: Role| -> Result<bcd::Device, Failure> {
        let p = plan
            .partition(role)
            .ok_or_else(|| fail(step, format!("the plan has no {role:?} partition")))?;
        Ok(match mode {
            BootMode::Uefi => bcd::Device::Gpt {
                partition: p.uuid.clone().unwrap_or_default(),
                disk: plan.disk_id.clone(),
            },
            BootMode::Bios => bcd::Device::Mbr {
                offset_bytes: p.start * plan.sector_size,
                signature: u32::from_str_radix(plan.disk_id.trim_start_matches("0x"), 16)
                    .map_err(|e| fail(step, format!("disk signature {}: {e}", plan.disk_id)))?,
            },
        })
    };
    let system = device(mode.system_role())?;
    let windows = device(Role::Windows)?;
    // hivexsh cannot ask whether a key exists (a failed `cd` ends the script), so the
    // listing runs in rounds, each looking inside what the last one found.
    let listing_script = store.with_extension("list");
    let mut listing = String::new();
    let mut rounds = 0;
    let existing = loop {
        rounds += 1;
        if rounds > 16 {
            return Err(fail(
                step,
                "the BCD-Template's listing did not settle after 16 rounds of hivexsh",
            ));
        }
        let existing = bcd::parse_listing(&listing)
            .map_err(|e| fail(step, format!("cannot read the BCD-Template's listing: {e}")))?;
        let Some(round) = bcd::listing_script(&existing) else {
            break existing;
        };
        std::fs::write(&listing_script, round)
            .map_err(|e| fail(step, format!("write the hivexsh script: {e}")))?;
        listing.push_str(
            &output(
                step,
                "hivexsh",
                &[
                    "-f",
                    &listing_script.to_string_lossy(),
                    &store.to_string_lossy(),
                ],
            )
            .await?,
        );
    };
    let wanted = bcd::plan(
        mode,
        &system,
        &windows,
        "en-US",
        "Windows",
        &format!("{{{}}}", uuid::Uuid::new_v4()),
        &format!("{{{}}}", uuid::Uuid::new_v4()),
    )
    .map_err(|e| fail(step, format!("cannot plan the BCD store: {e}")))?;
    let script = store.with_extension("hivexsh");
    std::fs::write(&script, bcd::render_hivexsh(&wanted, &existing))
        .map_err(|e| fail(step, format!("write the hivexsh script: {e}")))?;
    run(
        step,
        "hivexsh",
        &[
            "-w",
            "-f",
            &script.to_string_lossy(),
            &store.to_string_lossy(),
        ],
        &[],
    )
    .await
}

/// Runs a tool; a failure names the step, the command and what it printed.
async fn run(step: Step, tool: &str, args: &[&str], paths: &[&Path]) -> Result<(), Failure> {
    run_env_paths(step, tool, args, paths, &[])
        .await
        .map(|_| ())
}

async fn run_env(
    step: Step,
    tool: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(), Failure> {
    run_env_paths(step, tool, args, &[], env).await.map(|_| ())
}

async fn output(step: Step, tool: &str, args: &[&str]) -> Result<String, Failure> {
    run_env_paths(step, tool, args, &[], &[]).await
}

async fn run_env_paths(
    step: Step,
    tool: &str,
    args: &[&str],
    paths: &[&Path],
    env: &[(&str, &str)],
) -> Result<String, Failure> {
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(args).args(paths).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown = format!(
        "{tool} {}",
        args.iter()
            .map(|a| a.to_string())
            .chain(paths.iter().map(|p| p.display().to_string()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    say(&format!("$ {shown}"));
    let out = cmd
        .output()
        .await
        .map_err(|e| fail(step, format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            step,
            format!(
                "`{shown}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

async fn run_with_input(
    step: Step,
    tool: &str,
    args: &[&str],
    device: &Path,
    input: &str,
) -> Result<(), Failure> {
    let mut child = tokio::process::Command::new(tool)
        .args(args)
        .arg(device)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(step, format!("cannot run {tool}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(input.as_bytes())
        .await
        .map_err(|e| fail(step, format!("writing to {tool}: {e}")))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(step, format!("{tool}: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            step,
            format!(
                "{tool} {} failed ({}): {}",
                device.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_firmware_report_fits_what_the_boot_service_keeps_and_needs_a_readable_state() {
        use recast_core::boot_trust::{
            DbCertificate, Guid, Signature, SignatureDatabase, SignatureEntry,
        };
        let der = include_bytes!("../../core/src/testdata/boot_trust/ca-2011.der");
        let cert = |subject: &str| {
            let mut c = DbCertificate::from_der(der).unwrap();
            c.subject = subject.into();
            SignatureEntry {
                owner: Guid([1; 16]),
                signature: Signature::X509(Box::new(c)),
            }
        };
        let trust = |secure_boot, names: &[&str]| MachineTrust {
            firmware: Firmware::Uefi,
            secure_boot,
            db: SignatureDatabase {
                attributes: None,
                entries: names.iter().map(|n| cert(n)).collect(),
            },
            dbx: SignatureDatabase::default(),
        };
        // Long multi-byte names are cut on a character boundary within the byte limit, control
        // characters become spaces: the boot service accepts what the imager sends.
        let long = "Ä".repeat(150);
        let r = firmware_report(&trust(SecureBoot::On, &[&long, "Windows UEFI CA\n2023"])).unwrap();
        assert!(r.db_certificates[0].len() <= FirmwareReport::MAX_NAME);
        assert_eq!(
            r.db_certificates[0].chars().count(),
            FirmwareReport::MAX_NAME / 2
        );
        assert_eq!(r.db_certificates[1], "Windows UEFI CA 2023");
        assert!(r.check().is_ok());
        // More than the boot service keeps: the first ones.
        let many: Vec<String> = (0..40).map(|i| format!("CA {i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let r = firmware_report(&trust(SecureBoot::Off, &refs)).unwrap();
        assert_eq!(r.db_certificates.len(), FirmwareReport::MAX_CERTIFICATES);
        assert!(r.check().is_ok());
        // Secure Boot unreadable (efivarfs not mounted): no report, never an empty db.
        assert_eq!(firmware_report(&trust(SecureBoot::Unknown, &[])), None);
        // BIOS: nothing to report.
        let mut bios = trust(SecureBoot::Off, &[]);
        bios.firmware = Firmware::Bios;
        assert_eq!(firmware_report(&bios), None);
    }

    #[test]
    fn a_long_error_keeps_its_start_and_end_within_the_limit() {
        assert_eq!(fit_report("short", 100), "short");
        let long = format!(
            "wimlib-imagex apply failed: {}the last line",
            "x".repeat(5000)
        );
        let fit = fit_report(&long, MAX_ERROR_BYTES);
        assert!(fit.len() <= MAX_ERROR_BYTES, "{}", fit.len());
        assert!(fit.starts_with("wimlib-imagex apply failed: "));
        assert!(fit.ends_with("the last line"));
        assert!(fit.contains(" [...] "));
        // Multi-byte characters are never cut in half.
        let wide = "é".repeat(4000);
        let fit = fit_report(&wide, 1001);
        assert!(fit.len() <= 1001);
        assert!(fit.chars().all(|c| c == 'é' || " [.]".contains(c)));
        // The report, with the cut error, still fits the boot service's 4 KiB.
        let report = ResultReport {
            ok: false,
            step: Some("apply".into()),
            error: Some(fit_report(&long, MAX_ERROR_BYTES)),
            refusal: Some(ImagingRefusal::NoTargetDisk),
        };
        assert!(serde_json::to_vec(&report).unwrap().len() < 4096);
    }

    #[test]
    fn content_range_gives_where_the_bytes_start() {
        assert_eq!(
            content_range_start("bytes 1000-4653349/4654350"),
            Some(1000)
        );
        assert_eq!(content_range_start(" bytes 0-0/1 "), Some(0));
        assert_eq!(content_range_start("bytes */4654350"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(content_range_start(""), None);
    }

    #[test]
    fn the_placeholder_boot_code_hands_back_to_the_firmware() {
        let code = next_device_boot_code();
        // int 18h; hlt; jmp $-1
        assert_eq!(&code[..5], &[0xCD, 0x18, 0xF4, 0xEB, 0xFD]);
        assert!(code[5..].iter().all(|b| *b == 0));
        assert_eq!(code.len(), 440, "only the boot code, never the table");
    }

    #[test]
    fn the_windows_partition_gets_the_image_and_a_quarter_more() {
        assert_eq!(sizes_for(0).min_windows_bytes, 1 << 30);
        assert_eq!(sizes_for(20 << 30).min_windows_bytes, 25 << 30);
        assert_eq!(
            sizes_for(20 << 30).recovery_bytes,
            layout::Sizes::default().recovery_bytes
        );
    }
}
