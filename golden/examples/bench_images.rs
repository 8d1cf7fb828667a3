//! `make bench-images`: recast's image checks next to the tools operators would otherwise use,
//! on the same files in the same run, printed as a table.
//!
//! 1. Full-file sha256 of a 2 GiB file: recast vs `sha256sum` (target: at least 0.9x its
//!    throughput).
//! 2. Header + XML inspection of a 10 MiB and a 2 GiB WIM: recast vs `wimlib-imagex info`
//!    (target: flat, under 10 ms each).
//! 3. Integrity verification of the 2 GiB WIM: recast vs `wimlib-imagex verify` (target: at most
//!    1.0x its wall time).
//!
//! Files are made in $RECAST_BENCH_DIR (default /tmp) and deleted afterwards. The page cache is
//! warm for every contender alike (each file is read once before timing), so these compare CPU
//! and I/O-path efficiency, not the disk.
//!
//! Usage: bench_images [SIZE_MIB]   (default 2048)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use recast_golden::verify::{StreamOptions, sha256_file, stream_verify};

fn main() {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let Some(wimlib) = recast_tests::wimlib::find() else {
        eprintln!("wimlib-imagex is needed (tests/golden/setup.sh)");
        std::process::exit(2);
    };
    let base = std::env::var_os("RECAST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("recast-bench-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let _cleanup = Cleanup(dir.clone());

    eprintln!(
        "making a {size_mib} MiB file and two WIMs in {} ...",
        dir.display()
    );
    let big = dir.join("big.bin");
    write_noise(&big, size_mib << 20);

    // WIMs: an installed-Windows tree (servicing packages included) plus a payload file.
    let small_wim = make_wim(&wimlib, &dir, "small", 10 << 20, None);
    let big_wim = make_wim(&wimlib, &dir, "big", 0, Some(&big));
    for f in [&big, &small_wim, &big_wim] {
        warm(f);
    }

    let mut rows: Vec<[String; 5]> = Vec::new();
    let no_cancel = AtomicBool::new(false);

    // 1. sha256.
    let bytes = std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0);
    let ours = best_of(3, || {
        sha256_file(&big, &no_cancel, &mut |_| {}).expect("sha256");
    });
    let peer = best_of(3, || run(Command::new("sha256sum").arg(&big)));
    let (mbs_ours, mbs_peer) = (mib_s(bytes, ours), mib_s(bytes, peer));
    rows.push([
        format!("sha256 of a {size_mib} MiB file"),
        format!("{:.2} s ({mbs_ours:.0} MiB/s)", ours.as_secs_f64()),
        format!(
            "sha256sum: {:.2} s ({mbs_peer:.0} MiB/s)",
            peer.as_secs_f64()
        ),
        format!("{:.2}x throughput", mbs_ours / mbs_peer),
        "≥ 0.9x".into(),
    ]);
    // OpenSSL uses the SHA-NI instructions as recast does; a second, stronger peer.
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let ossl = best_of(3, || {
            run(Command::new("openssl").args(["dgst", "-sha256"]).arg(&big))
        });
        let mbs_ossl = mib_s(bytes, ossl);
        rows.push([
            format!("sha256 of a {size_mib} MiB file"),
            format!("{:.2} s ({mbs_ours:.0} MiB/s)", ours.as_secs_f64()),
            format!(
                "openssl dgst -sha256: {:.2} s ({mbs_ossl:.0} MiB/s)",
                ossl.as_secs_f64()
            ),
            format!("{:.2}x throughput", mbs_ours / mbs_ossl),
            "(reference)".into(),
        ]);
    }

    // 2. inspection.
    for (label, wim) in [
        ("10 MiB", &small_wim),
        (&*format!("{size_mib} MiB"), &big_wim),
    ] {
        let len = std::fs::metadata(wim).map(|m| m.len()).unwrap_or(0);
        let (median, max) = timings(200, || {
            recast_golden::inspect(wim).expect("inspect");
        });
        let peer = best_of(5, || run(Command::new(&wimlib).arg("info").arg(wim)));
        rows.push([
            format!("header + XML of a {label} WIM ({} bytes)", len),
            format!(
                "median {:.3} ms, max {:.3} ms (200 runs)",
                ms(median),
                ms(max)
            ),
            format!("wimlib-imagex info: {:.1} ms (process)", ms(peer)),
            format!("{:.0}x faster", peer.as_secs_f64() / median.as_secs_f64()),
            "< 10 ms, flat".into(),
        ]);
    }

    // 3. integrity verification.
    let inspection = recast_golden::inspect(&big_wim).expect("inspect big WIM");
    let integrity_only = StreamOptions {
        check_integrity: true,
        skip_sha256: true,
        expected_sha256: None,
    };
    let both = StreamOptions {
        check_integrity: true,
        skip_sha256: false,
        expected_sha256: None,
    };
    let check = |opts: &StreamOptions| {
        let r = stream_verify(&big_wim, &inspection.header, opts, &no_cancel, &mut |_| {})
            .expect("verify");
        assert!(
            matches!(r.integrity, recast_golden::Integrity::Ok { .. }),
            "{:?}",
            r.integrity
        );
    };
    let ours_integrity = best_of(2, || check(&integrity_only));
    let ours_both = best_of(2, || check(&both));
    let peer = best_of(2, || {
        run(Command::new(&wimlib).arg("verify").arg(&big_wim));
    });
    rows.push([
        format!("integrity table of the {size_mib} MiB WIM"),
        format!("{:.2} s (SHA-1 per chunk)", ours_integrity.as_secs_f64()),
        format!("wimlib-imagex verify: {:.2} s", peer.as_secs_f64()),
        format!(
            "{:.2}x its wall time",
            ours_integrity.as_secs_f64() / peer.as_secs_f64()
        ),
        "≤ 1.0x".into(),
    ]);
    rows.push([
        format!("integrity + sha256, one pass, {size_mib} MiB WIM"),
        format!("{:.2} s", ours_both.as_secs_f64()),
        format!("wimlib-imagex verify: {:.2} s", peer.as_secs_f64()),
        format!(
            "{:.2}x its wall time",
            ours_both.as_secs_f64() / peer.as_secs_f64()
        ),
        "≤ 1.0x".into(),
    ]);

    println!("\n| check | recast | peer | recast vs peer | target |\n|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
    }
    println!(
        "\nrecast peak RSS over the whole run: {} (buffers are fixed-size; nothing scales with the file)",
        peak_rss()
    );
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_noise(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut block = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// A WIM of a miniature installed Windows plus one payload file: `payload` bytes of noise, or
/// a hard link to `link` (no copy of a 2 GiB file). Uncompressed, with an integrity table.
fn make_wim(wimlib: &Path, dir: &Path, name: &str, payload: u64, link: Option<&Path>) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    recast_tests::wimlib::make_tree(
        &tree,
        &[(recast_tests::wimlib::JANUARY_2026, "KB5074109")],
        1,
    );
    let data = tree.join("Windows/System32/payload.bin");
    match link {
        Some(src) => std::fs::hard_link(src, &data).expect("hard link payload"),
        None => write_noise(&data, payload),
    }
    let wim = dir.join(format!("{name}.wim"));
    recast_tests::wimlib::run(
        wimlib,
        &[
            "capture",
            tree.to_str().unwrap(),
            wim.to_str().unwrap(),
            "Windows 11 Enterprise",
            "--compress=none",
            "--check",
        ],
    );
    let _ = std::fs::remove_dir_all(&tree);
    wim
}

fn warm(path: &Path) {
    let _ = sha256_file(path, &AtomicBool::new(false), &mut |_| {});
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run peer");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn timings(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut all: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    all.sort();
    (all[n / 2], all[n - 1])
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
