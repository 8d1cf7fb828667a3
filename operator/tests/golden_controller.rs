//! The GoldenImage controller on the embedded store, against WIMs written by Debian's
//! wimlib-imagex (an independent writer) and served by a small HTTP server in this test that
//! drops the first download half-way, so the controller must resume with Range.
//!
//! Each test names what the bad input gets: a Verified condition with a reason, nothing in the
//! artifact store, and no endless re-download.

#[path = "support/kube_test.rs"]
mod kube_test;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use recast_crds::golden_image::GoldenImage;
use recast_crds::manifest::Kind;
use recast_operator::golden::fetch::ArtifactStore;
use recast_operator::golden::source::{SourcePolicy, parse_cidr};
use recast_operator::golden::{ImageConfig, ImageController};
use recast_operator::store::embedded::EmbeddedBackend;
use recast_operator::store::embedded::EmbeddedStore;
use recast_tests::wimlib::{self, DECEMBER_2025, JANUARY_2026};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The controller runs its deep check in a child of the real operator binary (this test
/// binary has no `deep-check` subcommand).
const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");

/// A WIM made by wimlib-imagex holding `rollup`'s RollupFix package (XML claims the same
/// build), and its sha256.
fn make_wim(dir: &Path, rollup: wimlib::BuildUbr) -> Option<(PathBuf, String)> {
    let wimlib = wimlib::find()?;
    let wim = dir.join("golden.wim");
    let kb = if rollup == JANUARY_2026 {
        "KB5074109"
    } else {
        "KB5072033"
    };
    wimlib::capture_windows(&wimlib, &wim, "none", &[], &[(rollup, kb)], rollup);
    let bytes = std::fs::read(&wim).unwrap();
    Some((wim, hex(&Sha256::digest(&bytes))))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serves one file at /golden.wim. The first full GET sends half the body and then breaks the
/// connection; Range requests are honoured. Records each request's Range header.
#[derive(Clone)]
struct Server {
    bytes: Arc<Vec<u8>>,
    requests: Arc<Mutex<Vec<Option<String>>>>,
    break_first: Arc<Mutex<bool>>,
}

async fn serve_wim(State(s): State<Server>, headers: HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    s.requests.lock().unwrap().push(range.clone());
    let len = s.bytes.len();
    if let Some(r) = range {
        let start: usize = r
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap();
        return Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", len - 1),
            )
            .header(header::CONTENT_LENGTH, len - start)
            .body(Body::from(s.bytes[start..].to_vec()))
            .unwrap();
    }
    let broken = std::mem::replace(&mut *s.break_first.lock().unwrap(), false);
    if broken {
        let half = s.bytes[..len / 2].to_vec();
        // The half goes out first; the break comes a moment later, mid-body.
        let stream =
            futures::stream::iter(vec![Ok::<_, std::io::Error>(axum::body::Bytes::from(half))])
                .chain(futures::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    Err(std::io::Error::other("connection cut by the test"))
                }));
        return Response::builder()
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(stream))
            .unwrap();
    }
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from(s.bytes.to_vec()))
        .unwrap()
}

async fn start_server(bytes: Vec<u8>, break_first: bool) -> (String, Server) {
    let server = Server {
        bytes: Arc::new(bytes),
        requests: Default::default(),
        break_first: Arc::new(Mutex::new(break_first)),
    };
    let app = axum::Router::new()
        .route("/golden.wim", axum::routing::get(serve_wim))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/golden.wim"), server)
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    artifacts: ArtifactStore,
    ctrl: ImageController<EmbeddedBackend>,
}

/// The settings these tests run the controller with: the test's servers are on loopback, and
/// its WIMs under its temporary directory (attack_images.rs covers what is refused).
fn config(dir: &Path) -> ImageConfig {
    ImageConfig {
        streams: false,
        store: ArtifactStore {
            root: dir.join("boot"),
            staging: dir.join("staging"),
        },
        sources: SourcePolicy {
            path_roots: vec![dir.canonicalize().unwrap()],
            allow: vec![parse_cidr("127.0.0.0/8").unwrap()],
            ..SourcePolicy::default()
        },
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("data")).unwrap());
    let config = config(dir.path());
    let artifacts = config.store.clone();
    let ctrl = ImageController::new(
        Arc::new(EmbeddedBackend {
            store: store.clone(),
        }),
        config,
    )
    .unwrap()
    .with_deep_check_program(OPERATOR);
    Fixture {
        _dir: dir,
        store,
        artifacts,
        ctrl,
    }
}

fn golden_image(source: Value, sha256: &str, min_build: &str, extra: Value) -> Value {
    let mut spec = json!({
        "source": source,
        "sha256": sha256,
        "requirements": {"minimumBuild": min_build, "requiredKbs": ["KB5074109"]},
        "channels": ["stable"],
        "canaryChannels": ["canary"],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "recast.dev/v1alpha1",
        "kind": "GoldenImage",
        "metadata": {"name": "win11-2026-01", "namespace": "kiosks"},
        "spec": spec,
    })
}

fn read(f: &Fixture) -> GoldenImage {
    let v = f
        .store
        .get(Kind::GoldenImage, "kiosks", "win11-2026-01")
        .unwrap()
        .unwrap();
    serde_json::from_value(v).unwrap()
}

fn condition(gi: &GoldenImage, type_: &str) -> (String, String, String) {
    let c = gi
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", gi.status));
    (
        format!("{:?}", c.status),
        c.reason.clone(),
        c.message.clone(),
    )
}

fn event_reasons(f: &Fixture) -> Vec<String> {
    f.store
        .events(Kind::GoldenImage, "kiosks", "win11-2026-01")
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

/// What the artifact store holds: served images and staged bytes.
fn files_under(store: &ArtifactStore) -> Vec<String> {
    let mut out = Vec::new();
    for (sub, dir) in [
        ("images", store.root.join("images")),
        ("staging", store.staging.clone()),
    ] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            out.extend(rd.map(|e| format!("{sub}/{}", e.unwrap().file_name().to_string_lossy())));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_dropped_download_resumes_and_the_verified_wim_is_cached_by_digest() {
    let f = fixture();
    let Some((wim, sha)) = make_wim(f._dir.path(), JANUARY_2026) else {
        return;
    };
    let bytes = std::fs::read(&wim).unwrap();
    let (url, server) = start_server(bytes.clone(), true).await;
    f.store
        .apply(
            &golden_image(json!({"url": url}), &sha, "26100.7623", json!({})),
            "default",
        )
        .unwrap();

    f.ctrl.pass(true).await.unwrap();

    let gi = read(&f);
    let (status, reason, message) = condition(&gi, "Verified");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Verified"),
        "{message}"
    );
    assert!(message.contains("KB5074109"), "{message}");
    let st = gi.status.clone().unwrap();
    assert_eq!(st.digest.as_deref(), Some(sha.as_str()));
    assert_eq!(st.observed_generation, Some(1));
    let facts = st.facts.unwrap();
    assert_eq!(facts.build, "26100.7623");
    assert_eq!(facts.kbs, vec!["KB5074109"]);
    assert_eq!(
        st.channels,
        vec!["canary"],
        "a verified image serves its canary channels; stable waits for KnownGood"
    );
    // The first GET broke half-way; the second asked for the rest.
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![None, Some(format!("bytes={}-", bytes.len() / 2))]
    );
    // Only the verified file, under its digest, where the boot service serves it.
    assert_eq!(files_under(&f.artifacts), vec![format!("images/{sha}.wim")]);
    assert_eq!(std::fs::read(f.artifacts.image(&sha)).unwrap(), bytes);
    let (kg, kg_reason, _) = condition(&gi, "KnownGood");
    assert_eq!((kg.as_str(), kg_reason.as_str()), ("False", "NotPromoted"));
    assert_eq!(event_reasons(&f), ["Verified", "ChannelsChanged"]);

    // Settled: another pass fetches nothing.
    f.ctrl.pass(true).await.unwrap();
    assert_eq!(server.requests.lock().unwrap().len(), 2);

    // A wiped artifact volume is refilled without touching the verdict.
    std::fs::remove_file(f.artifacts.image(&sha)).unwrap();
    f.ctrl.pass(true).await.unwrap();
    assert!(f.artifacts.has_image(&sha));
    assert_eq!(read(&f).status, gi.status);
}

#[tokio::test]
async fn bytes_that_do_not_match_the_spec_are_never_cached_or_served() {
    let f = fixture();
    let Some((wim, _)) = make_wim(f._dir.path(), JANUARY_2026) else {
        return;
    };
    let (url, server) = start_server(std::fs::read(&wim).unwrap(), false).await;
    let wrong = "ab".repeat(32);
    f.store
        .apply(
            &golden_image(json!({"url": url}), &wrong, "26100.7623", json!({})),
            "default",
        )
        .unwrap();
    f.ctrl.pass(true).await.unwrap();
    let gi = read(&f);
    let (status, reason, message) = condition(&gi, "Verified");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BytesMismatch")
    );
    assert!(message.contains("sha256"), "{message}");
    let st = gi.status.unwrap();
    assert_eq!(st.digest, None, "no digest to serve");
    assert!(
        st.channels.is_empty(),
        "an unverified image serves no channel"
    );
    assert_eq!(
        st.observed_generation,
        Some(1),
        "a definite verdict settles the spec"
    );
    assert!(
        files_under(&f.artifacts).is_empty(),
        "wrong bytes are deleted"
    );
    // No endless re-download of bad bytes: nothing happens until the spec changes.
    f.ctrl.pass(true).await.unwrap();
    assert_eq!(server.requests.lock().unwrap().len(), 1);
    assert_eq!(event_reasons(&f), ["BytesMismatch"]);
}

#[tokio::test]
async fn an_image_whose_packages_lack_the_january_rollup_is_not_verified() {
    let f = fixture();
    let Some((wim, sha)) = make_wim(f._dir.path(), DECEMBER_2025) else {
        return;
    };
    f.store
        .apply(
            &golden_image(
                json!({"path": wim.display().to_string()}),
                &sha,
                "26100.7623",
                json!({}),
            ),
            "default",
        )
        .unwrap();
    f.ctrl.pass(true).await.unwrap();
    let gi = read(&f);
    let (status, reason, message) = condition(&gi, "Verified");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RequirementsNotMet"),
        "{message}"
    );
    assert!(
        message.contains("7462"),
        "says which build it found: {message}"
    );
    assert_eq!(gi.status.unwrap().facts.unwrap().build, "26100.7462");
    assert!(files_under(&f.artifacts).is_empty());
}

#[tokio::test]
async fn an_unreachable_source_is_retried_later_and_never_marked_checked() {
    let f = fixture();
    // A port nothing listens on.
    let port = recast_tests::free_port();
    f.store
        .apply(
            &golden_image(
                json!({"url": format!("http://127.0.0.1:{port}/golden.wim")}),
                &"ab".repeat(32),
                "26100.7623",
                json!({}),
            ),
            "default",
        )
        .unwrap();
    f.ctrl.pass(true).await.unwrap();
    let gi = read(&f);
    let (status, reason, message) = condition(&gi, "Verified");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "FetchFailed")
    );
    assert!(
        message.contains("check that the URL is reachable"),
        "{message}"
    );
    assert_eq!(
        gi.status.unwrap().observed_generation,
        None,
        "left open for a retry"
    );
    // Backing off: an immediate second pass does not try again (no second event).
    f.ctrl.pass(true).await.unwrap();
    assert_eq!(event_reasons(&f), ["FetchFailed"]);
    // An edited spec (the URL fixed, say) is tried at once, backoff or not.
    let fixed = golden_image(
        json!({"url": format!("http://127.0.0.1:{port}/other.wim")}),
        &"ab".repeat(32),
        "26100.7623",
        json!({}),
    );
    f.store.apply(&fixed, "default").unwrap();
    f.ctrl.pass(true).await.unwrap();
    assert_eq!(event_reasons(&f), ["FetchFailed", "FetchFailed"]);
    assert!(condition(&read(&f), "Verified").2.contains("other.wim"));
}

/// A driver WIM made with wimlib: one INF folder.
fn make_driver_wim(dir: &Path) -> Option<(PathBuf, String)> {
    let src = dir.join("drivers-src/contoso-nic");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("contoso.inf"),
        "[Version]\r\nSignature=\"$WINDOWS NT$\"\r\n",
    )
    .unwrap();
    let wim = dir.join("contoso-kiosk-5000.wim");
    let out = std::process::Command::new("wimlib-imagex")
        .arg("capture")
        .arg(dir.join("drivers-src"))
        .arg(&wim)
        .arg("drivers")
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = hex(&Sha256::digest(std::fs::read(&wim).unwrap()));
    Some((wim, sha))
}

#[tokio::test]
async fn driver_sets_are_fetched_checked_by_sha256_and_stored_by_digest() {
    let f = fixture();
    let Some((wim, sha)) = make_wim(f._dir.path(), JANUARY_2026) else {
        recast_tests::skip_or_fail("RECAST_REQUIRE_WIMLIB", "wimlib-imagex is missing");
        return;
    };
    let Some((drivers, drivers_sha)) = make_driver_wim(f._dir.path()) else {
        recast_tests::skip_or_fail("RECAST_REQUIRE_WIMLIB", "wimlib-imagex is missing");
        return;
    };
    // A second set whose sha256 is wrong, and a third that is not a WIM.
    let not_wim = f._dir.path().join("not-a-wim.zip");
    std::fs::write(&not_wim, b"PK\x03\x04 a zip").unwrap();
    let not_wim_sha = hex(&Sha256::digest(std::fs::read(&not_wim).unwrap()));
    let set = |model: &str, path: &Path, sha: &str| {
        json!({"manufacturer": "Contoso Ltd.", "model": model,
               "source": {"path": path.display().to_string()}, "sha256": sha})
    };
    let good = golden_image(
        json!({"path": wim.display().to_string()}),
        &sha,
        "26100.7623",
        json!({"drivers": [set("Kiosk 5000", &drivers, &drivers_sha)]}),
    );
    f.store.apply(&good, "default").unwrap();
    f.ctrl.pass(true).await.unwrap();
    let (verified, _, _) = condition(&read(&f), "Verified");
    assert_eq!(verified, "True");
    assert!(
        f.artifacts.has_image(&sha),
        "{:?}",
        files_under(&f.artifacts)
    );
    assert!(
        f.artifacts.has_image(&drivers_sha),
        "the driver set is served by its digest: {:?}",
        files_under(&f.artifacts)
    );

    for (bad_set, says) in [
        (set("Kiosk 6000", &drivers, &"0".repeat(64)), "sha256 is"),
        (set("Kiosk 7000", &not_wim, &not_wim_sha), "not a WIM"),
    ] {
        let mut doc = good.clone();
        doc["spec"]["drivers"] = json!([set("Kiosk 5000", &drivers, &drivers_sha), bad_set]);
        f.store.apply(&doc, "default").unwrap();
        f.ctrl.forget_backoff();
        f.ctrl.pass(true).await.unwrap();
        let events = f
            .store
            .events(Kind::GoldenImage, "kiosks", "win11-2026-01")
            .unwrap();
        let failed = events
            .iter()
            .rev()
            .find(|e| e.reason == "DriverSetFailed")
            .unwrap_or_else(|| panic!("no DriverSetFailed event: {events:?}"));
        assert!(failed.message.contains(says), "{}", failed.message);
        // Nothing of the bad set is served, and nothing stays staged under its name.
        assert!(!f.artifacts.has_image(&"0".repeat(64)));
        assert!(!f.artifacts.has_image(&not_wim_sha));
        assert!(
            !files_under(&f.artifacts)
                .iter()
                .any(|p| p.starts_with("staging/")),
            "{:?}",
            files_under(&f.artifacts)
        );
    }
}

#[tokio::test]
async fn a_local_path_is_copied_and_promotion_by_hand_makes_it_known_good() {
    let f = fixture();
    let Some((wim, sha)) = make_wim(f._dir.path(), JANUARY_2026) else {
        return;
    };
    let mut doc = golden_image(
        json!({"path": wim.display().to_string()}),
        &sha,
        "26100.7623",
        json!({"promotion": {"minReadyEndpoints": 1, "soak": "1h"}}),
    );
    f.store.apply(&doc, "default").unwrap();
    f.ctrl.pass(true).await.unwrap();
    let (kg, reason, message) = condition(&read(&f), "KnownGood");
    assert_eq!(
        (kg.as_str(), reason.as_str()),
        ("False", "Soaking"),
        "{message}"
    );
    // The source may change later; the served copy does not.
    std::fs::write(&wim, b"rewritten").unwrap();
    assert!(f.artifacts.has_image(&sha));

    doc["metadata"]["annotations"] = json!({
        "recast.dev/known-good": "promoted",
        "recast.dev/known-good-reason": "canary wave clean (ops on call)",
    });
    f.store.apply(&doc, "default").unwrap();
    f.ctrl.pass(true).await.unwrap();
    let gi = read(&f);
    let (kg, reason, message) = condition(&gi, "KnownGood");
    assert_eq!((kg.as_str(), reason.as_str()), ("True", "Promoted"));
    assert!(message.contains("canary wave clean"), "{message}");
    assert!(event_reasons(&f).contains(&"KnownGood".to_string()));
    // Annotations do not change the generation: no second check of the bytes.
    assert_eq!(gi.metadata.generation, Some(1));
}

#[tokio::test]
async fn an_edited_spec_withdraws_the_image_until_the_new_spec_is_checked() {
    let f = fixture();
    let Some((wim, sha)) = make_wim(f._dir.path(), JANUARY_2026) else {
        return;
    };
    let mut doc = golden_image(
        json!({"path": wim.display().to_string()}),
        &sha,
        "26100.7623",
        json!({}),
    );
    f.store.apply(&doc, "default").unwrap();
    f.ctrl.pass(true).await.unwrap();
    assert_eq!(condition(&read(&f), "Verified").0, "True");
    // February's minimum: the same bytes no longer qualify.
    doc["spec"]["requirements"]["minimumBuild"] = json!("26100.7840");
    f.store.apply(&doc, "default").unwrap();
    f.ctrl.pass(true).await.unwrap();
    let gi = read(&f);
    let (status, reason, message) = condition(&gi, "Verified");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RequirementsNotMet"),
        "{message}"
    );
    let st = gi.status.unwrap();
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(st.digest, None);
    assert!(st.channels.is_empty());
}

/// The same controller on the real apiserver: status through the status subresource, Events
/// through events.k8s.io, and a promotion by annotation seen through the watch.
#[tokio::test]
async fn on_the_apiserver_the_controller_verifies_and_promotes() {
    let Some(k) = recast_tests::K8s::get() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((wim, sha)) = make_wim(dir.path(), JANUARY_2026) else {
        return;
    };
    k.install_crds();
    let ns = k.fresh_namespace("golden");
    let mut doc = golden_image(
        json!({"path": wim.display().to_string()}),
        &sha,
        "26100.7623",
        json!({}),
    );
    doc["metadata"]["namespace"] = json!(ns);
    let file = dir.path().join("gi.yaml");
    std::fs::write(&file, serde_json::to_string(&doc).unwrap()).unwrap();
    k.kubectl_ok(&["apply", "-f", &file.to_string_lossy()]);

    let backend = kube_test::backend(
        &k,
        &kube_test::options(&ns),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
    )
    .await;
    let config = config(dir.path());
    let artifacts = config.store.clone();
    let ctrl = ImageController::new(Arc::new(backend), config)
        .unwrap()
        .with_deep_check_program(OPERATOR);
    let get = || -> Value {
        serde_json::from_str(&k.kubectl_ok(&[
            "get",
            "gi",
            "win11-2026-01",
            "-n",
            &ns,
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let reason_of = |v: &Value, t: &str| -> Option<String> {
        v.pointer("/status/conditions")?
            .as_array()?
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| {
                format!(
                    "{}/{}",
                    c["status"].as_str().unwrap(),
                    c["reason"].as_str().unwrap()
                )
            })
    };
    // Passes until the watch has delivered what the test changed (the cache lags a moment).
    let until = |want: &'static str, t: &'static str| {
        let ctrl = &ctrl;
        let get = &get;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                ctrl.pass(true).await.unwrap();
                let v = get();
                if reason_of(&v, t).as_deref() == Some(want) {
                    return v;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{t} never became {want}: {:?}",
                    v["status"]
                );
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }
    };
    let v = until("True/Verified", "Verified").await;
    assert_eq!(v["status"]["digest"], sha.as_str());
    assert_eq!(v["status"]["observedGeneration"], 1);
    assert_eq!(v["status"]["facts"]["build"], "26100.7623");
    assert_eq!(v["status"]["channels"], json!(["canary"]));
    assert!(artifacts.has_image(&sha));
    // kubectl's own columns read what the controller wrote.
    let row = k.kubectl_ok(&["get", "gi", "-n", &ns, "--no-headers"]);
    assert!(row.contains("26100.7623") && row.contains("True"), "{row}");

    k.kubectl_ok(&[
        "annotate",
        "gi",
        "win11-2026-01",
        "-n",
        &ns,
        "recast.dev/known-good=promoted",
        "recast.dev/known-good-reason=canary clean",
    ]);
    until("True/Promoted", "KnownGood").await;
    let events = k.kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
    for reason in ["Verified", "KnownGood"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "no {reason} event: {events}"
        );
    }
}

#[tokio::test]
async fn a_path_that_is_not_a_regular_file_is_refused_without_copying() {
    let f = fixture();
    let root = f._dir.path().canonicalize().unwrap();
    let fifo = root.join("golden.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir(root.join("a-directory")).unwrap();
    let cases = [
        (fifo.display().to_string(), "FetchFailed"),
        (
            root.join("a-directory").display().to_string(),
            "FetchFailed",
        ),
        (
            root.join("missing.wim").display().to_string(),
            "FetchFailed",
        ),
        // Outside the roots: refused before it is even looked at.
        ("/dev/zero".to_string(), "SourceRefused"),
        ("/nonexistent/golden.wim".to_string(), "SourceRefused"),
        ("/tmp".to_string(), "SourceRefused"),
    ];
    for (path, want) in cases {
        let doc = golden_image(
            json!({"path": path}),
            &"ab".repeat(32),
            "26100.7623",
            json!({}),
        );
        f.store.apply(&doc, "default").unwrap();
        f.ctrl.pass(true).await.unwrap();
        let (status, reason, message) = condition(&read(&f), "Verified");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("Unknown", want),
            "{path}: {message}"
        );
        assert!(message.contains(&path), "{message}");
        assert!(
            files_under(&f.artifacts).is_empty(),
            "nothing copied for {path}"
        );
        // A fresh controller: this one backs off from the image it just failed on.
        f.store
            .delete(Kind::GoldenImage, "kiosks", "win11-2026-01")
            .unwrap();
        f.ctrl.forget_backoff();
    }
}
