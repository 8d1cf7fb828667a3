//! A policy's provisioning profile through the real boot service: what a machine's Windows is
//! told comes from the policy and its Secrets, and a file with a secret in it goes only over
//! HTTPS, only with the try's token. Each refusal is performed and its message checked.

#[path = "support/boot_site.rs"]
mod boot_site;

use std::process::Command;
use std::time::Duration;

use boot_site::*;
use recast_crds::manifest::Kind;
use serde_json::{Value, json};

fn have_tools() -> bool {
    for tool in ["curl", "openssl"] {
        if Command::new(tool).arg("version").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            recast_tests::skip_or_fail("RECAST_REQUIRE_PXE", &format!("{tool} is missing"));
            return false;
        }
    }
    true
}

/// Stores a v1 Secret in the site's embedded store.
fn secret(s: &Setup, name: &str, string_data: Value) {
    s.store
        .apply_secret(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": string_data}),
            "default",
        )
        .unwrap();
}

/// Sets the default policy's provisioning profile.
fn profile(s: &Setup, provisioning: Value) {
    s.store
        .update(Kind::RemediationPolicy, "default", "default", |o| {
            o["spec"]["provisioning"] = provisioning.clone();
            Ok(())
        })
        .unwrap();
}

fn task(attempt: &str, token: &str) -> (u16, String) {
    let (code, _, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{attempt}/task"),
    ]);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// The try ended before anything was written: disarmed, with the refusal on record.
fn try_ended_with(s: &Setup, words: &str) {
    recast_tests::wait_for(Duration::from_secs(20), "the try to end", || {
        s.store.boot_intent(MAC).unwrap().is_none()
    });
    let events = s.store.events(Kind::Endpoint, "default", "pc-01").unwrap();
    assert!(
        events.iter().any(|e| e.message.contains(words)),
        "no event says {words:?}: {events:?}"
    );
}

#[test]
fn a_profile_with_a_secret_is_refused_without_https_before_any_write() {
    if !have_tools() {
        return;
    }
    let s = setup();
    secret(&s, "accounts", json!({"kiosk": "Kiosk-Pass1"}));
    profile(
        &s,
        json!({"localAccount": {"name": "kiosk", "passwordSecretRef": {"name": "accounts", "key": "kiosk"}}}),
    );
    let attempt = arm(&s);
    let token = claimed_token(&attempt, "127.0.0.1");
    // The file is not served over plain HTTP, even with the token, while the try is armed.
    let (code, _, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{attempt}/unattend.xml"),
    ]);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("only over HTTPS"), "{body}");
    assert!(
        !body.contains("Kiosk") && !body.contains("SwBpAG8Acw"),
        "{body}"
    );
    assert!(s.store.boot_intent(MAC).unwrap().is_some(), "still armed");
    // The task refuses it and ends the try, saying what to do.
    let (code, body) = task(&attempt, &token);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("only over HTTPS"), "{body}");
    assert!(body.contains("--boot-https"), "says what to do: {body}");
    try_ended_with(&s, "only over HTTPS");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn secrets_go_only_over_https_with_the_tries_token() {
    if !have_tools() {
        return;
    }
    let s = setup_site(false, true);
    let (https, ca) = s.https.clone().unwrap();
    secret(
        &s,
        "accounts",
        json!({"kiosk": "Kiosk-Pass1\n", "admin": "S3cret!"}),
    );
    // pc-01's offline domain join blob as djoin saves it (UTF-16LE), under its computer name;
    // stored base64 as `data`.
    let blob: Vec<u8> = "ARAIAMzMzMzIAQAAAAAAAA=="
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    s.store
        .apply_secret(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "odj"},
                    "data": {"PC-01": base64(&blob), "PC-02": base64(b"QUJD")}}),
            "default",
        )
        .unwrap();
    profile(
        &s,
        json!({
            "locale": "de-DE",
            "timeZone": "W. Europe Standard Time",
            "localAccount": {"name": "kiosk", "administrator": false, "passwordSecretRef": {"name": "accounts", "key": "kiosk"}},
            "administratorPasswordSecretRef": {"name": "accounts", "key": "admin"},
            "join": {"offlineDomainJoin": {"blobsSecretRef": {"name": "odj"}}},
            "firstLogonCommands": [{"commandLine": "cmd.exe /c echo first"}]
        }),
    );
    let attempt = arm(&s);
    let token = claimed_token(&attempt, "127.0.0.1");
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = task(&attempt, &token);
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    let path = attempt.strip_prefix(&s.base).unwrap();
    // With the HTTPS listener the whole protocol runs over it: the token goes nowhere else.
    for (field, file) in [
        ("unattendUrl", "unattend.xml"),
        ("agentConfigUrl", "agent.json"),
        ("progressUrl", "progress"),
        ("resultUrl", "result"),
    ] {
        assert_eq!(t[field], format!("{https}{path}/{file}"), "{field}");
    }
    assert!(
        t["image"]["url"].as_str().unwrap().starts_with(&s.base),
        "the image (no secret, checked by sha256) stays on plain HTTP"
    );
    let (code, _, claim_again) = curl(&["-X", "POST", &format!("{attempt}/claim")]);
    assert_eq!(code, 200);
    let claim_again: Value = serde_json::from_slice(&claim_again).unwrap();
    assert_eq!(claim_again["taskUrl"], format!("{https}{path}/task"));

    // Over plain HTTP, with the right token: refused, and nothing of the file leaks.
    for file in ["unattend.xml", "agent.json"] {
        let (code, _, body) = curl(&["-H", &auth, &format!("{attempt}/{file}")]);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 403, "{file}: {body}");
        assert!(body.contains("only over HTTPS"), "{file}: {body}");
    }
    let https_get = |file: &str, with_token: bool| {
        let mut args = vec!["--cacert".to_string(), ca.display().to_string()];
        if with_token {
            args.extend(["-H".to_string(), auth.clone()]);
        }
        args.push(format!("{https}{path}/{file}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    };
    // Over HTTPS without the token: refused.
    for file in ["unattend.xml", "agent.json"] {
        assert_eq!(https_get(file, false).0, 401, "{file}");
    }
    // An unverified connection is not how the imaging environment talks: curl checks the
    // certificate against the site's CA (a wrong CA fails the handshake).
    let (code, _, _) = curl(&["-H", &auth, &format!("{https}{path}/unattend.xml")]);
    assert_eq!(code, 0, "no CA given: the handshake fails");

    let (code, h, body) = https_get("unattend.xml", true);
    let xml = String::from_utf8(body).unwrap();
    assert_eq!(code, 200, "{xml}");
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    assert_eq!(
        recast_tests::unattend::problems(&xml, "amd64"),
        Vec::<String>::new()
    );
    assert_eq!(
        recast_tests::unattend::oobe_waits_for(&xml),
        Vec::<String>::new()
    );
    assert!(xml.contains("<UILanguage>de-DE</UILanguage>"), "{xml}");
    assert!(xml.contains("<TimeZone>W. Europe Standard Time</TimeZone>"));
    assert!(xml.contains("<Name>kiosk</Name>"));
    assert!(xml.contains("<Group>Users</Group>"));
    assert!(
        xml.contains("<AccountData>ARAIAMzMzMzIAQAAAAAAAA==</AccountData>"),
        "pc-01's own blob: {xml}"
    );
    assert!(xml.contains("cmd.exe /c echo first"));
    for clear in ["Kiosk-Pass1", "S3cret!"] {
        assert!(!xml.contains(clear), "{clear} in clear text");
    }
    let (code, _, agent) = https_get("agent.json", true);
    assert_eq!(code, 200);
    let agent: Value = serde_json::from_slice(&agent).unwrap();
    assert_eq!(agent["endpoint"], "pc-01");

    // A Secret the profile names that does not exist ends the next task request, saying so.
    profile(
        &s,
        json!({"administratorPasswordSecretRef": {"name": "not-there", "key": "password"}}),
    );
    let (code, body) = task(&attempt, &token);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("Secret default/not-there") && body.contains("create it"),
        "{body}"
    );
    try_ended_with(&s, "not-there");
    let _ = std::fs::remove_dir_all(&s.dir);
}

fn base64(bytes: &[u8]) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
