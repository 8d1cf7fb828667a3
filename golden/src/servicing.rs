//! What an image's `Windows\servicing\Packages` proves, and whether that meets a GoldenImage's
//! requirements. Pure: the shell (`deep.rs`) lists the directory and reads the manifests.
//!
//! How updates are identified (Windows' component-based servicing):
//! - Every cumulative update installs `Package_for_RollupFix~31bf3856ad364e35~<arch>~~<build>.<ubr>.<a>.<b>.mum`;
//!   the version's first two parts are the build.UBR the image runs after the update. Older
//!   RollupFix manifests stay until a component cleanup, so the highest one counts.
//! - The update's KB number is in the RollupFix manifest itself: `<package identifier="KB5074109" ...>`
//!   inside `<assembly>`. Standalone updates install `Package_for_KB<digits>~...mum`, which names
//!   the KB in the file name.
//! - A cumulative update contains every earlier one on its branch, so an image at 26100.7840
//!   contains KB5074109 (26100.7623). What decides is the build the image's packages prove is
//!   installed; a required KB only needs a *build* to compare with, found (in this order) in a
//!   RollupFix manifest still in the store, in the servicing log
//!   `Windows\servicing\Sessions\Sessions.xml` (every package the servicing stack installed,
//!   by identity and KB, kept after a component cleanup removed the superseded manifests), and
//!   only then in the name lookup of [`crate::updates`] (confirmed entries only). The result
//!   says which source named the build.

use recast_core::boot_manager::BootManagerFacts;
use serde::Serialize;

use crate::build::Build;
use crate::updates;
use crate::xml::ImageInfo;

/// The publisher key token of Microsoft's Windows packages.
pub const MICROSOFT_TOKEN: &str = "31bf3856ad364e35";
/// Largest .mum manifest recast reads. Real RollupFix manifests are well under a MiB.
pub const MAX_MUM_BYTES: u64 = 8 * 1024 * 1024;

/// A `Package_for_RollupFix` manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollupPackage {
    pub file_name: String,
    pub arch: String,
    pub build: Build,
    /// The full four-part version, such as 26100.7623.1.3.
    pub version: String,
    /// KB identifiers named inside the manifest.
    pub kbs: Vec<String>,
}

/// Parses a RollupFix package file name; None for any other file.
pub fn parse_rollup_name(file_name: &str) -> Option<RollupPackage> {
    let stem = strip_suffix_ci(file_name, ".mum")?;
    let mut parts = stem.split('~');
    let (name, token, arch, _lang, version) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some()
        || !name.eq_ignore_ascii_case("Package_for_RollupFix")
        || !token.eq_ignore_ascii_case(MICROSOFT_TOKEN)
        || arch.is_empty()
    {
        return None;
    }
    let fields: Vec<&str> = version.split('.').collect();
    if fields.len() != 4
        || fields
            .iter()
            .any(|f| f.is_empty() || f.len() > 5 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let build = Build::new(fields[0].parse().ok()?, fields[1].parse().ok()?);
    Some(RollupPackage {
        file_name: file_name.to_string(),
        arch: arch.to_ascii_lowercase(),
        build,
        version: version.to_string(),
        kbs: Vec::new(),
    })
}

/// The KB of a `Package_for_KB<digits>~...mum` file name.
pub fn kb_from_package_name(file_name: &str) -> Option<String> {
    let stem = strip_suffix_ci(file_name, ".mum")?;
    let first = stem.split('~').next()?;
    let kb = first
        .strip_prefix("Package_for_")
        .or_else(|| first.strip_prefix("package_for_"))?;
    // Some standalone packages carry a suffix (Package_for_KB5012170_2~...).
    let kb = kb.split('_').next()?;
    updates::normalize_kb(kb).filter(|_| kb.to_ascii_uppercase().starts_with("KB"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error(
        "{file} is not a servicing manifest (not UTF-8/UTF-16 XML: {why}); the image's servicing store is damaged"
    )]
    Unreadable { file: String, why: String },
}

/// KB identifiers a .mum manifest declares: the `identifier` of its `<package>` elements.
pub fn kbs_in_manifest(file: &str, bytes: &[u8]) -> Result<Vec<String>, ManifestError> {
    let text = decode_text(bytes).map_err(|why| ManifestError::Unreadable {
        file: file.to_string(),
        why,
    })?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: crate::xml::MAX_XML_NODES,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, options).map_err(|e| {
        ManifestError::Unreadable {
            file: file.to_string(),
            why: e.to_string(),
        }
    })?;
    let mut kbs: Vec<String> = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "package")
        .filter_map(|n| n.attribute("identifier"))
        .filter_map(updates::normalize_kb)
        .collect();
    kbs.sort();
    kbs.dedup();
    Ok(kbs)
}

/// .mum files are UTF-8 (often with a BOM); a few tools write UTF-16LE.
fn decode_text(bytes: &[u8]) -> Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return crate::xml::decode_utf16le(rest).map_err(|e| e.to_string());
    }
    let rest = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    String::from_utf8(rest.to_vec()).map_err(|e| e.to_string())
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(cut) && s[cut..].eq_ignore_ascii_case(suffix)).then(|| &s[..cut])
}

/// What the servicing store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicingEvidence {
    /// Every RollupFix package, highest build first.
    pub rollups: Vec<RollupPackage>,
    /// KBs named by `Package_for_KB...` file names.
    pub kb_packages: Vec<String>,
    /// .mum files seen in total.
    pub manifest_count: usize,
    /// The UEFI boot manager the image installs (None: not read).
    #[serde(default)]
    pub boot_manager: Option<BootManagerFacts>,
    /// What the servicing log says was installed.
    #[serde(default)]
    pub session_log: SessionLog,
    /// What the offline registry says about deployability (None: not read, as in evidence
    /// made by hand in tests of other checks).
    #[serde(default)]
    pub deployment: Option<crate::deployable::DeploymentFacts>,
}

/// The servicing log, `Windows\servicing\Sessions\Sessions.xml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum SessionLog {
    /// Not looked for (an evidence of an older recast, or a test).
    #[default]
    NotRead,
    /// The image has no servicing log.
    Absent,
    /// Larger than [`MAX_SESSION_LOG_BYTES`]: not read.
    TooLarge { bytes: u64 },
    /// Present but not XML (a damaged log proves nothing; it does not fail the image).
    Unreadable { why: String },
    /// The cumulative updates it records.
    Read { updates: Vec<LoggedUpdate> },
}

/// A cumulative update the servicing log records: its package identity gives the build, its
/// `name` the KB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedUpdate {
    pub kb: String,
    pub build: Build,
    /// The package's four-part version, such as 26100.7623.1.6.
    pub version: String,
}

/// Largest servicing log recast reads. A healthy one is a few MiB; logs of hundreds of MiB
/// exist on machines that serviced for years, and are not worth parsing for a golden image.
pub const MAX_SESSION_LOG_BYTES: u64 = 32 * 1024 * 1024;

/// The cumulative updates a servicing log (Sessions.xml) records: every
/// `<package id="Package_for_RollupFix~…~B.U.x.y" name="KBnnnnnnn">` of any session, whatever
/// the session's outcome (the pairing of a KB with its build is a fact of the package; whether
/// it is installed is decided by the manifests in the store, never by the log).
pub fn updates_in_session_log(bytes: &[u8]) -> SessionLog {
    let text = match decode_text(bytes) {
        Ok(t) => t,
        Err(why) => return SessionLog::Unreadable { why },
    };
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: crate::xml::MAX_XML_NODES,
        ..Default::default()
    };
    let doc = match roxmltree::Document::parse_with_options(&text, options) {
        Ok(d) => d,
        Err(e) => {
            return SessionLog::Unreadable { why: e.to_string() };
        }
    };
    let mut updates: Vec<LoggedUpdate> = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name().eq_ignore_ascii_case("package"))
        .filter_map(|n| {
            let package = parse_rollup_name(&format!("{}.mum", n.attribute("id")?))?;
            let kb = updates::normalize_kb(n.attribute("name")?)?;
            Some(LoggedUpdate {
                kb,
                build: package.build,
                version: package.version,
            })
        })
        .collect();
    updates.sort_by(|a, b| (a.build, &a.kb).cmp(&(b.build, &b.kb)));
    updates.dedup_by(|a, b| a.kb == b.kb && a.build == b.build);
    SessionLog::Read { updates }
}

impl ServicingEvidence {
    /// The build the image runs: its highest RollupFix.
    pub fn installed(&self) -> Option<&RollupPackage> {
        self.rollups.iter().max_by_key(|r| r.build)
    }
}

/// What a GoldenImage requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub min_build: Option<Build>,
    /// Normalised KB numbers ("KB5074109").
    pub required_kbs: Vec<String>,
    pub expected_edition: Option<String>,
    /// "amd64" or "arm64".
    pub expected_arch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Stable identifier: rollup-present, xml-matches-packages, arch, edition, min-build, kb,
    /// and the deployability checks (generalized, agent-service, registry-edition,
    /// registry-arch).
    pub name: &'static str,
    pub passed: bool,
    pub message: String,
}

/// How a required KB was (or was not) found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KbFinding {
    pub kb: String,
    pub contained: bool,
    /// One line for a person: "contains KB5074109: yes, build 26100.7623 (...)".
    pub explanation: String,
}

/// The deep check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeepVerdict {
    pub xml_build: Option<Build>,
    pub installed_build: Option<Build>,
    pub rollup_package: Option<String>,
    pub checks: Vec<Check>,
    pub kbs: Vec<KbFinding>,
    /// The UEFI boot manager the image installs, as read from the WIM (None: not read).
    pub boot_manager: Option<BootManagerFacts>,
    /// What the offline registry says (None: not read).
    pub deployment: Option<crate::deployable::DeploymentFacts>,
}

impl DeepVerdict {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Decides whether the image (its XML claims and its servicing evidence) meets `req`.
pub fn evaluate(
    image: &ImageInfo,
    evidence: &ServicingEvidence,
    req: &Requirements,
) -> DeepVerdict {
    let mut checks = Vec::new();
    let xml_build = image.build_ubr();
    let xml_arch = image.arch();
    // Only packages of the image's own branch count; a stray package of another release
    // (a mounted image serviced with the wrong update) proves nothing.
    let branches: Vec<u32> = match image.build {
        Some(b) if !updates::servicing_builds(b).is_empty() => {
            updates::servicing_builds(b).to_vec()
        }
        Some(b) => vec![b],
        None => Vec::new(),
    };
    let own: Vec<&RollupPackage> = evidence
        .rollups
        .iter()
        .filter(|r| branches.is_empty() || branches.contains(&r.build.build))
        .collect();
    let installed_pkg = own.iter().copied().max_by_key(|r| r.build);
    // A 25H2 image's package may say 26100; report the build the way the image reports it.
    let installed = installed_pkg.map(|r| match image.build {
        Some(b) => Build::new(b, r.build.ubr),
        None => r.build,
    });

    match installed_pkg {
        Some(p) => checks.push(Check {
            name: "rollup-present",
            passed: true,
            message: format!("cumulative update package {} is installed", p.file_name),
        }),
        None => checks.push(Check {
            name: "rollup-present",
            passed: false,
            message: if evidence.rollups.is_empty() {
                format!(
                    "no Package_for_RollupFix manifest under Windows\\servicing\\Packages ({} manifests there): the image has no cumulative update installed; service it with the required update (DISM /Add-Package) and capture it again",
                    evidence.manifest_count
                )
            } else {
                format!(
                    "the RollupFix packages ({}) belong to another release than the image's build {}: the image was serviced with the wrong update",
                    evidence.rollups.iter().map(|r| r.version.as_str()).collect::<Vec<_>>().join(", "),
                    image.build.map_or("(none)".into(), |b| b.to_string())
                )
            },
        }),
    }

    match (xml_build, installed) {
        (Some(x), Some(i)) if x == i => checks.push(Check {
            name: "xml-matches-packages",
            passed: true,
            message: format!("the XML's build {x} matches the installed RollupFix package"),
        }),
        (Some(x), Some(i)) => checks.push(Check {
            name: "xml-matches-packages",
            passed: false,
            message: format!(
                "the WIM's XML claims build {x} but its servicing packages hold RollupFix {i} at most{}: the XML was edited or the capture is stale; do not trust this image — service it properly and capture it again",
                if x > i { "" } else { " (newer than the XML says)" }
            ),
        }),
        (None, _) => checks.push(Check {
            name: "xml-matches-packages",
            passed: false,
            message: "the WIM's XML records no WINDOWS/VERSION BUILD and SPBUILD, so its claims cannot be matched with its packages: capture the image with DISM or wimlib from an installed Windows".into(),
        }),
        (Some(_), None) => {}
    }

    if let (Some(p), Some(a)) = (installed_pkg, xml_arch) {
        checks.push(Check {
            name: "arch",
            passed: p.arch == a,
            message: if p.arch == a {
                format!("architecture {a}")
            } else {
                format!("the XML says architecture {a} but the RollupFix package is for {}: the image is inconsistent", p.arch)
            },
        });
    }
    if let Some(want) = &req.expected_arch {
        let have = xml_arch.or(installed_pkg.map(|p| p.arch.as_str()));
        let ok = have.is_some_and(|h| h.eq_ignore_ascii_case(want));
        checks.push(Check {
            name: "arch",
            passed: ok,
            message: if ok {
                format!("architecture {want} as expected")
            } else {
                format!(
                    "expected architecture {want}, the image is {}",
                    have.unwrap_or("unknown")
                )
            },
        });
    }
    if let Some(want) = &req.expected_edition {
        let have = image.edition.as_deref();
        let ok = have.is_some_and(|h| h.eq_ignore_ascii_case(want));
        checks.push(Check {
            name: "edition",
            passed: ok,
            message: if ok {
                format!("edition {want} as expected")
            } else {
                format!(
                    "expected edition {want}, the image's XML says {}: pick the right imageIndex (recastctl image inspect FILE lists them)",
                    have.unwrap_or("nothing")
                )
            },
        });
    }

    if let Some(min) = req.min_build {
        let (passed, message) = match installed {
            Some(i) if i.build == min.build && i >= min => {
                (true, format!("build {i} meets the minimum {min}"))
            }
            Some(i) if i.build != min.build => (
                false,
                format!(
                    "the image is build {i}, another release than the required minimum {min}: use an image of build {}",
                    min.build
                ),
            ),
            Some(i) => (
                false,
                format!(
                    "the image is build {i}, below the required minimum {min}{}: service it with a newer cumulative update",
                    updates::by_build(min)
                        .map(|u| format!(" ({})", u.kb))
                        .unwrap_or_default()
                ),
            ),
            None => (
                false,
                format!(
                    "no installed cumulative update was found, so the minimum build {min} is not met"
                ),
            ),
        };
        checks.push(Check {
            name: "min-build",
            passed,
            message,
        });
    }

    let mut kbs = Vec::new();
    for kb in &req.required_kbs {
        let finding = find_kb(kb, evidence, &own, &branches, installed);
        checks.push(Check {
            name: "kb",
            passed: finding.contained,
            message: finding.explanation.clone(),
        });
        kbs.push(finding);
    }
    if let Some(facts) = &evidence.deployment {
        checks.extend(crate::deployable::checks(image, facts));
    }

    DeepVerdict {
        xml_build,
        installed_build: installed,
        rollup_package: installed_pkg.map(|p| p.file_name.clone()),
        checks,
        kbs,
        boot_manager: evidence.boot_manager.clone(),
        deployment: evidence.deployment.clone(),
    }
}

fn find_kb(
    kb: &str,
    evidence: &ServicingEvidence,
    own: &[&RollupPackage],
    branches: &[u32],
    installed: Option<Build>,
) -> KbFinding {
    let Some(kb) = updates::normalize_kb(kb) else {
        return KbFinding {
            kb: kb.to_string(),
            contained: false,
            explanation: format!("{kb:?} is not a KB number such as KB5074109"),
        };
    };
    if let Some(p) = own
        .iter()
        .filter(|p| p.kbs.contains(&kb))
        .max_by_key(|p| p.build)
    {
        return KbFinding {
            explanation: format!(
                "contains {kb}: yes, build {} (named by {})",
                p.build, p.file_name
            ),
            kb,
            contained: true,
        };
    }
    if evidence.kb_packages.contains(&kb) {
        return KbFinding {
            explanation: format!("contains {kb}: yes (package Package_for_{kb} is installed)"),
            kb,
            contained: true,
        };
    }
    // An image of a release recast does not know is compared on its own build only.
    let branches = match (branches, installed) {
        ([], Some(i)) => vec![i.build],
        _ => branches.to_vec(),
    };
    let Some((brings, source)) = build_of(&kb, evidence, &branches) else {
        let log = match &evidence.session_log {
            SessionLog::Read { .. } => "the servicing log does not record it".to_string(),
            SessionLog::Absent => "the image has no servicing log".to_string(),
            SessionLog::TooLarge { bytes } => format!(
                "the servicing log was not read ({bytes} bytes, more than {MAX_SESSION_LOG_BYTES})"
            ),
            SessionLog::Unreadable { why } => format!("the servicing log is unreadable ({why})"),
            SessionLog::NotRead => "the servicing log was not read".to_string(),
        };
        let table = match updates::by_kb(&kb) {
            Some(u) if !u.confirmed => {
                "recast's update table lists it with a build from a single source, which proves nothing by itself".to_string()
            }
            _ => "recast's update table does not know it".to_string(),
        };
        return KbFinding {
            explanation: format!(
                "contains {kb}: not proven — no package in the image names it, {log}, and {table}: require the build instead (requirements.minimumBuild) or service the image with {kb} or later"
            ),
            kb,
            contained: false,
        };
    };
    let Some(i) = installed else {
        return KbFinding {
            explanation: format!(
                "contains {kb}: no — the image has no cumulative update installed"
            ),
            kb,
            contained: false,
        };
    };
    // The KB's build may be named on the 24H2 branch for a 25H2 image: compare revisions.
    if brings.ubr <= i.ubr {
        let installed_kb = own
            .iter()
            .max_by_key(|p| p.build)
            .and_then(|p| p.kbs.first().cloned())
            .map(|k| format!(" ({k})"))
            .unwrap_or_default();
        KbFinding {
            explanation: format!(
                "contains {kb}: yes, build {brings} ({source}), included in the installed cumulative update {i}{installed_kb}"
            ),
            kb,
            contained: true,
        }
    } else {
        KbFinding {
            explanation: format!(
                "contains {kb}: no — it brings build {brings} ({source}), the image is at {i}: service the image with {kb} or a later cumulative update"
            ),
            kb,
            contained: false,
        }
    }
}

/// The build `kb` brings on one of the image's servicing branches, and which source said so:
/// the servicing log, then recast's name lookup (confirmed entries only).
fn build_of(kb: &str, evidence: &ServicingEvidence, branches: &[u32]) -> Option<(Build, String)> {
    let on_branch = |b: &Build| branches.contains(&b.build);
    if let SessionLog::Read { updates } = &evidence.session_log
        && let Some(u) = updates
            .iter()
            .filter(|u| u.kb == kb && on_branch(&u.build))
            .min_by_key(|u| u.build)
    {
        return Some((
            u.build,
            format!("recorded by the servicing log as package {}", u.version),
        ));
    }
    updates::by_kb(kb)
        .filter(|u| u.confirmed)
        .and_then(|u| u.builds.iter().copied().find(|b| on_branch(b)))
        .map(|b| (b, "recast's update table".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(build: Build, kbs: &[&str]) -> RollupPackage {
        let mut p = parse_rollup_name(&format!(
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~{}.{}.1.3.mum",
            build.build, build.ubr
        ))
        .unwrap();
        p.kbs = kbs.iter().map(|s| s.to_string()).collect();
        p
    }

    fn image(build: u32, ubr: Option<u32>) -> ImageInfo {
        ImageInfo {
            index: 1,
            build: Some(build),
            sp_build: ubr,
            arch_code: Some(9),
            edition: Some("Enterprise".into()),
            ..Default::default()
        }
    }

    fn evidence(rollups: Vec<RollupPackage>) -> ServicingEvidence {
        ServicingEvidence {
            deployment: None,
            manifest_count: rollups.len() + 10,
            rollups,
            kb_packages: vec![],
            boot_manager: None,
            session_log: SessionLog::Absent,
        }
    }

    fn session_log(entries: &[(&str, &str, &str)]) -> Vec<u8> {
        let entries: Vec<_> = entries
            .iter()
            .map(|(b, kb, status)| {
                let b = Build::parse(b).unwrap();
                ((b.build, b.ubr), *kb, *status)
            })
            .collect();
        recast_tests::wimlib::session_log(&entries)
    }

    #[test]
    fn reads_the_servicing_log() {
        let log = updates_in_session_log(&session_log(&[
            ("26100.8246", "KB5081234", "0x0"),
            ("26100.7623", "KB5074109", "0x800f0922"),
            ("26100.7623", "KB5074109", "0x0"),
        ]));
        let SessionLog::Read { updates } = log else {
            panic!("{log:?}")
        };
        // Sorted by build, one per KB and build, whatever the session's outcome.
        assert_eq!(
            updates
                .iter()
                .map(|u| (u.kb.as_str(), u.build, u.version.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("KB5074109", Build::new(26100, 7623), "26100.7623.1.3"),
                ("KB5081234", Build::new(26100, 8246), "26100.8246.1.3"),
            ]
        );
        // Bad input: not XML, not text, a standalone package, a package without a KB name.
        assert!(matches!(
            updates_in_session_log(b"<Sessions><Session>"),
            SessionLog::Unreadable { .. }
        ));
        assert!(matches!(
            updates_in_session_log(b"\xc3\x28"),
            SessionLog::Unreadable { .. }
        ));
        let other = b"<Sessions><Session><Tasks><Phase><package id=\"Package_for_KB972636~31bf3856ad364e35~amd64~~6.1.1.0\" name=\"KB972636\"/><package id=\"Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.6\" name=\"RollupFix\"/></Phase></Tasks></Session></Sessions>";
        assert_eq!(
            updates_in_session_log(other),
            SessionLog::Read { updates: vec![] }
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// A damaged log never panics and never invents an update: every one it yields is a
        /// RollupFix identity and a KB the text really holds.
        #[test]
        fn a_mutated_log_never_panics_or_invents(edits in proptest::collection::vec((0usize..4000, 0u8..3, proptest::prelude::any::<char>()), 1..10)) {
            let good = String::from_utf8(session_log(&[("26100.8246", "KB5081234", "0x0"), ("26100.9100", "KB5089999", "0x0")])).unwrap();
            let text = crate::xml::mutated(&good, &edits);
            if let SessionLog::Read { updates } = updates_in_session_log(text.as_bytes()) {
                for u in updates {
                    proptest::prop_assert!(text.contains(&u.version) && text.contains(u.kb.trim_start_matches("KB")), "{u:?}");
                }
            }
        }
    }

    #[test]
    fn a_later_update_contains_an_older_kb_the_log_names() {
        // March's KB is in no table; the image was serviced in March, then with November's
        // update, and a component cleanup removed March's manifest. The log still pairs it
        // with its build, and the installed build proves it is contained.
        let mut e = evidence(vec![pkg(Build::new(26100, 9100), &["KB5089999"])]);
        e.session_log = updates_in_session_log(&session_log(&[
            ("26100.8246", "KB5081234", "0x0"),
            ("26100.9100", "KB5089999", "0x0"),
        ]));
        let v = evaluate(
            &image(26100, Some(9100)),
            &e,
            &req("26100.7623", &["KB5081234"]),
        );
        assert!(v.passed(), "{:#?}", v.checks);
        assert_eq!(
            v.kbs[0].explanation,
            "contains KB5081234: yes, build 26100.8246 (recorded by the servicing log as package 26100.8246.1.3), included in the installed cumulative update 26100.9100 (KB5089999)"
        );
        // The log names a KB above what the packages prove installed: not contained.
        let mut e = evidence(vec![pkg(Build::new(26100, 8246), &["KB5081234"])]);
        e.session_log =
            updates_in_session_log(&session_log(&[("26100.9100", "KB5089999", "0x800f0922")]));
        let v = evaluate(
            &image(26100, Some(8246)),
            &e,
            &req("26100.7623", &["KB5089999"]),
        );
        assert!(
            v.kbs[0]
                .explanation
                .starts_with("contains KB5089999: no — it brings build 26100.9100 (recorded by the servicing log as package 26100.9100.1.3), the image is at 26100.8246"),
            "{}",
            v.kbs[0].explanation
        );
        // A log entry of another release proves nothing for this image.
        let mut e = evidence(vec![pkg(Build::new(26100, 9100), &["KB5089999"])]);
        e.session_log = updates_in_session_log(&session_log(&[("22631.4000", "KB5081234", "0x0")]));
        let v = evaluate(
            &image(26100, Some(9100)),
            &e,
            &req("26100.7623", &["KB5081234"]),
        );
        assert!(!v.passed());
        assert!(
            v.kbs[0]
                .explanation
                .contains("not proven — no package in the image names it, the servicing log does not record it"),
            "{}",
            v.kbs[0].explanation
        );
    }

    #[test]
    fn the_table_is_a_lookup_and_unconfirmed_entries_prove_nothing() {
        // KB5077744's build comes from one source: it never proves containment alone.
        let v = evaluate(
            &image(26100, Some(7840)),
            &evidence(vec![pkg(Build::new(26100, 7840), &["KB5077181"])]),
            &req("26100.7623", &["KB5077744", "KB5074109"]),
        );
        assert!(!v.kbs[0].contained, "{}", v.kbs[0].explanation);
        assert!(
            v.kbs[0].explanation.contains("single source")
                && v.kbs[0].explanation.contains("minimumBuild"),
            "{}",
            v.kbs[0].explanation
        );
        assert!(v.kbs[1].contained);
        assert!(
            v.kbs[1].explanation.contains("(recast's update table)"),
            "{}",
            v.kbs[1].explanation
        );
        // Each state of the log is named when it is why a KB is not proven.
        for (log, says) in [
            (SessionLog::Absent, "the image has no servicing log"),
            (
                SessionLog::TooLarge { bytes: 1 << 30 },
                "was not read (1073741824 bytes",
            ),
            (
                SessionLog::Unreadable { why: "x".into() },
                "the servicing log is unreadable (x)",
            ),
        ] {
            let mut e = evidence(vec![pkg(Build::new(26100, 7840), &["KB5077181"])]);
            e.session_log = log;
            let v = evaluate(
                &image(26100, Some(7840)),
                &e,
                &req("26100.7623", &["KB5081234"]),
            );
            assert!(
                v.kbs[0].explanation.contains(says),
                "{}",
                v.kbs[0].explanation
            );
        }
    }

    #[test]
    fn containment_is_per_branch_and_monotonic() {
        for (installed, contained) in [(7840, true), (7623, true), (7462, false)] {
            let v = evaluate(
                &image(26100, Some(installed)),
                &evidence(vec![pkg(Build::new(26100, installed), &[])]),
                &req("26100.7000", &["KB5074109"]),
            );
            assert_eq!(v.kbs[0].contained, contained, "{}", v.kbs[0].explanation);
        }
        // Another release's build never contains a 24H2 KB.
        let v = evaluate(
            &image(22631, Some(9999)),
            &evidence(vec![pkg(Build::new(22631, 9999), &[])]),
            &req("22631.1", &["KB5074109"]),
        );
        assert!(!v.kbs[0].contained, "{}", v.kbs[0].explanation);
    }

    fn req(min: &str, kbs: &[&str]) -> Requirements {
        Requirements {
            min_build: Some(Build::parse(min).unwrap()),
            required_kbs: kbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_rollup_names() {
        let p =
            parse_rollup_name("Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.3.mum")
                .unwrap();
        assert_eq!(
            (p.arch.as_str(), p.build, p.version.as_str()),
            ("amd64", Build::new(26100, 7623), "26100.7623.1.3")
        );
        assert!(
            parse_rollup_name("package_for_rollupfix~31BF3856AD364E35~ARM64~~26100.7840.1.10.MUM")
                .is_some()
        );
        for bad in [
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.3.cat",
            "Package_for_RollupFix~0000000000000000~amd64~~26100.7623.1.3.mum",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.mum",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.76x3.1.3.mum",
            "Package_for_RollupFix~31bf3856ad364e35~~~26100.7623.1.3.mum",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.3~x.mum",
            "Package_for_ServicingStack_7623~31bf3856ad364e35~amd64~~26100.7623.1.3.mum",
            "Package_for_RollupFix~31bf3856ad364e35~amd64~~999999.1.1.1.mum",
            "mum",
            "",
        ] {
            assert!(parse_rollup_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn reads_kb_from_manifests_and_names() {
        let mum = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><assembly xmlns=\"urn:schemas-microsoft-com:asm.v3\" manifestVersion=\"1.0\"><assemblyIdentity name=\"Package_for_RollupFix\" version=\"26100.7623.1.3\" processorArchitecture=\"amd64\" language=\"neutral\" publicKeyToken=\"31bf3856ad364e35\"/><package identifier=\"KB5074109\" releaseType=\"Security Update\" restart=\"required\"><update name=\"x\"/></package></assembly>";
        assert_eq!(
            kbs_in_manifest("a.mum", mum.as_bytes()).unwrap(),
            vec!["KB5074109"]
        );
        let none = "<assembly><package identifier=\"RollupFix\"/></assembly>";
        assert!(
            kbs_in_manifest("b.mum", none.as_bytes())
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            kbs_in_manifest("c.mum", b"\xff\xfe<\x00"),
            Err(ManifestError::Unreadable { .. })
        ));
        assert!(matches!(
            kbs_in_manifest("d.mum", b"\xc3\x28"),
            Err(ManifestError::Unreadable { .. })
        ));
        assert_eq!(
            kb_from_package_name("Package_for_KB5074109~31bf3856ad364e35~amd64~~10.0.1.0.mum")
                .as_deref(),
            Some("KB5074109")
        );
        assert_eq!(
            kb_from_package_name("Package_for_KB5012170_2~31bf3856ad364e35~amd64~~10.0.1.0.mum")
                .as_deref(),
            Some("KB5012170")
        );
        assert_eq!(
            kb_from_package_name(
                "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.7623.1.3.mum"
            ),
            None
        );
        assert_eq!(kb_from_package_name("Package_for_5074109~x.mum"), None);
    }

    #[test]
    fn january_image_passes_with_explanations() {
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![
                pkg(Build::new(26100, 7462), &["KB5072033"]),
                pkg(Build::new(26100, 7623), &["KB5074109"]),
            ]),
            &req("26100.7623", &["KB5074109", "KB5072033"]),
        );
        assert!(v.passed(), "{:#?}", v.checks);
        assert_eq!(v.installed_build, Some(Build::new(26100, 7623)));
        assert!(
            v.kbs[0]
                .explanation
                .starts_with("contains KB5074109: yes, build 26100.7623"),
            "{}",
            v.kbs[0].explanation
        );
        assert!(v.kbs[1].explanation.contains("contains KB5072033: yes"));
    }

    #[test]
    fn xml_claiming_more_than_the_packages_fails() {
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![pkg(Build::new(26100, 7462), &["KB5072033"])]),
            &req("26100.7623", &["KB5074109"]),
        );
        assert!(!v.passed());
        let names: Vec<_> = v.failures().map(|c| c.name).collect();
        assert_eq!(names, vec!["xml-matches-packages", "min-build", "kb"]);
        let msg = &v.failures().next().unwrap().message;
        assert!(
            msg.contains("claims build 26100.7623") && msg.contains("26100.7462"),
            "{msg}"
        );
        assert!(
            v.kbs[0].explanation.starts_with("contains KB5074109: no"),
            "{}",
            v.kbs[0].explanation
        );
    }

    #[test]
    fn later_cumulative_supersedes_and_says_so() {
        let v = evaluate(
            &image(26100, Some(7840)),
            &evidence(vec![pkg(Build::new(26100, 7840), &["KB5077181"])]),
            &req("26100.7623", &["KB5074109"]),
        );
        assert!(v.passed(), "{:#?}", v.checks);
        assert!(
            v.kbs[0]
                .explanation
                .contains("included in the installed cumulative update 26100.7840 (KB5077181)"),
            "{}",
            v.kbs[0].explanation
        );
    }

    #[test]
    fn unknown_kb_and_no_rollup_fail() {
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![pkg(Build::new(26100, 7623), &["KB5074109"])]),
            &req("26100.7623", &["KB5999999", "nonsense"]),
        );
        assert_eq!(v.failures().count(), 2);
        assert!(
            v.kbs[0].explanation.contains("does not know"),
            "{}",
            v.kbs[0].explanation
        );
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![]),
            &req("26100.7623", &[]),
        );
        let first = v.failures().next().unwrap();
        assert_eq!(first.name, "rollup-present");
        assert!(first.message.contains("no Package_for_RollupFix"));
    }

    #[test]
    fn wrong_release_arch_edition_and_missing_xml_fail() {
        // Packages of another release do not count.
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![pkg(Build::new(22631, 7623), &[])]),
            &req("26100.7623", &[]),
        );
        assert!(
            v.failures()
                .any(|c| c.name == "rollup-present" && c.message.contains("another release"))
        );
        // Minimum of another release.
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![pkg(Build::new(26100, 7623), &[])]),
            &req("22631.9999", &[]),
        );
        assert!(
            v.failures()
                .any(|c| c.name == "min-build" && c.message.contains("another release"))
        );
        // Arch and edition.
        let mut r = req("26100.7623", &[]);
        r.expected_arch = Some("arm64".into());
        r.expected_edition = Some("Professional".into());
        let v = evaluate(
            &image(26100, Some(7623)),
            &evidence(vec![pkg(Build::new(26100, 7623), &[])]),
            &r,
        );
        assert_eq!(
            v.failures().map(|c| c.name).collect::<Vec<_>>(),
            vec!["arch", "edition"]
        );
        let mut img = image(26100, Some(7623));
        img.arch_code = Some(12);
        let v = evaluate(
            &img,
            &evidence(vec![pkg(Build::new(26100, 7623), &[])]),
            &req("26100.7623", &[]),
        );
        assert!(
            v.failures()
                .any(|c| c.name == "arch" && c.message.contains("inconsistent"))
        );
        // No SPBUILD in the XML.
        let v = evaluate(
            &image(26100, None),
            &evidence(vec![pkg(Build::new(26100, 7623), &[])]),
            &req("26100.7623", &[]),
        );
        assert!(v.failures().any(|c| c.name == "xml-matches-packages"));
    }

    #[test]
    fn a_25h2_image_may_carry_26100_packages() {
        let v = evaluate(
            &image(26200, Some(7623)),
            &evidence(vec![pkg(Build::new(26100, 7623), &["KB5074109"])]),
            &req("26200.7623", &["KB5074109"]),
        );
        assert!(v.passed(), "{:#?}", v.checks);
        assert_eq!(v.installed_build, Some(Build::new(26200, 7623)));
    }

    #[test]
    fn below_minimum_names_the_update() {
        let v = evaluate(
            &image(26100, Some(7462)),
            &evidence(vec![pkg(Build::new(26100, 7462), &["KB5072033"])]),
            &req("26100.7623", &[]),
        );
        let c = v.failures().next().unwrap();
        assert_eq!(c.name, "min-build");
        assert!(c.message.contains("(KB5074109)"), "{}", c.message);
    }
}
