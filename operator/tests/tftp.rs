//! The TFTP server against independent clients (tftp-hpa's `tftp`, `atftp`) and a raw UDP
//! client for protocol corner cases. The packaged clients come from tests/boot/setup.sh; without
//! them those tests skip loudly, unless RECAST_REQUIRE_BOOT=1 (CI) makes them mandatory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use recast_operator::boot::tftp::path::BootPath;
use recast_operator::boot::tftp::source::OpenFuture;
use recast_operator::boot::tftp::{
    BudgetConfig, FileSource, FsSource, OpenedFile, TftpConfig, TftpMetrics, TftpServer,
};
use recast_tests::tftp::{self as raw, RawClient, Reply};

const REQUIRE: &str = "RECAST_REQUIRE_BOOT";

// ---------------------------------------------------------------------------------------------
// Harness

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop: `root/` is served, `outside/` holds a secret that must
/// never be sent.
struct Scratch {
    base: PathBuf,
}

const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-BOOT-ROOT-7f3a";

impl Scratch {
    fn new() -> Scratch {
        let base = std::env::temp_dir().join(format!(
            "recast-tftp-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("root/boot/x64")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::create_dir_all(base.join("downloads")).unwrap();
        std::fs::write(base.join("outside/secret.txt"), SECRET).unwrap();
        Scratch { base }
    }
    fn root(&self) -> PathBuf {
        self.base.join("root")
    }
    fn downloads(&self) -> PathBuf {
        self.base.join("downloads")
    }
    fn put(&self, rel: &str, bytes: &[u8]) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Deterministic bytes that differ block to block, so a misplaced block changes the content.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The server on its own runtime thread; stopped and joined on drop.
struct Server {
    addr: SocketAddr,
    metrics: TftpMetrics,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn fast_config() -> TftpConfig {
    let mut c = TftpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..TftpConfig::default()
    };
    c.limits.default_timeout = Duration::from_millis(200);
    c.max_backoff = Duration::from_millis(800);
    c.max_retries = 4;
    // Every client here is 127.0.0.1.
    c.budget = BudgetConfig {
        max_transfers_per_client: 256,
        packets_per_sec: 1_000_000,
        bytes_per_sec: 1 << 34,
        ..BudgetConfig::default()
    };
    c
}

impl Server {
    fn start(config: TftpConfig, source: Arc<dyn FileSource>) -> Server {
        let metrics = TftpMetrics::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = TftpServer::bind(config, source, m).await.unwrap();
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Server {
            addr,
            metrics,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn fs(scratch: &Scratch, config: TftpConfig) -> Server {
        Server::start(config, Arc::new(FsSource::new(scratch.root()).unwrap()))
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    fn outcome(&self, outcome: &str) -> u64 {
        self.metrics.transfers_with(outcome)
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&TftpMetrics) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond(&self.metrics) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}: {:?}",
                self.metrics
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !std::thread::panicking() {
            assert_eq!(self.metrics.panics.get(), 0, "a transfer task panicked");
        }
    }
}

/// The path of an installed peer, or None after a loud skip.
fn peer(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        recast_tests::skip_or_fail(
            REQUIRE,
            &format!("`{tool}` is not installed; run tests/boot/setup.sh (TFTP peer tests)"),
        );
    }
    found
}

struct Run {
    ok: bool,
    output: String,
}

/// Runs a client process with a deadline, so a stuck client fails the test instead of hanging it.
fn run(cmd: &mut Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    Run {
        ok: status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn tftp_hpa_get(tftp: &Path, server: &Server, mode: &str, remote: &str, local: &Path) -> Run {
    run(
        Command::new(tftp)
            .args(["-m", mode, "127.0.0.1", &server.port(), "-c", "get", remote])
            .arg(local),
        Duration::from_secs(180),
    )
}

fn atftp_get(atftp: &Path, server: &Server, options: &[&str], remote: &str, local: &Path) -> Run {
    let mut cmd = Command::new(atftp);
    for o in options {
        cmd.args(["--option", o]);
    }
    cmd.args(["--verbose", "-g", "-r", remote, "-l"])
        .arg(local)
        .args(["127.0.0.1", &server.port()]);
    run(&mut cmd, Duration::from_secs(180))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    assert!(got == want, "{what}: content differs");
}

// ---------------------------------------------------------------------------------------------
// Independent clients

#[test]
fn tftp_hpa_downloads_binary_files_byte_for_byte() {
    let Some(tftp) = peer("tftp") else { return };
    let s = Scratch::new();
    let sizes = [0usize, 1, 511, 512, 513, 1024, 100_000];
    for (i, n) in sizes.iter().enumerate() {
        s.put(&format!("f{i}.bin"), &pattern(*n, i as u64 + 1));
    }
    s.put("boot/x64/wdsnbp.com", &pattern(3000, 99));
    let server = Server::fs(&s, fast_config());
    for (i, n) in sizes.iter().enumerate() {
        let local = s.downloads().join(format!("f{i}.bin"));
        let r = tftp_hpa_get(&tftp, &server, "binary", &format!("f{i}.bin"), &local);
        assert!(r.ok, "tftp get f{i}.bin: {}", r.output);
        assert_same(
            &read(&local),
            &pattern(*n, i as u64 + 1),
            &format!("f{i}.bin ({n} bytes)"),
        );
    }
    // Windows-style and root-relative names reach the same file.
    for name in ["boot\\x64\\wdsnbp.com", "/boot/x64/wdsnbp.com"] {
        let local = s.downloads().join("wds");
        let r = tftp_hpa_get(&tftp, &server, "binary", name, &local);
        assert!(r.ok, "tftp get {name}: {}", r.output);
        assert_same(&read(&local), &pattern(3000, 99), name);
    }
    assert_eq!(server.outcome("completed"), sizes.len() as u64 + 2);
}

#[test]
fn block_numbers_roll_over_past_65535_with_tftp_hpa() {
    let Some(tftp) = peer("tftp") else { return };
    let s = Scratch::new();
    // 65536 full blocks of 512 and a partial one: block numbers wrap to 0 once.
    let big = pattern(65536 * 512 + 777, 7);
    s.put("big.bin", &big);
    let server = Server::fs(&s, fast_config());
    let local = s.downloads().join("big.bin");
    let r = tftp_hpa_get(&tftp, &server, "binary", "big.bin", &local);
    assert!(r.ok, "{}", r.output);
    assert_same(&read(&local), &big, "big.bin over tftp-hpa");
}

#[test]
fn netascii_is_converted_and_read_back_by_tftp_hpa() {
    let Some(tftp) = peer("tftp") else { return };
    let s = Scratch::new();
    let text: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i} of the boot menu\n").into_bytes())
        .collect();
    s.put("menu.txt", &text);
    let server = Server::fs(&s, fast_config());
    let local = s.downloads().join("menu.txt");
    let r = tftp_hpa_get(&tftp, &server, "netascii", "menu.txt", &local);
    assert!(r.ok, "{}", r.output);
    assert_same(&read(&local), &text, "netascii round trip");
}

#[test]
fn atftp_negotiates_blksize_windowsize_and_tsize() {
    let Some(atftp) = peer("atftp") else { return };
    let s = Scratch::new();
    let file = pattern(5_000_000 + 123, 3);
    s.put("ipxe.efi", &file);
    let server = Server::fs(&s, fast_config());
    for (i, options) in [
        vec!["blksize 1468"],
        vec!["windowsize 16"],
        vec!["blksize 1468", "windowsize 16", "tsize 0"],
        vec!["tsize 0"],
        vec!["blksize 8"],
        vec!["blksize 65464", "windowsize 4"],
        vec!["timeout 2", "blksize 1024"],
    ]
    .iter()
    .enumerate()
    {
        let local = s.downloads().join(format!("ipxe{i}.efi"));
        let r = atftp_get(&atftp, &server, options, "ipxe.efi", &local);
        assert!(r.ok, "atftp {options:?}: {}", r.output);
        assert_same(&read(&local), &file, &format!("atftp {options:?}"));
    }

    // What atftp saw on the wire (its --trace), on a small file so the trace stays short: the
    // OACK carries the negotiated values and the client ACKs once per window.
    let small = pattern(5000, 4);
    s.put("small.bin", &small);
    let local = s.downloads().join("small.bin");
    let mut cmd = Command::new(&atftp);
    for o in ["windowsize 4", "blksize 1468", "tsize 0"] {
        cmd.args(["--option", o]);
    }
    cmd.args(["--trace", "-g", "-r", "small.bin", "-l"])
        .arg(&local)
        .args(["127.0.0.1", &server.port()]);
    let r = run(&mut cmd, Duration::from_secs(60));
    assert!(r.ok, "{}", r.output);
    assert_same(&read(&local), &small, "atftp --trace download");
    let oack = r
        .output
        .lines()
        .find(|l| l.starts_with("received OACK"))
        .unwrap_or_else(|| panic!("atftp received no OACK:\n{}", r.output));
    for want in ["tsize: 5000", "windowsize: 4", "blksize: 1468"] {
        assert!(oack.contains(want), "{want} missing from {oack:?}");
    }
    let acks: Vec<&str> = r
        .output
        .lines()
        .filter(|l| l.starts_with("sent ACK"))
        .collect();
    assert_eq!(
        acks,
        vec!["sent ACK <block: 0>", "sent ACK <block: 4>"],
        "{}",
        r.output
    );
}

#[test]
fn atftp_windowsize_16_rolls_over_block_numbers() {
    let Some(atftp) = peer("atftp") else { return };
    let s = Scratch::new();
    let big = pattern(65536 * 512 + 10_001, 11);
    s.put("big.bin", &big);
    let server = Server::fs(&s, fast_config());
    let local = s.downloads().join("big.bin");
    let r = atftp_get(&atftp, &server, &["windowsize 16"], "big.bin", &local);
    assert!(r.ok, "{}", r.output);
    assert_same(&read(&local), &big, "big.bin over atftp windowsize 16");
}

#[test]
fn many_concurrent_clients_each_get_their_file() {
    let tftp = peer("tftp");
    let atftp = peer("atftp");
    let s = Scratch::new();
    for i in 0..30u64 {
        s.put(
            &format!("c{i}.bin"),
            &pattern(200_000 + i as usize * 1000, i + 100),
        );
    }
    let server = Server::fs(&s, fast_config());
    let addr = server.addr;
    let server = Arc::new(server);
    let mut handles = Vec::new();
    for i in 0..30u64 {
        let (tftp, atftp, s_root) = (tftp.clone(), atftp.clone(), s.downloads());
        let server = server.clone();
        handles.push(std::thread::spawn(move || {
            let want = pattern(200_000 + i as usize * 1000, i + 100);
            let name = format!("c{i}.bin");
            let local = s_root.join(&name);
            match i % 3 {
                0 if tftp.is_some() => {
                    let r =
                        tftp_hpa_get(tftp.as_deref().unwrap(), &server, "binary", &name, &local);
                    assert!(r.ok, "{}", r.output);
                    assert_same(&read(&local), &want, &name);
                }
                1 if atftp.is_some() => {
                    let r = atftp_get(
                        atftp.as_deref().unwrap(),
                        &server,
                        &["blksize 1468", "windowsize 8"],
                        &name,
                        &local,
                    );
                    assert!(r.ok, "{}", r.output);
                    assert_same(&read(&local), &want, &name);
                }
                _ => {
                    let d = raw::get(addr, &name, Some(1024), Some(4), true).unwrap();
                    assert_same(&d.data, &want, &name);
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    server.wait_for("every transfer to finish", |m| m.active.get() == 0);
    assert_eq!(server.outcome("completed"), 30);
}

// ---------------------------------------------------------------------------------------------
// Confinement and refusals

fn expect_error(server: &Server, file: &str) -> (u16, String) {
    let mut c = RawClient::new(server.addr).unwrap();
    c.rrq(file, "octet", &[]).unwrap();
    match c.recv().unwrap() {
        Some((Reply::Error { code, message }, _)) => (code, message),
        other => panic!("{file:?}: expected an ERROR, got {other:?}"),
    }
}

#[test]
fn traversal_absolute_paths_and_symlink_escapes_are_refused() {
    let s = Scratch::new();
    s.put("ok.bin", b"inside");
    std::os::unix::fs::symlink(s.base.join("outside/secret.txt"), s.root().join("escape")).unwrap();
    std::os::unix::fs::symlink(s.base.join("outside"), s.root().join("outdir")).unwrap();
    std::os::unix::fs::symlink("ok.bin", s.root().join("alias.bin")).unwrap();
    std::fs::create_dir(s.root().join("adir")).unwrap();
    let server = Server::fs(&s, fast_config());

    for name in [
        "../outside/secret.txt",
        "../../../../etc/passwd",
        "boot/../../outside/secret.txt",
        "..\\outside\\secret.txt",
        "C:\\outside\\secret.txt",
        "\\\\server\\share\\x",
    ] {
        let (code, msg) = expect_error(&server, name);
        assert_eq!(code, 2, "{name}: {msg}");
    }
    for name in ["escape", "outdir/secret.txt", "adir"] {
        let (code, msg) = expect_error(&server, name);
        assert_eq!(code, 2, "{name}: {msg}");
    }
    // An absolute path is taken relative to the root, so /etc/passwd is simply not there.
    let (code, msg) = expect_error(&server, "/etc/passwd");
    assert_eq!(code, 1, "/etc/passwd: {msg}");
    let (code, _) = expect_error(&server, "ok.bin/child");
    assert_eq!(code, 1);
    // A symlink that stays inside the root is fine.
    let d = raw::get(server.addr, "alias.bin", None, None, true).unwrap();
    assert_eq!(d.data, b"inside");
    assert!(server.metrics.refused_with("path") >= 6);
}

#[test]
fn tftp_hpa_cannot_fetch_outside_the_root() {
    let Some(tftp) = peer("tftp") else { return };
    let s = Scratch::new();
    std::os::unix::fs::symlink(s.base.join("outside/secret.txt"), s.root().join("escape")).unwrap();
    let server = Server::fs(&s, fast_config());
    for name in ["../outside/secret.txt", "escape", "/etc/passwd"] {
        let local = s.downloads().join("loot");
        let r = tftp_hpa_get(&tftp, &server, "binary", name, &local);
        assert!(
            r.output.contains("Error code"),
            "tftp get {name} should report a server error: {}",
            r.output
        );
        assert!(!read(&local).windows(SECRET.len()).any(|w| w == SECRET));
    }
}

#[test]
fn write_requests_are_refused_and_write_nothing() {
    let s = Scratch::new();
    let server = Server::fs(&s, fast_config());
    let mut c = RawClient::new(server.addr).unwrap();
    c.send_to(&raw::wrq_bytes("upload.bin", "octet"), server.addr)
        .unwrap();
    match c.recv().unwrap() {
        Some((Reply::Error { code, message }, _)) => {
            assert_eq!(code, 2, "{message}");
            assert!(message.contains("read-only"), "{message}");
        }
        other => panic!("expected ERROR 2, got {other:?}"),
    }
    if let Some(tftp) = peer("tftp") {
        let local = s.downloads().join("up.bin");
        std::fs::write(&local, b"payload").unwrap();
        let r = run(
            Command::new(tftp)
                .args(["-m", "binary", "127.0.0.1", &server.port(), "-c", "put"])
                .arg(&local)
                .arg("up.bin"),
            Duration::from_secs(60),
        );
        assert!(r.output.contains("Error code 2"), "{}", r.output);
    }
    assert!(!s.root().join("upload.bin").exists());
    assert!(!s.root().join("up.bin").exists());
    assert!(server.metrics.refused_with("write_request") >= 1);
}

#[test]
fn per_client_transfer_limit_refuses_the_extra_transfer() {
    let s = Scratch::new();
    s.put("a.bin", &pattern(10_000, 1));
    let mut config = fast_config();
    config.budget.max_transfers_per_client = 2;
    config.limits.default_timeout = Duration::from_secs(5);
    let server = Server::fs(&s, config);
    // Two transfers that we never acknowledge hold both slots.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut c = RawClient::new(server.addr).unwrap();
        c.rrq("a.bin", "octet", &[]).unwrap();
        assert!(matches!(
            c.recv().unwrap(),
            Some((Reply::Data { block: 1, .. }, _))
        ));
        holders.push(c);
    }
    let (code, message) = expect_error(&server, "a.bin");
    assert_eq!(code, 0);
    assert!(message.contains("transfers in progress"), "{message}");
    assert_eq!(server.metrics.refused_with("client_budget"), 1);
}

// ---------------------------------------------------------------------------------------------
// Protocol corner cases (raw client)

/// Starts a plain transfer and returns the client, the server's TID and block 1.
fn start_plain(server: &Server, file: &str) -> (RawClient, SocketAddr, Vec<u8>) {
    let mut c = RawClient::new(server.addr).unwrap();
    c.rrq(file, "octet", &[]).unwrap();
    match c.recv().unwrap() {
        Some((Reply::Data { block: 1, data }, tid)) => (c, tid, data),
        other => panic!("expected DATA 1, got {other:?}"),
    }
}

#[test]
fn duplicate_acks_never_cause_duplicate_data() {
    let s = Scratch::new();
    let file = pattern(512 * 40 + 100, 5);
    s.put("f.bin", &file);
    let mut config = fast_config();
    // Long enough that no timeout resend can happen while the client answers promptly.
    config.limits.default_timeout = Duration::from_secs(10);
    let server = Server::fs(&s, config);
    let (mut c, tid, first) = start_plain(&server, "f.bin");
    let mut got = first;
    let mut data_packets = 1;
    let mut block = 1u16;
    loop {
        // Every ACK three times: a sorcerer's-apprentice server would answer each copy.
        for _ in 0..3 {
            c.send_to(&raw::ack_bytes(block), tid).unwrap();
        }
        if got.len() == file.len() {
            break;
        }
        match c.recv().unwrap() {
            Some((Reply::Data { block: b, data }, _)) => {
                assert_eq!(b, block + 1, "out-of-order or repeated DATA");
                data_packets += 1;
                got.extend(data);
                block = b;
            }
            other => panic!("expected DATA, got {other:?}"),
        }
    }
    assert_same(&got, &file, "download with tripled ACKs");
    c.set_timeout(Duration::from_millis(300)).unwrap();
    assert!(
        c.recv().unwrap().is_none(),
        "no extra packets after the last ACK"
    );
    assert_eq!(data_packets, 41);
    server.wait_for("completion", |m| m.transfers_with("completed") == 1);
    assert_eq!(server.metrics.retransmits.get(), 0);
}

#[test]
fn packets_from_a_wrong_tid_get_error_5_and_do_not_disturb_the_transfer() {
    let s = Scratch::new();
    let file = pattern(512 * 3 + 1, 6);
    s.put("f.bin", &file);
    let server = Server::fs(&s, fast_config());
    let (mut c, tid, mut got) = start_plain(&server, "f.bin");
    let mut intruder = RawClient::new(server.addr).unwrap();
    intruder.send_to(&raw::ack_bytes(1), tid).unwrap();
    match intruder.recv().unwrap() {
        Some((Reply::Error { code: 5, .. }, from)) => assert_eq!(from, tid),
        other => panic!("intruder expected ERROR 5, got {other:?}"),
    }
    let mut block = 1;
    while got.len() < file.len() {
        c.send_to(&raw::ack_bytes(block), tid).unwrap();
        match c.recv().unwrap() {
            Some((Reply::Data { block: b, data }, _)) => {
                got.extend(data);
                block = b;
            }
            other => panic!("{other:?}"),
        }
    }
    c.send_to(&raw::ack_bytes(block), tid).unwrap();
    assert_same(&got, &file, "transfer with an intruder");
    server.wait_for("completion", |m| m.transfers_with("completed") == 1);
    assert_eq!(server.metrics.wrong_tid.get(), 1);
}

#[test]
fn a_vanished_client_is_retried_then_released() {
    let s = Scratch::new();
    s.put("f.bin", &pattern(100_000, 8));
    let mut config = fast_config();
    config.limits.default_timeout = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(100);
    config.max_retries = 3;
    let server = Server::fs(&s, config);
    let (mut c, _tid, _) = start_plain(&server, "f.bin");
    // Never ACK: the server resends block 1 max_retries times, then gives up.
    let mut resends = 0;
    c.set_timeout(Duration::from_secs(2)).unwrap();
    while let Some((reply, _)) = c.recv().unwrap() {
        assert!(matches!(reply, Reply::Data { block: 1, .. }), "{reply:?}");
        resends += 1;
    }
    assert_eq!(resends, 3);
    server.wait_for("the timeout", |m| m.transfers_with("timed_out") == 1);
    assert_eq!(
        server.metrics.active.get(),
        0,
        "the transfer slot is released"
    );
    // The same client can start over.
    let d = raw::get(server.addr, "f.bin", None, None, true).unwrap();
    assert_eq!(d.data.len(), 100_000);
}

#[test]
fn an_error_from_the_client_mid_transfer_ends_it() {
    let s = Scratch::new();
    s.put("f.bin", &pattern(512 * 50, 9));
    let server = Server::fs(&s, fast_config());
    let (mut c, tid, _) = start_plain(&server, "f.bin");
    c.send_to(&raw::ack_bytes(1), tid).unwrap();
    assert!(matches!(
        c.recv().unwrap(),
        Some((Reply::Data { block: 2, .. }, _))
    ));
    c.send_to(&raw::error_bytes(0, "user cancelled"), tid)
        .unwrap();
    server.wait_for("the abort", |m| m.transfers_with("aborted_by_client") == 1);
    c.set_timeout(Duration::from_millis(600)).unwrap();
    assert!(
        c.recv().unwrap().is_none(),
        "no data after the client's ERROR"
    );
    assert_eq!(server.metrics.active.get(), 0);
}

#[test]
fn oack_refused_with_error_8_and_oack_never_acknowledged() {
    let s = Scratch::new();
    s.put("f.bin", &pattern(3000, 10));
    let mut config = fast_config();
    config.limits.default_timeout = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(50);
    config.max_retries = 2;
    let server = Server::fs(&s, config);

    // The PXE "tsize probe": ask for tsize, read it from the OACK, refuse with ERROR 8.
    let mut c = RawClient::new(server.addr).unwrap();
    c.rrq("f.bin", "octet", &[("tsize", "0"), ("blksize", "1432")])
        .unwrap();
    let (opts, tid) = match c.recv().unwrap() {
        Some((Reply::Oack(opts), tid)) => (opts, tid),
        other => panic!("expected OACK, got {other:?}"),
    };
    assert_eq!(
        opts,
        vec![
            ("tsize".into(), "3000".into()),
            ("blksize".into(), "1432".into())
        ]
    );
    c.send_to(&raw::error_bytes(8, "tsize probe"), tid).unwrap();
    server.wait_for("the refusal", |m| m.transfers_with("options_refused") == 1);

    // A client that never answers the OACK gets it resent, then the transfer ends.
    let mut c = RawClient::new(server.addr).unwrap();
    c.rrq("f.bin", "octet", &[("blksize", "1024")]).unwrap();
    let mut oacks = 0;
    c.set_timeout(Duration::from_millis(800)).unwrap();
    while let Some((reply, _)) = c.recv().unwrap() {
        assert!(matches!(reply, Reply::Oack(_)), "{reply:?}");
        oacks += 1;
    }
    assert_eq!(oacks, 3, "first OACK and two resends");
    server.wait_for("the timeout", |m| m.transfers_with("timed_out") == 1);

    // After the probe the real download works.
    let d = raw::get(server.addr, "f.bin", Some(1432), None, true).unwrap();
    assert_same(&d.data, &pattern(3000, 10), "download after the probe");
}

#[test]
fn a_repeated_rrq_does_not_start_a_second_transfer() {
    let s = Scratch::new();
    s.put("f.bin", &pattern(2000, 12));
    let mut config = fast_config();
    config.limits.default_timeout = Duration::from_secs(5);
    let server = Server::fs(&s, config);
    let mut c = RawClient::new(server.addr).unwrap();
    c.rrq("f.bin", "octet", &[]).unwrap();
    c.rrq("f.bin", "octet", &[]).unwrap();
    let Some((Reply::Data { block: 1, .. }, _)) = c.recv().unwrap() else {
        panic!("expected DATA 1")
    };
    c.set_timeout(Duration::from_millis(300)).unwrap();
    assert!(c.recv().unwrap().is_none(), "only one transfer answers");
    assert_eq!(server.metrics.active.get(), 1);
}

#[test]
fn windowed_transfer_recovers_from_a_lost_block() {
    let s = Scratch::new();
    let file = pattern(512 * 20 + 5, 13);
    s.put("f.bin", &file);
    let server = Server::fs(&s, fast_config());
    let mut c = RawClient::new(server.addr).unwrap();
    c.rrq("f.bin", "octet", &[("windowsize", "4")]).unwrap();
    let Some((Reply::Oack(_), tid)) = c.recv().unwrap() else {
        panic!("expected OACK")
    };
    c.send_to(&raw::ack_bytes(0), tid).unwrap();
    // Receive the first window (blocks 1-4) but pretend block 3 was lost: ACK 2.
    let mut blocks = Vec::new();
    for _ in 0..4 {
        let Some((Reply::Data { block, .. }, _)) = c.recv().unwrap() else {
            panic!()
        };
        blocks.push(block);
    }
    assert_eq!(blocks, vec![1, 2, 3, 4]);
    c.send_to(&raw::ack_bytes(2), tid).unwrap();
    // The server resends from block 3 with a full window.
    let mut blocks = Vec::new();
    for _ in 0..4 {
        let Some((Reply::Data { block, .. }, _)) = c.recv().unwrap() else {
            panic!()
        };
        blocks.push(block);
    }
    assert_eq!(blocks, vec![3, 4, 5, 6]);
}

// ---------------------------------------------------------------------------------------------
// A generated source

/// Answers every request with a script naming the client, the way the boot service serves a
/// per-endpoint iPXE script.
struct PerClientScript;

impl FileSource for PerClientScript {
    fn open<'a>(&'a self, path: &'a BootPath, client: SocketAddr) -> OpenFuture<'a> {
        Box::pin(async move {
            if path.as_slash_path() != "boot.ipxe" {
                return Err(recast_operator::boot::tftp::OpenError::NotFound);
            }
            Ok(OpenedFile::from_bytes(
                format!(
                    "#!ipxe\necho hello {}\nchain http://boot/{}\n",
                    client.ip(),
                    client.port()
                )
                .into_bytes(),
            ))
        })
    }
}

#[test]
fn a_generated_source_answers_per_client() {
    let server = Server::start(fast_config(), Arc::new(PerClientScript));
    let mut c = RawClient::new(server.addr).unwrap();
    let port = c.socket.local_addr().unwrap().port();
    c.rrq("/boot.ipxe", "octet", &[("tsize", "0")]).unwrap();
    let Some((Reply::Oack(opts), tid)) = c.recv().unwrap() else {
        panic!("expected OACK")
    };
    let want = format!("#!ipxe\necho hello 127.0.0.1\nchain http://boot/{port}\n");
    assert_eq!(opts, vec![("tsize".to_string(), want.len().to_string())]);
    c.send_to(&raw::ack_bytes(0), tid).unwrap();
    let Some((Reply::Data { block: 1, data }, _)) = c.recv().unwrap() else {
        panic!("expected DATA 1")
    };
    assert_eq!(String::from_utf8(data).unwrap(), want);
    c.send_to(&raw::ack_bytes(1), tid).unwrap();
    let (code, _) = expect_error(&server, "other.bin");
    assert_eq!(code, 1);
}

// ---------------------------------------------------------------------------------------------
// Bad input: a bounded randomized run against the live server loop

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut p = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !p.is_empty() => {
                let cut = rng.below(p.len());
                p.truncate(cut);
            }
            1 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.next() as u8;
            }
            2 => {
                let n = rng.below(2000);
                p.extend((0..n).map(|_| rng.next() as u8));
            }
            3 if !p.is_empty() => {
                // Remove the NULs that end fields.
                p.retain(|&b| b != 0 || rng.below(2) == 0);
            }
            4 => p.extend_from_slice(
                b"blksize\x00999999999999999999999999\x00windowsize\x0065535\x00",
            ),
            5 if p.len() >= 2 => {
                let op = rng.below(10) as u8;
                p[1] = op;
            }
            _ => {
                p.extend((0..rng.below(40)).flat_map(|i| format!("opt{i}\x00{i}\x00").into_bytes()))
            }
        }
    }
    p
}

#[test]
fn randomized_bad_input_never_crashes_the_server_or_leaks_outside_the_root() {
    let s = Scratch::new();
    let inside = pattern(3000, 14);
    s.put("ok.bin", &inside);
    std::os::unix::fs::symlink(s.base.join("outside/secret.txt"), s.root().join("escape")).unwrap();
    let mut config = fast_config();
    config.limits.default_timeout = Duration::from_millis(30);
    config.max_backoff = Duration::from_millis(30);
    config.max_retries = 1;
    let server = Server::fs(&s, config);
    let seeds: Vec<Vec<u8>> = [
        raw::rrq_bytes("ok.bin", "octet", &[("blksize", "1468"), ("tsize", "0")]),
        raw::rrq_bytes("../outside/secret.txt", "octet", &[]),
        raw::rrq_bytes("escape", "netascii", &[("windowsize", "16")]),
        raw::rrq_bytes("/../outside/secret.txt", "octet", &[]),
        raw::rrq_bytes("..\\outside\\secret.txt", "octet", &[]),
        raw::wrq_bytes("x", "octet"),
        raw::ack_bytes(1),
        raw::error_bytes(8, "no"),
        vec![0, 3, 0, 1, 1, 2, 3],
        vec![0, 6, b'a', 0, b'1', 0],
    ]
    .into();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut c = RawClient::new(server.addr).unwrap();
    c.set_timeout(Duration::from_millis(2)).unwrap();
    let mut tids: Vec<SocketAddr> = Vec::new();
    let mut leaked = false;
    let mut check = |reply: &Reply| {
        if let Reply::Data { data, .. } = reply
            && data.windows(SECRET.len()).any(|w| w == SECRET)
        {
            leaked = true;
        }
    };
    for i in 0..3000 {
        let p = mutate(&mut rng, &seeds);
        // Mostly the listener, sometimes a live transfer's port.
        let to = if !tids.is_empty() && i % 4 == 0 {
            tids[rng.below(tids.len())]
        } else {
            server.addr
        };
        c.send_to(&p, to).unwrap();
        while let Some((reply, from)) = c.recv().unwrap() {
            check(&reply);
            if from != server.addr && !tids.contains(&from) && tids.len() < 32 {
                tids.push(from);
            }
        }
    }
    c.set_timeout(Duration::from_millis(200)).unwrap();
    while let Some((reply, _)) = c.recv().unwrap() {
        check(&reply);
    }
    assert!(!leaked, "a file outside the boot root was sent");
    server.wait_for("every fuzzed transfer to end", |m| m.active.get() == 0);
    // Still serving, and correctly.
    let d = raw::get(server.addr, "ok.bin", Some(1468), Some(4), true).unwrap();
    assert_same(&d.data, &inside, "download after the fuzz run");
    assert!(
        server.metrics.malformed.get() > 100,
        "the fuzz run reached the parser"
    );
}

#[test]
fn error_replies_to_one_client_are_capped_by_its_budget() {
    let s = Scratch::new();
    let mut config = fast_config();
    config.budget = BudgetConfig {
        max_transfers_per_client: 8,
        packets_per_sec: 5,
        bytes_per_sec: 1 << 20,
        burst: Duration::from_secs(1),
    };
    let server = Server::fs(&s, config);
    let mut c = RawClient::new(server.addr).unwrap();
    // 200 bad requests as fast as we can: a spoofer would aim the replies at a victim.
    for _ in 0..200 {
        c.send_to(b"\x00\x01no-nul", server.addr).unwrap();
    }
    c.set_timeout(Duration::from_millis(300)).unwrap();
    let mut replies = 0;
    while let Some((reply, _)) = c.recv().unwrap() {
        assert!(matches!(reply, Reply::Error { code: 4, .. }), "{reply:?}");
        replies += 1;
    }
    // A burst of 5 (+1 overdraft) plus what refills at 5/s while the requests arrive.
    assert!(
        (1..=12).contains(&replies),
        "{replies} replies to 200 requests"
    );
    server.wait_for("every request to be parsed", |m| m.malformed.get() == 200);
}
