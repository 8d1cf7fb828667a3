//! `recastctl bmc status|power|events NAME`: look at and drive an endpoint's BMC directly,
//! with the credentials its Endpoint names (read through the selected backend).

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use recast_bmc::{Bmc, PowerAction, RedfishError, crash_evidence, events::bugcheck_name};
use recast_crds::Endpoint;
use recast_crds::manifest::Kind;
use recast_operator::bmc::redfish::{RedfishTuning, StaticSecrets, client_config};

use crate::backend::Backend;
use crate::{CliError, not_found};

#[derive(Subcommand)]
pub enum BmcCommand {
    /// The system behind the endpoint's BMC: power, health, boot override, allowed resets.
    Status { name: String },
    /// Switch the endpoint on, off (hard), or cycle it (hard restart; on when off).
    Power { name: String, action: PowerArg },
    /// The BMC's system event log, with OS crash records (BootCrash evidence) marked.
    Events {
        name: String,
        /// Print the entries as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PowerArg {
    On,
    Off,
    Cycle,
}

fn redfish(address: &str, e: RedfishError) -> CliError {
    CliError::Failed(format!("BMC {address}: {e}"))
}

pub fn run(backend: &Backend, ns: &str, cmd: BmcCommand) -> Result<(), CliError> {
    let name = match &cmd {
        BmcCommand::Status { name }
        | BmcCommand::Power { name, .. }
        | BmcCommand::Events { name, .. } => name.clone(),
    };
    let obj = backend
        .get(Kind::Endpoint, ns, &name)?
        .ok_or_else(|| not_found(Kind::Endpoint, ns, &name))?;
    let ep: Endpoint = serde_json::from_value(obj)
        .map_err(|e| CliError::Failed(format!("endpoint {name} is unreadable: {e}")))?;
    let spec = ep.spec.bmc.clone().ok_or_else(|| {
        CliError::Failed(format!(
            "endpoint {name} has no spec.bmc; add its BMC address and credentials Secret to manage it"
        ))
    })?;
    let mut secrets = StaticSecrets::default();
    let mut wanted = vec![spec.credentials_secret_ref.name.clone()];
    if let Some(ca) = &spec.ca_bundle_secret_ref {
        wanted.push(ca.name.clone());
    }
    for secret in wanted {
        if let Some(data) = backend.secret(ns, &secret)? {
            secrets.0.insert((ns.to_string(), secret), data);
        }
    }
    let tuning = RedfishTuning {
        request_timeout: Duration::from_secs(20),
        poll_interval: Duration::from_secs(1),
        retries: 2,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    let address = spec.address.clone();
    rt.block_on(async {
        let cfg = client_config(ns, &spec, &secrets, &tuning)
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let bmc = Bmc::connect(cfg, spec.system_id.as_deref())
            .await
            .map_err(|e| redfish(&address, e))?;
        let result = match cmd {
            BmcCommand::Status { .. } => status(&bmc, &name, &address).await,
            BmcCommand::Power { action, .. } => power(&bmc, &name, action).await,
            BmcCommand::Events { json, .. } => events(&bmc, &name, json).await,
        };
        let _ = bmc.logout().await;
        result.map_err(|e| redfish(&address, e))
    })
}

async fn status(bmc: &Bmc, name: &str, address: &str) -> Result<(), RedfishError> {
    let sys = bmc.system().await?;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("Endpoint:        {name}");
    println!("BMC:             {address}");
    println!("System:          {}", sys.path);
    println!(
        "Hardware:        {} {} (serial {})",
        or_dash(&sys.manufacturer),
        or_dash(&sys.model),
        or_dash(&sys.serial)
    );
    println!(
        "Power:           {}",
        sys.power_state
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("Health:          {}", or_dash(&sys.health));
    match &sys.boot {
        Some(b) => println!(
            "Boot override:   {} ({}, mode {})",
            or_dash(&b.target),
            or_dash(&b.enabled),
            or_dash(&b.mode)
        ),
        None => println!("Boot override:   not supported"),
    }
    println!(
        "Resets allowed:  {}",
        sys.reset_allowed
            .map(|r| r.join(", "))
            .unwrap_or_else(|| "not advertised".into())
    );
    Ok(())
}

async fn power(bmc: &Bmc, name: &str, action: PowerArg) -> Result<(), RedfishError> {
    let action = match action {
        PowerArg::On => PowerAction::On,
        PowerArg::Off => PowerAction::Off,
        PowerArg::Cycle => PowerAction::Cycle,
    };
    let (before, reset) = bmc.reset(action).await?;
    eprintln!(
        "{name}: sent {reset}; waiting up to {:?} for PowerState {}",
        bmc.power_settle(),
        action.expected_state()
    );
    let after = bmc.wait_power(&action.expected_state()).await?;
    println!(
        "{name}: {reset} ({} → {after})",
        before.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    Ok(())
}

async fn events(bmc: &Bmc, name: &str, json: bool) -> Result<(), RedfishError> {
    let log = bmc.event_log().await?;
    let crashes = crash_evidence(&log.entries);
    if json {
        let out = serde_json::json!({
            "endpoint": name, "services": log.services, "entries": log.entries,
            "crashes": crashes, "skipped": log.skipped, "truncated": log.truncated,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    let mut rows = vec![vec![
        "TIME".to_string(),
        "LOG".into(),
        "ID".into(),
        "SEVERITY".into(),
        "CRASH".into(),
        "MESSAGE".into(),
    ]];
    for e in &log.entries {
        let crash = crashes
            .iter()
            .any(|c| c.entry_id == e.id && c.service == e.service);
        rows.push(vec![
            e.created.clone().unwrap_or_else(|| "-".into()),
            e.service.clone(),
            e.id.clone(),
            e.severity.clone().unwrap_or_else(|| "-".into()),
            if crash { "yes".into() } else { "".into() },
            e.message.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", crate::table::plain(&rows));
    if log.skipped > 0 {
        println!("({} unreadable entries skipped)", log.skipped);
    }
    if log.truncated {
        println!("(the log is longer than recast reads; older entries not shown)");
    }
    match crashes.len() {
        0 => println!("{name}: no OS crash recorded by the BMC"),
        n => {
            println!("{name}: {n} OS crash record(s) (BootCrash evidence):");
            for c in &crashes {
                let code = c
                    .bugcheck
                    .map(|b| {
                        format!(
                            " bug check {b:#X}{}",
                            bugcheck_name(b)
                                .map(|n| format!(" {n}"))
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "  {} {}/{}{code}: {}",
                    c.created.as_deref().unwrap_or("-"),
                    c.service,
                    c.entry_id,
                    c.message
                );
            }
        }
    }
    Ok(())
}
