//! System event log entries and the pure rule that finds OS crashes among them.
//!
//! A crash before Windows is up leaves no trace on the disk; the BMC's SEL is the only
//! witness. The rule is narrow on purpose: false positives wipe machines.

use serde::Serialize;
use serde_json::Value;

/// One LogEntry, reduced to the fields the crash rule and `recastctl bmc events` use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// The log service it came from (`Sel`, `IML`, `Log1`, ...).
    pub service: String,
    pub id: String,
    pub created: Option<String>,
    pub severity: Option<String>,
    pub message: Option<String>,
    pub message_id: Option<String>,
    pub sensor_type: Option<String>,
    pub entry_code: Option<String>,
    pub entry_type: Option<String>,
}

fn field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads one entry. None when it is not an object with an Id: one broken entry must not hide
/// the others, so callers skip and count it.
pub fn parse_entry(service: &str, v: &Value) -> Option<LogEntry> {
    if !v.is_object() {
        return None;
    }
    Some(LogEntry {
        service: service.to_string(),
        id: field(v, "Id")?,
        created: field(v, "Created"),
        severity: field(v, "Severity"),
        message: field(v, "Message"),
        message_id: field(v, "MessageId"),
        sensor_type: field(v, "SensorType"),
        entry_code: field(v, "EntryCode"),
        entry_type: field(v, "EntryType"),
    })
}

/// An OS crash recorded by the BMC: BootCrash evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrashEvidence {
    pub service: String,
    pub entry_id: String,
    pub created: Option<String>,
    pub message: String,
    /// The bug check code when the record carries one (0xED is UNMOUNTABLE_BOOT_VOLUME).
    pub bugcheck: Option<u32>,
}

/// The Windows name of the bug checks recast cares about.
pub fn bugcheck_name(code: u32) -> Option<&'static str> {
    match code {
        0xED => Some("UNMOUNTABLE_BOOT_VOLUME"),
        0x7B => Some("INACCESSIBLE_BOOT_DEVICE"),
        _ => None,
    }
}

/// Phrases of an OS critical stop in the messages of IPMI SEL decoders (iDRAC, OpenBMC,
/// generic), iLO's IML and the IPMI sensor-type 0x20 offset names.
const CRASH_PHRASES: &[&str] = &[
    "critical stop",
    "run-time critical",
    "runtime critical",
    "blue screen",
    "bugcheck",
    "bug check",
    "stop error",
];

/// The OS Stop/Shutdown offsets that are orderly, not crashes.
const ORDERLY_PHRASES: &[&str] = &[
    "graceful",
    "soft shutdown",
    "soft-shutdown",
    "agent not responding",
];

/// True when the entry records an OS critical stop (a crash), not an orderly stop.
pub fn is_os_crash(e: &LogEntry) -> bool {
    // Deassert records only say the condition went away; the assert record is the evidence.
    if e.entry_code
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case("deassert"))
    {
        return false;
    }
    let text = format!(
        "{} {}",
        e.message.as_deref().unwrap_or(""),
        e.entry_code.as_deref().unwrap_or("")
    )
    .to_lowercase();
    if ORDERLY_PHRASES.iter().any(|p| text.contains(p)) {
        return false;
    }
    let os_stop_sensor = e
        .sensor_type
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("OS Stop/Shutdown"));
    let crash_words = CRASH_PHRASES.iter().any(|p| text.contains(p));
    if os_stop_sensor {
        // An OS Stop sensor record is a crash when it says so, or when the BMC rates it
        // Critical without naming an orderly offset.
        crash_words
            || e.severity
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("Critical"))
    } else {
        // Without the sensor type only an explicit phrase counts, and "critical" alone is not
        // one (a "Critical Interrupt" sensor reports PCI errors, not crashes).
        crash_words
    }
}

/// Finds the bug check code in a message such as "STOP: 0x000000ED (...)" or
/// "BugCheck 0xed". Only a code after a stop/bugcheck keyword counts.
pub fn parse_bugcheck(message: &str) -> Option<u32> {
    let lower = message.to_lowercase();
    let start = ["stop:", "stop code", "bugcheck", "bug check", "stop 0x"]
        .iter()
        .filter_map(|k| lower.find(k))
        .min()?;
    let rest = &lower[start..];
    let hex_at = rest.find("0x")?;
    let digits: String = rest[hex_at + 2..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    u32::from_str_radix(&digits, 16).ok()
}

/// Every OS crash among the entries, oldest first as the log lists them.
pub fn crash_evidence(entries: &[LogEntry]) -> Vec<CrashEvidence> {
    entries
        .iter()
        .filter(|e| is_os_crash(e))
        .map(|e| {
            let message = e
                .message
                .clone()
                .unwrap_or_else(|| "OS critical stop".into());
            CrashEvidence {
                service: e.service.clone(),
                entry_id: e.id.clone(),
                created: e.created.clone(),
                bugcheck: parse_bugcheck(&message),
                message,
            }
        })
        .collect()
}

/// Which log services hold OS events: the SEL (iDRAC `Sel`, generic `SEL`), iLO's Integrated
/// Management Log `IML`, and the generic `Log1`/`Log`/`EventLog`. Others (iDRAC's Lifecycle
/// log, iLO's IEL of BMC events, fault lists) are large and say nothing about the OS.
pub fn is_os_event_log(service_id: &str) -> bool {
    matches!(
        service_id.to_ascii_lowercase().as_str(),
        "sel" | "iml" | "log1" | "log" | "eventlog"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(sensor: Option<&str>, severity: &str, msg: &str, code: Option<&str>) -> LogEntry {
        LogEntry {
            service: "Sel".into(),
            id: "1".into(),
            severity: Some(severity.into()),
            message: Some(msg.into()),
            sensor_type: sensor.map(str::to_string),
            entry_code: code.map(str::to_string),
            ..Default::default()
        }
    }

    const OS: Option<&str> = Some("OS Stop/Shutdown");

    #[test]
    fn crashes_are_recognised() {
        for e in [
            entry(
                OS,
                "Critical",
                "A critical stop occurred during OS load.",
                None,
            ),
            entry(
                OS,
                "Critical",
                "Run-time critical stop occurred.",
                Some("Assert"),
            ),
            entry(OS, "Critical", "", None),
            entry(
                OS,
                "Warning",
                "OS Stop/Shutdown: Run-time Critical Stop",
                None,
            ),
            entry(
                None,
                "Critical",
                "Blue Screen Trap (BugCheck, STOP: 0x000000ED (0xFFFFC58A, 0xC0000006, 0x0, 0x0))",
                None,
            ),
            entry(
                Some("Other"),
                "Critical",
                "A runtime critical stop occurred.",
                None,
            ),
        ] {
            assert!(is_os_crash(&e), "{e:?}");
        }
    }

    #[test]
    fn orderly_stops_and_other_criticals_are_not_crashes() {
        for e in [
            entry(OS, "OK", "An OS graceful shut-down occurred.", None),
            entry(OS, "Critical", "OS graceful stop", None),
            entry(OS, "Critical", "Soft shutdown initiated by PEF", None),
            entry(OS, "Warning", "OS agent not responding", None),
            entry(OS, "OK", "Run-time critical stop", Some("Deassert")),
            entry(OS, "OK", "", None),
            entry(
                Some("Critical Interrupt"),
                "Critical",
                "A PCI SERR critical interrupt was detected",
                None,
            ),
            entry(
                Some("Temperature"),
                "Critical",
                "The system inlet temperature is greater than the upper critical threshold.",
                None,
            ),
            entry(
                Some("System Boot/Restart"),
                "OK",
                "System boot initiated",
                None,
            ),
            entry(None, "OK", "The stop button was pressed.", None),
            entry(None, "Critical", "Power supply 1 failed.", None),
        ] {
            assert!(!is_os_crash(&e), "{e:?}");
        }
    }

    #[test]
    fn bugcheck_codes() {
        assert_eq!(
            parse_bugcheck("Blue Screen Trap (BugCheck, STOP: 0x000000ED (0x1, 0x2))"),
            Some(0xED)
        );
        assert_eq!(parse_bugcheck("stop code 0x7B"), Some(0x7B));
        assert_eq!(parse_bugcheck("BugCheck 0xed"), Some(0xED));
        assert_eq!(parse_bugcheck("Run-time critical stop"), None);
        // A hex number that is not after a stop keyword is not a bug check code.
        assert_eq!(parse_bugcheck("Device 0x1234 failed"), None);
        assert_eq!(parse_bugcheck("STOP: 0x123456789"), None);
        assert_eq!(bugcheck_name(0xED), Some("UNMOUNTABLE_BOOT_VOLUME"));
        assert_eq!(bugcheck_name(0x7B), Some("INACCESSIBLE_BOOT_DEVICE"));
        assert_eq!(bugcheck_name(0x1), None);
    }

    #[test]
    fn evidence_keeps_order_and_codes() {
        let entries = vec![
            entry(OS, "OK", "An OS graceful shut-down occurred.", None),
            entry(
                None,
                "Critical",
                "Blue Screen Trap (BugCheck, STOP: 0x000000ED (0x1))",
                None,
            ),
            entry(OS, "Critical", "Run-time critical stop occurred.", None),
        ];
        let found = crash_evidence(&entries);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].bugcheck, Some(0xED));
        assert_eq!(found[1].bugcheck, None);
        assert!(crash_evidence(&[]).is_empty());
    }

    #[test]
    fn entry_parsing_is_lenient_per_entry() {
        assert!(parse_entry("Sel", &json!("text")).is_none());
        assert!(parse_entry("Sel", &json!({"Message": "no id"})).is_none());
        let e = parse_entry(
            "Sel",
            &json!({"Id": 7, "Message": ["not", "a", "string"], "SensorType": "OS Stop/Shutdown"}),
        )
        .unwrap();
        assert_eq!(e.id, "7");
        assert_eq!(e.message, None);
    }

    #[test]
    fn log_service_selection() {
        for id in ["Sel", "SEL", "IML", "Log1", "EventLog"] {
            assert!(is_os_event_log(id), "{id}");
        }
        for id in ["Lclog", "IEL", "FaultList", "DiagLogs", "Journal"] {
            assert!(!is_os_event_log(id), "{id}");
        }
    }
}
