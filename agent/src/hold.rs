//! The update hold on the endpoint: Windows' documented Windows Update policy values, written
//! and removed with `reg.exe` (never Win32 calls), re-asserted every interval, and read back
//! for the report. docs/update-hold.md says which values and why.
//!
//! Everything here but [`SystemExec`] is pure over an [`Exec`], so tests see the exact commands
//! and feed `reg query` output in the shape Windows prints it.
//!
//! Ownership: recast writes the marker value `RecastUpdateHold` beside the policy values it
//! sets. A release removes recast's values only while the marker says recast set them, so a
//! site's own GPO values are never deleted; with the marker present, a recast value that was
//! changed or removed is drift (a user, a GPO refresh or a script undid the hold), reported and
//! put back.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use recast_crds::report::{
    DesiredUpdateHold, EffectiveUpdateHold, HoldEnforcement, HoldObstacle, MAX_DRIFT,
    MAX_HOLD_EVIDENCE, MAX_TEXT,
};

use crate::tools::{dword_data, parse_reg_values};

pub const WU_KEY: &str = r"HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate";
pub const AU_KEY: &str = r"HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU";
/// recast's record of a hold, outside the policy keys a GPO or script rewrites: when it started
/// ([`HOLD_STARTED`]) and the site's own values it overwrote, to put them back on release
/// (named after the policy value: `AU.NoAutoUpdate`, `DeferQualityUpdates`).
pub const SAVED_KEY: &str = r"HKLM\SOFTWARE\Recast\UpdateHold\Saved";
/// In [`SAVED_KEY`]: the day (yyyy-mm-dd, UTC) the hold started. Present for as long as a hold
/// is, so the hold is recognised even when its marker was deleted.
pub const HOLD_STARTED: &str = "HoldStarted";
/// The MDM (Policy CSP) update policies in effect, as an Intune update ring writes them.
pub const MDM_UPDATE_KEY: &str = r"HKLM\SOFTWARE\Microsoft\PolicyManager\current\device\Update";
/// Windows Update's own record of the update policy it applies (merged from every source).
pub const POLICY_STATE_KEY: &str =
    r"HKLM\SOFTWARE\Microsoft\WindowsUpdate\UpdatePolicy\PolicyState";
/// The Configuration Manager client's key: present when ConfigMgr installs this machine's
/// updates.
pub const CONFIGMGR_KEY: &str = r"HKLM\SOFTWARE\Microsoft\CCM";
pub use crate::collect::CURRENT_VERSION as CURRENT_VERSION_KEY;
/// recast's ownership marker (REG_SZ, the hold's reason), in `WU_KEY`.
pub const MARKER: &str = "RecastUpdateHold";
/// The longest deferral Windows accepts for quality updates, in days.
pub const MAX_QUALITY_DEFERRAL_DAYS: u32 = 30;
/// How long a policy pause of quality updates lasts from its start date.
pub const PAUSE_DAYS: i64 = 35;
/// The pause start date is moved to today once it is this old, so the pause never lapses.
pub const PAUSE_RESTAMP_DAYS: i64 = 28;
/// How long after a hold started Windows Update's effective policy may still lag behind it (it
/// applies policy on its own refresh; with automatic updates off that may be rarer than daily)
/// before recast calls the hold overridden.
pub const SETTLE_DAYS: i64 = 3;

// The seam to reg.exe lives in `exec`, shared with the restart into the network; named here
// too so `hold::Exec` and `hold::SystemExec` keep meaning what they did.
pub use crate::exec::{Exec, ExecOutput, SystemExec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("{0}")]
    Exec(String),
    #[error(
        "reg.exe {args} failed: the agent must run as SYSTEM or an administrator to change Windows Update policy"
    )]
    Command { args: String },
    #[error(
        "the site's own {value} ({type_} {data}) could not be kept to put back after the hold, so the hold was not applied: fix or remove that value"
    )]
    Unrestorable {
        value: String,
        type_: String,
        data: String,
    },
}

/// A registry value's data as recast writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Dword(u32),
    Sz(String),
}

impl Data {
    fn reg_type(&self) -> &'static str {
        match self {
            Data::Dword(_) => "REG_DWORD",
            Data::Sz(_) => "REG_SZ",
        }
    }

    fn reg_data(&self) -> String {
        match self {
            Data::Dword(d) => d.to_string(),
            Data::Sz(s) => s.clone(),
        }
    }

    /// As `reg query` prints it.
    fn shown(&self) -> String {
        match self {
            Data::Dword(d) => format!("0x{d:x}"),
            Data::Sz(s) => s.clone(),
        }
    }
}

/// One policy value recast sets while holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub key: &'static str,
    pub name: &'static str,
    pub data: Data,
}

impl PolicyValue {
    /// `AU\NoAutoUpdate`, for messages.
    pub fn label(&self) -> String {
        if self.key == AU_KEY {
            format!(r"AU\{}", self.name)
        } else {
            self.name.to_string()
        }
    }

    /// The name the site's own value is kept under in [`SAVED_KEY`] during a hold.
    pub fn saved_name(&self) -> String {
        self.label().replace('\\', ".")
    }
}

/// The values of a hold (the marker last). `pause_start` is the PauseQualityUpdatesStartTime
/// to write (yyyy-mm-dd).
pub fn held_values(reason: &str, pause_start: &str) -> Vec<PolicyValue> {
    let v = |key, name, data| PolicyValue { key, name, data };
    vec![
        // Configure Automatic Updates: Disabled. The only documented value that holds with no
        // expiry: nothing is downloaded or installed automatically.
        v(AU_KEY, "NoAutoUpdate", Data::Dword(1)),
        // Quality updates deferred the documented maximum and paused (35 days from the start
        // date, re-stamped before it lapses): a second lock behind NoAutoUpdate that Windows
        // Update for Business honours even where AU settings are ignored.
        v(WU_KEY, "DeferQualityUpdates", Data::Dword(1)),
        v(
            WU_KEY,
            "DeferQualityUpdatesPeriodInDays",
            Data::Dword(MAX_QUALITY_DEFERRAL_DAYS),
        ),
        v(
            WU_KEY,
            "PauseQualityUpdatesStartTime",
            Data::Sz(pause_start.to_string()),
        ),
        // Remove access to all Windows Update features: no one at the keyboard clicks "Check
        // for updates" and installs the next LCU onto the improper state by hand.
        v(WU_KEY, "SetDisableUXWUAccess", Data::Dword(1)),
        v(WU_KEY, MARKER, Data::Sz(reason.to_string())),
    ]
}

/// How one key is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Query {
    /// `reg query KEY`: every value (and the subkeys' names).
    All,
    /// `reg query KEY /v NAME`: one value.
    Value(&'static str),
    /// `reg query KEY /ve`: whether the key exists (its default value is not read).
    Exists,
}

/// Everything one pass reads, in this order.
const READS: [(&str, Query); 7] = [
    (WU_KEY, Query::All),
    (AU_KEY, Query::All),
    (SAVED_KEY, Query::All),
    (MDM_UPDATE_KEY, Query::All),
    (POLICY_STATE_KEY, Query::All),
    (CURRENT_VERSION_KEY, Query::Value("EditionID")),
    (CONFIGMGR_KEY, Query::Exists),
];

/// The values read from the keys a pass reads, by (key, lower-case name), and which keys
/// exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    values: BTreeMap<(String, String), (String, String)>,
    present: BTreeSet<String>,
}

impl Snapshot {
    /// From the `reg query` output of each key (None: reg.exe said the key or value does not
    /// exist).
    pub fn parse(answers: &[(&str, Option<&str>)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (key, text) in answers {
            let Some(text) = text else {
                continue;
            };
            s.present.insert(key.to_string());
            for v in parse_reg_values(text) {
                // A string's trailing spaces are data (a site value is put back exactly);
                // other types' padding is not.
                let data = if v.type_ == "REG_SZ" {
                    v.data
                } else {
                    v.data.trim_end().to_string()
                };
                s.values.insert(
                    (key.to_string(), v.name.to_ascii_lowercase()),
                    (v.type_, data),
                );
            }
        }
        s
    }

    fn get(&self, key: &str, name: &str) -> Option<&(String, String)> {
        self.values
            .get(&(key.to_string(), name.to_ascii_lowercase()))
    }

    /// A REG_DWORD value's number (None when absent, of another type or unreadable).
    fn dword(&self, key: &str, name: &str) -> Option<u32> {
        let (t, d) = self.get(key, name)?;
        (t == "REG_DWORD").then(|| dword_data(d)).flatten()
    }

    fn matches(&self, v: &PolicyValue) -> bool {
        self.get(v.key, v.name)
            .is_some_and(|(t, d)| t == v.data.reg_type() && d.eq_ignore_ascii_case(&v.data.shown()))
    }

    fn shown(&self, key: &str, name: &str) -> String {
        self.get(key, name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| "absent".into())
    }

    fn has_values(&self, key: &str) -> bool {
        self.values.keys().any(|(k, _)| k == key)
    }

    /// recast's marker is present: recast set (and owns) a hold.
    pub fn marked(&self) -> bool {
        self.get(WU_KEY, MARKER).is_some()
    }

    /// The day the hold on record started.
    fn hold_started(&self) -> Option<Date> {
        let (t, d) = self.get(SAVED_KEY, HOLD_STARTED)?;
        (t == "REG_SZ").then(|| d.parse().ok()).flatten()
    }

    /// Every policy value recast holds is as the record says the site had it (its saved copy,
    /// or absent where there is none): a release that finished all but deleting the record.
    fn as_before_the_hold(&self) -> bool {
        held_values("", "")
            .iter()
            .filter(|v| v.name != MARKER)
            .all(|v| {
                let now = self.get(v.key, v.name);
                match self.get(SAVED_KEY, &v.saved_name()) {
                    Some(copy) => now == Some(copy),
                    None => now.is_none(),
                }
            })
    }

    /// recast holds this machine: its marker is there, or its record of a hold is and the
    /// values are not back to the site's (the marker alone was deleted: by a user, a script, a
    /// GPO that rewrites the key).
    pub fn owned(&self) -> bool {
        self.marked() || (self.get(SAVED_KEY, HOLD_STARTED).is_some() && !self.as_before_the_hold())
    }

    fn pause_start(&self) -> Option<Date> {
        let (t, d) = self.get(WU_KEY, "PauseQualityUpdatesStartTime")?;
        (t == "REG_SZ").then(|| d.parse().ok()).flatten()
    }
}

fn today(now: Timestamp) -> Date {
    now.to_zoned(TimeZone::UTC).date()
}

fn days_between(from: Date, to: Date) -> i64 {
    // Date::until counts in whole days by default.
    from.until(to)
        .map(|s| i64::from(s.get_days()))
        .unwrap_or(i64::MAX)
}

/// The pause start to keep: the current one while it is recent, else today.
fn pause_start_for(s: &Snapshot, now: Timestamp) -> String {
    let t = today(now);
    match s.pause_start() {
        Some(d) if (0..PAUSE_RESTAMP_DAYS).contains(&days_between(d, t)) => d.to_string(),
        _ => t.to_string(),
    }
}

/// recast's values that are not in place (empty: every value of a hold is set and the pause
/// has not lapsed).
fn missing_values(s: &Snapshot, now: Timestamp) -> Vec<String> {
    let mut missing: Vec<String> = held_values("", "")
        .iter()
        .filter(|v| v.name != MARKER && v.name != "PauseQualityUpdatesStartTime")
        .filter(|v| !s.matches(v))
        .map(|v| format!("{}={}", v.label(), s.shown(v.key, v.name)))
        .collect();
    let start_ok = s
        .pause_start()
        .is_some_and(|d| (0..PAUSE_DAYS).contains(&days_between(d, today(now))));
    if !start_ok {
        missing.push(format!(
            "PauseQualityUpdatesStartTime={} (not a pause within the last {PAUSE_DAYS} days)",
            s.shown(WU_KEY, "PauseQualityUpdatesStartTime")
        ));
    }
    missing
}

/// Whether every value of a hold is in place and the pause has not lapsed: what recast wrote,
/// not yet what Windows makes of it (see [`judge`]).
pub fn values_in_place(s: &Snapshot, now: Timestamp) -> bool {
    missing_values(s, now).is_empty()
}

/// What stops Windows from honouring recast's policy values on this machine whatever its own
/// effective policy says, with the registry facts that show it. Pure.
pub fn obstacles(s: &Snapshot) -> Vec<(HoldObstacle, String)> {
    let mut found = Vec::new();
    if let Some((_, edition)) = s.get(CURRENT_VERSION_KEY, "EditionID")
        // Core, CoreN, CoreSingleLanguage, CoreCountrySpecific: the Home editions.
        && edition.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("core"))
    {
        found.push((HoldObstacle::HomeEdition, format!("EditionID={edition}")));
    }
    let wsus = s.dword(AU_KEY, "UseWUServer") == Some(1);
    if wsus {
        found.push((
            HoldObstacle::WsusManaged,
            format!(
                r"AU\UseWUServer=0x1 (WUServer={})",
                s.shown(WU_KEY, "WUServer")
            ),
        ));
    } else if s.get(MDM_UPDATE_KEY, "UpdateServiceUrl").is_some() {
        found.push((
            HoldObstacle::WsusManaged,
            format!(
                "MDM Update/UpdateServiceUrl={}",
                s.shown(MDM_UPDATE_KEY, "UpdateServiceUrl")
            ),
        ));
    }
    // A ConfigMgr client installs updates only where its software-update point is the update
    // source (it sets UseWUServer): the key alone is also there on co-managed devices whose
    // updates Intune runs, and after an uninstall.
    if wsus && s.present.contains(CONFIGMGR_KEY) {
        found.push((
            HoldObstacle::ConfigMgrManaged,
            format!(
                "Configuration Manager client ({CONFIGMGR_KEY}) with its update point as the source"
            ),
        ));
    }
    found
}

/// MDM update policies that would let an update install despite the hold: automatic updates
/// on (5 is "turn off automatic updates"), an installation deadline, the Settings page open.
/// Counted only where Windows' effective policy does not show the pause (an Intune ring sets
/// AllowAutoUpdate everywhere; it matters only where it wins).
fn mdm_conflicts(s: &Snapshot) -> Option<String> {
    let mdm = |name: &str| format!("MDM Update/{name}={}", s.shown(MDM_UPDATE_KEY, name));
    let mut conflicts = Vec::new();
    if s.get(MDM_UPDATE_KEY, "AllowAutoUpdate").is_some()
        && s.dword(MDM_UPDATE_KEY, "AllowAutoUpdate") != Some(5)
    {
        conflicts.push(mdm("AllowAutoUpdate"));
    }
    if s.get(MDM_UPDATE_KEY, "ConfigureDeadlineForQualityUpdates")
        .is_some()
    {
        conflicts.push(mdm("ConfigureDeadlineForQualityUpdates"));
    }
    if s.dword(MDM_UPDATE_KEY, "SetDisableUXWUAccess") == Some(0) {
        conflicts.push(mdm("SetDisableUXWUAccess"));
    }
    (!conflicts.is_empty()).then(|| conflicts.join(", "))
}

/// What Windows will do with the hold, from what one pass read. Pure.
///
/// In order: recast's own values must be in place; nothing on the machine may make Windows
/// ignore them (edition, WSUS, ConfigMgr); Windows Update's effective policy (`PolicyState`)
/// showing the quality-update pause is a hold; where it does not, an MDM ring that contradicts
/// the hold is why (not enforceable), a hold younger than [`SETTLE_DAYS`] is still `Pending`,
/// and an older one is `Overridden`.
pub fn judge(
    wanted: bool,
    s: &Snapshot,
    now: Timestamp,
    drift: Vec<String>,
) -> EffectiveUpdateHold {
    let verdict = |enforcement, obstacles, evidence: Vec<String>| EffectiveUpdateHold {
        held: enforcement == HoldEnforcement::Held,
        drift: drift.clone(),
        enforcement: Some(enforcement),
        obstacles,
        evidence: evidence
            .into_iter()
            .map(|e| cut(&e))
            .take(MAX_HOLD_EVIDENCE)
            .collect(),
    };
    if !wanted {
        return verdict(HoldEnforcement::Released, vec![], vec![]);
    }
    let missing = missing_values(s, now);
    if !missing.is_empty() {
        return verdict(HoldEnforcement::NotInPlace, vec![], missing);
    }
    let found = obstacles(s);
    if !found.is_empty() {
        let (kinds, evidence) = found.into_iter().unzip();
        return verdict(HoldEnforcement::NotEnforceable, kinds, evidence);
    }
    if s.dword(POLICY_STATE_KEY, "QualityUpdatesPaused") == Some(1) {
        return verdict(HoldEnforcement::Held, vec![], vec![]);
    }
    let seen = if s.present.contains(POLICY_STATE_KEY) {
        format!(
            "PolicyState QualityUpdatesPaused={}",
            s.shown(POLICY_STATE_KEY, "QualityUpdatesPaused")
        )
    } else {
        "no PolicyState: Windows Update has not recorded an effective policy".to_string()
    };
    if let Some(conflicts) = mdm_conflicts(s) {
        return verdict(
            HoldEnforcement::NotEnforceable,
            vec![HoldObstacle::MdmConflict],
            vec![conflicts, seen],
        );
    }
    // Settling is measured from the hold's start, not from the pause start date (which the
    // agent moves every few weeks).
    let started = s.hold_started().or_else(|| s.pause_start());
    let settling = started.is_some_and(|d| days_between(d, today(now)) < SETTLE_DAYS);
    if settling {
        verdict(HoldEnforcement::Pending, vec![], vec![seen])
    } else {
        verdict(HoldEnforcement::Overridden, vec![], vec![seen])
    }
}

/// Evidence quotes registry data (a WSUS URL, say), which the report bounds in length and
/// refuses with control characters: both are made safe here, so odd site data never costs the
/// whole report.
fn cut(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.len() <= MAX_TEXT {
        return clean;
    }
    let mut end = MAX_TEXT;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_string()
}

/// The commands that bring the registry to the desired hold, and the drift found on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub commands: Vec<Vec<String>>,
    pub drift: Vec<String>,
}

fn add(key: &str, name: &str, type_: &str, data: &str) -> Vec<String> {
    ["add", key, "/v", name, "/t", type_, "/d", data, "/f"]
        .map(str::to_string)
        .to_vec()
}

fn add_value(v: &PolicyValue) -> Vec<String> {
    add(v.key, v.name, v.data.reg_type(), &v.data.reg_data())
}

/// `reg add` takes a DWORD as a number where `reg query` printed `0x…`; every other type's
/// data goes back as it was printed.
fn data_for_add(type_: &str, shown: &str) -> Option<String> {
    if type_ == "REG_DWORD" {
        let n = dword_data(shown)?;
        Some(n.to_string())
    } else {
        Some(shown.to_string())
    }
}

fn delete(key: &str, name: &str) -> Vec<String> {
    ["delete", key, "/v", name, "/f"]
        .map(str::to_string)
        .to_vec()
}

fn delete_key(key: &str) -> Vec<String> {
    ["delete", key, "/f"].map(str::to_string).to_vec()
}

/// The reason as the marker's data: a plain word (the gateway sends one), so nothing a reply
/// carries can reach reg.exe's command line as anything but letters and digits.
fn marker_text(reason: &str) -> String {
    let word: String = reason
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    if word.is_empty() { "Held".into() } else { word }
}

/// Pure: what to run for `desired` given what the registry holds now. None: no instruction
/// yet (an old gateway, no reply so far): leave the registry as it is. An error when a site
/// value recast would overwrite cannot be written back as it was (it is then left alone).
pub fn plan(
    desired: Option<&DesiredUpdateHold>,
    current: &Snapshot,
    now: Timestamp,
) -> Result<Plan, HoldError> {
    let mut p = Plan::default();
    let Some(d) = desired else {
        return Ok(p);
    };
    let owned = current.owned();
    if d.held {
        let mut want = held_values(&marker_text(&d.reason), &pause_start_for(current, now));
        if !owned {
            // A new hold first keeps the site's own values it is about to overwrite, so the
            // release can put them back, then records its start. A record left over from an
            // interrupted release (the values already back) or an interrupted start describes
            // an older state: it goes first.
            if current.has_values(SAVED_KEY) {
                p.commands.push(delete_key(SAVED_KEY));
            }
            for v in want.iter().filter(|v| v.name != MARKER) {
                if let Some((t, shown)) = current.get(v.key, v.name) {
                    let data = data_for_add(t, shown).ok_or_else(|| HoldError::Unrestorable {
                        value: v.label(),
                        type_: t.clone(),
                        data: shown.clone(),
                    })?;
                    p.commands.push(add(SAVED_KEY, &v.saved_name(), t, &data));
                }
            }
            // The start last: a record with it holds every copy.
            p.commands.push(add(
                SAVED_KEY,
                HOLD_STARTED,
                "REG_SZ",
                &today(now).to_string(),
            ));
        }
        // The marker goes first: a crash half-way leaves values recast can still claim (and
        // release) on the next pass.
        want.rotate_right(1);
        for v in &want {
            if current.matches(v) {
                continue;
            }
            // A changed reason or a re-stamped pause start is recast's own doing, not drift.
            let ours = (v.name == MARKER && current.marked())
                || (v.name == "PauseQualityUpdatesStartTime"
                    && current.get(v.key, v.name).is_some());
            if owned && !ours {
                p.drift.push(format!(
                    "{}: {} -> {}",
                    v.label(),
                    v.data.shown(),
                    current.shown(v.key, v.name)
                ));
            }
            p.commands.push(add_value(v));
        }
    } else if owned {
        // Released: put back what the site had before the hold, remove what recast added,
        // marker last, the record after it, so a crash half-way is retried.
        for v in held_values("", "") {
            let saved = current
                .get(SAVED_KEY, &v.saved_name())
                .and_then(|(t, shown)| Some((t.clone(), data_for_add(t, shown)?, shown)));
            match saved {
                Some((t, data, shown)) => {
                    let same = current
                        .get(v.key, v.name)
                        .is_some_and(|(ct, cd)| *ct == t && cd == shown);
                    if !same {
                        p.commands.push(add(v.key, v.name, &t, &data));
                    }
                }
                None if current.get(v.key, v.name).is_some() => {
                    p.commands.push(delete(v.key, v.name));
                }
                None => {}
            }
        }
        if current.has_values(SAVED_KEY) {
            p.commands.push(delete_key(SAVED_KEY));
        }
    } else if current.has_values(SAVED_KEY) {
        // A release interrupted after the marker went: only the record is left.
        p.commands.push(delete_key(SAVED_KEY));
    }
    p.drift.truncate(MAX_DRIFT);
    Ok(p)
}

fn query(exec: &dyn Exec, key: &str, how: Query) -> Result<Option<String>, HoldError> {
    let mut args = vec!["query".to_string(), key.to_string()];
    match how {
        Query::All => {}
        Query::Value(name) => args.extend(["/v".to_string(), name.to_string()]),
        Query::Exists => args.push("/ve".to_string()),
    }
    let out = exec.exec("reg.exe", &args).map_err(HoldError::Exec)?;
    // reg.exe exits 1 for a key or value that does not exist; its message is localised, so
    // only the status is read.
    Ok(out.success.then_some(out.stdout))
}

/// Reads every key a pass looks at.
pub fn read(exec: &dyn Exec) -> Result<Snapshot, HoldError> {
    let mut answers = Vec::with_capacity(READS.len());
    for (key, how) in READS {
        answers.push((key, query(exec, key, how)?));
    }
    let borrowed: Vec<(&str, Option<&str>)> =
        answers.iter().map(|(k, t)| (*k, t.as_deref())).collect();
    Ok(Snapshot::parse(&borrowed))
}

/// One pass: read, apply what differs, read back, judge. Returns what the report carries.
pub fn apply(
    exec: &dyn Exec,
    desired: Option<&DesiredUpdateHold>,
    now: Timestamp,
) -> Result<EffectiveUpdateHold, HoldError> {
    let before = read(exec)?;
    let p = plan(desired, &before, now)?;
    let after = if p.commands.is_empty() {
        before
    } else {
        for args in &p.commands {
            let out = exec.exec("reg.exe", args).map_err(HoldError::Exec)?;
            if !out.success {
                return Err(HoldError::Command {
                    args: args.join(" "),
                });
            }
        }
        read(exec)?
    };
    // Without an instruction, the hold is whatever recast's record says it left.
    let wanted = desired.map_or_else(|| after.owned(), |d| d.held);
    Ok(judge(wanted, &after, now, p.drift))
}

/// The `updateMode` of the agent.json the reimage flow wrote.
pub fn update_mode_in_agent_config(json: &str) -> Result<Option<String>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match v.get("updateMode") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(m)) if m == "managed" || m == "immutable" => {
            Ok(Some(m.clone()))
        }
        Some(other) => Err(format!(
            "updateMode is {other}, expected \"managed\" or \"immutable\""
        )),
    }
}

/// The hold an endpoint starts with before its first reply: an immutable endpoint is held from
/// its first boot (the reimage flow writes the mode into agent.json).
pub fn initial(update_mode: Option<&str>) -> Option<DesiredUpdateHold> {
    (update_mode == Some("immutable")).then(|| DesiredUpdateHold {
        held: true,
        reason: "Immutable".into(),
    })
}

/// An in-memory registry that answers `reg.exe query|add|delete` the way Windows does, for
/// tests and `recast-agent simulate`; and, like Windows Update, records the policy it applies in
/// `PolicyState` whenever a policy value changes (unless told to lag behind).
pub mod fake {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::{CURRENT_VERSION_KEY, Exec, ExecOutput, MDM_UPDATE_KEY, POLICY_STATE_KEY, WU_KEY};

    #[derive(Default)]
    pub struct FakeRegistry {
        /// (key, name) → (type, data as reg query prints it).
        pub values: RefCell<BTreeMap<(String, String), (String, String)>>,
        /// Every command run, as "reg.exe ARGS".
        pub log: RefCell<Vec<String>>,
        /// Windows Update has not refreshed its policy since the last change: `PolicyState`
        /// keeps what it said before.
        pub policy_state_lags: Cell<bool>,
    }

    impl FakeRegistry {
        pub fn set(&self, key: &str, name: &str, type_: &str, data: &str) {
            self.values.borrow_mut().insert(
                (key.to_string(), name.to_string()),
                (type_.to_string(), data.to_string()),
            );
        }

        pub fn remove(&self, key: &str, name: &str) {
            self.values
                .borrow_mut()
                .retain(|(k, n), _| !(k == key && n.eq_ignore_ascii_case(name)));
        }

        pub fn take_log(&self) -> Vec<String> {
            std::mem::take(&mut self.log.borrow_mut())
        }

        fn long(key: &str) -> String {
            key.replacen("HKLM", "HKEY_LOCAL_MACHINE", 1)
        }

        fn value(&self, key: &str, name: &str) -> Option<(String, String)> {
            self.values
                .borrow()
                .iter()
                .find(|((k, n), _)| k == key && n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }

        /// What Windows Update writes to `PolicyState` after a policy refresh: the quality
        /// pause and deferral it applies. Home editions apply none of the policies.
        pub fn refresh_policy_state(&self) {
            let home = self
                .value(CURRENT_VERSION_KEY, "EditionID")
                .is_some_and(|(_, e)| e.to_ascii_lowercase().starts_with("core"));
            let policy = |name: &str| {
                if home {
                    return None;
                }
                self.value(WU_KEY, name)
                    .or_else(|| self.value(MDM_UPDATE_KEY, name))
            };
            let flag = |on: bool| if on { "0x1" } else { "0x0" };
            let paused = policy("PauseQualityUpdatesStartTime").is_some_and(|(_, d)| !d.is_empty());
            let deferred = policy("DeferQualityUpdates").is_some_and(|(_, d)| d == "0x1");
            let days = policy("DeferQualityUpdatesPeriodInDays")
                .filter(|_| deferred)
                .map_or("0x0".to_string(), |(_, d)| d);
            self.set(POLICY_STATE_KEY, "BranchReadinessLevel", "REG_SZ", "CB");
            self.set(
                POLICY_STATE_KEY,
                "DeferQualityUpdates",
                "REG_DWORD",
                flag(deferred),
            );
            self.set(
                POLICY_STATE_KEY,
                "IsDeferralIsActive",
                "REG_DWORD",
                flag(deferred || paused),
            );
            self.set(
                POLICY_STATE_KEY,
                "QualityUpdatesDeferralInDays",
                "REG_DWORD",
                &days,
            );
            self.set(
                POLICY_STATE_KEY,
                "QualityUpdatesPaused",
                "REG_DWORD",
                flag(paused),
            );
        }

        fn changed(&self, key: &str) {
            let policy = key.starts_with(WU_KEY) || key.starts_with(MDM_UPDATE_KEY);
            if policy && !self.policy_state_lags.get() {
                self.refresh_policy_state();
            }
        }
    }

    impl Exec for FakeRegistry {
        fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String> {
            self.log
                .borrow_mut()
                .push(format!("{program} {}", args.join(" ")));
            let fail = ExecOutput {
                success: false,
                stdout: String::new(),
            };
            let ok = |stdout: String| ExecOutput {
                success: true,
                stdout,
            };
            let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
            match arg(0) {
                "query" => {
                    let key = arg(1);
                    let values = self.values.borrow();
                    let mine: Vec<_> = values.iter().filter(|((k, _), _)| k == key).collect();
                    let prefix = format!("{key}\\");
                    let mut subkeys: Vec<&str> = values
                        .keys()
                        .filter_map(|(k, _)| k.strip_prefix(&prefix))
                        .map(|rest| rest.split('\\').next().unwrap_or(rest))
                        .collect();
                    subkeys.dedup();
                    if mine.is_empty() && subkeys.is_empty() {
                        return Ok(fail);
                    }
                    let mut out = format!("\r\n{}\r\n", Self::long(key));
                    match (arg(2), arg(3)) {
                        ("/v", name) => {
                            let Some(((_, n), (t, d))) =
                                mine.iter().find(|((_, n), _)| n.eq_ignore_ascii_case(name))
                            else {
                                return Ok(fail);
                            };
                            out.push_str(&format!("    {n}    {t}    {d}\r\n\r\n"));
                            return Ok(ok(out));
                        }
                        ("/ve", _) => {
                            out.push_str("    (Default)    REG_SZ    (value not set)\r\n\r\n");
                            return Ok(ok(out));
                        }
                        _ => {}
                    }
                    for ((_, name), (t, d)) in &mine {
                        out.push_str(&format!("    {name}    {t}    {d}\r\n"));
                    }
                    out.push_str("\r\n");
                    for s in subkeys {
                        out.push_str(&format!("{}\\{s}\r\n", Self::long(key)));
                    }
                    Ok(ok(out))
                }
                "add" => {
                    let (key, name, t, d) = (arg(1), arg(3), arg(5), arg(7));
                    let shown = if t == "REG_DWORD" {
                        match d.parse::<u32>() {
                            Ok(n) => format!("0x{n:x}"),
                            Err(_) => return Ok(fail),
                        }
                    } else {
                        d.to_string()
                    };
                    self.remove(key, name);
                    self.set(key, name, t, &shown);
                    self.changed(key);
                    Ok(ok("The operation completed successfully.\r\n\r\n".into()))
                }
                "delete" if arg(2) == "/v" => {
                    let (key, name) = (arg(1), arg(3));
                    if self.value(key, name).is_none() {
                        return Ok(fail);
                    }
                    self.remove(key, name);
                    self.changed(key);
                    Ok(ok("The operation completed successfully.\r\n\r\n".into()))
                }
                "delete" => {
                    // The whole key and its subkeys.
                    let key = arg(1);
                    let prefix = format!("{key}\\");
                    let before = self.values.borrow().len();
                    self.values
                        .borrow_mut()
                        .retain(|(k, _), _| k != key && !k.starts_with(&prefix));
                    if self.values.borrow().len() == before {
                        return Ok(fail);
                    }
                    self.changed(key);
                    Ok(ok("The operation completed successfully.\r\n\r\n".into()))
                }
                _ => Ok(fail),
            }
        }
    }
}
