//! Starts the boot service's listeners (HTTP boot, and DHCP when enabled) over one store.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::dhcp::{self, DhcpConfig};
use super::http::{BootConfig, BootHttp, router};
use super::ratelimit::{
    BOOT_HTTP_PER_MAC, DECLINE_NOTE_PER_MAC, DHCP_PER_MAC, MAX_TRACKED_MACS, SharedLimiter,
};
use super::render::Renderer;
use crate::http::Readiness;
use crate::metrics::Metrics;
use crate::store::Backend;
use crate::store::BootIntents;
use crate::token::TokenKey;

pub struct BootServiceConfig {
    pub http_listen: SocketAddr,
    pub boot: BootConfig,
    pub key: TokenKey,
    /// proxyDHCP / full DHCP; None leaves DHCP to the site (or to a relay pointing elsewhere).
    pub dhcp: Option<DhcpListeners>,
    /// Read-only TFTP from the boot root (UDP 69), for PXE ROMs that fetch iPXE first.
    pub tftp: Option<SocketAddr>,
    /// The HTTPS listener for the files that carry credentials (its URL is
    /// `boot.https_base_url`).
    pub https: Option<HttpsListener>,
    /// The multicast sessions (`boot.multicast`), when the caller shares them with the wave
    /// controller; made from `boot.multicast` when None.
    pub sessions: Option<Arc<super::multicast::Sessions>>,
}

pub struct HttpsListener {
    pub listen: SocketAddr,
    pub tls: rustls::ServerConfig,
}

pub struct DhcpListeners {
    pub config: DhcpConfig,
    /// Port 67 (and 4011 for PXE clients' proxyDHCP requests) unless testing.
    pub ports: Vec<u16>,
    pub interface: Option<String>,
}

/// Binds every listener first (so a port problem fails the start with a clear message), then
/// serves until `shutdown`.
///
/// `readiness` hears about the parts that can fail while the process lives on: the store's
/// boot lookups still loading (`boot-index`), and a DHCP or TFTP listener that stopped
/// (`dhcp:PORT`, `tftp`): a process that looks healthy while no machine can boot is worse than
/// one that says so.
pub async fn run<B: Backend + BootIntents>(
    backend: Arc<B>,
    secrets: Arc<dyn crate::store::TrySecrets>,
    cfg: BootServiceConfig,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    if let Some(d) = &cfg.dhcp {
        d.config.validate().map_err(|e| e.to_string())?;
    }
    let renderer = Renderer::new().map_err(|e| e.to_string())?;
    if !backend.boot_lookups_ready() {
        readiness.fail(
            "boot-index",
            "loading Endpoints and boot intents; boot requests are not answered yet",
        );
        let (b, r, mut stop) = (backend.clone(), readiness.clone(), shutdown.clone());
        tokio::spawn(async move {
            while !b.boot_lookups_ready() {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            tracing::info!("boot index loaded; answering boot requests");
            r.clear("boot-index");
        });
    }
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| format!("cannot serve HTTP boot on {}: {e}", cfg.http_listen))?;
    let https = match cfg.https {
        Some(h) => {
            let listener = tokio::net::TcpListener::bind(h.listen)
                .await
                .map_err(|e| format!("cannot serve HTTPS boot on {}: {e}", h.listen))?;
            Some((listener, h.tls))
        }
        None => None,
    };
    // Made by the caller, which also shows them in the waves' status; made here otherwise.
    let sessions = cfg.sessions.clone().or_else(|| {
        cfg.boot
            .multicast
            .clone()
            .map(|m| Arc::new(super::multicast::Sessions::new(m, metrics.clone())))
    });
    if let Some(m) = &cfg.boot.multicast {
        tracing::info!(interface = %m.settings.interface, group = %m.settings.group_base, port = m.settings.port_base, sessions = m.settings.max_sessions, max_mbps = m.settings.max_mbps, "multicast sessions on");
    }
    let svc = Arc::new(BootHttp {
        sessions,
        secrets,
        handed_off: Default::default(),
        log_tails: Default::default(),
        claims: Default::default(),
        clock: Arc::new(crate::clock::SystemClock),
        backend: backend.clone(),
        renderer,
        key: cfg.key,
        config: cfg.boot,
        metrics: metrics.clone(),
        per_mac_limit: SharedLimiter::new(BOOT_HTTP_PER_MAC, MAX_TRACKED_MACS),
        decline_notes: SharedLimiter::new(DECLINE_NOTE_PER_MAC, MAX_TRACKED_MACS),
    });
    for missing in missing_signed_chain(&svc.config.root, svc.config.imaging) {
        tracing::warn!(
            root = %svc.config.root.display(),
            "{missing} is missing under the boot root: UEFI endpoints on the signed chain (the default with the Linux imaging environment) cannot boot; lay it out with imager/env/signed-chain.sh --out BOOT_ROOT (the container image carries it), or set their spec.bootChain: ipxe"
        );
    }
    if cfg.dhcp.is_some() && cfg.tftp.is_none() {
        tracing::warn!(
            "DHCP names boot programs that PXE firmware fetches over TFTP, but --tftp is off: only NICs whose ROM is iPXE, and UEFI HTTP boot, can start; the signed chain (shim, GRUB) cannot. Add --tftp ADDR:69"
        );
    }
    let mut dhcp_tasks = Vec::new();
    if let Some(addr) = cfg.tftp {
        // Files under the boot root, and the signed chain's GRUB configurations, which the
        // boot service generates per MAC from the same decision as /boot/<mac>.
        let source = super::tftp_root::BootRootSource {
            files: super::tftp::FsSource::new(&svc.config.root).map_err(|e| e.to_string())?,
            boot: svc.clone(),
        };
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
        tracing::info!(%addr, root = %svc.config.root.display(), "serving TFTP (read-only)");
        let mut stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            server.run(stopped).await.map_err(|e| e.to_string())
        });
        dhcp_tasks.push(supervise(
            "tftp".into(),
            task,
            readiness.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(d) = cfg.dhcp {
        let config = Arc::new(d.config);
        let limiter = Arc::new(SharedLimiter::new(DHCP_PER_MAC, MAX_TRACKED_MACS));
        for port in d.ports {
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            let sock = dhcp::bind(addr, d.interface.as_deref()).map_err(|e| e.to_string())?;
            tracing::info!(%addr, mode = ?mode_name(&config.mode), "serving DHCP");
            let task = tokio::spawn(dhcp::serve(
                sock,
                config.clone(),
                svc.clone(),
                limiter.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            let task = tokio::spawn(async move {
                task.await.map_err(|e| e.to_string())?;
                Err::<(), String>("the listener returned".to_string())
            });
            dhcp_tasks.push(supervise(
                format!("dhcp:{port}"),
                task,
                readiness.clone(),
                shutdown.clone(),
            ));
        }
    }
    if let Some((listener, tls)) = https {
        tracing::info!(addr = ?listener.local_addr().ok(), base = ?svc.config.https_base_url, "serving the imaging protocol's credential files over HTTPS");
        let app = router(svc.clone()).layer(axum::Extension(super::http::OverHttps));
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            crate::http::tls::serve_tls(listener, tls, app, stop)
                .await
                .map_err(|e| e.to_string())
        });
        dhcp_tasks.push(supervise(
            "https".into(),
            task,
            readiness.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(addr = %cfg.http_listen, root = %svc.config.root.display(), base = %svc.config.base_url, "serving HTTP boot");
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

/// Waits for a listener task; if it ends before shutdown (an error, a panic), the process
/// turns unready with the reason, so an orchestrator replaces it and an alert fires.
fn supervise(
    part: String,
    task: tokio::task::JoinHandle<Result<(), String>>,
    readiness: Arc<Readiness>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ended = match task.await {
            Ok(Ok(())) => "stopped".to_string(),
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => format!("crashed: {e}"),
            Err(e) => e.to_string(),
        };
        if *shutdown.borrow() {
            return;
        }
        tracing::error!(part = %part, "boot listener {part} stopped: {ended}; the process is no longer ready");
        readiness.fail(&part, format!("the listener stopped: {ended}"));
    })
}

/// The signed chain's files the boot root lacks, for the start-up warning. With WinPE only an
/// explicit `bootChain: signed` uses the chain (and its kit is `recastctl bootkit`'s business).
fn missing_signed_chain(
    root: &std::path::Path,
    env: super::render::ImagingEnvironment,
) -> Vec<&'static str> {
    if env != super::render::ImagingEnvironment::Linux {
        return Vec::new();
    }
    [dhcp::SIGNED_SHIM, dhcp::SIGNED_GRUB]
        .into_iter()
        .filter(|f| !root.join(f).is_file())
        .collect()
}

fn mode_name(m: &dhcp::Mode) -> &'static str {
    match m {
        dhcp::Mode::Proxy => "proxy",
        dhcp::Mode::Full { .. } => "full",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::render::ImagingEnvironment;

    #[test]
    fn a_boot_root_without_the_signed_chain_is_named() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            missing_signed_chain(root.path(), ImagingEnvironment::Linux),
            ["sb/shimx64.efi", "sb/grubx64.efi"]
        );
        assert!(missing_signed_chain(root.path(), ImagingEnvironment::Winpe).is_empty());
        std::fs::create_dir_all(root.path().join("sb")).unwrap();
        std::fs::write(root.path().join("sb/shimx64.efi"), b"MZ").unwrap();
        assert_eq!(
            missing_signed_chain(root.path(), ImagingEnvironment::Linux),
            ["sb/grubx64.efi"]
        );
        std::fs::write(root.path().join("sb/grubx64.efi"), b"MZ").unwrap();
        assert!(missing_signed_chain(root.path(), ImagingEnvironment::Linux).is_empty());
    }
}
