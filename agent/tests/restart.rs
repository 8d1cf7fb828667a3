//! The restart into the network: for each machine, the exact bcdedit and shutdown calls the
//! agent makes, with each outcome where it is recorded (golden transcripts in
//! tests/golden/restart; `RECAST_UPDATE_GOLDEN=1` rewrites them — review the diff); reading
//! `bcdedit /enum firmware` in the shape Windows prints it (tests/fixtures/tools/bcdedit-*,
//! CRLF, decoded the way real output is); acting at most once per order; `--replay`'s
//! calls.log; and the binary carrying the outcome to a gateway.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use proptest::prelude::*;
use recast_agent::exec::{Exec, ExecOutput};
use recast_agent::restart::{self, CALLS_LOG, NetworkBoot, ReplayExec, fake::FakeWindows};
use recast_agent::state::{self, AgentState};
use recast_crds::report::{
    AgentReport, DesiredUpdateHold, MAX_TEXT, NetworkRestartOrder, NetworkRestartOutcome,
    NetworkRestartRefusal, NetworkRestartResult,
};

const NOW: &str = "2026-01-15T09:00:00Z";
const ATTEMPT: &str = "kiosk-01-20260115-0900";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A tool fixture as the agent reads real output: bytes through `decode_console`.
fn tool(name: &str) -> String {
    let bytes = std::fs::read(fixture(&format!("tools/{name}"))).unwrap();
    recast_agent::text::decode_console(&bytes, None)
}

fn ok(text: &str) -> ExecOutput {
    ExecOutput {
        success: true,
        stdout: text.into(),
    }
}

fn failed(text: &str) -> ExecOutput {
    ExecOutput {
        success: false,
        stdout: text.into(),
    }
}

fn order(try_number: u32) -> NetworkRestartOrder {
    NetworkRestartOrder {
        attempt_id: ATTEMPT.into(),
        try_number,
        delay_seconds: 60,
        mac_addresses: vec![],
    }
}

fn shown(o: &NetworkRestartOutcome) -> String {
    shown_as("recorded", o)
}

fn shown_as(what: &str, o: &NetworkRestartOutcome) -> String {
    let result = match o.result {
        NetworkRestartResult::Scheduled => "Scheduled".to_string(),
        NetworkRestartResult::Refused(r) => format!("Refused({r:?})"),
    };
    format!(
        "{what}: {result} (attempt {}, try {}): {}",
        o.attempt_id, o.try_number, o.detail
    )
}

/// Runs one order on `w`: the outcome, and the transcript of every call and every outcome
/// recorded, in the order they happened.
fn run(w: &FakeWindows, order: &NetworkRestartOrder) -> (NetworkRestartOutcome, Vec<String>) {
    let mut record = |o: &NetworkRestartOutcome| {
        w.log.borrow_mut().push(shown(o));
        Ok(())
    };
    let out = restart::act(w, order, now(), &mut record).unwrap();
    (out, w.take_log())
}

fn golden(name: &str, log: &[String]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/restart");
    recast_tests::assert_golden(&dir.join(name), &(log.join("\n") + "\n"));
}

fn refused(o: &NetworkRestartOutcome) -> Option<NetworkRestartRefusal> {
    match o.result {
        NetworkRestartResult::Refused(r) => Some(r),
        NetworkRestartResult::Scheduled => None,
    }
}

fn calls(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| !l.starts_with("recorded: "))
        .collect()
}

const SET: &str = "bcdedit.exe /set {fwbootmgr} bootsequence";

#[test]
fn ovmf_restarts_into_its_pxe_ipv4_entry() {
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-ovmf.txt"));
    let (o, log) = run(&w, &order(1));
    assert_eq!(o.result, NetworkRestartResult::Scheduled);
    assert_eq!(
        o.detail,
        "UEFI PXEv4 (MAC:525400780001) {8b6f1c43-0f3a-11f1-9a2b-806e6f6e6963}"
    );
    assert_eq!(o.at, NOW);
    assert_eq!(
        log,
        vec![
            "bcdedit.exe /enum firmware".to_string(),
            format!("{SET} {{8b6f1c43-0f3a-11f1-9a2b-806e6f6e6963}}"),
            format!(
                "recorded: Scheduled (attempt {ATTEMPT}, try 1): {}",
                o.detail
            ),
            format!(
                "shutdown.exe /r /t 60 /c recast: restarting into the network to reimage this machine (attempt {ATTEMPT}, try 1)"
            ),
        ],
        "the intent is recorded before the restart is scheduled"
    );
    golden("ovmf.txt", &log);
}

#[test]
fn a_dell_with_ipv6_usb_and_a_dock_boots_its_onboard_ipv4_entry() {
    // Listed first: the dock's USB adapter (IPv4). First in the boot order: the USB stick,
    // then the onboard IPv6 entry, then the onboard IPv4 one: that one is chosen.
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-dell.txt"));
    let (o, log) = run(&w, &order(1));
    assert_eq!(o.result, NetworkRestartResult::Scheduled);
    assert_eq!(
        o.detail,
        "UEFI: PXE IPv4 Intel(R) Ethernet Connection (7) I219-LM {1e4a9c04-5d1e-11ef-b3c4-806e6f6e6963}"
    );
    golden("dell.txt", &log);
}

#[test]
fn a_german_windows_and_a_description_that_is_not_ascii() {
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-de.txt"));
    let (o, log) = run(&w, &order(1));
    assert_eq!(o.result, NetworkRestartResult::Scheduled);
    assert_eq!(
        o.detail,
        "UEFI: PXE IPv4 Realtek PCIe GbE-Familiencontroller – Netzwerkkarte für Fernstart {3f5e0002-7e21-11ef-9f3b-806e6f6e6963}"
    );
    golden("german.txt", &log);
    // The translated headings and identifier name change nothing the agent reads: the
    // English rendering of the same store chooses the same entry.
    let english = tool("bcdedit-enum-firmware-de.txt")
        .replace("Firmware-Start-Manager", "Firmware Boot Manager")
        .replace("Windows-Start-Manager", "Windows Boot Manager")
        .replace("Firmwareanwendung", "Firmware Application")
        .replace("Bezeichner", "identifier");
    let (de, en) = (
        restart::parse_enumeration(&tool("bcdedit-enum-firmware-de.txt")),
        restart::parse_enumeration(&english),
    );
    assert_eq!(de, en);
}

#[test]
fn no_network_entry_is_refused_without_touching_the_machine() {
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-no-network.txt"));
    let (o, log) = run(&w, &order(1));
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::NoNetworkEntry));
    assert!(
        o.detail
            .contains("enable network (PXE) boot over IPv4 in the firmware setup"),
        "{}",
        o.detail
    );
    assert!(
        o.detail.contains("UEFI: Generic Flash Disk 8.07"),
        "{}",
        o.detail
    );
    assert_eq!(calls(&log), vec!["bcdedit.exe /enum firmware"]);
    golden("no-network-entry.txt", &log);

    // IPv6 and HTTP boot entries are no way in: recast's boot service answers PXE over IPv4.
    let only_v6 = tool("bcdedit-enum-firmware-ovmf.txt").replace("UEFI PXEv4", "UEFI PXEv6");
    let w = FakeWindows::uefi(&only_v6);
    let (o, _) = run(&w, &order(1));
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::NoNetworkEntry));
}

#[test]
fn a_bios_machine_is_not_uefi_whatever_the_exit_status() {
    for success in [false, true] {
        let w = FakeWindows::new(ExecOutput {
            success,
            stdout: tool("bcdedit-enum-firmware-bios.txt"),
        });
        let (o, log) = run(&w, &order(1));
        assert_eq!(refused(&o), Some(NetworkRestartRefusal::NotUefi), "{o:?}");
        assert!(o.detail.contains("BIOS (legacy) mode"), "{}", o.detail);
        assert_eq!(calls(&log), vec!["bcdedit.exe /enum firmware"]);
        if !success {
            golden("bios.txt", &log);
        }
    }
    // An enumeration without a firmware boot manager, and an empty one.
    let ovmf = tool("bcdedit-enum-firmware-ovmf.txt");
    let without = ovmf.split_once("Windows Boot Manager\r\n").unwrap().1;
    for text in [without, ""] {
        let (o, _) = run(&FakeWindows::uefi(text), &order(1));
        assert_eq!(refused(&o), Some(NetworkRestartRefusal::NotUefi), "{o:?}");
    }
}

#[test]
fn not_elevated() {
    let w = FakeWindows::new(failed(&tool("bcdedit-not-elevated.txt")));
    let (o, log) = run(&w, &order(1));
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::NotElevated));
    assert!(o.detail.contains("LocalSystem"), "{}", o.detail);
    assert!(
        o.detail
            .contains("The boot configuration data store could not be opened. Access is denied."),
        "{}",
        o.detail
    );
    golden("not-elevated.txt", &log);
    // In a language recast has no words for, the same failure is BcdeditFailed, with
    // bcdedit's own words for the person who reads it.
    let w = FakeWindows::new(failed(
        "Nie można otworzyć magazynu danych konfiguracji rozruchu.\r\nOdmowa dostępu.\r\n",
    ));
    let (o, _) = run(&w, &order(1));
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::BcdeditFailed));
    assert!(o.detail.contains("Odmowa dostępu."), "{}", o.detail);
}

#[test]
fn a_failing_bcdedit_set_schedules_no_restart() {
    let mut w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-ovmf.txt"));
    w.set = failed(&tool("bcdedit-set-failed.txt"));
    let (o, log) = run(&w, &order(1));
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::BcdeditFailed));
    assert!(
        o.detail.contains("The request is not supported."),
        "{}",
        o.detail
    );
    assert!(
        !log.iter().any(|l| l.starts_with("shutdown.exe")),
        "{log:?}"
    );
    golden("set-failed.txt", &log);
}

#[test]
fn a_failing_shutdown_leaves_the_entry_set_and_says_so() {
    let mut w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-ovmf.txt"));
    w.shutdown = failed(&tool("shutdown-failed.txt"));
    let (o, log) = run(&w, &order(1));
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::ShutdownFailed));
    assert!(o.detail.contains("stays set"), "{}", o.detail);
    assert!(
        o.detail.contains("UEFI PXEv4 (MAC:525400780001)"),
        "{}",
        o.detail
    );
    assert!(o.detail.contains("(1190)"), "{}", o.detail);
    // Scheduled first (the intent), then overwritten.
    let records: Vec<_> = log.iter().filter(|l| l.starts_with("recorded: ")).collect();
    assert_eq!(records.len(), 2);
    assert!(records[0].starts_with("recorded: Scheduled"));
    golden("shutdown-failed.txt", &log);
}

#[test]
fn unreadable_or_unstartable_bcdedit_is_bcdedit_failed() {
    for out in [
        // More than a sentence and no block: not something recast reads as boot entries.
        ok("Ein Fehler ist aufgetreten.\r\nDas System kann die angegebene Datei nicht finden.\r\n"),
        failed(
            "The boot configuration data store could not be opened.\r\nThe system cannot find the file specified.\r\n",
        ),
        // Said nothing at all, and failed.
        failed(""),
        // Blocks, but a failure status.
        failed(&tool("bcdedit-enum-firmware-ovmf.txt")),
    ] {
        let (o, log) = run(&FakeWindows::new(out.clone()), &order(1));
        assert_eq!(
            refused(&o),
            Some(NetworkRestartRefusal::BcdeditFailed),
            "{out:?}: {o:?}"
        );
        assert_eq!(calls(&log).len(), 1);
    }
    struct Missing;
    impl Exec for Missing {
        fn exec(&self, program: &str, _: &[String]) -> Result<ExecOutput, String> {
            Err(format!("could not start {program}: not found"))
        }
    }
    let mut record = |_: &NetworkRestartOutcome| Ok(());
    let o = restart::act(&Missing, &order(1), now(), &mut record).unwrap();
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::BcdeditFailed));
    assert!(
        o.detail.contains("could not start bcdedit.exe"),
        "{}",
        o.detail
    );
}

#[test]
fn no_restart_when_the_intent_cannot_be_recorded() {
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-ovmf.txt"));
    let mut record = |_: &NetworkRestartOutcome| Err("disk full".to_string());
    let err = restart::act(&w, &order(1), now(), &mut record).unwrap_err();
    assert_eq!(err, "disk full");
    assert!(
        !w.take_log().iter().any(|l| l.starts_with("shutdown.exe")),
        "a restart the agent cannot remember could be scheduled twice"
    );
}

#[test]
fn each_order_is_acted_on_once_and_survives_in_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let hold = DesiredUpdateHold {
        held: true,
        reason: "Immutable".into(),
    };
    state::save(
        &path,
        &AgentState {
            last_sequence: 41,
            update_hold: Some(hold.clone()),
            network_restart: None,
        },
    )
    .unwrap();
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-ovmf.txt"));
    let mut transcript = Vec::new();
    let mut step = |title: &str, order: &NetworkRestartOrder| {
        let o = restart::follow(&w, &path, order, now()).unwrap();
        transcript.push(format!("# {title}"));
        transcript.extend(w.take_log());
        if let Some(o) = &o {
            transcript.push(shown_as("state now", o));
        }
        o
    };
    let first = step("try 1", &order(1)).expect("a new order is acted on");
    assert_eq!(first.result, NetworkRestartResult::Scheduled);
    assert!(
        step("try 1 again (a second reply, or after a crash)", &order(1)).is_none(),
        "the same order twice schedules one restart"
    );
    // The delay is not part of the order's identity.
    let slower = NetworkRestartOrder {
        delay_seconds: 300,
        ..order(1)
    };
    assert!(step("try 1 with another delay", &slower).is_none());
    let second = step("try 2", &order(2)).expect("a new try is a new order");
    assert_eq!(second.try_number, 2);
    let other = NetworkRestartOrder {
        attempt_id: "kiosk-01-20260116-0900".into(),
        ..order(1)
    };
    assert!(step("another attempt, try 1", &other).is_some());
    golden("idempotent.txt", &transcript);
    // The rest of the state is kept.
    let st = state::load(&path).unwrap();
    assert_eq!(st.last_sequence, 41);
    assert_eq!(st.update_hold, Some(hold));
    assert_eq!(st.network_restart.unwrap().attempt_id, other.attempt_id);
}

#[test]
fn a_refusal_is_remembered_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-no-network.txt"));
    let o = restart::follow(&w, &path, &order(1), now())
        .unwrap()
        .unwrap();
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::NoNetworkEntry));
    w.take_log();
    assert!(
        restart::follow(&w, &path, &order(1), now())
            .unwrap()
            .is_none()
    );
    assert!(w.take_log().is_empty());
}

#[test]
fn every_outcome_fits_the_report() {
    // Even a firmware that lists more entries than a detail can name.
    let many: String = (0..60)
        .map(|i| {
            format!(
                "Firmware Application (101fffff)\r\n-------------------------------\r\nidentifier              {{{i:08x}-0000-4000-8000-000000000000}}\r\ndescription             UEFI: Vendor Disk Number {i} With A Long Name\r\n\r\n"
            )
        })
        .collect();
    let many = format!(
        "\r\nFirmware Boot Manager\r\n---------------------\r\nidentifier              {{fwbootmgr}}\r\ntimeout                 0\r\n\r\n{many}"
    );
    let mut report = recast_agent::collect::collect(
        &recast_agent::collect::ReplayRunner {
            dir: fixture("replay/healthy"),
        },
        &recast_agent::collect::Identity {
            endpoint: "kiosk-01".into(),
            agent_version: "0.1.0".into(),
            attempt_id: None,
            interval_seconds: 300,
        },
        1,
        now(),
    )
    .unwrap();
    for (text, ok_) in [
        (many.as_str(), true),
        (
            "There are no matching objects or the store is empty.\r\n",
            false,
        ),
        ("", false),
    ] {
        let w = FakeWindows::new(ExecOutput {
            success: ok_,
            stdout: text.into(),
        });
        let (o, _) = run(&w, &order(1));
        assert!(o.detail.len() <= MAX_TEXT);
        report.network_restart = Some(o);
        report.validate().unwrap();
        let json = serde_json::to_vec(&report).unwrap();
        assert_eq!(AgentReport::from_json(&json).unwrap(), report);
    }
}

#[test]
fn the_enumeration_in_the_shape_bcdedit_prints_it() {
    let e = restart::parse_enumeration(&tool("bcdedit-enum-firmware-dell.txt"));
    assert!(e.other_lines.is_empty(), "{:?}", e.other_lines);
    assert_eq!(e.objects.len(), 7);
    assert_eq!(
        e.display_order(),
        [
            "{bootmgr}",
            "{1e4a9c01-5d1e-11ef-b3c4-806e6f6e6963}",
            "{1e4a9c03-5d1e-11ef-b3c4-806e6f6e6963}",
            "{1e4a9c04-5d1e-11ef-b3c4-806e6f6e6963}",
            "{1e4a9c05-5d1e-11ef-b3c4-806e6f6e6963}",
        ]
    );
    let usb = &e.objects[3];
    assert_eq!(usb.id, "{1e4a9c01-5d1e-11ef-b3c4-806e6f6e6963}");
    assert_eq!(
        usb.description(),
        Some("UEFI: SanDisk Cruzer Blade 1.00, Partition 1")
    );
    // Without a boot order, the listing decides: the dock's adapter comes first.
    let unordered = tool("bcdedit-enum-firmware-dell.txt").replace("displayorder", "bootorder");
    let e = restart::parse_enumeration(&unordered);
    assert_eq!(
        e.network_entry().map(|o| o.id.as_str()),
        Some("{1e4a9c05-5d1e-11ef-b3c4-806e6f6e6963}")
    );
    // An explicit IPv4 entry wins over one that names no protocol, wherever it is.
    let generic = tool("bcdedit-enum-firmware-ovmf.txt").replace("UiApp", "EFI Network");
    let e = restart::parse_enumeration(&generic);
    assert_eq!(
        e.network_entry().and_then(|o| o.description()),
        Some("UEFI PXEv4 (MAC:525400780001)")
    );
    // Only that one: it is chosen.
    let only_generic = generic.replace("UEFI PXEv4", "UEFI Disk");
    let e = restart::parse_enumeration(&only_generic);
    assert_eq!(
        e.network_entry().and_then(|o| o.description()),
        Some("EFI Network")
    );
    // LF line ends and /v's GUID for the boot manager read the same.
    let lf = tool("bcdedit-enum-firmware-ovmf.txt")
        .replace("\r\n", "\n")
        .replace("{fwbootmgr}", "{a5a30fa2-3d06-4e9f-b5f4-a01df9d1fcba}");
    assert_eq!(
        restart::parse_enumeration(&lf)
            .network_entry()
            .and_then(|o| o.description()),
        Some("UEFI PXEv4 (MAC:525400780001)")
    );
}

#[test]
fn the_entry_of_one_of_the_endpoints_nics_wins() {
    // OVMF with a second NIC's IPv4 entry: the endpoint's own NIC's entry is chosen.
    let two = tool("bcdedit-enum-firmware-ovmf.txt").replace(
        "UEFI HTTPv6 (MAC:525400780001)",
        "UEFI PXEv4 (MAC:525400990099)",
    );
    let e = restart::parse_enumeration(&two);
    let ours = e
        .network_entry_for(&["52:54:00:78:00:01".to_string()])
        .and_then(|o| o.description());
    assert_eq!(ours, Some("UEFI PXEv4 (MAC:525400780001)"));
    let other = e
        .network_entry_for(&["52-54-00-99-00-99".to_string()])
        .and_then(|o| o.description());
    assert_eq!(other, Some("UEFI PXEv4 (MAC:525400990099)"));
    // No entry names a MAC of the endpoint (the Dell's do not name any): the best network
    // entry, as without MACs.
    let dell = restart::parse_enumeration(&tool("bcdedit-enum-firmware-dell.txt"));
    assert_eq!(
        dell.network_entry_for(&["52:54:00:78:00:01".to_string()])
            .map(|o| o.id.as_str()),
        dell.network_entry().map(|o| o.id.as_str())
    );
    // A malformed MAC in the order is ignored, not matched loosely.
    assert_eq!(
        e.network_entry_for(&["nonsense".to_string()])
            .map(|o| o.id.as_str()),
        e.network_entry().map(|o| o.id.as_str())
    );
}

#[test]
fn a_translated_description_name_still_finds_the_network_entry() {
    // Should a language translate `description` too, the entry is judged by its values.
    let text = tool("bcdedit-enum-firmware-dell.txt").replace("description ", "Beschreibung");
    let e = restart::parse_enumeration(&text);
    assert_eq!(
        e.network_entry().map(|o| o.id.as_str()),
        Some("{1e4a9c04-5d1e-11ef-b3c4-806e6f6e6963}")
    );
}

/// A replay folder: the healthy machine's tool output plus `files`.
fn replay_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("replay/healthy")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    for (name, source) in files {
        std::fs::copy(fixture(&format!("tools/{source}")), dir.path().join(name)).unwrap();
    }
    dir
}

fn calls_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(CALLS_LOG))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn replay_plays_windows_and_logs_every_call() {
    let dir = replay_dir(&[(
        "bcdedit-enum-firmware.txt",
        "bcdedit-enum-firmware-ovmf.txt",
    )]);
    let exec = ReplayExec {
        dir: dir.path().to_path_buf(),
        code_page: Some(437),
    };
    let mut record = |_: &NetworkRestartOutcome| Ok(());
    let o = restart::act(&exec, &order(1), now(), &mut record).unwrap();
    assert_eq!(o.result, NetworkRestartResult::Scheduled);
    // calls.log is the golden transcript without the records.
    let w = FakeWindows::uefi(&tool("bcdedit-enum-firmware-ovmf.txt"));
    let (_, log) = run(&w, &order(1));
    assert_eq!(
        calls_log(dir.path()),
        calls(&log).into_iter().cloned().collect::<Vec<_>>()
    );
    assert!(calls_log(dir.path())[2].starts_with("shutdown.exe /r /t 60 /c recast: "));

    // No enumeration file: a BIOS machine.
    let dir = replay_dir(&[]);
    let exec = ReplayExec {
        dir: dir.path().to_path_buf(),
        code_page: None,
    };
    let o = restart::act(&exec, &order(1), now(), &mut record).unwrap();
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::NotUefi));
    assert_eq!(calls_log(dir.path()), vec!["bcdedit.exe /enum firmware"]);

    // NAME.fail.txt: the tool fails with those words.
    let dir = replay_dir(&[("bcdedit-enum-firmware.fail.txt", "bcdedit-not-elevated.txt")]);
    let exec = ReplayExec {
        dir: dir.path().to_path_buf(),
        code_page: None,
    };
    let o = restart::act(&exec, &order(1), now(), &mut record).unwrap();
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::NotElevated));

    let dir = replay_dir(&[
        (
            "bcdedit-enum-firmware.txt",
            "bcdedit-enum-firmware-dell.txt",
        ),
        ("shutdown.fail.txt", "shutdown-failed.txt"),
    ]);
    let exec = ReplayExec {
        dir: dir.path().to_path_buf(),
        code_page: None,
    };
    let o = restart::act(&exec, &order(3), now(), &mut record).unwrap();
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::ShutdownFailed));
    assert_eq!(calls_log(dir.path()).len(), 3);

    let dir = replay_dir(&[
        (
            "bcdedit-enum-firmware.txt",
            "bcdedit-enum-firmware-dell.txt",
        ),
        ("bcdedit-set.fail.txt", "bcdedit-set-failed.txt"),
    ]);
    let exec = ReplayExec {
        dir: dir.path().to_path_buf(),
        code_page: None,
    };
    let o = restart::act(&exec, &order(1), now(), &mut record).unwrap();
    assert_eq!(refused(&o), Some(NetworkRestartRefusal::BcdeditFailed));
    assert_eq!(calls_log(dir.path()).len(), 2);
}

/// A gateway on 127.0.0.1 that accepts every report, keeps its JSON and answers `reply`.
fn gateway(reply: serde_json::Value) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head_end, length) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(i + 4), length);
                }
            };
            let Some(start) = head_end else { continue };
            while buf.len() < start + length {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if let Ok(v) = serde_json::from_slice(&buf[start..(start + length).min(buf.len())]) {
                kept.lock().unwrap().push(v);
            }
            let body = reply.to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn the_binary_acts_once_and_reports_the_outcome_at_once() {
    let dir = replay_dir(&[(
        "bcdedit-enum-firmware.txt",
        "bcdedit-enum-firmware-ovmf.txt",
    )]);
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let state_file = work.path().join("state.json");
    let (url, seen) = gateway(serde_json::json!({
        "updateHold": {"held": false, "reason": "Managed"},
        "restartIntoNetwork": {"attemptId": ATTEMPT, "tryNumber": 1, "delaySeconds": 90},
    }));
    let run_once = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recast-agent"))
            .args(["run", "--once", "--endpoint", "kiosk-01", "--gateway", &url])
            .arg("--replay")
            .arg(dir.path())
            .arg("--token-file")
            .arg(&token)
            .arg("--state-file")
            .arg(&state_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run_once();
    let reports = seen.lock().unwrap().clone();
    // The report that got the order, then at once the one that says what became of it.
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports[0].get("networkRestart").is_none());
    let outcome = &reports[1]["networkRestart"];
    assert_eq!(outcome["result"], "Scheduled", "{outcome}");
    assert_eq!(outcome["attemptId"], ATTEMPT);
    assert_eq!(outcome["tryNumber"], 1);
    let log = calls_log(dir.path());
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(
        log[2],
        format!(
            "shutdown.exe /r /t 90 /c recast: restarting into the network to reimage this machine (attempt {ATTEMPT}, try 1)"
        )
    );

    // The same order again (the machine has not restarted yet): nothing is run, and the
    // report still carries the outcome.
    run_once();
    let reports = seen.lock().unwrap().clone();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert_eq!(reports[2]["networkRestart"]["result"], "Scheduled");
    assert_eq!(calls_log(dir.path()).len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever bcdedit prints, reading it never panics and never picks an IPv6 or HTTP entry.
    #[test]
    fn any_output_is_read_without_panic(text in "(\\PC{0,40}(\r\n|\n)){0,30}", success in any::<bool>()) {
        let e = restart::parse_enumeration(&text);
        if let Some(o) = e.network_entry() {
            let d = o.description().unwrap_or_default();
            prop_assert!(!matches!(restart::network_boot(d), Some(NetworkBoot::Ipv6 | NetworkBoot::Http)));
        }
        let w = FakeWindows::new(ExecOutput { success, stdout: text.clone() });
        let mut record = |_: &NetworkRestartOutcome| Ok(());
        let o = restart::act(&w, &order(1), now(), &mut record).unwrap();
        prop_assert!(o.detail.len() <= MAX_TEXT);
        prop_assert!(!o.detail.chars().any(char::is_control));
    }

    /// Mutations of a real enumeration (lines dropped or duplicated) never panic.
    #[test]
    fn mutated_fixtures_never_panic(drop in proptest::collection::vec(any::<bool>(), 80)) {
        let text = tool("bcdedit-enum-firmware-dell.txt");
        let kept: String = text
            .split_inclusive("\r\n")
            .zip(drop.iter().cycle())
            .filter(|(_, d)| !**d)
            .map(|(l, _)| l)
            .collect();
        let _ = restart::parse_enumeration(&kept).network_entry();
    }
}
