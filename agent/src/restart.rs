//! The restart into the network, for machines without a BMC whose Windows still runs: when
//! recast arms a network reimage, the gateway's reply orders the agent to restart the machine
//! into the network once ([`NetworkRestartOrder`]). The agent then
//!
//! 1. reads the firmware's boot entries with `bcdedit /enum firmware` and picks the network
//!    (PXE over IPv4) one;
//! 2. makes it the next boot, once: `bcdedit /set {fwbootmgr} bootsequence {ID}` (UEFI's
//!    BootNext; the permanent boot order is left alone, so a machine the network boot does not
//!    reimage starts Windows again);
//! 3. schedules the restart: `shutdown /r /t N /c "recast: ..."`, so it is logged and a
//!    signed-in user sees why during the order's delay.
//!
//! What it did ([`NetworkRestartOutcome`]) goes into the agent's state before the restart is
//! scheduled, so a crash or a second reply carrying the same order never schedules a second
//! restart, and every report carries it, so recast falls back to the next way (a person)
//! at once when the agent refuses.
//!
//! Everything but the [`Exec`] implementations is pure over an [`Exec`], as in
//! [`crate::hold`]: tests see the exact commands and feed bcdedit output in the shape Windows
//! prints it.
//!
//! # Reading `bcdedit /enum firmware`
//!
//! bcdedit prints one block per object, blocks separated by blank lines: a heading ("Firmware
//! Boot Manager", "Firmware Application (101fffff)"), a dashed underline, then one
//! `name<spaces>value` line per element, a list element (`displayorder`) continuing on
//! indented lines of its own. What this module assumes, and why:
//!
//! - The headings are translated on non-English Windows, and so is the name of the
//!   `identifier` field (German `Bezeichner`, French `identificateur`, Portuguese
//!   `identificador`): neither is ever read. The identifier is found by position, the first
//!   field line of a block, and by shape, its value is `{...}` (`{fwbootmgr}`, `{bootmgr}`,
//!   `{GUID}`).
//! - The element names proper (`description`, `displayorder`, `device`, `path`) are BCD's
//!   own names, the ones `bcdedit /set` takes, and are printed the same in every language.
//!   Should a language translate `description` after all, a block without a field of that
//!   name is judged by whichever of its values names a network boot.
//! - A description is the firmware's own text (vendor-chosen, sometimes localised or not
//!   ASCII); only ASCII tokens such as `PXE`, `IPv4`, `PXEv6`, `HTTPv4` decide (see
//!   [`network_boot`]).
//! - bcdedit writes in the console's OEM code page: the [`Exec`] decodes it
//!   ([`crate::text::decode_console`]); a character the code page cannot show costs only the
//!   look of a description in the report.
//!
//! # Refusals, decided by exit status and shape rather than by words
//!
//! - `NotUefi`: the enumeration shows no `{fwbootmgr}` block, or bcdedit answered with a
//!   single line and no block at all. A BIOS (legacy) machine's store holds no firmware
//!   objects and bcdedit says so in one sentence ("There are no matching objects or the store
//!   is empty."), whatever its exit status; when it cannot open the store it prints two (what
//!   failed, then the system's reason).
//! - `NotElevated`: the enumeration failed and its words are Windows' "access denied"
//!   message. The agent has no elevation check of its own, so this is the one decision that
//!   reads words: Windows' text for ERROR_ACCESS_DENIED in the languages listed in
//!   [`ACCESS_DENIED`]. In any other language the same failure is `BcdeditFailed`, with
//!   bcdedit's words in the detail: a less precise reason, never a wrong action.
//! - `NoNetworkEntry`: UEFI, but no entry whose description names an IPv4 (or unspecified)
//!   network boot.
//! - `BcdeditFailed`: bcdedit could not be started, exited non-zero otherwise, printed more
//!   than one line without a block, or `/set` failed (then no restart is scheduled).
//! - `ShutdownFailed`: shutdown.exe exited non-zero; the one-time boot entry stays set and
//!   the detail says so.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use recast_crds::report::{
    MAX_TEXT, NetworkRestartOrder, NetworkRestartOutcome, NetworkRestartRefusal,
    NetworkRestartResult,
};

pub use crate::exec::{Exec, ExecOutput};

pub const BCDEDIT: &str = "bcdedit.exe";
pub const SHUTDOWN: &str = "shutdown.exe";
/// The firmware boot manager, as bcdedit names it without `/v`.
pub const FWBOOTMGR: &str = "{fwbootmgr}";
/// The same object by its GUID (what bcdedit prints with `/v`): recognised too, so adding the
/// flag one day does not make every machine look like BIOS.
const FWBOOTMGR_GUID: &str = "{a5a30fa2-3d06-4e9f-b5f4-a01df9d1fcba}";
/// The longest delay `shutdown /t` accepts (ten years).
const MAX_SHUTDOWN_DELAY: u32 = 315_360_000;
/// The longest comment `shutdown /c` accepts, in characters.
const MAX_SHUTDOWN_COMMENT: usize = 512;

/// Windows' text for ERROR_ACCESS_DENIED ("Access is denied."), lower case, in the languages
/// recast knows it in; bcdedit ends its "could not open the store" message with it when it
/// does not run elevated.
pub const ACCESS_DENIED: [&str; 12] = [
    "access is denied",
    "zugriff verweigert",
    "accès refusé",
    "acceso denegado",
    "accesso negato",
    "acesso negado",
    "toegang is geweigerd",
    "отказано в доступе",
    "アクセスが拒否されました",
    "拒绝访问",
    "存取被拒",
    "액세스가 거부되었습니다",
];

/// `bcdedit /enum firmware`.
pub fn enum_args() -> Vec<String> {
    vec!["/enum".into(), "firmware".into()]
}

/// `bcdedit /set {fwbootmgr} bootsequence {ID}`: boot `id` next, once.
pub fn set_args(id: &str) -> Vec<String> {
    vec![
        "/set".into(),
        FWBOOTMGR.into(),
        "bootsequence".into(),
        id.into(),
    ]
}

/// The comment the restart shows a signed-in user and logs (System log, User32 1074).
pub fn shutdown_comment(order: &NetworkRestartOrder) -> String {
    let c = format!(
        "recast: restarting into the network to reimage this machine (attempt {}, try {})",
        order.attempt_id, order.try_number
    );
    // shutdown.exe refuses a longer comment, and with it the restart.
    match c.char_indices().nth(MAX_SHUTDOWN_COMMENT) {
        Some((i, _)) => c[..i].to_string(),
        None => c,
    }
}

/// `shutdown /r /t N /c COMMENT`.
pub fn shutdown_args(order: &NetworkRestartOrder) -> Vec<String> {
    vec![
        "/r".into(),
        "/t".into(),
        order.delay_seconds.min(MAX_SHUTDOWN_DELAY).to_string(),
        "/c".into(),
        shutdown_comment(order),
    ]
}

/// One object (block) of `bcdedit /enum` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BcdObject {
    /// `{fwbootmgr}`, `{bootmgr}` or `{GUID}`, as bcdedit printed it.
    pub id: String,
    /// Every field after the identifier, in order: its name and its values (one per line for
    /// a list such as `displayorder`, none for an empty field).
    pub fields: Vec<(String, Vec<String>)>,
}

impl BcdObject {
    fn field(&self, name: &str) -> Option<&[String]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The `description` field's value.
    pub fn description(&self) -> Option<&str> {
        self.field("description")
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    fn is_boot_manager(&self) -> bool {
        self.id.eq_ignore_ascii_case(FWBOOTMGR) || self.id.eq_ignore_ascii_case(FWBOOTMGR_GUID)
    }

    /// How this entry boots from the network, and the text that says so: its description;
    /// in a block without a `description` field, any single value that names a network boot
    /// (see the module notes).
    fn network(&self) -> Option<(NetworkBoot, &str)> {
        if let Some(d) = self.description() {
            return network_boot(d).map(|k| (k, d));
        }
        self.fields
            .iter()
            .filter_map(|(_, v)| match v.as_slice() {
                [one] if !one.starts_with('{') => Some(one.as_str()),
                _ => None,
            })
            .find_map(|v| network_boot(v).map(|k| (k, v)))
    }

    /// "description {id}", for the report.
    fn label(&self) -> String {
        match self.description() {
            Some(d) => format!("{d} {}", self.id),
            None => self.id.clone(),
        }
    }
}

/// What `bcdedit /enum firmware` printed, by shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enumeration {
    /// The blocks that name an object, in the order printed.
    pub objects: Vec<BcdObject>,
    /// Non-blank lines outside any block (a message instead of an enumeration).
    pub other_lines: Vec<String>,
}

impl Enumeration {
    /// The firmware boot manager's block: present on UEFI machines only.
    pub fn boot_manager(&self) -> Option<&BcdObject> {
        self.objects.iter().find(|o| o.is_boot_manager())
    }

    /// The firmware's boot order (`{fwbootmgr}`'s `displayorder`).
    pub fn display_order(&self) -> &[String] {
        self.boot_manager()
            .and_then(|m| m.field("displayorder"))
            .unwrap_or(&[])
    }

    /// The entry to boot from the network: an explicit IPv4 network boot before one that
    /// names no protocol ("EFI Network", "Network Boot"), then in the firmware's boot order,
    /// then as listed. IPv6 and HTTP boot entries are never chosen: recast's boot service
    /// answers PXE over IPv4.
    pub fn network_entry(&self) -> Option<&BcdObject> {
        let order = self.display_order();
        self.objects
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.is_boot_manager())
            .filter_map(|(listed, o)| {
                let rank = match o.network()?.0 {
                    NetworkBoot::Ipv4 => 0,
                    NetworkBoot::Unspecified => 1,
                    NetworkBoot::Ipv6 | NetworkBoot::Http => return None,
                };
                let position = order
                    .iter()
                    .position(|id| id.eq_ignore_ascii_case(&o.id))
                    .unwrap_or(order.len() + listed);
                Some(((rank, position), o))
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, o)| o)
    }
}

impl Enumeration {
    /// The network entry to boot for a machine with these MAC addresses: the best entry that
    /// names one of them (firmware often does: "UEFI PXEv4 (MAC:525400A10001)"), else the
    /// best network entry ([`Enumeration::network_entry`]). A dock's or another NIC's entry
    /// first in the boot order would reach nothing that is armed.
    pub fn network_entry_for(&self, macs: &[String]) -> Option<&BcdObject> {
        let wanted: Vec<String> = macs
            .iter()
            .map(|m| without_separators(m))
            .filter(|m| m.len() == 12 && m.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        if !wanted.is_empty() {
            let named: Vec<&BcdObject> = self
                .objects
                .iter()
                .filter(|o| !o.is_boot_manager())
                .filter(|o| {
                    o.fields.iter().flat_map(|(_, v)| v.iter()).any(|v| {
                        let v = without_separators(v);
                        wanted.iter().any(|m| v.contains(m.as_str()))
                    })
                })
                .collect();
            let sub = Enumeration {
                objects: self
                    .objects
                    .iter()
                    .filter(|o| o.is_boot_manager() || named.iter().any(|n| std::ptr::eq(*n, *o)))
                    .cloned()
                    .collect(),
                other_lines: Vec::new(),
            };
            if let Some(id) = sub.network_entry().map(|o| o.id.clone()) {
                return self.objects.iter().find(|o| o.id == id);
            }
        }
        self.network_entry()
    }
}

/// A text without ':' and '-', upper case: a MAC however it is written ("52:54:00:a1:00:01",
/// "525400A10001", "52-54-00-A1-00-01") reads the same.
fn without_separators(text: &str) -> String {
    text.chars()
        .filter(|c| *c != ':' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// A line of dashes: the underline beneath a block's heading (bcdedit may pad it with a
/// space).
fn is_underline(line: &str) -> bool {
    let t = line.trim_end();
    !t.is_empty() && t.chars().all(|c| c == '-')
}

/// The `{...}` a block's first field line ends with (the identifier, whatever its
/// translated name, which may itself contain spaces).
fn identifier(line: &str) -> Option<&str> {
    let t = line.trim_end();
    if !t.ends_with('}') {
        return None;
    }
    let open = t.rfind('{')?;
    let before = &t[..open];
    (!before.trim().is_empty() && before.ends_with(char::is_whitespace)).then(|| &t[open..])
}

/// Reads `bcdedit /enum` output. Never fails: what is not a block is kept as other lines.
pub fn parse_enumeration(text: &str) -> Enumeration {
    let mut e = Enumeration::default();
    let mut paragraphs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            paragraphs.push(Vec::new());
        } else if let Some(p) = paragraphs.last_mut() {
            p.push(line.trim_end());
        }
    }
    for p in paragraphs.into_iter().filter(|p| !p.is_empty()) {
        // The heading, then its underline; the heading is translated and never read.
        let fields_from = match p.iter().take(2).position(|l| is_underline(l)) {
            Some(i) => i + 1,
            None => {
                e.other_lines.extend(p.iter().map(|l| l.trim().to_string()));
                continue;
            }
        };
        let lines = &p[fields_from..];
        let Some(id) = lines.first().and_then(|l| identifier(l)) else {
            // A block whose first field is not a `{...}` names no object recast can use.
            continue;
        };
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for line in &lines[1..] {
            if line.starts_with(char::is_whitespace) {
                // The next element of a list (displayorder), aligned under the first.
                if let Some((_, values)) = fields.last_mut() {
                    values.push(line.trim().to_string());
                }
                continue;
            }
            // An element name has no spaces; a value (a description) may.
            let (name, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim();
            let values = if value.is_empty() {
                Vec::new()
            } else {
                vec![value.to_string()]
            };
            fields.push((name.to_string(), values));
        }
        e.objects.push(BcdObject {
            id: id.to_string(),
            fields,
        });
    }
    e
}

/// How a firmware boot entry boots from the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkBoot {
    /// PXE over IPv4: "UEFI: PXE IPv4 Intel(R) Ethernet", "UEFI PXEv4 (MAC:525400123456)",
    /// "IPV4 Network - ...", "Onboard NIC(IPV4)", "UEFI: PXE IP4 ...".
    Ipv4,
    /// A network boot that names no protocol: "EFI Network", "Network Boot".
    Unspecified,
    /// "UEFI: PXE IPv6 ...", "UEFI PXEv6 ...", "IPV6 Network", "UEFI: PXE IP6 ...".
    Ipv6,
    /// UEFI HTTP boot: "UEFI HTTPv4 ...", "UEFI: HTTP IPv4 ...".
    Http,
}

/// Whether a firmware entry's description names a network boot, and which. Reads ASCII
/// words (any run of letters and digits, case ignored), never a sentence: `PXE`, `IPv4`,
/// `PXEv6`, `HTTPv4`, `NIC`, `Network`, and the German and French words for network, which
/// some firmware setups use in their own language.
pub fn network_boot(description: &str) -> Option<NetworkBoot> {
    let words: Vec<String> = description
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_uppercase)
        .collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    if words.iter().any(|w| w.starts_with("HTTP")) {
        return Some(NetworkBoot::Http);
    }
    if has(&["IPV6", "IP6", "PXEV6", "PXE6"]) {
        return Some(NetworkBoot::Ipv6);
    }
    if has(&["IPV4", "IP4", "PXEV4", "PXE4"]) {
        return Some(NetworkBoot::Ipv4);
    }
    if has(&[
        "PXE", "NIC", "LAN", "NETWORK", "NETZWERK", "RÉSEAU", "RESEAU",
    ]) {
        return Some(NetworkBoot::Unspecified);
    }
    None
}

/// Why the agent refuses an order, and the words for whoever reads the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: NetworkRestartRefusal,
    pub detail: String,
}

fn refusal(reason: NetworkRestartRefusal, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// A tool's output as one line: what it said, or that it said nothing.
fn words(out: &ExecOutput) -> String {
    let said: Vec<&str> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if said.is_empty() {
        "it printed nothing".into()
    } else {
        said.join(" ")
    }
}

fn says_access_denied(text: &str) -> bool {
    let t = text.to_lowercase();
    ACCESS_DENIED.iter().any(|d| t.contains(d))
}

const BIOS_ADVICE: &str = "this machine starts in BIOS (legacy) mode, where Windows cannot choose the next boot device: restart it into the network by hand, or switch its firmware to UEFI";

/// The firmware's boot entries from the run of `bcdedit /enum firmware`, or why there are none
/// to choose from (see the module notes for the decision).
pub fn read_firmware(out: &ExecOutput) -> Result<Enumeration, Refusal> {
    let e = parse_enumeration(&out.stdout);
    if !out.success && says_access_denied(&out.stdout) {
        return Err(refusal(
            NetworkRestartRefusal::NotElevated,
            format!(
                "bcdedit /enum firmware was refused: run the agent as LocalSystem (the service's account) or an administrator (bcdedit: {})",
                words(out)
            ),
        ));
    }
    if e.objects.is_empty() {
        return Err(match e.other_lines.len() {
            // bcdedit's one-sentence "nothing matched": no firmware objects in the store.
            1 => refusal(
                NetworkRestartRefusal::NotUefi,
                format!(
                    "bcdedit /enum firmware lists no firmware entries: {BIOS_ADVICE} (bcdedit: {})",
                    words(out)
                ),
            ),
            0 if out.success => refusal(
                NetworkRestartRefusal::NotUefi,
                format!("bcdedit /enum firmware lists no firmware entries: {BIOS_ADVICE}"),
            ),
            _ if !out.success => refusal(
                NetworkRestartRefusal::BcdeditFailed,
                format!(
                    "bcdedit /enum firmware failed: run it in an elevated prompt on this machine to see why (bcdedit: {})",
                    words(out)
                ),
            ),
            _ => refusal(
                NetworkRestartRefusal::BcdeditFailed,
                format!(
                    "bcdedit /enum firmware printed no boot entries recast can read: run it in an elevated prompt on this machine and report its output (bcdedit: {})",
                    words(out)
                ),
            ),
        });
    }
    if !out.success {
        return Err(refusal(
            NetworkRestartRefusal::BcdeditFailed,
            format!(
                "bcdedit /enum firmware listed entries but exited with a failure: run it in an elevated prompt on this machine to see why (bcdedit: {})",
                words(out)
            ),
        ));
    }
    if e.boot_manager().is_none() {
        return Err(refusal(
            NetworkRestartRefusal::NotUefi,
            format!(
                "bcdedit /enum firmware lists no firmware boot manager ({FWBOOTMGR}): {BIOS_ADVICE}"
            ),
        ));
    }
    Ok(e)
}

/// The network entry to boot next, or the refusal that names what the firmware does list.
pub fn choose<'a>(e: &'a Enumeration, macs: &[String]) -> Result<&'a BcdObject, Refusal> {
    e.network_entry_for(macs).ok_or_else(|| {
        let listed: Vec<String> = e
            .objects
            .iter()
            .filter(|o| !o.is_boot_manager())
            .map(|o| o.description().unwrap_or(&o.id).to_string())
            .collect();
        refusal(
            NetworkRestartRefusal::NoNetworkEntry,
            format!(
                "the firmware lists no network (PXE over IPv4) boot entry: enable network (PXE) boot over IPv4 in the firmware setup (its entries: {})",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join("; ")
                }
            ),
        )
    })
}

/// One line, no control characters, at most [`MAX_TEXT`] bytes cut on a character boundary:
/// what the report's `detail` accepts.
pub fn bounded(text: &str) -> String {
    let mut s: String = text
        .split(|c: char| c.is_control())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Whether `order` is one the agent has not acted on: another attempt, or another try of it,
/// than the outcome it recorded last.
pub fn is_new(order: &NetworkRestartOrder, last: Option<&NetworkRestartOutcome>) -> bool {
    last.is_none_or(|l| l.attempt_id != order.attempt_id || l.try_number != order.try_number)
}

/// Carries out one order: reads the firmware, sets the one-time network boot, schedules the
/// restart. `record` persists an outcome; it is called before the restart is scheduled (with
/// `Scheduled`), so nothing that happens after can schedule a second one, and again if
/// shutdown fails, or once with the refusal. When recording the intent fails, no restart is
/// scheduled (the error says why; the order is tried again with the next reply).
pub fn act(
    exec: &dyn Exec,
    order: &NetworkRestartOrder,
    now: Timestamp,
    record: &mut dyn FnMut(&NetworkRestartOutcome) -> Result<(), String>,
) -> Result<NetworkRestartOutcome, String> {
    let outcome = |result: NetworkRestartResult, detail: &str| NetworkRestartOutcome {
        attempt_id: order.attempt_id.clone(),
        try_number: order.try_number,
        result,
        detail: bounded(detail),
        at: now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    };
    let mut refuse = |r: Refusal| {
        let o = outcome(NetworkRestartResult::Refused(r.reason), &r.detail);
        record(&o)?;
        Ok(o)
    };
    let listed = match exec.exec(BCDEDIT, &enum_args()) {
        Ok(out) => read_firmware(&out),
        Err(e) => Err(refusal(
            NetworkRestartRefusal::BcdeditFailed,
            format!("{e}; the agent needs bcdedit.exe to choose the next boot device"),
        )),
    };
    let firmware = match listed {
        Ok(f) => f,
        Err(r) => return refuse(r),
    };
    let entry = match choose(&firmware, &order.mac_addresses) {
        Ok(e) => e,
        Err(r) => return refuse(r),
    };
    let set = exec.exec(BCDEDIT, &set_args(&entry.id));
    if let Some(said) = match &set {
        Ok(out) if out.success => None,
        Ok(out) => Some(format!("bcdedit: {}", words(out))),
        Err(e) => Some(e.clone()),
    } {
        return refuse(refusal(
            NetworkRestartRefusal::BcdeditFailed,
            format!(
                "bcdedit /set {FWBOOTMGR} bootsequence for {} failed, so no restart was scheduled: the firmware may not accept a one-time boot entry; restart the machine into the network by hand ({said})",
                entry.label()
            ),
        ));
    }
    // The intent first: once the restart is scheduled, nothing may schedule it again.
    let scheduled = outcome(NetworkRestartResult::Scheduled, &entry.label());
    record(&scheduled)?;
    let shut = exec.exec(SHUTDOWN, &shutdown_args(order));
    let said = match &shut {
        Ok(out) if out.success => return Ok(scheduled),
        Ok(out) => format!("shutdown: {}", words(out)),
        Err(e) => e.clone(),
    };
    let failed = outcome(
        NetworkRestartResult::Refused(NetworkRestartRefusal::ShutdownFailed),
        &format!(
            "shutdown /r did not schedule the restart; the one-time network boot {} stays set, so the machine's next restart boots from the network: restart it by hand ({said})",
            entry.label()
        ),
    );
    record(&failed)?;
    Ok(failed)
}

/// Acts on the order of a gateway's reply at most once per attempt and try, keeping the
/// outcome in the agent's state file. Returns the outcome when it acted (the agent should
/// then report at once), None when it had already acted on this order.
pub fn follow(
    exec: &dyn Exec,
    state_file: &Path,
    order: &NetworkRestartOrder,
    now: Timestamp,
) -> Result<Option<NetworkRestartOutcome>, String> {
    let last = crate::state::load(state_file)
        .map_err(|e| e.to_string())?
        .network_restart;
    if !is_new(order, last.as_ref()) {
        return Ok(None);
    }
    let mut record = |o: &NetworkRestartOutcome| -> Result<(), String> {
        // Read again: keep whatever else the state holds as it is now.
        let mut st = crate::state::load(state_file).map_err(|e| e.to_string())?;
        st.network_restart = Some(o.clone());
        crate::state::save(state_file, &st).map_err(|e| e.to_string())
    };
    act(exec, order, now, &mut record).map(Some)
}

/// The file in a replay folder every call is appended to.
pub const CALLS_LOG: &str = "calls.log";

/// `--replay DIR`: plays Windows for bcdedit and shutdown, so a test harness can stand in for
/// the machine. Every call is first appended to `DIR/calls.log` as one line (the program and
/// its arguments joined by spaces, such as `shutdown.exe /r /t 60 /c recast: ...`), then
/// answered from `DIR/NAME.txt` (exit status 0, that output) or `DIR/NAME.fail.txt` (exit
/// status 1, that output), NAME being [`replay_name`]; with neither file, the call answers
/// as [`replay_default`] says. Files are decoded like the real tools' output.
pub struct ReplayExec {
    pub dir: PathBuf,
    /// The code page the replay's tool output is in (from its `reg-oemcp.txt`).
    pub code_page: Option<u16>,
}

/// The replay file name (without `.txt` / `.fail.txt`) that answers a call.
pub fn replay_name(program: &str, args: &[String]) -> Option<&'static str> {
    let first = args.first().map(|a| a.to_ascii_lowercase());
    match (program, first.as_deref()) {
        (BCDEDIT, Some("/enum")) => Some("bcdedit-enum-firmware"),
        (BCDEDIT, Some("/set")) => Some("bcdedit-set"),
        (SHUTDOWN, _) => Some("shutdown"),
        _ => None,
    }
}

/// What a replayed call answers without a file: a BIOS machine's bcdedit (exit status 1, its
/// one-line "nothing matched"), a `/set` and a shutdown that succeed.
pub fn replay_default(name: &str) -> ExecOutput {
    match name {
        "bcdedit-enum-firmware" => ExecOutput {
            success: false,
            stdout: "There are no matching objects or the store is empty.\r\n".into(),
        },
        "bcdedit-set" => ExecOutput {
            success: true,
            stdout: "The operation completed successfully.\r\n".into(),
        },
        _ => ExecOutput {
            success: true,
            stdout: String::new(),
        },
    }
}

/// A call as one line of the calls log (and of the golden transcripts).
pub fn call_line(program: &str, args: &[String]) -> String {
    let line = format!("{program} {}", args.join(" "));
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Exec for ReplayExec {
    fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String> {
        let log = self.dir.join(CALLS_LOG);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{}\n", call_line(program, args)).as_bytes()))
            .map_err(|e| format!("replay: appending to {}: {e}", log.display()))?;
        let Some(name) = replay_name(program, args) else {
            return Ok(ExecOutput {
                success: false,
                stdout: format!("the replay folder has no answer for {program}\r\n"),
            });
        };
        for (suffix, success) in [(".txt", true), (".fail.txt", false)] {
            let path = self.dir.join(format!("{name}{suffix}"));
            match std::fs::read(&path) {
                Ok(bytes) => {
                    return Ok(ExecOutput {
                        success,
                        stdout: crate::text::decode_console(&bytes, self.code_page),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("replay: reading {}: {e}", path.display())),
            }
        }
        Ok(replay_default(name))
    }
}

/// A machine in memory that answers bcdedit and shutdown as told and logs every call, for
/// tests and `recast-agent simulate`.
pub mod fake {
    use std::cell::RefCell;

    use super::{BCDEDIT, Exec, ExecOutput, SHUTDOWN, call_line};

    /// `bcdedit /enum firmware` on a QEMU/OVMF virtual machine with one network adapter.
    pub const OVMF: &str = "\r\nFirmware Boot Manager\r\n---------------------\r\nidentifier              {fwbootmgr}\r\ndisplayorder            {bootmgr}\r\n                        {8b6f1c4e-0f3a-11f1-9a2b-806e6f6e6963}\r\ntimeout                 0\r\n\r\nWindows Boot Manager\r\n--------------------\r\nidentifier              {bootmgr}\r\ndevice                  partition=\\Device\\HarddiskVolume1\r\npath                    \\EFI\\Microsoft\\Boot\\bootmgfw.efi\r\ndescription             Windows Boot Manager\r\nlocale                  en-US\r\n\r\nFirmware Application (101fffff)\r\n-------------------------------\r\nidentifier              {8b6f1c4e-0f3a-11f1-9a2b-806e6f6e6963}\r\ndescription             UEFI PXEv4 (MAC:525400780001)\r\n";

    pub struct FakeWindows {
        /// What `bcdedit /enum firmware` answers.
        pub enumeration: ExecOutput,
        /// What `bcdedit /set` answers.
        pub set: ExecOutput,
        /// What `shutdown` answers.
        pub shutdown: ExecOutput,
        /// Every call, as [`call_line`] writes it.
        pub log: RefCell<Vec<String>>,
    }

    fn ok(text: &str) -> ExecOutput {
        ExecOutput {
            success: true,
            stdout: text.into(),
        }
    }

    impl FakeWindows {
        /// A machine whose bcdedit prints `enumeration` and whose /set and shutdown succeed.
        pub fn new(enumeration: ExecOutput) -> Self {
            FakeWindows {
                enumeration,
                set: ok("The operation completed successfully.\r\n"),
                shutdown: ok(""),
                log: RefCell::new(Vec::new()),
            }
        }

        /// A UEFI machine whose bcdedit prints `text`.
        pub fn uefi(text: &str) -> Self {
            Self::new(ok(text))
        }

        pub fn take_log(&self) -> Vec<String> {
            std::mem::take(&mut self.log.borrow_mut())
        }
    }

    impl Exec for FakeWindows {
        fn exec(&self, program: &str, args: &[String]) -> Result<ExecOutput, String> {
            self.log.borrow_mut().push(call_line(program, args));
            let first = args.first().map(String::as_str).unwrap_or("");
            Ok(match (program, first) {
                (BCDEDIT, "/enum") => self.enumeration.clone(),
                (BCDEDIT, "/set") => self.set.clone(),
                (SHUTDOWN, _) => self.shutdown.clone(),
                _ => ExecOutput {
                    success: false,
                    stdout: String::new(),
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_words() {
        use NetworkBoot::*;
        for (d, want) in [
            (
                "UEFI: PXE IPv4 Intel(R) Ethernet Connection I219-LM",
                Some(Ipv4),
            ),
            ("UEFI PXEv4 (MAC:52540012AB01)", Some(Ipv4)),
            (
                "IPV4 Network - Intel(R) Ethernet Connection (7) I219-V",
                Some(Ipv4),
            ),
            ("Onboard NIC(IPV4)", Some(Ipv4)),
            (
                "UEFI: PXE IP4 Intel(R) I210 Gigabit  Network Connection",
                Some(Ipv4),
            ),
            ("EFI Network", Some(Unspecified)),
            ("Network Boot", Some(Unspecified)),
            ("Netzwerk (Realtek)", Some(Unspecified)),
            (
                "UEFI: PXE IPv6 Intel(R) Ethernet Connection I219-LM",
                Some(Ipv6),
            ),
            ("UEFI PXEv6 (MAC:52540012AB01)", Some(Ipv6)),
            ("IPV6 Network - Intel(R) Ethernet", Some(Ipv6)),
            ("Onboard NIC(IPV6)", Some(Ipv6)),
            ("UEFI HTTPv4 (MAC:52540012AB01)", Some(Http)),
            ("UEFI: HTTP IPv4 Intel(R) Ethernet", Some(Http)),
            ("Windows Boot Manager", None),
            ("UEFI: SanDisk Cruzer Blade 1.00, Partition 1", None),
            ("UEFI QEMU HARDDISK QM00001", None),
            // A MAC's hex digits never read as a word recast looks for.
            ("UEFI: Samsung SSD 980 PRO 1TB (MAC:00A0C9AB1234)", None),
        ] {
            assert_eq!(network_boot(d), want, "{d}");
        }
    }

    #[test]
    fn the_identifier_is_found_by_shape() {
        assert_eq!(
            identifier("identifier              {fwbootmgr}"),
            Some("{fwbootmgr}")
        );
        assert_eq!(
            identifier("Bezeichner               {8b6f1c4e-0f3a-11f1-9a2b-806e6f6e6963} "),
            Some("{8b6f1c4e-0f3a-11f1-9a2b-806e6f6e6963}")
        );
        assert_eq!(identifier("{bootmgr}"), None);
        assert_eq!(identifier("description             Windows"), None);
    }

    #[test]
    fn bounded_is_one_line_within_the_limit() {
        assert_eq!(bounded("a\r\nb\tc\r\n"), "a b c");
        let long = "ü".repeat(MAX_TEXT);
        let b = bounded(&long);
        assert!(
            b.len() <= MAX_TEXT && b.len() >= MAX_TEXT - 1,
            "{}",
            b.len()
        );
        assert!(b.chars().all(|c| c == 'ü'));
    }

    #[test]
    fn the_comment_fits_shutdown() {
        let order = NetworkRestartOrder {
            mac_addresses: vec![],
            attempt_id: "a".repeat(600),
            try_number: 2,
            delay_seconds: u32::MAX,
        };
        let args = shutdown_args(&order);
        assert_eq!(args[2], "315360000");
        assert_eq!(args[4].chars().count(), MAX_SHUTDOWN_COMMENT);
    }

    #[test]
    fn orders_are_new_per_attempt_and_try() {
        let order = NetworkRestartOrder {
            mac_addresses: vec![],
            attempt_id: "a-1".into(),
            try_number: 1,
            delay_seconds: 30,
        };
        let done = NetworkRestartOutcome {
            attempt_id: "a-1".into(),
            try_number: 1,
            result: NetworkRestartResult::Scheduled,
            detail: String::new(),
            at: "2026-01-15T09:00:00Z".into(),
        };
        assert!(is_new(&order, None));
        assert!(!is_new(&order, Some(&done)));
        let next_try = NetworkRestartOrder {
            try_number: 2,
            ..order.clone()
        };
        assert!(is_new(&next_try, Some(&done)));
        let other = NetworkRestartOrder {
            attempt_id: "a-2".into(),
            ..order
        };
        assert!(is_new(&other, Some(&done)));
    }
}
