use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// recast-operator: keeps physical Windows endpoints on a verified golden image by reimaging
/// them instead of patching them in place.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, for `recast-operator crds | kubectl apply -f -`.
    Crds,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds => match recast_operator::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("recast-operator: cannot render the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
