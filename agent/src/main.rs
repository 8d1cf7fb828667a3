use clap::Parser;

/// recast-agent: runs on each endpoint and reports its build, update results and crashes to the
/// recast gateway. The collectors arrive with the agent issue; today it only identifies itself.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
