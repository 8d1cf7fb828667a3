//! Attacks from the provisioning network on the boot service's wire protocols, performed
//! against the real `recast-operator` binary on loopback (and, for the apiserver-load attack,
//! against the real kube-apiserver of `make k8s-up`). Each test does what an attacker would
//! and checks the refusal it should meet. docs/security/wire.md says what each one defends.
//!
//! - A DHCP flood (PXE and ordinary clients, thousands of MACs) costs the apiserver no
//!   request beyond the boot index's watches; one MAC's packets are rate-limited.
//! - Spoofed TFTP read requests asking for a 255 s timeout cannot hold every slot: a real
//!   client (tftp-hpa) still gets its file promptly, and the silent transfers end in ~30 s.
//! - A `--boot-url` too long for DHCP's file field stops the start with the limit named; a
//!   DHCP listener that dies makes /readyz fail.
//! - `/boot/{mac}` with made-up MACs in discover mode cannot grow the embedded store past its
//!   bound; one MAC's requests are rate-limited (429).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use recast_operator::store::embedded::{EmbeddedStore, MAX_DISCOVERED};
use recast_tests::{K8s, free_port, have, repo_root, skip_or_fail, wait_for};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");

/// The operator process; killed on drop. Its stderr is collected for failure messages.
struct Operator {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    listen: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn start(mut cmd: Command, listen: SocketAddr, dir: Option<tempfile::TempDir>) -> Operator {
        if !cmd.get_envs().any(|(k, _)| k == "RECAST_LOG") {
            cmd.env("RECAST_LOG", "info");
        }
        cmd.env("RECAST_POWER_DRIVER", "record")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start recast-operator");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Operator {
            child,
            lines,
            seen: Vec::new(),
            listen,
            _dir: dir,
        }
    }

    fn log(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// (status, body) of GET `path` on the health/metrics listener.
    fn health(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.listen, path)
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some((200, _)) = self.health("/readyz") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the operator exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the operator never became ready:\n{}", self.log());
    }

    /// The value of a metric line starting with `prefix` on /metrics (0 when absent).
    fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.health("/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A minimal HTTP/1.0 GET: (status, body), None when nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("recast-attack-wire-")
        .tempdir()
        .expect("tempdir")
}

/// `recast-operator run` on the embedded backend with the examples loaded, the boot HTTP
/// service on loopback, and `extra` arguments.
fn embedded_operator(extra: &[&str], env: &[(&str, &str)]) -> (Operator, SocketAddr, PathBuf) {
    let dir = tempdir();
    let data = dir.path().to_path_buf();
    std::fs::create_dir_all(data.join("boot/ipxe")).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let boot: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(OPERATOR);
    cmd.args(["run", "--backend", "embedded", "--data-dir"])
        .arg(&data)
        .arg("--load")
        .arg(repo_root().join("examples/endpoints.yaml"))
        .args(["--listen", &listen.to_string()])
        .args(["--boot-http", &boot.to_string()])
        .args(extra)
        .env_remove("RECAST_FAILPOINT")
        .envs(env.iter().copied());
    let op = Operator::start(cmd, listen, Some(dir));
    (op, boot, data)
}

const KNOWN_MAC: [u8; 6] = [0x52, 0x54, 0, 0xa1, 0, 0x01];

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A DHCP request as a PXE ROM (`pxe`) or an ordinary client sends it. ciaddr is set, so the
/// server answers the sender's address instead of broadcasting (RFC 2131 4.1), and the test
/// can count answers.
fn dhcp_packet(mac: [u8; 6], pxe: bool, xid: u32) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    if pxe {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(7u16.into()));
    } else {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"MSFT 5.0".to_vec()));
    }
    m.to_vec().expect("encode a DHCP request")
}

/// A MAC address derived from `n` (locally administered, so never a real vendor's).
fn made_up_mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0xbe, b[0], b[1], b[2], b[3]]
}

/// Sends a flood of DHCP packets to `port`; returns the answers received per MAC.
fn dhcp_flood(port: u16, packets: &[Vec<u8>]) -> std::collections::HashMap<String, u32> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reader = sock.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let counter = std::thread::spawn(move || {
        let mut answers = std::collections::HashMap::<String, u32>::new();
        let mut buf = [0u8; 1500];
        let mut quiet_since = Instant::now();
        let mut sent_all = false;
        loop {
            match reader.recv_from(&mut buf) {
                Ok((n, _)) => {
                    quiet_since = Instant::now();
                    if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(&m.chaddr()[..6]);
                        *answers.entry(mac_string(&mac)).or_default() += 1;
                    }
                }
                Err(_) => {
                    sent_all |= rx.try_recv().is_ok();
                    if sent_all && quiet_since.elapsed() > Duration::from_secs(1) {
                        return answers;
                    }
                }
            }
        }
    });
    for (i, p) in packets.iter().enumerate() {
        sock.send_to(p, to).unwrap();
        // Paced so that the loopback socket buffers do not drop most of the flood on the
        // floor: still thousands of packets per second.
        if i % 8 == 7 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    tx.send(()).unwrap();
    counter.join().unwrap()
}

/// The flood every DHCP test sends: `n` PXE requests from as many made-up MACs, `n` ordinary
/// clients' requests, and `n` PXE requests from the one MAC an Endpoint lists.
fn flood_packets(n: u32) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    for i in 0..n {
        packets.push(dhcp_packet(made_up_mac(i), true, i));
        packets.push(dhcp_packet(made_up_mac(1_000_000 + i), false, i));
        packets.push(dhcp_packet(KNOWN_MAC, true, i));
    }
    packets
}

/// Sum of apiserver_request_total for reads (LIST, GET) of recast Endpoints and of
/// ConfigMaps: what a boot lookup used to cost.
fn apiserver_reads(k: &K8s) -> u64 {
    let text = k.kubectl_ok(&["get", "--raw", "/metrics"]);
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("verb=\"LIST\"") || l.contains("verb=\"GET\""))
        .filter(|l| {
            (l.contains("resource=\"endpoints\"") && l.contains("group=\"recast.dev\""))
                || l.contains("resource=\"configmaps\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn a_dhcp_flood_costs_the_apiserver_no_request_beyond_the_watches() {
    let Some(k) = K8s::get() else { return };
    k.install_crds();
    let ns = k.fresh_namespace("attack-wire");
    k.kubectl_ok(&[
        "apply",
        "-n",
        &ns,
        "-f",
        &repo_root()
            .join("examples/endpoints.yaml")
            .to_string_lossy(),
    ]);
    // Another replica holds the lease for the whole test, so this process runs only its boot
    // service (and the watches): every read counted below would be the boot service's.
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        .to_string();
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "recast-operator", "namespace": ns},
        "spec": {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600,
                 "acquireTime": now, "renewTime": now}
    });
    let dir = tempdir();
    let lease_file = dir.path().join("lease.json");
    std::fs::write(&lease_file, lease.to_string()).unwrap();
    k.kubectl_ok(&["apply", "-f", &lease_file.to_string_lossy()]);

    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let boot: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dhcp_port = free_udp_port();
    let mut cmd = Command::new(OPERATOR);
    cmd.args(["run", "--backend", "kube", "--data-dir"])
        .arg(dir.path())
        .args(["--watch-namespace", &ns, "--lease-namespace", &ns])
        .args(["--identity", "attack-wire-boot"])
        .args(["--listen", &listen.to_string()])
        .args(["--boot-http", &boot.to_string()])
        .args(["--dhcp", "proxy", "--dhcp-server-ip", "127.0.0.1"])
        .args(["--dhcp-ports", &dhcp_port.to_string()])
        // Every PXE client gets an answer, so answers count the lookups that happened.
        .args(["--unknown-macs", "local"])
        // One log line per answer would slow the flood's receiver down.
        .env("RECAST_LOG", "warn")
        .env("KUBECONFIG", &k.kubeconfig);
    let mut op = Operator::start(cmd, listen, Some(dir));
    op.wait_ready();

    // The counter sees what it should: two reads by kubectl move it.
    let before_probe = apiserver_reads(&k);
    k.kubectl_ok(&["get", "rep", "-n", &ns]);
    k.kubectl_ok(&["get", "cm", "-n", &ns]);
    let after_probe = apiserver_reads(&k);
    assert!(
        after_probe >= before_probe + 2,
        "apiserver_request_total does not count list requests ({before_probe} -> {after_probe})"
    );

    let n = 1000;
    let before = apiserver_reads(&k);
    let answers = dhcp_flood(dhcp_port, &flood_packets(n));
    std::thread::sleep(Duration::from_secs(1));
    let after = apiserver_reads(&k);
    let log = op.log();
    assert_eq!(
        after - before,
        0,
        "{} DHCP packets caused {} reads of Endpoints/ConfigMaps (before the fix: two LISTs per packet)\n{log}",
        3 * n,
        after - before
    );
    check_dhcp_answers(&answers, n, &log);
    // The index is live: the known MAC's /boot script names its Endpoint.
    let (status, body) = http_get(boot, "/boot/52:54:00:a1:00:01").expect("boot answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("kiosk-01"), "{body}");
}

/// What a flood must have produced: the PXE requests of made-up MACs answered (each MAC sent
/// one, well under its rate), ordinary clients never answered (dropped before any lookup), and
/// the one MAC that sent `n` requests answered no more than its burst plus its refill.
fn check_dhcp_answers(answers: &std::collections::HashMap<String, u32>, n: u32, log: &str) {
    let ordinary = (0..n)
        .filter(|i| answers.contains_key(&mac_string(&made_up_mac(1_000_000 + i))))
        .count();
    assert_eq!(ordinary, 0, "ordinary DHCP clients were answered\n{log}");
    let pxe = (0..n)
        .filter(|i| answers.contains_key(&mac_string(&made_up_mac(*i))))
        .count();
    // UDP on a loaded machine drops some (the test machine runs several builds at once); at
    // least half must have been answered: the lookups happened.
    assert!(
        pxe as u32 >= n / 2,
        "only {pxe} of {n} PXE clients were answered\n{log}"
    );
    let known = answers.get(&mac_string(&KNOWN_MAC)).copied().unwrap_or(0);
    assert!(
        (1..=30).contains(&known),
        "the MAC that sent {n} requests got {known} answers; its rate is 12 at once, then 1/s\n{log}"
    );
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

#[test]
fn a_dhcp_flood_is_filtered_and_rate_limited_on_the_embedded_backend_too() {
    let dhcp_port = free_udp_port();
    let port = dhcp_port.to_string();
    let (mut op, _, _) = embedded_operator(
        &[
            "--dhcp",
            "proxy",
            "--dhcp-server-ip",
            "127.0.0.1",
            "--dhcp-ports",
            &port,
            "--unknown-macs",
            "local",
        ],
        &[("RECAST_LOG", "warn")],
    );
    op.wait_ready();
    let n = 1000;
    let answers = dhcp_flood(dhcp_port, &flood_packets(n));
    let log = op.log();
    check_dhcp_answers(&answers, n, &log);
    assert!(
        op.metric("recast_dhcp_replies_total{kind=\"not_pxe\"}") >= f64::from(n) * 0.9,
        "ordinary clients are not counted as dropped before lookup"
    );
    assert!(op.metric("recast_dhcp_replies_total{kind=\"rate_limited\"}") > 0.0);
}

#[test]
fn a_boot_url_too_long_for_dhcp_stops_the_start_with_the_limit() {
    let dir = tempdir();
    let listen = format!("127.0.0.1:{}", free_port());
    let boot = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{}.example.net:8081", "a".repeat(80));
    let out = Command::new(OPERATOR)
        .args(["run", "--backend", "embedded", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            &listen,
            "--boot-http",
            &boot,
            "--boot-url",
            &url,
        ])
        .args(["--dhcp", "proxy", "--dhcp-server-ip", "127.0.0.1"])
        .args(["--dhcp-ports", &free_udp_port().to_string()])
        .env("RECAST_POWER_DRIVER", "record")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run recast-operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a {}-byte URL",
        url.len()
    );
    assert!(
        stderr.contains("--boot-url may be at most 94 bytes"),
        "the error does not name the limit:\n{stderr}"
    );
}

#[test]
fn a_dhcp_listener_that_dies_makes_the_process_unready() {
    let dhcp_port = free_udp_port();
    let port = dhcp_port.to_string();
    let (mut op, _, _) = embedded_operator(
        &[
            "--dhcp",
            "proxy",
            "--dhcp-server-ip",
            "127.0.0.1",
            "--dhcp-ports",
            &port,
        ],
        &[("RECAST_FAILPOINT", "dhcp-serve")],
    );
    op.wait_ready();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&dhcp_packet(KNOWN_MAC, true, 1), ("127.0.0.1", dhcp_port))
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some((503, body)) = op.health("/readyz") {
            assert!(
                body.contains(&format!("dhcp:{dhcp_port}")),
                "readyz does not name the listener: {body}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/readyz still says ready after the DHCP listener died:\n{}",
            op.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(op.log().contains("FAILPOINT dhcp-serve"));
    // Alive, but not ready: an orchestrator replaces it.
    assert_eq!(op.health("/healthz").map(|r| r.0), Some(200));
}

#[test]
fn made_up_macs_in_discover_mode_cannot_grow_the_store_past_its_bound() {
    let (mut op, boot, data) = embedded_operator(&["--unknown-macs", "discover"], &[]);
    op.wait_ready();
    let flood = MAX_DISCOVERED as u32 + 600;
    for i in 0..flood {
        let mac = mac_string(&made_up_mac(i));
        let (status, body) = http_get(boot, &format!("/boot/{mac}")).expect("boot answers");
        assert_eq!(status, 200, "{mac}: {body}");
    }
    let store = EmbeddedStore::open(&data).expect("open the store");
    let discovered = store.discovered().expect("read discovered MACs");
    assert_eq!(
        discovered.len() as i64,
        MAX_DISCOVERED,
        "{} MACs asked; the table must hold the newest {MAX_DISCOVERED}",
        flood
    );
    // The newest are kept.
    assert_eq!(discovered[0].0, mac_string(&made_up_mac(flood - 1)));
    // One MAC asking again and again is rate-limited, and recorded once.
    let mac = mac_string(&made_up_mac(flood - 1));
    let statuses: Vec<u16> = (0..20)
        .map(|_| http_get(boot, &format!("/boot/{mac}")).expect("answer").0)
        .collect();
    assert!(
        statuses.contains(&429),
        "20 requests for one MAC were never refused: {statuses:?}\n{}",
        op.log()
    );
    let again = store.discovered().unwrap();
    assert_eq!(again.iter().filter(|(m, _)| *m == mac).count(), 1);
    assert_eq!(again.len() as i64, MAX_DISCOVERED);
}

/// Read requests from `count` loopback addresses (127.0.x.y: Linux delivers the whole /8 to
/// lo, so each is a distinct client to the server, as spoofed sources would be), each asking
/// for a 255 s timeout and never answering.
fn spoofed_rrqs(server: SocketAddr, count: u32, file: &str) -> Vec<UdpSocket> {
    let rrq = recast_tests::tftp::rrq_bytes(
        file,
        "octet",
        &[("timeout", "255"), ("blksize", "1468"), ("tsize", "0")],
    );
    (0..count)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            let s = UdpSocket::bind((ip, 0)).expect("bind a loopback address");
            s.send_to(&rrq, server).expect("send an RRQ");
            s
        })
        .collect()
}

#[test]
fn spoofed_tftp_requests_with_long_timeouts_do_not_starve_a_real_client() {
    if !have("tftp") {
        skip_or_fail(
            "RECAST_REQUIRE_BOOT",
            "tftp-hpa's client is not installed (tests/boot/setup.sh installs it)",
        );
        return;
    }
    let tftp_port = free_udp_port();
    let tftp = format!("127.0.0.1:{tftp_port}");
    let (mut op, _, data) = embedded_operator(&["--tftp", &tftp], &[]);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(data.join("boot/ipxe/undionly.kpxe"), &payload).unwrap();
    op.wait_ready();
    let server: SocketAddr = tftp.parse().unwrap();

    // 600 spoofed clients: more than the server's 512 slots.
    let flood = spoofed_rrqs(server, 600, "ipxe/undionly.kpxe");
    wait_for(
        Duration::from_secs(30),
        "the flood to fill the table",
        || op.metric("recast_tftp_active_transfers") >= 512.0,
    );
    // The 255 s timeout was not granted: the OACK leaves it out. (Client 300 is in the table
    // whether or not the server evicts: only the 88 oldest give up their slots.)
    let mut buf = [0u8; 2048];
    flood[300]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (n, _) = flood[300].recv_from(&mut buf).expect("an OACK");
    let oack = recast_tests::tftp::parse_reply(&buf[..n]);
    match &oack {
        recast_tests::tftp::Reply::Oack(opts) => assert!(
            !opts.iter().any(|(k, _)| k == "timeout"),
            "a 255 s timeout was acknowledged: {opts:?}"
        ),
        other => panic!("expected an OACK, got {other:?}"),
    }

    // A real client, with the table full of silent transfers, gets its file promptly.
    let out_dir = tempdir();
    let out = out_dir.path().join("undionly.kpxe");
    let started = Instant::now();
    let got = Command::new("tftp")
        .args([
            "-m",
            "binary",
            "127.0.0.1",
            &tftp_port.to_string(),
            "-c",
            "get",
        ])
        .arg("ipxe/undionly.kpxe")
        .arg(&out)
        .output()
        .expect("run tftp");
    let took = started.elapsed();
    let fetched = std::fs::read(&out).unwrap_or_default();
    assert!(
        fetched == payload,
        "the real client did not get its file ({} of {} bytes) with the table full of spoofed transfers: {}{}",
        fetched.len(),
        payload.len(),
        String::from_utf8_lossy(&got.stdout),
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(op.metric("recast_tftp_requests_refused_total{reason=\"evicted_unanswered\"}") >= 1.0);
    assert_eq!(
        op.metric("recast_tftp_requests_refused_total{reason=\"server_busy\"}"),
        0.0
    );

    // The silent transfers end within the stall limit (30 s), not after 6 × 255 s.
    wait_for(
        Duration::from_secs(45),
        "the spoofed transfers to time out",
        || op.metric("recast_tftp_active_transfers") == 0.0,
    );
    drop(flood);
}

/// A managed MAC's `/boot` requests each record a NetworkBootFallback event; however many
/// arrive over time, an object's history stays bounded (oldest dropped) and the newest stay.
#[test]
fn an_objects_event_history_is_bounded() {
    use recast_operator::store::embedded::{EventRecord, MAX_EVENTS_PER_OBJECT};
    let dir = tempdir();
    let store = EmbeddedStore::open(dir.path()).expect("open a store");
    let kind = recast_crds::manifest::Kind::Endpoint;
    let extra = 150;
    for i in 0..MAX_EVENTS_PER_OBJECT + extra {
        let ev = EventRecord {
            time: format!("t{i:06}"),
            type_: "Warning".into(),
            reason: "NetworkBootFallback".into(),
            message: format!("boot {i}"),
        };
        store
            .record_event(kind, "default", "kiosk-01", &ev)
            .unwrap();
    }
    // Another object's history is untouched by the cap.
    let other = EventRecord {
        time: "t".into(),
        type_: "Normal".into(),
        reason: "Other".into(),
        message: "kept".into(),
    };
    store
        .record_event(kind, "default", "kiosk-02", &other)
        .unwrap();
    let events = store.events(kind, "default", "kiosk-01").unwrap();
    assert_eq!(events.len() as i64, MAX_EVENTS_PER_OBJECT);
    assert_eq!(events[0].message, format!("boot {extra}"));
    assert_eq!(
        events.last().map(|e| e.message.clone()),
        Some(format!("boot {}", MAX_EVENTS_PER_OBJECT + extra - 1))
    );
    assert_eq!(store.events(kind, "default", "kiosk-02").unwrap().len(), 1);
}
