//! The update hold on the endpoint: for each desired state, the exact reg.exe commands the agent
//! runs (golden transcripts in tests/golden/hold; `RECAST_UPDATE_GOLDEN=1` rewrites them — review
//! the diff), idempotence (a second pass changes nothing), reading `reg query` output in the
//! shape Windows prints it, and drift when someone undoes the hold.

use std::path::PathBuf;

use jiff::Timestamp;
use recast_agent::hold::fake::FakeRegistry;
use recast_agent::hold::{self, AU_KEY, MARKER, Snapshot, WU_KEY};
use recast_crds::report::DesiredUpdateHold;

const NOW: &str = "2026-01-14T08:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn held(reason: &str) -> DesiredUpdateHold {
    DesiredUpdateHold {
        held: true,
        reason: reason.into(),
    }
}

fn released() -> DesiredUpdateHold {
    DesiredUpdateHold {
        held: false,
        reason: "Managed".into(),
    }
}

fn golden(name: &str, log: &[String]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hold");
    recast_tests::assert_golden(&dir.join(name), &(log.join("\n") + "\n"));
}

/// A machine where the site's own GPO configured Windows Update (values recast must never
/// delete).
fn site_gpo() -> FakeRegistry {
    let r = FakeRegistry::default();
    r.set(WU_KEY, "TargetReleaseVersion", "REG_DWORD", "0x1");
    r.set(WU_KEY, "ProductVersion", "REG_SZ", "Windows 11");
    r.set(AU_KEY, "AUOptions", "REG_DWORD", "0x4");
    r
}

#[test]
fn hold_from_a_clean_machine_then_idempotent() {
    let r = site_gpo();
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert!(e.held, "{e:?}");
    assert!(e.drift.is_empty(), "a first hold is not drift: {e:?}");
    golden("hold-from-clean.txt", &r.take_log());
    // Second pass: only the two reads.
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert!(e.held && e.drift.is_empty());
    assert_eq!(
        r.take_log(),
        vec![
            format!("reg.exe query {WU_KEY}"),
            format!("reg.exe query {AU_KEY}")
        ],
        "a second pass must change nothing"
    );
}

#[test]
fn release_removes_only_what_recast_set_then_idempotent() {
    let r = site_gpo();
    hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
    r.take_log();
    let e = hold::apply(&r, Some(&released()), now()).unwrap();
    assert!(!e.held);
    golden("release-after-hold.txt", &r.take_log());
    // The site's values are untouched.
    let s = hold::read(&r).unwrap();
    assert_eq!(s, {
        let g = site_gpo();
        hold::read(&g).unwrap()
    });
    r.take_log();
    hold::apply(&r, Some(&released()), now()).unwrap();
    assert_eq!(
        r.take_log().len(),
        2,
        "a second release runs nothing but the reads"
    );
}

#[test]
fn release_on_a_machine_recast_never_held_touches_nothing() {
    // The site's GPO sets NoAutoUpdate itself: without recast's marker it is not recast's.
    let r = site_gpo();
    r.set(AU_KEY, "NoAutoUpdate", "REG_DWORD", "0x1");
    let e = hold::apply(&r, Some(&released()), now()).unwrap();
    assert!(!e.held);
    golden("release-unowned.txt", &r.take_log());
}

#[test]
fn no_instruction_yet_only_reads() {
    let r = site_gpo();
    let e = hold::apply(&r, None, now()).unwrap();
    assert!(!e.held);
    golden("no-instruction.txt", &r.take_log());
}

#[test]
fn a_changed_reason_rewrites_only_the_marker() {
    let r = FakeRegistry::default();
    hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    r.take_log();
    let e = hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
    assert!(e.drift.is_empty());
    let log = r.take_log();
    let writes: Vec<_> = log.iter().filter(|l| !l.contains(" query ")).collect();
    assert_eq!(
        writes,
        vec![&format!(
            "reg.exe add {WU_KEY} /v {MARKER} /t REG_SZ /d Immutable /f"
        )]
    );
}

#[test]
fn undoing_the_hold_is_drift_and_is_put_back() {
    let r = FakeRegistry::default();
    hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
    // A user (or a GPO refresh) turns automatic updates back on and removes the UX lock.
    r.set(AU_KEY, "NoAutoUpdate", "REG_DWORD", "0x0");
    r.remove(WU_KEY, "SetDisableUXWUAccess");
    let before = hold::read(&r).unwrap();
    assert!(
        !hold::is_held(&before, now()),
        "the undone hold reads as released"
    );
    r.take_log();
    let e = hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
    assert!(e.held, "put back: {e:?}");
    assert_eq!(
        e.drift,
        vec![
            r"AU\NoAutoUpdate: 0x1 -> 0x0".to_string(),
            "SetDisableUXWUAccess: 0x1 -> absent".to_string()
        ]
    );
    golden("reassert-after-drift.txt", &r.take_log());
}

#[test]
fn the_pause_is_restamped_before_it_lapses_and_that_is_not_drift() {
    let r = FakeRegistry::default();
    hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
    // 27 days later: still within the re-stamp age, nothing to do.
    let later: Timestamp = "2026-02-10T08:00:00Z".parse().unwrap();
    r.take_log();
    let e = hold::apply(&r, Some(&held("Immutable")), later).unwrap();
    assert!(e.held);
    assert_eq!(r.take_log().len(), 2);
    // 28 days: the start date moves to today.
    let restamp: Timestamp = "2026-02-11T08:00:00Z".parse().unwrap();
    let e = hold::apply(&r, Some(&held("Immutable")), restamp).unwrap();
    assert!(e.held && e.drift.is_empty(), "{e:?}");
    assert!(r.take_log().contains(&format!(
        "reg.exe add {WU_KEY} /v PauseQualityUpdatesStartTime /t REG_SZ /d 2026-02-11 /f"
    )));
    // A pause older than 35 days has lapsed: not held, whatever else is set.
    let s = hold::read(&r).unwrap();
    let lapsed: Timestamp = "2026-03-19T08:00:00Z".parse().unwrap();
    assert!(!hold::is_held(&s, lapsed));
}

#[test]
fn reg_query_output_in_the_shape_windows_prints_it() {
    // As `reg query HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate` prints on Windows 11
    // 24H2: a blank line, the long key name, four-space separated values, a blank line, then
    // the subkeys; CRLF line ends.
    let wu = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\r\n    DeferQualityUpdates    REG_DWORD    0x1\r\n    DeferQualityUpdatesPeriodInDays    REG_DWORD    0x1e\r\n    PauseQualityUpdatesStartTime    REG_SZ    2026-01-14\r\n    SetDisableUXWUAccess    REG_DWORD    0x1\r\n    RecastUpdateHold    REG_SZ    FailedRollback\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\r\n";
    let au = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\r\n    NoAutoUpdate    REG_DWORD    0x1\r\n\r\n";
    let s = Snapshot::parse(Some(wu), Some(au));
    assert!(s.marked());
    assert!(hold::is_held(&s, now()));
    // The same with NoAutoUpdate as a string (someone wrote the wrong type): not held.
    let au_sz = au.replace("REG_DWORD    0x1", "REG_SZ    1");
    assert!(!hold::is_held(
        &Snapshot::parse(Some(wu), Some(&au_sz)),
        now()
    ));
    // A deferral of 29 days is not recast's hold.
    let wu29 = wu.replace("0x1e", "0x1d");
    assert!(!hold::is_held(
        &Snapshot::parse(Some(&wu29), Some(au)),
        now()
    ));
    // No keys at all (reg.exe exits 1): nothing held, nothing marked.
    let none = Snapshot::parse(None, None);
    assert!(!none.marked() && !hold::is_held(&none, now()));
}

#[test]
fn a_failing_reg_exe_is_a_clear_error() {
    struct Denied;
    impl hold::Exec for Denied {
        fn exec(&self, _: &str, args: &[String]) -> Result<hold::ExecOutput, String> {
            Ok(hold::ExecOutput {
                success: false,
                stdout: if args[0] == "query" {
                    String::new()
                } else {
                    "ERROR: Access is denied.".into()
                },
            })
        }
    }
    let err = hold::apply(&Denied, Some(&held("Immutable")), now()).unwrap_err();
    assert!(
        err.to_string().contains("SYSTEM or an administrator"),
        "{err}"
    );
}

#[test]
fn a_reason_reaches_reg_exe_only_as_a_word() {
    let r = FakeRegistry::default();
    hold::apply(&r, Some(&held("Fail\"ed /f & del")), now()).unwrap();
    let log = r.take_log();
    assert!(
        log.contains(&format!(
            "reg.exe add {WU_KEY} /v {MARKER} /t REG_SZ /d Failedfdel /f"
        )),
        "{log:#?}"
    );
    hold::apply(&r, Some(&held("")), now()).unwrap();
    assert!(r.take_log().iter().any(|l| l.ends_with("/d Held /f")));
}

#[test]
fn the_update_mode_comes_from_agent_json() {
    let cfg = r#"{"namespace":"default","endpoint":"kiosk-01","attemptId":"a","gatewayUrl":null,"enrollmentToken":"t","updateMode":"immutable"}"#;
    assert_eq!(
        hold::update_mode_in_agent_config(cfg).unwrap().as_deref(),
        Some("immutable")
    );
    // An agent.json from before update modes: no opinion.
    assert_eq!(hold::update_mode_in_agent_config("{}").unwrap(), None);
    // Nonsense is an error that names the field, never a silent "managed".
    let e = hold::update_mode_in_agent_config(r#"{"updateMode":"frozen"}"#).unwrap_err();
    assert!(e.contains("updateMode"), "{e}");
    assert!(hold::update_mode_in_agent_config("not json").is_err());
}

#[test]
fn immutable_agents_start_held() {
    assert_eq!(hold::initial(Some("immutable")), Some(held("Immutable")));
    assert_eq!(hold::initial(Some("managed")), None);
    assert_eq!(hold::initial(None), None);
}
