//! Attacks on GoldenImage sources (issue 17, item 3), performed against the real
//! `recast-operator` binary on the embedded backend. The attacker writes GoldenImages (on
//! Kubernetes: anyone who may edit them in a tenant namespace) and wants the operator, which
//! runs with the imaging key, the BMC passwords and a host-network position, to read or reach
//! what the attacker cannot: local secrets, loopback services, the cloud metadata service.
//! Each test watches the attack fail with the refusal it should get, and checks that the
//! refused source was never contacted and no byte of it was kept or served.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use recast_crds::manifest::Kind;
use recast_operator::store::embedded::EmbeddedStore;
use serde_json::{Value, json};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
/// What the "secret" files and services hold; found anywhere in the artifact store, it leaked.
const SECRET: &[u8] = b"root:$6$attack-images-secret-marker:19000:0:99999:7:::\n";

struct Site {
    dir: PathBuf,
    data: PathBuf,
    store: EmbeddedStore,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir =
            std::env::temp_dir().join(format!("recast-attack-img-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let data = dir.join("data");
        let store = EmbeddedStore::open(&data).unwrap();
        Site { dir, data, store }
    }

    fn boot_root(&self) -> PathBuf {
        self.data.join("boot")
    }

    fn staging(&self) -> PathBuf {
        self.data.join("image-staging")
    }

    fn golden_image(&self, name: &str, source: Value) {
        let doc = json!({
            "apiVersion": "recast.dev/v1alpha1",
            "kind": "GoldenImage",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "source": source,
                "sha256": "ab".repeat(32),
                "requirements": {"minimumBuild": "26100.7623"},
            },
        });
        self.store.apply(&doc, "default").unwrap();
    }

    /// (status, reason, message) of the image's Verified condition, once it has one that is
    /// not the initial "Checking".
    fn verdict(&self, name: &str) -> Option<(String, String, String)> {
        let v = self.store.get(Kind::GoldenImage, "default", name).ok()??;
        let c = v
            .pointer("/status/conditions")?
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Verified")?
            .clone();
        let reason = c["reason"].as_str()?.to_string();
        (reason != "Checking").then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                reason,
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
    }

    fn wait_verdict(&self, name: &str) -> (String, String, String) {
        let start = Instant::now();
        loop {
            if let Some(v) = self.verdict(name) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "{name} never got a verdict: {:?}",
                self.store.get(Kind::GoldenImage, "default", name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every file under the boot root and the staging directory that holds `needle`.
    fn files_holding(&self, needle: &[u8]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [self.boot_root(), self.staging()] {
            walk(&dir, &mut |p| {
                let bytes = std::fs::read(p).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.to_path_buf());
                }
            });
        }
        out
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

struct Operator {
    child: Child,
    lines: mpsc::Receiver<String>,
    boot_port: u16,
}

impl Operator {
    fn start(site: &Site, extra: &[&str]) -> Operator {
        let boot_port = recast_tests::free_port();
        let mut child = Command::new(OPERATOR)
            .args(["run", "--backend", "embedded", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&site.data)
            .args(["--power-driver", "record", "--boot-http"])
            .arg(format!("127.0.0.1:{boot_port}"))
            .args(extra)
            .env("RECAST_LOG", "warn")
            .env_remove("RECAST_IMAGE_SOURCE_ROOTS")
            .env_remove("RECAST_IMAGE_STAGING_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start recast-operator");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Operator {
            child,
            lines,
            boot_port,
        }
    }

    /// Runs an operator that must refuse to start; returns what it said.
    fn refuses(site: &Site, extra: &[&str]) -> String {
        let mut op = Operator::start(site, extra);
        let start = Instant::now();
        loop {
            if let Some(status) = op.child.try_wait().unwrap() {
                assert!(!status.success(), "the operator started with {extra:?}");
                std::thread::sleep(Duration::from_millis(100));
                return op.lines.try_iter().collect::<Vec<_>>().join("\n");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the operator kept running with {extra:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str) -> u16 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.boot_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: boot\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn wait_boot_http(&self) {
        recast_tests::wait_for(Duration::from_secs(20), "the boot HTTP server", || {
            std::net::TcpStream::connect(("127.0.0.1", self.boot_port)).is_ok()
        });
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small HTTP server on `ip` in its own thread and runtime (the tests themselves are
/// synchronous, like an operator's peer would be). Counts the requests it gets.
struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn serve(ip: &str, app: axum::Router) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            counted.fetch_add(1, Ordering::SeqCst);
            next.run(req)
        },
    ));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(format!("{ip}:0")))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    Server {
        url: format!("http://{addr}"),
        hits,
        _rt: rt,
    }
}

fn secret_server(ip: &str) -> Server {
    serve(
        ip,
        axum::Router::new().fallback(|| async { SECRET.to_vec() }),
    )
}

fn assert_refused(site: &Site, name: &str, wants: &[&str]) -> String {
    let (status, reason, message) = site.wait_verdict(name);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "SourceRefused"),
        "{name}: {message}"
    );
    for w in wants {
        assert!(message.contains(w), "{name}: {message:?} lacks {w:?}");
    }
    message
}

#[test]
fn local_paths_outside_the_roots_are_refused_through_symlinks_and_dotdot() {
    let site = Site::new("paths");
    let wims = site.dir.join("wims");
    let outside = site.dir.join("outside");
    std::fs::create_dir_all(&wims).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let shadow = outside.join("shadow");
    std::fs::write(&shadow, SECRET).unwrap();
    std::os::unix::fs::symlink(&shadow, wims.join("link.wim")).unwrap();
    std::os::unix::fs::symlink(&outside, wims.join("linked-dir")).unwrap();
    let key = site.data.join("imaging.key");

    // No root configured (the default): every path is refused, and the message says how to
    // allow one.
    site.golden_image("no-roots", json!({"path": shadow.display().to_string()}));
    {
        let _op = Operator::start(&site, &[]);
        assert_refused(&site, "no-roots", &["--image-source-root", "none is set"]);
    }
    site.store
        .delete(Kind::GoldenImage, "default", "no-roots")
        .unwrap();
    assert!(key.exists(), "the boot service created the imaging key");

    let cases = [
        ("shadow", shadow.display().to_string()),
        ("imaging-key", key.display().to_string()),
        (
            "recast-db",
            site.data.join("recast.db").display().to_string(),
        ),
        ("symlink", wims.join("link.wim").display().to_string()),
        (
            "symlinked-dir",
            wims.join("linked-dir/shadow").display().to_string(),
        ),
        (
            "sa-token",
            "/var/run/secrets/kubernetes.io/serviceaccount/token".to_string(),
        ),
        ("proc", "/proc/self/environ".to_string()),
    ];
    for (name, path) in &cases {
        site.golden_image(name, json!({"path": path}));
    }
    // '..' is refused by the GoldenImage schema already; should it get through, the real path
    // decides.
    let dotdot = format!("{}/../outside/shadow", wims.display());
    let dotdot_stored = site
        .store
        .apply(
            &json!({
                "apiVersion": "recast.dev/v1alpha1",
                "kind": "GoldenImage",
                "metadata": {"name": "dotdot", "namespace": "default"},
                "spec": {"source": {"path": dotdot}, "sha256": "ab".repeat(32),
                         "requirements": {"minimumBuild": "26100.7623"}},
            }),
            "default",
        )
        .is_ok();

    let _op = Operator::start(&site, &["--image-source-root", &wims.display().to_string()]);
    for (name, path) in &cases {
        let message = assert_refused(&site, name, &["--image-source-root"]);
        assert!(message.contains(path.as_str()), "{message}");
    }
    let m = assert_refused(&site, "symlink", &[]);
    assert!(
        m.contains(&shadow.display().to_string()),
        "names where the symlink really leads: {m}"
    );
    if dotdot_stored {
        assert_refused(&site, "dotdot", &["--image-source-root"]);
    }
    assert_eq!(site.files_holding(SECRET), Vec::<PathBuf>::new());
    let key_bytes = std::fs::read(&key).unwrap();
    assert_eq!(site.files_holding(&key_bytes), Vec::<PathBuf>::new());
}

#[test]
fn urls_to_loopback_metadata_and_redirects_there_are_refused_without_a_connection() {
    let site = Site::new("urls");
    let secret = secret_server("127.0.0.1");
    let port = secret.url.rsplit(':').next().unwrap().to_string();
    // The "image server" the site allows explicitly, which redirects into loopback.
    let target = format!("{}/latest/meta-data/iam", secret.url);
    let redirector = serve(
        "127.0.0.2",
        axum::Router::new().fallback(move || {
            let target = target.clone();
            async move {
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(header::LOCATION, target)
                    .body(Body::empty())
                    .unwrap()
            }
        }),
    );
    for (name, url) in [
        ("loopback", format!("{}/golden.wim", secret.url)),
        ("localhost", format!("http://localhost:{port}/golden.wim")),
        (
            "mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/golden.wim"),
        ),
        ("decimal", format!("http://2130706433:{port}/golden.wim")),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_string(),
        ),
        ("redirect", format!("{}/golden.wim", redirector.url)),
    ] {
        site.golden_image(name, json!({"url": url}));
    }
    {
        let _op = Operator::start(&site, &["--image-source-allow-cidr", "127.0.0.2/32"]);
        for name in ["loopback", "localhost", "mapped", "decimal"] {
            assert_refused(
                &site,
                name,
                &["loopback", "--image-source-allow-cidr 127.0.0.1/32"],
            );
        }
        assert_refused(&site, "metadata", &["link-local", "169.254.169.254"]);
        assert_refused(
            &site,
            "redirect",
            &["redirects", "--image-source-allow-redirects"],
        );
    }
    assert!(redirector.hits.load(Ordering::SeqCst) >= 1);
    // Redirects allowed: the hop into loopback is still refused, on its address.
    site.store
        .delete(Kind::GoldenImage, "default", "redirect")
        .unwrap();
    site.golden_image(
        "redirect-allowed",
        json!({"url": format!("{}/golden.wim", redirector.url)}),
    );
    {
        let _op = Operator::start(
            &site,
            &[
                "--image-source-allow-cidr",
                "127.0.0.2/32",
                "--image-source-allow-redirects",
            ],
        );
        assert_refused(&site, "redirect-allowed", &["127.0.0.1", "loopback"]);
    }
    assert_eq!(
        secret.hits.load(Ordering::SeqCst),
        0,
        "the loopback service was never contacted"
    );
    assert_eq!(site.files_holding(SECRET), Vec::<PathBuf>::new());
}

#[test]
fn bodies_beyond_the_size_limit_and_fetches_beyond_the_deadline_are_cut_off() {
    let site = Site::new("limits");
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let server = serve(
        "127.0.0.2",
        axum::Router::new()
            .route(
                "/announced.wim",
                axum::routing::get(|| async {
                    // Says 2 MiB up front; a byte-for-byte reader would learn it too late.
                    Response::builder()
                        .header(header::CONTENT_LENGTH, 2 << 20)
                        .body(Body::from(vec![b'x'; 2 << 20]))
                        .unwrap()
                }),
            )
            .route(
                "/endless.wim",
                axum::routing::get(move || {
                    let counter = counter.clone();
                    async move {
                        // No length: the limit must cut the stream itself.
                        let chunks = futures::stream::repeat_with(move || {
                            counter.fetch_add(64 << 10, Ordering::SeqCst);
                            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'y'; 64 << 10]))
                        });
                        Response::new(Body::from_stream(chunks))
                    }
                }),
            )
            .route(
                "/stalls.wim",
                axum::routing::get(|| async {
                    let first = futures::stream::once(async {
                        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"MSWIM\0\0\0"))
                    });
                    use futures::StreamExt;
                    Response::builder()
                        .header(header::CONTENT_LENGTH, 1 << 20)
                        .body(Body::from_stream(first.chain(futures::stream::pending())))
                        .unwrap()
                }),
            ),
    );
    site.golden_image(
        "announced",
        json!({"url": format!("{}/announced.wim", server.url)}),
    );
    site.golden_image(
        "endless",
        json!({"url": format!("{}/endless.wim", server.url)}),
    );
    site.golden_image(
        "stalls",
        json!({"url": format!("{}/stalls.wim", server.url)}),
    );
    let big = site.dir.join("wims/big.wim");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::write(&big, vec![b'z'; 3 << 20]).unwrap();
    site.golden_image("big-file", json!({"path": big.display().to_string()}));
    let _op = Operator::start(
        &site,
        &[
            "--image-source-allow-cidr",
            "127.0.0.2",
            "--image-max-bytes",
            "1Mi",
            "--image-fetch-timeout",
            "3s",
            "--image-source-root",
            &site.dir.join("wims").display().to_string(),
        ],
    );
    for name in ["announced", "endless", "big-file"] {
        let (status, reason, message) = site.wait_verdict(name);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("Unknown", "SourceTooLarge"),
            "{name}: {message}"
        );
        assert!(message.contains("--image-max-bytes"), "{message}");
    }
    // The endless body was cut near the limit, not read on.
    let read = sent.load(Ordering::SeqCst);
    assert!(read < 16 << 20, "the endless body was read to {read} bytes");
    let (status, reason, message) = site.wait_verdict("stalls");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "FetchFailed"),
        "{message}"
    );
    assert!(message.contains("--image-fetch-timeout"), "{message}");
    // Nothing over the limit was kept.
    assert_eq!(site.files_holding(&[b'x'; 4096]), Vec::<PathBuf>::new());
    assert_eq!(site.files_holding(&[b'y'; 4096]), Vec::<PathBuf>::new());
    assert_eq!(site.files_holding(&[b'z'; 4096]), Vec::<PathBuf>::new());
}

#[test]
fn staged_bytes_are_never_under_the_served_tree() {
    let site = Site::new("staging");
    let marker: Vec<u8> = b"STAGED-NOT-VERIFIED-"
        .iter()
        .copied()
        .cycle()
        .take(64 << 10)
        .collect();
    let body = marker.clone();
    let server = serve(
        "127.0.0.2",
        axum::Router::new().fallback(move || {
            let body = body.clone();
            async move {
                use futures::StreamExt;
                // Sends a part, then holds the download open: the bytes sit in staging.
                let first = futures::stream::once(async move {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(body))
                });
                Response::builder()
                    .header(header::CONTENT_LENGTH, 1 << 20)
                    .body(Body::from_stream(first.chain(futures::stream::pending())))
                    .unwrap()
            }
        }),
    );
    let sha = "ab".repeat(32);
    site.golden_image("slow", json!({"url": format!("{}/golden.wim", server.url)}));
    let op = Operator::start(&site, &["--image-source-allow-cidr", "127.0.0.2"]);
    op.wait_boot_http();
    recast_tests::wait_for(Duration::from_secs(30), "bytes in staging", || {
        !site.files_holding(&marker).is_empty()
    });
    let part = site.files_holding(&marker).remove(0);
    assert!(part.starts_with(site.staging()), "{}", part.display());
    let part_name = part.file_name().unwrap().to_string_lossy().to_string();
    for path in [
        format!("/artifacts/.staging/{part_name}"),
        format!("/artifacts/.staging/{sha}.wim.part"),
        format!("/artifacts/images/{sha}.wim"),
        format!("/artifacts/../image-staging/{part_name}"),
        format!("/artifacts/%2e%2e/image-staging/{part_name}"),
    ] {
        assert_eq!(op.get(&path), 404, "{path}");
    }
    let served: Vec<_> = site
        .files_holding(&marker[..4096])
        .into_iter()
        .filter(|p| p.starts_with(site.boot_root()))
        .collect();
    assert_eq!(
        served,
        Vec::<PathBuf>::new(),
        "staged bytes under the boot root"
    );
    drop(op);

    // A layout that would serve staged bytes, or hand out the operator's secrets, does not
    // start.
    let inside = site.boot_root().join("staging");
    let said = Operator::refuses(
        &site,
        &["--image-staging-dir", &inside.display().to_string()],
    );
    assert!(said.contains("overlaps the boot root"), "{said}");
    let said = Operator::refuses(
        &site,
        &["--image-source-root", &site.dir.display().to_string()],
    );
    assert!(said.contains("contains the data directory"), "{said}");
    let said = Operator::refuses(&site, &["--boot-root", &site.dir.display().to_string()]);
    assert!(said.contains("contains the data directory"), "{said}");
    let said = Operator::refuses(&site, &["--image-source-root", "/nonexistent/wims"]);
    assert!(
        said.contains("--image-source-root /nonexistent/wims"),
        "{said}"
    );
}

/// The pass must not serialise images: one whose source stalls leaves another's check free.
#[test]
fn a_stalled_source_does_not_hold_up_another_image() {
    let site = Site::new("parallel");
    let server = serve(
        "127.0.0.2",
        axum::Router::new().fallback(|| async {
            use futures::StreamExt;
            let first = futures::stream::once(async {
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"MSWIM\0\0\0"))
            });
            Response::builder()
                .header(header::CONTENT_LENGTH, 1 << 20)
                .body(Body::from_stream(first.chain(futures::stream::pending())))
                .unwrap()
        }),
    );
    let wims = site.dir.join("wims");
    std::fs::create_dir_all(&wims).unwrap();
    std::fs::write(wims.join("other.wim"), b"not the bytes the spec names").unwrap();
    // Listed first, so a serial pass would be stuck on it.
    site.golden_image(
        "a-stalls",
        json!({"url": format!("{}/golden.wim", server.url)}),
    );
    site.golden_image(
        "b-local",
        json!({"path": wims.join("other.wim").display().to_string()}),
    );
    let started = Instant::now();
    let _op = Operator::start(
        &site,
        &[
            "--image-source-allow-cidr",
            "127.0.0.2",
            "--image-source-root",
            &wims.display().to_string(),
        ],
    );
    // A definite verdict (the bytes are not the WIM the spec names) means it was checked.
    let (status, reason, message) = site.wait_verdict("b-local");
    assert_eq!(status, "False", "{reason}: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the other image waited for the stalled one"
    );
    assert_eq!(site.verdict("a-stalls"), None, "still fetching");
}
