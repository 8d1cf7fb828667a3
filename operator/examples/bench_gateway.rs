//! `make bench-gateway`: the agent gateway under `recast-agent simulate` load, next to nginx
//! answering a static 204 over TLS on the same machine with the same certificate and the same
//! load. Prints a table.
//!
//! Both servers run as their own processes (the release `recast-operator` with the embedded
//! store, and nginx); the load is the release `recast-agent simulate` with N endpoints:
//! - warm-up: two healthy reports per endpoint (the first writes its summary; the gateway's
//!   answer carries the update hold, which the simulated agent applies and reports back on the
//!   second), then a wait until the controller has decided everything queued;
//! - steady state: `REPORTS` more healthy reports per endpoint — a fleet at rest, nothing
//!   changing — measured: rate, p50/p99 latency, and the store writes they caused (from the
//!   gateway's own stats log line), per report;
//! - the gateway's RSS at the end (VmRSS and VmHWM from /proc).
//!
//! With `kube` as the fifth argument the gateway is `recast-operator run --backend kube --role
//! gateway` against the harness's real kube-apiserver (`make k8s-up`): N Endpoints in a fresh
//! namespace, tokens in the control namespace, state in the apiserver (docs/gateway.md); its
//! writes are also counted from the outside, from the apiserver's own request counters
//! (`apiserver_request_total`, every write verb on ConfigMaps).
//!
//! Usage: bench_gateway OPERATOR_BINARY AGENT_BINARY [N] [REPORTS] [kube]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recast_operator::gateway::credentials::SqliteLedger;
use recast_operator::store::Key;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

#[path = "../tests/support/kube_test.rs"]
mod kube_test;

fn endpoint(i: usize) -> Value {
    json!({
        "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": format!("sim-{:05}", i + 1), "labels": {"site": format!("site-{}", i % 40)}},
        "spec": {
            "identity": {"macAddresses": [format!("02:00:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)]},
            "bootMode": "uefi",
            "image": {"channel": "stable"},
            "site": format!("site-{}", i % 40)
        }
    })
}

fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    std::fs::write(
        dir.join("ext"),
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-days", "1", "-subj", "/CN=bench CA"];
    a.extend(ec);
    let (ca_key, ca) = (p("ca.key"), p("ca.crt"));
    a.extend(["-keyout", &ca_key, "-out", &ca]);
    openssl(&a);
    let (key, csr, crt, ext) = (p("gw.key"), p("gw.csr"), p("gw.crt"), p("ext"));
    let mut a = vec!["req", "-subj", "/CN=127.0.0.1"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr]);
    openssl(&a);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    (PathBuf::from(ca), PathBuf::from(crt), PathBuf::from(key))
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited ({st}) before listening");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Default, Clone)]
struct Load {
    sent: u64,
    accepted: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A fleet at rest: every simulated endpoint healthy.
fn simulate(agent: &Path, url: &str, ca: &Path, tokens: &Path, n: usize, reports: u64) -> Load {
    let out = Command::new(agent)
        .args([
            "simulate",
            "--gateway",
            url,
            "--scenario",
            "healthy",
            "--json",
        ])
        .args([
            "--endpoints",
            &n.to_string(),
            "--reports",
            &reports.to_string(),
        ])
        .arg("--ca-file")
        .arg(ca)
        .arg("--tokens")
        .arg(tokens)
        .output()
        .expect("recast-agent simulate");
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("simulate --json output");
    Load {
        sent: v["sent"].as_u64().unwrap_or(0),
        accepted: v["accepted"].as_u64().unwrap_or(0),
        rate: v["ratePerSecond"].as_f64().unwrap_or(0.0),
        p50_ms: v["p50Micros"].as_f64().unwrap_or(0.0) / 1000.0,
        p99_ms: v["p99Micros"].as_f64().unwrap_or(0.0) / 1000.0,
    }
}

/// The last "gateway stats" line's store_writes (the gateway logs it on every flush tick
/// when the counters moved).
fn store_writes(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("gateway stats"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("store_writes="))
                .and_then(|n| n.parse().ok())
        })
        .next_back()
        .unwrap_or(0)
}

/// Waits until the embedded store's inbox is empty; returns how long that took.
fn controller_drained(data: &Path) -> f64 {
    let t0 = Instant::now();
    let store = EmbeddedStore::open(data).unwrap();
    while !store.pending_inputs(1).unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    t0.elapsed().as_secs_f64()
}

/// Waits until the stats line stops moving (one flush tick is 5 s).
fn settled_writes(log: &Path) -> u64 {
    let mut last = store_writes(log);
    loop {
        std::thread::sleep(Duration::from_secs(6));
        let now = store_writes(log);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The embedded store with the examples' policy and image plus N endpoints, a token each, and
/// `recast-operator run --backend embedded` with the gateway on it.
fn start_embedded(
    operator: &Path,
    dir: &Path,
    data: &Path,
    n: usize,
    crt: &Path,
    key: &Path,
    log: &Path,
) -> (Child, String) {
    let t0 = Instant::now();
    {
        let store = EmbeddedStore::open(data).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
            if recast_operator::manifests::is_recast(&doc) && doc.value["kind"] != "Endpoint" {
                store.apply(&doc.value, "default").unwrap();
            }
        }
        for i in 0..n {
            store.apply(&endpoint(i), "default").unwrap();
        }
        let creds = SqliteLedger::open(data).unwrap();
        let mut tokens = serde_json::Map::new();
        for i in 0..n {
            let name = format!("sim-{:05}", i + 1);
            let k = Key {
                namespace: "default".into(),
                name: name.clone(),
            };
            tokens.insert(name, Value::String(creds.issue(&k, "bench").unwrap()));
        }
        std::fs::write(dir.join("tokens.json"), Value::Object(tokens).to_string()).unwrap();
    }
    eprintln!(
        "prepared {n} endpoints and tokens in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let mut cmd = Command::new(operator);
    cmd.args(["run", "--backend", "embedded"]);
    serve_gateway(cmd, data, crt, key, log)
}

/// Starts `cmd` (a `recast-operator run ...` with its backend's flags) with the gateway on a
/// free port and the flags every benchmark run shares; waits until it listens. The global
/// limit protects the store and the per-address limit paces one source: here every simulated
/// agent comes from 127.0.0.1, and neither must shape what is measured.
fn serve_gateway(
    mut cmd: Command,
    data: &Path,
    crt: &Path,
    key: &Path,
    log: &Path,
) -> (Child, String) {
    let gw_port = recast_tests::free_port();
    let what = format!("{cmd:?}");
    let mut op = cmd
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", recast_tests::free_port()),
        ])
        .args(["--gateway-listen", &format!("127.0.0.1:{gw_port}")])
        .args(["--gateway-max-reports-per-second", "1000000"])
        .args(["--gateway-max-requests-per-second-per-ip", "1000000"])
        .arg("--gateway-cert")
        .arg(crt)
        .arg("--gateway-key")
        .arg(key)
        .env("RECAST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("recast-operator");
    wait_port(gw_port, &mut op, &what);
    (op, format!("https://127.0.0.1:{gw_port}"))
}

/// N Endpoints in a fresh namespace of the harness's apiserver, the examples' policy and
/// image, a token each in a fresh control namespace, and one `--role gateway` replica.
fn start_on_kube(
    operator: &Path,
    dir: &Path,
    n: usize,
    crt: &Path,
    key: &Path,
    log: &Path,
) -> (Child, String, recast_tests::K8s) {
    use futures::StreamExt;
    let k = recast_tests::K8s::get().expect("the kube-apiserver harness (make k8s-up)");
    k.install_crds();
    let fleet = k.fresh_namespace("bench-gw");
    let control = k.fresh_namespace("bench-gw-control");
    let t0 = Instant::now();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut context = String::new();
    for (_, doc) in recast_operator::manifests::load(&examples).unwrap() {
        if recast_operator::manifests::is_recast(&doc) && doc.value["kind"] != "Endpoint" {
            context.push_str("---\n");
            context.push_str(&serde_yaml::to_string(&doc.value).unwrap());
        }
    }
    let file = dir.join("context.yaml");
    std::fs::write(&file, context).unwrap();
    k.kubectl_ok(&["apply", "-n", &fleet, "-f", &file.to_string_lossy()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tokens = rt.block_on(async {
        let client = kube_test::client(&k).await;
        let api: kube::Api<recast_crds::Endpoint> = kube::Api::namespaced(client.clone(), &fleet);
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                async move {
                    let ep: recast_crds::Endpoint = serde_json::from_value(endpoint(i)).unwrap();
                    api.create(&Default::default(), &ep).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let creds = recast_operator::credentials::KubeCredentials::new(client, &control);
        let creds = &creds;
        let fleet = &fleet;
        let issued: Vec<(String, String)> = futures::stream::iter(0..n)
            .map(|i| async move {
                let name = format!("sim-{:05}", i + 1);
                let k = Key {
                    namespace: fleet.clone(),
                    name: name.clone(),
                };
                let (token, _) = creds.issue(&k, "bench").await.unwrap();
                (name, token)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        issued
    });
    let tokens: serde_json::Map<String, Value> = tokens
        .into_iter()
        .map(|(name, t)| (name, Value::String(t)))
        .collect();
    std::fs::write(dir.join("tokens.json"), Value::Object(tokens).to_string()).unwrap();
    eprintln!(
        "prepared {n} Endpoints and tokens on the apiserver in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let mut cmd = Command::new(operator);
    cmd.args(["run", "--backend", "kube", "--role", "gateway"])
        .args(["--watch-namespace", &fleet, "--lease-namespace", &control])
        .args([
            "--control-namespace",
            &control,
            "--identity",
            "bench-gateway-0",
        ])
        .env("KUBECONFIG", &k.kubeconfig);
    let (op, url) = serve_gateway(cmd, &dir.join("gateway-data"), crt, key, log);
    (op, url, k)
}

/// ConfigMap writes the apiserver has served (its own `apiserver_request_total`).
fn configmap_writes(k: &recast_tests::K8s) -> u64 {
    let text = k.kubectl_ok(&["get", "--raw", "/metrics"]);
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"configmaps\""))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "DELETE", "APPLY"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let operator = PathBuf::from(
        args.get(1)
            .expect("usage: bench_gateway OPERATOR AGENT [N] [REPORTS]"),
    );
    let agent = PathBuf::from(
        args.get(2)
            .expect("usage: bench_gateway OPERATOR AGENT [N] [REPORTS]"),
    );
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let reports: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("recast-bench-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, crt, key) = certificates(&dir);

    let kube = args.get(5).is_some_and(|m| m == "kube");
    let log = dir.join("gateway.log");
    let data = dir.join("data");
    let (mut op, url, k8s) = if kube {
        let (op, url, k8s) = start_on_kube(&operator, &dir, n, &crt, &key, &log);
        (op, url, Some(k8s))
    } else {
        let (op, url) = start_embedded(&operator, &dir, &data, n, &crt, &key, &log);
        (op, url, None)
    };
    let tokens = dir.join("tokens.json");
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "gateway RSS before any report: {:.0} MiB",
        proc_status_mib(op.id(), "VmRSS:")
    );
    let warm = simulate(&agent, &url, &ca, &tokens, n, 2);
    let writes_warm = settled_writes(&log);
    if !kube {
        // Steady state means the controller has decided the warm-up's inputs too: measuring
        // while it still writes 10,000 statuses would time its backlog, not the gateway.
        let drained = controller_drained(&data);
        eprintln!("controller drained the warm-up inbox in {drained:.1}s");
    }
    eprintln!(
        "after the warm-up: gateway RSS {:.0} MiB",
        proc_status_mib(op.id(), "VmRSS:")
    );
    let outside_before = k8s.as_ref().map(configmap_writes);
    let steady = simulate(&agent, &url, &ca, &tokens, n, reports);
    let writes_total = settled_writes(&log);
    let outside = k8s
        .as_ref()
        .zip(outside_before)
        .map(|(k, before)| configmap_writes(k).saturating_sub(before));
    let rss = proc_status_mib(op.id(), "VmRSS:");
    let hwm = proc_status_mib(op.id(), "VmHWM:");
    let _ = op.kill();
    let _ = op.wait();

    // nginx: a static 204 over TLS, same certificate, same load.
    let ng_port = recast_tests::free_port();
    let ng = dir.join("nginx");
    std::fs::create_dir_all(ng.join("logs")).unwrap();
    let conf = ng.join("nginx.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    write!(
        f,
        "worker_processes auto;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  server {{\n    listen 127.0.0.1:{ng_port} ssl;\n\
         ssl_certificate {crt};\n    ssl_certificate_key {key};\n    keepalive_requests 100000;\n\
         location / {{ return 204; }}\n  }}\n}}\n",
        pid = ng.join("nginx.pid").display(),
        err = ng.join("logs/error.log").display(),
        tmp = ng.display(),
        crt = crt.display(),
        key = key.display(),
    )
    .unwrap();
    drop(f);
    let nginx_bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("nginx (tests/gateway/setup.sh installs it)");
    let mut nginx = Command::new(nginx_bin)
        .args(["-p"])
        .arg(&ng)
        .args(["-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    wait_port(ng_port, &mut nginx, "nginx");
    let ng_url = format!("https://127.0.0.1:{ng_port}");
    let _ = simulate(&agent, &ng_url, &ca, &tokens, n, 1);
    let ng_steady = simulate(&agent, &ng_url, &ca, &tokens, n, reports);
    // SIGTERM, not SIGKILL: the master then stops its workers instead of orphaning them.
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(nginx.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nginx.kill();
    let _ = nginx.wait();

    let steady_writes = writes_total.saturating_sub(writes_warm);
    let per_report = steady_writes as f64 / steady.sent.max(1) as f64;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let backend = if kube {
        "kube backend: one `--role gateway` replica, state in the harness's kube-apiserver"
    } else {
        "embedded backend"
    };
    println!(
        "\nagent gateway benchmark ({backend}): {n} simulated endpoints, 2 warm-up + {reports} measured reports each (healthy fleet), loopback TLS, {cpu}, {cores} cores\n"
    );
    println!(
        "| server | reports sent | accepted | reports/s | p50 ms | p99 ms | store writes per report | RSS (peak) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| recast gateway (warm-up: first two reports) | {} | {} | {:.0} | {:.2} | {:.2} | {:.3} | |",
        warm.sent,
        warm.accepted,
        warm.rate,
        warm.p50_ms,
        warm.p99_ms,
        writes_warm as f64 / warm.sent.max(1) as f64
    );
    println!(
        "| recast gateway (steady state) | {} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.0} MiB ({:.0} MiB) |",
        steady.sent,
        steady.accepted,
        steady.rate,
        steady.p50_ms,
        steady.p99_ms,
        per_report,
        rss,
        hwm
    );
    println!(
        "| nginx static 204 (steady state) | {} | {} | {:.0} | {:.2} | {:.2} | — | |",
        ng_steady.sent, ng_steady.accepted, ng_steady.rate, ng_steady.p50_ms, ng_steady.p99_ms
    );
    if let Some(w) = outside {
        println!(
            "\napiserver writes during the steady state, counted by the apiserver (ConfigMap POST/PUT/PATCH/DELETE): {w}, {:.3} per report",
            w as f64 / steady.sent.max(1) as f64
        );
    }
    println!(
        "\nrecast/nginx rate: {:.2}× (target ≥ 0.5×); p99 {:.2} ms (target < 50 ms); writes per report {:.3} (target ≤ 0.05); RSS {:.0} MiB (target < 200 MiB)",
        steady.rate / ng_steady.rate.max(1e-9),
        steady.p99_ms,
        per_report,
        hwm
    );
    let _ = std::fs::remove_dir_all(&dir);
}
