//! The attack suite, boot side (issue 17, item 1): a stranger on the provisioning network who
//! knows an endpoint's MAC (every DHCP packet carries it) tries to take over its reimage. Each
//! attack is performed against the real recast-operator binary, from another source address
//! (curl bound to 127.0.0.2; the real machine is 127.0.0.1), and must fail with the refusal
//! it should get. docs/security.md says what remains.

#[path = "support/boot_site.rs"]
mod boot_site;

use std::process::Command;
use std::time::Duration;

use boot_site::*;
use serde_json::{Value, json};

const STRANGER: &str = "127.0.0.2";
const MACHINE: &str = "127.0.0.1";

fn have_curl() -> bool {
    if Command::new("curl").arg("--version").output().is_err() {
        recast_tests::skip_or_fail("RECAST_REQUIRE_PXE", "curl is missing");
        return false;
    }
    true
}

/// Knowing the MAC gets a stranger what to boot and nothing more: no token, no claim on the
/// try, no step forward past `protected`; the try's files and reports need the session token
/// of the machine that claimed it, from its address; a second claimant stops the attempt.
#[test]
fn a_stranger_who_knows_the_mac_cannot_take_over_the_reimage() {
    if !have_curl() {
        return;
    }
    let s = setup();
    let attempt = arm(&s);

    // 1. /boot/MAC from the stranger: a script without any token, and nothing recorded (the
    //    attempt stays at Booting, where `protected` can still stop it).
    let (code, _, body) = curl(&["--interface", STRANGER, &format!("{}/boot/{MAC}", s.base)]);
    assert_eq!(code, 200);
    assert!(
        !String::from_utf8_lossy(&body)
            .to_ascii_lowercase()
            .contains("token")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        step(&s).as_deref(),
        Some("Booting"),
        "an unauthenticated GET moves nothing"
    );

    // 2. Every call that hands out or changes something needs a session token.
    for path in ["task", "unattend.xml", "agent.json"] {
        let (code, _, _) = curl(&["--interface", STRANGER, &format!("{attempt}/{path}")]);
        assert_eq!(code, 401, "{path} without a token");
    }
    let (code, _, _) = curl(&[
        "--interface",
        STRANGER,
        "--data-binary",
        r#"{"ok": true}"#,
        &format!("{attempt}/result"),
    ]);
    assert_eq!(code, 401, "a result without a token");

    // 3. The real machine claims the try. Its session token, stolen (say, sniffed from the
    //    wire), is worth nothing from another address.
    let token = claimed_token(&attempt, MACHINE);
    let auth = format!("Authorization: Bearer {token}");
    recast_tests::wait_for(Duration::from_secs(20), "the claim to be recorded", || {
        step(&s).as_deref() == Some("Applying")
    });
    for path in ["task", "unattend.xml", "agent.json"] {
        let (code, _, body) = curl(&[
            "--interface",
            STRANGER,
            "-H",
            &auth,
            &format!("{attempt}/{path}"),
        ]);
        assert_eq!(
            code,
            401,
            "{path} with the machine's token from elsewhere: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (code, _, _) = curl(&[
        "--interface",
        STRANGER,
        "-H",
        &auth,
        "--data-binary",
        r#"{"ok": true}"#,
        &format!("{attempt}/result"),
    ]);
    assert_eq!(code, 401, "a forged result with the stolen token");
    assert_eq!(step(&s).as_deref(), Some("Applying"));

    // 4. The stranger claims the try as well: refused, and the attempt stops for a person
    //    (the try is disarmed, so the machine's token dies with it).
    let (code, body) = claim(&attempt, STRANGER);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("claimed by another machine"), "{body}");
    recast_tests::wait_for(
        Duration::from_secs(20),
        "the attempt to be quarantined",
        || phase(&s).as_deref() == Some("Quarantined"),
    );
    let (code, _, _) = curl(&["-H", &auth, &format!("{attempt}/task")]);
    assert_eq!(code, 410, "the try is over");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// The enrollment credential in agent.json works once, only after the imaging result came
/// from the machine that claimed the try: a copy of it (or a second agent) cannot take the
/// endpoint's gateway token, nor rotate it to lock the real agent out.
#[test]
fn the_enrollment_credential_works_once_and_only_after_the_result() {
    if !have_curl() {
        return;
    }
    if !recast_tests::have("openssl") {
        recast_tests::skip_or_fail("RECAST_REQUIRE_OPENSSL", "openssl is missing");
        return;
    }
    let s = setup_with(true);
    let (gateway, ca) = s.gateway.clone().unwrap();
    let attempt = arm(&s);
    let token = claimed_token(&attempt, MACHINE);
    let auth = format!("Authorization: Bearer {token}");
    let (code, _, body) = curl(&["-H", &auth, &format!("{attempt}/agent.json")]);
    assert_eq!(code, 200);
    let agent: Value = serde_json::from_slice(&body).unwrap();
    let enroll = || {
        let body = json!({
            "namespace": agent["namespace"], "endpoint": agent["endpoint"],
            "attemptId": agent["attemptId"], "enrollmentToken": agent["enrollmentToken"],
        })
        .to_string();
        let (code, _, out) = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &format!("{gateway}/v1/enroll"),
        ]);
        (code, String::from_utf8_lossy(&out).into_owned())
    };
    recast_tests::wait_for(Duration::from_secs(20), "the gateway", || enroll().0 != 0);
    recast_tests::wait_for(Duration::from_secs(20), "the claim to be recorded", || {
        step(&s).as_deref() == Some("Applying")
    });

    // Before the imaging result: not yet (503, the agent retries), whatever the credential.
    let (code, body) = enroll();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("imaging result"), "{body}");

    let (code, _, _) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        r#"{"ok": true}"#,
        &format!("{attempt}/result"),
    ]);
    assert_eq!(code, 204);
    recast_tests::wait_for(Duration::from_secs(20), "FirstBoot", || {
        step(&s).as_deref() == Some("FirstBoot")
    });
    let (code, body) = enroll();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("rct_"), "{body}");
    // The same credential again (a copy of agent.json): refused, so it cannot rotate the
    // endpoint's token away from the agent that enrolled.
    let (code, body) = enroll();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("works once"), "{body}");
    let _ = std::fs::remove_dir_all(&s.dir);
}
