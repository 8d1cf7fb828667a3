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

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use recast_crds::report::{DesiredUpdateHold, EffectiveUpdateHold, MAX_DRIFT};

use crate::tools::parse_reg_values;

pub const WU_KEY: &str = r"HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate";
pub const AU_KEY: &str = r"HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU";
/// recast's ownership marker (REG_SZ, the hold's reason), in `WU_KEY`.
pub const MARKER: &str = "RecastUpdateHold";
/// The longest deferral Windows accepts for quality updates, in days.
pub const MAX_QUALITY_DEFERRAL_DAYS: u32 = 30;
/// How long a policy pause of quality updates lasts from its start date.
pub const PAUSE_DAYS: i64 = 35;
/// The pause start date is moved to today once it is this old, so the pause never lapses.
pub const PAUSE_RESTAMP_DAYS: i64 = 28;

/// What a command run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub success: bool,
    pub stdout: String,
}

/// Runs one program with arguments. The seam between the hold logic and Windows.
pub trait Exec {
    fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String>;
}

/// Runs the real `reg.exe`.
pub struct SystemExec;

impl Exec for SystemExec {
    fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String> {
        let path = crate::collect::system_tool(std::env::var_os("SystemRoot").as_deref(), program);
        let out = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|e| {
                format!("could not start {program}: {e} (the agent runs Windows' own reg.exe)")
            })?;
        Ok(ExecOutput {
            success: out.status.success(),
            // reg.exe writes in the console's OEM code page; what the hold reads (value names,
            // types, numbers) is ASCII in every one, and the rest is marked, not fatal.
            stdout: crate::text::decode_console(&out.stdout, None),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("{0}")]
    Exec(String),
    #[error(
        "reg.exe {args} failed: the agent must run as SYSTEM or an administrator to change Windows Update policy"
    )]
    Command { args: String },
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

/// The values read from both policy keys, by (key, lower-case name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    values: BTreeMap<(String, String), (String, String)>,
}

impl Snapshot {
    /// From `reg query KEY` output for each key (None: the key does not exist).
    pub fn parse(wu: Option<&str>, au: Option<&str>) -> Snapshot {
        let mut values = BTreeMap::new();
        for (key, text) in [(WU_KEY, wu), (AU_KEY, au)] {
            for v in parse_reg_values(text.unwrap_or("")) {
                values.insert(
                    (key.to_string(), v.name.to_ascii_lowercase()),
                    (v.type_, v.data.trim_end().to_string()),
                );
            }
        }
        Snapshot { values }
    }

    fn get(&self, key: &str, name: &str) -> Option<&(String, String)> {
        self.values
            .get(&(key.to_string(), name.to_ascii_lowercase()))
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

    /// recast's marker is present: recast set (and owns) a hold.
    pub fn marked(&self) -> bool {
        self.get(WU_KEY, MARKER).is_some()
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

/// Whether every value of a hold is in place and the pause has not lapsed.
pub fn is_held(s: &Snapshot, now: Timestamp) -> bool {
    let start_ok = s
        .pause_start()
        .is_some_and(|d| (0..PAUSE_DAYS).contains(&days_between(d, today(now))));
    start_ok
        && held_values("", "")
            .iter()
            .filter(|v| v.name != MARKER && v.name != "PauseQualityUpdatesStartTime")
            .all(|v| s.matches(v))
}

/// The commands that bring the registry to the desired hold, and the drift found on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub commands: Vec<Vec<String>>,
    pub drift: Vec<String>,
}

fn add(v: &PolicyValue) -> Vec<String> {
    [
        "add",
        v.key,
        "/v",
        v.name,
        "/t",
        v.data.reg_type(),
        "/d",
        &v.data.reg_data(),
        "/f",
    ]
    .map(str::to_string)
    .to_vec()
}

fn delete(key: &str, name: &str) -> Vec<String> {
    ["delete", key, "/v", name, "/f"]
        .map(str::to_string)
        .to_vec()
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
/// yet (an old gateway, no reply so far): leave the registry as it is.
pub fn plan(desired: Option<&DesiredUpdateHold>, current: &Snapshot, now: Timestamp) -> Plan {
    let mut p = Plan::default();
    let Some(d) = desired else {
        return p;
    };
    if d.held {
        let mut want = held_values(&marker_text(&d.reason), &pause_start_for(current, now));
        // The marker goes first: a crash half-way leaves values recast can still claim (and
        // release) on the next pass.
        want.rotate_right(1);
        let reasserting = current.marked();
        for v in &want {
            if current.matches(v) {
                continue;
            }
            // A changed reason or a re-stamped pause start is recast's own doing, not drift.
            let ours = v.name == MARKER
                || (v.name == "PauseQualityUpdatesStartTime"
                    && current.get(v.key, v.name).is_some());
            if reasserting && !ours {
                p.drift.push(format!(
                    "{}: {} -> {}",
                    v.label(),
                    v.data.shown(),
                    current.shown(v.key, v.name)
                ));
            }
            p.commands.push(add(v));
        }
    } else if current.marked() {
        // Released: remove what recast set, marker last, so a crash half-way is retried.
        for v in held_values("", "") {
            if current.get(v.key, v.name).is_some() {
                p.commands.push(delete(v.key, v.name));
            }
        }
    }
    p.drift.truncate(MAX_DRIFT);
    p
}

fn query(exec: &dyn Exec, key: &str) -> Result<Option<String>, HoldError> {
    let args = vec!["query".to_string(), key.to_string()];
    let out = exec.exec("reg.exe", &args).map_err(HoldError::Exec)?;
    // reg.exe exits 1 for a key that does not exist; its message is localised, so only the
    // status is read.
    Ok(out.success.then_some(out.stdout))
}

/// Reads both policy keys.
pub fn read(exec: &dyn Exec) -> Result<Snapshot, HoldError> {
    let wu = query(exec, WU_KEY)?;
    let au = query(exec, AU_KEY)?;
    Ok(Snapshot::parse(wu.as_deref(), au.as_deref()))
}

/// One pass: read, apply what differs, read back. Returns what the report carries.
pub fn apply(
    exec: &dyn Exec,
    desired: Option<&DesiredUpdateHold>,
    now: Timestamp,
) -> Result<EffectiveUpdateHold, HoldError> {
    let before = read(exec)?;
    let p = plan(desired, &before, now);
    if p.commands.is_empty() {
        return Ok(EffectiveUpdateHold {
            held: is_held(&before, now),
            drift: p.drift,
        });
    }
    for args in &p.commands {
        let out = exec.exec("reg.exe", args).map_err(HoldError::Exec)?;
        if !out.success {
            return Err(HoldError::Command {
                args: args.join(" "),
            });
        }
    }
    let after = read(exec)?;
    Ok(EffectiveUpdateHold {
        held: is_held(&after, now),
        drift: p.drift,
    })
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
/// tests and `recast-agent simulate`.
pub mod fake {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Exec, ExecOutput};

    #[derive(Default)]
    pub struct FakeRegistry {
        /// (key, name) → (type, data as reg query prints it).
        pub values: RefCell<BTreeMap<(String, String), (String, String)>>,
        /// Every command run, as "reg.exe ARGS".
        pub log: RefCell<Vec<String>>,
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
                    Ok(ok("The operation completed successfully.\r\n\r\n".into()))
                }
                "delete" => {
                    let (key, name) = (arg(1), arg(3));
                    let had = self
                        .values
                        .borrow()
                        .keys()
                        .any(|(k, n)| k == key && n.eq_ignore_ascii_case(name));
                    if !had {
                        return Ok(fail);
                    }
                    self.remove(key, name);
                    Ok(ok("The operation completed successfully.\r\n\r\n".into()))
                }
                _ => Ok(fail),
            }
        }
    }
}
