//! recast-golden against an independent WIM writer and verifier: Debian's wimtools
//! (`wimlib-imagex`). Fixtures are made at test time — a tree holding a RollupFix manifest,
//! captured with each compression, with and without an integrity table, multi-image and split —
//! and every fact recast reads is compared with what `wimlib-imagex info` prints.
//!
//! Needs `wimlib-imagex` (tests/golden/setup.sh installs it). Without it the tests skip loudly,
//! unless RECAST_REQUIRE_WIMLIB=1 (CI) makes that a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use recast_golden::deep::DeepError;
use recast_golden::header::HeaderError;
use recast_golden::inspect::InspectError;
use recast_golden::verify::VerifyError;
use recast_golden::xml::XmlError;
use recast_golden::{
    Build, Integrity, Outcome, Requirements, VerifyImageError, VerifyProgress, VerifyRequest,
};

use recast_tests::wimlib::{self, make_tree, run, set_props, windows_props};

const JAN: Build = Build::new(26100, 7623);
const DEC: Build = Build::new(26100, 7462);

fn ubr(b: Build) -> wimlib::BuildUbr {
    (b.build, b.ubr)
}

fn rollup_name(b: Build) -> String {
    wimlib::rollup_name(ubr(b))
}

struct Fixture {
    dir: tempfile::TempDir,
    wimlib: PathBuf,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        Some(Fixture {
            wimlib: wimlib::find()?,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Captures a tree into `name` and stamps the Windows properties of image 1.
    fn capture(
        &self,
        name: &str,
        compress: &str,
        extra: &[&str],
        rollups: &[(Build, &str)],
        xml_build: Build,
    ) -> PathBuf {
        let wim = self.path(name);
        let rollups: Vec<(wimlib::BuildUbr, &str)> =
            rollups.iter().map(|(b, kb)| (ubr(*b), *kb)).collect();
        wimlib::capture_windows(
            &self.wimlib,
            &wim,
            compress,
            extra,
            &rollups,
            ubr(xml_build),
        );
        wim
    }

    fn info(&self, wim: &Path, extra: &[&str]) -> String {
        let mut args = vec!["info", wim.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&self.wimlib, &args)
    }
}

/// "Key: value" and "Key = value" lines of `wimlib-imagex info`, per section (the WIM, then
/// each image by index).
fn parse_info(
    text: &str,
) -> (
    BTreeMap<String, String>,
    BTreeMap<u32, BTreeMap<String, String>>,
) {
    let mut wim = BTreeMap::new();
    let mut images: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':').or_else(|| line.split_once('=')) else {
            continue;
        };
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if k == "Index" {
            current = v.parse().ok();
        }
        match current {
            Some(i) => {
                images.entry(i).or_default().insert(k, v);
            }
            None => {
                wim.insert(k, v);
            }
        }
    }
    (wim, images)
}

fn wimlib_arch(code: Option<u32>) -> &'static str {
    match code {
        Some(0) => "x86",
        Some(9) => "x86_64",
        Some(12) => "ARM64",
        _ => "?",
    }
}

/// Every fact recast reads, next to what wimlib-imagex prints for the same file.
fn assert_matches_wimlib(fx: &Fixture, wim: &Path) {
    let ins = recast_golden::inspect(wim).unwrap();
    let (w, images) = parse_info(&fx.info(wim, &[]));
    let (h, _) = parse_info(&fx.info(wim, &["--header"]));
    let hdr = &ins.header;
    assert_eq!(w["GUID"], format!("0x{}", hdr.guid));
    assert_eq!(h["GUID"], hdr.guid);
    assert_eq!(w["Version"], hdr.version.to_string());
    assert_eq!(h["Flags"], format!("{:#x}", hdr.flags));
    assert_eq!(w["Image Count"], hdr.image_count.to_string());
    assert_eq!(w["Compression"], hdr.compression.as_str());
    if hdr.compression != recast_golden::header::Compression::None {
        assert_eq!(w["Chunk Size"], format!("{} bytes", hdr.chunk_size));
    }
    assert_eq!(
        w["Part Number"],
        format!("{}/{}", hdr.part_number, hdr.total_parts)
    );
    assert_eq!(w["Boot Index"], hdr.boot_index.to_string());
    for (label, res) in [
        ("Blob Table", hdr.blob_table),
        ("XML Data", hdr.xml),
        ("Boot Metadata", hdr.boot_metadata),
        ("Integrity", hdr.integrity),
    ] {
        assert_eq!(
            h[&format!("{label} Size")],
            res.size_in_wim.to_string(),
            "{label}"
        );
        assert_eq!(
            h[&format!("{label} Flags")],
            format!("{:#x}", res.flags),
            "{label}"
        );
        assert_eq!(
            h[&format!("{label} Offset")],
            res.offset.to_string(),
            "{label}"
        );
        let orig = h
            .get(&format!("{label} Original Size"))
            .or_else(|| h.get(&format!("{label} Original_size")))
            .unwrap();
        assert_eq!(orig, &res.original_size.to_string(), "{label}");
    }
    if let Some(total) = ins.xml.total_bytes {
        assert_eq!(w["Size"], format!("{total} bytes"));
    }
    let has_integrity = w
        .get("Attributes")
        .is_some_and(|a| a.contains("Integrity info"));
    assert_eq!(has_integrity, hdr.has_integrity_table());
    assert_eq!(images.len(), ins.xml.images.len());
    for img in &ins.xml.images {
        let i = &images[&img.index];
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let n = |v: Option<u32>| v.unwrap_or(0).to_string();
        assert_eq!(i["Name"], s(&img.name));
        assert_eq!(i["Description"], s(&img.description));
        assert_eq!(
            i.get("Display Name").cloned().unwrap_or_default(),
            s(&img.display_name)
        );
        assert_eq!(i["Directory Count"], img.dir_count.unwrap().to_string());
        assert_eq!(i["File Count"], img.file_count.unwrap().to_string());
        assert_eq!(i["Total Bytes"], img.total_bytes.unwrap().to_string());
        assert_eq!(
            i["Hard Link Bytes"],
            img.hard_link_bytes.unwrap().to_string()
        );
        if img.arch_code.is_some() {
            assert_eq!(i["Architecture"], wimlib_arch(img.arch_code));
            assert_eq!(i["Edition ID"], s(&img.edition));
            assert_eq!(i["Product Name"], s(&img.product_name));
            assert_eq!(i["Installation Type"], s(&img.installation_type));
            assert_eq!(i["Languages"], img.languages.join(" "));
            assert_eq!(i["Default Language"], s(&img.default_language));
            assert_eq!(i["Major Version"], n(img.major_version));
            assert_eq!(i["Minor Version"], n(img.minor_version));
            assert_eq!(i["Build"], n(img.build));
            assert_eq!(i["Service Pack Build"], n(img.sp_build));
            assert_eq!(i["Service Pack Level"], n(img.sp_level));
        }
    }
}

fn january_requirements() -> Requirements {
    Requirements {
        min_build: Some(JAN),
        required_kbs: vec!["KB5074109".into()],
        expected_edition: Some("Enterprise".into()),
        expected_arch: Some("amd64".into()),
    }
}

fn request(path: &Path, sha: Option<String>) -> VerifyRequest {
    VerifyRequest {
        path: path.to_path_buf(),
        image_index: 1,
        expected_sha256: sha,
        requirements: january_requirements(),
        deep: true,
        full_verify: false,
    }
}

fn verify(req: &VerifyRequest) -> Result<recast_golden::VerifyReport, VerifyImageError> {
    recast_golden::verify_image(req, &AtomicBool::new(false), &mut |_| {})
}

#[test]
fn every_compression_with_and_without_integrity_matches_wimlib_and_verifies() {
    let Some(fx) = Fixture::new() else { return };
    for compress in ["none", "XPRESS", "LZX", "LZMS"] {
        for check in [false, true] {
            let name = format!("{compress}-{check}.wim");
            let extra: &[&str] = if check { &["--check"] } else { &[] };
            let wim = fx.capture(
                &name,
                compress,
                extra,
                &[(DEC, "KB5072033"), (JAN, "KB5074109")],
                JAN,
            );
            if check {
                // wimlib rewrites the integrity table when it changes the XML.
                run(&fx.wimlib, &["verify", wim.to_str().unwrap()]);
            }
            assert_matches_wimlib(&fx, &wim);
            let ins = recast_golden::inspect(&wim).unwrap();
            assert_eq!(
                ins.header.compression.as_str().to_ascii_lowercase(),
                compress.to_ascii_lowercase()
            );

            let want = recast_tests::sha256_file(&wim);
            let mut last = None;
            let mut hashed_total = 0;
            let report = recast_golden::verify_image(
                &VerifyRequest {
                    full_verify: true,
                    ..request(&wim, Some(want.clone()))
                },
                &AtomicBool::new(false),
                &mut |p| {
                    if let VerifyProgress::Hashing(h) = p {
                        assert!(last.is_none_or(|l| h.done >= l), "progress went backwards");
                        last = Some(h.done);
                        hashed_total = h.total;
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                last,
                Some(hashed_total),
                "{name}: progress must end at the total"
            );
            assert_eq!(
                report.outcome,
                Outcome::Verified,
                "{name}: {:?}",
                report.problems
            );
            assert_eq!(report.stream.sha256, want);
            assert_eq!(report.stream.sha256_matches, Some(true));
            match (check, &report.stream.integrity) {
                (true, Integrity::Ok { chunks, .. }) => assert!(*chunks >= 1),
                (false, Integrity::Absent) => {}
                (c, other) => panic!("{name}: integrity {other:?} with --check={c}"),
            }
            let deep = report.deep.unwrap();
            assert_eq!(deep.installed_build, Some(JAN));
            assert_eq!(
                deep.rollup_package.as_deref(),
                Some(rollup_name(JAN).as_str())
            );
            assert!(
                deep.kbs[0]
                    .explanation
                    .starts_with("contains KB5074109: yes, build 26100.7623"),
                "{}",
                deep.kbs[0].explanation
            );
        }
    }
}

#[test]
fn solid_lzms_wim_matches_wimlib() {
    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture(
        "solid.wim",
        "LZMS",
        &["--solid"],
        &[(JAN, "KB5074109")],
        JAN,
    );
    assert_matches_wimlib(&fx, &wim);
    let ins = recast_golden::inspect(&wim).unwrap();
    assert!(ins.header.is_solid());
    let report = verify(&request(&wim, None)).unwrap();
    assert_eq!(report.outcome, Outcome::Verified, "{:?}", report.problems);
}

#[test]
fn multi_image_wim_reports_each_image_and_checks_the_chosen_one() {
    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture("multi.wim", "LZX", &["--check"], &[(JAN, "KB5074109")], JAN);
    let tree2 = fx.path("second.tree");
    make_tree(&tree2, &[(ubr(DEC), "KB5072033")], 1);
    run(
        &fx.wimlib,
        &[
            "append",
            tree2.to_str().unwrap(),
            wim.to_str().unwrap(),
            "Windows 11 Pro",
            "--check",
        ],
    );
    set_props(
        &fx.wimlib,
        &wim,
        2,
        &windows_props(ubr(DEC), "Professional"),
    );
    run(&fx.wimlib, &["info", wim.to_str().unwrap(), "--boot", "2"]);
    assert_matches_wimlib(&fx, &wim);
    let ins = recast_golden::inspect(&wim).unwrap();
    assert_eq!(ins.header.image_count, 2);
    assert_eq!(ins.header.boot_index, 2);
    assert_eq!(
        ins.xml.image(2).unwrap().edition.as_deref(),
        Some("Professional")
    );
    assert_eq!(ins.xml.image(2).unwrap().build_ubr(), Some(DEC));

    let first = verify(&request(&wim, None)).unwrap();
    assert_eq!(first.outcome, Outcome::Verified, "{:?}", first.problems);
    // Image 2 is December's: it fails the January requirements, and says why.
    let second = verify(&VerifyRequest {
        image_index: 2,
        ..request(&wim, None)
    })
    .unwrap();
    assert_eq!(second.outcome, Outcome::RequirementsNotMet);
    let text = second.problems.join("\n");
    assert!(
        text.contains("below the required minimum 26100.7623"),
        "{text}"
    );
    assert!(text.contains("expected edition Enterprise"), "{text}");
    assert!(text.contains("contains KB5074109: no"), "{text}");
    // No image 3.
    let err = verify(&VerifyRequest {
        image_index: 3,
        ..request(&wim, None)
    })
    .unwrap_err();
    assert!(
        matches!(err, VerifyImageError::NoSuchImage { index: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("images 1, 2"));
}

#[test]
fn split_wim_parts_are_read_and_deep_checked_across_parts() {
    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture("big.wim", "LZX", &[], &[(JAN, "KB5074109")], JAN);
    let swm = fx.path("install.swm");
    run(
        &fx.wimlib,
        &[
            "split",
            wim.to_str().unwrap(),
            swm.to_str().unwrap(),
            "0.15",
            "--check",
        ],
    );
    let part2 = fx.path("install2.swm");
    assert!(part2.exists(), "wimlib did not split into several parts");
    for part in std::fs::read_dir(fx.dir.path()).unwrap() {
        let p = part.unwrap().path();
        if p.extension().is_some_and(|e| e == "swm") {
            assert_matches_wimlib(&fx, &p);
        }
    }
    let ins = recast_golden::inspect(&swm).unwrap();
    assert!(ins.header.is_split());
    assert_eq!(ins.header.part_number, 1);
    let report = verify(&request(&swm, None)).unwrap();
    assert_eq!(report.outcome, Outcome::Verified, "{:?}", report.problems);
    assert!(matches!(report.stream.integrity, Integrity::Ok { .. }));

    // A flipped byte in part 2 is caught by part 2's integrity table.
    let mut bytes = std::fs::read(&part2).unwrap();
    let part2_header = recast_golden::inspect(&part2).unwrap().header;
    let at = (208 + part2_header.blob_table.offset as usize) / 2;
    bytes[at] ^= 1;
    let damaged = fx.path("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for entry in std::fs::read_dir(fx.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "swm") {
            std::fs::copy(&p, damaged.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(damaged.join("install2.swm"), &bytes).unwrap();
    let report = verify(&request(&damaged.join("install.swm"), None)).unwrap();
    assert_eq!(report.outcome, Outcome::BytesMismatch);
    assert!(
        report.problems[0].contains("install2.swm"),
        "{:?}",
        report.problems
    );

    // A later part alone is refused with a hint.
    let err = verify(&request(&part2, None)).unwrap_err();
    assert!(err.to_string().contains("give the first part"), "{err}");
    // A missing part is named.
    std::fs::rename(&part2, fx.path("elsewhere.swm")).unwrap();
    let err = verify(&request(&swm, None)).unwrap_err();
    assert!(err.to_string().contains("install2.swm"), "{err}");
}

#[test]
fn xml_that_claims_january_over_december_packages_fails_the_deep_check() {
    let Some(fx) = Fixture::new() else { return };
    // The packages say 7462 (December), the XML was stamped 7623.
    let wim = fx.capture("liar.wim", "LZX", &["--check"], &[(DEC, "KB5072033")], JAN);
    let ins = recast_golden::inspect(&wim).unwrap();
    assert_eq!(ins.xml.image(1).unwrap().build_ubr(), Some(JAN));
    let report = verify(&request(&wim, Some(recast_tests::sha256_file(&wim)))).unwrap();
    assert_eq!(report.outcome, Outcome::RequirementsNotMet);
    let deep = report.deep.as_ref().unwrap();
    assert_eq!(deep.installed_build, Some(DEC));
    let first = deep.failures().next().unwrap();
    assert_eq!(first.name, "xml-matches-packages");
    assert!(
        first.message.contains("claims build 26100.7623") && first.message.contains("26100.7462"),
        "{}",
        first.message
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("contains KB5074109: no"))
    );
}

#[test]
fn an_older_kb_is_proven_by_the_servicing_log_after_a_component_cleanup() {
    let Some(fx) = Fixture::new() else { return };
    // Serviced with March's update (in no table), then November's; a component cleanup
    // (DISM /ResetBase) left only November's manifest. The log keeps both.
    const MAR: Build = Build::new(26100, 8246);
    const NOV: Build = Build::new(26100, 9100);
    let require_march = |wim: &Path| VerifyRequest {
        requirements: Requirements {
            required_kbs: vec!["KB5081234".into(), "KB5074109".into()],
            ..january_requirements()
        },
        ..request(wim, None)
    };
    let capture = |name: &str, log: bool| {
        let wim = fx.path(name);
        let tree = wim.with_extension("tree");
        make_tree(&tree, &[(ubr(NOV), "KB5089999")], 1);
        if log {
            wimlib::write_session_log(
                &tree,
                &[
                    (ubr(MAR), "KB5081234", "0x0"),
                    (ubr(NOV), "KB5089999", "0x0"),
                ],
            );
        }
        run(
            &fx.wimlib,
            &[
                "capture",
                tree.to_str().unwrap(),
                wim.to_str().unwrap(),
                "Windows 11 Enterprise",
            ],
        );
        set_props(&fx.wimlib, &wim, 1, &windows_props(ubr(NOV), "Enterprise"));
        wim
    };

    let report = verify(&require_march(&capture("cleaned.wim", true))).unwrap();
    assert_eq!(report.outcome, Outcome::Verified, "{:#?}", report.problems);
    let kbs = &report.deep.as_ref().unwrap().kbs;
    assert_eq!(
        kbs[0].explanation,
        "contains KB5081234: yes, build 26100.8246 (recorded by the servicing log as package 26100.8246.1.3), included in the installed cumulative update 26100.9100 (KB5089999)"
    );
    assert!(
        kbs[1].explanation.contains("(recast's update table)"),
        "{}",
        kbs[1].explanation
    );

    // Without the log nothing in the image pairs March's KB with a build: not proven, and the
    // problem says what to do.
    let report = verify(&require_march(&capture("no-log.wim", false))).unwrap();
    assert_eq!(report.outcome, Outcome::RequirementsNotMet);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("contains KB5081234: not proven")
                && p.contains("the image has no servicing log")
                && p.contains("minimumBuild")),
        "{:#?}",
        report.problems
    );
}

#[test]
fn image_without_a_servicing_store_is_not_windows() {
    let Some(fx) = Fixture::new() else { return };
    let tree = fx.path("data.tree");
    std::fs::create_dir_all(tree.join("data")).unwrap();
    std::fs::write(tree.join("data/readme.txt"), "not windows").unwrap();
    let wim = fx.path("data.wim");
    run(
        &fx.wimlib,
        &[
            "capture",
            tree.to_str().unwrap(),
            wim.to_str().unwrap(),
            "data",
        ],
    );
    set_props(&fx.wimlib, &wim, 1, &windows_props(ubr(JAN), "Enterprise"));
    let err = verify(&request(&wim, None)).unwrap_err();
    assert!(
        matches!(err, VerifyImageError::Deep(DeepError::NotWindows { .. })),
        "{err}"
    );
}

#[test]
fn wrong_sha256_is_a_bytes_mismatch() {
    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture("sha.wim", "XPRESS", &[], &[(JAN, "KB5074109")], JAN);
    let report = verify(&request(&wim, Some("0".repeat(64)))).unwrap();
    assert_eq!(report.outcome, Outcome::BytesMismatch);
    assert_eq!(report.stream.sha256_matches, Some(false));
    assert!(report.problems[0].contains("download it again or fix spec.sha256"));
    assert!(
        report.deep.is_none(),
        "no deep check on bytes that are not the expected ones"
    );
}

#[test]
fn flipped_byte_under_the_integrity_table_is_found_and_wimlib_agrees() {
    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture("flip.wim", "LZX", &["--check"], &[(JAN, "KB5074109")], JAN);
    let ins = recast_golden::inspect(&wim).unwrap();
    let mut bytes = std::fs::read(&wim).unwrap();
    // A byte in the middle of the covered range (resource data between header and blob table).
    let at = (208 + ins.header.blob_table.offset as usize) / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&wim, &bytes).unwrap();
    let report = verify(&request(&wim, None)).unwrap();
    assert_eq!(
        report.outcome,
        Outcome::BytesMismatch,
        "{:?}",
        report.problems
    );
    match report.stream.integrity {
        Integrity::Mismatch { offset, len, .. } => {
            assert!((offset..offset + len).contains(&(at as u64)));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(report.problems[0].contains("copy it again"));
    // The independent verifier refuses the same file.
    let out = Command::new(&fx.wimlib)
        .args(["verify", wim.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "wimlib-imagex verify accepted the damaged file"
    );
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

#[test]
fn bad_files_get_clear_typed_errors() {
    let Some(fx) = Fixture::new() else { return };
    let good = fx.capture("good.wim", "LZX", &["--check"], &[(JAN, "KB5074109")], JAN);
    let data = std::fs::read(&good).unwrap();
    let ins = recast_golden::inspect(&good).unwrap();
    let copy = |name: &str, bytes: &[u8]| {
        let p = fx.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // Truncated at every interesting length: inside the header, after it, inside the XML.
    for cut in [
        0,
        7,
        100,
        207,
        208,
        400,
        ins.header.xml.offset as usize + 10,
        data.len() - 1,
    ] {
        let p = copy("cut.wim", &data[..cut]);
        let err = recast_golden::inspect(&p).unwrap_err();
        let ok = matches!(
            &err,
            InspectError::Header {
                source: HeaderError::Truncated { .. } | HeaderError::ResourcePastEnd { .. },
                ..
            }
        );
        assert!(ok, "cut at {cut}: {err:?}");
        assert!(
            err.to_string().contains("copy it again") || err.to_string().contains("truncated"),
            "{err}"
        );
    }

    // Wrong magic: a ZIP, and an empty file.
    let mut zip = data.clone();
    zip[..4].copy_from_slice(b"PK\x03\x04");
    let err = recast_golden::inspect(&copy("zip.wim", &zip)).unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::Header {
                source: HeaderError::BadMagic { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a WIM"));

    // The XML resource header points past the end.
    let p = copy("past.wim", &data);
    patch(&p, 72 + 8, &(data.len() as u64 + 4096).to_le_bytes());
    let err = recast_golden::inspect(&p).unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::Header {
                source: HeaderError::ResourcePastEnd { which: "XML", .. },
                ..
            }
        ),
        "{err:?}"
    );

    // Absurd sizes: a 2^55-byte blob table; an XML larger than recast reads, in a file that
    // really is that long; an integrity table with an impossible entry count.
    let p = copy("absurd.wim", &data);
    patch(&p, 48, &(1u64 << 55).to_le_bytes()[..7]);
    assert!(matches!(
        recast_golden::inspect(&p).unwrap_err(),
        InspectError::Header {
            source: HeaderError::ResourcePastEnd {
                which: "blob table",
                ..
            },
            ..
        }
    ));
    let mut long = data.clone();
    let xml_at = long.len() as u64;
    long.resize(long.len() + 17 * 1024 * 1024, 0);
    let p = copy("hugexml.wim", &long);
    patch(&p, 72, &(17u64 * 1024 * 1024).to_le_bytes()[..7]);
    patch(&p, 80, &xml_at.to_le_bytes());
    let err = recast_golden::inspect(&p).unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::Xml {
                source: XmlError::TooLarge { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let p = copy("badtable.wim", &data);
    let table_at = ins.header.integrity.offset as usize;
    patch(&p, table_at + 4, &u32::MAX.to_le_bytes());
    let err = verify(&request(&p, None)).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyImageError::Stream(VerifyError::BadIntegrityTable { .. })
        ),
        "{err:?}"
    );
    assert!(err.is_malformed());

    // XML that is not UTF-16 / not XML.
    let p = copy("garbage-xml.wim", &data);
    let xml_off = ins.header.xml.offset as usize;
    patch(&p, xml_off + 2, b"<\x00W\x00I\x00M\x00>\x00<\x00/\x00X\x00");
    let err = recast_golden::inspect(&p).unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::Xml {
                source: XmlError::Malformed { .. },
                ..
            }
        ),
        "{err:?}"
    );

    // A missing file.
    let err = recast_golden::inspect(&fx.path("nope.wim")).unwrap_err();
    assert!(matches!(err, InspectError::Io { .. }));
    assert!(err.to_string().contains("nope.wim"));
}

/// Bounded mutation run over real wimlib output: flipped bytes in the header and the XML
/// resource must give facts or typed errors, never a panic; and whatever recast accepts it
/// keeps within the file.
#[test]
fn mutated_wimlib_files_never_panic_the_readers() {
    let Some(fx) = Fixture::new() else { return };
    let good = fx.capture(
        "fuzz.wim",
        "XPRESS",
        &["--check"],
        &[(JAN, "KB5074109")],
        JAN,
    );
    let data = std::fs::read(&good).unwrap();
    let ins = recast_golden::inspect(&good).unwrap();
    let xml = ins.header.xml.offset as usize
        ..(ins.header.xml.offset + ins.header.xml.size_in_wim) as usize;
    let p = fx.path("mutant.wim");
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..600 {
        let mut m = data.clone();
        for _ in 0..(1 + next() % 4) {
            let at = if round % 2 == 0 {
                (next() % 208) as usize
            } else {
                xml.start + (next() as usize % xml.len())
            };
            m[at] = next() as u8;
        }
        if round % 50 == 0 {
            m.truncate((next() as usize) % data.len());
        }
        std::fs::write(&p, &m).unwrap();
        match recast_golden::inspect(&p) {
            Ok(i) => {
                accepted += 1;
                assert!(i.header.xml.end().unwrap() <= m.len() as u64);
                // Hash and check integrity too: must end in a report or a typed error.
                let _ = recast_golden::verify_image(
                    &VerifyRequest {
                        deep: false,
                        ..request(&p, None)
                    },
                    &AtomicBool::new(false),
                    &mut |_| {},
                );
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn a_cancelled_check_stops_with_a_typed_error() {
    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture(
        "cancel.wim",
        "LZX",
        &["--check"],
        &[(JAN, "KB5074109")],
        JAN,
    );
    let cancel = AtomicBool::new(false);
    let err = recast_golden::verify_image(&request(&wim, None), &cancel, &mut |p| {
        // Cancel as soon as hashing starts, as a Ctrl-C handler would.
        if matches!(p, VerifyProgress::Hashing(_)) {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    // Cancelling during the deep check stops it as well.
    let cancel = AtomicBool::new(false);
    let err = recast_golden::verify_image(&request(&wim, None), &cancel, &mut |p| {
        if matches!(p, VerifyProgress::Deep(_)) {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
}

/// The deep check opens untrusted WIMs with the `wim` crate: damaged resources (blob table,
/// metadata, file data) must end in a report or a typed error, never a panic or a hang.
#[test]
fn mutated_resources_never_panic_the_deep_check() {
    let Some(fx) = Fixture::new() else { return };
    let good = fx.capture("deepfuzz.wim", "LZX", &[], &[(JAN, "KB5074109")], JAN);
    let data = std::fs::read(&good).unwrap();
    let ins = recast_golden::inspect(&good).unwrap();
    let resources_end = ins.header.xml.offset as usize;
    let p = fx.path("deep-mutant.wim");
    let mut rng = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut outcomes = BTreeMap::new();
    for i in 0..150 {
        let mut m = data.clone();
        // wimlib writes the image metadata (the directory tree the deep check walks) last,
        // right before the XML: every other mutant aims there, so a run never depends on
        // luck to reach it (file data the check does not read leaves it Verified).
        let start = if i % 2 == 0 {
            resources_end.saturating_sub(4096).max(208)
        } else {
            208
        };
        for _ in 0..(1 + next() % 3) {
            let at = start + (next() as usize % (resources_end - start));
            m[at] = next() as u8;
        }
        std::fs::write(&p, &m).unwrap();
        let result = std::panic::catch_unwind(|| verify(&request(&p, None)));
        let key = match result {
            Err(_) => panic!("the deep check panicked on a damaged WIM"),
            Ok(Ok(r)) => format!("{:?}", r.outcome),
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                format!("error (malformed: {})", e.is_malformed())
            }
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    assert!(
        outcomes.len() > 1,
        "every mutant had the same outcome: {outcomes:?}"
    );
}

/// The controller's glue: a GoldenImage spec becomes the request, the report becomes the
/// status facts and the Verified condition.
#[test]
fn a_golden_image_spec_is_verified_into_facts_and_a_condition() {
    use recast_crds::common::ConditionStatus;
    use recast_crds::golden_image::{
        Arch, ArtifactSource, ExpectedImage, GoldenImageSpec, ImageRequirements,
    };
    use recast_golden::spec;

    let Some(fx) = Fixture::new() else { return };
    let wim = fx.capture(
        "spec.wim",
        "LZX",
        &["--check"],
        &[(DEC, "KB5072033"), (JAN, "KB5074109")],
        JAN,
    );
    let mut gi = GoldenImageSpec {
        drivers: vec![],
        source: ArtifactSource {
            url: None,
            path: Some(wim.display().to_string()),
        },
        sha256: recast_tests::sha256_file(&wim),
        image_index: 1,
        expected: Some(ExpectedImage {
            edition: Some("Enterprise".into()),
            arch: Some(Arch::Amd64),
        }),
        requirements: ImageRequirements {
            minimum_build: "26100.7623".into(),
            required_kbs: vec!["KB5074109".into()],
        },
        channels: vec![],
        canary_channels: vec![],
        promotion: None,
    };
    let result = verify(&spec::request(&gi, wim.clone()).unwrap());
    let (status, reason, message) = spec::verified_condition(&result);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, "Verified"),
        "{message}"
    );
    assert!(
        message.contains("contains KB5074109: yes, build 26100.7623"),
        "{message}"
    );
    let facts = spec::facts(result.as_ref().unwrap());
    assert_eq!(facts.build, "26100.7623");
    assert_eq!(facts.edition.as_deref(), Some("Enterprise"));
    assert_eq!(facts.arch.as_deref(), Some("amd64"));
    assert_eq!(facts.languages, vec!["en-US"]);
    assert_eq!(facts.kbs, vec!["KB5074109"]);
    assert_eq!(facts.rollup_packages, vec![rollup_name(JAN)]);
    assert_eq!(facts.size_bytes, std::fs::metadata(&wim).unwrap().len());
    // This tree has no \Windows\Boot: said so, for the Secure Boot prediction.
    assert!(
        facts
            .boot_manager
            .as_ref()
            .and_then(|b| b.problem.as_deref())
            .is_some_and(|p| p.starts_with("the image has no \\Windows\\Boot\\EFI\\bootmgfw.efi")),
        "{:?}",
        facts.boot_manager
    );

    // A newer minimum: intact, not fit.
    gi.requirements.minimum_build = "26100.7840".into();
    let result = verify(&spec::request(&gi, wim.clone()).unwrap());
    let (status, reason, message) = spec::verified_condition(&result);
    assert_eq!(
        (status, reason),
        (ConditionStatus::False, "RequirementsNotMet")
    );
    assert!(message.contains("26100.7840"), "{message}");

    // Other bytes than the spec names.
    gi.sha256 = "0".repeat(64);
    let (status, reason, _) =
        spec::verified_condition(&verify(&spec::request(&gi, wim.clone()).unwrap()));
    assert_eq!((status, reason), (ConditionStatus::False, "BytesMismatch"));

    // A truncated download.
    let bytes = std::fs::read(&wim).unwrap();
    let cut = fx.path("cut.wim");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (status, reason, message) =
        spec::verified_condition(&verify(&spec::request(&gi, cut).unwrap()));
    assert_eq!(
        (status, reason),
        (ConditionStatus::False, "MalformedImage"),
        "{message}"
    );
}

/// The deep check reads the boot manager from the WIM's bytes: Debian's Microsoft-signed shim
/// (from the signed-chain cache) standing in for `bootmgfw.efi`, its signature named as
/// firmware would judge it.
#[test]
fn the_deep_check_names_the_ca_that_signed_the_boot_manager() {
    let Some(fx) = Fixture::new() else { return };
    let Some(cache) = recast_tests::secure_boot::signed_chain_cache() else {
        recast_tests::skip_or_fail(
            "RECAST_REQUIRE_WIMLIB",
            "no signed shim cached (run imager/env/signed-chain.sh or tests/pxe/setup.sh)",
        );
        return;
    };
    let tree = fx.path("signed.tree");
    wimlib::make_tree(&tree, &[(ubr(JAN), "KB5074109")], 1);
    let efi = tree.join("Windows/Boot/EFI");
    std::fs::create_dir_all(&efi).unwrap();
    std::fs::copy(cache.join("shimx64.efi"), efi.join("bootmgfw.efi")).unwrap();
    let wim = fx.path("signed.wim");
    run(
        &fx.wimlib,
        &[
            "capture",
            tree.to_str().unwrap(),
            wim.to_str().unwrap(),
            "Windows 11 Enterprise",
        ],
    );
    wimlib::set_props(
        &fx.wimlib,
        &wim,
        1,
        &wimlib::windows_props(ubr(JAN), "Enterprise"),
    );
    let report = verify(&request(&wim, None)).unwrap();
    let facts = recast_golden::spec::facts(&report);
    let m = facts.boot_manager.expect("the boot manager was read");
    assert_eq!(m.problem, None, "{m:?}");
    // Debian's shim carries two signatures: under Microsoft's 2011 UEFI CA and its 2023 one.
    assert_eq!(m.signatures.len(), 2, "{m:?}");
    for s in &m.signatures {
        assert_eq!(s.chain.first(), Some(&s.signer), "{m:?}");
    }
    let s = &m.signatures[0];
    assert!(
        s.chain
            .iter()
            .any(|c| c == "Microsoft Corporation UEFI CA 2011"),
        "{m:?}"
    );
    assert_eq!(
        s.issuer,
        "Microsoft Corporation Third Party Marketplace Root"
    );
    assert!(
        m.signatures[1]
            .chain
            .iter()
            .any(|c| c == "Microsoft UEFI CA 2023"),
        "{m:?}"
    );
    assert!(recast_core::boot_manager::summary(&m).starts_with(
        "signed by \"Microsoft Windows UEFI Driver Publisher\" under \"Microsoft Corporation UEFI CA 2011\""
    ));
    // The digest is what firmware hashes (not the file's sha256).
    let file = std::fs::read(cache.join("shimx64.efi")).unwrap();
    assert_eq!(
        m.authenticode_sha256.as_deref(),
        Some(
            recast_core::authenticode::image_digest(&file)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .as_str()
        )
    );
    assert_ne!(
        m.authenticode_sha256,
        Some(recast_tests::sha256_file(&cache.join("shimx64.efi")))
    );
}

/// Writes `values` into a copy of an empty hive with hivex (`hivexsh -w`), the independent
/// writer: each entry is a key path and its values as hivexsh spells them
/// (`string:…`, `expandstring:…`, `dword:0x…`). Every key on the way is added.
fn hivex_hive(dir: &Path, name: &str, keys: &[(&str, &[(&str, &str)])]) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(
        &file,
        recast_tests::hive::hive(&recast_tests::hive::Key::new("ROOT")),
    )
    .unwrap();
    let mut script = String::new();
    let mut made = std::collections::BTreeSet::new();
    for (path, values) in keys {
        script.push_str("cd \\\n");
        let mut at = String::new();
        for part in path.split('\\') {
            at.push('\\');
            at.push_str(part);
            if made.insert(at.clone()) {
                script.push_str(&format!("add {part}\n"));
            }
            script.push_str(&format!("cd {part}\n"));
        }
        if !values.is_empty() {
            script.push_str(&format!("setval {}\n", values.len()));
            for (k, v) in *values {
                script.push_str(&format!("{k}\n{v}\n"));
            }
        }
    }
    script.push_str("commit\n");
    let script_file = dir.join(format!("{name}.hivexsh"));
    std::fs::write(&script_file, &script).unwrap();
    let out = Command::new("hivexsh")
        .arg("-w")
        .arg("-f")
        .arg(&script_file)
        .arg(&file)
        .output()
        .expect("hivexsh (apt-get install libhivex-bin)");
    assert!(
        out.status.success(),
        "hivexsh {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

/// The golden image's deployability, read from hives hivex wrote: a generalized image with the
/// agent service verifies; one not generalized and one without the service are refused, each
/// saying what to do; and `hivexget` agrees with what recast read.
#[test]
fn deployability_is_read_from_the_hives_hivex_wrote() {
    let Some(fx) = Fixture::new() else { return };
    let software = |state: &str| {
        hivex_hive(
            fx.dir.path(),
            &format!("SOFTWARE-{state}"),
            &[
                (
                    r"Microsoft\Windows NT\CurrentVersion",
                    &[("EditionID", "string:Enterprise")],
                ),
                (
                    r"Microsoft\Windows\CurrentVersion\Setup\State",
                    &[("ImageState", &format!("string:{state}"))],
                ),
            ],
        )
    };
    let system = |with_agent: bool| {
        let agent = format!("expandstring:{}", recast_tests::hive::AGENT_SERVICE_COMMAND);
        let mut keys: Vec<(&str, &[(&str, &str)])> = vec![
            (r"Select", &[("Current", "dword:0x00000001")]),
            (
                r"ControlSet001\Control\Session Manager\Environment",
                &[("PROCESSOR_ARCHITECTURE", "string:AMD64")],
            ),
            (
                r"ControlSet001\Services\Dhcp",
                &[
                    (
                        "ImagePath",
                        r"expandstring:%SystemRoot%\system32\svchost.exe -k LocalServiceNetworkRestricted -p",
                    ),
                    ("Start", "dword:0x00000002"),
                ],
            ),
        ];
        let agent_values = [("ImagePath", agent.as_str()), ("Start", "dword:0x00000002")];
        if with_agent {
            keys.push((r"ControlSet001\Services\recast-agent", &agent_values));
        }
        hivex_hive(fx.dir.path(), &format!("SYSTEM-{with_agent}"), &keys)
    };
    const GENERALIZED: &str = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE";
    let cases = [
        ("deployable", software(GENERALIZED), system(true), None),
        (
            "not-generalized",
            software("IMAGE_STATE_COMPLETE"),
            system(true),
            Some((
                "generalized",
                "ImageState is IMAGE_STATE_COMPLETE, not IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
                "run `sysprep /generalize /oobe /shutdown` on the reference machine",
            )),
        ),
        (
            "no-agent",
            software(GENERALIZED),
            system(false),
            Some((
                "agent-service",
                "no service in the image runs recast-agent",
                r#"sc.exe create recast-agent start= auto binPath= "\"C:\Program Files\recast\recast-agent.exe\" run --agent-config C:\ProgramData\recast\agent.json""#,
            )),
        ),
    ];
    // hivex reads back what it wrote; recast must read the same.
    let got = Command::new("hivexget")
        .arg(&cases[0].1)
        .arg(r"\Microsoft\Windows\CurrentVersion\Setup\State")
        .arg("ImageState")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), GENERALIZED);
    for (name, software, system, refusal) in cases {
        let tree = fx.path(&format!("{name}.tree"));
        make_tree(&tree, &[(ubr(JAN), "KB5074109")], 1);
        let config = tree.join("Windows/System32/config");
        std::fs::copy(&software, config.join("SOFTWARE")).unwrap();
        std::fs::copy(&system, config.join("SYSTEM")).unwrap();
        let wim = fx.path(&format!("{name}.wim"));
        run(
            &fx.wimlib,
            &[
                "capture",
                tree.to_str().unwrap(),
                wim.to_str().unwrap(),
                "Windows 11 Enterprise",
            ],
        );
        set_props(&fx.wimlib, &wim, 1, &windows_props(ubr(JAN), "Enterprise"));
        let report = verify(&request(&wim, None)).unwrap();
        let deep = report.deep.as_ref().expect("deep check ran");
        let facts = deep.deployment.as_ref().expect("the hives were read");
        assert_eq!(facts.edition_id.as_deref(), Some("Enterprise"), "{name}");
        assert_eq!(
            facts.processor_architecture.as_deref(),
            Some("AMD64"),
            "{name}"
        );
        match refusal {
            None => {
                assert_eq!(report.outcome, Outcome::Verified, "{:#?}", report.problems);
                assert_eq!(facts.image_state.as_deref(), Some(GENERALIZED));
                assert_eq!(facts.agent_services.len(), 1);
                assert_eq!(
                    facts.agent_services[0].image_path,
                    recast_tests::hive::AGENT_SERVICE_COMMAND
                );
            }
            Some((check, what, to_do)) => {
                assert_eq!(report.outcome, Outcome::RequirementsNotMet, "{name}");
                let failed: Vec<_> = deep.failures().collect();
                assert_eq!(failed.len(), 1, "{name}: {failed:#?}");
                assert_eq!(failed[0].name, check);
                assert!(failed[0].message.contains(what), "{}", failed[0].message);
                assert!(failed[0].message.contains(to_do), "{}", failed[0].message);
                assert_eq!(report.problems, [failed[0].message.clone()]);
            }
        }
    }
}
