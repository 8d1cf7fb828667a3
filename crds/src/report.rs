//! The agent → gateway report: what `recast-agent` sends to `POST /v1/reports`.
//!
//! Shared by the agent (which builds it) and the operator's gateway (which decodes it), so both
//! sides agree on one schema. Decoding is strict: unknown fields are refused, and
//! [`AgentReport::validate`] bounds every string and list, so a hostile or broken agent cannot
//! make the gateway allocate without limit or store nonsense. Use [`AgentReport::from_json`],
//! which does both and names the offending field.

use serde::{Deserialize, Serialize};

/// Report format version; a gateway refuses a version it does not know.
pub const REPORT_VERSION: u32 = 1;
/// The largest body a gateway should read before decoding (bytes).
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// At most this many entries in each event list.
pub const MAX_EVENTS: usize = 256;
/// At most this many bugcheck parameters (Windows has four).
pub const MAX_BUGCHECK_PARAMS: usize = 4;
/// Free-text fields (update titles, package identities) are cut by the agent and refused by
/// the gateway beyond this many bytes.
pub const MAX_TEXT: usize = 512;
/// Identifiers (endpoint name, attempt id, version, error codes, GUIDs).
pub const MAX_ID: usize = 253;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentReport {
    /// Always [`REPORT_VERSION`] for this schema.
    pub version: u32,
    /// The Endpoint object's name; must match the endpoint the bearer token was issued for.
    pub endpoint: String,
    /// Strictly increasing per endpoint (the agent persists it); the gateway refuses a sequence
    /// at or below the last one it accepted, so a captured report cannot be replayed.
    pub sequence: u64,
    pub agent_version: String,
    /// Set when the agent was installed by a recast reimage: that attempt's id. The first report
    /// carrying it (with the expected build) is what ends the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    /// When the agent collected this report (RFC 3339, UTC).
    pub collected_at: String,
    /// The agent's report interval, so the gateway knows when a report is late.
    pub interval_seconds: u32,
    pub os: OsInfo,
    /// Windows Update client results (System log, Microsoft-Windows-WindowsUpdateClient).
    #[serde(default)]
    pub update_events: Vec<UpdateEvent>,
    /// Component Based Servicing package changes (Setup log, Microsoft-Windows-Servicing).
    #[serde(default)]
    pub servicing_events: Vec<ServicingEvent>,
    #[serde(default)]
    pub pending: PendingServicing,
    /// Bugchecks and unexpected shutdowns.
    #[serde(default)]
    pub crashes: Vec<CrashEvent>,
    /// Last boot (RFC 3339, UTC), from the Kernel-General 12 event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_disk: Option<DiskInfo>,
    /// Problems the agent hit while collecting (a tool missing, an unreadable output), so an
    /// operator sees a partial report as partial.
    #[serde(default)]
    pub collection_errors: Vec<String>,
    /// The Windows Update hold as the agent read it back from the registry. Absent from agents
    /// that predate holds (and the gateway accepts reports without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_hold: Option<EffectiveUpdateHold>,
    /// What the agent did with the last restart-into-the-network order it was given (see
    /// [`NetworkRestartOrder`]); carried in every report until another order replaces it.
    /// Absent from agents that predate the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_restart: Option<NetworkRestartOutcome>,
    /// Windows Setup's `ImageState` (`HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State`):
    /// [`SETUP_COMPLETE`] once OOBE has finished. The agent's service runs while OOBE still
    /// waits, so an attempt does not end on a report that says otherwise. Absent from agents
    /// that predate it (and when reg.exe could not read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_state: Option<String>,
}

/// The `ImageState` of a Windows whose Setup (OOBE included) has finished.
pub const SETUP_COMPLETE: &str = "IMAGE_STATE_COMPLETE";

/// Whether a report's Setup state lets an attempt end: finished, or not reported (an agent
/// that predates the field, or a registry that would not say; the attempt then ends as before).
pub fn setup_finished(state: Option<&str>) -> bool {
    state.is_none_or(|s| s.eq_ignore_ascii_case(SETUP_COMPLETE))
}

/// Why the agent could not restart its machine into the network; recast then falls back to
/// the next way (a person, as without a BMC).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum NetworkRestartRefusal {
    /// `bcdedit /enum firmware` lists no firmware boot manager: a BIOS (legacy) machine,
    /// where Windows cannot choose the next boot device.
    NotUefi,
    /// The firmware lists no network (PXE / IPv4) boot entry: network boot is disabled in the
    /// firmware setup.
    NoNetworkEntry,
    /// bcdedit or shutdown refused because the agent is not elevated (access denied).
    NotElevated,
    /// bcdedit failed or printed what the agent cannot read.
    BcdeditFailed,
    /// shutdown.exe did not schedule the restart (the one-time boot entry stays set).
    ShutdownFailed,
}

/// The result of one restart order. Serialised as one word (`Scheduled`, or the refusal's
/// name), so the status schema stays a plain string enum.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(from = "RestartResultWord", into = "RestartResultWord")]
#[schemars(with = "RestartResultWord")]
pub enum NetworkRestartResult {
    /// The one-time network boot is set and the restart scheduled.
    Scheduled,
    Refused(NetworkRestartRefusal),
}

#[derive(Serialize, Deserialize, Clone, Copy, schemars::JsonSchema)]
enum RestartResultWord {
    Scheduled,
    NotUefi,
    NoNetworkEntry,
    NotElevated,
    BcdeditFailed,
    ShutdownFailed,
}

impl From<RestartResultWord> for NetworkRestartResult {
    fn from(w: RestartResultWord) -> Self {
        use NetworkRestartRefusal as R;
        match w {
            RestartResultWord::Scheduled => NetworkRestartResult::Scheduled,
            RestartResultWord::NotUefi => NetworkRestartResult::Refused(R::NotUefi),
            RestartResultWord::NoNetworkEntry => NetworkRestartResult::Refused(R::NoNetworkEntry),
            RestartResultWord::NotElevated => NetworkRestartResult::Refused(R::NotElevated),
            RestartResultWord::BcdeditFailed => NetworkRestartResult::Refused(R::BcdeditFailed),
            RestartResultWord::ShutdownFailed => NetworkRestartResult::Refused(R::ShutdownFailed),
        }
    }
}

impl From<NetworkRestartResult> for RestartResultWord {
    fn from(r: NetworkRestartResult) -> Self {
        use NetworkRestartRefusal as R;
        match r {
            NetworkRestartResult::Scheduled => RestartResultWord::Scheduled,
            NetworkRestartResult::Refused(R::NotUefi) => RestartResultWord::NotUefi,
            NetworkRestartResult::Refused(R::NoNetworkEntry) => RestartResultWord::NoNetworkEntry,
            NetworkRestartResult::Refused(R::NotElevated) => RestartResultWord::NotElevated,
            NetworkRestartResult::Refused(R::BcdeditFailed) => RestartResultWord::BcdeditFailed,
            NetworkRestartResult::Refused(R::ShutdownFailed) => RestartResultWord::ShutdownFailed,
        }
    }
}

/// What the agent did with a [`NetworkRestartOrder`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkRestartOutcome {
    pub attempt_id: String,
    pub try_number: u32,
    pub result: NetworkRestartResult,
    /// The firmware entry chosen (its description and `{id}`), or what the tool said when
    /// it refused; at most [`MAX_TEXT`] bytes.
    pub detail: String,
    /// When the agent acted (RFC 3339, UTC).
    pub at: String,
}

/// The gateway's order to restart into the network once, for one try of an attempt whose
/// machine has no BMC while its Windows still runs. The agent acts on an order at most once
/// (it remembers the attempt and try), so a second reply with the same order schedules no
/// second restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRestartOrder {
    pub attempt_id: String,
    pub try_number: u32,
    /// `shutdown /r /t` delay, so the restart is logged and a signed-in user sees why.
    pub delay_seconds: u32,
    /// The Endpoint's MAC addresses: the agent prefers the firmware entry of one of these NICs
    /// (firmware names the MAC in the entry, "UEFI PXEv4 (MAC:525400A10001)"), since a dock's
    /// or another NIC's network boot would never reach the armed boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mac_addresses: Vec<String>,
}

/// At most this many drift entries in a report (recast sets a handful of values).
pub const MAX_DRIFT: usize = 16;

/// At most this many entries of hold evidence in a report.
pub const MAX_HOLD_EVIDENCE: usize = 8;

/// The update hold in effect on the endpoint, as the agent read it back: recast's policy
/// values, and what Windows will make of them on this machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EffectiveUpdateHold {
    /// Windows will not install quality updates: `enforcement` is `Held`. (From agents that
    /// predate `enforcement`: every value recast sets for a hold is in place.)
    pub held: bool,
    /// Values the agent had set that someone (a user, a GPO, a script) changed or removed
    /// since it last applied the hold, such as `AU\NoAutoUpdate: 0x1 -> absent`. The agent
    /// puts them back; this says it had to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// What Windows will do, judged from the edition, the other update managers on the
    /// machine and Windows Update's own effective policy. Absent from agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<HoldEnforcement>,
    /// Why Windows ignores (or may ignore) the hold here; set with `NotEnforceable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obstacles: Vec<HoldObstacle>,
    /// The registry facts behind `enforcement`, such as `EditionID=Core` or
    /// `PolicyState QualityUpdatesPaused=0x0`, for the person who has to act on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

/// What Windows will do about quality updates while recast holds them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum HoldEnforcement {
    /// Windows will not install quality updates: recast's values are in place, nothing on the
    /// machine overrides them, and Windows Update's effective policy shows the pause.
    Held,
    /// recast's values are in place and were written less than two days ago; Windows Update
    /// has not applied them to its effective policy yet.
    Pending,
    /// Windows ignores, or may at any time ignore, the hold on this machine (`obstacles`).
    NotEnforceable,
    /// recast's values are in place, but Windows Update's effective policy shows no pause:
    /// something Windows ranks higher decides.
    Overridden,
    /// recast's values are not all in place (a write that did not stick, a lapsed pause).
    NotInPlace,
    /// No hold is wanted, and recast's values are gone.
    Released,
}

impl HoldEnforcement {
    /// A hold is wanted and Windows will not (reliably) honour it.
    pub fn fails(self) -> bool {
        matches!(
            self,
            HoldEnforcement::NotEnforceable | HoldEnforcement::Overridden
        )
    }
}

/// Why Windows does not honour recast's policy values on a machine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum HoldObstacle {
    /// Windows Home: the Windows Update policies are not supported on this edition.
    HomeEdition,
    /// Updates come from the site's WSUS server (`UseWUServer`, or MDM's update service):
    /// what the server approves, with its deadlines, installs.
    WsusManaged,
    /// A Configuration Manager client installs the updates its deployments require,
    /// whatever Windows Update's own policies say.
    ConfigMgrManaged,
    /// An MDM update ring (Intune) sets update policies that contradict the hold; which
    /// source Windows applies can change with each MDM sync.
    MdmConflict,
}

/// The gateway's answer to an accepted report (HTTP 200, JSON): what recast wants of the
/// endpoint now. A gateway that predates holds answers 204 with no body; agents then leave
/// the hold as it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportReply {
    pub update_hold: DesiredUpdateHold,
    /// Set while recast wants this machine restarted into the network (an armed try, no
    /// BMC, the agent chosen as the way to restart it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_into_network: Option<NetworkRestartOrder>,
}

/// Whether the agent must hold Windows quality updates, and why (for its log).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DesiredUpdateHold {
    pub held: bool,
    /// Immutable, FailedRollback, Manual; or Managed, ManualRelease when released.
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OsInfo {
    /// CurrentBuild, such as 26100.
    pub current_build: u32,
    /// Update build revision, such as 7623.
    pub ubr: u32,
}

impl OsInfo {
    /// "26100.7623".
    pub fn build_string(&self) -> String {
        format!("{}.{}", self.current_build, self.ubr)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateOutcome {
    /// WindowsUpdateClient 43: installation started.
    Started,
    /// WindowsUpdateClient 19: installed successfully.
    Installed,
    /// WindowsUpdateClient 20: installation failed.
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateEvent {
    pub event_id: u32,
    pub outcome: UpdateOutcome,
    /// TimeCreated/@SystemTime (RFC 3339, UTC).
    pub time: String,
    /// updateTitle, such as "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based
    /// Systems (KB5074109) (26100.7623)".
    pub title: String,
    /// errorCode for a failure, such as "0x800f0922".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServicingOutcome {
    /// Servicing 1: initiating changes.
    Initiated,
    /// Servicing 2: successfully changed to the intended state.
    Succeeded,
    /// Servicing 3: failed to change to the intended state.
    Failed,
    /// Servicing 4: a reboot is necessary before the change completes.
    RebootRequired,
    /// Servicing 6: failed, and the package is now partially installed.
    FailedPartiallyInstalled,
}

impl ServicingOutcome {
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            ServicingOutcome::Failed | ServicingOutcome::FailedPartiallyInstalled
        )
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicingEvent {
    pub event_id: u32,
    pub outcome: ServicingOutcome,
    pub time: String,
    /// PackageIdentifier: "KB5074109", or a package identity such as
    /// "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10".
    pub package: String,
    /// IntendedPackageStateTextized: "Installed", "Staged", "Absent", ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Client: "WindowsUpdateAgent", "DISM Package Manager Provider", ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PendingServicing {
    /// HKLM\...\Component Based Servicing\RebootPending exists.
    #[serde(default)]
    pub reboot_pending: bool,
    /// HKLM\...\Component Based Servicing\PackagesPending exists.
    #[serde(default)]
    pub packages_pending: bool,
    /// HKLM\...\Component Based Servicing\SessionsPending has a non-zero Exclusive value.
    #[serde(default)]
    pub sessions_pending: bool,
    /// %SystemRoot%\WinSxS\pending.xml exists: CBS has operations queued for the next boot.
    #[serde(default)]
    pub pending_xml: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashSource {
    /// Microsoft-Windows-WER-SystemErrorReporting 1001 ("The computer has rebooted from a
    /// bugcheck").
    WerBugcheck,
    /// Microsoft-Windows-Kernel-Power 41 (rebooted without cleanly shutting down).
    KernelPower,
    /// EventLog 6008 (the previous shutdown was unexpected): no bugcheck code.
    UnexpectedShutdown,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrashEvent {
    pub source: CrashSource,
    pub event_id: u32,
    pub time: String,
    /// The stop code, such as 0xED (237) for UNMOUNTABLE_BOOT_VOLUME. None when the event has
    /// none (6008, or Kernel-Power 41 after a power loss, which records 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bugcheck_code: Option<u32>,
    #[serde(default)]
    pub parameters: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskInfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Why a report was refused. `field` is a JSON path such as `updateEvents[3].title`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error(
        "the report is {size} bytes, more than the {max} allowed: send fewer events (the agent keeps the newest)"
    )]
    TooLarge { size: usize, max: usize },
    #[error(
        "the report is not valid JSON for schema version {REPORT_VERSION}: at {path}: {message}"
    )]
    Decode { path: String, message: String },
    #[error("report field {field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl ReportError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ReportError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl AgentReport {
    /// Decodes and validates a report body: size first, then strict JSON, then bounds.
    pub fn from_json(body: &[u8]) -> Result<AgentReport, ReportError> {
        if body.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge {
                size: body.len(),
                max: MAX_REPORT_BYTES,
            });
        }
        // The fast path decodes plainly; only a body that fails is decoded again with path
        // tracking, to say where it went wrong.
        let report: AgentReport = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(_) => {
                let de = &mut serde_json::Deserializer::from_slice(body);
                let e = match serde_path_to_error::deserialize::<_, AgentReport>(de) {
                    Err(e) => e,
                    Ok(_) => {
                        return Err(ReportError::Decode {
                            path: ".".into(),
                            message: "the body does not decode".into(),
                        });
                    }
                };
                return Err(ReportError::Decode {
                    path: e.path().to_string(),
                    message: e.inner().to_string(),
                });
            }
        };
        report.validate()?;
        Ok(report)
    }

    /// Checks every bound and format the schema cannot express.
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.version != REPORT_VERSION {
            return Err(ReportError::invalid(
                "version",
                format!(
                    "{} is not a report version this gateway knows; it accepts {REPORT_VERSION}: upgrade the operator or install the matching agent",
                    self.version
                ),
            ));
        }
        check_endpoint_name("endpoint", &self.endpoint)?;
        if self.sequence == 0 {
            return Err(ReportError::invalid(
                "sequence",
                "must start at 1 and increase with every report",
            ));
        }
        check_id("agentVersion", &self.agent_version)?;
        if let Some(a) = &self.attempt_id {
            check_id("attemptId", a)?;
        }
        check_time("collectedAt", &self.collected_at)?;
        if self.interval_seconds == 0 {
            return Err(ReportError::invalid(
                "intervalSeconds",
                "must be at least 1",
            ));
        }
        check_len("updateEvents", self.update_events.len())?;
        for (i, e) in self.update_events.iter().enumerate() {
            let f = |name: &str| format!("updateEvents[{i}].{name}");
            check_time(&f("time"), &e.time)?;
            check_text(&f("title"), &e.title)?;
            if let Some(c) = &e.error_code {
                check_id(&f("errorCode"), c)?;
            }
            if let Some(g) = &e.update_guid {
                check_id(&f("updateGuid"), g)?;
            }
        }
        check_len("servicingEvents", self.servicing_events.len())?;
        for (i, e) in self.servicing_events.iter().enumerate() {
            let f = |name: &str| format!("servicingEvents[{i}].{name}");
            check_time(&f("time"), &e.time)?;
            check_text(&f("package"), &e.package)?;
            for (name, v) in [
                ("intendedState", &e.intended_state),
                ("errorCode", &e.error_code),
                ("client", &e.client),
            ] {
                if let Some(v) = v {
                    check_id(&f(name), v)?;
                }
            }
        }
        check_len("crashes", self.crashes.len())?;
        for (i, c) in self.crashes.iter().enumerate() {
            check_time(&format!("crashes[{i}].time"), &c.time)?;
            if c.parameters.len() > MAX_BUGCHECK_PARAMS {
                return Err(ReportError::invalid(
                    format!("crashes[{i}].parameters"),
                    format!(
                        "{} parameters; a bugcheck has at most {MAX_BUGCHECK_PARAMS}",
                        c.parameters.len()
                    ),
                ));
            }
        }
        if let Some(t) = &self.boot_time {
            check_time("bootTime", t)?;
        }
        if let Some(d) = &self.system_disk
            && d.free_bytes > d.total_bytes
        {
            return Err(ReportError::invalid(
                "systemDisk",
                format!(
                    "freeBytes {} is larger than totalBytes {}",
                    d.free_bytes, d.total_bytes
                ),
            ));
        }
        check_len("collectionErrors", self.collection_errors.len())?;
        for (i, e) in self.collection_errors.iter().enumerate() {
            check_text(&format!("collectionErrors[{i}]"), e)?;
        }
        if let Some(r) = &self.network_restart {
            check_text("networkRestart.attemptId", &r.attempt_id)?;
            check_text("networkRestart.detail", &r.detail)?;
            check_text("networkRestart.at", &r.at)?;
        }
        if let Some(h) = &self.update_hold {
            if h.drift.len() > MAX_DRIFT {
                return Err(ReportError::invalid(
                    "updateHold.drift",
                    format!(
                        "{} entries; at most {MAX_DRIFT} are accepted",
                        h.drift.len()
                    ),
                ));
            }
            for (i, d) in h.drift.iter().enumerate() {
                check_text(&format!("updateHold.drift[{i}]"), d)?;
            }
            if h.evidence.len() > MAX_HOLD_EVIDENCE {
                return Err(ReportError::invalid(
                    "updateHold.evidence",
                    format!(
                        "{} entries; at most {MAX_HOLD_EVIDENCE} are accepted",
                        h.evidence.len()
                    ),
                ));
            }
            for (i, d) in h.evidence.iter().enumerate() {
                check_text(&format!("updateHold.evidence[{i}]"), d)?;
            }
            if h.obstacles.len() > 4 {
                return Err(ReportError::invalid(
                    "updateHold.obstacles",
                    format!("{} entries; there are four kinds", h.obstacles.len()),
                ));
            }
        }
        Ok(())
    }
}

fn check_len(field: &str, n: usize) -> Result<(), ReportError> {
    if n > MAX_EVENTS {
        return Err(ReportError::invalid(
            field,
            format!("{n} entries; at most {MAX_EVENTS} are accepted (send the newest)"),
        ));
    }
    Ok(())
}

fn check_text(field: &str, s: &str) -> Result<(), ReportError> {
    if s.len() > MAX_TEXT {
        return Err(ReportError::invalid(
            field,
            format!("{} bytes; at most {MAX_TEXT} are accepted", s.len()),
        ));
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ReportError::invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_id(field: &str, s: &str) -> Result<(), ReportError> {
    if s.is_empty() {
        return Err(ReportError::invalid(field, "is empty"));
    }
    if s.len() > MAX_ID {
        return Err(ReportError::invalid(
            field,
            format!("{} bytes; at most {MAX_ID} are accepted", s.len()),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(ReportError::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Endpoint names are Kubernetes object names (RFC 1123 subdomains).
fn check_endpoint_name(field: &str, s: &str) -> Result<(), ReportError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ReportError::invalid(
            field,
            format!(
                "{:?} is not an Endpoint name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most {MAX_ID} characters",
                truncate(s, 64)
            ),
        ))
    }
}

/// RFC 3339 with an offset ("2026-01-14T08:12:44.1234567Z"), as wevtutil writes SystemTime.
fn check_time(field: &str, s: &str) -> Result<(), ReportError> {
    if s.len() > 64 || parse_timestamp(s).is_none() {
        return Err(ReportError::invalid(
            field,
            format!(
                "{:?} is not an RFC 3339 time such as 2026-01-14T08:12:44Z",
                truncate(s, 64)
            ),
        ));
    }
    Ok(())
}

/// Parses an RFC 3339 timestamp; None if it is not one.
pub fn parse_timestamp(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> AgentReport {
        AgentReport {
        setup_state: None, network_restart: None,
            version: REPORT_VERSION,
            endpoint: "kiosk-01".into(),
            sequence: 7,
            agent_version: "0.1.0".into(),
            attempt_id: None,
            collected_at: "2026-01-15T09:00:00Z".into(),
            interval_seconds: 300,
            os: OsInfo {
                current_build: 26100,
                ubr: 7462,
            },
            update_events: vec![UpdateEvent {
                event_id: 20,
                outcome: UpdateOutcome::Failed,
                time: "2026-01-14T08:12:44.1234567Z".into(),
                title: "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5074109) (26100.7623)".into(),
                error_code: Some("0x800f0922".into()),
                update_guid: Some("{c0ffee00-0000-4000-8000-000000000001}".into()),
                revision: Some(1),
            }],
            servicing_events: vec![],
            pending: PendingServicing::default(),
            crashes: vec![],
            boot_time: Some("2026-01-15T07:00:00Z".into()),
            uptime_seconds: Some(7200),
            system_disk: Some(DiskInfo {
                total_bytes: 100,
                free_bytes: 40,
            }),
            collection_errors: vec![],
            update_hold: None,
        }
    }

    fn json(r: &AgentReport) -> Vec<u8> {
        serde_json::to_vec(r).unwrap()
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(AgentReport::from_json(&json(&r)).unwrap(), r);
    }

    #[test]
    fn the_update_hold_is_optional_both_ways() {
        // An agent that predates holds sends no updateHold; a new one sends what it read back.
        let old = serde_json::to_value(sample()).unwrap();
        assert!(old.get("updateHold").is_none());
        assert_eq!(
            AgentReport::from_json(&serde_json::to_vec(&old).unwrap()).unwrap(),
            sample()
        );
        let mut r = sample();
        r.update_hold = Some(EffectiveUpdateHold {
            held: true,
            drift: vec![r"AU\NoAutoUpdate: 0x1 -> absent".into()],
            enforcement: Some(HoldEnforcement::NotEnforceable),
            obstacles: vec![HoldObstacle::HomeEdition],
            evidence: vec!["EditionID=Core".into()],
        });
        assert_eq!(AgentReport::from_json(&json(&r)).unwrap(), r);
        // The reply decodes from the JSON the gateway writes.
        let reply: ReportReply =
            serde_json::from_str(r#"{"updateHold":{"held":true,"reason":"FailedRollback"}}"#)
                .unwrap();
        assert!(reply.update_hold.held);
    }

    #[test]
    fn refuses_unknown_fields_with_their_path() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["updateEvents"][0]["extra"] = serde_json::json!(1);
        let err = AgentReport::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        match err {
            ReportError::Decode { path, message } => {
                assert_eq!(path, "updateEvents[0].extra");
                assert!(message.contains("unknown field `extra`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_malformed_json_and_oversized_bodies() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"version\":1}",
            &[0xff, 0xfe],
        ] {
            assert!(matches!(
                AgentReport::from_json(body),
                Err(ReportError::Decode { .. })
            ));
        }
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            AgentReport::from_json(&big),
            Err(ReportError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_out_of_bounds_values() {
        type Mutate = fn(&mut AgentReport);
        let cases: Vec<(&str, Mutate)> = vec![
            ("version", |r| r.version = 2),
            ("endpoint", |r| r.endpoint = "Kiosk_01".into()),
            ("endpoint", |r| r.endpoint = String::new()),
            ("endpoint", |r| r.endpoint = "-a".into()),
            ("endpoint", |r| r.endpoint = "a".repeat(254)),
            ("sequence", |r| r.sequence = 0),
            ("agentVersion", |r| r.agent_version = String::new()),
            ("attemptId", |r| r.attempt_id = Some("x\n".into())),
            ("collectedAt", |r| r.collected_at = "yesterday".into()),
            ("intervalSeconds", |r| r.interval_seconds = 0),
            ("updateHold.drift", |r| {
                r.update_hold = Some(EffectiveUpdateHold {
                    held: true,
                    drift: vec!["x".into(); MAX_DRIFT + 1],
                    ..Default::default()
                })
            }),
            ("updateHold.drift[0]", |r| {
                r.update_hold = Some(EffectiveUpdateHold {
                    held: true,
                    drift: vec!["a\nb".into()],
                    ..Default::default()
                })
            }),
            ("updateHold.evidence", |r| {
                r.update_hold = Some(EffectiveUpdateHold {
                    evidence: vec!["x".into(); MAX_HOLD_EVIDENCE + 1],
                    ..Default::default()
                })
            }),
            ("updateHold.evidence[1]", |r| {
                r.update_hold = Some(EffectiveUpdateHold {
                    evidence: vec!["ok".into(), "t".repeat(MAX_TEXT + 1)],
                    ..Default::default()
                })
            }),
            ("updateHold.obstacles", |r| {
                r.update_hold = Some(EffectiveUpdateHold {
                    obstacles: vec![HoldObstacle::HomeEdition; 5],
                    ..Default::default()
                })
            }),
            ("updateEvents[0].title", |r| {
                r.update_events[0].title = "t".repeat(MAX_TEXT + 1)
            }),
            ("updateEvents[0].time", |r| {
                r.update_events[0].time = "2026-13-01T00:00:00Z".into()
            }),
            ("updateEvents", |r| {
                let e = r.update_events[0].clone();
                r.update_events = vec![e; MAX_EVENTS + 1];
            }),
            ("crashes[0].parameters", |r| {
                r.crashes.push(CrashEvent {
                    source: CrashSource::KernelPower,
                    event_id: 41,
                    time: "2026-01-15T07:00:00Z".into(),
                    bugcheck_code: Some(0xED),
                    parameters: vec![0; 5],
                })
            }),
            ("systemDisk", |r| {
                r.system_disk = Some(DiskInfo {
                    total_bytes: 1,
                    free_bytes: 2,
                })
            }),
        ];
        for (field, mutate) in cases {
            let mut r = sample();
            mutate(&mut r);
            match r.validate() {
                Err(ReportError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
            // And through the wire decoder, which must agree.
            assert!(AgentReport::from_json(&json(&r)).is_err(), "{field}");
        }
    }
}
