use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use recast_crds::manifest::parse_documents;
use recast_crds::validate::admit;

/// recastctl: apply, inspect and drive recast endpoints, golden images and waves.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests offline against the same rules the API enforces (for CI and GitOps).
    Validate {
        /// Files to check.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { files } => validate(&files),
    }
}

/// Exit 0 when every document is valid, 1 when any is invalid, 2 when a file cannot be read.
fn validate(files: &[PathBuf]) -> ExitCode {
    let mut invalid = false;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let docs = match parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                invalid = true;
                continue;
            }
        };
        for doc in docs {
            if doc.value.get("apiVersion").and_then(|v| v.as_str())
                != Some(recast_crds::API_VERSION)
            {
                let kind = doc
                    .value
                    .get("kind")
                    .and_then(|v| v.as_str())
                    .unwrap_or("object");
                println!(
                    "{}: document {}: {kind} skipped (not a recast.dev object)",
                    file.display(),
                    doc.index
                );
                continue;
            }
            match admit(&doc.value, None) {
                Ok(obj) => println!("{}: {}/{} valid", file.display(), obj.kind(), obj.name()),
                Err(e) => {
                    eprintln!("{}: document {}: {e}", file.display(), doc.index);
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
