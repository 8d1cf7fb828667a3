//! The update hold on the endpoint: for each desired state, the exact reg.exe commands the agent
//! runs (golden transcripts in tests/golden/hold; `RECAST_UPDATE_GOLDEN=1` rewrites them — review
//! the diff), idempotence (a second pass changes nothing), reading `reg query` output in the
//! shape Windows prints it, and drift when someone undoes the hold.

use std::path::PathBuf;

use jiff::Timestamp;
use recast_agent::hold::fake::FakeRegistry;
use recast_agent::hold::{
    self, AU_KEY, CONFIGMGR_KEY, CURRENT_VERSION_KEY, MARKER, MDM_UPDATE_KEY, POLICY_STATE_KEY,
    SAVED_KEY, Snapshot, WU_KEY,
};
use recast_crds::report::{DesiredUpdateHold, HoldEnforcement, HoldObstacle};

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

/// The reads of every pass, in order: the two policy keys, recast's saved copies, the MDM
/// update policies, Windows Update's effective policy, the edition and the ConfigMgr client.
fn reads() -> Vec<String> {
    vec![
        format!("reg.exe query {WU_KEY}"),
        format!("reg.exe query {AU_KEY}"),
        format!("reg.exe query {SAVED_KEY}"),
        format!("reg.exe query {MDM_UPDATE_KEY}"),
        format!("reg.exe query {POLICY_STATE_KEY}"),
        format!("reg.exe query {CURRENT_VERSION_KEY} /v EditionID"),
        format!("reg.exe query {CONFIGMGR_KEY} /ve"),
    ]
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
    r.refresh_policy_state();
    r
}

#[test]
fn hold_from_a_clean_machine_then_idempotent() {
    let r = site_gpo();
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert!(e.held, "{e:?}");
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held));
    assert!(e.drift.is_empty(), "a first hold is not drift: {e:?}");
    golden("hold-from-clean.txt", &r.take_log());
    // Second pass: only the reads.
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert!(e.held && e.drift.is_empty());
    assert_eq!(r.take_log(), reads(), "a second pass must change nothing");
}

#[test]
fn release_removes_only_what_recast_set_then_idempotent() {
    let r = site_gpo();
    hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
    r.take_log();
    let e = hold::apply(&r, Some(&released()), now()).unwrap();
    assert!(!e.held);
    assert_eq!(e.enforcement, Some(HoldEnforcement::Released));
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
        r.take_log(),
        reads(),
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
        !hold::values_in_place(&before, now()),
        "the undone hold reads as released"
    );
    assert_eq!(
        hold::judge(true, &before, now(), vec![]).enforcement,
        Some(HoldEnforcement::NotInPlace)
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
    assert_eq!(r.take_log(), reads());
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
    assert!(!hold::values_in_place(&s, lapsed));
}

#[test]
fn reg_query_output_in_the_shape_windows_prints_it() {
    // As `reg query HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate` prints on Windows 11
    // 24H2: a blank line, the long key name, four-space separated values, a blank line, then
    // the subkeys; CRLF line ends.
    let wu = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\r\n    DeferQualityUpdates    REG_DWORD    0x1\r\n    DeferQualityUpdatesPeriodInDays    REG_DWORD    0x1e\r\n    PauseQualityUpdatesStartTime    REG_SZ    2026-01-14\r\n    SetDisableUXWUAccess    REG_DWORD    0x1\r\n    RecastUpdateHold    REG_SZ    FailedRollback\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\r\n";
    let au = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\r\n    NoAutoUpdate    REG_DWORD    0x1\r\n\r\n";
    let parse = |wu: &str, au: &str| Snapshot::parse(&[(WU_KEY, Some(wu)), (AU_KEY, Some(au))]);
    let s = parse(wu, au);
    assert!(s.marked());
    assert!(hold::values_in_place(&s, now()));
    // The same with NoAutoUpdate as a string (someone wrote the wrong type): not held.
    let au_sz = au.replace("REG_DWORD    0x1", "REG_SZ    1");
    assert!(!hold::values_in_place(&parse(wu, &au_sz), now()));
    // A deferral of 29 days is not recast's hold.
    let wu29 = wu.replace("0x1e", "0x1d");
    assert!(!hold::values_in_place(&parse(&wu29, au), now()));
    // No keys at all (reg.exe exits 1): nothing held, nothing marked.
    let none = Snapshot::parse(&[(WU_KEY, None), (AU_KEY, None)]);
    assert!(!none.marked() && !hold::values_in_place(&none, now()));
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

// ---- what Windows will do with the hold ----------------------------------------------------

fn days_later(days: i64) -> Timestamp {
    now()
        .checked_add(jiff::SignedDuration::from_hours(24 * days))
        .unwrap()
}

#[test]
fn held_only_once_windows_update_applies_the_pause() {
    // Windows Update refreshes its effective policy on its own schedule, not on each write.
    let r = FakeRegistry::default();
    r.policy_state_lags.set(true);
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Pending), "{e:?}");
    assert!(!e.held, "written is not held: {e:?}");
    assert_eq!(
        e.evidence,
        vec!["no PolicyState: Windows Update has not recorded an effective policy".to_string()]
    );
    // The next day Windows still shows no pause: still within the settle time.
    let e = hold::apply(&r, Some(&held("FailedRollback")), days_later(1)).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Pending));
    // Windows refreshes: held.
    r.refresh_policy_state();
    let e = hold::apply(&r, Some(&held("FailedRollback")), days_later(1)).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held));
    assert!(e.held && e.evidence.is_empty());
}

#[test]
fn a_pause_windows_never_applies_is_overridden() {
    // Every value recast writes is in the registry, and yet Windows Update's own record says
    // quality updates are not paused (a source Windows ranks higher, a policy it did not take).
    let r = FakeRegistry::default();
    hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    r.policy_state_lags.set(true);
    r.set(POLICY_STATE_KEY, "QualityUpdatesPaused", "REG_DWORD", "0x0");
    let s = hold::read(&r).unwrap();
    assert!(
        hold::values_in_place(&s, days_later(3)),
        "the registry says held"
    );
    let e = hold::apply(&r, Some(&held("FailedRollback")), days_later(3)).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Overridden), "{e:?}");
    assert!(!e.held);
    assert_eq!(
        e.evidence,
        vec!["PolicyState QualityUpdatesPaused=0x0".to_string()]
    );
}

#[test]
fn a_home_edition_is_not_enforceable() {
    for edition in ["Core", "CoreSingleLanguage", "CoreCountrySpecific", "CoreN"] {
        let r = FakeRegistry::default();
        r.set(CURRENT_VERSION_KEY, "EditionID", "REG_SZ", edition);
        let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
        // The values are written (they cost nothing and some builds read NoAutoUpdate), but
        // Windows Home does not support the Windows Update policies: not held.
        assert!(hold::values_in_place(&hold::read(&r).unwrap(), now()));
        assert_eq!(
            e.enforcement,
            Some(HoldEnforcement::NotEnforceable),
            "{e:?}"
        );
        assert_eq!(e.obstacles, vec![HoldObstacle::HomeEdition]);
        assert_eq!(e.evidence, vec![format!("EditionID={edition}")]);
        assert!(!e.held);
    }
    for edition in ["Professional", "Enterprise", "Education", "IoTEnterprise"] {
        let r = FakeRegistry::default();
        r.set(CURRENT_VERSION_KEY, "EditionID", "REG_SZ", edition);
        let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
        assert_eq!(
            e.enforcement,
            Some(HoldEnforcement::Held),
            "{edition}: {e:?}"
        );
    }
}

/// An Intune update ring as the MDM client writes it: each policy with its provider entries.
fn intune_ring(r: &FakeRegistry, allow_auto_update: &str) {
    r.set(
        MDM_UPDATE_KEY,
        "AllowAutoUpdate",
        "REG_DWORD",
        allow_auto_update,
    );
    r.set(
        MDM_UPDATE_KEY,
        "AllowAutoUpdate_ProviderSet",
        "REG_DWORD",
        "0x1",
    );
    r.set(
        MDM_UPDATE_KEY,
        "AllowAutoUpdate_WinningProvider",
        "REG_SZ",
        "{8E5D2F41-6B1C-4A7E-9D3F-2C8B0A6E4F17}",
    );
    r.set(
        MDM_UPDATE_KEY,
        "DeferQualityUpdatesPeriodInDays",
        "REG_DWORD",
        "0x3",
    );
}

#[test]
fn an_mdm_update_ring_that_contradicts_the_hold_is_not_enforceable() {
    // The ring wins: Windows Update's effective policy shows no pause.
    let r = FakeRegistry::default();
    r.policy_state_lags.set(true);
    r.set(POLICY_STATE_KEY, "QualityUpdatesPaused", "REG_DWORD", "0x0");
    intune_ring(&r, "0x2");
    r.set(
        MDM_UPDATE_KEY,
        "ConfigureDeadlineForQualityUpdates",
        "REG_DWORD",
        "0x2",
    );
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(
        e.enforcement,
        Some(HoldEnforcement::NotEnforceable),
        "{e:?}"
    );
    assert_eq!(e.obstacles, vec![HoldObstacle::MdmConflict]);
    assert_eq!(
        e.evidence,
        vec![
            "MDM Update/AllowAutoUpdate=0x2, MDM Update/ConfigureDeadlineForQualityUpdates=0x2"
                .to_string(),
            "PolicyState QualityUpdatesPaused=0x0".to_string()
        ]
    );
    assert!(!e.held);
    // The same ring where Windows applies recast's pause anyway: held (every Intune ring sets
    // AllowAutoUpdate; it matters only where it wins).
    r.refresh_policy_state();
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held), "{e:?}");
    // A ring that turns automatic updates off and sets no deadline agrees with the hold (its
    // short deferral is no conflict: a deferral is not what holds).
    let r = FakeRegistry::default();
    intune_ring(&r, "0x5");
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held), "{e:?}");
}

#[test]
fn a_wsus_or_configmgr_managed_machine_is_not_enforceable() {
    let r = FakeRegistry::default();
    r.set(
        WU_KEY,
        "WUServer",
        "REG_SZ",
        "http://wsus.corp.example:8530",
    );
    r.set(
        WU_KEY,
        "WUStatusServer",
        "REG_SZ",
        "http://wsus.corp.example:8530",
    );
    r.set(AU_KEY, "UseWUServer", "REG_DWORD", "0x1");
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(
        e.enforcement,
        Some(HoldEnforcement::NotEnforceable),
        "{e:?}"
    );
    assert_eq!(e.obstacles, vec![HoldObstacle::WsusManaged]);
    assert_eq!(
        e.evidence,
        vec![r"AU\UseWUServer=0x1 (WUServer=http://wsus.corp.example:8530)".to_string()]
    );
    // WSUS configured and then switched off is no obstacle.
    r.set(AU_KEY, "UseWUServer", "REG_DWORD", "0x0");
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held), "{e:?}");
    // WSUS set by MDM.
    r.set(
        MDM_UPDATE_KEY,
        "UpdateServiceUrl",
        "REG_SZ",
        "https://wsus.corp.example:8531",
    );
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(e.obstacles, vec![HoldObstacle::WsusManaged]);
    // A ConfigMgr client alone (co-managed, Intune runs the updates; or left over after an
    // uninstall) is no obstacle: it installs updates only from its own update point.
    let r = FakeRegistry::default();
    r.set(CONFIGMGR_KEY, "TempDir", "REG_SZ", r"C:\Windows\ccmcache");
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held), "{e:?}");
    // With its update point as the source: both named.
    r.set(
        WU_KEY,
        "WUServer",
        "REG_SZ",
        "https://sup.corp.example:8531",
    );
    r.set(AU_KEY, "UseWUServer", "REG_DWORD", "0x1");
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert_eq!(
        e.obstacles,
        vec![HoldObstacle::WsusManaged, HoldObstacle::ConfigMgrManaged]
    );
    assert_eq!(e.evidence.len(), 2, "{e:?}");
}

#[test]
fn policy_state_and_mdm_output_in_the_shape_windows_prints_it() {
    let wu = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\r\n    DeferQualityUpdates    REG_DWORD    0x1\r\n    DeferQualityUpdatesPeriodInDays    REG_DWORD    0x1e\r\n    PauseQualityUpdatesStartTime    REG_SZ    2026-01-14\r\n    SetDisableUXWUAccess    REG_DWORD    0x1\r\n    RecastUpdateHold    REG_SZ    FailedRollback\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\r\n";
    let au = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU\r\n    NoAutoUpdate    REG_DWORD    0x1\r\n\r\n";
    let state = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\WindowsUpdate\\UpdatePolicy\\PolicyState\r\n    BranchReadinessLevel    REG_SZ    CB\r\n    DeferFeatureUpdates    REG_DWORD    0x0\r\n    DeferQualityUpdates    REG_DWORD    0x1\r\n    ExcludeWUDrivers    REG_DWORD    0x0\r\n    FeatureUpdatesDeferralInDays    REG_DWORD    0x0\r\n    IsDeferralIsActive    REG_DWORD    0x1\r\n    IsWUfBConfigured    REG_DWORD    0x1\r\n    IsWUfBDualScanActive    REG_DWORD    0x0\r\n    PolicySources    REG_DWORD    0x1\r\n    QualityUpdatesDeferralInDays    REG_DWORD    0x1e\r\n    QualityUpdatesPaused    REG_DWORD    0x1\r\n\r\n";
    let edition = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\r\n    EditionID    REG_SZ    Professional\r\n\r\n";
    let parse = |state: &str, mdm: Option<&str>| {
        Snapshot::parse(&[
            (WU_KEY, Some(wu)),
            (AU_KEY, Some(au)),
            (MDM_UPDATE_KEY, mdm),
            (POLICY_STATE_KEY, Some(state)),
            (CURRENT_VERSION_KEY, Some(edition)),
        ])
    };
    let e = hold::judge(true, &parse(state, None), now(), vec![]);
    assert_eq!(e.enforcement, Some(HoldEnforcement::Held), "{e:?}");
    let unpaused = state.replace(
        "QualityUpdatesPaused    REG_DWORD    0x1",
        "QualityUpdatesPaused    REG_DWORD    0x0",
    );
    let e = hold::judge(true, &parse(&unpaused, None), days_later(5), vec![]);
    assert_eq!(e.enforcement, Some(HoldEnforcement::Overridden), "{e:?}");
    let mdm = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\PolicyManager\\current\\device\\Update\r\n    AllowAutoUpdate    REG_DWORD    0x4\r\n    AllowAutoUpdate_ProviderSet    REG_DWORD    0x1\r\n    AllowAutoUpdate_WinningProvider    REG_SZ    {8E5D2F41-6B1C-4A7E-9D3F-2C8B0A6E4F17}\r\n\r\n";
    let e = hold::judge(true, &parse(&unpaused, Some(mdm)), now(), vec![]);
    assert_eq!(e.obstacles, vec![HoldObstacle::MdmConflict], "{e:?}");
    let e = hold::judge(true, &parse(state, Some(mdm)), now(), vec![]);
    assert_eq!(
        e.enforcement,
        Some(HoldEnforcement::Held),
        "the pause applied: {e:?}"
    );
    // Released: whatever the machine is, nothing is wanted.
    let e = hold::judge(false, &parse(state, Some(mdm)), now(), vec![]);
    assert_eq!(e.enforcement, Some(HoldEnforcement::Released));
    assert!(e.obstacles.is_empty() && !e.held);
}

/// A site whose own GPO sets some of the values a hold overwrites.
fn site_with_its_own_update_policy() -> FakeRegistry {
    let r = site_gpo();
    r.set(AU_KEY, "NoAutoUpdate", "REG_DWORD", "0x0");
    r.set(WU_KEY, "DeferQualityUpdates", "REG_DWORD", "0x1");
    r.set(
        WU_KEY,
        "DeferQualityUpdatesPeriodInDays",
        "REG_DWORD",
        "0x7",
    );
    r.set(WU_KEY, "PauseQualityUpdatesStartTime", "REG_SZ", "");
    r.refresh_policy_state();
    r
}

#[test]
fn release_restores_the_sites_own_values() {
    let r = site_with_its_own_update_policy();
    let e = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    assert!(e.held, "{e:?}");
    assert!(e.drift.is_empty(), "the site's values are not drift: {e:?}");
    golden("hold-over-site-values.txt", &r.take_log());
    // Re-asserting keeps the saved copies as they were.
    hold::apply(&r, Some(&held("FailedRollback")), days_later(1)).unwrap();
    assert_eq!(r.take_log(), reads());
    let e = hold::apply(&r, Some(&released()), days_later(2)).unwrap();
    assert_eq!(e.enforcement, Some(HoldEnforcement::Released));
    golden("release-restores-site-values.txt", &r.take_log());
    // The very same values as before the hold, the saved copies gone.
    let values = |r: &FakeRegistry| {
        r.values
            .borrow()
            .iter()
            .filter(|((k, _), _)| k == WU_KEY || k == AU_KEY || k == SAVED_KEY)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&r), values(&site_with_its_own_update_policy()));
}

/// Runs a plan's first `n` commands, as a pass that crashed after them would have.
fn run_partly(
    r: &FakeRegistry,
    desired: &DesiredUpdateHold,
    at: Timestamp,
    n: usize,
) -> Vec<Vec<String>> {
    let cmds = hold::plan(Some(desired), &hold::read(r).unwrap(), at)
        .unwrap()
        .commands;
    for c in cmds.iter().take(n) {
        assert!(hold::Exec::exec(r, "reg.exe", c).unwrap().success, "{c:?}");
    }
    r.take_log();
    cmds
}

fn site_values(r: &FakeRegistry) -> Vec<((String, String), (String, String))> {
    r.values
        .borrow()
        .iter()
        .filter(|((k, _), _)| k == WU_KEY || k == AU_KEY || k == SAVED_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn an_interrupted_release_is_finished_by_the_next_pass() {
    // Stopped after the marker went, before the record did.
    let r = site_with_its_own_update_policy();
    hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    let cmds = hold::plan(Some(&released()), &hold::read(&r).unwrap(), now())
        .unwrap()
        .commands;
    assert_eq!(
        cmds.last().unwrap(),
        &vec!["delete", SAVED_KEY, "/f"],
        "the record goes last"
    );
    run_partly(&r, &released(), now(), cmds.len() - 1);
    hold::apply(&r, Some(&released()), now()).unwrap();
    let writes: Vec<String> = r
        .take_log()
        .into_iter()
        .filter(|l| !l.contains(" query "))
        .collect();
    assert_eq!(writes, vec![format!("reg.exe delete {SAVED_KEY} /f")]);
    assert_eq!(
        site_values(&r),
        site_values(&site_with_its_own_update_policy())
    );
    // Stopped half-way through putting the values back: the next pass finishes it.
    let r = site_with_its_own_update_policy();
    hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    run_partly(&r, &released(), now(), 2);
    hold::apply(&r, Some(&released()), now()).unwrap();
    assert_eq!(
        site_values(&r),
        site_values(&site_with_its_own_update_policy())
    );
}

#[test]
fn an_interrupted_hold_is_finished_by_the_next_pass() {
    // Every prefix of a new hold's commands, then a full pass: the hold is in place, and its
    // release gives the site exactly its own values back.
    let n = run_partly(
        &site_with_its_own_update_policy(),
        &held("Immutable"),
        now(),
        0,
    )
    .len();
    for stop in 0..n {
        let r = site_with_its_own_update_policy();
        run_partly(&r, &held("Immutable"), now(), stop);
        let e = hold::apply(&r, Some(&held("Immutable")), now()).unwrap();
        assert!(e.held, "stopped after {stop}: {e:?}");
        hold::apply(&r, Some(&released()), now()).unwrap();
        assert_eq!(
            site_values(&r),
            site_values(&site_with_its_own_update_policy()),
            "stopped after {stop}"
        );
    }
}

#[test]
fn a_deleted_marker_is_drift_and_the_sites_values_survive_it() {
    // A script deletes recast's marker during a hold; recast's values stay.
    let r = site_with_its_own_update_policy();
    hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    r.remove(WU_KEY, MARKER);
    r.take_log();
    let e = hold::apply(&r, Some(&held("FailedRollback")), days_later(1)).unwrap();
    assert_eq!(
        e.drift,
        vec!["RecastUpdateHold: FailedRollback -> absent".to_string()],
        "{e:?}"
    );
    let writes: Vec<String> = r
        .take_log()
        .into_iter()
        .filter(|l| !l.contains(" query "))
        .collect();
    assert_eq!(
        writes,
        vec![format!(
            "reg.exe add {WU_KEY} /v {MARKER} /t REG_SZ /d FailedRollback /f"
        )],
        "only the marker is put back; the site's saved values are not overwritten"
    );
    // Even released without the marker, the site gets its own values back.
    r.remove(WU_KEY, MARKER);
    hold::apply(&r, Some(&released()), days_later(2)).unwrap();
    assert_eq!(
        site_values(&r),
        site_values(&site_with_its_own_update_policy())
    );
}

#[test]
fn an_overridden_hold_does_not_flap_when_the_pause_is_restamped() {
    let r = FakeRegistry::default();
    r.policy_state_lags.set(true);
    hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap();
    // Windows never applies the pause; day by day, across the re-stamp on day 28.
    let mut verdicts = Vec::new();
    for day in [1, 2, 3, 10, 27, 28, 29, 30, 40] {
        let e = hold::apply(&r, Some(&held("FailedRollback")), days_later(day)).unwrap();
        verdicts.push((day, e.enforcement.unwrap()));
    }
    use HoldEnforcement::{Overridden, Pending};
    assert_eq!(
        verdicts,
        [
            (1, Pending),
            (2, Pending),
            (3, Overridden),
            (10, Overridden),
            (27, Overridden),
            (28, Overridden),
            (29, Overridden),
            (30, Overridden),
            (40, Overridden)
        ]
    );
}

#[test]
fn a_site_value_that_cannot_be_put_back_stops_the_hold_before_anything_is_written() {
    let r = FakeRegistry::default();
    r.set(AU_KEY, "NoAutoUpdate", "REG_DWORD", "garbage");
    let err = hold::apply(&r, Some(&held("FailedRollback")), now()).unwrap_err();
    assert!(err.to_string().contains(r"AU\NoAutoUpdate"), "{err}");
    assert!(
        r.take_log().iter().all(|l| l.contains(" query ")),
        "nothing written"
    );
}
