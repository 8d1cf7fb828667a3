//! A simulated machine's imaging environment: the protocol half of what recast-imager does in a VM,
//! from a test process, over the real imaging protocol (the armed iPXE script's claim URL, the
//! claim that binds a session token to the caller's address, the task, the image with its
//! sha256 checked, progress, agent.json, the result). The e2e suite runs it for its simulated
//! machines (from inside a network namespace); `make demo` runs it on loopback.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::http;

/// Told to the imaging environment to make the apply step fail (the e2e suite's
/// failure-budget scenarios).
pub const FAIL_APPLY: &str = "recast-e2e:fail-apply";

/// Images the machine with `mac` from the boot service at `boot`; returns agent.json when
/// imaging succeeded. `connect` opens a connection to the boot service (the e2e suite enters
/// its boot namespace first); `narrate` hears each protocol step as it happens. `control` is
/// what the test tells the imaging environment ("" or [`FAIL_APPLY`]).
pub fn simulated_imaging(
    connect: &dyn Fn(SocketAddr) -> io::Result<TcpStream>,
    boot: SocketAddr,
    mac: &str,
    control: &str,
    narrate: &mut dyn FnMut(&str),
) -> Option<String> {
    let host = boot.to_string();
    let get = |path: &str, auth: Option<&str>| -> Option<http::Response> {
        let bearer = auth.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        // The boot service may be restarting (the e2e suite kills it mid-download): retry.
        for _ in 0..30 {
            if let Ok(r) =
                connect(boot).and_then(|s| http::send(s, "GET", &host, path, &headers, b""))
                && r.status < 500
            {
                return Some(r);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        None
    };
    let script = get(&format!("/boot/{mac}"), None)?.text();
    let arg = |key: &str| {
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    let claim_url = arg("recast.claim")?;
    narrate(&format!(
        "GET /boot/{mac}: the armed iPXE script; its kernel line names the claim URL {claim_url}"
    ));
    let path_of = |url: &str| {
        url.splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default()
    };
    let base = claim_url.trim_end_matches("/claim").to_string();
    let task_url = format!("{base}/task");
    // The imaging environment claims its try first; the session token works only from here.
    let claim_path = format!("{}?format=text", path_of(&claim_url));
    let mut token = String::new();
    for _ in 0..30 {
        if let Ok(r) =
            connect(boot).and_then(|s| http::send(s, "POST", &host, &claim_path, &[], b""))
            && r.status == 200
        {
            token = r.text().trim().to_string();
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if token.is_empty() {
        return None;
    }
    narrate("POST .../claim: the try is claimed; the session token is bound to this address");
    let task = get(&path_of(&task_url), Some(&token))?.json();
    narrate(&format!(
        "GET .../task: apply {} (sha256 {})",
        task["image"]["url"].as_str().unwrap_or("?"),
        task["image"]["sha256"].as_str().unwrap_or("?")
    ));
    let post = |what: &str, body: Value| {
        let bearer = format!("Bearer {token}");
        let path = path_of(&format!("{base}/{what}"));
        for _ in 0..30 {
            if let Ok(r) = connect(boot).and_then(|s| {
                http::send(
                    s,
                    "POST",
                    &host,
                    &path,
                    &[
                        ("Authorization", &bearer),
                        ("Content-Type", "application/json"),
                    ],
                    body.to_string().as_bytes(),
                )
            }) && r.status < 500
            {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    post(
        "progress",
        json!({"percent": 10, "step": "download", "message": "downloading the image"}),
    );
    let Some(url) = task["image"]["url"].as_str() else {
        post(
            "result",
            json!({"ok": false, "step": "task", "error": format!("the task names no image: {task}")}),
        );
        return None;
    };
    let image = get(&path_of(url), None)?;
    let sha: String = Sha256::digest(&image.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if Some(sha.as_str()) != task["image"]["sha256"].as_str() {
        post(
            "result",
            json!({"ok": false, "step": "checksum", "error": format!("sha256 {sha} is not {}", task["image"]["sha256"])}),
        );
        return None;
    }
    narrate(&format!(
        "downloaded the {}-byte WIM; its sha256 matches the task (progress 10%: download)",
        image.body.len()
    ));
    post(
        "progress",
        json!({"percent": 50, "step": "apply", "message": "applying the image"}),
    );
    narrate("POST .../progress 50%: applying the image");
    if control == FAIL_APPLY {
        post(
            "result",
            json!({"ok": false, "step": "apply", "error": "dism /Apply-Image failed: 0x8007000d (told to fail by the test)"}),
        );
        return None;
    }
    let config = get(&path_of(&format!("{base}/agent.json")), Some(&token))?.text();
    narrate(
        "GET .../agent.json: how the new Windows' agent enrolls (gateway, attempt id, one-time credential)",
    );
    post(
        "progress",
        json!({"percent": 100, "step": "done", "message": "image written"}),
    );
    post("result", json!({"ok": true}));
    narrate("POST .../result ok: the image is written; the machine reboots into it");
    Some(config)
}
