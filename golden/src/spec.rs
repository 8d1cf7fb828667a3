//! The glue between a GoldenImage object and a verification, pure, for the GoldenImage
//! controller and recastctl: the spec's requirements as a [`VerifyRequest`], and a report as
//! the status facts and the Verified condition's status, reason and message.
//! (The controller adds the transition time and observedGeneration: it owns the clock.)

use std::path::PathBuf;

use recast_crds::common::ConditionStatus;
use recast_crds::golden_image::{Arch, GoldenImageSpec, ImageFacts};

use crate::build::{Build, BuildParseError};
use crate::servicing::Requirements;
use crate::{Outcome, VerifyImageError, VerifyReport, VerifyRequest, updates};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("spec.requirements.minimumBuild: {0}")]
    MinimumBuild(#[from] BuildParseError),
    #[error("spec.requirements.requiredKbs: {0:?} is not a KB number such as KB5074109")]
    Kb(String),
}

/// The requirements a GoldenImage spec states.
pub fn requirements(spec: &GoldenImageSpec) -> Result<Requirements, SpecError> {
    let min_build = Build::parse(&spec.requirements.minimum_build)?;
    let required_kbs = spec
        .requirements
        .required_kbs
        .iter()
        .map(|kb| updates::normalize_kb(kb).ok_or_else(|| SpecError::Kb(kb.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let expected = spec.expected.as_ref();
    Ok(Requirements {
        min_build: Some(min_build),
        required_kbs,
        expected_edition: expected.and_then(|e| e.edition.clone()),
        expected_arch: expected.and_then(|e| e.arch).map(|a| match a {
            Arch::Amd64 => "amd64".to_string(),
            Arch::Arm64 => "arm64".to_string(),
        }),
    })
}

/// The full check of the WIM at `local_path` (already fetched) against `spec`.
pub fn request(spec: &GoldenImageSpec, local_path: PathBuf) -> Result<VerifyRequest, SpecError> {
    Ok(VerifyRequest {
        path: local_path,
        image_index: spec.image_index,
        expected_sha256: Some(spec.sha256.clone()),
        requirements: requirements(spec)?,
        deep: true,
        full_verify: false,
    })
}

/// status.facts from a report: what the WIM's bytes proved about the chosen image.
pub fn facts(report: &VerifyReport) -> ImageFacts {
    let image = report.inspection.xml.image(report.image_index);
    let deep = report.deep.as_ref();
    // The build the packages prove; the XML's claim only when no deep check ran.
    let build = deep
        .and_then(|d| d.installed_build)
        .or_else(|| image.and_then(|i| i.build_ubr()))
        .map(|b| b.to_string())
        .unwrap_or_default();
    let mut kbs: Vec<String> = deep
        .map(|d| {
            d.kbs
                .iter()
                .filter(|k| k.contained)
                .map(|k| k.kb.clone())
                .collect()
        })
        .unwrap_or_default();
    if let Some(kb) = deep
        .and_then(|d| d.installed_build)
        .and_then(updates::by_build)
        .map(|u| u.kb.to_string())
        && !kbs.contains(&kb)
    {
        kbs.push(kb);
    }
    kbs.sort();
    ImageFacts {
        build,
        name: image.and_then(|i| i.name.clone()),
        edition: image.and_then(|i| i.edition.clone()),
        arch: image.and_then(|i| i.arch()).map(String::from),
        languages: image.map(|i| i.languages.clone()).unwrap_or_default(),
        rollup_packages: deep
            .and_then(|d| d.rollup_package.clone())
            .into_iter()
            .collect(),
        kbs,
        size_bytes: report.inspection.file_size,
        boot_manager: deep.and_then(|d| d.boot_manager.clone()),
    }
}

/// The Verified condition for a verification's result: status, a CamelCase reason a script
/// can branch on, and a message that says what to do.
pub fn verified_condition(
    result: &Result<VerifyReport, VerifyImageError>,
) -> (ConditionStatus, &'static str, String) {
    match result {
        Ok(r) => match r.outcome {
            Outcome::Verified => (
                ConditionStatus::True,
                "Verified",
                format!(
                    "sha256 matches; {}",
                    r.deep
                        .as_ref()
                        .map(|d| {
                            d.kbs
                                .iter()
                                .map(|k| k.explanation.clone())
                                .chain(d.installed_build.map(|b| format!("build {b}")))
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                        .unwrap_or_default()
                ),
            ),
            Outcome::BytesMismatch => (
                ConditionStatus::False,
                "BytesMismatch",
                r.problems.join("; "),
            ),
            Outcome::RequirementsNotMet => (
                ConditionStatus::False,
                "RequirementsNotMet",
                r.problems.join("; "),
            ),
        },
        Err(e) if e.is_cancelled() => (ConditionStatus::Unknown, "Cancelled", e.to_string()),
        Err(e) if e.is_malformed() => (ConditionStatus::False, "MalformedImage", e.to_string()),
        // A WIM that exhausts the sandbox's limits or crashes the parser is refused for this
        // generation, not retried: every retry would cost the same again.
        Err(e) if e.is_killed() => (ConditionStatus::False, "DeepCheckKilled", e.to_string()),
        Err(e) if e.is_not_windows() => (ConditionStatus::False, "NotWindows", e.to_string()),
        Err(e) => (ConditionStatus::Unknown, "CheckFailed", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::golden_image::{ArtifactSource, ExpectedImage, ImageRequirements};

    fn spec(min: &str, kbs: &[&str]) -> GoldenImageSpec {
        GoldenImageSpec {
            drivers: vec![],
            source: ArtifactSource {
                url: Some("https://x.example/a.wim".into()),
                path: None,
            },
            sha256: "a".repeat(64),
            image_index: 2,
            expected: Some(ExpectedImage {
                edition: Some("Enterprise".into()),
                arch: Some(Arch::Amd64),
            }),
            requirements: ImageRequirements {
                minimum_build: min.into(),
                required_kbs: kbs.iter().map(|s| s.to_string()).collect(),
            },
            channels: vec![],
            canary_channels: vec![],
            promotion: None,
        }
    }

    #[test]
    fn spec_becomes_a_request() {
        let r = request(&spec("26100.7623", &["KB5074109"]), "/x.wim".into()).unwrap();
        assert_eq!(r.image_index, 2);
        assert_eq!(r.expected_sha256.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(r.requirements.min_build, Some(Build::new(26100, 7623)));
        assert_eq!(r.requirements.required_kbs, vec!["KB5074109"]);
        assert_eq!(r.requirements.expected_arch.as_deref(), Some("amd64"));
        assert!(r.deep);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            requirements(&spec("7623", &[])),
            Err(SpecError::MinimumBuild(_))
        ));
        assert_eq!(
            requirements(&spec("26100.7623", &["KBx"])),
            Err(SpecError::Kb("KBx".into()))
        );
    }
}
