//! `recastctl image inspect|verify|manifest` as a pipeline runs them, on WIMs written by
//! wimlib-imagex (skips loudly without it unless RECAST_REQUIRE_WIMLIB=1).

use std::path::Path;
use std::process::Command;

use recast_tests::wimlib::{self, DECEMBER_2025, JANUARY_2026};
use serde_json::Value;

mod common;
use common::{RECASTCTL, code, ctl, text};

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct Fx {
    dir: tempfile::TempDir,
    wimlib: std::path::PathBuf,
}

impl Fx {
    fn new() -> Option<Fx> {
        Some(Fx {
            wimlib: wimlib::find()?,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn january(&self, name: &str) -> String {
        let wim = self.dir.path().join(name);
        wimlib::capture_windows(
            &self.wimlib,
            &wim,
            "LZX",
            &["--check"],
            &[(DECEMBER_2025, "KB5072033"), (JANUARY_2026, "KB5074109")],
            JANUARY_2026,
        );
        wim.to_string_lossy().into_owned()
    }

    /// XML stamped 26100.7623, packages only December's 26100.7462.
    fn liar(&self) -> String {
        let wim = self.dir.path().join("liar.wim");
        wimlib::capture_windows(
            &self.wimlib,
            &wim,
            "XPRESS",
            &[],
            &[(DECEMBER_2025, "KB5072033")],
            JANUARY_2026,
        );
        wim.to_string_lossy().into_owned()
    }
}

#[test]
fn inspect_prints_a_table_and_json() {
    let Some(fx) = Fx::new() else { return };
    let wim = fx.january("jan.wim");
    let out = ctl(&["image", "inspect", &wim]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("LZX compression"), "{table}");
    assert!(table.contains("Integrity table:   yes"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no image row in\n{table}"));
    for want in [
        "Windows 11 Enterprise",
        "Enterprise",
        "amd64",
        "26100.7623",
        "KB5074109",
        "en-US",
        "Client",
    ] {
        assert!(row.contains(want), "{want} missing from {row}");
    }

    let out = ctl(&["image", "inspect", &wim, "-o", "json"]);
    assert_eq!(code(&out), 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["header"]["compression"], "LZX");
    assert_eq!(v["header"]["imageCount"], 1);
    assert_eq!(v["xml"]["images"][0]["edition"], "Enterprise");
    assert_eq!(v["xml"]["images"][0]["spBuild"], 7623);
    assert_eq!(v["fileSize"], std::fs::metadata(&wim).unwrap().len());
}

#[test]
fn verify_exit_codes_let_a_pipeline_branch() {
    let Some(fx) = Fx::new() else { return };
    let wim = fx.january("jan.wim");
    let sha = sha256sum(Path::new(&wim));

    // 0: verified. No progress bar when stderr is not a terminal.
    let out = ctl(&[
        "image",
        "verify",
        &wim,
        "--sha256",
        &sha,
        "--min-build",
        "26100.7623",
        "--kb",
        "KB5074109",
        "--edition",
        "Enterprise",
        "--arch",
        "amd64",
    ]);
    assert_eq!(
        code(&out),
        0,
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    assert!(report.contains("VERIFIED"), "{report}");
    assert!(
        report.contains("contains KB5074109: yes, build 26100.7623"),
        "{report}"
    );
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));

    // 4: the bytes are not the expected ones.
    let out = ctl(&["image", "verify", &wim, "--sha256", &"0".repeat(64)]);
    assert_eq!(code(&out), 4, "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("DIFFERS from --sha256"));

    // 5: intact but not what is required: an unknown KB, a newer minimum.
    let out = ctl(&["image", "verify", &wim, "--kb", "KB5999999"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stdout));
    let out = ctl(&[
        "image",
        "verify",
        &wim,
        "--min-build",
        "26100.7840",
        "-o",
        "json",
    ]);
    assert_eq!(code(&out), 5);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "requirementsNotMet");
    assert_eq!(v["exitCode"], 5);
    assert_eq!(v["facts"]["build"], "26100.7623");
    assert_eq!(v["facts"]["kbs"][0], "KB5074109");
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("below the required minimum 26100.7840 (KB5077181)")
    );

    // 5: the XML claims January, the packages say December.
    let liar = fx.liar();
    let out = ctl(&["image", "verify", &liar, "--min-build", "26100.7623"]);
    assert_eq!(code(&out), 5);
    let report = text(&out.stdout);
    assert!(
        report.contains(
            "claims build 26100.7623 but its servicing packages hold RollupFix 26100.7462"
        ),
        "{report}"
    );

    // 5: a valid WIM without an installed Windows in it.
    let data_tree = fx.dir.path().join("data.tree");
    std::fs::create_dir_all(&data_tree).unwrap();
    std::fs::write(data_tree.join("readme.txt"), "just data").unwrap();
    let data_wim = fx.dir.path().join("data.wim");
    wimlib::run(
        &fx.wimlib,
        &[
            "capture",
            data_tree.to_str().unwrap(),
            data_wim.to_str().unwrap(),
            "data",
        ],
    );
    let out = ctl(&["image", "verify", data_wim.to_str().unwrap()]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not an installed Windows image"));
    // --no-deep checks only the bytes.
    let out = ctl(&["image", "verify", data_wim.to_str().unwrap(), "--no-deep"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    // 3: not a WIM.
    let junk = fx.dir.path().join("junk.wim");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let out = ctl(&["image", "verify", junk.to_str().unwrap()]);
    assert_eq!(code(&out), 3);
    assert!(
        text(&out.stderr).contains("not a WIM"),
        "{}",
        text(&out.stderr)
    );
    let cut = fx.dir.path().join("cut.wim");
    let bytes = std::fs::read(&wim).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    let out = ctl(&["image", "verify", cut.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));

    // 2: bad usage or unreadable file.
    for args in [
        vec!["image", "verify", "/nonexistent/install.wim"],
        vec!["image", "verify", &wim, "--min-build", "7623"],
        vec!["image", "verify", &wim, "--kb", "5074109x"],
        vec!["image", "verify", &wim, "--sha256", "abc"],
        vec!["image", "verify", &wim, "--index", "9"],
    ] {
        let out = ctl(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).trim().is_empty());
    }
}

#[test]
fn manifest_prints_a_golden_image_the_api_admits() {
    let Some(fx) = Fx::new() else { return };
    let wim = fx.january("win11-2026-01.wim");
    let out = ctl(&[
        "image",
        "manifest",
        &wim,
        "--url",
        "https://images.example.internal/golden/win11-2026-01.wim",
        "--name",
        "win11-24h2-2026-01",
        "--channel",
        "canary",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        yaml.starts_with("# Generated by `recastctl image manifest`"),
        "{yaml}"
    );
    let v: Value = serde_yaml_from(&yaml);
    assert_eq!(v["kind"], "GoldenImage");
    assert_eq!(v["metadata"]["name"], "win11-24h2-2026-01");
    assert_eq!(v["spec"]["sha256"], sha256sum(Path::new(&wim)));
    assert_eq!(
        v["spec"]["source"]["url"],
        "https://images.example.internal/golden/win11-2026-01.wim"
    );
    assert_eq!(v["spec"]["requirements"]["minimumBuild"], "26100.7623");
    assert_eq!(v["spec"]["requirements"]["requiredKbs"][0], "KB5074109");
    assert_eq!(v["spec"]["expected"]["edition"], "Enterprise");
    assert_eq!(v["spec"]["expected"]["arch"], "amd64");
    assert_eq!(v["spec"]["channels"][0], "canary");

    // The same validation the API runs admits it.
    let file = fx.dir.path().join("gi.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = ctl(&["validate", "-f", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));

    // An image that fails its checks gets no manifest.
    let liar = fx.liar();
    let out = ctl(&[
        "image",
        "manifest",
        &liar,
        "--url",
        "https://x.example/liar.wim",
        "--name",
        "liar",
    ]);
    assert_eq!(code(&out), 5);
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("no manifest was written"));
    // A URL the API would refuse is caught before anything is printed.
    let out = ctl(&[
        "image",
        "manifest",
        &wim,
        "--url",
        "ftp://x/y.wim",
        "--name",
        "x",
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}

fn serde_yaml_from(s: &str) -> Value {
    serde_yaml::from_str(s).unwrap()
}

/// The GitOps kit's pipeline script, end to end: inspect, verify, manifest, validate, commit.
#[test]
fn the_pipeline_script_publishes_a_verified_image_and_refuses_a_bad_one() {
    let Some(fx) = Fx::new() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/golden/publish-golden.sh");
    let repo = fx.dir.path().join("gitops");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    git(&["init", "-q"]);
    let publish = |wim: &str, name: &str| {
        Command::new("bash")
            .arg(&script)
            .args([
                wim,
                name,
                &format!("https://images.example.internal/{name}.wim"),
            ])
            .args([
                "--kb",
                "KB5074109",
                "--min-build",
                "26100.7623",
                "--channel",
                "stable",
            ])
            .arg("--repo")
            .arg(&repo)
            .env("RECASTCTL", RECASTCTL)
            .env("GIT_AUTHOR_NAME", "pipeline")
            .env("GIT_AUTHOR_EMAIL", "pipeline@example.internal")
            .env("GIT_COMMITTER_NAME", "pipeline")
            .env("GIT_COMMITTER_EMAIL", "pipeline@example.internal")
            .output()
            .unwrap()
    };
    let wim = fx.january("jan.wim");
    let out = publish(&wim, "win11-2026-01");
    assert_eq!(
        code(&out),
        0,
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let log = git(&["log", "--format=%s"]);
    assert!(
        log.contains("golden image win11-2026-01: build 26100.7623, sha256 "),
        "{log}"
    );
    let committed = std::fs::read_to_string(repo.join("golden-images/win11-2026-01.yaml")).unwrap();
    assert!(committed.contains(&sha256sum(Path::new(&wim))));

    let liar = fx.liar();
    let out = publish(&liar, "liar");
    assert_eq!(
        code(&out),
        5,
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("REFUSED"));
    assert!(!repo.join("golden-images/liar.yaml").exists());
    assert_eq!(git(&["log", "--format=%s"]).lines().count(), 1);
}
