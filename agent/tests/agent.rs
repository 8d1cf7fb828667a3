//! The agent's parsers and collector on tool output in the exact shape Windows prints it
//! (agent/tests/fixtures), and the binary's `collect --replay`.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use proptest::prelude::*;
use recast_agent::collect::{self, CommandRunner, Identity, Probe, ReplayRunner, ToolOutput};
use recast_agent::events::{self, EventXmlError, Payload};
use recast_crds::report::{AgentReport, CrashSource, ServicingOutcome, UpdateOutcome};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

fn who() -> Identity {
    Identity {
        endpoint: "kiosk-01".into(),
        agent_version: "0.1.0".into(),
        attempt_id: None,
        interval_seconds: 300,
    }
}

fn now() -> Timestamp {
    "2026-01-15T09:02:11Z".parse().unwrap()
}

#[test]
fn windows_update_client_events() {
    let raw = events::parse_events(&read("events/wuc-failed-lcu.xml")).unwrap();
    assert_eq!(raw.len(), 6);
    assert_eq!(raw[0].provider, "Microsoft-Windows-WindowsUpdateClient");
    assert_eq!(
        raw[0].provider_guid.as_deref(),
        Some("{945A8954-C147-4ACD-923F-40C45405A658}")
    );
    assert_eq!(raw[0].record_id, Some(48213));
    assert_eq!(raw[0].channel.as_deref(), Some("System"));
    let typed: Vec<_> = raw
        .iter()
        .map(|e| events::to_update_event(e).unwrap().unwrap())
        .collect();
    let lcu = &typed[0];
    assert_eq!(lcu.event_id, 20);
    assert_eq!(lcu.outcome, UpdateOutcome::Failed);
    // The event log's own rendering: nine fractional digits, kept as written.
    assert_eq!(lcu.time, "2026-01-14T08:41:02.558012700Z");
    assert_eq!(lcu.error_code.as_deref(), Some("0x800f0922"));
    assert_eq!(
        lcu.title,
        "2026-01 Cumulative Update for Windows 11 Version 24H2 for x64-based Systems (KB5074109) (26100.7623)"
    );
    assert_eq!(lcu.revision, Some(1));
    assert_eq!(typed[1].outcome, UpdateOutcome::Installed);
    assert_eq!(typed[1].revision, Some(200));
    assert_eq!(typed[2].outcome, UpdateOutcome::Started);
    assert_eq!(typed[2].error_code, None);
    assert_eq!(
        typed
            .iter()
            .filter(|u| u.outcome == UpdateOutcome::Failed)
            .count(),
        3
    );
}

#[test]
fn localised_rendering_info_is_ignored_and_no_root_is_accepted() {
    let raw = events::parse_events(&read("events/wuc-rendered-de.xml")).unwrap();
    assert_eq!(raw.len(), 1);
    let u = events::to_update_event(&raw[0]).unwrap().unwrap();
    let plain = events::parse_events(&read("events/wuc-failed-lcu.xml")).unwrap();
    let p = events::to_update_event(&plain[0]).unwrap().unwrap();
    // Same event, German message text: the typed result is identical.
    assert_eq!(u, p);
}

#[test]
fn servicing_user_data() {
    let raw = events::parse_events(&read("events/servicing-failed-lcu.xml")).unwrap();
    match &raw[0].payload {
        Payload::UserData { element, fields } => {
            assert_eq!(element, "CbsPackageChangeState");
            assert_eq!(fields[0], ("PackageIdentifier".into(), "KB5074109".into()));
        }
        other => panic!("{other:?}"),
    }
    let typed: Vec<_> = raw
        .iter()
        .map(|e| events::to_servicing_event(e).unwrap().unwrap())
        .collect();
    let outcomes: Vec<_> = typed.iter().map(|s| s.outcome).collect();
    assert_eq!(
        outcomes,
        [
            ServicingOutcome::FailedPartiallyInstalled,
            ServicingOutcome::RebootRequired,
            ServicingOutcome::Initiated,
            ServicingOutcome::Failed,
            ServicingOutcome::Failed,
            ServicingOutcome::Succeeded,
        ]
    );
    assert_eq!(typed[0].error_code.as_deref(), Some("0x800f0922"));
    assert_eq!(typed[0].intended_state.as_deref(), Some("Installed"));
    // The LCU and its RollupFix package are installed by the update stack's LCU client; the
    // .NET update by the Windows Update agent.
    assert_eq!(typed[0].client.as_deref(), Some("UpdateAgentLCU"));
    assert_eq!(
        typed[3].package,
        "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.10"
    );
    assert_eq!(typed[3].client.as_deref(), Some("UpdateAgentLCU"));
    assert_eq!(typed[4].client.as_deref(), Some("WindowsUpdateAgent"));
    // Event 1 carries CbsPackageInitiateChanges, which has no ErrorCode.
    assert_eq!(typed[2].error_code, None);
}

#[test]
fn crashes() {
    let raw = events::parse_events(&read("events/crashes-boot-volume.xml")).unwrap();
    let typed: Vec<_> = raw
        .iter()
        .map(|e| events::to_crash_event(e).unwrap().unwrap())
        .collect();
    assert_eq!(typed[0].source, CrashSource::WerBugcheck);
    assert_eq!(typed[0].bugcheck_code, Some(0xED));
    assert_eq!(
        typed[0].parameters,
        [0xffffa50d1c8f2060, 0xffffffffc0000185, 0, 0]
    );
    // Kernel-Power writes the code in decimal: 237 is 0xED.
    assert_eq!(typed[1].source, CrashSource::KernelPower);
    assert_eq!(typed[1].bugcheck_code, Some(0xED));
    assert_eq!(typed[2].source, CrashSource::UnexpectedShutdown);
    assert_eq!(typed[2].bugcheck_code, None);
    // Kernel-Power 41 with code 0: a power loss, not a bugcheck.
    assert_eq!(typed[3].bugcheck_code, None);
    assert_eq!(typed[4].bugcheck_code, Some(0x50));
}

#[test]
fn boot_time_from_kernel_general() {
    let raw = events::parse_events(&read("events/boot.xml")).unwrap();
    assert_eq!(
        events::to_boot_time(&raw[0]).as_deref(),
        Some("2026-01-15T08:02:11.8741221Z")
    );
    assert!(
        events::parse_events(&read("events/empty.xml"))
            .unwrap()
            .is_empty()
    );
    assert!(events::parse_events(b"").unwrap().is_empty());
}

#[test]
fn other_providers_are_not_typed_as_ours() {
    let raw = events::parse_events(&read("events/crashes-boot-volume.xml")).unwrap();
    assert!(events::to_update_event(&raw[0]).is_none());
    assert!(events::to_servicing_event(&raw[0]).is_none());
    let raw = events::parse_events(&read("events/wuc-failed-lcu.xml")).unwrap();
    assert!(events::to_crash_event(&raw[0]).is_none());
}

#[test]
fn malformed_event_xml_gets_typed_errors() {
    let ns = events::EVENT_NS;
    type Check = fn(&EventXmlError) -> bool;
    let cases: Vec<(String, Check)> = vec![
        ("<Events><Event".into(), |e| {
            matches!(e, EventXmlError::Xml(_))
        }),
        ("<Events><Event xmlns='urn:other'/></Events>".into(), |e| {
            matches!(e, EventXmlError::Event { index: 0, .. })
        }),
        (
            format!("<Events><Event xmlns='{ns}'><System/></Event></Events>"),
            |e| matches!(e, EventXmlError::Event { .. }),
        ),
        (
            format!(
                "<Events><Event xmlns='{ns}'><System><Provider Name='X'/><EventID>x</EventID><TimeCreated SystemTime='2026-01-01T00:00:00Z'/></System></Event></Events>"
            ),
            |e| matches!(e, EventXmlError::Event { .. }),
        ),
        (
            format!(
                "<Events><Event xmlns='{ns}'><System><Provider Name='X'/><EventID>1</EventID><TimeCreated SystemTime='soon'/></System></Event></Events>"
            ),
            |e| matches!(e, EventXmlError::Event { .. }),
        ),
        // A DTD with entities is refused outright (no entity expansion).
        (
            "<!DOCTYPE x [<!ENTITY a 'aaaa'>]><Events>&a;</Events>".into(),
            |e| matches!(e, EventXmlError::Xml(_)),
        ),
    ];
    for (xml, check) in cases {
        let err = events::parse_events(xml.as_bytes()).unwrap_err();
        assert!(check(&err), "{xml}: {err:?}");
    }
    let huge = vec![b' '; events::MAX_XML_BYTES + 1];
    assert!(matches!(
        events::parse_events(&huge),
        Err(EventXmlError::TooLarge(_))
    ));
}

#[test]
fn an_event_missing_its_fields_is_an_error_not_a_guess() {
    let ns = events::EVENT_NS;
    let sys = |provider: &str, id: u32| {
        format!(
            "<System><Provider Name='{provider}'/><EventID>{id}</EventID><TimeCreated SystemTime='2026-01-14T08:41:02Z'/></System>"
        )
    };
    let one = |body: String| {
        events::parse_events(format!("<Event xmlns='{ns}'>{body}</Event>").as_bytes())
            .unwrap()
            .remove(0)
    };
    let e = one(sys("Microsoft-Windows-WindowsUpdateClient", 20)
        + "<EventData><Data Name='updateTitle'>x</Data></EventData>");
    assert!(
        events::to_update_event(&e).unwrap().is_err(),
        "a failure without errorCode"
    );
    let e = one(sys("Microsoft-Windows-WindowsUpdateClient", 19));
    assert!(events::to_update_event(&e).unwrap().is_err());
    let e = one(
        sys("Microsoft-Windows-Servicing", 3) + "<UserData><CbsPackageChangeState/></UserData>"
    );
    assert!(events::to_servicing_event(&e).unwrap().is_err());
    let e = one(sys("Microsoft-Windows-WER-SystemErrorReporting", 1001)
        + "<EventData><Data Name='param1'>garbage</Data></EventData>");
    assert!(events::to_crash_event(&e).unwrap().is_err());
    let e = one(sys("Microsoft-Windows-Kernel-Power", 41)
        + "<EventData><Data Name='BugcheckCode'>ed</Data></EventData>");
    assert!(events::to_crash_event(&e).unwrap().is_err());
    // Unknown ids of our providers are simply not ours.
    let e = one(sys("Microsoft-Windows-WindowsUpdateClient", 44));
    assert!(events::to_update_event(&e).is_none());
}

#[test]
fn reg_and_fsutil_fixtures() {
    use recast_agent::tools;
    let text = |rel: &str| String::from_utf8(read(rel)).unwrap();
    assert_eq!(
        tools::reg_sz_number(&text("tools/reg-currentbuild.txt"), "CurrentBuild").unwrap(),
        26100
    );
    assert_eq!(
        tools::reg_dword(&text("tools/reg-ubr.txt"), "UBR").unwrap(),
        7462
    );
    assert_eq!(
        tools::reg_dword(&text("tools/reg-ubr-7623.txt"), "UBR").unwrap(),
        7623
    );
    assert_eq!(
        tools::reg_dword(&text("tools/reg-sessionspending-busy.txt"), "Exclusive").unwrap(),
        3
    );
    // Windows Setup's ImageState: complete after OOBE, a reseal state before.
    assert_eq!(
        tools::reg_sz(&text("tools/reg-imagestate.txt"), "ImageState").unwrap(),
        "IMAGE_STATE_COMPLETE"
    );
    assert_eq!(
        tools::reg_sz(&text("tools/reg-imagestate-oobe.txt"), "ImageState").unwrap(),
        "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE"
    );
    // A DWORD where a string belongs says so.
    assert!(
        tools::reg_sz(&text("tools/reg-ubr.txt"), "UBR")
            .unwrap_err()
            .to_string()
            .contains("REG_SZ")
    );
    for f in [
        "tools/fsutil-diskfree.txt",
        "tools/fsutil-diskfree-win10.txt",
    ] {
        assert_eq!(
            tools::parse_diskfree(&text(f)).unwrap(),
            (52_343_234_560, 255_380_000_768),
            "{f}"
        );
    }
}

#[test]
fn collect_from_a_failed_rollback_replay() {
    let runner = ReplayRunner {
        dir: fixture("replay/failed-rollback"),
    };
    let r = collect::collect(&runner, &who(), 42, now()).unwrap();
    r.validate().unwrap();
    assert_eq!(r.os.build_string(), "26100.7462");
    assert_eq!(r.sequence, 42);
    assert_eq!(r.update_events.len(), 6);
    assert_eq!(r.servicing_events.len(), 6);
    assert!(r.crashes.is_empty());
    assert!(r.pending.reboot_pending);
    assert!(
        !r.pending.packages_pending,
        "no reg-packagespending.txt: key absent"
    );
    assert!(!r.pending.sessions_pending, "Exclusive is 0");
    assert!(r.pending.pending_xml);
    assert_eq!(r.boot_time.as_deref(), Some("2026-01-15T08:02:11.8741221Z"));
    assert_eq!(r.uptime_seconds, Some(3599));
    assert_eq!(r.system_disk.unwrap().free_bytes, 52_343_234_560);
    assert!(r.collection_errors.is_empty(), "{:?}", r.collection_errors);
    // And it survives the wire.
    let back = AgentReport::from_json(&serde_json::to_vec(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn collect_from_boot_crash_and_healthy_replays() {
    let crash = collect::collect(
        &ReplayRunner {
            dir: fixture("replay/boot-crash"),
        },
        &who(),
        1,
        now(),
    )
    .unwrap();
    assert_eq!(crash.crashes.len(), 5);
    assert_eq!(crash.crashes[0].bugcheck_code, Some(0xED));
    let healthy = collect::collect(
        &ReplayRunner {
            dir: fixture("replay/healthy"),
        },
        &who(),
        1,
        now(),
    )
    .unwrap();
    assert_eq!(healthy.os.build_string(), "26100.7623");
    assert_eq!(healthy.setup_state.as_deref(), Some("IMAGE_STATE_COMPLETE"));
    // A machine whose reg.exe finds no ImageState (the replay has no file) says nothing.
    assert_eq!(crash.setup_state, None);
    assert!(
        healthy
            .update_events
            .iter()
            .all(|u| u.outcome != UpdateOutcome::Failed)
    );
    assert_eq!(healthy.pending, Default::default());
}

#[test]
fn every_tool_is_started_from_system32() {
    use std::ffi::OsStr;
    assert_eq!(
        collect::system_tool(Some(OsStr::new(r"C:\Windows")), "reg.exe"),
        std::path::PathBuf::from(r"C:\Windows\System32\reg.exe")
    );
    // Not Windows (tests, simulate): the bare name; an empty SystemRoot counts as none.
    assert_eq!(
        collect::system_tool(None, "reg.exe"),
        std::path::PathBuf::from("reg.exe")
    );
    assert_eq!(
        collect::system_tool(Some(OsStr::new("")), "reg.exe"),
        std::path::PathBuf::from("reg.exe")
    );
    for probe in Probe::ALL {
        let (program, args) = probe.command();
        assert!(
            ["wevtutil.exe", "reg.exe", "fsutil.exe", "cmd.exe"].contains(&program),
            "{probe:?}: {program}"
        );
        if program == "wevtutil.exe" {
            assert!(args.contains(&"/uni:true".to_string()), "{probe:?}");
        }
    }
}

/// The same three machines on German, French, Japanese and Chinese Windows
/// (fixtures/locales.py): UTF-16LE wevtutil output with and without a BOM, localised titles,
/// reg and fsutil in the console's OEM code page. The agent reads the same facts from them.
#[test]
fn every_locale_collects_what_english_does() {
    for scenario in ["failed-rollback", "boot-crash", "healthy"] {
        let en = collect::collect(
            &ReplayRunner {
                dir: fixture(&format!("replay/{scenario}")),
            },
            &who(),
            1,
            now(),
        )
        .unwrap();
        for locale in ["de-DE", "fr-FR", "ja-JP", "zh-CN"] {
            let dir = fixture(&format!("replay-locales/{locale}/{scenario}"));
            let r = collect::collect(&ReplayRunner { dir }, &who(), 1, now()).unwrap();
            let at = format!("{locale}/{scenario}");
            assert!(
                r.collection_errors.is_empty(),
                "{at}: {:?}",
                r.collection_errors
            );
            r.validate().unwrap();
            assert_eq!(r.os, en.os, "{at}");
            assert_eq!(r.pending, en.pending, "{at}");
            assert_eq!(r.system_disk, en.system_disk, "{at}");
            assert_eq!(r.boot_time, en.boot_time, "{at}");
            let facts = |r: &AgentReport| {
                r.update_events
                    .iter()
                    .map(|u| (u.event_id, u.outcome, u.error_code.clone(), u.revision))
                    .collect::<Vec<_>>()
            };
            assert_eq!(facts(&r), facts(&en), "{at}");
            let times = |r: &AgentReport| {
                r.update_events
                    .iter()
                    .map(|u| recast_crds::report::parse_timestamp(&u.time))
                    .collect::<Vec<_>>()
            };
            assert_eq!(times(&r), times(&en), "{at}: 9 fractional digits");
            let servicing = |r: &AgentReport| {
                r.servicing_events
                    .iter()
                    .map(|e| {
                        let mut e = e.clone();
                        e.time = recast_crds::report::parse_timestamp(&e.time)
                            .map(|t| t.to_string())
                            .unwrap_or_default();
                        e
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(servicing(&r), servicing(&en), "{at}");
            let crashes = |r: &AgentReport| {
                r.crashes
                    .iter()
                    .map(|c| {
                        (
                            c.bugcheck_code,
                            recast_crds::report::parse_timestamp(&c.time),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(crashes(&r), crashes(&en), "{at}");
            // The titles arrive in the system's language, whole.
            if scenario == "failed-rollback" {
                assert!(
                    r.update_events.iter().all(|u| u.title.is_empty()
                        || !u.title.contains("Cumulative Update for Windows")),
                    "{at}"
                );
            }
        }
    }
}

/// The code page is what makes a localised tool message readable: a Japanese fsutil that
/// printed something unexpected is reported in Japanese, not as mojibake.
#[test]
fn a_localised_tool_message_is_reported_readably() {
    for (locale, label, encoding) in [
        ("ja-JP", "空きバイト総数", "cp932"),
        ("zh-CN", "可用字节总数", "cp936"),
        ("de-DE", "Gesamtanzahl verfügbarer Bytes", "cp850"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(fixture(&format!("replay-locales/{locale}/healthy"))).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
        let text = format!("{label} : ???\r\n");
        let bytes = match encoding {
            "cp932" => encoding_rs::SHIFT_JIS.encode(&text).0.into_owned(),
            "cp936" => encoding_rs::GBK.encode(&text).0.into_owned(),
            _ => text
                .chars()
                .map(|c| if c == 'ü' { 0x81 } else { c as u8 })
                .collect(),
        };
        std::fs::write(dir.path().join("fsutil-diskfree.txt"), bytes).unwrap();
        let r = collect::collect(
            &ReplayRunner {
                dir: dir.path().to_path_buf(),
            },
            &who(),
            1,
            now(),
        )
        .unwrap();
        assert!(
            r.collection_errors.iter().any(|e| e.contains(label)),
            "{locale}: {:?}",
            r.collection_errors
        );
    }
}

/// A runner where one tool is broken: the rest of the report still arrives, with the reason.
struct Broken {
    inner: ReplayRunner,
    broken: Probe,
    output: &'static [u8],
}

impl CommandRunner for Broken {
    fn run(&self, probe: Probe) -> Result<ToolOutput, collect::RunError> {
        if probe == self.broken {
            return Ok(ToolOutput {
                success: true,
                stdout: self.output.to_vec(),
            });
        }
        self.inner.run(probe)
    }
}

#[test]
fn a_broken_tool_leaves_a_partial_report_that_says_so() {
    let runner = Broken {
        inner: ReplayRunner {
            dir: fixture("replay/failed-rollback"),
        },
        broken: Probe::ServicingEvents,
        output: b"<Events><Event",
    };
    let r = collect::collect(&runner, &who(), 1, now()).unwrap();
    assert!(r.servicing_events.is_empty());
    assert_eq!(r.update_events.len(), 6);
    assert_eq!(r.collection_errors.len(), 1);
    assert!(
        r.collection_errors[0].contains("wevtutil-servicing.xml"),
        "{:?}",
        r.collection_errors
    );
    r.validate().unwrap();

    // Without the build there is no report at all.
    let runner = Broken {
        inner: ReplayRunner {
            dir: fixture("replay/failed-rollback"),
        },
        broken: Probe::Ubr,
        output: b"\r\nHKEY_LOCAL_MACHINE\\X\r\n    UBR    REG_SZ    x\r\n",
    };
    assert!(collect::collect(&runner, &who(), 1, now()).is_err());
    let empty = std::env::temp_dir().join(format!("recast-agent-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(collect::collect(&ReplayRunner { dir: empty.clone() }, &who(), 1, now()).is_err());
    assert!(collect::check_replay_dir(&empty).is_err());
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn every_probe_has_a_distinct_replay_file_and_a_windows_command() {
    let mut names: Vec<_> = Probe::ALL.iter().map(|p| p.replay_file()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Probe::ALL.len());
    for p in Probe::ALL {
        let (program, args) = p.command();
        assert!(program.ends_with(".exe"), "{program}");
        assert!(!args.is_empty());
    }
    let (_, args) = Probe::UpdateEvents.command();
    assert!(args.contains(&"/f:xml".to_string()));
    assert!(args.contains(&"/rd:true".to_string()));
}

#[test]
fn the_binary_collects_from_a_replay_folder() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recast-agent"))
        .args(["collect", "--endpoint", "kiosk-01", "--replay"])
        .arg(fixture("replay/failed-rollback"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = AgentReport::from_json(&out.stdout).unwrap();
    assert_eq!(r.endpoint, "kiosk-01");
    assert_eq!(r.os.ubr, 7462);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recast-agent"))
        .args([
            "collect",
            "--endpoint",
            "kiosk-01",
            "--replay",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reg-currentbuild.txt"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Fuzz: arbitrary bytes never panic the parser.
    #[test]
    fn event_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = events::parse_events(&bytes);
    }

    /// Fuzz: fixtures with a byte range cut out or overwritten never panic, and whatever parses
    /// converts without panicking either.
    #[test]
    fn event_parser_never_panics_on_mutated_fixtures(
        which in 0usize..5,
        start in 0usize..6000,
        len in 0usize..64,
        fill in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let files = [
            "events/wuc-failed-lcu.xml",
            "events/servicing-failed-lcu.xml",
            "events/crashes-boot-volume.xml",
            "events/boot.xml",
            "events/wuc-rendered-de.xml",
        ];
        let mut bytes = read(files[which]);
        let start = start.min(bytes.len());
        let end = (start + len).min(bytes.len());
        if cut {
            bytes.drain(start..end);
        } else {
            for b in &mut bytes[start..end] {
                *b = fill;
            }
        }
        if let Ok(evs) = events::parse_events(&bytes) {
            for e in &evs {
                let _ = events::to_update_event(e);
                let _ = events::to_servicing_event(e);
                let _ = events::to_crash_event(e);
                let _ = events::to_boot_time(e);
            }
        }
    }

    /// Fuzz: the report decoder refuses or accepts, never panics.
    #[test]
    fn report_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = AgentReport::from_json(&bytes);
    }

    #[test]
    fn reg_and_diskfree_parsers_never_panic(s in ".{0,300}") {
        let _ = recast_agent::tools::reg_dword(&s, "UBR");
        let _ = recast_agent::tools::reg_sz_number(&s, "CurrentBuild");
        let _ = recast_agent::tools::parse_diskfree(&s);
    }
}

#[test]
fn the_console_code_page_is_read_and_its_failures_reported() {
    use recast_agent::collect::{RunError, ToolOutput, code_page_of};
    let out = |success: bool, cp: &str| {
        ToolOutput {
        success,
        stdout: format!(
            "\r\nHKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Control\\Nls\\CodePage\r\n    OEMCP    REG_SZ    {cp}\r\n\r\n"
        )
        .into_bytes(),
    }
    };
    for cp in [437u16, 850, 932, 936] {
        assert_eq!(
            code_page_of(Ok(out(true, &cp.to_string()))),
            (Some(cp), None)
        );
    }
    // A code page recast has no table for: ASCII, and the report says so.
    let (cp, problem) = code_page_of(Ok(out(true, "1234")));
    assert_eq!(cp, None);
    assert!(problem.unwrap().contains("code page 1234"));
    // Value absent (reg.exe exits 1), nonsense, the tool not starting: each reported.
    for probe in [
        Ok(out(false, "")),
        Ok(out(true, "achthundertfünfzig")),
        Err(RunError::Timeout {
            program: "reg.exe".into(),
            seconds: 30,
        }),
    ] {
        let (cp, problem) = code_page_of(probe);
        assert_eq!(cp, None);
        assert!(problem.unwrap().contains("read as ASCII"));
    }
}
