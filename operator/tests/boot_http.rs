//! HTTP boot and the imaging protocol, driven by an independent client (curl) against the real
//! recast-operator binary on the embedded store: scripts per MAC, artifacts with HEAD, Range,
//! ETag and confinement, and what each bad request gets.

#[path = "support/boot_site.rs"]
mod boot_site;

use std::process::Command;
use std::time::Duration;

use boot_site::*;
use recast_crds::manifest::Kind;
use serde_json::{Value, json};

#[test]
fn scripts_artifacts_and_the_imaging_protocol_over_http() {
    if Command::new("curl").arg("--version").output().is_err() {
        recast_tests::skip_or_fail("RECAST_REQUIRE_PXE", "curl is missing");
        return;
    }
    let s = setup();
    let b = &s.base;

    // Scripts.
    let (code, h, body) = curl(&[&format!("{b}/boot.ipxe")]);
    assert_eq!(code, 200);
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    assert!(String::from_utf8_lossy(&body).starts_with("#!ipxe"));
    let (code, _, body) = curl(&[&format!("{b}/boot/{MAC}")]);
    assert_eq!(code, 200, "a known endpoint with nothing armed");
    assert!(String::from_utf8_lossy(&body).contains("no reimage armed"));
    assert_eq!(
        curl(&[&format!("{b}/boot/52:54:00:ff:ff:ff")]).0,
        404,
        "an unknown MAC under the default ignore policy"
    );
    assert_eq!(curl(&[&format!("{b}/boot/not-a-mac")]).0, 400);

    // Artifacts: HEAD, Range, ETag, confinement.
    let img = format!("{b}/artifacts/images/{}.wim", s.digest);
    let (code, h, body) = curl(&["-I", &img]);
    assert_eq!(code, 200);
    // curl -I writes the headers where the body would go: no image bytes follow them.
    assert!(body.len() < 1024, "HEAD carries no body");
    assert_eq!(header(&h, "content-length"), Some("200000"));
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    let etag = header(&h, "etag").expect("an ETag").to_string();
    let (code, h, body) = curl(&["-r", "10-19", &img]);
    assert_eq!(code, 206);
    assert_eq!(body, &s.image[10..20]);
    assert_eq!(header(&h, "content-range"), Some("bytes 10-19/200000"));
    let (code, _, body) = curl(&["-C", "199990", &img]);
    assert_eq!((code, body.as_slice()), (206, &s.image[199_990..]));
    let (code, _, body) = curl(&[&img]);
    assert_eq!((code, body.len()), (200, 200_000));
    assert_eq!(body, s.image);
    assert_eq!(
        curl(&["-H", &format!("If-None-Match: {etag}"), &img]).0,
        304
    );
    let (code, h, _) = curl(&["-r", "300000-", &img]);
    assert_eq!(code, 416);
    assert_eq!(header(&h, "content-range"), Some("bytes */200000"));
    // HTTP/1.0 is not taken by the listener's own reader: hyper's route answers it, from the
    // same decision, with the body streamed instead of sent with sendfile.
    let (code, h, body) = curl(&["--http1.0", "-r", "10-19", &img]);
    assert_eq!((code, body.as_slice()), (206, &s.image[10..20]));
    assert_eq!(header(&h, "content-range"), Some("bytes 10-19/200000"));
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    let (code, _, body) = curl(&["--http1.0", &img]);
    assert_eq!((code, body.len()), (200, 200_000));
    assert_eq!(body, s.image);
    // If-Range with a stale validator: the whole file, never a mismatched piece.
    let (code, _, body) = curl(&["-r", "0-9", "-H", "If-Range: \"stale\"", &img]);
    assert_eq!((code, body.len()), (200, 200_000));
    for bad in [
        "/artifacts/../outside.txt",
        "/artifacts/ipxe/../../outside.txt",
        "/artifacts/%2e%2e/outside.txt",
        "/artifacts/images/golden.wim",
        "/artifacts//etc/passwd",
        "/artifacts/ipxe",
    ] {
        let (code, _, body) = curl(&[&format!("{b}{bad}")]);
        assert!(
            code == 404 || code == 400,
            "{bad} got {code}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
    assert_eq!(curl(&[&format!("{b}/artifacts/ipxe/undionly.kpxe")]).0, 200);

    // The imaging protocol: the script and startnet.cmd need no token and hold none; the
    // imaging environment claims the try and gets its session token.
    let attempt = arm(&s);
    assert_eq!(curl(&[&format!("{attempt}/task")]).0, 401, "no token");
    let token = claimed_token(&attempt, "127.0.0.1");
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(
        claimed_token(&attempt, "127.0.0.1"),
        token,
        "the holder may claim again (its imaging environment restarted)"
    );
    assert_eq!(
        curl(&[
            "-H",
            &format!("Authorization: Bearer {}", "0".repeat(64)),
            &format!("{attempt}/task")
        ])
        .0,
        401,
        "a wrong token"
    );
    let other_try = attempt.rsplit_once('/').unwrap().0.to_string() + "/9";
    assert_eq!(
        curl(&["-H", &auth, &format!("{other_try}/task")]).0,
        401,
        "this try's token is no good for another try"
    );
    let (code, _, body) = curl(&["-H", &auth, &format!("{attempt}/task")]);
    assert_eq!(code, 200);
    let task: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(task["image"]["sha256"], s.digest.as_str());
    assert_eq!(task["image"]["size"], 200_000);
    assert_eq!(task["image"]["index"], 2);
    assert_eq!(task["hostname"], "PC-01");
    let (code, _, body) = curl(&[&format!("{attempt}/startnet.cmd")]);
    assert_eq!(code, 200);
    let startnet = String::from_utf8_lossy(&body);
    assert!(startnet.contains(&s.digest));
    assert!(!startnet.contains(&token), "startnet.cmd holds no secret");
    assert!(
        startnet.contains("/claim?format=text"),
        "it claims the try first"
    );
    assert_eq!(
        curl(&["-H", &auth, &format!("{attempt}/unattend.xml")]).0,
        200
    );
    let (code, _, body) = curl(&["-H", &auth, &format!("{attempt}/agent.json")]);
    assert_eq!(code, 200);
    let agent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(agent["endpoint"], "pc-01");
    assert_eq!(agent["enrollmentToken"].as_str().unwrap().len(), 64);
    assert_ne!(agent["enrollmentToken"], token.as_str());
    // The policy says nothing about the mode: managed.
    assert_eq!(agent["updateMode"], "managed");
    // An immutable endpoint's new image is held from its first boot: agent.json says so.
    s.store
        .update(Kind::Endpoint, "default", "pc-01", |o| {
            o["spec"]["updateMode"] = json!("immutable");
            Ok(())
        })
        .unwrap();
    let (code, _, body) = curl(&["-H", &auth, &format!("{attempt}/agent.json")]);
    assert_eq!(code, 200);
    let agent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(agent["updateMode"], "immutable");

    let post = |body: &str| {
        curl(&[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("{attempt}/progress"),
        ])
        .0
    };
    assert_eq!(post("{not json"), 400);
    assert_eq!(post(r#"{"percent": 101}"#), 422);
    assert_eq!(
        post(r#"{"percent": 10, "extra": 1}"#),
        400,
        "unknown fields are refused"
    );
    assert_eq!(
        post(&format!(
            r#"{{"percent": 10, "message": "{}"}}"#,
            "x".repeat(5000)
        )),
        413
    );
    assert_eq!(post(r#"{"percent": 10, "step": "download"}"#), 204);
    let (code, _, _) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        r#"{"ok": true}"#,
        &format!("{attempt}/result"),
    ]);
    assert_eq!(code, 204);
    // The controller takes the result and disarms: the token dies with the try.
    recast_tests::wait_for(Duration::from_secs(20), "the boot to be disarmed", || {
        s.store.boot_intent(MAC).unwrap().is_none()
    });
    assert_eq!(curl(&["-H", &auth, &format!("{attempt}/task")]).0, 410);
    let ep = s
        .store
        .get(Kind::Endpoint, "default", "pc-01")
        .unwrap()
        .unwrap();
    assert_eq!(ep["status"]["activeAttempt"]["step"], "FirstBoot");
    assert_eq!(ep["status"]["activeAttempt"]["bootClient"], "127.0.0.1");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A boot port that is already taken stops the operator with the reason, instead of leaving a
/// process that looks healthy while no machine can boot.
#[test]
fn a_taken_boot_port_stops_the_operator_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("recast-bootport-{}", uuid::Uuid::new_v4()));
    let out = Command::new(env!("CARGO_BIN_EXE_recast-operator"))
        .args(["run", "--backend", "embedded", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", recast_tests::free_port()),
        ])
        .args(["--boot-http", &format!("127.0.0.1:{port}")])
        // Beside the data directory, not around it: a boot root holding the data directory
        // would serve recast.db and the imaging key, and the operator refuses it.
        .arg("--boot-root")
        .arg(dir.join("boot"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve HTTP boot on 127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

/// An endpoint in WDS mode (spec.bootServer: wds) is referred to the site's WDS server when
/// its attempt is armed, and the attempt ends there, handed off: WDS deploys the image and
/// recast does not see it finish (docs/first-boot.md). Before, such an attempt timed out try
/// after try and ended quarantined.
#[test]
fn a_wds_endpoint_is_referred_and_its_attempt_ends_handed_off() {
    if Command::new("curl").arg("--version").output().is_err() {
        recast_tests::skip_or_fail("RECAST_REQUIRE_PXE", "curl is missing");
        return;
    }
    let s = setup_full(false, false, &["--wds-server", "10.0.40.9"]);
    s.store
        .update(Kind::Endpoint, "default", "pc-01", |o| {
            o["spec"]["bootServer"] = json!("wds");
            o["spec"]["reimageRequest"] = json!({"token": "1", "reason": "test"});
            Ok(())
        })
        .unwrap();
    recast_tests::wait_for(Duration::from_secs(20), "the boot intent", || {
        s.store.boot_intent(MAC).unwrap().is_some() && step(&s).as_deref() == Some("Booting")
    });
    let (code, _, body) = curl(&[&format!("{}/boot/{MAC}", s.base)]);
    let script = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{script}");
    assert!(script.contains("10.0.40.9"), "referred to WDS: {script}");
    recast_tests::wait_for(
        Duration::from_secs(20),
        "the attempt to end handed off",
        || s.store.boot_intent(MAC).unwrap().is_none(),
    );
    let ep = s
        .store
        .get(Kind::Endpoint, "default", "pc-01")
        .unwrap()
        .unwrap();
    assert!(ep["status"]["activeAttempt"].is_null(), "{ep}");
    assert_eq!(ep["status"]["history"][0]["outcome"], "HandedOff", "{ep}");
    // No agent has reported yet: Pending, not Quarantined.
    assert_eq!(ep["status"]["phase"], "Pending", "{ep}");
    // Asked again (another boot of the machine): the local disk, and nothing new starts.
    let (_, _, body) = curl(&[&format!("{}/boot/{MAC}", s.base)]);
    assert!(!String::from_utf8_lossy(&body).contains("10.0.40.9"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// What a UEFI WinPE on a machine with a USB stick (disk 0) and one SSD prints, in the shape
/// startnet.cmd sends it: reg's line, then wmic's `/value` blocks (here as UTF-16LE with a
/// byte-order mark, as wmic writes a file, to show the service takes either).
fn winpe_report(firmware: &str, fixed_disks: usize) -> Vec<u8> {
    let mut text = format!(
        "[firmware]\r\n\r\nHKEY_LOCAL_MACHINE\\System\\CurrentControlSet\\Control\r\n    PEFirmwareType    REG_DWORD    {firmware}\r\n\r\n[csproduct]\r\n\r\nIdentifyingNumber=PC-0001\r\nName=Kiosk 5000\r\nUUID=4C4C4544-0031-3910-8033-B4C04F4A3332\r\nVendor=Contoso Ltd.\r\n\r\n[bios]\r\nSMBIOSMajorVersion=3\r\nSMBIOSMinorVersion=4\r\n[diskdrive]\r\n\r\nIndex=0\r\nInterfaceType=USB\r\nMediaType=Removable Media\r\nModel=SanDisk Cruzer USB Device\r\nSerialNumber=4C530001\r\nSize=31457280000\r\n"
    );
    for i in 1..=fixed_disks {
        text.push_str(&format!(
            "\r\nIndex={i}\r\nInterfaceType=SCSI\r\nMediaType=Fixed hard disk media\r\nModel=Samsung SSD 980 PRO 1TB\r\nSerialNumber=S5GXNX0T12345{i}\r\nSize=1000202273280\r\n"
        ));
    }
    [0xFF, 0xFE]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect()
}

/// WinPE's preflight over HTTP: the boot service answers the plan (never disk 0 when disk 0
/// is a USB stick), takes DISM's log on a failure, and a machine that must not be written (two
/// candidate disks; every other refusal is in recast_core::winpe_preflight's tests) ends the
/// try with the reason and nothing planned.
#[test]
fn winpe_preflight_answers_the_plan_or_ends_the_try() {
    if Command::new("curl").arg("--version").output().is_err() {
        recast_tests::skip_or_fail("RECAST_REQUIRE_PXE", "curl is missing");
        return;
    }
    let s = setup();
    let attempt = arm(&s);
    let token = claimed_token(&attempt, "127.0.0.1");
    let auth = format!("Authorization: Bearer {token}");
    let dir = s.dir.join("preflight");
    std::fs::create_dir_all(&dir).unwrap();
    let send = |name: &str, body: &[u8], path: &str| {
        let file = dir.join(name);
        std::fs::write(&file, body).unwrap();
        curl(&[
            "-H",
            &auth,
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{attempt}/{path}"),
        ])
    };
    // No token: nothing is judged.
    assert_eq!(
        curl(&["--data-binary", "x", &format!("{attempt}/preflight")]).0,
        401
    );
    let (code, h, body) = send("ok.txt", &winpe_report("0x2", 1), "preflight");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    assert_eq!(String::from_utf8_lossy(&body), "DISK=1\r\n");
    // The same machine asking again (startnet restarted) gets the same plan.
    assert_eq!(send("ok.txt", &winpe_report("0x2", 1), "preflight").2, body);

    // DISM's log: taken, however long, keeping its tail for the boot service's log; without
    // the token it is refused before a byte of it is read; past 64 MiB it is refused.
    let mut log = b"2026-01-14 08:01:00, Info DISM starting\r\n".repeat(300_000);
    log.extend_from_slice(
        b"2026-01-14 08:09:00, Error DISM DISM.EXE: Image apply failed 0x80070070\r\n",
    );
    assert_eq!(send("dism.log", &log, "log?name=dism.log").0, 204);
    let file = dir.join("anonymous.log");
    std::fs::write(&file, &log).unwrap();
    assert_eq!(
        curl(&[
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{attempt}/log?name=dism.log"),
        ])
        .0,
        401
    );
    assert_eq!(
        send("huge.log", &vec![b'x'; 65 << 20], "log?name=dism.log").0,
        413
    );

    // Two fixed disks and no spec.targetDisk: refused, the try ends, nothing is planned.
    let (code, _, body) = send("two.txt", &winpe_report("0x2", 2), "preflight");
    let why = String::from_utf8_lossy(&body);
    assert_eq!(code, 409, "{why}");
    assert!(why.contains("nothing written: 2 disks are"), "{why}");
    assert!(why.contains("name it with spec.targetDisk"), "{why}");
    recast_tests::wait_for(Duration::from_secs(20), "the try to end", || {
        curl(&["-H", &auth, &format!("{attempt}/task")]).0 == 410
    });
    let ep = s
        .store
        .get(Kind::Endpoint, "default", "pc-01")
        .unwrap()
        .unwrap();
    let text = ep["status"].to_string();
    assert!(text.contains("preflight: 2 disks are"), "{text}");

    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A WinPE failure sends DISM's log, then the failed result: the try's error carries the log's
/// last lines, so the person reading the Endpoint sees DISM's own words.
#[test]
fn a_failed_results_error_carries_the_end_of_dism_log() {
    if Command::new("curl").arg("--version").output().is_err() {
        recast_tests::skip_or_fail("RECAST_REQUIRE_PXE", "curl is missing");
        return;
    }
    let s = setup();
    let attempt = arm(&s);
    let token = claimed_token(&attempt, "127.0.0.1");
    let auth = format!("Authorization: Bearer {token}");
    // As DISM writes it: UTF-16LE with a byte-order mark, CRLF.
    let mut log = "2026-01-14 08:01:00, Info DISM starting\r\n".repeat(50_000);
    log.push_str("2026-01-14 08:09:00, Error DISM DISM.EXE: Image apply failed 0x80070070\r\n");
    let body: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(log.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let file = s.dir.join("dism.log");
    std::fs::write(&file, &body).unwrap();
    let (code, _, _) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{attempt}/log?name=dism.log"),
    ]);
    assert_eq!(code, 204);
    let (code, _, _) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        r#"{"ok": false, "step": "apply", "error": "dism /Apply-Image failed"}"#,
        &format!("{attempt}/result"),
    ]);
    assert_eq!(code, 204);
    recast_tests::wait_for(Duration::from_secs(20), "the failure recorded", || {
        let ep = s
            .store
            .get(Kind::Endpoint, "default", "pc-01")
            .unwrap()
            .unwrap();
        ep["status"].to_string().contains(
            "apply: dism /Apply-Image failed; dism.log ends: 2026-01-14 08:01:00, Info DISM starting | 2026-01-14 08:01:00, Info DISM starting | 2026-01-14 08:09:00, Error DISM DISM.EXE: Image apply failed 0x80070070",
        )
    });
    let _ = std::fs::remove_dir_all(&s.dir);
}
