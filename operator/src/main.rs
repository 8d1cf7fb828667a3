use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};
use recast_operator::bmc::RecordingPower;
use recast_operator::bmc::redfish::{EmbeddedSecrets, KubeSecrets, RedfishPower, RedfishTuning};
use recast_operator::clock::SystemClock;
use recast_operator::controller::Controller;
use recast_operator::controller::embedded::run as run_embedded;
use recast_operator::controller::kube::KubeOptions;
use recast_operator::controller::kube::run as run_kube;
use recast_operator::metrics::Metrics;
use recast_operator::store::embedded::EmbeddedBackend;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    /// The controllers (and, when given their flags, the boot service, the gateway, the
    /// admission webhook and the internal input endpoint).
    All,
    /// Only the boot service, with read-only access to the Kubernetes API: no Lease, no
    /// controller, no writes. Inputs go to the operator over --forward-inputs-to. Kube only.
    Boot,
    /// Only the agent gateway (--gateway-listen), any number of replicas at once: tokens,
    /// enrollments and report sequences live in the control namespace, inputs go to the
    /// endpoints' inboxes; no Lease, no controller. Kube only.
    Gateway,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PowerDriver {
    /// Each endpoint's BMC over Redfish (spec.bmc); an endpoint without one gets an event
    /// asking for a restart by hand.
    Redfish,
    /// Record the power cycles instead of performing them (demos, lifecycle tests).
    Record,
}

// Parsed once at start; the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the controllers and serve health, readiness and metrics.
    Run {
        #[arg(long, value_enum, default_value = "embedded", env = "RECAST_BACKEND")]
        backend: BackendKind,
        /// What this process does: everything, or only the boot service (read-only).
        #[arg(long, value_enum, default_value = "all", env = "RECAST_ROLE")]
        role: Role,
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
        /// How often the controller reads the BMC event log of endpoints whose agent went
        /// silent, looking for an OS crash (such as 0xED) that makes them BootCrash.
        #[arg(long, default_value = "2m")]
        bmc_watch_interval: String,
        #[command(flatten)]
        breaker: BreakerArgs,
        #[command(flatten)]
        kube: KubeArgs,
        #[command(flatten)]
        boot: BootArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        images: ImageArgs,
        #[command(flatten)]
        deep_check: DeepCheckArgs,
    },

    /// Internal: one sandboxed deep check of a golden WIM (the GoldenImage controller starts
    /// it with resource limits and reads its JSON reply).
    #[command(hide = true)]
    DeepCheck {
        /// 1-based image index.
        #[arg(long)]
        index: u32,
        /// Other parts of a split WIM.
        #[arg(long = "part")]
        parts: Vec<PathBuf>,
        #[arg(long)]
        full_verify: bool,
        wim: PathBuf,
    },

    /// Send Wake-on-LAN magic packets as the controller does for a machine without a BMC
    /// (to check that a machine wakes before relying on it).
    WakeOnLan {
        /// The provisioning interface (255.255.255.255 and its subnet's directed broadcast).
        #[arg(long)]
        interface: Option<String>,
        /// More destinations, such as 10.41.0.255:9.
        #[arg(long, value_delimiter = ',')]
        target: Vec<std::net::SocketAddrV4>,
        /// The machine's MAC addresses.
        #[arg(required = true)]
        macs: Vec<String>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DhcpMode {
    /// No DHCP: the site's DHCP server or relay points machines at the boot files itself.
    Off,
    /// proxyDHCP: boot information only, next to the site's DHCP server.
    Proxy,
    /// Addresses from --dhcp-leases, for an isolated provisioning network.
    Full,
}

/// The boot service (HTTP boot, DHCP). Off unless --boot-http is given.
#[derive(clap::Args, Clone)]
struct BootArgs {
    /// Serve HTTP boot (iPXE scripts, artifacts, the imaging protocol) on this address.
    #[arg(long, env = "RECAST_BOOT_HTTP")]
    boot_http: Option<SocketAddr>,
    /// The URL machines use to reach --boot-http, such as http://10.0.40.2:8081.
    #[arg(long, env = "RECAST_BOOT_URL")]
    boot_url: Option<String>,
    /// Directory of boot artifacts (ipxe/, winpe/, linux/, images/<sha256>.wim); default
    /// DATA_DIR/boot.
    #[arg(long, env = "RECAST_BOOT_ROOT")]
    boot_root: Option<PathBuf>,
    /// What an armed machine boots to apply the image.
    #[arg(long, value_enum, default_value = "winpe")]
    imaging_environment: recast_operator::boot::render::ImagingEnvironment,
    /// What to do with MAC addresses no Endpoint lists.
    #[arg(long, value_enum, default_value = "ignore")]
    unknown_macs: recast_operator::boot::UnknownMacPolicy,
    /// The site's WDS server, for endpoints with spec.bootServer: wds.
    #[arg(long)]
    wds_server: Option<std::net::Ipv4Addr>,
    /// Key of the per-try imaging tokens (32 bytes; created if missing). Every replica needs
    /// the same file. Default DATA_DIR/imaging.key.
    #[arg(long, env = "RECAST_IMAGING_KEY_FILE")]
    imaging_key_file: Option<PathBuf>,
    /// Where reimaged endpoints' agents report.
    #[arg(long, env = "RECAST_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// Serve read-only TFTP from the boot root on this address (0.0.0.0:69), for PXE ROMs that
    /// fetch the iPXE binary first.
    #[arg(long, env = "RECAST_TFTP")]
    tftp: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "off")]
    dhcp: DhcpMode,
    /// This server's IPv4 address on the provisioning network (DHCP server id, next-server).
    #[arg(long)]
    dhcp_server_ip: Option<std::net::Ipv4Addr>,
    /// Answer DHCP only on this interface.
    #[arg(long)]
    dhcp_interface: Option<String>,
    /// Send each wave batch's image once, by multicast (udpcast's udp-sender), out of this
    /// interface (the one facing the machines; needs --imaging-environment linux). Off when
    /// unset: every machine downloads its image over HTTP.
    #[arg(long, env = "RECAST_MULTICAST_INTERFACE")]
    multicast_interface: Option<String>,
    /// The first session's multicast data group (session n uses the n-th address after it).
    #[arg(long, default_value_t = recast_core::multicast::DEFAULT_GROUP_BASE)]
    multicast_group: std::net::Ipv4Addr,
    /// The first session's UDP port pair (session n uses PORT+2n and PORT+2n+1).
    #[arg(long, default_value_t = recast_core::multicast::DEFAULT_PORT_BASE)]
    multicast_ports: u16,
    /// Multicast sessions at once.
    #[arg(long, default_value_t = recast_core::multicast::DEFAULT_MAX_SESSIONS)]
    multicast_sessions: u16,
    /// Multicast TTL (1: the machines' own subnet only).
    #[arg(long, default_value_t = recast_core::multicast::DEFAULT_TTL)]
    multicast_ttl: u8,
    /// Rate cap per session in Mbit/s: the site's network is shared.
    #[arg(long, default_value_t = recast_core::multicast::DEFAULT_MAX_MBPS)]
    multicast_max_mbps: u32,
    /// How long automatic attempts (no wave) of one image wait for each other in one session
    /// after the first machine joined, such as 60s; 0s: they download over HTTP.
    #[arg(long, default_value = "60s")]
    multicast_automatic_wait: String,
    /// Wake-on-LAN for machines with no BMC whose agent is silent (they may be powered off):
    /// `on` sends magic packets when such a machine must be imaged, `off` asks a person.
    #[arg(long, value_enum, default_value = "on")]
    wake_on_lan: OnOff,
    /// The provisioning interface magic packets leave on (255.255.255.255 and its subnet's
    /// directed broadcast). Default: --dhcp-interface; without either, the host's routes.
    #[arg(long)]
    wake_on_lan_interface: Option<String>,
    /// More destinations for magic packets (another subnet's directed broadcast, as
    /// 10.41.0.255:9), comma-separated.
    #[arg(long, value_delimiter = ',')]
    wake_on_lan_target: Vec<std::net::SocketAddrV4>,
    /// UDP ports to answer DHCP on (67, and 4011 for PXE clients' proxyDHCP requests).
    #[arg(long, value_delimiter = ',', default_value = "67,4011")]
    dhcp_ports: Vec<u16>,
    /// Static lease table for --dhcp full: one `MAC IP [HOSTNAME]` per line.
    #[arg(long)]
    dhcp_leases: Option<PathBuf>,
    #[arg(long, default_value = "255.255.255.0")]
    dhcp_subnet_mask: std::net::Ipv4Addr,
    #[arg(long)]
    dhcp_router: Option<std::net::Ipv4Addr>,
    #[arg(long, value_delimiter = ',')]
    dhcp_dns: Vec<std::net::Ipv4Addr>,
    /// Locale and time zone written into unattend.xml.
    #[arg(long, default_value = "en-US")]
    locale: String,
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// Also serve the imaging protocol over HTTPS here (such as 0.0.0.0:8443): the files that
    /// carry credentials (unattend.xml with passwords or join credentials, agent.json, the
    /// offline domain join file) are then fetched only over it. Needs --boot-tls-cert and
    /// --boot-tls-key; the imaging environment must trust the certificate's CA.
    #[arg(long, requires_all = ["boot_tls_cert", "boot_tls_key"])]
    boot_https: Option<SocketAddr>,
    /// How machines reach --boot-https (default https://ADDR of --boot-https); the
    /// certificate must name this host.
    #[arg(long, requires = "boot_https")]
    boot_https_url: Option<String>,
    /// PEM certificate chain of the HTTPS boot listener.
    #[arg(long, requires = "boot_https")]
    boot_tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS boot listener.
    #[arg(long, requires = "boot_https")]
    boot_tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl BootArgs {
    /// Where the controller's Wake-on-LAN packets go.
    fn wake(&self) -> recast_operator::wake::WakeConfig {
        recast_operator::wake::WakeConfig {
            interface: self
                .wake_on_lan_interface
                .clone()
                .or_else(|| self.dhcp_interface.clone()),
            extra_targets: self.wake_on_lan_target.clone(),
            disabled: self.wake_on_lan == OnOff::Off,
        }
    }
    fn imaging_key_path(&self, data_dir: &std::path::Path) -> PathBuf {
        self.imaging_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join(recast_operator::store::embedded::IMAGING_KEY_FILE))
    }

    /// The key of the per-try imaging tokens and the agents' enrollment credentials, shared
    /// by the boot service and the gateway.
    fn imaging_key(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<recast_operator::token::TokenKey, String> {
        let path = self.imaging_key_path(data_dir);
        recast_operator::token::TokenKey::load_or_create(&path).map_err(|e| e.to_string())
    }

    /// The boot root: what the boot service serves and where the GoldenImage controller puts
    /// verified WIMs (images/<sha256>.wim).
    fn root(&self, data_dir: &std::path::Path) -> PathBuf {
        self.boot_root
            .clone()
            .unwrap_or_else(|| data_dir.join("boot"))
    }

    /// The multicast sessions' settings, checked; None without --multicast-interface.
    fn multicast(
        &self,
    ) -> Result<Option<recast_operator::boot::multicast::MulticastConfig>, String> {
        let Some(interface) = self.multicast_interface.clone() else {
            return Ok(None);
        };
        if self.imaging_environment != recast_operator::boot::render::ImagingEnvironment::Linux {
            return Err("--multicast-interface needs --imaging-environment linux: WinPE's startnet.cmd has no multicast receiver".into());
        }
        let settings = recast_core::multicast::Settings {
            interface,
            group_base: self.multicast_group,
            port_base: self.multicast_ports,
            max_sessions: self.multicast_sessions,
            ttl: self.multicast_ttl,
            max_mbps: self.multicast_max_mbps,
            retries_until_drop: recast_core::multicast::DEFAULT_RETRIES_UNTIL_DROP,
        };
        settings.check().map_err(|e| e.to_string())?;
        let wait = recast_crds::duration::parse(&self.multicast_automatic_wait).map_err(|_| {
            format!(
                "--multicast-automatic-wait {:?} is not a duration such as 60s or 2m (0s: automatic attempts download over HTTP)",
                self.multicast_automatic_wait
            )
        })?;
        if wait.as_secs() > recast_core::multicast::MAX_WAIT_SECONDS.into() {
            return Err(format!(
                "--multicast-automatic-wait {} is longer than {} s: machines would wait that long for each other",
                self.multicast_automatic_wait,
                recast_core::multicast::MAX_WAIT_SECONDS
            ));
        }
        Ok(Some(recast_operator::boot::multicast::MulticastConfig {
            settings,
            automatic_wait_seconds: wait.as_secs() as u32,
        }))
    }

    fn service(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<Option<recast_operator::boot::service::BootServiceConfig>, String> {
        use recast_operator::boot::{dhcp, http, render, service};
        let Some(listen) = self.boot_http else {
            if self.dhcp != DhcpMode::Off || self.tftp.is_some() {
                return Err(
                    "--dhcp and --tftp need --boot-http: the boot continues over HTTP".into(),
                );
            }
            return Ok(None);
        };
        let base_url = self
            .boot_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_string();
        let key = self.imaging_key(data_dir)?;
        let https = match (&self.boot_https, &self.boot_tls_cert, &self.boot_tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(service::HttpsListener {
                listen: *listen,
                tls: recast_operator::http::tls::tls_config(cert, key)
                    .map_err(|e| format!("--boot-https: {e}"))?,
            }),
            _ => None,
        };
        let https_base_url = match (self.boot_https, &self.boot_https_url) {
            (None, _) => None,
            (Some(_), Some(url)) if !url.starts_with("https://") => {
                return Err(format!(
                    "--boot-https-url {url} must start with https://: it is the HTTPS listener's address as machines reach it"
                ));
            }
            (Some(_), Some(url)) => Some(url.trim_end_matches('/').to_string()),
            (Some(listen), None) if listen.ip().is_unspecified() => {
                return Err(format!(
                    "--boot-https {listen} listens on every address, so machines cannot be told where it is: add --boot-https-url https://HOST:{} (a name or address the certificate names)",
                    listen.port()
                ));
            }
            (Some(listen), None) => Some(format!("https://{listen}")),
        };
        let dhcp = match self.dhcp {
            DhcpMode::Off => None,
            mode => {
                let server_ip = self.dhcp_server_ip.ok_or(
                    "--dhcp needs --dhcp-server-ip: this server's address on the provisioning network",
                )?;
                let dhcp_mode = if mode == DhcpMode::Full {
                    let path = self.dhcp_leases.as_ref().ok_or(
                        "--dhcp full needs --dhcp-leases FILE (one `MAC IP [HOSTNAME]` per line)",
                    )?;
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    dhcp::Mode::Full {
                        leases: dhcp::parse_leases(&text)
                            .map_err(|e| format!("{}: {e}", path.display()))?,
                        subnet_mask: self.dhcp_subnet_mask,
                        router: self.dhcp_router,
                        dns: self.dhcp_dns.clone(),
                        lease_seconds: 3600,
                    }
                } else {
                    dhcp::Mode::Proxy
                };
                let config = dhcp::DhcpConfig {
                    mode: dhcp_mode,
                    server_ip,
                    http_base: base_url.clone(),
                    files: dhcp::BootFiles::default(),
                    unknown: self.unknown_macs,
                    wds_server: self.wds_server,
                    imaging: self.imaging_environment,
                };
                config.validate().map_err(|e| e.to_string())?;
                Some(service::DhcpListeners {
                    config,
                    ports: self.dhcp_ports.clone(),
                    interface: self.dhcp_interface.clone(),
                })
            }
        };
        Ok(Some(service::BootServiceConfig {
            sessions: None,
            http_listen: listen,
            boot: http::BootConfig {
                multicast: self.multicast()?,
                base_url,
                root: self.root(data_dir),
                imaging: self.imaging_environment,
                unknown: self.unknown_macs,
                wds_server: self.wds_server.map(|ip| ip.to_string()),
                site: render::SiteSettings {
                    locale: self.locale.clone(),
                    time_zone: self.time_zone.clone(),
                    ..Default::default()
                },
                gateway_url: self.gateway_url.clone(),
                https_base_url,
            },
            key,
            dhcp,
            tftp: self.tftp,
            https,
        }))
    }
}

/// Golden-image fetching: where fetched bytes wait, and what `spec.source` may reach (a
/// GoldenImage's author is not trusted with the operator's own files and network position).
#[derive(clap::Args, Clone)]
struct ImageArgs {
    /// Where fetched bytes wait for their verification. Must not be inside the boot root,
    /// which is served. Default DATA_DIR/image-staging.
    #[arg(long, env = "RECAST_IMAGE_STAGING_DIR")]
    image_staging_dir: Option<PathBuf>,
    /// A directory whose files spec.source.path may name (repeatable, or comma-separated in
    /// the variable). None by default: local paths are refused. Must not contain the data
    /// directory or the imaging key.
    #[arg(
        long = "image-source-root",
        value_name = "DIR",
        env = "RECAST_IMAGE_SOURCE_ROOTS",
        value_delimiter = ','
    )]
    image_source_roots: Vec<PathBuf>,
    /// Follow HTTP redirects of spec.source.url (every hop is checked like the first).
    #[arg(long, env = "RECAST_IMAGE_SOURCE_ALLOW_REDIRECTS")]
    image_source_allow_redirects: bool,
    /// Fetch from this range even though it is loopback, link-local, or denied (repeatable;
    /// the longest matching prefix decides). RFC 1918 needs no flag.
    #[arg(
        long = "image-source-allow-cidr",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = recast_operator::golden::source::parse_cidr
    )]
    image_source_allow_cidrs: Vec<ipnet::IpNet>,
    /// Never fetch from this range (repeatable): give the cluster's pod and service CIDRs.
    #[arg(
        long = "image-source-deny-cidr",
        value_name = "CIDR",
        env = "RECAST_IMAGE_SOURCE_DENY_CIDRS",
        value_delimiter = ',',
        value_parser = recast_operator::golden::source::parse_cidr
    )]
    image_source_deny_cidrs: Vec<ipnet::IpNet>,
    /// Longest a single fetch (with its resumes) may take.
    #[arg(long, default_value = "6h")]
    image_fetch_timeout: String,
    /// Largest image a fetch accepts (such as 64Gi); a larger Content-Length or file is
    /// refused before a byte is written.
    #[arg(long, default_value = "64Gi", value_parser = recast_operator::golden::source::parse_size)]
    image_max_bytes: u64,
}

impl ImageArgs {
    /// Checks the layout and builds the image controller's settings. Refuses to start when
    /// staging would be served, or a source root would expose the operator's own secrets.
    fn config(
        &self,
        data_dir: &std::path::Path,
        boot_root: &std::path::Path,
        imaging_key: &std::path::Path,
    ) -> Result<recast_operator::golden::ImageConfig, String> {
        use recast_operator::golden::source::SourcePolicy;
        let canonical = |p: &std::path::Path, what: &str| {
            p.canonicalize()
                .map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let staging = self
            .image_staging_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("image-staging"));
        recast_operator::store::private::private_dir(&staging).map_err(|e| {
            format!(
                "cannot create --image-staging-dir {}: {e}",
                staging.display()
            )
        })?;
        // Served to anyone, written only by us: never group- or world-writable, whatever
        // the umask.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(boot_root)
                .map_err(|e| format!("cannot create the boot root {}: {e}", boot_root.display()))?;
        }
        let staging_real = canonical(&staging, "--image-staging-dir")?;
        let root_real = canonical(boot_root, "the boot root")?;
        let data_real = canonical(data_dir, "--data-dir")?;
        // The key may not exist yet: judge the directory it will be created in.
        let key_real = imaging_key.canonicalize().unwrap_or_else(|_| {
            imaging_key
                .parent()
                .and_then(|d| d.canonicalize().ok())
                .map(|d| d.join(imaging_key.file_name().unwrap_or_default()))
                .unwrap_or_else(|| imaging_key.to_path_buf())
        });
        for (what, secret) in [
            ("the data directory (--data-dir)", &data_real),
            ("the imaging key", &key_real),
        ] {
            if secret.starts_with(&root_real) {
                return Err(format!(
                    "the boot root {} contains {what} {}, and the boot service serves everything under it: recast.db and the imaging key would be anyone's; put the boot root beside the data directory (the default is DATA_DIR/boot)",
                    root_real.display(),
                    secret.display()
                ));
            }
        }
        if staging_real.starts_with(&root_real) || root_real.starts_with(&staging_real) {
            return Err(format!(
                "--image-staging-dir {} overlaps the boot root {}, which the boot service serves over HTTP and TFTP: unverified bytes would be served; choose a staging directory outside it",
                staging_real.display(),
                root_real.display()
            ));
        }
        let mut roots = Vec::new();
        for r in &self.image_source_roots {
            let real = canonical(r, "--image-source-root")?;
            for (what, secret) in [
                ("the data directory (--data-dir)", &data_real),
                ("the imaging key", &key_real),
                ("the staging directory", &staging_real),
            ] {
                if secret.starts_with(&real) {
                    return Err(format!(
                        "--image-source-root {} contains {what} {}: a GoldenImage could copy the operator's secrets; give the directory that holds only your WIMs",
                        real.display(),
                        secret.display()
                    ));
                }
            }
            roots.push(real);
        }
        let deadline = recast_crds::duration::parse(&self.image_fetch_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "--image-fetch-timeout {:?} is not a duration such as 6h or 90m",
                    self.image_fetch_timeout
                )
            })?;
        Ok(recast_operator::golden::ImageConfig {
            streams: false,
            store: recast_operator::golden::fetch::ArtifactStore {
                root: boot_root.to_path_buf(),
                staging,
            },
            sources: SourcePolicy {
                path_roots: roots,
                allow_redirects: self.image_source_allow_redirects,
                allow: self.image_source_allow_cidrs.clone(),
                deny: self.image_source_deny_cidrs.clone(),
                max_bytes: self.image_max_bytes,
                deadline,
            },
        })
    }
}

/// Limits of the sandboxed deep check: the child process that runs the third-party WIM
/// parser on each golden image. A WIM that exceeds one is refused (Verified=False,
/// DeepCheckKilled).
#[derive(clap::Args, Clone)]
struct DeepCheckArgs {
    /// Address space of the deep check, in MiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..))]
    deep_check_memory_mib: u64,
    /// CPU time of the deep check, in seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    deep_check_cpu_seconds: u64,
    /// Wall-clock time before the deep check is killed, such as 15m.
    #[arg(long, default_value = "15m")]
    deep_check_timeout: String,
}

impl DeepCheckArgs {
    fn limits(&self) -> Result<recast_golden::sandbox::Limits, String> {
        let wall = recast_crds::duration::parse(&self.deep_check_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "--deep-check-timeout {:?} is not a duration such as 15m or 30s",
                    self.deep_check_timeout
                )
            })?;
        Ok(recast_golden::sandbox::Limits {
            memory_bytes: self.deep_check_memory_mib << 20,
            cpu_seconds: self.deep_check_cpu_seconds,
            wall,
            ..Default::default()
        })
    }
}

/// Leader election on the kube backend.
#[derive(clap::Args, Clone)]
struct KubeArgs {
    /// Namespace of the leader-election Lease (the operator's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = recast_crds::DEFAULT_NAMESPACE)]
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
    /// Where boot intents, action journals and inboxes live: a namespace no tenant may write
    /// (the operator's own). Default: the --lease-namespace (the pod's namespace).
    #[arg(long, env = "RECAST_CONTROL_NAMESPACE")]
    control_namespace: Option<String>,
    /// --role boot: the operator's internal URL the boot service sends its inputs to, such as
    /// http://recast-operator.recast-system.svc:8090.
    #[arg(long, env = "RECAST_FORWARD_INPUTS_TO")]
    forward_inputs_to: Option<String>,
    /// Accept the boot pods' inputs (HMAC-signed under the imaging key) on this address.
    #[arg(long, env = "RECAST_INTERNAL_LISTEN")]
    internal_listen: Option<SocketAddr>,
    /// Serve the Endpoint admission webhook (HTTPS) on this address, such as 0.0.0.0:9443.
    #[arg(long, env = "RECAST_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key"])]
    webhook_listen: Option<SocketAddr>,
    /// PEM certificate chain of the webhook (its names include the Service's DNS name).
    #[arg(long, env = "RECAST_WEBHOOK_CERT")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "RECAST_WEBHOOK_KEY")]
    webhook_key: Option<PathBuf>,
}

impl KubeArgs {
    fn control_namespace(&self) -> String {
        self.control_namespace
            .clone()
            .unwrap_or_else(|| self.lease_namespace.clone())
    }
}

/// The fleet-wide circuit breaker on automatic reimages (every namespace together). Each
/// namespace also has its own, set in its RemediationPolicy (spec.breaker); this one is the
/// operator's, so no tenant can raise or reset it.
#[derive(clap::Args, Clone)]
struct BreakerArgs {
    /// Automatic reimages that may start fleet-wide within --fleet-breaker-window before the
    /// breaker opens: a count or a percentage of all endpoints. Unset: 2%, at least 5, at
    /// most 100.
    #[arg(long, env = "RECAST_FLEET_BREAKER_MAX_STARTS")]
    fleet_breaker_max_starts: Option<String>,
    #[arg(long, default_value = "1h", env = "RECAST_FLEET_BREAKER_WINDOW")]
    fleet_breaker_window: String,
    /// Turn the fleet-wide breaker off (each namespace's own still works).
    #[arg(long)]
    no_fleet_breaker: bool,
    /// Reimages running at once across every namespace, whatever each namespace's policy
    /// allows (its concurrency.global is its own); 0 for no ceiling.
    #[arg(long, default_value_t = recast_operator::controller::DEFAULT_FLEET_CEILING, env = "RECAST_MAX_CONCURRENT_REIMAGES")]
    max_concurrent_reimages: u32,
}

impl BreakerArgs {
    /// The operator's ceiling on attempts running fleet-wide (None: none).
    fn ceiling(&self) -> Option<u32> {
        (self.max_concurrent_reimages > 0).then_some(self.max_concurrent_reimages)
    }

    /// The settings, with the reset namespace filled in by the backend (None: off).
    fn settings(&self) -> Result<Option<recast_operator::controller::FleetBreaker>, String> {
        if self.no_fleet_breaker {
            return Ok(None);
        }
        let window = recast_crds::duration::parse(&self.fleet_breaker_window)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "--fleet-breaker-window {:?} is not a duration such as 1h or 30m",
                    self.fleet_breaker_window
                )
            })?;
        let max_starts = match self.fleet_breaker_max_starts.as_deref() {
            None => None,
            Some(v) => Some(parse_count_or_percent(v).ok_or_else(|| {
                format!(
                    "--fleet-breaker-max-starts {v:?} is not a positive count such as 20 or a percentage such as 2%"
                )
            })?),
        };
        Ok(Some(recast_operator::controller::FleetBreaker {
            max_starts,
            window,
            ..Default::default()
        }))
    }
}

/// "20" or "2%" (1% to 100%); None for anything else, zero included.
fn parse_count_or_percent(
    v: &str,
) -> Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let v = v.trim();
    if let Some(p) = v.strip_suffix('%') {
        let n: u32 = p.parse().ok()?;
        return (1..=100)
            .contains(&n)
            .then(|| IntOrString::String(format!("{n}%")));
    }
    let n: i32 = v.parse().ok()?;
    (n >= 1).then_some(IntOrString::Int(n))
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
    /// Reports per second the whole gateway accepts (bursts up to twice that); above it agents
    /// get 429 with Retry-After. 100,000 endpoints reporting every 5 minutes send ~333/s.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    gateway_max_reports_per_second: u32,
    /// Requests per second one source address may send (bursts up to twice that), checked
    /// before the token; one address cannot spend the global budget. Agents behind one NAT
    /// share it: raise it for a site that reports through a single address.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    gateway_max_requests_per_second_per_ip: u32,
    /// A request body must arrive within this long after its headers (slowloris).
    #[arg(long, default_value = "10s")]
    gateway_body_timeout: String,
    /// Reports whose collectedAt is older than this are refused (422).
    #[arg(long, default_value = "1h")]
    gateway_max_report_age: String,
    /// Reports whose collectedAt is further in the future than this are refused (422).
    #[arg(long, default_value = "10m")]
    gateway_max_clock_skew: String,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a new token for NAMESPACE/NAME (or NAME in "default"); the old one stops working.
    Issue { endpoint: String },
    /// Revoke the endpoint's token.
    Revoke { endpoint: String },
}

fn endpoint_key(s: &str) -> recast_operator::store::Key {
    let (namespace, name) = s
        .split_once('/')
        .unwrap_or((recast_crds::DEFAULT_NAMESPACE, s));
    recast_operator::store::Key {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn gateway_token(action: TokenAction, data_dir: &std::path::Path) -> Result<(), String> {
    use recast_operator::gateway::credentials::SqliteLedger;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let store = SqliteLedger::open(data_dir).map_err(|e| e.to_string())?;
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
        Command::WakeOnLan {
            interface,
            target,
            macs,
        } => {
            let wake = recast_operator::wake::WakeConfig {
                interface,
                extra_targets: target,
                disabled: false,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("recast-operator: cannot start a runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(wake.wake(&macs)) {
                Ok(what) => {
                    eprintln!("{what}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("recast-operator: {}", e.message);
                    ExitCode::FAILURE
                }
            }
        }
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
        Command::DeepCheck {
            index,
            parts,
            full_verify,
            wim,
        } => recast_operator::golden::deep_check_main(&recast_golden::sandbox::ChildRequest {
            path: wim,
            index,
            options: recast_golden::deep::DeepOptions {
                split_parts: parts,
                full_verify,
            },
        }),
        Command::Run {
            backend,
            role,
            data_dir,
            load,
            listen,
            power_driver,
            bmc_watch_interval,
            breaker,
            kube: kube_args,
            boot,
            gateway,
            images,
            deep_check,
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
            match rt.block_on(run(RunOptions {
                backend,
                role,
                data_dir,
                load,
                listen,
                power_driver,
                bmc_watch_interval,
                breaker,
                kube_opts: kube_args,
                boot_args: boot,
                gateway_args: gateway,
                image_args: images,
                deep_check,
            })) {
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

/// Everything `recast-operator run` was given.
struct RunOptions {
    backend: BackendKind,
    role: Role,
    data_dir: PathBuf,
    load: Vec<PathBuf>,
    listen: SocketAddr,
    power_driver: PowerDriver,
    bmc_watch_interval: String,
    breaker: BreakerArgs,
    kube_opts: KubeArgs,
    boot_args: BootArgs,
    gateway_args: GatewayArgs,
    image_args: ImageArgs,
    deep_check: DeepCheckArgs,
}

async fn run(opts: RunOptions) -> Result<(), String> {
    let RunOptions {
        backend,
        role,
        data_dir,
        load,
        listen,
        power_driver,
        bmc_watch_interval,
        breaker,
        kube_opts,
        boot_args,
        gateway_args,
        image_args,
        deep_check,
    } = opts;
    let deep_check_limits = deep_check.limits()?;
    let bmc_watch_interval = recast_crds::duration::parse(&bmc_watch_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "--bmc-watch-interval {bmc_watch_interval:?} is not a duration such as 2m or 30s"
            )
        })?;
    let fleet_breaker = breaker.settings()?;
    let fleet_ceiling = breaker.ceiling();
    recast_operator::store::private::private_dir(&data_dir)
        .map_err(|e| format!("cannot create --data-dir {}: {e}", data_dir.display()))?;
    let mut boot_cfg = boot_args.service(&data_dir)?;
    if role == Role::Boot {
        if !matches!(backend, BackendKind::Kube) {
            return Err(
                "--role boot needs --backend kube (the embedded backend is one process)".into(),
            );
        }
        if boot_cfg.is_none() {
            return Err("--role boot needs --boot-http: it runs only the boot service".into());
        }
        if kube_opts.forward_inputs_to.is_none() {
            return Err("--role boot needs --forward-inputs-to URL (the operator's internal endpoint): a boot pod may not write inboxes itself".into());
        }
        if gateway_args.gateway_listen.is_some()
            || kube_opts.webhook_listen.is_some()
            || kube_opts.internal_listen.is_some()
        {
            return Err("--role boot runs only the boot service: drop --gateway-listen, --webhook-listen and --internal-listen".into());
        }
    } else if kube_opts.forward_inputs_to.is_some() {
        return Err("--forward-inputs-to is for --role boot".into());
    }
    if role == Role::Gateway {
        if !matches!(backend, BackendKind::Kube) {
            return Err("--role gateway needs --backend kube (on the embedded backend the operator runs the gateway itself: give it --gateway-listen)".into());
        }
        if gateway_args.gateway_listen.is_none() {
            return Err("--role gateway needs --gateway-listen, --gateway-cert and --gateway-key: it runs only the agent gateway".into());
        }
        if boot_cfg.is_some()
            || kube_opts.webhook_listen.is_some()
            || kube_opts.internal_listen.is_some()
        {
            return Err("--role gateway runs only the agent gateway: drop --boot-http, --webhook-listen and --internal-listen".into());
        }
    }
    // The GoldenImage controller fills the boot root's images/ with verified WIMs.
    let mut image_store = image_args.config(
        &data_dir,
        &boot_args.root(&data_dir),
        &boot_args.imaging_key_path(&data_dir),
    )?;
    // The boot service's sessions send each image's pipable form, which this process makes.
    image_store.streams = boot_args.multicast_interface.is_some();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let ready = Arc::new(AtomicBool::new(false));
    let parts = Arc::new(http::Readiness::default());
    let metrics = Arc::new(Metrics::new());
    // The boot service's multicast sessions, shared with the wave controller (status).
    let sessions = boot_cfg.as_mut().and_then(|c| {
        let m = c.boot.multicast.clone()?;
        let s = Arc::new(recast_operator::boot::multicast::Sessions::new(
            m,
            metrics.clone(),
        ));
        c.sessions = Some(s.clone());
        Some(s as Arc<dyn recast_operator::controller::wave::BatchSessions>)
    });
    let server = tokio::spawn(http::serve(
        listen,
        http::router(ready.clone(), parts.clone(), metrics.clone()),
        stop_rx.clone(),
    ));
    // Held until the process ends (its boot service and gateway tasks write to the store too):
    // a second operator on this directory, or a restore under this one, is refused instead of
    // racing it.
    let _lock = match backend {
        BackendKind::Embedded => Some(
            recast_operator::store::embedded::OperatorLock::acquire(
                &data_dir,
                "recast-operator run",
            )
            .map_err(|e| e.to_string())?,
        ),
        BackendKind::Kube => None,
    };
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
            if let Some(cfg) = boot_cfg {
                let (b, m, r, s) = (
                    backend.clone(),
                    metrics.clone(),
                    parts.clone(),
                    stop_rx.clone(),
                );
                let secrets = Arc::new(recast_operator::bmc::redfish::LocalTrySecrets(
                    EmbeddedSecrets(store.clone()),
                ));
                tokio::spawn(async move {
                    if let Err(e) =
                        recast_operator::boot::service::run(b, secrets, cfg, m, r, s).await
                    {
                        boot_service_failed(&e);
                    }
                });
            }
            let images =
                recast_operator::golden::ImageController::new(backend.clone(), image_store)?
                    .with_deep_check_limits(deep_check_limits);
            tokio::spawn(Arc::new(images).run(stop_rx.clone()));
            if let Some(addr) = gateway_args.gateway_listen {
                let credentials =
                    recast_operator::gateway::credentials::CredentialStore::open(&data_dir)
                        .map_err(|e| e.to_string())?;
                start_gateway(
                    addr,
                    &gateway_args,
                    boot_args.imaging_key(&data_dir)?,
                    Arc::new(credentials),
                    backend.clone(),
                    stop_rx.clone(),
                )
                .await?;
            }
            let result = match power_driver {
                PowerDriver::Redfish => {
                    let power = RedfishPower::new(EmbeddedSecrets(store), RedfishTuning::default());
                    let ctrl =
                        Controller::new(backend, Arc::new(power), Arc::new(SystemClock), metrics)
                            .with_bmc_watch_interval(bmc_watch_interval)
                            .with_fleet_breaker(fleet_breaker.clone())
                            .with_fleet_ceiling(fleet_ceiling)
                            .with_wake(boot_args.wake())
                            .with_sessions(sessions.clone());
                    run_embedded(Arc::new(ctrl), stop_rx, ready).await
                }
                PowerDriver::Record => {
                    let power = RecordingPower::default();
                    let ctrl =
                        Controller::new(backend, Arc::new(power), Arc::new(SystemClock), metrics)
                            .with_bmc_watch_interval(bmc_watch_interval)
                            .with_fleet_breaker(fleet_breaker.clone())
                            .with_fleet_ceiling(fleet_ceiling)
                            .with_wake(boot_args.wake())
                            .with_sessions(sessions.clone());
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
                control_namespace: kube_opts.control_namespace(),
                image_store: Some(image_store),
                deep_check_limits,
                bmc_watch_interval,
                fleet_breaker: fleet_breaker.clone(),
                fleet_ceiling,
                wake: boot_args.wake(),
                sessions: sessions.clone(),
            };
            if role == Role::Boot {
                return run_boot_role(
                    client, &opts, &kube_opts, &boot_args, &data_dir, boot_cfg, metrics, ready,
                    parts, stop_rx, server,
                )
                .await;
            }
            if role == Role::Gateway {
                return run_gateway_role(
                    client,
                    &opts,
                    &gateway_args,
                    boot_args.imaging_key(&data_dir)?,
                    ready,
                    stop_rx,
                    server,
                )
                .await;
            }
            if kube_opts.internal_listen.is_some() || kube_opts.webhook_listen.is_some() {
                start_kube_endpoints(
                    client.clone(),
                    &opts,
                    &kube_opts,
                    &boot_args,
                    &data_dir,
                    stop_rx.clone(),
                )
                .await?;
            }
            // One connection (one pair of policy and image watches) per process: the
            // controller and the services below are views of the same caches.
            let (store, _) = recast_operator::store::kube::KubeBackend::connect(
                client.clone(),
                &opts.scope(),
                Arc::new(AtomicBool::new(false)),
            )
            .await?;
            if boot_cfg.is_some() || gateway_args.gateway_listen.is_some() {
                // The boot service and the gateway only read and queue inputs into inboxes,
                // which needs no lease: they run without it.
                let backend = store.sibling(Arc::new(AtomicBool::new(false)));
                // Boot lookups come from a watch-fed index, never a request per packet.
                let backend = if boot_cfg.is_some() {
                    let index = backend.start_boot_index(stop_rx.clone());
                    backend.with_boot_index(index)
                } else {
                    backend
                };
                // The gateway reads an endpoint's facts again when its watch says they changed.
                let backend = if gateway_args.gateway_listen.is_some() {
                    backend.with_facts_versions(stop_rx.clone())
                } else {
                    backend
                };
                let backend = Arc::new(backend);
                if let Some(cfg) = boot_cfg {
                    let (b, m, r, s) = (
                        backend.clone(),
                        metrics.clone(),
                        parts.clone(),
                        stop_rx.clone(),
                    );
                    let secrets = Arc::new(recast_operator::bmc::redfish::LocalTrySecrets(
                        KubeSecrets(client.clone()),
                    ));
                    tokio::spawn(async move {
                        if let Err(e) =
                            recast_operator::boot::service::run(b, secrets, cfg, m, r, s).await
                        {
                            boot_service_failed(&e);
                        }
                    });
                }
                if let Some(addr) = gateway_args.gateway_listen {
                    // Tokens and report sequences live in the control namespace, shared with
                    // any gateway replicas (--role gateway).
                    let credentials = recast_operator::gateway::kube_ledger::KubeLedger::start(
                        client.clone(),
                        &opts.control_namespace,
                        stop_rx.clone(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    start_gateway(
                        addr,
                        &gateway_args,
                        boot_args.imaging_key(&data_dir)?,
                        Arc::new(
                            recast_operator::gateway::credentials::CredentialStore::Kube(
                                credentials,
                            ),
                        ),
                        backend,
                        stop_rx.clone(),
                    )
                    .await?;
                }
            }
            match power_driver {
                PowerDriver::Redfish => {
                    let power =
                        RedfishPower::new(KubeSecrets(client.clone()), RedfishTuning::default());
                    run_kube(
                        client,
                        &store,
                        Arc::new(power),
                        metrics,
                        opts,
                        ready,
                        stop_rx,
                    )
                    .await?;
                }
                PowerDriver::Record => {
                    let power = RecordingPower::default();
                    run_kube(
                        client,
                        &store,
                        Arc::new(power),
                        metrics,
                        opts,
                        ready,
                        stop_rx,
                    )
                    .await?;
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

/// The boot role: the boot service and the verified-image cache it serves from, over a
/// read-only client; inputs go to the operator. Runs until shutdown.
#[allow(clippy::too_many_arguments)]
async fn run_boot_role(
    client: kube::Client,
    opts: &KubeOptions,
    kube_opts: &KubeArgs,
    boot_args: &BootArgs,
    data_dir: &std::path::Path,
    boot_cfg: Option<recast_operator::boot::service::BootServiceConfig>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    parts: Arc<http::Readiness>,
    stop_rx: watch::Receiver<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), String> {
    use recast_operator::store::kube::KubeBackend;
    let Some(cfg) = boot_cfg else {
        return Err("--role boot needs --boot-http".into());
    };
    let url = kube_opts
        .forward_inputs_to
        .clone()
        .ok_or("--role boot needs --forward-inputs-to")?;
    let forwarder = recast_operator::store::kube::forward::Forwarder::new(
        &url,
        &boot_args.imaging_key(data_dir)?,
    )?;
    // Never the leader: every write this backend could attempt is refused before it is sent.
    let (backend, _) =
        KubeBackend::connect(client, &opts.scope(), Arc::new(AtomicBool::new(false))).await?;
    // Boot lookups come from a watch-fed index, never a request per packet.
    let index = backend.start_boot_index(stop_rx.clone());
    let backend = Arc::new(backend.with_forwarder(forwarder).with_boot_index(index));
    if let Some(config) = &opts.image_store {
        // Each boot pod fetches and checks the WIMs it serves itself; it writes no status.
        let images =
            recast_operator::golden::ImageController::new(backend.clone(), config.clone())?
                .with_deep_check_limits(opts.deep_check_limits);
        tokio::spawn(Arc::new(images).run(stop_rx.clone()));
    }
    tracing::info!(forward_to = %url, control_namespace = %opts.control_namespace, "boot role: read-only; inputs go to the operator");
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    // The boot pod's ServiceAccount reads no Secrets: the operator reads an armed try's for it.
    let secrets = Arc::new(
        recast_operator::store::kube::try_secrets::OperatorTrySecrets::new(
            &url,
            &boot_args.imaging_key(data_dir)?,
        )?,
    );
    if let Err(e) =
        recast_operator::boot::service::run(backend, secrets, cfg, metrics, parts, stop_rx).await
    {
        boot_service_failed(&e);
    }
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot serve health and metrics: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The operator's endpoints for other components: the boot pods' inputs (plain HTTP, every
/// message HMAC-signed) and the Endpoint admission webhook (HTTPS). Every replica serves them;
/// neither needs the lease.
async fn start_kube_endpoints(
    client: kube::Client,
    opts: &KubeOptions,
    kube_opts: &KubeArgs,
    boot_args: &BootArgs,
    data_dir: &std::path::Path,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    use recast_operator::store::kube::KubeBackend;
    let (backend, _) = KubeBackend::connect(
        client.clone(),
        &opts.scope(),
        Arc::new(AtomicBool::new(false)),
    )
    .await?;
    let backend = Arc::new(backend);
    if let Some(addr) = kube_opts.internal_listen {
        let key = boot_args.imaging_key(data_dir)?;
        // Boot pods read no Secrets: the operator hands one armed try's, sealed.
        let secrets = Arc::new(recast_operator::bmc::redfish::LocalTrySecrets(KubeSecrets(
            client.clone(),
        )));
        let app = recast_operator::store::kube::forward::router(&key, backend.clone()).merge(
            recast_operator::store::kube::try_secrets::router(&key, backend.clone(), secrets),
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot serve the internal input endpoint on {addr}: {e}"))?;
        tracing::info!(%addr, "accepting signed inputs from the boot pods");
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "internal input endpoint stopped");
            }
        });
    }
    if let Some(addr) = kube_opts.webhook_listen {
        let (Some(cert), Some(key)) = (&kube_opts.webhook_cert, &kube_opts.webhook_key) else {
            return Err("--webhook-listen needs --webhook-cert and --webhook-key".into());
        };
        let tls =
            recast_operator::gateway::tls_config(cert, key).map_err(|e| format!("webhook: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot serve the admission webhook on {addr}: {e}"))?;
        tracing::info!(%addr, "serving the Endpoint admission webhook");
        let app = recast_operator::controller::admission::router(backend);
        tokio::spawn(async move {
            if let Err(e) = recast_operator::gateway::serve_tls(listener, tls, app, stop).await {
                tracing::error!(error = %e, "admission webhook stopped");
            }
        });
    }
    Ok(())
}

/// The gateway role: only the agent gateway, with its state in the control namespace, so any
/// number of replicas serve the same agents. Runs until shutdown.
async fn run_gateway_role(
    client: kube::Client,
    opts: &KubeOptions,
    gateway_args: &GatewayArgs,
    imaging_key: recast_operator::token::TokenKey,
    ready: Arc<AtomicBool>,
    stop_rx: watch::Receiver<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), String> {
    use recast_operator::gateway::credentials::CredentialStore;
    use recast_operator::gateway::kube_ledger::KubeLedger;
    use recast_operator::store::kube::KubeBackend;
    let Some(addr) = gateway_args.gateway_listen else {
        return Err("--role gateway needs --gateway-listen".into());
    };
    // Never the leader: it only reads, and queues inputs (which needs no lease).
    let (backend, _) = KubeBackend::connect(
        client.clone(),
        &opts.scope(),
        Arc::new(AtomicBool::new(false)),
    )
    .await?;
    let backend = backend.with_facts_versions(stop_rx.clone());
    let ledger = KubeLedger::start(client, &opts.control_namespace, stop_rx.clone())
        .await
        .map_err(|e| e.to_string())?;
    start_gateway(
        addr,
        gateway_args,
        imaging_key,
        Arc::new(CredentialStore::Kube(ledger)),
        Arc::new(backend),
        stop_rx,
    )
    .await?;
    tracing::info!(%addr, control_namespace = %opts.control_namespace, "gateway role: serving agents; state in the control namespace");
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot serve health and metrics: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn start_gateway<B: recast_operator::store::Backend>(
    addr: SocketAddr,
    args: &GatewayArgs,
    imaging_key: recast_operator::token::TokenKey,
    credentials: Arc<recast_operator::gateway::credentials::CredentialStore>,
    backend: Arc<B>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    use recast_operator::gateway::{self, Gateway, GatewayConfig};
    let (Some(cert), Some(key)) = (&args.gateway_cert, &args.gateway_key) else {
        return Err("--gateway-listen needs --gateway-cert and --gateway-key".into());
    };
    let tls = gateway::tls_config(cert, key).map_err(|e| e.to_string())?;
    let heartbeat_period = recast_crds::duration::parse(&args.gateway_heartbeat_period)
        .map_err(|e| format!("--gateway-heartbeat-period: {e}"))?;
    let duration = |flag: &str, value: &str| {
        recast_crds::duration::parse(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{flag} {value:?} is not a duration such as 10s or 1h"))
    };
    let body_timeout = duration("--gateway-body-timeout", &args.gateway_body_timeout)?;
    let max_report_age = duration("--gateway-max-report-age", &args.gateway_max_report_age)?;
    let max_clock_skew = duration("--gateway-max-clock-skew", &args.gateway_max_clock_skew)?;
    let gw = Arc::new(
        Gateway::new(
            backend,
            credentials,
            GatewayConfig {
                heartbeat_period,
                global_rate: gateway::limit::Rate {
                    burst: args.gateway_max_reports_per_second.saturating_mul(2),
                    per_second: f64::from(args.gateway_max_reports_per_second),
                },
                ip_rate: gateway::limit::Rate {
                    burst: args
                        .gateway_max_requests_per_second_per_ip
                        .saturating_mul(2),
                    per_second: f64::from(args.gateway_max_requests_per_second_per_ip),
                },
                body_timeout,
                max_report_age,
                max_clock_skew,
                ..GatewayConfig::default()
            },
            Arc::new(SystemClock),
        )
        .with_enrollment(imaging_key),
    );
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
        if manifests::is_secret(&doc) {
            let (name, outcome) = store
                .apply_secret(&doc.value, recast_crds::DEFAULT_NAMESPACE)
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
            .apply(&doc.value, recast_crds::DEFAULT_NAMESPACE)
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

/// A boot service that cannot run (a port taken, an unreadable boot root) must not leave an
/// operator that looks healthy while no machine can boot: stop the process with the reason.
fn boot_service_failed(e: &str) -> ! {
    tracing::error!("boot service: {e}");
    eprintln!("recast-operator: the boot service stopped: {e}");
    std::process::exit(2)
}
