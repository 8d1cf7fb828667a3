//! Fixtures for the golden-image suites, made at test time with Debian's wimtools
//! (`wimlib-imagex`, an independent WIM writer): a miniature installed Windows whose servicing
//! store holds RollupFix manifests in the shape Windows writes them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::skip_or_fail;

/// Environment variable that makes the wimlib tier mandatory (CI sets it).
pub const REQUIRE_WIMLIB: &str = "RECAST_REQUIRE_WIMLIB";

/// A build.UBR such as (26100, 7623).
pub type BuildUbr = (u32, u32);

pub const JANUARY_2026: BuildUbr = (26100, 7623);
pub const DECEMBER_2025: BuildUbr = (26100, 7462);

/// `wimlib-imagex` on PATH, or None after a loud skip (a failure when RECAST_REQUIRE_WIMLIB=1).
pub fn find() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("wimlib-imagex"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip_or_fail(
            REQUIRE_WIMLIB,
            "wimlib-imagex is not installed (run tests/golden/setup.sh, or apt-get install wimtools)",
        );
    }
    found
}

/// Runs wimlib-imagex and returns its stdout; panics with its output when it fails.
pub fn run(wimlib: &Path, args: &[&str]) -> String {
    let out = Command::new(wimlib)
        .args(args)
        .output()
        .expect("run wimlib-imagex");
    assert!(
        out.status.success(),
        "wimlib-imagex {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic incompressible bytes, so sizes and split points are stable between runs.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A RollupFix manifest in the shape Windows writes (UTF-8 with BOM, the asm.v3 namespace,
/// the KB in `<package identifier>`).
pub fn rollup_mum(build: BuildUbr, kb: &str) -> Vec<u8> {
    let digits = kb.trim_start_matches("KB");
    let (b, u) = build;
    let text = format!(
        r#"<?xml version="1.0" encoding="utf-8" standalone="yes"?>
<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0" description="Fix for {kb}" displayName="default" company="Microsoft Corporation" copyright="Microsoft Corporation" supportInformation="https://support.microsoft.com/help/{digits}" creationTimeStamp="2026-01-09T18:21:44Z" lastUpdateTimeStamp="2026-01-09T18:21:44Z">
  <assemblyIdentity name="Package_for_RollupFix" version="{b}.{u}.1.3" processorArchitecture="amd64" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" />
  <package identifier="{kb}" releaseType="Security Update" restart="possible" selfUpdate="false" permanence="removable" targetPartition="MainOS" binaryPartition="false">
    <parent buildCompare="EQ" integrate="separate" disposition="detect">
      <assemblyIdentity name="Microsoft-Windows-Client-Features-Package" version="{b}.1" processorArchitecture="amd64" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" />
    </parent>
    <update name="1e3bc5a0d7e1a1f6b0c4b5b0bbf4c0e2">
      <package integrate="hidden">
        <assemblyIdentity name="Multiple_Packages~~AMD64~~" version="{b}.{u}.1.3" processorArchitecture="amd64" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" />
      </package>
    </update>
  </package>
</assembly>
"#
    );
    let mut out = vec![0xEF, 0xBB, 0xBF];
    out.extend_from_slice(text.as_bytes());
    out
}

pub fn rollup_name(build: BuildUbr) -> String {
    format!(
        "Package_for_RollupFix~31bf3856ad364e35~amd64~~{}.{}.1.3.mum",
        build.0, build.1
    )
}

/// A servicing log (`Windows\\servicing\\Sessions\\Sessions.xml`) in the shape the servicing
/// stack writes it: one session per `(build, KB, status)`, the RollupFix package in `<Tasks>`
/// with its KB in `name`, and what it did in `<Actions>`.
pub fn session_log(entries: &[(BuildUbr, &str, &str)]) -> Vec<u8> {
    let mut x = String::from(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Sessions version=\"1.0\">\n",
    );
    for (i, ((b, u), kb, status)) in entries.iter().enumerate() {
        let id = format!("Package_for_RollupFix~31bf3856ad364e35~amd64~~{b}.{u}.1.3");
        x.push_str(&format!(
            "  <Session version=\"1.0\" id=\"3125{i}_4017\" client=\"DISM Package Manager Provider\" options=\"1024\" currentPhase=\"1\" lastSuccessfulState=\"Complete\" pendingFollower=\"false\" retry=\"false\" Queued=\"2026/03/11/09:12:03\" Started=\"2026/03/11/09:12:03\" Complete=\"2026/03/11/09:40:17\" status=\"{status}\">\n    <Tasks><Phase seq=\"1\"><package id=\"{id}\" name=\"{kb}\" targetState=\"Installed\" options=\"3\" /></Phase></Tasks>\n    <Actions><Phase seq=\"1\" rebootRequired=\"true\" Resolved=\"2026/03/11/09:12:40\" Staged=\"2026/03/11/09:30:02\" Installed=\"2026/03/11/09:40:11\"><Install package=\"{id}\" update=\"Multiple_Packages\" /></Phase></Actions>\n  </Session>\n"
        ));
    }
    x.push_str("</Sessions>\n");
    x.into_bytes()
}

/// Writes [`session_log`] into a tree made by [`make_tree`].
pub fn write_session_log(root: &Path, entries: &[(BuildUbr, &str, &str)]) {
    let dir = root.join("Windows/servicing/Sessions");
    std::fs::create_dir_all(&dir).expect("create tree");
    std::fs::write(dir.join("Sessions.xml"), session_log(entries)).expect("write session log");
}

/// A miniature installed Windows: the servicing store with the given RollupFix packages
/// (servicing keeps superseded manifests), other packages, `payload` files of 120 KiB, and the
/// offline SOFTWARE and SYSTEM hives of a deployable Enterprise image (generalized, the agent
/// service installed: [`crate::hive::write_deployable_hives`]).
pub fn make_tree(root: &Path, rollups: &[(BuildUbr, &str)], payload: usize) {
    crate::hive::write_deployable_hives(root, "Enterprise");
    let packages = root.join("Windows/servicing/Packages");
    std::fs::create_dir_all(&packages).expect("create tree");
    let write = |p: PathBuf, data: &[u8]| std::fs::write(&p, data).expect("write tree file");
    for (build, kb) in rollups {
        write(packages.join(rollup_name(*build)), &rollup_mum(*build, kb));
        write(
            packages.join(rollup_name(*build).replace(".mum", ".cat")),
            &noise(build.1 as u64, 700),
        );
    }
    write(
        packages.join("Package_for_ServicingStack_7623~31bf3856ad364e35~amd64~~26100.7623.1.0.mum"),
        "\u{feff}<assembly xmlns=\"urn:schemas-microsoft-com:asm.v3\"><package identifier=\"ServicingStack\"/></assembly>".as_bytes(),
    );
    write(
        packages.join(
            "Microsoft-Windows-Client-Features-Package~31bf3856ad364e35~amd64~~10.0.26100.1.mum",
        ),
        b"<assembly/>",
    );
    let sys32 = root.join("Windows/System32");
    std::fs::create_dir_all(&sys32).expect("create tree");
    for i in 0..payload {
        write(
            sys32.join(format!("file{i}.dll")),
            &noise(i as u64 + 7, 120 * 1024),
        );
    }
    write(
        sys32.join("text.ini"),
        "[x]\nkey=value\n".repeat(2000).as_bytes(),
    );
}

/// The XML properties DISM records for an installed Windows image.
pub fn windows_props(build: BuildUbr, edition: &str) -> Vec<(&'static str, String)> {
    vec![
        ("WINDOWS/ARCH", "9".into()),
        (
            "WINDOWS/PRODUCTNAME",
            "Microsoft® Windows® Operating System".into(),
        ),
        ("WINDOWS/EDITIONID", edition.into()),
        ("WINDOWS/INSTALLATIONTYPE", "Client".into()),
        ("WINDOWS/LANGUAGES/LANGUAGE", "en-US".into()),
        ("WINDOWS/LANGUAGES/DEFAULT", "en-US".into()),
        ("WINDOWS/VERSION/MAJOR", "10".into()),
        ("WINDOWS/VERSION/MINOR", "0".into()),
        ("WINDOWS/VERSION/BUILD", build.0.to_string()),
        ("WINDOWS/VERSION/SPBUILD", build.1.to_string()),
        ("WINDOWS/VERSION/SPLEVEL", "0".into()),
        ("DISPLAYNAME", format!("Windows 11 {edition}")),
        ("DESCRIPTION", format!("Windows 11 {edition} golden")),
    ]
}

/// Sets XML properties of image `index` (`wimlib-imagex info WIM N --image-property K=V`).
pub fn set_props(wimlib: &Path, wim: &Path, index: u32, props: &[(&str, String)]) {
    let mut args: Vec<String> = vec!["info".into(), wim.display().to_string(), index.to_string()];
    for (k, v) in props {
        args.push("--image-property".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(wimlib, &args);
}

/// Captures a miniature Windows into `wim` (image 1, "Windows 11 Enterprise") whose packages
/// hold `rollups` and whose XML claims `xml_build`. `extra` goes to `capture` (`--check`,
/// `--solid`, ...).
pub fn capture_windows(
    wimlib: &Path,
    wim: &Path,
    compress: &str,
    extra: &[&str],
    rollups: &[(BuildUbr, &str)],
    xml_build: BuildUbr,
) {
    let tree = wim.with_extension("tree");
    make_tree(&tree, rollups, 3);
    let mut args = vec![
        "capture".to_string(),
        tree.display().to_string(),
        wim.display().to_string(),
        "Windows 11 Enterprise".into(),
        format!("--compress={compress}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(wimlib, &args);
    set_props(wimlib, wim, 1, &windows_props(xml_build, "Enterprise"));
}
