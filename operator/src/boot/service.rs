//! Starts the boot service's listeners (HTTP boot, and DHCP when enabled) over one store.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::BootIntents;
use super::dhcp::{self, DhcpConfig};
use super::http::{BootConfig, BootHttp, router};
use super::render::Renderer;
use super::token::TokenKey;
use crate::controller::Backend;
use crate::metrics::Metrics;

pub struct BootServiceConfig {
    pub http_listen: SocketAddr,
    pub boot: BootConfig,
    pub key: TokenKey,
    /// proxyDHCP / full DHCP; None leaves DHCP to the site (or to a relay pointing elsewhere).
    pub dhcp: Option<DhcpListeners>,
    /// Read-only TFTP from the boot root (UDP 69), for PXE ROMs that fetch iPXE first.
    pub tftp: Option<SocketAddr>,
}

pub struct DhcpListeners {
    pub config: DhcpConfig,
    /// Port 67 (and 4011 for PXE clients' proxyDHCP requests) unless testing.
    pub ports: Vec<u16>,
    pub interface: Option<String>,
}

/// Binds every listener first (so a port problem fails the start with a clear message), then
/// serves until `shutdown`.
pub async fn run<B: Backend + BootIntents>(
    backend: Arc<B>,
    cfg: BootServiceConfig,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let renderer = Renderer::new().map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| format!("cannot serve HTTP boot on {}: {e}", cfg.http_listen))?;
    let mut dhcp_tasks = Vec::new();
    if let Some(addr) = cfg.tftp {
        let source = super::tftp::FsSource::new(&cfg.boot.root).map_err(|e| e.to_string())?;
        let server = super::tftp::TftpServer::bind(
            super::tftp::TftpConfig {
                listen: addr,
                ..Default::default()
            },
            Arc::new(source),
            metrics.tftp.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(%addr, root = %cfg.boot.root.display(), "serving TFTP (read-only)");
        let mut stop = shutdown.clone();
        dhcp_tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server.run(stopped).await {
                tracing::error!("TFTP: {e}");
            }
        }));
    }
    if let Some(d) = cfg.dhcp {
        let config = Arc::new(d.config);
        for port in d.ports {
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            let sock = dhcp::bind(addr, d.interface.as_deref()).map_err(|e| e.to_string())?;
            tracing::info!(%addr, mode = ?mode_name(&config.mode), "serving DHCP");
            dhcp_tasks.push(tokio::spawn(dhcp::serve(
                sock,
                config.clone(),
                backend.clone(),
                metrics.clone(),
                shutdown.clone(),
            )));
        }
    }
    tracing::info!(addr = %cfg.http_listen, root = %cfg.boot.root.display(), base = %cfg.boot.base_url, "serving HTTP boot");
    let svc = Arc::new(BootHttp {
        claims: Default::default(),
        backend,
        renderer,
        key: cfg.key,
        config: cfg.boot,
        metrics,
    });
    let root = svc.config.root.clone();
    let mut stop = shutdown.clone();
    let served = super::listener::serve(listener, router(svc), root, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
    for t in dhcp_tasks {
        let _ = t.await;
    }
    served.map_err(|e| format!("HTTP boot stopped: {e}"))
}

fn mode_name(m: &dhcp::Mode) -> &'static str {
    match m {
        dhcp::Mode::Proxy => "proxy",
        dhcp::Mode::Full { .. } => "full",
    }
}
