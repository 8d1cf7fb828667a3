//! `make bench-controller`: the endpoint controller over N endpoints (default 10,000) on the
//! embedded store and on the real kube-apiserver, next to what a naive controller (one status
//! write per reconcile) would do. Prints a table.
//!
//! Measured with the release `recast-operator` binary as a separate process:
//! - cold start: from process start until every endpoint has a status;
//! - RSS after the cold start (VmRSS from /proc);
//! - a full resync (a policy change makes every endpoint reconcile): reconciles and status
//!   writes, from the operator's own /metrics.
//!
//! Usage: bench_controller OPERATOR_BINARY [N]   (KUBECONFIG from the harness for the kube part)

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

fn endpoint(i: usize) -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": format!("ep-{i:05}"), "labels": {"site": format!("site-{}", i % 40)}},
        "spec": {
            "identity": {"macAddresses": [format!("02:00:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)]},
            "bootMode": if i.is_multiple_of(5) { "bios" } else { "uefi" },
            "image": {"channel": "stable"},
            "site": format!("site-{}", i % 40)
        }
    })
}

fn policy(cooldown: &str) -> Value {
    json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "default"},
           "spec": {"cooldown": cooldown}})
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn metric(port: u16, name: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

struct Row {
    backend: &'static str,
    n: usize,
    cold_start: Duration,
    rss: f64,
    cold_writes: f64,
    resync_reconciles: f64,
    resync_writes: f64,
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let mut last = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            panic!("{what}: not done after {limit:?}");
        }
        if last.elapsed() > Duration::from_secs(10) {
            eprintln!("  ... {what}: {:.0}s", start.elapsed().as_secs_f64());
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    start.elapsed()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn embedded(operator: &Path, n: usize) -> Row {
    let dir = std::env::temp_dir().join(format!("recast-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).unwrap();
    eprintln!("embedded: loading {n} endpoints");
    for i in 0..n {
        store.apply(&endpoint(i), "default").unwrap();
    }
    store.apply(&policy("6h"), "default").unwrap();
    let port = recast_tests::free_port();
    let start = Instant::now();
    let child = Command::new(operator)
        .args([
            "run",
            "--backend",
            "embedded",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .env("RECAST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = dir.join("recast.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let with_status = || -> usize {
        conn.query_row(
            "SELECT count(*) FROM objects WHERE kind = 'Endpoint' AND status IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as usize
    };
    wait_until("embedded cold start", Duration::from_secs(600), || {
        with_status() >= n
    });
    let cold_start = start.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_mib(child.id());
    let cold_writes = metric(port, "recast_status_writes_total");
    let reconciles_before = metric(port, "recast_reconciles_total");
    // A policy change makes every endpoint reconcile; none of their statuses changes.
    store.apply(&policy("7h"), "default").unwrap();
    wait_until("embedded resync", Duration::from_secs(600), || {
        metric(port, "recast_reconciles_total") - reconciles_before >= n as f64
    });
    std::thread::sleep(Duration::from_secs(2));
    let row = Row {
        backend: "embedded (SQLite)",
        n,
        cold_start,
        rss,
        cold_writes,
        resync_reconciles: metric(port, "recast_reconciles_total") - reconciles_before,
        resync_writes: metric(port, "recast_status_writes_total") - cold_writes,
    };
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
    row
}

fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kube(operator: &Path, n: usize, repo: &Path) -> Option<Row> {
    let env = std::fs::read_to_string(repo.join(".k8s/env")).ok()?;
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(PathBuf::from)
    };
    let (kubeconfig, kubectl_bin) = (get("KUBECONFIG")?, get("KUBECTL")?);
    let k = |args: &[&str], stdin: Option<&str>| kubectl(&kubectl_bin, &kubeconfig, args, stdin);
    k(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &repo.join("crds/yaml").to_string_lossy(),
        ],
        None,
    );
    k(
        &[
            "wait",
            "--for=condition=Established",
            "-f",
            &repo.join("crds/yaml").to_string_lossy(),
        ],
        None,
    );
    let ns = format!("bench-{}", std::process::id());
    k(&["create", "namespace", &ns], None);
    eprintln!("kube: creating {n} endpoints");
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": chunk.iter().map(|i| endpoint(*i)).collect::<Vec<_>>()});
        k(&["create", "-n", &ns, "-f", "-"], Some(&list.to_string()));
    }
    k(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&policy("6h").to_string()),
    );
    let port = recast_tests::free_port();
    let start = Instant::now();
    let child = Command::new(operator)
        .args([
            "run",
            "--backend",
            "kube",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--watch-namespace",
            &ns,
            "--lease-namespace",
            &ns,
            "--identity",
            "bench",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RECAST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Every endpoint gets exactly one status write on the cold start.
    wait_until("kube cold start", Duration::from_secs(900), || {
        metric(port, "recast_status_writes_total") >= n as f64
    });
    let cold_start = start.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_mib(child.id());
    let cold_writes = metric(port, "recast_status_writes_total");
    let reconciles_before = metric(port, "recast_reconciles_total");
    k(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&policy("7h").to_string()),
    );
    wait_until("kube resync", Duration::from_secs(900), || {
        metric(port, "recast_reconciles_total") - reconciles_before >= n as f64
    });
    std::thread::sleep(Duration::from_secs(2));
    let row = Row {
        backend: "kube-apiserver 1.35",
        n,
        cold_start,
        rss,
        cold_writes,
        resync_reconciles: metric(port, "recast_reconciles_total") - reconciles_before,
        resync_writes: metric(port, "recast_status_writes_total") - cold_writes,
    };
    stop(child);
    let _ = Command::new(&kubectl_bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["delete", "namespace", &ns, "--wait=false"])
        .output();
    Some(row)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let operator = PathBuf::from(
        args.next()
            .expect("usage: bench_controller OPERATOR_BINARY [N]"),
    );
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rows = vec![embedded(&operator, n)];
    match kube(&operator, n, &repo) {
        Some(r) => rows.push(r),
        None => eprintln!("kube: no harness (run `make k8s-up`); skipped"),
    }
    println!();
    println!(
        "| backend | endpoints | cold start | RSS after cold start | status writes, cold start (per endpoint) | full resync: reconciles | full resync: status writes, recast | full resync: status writes, naive (write every reconcile) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} s | {:.0} MiB | {:.0} ({:.2}) | {:.0} | {:.0} | {:.0} |",
            r.backend,
            r.n,
            r.cold_start.as_secs_f64(),
            r.rss,
            r.cold_writes,
            r.cold_writes / r.n as f64,
            r.resync_reconciles,
            r.resync_writes,
            r.resync_reconciles
        );
    }
}
