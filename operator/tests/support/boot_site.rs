//! The boot test site: the real recast-operator on the embedded store with HTTP boot, one
//! endpoint (pc-01) and a verified image, and curl as the client. Shared by boot_http.rs and
//! the attack suite.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

pub const MAC: &str = "52:54:00:88:00:01";

pub struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl's answer: (status, headers, body).
pub fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
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

pub fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub struct Setup {
    pub dir: PathBuf,
    pub base: String,
    pub store: EmbeddedStore,
    pub digest: String,
    pub image: Vec<u8>,
    pub data: PathBuf,
    /// https://127.0.0.1:PORT and its CA file, when the site runs the agent gateway.
    pub gateway: Option<(String, PathBuf)>,
    /// https://127.0.0.1:PORT of the boot service's HTTPS listener and its CA file.
    pub https: Option<(String, PathBuf)>,
    pub _op: Proc,
}

pub fn setup() -> Setup {
    setup_with(false)
}

/// The site, with the agent gateway (TLS, enrollment on) when `gateway` (needs openssl).
pub fn setup_with(gateway: bool) -> Setup {
    setup_site(gateway, false)
}

/// The site, with the agent gateway when `gateway` and the boot service's HTTPS listener when
/// `https` (both need openssl).
pub fn setup_site(gateway: bool, https: bool) -> Setup {
    setup_full(gateway, https, &[])
}

/// [`setup_site`] with more operator flags.
pub fn setup_full(gateway: bool, https: bool, extra: &[&str]) -> Setup {
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recast-operator"));
    cmd.args(["run", "--backend", "embedded", "--data-dir"])
        .arg(&data)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", recast_tests::free_port()),
        ])
        .args(["--boot-http", &format!("127.0.0.1:{port}"), "--boot-root"])
        .arg(&root);
    let gateway = gateway.then(|| {
        let pki = recast_tests::redfish::make_pki(&dir, "gateway");
        let ca = dir.join("gateway-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let gw = format!("127.0.0.1:{}", recast_tests::free_port());
        cmd.args(["--gateway-listen", &gw, "--gateway-cert"])
            .arg(&pki.cert)
            .arg("--gateway-key")
            .arg(&pki.key)
            .args(["--gateway-url", &format!("https://{gw}")]);
        (format!("https://{gw}"), ca)
    });
    let https = https.then(|| {
        let pki = recast_tests::redfish::make_pki(&dir, "boot");
        let ca = dir.join("boot-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let listen = format!("127.0.0.1:{}", recast_tests::free_port());
        cmd.args(["--boot-https", &listen, "--boot-tls-cert"])
            .arg(&pki.cert)
            .arg("--boot-tls-key")
            .arg(&pki.key);
        (format!("https://{listen}"), ca)
    });
    cmd.args(extra);
    let op = Proc(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    recast_tests::wait_for(Duration::from_secs(20), "HTTP boot", || {
        curl(&[&format!("{base}/boot.ipxe")]).0 == 200
    });
    Setup {
        dir,
        base,
        store,
        digest,
        image,
        data,
        gateway,
        https,
        _op: op,
    }
}

/// Requests a reimage of pc-01 and waits until its try is armed and recast has "restarted"
/// it (no BMC: step Booting); returns the try's URL, read from the script /boot/MAC serves.
pub fn arm(s: &Setup) -> String {
    s.store
        .update(Kind::Endpoint, "default", "pc-01", |o| {
            o["spec"]["reimageRequest"] = json!({"token": "1", "reason": "test"});
            Ok(())
        })
        .unwrap();
    recast_tests::wait_for(Duration::from_secs(20), "the boot intent", || {
        s.store.boot_intent(MAC).unwrap().is_some() && step(s).as_deref() == Some("Booting")
    });
    let (code, _, body) = curl(&[&format!("{}/boot/{}", s.base, MAC.to_uppercase())]);
    assert_eq!(code, 200);
    let script = String::from_utf8(body).unwrap();
    assert!(
        !script.to_ascii_lowercase().contains("token"),
        "the script anyone can ask for carries no token:\n{script}"
    );
    let url_start = script.find("/imaging/v1/").expect("an imaging script");
    let rest = &script[url_start..];
    format!(
        "{}{}",
        s.base,
        &rest[..rest.find("/startnet.cmd").expect("startnet initrd")]
    )
}

/// The step of pc-01's running attempt.
pub fn step(s: &Setup) -> Option<String> {
    let ep = s.store.get(Kind::Endpoint, "default", "pc-01").unwrap()?;
    ep["status"]["activeAttempt"]["step"]
        .as_str()
        .map(str::to_string)
}

/// pc-01's phase.
pub fn phase(s: &Setup) -> Option<String> {
    let ep = s.store.get(Kind::Endpoint, "default", "pc-01").unwrap()?;
    ep["status"]["phase"].as_str().map(str::to_string)
}

/// Claims the try from `from` (a loopback address curl binds to); (status, body).
pub fn claim(attempt: &str, from: &str) -> (u16, String) {
    let (code, _, body) = curl(&[
        "--interface",
        from,
        "-X",
        "POST",
        &format!("{attempt}/claim"),
    ]);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// The session token of a successful claim.
pub fn claimed_token(attempt: &str, from: &str) -> String {
    let (code, body) = claim(attempt, from);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().unwrap().to_string()
}
