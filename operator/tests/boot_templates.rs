//! Golden tests of every rendered boot file, for every boot mode. Windows cannot run here, so
//! the files WinPE and Windows Setup read are pinned byte for byte (operator/tests/golden/boot)
//! and their load-bearing lines are asserted by name. `RECAST_UPDATE_GOLDEN=1` rewrites the
//! golden files after a deliberate template change; review the diff.

use std::path::PathBuf;

use std::collections::BTreeMap;

use recast_crds::common::SecretRef;
use recast_crds::policy::{
    DomainJoin, FirstLogonCommand, Join, LocalAccount, OfflineDomainJoin, ProvisioningProfile,
    SecretKeyRef,
};
use recast_operator::boot::provisioning::{self, Provisioning, SiteDefaults, obscure_password};
use recast_operator::boot::render::{
    AttemptView, ImageFile, ImagingEnvironment, Renderer, SiteSettings,
};
use recast_operator::store::BootIntent;

const BASE: &str = "http://10.0.40.2:8081";

fn intent(mode: &str) -> BootIntent {
    BootIntent {
        namespace: "store-042".into(),
        endpoint: "kiosk-01".into(),
        mac_addresses: vec!["52:54:00:a1:00:01".into()],
        attempt_id: "kiosk-01-7f3a".into(),
        try_number: 2,
        image: "win11-24h2-2026-01".into(),
        image_digest: Some(
            "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011".into(),
        ),
        boot_mode: mode.into(),
        armed_at: "2026-01-14T08:00:00Z".into(),
    }
}

fn image() -> ImageFile {
    ImageFile {
        url: format!(
            "{BASE}/artifacts/images/3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011.wim"
        ),
        sha256: "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011".into(),
        size: 5_368_709_120,
        index: 1,
    }
}

fn golden(name: &str, actual: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/boot");
    recast_tests::assert_golden(&dir.join(name), actual);
}

#[test]
fn ipxe_scripts() {
    let r = Renderer::new().unwrap();
    let boot = r.boot_ipxe(BASE).unwrap();
    assert!(boot.starts_with("#!ipxe\n"));
    assert!(boot.contains("chain --autofree http://10.0.40.2:8081/boot/${net0/mac}"));
    golden("boot.ipxe", &boot);

    let local_bios = r.local("store-042/kiosk-01", "bios").unwrap();
    assert!(local_bios.contains("sanboot --no-describe --drive 0x80"));
    golden("local-bios.ipxe", &local_bios);
    let local_uefi = r.local("store-042/kiosk-01", "uefi").unwrap();
    assert!(!local_uefi.contains("sanboot"));
    assert!(local_uefi.trim_end().ends_with("exit"));
    golden("local-uefi.ipxe", &local_uefi);

    for mode in ["uefi", "bios"] {
        let i = intent(mode);
        let view = AttemptView::new(BASE, None, &i);
        let winpe = r
            .imaging_script(ImagingEnvironment::Winpe, BASE, &view)
            .unwrap();
        for line in [
            "kernel http://10.0.40.2:8081/artifacts/winpe/wimboot gui",
            "initrd http://10.0.40.2:8081/artifacts/winpe/BCD BCD",
            "initrd http://10.0.40.2:8081/artifacts/winpe/boot.sdi boot.sdi",
            "initrd http://10.0.40.2:8081/artifacts/winpe/boot.wim boot.wim",
            "initrd http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/startnet.cmd startnet.cmd",
            "initrd http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/winpeshl.ini winpeshl.ini",
        ] {
            assert!(winpe.contains(line), "{mode}: missing {line:?}\n{winpe}");
        }
        // Anyone can ask for this script: it names what to boot and holds no secret.
        assert!(!winpe.contains("token"), "{winpe}");
        golden(&format!("imaging-winpe-{mode}.ipxe"), &winpe);
        let linux = r
            .imaging_script(ImagingEnvironment::Linux, BASE, &view)
            .unwrap();
        assert!(linux.contains(
            "recast.claim=http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/claim"
        ));
        assert!(!linux.contains("token"), "{linux}");
        golden(&format!("imaging-linux-{mode}.ipxe"), &linux);
        let wds = r.wds("store-042", "kiosk-01", mode, "10.0.40.9").unwrap();
        let expected = if mode == "bios" {
            "chain tftp://10.0.40.9/boot\\x64\\wdsnbp.com"
        } else {
            "chain tftp://10.0.40.9/boot\\x64\\wdsmgfw.efi"
        };
        assert!(wds.contains(expected), "{wds}");
        golden(&format!("wds-{mode}.ipxe"), &wds);
    }
}

/// Options of every curl call in the rendered script, with `%RECAST_CURL%`, `%RECAST_RETRY%`
/// and `%RECAST_GET%` expanded: (line, options).
fn curl_calls(script: &str) -> Vec<(String, Vec<String>)> {
    let var = |name: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("set \"{name}=")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_else(|| panic!("{name} is not set"))
    };
    let curl = var("RECAST_CURL");
    let retry = var("RECAST_RETRY");
    let get = var("RECAST_GET")
        .replace("%RECAST_CURL%", &curl)
        .replace("%RECAST_RETRY%", &retry);
    script
        .lines()
        .filter(|l| !l.starts_with("rem ") && !l.starts_with("set \"RECAST_"))
        .filter(|l| {
            l.contains("curl.exe") || l.contains("%RECAST_CURL%") || l.contains("%RECAST_GET%")
        })
        .map(|l| {
            let expanded = l
                .replace("%RECAST_GET%", &get)
                .replace("%RECAST_CURL%", &curl)
                .replace("%RECAST_RETRY%", &retry);
            let options = expanded
                .split_whitespace()
                .filter(|w| w.starts_with('-') && w.len() > 1)
                .map(str::to_string)
                .collect();
            (l.to_string(), options)
        })
        .collect()
}

/// curl's options with the release that added each (curl's own docs): all at most 7.55.1, the
/// curl in Windows since 1803, so any curl a kit carries has them. `--retry-all-errors` (7.71)
/// is the one the script once used.
const CURL_OPTIONS: &[(&str, &str)] = &[
    ("-s", "4.0"),
    ("-S", "5.9"),
    ("--fail", "4.0"),
    ("--connect-timeout", "7.7"),
    ("--cacert", "7.5"),
    ("--retry", "7.12.3"),
    ("--retry-delay", "7.12.3"),
    ("--retry-connrefused", "7.52.0"),
    ("-X", "4.0"),
    ("-H", "4.0"),
    ("-d", "4.0"),
    ("--data-binary", "7.2"),
    ("-o", "4.0"),
    ("-C", "4.0"),
];

/// Asserts `needles` occur in `script` in this order.
fn in_order(script: &str, needles: &[&str]) {
    let mut at = 0;
    for n in needles {
        match script[at..].find(n) {
            Some(i) => at += i + n.len(),
            None => {
                panic!("{n:?} is missing or out of order (searched after byte {at}):\n{script}")
            }
        }
    }
}

#[test]
fn startnet_runs_the_imagers_steps_in_its_order_for_each_boot_mode() {
    let r = Renderer::new().unwrap();
    let site = SiteSettings::default();
    for (mode, bcdboot) in [
        (
            "uefi",
            "W:\\Windows\\System32\\bcdboot.exe W:\\Windows /s S: /f UEFI",
        ),
        (
            "bios",
            "W:\\Windows\\System32\\bcdboot.exe W:\\Windows /s S: /f BIOS",
        ),
    ] {
        let i = intent(mode);
        let script = r
            .startnet(&AttemptView::new(BASE, None, &i), &image(), &site)
            .unwrap();
        // Windows' cmd.exe wants CRLF.
        assert!(script.contains("\r\n") && !script.replace("\r\n", "").contains('\n'));
        in_order(
            &script,
            &[
                // WinPE's start, once.
                "\r\nwpeinit\r\n",
                "wpeutil WaitForNetwork",
                // Preflight, tools: before anything else.
                "for %%t in (curl.exe wbem\\WMIC.exe diskpart.exe Dism.exe certutil.exe reg.exe xcopy.exe wpeutil.exe wpeinit.exe)",
                "if not exist \"%SystemRoot%\\System32\\%%t\"",
                // certutil must work before the wipe: it checks the image after it.
                "certutil -hashfile \"%~f0\" SHA256 >nul || (",
                // The try is claimed: a machine that cannot claim it leaves the disk alone.
                "\"%RECAST_URL%/claim?format=text\"",
                "if not defined RECAST_TOKEN",
                // The task (provisioning checked) and the credential files, before any write.
                "\"%RECAST_URL%/task\"",
                "\"%RECAST_URL%/unattend.xml\"",
                "\"%RECAST_URL%/agent.json\"",
                // Preflight, machine: what WinPE sees, judged by the boot service.
                "reg query HKLM\\System\\CurrentControlSet\\Control /v PEFirmwareType",
                "wmic csproduct get IdentifyingNumber,Name,UUID,Vendor /value",
                "wmic bios get SMBIOSMajorVersion,SMBIOSMinorVersion /value",
                "wmic diskdrive get Index,InterfaceType,MediaType,Model,SerialNumber,Size /value",
                "--data-binary @X:\\recast-machine.txt -o X:\\recast-plan.txt \"%RECAST_URL%/preflight\"",
                "for /f \"usebackq tokens=1,* delims==\" %%a in (\"X:\\recast-plan.txt\") do set \"RECAST_%%a=%%b\"",
                "if not defined RECAST_DISK",
                // The disk the plan names, online and writable, then wiped.
                "echo select disk %RECAST_DISK%",
                "echo online disk noerr",
                "echo attributes disk clear readonly noerr",
                "echo clean",
                "diskpart /s X:\\recast-diskpart.txt",
                "mkdir W:\\recast\\scratch",
                // A real resume loop: curl -C - again after a drop, up to 10 times.
                ":download\r\n",
                "set /a RECAST_DOWNLOAD+=1",
                "-C - -o W:\\recast\\image.wim",
                "&& goto :downloaded",
                "if %RECAST_DOWNLOAD% GEQ 10",
                "goto :download\r\n:downloaded\r\n",
                "findstr /i /x \"3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011\"",
                "dism /Apply-Image /ImageFile:W:\\recast\\image.wim /Index:1 /ApplyDir:W:\\ /ScratchDir:W:\\recast\\scratch",
                // The model's drivers where unattend.xml points PnP.
                "if not defined RECAST_DRIVERS_URL goto :drivers_done",
                "findstr /i /x \"%RECAST_DRIVERS_SHA256%\"",
                "/ApplyDir:W:\\recast\\drivers /ScratchDir:W:\\recast\\scratch",
                // bcdboot of the applied image, then Windows RE.
                bcdboot,
                "xcopy /h /y W:\\Windows\\System32\\Recovery\\Winre.wim R:\\Recovery\\WindowsRE\\",
                "W:\\Windows\\System32\\Reagentc.exe /Setreimage /Path R:\\Recovery\\WindowsRE /Target W:\\Windows",
                // The files, after the apply; Setup's cached answer file removed after Setup.
                "copy /y X:\\recast-unattend.xml W:\\Windows\\Panther\\unattend.xml",
                "copy /y X:\\recast-agent.json W:\\ProgramData\\recast\\agent.json",
                // recast's lines first (an image's own script may end with exit), then the
                // image's own.
                "> X:\\recast-setupcomplete.cmd (",
                "  echo del /f /q %%WINDIR%%\\Panther\\unattend.xml",
                "type W:\\Windows\\Setup\\Scripts\\SetupComplete.cmd >> X:\\recast-setupcomplete.cmd",
                "copy /y X:\\recast-setupcomplete.cmd W:\\Windows\\Setup\\Scripts\\SetupComplete.cmd",
                "-d \"{\\\"ok\\\":true}\" \"%RECAST_URL%/result\"",
                "wpeutil reboot",
                // A failure waits 5 minutes on screen, then reboots by itself.
                ":halt\r\n",
                "ping -n 301 127.0.0.1",
                "wpeutil reboot",
                // A failure sends DISM's log before the result.
                ":fail\r\n",
                "\"%RECAST_URL%/log?name=dism.log\"",
                "\"ok\\\":false",
            ],
        );
        assert_eq!(
            script.matches("\r\nwpeinit").count(),
            1,
            "wpeinit runs once"
        );
        assert!(!script.contains("select disk 0"), "never disk 0 by number");
        assert!(!script.contains("--cacert"), "plain HTTP: no CA to check");
        if mode == "uefi" {
            in_order(
                &script,
                &[
                    "echo convert gpt",
                    "echo create partition efi size=260",
                    "echo create partition msr size=16",
                    "echo gpt attributes=0x8000000000000001",
                ],
            );
            assert!(!script.contains("echo active"));
        } else {
            in_order(
                &script,
                &[
                    "echo create partition primary size=100",
                    "echo active",
                    "echo set id=27",
                ],
            );
            assert!(!script.contains("convert gpt"));
        }
        // Every curl call: only options curl 7.55 has, and no POST is retried by curl.
        let calls = curl_calls(&script);
        assert!(calls.len() >= 10, "{calls:#?}");
        for (line, options) in &calls {
            for o in options {
                assert!(
                    CURL_OPTIONS.iter().any(|(known, _)| known == o),
                    "{line}: option {o} is not one every curl since 7.55 has"
                );
            }
            let posts = options
                .iter()
                .any(|o| o == "-X" || o == "-d" || o == "--data-binary");
            // Only the result is retried among the POSTs: the boot service takes it once
            // however often it comes; a retried progress report or preflight could count twice.
            if posts {
                assert_eq!(
                    options.iter().any(|o| o == "--retry"),
                    line.contains("\"%RECAST_URL%/result\""),
                    "{line}: only the result POST is retried"
                );
            }
        }
        // The messages handed to :report and :fail end up outside quotes in cmd lines (the
        // JSON's \" toggles cmd's quoting): none may hold cmd's operators. Parentheses are safe
        // there: those lines are not inside a block.
        for line in script
            .lines()
            .filter(|l| l.contains("call :report ") || l.contains("call :fail "))
        {
            let call = line
                .find("call :report ")
                .or_else(|| line.find("call :fail "))
                .unwrap();
            let rest = &line[call..];
            let start = rest.find(" \"").expect("a quoted message") + 2;
            let message = &rest[start..rest[start..].find('"').unwrap() + start];
            assert!(
                !message.contains(['&', '|', '<', '>', '^']),
                "{line}: message {message:?} holds a cmd operator"
            );
        }
        assert!(
            script.matches("call :fail ").count() >= 10,
            "every failing step reports"
        );
        golden(&format!("startnet-{mode}.cmd"), &script);
    }

    // With the HTTPS listener, the whole protocol runs over it and curl checks the site's CA;
    // what firmware fetches (this script) stays on plain HTTP.
    let uefi_intent = intent("uefi");
    let https = r
        .startnet(
            &AttemptView::new(BASE, Some("https://boot.site.example:8443"), &uefi_intent),
            &image(),
            &site,
        )
        .unwrap();
    assert!(
        https.contains(
            "set \"RECAST_URL=https://boot.site.example:8443/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2\""
        ),
        "{https}"
    );
    assert!(https.contains("--cacert X:\\recast\\ca.pem"));
    // Only the image (no secret in it, checked by sha256) is fetched over plain HTTP.
    for line in https.lines().filter(|l| l.contains("http://")) {
        assert!(
            line.contains("/artifacts/images/"),
            "plain HTTP in the protocol: {line}"
        );
    }
    assert!(
        !https.contains("set \"RECAST_TOKEN=0"),
        "no token is rendered in"
    );

    // winpeshl.ini runs only the script (which runs wpeinit itself).
    let winpeshl = r.winpeshl().unwrap();
    assert!(winpeshl.contains("[LaunchApps]\r\n"));
    assert!(!winpeshl.contains("wpeinit"));
    assert!(winpeshl.contains("cmd.exe, /c X:\\Windows\\System32\\startnet.cmd"));
    golden("winpeshl.ini", &winpeshl);
}

#[test]
fn setup_complete_lines_echo_back_verbatim() {
    use recast_operator::boot::render::cmd_echo_escape;
    assert_eq!(
        cmd_echo_escape(r"del %WINDIR%\x 2>nul & (a | b) ^"),
        r"del %%WINDIR%%\x 2^>nul ^& ^(a ^| b^) ^^"
    );
}

fn site() -> SiteDefaults {
    SiteDefaults {
        locale: "en-US".into(),
        time_zone: "UTC".into(),
    }
}

fn secret_key(name: &str, key: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.into(),
        key: key.into(),
    }
}

/// The Secrets of the test site: the kiosk account's and the Administrator's passwords, the
/// join account (with characters XML must escape), and an offline join file as djoin writes
/// it (UTF-16LE with a byte-order mark).
fn site_secrets() -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut odj = vec![0xff, 0xfe];
    odj.extend(
        "ARAIAMzMzMzIAQAAAAAAAA=="
            .encode_utf16()
            .flat_map(u16::to_le_bytes),
    );
    BTreeMap::from([
        (
            "accounts".to_string(),
            BTreeMap::from([
                ("kiosk".to_string(), b"Kiosk-Pass1\n".to_vec()),
                ("admin".to_string(), b"S3cret!".to_vec()),
            ]),
        ),
        (
            "domain-join".to_string(),
            BTreeMap::from([
                ("username".to_string(), b"CORP\\svc-join".to_vec()),
                ("password".to_string(), b"p<&>\"'".to_vec()),
            ]),
        ),
        (
            "odj".to_string(),
            BTreeMap::from([("KIOSK-01".to_string(), odj)]),
        ),
    ])
}

fn provisioning(profile: Option<&ProvisioningProfile>) -> Provisioning {
    provisioning::resolve("store-042", "KIOSK-01", profile, &site(), &site_secrets()).unwrap()
}

/// Renders for the profile and checks what every profile must be: the structure Setup takes,
/// an OOBE that finishes without a person, the computer name, no password in clear text.
fn unattend_for(profile: Option<&ProvisioningProfile>, golden_name: &str) -> String {
    let r = Renderer::new().unwrap();
    let i = intent("uefi");
    let view = AttemptView::new(BASE, None, &i);
    let xml = r
        .unattend(&view, "KIOSK-01", "amd64", &provisioning(profile), None)
        .unwrap();
    assert_eq!(
        recast_tests::unattend::problems(&xml, "amd64"),
        Vec::<String>::new(),
        "{golden_name}"
    );
    assert_eq!(
        recast_tests::unattend::oobe_waits_for(&xml),
        Vec::<String>::new(),
        "{golden_name}"
    );
    assert!(xml.contains("<ComputerName>KIOSK-01</ComputerName>"));
    for clear in ["Kiosk-Pass1", "S3cret!"] {
        assert!(!xml.contains(clear), "{golden_name}: {clear} in clear text");
    }
    golden(golden_name, &xml);
    xml
}

#[test]
fn unattend_without_a_profile_is_a_workgroup_machine_with_no_account() {
    let xml = unattend_for(None, "unattend-plain.xml");
    assert!(xml.contains("<JoinWorkgroup>WORKGROUP</JoinWorkgroup>"));
    assert!(xml.contains("<UILanguage>en-US</UILanguage>"));
    assert!(xml.contains("<TimeZone>UTC</TimeZone>"));
    assert!(
        !xml.contains("UserAccounts"),
        "no password: the built-in Administrator stays disabled"
    );
    assert!(!provisioning(None).holds_secret());
}

#[test]
fn unattend_for_a_workgroup_with_a_local_account() {
    let profile = ProvisioningProfile {
        locale: Some("de-DE".into()),
        time_zone: Some("W. Europe Standard Time".into()),
        local_account: Some(LocalAccount {
            name: "kiosk".into(),
            administrator: false,
            password_secret_ref: secret_key("accounts", "kiosk"),
        }),
        administrator_password_secret_ref: Some(secret_key("accounts", "admin")),
        join: Some(Join {
            workgroup: Some("KIOSKS".into()),
            domain: None,
            offline_domain_join: None,
        }),
        first_logon_commands: vec![],
    };
    let xml = unattend_for(Some(&profile), "unattend-workgroup-local-account.xml");
    assert!(xml.contains("<JoinWorkgroup>KIOSKS</JoinWorkgroup>"));
    assert!(xml.contains("<UILanguage>de-DE</UILanguage>"));
    assert!(xml.contains("<TimeZone>W. Europe Standard Time</TimeZone>"));
    assert!(xml.contains("<Name>kiosk</Name>"));
    assert!(xml.contains("<Group>Users</Group>"));
    // unattend's PlainText=false form, as Windows SIM writes it; the Secret's trailing
    // newline is not part of the password.
    assert!(xml.contains(&obscure_password("Kiosk-Pass1", "Password")));
    assert!(xml.contains(&obscure_password("S3cret!", "AdministratorPassword")));
    assert_eq!(xml.matches("<PlainText>false</PlainText>").count(), 2);
    assert!(provisioning(Some(&profile)).holds_secret());
}

#[test]
fn unattend_for_a_domain_join_with_credentials_escapes_them() {
    let profile = ProvisioningProfile {
        join: Some(Join {
            workgroup: None,
            domain: Some(DomainJoin {
                name: "corp.example.com".into(),
                organizational_unit: Some("OU=Kiosks,DC=corp,DC=example,DC=com".into()),
                credentials_secret_ref: SecretRef {
                    name: "domain-join".into(),
                },
            }),
            offline_domain_join: None,
        }),
        ..Default::default()
    };
    let xml = unattend_for(Some(&profile), "unattend-domain-join.xml");
    assert!(xml.contains("<JoinDomain>corp.example.com</JoinDomain>"));
    assert!(xml.contains("<MachineObjectOU>OU=Kiosks,DC=corp,DC=example,DC=com</MachineObjectOU>"));
    assert!(xml.contains("<Domain>CORP</Domain>"), "{xml}");
    assert!(xml.contains("<Username>svc-join</Username>"));
    assert!(
        xml.contains("<Password>p&lt;&amp;&gt;&quot;&apos;</Password>"),
        "XML special characters are escaped:\n{xml}"
    );
    assert!(!xml.contains("JoinWorkgroup"));
}

#[test]
fn unattend_for_an_offline_domain_join_carries_the_machines_blob() {
    let profile = ProvisioningProfile {
        join: Some(Join {
            workgroup: None,
            domain: None,
            offline_domain_join: Some(OfflineDomainJoin {
                blobs_secret_ref: SecretRef { name: "odj".into() },
            }),
        }),
        ..Default::default()
    };
    let xml = unattend_for(Some(&profile), "unattend-offline-domain-join.xml");
    // Setup's own offline join in specialize: the base64 text djoin saved, from the UTF-16
    // file, for this machine's computer name.
    assert!(
        xml.contains("<AccountData>ARAIAMzMzMzIAQAAAAAAAA==</AccountData>"),
        "{xml}"
    );
    assert!(!xml.contains("JoinWorkgroup") && !xml.contains("JoinDomain"));
    assert!(
        !xml.contains("OfflineIdentification"),
        "offlineServicing never runs here"
    );
    assert!(provisioning(Some(&profile)).holds_secret());
}

#[test]
fn unattend_runs_first_logon_commands_in_order() {
    let profile = ProvisioningProfile {
        first_logon_commands: vec![
            FirstLogonCommand {
                command_line: r"powershell.exe -NoProfile -File C:\Setup\kiosk.ps1".into(),
                description: Some("Kiosk shell".into()),
            },
            FirstLogonCommand {
                command_line: "cmd.exe /c echo done > C:\\Setup\\done.txt".into(),
                description: None,
            },
        ],
        // They run at someone's first logon: admission wants an account for them.
        local_account: Some(LocalAccount {
            name: "kiosk".into(),
            administrator: true,
            password_secret_ref: secret_key("accounts", "kiosk"),
        }),
        ..Default::default()
    };
    let xml = unattend_for(Some(&profile), "unattend-first-logon-commands.xml");
    let first = xml.find("<Order>1</Order>").unwrap();
    let second = xml.find("<Order>2</Order>").unwrap();
    assert!(first < second);
    assert!(xml.contains("kiosk.ps1"));
    assert!(xml.contains("echo done &gt; C:"), "escaped: {xml}");
    assert_eq!(
        xml.matches("<RequiresUserInput>false</RequiresUserInput>")
            .count(),
        2
    );
    assert!(xml.contains("<Group>Administrators</Group>"));
}

#[test]
fn unattend_points_windows_at_the_driver_directory_when_the_image_has_driver_sets() {
    let r = Renderer::new().unwrap();
    let i = intent("uefi");
    let view = AttemptView::new(BASE, None, &i);
    let xml = r
        .unattend(
            &view,
            "KIOSK-01",
            "amd64",
            &provisioning(None),
            Some(r"%SystemDrive%\recast\drivers"),
        )
        .unwrap();
    assert_eq!(
        recast_tests::unattend::problems(&xml, "amd64"),
        Vec::<String>::new()
    );
    // Windows installs them itself in specialize: PnP searches the path and its subfolders.
    assert_eq!(
        recast_tests::unattend::driver_paths(&xml),
        vec![(
            "specialize".to_string(),
            r"%SystemDrive%\recast\drivers".to_string()
        )]
    );
    assert!(xml.contains("Microsoft-Windows-PnpCustomizationsNonWinPE"));
    assert!(
        recast_tests::unattend::driver_paths(&unattend_for(None, "unattend-plain.xml")).is_empty(),
        "no driver sets, no driver path"
    );
    golden("unattend-drivers.xml", &xml);
}

#[test]
fn unattend_components_name_the_images_architecture() {
    // Windows on Arm: every component names the image's architecture, or Setup skips it.
    let r = Renderer::new().unwrap();
    let i = intent("uefi");
    let view = AttemptView::new(BASE, None, &i);
    let arm = r
        .unattend(&view, "KIOSK-01", "arm64", &provisioning(None), None)
        .unwrap();
    assert_eq!(
        recast_tests::unattend::problems(&arm, "arm64"),
        Vec::<String>::new()
    );
    assert!(!arm.contains("\"amd64\""), "{arm}");
    assert!(
        !recast_tests::unattend::problems(&arm, "amd64").is_empty(),
        "the checker tells the architectures apart"
    );
}

#[test]
fn unattend_architecture_is_the_images() {
    use recast_crds::golden_image::Arch;
    use recast_operator::boot::http::unattend_arch;
    assert_eq!(
        unattend_arch(Some("arm64"), Some(Arch::Amd64)),
        "arm64",
        "facts win"
    );
    assert_eq!(unattend_arch(Some("AMD64"), None), "amd64");
    assert_eq!(unattend_arch(None, Some(Arch::Arm64)), "arm64");
    assert_eq!(
        unattend_arch(Some("ia64"), Some(Arch::Arm64)),
        "arm64",
        "unknown facts: the spec"
    );
    assert_eq!(unattend_arch(None, None), "amd64");
}

/// agent.json as the reimage flow writes it into the new image: the update mode is part of it,
/// so an immutable endpoint's agent holds quality updates from its first report on.
#[test]
fn agent_configuration() {
    use recast_operator::boot::http::AgentConfig;
    let config = AgentConfig {
        namespace: "default".into(),
        endpoint: "kiosk-01".into(),
        attempt_id: "kiosk-01-0b5e2c1a-3".into(),
        gateway_url: Some("https://recast.example:8443".into()),
        enrollment_token: "e".repeat(64),
        update_mode: recast_crds::policy::UpdateMode::Immutable,
    };
    let json = serde_json::to_string_pretty(&config).unwrap() + "\n";
    assert!(json.contains(r#""updateMode": "immutable""#), "{json}");
    golden("agent-immutable.json", &json);
}

/// Runs GRUB's own parser over a rendered configuration: `grub-script-check` (grub-common,
/// which tests/pxe/setup.sh installs). Skips loudly without it, unless the PXE tier is required.
fn grub_script_check(name: &str, cfg: &str) {
    use std::io::Write;
    let child = std::process::Command::new("grub-script-check")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("RECAST_REQUIRE_PXE").is_none(),
                "grub-script-check is required (RECAST_REQUIRE_PXE) but cannot run: {e}; apt-get install grub-common"
            );
            eprintln!("SKIP grub-script-check for {name}: {e} (apt-get install grub-common)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cfg.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "GRUB refuses {name}: {}{}\n{cfg}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grub_configurations_of_the_signed_chain() {
    let r = Renderer::new().unwrap();
    let root = r.grub_root().unwrap();
    assert!(
        root.contains(r#"  source "/grub/recast/${net_default_mac}.cfg""#),
        "{root}"
    );
    assert!(
        root.contains("for attempt in 1 2 3; do"),
        "asked again: {root}"
    );
    assert!(root.trim_end().ends_with("exit"));
    grub_script_check("grub.cfg", &root);
    golden("grub.cfg", &root);

    let local = r.grub_local("store-042/kiosk-01").unwrap();
    for line in [
        "echo 'recast: store-042/kiosk-01: no reimage armed, booting the local disk'",
        "if search --no-floppy --file --set=root /EFI/Microsoft/Boot/bootmgfw.efi; then",
        "  chainloader /EFI/Microsoft/Boot/bootmgfw.efi",
    ] {
        assert!(local.contains(line), "missing {line:?}\n{local}");
    }
    grub_script_check("local.grub.cfg", &local);
    golden("local.grub.cfg", &local);

    let i = intent("uefi");
    let view = AttemptView::new(BASE, None, &i);
    let linux = r.grub_imaging(ImagingEnvironment::Linux, &view).unwrap();
    for line in [
        "if linux /linux/vmlinuz console=ttyS0 quiet 'recast.claim=http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2/claim'; then",
        "  if initrd /linux/initrd; then",
        "    boot",
    ] {
        assert!(linux.contains(line), "missing {line:?}\n{linux}");
    }
    // Anyone can ask for this file: it names what to boot and holds no secret.
    assert!(!linux.contains("token"), "{linux}");
    grub_script_check("imaging-linux.grub.cfg", &linux);
    golden("imaging-linux.grub.cfg", &linux);

    let winpe = r.grub_imaging(ImagingEnvironment::Winpe, &view).unwrap();
    assert!(!winpe.contains("linux "), "{winpe}");
    grub_script_check("imaging-winpe.grub.cfg", &winpe);
    golden("imaging-winpe.grub.cfg", &winpe);
}

#[test]
fn grub_values_cannot_break_out_of_their_quotes_or_comments() {
    let r = Renderer::new().unwrap();
    // A name is a DNS label today; the quoting must hold whatever comes.
    let who = "x'; reboot; echo '\nset root=(hd9)";
    let local = r.grub_local(who).unwrap();
    assert!(
        local.contains(r#"echo 'recast: x'\''; reboot; echo '\''"#),
        "{local}"
    );
    let mut i = intent("uefi");
    i.endpoint = "kiosk\nreboot".into();
    i.image = "img'x".into();
    let view = AttemptView::new(BASE, None, &i);
    let linux = r.grub_imaging(ImagingEnvironment::Linux, &view).unwrap();
    assert!(
        !linux.lines().any(|l| l.trim() == "reboot"),
        "a value started a command line:\n{linux}"
    );
    for (name, cfg) in [("hostile local", &local), ("hostile imaging", &linux)] {
        grub_script_check(name, cfg);
    }
    assert_eq!(
        recast_operator::boot::render::grub_single_quoted("a'b"),
        r"a'\''b"
    );
    assert_eq!(
        recast_operator::boot::render::grub_comment("a\nb\rc"),
        "a b c"
    );
}
