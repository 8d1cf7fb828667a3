//! `recastctl image inspect|verify|manifest`: golden WIMs checked from their own bytes, with
//! no store or cluster involved (a GitOps pipeline runs these on the build machine).
//!
//! Exit codes of `image verify` and `image manifest`, for pipelines to branch on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | verified: every requested check passed |
//! | 1 | the check could not run (an I/O error mid-way) |
//! | 2 | bad usage or an unreadable file |
//! | 3 | not a valid WIM: truncated, wrong magic, damaged header, XML or integrity table |
//! | 4 | the bytes are wrong: sha256 differs from --sha256, or the integrity table's SHA-1s fail |
//! | 5 | intact, but the image does not meet the requirements (build, KBs, edition, arch) or its XML contradicts its servicing packages |
//! | 130 | interrupted (Ctrl-C) |

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use recast_crds::golden_image::{
    Arch, ArtifactSource, ExpectedImage, GoldenImage, GoldenImageSpec, ImageRequirements,
};
use recast_golden::deep::DeepPhase;
use recast_golden::header::WimHeader;
use recast_golden::servicing::DeepVerdict;
use recast_golden::xml::ImageInfo;
use recast_golden::{
    Build, Inspection, Integrity, Outcome, Requirements, VerifyImageError, VerifyProgress,
    VerifyReport, VerifyRequest, updates,
};
use serde_json::json;

use crate::table;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_MALFORMED: u8 = 3;
pub const EXIT_BYTES_MISMATCH: u8 = 4;
pub const EXIT_REQUIREMENTS: u8 = 5;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageOutput {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Show what a WIM says about itself: header facts and each image's name, edition,
    /// architecture, build.UBR, languages and size (reads two small pieces of the file).
    Inspect {
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ImageOutput,
    },
    /// Check a WIM: its sha256, its integrity table, and that image INDEX's servicing packages
    /// hold the required build and KBs. Exit codes: 0 verified, 1 could not run, 2 bad usage
    /// or unreadable file, 3 not a valid WIM, 4 bytes wrong (sha256 or integrity table),
    /// 5 requirements not met, 130 interrupted.
    Verify {
        file: PathBuf,
        /// Expected sha256 of the whole file (64 hex digits, as sha256sum prints).
        #[arg(long)]
        sha256: Option<String>,
        /// Lowest acceptable build.UBR, such as 26100.7623.
        #[arg(long)]
        min_build: Option<String>,
        /// A KB the image must contain, such as KB5074109 (repeat, or separate with commas).
        #[arg(long = "kb", value_delimiter = ',')]
        kbs: Vec<String>,
        /// Image index to check (1-based).
        #[arg(long, default_value_t = 1)]
        index: u32,
        /// Expected EDITIONID, such as Enterprise.
        #[arg(long)]
        edition: Option<String>,
        /// Expected architecture.
        #[arg(long, value_enum)]
        arch: Option<ArchArg>,
        /// Only the sha256 and integrity table; skip opening the image's servicing packages.
        #[arg(long)]
        no_deep: bool,
        /// Also decompress every resource and check its SHA-1 (reads the whole WIM again).
        #[arg(long)]
        full: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ImageOutput,
    },
    /// Verify a WIM and print a GoldenImage manifest for it, ready to commit: the sha256 it
    /// computed, the facts it read, and requirements taken from what the image proves.
    /// Refuses (with verify's exit codes) when the image fails its checks.
    Manifest {
        file: PathBuf,
        /// Where endpoints' boot service will fetch the WIM from.
        #[arg(long, required = true)]
        url: String,
        /// metadata.name of the GoldenImage.
        #[arg(long, required = true)]
        name: String,
        #[arg(long, default_value_t = 1)]
        index: u32,
        /// Minimum build to require; default: the build the image proves.
        #[arg(long)]
        min_build: Option<String>,
        /// KBs to require; default: the KB of the image's cumulative update when recast knows it.
        #[arg(long = "kb", value_delimiter = ',')]
        kbs: Vec<String>,
        /// Channels to publish to (stable, canary).
        #[arg(long = "channel", value_delimiter = ',')]
        channels: Vec<String>,
    },
    /// Mark a Verified GoldenImage KnownGood by hand, without waiting for its soak. The
    /// reason, who and when are kept on the object; the operator records the change as an
    /// Event.
    Promote {
        name: String,
        /// Why (kept in the recast.dev/known-good-reason annotation and the condition).
        #[arg(long)]
        reason: String,
    },
    /// Withdraw KnownGood by hand; the soak will not promote the image again until someone
    /// promotes it.
    Demote {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// The GoldenImages in the namespace with their verdicts: build, Verified and KnownGood
    /// (with reasons), channels, endpoints Ready on them, and the digest served.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ImageOutput,
    },
    /// The driver sets the GoldenImages (or the one named) declare, by hardware model: the
    /// SMBIOS manufacturer and model each is for, its sha256 and where it comes from. The
    /// boot service serves a set once its sha256 is checked; a machine of a model whose set
    /// it does not hold yet is not imaged.
    Drivers {
        /// Only this GoldenImage.
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ImageOutput,
    },
}

impl ImageCommand {
    /// Whether the command reads or writes GoldenImage objects (the store or the cluster),
    /// rather than only a WIM file.
    pub fn needs_store(&self) -> bool {
        matches!(
            self,
            ImageCommand::Promote { .. }
                | ImageCommand::Demote { .. }
                | ImageCommand::List { .. }
                | ImageCommand::Drivers { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    Amd64,
    Arm64,
}

impl ArchArg {
    fn as_str(self) -> &'static str {
        match self {
            ArchArg::Amd64 => "amd64",
            ArchArg::Arm64 => "arm64",
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// promote, demote and list: the commands on GoldenImage objects.
pub fn run_on_store(
    command: ImageCommand,
    store: &crate::backend::Backend,
    ns: &str,
    now: jiff::Timestamp,
) -> Result<ExitCode, crate::CliError> {
    use recast_crds::golden_image::{KNOWN_GOOD_ANNOTATION, KNOWN_GOOD_REASON_ANNOTATION};
    use recast_crds::manifest::Kind;
    let mark = |name: &str, how: &str, reason: &str| -> Result<(), crate::CliError> {
        if reason.trim().is_empty() {
            return Err(crate::CliError::Usage(format!(
                "--reason must say why the image is {how}"
            )));
        }
        if store.get(Kind::GoldenImage, ns, name)?.is_none() {
            return Err(crate::not_found(Kind::GoldenImage, ns, name));
        }
        let who = std::env::var("USER").unwrap_or_else(|_| "unknown user".into());
        let mut annotations = serde_json::Map::new();
        annotations.insert(KNOWN_GOOD_ANNOTATION.into(), how.into());
        annotations.insert(
            KNOWN_GOOD_REASON_ANNOTATION.into(),
            format!("{} ({who}, {now})", reason.trim()).into(),
        );
        store.set_annotations(Kind::GoldenImage, ns, name, &annotations)?;
        Ok(())
    };
    match command {
        ImageCommand::Promote { name, reason } => {
            mark(&name, "promoted", &reason)?;
            println!(
                "goldenimage.recast.dev/{name} promoted; the operator sets KnownGood=True once the image is Verified (recastctl image list)"
            );
        }
        ImageCommand::Demote { name, reason } => {
            mark(&name, "demoted", &reason)?;
            println!("goldenimage.recast.dev/{name} demoted; KnownGood=False until promoted again");
        }
        ImageCommand::List { output } => {
            let images = store.list(Kind::GoldenImage, Some(ns))?;
            match output {
                ImageOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                ),
                ImageOutput::Table => print!("{}", image_list(&images, now)),
            }
        }
        ImageCommand::Drivers { name, output } => {
            let mut images = store.list(Kind::GoldenImage, Some(ns))?;
            if let Some(name) = &name {
                images
                    .retain(|v| v.pointer("/metadata/name").and_then(|n| n.as_str()) == Some(name));
                if images.is_empty() {
                    return Err(crate::CliError::Failed(format!(
                        "no GoldenImage {name:?} in namespace {ns}; recastctl image list shows them"
                    )));
                }
            }
            let rows = driver_rows(&images);
            match output {
                ImageOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &rows
                            .iter()
                            .map(|r| json!({"image": r.image, "manufacturer": r.manufacturer, "model": r.model, "sha256": r.sha256, "source": r.source}))
                            .collect::<Vec<_>>()
                    )
                    .unwrap_or_default()
                ),
                ImageOutput::Table => print!("{}", driver_list(&rows)),
            }
        }
        _ => unreachable!("file commands run without a store"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One declared driver set, with the image that declares it.
#[derive(Debug, PartialEq)]
pub struct DriverRow {
    pub image: String,
    pub manufacturer: String,
    pub model: String,
    pub sha256: String,
    pub source: String,
}

pub fn driver_rows(images: &[serde_json::Value]) -> Vec<DriverRow> {
    let mut out = Vec::new();
    for v in images {
        let Ok(gi) = serde_json::from_value::<GoldenImage>(v.clone()) else {
            continue;
        };
        for d in &gi.spec.drivers {
            out.push(DriverRow {
                image: gi.metadata.name.clone().unwrap_or_default(),
                manufacturer: d.manufacturer.clone(),
                model: d.model.clone(),
                sha256: d.sha256.clone(),
                source: d
                    .source
                    .url
                    .clone()
                    .or_else(|| d.source.path.clone())
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// The `image drivers` table.
pub fn driver_list(rows: &[DriverRow]) -> String {
    if rows.is_empty() {
        return "No driver sets: machines get the drivers their image carries.\n".into();
    }
    let mut table = vec![
        ["IMAGE", "MANUFACTURER", "MODEL", "SHA256", "SOURCE"]
            .map(String::from)
            .to_vec(),
    ];
    for r in rows {
        table.push(vec![
            r.image.clone(),
            r.manufacturer.clone(),
            r.model.clone(),
            r.sha256.chars().take(12).collect(),
            r.source.clone(),
        ]);
    }
    crate::table::plain(&table)
}

/// The `image list` table. Verified and KnownGood show their reasons, since "False" alone does
/// not say what to do.
pub fn image_list(images: &[serde_json::Value], now: jiff::Timestamp) -> String {
    if images.is_empty() {
        return "No GoldenImages in this namespace.\n".into();
    }
    let text = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let cond = |v: &serde_json::Value, t: &str| {
        v.pointer("/status/conditions")
            .and_then(serde_json::Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(serde_json::Value::as_str) == Some(t))
            })
            .map(|c| format!("{} ({})", text(c, "/status"), text(c, "/reason")))
            .unwrap_or_else(|| "-".into())
    };
    let mut rows = vec![
        [
            "NAME",
            "BUILD",
            "MIN-BUILD",
            "VERIFIED",
            "KNOWNGOOD",
            "CHANNELS",
            "READY",
            "DIGEST",
            "AGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in images {
        let channels = v
            .pointer("/status/channels")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into());
        let digest = text(v, "/status/digest");
        rows.push(vec![
            text(v, "/metadata/name"),
            Some(text(v, "/status/facts/build"))
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "-".into()),
            text(v, "/spec/requirements/minimumBuild"),
            cond(v, "Verified"),
            cond(v, "KnownGood"),
            channels,
            v.pointer("/status/readyEndpoints")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
                .to_string(),
            if digest.is_empty() {
                "-".into()
            } else {
                digest.chars().take(12).collect()
            },
            crate::table::age(&text(v, "/metadata/creationTimestamp"), now),
        ]);
    }
    crate::table::plain(&rows)
}

pub fn run(command: ImageCommand, namespace: &str) -> ExitCode {
    let result = match command {
        ImageCommand::Inspect { file, output } => inspect(&file, output),
        ImageCommand::Verify {
            file,
            sha256,
            min_build,
            kbs,
            index,
            edition,
            arch,
            no_deep,
            full,
            output,
        } => requirements(min_build.as_deref(), &kbs, edition, arch)
            .and_then(|req| check_sha256_arg(sha256.as_deref()).map(|()| req))
            .and_then(|req| {
                verify(
                    VerifyRequest {
                        path: file,
                        image_index: index,
                        expected_sha256: sha256.map(|s| s.to_ascii_lowercase()),
                        requirements: req,
                        deep: !no_deep,
                        full_verify: full,
                    },
                    output,
                )
            }),
        ImageCommand::Manifest {
            file,
            url,
            name,
            index,
            min_build,
            kbs,
            channels,
        } => manifest(ManifestArgs {
            file,
            url,
            name,
            namespace: namespace.to_string(),
            index,
            min_build,
            kbs,
            channels,
        }),
        ImageCommand::Promote { .. }
        | ImageCommand::Demote { .. }
        | ImageCommand::List { .. }
        | ImageCommand::Drivers { .. } => {
            unreachable!("store commands run through run_on_store")
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            let prefix = if std::io::stderr().is_terminal() {
                "\x1b[31merror:\x1b[0m"
            } else {
                "error:"
            };
            eprintln!("{prefix} {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn requirements(
    min_build: Option<&str>,
    kbs: &[String],
    edition: Option<String>,
    arch: Option<ArchArg>,
) -> Result<Requirements, Failure> {
    let min_build = min_build
        .map(Build::parse)
        .transpose()
        .map_err(|e| fail(EXIT_USAGE, format!("--min-build: {e}")))?;
    let mut required_kbs = Vec::new();
    for kb in kbs.iter().filter(|k| !k.trim().is_empty()) {
        let norm = updates::normalize_kb(kb).ok_or_else(|| {
            fail(
                EXIT_USAGE,
                format!("--kb: {kb:?} is not a KB number such as KB5074109"),
            )
        })?;
        if !required_kbs.contains(&norm) {
            required_kbs.push(norm);
        }
    }
    Ok(Requirements {
        min_build,
        required_kbs,
        expected_edition: edition,
        expected_arch: arch.map(|a| a.as_str().to_string()),
    })
}

fn check_sha256_arg(sha: Option<&str>) -> Result<(), Failure> {
    match sha {
        Some(s) if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) => Err(fail(
            EXIT_USAGE,
            format!("--sha256 {s:?} is not 64 hex digits (as sha256sum prints)"),
        )),
        _ => Ok(()),
    }
}

fn inspect(file: &Path, output: ImageOutput) -> Result<u8, Failure> {
    let ins = recast_golden::inspect(file).map_err(inspect_failure)?;
    match output {
        ImageOutput::Json => println!("{}", serde_json::to_string_pretty(&ins).unwrap_or_default()),
        ImageOutput::Table => print!("{}", inspection_text(&ins)),
    }
    Ok(0)
}

fn inspect_failure(e: recast_golden::inspect::InspectError) -> Failure {
    match e {
        recast_golden::inspect::InspectError::Io { .. } => fail(EXIT_USAGE, e.to_string()),
        other => fail(EXIT_MALFORMED, other.to_string()),
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn header_lines(path: &Path, size: u64, h: &WimHeader) -> Vec<Vec<String>> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut rows = vec![
        vec!["File:".into(), path.display().to_string()],
        vec![
            "Size:".into(),
            format!("{} ({size} bytes)", human_bytes(size)),
        ],
        vec!["GUID:".into(), h.guid.clone()],
        vec![
            "Format:".into(),
            format!(
                "WIM version {:#x}{}, {} compression{}",
                h.version,
                if h.is_solid() { " (solid)" } else { "" },
                h.compression,
                if h.compression == recast_golden::header::Compression::None {
                    String::new()
                } else {
                    format!(", {} chunks", human_bytes(h.chunk_size as u64))
                }
            ),
        ],
        vec![
            "Part:".into(),
            format!("{} of {}", h.part_number, h.total_parts),
        ],
        vec!["Images:".into(), h.image_count.to_string()],
        vec![
            "Boot index:".into(),
            if h.boot_index == 0 {
                "none".into()
            } else {
                h.boot_index.to_string()
            },
        ],
        vec!["Integrity table:".into(), yes_no(h.has_integrity_table())],
    ];
    if !h.flag_names().is_empty() {
        rows.push(vec!["Flags:".into(), h.flag_names().join(" ")]);
    }
    rows
}

fn inspection_text(ins: &Inspection) -> String {
    let mut out = table::plain(&header_lines(&ins.path, ins.file_size, &ins.header));
    out.push('\n');
    let mut rows = vec![
        [
            "INDEX",
            "NAME",
            "EDITION",
            "ARCH",
            "BUILD",
            "UPDATE",
            "LANGUAGES",
            "TYPE",
            "SIZE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for img in &ins.xml.images {
        rows.push(image_row(img));
    }
    out.push_str(&table::plain(&rows));
    if ins.xml.images.is_empty() {
        out.push_str("(the XML lists no images)\n");
    }
    out
}

fn image_row(img: &ImageInfo) -> Vec<String> {
    let dash = || "-".to_string();
    let build = img
        .build_ubr()
        .map(|b| b.to_string())
        .or_else(|| img.build.map(|b| b.to_string()))
        .unwrap_or_else(dash);
    // The XML's claim only: `image verify` checks it against the packages.
    let update = img
        .build_ubr()
        .and_then(updates::by_build)
        .map(|u| u.kb.to_string())
        .unwrap_or_else(dash);
    vec![
        img.index.to_string(),
        img.name.clone().unwrap_or_else(dash),
        img.edition.clone().unwrap_or_else(dash),
        img.arch()
            .map(String::from)
            .or(img.arch_code.map(|c| format!("code {c}")))
            .unwrap_or_else(dash),
        build,
        update,
        if img.languages.is_empty() {
            dash()
        } else {
            img.languages.join(",")
        },
        img.installation_type.clone().unwrap_or_else(dash),
        img.total_bytes.map(human_bytes).unwrap_or_else(dash),
    ]
}

/// Ctrl-C sets the flag; the check stops at its next read or extraction checkpoint.
fn cancel_on_interrupt() -> (Arc<AtomicBool>, Option<tokio::runtime::Runtime>) {
    let flag = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()
        .ok();
    if let Some(rt) = &runtime {
        let f = flag.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                f.store(true, Ordering::Relaxed);
            }
        });
    }
    (flag, runtime)
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:<28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn run_verify(request: &VerifyRequest) -> Result<VerifyReport, Failure> {
    let (cancel, _runtime) = cancel_on_interrupt();
    let bar = progress_bar();
    let result = recast_golden::verify_image(request, &cancel, &mut |p| match p {
        VerifyProgress::Hashing(h) => {
            if bar.length() != Some(h.total) {
                bar.set_length(h.total);
                bar.set_message("sha256 + integrity table");
            }
            bar.set_position(h.done);
        }
        VerifyProgress::Deep(phase) => {
            bar.set_message(match phase {
                DeepPhase::Opening => "opening image".to_string(),
                DeepPhase::FullVerify => "full verification".to_string(),
                DeepPhase::Extracting => "reading servicing packages".to_string(),
                DeepPhase::Reading { done, total } => format!("manifests {done}/{total}"),
            });
            bar.tick();
        }
    });
    bar.finish_and_clear();
    result.map_err(|e| {
        let code = if e.is_cancelled() {
            EXIT_INTERRUPTED
        } else if matches!(
            e,
            VerifyImageError::Deep(recast_golden::deep::DeepError::NotWindows { .. })
        ) {
            // A valid WIM, but no installed Windows in it: not fit to be a golden image.
            EXIT_REQUIREMENTS
        } else if e.is_malformed() {
            EXIT_MALFORMED
        } else if matches!(
            e,
            VerifyImageError::Inspect(recast_golden::inspect::InspectError::Io { .. })
                | VerifyImageError::NoSuchImage { .. }
                | VerifyImageError::Deep(recast_golden::deep::DeepError::NoSuchImage { .. })
                | VerifyImageError::Split(_)
        ) {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        };
        fail(code, e.to_string())
    })
}

fn outcome_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Verified => 0,
        Outcome::BytesMismatch => EXIT_BYTES_MISMATCH,
        Outcome::RequirementsNotMet => EXIT_REQUIREMENTS,
    }
}

fn verify(request: VerifyRequest, output: ImageOutput) -> Result<u8, Failure> {
    let report = run_verify(&request)?;
    let code = outcome_code(report.outcome);
    match output {
        ImageOutput::Json => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("exitCode".into(), json!(code));
                // The shape of GoldenImage status.facts, for pipelines that record it.
                obj.insert(
                    "facts".into(),
                    serde_json::to_value(recast_golden::spec::facts(&report)).unwrap_or_default(),
                );
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        ImageOutput::Table => print!("{}", report_text(&report, &request)),
    }
    Ok(code)
}

fn report_text(r: &VerifyReport, req: &VerifyRequest) -> String {
    let image = r.inspection.xml.image(r.image_index);
    let mut rows = vec![
        vec!["File:".into(), r.inspection.path.display().to_string()],
        vec![
            "Image:".into(),
            format!(
                "{} ({})",
                r.image_index,
                image.and_then(|i| i.name.clone()).unwrap_or_default()
            ),
        ],
        vec![
            "sha256:".into(),
            format!(
                "{} {}",
                r.stream.sha256,
                match r.stream.sha256_matches {
                    Some(true) => "(matches --sha256)",
                    Some(false) => "(DIFFERS from --sha256)",
                    None => "(no --sha256 given)",
                }
            ),
        ],
        vec![
            "Integrity:".into(),
            match &r.stream.integrity {
                Integrity::Ok { chunks, chunk_size } => format!(
                    "ok, {chunks} chunk(s) of {}",
                    human_bytes(*chunk_size as u64)
                ),
                Integrity::Absent => "no integrity table (captured without --check)".into(),
                Integrity::Skipped => "not checked".into(),
                Integrity::Mismatch { chunk, offset, len } => format!(
                    "MISMATCH in chunk {chunk} (bytes {offset}..{})",
                    offset + len
                ),
            },
        ],
    ];
    if let Some(d) = &r.deep {
        rows.extend(deep_rows(d));
    } else if req.deep && r.outcome == Outcome::BytesMismatch {
        rows.push(vec![
            "Packages:".into(),
            "not read: the bytes are not the expected ones".into(),
        ]);
    }
    let mut out = table::plain(&rows);
    if let Some(d) = &r.deep {
        for c in &d.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            out.push_str(&format!("  {mark} {}\n", c.message));
        }
    }
    match r.outcome {
        Outcome::Verified => out.push_str("VERIFIED\n"),
        Outcome::BytesMismatch => out.push_str(&format!(
            "NOT VERIFIED (the bytes are wrong):\n{}",
            r.problems
                .iter()
                .map(|p| format!("  - {p}\n"))
                .collect::<String>()
        )),
        Outcome::RequirementsNotMet => out.push_str(&format!(
            "NOT VERIFIED (requirements not met):\n{}",
            r.problems
                .iter()
                .map(|p| format!("  - {p}\n"))
                .collect::<String>()
        )),
    }
    out
}

fn deep_rows(d: &DeepVerdict) -> Vec<Vec<String>> {
    let b = |v: Option<Build>| v.map_or("-".to_string(), |b| b.to_string());
    let mut rows = vec![
        vec![
            "RollupFix:".into(),
            d.rollup_package.clone().unwrap_or_else(|| "none".into()),
        ],
        vec![
            "Build:".into(),
            format!(
                "{} from the packages, {} in the XML",
                b(d.installed_build),
                b(d.xml_build)
            ),
        ],
    ];
    if let Some(m) = &d.boot_manager {
        rows.push(vec![
            "Boot manager:".into(),
            recast_core::boot_manager::summary(m),
        ]);
    }
    rows
}

struct ManifestArgs {
    file: PathBuf,
    url: String,
    name: String,
    namespace: String,
    index: u32,
    min_build: Option<String>,
    kbs: Vec<String>,
    channels: Vec<String>,
}

fn manifest(a: ManifestArgs) -> Result<u8, Failure> {
    let req = requirements(a.min_build.as_deref(), &a.kbs, None, None)?;
    let request = VerifyRequest {
        path: a.file.clone(),
        image_index: a.index,
        expected_sha256: None,
        requirements: req.clone(),
        deep: true,
        full_verify: false,
    };
    let report = run_verify(&request)?;
    if report.outcome != Outcome::Verified {
        return Err(fail(
            outcome_code(report.outcome),
            format!(
                "{} image {} is not fit to be a golden image, so no manifest was written:\n{}",
                a.file.display(),
                a.index,
                report
                    .problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        ));
    }
    let deep = report.deep.as_ref();
    let installed = deep.and_then(|d| d.installed_build);
    let Some(installed) = installed else {
        return Err(fail(
            EXIT_REQUIREMENTS,
            "the image has no installed cumulative update, so there is no build to require",
        ));
    };
    let min_build = req.min_build.unwrap_or(installed);
    let required_kbs = if req.required_kbs.is_empty() {
        updates::by_build(installed)
            .map(|u| vec![u.kb.to_string()])
            .unwrap_or_default()
    } else {
        req.required_kbs.clone()
    };
    let image = report.inspection.xml.image(a.index);
    let arch = match image.and_then(|i| i.arch()) {
        Some("amd64") => Some(Arch::Amd64),
        Some("arm64") => Some(Arch::Arm64),
        _ => None,
    };
    let edition = image.and_then(|i| i.edition.clone());
    let spec = GoldenImageSpec {
        drivers: vec![],
        source: ArtifactSource {
            url: Some(a.url.clone()),
            path: None,
        },
        sha256: report.stream.sha256.clone(),
        image_index: a.index,
        expected: (edition.is_some() || arch.is_some()).then_some(ExpectedImage { edition, arch }),
        requirements: ImageRequirements {
            minimum_build: min_build.to_string(),
            required_kbs: required_kbs.clone(),
        },
        channels: a.channels.clone(),
        canary_channels: vec![],
        promotion: None,
    };
    let mut gi = GoldenImage::new(&a.name, spec);
    if a.namespace != recast_crds::DEFAULT_NAMESPACE {
        gi.metadata.namespace = Some(a.namespace.clone());
    }
    let value = serde_json::to_value(&gi).map_err(|e| fail(EXIT_FAILED, e.to_string()))?;
    if let Err(e) = recast_crds::validate::admit(&value, None) {
        return Err(fail(
            EXIT_USAGE,
            format!("the manifest would be refused by the API: {e}"),
        ));
    }
    let yaml = serde_yaml::to_string(&value).map_err(|e| fail(EXIT_FAILED, e.to_string()))?;
    let file_name = a
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kb_note = if required_kbs.is_empty() {
        String::new()
    } else {
        format!(", contains {}", required_kbs.join(", "))
    };
    print!(
        "# Generated by `recastctl image manifest` from {file_name}: image {} ({}), build {installed}{kb_note}.\n\
         # Verified from the WIM's own bytes (sha256, integrity table, servicing packages). Add a\n\
         # promotion and channels before committing if this site needs them.\n{yaml}",
        a.index,
        image.and_then(|i| i.name.clone()).unwrap_or_default(),
    );
    Ok(0)
}
