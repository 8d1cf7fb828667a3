//! `recastctl wave`: create, plan, follow and steer reimage waves.
//!
//! Exit codes (on top of main.rs's 0/1/2): `wave status` ends with the wave's phase, so a
//! script can wait on it: 0 Succeeded or still moving, 3 Failed, 4 Aborted, 5 waiting for a
//! person (AwaitingApproval or Paused). `wave status --watch` returns only once the wave has
//! ended (0, 3 or 4).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use recast_core::wave::{self as planner, Candidate};
use recast_crds::Endpoint;
use recast_crds::manifest::Kind;
use recast_crds::wave::{ReimageWave, ReimageWaveSpec, WaveBatch, WavePhase};
use recast_operator::manifests;
use serde_json::{Value, json};

use crate::backend::Backend;
use crate::{CliError, not_found, table};

pub const EXIT_FAILED: u8 = 3;
pub const EXIT_ABORTED: u8 = 4;
pub const EXIT_NEEDS_A_PERSON: u8 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(Subcommand)]
pub enum WaveCommand {
    /// Create a wave from flags, or from files (-f) holding ReimageWave documents.
    Create {
        /// Name of the new wave (with flags; a file names its own).
        name: Option<String>,
        #[arg(short = 'f', long = "filename", conflicts_with = "name")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// The waves of the namespace.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Progress of a wave: per batch and overall, with counts and an ETA.
    Status {
        name: String,
        /// Keep redrawing until the wave ends (exit 0 Succeeded, 3 Failed, 4 Aborted).
        #[arg(short = 'w', long)]
        watch: bool,
        /// Seconds between redraws with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Dry run: which endpoints, in which batches, what is skipped and why. Plans an existing
    /// wave (its stored plan once it has one), or one described by flags or -f.
    Plan {
        name: Option<String>,
        #[arg(short = 'f', long = "filename", conflicts_with = "name")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        spec: SpecArgs,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Start no new batch or attempt; running attempts finish.
    Pause { name: String },
    /// Let a paused wave go on.
    Resume { name: String },
    /// Stop the wave for good: no new attempt starts, running ones finish.
    Abort { name: String },
    /// Approve a wave that requires approval (spec.requireApproval).
    Approve {
        name: String,
        /// Who approves, for the audit trail. Default: $USER.
        #[arg(long)]
        by: Option<String>,
    },
}

/// A wave's spec as flags.
#[derive(Args, Default, Clone)]
pub struct SpecArgs {
    /// Which endpoints, as kubectl writes selectors: "ring=pilot,site in (berlin,paris),!legacy".
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// GoldenImage to move the endpoints onto.
    #[arg(long)]
    image: Option<String>,
    /// Why, for the audit trail.
    #[arg(long)]
    reason: Option<String>,
    /// Endpoints per batch: a count or a percentage (rounded up).
    #[arg(long, conflicts_with = "max_unavailable")]
    batch_size: Option<String>,
    /// Endpoints down at once: a count or a percentage (rounded down, at least 1).
    #[arg(long)]
    max_unavailable: Option<String>,
    /// Failures tolerated before the wave stops: a count or a percentage (rounded down).
    #[arg(long)]
    max_failures: Option<String>,
    /// Size of a first, canary batch that must fully succeed.
    #[arg(long)]
    canary: Option<String>,
    /// Wait between batches, such as 15m.
    #[arg(long)]
    pause_between_batches: Option<String>,
    /// Start batches only in a window opening at this local time (HH:MM).
    #[arg(long, requires = "window_duration")]
    window_start: Option<String>,
    /// How long the window stays open, such as 6h.
    #[arg(long, requires = "window_start")]
    window_duration: Option<String>,
    /// Days the window opens (Mon,Tue,...); default every day.
    #[arg(long, value_delimiter = ',', requires = "window_start")]
    window_days: Vec<String>,
    /// IANA time zone of the window, such as Europe/Berlin (default UTC).
    #[arg(long, requires = "window_start")]
    window_time_zone: Option<String>,
    /// Hold the wave until `recastctl wave approve`.
    #[arg(long)]
    require_approval: bool,
}

fn amount(s: &str) -> IntOrString {
    match s.parse::<i32>() {
        Ok(n) => IntOrString::Int(n),
        Err(_) => IntOrString::String(s.to_string()),
    }
}

impl SpecArgs {
    fn is_empty(&self) -> bool {
        self.selector.is_none() && self.image.is_none() && self.reason.is_none()
    }

    /// The ReimageWave document these flags describe.
    fn document(&self, name: &str) -> Result<Value, CliError> {
        let missing = |flag: &str| {
            CliError::Usage(format!(
                "--{flag} is required to create a wave from flags (or use -f FILE)"
            ))
        };
        let selector = parse_selector(
            self.selector
                .as_deref()
                .ok_or_else(|| missing("selector"))?,
        )
        .map_err(CliError::Usage)?;
        let image = self.image.clone().ok_or_else(|| missing("image"))?;
        let reason = self.reason.clone().ok_or_else(|| missing("reason"))?;
        let mut strategy = serde_json::Map::new();
        for (field, v) in [
            ("batchSize", &self.batch_size),
            ("maxUnavailable", &self.max_unavailable),
            ("maxFailures", &self.max_failures),
            ("canary", &self.canary),
        ] {
            if let Some(v) = v {
                strategy.insert(
                    field.into(),
                    serde_json::to_value(amount(v)).unwrap_or_default(),
                );
            }
        }
        if let Some(p) = &self.pause_between_batches {
            strategy.insert("pauseBetweenBatches".into(), json!(p));
        }
        let mut spec = json!({
            "selector": selector,
            "image": image,
            "strategy": strategy,
            "reason": reason,
        });
        if self.require_approval {
            spec["requireApproval"] = json!(true);
        }
        if let (Some(start), Some(duration)) = (&self.window_start, &self.window_duration) {
            let mut w = json!({"start": start, "duration": duration});
            if !self.window_days.is_empty() {
                w["days"] = json!(self.window_days);
            }
            if let Some(tz) = &self.window_time_zone {
                w["timeZone"] = json!(tz);
            }
            spec["maintenanceWindow"] = w;
        }
        Ok(json!({
            "apiVersion": recast_crds::API_VERSION,
            "kind": "ReimageWave",
            "metadata": {"name": name},
            "spec": spec,
        }))
    }
}

/// Parses a kubectl-style label selector: comma-separated `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k` and `!k`.
pub fn parse_selector(s: &str) -> Result<LabelSelector, String> {
    let mut labels = BTreeMap::new();
    let mut exprs = Vec::new();
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let bad = |t: &str| {
        format!(
            "selector term {t:?} is not understood; write key=value, key!=value, key in (a,b), key notin (a,b), key or !key"
        )
    };
    let req = |key: &str, op: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: key.trim().to_string(),
        operator: op.into(),
        values,
    };
    let set = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        let v: Vec<String> = inner
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        (!v.is_empty()).then_some(v)
    };
    for raw in terms {
        let t = raw.trim();
        if t.is_empty() {
            return Err("the selector is empty: a wave must name its endpoints by label".into());
        }
        if let Some((k, v)) = t.split_once("!=") {
            exprs.push(req(k, "NotIn", Some(vec![v.trim().to_string()])));
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            labels.insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some((k, rest)) = t.split_once(" notin ") {
            exprs.push(req(k, "NotIn", Some(set(rest).ok_or_else(|| bad(t))?)));
        } else if let Some((k, rest)) = t.split_once(" in ") {
            exprs.push(req(k, "In", Some(set(rest).ok_or_else(|| bad(t))?)));
        } else if let Some(k) = t.strip_prefix('!') {
            exprs.push(req(k, "DoesNotExist", None));
        } else if !t.contains([' ', '(', ')']) {
            exprs.push(req(t, "Exists", None));
        } else {
            return Err(bad(t));
        }
    }
    Ok(LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

fn decode_wave(v: Value) -> Result<ReimageWave, CliError> {
    serde_json::from_value(v)
        .map_err(|e| CliError::Failed(format!("the stored ReimageWave does not decode: {e}")))
}

fn get_wave(store: &Backend, ns: &str, name: &str) -> Result<ReimageWave, CliError> {
    let v = store
        .get(Kind::ReimageWave, ns, name)?
        .ok_or_else(|| not_found(Kind::ReimageWave, ns, name))?;
    decode_wave(v)
}

fn phase_of(w: &ReimageWave) -> Option<WavePhase> {
    w.status.as_ref().and_then(|s| s.phase)
}

fn ended(p: Option<WavePhase>) -> bool {
    matches!(
        p,
        Some(WavePhase::Succeeded | WavePhase::Failed | WavePhase::Aborted)
    )
}

/// The exit code a wave's phase maps to (see the module docs).
pub fn exit_for(p: Option<WavePhase>) -> ExitCode {
    match p {
        Some(WavePhase::Failed) => ExitCode::from(EXIT_FAILED),
        Some(WavePhase::Aborted) => ExitCode::from(EXIT_ABORTED),
        Some(WavePhase::AwaitingApproval | WavePhase::Paused) => {
            ExitCode::from(EXIT_NEEDS_A_PERSON)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn print_doc(v: &Value, format: Format) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        _ => print!("{}", serde_yaml::to_string(v).unwrap_or_default()),
    }
}

/// Colour only on a terminal, and never with NO_COLOR set.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn run(
    store: &Backend,
    ns: &str,
    cmd: WaveCommand,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    match cmd {
        WaveCommand::Create { name, files, spec } => {
            let docs = wave_documents(name.as_deref(), &files, &spec)?;
            for doc in docs {
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if store.get(Kind::ReimageWave, ns, &name)?.is_some() {
                    return Err(CliError::Failed(format!(
                        "reimagewave {name:?} already exists in {ns}; a wave's selector and image cannot change, so create one under a new name"
                    )));
                }
                store.apply(&doc, ns).map_err(|e| {
                    CliError::Failed(format!("reimagewave {name:?} was not created: {e}"))
                })?;
                println!(
                    "reimagewave.recast.dev/{name} created; see what it will do with: recastctl wave plan {name}"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        WaveCommand::List { output } => {
            let waves = store.list(Kind::ReimageWave, Some(ns))?;
            match output {
                Format::Table if waves.is_empty() => {
                    eprintln!(
                        "No waves in {ns}. Create one with: recastctl wave create NAME --selector ... --image ... --reason ..."
                    );
                }
                Format::Table => print!(
                    "{}",
                    table::render(Kind::ReimageWave, &waves, false, false, now)
                ),
                f => print_doc(
                    &json!({"apiVersion": "v1", "kind": "List", "items": waves}),
                    f,
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        WaveCommand::Status {
            name,
            watch,
            interval,
            output,
        } => {
            if output != Format::Table {
                if watch {
                    return Err(CliError::Usage(
                        "--watch draws progress bars; use it with -o table".into(),
                    ));
                }
                let w = get_wave(store, ns, &name)?;
                print_doc(&serde_json::to_value(&w).unwrap_or_default(), output);
                return Ok(exit_for(phase_of(&w)));
            }
            if !watch {
                let w = get_wave(store, ns, &name)?;
                print!("{}", render_status(&w, now, colour()));
                return Ok(exit_for(phase_of(&w)));
            }
            watch_status(store, ns, &name, Duration::from_secs(interval))
        }
        WaveCommand::Plan {
            name,
            files,
            spec,
            output,
        } => {
            let (wave_name, wave_spec, stored) = match (&name, files.is_empty() && spec.is_empty())
            {
                (Some(n), true) => {
                    let w = get_wave(store, ns, n)?;
                    let planned = w
                        .status
                        .as_ref()
                        .filter(|s| s.max_failures.is_some())
                        .map(|s| planner::Plan {
                            batches: s.batches.clone(),
                            skipped: s.skipped.clone(),
                            max_failures: s.max_failures.unwrap_or(0),
                        });
                    (n.clone(), w.spec, planned)
                }
                _ => {
                    let docs = wave_documents(name.as_deref(), &files, &spec)?;
                    let [doc] = docs.as_slice() else {
                        return Err(CliError::Usage(
                            "wave plan takes one wave: give one file with one ReimageWave".into(),
                        ));
                    };
                    let w = decode_wave(doc.clone())?;
                    (w.metadata.name.clone().unwrap_or_default(), w.spec, None)
                }
            };
            let endpoints = endpoints_of(store, ns)?;
            let (plan, stored) = match stored {
                Some(p) => (p, true),
                None => (plan_now(&endpoints, &wave_spec)?, false),
            };
            let outlook = boot_outlook_now(store, ns, &wave_spec.image, &plan, &endpoints)?;
            match output {
                Format::Table => print!(
                    "{}{}",
                    render_plan(&wave_name, &wave_spec, &plan, stored),
                    render_boot_outlook(&outlook)
                ),
                f => print_doc(
                    &json!({
                        "wave": wave_name,
                        "image": wave_spec.image,
                        "stored": stored,
                        "maxFailures": plan.max_failures,
                        "batches": plan.batches,
                        "skipped": plan.skipped,
                        "secureBoot": outlook.to_json(),
                    }),
                    f,
                ),
            }
            if plan.planned() == 0 {
                eprintln!(
                    "The selector matches no endpoint that may be reimaged in {ns}; check the endpoints' labels with: recastctl get rep -o yaml"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        WaveCommand::Pause { name } => steer(store, ns, &name, Steer::Pause),
        WaveCommand::Resume { name } => steer(store, ns, &name, Steer::Resume),
        WaveCommand::Abort { name } => steer(store, ns, &name, Steer::Abort),
        WaveCommand::Approve { name, by } => {
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .filter(|b| !b.trim().is_empty())
                .ok_or_else(|| {
                    CliError::Usage("say who approves with --by NAME ($USER is not set)".into())
                })?;
            steer(store, ns, &name, Steer::Approve(by))
        }
    }
}

/// ReimageWave documents from -f files, or the one the flags describe.
fn wave_documents(
    name: Option<&str>,
    files: &[PathBuf],
    spec: &SpecArgs,
) -> Result<Vec<Value>, CliError> {
    if files.is_empty() {
        let name = name.ok_or_else(|| {
            CliError::Usage("name the wave (recastctl wave create NAME ...) or use -f FILE".into())
        })?;
        return Ok(vec![spec.document(name)?]);
    }
    if !spec.is_empty() {
        return Err(CliError::Usage(
            "use either -f FILE or --selector/--image/--reason, not both".into(),
        ));
    }
    let mut docs = Vec::new();
    for f in files {
        for (_, doc) in manifests::load(f).map_err(|e| CliError::Usage(e.to_string()))? {
            if doc.value.get("kind").and_then(Value::as_str) == Some("ReimageWave") {
                docs.push(doc.value);
            }
        }
    }
    if docs.is_empty() {
        return Err(CliError::Usage(
            "no ReimageWave document in the given files".into(),
        ));
    }
    Ok(docs)
}

/// The namespace's endpoints, as the plan and its Secure Boot outlook read them.
fn endpoints_of(store: &Backend, ns: &str) -> Result<Vec<Endpoint>, CliError> {
    store
        .list(Kind::Endpoint, Some(ns))?
        .into_iter()
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| CliError::Failed(format!("a stored Endpoint does not decode: {e}")))
        })
        .collect()
}

/// Plans `spec` against the endpoints as they are now.
fn plan_now(endpoints: &[Endpoint], spec: &ReimageWaveSpec) -> Result<planner::Plan, CliError> {
    let candidates: Vec<Candidate> = endpoints
        .iter()
        .map(|ep| {
            Candidate::new(
                ep.metadata.name.as_deref().unwrap_or_default(),
                ep.metadata.labels.clone().unwrap_or_default(),
                &ep.spec,
                ep.status.as_ref(),
            )
        })
        .collect();
    planner::plan(spec, &candidates).map_err(|e| CliError::Failed(format!("cannot plan: {e}")))
}

/// What the members' firmware, as they reported it, says of the wave image's boot manager.
#[derive(Debug, PartialEq, Eq)]
pub struct BootOutlook {
    /// The image's boot manager in one line; None when the deep check has not read it.
    pub image: Option<String>,
    pub members: usize,
    /// Members whose reported db would refuse it, with what is missing.
    pub refused: Vec<(String, String)>,
    /// Members that have not reported their firmware (no imaging run read it yet).
    pub not_reported: usize,
}

impl BootOutlook {
    fn to_json(&self) -> Value {
        json!({
            "bootManager": self.image,
            "members": self.members,
            "wouldRefuse": self.refused.iter().map(|(n, why)| json!({"endpoint": n, "why": why})).collect::<Vec<_>>(),
            "notReported": self.not_reported,
        })
    }
}

/// The outlook for the planned members (pure).
pub fn boot_outlook(
    image: Option<&recast_core::boot_manager::BootManagerFacts>,
    members: &[(String, Option<recast_crds::endpoint::FirmwareTrust>)],
) -> BootOutlook {
    use recast_core::boot_manager::{Prediction, predict, summary};
    let mut out = BootOutlook {
        image: image.map(summary),
        members: members.len(),
        refused: Vec::new(),
        not_reported: 0,
    };
    let Some(image) = image else {
        return out;
    };
    for (name, firmware) in members {
        match predict(image, firmware.as_ref()) {
            Prediction::Boots => {}
            Prediction::Refused(why) => out.refused.push((name.clone(), why)),
            Prediction::Unknown => out.not_reported += 1,
        }
    }
    out
}

fn boot_outlook_now(
    store: &Backend,
    ns: &str,
    image: &str,
    plan: &planner::Plan,
    endpoints: &[Endpoint],
) -> Result<BootOutlook, CliError> {
    let facts = store
        .get(Kind::GoldenImage, ns, image)?
        .and_then(|v| serde_json::from_value::<recast_crds::GoldenImage>(v).ok())
        .and_then(|gi| gi.status?.facts?.boot_manager);
    let planned: Vec<&String> = plan.batches.iter().flat_map(|b| &b.endpoints).collect();
    let members: Vec<_> = endpoints
        .iter()
        .filter_map(|ep| {
            let name = ep.metadata.name.clone().unwrap_or_default();
            planned.contains(&&name).then(|| {
                let firmware = ep.status.as_ref().and_then(|s| s.firmware.clone());
                (name, firmware)
            })
        })
        .collect();
    Ok(boot_outlook(facts.as_ref(), &members))
}

/// The plan's Secure Boot lines.
pub fn render_boot_outlook(o: &BootOutlook) -> String {
    let Some(image) = &o.image else {
        return "\nSecure Boot: the image's boot manager has not been read (the GoldenImage deep check reads it); every machine is still checked before any write.\n".into();
    };
    let reported = o.members - o.not_reported;
    let mut out = if o.refused.is_empty() {
        format!(
            "\nSecure Boot: every member that reported its firmware ({reported} of {}) would start the image's boot manager: {image}\n",
            o.members
        )
    } else {
        format!(
            "\nSecure Boot: {} of {} members would refuse the image's boot manager ({image}); each is refused before any write and needs a person:\n",
            o.refused.len(),
            o.members
        )
    };
    if !o.refused.is_empty() {
        let mut rows = vec![["WOULD REFUSE", "WHY"].map(String::from).to_vec()];
        for (n, why) in &o.refused {
            rows.push(vec![n.clone(), why.clone()]);
        }
        out.push_str(&table::plain(&rows));
    }
    if o.not_reported > 0 {
        out.push_str(&format!(
            "{} {} not reported its firmware yet (an imaging run reads it and refuses before any write if it would not boot).\n",
            o.not_reported,
            if o.not_reported == 1 { "member has" } else { "members have" }
        ));
    }
    out
}

enum Steer {
    Pause,
    Resume,
    Abort,
    Approve(String),
}

fn steer(store: &Backend, ns: &str, name: &str, how: Steer) -> Result<ExitCode, CliError> {
    let w = get_wave(store, ns, name)?;
    let phase = phase_of(&w);
    if ended(phase) {
        return Err(CliError::Failed(format!(
            "wave {name} has already ended ({:?}); create a new wave to go on",
            phase.unwrap_or(WavePhase::Failed)
        )));
    }
    let (patch, done) = match &how {
        Steer::Pause => (
            json!({"paused": true}),
            "paused: no new attempt starts; running ones finish",
        ),
        Steer::Resume if w.spec.aborted => {
            return Err(CliError::Failed(format!(
                "wave {name} was aborted and cannot resume; create a new wave"
            )));
        }
        Steer::Resume => (json!({"paused": false}), "resumed"),
        Steer::Abort => (
            json!({"aborted": true}),
            "aborted: no new attempt starts; running ones finish",
        ),
        Steer::Approve(_) if !w.spec.require_approval => {
            return Err(CliError::Failed(format!(
                "wave {name} does not require approval (spec.requireApproval is false); nothing to approve"
            )));
        }
        Steer::Approve(by) => (json!({"approvedBy": by}), "approved"),
    };
    if let (Steer::Approve(_), Some(by)) = (&how, &w.spec.approved_by) {
        println!("reimagewave.recast.dev/{name} was already approved by {by}");
        return Ok(ExitCode::SUCCESS);
    }
    store.merge_spec(Kind::ReimageWave, ns, name, patch)?;
    println!(
        "reimagewave.recast.dev/{name} {done}; follow it with: recastctl wave status {name} --watch"
    );
    Ok(ExitCode::SUCCESS)
}

fn watch_status(
    store: &Backend,
    ns: &str,
    name: &str,
    interval: Duration,
) -> Result<ExitCode, CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let w = get_wave(store, ns, name)?;
        let screen = render_status(&w, Timestamp::now(), colour());
        let mut out = std::io::stdout().lock();
        if tty {
            // Home and clear, then redraw: the bars update in place.
            let _ = write!(out, "\x1b[H\x1b[2J{screen}");
        } else if screen != last {
            // Piped: a new block only when something changed, so logs stay readable.
            let _ = writeln!(out, "{screen}");
        }
        let _ = out.flush();
        last = screen;
        if ended(phase_of(&w)) {
            return Ok(exit_for(phase_of(&w)));
        }
        std::thread::sleep(interval);
    }
}

// ---- rendering ---------------------------------------------------------------------------

const BAR_WIDTH: usize = 30;

struct Paint(bool);

impl Paint {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.0 && !s.is_empty() {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn phase(&self, p: Option<WavePhase>) -> String {
        let text = p
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Pending".into());
        let code = match p {
            Some(WavePhase::Succeeded) => "32",
            Some(WavePhase::Failed) => "31",
            Some(WavePhase::Aborted | WavePhase::Paused) => "33",
            Some(WavePhase::AwaitingApproval | WavePhase::WaitingForWindow) => "36",
            _ => "1",
        };
        self.paint(code, &text)
    }
}

/// `[####xx>>------]`: succeeded, failed, running, then what is left (skipped count as done).
fn bar(p: &Paint, total: u32, succeeded: u32, failed: u32, running: u32, skipped: u32) -> String {
    let cells = |n: u32| {
        if total == 0 {
            0
        } else {
            (n as usize * BAR_WIDTH).div_ceil(total as usize)
        }
    };
    let mut left = BAR_WIDTH;
    let mut take = |n: u32| {
        let c = cells(n).min(left);
        left -= c;
        c
    };
    let ok = take(succeeded + skipped);
    let bad = take(failed);
    let run = take(running);
    // Plain here: colour goes on after the table is laid out (escapes have no width).
    let _ = p;
    format!(
        "[{}{}{}{}]",
        "#".repeat(ok),
        "x".repeat(bad),
        ">".repeat(run),
        "-".repeat(left)
    )
}

/// Colours the first bar on a line: succeeded green, failed red, running yellow.
fn paint_bar(p: &Paint, line: &str) -> String {
    let (Some(open), Some(close)) = (line.find('['), line.find(']')) else {
        return line.to_string();
    };
    let inner = &line[open + 1..close];
    let run = |c: char| inner.chars().filter(|x| *x == c).count();
    format!(
        "{}[{}{}{}{}]{}",
        &line[..open],
        p.paint("32", &"#".repeat(run('#'))),
        p.paint("31", &"x".repeat(run('x'))),
        p.paint("33", &">".repeat(run('>'))),
        "-".repeat(run('-')),
        &line[close + 1..]
    )
}

/// "1h05m", "25m", "40s".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn parse_t(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// Time left, from how long finished batches took (and the pause between batches); None until
/// one batch has finished.
pub fn eta(w: &ReimageWave, now: Timestamp) -> Option<Duration> {
    let st = w.status.as_ref()?;
    let took: Vec<Duration> = st
        .batches
        .iter()
        .filter_map(|b| {
            let (s, f) = (
                parse_t(b.started_at.as_deref())?,
                parse_t(b.finished_at.as_deref())?,
            );
            Duration::try_from(f.duration_since(s)).ok()
        })
        .collect();
    if took.is_empty() {
        return None;
    }
    let avg = took.iter().sum::<Duration>() / took.len() as u32;
    let pause = w
        .spec
        .strategy
        .pause_between_batches
        .as_deref()
        .and_then(|p| recast_crds::duration::parse(p).ok())
        .unwrap_or_default();
    let mut left = Duration::ZERO;
    for b in st.batches.iter().filter(|b| b.finished_at.is_none()) {
        match parse_t(b.started_at.as_deref()) {
            Some(s) => {
                let spent = Duration::try_from(now.duration_since(s)).unwrap_or_default();
                left += avg.saturating_sub(spent);
            }
            None => left += avg + pause,
        }
    }
    Some(left)
}

fn batch_label(b: &WaveBatch) -> String {
    format!(
        "Batch {}{}",
        b.index + 1,
        if b.canary { " (canary)" } else { "" }
    )
}

/// The status screen: header, an overall bar, a bar per batch, skipped and failed endpoints.
pub fn render_status(w: &ReimageWave, now: Timestamp, colour: bool) -> String {
    let p = Paint(colour);
    let name = w.metadata.name.as_deref().unwrap_or_default();
    let st = w.status.clone().unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("Wave:      {name} -> {}\n", w.spec.image));
    let batch = match (st.current_batch, st.batches.len()) {
        (_, 0) => String::new(),
        (Some(c), n) => format!("   batch {c}/{n}"),
        (None, n) => format!("   {n} batches"),
    };
    out.push_str(&format!("Phase:     {}{batch}\n", p.phase(st.phase)));
    out.push_str(&format!("Reason:    {}\n", w.spec.reason));
    if let Some(m) = st.messages.first().filter(|m| !m.is_empty()) {
        out.push_str(&format!("Message:   {m}\n"));
    }
    if w.spec.require_approval {
        out.push_str(&format!(
            "Approval:  {}\n",
            w.spec
                .approved_by
                .as_deref()
                .map(|b| format!("approved by {b}"))
                .unwrap_or_else(|| format!("required: recastctl wave approve {name}"))
        ));
    }
    if st.batches.is_empty() {
        out.push_str("\nNot planned yet: the operator plans the wave on its first reconcile.\n");
        return out;
    }
    let c = &st.counts;
    let planned: u32 = st.batches.iter().map(|b| b.endpoints.len() as u32).sum();
    let late_skips = count_late(&st.batches);
    let done = c.succeeded + c.failed + late_skips;
    let timing = match (
        ended(st.phase),
        parse_t(st.started_at.as_deref()),
        parse_t(st.finished_at.as_deref()),
    ) {
        (true, Some(s), Some(f)) => format!(
            "took {}",
            human(Duration::try_from(f.duration_since(s)).unwrap_or_default())
        ),
        (true, _, _) => String::new(),
        (false, _, _) => match eta(w, now) {
            Some(d) => format!("ETA {}", human(d)),
            None => "ETA --".into(),
        },
    };
    let mut rows = vec![vec![
        "Overall".to_string(),
        bar(&p, planned, c.succeeded, c.failed, c.running, late_skips),
        format!("{done}/{planned}"),
        timing,
        format!(
            "ok {}  failed {}  running {}  skipped {}",
            c.succeeded, c.failed, c.running, c.skipped
        ),
    ]];
    for b in &st.batches {
        let n = b.endpoints.len() as u32;
        let state = if b.finished_at.is_some() {
            "done".to_string()
        } else if b.started_at.is_some() {
            "running".to_string()
        } else {
            String::new()
        };
        let mut counts = Vec::new();
        for (label, v) in [
            ("ok", b.succeeded),
            ("failed", b.failed),
            ("running", b.running),
            ("skipped", b.skipped),
        ] {
            if v > 0 {
                counts.push(format!("{label} {v}"));
            }
        }
        rows.push(vec![
            batch_label(b),
            bar(&p, n, b.succeeded, b.failed, b.running, b.skipped),
            format!("{}/{n}", b.succeeded + b.failed + b.skipped),
            state,
            counts.join("  "),
        ]);
    }
    out.push('\n');
    for line in table::plain(&rows).lines() {
        out.push_str(&paint_bar(&p, line));
        out.push('\n');
    }
    let sessions: Vec<String> = st
        .batches
        .iter()
        .filter_map(|b| Some((b, b.multicast.as_ref()?)))
        .map(|(b, m)| {
            let percent = (m.bytes.min(m.size) * 100).checked_div(m.size).unwrap_or(0);
            let dropped = if m.dropped > 0 {
                format!(", {} dropped (downloading over HTTP)", m.dropped)
            } else {
                String::new()
            };
            let rate = m
                .rate_mbps
                .map(|r| format!(", {r} Mbit/s"))
                .unwrap_or_default();
            format!(
                "  {}: {} {:?}, {} joined of {} awaited{dropped}, {} of {} ({percent}%){rate}\n",
                batch_label(b),
                m.session,
                m.phase,
                m.receivers,
                m.min_receivers,
                crate::image::human_bytes(m.bytes),
                crate::image::human_bytes(m.size),
            )
        })
        .collect();
    if !sessions.is_empty() {
        out.push_str("\nMulticast:\n");
        for s in sessions {
            out.push_str(&s);
        }
    }
    if !st.skipped.is_empty() {
        let list: Vec<String> = st
            .skipped
            .iter()
            .map(|s| format!("{} ({})", s.name, s.reason))
            .collect();
        out.push_str(&format!("\nSkipped:   {}\n", short_list(&list, 10)));
    }
    if !st.failed_endpoints.is_empty() {
        out.push_str(&format!(
            "Failed:    {}\n           see why with: recastctl history ENDPOINT\n",
            p.paint("31", &short_list(&st.failed_endpoints, 10))
        ));
    }
    out
}

/// Batch members skipped after planning (they are in a batch and in status.skipped).
fn count_late(batches: &[WaveBatch]) -> u32 {
    batches.iter().map(|b| b.skipped).sum()
}

fn short_list(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!(
            "{}, ... ({} more)",
            items[..max].join(", "),
            items.len() - max
        )
    }
}

/// The dry run: batches with their endpoints, then what is skipped and why.
pub fn render_plan(
    name: &str,
    spec: &ReimageWaveSpec,
    plan: &planner::Plan,
    stored: bool,
) -> String {
    let mut out = format!(
        "Wave {name}: {} endpoints in {} batches onto {} (stops after more than {} failures); {} skipped\n",
        plan.planned(),
        plan.batches.len(),
        spec.image,
        plan.max_failures,
        plan.skipped.len()
    );
    if stored {
        out.push_str("This is the plan the operator made and follows.\n");
    } else {
        out.push_str("Dry run against the endpoints as they are now; nothing was changed.\n");
    }
    if !plan.batches.is_empty() {
        let mut rows = vec![["BATCH", "SIZE", "ENDPOINTS"].map(String::from).to_vec()];
        for b in &plan.batches {
            rows.push(vec![
                batch_label(b).trim_start_matches("Batch ").to_string(),
                b.endpoints.len().to_string(),
                short_list(&b.endpoints, 6),
            ]);
        }
        out.push('\n');
        out.push_str(&table::plain(&rows));
    }
    if !plan.skipped.is_empty() {
        let mut rows = vec![["SKIPPED", "REASON"].map(String::from).to_vec()];
        for s in &plan.skipped {
            let why = match s.reason.as_str() {
                planner::SKIP_PROTECTED => "Protected: recast never reimages it",
                planner::SKIP_PAUSED => "Paused: spec.paused is true",
                planner::SKIP_QUARANTINED => {
                    "Quarantined: its last attempt failed; fix it, then reimage it by hand"
                }
                other => other,
            };
            rows.push(vec![s.name.clone(), why.to_string()]);
        }
        out.push('\n');
        out.push_str(&table::plain(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::wave::{
        BatchMulticast, MulticastPhase, ReimageWaveStatus, SkippedEndpoint, WaveCounts,
        WaveStrategy,
    };
    use std::path::Path;

    fn golden(name: &str, actual: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wave");
        recast_tests::assert_golden(&dir.join(name), actual);
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn batch(
        i: u32,
        n: usize,
        canary: bool,
        started: Option<&str>,
        finished: Option<&str>,
    ) -> WaveBatch {
        WaveBatch {
            multicast: None,
            index: i,
            endpoints: (0..n)
                .map(|k| format!("pos-{:02}", i as usize * 10 + k))
                .collect(),
            started_at: started.map(str::to_string),
            finished_at: finished.map(str::to_string),
            canary,
            succeeded: 0,
            failed: 0,
            running: 0,
            skipped: 0,
        }
    }

    /// A wave in its third batch: canary and batch 2 done (one failure), batch 3 running.
    fn running_wave() -> ReimageWave {
        let mut w = ReimageWave::new(
            "feb",
            ReimageWaveSpec {
                multicast: None,
                selector: parse_selector("ring=broad").unwrap(),
                image: "win11-24h2-2026-02".into(),
                strategy: WaveStrategy {
                    batch_size: Some(IntOrString::Int(4)),
                    canary: Some(IntOrString::Int(2)),
                    max_failures: Some(IntOrString::Int(2)),
                    pause_between_batches: Some("5m".into()),
                    ..Default::default()
                },
                maintenance_window: None,
                require_approval: true,
                approved_by: Some("alice".into()),
                paused: false,
                aborted: false,
                reason: "February rollup".into(),
            },
        );
        let mut b0 = batch(
            0,
            2,
            true,
            Some("2026-02-11T08:00:00Z"),
            Some("2026-02-11T08:40:00Z"),
        );
        b0.succeeded = 2;
        let mut b1 = batch(
            1,
            4,
            false,
            Some("2026-02-11T08:45:00Z"),
            Some("2026-02-11T09:25:00Z"),
        );
        (b1.succeeded, b1.failed) = (3, 1);
        let mut b2 = batch(2, 4, false, Some("2026-02-11T09:30:00Z"), None);
        (b2.succeeded, b2.running, b2.skipped) = (1, 2, 1);
        b1.multicast = Some(BatchMulticast {
            session: "239.255.77.0:9000".into(),
            phase: MulticastPhase::Complete,
            min_receivers: 4,
            receivers: 4,
            dropped: 1,
            bytes: 5 << 30,
            size: 5 << 30,
            rate_mbps: Some(480),
        });
        b2.multicast = Some(BatchMulticast {
            session: "239.255.77.1:9002".into(),
            phase: MulticastPhase::Sending,
            min_receivers: 3,
            receivers: 3,
            dropped: 0,
            bytes: 2 << 30,
            size: 5 << 30,
            rate_mbps: Some(495),
        });
        let b3 = batch(3, 4, false, None, None);
        w.status = Some(ReimageWaveStatus {
            phase: Some(WavePhase::Running),
            current_batch: Some(3),
            counts: WaveCounts {
                selected: 16,
                skipped: 3,
                pending: 5,
                running: 2,
                succeeded: 6,
                failed: 1,
            },
            max_failures: Some(2),
            started_at: Some("2026-02-11T08:00:00Z".into()),
            batches: vec![b0, b1, b2, b3],
            skipped: vec![
                SkippedEndpoint {
                    name: "pos-50".into(),
                    reason: "Protected".into(),
                },
                SkippedEndpoint {
                    name: "pos-51".into(),
                    reason: "Paused".into(),
                },
                SkippedEndpoint {
                    name: "pos-23".into(),
                    reason: "Deleted".into(),
                },
            ],
            failed_endpoints: vec!["pos-12".into()],
            messages: vec!["batch 3/4: 2 running, 0 not started yet".into()],
            ..Default::default()
        });
        w
    }

    #[test]
    fn status_screen() {
        let w = running_wave();
        let now = t("2026-02-11T09:50:00Z");
        golden("status-running.txt", &render_status(&w, now, false));
        // Colour is only added when asked for, around the same text.
        let coloured = render_status(&w, now, true);
        assert!(coloured.contains("\x1b[32m"));
        let stripped = coloured
            .replace("\x1b[32m", "")
            .replace("\x1b[31m", "")
            .replace("\x1b[33m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[0m", "");
        assert_eq!(stripped, render_status(&w, now, false));
    }

    #[test]
    fn status_screen_of_a_failed_wave_says_how_long_it_took() {
        let mut w = running_wave();
        let st = w.status.as_mut().unwrap();
        st.phase = Some(WavePhase::Failed);
        st.finished_at = Some("2026-02-11T10:05:00Z".into());
        st.messages = vec!["stopped: 3 endpoints failed, more than maxFailures (2); look at pos-12, pos-24, pos-25, then start a new wave".into()];
        golden(
            "status-failed.txt",
            &render_status(&w, t("2026-02-11T11:00:00Z"), false),
        );
    }

    #[test]
    fn eta_follows_the_batches_that_finished() {
        let w = running_wave();
        // Batches took 40 minutes; batch 3 started 20 minutes ago (20 left), batch 4 has not
        // started (5 minutes pause + 40).
        assert_eq!(
            eta(&w, t("2026-02-11T09:50:00Z")),
            Some(Duration::from_secs(65 * 60))
        );
        let mut fresh = running_wave();
        for b in &mut fresh.status.as_mut().unwrap().batches {
            b.finished_at = None;
        }
        assert_eq!(eta(&fresh, t("2026-02-11T09:50:00Z")), None);
    }

    #[test]
    fn the_plan_counts_members_whose_firmware_would_refuse_the_image() {
        use recast_crds::endpoint::FirmwareTrust;
        use recast_crds::golden_image::{BootManagerFacts, BootSignature};
        let image = BootManagerFacts {
            authenticode_sha256: Some("ab".into()),
            signatures: vec![BootSignature {
                signer: "Microsoft Windows".into(),
                issuer: "Windows UEFI CA 2023".into(),
                chain: vec!["Microsoft Windows".into()],
            }],
            problem: None,
        };
        let fw = |db: &[&str]| {
            Some(FirmwareTrust {
                secure_boot: Some(true),
                db_certificates: db.iter().map(|s| s.to_string()).collect(),
                read_by_attempt: "x-1".into(),
                read_at: "2026-12-05T09:00:00Z".into(),
                ..Default::default()
            })
        };
        let members = vec![
            (
                "kiosk-01".to_string(),
                fw(&["Microsoft Windows Production PCA 2011"]),
            ),
            ("kiosk-02".to_string(), fw(&["Windows UEFI CA 2023"])),
            ("kiosk-03".to_string(), None),
        ];
        let o = boot_outlook(Some(&image), &members);
        assert_eq!((o.refused.len(), o.not_reported, o.members), (1, 1, 3));
        golden("plan-secure-boot.txt", &render_boot_outlook(&o));
        // Nothing read yet: said, never guessed.
        let o = boot_outlook(None, &members);
        assert!(o.refused.is_empty());
        assert!(render_boot_outlook(&o).contains("has not been read"));
        // All trust it.
        let o = boot_outlook(Some(&image), &members[1..2]);
        assert!(
            render_boot_outlook(&o)
                .starts_with("\nSecure Boot: every member that reported its firmware (1 of 1)")
        );
    }

    #[test]
    fn plan_screen() {
        let w = running_wave();
        let st = w.status.clone().unwrap();
        let plan = planner::Plan {
            batches: st.batches,
            skipped: st.skipped,
            max_failures: 2,
        };
        golden("plan.txt", &render_plan("feb", &w.spec, &plan, false));
    }

    #[test]
    fn selectors_parse_like_kubectl() {
        let s =
            parse_selector("ring=pilot, site in (berlin, paris),tier!=gold,!legacy,owner").unwrap();
        assert_eq!(
            s.match_labels,
            Some(BTreeMap::from([("ring".to_string(), "pilot".to_string())]))
        );
        let exprs: Vec<(String, String, Option<Vec<String>>)> = s
            .match_expressions
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.operator, e.values))
            .collect();
        assert_eq!(
            exprs,
            [
                (
                    "site".into(),
                    "In".into(),
                    Some(vec!["berlin".into(), "paris".into()])
                ),
                ("tier".into(), "NotIn".into(), Some(vec!["gold".into()])),
                ("legacy".into(), "DoesNotExist".into(), None),
                ("owner".into(), "Exists".into(), None),
            ]
        );
        // Bad input says what is understood.
        let e = parse_selector("site in berlin").unwrap_err();
        assert!(e.contains("key in (a,b)"), "{e}");
        assert!(parse_selector("").unwrap_err().contains("empty"));
        assert!(parse_selector("a=b,,c=d").unwrap_err().contains("empty"));
    }

    #[test]
    fn bars_fill_in_proportion() {
        let p = Paint(false);
        assert_eq!(
            bar(&p, 0, 0, 0, 0, 0),
            format!("[{}]", "-".repeat(BAR_WIDTH))
        );
        assert_eq!(
            bar(&p, 3, 3, 0, 0, 0),
            format!("[{}]", "#".repeat(BAR_WIDTH))
        );
        assert_eq!(
            bar(&p, 3, 1, 1, 1, 0),
            format!("[{}{}{}]", "#".repeat(10), "x".repeat(10), ">".repeat(10))
        );
        // A sliver still shows.
        assert!(bar(&p, 1000, 0, 1, 0, 0).contains('x'));
    }

    #[test]
    fn exit_codes_follow_the_phase() {
        assert_eq!(exit_for(Some(WavePhase::Succeeded)), ExitCode::SUCCESS);
        assert_eq!(exit_for(Some(WavePhase::Running)), ExitCode::SUCCESS);
        assert_eq!(exit_for(Some(WavePhase::Failed)), ExitCode::from(3));
        assert_eq!(exit_for(Some(WavePhase::Aborted)), ExitCode::from(4));
        assert_eq!(
            exit_for(Some(WavePhase::AwaitingApproval)),
            ExitCode::from(5)
        );
        assert_eq!(exit_for(Some(WavePhase::Paused)), ExitCode::from(5));
    }
}
