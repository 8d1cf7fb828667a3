//! recast-golden: what a golden WIM is, checked from its own bytes.
//!
//! - [`header`] and [`xml`]: recast's own bounded readers of the WIM header and XML metadata
//!   (pure; [`inspect`] is the two-read shell).
//! - [`verify`]: one streamed pass for the file's sha256 and the integrity table's SHA-1s.
//! - [`deep`] + [`servicing`]: the image's `Windows\servicing\Packages` (read through the `wim`
//!   crate) judged against the required build and KBs, explained with [`updates`].
//! - [`deployable`]: the image's offline SOFTWARE and SYSTEM hives: generalized, the agent
//!   service installed, edition and architecture as the XML says.
//!
//! [`verify_image`] runs them in order and returns one report whose [`Outcome`] a pipeline can
//! branch on.

pub mod build;
pub mod deep;
pub mod deployable;
pub mod header;
pub mod inspect;
pub mod sandbox;
pub mod servicing;
#[cfg(feature = "crds")]
pub mod spec;
pub mod updates;
pub mod verify;
pub mod xml;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

pub use build::Build;
pub use inspect::{Inspection, inspect};
pub use servicing::{DeepVerdict, Requirements, ServicingEvidence};
pub use verify::{Integrity, StreamReport};

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub path: PathBuf,
    /// 1-based image index for the deep check.
    pub image_index: u32,
    pub expected_sha256: Option<String>,
    pub requirements: Requirements,
    /// Run the deep check (open the image and read its servicing packages).
    pub deep: bool,
    /// Also decompress every resource and check its SHA-1 with the `wim` crate.
    pub full_verify: bool,
}

/// Progress of a whole verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyProgress {
    /// Bytes hashed so far.
    Hashing(verify::Progress),
    Deep(deep::DeepPhase),
}

/// The verdict, most severe first. Pipelines branch on it (recastctl maps it to exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Every requested check passed.
    Verified,
    /// The bytes are not the expected ones: sha256 differs or the integrity table fails.
    BytesMismatch,
    /// The bytes are intact but the image does not meet the requirements (build, KBs,
    /// edition, architecture) or its XML contradicts its packages.
    RequirementsNotMet,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub outcome: Outcome,
    pub inspection: Inspection,
    pub image_index: u32,
    pub stream: StreamReport,
    /// Absent when the deep check was not requested or the bytes already failed.
    pub deep: Option<DeepVerdict>,
    /// One line per problem, for people.
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyImageError {
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
    #[error(transparent)]
    Stream(#[from] verify::VerifyError),
    #[error(transparent)]
    Split(#[from] inspect::SplitError),
    #[error(transparent)]
    Deep(#[from] deep::DeepError),
    #[error(
        "{path}: image {index} is not in the WIM's XML (it lists {listed}); pick an index that `recastctl image inspect` shows"
    )]
    NoSuchImage {
        path: PathBuf,
        index: u32,
        listed: String,
    },
}

impl VerifyImageError {
    /// True when the file is not a readable, well-formed WIM (as opposed to an I/O problem or
    /// a cancellation).
    pub fn is_malformed(&self) -> bool {
        match self {
            VerifyImageError::Inspect(e) => !matches!(e, inspect::InspectError::Io { .. }),
            VerifyImageError::Stream(verify::VerifyError::BadIntegrityTable { .. }) => true,
            VerifyImageError::Deep(e) => e.kind() == deep::DeepFailureKind::Malformed,
            _ => false,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        match self {
            VerifyImageError::Stream(verify::VerifyError::Cancelled { .. }) => true,
            VerifyImageError::Deep(e) => e.kind() == deep::DeepFailureKind::Cancelled,
            _ => false,
        }
    }

    /// The sandbox killed the deep check (memory, CPU or time limit, or a crash).
    pub fn is_killed(&self) -> bool {
        matches!(self, VerifyImageError::Deep(e) if e.kind() == deep::DeepFailureKind::Killed)
    }

    pub fn is_not_windows(&self) -> bool {
        matches!(self, VerifyImageError::Deep(e) if e.kind() == deep::DeepFailureKind::NotWindows)
    }
}

/// Runs the deep check of image `index` of the WIM at `path`: [`deep::collect_evidence`] in
/// this process, or [`sandbox::Sandbox::collect_evidence`] in a limited child.
pub type DeepCheck<'a> = dyn FnMut(
        &std::path::Path,
        u32,
        &deep::DeepOptions,
        &AtomicBool,
        &mut dyn FnMut(deep::DeepPhase),
    ) -> Result<ServicingEvidence, deep::DeepError>
    + 'a;

/// Inspects, hashes and (when asked) deep-checks a WIM, all in this process.
pub fn verify_image(
    request: &VerifyRequest,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport, VerifyImageError> {
    verify_image_with(request, cancel, progress, &mut deep::collect_evidence)
}

/// [`verify_image`] with the deep check (the third-party WIM parser) run by `deep_check`,
/// such as a [`sandbox::Sandbox`]. recast's own header and XML readers and the hashing stay
/// in this process: they are bounded, safe code.
pub fn verify_image_with(
    request: &VerifyRequest,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(VerifyProgress),
    deep_check: &mut DeepCheck<'_>,
) -> Result<VerifyReport, VerifyImageError> {
    let inspection = inspect(&request.path)?;
    let image = inspection
        .xml
        .image(request.image_index)
        .cloned()
        .ok_or_else(|| VerifyImageError::NoSuchImage {
            path: request.path.clone(),
            index: request.image_index,
            listed: listed(&inspection),
        })?;
    let stream = verify::stream_verify(
        &request.path,
        &inspection.header,
        &verify::StreamOptions {
            expected_sha256: request.expected_sha256.clone(),
            check_integrity: true,
            skip_sha256: false,
        },
        cancel,
        &mut |p| progress(VerifyProgress::Hashing(p)),
    )?;
    let mut problems = Vec::new();
    if stream.sha256_matches == Some(false) {
        problems.push(format!(
            "sha256 is {} but {} was expected: this is not the image the spec names (or it was damaged in transit); download it again or fix spec.sha256",
            stream.sha256,
            request.expected_sha256.as_deref().unwrap_or_default()
        ));
    }
    if let Some(p) = integrity_problem(&request.path, &stream.integrity) {
        problems.push(p);
    }
    // The other parts of a split WIM hold data the image needs: their integrity tables count.
    let parts = inspect::split_parts(&request.path, &inspection.header)?;
    for part in &parts {
        let part_header = inspect(part)?.header;
        let part_stream = verify::stream_verify(
            part,
            &part_header,
            &verify::StreamOptions {
                expected_sha256: None,
                check_integrity: true,
                skip_sha256: true,
            },
            cancel,
            &mut |p| progress(VerifyProgress::Hashing(p)),
        )?;
        if let Some(p) = integrity_problem(part, &part_stream.integrity) {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        return Ok(VerifyReport {
            outcome: Outcome::BytesMismatch,
            inspection,
            image_index: request.image_index,
            stream,
            deep: None,
            problems,
        });
    }
    let deep = if request.deep {
        let evidence = deep_check(
            &request.path,
            request.image_index,
            &deep::DeepOptions {
                split_parts: parts,
                full_verify: request.full_verify,
            },
            cancel,
            &mut |p| progress(VerifyProgress::Deep(p)),
        )?;
        let verdict = servicing::evaluate(&image, &evidence, &request.requirements);
        problems.extend(verdict.failures().map(|c| c.message.clone()));
        Some(verdict)
    } else {
        None
    };
    let outcome = if problems.is_empty() {
        Outcome::Verified
    } else {
        Outcome::RequirementsNotMet
    };
    Ok(VerifyReport {
        outcome,
        inspection,
        image_index: request.image_index,
        stream,
        deep,
        problems,
    })
}

fn integrity_problem(path: &std::path::Path, integrity: &Integrity) -> Option<String> {
    match integrity {
        Integrity::Mismatch { chunk, offset, len } => Some(format!(
            "{}: the integrity table's SHA-1 of chunk {chunk} (bytes {offset}..{}) does not match: the file was damaged after it was written; copy it again",
            path.display(),
            offset + len
        )),
        _ => None,
    }
}

fn listed(inspection: &Inspection) -> String {
    let idx: Vec<String> = inspection
        .xml
        .images
        .iter()
        .map(|i| i.index.to_string())
        .collect();
    if idx.is_empty() {
        "no images".into()
    } else {
        format!("images {}", idx.join(", "))
    }
}
