//! HTTP boot and the imaging protocol, driven by an independent client (curl) against the real
//! recast-operator binary on the embedded store: scripts per MAC, artifacts with HEAD, Range,
//! ETag and confinement, and what each bad request gets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

const MAC: &str = "52:54:00:88:00:01";

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl's answer: (status, headers, body).
fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("recast-curl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let headers = dir.join("h");
    let body = dir.join("b");
    let out = Command::new("curl")
        .args(["-s", "--path-as-is", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let h = std::fs::read_to_string(&headers).unwrap_or_default();
    let b = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    (code, h, b)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

struct Setup {
    dir: PathBuf,
    base: String,
    store: EmbeddedStore,
    digest: String,
    image: Vec<u8>,
    _op: Proc,
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("recast-boothttp-{}", uuid::Uuid::new_v4()));
    let root = dir.join("boot");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    std::fs::write(root.join("ipxe/undionly.kpxe"), b"not really iPXE").unwrap();
    std::fs::write(dir.join("outside.txt"), b"secret outside the boot root").unwrap();
    let image: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tmp = dir.join("img");
    std::fs::write(&tmp, &image).unwrap();
    let out = Command::new("sha256sum").arg(&tmp).output().unwrap();
    let digest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::rename(&tmp, root.join("images").join(format!("{digest}.wim"))).unwrap();
    let data = dir.join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    for d in [
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "pc-01"},
               "spec": {"identity": {"macAddresses": [MAC]}, "bootMode": "uefi", "image": {"goldenImage": "golden"}}}),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "default"},
               "spec": {"signals": {"failedRollback": "ReimageNow", "bootCrash": "ReimageNow", "heartbeatLost": "AlertOnly", "drift": "AlertOnly", "nonCompliant": "AlertOnly"},
                        "cooldown": "1m", "retry": {"maxTries": 2, "backoff": "1m", "tryTimeout": "30m"}, "concurrency": {"global": 5}}}),
        json!({"apiVersion": "recast.dev/v1alpha1", "kind": "GoldenImage", "metadata": {"name": "golden"},
               "spec": {"source": {"path": "/srv/golden.wim"}, "sha256": digest, "imageIndex": 2, "requirements": {"minimumBuild": "26100.7623"}}}),
    ] {
        store.apply(&d, "default").unwrap();
    }
    store
        .write_status(
            Kind::GoldenImage,
            "default",
            "golden",
            None,
            &json!({"digest": digest, "observedGeneration": 1, "conditions": [{"type": "Verified", "status": "True", "reason": "Checked", "message": "", "lastTransitionTime": "2026-01-14T07:00:00Z"}]}),
        )
        .unwrap();
    let port = recast_tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("operator.log")).unwrap();
    let op = Proc(
        Command::new(env!("CARGO_BIN_EXE_recast-operator"))
            .args(["run", "--backend", "embedded", "--data-dir"])
            .arg(&data)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", recast_tests::free_port()),
            ])
            .args(["--boot-http", &format!("127.0.0.1:{port}"), "--boot-root"])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    recast_tests::wait_for(Duration::from_secs(20), "HTTP boot", || {
        curl(&[&format!("{base}/boot.ipxe")]).0 == 200
    });
    Setup {
        dir,
        base,
        store,
        digest,
        image,
        _op: op,
    }
}

fn arm(s: &Setup) -> (String, String) {
    s.store
        .update(Kind::Endpoint, "default", "pc-01", |o| {
            o["spec"]["reimageRequest"] = json!({"token": "1", "reason": "test"});
            Ok(())
        })
        .unwrap();
    recast_tests::wait_for(Duration::from_secs(20), "the boot intent", || {
        s.store.boot_intent(MAC).unwrap().is_some()
    });
    let (code, _, body) = curl(&[&format!("{}/boot/{}", s.base, MAC.to_uppercase())]);
    assert_eq!(code, 200);
    let script = String::from_utf8(body).unwrap();
    let url_start = script.find("/imaging/v1/").expect("an imaging script");
    let rest = &script[url_start..];
    let attempt_url = format!(
        "{}{}",
        s.base,
        &rest[..rest.find("/startnet.cmd").expect("startnet initrd")]
    );
    let token_at = script.find("?token=").unwrap() + 7;
    let token = script[token_at..token_at + 64].to_string();
    (attempt_url, token)
}

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

    // The imaging protocol.
    let (attempt, token) = arm(&s);
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(curl(&[&format!("{attempt}/task")]).0, 401, "no token");
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
    let (code, _, body) = curl(&[&format!("{attempt}/startnet.cmd?token={token}")]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains(&s.digest));
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
    let _ = std::fs::remove_dir_all(dir_of(&s));
}

fn dir_of(s: &Setup) -> &Path {
    &s.dir
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
