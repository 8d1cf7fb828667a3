//! `recastctl token issue|revoke`: the agent gateway's per-endpoint bearer tokens, on either
//! backend. On the embedded store they live in the operator's `gateway.db` beside the store; on
//! Kubernetes in the operator's control namespace, shared by every gateway replica (see
//! operator/src/gateway/kube_ledger.rs). A token is shown once, on stdout, and only its SHA-256
//! is kept.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use jiff::Timestamp;
use recast_crds::manifest::Kind;
use recast_operator::credentials::{CredentialError, KubeCredentials, SqliteLedger};
use recast_operator::store::Key;

use crate::backend::Backend;
use crate::{CliError, not_found};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue (or rotate) the endpoint's gateway token and print it once; the old one stops
    /// working at once. Write it to the agent's --token-file.
    Issue {
        name: String,
        /// Kubernetes: the operator's control namespace (where recast-operator runs, or its
        /// --control-namespace).
        #[arg(long)]
        operator_namespace: Option<String>,
    },
    /// Revoke the endpoint's token: its agent's reports are refused (401) until a token is
    /// issued again or the agent enrolls after a reimage.
    Revoke {
        name: String,
        #[arg(long)]
        operator_namespace: Option<String>,
    },
}

fn control_namespace(store: &Backend, flag: Option<String>) -> Result<Option<String>, CliError> {
    match (store, flag) {
        (Backend::Kube(_), None) => Err(CliError::Usage(
            "on Kubernetes, token needs --operator-namespace: the namespace recast-operator runs in (its control namespace), where the gateway keeps tokens".into(),
        )),
        (Backend::Kube(_), Some(ns)) => Ok(Some(ns)),
        (Backend::Embedded(_), _) => Ok(None),
    }
}

pub fn run(
    store: &Backend,
    data_dir: Option<&Path>,
    ns: &str,
    command: TokenCommand,
    now: Timestamp,
) -> Result<ExitCode, CliError> {
    let (name, operator_namespace) = match &command {
        TokenCommand::Issue {
            name,
            operator_namespace,
        }
        | TokenCommand::Revoke {
            name,
            operator_namespace,
        } => (name.clone(), operator_namespace.clone()),
    };
    let control = control_namespace(store, operator_namespace)?;
    // A token for a mistyped name would be a credential for nothing, or for a later endpoint
    // of that name: the endpoint must exist.
    if store.get(Kind::Endpoint, ns, &name)?.is_none() {
        return Err(not_found(Kind::Endpoint, ns, &name));
    }
    let key = Key {
        namespace: ns.to_string(),
        name,
    };
    let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let failed = |e: CredentialError| CliError::Failed(format!("gateway tokens: {e}"));
    match (store, control, data_dir) {
        (Backend::Kube(k), Some(control), _) => {
            let credentials = KubeCredentials::new(k.client(), &control);
            match command {
                TokenCommand::Issue { .. } => {
                    let (token, _) = k.block_on(credentials.issue(&key, &now)).map_err(failed)?;
                    issued(&key, &token);
                }
                TokenCommand::Revoke { .. } => revoked(
                    &key,
                    k.block_on(credentials.revoke(&key)).map_err(failed)?.0,
                )?,
            }
        }
        (Backend::Embedded(_), _, Some(dir)) => {
            let ledger = SqliteLedger::open(dir).map_err(failed)?;
            match command {
                TokenCommand::Issue { .. } => {
                    issued(&key, &ledger.issue(&key, &now).map_err(failed)?)
                }
                TokenCommand::Revoke { .. } => revoked(&key, ledger.revoke(&key).map_err(failed)?)?,
            }
        }
        _ => unreachable!("the embedded store always has a data directory"),
    }
    Ok(ExitCode::SUCCESS)
}

fn issued(key: &Key, token: &str) {
    // The only place the token is ever shown.
    println!("{token}");
    eprintln!(
        "token issued for {key}; write it to the agent's --token-file (the previous token, if any, no longer works)"
    );
}

fn revoked(key: &Key, had: bool) -> Result<(), CliError> {
    if had {
        eprintln!("token of {key} revoked");
        Ok(())
    } else {
        Err(CliError::Failed(format!("{key} has no token")))
    }
}
