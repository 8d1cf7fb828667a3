//! Attacks on the agent gateway (issue 17, the gateway's medium items), performed against the
//! real `recast-operator` binary over real TLS. The attacker is on the network the agents
//! report over: it can capture and resend a report, hold connections open, flood from its own
//! address, and read files a careless umask leaves world-readable.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use recast_agent::simulate::{Scenario, simulated_report};
use recast_crds::report::AgentReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recast-attack-gw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test CA and a certificate for 127.0.0.1 signed by it: (CA, cert, key). None after a
/// loud skip without the openssl CLI.
fn certificate(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.join("ca.key"),
        dir.join("ca.crt"),
        dir.join("gw.key"),
        dir.join("gw.csr"),
        dir.join("gw.crt"),
        dir.join("gw.ext"),
    );
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let run = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let os = std::ffi::OsStr::new;
    let ec = [
        os("-newkey"),
        os("ec"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:prime256v1"),
        os("-nodes"),
    ];
    let mut a = vec![os("req"), os("-x509")];
    a.extend(ec);
    a.extend([
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=attack CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    if let Err(e) = run(&a) {
        recast_tests::skip_or_fail(
            "RECAST_REQUIRE_OPENSSL",
            &format!("gateway attack tests need the openssl CLI: {e}"),
        );
        return None;
    }
    let mut b = vec![os("req")];
    b.extend(ec);
    b.extend([
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ]);
    run(&b).unwrap();
    run(&[
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ])
    .unwrap();
    Some((ca, cert, key))
}

/// Runs with umask 000: every file mode below is the program's own choice.
fn loose_umask(cmd: &mut Command) -> &mut Command {
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    }
}

struct Site {
    dir: PathBuf,
    data: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    token: String,
    port: u16,
}

impl Site {
    fn new(tag: &str) -> Option<Site> {
        let dir = temp_dir(tag);
        let (ca, cert, key) = certificate(&dir)?;
        let data = dir.join("data");
        let issued = loose_umask(
            Command::new(OPERATOR)
                .args(["gateway-token", "issue", "default/kiosk-01"])
                .arg("--data-dir")
                .arg(&data),
        )
        .output()
        .unwrap();
        assert!(
            issued.status.success(),
            "{}",
            String::from_utf8_lossy(&issued.stderr)
        );
        let token = String::from_utf8_lossy(&issued.stdout).trim().to_string();
        Some(Site {
            dir,
            data,
            ca,
            cert,
            key,
            token,
            port: recast_tests::free_port(),
        })
    }

    fn start(&self, extra: &[&str]) -> Operator {
        let child = loose_umask(
            Command::new(OPERATOR)
                .args(["run", "--backend", "embedded", "--listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(&self.data)
                .arg("--load")
                .arg(recast_tests::repo_root().join("examples"))
                .args(["--power-driver", "record"])
                .args(["--gateway-listen", &format!("127.0.0.1:{}", self.port)])
                .arg("--gateway-cert")
                .arg(&self.cert)
                .arg("--gateway-key")
                .arg(&self.key)
                .args(extra)
                .env("RECAST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .spawn()
        .unwrap();
        let port = self.port;
        recast_tests::wait_for(Duration::from_secs(30), "the gateway to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Operator(child)
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/v1/reports", self.port)
    }

    /// A client whose connections come from `from` (any 127/8 address is this machine).
    fn client(&self, from: &str) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Operator(Child);

impl Operator {
    /// SIGKILL: no shutdown hook runs, as in an OOM kill or a node failure.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn report(seq: u64, collected_at: jiff::Timestamp) -> AgentReport {
    simulated_report("kiosk-01", Scenario::Healthy, 0, seq, collected_at, 300)
}

async fn post(
    client: &reqwest::Client,
    site: &Site,
    token: &str,
    r: &AgentReport,
) -> (u16, String) {
    let resp = client
        .post(site.url())
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(r).unwrap())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_replayed_after_a_sigkill_right_after_its_200_is_refused() {
    let Some(site) = Site::new("replay") else {
        return;
    };
    let client = site.client("127.0.0.1");
    let op = site.start(&[]);
    let r = report(41, jiff::Timestamp::now());
    let (status, body) = post(&client, &site, &site.token, &r).await;
    assert_eq!(status, 200, "{body}");
    // At once: no periodic flush gets a chance.
    op.kill();
    let _op = site.start(&[]);
    let (status, body) = post(&client, &site, &site.token, &r).await;
    assert_eq!(
        status, 409,
        "the captured report was accepted again: {body}"
    );
    assert!(body.contains("sequence 41"), "{body}");
    let (status, body) = post(
        &client,
        &site,
        &site.token,
        &report(42, jiff::Timestamp::now()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The endpoint's status once the controller has decided everything queued for it.
async fn settled_status(site: &Site) -> serde_json::Value {
    let store = recast_operator::store::embedded::EmbeddedStore::open_existing(&site.data).unwrap();
    for _ in 0..400 {
        if store.inputs_for("default", "kiosk-01").unwrap().is_empty() {
            let ep = store
                .get(recast_crds::manifest::Kind::Endpoint, "default", "kiosk-01")
                .unwrap()
                .unwrap();
            return ep.get("status").cloned().unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the controller did not drain kiosk-01's inbox");
}

/// A report at rest (the facts the gateway last handed on) is answered before its mark is
/// saved (the flusher saves it within 5 s). Replayed after a SIGKILL that came before that, it
/// is accepted again (or refused, had the flush landed); either way it can only repeat what the
/// controller already has: the signals, the build and any attempt are as before (its report
/// time is fresh: docs/security/gateway.md says what that allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_rest_report_replayed_after_a_sigkill_repeats_only_what_is_known() {
    let Some(site) = Site::new("replay-at-rest") else {
        return;
    };
    let client = site.client("127.0.0.1");
    let op = site.start(&[]);
    let (status, body) = post(
        &client,
        &site,
        &site.token,
        &report(41, jiff::Timestamp::now()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let at_rest = report(42, jiff::Timestamp::now());
    let (status, body) = post(&client, &site, &site.token, &at_rest).await;
    assert_eq!(status, 200, "{body}");
    op.kill();
    let _op = site.start(&[]);
    // What the controller knows (the restarted one decides what the first left queued).
    let before = settled_status(&site).await;
    let (status, body) = post(&client, &site, &site.token, &at_rest).await;
    assert!(
        status == 409 || status == 200,
        "the replay got {status}: {body}"
    );
    eprintln!("the at-rest report replayed after the SIGKILL: {status}");
    let after = settled_status(&site).await;
    for field in ["signals", "activeAttempt", "conditions"] {
        let strip = |v: &serde_json::Value| {
            let mut v = v.get(field).cloned().unwrap_or_default();
            // Condition times move with any write; their kinds and states are what count.
            if let Some(list) = v.as_array_mut() {
                for c in list {
                    if let Some(o) = c.as_object_mut() {
                        o.retain(|k, _| k == "type" || k == "status" || k == "reason");
                    }
                }
            }
            v
        };
        assert_eq!(
            strip(&before),
            strip(&after),
            "{field} moved: replay got {status}"
        );
    }
    assert_eq!(
        before.pointer("/lastReport/build"),
        after.pointer("/lastReport/build")
    );
    // The replay never holds the sequence space back.
    let (status, body) = post(
        &client,
        &site,
        &site.token,
        &report(43, jiff::Timestamp::now()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The bound on what an at-rest copy can do: it never goes back past a report that changed
/// something. 42 is at rest (answered before its mark is saved), 43 changes the facts (a failed
/// rollback: committed before its 200); SIGKILL right after 43's 200; the replayed 42 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cannot_go_back_past_a_committed_change() {
    let Some(site) = Site::new("replay-past-change") else {
        return;
    };
    let client = site.client("127.0.0.1");
    let op = site.start(&[]);
    let now = jiff::Timestamp::now;
    let (status, body) = post(&client, &site, &site.token, &report(41, now())).await;
    assert_eq!(status, 200, "{body}");
    let at_rest = report(42, now());
    let (status, body) = post(&client, &site, &site.token, &at_rest).await;
    assert_eq!(status, 200, "{body}");
    let change = simulated_report("kiosk-01", Scenario::FailedRollback, 0, 43, now(), 300);
    let (status, body) = post(&client, &site, &site.token, &change).await;
    assert_eq!(status, 200, "{body}");
    op.kill();
    let _op = site.start(&[]);
    let (status, body) = post(&client, &site, &site.token, &at_rest).await;
    assert_eq!(
        status, 409,
        "the at-rest copy went back past a committed change: {body}"
    );
    assert!(body.contains("sequence 42"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_dated_reports_are_refused_without_using_up_their_sequence() {
    let Some(site) = Site::new("fresh") else {
        return;
    };
    let client = site.client("127.0.0.1");
    let _op = site.start(&[
        "--gateway-max-report-age",
        "30m",
        "--gateway-max-clock-skew",
        "2m",
    ]);
    let now = jiff::Timestamp::now();
    let hours = |h: i64| jiff::SignedDuration::from_hours(h);
    let (status, body) = post(&client, &site, &site.token, &report(7, now - hours(2))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("--gateway-max-report-age"), "{body}");
    let (status, body) = post(&client, &site, &site.token, &report(7, now + hours(1))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("--gateway-max-clock-skew"), "{body}");
    // A report years old (captured long ago, or a clock reset to its epoch) likewise.
    let old: jiff::Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    let (status, _) = post(&client, &site, &site.token, &report(7, old)).await;
    assert_eq!(status, 422);
    // The refusals consumed nothing: the fresh report with that sequence is accepted.
    let (status, body) = post(
        &client,
        &site,
        &site.token,
        &report(7, jiff::Timestamp::now()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_does_not_lock_out_another() {
    let Some(site) = Site::new("flood") else {
        return;
    };
    // A small global budget, so that spending it is easy: 20/s, bursts of 40.
    let _op = site.start(&[
        "--gateway-max-reports-per-second",
        "20",
        "--gateway-max-requests-per-second-per-ip",
        "5",
    ]);
    let attacker = site.client("127.0.0.2");
    let junk: Vec<String> = (0..300)
        .map(|i| format!("rct_{:064x}", 0xdead_0000_u64 + i))
        .collect();
    let r = report(1, jiff::Timestamp::now());
    let flood = junk.iter().map(|t| post(&attacker, &site, t, &r));
    let answers = futures::future::join_all(flood).await;
    let count = |code: u16| answers.iter().filter(|(s, _)| *s == code).count();
    assert_eq!(count(401) + count(429), answers.len());
    let per_address = answers
        .iter()
        .filter(|(s, b)| *s == 429 && b.contains("from this address"))
        .count();
    assert!(
        per_address > 200,
        "the flood was not limited per address: {per_address} of {} x 429 were",
        count(429)
    );
    // The real agent, from its own address, right after the flood.
    let agent = site.client("127.0.0.1");
    let (status, body) = post(&agent, &site, &site.token, &r).await;
    assert_eq!(status, 200, "the flood locked out another address: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_body_is_cut_off() {
    let Some(site) = Site::new("slowloris") else {
        return;
    };
    let _op = site.start(&["--gateway-body-timeout", "2s"]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for c in CertificateDer::pem_file_iter(&site.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", site.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{{\"endpoint\":",
        site.token
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let started = std::time::Instant::now();
    // The rest of the body never comes. The gateway must answer and hang up by itself.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "the connection was still held open after 15 s: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut off only after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_databases_and_data_directory_are_owner_only_under_a_loose_umask() {
    let Some(site) = Site::new("modes") else {
        return;
    };
    let client = site.client("127.0.0.1");
    let _op = site.start(&[]);
    let (status, body) = post(
        &client,
        &site,
        &site.token,
        &report(1, jiff::Timestamp::now()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mode(&site.data), 0o700, "data directory");
    for f in ["recast.db", "recast.db-wal", "gateway.db", "gateway.db-wal"] {
        assert_eq!(mode(&site.data.join(f)), 0o600, "{f}");
    }
    // No file in the data directory (the imaging key included) is readable by others.
    for e in std::fs::read_dir(&site.data).unwrap().flatten() {
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        let m = mode(&e.path());
        assert_eq!(m & 0o077, 0, "{} is {m:o}", e.path().display());
    }
}
