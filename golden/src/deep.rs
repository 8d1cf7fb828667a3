//! The deep check's shell: opens the WIM with the `wim` crate, extracts the image's
//! `Windows\servicing\Packages` directory (only that) into a private temporary directory, and
//! collects the servicing evidence that [`crate::servicing::evaluate`] judges.
//!
//! The `wim` crate has no public directory listing, so the directory is extracted; that costs
//! the size of the manifests (tens of MiB on a real image) on disk, not in memory, and the
//! temporary directory is removed on every path out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::deployable::{
    self, DeploymentFacts, HiveState, MAX_HIVE_BYTES, SOFTWARE_HIVE, SYSTEM_HIVE,
};
use crate::servicing::{
    MAX_MUM_BYTES, MAX_SESSION_LOG_BYTES, ServicingEvidence, SessionLog, kb_from_package_name,
    kbs_in_manifest, parse_rollup_name, updates_in_session_log,
};

/// The directory every Windows image keeps its installed-package manifests in.
pub const PACKAGES_DIR: &str = "Windows/servicing/Packages";
/// The servicing stack's log of every package it installed.
pub const SESSION_LOG: &str = "Windows/servicing/Sessions/Sessions.xml";
/// More manifests than any Windows image holds (a fully serviced one has a few thousand).
pub const MAX_MANIFESTS: usize = 200_000;

/// wimlib's error code for a path that is not in the image.
const WIMLIB_ERR_PATH_DOES_NOT_EXIST: i32 = 49;
/// wimlib's error code for an operation stopped by its progress callback.
const WIMLIB_ERR_ABORTED_BY_PROGRESS: i32 = 76;

#[derive(Debug, thiserror::Error)]
pub enum DeepError {
    #[error(
        "{path}: the wim library cannot open it ({source}); run `wimlib-imagex verify` on it, and copy it again if that fails too"
    )]
    Open { path: PathBuf, source: wim::Error },
    #[error("{path}: cannot attach split part {part}: {source}")]
    Reference {
        path: PathBuf,
        part: PathBuf,
        source: wim::Error,
    },
    #[error(
        "{path}: image {index} does not exist (the WIM has {count}); pick an index that `recastctl image inspect` lists"
    )]
    NoSuchImage {
        path: PathBuf,
        index: u32,
        count: u32,
    },
    #[error(
        "{path}: image {index} has no Windows\\servicing\\Packages directory: it is not an installed Windows image (a WinPE or data image?)"
    )]
    NotWindows { path: PathBuf, index: u32 },
    #[error(
        "{path}: extracting Windows\\servicing\\Packages of image {index} failed: {source}; the image is damaged (run `wimlib-imagex verify`)"
    )]
    Extract {
        path: PathBuf,
        index: u32,
        source: wim::Error,
    },
    #[error(
        "{path}: the wim library's full verification failed: {source}; the image's data is damaged, copy or rebuild it"
    )]
    Verify { path: PathBuf, source: wim::Error },
    #[error(
        "cannot use a temporary directory for the deep check: {0}; set TMPDIR to a writable directory with room for the image's manifests"
    )]
    Temp(#[source] std::io::Error),
    #[error("cannot read the extracted manifest {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: image {index} holds more than {MAX_MANIFESTS} package manifests: refused as hostile"
    )]
    TooManyManifests { path: PathBuf, index: u32 },
    #[error("{0}")]
    Manifest(#[from] crate::servicing::ManifestError),
    #[error("the deep check of {path} was cancelled")]
    Cancelled { path: PathBuf },
    #[error(
        "{path}: the wim library crashed while reading image {index}; the file is damaged or hostile: run `wimlib-imagex verify` on it, and rebuild it"
    )]
    LibraryPanicked { path: PathBuf, index: u32 },
    /// The sandboxed child ([`crate::sandbox`]) reported one of the errors above; `kind` keeps
    /// its class so the verdict is the same as in-process.
    #[error("{message}")]
    Child {
        kind: DeepFailureKind,
        message: String,
    },
    #[error(
        "{path}: the sandboxed deep check of image {index} was killed: {why}; a WIM that does this is damaged or hostile: run `wimlib-imagex verify` on it and rebuild it (a genuine image that needs more: raise the operator's --deep-check-* limits)"
    )]
    Killed {
        path: PathBuf,
        index: u32,
        why: crate::sandbox::KillReason,
    },
    #[error(
        "cannot run the sandboxed deep check ({program}): {message}; check that the operator binary is intact and TMPDIR is writable"
    )]
    Sandbox { program: PathBuf, message: String },
}

/// The class of a deep-check failure: what it means for the image's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeepFailureKind {
    /// The WIM is not a readable, well-formed archive.
    Malformed,
    /// The image has no servicing store.
    NotWindows,
    Cancelled,
    /// Killed by the sandbox (memory, CPU, time, a crash): refused like a malformed file.
    Killed,
    /// Anything else (I/O, temporary space, a missing image or split part): worth a retry.
    Other,
}

impl DeepError {
    pub fn kind(&self) -> DeepFailureKind {
        match self {
            DeepError::Open { .. }
            | DeepError::Extract { .. }
            | DeepError::Verify { .. }
            | DeepError::Manifest(_)
            | DeepError::TooManyManifests { .. }
            | DeepError::LibraryPanicked { .. } => DeepFailureKind::Malformed,
            DeepError::NotWindows { .. } => DeepFailureKind::NotWindows,
            DeepError::Cancelled { .. } => DeepFailureKind::Cancelled,
            DeepError::Killed { .. } => DeepFailureKind::Killed,
            DeepError::Child { kind, .. } => *kind,
            DeepError::Reference { .. }
            | DeepError::NoSuchImage { .. }
            | DeepError::Temp(_)
            | DeepError::Read { .. }
            | DeepError::Sandbox { .. } => DeepFailureKind::Other,
        }
    }
}

/// Phases of the deep check, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeepPhase {
    Opening,
    FullVerify,
    Extracting,
    Reading { done: usize, total: usize },
}

#[derive(Debug, Clone, Default)]
pub struct DeepOptions {
    /// Other parts of a split WIM (from [`crate::inspect::split_parts`]).
    pub split_parts: Vec<PathBuf>,
    /// Also run the wim library's full verification (decompress every resource and check its
    /// SHA-1). Reads and decompresses the whole WIM.
    pub full_verify: bool,
}

/// Collects the servicing evidence of image `index` (1-based).
pub fn collect_evidence(
    path: &Path,
    index: u32,
    options: &DeepOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(DeepPhase),
) -> Result<ServicingEvidence, DeepError> {
    // The WIM is untrusted input to a third-party parser: should it panic, the operator's
    // reconcile loop must get an error for this image, not lose its thread.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        collect_evidence_inner(path, index, options, cancel, progress)
    }))
    .unwrap_or_else(|_| {
        Err(DeepError::LibraryPanicked {
            path: path.to_path_buf(),
            index,
        })
    })
}

fn collect_evidence_inner(
    path: &Path,
    index: u32,
    options: &DeepOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(DeepPhase),
) -> Result<ServicingEvidence, DeepError> {
    let cancelled = || cancel.load(Ordering::Relaxed);
    let cancel_err = || DeepError::Cancelled {
        path: path.to_path_buf(),
    };
    progress(DeepPhase::Opening);
    let mut archive = wim::Wim::open_with_cancel(path, wim::OpenOptions::default(), cancelled)
        .map_err(|source| match source {
            wim::Error::Engine(WIMLIB_ERR_ABORTED_BY_PROGRESS) => cancel_err(),
            source => DeepError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
    if !options.split_parts.is_empty() {
        archive
            .reference_resource_files(&options.split_parts)
            .map_err(|source| DeepError::Reference {
                path: path.to_path_buf(),
                part: options.split_parts[0].clone(),
                source,
            })?;
    }
    let info = archive.info().map_err(|source| DeepError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let image = wim::ImageIndex::try_from(index)
        .ok()
        .filter(|i| i.get() <= info.image_count)
        .ok_or(DeepError::NoSuchImage {
            path: path.to_path_buf(),
            index,
            count: info.image_count,
        })?;
    if options.full_verify {
        progress(DeepPhase::FullVerify);
        archive
            .verify_with_cancel(cancelled)
            .map_err(|source| match source {
                wim::Error::Engine(WIMLIB_ERR_ABORTED_BY_PROGRESS) => cancel_err(),
                source => DeepError::Verify {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
    }
    if cancelled() {
        return Err(cancel_err());
    }
    progress(DeepPhase::Extracting);
    let scratch = tempfile::Builder::new()
        .prefix("recast-golden-")
        .tempdir()
        .map_err(DeepError::Temp)?;
    let extracted = archive
        .extract_path_case_insensitive_with_cancel(image, PACKAGES_DIR, scratch.path(), cancelled)
        .map_err(|source| match source {
            wim::Error::Engine(WIMLIB_ERR_PATH_DOES_NOT_EXIST) => DeepError::NotWindows {
                path: path.to_path_buf(),
                index,
            },
            wim::Error::Engine(WIMLIB_ERR_ABORTED_BY_PROGRESS) => cancel_err(),
            source => DeepError::Extract {
                path: path.to_path_buf(),
                index,
                source,
            },
        })?;
    let evidence =
        read_packages_dir(path, index, &extracted, cancel, progress).and_then(|mut e| {
            e.boot_manager = Some(read_boot_manager(
                path,
                index,
                &mut archive,
                image,
                scratch.path(),
                cancelled,
            )?);
            e.session_log =
                read_session_log(path, index, &mut archive, image, scratch.path(), cancelled)?;
            e.deployment = Some(read_deployment(
                path,
                index,
                &mut archive,
                image,
                scratch.path(),
                cancelled,
            )?);
            Ok(e)
        });
    // Dropping `scratch` removes the directory; errors there must not hide the result.
    drop(scratch);
    evidence
}

/// What extracting one file of the image gave.
enum OneFile {
    /// The image has no such file.
    Absent,
    /// Larger than the caller's bound: not read.
    TooLarge(u64),
    Read(Vec<u8>),
}

/// Extracts the file `inner` of the image alone into `scratch/dest_name` and reads it when it
/// is at most `max_bytes`.
#[allow(clippy::too_many_arguments)]
fn read_one_file(
    path: &Path,
    index: u32,
    archive: &mut wim::Wim,
    image: wim::ImageIndex,
    scratch: &Path,
    dest_name: &str,
    inner: &str,
    max_bytes: u64,
    cancelled: impl FnMut() -> bool,
) -> Result<OneFile, DeepError> {
    let dest = scratch.join(dest_name);
    let extracted =
        match archive.extract_path_case_insensitive_with_cancel(image, inner, &dest, cancelled) {
            Ok(p) => p,
            Err(wim::Error::Engine(WIMLIB_ERR_PATH_DOES_NOT_EXIST)) => return Ok(OneFile::Absent),
            Err(wim::Error::Engine(WIMLIB_ERR_ABORTED_BY_PROGRESS)) => {
                return Err(DeepError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(DeepError::Extract {
                    path: path.to_path_buf(),
                    index,
                    source,
                });
            }
        };
    let read_err = |source| DeepError::Read {
        file: extracted.clone(),
        source,
    };
    let len = std::fs::metadata(&extracted).map_err(read_err)?.len();
    if len > max_bytes {
        return Ok(OneFile::TooLarge(len));
    }
    Ok(OneFile::Read(std::fs::read(&extracted).map_err(read_err)?))
}

/// The image's UEFI boot manager, extracted alone (a few MiB) and read as firmware would.
fn read_boot_manager(
    path: &Path,
    index: u32,
    archive: &mut wim::Wim,
    image: wim::ImageIndex,
    scratch: &Path,
    cancelled: impl FnMut() -> bool,
) -> Result<recast_core::boot_manager::BootManagerFacts, DeepError> {
    use recast_core::boot_manager::{MAX_BOOT_MANAGER_BYTES, UEFI_BOOT_MANAGER, facts_of};
    Ok(
        match read_one_file(
            path,
            index,
            archive,
            image,
            scratch,
            "boot-manager",
            UEFI_BOOT_MANAGER,
            MAX_BOOT_MANAGER_BYTES,
            cancelled,
        )? {
            OneFile::Absent => facts_of(None),
            OneFile::TooLarge(len) => recast_core::boot_manager::BootManagerFacts {
                problem: Some(format!(
                    "it is {len} bytes, more than any boot manager ({MAX_BOOT_MANAGER_BYTES}): not read"
                )),
                ..Default::default()
            },
            OneFile::Read(bytes) => facts_of(Some(&bytes)),
        },
    )
}

/// The servicing log, extracted alone: which KB each installed cumulative update was, kept
/// after a component cleanup removed the superseded manifests.
fn read_session_log(
    path: &Path,
    index: u32,
    archive: &mut wim::Wim,
    image: wim::ImageIndex,
    scratch: &Path,
    cancelled: impl FnMut() -> bool,
) -> Result<SessionLog, DeepError> {
    Ok(
        match read_one_file(
            path,
            index,
            archive,
            image,
            scratch,
            "sessions",
            SESSION_LOG,
            MAX_SESSION_LOG_BYTES,
            cancelled,
        )? {
            OneFile::Absent => SessionLog::Absent,
            OneFile::TooLarge(bytes) => SessionLog::TooLarge { bytes },
            OneFile::Read(bytes) => updates_in_session_log(&bytes),
        },
    )
}

/// The offline SOFTWARE and SYSTEM hives, each extracted alone and read by recast's bounded
/// hive reader.
fn read_deployment(
    path: &Path,
    index: u32,
    archive: &mut wim::Wim,
    image: wim::ImageIndex,
    scratch: &Path,
    mut cancelled: impl FnMut() -> bool,
) -> Result<DeploymentFacts, DeepError> {
    let mut facts = DeploymentFacts::default();
    let mut read = |dest: &str, inner: &str| -> Result<Result<Vec<u8>, HiveState>, DeepError> {
        Ok(
            match read_one_file(
                path,
                index,
                archive,
                image,
                scratch,
                dest,
                inner,
                MAX_HIVE_BYTES,
                &mut cancelled,
            )? {
                OneFile::Absent => Err(HiveState::Absent),
                OneFile::TooLarge(bytes) => Err(HiveState::TooLarge { bytes }),
                OneFile::Read(bytes) => Ok(bytes),
            },
        )
    };
    match read("software", SOFTWARE_HIVE)? {
        Ok(bytes) => match deployable::read_software(&bytes) {
            Ok((state, edition)) => {
                facts.image_state = state;
                facts.edition_id = edition;
            }
            Err(e) => facts.software = HiveState::Unreadable { why: e.to_string() },
        },
        Err(state) => facts.software = state,
    }
    // The SOFTWARE hive's extracted copy goes before the SYSTEM hive is extracted beside it.
    let _ = std::fs::remove_file(scratch.join("software"));
    match read("system", SYSTEM_HIVE)? {
        Ok(bytes) => match deployable::read_system(&bytes) {
            Ok((arch, services)) => {
                facts.processor_architecture = arch;
                facts.agent_services = services;
            }
            Err(e) => facts.system = HiveState::Unreadable { why: e.to_string() },
        },
        Err(state) => facts.system = state,
    }
    Ok(facts)
}

/// Builds the evidence from an extracted Packages directory.
pub fn read_packages_dir(
    wim_path: &Path,
    index: u32,
    dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(DeepPhase),
) -> Result<ServicingEvidence, DeepError> {
    let read_err = |file: &Path, source| DeepError::Read {
        file: file.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        if !entry
            .file_type()
            .map_err(|e| read_err(&entry.path(), e))?
            .is_file()
        {
            continue;
        }
        if names.len() >= MAX_MANIFESTS {
            return Err(DeepError::TooManyManifests {
                path: wim_path.to_path_buf(),
                index,
            });
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut evidence = ServicingEvidence {
        manifest_count: names
            .iter()
            .filter(|n| n.to_ascii_lowercase().ends_with(".mum"))
            .count(),
        ..Default::default()
    };
    let rollup_total = names
        .iter()
        .filter(|n| parse_rollup_name(n).is_some())
        .count();
    let mut done = 0;
    for name in &names {
        if cancel.load(Ordering::Relaxed) {
            return Err(DeepError::Cancelled {
                path: wim_path.to_path_buf(),
            });
        }
        if let Some(kb) = kb_from_package_name(name)
            && !evidence.kb_packages.contains(&kb)
        {
            evidence.kb_packages.push(kb);
        }
        let Some(mut rollup) = parse_rollup_name(name) else {
            continue;
        };
        let file = dir.join(name);
        let bytes = read_capped(&file, MAX_MUM_BYTES).map_err(|e| read_err(&file, e))?;
        rollup.kbs = kbs_in_manifest(name, &bytes)?;
        evidence.rollups.push(rollup);
        done += 1;
        progress(DeepPhase::Reading {
            done,
            total: rollup_total,
        });
    }
    evidence.rollups.sort_by_key(|r| std::cmp::Reverse(r.build));
    evidence.kb_packages.sort();
    Ok(evidence)
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {cap} a servicing manifest can be"),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(cap).read_to_end(&mut out)?;
    Ok(out)
}
