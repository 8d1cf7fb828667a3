//! `make bench-boot` (TFTP half): recast's TFTP server next to tftpd-hpa, the same 64 MiB file,
//! 1 and 50 concurrent clients at blksize 1468, and recast with windowsize 16 against
//! windowsize 1. Prints a table (kept in docs/benchmarks.md).
//!
//! Both servers run as their own processes on loopback high ports: tftpd-hpa as
//! `in.tftpd -L -a 127.0.0.1:PORT -s ROOT`, recast as this binary re-run with `serve`. The
//! clients are the raw RFC 7440 client from recast-tests (tftp-hpa's client has no blksize or
//! windowsize), one thread per client, discarding the bytes after counting them.
//!
//! The WinPE Secure Boot row: one client fetches a 300 MiB boot.wim-sized file with the block
//! and window sizes the kit's BCD asks for (`recast_core::winpe_boot`), against tftpd-hpa at the
//! same block size in lock-step (it has no windowsize).
//!
//! Usage: bench_tftp [--size-mib N] [--clients N] [--winpe-mib N] [--winpe-only]
//!        bench_tftp serve ROOT

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recast_core::winpe_boot::{RAMDISK_TFTP_BLOCK_SIZE, RAMDISK_TFTP_WINDOW_SIZE};
use recast_operator::boot::tftp::{BudgetConfig, FsSource, TftpConfig, TftpMetrics, TftpServer};

const BLKSIZE: u16 = 1468;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        let root = args.get(2).expect("usage: bench_tftp serve ROOT");
        serve(Path::new(root));
        return;
    }
    if args.get(1).map(String::as_str) == Some("client") {
        // bench_tftp client ADDR FILE CLIENTS WINDOWSIZE SIZE: one measurement, for profiling.
        let addr: SocketAddr = args[2].parse().expect("ADDR");
        let file: &'static str = args[3].clone().leak();
        let clients = args[4].parse().expect("CLIENTS");
        let ws: u16 = args[5].parse().expect("WINDOWSIZE");
        let size = args[6].parse().expect("SIZE");
        let mbs = run_delayed(
            addr,
            clients,
            BLKSIZE,
            (ws > 1).then_some(ws),
            size,
            Duration::ZERO,
            file,
        );
        println!("{mbs:.1} MB/s");
        return;
    }
    let mut size_mib = 64usize;
    let mut many = 50usize;
    let mut winpe_mib = 300usize;
    let mut winpe_only = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--size-mib" => size_mib = args[i + 1].parse().expect("--size-mib N"),
            "--clients" => many = args[i + 1].parse().expect("--clients N"),
            "--winpe-mib" => winpe_mib = args[i + 1].parse().expect("--winpe-mib N"),
            "--winpe-only" => {
                winpe_only = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    if !winpe_only {
        bench(size_mib, many);
    }
    bench_winpe(winpe_mib);
}

/// recast's server for the bench: budgets opened up, since all 50 clients share 127.0.0.1.
fn serve(root: &Path) {
    // Transfers run on the server's own per-CPU loops; this runtime only hosts the listener.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut config = TftpConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..TftpConfig::default()
        };
        config.budget = BudgetConfig {
            max_transfers_per_client: 1000,
            packets_per_sec: u32::MAX,
            bytes_per_sec: u64::MAX,
            ..BudgetConfig::default()
        };
        let source = Arc::new(FsSource::new(root).expect("root"));
        let server = TftpServer::bind(config, source, TftpMetrics::default())
            .await
            .expect("bind");
        println!("{}", server.local_addr().expect("addr"));
        server
            .run(std::future::pending::<()>())
            .await
            .expect("serve");
    });
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_recast(root: &Path) -> (Proc, SocketAddr) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("serve")
        .arg(root)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start recast serve");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address");
    let addr = line.trim().parse().expect("recast address");
    (Proc(child), addr)
}

fn start_tftpd_hpa(root: &Path) -> (Proc, SocketAddr) {
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new("in.tftpd")
        .args(["-L", "-a", &addr.to_string(), "-s"])
        .arg(root)
        .stderr(Stdio::null())
        .spawn()
        .expect("start in.tftpd (run tests/boot/setup.sh)");
    // Wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while recast_tests::tftp::get(addr, "probe.txt", None, None, false).is_err() {
        assert!(Instant::now() < deadline, "tftpd-hpa did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), addr)
}

/// Aggregate MB/s (10^6 bytes per second) of `clients` concurrent downloads.
#[allow(clippy::too_many_arguments)]
fn run_delayed(
    addr: SocketAddr,
    clients: usize,
    blksize: u16,
    windowsize: Option<u16>,
    expect: u64,
    ack_delay: Duration,
    file: &'static str,
) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                recast_tests::tftp::get_with_ack_delay(
                    addr,
                    file,
                    Some(blksize),
                    windowsize,
                    false,
                    ack_delay,
                )
                .map(|d| d.bytes)
            })
        })
        .collect();
    let mut total = 0u64;
    for h in handles {
        let bytes = h
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("download failed: {e}"));
        assert_eq!(bytes, expect, "short download");
        total += bytes;
    }
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// A fresh bench root (under the temp dir) that tftpd-hpa's user can read, and `size`
/// pseudo-random bytes.
fn bench_root(name: &str, size: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let base = std::env::temp_dir().join(format!("recast-bench-{name}-{}", std::process::id()));
    let root: PathBuf = base.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("probe.txt"), b"probe").expect("write file");
    (base, root, data)
}

/// tftpd-hpa drops to user `tftp`, which must be able to read the root.
fn open_up(base: &Path) {
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(base)
        .status();
}

/// One client, a boot.wim-sized file, the BCD's block size: tftpd-hpa (lock-step), recast
/// lock-step, recast with the BCD's window. Interleaved, best of two.
fn bench_winpe(size_mib: usize) {
    let size = size_mib << 20;
    let (base, root, data) = bench_root("tftp-winpe", size);
    std::fs::write(root.join("boot.wim"), &data).expect("write file");
    drop(data);
    open_up(&base);
    let size = size as u64;
    let (_hpa, hpa) = start_tftpd_hpa(&root);
    let (_ours, ours) = start_recast(&root);
    let bs = RAMDISK_TFTP_BLOCK_SIZE;
    let ws = RAMDISK_TFTP_WINDOW_SIZE;
    // Warm the page cache.
    let _ = recast_tests::tftp::get(ours, "boot.wim", Some(bs), Some(ws), false);
    let reps = 2;
    let mut cells = [0.0f64; 3];
    for _ in 0..reps {
        for (col, addr, w) in [(0, hpa, None), (1, ours, None), (2, ours, Some(ws))] {
            let mbs = run_delayed(addr, 1, bs, w, size, Duration::ZERO, "boot.wim");
            cells[col] = cells[col].max(mbs);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    let [h, o1, ow] = cells;
    let secs = |mbs: f64| size as f64 / 1e6 / mbs;
    println!();
    println!(
        "TFTP, WinPE Secure Boot kit: one client, {size_mib} MiB boot.wim, blksize {bs} (the BCD's ramdisktftpblocksize), loopback; MB/s (seconds), best of {reps} interleaved runs"
    );
    println!();
    println!(
        "| tftpd-hpa (lock-step) | recast lock-step | recast windowsize {ws} (the BCD's) | recast ws {ws} / tftpd-hpa (target ≥ 4) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {h:.1} ({:.1} s) | {o1:.1} ({:.1} s) | {ow:.1} ({:.1} s) | {:.2}× |",
        secs(h),
        secs(o1),
        secs(ow),
        ow / h
    );
}

fn bench(size_mib: usize, many: usize) {
    let size = size_mib << 20;
    let (base, root, data) = bench_root("tftp", size);
    std::fs::write(root.join("big.bin"), &data).expect("write file");
    // The emulated-latency rows move fewer bytes: at one ACK per 0.5 ms, lock-step TFTP needs
    // minutes for 64 MiB.
    let small = 4usize << 20;
    std::fs::write(root.join("small.bin"), &data[..small.min(data.len())]).expect("write file");
    let small = small.min(data.len()) as u64;
    open_up(&base);
    let size = size as u64;

    let (_hpa, hpa) = start_tftpd_hpa(&root);
    let (_ours, ours) = start_recast(&root);
    // Warm the page cache so neither server pays for the first read.
    let _ = recast_tests::tftp::get(ours, "big.bin", Some(BLKSIZE), Some(16), false);

    // Runs are interleaved (tftpd-hpa, recast ws 1, recast ws 16, then again), so a burst of
    // load from something else on the machine hits every column alike; each cell is the best
    // of `reps`.
    let reps = 3;
    let delay = Duration::from_micros(500);
    let mut cells = [[0.0f64; 3]; 3];
    for _ in 0..reps {
        for (row, clients, file, expect, ack_delay) in [
            (0, 1, "big.bin", size, Duration::ZERO),
            (1, many, "big.bin", size, Duration::ZERO),
            (2, 1, "small.bin", small, delay),
        ] {
            for (col, addr, ws) in [(0, hpa, None), (1, ours, None), (2, ours, Some(16))] {
                let mbs = run_delayed(addr, clients, BLKSIZE, ws, expect, ack_delay, file);
                cells[row][col] = cells[row][col].max(mbs);
            }
        }
    }
    let [
        [hpa_1, ours_1, ours_1_w16],
        [hpa_n, ours_n, ours_n_w16],
        [hpa_lat, ours_lat, ours_lat_w16],
    ] = cells;
    let _ = std::fs::remove_dir_all(&base);

    println!();
    println!(
        "TFTP, {size_mib} MiB file, blksize {BLKSIZE}, loopback; aggregate MB/s, best of {reps} interleaved runs"
    );
    println!();
    println!(
        "| clients | tftpd-hpa (ws 1) | recast ws 1 | recast / tftpd-hpa (target ≥ 1.0) | recast ws 16 | ws 16 / ws 1 (target ≥ 4) |"
    );
    println!("|---|---|---|---|---|---|");
    for (clients, h, o1, o16) in [
        ("1".to_string(), hpa_1, ours_1, ours_1_w16),
        (many.to_string(), hpa_n, ours_n, ours_n_w16),
        (
            format!("1, {} MiB, emulated 0.5 ms ACK delay", small >> 20),
            hpa_lat,
            ours_lat,
            ours_lat_w16,
        ),
    ] {
        println!(
            "| {clients} | {h:.1} | {o1:.1} | {:.2}× | {o16:.1} | {:.2}× |",
            o1 / h,
            o16 / o1
        );
    }
}
