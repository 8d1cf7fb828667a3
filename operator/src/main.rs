use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};
use recast_operator::bmc::RecordingPower;
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

// Parsed once at start; the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        #[command(flatten)]
        kube: KubeArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },

    /// Issue (or rotate) and revoke agent gateway tokens (embedded backend's data directory).
    GatewayToken {
        #[command(subcommand)]
        action: TokenAction,
        #[arg(
            long,
            default_value = "/var/lib/recast",
            env = "RECAST_DATA_DIR",
            global = true
        )]
        data_dir: PathBuf,
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

/// The agent gateway (HTTPS, POST /v1/reports); off unless --gateway-listen is given.
#[derive(clap::Args, Clone)]
struct GatewayArgs {
    /// Address for the agent gateway, such as 0.0.0.0:8443.
    #[arg(long, env = "RECAST_GATEWAY_LISTEN", requires_all = ["gateway_cert", "gateway_key"])]
    gateway_listen: Option<SocketAddr>,
    /// PEM certificate chain the gateway presents.
    #[arg(long, env = "RECAST_GATEWAY_CERT")]
    gateway_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "RECAST_GATEWAY_KEY")]
    gateway_key: Option<PathBuf>,
    /// A report that changes nothing is written at most this often per endpoint.
    #[arg(long, default_value = "10m")]
    gateway_heartbeat_period: String,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a new token for NAMESPACE/NAME (or NAME in "default"); the old one stops working.
    Issue { endpoint: String },
    /// Revoke the endpoint's token.
    Revoke { endpoint: String },
}

fn endpoint_key(s: &str) -> recast_operator::controller::Key {
    let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
    recast_operator::controller::Key {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn gateway_token(action: TokenAction, data_dir: &std::path::Path) -> Result<(), String> {
    use recast_operator::gateway::credentials::CredentialStore;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let store = CredentialStore::open(data_dir).map_err(|e| e.to_string())?;
    match action {
        TokenAction::Issue { endpoint } => {
            let key = endpoint_key(&endpoint);
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let token = store.issue(&key, &now).map_err(|e| e.to_string())?;
            // The only place the token is ever shown.
            println!("{token}");
            eprintln!("token issued for {key}; write it to the agent's --token-file");
        }
        TokenAction::Revoke { endpoint } => {
            let key = endpoint_key(&endpoint);
            if store.revoke(&key).map_err(|e| e.to_string())? {
                eprintln!("token of {key} revoked");
            } else {
                return Err(format!("{key} has no token"));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GatewayToken { action, data_dir } => match gateway_token(action, &data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("recast-operator: {e}");
                ExitCode::FAILURE
            }
        },
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
            kube: kube_args,
            gateway,
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
            match rt.block_on(run(backend, data_dir, load, listen, kube_args, gateway)) {
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
    kube_opts: KubeArgs,
    gateway_args: GatewayArgs,
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
            let backend = Arc::new(EmbeddedBackend { store });
            if let Some(addr) = gateway_args.gateway_listen {
                start_gateway(
                    addr,
                    &gateway_args,
                    &data_dir,
                    backend.clone(),
                    stop_rx.clone(),
                )
                .await?;
            }
            let ctrl = Arc::new(Controller::new(
                backend,
                Arc::new(RecordingPower::default()),
                Arc::new(SystemClock),
                metrics,
            ));
            run_embedded(ctrl, stop_rx, ready)
                .await
                .map_err(|e| e.to_string())?;
        }
        BackendKind::Kube => {
            if gateway_args.gateway_listen.is_some() {
                return Err("the agent gateway runs with the embedded backend for now; run it without --gateway-listen on the kube backend".into());
            }
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
            run_kube(
                client,
                Arc::new(RecordingPower::default()),
                metrics,
                opts,
                ready,
                stop_rx,
            )
            .await?;
        }
    }
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot serve on {listen}: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn start_gateway(
    addr: SocketAddr,
    args: &GatewayArgs,
    data_dir: &std::path::Path,
    backend: Arc<EmbeddedBackend>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    use recast_operator::gateway::{self, Gateway, GatewayConfig};
    let (Some(cert), Some(key)) = (&args.gateway_cert, &args.gateway_key) else {
        return Err("--gateway-listen needs --gateway-cert and --gateway-key".into());
    };
    let tls = gateway::tls_config(cert, key).map_err(|e| e.to_string())?;
    let heartbeat_period = recast_crds::duration::parse(&args.gateway_heartbeat_period)
        .map_err(|e| format!("--gateway-heartbeat-period: {e}"))?;
    let credentials =
        Arc::new(gateway::credentials::CredentialStore::open(data_dir).map_err(|e| e.to_string())?);
    let gw = Arc::new(Gateway::new(
        backend,
        credentials,
        GatewayConfig {
            heartbeat_period,
            ..GatewayConfig::default()
        },
        Arc::new(SystemClock),
    ));
    let primed = gw.prime().await.map_err(|e| e.to_string())?;
    tracing::info!(endpoints = primed, "agent gateway primed");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve the agent gateway on {addr}: {e}"))?;
    tokio::spawn(gw.clone().run_background(stop.clone()));
    tokio::spawn(async move {
        if let Err(e) = gateway::serve_tls(listener, tls, gateway::router(gw), stop).await {
            tracing::error!(error = %e, "agent gateway stopped");
        }
    });
    Ok(())
}

fn apply_at_start(store: &EmbeddedStore, path: &std::path::Path) -> Result<(), String> {
    let docs = manifests::load(path).map_err(|e| e.to_string())?;
    for (file, doc) in docs {
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
