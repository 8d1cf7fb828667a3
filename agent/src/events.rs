//! Windows event XML, exactly as `wevtutil qe LOG /q:"..." /f:xml` prints it, turned into the
//! report's typed events.
//!
//! The shape: one `<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'>` per
//! record, either as a sequence of top-level elements (no `/e:` option) or wrapped in a root
//! element (`/e:Events`). Each has a `<System>` block (Provider Name/Guid, EventID with optional
//! Qualifiers, TimeCreated/@SystemTime, ...) and a payload: `<EventData>` with `<Data Name=..>`
//! (or unnamed `<Data>` for classic providers such as EventLog 6008), or `<UserData>` holding one
//! provider-specific element (Servicing's `CbsPackageChangeState`). `<RenderingInfo>`
//! (`/f:RenderedXml`) carries the message in the machine's language and is ignored on purpose:
//! only language-neutral fields decide anything.

use recast_crds::report::{
    CrashEvent, CrashSource, ServicingEvent, ServicingOutcome, UpdateEvent, UpdateOutcome,
};

pub const EVENT_NS: &str = "http://schemas.microsoft.com/win/2004/08/events/event";

/// The largest wevtutil output the agent parses; the queries ask for a bounded count, so more
/// than this means something is wrong with the tool, not a busy machine.
pub const MAX_XML_BYTES: usize = 16 * 1024 * 1024;

pub const PROVIDER_WUC: &str = "Microsoft-Windows-WindowsUpdateClient";
pub const PROVIDER_SERVICING: &str = "Microsoft-Windows-Servicing";
pub const PROVIDER_WER_SYSTEM: &str = "Microsoft-Windows-WER-SystemErrorReporting";
pub const PROVIDER_KERNEL_POWER: &str = "Microsoft-Windows-Kernel-Power";
pub const PROVIDER_EVENTLOG: &str = "EventLog";
pub const PROVIDER_KERNEL_GENERAL: &str = "Microsoft-Windows-Kernel-General";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventXmlError {
    #[error(
        "the wevtutil output is {0} bytes, more than the {MAX_XML_BYTES} the agent parses: lower the query's /c: count"
    )]
    TooLarge(usize),
    #[error(
        "the wevtutil output is neither UTF-16LE nor UTF-8: the agent runs wevtutil with /uni:true; a capture must be made the same way (agent/README.md)"
    )]
    Encoding,
    #[error("the wevtutil output is not well-formed XML: {0}")]
    Xml(String),
    #[error("event #{index}: {problem}")]
    Event { index: usize, problem: String },
}

/// One event record: the `<System>` fields recast uses and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub provider: String,
    pub provider_guid: Option<String>,
    pub event_id: u32,
    /// TimeCreated/@SystemTime, as written ("2026-01-14T08:41:02.5580127Z").
    pub time: String,
    pub record_id: Option<u64>,
    pub channel: Option<String>,
    pub payload: Payload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// `<EventData>`: (Name, text) in document order; Name is None for classic unnamed data.
    EventData(Vec<(Option<String>, String)>),
    /// `<UserData>`: the provider element's local name and its child elements (name, text).
    UserData {
        element: String,
        fields: Vec<(String, String)>,
    },
    None,
}

impl RawEvent {
    /// A named field from EventData, or a child of the UserData element.
    pub fn field(&self, name: &str) -> Option<&str> {
        match &self.payload {
            Payload::EventData(d) => d
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, v)| v.as_str()),
            Payload::UserData { fields, .. } => fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            Payload::None => None,
        }
    }
}

/// wevtutil's output as text: UTF-16LE (`/uni:true`, with or without a BOM) or UTF-8.
pub fn decode_text(bytes: &[u8]) -> Result<String, EventXmlError> {
    crate::text::decode_event_xml(bytes).ok_or(EventXmlError::Encoding)
}

/// Parses wevtutil output into raw events, in the order printed. Events from other namespaces
/// are refused rather than guessed at.
pub fn parse_events(bytes: &[u8]) -> Result<Vec<RawEvent>, EventXmlError> {
    if bytes.len() > MAX_XML_BYTES {
        return Err(EventXmlError::TooLarge(bytes.len()));
    }
    let text = decode_text(bytes)?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    // Without `/e:ROOT`, wevtutil prints a sequence of <Event> elements: not one document.
    // Wrapping them gives roxmltree the single root it needs; a wrapped output parses as is.
    let wrapped;
    let doc_text = if trimmed.starts_with("<Event ") || trimmed.starts_with("<Event>") {
        wrapped = format!("<Events>{trimmed}</Events>");
        wrapped.as_str()
    } else {
        trimmed
    };
    // DTDs stay forbidden (roxmltree's default), so entity expansion cannot blow up memory.
    let doc =
        roxmltree::Document::parse(doc_text).map_err(|e| EventXmlError::Xml(e.to_string()))?;
    let mut out = Vec::new();
    for (index, node) in doc
        .root_element()
        .children()
        .filter(|n| n.is_element())
        .enumerate()
    {
        let name = node.tag_name();
        if name.name() != "Event" || name.namespace() != Some(EVENT_NS) {
            return Err(EventXmlError::Event {
                index,
                problem: format!(
                    "expected <Event xmlns='{EVENT_NS}'>, found <{}> in namespace {:?}",
                    name.name(),
                    name.namespace()
                ),
            });
        }
        out.push(parse_event(node).map_err(|problem| EventXmlError::Event { index, problem })?);
    }
    Ok(out)
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(node: roxmltree::Node<'_, '_>) -> String {
    node.children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect::<String>()
}

fn parse_event(node: roxmltree::Node<'_, '_>) -> Result<RawEvent, String> {
    let system = child(node, "System").ok_or("no <System> element")?;
    let provider_node = child(system, "Provider").ok_or("no <Provider> in <System>")?;
    let provider = provider_node
        .attribute("Name")
        .ok_or("<Provider> has no Name")?
        .to_string();
    let provider_guid = provider_node.attribute("Guid").map(str::to_string);
    let id_text = child(system, "EventID")
        .map(text_of)
        .ok_or("no <EventID> in <System>")?;
    let event_id: u32 = id_text
        .trim()
        .parse()
        .map_err(|_| format!("EventID {id_text:?} is not a number"))?;
    let time = child(system, "TimeCreated")
        .and_then(|t| t.attribute("SystemTime"))
        .ok_or("no TimeCreated/@SystemTime in <System>")?
        .to_string();
    if recast_crds::report::parse_timestamp(&time).is_none() {
        return Err(format!(
            "TimeCreated/@SystemTime {time:?} is not an RFC 3339 time"
        ));
    }
    let record_id = child(system, "EventRecordID").and_then(|r| text_of(r).trim().parse().ok());
    let channel = child(system, "Channel").map(text_of);

    let payload = if let Some(data) = child(node, "EventData") {
        Payload::EventData(
            data.children()
                .filter(|c| c.is_element() && c.tag_name().name() == "Data")
                .map(|d| (d.attribute("Name").map(str::to_string), text_of(d)))
                .collect(),
        )
    } else if let Some(user) = child(node, "UserData") {
        match user.children().find(|c| c.is_element()) {
            Some(el) => Payload::UserData {
                element: el.tag_name().name().to_string(),
                fields: el
                    .children()
                    .filter(|c| c.is_element())
                    .map(|c| (c.tag_name().name().to_string(), text_of(c)))
                    .collect(),
            },
            None => Payload::None,
        }
    } else {
        Payload::None
    };
    Ok(RawEvent {
        provider,
        provider_guid,
        event_id,
        time,
        record_id,
        channel,
        payload,
    })
}

/// Why a raw event could not become a typed one (it is left out of the report and the reason
/// goes to `collectionErrors`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{provider} event {event_id} at {time}: {problem}")]
pub struct ConvertError {
    pub provider: String,
    pub event_id: u32,
    pub time: String,
    pub problem: String,
}

fn convert_error(e: &RawEvent, problem: impl Into<String>) -> ConvertError {
    ConvertError {
        provider: e.provider.clone(),
        event_id: e.event_id,
        time: e.time.clone(),
        problem: problem.into(),
    }
}

/// Cuts text to the report's bound on a character boundary, so a long title never gets the
/// whole report refused.
fn bounded(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn clean(s: &str, max: usize) -> String {
    bounded(
        &s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>(),
        max,
    )
}

fn opt_id(v: Option<&str>) -> Option<String> {
    v.map(|s| clean(s, recast_crds::report::MAX_ID))
        .filter(|s| !s.is_empty())
}

/// WindowsUpdateClient 19 / 20 / 43 → an update result. Other providers or ids are not update
/// results (None).
pub fn to_update_event(e: &RawEvent) -> Option<Result<UpdateEvent, ConvertError>> {
    if e.provider != PROVIDER_WUC {
        return None;
    }
    let outcome = match e.event_id {
        19 => UpdateOutcome::Installed,
        20 => UpdateOutcome::Failed,
        43 => UpdateOutcome::Started,
        _ => return None,
    };
    let Some(title) = e.field("updateTitle") else {
        return Some(Err(convert_error(e, "no updateTitle in EventData")));
    };
    let error_code = opt_id(e.field("errorCode"));
    if outcome == UpdateOutcome::Failed && error_code.is_none() {
        return Some(Err(convert_error(e, "a failure without errorCode")));
    }
    Some(Ok(UpdateEvent {
        event_id: e.event_id,
        outcome,
        time: e.time.clone(),
        title: clean(title, recast_crds::report::MAX_TEXT),
        error_code,
        update_guid: opt_id(e.field("updateGuid")),
        revision: e
            .field("updateRevisionNumber")
            .and_then(|r| r.trim().parse().ok()),
    }))
}

/// Microsoft-Windows-Servicing 1 / 2 / 3 / 4 / 6 → a package change.
pub fn to_servicing_event(e: &RawEvent) -> Option<Result<ServicingEvent, ConvertError>> {
    if e.provider != PROVIDER_SERVICING {
        return None;
    }
    let outcome = match e.event_id {
        1 => ServicingOutcome::Initiated,
        2 => ServicingOutcome::Succeeded,
        3 => ServicingOutcome::Failed,
        4 => ServicingOutcome::RebootRequired,
        6 => ServicingOutcome::FailedPartiallyInstalled,
        _ => return None,
    };
    let Some(package) = e
        .field("PackageIdentifier")
        .filter(|p| !p.trim().is_empty())
    else {
        return Some(Err(convert_error(e, "no PackageIdentifier in UserData")));
    };
    Some(Ok(ServicingEvent {
        event_id: e.event_id,
        outcome,
        time: e.time.clone(),
        package: clean(package, recast_crds::report::MAX_TEXT),
        intended_state: intended_state(e),
        error_code: opt_id(e.field("ErrorCode")),
        client: opt_id(e.field("Client")),
    }))
}

/// The package state the servicing change aimed at, as CBS names it: from the numeric
/// `IntendedPackageState` (what every event carries), else the `…Textized` twin (often empty in
/// real events). Unknown numbers pass through as they are.
fn intended_state(e: &RawEvent) -> Option<String> {
    let numeric = e.field("IntendedPackageState").and_then(parse_number);
    match numeric {
        Some(5112) => Some("Installed".into()),
        Some(5000) => Some("Absent".into()),
        Some(5064) => Some("Staged".into()),
        Some(5080) => Some("Superseded".into()),
        Some(n) => Some(n.to_string()),
        None => opt_id(e.field("IntendedPackageStateTextized")),
    }
}

/// Parses "0x000000ed", "0xED" or "237" (Kernel-Power writes BugcheckCode in decimal).
fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.len() <= 16 => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => s.parse().ok(),
    }
}

/// WER 1001's param1: "0x000000ed (0xffffa50d1c8f2060, 0xffffffffc0000185, 0x0, 0x0)".
fn parse_bugcheck_text(s: &str) -> Option<(u32, Vec<u64>)> {
    let s = s.trim();
    let (code, rest) = match s.split_once('(') {
        Some((c, r)) => (c, Some(r)),
        None => (s, None),
    };
    let code = u32::try_from(parse_number(code)?).ok()?;
    let mut params = Vec::new();
    if let Some(rest) = rest {
        let inner = rest.trim_end().strip_suffix(')')?;
        for p in inner.split(',') {
            params.push(parse_number(p)?);
            if params.len() > recast_crds::report::MAX_BUGCHECK_PARAMS {
                return None;
            }
        }
    }
    Some((code, params))
}

fn named_bugcheck(e: &RawEvent) -> Option<Result<(u32, Vec<u64>), String>> {
    let code = e.field("BugcheckCode")?;
    let Some(code) = parse_number(code).and_then(|c| u32::try_from(c).ok()) else {
        return Some(Err(format!("BugcheckCode {code:?} is not a number")));
    };
    let mut params = Vec::new();
    for i in 1..=4 {
        if let Some(p) = e.field(&format!("BugcheckParameter{i}")) {
            match parse_number(p) {
                Some(v) => params.push(v),
                None => return Some(Err(format!("BugcheckParameter{i} {p:?} is not a number"))),
            }
        }
    }
    Some(Ok((code, params)))
}

/// WER-SystemErrorReporting 1001, Kernel-Power 41 and EventLog 6008 → a crash record.
/// Kernel-Power 41 with BugcheckCode 0 (power loss, a held power button) keeps no code.
pub fn to_crash_event(e: &RawEvent) -> Option<Result<CrashEvent, ConvertError>> {
    let (source, code_params) = match (e.provider.as_str(), e.event_id) {
        (PROVIDER_WER_SYSTEM, 1001) => {
            let parsed = match named_bugcheck(e) {
                Some(r) => r,
                None => match e.field("param1") {
                    Some(p1) => parse_bugcheck_text(p1)
                        .ok_or_else(|| format!("param1 {p1:?} is not \"0xCODE (P1, P2, P3, P4)\"")),
                    None => Err("neither BugcheckCode nor param1 in EventData".to_string()),
                },
            };
            (CrashSource::WerBugcheck, Some(parsed))
        }
        (PROVIDER_KERNEL_POWER, 41) => {
            let parsed = named_bugcheck(e)
                .unwrap_or_else(|| Err("no BugcheckCode in EventData".to_string()));
            (CrashSource::KernelPower, Some(parsed))
        }
        (PROVIDER_EVENTLOG, 6008) => (CrashSource::UnexpectedShutdown, None),
        _ => return None,
    };
    let (bugcheck_code, parameters) = match code_params {
        Some(Ok((0, _))) => (None, Vec::new()),
        Some(Ok((code, params))) => (Some(code), params),
        Some(Err(problem)) => return Some(Err(convert_error(e, problem))),
        None => (None, Vec::new()),
    };
    Some(Ok(CrashEvent {
        source,
        event_id: e.event_id,
        time: e.time.clone(),
        bugcheck_code,
        parameters,
    }))
}

/// Kernel-General 12 (the OS started) → boot time: its StartTime, else when it was logged.
pub fn to_boot_time(e: &RawEvent) -> Option<String> {
    if e.provider != PROVIDER_KERNEL_GENERAL || e.event_id != 12 {
        return None;
    }
    let start = e
        .field("StartTime")
        .filter(|t| recast_crds::report::parse_timestamp(t).is_some());
    Some(start.unwrap_or(&e.time).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_bugcheck_text() {
        assert_eq!(parse_number("0x000000ed"), Some(0xed));
        assert_eq!(parse_number("237"), Some(237));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("0x12345678901234567"), None);
        assert_eq!(parse_number("ed"), None);
        assert_eq!(
            parse_bugcheck_text("0x0000007b (0x1, 0x2, 0x3, 0x4)"),
            Some((0x7b, vec![1, 2, 3, 4]))
        );
        assert_eq!(parse_bugcheck_text("0x000000ed"), Some((0xed, vec![])));
        assert_eq!(parse_bugcheck_text("0x000000ed (0x1, 0x2"), None);
        assert_eq!(parse_bugcheck_text("0x1 (0x1, 0x2, 0x3, 0x4, 0x5)"), None);
        assert_eq!(parse_bugcheck_text("0x1ffffffff"), None);
        assert_eq!(parse_bugcheck_text("Stop"), None);
    }

    #[test]
    fn bounded_cuts_on_char_boundaries() {
        assert_eq!(bounded("ääää", 3), "ä");
        assert_eq!(bounded(" abc ", 10), "abc");
        assert_eq!(clean("a\u{0}b", 10), "a b");
    }

    #[test]
    fn the_package_state_is_read_from_its_number() {
        let event = |state: &str, textized: &str| {
            format!(
                "<Events><Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='Microsoft-Windows-Servicing' Guid='{{BD12F3B8-FC40-4A61-A307-B7A013A069C1}}'/><EventID>3</EventID><TimeCreated SystemTime='2026-01-14T08:40:55.118000000Z'/></System><UserData><CbsPackageChangeState xmlns='http://manifests.microsoft.com/win/2004/08/windows/setup_provider'><PackageIdentifier>KB5074109</PackageIdentifier><IntendedPackageState>{state}</IntendedPackageState><IntendedPackageStateTextized>{textized}</IntendedPackageStateTextized><ErrorCode>0x800f0922</ErrorCode></CbsPackageChangeState></UserData></Event></Events>"
            )
        };
        for (state, textized, want) in [
            ("5112", "", Some("Installed")),
            ("5000", "", Some("Absent")),
            ("5064", "Installed", Some("Staged")),
            ("5080", "", Some("Superseded")),
            ("4711", "", Some("4711")),
            ("", "Installed", Some("Installed")),
            ("", "", None),
        ] {
            let raw = parse_events(event(state, textized).as_bytes()).unwrap();
            let e = to_servicing_event(&raw[0]).unwrap().unwrap();
            assert_eq!(e.intended_state.as_deref(), want, "{state:?} {textized:?}");
        }
    }

    #[test]
    fn decodes_utf16_with_and_without_bom() {
        let mut b = vec![0xff, 0xfe];
        for u in "<Events/>".encode_utf16() {
            b.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(decode_text(&b).unwrap(), "<Events/>");
        assert_eq!(decode_text(&b[2..]).unwrap(), "<Events/>");
        assert_eq!(
            decode_text(&[0xff, 0xfe, 0x00]),
            Err(EventXmlError::Encoding)
        );
        assert_eq!(decode_text(&[0xc3, 0x28]), Err(EventXmlError::Encoding));
    }
}
