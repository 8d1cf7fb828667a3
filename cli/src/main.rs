//! recastctl: apply, inspect and drive recast endpoints, golden images and waves.
//!
//! Exit codes: 0 success; 1 the operation failed or input was invalid; 2 bad usage or an
//! unreadable file. `image verify` and `image manifest` add 3 (not a valid WIM), 4 (bytes wrong),
//! 5 (requirements not met) and 130 (interrupted); see image.rs.

mod backend;
mod bmc;
mod bootkit;
mod breaker;
mod image;
mod table;
mod token;
mod wave;
mod wds;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use backend::{Backend, BackendError, KubeObjects};
use clap::{Parser, Subcommand, ValueEnum};

use jiff::Timestamp;
use recast_crds::endpoint::EndpointStatus;
use recast_crds::manifest::Kind;
use recast_crds::validate::admit;
use recast_operator::manifests;
use recast_operator::store::embedded::{EmbeddedStore, OpenMode};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Embedded store directory (the operator's --data-dir). Default: $RECAST_DATA_DIR, else
    /// ./.recast-data when it exists, else /var/lib/recast.
    #[arg(long, global = true, env = "RECAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Namespace of the objects.
    #[arg(short = 'n', long, global = true, default_value = recast_crds::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Where the objects live: the embedded store (default) or Kubernetes.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "RECAST_BACKEND",
        default_value = "embedded"
    )]
    backend: BackendKind,
    /// kubeconfig context (kube backend), like kubectl --context.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    Embedded,
    Kube,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update objects from files or directories (like kubectl apply -f).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Embedded backend: create the store in --data-dir when there is none yet (without
        /// it, a missing store is an error, so a mistyped directory never looks like an empty
        /// site).
        #[arg(long)]
        create_store: bool,
    },
    /// List objects of a kind (rep, gi, wave, rpol), or show one.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// After the table, print an object's row again each time it changes, like
        /// `kubectl get -w` (polls every second; stop with Ctrl-C).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show an object with its conditions, attempts and events.
    Describe { kind: String, name: String },
    /// Delete an object.
    Delete { kind: String, name: String },
    /// Ask for a reimage of an endpoint now (sets spec.reimageRequest with a new token).
    Reimage {
        name: String,
        /// Why, for the audit trail.
        #[arg(long, required = true)]
        reason: String,
    },
    /// Hold Windows quality updates on an endpoint by hand, whatever its update mode (sets
    /// spec.manualUpdateHold; the endpoint records the change as an event).
    Hold {
        name: String,
        /// Why, for the audit trail.
        #[arg(long, required = true)]
        reason: String,
    },
    /// Let Windows quality updates run on an endpoint by hand, even an immutable one, until a
    /// new FailedRollback engages the guard again; `--clear` removes the manual override
    /// instead, back to what the update mode and the guard decide.
    Release {
        name: String,
        /// Why, for the audit trail.
        #[arg(long, required = true)]
        reason: String,
        #[arg(long)]
        clear: bool,
    },
    /// Pause an endpoint: observed, but no reimage starts on its own and a failed try waits
    /// (sets spec.paused).
    Pause { name: String },
    /// Lift the pause (a restore from a backup pauses every endpoint whose attempt was in
    /// flight: this starts its next try).
    Unpause { name: String },
    /// The embedded store: consistent backups while the operator runs, and restores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Mark an endpoint protected: recast will never reimage it.
    Protect { name: String },
    /// Remove the protection.
    Unprotect { name: String },
    /// The endpoint's reimage attempts, newest first.
    History {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Look at and drive an endpoint's BMC (Redfish).
    Bmc {
        #[command(subcommand)]
        command: bmc::BmcCommand,
    },
    /// Golden WIMs: inspect, verify (exit codes a pipeline can branch on), manifest.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Check manifests offline against the same rules the API enforces (for CI and GitOps).
    Validate {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Sites that keep WDS: print what to run on the WDS server.
    #[command(subcommand)]
    Wds(WdsCommand),
    /// WinPE under Secure Boot: check the kit a site copied from its ADK, lay it out.
    Bootkit {
        #[command(subcommand)]
        command: bootkit::BootkitCommand,
    },
    /// The circuit breaker on automatic reimages: whether it is open, why, and reset it.
    Breaker {
        #[command(subcommand)]
        command: breaker::BreakerCommand,
    },
    /// Agent gateway tokens: issue (or rotate) and revoke, on either backend.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Reimage waves: create, plan, follow (status --watch), pause, resume, abort, approve.
    Wave {
        #[command(subcommand)]
        command: wave::WaveCommand,
    },
    /// Print a shell completion script: recastctl completion bash > /etc/bash_completion.d/recastctl
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Write a consistent snapshot of the store to FILE while the operator runs (the file is
    /// 0600: it holds BMC credentials).
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Replace the store with a backup (stop the operator first). Every attempt that was in
    /// flight in the backup keeps its record, with its try ended and its endpoint paused.
    Restore { file: PathBuf },
}

#[derive(Subcommand)]
enum WdsCommand {
    /// Print the PowerShell (New-WdsClient / Set-WdsClient) that prestages endpoints in WDS:
    /// the named ones, or every endpoint with spec.bootServer: wds.
    Prestage {
        names: Vec<String>,
        /// The WDS server endpoints are referred to.
        #[arg(long, required = true)]
        wds_server: String,
        /// Boot image on the WDS server.
        #[arg(long, default_value = r"boot\x64\images\boot.wim")]
        boot_image: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<recast_operator::store::embedded::StoreError> for CliError {
    fn from(e: recast_operator::store::embedded::StoreError) -> Self {
        CliError::Backend(BackendError::Store(e))
    }
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }
}

fn main() -> ExitCode {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Started by the kubectl plugin (src/bin/kubectl-recast.rs): usage reads `kubectl recast`.
    if std::env::var_os("RECASTCTL_AS_KUBECTL_PLUGIN").is_some() {
        cmd = cmd.bin_name("kubectl recast");
    }
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&cmd.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let prefix = if std::io::stderr().is_terminal() {
                "\x1b[31merror:\x1b[0m"
            } else {
                "error:"
            };
            eprintln!("{prefix} {e}");
            e.exit_code()
        }
    }
}

/// `get -w`: the table, then a row each time an object's row changes. Ages are left out of
/// the comparison (they change every second by themselves); a newly created object counts as
/// a change. Polls, because the embedded store has no change feed a reader can follow.
/// `store_dir` (the embedded store's directory) is watched too: `make run` and `make demo`
/// start on a fresh one, and a watch started before would otherwise keep reading the old,
/// deleted store.
fn watch_get(
    mut store: Backend,
    store_dir: Option<PathBuf>,
    kind: Kind,
    ns: &str,
    name: Option<&str>,
    wide: bool,
    all_namespaces: bool,
) -> Result<ExitCode, CliError> {
    use std::io::Write;
    let ages = table::age_cells(kind, wide, all_namespaces);
    let key_len = 1 + usize::from(all_namespaces);
    let mut seen: std::collections::BTreeMap<Vec<String>, Vec<String>> = Default::default();
    let mut widths: Option<Vec<usize>> = None;
    // The store file's identity (device, inode) on Unix; elsewhere the watch keeps the store
    // it opened.
    let store_file = |dir: &PathBuf| -> Option<(u64, u64)> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.join(recast_operator::store::embedded::DB_FILE))
                .ok()
                .map(|m| (m.dev(), m.ino()))
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            None
        }
    };
    let mut opened = store_dir.as_ref().and_then(store_file);
    loop {
        if let Some(dir) = &store_dir {
            let now = store_file(dir);
            if now.is_some() && now != opened {
                match EmbeddedStore::open_existing(dir) {
                    Ok(fresh) => {
                        store = Backend::Embedded(fresh);
                        opened = now;
                        // A new store: its objects are new rows.
                        seen.clear();
                    }
                    // Being created by an operator that starts right now: next second.
                    Err(recast_operator::store::embedded::StoreError::Missing { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let objects = match name {
            Some(n) => match store.get(kind, ns, n)? {
                Some(o) => vec![o],
                // Gone while watched: keep watching, as kubectl does; missing at the start is
                // a mistake in the name.
                None if widths.is_some() => Vec::new(),
                None => return Err(not_found(kind, ns, n)),
            },
            None => store.list(kind, if all_namespaces { None } else { Some(ns) })?,
        };
        let rows = table::rows(kind, &objects, wide, all_namespaces, Timestamp::now());
        let mut out = String::new();
        let widths = widths.get_or_insert_with(|| {
            out.push_str(&table::line(&rows[0], &table::widths(&rows)));
            table::widths(&rows)
        });
        for row in rows.iter().skip(1) {
            let key = row[..key_len].to_vec();
            let cells: Vec<String> = row
                .iter()
                .zip(&ages)
                .filter(|(_, age)| !**age)
                .map(|(c, _)| c.clone())
                .collect();
            if seen.get(&key) != Some(&cells) {
                out.push_str(&table::line(row, widths));
                seen.insert(key, cells);
            }
        }
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (`| head`, a closed pipe): done.
            return Ok(ExitCode::SUCCESS);
        }
        drop(stdout);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        let local = PathBuf::from(".recast-data");
        if local.is_dir() {
            local
        } else {
            PathBuf::from("/var/lib/recast")
        }
    })
}

fn kind_of(name: &str) -> Result<Kind, CliError> {
    Kind::from_user(name).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown kind {name:?}: use endpoints (rep), goldenimages (gi), reimagewaves (wave) or remediationpolicies (rpol)"
        ))
    })
}

pub(crate) fn not_found(kind: Kind, ns: &str, name: &str) -> CliError {
    CliError::Failed(format!(
        "{} {name:?} not found in namespace {ns:?}",
        kind.plural()
    ))
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if let Command::Validate { files } = &cli.command {
        return Ok(validate(files));
    }
    if let Command::Completion { shell } = cli.command {
        return Ok(print_completion(shell));
    }
    // Image checks read only the file: no store or cluster needed.
    let cli = match cli.command {
        Command::Image { command } if !command.needs_store() => {
            return Ok(image::run(command, &cli.namespace));
        }
        Command::Bootkit { command } => return Ok(bootkit::run(command)),
        command => Cli { command, ..cli },
    };
    if let Command::Store { command } = cli.command {
        return store_command(cli.backend, &data_dir(cli.data_dir), command);
    }
    let store_dir = (cli.backend == BackendKind::Embedded).then(|| data_dir(cli.data_dir.clone()));
    let mode = match &cli.command {
        Command::Apply {
            create_store: true, ..
        } => OpenMode::CreateIfMissing,
        _ => OpenMode::Existing,
    };
    let store = open_store(cli.backend, cli.data_dir, cli.context, mode)?;
    let ns = cli.namespace.as_str();
    let now = Timestamp::now();
    match cli.command {
        Command::Validate { .. }
        | Command::Completion { .. }
        | Command::Bootkit { .. }
        | Command::Store { .. } => {
            unreachable!("handled above")
        }
        Command::Pause { name } => {
            set_spec(&store, ns, &name, "paused", json!(true))?;
            println!("endpoint.recast.dev/{name} paused");
            Ok(ExitCode::SUCCESS)
        }
        Command::Unpause { name } => {
            set_spec(&store, ns, &name, "paused", json!(false))?;
            println!("endpoint.recast.dev/{name} unpaused");
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { command } => image::run_on_store(command, &store, ns, now),
        Command::Wave { command } => wave::run(&store, ns, command, now),
        Command::Breaker { command } => breaker::run(&store, ns, command, now),
        Command::Token { command } => token::run(&store, store_dir.as_deref(), ns, command, now),
        Command::Wds(WdsCommand::Prestage {
            names,
            wds_server,
            boot_image,
        }) => wds_prestage(&store, ns, &names, &wds_server, &boot_image),
        Command::Apply { files, .. } => apply(&store, ns, files),
        Command::Get {
            kind,
            name,
            output,
            all_namespaces,
            watch: true,
        } => {
            let kind = kind_of(&kind)?;
            if !matches!(output, Output::Table | Output::Wide) {
                return Err(CliError::Usage(
                    "--watch prints table rows; use it with -o table or -o wide (or poll `get -o json`)"
                        .into(),
                ));
            }
            watch_get(
                store,
                store_dir,
                kind,
                ns,
                name.as_deref(),
                output == Output::Wide,
                all_namespaces,
            )
        }
        Command::Get {
            kind,
            name,
            output,
            all_namespaces,
            watch: false,
        } => get(
            &store,
            ns,
            &kind,
            name.as_deref(),
            output,
            all_namespaces,
            now,
        ),
        Command::Describe { kind, name } => describe_one(&store, ns, &kind, &name, now),
        Command::Delete { kind, name } => delete(&store, ns, &kind, &name),
        Command::Reimage { name, reason } => request_reimage(&store, ns, &name, &reason, now),
        Command::Hold { name, reason } => {
            manual_hold(&store, ns, &name, Some("Hold"), &reason, now)?;
            println!(
                "endpoint.recast.dev/{name} quality updates held by hand; see: recastctl describe rep {name}"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Release {
            name,
            reason,
            clear,
        } => release(&store, ns, &name, &reason, clear, now),
        Command::Protect { name } => {
            set_spec(&store, ns, &name, "protected", json!(true))?;
            println!("endpoint.recast.dev/{name} protected");
            Ok(ExitCode::SUCCESS)
        }
        Command::Unprotect { name } => {
            set_spec(&store, ns, &name, "protected", json!(false))?;
            println!("endpoint.recast.dev/{name} unprotected");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bmc { command } => {
            bmc::run(&store, ns, command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History { name, output } => history(&store, ns, &name, output, now),
    }
}

/// `store backup|restore`: the embedded store's file, not its objects.
fn store_command(
    backend: BackendKind,
    dir: &std::path::Path,
    command: StoreCommand,
) -> Result<ExitCode, CliError> {
    if backend != BackendKind::Embedded {
        return Err(CliError::Usage(
            "the Kubernetes backend keeps recast's objects in etcd: back them up with the cluster's own tools (etcdctl snapshot save, or Velero for the recast.dev resources)".into(),
        ));
    }
    match command {
        StoreCommand::Backup { file, force } => {
            // Any schema up to this build's: a backup before an upgrade must work.
            let store = EmbeddedStore::open_with(dir, OpenMode::AnySchema)?;
            let s = store.backup_to(&file, force)?;
            println!(
                "backed up {} objects ({} attempts in flight) at revision {} to {} ({} bytes, schema {}){}; it holds BMC credentials and the agents' token hashes: keep it as safe as the store",
                s.objects,
                s.attempts_in_flight,
                s.revision,
                s.path.display(),
                s.bytes,
                s.schema,
                if s.carried.is_empty() {
                    String::new()
                } else {
                    format!(", with {}", s.carried.join(" and "))
                }
            );
            if let Some(why) = &s.not_carried {
                eprintln!(
                    "warning: the agents' gateway.db is not in this backup ({why}); the store's backup is complete, but a restore on a new host would need every agent's token issued again"
                );
            }
        }
        StoreCommand::Restore { file } => {
            let s = EmbeddedStore::restore_from(dir, &file, Timestamp::now())?;
            println!(
                "restored {} objects from {} (taken {}, schema {}) into {}",
                s.objects,
                file.display(),
                s.backed_up_at
                    .map_or("at an unknown time".into(), recast_core::time::format),
                s.schema,
                dir.display(),
            );
            if let Some(previous) = &s.previous {
                println!(
                    "the store it replaced {} {} (0600: it holds BMC credentials)",
                    if s.previous_damaged {
                        "was damaged and is moved aside as"
                    } else {
                        "is kept as"
                    },
                    previous.display()
                );
            }
            println!(
                "{} armed network boots disarmed, {} queued inputs dropped (they predate the backup); {} endpoints start nothing on their own until their agent reports again or a person runs `recastctl reimage` (docs/store.md)",
                s.boots_disarmed, s.inputs_dropped, s.endpoints
            );
            if !s.held.is_empty() {
                println!(
                    "attempts in flight in the backup, each waiting for its machine's next report (it ends the attempt if the machine already runs the new image): {}",
                    s.held.join(", ")
                );
            }
            if !s.requests_dropped.is_empty() {
                println!(
                    "reimage requests pending in the backup were dropped (they may have run since; request again if still wanted): {}",
                    s.requests_dropped.join(", ")
                );
            }
            for (name, outcome) in &s.carried {
                use recast_operator::store::embedded::CarriedOutcome;
                match outcome {
                    CarriedOutcome::Restored => println!(
                        "{name}: restored from the backup (this data directory had none with tokens): agents enrolled by then report again without a new token"
                    ),
                    CarriedOutcome::KeptLive => println!(
                        "{name}: the one in {} holds tokens and is kept (it knows every token issued since the backup)",
                        dir.display()
                    ),
                    CarriedOutcome::NotInBackup => {}
                    CarriedOutcome::Failed(why) => eprintln!(
                        "warning: the store is restored, but {name} from the backup could not be put in place ({why}); run the restore again after fixing that, or issue the agents' tokens again (`recastctl token`)"
                    ),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_completion(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let bin = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, bin, &mut std::io::stdout());
    ExitCode::SUCCESS
}

fn open_store(
    backend: BackendKind,
    data_dir_flag: Option<PathBuf>,
    context: Option<String>,
    mode: OpenMode,
) -> Result<Backend, CliError> {
    Ok(match backend {
        BackendKind::Embedded => {
            Backend::Embedded(EmbeddedStore::open_with(&data_dir(data_dir_flag), mode)?)
        }
        BackendKind::Kube => Backend::Kube(KubeObjects::connect(context)?),
    })
}

/// `wds prestage`: the named endpoints (each must exist), or every one with
/// spec.bootServer: wds.
fn wds_prestage(
    store: &Backend,
    ns: &str,
    names: &[String],
    wds_server: &str,
    boot_image: &str,
) -> Result<ExitCode, CliError> {
    let all: Vec<recast_crds::Endpoint> = store
        .list(Kind::Endpoint, Some(ns))?
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::Failed(format!("a stored Endpoint does not decode: {e}")))?;
    let selected: Vec<_> = if names.is_empty() {
        all.into_iter()
            .filter(|e| e.spec.boot_server == recast_crds::endpoint::BootServer::Wds)
            .collect()
    } else {
        let mut picked = Vec::new();
        for n in names {
            let ep = all
                .iter()
                .find(|e| e.metadata.name.as_deref() == Some(n.as_str()))
                .ok_or_else(|| not_found(Kind::Endpoint, ns, n))?;
            picked.push(ep.clone());
        }
        picked
    };
    if selected.is_empty() {
        eprintln!(
            "No endpoints with spec.bootServer: wds in {ns}; name them to prestage them anyway."
        );
        return Ok(ExitCode::from(1));
    }
    print!(
        "{}",
        wds::render(
            &selected,
            &wds::Prestage {
                wds_server,
                boot_image,
            }
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `apply -f`: every document of every file, one line each; a document that fails does not
/// stop the others (the exit code says that one did).
fn apply(store: &Backend, ns: &str, files: Vec<PathBuf>) -> Result<ExitCode, CliError> {
    let mut failed = false;
    for path in files {
        let docs = manifests::load(&path).map_err(|e| CliError::Usage(e.to_string()))?;
        for (file, doc) in docs {
            if !apply_document(store, ns, &file, &doc) {
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Applies one document (a Secret, a recast object, or anything else: skipped) and prints
/// what became of it; false when it failed.
fn apply_document(
    store: &Backend,
    ns: &str,
    file: &std::path::Path,
    doc: &recast_crds::manifest::Document,
) -> bool {
    if manifests::is_secret(doc) {
        return match store.apply_secret(&doc.value, ns) {
            Ok((name, outcome)) => {
                println!("secret/{name} {}", outcome.as_str());
                true
            }
            Err(e) => {
                eprintln!("error: {} document {}: {e}", file.display(), doc.index);
                false
            }
        };
    }
    if !manifests::is_recast(doc) {
        let kind = manifests::kind_name(doc);
        println!(
            "{kind} in {} skipped (not a recast.dev object)",
            file.display()
        );
        return true;
    }
    match store.apply(&doc.value, ns) {
        Ok((kind, name, outcome)) => {
            println!(
                "{}.recast.dev/{name} {}",
                kind.as_str().to_lowercase(),
                outcome.as_str()
            );
            true
        }
        Err(e) => {
            eprintln!("error: {} document {}: {e}", file.display(), doc.index);
            false
        }
    }
}

/// `get`: one object (it must exist) or the list, as a table, JSON or YAML.
fn get(
    store: &Backend,
    ns: &str,
    kind: &str,
    name: Option<&str>,
    output: Output,
    all_namespaces: bool,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    let kind = kind_of(kind)?;
    let objects = match name {
        Some(n) => vec![
            store
                .get(kind, ns, n)?
                .ok_or_else(|| not_found(kind, ns, n))?,
        ],
        None => store.list(kind, if all_namespaces { None } else { Some(ns) })?,
    };
    // One named object prints as itself; a listing as a kubectl-style List.
    let one_or_list = || {
        if name.is_some() {
            objects[0].clone()
        } else {
            json!({"apiVersion": "v1", "kind": "List", "items": objects})
        }
    };
    match output {
        Output::Table | Output::Wide => {
            if objects.is_empty() {
                eprintln!("No resources found in {ns} namespace.");
            } else {
                print!(
                    "{}",
                    table::render(kind, &objects, output == Output::Wide, all_namespaces, now)
                );
            }
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&one_or_list()).unwrap_or_default()
        ),
        Output::Yaml => print!(
            "{}",
            serde_yaml::to_string(&one_or_list()).unwrap_or_default()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `describe`: the object with its events.
fn describe_one(
    store: &Backend,
    ns: &str,
    kind: &str,
    name: &str,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    let kind = kind_of(kind)?;
    let obj = store
        .get(kind, ns, name)?
        .ok_or_else(|| not_found(kind, ns, name))?;
    let events = store.events(kind, ns, name)?;
    print!("{}", describe(kind, &obj, &events, now));
    Ok(ExitCode::SUCCESS)
}

fn delete(store: &Backend, ns: &str, kind: &str, name: &str) -> Result<ExitCode, CliError> {
    let kind = kind_of(kind)?;
    if !store.delete(kind, ns, name)? {
        return Err(not_found(kind, ns, name));
    }
    println!("{}.recast.dev/{name} deleted", kind.as_str().to_lowercase());
    Ok(ExitCode::SUCCESS)
}

/// `reimage`: sets spec.reimageRequest with a new token (the time, so each request is new).
fn request_reimage(
    store: &Backend,
    ns: &str,
    name: &str,
    reason: &str,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--reason must say why the machine is wiped".into(),
        ));
    }
    let token = now.to_string();
    set_spec(
        store,
        ns,
        name,
        "reimageRequest",
        json!({"token": token, "reason": reason}),
    )?;
    println!(
        "endpoint.recast.dev/{name} reimage requested (token {token}); follow it with: recastctl describe rep {name}"
    );
    Ok(ExitCode::SUCCESS)
}

/// `release`: quality updates released by hand, or with `--clear` the manual override removed.
fn release(
    store: &Backend,
    ns: &str,
    name: &str,
    reason: &str,
    clear: bool,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    if clear {
        manual_hold(store, ns, name, None, reason, now)?;
        println!(
            "endpoint.recast.dev/{name} manual update override removed: the update mode and the guard decide again"
        );
    } else {
        manual_hold(store, ns, name, Some("Release"), reason, now)?;
        println!(
            "endpoint.recast.dev/{name} quality updates released by hand; a new FailedRollback still engages the guard"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `history`: the endpoint's attempts from its stored status.
fn history(
    store: &Backend,
    ns: &str,
    name: &str,
    output: Output,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    let obj = store
        .get(Kind::Endpoint, ns, name)?
        .ok_or_else(|| not_found(Kind::Endpoint, ns, name))?;
    let status: EndpointStatus = obj
        .get("status")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| CliError::Failed(format!("stored status of {name} does not decode: {e}")))?
        .unwrap_or_default();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status.history).unwrap_or_default()
        ),
        Output::Yaml => print!(
            "{}",
            serde_yaml::to_string(&status.history).unwrap_or_default()
        ),
        Output::Table | Output::Wide => print!("{}", history_table(&status, now)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets (or with `action` None removes) spec.manualUpdateHold, with who and when for the audit
/// trail.
fn manual_hold(
    store: &Backend,
    ns: &str,
    name: &str,
    action: Option<&str>,
    reason: &str,
    now: Timestamp,
) -> Result<(), CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--reason must say why updates are held or released by hand".into(),
        ));
    }
    let value = match action {
        Some(a) => {
            let by = std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .ok()
                .filter(|u| !u.is_empty());
            let mut v = json!({
                "action": a,
                "reason": reason,
                "requestedAt": now.round(jiff::Unit::Second).unwrap_or(now).to_string(),
            });
            if let Some(by) = by {
                v["requestedBy"] = json!(by);
            }
            v
        }
        None => Value::Null,
    };
    set_spec(store, ns, name, "manualUpdateHold", value)
}

fn set_spec(
    store: &Backend,
    ns: &str,
    name: &str,
    field: &str,
    value: Value,
) -> Result<(), CliError> {
    if store.get(Kind::Endpoint, ns, name)?.is_none() {
        return Err(not_found(Kind::Endpoint, ns, name));
    }
    store.set_spec_field(ns, name, field, value)?;
    Ok(())
}

fn history_table(status: &EndpointStatus, now: Timestamp) -> String {
    let mut rows = vec![
        [
            "ATTEMPT", "TRIGGER", "OUTCOME", "TRIES", "STARTED", "DURATION", "IMAGE", "MESSAGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    if let Some(a) = &status.active_attempt {
        rows.push(vec![
            a.id.clone(),
            format!("{:?}", a.trigger),
            format!("Running ({:?})", a.step),
            a.try_number.to_string(),
            table::age(&a.started_at, now) + " ago",
            String::new(),
            a.image.clone(),
            a.last_error.clone().unwrap_or_default(),
        ]);
    }
    for h in &status.history {
        let duration = match (
            h.started_at.parse::<Timestamp>(),
            h.finished_at.parse::<Timestamp>(),
        ) {
            (Ok(s), Ok(f)) => table::age(&s.to_string(), f),
            _ => String::new(),
        };
        rows.push(vec![
            h.id.clone(),
            format!("{:?}", h.trigger),
            format!("{:?}", h.outcome),
            h.tries.to_string(),
            table::age(&h.started_at, now) + " ago",
            duration,
            h.image.clone(),
            h.message.clone().unwrap_or_default(),
        ]);
    }
    if rows.len() == 1 {
        return "No reimage attempts yet.\n".into();
    }
    table::plain(&rows)
}

/// "held (FailedRollback) since T; the agent reads it back as held: why", or, from agents that
/// judge what Windows will do, "...; Windows: NotEnforceable (EditionID=Core): why".
/// `read_back` is the last report's `updateHold` (its evidence).
fn update_hold_line(h: &Value, read_back: Option<&Value>) -> String {
    let f = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or_default();
    let held = h.get("held").and_then(Value::as_bool).unwrap_or(false);
    let evidence: Vec<&str> = read_back
        .and_then(|r| r.get("evidence"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let effective = match (
        h.get("enforcement").and_then(Value::as_str),
        h.get("effective").and_then(Value::as_bool),
    ) {
        (Some(e), _) if evidence.is_empty() => format!("; Windows: {e}"),
        (Some(e), _) => format!("; Windows: {e} ({})", evidence.join("; ")),
        (None, Some(true)) => "; the agent reads it back as held".into(),
        (None, Some(false)) => "; the agent reads it back as released".into(),
        (None, None) => "; no agent read-back yet".into(),
    };
    format!(
        "{} ({}) since {}{effective}: {}",
        if held { "held" } else { "released" },
        f("reason"),
        f("since"),
        f("message")
    )
}

fn describe(
    kind: Kind,
    obj: &Value,
    events: &[recast_operator::store::embedded::EventRecord],
    now: Timestamp,
) -> String {
    let get = |p: &str| {
        table::eval(obj, p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut out = String::new();
    out.push_str(&format!("Name:         {}\n", get(".metadata.name")));
    out.push_str(&format!("Namespace:    {}\n", get(".metadata.namespace")));
    out.push_str(&format!("Kind:         {}\n", kind.as_str()));
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        out.push_str(&format!("Labels:       {}\n", l.join(",")));
    }
    out.push_str(&format!(
        "Created:      {} ({} ago)\n",
        get(".metadata.creationTimestamp"),
        table::age(&get(".metadata.creationTimestamp"), now)
    ));
    if let Some(spec) = obj.get("spec") {
        out.push_str("Spec:\n");
        for line in serde_yaml::to_string(spec).unwrap_or_default().lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(status) = obj.get("status") {
        out.push_str("Status:\n");
        if let Some(phase) = status.get("phase").and_then(Value::as_str) {
            out.push_str(&format!("  Phase:      {phase}\n"));
        }
        if let Some(m) = status.get("message").and_then(Value::as_str) {
            out.push_str(&format!("  Message:    {m}\n"));
        }
        if let Some(h) = status.get("updateHold") {
            let read_back = status.get("lastReport").and_then(|r| r.get("updateHold"));
            out.push_str(&format!(
                "  Updates:    {}\n",
                update_hold_line(h, read_back)
            ));
        }
        if kind == Kind::Endpoint {
            for line in boot_lines(obj).into_iter().chain(power_lines(obj)) {
                out.push_str(&format!("  {line}\n"));
            }
        }
        if let Some(conds) = status.get("conditions").and_then(Value::as_array) {
            out.push_str("  Conditions:\n");
            let mut rows = vec![vec![
                "    TYPE".to_string(),
                "STATUS".into(),
                "REASON".into(),
                "MESSAGE".into(),
            ]];
            for c in conds {
                let f = |k: &str| {
                    c.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                rows.push(vec![
                    format!("    {}", f("type")),
                    f("status"),
                    f("reason"),
                    f("message"),
                ]);
            }
            out.push_str(&table::plain(&rows));
        }
        let mut rest = status.clone();
        if let Some(o) = rest.as_object_mut() {
            for k in ["phase", "message", "conditions", "updateHold"] {
                o.remove(k);
            }
        }
        if rest.as_object().is_some_and(|o| !o.is_empty()) {
            for line in serde_yaml::to_string(&rest).unwrap_or_default().lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out.push_str("Events:\n");
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut rows = vec![vec![
            "  TYPE".to_string(),
            "REASON".into(),
            "AGE".into(),
            "MESSAGE".into(),
        ]];
        for e in events.iter().rev().take(30).rev() {
            rows.push(vec![
                format!("  {}", e.type_),
                e.reason.clone(),
                table::age(&e.time, now),
                e.message.clone(),
            ]);
        }
        out.push_str(&table::plain(&rows));
    }
    out
}

/// How an endpoint network-boots: the chain it gets (spec.bootChain resolved by its boot
/// mode), and Secure Boot as the imaging environment of its current (or else last) attempt
/// read it from the firmware.
/// How recast brings the machine to network-boot (the ways it has, the current try's way) and
/// the network boots the boot-loop watch has counted.
fn power_lines(obj: &Value) -> Vec<String> {
    let spec = obj.get("spec");
    let status = obj.get("status");
    let mut ways = Vec::new();
    if let Some(addr) = spec
        .and_then(|s| s.get("bmc"))
        .and_then(|b| b.get("address"))
        .and_then(Value::as_str)
    {
        ways.push(format!("Redfish ({addr})"));
    } else {
        ways.push("the agent's restart into the network (while Windows runs)".to_string());
        let wol = spec
            .and_then(|s| s.get("wakeOnLan"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if wol {
            ways.push("Wake-on-LAN (when it may be off)".to_string());
        }
        ways.push("a person".to_string());
    }
    let mut lines = vec![format!("Power:      {}", ways.join(", then "))];
    if let Some(a) = status.and_then(|s| s.get("activeAttempt"))
        && let Some(way) = a.get("powerWay").and_then(Value::as_str)
    {
        lines.push(format!(
            "This try:   {way} (attempt {} try {})",
            a.get("id").and_then(Value::as_str).unwrap_or_default(),
            a.get("tryNumber")
                .and_then(Value::as_u64)
                .unwrap_or_default()
        ));
    }
    let boots = status
        .and_then(|s| s.get("networkBoots"))
        .and_then(Value::as_array)
        .map(|b| b.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(last) = boots.last() {
        lines.push(format!(
            "Network boots with nothing armed since the last report: {} (last {last})",
            boots.len()
        ));
    }
    lines
}

fn boot_lines(obj: &Value) -> Vec<String> {
    use recast_crds::endpoint::{BootChain, BootMode, FirmwareTrust};
    let spec = obj.get("spec");
    let field = |name: &str| spec.and_then(|s| s.get(name)).cloned();
    let mode: Option<BootMode> = field("bootMode").and_then(|v| serde_json::from_value(v).ok());
    let chain: BootChain = field("bootChain")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut lines = Vec::new();
    if let Some(mode) = mode {
        // As the Linux imaging environment resolves it; WinPE's exception is said below.
        let resolved = chain.resolve(mode, false);
        let how = match resolved {
            BootChain::Signed if chain == BootChain::Auto => {
                "shim → GRUB → kernel, signed: boots with Secure Boot on; ipxe where the boot service runs --imaging-environment winpe"
            }
            BootChain::Signed => "shim → GRUB → kernel, signed: boots with Secure Boot on",
            _ => "iPXE: Secure Boot must be off",
        };
        let set = if chain == BootChain::Auto {
            format!(
                "auto for {}",
                serde_json::to_value(mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        } else {
            "spec.bootChain".to_string()
        };
        lines.push(format!("Boot chain: {} ({set}; {how})", resolved.as_str()));
    }
    let status = obj.get("status");
    let reported = status
        .and_then(|s| s.get("activeAttempt"))
        .filter(|a| a.get("secureBoot").is_some())
        .or_else(|| {
            status
                .and_then(|s| s.get("history"))
                .and_then(Value::as_array)
                .and_then(|h| h.iter().find(|r| r.get("secureBoot").is_some()))
        });
    if let Some(a) = reported {
        let on = a.get("secureBoot").and_then(Value::as_bool);
        let id = a.get("id").and_then(Value::as_str).unwrap_or_default();
        lines.push(format!(
            "Secure Boot: {} (as the imaging environment of attempt {id} read the firmware)",
            match on {
                Some(true) => "on",
                Some(false) => "off",
                None => "unknown",
            }
        ));
    }
    if let Some(f) = status
        .and_then(|s| s.get("firmware"))
        .and_then(|f| serde_json::from_value::<FirmwareTrust>(f.clone()).ok())
    {
        let cas = if f.db_certificates.is_empty() {
            "no certificate".to_string()
        } else {
            f.db_certificates
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push(format!(
            "Secure Boot db: {cas}{}; dbx: {} entries (read by attempt {} at {})",
            match f.db_hashes {
                0 => String::new(),
                n => format!(" and {n} image digests"),
            },
            f.dbx_entries,
            f.read_by_attempt,
            f.read_at
        ));
    }
    lines
}

/// Exit 0 when every document is valid, 1 when any is invalid, 2 when a file cannot be read.
fn validate(files: &[PathBuf]) -> ExitCode {
    let mut invalid = false;
    for file in files {
        let docs = match manifests::load(file) {
            Ok(d) => d,
            Err(e @ manifests::LoadError::Read { .. }) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("{e}");
                invalid = true;
                continue;
            }
        };
        for (path, doc) in docs {
            if !manifests::is_recast(&doc) {
                let kind = manifests::kind_name(&doc);
                println!(
                    "{}: document {}: {kind} skipped (not a recast.dev object)",
                    path.display(),
                    doc.index
                );
                continue;
            }
            match admit(&doc.value, None) {
                Ok(obj) => println!("{}: {}/{} valid", path.display(), obj.kind(), obj.name()),
                Err(e) => {
                    eprintln!("{}: document {}: {e}", path.display(), doc.index);
                    invalid = true;
                }
            }
        }
    }
    if invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_how_the_machine_is_brought_to_network_boot() {
        let ep = |spec: Value, status: Value| {
            json!({"metadata": {"name": "k", "namespace": "default"},
                   "spec": spec, "status": status})
        };
        let lines = power_lines(&ep(
            json!({"bmc": {"address": "https://10.40.0.101"}}),
            json!({}),
        ));
        assert_eq!(lines, ["Power:      Redfish (https://10.40.0.101)"]);
        let lines = power_lines(&ep(json!({}), json!({})));
        assert_eq!(
            lines,
            [
                "Power:      the agent's restart into the network (while Windows runs), then Wake-on-LAN (when it may be off), then a person"
            ]
        );
        let lines = power_lines(&ep(
            json!({"wakeOnLan": false}),
            json!({
                "activeAttempt": {"id": "k-3", "tryNumber": 2, "powerWay": "Agent"},
                "networkBoots": ["2026-01-15T09:00:00Z", "2026-01-15T09:02:00Z"]
            }),
        ));
        assert_eq!(
            lines,
            [
                "Power:      the agent's restart into the network (while Windows runs), then a person",
                "This try:   Agent (attempt k-3 try 2)",
                "Network boots with nothing armed since the last report: 2 (last 2026-01-15T09:02:00Z)"
            ]
        );
    }

    #[test]
    fn describe_says_which_chain_boots_the_endpoint_and_whether_secure_boot_was_on() {
        let ep = |spec: Value, status: Value| {
            json!({"metadata": {"name": "k", "namespace": "default"},
                   "spec": spec, "status": status})
        };
        let lines = boot_lines(&ep(json!({"bootMode": "uefi"}), json!({})));
        assert_eq!(
            lines,
            [
                "Boot chain: signed (auto for uefi; shim → GRUB → kernel, signed: boots with Secure Boot on; ipxe where the boot service runs --imaging-environment winpe)"
            ]
        );
        let lines = boot_lines(&ep(json!({"bootMode": "bios"}), json!({})));
        assert_eq!(
            lines,
            ["Boot chain: ipxe (auto for bios; iPXE: Secure Boot must be off)"]
        );
        let lines = boot_lines(&ep(
            json!({"bootMode": "uefi", "bootChain": "ipxe"}),
            json!({}),
        ));
        assert_eq!(
            lines,
            ["Boot chain: ipxe (spec.bootChain; iPXE: Secure Boot must be off)"]
        );
        // The running attempt's report wins; else the newest finished attempt that said.
        let status = json!({
            "activeAttempt": {"id": "k-3", "secureBoot": true},
            "history": [{"id": "k-2", "secureBoot": false}]
        });
        let lines = boot_lines(&ep(json!({"bootMode": "uefi"}), status));
        assert_eq!(
            lines[1],
            "Secure Boot: on (as the imaging environment of attempt k-3 read the firmware)"
        );
        let status = json!({
            "activeAttempt": {"id": "k-3"},
            "history": [{"id": "k-2"}, {"id": "k-1", "secureBoot": false}]
        });
        let lines = boot_lines(&ep(json!({"bootMode": "uefi"}), status));
        assert_eq!(
            lines[1],
            "Secure Boot: off (as the imaging environment of attempt k-1 read the firmware)"
        );
        // What the firmware trusts, as the last imaging environment read it.
        let status = json!({
            "firmware": {"secureBoot": true, "dbCertificates": ["Microsoft Windows Production PCA 2011", "Microsoft UEFI CA 2011"],
                         "dbxEntries": 431, "readByAttempt": "k-1", "readAt": "2026-12-05T10:00:00Z"}
        });
        let lines = boot_lines(&ep(json!({"bootMode": "uefi"}), status));
        assert_eq!(
            lines[1],
            "Secure Boot db: \"Microsoft Windows Production PCA 2011\", \"Microsoft UEFI CA 2011\"; dbx: 431 entries (read by attempt k-1 at 2026-12-05T10:00:00Z)"
        );
        // Nothing reported yet: no line, never a guess.
        assert_eq!(
            boot_lines(&ep(json!({"bootMode": "uefi"}), json!({}))).len(),
            1
        );
        let out = describe(
            Kind::Endpoint,
            &ep(json!({"bootMode": "uefi"}), json!({"phase": "Ready"})),
            &[],
            Timestamp::now(),
        );
        assert!(
            out.contains("  Boot chain: signed (auto for uefi;"),
            "{out}"
        );
    }

    #[test]
    fn the_update_hold_reads_as_one_line() {
        let h = json!({
            "held": true,
            "reason": "FailedRollback",
            "message": "a cumulative update failed and rolled back",
            "since": "2026-01-14T08:01:00Z",
            "effective": true
        });
        assert_eq!(
            update_hold_line(&h, None),
            "held (FailedRollback) since 2026-01-14T08:01:00Z; the agent reads it back as held: a cumulative update failed and rolled back"
        );
        let r = json!({"held": false, "reason": "Managed", "message": "m", "since": "t"});
        assert!(
            update_hold_line(&r, None)
                .starts_with("released (Managed) since t; no agent read-back yet")
        );
        // An agent that judges what Windows will do: its verdict and evidence.
        let mut home = h.clone();
        home["effective"] = json!(false);
        home["enforcement"] = json!("NotEnforceable");
        let read_back = json!({"held": false, "enforcement": "NotEnforceable",
            "obstacles": ["HomeEdition"], "evidence": ["EditionID=Core"]});
        assert!(
            update_hold_line(&home, Some(&read_back))
                .contains("; Windows: NotEnforceable (EditionID=Core): a cumulative"),
            "{}",
            update_hold_line(&home, Some(&read_back))
        );
        // describe shows it once, as that line, not again in the status dump.
        let obj = json!({
            "metadata": {"name": "kiosk-01", "namespace": "default"},
            "status": {"phase": "Ready", "updateHold": h}
        });
        let out = describe(
            Kind::Endpoint,
            &obj,
            &[],
            "2026-01-14T09:00:00Z".parse().unwrap(),
        );
        assert_eq!(out.matches("FailedRollback").count(), 1, "{out}");
        assert!(out.contains("  Updates:    held (FailedRollback)"), "{out}");
    }
}
