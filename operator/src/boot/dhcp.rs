//! DHCP for network boot: proxyDHCP (UDP 67 and 4011; boot information only, never
//! addresses) next to the site's own DHCP server, and a full DHCP mode with a static lease
//! table for isolated provisioning networks.
//!
//! `parse` and `answer` are pure; `serve` is the socket loop around them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use recast_crds::endpoint::BootChain;

use super::http::BootHttp;
use super::intent::{self, BootChoice, UnknownMacPolicy};
use super::ratelimit::SharedLimiter;
use super::render::ImagingEnvironment;
use crate::metrics::Metrics;
use crate::store::BootIntents;
use crate::store::{Backend, BackendError};

/// What a request says about the client, as far as boot decisions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    pub message_type: MessageType,
    pub mac: String,
    pub xid: u32,
    pub broadcast: bool,
    pub giaddr: Ipv4Addr,
    pub ciaddr: Ipv4Addr,
    /// Option 93 (RFC 4578 / IANA "Processor Architecture Types").
    pub arch: Option<u16>,
    /// Option 60 starts with "PXEClient" (or "HTTPClient" for UEFI HTTP boot).
    pub pxe: bool,
    pub http_client: bool,
    /// Already iPXE (user class "iPXE" or iPXE's option 175): give it the script URL, never
    /// another binary, or it loops.
    pub ipxe: bool,
    /// Option 54: the server a REQUEST is meant for.
    pub server_id: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a DHCP message: {0}")]
    Decode(String),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("no DHCP message type option")]
    NoMessageType,
    #[error("hardware address is not 6-byte Ethernet")]
    NotEthernet,
}

/// Decodes a request; never panics on any input.
pub fn parse(buf: &[u8]) -> Result<ClientInfo, ParseError> {
    // dhcproto is careful with lengths, but a fuzzed packet must never take the server down, so
    // decoding is also fenced against panics.
    let msg = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(buf)))
        .map_err(|_| ParseError::Decode("malformed packet".into()))?
        .map_err(|e| ParseError::Decode(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(ParseError::NotRequest);
    }
    let message_type = match msg.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => *t,
        _ => return Err(ParseError::NoMessageType),
    };
    // Check hlen before touching chaddr: dhcproto slices chaddr by hlen and panics when a
    // packet claims more than 16 bytes (found by the mutation run below).
    if msg.hlen() != 6 {
        return Err(ParseError::NotEthernet);
    }
    let chaddr = msg.chaddr();
    let mac = chaddr[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    let vendor = match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v.clone(),
        _ => Vec::new(),
    };
    let user_class_ipxe = match msg.opts().get(OptionCode::UserClass) {
        // RFC 3004 user classes are length-prefixed, iPXE sends the bare string: accept both.
        Some(DhcpOption::UserClass(v)) => v.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    let has_175 = msg.opts().get(OptionCode::Unknown(175)).is_some();
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    Ok(ClientInfo {
        message_type,
        mac,
        xid: msg.xid(),
        broadcast: msg.flags().broadcast(),
        giaddr: msg.giaddr(),
        ciaddr: msg.ciaddr(),
        arch,
        pxe: vendor.starts_with(b"PXEClient"),
        http_client: vendor.starts_with(b"HTTPClient"),
        ipxe: user_class_ipxe || has_175,
        server_id,
    })
}

/// A static lease of the full DHCP mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Mode {
    /// Boot information only; the site's DHCP server hands out addresses.
    Proxy,
    /// Addresses from a static table, for isolated provisioning networks.
    Full {
        leases: HashMap<String, Lease>,
        subnet_mask: Ipv4Addr,
        router: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
        lease_seconds: u32,
    },
}

/// Boot file names, relative to the TFTP root (and under /artifacts/ over HTTP).
#[derive(Clone, Debug)]
pub struct BootFiles {
    pub bios: String,
    pub uefi_x64: String,
    pub uefi_arm64: String,
    /// The signed chain's first program (shim), for an armed x64 UEFI machine whose imaging
    /// environment is Linux. Shim fetches grubx64.efi from the same directory.
    pub signed_linux: String,
    /// The signed chain's first program for an armed machine whose imaging environment is
    /// WinPE: Microsoft's bootmgfw.efi from the site's kit (`recastctl bootkit`).
    pub signed_winpe: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        // Debian's `ipxe` package: undionly.kpxe chains through the NIC's own PXE stack;
        // snponly.efi uses the UEFI network stack, which works on more firmware than ipxe.efi's
        // own drivers.
        BootFiles {
            bios: "ipxe/undionly.kpxe".into(),
            uefi_x64: "ipxe/snponly.efi".into(),
            uefi_arm64: "ipxe/snponly-arm64.efi".into(),
            signed_linux: SIGNED_SHIM.into(),
            signed_winpe: recast_core::winpe_boot::BOOT_FILE.into(),
        }
    }
}

/// Where `imager/env/signed-chain.sh` lays out Debian's shim (with grubx64.efi next to it).
pub const SIGNED_SHIM: &str = "sb/shimx64.efi";
/// Debian's signed GRUB network image: shim fetches `grubx64.efi` from its own directory.
pub const SIGNED_GRUB: &str = "sb/grubx64.efi";
/// What a signed-chain machine that must not network-boot (nothing armed) is offered: a name
/// the TFTP server (`tftp_root`) answers with an error at once, and the HTTP server with 404,
/// so the firmware moves on to its next boot option (the disk) without running anything,
/// instead of waiting out a silent DHCP. Never a file; one name, not configurable, so the
/// DHCP answer and the TFTP server cannot disagree.
pub const DECLINE_FILE: &str = "sb/boot-local-disk.efi";

#[derive(Clone, Debug)]
pub struct DhcpConfig {
    pub mode: Mode,
    /// This server's address on the provisioning network (server id, next-server).
    pub server_ip: Ipv4Addr,
    /// http://server:port (the boot service's HTTP base URL).
    pub http_base: String,
    pub files: BootFiles,
    pub unknown: UnknownMacPolicy,
    pub wds_server: Option<Ipv4Addr>,
    /// Which imaging environment an armed signed-chain machine boots.
    pub imaging: ImagingEnvironment,
}

/// What to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub message_type: MessageType,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub file: String,
    pub lease: Option<(Ipv4Addr, Option<String>)>,
    /// Option 60 "PXEClient" (or "HTTPClient") so PXE firmware accepts a proxy offer.
    pub vendor_class: Option<&'static str>,
    pub kind: &'static str,
}

/// RFC 4578 / IANA processor architecture types: the boot program, its vendor class, and the
/// reply's kind (for logs and metrics).
fn boot_file(
    info: &ClientInfo,
    chain: BootChain,
    armed: bool,
    cfg: &DhcpConfig,
) -> Option<(String, Option<&'static str>, &'static str)> {
    if info.ipxe {
        // "PXEClient" marks the offer as proxyDHCP boot information; iPXE ignores an offer
        // without an address that lacks it. (A machine running iPXE does not enforce Secure
        // Boot, whatever its chain says.)
        return Some((
            format!("{}/boot.ipxe", cfg.http_base),
            Some("PXEClient"),
            "ipxe-script",
        ));
    }
    let program = |file: String, class| Some((file, Some(class), "boot-program"));
    let decline = |file: String, class| Some((file, Some(class), "decline"));
    let signed = chain == BootChain::Signed;
    match info.arch {
        // UEFI HTTP boot (x64 16): the signed chain cannot go this way (Debian 12's GRUB
        // has no HTTP), so a URL that fails at once sends the firmware on to its next option.
        Some(16) if signed => decline(
            format!("{}/artifacts/{DECLINE_FILE}", cfg.http_base),
            "HTTPClient",
        ),
        // UEFI HTTP boot (x64 16, arm64 19): a URL to the iPXE EFI binary.
        Some(16) => program(
            format!("{}/artifacts/{}", cfg.http_base, cfg.files.uefi_x64),
            "HTTPClient",
        ),
        Some(19) => program(
            format!("{}/artifacts/{}", cfg.http_base, cfg.files.uefi_arm64),
            "HTTPClient",
        ),
        Some(0) | None => program(cfg.files.bios.clone(), "PXEClient"),
        Some(7) | Some(9) if signed && !armed => decline(DECLINE_FILE.into(), "PXEClient"),
        Some(7) | Some(9) if signed => match cfg.imaging {
            ImagingEnvironment::Linux => program(cfg.files.signed_linux.clone(), "PXEClient"),
            ImagingEnvironment::Winpe => program(cfg.files.signed_winpe.clone(), "PXEClient"),
        },
        Some(7) | Some(9) => program(cfg.files.uefi_x64.clone(), "PXEClient"),
        Some(11) => program(cfg.files.uefi_arm64.clone(), "PXEClient"),
        // 32-bit UEFI, Itanium and the rest: nothing recast can boot.
        Some(_) => None,
    }
}

/// Decides the answer to one request, given what the store says about the MAC and the boot
/// chain it gets (`Known::chain`).
pub fn answer(
    info: &ClientInfo,
    choice: &BootChoice,
    chain: BootChain,
    cfg: &DhcpConfig,
) -> Option<Reply> {
    // A REQUEST that names another server is the client accepting that server's offer: not
    // ours to answer (a proxyDHCP must never ACK the site's address).
    if info.server_id.is_some_and(|id| id != cfg.server_ip) {
        return None;
    }
    let reply_type = match info.message_type {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => MessageType::Ack,
        // Inform (used by some PXE clients on 4011) gets boot info in an ACK.
        MessageType::Inform => MessageType::Ack,
        _ => return None,
    };
    let lease = match &cfg.mode {
        Mode::Proxy => None,
        Mode::Full { leases, .. } => match leases.get(&info.mac) {
            Some(l) => Some((l.ip, l.hostname.clone())),
            // Full mode hands out only the static table.
            None => return None,
        },
    };
    // proxyDHCP answers PXE clients only; the full mode also gives plain clients an address.
    let boot_capable = info.pxe || info.http_client || info.ipxe;
    if lease.is_none() && !boot_capable {
        return None;
    }
    let (siaddr, file, vendor_class, kind) = match choice {
        BootChoice::Ignore => {
            // An ignored MAC gets an address only in full mode (when the table lists it).
            lease.as_ref()?;
            (Ipv4Addr::UNSPECIFIED, String::new(), None, "address-only")
        }
        BootChoice::Wds(_) => {
            let wds = cfg.wds_server?;
            // WDS's x64 boot programs over TFTP, for the clients that can run them: x64 UEFI
            // PXE (7, 9) and BIOS PXE (0, or no architecture option). Others (UEFI HTTP boot,
            // Arm) get no referral, so no hand-off is recorded for a machine WDS cannot serve.
            let file = match info.arch {
                Some(7) | Some(9) => "boot\\x64\\wdsmgfw.efi",
                None | Some(0) => "boot\\x64\\wdsnbp.com",
                _ => return None,
            };
            (wds, file.to_string(), Some("PXEClient"), "wds-referral")
        }
        BootChoice::Local { .. } | BootChoice::Imaging(_) => {
            if !boot_capable {
                (Ipv4Addr::UNSPECIFIED, String::new(), None, "address-only")
            } else {
                let armed = matches!(choice, BootChoice::Imaging(_));
                let (file, class, kind) = boot_file(info, chain, armed, cfg)?;
                (cfg.server_ip, file, class, kind)
            }
        }
    };
    Some(Reply {
        message_type: reply_type,
        yiaddr: lease.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |l| l.0),
        siaddr,
        file,
        lease,
        vendor_class,
        kind,
    })
}

/// What a request deserves before anything is looked up. Anyone on the segment can send DHCP,
/// and most of what arrives is ordinary clients renewing addresses: those never cost a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Triage {
    /// Not answered; the label says why (counted in the metrics).
    Drop(&'static str),
    /// A plain client with a static lease (full mode): an address, no boot information, so
    /// nothing to look up.
    AddressOnly,
    /// A PXE / HTTP-boot / iPXE client: what it boots depends on who it is.
    Lookup,
}

/// Decides whether a request is worth a lookup. Pure.
pub fn triage(info: &ClientInfo, cfg: &DhcpConfig) -> Triage {
    if info.server_id.is_some_and(|id| id != cfg.server_ip) {
        return Triage::Drop("other_server");
    }
    if !matches!(
        info.message_type,
        MessageType::Discover | MessageType::Request | MessageType::Inform
    ) {
        return Triage::Drop("not_a_request");
    }
    let leased = match &cfg.mode {
        Mode::Proxy => false,
        Mode::Full { leases, .. } => leases.contains_key(&info.mac),
    };
    if matches!(cfg.mode, Mode::Full { .. }) && !leased {
        return Triage::Drop("no_lease");
    }
    let boot_capable = info.pxe || info.http_client || info.ipxe;
    match (boot_capable, leased) {
        (true, _) => Triage::Lookup,
        (false, true) => Triage::AddressOnly,
        (false, false) => Triage::Drop("not_pxe"),
    }
}

/// The longest file name a boot reply may carry: the BOOTP `file` field is 128 bytes,
/// NUL-terminated (dhcproto asserts on anything longer, and a client could not read it).
pub const MAX_BOOT_FILE: usize = 127;

/// Why a DHCP configuration cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "the boot URL {base:?} is {len} bytes, so the boot file name {file:?} is {file_len} bytes; DHCP's boot file field holds at most {MAX_BOOT_FILE}, so --boot-url may be at most {max_base} bytes with these boot files (use the server's IP address, a short host name, and no path)"
    )]
    BootUrlTooLong {
        base: String,
        len: usize,
        file: String,
        file_len: usize,
        max_base: usize,
    },
    #[error(
        "the boot file name {file:?} is {len} bytes; DHCP's boot file field holds at most {MAX_BOOT_FILE}"
    )]
    BootFileTooLong { file: String, len: usize },
}

impl DhcpConfig {
    /// Checks every boot file name a reply could carry fits the BOOTP `file` field, so a bad
    /// `--boot-url` fails the start with a clear message instead of the DHCP task later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for file in [
            &self.files.bios,
            &self.files.uefi_x64,
            &self.files.uefi_arm64,
            &self.files.signed_linux,
            &self.files.signed_winpe,
        ] {
            if file.len() > MAX_BOOT_FILE {
                return Err(ConfigError::BootFileTooLong {
                    file: file.clone(),
                    len: file.len(),
                });
            }
        }
        let suffixes = [
            "/boot.ipxe".to_string(),
            format!("/artifacts/{}", self.files.uefi_x64),
            format!("/artifacts/{}", self.files.uefi_arm64),
            format!("/artifacts/{DECLINE_FILE}"),
        ];
        let longest = suffixes.iter().map(String::len).max().unwrap_or(0);
        for suffix in &suffixes {
            let file = format!("{}{suffix}", self.http_base);
            if file.len() > MAX_BOOT_FILE {
                return Err(ConfigError::BootUrlTooLong {
                    base: self.http_base.clone(),
                    len: self.http_base.len(),
                    file_len: file.len(),
                    file,
                    max_base: MAX_BOOT_FILE.saturating_sub(longest),
                });
            }
        }
        Ok(())
    }
}

/// Encodes a reply to `request` (whose xid, flags, giaddr and chaddr it echoes).
pub fn encode(request: &[u8], reply: &Reply, cfg: &DhcpConfig) -> Option<Vec<u8>> {
    let req = Message::decode(&mut Decoder::new(request)).ok()?;
    if req.hlen() != 6 {
        return None;
    }
    if reply.file.len() > MAX_BOOT_FILE {
        tracing::warn!(
            file = %reply.file,
            len = reply.file.len(),
            "not answering: the boot file name or URL is longer than the {MAX_BOOT_FILE} bytes a DHCP reply holds; shorten --boot-url (or the boot file names)"
        );
        return None;
    }
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_ciaddr(req.ciaddr())
        .set_yiaddr(reply.yiaddr)
        .set_siaddr(reply.siaddr)
        .set_chaddr(req.chaddr());
    if !reply.file.is_empty() {
        msg.set_fname_str(&reply.file);
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(reply.message_type));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    if let Some(class) = reply.vendor_class {
        opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    if !reply.file.is_empty() {
        opts.insert(DhcpOption::BootfileName(reply.file.as_bytes().to_vec()));
        if reply.siaddr != Ipv4Addr::UNSPECIFIED {
            opts.insert(DhcpOption::TFTPServerName(
                reply.siaddr.to_string().into_bytes(),
            ));
        }
    }
    if let (
        Some((_, hostname)),
        Mode::Full {
            subnet_mask,
            router,
            dns,
            lease_seconds,
            ..
        },
    ) = (&reply.lease, &cfg.mode)
    {
        opts.insert(DhcpOption::SubnetMask(*subnet_mask));
        if let Some(r) = router {
            opts.insert(DhcpOption::Router(vec![*r]));
        }
        if !dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(dns.clone()));
        }
        opts.insert(DhcpOption::AddressLeaseTime(*lease_seconds));
        if let Some(h) = hostname {
            opts.insert(DhcpOption::Hostname(h.clone()));
        }
    }
    msg.to_vec().ok()
}

/// Where a reply goes (RFC 2131 4.1): to the relay, to a client that already has an address,
/// or broadcast.
pub fn destination(info: &ClientInfo, from: SocketAddr, reply: &Reply) -> SocketAddr {
    if info.giaddr != Ipv4Addr::UNSPECIFIED {
        return SocketAddr::V4(SocketAddrV4::new(info.giaddr, 67));
    }
    if info.ciaddr != Ipv4Addr::UNSPECIFIED {
        // A client that has an address (a 4011 request) is answered where it asked from.
        return from;
    }
    let _ = reply;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen for DHCP on {addr}: {source} (ports below 1024 need root or CAP_NET_BIND_SERVICE; another DHCP server may hold the port)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a DHCP socket that can broadcast, optionally pinned to one interface.
pub fn bind(addr: SocketAddr, interface: Option<&str>) -> Result<UdpSocket, ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let std = std::net::UdpSocket::bind(addr).map_err(err)?;
    std.set_broadcast(true).map_err(err)?;
    std.set_nonblocking(true).map_err(err)?;
    let sock = UdpSocket::from_std(std).map_err(err)?;
    if let Some(ifname) = interface {
        sock.bind_device(Some(ifname.as_bytes())).map_err(err)?;
    }
    Ok(sock)
}

/// Answers requests on `sock` until `shutdown`. Malformed packets are counted and dropped;
/// requests that are not from a boot client are dropped before any lookup, and each MAC's
/// requests are rate-limited by `limiter` (shared by the ports of one service).
pub async fn serve<B: Backend + BootIntents>(
    sock: UdpSocket,
    cfg: Arc<DhcpConfig>,
    boot: Arc<BootHttp<B>>,
    limiter: Arc<SharedLimiter<String>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "DHCP receive failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let packet = &buf[..n];
        let info = match parse(packet) {
            Ok(i) => i,
            Err(e) => {
                metrics.dhcp_reply("malformed");
                tracing::debug!(%from, error = %e, "ignored a DHCP packet");
                continue;
            }
        };
        // Lets the attack suite prove a dead DHCP task makes the process unready.
        crate::failpoint::crash("dhcp-serve");
        let triaged = triage(&info, &cfg);
        if let Triage::Drop(why) = triaged {
            metrics.dhcp_reply(why);
            continue;
        }
        if limiter.check(&info.mac).is_err() {
            metrics.dhcp_reply("rate_limited");
            tracing::debug!(mac = %info.mac, "DHCP: over this MAC's rate; not answered");
            continue;
        }
        let (choice, chain, known) = match triaged {
            Triage::AddressOnly => (
                BootChoice::Local { discovered: false },
                BootChain::Ipxe,
                None,
            ),
            _ => {
                let (known, armed) = match boot.backend.boot_lookup(&info.mac).await {
                    Ok(x) => x,
                    // Silence, not "unknown": the client retransmits, and by then the index
                    // has usually loaded. Answering from an empty index would send a managed
                    // machine the unknown-MAC policy's answer.
                    Err(BackendError::NotReady(why)) => {
                        metrics.dhcp_reply("not_ready");
                        tracing::debug!(mac = %info.mac, "not answering yet: {why}");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(mac = %info.mac, error = %e, "boot lookup failed; not answering");
                        continue;
                    }
                };
                let (choice, not_served) = intent::choose(&known, armed.as_ref(), cfg.unknown);
                if let Some(why @ intent::NotServed::AmbiguousMac { .. }) = &not_served {
                    tracing::warn!(mac = %info.mac, "booting locally: {why}");
                }
                let chain = known.chain(cfg.imaging == ImagingEnvironment::Winpe);
                (choice, chain, Some((known, not_served)))
            }
        };
        let Some(reply) = answer(&info, &choice, chain, &cfg) else {
            continue;
        };
        if reply.kind == "decline"
            && let Some((known, not_served)) = known
        {
            let why = match (&choice, not_served) {
                (BootChoice::Imaging(_), _) => {
                    let why = "it tried UEFI HTTP boot while a reimage is armed, and the signed chain boots only over PXE (TFTP): put PXE over IPv4 before HTTP boot in its firmware's boot order, or set spec.bootChain: ipxe and turn Secure Boot off";
                    tracing::warn!(mac = %info.mac, "armed signed-chain machine declined: {why}");
                    Some(why.to_string())
                }
                (_, Some(not_served)) => Some(not_served.to_string()),
                (_, None) => None,
            };
            // Recorded aside: the answer never waits for the store.
            let (boot, mac) = (boot.clone(), info.mac.clone());
            tokio::spawn(async move { boot.note_declined(&known, &mac, why).await });
        }
        let Some(bytes) = encode(packet, &reply, &cfg) else {
            continue;
        };
        let to = destination(&info, from, &reply);
        metrics.dhcp_reply(reply.kind);
        tracing::info!(mac = %info.mac, kind = reply.kind, file = %reply.file, %to, "DHCP {:?}", reply.message_type);
        if let Err(e) = sock.send_to(&bytes, to).await {
            tracing::warn!(%to, error = %e, "cannot send a DHCP reply");
        } else if let BootChoice::Wds(intent) = choice
            && let Some(server) = cfg.wds_server
        {
            // Recorded aside: the answer never waits for the store.
            let boot = boot.clone();
            tokio::spawn(async move { boot.note_handed_off(&intent, &server.to_string()).await });
        }
    }
}

/// Reads a static lease table: one `MAC IP [HOSTNAME]` per line, `#` comments.
pub fn parse_leases(text: &str) -> Result<HashMap<String, Lease>, String> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(mac), Some(ip)) = (parts.next(), parts.next()) else {
            return Err(format!(
                "line {}: expected `MAC IP [HOSTNAME]`, got {line:?}",
                n + 1
            ));
        };
        let mac = crate::store::arming::normalize_mac(mac)
            .ok_or_else(|| format!("line {}: {mac:?} is not a MAC address", n + 1))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("line {}: {ip:?} is not an IPv4 address", n + 1))?;
        let hostname = parts.next().map(str::to_string);
        if out.insert(mac.clone(), Lease { ip, hostname }).is_some() {
            return Err(format!("line {}: {mac} is listed twice", n + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wds_intent() -> BootIntent {
        BootIntent {
            namespace: "default".into(),
            endpoint: "kiosk-01".into(),
            mac_addresses: vec![],
            attempt_id: "a1".into(),
            try_number: 1,
            image: "golden".into(),
            image_digest: Some("ab".into()),
            boot_mode: "uefi".into(),
            armed_at: String::new(),
        }
    }
    use crate::store::BootIntent;
    use crate::store::arming::Known;
    use dhcproto::v4::{Architecture, Flags};

    fn request(mt: MessageType, arch: Option<u16>, vendor: Option<&str>, ipxe: bool) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0x12, 0x34, 0x56],
        );
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        if let Some(a) = arch {
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        }
        if let Some(v) = vendor {
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
        }
        if ipxe {
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        m.to_vec().unwrap()
    }

    fn cfg(mode: Mode) -> DhcpConfig {
        DhcpConfig {
            mode,
            server_ip: Ipv4Addr::new(10, 0, 40, 2),
            http_base: "http://10.0.40.2:8081".into(),
            files: BootFiles::default(),
            unknown: UnknownMacPolicy::Ignore,
            wds_server: Some(Ipv4Addr::new(10, 0, 40, 9)),
            imaging: ImagingEnvironment::Linux,
        }
    }

    fn local() -> BootChoice {
        BootChoice::Local { discovered: false }
    }

    fn imaging() -> BootChoice {
        BootChoice::Imaging(BootIntent {
            namespace: "default".into(),
            endpoint: "kiosk-01".into(),
            mac_addresses: vec!["52:54:00:12:34:56".into()],
            attempt_id: "a".into(),
            try_number: 1,
            image: "img".into(),
            image_digest: Some("d".into()),
            boot_mode: "bios".into(),
            armed_at: String::new(),
        })
    }

    fn full() -> Mode {
        let mut leases = HashMap::new();
        leases.insert(
            "52:54:00:12:34:56".to_string(),
            Lease {
                ip: Ipv4Addr::new(10, 0, 40, 50),
                hostname: Some("kiosk-01".into()),
            },
        );
        Mode::Full {
            leases,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            lease_seconds: 3600,
        }
    }

    #[test]
    fn the_chain_the_arch_and_the_arming_select_the_boot_program() {
        let base = "http://10.0.40.2:8081";
        let decline_url = format!("{base}/artifacts/sb/boot-local-disk.efi");
        let shim = "sb/shimx64.efi";
        let bootmgfw = recast_core::winpe_boot::BOOT_FILE;
        use BootChain::{Ipxe, Signed};
        use ImagingEnvironment::{Linux, Winpe};
        // (arch, iPXE user class, chain, armed, imaging env) -> (file, vendor class, kind)
        type Case<'a> = (
            Option<u16>,
            bool,
            BootChain,
            bool,
            ImagingEnvironment,
            &'a str,
            &'a str,
            &'a str,
        );
        let cases: &[Case] = &[
            // x64 UEFI PXE on the signed chain: shim when armed for Linux, Microsoft's boot
            // manager when armed for WinPE, the decline file when nothing is armed.
            (
                Some(7),
                false,
                Signed,
                true,
                Linux,
                shim,
                "PXEClient",
                "boot-program",
            ),
            (
                Some(9),
                false,
                Signed,
                true,
                Linux,
                shim,
                "PXEClient",
                "boot-program",
            ),
            (
                Some(7),
                false,
                Signed,
                true,
                Winpe,
                bootmgfw,
                "PXEClient",
                "boot-program",
            ),
            (
                Some(7),
                false,
                Signed,
                false,
                Linux,
                "sb/boot-local-disk.efi",
                "PXEClient",
                "decline",
            ),
            (
                Some(9),
                false,
                Signed,
                false,
                Winpe,
                "sb/boot-local-disk.efi",
                "PXEClient",
                "decline",
            ),
            // UEFI HTTP boot cannot start the signed chain: declined, armed or not.
            (
                Some(16),
                false,
                Signed,
                true,
                Linux,
                &decline_url,
                "HTTPClient",
                "decline",
            ),
            (
                Some(16),
                false,
                Signed,
                false,
                Linux,
                &decline_url,
                "HTTPClient",
                "decline",
            ),
            // The iPXE chain, as before: the same program armed or not (the script decides).
            (
                Some(7),
                false,
                Ipxe,
                true,
                Linux,
                "ipxe/snponly.efi",
                "PXEClient",
                "boot-program",
            ),
            (
                Some(7),
                false,
                Ipxe,
                false,
                Winpe,
                "ipxe/snponly.efi",
                "PXEClient",
                "boot-program",
            ),
            (
                Some(16),
                false,
                Ipxe,
                true,
                Linux,
                "http://10.0.40.2:8081/artifacts/ipxe/snponly.efi",
                "HTTPClient",
                "boot-program",
            ),
            // Firmware that is not x64 UEFI gets what can boot it, whatever the chain.
            (
                Some(0),
                false,
                Signed,
                true,
                Linux,
                "ipxe/undionly.kpxe",
                "PXEClient",
                "boot-program",
            ),
            (
                None,
                false,
                Signed,
                false,
                Linux,
                "ipxe/undionly.kpxe",
                "PXEClient",
                "boot-program",
            ),
            (
                Some(11),
                false,
                Signed,
                true,
                Linux,
                "ipxe/snponly-arm64.efi",
                "PXEClient",
                "boot-program",
            ),
            // A machine already running iPXE does not enforce Secure Boot: its script.
            (
                Some(7),
                true,
                Signed,
                true,
                Linux,
                "http://10.0.40.2:8081/boot.ipxe",
                "PXEClient",
                "ipxe-script",
            ),
        ];
        for &(arch, ipxe, chain, armed, env, file, class, kind) in cases {
            for mode in [Mode::Proxy, full()] {
                let mut c = cfg(mode.clone());
                c.imaging = env;
                let vendor = if arch == Some(16) {
                    "HTTPClient:Arch:00016:UNDI:003000"
                } else {
                    "PXEClient:Arch:00007:UNDI:003000"
                };
                let choice = if armed { imaging() } else { local() };
                for mt in [MessageType::Discover, MessageType::Request] {
                    let info = parse(&request(mt, arch, Some(vendor), ipxe)).unwrap();
                    let what = format!(
                        "arch {arch:?} ipxe {ipxe} {chain:?} armed {armed} {env:?} {mt:?} {mode:?}"
                    );
                    let r = answer(&info, &choice, chain, &c).expect(&what);
                    // GRUB reads the ACK, not the offer: both carry the file and next-server.
                    assert_eq!(r.file, file, "{what}");
                    assert_eq!(r.vendor_class, Some(class), "{what}");
                    assert_eq!(r.kind, kind, "{what}");
                    assert_eq!(r.siaddr, c.server_ip, "{what}");
                }
            }
        }
        // Unknown and ambiguous MACs keep the iPXE chain they always had.
        for winpe in [false, true] {
            assert_eq!(Known::Unknown.chain(winpe), Ipxe);
            assert_eq!(Known::Ambiguous { owners: vec![] }.chain(winpe), Ipxe);
        }
        // The default names fit the BOOTP file field with any valid base URL.
        assert!(cfg(Mode::Proxy).validate().is_ok());
    }

    #[test]
    fn the_architecture_selects_the_boot_program() {
        let c = cfg(Mode::Proxy);
        let cases = [
            (Some(0), "ipxe/undionly.kpxe"),
            (None, "ipxe/undionly.kpxe"),
            (Some(7), "ipxe/snponly.efi"),
            (Some(9), "ipxe/snponly.efi"),
            (Some(11), "ipxe/snponly-arm64.efi"),
        ];
        for (arch, file) in cases {
            let info = parse(&request(
                MessageType::Discover,
                arch,
                Some("PXEClient:Arch:00000"),
                false,
            ))
            .unwrap();
            let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
            assert_eq!(r.file, file, "arch {arch:?}");
            assert_eq!(r.message_type, MessageType::Offer);
            assert_eq!(
                r.yiaddr,
                Ipv4Addr::UNSPECIFIED,
                "proxyDHCP never gives addresses"
            );
            assert_eq!(r.siaddr, c.server_ip);
            assert_eq!(r.vendor_class, Some("PXEClient"));
        }
        // UEFI HTTP boot gets a URL and the HTTPClient class.
        let info = parse(&request(
            MessageType::Discover,
            Some(16),
            Some("HTTPClient:Arch:00016"),
            false,
        ))
        .unwrap();
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        assert_eq!(r.file, "http://10.0.40.2:8081/artifacts/ipxe/snponly.efi");
        assert_eq!(r.vendor_class, Some("HTTPClient"));
        // 32-bit UEFI: nothing to boot, no answer.
        let info = parse(&request(
            MessageType::Discover,
            Some(6),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        assert_eq!(answer(&info, &local(), BootChain::Ipxe, &c), None);
    }

    #[test]
    fn an_ipxe_client_gets_the_script_url_never_a_binary() {
        let c = cfg(Mode::Proxy);
        for arch in [Some(0), Some(7), Some(9), None] {
            let info = parse(&request(
                MessageType::Discover,
                arch,
                Some("PXEClient"),
                true,
            ))
            .unwrap();
            assert!(info.ipxe);
            let r = answer(&info, &imaging(), BootChain::Ipxe, &c).unwrap();
            assert_eq!(r.file, "http://10.0.40.2:8081/boot.ipxe");
        }
    }

    #[test]
    fn proxy_mode_stays_silent_for_non_pxe_clients_and_ignored_macs() {
        let c = cfg(Mode::Proxy);
        let info = parse(&request(MessageType::Discover, None, None, false)).unwrap();
        assert_eq!(
            answer(&info, &local(), BootChain::Ipxe, &c),
            None,
            "a plain DHCP client"
        );
        let info = parse(&request(
            MessageType::Discover,
            Some(0),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        assert_eq!(
            answer(&info, &BootChoice::Ignore, BootChain::Ipxe, &c),
            None,
            "an ignored MAC"
        );
        for mt in [
            MessageType::Release,
            MessageType::Decline,
            MessageType::Offer,
        ] {
            let info = parse(&request(mt, Some(0), Some("PXEClient"), false)).unwrap();
            assert_eq!(answer(&info, &local(), BootChain::Ipxe, &c), None, "{mt:?}");
        }
        let info = parse(&request(
            MessageType::Request,
            Some(0),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        assert_eq!(
            answer(&info, &local(), BootChain::Ipxe, &c)
                .unwrap()
                .message_type,
            MessageType::Ack
        );
    }

    #[test]
    fn a_request_for_another_server_is_not_answered() {
        let c = cfg(Mode::Proxy);
        let mut m = Message::decode(&mut Decoder::new(&request(
            MessageType::Request,
            Some(0),
            Some("PXEClient"),
            true,
        )))
        .unwrap();
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 40, 1)));
        let info = parse(&m.to_vec().unwrap()).unwrap();
        assert_eq!(
            answer(&info, &local(), BootChain::Ipxe, &c),
            None,
            "the site's DHCP server's offer"
        );
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(c.server_ip));
        let info = parse(&m.to_vec().unwrap()).unwrap();
        assert_eq!(
            answer(&info, &local(), BootChain::Ipxe, &c)
                .unwrap()
                .message_type,
            MessageType::Ack
        );
    }

    #[test]
    fn wds_endpoints_are_referred_to_the_wds_server() {
        let c = cfg(Mode::Proxy);
        let info = parse(&request(
            MessageType::Discover,
            Some(0),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        let r = answer(&info, &BootChoice::Wds(wds_intent()), BootChain::Ipxe, &c).unwrap();
        assert_eq!(r.siaddr, Ipv4Addr::new(10, 0, 40, 9));
        assert_eq!(r.file, "boot\\x64\\wdsnbp.com");
        let info = parse(&request(
            MessageType::Discover,
            Some(7),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        assert_eq!(
            answer(&info, &BootChoice::Wds(wds_intent()), BootChain::Ipxe, &c)
                .unwrap()
                .file,
            "boot\\x64\\wdsmgfw.efi"
        );
        // UEFI HTTP boot (16) and Arm (11) cannot run WDS's x64 TFTP programs: no referral.
        for arch in [11, 16] {
            let info = parse(&request(
                MessageType::Discover,
                Some(arch),
                Some("PXEClient"),
                false,
            ))
            .unwrap();
            assert_eq!(
                answer(&info, &BootChoice::Wds(wds_intent()), BootChain::Ipxe, &c),
                None,
                "arch {arch}"
            );
        }
        let mut no_wds = c.clone();
        no_wds.wds_server = None;
        assert_eq!(
            answer(
                &info,
                &BootChoice::Wds(wds_intent()),
                BootChain::Ipxe,
                &no_wds
            ),
            None
        );
    }

    #[test]
    fn full_mode_leases_only_from_the_table() {
        let c = cfg(full());
        let info = parse(&request(
            MessageType::Discover,
            Some(0),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 40, 50));
        assert_eq!(r.file, "ipxe/undionly.kpxe");
        // A plain client in the table gets an address and no boot file.
        let info = parse(&request(MessageType::Request, None, None, false)).unwrap();
        let r = answer(&info, &BootChoice::Ignore, BootChain::Ipxe, &c).unwrap();
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 40, 50));
        assert_eq!(r.file, "");
        // A MAC not in the table gets nothing.
        let mut other = request(MessageType::Discover, Some(0), Some("PXEClient"), false);
        other[28 + 5] = 0x99;
        let info = parse(&other).unwrap();
        assert_eq!(answer(&info, &local(), BootChain::Ipxe, &c), None);
    }

    /// Found by the dhcp_reply fuzz target: a boot URL longer than the BOOTP `file` field
    /// made dhcproto assert, which ended the DHCP task; one of exactly 128 bytes went out
    /// without its NUL and read back as no file. Now such a reply is not sent.
    #[test]
    fn a_boot_url_longer_than_the_file_field_is_refused_not_a_panic() {
        let mut c = cfg(Mode::Proxy);
        c.http_base = format!("http://{}.example:8081", "a".repeat(110));
        for (arch, vendor, ipxe) in [
            (Some(16), "HTTPClient:Arch:00016", false),
            (Some(7), "PXEClient:Arch:00007", true),
        ] {
            let req = request(MessageType::Discover, arch, Some(vendor), ipxe);
            let info = parse(&req).unwrap();
            let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
            assert!(r.file.len() > MAX_BOOT_FILE, "{}", r.file);
            assert_eq!(encode(&req, &r, &c), None);
        }
        // The longest name that fits still goes out.
        c.http_base = "http://".to_string() + &"b".repeat(MAX_BOOT_FILE - 7 - "/boot.ipxe".len());
        let req = request(
            MessageType::Discover,
            Some(7),
            Some("PXEClient:Arch:00007"),
            true,
        );
        let info = parse(&req).unwrap();
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        assert_eq!(r.file.len(), MAX_BOOT_FILE);
        let bytes = encode(&req, &r, &c).unwrap();
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(
            m.fname().map(|f| f.strip_suffix(b"\0").unwrap_or(f)),
            Some(r.file.as_bytes())
        );
        // One more byte would fill the field with no NUL: read back as no file at all.
        c.http_base.push('b');
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        assert_eq!(r.file.len(), MAX_BOOT_FILE + 1);
        assert_eq!(encode(&req, &r, &c), None);
    }

    #[test]
    fn replies_encode_and_decode() {
        let c = cfg(full());
        let req = request(MessageType::Discover, Some(0), Some("PXEClient"), false);
        let info = parse(&req).unwrap();
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        let bytes = encode(&req, &r, &c).unwrap();
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 40, 50));
        assert_eq!(m.siaddr(), c.server_ip);
        assert_eq!(m.fname(), Some(&b"ipxe/undionly.kpxe\0"[..]));
        assert_eq!(
            m.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Offer))
        );
        assert_eq!(
            m.opts().get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            destination(&info, "0.0.0.0:68".parse().unwrap(), &r),
            "255.255.255.255:68".parse().unwrap()
        );
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[1; 10]).is_err());
        let good = request(MessageType::Discover, Some(0), Some("PXEClient"), false);
        // Every truncation, and a deterministic byte-flip sweep over every position.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut p = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % p.len();
                p[i] = (seed >> 32) as u8;
            }
            if let Ok(info) = parse(&p) {
                let _ = answer(&info, &local(), BootChain::Ipxe, &cfg(Mode::Proxy));
            }
        }
        // A reply packet is not a request.
        let c = cfg(Mode::Proxy);
        let info = parse(&good).unwrap();
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        let reply = encode(&good, &r, &c).unwrap();
        assert_eq!(parse(&reply), Err(ParseError::NotRequest));
    }

    #[test]
    fn lease_tables_parse_with_clear_errors() {
        let t = parse_leases(
            "# site A\n52:54:00:12:34:56 10.0.40.50 kiosk-01\n52-54-00-12-34-57 10.0.40.51\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t["52:54:00:12:34:57"].ip, Ipv4Addr::new(10, 0, 40, 51));
        assert!(
            parse_leases("52:54:00:12:34:56")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            parse_leases("zz 10.0.0.1")
                .unwrap_err()
                .contains("not a MAC")
        );
        assert!(
            parse_leases("52:54:00:12:34:56 10.0.0.300")
                .unwrap_err()
                .contains("not an IPv4")
        );
        assert!(
            parse_leases("52:54:00:12:34:56 10.0.0.1\n52:54:00:12:34:56 10.0.0.2")
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn only_boot_clients_are_worth_a_lookup() {
        let proxy = cfg(Mode::Proxy);
        let ask = |mt, vendor: Option<&str>, ipxe, c: &DhcpConfig| {
            triage(&parse(&request(mt, Some(7), vendor, ipxe)).unwrap(), c)
        };
        assert_eq!(
            ask(
                MessageType::Discover,
                Some("PXEClient:Arch:00007"),
                false,
                &proxy
            ),
            Triage::Lookup
        );
        assert_eq!(
            ask(
                MessageType::Request,
                Some("HTTPClient:Arch:00016"),
                false,
                &proxy
            ),
            Triage::Lookup
        );
        assert_eq!(ask(MessageType::Inform, None, true, &proxy), Triage::Lookup);
        // An ordinary client (a laptop, a printer, a phone): never looked up in proxy mode.
        for vendor in [None, Some("MSFT 5.0"), Some("android-dhcp-14"), Some("PXE")] {
            assert_eq!(
                ask(MessageType::Discover, vendor, false, &proxy),
                Triage::Drop("not_pxe"),
                "{vendor:?}"
            );
        }
        // Messages a server does not answer.
        for mt in [
            MessageType::Release,
            MessageType::Decline,
            MessageType::Offer,
            MessageType::Ack,
        ] {
            assert_eq!(
                ask(mt, Some("PXEClient"), false, &proxy),
                Triage::Drop("not_a_request"),
                "{mt:?}"
            );
        }
        // A REQUEST for another server's offer.
        let mut info = parse(&request(
            MessageType::Request,
            Some(7),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        info.server_id = Some(Ipv4Addr::new(10, 0, 40, 1));
        assert_eq!(triage(&info, &proxy), Triage::Drop("other_server"));
        info.server_id = Some(proxy.server_ip);
        assert_eq!(triage(&info, &proxy), Triage::Lookup);
        // Full mode: a plain client in the table gets an address without a lookup; a client
        // outside the table gets nothing, PXE or not.
        let full = cfg(full());
        assert_eq!(
            ask(MessageType::Discover, None, false, &full),
            Triage::AddressOnly
        );
        assert_eq!(
            ask(MessageType::Discover, Some("PXEClient"), false, &full),
            Triage::Lookup
        );
        let mut stranger = parse(&request(
            MessageType::Discover,
            Some(7),
            Some("PXEClient"),
            false,
        ))
        .unwrap();
        stranger.mac = "52:54:00:99:99:99".into();
        assert_eq!(triage(&stranger, &full), Triage::Drop("no_lease"));
    }

    #[test]
    fn a_boot_url_too_long_for_the_file_field_is_refused_with_the_limit() {
        let mut c = cfg(Mode::Proxy);
        assert_eq!(c.validate(), Ok(()));
        // "/artifacts/ipxe/snponly-arm64.efi" is 33 bytes: 127 - 33 = 94 bytes of URL.
        c.http_base = format!("http://{}", "a".repeat(94 - 7));
        assert_eq!(c.validate(), Ok(()));
        c.http_base.push('a');
        match c.validate() {
            Err(e @ ConfigError::BootUrlTooLong { max_base: 94, .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("at most 94 bytes"), "{msg}");
                assert!(msg.contains("--boot-url"), "{msg}");
            }
            other => panic!("expected BootUrlTooLong, got {other:?}"),
        }
        // Even a reply built around the check never panics in the encoder.
        let good = request(MessageType::Discover, Some(19), Some("HTTPClient"), false);
        let info = parse(&good).unwrap();
        let r = answer(&info, &local(), BootChain::Ipxe, &c).unwrap();
        assert!(r.file.len() > MAX_BOOT_FILE);
        assert_eq!(encode(&good, &r, &c), None);
    }
}
