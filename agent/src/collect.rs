//! The collector: runs Windows' own tools (wevtutil, reg, fsutil, cmd) through a
//! [`CommandRunner`] and turns their output into an [`AgentReport`].
//!
//! On an endpoint the runner is [`SystemRunner`]; `--replay DIR` uses [`ReplayRunner`], which
//! reads the same outputs from files named after each [`Probe`] (see [`Probe::replay_file`] and
//! agent/README.md), so everything but the process spawn is exercised off Windows.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use recast_crds::report::{
    AgentReport, DiskInfo, MAX_EVENTS, MAX_TEXT, OsInfo, PendingServicing, REPORT_VERSION,
};

use crate::events::{self, MAX_XML_BYTES};
use crate::{text, tools};

/// What the collector asks the machine, one tool invocation each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    CurrentBuild,
    Ubr,
    UpdateEvents,
    ServicingEvents,
    CrashEvents,
    BootEvent,
    RebootPending,
    PackagesPending,
    SessionsPending,
    PendingXml,
    DiskFree,
    /// The console's OEM code page, which reg.exe and fsutil.exe write in.
    OemCodePage,
    /// Windows Setup's ImageState: whether OOBE has finished.
    SetupState,
}

pub const CURRENT_VERSION: &str = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion";
pub const SETUP_STATE: &str = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State";
const CBS: &str = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing";
/// Events per query: enough for months of monthly updates, bounded by the report's limit.
const EVENT_COUNT: usize = 100;

impl Probe {
    pub const ALL: [Probe; 13] = [
        Probe::OemCodePage,
        Probe::CurrentBuild,
        Probe::Ubr,
        Probe::UpdateEvents,
        Probe::ServicingEvents,
        Probe::CrashEvents,
        Probe::BootEvent,
        Probe::RebootPending,
        Probe::PackagesPending,
        Probe::SessionsPending,
        Probe::PendingXml,
        Probe::DiskFree,
        Probe::SetupState,
    ];

    /// The file `--replay DIR` reads this probe's stdout from. A missing file stands for the
    /// tool exiting with status 1 (reg.exe's "key not found", cmd's "file absent").
    pub fn replay_file(self) -> &'static str {
        match self {
            Probe::CurrentBuild => "reg-currentbuild.txt",
            Probe::Ubr => "reg-ubr.txt",
            Probe::UpdateEvents => "wevtutil-updates.xml",
            Probe::ServicingEvents => "wevtutil-servicing.xml",
            Probe::CrashEvents => "wevtutil-crashes.xml",
            Probe::BootEvent => "wevtutil-boot.xml",
            Probe::RebootPending => "reg-rebootpending.txt",
            Probe::PackagesPending => "reg-packagespending.txt",
            Probe::SessionsPending => "reg-sessionspending.txt",
            Probe::PendingXml => "pending-xml.txt",
            Probe::DiskFree => "fsutil-diskfree.txt",
            Probe::OemCodePage => "reg-oemcp.txt",
            Probe::SetupState => "reg-imagestate.txt",
        }
    }

    /// The program and arguments run on Windows.
    pub fn command(self) -> (&'static str, Vec<String>) {
        let events = |log: &str, query: &str, count: usize| {
            (
                "wevtutil.exe",
                vec![
                    "qe".to_string(),
                    log.to_string(),
                    format!("/q:{query}"),
                    format!("/c:{count}"),
                    "/rd:true".to_string(),
                    "/f:xml".to_string(),
                    // Unicode (UTF-16LE): the console code page could not carry the titles.
                    "/uni:true".to_string(),
                    "/e:Events".to_string(),
                ],
            )
        };
        let reg = |key: String, value: Option<&str>| {
            let mut args = vec!["query".to_string(), key];
            if let Some(v) = value {
                args.push("/v".to_string());
                args.push(v.to_string());
            }
            ("reg.exe", args)
        };
        match self {
            Probe::CurrentBuild => reg(CURRENT_VERSION.to_string(), Some("CurrentBuild")),
            Probe::Ubr => reg(CURRENT_VERSION.to_string(), Some("UBR")),
            Probe::SetupState => reg(SETUP_STATE.to_string(), Some("ImageState")),
            Probe::UpdateEvents => events(
                "System",
                "*[System[Provider[@Name='Microsoft-Windows-WindowsUpdateClient'] and (EventID=19 or EventID=20 or EventID=43)]]",
                EVENT_COUNT,
            ),
            Probe::ServicingEvents => events(
                "Setup",
                "*[System[Provider[@Name='Microsoft-Windows-Servicing'] and (EventID=1 or EventID=2 or EventID=3 or EventID=4 or EventID=6)]]",
                EVENT_COUNT,
            ),
            Probe::CrashEvents => events(
                "System",
                "*[System[(Provider[@Name='Microsoft-Windows-WER-SystemErrorReporting'] and EventID=1001) or (Provider[@Name='Microsoft-Windows-Kernel-Power'] and EventID=41) or (Provider[@Name='EventLog'] and EventID=6008)]]",
                50,
            ),
            Probe::BootEvent => events(
                "System",
                "*[System[Provider[@Name='Microsoft-Windows-Kernel-General'] and EventID=12]]",
                1,
            ),
            Probe::RebootPending => reg(format!(r"{CBS}\RebootPending"), None),
            Probe::PackagesPending => reg(format!(r"{CBS}\PackagesPending"), None),
            Probe::SessionsPending => reg(format!(r"{CBS}\SessionsPending"), Some("Exclusive")),
            // No argument contains a space, so Rust passes them to cmd unquoted and cmd
            // expands %SystemRoot% itself.
            Probe::PendingXml => (
                "cmd.exe",
                [
                    "/d",
                    "/c",
                    "if",
                    "exist",
                    r"%SystemRoot%\WinSxS\pending.xml",
                    "(exit",
                    "0)",
                    "else",
                    "(exit",
                    "1)",
                ]
                .map(str::to_string)
                .to_vec(),
            ),
            Probe::DiskFree => (
                "fsutil.exe",
                vec!["volume".into(), "diskfree".into(), "C:".into()],
            ),
            Probe::OemCodePage => reg(
                r"HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage".to_string(),
                Some("OEMCP"),
            ),
        }
    }
}

/// What a tool run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    /// The exit status was 0.
    pub success: bool,
    pub stdout: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "could not start {program}: {source} (the agent runs Windows' own tools from %SystemRoot%\\System32)"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {seconds}s and was stopped")]
    Timeout { program: String, seconds: u64 },
    #[error("{program} printed more than {max} bytes; the output was not parsed")]
    TooMuchOutput { program: String, max: usize },
    #[error("reading {path}: {source}")]
    Replay {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{program}: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
}

/// Where a Windows tool lives: `%SystemRoot%\System32\TOOL`, never a bare name (a bare name
/// is searched in the agent's own directory first). Without SystemRoot (not Windows: tests and
/// `simulate`), the bare name.
pub fn system_tool(system_root: Option<&std::ffi::OsStr>, tool: &str) -> PathBuf {
    match system_root {
        Some(root) if !root.is_empty() => {
            let mut p = root.to_os_string();
            p.push("\\System32\\");
            p.push(tool);
            PathBuf::from(p)
        }
        _ => PathBuf::from(tool),
    }
}

/// Runs one probe. The seam between the collector and Windows.
pub trait CommandRunner {
    fn run(&self, probe: Probe) -> Result<ToolOutput, RunError>;
}

/// Runs the real tools, each with a deadline and a cap on what it may print.
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner {
            timeout: Duration::from_secs(60),
        }
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, probe: Probe) -> Result<ToolOutput, RunError> {
        let (program, args) = probe.command();
        let path = system_tool(std::env::var_os("SystemRoot").as_deref(), program);
        let mut child = Command::new(&path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: program.to_string(),
                source,
            })?;
        // Read stdout on its own thread: a tool blocked on a full pipe would never exit.
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(out) = stdout {
                out.take(MAX_XML_BYTES as u64 + 1).read_to_end(&mut buf)?;
            }
            Ok(buf)
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RunError::Timeout {
                        program: program.to_string(),
                        seconds: self.timeout.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(RunError::Io {
                        program: program.to_string(),
                        source,
                    });
                }
            }
        };
        let stdout = reader
            .join()
            .map_err(|_| RunError::Io {
                program: program.to_string(),
                source: std::io::Error::other("the output reader thread panicked"),
            })?
            .map_err(|source| RunError::Io {
                program: program.to_string(),
                source,
            })?;
        if stdout.len() > MAX_XML_BYTES {
            return Err(RunError::TooMuchOutput {
                program: program.to_string(),
                max: MAX_XML_BYTES,
            });
        }
        Ok(ToolOutput {
            success: status.success(),
            stdout,
        })
    }
}

/// Reads each probe's output from `DIR/<Probe::replay_file>`.
pub struct ReplayRunner {
    pub dir: PathBuf,
}

impl CommandRunner for ReplayRunner {
    fn run(&self, probe: Probe) -> Result<ToolOutput, RunError> {
        let path = self.dir.join(probe.replay_file());
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ToolOutput {
                    success: false,
                    stdout: Vec::new(),
                });
            }
            Err(source) => return Err(RunError::Replay { path, source }),
            Ok(m) if m.len() > MAX_XML_BYTES as u64 => {
                return Err(RunError::TooMuchOutput {
                    program: path.display().to_string(),
                    max: MAX_XML_BYTES,
                });
            }
            Ok(_) => {}
        }
        let stdout = std::fs::read(&path).map_err(|source| RunError::Replay { path, source })?;
        Ok(ToolOutput {
            success: true,
            stdout,
        })
    }
}

/// Who is reporting: everything in the report that does not come from the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub endpoint: String,
    pub agent_version: String,
    pub attempt_id: Option<String>,
    pub interval_seconds: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Without the build there is nothing to report: every signal depends on it.
    #[error("reading the OS build failed: {0}; the agent sends no report without it")]
    Build(String),
}

/// The console's OEM code page from the probe's output, and what to report when it cannot be
/// read: reg and fsutil output is then read as ASCII with anything else marked, which loses
/// nothing a decision reads but garbles names and titles in the report.
pub fn code_page_of(probe: Result<ToolOutput, RunError>) -> (Option<u16>, Option<String>) {
    const FALLBACK: &str = "tool output is read as ASCII, other characters marked";
    match probe {
        Ok(out) if out.success => {
            match text::oem_code_page(&text::decode_console(&out.stdout, None)) {
                Some(cp) if text::decodes_code_page(cp) => (Some(cp), None),
                Some(cp) => (
                    None,
                    Some(format!(
                        "console code page {cp} (Nls\\CodePage\\OEMCP) is not one recast decodes: {FALLBACK}"
                    )),
                ),
                None => (
                    None,
                    Some(format!(
                        "reg.exe printed no readable OEMCP under Nls\\CodePage: {FALLBACK}"
                    )),
                ),
            }
        }
        Ok(_) => (
            None,
            Some(format!(
                "reg.exe found no OEMCP value under Nls\\CodePage: {FALLBACK}"
            )),
        ),
        Err(e) => (None, Some(format!("console code page: {e}; {FALLBACK}"))),
    }
}

/// Collects one report. Everything but the build is best effort: a probe that fails leaves its
/// part empty and says why in `collectionErrors`, so one broken tool never silences an
/// endpoint.
pub fn collect(
    runner: &dyn CommandRunner,
    who: &Identity,
    sequence: u64,
    now: Timestamp,
) -> Result<AgentReport, CollectError> {
    let mut errors: Vec<String> = Vec::new();
    // reg.exe and fsutil.exe write in the console's OEM code page; reg's answer to this one
    // question is ASCII in every language.
    let (code_page, problem) = code_page_of(runner.run(Probe::OemCodePage));
    errors.extend(problem);
    let text = |probe: Probe| -> Result<Option<String>, String> {
        let out = runner.run(probe).map_err(|e| e.to_string())?;
        if !out.success {
            return Ok(None);
        }
        Ok(Some(text::decode_console(&out.stdout, code_page)))
    };
    let required =
        |probe: Probe, name: &str, parse: fn(&str, &str) -> Result<u32, tools::ToolOutputError>| {
            match text(probe) {
                Ok(Some(t)) => parse(&t, name).map_err(|e| CollectError::Build(e.to_string())),
                Ok(None) => Err(CollectError::Build(format!(
                    "reg.exe found no {name} value under {CURRENT_VERSION}"
                ))),
                Err(e) => Err(CollectError::Build(e)),
            }
        };
    let os = OsInfo {
        current_build: required(Probe::CurrentBuild, "CurrentBuild", tools::reg_sz_number)?,
        ubr: required(Probe::Ubr, "UBR", tools::reg_dword)?,
    };

    let mut raw_events = |probe: Probe| -> Vec<events::RawEvent> {
        let result = runner
            .run(probe)
            .map_err(|e| e.to_string())
            .and_then(|out| {
                if !out.success {
                    return Err(format!(
                        "wevtutil failed for {} (is the event log service running?)",
                        probe.replay_file()
                    ));
                }
                events::parse_events(&out.stdout)
                    .map_err(|e| format!("{}: {e}", probe.replay_file()))
            });
        match result {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
        }
    };
    let update_raw = raw_events(Probe::UpdateEvents);
    let servicing_raw = raw_events(Probe::ServicingEvents);
    let crash_raw = raw_events(Probe::CrashEvents);
    let boot_raw = raw_events(Probe::BootEvent);

    let mut update_events = Vec::new();
    let mut servicing_events = Vec::new();
    let mut crashes = Vec::new();
    for e in &update_raw {
        match events::to_update_event(e) {
            Some(Ok(u)) => update_events.push(u),
            Some(Err(err)) => errors.push(err.to_string()),
            None => {}
        }
    }
    for e in &servicing_raw {
        match events::to_servicing_event(e) {
            Some(Ok(s)) => servicing_events.push(s),
            Some(Err(err)) => errors.push(err.to_string()),
            None => {}
        }
    }
    for e in &crash_raw {
        match events::to_crash_event(e) {
            Some(Ok(c)) => crashes.push(c),
            Some(Err(err)) => errors.push(err.to_string()),
            None => {}
        }
    }
    // wevtutil was asked for newest first; keep the newest within the report's bound.
    update_events.truncate(MAX_EVENTS);
    servicing_events.truncate(MAX_EVENTS);
    crashes.truncate(MAX_EVENTS);
    let boot_time = boot_raw.iter().find_map(events::to_boot_time);
    let uptime_seconds = boot_time
        .as_deref()
        .and_then(recast_crds::report::parse_timestamp)
        .map(|boot| now.duration_since(boot).as_secs().max(0) as u64);

    let mut present = |probe: Probe| -> bool {
        match runner.run(probe) {
            Ok(out) => out.success,
            Err(e) => {
                errors.push(e.to_string());
                false
            }
        }
    };
    let reboot_pending = present(Probe::RebootPending);
    let packages_pending = present(Probe::PackagesPending);
    let pending_xml = present(Probe::PendingXml);
    let sessions_pending = match text(Probe::SessionsPending) {
        Ok(Some(t)) => match tools::reg_dword(&t, "Exclusive") {
            Ok(v) => v != 0,
            Err(e) => {
                errors.push(e.to_string());
                false
            }
        },
        Ok(None) => false,
        Err(e) => {
            errors.push(e);
            false
        }
    };
    let system_disk = match text(Probe::DiskFree) {
        Ok(Some(t)) => match tools::parse_diskfree(&t) {
            Ok((free, total)) => Some(DiskInfo {
                total_bytes: total,
                free_bytes: free,
            }),
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        },
        Ok(None) => {
            errors.push("fsutil volume diskfree C: failed".to_string());
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };

    // Missing (reg.exe exits 1): the report says nothing, and recast treats the machine as set
    // up, as it did before agents read it.
    let setup_state = match text(Probe::SetupState) {
        Ok(Some(t)) => match tools::reg_sz(&t, "ImageState") {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            errors.push(e);
            None
        }
    };

    errors.truncate(MAX_EVENTS);
    let collection_errors = errors
        .into_iter()
        .map(|e| {
            let mut e: String = e.chars().filter(|c| !c.is_control()).collect();
            if e.len() > MAX_TEXT {
                let mut end = MAX_TEXT;
                while !e.is_char_boundary(end) {
                    end -= 1;
                }
                e.truncate(end);
            }
            e
        })
        .collect();

    Ok(AgentReport {
        version: REPORT_VERSION,
        endpoint: who.endpoint.clone(),
        sequence,
        agent_version: who.agent_version.clone(),
        attempt_id: who.attempt_id.clone(),
        collected_at: now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        interval_seconds: who.interval_seconds,
        os,
        update_events,
        servicing_events,
        pending: PendingServicing {
            reboot_pending,
            packages_pending,
            sessions_pending,
            pending_xml,
        },
        crashes,
        boot_time,
        uptime_seconds,
        system_disk,
        collection_errors,
        update_hold: None,
        network_restart: None,
        setup_state,
    })
}

/// Checks that a replay folder holds at least the files the build needs.
pub fn check_replay_dir(dir: &Path) -> Result<(), String> {
    for probe in [Probe::CurrentBuild, Probe::Ubr] {
        let p = dir.join(probe.replay_file());
        if !p.is_file() {
            return Err(format!(
                "{} is missing: a replay folder needs at least {} and {} (see agent/README.md)",
                p.display(),
                Probe::CurrentBuild.replay_file(),
                Probe::Ubr.replay_file()
            ));
        }
    }
    Ok(())
}
