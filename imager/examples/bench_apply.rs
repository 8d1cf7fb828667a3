//! recast-imager's download + verify + apply against the tools an operator would otherwise
//! chain: `curl -o` then `sha256sum` then `wimlib-imagex apply`, plain `curl` + apply, and the
//! streaming `curl | wimlib-imagex apply -` of a pipable WIM. The same WIM, the same HTTP
//! server (recast-operator's boot service), a fresh NTFS image file per run, staging in RAM
//! (/dev/shm) for everyone. Prints a markdown table (docs/benchmarks.md).
//!
//! usage: bench_apply RECAST_OPERATOR [PAYLOAD_MIB (512)] [ROUNDS (3)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use recast_core::imaging::ImageTaskFile;
use recast_imager::run;

fn sh(cmd: &str) -> Duration {
    let start = Instant::now();
    let ok = Command::new("bash")
        .args(["-o", "pipefail", "-c", cmd])
        .stdout(Stdio::null())
        .status()
        .expect("bash");
    assert!(ok.success(), "{cmd} failed");
    start.elapsed()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A fresh, empty NTFS volume in a sparse image file (what the imager gets after mkntfs).
fn fresh_ntfs(path: &Path, bytes: u64) {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
    sh(&format!("mkntfs -Q -F -q {}", path.display()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let operator = PathBuf::from(
        args.get(1)
            .expect("usage: bench_apply RECAST_OPERATOR [MIB] [ROUNDS]"),
    );
    let mib: u64 = args.get(2).map_or(512, |a| a.parse().unwrap());
    let rounds: usize = args.get(3).map_or(3, |a| a.parse().unwrap());
    let work = PathBuf::from(format!(
        "/dev/shm/recast-bench-apply-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("Windows/System32")).unwrap();
    // Incompressible payload in files of several sizes (a few big, many small), like an OS.
    eprintln!("[bench] making a {mib} MiB tree and capturing it");
    let big = mib * 3 / 4;
    sh(&format!(
        "head -c {}M /dev/urandom > {}/Windows/System32/big.bin",
        big,
        tree.display()
    ));
    let small_count = ((mib - big) * 1024 / 64).max(1);
    sh(&format!(
        "cd {} && mkdir -p Windows/WinSxS && head -c {}K /dev/urandom | split -b 64K -a 5 - Windows/WinSxS/f",
        tree.display(),
        small_count * 64
    ));
    let root = work.join("root");
    std::fs::create_dir_all(root.join("images")).unwrap();
    let wim = work.join("golden.wim");
    let pipable = work.join("golden-pipable.wim");
    sh(&format!(
        "wimlib-imagex capture {} {} Windows --compress=none",
        tree.display(),
        wim.display()
    ));
    sh(&format!(
        "wimlib-imagex capture {} {} Windows --compress=none --pipable",
        tree.display(),
        pipable.display()
    ));
    std::fs::remove_dir_all(&tree).unwrap();
    let digest = sha256(&wim);
    let pipable_digest = sha256(&pipable);
    let size = std::fs::metadata(&wim).unwrap().len();
    std::fs::rename(&wim, root.join("images").join(format!("{digest}.wim"))).unwrap();
    std::fs::rename(
        &pipable,
        root.join("images").join(format!("{pipable_digest}.wim")),
    )
    .unwrap();

    let port = free_port();
    let mut server = Command::new(&operator)
        .args(["run", "--backend", "embedded", "--data-dir"])
        .arg(work.join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--boot-http", &format!("127.0.0.1:{port}"), "--boot-root"])
        .arg(&root)
        .env("RECAST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start recast-operator");
    let base = format!("http://127.0.0.1:{port}/artifacts/images");
    let url = format!("{base}/{digest}.wim");
    let pipable_url = format!("{base}/{pipable_digest}.wim");
    for _ in 0..100 {
        if Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-r", "0-0", &url])
            .status()
            .unwrap()
            .success()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let target = work.join("ntfs.img");
    let target_bytes = size * 2 + (256 << 20);
    let staged = work.join("staged.wim");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = run::http_client().unwrap();
    let image = ImageTaskFile {
        name: "bench".into(),
        url: url.clone(),
        sha256: digest.clone(),
        size,
        index: 1,
    };
    let mut recast = Vec::new();
    let mut chained = Vec::new();
    let mut unverified = Vec::new();
    let mut apply_only = Vec::new();
    let mut streamed = Vec::new();
    let t = target.display();
    let s = staged.display();
    for round in 0..rounds {
        eprintln!("[bench] round {}/{rounds}", round + 1);
        fresh_ntfs(&target, target_bytes);
        let start = Instant::now();
        rt.block_on(async {
            let path = run::download(&Quiet, &http, &image, &work.join("imager"))
                .await
                .unwrap_or_else(|f| panic!("{}: {}", f.step.as_str(), f.message));
            run::apply(&Quiet, &path, 1, &target)
                .await
                .unwrap_or_else(|f| panic!("{}: {}", f.step.as_str(), f.message));
            let _ = std::fs::remove_file(path);
        });
        recast.push(start.elapsed());

        fresh_ntfs(&target, target_bytes);
        chained.push(sh(&format!(
            "curl -sSf -o {s} {url} && sha256sum {s} && wimlib-imagex apply {s} 1 {t}"
        )));
        fresh_ntfs(&target, target_bytes);
        unverified.push(sh(&format!(
            "curl -sSf -o {s} {url} && wimlib-imagex apply {s} 1 {t}"
        )));
        fresh_ntfs(&target, target_bytes);
        apply_only.push(sh(&format!("wimlib-imagex apply {s} 1 {t}")));
        let _ = std::fs::remove_file(&staged);
        fresh_ntfs(&target, target_bytes);
        // wimlib stops reading once it has every resource it needs; curl then reports a
        // write error (23), which is not a failure of the transfer.
        streamed.push(sh(&format!(
            "{{ curl -sSf {pipable_url} || [ $? = 23 ]; }} | wimlib-imagex apply - 1 {t}"
        )));
    }
    let _ = server.kill();
    let _ = server.wait();
    let best = |v: &[Duration]| v.iter().min().copied().unwrap().as_secs_f64();
    let all = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let r = best(&recast);
    println!(
        "| {} MiB WIM ({size} bytes), best of {rounds} | seconds | recast-imager vs this | all runs (s) |",
        size >> 20
    );
    println!("|---|---|---|---|");
    println!(
        "| recast-imager: download + sha256 while streaming + apply | {r:.2} | 1.00x | {} |",
        all(&recast)
    );
    for (name, v) in [
        (
            "curl -o, then sha256sum, then wimlib-imagex apply",
            &chained,
        ),
        (
            "curl -o, then wimlib-imagex apply (no verification)",
            &unverified,
        ),
        ("wimlib-imagex apply of the staged file alone", &apply_only),
        (
            "curl \\| wimlib-imagex apply - (pipable WIM, no staging)",
            &streamed,
        ),
    ] {
        let b = best(v);
        println!(
            "| {name} | {b:.2} | {:+.1}% | {} |",
            (r / b - 1.0) * 100.0,
            all(v)
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// The benchmark's reporter: progress is not printed (it would time the terminal).
struct Quiet;

impl run::Reporter for Quiet {
    async fn progress(&self, _: u8, _: run::Step, _: &str) {}
}
