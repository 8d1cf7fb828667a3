use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};
use recast_operator::bmc::RecordingPower;
use recast_operator::bmc::redfish::{EmbeddedSecrets, KubeSecrets, RedfishPower, RedfishTuning};
use recast_operator::controller::embedded::{EmbeddedBackend, run as run_embedded};
use recast_operator::controller::kube::{KubeOptions, run as run_kube};
use recast_operator::controller::{Controller, SystemClock};
use recast_operator::metrics::Metrics;
use recast_operator::store::embedded::EmbeddedStore;
use recast_operator::{http, manifests};
use tokio::sync::watch;

/// recast-operator: keeps physical Windows endpoints on a verified golden image by reimaging
/// them instead of patching them in place.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendKind {
    /// SQLite in --data-dir: one process, no Kubernetes.
    Embedded,
    /// The Kubernetes API (in-cluster or KUBECONFIG).
    Kube,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PowerDriver {
    /// Each endpoint's BMC over Redfish (spec.bmc); an endpoint without one gets an event
    /// asking for a restart by hand.
    Redfish,
    /// Record the power cycles instead of performing them (demos, lifecycle tests).
    Record,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers and serve health, readiness and metrics.
    Run {
        #[arg(long, value_enum, default_value = "embedded", env = "RECAST_BACKEND")]
        backend: BackendKind,
        /// Data directory of the embedded store.
        #[arg(long, default_value = "/var/lib/recast", env = "RECAST_DATA_DIR")]
        data_dir: PathBuf,
        /// Apply these manifest files or directories at start (embedded backend).
        #[arg(long = "load", value_name = "PATH")]
        load: Vec<PathBuf>,
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, default_value = "127.0.0.1:8080", env = "RECAST_LISTEN")]
        listen: SocketAddr,
        /// How power cycles are performed.
        #[arg(
            long,
            value_enum,
            default_value = "redfish",
            env = "RECAST_POWER_DRIVER"
        )]
        power_driver: PowerDriver,
        #[command(flatten)]
        kube: KubeArgs,
    },

    /// Print the CustomResourceDefinitions, for `recast-operator crds | kubectl apply -f -`.
    Crds,
}

/// Leader election on the kube backend.
#[derive(clap::Args, Clone)]
struct KubeArgs {
    /// Namespace of the leader-election Lease (the operator's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease; default: hostname plus a random suffix.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease stays valid without renewal; a standby takes over after this.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How long before expiry the holder renews.
    #[arg(long, default_value_t = 5)]
    lease_grace_seconds: u64,
    /// Watch only this namespace (a namespaced install needs only a Role there); default: all.
    #[arg(long, env = "RECAST_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Run {
            backend,
            data_dir,
            load,
            listen,
            power_driver,
            kube: kube_args,
        } => {
            init_tracing();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("recast-operator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(
                backend,
                data_dir,
                load,
                listen,
                power_driver,
                kube_args,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("recast-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(
    backend: BackendKind,
    data_dir: PathBuf,
    load: Vec<PathBuf>,
    listen: SocketAddr,
    power_driver: PowerDriver,
    kube_opts: KubeArgs,
) -> Result<(), String> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let server = tokio::spawn(http::serve(
        listen,
        http::router(ready.clone(), metrics.clone()),
        stop_rx.clone(),
    ));
    match backend {
        BackendKind::Embedded => {
            let store = Arc::new(EmbeddedStore::open(&data_dir).map_err(|e| e.to_string())?);
            tracing::info!(path = %store.path().display(), "embedded store open");
            for path in &load {
                apply_at_start(&store, path)?;
            }
            let backend = Arc::new(EmbeddedBackend {
                store: store.clone(),
            });
            let result = match power_driver {
                PowerDriver::Redfish => {
                    let power = RedfishPower::new(EmbeddedSecrets(store), RedfishTuning::default());
                    let ctrl =
                        Controller::new(backend, Arc::new(power), Arc::new(SystemClock), metrics);
                    run_embedded(Arc::new(ctrl), stop_rx, ready).await
                }
                PowerDriver::Record => {
                    let power = RecordingPower::default();
                    let ctrl =
                        Controller::new(backend, Arc::new(power), Arc::new(SystemClock), metrics);
                    run_embedded(Arc::new(ctrl), stop_rx, ready).await
                }
            };
            result.map_err(|e| e.to_string())?;
        }
        BackendKind::Kube => {
            let client = kube::Client::try_default().await.map_err(|e| {
                format!("cannot reach Kubernetes ({e}); run in a cluster or set KUBECONFIG")
            })?;
            let identity = kube_opts.identity.clone().unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "recast".into());
                format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            });
            let opts = KubeOptions {
                lease_namespace: kube_opts.lease_namespace.clone(),
                identity,
                lease_duration: std::time::Duration::from_secs(kube_opts.lease_duration_seconds),
                lease_grace: std::time::Duration::from_secs(kube_opts.lease_grace_seconds),
                watch_namespace: kube_opts.watch_namespace.clone(),
            };
            match power_driver {
                PowerDriver::Redfish => {
                    let power =
                        RedfishPower::new(KubeSecrets(client.clone()), RedfishTuning::default());
                    run_kube(client, Arc::new(power), metrics, opts, ready, stop_rx).await?;
                }
                PowerDriver::Record => {
                    let power = RecordingPower::default();
                    run_kube(client, Arc::new(power), metrics, opts, ready, stop_rx).await?;
                }
            }
        }
    }
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot serve on {listen}: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

fn apply_at_start(store: &EmbeddedStore, path: &std::path::Path) -> Result<(), String> {
    let docs = manifests::load(path).map_err(|e| e.to_string())?;
    for (file, doc) in docs {
        if manifests::is_secret(&doc) {
            let (name, outcome) = store
                .apply_secret(&doc.value, "default")
                .map_err(|e| format!("{} document {}: {e}", file.display(), doc.index))?;
            tracing::info!("secret/{name} {}", outcome.as_str());
            continue;
        }
        if !manifests::is_recast(&doc) {
            let kind = manifests::kind_name(&doc);
            tracing::info!(file = %file.display(), "skipped {kind}: not a recast.dev object");
            continue;
        }
        let (kind, name, outcome) = store
            .apply(&doc.value, "default")
            .map_err(|e| format!("{} document {}: {e}", file.display(), doc.index))?;
        tracing::info!("{kind}/{name} {}", outcome.as_str());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
